//! Attacks and bursts, each with fresh metadata GETs on new connections timed while it
//! lasts (what a health check arriving during the attack sees): 200 parallel 1 MiB
//! bodies (with the daemon's `VmRSS`), a control plane that stalls secret requests, and
//! 64 connections that send half a body and wait. Every run starts a fresh daemon, so
//! no run inherits another's memory, breaker state or connections; everything is
//! bounded in time and closed at the end of the run.
//!
//! It deliberately does not assert (the integration tests in `tests/overload.rs` do);
//! it measures and judges against the targets.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::loadgen::{build_request, Stream, Target};
use crate::support::probe::{fresh_request, FreshProber, FreshStats, RssPeak};
use crate::support::procstat;
use crate::support::report::{Goal, ScenarioReport, Side, Spec};
use crate::support::BenchError;

use super::{alternate, get, start_env, upstream_with, Ctx};

/// Pause between two fresh probes.
const PROBE_PAUSE: Duration = Duration::from_millis(5);
/// A fresh probe that takes longer than this counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Target for the worst fresh GET during an attack.
const FRESH_MAX_MS: f64 = 50.0;

fn metadata_prober(target: &Target) -> Result<FreshProber, BenchError> {
    FreshProber::start(
        target.clone(),
        get("/v1/state/metadata/region"),
        PROBE_PAUSE,
        PROBE_TIMEOUT,
    )
    .map_err(BenchError::io("starting the fresh-GET probe"))
}

/// Records what the fresh probes saw.
fn record_fresh(r: &mut ScenarioReport, side: Side, f: &FreshStats) {
    r.push(
        side,
        Spec::info("fresh GET p50", "ms"),
        f.percentile_ms(50.0),
    );
    r.push(
        side,
        Spec::info("fresh GET p99", "ms"),
        f.percentile_ms(99.0),
    );
    r.push(
        side,
        Spec::info("fresh GET max", "ms").goal(Goal::AtMost(FRESH_MAX_MS)),
        f.max_ms(),
    );
    r.push(side, Spec::info("fresh GETs", "count"), f.count() as f64);
    r.push(
        side,
        Spec::info("fresh GET errors", "count").goal(Goal::AtMost(0.0)),
        f.errors as f64,
    );
    if let Some(e) = &f.first_error {
        r.note(side, format!("first fresh-GET error: {e}"));
    }
}

