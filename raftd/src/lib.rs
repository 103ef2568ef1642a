//! raftd: a node of the replicated key-value store. One `mio` event loop drives the Raft core
//! (`raft`), persists through the write-ahead log (`wal`), speaks length-prefixed frames
//! (`codec`) to peers and clients, and applies committed entries to a key-value map.

#![warn(clippy::unwrap_used)]

/// The version `--version` prints: the package's, the git commit built from, the wire protocol
/// and the data formats (a unit test holds these numbers to the constants they name).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("RAFT_GIT_COMMIT"),
    ")\nwire protocol 2 (accepts 2..=2)\ndata format: WAL segments 2, identity 2, snapshot files 1, \
     state machine image 5"
);

pub mod args;
pub mod bootstrap;
pub mod clock;
pub mod entry_cache;
pub mod errors;
pub mod kv;
pub mod metrics;
pub mod net;
pub mod node;
pub mod notify;
pub mod protocol;
pub mod resolve;
pub mod snapfile;
pub mod space;
pub mod storage;
pub mod tls;
pub mod transport;

#[cfg(test)]
mod tests {
    #[test]
    fn the_version_names_the_wire_protocol_and_data_formats_built_in() {
        use crate::protocol::{PROTOCOL_VERSION, PROTOCOL_VERSION_MIN};
        let wire =
            format!("wire protocol {PROTOCOL_VERSION} (accepts {PROTOCOL_VERSION_MIN}..={PROTOCOL_VERSION})");
        let data = format!(
            "data format: WAL segments {}, identity {}, snapshot files {}, state machine image {}",
            wal::SEGMENT_FORMAT_VERSION,
            wal::IDENTITY_VERSION,
            crate::snapfile::FILE_FORMAT_VERSION,
            crate::kv::SNAPSHOT_FORMAT_VERSION
        );
        assert!(super::VERSION.contains(&wire), "{}", super::VERSION);
        assert!(super::VERSION.contains(&data), "{}", super::VERSION);
    }
}
