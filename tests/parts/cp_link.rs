//! The control-plane client, report syncer and state link against the development
//! control plane over real TCP sockets (and, for the response cap, a raw socket server).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plexd_nodeapi::cp::backoff::Backoff;
use plexd_nodeapi::cp::client::{CpClient, CpConfig, CpError};
use plexd_nodeapi::cp::link::{Link, LinkOptions};
use plexd_nodeapi::cp::syncer::{Syncer, SyncerHandle, SyncerOptions};
use plexd_nodeapi::devcp::{DevConfig, DevControlPlane, FailRoute};
use plexd_nodeapi::model::{ReportEntry, ReportSyncRequest, SigningKeys};
use plexd_nodeapi::secrets::cipher::decrypt_secret;
use plexd_nodeapi::secrets::nsk::Nsk;
use plexd_nodeapi::store::keys::ReportKey;
use plexd_nodeapi::store::Store;
use plexd_nodeapi::telemetry::health::LinkHealth;
use serde_json::value::RawValue;
use zeroize::Zeroizing;

const NODE: &str = "node-1";
const TOKEN: &str = "test-token-0123";

fn nsk() -> Nsk {
    Nsk::from_bytes(*b"0123456789abcdefghijklmnopqrstuv")
}

fn start_devcp(listen: &str, demo: bool) -> DevControlPlane {
    DevControlPlane::start(DevConfig {
        listen: listen.parse().unwrap(),
        node_id: NODE.to_owned(),
        nsk: nsk(),
        token: TOKEN.to_owned(),
        demo,
        signing_seed: None,
    })
    .unwrap()
}

fn client_for(url: &str, token: &str) -> CpClient {
    CpClient::new(CpConfig::new(url, NODE, Zeroizing::new(token.to_owned()))).unwrap()
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A loopback address nothing listens on (bound, then closed).
fn closed_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn entry(key: &str, version: i64, size: usize) -> ReportEntry {
    let payload = format!("{{\"filler\":\"{}\"}}", "x".repeat(size));
    ReportEntry {
        key: key.to_owned(),
        content_type: "application/json".to_owned(),
        payload: RawValue::from_string(payload).unwrap().into(),
        version,
        updated_at: "2026-03-01T12:00:00Z".to_owned(),
    }
}

// ---- client ----------------------------------------------------------------------

#[test]
fn client_fetches_state_and_secrets() {
    let cp = start_devcp("127.0.0.1:0", true);
    cp.set_signing_keys(Some(SigningKeys {
        current: "Y3VycmVudA==".into(),
        previous: String::new(),
        transition_expires: String::new(),
    }));
    let client = client_for(&cp.url(), TOKEN);

    let state = client.fetch_state().unwrap();
    let metadata = state.metadata.unwrap();
    assert_eq!(
        metadata.get("region").map(String::as_str),
        Some("eu-central-1")
    );
    let data = state.data.unwrap();
    assert!(data
        .iter()
        .any(|d| d.key == "database-config" && d.version == 1));
    let refs = state.secret_refs.unwrap();
    assert_eq!(refs.len(), 2);
    assert_eq!(state.signing_keys.unwrap().current, "Y3VycmVudA==");

    let secret = client
        .fetch_secret("db-password", std::time::Duration::from_secs(5))
        .unwrap();
    assert_eq!(secret.key, "db-password");
    assert_eq!(secret.version, 1);
    let plain = decrypt_secret(&nsk(), &secret.ciphertext, &secret.nonce).unwrap();
    assert_eq!(plain.as_str(), "dev-only-password");
    // A fresh nonce on every read.
    let again = client
        .fetch_secret("db-password", std::time::Duration::from_secs(5))
        .unwrap();
    assert_ne!(again.nonce, secret.nonce);

    // Keys are percent-encoded into one path segment.
    assert_eq!(cp.set_secret("tls/server key", "pem"), 1);
    let s = client
        .fetch_secret("tls/server key", std::time::Duration::from_secs(5))
        .unwrap();
    assert_eq!(
        decrypt_secret(&nsk(), &s.ciphertext, &s.nonce)
            .unwrap()
            .as_str(),
        "pem"
    );
    // The wrong NSK fails generically.
    let wrong = Nsk::from_bytes([1; 32]);
    assert!(decrypt_secret(&wrong, &s.ciphertext, &s.nonce).is_err());

    assert_eq!(
        client
            .fetch_secret("nope", std::time::Duration::from_secs(5))
            .unwrap_err(),
        CpError::Status {
            status: 404,
            retry_after: None
        }
    );
    assert!(cp.request_count("/v1/nodes/node-1/secrets/") >= 4);
    cp.stop();
}

#[test]
fn client_reports_status_errors() {
    let cp = start_devcp("127.0.0.1:0", false);
    let bad = client_for(&cp.url(), "wrong-token");
    let err = bad.fetch_state().unwrap_err();
    assert_eq!(
        err,
        CpError::Status {
            status: 401,
            retry_after: None
        }
    );
    assert!(!err.to_string().contains("wrong-token"));

    let other_node = CpClient::new(CpConfig::new(
        &cp.url(),
        "node-2",
        Zeroizing::new(TOKEN.to_owned()),
    ))
    .unwrap();
    assert_eq!(other_node.fetch_state().unwrap_err().status(), Some(404));

    let client = client_for(&cp.url(), TOKEN);
    cp.fail_next(1, 503, None, FailRoute::State);
    assert_eq!(
        client.fetch_state().unwrap_err(),
        CpError::Status {
            status: 503,
            retry_after: None
        }
    );
    assert!(client.fetch_state().is_ok());

    cp.fail_next(1, 429, Some(7), FailRoute::Report);
    let err = client
        .sync_reports(&ReportSyncRequest::default())
        .unwrap_err();
    assert_eq!(err.status(), Some(429));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    cp.stop();
}

#[test]
fn client_gzips_large_report_bodies() {
    let cp = start_devcp("127.0.0.1:0", false);
    let client = client_for(&cp.url(), TOKEN);
    let small = ReportSyncRequest {
        entries: vec![entry("small", 1, 10)],
        deleted: vec![],
    };
    client.sync_reports(&small).unwrap();
    assert_eq!(cp.gzipped_report_posts(), 0);
    let large = ReportSyncRequest {
        entries: vec![entry("large", 3, 5000), entry("other", 1, 10)],
        deleted: vec!["small".into()],
    };
    client.sync_reports(&large).unwrap();
    assert_eq!(cp.gzipped_report_posts(), 1);
    let reports = cp.reports();
    assert_eq!(reports.len(), 2);
    assert_eq!(reports["large"], entry("large", 3, 5000));
    assert_eq!(cp.report_posts().len(), 2);
    cp.stop();
}

/// Serves one canned response per connection on a raw socket.
fn raw_server(response_head: &'static str, body_len: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(response_head.as_bytes());
                let chunk = vec![b' '; 64 * 1024];
                let mut left = body_len;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if conn.write_all(&chunk[..n]).is_err() {
                        return;
                    }
                    left -= n;
                }
            });
        }
    });
    addr
}

