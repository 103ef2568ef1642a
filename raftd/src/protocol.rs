//! What travels over raftd's sockets, as frames (see the `codec` crate).
//!
//! Every connection opens with a [`Hello`] from the connecting side, answered by a
//! [`HelloAck`] (or closed with one log line on a mismatch). Peers then send [`PeerFrame`]s
//! one way; clients send [`ClientRequest`]s and receive [`ClientResponse`]s, matched by
//! `request_id` so that one connection can carry many requests at once.

use serde::{Deserialize, Serialize};

/// The largest snapshot piece in one frame.
pub const SNAPSHOT_CHUNK_SIZE_BYTES: usize = 1024 * 1024;

/// The wire protocol this build speaks: the encoding of every frame after the handshake's
/// [`ProtocolVersions`]. A release that changes any frame's encoding raises it; a release
/// that still speaks the previous one keeps [`PROTOCOL_VERSION_MIN`] there, so that a
/// cluster is upgraded one node at a time (see the README's "Upgrades").
pub const PROTOCOL_VERSION: u32 = 2;
/// The oldest wire protocol this build accepts from a peer or client.
pub const PROTOCOL_VERSION_MIN: u32 = 2;
/// The first bytes of every Hello since handshakes were versioned ("RAFTHELO"): a Hello
/// without it is from a build before (wire protocol 1).
pub const HELLO_MAGIC: u64 = 0x5241_4654_4845_4c4f;

/// The first field of every [`Hello`], whose encoding never changes: read before the rest, so
/// that a node of another version is refused with a message naming both versions, in a
/// [`HelloAck::Refused`] (whose encoding never changes either).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolVersions {
    /// [`HELLO_MAGIC`].
    pub magic: u64,
    /// The oldest wire protocol the sender speaks.
    pub min: u32,
    /// The newest wire protocol the sender speaks.
    pub max: u32,
}

impl ProtocolVersions {
    /// This build's.
    pub const OURS: ProtocolVersions =
        ProtocolVersions { magic: HELLO_MAGIC, min: PROTOCOL_VERSION_MIN, max: PROTOCOL_VERSION };

    /// Whether this build speaks wire protocol `version` (one a Welcome names).
    pub fn speaks(version: u32) -> bool {
        (PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&version)
    }

    /// The wire protocol both sides speak (the newest), or why there is none.
    pub fn agree(&self) -> std::result::Result<u32, String> {
        let ours = ProtocolVersions::OURS;
        let common = self.max.min(ours.max);
        if self.magic != HELLO_MAGIC {
            return Err(format!(
                "the peer speaks wire protocol 1 (a build from before versioned handshakes); \
                 this node speaks wire protocol {}..={}: upgrade the peer",
                ours.min, ours.max
            ));
        }
        if common < self.min.max(ours.min) {
            let (older, newer) =
                if self.max < ours.min { ("peer", "node") } else { ("node", "peer") };
            return Err(format!(
                "the peer speaks wire protocol {}..={}, this node {}..={}: no version in \
                 common (the {older} is too old for the {newer}; upgrade it)",
                self.min, self.max, ours.min, ours.max
            ));
        }
        Ok(common)
    }
}

/// Decodes a [`Hello`], its versions first: an error says why it is refused (a version this
/// build does not speak, named with ours; or a malformed frame).
pub fn decode_hello(payload: &[u8]) -> std::result::Result<Hello, String> {
    let versions: ProtocolVersions = codec::decode_prefix(payload)
        .map_err(|e| format!("bad hello (not a raftd handshake?): {e}"))?;
    versions.agree()?;
    codec::decode_payload(payload).map_err(|e| format!("bad hello: {e}"))
}

/// Who is connecting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Another node, on the peer port.
    Peer,
    /// A client or an operator, on the client port.
    Client,
}

