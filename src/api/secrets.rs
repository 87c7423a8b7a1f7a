//! `GET /v1/state/secrets/{key}`: fetch and decrypt the value now (`secrets::Secrets`),
//! log the access, answer, and forget it. The fetch waits on the control plane, so
//! `get` runs on the upstream pool (see `Api::secret_later`), never on an HTTP worker.
//!
//! The plaintext lives only in zeroizing buffers: the decrypted string and the response
//! body, which the HTTP core drops (and so wipes) once written. Each access is logged
//! at info with key, version, outcome and caller — never the value.

use std::time::Instant;

use serde::Serialize;
use zeroize::Zeroizing;

use crate::api::error::ApiError;
use crate::http::{Body, Request, Response, Transport};
use crate::secrets::Secrets;
use crate::telemetry::health::SecretOutcome;

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

/// Fetches, decrypts and answers `key`, giving up just before `deadline`. Blocking.
pub fn get(
    secrets: &Secrets,
    key: &str,
    caller: &str,
    deadline: Instant,
) -> Result<Response, ApiError> {
    let result = secrets.fetch(key, deadline);
    let (outcome, version) = match &result {
        Ok(s) => (SecretOutcome::Ok, s.version.to_string()),
        Err(e) => (e.outcome(), "-".to_owned()),
    };
    log::info!(key = key, version = version.as_str(), outcome = outcome.as_str(), caller = caller; "secret access");
    let secret = result?;
    // Size the buffer up front: a reallocation would leave a copy of the plaintext behind.
    let capacity = 64 + 6 * (key.len() + secret.value.len());
    let mut body = Zeroizing::new(Vec::with_capacity(capacity));
    serde_json::to_writer(
        &mut *body,
        &SecretBody {
            key,
            value: &secret.value,
            version: secret.version,
        },
    )
    .map_err(|_| ApiError::Internal("secret could not be encoded"))?;
    // The encoder's frames saw the plaintext.
    crate::secrets::scrub_stack();
    // No revision headers: the value is not in the store (see `reads`); and no
    // cache on the way may keep it.
    Ok(Response::json(200, Body::Sensitive(body)).header("Cache-Control", "no-store"))
}
