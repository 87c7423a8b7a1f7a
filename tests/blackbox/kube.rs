//! The Kubernetes mode, black-box: the real daemon binary with `--kubernetes` against
//! the fake API server (`tests/fakekube`, loaded with the shipped CRD and RBAC only)
//! and the development control plane. Workloads are played by ServiceAccount tokens
//! bound to the shipped consumer Roles (`contrib/kubernetes/workload-example.yaml`),
//! an administrator by a `system:masters` token.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use plexd_nodeapi::devcp::DevControlPlane;
use serde_json::{json, Value};

use crate::common::{self, eventually, DaemonBuilder, Node, TestDaemon, NODE_ID};
use crate::kube_common::{self, free_port, token_file, wait_for, FakeKube, DAEMON_SA, NS};

const CR: &str = "node-n-test";
const NODE_NAME: &str = "node-1";
const DAEMON_USER: &str = "system:serviceaccount:plexd-system:plexd-nodeapi";
const LIMIT: Duration = Duration::from_secs(20);

fn cr_path() -> String {
    format!("/apis/plexd.plexsphere.com/v1alpha1/namespaces/{NS}/plexdnodestates/{CR}")
}

fn secret_path(name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/secrets/{name}")
}

/// A node, its control plane, the fake API server, and the tokens around them.
struct Env {
    node: Node,
    cp: DevControlPlane,
    fake: FakeKube,
    admin: String,
    /// A workload's default (API audience) token, bound to the reader and reporter Roles.
    web: String,
    sa_token: PathBuf,
}

impl Env {
    fn new() -> Env {
        Env::with_fake(FakeKube::start())
    }

    fn with_fake(fake: FakeKube) -> Env {
        let node = Node::new();
        let cp = node.control_plane(true);
        std::fs::write(
            node.path().join("signing_public_key"),
            cp.signing_public_key(),
        )
        .unwrap();
        let daemon_token = fake.token(json!({"sa": DAEMON_SA}));
        let sa_token = token_file(node.path(), "sa-token", &daemon_token);
        let admin = fake.admin_token();
        let web = fake.token(json!({"sa": "apps/web"}));
        Env {
            node,
            cp,
            fake,
            admin,
            web,
            sa_token,
        }
    }

    fn daemon(&self) -> DaemonBuilder<'_> {
        self.daemon_to(&self.fake.url())
    }

    fn daemon_to(&self, url: &str) -> DaemonBuilder<'_> {
        let token = self.sa_token.to_string_lossy().into_owned();
        let ca = kube_common::ca_file().to_string_lossy().into_owned();
        self.node
            .daemon()
            .control_plane(&self.cp)
            .args([
                "--kubernetes",
                "--k8s-api-server",
                url,
                "--k8s-token-file",
                &token,
                "--k8s-ca-file",
                &ca,
                "--k8s-namespace",
                NS,
                "--k8s-node-name",
                NODE_NAME,
                "--mesh-ip",
                "10.100.1.5",
                "--reconcile-interval",
                "2s",
            ])
            .env("PLEXD_NODEAPI_K8S_DEBOUNCE", "50ms")
            .env("PLEXD_NODEAPI_K8S_BACKOFF", "100ms")
    }

    fn cr(&self) -> Option<Value> {
        let (code, body) = self.fake.api("GET", &cr_path(), &self.admin, None, "");
        (code == 200).then_some(body)
    }

    /// The resource once `pred` holds for it.
    fn wait_cr(&self, d: &TestDaemon, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(LIMIT, || self.cr().filter(|c| pred(c))).unwrap_or_else(|| {
            panic!(
                "resource never {what}: {:#}\nlog:\n{}",
                self.cr().unwrap_or_default(),
                d.log_text()
            )
        })
    }

    fn secret(&self, name: &str) -> Option<Value> {
        let (code, body) = self
            .fake
            .api("GET", &secret_path(name), &self.admin, None, "");
        (code == 200).then_some(body)
    }

    /// A workload's merge patch of the status, with the resourceVersion it read.
    fn workload_patch_status(&self, edit: impl Fn(&mut Vec<Value>)) -> u16 {
        for _ in 0..10 {
            let (code, cr) = self.fake.api("GET", &cr_path(), &self.web, None, "");
            assert_eq!(code, 200, "{cr}");
            let mut report = cr["status"]["report"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            edit(&mut report);
            let patch = json!({"metadata": {"resourceVersion": cr["metadata"]["resourceVersion"]},
                               "status": {"report": report}});
            let (code, _) = self.fake.api(
                "PATCH",
                &format!("{}/status", cr_path()),
                &self.web,
                Some(&patch),
                "application/merge-patch+json",
            );
            if code != 409 {
                return code;
            }
        }
        panic!("the status kept conflicting");
    }

    /// Requests the daemon made (by its user agent, so refused ones too), as the
    /// fake recorded them.
    fn daemon_requests(&self) -> Vec<Value> {
        self.fake
            .requests()
            .into_iter()
            .filter(|r| {
                r["user_agent"]
                    .as_str()
                    .is_some_and(|ua| ua.starts_with("plexd-nodeapi/"))
            })
            .collect()
    }
}

fn report<'a>(cr: &'a Value, key: &str) -> Option<&'a Value> {
    cr["status"]["report"]
        .as_array()?
        .iter()
        .find(|r| r["key"] == key)
}

fn health(d: &TestDaemon) -> Value {
    d.get("/v1/health").json()
}

// ---- the resource and its spec ---------------------------------------------------------

