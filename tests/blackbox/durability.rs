//! Files and reports across restarts, crashes and outages: persistence, offline serving,
//! corrupt files, SIGKILL during concurrent writers, and the durable outbox.

use crate::common::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn body(n: usize) -> String {
    format!(r#"{{"content_type":"application/json","payload":{{"n":{n}}}}}"#)
}

#[test]
fn cache_survives_restart_and_serves_offline() {
    let node = Node::new();
    let cp = node.control_plane(true);
    let d = node.daemon().control_plane(&cp).start();
    assert!(eventually(Duration::from_secs(10), || d
        .get("/v1/state/metadata/region")
        .status
        == 200));
    let before = d.get("/v1/state").json();
    assert_eq!(d.put("/v1/state/report/r1", &body(1)).status, 200);
    assert_eq!(d.stop().code(), Some(0));
    let port = cp.addr().port();
    cp.stop();

    // Control plane gone: the daemon serves what it has on disk.
    let d = node
        .daemon()
        .args(["--control-plane", &format!("http://127.0.0.1:{port}")])
        .start();
    let after = d.get("/v1/state").json();
    assert_eq!(after["metadata"], before["metadata"]);
    assert_eq!(after["data_keys"], before["data_keys"]);
    assert_eq!(after["secret_keys"], before["secret_keys"]);
    assert_eq!(d.get("/v1/state/report/r1").json()["payload"]["n"], 1);
    assert_eq!(d.get("/v1/state/secrets/db-password").status, 503);
    // Files have the documented layout and modes.
    use std::os::unix::fs::PermissionsExt;
    let state = node.state();
    for f in ["metadata.json", "secrets.json"] {
        let m = std::fs::metadata(state.join(f)).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600, "{f}");
    }
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(state.join("report/r1.json").exists());
}

#[test]
fn plexd_written_cache_loads_unchanged() {
    let node = Node::new();
    let state = node.state();
    std::fs::create_dir_all(state.join("data")).unwrap();
    std::fs::create_dir_all(state.join("report")).unwrap();
    std::fs::write(
        state.join("metadata.json"),
        r#"{"region":"eu-west-1","role":"worker"}"#,
    )
    .unwrap();
    std::fs::write(
        state.join("secrets.json"),
        r#"[{"key":"tls-cert","version":2}]"#,
    )
    .unwrap();
    std::fs::write(
        state.join("data/database-config.json"),
        r#"{"key":"database-config","content_type":"application/json","payload":{"host":"db.internal","port":5432},"version":3,"updated_at":"2025-01-15T10:30:00Z"}"#,
    )
    .unwrap();
    std::fs::write(
        state.join("report/app-health.json"),
        r#"{"key":"app-health","content_type":"application/json","payload":{"status":"healthy"},"version":12,"updated_at":"2025-01-15T10:30:00Z"}"#,
    )
    .unwrap();
    let d = node.daemon().start();
    let s = d.get("/v1/state").json();
    assert_eq!(s["metadata"]["role"], "worker");
    assert_eq!(
        s["data_keys"],
        serde_json::json!([{"key":"database-config","version":3,"content_type":"application/json"}])
    );
    assert_eq!(
        s["secret_keys"],
        serde_json::json!([{"key":"tls-cert","version":2}])
    );
    assert_eq!(
        s["report_keys"],
        serde_json::json!([{"key":"app-health","version":12}])
    );
    assert_eq!(
        d.get("/v1/state/data/database-config").json()["payload"]["port"],
        5432
    );
}

