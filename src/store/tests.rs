//! Store tests on real files in temp folders.

use super::*;
use serde_json::value::RawValue;

fn raw(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.to_owned()).unwrap()
}

fn rk(s: &str) -> ReportKey {
    ReportKey::parse(s).unwrap()
}

#[test]
fn smoke() {
    let dir = tempfile::tempdir().unwrap();
    let st = Store::open(&dir.path().join("state")).unwrap();
    let v = st
        .put_report(&rk("a"), "application/json".into(), raw("{\"x\": 1}"), None)
        .unwrap();
    assert!(std::str::from_utf8(&v.value)
        .unwrap()
        .contains("\"version\":1"));
    assert_eq!(st.pending_count(), 1);
    let s = st.summary();
    assert_eq!(
        std::str::from_utf8(&s.value).unwrap(),
        r#"{"metadata":{},"data_keys":[],"secret_keys":[],"report_keys":[{"key":"a","version":1}]}"#
    );
}
