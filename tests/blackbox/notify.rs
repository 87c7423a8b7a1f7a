//! Change notification over real sockets: revision headers (`ETag`, `X-Plexd-Index`,
//! `Last-Modified`) on every read route and after every kind of write, conditional
//! GETs (304), revisions across restarts, and blocking queries (`?index=N&wait=D`):
//! woken by a PUT, a reconcile and an SSE event, timing out, not woken by other keys, bounded
//! (429), answered at shutdown, and cheap for everyone else while 1,000 wait.

use std::io::{ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;

fn index(r: &Resp) -> u64 {
    r.header("x-plexd-index")
        .unwrap_or_else(|| panic!("no X-Plexd-Index: {r:?}"))
        .parse()
        .expect("numeric X-Plexd-Index")
}

fn put_report(d: &TestDaemon, key: &str, payload: &str) -> Resp {
    let r = d.put(
        &format!("/v1/state/report/{key}"),
        &format!(r#"{{"content_type":"application/json","payload":{payload}}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r
}

/// Sends a GET and returns the connection without reading the answer.
fn send(socket: &Path, path: &str) -> UnixStream {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.write_all(&request_bytes("GET", path, &[], None))
        .expect("send");
    s
}

/// Reads the answer on `s`, waiting at most `limit`.
fn answer(s: &UnixStream, limit: Duration) -> Resp {
    s.set_read_timeout(Some(limit)).unwrap();
    read_response(&mut &*s, false).expect("an answer in time")
}

/// True if nothing arrives on `s` for `d`.
fn silent_for(s: &UnixStream, d: Duration) -> bool {
    s.set_read_timeout(Some(d)).unwrap();
    let mut b = [0u8; 1];
    matches!(std::io::Read::read(&mut &*s, &mut b), Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut))
}

fn assert_revision_headers(r: &Resp, path: &str) {
    let i = index(r);
    assert_eq!(
        r.header("etag"),
        Some(format!("\"{i}\"").as_str()),
        "{path}: strong ETag from the index"
    );
    let lm = r.header("last-modified").expect("Last-Modified");
    assert!(lm.ends_with(" GMT"), "{path}: Last-Modified {lm:?}");
}

#[test]
fn every_read_route_carries_revision_headers_and_secret_values_do_not() {
    let node = Node::new();
    let cp = node.control_plane(true);
    let d = node.daemon().control_plane(&cp).start();
    assert!(eventually(Duration::from_secs(5), || d
        .get("/v1/state/data/feature-flags")
        .status
        == 200));
    put_report(&d, "status", r#"{"ok":true}"#);
    let store_rev = index(&d.get("/v1/state"));
    for path in [
        "/v1/state",
        "/v1/state/metadata",
        "/v1/state/metadata/region",
        "/v1/state/data",
        "/v1/state/data/feature-flags",
        "/v1/state/secrets",
        "/v1/state/report",
        "/v1/state/report/status",
    ] {
        let r = d.get(path);
        assert_eq!(r.status, 200, "{path}");
        assert_revision_headers(&r, path);
        assert!(index(&r) <= store_rev, "{path}: index beyond the store's");
        let head = d.req("HEAD", path, &[], None);
        assert_eq!(head.header("etag"), r.header("etag"), "HEAD {path}");
    }
    // The summary shows everything, so its index is the store's.
    assert_eq!(index(&d.get("/v1/state")), store_rev);

    let secret = d.get("/v1/state/secrets/db-password");
    assert_eq!(secret.status, 200, "{}", secret.text());
    assert!(secret.header("etag").is_none() && secret.header("x-plexd-index").is_none());
    assert_eq!(secret.header("cache-control"), Some("no-store"));
    let r = d.get("/v1/state/secrets/db-password?index=1&wait=1s");
    assert_eq!(r.status, 400, "{}", r.text());
}

#[test]
fn writes_move_exactly_the_revisions_they_touch() {
    let node = Node::new();
    let cp = node.control_plane(true);
    let d = node
        .daemon()
        .control_plane(&cp)
        .args(["--reconcile-interval", "1s"])
        .start();
    assert!(eventually(Duration::from_secs(5), || d
        .get("/v1/state/metadata/region")
        .status
        == 200));
    let meta = index(&d.get("/v1/state/metadata"));
    let role = index(&d.get("/v1/state/metadata/role"));
    let data = index(&d.get("/v1/state/data"));

    // Report PUT: the answer carries the new revision, the entry and list show it.
    let put = put_report(&d, "a", "1");
    let rev = index(&put);
    assert_eq!(put.header("etag"), Some(format!("\"{rev}\"").as_str()));
    assert_eq!(index(&d.get("/v1/state/report/a")), rev);
    assert_eq!(index(&d.get("/v1/state/report")), rev);
    assert_eq!(index(&d.get("/v1/state")), rev);
    assert_eq!(
        index(&d.get("/v1/state/metadata")),
        meta,
        "metadata untouched"
    );

    // Another key: the list moves, `a` does not.
    let b = index(&put_report(&d, "b", "2"));
    assert!(b > rev);
    assert_eq!(index(&d.get("/v1/state/report/a")), rev);
    assert_eq!(index(&d.get("/v1/state/report")), b);

    // DELETE: 204 with the new revision; the list moves to it.
    let del = d.delete("/v1/state/report/b");
    assert_eq!(del.status, 204);
    let gone = index(&del);
    assert!(gone > b);
    assert_eq!(del.header("etag"), Some(format!("\"{gone}\"").as_str()));
    assert_eq!(index(&d.get("/v1/state/report")), gone);
    let missing = d.get("/v1/state/report/b");
    assert_eq!(missing.status, 404);
    assert_eq!(
        index(&missing),
        gone,
        "a missing key shows its list's index"
    );

    // Control-plane change, picked up by reconciliation: metadata moves, role and data don't.
    cp.set_metadata("region", "us-west-2");
    assert!(eventually(Duration::from_secs(5), || {
        d.get("/v1/state/metadata/region").json()["value"] == "us-west-2"
    }));
    let region = d.get("/v1/state/metadata/region");
    assert!(index(&region) > gone);
    assert_eq!(index(&d.get("/v1/state/metadata")), index(&region));
    assert_eq!(index(&d.get("/v1/state/metadata/role")), role);
    assert_eq!(index(&d.get("/v1/state/data")), data);
    assert_revision_headers(&region, "region");
}

#[test]
fn conditional_gets_answer_304_without_a_body() {
    let node = Node::new();
    let d = node.daemon().start();
    put_report(&d, "c", r#"{"v":1}"#);
    let path = "/v1/state/report/c";
    let r = d.get(path);
    let tag = r.header("etag").unwrap().to_owned();
    let lm = r.header("last-modified").unwrap().to_owned();

    let cond = |name: &str, value: &str| d.req("GET", path, &[(name, value)], None);
    let hit = cond("If-None-Match", &tag);
    assert_eq!(hit.status, 304);
    assert!(hit.body.is_empty());
    assert!(hit.header("content-length").is_none());
    assert_eq!(hit.header("etag"), Some(tag.as_str()));
    assert_eq!(index(&hit), index(&r));
    assert_eq!(cond("If-None-Match", "\"1\"").status, 200);
    assert_eq!(cond("If-None-Match", &format!("\"1\", {tag}")).status, 304);
    assert_eq!(cond("If-None-Match", &format!("W/{tag}")).status, 304);
    assert_eq!(cond("If-None-Match", "*").status, 304);
    assert_eq!(cond("If-Modified-Since", &lm).status, 304);
    assert_eq!(
        cond("If-Modified-Since", "Mon, 01 Jan 2001 00:00:00 GMT").status,
        200
    );
    // If-None-Match wins over If-Modified-Since.
    let both = d.req(
        "GET",
        path,
        &[("If-None-Match", "\"1\""), ("If-Modified-Since", &lm)],
        None,
    );
    assert_eq!(both.status, 200);
    let head = d.req("HEAD", path, &[("If-None-Match", &tag)], None);
    assert_eq!(head.status, 304);

    // After a write the old tag no longer matches.
    put_report(&d, "c", r#"{"v":2}"#);
    let after = cond("If-None-Match", &tag);
    assert_eq!(after.status, 200);
    assert_eq!(after.json()["version"], 2);
}

#[test]
fn revisions_never_go_backwards_across_a_restart() {
    let node = Node::new();
    let d = node.daemon().start();
    for i in 0..5 {
        put_report(&d, "r", &i.to_string());
    }
    let before_store = index(&d.get("/v1/state"));
    let before_key = index(&d.get("/v1/state/report/r"));
    assert!(d.stop().success());

    let d = node.daemon().start();
    let after_store = index(&d.get("/v1/state"));
    let after_key = index(&d.get("/v1/state/report/r"));
    assert!(
        after_store > before_store,
        "{after_store} <= {before_store}"
    );
    assert!(after_key > before_key, "{after_key} <= {before_key}");
    // A waiter holding the old index is answered at once (its resource "changed").
    let t = Instant::now();
    let r = d.get(&format!("/v1/state/report/r?index={before_key}&wait=10s"));
    assert_eq!(r.status, 200);
    assert!(t.elapsed() < Duration::from_secs(1));
    let next = index(&put_report(&d, "r", "99"));
    assert!(next > after_store);

    // Also after SIGKILL (no orderly shutdown).
    d.kill();
    let d = node.daemon().start();
    assert!(index(&d.get("/v1/state")) > next);
}

#[test]
fn blocking_query_is_woken_by_a_put_to_its_key_only() {
    let node = Node::new();
    let d = node.daemon().start();
    let i = index(&put_report(&d, "watched", "1"));
    let s = send(
        &d.socket,
        &format!("/v1/state/report/watched?index={i}&wait=30s"),
    );
    assert!(silent_for(&s, Duration::from_millis(300)), "answered early");
    // Changes to other keys (and the list) do not answer it.
    for n in 0..5 {
        put_report(&d, "other", &n.to_string());
    }
    assert!(
        silent_for(&s, Duration::from_millis(300)),
        "woken by another key"
    );
    let t = Instant::now();
    let put = put_report(&d, "watched", "2");
    let r = answer(&s, Duration::from_secs(5));
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(r.status, 200);
    assert_eq!(index(&r), index(&put));
    assert_eq!(r.json()["version"], 2);
    assert_revision_headers(&r, "woken");
}

#[test]
fn blocking_query_is_woken_by_a_reconcile_correction() {
    let node = Node::new();
    let cp = node.control_plane(true);
    let d = node
        .daemon()
        .control_plane(&cp)
        .args(["--reconcile-interval", "1s"])
        .start();
    assert!(eventually(Duration::from_secs(5), || d
        .get("/v1/state/data/feature-flags")
        .status
        == 200));
    let i = index(&d.get("/v1/state/data/feature-flags"));
    let s = send(
        &d.socket,
        &format!("/v1/state/data/feature-flags?index={i}&wait=30s"),
    );
    assert!(silent_for(&s, Duration::from_millis(200)));
    cp.set_data(
        "feature-flags",
        "application/json",
        r#"{"new_dashboard":false}"#,
    )
    .unwrap();
    let r = answer(&s, Duration::from_secs(6));
    assert_eq!(r.status, 200);
    assert!(index(&r) > i);
    assert_eq!(r.json()["payload"]["new_dashboard"], false);
}

#[test]
fn blocking_query_times_out_with_the_unchanged_body() {
    let node = Node::new();
    let d = node.daemon().start();
    let first = put_report(&d, "t", r#"{"same":true}"#);
    let i = index(&first);
    let t = Instant::now();
    let r = d.get(&format!("/v1/state/report/t?index={i}&wait=500ms"));
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(r.status, 200);
    assert_eq!(index(&r), i);
    assert_eq!(r.body, first.body);
}

#[test]
fn blocking_query_special_cases() {
    let node = Node::new();
    let d = node.daemon().start();
    let store = index(&put_report(&d, "k", "1"));

    // An index ahead of the store (another store, an older daemon) answers at once.
    let t = Instant::now();
    let r = d.get(&format!(
        "/v1/state/report/k?index={}&wait=10s",
        store + 1000
    ));
    assert_eq!(r.status, 200);
    assert!(t.elapsed() < Duration::from_secs(3), "waited for the 10 s");
    // index 0, and an index below the resource's, answer at once.
    assert_eq!(d.get("/v1/state/metadata?index=0&wait=10s").status, 200);

    for bad in [
        "index=abc",
        "index=-1",
        "index=1&wait=soon",
        "index=1&wait=-1s",
        "wait=5",
    ] {
        let r = d.get(&format!("/v1/state/report?{bad}"));
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert!(r.json()["error"].is_string());
    }

    // A missing key is waited for through its list; it answers when the key appears.
    let missing = d.get("/v1/state/report/later");
    assert_eq!(missing.status, 404);
    let s = send(
        &d.socket,
        &format!("/v1/state/report/later?index={}&wait=30s", index(&missing)),
    );
    assert!(silent_for(&s, Duration::from_millis(200)));
    // Other keys appearing in the list are not this key's news.
    put_report(&d, "unrelated", "1");
    assert!(
        silent_for(&s, Duration::from_millis(300)),
        "woken by another key"
    );
    put_report(&d, "later", r#""here""#);
    let r = answer(&s, Duration::from_secs(5));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["payload"], "here");
}

#[test]
fn query_values_are_percent_decoded() {
    let node = Node::new();
    let d = node.daemon().start();
    let now = index(&put_report(&d, "k", "1"));
    // `5%73` is `5s`, and `%69ndex` is `index`.
    assert_eq!(d.get("/v1/state/report?wait=5%73").status, 200);
    let s = send(
        &d.socket,
        &format!("/v1/state/report/k?%69ndex={now}&wait=3%30%73"),
    );
    assert!(silent_for(&s, Duration::from_millis(200)), "not parked");
    put_report(&d, "k", "2");
    let r = answer(&s, Duration::from_secs(5));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["payload"], 2);
    // A broken escape stays as sent, and is no duration.
    let r = d.get("/v1/state/report?index=1&wait=5%7");
    assert_eq!(r.status, 400, "{}", r.text());
}

fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(16384), hard);
}

#[test]
fn a_thousand_parked_waiters_hold_no_threads_and_do_not_slow_reads() {
    raise_nofile();
    let node = Node::new();
    let d = node.daemon().args(["--log-level", "warn"]).start();
    let i = index(&put_report(&d, "hot", "0"));
    std::thread::sleep(Duration::from_millis(200));
    let threads = threads_of(d.pid());
    let path = format!("/v1/state/report/hot?index={i}&wait=60s");
    let waiters: Vec<UnixStream> = (0..1000).map(|_| send(&d.socket, &path)).collect();
    assert!(
        eventually(Duration::from_secs(5), || metric(
            &d,
            "plexd_nodeapi_parked_requests"
        ) == 1000.0),
        "not all parked"
    );
    assert_eq!(threads_of(d.pid()), threads, "parked requests took threads");

    // Reads are still answered (how fast: the bench's `get_while_1000_parked`).
    let t = Instant::now();
    for _ in 0..200 {
        assert_eq!(d.get("/v1/state/report/hot").status, 200);
    }
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "200 reads took {:?} with 1,000 parked",
        t.elapsed()
    );

    // One PUT answers all of them.
    let t = Instant::now();
    let put = put_report(&d, "hot", "1");
    for s in &waiters {
        let r = answer(s, Duration::from_secs(5));
        assert_eq!(r.status, 200);
        assert_eq!(index(&r), index(&put));
    }
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "woke 1,000 in {:?}",
        t.elapsed()
    );
    assert_eq!(metric(&d, "plexd_nodeapi_parked_requests"), 0.0);
}

#[test]
fn beyond_the_parked_bound_requests_get_429_with_retry_after() {
    raise_nofile();
    let node = Node::new();
    let d = node.daemon().args(["--log-level", "warn"]).start();
    let i = index(&put_report(&d, "p", "0"));
    let path = format!("/v1/state/report/p?index={i}&wait=60s");
    let waiters: Vec<UnixStream> = (0..4100).map(|_| send(&d.socket, &path)).collect();
    assert!(
        eventually(Duration::from_secs(10), || {
            metric(&d, "plexd_nodeapi_parked_rejected_total") == 4.0
        }),
        "expected 4 refusals"
    );
    assert_eq!(metric(&d, "plexd_nodeapi_parked_requests"), 4096.0);
    let mut refused = 0;
    for s in &waiters {
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        if std::io::Read::read(&mut &*s, &mut b).is_ok() {
            s.set_nonblocking(false).unwrap();
            // Put the byte back in front of the rest of the answer.
            let mut rest = ResponseReader::new(std::io::Read::chain(&b[..], s));
            let r = rest.next(false).unwrap();
            assert_eq!(r.status, 429);
            assert_eq!(r.header("retry-after"), Some("1"));
            refused += 1;
        }
    }
    assert_eq!(refused, 4);
    // Normal requests still work, and a change frees the slots.
    assert_eq!(d.get("/v1/state").status, 200);
    put_report(&d, "p", "1");
    assert!(eventually(Duration::from_secs(10), || metric(
        &d,
        "plexd_nodeapi_parked_requests"
    ) == 0.0));
}

#[test]
fn shutdown_answers_or_closes_every_parked_request_in_time() {
    let node = Node::new();
    let d = node.daemon().args(["--shutdown-timeout", "2s"]).start();
    let i = index(&put_report(&d, "s", "0"));
    let path = format!("/v1/state/report/s?index={i}&wait=5m");
    let waiters: Vec<UnixStream> = (0..50).map(|_| send(&d.socket, &path)).collect();
    assert!(eventually(Duration::from_secs(5), || metric(
        &d,
        "plexd_nodeapi_parked_requests"
    ) == 50.0));
    let t = Instant::now();
    let status = d.stop();
    assert!(status.success(), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    for s in &waiters {
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        match read_response(&mut &*s, false) {
            Ok(r) => assert_eq!(r.status, 200, "{}", r.text()),
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
                ),
                "neither answered nor closed: {e}"
            ),
        }
    }
}

