//! Start-up on a hostile state folder: the input, split at 0xFF bytes, becomes the
//! state files (`metadata.json`, `secrets.json`, `report-sync.json`, `revision`,
//! `report.journal`, data and report entries). Opening must succeed (only a revision
//! epoch that would wrap is refused), every key the store lists must be readable, and
//! a report written then must survive a reopen.
#![no_main]
use std::path::Path;

use plexd_nodeapi::store::keys::ReportKey;
use plexd_nodeapi::store::{Store, StoreError};

const FILES: [&str; 9] = [
    "metadata.json",
    "secrets.json",
    "report-sync.json",
    "revision",
    "report.journal",
    "data/a.json",
    "data/b%2Fc.json",
    "report/r.json",
    "report/.hidden.json",
];

fn keys(list: &[u8]) -> Vec<String> {
    let rows: Vec<serde_json::Value> = serde_json::from_slice(list).expect("a list is JSON");
    rows.iter()
        .map(|r| r["key"].as_str().expect("a key").to_owned())
        .collect()
}

fn check(st: &Store) {
    let _: serde_json::Value = serde_json::from_slice(&st.summary().value).expect("summary");
    let _: serde_json::Value = serde_json::from_slice(&st.metadata().value).expect("metadata");
    for k in keys(&st.data_list().value) {
        assert!(st.data_entry(&k).is_some(), "listed data key {k:?} not readable");
    }
    for k in keys(&st.report_list().value) {
        let key = ReportKey::parse(&k).expect("a listed report key is valid");
        assert!(st.report(&key).is_some(), "listed report {k:?} not readable");
    }
}

fn open(state: &Path) -> Option<Store> {
    match Store::open(state) {
        Ok(st) => Some(st),
        Err(StoreError::Epoch(_)) => None,
        Err(e) => panic!("the store did not open: {e}"),
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = tempfile::Builder::new()
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("a temp folder");
    let state = dir.path().join("state");
    for sub in ["data", "report"] {
        std::fs::create_dir_all(state.join(sub)).expect("folders");
    }
    for (name, part) in FILES.iter().zip(data.split(|b| *b == 0xFF)) {
        std::fs::write(state.join(name), part).expect("write a state file");
    }
    let Some(st) = open(&state) else {
        return;
    };
    check(&st);
    let key = ReportKey::parse("fuzz-probe").expect("key");
    let payload = serde_json::value::RawValue::from_string("{\"ok\":true}".into()).unwrap();
    let written = st
        .put_report(&key, "application/json".into(), payload, None)
        .expect("a report write on a healthy disk");
    let revision = st.revision();
    drop(st);
    let st = open(&state).expect("reopens");
    check(&st);
    assert_eq!(st.report(&key).expect("the write survived").value, written.value);
    assert!(st.revision() > revision, "revisions went backwards across a restart");
});
