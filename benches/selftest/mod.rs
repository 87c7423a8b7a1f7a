//! The harness's self-test (`-- --self-test`, and what `cargo test --all-targets` runs):
//! response framing, the load generator against a tiny local server over Unix and TCP
//! (throughput, Little's law, errors, large bodies, reconnects, dead targets), the
//! /proc probes, the fresh-request and RSS probes, the cache fixture and the development
//! control plane, the report maths (medians, paired ratios, goals, both table layouts),
//! reading a reference's flags from its `--help`, and the alternating driver's handling
//! of a reference that cannot run a scenario. It needs neither our daemon nor a
//! reference and takes a few seconds.
//!
//! It deliberately does not start the daemon: scenario code is checked by running it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::scenarios::{alternate, get, put, temp_dir};
use crate::support::daemon::{self, HTTP_TOKEN};
use crate::support::loadgen::{self, build_request, LoadConfig, LoadResult, Target};
use crate::support::probe::{FreshProber, RssPeak};
use crate::support::procstat;
use crate::support::report::{
    render_table, summarize, Goal, Mode, ScenarioReport, Side, Spec, Verdict,
};
use crate::support::subject::{is_static_elf, parse_help_flags, Subject};
use crate::support::tinyserver::{Reply, Req, TinyServer};
use crate::support::upstream::{start_upstream, UpstreamContent};
use crate::support::BenchError;
use crate::Options;

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
        "/chunked" => Reply::Chunked {
            status: 200,
            body: (0..300 * 1024).map(|i| b'a' + (i % 26) as u8).collect(),
            chunk: 7000,
        },
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

