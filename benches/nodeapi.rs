//! `cargo bench --bench nodeapi [-- SCENARIO… --runs N --reference PATH …]`: drives the
//! release `plexd-nodeapi serve` over its Unix socket and loopback TCP with the
//! harness's own epoll load generator and reports, per scenario, the median, min and
//! max over N runs (default 3; 1 s warm-up + 3 s window each) of req/s, latency
//! percentiles, server CPU µs per request (utime + stime from `/proc/<pid>/stat` over
//! the window, divided by the requests), the load generator's own CPU, RSS and threads,
//! and for attacks the latency of fresh requests on new connections while they last.
//! Each scenario starts its own daemons on fresh temporary data directories (cache files
//! pre-written), with an in-process control plane on loopback (`support/upstream.rs`).
//! `-- --list` shows every scenario and what it measures (`scenarios/mod.rs`).
//!
//! Side by side: with `--reference PATH` (or `$PLEXD_NODEAPI_REFERENCE`), a reference
//! binary that takes the same flags without the `serve` word (the Go agent's harness)
//! runs every selected scenario too, alternately with ours in the same run (A B A B …),
//! and the table shows both sides' medians and ranges and the ratio ours/reference, on
//! which the ratio targets are judged. A scenario that needs a flag the
//! reference lacks says so and runs on ours alone. The reference may also be another
//! build of ours (an older commit: a before/after comparison in one run; the ratio
//! targets are then not judged). Without a reference the table shows our absolute
//! figures next to Go medians recorded earlier.
//!
//! Options: `--runs N`, `--duration SECS`, `--warmup SECS`, `--client-threads N`
//! (default 1: client and daemon share the cores), `--reference PATH`, `--json FILE`,
//! `--list`, `--self-test`. `PLEXD_NODEAPI_BIN=PATH` benchmarks another build of our
//! binary (the static musl one, or an older commit's). Exit status: 0 all scenarios ran
//! on our side (targets missed are shown as `MISS`, not failures; a reference that
//! fails is noted), 1 a scenario could not run, 2 usage, 3 the per-scenario watchdog
//! fired (all daemons are killed first).
//!
//! `-- --self-test` checks the harness itself against a tiny local server instead, so it
//! is verified without the daemon (`selftest/`). It is also what runs when the binary is
//! started without cargo bench's `--bench` flag, i.e. by `cargo test --all-targets`
//! (`make test`): libtest options are then ignored, and a name filter that does not
//! match `self_test` skips it.
//!
//! It deliberately does not build the daemon (cargo builds `plexd-nodeapi` before any
//! bench) or the reference, talk to anything but loopback and Unix sockets, or run
//! unbounded: every phase has a time limit.

mod scenarios;
mod selftest;
mod support;

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use support::daemon;
use support::procstat;
use support::report::{render_json, render_table, Mode};
use support::subject::Subject;
use support::BenchError;

// ---------------------------------------------------------------- options

/// What was asked for on the command line.
#[derive(Debug, Clone)]
pub struct Options {
    scenarios: Vec<String>,
    pub runs: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub client_threads: usize,
    reference: Option<PathBuf>,
    json: Option<PathBuf>,
    self_test: bool,
    list: bool,
    /// Test mode with a name filter that does not select the self-test.
    skip: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            scenarios: Vec::new(),
            runs: 3,
            duration: Duration::from_secs(3),
            warmup: Duration::from_secs(1),
            client_threads: 1,
            reference: None,
            json: None,
            self_test: false,
            list: false,
            skip: false,
        }
    }
}

const USAGE: &str = "usage: cargo bench --bench nodeapi -- [SCENARIO…] [--runs N] \
    [--duration SECS] [--warmup SECS] [--client-threads N] [--reference PATH] \
    [--json FILE] [--self-test] [--list]";

