//! Measures change notification against the real daemon binary (not a test):
//!
//! 1. wake-up latency: a blocking query parked on a report key, then a PUT to that key;
//!    the time from sending the PUT to the waiter's answer, 200 times (median, p99),
//!    alone and with 1,000 other requests parked on another key;
//! 2. GET throughput: 32 keep-alive connections over the Unix socket, without and with
//!    1,000 parked waiters, and with 1,000 parked waiters while a writer PUTs to another
//!    key as fast as it can (every PUT makes the HTTP core re-check every waiter).
//!
//! `cargo build --release && cargo run --release --example notify_latency [-- BINARY]`
//! (BINARY defaults to `target/release/plexd-nodeapi`). The daemon runs in a temporary
//! data folder with `--log-level warn`; this process needs ~1,100 file descriptors.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 32;
const CLIENT_THREADS: usize = 4;
const RUN: Duration = Duration::from_secs(3);

/// One response: status, `X-Plexd-Index`, body length. Reads exactly one response.
fn read_one(s: &mut UnixStream, buf: &mut Vec<u8>) -> (u16, u64) {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(h) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..h]).to_string();
            let mut status = 0;
            let mut len = 0;
            let mut index = 0;
            for (i, line) in head.lines().enumerate() {
                if i == 0 {
                    status = line
                        .split(' ')
                        .nth(1)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                } else if let Some((n, v)) = line.split_once(':') {
                    let v = v.trim();
                    match n.to_ascii_lowercase().as_str() {
                        "content-length" => len = v.parse().unwrap_or(0),
                        "x-plexd-index" => index = v.parse().unwrap_or(0),
                        _ => {}
                    }
                }
            }
            if buf.len() >= h + 4 + len {
                return (status, index);
            }
        }
        let n = s.read(&mut chunk).expect("read");
        assert!(n > 0, "daemon closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn connect(socket: &Path) -> UnixStream {
    UnixStream::connect(socket).expect("connect")
}

fn get(s: &mut UnixStream, path: &str, buf: &mut Vec<u8>) -> (u16, u64) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(req.as_bytes()).expect("write");
    read_one(s, buf)
}

