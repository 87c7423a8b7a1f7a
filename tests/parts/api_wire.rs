//! The router and handlers in process, byte for byte: raw requests are written into one
//! end of a `UnixStream::pair()` whose other end the real HTTP core serves with the
//! real `Api` over a real store in a temp folder, and the raw answer is checked.
//! No sockets on disk, no daemon process: exact wire assertions for the cases that are
//! about bytes (framing, headers, status lines, pipelining).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use plexd_nodeapi::api::access::Access;
use plexd_nodeapi::api::status::Status;
use plexd_nodeapi::api::Api;
use plexd_nodeapi::http::{Server, ServerConfig, ServerHandle};
use plexd_nodeapi::pool::Pool;
use plexd_nodeapi::secrets::Secrets;
use plexd_nodeapi::store::Store;
use plexd_nodeapi::telemetry::health::LinkHealth;
use plexd_nodeapi::telemetry::stream::StreamMetrics;

struct Wire {
    server: Option<ServerHandle>,
    store: Arc<Store>,
    _dir: tempfile::TempDir,
}

impl Wire {
    fn new() -> Wire {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("state")).unwrap());
        let health = Arc::new(LinkHealth::new(false));
        let api = Api {
            store: Arc::clone(&store),
            access: Access::new(None, false, None),
            secrets: Arc::new(Secrets::new(
                None,
                None,
                Arc::clone(&health),
                Duration::from_secs(1),
            )),
            upstream: Arc::new(Pool::start("test-upstream", 1, 4).unwrap()),
            status: Status::new(
                Arc::clone(&store),
                health,
                Arc::new(StreamMetrics::new()),
                false,
            ),
        };
        let config = ServerConfig {
            workers: 1,
            ..ServerConfig::default()
        };
        let server = Server::start(config, Vec::new(), Arc::new(api)).unwrap();
        let waker = server.waker();
        store.subscribe(Box::new(move |_| waker.wake()));
        Wire {
            server: Some(server),
            store,
            _dir: dir,
        }
    }

    /// Writes `request` bytes, half-closes, and returns everything the server sends.
    fn exchange(&self, request: &[u8]) -> String {
        let (mut client, served) = UnixStream::pair().unwrap();
        self.server.as_ref().unwrap().adopt(served).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        client.write_all(request).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown(Duration::from_secs(2));
        }
        self.store.close();
    }
}

/// Splits one response off the front: (status line, header lines, body, rest).
fn split_response(raw: &str) -> (String, Vec<String>, String, String) {
    let (head, rest) = raw.split_once("\r\n\r\n").expect("a complete head");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().to_owned();
    let headers: Vec<String> = lines.map(str::to_owned).collect();
    let len: usize = headers
        .iter()
        .find_map(|h| h.strip_prefix("Content-Length: "))
        .map_or(0, |v| v.parse().unwrap());
    let (body, rest) = rest.split_at(len.min(rest.len()));
    (status, headers, body.to_owned(), rest.to_owned())
}

fn header<'a>(headers: &'a [String], name: &str) -> Option<&'a str> {
    headers.iter().find_map(|h| {
        let (n, v) = h.split_once(": ")?;
        n.eq_ignore_ascii_case(name).then_some(v)
    })
}

#[test]
fn a_read_answers_with_exact_framing_and_revision_headers() {
    let w = Wire::new();
    let raw = w.exchange(b"GET /v1/state/metadata HTTP/1.1\r\nHost: x\r\n\r\n");
    let (status, headers, body, rest) = split_response(&raw);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, "{}");
    assert_eq!(rest, "");
    assert_eq!(header(&headers, "Content-Type"), Some("application/json"));
    assert_eq!(header(&headers, "Content-Length"), Some("2"));
    let index = header(&headers, "X-Plexd-Index").unwrap();
    assert_eq!(
        header(&headers, "ETag"),
        Some(format!("\"{index}\"").as_str())
    );
    assert!(header(&headers, "Last-Modified").unwrap().ends_with(" GMT"));
    assert!(header(&headers, "Date").unwrap().ends_with(" GMT"));
    assert_eq!(
        header(&headers, "Connection"),
        None,
        "keep-alive is the default"
    );
}

