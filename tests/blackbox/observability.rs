//! `/v1/health` and `/metrics` over real sockets: readiness before and after the first
//! state fetch, `degraded` with the control plane down and `ok` with it up, a strict
//! check of the Prometheus text format (0.0.4), counters that move with requests
//! (parked ones included, when answered), and the TCP token rule for `/metrics`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::common::*;

// ---- a small Prometheus text-format checker ---------------------------------------

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        v => v.parse().map_err(|_| format!("bad value {v:?}")),
    }
}

/// `{a="x",b="y\"z"}` → map; returns the rest of the line after `}`.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (name, after) = rest.split_once("=\"").ok_or("label without =\"")?;
        if !valid_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("duplicate label {name}"));
        }
        rest = &after[end + 1..];
        if !(rest.starts_with(',') || rest.starts_with('}')) {
            return Err(format!("junk after label {name}"));
        }
    }
}

fn family_of<'a>(sample: &'a str, types: &HashMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = sample.strip_suffix(suffix) {
            if types.get(base).map(String::as_str) == Some("histogram") {
                return base;
            }
        }
    }
    sample
}

/// Checks the exposition strictly; returns the samples.
fn check_exposition(text: &str) -> Vec<Sample> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashSet<String> = HashSet::new();
    let mut samples = Vec::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    assert!(text.ends_with('\n'), "exposition must end with a newline");
    for (n, line) in text.lines().enumerate() {
        let at = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match words.next() {
                Some("HELP") => {
                    let name = words.next().unwrap_or("");
                    assert!(valid_name(name), "{}", at("bad HELP name".into()));
                    assert!(helps.insert(name.to_owned()), "{}", at("HELP twice".into()));
                }
                Some("TYPE") => {
                    let name = words.next().unwrap_or("");
                    let kind = words.next().unwrap_or("");
                    assert!(valid_name(name), "{}", at("bad TYPE name".into()));
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "{}",
                        at(format!("bad type {kind:?}"))
                    );
                    assert!(
                        types.insert(name.to_owned(), kind.to_owned()).is_none(),
                        "{}",
                        at("family declared twice".into())
                    );
                }
                _ => {}
            }
            continue;
        }
        assert!(!line.trim().is_empty(), "{}", at("blank line".into()));
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("{}", at("no value".into())));
        let name = &line[..name_end];
        assert!(valid_name(name), "{}", at("bad metric name".into()));
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end + 1..]).unwrap_or_else(|e| panic!("{}", at(e)))
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut parts = rest.split_whitespace();
        let value = parse_value(parts.next().unwrap_or("")).unwrap_or_else(|e| panic!("{}", at(e)));
        if let Some(ts) = parts.next() {
            ts.parse::<i64>()
                .unwrap_or_else(|_| panic!("{}", at("bad timestamp".into())));
        }
        assert!(parts.next().is_none(), "{}", at("junk after value".into()));
        let family = family_of(name, &types).to_owned();
        let kind = types
            .get(&family)
            .unwrap_or_else(|| panic!("{}", at("sample before its # TYPE".into())));
        if kind == "counter" {
            assert!(value >= 0.0, "{}", at("negative counter".into()));
        }
        if current.as_deref() != Some(family.as_str()) {
            assert!(
                !finished.contains(&family),
                "{}",
                at("family's samples are not contiguous".into())
            );
            if let Some(prev) = current.replace(family.clone()) {
                finished.insert(prev);
            }
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    // Histograms: cumulative buckets ending at +Inf, equal to _count.
    for (family, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for s in samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
        {
            let le = parse_value(s.labels.get("le").expect("bucket without le")).unwrap();
            let mut rest = s.labels.clone();
            rest.remove("le");
            series
                .entry(format!("{rest:?}"))
                .or_default()
                .push((le, s.value));
        }
        assert!(!series.is_empty(), "histogram {family} without buckets");
        for (key, buckets) in series {
            for w in buckets.windows(2) {
                assert!(w[0].0 < w[1].0, "{family}: le not increasing");
                assert!(w[0].1 <= w[1].1, "{family}: buckets not cumulative");
            }
            let last = buckets.last().unwrap();
            assert_eq!(last.0, f64::INFINITY, "{family}: last bucket is not +Inf");
            let count = samples
                .iter()
                .find(|s| {
                    let mut l = s.labels.clone();
                    l.remove("le");
                    s.name == format!("{family}_count") && format!("{l:?}") == key
                })
                .unwrap_or_else(|| panic!("{family}: no _count"));
            assert_eq!(count.value, last.1, "{family}: +Inf bucket != _count");
            assert!(
                samples.iter().any(|s| s.name == format!("{family}_sum")),
                "{family}: no _sum"
            );
        }
    }
    samples
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map_or(0.0, |s| s.value)
}

