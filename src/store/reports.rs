//! Report writes: PUT with optimistic locking and DELETE, decided in commit order.
//!
//! `submit_put`/`submit_delete` decide a write under the commit queue's lock against the
//! key's *pending latest* state (its queued, uncommitted writes, else the published
//! entry): `If-Match`, the next version, the file it will live in. A refused write gets
//! a completed `Ticket` at once; an accepted one is queued with its journal record and
//! completes when the committer made its group durable and published it (see `commit`).
//! `put_report`/`delete_report` are the same path, waiting for the ticket. This module
//! does not validate keys (`ReportKey` did), parse request bodies (the router did) or
//! touch files.

use std::time::SystemTime;

use serde_json::value::RawValue;

use super::keys::{self, ReportKey};
use crate::model::ReportEntry;
use crate::timefmt;

use super::cache::render;
use super::commit::{pair, Latest, Op, OpKind, Queue, Quota, Ticket, UsageDelta};
use super::journal;
use super::{lock, Inner, Json, QuotaLimit, Store, StoreError, Versioned};

/// Whether `if_match` allows writing over `current`: no `If-Match` always does, `N`
/// only over version `N`, and `0` only where the key does not exist.
fn precondition_holds(if_match: Option<i64>, current: Option<i64>) -> bool {
    match (if_match, current) {
        (None, _) => true,
        (Some(want), Some(have)) => want == have,
        (Some(want), None) => want == 0,
    }
}

fn closed() -> StoreError {
    StoreError::Io {
        context: "report write refused".to_owned(),
        source: std::io::Error::other("the store is closed"),
    }
}

impl Inner {
    /// The state `key` will have once every queued write of it is committed.
    fn pending_latest(&self, q: &Queue, key: &str) -> Latest {
        if let Some((latest, _)) = q.latest.get(key) {
            return latest.clone();
        }
        self.read()
            .reports
            .get(key)
            .map(|r| (r.entry.version, r.file.clone(), r.entry.payload_len()))
    }

    /// Report keys and payload bytes once every queued write is committed.
    fn pending_usage(&self, q: &Queue) -> (u64, u64) {
        let c = self.read();
        let keys = (c.reports.len() as i64 + q.in_flight.keys).max(0) as u64;
        let bytes = (c.report_bytes as i64 + q.in_flight.bytes).max(0) as u64;
        (keys, bytes)
    }
}

/// Whether a write that changes the use by `delta` may go ahead: growth must stay
/// within the quota; a write that does not grow a dimension is always allowed there, so
/// a store loaded over its limits keeps working for updates and deletions.
fn quota_refusal(
    quota: &Quota,
    (keys, bytes): (u64, u64),
    delta: UsageDelta,
) -> Option<StoreError> {
    if delta.keys > 0 && keys + delta.keys as u64 > quota.max_keys as u64 {
        return Some(StoreError::QuotaExceeded {
            limit: QuotaLimit::Keys,
            max: quota.max_keys as u64,
            used: keys,
        });
    }
    if delta.bytes > 0 && bytes + delta.bytes as u64 > quota.max_bytes {
        return Some(StoreError::QuotaExceeded {
            limit: QuotaLimit::Bytes,
            max: quota.max_bytes,
            used: bytes,
        });
    }
    None
}

impl Store {
    /// Submits a create-or-replace of a report. `if_match`: `None` → unconditional;
    /// `Some(n)` must equal the current version (`0` for a key that does not exist),
    /// judged against every write submitted before this one. The ticket completes with
    /// the stored entry once it is durable and visible, or with the error.
    pub fn submit_put(
        &self,
        key: &ReportKey,
        content_type: String,
        payload: Box<RawValue>,
        if_match: Option<i64>,
    ) -> Ticket<Versioned<Json>> {
        if let Err(refused) = self.ready_to_write() {
            return Ticket::ready(Err(refused));
        }
        let mut q = lock(&self.writes.queue);
        if q.closed {
            return Ticket::ready(Err(closed()));
        }
        let current = self.pending_latest(&q, key.as_str());
        let old_file = current.as_ref().map(|(_, f, _)| f.clone());
        // A key whose encoded name is too long can still be updated in the file the Go
        // agent wrote it to (plain name); a new one cannot be stored.
        let Some(file) = keys::file_name_for(key.as_str()).or_else(|| old_file.clone()) else {
            return Ticket::ready(Err(StoreError::KeyNotStorable));
        };
        let version = current.as_ref().map(|(v, _, _)| *v);
        if !precondition_holds(if_match, version) {
            return Ticket::ready(Err(StoreError::Conflict { current: version }));
        }
        let new_len = payload.get().len() as u64;
        let usage = UsageDelta {
            keys: i64::from(current.is_none()),
            bytes: new_len as i64 - current.as_ref().map_or(0, |(_, _, l)| *l as i64),
        };
        if let Some(refused) = quota_refusal(&q.quota, self.pending_usage(&q), usage) {
            return Ticket::ready(Err(refused));
        }
        let at = SystemTime::now();
        let entry = ReportEntry {
            key: key.as_str().to_owned(),
            content_type,
            payload,
            version: version.map_or(1, |v| v.saturating_add(1)),
            updated_at: timefmt::format_rfc3339_utc(at),
        };
        let body = render(&entry);
        let record = journal::encode_put(&body);
        let slot = q.latest.entry(key.as_str().to_owned()).or_insert((None, 0));
        slot.0 = Some((entry.version, file.clone(), new_len));
        slot.1 += 1;
        let (ticket, handle) = pair();
        let op = Op {
            key: key.as_str().to_owned(),
            kind: OpKind::Put {
                entry,
                body,
                file,
                old_file,
                ticket: handle,
            },
            at,
            record,
            usage,
        };
        self.writes.push(&mut q, op);
        ticket
    }