#[test]
fn client_caps_responses_at_10_mib() {
    const ELEVEN_MIB: usize = 11 * 1024 * 1024;
    // Announced length: refused before reading.
    let addr = raw_server(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11534336\r\n\r\n",
        ELEVEN_MIB,
    );
    let client = client_for(&format!("http://{addr}"), TOKEN);
    assert_eq!(client.fetch_state().unwrap_err(), CpError::TooLarge);
    // No length, body until close: cut off after 10 MiB.
    let addr = raw_server(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
        ELEVEN_MIB,
    );
    let client = client_for(&format!("http://{addr}"), TOKEN);
    assert_eq!(client.fetch_state().unwrap_err(), CpError::TooLarge);
}

#[test]
fn client_accepts_gzip_responses() {
    let body = br#"{"metadata":{"zipped":"yes"},"unknown_field":[1,2,3]}"#;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(body).unwrap();
    let gz = enc.finish().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).unwrap();
            assert!(n > 0);
            head.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
        write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            gz.len()
        )
        .unwrap();
        conn.write_all(&gz).unwrap();
        head
    });
    let client = client_for(&format!("http://{addr}"), TOKEN);
    let state = client.fetch_state().unwrap();
    assert_eq!(state.metadata.unwrap()["zipped"], "yes");
    let head = server.join().unwrap();
    assert!(
        head.starts_with("get /v1/nodes/node-1/state http/1.1\r\n"),
        "{head}"
    );
    assert!(head.contains("accept-encoding: gzip"));
    assert!(head.contains(&format!(
        "authorization: bearer {}",
        TOKEN.to_ascii_lowercase()
    )));
    assert!(head.contains("accept: application/json"));
    assert!(head.contains(&format!(
        "user-agent: plexd-nodeapi/{}",
        env!("CARGO_PKG_VERSION")
    )));
}

