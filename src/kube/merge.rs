//! The three-way merge of `.status.report` (as the API server holds it, `S`) with the
//! store's reports (`L`), against the base record (`B`: what was last written to, or
//! imported from, status). It tells a workload's edit or deletion in Kubernetes apart
//! from a change made through the socket, and from an entry never mirrored yet.
//!
//! Per key (S content = `(contentType, payload)`, compared by digest):
//!
//! | S | L | B | condition      | decision                                       |
//! |---|---|---|----------------|------------------------------------------------|
//! | ✓ | ✓ | · | S = L          | nothing                                         |
//! | ✓ | ✓ | ✓ | S = B ≠ L      | the store changed: status gets L                |
//! | ✓ | ✓ | · | S ≠ B, S ≠ L   | a workload edit: import S                       |
//! | ✓ | – | ✓ | S = B          | the store deleted it: status drops it           |
//! | ✓ | – | ✓ | S ≠ B          | edited in Kubernetes after the deletion: import |
//! | ✓ | – | – |                | a workload created it: import                   |
//! | – | ✓ | ✓ | L.version = B  | a workload deleted it: delete from the store    |
//! | – | ✓ | ✓ | L.version ≠ B  | the store changed since: status gets L          |
//! | – | ✓ | – |                | never mirrored: status gets L                   |
//!
//! The status to write is then simply the store's reports (after the imports and
//! deletions) plus the invalid workload entries, left untouched. An invalid entry
//! freezes its key: no import, no deletion, and the store's entry of that key is not
//! written over it. Duplicate keys in S: the last valid one counts. Pure functions;
//! the mirror applies the plan.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::encoding::encode_hex;
use crate::model::ReportEntry;
use crate::store::keys::ReportKey;

use super::render::{normalized, payload_value, report_item};

/// Longest `contentType` accepted, in characters (as on the socket).
pub const MAX_CONTENT_TYPE: usize = 256;

/// What the base remembers of one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseEntry {
    pub version: i64,
    /// Hex SHA-256 of the canonical `[contentType, payload]`.
    pub digest: String,
}

pub type Base = BTreeMap<String, BaseEntry>;

/// A workload's entry to store, exactly as a socket `PUT` would.
#[derive(Debug)]
pub struct Import {
    pub key: ReportKey,
    pub content_type: String,
    pub payload: Box<RawValue>,
    /// The store's version of the key when the plan was made (`0`: absent). The import
    /// is conditional on it, so a local write that came in between wins and the next
    /// pass merges again.
    pub expected_version: i64,
}

/// A key a workload removed from `.status.report`, to delete from the store if it is
/// still at `version` (a local write that came in between keeps it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    pub key: ReportKey,
    pub version: i64,
}

/// An invalid workload entry: left in status, not imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub key: Option<String>,
    pub reason: &'static str,
    /// Digest of the whole item, to log each one once.
    pub digest: String,
}

/// What one merge pass decided.
#[derive(Debug, Default)]
pub struct Plan {
    pub imports: Vec<Import>,
    pub deletes: Vec<Deletion>,
    pub rejected: Vec<Rejected>,
    /// The invalid items, verbatim, in their order in S.
    pub invalid: Vec<Value>,
    /// Keys that only have invalid items in S.
    pub frozen: BTreeSet<String>,
}

/// Hex SHA-256 of the canonical `[contentType, payload]`.
pub fn digest(content_type: &str, payload: &Value) -> String {
    let canonical = Value::Array(vec![content_type.into(), normalized(payload)]);
    hex_sha256(canonical.to_string().as_bytes())
}

