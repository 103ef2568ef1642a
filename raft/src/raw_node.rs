//! The application's handle on the state machine: inputs in, [`Ready`] out (etcd `RawNode`).

use bytes::Bytes;
use std::collections::BTreeMap;

use crate::config::Config;
use crate::errors::{Error, Result};
use crate::message::{
    ConfChange, ConfChangeV2, ConfState, Entry, EntryType, HardState, Message, MessageType,
    Snapshot,
};
use crate::raft::{Raft, SoftState, StateType, INVALID_ID};
use crate::read_only::ReadState;
use crate::storage::Storage;
use crate::tracker::{Progress, ProgressState};

/// Everything the application must do after the state machine moved: persist, send, apply.
///
/// # The contract
///
/// Handle a `Ready` completely, in this order, before stepping anything else into the node:
///
/// 1. Persist `snapshot` (if any), then `entries` (replacing any stored suffix they overlap),
///    then `hard_state` (if any). If `must_sync`, make them durable (fsync) before going on.
/// 2. Send `messages`. They may acknowledge what step 1 persisted (votes, appends), so they
///    must not leave before it is durable; with one exception, `messages_before_persist`:
///    a leader's messages may be sent before or while it persists, because they never
///    acknowledge its own state and the leader only counts itself toward a commit once this
///    Ready is handled (Raft thesis §10.2.1), unless this Ready also changes its term or vote
///    (a single voter elects itself without a message): appends of a term not yet durable
///    could be followed, after a crash, by different ones of the same term. No message
///    carries a commit index above what a quorum has durably.
/// 3. Apply `committed_entries` in order; pass configuration-change entries to
///    [`RawNode::apply_conf_change`]. On a follower an entry may be committed in the same
///    Ready that persists it; it is applied after step 1.
/// 4. Serve each of `read_states` once the applied index reaches its `index`.
/// 5. Call [`RawNode::advance`] with this Ready: it is the persisted notification (raft-rs's
///    `on_persist_ready`, etcd's self-addressed append response). The persisted entries
///    become stable and, on a leader, count in its own progress; a single voter commits
///    them then, so its next Ready holds them as committed.
///
/// While step 1's sync runs (on another thread, say), the application may go on stepping
/// messages and proposals into the node and take a [`LightReady`] with
/// [`RawNode::light_ready`]: what need not wait for that sync. It must not call `ready` again
/// before `advance`.
#[derive(Debug, Default, PartialEq)]
pub struct Ready {
    /// The leader and role, when they changed since the last Ready.
    pub soft_state: Option<SoftState>,
    /// Term, vote and commit to persist, when they changed.
    pub hard_state: Option<HardState>,
    /// Confirmed reads; serve each once applied reaches its index.
    pub read_states: Vec<ReadState>,
    /// Entries to persist.
    pub entries: Vec<Entry>,
    /// A snapshot from the leader to persist and load into the state machine.
    pub snapshot: Option<Snapshot>,
    /// Entries to apply, in order.
    pub committed_entries: Vec<Entry>,
    /// Messages to send.
    pub messages: Vec<Message>,
    /// True when `hard_state` (term or vote) or `entries` must be durable before `messages`
    /// are sent; a commit index change alone need not be synced.
    pub must_sync: bool,
    /// True when `messages` may be sent before this Ready is persisted: this node leads, and
    /// the Ready changes neither its term nor its vote (see step 2).
    pub messages_before_persist: bool,
}

/// What need not wait for the Ready being persisted, taken with [`RawNode::light_ready`]
/// between `ready` and `advance` (raft-rs has a `LightReady` of the same spirit).
#[derive(Debug, Default, PartialEq)]
pub struct LightReady {
    /// Committed entries durable on this node and not handed out before, in order: apply
    /// them, then call [`RawNode::advance_apply_to`] with the last one's index.
    pub committed_entries: Vec<Entry>,
    /// A leader's messages, when the Ready being persisted changes neither its term nor its
    /// vote (as `Ready::messages_before_persist`): they acknowledge nothing of its own.
    /// Messages of a node that does not lead wait for the next Ready.
    pub messages: Vec<Message>,
    /// Confirmed reads; serve each once applied reaches its `index`.
    pub read_states: Vec<ReadState>,
}

