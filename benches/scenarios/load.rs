//! Steady-load scenarios: keep-alive GETs over the Unix socket and TCP, the whole state,
//! many data keys, report PUTs, and GETs while PUTs run. Each keeps one daemon per
//! subject for all its runs and measures them alternately.
//!
//! It deliberately does not time fresh connections or attacks (`attack.rs`).

use std::thread;
use std::time::{Duration, Instant};

use crate::support::daemon::HTTP_TOKEN;
use crate::support::loadgen::{self, build_request, Target};
use crate::support::procstat;
use crate::support::report::{Goal, ScenarioReport, Spec};
use crate::support::BenchError;

use super::{
    alternate, get, load_config, measure, put, record_load, start_env, upstream_with, Ctx,
    LoadGoals,
};

/// The Go reference's medians recorded earlier (see `report::RECORDED_GO_WHEN`).
mod go {
    pub const UNIX_32_RPS: f64 = 28_700.0;
    pub const UNIX_32_CPU_US: f64 = 28.9;
    pub const UNIX_256_RPS: f64 = 24_700.0;
    pub const UNIX_256_P99_MS: f64 = 36.5;
    pub const TCP_32_RPS: f64 = 15_900.0;
    pub const TCP_32_CPU_US: f64 = 42.3;
    pub const STATE_10K_RPS: f64 = 95.0;
    pub const STATE_10K_CPU_MS: f64 = 7.4;
    pub const DATA_1000_RPS: f64 = 19_500.0;
    pub const PUT_ONE_RPS: f64 = 438.0;
    pub const PUT_2000_RPS: f64 = 306.0;
    pub const GET_WHILE_PUT: f64 = 0.32;
}

pub fn get_metadata_unix_32(ctx: &mut Ctx<'_>, r: &mut ScenarioReport) -> Result<(), BenchError> {
    let goals = LoadGoals {
        rps: Spec::info("throughput", "req/s")
            .vs_ref(Goal::AtLeast(1.6))
            .recorded(go::UNIX_32_RPS),
        cpu: Spec::info("server CPU", "µs/req")
            .vs_ref(Goal::AtMost(0.30))
            .recorded(go::UNIX_32_CPU_US),
        p99: Spec::info("p99", "ms"),
    };
    get_metadata(ctx, r, 32, false, &goals)
}

pub fn get_metadata_unix_256(ctx: &mut Ctx<'_>, r: &mut ScenarioReport) -> Result<(), BenchError> {
    let goals = LoadGoals {
        rps: Spec::info("throughput", "req/s")
            .vs_ref(Goal::AtLeast(1.6))
            .recorded(go::UNIX_256_RPS),
        cpu: Spec::info("server CPU", "µs/req"),
        p99: Spec::info("p99", "ms").recorded(go::UNIX_256_P99_MS),
    };
    get_metadata(ctx, r, 256, false, &goals)
}

pub fn get_metadata_tcp_32(ctx: &mut Ctx<'_>, r: &mut ScenarioReport) -> Result<(), BenchError> {
    let goals = LoadGoals {
        rps: Spec::info("throughput", "req/s").recorded(go::TCP_32_RPS),
        cpu: Spec::info("server CPU", "µs/req")
            .vs_ref(Goal::AtMost(0.35))
            .recorded(go::TCP_32_CPU_US),
        p99: Spec::info("p99", "ms"),
    };
    get_metadata(ctx, r, 32, true, &goals)
}

fn get_metadata(
    ctx: &mut Ctx<'_>,
    r: &mut ScenarioReport,
    conns: usize,
    tcp: bool,
    goals: &LoadGoals,
) -> Result<(), BenchError> {
    let upstream = upstream_with(0)?;
    let opts = ctx.opts;
    alternate(
        ctx.subjects,
        ctx.runs,
        r,
        |s, _| start_env(s, &upstream, tcp),
        |s, env, r| {
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
            let f = measure(&cfg, env.daemon.pid())?;
            record_load(r, s.side, &f, goals);
            Ok(())
        },
    )
}

