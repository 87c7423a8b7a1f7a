//! The custom resource's `.spec` and `.status.report` rendered from the store, and the
//! semantic comparison that decides whether what the API server holds already says
//! the same.
//!
//! The API server does not keep payload bytes: it decodes them (integral numbers
//! become int64, `1.0` → `1`, `1e3` → `1000`), sorts object keys, re-escapes strings,
//! and may drop `null` fields. So "desired == actual" compares parsed values: numbers
//! as integers when both are exact integers, otherwise as floats; an absent field
//! equals `null`; keyed lists (`data`, `secretRefs`, `report`) compare as maps by key.
//! No I/O here.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::model::{DataEntry, ReportEntry, SecretRef};
use crate::store::Snapshot;
use crate::timefmt::parse_rfc3339;

/// What `.spec` is rendered from besides the store.
#[derive(Debug, Clone)]
pub struct SpecContext<'a> {
    pub node_id: &'a str,
    pub mesh_ip: Option<&'a str>,
    /// Key → Secret name (see `names::secret_names`).
    pub secret_names: &'a BTreeMap<String, String>,
}

/// `.spec`: `{nodeId, meshIp, metadata, data[], secretRefs[]}`; empty maps and lists and
/// an unknown mesh IP are left out.
pub fn spec(snapshot: &Snapshot, ctx: &SpecContext<'_>) -> Value {
    let mut spec = Map::new();
    spec.insert("nodeId".into(), ctx.node_id.into());
    if let Some(ip) = ctx.mesh_ip.filter(|ip| !ip.is_empty()) {
        spec.insert("meshIp".into(), ip.into());
    }
    if !snapshot.metadata.is_empty() {
        let metadata: Map<String, Value> = snapshot
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        spec.insert("metadata".into(), Value::Object(metadata));
    }
    if !snapshot.data.is_empty() {
        let data = snapshot.data.iter().map(data_item).collect();
        spec.insert("data".into(), Value::Array(data));
    }
    if !snapshot.secrets.is_empty() {
        let refs = snapshot
            .secrets
            .iter()
            .map(|r| secret_ref(r, ctx.secret_names))
            .collect();
        spec.insert("secretRefs".into(), Value::Array(refs));
    }
    Value::Object(spec)
}

/// Parses a stored payload. Stored payloads are valid JSON; the fallback keeps a bug
/// from becoming a panic.
pub fn payload_value(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or(Value::Null)
}

fn entry_item(
    key: &str,
    content_type: &str,
    payload: &str,
    version: i64,
    updated_at: &str,
) -> Value {
    let mut item = Map::new();
    item.insert("key".into(), key.into());
    item.insert("contentType".into(), content_type.into());
    item.insert("payload".into(), payload_value(payload));
    item.insert("version".into(), version.into());
    // One unparsable timestamp from the control plane would make the whole write a 422.
    if is_strict_rfc3339(updated_at) {
        item.insert("updatedAt".into(), updated_at.into());
    }
    Value::Object(item)
}

fn data_item(d: &DataEntry) -> Value {
    entry_item(
        &d.key,
        &d.content_type,
        d.payload.get(),
        d.version,
        &d.updated_at,
    )
}

/// One `.status.report[]` item.
pub fn report_item(r: &ReportEntry) -> Value {
    entry_item(
        &r.key,
        &r.content_type,
        r.payload.get(),
        r.version,
        &r.updated_at,
    )
}

fn secret_ref(r: &SecretRef, names: &BTreeMap<String, String>) -> Value {
    let mut item = Map::new();
    item.insert("key".into(), r.key.as_str().into());
    if let Some(name) = names.get(&r.key) {
        item.insert("secretName".into(), name.as_str().into());
    }
    item.insert("version".into(), r.version.into());
    Value::Object(item)
}