#[test]
fn corrupt_and_torn_files_are_quarantined_and_temp_files_removed() {
    let node = Node::new();
    let state = node.state();
    std::fs::create_dir_all(state.join("data")).unwrap();
    std::fs::create_dir_all(state.join("report")).unwrap();
    std::fs::write(state.join("data/good.json"), r#"{"key":"good","content_type":"text/plain","payload":"ok","version":1,"updated_at":"2025-01-01T00:00:00Z"}"#).unwrap();
    std::fs::write(
        state.join("data/torn.json"),
        r#"{"key":"torn","content_type":"text/pl"#,
    )
    .unwrap();
    std::fs::write(state.join("report/empty.json"), "").unwrap();
    std::fs::write(state.join("metadata.json"), "{not json").unwrap();
    std::fs::write(state.join("report/.r.json.tmp-1-1"), "partial").unwrap();
    let d = node.daemon().start();
    let s = d.get("/v1/state").json();
    assert_eq!(s["data_keys"].as_array().unwrap().len(), 1);
    assert_eq!(s["metadata"], serde_json::json!({}));
    assert!(state.join("data/torn.json.corrupt").exists());
    assert!(state.join("report/empty.json.corrupt").exists());
    assert!(state.join("metadata.json.corrupt").exists());
    assert!(
        !state.join("report/.r.json.tmp-1-1").exists(),
        "stray temp file removed"
    );
    assert!(
        d.log_text().contains("level=error"),
        "quarantine logged at error"
    );
}

#[test]
fn sigkill_during_concurrent_writers_loses_no_acknowledged_put() {
    let node = Node::new();
    let d = node.daemon().start();
    let socket = d.socket.clone();
    let acked: Arc<Mutex<BTreeMap<String, i64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for t in 0..8 {
        let socket = socket.clone();
        let acked = Arc::clone(&acked);
        let stop = Arc::clone(&stop);
        threads.push(std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                // Half the writers share keys, half write their own.
                let key = if t % 2 == 0 {
                    format!("shared-{}", i % 5)
                } else {
                    format!("own-{t}-{i}")
                };
                let b = body(i);
                match try_request(
                    &socket,
                    "PUT",
                    &format!("/v1/state/report/{key}"),
                    &[],
                    Some(b.as_bytes()),
                ) {
                    Ok(r) if r.status == 200 => {
                        let v = r.json()["version"].as_i64().unwrap();
                        let mut a = acked.lock().unwrap();
                        let e = a.entry(key).or_insert(0);
                        *e = (*e).max(v);
                    }
                    _ => {}
                }
                i += 1;
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(700));
    d.kill();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 20, "writers made progress: {}", acked.len());

    let d = node.daemon().start();
    for (key, version) in &acked {
        let r = d.get(&format!("/v1/state/report/{key}"));
        assert_eq!(r.status, 200, "acknowledged {key} lost");
        assert!(
            r.json()["version"].as_i64().unwrap() >= *version,
            "{key} went back"
        );
    }
    // Nothing torn: every report file parses.
    for f in walk(&node.state().join("report")) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.ends_with(".corrupt"), "torn file {name}");
        if name.ends_with(".json") {
            serde_json::from_slice::<serde_json::Value>(&std::fs::read(&f).unwrap())
                .expect("parses");
        }
    }
}

#[test]
fn outbox_is_delivered_after_sigterm_and_sigkill_restarts() {
    for kill in [false, true] {
        let node = Node::new();
        let cp = node.control_plane(false);
        let port = cp.addr().port();
        let url = format!("http://127.0.0.1:{port}");
        cp.stop();
        // Control plane down: reports are acknowledged and kept.
        let d = node
            .daemon()
            .args(["--control-plane", &url, "--debounce", "100ms"])
            .start();
        for i in 0..5 {
            assert_eq!(
                d.put(&format!("/v1/state/report/k{i}"), &body(i)).status,
                200
            );
        }
        assert_eq!(d.delete("/v1/state/report/k4").status, 204);
        std::thread::sleep(Duration::from_millis(300));
        if kill {
            d.kill();
        } else {
            assert_eq!(d.stop().code(), Some(0));
        }
        // Restart still offline, then bring the control plane back on the same port.
        let d = node
            .daemon()
            .args(["--control-plane", &url, "--debounce", "100ms"])
            .start();
        let cp = dev_cp(([127, 0, 0, 1], port).into(), false);
        let delivered = eventually(Duration::from_secs(20), || cp.reports().len() == 4);
        assert!(
            delivered,
            "kill={kill}: upstream has {:?}; log:\n{}",
            cp.reports().keys().collect::<Vec<_>>(),
            d.log_text()
        );
        let reports = cp.reports();
        for i in 0..4 {
            assert_eq!(reports[&format!("k{i}")].version, 1);
        }
        assert!(
            !reports.contains_key("k4"),
            "a key created and deleted offline is not sent as an entry"
        );
        drop(d);
        cp.stop();
    }
}

#[test]
fn put_then_delete_and_delete_then_put_in_one_debounce_window() {
    let node = Node::new();
    let cp = node.control_plane(false);
    let d = node
        .daemon()
        .control_plane(&cp)
        .args(["--debounce", "1s"])
        .start();
    // First make "b" known upstream so its deletion must be sent.
    assert_eq!(d.put("/v1/state/report/b", &body(1)).status, 200);
    assert!(eventually(Duration::from_secs(10), || cp
        .reports()
        .contains_key("b")));
    let posts_before = cp.report_posts().len();
    // One window: a = PUT then DELETE; b = DELETE then PUT.
    assert_eq!(d.put("/v1/state/report/a", &body(1)).status, 200);
    assert_eq!(d.delete("/v1/state/report/a").status, 204);
    assert_eq!(d.delete("/v1/state/report/b").status, 204);
    assert_eq!(d.put("/v1/state/report/b", &body(2)).status, 200);
    assert!(eventually(Duration::from_secs(10), || cp
        .reports()
        .get("b")
        .is_some_and(|e| e.payload.get().contains('2'))));
    let posts = cp.report_posts();
    for post in &posts[posts_before..] {
        let mut keys: Vec<&str> = post.entries.iter().map(|e| e.key.as_str()).collect();
        keys.extend(post.deleted.iter().map(String::as_str));
        let mut dedup = keys.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(
            keys.len(),
            dedup.len(),
            "a key appears once per POST: {keys:?}"
        );
        assert!(
            !post.entries.iter().any(|e| e.key == "a"),
            "a was deleted in the same window"
        );
    }
    assert!(!cp.reports().contains_key("a"));
    assert_eq!(
        cp.reports()["b"].version,
        1,
        "b was recreated, so it starts at 1"
    );
}

