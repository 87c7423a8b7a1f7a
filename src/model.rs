//! Wire and file types shared by the cache, the local API and the control-plane link.
//!
//! These are plain serde types with the exact JSON field names that the Go `plexd`
//! agent uses, so files it wrote load unchanged and the control plane sees the
//! same protocol. Payloads are kept as raw JSON text (`RawValue`) so they are
//! served byte for byte as they arrived. This module does no I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// Metadata: string keys to string values, kept sorted by key.
pub type Metadata = BTreeMap<String, String>;

/// A data entry pushed by the control plane; also the on-disk form of `data/{key}.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataEntry {
    pub key: String,
    pub content_type: String,
    pub payload: Box<RawValue>,
    pub version: i64,
    /// Kept as the control plane sent it (RFC 3339), never re-formatted.
    pub updated_at: String,
}

impl PartialEq for DataEntry {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
            && self.content_type == other.content_type
            && self.payload.get() == other.payload.get()
            && self.version == other.version
            && self.updated_at == other.updated_at
    }
}

/// A report entry written by a local workload; also the on-disk form of `report/{key}.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportEntry {
    pub key: String,
    pub content_type: String,
    pub payload: RawJson,
    pub version: i64,
    /// RFC 3339 UTC, written by us.
    pub updated_at: String,
}

impl ReportEntry {
    /// Bytes of the payload's JSON text: what the report quota counts.
    pub fn payload_len(&self) -> u64 {
        self.payload.len() as u64
    }
}

/// A JSON value's text, kept byte for byte: in its own allocation, or as a range of a
/// rendered document it shares. A stored report keeps its payload as the range of its
/// rendered entry (`RawJson::share_within`), so a large payload is held once, not twice.
#[derive(Clone)]
pub struct RawJson(Repr);

#[derive(Clone)]
enum Repr {
    Owned(Box<RawValue>),
    /// `doc[start..start + len]` is valid UTF-8 and valid JSON (checked when made).
    Within {
        doc: Arc<[u8]>,
        start: usize,
        len: usize,
    },
}

impl RawJson {
    /// The JSON text.
    pub fn get(&self) -> &str {
        match &self.0 {
            Repr::Owned(raw) => raw.get(),
            Repr::Within { doc, start, len } => {
                // Checked to be UTF-8 when made; the fallback only guards against a bug.
                std::str::from_utf8(&doc[*start..*start + *len]).unwrap_or("null")
            }
        }
    }

    /// Bytes of the JSON text.
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Owned(raw) => raw.get().len(),
            Repr::Within { len, .. } => *len,
        }
    }

    /// Whether the text is empty (never, for valid JSON).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Points this value at its own bytes inside `doc` (a rendering of something that
    /// holds it) and frees its own copy. Left as it is when `doc` does not hold the
    /// same bytes.
    pub fn share_within(&mut self, doc: &Arc<[u8]>) {
        if let Some(start) = locate(doc, self.get().as_bytes()) {
            let len = self.len();
            self.0 = Repr::Within {
                doc: Arc::clone(doc),
                start,
                len,
            };
        }
    }
}

/// Where `text` is in `doc`: right after a `"payload":` field name as serde renders it
/// (found near the start; such a name cannot occur inside a JSON string, whose quotes
/// are escaped), else anywhere (any occurrence holds the same bytes).
fn locate(doc: &[u8], text: &[u8]) -> Option<usize> {
    const FIELD: &[u8] = b"\"payload\":";
    if let Some(at) = doc.windows(FIELD.len()).position(|w| w == FIELD) {
        let start = at + FIELD.len();
        if doc.get(start..start + text.len()) == Some(text) {
            return Some(start);
        }
    }
    let text = std::str::from_utf8(text).ok()?;
    std::str::from_utf8(doc).ok()?.find(text)
}

impl From<Box<RawValue>> for RawJson {
    fn from(raw: Box<RawValue>) -> RawJson {
        RawJson(Repr::Owned(raw))
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl Serialize for RawJson {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Repr::Owned(raw) => raw.serialize(serializer),
            Repr::Within { .. } => {
                // Borrowed, not copied: serde_json checks the text and hands it back.
                let raw: &RawValue =
                    serde_json::from_str(self.get()).map_err(serde::ser::Error::custom)?;
                raw.serialize(serializer)
            }
        }
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RawJson, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(RawJson::from)
    }
}

