//! What a `state` command addresses, written the same way everywhere: `KIND KEY` or
//! `KIND/KEY` (or just `KIND` for its list), with the kinds in the singular or the
//! plural (`report`/`reports`, `secret`/`secrets`). Also the `--raw` rendering of an
//! answer: a value or payload bare, a list as its keys.
//!
//! Pure string work: no socket, no printing. `state` and `watch` both use it.

use super::json_text::compact_json;
use crate::encoding::percent_encode_segment;
use crate::model::DataEntry;

/// A kind of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Metadata,
    Data,
    Report,
    Secrets,
}

impl Kind {
    /// `metadata`, `data`, `report(s)`, `secret(s)`.
    pub fn parse(word: &str) -> Option<Kind> {
        match word {
            "metadata" => Some(Kind::Metadata),
            "data" => Some(Kind::Data),
            "report" | "reports" => Some(Kind::Report),
            "secret" | "secrets" => Some(Kind::Secrets),
            _ => None,
        }
    }

    /// The path segment of the kind's routes.
    pub fn segment(self) -> &'static str {
        match self {
            Kind::Metadata => "metadata",
            Kind::Data => "data",
            Kind::Report => "report",
            Kind::Secrets => "secrets",
        }
    }
}

/// A kind and, for one entry, its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub kind: Kind,
    pub key: Option<String>,
}

const KINDS: &str = "metadata, data, report or secret";

impl Address {
    /// `["metadata", "region"]`, `["metadata/region"]` or `["metadata"]`. A key is
    /// everything after the kind's `/` (keys may contain `/`).
    pub fn parse(words: &[String]) -> Result<Address, String> {
        let Some((first, rest)) = words.split_first() else {
            return Err(format!("which kind? {KINDS}"));
        };
        let (kind_word, key) = match first.split_once('/') {
            Some((k, key)) if !key.is_empty() => (k, Some(key.to_owned())),
            Some((k, _)) => (k, None),
            None => (first.as_str(), None),
        };
        let kind = Kind::parse(kind_word)
            .ok_or_else(|| format!("unknown kind {kind_word:?}; use {KINDS}"))?;
        let key = match (key, rest) {
            (key, []) => key,
            (None, [key]) => Some(key.clone()),
            (_, [_, extra, ..]) | (Some(_), [extra]) => {
                return Err(format!("unexpected argument {extra:?}"))
            }
        };
        Ok(Address { kind, key })
    }

    /// A report key written as `KEY`, `report/KEY` or `report KEY`.
    pub fn report_key(words: &[String]) -> Result<String, String> {
        match words {
            [] => Err("missing KEY".into()),
            [one] => Ok(match one.split_once('/') {
                Some((kind, key)) if Kind::parse(kind) == Some(Kind::Report) => key.to_owned(),
                _ => one.clone(),
            }),
            [kind, key] if Kind::parse(kind) == Some(Kind::Report) => Ok(key.clone()),
            [_, extra, ..] => Err(format!("unexpected argument {extra:?}")),
        }
    }

    /// The API path (the key percent-encoded).
    pub fn path(&self) -> String {
        match &self.key {
            Some(k) => format!(
                "/v1/state/{}/{}",
                self.kind.segment(),
                percent_encode_segment(k)
            ),
            None => format!("/v1/state/{}", self.kind.segment()),
        }
    }
}

/// `--raw`: a metadata or secret value bare, a payload bare if it is a JSON string
/// (else as compact JSON, numbers as sent), a list as its keys, one per line. `None`
/// for a body of another shape.
pub fn raw_text(kind: Kind, keyed: bool, body: &[u8]) -> Option<String> {
    if keyed {
        let text = match kind {
            // {"key", "value"[, "version"]}: the value is a string.
            Kind::Metadata | Kind::Secrets => {
                let entry: serde_json::Value = serde_json::from_slice(body).ok()?;
                entry.get("value")?.as_str()?.to_owned()
            }
            // An entry's payload as the daemon sent it (the on-disk entry type keeps
            // it verbatim).
            Kind::Data | Kind::Report => {
                let entry: DataEntry = serde_json::from_slice(body).ok()?;
                let payload = entry.payload.get();
                if payload.starts_with('"') {
                    serde_json::from_str::<String>(payload).ok()?
                } else {
                    compact_json(payload)
                }
            }
        };
        return Some(text);
    }
    let list: serde_json::Value = serde_json::from_slice(body).ok()?;
    let keys: Vec<String> = match list {
        serde_json::Value::Object(map) => map.keys().cloned().collect(),
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(|i| i.get("key")?.as_str().map(str::to_owned))
            .collect(),
        _ => return None,
    };
    Some(keys.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn one_key_syntax_everywhere() {
        let at = |k: Kind, key: Option<&str>| Address {
            kind: k,
            key: key.map(str::to_owned),
        };
        for (w, want) in [
            (
                &["metadata", "region"][..],
                at(Kind::Metadata, Some("region")),
            ),
            (&["metadata/region"], at(Kind::Metadata, Some("region"))),
            (&["metadata/"], at(Kind::Metadata, None)),
            (
                &["secret", "db/password"],
                at(Kind::Secrets, Some("db/password")),
            ),
            (
                &["secrets/db/password"],
                at(Kind::Secrets, Some("db/password")),
            ),
            (&["reports"], at(Kind::Report, None)),
            (&["report", "a b"], at(Kind::Report, Some("a b"))),
        ] {
            assert_eq!(Address::parse(&words(w)), Ok(want), "{w:?}");
        }
        assert!(Address::parse(&words(&["nope"])).is_err());
        assert!(Address::parse(&words(&["data/a", "b"])).is_err());
        assert!(Address::parse(&words(&["data", "a", "b"])).is_err());
        assert_eq!(
            at(Kind::Secrets, Some("db/password")).path(),
            "/v1/state/secrets/db%2Fpassword"
        );
        assert_eq!(Address::report_key(&words(&["report/x"])), Ok("x".into()));
        assert_eq!(
            Address::report_key(&words(&["reports", "x"])),
            Ok("x".into())
        );
        assert_eq!(Address::report_key(&words(&["x"])), Ok("x".into()));
        assert!(Address::report_key(&words(&["x", "y"])).is_err());
    }

    #[test]
    fn raw_values() {
        let raw = |k, keyed, body: &str| raw_text(k, keyed, body.as_bytes());
        assert_eq!(
            raw(Kind::Metadata, true, r#"{"key":"r","value":"eu\n1"}"#).as_deref(),
            Some("eu\n1")
        );
        assert_eq!(
            raw(
                Kind::Report,
                true,
                r#"{"key":"k","content_type":"t","payload":"healthy","version":1,"updated_at":"x"}"#
            )
            .as_deref(),
            Some("healthy")
        );
        assert_eq!(
            raw(
                Kind::Data,
                true,
                r#"{"key":"k","content_type":"t","payload": {"n": 1.0, "b": 1e3},"version":1,"updated_at":"x"}"#
            )
            .as_deref(),
            Some(r#"{"n":1.0,"b":1e3}"#)
        );
        assert_eq!(
            raw(
                Kind::Report,
                false,
                r#"[{"key":"a","version":1},{"key":"b","version":2}]"#
            )
            .as_deref(),
            Some("a\nb")
        );
        assert_eq!(
            raw(Kind::Metadata, false, r#"{"x":"1","y":"2"}"#).as_deref(),
            Some("x\ny")
        );
        assert_eq!(raw(Kind::Data, true, "not json"), None);
    }
}
