//! raftd: a node of the replicated key-value store. One `mio` event loop drives the Raft core
//! (`raft`), persists through the write-ahead log (`wal`), speaks length-prefixed frames
//! (`codec`) to peers and clients, and applies committed entries to a key-value map.

#![warn(clippy::unwrap_used)]

/// The version `--version` prints: the package's, and the git commit built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("RAFT_GIT_COMMIT"), ")");

pub mod args;
pub mod bootstrap;
pub mod clock;
pub mod errors;
pub mod kv;
pub mod net;
pub mod node;
pub mod protocol;
pub mod resolve;
pub mod snapfile;
pub mod storage;
pub mod tls;
pub mod transport;
