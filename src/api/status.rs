//! `GET /v1/health` and `GET /metrics`: the daemon's own state, for people and for
//! Prometheus. Reads what others keep (the store, the telemetry records of the link and
//! the event stream, the HTTP core's stats); keeps nothing of its own except the
//! request counters.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use serde_json::json;

use crate::api::error::ApiError;
use crate::http::{Request, Response, ServerStats};
use crate::store::Store;
use crate::telemetry::health::LinkHealth;
use crate::telemetry::kubernetes::KubeHealth;
use crate::telemetry::metrics::{family, label, single, unix_seconds, RequestMetrics};
use crate::telemetry::stream::StreamMetrics;
use crate::timefmt::format_rfc3339_utc;

pub struct Status {
    pub metrics: Arc<RequestMetrics>,
    pub store: Arc<Store>,
    pub health: Arc<LinkHealth>,
    pub stream: Arc<StreamMetrics>,
    pub server: OnceLock<Arc<ServerStats>>,
    /// With `--kubernetes`: the mirror's health and counters.
    pub kube: OnceLock<Arc<KubeHealth>>,
    pub secret_auth: bool,
    started: Instant,
}

fn time_or_null(t: Option<SystemTime>) -> serde_json::Value {
    t.map_or(serde_json::Value::Null, |t| format_rfc3339_utc(t).into())
}

impl Status {
    pub fn new(
        store: Arc<Store>,
        health: Arc<LinkHealth>,
        stream: Arc<StreamMetrics>,
        secret_auth: bool,
    ) -> Status {
        Status {
            metrics: Arc::new(RequestMetrics::default()),
            store,
            health,
            stream,
            server: OnceLock::new(),
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
    /// probe) `ApiError::NotReady` (503 with the same document) until `ready()`.
    pub fn health(&self, req: &Request) -> Result<Response, ApiError> {
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
        if let Some(obj) = control_plane.as_object_mut() {
            obj.extend(self.stream.health_fields());
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
        let body = doc.to_string().into_bytes();
        if req.query_param("ready").is_some() && !ready {
            return Err(ApiError::NotReady { health: body });
        }
        Ok(Response::json(200, body).header("Cache-Control", "no-store"))
    }

    /// The Prometheus page: requests, connections, the cache, the link and the event
    /// stream, and the build.
    pub fn metrics(&self) -> Response {
        let mut out = String::with_capacity(8192);
        self.metrics.render(&mut out);
        if let Some(stats) = self.server.get() {
            render_connections(&mut out, stats);
        }
        self.render_cache(&mut out);
        self.health.snapshot().render(&mut out);
        self.stream.render(&mut out);
        if let Some(k) = self.kube.get() {
            k.render_metrics(&mut out);
        }
        render_build_info(&mut out);
        Response::new(200)
            .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            .body(out.into_bytes())
    }

    /// The cache's sizes, revision and last change, and the reports waiting for sync.
    fn render_cache(&self, out: &mut String) {
        let counts = self.store.counts();
        family(
            out,
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
            out,
            "plexd_nodeapi_cache_revision",
            "gauge",
            "Store-wide revision (X-Plexd-Index).",
            self.store.revision(),
        );
        single(
            out,
            "plexd_nodeapi_cache_last_change_timestamp_seconds",
            "gauge",
            "Unix time of the last cache change.",
            unix_seconds(counts.last_change),
        );
        single(
            out,
            "plexd_nodeapi_reports_pending",
            "gauge",
            "Report changes not yet acknowledged by the control plane.",
            self.store.pending_count(),
        );
    }
}

/// The HTTP core's connection and parking counters.
fn render_connections(out: &mut String, s: &ServerStats) {
    use std::sync::atomic::Ordering::Relaxed;
    single(
        out,
        "plexd_nodeapi_open_connections",
        "gauge",
        "Open client connections.",
        s.open_connections.load(Relaxed),
    );
    single(
        out,
        "plexd_nodeapi_connections_accepted_total",
        "counter",
        "Connections accepted.",
        s.accepted_total.load(Relaxed),
    );
    single(
        out,
        "plexd_nodeapi_connections_rejected_total",
        "counter",
        "Connections closed at once because the connection limit was reached.",
        s.rejected_connections.load(Relaxed),
    );
    single(
        out,
        "plexd_nodeapi_parked_requests",
        "gauge",
        "Blocking queries waiting for a change.",
        s.parked.load(Relaxed),
    );
    single(
        out,
        "plexd_nodeapi_parked_rejected_total",
        "counter",
        "Blocking queries refused with 429 because too many were waiting.",
        s.parked_rejected.load(Relaxed),
    );
}

/// `plexd_nodeapi_build_info{version,revision} 1`.
fn render_build_info(out: &mut String) {
    family(
        out,
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
}
