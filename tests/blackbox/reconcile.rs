//! The reconciler: the cache converges to the control plane's state whatever made them
//! differ — a change that produced no event, an event whose content diverges, state
//! emptied or files edited while the daemon was stopped.

use std::time::Duration;

use crate::common::{eventually, Node, TestDaemon};
use plexd_nodeapi::devcp::DevControlPlane;

fn region(d: &TestDaemon) -> Option<String> {
    let r = d.get("/v1/state/metadata/region");
    (r.status == 200).then(|| r.json()["value"].as_str().unwrap_or_default().to_owned())
}

fn wait_reconciled(d: &TestDaemon) {
    let ok = eventually(Duration::from_secs(10), || {
        metric_value(d, "plexd_nodeapi_reconciliations_total") >= 1.0
    });
    assert!(ok, "no reconciliation; log:\n{}", d.log_text());
}

fn start(node: &Node, cp: &DevControlPlane, interval: &str) -> TestDaemon {
    let d = node
        .daemon()
        .control_plane(cp)
        .args(["--reconcile-interval", interval])
        .start();
    wait_reconciled(&d);
    d
}

#[test]
fn a_change_without_an_event_is_picked_up_by_the_next_reconcile() {
    let node = Node::new();
    let cp = node.control_plane(true);
    let d = start(&node, &cp, "1s");
    assert_eq!(region(&d).as_deref(), Some("eu-central-1"));
    let corrections = metric_value(&d, "plexd_nodeapi_reconcile_corrections_total");
    cp.stall_streams(true);
    cp.set_metadata("region", "silent");
    cp.remove_data("feature-flags");
    let ok = eventually(Duration::from_secs(4), || {
        region(&d).as_deref() == Some("silent")
            && d.get("/v1/state/data/feature-flags").status == 404
    });
    assert!(ok, "log:\n{}", d.log_text());
    assert!(!node.state().join("data/feature-flags.json").exists());
    assert!(metric_value(&d, "plexd_nodeapi_reconcile_corrections_total") > corrections);
    assert_eq!(metric_value(&d, "plexd_nodeapi_events_accepted_total"), 0.0);
}

#[test]
fn a_diverging_event_is_put_back_by_the_next_reconcile() {
    let node = Node::new();
    let cp = node.control_plane(true);
    let d = start(&node, &cp, "2s");
    let corrections_before = metric_value(&d, "plexd_nodeapi_reconcile_corrections_total");
    // Validly signed, but not what the control plane's state says.
    cp.publish_signed(
        "node_state_updated",
        r#"{"metadata":{"region":"diverged"},"data":[]}"#,
    )
    .unwrap();
    // The event is applied (the cache now differs from the control plane) — the next
    // reconcile may repair it before a poll sees "diverged", so follow the counters:
    // the cache matched the control plane before the event, so a correction can only
    // come from undoing it.
    assert!(eventually(Duration::from_secs(5), || {
        metric_value(&d, "plexd_nodeapi_events_accepted_total") >= 1.0
    }));
    let ok = eventually(Duration::from_secs(8), || {
        region(&d).as_deref() == Some("eu-central-1")
            && d.get("/v1/state/data/database-config").status == 200
    });
    assert!(ok, "log:\n{}", d.log_text());
    assert!(metric_value(&d, "plexd_nodeapi_reconcile_corrections_total") > corrections_before);
}

#[test]
fn state_emptied_while_stopped_is_cleared_after_restart() {
    let node = Node::new();
    let cp = node.control_plane(true);
    let d = start(&node, &cp, "1h");
    assert!(eventually(Duration::from_secs(2), || {
        d.get("/v1/state/data")
            .json()
            .as_array()
            .map_or(0, Vec::len)
            == 3
    }));
    assert!(d.stop().success());

    cp.replace_metadata(Default::default());
    for key in ["database-config", "feature-flags", "service-endpoints"] {
        assert!(cp.remove_data(key));
    }
    for key in ["db-password", "api-token"] {
        assert!(cp.remove_secret(key));
    }

    let d = start(&node, &cp, "1h");
    let ok = eventually(Duration::from_secs(3), || {
        let s = d.get("/v1/state").json();
        s["metadata"] == serde_json::json!({})
            && s["data_keys"] == serde_json::json!([])
            && s["secret_keys"] == serde_json::json!([])
    });
    assert!(
        ok,
        "state {}; log:\n{}",
        d.get("/v1/state").text(),
        d.log_text()
    );
    let state = node.state();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("metadata.json")).unwrap()).unwrap();
    assert_eq!(meta, serde_json::json!({}));
    let secrets: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("secrets.json")).unwrap()).unwrap();
    assert_eq!(secrets, serde_json::json!([]));
    assert_eq!(std::fs::read_dir(state.join("data")).unwrap().count(), 0);
}

