//! The Secrets holding each secret's NSK ciphertext: one v1 Secret per secret ref,
//! `data.value` and `data.nonce` the standard base64 of the raw ciphertext and nonce
//! as the control plane sends them, annotated as encrypted (AES-256-GCM) and owned by
//! the custom resource (so the garbage collector removes them with it).
//!
//! Nothing is decrypted here: the plaintext never exists. A Secret is checked with a
//! GET (version annotation, owner uid, both data keys) and only rewritten when out of
//! date; results are remembered until the next full resync, so a quiet node makes no
//! calls. Deleting needs a name: the candidates come from the resource's previous
//! `spec.secretRefs` and the mirror record, never from a `list`; and only a Secret
//! labelled as plexd's, with our name prefix, is ever deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::cp::client::{CpClient, CpError};
use crate::model::SecretRef;

use super::client::{KubeClient, KubeError};
use super::names::secret_prefix;
use super::{
    Paths, ALGORITHM, ANNOTATION_ALGORITHM, ANNOTATION_ENCRYPTED, ANNOTATION_KEY,
    ANNOTATION_VERSION, API_VERSION, KIND, LABEL_MANAGED_BY, LABEL_NODE_ID, MANAGED_BY,
};
use crate::telemetry::kubernetes::{KubeHealth, WRITES};

/// What a pass over the Secrets found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SecretsOutcome {
    /// Names created or updated (to remember in the record).
    pub written: BTreeSet<String>,
    /// Names deleted (to forget in the record).
    pub deleted: BTreeSet<String>,
    /// Some ciphertext could not be fetched: try again soon.
    pub incomplete: bool,
}

/// Keeps the Secrets in line with the secret index.
pub struct SecretMirror {
    client: Arc<KubeClient>,
    cp: Option<Arc<CpClient>>,
    health: Arc<KubeHealth>,
    paths: Paths,
    node_id: String,
    /// Name → (version, owner uid) known to be in place since the last resync.
    in_place: BTreeMap<String, (i64, String)>,
    warned_no_cp: bool,
}

fn b64() -> &'static base64::engine::GeneralPurpose {
    &base64::engine::general_purpose::STANDARD
}

impl SecretMirror {
    pub fn new(
        client: Arc<KubeClient>,
        cp: Option<Arc<CpClient>>,
        health: Arc<KubeHealth>,
        paths: Paths,
        node_id: &str,
    ) -> SecretMirror {
        SecretMirror {
            client,
            cp,
            health,
            paths,
            node_id: node_id.to_owned(),
            in_place: BTreeMap::new(),
            warned_no_cp: false,
        }
    }

    /// Forget what is known to be in place: the next pass checks every Secret again.
    pub fn forget(&mut self) {
        self.in_place.clear();
    }