#[test]
fn the_resource_mirrors_the_node() {
    let env = Env::new();
    let d = env.daemon().start();
    let cr = env.wait_cr(&d, "complete", |c| {
        c["spec"]["data"].as_array().is_some_and(|a| a.len() == 3)
            && c["spec"]["secretRefs"]
                .as_array()
                .is_some_and(|a| a.len() == 2)
    });
    let spec = &cr["spec"];
    assert_eq!(spec["nodeId"], NODE_ID);
    assert_eq!(spec["meshIp"], "10.100.1.5");
    assert_eq!(spec["metadata"]["region"], "eu-central-1");
    let db = spec["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == "database-config")
        .unwrap();
    assert_eq!(db["contentType"], "application/json");
    assert_eq!(db["payload"]["port"], 5432);
    assert_eq!(db["version"], 1);
    assert!(db["updatedAt"].as_str().is_some_and(|t| t.ends_with('Z')));
    let refs = spec["secretRefs"].as_array().unwrap();
    assert!(refs.contains(&json!({"key": "db-password", "secretName": "plexd-secret-n-test-db-password", "version": 1})));
    let labels = &cr["metadata"]["labels"];
    assert_eq!(labels["plexd.plexsphere.com/node-id"], NODE_ID);
    assert_eq!(labels["plexd.plexsphere.com/k8s-node"], NODE_NAME);
    assert_eq!(labels["app.kubernetes.io/managed-by"], "plexd-nodeapi");

    // The spec follows the control plane; nothing is written when nothing changed,
    // not even for payloads the API server re-encodes (numbers, escapes, key order).
    env.cp.set_metadata("region", "eu-west-1");
    env.cp.remove_data("feature-flags");
    env.cp
        .set_data(
            "normalised",
            "application/json",
            r#"{"z":1.0,"e":1e3,"big":12345678901234567890,"html":"<a&b>","a":[0.5]}"#,
        )
        .unwrap();
    let cr = env.wait_cr(&d, "updated", |c| {
        c["spec"]["metadata"]["region"] == "eu-west-1"
            && c["spec"]["data"].as_array().is_some_and(|a| a.len() == 3)
    });
    // Past a resync (every 2 s here), which re-reads the resource and compares again.
    let generation = cr["metadata"]["generation"].clone();
    let writes = |env: &Env| {
        env.daemon_requests()
            .iter()
            .filter(|r| r["method"] == "PUT" || r["method"] == "PATCH")
            .count()
    };
    let before = writes(&env);
    std::thread::sleep(Duration::from_millis(2300));
    assert_eq!(
        env.cr().unwrap()["metadata"]["generation"],
        generation,
        "no write loop"
    );
    assert_eq!(writes(&env), before, "no write loop");

    // The health section names the resource.
    let h = health(&d);
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["kubernetes"]["connected"], true);
    assert_eq!(h["kubernetes"]["resource"], CR);
    assert_eq!(h["kubernetes"]["namespace"], NS);
    assert!(h["kubernetes"]["resource_version"].is_string());
    assert!(d
        .metric("plexd_nodeapi_k8s_writes_total{what=\"create\",outcome=\"ok\"}")
        .is_some_and(|v| v == 1.0));

    // Every write was valid for the CRD (the fake validates strictly) and needed no retry.
    for r in env.daemon_requests() {
        let code = r["code"].as_u64().unwrap();
        assert!(code < 400 || code == 404 || code == 409, "{r}");
    }
}

#[test]
fn a_foreign_spec_edit_is_reverted_and_foreign_labels_stay() {
    let env = Env::new();
    let d = env.daemon().start();
    let cr = env.wait_cr(&d, "created", |c| {
        c["spec"]["metadata"]["region"].is_string()
    });
    let patch = json!({"metadata": {"labels": {"team": "infra"}, "annotations": {"note": "hi"}},
                       "spec": {"metadata": {"region": "mars", "extra": "x"}, "meshIp": "1.2.3.4"}});
    let (code, _) = env.fake.api(
        "PATCH",
        &cr_path(),
        &env.admin,
        Some(&patch),
        "application/merge-patch+json",
    );
    assert_eq!(code, 200);
    let reverted = env.wait_cr(&d, "reverted", |c| {
        c["spec"]["metadata"]["region"] == "eu-central-1" && c["spec"]["meshIp"] == "10.100.1.5"
    });
    assert!(reverted["spec"]["metadata"].get("extra").is_none());
    assert_eq!(reverted["metadata"]["labels"]["team"], "infra");
    assert_eq!(reverted["metadata"]["annotations"]["note"], "hi");
    assert_eq!(reverted["metadata"]["uid"], cr["metadata"]["uid"]);
    assert!(d.log_text().contains("edited by someone else"));
}

#[test]
fn an_existing_resource_is_adopted() {
    let env = Env::new();
    let existing = json!({
        "apiVersion": "plexd.plexsphere.com/v1alpha1", "kind": "PlexdNodeState",
        "metadata": {"name": CR, "labels": {"owner": "ops"}, "annotations": {"keep": "me"}},
        "spec": {"nodeId": "wrong", "metadata": {"stale": "yes"}},
    });
    let (code, created) = env.fake.api(
        "POST",
        &format!("/apis/plexd.plexsphere.com/v1alpha1/namespaces/{NS}/plexdnodestates"),
        &env.admin,
        Some(&existing),
        "application/json",
    );
    assert_eq!(code, 201, "{created}");
    let d = env.daemon().start();
    let cr = env.wait_cr(&d, "adopted", |c| c["spec"]["nodeId"] == NODE_ID);
    assert_eq!(cr["metadata"]["uid"], created["metadata"]["uid"]);
    assert_eq!(cr["metadata"]["labels"]["owner"], "ops");
    assert_eq!(cr["metadata"]["annotations"]["keep"], "me");
    assert!(cr["spec"]["metadata"].get("stale").is_none());
    // Never an update without a resourceVersion, and a create that raced was a GET.
    for r in env.daemon_requests() {
        if r["method"] == "PUT" {
            assert!(r["body"]["metadata"]["resourceVersion"].is_string(), "{r}");
        }
    }
}

#[test]
fn a_name_taken_by_another_node_gets_the_hashed_name() {
    let env = Env::new();
    // Node "n-test" sanitises like our "n_test" and got there first.
    let theirs = json!({
        "apiVersion": "plexd.plexsphere.com/v1alpha1", "kind": "PlexdNodeState",
        "metadata": {"name": CR, "labels": {"plexd.plexsphere.com/node-id": "n-test"}},
        "spec": {"nodeId": "n-test"},
    });
    let (code, _) = env.fake.api(
        "POST",
        &format!("/apis/plexd.plexsphere.com/v1alpha1/namespaces/{NS}/plexdnodestates"),
        &env.admin,
        Some(&theirs),
        "application/json",
    );
    assert_eq!(code, 201);
    let d = env.daemon().start();
    let hash = plexd_nodeapi::kube::names::short_hash(NODE_ID);
    let ours = format!("{CR}-{hash}");
    let path =
        format!("/apis/plexd.plexsphere.com/v1alpha1/namespaces/{NS}/plexdnodestates/{ours}");
    let cr = wait_for(LIMIT, || {
        let (code, body) = env.fake.api("GET", &path, &env.admin, None, "");
        (code == 200 && body["spec"]["secretRefs"].is_array()).then_some(body)
    })
    .unwrap_or_else(|| panic!("{}", d.log_text()));
    assert_eq!(cr["spec"]["nodeId"], NODE_ID);
    assert_eq!(
        cr["spec"]["secretRefs"][0]["secretName"],
        format!("plexd-secret-n-test-{hash}-api-token")
    );
    assert!(wait_for(LIMIT, || env
        .secret(&format!("plexd-secret-n-test-{hash}-api-token")))
    .is_some());
    // The other node's resource is untouched.
    assert_eq!(env.cr().unwrap()["spec"], json!({"nodeId": "n-test"}));
    assert!(eventually(LIMIT, || health(&d)["kubernetes"]["resource"]
        == ours.as_str()));
}

