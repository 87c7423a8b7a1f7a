//! Wire-level tests of the HTTP core over real Unix sockets: framing, keep-alive,
//! limits, timeouts, parked requests, streams and shutdown.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::http_common::{Client, TestServer};

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let srv = TestServer::start();
    let mut c = srv.client();
    for _ in 0..5 {
        let r = c.get("/echo");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "GET /echo\n");
        assert!(r.header("Date").is_some());
        assert_eq!(r.header("Connection"), None);
    }
    assert_eq!(srv.stats().accepted_total.load(Ordering::SeqCst), 1);
    assert_eq!(srv.handle().requests_total(), 5);
}

#[test]
fn connection_close_and_http10_rules() {
    let srv = TestServer::start();
    let mut c = srv.client();
    c.send(b"GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(c.closed());

    let mut c = srv.client();
    c.send(b"GET /echo HTTP/1.0\r\n\r\n");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 200);
    assert!(c.closed());

    let mut c = srv.client();
    c.send(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.header("Connection"), Some("keep-alive"));
    c.send(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.read_response(false).unwrap().status, 200);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let srv = TestServer::start();
    let mut c = srv.client();
    c.send(
        b"GET /slow HTTP/1.1\r\n\r\nPOST /echo HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /missing HTTP/1.1\r\n\r\n",
    );
    let a = c.read_response(false).unwrap();
    let b = c.read_response(false).unwrap();
    let d = c.read_response(false).unwrap();
    assert_eq!(a.text(), "{\"slow\":true}");
    assert_eq!(b.text(), "POST /echo\nabc");
    assert_eq!(d.status, 404);
    assert_eq!(d.text(), "{\"error\":\"not found\"}");
}