/// The outcome of sending a snapshot, reported with [`RawNode::report_snapshot`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotStatus {
    /// The follower received the snapshot.
    Finish,
    /// The transfer failed; the leader probes again.
    Failure,
}

/// A snapshot of a node's state, for operators and tests (etcd `Status`).
#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    /// The node's id.
    pub id: u64,
    /// Term, vote, commit.
    pub hard_state: HardState,
    /// Leader and role.
    pub soft_state: SoftState,
    /// The applied index.
    pub applied: u64,
    /// The configuration.
    pub conf_state: ConfState,
    /// On the leader, every member's progress; empty otherwise.
    pub progress: BTreeMap<u64, ProgressStatus>,
    /// The target of a leadership transfer in progress, or 0.
    pub lead_transferee: u64,
}

/// The leader's view of one member, as reported by [`RawNode::status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgressStatus {
    /// The highest index known to be replicated on the member.
    pub matched: u64,
    /// The next index the leader will send.
    pub next_idx: u64,
    /// Probe, Replicate or Snapshot.
    pub state: ProgressState,
    /// True when the leader is not sending to the member now (flow control).
    pub paused: bool,
    /// Append messages sent and not yet acknowledged.
    pub inflight_count: usize,
    /// In Snapshot state, the index of the snapshot in flight.
    pub pending_snapshot: u64,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// The member is a learner.
    pub is_learner: bool,
}

impl From<&Progress> for ProgressStatus {
    fn from(pr: &Progress) -> ProgressStatus {
        ProgressStatus {
            matched: pr.matched,
            next_idx: pr.next_idx,
            state: pr.state,
            paused: pr.is_paused(),
            inflight_count: pr.ins.count(),
            pending_snapshot: pr.pending_snapshot,
            recent_active: pr.recent_active,
            is_learner: pr.is_learner,
        }
    }
}

/// Either kind of configuration change, for proposing and applying.
pub trait ConfChangeI {
    /// The entry type and encoded data of a proposal carrying this change.
    fn to_entry(&self) -> (EntryType, Vec<u8>);
    /// The change as a V2 change.
    fn as_v2(&self) -> ConfChangeV2;
}

impl ConfChangeI for ConfChange {
    fn to_entry(&self) -> (EntryType, Vec<u8>) {
        (EntryType::ConfChange, self.encode())
    }

    fn as_v2(&self) -> ConfChangeV2 {
        self.clone().into_v2()
    }
}

impl ConfChangeI for ConfChangeV2 {
    fn to_entry(&self) -> (EntryType, Vec<u8>) {
        (EntryType::ConfChangeV2, self.encode())
    }

    fn as_v2(&self) -> ConfChangeV2 {
        self.clone()
    }
}

/// Why [`RawNode::transfer_leader`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransferLeaderError {
    /// The target is not a voter: a learner, or not a member.
    #[error("node {to} is not a voter")]
    NotVoter {
        /// The requested target.
        to: u64,
    },
    /// This node is the leader and the target.
    #[error("node {to} is already the leader")]
    AlreadyLeader {
        /// The requested target.
        to: u64,
    },
}

/// A Raft node the application drives: [`tick`](RawNode::tick), [`step`](RawNode::step),
/// [`propose`](RawNode::propose) in; [`ready`](RawNode::ready) and
/// [`advance`](RawNode::advance) out.
pub struct RawNode<T: Storage> {
    /// The state machine, public for inspection (and for tests that need its internals).
    pub raft: Raft<T>,
    prev_soft_state: SoftState,
    prev_hard_state: HardState,
    /// The last committed entry handed out to be applied (by `ready` or `light_ready`); at
    /// least the log's applied index.
    applying: u64,
}

impl<T: Storage> RawNode<T> {
    /// A node over `store`. For a new cluster, either `config.peers` (and `learners`) or the
    /// storage's configuration names the members; a restarted node reads its state from
    /// storage.
    pub fn new(config: &Config, store: T) -> Result<RawNode<T>> {
        let raft = Raft::new(config, store)?;
        // What storage holds, so that a bootstrapped node's first Ready persists its state.
        let prev_hard_state = raft.raft_log.store.initial_state()?.hard_state;
        let prev_soft_state = raft.soft_state();
        let applying = raft.raft_log.applied;
        Ok(RawNode { raft, prev_soft_state, prev_hard_state, applying })
    }