// ---- reports both ways ------------------------------------------------------------------

#[test]
fn reports_flow_both_ways() {
    let env = Env::new();
    let d = env.daemon().start();
    env.wait_cr(&d, "created", |_| true);

    // A socket write appears in the status, with the store's version.
    let r = d.put(
        "/v1/state/report/app-health",
        r#"{"content_type":"application/json","payload":{"status":"healthy"}}"#,
    );
    assert_eq!(r.status, 200);
    let cr = env.wait_cr(&d, "showing the socket report", |c| {
        report(c, "app-health").is_some()
    });
    let item = report(&cr, "app-health").unwrap();
    assert_eq!(item["payload"], json!({"status": "healthy"}));
    assert_eq!(item["version"], 1);
    assert_eq!(item["contentType"], "application/json");

    // A workload creates an entry in Kubernetes: imported as a socket PUT would be.
    let code = env.workload_patch_status(|report| {
        report.push(
            json!({"key": "job-7", "contentType": "text/plain", "payload": "done", "version": 99}),
        )
    });
    assert_eq!(code, 200);
    assert!(
        eventually(LIMIT, || d.get("/v1/state/report/job-7").status == 200),
        "{}",
        d.log_text()
    );
    let stored = d.get("/v1/state/report/job-7").json();
    assert_eq!(stored["payload"], "done");
    assert_eq!(
        stored["version"], 1,
        "the workload's version is not authoritative"
    );
    // ... written back with the store's version, and synced to the control plane.
    env.wait_cr(&d, "normalised", |c| {
        report(c, "job-7").is_some_and(|r| r["version"] == 1 && r["updatedAt"].is_string())
    });
    assert!(eventually(LIMIT, || env.cp.reports().contains_key("job-7")));

    // A workload changes it: a new version.
    env.workload_patch_status(|report| {
        for r in report.iter_mut() {
            if r["key"] == "job-7" {
                r["payload"] = json!({"done": true, "took": 1.0});
            }
        }
    });
    assert!(eventually(LIMIT, || {
        d.get("/v1/state/report/job-7").json()["version"] == 2
    }));
    assert_eq!(
        d.get("/v1/state/report/job-7").json()["payload"],
        json!({"done": true, "took": 1})
    );

    // A workload deletes it: deleted in the store and upstream.
    env.workload_patch_status(|report| report.retain(|r| r["key"] != "job-7"));
    assert!(eventually(LIMIT, || d.get("/v1/state/report/job-7").status == 404));
    assert!(eventually(LIMIT, || !env
        .cp
        .reports()
        .contains_key("job-7")));

    // A socket delete removes it from the status.
    assert_eq!(d.delete("/v1/state/report/app-health").status, 204);
    env.wait_cr(&d, "without app-health", |c| {
        report(c, "app-health").is_none()
    });
    assert_eq!(
        d.metric("plexd_nodeapi_k8s_reports_imported_total{change=\"put\"}"),
        Some(2.0)
    );
    assert_eq!(
        d.metric("plexd_nodeapi_k8s_reports_imported_total{change=\"delete\"}"),
        Some(1.0)
    );
}

#[test]
fn invalid_workload_entries_are_left_alone_and_counted_once() {
    let env = Env::new();
    let d = env.daemon().start();
    env.wait_cr(&d, "created", |_| true);
    let bad = [
        json!({"key": "a/b", "contentType": "text/plain", "payload": "x"}),
        json!({"key": "no-type", "payload": "x"}),
        json!({"key": "no-payload", "contentType": "text/plain"}),
    ];
    // A valid key whose encoded file name would be too long is imported all the same
    // (the store gives it a hashed file name).
    let wide = json!({"key": "ü".repeat(100), "contentType": "text/plain", "payload": "x"});
    env.workload_patch_status(|report| {
        report.extend(bad.iter().cloned());
        report.push(wide.clone());
    });
    // Trigger more passes: they must not touch or re-log the bad entries.
    for i in 0..3 {
        d.put(
            &format!("/v1/state/report/ok-{i}"),
            r#"{"content_type":"text/plain","payload":"fine"}"#,
        );
    }
    let cr = env.wait_cr(&d, "with the socket reports", |c| {
        (0..3).all(|i| report(c, &format!("ok-{i}")).is_some())
    });
    for b in &bad {
        assert!(
            cr["status"]["report"].as_array().unwrap().contains(b),
            "{b} left untouched: {cr:#}"
        );
    }
    for key in ["a/b", "no-type", "no-payload"] {
        assert_ne!(
            d.get(&format!("/v1/state/report/{}", key.replace('/', "%2F")))
                .status,
            200
        );
    }
    assert_eq!(
        d.get(&format!("/v1/state/report/{}", "%C3%BC".repeat(100)))
            .json()["payload"],
        "x"
    );
    assert_eq!(
        d.metric("plexd_nodeapi_k8s_reports_rejected_total{reason=\"key\"}"),
        Some(1.0)
    );
    assert_eq!(
        d.metric("plexd_nodeapi_k8s_reports_rejected_total{reason=\"content_type\"}"),
        Some(1.0)
    );
    assert_eq!(
        d.metric("plexd_nodeapi_k8s_reports_rejected_total{reason=\"payload\"}"),
        Some(1.0)
    );
    assert_eq!(
        d.log_text()
            .matches("invalid entry in .status.report")
            .count(),
        3,
        "logged once each"
    );
}

