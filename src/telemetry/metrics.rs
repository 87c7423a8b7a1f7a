//! Request counters and the Prometheus text exposition (format 0.0.4) helpers.
//!
//! Counting is lock-free (fixed arrays of atomics indexed by route and status class)
//! and sharded by thread (each thread adds to its own cache-line-padded block), so it
//! costs a few uncontended atomic adds per request. Assembling the whole `/metrics` page
//! is `api::status`'s job; this module writes families and samples, and the other
//! records of `telemetry` render their own families with it. `Rejections` counts the
//! refusals the API decides.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_utils::CachePadded;

use crate::log_gate::LogGate;

/// Route labels, in a fixed order (index = position).
pub const ROUTES: [&str; 12] = [
    "/v1/state",
    "/v1/state/metadata",
    "/v1/state/metadata/{key}",
    "/v1/state/data",
    "/v1/state/data/{key}",
    "/v1/state/secrets",
    "/v1/state/secrets/{key}",
    "/v1/state/report",
    "/v1/state/report/{key}",
    "/v1/health",
    "/metrics",
    "unknown",
];

/// Status codes counted individually; anything else is counted as `other`.
const CODES: [u16; 18] = [
    200, 204, 304, 400, 401, 403, 404, 405, 408, 409, 413, 429, 431, 500, 501, 503, 505, 507,
];

/// Upper bounds (seconds) of the latency histogram buckets.
pub const BUCKETS: [f64; 12] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0,
];

/// Blocks of counters; a thread always adds to the same one.
const SHARDS: usize = 8;

struct Shard {
    counts: Vec<AtomicU64>,
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

pub struct RequestMetrics {
    shards: Vec<CachePadded<Shard>>,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        RequestMetrics {
            shards: (0..SHARDS)
                .map(|_| {
                    CachePadded::new(Shard {
                        counts: (0..ROUTES.len() * (CODES.len() + 1))
                            .map(|_| AtomicU64::new(0))
                            .collect(),
                        buckets: Default::default(),
                        sum_micros: AtomicU64::new(0),
                    })
                })
                .collect(),
        }
    }
}

/// This thread's shard.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

fn route_index(route: &str) -> usize {
    // Callers pass the labels themselves: the pointer usually matches at once.
    ROUTES
        .iter()
        .position(|r| std::ptr::eq(r.as_ptr(), route.as_ptr()))
        .or_else(|| ROUTES.iter().position(|r| *r == route))
        .unwrap_or(ROUTES.len() - 1)
}

fn code_index(code: u16) -> usize {
    CODES.iter().position(|c| *c == code).unwrap_or(CODES.len())
}

impl RequestMetrics {
    /// Counts one answered request. A parked request is counted once, when answered
    /// (`api` wraps its check); `status` 0 means "not answered" and is ignored.
    pub fn record_request(&self, route: &str, status: u16, elapsed: Duration) {
        if status == 0 {
            return;
        }
        let shard = &self.shards[shard_index()];
        let i = route_index(route) * (CODES.len() + 1) + code_index(status);
        shard.counts[i].fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        let b = BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(BUCKETS.len());
        shard.buckets[b].fetch_add(1, Ordering::Relaxed);
        shard
            .sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    fn count(&self, i: usize) -> u64 {
        self.shards
            .iter()
            .map(|s| s.counts[i].load(Ordering::Relaxed))
            .sum()
    }

    fn bucket(&self, b: usize) -> u64 {
        self.shards
            .iter()
            .map(|s| s.buckets[b].load(Ordering::Relaxed))
            .sum()
    }

    /// Writes `plexd_nodeapi_requests_total` and `plexd_nodeapi_request_duration_seconds`.
    pub fn render(&self, out: &mut String) {
        family(
            out,
            "plexd_nodeapi_requests_total",
            "counter",
            "Requests answered, by route and status code.",
        );
        for (r, route) in ROUTES.iter().enumerate() {
            for c in 0..=CODES.len() {
                let n = self.count(r * (CODES.len() + 1) + c);
                if n == 0 {
                    continue;
                }
                let code = CODES.get(c).map_or("other".to_owned(), u16::to_string);
                let _ = writeln!(
                    out,
                    "plexd_nodeapi_requests_total{{route=\"{route}\",code=\"{code}\"}} {n}"
                );
            }
        }
        family(
            out,
            "plexd_nodeapi_request_duration_seconds",
            "histogram",
            "Time from a parsed request to its response, in seconds.",
        );
        let mut cumulative = 0;
        for (i, le) in BUCKETS.iter().enumerate() {
            cumulative += self.bucket(i);
            let _ = writeln!(
                out,
                "plexd_nodeapi_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += self.bucket(BUCKETS.len());
        let _ = writeln!(
            out,
            "plexd_nodeapi_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let sum_micros: u64 = self
            .shards
            .iter()
            .map(|s| s.sum_micros.load(Ordering::Relaxed))
            .sum();
        let sum = sum_micros as f64 / 1e6;
        let _ = writeln!(out, "plexd_nodeapi_request_duration_seconds_sum {sum}");
        let _ = writeln!(
            out,
            "plexd_nodeapi_request_duration_seconds_count {cumulative}"
        );
    }
}

/// Writes a family's `# HELP` and `# TYPE` lines.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes a one-sample family.
pub fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// `t` as Unix time in seconds (0 before the epoch), for timestamp gauges.
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Escapes a label value (`\`, `"`, newline).
pub fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Refusals the API decides (the HTTP core counts its own), by reason, each logged at
/// most once a minute so that an overload does not flood the log.
#[derive(Default)]
pub struct Rejections {
    counts: [AtomicU64; ApiReject::ALL.len()],
    logged: LogGate<{ ApiReject::ALL.len() }>,
}

/// Why the API refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiReject {
    /// 503: too many secret requests already wait for the control plane.
    UpstreamBusy,
    /// 503: the control plane did not answer within `--secret-timeout`.
    UpstreamTimeout,
    /// 503: the control plane is known to be unreachable (circuit open).
    UpstreamUnavailable,
    /// 507: a report write beyond `--max-report-keys` / `--max-report-bytes`.
    ReportQuota,
}

impl ApiReject {
    pub const ALL: [ApiReject; 4] = [
        ApiReject::UpstreamBusy,
        ApiReject::UpstreamTimeout,
        ApiReject::UpstreamUnavailable,
        ApiReject::ReportQuota,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ApiReject::UpstreamBusy => "upstream_busy",
            ApiReject::UpstreamTimeout => "upstream_timeout",
            ApiReject::UpstreamUnavailable => "upstream_unavailable",
            ApiReject::ReportQuota => "report_quota",
        }
    }
}

impl Rejections {
    pub fn count(&self, reason: ApiReject) {
        let i = reason as usize;
        let n = self.counts[i].fetch_add(1, Ordering::Relaxed) + 1;
        if self.logged.due(i) {
            log::warn!(reason = reason.label(), total = n; "request refused (logged at most once a minute per reason)");
        }
    }

    pub fn get(&self, reason: ApiReject) -> u64 {
        self.counts[reason as usize].load(Ordering::Relaxed)
    }
}