fn put(s: &mut UnixStream, key: &str, n: u64, buf: &mut Vec<u8>) -> (u16, u64) {
    let body = format!(r#"{{"content_type":"application/json","payload":{n}}}"#);
    let req = format!(
        "PUT /v1/state/report/{key} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write");
    read_one(s, buf)
}

fn metric(socket: &Path, name: &str) -> f64 {
    let mut s = connect(socket);
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(-1.0)
}

fn wait_parked(socket: &Path, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(socket, "plexd_nodeapi_parked_requests") != n {
        assert!(Instant::now() < deadline, "waiters did not park");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Opens `n` blocking queries on `key` (waiting 10 minutes).
fn park_many(socket: &Path, key: &str, n: usize) -> Vec<UnixStream> {
    let mut buf = Vec::new();
    let mut c = connect(socket);
    let (_, index) = get(&mut c, &format!("/v1/state/report/{key}"), &mut buf);
    let req =
        format!("GET /v1/state/report/{key}?index={index}&wait=10m HTTP/1.1\r\nHost: x\r\n\r\n");
    (0..n)
        .map(|_| {
            let mut s = connect(socket);
            s.write_all(req.as_bytes()).expect("write");
            s
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn wake_latency(socket: &Path, label: &str) {
    let mut buf = Vec::new();
    let mut writer = connect(socket);
    let mut samples = Vec::with_capacity(200);
    let mut put_only = Vec::with_capacity(200);
    let mut after_put = Vec::with_capacity(200);
    let mut n = 1000;
    for _ in 0..200 {
        n += 1;
        let (_, index) = get(&mut writer, "/v1/state/report/wake", &mut buf);
        let mut waiter = connect(socket);
        let req =
            format!("GET /v1/state/report/wake?index={index}&wait=60s HTTP/1.1\r\nHost: x\r\n\r\n");
        let target = metric(socket, "plexd_nodeapi_parked_requests").max(0.0);
        waiter.write_all(req.as_bytes()).expect("write");
        // Wait until this waiter is parked (the gauge counts it).
        let deadline = Instant::now() + Duration::from_secs(5);
        while metric(socket, "plexd_nodeapi_parked_requests") < target + 1.0
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_micros(200));
        }
        let reader = std::thread::spawn(move || {
            let mut b = Vec::new();
            let (status, _) = read_one(&mut waiter, &mut b);
            (status, Instant::now())
        });
        let t0 = Instant::now();
        let (status, _) = put(&mut writer, "wake", n, &mut buf);
        let put_done = t0.elapsed();
        assert_eq!(status, 200);
        let (wstatus, woke_at) = reader.join().expect("reader");
        assert_eq!(wstatus, 200);
        samples.push(woke_at.duration_since(t0));
        put_only.push(put_done);
        after_put.push(woke_at.saturating_duration_since(t0 + put_done));
    }
    samples.sort();
    put_only.sort();
    after_put.sort();
    println!(
        "wake-up latency ({label}), PUT sent -> waiter answered, n=200: median {:?}, p99 {:?}\n  (the PUT's own answer: median {:?}, p99 {:?}; waiter answered after the PUT's answer by: median {:?}, p99 {:?})",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        percentile(&put_only, 0.5),
        percentile(&put_only, 0.99),
        percentile(&after_put, 0.5),
        percentile(&after_put, 0.99),
    );
}

/// GETs over 32 keep-alive connections for `RUN`; returns req/s. With `churn`, a
/// writer PUTs to another key meanwhile; returns its PUT/s too.
/// PUT/s of one writer on a key nobody waits for (each PUT still wakes the core).
fn put_rate(socket: &Path) -> f64 {
    let mut c = connect(socket);
    let mut buf = Vec::new();
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < RUN {
        n += 1;
        put(&mut c, "churn", n, &mut buf);
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn throughput(socket: &Path, churn: bool) -> (f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let puts = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for _ in 0..CLIENT_THREADS {
        let socket = socket.to_owned();
        let stop = stop.clone();
        let done = done.clone();
        threads.push(std::thread::spawn(move || {
            let mut conns: Vec<UnixStream> = (0..CONNECTIONS / CLIENT_THREADS)
                .map(|_| connect(&socket))
                .collect();
            let req = b"GET /v1/state/report/read HTTP/1.1\r\nHost: x\r\n\r\n";
            let mut buf = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                for c in &mut conns {
                    c.write_all(req).expect("write");
                }
                for c in &mut conns {
                    let (status, _) = read_one(c, &mut buf);
                    assert_eq!(status, 200);
                    n += 1;
                }
            }
            done.fetch_add(n, Ordering::Relaxed);
        }));
    }
    if churn {
        let socket = socket.to_owned();
        let stop = stop.clone();
        let puts = puts.clone();
        threads.push(std::thread::spawn(move || {
            let mut c = connect(&socket);
            let mut buf = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                put(&mut c, "churn", n, &mut buf);
            }
            puts.fetch_add(n, Ordering::Relaxed);
        }));
    }
    let started = Instant::now();
    std::thread::sleep(RUN);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("client thread");
    }
    let secs = started.elapsed().as_secs_f64();
    (
        done.load(Ordering::Relaxed) as f64 / secs,
        puts.load(Ordering::Relaxed) as f64 / secs,
    )
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

fn main() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(16384), hard);
    }
    let binary: PathBuf = std::env::args().nth(1).map_or_else(
        || PathBuf::from("target/release/plexd-nodeapi"),
        PathBuf::from,
    );
    // NOTIFY_BENCH_DIR=/dev/shm takes fsync out of the PUT path (more PUT/s, so more
    // wake-ups per second to measure).
    let base = std::env::var_os("NOTIFY_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = tempfile::tempdir_in(&base).expect("tempdir");
    std::fs::write(dir.path().join("identity.json"), r#"{"node_id":"n_bench"}"#).unwrap();
    std::fs::write(dir.path().join("node_secret_key"), "0".repeat(64)).unwrap();
    let socket = dir.path().join("api.sock");
    let child = Command::new(&binary)
        .args(["serve", "--log-level", "warn", "--data-dir"])
        .arg(dir.path())
        .arg("--socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let _daemon = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "binary {} on {cores} cores, data in {}",
        binary.display(),
        base.display()
    );
    let mut buf = Vec::new();
    let mut c = connect(&socket);
    for key in ["wake", "read", "parked", "churn"] {
        put(&mut c, key, 0, &mut buf);
    }

    wake_latency(&socket, "1 waiter");
    let puts_alone = put_rate(&socket);
    println!("PUT/s, one writer, no parked waiters: {puts_alone:.0}");
    let (plain, _) = throughput(&socket, false);
    println!("GET req/s, 32 keep-alive connections, no parked waiters: {plain:.0}");

    let parked = park_many(&socket, "parked", 1000);
    wait_parked(&socket, 1000.0);
    let (with_parked, _) = throughput(&socket, false);
    println!("GET req/s, 32 keep-alive connections, 1,000 parked waiters: {with_parked:.0}");
    let puts_parked = put_rate(&socket);
    println!("PUT/s, one writer, 1,000 parked waiters on another key: {puts_parked:.0}");
    let (with_churn, puts) = throughput(&socket, true);
    println!(
        "GET req/s, 1,000 parked waiters and a writer PUTting to another key: {with_churn:.0} ({puts:.0} PUT/s, each re-checking 1,000 waiters)"
    );
    wake_latency(&socket, "1 waiter + 1,000 parked on another key");
    drop(parked);
}
