//! plexd-nodeapi: the node-local state API daemon. See ARCHITECTURE.md for the map.

pub mod cp;
pub mod devcp;
pub mod http;
pub mod keys;
pub mod listen;
pub mod model;
pub mod store;
pub mod systemd;
pub mod timefmt;
