//! Scenarios about a daemon at rest and at start: 2,000 idle connections, start-up with a
//! 10,000-entry cache (control plane down and up), binary size and idle RSS.
//!
//! It deliberately does not put the daemon under load.

use std::path::Path;
use std::thread;
use std::time::Duration;

use crate::support::daemon::{self, Daemon, DaemonConfig};
use crate::support::loadgen::{self, Target};
use crate::support::procstat;
use crate::support::report::{Goal, ScenarioReport, Side, Spec};
use crate::support::subject::is_static_elf;
use crate::support::BenchError;

use super::{alternate, get, start_env, temp_dir, upstream_with, Ctx, READY_LIMIT};

/// The Go reference's medians recorded earlier (see `report::RECORDED_GO_WHEN`).
mod go {
    pub const IDLE_2000_RSS_MB: f64 = 8.4;
    pub const STARTUP_DOWN_MS: f64 = 320.0;
    pub const STARTUP_UP_MS: f64 = 308.0;
    pub const BINARY_MB: f64 = 7.4;
    pub const IDLE_RSS_MB: f64 = 8.1;
}

/// Median of 50 fresh connect + GET round trips, ms.
fn fresh_get_median_ms(target: &Target) -> Result<f64, BenchError> {
    let req = get("/v1/state/metadata/region");
    let mut samples = Vec::with_capacity(50);
    for _ in 0..50 {
        let (status, took) =
            crate::support::probe::fresh_request(target, &req, Duration::from_secs(5));
        match status {
            Ok(200) => samples.push(took.as_secs_f64() * 1000.0),
            Ok(s) => return Err(BenchError::Load(format!("fresh GET answered {s}"))),
            Err(e) => return Err(BenchError::Load(format!("fresh GET: {e}"))),
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

pub fn idle_2000(ctx: &mut Ctx<'_>, r: &mut ScenarioReport) -> Result<(), BenchError> {
    let upstream = upstream_with(0)?;
    let req = get("/v1/state/metadata/region");
    alternate(
        ctx.subjects,
        ctx.runs,
        r,
        |s, _| start_env(s, &upstream, false),
        |s, env, r| {
            let pid = env.daemon.pid();
            let target = env.daemon.unix_target();
            thread::sleep(Duration::from_millis(300));
            let base_ms = fresh_get_median_ms(&target)?;
            let before = procstat::sample(pid).map_err(BenchError::io("reading /proc"))?;
            let mut idle = Vec::with_capacity(2000);
            for i in 0..2000 {
                let mut c = target
                    .connect()
                    .map_err(BenchError::io(format!("opening idle connection {i}")))?;
                // One request each, so they are real keep-alive connections gone idle.
                let (status, _) = loadgen::request_once(&mut c, &req, Duration::from_secs(5))
                    .map_err(BenchError::io(format!("GET on idle connection {i}")))?;
                if status != 200 {
                    return Err(BenchError::Load(format!(
                        "idle connection {i}: status {status}"
                    )));
                }
                idle.push(c);
            }
            thread::sleep(Duration::from_millis(500));
            let after = procstat::sample(pid).map_err(BenchError::io("reading /proc"))?;
            let fresh_ms = fresh_get_median_ms(&target)?;
            drop(idle);
            let side = s.side;
            r.push(
                side,
                Spec::info("RSS growth", "MB")
                    .goal(Goal::AtMost(4.0))
                    .recorded(go::IDLE_2000_RSS_MB),
                (after.rss_kb as f64 - before.rss_kb as f64) / 1024.0,
            );
            r.push(
                side,
                Spec::info("threads before", "count"),
                before.threads as f64,
            );
            r.push(
                side,
                Spec::info("threads after", "count"),
                after.threads as f64,
            );
            r.push(
                side,
                Spec::info("thread growth", "count").goal(Goal::AtMost(0.0)),
                after.threads as f64 - before.threads as f64,
            );
            r.push(side, Spec::info("fresh GET, none idle", "ms"), base_ms);
            r.push(
                side,
                Spec::info("fresh GET, 2000 idle", "ms").goal(Goal::AtMost(1.0)),
                fresh_ms,
            );
            Ok(())
        },
    )
}

pub fn startup_10k(ctx: &mut Ctx<'_>, r: &mut ScenarioReport) -> Result<(), BenchError> {
    let upstream = ctx.shared.cp_10k()?;
    let entries = upstream.data_entries();
    alternate(
        ctx.subjects,
        ctx.runs,
        r,
        |_, _| {
            let dir = temp_dir()?;
            daemon::prepare_data_dir(dir.path(), &entries)?;
            Ok(dir)
        },
        |s, dir, r| {
            for (label, url, spec) in [
                (
                    "control plane down",
                    format!("http://{}", daemon::free_port()?),
                    Spec::info("control plane down", "ms")
                        .vs_ref(Goal::AtMost(0.5))
                        .recorded(go::STARTUP_DOWN_MS)
                        .stretch(),
                ),
                (
                    "control plane up",
                    upstream.url.clone(),
                    Spec::info("control plane up", "ms").recorded(go::STARTUP_UP_MS),
                ),
            ] {
                let mut cfg = DaemonConfig::new(dir.path(), url);
                cfg.signing_key = Some(upstream.signing_key());
                let mut d = Daemon::spawn(s, &cfg)?;
                let t = d
                    .wait_ready(READY_LIMIT)
                    .map_err(|e| BenchError::Daemon(format!("{label}: {e}")))?;
                r.push(s.side, spec, t.as_secs_f64() * 1000.0);
                d.stop();
            }
            Ok(())
        },
    )
}

fn file_mb(path: &Path) -> Option<f64> {
    std::fs::metadata(path)
        .ok()
        .map(|m| m.len() as f64 / (1024.0 * 1024.0))
}

pub fn idle_rss(ctx: &mut Ctx<'_>, r: &mut ScenarioReport) -> Result<(), BenchError> {
    let upstream = upstream_with(0)?;
    alternate(
        ctx.subjects,
        ctx.runs,
        r,
        |s, r| {
            match file_mb(&s.bin) {
                Some(mb) => r.push(
                    s.side,
                    Spec::info("binary size", "MB").recorded(go::BINARY_MB),
                    mb,
                ),
                None => r.note(s.side, format!("{} not found", s.bin.display())),
            }
            if s.side == Side::Ours {
                static_binary_size(&s.bin, r);
            }
            Ok(())
        },
        |s, (), r| {
            let env = start_env(s, &upstream, false)?;
            let mut c = env
                .daemon
                .unix_target()
                .connect()
                .map_err(BenchError::io("connecting"))?;
            loadgen::request_once(
                &mut c,
                &get("/v1/state/metadata/region"),
                Duration::from_secs(5),
            )
            .map_err(BenchError::io("GET"))?;
            drop(c);
            thread::sleep(Duration::from_secs(1));
            let p = procstat::sample(env.daemon.pid()).map_err(BenchError::io("reading /proc"))?;
            // The 3 MB budget is the static build's: a dynamic one maps ~4 MB of shared
            // libc pages into its RSS.
            let spec = Spec::info("idle RSS", "MB").recorded(go::IDLE_RSS_MB);
            let spec = match (s.side, is_static_elf(&s.bin)) {
                (Side::Ours, Some(true)) => spec.goal(Goal::AtMost(3.0)),
                (Side::Ours, _) => {
                    r.note(
                        s.side,
                        "idle RSS of a dynamically linked build (shared libc pages \
                         included); the 3 MB budget is judged on the static build",
                    );
                    spec
                }
                (Side::Reference, _) => spec,
            };
            r.push(s.side, spec, p.rss_kb as f64 / 1024.0);
            r.push(
                s.side,
                Spec::info("idle threads", "count"),
                p.threads as f64,
            );
            env.daemon.stop();
            Ok(())
        },
    )
}

/// target/release/plexd-nodeapi → target/x86_64-unknown-linux-musl/release/…
fn static_binary_size(bin: &Path, r: &mut ScenarioReport) {
    let Some(target_dir) = bin.parent().and_then(Path::parent) else {
        return;
    };
    let musl = target_dir
        .join("x86_64-unknown-linux-musl")
        .join("release")
        .join("plexd-nodeapi");
    match file_mb(&musl) {
        Some(mb) => r.push(
            Side::Ours,
            Spec::info("binary size (static musl)", "MB").goal(Goal::AtMost(2.7)),
            mb,
        ),
        None => r.note(
            Side::Ours,
            format!("{} not built (make static)", musl.display()),
        ),
    }
}
