//! The WAL's errors.

use std::io;
use std::path::PathBuf;

/// The result of a WAL operation.
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed on a file of the log.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Making appended records durable failed. The log cannot know what reached the disk:
    /// the process must exit, never retry (PostgreSQL's fsyncgate).
    #[error("sync of {path} failed: {source}; the node must stop")]
    SyncFailed {
        /// The segment.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A previous sync failed; the log refuses all further work.
    #[error("the log is unusable after a failed sync")]
    Poisoned,
    /// A record that verifies is followed by damage that is not a torn tail.
    #[error("corruption in segment {segment} at offset {offset}: {reason}")]
    Corruption {
        /// The segment file.
        segment: PathBuf,
        /// Byte offset of the bad record.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The data directory belongs to another node or cluster.
    #[error(
        "data dir {dir} belongs to node {found_node} of cluster {found_cluster:?}, not node \
         {expected_node} of cluster {expected_cluster:?}"
    )]
    IdentityMismatch {
        /// The directory.
        dir: PathBuf,
        /// This node's id.
        expected_node: u64,
        /// The id recorded in the directory.
        found_node: u64,
        /// This node's cluster.
        expected_cluster: String,
        /// The cluster recorded in the directory.
        found_cluster: String,
    },
    /// A file of the log has a format this version does not know.
    #[error("{path}: unknown format ({reason})")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// What was found.
        reason: String,
    },
    /// Entries appended out of order.
    #[error("entries must follow the log: first index {first} after last index {last}")]
    NonContiguous {
        /// The first index appended.
        first: u64,
        /// The log's last index.
        last: u64,
    },
    /// Entries before the first index were compacted away.
    #[error("index {index} is compacted (first index {first_index})")]
    Compacted {
        /// The requested index.
        index: u64,
        /// The first available index.
        first_index: u64,
    },
    /// The index is past the last entry.
    #[error("index {index} is past the last index {last_index}")]
    Unavailable {
        /// The requested index.
        index: u64,
        /// The last index.
        last_index: u64,
    },
    /// Compaction past what a snapshot covers would lose entries.
    #[error("cannot compact to {index}: the last snapshot covers only up to {snapshot_index}")]
    CompactBeyondSnapshot {
        /// The requested compaction index.
        index: u64,
        /// The last snapshot's index (0 without one).
        snapshot_index: u64,
    },
    /// An argument is outside what the log accepts.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io { op, path: path.into(), source }
    }
}