#[test]
fn client_unreachable_is_a_quick_transport_error() {
    let addr = closed_addr();
    let client = client_for(&format!("http://{addr}"), TOKEN);
    let started = Instant::now();
    let err = client.fetch_state().unwrap_err();
    assert!(err.is_transport(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(!err.to_string().contains(TOKEN));
}

// ---- syncer ----------------------------------------------------------------------

struct Node {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    health: Arc<LinkHealth>,
}

fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("state")).unwrap());
    Node {
        _dir: dir,
        store,
        health: Arc::new(LinkHealth::new(true)),
    }
}

fn put(store: &Store, key: &str, payload: &str) {
    let key = ReportKey::parse(key).unwrap();
    store
        .put_report(
            &key,
            "application/json".into(),
            RawValue::from_string(payload.to_owned()).unwrap(),
            None,
        )
        .unwrap();
}

fn delete(store: &Store, key: &str) {
    store
        .delete_report(&ReportKey::parse(key).unwrap())
        .unwrap();
}

fn syncer(n: &Node, url: &str, debounce: Duration) -> SyncerHandle {
    let mut options = SyncerOptions::new(debounce);
    options.backoff = Backoff::with_base(Duration::from_millis(20));
    let client = Arc::new(client_for(url, TOKEN));
    let handle = Syncer::spawn_with(
        Arc::clone(&n.store),
        Some(client),
        options,
        Arc::clone(&n.health),
    );
    let notify = handle.notifier();
    n.store.subscribe(Box::new(move |_| notify()));
    handle
}

#[test]
fn syncer_debounces_many_changes_into_one_post() {
    let cp = start_devcp("127.0.0.1:0", false);
    let n = node();
    put(&n.store, "gone", "{}");
    let s = syncer(&n, &cp.url(), Duration::from_millis(1000));
    // Pending at start: the syncer picks it up on its own.
    wait_for("initial sync", Duration::from_secs(5), || {
        n.store.pending_count() == 0
    });
    assert_eq!(cp.report_posts().len(), 1);

    for i in 0..20 {
        put(&n.store, &format!("k{}", i % 5), &format!("{{\"i\":{i}}}"));
    }
    delete(&n.store, "gone");
    wait_for("debounced sync", Duration::from_secs(5), || {
        n.store.pending_count() == 0
    });
    let posts = cp.report_posts();
    assert_eq!(posts.len(), 2, "{posts:?}");
    let last = &posts[1];
    assert_eq!(last.entries.len(), 5);
    assert_eq!(last.deleted, vec!["gone".to_owned()]);
    let reports = cp.reports();
    assert_eq!(reports.len(), 5);
    assert_eq!(reports["k4"].payload.get(), "{\"i\":19}");
    assert_eq!(reports["k4"].version, 4);
    assert!(n.health.snapshot().last_sync.is_some());
    s.shutdown(Duration::from_secs(1));
    cp.stop();
}

#[test]
fn syncer_keeps_retrying_until_the_control_plane_returns() {
    let cp = start_devcp("127.0.0.1:0", false);
    let addr = cp.addr();
    let n = node();
    let s = syncer(&n, &cp.url(), Duration::from_millis(20));
    let state = cp.stop_keep_state();

    put(&n.store, "a", "{\"v\":1}");
    put(&n.store, "b", "{\"v\":2}");
    wait_for("failed attempts", Duration::from_secs(5), || {
        n.health.snapshot().sync_failures >= 3
    });
    let h = n.health.snapshot();
    assert!(!h.connected && h.degraded());
    assert_eq!(n.store.pending_count(), 2);

    // 5xx also keeps everything pending.
    let cp = DevControlPlane::serve(state, addr).unwrap();
    cp.fail_next(2, 503, None, FailRoute::Report);
    wait_for("delivery", Duration::from_secs(10), || {
        n.store.pending_count() == 0
    });
    assert_eq!(cp.reports().len(), 2);
    assert!(!n.health.snapshot().degraded());
    s.shutdown(Duration::from_secs(1));
    cp.stop();
}

#[test]
fn syncer_honours_retry_after() {
    let cp = start_devcp("127.0.0.1:0", false);
    let n = node();
    cp.fail_next(1, 429, Some(1), FailRoute::Report);
    let s = syncer(&n, &cp.url(), Duration::from_millis(10));
    let started = Instant::now();
    put(&n.store, "a", "{}");
    wait_for("delivery", Duration::from_secs(5), || {
        n.store.pending_count() == 0
    });
    assert!(started.elapsed() >= Duration::from_millis(950));
    assert_eq!(cp.request_count("/v1/nodes/node-1/report"), 2);
    s.shutdown(Duration::from_secs(1));
    cp.stop();
}

