//! Applying state pushed by the control plane (events and reconciliation).
//!
//! Applies are serialized on one mutex. Each compares the update with the cache, writes
//! only what changed (data files whose content type, version or timestamp differ, or
//! whose payload is another JSON *value* — the same value in other bytes, as two
//! encoders of one control plane may send it, keeps its file, its bytes as first
//! received and its revision; `metadata.json` / `secrets.json` only when they differ),
//! so an update that changes only metadata moves only metadata's revision; deletes the
//! files of vanished data keys, and then swaps metadata, data and the secret index into
//! the cache in one write-lock section, under one new revision. Keys that cannot name a file are
//! skipped and reported, never written. If any write fails nothing is published and the
//! error is returned; the next reconcile retries. This module does not fetch anything.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::MutexGuard;
use std::time::SystemTime;

use super::keys;
use crate::json_eq;
use crate::model::{DataEntry, Metadata, SecretRef};

use super::cache::{normalize_secrets, render, render_meta_item, DataItem, MetaItem, Stamp};
use super::{
    lock, ApplyOutcome, Change, ChangeKind, CpUpdate, Json, Store, StoreError, METADATA_FILE,
    SECRETS_FILE,
};

/// A data entry to write: the entry, its canonical file name, its body (= file content),
/// and a differently named old file of the same key to remove.
struct DataWrite {
    entry: DataEntry,
    file: String,
    body: Json,
    old_file: Option<String>,
}

#[derive(Default)]
struct DataPlan {
    writes: Vec<DataWrite>,
    /// (key, file) of data keys that vanished.
    removals: Vec<(String, String)>,
}

impl DataPlan {
    fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.removals.is_empty()
    }
}

/// What an update changes, decided against the cache: the new metadata map and secret
/// index (`None` where they are unchanged) and the data files to write and remove.
struct Plan {
    metadata: Option<Metadata>,
    secrets: Option<Vec<SecretRef>>,
    data: DataPlan,
}

impl Plan {
    fn is_empty(&self) -> bool {
        self.metadata.is_none() && self.secrets.is_none() && self.data.is_empty()
    }
}

/// A plan once on disk, with the rendered metadata items it publishes.
struct Written {
    /// `(key, value, rendered {"key","value"})`.
    metadata: Option<Vec<(String, String, Json)>>,
    secrets: Option<Vec<SecretRef>>,
    data: DataPlan,
}

/// Whether `new` is `old` again: the same fields, and the same payload value however
/// it is spelled (see `json_eq`).
fn same_entry(old: &DataEntry, new: &DataEntry) -> bool {
    old.key == new.key
        && old.content_type == new.content_type
        && old.version == new.version
        && old.updated_at == new.updated_at
        && json_eq::same_value(old.payload.get(), new.payload.get())
}

impl Store {
    /// Applies a control-plane update durably, then publishes it atomically.
    pub fn apply_control_plane(&self, update: CpUpdate) -> Result<ApplyOutcome, StoreError> {
        let serial = lock(&self.apply_lock);
        self.apply_serialized(serial, update)
    }

    /// How many control-plane updates (events and reconciliations alike) have been
    /// applied so far. A reconciler reads it before it fetches the full state.
    pub fn control_plane_applies(&self) -> u64 {
        *lock(&self.apply_lock)
    }

    /// Applies `update` only if no other control-plane update was applied since the
    /// count was `seen`, checked and applied under the one apply lock: a full state
    /// fetched before an event arrived must not step the cache back over that event.
    /// `Ok(None)`: superseded — fetch again.
    pub fn apply_control_plane_since(
        &self,
        update: CpUpdate,
        seen: u64,
    ) -> Result<Option<ApplyOutcome>, StoreError> {
        let serial = lock(&self.apply_lock);
        if *serial != seen {
            return Ok(None);
        }
        self.apply_serialized(serial, update).map(Some)
    }

    fn apply_serialized(
        &self,
        mut serial: MutexGuard<'_, u64>,
        update: CpUpdate,
    ) -> Result<ApplyOutcome, StoreError> {
        *serial += 1;
        let (plan, skipped_keys) = self.plan(update);
        for key in &skipped_keys {
            log::warn!(
                "control plane sent a data key that cannot be stored (empty or too long), skipped: {:?}",
                key.chars().take(64).collect::<String>()
            );
        }
        let mut outcome = ApplyOutcome {
            skipped_keys,
            ..ApplyOutcome::default()
        };
        if plan.is_empty() {
            return Ok(outcome);
        }
        self.ready_to_write()?;
        let jump = self.epoch_jump()?;
        let written = self.persist(plan)?;
        outcome.metadata_changed = written.metadata.is_some();
        outcome.secrets_changed = written.secrets.is_some();
        outcome.data_written = written.data.writes.len();
        outcome.data_removed = written.data.removals.len();
        let changes = self.publish(written, jump);
        drop(serial);
        self.notify(&changes);
        Ok(outcome)
    }