fn scrape(d: &TestDaemon) -> Vec<Sample> {
    let r = d.get("/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    check_exposition(&r.text())
}

#[test]
fn the_checker_rejects_what_prometheus_would() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n";
    assert_eq!(check_exposition(ok).len(), 1);
    for bad in [
        "a_total 1\n",                           // undeclared
        "# TYPE a gauge\n# TYPE a gauge\na 1\n", // declared twice
        "# TYPE a gauge\na one\n",               // bad float
        "# TYPE a gauge\na{1x=\"\"} 1\n",        // bad label
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", // no +Inf
        "# TYPE a gauge\n# TYPE b gauge\na 1\nb 1\na 2\n",                // not contiguous
    ] {
        let caught = std::panic::catch_unwind(|| check_exposition(bad)).is_err();
        assert!(caught, "accepted {bad:?}");
    }
}

#[test]
fn metrics_are_well_formed_and_counters_move() {
    let node = Node::new();
    let cp = node.control_plane(true);
    let d = node
        .daemon()
        .control_plane(&cp)
        .args(["--debounce", "100ms"])
        .start();
    assert!(eventually(Duration::from_secs(5), || d
        .get("/v1/state/secrets")
        .json()
        .as_array()
        .is_some_and(|a| !a.is_empty())));
    let before = scrape(&d);
    for name in [
        "plexd_nodeapi_requests_total",
        "plexd_nodeapi_open_connections",
        "plexd_nodeapi_connections_rejected_total",
        "plexd_nodeapi_parked_requests",
        "plexd_nodeapi_parked_rejected_total",
        "plexd_nodeapi_cache_entries",
        "plexd_nodeapi_reports_pending",
        "plexd_nodeapi_report_sync_attempts_total",
        "plexd_nodeapi_report_sync_failures_total",
        "plexd_nodeapi_report_last_sync_timestamp_seconds",
        "plexd_nodeapi_secret_fetches_total",
        "plexd_nodeapi_build_info",
        "plexd_nodeapi_request_duration_seconds_count",
    ] {
        assert!(before.iter().any(|s| s.name == name), "missing {name}");
    }
    let summary = [("route", "/v1/state"), ("code", "200")];
    let count = "plexd_nodeapi_request_duration_seconds_count";
    for _ in 0..3 {
        d.get("/v1/state");
    }
    assert_eq!(d.get("/v1/nope").status, 404);
    assert_eq!(d.get("/v1/state/secrets/db-password").status, 200);
    assert_eq!(d.get("/v1/state/secrets/nope").status, 404);
    let put = d.put(
        "/v1/state/report/m",
        r#"{"content_type":"application/json","payload":1}"#,
    );
    assert_eq!(put.status, 200);
    assert!(eventually(Duration::from_secs(5), || {
        value(&scrape(&d), "plexd_nodeapi_reports_pending", &[]) == 0.0
    }));
    let after = scrape(&d);
    let total = "plexd_nodeapi_requests_total";
    assert_eq!(
        value(&after, total, &summary) - value(&before, total, &summary),
        3.0
    );
    assert!(value(&after, total, &[("route", "unknown"), ("code", "404")]) >= 1.0);
    assert!(value(&after, count, &[]) >= value(&before, count, &[]) + 7.0);
    let fetches = "plexd_nodeapi_secret_fetches_total";
    assert_eq!(
        value(&after, fetches, &[("outcome", "ok")])
            - value(&before, fetches, &[("outcome", "ok")]),
        1.0
    );
    assert_eq!(
        value(&after, fetches, &[("outcome", "not_found")])
            - value(&before, fetches, &[("outcome", "not_found")]),
        1.0
    );
    assert!(value(&after, "plexd_nodeapi_report_sync_attempts_total", &[]) >= 1.0);
    assert!(
        value(
            &after,
            "plexd_nodeapi_report_last_sync_timestamp_seconds",
            &[]
        ) > 1.6e9
    );
    assert_eq!(
        value(
            &after,
            "plexd_nodeapi_cache_entries",
            &[("kind", "reports")]
        ),
        1.0
    );
    assert_eq!(
        value(&after, "plexd_nodeapi_control_plane_connected", &[]),
        1.0
    );
}

