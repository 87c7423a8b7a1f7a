//! Caller authentication with Kubernetes tokens (`kube::authn`) against the fake API
//! server loaded with the shipped RBAC: TokenReview with the plexd audience,
//! SubjectAccessReview with the consumer Roles, caches, single flight, the cap on
//! reviews in flight, and outages.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use plexd_nodeapi::kube::authn::{Action, Authenticator, AuthnOptions, Decision};
use plexd_nodeapi::kube::client::KubeClient;
use plexd_nodeapi::kube::config::KubeConfig;
use plexd_nodeapi::kube::names::ResourceName;
use plexd_nodeapi::model::SecretRef;
use plexd_nodeapi::store::{CpUpdate, Store};
use plexd_nodeapi::telemetry::kubernetes::{KubeHealth, AUTH};
use serde_json::json;

use crate::kube_common::{self, token_file, FakeKube, DAEMON_SA, NS};

const NODE_ID: &str = "n_abc123";
const NODE_NAME: &str = "node-1";

struct Setup {
    fake: FakeKube,
    health: Arc<KubeHealth>,
    authn: Authenticator,
    _dir: tempfile::TempDir,
}

fn setup(options: AuthnOptions) -> Setup {
    setup_as(FakeKube::start(), DAEMON_SA, options)
}

fn setup_as(fake: FakeKube, sa: &str, options: AuthnOptions) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let daemon_token = fake.token(json!({"sa": sa}));
    let cfg = KubeConfig {
        api_server: fake.url(),
        token_file: token_file(dir.path(), "token", &daemon_token),
        ca_file: Some(kube_common::ca_file()),
        namespace: NS.into(),
        node_name: NODE_NAME.into(),
        node_id: NODE_ID.into(),
        mesh_ip: None,
        token_audience: Some("plexd".into()),
    };
    let client = Arc::new(KubeClient::new(&cfg).unwrap());
    let store = Arc::new(Store::open(&dir.path().join("state")).unwrap());
    store
        .apply_control_plane(CpUpdate {
            secret_refs: Some(vec![SecretRef {
                key: "tls-cert".into(),
                version: 1,
            }]),
            ..CpUpdate::default()
        })
        .unwrap();
    let health = Arc::new(KubeHealth::new(NS, "node-n-abc123"));
    let authn = Authenticator::new(
        client,
        Arc::clone(&health),
        store,
        "plexd",
        NS,
        NODE_NAME,
        ResourceName::for_node(NODE_ID),
        options,
    );
    Setup {
        fake,
        health,
        authn,
        _dir: dir,
    }
}

fn web_token(fake: &FakeKube) -> String {
    fake.token(json!({"sa": "apps/web", "audiences": ["plexd"], "node": NODE_NAME, "pod": "web-1"}))
}

fn reviews(fake: &FakeKube) -> (u64, u64) {
    let s = fake.stats();
    (
        s["tokenreviews"].as_u64().unwrap(),
        s["subjectaccessreviews"].as_u64().unwrap(),
    )
}

fn secret(key: &str) -> Action {
    Action::ReadSecret { key: key.into() }
}