/// `200×503, 3×timeout`-style summary of outcomes.
fn histogram(outcomes: &[Result<u16, String>]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for o in outcomes {
        let key = match o {
            Ok(s) => s.to_string(),
            Err(e) if e.contains("no complete response within") => "no answer".to_string(),
            Err(e) => format!("error ({e})"),
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, n)| format!("{n}×{k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------- big bodies

const BIG_WRITERS: usize = 200;
const RSS_SLACK_MIB: f64 = 16.0;
const RSS_RETURN_LIMIT: Duration = Duration::from_secs(5);
/// How long the return of RSS is watched at most (beyond the limit, to say by how much
/// it missed).
const RSS_WATCH: Duration = Duration::from_secs(10);

/// A report PUT of just under 1 MiB (bodies of exactly 1 MiB are the daemon's limit).
fn big_put() -> Vec<u8> {
    let payload = "x".repeat(1024 * 1024 - 64);
    let body = format!("{{\"content_type\":\"text/plain\",\"payload\":\"{payload}\"}}");
    build_request("PUT", "/v1/state/report/big", &[], Some(body.as_bytes()))
}

pub fn big_bodies(ctx: &mut Ctx<'_>, r: &mut ScenarioReport) -> Result<(), BenchError> {
    let upstream = upstream_with(0)?;
    let request = Arc::new(big_put());
    alternate(
        ctx.subjects,
        ctx.runs,
        r,
        |_, _| Ok(()),
        |s, (), r| {
            let env = start_env(s, &upstream, false)?;
            let pid = env.daemon.pid();
            let target = env.daemon.unix_target();
            thread::sleep(Duration::from_millis(300));
            let base_kb = procstat::vm_rss_kb(pid).map_err(BenchError::io("reading VmRSS"))?;
            let peak = RssPeak::start(pid, Duration::from_millis(5))
                .map_err(BenchError::io("starting the RSS sampler"))?;
            let prober = metadata_prober(&target)?;
            let started = Instant::now();
            let outcomes = parallel_puts(&target, &request)?;
            let burst = started.elapsed();
            let fresh = prober.finish();
            let peak_kb = peak.finish();

            // How RSS comes back once the burst is over.
            let slack_kb = (RSS_SLACK_MIB * 1024.0) as u64;
            let after = Instant::now();
            let mut lowest_in_limit = u64::MAX;
            let mut back_after = None;
            while after.elapsed() < RSS_WATCH {
                let kb = procstat::vm_rss_kb(pid).map_err(BenchError::io("reading VmRSS"))?;
                let over = kb.saturating_sub(base_kb);
                if after.elapsed() <= RSS_RETURN_LIMIT {
                    lowest_in_limit = lowest_in_limit.min(over);
                }
                if over <= slack_kb {
                    back_after = Some(after.elapsed());
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
            env.daemon.stop();

            let side = s.side;
            let mib = |kb: u64| kb as f64 / 1024.0;
            r.push(
                side,
                Spec::info("peak RSS rise", "MiB").goal(Goal::AtMost(120.0)),
                mib(peak_kb.saturating_sub(base_kb)),
            );
            r.push(
                side,
                Spec::info("RSS over start, lowest within 5 s", "MiB")
                    .goal(Goal::AtMost(RSS_SLACK_MIB)),
                mib(lowest_in_limit),
            );
            match back_after {
                Some(t) => r.push(
                    side,
                    Spec::info("RSS back within 16 MiB after", "s").goal(Goal::AtMost(5.0)),
                    t.as_secs_f64(),
                ),
                None => r.note(
                    side,
                    format!(
                        "RSS not back within 16 MiB of the start {} s after the burst",
                        RSS_WATCH.as_secs()
                    ),
                ),
            }
            r.push(side, Spec::info("RSS at start", "MiB"), mib(base_kb));
            record_fresh(r, side, &fresh);
            let ok = outcomes
                .iter()
                .filter(|o| matches!(o, Ok(s) if (200..300).contains(s)))
                .count();
            r.push(side, Spec::info("PUTs answered 2xx", "count"), ok as f64);
            r.push(side, Spec::info("burst", "s"), burst.as_secs_f64());
            r.note(side, format!("PUT answers: {}", histogram(&outcomes)));
            Ok(())
        },
    )
}

/// `BIG_WRITERS` connections, all opened first, then each sends `request` at once and
/// waits for its answer (60 s at most).
fn parallel_puts(
    target: &Target,
    request: &Arc<Vec<u8>>,
) -> Result<Vec<Result<u16, String>>, BenchError> {
    let mut conns = Vec::with_capacity(BIG_WRITERS);
    for i in 0..BIG_WRITERS {
        conns.push(
            target
                .connect()
                .map_err(BenchError::io(format!("opening writer connection {i}")))?,
        );
    }
    let gate = Arc::new(Barrier::new(BIG_WRITERS));
    let mut writers = Vec::with_capacity(BIG_WRITERS);
    for mut c in conns {
        let (gate, request) = (Arc::clone(&gate), Arc::clone(request));
        let h = thread::Builder::new()
            .name("big-put".into())
            .stack_size(128 * 1024)
            .spawn(move || -> Result<u16, String> {
                gate.wait();
                let limit = Some(Duration::from_secs(60));
                set_write_timeout(&c, limit).map_err(|e| e.to_string())?;
                c.write_all(&request).map_err(|e| format!("write: {e}"))?;
                crate::support::loadgen::request_once(&mut c, &[], Duration::from_secs(60))
                    .map(|(status, _)| status)
                    .map_err(|e| e.to_string())
            });
        match h {
            Ok(h) => writers.push(h),
            Err(e) => {
                // The gate will never open for the others: give up on the whole burst.
                return Err(BenchError::io("spawning a writer")(e));
            }
        }
    }
    Ok(writers
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| Err("writer thread panicked".into()))
        })
        .collect())
}

fn set_write_timeout(s: &Stream, t: Option<Duration>) -> std::io::Result<()> {
    match s {
        Stream::Unix(s) => s.set_write_timeout(t),
        Stream::Tcp(s) => s.set_write_timeout(t),
    }
}

// ---------------------------------------------------------------- stalled upstream

const SECRET_REQUESTS: usize = 16;
/// How long a secret request is waited for at most (ours answers at --secret-timeout,
/// 5 s by default).
const SECRET_WAIT: Duration = Duration::from_secs(12);

pub fn stalled_upstream(ctx: &mut Ctx<'_>, r: &mut ScenarioReport) -> Result<(), BenchError> {
    let upstream = upstream_with(0)?;
    upstream.set_secret("warm-secret", "warm");
    upstream.set_secret("bench-secret", "s3cr3t");
    let warm = get("/v1/state/secrets/warm-secret");
    let secret = Arc::new(get("/v1/state/secrets/bench-secret"));
    alternate(
        ctx.subjects,
        ctx.runs,
        r,
        |_, _| Ok(()),
        |s, (), r| {
            let env = start_env(s, &upstream, false)?;
            let target = env.daemon.unix_target();
            // The secret route works before the stall.
            let (status, _) = fresh_request(&target, &warm, Duration::from_secs(5));
            if status != Ok(200) && !r.notes.iter().any(|n| n.contains("log tail then")) {
                let log = env.daemon.log_tail();
                r.note(
                    s.side,
                    format!("secret GET failed before the stall; log tail then: {log}"),
                );
            }
            r.note(
                s.side,
                format!("secret GET before the stall: {}", histogram(&[status])),
            );

            upstream.stall_secrets(true);
            let started = Instant::now();
            let askers: Result<Vec<_>, BenchError> = (0..SECRET_REQUESTS)
                .map(|_| {
                    let (target, secret) = (target.clone(), Arc::clone(&secret));
                    thread::Builder::new()
                        .name("secret-get".into())
                        .spawn(move || fresh_request(&target, &secret, SECRET_WAIT))
                })
                .collect::<Result<_, _>>()
                .map_err(BenchError::io("spawning a secret request"));
            let prober = metadata_prober(&target);
            let (askers, prober) = match (askers, prober) {
                (Ok(a), Ok(p)) => (a, p),
                (Err(e), _) | (_, Err(e)) => {
                    upstream.stall_secrets(false);
                    return Err(e);
                }
            };
            let answers: Vec<(Result<u16, String>, Duration)> = askers
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| (Err("thread panicked".into()), Duration::ZERO))
                })
                .collect();
            // Probe for at least a second even if the secrets were answered at once.
            if let Some(rest) = Duration::from_secs(1).checked_sub(started.elapsed()) {
                thread::sleep(rest);
            }
            let fresh = prober.finish();
            upstream.stall_secrets(false);
            env.daemon.stop();

            let side = s.side;
            record_fresh(r, side, &fresh);
            let statuses: Vec<Result<u16, String>> =
                answers.iter().map(|(s, _)| s.clone()).collect();
            let answered: Vec<f64> = answers
                .iter()
                .filter(|(s, _)| s.is_ok())
                .map(|(_, t)| t.as_secs_f64())
                .collect();
            r.push(
                side,
                Spec::info("secret GETs answered", "count")
                    .goal(Goal::AtLeast(SECRET_REQUESTS as f64)),
                answered.len() as f64,
            );
            if let Some(sm) = crate::support::report::summarize(answered.iter().copied()) {
                r.push(side, Spec::info("secret answer, median", "s"), sm.median);
                r.push(
                    side,
                    Spec::info("secret answer, slowest", "s").goal(Goal::AtMost(6.0)),
                    sm.max,
                );
            }
            r.note(
                side,
                format!(
                    "secret answers during the stall (waited {} s at most): {}",
                    SECRET_WAIT.as_secs(),
                    histogram(&statuses)
                ),
            );
            Ok(())
        },
    )
}