impl PartialEq for ReportEntry {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
            && self.content_type == other.content_type
            && self.payload.get() == other.payload.get()
            && self.version == other.version
            && self.updated_at == other.updated_at
    }
}

/// A secret's name and version; the on-disk index `secrets.json` is a list of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRef {
    pub key: String,
    pub version: i64,
}

/// `{key, version, content_type}` rows of `GET /v1/state/data` and the summary.
#[derive(Debug, Clone, Serialize)]
pub struct DataKey<'a> {
    pub key: &'a str,
    pub version: i64,
    pub content_type: &'a str,
}

/// `{key, version}` rows of the secret and report lists.
#[derive(Debug, Clone, Serialize)]
pub struct KeyVersion<'a> {
    pub key: &'a str,
    pub version: i64,
}

/// Signing keys advertised by the control plane in its state response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKeys {
    #[serde(default)]
    pub current: String,
    #[serde(default)]
    pub previous: String,
    /// RFC 3339; after this instant the previous key is no longer accepted.
    #[serde(default)]
    pub transition_expires: String,
}

/// `GET {cp}/v1/nodes/{id}/state`. Unknown fields are ignored; absent collections are
/// `None` so a reconciler can tell "empty" from "not sent".
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeState {
    #[serde(default)]
    pub metadata: Option<Metadata>,
    #[serde(default)]
    pub data: Option<Vec<DataEntry>>,
    #[serde(default)]
    pub secret_refs: Option<Vec<SecretRef>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_keys: Option<SigningKeys>,
}

/// `GET {cp}/v1/nodes/{id}/secrets/{key}`: the NSK-encrypted value, standard base64.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretResponse {
    pub key: String,
    pub ciphertext: String,
    pub nonce: String,
    pub version: i64,
}

/// `POST {cp}/v1/nodes/{id}/report`: each key at most once, as an entry or a deletion.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReportSyncRequest {
    pub entries: Vec<ReportEntry>,
    pub deleted: Vec<String>,
}

/// Payload of a `node_state_updated` event.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NodeStateUpdate {
    #[serde(default)]
    pub metadata: Option<Metadata>,
    #[serde(default)]
    pub data: Option<Vec<DataEntry>>,
}

/// Payload of a `node_secrets_updated` event.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NodeSecretsUpdate {
    #[serde(default)]
    pub secret_refs: Option<Vec<SecretRef>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(payload: &str) -> ReportEntry {
        ReportEntry {
            key: "k\"payload\":1".into(),
            content_type: "application/json".into(),
            payload: RawValue::from_string(payload.into()).unwrap().into(),
            version: 3,
            updated_at: "2026-11-29T10:00:00Z".into(),
        }
    }

    fn shared(p: &RawJson) -> bool {
        matches!(p.0, Repr::Within { .. })
    }

    #[test]
    fn a_payload_shares_its_rendering_and_renders_the_same() {
        let mut e = entry(r#"{"a": [1, 2, "x\"y"]}"#);
        let doc: Arc<[u8]> = serde_json::to_vec(&e).unwrap().into();
        e.payload.share_within(&doc);
        assert!(shared(&e.payload));
        assert_eq!(e.payload.get(), r#"{"a": [1, 2, "x\"y"]}"#);
        assert_eq!(e.payload_len(), 21);
        assert_eq!(serde_json::to_vec(&e).unwrap(), &doc[..]);
        let back: ReportEntry = serde_json::from_slice(&doc).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn a_pretty_document_is_searched_and_a_foreign_one_left_alone() {
        let mut p: RawJson = RawValue::from_string("[1,2]".into()).unwrap().into();
        let pretty: Arc<[u8]> = Arc::from(&b"{\n  \"payload\": [1,2]\n}"[..]);
        p.share_within(&pretty);
        assert!(shared(&p));
        assert_eq!(p.get(), "[1,2]");
        let mut q: RawJson = RawValue::from_string("[3]".into()).unwrap().into();
        q.share_within(&pretty);
        assert!(!shared(&q));
        assert_eq!(q.get(), "[3]");
    }
}
