//! `GET /v1/health` and `GET /metrics`: the daemon's own state, for people and for
//! Prometheus. Reads counters others keep (store, link health, HTTP core stats); keeps
//! none of its own except the request counters it is handed.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::cp::health::{LinkHealth, SecretOutcome};
use crate::http::{Request, Response, ServerStats};
use crate::metrics::{family, label, single, RequestMetrics};
use crate::store::Store;
use crate::timefmt::format_rfc3339_utc;

/// Counters owned by other threads (event stream, reconciler) that the metrics page shows.
pub trait ExtraMetrics: Send + Sync {
    fn render(&self, out: &mut String);
    /// Fields merged into the health document's `control_plane` object.
    fn health_fields(&self) -> serde_json::Map<String, serde_json::Value>;
}

pub struct Status {
    pub metrics: Arc<RequestMetrics>,
    pub store: Arc<Store>,
    pub health: Arc<LinkHealth>,
    pub server: OnceLock<Arc<ServerStats>>,
    pub extra: OnceLock<Arc<dyn ExtraMetrics>>,
    pub kube: OnceLock<Arc<crate::kube::health::KubeHealth>>,
    pub secret_auth: bool,
    started: Instant,
}

fn time_or_null(t: Option<SystemTime>) -> serde_json::Value {
    t.map_or(serde_json::Value::Null, |t| format_rfc3339_utc(t).into())
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Status {
    pub fn new(store: Arc<Store>, health: Arc<LinkHealth>, secret_auth: bool) -> Status {
        Status {
            metrics: Arc::new(RequestMetrics::default()),
            store,
            health,
            server: OnceLock::new(),
            extra: OnceLock::new(),
            kube: OnceLock::new(),
            secret_auth,
            started: Instant::now(),
        }
    }

    /// Whether the daemon has the state it should serve: the disk cache is loaded (the
    /// daemon does that before it binds, so it always holds here) and, when a control
    /// plane is configured, the first full-state fetch has been attempted — succeeded
    /// or failed. A failed fetch still counts: the daemon then serves its disk cache on
    /// purpose, and readiness must not depend on the control plane being up (that is
    /// what `status: degraded` reports).
    pub fn ready(&self) -> bool {
        let link = self.health.snapshot();
        !link.configured || link.reconciles + link.reconcile_failures > 0
    }

    /// The health document. Always 200 while serving; with `?ready` (a readiness
    /// probe) 503 until `ready()`.
    pub fn health(&self, req: &Request) -> Response {
        let link = self.health.snapshot();
        let counts = self.store.counts();
        let ready = self.ready();
        let mut control_plane = json!({
            "configured": link.configured,
            "connected": link.connected,
            "last_event": time_or_null(link.last_event),
            "last_reconcile": time_or_null(link.last_reconcile),
            "last_sync": time_or_null(link.last_sync),
            "last_error": link.last_error,
            "last_error_at": time_or_null(link.last_error_at),
            "consecutive_sync_failures": link.consecutive_sync_failures,
        });
        if let (Some(extra), Some(obj)) = (self.extra.get(), control_plane.as_object_mut()) {
            obj.extend(extra.health_fields());
        }
        let kube_degraded = self.kube.get().is_some_and(|k| k.degraded());
        let mut doc = json!({
            "status": if link.degraded() || kube_degraded { "degraded" } else { "ok" },
            "ready": ready,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "cache": {
                "loaded": true,
                "metadata": counts.metadata,
                "data": counts.data,
                "secrets": counts.secrets,
                "reports": counts.reports,
                "revision": self.store.revision(),
                "last_change": format_rfc3339_utc(counts.last_change),
            },
            "control_plane": control_plane,
            "reports_pending": self.store.pending_count(),
            "secret_auth": self.secret_auth,
        });
        if let (Some(k), Some(obj)) = (self.kube.get(), doc.as_object_mut()) {
            obj.insert("kubernetes".into(), k.health_json());
        }
        let code = if req.query_param("ready").is_some() && !ready {
            503
        } else {
            200
        };
        Response::json(code, doc.to_string().into_bytes()).header("Cache-Control", "no-store")
    }

    pub fn metrics(&self) -> Response {
        let mut out = String::with_capacity(8192);
        self.metrics.render(&mut out);
        if let Some(s) = self.server.get() {
            use std::sync::atomic::Ordering::Relaxed;
            single(
                &mut out,
                "plexd_nodeapi_open_connections",
                "gauge",
                "Open client connections.",
                s.open_connections.load(Relaxed),
            );
            single(
                &mut out,
                "plexd_nodeapi_connections_accepted_total",
                "counter",
                "Connections accepted.",
                s.accepted_total.load(Relaxed),
            );
            single(
                &mut out,
                "plexd_nodeapi_connections_rejected_total",
                "counter",
                "Connections closed at once because the connection limit was reached.",
                s.rejected_connections.load(Relaxed),
            );
            single(
                &mut out,
                "plexd_nodeapi_parked_requests",
                "gauge",
                "Blocking queries waiting for a change.",
                s.parked.load(Relaxed),
            );
            single(
                &mut out,
                "plexd_nodeapi_parked_rejected_total",
                "counter",
                "Blocking queries refused with 429 because too many were waiting.",
                s.parked_rejected.load(Relaxed),
            );
        }
        let counts = self.store.counts();
        family(
            &mut out,
            "plexd_nodeapi_cache_entries",
            "gauge",
            "Entries in the state cache, by kind.",
        );
        for (kind, n) in [
            ("metadata", counts.metadata),
            ("data", counts.data),
            ("secrets", counts.secrets),
            ("reports", counts.reports),
        ] {
            let _ = writeln!(out, "plexd_nodeapi_cache_entries{{kind=\"{kind}\"}} {n}");
        }
        single(
            &mut out,
            "plexd_nodeapi_cache_revision",
            "gauge",
            "Store-wide revision (X-Plexd-Index).",
            self.store.revision(),
        );
        single(
            &mut out,
            "plexd_nodeapi_cache_last_change_timestamp_seconds",
            "gauge",
            "Unix time of the last cache change.",
            unix_seconds(counts.last_change),
        );
        single(
            &mut out,
            "plexd_nodeapi_reports_pending",
            "gauge",
            "Report changes not yet acknowledged by the control plane.",
            self.store.pending_count(),
        );
        let link = self.health.snapshot();
        single(
            &mut out,
            "plexd_nodeapi_report_sync_attempts_total",
            "counter",
            "Report sync requests sent.",
            link.sync_attempts,
        );
        single(
            &mut out,
            "plexd_nodeapi_report_sync_failures_total",
            "counter",
            "Report sync requests that failed.",
            link.sync_failures,
        );
        single(
            &mut out,
            "plexd_nodeapi_reports_dropped_total",
            "counter",
            "Report entries rejected by the control plane and dropped.",
            link.reports_dropped,
        );
        single(
            &mut out,
            "plexd_nodeapi_report_last_sync_timestamp_seconds",
            "gauge",
            "Unix time of the last acknowledged report sync (0 = never).",
            link.last_sync.map_or(0.0, unix_seconds),
        );
        family(
            &mut out,
            "plexd_nodeapi_secret_fetches_total",
            "counter",
            "Secret reads, by outcome.",
        );
        for outcome in SecretOutcome::ALL {
            let _ = writeln!(
                out,
                "plexd_nodeapi_secret_fetches_total{{outcome=\"{}\"}} {}",
                outcome.as_str(),
                link.secret_fetches(outcome)
            );
        }
        single(
            &mut out,
            "plexd_nodeapi_control_plane_connected",
            "gauge",
            "1 while the control plane answers.",
            u8::from(link.connected),
        );
        single(
            &mut out,
            "plexd_nodeapi_reconciliations_total",
            "counter",
            "Full-state fetches applied.",
            link.reconciles,
        );
        single(
            &mut out,
            "plexd_nodeapi_reconciliation_failures_total",
            "counter",
            "Full-state fetches that failed.",
            link.reconcile_failures,
        );
        if let Some(extra) = self.extra.get() {
            extra.render(&mut out);
        }
        if let Some(k) = self.kube.get() {
            k.render_metrics(&mut out);
        }
        family(
            &mut out,
            "plexd_nodeapi_build_info",
            "gauge",
            "Build information.",
        );
        let _ = writeln!(
            out,
            "plexd_nodeapi_build_info{{version=\"{}\",revision=\"{}\"}} 1",
            label(env!("CARGO_PKG_VERSION")),
            label(option_env!("PLEXD_NODEAPI_GIT_REVISION").unwrap_or("unknown"))
        );
        Response::new(200)
            .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            .body(out.into_bytes())
    }
}
