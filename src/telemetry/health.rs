//! Health of the control-plane link, shared by the syncer, the link, the secret fetches
//! and the status pages (`/v1/health`, and `/metrics` through `render`).
//!
//! Writers record facts (a sync failed, a reconcile succeeded, a secret fetch ended
//! with outcome X); readers take a consistent `snapshot()`. Counters are atomics; the
//! timestamps and the last error share one small mutex that is never held across I/O.
//! This module decides nothing and performs no I/O; `LinkHealthSnapshot::degraded`
//! is the one interpretation it offers, `LinkHealthSnapshot::render` its metrics. The last error is a short description that
//! callers must build without tokens, keys or secret values.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use super::metrics::{family, single, unix_seconds};

/// How a secret fetch for a local client ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretOutcome {
    Ok,
    NotFound,
    Unavailable,
    DecryptError,
    Forbidden,
}

impl SecretOutcome {
    pub const ALL: [SecretOutcome; 5] = [
        SecretOutcome::Ok,
        SecretOutcome::NotFound,
        SecretOutcome::Unavailable,
        SecretOutcome::DecryptError,
        SecretOutcome::Forbidden,
    ];

    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretOutcome::Ok => "ok",
            SecretOutcome::NotFound => "not_found",
            SecretOutcome::Unavailable => "unavailable",
            SecretOutcome::DecryptError => "decrypt_error",
            SecretOutcome::Forbidden => "forbidden",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Consecutive failed syncs after which the link counts as degraded.
pub const DEGRADED_AFTER_SYNC_FAILURES: u64 = 3;

#[derive(Debug, Default)]
struct Times {
    last_event: Option<SystemTime>,
    last_reconcile: Option<SystemTime>,
    last_sync: Option<SystemTime>,
    last_error: Option<String>,
    last_error_at: Option<SystemTime>,
}

/// Shared, thread-safe health record of the control-plane link.
#[derive(Debug, Default)]
pub struct LinkHealth {
    configured: AtomicBool,
    connected: AtomicBool,
    /// The latest full-state fetch failed: unreachable, or an answer that could not be
    /// used (a 4xx/5xx, garbage, the wrong shape, too large), or it could not be stored.
    state_failing: AtomicBool,
    times: Mutex<Times>,
    sync_attempts: AtomicU64,
    sync_failures: AtomicU64,
    consecutive_sync_failures: AtomicU64,
    reports_synced: AtomicU64,
    reports_dropped: AtomicU64,
    reconciles: AtomicU64,
    reconcile_failures: AtomicU64,
    secret_fetches: [AtomicU64; 5],
}

/// A point-in-time copy of `LinkHealth`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkHealthSnapshot {
    pub configured: bool,
    pub connected: bool,
    /// The latest full-state fetch failed (its reason is `last_error`).
    pub state_failing: bool,
    pub last_event: Option<SystemTime>,
    pub last_reconcile: Option<SystemTime>,
    pub last_sync: Option<SystemTime>,
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
    pub sync_attempts: u64,
    pub sync_failures: u64,
    pub consecutive_sync_failures: u64,
    /// Keys (entries and deletions) acknowledged by the control plane.
    pub reports_synced: u64,
    /// Entries the control plane rejected individually and that were dropped.
    pub reports_dropped: u64,
    pub reconciles: u64,
    pub reconcile_failures: u64,
    /// Indexed like `SecretOutcome::ALL`.
    pub secret_fetches: [u64; 5],
}

impl LinkHealthSnapshot {
    /// A configured control plane is unreachable, answers the state fetch with
    /// something unusable, or report syncs keep failing.
    pub fn degraded(&self) -> bool {
        self.configured
            && (!self.connected
                || self.state_failing
                || self.consecutive_sync_failures >= DEGRADED_AFTER_SYNC_FAILURES)
    }

    pub fn secret_fetches(&self, outcome: SecretOutcome) -> u64 {
        self.secret_fetches[outcome.index()]
    }

