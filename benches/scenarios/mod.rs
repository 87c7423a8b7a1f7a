//! The benchmark's scenarios: the catalog (`CATALOG`: name, what it measures, how long
//! a run may take), the driver that runs a scenario on our binary and the reference
//! alternately (`alternate`), and the helpers scenarios share (daemon environments,
//! measured load runs, request bytes). The scenarios themselves are in `load.rs`
//! (steady load), `attack.rs` (attacks and bursts: fresh requests timed while they
//! last) and `lifecycle.rs` (idle connections, start-up, memory and size at rest).
//!
//! It deliberately does not parse options or print results (`nodeapi.rs`,
//! `support/report.rs`).

mod attack;
mod lifecycle;
mod load;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::daemon::{self, Daemon, DaemonConfig};
use crate::support::loadgen::{self, build_request, LoadConfig, LoadResult, Target};
use crate::support::procstat::{self, ProcSample};
use crate::support::report::{Goal, ScenarioReport, Side, Spec};
use crate::support::subject::Subject;
use crate::support::upstream::{start_upstream, Upstream, UpstreamContent};
use crate::support::BenchError;
use crate::Options;

pub const PUT_BODY: &str = r#"{"content_type":"application/json","payload":{"n":1}}"#;
pub const READY_LIMIT: Duration = Duration::from_secs(10);

/// One scenario of the catalog.
pub struct Def {
    pub name: &'static str,
    /// What it measures and how (shown by `--list`).
    pub about: &'static str,
    /// Runs at least this many times whatever `--runs` says.
    pub min_runs: usize,
    /// Load windows (warm-up + window) per run and side, for the time bound.
    pub windows: u32,
    /// Further time a run may take per side, beyond its load windows.
    pub extra: Duration,
    run: fn(&mut Ctx<'_>, &mut ScenarioReport) -> Result<(), BenchError>,
}

impl Def {
    pub fn runs(&self, opts: &Options) -> usize {
        opts.runs.max(self.min_runs)
    }