#[test]
fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let w = Wire::new();
    let raw = w.exchange(
        b"GET /v1/state/data HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\nHEAD /v1/state HTTP/1.1\r\n\r\n",
    );
    let (s1, _, b1, rest) = split_response(&raw);
    assert_eq!((s1.as_str(), b1.as_str()), ("HTTP/1.1 200 OK", "[]"));
    let (s2, _, b2, rest) = split_response(&rest);
    assert_eq!(s2, "HTTP/1.1 404 Not Found");
    assert_eq!(b2, r#"{"error":"not found"}"#);
    // HEAD: the GET's length, no body.
    let (head, after) = rest.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Length: "));
    assert_eq!(after, "");
}

#[test]
fn a_chunked_report_write_and_its_read_back() {
    let w = Wire::new();
    let body = r#"{"content_type":"application/json","payload":{"ok":true}}"#;
    let (first, second) = body.split_at(20);
    let req = format!(
        "PUT /v1/state/report/app%20health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
        first.len(),
        second.len()
    );
    let (status, headers, answer, _) = split_response(&w.exchange(req.as_bytes()));
    assert_eq!(status, "HTTP/1.1 200 OK", "{answer}");
    let entry: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(entry["key"], "app health");
    assert_eq!(entry["version"], 1);
    assert_eq!(entry["payload"], serde_json::json!({"ok": true}));
    assert!(header(&headers, "ETag").is_some());
    let raw = w.exchange(b"GET /v1/state/report/app%20health HTTP/1.1\r\n\r\n");
    let (status, _, got, _) = split_response(&raw);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(got, answer, "the read serves the stored bytes");
}

#[test]
fn malformed_and_refused_requests_get_json_errors_and_close() {
    let w = Wire::new();
    for (request, want) in [
        (&b"GARBAGE\r\n\r\n"[..], "HTTP/1.1 400 Bad Request"),
        (
            b"GET /v1/state HTTP/3.0\r\n\r\n",
            "HTTP/1.1 505 HTTP Version Not Supported",
        ),
        (
            b"PUT /v1/state/report/k HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
            "HTTP/1.1 413 Content Too Large",
        ),
        (
            b"PUT /v1/state/report/k HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 501 Not Implemented",
        ),
    ] {
        let raw = w.exchange(request);
        let (status, headers, body, rest) = split_response(&raw);
        assert_eq!(status, want, "{raw}");
        assert_eq!(header(&headers, "Connection"), Some("close"));
        assert!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"].is_string());
        assert_eq!(rest, "");
    }
}

#[test]
fn method_and_key_rules_on_the_wire() {
    let w = Wire::new();
    let (status, headers, body, _) =
        split_response(&w.exchange(b"POST /v1/state/report/k HTTP/1.1\r\n\r\n"));
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert_eq!(header(&headers, "Allow"), Some("GET, HEAD, PUT, DELETE"));
    assert_eq!(body, r#"{"error":"method not allowed"}"#);
    // A literal dot segment is path syntax (404); an encoded one is an invalid key (400).
    let (status, ..) = split_response(&w.exchange(b"GET /v1/state/report/.. HTTP/1.1\r\n\r\n"));
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _, body, _) =
        split_response(&w.exchange(b"GET /v1/state/report/%2E%2E HTTP/1.1\r\n\r\n"));
    assert_eq!(status, "HTTP/1.1 400 Bad Request", "{body}");
    let (status, ..) = split_response(&w.exchange(b"GET /v1/state/report/%zz HTTP/1.1\r\n\r\n"));
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
}

#[test]
fn conditional_get_and_a_percent_encoded_wait() {
    let w = Wire::new();
    let (_, headers, _, _) = split_response(&w.exchange(b"GET /v1/state HTTP/1.1\r\n\r\n"));
    let etag = header(&headers, "ETag").unwrap().to_owned();
    let index = header(&headers, "X-Plexd-Index").unwrap().to_owned();
    let req = format!("GET /v1/state HTTP/1.1\r\nIf-None-Match: {etag}\r\n\r\n");
    let raw = w.exchange(req.as_bytes());
    let (status, headers, body, _) = split_response(&raw);
    assert_eq!(status, "HTTP/1.1 304 Not Modified");
    assert_eq!(header(&headers, "Content-Length"), None);
    assert_eq!(body, "");
    // `wait=5%30ms` is 50ms: the blocking query times out with the unchanged body.
    let req = format!("GET /v1/state?index={index}&wait=5%30ms HTTP/1.1\r\n\r\n");
    let t = std::time::Instant::now();
    let (status, headers, _, _) = split_response(&w.exchange(req.as_bytes()));
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(header(&headers, "X-Plexd-Index"), Some(index.as_str()));
    assert!(t.elapsed() >= Duration::from_millis(50));
    let (status, _, body, _) =
        split_response(&w.exchange(b"GET /v1/state?index=1&wait=5%zz HTTP/1.1\r\n\r\n"));
    assert_eq!(status, "HTTP/1.1 400 Bad Request", "{body}");
}