#[test]
fn debounce_coalesces_many_changes_into_one_post() {
    let node = Node::new();
    let cp = node.control_plane(false);
    let d = node
        .daemon()
        .control_plane(&cp)
        .args(["--debounce", "500ms"])
        .start();
    for i in 0..20 {
        assert_eq!(d.put("/v1/state/report/same", &body(i)).status, 200);
    }
    assert!(eventually(Duration::from_secs(10), || cp
        .reports()
        .get("same")
        .is_some_and(|e| e.version == 20)));
    std::thread::sleep(Duration::from_millis(700));
    let posts = cp.report_posts();
    assert!(
        posts.len() <= 2,
        "20 quick changes → at most 2 POSTs, got {}",
        posts.len()
    );
}

#[test]
fn shutdown_makes_a_final_flush() {
    let node = Node::new();
    let cp = node.control_plane(false);
    let d = node
        .daemon()
        .control_plane(&cp)
        .args(["--debounce", "1m"])
        .start();
    assert_eq!(d.put("/v1/state/report/late", &body(7)).status, 200);
    assert_eq!(d.stop().code(), Some(0));
    assert!(cp.reports().contains_key("late"), "final flush on SIGTERM");
}

/// A data folder moves between machines: `fixtures/report.journal` holds a journal in
/// the bytes the x86-64 build writes (five records, then a record cut short by a
/// crash; see `store::journal`), beside an epoch-7 revision file. Whatever binary runs
/// this suite replays it the same way — under CI's emulator, the ARM builds, 32-bit
/// included: versions and revisions past 2^32, payloads byte for byte, the torn tail
/// dropped, and after a clean stop the journal empty and the files in its place.
#[test]
fn a_journal_written_by_a_64_bit_build_replays_on_this_build() {
    let node = Node::new();
    let state = node.state();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("report.journal"),
        include_bytes!("../fixtures/report.journal"),
    )
    .unwrap();
    std::fs::write(state.join("revision"), "7\n").unwrap();
    let d = node.daemon().start();

    let list = d.get("/v1/state/report");
    assert_eq!(
        list.json(),
        serde_json::json!([
            {"key": "app-health", "version": 2},
            {"key": "zürich sensor #1", "version": 4_294_967_297u64}
        ])
    );
    let index: u64 = list.header("x-plexd-index").unwrap().parse().unwrap();
    assert_eq!(
        index >> 32,
        8,
        "revision {index} is in epoch 8, past 32 bits"
    );
    let health = d.get("/v1/state/report/app-health");
    assert!(
        health.text().contains(
            r#""payload":{"status":"degraded","max_u64":18446744073709551615,"neg":-9007199254740993}"#
        ),
        "payload byte for byte: {}",
        health.text()
    );
    assert_eq!(
        health.json()["updated_at"],
        "2026-11-28T15:01:13.000000001Z"
    );
    assert_eq!(d.get("/v1/state/report/gone").status, 404);
    assert_eq!(d.get("/v1/state/report/torn").status, 404);
    assert!(d.log_text().contains("torn"), "{}", d.log_text());

    // Writing goes on from the replayed versions.
    let put = d.put("/v1/state/report/z%C3%BCrich%20sensor%20%231", &body(1));
    assert_eq!(put.status, 200);
    assert_eq!(put.json()["version"], 4_294_967_298u64);
    assert_eq!(d.stop().code(), Some(0));

    assert_eq!(
        std::fs::metadata(state.join("report.journal"))
            .unwrap()
            .len(),
        0,
        "a clean stop empties the journal"
    );
    let file = std::fs::read_to_string(state.join("report/z%C3%BCrich%20sensor%20%231.json"))
        .expect("report file for the non-ASCII key");
    assert!(file.contains("4294967298"), "{file}");
    assert!(state.join("report/app-health.json").exists());
    assert!(!state.join("report/gone.json").exists());
    assert_eq!(
        std::fs::read_to_string(state.join("revision"))
            .unwrap()
            .trim(),
        "8"
    );
}