/// RFC 3339 with an upper-case `T` and zone, which every `date-time` checker accepts.
pub fn is_strict_rfc3339(s: &str) -> bool {
    s.as_bytes().get(10) == Some(&b'T') && !s.ends_with('z') && parse_rfc3339(s).is_some()
}

/// Semantic equality of two JSON values as the API server treats them.
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (exact_int(x), exact_int(y)) {
            (Some(i), Some(j)) => i == j,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().all(|k| {
                let (u, v) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                if is_keyed_list(k) {
                    same_keyed(u, v)
                } else {
                    same(u, v)
                }
            })
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(u, v)| same(u, v))
        }
        // An empty map or list is dropped or kept alike.
        (Value::Null, Value::Object(m)) | (Value::Object(m), Value::Null) => m.is_empty(),
        (Value::Null, Value::Array(l)) | (Value::Array(l), Value::Null) => l.is_empty(),
        _ => a == b,
    }
}

/// The lists whose items are identified by `key` (their order carries no meaning).
fn is_keyed_list(field: &str) -> bool {
    matches!(field, "data" | "secretRefs" | "report")
}

/// Compares two keyed lists as maps by `key`; anything else (including lists with
/// duplicate or missing keys) element by element. An absent list equals an empty one.
fn same_keyed(a: &Value, b: &Value) -> bool {
    let empty = Vec::new();
    let list = |v: &Value| -> Option<Vec<Value>> {
        match v {
            Value::Null => Some(empty.clone()),
            Value::Array(items) => Some(items.clone()),
            _ => None,
        }
    };
    let (Some(x), Some(y)) = (list(a), list(b)) else {
        return same(a, b);
    };
    match (by_key(&x), by_key(&y)) {
        (Some(mx), Some(my)) => {
            mx.len() == my.len()
                && mx
                    .iter()
                    .all(|(k, u)| my.get(k).is_some_and(|v| same(u, v)))
        }
        _ => x.len() == y.len() && x.iter().zip(&y).all(|(u, v)| same(u, v)),
    }
}

fn by_key(items: &[Value]) -> Option<BTreeMap<&str, &Value>> {
    let mut out = BTreeMap::new();
    for item in items {
        let key = item.get("key")?.as_str()?;
        if out.insert(key, item).is_some() {
            return None;
        }
    }
    Some(out)
}

fn exact_int(n: &serde_json::Number) -> Option<i128> {
    if let Some(i) = n.as_i64() {
        return Some(i128::from(i));
    }
    if let Some(u) = n.as_u64() {
        return Some(i128::from(u));
    }
    let f = n.as_f64()?;
    (f.fract() == 0.0 && f.abs() < 9.2e18).then_some(f as i128)
}

