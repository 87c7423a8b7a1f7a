//! Every route of the local API (README's "The local API") with its success shape and every error status, over the real
//! Unix socket (and TCP with a token) of a real daemon.

use crate::common::*;
use std::time::Duration;

const PUT_BODY: &str = r#"{"content_type":"application/json","payload":{"status":"healthy"}}"#;

fn demo_daemon(node: &Node) -> (plexd_nodeapi::devcp::DevControlPlane, TestDaemon) {
    let cp = node.control_plane(true);
    let d = node.daemon().control_plane(&cp).start();
    assert!(
        eventually(Duration::from_secs(10), || d
            .get("/v1/state/metadata")
            .json()
            .as_object()
            .is_some_and(|m| !m.is_empty())),
        "initial state never arrived; log:\n{}",
        d.log_text()
    );
    (cp, d)
}

#[test]
fn summary_and_lists_have_the_documented_shapes() {
    let node = Node::new();
    let (_cp, d) = demo_daemon(&node);
    let s = d.get("/v1/state");
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("application/json"));
    let v = s.json();
    for field in ["metadata", "data_keys", "secret_keys", "report_keys"] {
        assert!(v.get(field).is_some(), "summary lacks {field}: {v}");
    }
    let data = d.get("/v1/state/data").json();
    let keys: Vec<&str> = data
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "data list sorted by key");
    for e in data.as_array().unwrap() {
        assert!(e["version"].is_i64() && e["content_type"].is_string());
    }
    let secrets = d.get("/v1/state/secrets").json();
    assert!(secrets
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["key"].is_string() && e["version"].is_i64()));
    assert_eq!(d.get("/v1/state/report").json(), serde_json::json!([]));
}

#[test]
fn empty_cache_answers_empty_collections() {
    let node = Node::new();
    let d = node.daemon().start();
    let v = d.get("/v1/state").json();
    assert_eq!(
        v,
        serde_json::json!({"metadata":{},"data_keys":[],"secret_keys":[],"report_keys":[]})
    );
    assert_eq!(d.get("/v1/state/metadata").json(), serde_json::json!({}));
    assert_eq!(d.get("/v1/state/data").json(), serde_json::json!([]));
    assert_eq!(d.get("/v1/state/secrets").json(), serde_json::json!([]));
}

#[test]
fn metadata_and_data_entries() {
    let node = Node::new();
    let (cp, d) = demo_daemon(&node);
    cp.set_metadata("db/region", "eu");
    cp.set_data(
        "cfg",
        "application/json",
        r#"{"port":5432,"big":12345678901234567890,"f":1.0}"#,
    )
    .unwrap();
    // The daemon picks the change up at its next reconcile; restart to fetch now.
    drop(d);
    let d = node.daemon().control_plane(&cp).start();
    assert!(eventually(Duration::from_secs(10), || d
        .get("/v1/state/data/cfg")
        .status
        == 200));
    let m = d.get("/v1/state/metadata/db%2Fregion");
    assert_eq!(m.status, 200);
    assert_eq!(
        m.json(),
        serde_json::json!({"key":"db/region","value":"eu"})
    );
    let e = d.get("/v1/state/data/cfg");
    let text = e.text();
    assert!(
        text.contains(r#""payload":{"port":5432,"big":12345678901234567890,"f":1.0}"#),
        "payload verbatim: {text}"
    );
    let v = e.json();
    for f in ["key", "content_type", "payload", "version", "updated_at"] {
        assert!(v.get(f).is_some(), "{f} missing in {v}");
    }
    assert_eq!(d.get("/v1/state/metadata/nope").status, 404);
    assert_eq!(
        d.get("/v1/state/data/nope").json()["error"],
        "data entry not found"
    );
}

#[test]
fn reports_put_get_delete_and_optimistic_locking() {
    let node = Node::new();
    let d = node.daemon().start();
    let r = d.put("/v1/state/report/app-health", PUT_BODY);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["key"], "app-health");
    assert_eq!(v["version"], 1);
    assert_eq!(v["payload"], serde_json::json!({"status":"healthy"}));
    assert!(v["updated_at"].as_str().unwrap().ends_with('Z'));

    let conflict = d.req(
        "PUT",
        "/v1/state/report/app-health",
        &[("If-Match", "7")],
        Some(PUT_BODY.as_bytes()),
    );
    assert_eq!(conflict.status, 409);
    assert!(conflict.json()["error"]
        .as_str()
        .unwrap()
        .contains("conflict"));
    let ok = d.req(
        "PUT",
        "/v1/state/report/app-health",
        &[("If-Match", "1")],
        Some(PUT_BODY.as_bytes()),
    );
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["version"], 2);
    let bad = d.req(
        "PUT",
        "/v1/state/report/app-health",
        &[("If-Match", "two")],
        Some(PUT_BODY.as_bytes()),
    );
    assert_eq!(bad.status, 400);
    // On a missing key only If-Match: 0 succeeds.
    let missing = d.req(
        "PUT",
        "/v1/state/report/new",
        &[("If-Match", "1")],
        Some(PUT_BODY.as_bytes()),
    );
    assert_eq!(missing.status, 409);
    let zero = d.req(
        "PUT",
        "/v1/state/report/new",
        &[("If-Match", "0")],
        Some(PUT_BODY.as_bytes()),
    );
    assert_eq!(zero.status, 200);
    assert_eq!(zero.json()["version"], 1);

    assert_eq!(
        d.get("/v1/state/report").json(),
        serde_json::json!([{"key":"app-health","version":2},{"key":"new","version":1}])
    );
    assert_eq!(d.get("/v1/state/report/app-health").json()["version"], 2);
    let del = d.delete("/v1/state/report/app-health");
    assert_eq!(del.status, 204);
    assert!(del.body.is_empty());
    assert_eq!(
        del.header("content-length"),
        None,
        "204 carries no Content-Length"
    );
    assert_eq!(d.delete("/v1/state/report/app-health").status, 404);
    assert_eq!(d.get("/v1/state/report/app-health").status, 404);
    // Recreated after delete: starts at 1 again.
    assert_eq!(
        d.put("/v1/state/report/app-health", PUT_BODY).json()["version"],
        1
    );
    // Percent-decoded report keys.
    assert_eq!(
        d.put("/v1/state/report/with%20space", PUT_BODY).json()["key"],
        "with space"
    );
}