#[test]
fn parked_requests_are_counted_when_answered() {
    let node = Node::new();
    let d = node.daemon().start();
    let put = d.put(
        "/v1/state/report/w",
        r#"{"content_type":"application/json","payload":1}"#,
    );
    let i = put.header("x-plexd-index").unwrap().to_owned();
    let labels = [("route", "/v1/state/report/{key}"), ("code", "200")];
    let total = "plexd_nodeapi_requests_total";
    let before = value(&scrape(&d), total, &labels);
    let t = Instant::now();
    let r = d.get(&format!("/v1/state/report/w?index={i}&wait=400ms"));
    assert_eq!(r.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(400));
    let after = scrape(&d);
    assert_eq!(value(&after, total, &labels) - before, 1.0);
    // Its latency is the whole wait: it lands in a bucket above 0.25 s.
    let slow = value(
        &after,
        "plexd_nodeapi_request_duration_seconds_bucket",
        &[("le", "0.25")],
    );
    let all = value(&after, "plexd_nodeapi_request_duration_seconds_count", &[]);
    assert!(slow < all, "the parked request's latency was not recorded");
}

#[test]
fn metrics_and_health_on_tcp_need_the_token() {
    let node = Node::new();
    let daemon = node.daemon().http_with_token("tok-obs").start();
    let a = daemon.tcp.expect("tcp listener");
    for path in ["/metrics", "/v1/health"] {
        assert_eq!(tcp_request(a, "GET", path, &[], None).status, 401, "{path}");
        let r = tcp_request(a, "GET", path, &[("Authorization", "Bearer tok-obs")], None);
        assert_eq!(r.status, 200, "{path}");
    }
}

fn health(d: &TestDaemon) -> serde_json::Value {
    let r = d.get("/v1/health");
    assert_eq!(r.status, 200, "health is always 200 while serving");
    r.json()
}

#[test]
fn health_offline_is_ok_and_ready() {
    let node = Node::new();
    let d = node.daemon().arg("--secret-auth").start();
    let h = health(&d);
    assert_eq!(h["status"], "ok");
    assert_eq!(h["ready"], true);
    assert_eq!(h["secret_auth"], true);
    assert_eq!(h["control_plane"]["configured"], false);
    assert_eq!(h["cache"]["loaded"], true);
    assert!(h["version"].is_string() && h["uptime_seconds"].is_u64());
    assert_eq!(d.get("/v1/health?ready").status, 200);
    assert_eq!(h["reports_pending"], 0);
}

#[test]
fn health_is_degraded_with_the_control_plane_down_and_ok_with_it_up() {
    let node = Node::new();
    // Nothing listens on this port: every fetch fails at once.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let d = node
        .daemon()
        .args(["--control-plane", url.as_str()])
        .start();
    assert!(eventually(Duration::from_secs(5), || health(&d)
        ["control_plane"]["last_error"]
        .is_string()));
    let h = health(&d);
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["control_plane"]["configured"], true);
    assert_eq!(h["control_plane"]["connected"], false);
    assert_eq!(
        h["ready"], true,
        "a failed first fetch still counts as ready"
    );
    assert_eq!(d.get("/v1/health?ready").status, 200);
    drop(d);

    let cp = node.control_plane(true);
    let d = node.daemon().control_plane(&cp).start();
    // The event stream may connect before the first full-state fetch lands.
    assert!(eventually(Duration::from_secs(5), || {
        let h = health(&d);
        h["status"] == "ok" && h["control_plane"]["last_reconcile"].is_string()
    }));
    let h = health(&d);
    assert_eq!(h["control_plane"]["connected"], true);
    assert!(h["control_plane"]["last_reconcile"].is_string());
    assert_eq!(h["cache"]["metadata"], 3);
}

#[test]
fn not_ready_until_the_first_state_fetch_was_attempted() {
    let node = Node::new();
    // A control plane that accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let d = node
        .daemon()
        .args(["--control-plane", url.as_str()])
        .start();
    // Serving (the disk cache is loaded) but not ready.
    let r = d.get("/v1/health?ready");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["ready"], false);
    assert_eq!(health(&d)["ready"], false);
    assert_eq!(d.get("/v1/state").status, 200);
    // Closing the connection fails the fetch: now the daemon has done what it can.
    let (conn, _) = silent.accept().unwrap();
    drop(conn);
    drop(silent);
    assert!(eventually(Duration::from_secs(5), || d
        .get("/v1/health?ready")
        .status
        == 200));
}