    /// The most a run of this scenario may take on `sides` binaries, setup included.
    pub fn time_bound(&self, opts: &Options, sides: usize) -> Duration {
        let per_run = (opts.warmup + opts.duration) * self.windows + self.extra;
        // Generous: a loaded machine may be twice as slow; setup (a 10,000-entry control
        // plane) gets a minute of its own.
        Duration::from_secs(90) + per_run * 2 * (self.runs(opts) * sides) as u32
    }
}

const fn def(
    name: &'static str,
    about: &'static str,
    min_runs: usize,
    windows: u32,
    extra_secs: u64,
    run: fn(&mut Ctx<'_>, &mut ScenarioReport) -> Result<(), BenchError>,
) -> Def {
    Def {
        name,
        about,
        min_runs,
        windows,
        extra: Duration::from_secs(extra_secs),
        run,
    }
}

pub const CATALOG: &[Def] = &[
    def(
        "get_metadata_unix_32",
        "GET /v1/state/metadata/region over the Unix socket, 32 keep-alive connections: \
         req/s, server CPU per request (utime+stime from /proc/PID/stat over the window \
         / requests; at least 5 rounds), latency. Targets vs the reference: CPU <= 0.30x, \
         req/s >= 1.6x.",
        5,
        1,
        2,
        load::get_metadata_unix_32,
    ),
    def(
        "get_metadata_unix_256",
        "the same GET over the Unix socket with 256 connections. Target vs the \
         reference: req/s >= 1.6x.",
        1,
        1,
        2,
        load::get_metadata_unix_256,
    ),
    def(
        "get_metadata_tcp_32",
        "the same GET over loopback TCP with the bearer token, 32 connections; server \
         CPU per request over at least 5 rounds. Target vs the reference: CPU <= 0.35x.",
        5,
        1,
        2,
        load::get_metadata_tcp_32,
    ),
    def(
        "get_state_10k",
        "GET /v1/state (10,000 data entries) on 8 connections: req/s, server CPU per \
         request.",
        1,
        1,
        5,
        load::get_state_10k,
    ),
    def(
        "get_1000_data_keys",
        "GET of 1,000 different data keys round-robin on 32 connections.",
        1,
        1,
        2,
        load::get_1000_data_keys,
    ),
    def(
        "put_one_key_8",
        "PUT one report key from 8 writers (each answer after the write is durable).",
        1,
        1,
        2,
        load::put_one_key_8,
    ),
    def(
        "put_2000_keys_8",
        "PUT 2,000 report keys round-robin from 8 writers.",
        1,
        1,
        2,
        load::put_2000_keys_8,
    ),
    def(
        "get_while_put",
        "GET throughput on 32 connections while 8 writers PUT 2,000 keys, as a share of \
         the GET throughput alone. Target: >= 0.8 (ours).",
        1,
        3,
        2,
        load::get_while_put,
    ),
    def(
        "get_while_1000_parked",
        "GET of one report key on 32 connections alone, then while 1,000 blocking \
         queries wait on that key (parked, holding no thread): the share of throughput \
         kept (target >= 0.8), p99 (target <= 50 ms), thread growth (target 0).",
        1,
        2,
        15,
        load::get_while_1000_parked,
    ),
    def(
        "big_bodies",
        "200 parallel 1 MiB report PUTs to one key on new connections: peak VmRSS rise \
         (target <= 120 MiB), VmRSS back within 16 MiB of the start (target within 5 s), \
         worst fresh GET on a new connection during the burst (target < 50 ms).",
        1,
        0,
        60,
        attack::big_bodies,
    ),
    def(
        "stalled_upstream",
        "the control plane accepts secret requests but does not answer; 16 concurrent \
         GET /v1/state/secrets/KEY wait for the daemon's deadline (ours: --secret-timeout, \
         default 5 s; bounded here at 12 s) while fresh metadata GETs on new connections \
         are timed (p50/p99/max, target max < 50 ms); the secret answers' status and \
         time are reported.",
        1,
        0,
        20,
        attack::stalled_upstream,
    ),
    def(
        "half_sent_bodies",
        "64 connections send a request head and half a body (Content-Length or chunked), \
         then wait; fresh metadata GETs on new connections are timed over one window \
         (p50/p99/max, target max < 50 ms).",
        1,
        1,
        10,
        attack::half_sent_bodies,
    ),
    def(
        "idle_2000",
        "2,000 idle keep-alive connections: RSS and thread growth (targets <= 4 MB, 0), \
         fresh GET latency with them open.",
        1,
        0,
        20,
        lifecycle::idle_2000,
    ),
    def(
        "startup_10k",
        "time from spawn to the first 200 of GET /v1/state with a 10,000-entry cache, \
         control plane down and up. Stretch target vs the reference (down): <= 0.5x.",
        1,
        0,
        15,
        lifecycle::startup_10k,
    ),
    def(
        "idle_rss",
        "binary size (and the static musl build's, ours), idle RSS and threads.",
        1,
        0,
        5,
        lifecycle::idle_rss,
    ),
];

pub fn find(name: &str) -> Option<&'static Def> {
    CATALOG.iter().find(|d| d.name == name)
}

/// What scenarios share.
pub struct Ctx<'a> {
    pub opts: &'a Options,
    /// Ours first, then the reference if one was given.
    pub subjects: &'a [Subject],
    pub runs: usize,
    pub shared: &'a mut Shared,
}

/// Runs `def`; a failure on our side becomes the report's error.
pub fn run(def: &Def, opts: &Options, subjects: &[Subject], shared: &mut Shared) -> ScenarioReport {
    let mut r = ScenarioReport::new(def.name);
    let mut ctx = Ctx {
        opts,
        subjects,
        runs: def.runs(opts),
        shared,
    };
    if let Err(e) = (def.run)(&mut ctx, &mut r) {
        r.error = Some(e.to_string());
    }
    r
}

