//! Deciding whether an event envelope from the control plane is genuine, fresh and new.
//!
//! An envelope is `{event_type, event_id, issued_at, nonce, payload, signature}`; the
//! signature is Ed25519 (standard base64) over [`canonical_bytes`]. [`Verifier`]
//! accepts it only if the signature verifies under the current key — or under the
//! previous key before its transition expiry — `issued_at` is within ±5 minutes of
//! now, and the nonce has not been accepted in the last 5 minutes. Keys can be
//! replaced at run time ([`Verifier::set_keys`]) so a rotation advertised by the
//! control plane takes effect without a restart.
//!
//! This module does not interpret payloads, fetch keys, read files or log: it returns
//! a [`RejectReason`] and the caller logs and counts it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::signature::{UnparsedPublicKey, ED25519};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::canonical::canonical_bytes;
use crate::model::SigningKeys;
use crate::timefmt::{parse_rfc3339, Timestamp};

/// How far `issued_at` may lie from now, either way; also the least time an accepted
/// nonce is remembered.
pub const FRESHNESS_WINDOW: Duration = Duration::from_secs(5 * 60);

/// Most nonces remembered at once. Evicting the entry closest to expiry at this cap is
/// safe because only genuine (signature-verified) events are recorded; see `NonceStore`.
pub const NONCE_STORE_CAP: usize = 100_000;

/// Why an envelope was refused. `as_label` names it for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("malformed envelope (not a JSON object of the expected shape, or a bad issued_at)")]
    Malformed,
    #[error("envelope has no {0}")]
    MissingField(&'static str),
    #[error("signature does not verify under the current or (before its expiry) the previous key")]
    BadSignature,
    #[error("issued_at is more than 5 minutes in the past")]
    Stale,
    #[error("issued_at is more than 5 minutes in the future")]
    Future,
    #[error("nonce was already accepted in the last 5 minutes")]
    Replayed,
    #[error("no signing keys are configured")]
    NoKeys,
}

impl RejectReason {
    /// A short stable name for a metrics label.
    pub fn as_label(&self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::MissingField(_) => "missing_field",
            RejectReason::BadSignature => "bad_signature",
            RejectReason::Stale => "stale",
            RejectReason::Future => "future",
            RejectReason::Replayed => "replayed",
            RejectReason::NoKeys => "no_keys",
        }
    }
}

/// Why signing keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    #[error("signing key is not valid standard base64")]
    Base64,
    #[error("signing key must be 32 bytes (Ed25519), got {0}")]
    Length(usize),
    #[error("signing_keys has no current key")]
    MissingCurrent,
    #[error("signing_keys.transition_expires is not an RFC 3339 time: {0:?}")]
    BadExpiry(String),
}

/// An Ed25519 public key (32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> PublicKey {
        PublicKey(bytes)
    }

    /// Standard base64 (with padding) of exactly 32 bytes; surrounding white space is trimmed.
    pub fn from_base64(text: &str) -> Result<PublicKey, SigningKeyError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| SigningKeyError::Base64)?;
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| SigningKeyError::Length(bytes.len()))?;
        Ok(PublicKey(arr))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, signature)
            .is_ok()
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

/// The keys events may be signed with: the current one, and during a rotation the
/// previous one until `transition_expires`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySet {
    current: PublicKey,
    previous: Option<(PublicKey, SystemTime)>,
}

impl KeySet {
    pub fn new(current: PublicKey) -> KeySet {
        KeySet {
            current,
            previous: None,
        }
    }

    /// Also accept `previous`, but only for events verified before `transition_expires`.
    pub fn with_previous(mut self, previous: PublicKey, transition_expires: SystemTime) -> KeySet {
        self.previous = Some((previous, transition_expires));
        self
    }

    pub fn current(&self) -> PublicKey {
        self.current
    }

    pub fn previous(&self) -> Option<(PublicKey, SystemTime)> {
        self.previous
    }

    /// From the state response's `signing_keys`. `current` is required. A `previous`
    /// key without a `transition_expires` is ignored: with no expiry there is no
    /// window in which it may be trusted. An unparsable expiry is an error.
    pub fn from_signing_keys(keys: &SigningKeys) -> Result<KeySet, SigningKeyError> {
        if keys.current.trim().is_empty() {
            return Err(SigningKeyError::MissingCurrent);
        }
        let mut set = KeySet::new(PublicKey::from_base64(&keys.current)?);
        if !keys.previous.trim().is_empty() && !keys.transition_expires.trim().is_empty() {
            let previous = PublicKey::from_base64(&keys.previous)?;
            let expires = parse_rfc3339(keys.transition_expires.trim())
                .ok_or_else(|| SigningKeyError::BadExpiry(keys.transition_expires.clone()))?;
            set = set.with_previous(previous, expires.to_system_time());
        }
        Ok(set)
    }
}

