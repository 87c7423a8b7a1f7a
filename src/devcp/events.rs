//! The development control plane's signed event stream: `GET /v1/nodes/{id}/events`.
//!
//! `EventHub` signs one envelope per admin change (`node_state_updated` with the full
//! metadata and data, `node_secrets_updated` with the full secret index,
//! `signing_key_rotated` with the advertised keys), numbers it with a monotonic event
//! ID, keeps the last `RING_SIZE` in a ring to honour `Last-Event-ID`, and fans it out
//! to every open stream. Each stream runs on the HTTP core's stream thread
//! (`Reply::Stream`) and writes SSE frames plus a `: keep-alive` comment every 15 s.
//!
//! Test levers: drop every open stream, stall them (open but silent, not even
//! comments), publish an arbitrary (possibly forged or stale) envelope, or a validly
//! signed one with a chosen `issued_at` and nonce. It is not a production event bus:
//! no persistence, one node, and a slow stream only delays itself.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use serde::Serialize;

use crate::events::{new_nonce, SignError, Signer};
use crate::model::{DataEntry, Metadata, NodeState, SecretRef};
use crate::timefmt::format_rfc3339_utc;

/// Events kept for `Last-Event-ID` resumption.
pub const RING_SIZE: usize = 256;
/// Interval of `: keep-alive` comments on an idle stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Serialize)]
struct StatePayload<'a> {
    metadata: &'a Metadata,
    data: &'a [DataEntry],
}

#[derive(Serialize)]
struct SecretsPayload<'a> {
    secret_refs: &'a [SecretRef],
}

/// One published event.
#[derive(Debug, Clone)]
struct Published {
    id: u64,
    event_type: String,
    data: String,
}

enum Msg {
    Event(Published),
    Close,
}

struct Hub {
    signer: Signer,
    /// The key that signed before the last rotation; signs the rotation event itself
    /// so a node that still trusts only the old key accepts it.
    previous: Option<Signer>,
    next_id: u64,
    ring: VecDeque<Published>,
    streams: Vec<Sender<Msg>>,
    stalled: bool,
    /// Every `Last-Event-ID` header a stream request carried, in order.
    resume_ids: Vec<String>,
    connects: usize,
    keep_alive: Duration,
}

/// What an admin/test call changed. Subscribers get it with the new node state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevChange {
    /// Metadata or data changed (a `node_state_updated` event).
    State,
    /// The secret index changed (a `node_secrets_updated` event).
    Secrets,
    /// The signing keys changed (a `signing_key_rotated` event).
    SigningKeys,
}

/// The shared event state of a development control plane.
pub struct EventHub {
    hub: Mutex<Hub>,
}

impl EventHub {
    pub fn new(signer: Signer) -> EventHub {
        EventHub {
            hub: Mutex::new(Hub {
                signer,
                previous: None,
                next_id: 1,
                ring: VecDeque::with_capacity(RING_SIZE),
                streams: Vec::new(),
                stalled: false,
                resume_ids: Vec::new(),
                connects: 0,
                keep_alive: KEEP_ALIVE,
            }),
        }
    }

    fn hub(&self) -> MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current signing key's public half, standard base64.
    pub fn public_key(&self) -> String {
        self.hub().signer.public_key_b64()
    }

    /// Signs future events with `signer`; the old key signs only the next
    /// `signing_key_rotated` event.
    pub fn rotate(&self, signer: Signer) {
        let mut h = self.hub();
        let old = std::mem::replace(&mut h.signer, signer);
        h.previous = Some(old);
    }

    /// The subscriber hook of `DevState`: one signed event per change.
    pub fn on_change(&self, change: DevChange, state: &NodeState) {
        // Serialized from the typed values (not through `serde_json::Value`, which
        // would reorder the keys inside data payloads): payloads travel verbatim.
        let empty_meta = Metadata::new();
        let (event_type, payload) = match change {
            DevChange::State => (
                "node_state_updated",
                serde_json::to_string(&StatePayload {
                    metadata: state.metadata.as_ref().unwrap_or(&empty_meta),
                    data: state.data.as_deref().unwrap_or(&[]),
                }),
            ),
            DevChange::Secrets => (
                "node_secrets_updated",
                serde_json::to_string(&SecretsPayload {
                    secret_refs: state.secret_refs.as_deref().unwrap_or(&[]),
                }),
            ),
            DevChange::SigningKeys => (
                "signing_key_rotated",
                serde_json::to_string(&state.signing_keys),
            ),
        };
        let payload = match payload {
            Ok(p) => p,
            Err(e) => {
                log::error!(event_type = event_type, error:% = e; "devcp: cannot encode an event");
                return;
            }
        };
        let rotation = change == DevChange::SigningKeys;
        if let Err(e) = self.publish_signed(event_type, &payload, None, None, rotation) {
            log::error!(event_type = event_type, error:% = e; "devcp: cannot sign an event");
        }
    }