/// The first frame on every connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The wire protocols the sender speaks (first: see [`ProtocolVersions`]).
    pub versions: ProtocolVersions,
    /// The cluster the connecting side belongs to (clients: the one they expect).
    pub cluster_id: String,
    /// The connecting node's id; 0 for clients.
    pub node_id: u64,
    /// Peer or client.
    pub role: Role,
    /// The secret of the port: the peer secret on the peer port, the client secret on the
    /// client port (never the same: a client credential does not let anyone speak Raft).
    pub token: Option<String>,
    /// A peer's client address, so that others can redirect clients to it.
    pub client_addr: Option<String>,
    /// A peer's own peer address, so that a node that does not know it yet (one that just
    /// joined) can answer.
    pub peer_addr: Option<String>,
    /// A peer's data dir incarnation (random, drawn when the dir was created); 0 for clients.
    pub incarnation: u64,
    /// The cluster incarnation the peer belongs to (fixed at bootstrap); 0 while it has none
    /// (waiting to bootstrap, or started with `--join` and not added yet) and for clients.
    pub cluster_incarnation: u64,
}

impl Hello {
    /// A client's hello (`cluster_id` empty: any cluster).
    pub fn client(cluster_id: &str, token: Option<String>) -> Hello {
        Hello {
            versions: ProtocolVersions::OURS,
            cluster_id: cluster_id.to_string(),
            node_id: 0,
            role: Role::Client,
            token,
            client_addr: None,
            peer_addr: None,
            incarnation: 0,
            cluster_incarnation: 0,
        }
    }
}

/// The answer to a [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloAck {
    /// Accepted: the answering node's id, (to peers) its incarnations, and the wire protocol
    /// the connection speaks from here on.
    Welcome {
        /// The node answering.
        node_id: u64,
        /// Its data dir incarnation (0 to clients).
        incarnation: u64,
        /// Its cluster incarnation (0 while it has none).
        cluster_incarnation: u64,
        /// The wire protocol agreed (the newest both sides speak): every frame after this
        /// one is of that version. (The Hello's fields after its versions are the same in
        /// every version a build accepts.)
        protocol: u32,
    },
    /// Refused, with the reason (the connection is then closed). Its encoding (variant 1, one
    /// string) never changes: it is how a node of another version is told why.
    Refused {
        /// Why.
        reason: String,
    },
    /// Refused because the connecting node was removed from the cluster (as this node's
    /// applied configuration says). A node that every peer answers so, for long enough,
    /// stops.
    Removed {
        /// The node answering.
        node_id: u64,
    },
    /// Refused because the connecting node's data dir is not the one the configuration
    /// recorded for its id: it was wiped or replaced, and has lost what the node under that
    /// id acknowledged. It must be removed and added again (as a learner, then promoted).
    Replaced {
        /// The node answering.
        node_id: u64,
        /// The incarnation recorded for the connecting node's id.
        expected: u64,
        /// The incarnation it presented.
        found: u64,
    },
    /// The answering node has an empty data dir and waits for every member of
    /// `--initial-cluster` to start before it bootstraps (see `raftd::bootstrap`).
    Bootstrapping {
        /// The node answering.
        node_id: u64,
        /// Its data dir incarnation.
        incarnation: u64,
    },
}

/// The operator's remedy for a replaced data dir, in the words of every message about it.
pub fn replaced_message(id: u64, found: u64, expected: u64) -> String {
    format!(
        "node {id}'s data dir was replaced (incarnation {found:016x}, expected {expected:016x}): \
         remove and re-add it (raftctl member remove {id}; wipe its data dir; raftctl member \
         add-learner {id} ADDR; start it with --join; raftctl member promote {id})"
    )
}

/// What one node sends another after the handshake.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerFrame {
    /// A Raft message; a `Snapshot` message never travels whole (see `SnapshotChunk`).
    Raft(raft::Message),
    /// A piece of a snapshot message. `message` carries everything but the snapshot's data,
    /// which arrives in order in `data`, `total` bytes in all.
    SnapshotChunk {
        /// The Snapshot message without its data.
        message: raft::Message,
        /// Where this piece starts.
        offset: u64,
        /// The data's full length.
        total: u64,
        /// The piece (a slice of the frame it arrived in: see [`raft::decode_sharing`]).
        #[serde(with = "raft::sharing")]
        data: raft::Bytes,
    },
    /// The sender's disk-space alarm, sent every second to every peer (see `raftd::space`).
    Alarm {
        /// True while the sender's data dir is short of space.
        no_space: bool,
    },
}