/// A parsed envelope. Every field is present and non-empty; nothing is verified yet.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub event_type: String,
    pub event_id: String,
    pub issued_at: String,
    pub nonce: String,
    /// The payload's JSON text exactly as it arrived.
    pub payload: Box<RawValue>,
    pub signature: String,
}

#[derive(Deserialize)]
struct WireEnvelope {
    #[serde(default)]
    event_type: Option<String>,
    #[serde(default)]
    event_id: Option<String>,
    #[serde(default)]
    issued_at: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
    // `null` is a payload (Go marshals a RawMessage `null` as `null`); only an absent
    // field is missing, hence not a plain `Option` (which would turn `null` into None).
    #[serde(default, deserialize_with = "present_raw")]
    payload: Option<Box<RawValue>>,
    #[serde(default)]
    signature: Option<String>,
}

fn present_raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

fn required(value: Option<String>, name: &'static str) -> Result<String, RejectReason> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(RejectReason::MissingField(name)),
    }
}

impl Envelope {
    /// Parses envelope JSON. A field that is absent, `null` or `""` is missing; a
    /// duplicated field, a non-object or trailing text is malformed. Unknown fields
    /// are ignored (they are not signed, so they carry no meaning).
    pub fn parse(text: &str) -> Result<Envelope, RejectReason> {
        // serde would also read a JSON array positionally into the struct; refuse it.
        if !text
            .trim_start_matches([' ', '\t', '\n', '\r'])
            .starts_with('{')
        {
            return Err(RejectReason::Malformed);
        }
        let wire: WireEnvelope = serde_json::from_str(text).map_err(|_| RejectReason::Malformed)?;
        Ok(Envelope {
            event_type: required(wire.event_type, "event_type")?,
            event_id: required(wire.event_id, "event_id")?,
            issued_at: required(wire.issued_at, "issued_at")?,
            nonce: required(wire.nonce, "nonce")?,
            payload: wire.payload.ok_or(RejectReason::MissingField("payload"))?,
            signature: required(wire.signature, "signature")?,
        })
    }

    /// `issued_at` as a timestamp; `Malformed` if it is not RFC 3339.
    pub fn issued_at(&self) -> Result<Timestamp, RejectReason> {
        parse_rfc3339(&self.issued_at).ok_or(RejectReason::Malformed)
    }

    /// The bytes the signature covers (see [`canonical_bytes`]).
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, RejectReason> {
        Ok(canonical_bytes(
            &self.event_type,
            &self.event_id,
            self.issued_at()?,
            &self.nonce,
            self.payload.get(),
        ))
    }
}

/// An event that passed every check.
#[derive(Debug, Clone)]
pub struct VerifiedEvent {
    pub event_type: String,
    pub event_id: String,
    pub payload: Box<RawValue>,
}

/// Nonces of accepted events, each remembered until `max(accepted, issued_at) + 5 min`:
/// that is at least "seen in the last 5 minutes", and also covers an event issued up
/// to 5 minutes in the future, which stays fresh (replayable) until `issued_at + 5 min`.
/// After that the freshness check alone rejects a replay, so forgetting is safe.
///
/// Memory is bounded: expired entries are dropped on every insert, and at
/// [`NONCE_STORE_CAP`] entries the one closest to expiry goes first. Evicting at the
/// cap is safe in practice because only *genuine* events ever enter the store — a
/// nonce is recorded only after its signature verifies, and replays and forgeries
/// add nothing — so an attacker cannot flood it; reaching the cap needs the control
/// plane itself to sign over 100 000 events for this node within 10 minutes (about
/// 170 per second, orders of magnitude above its real rate). Even then the victim
/// is the entry with the least remaining lifetime, and a replayed state event can
/// only re-apply state the control plane itself signed minutes ago, which the next
/// reconciliation corrects. Nonces are kept as SHA-256 digests so each entry has a
/// fixed size whatever the nonce length.
struct NonceStore {
    cap: usize,
    by_nonce: HashMap<[u8; 32], (SystemTime, u64)>,
    by_expiry: BTreeSet<(SystemTime, u64, [u8; 32])>,
    seq: u64,
}

impl NonceStore {
    fn new(cap: usize) -> NonceStore {
        NonceStore {
            cap: cap.max(1),
            by_nonce: HashMap::new(),
            by_expiry: BTreeSet::new(),
            seq: 0,
        }
    }

