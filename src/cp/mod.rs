//! The daemon's side of the control-plane link: the HTTP client, the report syncer,
//! the state fetch and reconciler, the event stream and backoff.
//!
//! Data flows one way: the store feeds the syncer, the link feeds the store, and
//! handlers call the client for secrets. Nothing here serves HTTP or knows the local
//! API's routes; the development control plane lives apart in `crate::devcp`.

pub mod background;
pub mod backoff;
pub mod client;
pub mod event_apply;
pub mod link;
pub mod stream;
pub mod syncer;
pub mod tls;
