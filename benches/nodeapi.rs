//! `cargo bench --bench nodeapi [-- SCENARIO… --runs N --duration SECS --json FILE]`:
//! drives the release `plexd-nodeapi serve` over its Unix socket and loopback TCP with
//! the harness's own epoll load generator and reports, per scenario, the median, min and
//! max over N runs (default 3; 1 s warm-up + 3 s window each) of req/s, latency
//! percentiles, server CPU µs per request (from `/proc/<pid>/stat`), the load
//! generator's own CPU, RSS and threads, next to the Go reference median and our target.
//! Each scenario starts its own daemon on a fresh temporary data directory (cache files
//! pre-written), with an in-process control plane on loopback (`support/upstream.rs`).
//!
//! Options: `--runs N`, `--duration SECS`, `--warmup SECS`, `--client-threads N`
//! (default 1: client and daemon share the cores), `--json FILE`, `--list`,
//! `--self-test`. `PLEXD_NODEAPI_BIN=PATH` benchmarks another build of the binary (e.g.
//! the static musl one). Exit status: 0 all scenarios ran (targets missed are shown as
//! `MISS`, not failures), 1 a scenario could not run, 2 usage, 3 the per-scenario
//! watchdog fired (all daemons are killed first).
//!
//! `-- --self-test` checks the harness itself against a tiny local server instead, so it
//! is verified without the daemon. It is also what runs when the binary is started
//! without cargo bench's `--bench` flag, i.e. by `cargo test --all-targets` (`make
//! test`): libtest options are then ignored, and a name filter that does not match
//! `self_test` skips it.
//!
//! It deliberately does not build the daemon (cargo builds `plexd-nodeapi` before any
//! bench), talk to anything but loopback and Unix sockets, or run unbounded: every phase
//! has a time limit.

mod support;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use support::daemon::{self, Daemon, DaemonConfig, HTTP_TOKEN};
use support::loadgen::{self, build_request, LoadConfig, LoadResult, Target};
use support::procstat::{self, ProcSample};
use support::tinyserver::{Reply, Req, TinyServer};
use support::upstream::{start_upstream, Upstream, UpstreamContent};
use support::BenchError;

const SCENARIOS: &[&str] = &[
    "get_metadata_unix_32",
    "get_metadata_unix_256",
    "get_metadata_tcp_32",
    "get_state_10k",
    "get_1000_data_keys",
    "put_one_key_8",
    "put_2000_keys_8",
    "get_while_put",
    "get_while_1000_parked",
    "idle_2000",
    "startup_10k",
    "idle_rss",
];

const PUT_BODY: &str = r#"{"content_type":"application/json","payload":{"n":1}}"#;
const READY_LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- options

/// What was asked for on the command line.
#[derive(Debug, Clone)]
struct Options {
    scenarios: Vec<String>,
    runs: usize,
    duration: Duration,
    warmup: Duration,
    client_threads: usize,
    json: Option<PathBuf>,
    self_test: bool,
    list: bool,
    /// Test mode with a name filter that does not select the self-test.
    skip: bool,
}

fn parse_args() -> Result<Options, BenchError> {
    use lexopt::prelude::*;
    let mut o = Options {
        scenarios: Vec::new(),
        runs: 3,
        duration: Duration::from_secs(3),
        warmup: Duration::from_secs(1),
        client_threads: 1,
        json: None,
        self_test: false,
        list: false,
        skip: false,
    };
    let usage = |e: lexopt::Error| BenchError::Usage(e.to_string());
    let secs = |v: std::ffi::OsString, name: &str| -> Result<Duration, BenchError> {
        let s = v.to_string_lossy();
        s.parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x >= 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| BenchError::Usage(format!("{name}: not a number of seconds: {s}")))
    };
    // `cargo bench` always adds `--bench`. Without it the binary was started by `cargo
    // test` (e.g. `make test` = `cargo test --all-targets -- --test-threads=4`): run the
    // self-test, ignoring libtest's options, unless a name filter excludes it.
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        o.self_test = true;
        let filters: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .filter(|a| !a.starts_with('-'))
            .collect();
        o.skip = !filters.is_empty() && !filters.iter().any(|f| "self_test".contains(f.as_str()));
        return Ok(o);
    }
    let mut parser = lexopt::Parser::from_args(args);
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            Long("bench") => {}
            Long("runs") => {
                o.runs = parser.value().map_err(usage)?.parse().map_err(usage)?;
                if o.runs == 0 {
                    return Err(BenchError::Usage("--runs must be at least 1".into()));
                }
            }
            Long("duration") => o.duration = secs(parser.value().map_err(usage)?, "--duration")?,
            Long("warmup") => o.warmup = secs(parser.value().map_err(usage)?, "--warmup")?,
            Long("client-threads") => {
                o.client_threads = parser.value().map_err(usage)?.parse().map_err(usage)?;
            }
            Long("json") => o.json = Some(parser.value().map_err(usage)?.into()),
            Long("self-test") => o.self_test = true,
            Long("list") => o.list = true,
            Long("help") | Short('h') => {
                println!(
                    "usage: cargo bench --bench nodeapi -- [SCENARIO…] [--runs N] [--duration SECS] \
                     [--warmup SECS] [--client-threads N] [--json FILE] [--self-test] [--list]"
                );
                std::process::exit(0);
            }
            Value(v) => {
                let name = v.to_string_lossy().into_owned();
                if !SCENARIOS.contains(&name.as_str()) {
                    return Err(BenchError::Usage(format!(
                        "unknown scenario {name:?}; known: {}",
                        SCENARIOS.join(", ")
                    )));
                }
                o.scenarios.push(name);
            }
            other => return Err(BenchError::Usage(other.unexpected().to_string())),
        }
    }
    if o.client_threads == 0 {
        return Err(BenchError::Usage(
            "--client-threads must be at least 1".into(),
        ));
    }
    Ok(o)
}

