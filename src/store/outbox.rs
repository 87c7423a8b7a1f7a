//! What still has to be synced upstream, derived from the report files and one file of
//! acknowledgements, so a PUT needs no extra fsync and nothing is lost on a crash.
//!
//! The acknowledgements are the marks file, `state/report-sync.json` (see `marks`),
//! written atomically and durably by `mark_synced`/`drop_rejected`, off the request
//! path. A key is pending when its report differs from its mark, or when it is marked but its report is gone (a pending deletion). A key created
//! and deleted between two syncs has neither, so nothing is sent. Without the file (a
//! cache written by the Go agent) every report is pending: at-least-once delivery.
//! A `SyncBatch` remembers exactly which state it carried per key, so acknowledging it
//! never marks a newer write. This module builds batches and the marks file; it does not
//! send anything or decide when to.

use std::collections::HashMap;

use crate::model::ReportSyncRequest;

use super::cache::Cache;
use super::marks::Mark;

/// A batch of report changes to send upstream, and what it carried for each key.
#[derive(Debug, Clone)]
pub struct SyncBatch {
    pub request: ReportSyncRequest,
    /// Per key: the entry state sent (`Some`) or a deletion (`None`).
    pub(super) sent: Vec<(String, Option<Mark>)>,
}

impl SyncBatch {
    /// Number of keys in the batch (entries plus deletions).
    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// The keys carried, in the order they were added.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.sent.iter().map(|(k, _)| k.as_str())
    }
}

/// Bytes of `{"entries":[],"deleted":[]}`.
const EMPTY_REQUEST_LEN: usize = 26;

/// Builds the next batch from the pending set: each key once with its latest state,
/// at most `max_keys` keys and about `max_bytes` bytes of serialized request. A single
/// entry larger than `max_bytes` is still sent alone, so that the control plane can
/// reject it and the queue moves on.
pub fn build_batch(cache: &Cache, max_keys: usize, max_bytes: usize) -> Option<SyncBatch> {
    let mut request = ReportSyncRequest::default();
    let mut sent = Vec::new();
    let mut size = EMPTY_REQUEST_LEN;
    for key in &cache.pending {
        if sent.len() >= max_keys.max(1) {
            break;
        }
        let (cost, state) = match cache.reports.get(key) {
            Some(item) => (item.body.len() + 1, Some(Mark::of(&item.entry))),
            None => (json_string_len(key) + 1, None),
        };
        if !sent.is_empty() && size + cost > max_bytes {
            break;
        }
        size += cost;
        match (&state, cache.reports.get(key)) {
            (Some(_), Some(item)) => request.entries.push(item.entry.clone()),
            _ => request.deleted.push(key.clone()),
        }
        sent.push((key.clone(), state));
    }
    (!sent.is_empty()).then_some(SyncBatch { request, sent })
}

fn json_string_len(s: &str) -> usize {
    serde_json::to_string(s).map_or(s.len() + 2, |t| t.len())
}

/// The marks after the control plane took `batch`.
pub fn acknowledge(marks: &HashMap<String, Mark>, batch: &SyncBatch) -> HashMap<String, Mark> {
    let mut next = marks.clone();
    for (key, state) in &batch.sent {
        match state {
            Some(m) => {
                next.insert(key.clone(), m.clone());
            }
            None => {
                next.remove(key);
            }
        }
    }
    next
}
