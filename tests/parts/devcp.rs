//! The development control plane's admin API and protocol checks, over real HTTP.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use plexd_nodeapi::devcp::{DevChange, DevConfig, DevControlPlane};
use plexd_nodeapi::model::{NodeState, ReportSyncRequest, SecretResponse};
use plexd_nodeapi::secrets::cipher::decrypt_secret;
use plexd_nodeapi::secrets::nsk::Nsk;

const TOKEN: &str = "dev-token";

fn start(demo: bool) -> DevControlPlane {
    DevControlPlane::start(DevConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        node_id: "n1".into(),
        nsk: Nsk::from_bytes([9; 32]),
        token: TOKEN.into(),
        demo,
        signing_seed: None,
    })
    .unwrap()
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build()
}

fn read_json<T: serde::de::DeserializeOwned>(r: ureq::Response) -> T {
    serde_json::from_reader(r.into_reader()).unwrap()
}

fn status(r: Result<ureq::Response, ureq::Error>) -> u16 {
    match r {
        Ok(resp) => resp.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("transport error: {e}"),
    }
}

#[test]
fn admin_api_changes_what_the_node_api_serves() {
    let cp = start(false);
    let changes = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&changes);
    cp.shared()
        .subscribe(Box::new(move |c, _state| seen.lock().unwrap().push(c)));
    let a = agent();
    let url = cp.url();

    assert_eq!(
        status(
            a.put(&format!("{url}/admin/metadata/region"))
                .send_string("\"mars\"")
        ),
        204
    );
    assert_eq!(
        status(
            a.put(&format!("{url}/admin/data/cfg%2Fmain"))
                .send_string(r#"{"content_type":"application/json","payload":{"a":[1,2]}}"#)
        ),
        200
    );
    assert_eq!(
        status(
            a.put(&format!("{url}/admin/secrets/pw"))
                .send_string("\"hunter2\"")
        ),
        200
    );
    assert_eq!(
        status(
            a.put(&format!("{url}/admin/metadata/x"))
                .send_string("not json")
        ),
        400
    );
    assert_eq!(
        status(a.delete(&format!("{url}/admin/metadata/none")).call()),
        404
    );
    assert_eq!(status(a.get(&format!("{url}/admin/nope")).call()), 404);
    assert_eq!(status(a.post(&format!("{url}/admin/state")).call()), 405);

    let state: NodeState = a
        .get(&format!("{url}/v1/nodes/n1/state"))
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .call()
        .map(read_json)
        .unwrap();
    assert_eq!(state.metadata.unwrap()["region"], "mars");
    let data = state.data.unwrap();
    assert_eq!(data[0].key, "cfg/main");
    assert_eq!(data[0].payload.get(), r#"{"a":[1,2]}"#);
    assert_eq!(state.secret_refs.unwrap()[0].key, "pw");

    let secret: SecretResponse = a
        .get(&format!("{url}/v1/nodes/n1/secrets/pw"))
        .set("Authorization", &format!("bearer {TOKEN}"))
        .call()
        .map(read_json)
        .unwrap();
    let plain = decrypt_secret(&Nsk::from_bytes([9; 32]), &secret.ciphertext, &secret.nonce);
    assert_eq!(plain.unwrap().as_str(), "hunter2");

    // Node API needs the token; admin state does not.
    assert_eq!(
        status(a.get(&format!("{url}/v1/nodes/n1/state")).call()),
        401
    );
    let admin_state: NodeState = a
        .get(&format!("{url}/admin/state"))
        .call()
        .map(read_json)
        .unwrap();
    assert_eq!(admin_state.metadata.unwrap()["region"], "mars");

    assert_eq!(
        status(a.delete(&format!("{url}/admin/secrets/pw")).call()),
        204
    );
    assert_eq!(
        status(
            a.get(&format!("{url}/v1/nodes/n1/secrets/pw"))
                .set("Authorization", &format!("Bearer {TOKEN}"))
                .call()
        ),
        404
    );
    assert_eq!(
        *changes.lock().unwrap(),
        vec![
            DevChange::State,
            DevChange::State,
            DevChange::Secrets,
            DevChange::Secrets
        ]
    );
    cp.stop();
}

#[test]
fn admin_fail_and_report_views() {
    let cp = start(true);
    let a = agent();
    let url = cp.url();
    assert_eq!(
        status(
            a.post(&format!("{url}/admin/fail"))
                .send_string(r#"{"count":1,"status":503,"retry_after":3,"route":"report"}"#)
        ),
        204
    );
    // (status, Retry-After) of a report POST.
    let post = |body: &str| -> (u16, Option<String>) {
        let r = a
            .post(&format!("{url}/v1/nodes/n1/report"))
            .set("Authorization", &format!("Bearer {TOKEN}"))
            .send_string(body);
        match r {
            Ok(resp) => (resp.status(), None),
            Err(ureq::Error::Status(code, resp)) => {
                (code, resp.header("Retry-After").map(str::to_owned))
            }
            Err(e) => panic!("transport error: {e}"),
        }
    };
    let body = r#"{"entries":[{"key":"r","content_type":"application/json","payload":{"ok":true},"version":2,"updated_at":"2026-03-01T12:00:00Z"}],"deleted":[]}"#;
    assert_eq!(post(body), (503, Some("3".to_owned())));
    assert_eq!(post(body).0, 204);
    assert_eq!(post("{broken").0, 400);
    let dup = r#"{"entries":[],"deleted":["r","r"]}"#;
    assert_eq!(post(dup).0, 400);

    let reports: serde_json::Value = a
        .get(&format!("{url}/admin/reports"))
        .call()
        .map(read_json)
        .unwrap();
    assert_eq!(reports["r"]["version"], 2);
    let posts: Vec<ReportSyncRequest> = a
        .get(&format!("{url}/admin/report-posts"))
        .call()
        .map(read_json)
        .unwrap();
    assert_eq!(posts.len(), 1);

    // Demo content.
    let state = cp.state();
    assert_eq!(state.metadata.unwrap().len(), 3);
    assert!(state.data.unwrap().len() >= 2);
    assert_eq!(state.secret_refs.unwrap().len(), 2);
    cp.stop();
}

#[test]
fn refuses_non_loopback_listen_addresses() {
    let err = DevControlPlane::start(DevConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        node_id: "n1".into(),
        nsk: Nsk::from_bytes([9; 32]),
        token: TOKEN.into(),
        demo: false,
        signing_seed: None,
    })
    .err()
    .unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

/// Reads SSE items from a stream until `n` events arrived.
fn read_events(
    parser: &mut plexd_nodeapi::events::SseParser,
    body: &mut dyn std::io::Read,
    n: usize,
) -> Vec<(String, String, String)> {
    use plexd_nodeapi::events::SseItem;
    let mut out = Vec::new();
    let mut items = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < n {
        let got = body.read(&mut buf).unwrap();
        assert!(got > 0, "stream closed early");
        parser.feed(&buf[..got], &mut items).unwrap();
        for item in items.drain(..) {
            if let SseItem::Event {
                event_type,
                data,
                id,
            } = item
            {
                out.push((id, event_type, data));
            }
        }
    }
    out
}

#[test]
fn event_stream_is_signed_resumable_and_steerable_over_http() {
    use plexd_nodeapi::events::{KeySet, PublicKey, SseParser, Verifier};
    let cp = start(false);
    let state: NodeState = read_json(
        agent()
            .get(&format!("{}/v1/nodes/n1/state", cp.url()))
            .set("Authorization", &format!("Bearer {TOKEN}"))
            .call()
            .unwrap(),
    );
    // The state response advertises the key that signs the events.
    assert_eq!(state.signing_keys.unwrap().current, cp.signing_public_key());
    let verifier = Verifier::new(Some(KeySet::new(
        PublicKey::from_base64(&cp.signing_public_key()).unwrap(),
    )));
    let open = |last: Option<&str>| {
        let mut req = agent()
            .get(&format!("{}/v1/nodes/n1/events", cp.url()))
            .set("Authorization", &format!("Bearer {TOKEN}"));
        if let Some(id) = last {
            req = req.set("Last-Event-ID", id);
        }
        let resp = req.call().unwrap();
        assert_eq!(resp.content_type(), "text/event-stream");
        resp.into_reader()
    };

    let mut parser = SseParser::default();
    let mut body = open(None);
    cp.set_metadata("a", "1");
    cp.set_secret("s", "v");
    let events = read_events(&mut parser, &mut body, 2);
    assert_eq!(events[0].1, "node_state_updated");
    assert_eq!(events[1].1, "node_secrets_updated");
    for (id, _, data) in &events {
        let ev = verifier.verify(data).unwrap();
        assert_eq!(&ev.event_id, id);
    }
    let first_id = events[0].0.clone();

    // Resume: everything after the given ID is sent again at once.
    let mut resumed = open(Some(&first_id));
    let mut parser2 = SseParser::default();
    let again = read_events(&mut parser2, &mut resumed, 1);
    assert_eq!(again[0], events[1]);

    // Admin routes: a raw event goes out verbatim; drop-streams closes streams.
    let r = agent()
        .post(&format!("{}/admin/events", cp.url()))
        .send_string(r#"{"event_type":"node_state_updated","payload":{}}"#)
        .unwrap();
    assert_eq!(r.status(), 200);
    let raw = read_events(&mut parser, &mut body, 1);
    assert_eq!(raw[0].1, "node_state_updated");
    assert!(verifier.verify(&raw[0].2).is_err());
    assert_eq!(cp.open_streams(), 2);
    let r = agent()
        .post(&format!("{}/admin/drop-streams", cp.url()))
        .call()
        .unwrap();
    assert_eq!(r.status(), 204);
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut body, &mut rest).unwrap();
    assert_eq!(cp.last_event_ids(), vec![first_id]);
    cp.stop();
}
