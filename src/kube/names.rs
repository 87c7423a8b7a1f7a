//! Kubernetes names for the node's objects: the custom resource `node-<node>` and the
//! ciphertext Secrets `plexd-secret-<node>-<key>`, plus label-value checks.
//!
//! Names must be DNS-1123 subdomains (at most 253 characters of `[a-z0-9.-]`, with
//! alphanumeric ends); node ids (`n_abc123`) and keys (`db/password`, `TLS_Cert`) are
//! not. `sanitize` lowercases and turns everything outside `[a-z0-9-]` into `-`, which
//! reproduces the design's examples (`n_abc123` → `node-n-abc123`). Where that mapping
//! is not enough — an empty result, a name over 253 characters, two keys that map to
//! the same name — the name is cut and gets `-` plus the first 10 hex digits of the
//! SHA-256 of the original text. Everything here is a pure function.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use crate::encoding::encode_hex;

/// Longest object name (DNS-1123 subdomain).
pub const MAX_NAME: usize = 253;
/// Longest label value.
pub const MAX_LABEL_VALUE: usize = 63;
const SECRET_PREFIX: &str = "plexd-secret-";
const RESOURCE_PREFIX: &str = "node-";

/// Lowercase; characters outside `[a-z0-9-]` become `-`; `-` trimmed from both ends.
pub fn sanitize(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    mapped.trim_matches('-').to_owned()
}

/// The first 10 hex digits of SHA-256(`s`).
pub fn short_hash(s: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    encode_hex(&digest.as_ref()[..5])
}

/// `base` made a valid name: cut to leave room, trailing `-` removed, `-hash` added.
fn with_hash(base: &str, original: &str) -> String {
    let hash = short_hash(original);
    let room = MAX_NAME - hash.len() - 1;
    let cut = &base[..base.len().min(room)];
    format!("{}-{hash}", cut.trim_end_matches('-'))
}

/// `prefix` + `sanitize(text)`, or the hashed form when that is empty or too long.
fn prefixed(prefix: &str, text: &str) -> String {
    let part = sanitize(text);
    let plain = format!("{prefix}{part}");
    if part.is_empty() || plain.len() > MAX_NAME {
        with_hash(&plain, text)
    } else {
        plain
    }
}

/// The custom resource's name: `node-<sanitised node id>`.
pub fn resource_name(node_id: &str) -> String {
    prefixed(RESOURCE_PREFIX, node_id)
}

/// The resource's name when the plain one is taken by another node's resource (two
/// node ids that sanitise alike): the plain name with the node id's hash suffix.
pub fn hashed_resource_name(node_id: &str) -> String {
    let plain = resource_name(node_id);
    let hash = short_hash(node_id);
    if plain.ends_with(&hash) {
        plain
    } else {
        with_hash(&plain, node_id)
    }
}

/// The resource's name as the daemon uses it, shared by the mirror (which switches it
/// to the hashed form on a collision), the watch and the authenticator.
#[derive(Debug, Clone)]
pub struct ResourceName(Arc<RwLock<String>>);

impl ResourceName {
    /// Starts with the plain name of `node_id`.
    pub fn for_node(node_id: &str) -> ResourceName {
        ResourceName(Arc::new(RwLock::new(resource_name(node_id))))
    }

    pub fn get(&self) -> String {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The name without `node-`: what the Secret names carry (`plexd-secret-<part>-…`),
    /// so they follow the resource's name on a collision too.
    pub fn node_part(&self) -> String {
        let name = self.get();
        name.strip_prefix(RESOURCE_PREFIX)
            .unwrap_or(&name)
            .to_owned()
    }

    /// Switches to `name`; returns whether it changed.
    pub fn set(&self, name: &str) -> bool {
        let mut current = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if *current == name {
            return false;
        }
        *current = name.to_owned();
        true
    }
}

/// The plain Secret name of `key`, before collisions are considered. `node` is the
/// node part of the resource's name (`ResourceName::node_part`).
fn plain_secret_name(node: &str, key: &str) -> String {
    prefixed(&format!("{SECRET_PREFIX}{node}-"), key)
}

/// The Secret name of each key of the secret index, for the node part `node` of the
/// resource's name (`n-abc123` for `node-n-abc123`). Keys whose plain names collide
/// get the hashed form, except a key that is its own sanitised form (`tls-cert`),
/// which keeps the plain name — so a name never changes because another key appears
/// unless the key itself needed sanitising.
pub fn secret_names<'a>(
    node: &str,
    keys: impl IntoIterator<Item = &'a str>,
) -> BTreeMap<String, String> {
    let mut by_name: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for key in keys {
        by_name
            .entry(plain_secret_name(node, key))
            .or_default()
            .push(key);
    }
    let mut out = BTreeMap::new();
    for (name, keys) in by_name {
        if keys.len() == 1 {
            out.insert(keys[0].to_owned(), name);
            continue;
        }
        for key in keys {
            let named = if sanitize(key) == key {
                name.clone()
            } else {
                with_hash(&name, key)
            };
            out.insert(key.to_owned(), named);
        }
    }
    out
}

