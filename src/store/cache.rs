//! The in-memory state behind the store's `RwLock`: metadata, data, the secret index,
//! reports, the sync marks, and the JSON bodies served for them.
//!
//! Every resource carries a `Stamp` (store revision and wall time of its last change).
//! Single entries are rendered once when stored; lists and the summary are rendered
//! lazily, at most once per change, into a `OnceLock` that a change replaces. The cache
//! does no I/O and takes no locks: the store decides when it is read or mutated, and
//! mutations are short (no rendering of lists, no disk).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use crate::model::{DataEntry, DataKey, KeyVersion, ReportEntry, SecretRef};

use super::marks::Mark;
use super::Json;

/// When a resource last changed: the store revision and the wall time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub rev: u64,
    pub at: SystemTime,
}

/// One metadata value with its rendered `{"key","value"}` body.
pub struct MetaItem {
    pub value: String,
    pub body: Json,
    pub stamp: Stamp,
}

/// An entry (data or report), its rendered body (also its file content), the file
/// holding it and when it last changed.
pub struct Item<E> {
    pub entry: E,
    pub body: Json,
    pub file: String,
    pub stamp: Stamp,
}

/// A data entry pushed by the control plane, as the cache holds it.
pub type DataItem = Item<DataEntry>;

/// A report entry written by a local workload, as the cache holds it: its payload is a
/// range of its body (`render_report`), so it is held once.
pub type ReportItem = Item<ReportEntry>;

/// Renders a report entry and points its payload at the payload's bytes in the
/// rendering, freeing the entry's own copy: a stored or queued report holds its payload
/// once.
pub fn render_report(entry: &mut ReportEntry) -> Json {
    let body = render(entry);
    entry.payload.share_within(&body);
    body
}

/// Renders `value` as JSON bytes straight into a shared buffer of the exact size: one
/// pass counts the bytes, the second writes them, so a large entry is never held twice
/// (a growing `Vec` plus the `Arc` it would be copied into). Our types (string maps,
/// entries with a RawValue payload) always serialize; the fallback keeps a bug from
/// becoming a panic.
pub fn render<T: serde::Serialize + ?Sized>(value: &T) -> Json {
    let rendered = (|| {
        let mut count = Counter(0);
        serde_json::to_writer(&mut count, value)?;
        let mut buf: Arc<[std::mem::MaybeUninit<u8>]> = Arc::new_uninit_slice(count.0);
        let slots = Arc::get_mut(&mut buf).ok_or_else(|| {
            serde_json::Error::io(std::io::Error::other("fresh buffer is shared"))
        })?;
        let mut fill = Fill { slots, at: 0 };
        serde_json::to_writer(&mut fill, value)?;
        if fill.at != count.0 {
            return Err(serde_json::Error::io(std::io::Error::other(
                "rendering changed size between passes",
            )));
        }
        // SAFETY: the second pass wrote every one of the `count.0` bytes (checked above).
        Ok(unsafe { buf.assume_init() })
    })();
    rendered.unwrap_or_else(|e: serde_json::Error| {
        log::error!("cannot render JSON: {e}");
        Arc::from(&b"null"[..])
    })
}

/// Counts bytes written.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len();
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes into uninitialised bytes, refusing to overflow them.
struct Fill<'a> {
    slots: &'a mut [std::mem::MaybeUninit<u8>],
    at: usize,
}

impl std::io::Write for Fill<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let end = self.at + b.len();
        let Some(dst) = self.slots.get_mut(self.at..end) else {
            return Err(std::io::Error::other("rendering grew between passes"));
        };
        for (d, s) in dst.iter_mut().zip(b) {
            d.write(*s);
        }
        self.at = end;
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn render_meta_item(key: &str, value: &str) -> Json {
    #[derive(serde::Serialize)]
    struct KV<'a> {
        key: &'a str,
        value: &'a str,
    }
    render(&KV { key, value })
}

pub struct Cache {
    pub revision: u64,
    pub last_change: SystemTime,

    pub metadata: BTreeMap<String, MetaItem>,
    pub metadata_stamp: Stamp,
    metadata_body: OnceLock<Json>,