    /// Advances the logical clock; call every tick interval.
    pub fn tick(&mut self) {
        self.raft.tick();
    }

    /// Gives the core the application's monotonic clock (any fixed origin), for leases. With
    /// `LeaseBased` reads, call it before every `tick` and `read_index` with a fresh reading;
    /// a clock that stops advancing would keep a lease forever.
    pub fn advance_clock(&mut self, now: std::time::Duration) {
        self.raft.advance_clock(now);
    }

    /// Starts an election now (pre-vote first when enabled).
    pub fn campaign(&mut self) -> Result<()> {
        self.raft.step(Message::new(MessageType::Hup))
    }

    /// Proposes `data` for the log. `Ok` means accepted for replication, not committed: watch
    /// `committed_entries` for it. `ProposalDropped` when there is no leader, forwarding is
    /// disabled, a leader transfer is in progress, or the uncommitted-size limit is reached.
    pub fn propose(&mut self, context: impl Into<Bytes>, data: impl Into<Bytes>) -> Result<()> {
        let entry = Entry { data: data.into(), context: context.into(), ..Entry::default() };
        self.propose_entries(vec![entry])
    }

    /// Proposes several normal entries in one message, replicated as one batch.
    pub fn propose_batch(&mut self, batch: Vec<(Bytes, Bytes)>) -> Result<()> {
        let entries = batch
            .into_iter()
            .map(|(context, data)| Entry { data, context, ..Entry::default() })
            .collect();
        self.propose_entries(entries)
    }

    fn propose_entries(&mut self, entries: Vec<Entry>) -> Result<()> {
        let m = Message {
            msg_type: MessageType::Propose,
            from: self.raft.id,
            entries,
            ..Message::default()
        };
        self.raft.step(m)
    }

    /// Proposes a configuration change. Only one may be pending at a time: a second one, or
    /// one invalid for the joint state, is replaced by an empty entry in the log.
    pub fn propose_conf_change(
        &mut self,
        context: impl Into<Bytes>,
        cc: &impl ConfChangeI,
    ) -> Result<()> {
        let (entry_type, data) = cc.to_entry();
        let entry =
            Entry { entry_type, data: data.into(), context: context.into(), ..Entry::default() };
        self.propose_entries(vec![entry])
    }

    /// Applies a committed configuration change and returns the new configuration, which the
    /// application should persist with its state. Every node refuses an invalid change the
    /// same way (a typed `ConfChange` error), leaving the configuration unchanged.
    pub fn apply_conf_change(&mut self, cc: &impl ConfChangeI) -> Result<ConfState> {
        self.raft.apply_conf_change(&cc.as_v2())
    }

    /// Steps a message received from a peer. Malformed messages are refused with a typed
    /// error and change nothing.
    pub fn step(&mut self, m: Message) -> Result<()> {
        if m.msg_type.is_local() {
            return Err(Error::StepLocalMsg);
        }
        if let Err(reason) = check_peer_message(&m) {
            return Err(Error::MalformedMessage { reason });
        }
        if m.msg_type.is_response() && !self.raft.prs.progress.contains_key(&m.from) {
            return Err(Error::StepPeerNotFound { id: m.from });
        }
        self.raft.step(m)
    }

    /// Asks for leadership to move to `to` (Raft thesis §3.10). On the leader it starts the
    /// transfer; a follower forwards it to the leader. Refused for a target that is not a
    /// voter, and for the leader itself unless a transfer is in progress, which it cancels.
    pub fn transfer_leader(&mut self, to: u64) -> Result<()> {
        if !self.raft.prs.conf.voters.contains(to) {
            return Err(TransferLeaderError::NotVoter { to }.into());
        }
        // To self on the leader is only meaningful as "transfer back": it cancels a transfer
        // in progress.
        let leading = self.raft.state == StateType::Leader;
        if to == self.raft.id && leading && self.raft.lead_transferee == INVALID_ID {
            return Err(TransferLeaderError::AlreadyLeader { to }.into());
        }
        let m = Message { msg_type: MessageType::TransferLeader, from: to, ..Message::default() };
        self.raft.step(m)
    }

    /// Requests a linearizable read; `ctx` identifies it in the `ReadState` that answers it.
    /// Batch concurrent reads into one call: a heartbeat round is sent per call.
    pub fn read_index(&mut self, ctx: impl Into<Bytes>) -> Result<()> {
        let m = Message {
            msg_type: MessageType::ReadIndex,
            entries: vec![Entry { data: ctx.into(), ..Entry::default() }],
            ..Message::default()
        };
        self.raft.step(m)
    }

