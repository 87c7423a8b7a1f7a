//! Bad input gets a clear answer and loses nothing: malformed HTTP, oversized heads,
//! hostile keys from clients and from the control plane, floods of idle and half-sent
//! connections, and secrets that must never reach a file or a log line.

use crate::common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

fn raw(socket: &std::path::Path, bytes: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn status_of(resp: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(resp);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn malformed_requests_get_4xx_and_the_daemon_stays_up() {
    let node = Node::new();
    let d = node.daemon().start();
    let huge_head = format!(
        "GET /v1/state HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let many_headers = {
        let mut h = String::from("GET /v1/state HTTP/1.1\r\n");
        for i in 0..70 {
            h.push_str(&format!("X-H{i}: v\r\n"));
        }
        h.push_str("\r\n");
        h
    };
    let cases: Vec<(Vec<u8>, &[u16])> = vec![
        (b"garbage\r\n\r\n".to_vec(), &[400]),
        (b"\x00\x01\x02\x03\r\n\r\n".to_vec(), &[400]),
        (b"GET /v1/state HTTP/9.9\r\n\r\n".to_vec(), &[400, 505]),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), &[400, 505]),
        (huge_head.into_bytes(), &[431]),
        (many_headers.into_bytes(), &[431]),
        (b"PUT /v1/state/report/k HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), &[400]),
        (b"PUT /v1/state/report/k HTTP/1.1\r\nContent-Length: abc\r\n\r\n".to_vec(), &[400]),
        (b"PUT /v1/state/report/k HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n".to_vec(), &[413]),
        (b"PUT /v1/state/report/k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(), &[400]),
    ];
    for (bytes, want) in cases {
        let resp = raw(&d.socket, &bytes);
        let status = status_of(&resp);
        assert!(
            want.contains(&status),
            "{:?} → {status}: {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(60)]),
            String::from_utf8_lossy(&resp)
        );
        assert_eq!(d.get("/v1/state").status, 200, "daemon still serves");
    }
    // A chunked upload that grows past 1 MiB is cut off with 413.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"PUT /v1/state/report/k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
    for _ in 0..20 {
        if s.write_all(chunk.as_bytes()).is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert_eq!(status_of(&out), 413);
    assert_eq!(d.get("/v1/state/report/k").status, 404, "nothing stored");
}

#[test]
fn keep_alive_pipelining_and_100_continue() {
    let node = Node::new();
    let d = node.daemon().start();
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = r#"{"content_type":"text/plain","payload":"p"}"#;
    let mut pipelined = request_bytes("PUT", "/v1/state/report/p", &[], Some(body.as_bytes()));
    pipelined.extend(request_bytes("GET", "/v1/state/report/p", &[], None));
    pipelined.extend(request_bytes("GET", "/v1/state/report/nope", &[], None));
    s.write_all(&pipelined).unwrap();
    let mut responses = ResponseReader::new(&mut s);
    assert_eq!(responses.next(false).unwrap().status, 200);
    assert_eq!(responses.next(false).unwrap().json()["payload"], "p");
    assert_eq!(responses.next(false).unwrap().status, 404);

    // Expect: 100-continue is answered before the body is sent.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = format!(
        "PUT /v1/state/report/c HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    // At once, not after an I/O timeout of the core (10 s).
    assert!(started.elapsed() < Duration::from_secs(2));
    s.write_all(body.as_bytes()).unwrap();
    assert_eq!(read_response(&mut s, false).unwrap().status, 200);
}

#[test]
fn idle_and_half_sent_connections_do_not_delay_a_fresh_request() {
    let node = Node::new();
    let d = node.daemon().start();
    // Raise our own fd limit for 2,000 client sockets.
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 8192, 8192);
    let threads_before = threads_of(d.pid());
    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(UnixStream::connect(&d.socket).unwrap());
    }
    for s in idle.iter_mut().take(100) {
        s.write_all(b"GET /v1/state HTTP/1.1\r\nHost: x\r\nX-Half: ")
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(d.get("/v1/state/metadata").status, 200);
        worst = worst.max(t.elapsed());
    }
    // Nothing waits for an idle client's timeout (10 s for a head, 60 s idle); how fast
    // a fresh request is with 2,000 idle is the bench's `idle_2000` scenario.
    assert!(
        worst < Duration::from_secs(2),
        "fresh request took {worst:?} with 2,000 idle connections"
    );
    assert_eq!(
        threads_of(d.pid()),
        threads_before,
        "thread count grew with connections"
    );
    drop(idle);
    assert_eq!(d.get("/v1/state").status, 200);
}

#[test]
fn hostile_keys_from_the_control_plane_stay_inside_state() {
    let node = Node::new();
    let cp = node.control_plane(false);
    let hostile = [
        "..",
        "../escape",
        "../../etc/passwd",
        "a/b",
        "/abs",
        ".hidden",
        "nul\0byte",
        &"k".repeat(300),
    ];
    for (i, k) in hostile.iter().enumerate() {
        cp.set_data(k, "text/plain", &format!("\"v{i}\"")).unwrap();
        cp.set_metadata(k, "m");
    }
    cp.set_data("plain", "text/plain", "\"ok\"").unwrap();
    let d = node.daemon().control_plane(&cp).start();
    assert!(eventually(Duration::from_secs(10), || d
        .get("/v1/state/data/plain")
        .status
        == 200));
    for f in walk(node.path()) {
        let rel = f.strip_prefix(node.path()).unwrap();
        assert!(
            rel.starts_with("state")
                || rel.to_string_lossy().ends_with(".log")
                || [
                    "identity.json",
                    "node_secret_key",
                    "api.sock",
                    "api.sock.lock"
                ]
                .contains(&rel.to_str().unwrap()),
            "file outside state/: {}",
            f.display()
        );
    }
    for f in walk(&node.state().join("data")) {
        assert_eq!(
            f.parent().unwrap(),
            node.state().join("data"),
            "{}",
            f.display()
        );
    }
    assert!(!node.path().join("escape.json").exists());
    // Keys that fit are served under their real (percent-encoded) names.
    assert_eq!(
        d.get("/v1/state/data/..").status,
        404,
        "a literal .. path is not the key"
    );
    assert_eq!(d.get("/v1/state/data/%2E%2E").json()["payload"], "v0");
    assert_eq!(d.get("/v1/state/data/a%2Fb").json()["payload"], "v3");
    assert_eq!(
        d.get("/v1/state/metadata/..%2F..%2Fetc%2Fpasswd").json()["value"],
        "m"
    );
}

#[test]
fn plaintext_secrets_never_reach_files_or_logs() {
    let node = Node::new();
    let cp = node.control_plane(false);
    let plaintext = "PLAINTEXT-SENTINEL-93f1";
    cp.set_secret("api-token", plaintext);
    let d = node
        .daemon()
        .control_plane(&cp)
        .args(["--log-level", "trace"])
        .start();
    assert!(eventually(Duration::from_secs(10), || d
        .get("/v1/state/secrets")
        .text()
        .contains("api-token")));
    for _ in 0..3 {
        assert_eq!(
            d.get("/v1/state/secrets/api-token").json()["value"],
            plaintext
        );
    }
    let log_path = d.log.clone();
    assert_eq!(d.stop().code(), Some(0));
    for f in walk(node.path()) {
        if f.is_file() {
            let bytes = std::fs::read(&f).unwrap();
            assert!(
                find(&bytes, plaintext.as_bytes()).is_none(),
                "plaintext in {}",
                f.display()
            );
            assert!(
                f == node.path().join("node_secret_key")
                    || find(&bytes, NSK_HEX.as_bytes()).is_none(),
                "NSK/token in {}",
                f.display()
            );
        }
    }
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(log.contains("secret access"));
}