#[test]
fn a_workload_entry_over_the_quota_waits_in_place_and_blocks_nothing() {
    let env = Env::new();
    let d = env.daemon().args(["--max-report-keys", "2"]).start();
    env.wait_cr(&d, "created", |_| true);
    for key in ["a", "b"] {
        let body = r#"{"content_type":"text/plain","payload":"1"}"#;
        assert_eq!(d.put(&format!("/v1/state/report/{key}"), body).status, 200);
    }
    env.wait_cr(&d, "with a and b", |c| {
        report(c, "a").is_some() && report(c, "b").is_some()
    });
    // The quota is full: a workload's new entry stays in the status, not imported.
    let job = json!({"key": "job", "contentType": "text/plain", "payload": "done"});
    env.workload_patch_status(|report| report.push(job.clone()));
    assert!(
        eventually(LIMIT, || {
            d.metric("plexd_nodeapi_k8s_reports_rejected_total{reason=\"quota\"}") == Some(1.0)
        }),
        "log:\n{}",
        d.log_text()
    );
    assert_eq!(d.get("/v1/state/report/job").status, 404);
    // Socket writes are still mirrored, and the waiting entry is kept beside them.
    let body = r#"{"content_type":"text/plain","payload":"2"}"#;
    assert_eq!(d.put("/v1/state/report/a", body).status, 200);
    let cr = env.wait_cr(&d, "with a's update", |c| {
        report(c, "a").is_some_and(|r| r["payload"] == "2")
    });
    assert_eq!(report(&cr, "job"), Some(&job), "{cr:#}");
    // Room again: the entry is imported by the next pass, like any workload write.
    assert_eq!(d.delete("/v1/state/report/b").status, 204);
    assert!(
        eventually(LIMIT, || d.get("/v1/state/report/job").status == 200),
        "log:\n{}",
        d.log_text()
    );
    assert_eq!(d.get("/v1/state/report/job").json()["payload"], "done");
    let cr = env.wait_cr(&d, "without b", |c| report(c, "b").is_none());
    assert!(
        report(&cr, "job").is_some_and(|r| r["version"].is_i64()),
        "{cr:#}"
    );
    assert_eq!(
        d.log_text().matches("the report quota is full").count(),
        1,
        "logged once"
    );
}

#[test]
fn bursts_of_socket_writes_are_coalesced() {
    let env = Env::new();
    let d = env
        .daemon()
        .env("PLEXD_NODEAPI_K8S_DEBOUNCE", "250ms")
        .start();
    env.wait_cr(&d, "created", |_| true);
    let before = env
        .daemon_requests()
        .iter()
        .filter(|r| r["method"] == "PATCH")
        .count();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let socket = d.socket.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    let body = format!(r#"{{"content_type":"text/plain","payload":{i}}}"#);
                    let r = common::try_request(
                        &socket,
                        "PUT",
                        &format!("/v1/state/report/burst-{w}-{}", i % 25),
                        &[],
                        Some(body.as_bytes()),
                    )
                    .unwrap();
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    env.wait_cr(&d, "with the last writes", |c| {
        (0..4).all(|w| {
            (0..25).all(|k| {
                report(c, &format!("burst-{w}-{k}"))
                    .is_some_and(|r| r["payload"].as_i64() == Some(475 + k))
            })
        })
    });
    let patches = env
        .daemon_requests()
        .iter()
        .filter(|r| r["method"] == "PATCH")
        .count()
        - before;
    assert!(
        (1..=25).contains(&patches),
        "2000 socket writes became {patches} status writes"
    );
}

#[test]
fn imported_reports_survive_sigkill() {
    let env = Env::new();
    let d = env.daemon().start();
    env.wait_cr(&d, "created", |_| true);
    env.workload_patch_status(|report| {
        report
            .push(json!({"key": "durable", "contentType": "application/json", "payload": {"n": 1}}))
    });
    assert!(eventually(LIMIT, || d
        .get("/v1/state/report/durable")
        .status
        == 200));
    // Stop the control plane so the entry is still pending upstream, then kill.
    let pid = d.pid();
    d.kill();
    assert!(pid > 0);
    let d = env.daemon().start();
    let r = d.get("/v1/state/report/durable");
    assert_eq!(r.status, 200, "acknowledged import lost");
    assert_eq!(r.json()["payload"], json!({"n": 1}));
    assert!(eventually(LIMIT, || env
        .cp
        .reports()
        .contains_key("durable")));
    // After the restart nothing was imported twice nor deleted.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(d.get("/v1/state/report/durable").json()["version"], 1);
}

// ---- Secrets ----------------------------------------------------------------------------

fn decrypt(secret: &Value) -> String {
    let data = &secret["data"];
    let nsk = Node::nsk();
    let plaintext = plexd_nodeapi::secrets::cipher::decrypt_secret(
        &nsk,
        data["value"].as_str().unwrap(),
        data["nonce"].as_str().unwrap(),
    )
    .expect("the Secret holds NSK ciphertext");
    plaintext.as_str().to_owned()
}

#[test]
fn secrets_hold_only_ciphertext_and_follow_the_index() {
    let env = Env::new();
    let d = env.daemon().start();
    let cr = env.wait_cr(&d, "created", |c| c["spec"]["secretRefs"].is_array());
    let uid = cr["metadata"]["uid"].as_str().unwrap().to_owned();
    let name = "plexd-secret-n-test-db-password";
    let s = wait_for(LIMIT, || env.secret(name)).expect("Secret written");
    assert_eq!(s["type"], "Opaque");
    let ann = &s["metadata"]["annotations"];
    assert_eq!(ann["plexd.plexsphere.com/encrypted"], "true");
    assert_eq!(
        ann["plexd.plexsphere.com/encryption-algorithm"],
        "AES-256-GCM"
    );
    assert_eq!(
        s["metadata"]["ownerReferences"],
        json!([{"apiVersion": "plexd.plexsphere.com/v1alpha1", "kind": "PlexdNodeState",
                "name": CR, "uid": uid, "controller": true}])
    );
    let raw = base64::engine::general_purpose::STANDARD
        .decode(s["data"]["value"].as_str().unwrap())
        .unwrap();
    assert!(!String::from_utf8_lossy(&raw).contains("dev-only-password"));
    assert_eq!(decrypt(&s), "dev-only-password");

    // A new version rewrites it; a removed ref deletes it.
    env.cp.set_secret("db-password", "rotated");
    let s = wait_for(LIMIT, || {
        env.secret(name)
            .filter(|s| s["metadata"]["annotations"]["plexd.plexsphere.com/version"] == "2")
    })
    .expect("rewritten");
    assert_eq!(decrypt(&s), "rotated");
    env.cp.remove_secret("api-token");
    assert!(
        wait_for(LIMIT, || env
            .secret("plexd-secret-n-test-api-token")
            .is_none()
            .then_some(()))
        .is_some(),
        "{}",
        d.log_text()
    );
    // Never a list of Secrets.
    for r in env.daemon_requests() {
        assert!(
            !(r["resource"] == "secrets" && (r["verb"] == "list" || r["verb"] == "watch")),
            "{r}"
        );
    }
}

#[test]
fn a_deleted_resource_is_recreated_with_everything() {
    let env = Env::new();
    let d = env.daemon().start();
    d.put(
        "/v1/state/report/app-health",
        r#"{"content_type":"application/json","payload":{"ok":true}}"#,
    );
    let old = env.wait_cr(&d, "with the report", |c| report(c, "app-health").is_some());
    wait_for(LIMIT, || env.secret("plexd-secret-n-test-db-password")).expect("Secret");
    let old_uid = old["metadata"]["uid"].clone();
    let (code, _) = env.fake.api("DELETE", &cr_path(), &env.admin, None, "");
    assert_eq!(code, 200);
    let new = env.wait_cr(&d, "recreated with its reports", |c| {
        c["metadata"]["uid"] != old_uid && report(c, "app-health").is_some()
    });
    let new_uid = new["metadata"]["uid"].clone();
    // The Secrets point at the new owner (re-pointed, or re-created after the GC).
    let s = wait_for(LIMIT, || {
        env.secret("plexd-secret-n-test-db-password")
            .filter(|s| s["metadata"]["ownerReferences"][0]["uid"] == new_uid)
    })
    .expect("Secret owned by the new resource");
    assert_eq!(decrypt(&s), "dev-only-password");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        env.secret("plexd-secret-n-test-db-password").is_some(),
        "survives the GC"
    );
    // The store kept its report: it was pushed, not deleted.
    assert_eq!(d.get("/v1/state/report/app-health").status, 200);
}