    /// Tells the leader that the last message to `id` could not be sent.
    pub fn report_unreachable(&mut self, id: u64) {
        let m = Message { msg_type: MessageType::Unreachable, from: id, ..Message::default() };
        // Local messages to a leader only touch the sender's progress: they cannot fail.
        let _ = self.raft.step(m);
    }

    /// Tells the leader whether the snapshot sent to `id` arrived.
    pub fn report_snapshot(&mut self, id: u64, status: SnapshotStatus) {
        let m = Message {
            msg_type: MessageType::SnapshotStatus,
            from: id,
            reject: status == SnapshotStatus::Failure,
            ..Message::default()
        };
        let _ = self.raft.step(m);
    }

    /// True when there is anything to persist, send, apply or read.
    pub fn has_ready(&self) -> bool {
        let raft = &self.raft;
        raft.soft_state() != self.prev_soft_state
            || (!raft.hard_state().is_empty() && raft.hard_state() != self.prev_hard_state)
            || raft.raft_log.has_pending_snapshot()
            || !raft.msgs.is_empty()
            || !raft.raft_log.unstable_entries().is_empty()
            || raft.raft_log.has_next_entries()
            || !raft.read_states.is_empty()
    }

    /// Takes what is ready; see [`Ready`] for the contract. Call [`RawNode::advance`] after
    /// handling it, before the next `ready`.
    pub fn ready(&mut self) -> Ready {
        let raft = &mut self.raft;
        let soft_state = raft.soft_state();
        let hard_state = raft.hard_state();
        let entries = raft.raft_log.unstable_entries().to_vec();
        let term_or_vote_changed = hard_state.term != self.prev_hard_state.term
            || hard_state.vote != self.prev_hard_state.vote;
        let must_sync = !entries.is_empty() || term_or_vote_changed;
        let messages_before_persist = raft.state == StateType::Leader && !term_or_vote_changed;
        debug_assert!(
            self.applying <= raft.raft_log.applied,
            "ready before what light_ready handed out was applied (advance_apply_to)"
        );
        self.applying = raft.raft_log.applied;
        let rd = Ready {
            soft_state: (soft_state != self.prev_soft_state).then_some(soft_state),
            hard_state: (!hard_state.is_empty() && hard_state != self.prev_hard_state)
                .then_some(hard_state),
            read_states: std::mem::take(&mut raft.read_states),
            entries,
            snapshot: raft.raft_log.unstable.snapshot.clone(),
            committed_entries: raft.raft_log.next_entries(),
            messages: std::mem::take(&mut raft.msgs),
            must_sync,
            messages_before_persist,
        };
        self.prev_soft_state = soft_state;
        if let Some(e) = rd.committed_entries.last() {
            self.applying = self.applying.max(e.index);
        }
        if let Some(snapshot) = &rd.snapshot {
            self.applying = self.applying.max(snapshot.metadata.index);
        }
        rd
    }

    /// Between [`RawNode::ready`] and [`RawNode::advance`], while that Ready is persisted:
    /// takes what need not wait for it (see [`LightReady`]). Committed entries come only up to
    /// what this node has durably (never one of the Ready being persisted), and never while a
    /// received snapshot waits to be installed.
    pub fn light_ready(&mut self) -> LightReady {
        let raft = &mut self.raft;
        let durable_committed = raft.raft_log.committed.min(raft.raft_log.persisted_index());
        let committed_entries =
            if durable_committed > self.applying && !raft.raft_log.has_pending_snapshot() {
                let lo = (self.applying + 1).max(raft.raft_log.first_index());
                let max_size = raft.raft_log.max_next_ents_size;
                match raft.raft_log.slice(lo, durable_committed + 1, max_size) {
                    Ok(entries) => entries,
                    Err(e) => panic!("committed entries [{lo}, {durable_committed}]: {e}"),
                }
            } else {
                Vec::new()
            };
        if let Some(e) = committed_entries.last() {
            self.applying = e.index;
            raft.reduce_uncommitted_size(&committed_entries);
        }
        let hard_state = raft.hard_state();
        let term_or_vote_durable = hard_state.term == self.prev_hard_state.term
            && hard_state.vote == self.prev_hard_state.vote;
        let messages = if raft.state == StateType::Leader && term_or_vote_durable {
            std::mem::take(&mut raft.msgs)
        } else {
            Vec::new()
        };
        LightReady {
            committed_entries,
            messages,
            read_states: std::mem::take(&mut raft.read_states),
        }
    }

