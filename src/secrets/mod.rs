//! Secret values, fetched live: ask the control plane for one encrypted secret, open it
//! with the node secret key (`nsk`, AES-256-GCM in `cipher`), and hand the plaintext
//! over in zeroizing storage. Every fetch is counted by outcome in the link's health
//! record.
//!
//! `Secrets::fetch` is a plain blocking call that any thread may make (the API runs it
//! on its upstream pool, never on an HTTP worker); it keeps nothing between calls and
//! never caches, logs or writes a value. Each fetch is bounded by the caller's deadline,
//! and a circuit breaker (`breaker`) refuses fetches at once while the control plane is
//! known to be unreachable (`Secrets::admit`). What a failure means to an HTTP client is
//! the API's business (`api::error`, one mapping from `SecretError`).

pub mod breaker;
pub mod cipher;
pub mod nsk;

use std::sync::Arc;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use crate::cp::client::{CpClient, CpError};
use crate::telemetry::health::{LinkHealth, SecretOutcome};
use breaker::{Admit, Breaker, CircuitState};
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
    /// The control plane did not answer before the request's deadline.
    #[error("the control plane did not answer in time")]
    Timeout,
    /// The control plane is known to be unreachable; asked again in this many seconds.
    #[error("control plane unreachable (circuit open)")]
    CircuitOpen { retry_after_secs: u64 },
}

impl SecretError {
    /// The outcome label this failure is counted and logged under.
    pub fn outcome(&self) -> SecretOutcome {
        match self {
            SecretError::NotFound => SecretOutcome::NotFound,
            SecretError::Decrypt => SecretOutcome::DecryptError,
            SecretError::NotConfigured
            | SecretError::Unavailable(_)
            | SecretError::Timeout
            | SecretError::CircuitOpen { .. } => SecretOutcome::Unavailable,
        }
    }
}

/// Bytes of stack `scrub_stack` overwrites: more than a secret fetch (HTTP client,
/// JSON, base64, AES-GCM) uses below the caller's frame.
const STACK_SCRUB: usize = 64 * 1024;

/// Overwrites `STACK_SCRUB` bytes of stack below the caller's frame. Call it after a
/// call that handled key material or plaintext has returned: Rust moves values by
/// copying them, so the AES key schedule, the key and the plaintext leave copies in
/// the dead frames of the calls they passed through, where no `Drop` wipes them.
#[inline(never)]
pub fn scrub_stack() {
    let mut area = [0u8; STACK_SCRUB];
    zeroize::Zeroize::zeroize(&mut area[..]);
    std::hint::black_box(&area);
}

/// How much earlier than the request's deadline the call upstream gives up, so the
/// client hears what happened (and the breaker learns of it) rather than the bare
/// deadline answer.
const DEADLINE_MARGIN: Duration = Duration::from_millis(100);

/// How long the breaker stays open after a failed fetch.
const COOLDOWN: Duration = Duration::from_secs(3);

/// Where secret values come from: the control plane, and the key that opens them.
pub struct Secrets {
    client: Option<Arc<CpClient>>,
    nsk: Option<Nsk>,
    health: Arc<LinkHealth>,
    timeout: Duration,
    breaker: Breaker,
}

impl Secrets {
    /// Without a client or an NSK every fetch is `SecretError::NotConfigured`.
    /// `timeout` is how long one secret request may take (`--secret-timeout`).
    pub fn new(
        client: Option<Arc<CpClient>>,
        nsk: Option<Nsk>,
        health: Arc<LinkHealth>,
        timeout: Duration,
    ) -> Secrets {
        Secrets {
            client,
            nsk,
            health,
            timeout,
            // A probe may take one timeout before another request may probe.
            breaker: Breaker::new(COOLDOWN, timeout + Duration::from_secs(1)),
        }
    }

    /// How long one secret request may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether a fetch may start now: refused at once while the breaker is open.
    pub fn admit(&self, now: Instant) -> Result<(), SecretError> {
        if self.client.is_none() {
            return Ok(());
        }
        match self.breaker.admit(now) {
            Admit::Go | Admit::Probe => Ok(()),
            Admit::Refuse { retry_after } => {
                let err = SecretError::CircuitOpen {
                    retry_after_secs: retry_after.as_secs_f64().ceil().max(1.0) as u64,
                };
                self.health.record_secret_fetch(err.outcome());
                Err(err)
            }
        }
    }

    /// The breaker's state, for health and metrics.
    pub fn circuit(&self) -> CircuitState {
        self.breaker.state(Instant::now())
    }

    /// Fetches `key` from the control plane now and decrypts it, giving up just before
    /// `deadline`; counts the outcome.
    pub fn fetch(&self, key: &str, deadline: Instant) -> Result<Secret, SecretError> {
        let result = self.fetch_uncounted(key, deadline);
        scrub_stack();
        let outcome = result
            .as_ref()
            .map_or_else(SecretError::outcome, |_| SecretOutcome::Ok);
        self.health.record_secret_fetch(outcome);
        result
    }

    fn fetch_uncounted(&self, key: &str, deadline: Instant) -> Result<Secret, SecretError> {
        let (Some(client), Some(nsk)) = (&self.client, &self.nsk) else {
            return Err(SecretError::NotConfigured);
        };
        let left = deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(DEADLINE_MARGIN);
        if left.is_zero() {
            return Err(SecretError::Timeout);
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
            CpError::Status { status: 404, .. } => SecretError::NotFound,
            CpError::Transport(_) if Instant::now() + DEADLINE_MARGIN >= deadline => {
                log::warn!(key = key; "secret fetch timed out");
                SecretError::Timeout
            }
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