    pub data: BTreeMap<String, DataItem>,
    pub data_stamp: Stamp,
    data_body: OnceLock<Json>,

    /// Sorted by key, keys unique.
    pub secrets: Vec<SecretRef>,
    pub secrets_stamp: Stamp,
    secrets_body: OnceLock<Json>,

    pub reports: BTreeMap<String, ReportItem>,
    pub reports_stamp: Stamp,
    reports_body: OnceLock<Json>,
    /// Bytes of report payloads stored (the report quota counts these).
    pub report_bytes: u64,

    summary_body: OnceLock<Json>,
    summary_without_secrets_body: OnceLock<Json>,

    /// Per report key, the state the control plane last acknowledged.
    pub marks: HashMap<String, Mark>,
    /// Report keys whose current state (entry or absence) differs from their mark.
    pub pending: BTreeSet<String>,
}

impl Cache {
    pub fn empty(base: Stamp) -> Cache {
        Cache {
            revision: base.rev,
            last_change: base.at,
            metadata: BTreeMap::new(),
            metadata_stamp: base,
            metadata_body: OnceLock::new(),
            data: BTreeMap::new(),
            data_stamp: base,
            data_body: OnceLock::new(),
            secrets: Vec::new(),
            secrets_stamp: base,
            secrets_body: OnceLock::new(),
            reports: BTreeMap::new(),
            reports_stamp: base,
            reports_body: OnceLock::new(),
            report_bytes: 0,
            summary_body: OnceLock::new(),
            summary_without_secrets_body: OnceLock::new(),
            marks: HashMap::new(),
            pending: BTreeSet::new(),
        }
    }

    pub fn summary_stamp(&self) -> Stamp {
        Stamp {
            rev: self.revision,
            at: self.last_change,
        }
    }

    /// Takes the next store revision for a change made at `at`, honouring a jump to a
    /// reserved epoch.
    pub fn next_stamp(&mut self, at: SystemTime, jump: Option<u64>) -> Stamp {
        self.revision = self.revision.max(jump.unwrap_or(0)).saturating_add(1);
        // Writers take their clock reading before their durable write, so publish order
        // and clock order can differ slightly; the store-wide time never goes back.
        self.last_change = self.last_change.max(at);
        self.summary_body = OnceLock::new();
        self.summary_without_secrets_body = OnceLock::new();
        Stamp {
            rev: self.revision,
            at,
        }
    }

    // ---- rendering -------------------------------------------------------------

