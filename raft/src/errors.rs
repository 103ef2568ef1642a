//! The crate's errors: one enum for the core, one for storage, one for configuration.

use crate::message::DecodeError;

/// The result of a core operation.
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong in a core operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The storage could not serve a request.
    #[error("storage: {0}")]
    Store(#[from] StorageError),
    /// The configuration is invalid.
    #[error("invalid config: {0}")]
    ConfigInvalid(#[from] ConfigError),
    /// A proposal was refused: no leader, forwarding disabled, a leader transfer in progress,
    /// the uncommitted-size limit reached, or this node is not in the configuration.
    #[error("proposal dropped")]
    ProposalDropped,
    /// A local-only message type was stepped in from a peer.
    #[error("cannot step a local message from a peer")]
    StepLocalMsg,
    /// A response came from a node that is not in the configuration.
    #[error("message from unknown peer {id}")]
    StepPeerNotFound {
        /// The sender.
        id: u64,
    },
    /// A configuration change is invalid for the current configuration.
    #[error("configuration change refused: {0}")]
    ConfChange(#[from] ConfChangeError),
    /// A leadership transfer was refused.
    #[error("leader transfer refused: {0}")]
    TransferLeader(#[from] crate::raw_node::TransferLeaderError),
    /// A message from a peer is malformed.
    #[error("malformed message: {reason}")]
    MalformedMessage {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A configuration change entry could not be decoded.
    #[error("configuration change does not decode: {0}")]
    ConfChangeDecode(#[from] DecodeError),
}

/// What a [`crate::Storage`] could not do.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The requested index is before the first index: it was compacted into a snapshot.
    #[error("log compacted: the requested index is before the first index")]
    Compacted,
    /// The requested index is after the last index.
    #[error("log unavailable: the requested index is after the last index")]
    Unavailable,
    /// The snapshot asked to be applied is older than the storage's.
    #[error("snapshot out of date")]
    SnapshotOutOfDate,
    /// The snapshot is being built; the leader retries later.
    #[error("snapshot temporarily unavailable")]
    SnapshotTemporarilyUnavailable,
    /// Anything else an implementation reports.
    #[error("{0}")]
    Other(String),
}

/// A mistake in [`crate::Config`], found by [`crate::Config::validate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `id` is 0, which means "none" in every message.
    #[error("id must not be 0")]
    IdZero,
    /// `heartbeat_tick` is 0.
    #[error("heartbeat_tick must be greater than 0")]
    HeartbeatTickZero,
    /// `election_tick` is not greater than `heartbeat_tick`.
    #[error(
        "election_tick ({election_tick}) must be greater than heartbeat_tick ({heartbeat_tick})"
    )]
    ElectionTickTooSmall {
        /// The configured election tick.
        election_tick: usize,
        /// The configured heartbeat tick.
        heartbeat_tick: usize,
    },
    /// `max_inflight_msgs` is 0: replication could never send.
    #[error("max_inflight_msgs must be greater than 0")]
    MaxInflightMsgsZero,
    /// Lease-based reads are only safe when a leader steps down without a quorum.
    #[error("read_only_option LeaseBased requires check_quorum")]
    LeaseBasedWithoutCheckQuorum,
    /// `lease_duration` is set exactly when reads are `LeaseBased`.
    #[error("lease_duration must be set for LeaseBased reads, and only for them")]
    LeaseDurationWithoutLeaseBased,
    /// A node is listed both as a peer (voter) and as a learner.
    #[error("node {id} is both a peer and a learner")]
    PeerIsLearner {
        /// The node.
        id: u64,
    },
    /// A node id of 0 appears in `peers` or `learners`.
    #[error("peers and learners must not contain id 0")]
    MemberIdZero,
    /// A node appears twice in `peers` or in `learners`.
    #[error("node {id} is listed twice")]
    DuplicateMember {
        /// The node.
        id: u64,
    },
    /// The storage already holds a configuration, and `peers`/`learners` also name one.
    #[error("peers/learners given but the storage already holds a configuration")]
    BootstrapOverExistingState,
    /// `applied` is beyond what the log holds as committed.
    #[error("applied index {applied} is beyond the commit index {committed}")]
    AppliedBeyondCommit {
        /// The configured applied index.
        applied: u64,
        /// The commit index found in storage.
        committed: u64,
    },
}

/// Why a configuration change was refused at apply time. Every node refuses the same change
/// the same way, since each applies it to the same configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfChangeError {
    /// A change other than "leave joint" while the configuration is joint.
    #[error("the configuration is joint; leave it first")]
    AlreadyJoint,
    /// "Leave joint" while the configuration is not joint.
    #[error("the configuration is not joint")]
    NotJoint,
    /// Entering a joint configuration from one without voters.
    #[error("cannot make a zero-voter configuration joint")]
    ZeroVoterJoint,
    /// The change would leave no voter.
    #[error("the change removes every voter")]
    NoVoters,
    /// A simple change may change at most one voter; more need joint consensus.
    #[error("{count} voters changed without entering a joint configuration")]
    TooManyVoterChanges {
        /// Voters added plus voters removed.
        count: usize,
    },
    /// Removing a node that is not a member.
    #[error("node {id} is not a member")]
    RemoveNonMember {
        /// The node.
        id: u64,
    },
    /// Updating a node that is not a member.
    #[error("node {id} is not a member")]
    UpdateNonMember {
        /// The node.
        id: u64,
    },
    /// Adding as a voter a node that already is one.
    #[error("node {id} is already a voter")]
    AlreadyVoter {
        /// The node.
        id: u64,
    },
    /// Adding as a learner a node that already is one.
    #[error("node {id} is already a learner")]
    AlreadyLearner {
        /// The node.
        id: u64,
    },
    /// Node id 0 is reserved for "none".
    #[error("node id 0 is reserved")]
    NodeIdZero,
    /// The resulting configuration breaks an invariant (a bug, or a corrupt ConfState).
    #[error("invalid configuration: {0}")]
    Invalid(String),
}