/// `v` with numbers in the API server's form (integral values as integers), for
/// hashing a canonical form. Object keys are sorted by `serde_json::Map` itself.
pub fn normalized(v: &Value) -> Value {
    match v {
        Value::Number(n) => match exact_int(n) {
            Some(i) if i64::try_from(i).is_ok() => Value::from(i as i64),
            _ => v.clone(),
        },
        Value::Array(items) => Value::Array(items.iter().map(normalized).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), normalized(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(s: &str) -> Box<serde_json::value::RawValue> {
        serde_json::value::RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn numbers_as_the_api_server_returns_them() {
        assert!(same(&json!(1), &serde_json::from_str("1.0").unwrap()));
        assert!(same(&json!(1000), &serde_json::from_str("1e3").unwrap()));
        assert!(same(&json!(0.5), &json!(0.5)));
        assert!(!same(&json!(1), &json!(2)));
        assert!(!same(&json!(1), &json!("1")));
        let big: Value = serde_json::from_str("12345678901234567890").unwrap();
        let back: Value = serde_json::from_str("12345678901234567000").unwrap();
        assert!(same(&big, &back) || big.as_f64() == back.as_f64());
    }

    #[test]
    fn objects_nulls_and_keyed_lists() {
        assert!(same(&json!({"a": 1, "b": null}), &json!({"a": 1})));
        assert!(!same(&json!({"a": 1}), &json!({"a": 1, "c": 2})));
        let x = json!({"report": [{"key": "a", "version": 1}, {"key": "b", "version": 2}]});
        let y = json!({"report": [{"key": "b", "version": 2}, {"key": "a", "version": 1.0}]});
        assert!(same(&x, &y));
        assert!(same(&json!({"report": []}), &json!({})));
        assert!(same(&json!({"labels": {}}), &json!({})));
        assert!(!same(&json!({"labels": {"a": "b"}}), &json!({})));
        assert!(!same(
            &json!({"report": [{"key": "a"}]}),
            &json!({"report": [{"key": "a"}, {"key": "a"}]})
        ));
        // Plain lists keep their order.
        assert!(!same(&json!([1, 2]), &json!([2, 1])));
    }

    #[test]
    fn spec_rendering() {
        let snapshot = Snapshot {
            metadata: [("region".to_owned(), "eu".to_owned())].into(),
            data: vec![DataEntry {
                key: "cfg".into(),
                content_type: "application/json".into(),
                payload: raw(r#"{"port": 5432, "x": 1.0}"#),
                version: 3,
                updated_at: "2025-01-15 10:30".into(),
            }],
            secrets: vec![SecretRef {
                key: "tls-cert".into(),
                version: 2,
            }],
            reports: vec![],
            spec_revision: 7,
            reports_revision: 1,
            revision: 7,
        };
        let names = [(
            "tls-cert".to_owned(),
            "plexd-secret-n-abc123-tls-cert".to_owned(),
        )]
        .into();
        let ctx = SpecContext {
            node_id: "n_abc123",
            mesh_ip: Some("10.100.1.5"),
            secret_names: &names,
        };
        let rendered = spec(&snapshot, &ctx);
        assert_eq!(
            rendered,
            json!({
                "nodeId": "n_abc123",
                "meshIp": "10.100.1.5",
                "metadata": {"region": "eu"},
                "data": [{"key": "cfg", "contentType": "application/json",
                          "payload": {"port": 5432, "x": 1.0}, "version": 3}],
                "secretRefs": [{"key": "tls-cert", "secretName": "plexd-secret-n-abc123-tls-cert", "version": 2}],
            })
        );
        // What the API server gives back compares equal.
        let returned = json!({
            "data": [{"contentType": "application/json", "key": "cfg",
                      "payload": {"port": 5432, "x": 1}, "version": 3}],
            "meshIp": "10.100.1.5",
            "metadata": {"region": "eu"},
            "nodeId": "n_abc123",
            "secretRefs": [{"key": "tls-cert", "secretName": "plexd-secret-n-abc123-tls-cert", "version": 2}],
        });
        assert!(same(&rendered, &returned));
        let empty = Snapshot {
            metadata: Default::default(),
            data: vec![],
            secrets: vec![],
            ..snapshot
        };
        let ctx = SpecContext {
            mesh_ip: None,
            ..ctx
        };
        assert_eq!(spec(&empty, &ctx), json!({"nodeId": "n_abc123"}));
    }

    #[test]
    fn timestamps_that_every_checker_accepts() {
        assert!(is_strict_rfc3339("2025-01-15T10:30:00Z"));
        assert!(is_strict_rfc3339("2025-01-15T10:30:00.123+02:00"));
        assert!(!is_strict_rfc3339("2025-01-15t10:30:00Z"));
        assert!(!is_strict_rfc3339("2025-01-15T10:30:00z"));
        assert!(!is_strict_rfc3339("yesterday"));
        assert!(!is_strict_rfc3339(""));
    }

    #[test]
    fn normalising() {
        assert_eq!(
            normalized(&serde_json::from_str(r#"{"b": 1.0, "a": [2e0], "c": null}"#).unwrap()),
            json!({"a": [2], "b": 1})
        );
    }
}
