//! The daemon's control-plane event stream against the development control plane:
//! events applied within a second, every kind of bad event refused and counted with
//! the cache untouched, reconnects (dropped and silent streams) with `Last-Event-ID`,
//! signing-key rotation, and a prompt shutdown while a read is blocked.

use std::time::{Duration, Instant, SystemTime};

use crate::common::{eventually, sample, Node, TestDaemon, NODE_ID, NSK_HEX};
use plexd_nodeapi::devcp::{DevConfig, DevControlPlane};
use plexd_nodeapi::events::{new_nonce, Signer};
use plexd_nodeapi::timefmt::format_rfc3339_utc;

/// Waits until the stream is open and the first reconciliation (which brings the
/// signing keys) is done.
fn wait_streaming(d: &TestDaemon, cp: &DevControlPlane) {
    let ok = eventually(Duration::from_secs(10), || {
        let m = d.metrics();
        cp.open_streams() > 0
            && sample(&m, "plexd_nodeapi_event_stream_connected") == Some(1.0)
            && sample(&m, "plexd_nodeapi_reconciliations_total").unwrap_or(0.0) >= 1.0
    });
    assert!(ok, "stream not up; log:\n{}", d.log_text());
}

fn region(d: &TestDaemon) -> Option<String> {
    let r = d.get("/v1/state/metadata/region");
    (r.status == 200).then(|| r.json()["value"].as_str().unwrap_or_default().to_owned())
}

fn start(node: &Node, cp: &DevControlPlane, extra: &[&str]) -> TestDaemon {
    let d = node
        .daemon()
        .control_plane(cp)
        .args(["--reconcile-interval", "1h"])
        .args(extra.iter().copied())
        .start();
    wait_streaming(&d, cp);
    d
}

