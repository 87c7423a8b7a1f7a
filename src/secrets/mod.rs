//! Secret values, fetched live: ask the control plane for one encrypted secret, open it
//! with the node secret key (`nsk`, AES-256-GCM in `cipher`), and hand the plaintext
//! over in zeroizing storage. Every fetch is counted by outcome in the link's health
//! record.
//!
//! `Secrets::fetch` is a plain blocking call that any thread may make; it keeps nothing
//! between calls and never caches, logs or writes a value. What a failure means to an
//! HTTP client is the API's business (`api::error`, one mapping from `SecretError`).

pub mod cipher;
pub mod nsk;

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::cp::client::{CpClient, CpError};
use crate::telemetry::health::{LinkHealth, SecretOutcome};
use cipher::decrypt_secret;
use nsk::Nsk;

/// A decrypted secret value; the plaintext is wiped when it is dropped.
pub struct Secret {
    pub value: Zeroizing<String>,
    pub version: i64,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("value", &"<redacted>")
            .field("version", &self.version)
            .finish()
    }
}

/// Why a secret could not be fetched. Carries no key material and no plaintext.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// No control plane (or no NSK) is configured: a cache-only node.
    #[error("secrets are unavailable: no control plane is configured")]
    NotConfigured,
    /// The control plane does not know the secret (404).
    #[error("secret not found")]
    NotFound,
    /// The control plane could not be asked or answered with an error.
    #[error("control plane unavailable: {0}")]
    Unavailable(CpError),
    /// The value does not open with the NSK (or is not UTF-8 text).
    #[error("secret could not be decrypted")]
    Decrypt,
}

impl SecretError {
    /// The outcome label this failure is counted and logged under.
    pub fn outcome(&self) -> SecretOutcome {
        match self {
            SecretError::NotFound => SecretOutcome::NotFound,
            SecretError::Decrypt => SecretOutcome::DecryptError,
            SecretError::NotConfigured | SecretError::Unavailable(_) => SecretOutcome::Unavailable,
        }
    }
}

/// Where secret values come from: the control plane, and the key that opens them.
pub struct Secrets {
    client: Option<Arc<CpClient>>,
    nsk: Option<Nsk>,
    health: Arc<LinkHealth>,
}

impl Secrets {
    /// Without a client or an NSK every fetch is `SecretError::NotConfigured`.
    pub fn new(
        client: Option<Arc<CpClient>>,
        nsk: Option<Nsk>,
        health: Arc<LinkHealth>,
    ) -> Secrets {
        Secrets {
            client,
            nsk,
            health,
        }
    }

    /// Fetches `key` from the control plane now and decrypts it; counts the outcome.
    pub fn fetch(&self, key: &str) -> Result<Secret, SecretError> {
        let result = self.fetch_uncounted(key);
        let outcome = result
            .as_ref()
            .map_or_else(SecretError::outcome, |_| SecretOutcome::Ok);
        self.health.record_secret_fetch(outcome);
        result
    }

    fn fetch_uncounted(&self, key: &str) -> Result<Secret, SecretError> {
        let (Some(client), Some(nsk)) = (&self.client, &self.nsk) else {
            return Err(SecretError::NotConfigured);
        };
        let response = client.fetch_secret(key).map_err(|e| match e {
            CpError::Status { status: 404, .. } => SecretError::NotFound,
            other => {
                log::warn!(key = key, error:% = other; "secret fetch failed");
                SecretError::Unavailable(other)
            }
        })?;
        let value = decrypt_secret(nsk, &response.ciphertext, &response.nonce)
            .map_err(|_| SecretError::Decrypt)?;
        Ok(Secret {
            value,
            version: response.version,
        })
    }
}