#[test]
fn files_edited_while_stopped_are_restored() {
    let node = Node::new();
    let cp = node.control_plane(true);
    let d = start(&node, &cp, "1h");
    let file = node.state().join("data/database-config.json");
    assert!(eventually(Duration::from_secs(2), || file.exists()));
    let original = std::fs::read(&file).unwrap();
    let original_entry = d.get("/v1/state/data/database-config").body;
    assert!(d.stop().success());

    let mut entry: serde_json::Value = serde_json::from_slice(&original).unwrap();
    entry["payload"] = serde_json::json!({"host": "evil.example"});
    std::fs::write(&file, serde_json::to_vec(&entry).unwrap()).unwrap();
    std::fs::write(
        node.state().join("metadata.json"),
        r#"{"region":"edited","extra":"x"}"#,
    )
    .unwrap();

    let d = start(&node, &cp, "1h");
    let ok = eventually(Duration::from_secs(3), || {
        d.get("/v1/state/data/database-config").body == original_entry
            && region(&d).as_deref() == Some("eu-central-1")
            && d.get("/v1/state/metadata/extra").status == 404
    });
    assert!(ok, "log:\n{}", d.log_text());
    assert_eq!(std::fs::read(&file).unwrap(), original);
    assert!(metric_value(&d, "plexd_nodeapi_reconcile_corrections_total") >= 1.0);
}

fn metric_value(d: &TestDaemon, series: &str) -> f64 {
    d.metric(series).unwrap_or(0.0)
}

fn index(r: &crate::common::Resp) -> u64 {
    r.header("x-plexd-index")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no X-Plexd-Index: {r:?}"))
}

fn file_identity(path: &std::path::Path) -> (u64, i64, i64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    (m.ino(), m.mtime(), m.mtime_nsec())
}

#[test]
fn a_payload_the_control_plane_reformats_keeps_its_revision_and_file() {
    let node = Node::new();
    let cp = node.control_plane(false);
    let original = r#"{"z":1e2,"a":[1,2],"s":"\u00e9","n":{"y":true,"x":null}}"#;
    cp.set_data("cfg", "application/json", original).unwrap();
    cp.set_metadata("region", "a");
    let d = start(&node, &cp, "1s");
    assert!(eventually(Duration::from_secs(10), || d
        .get("/v1/state/data/cfg")
        .status
        == 200));
    let first = d.get("/v1/state/data/cfg");
    let list = index(&d.get("/v1/state/data"));
    let file = node.state().join("data/cfg.json");
    let ident = file_identity(&file);
    let text = first.text();
    assert!(text.contains(original), "payload bytes as received: {text}");

    // The state endpoint now spells every payload differently: same values.
    cp.reformat_state(true);
    let seen = metric_value(&d, "plexd_nodeapi_reconciliations_total");
    assert!(eventually(Duration::from_secs(10), || metric_value(
        &d,
        "plexd_nodeapi_reconciliations_total"
    ) >= seen + 2.0));
    let again = d.get("/v1/state/data/cfg");
    assert_eq!(again.header("etag"), first.header("etag"));
    assert_eq!(
        again.body, first.body,
        "the bytes first received are served"
    );
    assert_eq!(index(&d.get("/v1/state/data")), list);
    assert_eq!(file_identity(&file), ident, "the file was rewritten");

    // An event that changes only metadata moves only metadata's revision.
    let meta = index(&d.get("/v1/state/metadata"));
    cp.set_metadata("region", "b");
    assert!(eventually(Duration::from_secs(10), || region(&d)
        .as_deref()
        == Some("b")));
    assert!(index(&d.get("/v1/state/metadata")) > meta);
    assert_eq!(
        d.get("/v1/state/data/cfg").header("etag"),
        first.header("etag")
    );
    assert_eq!(index(&d.get("/v1/state/data")), list);
    assert_eq!(file_identity(&file), ident);

    // Another value is a change, whatever its spelling.
    cp.set_data("cfg", "application/json", r#"{"z":101}"#)
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || {
        d.get("/v1/state/data/cfg").json()["payload"]["z"] == 101
    }));
    assert!(index(&d.get("/v1/state/data")) > list);
}

#[test]
fn an_unusable_state_answer_is_degraded_until_the_next_good_fetch() {
    use plexd_nodeapi::devcp::FailRoute;
    let node = Node::new();
    let cp = node.control_plane(true);
    let d = start(&node, &cp, "1s");
    let health = || d.get("/v1/health").json();
    assert!(eventually(Duration::from_secs(10), || health()["status"] == "ok"));
    let cases: [(u16, Vec<u8>, &str); 4] = [
        (200, b"<html>garbage</html>".to_vec(), "not understood"),
        (200, br#"{"metadata":[1,2,3]}"#.to_vec(), "not understood"),
        (500, br#"{"error":"boom"}"#.to_vec(), "answered 500"),
        (200, vec![b' '; 10 * 1024 * 1024 + 1], "larger than 10 MiB"),
    ];
    for (status, body, reason) in cases {
        // Many in a row: the backoff grows past the reconcile interval meanwhile.
        cp.answer_next(6, status, FailRoute::State, body);
        let degraded = eventually(Duration::from_secs(10), || {
            let h = health();
            h["status"] == "degraded"
                && h["control_plane"]["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains(reason))
        });
        assert!(degraded, "{reason}: {}\nlog:\n{}", health(), d.log_text());
        // The cache is served meanwhile, unchanged.
        assert_eq!(region(&d).as_deref(), Some("eu-central-1"));
        // Recovery comes within about one reconcile interval once the answers are good
        // (6 bad answers, 1 s apart at most, then one good one).
        let recovered = eventually(Duration::from_secs(12), || health()["status"] == "ok");
        assert!(recovered, "{reason}: {}\nlog:\n{}", health(), d.log_text());
    }
}