fn hex_sha256(bytes: &[u8]) -> String {
    encode_hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// The digest of a stored entry.
pub fn entry_digest(e: &ReportEntry) -> String {
    digest(&e.content_type, &payload_value(e.payload.get()))
}

struct Valid {
    key: ReportKey,
    content_type: String,
    payload: Value,
}

/// Checks one status item with the socket's rules.
fn validate(item: &Value) -> Result<Valid, Rejected> {
    let reject = |key: Option<&str>, reason| Rejected {
        key: key.map(str::to_owned),
        reason,
        digest: hex_sha256(normalized(item).to_string().as_bytes()),
    };
    let Some(obj) = item.as_object() else {
        return Err(reject(None, "not_an_object"));
    };
    let Some(key_text) = obj.get("key").and_then(Value::as_str) else {
        return Err(reject(None, "key"));
    };
    let key = ReportKey::parse(key_text).map_err(|_| reject(Some(key_text), "key"))?;
    let content_type = match obj.get("contentType").and_then(Value::as_str) {
        Some(ct)
            if !ct.trim().is_empty()
                && ct.chars().count() <= MAX_CONTENT_TYPE
                && !ct.chars().any(char::is_control) =>
        {
            ct.to_owned()
        }
        _ => return Err(reject(Some(key_text), "content_type")),
    };
    let payload = match obj.get("payload") {
        Some(p) if !p.is_null() => p.clone(),
        _ => return Err(reject(Some(key_text), "payload")),
    };
    Ok(Valid {
        key,
        content_type,
        payload,
    })
}

impl Plan {
    /// Turns `key` into an invalid entry after the fact (the store refused it): its
    /// items in `status` are left alone like any invalid entry, and its key is frozen.
    pub fn refuse(&mut self, status: &[Value], key: &str, reason: &'static str) {
        self.imports.retain(|i| i.key.as_str() != key);
        for item in status.iter().filter(|i| i["key"] == key) {
            if !self.invalid.contains(item) {
                self.invalid.push(item.clone());
                self.rejected.push(Rejected {
                    key: Some(key.to_owned()),
                    reason,
                    digest: hex_sha256(normalized(item).to_string().as_bytes()),
                });
            }
        }
        self.frozen.insert(key.to_owned());
    }
}

/// Decides the imports and deletions for one pass.
pub fn plan(status: &[Value], store: &[ReportEntry], base: &Base) -> Plan {
    let mut out = Plan::default();
    let mut seen: BTreeMap<String, Valid> = BTreeMap::new();
    let mut invalid_keys = BTreeSet::new();
    for item in status {
        match validate(item) {
            Ok(v) => {
                seen.insert(v.key.as_str().to_owned(), v);
            }
            Err(r) => {
                if let Some(k) = &r.key {
                    invalid_keys.insert(k.clone());
                }
                out.invalid.push(item.clone());
                out.rejected.push(r);
            }
        }
    }
    out.frozen = invalid_keys
        .into_iter()
        .filter(|k| !seen.contains_key(k))
        .collect();
    let local: BTreeMap<&str, &ReportEntry> = store.iter().map(|e| (e.key.as_str(), e)).collect();

    for (key, s) in &seen {
        let s_digest = digest(&s.content_type, &s.payload);
        let b = base.get(key);
        let import = match local.get(key.as_str()) {
            Some(l) => s_digest != entry_digest(l) && b.is_none_or(|b| b.digest != s_digest),
            None => b.is_none_or(|b| b.digest != s_digest),
        };
        if import {
            if let Ok(payload) = serde_json::value::to_raw_value(&s.payload) {
                out.imports.push(Import {
                    key: s.key.clone(),
                    content_type: s.content_type.clone(),
                    payload,
                    expected_version: local.get(key.as_str()).map_or(0, |l| l.version),
                });
            }
        }
    }
    for l in store {
        if seen.contains_key(&l.key) || out.frozen.contains(&l.key) {
            continue;
        }
        if let Some(b) = base.get(&l.key) {
            if b.version == l.version {
                if let Ok(key) = ReportKey::parse(&l.key) {
                    out.deletes.push(Deletion {
                        key,
                        version: l.version,
                    });
                }
            }
        }
    }
    out
}

/// The `.status.report` to hold after the plan was applied: the store's reports
/// (sorted by key) except frozen keys, then the invalid items.
pub fn desired_status(store: &[ReportEntry], plan: &Plan) -> Vec<Value> {
    store
        .iter()
        .filter(|e| !plan.frozen.contains(&e.key))
        .map(report_item)
        .chain(plan.invalid.iter().cloned())
        .collect()
}

/// The base after `store` was written to status: every written entry, plus the old
/// record of frozen keys (nothing was decided for them).
pub fn next_base(store: &[ReportEntry], plan: &Plan, old: &Base) -> Base {
    let mut base: Base = store
        .iter()
        .filter(|e| !plan.frozen.contains(&e.key))
        .map(|e| {
            (
                e.key.clone(),
                BaseEntry {
                    version: e.version,
                    digest: entry_digest(e),
                },
            )
        })
        .collect();
    for key in &plan.frozen {
        if let Some(b) = old.get(key) {
            base.insert(key.clone(), b.clone());
        }
    }
    base
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(key: &str, payload: &str, version: i64) -> ReportEntry {
        ReportEntry {
            key: key.into(),
            content_type: "application/json".into(),
            payload: RawValue::from_string(payload.to_owned()).unwrap().into(),
            version,
            updated_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn item(key: &str, payload: Value) -> Value {
        json!({"key": key, "contentType": "application/json", "payload": payload, "version": 99})
    }

    fn base_of(entries: &[&ReportEntry]) -> Base {
        entries
            .iter()
            .map(|e| {
                (
                    e.key.clone(),
                    BaseEntry {
                        version: e.version,
                        digest: entry_digest(e),
                    },
                )
            })
            .collect()
    }

    fn keys(p: &Plan) -> (Vec<String>, Vec<String>) {
        (
            p.imports.iter().map(|i| i.key.to_string()).collect(),
            p.deletes.iter().map(|d| d.key.to_string()).collect(),
        )
    }

    #[test]
    fn same_content_does_nothing() {
        let l = entry("a", r#"{"x": 1.0}"#, 3);
        let p = plan(
            &[item("a", json!({"x": 1}))],
            std::slice::from_ref(&l),
            &Base::new(),
        );
        assert_eq!(keys(&p), (vec![], vec![]));
        // Workload-supplied versions are not authoritative: the store's is written back.
        assert_eq!(desired_status(&[l], &p)[0]["version"], 3);
    }

    #[test]
    fn the_store_changed() {
        let old = entry("a", "1", 1);
        let new = entry("a", "2", 2);
        let p = plan(
            &[item("a", json!(1))],
            std::slice::from_ref(&new),
            &base_of(&[&old]),
        );
        assert_eq!(keys(&p), (vec![], vec![]));
        assert_eq!(desired_status(&[new], &p)[0]["payload"], 2);
    }

    #[test]
    fn a_workload_edit_is_imported() {
        let l = entry("a", "1", 1);
        let p = plan(
            &[item("a", json!(5))],
            std::slice::from_ref(&l),
            &base_of(&[&l]),
        );
        assert_eq!(keys(&p), (vec!["a".into()], vec![]));
        assert_eq!(p.imports[0].payload.get(), "5");
        // Conditional on the version planned against: a local write in between wins.
        assert_eq!(p.imports[0].expected_version, 1);
        // Not in the base either (e.g. after a restart that lost it): still an edit.
        let p = plan(&[item("a", json!(5))], &[l], &Base::new());
        assert_eq!(keys(&p), (vec!["a".into()], vec![]));
    }

    #[test]
    fn deleted_through_the_socket() {
        let old = entry("a", "1", 1);
        let p = plan(&[item("a", json!(1))], &[], &base_of(&[&old]));
        assert_eq!(keys(&p), (vec![], vec![]));
        assert!(desired_status(&[], &p).is_empty());
        // Edited in Kubernetes after the socket deleted it: the edit wins.
        let p = plan(&[item("a", json!(2))], &[], &base_of(&[&old]));
        assert_eq!(keys(&p), (vec!["a".into()], vec![]));
    }

    #[test]
    fn created_by_a_workload() {
        let p = plan(&[item("new", json!({"ok": true}))], &[], &Base::new());
        assert_eq!(keys(&p), (vec!["new".into()], vec![]));
    }

    #[test]
    fn deleted_by_a_workload() {
        let l = entry("a", "1", 4);
        let p = plan(&[], std::slice::from_ref(&l), &base_of(&[&l]));
        assert_eq!(keys(&p), (vec![], vec!["a".into()]));
        assert_eq!(p.deletes[0].version, 4);
        // The store changed after the status was written: the store wins.
        let newer = entry("a", "2", 5);
        let p = plan(&[], std::slice::from_ref(&newer), &base_of(&[&l]));
        assert_eq!(keys(&p), (vec![], vec![]));
        assert_eq!(desired_status(&[newer], &p).len(), 1);
    }

    #[test]
    fn never_mirrored() {
        let l = entry("a", "1", 1);
        let p = plan(&[], std::slice::from_ref(&l), &Base::new());
        assert_eq!(keys(&p), (vec![], vec![]));
        assert_eq!(desired_status(&[l], &p).len(), 1);
    }

    #[test]
    fn duplicates_last_wins() {
        let p = plan(
            &[item("a", json!(1)), item("a", json!(2))],
            &[],
            &Base::new(),
        );
        assert_eq!(p.imports.len(), 1);
        assert_eq!(p.imports[0].payload.get(), "2");
    }

    #[test]
    fn invalid_entries_are_left_alone() {
        let l = entry("kept", "1", 2);
        let bad = vec![
            json!("not an object"),
            json!({"key": "a/b", "contentType": "x", "payload": 1}),
            json!({"key": "kept", "contentType": "", "payload": 1}),
            json!({"key": "nopayload", "contentType": "x"}),
            json!({"key": "nullpayload", "contentType": "x", "payload": null}),
            json!({"contentType": "x", "payload": 1}),
        ];
        let p = plan(&bad, std::slice::from_ref(&l), &base_of(&[&l]));
        assert_eq!(keys(&p), (vec![], vec![]), "no import and no deletion");
        let reasons: Vec<&str> = p.rejected.iter().map(|r| r.reason).collect();
        assert_eq!(
            reasons,
            [
                "not_an_object",
                "key",
                "content_type",
                "payload",
                "payload",
                "key"
            ]
        );
        assert!(p.frozen.contains("kept"));
        let desired = desired_status(std::slice::from_ref(&l), &p);
        assert_eq!(
            desired, bad,
            "left untouched, the store's entry not written over"
        );
        let next = next_base(std::slice::from_ref(&l), &p, &base_of(&[&l]));
        assert_eq!(next, base_of(&[&l]));
        // Digests are stable, so each is logged once.
        let again = plan(&bad, &[l], &Base::new());
        assert_eq!(again.rejected, p.rejected);
    }

    #[test]
    fn an_entry_the_store_refuses_becomes_invalid() {
        let status = vec![
            item("ü".repeat(100).as_str(), json!(1)),
            item("ok", json!(2)),
        ];
        let mut p = plan(&status, &[], &Base::new());
        assert_eq!(p.imports.len(), 2);
        let long = "ü".repeat(100);
        p.refuse(&status, &long, "key");
        assert_eq!(keys(&p), (vec!["ok".into()], vec![]));
        assert!(p.frozen.contains(&long));
        assert_eq!(p.invalid, vec![status[0].clone()]);
        assert_eq!(desired_status(&[], &p), vec![status[0].clone()]);
    }

    #[test]
    fn digests_ignore_number_forms_and_key_order() {
        assert_eq!(
            digest("t", &json!({"b": 1, "a": 2})),
            digest(
                "t",
                &serde_json::from_str(r#"{"a": 2.0, "b": 1e0}"#).unwrap()
            )
        );
        assert_ne!(digest("t", &json!(1)), digest("u", &json!(1)));
    }
}