/// Runs a scenario on every subject, alternating: `setup` once per subject (e.g. a
/// daemon kept for all runs), then for each run `once` on ours, then on the reference
/// (A B A B …), so both sides see the same machine at nearly the same time. A failure on
/// our side ends the scenario with that error; on the reference's side it is recorded
/// in the report and the scenario goes on without it.
pub fn alternate<E>(
    subjects: &[Subject],
    runs: usize,
    r: &mut ScenarioReport,
    mut setup: impl FnMut(&Subject, &mut ScenarioReport) -> Result<E, BenchError>,
    mut once: impl FnMut(&Subject, &mut E, &mut ScenarioReport) -> Result<(), BenchError>,
) -> Result<(), BenchError> {
    let mut envs: Vec<Option<E>> = Vec::with_capacity(subjects.len());
    for s in subjects {
        match setup(s, r) {
            Ok(e) => envs.push(Some(e)),
            Err(e) if s.side == Side::Ours => return Err(e),
            Err(e) => {
                reference_absent(r, &e);
                envs.push(None);
            }
        }
    }
    for run in 0..runs {
        r.run = run;
        for (s, env) in subjects.iter().zip(envs.iter_mut()) {
            let Some(e) = env.as_mut() else {
                continue;
            };
            if let Err(err) = once(s, e, r) {
                if s.side == Side::Ours {
                    return Err(err);
                }
                reference_absent(r, &err);
                *env = None;
            }
        }
    }
    Ok(())
}

fn reference_absent(r: &mut ScenarioReport, e: &BenchError) {
    r.reference_absent = Some(match e {
        BenchError::Unsupported(why) => format!("not run: {why}"),
        e => format!("FAILED (left out of the rest of this scenario): {e}"),
    });
}

// ---------------------------------------------------------------- environment

/// One daemon with its data directory (its control plane is the caller's).
pub struct Env {
    pub daemon: Daemon,
    _dir: tempfile::TempDir,
}

/// State kept across scenarios: the development control plane loaded with 10,000 data
/// entries is slow to fill, so it is built once and shared by the 10k scenarios.
#[derive(Default)]
pub struct Shared {
    cp_10k: Option<Upstream>,
}