fn state_payload(region: &str) -> String {
    format!(r#"{{"metadata":{{"region":"{region}"}},"data":null}}"#)
}

#[test]
fn admin_change_reaches_the_socket_through_the_stream() {
    let node = Node::new();
    let cp = node.control_plane(false);
    let d = start(&node, &cp, &[]);
    // With a one-hour reconcile interval only the stream can deliver this in time.
    let mut latencies = Vec::new();
    for i in 0..20 {
        let value = format!("r{i}");
        let t0 = Instant::now();
        cp.set_metadata("region", &value);
        while region(&d).as_deref() != Some(&value) {
            assert!(
                // Typically a few ms; the bound leaves room for a loaded CI machine.
                t0.elapsed() < Duration::from_secs(3),
                "change {i} did not arrive within 3 s; log:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        latencies.push(t0.elapsed());
    }
    latencies.sort();
    eprintln!(
        "admin change -> socket: median {:?}, min {:?}, max {:?} (n=20, 1 ms polling)",
        latencies[10], latencies[0], latencies[19]
    );
    let m = d.metrics();
    assert!(sample(&m, "plexd_nodeapi_events_accepted_total").unwrap_or(0.0) >= 20.0);
    // Secrets index too.
    cp.set_secret("db", "pw");
    assert!(eventually(Duration::from_secs(5), || {
        d.get("/v1/state/secrets").text().contains("\"db\"")
    }));
    let h = d.get("/v1/health").json();
    assert_eq!(h["control_plane"]["connected"], true);
    assert!(h["control_plane"]["last_event"].is_string());
    assert!(h["control_plane"]["last_reconcile"].is_string());
    assert_eq!(h["control_plane"]["event_stream_connected"], true);
}

#[test]
fn a_metadata_event_rewrites_no_data_entry() {
    let node = Node::new();
    let cp = node.control_plane(true);
    let d = start(&node, &cp, &[]);
    let before = d.get("/v1/state/data/database-config");
    cp.set_metadata("region", "moved");
    assert!(eventually(Duration::from_secs(5), || {
        region(&d).as_deref() == Some("moved")
    }));
    // The event carried the full data set; entries equal to the cache stay untouched.
    let after = d.get("/v1/state/data/database-config");
    assert_eq!(before.body, after.body);
    // The stream thread logs after the store has applied the event, so the value
    // can be served a moment before the line is written (wide under emulation).
    let applied_lines = || -> Vec<String> {
        d.log_text()
            .lines()
            .filter(|l| l.contains("msg=\"event applied\""))
            .map(str::to_owned)
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(5), || !applied_lines().is_empty()),
        "no \"event applied\" line; log:\n{}",
        d.log_text()
    );
    let applied = applied_lines();
    assert_eq!(applied.len(), 1, "{}", d.log_text());
    assert!(applied[0].contains("data_written=0"), "{}", applied[0]);
}

#[test]
fn bad_events_are_refused_counted_and_leave_the_cache_alone() {
    let node = Node::new();
    let cp = node.control_plane(false);
    cp.set_metadata("region", "good");
    let d = start(&node, &cp, &[]);
    assert_eq!(region(&d).as_deref(), Some("good"));
    let now = SystemTime::now();
    let (forger, _) = Signer::generate().unwrap();

    // Forged: signed by a key the node does not trust.
    let forged = forger
        .sign_envelope(
            "node_state_updated",
            "9001",
            &format_rfc3339_utc(now),
            &new_nonce().unwrap(),
            &state_payload("forged"),
        )
        .unwrap();
    cp.publish_raw("node_state_updated", &forged);
    // Stale and future.
    cp.publish_signed_with(
        "node_state_updated",
        &state_payload("stale"),
        &format_rfc3339_utc(now - Duration::from_secs(600)),
        &new_nonce().unwrap(),
    )
    .unwrap();
    cp.publish_signed_with(
        "node_state_updated",
        &state_payload("future"),
        &format_rfc3339_utc(now + Duration::from_secs(600)),
        &new_nonce().unwrap(),
    )
    .unwrap();
    // Malformed envelope, and a valid signature over a payload of the wrong shape.
    cp.publish_raw("node_state_updated", "{not json");
    cp.publish_signed("node_state_updated", r#"{"metadata":5}"#)
        .unwrap();
    // Replay: the same nonce twice; the first is genuine and applied.
    let nonce = new_nonce().unwrap();
    let issued = format_rfc3339_utc(SystemTime::now());
    cp.publish_signed_with(
        "node_state_updated",
        &state_payload("once"),
        &issued,
        &nonce,
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(2), || {
        region(&d).as_deref() == Some("once")
    }));
    cp.set_metadata("region", "good");
    assert!(eventually(Duration::from_secs(2), || {
        region(&d).as_deref() == Some("good")
    }));
    cp.publish_signed_with(
        "node_state_updated",
        &state_payload("replayed"),
        &issued,
        &nonce,
    )
    .unwrap();

    let labels = [
        "bad_signature",
        "stale",
        "future",
        "malformed",
        "bad_payload",
        "replayed",
    ];
    let ok = eventually(Duration::from_secs(3), || {
        let m = d.metrics();
        labels.iter().all(|l| {
            sample(
                &m,
                &format!("plexd_nodeapi_events_rejected_total{{reason=\"{l}\"}}"),
            ) == Some(1.0)
        })
    });
    assert!(ok, "metrics:\n{}\nlog:\n{}", d.metrics(), d.log_text());
    assert_eq!(region(&d).as_deref(), Some("good"));
    let log = d.log_text();
    assert!(log.contains("reason=bad_signature"), "{log}");
    // The stream was kept: one connection, and a genuine event still applies.
    assert_eq!(cp.stream_connects(), 1);
    cp.set_metadata("region", "after");
    assert!(eventually(Duration::from_secs(5), || {
        region(&d).as_deref() == Some("after")
    }));
    // A verified event of an unused type is counted as ignored.
    cp.publish_signed("node_rebooted", "{}").unwrap();
    assert!(eventually(Duration::from_secs(2), || {
        d.metrics()
            .contains("plexd_nodeapi_events_ignored_total{event_type=\"node_rebooted\"} 1")
    }));
}

#[test]
fn dropped_stream_reconnects_with_last_event_id() {
    let node = Node::new();
    let cp = node.control_plane(false);
    let d = start(&node, &cp, &[]);
    cp.set_metadata("region", "one");
    assert!(eventually(Duration::from_secs(5), || {
        region(&d).as_deref() == Some("one")
    }));
    // The ID of the event just delivered (the devcp numbers events 1, 2, …).
    let last = cp.publish_signed("noop", "{}").unwrap();
    assert!(eventually(Duration::from_secs(2), || {
        d.metrics().contains("event_type=\"noop\"} 1")
    }));
    cp.drop_streams();
    let ok = eventually(Duration::from_secs(5), || {
        cp.last_event_ids().contains(&last.to_string()) && cp.open_streams() > 0
    });
    assert!(ok, "ids {:?}; log:\n{}", cp.last_event_ids(), d.log_text());
    cp.set_metadata("region", "two");
    assert!(eventually(Duration::from_secs(5), || {
        region(&d).as_deref() == Some("two")
    }));
    let m = d.metrics();
    assert!(sample(&m, "plexd_nodeapi_event_stream_reconnects_total").unwrap_or(0.0) >= 1.0);
}

#[test]
fn silent_stream_is_reconnected_after_the_idle_timeout() {
    let node = Node::new();
    let cp = node.control_plane(false);
    let d = node
        .daemon()
        .control_plane(&cp)
        .args(["--reconcile-interval", "1h"])
        .env("PLEXD_NODEAPI_SSE_IDLE_TIMEOUT", "500ms")
        .start();
    // Keep-alive comments keep a quiet stream alive …
    cp.set_keep_alive(Duration::from_millis(100));
    cp.drop_streams();
    wait_streaming(&d, &cp);
    let before = cp.stream_connects();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(cp.stream_connects(), before, "log:\n{}", d.log_text());
    // … a silent one is given up after the idle timeout and reopened.
    cp.stall_streams(true);
    let t0 = Instant::now();
    let ok = eventually(Duration::from_secs(5), || cp.stream_connects() > before);
    assert!(ok, "no reconnect; log:\n{}", d.log_text());
    // Idle 500 ms + backoff ~1 s (±25 %).
    assert!(
        t0.elapsed() > Duration::from_millis(1000),
        "{:?}",
        t0.elapsed()
    );
    assert!(d.log_text().contains("idle for 500 ms"));
    cp.stall_streams(false);
    cp.set_metadata("region", "awake");
    assert!(eventually(Duration::from_secs(6), || {
        region(&d).as_deref() == Some("awake")
    }));
}

#[test]
fn shutdown_does_not_wait_for_a_blocked_stream_read() {
    let node = Node::new();
    let cp = node.control_plane(false);
    let d = start(&node, &cp, &["--shutdown-timeout", "2s"]);
    cp.stall_streams(true);
    // Make sure a fresh, silent read is in progress.
    cp.drop_streams();
    assert!(eventually(Duration::from_secs(5), || cp.open_streams() > 0));
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    let status = d.stop();
    let took = t0.elapsed();
    assert!(status.success());
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
    eprintln!("shutdown with a blocked stream read took {took:?}");
}

#[test]
fn signing_key_rotation_keeps_the_previous_key_until_its_expiry() {
    let seed_a = [7u8; 32];
    let signer_a = Signer::from_seed(&seed_a).unwrap();
    let node = Node::new();
    let cp = DevControlPlane::start(DevConfig {
        signing_seed: Some(seed_a.into()),
        ..DevConfig::new(NODE_ID, Node::nsk(), NSK_HEX)
    })
    .unwrap();
    let d = start(&node, &cp, &[]);
    let by_a = |region: &str| {
        signer_a
            .sign_envelope(
                "node_state_updated",
                "a",
                &format_rfc3339_utc(SystemTime::now()),
                &new_nonce().unwrap(),
                &state_payload(region),
            )
            .unwrap()
    };
    cp.publish_raw("node_state_updated", &by_a("a1"));
    assert!(eventually(Duration::from_secs(5), || {
        region(&d).as_deref() == Some("a1")
    }));

    let (signer_b, _) = Signer::generate().unwrap();
    let rotated_at = Instant::now();
    let transition = Duration::from_secs(3);
    cp.rotate_signing_key(signer_b, transition);
    // The rotation event (signed with A) makes the daemon fetch the new keys; events
    // signed with B then verify.
    assert!(eventually(Duration::from_secs(2), || {
        d.metrics()
            .contains("event_type=\"signing_key_rotated\"} 1")
    }));
    let ok = eventually(Duration::from_secs(2), || {
        cp.publish_signed("node_state_updated", &state_payload("b1"))
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        region(&d).as_deref() == Some("b1")
    });
    assert!(ok, "log:\n{}", d.log_text());
    // The previous key is still good during the transition …
    cp.publish_raw("node_state_updated", &by_a("a2"));
    assert!(eventually(Duration::from_secs(5), || {
        region(&d).as_deref() == Some("a2")
    }));
    assert!(
        rotated_at.elapsed() < transition,
        "test too slow to check the transition"
    );
    // … and refused after it.
    std::thread::sleep(
        transition.saturating_sub(rotated_at.elapsed()) + Duration::from_millis(300),
    );
    let rejected_before = sample(
        &d.metrics(),
        "plexd_nodeapi_events_rejected_total{reason=\"bad_signature\"}",
    )
    .unwrap_or(0.0);
    cp.publish_raw("node_state_updated", &by_a("a3"));
    assert!(eventually(Duration::from_secs(2), || {
        sample(
            &d.metrics(),
            "plexd_nodeapi_events_rejected_total{reason=\"bad_signature\"}",
        )
        .unwrap_or(0.0)
            > rejected_before
    }));
    assert_eq!(region(&d).as_deref(), Some("a2"));
}

#[test]
fn refused_stream_shows_in_health_and_429_honours_retry_after() {
    use plexd_nodeapi::devcp::FailRoute;
    let node = Node::new();
    let cp = node.control_plane(false);
    let d = start(&node, &cp, &[]);

    // 429 with Retry-After: 1 → the next attempt comes about a second later.
    let before = cp.stream_connects();
    cp.fail_next(1, 429, Some(1), FailRoute::Events);
    cp.drop_streams();
    let t0 = Instant::now();
    assert!(eventually(Duration::from_secs(6), || cp.stream_connects() > before));
    // Backoff ~1 s for the dropped stream, then the 429's one second.
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );

    // 401: the agent keeps trying (slowly) and says so in its health.
    cp.fail_next(1, 401, None, FailRoute::Events);
    cp.drop_streams();
    let ok = eventually(Duration::from_secs(5), || {
        let h = d.get("/v1/health").json();
        h["control_plane"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("event stream") && e.contains("401"))
            && h["control_plane"]["event_stream_connected"] == false
    });
    assert!(
        ok,
        "health {}; log:\n{}",
        d.get("/v1/health").text(),
        d.log_text()
    );
    let log = d.log_text();
    assert!(log.contains("cannot open the event stream"), "{log}");
    assert!(!log.contains(NSK_HEX), "token leaked into the log");
}
