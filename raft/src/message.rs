//! The values that cross the core's boundary: messages between peers, log entries, the
//! persistent hard state, configurations and snapshots.
//!
//! Every type derives serde's `Serialize`/`Deserialize` so the daemon can put it on the wire
//! and in its write-ahead log; the core itself never serializes them, except configuration
//! changes, which it must read back out of entries (see [`ConfChangeV2::encode`]).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The kinds of message a node steps, named as in etcd's `raftpb.MessageType`.
///
/// Local messages (`Hup`, `Beat`, `Unreachable`, `SnapshotStatus`, `CheckQuorum`) are made by the
/// node itself and never travel between peers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MessageType {
    /// Local: start an election (pre-vote first when enabled).
    #[default]
    Hup,
    /// Local: the leader broadcasts a heartbeat.
    Beat,
    /// A client proposal; a follower forwards it to the leader.
    Propose,
    /// Leader -> follower: entries to append after (`index`, `log_term`).
    Append,
    /// Follower -> leader: the outcome of an `Append` or `Snapshot`.
    AppendResponse,
    /// Candidate -> peers: a vote request.
    RequestVote,
    /// Peer -> candidate: the vote, granted unless `reject`.
    RequestVoteResponse,
    /// Leader -> follower: install this snapshot.
    Snapshot,
    /// Leader -> follower: heartbeat, carrying the commit index and a read context.
    Heartbeat,
    /// Follower -> leader: heartbeat acknowledgement.
    HeartbeatResponse,
    /// Local: the transport could not reach `from`.
    Unreachable,
    /// Local: the outcome of sending a snapshot to `from` (`reject` means failure).
    SnapshotStatus,
    /// Local: the leader checks that a quorum is still active.
    CheckQuorum,
    /// Ask the leader to hand leadership to `from`.
    TransferLeader,
    /// Leader -> transferee: campaign now, skipping the election timeout and pre-vote.
    TimeoutNow,
    /// Ask for a read index; a follower forwards it to the leader.
    ReadIndex,
    /// Leader -> follower: the read index for a forwarded `ReadIndex`.
    ReadIndexResp,
    /// Pre-candidate -> peers: would you vote for me at `term`?
    RequestPreVote,
    /// Peer -> pre-candidate: the pre-vote answer.
    RequestPreVoteResponse,
    /// Leader -> the voters other than the transferee, sent with `TimeoutNow`: `index` names
    /// the transferee, the one candidate whose transfer campaign may override this voter's
    /// leader lease.
    TransferNotice,
}

impl MessageType {
    /// True for messages made by the node itself, which must never arrive from a peer.
    pub fn is_local(self) -> bool {
        matches!(
            self,
            MessageType::Hup
                | MessageType::Beat
                | MessageType::Unreachable
                | MessageType::SnapshotStatus
                | MessageType::CheckQuorum
        )
    }

    /// True for the responses that acknowledge persisted state (a granted vote, an append).
    pub fn is_response(self) -> bool {
        matches!(
            self,
            MessageType::AppendResponse
                | MessageType::RequestVoteResponse
                | MessageType::RequestPreVoteResponse
                | MessageType::HeartbeatResponse
                | MessageType::ReadIndexResp
        )
    }

    /// The response type for a vote request, for either election phase.
    pub fn vote_response(self) -> MessageType {
        match self {
            MessageType::RequestVote => MessageType::RequestVoteResponse,
            MessageType::RequestPreVote => MessageType::RequestPreVoteResponse,
            other => panic!("not a vote message: {other:?}"),
        }
    }
}

/// What an entry's `data` holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryType {
    /// Application data (empty for the leader's no-op on election).
    #[default]
    Normal,
    /// An encoded [`ConfChange`].
    ConfChange,
    /// An encoded [`ConfChangeV2`].
    ConfChangeV2,
}

/// One log entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// What `data` holds.
    pub entry_type: EntryType,
    /// The term of the leader that created the entry.
    pub term: u64,
    /// The entry's position in the log, from 1.
    pub index: u64,
    /// The payload: application data or an encoded configuration change. Shared: a clone
    /// counts a reference (and decoded in [`crate::decode_sharing`], a slice of the frame).
    #[serde(with = "crate::sharing")]
    pub data: Bytes,
    /// Opaque application context (etcd uses it to match proposals to waiters).
    #[serde(with = "crate::sharing")]
    pub context: Bytes,
}

/// Bytes an entry adds to a message or to the uncommitted total, as etcd counts them.
const ENTRY_OVERHEAD_BYTES: u64 = 24;