#[test]
fn syncer_isolates_and_drops_a_rejected_entry() {
    let cp = start_devcp("127.0.0.1:0", false);
    cp.reject_report_keys(&["bad"]);
    let n = node();
    for i in 0..9 {
        put(&n.store, &format!("good-{i}"), "{}");
    }
    put(&n.store, "bad", "{}");
    let s = syncer(&n, &cp.url(), Duration::from_millis(20));
    wait_for("delivery", Duration::from_secs(5), || {
        n.store.pending_count() == 0
    });
    let reports = cp.reports();
    assert_eq!(reports.len(), 9);
    assert!(!reports.contains_key("bad"));
    assert_eq!(n.health.snapshot().reports_dropped, 1);
    // Later changes flow normally.
    cp.reject_report_keys(&[]);
    for i in 0..3 {
        put(&n.store, &format!("late-{i}"), "{}");
    }
    wait_for("late delivery", Duration::from_secs(5), || {
        n.store.pending_count() == 0
    });
    assert_eq!(cp.reports().len(), 12);
    assert_eq!(n.health.snapshot().reports_dropped, 1);
    s.shutdown(Duration::from_secs(1));
    cp.stop();
}

#[test]
fn syncer_flushes_on_shutdown() {
    let cp = start_devcp("127.0.0.1:0", false);
    let n = node();
    let s = syncer(&n, &cp.url(), Duration::from_secs(30));
    put(&n.store, "a", "{}");
    put(&n.store, "b", "{}");
    std::thread::sleep(Duration::from_millis(50));
    assert!(cp.report_posts().is_empty());
    let started = Instant::now();
    s.shutdown(Duration::from_secs(2));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(n.store.pending_count(), 0);
    assert_eq!(cp.reports().len(), 2);
    cp.stop();
}

#[test]
fn syncer_shutdown_is_bounded_when_the_control_plane_hangs() {
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming() {
            held.push(c);
        }
    });
    let n = node();
    let s = syncer(&n, &format!("http://{addr}"), Duration::from_secs(30));
    put(&n.store, "a", "{}");
    let started = Instant::now();
    s.shutdown(Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(n.store.pending_count(), 1);
}

#[test]
fn syncer_without_a_control_plane_keeps_everything_pending() {
    let n = node();
    let s = Syncer::spawn(
        Arc::clone(&n.store),
        None,
        Duration::from_millis(10),
        Arc::clone(&n.health),
    );
    put(&n.store, "a", "{}");
    s.notify();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(n.store.pending_count(), 1);
    s.shutdown(Duration::from_secs(1));
    assert_eq!(n.store.pending_count(), 1);
}

// ---- link ------------------------------------------------------------------------

fn fast_link_options() -> LinkOptions {
    LinkOptions {
        backoff: Backoff::with_base(Duration::from_millis(20)),
        reconcile_interval: None,
        ..LinkOptions::default()
    }
}

fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

#[test]
fn link_applies_the_initial_state() {
    let cp = start_devcp("127.0.0.1:0", true);
    let keys = SigningKeys {
        current: "a2V5".into(),
        previous: String::new(),
        transition_expires: String::new(),
    };
    cp.set_signing_keys(Some(keys.clone()));
    let n = node();
    let link = Link::start(
        Arc::clone(&n.store),
        Arc::new(client_for(&cp.url(), TOKEN)),
        Arc::clone(&n.health),
        fast_link_options(),
    );
    wait_for("reconcile", Duration::from_secs(5), || {
        n.health.snapshot().last_reconcile.is_some()
    });
    assert!(text(&n.store.metadata().value).contains("eu-central-1"));
    assert!(n.store.data_entry("feature-flags").is_some());
    assert!(text(&n.store.secret_list().value).contains("db-password"));
    assert_eq!(link.signing_keys(), Some(keys));
    assert!(n.health.snapshot().connected);

    // On demand: a change on the control plane arrives after reconcile_now.
    cp.set_metadata("region", "us-west-2");
    link.reconcile_now();
    wait_for("second reconcile", Duration::from_secs(5), || {
        text(&n.store.metadata().value).contains("us-west-2")
    });
    link.shutdown(Duration::from_secs(1));
    cp.stop();
}