#[test]
fn rbac_of_the_consumer_roles_decides() {
    let s = setup(AuthnOptions::default());
    let web = web_token(&s.fake);
    let allowed = s.authn.decide(&web, &Action::ReadState);
    assert_eq!(
        allowed,
        Decision::Allowed {
            caller: "system:serviceaccount:apps:web pod=web-1".into()
        }
    );
    assert!(matches!(
        s.authn.decide(&web, &Action::WriteReports),
        Decision::Allowed { .. }
    ));
    // workload-example.yaml grants `get` on plexd-secret-n-abc123-tls-cert only.
    assert!(matches!(
        s.authn.decide(&web, &secret("tls-cert")),
        Decision::Allowed { .. }
    ));
    assert!(matches!(
        s.authn.decide(&web, &secret("db-password")),
        Decision::Forbidden(_)
    ));
    // A ServiceAccount without bindings may read nothing.
    let nobody = s
        .fake
        .token(json!({"sa": "apps/nobody", "audiences": ["plexd"]}));
    assert!(matches!(
        s.authn.decide(&nobody, &Action::ReadState),
        Decision::Forbidden(_)
    ));
    // The SAR carried the right attributes: the Secret's deterministic name.
    let sars: Vec<_> = s
        .fake
        .requests()
        .into_iter()
        .filter(|r| r["resource"] == "subjectaccessreviews")
        .collect();
    let names: Vec<&str> = sars
        .iter()
        .filter_map(|r| r["body"]["spec"]["resourceAttributes"]["name"].as_str())
        .collect();
    assert!(
        names.contains(&"plexd-secret-n-abc123-tls-cert"),
        "{names:?}"
    );
    assert!(names.contains(&"plexd-secret-n-abc123-db-password"));
    let report = sars
        .iter()
        .find(|r| r["body"]["spec"]["resourceAttributes"]["verb"] == "patch")
        .expect("a SAR for report writes");
    assert_eq!(
        report["body"]["spec"]["resourceAttributes"],
        json!({"namespace": NS, "verb": "patch", "group": "plexd.plexsphere.com",
               "resource": "plexdnodestates", "subresource": "status", "name": "node-n-abc123"})
    );
    assert_eq!(
        report["body"]["spec"]["extra"]["authentication.kubernetes.io/node-name"],
        json!([NODE_NAME]),
        "uid, groups and extras travel with the SAR"
    );
    // The review bodies are valid TokenReviews and SubjectAccessReviews.
    let bodies: Vec<serde_json::Value> = s
        .fake
        .requests()
        .into_iter()
        .filter(|r| r["method"] == "POST")
        .map(|r| r["body"].clone())
        .collect();
    assert!(bodies.iter().any(|b| b["kind"] == "TokenReview"));
    kube_common::validate_values(s._dir.path(), &bodies);
}

#[test]
fn tokens_for_another_audience_user_kind_or_node_are_refused() {
    let s = setup(AuthnOptions::default());
    // A default token (audience: the API server) would be replayable against it.
    let api_token = s.fake.token(json!({"sa": "apps/web"}));
    assert_eq!(
        s.authn.decide(&api_token, &Action::ReadState),
        Decision::Unauthenticated
    );
    // An authenticator that ignores audiences answers with none: refused.
    let unaware = s
        .fake
        .token(json!({"sa": "apps/web", "audience_unaware": true}));
    assert_eq!(
        s.authn.decide(&unaware, &Action::ReadState),
        Decision::Unauthenticated
    );
    let user = s
        .fake
        .token(json!({"user": "alice", "audiences": ["plexd"]}));
    assert!(matches!(
        s.authn.decide(&user, &Action::ReadState),
        Decision::Forbidden(_)
    ));
    let elsewhere = s
        .fake
        .token(json!({"sa": "apps/web", "audiences": ["plexd"], "node": "node-2"}));
    assert!(matches!(
        s.authn.decide(&elsewhere, &Action::ReadState),
        Decision::Forbidden(_)
    ));
    assert_eq!(
        s.authn.decide("not-a-token", &Action::ReadState),
        Decision::Unauthenticated
    );
    // The reviews asked for the plexd audience.
    let tr = s
        .fake
        .requests()
        .into_iter()
        .find(|r| r["resource"] == "tokenreviews")
        .unwrap();
    assert_eq!(tr["body"]["spec"]["audiences"], json!(["plexd"]));
    assert_eq!(tr["code"], 201);
}

#[test]
fn results_are_cached_allow_longer_than_deny() {
    let s = setup(AuthnOptions {
        deny_ttl: Duration::from_millis(300),
        ..AuthnOptions::default()
    });
    let web = web_token(&s.fake);
    assert!(s.authn.cached(&web, &Action::ReadState).is_none());
    assert!(matches!(
        s.authn.decide(&web, &Action::ReadState),
        Decision::Allowed { .. }
    ));
    let before = reviews(&s.fake);
    for _ in 0..5 {
        assert!(matches!(
            s.authn.decide(&web, &Action::ReadState),
            Decision::Allowed { .. }
        ));
    }
    assert!(matches!(
        s.authn.cached(&web, &Action::ReadState),
        Some(Decision::Allowed { .. })
    ));
    assert_eq!(reviews(&s.fake), before, "no review while cached");
    // Another route needs its own SAR, not another TokenReview.
    s.authn.decide(&web, &Action::WriteReports);
    assert_eq!(reviews(&s.fake), (before.0, before.1 + 1));

    let bad = "revoked-soon";
    assert_eq!(
        s.authn.decide(bad, &Action::ReadState),
        Decision::Unauthenticated
    );
    let n = reviews(&s.fake).0;
    assert_eq!(
        s.authn.decide(bad, &Action::ReadState),
        Decision::Unauthenticated
    );
    assert_eq!(reviews(&s.fake).0, n, "denials are cached too");
    thread::sleep(Duration::from_millis(400));
    s.authn.decide(bad, &Action::ReadState);
    assert_eq!(reviews(&s.fake).0, n + 1, "but not for long");
}