    /// Creates or updates the Secret of each ref (`names`: key → Secret name), owned by
    /// the resource `owner_uid`. Kubernetes errors end the pass; control-plane errors
    /// only mark it incomplete.
    pub fn ensure(
        &mut self,
        refs: &[SecretRef],
        names: &BTreeMap<String, String>,
        owner_uid: &str,
    ) -> Result<SecretsOutcome, KubeError> {
        let mut out = SecretsOutcome::default();
        let Some(cp) = self.cp.clone() else {
            if !refs.is_empty() && !self.warned_no_cp {
                log::warn!("no control plane configured: the ciphertext Secrets cannot be written");
                self.warned_no_cp = true;
            }
            return Ok(out);
        };
        for r in refs {
            let Some(name) = names.get(&r.key) else {
                continue;
            };
            if self.in_place.get(name) == Some(&(r.version, owner_uid.to_owned())) {
                continue;
            }
            let current = match self.client.get(&self.paths.secret(name)) {
                Ok(s) => Some(s),
                Err(e) if e.is(404) => None,
                Err(e) => return Err(e),
            };
            if let Some(s) = &current {
                if in_place(s, r.version, owner_uid) {
                    self.in_place
                        .insert(name.clone(), (r.version, owner_uid.to_owned()));
                    continue;
                }
            }
            let fetched = match cp.fetch_secret(&r.key, crate::cp::client::REQUEST_TIMEOUT) {
                Ok(f) => f,
                Err(e) => {
                    if !matches!(e, CpError::Status { status: 404, .. }) {
                        out.incomplete = true;
                    }
                    log::warn!(key = r.key.as_str(), error:% = e; "cannot fetch a secret's ciphertext for its Kubernetes Secret; will retry");
                    continue;
                }
            };
            let (Ok(ciphertext), Ok(nonce)) = (
                b64().decode(&fetched.ciphertext),
                b64().decode(&fetched.nonce),
            ) else {
                log::error!(key = r.key.as_str(); "the control plane sent a secret whose ciphertext or nonce is not base64; not mirrored");
                continue;
            };
            let body = self.secret_body(
                current.as_ref(),
                name,
                &r.key,
                fetched.version,
                owner_uid,
                &ciphertext,
                &nonce,
            );
            match self.write(current.is_some(), name, body) {
                Ok(()) => {
                    self.health.count(WRITES, "secret", "ok");
                    self.in_place
                        .insert(name.clone(), (r.version, owner_uid.to_owned()));
                    out.written.insert(name.clone());
                }
                Err(e) if e.is_bad_content() => {
                    self.health.count(WRITES, "secret", "rejected");
                    log::error!(secret = name.as_str(), error:% = e, causes:? = causes(&e); "the Kubernetes API refused a ciphertext Secret");
                }
                Err(e) => {
                    self.health.count(WRITES, "secret", "error");
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// POST (409: GET, then PUT) or PUT with the resourceVersion.
    fn write(&self, exists: bool, name: &str, body: Value) -> Result<(), KubeError> {
        if !exists {
            match self.client.post(&self.paths.secret_create(), &body) {
                Ok(_) => return Ok(()),
                Err(e) if e.is(409) => {
                    let current = self.client.get(&self.paths.secret(name))?;
                    let mut body = body;
                    body["metadata"]["resourceVersion"] =
                        current["metadata"]["resourceVersion"].clone();
                    return self
                        .client
                        .put(&self.paths.secret_update(name), &body)
                        .map(drop);
                }
                Err(e) => return Err(e),
            }
        }
        self.client
            .put(&self.paths.secret_update(name), &body)
            .map(drop)
    }

    #[allow(clippy::too_many_arguments)]
    fn secret_body(
        &self,
        current: Option<&Value>,
        name: &str,
        key: &str,
        version: i64,
        owner_uid: &str,
        ciphertext: &[u8],
        nonce: &[u8],
    ) -> Value {
        let mut meta = Map::new();
        meta.insert("name".into(), name.into());
        meta.insert("namespace".into(), self.paths.namespace.as_str().into());
        let mut labels = current
            .and_then(|c| c["metadata"]["labels"].as_object().cloned())
            .unwrap_or_default();
        labels.insert(LABEL_MANAGED_BY.into(), MANAGED_BY.into());
        if super::names::is_label_value(&self.node_id) {
            labels.insert(LABEL_NODE_ID.into(), self.node_id.as_str().into());
        }
        let mut annotations = current
            .and_then(|c| c["metadata"]["annotations"].as_object().cloned())
            .unwrap_or_default();
        annotations.insert(ANNOTATION_ENCRYPTED.into(), "true".into());
        annotations.insert(ANNOTATION_ALGORITHM.into(), ALGORITHM.into());
        annotations.insert(ANNOTATION_KEY.into(), key.into());
        annotations.insert(ANNOTATION_VERSION.into(), version.to_string().into());
        // Keep foreign owners; replace ours (an older uid after the resource was recreated).
        let mut owners: Vec<Value> = current
            .and_then(|c| c["metadata"]["ownerReferences"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|o| !(o["kind"] == KIND && o["name"] == self.paths.name.get().as_str()))
            .collect();
        owners.push(json!({
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.paths.name.get(),
            "uid": owner_uid,
            "controller": true,
        }));
        meta.insert("labels".into(), Value::Object(labels));
        meta.insert("annotations".into(), Value::Object(annotations));
        meta.insert("ownerReferences".into(), Value::Array(owners));
        if let Some(rv) = current.and_then(|c| c["metadata"]["resourceVersion"].as_str()) {
            meta.insert("resourceVersion".into(), rv.into());
        }
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta,
            "type": "Opaque",
            "data": {"value": b64().encode(ciphertext), "nonce": b64().encode(nonce)},
        })
    }

    /// Deletes the Secrets among `candidates` not in `keep`, if they are ours.
    pub fn remove_stale(
        &mut self,
        candidates: &BTreeSet<String>,
        keep: &BTreeSet<String>,
    ) -> Result<BTreeSet<String>, KubeError> {
        let prefix = secret_prefix(&self.paths.name.node_part());
        let mut deleted = BTreeSet::new();
        for name in candidates.difference(keep) {
            self.in_place.remove(name);
            if !name.starts_with(&prefix) {
                deleted.insert(name.clone());
                continue;
            }
            match self.client.get(&self.paths.secret(name)) {
                Ok(s) if s["metadata"]["labels"][LABEL_MANAGED_BY] == MANAGED_BY => {}
                Ok(_) => {
                    log::warn!(secret = name.as_str(); "not deleting a Secret plexd did not create");
                    deleted.insert(name.clone());
                    continue;
                }
                Err(e) if e.is(404) => {
                    deleted.insert(name.clone());
                    continue;
                }
                Err(e) => return Err(e),
            }
            match self.client.delete(&self.paths.secret(name)) {
                Ok(()) => {
                    self.health.count(WRITES, "secret_delete", "ok");
                    log::info!(secret = name.as_str(); "deleted the Secret of a removed secret ref");
                    deleted.insert(name.clone());
                }
                Err(e) if e.is(404) => {
                    deleted.insert(name.clone());
                }
                Err(e) => {
                    self.health.count(WRITES, "secret_delete", "error");
                    return Err(e);
                }
            }
        }
        Ok(deleted)
    }
}

/// Whether `secret` already holds `version`, owned by `owner_uid`, with both data keys.
fn in_place(secret: &Value, version: i64, owner_uid: &str) -> bool {
    let meta = &secret["metadata"];
    let version_ok = meta["annotations"][ANNOTATION_VERSION].as_str() == Some(&version.to_string());
    let owned = meta["ownerReferences"]
        .as_array()
        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == owner_uid));
    let data_ok = secret["data"]["value"].is_string() && secret["data"]["nonce"].is_string();
    let marked = meta["annotations"][ANNOTATION_ENCRYPTED] == "true"
        && meta["annotations"][ANNOTATION_ALGORITHM] == ALGORITHM;
    version_ok && owned && data_ok && marked
}

pub(crate) fn causes(e: &KubeError) -> Vec<String> {
    match e {
        KubeError::Status(s) => s.causes.clone(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_place_needs_version_owner_data_and_markers() {
        let good = json!({
            "metadata": {
                "annotations": {ANNOTATION_VERSION: "2", ANNOTATION_ENCRYPTED: "true", ANNOTATION_ALGORITHM: ALGORITHM},
                "ownerReferences": [{"uid": "u1"}],
            },
            "data": {"value": "eA==", "nonce": "bg=="},
        });
        assert!(in_place(&good, 2, "u1"));
        assert!(!in_place(&good, 3, "u1"), "new version");
        assert!(!in_place(&good, 2, "u2"), "recreated owner");
        let mut no_nonce = good.clone();
        no_nonce["data"].as_object_mut().unwrap().remove("nonce");
        assert!(!in_place(&no_nonce, 2, "u1"));
        let mut unmarked = good;
        unmarked["metadata"]["annotations"][ANNOTATION_ENCRYPTED] = "false".into();
        assert!(!in_place(&unmarked, 2, "u1"));
    }
}