impl Entry {
    /// A normal entry with the given payload.
    pub fn new(term: u64, index: u64, data: impl Into<Bytes>) -> Entry {
        Entry {
            entry_type: EntryType::Normal,
            term,
            index,
            data: data.into(),
            context: Bytes::new(),
        }
    }

    /// The size counted against `max_size_per_msg` and `max_committed_size_per_ready`.
    pub fn size_bytes(&self) -> u64 {
        ENTRY_OVERHEAD_BYTES + self.data.len() as u64 + self.context.len() as u64
    }

    /// The size counted against `max_uncommitted_entries_size`: the payload only, so an empty
    /// entry (the leader's no-op, a leave-joint entry) always fits.
    pub fn payload_size_bytes(&self) -> u64 {
        self.data.len() as u64
    }
}

/// The state that must be persisted before any message depending on it is sent (Raft §5.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: u64,
    /// The candidate voted for in `term`, or 0.
    pub vote: u64,
    /// The highest index known to be committed.
    pub commit: u64,
}

impl HardState {
    /// True for the state of a node that has never run.
    pub fn is_empty(&self) -> bool {
        *self == HardState::default()
    }
}

/// A cluster configuration as persisted in snapshots and returned by `apply_conf_change`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConfState {
    /// The voters of the incoming (or only) configuration.
    pub voters: Vec<u64>,
    /// The learners.
    pub learners: Vec<u64>,
    /// The voters of the outgoing configuration while joint; empty otherwise.
    pub voters_outgoing: Vec<u64>,
    /// Voters of the outgoing configuration that become learners on leaving the joint state.
    pub learners_next: Vec<u64>,
    /// Whether the joint state is left automatically.
    pub auto_leave: bool,
}

impl ConfState {
    /// Checks that this is a configuration a node can take on (from a snapshot sent by a
    /// peer, say): no id 0, no voter that is also a learner, a joint state only with its
    /// outgoing voters, at least one voter.
    pub fn validate(&self) -> Result<(), crate::ConfChangeError> {
        if self.voters.is_empty() {
            return Err(crate::ConfChangeError::Invalid("a configuration without voters".into()));
        }
        crate::confchange::restore(&crate::tracker::ProgressTracker::new(1), 0, self).map(drop)
    }
}

/// What a snapshot covers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SnapshotMetadata {
    /// The configuration as of `index`.
    pub conf_state: ConfState,
    /// The last index the snapshot includes.
    pub index: u64,
    /// The term of the entry at `index`.
    pub term: u64,
}

/// A point-in-time image of the state machine, replacing the log up to its index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Snapshot {
    /// The application's state machine image.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// Index, term and configuration.
    pub metadata: SnapshotMetadata,
}

impl Snapshot {
    /// True for the absent snapshot (index 0).
    pub fn is_empty(&self) -> bool {
        self.metadata.index == 0
    }
}

/// A message between peers, or a local input to the state machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The kind of message.
    pub msg_type: MessageType,
    /// Recipient id.
    pub to: u64,
    /// Sender id.
    pub from: u64,
    /// The sender's term; 0 for local messages and proposals.
    pub term: u64,
    /// Term of the entry at `index` (appends), of the candidate's last entry (votes), or of the
    /// follower's entry at `reject_hint` (rejections).
    pub log_term: u64,
    /// The index preceding `entries` (appends), the candidate's last index (votes), or the
    /// acknowledged index (responses).
    pub index: u64,
    /// Entries to append, or the proposal's entries.
    pub entries: Vec<Entry>,
    /// The sender's commit index.
    pub commit: u64,
    /// The snapshot, for `Snapshot` messages. Boxed (as etcd's is a pointer): every other
    /// message is moved a few times on its way out, and would carry the snapshot's inline
    /// size each time.
    pub snapshot: Option<Box<Snapshot>>,
    /// True when the request is refused.
    pub reject: bool,
    /// On a rejected append: the follower's best guess of where the logs may match.
    pub reject_hint: u64,
    /// Opaque context: a read request's id, or a campaign marker on votes.
    #[serde(with = "crate::sharing")]
    pub context: Bytes,
    /// Heartbeats: the leader's clock when it sent this one, in nanoseconds of the
    /// application's clock ([`crate::RawNode::advance_clock`]); the response echoes it. Only
    /// that leader reads it, to start its lease ([`crate::Config::lease_duration`]).
    pub sent_at: u64,
}

impl Message {
    /// A message of the given kind with every other field zero.
    pub fn new(msg_type: MessageType) -> Message {
        Message { msg_type, ..Message::default() }
    }
}

