//! Kubernetes mode: the node's state mirrored into a `PlexdNodeState` custom resource,
//! workload reports imported from its `.status.report`, secret ciphertext kept in
//! owned v1 Secrets, and callers of the TCP listener authenticated with the
//! TokenReview and SubjectAccessReview APIs.
//!
//! The store stays the single source of truth. The mirror (`mirror`, thread
//! `k8s-sync`) is level-triggered: every wake-up (a store change, a watch event, the
//! resync timer) re-renders `.spec` from the store and compares it semantically with
//! the resource, runs the three-way merge of `.status.report` (`merge`, with the base
//! in `record`), and brings the Secrets (`secrets`) in line. Workload edits become
//! ordinary store writes (`Store::submit_put`/`submit_delete`), journalled and synced
//! upstream like socket writes. The watch (`watch`, thread `k8s-watch`) only hands the
//! latest object to the mirror. `authn` decides TCP callers. `client` is the HTTP
//! client; `config` the flags and in-cluster discovery; `names` the object names;
//! `render` the rendering and semantic comparison; `health` the health section and
//! metrics.
//!
//! Deliberately not here: routing (the API asks `authn` for a decision), decryption
//! (the Secrets hold ciphertext fetched as is), deleting the resource (never, not even
//! at shutdown), listing Secrets (never: the names come from the spec and the record).

pub mod authn;
pub mod client;
pub mod config;
pub mod merge;
pub mod mirror;
pub mod names;
pub mod record;
pub mod render;
pub mod secrets;
pub mod watch;

use client::{query_value, FIELD_MANAGER};

pub const GROUP: &str = "plexd.plexsphere.com";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "plexd.plexsphere.com/v1alpha1";
pub const KIND: &str = "PlexdNodeState";
pub const PLURAL: &str = "plexdnodestates";
/// The CRD's name, as `kubectl get crd` shows it.
pub const CRD_NAME: &str = "plexdnodestates.plexd.plexsphere.com";

pub const LABEL_NODE_ID: &str = "plexd.plexsphere.com/node-id";
pub const LABEL_K8S_NODE: &str = "plexd.plexsphere.com/k8s-node";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "plexd-nodeapi";
pub const ANNOTATION_ENCRYPTED: &str = "plexd.plexsphere.com/encrypted";
pub const ANNOTATION_ALGORITHM: &str = "plexd.plexsphere.com/encryption-algorithm";
pub const ANNOTATION_KEY: &str = "plexd.plexsphere.com/key";
pub const ANNOTATION_VERSION: &str = "plexd.plexsphere.com/version";
pub const ALGORITHM: &str = "AES-256-GCM";

/// API paths of the node's objects. The resource's name is shared: it can change
/// once, on a name collision (see `names::ResourceName`).
#[derive(Debug, Clone)]
pub struct Paths {
    pub namespace: String,
    pub name: names::ResourceName,
}

/// The query every write carries.
fn write_query() -> String {
    format!("?fieldManager={FIELD_MANAGER}&fieldValidation=Strict")
}

impl Paths {
    pub fn new(namespace: &str, name: names::ResourceName) -> Paths {
        Paths {
            namespace: namespace.to_owned(),
            name,
        }
    }

    /// `/apis/plexd.plexsphere.com/v1alpha1/namespaces/{ns}/plexdnodestates`.
    pub fn collection(&self) -> String {
        format!(
            "/apis/{GROUP}/{VERSION}/namespaces/{}/{PLURAL}",
            query_value(&self.namespace)
        )
    }

    pub fn resource(&self) -> String {
        format!("{}/{}", self.collection(), query_value(&self.name.get()))
    }

    pub fn create(&self) -> String {
        format!("{}{}", self.collection(), write_query())
    }

    pub fn update(&self) -> String {
        format!("{}{}", self.resource(), write_query())
    }

    pub fn status(&self) -> String {
        format!("{}/status{}", self.resource(), write_query())
    }

    /// The watch of this one resource, from `rv` (unset: current state first).
    pub fn watch(&self, rv: Option<&str>, timeout_secs: u64) -> String {
        let mut path = format!(
            "{}?watch=1&fieldSelector={}&allowWatchBookmarks=true&timeoutSeconds={timeout_secs}",
            self.collection(),
            query_value(&format!("metadata.name={}", self.name.get())),
        );
        if let Some(rv) = rv {
            path.push_str("&resourceVersion=");
            path.push_str(&query_value(rv));
        }
        path
    }

    fn secrets(&self) -> String {
        format!(
            "/api/v1/namespaces/{}/secrets",
            query_value(&self.namespace)
        )
    }

    pub fn secret(&self, name: &str) -> String {
        format!("{}/{}", self.secrets(), query_value(name))
    }

    pub fn secret_create(&self) -> String {
        format!("{}{}", self.secrets(), write_query())
    }

    pub fn secret_update(&self, name: &str) -> String {
        format!("{}{}", self.secret(name), write_query())
    }
}

/// `metadata.<field>` of an object as a string.
pub fn meta_str<'a>(obj: &'a serde_json::Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let p = Paths::new("plexd-system", names::ResourceName::for_node("n_abc123"));
        assert_eq!(
            p.update(),
            "/apis/plexd.plexsphere.com/v1alpha1/namespaces/plexd-system/plexdnodestates/node-n-abc123?fieldManager=plexd-nodeapi&fieldValidation=Strict"
        );
        assert_eq!(
            p.watch(Some("42"), 270),
            "/apis/plexd.plexsphere.com/v1alpha1/namespaces/plexd-system/plexdnodestates?watch=1&fieldSelector=metadata.name%3Dnode-n-abc123&allowWatchBookmarks=true&timeoutSeconds=270&resourceVersion=42"
        );
        assert_eq!(
            p.secret("plexd-secret-n-abc123-tls-cert"),
            "/api/v1/namespaces/plexd-system/secrets/plexd-secret-n-abc123-tls-cert"
        );
        assert_eq!(CRD_NAME, format!("{PLURAL}.{GROUP}"));
        assert_eq!(API_VERSION, format!("{GROUP}/{VERSION}"));
    }
}