fn main() {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("nodeapi bench: {e}");
            std::process::exit(2);
        }
    };
    if opts.skip {
        println!("nodeapi bench: self-test not selected by the filter");
        return;
    }
    if opts.list {
        for s in SCENARIOS {
            println!("{s}");
        }
        return;
    }
    match procstat::raise_nofile_limit() {
        Ok(n) if n < 4200 => eprintln!("warning: RLIMIT_NOFILE is only {n}; idle_2000 may fail"),
        Ok(_) => {}
        Err(e) => eprintln!("warning: could not raise RLIMIT_NOFILE: {e}"),
    }
    if opts.self_test {
        let ok = self_test(&opts);
        std::process::exit(if ok { 0 } else { 1 });
    }
    let selected: Vec<&str> = if opts.scenarios.is_empty() {
        SCENARIOS.to_vec()
    } else {
        opts.scenarios.iter().map(String::as_str).collect()
    };
    println!(
        "plexd-nodeapi bench: {} scenario(s), {} run(s) each, {:?} warm-up + {:?} window, {} client thread(s), binary {}",
        selected.len(),
        opts.runs,
        opts.warmup,
        opts.duration,
        opts.client_threads,
        daemon::daemon_binary().display()
    );
    let mut reports = Vec::new();
    let mut shared = Shared::default();
    for name in selected {
        let started = Instant::now();
        eprintln!("== {name}");
        let limit = Duration::from_secs(90) + (opts.warmup + opts.duration) * 4 * opts.runs as u32;
        let watchdog = Watchdog::arm(name, limit);
        let report = run_scenario(name, &opts, &mut shared);
        watchdog.disarm();
        if let Some(e) = &report.error {
            eprintln!("   FAILED: {e}");
        }
        eprintln!("   ({:.1} s)", started.elapsed().as_secs_f64());
        reports.push(report);
    }
    print!("{}", render_table(&reports));
    if let Some(path) = &opts.json {
        let json = render_json(&reports, &opts);
        if let Err(e) = std::fs::write(path, json) {
            eprintln!("nodeapi bench: writing {}: {e}", path.display());
            std::process::exit(1);
        }
    }
    if reports.iter().any(|r| r.error.is_some()) {
        std::process::exit(1);
    }
}

/// Ends the whole bench (killing any daemon it started) if a scenario overruns its time
/// bound, e.g. because a daemon stopped answering mid-connect.
struct Watchdog {
    done: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    fn arm(name: &str, limit: Duration) -> Watchdog {
        let (done, rx) = std::sync::mpsc::channel::<()>();
        let label = name.to_string();
        let spawned = thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                    eprintln!("nodeapi bench: scenario {label} exceeded {limit:?}; aborting");
                    daemon::kill_all_live();
                    std::process::exit(3);
                }
            });
        if let Err(e) = spawned {
            eprintln!("warning: no watchdog for {name}: {e}");
        }
        Watchdog { done }
    }

    fn disarm(self) {
        let _ = self.done.send(());
    }
}

// ---------------------------------------------------------------- results

/// How a metric is judged.
#[derive(Debug, Clone, Copy)]
enum Goal {
    AtLeast(f64),
    AtMost(f64),
    Info,
}

#[derive(Debug, Clone)]
struct Metric {
    name: String,
    unit: &'static str,
    values: Vec<f64>,
    goal: Goal,
    /// Go reference median, same unit.
    go: Option<f64>,
}

impl Metric {
    fn new(name: &str, unit: &'static str, goal: Goal, go: Option<f64>) -> Metric {
        Metric {
            name: name.to_string(),
            unit,
            values: Vec::new(),
            goal,
            go,
        }
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    fn median(&self) -> Option<f64> {
        let v = self.sorted();
        match v.len() {
            0 => None,
            n if n % 2 == 1 => Some(v[n / 2]),
            n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    }

    fn min(&self) -> Option<f64> {
        self.sorted().first().copied()
    }

    fn max(&self) -> Option<f64> {
        self.sorted().last().copied()
    }

    fn pass(&self) -> Option<bool> {
        let m = self.median()?;
        match self.goal {
            Goal::AtLeast(t) => Some(m >= t),
            Goal::AtMost(t) => Some(m <= t),
            Goal::Info => None,
        }
    }
}

#[derive(Debug, Default)]
struct ScenarioReport {
    name: String,
    metrics: Vec<Metric>,
    notes: Vec<String>,
    error: Option<String>,
}

impl ScenarioReport {
    fn metric(&mut self, name: &str, unit: &'static str, goal: Goal, go: Option<f64>) -> usize {
        if let Some(i) = self.metrics.iter().position(|m| m.name == name) {
            return i;
        }
        self.metrics.push(Metric::new(name, unit, goal, go));
        self.metrics.len() - 1
    }

    fn push(&mut self, name: &str, unit: &'static str, goal: Goal, go: Option<f64>, v: f64) {
        let i = self.metric(name, unit, goal, go);
        self.metrics[i].values.push(v);
    }

    fn note(&mut self, n: String) {
        if !self.notes.contains(&n) {
            self.notes.push(n);
        }
    }
}

fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 100_000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), fmt_num)
}