#[test]
fn allowed_results_end_with_the_token() {
    use base64::Engine;
    let s = setup(AuthnOptions::default());
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1;
    let payload =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{{\"exp\":{exp}}}"));
    let jwt = format!("eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln");
    s.fake.token(
        json!({"token": jwt, "sa": "apps/web", "audiences": ["plexd"], "node": NODE_NAME, "expires_in": 1.5}),
    );
    assert!(matches!(
        s.authn.decide(&jwt, &Action::ReadState),
        Decision::Allowed { .. }
    ));
    thread::sleep(Duration::from_millis(2100));
    assert_eq!(
        s.authn.decide(&jwt, &Action::ReadState),
        Decision::Unauthenticated,
        "an expired token is reviewed again, not served from the cache"
    );
}

#[test]
fn concurrent_requests_share_one_review_and_reviews_are_capped() {
    let s = setup(AuthnOptions {
        max_in_flight: 2,
        ..AuthnOptions::default()
    });
    let web = web_token(&s.fake);
    s.fake.control(
        "faults",
        json!({"rules": [{"path": "/apis/authentication.k8s.io", "delay": 0.5, "count": 100}]}),
    );
    let decisions: Vec<Decision> = thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| s.authn.decide(&web, &Action::ReadState)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(decisions
        .iter()
        .all(|d| matches!(d, Decision::Allowed { .. })));
    assert_eq!(reviews(&s.fake).0, 1, "eight requests, one TokenReview");
    assert!(s.health.counter(AUTH, "review", "shared") >= 1);

    // Four different tokens at once with a cap of two: beyond the cap the answer is
    // 503 at once.
    let tokens: Vec<String> = (0..4).map(|_| web_token(&s.fake)).collect();
    let authn = &s.authn;
    let decisions: Vec<Decision> = thread::scope(|scope| {
        let handles: Vec<_> = tokens
            .iter()
            .map(|t| scope.spawn(move || authn.decide(t, &Action::ReadState)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let busy = decisions
        .iter()
        .filter(|d| matches!(d, Decision::Unavailable { .. }))
        .count();
    assert!(busy >= 1, "{decisions:?}");
    assert!(busy <= 2, "{decisions:?}");
    assert!(s.health.counter(AUTH, "review", "busy") >= 1);
    assert_eq!(
        s.health
            .auth_in_flight()
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[test]
fn an_unavailable_api_server_is_503_and_not_cached() {
    let mut s = setup(AuthnOptions::default());
    let web = web_token(&s.fake);
    s.fake.control(
        "faults",
        json!({"rules": [{"path": "/apis/authentication.k8s.io", "code": 503, "count": 1},
                         {"path": "/apis/authentication.k8s.io", "code": 429, "retry_after": 1, "count": 1}]}),
    );
    for _ in 0..2 {
        assert!(matches!(
            s.authn.decide(&web, &Action::ReadState),
            Decision::Unavailable { .. }
        ));
    }
    assert!(matches!(
        s.authn.decide(&web, &Action::ReadState),
        Decision::Allowed { .. }
    ));
    // Cached answers survive an outage for their lifetime; new tokens get 503.
    let other = web_token(&s.fake);
    s.fake.kill();
    assert!(matches!(
        s.authn.decide(&web, &Action::ReadState),
        Decision::Allowed { .. }
    ));
    assert!(matches!(
        s.authn.decide(&other, &Action::ReadState),
        Decision::Unavailable { .. }
    ));
}

#[test]
fn plexd_without_the_auth_delegator_role_gives_503() {
    // The daemon's own ServiceAccount is not bound to system:auth-delegator here.
    let fake = FakeKube::start();
    let s = setup_as(fake, "plexd-system/unbound", AuthnOptions::default());
    let web = web_token(&s.fake);
    assert!(matches!(
        s.authn.decide(&web, &Action::ReadState),
        Decision::Unavailable { .. }
    ));
    assert!(s.health.health_json()["last_error"]
        .as_str()
        .unwrap()
        .contains("tokenreview"));
}
