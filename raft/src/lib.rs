//! A Raft consensus core, modelled on etcd's raft library: pure, deterministic and driven.
//!
//! The core has no sockets, files, threads or clocks. The application owns those and drives a
//! [`RawNode`]: it calls [`RawNode::tick`] on a timer, [`RawNode::step`] with every message
//! from a peer, [`RawNode::propose`] with client writes, and then handles a [`Ready`]: persist
//! entries and hard state, send messages, apply committed entries, [`RawNode::advance`]. The
//! names are etcd's, in snake_case: `term`, `vote`, `lead`, `lead_transferee`,
//! `pending_conf_index`, `election_elapsed`, `randomized_election_timeout`,
//! `become_pre_candidate`, and so on.
//!
//! # Usage
//!
//! A single-node cluster, bootstrapped from `Config.peers`, that elects itself, commits a
//! proposal and applies it. The same loop drives a node of any cluster: only the sending of
//! messages (step 2) is left out here.
//!
//! ```
//! use raft::{
//!     Bytes, ConfChange, ConfChangeV2, Config, EntryType, MemoryStorage, RawNode, StateType, Storage,
//! };
//!
//! /// Handles one Ready: persist, (send), apply, advance. Returns the applied data.
//! fn handle_ready(node: &mut RawNode<MemoryStorage>) -> Vec<Bytes> {
//!     let rd = node.ready();
//!     // 1. Persist: snapshot, entries, hard state (fsync when rd.must_sync).
//!     if let Some(snapshot) = &rd.snapshot {
//!         node.store_mut().apply_snapshot(snapshot.clone()).expect("newer snapshot");
//!     }
//!     node.store_mut().append(&rd.entries).expect("append");
//!     if let Some(hs) = rd.hard_state {
//!         node.store_mut().set_hard_state(hs);
//!     }
//!     // 2. Send rd.messages to the peers named in `to` (none in a one-node cluster).
//!     // 3. Apply committed entries: configuration changes to the node, data to the state
//!     //    machine. The leader's first entry of its term is empty.
//!     let mut applied = Vec::new();
//!     for entry in &rd.committed_entries {
//!         let change = match entry.entry_type {
//!             EntryType::Normal if entry.data.is_empty() => continue,
//!             EntryType::Normal => {
//!                 applied.push(entry.data.clone());
//!                 continue;
//!             }
//!             EntryType::ConfChange => ConfChange::decode(&entry.data).expect("valid").into_v2(),
//!             EntryType::ConfChangeV2 => ConfChangeV2::decode(&entry.data).expect("valid"),
//!         };
//!         let conf_state = node.apply_conf_change(&change).expect("valid change");
//!         node.store_mut().set_conf_state(conf_state);
//!     }
//!     // 4. Serve rd.read_states whose index is applied. 5. Advance.
//!     node.advance(rd);
//!     applied
//! }
//!
//! let config = Config { peers: vec![1], ..Config::new(1) };
//! config.validate().expect("valid config");
//! let mut node = RawNode::new(&config, MemoryStorage::new()).expect("new node");
//!
//! // The first Ready persists and applies the bootstrap configuration.
//! let mut applied = Vec::new();
//! while node.has_ready() {
//!     applied.extend(handle_ready(&mut node));
//! }
//! // Tick until the election timeout fires; a single voter wins on its own vote.
//! for _ in 0..2 * config.election_tick {
//!     node.tick();
//! }
//! assert_eq!(node.raft.state, StateType::Leader);
//! node.propose(vec![], b"x=1".to_vec()).expect("accepted");
//! while node.has_ready() {
//!     applied.extend(handle_ready(&mut node));
//! }
//! assert_eq!(applied, vec![b"x=1".to_vec()]);
//! // The log: the bootstrap configuration change, the leader's empty entry, the proposal.
//! assert_eq!(node.store().last_index(), Ok(3));
//! ```
//!
//! # Linearizable reads
//!
//! Call [`RawNode::read_index`] with a context identifying the read (batch all reads that
//! arrived since the last call into one: each call costs a heartbeat round). When leadership
//! is confirmed, a [`ReadState`] with that context and the commit index appears in
//! `Ready::read_states`; serve the read once the applied index reaches it. A follower's call
//! is forwarded to the leader and answered the same way. With
//! [`ReadOnlyOption::LeaseBased`] (which requires `check_quorum`), the leader answers from its
//! lease without a heartbeat round.
//!
//! ```
//! # use raft::{Config, ConfState, MemoryStorage, RawNode, StateType};
//! let storage = MemoryStorage::new_with_conf_state(ConfState { voters: vec![1], ..Default::default() });
//! let mut node = RawNode::new(&Config::new(1), storage).expect("new node");
//! node.campaign().expect("campaign");
//! // The no-op entry of the new term, then (once persisted) its commit.
//! while node.has_ready() {
//!     let rd = node.ready();
//!     node.store_mut().append(&rd.entries).expect("append");
//!     node.advance(rd);
//! }
//!
//! node.read_index(b"read-42".to_vec()).expect("a leader is known");
//! let rd = node.ready();
//! let read = &rd.read_states[0];
//! assert_eq!(read.request_ctx, &b"read-42"[..]);
//! // Serve the read once node.raft.raft_log.applied >= read.index.
//! assert!(node.raft.raft_log.applied >= read.index);
//! node.advance(rd);
//! ```
//!
//! # Membership changes
//!
//! Propose a [`ConfChange`] (one node) or a [`ConfChangeV2`] (several, through joint
//! consensus) with [`RawNode::propose_conf_change`]. When its entry is committed, the
//! application decodes it (as `handle_ready` above does) and calls
//! [`RawNode::apply_conf_change`], persisting the returned [`ConfState`] with its state. A
//! joint change with automatic leave is left by the leader itself once applied; with
//! [`ConfChangeTransition::Explicit`], propose [`ConfChangeV2::leave_joint`] when ready. One
//! change may be pending at a time; a change that is invalid for the configuration is refused
//! by every node alike with [`ConfChangeError`].
//!
//! ```text
//! let add = ConfChange { change_type: ConfChangeType::AddNode, node_id: 4, context: addr };
//! node.propose_conf_change(vec![], &add)?;
//! ```
//!
//! A cluster bootstrapped from `Config.peers` has its configuration in the log, so a node
//! that starts empty and is then added learns every member by replaying it.
//!
//! # Snapshots and compaction
//!
//! The application snapshots its state machine at an applied index and drops the log before
//! it. A follower that needs compacted entries receives the snapshot in `Ready::snapshot`,
//! loads it into its state machine and persists it; the leader's transport reports delivery
//! with [`RawNode::report_snapshot`], so a lost snapshot is sent again.
//!
//! ```
//! # use raft::{ConfState, MemoryStorage, Storage, Entry};
//! let mut storage = MemoryStorage::new_with_conf_state(ConfState { voters: vec![1], ..Default::default() });
//! storage.append(&[Entry::new(1, 1, b"a".to_vec()), Entry::new(1, 2, b"b".to_vec())]).expect("append");
//! // After applying index 2, image the state machine there and compact.
//! let snapshot = storage.create_snapshot(2, None, b"state at 2".to_vec()).expect("snapshot");
//! storage.compact(2).expect("compact");
//! assert_eq!(snapshot.metadata.index, 2);
//! assert_eq!(storage.first_index(), Ok(3));
//! ```
//!
//! # Safety of the Ready contract
//!
//! See [`Ready`]: a message must not leave before the state it acknowledges is durable,
//! except a leader's, which may be sent while it writes (Raft thesis §10.2.1).