    /// Publishes a validly signed event; `issued_at` defaults to now and `nonce` to a
    /// fresh one. Returns the event ID.
    pub fn publish_signed(
        &self,
        event_type: &str,
        payload_json: &str,
        issued_at: Option<&str>,
        nonce: Option<&str>,
        with_previous_key: bool,
    ) -> Result<u64, SignError> {
        let issued_at = issued_at
            .map(str::to_owned)
            .unwrap_or_else(|| format_rfc3339_utc(SystemTime::now()));
        let nonce = match nonce {
            Some(n) => n.to_owned(),
            None => new_nonce()?,
        };
        let mut h = self.hub();
        let id = h.next_id;
        let signer = match (with_previous_key, h.previous.take()) {
            (true, Some(prev)) => {
                let envelope = prev.sign_envelope(
                    event_type,
                    &id.to_string(),
                    &issued_at,
                    &nonce,
                    payload_json,
                );
                envelope.map(|data| (data, None))
            }
            (_, prev) => h
                .signer
                .sign_envelope(
                    event_type,
                    &id.to_string(),
                    &issued_at,
                    &nonce,
                    payload_json,
                )
                .map(|data| (data, prev)),
        };
        let (data, keep_previous) = signer?;
        h.previous = keep_previous;
        Ok(push(&mut h, event_type, data))
    }

    /// Publishes `envelope` as is (forged, stale, malformed …) under `event_type`.
    pub fn publish_raw(&self, event_type: &str, envelope: &str) -> u64 {
        push(&mut self.hub(), event_type, envelope.to_owned())
    }

    /// Closes every open stream now.
    pub fn drop_streams(&self) {
        let mut h = self.hub();
        for s in h.streams.drain(..) {
            let _ = s.send(Msg::Close);
        }
    }

    /// While stalled, streams stay open but send nothing (events are still kept in
    /// the ring and sent to streams that resume later with `Last-Event-ID`).
    pub fn stall_streams(&self, stalled: bool) {
        self.hub().stalled = stalled;
    }

    /// Sets the keep-alive comment interval (takes effect after the current wait).
    pub fn set_keep_alive(&self, every: Duration) {
        self.hub().keep_alive = every.max(Duration::from_millis(10));
    }

    /// `Last-Event-ID` values stream requests carried, oldest first.
    pub fn resume_ids(&self) -> Vec<String> {
        self.hub().resume_ids.clone()
    }

    /// Stream requests accepted so far.
    pub fn connects(&self) -> usize {
        self.hub().connects
    }

    /// Open streams.
    pub fn open_streams(&self) -> usize {
        self.hub().streams.len()
    }

    /// Registers a new stream and returns its body writer.
    pub(crate) fn subscribe(
        self: &std::sync::Arc<Self>,
        last_event_id: Option<&str>,
    ) -> impl FnOnce(&mut dyn Write) -> io::Result<()> + Send + 'static {
        let (tx, rx) = unbounded();
        let backlog: Vec<Published> = {
            let mut h = self.hub();
            h.connects += 1;
            if let Some(id) = last_event_id {
                h.resume_ids.push(id.to_owned());
            }
            let after = last_event_id.and_then(|id| id.trim().parse::<u64>().ok());
            h.streams.push(tx);
            match after {
                Some(after) => h.ring.iter().filter(|e| e.id > after).cloned().collect(),
                None => Vec::new(),
            }
        };
        let hub = std::sync::Arc::clone(self);
        move |w: &mut dyn Write| hub.serve(w, backlog, rx)
    }

    fn stalled(&self) -> bool {
        // (also the lock every stream takes per message; never held across I/O)
        self.hub().stalled
    }

    fn serve(
        &self,
        w: &mut dyn Write,
        backlog: Vec<Published>,
        rx: Receiver<Msg>,
    ) -> io::Result<()> {
        if !self.stalled() {
            w.write_all(b": connected\n\n")?;
            for e in &backlog {
                write_event(w, e)?;
            }
            w.flush()?;
        }
        loop {
            let keep_alive = self.hub().keep_alive;
            match rx.recv_timeout(keep_alive) {
                Ok(Msg::Event(e)) => {
                    if !self.stalled() {
                        write_event(w, &e)?;
                        w.flush()?;
                    }
                }
                Ok(Msg::Close) | Err(RecvTimeoutError::Disconnected) => return Ok(()),
                Err(RecvTimeoutError::Timeout) => {
                    if !self.stalled() {
                        w.write_all(b": keep-alive\n\n")?;
                        w.flush()?;
                    }
                }
            }
        }
    }
}

fn push(h: &mut Hub, event_type: &str, data: String) -> u64 {
    let id = h.next_id;
    h.next_id += 1;
    let event = Published {
        id,
        event_type: event_type.to_owned(),
        data,
    };
    if h.ring.len() == RING_SIZE {
        h.ring.pop_front();
    }
    h.ring.push_back(event.clone());
    h.streams
        .retain(|s| s.send(Msg::Event(event.clone())).is_ok());
    id
}

fn write_event(w: &mut dyn Write, e: &Published) -> io::Result<()> {
    let mut frame = format!("id: {}\nevent: {}\n", e.id, e.event_type);
    for line in e.data.split('\n') {
        frame.push_str("data: ");
        frame.push_str(line.trim_end_matches('\r'));
        frame.push('\n');
    }
    frame.push('\n');
    w.write_all(frame.as_bytes())
}
