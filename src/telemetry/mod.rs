//! What the daemon reports about itself: request counters and the Prometheus text
//! helpers (`metrics`), the control-plane link's health record (`health`), the event
//! stream's and reconciler's counters (`stream`), and the logfmt logger (`logging`).
//!
//! A leaf: every other part records facts here and the status page reads them back.
//! Nothing here decides anything, performs I/O (except the logger's writes to stderr)
//! or imports another part of the crate.

pub mod health;
pub mod kubernetes;
pub mod logging;
pub mod metrics;
pub mod stream;
