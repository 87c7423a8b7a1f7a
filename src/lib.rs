//! plexd-nodeapi: the node-local state API daemon. See ARCHITECTURE.md for the map.
//!
//! Data flows one way: listeners and the HTTP core (`http`) → router and handlers
//! (`api`) → the state store (`store`) and live secrets (`secrets`) → the control-plane
//! link (`cp`). `events` verifies what the control plane pushes; `telemetry` keeps the
//! counters, health record and logger everyone reports to; `devcp` is a development
//! control plane for `dev`, tests and benchmarks; `cli` holds the entry points and
//! wires it all together.

pub mod api;
pub mod cli;
pub mod cp;
pub mod devcp;
pub mod duration;
pub mod encoding;
pub mod events;
pub mod file_kind;
pub mod http;
pub mod json_eq;
pub mod kube;
pub mod log_gate;
pub mod model;
pub mod pool;
pub mod secrets;
pub mod store;
pub mod telemetry;
pub mod timefmt;

#[cfg(test)]
mod test_child;