/// The precondition matrix of report writes over the socket: every form `If-Match` and
/// `If-None-Match` take, on PUT and on DELETE, against an entry that exists (version 2)
/// and one that does not. The ETag a GET and a PUT answer with is what the conditions
/// accept; a refused write changes nothing.
#[test]
fn report_preconditions_matrix_for_put_and_delete() {
    let node = Node::new();
    let d = node.daemon().start();
    let path = "/v1/state/report/lock";
    // Some(etag of version 1, etag of version 2) when the entry exists.
    let setup = |exists: bool| -> Option<(String, String)> {
        let _ = d.delete(path);
        if !exists {
            assert_eq!(d.get(path).status, 404);
            return None;
        }
        let v1 = d.put(path, PUT_BODY);
        let v2 = d.put(path, PUT_BODY);
        assert_eq!(v2.json()["version"], 2);
        let old = v1.header("etag").expect("PUT answers an ETag").to_owned();
        let current = v2.header("etag").unwrap().to_owned();
        assert_eq!(d.get(path).header("etag"), Some(current.as_str()));
        Some((old, current))
    };
    // (header, value — `OLD`/`CUR` stand for the ETags —, PUT and DELETE on the
    // existing entry, PUT and DELETE on a missing one)
    let cases: &[(&str, &str, [u16; 4])] = &[
        ("", "", [200, 204, 200, 404]),
        ("If-Match", "CUR", [200, 204, 409, 409]),
        ("If-Match", "OLD", [409, 409, 409, 409]),
        ("If-Match", "\"1\", CUR", [200, 204, 409, 409]),
        ("If-Match", "W/CUR", [409, 409, 409, 409]),
        ("If-Match", "*", [200, 204, 409, 409]),
        ("If-Match", "2", [200, 204, 409, 409]),
        ("If-Match", "1", [409, 409, 409, 409]),
        ("If-Match", "0", [409, 409, 200, 404]),
        ("If-Match", "\"2\"", [409, 409, 409, 409]),
        ("If-Match", "99999999999999999999", [409, 409, 409, 409]),
        ("If-None-Match", "*", [409, 409, 200, 404]),
        ("If-None-Match", "CUR", [409, 409, 200, 404]),
        ("If-None-Match", "W/CUR", [409, 409, 200, 404]),
        ("If-None-Match", "OLD", [200, 204, 200, 404]),
        ("If-Match", "two", [400, 400, 400, 400]),
        ("If-Match", "", [400, 400, 400, 400]),
        ("If-Match", "-1", [400, 400, 400, 400]),
        ("If-Match", "\"5", [400, 400, 400, 400]),
        ("If-None-Match", "5", [400, 400, 400, 400]),
    ];
    for (header, value, expected) in cases {
        for (column, (exists, method)) in [
            (true, "PUT"),
            (true, "DELETE"),
            (false, "PUT"),
            (false, "DELETE"),
        ]
        .into_iter()
        .enumerate()
        {
            let tags = setup(exists);
            let value = match &tags {
                Some((old, current)) => value.replace("OLD", old).replace("CUR", current),
                None => value
                    .replace("OLD", "\"4294967297\"")
                    .replace("CUR", "\"4294967298\""),
            };
            let before = d.get(path);
            let headers: Vec<(&str, &str)> = if header.is_empty() {
                vec![]
            } else {
                vec![(header, value.as_str())]
            };
            let body = (method == "PUT").then_some(PUT_BODY.as_bytes());
            let r = d.req(method, path, &headers, body);
            let what = format!(
                "{method} {header}: {value} on {}",
                if exists { "v2" } else { "nothing" }
            );
            assert_eq!(r.status, expected[column], "{what}: {}", r.text());
            let after = d.get(path);
            match r.status {
                200 => {
                    assert_eq!(r.header("etag"), after.header("etag"), "{what}");
                    assert_eq!(r.json()["version"], if exists { 3 } else { 1 }, "{what}");
                }
                204 => assert_eq!(after.status, 404, "{what}"),
                code => {
                    assert_eq!(
                        (after.status, after.header("etag")),
                        (before.status, before.header("etag")),
                        "{what}: a refused write changes nothing"
                    );
                    let error = r.json()["error"].as_str().unwrap_or_default().to_owned();
                    if code == 409 {
                        assert!(error.starts_with("version conflict"), "{what}: {error}");
                    }
                }
            }
        }
    }
}

