//! plexd-nodeapi: the node-local state API daemon. See ARCHITECTURE.md for the map.

pub mod events;
pub mod http;
pub mod keys;
pub mod model;
pub mod timefmt;
