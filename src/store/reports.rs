//! Report writes: PUT with optimistic locking and DELETE, serialized per key.
//!
//! Writers of one key take that key's own mutex (from a map that forgets unused keys),
//! check `If-Match` against the published entry, make the change durable, and only then
//! publish it under a brief cache write lock. Different keys proceed in parallel and
//! share folder fsyncs. The file written is the pending-sync record too (see `outbox`),
//! so a PUT costs one file fsync and one shared folder fsync. This module does not
//! validate keys (`ReportKey` did) or parse request bodies (the router did).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::value::RawValue;

use crate::keys::{self, ReportKey};
use crate::model::ReportEntry;
use crate::timefmt;

use super::cache::{render, ReportItem};
use super::{io_err, lock, Change, ChangeKind, Json, Store, StoreError, Versioned};

/// Per-key mutexes, created on demand and dropped when nobody holds or waits for them.
#[derive(Default)]
pub struct KeyLocks {
    map: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl KeyLocks {
    /// Runs `f` while holding `key`'s mutex.
    pub fn with<R>(&self, key: &str, f: impl FnOnce() -> R) -> R {
        let m = lock(&self.map).entry(key.to_owned()).or_default().clone();
        let result = {
            let _guard = lock(&m);
            f()
        };
        let mut map = lock(&self.map);
        // Ours and the map's: nobody else holds or waits for it.
        if Arc::strong_count(&m) == 2 {
            map.remove(key);
        }
        result
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }
}

/// Whether `if_match` allows writing over `current` (SPEC §4).
fn precondition_holds(if_match: Option<i64>, current: Option<i64>) -> bool {
    match (if_match, current) {
        (None, _) => true,
        (Some(want), Some(have)) => want == have,
        (Some(want), None) => want == 0,
    }
}

impl Store {
    /// Creates or replaces a report. `if_match`: `None` → unconditional; `Some(n)` must
    /// equal the current version (`0` for a key that does not exist). Returns the stored
    /// entry once it is durable.
    pub fn put_report(
        &self,
        key: &ReportKey,
        content_type: String,
        payload: Box<RawValue>,
        if_match: Option<i64>,
    ) -> Result<Versioned<Json>, StoreError> {
        let stored = self.report_locks.with(key.as_str(), || {
            let (current, old_file, old_body) = {
                let c = self.read();
                match c.reports.get(key.as_str()) {
                    Some(r) => (
                        Some(r.entry.version),
                        Some(r.file.clone()),
                        Some(r.body.clone()),
                    ),
                    None => (None, None, None),
                }
            };
            // A key whose encoded name is too long can still be updated in the file the
            // Go agent wrote it to (plain name); a new one cannot be stored.
            let name = keys::file_name_for(key.as_str())
                .or_else(|| old_file.clone())
                .ok_or(StoreError::KeyNotStorable)?;
            if !precondition_holds(if_match, current) {
                return Err(StoreError::Conflict { current });
            }
            let now = SystemTime::now();
            let entry = ReportEntry {
                key: key.as_str().to_owned(),
                content_type,
                payload,
                version: current.map_or(1, |v| v.saturating_add(1)),
                updated_at: timefmt::format_rfc3339_utc(now),
            };
            let body = render(&entry);
            let jump = self.epoch_jump()?;
            // Up to the rename a failure leaves the old file; after it, the old content
            // is put back so that disk matches memory again.
            self.report
                .replace_no_dir_sync(&name, &body)
                .map_err(io_err(format!("persisting report {key:?} failed")))?;
            let made_durable = self
                .report
                .sync()
                .map_err(io_err(format!("persisting report {key:?} failed")))
                .and_then(|()| self.finish_rename(old_file.as_deref(), &name));
            if let Err(e) = made_durable {
                self.roll_back(&name, old_file.as_deref(), old_body.as_deref());
                return Err(e);
            }
            let stamp = {
                let mut c = self.write();
                let stamp = c.next_stamp(now, jump);
                c.put_report(ReportItem {
                    entry,
                    body: body.clone(),
                    file: name,
                    stamp,
                });
                stamp
            };
            Ok(Versioned::new(body, stamp))
        })?;
        self.notify(&[Change {
            revision: stored.mod_rev,
            kind: ChangeKind::Reports,
        }]);
        Ok(stored)
    }

    /// A report loaded from a file with a non-canonical name (a Go agent cache) moves to
    /// its canonical name: the old file must go, or it would come back after a restart.
    fn finish_rename(&self, old_file: Option<&str>, name: &str) -> Result<(), StoreError> {
        match old_file {
            Some(old) if old != name => self
                .report
                .remove(old)
                .map_err(io_err(format!("removing old report file {old:?} failed"))),
            _ => Ok(()),
        }
    }

    /// Best effort: puts the previous content back after a failure that came after the
    /// rename, so disk matches memory again.
    fn roll_back(&self, name: &str, old_file: Option<&str>, old_body: Option<&[u8]>) {
        let result = match (old_file, old_body) {
            (Some(old), Some(body)) if old == name => self.report.replace(name, body),
            (Some(old), Some(body)) => self
                .report
                .replace(old, body)
                .and_then(|()| self.report.remove(name)),
            _ => self.report.remove(name),
        };
        if let Err(e) = result {
            log::error!("could not roll back report file {name:?}: {e}");
        }
    }

    /// Deletes a report durably; returns the new store revision.
    pub fn delete_report(&self, key: &ReportKey) -> Result<u64, StoreError> {
        let rev = self.report_locks.with(key.as_str(), || {
            let (old_file, old_body) = {
                let c = self.read();
                match c.reports.get(key.as_str()) {
                    Some(r) => (r.file.clone(), r.body.clone()),
                    None => return Err(StoreError::NotFound),
                }
            };
            let jump = self.epoch_jump()?;
            self.report
                .remove_no_dir_sync(&old_file)
                .map_err(io_err(format!("deleting report {key:?} failed")))?;
            if let Err(e) = self.report.sync() {
                // The unlink may or may not survive a crash: put the file back.
                if let Err(e2) = self.report.replace(&old_file, &old_body) {
                    log::error!("could not restore report file {old_file:?}: {e2}");
                }
                return Err(io_err(format!("deleting report {key:?} failed"))(e));
            }
            let rev = {
                let mut c = self.write();
                let stamp = c.next_stamp(SystemTime::now(), jump);
                c.remove_report(key.as_str(), stamp);
                stamp.rev
            };
            Ok(rev)
        })?;
        self.notify(&[Change {
            revision: rev,
            kind: ChangeKind::Reports,
        }]);
        Ok(rev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn key_locks_are_forgotten() {
        let locks = KeyLocks::default();
        locks.with("a", || assert_eq!(locks.len(), 1));
        assert_eq!(locks.len(), 0);
    }
}