/// A key-value operation. Its keys and values are `B`: owned (`Vec<u8>`, the default) or
/// borrowed (`&[u8]`, see [`OpRef`]) from the frame or the log entry it was decoded from, with
/// the same encoding either way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "B: serde_bytes::Serialize",
    deserialize = "B: serde_bytes::Deserialize<'de>"
))]
pub enum Op<B = Vec<u8>> {
    /// Set `key` to `value`.
    Put {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: B,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: B,
    },
    /// Read `key`: linearizable unless `serializable`.
    Get {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: B,
        /// Answer from this node's state without confirming leadership (may be stale).
        serializable: bool,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: B,
    },
    /// Set `key` to `new` if its value is `expected` (`None`: absent).
    Cas {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: B,
        /// The value it must have.
        #[serde(with = "serde_bytes")]
        expected: Option<B>,
        /// The value to set.
        #[serde(with = "serde_bytes")]
        new: B,
    },
}

/// An operation whose keys and values are borrowed from the bytes it was decoded from: a
/// request is checked and written into its command, and a command applied, without a copy of
/// either until the state machine keeps them.
pub type OpRef<'a> = Op<&'a [u8]>;

impl<B: AsRef<[u8]>> Op<B> {
    /// Bytes of keys and values it carries (what its encoding is made of, besides a few
    /// bytes of tags and lengths).
    pub fn payload_len(&self) -> usize {
        match self {
            Op::Put { key, value } => key.as_ref().len() + value.as_ref().len(),
            Op::Get { key, .. } | Op::Delete { key } => key.as_ref().len(),
            Op::Cas { key, expected, new } => {
                key.as_ref().len()
                    + expected.as_ref().map_or(0, |e| e.as_ref().len())
                    + new.as_ref().len()
            }
        }
    }

    /// True for operations that go through the log.
    pub fn is_write(&self) -> bool {
        !matches!(self, Op::Get { .. })
    }

    /// The same operation, its bytes borrowed from this one.
    pub fn borrowed(&self) -> OpRef<'_> {
        match self {
            Op::Put { key, value } => Op::Put { key: key.as_ref(), value: value.as_ref() },
            Op::Get { key, serializable } => {
                Op::Get { key: key.as_ref(), serializable: *serializable }
            }
            Op::Delete { key } => Op::Delete { key: key.as_ref() },
            Op::Cas { key, expected, new } => Op::Cas {
                key: key.as_ref(),
                expected: expected.as_ref().map(AsRef::as_ref),
                new: new.as_ref(),
            },
        }
    }
}

/// An operator request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// The node's view of itself and the cluster.
    Status,
    /// Hand leadership to `to`.
    TransferLeader {
        /// The target voter.
        to: u64,
    },
    /// Add a voter.
    AddVoter {
        /// Its id.
        id: u64,
        /// Its peer address.
        addr: String,
    },
    /// Add a learner.
    AddLearner {
        /// Its id.
        id: u64,
        /// Its peer address.
        addr: String,
    },
    /// Promote a learner to voter.
    Promote {
        /// Its id.
        id: u64,
    },
    /// Remove a member.
    Remove {
        /// Its id.
        id: u64,
    },
    /// Snapshot and compact now.
    Snapshot,
    /// Drop Raft messages to and from these nodes, and delay every message this node sends
    /// (only with `--allow-fault-injection`).
    Fault {
        /// Drop messages to these.
        drop_to: Vec<u64>,
        /// Drop messages from these.
        drop_from: Vec<u64>,
        /// Hold every outgoing Raft message this long (0: no delay).
        delay_ms: u64,
    },
    /// Undo every `Fault`.
    Heal,
    /// Change the peer address the configuration holds for member `id` (added last: the
    /// earlier variants keep their encoding).
    UpdateMember {
        /// The member.
        id: u64,
        /// Its new peer address.
        addr: String,
    },
    /// A hash of this node's key-value data at its applied index.
    HashKv,
    /// A backup (leader only): a snapshot of everything applied when the request arrived is
    /// taken (or the last one, if nothing was applied since) and its file kept open for
    /// reading with `SnapshotChunk`, answered by [`AdminReply::SnapshotSaved`].
    SnapshotSave,
    /// The next piece of a backup's file, from `offset`.
    SnapshotChunk {
        /// The export, from [`AdminReply::SnapshotSaved`].
        export: u64,
        /// Where the piece starts.
        offset: u64,
    },
}