#[test]
fn blocking_query_is_woken_by_a_control_plane_event() {
    let node = Node::new();
    let cp = node.control_plane(true);
    // With a one-hour reconcile interval only the event stream can deliver in time.
    let d = node
        .daemon()
        .control_plane(&cp)
        .args(["--reconcile-interval", "1h"])
        .start();
    assert!(
        eventually(Duration::from_secs(10), || {
            cp.open_streams() > 0
                && metric(&d, "plexd_nodeapi_event_stream_connected") == 1.0
                && metric(&d, "plexd_nodeapi_reconciliations_total") >= 1.0
        }),
        "stream not up; log:\n{}",
        d.log_text()
    );
    let i = index(&d.get("/v1/state/metadata/region"));
    let s = send(
        &d.socket,
        &format!("/v1/state/metadata/region?index={i}&wait=30s"),
    );
    assert!(silent_for(&s, Duration::from_millis(200)));
    let t = Instant::now();
    cp.set_metadata("region", "ap-south-1");
    let r = answer(&s, Duration::from_secs(2));
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(r.status, 200);
    assert!(index(&r) > i);
    assert_eq!(r.json()["value"], "ap-south-1");
}

fn metric(d: &TestDaemon, name: &str) -> f64 {
    d.metric(name).unwrap_or_else(|| panic!("no sample {name}"))
}
