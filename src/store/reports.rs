//! Report writes: PUT and DELETE with preconditions (optimistic locking), decided in
//! commit order.
//!
//! `submit_put_if`/`submit_delete_if` decide a write under the commit queue's lock
//! against the key's *pending latest* state (its queued, uncommitted writes, else the
//! published entry): the preconditions, the next version, the file it will live in. A
//! refused write gets a completed `Ticket` at once; an accepted one is queued with its
//! journal record and completes when the committer made its group durable and
//! published it (see `commit`). `submit_put`/`submit_delete` are the same without
//! conditions beyond the seed's integer version; `put_report`/`delete_report` wait for
//! the ticket. This module does not validate keys (`ReportKey` did), parse request
//! bodies or headers (the API did) or touch files.

use std::time::SystemTime;

use serde_json::value::RawValue;

use super::keys::{self, ReportKey};
use crate::model::ReportEntry;
use crate::timefmt;

use super::cache::render_report;
use super::commit::{pair, Latest, Op, OpKind, Queue, Quota, Ticket, UsageDelta};
use super::journal;
use super::{lock, Inner, Json, QuotaLimit, Store, StoreError, Versioned};

/// What a conditional write requires of the key's current state, in the store's terms
/// (RFC 9110 §13.1.1 and §13.1.2): the API turns `If-Match`/`If-None-Match` into this.
/// A report's entity tag is the store revision of its last change, so a tag names one
/// exact state of one key, never reused (not after a delete and re-create, not across
/// restarts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preconditions {
    /// `If-Match`: the write goes ahead only if this holds.
    pub if_match: Option<Match>,
    /// `If-None-Match`: the write goes ahead only if this does *not* hold.
    pub if_none_match: Option<Match>,
}

/// One condition on a key's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// `*`: the key exists.
    Any,
    /// The key exists and its published state is one of these revisions (entity tags).
    /// A state still queued behind the commit has no revision yet, so it matches none:
    /// nobody can have seen it.
    Revisions(Vec<u64>),
    /// The seed's bare integer: the key's version is this one; `0` means "does not
    /// exist".
    Version(i64),
}

impl Preconditions {
    /// The seed's `If-Match: N` (`None`: unconditional).
    pub fn version(if_match: Option<i64>) -> Preconditions {
        Preconditions {
            if_match: if_match.map(Match::Version),
            if_none_match: None,
        }
    }

    /// Whether a write may go ahead over `current`.
    fn hold(&self, current: Option<&Current>) -> bool {
        self.if_match.as_ref().is_none_or(|m| m.holds(current))
            && self
                .if_none_match
                .as_ref()
                .is_none_or(|m| !m.holds(current))
    }
}

/// A key's pending latest state, as preconditions see it.
struct Current {
    version: i64,
    /// `None` while the state is queued and not yet published.
    revision: Option<u64>,
}

