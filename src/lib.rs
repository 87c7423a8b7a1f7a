//! plexd-nodeapi: the node-local state API daemon. See ARCHITECTURE.md for the map.
//!
//! Data flows one way: listeners (`listen`, `systemd`) → HTTP core (`http`) → router and
//! handlers (`api`) → cache and stores (`store`) → syncer and control-plane client
//! (`cp`). `events` verifies what the control plane pushes; `devcp` is a development
//! control plane for `dev`, tests and benchmarks; `daemon` wires it all together.

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod cp;
pub mod daemon;
pub mod dev;
pub mod devcp;
pub mod duration;
pub mod events;
pub mod http;
pub mod keys;
pub mod kube;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod state_cli;
pub mod state_watch;
pub mod store;
pub mod systemd;
pub mod timefmt;