fn parse_args() -> Result<Options, BenchError> {
    use lexopt::prelude::*;
    let mut o = Options {
        reference: std::env::var_os("PLEXD_NODEAPI_REFERENCE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
        ..Options::default()
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
            Long("reference") => o.reference = Some(parser.value().map_err(usage)?.into()),
            Long("json") => o.json = Some(parser.value().map_err(usage)?.into()),
            Long("self-test") => o.self_test = true,
            Long("list") => o.list = true,
            Long("help") | Short('h') => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            Value(v) => {
                let name = v.to_string_lossy().into_owned();
                if scenarios::find(&name).is_none() {
                    let known: Vec<&str> = scenarios::CATALOG.iter().map(|d| d.name).collect();
                    return Err(BenchError::Usage(format!(
                        "unknown scenario {name:?}; known: {}",
                        known.join(", ")
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

/// `--list`: every scenario with what it measures, wrapped.
fn print_list(opts: &Options) {
    for d in scenarios::CATALOG {
        println!("{}", d.name);
        let mut line = String::from("   ");
        for word in d.about.split_whitespace() {
            if line.len() + word.len() > 88 {
                println!("{line}");
                line = String::from("   ");
            }
            line.push(' ');
            line.push_str(word);
        }
        println!("{line}");
        println!(
            "    ({} run(s) with the current options; at most {:?} side by side)",
            d.runs(opts),
            d.time_bound(opts, 2)
        );
    }
}

fn main() {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("nodeapi bench: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    if opts.skip {
        println!("nodeapi bench: self-test not selected by the filter");
        return;
    }
    if opts.list {
        print_list(&opts);
        return;
    }
    match procstat::raise_nofile_limit() {
        Ok(n) if n < 4200 => eprintln!("warning: RLIMIT_NOFILE is only {n}; idle_2000 may fail"),
        Ok(_) => {}
        Err(e) => eprintln!("warning: could not raise RLIMIT_NOFILE: {e}"),
    }
    if opts.self_test {
        let ok = selftest::run(&opts);
        std::process::exit(if ok { 0 } else { 1 });
    }
    let mut subjects = vec![Subject::ours(daemon::daemon_binary())];
    if let Some(path) = &opts.reference {
        match Subject::reference(path) {
            Ok(s) => subjects.push(s),
            Err(e) => {
                eprintln!("nodeapi bench: {e}");
                std::process::exit(2);
            }
        }
    }
    let selected: Vec<&scenarios::Def> = if opts.scenarios.is_empty() {
        scenarios::CATALOG.iter().collect()
    } else {
        opts.scenarios
            .iter()
            .filter_map(|n| scenarios::find(n))
            .collect()
    };
    println!(
        "plexd-nodeapi bench: {} scenario(s), {} run(s) each (or the scenario's minimum), \
         {:?} warm-up + {:?} window, {} client thread(s)",
        selected.len(),
        opts.runs,
        opts.warmup,
        opts.duration,
        opts.client_threads,
    );
    for s in &subjects {
        println!("  {}: {}", s.side.label(), s.bin.display());
    }
    let mut reports = Vec::new();
    let mut shared = scenarios::Shared::default();
    for def in selected {
        let started = Instant::now();
        eprintln!("== {} ({} run(s))", def.name, def.runs(&opts));
        let watchdog = Watchdog::arm(def.name, def.time_bound(&opts, subjects.len()));
        let report = scenarios::run(def, &opts, &subjects, &mut shared);
        watchdog.disarm();
        if let Some(e) = &report.error {
            eprintln!("   FAILED: {e}");
        }
        if let Some(why) = &report.reference_absent {
            eprintln!("   reference {why}");
        }
        eprintln!("   ({:.1} s)", started.elapsed().as_secs_f64());
        reports.push(report);
    }
    let mode = match subjects.get(1) {
        None => Mode::Absolute,
        Some(r) => Mode::VsReference {
            ratio_targets: !r.is_build_of_ours(),
        },
    };
    print!("{}", render_table(&reports, mode));
    if let Some(path) = &opts.json {
        let header = serde_json::json!({
            "runs": opts.runs,
            "duration_secs": opts.duration.as_secs_f64(),
            "warmup_secs": opts.warmup.as_secs_f64(),
            "client_threads": opts.client_threads,
            "binaries": subjects.iter().map(|s| serde_json::json!({
                "side": s.side.label(), "path": s.bin.display().to_string(),
            })).collect::<Vec<_>>(),
        });
        if let Err(e) = std::fs::write(path, render_json(&reports, mode, header)) {
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
