//! raftd's errors.

use std::io;
use std::path::PathBuf;

/// The result of a node operation.
pub type Result<T> = std::result::Result<T, Error>;

/// What stops a node, or fails an operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The write-ahead log failed.
    #[error("write-ahead log: {0}")]
    Wal(#[from] wal::Error),
    /// Encoding or decoding failed.
    #[error("codec: {0}")]
    Codec(#[from] codec::Error),
    /// The Raft core refused.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// A file on disk is damaged.
    #[error("{path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A snapshot file could not be written (a full disk, too many open files): nothing was
    /// changed, and a later snapshot is tried.
    #[error("snapshot not written: {0}")]
    SnapshotNotWritten(String),
    /// Something the node cannot continue after (a failed fsync).
    #[error("fatal: {0}")]
    Fatal(String),
    /// Invalid configuration.
    #[error("{0}")]
    Config(String),
    /// SIGTERM or SIGINT arrived before the node started serving (while it waited to
    /// bootstrap): a clean stop.
    #[error("stopped before it started serving")]
    Stopped,
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io { op, path: path.into(), source }
    }
}