#![warn(clippy::unwrap_used)]

mod confchange;
mod config;
mod errors;
mod log_unstable;
mod message;
pub mod quorum;
mod raft;
mod raft_log;
mod raw_node;
mod read_only;
mod rng;
pub mod sharing;
mod storage;
pub mod tracker;

pub use crate::config::{Config, ReadOnlyOption};
pub use crate::errors::{ConfChangeError, ConfigError, Error, Result, StorageError};
pub use crate::log_unstable::Unstable;
pub use crate::message::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState,
    DecodeError, Entry, EntryType, HardState, Message, MessageType, Snapshot, SnapshotMetadata,
};
pub use crate::raft::{
    CampaignType, Raft, SoftState, StateType, CAMPAIGN_TRANSFER, INVALID_ID, TERM_JUMP_MAX,
    TERM_MAX,
};
pub use crate::raft_log::RaftLog;
pub use crate::raw_node::{
    ConfChangeI, LightReady, ProgressStatus, RawNode, Ready, SnapshotStatus, Status,
    TransferLeaderError,
};
pub use crate::read_only::{ReadIndexStatus, ReadOnly, ReadState};
pub use crate::sharing::decode_sharing;
pub use crate::storage::{limit_size, MemoryStorage, RaftState, Storage, NO_LIMIT};
/// Shared, reference-counted bytes: entry payloads and contexts. A clone (into the unstable
/// log, into each follower's message, into `Ready`) counts a reference; it copies nothing.
pub use bytes::Bytes;
