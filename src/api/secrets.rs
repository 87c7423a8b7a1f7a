//! `GET /v1/state/secrets/{key}`: fetch the encrypted value from the control plane now,
//! decrypt it with the NSK, answer, and forget it.
//!
//! The plaintext lives only in zeroizing buffers: the decrypted string and the response
//! body, which the HTTP core drops (and so wipes) once written. Each access is logged
//! at info with key, version, outcome and caller — never the value.

use std::sync::Arc;

use serde::Serialize;
use zeroize::Zeroizing;

use crate::api::error::ApiError;
use crate::cp::client::{CpClient, CpError};
use crate::http::{Body, Request, Response, Transport};
use crate::secrets::cipher::decrypt_secret;
use crate::secrets::nsk::Nsk;
use crate::telemetry::health::{LinkHealth, SecretOutcome};

/// What the secret route needs: the control plane and the key to open what it sends.
pub struct SecretSource {
    pub client: Option<Arc<CpClient>>,
    pub nsk: Option<Nsk>,
    pub health: Arc<LinkHealth>,
}

#[derive(Serialize)]
struct SecretBody<'a> {
    key: &'a str,
    value: &'a str,
    version: i64,
}

fn caller(req: &Request) -> String {
    match &*req.transport {
        Transport::Unix(Some(p)) => format!("uid={} pid={}", p.uid, p.pid),
        Transport::Unix(None) => "unix peer unknown".into(),
        Transport::Tcp(addr) => addr.to_string(),
    }
}

impl SecretSource {
    pub fn get(&self, key: &str, req: &Request) -> Result<Response, ApiError> {
        let result = self.fetch(key);
        let (outcome, version) = match &result {
            Ok((_, v)) => (SecretOutcome::Ok, Some(*v)),
            Err(e) => (outcome_of(e), None),
        };
        self.health.record_secret_fetch(outcome);
        let version = version.map_or_else(|| "-".to_owned(), |v| v.to_string());
        log::info!(key = key, version = version.as_str(), outcome = outcome.as_str(), caller = caller(req); "secret access");
        let (plaintext, version) = result?;
        // Size the buffer up front: a reallocation would leave a copy of the plaintext behind.
        let capacity = 64 + 6 * (key.len() + plaintext.len());
        let mut body = Zeroizing::new(Vec::with_capacity(capacity));
        serde_json::to_writer(
            &mut *body,
            &SecretBody {
                key,
                value: &plaintext,
                version,
            },
        )
        .map_err(|_| ApiError::Internal("secret could not be encoded"))?;
        // No revision headers: the value is not in the store (see `reads`); and no
        // cache on the way may keep it.
        Ok(Response::json(200, Body::Sensitive(body)).header("Cache-Control", "no-store"))
    }

    fn fetch(&self, key: &str) -> Result<(Zeroizing<String>, i64), ApiError> {
        let (Some(client), Some(nsk)) = (&self.client, &self.nsk) else {
            return Err(ApiError::Unavailable(
                "secrets are unavailable: no control plane is configured",
            ));
        };
        let response = client.fetch_secret(key).map_err(|e| match e {
            CpError::Status { status: 404, .. } => ApiError::NotFound("secret not found".into()),
            other => {
                log::warn!(key = key, error:% = other; "secret fetch failed");
                ApiError::Unavailable("control plane unavailable")
            }
        })?;
        let plaintext = decrypt_secret(nsk, &response.ciphertext, &response.nonce)
            .map_err(|_| ApiError::Internal("secret could not be decrypted"))?;
        Ok((plaintext, response.version))
    }
}

fn outcome_of(e: &ApiError) -> SecretOutcome {
    match e {
        ApiError::NotFound(_) => SecretOutcome::NotFound,
        ApiError::Internal(_) => SecretOutcome::DecryptError,
        ApiError::Forbidden(_) => SecretOutcome::Forbidden,
        _ => SecretOutcome::Unavailable,
    }
}