impl Match {
    fn holds(&self, current: Option<&Current>) -> bool {
        match (self, current) {
            (Match::Any, c) => c.is_some(),
            (Match::Revisions(tags), Some(c)) => c.revision.is_some_and(|r| tags.contains(&r)),
            (Match::Revisions(_), None) => false,
            (Match::Version(want), Some(c)) => *want == c.version,
            (Match::Version(want), None) => *want == 0,
        }
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

    /// What preconditions judge `key` by: its pending latest version, and the
    /// revision of that state if it is published.
    fn current(&self, q: &Queue, key: &str) -> Option<Current> {
        if let Some((latest, _)) = q.latest.get(key) {
            return latest.as_ref().map(|(version, _, _)| Current {
                version: *version,
                revision: None,
            });
        }
        self.read().reports.get(key).map(|r| Current {
            version: r.entry.version,
            revision: Some(r.stamp.rev),
        })
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
    /// `Some(n)` must equal the current version (`0` for a key that does not exist).
    /// See `submit_put_if`.
    pub fn submit_put(
        &self,
        key: &ReportKey,
        content_type: String,
        payload: Box<RawValue>,
        if_match: Option<i64>,
    ) -> Ticket<Versioned<Json>> {
        self.submit_put_if(
            key,
            content_type,
            payload,
            &Preconditions::version(if_match),
        )
    }

    /// Submits a create-or-replace of a report if `conditions` hold, judged against
    /// every write submitted before this one (`Conflict` otherwise). The ticket
    /// completes with the stored entry once it is durable and visible, or with the
    /// error.
    pub fn submit_put_if(
        &self,
        key: &ReportKey,
        content_type: String,
        payload: Box<RawValue>,
        conditions: &Preconditions,
    ) -> Ticket<Versioned<Json>> {
        if let Err(refused) = self.ready_to_write() {
            return Ticket::ready(Err(refused));
        }
        let mut q = lock(&self.writes.queue);
        if q.closed {
            return Ticket::ready(Err(closed()));
        }
        let judged = self.current(&q, key.as_str());
        if !conditions.hold(judged.as_ref()) {
            return Ticket::ready(Err(StoreError::Conflict {
                current: judged.map(|c| c.version),
            }));
        }
        let current = self.pending_latest(&q, key.as_str());
        let old_file = current.as_ref().map(|(_, f, _)| f.clone());
        let file = keys::report_file_name(key, old_file.clone());
        let version = current.as_ref().map(|(v, _, _)| *v);
        let new_len = payload.get().len() as u64;
        let usage = UsageDelta {
            keys: i64::from(current.is_none()),
            bytes: new_len as i64 - current.as_ref().map_or(0, |(_, _, l)| *l as i64),
        };
        if let Some(refused) = quota_refusal(&q.quota, self.pending_usage(&q), usage) {
            return Ticket::ready(Err(refused));
        }
        let at = SystemTime::now();
        let mut entry = ReportEntry {
            key: key.as_str().to_owned(),
            content_type,
            payload: payload.into(),
            version: version.map_or(1, |v| v.saturating_add(1)),
            updated_at: timefmt::format_rfc3339_utc(at),
        };
        let body = render_report(&mut entry);
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

    /// Submits an unconditional deletion (see `submit_delete_if`).
    pub fn submit_delete(&self, key: &ReportKey) -> Ticket<u64> {
        self.submit_delete_if(key, &Preconditions::default())
    }

    /// Submits a deletion if `conditions` hold, judged like `submit_put_if`'s
    /// (`Conflict` otherwise; a key that does not exist is `NotFound` once they hold).
    /// The ticket completes with the new store revision once the deletion is durable
    /// and visible, or with the error.
    pub fn submit_delete_if(&self, key: &ReportKey, conditions: &Preconditions) -> Ticket<u64> {
        if let Err(refused) = self.ready_to_write() {
            return Ticket::ready(Err(refused));
        }
        let mut q = lock(&self.writes.queue);
        if q.closed {
            return Ticket::ready(Err(closed()));
        }
        let judged = self.current(&q, key.as_str());
        if !conditions.hold(judged.as_ref()) {
            return Ticket::ready(Err(StoreError::Conflict {
                current: judged.map(|c| c.version),
            }));
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
    fn precondition_rules() {
        let at = |version, revision| Current { version, revision };
        let published = at(3, Some(4_294_967_301));
        let queued = at(4, None);
        let cond = |if_match, if_none_match| Preconditions {
            if_match,
            if_none_match,
        };
        let tags = |r: &[u64]| Some(Match::Revisions(r.to_vec()));
        // (conditions, on an absent key, on published v3 at revision …301, on a
        // queued v4)
        let cases = [
            (cond(None, None), true, true, true),
            (cond(Some(Match::Any), None), false, true, true),
            (cond(tags(&[4_294_967_301]), None), false, true, false),
            (cond(tags(&[1, 4_294_967_301]), None), false, true, false),
            (cond(tags(&[7]), None), false, false, false),
            (cond(Some(Match::Version(0)), None), true, false, false),
            (cond(Some(Match::Version(3)), None), false, true, false),
            (cond(Some(Match::Version(4)), None), false, false, true),
            (cond(None, Some(Match::Any)), true, false, false),
            (cond(None, tags(&[4_294_967_301])), true, false, true),
            (cond(None, tags(&[7])), true, true, true),
            (cond(Some(Match::Any), tags(&[7])), false, true, true),
        ];
        for (c, absent, on_published, on_queued) in cases {
            assert_eq!(c.hold(None), absent, "{c:?} on an absent key");
            assert_eq!(c.hold(Some(&published)), on_published, "{c:?} on v3");
            assert_eq!(c.hold(Some(&queued)), on_queued, "{c:?} on queued v4");
        }
        assert_eq!(Preconditions::version(None), Preconditions::default());
    }
}
