//! Wire and file types shared by the cache, the local API and the control-plane link.
//!
//! These are plain serde types with the exact JSON field names that the Go `plexd`
//! agent uses, so files it wrote load unchanged and the control plane sees the
//! same protocol. Payloads are kept as raw JSON text (`RawValue`) so they are
//! served byte for byte as they arrived. This module does no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
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
    pub payload: Box<RawValue>,
    pub version: i64,
    /// RFC 3339 UTC, written by us.
    pub updated_at: String,
}

impl ReportEntry {
    /// Bytes of the payload's JSON text: what the report quota counts.
    pub fn payload_len(&self) -> u64 {
        self.payload.get().len() as u64
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