/// Runs every check; true when all passed.
pub fn run(opts: &Options) -> bool {
    let mut c = Checks { failed: 0 };
    framing_checks(&mut c);
    match self_test_load(&mut c, opts) {
        Ok(()) => {}
        Err(e) => c.check("load generator setup", false, e.to_string()),
    }
    probe_checks(&mut c);
    if let Err(e) = fresh_probe_checks(&mut c) {
        c.check("fresh probe setup", false, e.to_string());
    }
    report_checks(&mut c);
    if let Err(e) = subject_checks(&mut c) {
        c.check("subject setup", false, e.to_string());
    }
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
    let mut p = ResponseParser::default();
    let chunked = (
        p.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"),
        p.feed(b"lo\r\n1"),
        p.feed(b"0;ext=1\r\n0123456789abcdef\r\n0\r\nX-Trailer: 1\r\n"),
        p.feed(b"\r\nNEXT"),
    );
    c.check(
        "framing: chunked body split across reads, with a trailer",
        matches!(
            chunked,
            (
                Ok(Feed::More),
                Ok(Feed::More),
                Ok(Feed::More),
                Ok(Feed::Done {
                    status: 200,
                    extra: 4,
                    close: false
                })
            )
        ),
        format!("{chunked:?}"),
    );
    let whole = ResponseParser::default()
        .feed(b"HTTP/1.1 201 Created\r\ntransfer-encoding: Chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n");
    let bad = ResponseParser::default()
        .feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
    c.check(
        "framing: chunked in one read; a bad chunk size is an error",
        matches!(
            whole,
            Ok(Feed::Done {
                status: 201,
                extra: 0,
                ..
            })
        ) && bad.is_err(),
        format!("{whole:?} {bad:?}"),
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

    // 5. Large bodies skipped across many reads (Content-Length and chunked), 204
    //    without a body, PUT bodies sent.
    let (l, _, _) = loadgen::run(
        &cfg(
            &unix,
            4,
            vec![
                get("/big"),
                get("/empty"),
                put("/v1/state/report/x"),
                get("/chunked"),
            ],
            short,
        ),
        || (),
    )
    .map_err(|e| BenchError::Load(e.to_string()))?;
    c.check(
        "700 KiB bodies, 300 KiB chunked bodies, 204s and PUTs",
        l.errors == 0 && l.completed > 30,
        describe(&l),
    );
    let mut s = unix.connect().map_err(BenchError::io("connecting"))?;
    let once = loadgen::request_once(&mut s, &get("/chunked"), Duration::from_secs(5));
    c.check(
        "a chunked body is decoded by request_once",
        once.as_ref().is_ok_and(|(status, body)| {
            *status == 200
                && body.len() == 300 * 1024
                && body
                    .iter()
                    .enumerate()
                    .all(|(i, &b)| b == b'a' + (i % 26) as u8)
        }),
        format!("{:?}", once.as_ref().map(|(s, b)| (s, b.len()))),
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
    let ma = procstat::machine_ticks();
    let t = Instant::now();
    let mut x = 0u64;
    while t.elapsed() < Duration::from_millis(300) {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    let (b, rb) = (procstat::sample(me), procstat::own_rusage_cpu_us());
    let mb = procstat::machine_ticks();
    match (&a, &b, ma, mb) {
        (Ok(a), Ok(b), Ok((busy_a, total_a)), Ok((busy_b, total_b))) => {
            let own = b.cpu_ticks.saturating_sub(a.cpu_ticks);
            let busy = busy_b.saturating_sub(busy_a);
            c.check(
                "/proc/stat: the machine was at least as busy as this process",
                total_b > total_a && busy + 2 >= own && busy <= total_b - total_a,
                format!(
                    "{busy} busy of {} machine ticks, {own} ours",
                    total_b - total_a
                ),
            );
        }
        (_, _, ma, mb) => c.check(
            "/proc/stat: the machine was at least as busy as this process",
            false,
            format!("{:?} {:?}", ma.err(), mb.err()),
        ),
    }
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

fn fresh_probe_checks(c: &mut Checks) -> Result<(), BenchError> {
    let dir = temp_dir()?;
    let sock = dir.path().join("p.sock");
    let server = TinyServer::unix(&sock, Arc::new(test_handler))
        .map_err(BenchError::io("starting the Unix test server"))?;
    let target = server.target().clone();
    let timeout = Duration::from_secs(2);
    let pause = Duration::from_millis(2);

    let ok = FreshProber::start(
        target.clone(),
        get("/v1/state/metadata/region"),
        pause,
        timeout,
    )
    .map_err(BenchError::io("starting a probe"))?;
    std::thread::sleep(Duration::from_millis(300));
    let ok = ok.finish();
    c.check(
        "fresh probe: new connections answered",
        ok.count() >= 5 && ok.errors == 0 && ok.max_ms() < 1000.0 && ok.max_ms() > 0.0,
        format!(
            "{} probes, p50 {:.2} ms, max {:.2} ms, {} errors",
            ok.count(),
            ok.percentile_ms(50.0),
            ok.max_ms(),
            ok.errors
        ),
    );
    let bad = FreshProber::start(target, get("/missing"), pause, timeout)
        .map_err(BenchError::io("starting a probe"))?;
    std::thread::sleep(Duration::from_millis(100));
    let bad = bad.finish();
    c.check(
        "fresh probe: non-2xx counted as errors",
        bad.count() >= 1 && bad.errors as usize == bad.count(),
        format!(
            "{} probes, {} errors, first {:?}",
            bad.count(),
            bad.errors,
            bad.first_error
        ),
    );
    server.stop();
    let dead = FreshProber::start(
        Target::Unix(dir.path().join("nobody.sock")),
        get("/"),
        pause,
        timeout,
    )
    .map_err(BenchError::io("starting a probe"))?;
    std::thread::sleep(Duration::from_millis(50));
    let dead = dead.finish();
    c.check(
        "fresh probe: unreachable target is an error, fast",
        dead.count() >= 1 && dead.errors as usize == dead.count() && dead.max_ms() < 500.0,
        format!("{} probes, {} errors", dead.count(), dead.errors),
    );

    // The RSS sampler sees a 64 MiB buffer that lives for 60 ms.
    let me = std::process::id();
    let base = procstat::vm_rss_kb(me).map_err(BenchError::io("reading VmRSS"))?;
    let peak = RssPeak::start(me, Duration::from_millis(2))
        .map_err(BenchError::io("starting the RSS sampler"))?;
    let buf = std::hint::black_box(vec![1u8; 64 << 20]);
    std::thread::sleep(Duration::from_millis(60));
    drop(buf);
    let peak = peak.finish();
    let rise_mib = peak.saturating_sub(base) / 1024;
    c.check(
        "RSS sampler catches a short-lived 64 MiB buffer",
        (48..200).contains(&rise_mib),
        format!(
            "VmRSS {} MiB at start, peak rise {rise_mib} MiB",
            base / 1024
        ),
    );
    Ok(())
}

/// Beside the Go agent, and beside another build of ours.
const GO: Mode = Mode::VsReference {
    ratio_targets: true,
};
const OURS: Mode = Mode::VsReference {
    ratio_targets: false,
};

fn report_checks(c: &mut Checks) {
    let cpu = || {
        Spec::info("server CPU", "µs/req")
            .vs_ref(Goal::AtMost(0.30))
            .recorded(40.0)
    };
    let mut r = ScenarioReport::new("synthetic");
    for (run, ours, theirs) in [(0, 10.0, 40.0), (1, 12.0, 30.0), (2, 11.0, 44.0)] {
        r.run = run;
        r.push(Side::Ours, cpu(), ours);
        r.push(Side::Reference, cpu(), theirs);
        r.push(
            Side::Ours,
            Spec::info("errors", "count").goal(Goal::AtMost(0.0)),
            0.0,
        );
        r.push(
            Side::Ours,
            Spec::info("start", "ms")
                .vs_ref(Goal::AtMost(0.5))
                .stretch(),
            60.0,
        );
        if run != 1 {
            r.push(
                Side::Reference,
                Spec::info("start", "ms")
                    .vs_ref(Goal::AtMost(0.5))
                    .stretch(),
                100.0,
            );
        }
    }
    let m = &r.metrics[0];
    let ratio = m.ratio();
    c.check(
        "report: medians and paired ratios",
        m.ours_summary().map(|s| (s.median, s.min, s.max, s.n)) == Some((11.0, 10.0, 12.0, 3))
            && ratio.map(|s| s.median) == Some(0.25)
            && m.verdict(GO) == Verdict::Pass
            && m.verdict(Mode::Absolute) == Verdict::Pass
            && m.verdict(OURS) == Verdict::None,
        format!("{:?}, ratios {:?}", m.ours_summary(), m.paired_ratios()),
    );
    let start = &r.metrics[2];
    c.check(
        "report: runs pair by index; a stretch miss is not a miss",
        start.paired_ratios() == vec![0.6, 0.6] && start.verdict(GO) == Verdict::StretchMiss,
        format!("{:?} {:?}", start.paired_ratios(), start.verdict(GO)),
    );
    c.check(
        "report: even-sized median",
        summarize([4.0, 1.0, 3.0, 2.0]).map(|s| s.median) == Some(2.5)
            && summarize(Vec::<f64>::new()).is_none(),
        format!("{:?}", summarize([4.0, 1.0, 3.0, 2.0])),
    );
    r.reference_absent = Some("not run: lacks --x".into());
    let side = render_table(std::slice::from_ref(&r), GO);
    let abs = render_table(std::slice::from_ref(&r), Mode::Absolute);
    let older = render_table(std::slice::from_ref(&r), OURS);
    c.check(
        "report: side-by-side table",
        side.contains("ours/ref")
            && side.contains("0.25x")
            && side.contains("<= 0.30x")
            && side.contains("miss (stretch)")
            && side.contains("reference not run: lacks --x"),
        side.lines().nth(3).unwrap_or_default().to_string(),
    );
    c.check(
        "report: beside another build of ours, ratio targets are not judged",
        older.contains("0.25x") && !older.contains("<= 0.30x") && older.contains("not judged"),
        older.lines().nth(3).unwrap_or_default().to_string(),
    );
    c.check(
        "report: absolute table judges ratio goals against the recorded Go figure",
        abs.contains("Go (recorded)") && abs.contains("<= 12.0") && !abs.contains("ours/ref"),
        abs.lines().nth(3).unwrap_or_default().to_string(),
    );
}

/// A stand-in reference: a shell script whose `--help` lists flags in Go's style.
fn fake_reference(dir: &std::path::Path, flags: &[&str]) -> Result<std::path::PathBuf, BenchError> {
    let mut script = String::from("#!/bin/sh\ncat >&2 <<'EOF'\nUsage of fake:\n");
    for f in flags {
        script.push_str(&format!("  -{f} string\n    \tsomething\n"));
    }
    script.push_str("EOF\nexit 0\n");
    write_script(&dir.join(format!("fake-ref-{}", flags.len())), &script)
}

/// Writes an executable shell script at `path`.
fn write_script(path: &std::path::Path, script: &str) -> Result<std::path::PathBuf, BenchError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, script).map_err(BenchError::io("writing a fake binary"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(BenchError::io("chmod"))?;
    Ok(path.to_path_buf())
}

fn subject_checks(c: &mut Checks) -> Result<(), BenchError> {
    let go_style = "Usage of refharness:\n  -control-plane string\n    \tcontrol plane base URL \
                    (required)\n  -secret-auth\n    \tSO_PEERCRED authorization\n";
    let gnu_style = "Options:\n  -h, --help        Print help\n      --http-listen=ADDR  listen\n";
    let go = parse_help_flags(go_style);
    let gnu = parse_help_flags(gnu_style);
    c.check(
        "reference flags read from --help (Go and GNU styles)",
        go.iter().eq(["--control-plane", "--secret-auth"].iter())
            && gnu.iter().eq(["--help", "--http-listen"].iter()),
        format!("{go:?} {gnu:?}"),
    );
    let dir = temp_dir()?;
    let basics = ["data-dir", "socket", "node-id", "control-plane", "nsk-file"];
    let fake = fake_reference(dir.path(), &basics)?;
    let reference = Subject::reference(&fake)?;
    let tcp = reference.command(&[("--http-listen", Some("127.0.0.1:1".into()))]);
    let basic = reference.command(&[("--data-dir", Some("/x".into()))]);
    c.check(
        "a reference lacking a flag cannot run a scenario that needs it",
        matches!(&tcp, Err(BenchError::Unsupported(m)) if m.contains("--http-listen"))
            && basic.as_ref().is_ok_and(|cmd| {
                cmd.get_args()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    == ["--data-dir", "/x"]
            }),
        format!("{:?}", tcp.err().map(|e| e.to_string())),
    );
    let ours = Subject::ours("/nonexistent/plexd-nodeapi".into()).command(&[("--x", None)]);
    c.check(
        "ours is started with `serve --log-level warn`",
        ours.as_ref().is_ok_and(|cmd| {
            cmd.get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                == ["serve", "--log-level", "warn", "--x"]
        }),
        String::new(),
    );
    let me = std::env::current_exe().map_err(BenchError::io("current_exe"))?;
    c.check(
        "static-binary probe: this (dynamic) harness, a script",
        is_static_elf(&me) == Some(false) && is_static_elf(&fake).is_none(),
        format!("{:?} {:?}", is_static_elf(&me), is_static_elf(&fake)),
    );
    // Builds of ours: older ones name `serve` in their usage line with its flags on the
    // same page; today's list it under "Commands:", its flags on `serve --help`.
    let flag_lines: String = basics
        .iter()
        .chain(&["log-level"])
        .map(|f| format!("      --{f} VALUE   something\n"))
        .collect();
    let builds = [
        (
            "another build of ours as the reference is started with `serve`",
            "older-build",
            format!(
                "#!/bin/sh\ncat <<'EOF'\nUSAGE:\n    plexd-nodeapi serve [FLAGS]   run the daemon\n\
                 {flag_lines}EOF\n"
            ),
        ),
        (
            "a build of ours with a command list is started with `serve`, its flags from `serve --help`",
            "newer-build",
            format!(
                "#!/bin/sh\nif [ \"$1\" = serve ]; then\ncat <<'EOF'\nOptions:\n{flag_lines}EOF\n\
                 else\ncat <<'EOF'\nCommands:\n  serve        run the daemon\n  dev          other\n\
                 EOF\nfi\n"
            ),
        ),
    ];
    for (what, name, script) in builds {
        let build = write_script(&dir.path().join(name), &script)?;
        let cmd =
            Subject::reference(&build).and_then(|s| s.command(&[("--socket", Some("/s".into()))]));
        c.check(
            what,
            cmd.as_ref().is_ok_and(|cmd| {
                cmd.get_args()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    == ["serve", "--log-level", "warn", "--socket", "/s"]
            }),
            format!("{:?}", cmd.map(|c| c.get_args().count())),
        );
    }
    let not_it = fake_reference(dir.path(), &["data-dir"])?;
    c.check(
        "a --reference without the basic flags is refused",
        matches!(Subject::reference(&not_it), Err(BenchError::Usage(_))),
        String::new(),
    );
    driver_checks(c, reference);
    Ok(())
}

fn driver_checks(c: &mut Checks, reference: Subject) {
    let subjects = [Subject::ours("/nonexistent/ours".into()), reference];
    let mut r = ScenarioReport::new("driver");
    let mut order = Vec::new();
    let res = alternate(
        &subjects,
        3,
        &mut r,
        |s, _| Ok(s.side),
        |s, _, r| {
            order.push((s.side, r.run));
            r.push(s.side, Spec::info("x", "n"), r.run as f64);
            Ok(())
        },
    );
    let want: Vec<(Side, usize)> = (0..3)
        .flat_map(|run| [(Side::Ours, run), (Side::Reference, run)])
        .collect();
    c.check(
        "driver: sides alternate run by run (A B A B …)",
        res.is_ok() && order == want && r.metrics[0].paired_ratios().len() == 2,
        format!("{order:?}"),
    );

    let mut r = ScenarioReport::new("driver");
    let res = alternate(
        &subjects,
        3,
        &mut r,
        |_, _| Ok(()),
        |s, _, r| match s.side {
            Side::Ours => {
                r.push(s.side, Spec::info("x", "n"), 1.0);
                Ok(())
            }
            Side::Reference => Err(BenchError::Unsupported("it lacks --y".into())),
        },
    );
    c.check(
        "driver: a reference that cannot run is noted, ours goes on",
        res.is_ok()
            && r.metrics[0].ours.len() == 3
            && r.reference_absent.as_deref() == Some("not run: it lacks --y"),
        format!("{res:?} {:?}", r.reference_absent),
    );

    let mut r = ScenarioReport::new("driver");
    let res = alternate(
        &subjects,
        3,
        &mut r,
        |_, _| Ok(()),
        |s, _, _| match s.side {
            Side::Ours => Err(BenchError::Load("boom".into())),
            Side::Reference => Ok(()),
        },
    );
    c.check(
        "driver: a failure on our side fails the scenario",
        matches!(res, Err(BenchError::Load(_))),
        format!("{res:?}"),
    );
}
