//! Whether the state folder takes writes right now.
//!
//! A write that fails because the disk is full (or over quota), read-only, or not ours
//! to write turns the store read-only: reads go on from the cache, and every write is
//! refused at once with `StoreError::Unwritable` (the API answers 507 for a full disk,
//! 503 otherwise) instead of trying the disk again. A probe — rewriting the revision
//! file, which every start writes anyway — runs at most once per `PROBE_EVERY`, on the
//! next write and from the checkpointer in the background; once it works, writing
//! resumes by itself. Nothing acknowledged is deleted or rewritten to make room.
//! This module only keeps the state; the store decides when to probe and what to write.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime};

use super::files::{is_full, is_unwritable};
use super::StoreError;

/// Shortest time between two probes of an unwritable disk.
pub const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Why the disk takes no writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Full or over quota (otherwise read-only or not writable for us).
    pub full: bool,
    /// What failed, worded for the log and for clients (no secrets: paths and errno).
    pub reason: String,
    pub since: SystemTime,
}

#[derive(Default)]
struct State {
    fault: Option<Fault>,
    last_probe: Option<Instant>,
}

/// The store's view of its disk.
#[derive(Default)]
pub struct Disk {
    writable: AtomicBool,
    state: Mutex<State>,
}

impl Disk {
    pub fn new() -> Disk {
        Disk {
            writable: AtomicBool::new(true),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn writable(&self) -> bool {
        self.writable.load(Ordering::Acquire)
    }

    /// Why writes are refused, while they are.
    pub fn fault(&self) -> Option<Fault> {
        if self.writable() {
            return None;
        }
        self.state().fault.clone()
    }

    /// Looks at a failed write: a full or read-only disk turns the store read-only
    /// (logged once per episode) and gives the error to hand to the writer; any other
    /// error is the caller's to report.
    pub fn failed(&self, what: &str, e: &io::Error) -> Option<StoreError> {
        if !is_unwritable(e) {
            return None;
        }
        let mut st = self.state();
        if self.writable() || st.fault.is_none() {
            let fault = Fault {
                full: is_full(e),
                reason: format!("{what}: {e}"),
                since: SystemTime::now(),
            };
            log::error!(reason = fault.reason.as_str(); "the state folder takes no writes: serving the cache read-only, refusing writes until it does");
            st.fault = Some(fault);
            st.last_probe = Some(Instant::now());
            self.writable.store(false, Ordering::Release);
        }
        st.fault.as_ref().map(refusal)
    }

    /// The error for a write refused now, or `None` if writes may go ahead.
    pub fn refusal(&self) -> Option<StoreError> {
        if self.writable() {
            return None;
        }
        self.state().fault.as_ref().map(refusal)
    }

    /// Whether a probe may run now (at most one per `PROBE_EVERY`); takes the turn.
    pub fn probe_due(&self) -> bool {
        if self.writable() {
            return false;
        }
        let mut st = self.state();
        let due = st.last_probe.is_none_or(|t| t.elapsed() >= PROBE_EVERY);
        if due {
            st.last_probe = Some(Instant::now());
        }
        due
    }

    /// A probe worked: writes go ahead again.
    pub fn recovered(&self) {
        let mut st = self.state();
        if let Some(f) = st.fault.take() {
            log::info!(was = f.reason.as_str(); "the state folder takes writes again");
        }
        self.writable.store(true, Ordering::Release);
    }
}

fn refusal(f: &Fault) -> StoreError {
    StoreError::Unwritable {
        full: f.full,
        reason: f.reason.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_read_only_turn_it_read_only_until_recovered() {
        let d = Disk::new();
        assert!(d.refusal().is_none());
        let other = io::Error::other("boom");
        assert!(d.failed("x", &other).is_none());
        assert!(d.writable());
        let full = io::Error::from_raw_os_error(libc::ENOSPC);
        let err = d.failed("writing x", &full).unwrap();
        assert!(
            matches!(err, StoreError::Unwritable { full: true, .. }),
            "{err}"
        );
        assert!(!d.writable());
        assert!(
            !d.probe_due(),
            "a probe waits PROBE_EVERY after the failure"
        );
        let ro = io::Error::from_raw_os_error(libc::EROFS);
        // The first cause of an episode is kept.
        assert!(matches!(
            d.failed("y", &ro),
            Some(StoreError::Unwritable { full: true, .. })
        ));
        assert!(d.fault().unwrap().reason.contains("writing x"));
        d.recovered();
        assert!(d.writable() && d.fault().is_none() && d.refusal().is_none());
        assert!(matches!(
            d.failed("y", &ro),
            Some(StoreError::Unwritable { full: false, .. })
        ));
    }
}