    fn evict_expired(&mut self, now: SystemTime) {
        while let Some(&first) = self.by_expiry.first() {
            if first.0 >= now {
                break;
            }
            self.by_expiry.remove(&first);
            self.by_nonce.remove(&first.2);
        }
    }

    fn contains(&self, digest: &[u8; 32], now: SystemTime) -> bool {
        matches!(self.by_nonce.get(digest), Some(&(expires, _)) if expires >= now)
    }

    /// Records `digest` until `expires`; false if it is already (still) recorded.
    fn insert(&mut self, digest: [u8; 32], expires: SystemTime, now: SystemTime) -> bool {
        self.evict_expired(now);
        if self.by_nonce.contains_key(&digest) {
            return false;
        }
        while self.by_nonce.len() >= self.cap {
            match self.by_expiry.pop_first() {
                Some((_, _, oldest)) => {
                    self.by_nonce.remove(&oldest);
                }
                None => break,
            }
        }
        self.seq += 1;
        self.by_nonce.insert(digest, (expires, self.seq));
        self.by_expiry.insert((expires, self.seq, digest));
        true
    }

    fn len(&self) -> usize {
        self.by_nonce.len()
    }
}

fn nonce_digest(nonce: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, nonce.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Verifies envelopes; shareable between threads (`Arc<Verifier>`).
pub struct Verifier {
    keys: RwLock<Option<KeySet>>,
    nonces: Mutex<NonceStore>,
}

impl Default for Verifier {
    fn default() -> Verifier {
        Verifier::new(None)
    }
}

impl Verifier {
    /// A verifier with these keys; with `None` every envelope is rejected with `NoKeys`
    /// until [`Verifier::set_keys`] is called.
    pub fn new(keys: Option<KeySet>) -> Verifier {
        Verifier::with_nonce_cap(keys, NONCE_STORE_CAP)
    }

    /// As [`Verifier::new`], remembering at most `cap` nonces (at least 1).
    pub fn with_nonce_cap(keys: Option<KeySet>, cap: usize) -> Verifier {
        Verifier {
            keys: RwLock::new(keys),
            nonces: Mutex::new(NonceStore::new(cap)),
        }
    }

    /// Replaces the keys; takes effect for the next envelope verified on any thread.
    pub fn set_keys(&self, keys: KeySet) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(keys);
    }

    /// Removes all keys: every envelope is then rejected with `NoKeys`.
    pub fn clear_keys(&self) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn keys(&self) -> Option<KeySet> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many nonces are remembered now (for metrics).
    pub fn remembered_nonces(&self) -> usize {
        self.store().len()
    }

    fn store(&self) -> MutexGuard<'_, NonceStore> {
        self.nonces.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`Verifier::verify_at`] with the system clock.
    pub fn verify(&self, envelope_json: &str) -> Result<VerifiedEvent, RejectReason> {
        self.verify_at(envelope_json, SystemTime::now())
    }

    /// Checks, in order: keys configured, envelope shape, freshness of `issued_at`
    /// against `now`, nonce not already accepted, signature. Only when all pass is the
    /// nonce recorded, so a forged or stale event can never block a genuine one.
    pub fn verify_at(
        &self,
        envelope_json: &str,
        now: SystemTime,
    ) -> Result<VerifiedEvent, RejectReason> {
        let keys = self.keys().ok_or(RejectReason::NoKeys)?;
        let env = Envelope::parse(envelope_json)?;
        let issued = env.issued_at()?.to_system_time();
        match now.duration_since(issued) {
            Ok(age) if age > FRESHNESS_WINDOW => return Err(RejectReason::Stale),
            Err(ahead) if ahead.duration() > FRESHNESS_WINDOW => return Err(RejectReason::Future),
            _ => {}
        }
        let digest = nonce_digest(&env.nonce);
        if self.store().contains(&digest, now) {
            return Err(RejectReason::Replayed);
        }
        let signature = STANDARD
            .decode(&env.signature)
            .map_err(|_| RejectReason::BadSignature)?;
        if signature.len() != 64 {
            return Err(RejectReason::BadSignature);
        }
        let message = env.canonical_bytes()?;
        let genuine = keys.current.verifies(&message, &signature)
            || matches!(keys.previous, Some((key, expires))
                if now < expires && key.verifies(&message, &signature));
        if !genuine {
            return Err(RejectReason::BadSignature);
        }
        let expires = now.max(issued) + FRESHNESS_WINDOW;
        // Check-and-insert under one lock: of two threads racing with the same event,
        // exactly one wins.
        if !self.store().insert(digest, expires, now) {
            return Err(RejectReason::Replayed);
        }
        Ok(VerifiedEvent {
            event_type: env.event_type,
            event_id: env.event_id,
            payload: env.payload,
        })
    }
}