    /// The application applied the entries a [`LightReady`] handed out, up to `index`.
    pub fn advance_apply_to(&mut self, index: u64) {
        assert!(index <= self.applying, "applied {index}, beyond what was handed out");
        let raft = &mut self.raft;
        let old_applied = raft.raft_log.applied;
        if index > old_applied {
            raft.raft_log.applied_to(index);
            raft.on_applied(old_applied, index);
        }
    }

    /// The application handled `rd`: persisted entries become stable (and count toward a
    /// commit on a leader), applied entries move the applied index.
    pub fn advance(&mut self, rd: Ready) {
        if let Some(hs) = rd.hard_state {
            self.prev_hard_state = hs;
        }
        let raft = &mut self.raft;
        raft.reduce_uncommitted_size(&rd.committed_entries);
        let applied = match (rd.committed_entries.last(), &rd.snapshot) {
            (Some(e), _) => e.index,
            (None, Some(s)) => s.metadata.index,
            (None, None) => 0,
        };
        if let Some(s) = &rd.snapshot {
            raft.raft_log.stable_snap_to(s.metadata.index);
        }
        if let Some(e) = rd.entries.last() {
            raft.on_persist_entries(e.index, e.term);
        }
        // (Already past it when a LightReady's entries were applied meanwhile.)
        let old_applied = raft.raft_log.applied;
        if applied > old_applied {
            raft.raft_log.applied_to(applied);
            raft.on_applied(old_applied, applied);
        }
        self.applying = self.applying.max(raft.raft_log.applied);
    }

    /// The node's status; on the leader it includes every member's progress.
    pub fn status(&self) -> Status {
        let raft = &self.raft;
        let progress = if raft.state == StateType::Leader {
            raft.prs.progress.iter().map(|(&id, pr)| (id, ProgressStatus::from(pr))).collect()
        } else {
            BTreeMap::new()
        };
        Status {
            id: raft.id,
            hard_state: raft.hard_state(),
            soft_state: raft.soft_state(),
            applied: raft.raft_log.applied,
            conf_state: raft.prs.conf_state(),
            progress,
            lead_transferee: raft.lead_transferee,
        }
    }

    /// The storage, for the application to write what a Ready asks.
    pub fn store(&self) -> &T {
        &self.raft.raft_log.store
    }

    /// The storage, mutably.
    pub fn store_mut(&mut self) -> &mut T {
        &mut self.raft.raft_log.store
    }
}

/// The structural checks on a message from a peer, so that no bytes off a socket can break
/// an invariant of the core.
fn check_peer_message(m: &Message) -> std::result::Result<(), &'static str> {
    if m.from == INVALID_ID {
        return Err("a peer message without a sender");
    }
    // Proposals and reads travel without a term (they are forwarded as if local); every other
    // peer message carries its sender's term.
    let forwarded = matches!(m.msg_type, MessageType::Propose | MessageType::ReadIndex);
    if forwarded && m.term != 0 {
        return Err("a forwarded request with a term");
    }
    if !forwarded && m.term == 0 {
        return Err("a peer message without a term");
    }
    if m.msg_type == MessageType::ReadIndex && m.entries.len() != 1 {
        return Err("a read index without exactly one context");
    }
    if m.msg_type == MessageType::Append {
        let contiguous = m
            .entries
            .iter()
            .enumerate()
            .all(|(i, e)| Some(e.index) == m.index.checked_add(1 + i as u64));
        if !contiguous {
            return Err("append entries do not follow the index contiguously");
        }
        if m.entries.iter().any(|e| e.term > m.term) {
            return Err("append entries from a term after the sender's");
        }
    }
    if m.msg_type == MessageType::Snapshot {
        let Some(snapshot) = &m.snapshot else {
            return Err("a snapshot message without a snapshot");
        };
        if snapshot.metadata.conf_state.validate().is_err() {
            return Err("a snapshot whose configuration is invalid");
        }
    }
    Ok(())
}