/// Single-step configuration change kinds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConfChangeType {
    /// Add a voter, or promote a learner.
    #[default]
    AddNode,
    /// Remove a voter or a learner.
    RemoveNode,
    /// Add a learner, or demote a voter.
    AddLearnerNode,
    /// Change nothing in the configuration: carries the application's news about a member
    /// (in the context), as etcd's `ConfChangeUpdateNode` does. The node must be a member.
    UpdateNode,
}

/// How a [`ConfChangeV2`] uses joint consensus.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConfChangeTransition {
    /// A simple change when possible (one voter changes), else joint with automatic leave.
    #[default]
    Auto,
    /// Always joint, left automatically.
    Implicit,
    /// Always joint; the application proposes the leave entry itself.
    Explicit,
}

/// A legacy single-node configuration change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConfChange {
    /// What to do.
    pub change_type: ConfChangeType,
    /// To which node.
    pub node_id: u64,
    /// Opaque application context (raftd puts the node's address here).
    #[serde(with = "serde_bytes")]
    pub context: Vec<u8>,
}

/// One step of a [`ConfChangeV2`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConfChangeSingle {
    /// What to do.
    pub change_type: ConfChangeType,
    /// To which node.
    pub node_id: u64,
}

/// A configuration change of any number of nodes; empty `changes` means "leave joint".
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConfChangeV2 {
    /// How joint consensus is used.
    pub transition: ConfChangeTransition,
    /// The changes, applied in order.
    pub changes: Vec<ConfChangeSingle>,
    /// Opaque application context.
    #[serde(with = "serde_bytes")]
    pub context: Vec<u8>,
}

impl ConfChange {
    /// The equivalent V2 change.
    pub fn into_v2(self) -> ConfChangeV2 {
        ConfChangeV2 {
            transition: ConfChangeTransition::Auto,
            changes: vec![ConfChangeSingle {
                change_type: self.change_type,
                node_id: self.node_id,
            }],
            context: self.context,
        }
    }

    /// Encodes the change for an entry of type [`EntryType::ConfChange`].
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(17 + self.context.len());
        out.push(change_type_tag(self.change_type));
        out.extend_from_slice(&self.node_id.to_le_bytes());
        put_bytes(&mut out, &self.context);
        out
    }

    /// Decodes what [`ConfChange::encode`] produced.
    pub fn decode(bytes: &[u8]) -> Result<ConfChange, DecodeError> {
        let mut r = Reader { bytes, pos: 0 };
        let change_type = change_type_from_tag(r.u8()?)?;
        let node_id = r.u64()?;
        let context = r.bytes()?;
        r.finish()?;
        Ok(ConfChange { change_type, node_id, context })
    }
}

impl ConfChangeV2 {
    /// The "leave joint" change: no changes, explicit or implicit.
    pub fn leave_joint() -> ConfChangeV2 {
        ConfChangeV2::default()
    }

    /// True when this change asks to leave a joint configuration.
    pub fn leave_joint_requested(&self) -> bool {
        self.changes.is_empty()
    }

    /// Whether this change must use joint consensus, and if so whether it leaves automatically
    /// (etcd `ConfChangeV2.EnterJoint`).
    pub fn enter_joint(&self) -> Option<bool> {
        if self.transition != ConfChangeTransition::Auto || self.changes.len() > 1 {
            let auto_leave = match self.transition {
                ConfChangeTransition::Auto | ConfChangeTransition::Implicit => true,
                ConfChangeTransition::Explicit => false,
            };
            Some(auto_leave)
        } else {
            None
        }
    }