    /// Writes the link's metric families: report sync, secret fetches, connection and
    /// reconciliations.
    pub fn render(&self, out: &mut String) {
        single(
            out,
            "plexd_nodeapi_report_sync_attempts_total",
            "counter",
            "Report sync requests sent.",
            self.sync_attempts,
        );
        single(
            out,
            "plexd_nodeapi_report_sync_failures_total",
            "counter",
            "Report sync requests that failed.",
            self.sync_failures,
        );
        single(
            out,
            "plexd_nodeapi_reports_dropped_total",
            "counter",
            "Report entries rejected by the control plane and dropped.",
            self.reports_dropped,
        );
        single(
            out,
            "plexd_nodeapi_report_last_sync_timestamp_seconds",
            "gauge",
            "Unix time of the last acknowledged report sync (0 = never).",
            self.last_sync.map_or(0.0, unix_seconds),
        );
        family(
            out,
            "plexd_nodeapi_secret_fetches_total",
            "counter",
            "Secret reads, by outcome.",
        );
        for outcome in SecretOutcome::ALL {
            let _ = writeln!(
                out,
                "plexd_nodeapi_secret_fetches_total{{outcome=\"{}\"}} {}",
                outcome.as_str(),
                self.secret_fetches(outcome)
            );
        }
        single(
            out,
            "plexd_nodeapi_control_plane_connected",
            "gauge",
            "1 while the control plane answers.",
            u8::from(self.connected),
        );
        single(
            out,
            "plexd_nodeapi_reconciliations_total",
            "counter",
            "Full-state fetches applied.",
            self.reconciles,
        );
        single(
            out,
            "plexd_nodeapi_reconciliation_failures_total",
            "counter",
            "Full-state fetches that failed.",
            self.reconcile_failures,
        );
    }
}

impl LinkHealth {
    /// `configured`: whether a control plane URL was given at all.
    pub fn new(configured: bool) -> LinkHealth {
        let h = LinkHealth::default();
        h.configured.store(configured, Ordering::Relaxed);
        h
    }

