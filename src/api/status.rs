//! `GET /v1/health` and `GET /metrics`: the daemon's own state, for people and for
//! Prometheus. Reads what others keep (the store, the telemetry records of the link and
//! the event stream, the HTTP core's stats); keeps nothing of its own except the
//! request counters.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use serde_json::json;

use crate::api::error::ApiError;
use crate::http::{RejectReason, Request, Response, ServerStats};
use crate::pool::PoolStats;
use crate::secrets::breaker::CircuitState;
use crate::secrets::Secrets;
use crate::store::Store;
use crate::telemetry::health::LinkHealth;
use crate::telemetry::kubernetes::KubeHealth;
use crate::telemetry::metrics::{
    family, label, single, unix_seconds, ApiReject, Rejections, RequestMetrics,
};
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
    /// Refusals the API decides, by reason.
    pub rejections: Arc<Rejections>,
    /// The upstream pool (secret fetches), once it runs.
    pub upstream: OnceLock<Arc<PoolStats>>,
    /// The secret source, for its circuit breaker's state.
    pub secrets: OnceLock<Arc<Secrets>>,
    pub max_connections: usize,
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
            rejections: Arc::new(Rejections::default()),
            upstream: OnceLock::new(),
            secrets: OnceLock::new(),
            max_connections: 0,
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
    /// `secrets_visible`: whether the peer may see secrets; without it the secret
    /// count is left out (`--secret-auth`).
    pub fn health(&self, req: &Request, secrets_visible: bool) -> Result<Response, ApiError> {
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
        let mut cache = json!({
            "loaded": true,
            "metadata": counts.metadata,
            "data": counts.data,
            "secrets": counts.secrets,
            "reports": counts.reports,
            "revision": self.store.revision(),
            "last_change": format_rfc3339_utc(counts.last_change),
        });
        if !secrets_visible {
            if let Some(obj) = cache.as_object_mut() {
                obj.remove("secrets");
            }
        }
        let disk = self.store.disk_fault();
        let storage = json!({
            "writable": disk.is_none(),
            "full": disk.as_ref().is_some_and(|f| f.full),
            "error": disk.as_ref().map(|f| f.reason.as_str()),
            "since": time_or_null(disk.as_ref().map(|f| f.since)),
        });
        let kube_degraded = self.kube.get().is_some_and(|k| k.degraded());
        let degraded = link.degraded() || disk.is_some() || kube_degraded;
        let mut doc = json!({
            "status": if degraded { "degraded" } else { "ok" },
            "ready": ready,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "cache": cache,
            "storage": storage,
            "control_plane": control_plane,
            "reports_pending": self.store.pending_count(),
            "secret_auth": self.secret_auth,
            "limits": self.limits_health(),
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
    /// `secrets_visible` as for `health`: without it the secret count is left out.
    pub fn metrics(&self, secrets_visible: bool) -> Response {
        let mut out = String::with_capacity(8192);
        self.metrics.render(&mut out);
        if let Some(stats) = self.server.get() {
            render_connections(&mut out, stats);
        }
        self.render_cache(&mut out, secrets_visible);
        self.health.snapshot().render(&mut out);
        self.stream.render(&mut out);
        if let Some(k) = self.kube.get() {
            k.render_metrics(&mut out);
        }
        self.render_limits(&mut out);
        render_build_info(&mut out);
        Response::new(200)
            .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            .body(out.into_bytes())
    }

    /// The cache's sizes, revision and last change, and the reports waiting for sync.
    fn render_cache(&self, out: &mut String, secrets_visible: bool) {
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
            if kind == "secrets" && !secrets_visible {
                continue;
            }
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
            "plexd_nodeapi_state_writable",
            "gauge",
            "1 while the state folder takes writes; 0 while it is full or read-only.",
            u8::from(self.store.disk_fault().is_none()),
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
        "Newcomers refused (503, closed) because every connection was busy at the connection limit.",
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

impl Status {
    /// Use against every bound a client can push on, for `/v1/health`.
    fn limits_health(&self) -> serde_json::Value {
        use std::sync::atomic::Ordering::Relaxed;
        let (keys, bytes, quota) = self.store.report_usage();
        let mut doc = json!({
            "reports": {
                "keys": keys, "max_keys": quota.max_keys,
                "bytes": bytes, "max_bytes": quota.max_bytes,
            },
        });
        if let Some(s) = self.server.get() {
            let (used, limit, waiting) = s.body_memory();
            doc["connections"] = json!({
                "open": s.open_connections.load(Relaxed),
                "max": self.max_connections,
                "evicted": s.evicted_connections.load(Relaxed),
            });
            doc["body_memory"] = json!({"bytes": used, "max_bytes": limit, "waiting": waiting});
            doc["parked"] = json!(s.parked.load(Relaxed));
        }
        if let Some(p) = self.upstream.get() {
            doc["upstream"] = json!({
                "queued": p.queued.load(Relaxed),
                "running": p.running.load(Relaxed),
            });
        }
        if let Some(s) = self.secrets.get() {
            doc["secret_circuit"] = json!(s.circuit().as_str());
        }
        doc
    }

    /// Refusals by reason, and the use of every bound, for `/metrics`.
    fn render_limits(&self, out: &mut String) {
        use std::sync::atomic::Ordering::Relaxed;
        family(
            out,
            "plexd_nodeapi_rejected_total",
            "counter",
            "Requests and connections refused to protect the daemon, by reason.",
        );
        if let Some(s) = self.server.get() {
            for r in RejectReason::ALL {
                let _ = writeln!(
                    out,
                    "plexd_nodeapi_rejected_total{{reason=\"{}\"}} {}",
                    r.label(),
                    s.rejected(r)
                );
            }
        }
        for r in ApiReject::ALL {
            let _ = writeln!(
                out,
                "plexd_nodeapi_rejected_total{{reason=\"{}\"}} {}",
                r.label(),
                self.rejections.get(r)
            );
        }
        if let Some(s) = self.server.get() {
            single(
                out,
                "plexd_nodeapi_connections_evicted_total",
                "counter",
                "Idle keep-alive connections closed to admit a newcomer at the connection limit.",
                s.evicted_connections.load(Relaxed),
            );
            let (used, limit, waiting) = s.body_memory();
            single(
                out,
                "plexd_nodeapi_body_memory_bytes",
                "gauge",
                "Bytes of request bodies held in memory.",
                used,
            );
            single(
                out,
                "plexd_nodeapi_body_memory_limit_bytes",
                "gauge",
                "The request body memory budget (--max-body-memory).",
                limit,
            );
            single(
                out,
                "plexd_nodeapi_body_memory_waiting",
                "gauge",
                "Connections waiting for body memory.",
                waiting,
            );
        }
        if let Some(p) = self.upstream.get() {
            single(
                out,
                "plexd_nodeapi_upstream_queued",
                "gauge",
                "Calls to the control plane waiting for an upstream thread.",
                p.queued.load(Relaxed),
            );
            single(
                out,
                "plexd_nodeapi_upstream_running",
                "gauge",
                "Calls to the control plane in progress.",
                p.running.load(Relaxed),
            );
        }
        if let Some(s) = self.secrets.get() {
            single(
                out,
                "plexd_nodeapi_secret_circuit_open",
                "gauge",
                "1 while secret requests are refused at once because the control plane is unreachable (or one probe runs).",
                u8::from(s.circuit() != CircuitState::Closed),
            );
        }
        let (keys, bytes, quota) = self.store.report_usage();
        single(
            out,
            "plexd_nodeapi_report_keys",
            "gauge",
            "Report keys stored.",
            keys,
        );
        single(
            out,
            "plexd_nodeapi_report_keys_limit",
            "gauge",
            "The report key quota (--max-report-keys).",
            quota.max_keys,
        );
        single(
            out,
            "plexd_nodeapi_report_bytes",
            "gauge",
            "Bytes of report payloads stored.",
            bytes,
        );
        single(
            out,
            "plexd_nodeapi_report_bytes_limit",
            "gauge",
            "The report payload quota (--max-report-bytes).",
            quota.max_bytes,
        );
    }
}
