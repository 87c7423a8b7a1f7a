//! Nothing the control-plane code (or ureq beneath it) logs, at any level, contains the
//! bearer token, the NSK or a secret value — on success and on failure paths.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plexd_nodeapi::cp::backoff::Backoff;
use plexd_nodeapi::cp::client::{CpClient, CpConfig};
use plexd_nodeapi::cp::link::{Link, LinkOptions};
use plexd_nodeapi::cp::syncer::{Syncer, SyncerOptions};
use plexd_nodeapi::devcp::{DevConfig, DevControlPlane, FailRoute};
use plexd_nodeapi::secrets::cipher::decrypt_secret;
use plexd_nodeapi::secrets::nsk::Nsk;
use plexd_nodeapi::store::keys::ReportKey;
use plexd_nodeapi::store::Store;
use plexd_nodeapi::telemetry::health::LinkHealth;
use serde_json::value::RawValue;
use zeroize::Zeroizing;

const TOKEN: &str = "T0KEN-must-not-leak";
const NSK: &[u8; 32] = b"NSK-must-not-leak-0123456789abcd";
const SECRET: &str = "S3CRET-must-not-leak";

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        let line = format!("{} {} {}", record.level(), record.target(), record.args());
        LINES.lock().unwrap().push(line);
    }
    fn flush(&self) {}
}

/// It installs the process-wide logger, so it runs alone in a child process.
#[test]
fn no_credentials_or_secrets_in_logs() {
    crate::alone(
        module_path!(),
        "no_credentials_or_secrets_in_logs",
        no_credentials_or_secrets_in_logs_alone,
    );
}

fn no_credentials_or_secrets_in_logs_alone() {
    log::set_boxed_logger(Box::new(Capture)).unwrap();
    log::set_max_level(log::LevelFilter::Trace);

    let cp = DevControlPlane::start(DevConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        node_id: "node-1".into(),
        nsk: Nsk::parse(NSK).unwrap(),
        token: TOKEN.into(),
        demo: false,
        signing_seed: None,
    })
    .unwrap();
    cp.set_secret("pw", SECRET);
    let token = Zeroizing::new(TOKEN.to_owned());
    let client = Arc::new(CpClient::new(CpConfig::new(&cp.url(), "node-1", token)).unwrap());

    // Secrets: success and failure.
    let s = client
        .fetch_secret("pw", std::time::Duration::from_secs(5))
        .unwrap();
    let nsk = Nsk::parse(NSK).unwrap();
    assert_eq!(
        decrypt_secret(&nsk, &s.ciphertext, &s.nonce)
            .unwrap()
            .as_str(),
        SECRET
    );
    let bad = CpClient::new(CpConfig::new(
        &cp.url(),
        "node-1",
        Zeroizing::new("wrong".into()),
    ))
    .unwrap();
    assert!(bad
        .fetch_secret("pw", std::time::Duration::from_secs(5))
        .is_err());

    // Syncer and link through failures and recovery.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("state")).unwrap());
    let health = Arc::new(LinkHealth::new(true));
    cp.fail_next(2, 503, None, FailRoute::Any);
    let mut options = SyncerOptions::new(Duration::from_millis(10));
    options.backoff = Backoff::with_base(Duration::from_millis(10));
    let syncer = Syncer::spawn_with(
        Arc::clone(&store),
        Some(Arc::clone(&client)),
        options,
        Arc::clone(&health),
    );
    let link = Link::start(
        Arc::clone(&store),
        Arc::clone(&client),
        Arc::clone(&health),
        LinkOptions {
            backoff: Backoff::with_base(Duration::from_millis(10)),
            reconcile_interval: None,
            ..LinkOptions::default()
        },
    );
    store
        .put_report(
            &ReportKey::parse("r").unwrap(),
            "application/json".into(),
            RawValue::from_string("{}".into()).unwrap(),
            None,
        )
        .unwrap();
    syncer.notify();
    let until = Instant::now() + Duration::from_secs(5);
    while store.pending_count() > 0 || health.snapshot().last_reconcile.is_none() {
        assert!(Instant::now() < until, "sync and reconcile did not finish");
        std::thread::sleep(Duration::from_millis(10));
    }
    syncer.shutdown(Duration::from_secs(1));
    link.shutdown(Duration::from_secs(1));
    cp.stop();

    let lines = LINES.lock().unwrap();
    assert!(lines.len() > 5, "expected some log lines");
    let nsk_text = std::str::from_utf8(NSK).unwrap();
    for line in lines.iter() {
        for needle in [TOKEN, nsk_text, SECRET, "wrong"] {
            assert!(!line.contains(needle), "log line leaks {needle:?}: {line}");
        }
    }
    assert!(health
        .snapshot()
        .last_error
        .is_some_and(|e| !e.contains(TOKEN)));
}