    /// Compares `update` with the cache (CPU only, under the read lock): what must be
    /// written, and the data keys that cannot be stored.
    fn plan(&self, update: CpUpdate) -> (Plan, Vec<String>) {
        let secrets = update.secret_refs.map(normalize_secrets);
        let wanted_data = update.data.map(|entries| {
            let mut map = BTreeMap::new();
            for e in entries {
                if map.contains_key(&e.key) {
                    log::warn!(
                        "control plane sent data key {:?} twice; keeping the last",
                        e.key
                    );
                }
                map.insert(e.key.clone(), e);
            }
            map
        });
        let mut skipped = Vec::new();
        let c = self.read();
        let metadata = update.metadata.filter(|m| {
            m.len() != c.metadata.len()
                || m.iter()
                    .any(|(k, v)| c.metadata.get(k).map(|i| &i.value) != Some(v))
        });
        let secrets = secrets.filter(|s| *s != c.secrets);
        let mut data = DataPlan::default();
        if let Some(wanted) = wanted_data {
            for (key, item) in &c.data {
                if !wanted.contains_key(key) {
                    data.removals.push((key.clone(), item.file.clone()));
                }
            }
            for (key, entry) in wanted {
                let current = c.data.get(&key);
                // A key too long to encode can still live in the plain-named file a
                // Go agent wrote it to; otherwise it cannot be stored.
                let Some(file) =
                    keys::file_name_for(&key).or_else(|| current.map(|cur| cur.file.clone()))
                else {
                    skipped.push(key);
                    continue;
                };
                // An unchanged entry stays where it is, even in a Go agent's file name.
                if current.is_some_and(|cur| same_entry(&cur.entry, &entry)) {
                    continue;
                }
                data.writes.push(DataWrite {
                    old_file: current.map(|cur| cur.file.clone()).filter(|f| *f != file),
                    body: Json::from(&[][..]),
                    entry,
                    file,
                });
            }
        }
        let plan = Plan {
            metadata,
            secrets,
            data,
        };
        (plan, skipped)
    }

    /// Renders and writes the plan, outside every cache lock: first every new file is
    /// written to a durable temp file (a failure here leaves disk and memory as they
    /// were), then all are renamed into place and the vanished files removed.
    fn persist(&self, plan: Plan) -> Result<Written, StoreError> {
        let Plan {
            metadata,
            secrets,
            mut data,
        } = plan;
        // Rendered outside the lock; the body is also the file content.
        for w in &mut data.writes {
            w.body = render(&w.entry);
        }
        let secrets_body = secrets.as_ref().map(render);
        let metadata = metadata.map(|m| {
            m.into_iter()
                .map(|(k, v)| {
                    let body = render_meta_item(&k, &v);
                    (k, v, body)
                })
                .collect::<Vec<_>>()
        });
        let metadata_body = metadata.as_ref().map(|items| {
            let map: BTreeMap<&str, &str> = items
                .iter()
                .map(|(k, v, _)| (k.as_str(), v.as_str()))
                .collect();
            render(&map)
        });
        let mut state_files: Vec<(&str, &[u8])> = Vec::new();
        if let Some(body) = &secrets_body {
            state_files.push((SECRETS_FILE, body));
        }
        if let Some(body) = &metadata_body {
            state_files.push((METADATA_FILE, body));
        }
        let data_files: Vec<(&str, &[u8])> = data
            .writes
            .iter()
            .map(|w| (w.file.as_str(), &*w.body))
            .collect();
        let data_prepared = self.data.prepare(&data_files).map_err(|e| {
            self.write_failed(
                &format!("writing {} data entries failed", data_files.len()),
                e,
            )
        })?;
        let state_prepared = self
            .state
            .prepare(&state_files)
            .map_err(|e| self.write_failed("writing metadata or the secret index failed", e))?;
        let data_removals: Vec<&str> = data
            .writes
            .iter()
            .filter_map(|w| w.old_file.as_deref())
            .chain(data.removals.iter().map(|(_, f)| f.as_str()))
            .collect();
        data_prepared
            .commit(&data_removals)
            .map_err(|e| self.write_failed("replacing data entry files failed", e))?;
        state_prepared
            .commit(&[])
            .map_err(|e| self.write_failed("replacing metadata or the secret index failed", e))?;
        Ok(Written {
            metadata,
            secrets,
            data,
        })
    }

    /// Swaps what was written into the cache in one write-lock section, under one new
    /// revision (or the reserved epoch `jump`); the changes to announce.
    fn publish(&self, written: Written, jump: Option<u64>) -> Vec<Change> {
        let mut kinds = Vec::new();
        let mut c = self.write();
        let stamp: Stamp = c.next_stamp(SystemTime::now(), jump);
        if let Some(items) = written.metadata {
            let mut old = std::mem::take(&mut c.metadata);
            let new = items
                .into_iter()
                .map(|(k, value, body)| {
                    let item = match old.remove(&k) {
                        Some(o) if o.value == value => o,
                        _ => MetaItem { value, body, stamp },
                    };
                    (k, item)
                })
                .collect();
            c.set_metadata(new, stamp);
            kinds.push(ChangeKind::Metadata);
        }
        if !written.data.is_empty() {
            let mut data = std::mem::take(&mut c.data);
            let removed: BTreeSet<&String> = written.data.removals.iter().map(|(k, _)| k).collect();
            data.retain(|k, _| !removed.contains(k));
            for w in written.data.writes {
                data.insert(
                    w.entry.key.clone(),
                    DataItem {
                        entry: w.entry,
                        body: w.body,
                        file: w.file,
                        stamp,
                    },
                );
            }
            c.set_data(data, stamp);
            kinds.push(ChangeKind::Data);
        }
        if let Some(s) = written.secrets {
            c.set_secrets(s, stamp);
            kinds.push(ChangeKind::Secrets);
        }
        kinds
            .into_iter()
            .map(|kind| Change {
                revision: stamp.rev,
                kind,
            })
            .collect()
    }
}