#[test]
fn report_body_and_key_validation() {
    let node = Node::new();
    let d = node.daemon().start();
    let cases: &[(&str, &str)] = &[
        ("/v1/state/report/k", "not json"),
        ("/v1/state/report/k", r#"{"payload":{}}"#),
        ("/v1/state/report/k", r#"{"content_type":"","payload":{}}"#),
        (
            "/v1/state/report/k",
            r#"{"content_type":"application/json"}"#,
        ),
        ("/v1/state/report/k", r#"[1,2]"#),
        ("/v1/state/report/%2E%2E", PUT_BODY),
        ("/v1/state/report/%2E", PUT_BODY),
        ("/v1/state/report/a%2Fb", PUT_BODY),
        ("/v1/state/report/a%5Cb", PUT_BODY),
        ("/v1/state/report/a%00b", PUT_BODY),
        ("/v1/state/report/a%0Ab", PUT_BODY),
        ("/v1/state/report/%zz", PUT_BODY),
    ];
    for (path, body) in cases {
        let r = d.put(path, body);
        assert_eq!(r.status, 400, "{path} {body}: {}", r.text());
        assert!(r.json()["error"].is_string());
    }
    let long = format!("/v1/state/report/{}", "k".repeat(201));
    assert_eq!(d.put(&long, PUT_BODY).status, 400);
    let ok = format!("/v1/state/report/{}", "k".repeat(200));
    assert_eq!(d.put(&ok, PUT_BODY).status, 200);
    // 100 × "ü" is 200 bytes, but 600 once percent-encoded as a file name: a valid key
    // all the same (it was refused with 400), stored under a hashed file name.
    let wide = format!("/v1/state/report/{}", "%C3%BC".repeat(100));
    assert_eq!(d.put(&wide, PUT_BODY).status, 200);
    assert_eq!(d.get(&wide).json()["key"], "ü".repeat(100));
    assert_eq!(d.get("/v1/state/report/%2E%2E").status, 400);
    assert_eq!(d.delete("/v1/state/report/a%2Fb").status, 400);
    assert_eq!(
        d.get("/v1/state/report").json().as_array().unwrap().len(),
        2
    );
    // Both are still there after a restart.
    drop(d);
    let d = node.daemon().start();
    assert_eq!(d.get(&wide).json()["version"], 1);
    assert_eq!(d.get(&ok).status, 200);
}

#[test]
fn unknown_paths_methods_and_head() {
    let node = Node::new();
    let d = node.daemon().start();
    for p in [
        "/",
        "/v1",
        "/v1/state/",
        "/v1/state/nope",
        "/v1/state/data/a/b",
        "/v2/state",
    ] {
        let r = d.get(p);
        assert_eq!(r.status, 404, "{p}");
        assert_eq!(r.json()["error"], "not found");
    }
    let r = d.req("POST", "/v1/state", &[], Some(b"{}"));
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    assert!(r.json()["error"].is_string());
    let r = d.req("POST", "/v1/state/report/k", &[], Some(b"{}"));
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD, PUT, DELETE"));
    assert_eq!(
        d.req("DELETE", "/v1/state/metadata/x", &[], None).status,
        405
    );
    assert_eq!(
        d.req("PUT", "/v1/state/data/x", &[], Some(b"{}")).status,
        405
    );

    let get = d.get("/v1/state");
    let head = d.req("HEAD", "/v1/state", &[], None);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), get.header("content-length"));
    assert!(get.header("date").is_some());
}

#[test]
fn body_over_one_mebibyte_is_refused() {
    let node = Node::new();
    let d = node.daemon().start();
    let big = format!(
        r#"{{"content_type":"text/plain","payload":"{}"}}"#,
        "x".repeat(1024 * 1024 + 10)
    );
    let r = d.put("/v1/state/report/big", &big);
    assert_eq!(r.status, 413);
    assert_eq!(d.get("/v1/state/report/big").status, 404);
    // Just under the limit is fine.
    let ok = format!(
        r#"{{"content_type":"text/plain","payload":"{}"}}"#,
        "x".repeat(1024 * 1000)
    );
    assert_eq!(d.put("/v1/state/report/big", &ok).status, 200);
}

#[test]
fn secrets_are_fetched_live_and_decrypted() {
    let node = Node::new();
    let (cp, d) = demo_daemon(&node);
    cp.set_secret("db/password", "s3cr3t-plaintext");
    let r = d.get("/v1/state/secrets/db%2Fpassword");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["key"], "db/password");
    assert_eq!(v["value"], "s3cr3t-plaintext");
    assert!(v["version"].as_i64().unwrap() >= 1);
    // Rotated upstream: the next read sees the new value (never cached).
    cp.set_secret("db/password", "rotated");
    assert_eq!(
        d.get("/v1/state/secrets/db%2Fpassword").json()["value"],
        "rotated"
    );
    assert_eq!(d.get("/v1/state/secrets/missing").status, 404);
    cp.fail_next(1, 503, None, plexd_nodeapi::devcp::FailRoute::Secrets);
    assert_eq!(d.get("/v1/state/secrets/db%2Fpassword").status, 503);
    // Access is logged without the value.
    let log = d.log_text();
    assert!(log.contains("secret access"), "{log}");
    assert!(!log.contains("s3cr3t-plaintext") && !log.contains("rotated\""));
}