#[test]
fn sigterm_leaves_the_resource_and_secrets() {
    let env = Env::new();
    let d = env.daemon().start();
    env.wait_cr(&d, "created", |_| true);
    wait_for(LIMIT, || env.secret("plexd-secret-n-test-db-password")).expect("Secret");
    assert!(d.stop().success());
    assert!(env.cr().is_some());
    assert!(env.secret("plexd-secret-n-test-db-password").is_some());
    assert!(env
        .daemon_requests()
        .iter()
        .all(|r| r["method"] != "DELETE" || r["resource"] != "plexdnodestates"));
}

// ---- the watch --------------------------------------------------------------------------

#[test]
fn the_watch_relists_after_410_and_resumes_after_drops() {
    let env = Env::new();
    env.fake
        .control("config", json!({"bookmark_interval": 0.2}));
    let d = env
        .daemon()
        .env("PLEXD_NODEAPI_K8S_WATCH_TIMEOUT", "2s")
        .start();
    env.wait_cr(&d, "created", |_| true);
    assert!(eventually(LIMIT, || health(&d)["kubernetes"]["watching"] == true));
    // The stream goes silent, the resource changes, etcd compacts, the stream is cut:
    // the resume from the old resourceVersion gets an ERROR 410 event, and the daemon
    // starts over without one (a relist, with the current object as ADDED).
    env.fake.control("config", json!({"stalled": true}));
    let (code, _) = env.fake.api(
        "PATCH",
        &cr_path(),
        &env.admin,
        Some(&json!({"metadata": {"labels": {"touched": "yes"}}})),
        "application/merge-patch+json",
    );
    assert_eq!(code, 200);
    env.fake.control("compact", json!({}));
    env.fake.control("drop-watches", json!({}));
    env.fake.control("config", json!({"stalled": false}));
    assert!(
        eventually(LIMIT, || d
            .metric("plexd_nodeapi_k8s_watch_restarts_total{reason=\"expired\"}")
            .is_some_and(|v| v >= 1.0)),
        "{}",
        d.log_text()
            .lines()
            .filter(|l| l.contains("watch"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The watch works again: a workload edit arrives without waiting for a resync.
    env.workload_patch_status(|report| {
        report.push(json!({"key": "after-410", "contentType": "text/plain", "payload": "x"}))
    });
    assert!(eventually(Duration::from_secs(5), || d
        .get("/v1/state/report/after-410")
        .status
        == 200));
    let watches: Vec<Value> = env
        .daemon_requests()
        .into_iter()
        .filter(|r| r["verb"] == "watch")
        .collect();
    assert!(watches
        .iter()
        .any(|w| w["query"].get("resourceVersion").is_none()));
    assert!(watches.iter().all(
        |w| w["query"]["fieldSelector"] == format!("metadata.name={CR}")
            && w["query"]["allowWatchBookmarks"] == "true"
    ));
    // Streams that end at their timeout are resumed from the last resourceVersion
    // (bookmarks keep it fresh).
    std::thread::sleep(Duration::from_millis(2500));
    let resumed = env
        .daemon_requests()
        .into_iter()
        .filter(|r| r["verb"] == "watch" && r["query"].get("resourceVersion").is_some())
        .count();
    assert!(resumed >= 1);
}

// ---- credentials and outages ------------------------------------------------------------

#[test]
fn a_rotated_token_is_picked_up_after_a_401() {
    let env = Env::new();
    let d = env.daemon().start();
    env.wait_cr(&d, "created", |_| true);
    let old = std::fs::read_to_string(&env.sa_token).unwrap();
    let new = env.fake.token(json!({"sa": DAEMON_SA}));
    std::fs::write(&env.sa_token, format!("{new}\n")).unwrap();
    env.fake.control("revoke", json!({"token": old.trim()}));
    env.fake.control("drop-watches", json!({}));
    d.put(
        "/v1/state/report/after-rotation",
        r#"{"content_type":"text/plain","payload":"x"}"#,
    );
    env.wait_cr(&d, "updated with the new token", |c| {
        report(c, "after-rotation").is_some()
    });
    let requests = env.daemon_requests();
    assert!(
        requests.iter().any(|r| r["code"] == 401),
        "the old token was refused"
    );
    let last = requests.last().unwrap();
    assert_ne!(last["code"], 401);
    assert_eq!(health(&d)["kubernetes"]["connected"], true);
}

#[test]
fn an_api_server_down_at_start_delays_nothing() {
    let port = free_port();
    let node_env = Env::new();
    let url = format!("https://127.0.0.1:{port}");
    let started = Instant::now();
    let d = node_env.daemon_to(&url).start();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(d.get("/v1/state").status, 200, "the socket serves at once");
    assert!(eventually(LIMIT, || {
        let h = health(&d);
        h["status"] == "degraded"
            && h["kubernetes"]["connected"] == false
            && h["kubernetes"]["last_error"].is_string()
    }));
    // Reports written meanwhile are durable and reach the resource later.
    d.put(
        "/v1/state/report/offline",
        r#"{"content_type":"text/plain","payload":"x"}"#,
    );
    let fake = FakeKube::start_with(port, &kube_common::shipped_manifests(), &[]);
    let token = fake.token(json!({"sa": DAEMON_SA}));
    std::fs::write(&node_env.sa_token, token).unwrap();
    let admin = fake.admin_token();
    let cr = wait_for(Duration::from_secs(30), || {
        let (code, body) = fake.api("GET", &cr_path(), &admin, None, "");
        (code == 200 && report(&body, "offline").is_some()).then_some(body)
    });
    assert!(cr.is_some(), "{}", d.log_text());
    assert!(eventually(LIMIT, || health(&d)["status"] == "ok"));
}

#[test]
fn outages_back_off_honour_retry_after_and_recover() {
    let env = Env::new();
    let d = env.daemon().start();
    env.wait_cr(&d, "created", |_| true);
    env.fake.control(
        "faults",
        json!({"rules": [
            {"path": "/apis/plexd.plexsphere.com", "code": 429, "retry_after": 1, "count": 1, "watch": false, "agent": "plexd-nodeapi"},
            {"path": "/apis/plexd.plexsphere.com", "code": 503, "count": 3, "watch": false, "agent": "plexd-nodeapi"}]}),
    );
    d.put(
        "/v1/state/report/during-outage",
        r#"{"content_type":"text/plain","payload":"x"}"#,
    );
    env.wait_cr(&d, "caught up", |c| report(c, "during-outage").is_some());
    let faulted: Vec<Value> = env
        .daemon_requests()
        .into_iter()
        .filter(|r| r["fault"] == true)
        .collect();
    assert_eq!(
        faulted.len(),
        4,
        "{:#?}",
        env.daemon_requests()
            .iter()
            .map(|r| format!(
                "{} {} {} {} {}",
                r["time"], r["method"], r["path"], r["code"], r["fault"]
            ))
            .collect::<Vec<_>>()
    );
    let after_429 = env
        .daemon_requests()
        .into_iter()
        .filter(|r| r["time"].as_f64() > faulted[0]["time"].as_f64() && r["verb"] != "watch")
        .map(|r| r["time"].as_f64().unwrap())
        .next()
        .unwrap();
    assert!(
        after_429 - faulted[0]["time"].as_f64().unwrap() >= 0.9,
        "Retry-After honoured"
    );
    assert!(eventually(LIMIT, || health(&d)["status"] == "ok"));
}

#[test]
fn missing_rbac_or_crd_shows_in_health() {
    // The fake without the shipped RBAC: every call of the daemon is forbidden.
    let crd_only = vec![kube_common::root().join("contrib/kubernetes/crd.yaml")];
    let env = Env::with_fake(FakeKube::start_with(0, &crd_only, &[]));
    let d = env.daemon().start();
    assert!(eventually(LIMIT, || {
        let h = health(&d);
        h["status"] == "degraded"
            && h["kubernetes"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("forbidden"))
    }));
    assert_eq!(d.get("/v1/state").status, 200);
    // And with RBAC but without the CRD.
    let env = Env::new();
    env.fake.control("config", json!({"crd_served": false}));
    let d = env.daemon().start();
    assert!(eventually(LIMIT, || {
        health(&d)["kubernetes"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("CRD plexdnodestates.plexd.plexsphere.com not served"))
    }));
    env.fake.control("config", json!({"crd_served": true}));
    env.wait_cr(&d, "created once the CRD is there", |_| true);
}

#[test]
fn missing_in_cluster_values_exit_2_before_binding() {
    let node = Node::new();
    let out = common::command()
        .args(["serve", "--kubernetes", "--data-dir"])
        .arg(node.path())
        .arg("--socket")
        .arg(node.socket())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env_remove("POD_NAMESPACE")
        .env_remove("MY_NODE_NAME")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--k8s-api-server"), "{stderr}");
    assert!(!node.socket().exists(), "nothing was bound");
    // With the server but no node name: that field is named.
    let token = token_file(node.path(), "t", "x");
    let out = common::command()
        .args([
            "serve",
            "--kubernetes",
            "--k8s-api-server",
            "https://127.0.0.1:6443",
        ])
        .arg("--k8s-token-file")
        .arg(&token)
        .arg("--k8s-ca-file")
        .arg(kube_common::ca_file())
        .args(["--k8s-namespace", NS])
        .arg("--data-dir")
        .arg(node.path())
        .arg("--socket")
        .arg(node.socket())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env_remove("POD_NAMESPACE")
        .env_remove("MY_NODE_NAME")
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--k8s-node-name"));
}

// ---- least privilege --------------------------------------------------------------------

#[test]
fn the_shipped_rbac_is_enough_and_every_grant_is_used() {
    let env = Env::new();
    let d = env.daemon().start();
    env.wait_cr(&d, "created", |_| true);
    d.put(
        "/v1/state/report/r",
        r#"{"content_type":"text/plain","payload":"x"}"#,
    );
    env.wait_cr(&d, "with the report", |c| report(c, "r").is_some());
    wait_for(LIMIT, || env.secret("plexd-secret-n-test-db-password")).expect("Secret");
    env.cp.set_secret("db-password", "v2");
    env.cp.remove_secret("api-token");
    wait_for(LIMIT, || {
        env.secret("plexd-secret-n-test-api-token")
            .is_none()
            .then_some(())
    })
    .expect("Secret deleted");
    wait_for(LIMIT, || {
        env.secret("plexd-secret-n-test-db-password")
            .filter(|s| s["metadata"]["annotations"]["plexd.plexsphere.com/version"] == "2")
    })
    .expect("Secret updated");
    // A foreign spec edit makes the daemon update the main resource.
    env.fake.api(
        "PATCH",
        &cr_path(),
        &env.admin,
        Some(&json!({"spec": {"meshIp": "9.9.9.9"}})),
        "application/merge-patch+json",
    );
    env.wait_cr(&d, "reverted", |c| c["spec"]["meshIp"] == "10.100.1.5");

    let requests = env.daemon_requests();
    let forbidden: Vec<&Value> = requests.iter().filter(|r| r["code"] == 403).collect();
    assert!(forbidden.is_empty(), "{forbidden:?}");
    let used: std::collections::BTreeSet<(String, String)> = requests
        .iter()
        .filter(|r| r["user"] == DAEMON_USER && r["code"] != 403)
        .map(|r| {
            let res = match r["subresource"].as_str() {
                Some(sub) => format!("{}/{sub}", r["resource"].as_str().unwrap()),
                None => r["resource"].as_str().unwrap_or("").to_owned(),
            };
            (res, r["verb"].as_str().unwrap_or("").to_owned())
        })
        .collect();
    // Every verb the shipped Role grants.
    let rbac: Value = serde_yaml_role();
    for (resource, verb) in rbac_grants(&rbac) {
        assert!(
            used.contains(&(resource.clone(), verb.clone())),
            "granted but never used: {verb} {resource}; used: {used:?}"
        );
    }

    // Every object the daemon sent, and every object stored, validates offline: the
    // resource against the shipped CRD, Secrets against Kubernetes' strict schema.
    let mut objects: Vec<Value> = requests
        .iter()
        .filter(|r| matches!(r["method"].as_str(), Some("POST" | "PUT")))
        .map(|r| r["body"].clone())
        .collect();
    objects.extend(env.fake.objects("plexdnodestates"));
    objects.extend(env.fake.objects("secrets"));
    assert!(objects.iter().any(|o| o["kind"] == "Secret"));
    assert!(objects.iter().any(|o| o["kind"] == "PlexdNodeState"));
    kube_common::validate_values(env.node.path(), &objects);
}

#[test]
fn the_shipped_manifests_validate_offline() {
    let files: Vec<PathBuf> = std::fs::read_dir(kube_common::root().join("contrib/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert!(files.len() >= 8, "{files:?}");
    kube_common::validate_objects(&files);
}

/// The `plexd-nodeapi` Role of `contrib/kubernetes/rbac.yaml`, through the fake's YAML.
fn serde_yaml_role() -> Value {
    let text =
        std::fs::read_to_string(kube_common::root().join("contrib/kubernetes/rbac.yaml")).unwrap();
    let out = Command::new(kube_common::python())
        .args([
            "-c",
            "import sys, yaml, json; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d and d['kind'] == 'Role'][0]))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(text.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

fn rbac_grants(role: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        for res in rule["resources"].as_array().unwrap() {
            for verb in rule["verbs"].as_array().unwrap() {
                out.push((
                    res.as_str().unwrap().to_owned(),
                    verb.as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    out
}

// ---- kubectl as a workload --------------------------------------------------------------

/// `kubectl` if present and at least 1.24 (`patch --subresource`).
fn kubectl() -> Option<String> {
    let out = Command::new("kubectl")
        .args(["version", "--client", "-o", "json"])
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let minor: u32 = v["clientVersion"]["minor"]
        .as_str()?
        .trim_end_matches('+')
        .parse()
        .ok()?;
    (v["clientVersion"]["major"] == "1" && minor >= 24).then(|| "kubectl".to_owned())
}

#[test]
fn kubectl_reads_and_reports_as_a_workload() {
    let Some(kubectl) = kubectl() else {
        eprintln!("skipped: kubectl >= 1.24 is not installed");
        return;
    };
    let env = Env::new();
    let d = env.daemon().start();
    env.wait_cr(&d, "created", |c| c["spec"]["data"].is_array());
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("kubeconfig");
    std::fs::write(
        &config,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"{}\", certificate-authority: \"{}\"}}}}]\nusers: [{{name: web, user: {{token: \"{}\"}}}}]\ncontexts: [{{name: fake, context: {{cluster: fake, user: web, namespace: {NS}}}}}]\ncurrent-context: fake\n",
            env.fake.url(),
            kube_common::ca_file().display(),
            env.web
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(&kubectl)
            .args(args)
            .arg("--cache-dir")
            .arg(home.path().join("cache"))
            .env("KUBECONFIG", &config)
            .env("HOME", home.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = run(&["get", "pns"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(CR) && out.contains(NODE_ID) && out.contains("10.100.1.5"),
        "{out}"
    );
    let (ok, out) = run(&["get", "pns", CR, "-o", "jsonpath={.spec.metadata.region}"]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "eu-central-1");
    let (ok, out) = run(&[
        "patch",
        "pns",
        CR,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"report":[{"key":"first","contentType":"text/plain","payload":"x"}]}}"#,
    ]);
    assert!(ok, "{out}");
    // Appending with a JSON patch leaves the other entries alone.
    let (ok, out) = run(&[
        "patch",
        "pns",
        CR,
        "--subresource=status",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/status/report/-","value":{"key":"from-kubectl","contentType":"application/json","payload":{"ok":true}}}]"#,
    ]);
    assert!(ok, "{out}");
    assert!(
        eventually(LIMIT, || d.get("/v1/state/report/from-kubectl").status
            == 200),
        "{}",
        d.log_text()
    );
    assert_eq!(
        d.get("/v1/state/report/from-kubectl").json()["payload"],
        json!({"ok": true})
    );
    assert_eq!(d.get("/v1/state/report/first").status, 200);
    let (ok, out) = run(&[
        "patch",
        "pns",
        CR,
        "--type=merge",
        "-p",
        r#"{"spec":{"meshIp":"1.1.1.1"}}"#,
    ]);
    assert!(
        !ok && out.contains("forbidden"),
        "the spec is plexd's: {out}"
    );
}

// ---- the node-local endpoint with workload tokens ---------------------------------------

/// A Role granting `apps/web` the ciphertext Secret of `db-password` on this node only.
const WEB_SECRET_RBAC: &str = "apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: web-n-test, namespace: plexd-system}
rules:
  - apiGroups: [\"\"]
    resources: [\"secrets\"]
    resourceNames: [\"plexd-secret-n-test-db-password\"]
    verbs: [\"get\"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: web-n-test, namespace: plexd-system}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: web-n-test}
subjects: [{kind: ServiceAccount, name: web, namespace: apps}]
";

fn tcp(d: &TestDaemon, method: &str, path: &str, token: &str, body: Option<&str>) -> common::Resp {
    let auth = format!("Bearer {token}");
    common::tcp_request(
        d.tcp.expect("tcp listener"),
        method,
        path,
        &[("Authorization", auth.as_str())],
        body.map(str::as_bytes),
    )
}

#[test]
fn workload_tokens_are_reviewed_on_the_tcp_listener() {
    let env = Env::new();
    env.fake.control("rbac", json!({"yaml": WEB_SECRET_RBAC}));
    let d = env
        .daemon()
        .http_with_token("static-operator-token")
        .start();
    env.wait_cr(&d, "created", |c| c["spec"]["secretRefs"].is_array());
    let plexd_token = |sa: &str, node: &str| {
        env.fake
            .token(json!({"sa": sa, "audiences": ["plexd"], "node": node, "pod": "web-1"}))
    };
    let web = plexd_token("apps/web", NODE_NAME);

    // The plaintext, for the key whose Secret the workload may get.
    let r = tcp(&d, "GET", "/v1/state/secrets/db-password", &web, None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"], "dev-only-password");
    assert!(d
        .log_text()
        .contains("system:serviceaccount:apps:web pod=web-1"));
    // ... but not for another key.
    let r = tcp(&d, "GET", "/v1/state/secrets/api-token", &web, None);
    assert_eq!(r.status, 403, "{}", r.text());
    // Reads need the reader Role, report writes the reporter Role (both bound to web).
    assert_eq!(tcp(&d, "GET", "/v1/state", &web, None).status, 200);
    let r = tcp(
        &d,
        "PUT",
        "/v1/state/report/from-tcp",
        &web,
        Some(r#"{"content_type":"text/plain","payload":"x"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(d.get("/v1/state/report/from-tcp").status, 200);
    assert_eq!(
        tcp(&d, "DELETE", "/v1/state/report/from-tcp", &web, None).status,
        204
    );
    // The status pages need the static token.
    assert_eq!(tcp(&d, "GET", "/metrics", &web, None).status, 403);
    assert_eq!(
        tcp(&d, "GET", "/metrics", "static-operator-token", None).status,
        200
    );

    // Refusals: another audience (an API-server token) 401; no bindings 403; a pod on
    // another node 403; garbage 401.
    let api_token = env.fake.token(json!({"sa": "apps/web"}));
    let r = tcp(&d, "GET", "/v1/state", &api_token, None);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let nobody = plexd_token("apps/nobody", NODE_NAME);
    assert_eq!(tcp(&d, "GET", "/v1/state", &nobody, None).status, 403);
    let elsewhere = plexd_token("apps/web", "node-2");
    assert_eq!(tcp(&d, "GET", "/v1/state", &elsewhere, None).status, 403);
    assert_eq!(tcp(&d, "GET", "/v1/state", "garbage", None).status, 401);

    // Answers are cached by token: no new review for a repeated request.
    let reviews = |env: &Env| env.fake.stats()["tokenreviews"].as_u64().unwrap();
    let before = reviews(&env);
    for _ in 0..5 {
        assert_eq!(tcp(&d, "GET", "/v1/state/metadata", &web, None).status, 200);
    }
    assert_eq!(reviews(&env), before);

    // The API server cannot be asked: 503 with Retry-After, not 401.
    env.fake.control(
        "faults",
        json!({"rules": [{"path": "/apis/authentication.k8s.io", "code": 503, "count": 1}]}),
    );
    let fresh = plexd_token("apps/web", NODE_NAME);
    let r = tcp(&d, "GET", "/v1/state", &fresh, None);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        tcp(&d, "GET", "/v1/state", &fresh, None).status,
        200,
        "not cached"
    );

    // A fresh token's first blocking query waits for its change after the review, like
    // any other (it is parked once the review allowed it).
    let waiter = plexd_token("apps/web", NODE_NAME);
    let index = d
        .get("/v1/state/metadata")
        .header("x-plexd-index")
        .unwrap()
        .to_owned();
    let t = std::time::Instant::now();
    let r = tcp(
        &d,
        "GET",
        &format!("/v1/state/metadata?index={index}&wait=1500ms"),
        &waiter,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-plexd-index"), Some(index.as_str()));
    assert!(
        t.elapsed() >= std::time::Duration::from_millis(1400),
        "the first blocking query of a new token waited {:?}",
        t.elapsed()
    );

    // The Unix socket keeps its own rules.
    assert_eq!(d.get("/v1/state/secrets/api-token").status, 200);
    // The reviews were made as the shipped RBAC allows (system:auth-delegator).
    let reviews: Vec<Value> = env
        .daemon_requests()
        .into_iter()
        .filter(|r| {
            matches!(
                r["resource"].as_str(),
                Some("tokenreviews" | "subjectaccessreviews")
            )
        })
        .collect();
    assert!(reviews
        .iter()
        .any(|r| r["resource"] == "tokenreviews" && r["code"] == 201));
    assert!(reviews
        .iter()
        .any(|r| r["resource"] == "subjectaccessreviews" && r["code"] == 201));
    assert!(reviews.iter().all(|r| r["code"] != 403));
    assert!(reviews
        .iter()
        .filter(|r| r["resource"] == "tokenreviews")
        .all(|r| r["body"]["spec"]["audiences"] == json!(["plexd"])));
}

/// The exec commands of the DaemonSet's probes, as `(probe, argv)`.
fn daemonset_probes() -> Vec<(String, Vec<String>)> {
    kube_common::daemonset_probes()
        .into_iter()
        .map(|(probe, command)| (probe, serde_json::from_str(&command).unwrap()))
        .collect()
}

/// Runs a probe's command as the kubelet would, with the image's `/plexd-nodeapi` and
/// the host's socket path replaced by the binary under test and `socket`.
fn run_probe(argv: &[String], socket: &std::path::Path) -> Option<i32> {
    let mut words = argv.iter();
    assert_eq!(words.next().map(String::as_str), Some("/plexd-nodeapi"));
    let args: Vec<std::ffi::OsString> = words
        .map(|w| {
            if w == "/var/run/plexd/api.sock" {
                socket.as_os_str().to_owned()
            } else {
                w.into()
            }
        })
        .collect();
    common::command()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .code()
}

#[test]
fn the_daemonsets_probes_fail_only_on_a_dead_daemon_not_on_a_degraded_one() {
    let probes = daemonset_probes();
    assert_eq!(
        probes.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
        ["startup", "liveness", "readiness"]
    );
    let node = Node::new();
    // No daemon yet: every probe fails (5, unreachable).
    for (probe, argv) in &probes {
        assert_eq!(run_probe(argv, &node.socket()), Some(5), "{probe}");
    }
    // A control plane that refuses connections: the daemon serves its cache, degraded.
    let closed = free_port();
    let d = node
        .daemon()
        .args(["--control-plane", &format!("http://127.0.0.1:{closed}")])
        .start();
    assert!(eventually(LIMIT, || d.get("/v1/health?ready").status == 200));
    assert_eq!(d.get("/v1/health").json()["status"], "degraded");
    for (probe, argv) in &probes {
        assert_eq!(
            run_probe(argv, &d.socket),
            Some(0),
            "{probe}: degraded but ready"
        );
    }
    // What the probes deliberately leave out: the full verdict says degraded (7).
    let full = common::command()
        .args(["state", "health", "--socket"])
        .arg(&d.socket)
        .output()
        .unwrap();
    assert_eq!(full.status.code(), Some(7));
    assert!(String::from_utf8_lossy(&full.stdout).contains("\"degraded\""));
    // A daemon that stopped answering fails them again.
    d.kill();
    for (probe, argv) in &probes {
        assert_ne!(run_probe(argv, &node.socket()), Some(0), "{probe}");
    }
}