// ---------------------------------------------------------------- half-sent bodies

const HALF_SENDERS: usize = 64;

pub fn half_sent_bodies(ctx: &mut Ctx<'_>, r: &mut ScenarioReport) -> Result<(), BenchError> {
    let upstream = upstream_with(0)?;
    let window = ctx.opts.duration;
    alternate(
        ctx.subjects,
        ctx.runs,
        r,
        |_, _| Ok(()),
        |s, (), r| {
            let env = start_env(s, &upstream, false)?;
            let target = env.daemon.unix_target();
            let mut attackers = Vec::with_capacity(HALF_SENDERS);
            for i in 0..HALF_SENDERS {
                let mut c = target
                    .connect()
                    .map_err(BenchError::io(format!("opening attacker {i}")))?;
                let head = if i % 2 == 0 {
                    // Half of a Content-Length body.
                    format!(
                        "PUT /v1/state/report/half-{i} HTTP/1.1\r\nHost: localhost\r\n\
                         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{}",
                        "x".repeat(50)
                    )
                } else {
                    // A chunked body without its last chunk.
                    format!(
                        "PUT /v1/state/report/half-{i} HTTP/1.1\r\nHost: localhost\r\n\
                         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
                         5\r\nhello\r\n"
                    )
                };
                c.write_all(head.as_bytes())
                    .map_err(BenchError::io(format!("attacker {i} writing")))?;
                attackers.push(c);
            }
            thread::sleep(Duration::from_millis(200));
            let prober = metadata_prober(&target)?;
            thread::sleep(window);
            let fresh = prober.finish();
            let answered = attackers
                .iter_mut()
                .filter_map(|c| {
                    let mut b = [0u8; 1];
                    (c.set_nonblocking(true).is_ok() && c.read(&mut b).is_ok()).then_some(())
                })
                .count();
            drop(attackers);
            env.daemon.stop();
            record_fresh(r, s.side, &fresh);
            r.push(
                s.side,
                Spec::info("attackers answered or closed", "count"),
                answered as f64,
            );
            Ok(())
        },
    )
}