/// What a client sends, its keys and values owned (as a client builds it).
pub type ClientRequest = ClientRequestOf<Vec<u8>>;

/// A [`ClientRequest`] as a node decodes it: keys and values borrowed from the frame.
pub type ClientRequestRef<'a> = ClientRequestOf<&'a [u8]>;

/// What a client sends, its keys and values `B`: owned ([`ClientRequest`]) or borrowed
/// ([`ClientRequestRef`]), with the same encoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "B: serde_bytes::Serialize",
    deserialize = "B: serde_bytes::Deserialize<'de>"
))]
pub enum ClientRequestOf<B> {
    /// A key-value operation. `(session_id, seq)` identifies a write across retries, so that
    /// a retried write is applied once (reads need no session: give 0).
    Kv {
        /// Matches the response.
        request_id: u64,
        /// The session the write belongs to, from [`ClientRequest::RegisterSession`].
        session_id: u64,
        /// Increases with each new write in the session, from 1.
        seq: u64,
        /// The operation.
        op: Op<B>,
    },
    /// An operator request.
    Admin {
        /// Matches the response.
        request_id: u64,
        /// The request.
        request: AdminRequest,
    },
    /// Opens a session for writes (Raft thesis §6.3), answered by [`ClientResponse::Session`]
    /// once the registration is committed. Sessions are forgotten after a time without
    /// writes or when the table is full; a write in a forgotten session is refused with
    /// [`ClientError::SessionExpired`].
    RegisterSession {
        /// Matches the response.
        request_id: u64,
    },
}

/// The outcome of a key-value operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    /// A put applied.
    Put,
    /// A read: the value, if any.
    Get(#[serde(with = "serde_bytes")] Option<Vec<u8>>),
    /// A delete applied: whether the key existed.
    Delete(bool),
    /// A compare-and-swap applied: whether it swapped, and the value before.
    Cas {
        /// True when the value was `expected` and is now `new`.
        swapped: bool,
        /// The value before the operation.
        #[serde(with = "serde_bytes")]
        previous: Option<Vec<u8>>,
    },
}

/// A successful key-value reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvReply {
    /// The applied index the answer reflects.
    pub index: u64,
    /// The outcome.
    pub result: OpResult,
}

/// A member as the status reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Its id.
    pub id: u64,
    /// Its peer address, if known.
    pub peer_addr: Option<String>,
    /// Its client address, if known.
    pub client_addr: Option<String>,
    /// Voter, learner, or outgoing voter (joint).
    pub role: String,
    /// On the leader: the highest index known replicated on it.
    pub matched: Option<u64>,
    /// On the leader: whether replication to it is recently active.
    pub recent_active: Option<bool>,
}