    /// Encodes the change for an entry of type [`EntryType::ConfChangeV2`].
    ///
    /// Layout: transition tag (u8), change count (u32 LE), then per change a type tag (u8) and
    /// a node id (u64 LE), then the context as a u32 LE length and bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + 9 * self.changes.len() + self.context.len());
        out.push(match self.transition {
            ConfChangeTransition::Auto => 0,
            ConfChangeTransition::Implicit => 1,
            ConfChangeTransition::Explicit => 2,
        });
        out.extend_from_slice(&(self.changes.len() as u32).to_le_bytes());
        for change in &self.changes {
            out.push(change_type_tag(change.change_type));
            out.extend_from_slice(&change.node_id.to_le_bytes());
        }
        put_bytes(&mut out, &self.context);
        out
    }

    /// Decodes what [`ConfChangeV2::encode`] produced. Empty bytes are the leave-joint change
    /// a leader appends by itself (the entry then counts zero bytes against size limits).
    pub fn decode(bytes: &[u8]) -> Result<ConfChangeV2, DecodeError> {
        if bytes.is_empty() {
            return Ok(ConfChangeV2::leave_joint());
        }
        let mut r = Reader { bytes, pos: 0 };
        let transition = match r.u8()? {
            0 => ConfChangeTransition::Auto,
            1 => ConfChangeTransition::Implicit,
            2 => ConfChangeTransition::Explicit,
            tag => return Err(DecodeError::UnknownTag { tag }),
        };
        let count = r.u32()? as usize;
        // Each change takes 9 bytes: refuse a count the input cannot hold before allocating.
        if count > r.remaining() / 9 {
            return Err(DecodeError::Truncated { needed: count * 9, available: r.remaining() });
        }
        let mut changes = Vec::with_capacity(count);
        for _ in 0..count {
            let change_type = change_type_from_tag(r.u8()?)?;
            changes.push(ConfChangeSingle { change_type, node_id: r.u64()? });
        }
        let context = r.bytes()?;
        r.finish()?;
        Ok(ConfChangeV2 { transition, changes, context })
    }
}

/// A configuration change read out of an entry that does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended early.
    #[error("truncated: needed {needed} more bytes, {available} available")]
    Truncated {
        /// Bytes the next field needs.
        needed: usize,
        /// Bytes left.
        available: usize,
    },
    /// An enum tag that no variant has.
    #[error("unknown tag {tag}")]
    UnknownTag {
        /// The tag read.
        tag: u8,
    },
    /// Bytes left over after the value.
    #[error("{extra} trailing bytes")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
}

fn change_type_tag(t: ConfChangeType) -> u8 {
    match t {
        ConfChangeType::AddNode => 0,
        ConfChangeType::RemoveNode => 1,
        ConfChangeType::AddLearnerNode => 2,
        ConfChangeType::UpdateNode => 3,
    }
}

fn change_type_from_tag(tag: u8) -> Result<ConfChangeType, DecodeError> {
    match tag {
        0 => Ok(ConfChangeType::AddNode),
        1 => Ok(ConfChangeType::RemoveNode),
        2 => Ok(ConfChangeType::AddLearnerNode),
        3 => Ok(ConfChangeType::UpdateNode),
        tag => Err(DecodeError::UnknownTag { tag }),
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated { needed: n, available: self.remaining() });
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let mut buf = [0u8; 4];
        buf.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(buf))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut buf = [0u8; 8];
        buf.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(buf))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let len = self.u32()? as usize;
        Ok(self.take(len)?.to_vec())
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes { extra }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_change_v2_round_trips_and_rejects_every_truncation() {
        let cc = ConfChangeV2 {
            transition: ConfChangeTransition::Explicit,
            changes: vec![
                ConfChangeSingle { change_type: ConfChangeType::AddNode, node_id: 4 },
                ConfChangeSingle { change_type: ConfChangeType::RemoveNode, node_id: 1 },
            ],
            context: b"127.0.0.1:7004".to_vec(),
        };
        let bytes = cc.encode();
        assert_eq!(ConfChangeV2::decode(&bytes), Ok(cc));
        for cut in 1..bytes.len() {
            assert!(ConfChangeV2::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(ConfChangeV2::decode(&long), Err(DecodeError::TrailingBytes { extra: 1 }));
    }

    #[test]
    fn conf_change_decode_rejects_unknown_tags_and_huge_counts() {
        assert_eq!(ConfChange::decode(&[9]), Err(DecodeError::UnknownTag { tag: 9 }));
        let huge = [0u8, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(ConfChangeV2::decode(&huge), Err(DecodeError::Truncated { .. })));
        let cc = ConfChange {
            change_type: ConfChangeType::AddLearnerNode,
            node_id: 7,
            context: vec![1, 2],
        };
        assert_eq!(ConfChange::decode(&cc.encode()), Ok(cc));
    }

    #[test]
    fn enter_joint_follows_the_transition() {
        let one = |t| ConfChangeV2 {
            transition: t,
            changes: vec![ConfChangeSingle::default()],
            context: vec![],
        };
        assert_eq!(one(ConfChangeTransition::Auto).enter_joint(), None);
        assert_eq!(one(ConfChangeTransition::Implicit).enter_joint(), Some(true));
        assert_eq!(one(ConfChangeTransition::Explicit).enter_joint(), Some(false));
        let mut two = one(ConfChangeTransition::Auto);
        two.changes.push(ConfChangeSingle::default());
        assert_eq!(two.enter_joint(), Some(true));
    }
}