/// The Secret name `key` has (or would have) next to the keys of `index`.
pub fn secret_name_among<'a>(
    node: &str,
    key: &'a str,
    index: impl IntoIterator<Item = &'a str>,
) -> String {
    let names = secret_names(node, index.into_iter().chain(std::iter::once(key)));
    names
        .get(key)
        .cloned()
        .unwrap_or_else(|| plain_secret_name(node, key))
}

/// The prefix every Secret name of the node part `node` starts with.
pub fn secret_prefix(node: &str) -> String {
    format!("{SECRET_PREFIX}{node}-")
}

/// Whether `v` can be a label value: at most 63 characters of `[A-Za-z0-9_.-]`,
/// alphanumeric at both ends (or empty).
pub fn is_label_value(v: &str) -> bool {
    if v.is_empty() {
        return true;
    }
    let b = v.as_bytes();
    v.len() <= MAX_LABEL_VALUE
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Whether `s` is a DNS-1123 subdomain.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_designs_examples() {
        assert_eq!(sanitize("n_abc123"), "n-abc123");
        assert_eq!(resource_name("n_abc123"), "node-n-abc123");
        let names = secret_names("n-abc123", ["tls-cert", "api-token"]);
        assert_eq!(names["tls-cert"], "plexd-secret-n-abc123-tls-cert");
        assert_eq!(names["api-token"], "plexd-secret-n-abc123-api-token");
    }

    #[test]
    fn sanitising() {
        assert_eq!(sanitize("TLS_Cert"), "tls-cert");
        assert_eq!(sanitize("db/password"), "db-password");
        assert_eq!(sanitize("--a.b--"), "a-b");
        assert_eq!(sanitize("Zürich"), "z-rich");
        assert_eq!(sanitize("___"), "");
        assert_eq!(ResourceName::for_node("n_abc123").node_part(), "n-abc123");
        assert_eq!(secret_prefix("n-abc123"), "plexd-secret-n-abc123-");
    }

    #[test]
    fn empty_and_long_names_get_a_hash() {
        let n = resource_name("___");
        assert_eq!(n, format!("node-{}", short_hash("___")));
        assert!(is_dns_subdomain(&n));
        let long = "x".repeat(400);
        let n = resource_name(&long);
        assert_eq!(n.len(), MAX_NAME);
        assert!(n.ends_with(&short_hash(&long)));
        assert!(is_dns_subdomain(&n));
        let names = secret_names("n-abc123", [long.as_str(), "///"]);
        for name in names.values() {
            assert!(is_dns_subdomain(name), "{name}");
        }
        assert_eq!(
            names["///"],
            format!("plexd-secret-n-abc123-{}", short_hash("///"))
        );
    }

    #[test]
    fn collisions_are_resolved_deterministically() {
        let names = secret_names("n", ["tls-cert", "TLS_Cert", "tls.cert"]);
        assert_eq!(names["tls-cert"], "plexd-secret-n-tls-cert");
        assert_eq!(
            names["TLS_Cert"],
            format!("plexd-secret-n-tls-cert-{}", short_hash("TLS_Cert"))
        );
        assert_eq!(
            names["tls.cert"],
            format!("plexd-secret-n-tls-cert-{}", short_hash("tls.cert"))
        );
        // Alone, a key that needs sanitising keeps the plain sanitised name.
        assert_eq!(
            secret_names("n", ["TLS_Cert"])["TLS_Cert"],
            "plexd-secret-n-tls-cert"
        );
        // The name of a key not (yet) in the index, next to the index.
        assert_eq!(
            secret_name_among("n", "TLS_Cert", ["tls-cert"]),
            format!("plexd-secret-n-tls-cert-{}", short_hash("TLS_Cert"))
        );
        assert_eq!(
            secret_name_among("n", "db", ["tls-cert"]),
            "plexd-secret-n-db"
        );
        let distinct: std::collections::BTreeSet<_> = names.values().collect();
        assert_eq!(distinct.len(), 3);
    }

    #[test]
    fn collision_names() {
        let n = hashed_resource_name("n_abc123");
        assert_eq!(n, format!("node-n-abc123-{}", short_hash("n_abc123")));
        assert_ne!(
            hashed_resource_name("n_abc123"),
            hashed_resource_name("n-abc123")
        );
        assert_eq!(hashed_resource_name("___"), resource_name("___"));
        let shared = ResourceName::for_node("n_abc123");
        let other = shared.clone();
        assert_eq!(other.get(), "node-n-abc123");
        assert!(shared.set(&n));
        assert!(!shared.set(&n));
        assert_eq!(other.get(), n);
    }

    #[test]
    fn label_values() {
        assert!(is_label_value("n_abc123"));
        assert!(is_label_value(""));
        assert!(!is_label_value("_x"));
        assert!(!is_label_value(&"a".repeat(64)));
        assert!(!is_label_value("a/b"));
        assert!(is_dns_subdomain("node-n-abc123"));
        assert!(!is_dns_subdomain("node-n_abc123"));
        assert!(!is_dns_subdomain("-a"));
    }
}