#[test]
fn secrets_without_a_control_plane_are_503_with_retry_after() {
    let w = Wire::new();
    let raw = w.exchange(b"GET /v1/state/secrets/db HTTP/1.1\r\n\r\n");
    let (status, headers, body, _) = split_response(&raw);
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable", "{body}");
    assert_eq!(header(&headers, "Retry-After"), Some("1"));
    assert!(body.contains("no control plane"), "{body}");
}

fn status_of(w: &Wire, request: &str) -> (String, String) {
    let (status, _, body, _) = split_response(&w.exchange(request.as_bytes()));
    (status, body)
}

/// The bounds contrib/openapi.json states for blocking queries, found by schemathesis:
/// any well-formed `wait` is taken (one too long for a `Duration` is just the 10 m cap,
/// it was 400), `index` is any unsigned 64-bit decimal and nothing else (`+5` was taken).
#[test]
fn blocking_query_parameters_are_exactly_the_documented_ones() {
    let w = Wire::new();
    let get = |query: &str| {
        status_of(
            &w,
            &format!("GET /v1/state/metadata?{query} HTTP/1.1\r\nHost: x\r\n\r\n"),
        )
    };
    for ok in [
        "wait=99999999999999999999h",
        "wait=%2B1.5h.5s",
        "wait=1%C2%B5s1%CE%BCs",
        "wait=0",
        "index=18446744073709551615&wait=1s",
        "index=0",
    ] {
        assert_eq!(get(ok).0, "HTTP/1.1 200 OK", "?{ok}");
    }
    for bad in [
        "wait=",
        "wait=%205s",
        "wait=5s%20",
        "wait=%2B0",
        "wait=5",
        "wait=-1s",
        "index=%2B5",
        "index=18446744073709551616",
        "index=-1",
        "index=",
    ] {
        let (status, body) = get(bad);
        assert_eq!(status, "HTTP/1.1 400 Bad Request", "?{bad}");
        assert!(
            body.starts_with("{\"error\":\"invalid wait") || body.contains("index must be"),
            "?{bad}: {body}"
        );
    }
}

/// What a report write takes, as the document states it: any key of 1–200 bytes that
/// the key rules allow, however it encodes as a file name (200 bytes of `ü` were
/// refused with 400 before: their encoded name was too long); `content_type` up to 256
/// characters, not bytes.
#[test]
fn report_writes_take_every_documented_key_and_content_type() {
    let w = Wire::new();
    let put = |key: &str, content_type: &str| {
        let body = format!("{{\"content_type\":\"{content_type}\",\"payload\":1}}");
        status_of(
            &w,
            &format!(
                "PUT /v1/state/report/{key} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    let wide = "%C3%BC".repeat(100); // 200 bytes
    let (status, body) = put(&wide, "text/plain");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(body.contains(&"ü".repeat(100)));
    let (status, _) = status_of(
        &w,
        &format!("GET /v1/state/report/{wide} HTTP/1.1\r\nHost: x\r\n\r\n"),
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        put(&format!("{wide}k"), "text/plain").0,
        "HTTP/1.1 400 Bad Request"
    );
    assert_eq!(put("ct", &"é".repeat(256)).0, "HTTP/1.1 200 OK");
    assert_eq!(put("ct", &"é".repeat(257)).0, "HTTP/1.1 400 Bad Request");
    // `null` is no payload (the document does not declare it nullable).
    let (status, body) = status_of(
        &w,
        "PUT /v1/state/report/nul HTTP/1.1\r\nHost: x\r\nContent-Length: 37\r\n\r\n{\"content_type\":\"a/b\",\"payload\":null}",
    );
    assert_eq!(status, "HTTP/1.1 400 Bad Request", "{body}");
}