    pub fn metadata_json(&self) -> Json {
        self.metadata_body
            .get_or_init(|| {
                let map: BTreeMap<&str, &str> = self
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.value.as_str()))
                    .collect();
                render(&map)
            })
            .clone()
    }

    pub fn data_list_json(&self) -> Json {
        self.data_body
            .get_or_init(|| {
                let rows: Vec<DataKey<'_>> = self
                    .data
                    .values()
                    .map(|d| DataKey {
                        key: &d.entry.key,
                        version: d.entry.version,
                        content_type: &d.entry.content_type,
                    })
                    .collect();
                render(&rows)
            })
            .clone()
    }

    pub fn secret_list_json(&self) -> Json {
        self.secrets_body
            .get_or_init(|| {
                let rows: Vec<KeyVersion<'_>> = self
                    .secrets
                    .iter()
                    .map(|s| KeyVersion {
                        key: &s.key,
                        version: s.version,
                    })
                    .collect();
                render(&rows)
            })
            .clone()
    }

    pub fn report_list_json(&self) -> Json {
        self.reports_body
            .get_or_init(|| {
                let rows: Vec<KeyVersion<'_>> = self
                    .reports
                    .values()
                    .map(|r| KeyVersion {
                        key: &r.entry.key,
                        version: r.entry.version,
                    })
                    .collect();
                render(&rows)
            })
            .clone()
    }

    /// The summary, assembled from the four cached list bodies.
    pub fn summary_json(&self) -> Json {
        self.summary_body
            .get_or_init(|| self.assemble_summary(self.secret_list_json()))
            .clone()
    }

    /// The summary with an empty `secret_keys` (for peers that may not see secrets).
    pub fn summary_without_secrets_json(&self) -> Json {
        self.summary_without_secrets_body
            .get_or_init(|| self.assemble_summary(Arc::from(&b"[]"[..])))
            .clone()
    }

    /// The latest change to metadata, data or reports.
    pub fn summary_without_secrets_stamp(&self) -> Stamp {
        [self.metadata_stamp, self.data_stamp, self.reports_stamp]
            .into_iter()
            .max_by_key(|s| s.rev)
            .unwrap_or(self.metadata_stamp)
    }

    fn assemble_summary(&self, secret_keys: Json) -> Json {
        let parts = [
            (&b"{\"metadata\":"[..], self.metadata_json()),
            (&b",\"data_keys\":"[..], self.data_list_json()),
            (&b",\"secret_keys\":"[..], secret_keys),
            (&b",\"report_keys\":"[..], self.report_list_json()),
        ];
        let len = parts.iter().map(|(a, b)| a.len() + b.len()).sum::<usize>() + 1;
        let mut out = Vec::with_capacity(len);
        for (label, body) in parts {
            out.extend_from_slice(label);
            out.extend_from_slice(&body);
        }
        out.push(b'}');
        Arc::from(out)
    }

    // ---- mutations -------------------------------------------------------------

    pub fn set_metadata(&mut self, metadata: BTreeMap<String, MetaItem>, stamp: Stamp) {
        self.metadata = metadata;
        self.metadata_stamp = stamp;
        self.metadata_body = OnceLock::new();
    }

    pub fn set_data(&mut self, data: BTreeMap<String, DataItem>, stamp: Stamp) {
        self.data = data;
        self.data_stamp = stamp;
        self.data_body = OnceLock::new();
    }

    pub fn set_secrets(&mut self, secrets: Vec<SecretRef>, stamp: Stamp) {
        self.secrets = secrets;
        self.secrets_stamp = stamp;
        self.secrets_body = OnceLock::new();
    }

    pub fn put_report(&mut self, item: ReportItem) {
        let key = item.entry.key.clone();
        self.reports_stamp = item.stamp;
        self.reports_body = OnceLock::new();
        self.report_bytes += item.entry.payload_len();
        if let Some(old) = self.reports.insert(key.clone(), item) {
            self.report_bytes -= old.entry.payload_len();
        }
        self.refresh_pending(&key);
    }

    pub fn remove_report(&mut self, key: &str, stamp: Stamp) -> Option<ReportItem> {
        let old = self.reports.remove(key);
        if let Some(o) = &old {
            self.report_bytes -= o.entry.payload_len();
        }
        self.reports_stamp = stamp;
        self.reports_body = OnceLock::new();
        self.refresh_pending(key);
        old
    }

    /// Recomputes whether `key` has to be sent upstream.
    pub fn refresh_pending(&mut self, key: &str) {
        let differs = match (self.reports.get(key), self.marks.get(key)) {
            (Some(r), Some(m)) => !m.matches(&r.entry),
            (None, None) => false,
            _ => true,
        };
        if differs {
            if !self.pending.contains(key) {
                self.pending.insert(key.to_owned());
            }
        } else {
            self.pending.remove(key);
        }
    }

    /// Recomputes the whole pending set (after load).
    pub fn rebuild_pending(&mut self) {
        let keys: BTreeSet<String> = self
            .reports
            .keys()
            .chain(self.marks.keys())
            .cloned()
            .collect();
        self.pending.clear();
        for k in keys {
            self.refresh_pending(&k);
        }
    }
}

/// The secret index as the cache keeps it: sorted by key, one entry per key (the last
/// one wins).
pub fn normalize_secrets(refs: Vec<SecretRef>) -> Vec<SecretRef> {
    let map: BTreeMap<String, i64> = refs.into_iter().map(|r| (r.key, r.version)).collect();
    map.into_iter()
        .map(|(key, version)| SecretRef { key, version })
        .collect()
}
