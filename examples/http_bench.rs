//! Quick throughput check of the HTTP core (not a test): 200k keep-alive GETs of a
//! tiny in-memory JSON over 32 Unix connections, printing req/s and the server
//! threads' CPU time per request (from /proc/self/task/*/stat).
//!
//! `cargo run --release --example http_bench [-- workers requests connections client_threads]`
//!
//! Each client thread drives `connections / client_threads` connections in lockstep
//! (send on each, then read each answer), one request in flight per connection, like
//! `wrk`. Fewer client threads leave more of a small machine to the server.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Instant;

use plexd_nodeapi::http::{
    Body, Handler, Listener, Reply, Request, Response, Server, ServerConfig,
};

struct Tiny(Arc<[u8]>);

impl Handler for Tiny {
    fn handle(&self, _req: &Request) -> Reply {
        Reply::Now(Response::json(200, Body::Shared(self.0.clone())))
    }
}

/// utime+stime ticks of this process's threads whose name starts with `http-`.
fn server_ticks() -> u64 {
    let mut total = 0;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    for entry in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(open) = stat.find('(') else { continue };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        if !stat[open + 1..close].starts_with("http-") {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let ut: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
        let st: u64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        total += ut + st;
    }
    total
}

/// Reads one small response (it arrives whole or in a few pieces).
fn read_response(s: &mut UnixStream, buf: &mut [u8]) {
    let mut got = 0;
    loop {
        let n = s.read(&mut buf[got..]).expect("read");
        assert!(n > 0, "server closed");
        got += n;
        if let Some(h) = buf[..got].windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..h]).unwrap_or("");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if got >= h + 4 + len {
                return;
            }
        }
    }
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let workers = args.first().copied().unwrap_or(2);
    let total = args.get(1).copied().unwrap_or(200_000);
    let conns = args.get(2).copied().unwrap_or(32);
    let client_threads = args.get(3).copied().unwrap_or(conns).clamp(1, conns);

    let dir = std::env::temp_dir().join(format!("plexd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("bench.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let config = ServerConfig {
        workers,
        ..ServerConfig::default()
    };
    let body: Arc<[u8]> = Arc::from(&b"{\"node_id\":\"n1\",\"ok\":true}"[..]);
    let handle = Server::start(config, vec![Listener::Unix(listener)], Arc::new(Tiny(body)))
        .expect("server");

    let ticks0 = server_ticks();
    let start = Instant::now();
    let per_thread = conns / client_threads;
    let rounds = total / (per_thread * client_threads);
    let clients: Vec<_> = (0..client_threads)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut socks: Vec<UnixStream> = (0..per_thread)
                    .map(|_| UnixStream::connect(&path).expect("connect"))
                    .collect();
                let req = b"GET /v1/state/metadata HTTP/1.1\r\nHost: localhost\r\n\r\n";
                let mut buf = [0u8; 4096];
                for _ in 0..rounds {
                    for s in &mut socks {
                        s.write_all(req).expect("write");
                    }
                    for s in &mut socks {
                        read_response(s, &mut buf);
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
    let secs = start.elapsed().as_secs_f64();
    let ticks = server_ticks() - ticks0;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let done = (rounds * per_thread * client_threads) as f64;
    println!(
        "workers={workers} conns={conns} client_threads={client_threads} requests={done} time={secs:.2}s req/s={:.0} server_cpu_us_per_req={:.2}",
        done / secs,
        ticks as f64 / hz * 1e6 / done
    );
    handle.shutdown(std::time::Duration::from_secs(2));
    let _ = std::fs::remove_dir_all(&dir);
}