impl Shared {
    pub fn cp_10k(&mut self) -> Result<&Upstream, BenchError> {
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

pub fn upstream_with(data_entries: usize) -> Result<Upstream, BenchError> {
    start_upstream(&UpstreamContent {
        metadata: daemon::bench_metadata(),
        data_entries,
    })
}

pub fn temp_dir() -> Result<tempfile::TempDir, BenchError> {
    // Under /tmp: the socket path must stay well under 108 bytes.
    tempfile::Builder::new()
        .prefix("plexd-bench-")
        .tempdir_in(std::env::temp_dir())
        .map_err(BenchError::io("creating a temporary data directory"))
}

/// `subject` running on a fresh data directory whose cache holds what `upstream`
/// serves, talking to it, and answering.
pub fn start_env(subject: &Subject, upstream: &Upstream, tcp: bool) -> Result<Env, BenchError> {
    let dir = temp_dir()?;
    daemon::prepare_data_dir(dir.path(), &upstream.data_entries())?;
    let mut cfg = DaemonConfig::new(dir.path(), upstream.url.clone());
    cfg.tcp = tcp;
    cfg.signing_key = Some(upstream.signing_key());
    let mut d = Daemon::spawn(subject, &cfg)?;
    d.wait_ready(READY_LIMIT)?;
    Ok(Env {
        daemon: d,
        _dir: dir,
    })
}

// ---------------------------------------------------------------- measured load

/// Figures of one measured load run.
pub struct RunFigures {
    pub load: LoadResult,
    pub cpu_us_per_req: f64,
    pub user_us_per_req: f64,
    /// CPU of the harness's load-generator threads (all of them, this process).
    pub client_cpu_us_per_req: f64,
    /// CPU used by everything but the daemon and this harness during the window, as a
    /// share of the machine (other people's builds on a shared VM): per-request CPU
    /// figures grow with it.
    pub others_share: Option<f64>,
}

pub fn load_config(
    opts: &Options,
    target: Target,
    conns: usize,
    requests: Vec<Vec<u8>>,
) -> LoadConfig {
    LoadConfig {
        target,
        connections: conns,
        threads: opts.client_threads,
        requests: Arc::new(requests),
        warmup: opts.warmup,
        duration: opts.duration,
    }
}

/// The counters sampled at the start and end of a measured window.
struct WindowSample {
    daemon: std::io::Result<ProcSample>,
    harness: std::io::Result<ProcSample>,
    machine: std::io::Result<(u64, u64)>,
}

fn window_sample(pid: u32) -> WindowSample {
    WindowSample {
        daemon: procstat::sample(pid),
        harness: procstat::sample(std::process::id()),
        machine: procstat::machine_ticks(),
    }
}

/// Runs one load against `pid`, sampling its CPU over the window.
pub fn measure(cfg: &LoadConfig, pid: u32) -> Result<RunFigures, BenchError> {
    let (load, before, after) =
        loadgen::run(cfg, || window_sample(pid)).map_err(|e| BenchError::Load(e.to_string()))?;
    let (b, a): (ProcSample, ProcSample) = (
        before
            .daemon
            .map_err(BenchError::io("reading /proc of the daemon"))?,
        after
            .daemon
            .map_err(BenchError::io("reading /proc of the daemon"))?,
    );
    if load.completed == 0 {
        return Err(BenchError::Load(format!(
            "no successful response in the window ({} errors; first: {})",
            load.errors,
            load.first_error.as_deref().unwrap_or("none")
        )));
    }
    let others_share = match (before.harness, after.harness, before.machine, after.machine) {
        (Ok(hb), Ok(ha), Ok((busy_b, total_b)), Ok((busy_a, total_a))) if total_a > total_b => {
            let ours =
                a.cpu_ticks.saturating_sub(b.cpu_ticks) + ha.cpu_ticks.saturating_sub(hb.cpu_ticks);
            let others = busy_a.saturating_sub(busy_b).saturating_sub(ours);
            Some(others as f64 / (total_a - total_b) as f64)
        }
        _ => None,
    };
    let n = load.completed as f64;
    Ok(RunFigures {
        cpu_us_per_req: procstat::cpu_us_between(&b, &a) / n,
        user_us_per_req: procstat::user_us_between(&b, &a) / n,
        client_cpu_us_per_req: load.client_cpu_us_per_req(),
        others_share,
        load,
    })
}

pub fn get(path: &str) -> Vec<u8> {
    build_request("GET", path, &[], None)
}

pub fn put(path: &str) -> Vec<u8> {
    build_request("PUT", path, &[], Some(PUT_BODY.as_bytes()))
}

/// How the usual load figures are judged in one scenario.
pub struct LoadGoals {
    pub rps: Spec,
    pub cpu: Spec,
    pub p99: Spec,
}

impl LoadGoals {
    pub fn info() -> LoadGoals {
        LoadGoals {
            rps: Spec::info("throughput", "req/s"),
            cpu: Spec::info("server CPU", "µs/req"),
            p99: Spec::info("p99", "ms"),
        }
    }
}

/// Records the usual load figures of one run.
pub fn record_load(r: &mut ScenarioReport, side: Side, f: &RunFigures, goals: &LoadGoals) {
    r.push(side, goals.rps.clone(), f.load.rps());
    r.push(side, goals.cpu.clone(), f.cpu_us_per_req);
    r.push(
        side,
        Spec::info("server CPU, user part", "µs/req"),
        f.user_us_per_req,
    );
    r.push(
        side,
        Spec::info("client CPU", "µs/req"),
        f.client_cpu_us_per_req,
    );
    r.push(side, Spec::info("p50", "µs"), f.load.percentile_us(50.0));
    r.push(side, goals.p99.clone(), f.load.percentile_us(99.0) / 1000.0);
    r.push(
        side,
        Spec::info("errors", "count").goal(Goal::AtMost(0.0)),
        f.load.errors as f64,
    );
    if let Some(share) = f.others_share {
        r.push(
            side,
            Spec::info("others' CPU", "% of machine"),
            share * 100.0,
        );
    }
    if let Some(e) = &f.load.first_error {
        r.note(side, format!("first error: {e}"));
    }
}