/// A node's status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's id.
    pub id: u64,
    /// Its cluster.
    pub cluster_id: String,
    /// Follower, pre-candidate, candidate or leader.
    pub role: String,
    /// The current term.
    pub term: u64,
    /// The leader it knows of, or 0.
    pub leader: u64,
    /// The commit index.
    pub commit: u64,
    /// The applied index.
    pub applied: u64,
    /// The first log index still held (older entries are in the snapshot).
    pub first_index: u64,
    /// The last log index.
    pub last_index: u64,
    /// The index of the last snapshot.
    pub snapshot_index: u64,
    /// True while a joint configuration change is in progress.
    pub joint: bool,
    /// Every member.
    pub members: Vec<MemberStatus>,
    /// Seconds since the process started.
    pub uptime_secs: u64,
    /// WAL syncs since the process started (one per loop iteration that wrote).
    pub wal_syncs: u64,
    /// Time spent in them, microseconds: with `wal_syncs`, the disk's share of a write.
    pub wal_sync_micros: u64,
    /// The longest one, microseconds.
    pub wal_sync_max_micros: u64,
    /// Alarms raised, as this node knows them ("NOSPACE on node 2: ...").
    pub alarms: Vec<String>,
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ClientError {
    /// This node is not the leader; here is who is, if known.
    #[error("not the leader; the leader is node {leader_id} at {leader_addr:?}")]
    NotLeader {
        /// The leader's id.
        leader_id: u64,
        /// Its client address, if known.
        leader_addr: Option<String>,
    },
    /// No leader is known now; retry later.
    #[error("no leader is known")]
    NoLeader,
    /// The request did not complete in time; a write may or may not have applied.
    #[error("timed out; the outcome is unknown")]
    Timeout,
    /// Raft refused the proposal (a transfer in progress, too much uncommitted data).
    #[error("proposal dropped; retry")]
    ProposalDropped,
    /// The request is larger than this node accepts.
    #[error("request too large: {len} bytes, limit {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The request was refused, with the reason.
    #[error("refused: {0}")]
    Refused(String),
    /// A write with this `(session_id, seq)` was superseded by a later one of the session.
    #[error("stale request: seq {seq} is older than the session's last applied write")]
    Stale {
        /// The request's seq.
        seq: u64,
    },
    /// The write's session is not held (never registered, idle past the TTL, or evicted
    /// from a full table): the write was not applied now, but an earlier attempt of it may
    /// have been, and that cannot be known any more. Register a new session for new writes.
    #[error(
        "session {session_id} expired or is unknown: the write was not applied now, but an \
         earlier attempt may have been; register a new session"
    )]
    SessionExpired {
        /// The session.
        session_id: u64,
    },
    /// A member's disk is nearly full (see `raftd::space`): puts and compare-and-swaps are
    /// refused until space returns; reads and deletes go on.
    #[error("no space: {0}; writes are refused until space returns (reads and deletes go on)")]
    NoSpace(String),
}

/// An operator reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminReply {
    /// The status.
    Status(Box<NodeStatus>),
    /// Done; with a description.
    Done(String),
    /// The configuration after a membership change: voters, learners.
    Membership {
        /// Voters.
        voters: Vec<u64>,
        /// Learners.
        learners: Vec<u64>,
    },
    /// A snapshot was taken (added last: the earlier variants keep their encoding).
    Snapshot {
        /// The node that took it.
        node: u64,
        /// The index it covers.
        index: u64,
    },
    /// The answer to `HashKv`.
    HashKv {
        /// The node.
        node: u64,
        /// The index its state machine had applied.
        applied: u64,
        /// The hash of every key and value (see `Kv::hash`).
        hash: u64,
        /// Keys it holds.
        keys: u64,
    },
    /// A backup is ready to be read with `SnapshotChunk`: a snapshot file (see
    /// `raftd::snapfile`) of `size` bytes.
    SnapshotSaved {
        /// Names it in `SnapshotChunk` requests (to this node).
        export: u64,
        /// The node (the leader) that took it.
        node: u64,
        /// The applied index it images.
        index: u64,
        /// The term of that entry.
        term: u64,
        /// The file's length.
        size: u64,
    },
    /// A piece of a backup's file (empty past its end).
    SnapshotChunk {
        /// The bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
}

/// What a client receives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResponse {
    /// The answer to a key-value request.
    Kv {
        /// The request's id.
        request_id: u64,
        /// The outcome.
        result: Result<KvReply, ClientError>,
    },
    /// The answer to an operator request.
    Admin {
        /// The request's id.
        request_id: u64,
        /// The outcome.
        result: Result<AdminReply, ClientError>,
    },
    /// The answer to a session registration: the session's id.
    Session {
        /// The request's id.
        request_id: u64,
        /// The session, or why none was opened.
        result: Result<u64, ClientError>,
    },
}
