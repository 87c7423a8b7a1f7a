//! Creating signed event envelopes: the development control plane's half of
//! [`crate::events::verify`], also used by tests.
//!
//! [`Signer`] wraps a `ring` Ed25519 key pair (from a 32-byte seed, a PKCS#8 document,
//! or freshly generated) and writes complete envelope JSON whose signature covers the
//! Go-canonical bytes of [`crate::events::canonical`]. It keeps no state between
//! envelopes (choosing event IDs, nonces and times is the caller's business, with
//! [`new_nonce`] as a helper) and never writes keys anywhere.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::value::RawValue;
use zeroize::Zeroizing;

use super::canonical::{canonical_bytes, write_go_string};
use super::verify::PublicKey;
use crate::encoding::encode_hex;
use crate::timefmt::parse_rfc3339;

/// Why an envelope or key could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("payload is not valid JSON: {0}")]
    Payload(String),
    #[error("issued_at is not an RFC 3339 time: {0:?}")]
    IssuedAt(String),
    #[error("invalid Ed25519 private key")]
    Key,
    #[error("the system random number generator failed")]
    Rng,
}

/// An Ed25519 signing key.
pub struct Signer {
    key: Ed25519KeyPair,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.public_key_b64())
    }
}

impl Signer {
    /// From a raw 32-byte Ed25519 seed (private key).
    pub fn from_seed(seed: &[u8; 32]) -> Result<Signer, SignError> {
        let key = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| SignError::Key)?;
        Ok(Signer { key })
    }

    /// From a PKCS#8 v1 or v2 document, as [`Signer::generate`] returns.
    pub fn from_pkcs8(document: &[u8]) -> Result<Signer, SignError> {
        let key =
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(document).map_err(|_| SignError::Key)?;
        Ok(Signer { key })
    }

    /// A new random key, with its PKCS#8 document so it can be stored and reloaded.
    pub fn generate() -> Result<(Signer, Zeroizing<Vec<u8>>), SignError> {
        let document =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| SignError::Rng)?;
        let document = Zeroizing::new(document.as_ref().to_vec());
        Ok((Signer::from_pkcs8(&document)?, document))
    }

    pub fn key_pair(&self) -> &Ed25519KeyPair {
        &self.key
    }

    pub fn public_key(&self) -> PublicKey {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(self.key.public_key().as_ref());
        PublicKey::from_bytes(bytes)
    }

    /// The public key in standard base64: the signing key file's content.
    pub fn public_key_b64(&self) -> String {
        STANDARD.encode(self.key.public_key().as_ref())
    }

    /// See [`sign_envelope`].
    pub fn sign_envelope(
        &self,
        event_type: &str,
        event_id: &str,
        issued_at: &str,
        nonce: &str,
        payload_json: &str,
    ) -> Result<String, SignError> {
        sign_envelope(
            &self.key,
            event_type,
            event_id,
            issued_at,
            nonce,
            payload_json,
        )
    }
}

/// The complete envelope JSON `{event_type, event_id, issued_at, nonce, payload,
/// signature}`. `issued_at` and the payload text are written as given (so a test can
/// send a pretty payload or an untrimmed fraction); the signature covers their
/// canonical form, exactly as a Go control plane signs.
pub fn sign_envelope(
    key: &Ed25519KeyPair,
    event_type: &str,
    event_id: &str,
    issued_at: &str,
    nonce: &str,
    payload_json: &str,
) -> Result<String, SignError> {
    let payload: &RawValue =
        serde_json::from_str(payload_json).map_err(|e| SignError::Payload(e.to_string()))?;
    let ts = parse_rfc3339(issued_at).ok_or_else(|| SignError::IssuedAt(issued_at.to_owned()))?;
    let message = canonical_bytes(event_type, event_id, ts, nonce, payload.get());
    let signature = STANDARD.encode(key.sign(&message).as_ref());

    let mut out = Vec::with_capacity(message.len() + 120);
    out.extend_from_slice(b"{\"event_type\":");
    write_go_string(&mut out, event_type);
    out.extend_from_slice(b",\"event_id\":");
    write_go_string(&mut out, event_id);
    out.extend_from_slice(b",\"issued_at\":");
    write_go_string(&mut out, issued_at);
    out.extend_from_slice(b",\"nonce\":");
    write_go_string(&mut out, nonce);
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(payload.get().as_bytes());
    out.extend_from_slice(b",\"signature\":\"");
    out.extend_from_slice(signature.as_bytes());
    out.extend_from_slice(b"\"}");
    // Only valid UTF-8 was appended (string slices and ASCII).
    String::from_utf8(out).map_err(|e| SignError::Payload(e.to_string()))
}

/// A fresh random nonce: 16 bytes as 32 lowercase hex digits.
pub fn new_nonce() -> Result<String, SignError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| SignError::Rng)?;
    Ok(encode_hex(&bytes))
}