#[test]
fn link_retries_until_the_control_plane_is_up() {
    let addr = closed_addr();
    let n = node();
    let link = Link::start(
        Arc::clone(&n.store),
        Arc::new(client_for(&format!("http://{addr}"), TOKEN)),
        Arc::clone(&n.health),
        fast_link_options(),
    );
    wait_for("failures", Duration::from_secs(5), || {
        n.health.snapshot().reconcile_failures >= 3
    });
    let h = n.health.snapshot();
    assert!(!h.connected && h.last_reconcile.is_none());
    assert!(h.last_error.unwrap().contains("state fetch failed"));

    let cp = start_devcp(&addr.to_string(), true);
    wait_for("reconcile", Duration::from_secs(10), || {
        n.health.snapshot().last_reconcile.is_some()
    });
    assert!(text(&n.store.metadata().value).contains("eu-central-1"));
    link.shutdown(Duration::from_secs(1));
    cp.stop();
}

#[test]
fn link_reconciles_periodically() {
    let cp = start_devcp("127.0.0.1:0", false);
    let n = node();
    let link = Link::start(
        Arc::clone(&n.store),
        Arc::new(client_for(&cp.url(), TOKEN)),
        Arc::clone(&n.health),
        LinkOptions {
            backoff: Backoff::with_base(Duration::from_millis(20)),
            reconcile_interval: Some(Duration::from_millis(50)),
            ..LinkOptions::default()
        },
    );
    cp.set_data("d", "application/json", "{\"x\":1}").unwrap();
    wait_for("periodic reconcile", Duration::from_secs(5), || {
        n.store.data_entry("d").is_some()
    });
    link.shutdown(Duration::from_secs(1));
    cp.stop();
}

#[test]
fn link_shutdown_does_not_wait_for_a_hung_request() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming() {
            held.push(c);
        }
    });
    let n = node();
    let link = Link::start(
        Arc::clone(&n.store),
        Arc::new(client_for(&format!("http://{addr}"), TOKEN)),
        Arc::clone(&n.health),
        fast_link_options(),
    );
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    link.shutdown(Duration::from_millis(200));
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// Serves the same 200 JSON body on every connection.
fn json_server(body: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[test]
fn link_treats_null_and_absent_collections_as_empty_and_installs_keys() {
    use plexd_nodeapi::events::{Signer, Verifier};
    use plexd_nodeapi::model::{DataEntry, SecretRef};
    use plexd_nodeapi::store::CpUpdate;
    use plexd_nodeapi::telemetry::stream::StreamMetrics;

    let n = node();
    n.store
        .apply_control_plane(CpUpdate {
            metadata: Some([("region".to_owned(), "x".to_owned())].into()),
            data: Some(vec![DataEntry {
                key: "d".into(),
                content_type: "application/json".into(),
                payload: RawValue::from_string("{}".into()).unwrap(),
                version: 1,
                updated_at: "2024-01-01T00:00:00Z".into(),
            }]),
            secret_refs: Some(vec![SecretRef {
                key: "s".into(),
                version: 1,
            }]),
        })
        .unwrap();
    assert!(n.store.data_entry("d").is_some());

    let signer = Signer::from_seed(&[3; 32]).unwrap();
    // Leaked once per test run: the server needs a 'static body.
    let body: &'static str = Box::leak(
        format!(
            r#"{{"metadata":null,"data":null,"signing_keys":{{"current":"{}"}}}}"#,
            signer.public_key_b64()
        )
        .into_boxed_str(),
    );
    let addr = json_server(body);
    let verifier = Arc::new(Verifier::new(None));
    let metrics = Arc::new(StreamMetrics::new());
    let link = Link::start(
        Arc::clone(&n.store),
        Arc::new(client_for(&format!("http://{addr}"), TOKEN)),
        Arc::clone(&n.health),
        LinkOptions {
            verifier: Some(Arc::clone(&verifier)),
            metrics: Some(Arc::clone(&metrics)),
            ..fast_link_options()
        },
    );
    wait_for("reconcile", Duration::from_secs(5), || {
        n.health.snapshot().last_reconcile.is_some()
    });
    assert_eq!(text(&n.store.metadata().value), "{}");
    assert!(n.store.data_entry("d").is_none());
    assert_eq!(text(&n.store.secret_list().value), "[]");
    assert_eq!(
        verifier.keys().map(|k| k.current().to_base64()),
        Some(signer.public_key_b64())
    );
    let counts = metrics.counts();
    assert_eq!((counts.reconciliations, counts.corrections), (1, 1));
    link.shutdown(Duration::from_secs(1));
}