    pub fn is_configured(&self) -> bool {
        self.configured.load(Ordering::Relaxed)
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    /// A verified event was applied.
    pub fn record_event(&self) {
        self.set_connected(true);
        self.with_times(|t| t.last_event = Some(SystemTime::now()));
    }

    /// A full-state fetch was applied.
    pub fn record_reconcile_ok(&self) {
        self.set_connected(true);
        self.state_failing.store(false, Ordering::Relaxed);
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        self.with_times(|t| t.last_reconcile = Some(SystemTime::now()));
    }

    /// A full-state fetch failed; `unreachable` marks the link disconnected.
    pub fn record_reconcile_failure(&self, error: &str, unreachable: bool) {
        self.reconcile_failures.fetch_add(1, Ordering::Relaxed);
        self.state_failing.store(true, Ordering::Relaxed);
        if unreachable {
            self.set_connected(false);
        }
        self.record_error(error);
    }

    /// A report sync request is about to be sent.
    pub fn record_sync_attempt(&self) {
        self.sync_attempts.fetch_add(1, Ordering::Relaxed);
    }

    /// The control plane acknowledged a batch of `keys` entries and deletions.
    pub fn record_sync_ok(&self, keys: usize) {
        self.set_connected(true);
        self.consecutive_sync_failures.store(0, Ordering::Relaxed);
        self.reports_synced
            .fetch_add(keys as u64, Ordering::Relaxed);
        self.with_times(|t| t.last_sync = Some(SystemTime::now()));
    }

    /// A report sync failed; `unreachable` marks the link disconnected.
    pub fn record_sync_failure(&self, error: &str, unreachable: bool) {
        self.sync_failures.fetch_add(1, Ordering::Relaxed);
        self.consecutive_sync_failures
            .fetch_add(1, Ordering::Relaxed);
        if unreachable {
            self.set_connected(false);
        }
        self.record_error(error);
    }

    /// An entry was rejected by the control plane and dropped.
    pub fn record_report_dropped(&self) {
        self.reports_dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_secret_fetch(&self, outcome: SecretOutcome) {
        self.secret_fetches[outcome.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Remembers the latest error description (must not contain secrets or tokens).
    pub fn record_error(&self, error: &str) {
        let now = SystemTime::now();
        self.with_times(|t| {
            t.last_error = Some(error.to_owned());
            t.last_error_at = Some(now);
        });
    }

    pub fn snapshot(&self) -> LinkHealthSnapshot {
        let times = match self.times.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        LinkHealthSnapshot {
            configured: self.configured.load(Ordering::Relaxed),
            connected: self.connected.load(Ordering::Relaxed),
            state_failing: self.state_failing.load(Ordering::Relaxed),
            last_event: times.last_event,
            last_reconcile: times.last_reconcile,
            last_sync: times.last_sync,
            last_error: times.last_error.clone(),
            last_error_at: times.last_error_at,
            sync_attempts: self.sync_attempts.load(Ordering::Relaxed),
            sync_failures: self.sync_failures.load(Ordering::Relaxed),
            consecutive_sync_failures: self.consecutive_sync_failures.load(Ordering::Relaxed),
            reports_synced: self.reports_synced.load(Ordering::Relaxed),
            reports_dropped: self.reports_dropped.load(Ordering::Relaxed),
            reconciles: self.reconciles.load(Ordering::Relaxed),
            reconcile_failures: self.reconcile_failures.load(Ordering::Relaxed),
            secret_fetches: std::array::from_fn(|i| self.secret_fetches[i].load(Ordering::Relaxed)),
        }
    }

    fn with_times(&self, f: impl FnOnce(&mut Times)) {
        let mut times = match self.times.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut times);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_snapshots() {
        let h = LinkHealth::new(true);
        let s = h.snapshot();
        assert!(s.configured && !s.connected && s.degraded());
        h.record_reconcile_ok();
        h.record_sync_attempt();
        h.record_sync_ok(3);
        h.record_secret_fetch(SecretOutcome::Ok);
        h.record_secret_fetch(SecretOutcome::NotFound);
        h.record_secret_fetch(SecretOutcome::NotFound);
        let s = h.snapshot();
        assert!(s.connected && !s.degraded());
        assert!(s.last_reconcile.is_some() && s.last_sync.is_some());
        assert_eq!(s.reports_synced, 3);
        assert_eq!(s.secret_fetches(SecretOutcome::NotFound), 2);
        assert_eq!(s.secret_fetches(SecretOutcome::Ok), 1);
        for _ in 0..DEGRADED_AFTER_SYNC_FAILURES {
            h.record_sync_attempt();
            h.record_sync_failure("control plane answered 503", false);
        }
        let s = h.snapshot();
        assert!(s.connected && s.degraded());
        assert_eq!(s.last_error.as_deref(), Some("control plane answered 503"));
        h.record_sync_ok(1);
        assert!(!h.snapshot().degraded());
        h.record_reconcile_failure("unreachable", true);
        assert!(h.snapshot().degraded());
        // Reachable but unusable: degraded although connected, until a fetch works.
        h.record_reconcile_ok();
        h.record_event();
        h.record_reconcile_failure("state fetch failed: response not understood", false);
        let s = h.snapshot();
        assert!(s.connected && s.state_failing && s.degraded());
        h.record_event();
        assert!(
            h.snapshot().degraded(),
            "an event does not clear a failing state fetch"
        );
        h.record_reconcile_ok();
        assert!(!h.snapshot().degraded());
    }

    #[test]
    fn offline_is_not_degraded() {
        let h = LinkHealth::new(false);
        assert!(!h.snapshot().degraded());
    }
}
