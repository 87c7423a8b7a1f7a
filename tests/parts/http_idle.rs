//! 2,000 idle keep-alive connections and 50 half-sent heads must neither hold threads
//! nor delay a fresh client. Runs alone in a child process so the thread count is stable.

use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::http_common::{thread_count, TestServer};

fn rss_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// It counts the process's threads, so it runs alone in a child process.
#[test]
fn idle_and_half_sent_connections_hold_no_worker() {
    crate::alone(
        module_path!(),
        "idle_and_half_sent_connections_hold_no_worker",
        idle_and_half_sent_connections_hold_no_worker_alone,
    );
}

fn idle_and_half_sent_connections_hold_no_worker_alone() {
    let srv = TestServer::with(|c| {
        c.workers = 4;
        c.limits.head_timeout = Duration::from_secs(30);
        c.limits.idle_timeout = Duration::from_secs(30);
    });
    // Warm up the workers and the allocator.
    assert_eq!(srv.client().get("/echo").status, 200);
    let threads = thread_count();
    let rss_before = rss_kib();

    let mut idle = Vec::new();
    for _ in 0..2000 {
        let mut c = srv.client();
        assert_eq!(c.get("/echo").status, 200);
        idle.push(c);
    }
    let mut half = Vec::new();
    for _ in 0..50 {
        let mut c = srv.client();
        c.send(b"GET /echo HTTP/1.1\r\nHost: exa");
        half.push(c);
    }
    let t = Instant::now();
    while srv.stats().open_connections.load(Ordering::SeqCst) < 2050 {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));

    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        let mut c = crate::http_common::Client::new(UnixStream::connect(&srv.path).unwrap());
        assert_eq!(c.get("/json").status, 200);
        worst = worst.max(t.elapsed());
    }
    let rss_after = rss_kib();
    let per_conn = (rss_after.saturating_sub(rss_before) * 1024) / 2050;
    println!(
        "fresh request worst {:?}; threads {} -> {}; RSS +{} KiB (~{} B per connection, both ends' user space)",
        worst,
        threads,
        thread_count(),
        rss_after.saturating_sub(rss_before),
        per_conn
    );
    // No fresh client waits for an idle one's timeout (30 s here); how fast it is with
    // 2,000 idle is the bench's `idle_2000` scenario.
    assert!(worst < Duration::from_secs(2), "{worst:?}");
    assert_eq!(thread_count(), threads);
    assert!(per_conn < 4096, "{per_conn} bytes per connection");
    // The half-sent heads can still finish.
    for c in &mut half {
        c.send(b"mple\r\n\r\n");
        assert_eq!(c.read_response(false).unwrap().status, 200);
    }
    drop(idle);
}
