//! Counters of the event stream and the reconciler, shown on `/metrics` (`render`) and
//! merged into `/v1/health` (`health_fields`).
//!
//! The stream thread and the link record facts here (connected, an event accepted,
//! rejected for a reason, ignored for its type, a reconcile that corrected the cache);
//! the status page reads them. Nothing here decides or performs I/O. Label values
//! are bounded: reject reasons are a fixed set, and ignored event types (which are
//! counted only after their signature verified) are capped at `MAX_TYPE_LABELS`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use serde_json::json;

use super::metrics::{family, label, single};

/// Distinct ignored event types counted by name; more are counted as `other`.
pub const MAX_TYPE_LABELS: usize = 32;

/// Shared counters; `Arc` it between the stream thread, the link and the status page.
#[derive(Debug, Default)]
pub struct StreamMetrics {
    connected: AtomicBool,
    connects: AtomicU64,
    reconnects: AtomicU64,
    accepted: AtomicU64,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    ignored: Mutex<BTreeMap<String, u64>>,
    reconciliations: AtomicU64,
    corrections: AtomicU64,
}

/// A copy of the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamCounts {
    pub connected: bool,
    pub connects: u64,
    pub reconnects: u64,
    pub accepted: u64,
    pub rejected: BTreeMap<&'static str, u64>,
    pub ignored: BTreeMap<String, u64>,
    pub reconciliations: u64,
    pub corrections: u64,
}

impl StreamCounts {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

impl StreamMetrics {
    pub fn new() -> StreamMetrics {
        StreamMetrics::default()
    }

    /// A stream was opened; every open after the first is a reconnect.
    pub fn record_connected(&self) {
        if self.connects.fetch_add(1, Ordering::Relaxed) > 0 {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        self.connected.store(true, Ordering::Relaxed);
    }

    pub fn record_disconnected(&self) {
        self.connected.store(false, Ordering::Relaxed);
    }

    pub fn record_accepted(&self) {
        self.accepted.fetch_add(1, Ordering::SeqCst);
    }

    /// Events applied so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// An event refused for `reason` (a stable label).
    pub fn record_rejected(&self, reason: &'static str) {
        *self
            .rejected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(reason)
            .or_default() += 1;
    }

    /// A verified event of a type that is not applied.
    pub fn record_ignored(&self, event_type: &str) {
        let mut ignored = self.ignored.lock().unwrap_or_else(PoisonError::into_inner);
        let name = if ignored.contains_key(event_type) || ignored.len() < MAX_TYPE_LABELS {
            event_type
        } else {
            "other"
        };
        *ignored.entry(name.to_owned()).or_default() += 1;
    }

    /// A full-state reconciliation was applied; `corrected`: it changed the cache.
    pub fn record_reconciliation(&self, corrected: bool) {
        self.reconciliations.fetch_add(1, Ordering::Relaxed);
        if corrected {
            self.corrections.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn counts(&self) -> StreamCounts {
        StreamCounts {
            connected: self.connected.load(Ordering::Relaxed),
            connects: self.connects.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            rejected: self
                .rejected
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            ignored: self
                .ignored
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            reconciliations: self.reconciliations.load(Ordering::Relaxed),
            corrections: self.corrections.load(Ordering::Relaxed),
        }
    }

    /// Writes the stream's and the reconciler's metric families.
    pub fn render(&self, out: &mut String) {
        let c = self.counts();
        single(
            out,
            "plexd_nodeapi_event_stream_connected",
            "gauge",
            "1 while the control-plane event stream is open.",
            u8::from(c.connected),
        );
        single(
            out,
            "plexd_nodeapi_event_stream_reconnects_total",
            "counter",
            "Event stream connections opened after the first.",
            c.reconnects,
        );
        single(
            out,
            "plexd_nodeapi_events_accepted_total",
            "counter",
            "Verified events applied to the cache.",
            c.accepted,
        );
        family(
            out,
            "plexd_nodeapi_events_rejected_total",
            "counter",
            "Events refused, by reason.",
        );
        for (reason, n) in &c.rejected {
            let _ = writeln!(
                out,
                "plexd_nodeapi_events_rejected_total{{reason=\"{}\"}} {n}",
                label(reason)
            );
        }
        family(
            out,
            "plexd_nodeapi_events_ignored_total",
            "counter",
            "Verified events of types that are not applied, by type.",
        );
        for (event_type, n) in &c.ignored {
            let _ = writeln!(
                out,
                "plexd_nodeapi_events_ignored_total{{event_type=\"{}\"}} {n}",
                label(event_type)
            );
        }
        single(
            out,
            "plexd_nodeapi_reconcile_corrections_total",
            "counter",
            "Reconciliations that changed the cache (it had diverged from the control plane).",
            c.corrections,
        );
    }

    /// Fields merged into the health document's `control_plane` object.
    pub fn health_fields(&self) -> serde_json::Map<String, serde_json::Value> {
        let c = self.counts();
        let doc = json!({
            "event_stream_connected": c.connected,
            "events_accepted": c.accepted,
            "events_rejected": c.rejected_total(),
            "reconciliations": c.reconciliations,
            "reconcile_corrections": c.corrections,
        });
        match doc {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_renders() {
        let m = StreamMetrics::new();
        m.record_connected();
        m.record_connected();
        m.record_accepted();
        m.record_rejected("stale");
        m.record_rejected("stale");
        m.record_ignored("signing_key_rotated");
        for i in 0..40 {
            m.record_ignored(&format!("t{i}"));
        }
        m.record_reconciliation(true);
        m.record_reconciliation(false);
        let c = m.counts();
        assert_eq!((c.connects, c.reconnects, c.accepted), (2, 1, 1));
        assert_eq!(c.rejected.get("stale"), Some(&2));
        assert_eq!(c.ignored.len(), MAX_TYPE_LABELS + 1);
        assert_eq!((c.reconciliations, c.corrections), (2, 1));
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("plexd_nodeapi_events_rejected_total{reason=\"stale\"} 2"));
        assert!(out.contains("plexd_nodeapi_event_stream_connected 1"));
        assert_eq!(m.health_fields()["events_rejected"], 2);
    }
}
