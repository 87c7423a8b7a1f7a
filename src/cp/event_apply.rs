//! Turning a verified control-plane event into a store update.
//!
//! `node_state_updated` `{metadata, data}` replaces metadata and data in one
//! `Store::apply_control_plane` call (a reader never sees new metadata with old data);
//! `node_secrets_updated` `{secret_refs}` replaces the secret index. A `null` or absent
//! collection means empty, as Go marshals a nil map or slice as `null`. Any other type
//! is reported back as not applied. This module neither verifies signatures (the
//! caller hands it a `VerifiedEvent`) nor reads the network.

use crate::events::VerifiedEvent;
use crate::model::{NodeSecretsUpdate, NodeStateUpdate};
use crate::store::{ApplyOutcome, CpUpdate, Store, StoreError};

pub const NODE_STATE_UPDATED: &str = "node_state_updated";
pub const NODE_SECRETS_UPDATED: &str = "node_secrets_updated";
pub const SIGNING_KEY_ROTATED: &str = "signing_key_rotated";

/// What applying an event did.
#[derive(Debug)]
pub enum Applied {
    /// The cache was updated (or already matched).
    Updated(ApplyOutcome),
    /// A type this daemon does not apply.
    NotApplied,
}

/// Why a verified event could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The payload is not the shape its type promises.
    #[error("event payload does not match its type: {0}")]
    Payload(#[from] serde_json::Error),
    /// Writing the update failed; the next reconciliation retries.
    #[error("applying the event failed: {0}")]
    Store(#[from] StoreError),
}

impl ApplyError {
    /// A stable label for the rejected-events metric.
    pub fn as_label(&self) -> &'static str {
        match self {
            ApplyError::Payload(_) => "bad_payload",
            ApplyError::Store(_) => "apply_failed",
        }
    }
}

/// Applies `event` to `store`.
pub fn apply_event(store: &Store, event: &VerifiedEvent) -> Result<Applied, ApplyError> {
    let update = match event.event_type.as_str() {
        NODE_STATE_UPDATED => {
            let p: NodeStateUpdate = serde_json::from_str(event.payload.get())?;
            CpUpdate {
                metadata: Some(p.metadata.unwrap_or_default()),
                data: Some(p.data.unwrap_or_default()),
                secret_refs: None,
            }
        }
        NODE_SECRETS_UPDATED => {
            let p: NodeSecretsUpdate = serde_json::from_str(event.payload.get())?;
            CpUpdate {
                metadata: None,
                data: None,
                secret_refs: Some(p.secret_refs.unwrap_or_default()),
            }
        }
        _ => return Ok(Applied::NotApplied),
    };
    Ok(Applied::Updated(store.apply_control_plane(update)?))
}