pub fn get_state_10k(ctx: &mut Ctx<'_>, r: &mut ScenarioReport) -> Result<(), BenchError> {
    let upstream = ctx.shared.cp_10k()?;
    let opts = ctx.opts;
    let req = get("/v1/state");
    alternate(
        ctx.subjects,
        ctx.runs,
        r,
        |s, r| {
            let env = start_env(s, upstream, false)?;
            let mut conn = env
                .daemon
                .unix_target()
                .connect()
                .map_err(BenchError::io("connecting"))?;
            let (status, body) =
                loadgen::request_once(&mut conn, &req, std::time::Duration::from_secs(5))
                    .map_err(BenchError::io("GET /v1/state"))?;
            r.note(
                s.side,
                format!("GET /v1/state: status {status}, {} body bytes", body.len()),
            );
            Ok(env)
        },
        |s, env, r| {
            let cfg = load_config(opts, env.daemon.unix_target(), 8, vec![req.clone()]);
            let f = measure(&cfg, env.daemon.pid())?;
            r.push(
                s.side,
                Spec::info("throughput", "req/s").recorded(go::STATE_10K_RPS),
                f.load.rps(),
            );
            r.push(
                s.side,
                Spec::info("server CPU", "ms/req").recorded(go::STATE_10K_CPU_MS),
                f.cpu_us_per_req / 1000.0,
            );
            r.push(
                s.side,
                Spec::info("client CPU", "µs/req"),
                f.client_cpu_us_per_req,
            );
            r.push(s.side, Spec::info("p50", "µs"), f.load.percentile_us(50.0));
            r.push(
                s.side,
                Spec::info("p99", "ms"),
                f.load.percentile_us(99.0) / 1000.0,
            );
            r.push(
                s.side,
                Spec::info("errors", "count").goal(Goal::AtMost(0.0)),
                f.load.errors as f64,
            );
            Ok(())
        },
    )
}

pub fn get_1000_data_keys(ctx: &mut Ctx<'_>, r: &mut ScenarioReport) -> Result<(), BenchError> {
    let upstream = upstream_with(1_000)?;
    let opts = ctx.opts;
    let reqs: Vec<Vec<u8>> = (0..1000)
        .map(|n| get(&format!("/v1/state/data/key-{n}")))
        .collect();
    let goals = LoadGoals {
        rps: Spec::info("throughput", "req/s").recorded(go::DATA_1000_RPS),
        ..LoadGoals::info()
    };
    alternate(
        ctx.subjects,
        ctx.runs,
        r,
        |s, _| start_env(s, &upstream, false),
        |s, env, r| {
            let cfg = load_config(opts, env.daemon.unix_target(), 32, reqs.clone());
            let f = measure(&cfg, env.daemon.pid())?;
            record_load(r, s.side, &f, &goals);
            Ok(())
        },
    )
}

pub fn put_one_key_8(ctx: &mut Ctx<'_>, r: &mut ScenarioReport) -> Result<(), BenchError> {
    put_keys(ctx, r, 1)
}

pub fn put_2000_keys_8(ctx: &mut Ctx<'_>, r: &mut ScenarioReport) -> Result<(), BenchError> {
    put_keys(ctx, r, 2000)
}

fn put_keys(ctx: &mut Ctx<'_>, r: &mut ScenarioReport, keys: usize) -> Result<(), BenchError> {
    let upstream = upstream_with(0)?;
    let opts = ctx.opts;
    let reqs: Vec<Vec<u8>> = if keys == 1 {
        vec![put("/v1/state/report/bench-one")]
    } else {
        (0..keys)
            .map(|i| put(&format!("/v1/state/report/k-{i}")))
            .collect()
    };
    let go = if keys == 1 {
        go::PUT_ONE_RPS
    } else {
        go::PUT_2000_RPS
    };
    let goals = LoadGoals {
        rps: Spec::info("throughput", "req/s").recorded(go),
        ..LoadGoals::info()
    };
    alternate(
        ctx.subjects,
        ctx.runs,
        r,
        |s, _| start_env(s, &upstream, false),
        |s, env, r| {
            let cfg = load_config(opts, env.daemon.unix_target(), 8, reqs.clone());
            let f = measure(&cfg, env.daemon.pid())?;
            record_load(r, s.side, &f, &goals);
            Ok(())
        },
    )
}