fn render_table(reports: &[ScenarioReport]) -> String {
    let mut rows: Vec<[String; 8]> = vec![[
        "scenario".into(),
        "metric".into(),
        "median".into(),
        "min".into(),
        "max".into(),
        "target".into(),
        "Go".into(),
        "ok".into(),
    ]];
    for r in reports {
        if r.error.is_some() {
            rows.push([
                r.name.clone(),
                "ERROR (see below)".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                "FAIL".into(),
            ]);
        }
        for m in &r.metrics {
            let target = match m.goal {
                Goal::AtLeast(t) => format!(">= {}", fmt_num(t)),
                Goal::AtMost(t) => format!("<= {}", fmt_num(t)),
                Goal::Info => String::new(),
            };
            let ok = match m.pass() {
                Some(true) => "ok",
                Some(false) => "MISS",
                None => "",
            };
            rows.push([
                r.name.clone(),
                format!("{} ({})", m.name, m.unit),
                fmt_opt(m.median()),
                fmt_opt(m.min()),
                fmt_opt(m.max()),
                target,
                fmt_opt(m.go),
                ok.into(),
            ]);
        }
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::from("\n");
    for (i, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(c, (cell, w))| {
                if (2..7).contains(&c) {
                    format!("{cell:>w$}")
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
        if i == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
            let _ = writeln!(out, "{}", "-".repeat(total));
        }
    }
    for r in reports {
        if let Some(e) = &r.error {
            let _ = writeln!(out, "error: {}: {e}", r.name);
        }
        for n in &r.notes {
            let _ = writeln!(out, "note: {}: {n}", r.name);
        }
    }
    out
}

fn render_json(reports: &[ScenarioReport], opts: &Options) -> String {
    let scenarios: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            let metrics: Vec<serde_json::Value> = r
                .metrics
                .iter()
                .map(|m| {
                    let (kind, target) = match m.goal {
                        Goal::AtLeast(t) => ("at_least", Some(t)),
                        Goal::AtMost(t) => ("at_most", Some(t)),
                        Goal::Info => ("info", None),
                    };
                    serde_json::json!({
                        "name": m.name, "unit": m.unit, "values": m.values,
                        "median": m.median(), "min": m.min(), "max": m.max(),
                        "goal": kind, "target": target, "go": m.go, "pass": m.pass(),
                    })
                })
                .collect();
            serde_json::json!({
                "name": r.name, "error": r.error, "notes": r.notes, "metrics": metrics,
            })
        })
        .collect();
    let doc = serde_json::json!({
        "runs": opts.runs,
        "duration_secs": opts.duration.as_secs_f64(),
        "warmup_secs": opts.warmup.as_secs_f64(),
        "client_threads": opts.client_threads,
        "scenarios": scenarios,
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

// ---------------------------------------------------------------- environment

/// One daemon with its data directory (its control plane is the caller's).
struct Env {
    daemon: Daemon,
    _dir: tempfile::TempDir,
}

/// State kept across scenarios: the development control plane loaded with 10,000 data
/// entries is slow to fill (its `set_data` re-renders the whole state each time), so it
/// is built once and shared by the 10k scenarios.
#[derive(Default)]
struct Shared {
    cp_10k: Option<Upstream>,
}

impl Shared {
    fn cp_10k(&mut self) -> Result<&Upstream, BenchError> {
        if self.cp_10k.is_none() {
            let t = Instant::now();
            self.cp_10k = Some(upstream_with(10_000)?);
            eprintln!(
                "   (control plane with 10,000 entries loaded in {:.1} s, shared)",
                t.elapsed().as_secs_f64()
            );
        }
        self.cp_10k
            .as_ref()
            .ok_or_else(|| BenchError::Upstream("control plane missing".into()))
    }
}

fn upstream_with(data_entries: usize) -> Result<Upstream, BenchError> {
    start_upstream(&UpstreamContent {
        metadata: daemon::bench_metadata(),
        data_entries,
    })
}

fn temp_dir() -> Result<tempfile::TempDir, BenchError> {
    // Under /tmp: the socket path must stay well under 108 bytes.
    tempfile::Builder::new()
        .prefix("plexd-bench-")
        .tempdir_in(std::env::temp_dir())
        .map_err(BenchError::io("creating a temporary data directory"))
}

/// A daemon whose cache holds what `upstream` serves, talking to it.
fn start_env(upstream: &Upstream, tcp: bool) -> Result<Env, BenchError> {
    let dir = temp_dir()?;
    daemon::prepare_data_dir(dir.path(), &upstream.data_entries())?;
    let mut d = Daemon::spawn(&DaemonConfig {
        dir: dir.path(),
        control_plane: Some(upstream.url.clone()),
        tcp,
    })?;
    d.wait_ready(READY_LIMIT)?;
    Ok(Env {
        daemon: d,
        _dir: dir,
    })
}

/// Figures of one measured load run.
struct RunFigures {
    load: LoadResult,
    cpu_us_per_req: f64,
    /// CPU of the harness's load-generator threads (all of them, this process).
    client_cpu_us_per_req: f64,
}

fn load_config(opts: &Options, target: Target, conns: usize, requests: Vec<Vec<u8>>) -> LoadConfig {
    LoadConfig {
        target,
        connections: conns,
        threads: opts.client_threads,
        requests: Arc::new(requests),
        warmup: opts.warmup,
        duration: opts.duration,
    }
}

/// Runs one load against `pid`, sampling its CPU over the window.
fn measure(cfg: &LoadConfig, pid: u32) -> Result<RunFigures, BenchError> {
    let (load, before, after) =
        loadgen::run(cfg, || procstat::sample(pid)).map_err(|e| BenchError::Load(e.to_string()))?;
    let (before, after): (ProcSample, ProcSample) = (
        before.map_err(BenchError::io("reading /proc of the daemon"))?,
        after.map_err(BenchError::io("reading /proc of the daemon"))?,
    );
    if load.completed == 0 {
        return Err(BenchError::Load(format!(
            "no successful response in the window ({} errors; first: {})",
            load.errors,
            load.first_error.as_deref().unwrap_or("none")
        )));
    }
    let cpu_us_per_req = procstat::cpu_us_between(&before, &after) / load.completed as f64;
    let client_cpu_us_per_req = load.client_cpu_us_per_req();
    Ok(RunFigures {
        load,
        cpu_us_per_req,
        client_cpu_us_per_req,
    })
}

fn get(path: &str) -> Vec<u8> {
    build_request("GET", path, &[], None)
}

fn put(path: &str) -> Vec<u8> {
    build_request("PUT", path, &[], Some(PUT_BODY.as_bytes()))
}

/// Records the usual load figures of one run.
#[allow(clippy::too_many_arguments)]
fn record_load(
    r: &mut ScenarioReport,
    f: &RunFigures,
    rps_goal: Goal,
    rps_go: Option<f64>,
    cpu_goal: Goal,
    cpu_go: Option<f64>,
    p99_goal: Goal,
    p99_go: Option<f64>,
) {
    r.push("throughput", "req/s", rps_goal, rps_go, f.load.rps());
    r.push("server CPU", "µs/req", cpu_goal, cpu_go, f.cpu_us_per_req);
    r.push(
        "client CPU",
        "µs/req",
        Goal::Info,
        None,
        f.client_cpu_us_per_req,
    );
    r.push("p50", "µs", Goal::Info, None, f.load.percentile_us(50.0));
    r.push(
        "p99",
        "ms",
        p99_goal,
        p99_go,
        f.load.percentile_us(99.0) / 1000.0,
    );
    r.push(
        "errors",
        "count",
        Goal::AtMost(0.0),
        None,
        f.load.errors as f64,
    );
    if let Some(e) = &f.load.first_error {
        r.note(format!("first error: {e}"));
    }
}

// ---------------------------------------------------------------- scenarios

fn run_scenario(name: &str, opts: &Options, shared: &mut Shared) -> ScenarioReport {
    let mut r = ScenarioReport {
        name: name.to_string(),
        ..ScenarioReport::default()
    };
    let result = match name {
        "get_metadata_unix_32" => sc_get_metadata(opts, &mut r, 32, false),
        "get_metadata_unix_256" => sc_get_metadata(opts, &mut r, 256, false),
        "get_metadata_tcp_32" => sc_get_metadata(opts, &mut r, 32, true),
        "get_state_10k" => sc_get_state_10k(opts, &mut r, shared),
        "get_1000_data_keys" => sc_get_1000_data_keys(opts, &mut r),
        "put_one_key_8" => sc_put(opts, &mut r, 1),
        "put_2000_keys_8" => sc_put(opts, &mut r, 2000),
        "get_while_put" => sc_get_while_put(opts, &mut r),
        "get_while_1000_parked" => sc_get_while_parked(opts, &mut r),
        "idle_2000" => sc_idle_2000(opts, &mut r),
        "startup_10k" => sc_startup_10k(opts, &mut r, shared),
        "idle_rss" => sc_idle_rss(&mut r),
        other => Err(BenchError::Usage(format!("unknown scenario {other}"))),
    };
    if let Err(e) = result {
        r.error = Some(e.to_string());
    }
    r
}

fn sc_get_metadata(
    opts: &Options,
    r: &mut ScenarioReport,
    conns: usize,
    tcp: bool,
) -> Result<(), BenchError> {
    let upstream = upstream_with(0)?;
    let env = start_env(&upstream, tcp)?;
    let (target, req) = if tcp {
        let addr = env
            .daemon
            .tcp
            .ok_or_else(|| BenchError::Setup("daemon has no TCP address".into()))?;
        let auth = format!("Bearer {HTTP_TOKEN}");
        (
            Target::Tcp(addr),
            build_request(
                "GET",
                "/v1/state/metadata/region",
                &[("Authorization", &auth)],
                None,
            ),
        )
    } else {
        (env.daemon.unix_target(), get("/v1/state/metadata/region"))
    };
    let cfg = load_config(opts, target, conns, vec![req]);
    for _ in 0..opts.runs {
        let f = measure(&cfg, env.daemon.pid())?;
        let (rps, rps_go, cpu, cpu_go, p99, p99_go) = match (conns, tcp) {
            (256, _) => (
                Goal::AtLeast(155_000.0),
                Some(77_500.0),
                Goal::Info,
                None,
                Goal::AtMost(35.0),
                Some(70.0),
            ),
            (_, true) => (
                Goal::AtLeast(149_800.0),
                Some(74_900.0),
                Goal::Info,
                None,
                Goal::Info,
                None,
            ),
            _ => (
                Goal::AtLeast(161_600.0),
                Some(80_800.0),
                Goal::AtMost(5.25),
                Some(17.5),
                Goal::Info,
                None,
            ),
        };
        record_load(r, &f, rps, rps_go, cpu, cpu_go, p99, p99_go);
    }
    env.daemon.stop();
    Ok(())
}

fn sc_get_state_10k(
    opts: &Options,
    r: &mut ScenarioReport,
    shared: &mut Shared,
) -> Result<(), BenchError> {
    let env = start_env(shared.cp_10k()?, false)?;
    let req = get("/v1/state");
    let mut s = env
        .daemon
        .unix_target()
        .connect()
        .map_err(BenchError::io("connecting"))?;
    let (status, body) = loadgen::request_once(&mut s, &req, Duration::from_secs(5))
        .map_err(BenchError::io("GET /v1/state"))?;
    r.note(format!(
        "GET /v1/state: status {status}, {} body bytes",
        body.len()
    ));
    let cfg = load_config(opts, env.daemon.unix_target(), 8, vec![req]);
    for _ in 0..opts.runs {
        let f = measure(&cfg, env.daemon.pid())?;
        r.push(
            "throughput",
            "req/s",
            Goal::AtLeast(3_020.0),
            Some(302.0),
            f.load.rps(),
        );
        r.push(
            "server CPU",
            "ms/req",
            Goal::Info,
            Some(6.2),
            f.cpu_us_per_req / 1000.0,
        );
        r.push(
            "client CPU",
            "µs/req",
            Goal::Info,
            None,
            f.client_cpu_us_per_req,
        );
        r.push("p50", "µs", Goal::Info, None, f.load.percentile_us(50.0));
        r.push(
            "p99",
            "ms",
            Goal::Info,
            None,
            f.load.percentile_us(99.0) / 1000.0,
        );
        r.push(
            "errors",
            "count",
            Goal::AtMost(0.0),
            None,
            f.load.errors as f64,
        );
    }
    env.daemon.stop();
    Ok(())
}

fn sc_get_1000_data_keys(opts: &Options, r: &mut ScenarioReport) -> Result<(), BenchError> {
    let upstream = upstream_with(1_000)?;
    let env = start_env(&upstream, false)?;
    let reqs = (0..1000)
        .map(|n| get(&format!("/v1/state/data/key-{n}")))
        .collect();
    let cfg = load_config(opts, env.daemon.unix_target(), 32, reqs);
    for _ in 0..opts.runs {
        let f = measure(&cfg, env.daemon.pid())?;
        record_load(
            r,
            &f,
            Goal::AtLeast(149_400.0),
            Some(74_700.0),
            Goal::Info,
            None,
            Goal::Info,
            None,
        );
    }
    env.daemon.stop();
    Ok(())
}

fn sc_put(opts: &Options, r: &mut ScenarioReport, keys: usize) -> Result<(), BenchError> {
    let upstream = upstream_with(0)?;
    let env = start_env(&upstream, false)?;
    let reqs = if keys == 1 {
        vec![put("/v1/state/report/bench-one")]
    } else {
        (0..keys)
            .map(|i| put(&format!("/v1/state/report/k-{i}")))
            .collect()
    };
    let cfg = load_config(opts, env.daemon.unix_target(), 8, reqs);
    let (goal, go) = if keys == 1 {
        (Goal::AtLeast(2_200.0), Some(1_470.0))
    } else {
        (Goal::AtLeast(3_420.0), Some(1_140.0))
    };
    for _ in 0..opts.runs {
        let f = measure(&cfg, env.daemon.pid())?;
        record_load(r, &f, goal, go, Goal::Info, None, Goal::Info, None);
    }
    env.daemon.stop();
    Ok(())
}

fn sc_get_while_put(opts: &Options, r: &mut ScenarioReport) -> Result<(), BenchError> {
    let upstream = upstream_with(0)?;
    let env = start_env(&upstream, false)?;
    let pid = env.daemon.pid();
    let get_cfg = load_config(
        opts,
        env.daemon.unix_target(),
        32,
        vec![get("/v1/state/metadata/region")],
    );
    let puts = (0..2000)
        .map(|i| put(&format!("/v1/state/report/k-{i}")))
        .collect();
    let mut put_cfg = load_config(opts, env.daemon.unix_target(), 8, puts);
    // The PUT load starts first and outlasts the GET window on both sides.
    put_cfg.warmup = opts.warmup / 2;
    put_cfg.duration = opts.duration + opts.warmup;
    for _ in 0..opts.runs {
        let alone = measure(&get_cfg, pid)?;
        let put_cfg2 = put_cfg.clone();
        let put_thread = thread::Builder::new()
            .name("put-load".into())
            .spawn(move || loadgen::run(&put_cfg2, || ()))
            .map_err(BenchError::io("spawning the PUT load"))?;
        thread::sleep(opts.warmup / 2);
        let mixed = measure(&get_cfg, pid);
        let put_result = put_thread
            .join()
            .map_err(|_| BenchError::Load("PUT load thread panicked".into()))?
            .map_err(|e| BenchError::Load(format!("PUT load: {e}")))?;
        let mixed = mixed?;
        r.push("GET alone", "req/s", Goal::Info, None, alone.load.rps());
        r.push("GET with PUTs", "req/s", Goal::Info, None, mixed.load.rps());
        r.push(
            "ratio",
            "x",
            Goal::AtLeast(0.8),
            Some(0.35),
            mixed.load.rps() / alone.load.rps(),
        );
        r.push("PUT during", "req/s", Goal::Info, None, put_result.0.rps());
        r.push(
            "GET p99 with PUTs",
            "ms",
            Goal::Info,
            None,
            mixed.load.percentile_us(99.0) / 1000.0,
        );
        r.push(
            "errors",
            "count",
            Goal::AtMost(0.0),
            None,
            (alone.load.errors + mixed.load.errors + put_result.0.errors) as f64,
        );
        for e in [
            &alone.load.first_error,
            &mixed.load.first_error,
            &put_result.0.first_error,
        ]
        .into_iter()
        .flatten()
        {
            r.note(format!("first error: {e}"));
        }
    }
    env.daemon.stop();
    Ok(())
}

/// The value of an unlabelled sample on the daemon's `/metrics` page.
fn metric_value(target: &Target, name: &str) -> Result<f64, BenchError> {
    let mut s = target.connect().map_err(BenchError::io("connecting"))?;
    let (_, body) = loadgen::request_once(&mut s, &get("/metrics"), Duration::from_secs(5))
        .map_err(BenchError::io("GET /metrics"))?;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .ok_or_else(|| BenchError::Load(format!("no {name} on /metrics")))
}

/// Reads of one report key alone, then while 1,000 blocking queries wait on that same
/// key (parked in the daemon, holding no thread). Was a p99 assertion in the tests.
fn sc_get_while_parked(opts: &Options, r: &mut ScenarioReport) -> Result<(), BenchError> {
    const WAITERS: usize = 1000;
    let upstream = upstream_with(0)?;
    let env = start_env(&upstream, false)?;
    let pid = env.daemon.pid();
    let target = env.daemon.unix_target();
    let mut s = target.connect().map_err(BenchError::io("connecting"))?;
    let (status, _) =
        loadgen::request_once(&mut s, &put("/v1/state/report/hot"), Duration::from_secs(5))
            .map_err(BenchError::io("PUT"))?;
    if status != 200 {
        return Err(BenchError::Setup(format!("PUT answered {status}")));
    }
    let cfg = load_config(opts, target.clone(), 32, vec![get("/v1/state/report/hot")]);
    for _ in 0..opts.runs {
        let alone = measure(&cfg, pid)?;
        // Waiting on the store's revision parks until the key changes (it does not).
        let revision = metric_value(&target, "plexd_nodeapi_cache_revision")?;
        let wait = get(&format!("/v1/state/report/hot?index={revision}&wait=600s"));
        let before = procstat::sample(pid).map_err(BenchError::io("reading /proc"))?;
        let mut waiters = Vec::with_capacity(WAITERS);
        for i in 0..WAITERS {
            let mut w = target
                .connect()
                .map_err(BenchError::io(format!("opening waiter {i}")))?;
            std::io::Write::write_all(&mut w, &wait)
                .map_err(BenchError::io(format!("sending waiter {i}")))?;
            waiters.push(w);
        }
        let t = Instant::now();
        while metric_value(&target, "plexd_nodeapi_parked_requests")? < WAITERS as f64 {
            if t.elapsed() > Duration::from_secs(10) {
                return Err(BenchError::Load("the waiters did not all park".into()));
            }
            thread::sleep(Duration::from_millis(20));
        }
        let parked = measure(&cfg, pid)?;
        let after = procstat::sample(pid).map_err(BenchError::io("reading /proc"))?;
        drop(waiters);
        r.push("GET alone", "req/s", Goal::Info, None, alone.load.rps());
        r.push(
            "GET, 1000 parked",
            "req/s",
            Goal::Info,
            None,
            parked.load.rps(),
        );
        r.push(
            "ratio",
            "x",
            Goal::AtLeast(0.8),
            None,
            parked.load.rps() / alone.load.rps(),
        );
        r.push(
            "p99, 1000 parked",
            "ms",
            Goal::AtMost(50.0),
            None,
            parked.load.percentile_us(99.0) / 1000.0,
        );
        r.push(
            "thread growth",
            "count",
            Goal::AtMost(0.0),
            None,
            after.threads as f64 - before.threads as f64,
        );
        r.push(
            "errors",
            "count",
            Goal::AtMost(0.0),
            None,
            (alone.load.errors + parked.load.errors) as f64,
        );
        // Let the dropped waiters' connections close before the next run.
        thread::sleep(Duration::from_millis(300));
    }
    env.daemon.stop();
    Ok(())
}

/// Median of 50 fresh connect + GET round trips, ms.
fn fresh_get_median_ms(target: &Target) -> Result<f64, BenchError> {
    let req = get("/v1/state/metadata/region");
    let mut samples = Vec::with_capacity(50);
    for _ in 0..50 {
        let t = Instant::now();
        let mut s = target.connect().map_err(BenchError::io("fresh connect"))?;
        let (status, _) = loadgen::request_once(&mut s, &req, Duration::from_secs(5))
            .map_err(BenchError::io("fresh GET"))?;
        if status != 200 {
            return Err(BenchError::Load(format!("fresh GET answered {status}")));
        }
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

fn sc_idle_2000(opts: &Options, r: &mut ScenarioReport) -> Result<(), BenchError> {
    let upstream = upstream_with(0)?;
    let env = start_env(&upstream, false)?;
    let pid = env.daemon.pid();
    let target = env.daemon.unix_target();
    let req = get("/v1/state/metadata/region");
    for _ in 0..opts.runs {
        thread::sleep(Duration::from_millis(300));
        let base_ms = fresh_get_median_ms(&target)?;
        let before = procstat::sample(pid).map_err(BenchError::io("reading /proc"))?;
        let mut idle = Vec::with_capacity(2000);
        for i in 0..2000 {
            let mut s = target
                .connect()
                .map_err(BenchError::io(format!("opening idle connection {i}")))?;
            // One request each, so they are real keep-alive connections gone idle.
            let (status, _) = loadgen::request_once(&mut s, &req, Duration::from_secs(5))
                .map_err(BenchError::io(format!("GET on idle connection {i}")))?;
            if status != 200 {
                return Err(BenchError::Load(format!(
                    "idle connection {i}: status {status}"
                )));
            }
            idle.push(s);
        }
        thread::sleep(Duration::from_millis(500));
        let after = procstat::sample(pid).map_err(BenchError::io("reading /proc"))?;
        let fresh_ms = fresh_get_median_ms(&target)?;
        drop(idle);
        r.push(
            "RSS growth",
            "MB",
            Goal::AtMost(4.0),
            Some(16.5),
            (after.rss_kb as f64 - before.rss_kb as f64) / 1024.0,
        );
        r.push(
            "threads before",
            "count",
            Goal::Info,
            None,
            before.threads as f64,
        );
        r.push(
            "threads after",
            "count",
            Goal::Info,
            None,
            after.threads as f64,
        );
        r.push(
            "thread growth",
            "count",
            Goal::AtMost(0.0),
            None,
            after.threads as f64 - before.threads as f64,
        );
        r.push("fresh GET, none idle", "ms", Goal::Info, None, base_ms);
        r.push(
            "fresh GET, 2000 idle",
            "ms",
            Goal::AtMost(1.0),
            None,
            fresh_ms,
        );
    }
    env.daemon.stop();
    Ok(())
}

fn sc_startup_10k(
    opts: &Options,
    r: &mut ScenarioReport,
    shared: &mut Shared,
) -> Result<(), BenchError> {
    let dir = temp_dir()?;
    let upstream = shared.cp_10k()?;
    daemon::prepare_data_dir(dir.path(), &upstream.data_entries())?;
    for _ in 0..opts.runs {
        for (label, url, goal, go) in [
            (
                "control plane down",
                format!("http://{}", daemon::free_port()?),
                Goal::AtMost(80.0),
                Some(158.0),
            ),
            (
                "control plane up",
                upstream.url.clone(),
                Goal::AtMost(290.0),
                Some(2_900.0),
            ),
        ] {
            let mut d = Daemon::spawn(&DaemonConfig {
                dir: dir.path(),
                control_plane: Some(url),
                tcp: false,
            })?;
            let t = d.wait_ready(READY_LIMIT)?;
            r.push(label, "ms", goal, go, t.as_secs_f64() * 1000.0);
            d.stop();
        }
    }
    Ok(())
}

fn file_mb(path: &Path) -> Option<f64> {
    std::fs::metadata(path)
        .ok()
        .map(|m| m.len() as f64 / (1024.0 * 1024.0))
}

fn sc_idle_rss(r: &mut ScenarioReport) -> Result<(), BenchError> {
    let bin = daemon::daemon_binary();
    match file_mb(&bin) {
        Some(mb) => r.push("binary size (release)", "MB", Goal::Info, Some(7.7), mb),
        None => r.note(format!("{} not found", bin.display())),
    }
    // target/release/plexd-nodeapi → target/x86_64-unknown-linux-musl/release/…
    if let Some(target_dir) = bin.parent().and_then(Path::parent) {
        let musl = target_dir
            .join("x86_64-unknown-linux-musl")
            .join("release")
            .join("plexd-nodeapi");
        match file_mb(&musl) {
            Some(mb) => r.push(
                "binary size (static musl)",
                "MB",
                Goal::AtMost(2.7),
                Some(8.1),
                mb,
            ),
            None => r.note(format!("{} not built (make static)", musl.display())),
        }
    }
    let upstream = upstream_with(0)?;
    let env = start_env(&upstream, false)?;
    let mut s = env
        .daemon
        .unix_target()
        .connect()
        .map_err(BenchError::io("connecting"))?;
    let _ = loadgen::request_once(
        &mut s,
        &get("/v1/state/metadata/region"),
        Duration::from_secs(5),
    )
    .map_err(BenchError::io("GET"))?;
    drop(s);
    thread::sleep(Duration::from_secs(1));
    let p = procstat::sample(env.daemon.pid()).map_err(BenchError::io("reading /proc"))?;
    r.push(
        "idle RSS",
        "MB",
        Goal::AtMost(3.0),
        None,
        p.rss_kb as f64 / 1024.0,
    );
    r.push("idle threads", "count", Goal::Info, None, p.threads as f64);
    env.daemon.stop();
    Ok(())
}

// ---------------------------------------------------------------- self-test

struct Checks {
    failed: usize,
}

impl Checks {
    fn check(&mut self, name: &str, ok: bool, detail: String) {
        println!("{} {name}: {detail}", if ok { "PASS" } else { "FAIL" });
        if !ok {
            self.failed += 1;
        }
    }
}

/// The self-test server's routes.
fn test_handler(req: &Req) -> Reply {
    if req.path.starts_with("/tcp/")
        && req.header("authorization") != Some(&format!("Bearer {HTTP_TOKEN}"))
    {
        return Reply::json(401, "{\"error\":\"unauthorized\"}");
    }
    match req.path.trim_start_matches("/tcp") {
        "/v1/state/metadata/region" => Reply::json(200, "{\"key\":\"region\",\"value\":\"eu\"}"),
        "/big" => Reply::json(200, vec![b'x'; 700 * 1024]),
        "/empty" => Reply::json(204, Vec::new()),
        "/close" => Reply::Full {
            status: 200,
            body: b"{}".to_vec(),
            close: true,
        },
        p if p.starts_with("/v1/state/report/") && req.method == "PUT" => {
            Reply::json(200, req.body.clone())
        }
        _ => Reply::json(404, "{\"error\":\"not found\"}"),
    }
}

fn describe(l: &LoadResult) -> String {
    format!(
        "{:.0} req/s, mean {:.0} µs, p50 {:.0} µs, p99 {:.0} µs, {} ok, {} errors{}",
        l.rps(),
        l.latencies_us.iter().map(|&u| f64::from(u)).sum::<f64>()
            / l.latencies_us.len().max(1) as f64,
        l.percentile_us(50.0),
        l.percentile_us(99.0),
        l.completed,
        l.errors,
        l.first_error
            .as_ref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    )
}

fn mean_us(l: &LoadResult) -> f64 {
    if l.latencies_us.is_empty() {
        return 0.0;
    }
    l.latencies_us.iter().map(|&u| f64::from(u)).sum::<f64>() / l.latencies_us.len() as f64
}

/// In a closed loop with every connection busy, mean latency ≈ connections / throughput.
fn littles_law_holds(l: &LoadResult, conns: usize) -> bool {
    let expected_us = conns as f64 / l.rps().max(1.0) * 1e6;
    (mean_us(l) - expected_us).abs() <= 0.2 * expected_us
}

fn self_test(opts: &Options) -> bool {
    let mut c = Checks { failed: 0 };
    framing_checks(&mut c);
    match self_test_load(&mut c, opts) {
        Ok(()) => {}
        Err(e) => c.check("load generator setup", false, e.to_string()),
    }
    probe_checks(&mut c);
    if let Err(e) = fixture_checks(&mut c) {
        c.check("fixture setup", false, e.to_string());
    }
    let bin = daemon::daemon_binary();
    println!(
        "info daemon binary {} {}",
        bin.display(),
        if bin.exists() { "exists" } else { "missing" }
    );
    println!(
        "self-test: {}",
        if c.failed == 0 {
            "all checks passed".to_string()
        } else {
            format!("{} check(s) FAILED", c.failed)
        }
    );
    c.failed == 0
}

fn framing_checks(c: &mut Checks) {
    use loadgen::{Feed, ResponseParser};
    let mut p = ResponseParser::default();
    let split = (
        p.feed(b"HTTP/1.1 200 OK\r\nContent-Le"),
        p.feed(b"ngth: 5\r\n\r\nab"),
        p.feed(b"cde"),
    );
    c.check(
        "framing: split head and body",
        matches!(
            split,
            (
                Ok(Feed::More),
                Ok(Feed::More),
                Ok(Feed::Done {
                    status: 200,
                    extra: 0,
                    close: false
                })
            )
        ),
        format!("{split:?}"),
    );
    let no_content = ResponseParser::default().feed(b"HTTP/1.1 204 No Content\r\n\r\n");
    c.check(
        "framing: 204 without body",
        matches!(
            no_content,
            Ok(Feed::Done {
                status: 204,
                extra: 0,
                ..
            })
        ),
        format!("{no_content:?}"),
    );
    let close = ResponseParser::default()
        .feed(b"HTTP/1.1 404 Not Found\r\nconnection: Close\r\ncontent-length: 2\r\n\r\n{}X");
    c.check(
        "framing: close flag, status, extra bytes",
        matches!(
            close,
            Ok(Feed::Done {
                status: 404,
                extra: 1,
                close: true
            })
        ),
        format!("{close:?}"),
    );
    let chunked =
        ResponseParser::default().feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    c.check(
        "framing: chunked rejected",
        chunked.is_err(),
        format!("{chunked:?}"),
    );
    let garbage = ResponseParser::default().feed(b"SSH-2.0-x\r\n\r\n");
    c.check(
        "framing: non-HTTP rejected",
        garbage.is_err(),
        format!("{garbage:?}"),
    );
}

fn self_test_load(c: &mut Checks, opts: &Options) -> Result<(), BenchError> {
    let dir = temp_dir()?;
    let sock = dir.path().join("t.sock");
    let server = TinyServer::unix(&sock, Arc::new(test_handler))
        .map_err(BenchError::io("starting the Unix test server"))?;
    let tcp_server = TinyServer::tcp(Arc::new(test_handler))
        .map_err(BenchError::io("starting the TCP test server"))?;
    let me = std::process::id();
    let window = Duration::from_secs(2);
    let short = Duration::from_millis(700);
    let cfg = |target: &Target, conns: usize, reqs: Vec<Vec<u8>>, d: Duration| LoadConfig {
        target: target.clone(),
        connections: conns,
        threads: opts.client_threads,
        requests: Arc::new(reqs),
        warmup: Duration::from_millis(300),
        duration: d,
    };
    let unix = server.target().clone();
    let metadata = get("/v1/state/metadata/region");

    // 1. Throughput over Unix, 32 connections; also exercises the CPU probes (on us:
    //    process = test server + load generator; the loadgen threads alone). Little's
    //    law (mean latency = connections / throughput in a closed loop) shows that every
    //    connection kept working: a stalled one would pull the mean below it.
    let (l, a, b) = loadgen::run(&cfg(&unix, 32, vec![metadata.clone()], window), || {
        procstat::sample(me)
    })
    .map_err(|e| BenchError::Load(e.to_string()))?;
    let cpu = match (a, b) {
        (Ok(a), Ok(b)) => format!(
            ", process CPU {:.1} µs/req, of which load generator {:.1} µs/req",
            procstat::cpu_us_between(&a, &b) / l.completed.max(1) as f64,
            l.client_cpu_us_per_req()
        ),
        _ => String::new(),
    };
    c.check(
        "unix, 32 conns",
        l.errors == 0
            && l.completed > 1000
            && l.latencies_us.len() as u64 == l.completed
            && littles_law_holds(&l, 32),
        format!("{}{cpu}", describe(&l)),
    );

    // 2. 256 connections multiplexed by the configured client threads.
    let (l, _, _) = loadgen::run(&cfg(&unix, 256, vec![metadata.clone()], short), || ())
        .map_err(|e| BenchError::Load(e.to_string()))?;
    c.check(
        &format!(
            "unix, 256 conns on {} client thread(s)",
            opts.client_threads
        ),
        l.errors == 0 && l.completed > 256 && littles_law_holds(&l, 256),
        describe(&l),
    );

    // 3. TCP with a bearer token (the server answers 401 without it).
    let tcp = tcp_server.target().clone();
    let auth = format!("Bearer {HTTP_TOKEN}");
    let tcp_req = build_request(
        "GET",
        "/tcp/v1/state/metadata/region",
        &[("Authorization", &auth)],
        None,
    );
    let (l, _, _) = loadgen::run(&cfg(&tcp, 32, vec![tcp_req], window), || ())
        .map_err(|e| BenchError::Load(e.to_string()))?;
    c.check(
        "tcp + bearer, 32 conns",
        l.errors == 0 && l.completed > 1000,
        describe(&l),
    );
    let (l, _, _) = loadgen::run(
        &cfg(&tcp, 4, vec![get("/tcp/v1/state/metadata/region")], short),
        || (),
    )
    .map_err(|e| BenchError::Load(e.to_string()))?;
    c.check(
        "tcp without token: every response is an error",
        l.completed == 0 && l.errors > 0,
        describe(&l),
    );

    // 4. Non-2xx are errors: half the requests go to a 404 route.
    let (l, _, _) = loadgen::run(
        &cfg(&unix, 8, vec![metadata.clone(), get("/missing")], short),
        || (),
    )
    .map_err(|e| BenchError::Load(e.to_string()))?;
    c.check(
        "404s counted as errors",
        l.completed > 100 && l.errors.abs_diff(l.completed) <= 16,
        describe(&l),
    );

    // 5. Large bodies skipped across many reads, 204 without a body, PUT bodies sent.
    let (l, _, _) = loadgen::run(
        &cfg(
            &unix,
            4,
            vec![get("/big"), get("/empty"), put("/v1/state/report/x")],
            short,
        ),
        || (),
    )
    .map_err(|e| BenchError::Load(e.to_string()))?;
    c.check(
        "700 KiB bodies, 204s and PUTs",
        l.errors == 0 && l.completed > 30,
        describe(&l),
    );

    // 6. `Connection: close` responses: the connection is re-opened, no error.
    let (l, _, _) = loadgen::run(&cfg(&unix, 8, vec![get("/close")], short), || ())
        .map_err(|e| BenchError::Load(e.to_string()))?;
    c.check(
        "Connection: close → reconnect",
        l.errors == 0 && l.completed > 100,
        describe(&l),
    );

    // 7. A dead target is a setup error, not a hang.
    let t = Instant::now();
    let dead = loadgen::run(
        &cfg(
            &Target::Unix(dir.path().join("nobody.sock")),
            4,
            vec![metadata],
            short,
        ),
        || (),
    );
    c.check(
        "unreachable target fails fast",
        dead.is_err() && t.elapsed() < Duration::from_millis(500),
        format!("{:?}", dead.err().map(|e| e.to_string())),
    );
    server.stop();
    tcp_server.stop();
    Ok(())
}

fn probe_checks(c: &mut Checks) {
    // The tick counts from /proc/self/stat must agree with getrusage over a busy loop
    // (within two ticks), which pins down the field positions and CLK_TCK scaling.
    let me = std::process::id();
    let (a, ra) = (procstat::sample(me), procstat::own_rusage_cpu_us());
    let t = Instant::now();
    let mut x = 0u64;
    while t.elapsed() < Duration::from_millis(300) {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    let (b, rb) = (procstat::sample(me), procstat::own_rusage_cpu_us());
    match (a, b, ra, rb) {
        (Ok(a), Ok(b), Ok(ra), Ok(rb)) => {
            let proc_ms = procstat::cpu_us_between(&a, &b) / 1000.0;
            let rusage_ms = (rb - ra) / 1000.0;
            let tick_ms = 1000.0 / procstat::clk_tck() as f64;
            c.check(
                "/proc probes on this process",
                rusage_ms > 0.0
                    && (proc_ms - rusage_ms).abs() <= 2.0 * tick_ms + 1.0
                    && b.rss_kb > 0
                    && b.threads >= 1,
                format!(
                    "busy loop: /proc {proc_ms:.0} ms CPU, getrusage {rusage_ms:.1} ms; RSS {} kB, {} threads, CLK_TCK {}",
                    b.rss_kb,
                    b.threads,
                    procstat::clk_tck()
                ),
            );
        }
        (a, b, ra, rb) => c.check(
            "/proc probes on this process",
            false,
            format!("{:?} {:?} {:?} {:?}", a.err(), b.err(), ra.err(), rb.err()),
        ),
    }
    match procstat::raise_nofile_limit() {
        Ok(n) => c.check("RLIMIT_NOFILE", n >= 4200, format!("soft limit {n}")),
        Err(e) => c.check("RLIMIT_NOFILE", false, e.to_string()),
    }
}

fn fixture_checks(c: &mut Checks) -> Result<(), BenchError> {
    // The control plane (the crate's devcp) is loaded first; the cache is written from
    // the entries it serves.
    let t = Instant::now();
    let upstream = start_upstream(&UpstreamContent {
        metadata: daemon::bench_metadata(),
        data_entries: 1_000,
    })?;
    let loaded = t.elapsed();
    let dir = temp_dir()?;
    let t = Instant::now();
    daemon::prepare_data_dir(dir.path(), &upstream.data_entries())?;
    let took = t.elapsed();
    let data_dir = dir.path().join("state").join("data");
    let files = std::fs::read_dir(&data_dir)
        .map_err(BenchError::io("listing the data cache"))?
        .count();
    let entry: Result<plexd_nodeapi::model::DataEntry, String> =
        std::fs::read_to_string(data_dir.join("key-42.json"))
            .map_err(|e| e.to_string())
            .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()));
    let meta: Result<plexd_nodeapi::model::Metadata, String> =
        std::fs::read_to_string(dir.path().join("state").join("metadata.json"))
            .map_err(|e| e.to_string())
            .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()));
    c.check(
        "1000-entry cache fixture parses as the crate's model",
        files == 1_000
            && entry.as_ref().is_ok_and(|e| {
                e.key == "key-42" && e.version == 1 && e.payload.get() == "{\"n\":42}"
            })
            && meta
                .as_ref()
                .is_ok_and(|m| m.get("region").map(String::as_str) == Some("eu-central-1")),
        format!(
            "devcp loaded in {:.0} ms; {files} files in {:.0} ms; entry {:?}; metadata {:?}",
            loaded.as_secs_f64() * 1000.0,
            took.as_secs_f64() * 1000.0,
            entry.map(|e| e.key),
            meta.map(|m| m.len())
        ),
    );

    let addr = upstream
        .url
        .strip_prefix("http://")
        .and_then(|a| a.trim_end_matches('/').parse().ok())
        .ok_or_else(|| BenchError::Upstream(format!("unexpected URL {}", upstream.url)))?;
    let mut s = Target::Tcp(addr)
        .connect()
        .map_err(BenchError::io("connecting to the control plane"))?;
    let path = format!("/v1/nodes/{}/state", daemon::NODE_ID);
    let auth = format!("Bearer {}", daemon::NSK_HEX);
    let req = build_request("GET", &path, &[("Authorization", &auth)], None);
    let (status, body) = loadgen::request_once(&mut s, &req, Duration::from_secs(5))
        .map_err(BenchError::io("GET state"))?;
    let state: Result<plexd_nodeapi::model::NodeState, String> =
        serde_json::from_slice(&body).map_err(|e| e.to_string());
    let n = state
        .as_ref()
        .ok()
        .and_then(|s| s.data.as_ref().map(Vec::len));
    c.check(
        "development control plane serves the fixture's state",
        status == 200 && n == Some(1_000),
        format!(
            "{} at {}: status {status}, {} bytes, {n:?} data entries",
            path,
            upstream.url,
            body.len()
        ),
    );
    upstream.stop();
    Ok(())
}
