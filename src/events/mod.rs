//! Control-plane event verification: the pieces between an SSE byte stream and a
//! trusted event.
//!
//! * [`sse`] turns bytes into Server-Sent Events (WHATWG framing, any chunking).
//! * [`canonical`] rebuilds the exact bytes Go's `json.Marshal` signed.
//! * [`verify`] checks an envelope: Ed25519 signature under the current (or, during a
//!   rotation, the previous) key, freshness (±5 minutes) and nonce replay.
//! * [`sign`] creates signed envelopes, for the development control plane and tests.
//!
//! Everything here is pure computation on bytes and clocks passed in: no network, no
//! files, and no knowledge of what an event's payload means. Applying a verified event to the cache is the caller's job.

pub mod canonical;
pub mod sign;
pub mod sse;
pub mod verify;

pub use canonical::canonical_bytes;
pub use sign::{new_nonce, sign_envelope, SignError, Signer};
pub use sse::{SseError, SseItem, SseParser};
pub use verify::{
    Envelope, KeySet, PublicKey, RejectReason, SigningKeyError, VerifiedEvent, Verifier,
    FRESHNESS_WINDOW, NONCE_STORE_CAP,
};
