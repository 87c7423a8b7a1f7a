//! `GET /v1/state/secrets/{key}`: fetch the encrypted value from the control plane now,
//! decrypt it with the NSK, answer, and forget it.
//!
//! The plaintext lives only in zeroizing buffers: the decrypted string and the response
//! body, which the HTTP core drops (and so wipes) once written. Each access is logged
//! at info with key, version, outcome and caller — never the value.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use zeroize::Zeroizing;

use crate::api::breaker::Breaker;
use crate::api::error::ApiError;
use crate::cp::client::{CpClient, CpError};
use crate::cp::health::{LinkHealth, SecretOutcome};
use crate::cp::nsk::Nsk;
use crate::cp::secret::decrypt_secret;
use crate::http::{Body, Request, Response, Transport};

/// How much earlier than the request's deadline the call upstream gives up.
const DEADLINE_MARGIN: Duration = Duration::from_millis(100);

/// What the secret route needs: the control plane and the key to open what it sends,
/// how long a fetch may take, and the breaker that stops fetches while the control
/// plane is known to be unreachable.
pub struct SecretSource {
    pub client: Option<Arc<CpClient>>,
    pub nsk: Option<Nsk>,
    pub health: Arc<LinkHealth>,
    pub timeout: Duration,
    pub breaker: Breaker,
}

impl SecretSource {
    pub fn new(
        client: Option<Arc<CpClient>>,
        nsk: Option<Nsk>,
        health: Arc<LinkHealth>,
        timeout: Duration,
    ) -> SecretSource {
        SecretSource {
            client,
            nsk,
            health,
            timeout,
            // Open for a few seconds after a failure; a probe may take one timeout.
            breaker: Breaker::new(Duration::from_secs(3), timeout + Duration::from_secs(1)),
        }
    }
}

#[derive(Serialize)]
struct SecretBody<'a> {
    key: &'a str,
    value: &'a str,
    version: i64,
}

/// Who asked, for the audit log: uid/pid on the socket, the address on TCP.
pub fn caller(req: &Request) -> String {
    match req.transport {
        Transport::Unix(Some(p)) => format!("uid={} pid={}", p.uid, p.pid),
        Transport::Unix(None) => "unix peer unknown".into(),
        Transport::Tcp(addr) => addr.to_string(),
    }
}

impl SecretSource {
    /// Fetches and decrypts `key` now (blocking: run it on the upstream pool).
    ///
    /// The call upstream is cut a little before `deadline`, so the client hears what
    /// happened (and the breaker learns of it) rather than the bare deadline answer.
    pub fn get(&self, key: &str, caller: &str, deadline: Instant) -> Result<Response, ApiError> {
        let result = self.fetch(key, deadline);
        let (outcome, version) = match &result {
            Ok((_, v)) => (SecretOutcome::Ok, Some(*v)),
            Err(e) => (outcome_of(e), None),
        };
        self.health.record_secret_fetch(outcome);
        let version = version.map_or_else(|| "-".to_owned(), |v| v.to_string());
        log::info!(key = key, version = version.as_str(), outcome = outcome.as_str(), caller = caller; "secret access");
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

    fn fetch(&self, key: &str, deadline: Instant) -> Result<(Zeroizing<String>, i64), ApiError> {
        let (Some(client), Some(nsk)) = (&self.client, &self.nsk) else {
            return Err(ApiError::Unavailable(
                "secrets are unavailable: no control plane is configured",
            ));
        };
        let left = deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(DEADLINE_MARGIN);
        if left.is_zero() {
            return Err(ApiError::UpstreamTimeout);
        }
        let result = client.fetch_secret(key, left);
        let reached = match &result {
            Ok(_) => true,
            Err(CpError::Status { status, .. }) => *status < 500 && *status != 429,
            Err(CpError::Decode(_) | CpError::TooLarge) => true,
            Err(CpError::Transport(_) | CpError::Config(_)) => false,
        };
        self.breaker.record(reached, Instant::now());
        let response = result.map_err(|e| match e {
            CpError::Status { status: 404, .. } => ApiError::NotFound("secret not found".into()),
            CpError::Transport(_) if Instant::now() + DEADLINE_MARGIN >= deadline => {
                log::warn!(key = key; "secret fetch timed out");
                ApiError::UpstreamTimeout
            }
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