pub fn get_while_put(ctx: &mut Ctx<'_>, r: &mut ScenarioReport) -> Result<(), BenchError> {
    let upstream = upstream_with(0)?;
    let opts = ctx.opts;
    let puts: Vec<Vec<u8>> = (0..2000)
        .map(|i| put(&format!("/v1/state/report/k-{i}")))
        .collect();
    alternate(
        ctx.subjects,
        ctx.runs,
        r,
        |s, _| start_env(s, &upstream, false),
        |s, env, r| {
            let pid = env.daemon.pid();
            let get_cfg = load_config(
                opts,
                env.daemon.unix_target(),
                32,
                vec![get("/v1/state/metadata/region")],
            );
            let mut put_cfg = load_config(opts, env.daemon.unix_target(), 8, puts.clone());
            // The PUT load starts first and outlasts the GET window on both sides.
            put_cfg.warmup = opts.warmup / 2;
            put_cfg.duration = opts.duration + opts.warmup;
            let alone = measure(&get_cfg, pid)?;
            let put_thread = thread::Builder::new()
                .name("put-load".into())
                .spawn(move || loadgen::run(&put_cfg, || ()))
                .map_err(BenchError::io("spawning the PUT load"))?;
            thread::sleep(opts.warmup / 2);
            let mixed = measure(&get_cfg, pid);
            let put_result = put_thread
                .join()
                .map_err(|_| BenchError::Load("PUT load thread panicked".into()))?
                .map_err(|e| BenchError::Load(format!("PUT load: {e}")))?;
            let mixed = mixed?;
            let side = s.side;
            r.push(side, Spec::info("GET alone", "req/s"), alone.load.rps());
            r.push(side, Spec::info("GET with PUTs", "req/s"), mixed.load.rps());
            r.push(
                side,
                Spec::info("GET share kept", "x")
                    .goal(Goal::AtLeast(0.8))
                    .recorded(go::GET_WHILE_PUT),
                mixed.load.rps() / alone.load.rps(),
            );
            r.push(side, Spec::info("PUT during", "req/s"), put_result.0.rps());
            r.push(
                side,
                Spec::info("GET p99 with PUTs", "ms"),
                mixed.load.percentile_us(99.0) / 1000.0,
            );
            r.push(
                side,
                Spec::info("errors", "count").goal(Goal::AtMost(0.0)),
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
                r.note(side, format!("first error: {e}"));
            }
            Ok(())
        },
    )
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
/// key (parked in the daemon, holding no thread). A reference without blocking queries
/// (or without these metrics) is reported as not run.
pub fn get_while_1000_parked(ctx: &mut Ctx<'_>, r: &mut ScenarioReport) -> Result<(), BenchError> {
    const WAITERS: usize = 1000;
    let upstream = upstream_with(0)?;
    let opts = ctx.opts;
    alternate(
        ctx.subjects,
        ctx.runs,
        r,
        |s, _| {
            let env = start_env(s, &upstream, false)?;
            let mut c = env
                .daemon
                .unix_target()
                .connect()
                .map_err(BenchError::io("connecting"))?;
            let (status, _) =
                loadgen::request_once(&mut c, &put("/v1/state/report/hot"), Duration::from_secs(5))
                    .map_err(BenchError::io("PUT"))?;
            if status != 200 {
                return Err(BenchError::Setup(format!("PUT answered {status}")));
            }
            Ok(env)
        },
        |s, env, r| {
            let pid = env.daemon.pid();
            let target = env.daemon.unix_target();
            let cfg = load_config(opts, target.clone(), 32, vec![get("/v1/state/report/hot")]);
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
            let side = s.side;
            r.push(side, Spec::info("GET alone", "req/s"), alone.load.rps());
            r.push(
                side,
                Spec::info("GET, 1000 parked", "req/s"),
                parked.load.rps(),
            );
            r.push(
                side,
                Spec::info("GET share kept", "x").goal(Goal::AtLeast(0.8)),
                parked.load.rps() / alone.load.rps(),
            );
            r.push(
                side,
                Spec::info("p99, 1000 parked", "ms").goal(Goal::AtMost(50.0)),
                parked.load.percentile_us(99.0) / 1000.0,
            );
            r.push(
                side,
                Spec::info("thread growth", "count").goal(Goal::AtMost(0.0)),
                after.threads as f64 - before.threads as f64,
            );
            r.push(
                side,
                Spec::info("errors", "count").goal(Goal::AtMost(0.0)),
                (alone.load.errors + parked.load.errors) as f64,
            );
            // Let the dropped waiters' connections close before the next run.
            thread::sleep(Duration::from_millis(300));
            Ok(())
        },
    )
}