#[test]
fn content_length_and_chunked_bodies() {
    let srv = TestServer::start();
    let mut c = srv.client();
    c.send(b"PUT /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel");
    std::thread::sleep(Duration::from_millis(50));
    c.send(b"lo");
    assert_eq!(c.read_response(false).unwrap().text(), "PUT /echo\nhello");

    c.send(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5;ext=1\r\npedia\r\n");
    std::thread::sleep(Duration::from_millis(50));
    c.send(b"0\r\nTrailer: x\r\n\r\n");
    assert_eq!(
        c.read_response(false).unwrap().text(),
        "POST /echo\nWikipedia"
    );
    assert_eq!(c.get("/echo").status, 200);
}

#[test]
fn bad_framing_is_rejected_and_closed() {
    let srv = TestServer::start();
    let cases: [(&[u8], u16); 6] = [
        (
            b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (
            b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            400,
        ),
        (b"POST /echo HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (
            b"POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
        ),
        (
            b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            400,
        ),
        (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", 400),
    ];
    for (bytes, status) in cases {
        let mut c = srv.client();
        c.send(bytes);
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(bytes));
        assert_eq!(r.header("Connection"), Some("close"));
        assert!(r.text().starts_with("{\"error\":"));
        assert!(c.closed());
    }
    // The server keeps serving others.
    assert_eq!(srv.client().get("/echo").status, 200);
}

#[test]
fn http2_preface_and_http3_version() {
    let srv = TestServer::start();
    let mut c = srv.client();
    c.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    let s = c.read_response(false).unwrap().status;
    assert!(s == 400 || s == 505, "{s}");
    let mut c = srv.client();
    c.send(b"GET / HTTP/3.0\r\n\r\n");
    assert_eq!(c.read_response(false).unwrap().status, 505);
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let srv = TestServer::start();
    let mut c = srv.client();
    c.send(b"PUT /echo HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    let interim = c.read_response(false).unwrap();
    assert_eq!(interim.status, 100);
    c.send(b"data");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.text(), "PUT /echo\ndata");

    let mut c = srv.client();
    c.send(b"PUT /echo HTTP/1.1\r\nContent-Length: 99999999\r\nExpect: 100-continue\r\n\r\n");
    assert_eq!(c.read_response(false).unwrap().status, 413);
}

#[test]
fn head_has_content_length_but_no_body() {
    let srv = TestServer::start();
    let mut c = srv.client();
    c.send(b"HEAD /echo HTTP/1.1\r\n\r\n");
    let r = c.read_response(true).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Length"), Some("11"));
    // The next response follows directly: no body bytes were sent.
    assert_eq!(c.get("/echo").text(), "GET /echo\n");
}

#[test]
fn slow_handler_holds_only_its_worker() {
    let srv = TestServer::with(|c| c.workers = 2);
    let mut slow = srv.client();
    slow.send(b"GET /slow?ms=3000 HTTP/1.1\r\n\r\n");
    std::thread::sleep(Duration::from_millis(30));
    let t = Instant::now();
    assert_eq!(srv.client().get("/echo").status, 200);
    // Served by the other worker, not after the slow handler's 3 s.
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(slow.read_response(false).unwrap().status, 200);
}

#[test]
fn refused_head_request_gets_no_body() {
    let srv = TestServer::start();
    let mut c = srv.client();
    c.send(b"HEAD /echo HTTP/1.1\r\nContent-Length: x\r\n\r\n");
    let r = c.read_response(true).unwrap();
    assert_eq!(r.status, 400);
    assert!(r.header("Content-Length").is_some());
    assert!(c.read_to_end().is_empty());
}

#[test]
fn no_content_has_no_length() {
    let srv = TestServer::start();
    let mut c = srv.client();
    let r = c.get("/nocontent");
    assert_eq!(r.status, 204);
    assert_eq!(r.header("Content-Length"), None);
    assert_eq!(c.get("/echo").status, 200);
}

#[test]
fn head_and_header_limits() {
    let srv = TestServer::start();
    let mut c = srv.client();
    let big = format!(
        "GET /echo HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(17 * 1024)
    );
    c.send(big.as_bytes());
    assert_eq!(c.read_response(false).unwrap().status, 431);
    assert!(c.closed());

    let mut c = srv.client();
    let mut req = String::from("GET /echo HTTP/1.1\r\n");
    for i in 0..65 {
        req.push_str(&format!("X-H{i}: v\r\n"));
    }
    req.push_str("\r\n");
    c.send(req.as_bytes());
    assert_eq!(c.read_response(false).unwrap().status, 431);

    let mut c = srv.client();
    let mut req = String::from("GET /echo HTTP/1.1\r\n");
    for i in 0..63 {
        req.push_str(&format!("X-H{i}: v\r\n"));
    }
    req.push_str("\r\n");
    c.send(req.as_bytes());
    assert_eq!(c.read_response(false).unwrap().status, 200);
}

#[test]
fn body_limits() {
    let srv = TestServer::with(|c| c.limits.max_body_bytes = 1000);
    let mut c = srv.client();
    c.send(b"POST /echo HTTP/1.1\r\nContent-Length: 1001\r\n\r\n");
    assert_eq!(c.read_response(false).unwrap().status, 413);
    assert!(c.closed());

    let mut c = srv.client();
    c.send(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    for _ in 0..3 {
        let chunk = format!("190\r\n{}\r\n", "x".repeat(400));
        let _ = std::io::Write::write_all(&mut c.stream, chunk.as_bytes());
    }
    assert_eq!(c.read_response(false).unwrap().status, 413);
}

#[test]
fn head_timeout_answers_408_and_closes() {
    let srv = TestServer::start();
    let mut c = srv.client();
    c.send(b"GET /echo HTTP/1.1\r\nHost:");
    let t = Instant::now();
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 408);
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(c.closed());
}

#[test]
fn idle_timeout_closes() {
    let srv = TestServer::start();
    let mut c = srv.client();
    assert_eq!(c.get("/echo").status, 200);
    let t = Instant::now();
    assert!(c.closed());
    assert!(t.elapsed() >= Duration::from_millis(600));
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(srv.stats().open_connections.load(Ordering::SeqCst), 0);
}

#[test]
fn at_the_connection_limit_the_longest_idle_connection_makes_room() {
    let srv = TestServer::with(|c| c.max_connections = 2);
    let mut oldest = srv.client();
    assert_eq!(oldest.get("/echo").status, 200);
    std::thread::sleep(Duration::from_millis(20));
    let mut younger = srv.client();
    assert_eq!(younger.get("/echo").status, 200);
    // A newcomer is served; the connection idle longest is closed to make room.
    let mut newcomer = srv.client();
    assert_eq!(newcomer.get("/echo").status, 200);
    assert!(oldest.closed(), "the longest-idle connection is evicted");
    assert_eq!(younger.get("/echo").status, 200);
    assert_eq!(srv.stats().evicted_connections.load(Ordering::SeqCst), 1);
    assert_eq!(srv.stats().rejected_connections.load(Ordering::SeqCst), 0);
}

#[test]
fn at_the_connection_limit_a_newcomer_is_refused_only_when_all_are_busy() {
    let srv = TestServer::with(|c| c.max_connections = 2);
    // Two parked requests: neither connection is idle.
    let mut a = srv.client();
    let mut b = srv.client();
    a.send(b"GET /park?ms=3000 HTTP/1.1\r\n\r\n");
    b.send(b"GET /park?ms=3000 HTTP/1.1\r\n\r\n");
    wait_for(|| srv.stats().parked.load(Ordering::SeqCst) == 2);
    let mut extra = srv.client();
    let refused = extra.read_response(false).expect("a 503 before the close");
    assert_eq!(refused.status, 503);
    assert!(refused.text().contains("busy"), "{}", refused.text());
    assert_eq!(refused.header("Retry-After"), Some("1"));
    assert!(extra.closed());
    assert_eq!(srv.stats().rejected_connections.load(Ordering::SeqCst), 1);
    assert_eq!(
        srv.stats()
            .rejected(plexd_nodeapi::http::RejectReason::ConnectionLimit),
        1
    );
    // The parked requests are untouched.
    assert_eq!(a.read_response(false).unwrap().text(), "timeout");
}

#[test]
fn unix_peer_credentials_are_ours() {
    let srv = TestServer::start();
    let body = srv.client().get("/creds").text();
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    let pid = std::process::id();
    assert!(
        body.starts_with(&format!("pid={pid} uid={uid} gid={gid} groups=")),
        "{body}"
    );
    let groups: Vec<u32> = nix::unistd::getgroups()
        .unwrap()
        .into_iter()
        .map(|g| g.as_raw())
        .collect();
    for g in groups {
        assert!(body.contains(&g.to_string()), "{body} lacks {g}");
    }
}

#[test]
fn parked_request_answers_on_matching_wake_only() {
    let srv = TestServer::start();
    let waker = srv.handle().waker();
    let mut c = srv.client();
    c.send(b"GET /park HTTP/1.1\r\n\r\n");
    wait_for(|| srv.stats().parked.load(Ordering::SeqCst) == 1);
    waker.wake();
    c.set_timeout(Duration::from_millis(200));
    assert!(
        c.read_response(false).is_none(),
        "answered on unrelated wake"
    );
    srv.ready.store(true, Ordering::SeqCst);
    waker.wake();
    c.set_timeout(Duration::from_secs(5));
    let r = c.read_response(false).unwrap();
    assert_eq!(r.text(), "ready");
    assert_eq!(srv.stats().parked.load(Ordering::SeqCst), 0);
    // The connection stays usable.
    assert_eq!(c.get("/echo").status, 200);
}

#[test]
fn work_done_elsewhere_can_park_the_request_with_its_own_deadline() {
    let srv = TestServer::start();
    // Parked by the work after 50 ms, with a deadline of its own (300 ms), well before
    // the later-request's deadline (10 s): answered at that deadline.
    let mut c = srv.client();
    let t = Instant::now();
    c.send(b"GET /later-park?ms=300 HTTP/1.1\r\n\r\n");
    c.set_timeout(Duration::from_secs(5));
    let r = c.read_response(false).unwrap();
    assert_eq!(r.text(), "timeout");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    // And woken by a change like any parked request.
    c.send(b"GET /later-park?ms=5000 HTTP/1.1\r\n\r\n");
    wait_for(|| srv.stats().parked.load(Ordering::SeqCst) == 1);
    srv.ready.store(true, Ordering::SeqCst);
    srv.handle().waker().wake();
    assert_eq!(c.read_response(false).unwrap().text(), "ready");
    assert_eq!(c.get("/echo").status, 200);
}

#[test]
fn parked_request_answers_at_deadline_and_429_beyond_max() {
    let srv = TestServer::with(|c| c.max_parked = 2);
    let mut a = srv.client();
    let mut b = srv.client();
    a.send(b"GET /park?ms=300 HTTP/1.1\r\n\r\n");
    b.send(b"GET /park?ms=300 HTTP/1.1\r\n\r\n");
    wait_for(|| srv.stats().parked.load(Ordering::SeqCst) == 2);
    let mut c = srv.client();
    let r = c.get("/park");
    assert_eq!(r.status, 429);
    assert_eq!(r.header("Retry-After"), Some("1"));
    let t = Instant::now();
    assert_eq!(a.read_response(false).unwrap().text(), "timeout");
    assert_eq!(b.read_response(false).unwrap().text(), "timeout");
    // At their 300 ms deadline, with room for a loaded machine.
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[test]
fn parked_client_disconnect_is_dropped() {
    let srv = TestServer::start();
    let mut c = srv.client();
    c.send(b"GET /park HTTP/1.1\r\n\r\n");
    wait_for(|| srv.stats().parked.load(Ordering::SeqCst) == 1);
    drop(c);
    wait_for(|| srv.stats().parked.load(Ordering::SeqCst) == 0);
    wait_for(|| srv.stats().open_connections.load(Ordering::SeqCst) == 0);
}

#[test]
fn shutdown_answers_parked_and_returns_in_time() {
    let mut srv = TestServer::start();
    let mut parked = srv.client();
    parked.send(b"GET /park HTTP/1.1\r\n\r\n");
    let mut idle = srv.client();
    assert_eq!(idle.get("/echo").status, 200);
    wait_for(|| srv.stats().parked.load(Ordering::SeqCst) == 1);
    let handle = srv.handle.take().unwrap();
    let t = Instant::now();
    handle.shutdown(Duration::from_secs(2));
    assert!(
        t.elapsed() < Duration::from_millis(2200),
        "{:?}",
        t.elapsed()
    );
    let r = parked.read_response(false).unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(idle.closed());
    assert!(std::os::unix::net::UnixStream::connect(&srv.path)
        .map(|s| Client::new(s).closed())
        .unwrap_or(true));
}

#[test]
fn shutdown_lets_in_flight_request_finish() {
    let mut srv = TestServer::start();
    let mut c = srv.client();
    c.send(b"GET /slow HTTP/1.1\r\n\r\n");
    std::thread::sleep(Duration::from_millis(50));
    let handle = srv.handle.take().unwrap();
    handle.shutdown(Duration::from_secs(2));
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Connection"), Some("close"));
}

#[test]
fn stream_writes_until_body_returns() {
    let srv = TestServer::start();
    let mut c = srv.client();
    c.send(b"GET /stream HTTP/1.1\r\n\r\n");
    let r = c.read_response(true).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Length"), None);
    assert_eq!(r.header("Connection"), Some("close"));
    let rest = c.read_to_end();
    assert_eq!(rest, b"data: 0\n\ndata: 1\n\ndata: 2\n\n");
    wait_for(|| srv.stats().open_connections.load(Ordering::SeqCst) == 0);
}

#[test]
fn tcp_listener_serves_with_peer_address() {
    use plexd_nodeapi::http::{Listener, Server};
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = Server::start(
        Default::default(),
        vec![Listener::Tcp(l)],
        std::sync::Arc::new(crate::http_common::TestHandler::default()),
    )
    .unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /creds HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(
        out.contains(&format!("Tcp({})", s.local_addr().unwrap())),
        "{out}"
    );
    h.shutdown(Duration::from_secs(1));
}

#[test]
fn client_that_does_not_read_does_not_pin_the_worker() {
    let srv = TestServer::with(|c| c.workers = 1);
    let mut lazy = srv.client();
    lazy.send(b"GET /big HTTP/1.1\r\n\r\n");
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    let mut other = srv.client();
    assert_eq!(other.get("/echo").status, 200);
    let waited = t.elapsed();
    assert!(waited < Duration::from_millis(1500), "{waited:?}");
    wait_for(|| srv.stats().open_connections.load(Ordering::SeqCst) == 1);
}

#[test]
fn stalled_body_is_dropped_after_io_timeout() {
    let srv = TestServer::with(|c| c.workers = 1);
    let mut c = srv.client();
    c.send(b"POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nhalf!");
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    assert!(c.closed());
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(srv.client().get("/echo").status, 200);
}

#[test]
fn random_bytes_never_break_the_server() {
    let srv = TestServer::start();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let prefixes: [&[u8]; 4] = [
        b"",
        b"GET /echo HTTP/1.1\r\n",
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nContent-Length: 4\r\n\r\n",
    ];
    for i in 0..200 {
        let mut bytes = prefixes[i % prefixes.len()].to_vec();
        let len = (next() % 300) as usize;
        bytes.extend((0..len).map(|_| {
            let r = next();
            // Bias towards bytes that matter to the parser.
            [b'\r', b'\n', b':', b' ', b'0', b'f', b';'][(r % 7) as usize].max(if r % 3 == 0 {
                (r >> 8) as u8
            } else {
                0
            })
        }));
        let mut c = srv.client();
        c.set_timeout(Duration::from_millis(50));
        let _ = std::io::Write::write_all(&mut c.stream, &bytes);
        let _ = c.read_response(false);
    }
    assert_eq!(srv.client().get("/echo").status, 200);
}

fn wait_for(cond: impl Fn() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "condition not reached"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