#[test]
fn secrets_without_control_plane_are_unavailable() {
    let node = Node::new();
    let d = node.daemon().start();
    let r = d.get("/v1/state/secrets/anything");
    assert_eq!(r.status, 503);
    assert!(r.json()["error"].is_string());
}

#[test]
fn secret_decryption_failure_is_a_generic_500() {
    let node = Node::new();
    let cp = node.control_plane(true);
    // A daemon holding another NSK cannot open what the control plane encrypted.
    std::fs::write(
        node.path().join("other_nsk"),
        "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100",
    )
    .unwrap();
    let token = node.path().join("node_secret_key");
    let d = node
        .daemon()
        .control_plane(&cp)
        .args([
            "--nsk-file",
            node.path().join("other_nsk").to_str().unwrap(),
        ])
        .args(["--cp-token-file", token.to_str().unwrap()])
        .start();
    let r = d.get("/v1/state/secrets/db-password");
    assert_eq!(r.status, 500);
    let msg = r.json()["error"].as_str().unwrap().to_owned();
    assert!(
        !msg.to_lowercase().contains("aead") && !msg.contains("tag"),
        "{msg}"
    );
}

#[test]
fn tcp_listener_requires_the_bearer_token() {
    let node = Node::new();
    let d = node.daemon().http_with_token("tok-123").start();
    let a = d.tcp.expect("tcp listener");
    assert_eq!(tcp_request(a, "GET", "/v1/state", &[], None).status, 401);
    let r = tcp_request(
        a,
        "GET",
        "/v1/state",
        &[("Authorization", "Bearer wrong")],
        None,
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.json(), serde_json::json!({"error":"unauthorized"}));
    assert_eq!(
        tcp_request(
            a,
            "GET",
            "/v1/state",
            &[("Authorization", "Basic tok-123")],
            None
        )
        .status,
        401
    );
    assert_eq!(
        tcp_request(
            a,
            "GET",
            "/v1/state",
            &[("Authorization", "Bearer tok-12")],
            None
        )
        .status,
        401
    );
    assert_eq!(
        tcp_request(
            a,
            "GET",
            "/v1/state",
            &[("Authorization", "Bearer tok-123")],
            None
        )
        .status,
        200
    );
    assert_eq!(
        tcp_request(
            a,
            "GET",
            "/v1/state",
            &[("Authorization", "bearer tok-123")],
            None
        )
        .status,
        200
    );
    assert_eq!(
        tcp_request(a, "GET", "/nope", &[], None).status,
        401,
        "auth before routing"
    );
    assert_eq!(tcp_request(a, "GET", "/metrics", &[], None).status, 401);
    // The Unix socket needs no token.
    assert_eq!(d.get("/v1/state").status, 200);
}