    /// Submits a deletion. The ticket completes with the new store revision once the
    /// deletion is durable and visible, or with `NotFound` or the error.
    pub fn submit_delete(&self, key: &ReportKey) -> Ticket<u64> {
        if let Err(refused) = self.ready_to_write() {
            return Ticket::ready(Err(refused));
        }
        let mut q = lock(&self.writes.queue);
        if q.closed {
            return Ticket::ready(Err(closed()));
        }
        let Some((_, file, len)) = self.pending_latest(&q, key.as_str()) else {
            return Ticket::ready(Err(StoreError::NotFound));
        };
        let slot = q.latest.entry(key.as_str().to_owned()).or_insert((None, 0));
        slot.0 = None;
        slot.1 += 1;
        let (ticket, handle) = pair();
        let op = Op {
            key: key.as_str().to_owned(),
            kind: OpKind::Delete {
                file,
                ticket: handle,
            },
            at: SystemTime::now(),
            record: journal::encode_delete(key.as_str()),
            usage: UsageDelta {
                keys: -1,
                bytes: -(len as i64),
            },
        };
        self.writes.push(&mut q, op);
        ticket
    }

    /// Sets the report quota (new growth beyond it is refused; see `quota_refusal`).
    pub fn set_report_quota(&self, quota: Quota) {
        lock(&self.writes.queue).quota = quota;
    }

    /// Report keys and payload bytes stored (published), and the quota.
    pub fn report_usage(&self) -> (u64, u64, Quota) {
        let quota = lock(&self.writes.queue).quota;
        let c = self.read();
        (c.reports.len() as u64, c.report_bytes, quota)
    }

    /// Creates or replaces a report and waits until it is durable (see `submit_put`).
    pub fn put_report(
        &self,
        key: &ReportKey,
        content_type: String,
        payload: Box<RawValue>,
        if_match: Option<i64>,
    ) -> Result<Versioned<Json>, StoreError> {
        self.submit_put(key, content_type, payload, if_match).wait()
    }

    /// Deletes a report durably; returns the new store revision.
    pub fn delete_report(&self, key: &ReportKey) -> Result<u64, StoreError> {
        self.submit_delete(key).wait()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_refuses_only_growth() {
        let q = Quota {
            max_keys: 2,
            max_bytes: 100,
        };
        let d = |keys, bytes| UsageDelta { keys, bytes };
        assert!(quota_refusal(&q, (1, 50), d(1, 10)).is_none());
        assert!(matches!(
            quota_refusal(&q, (2, 50), d(1, 10)),
            Some(StoreError::QuotaExceeded {
                limit: QuotaLimit::Keys,
                max: 2,
                used: 2
            })
        ));
        assert!(matches!(
            quota_refusal(&q, (1, 95), d(0, 10)),
            Some(StoreError::QuotaExceeded {
                limit: QuotaLimit::Bytes,
                max: 100,
                used: 95
            })
        ));
        // Over the limits already (a loaded cache): shrinking and same-size writes pass.
        assert!(quota_refusal(&q, (5, 500), d(0, -10)).is_none());
        assert!(quota_refusal(&q, (5, 500), d(0, 0)).is_none());
        assert!(quota_refusal(&q, (5, 500), d(-1, -100)).is_none());
    }

    #[test]
    fn if_match_rules() {
        assert!(precondition_holds(None, None));
        assert!(precondition_holds(None, Some(3)));
        assert!(precondition_holds(Some(0), None));
        assert!(!precondition_holds(Some(1), None));
        assert!(precondition_holds(Some(3), Some(3)));
        assert!(!precondition_holds(Some(2), Some(3)));
        assert!(!precondition_holds(Some(0), Some(3)));
    }
}
