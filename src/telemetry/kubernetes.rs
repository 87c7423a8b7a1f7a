//! Health and counters of the Kubernetes mode, shared by the mirror, the watch and the
//! caller authentication, and shown in `/v1/health` (the `kubernetes` section) and on
//! `/metrics`.
//!
//! Writers record facts; readers render a consistent view. The small mutexes here are
//! never held across I/O. Messages recorded as `last_error` come from the API server's
//! `Status` or from transport errors: they never contain a token or secret material.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use serde_json::json;

use super::metrics::{family, label, single};
use crate::timefmt::format_rfc3339_utc;

#[derive(Debug, Default)]
struct Facts {
    connected: bool,
    last_error: Option<String>,
    last_error_at: Option<SystemTime>,
    last_sync: Option<SystemTime>,
    resource: String,
    resource_version: Option<String>,
    uid: Option<String>,
}

/// The Kubernetes mode's health record.
#[derive(Debug, Default)]
pub struct KubeHealth {
    configured: AtomicBool,
    namespace: String,
    facts: Mutex<Facts>,
    counters: Mutex<BTreeMap<(&'static str, &'static str, &'static str), u64>>,
    watch_connected: AtomicBool,
    auth_in_flight: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counter families, with their label names.
const FAMILIES: &[(&str, &str, &str, &str)] = &[
    (
        "plexd_nodeapi_k8s_writes_total",
        "what",
        "outcome",
        "Writes to the Kubernetes API, by object and outcome.",
    ),
    (
        "plexd_nodeapi_k8s_reports_imported_total",
        "change",
        "",
        "Workload edits of .status.report taken into the store, by change.",
    ),
    (
        "plexd_nodeapi_k8s_reports_rejected_total",
        "reason",
        "",
        "Invalid workload entries in .status.report left untouched, by reason.",
    ),
    (
        "plexd_nodeapi_k8s_watch_restarts_total",
        "reason",
        "",
        "Watch streams of the resource started again, by reason.",
    ),
    (
        "plexd_nodeapi_k8s_auth_total",
        "step",
        "outcome",
        "Caller authentication on the TCP listener with Kubernetes tokens, by step and outcome.",
    ),
];

impl KubeHealth {
    pub fn new(namespace: &str, resource: &str) -> KubeHealth {
        let h = KubeHealth {
            configured: AtomicBool::new(true),
            namespace: namespace.to_owned(),
            ..KubeHealth::default()
        };
        h.record_resource(resource);
        h
    }

    /// The resource's name (it changes on a name collision).
    pub fn record_resource(&self, name: &str) {
        lock(&self.facts).resource = name.to_owned();
    }

    /// The API server answered and accepted plexd.
    pub fn record_ok(&self) {
        lock(&self.facts).connected = true;
    }

    /// A full reconcile succeeded.
    pub fn record_sync(&self) {
        let mut f = lock(&self.facts);
        f.connected = true;
        f.last_sync = Some(SystemTime::now());
    }

    /// A call failed. `disconnected`: the API server is unreachable or refuses plexd.
    pub fn record_error(&self, message: &str, disconnected: bool) {
        let mut f = lock(&self.facts);
        if disconnected {
            f.connected = false;
        }
        f.last_error = Some(message.to_owned());
        f.last_error_at = Some(SystemTime::now());
    }

    /// The resource as last seen.
    pub fn record_object(&self, uid: &str, resource_version: &str) {
        let mut f = lock(&self.facts);
        f.uid = Some(uid.to_owned());
        f.resource_version = Some(resource_version.to_owned());
    }

    pub fn set_watch_connected(&self, on: bool) {
        self.watch_connected.store(on, Relaxed);
    }

    /// Adds one to `family{a, b}` (`b` empty for one-label families).
    pub fn count(&self, family: &'static str, a: &'static str, b: &'static str) {
        *lock(&self.counters).entry((family, a, b)).or_insert(0) += 1;
    }

    /// The value of `family{a, b}`.
    pub fn counter(&self, family: &str, a: &str, b: &str) -> u64 {
        lock(&self.counters)
            .iter()
            .find(|((f, x, y), _)| *f == family && *x == a && *y == b)
            .map_or(0, |(_, v)| *v)
    }

    /// Reviews in flight (gauge), adjusted by the authenticator.
    pub fn auth_in_flight(&self) -> &AtomicU64 {
        &self.auth_in_flight
    }

    pub fn is_connected(&self) -> bool {
        lock(&self.facts).connected
    }

    /// The API server is unreachable or refuses plexd.
    pub fn degraded(&self) -> bool {
        self.configured.load(Relaxed) && !self.is_connected()
    }

    /// The `kubernetes` section of `/v1/health`.
    pub fn health_json(&self) -> serde_json::Value {
        let f = lock(&self.facts);
        let t = |t: Option<SystemTime>| t.map(format_rfc3339_utc);
        json!({
            "configured": self.configured.load(Relaxed),
            "connected": f.connected,
            "watching": self.watch_connected.load(Relaxed),
            "namespace": self.namespace,
            "resource": f.resource,
            "uid": f.uid,
            "resource_version": f.resource_version,
            "last_sync": t(f.last_sync),
            "last_error": f.last_error,
            "last_error_at": t(f.last_error_at),
        })
    }

    /// The Kubernetes families of `/metrics`.
    pub fn render_metrics(&self, out: &mut String) {
        single(
            out,
            "plexd_nodeapi_k8s_connected",
            "gauge",
            "1 while the Kubernetes API answers and accepts plexd.",
            u8::from(self.is_connected()),
        );
        single(
            out,
            "plexd_nodeapi_k8s_watch_connected",
            "gauge",
            "1 while the watch stream of the resource is open.",
            u8::from(self.watch_connected.load(Relaxed)),
        );
        single(
            out,
            "plexd_nodeapi_k8s_auth_in_flight",
            "gauge",
            "TokenReview and SubjectAccessReview calls in flight.",
            self.auth_in_flight.load(Relaxed),
        );
        let counters = lock(&self.counters).clone();
        for (name, l1, l2, help) in FAMILIES {
            family(out, name, "counter", help);
            for ((f, a, b), v) in &counters {
                if f != name {
                    continue;
                }
                if l2.is_empty() {
                    let _ = writeln!(out, "{name}{{{l1}=\"{}\"}} {v}", label(a));
                } else {
                    let _ = writeln!(
                        out,
                        "{name}{{{l1}=\"{}\",{l2}=\"{}\"}} {v}",
                        label(a),
                        label(b)
                    );
                }
            }
        }
    }
}

/// Family names, for `count`.
pub const WRITES: &str = "plexd_nodeapi_k8s_writes_total";
pub const IMPORTED: &str = "plexd_nodeapi_k8s_reports_imported_total";
pub const REJECTED: &str = "plexd_nodeapi_k8s_reports_rejected_total";
pub const WATCH_RESTARTS: &str = "plexd_nodeapi_k8s_watch_restarts_total";
pub const AUTH: &str = "plexd_nodeapi_k8s_auth_total";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_and_metrics() {
        let h = KubeHealth::new("plexd-system", "node-n-abc123");
        assert!(h.degraded(), "not connected before the first answer");
        h.record_sync();
        h.record_object("uid-1", "1042");
        assert!(!h.degraded());
        h.count(WRITES, "status", "ok");
        h.count(WRITES, "status", "ok");
        h.count(REJECTED, "payload", "");
        h.record_error("forbidden", true);
        assert!(h.degraded());
        let doc = h.health_json();
        assert_eq!(doc["resource"], "node-n-abc123");
        assert_eq!(doc["resource_version"], "1042");
        assert_eq!(doc["connected"], false);
        assert_eq!(doc["last_error"], "forbidden");
        let mut out = String::new();
        h.render_metrics(&mut out);
        assert!(out.contains("plexd_nodeapi_k8s_writes_total{what=\"status\",outcome=\"ok\"} 2"));
        assert!(out.contains("plexd_nodeapi_k8s_reports_rejected_total{reason=\"payload\"} 1"));
        assert!(out.contains("plexd_nodeapi_k8s_connected 0"));
        assert_eq!(h.counter(WRITES, "status", "ok"), 2);
    }
}
