//! The Raft state machine: the seed's `raft` struct, its roles, and its step functions
//! (etcd `raft.go`).

use std::fmt;

use log::{debug, info, warn};

use crate::confchange::{self, Changer};
use crate::config::{Config, ReadOnlyOption};
use crate::errors::{ConfigError, Error, Result, StorageError};
use crate::message::{
    ConfChange, ConfChangeV2, ConfState, Entry, EntryType, HardState, Message, MessageType,
    Snapshot,
};
use crate::quorum::VoteResult;
use crate::raft_log::RaftLog;
use crate::read_only::{ReadOnly, ReadState};
use crate::rng::Rng;
use crate::storage::Storage;
use crate::tracker::{ProgressMap, ProgressState, ProgressTracker, TrackerConfig};

/// The node id meaning "nobody": no vote, no leader.
pub const INVALID_ID: u64 = 0;

/// The context of a vote request made on a leader's `TimeoutNow`: it may disturb a leader
/// that other nodes still follow, because that leader asked for it.
pub const CAMPAIGN_TRANSFER: &[u8] = b"CampaignTransfer";

/// A node's role (etcd `StateType`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StateType {
    /// Follows a leader, or waits for one.
    #[default]
    Follower,
    /// Asks whether it could win before bumping the term (pre-vote).
    PreCandidate,
    /// Campaigns for the current term.
    Candidate,
    /// Leads the current term.
    Leader,
}

impl fmt::Display for StateType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            StateType::Follower => "follower",
            StateType::PreCandidate => "pre-candidate",
            StateType::Candidate => "candidate",
            StateType::Leader => "leader",
        };
        f.write_str(name)
    }
}

/// The volatile state the application may want to observe: who leads, and this node's role.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SoftState {
    /// The leader's id, or 0.
    pub lead: u64,
    /// This node's role.
    pub raft_state: StateType,
}

/// Why an election starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CampaignType {
    /// A pre-vote round that does not bump the term.
    PreElection,
    /// A normal election.
    Election,
    /// An election on the leader's `TimeoutNow`, which skips pre-vote and leader leases.
    Transfer,
}

/// One Raft node's state machine, pure and driven: it reads its storage, and everything it
/// wants done (messages, entries to persist) is left in its fields for [`crate::RawNode`] to
/// hand out as a `Ready`.
pub struct Raft<T: Storage> {
    /// This node's id.
    pub id: u64,
    /// The current term.
    pub term: u64,
    /// Whom this node voted for in `term`, or 0.
    pub vote: u64,
    /// Reads confirmed and waiting for the application.
    pub read_states: Vec<ReadState>,
    /// The log.
    pub raft_log: RaftLog<T>,
    /// Bytes of entries per append message (`max_size_per_msg`).
    pub max_msg_size: u64,
    /// Bytes of uncommitted payload the leader accepts (`u64::MAX` for no limit).
    pub max_uncommitted_size: u64,
    /// Configuration, progress and votes.
    pub prs: ProgressTracker,
    /// This node's role.
    pub state: StateType,
    /// True while this node is a learner.
    pub is_learner: bool,
    /// Messages waiting to be sent.
    pub msgs: Vec<Message>,
    /// The leader's id, or 0.
    pub lead: u64,
    /// The target of a leadership transfer in progress, or 0 (Raft thesis §3.10).
    pub lead_transferee: u64,
    /// The index of the latest configuration change; no new change is accepted while it is
    /// above the applied index.
    pub pending_conf_index: u64,
    /// Bytes of payload appended by this leader and not yet applied.
    pub uncommitted_size: u64,
    /// Reads waiting for leadership confirmation.
    pub read_only: ReadOnly,
    /// Ticks since the last election timeout (leader, candidate) or since a valid message from
    /// the leader (follower).
    pub election_elapsed: usize,
    /// Ticks since the last heartbeat; only the leader keeps it.
    pub heartbeat_elapsed: usize,
    /// See [`Config::check_quorum`].
    pub check_quorum: bool,
    /// See [`Config::pre_vote`].
    pub pre_vote: bool,
    /// Ticks between heartbeats.
    pub heartbeat_timeout: usize,
    /// The configured election timeout in ticks.
    pub election_timeout: usize,
    /// The election timeout in force: drawn from
    /// `[election_timeout, 2 * election_timeout - 1]` on every reset.
    pub randomized_election_timeout: usize,
    /// See [`Config::disable_proposal_forwarding`].
    pub disable_proposal_forwarding: bool,
    /// Reads received before this leader committed an entry of its term (etcd#7331).
    pending_read_index_messages: Vec<Message>,
    rng: Rng,
}

impl<T: Storage> Raft<T> {
    /// A node starting from `store`, as a follower.
    pub fn new(config: &Config, store: T) -> Result<Raft<T>> {
        config.validate()?;
        let raft_state = store.initial_state()?;
        let raft_log = RaftLog::new(store, config.max_committed_size_per_ready);
        let mut conf_state = raft_state.conf_state;
        if !config.peers.is_empty() || !config.learners.is_empty() {
            let existing = !conf_state.voters.is_empty() || !conf_state.learners.is_empty();
            if existing {
                return Err(ConfigError::BootstrapOverExistingState.into());
            }
            conf_state.voters = config.peers.clone();
            conf_state.learners = config.learners.clone();
        }
        let max_uncommitted_size = match config.max_uncommitted_entries_size {
            0 => u64::MAX,
            n => n,
        };
        let mut raft = Raft {
            id: config.id,
            term: 0,
            vote: INVALID_ID,
            read_states: Vec::new(),
            raft_log,
            max_msg_size: config.max_size_per_msg,
            max_uncommitted_size,
            prs: ProgressTracker::new(config.max_inflight_msgs),
            state: StateType::Follower,
            is_learner: false,
            msgs: Vec::new(),
            lead: INVALID_ID,
            lead_transferee: INVALID_ID,
            pending_conf_index: 0,
            uncommitted_size: 0,
            read_only: ReadOnly::new(config.read_only_option),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            check_quorum: config.check_quorum,
            pre_vote: config.pre_vote,
            heartbeat_timeout: config.heartbeat_tick,
            election_timeout: config.election_tick,
            randomized_election_timeout: config.election_tick,
            disable_proposal_forwarding: config.disable_proposal_forwarding,
            pending_read_index_messages: Vec::new(),
            // Distinct, reproducible sequences per node; `seed_election_rng` overrides.
            rng: Rng::new(config.id.wrapping_mul(0x2545_f491_4f6c_dd1d)),
        };
        let (cfg, prs) = confchange::restore(&raft.prs, raft.raft_log.last_index(), &conf_state)?;
        raft.switch_to_config(cfg, prs);
        if !raft_state.hard_state.is_empty() {
            raft.load_state(&raft_state.hard_state)?;
        }
        if config.applied > 0 {
            if config.applied > raft.raft_log.committed {
                return Err(ConfigError::AppliedBeyondCommit {
                    applied: config.applied,
                    committed: raft.raft_log.committed,
                }
                .into());
            }
            raft.raft_log.applied_to(config.applied);
        }
        let term = raft.term;
        raft.become_follower(term, INVALID_ID);
        info!(
            "newRaft {:x} [peers: {}, term: {}, commit: {}, applied: {}, last_index: {}, \
             last_term: {}]",
            raft.id,
            raft.prs.conf,
            raft.term,
            raft.raft_log.committed,
            raft.raft_log.applied,
            raft.raft_log.last_index(),
            raft.raft_log.last_term()
        );
        Ok(raft)
    }

    /// Reseeds the generator of randomized election timeouts (for simulation, or to decorrelate
    /// restarts), and redraws the current timeout.
    pub fn seed_election_rng(&mut self, seed: u64) {
        self.rng = Rng::new(seed);
        self.reset_randomized_election_timeout();
    }

    fn load_state(&mut self, hs: &HardState) -> Result<()> {
        let last = self.raft_log.last_index();
        if hs.commit < self.raft_log.committed || hs.commit > last {
            return Err(Error::Store(StorageError::Other(format!(
                "{:x} state.commit {} is out of range [{}, {}]",
                self.id, hs.commit, self.raft_log.committed, last
            ))));
        }
        self.raft_log.committed = hs.commit;
        self.term = hs.term;
        self.vote = hs.vote;
        Ok(())
    }

    /// The volatile state.
    pub fn soft_state(&self) -> SoftState {
        SoftState {
            lead: self.lead,
            raft_state: self.state,
        }
    }

    /// The state to persist.
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.raft_log.committed,
        }
    }

    /// Queues a message, stamping sender and term (etcd `send`).
    fn send(&mut self, mut m: Message) {
        if m.from == INVALID_ID {
            m.from = self.id;
        }
        match m.msg_type {
            MessageType::RequestVote
            | MessageType::RequestVoteResponse
            | MessageType::RequestPreVote
            | MessageType::RequestPreVoteResponse => {
                // Vote messages carry the term they are about, which is not always ours.
                assert!(
                    m.term != 0,
                    "term should be set when sending {:?}",
                    m.msg_type
                );
            }
            _ => {
                assert!(
                    m.term == 0,
                    "term should not be set when sending {:?}",
                    m.msg_type
                );
                // Proposals and read requests are forwarded as if local: no term.
                if m.msg_type != MessageType::Propose && m.msg_type != MessageType::ReadIndex {
                    m.term = self.term;
                }
            }
        }
        self.msgs.push(m);
    }

    /// Sends an append (or a snapshot when the entries are compacted) to `to`.
    pub fn send_append(&mut self, to: u64) {
        self.maybe_send_append(to, true);
    }

    /// Sends an append to `to` if its progress allows; an empty append only when
    /// `send_if_empty`. True when a message was sent.
    fn maybe_send_append(&mut self, to: u64, send_if_empty: bool) -> bool {
        let Some(pr) = self.prs.progress.get(&to) else {
            return false;
        };
        if pr.is_paused() {
            return false;
        }
        let next_idx = pr.next_idx;
        let prev_term = self.raft_log.term(next_idx - 1);
        let entries = self.raft_log.entries(next_idx, self.max_msg_size);
        if entries.as_ref().is_ok_and(|e| e.is_empty()) && !send_if_empty {
            return false;
        }
        match (prev_term, entries) {
            (Ok(log_term), Ok(entries)) => {
                let last_sent = entries.last().map(|e| e.index);
                let pr = self
                    .prs
                    .progress
                    .get_mut(&to)
                    .expect("progress checked above");
                if let Some(last) = last_sent {
                    match pr.state {
                        ProgressState::Replicate => {
                            pr.optimistic_update(last);
                            pr.ins.add(last);
                        }
                        ProgressState::Probe => pr.probe_sent = true,
                        ProgressState::Snapshot => {
                            panic!("{:x} sending append to {to:x} in snapshot state", self.id)
                        }
                    }
                }
                let m = Message {
                    msg_type: MessageType::Append,
                    to,
                    index: next_idx - 1,
                    log_term,
                    entries,
                    commit: self.raft_log.committed,
                    ..Message::default()
                };
                self.send(m);
                true
            }
            _ => self.send_snapshot(to),
        }
    }

    /// The entries `to` needs are compacted: send the snapshot instead.
    fn send_snapshot(&mut self, to: u64) -> bool {
        let pr = &self.prs.progress[&to];
        if !pr.recent_active {
            debug!(
                "{:x} ignored sending snapshot to {to:x}: not recently active",
                self.id
            );
            return false;
        }
        let snapshot = match self.raft_log.snapshot(pr.next_idx - 1) {
            Ok(snapshot) => snapshot,
            Err(StorageError::SnapshotTemporarilyUnavailable) => {
                debug!(
                    "{:x} failed to send snapshot to {to:x}: temporarily unavailable",
                    self.id
                );
                return false;
            }
            Err(e) => panic!(
                "{:x} needs a snapshot for {to:x} but storage failed: {e}",
                self.id
            ),
        };
        assert!(
            !snapshot.is_empty(),
            "{:x} needs a non-empty snapshot for {to:x}",
            self.id
        );
        let (index, term) = (snapshot.metadata.index, snapshot.metadata.term);
        let pr = self
            .prs
            .progress
            .get_mut(&to)
            .expect("progress checked above");
        debug!(
            "{:x} [first_index: {}, commit: {}] sent snapshot [index: {index}, term: {term}] to \
             {to:x} [matched: {}, next: {}]",
            self.id,
            self.raft_log.first_index(),
            self.raft_log.committed,
            pr.matched,
            pr.next_idx
        );
        pr.become_snapshot(index);
        self.send(Message {
            msg_type: MessageType::Snapshot,
            to,
            snapshot: Some(snapshot),
            ..Message::default()
        });
        true
    }

    fn send_heartbeat(&mut self, to: u64, ctx: Vec<u8>) {
        // Never advertise a commit index the follower may not have: it could not commit to it.
        let commit = self.prs.progress[&to].matched.min(self.raft_log.committed);
        self.send(Message {
            msg_type: MessageType::Heartbeat,
            to,
            commit,
            context: ctx,
            ..Message::default()
        });
    }

    fn peer_ids(&self) -> Vec<u64> {
        self.prs
            .progress
            .keys()
            .copied()
            .filter(|&id| id != self.id)
            .collect()
    }

    /// Sends appends to every follower and learner.
    pub fn bcast_append(&mut self) {
        for id in self.peer_ids() {
            self.send_append(id);
        }
    }

    /// Sends heartbeats carrying the newest waiting read's context.
    pub fn bcast_heartbeat(&mut self) {
        let ctx = self
            .read_only
            .last_pending_request_ctx()
            .map(<[u8]>::to_vec);
        self.bcast_heartbeat_with_ctx(ctx.unwrap_or_default());
    }

    fn bcast_heartbeat_with_ctx(&mut self, ctx: Vec<u8>) {
        for id in self.peer_ids() {
            self.send_heartbeat(id, ctx.clone());
        }
    }

    /// Commits what a quorum has replicated; true when the commit index moved.
    pub fn maybe_commit(&mut self) -> bool {
        let committed = self.prs.committed();
        self.raft_log.maybe_commit(committed, self.term)
    }

    /// Resets the volatile state for `term` (the seed's `reset`).
    pub fn reset(&mut self, term: u64) {
        if self.term != term {
            self.term = term;
            self.vote = INVALID_ID;
        }
        self.lead = INVALID_ID;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_randomized_election_timeout();
        self.abort_leader_transfer();
        self.prs.reset_votes();
        let last_index = self.raft_log.last_index();
        let self_id = self.id;
        for (&id, pr) in self.prs.progress.iter_mut() {
            let is_learner = pr.is_learner;
            *pr = crate::tracker::Progress::new(last_index + 1, self.prs.max_inflight);
            pr.is_learner = is_learner;
            if id == self_id {
                pr.matched = last_index;
            }
        }
        self.pending_conf_index = 0;
        self.uncommitted_size = 0;
        self.read_only = ReadOnly::new(self.read_only.option);
        self.pending_read_index_messages.clear();
    }

    /// Appends entries proposed to this leader; false when the uncommitted-size limit refuses
    /// them.
    fn append_entry(&mut self, entries: &mut [Entry]) -> bool {
        let last_index = self.raft_log.last_index();
        for (i, e) in entries.iter_mut().enumerate() {
            e.term = self.term;
            e.index = last_index + 1 + i as u64;
        }
        if !self.increase_uncommitted_size(entries) {
            debug!(
                "{:x} appending new entries to log would exceed uncommitted entry size limit; \
                 dropping proposal",
                self.id
            );
            return false;
        }
        let last_index = self.raft_log.append(entries);
        self.prs
            .progress
            .get_mut(&self.id)
            .expect("a leader appending entries tracks itself")
            .maybe_update(last_index);
        // Whatever maybe_commit says, the caller broadcasts.
        self.maybe_commit();
        true
    }

    /// Counts proposed payload against `max_uncommitted_size`. An empty payload always fits,
    /// and so does any proposal when nothing is uncommitted, so one huge entry still progresses.
    fn increase_uncommitted_size(&mut self, entries: &[Entry]) -> bool {
        let size: u64 = entries.iter().map(Entry::payload_size_bytes).sum();
        if self.uncommitted_size > 0
            && size > 0
            && self.uncommitted_size.saturating_add(size) > self.max_uncommitted_size
        {
            return false;
        }
        self.uncommitted_size += size;
        true
    }

    /// Releases the payload of applied entries from the uncommitted total.
    pub fn reduce_uncommitted_size(&mut self, entries: &[Entry]) {
        if self.uncommitted_size == 0 {
            // Fast path for followers, which never track it.
            return;
        }
        let size: u64 = entries.iter().map(Entry::payload_size_bytes).sum();
        self.uncommitted_size = self.uncommitted_size.saturating_sub(size);
    }

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        match self.state {
            StateType::Leader => self.tick_heartbeat(),
            _ => self.tick_election(),
        }
    }

    /// The follower's and candidate's tick: campaign after the randomized election timeout.
    pub fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.promotable() && self.past_election_timeout() {
            self.election_elapsed = 0;
            let m = Message {
                from: self.id,
                ..Message::new(MessageType::Hup)
            };
            if let Err(e) = self.step(m) {
                debug!("{:x} error occurred during election: {e}", self.id);
            }
        }
    }

    /// The leader's tick: heartbeats, check-quorum, and the leader-transfer timeout.
    pub fn tick_heartbeat(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.election_timeout {
            self.election_elapsed = 0;
            if self.check_quorum {
                let m = Message {
                    from: self.id,
                    ..Message::new(MessageType::CheckQuorum)
                };
                if let Err(e) = self.step(m) {
                    debug!("{:x} error occurred during checking quorum: {e}", self.id);
                }
            }
            // A transfer that did not finish within an election timeout is abandoned.
            if self.state == StateType::Leader && self.lead_transferee != INVALID_ID {
                info!(
                    "{:x} aborts leader transfer to {:x}: timed out",
                    self.id, self.lead_transferee
                );
                self.abort_leader_transfer();
            }
        }
        if self.state != StateType::Leader {
            return;
        }
        if self.heartbeat_elapsed >= self.heartbeat_timeout {
            self.heartbeat_elapsed = 0;
            let m = Message {
                from: self.id,
                ..Message::new(MessageType::Beat)
            };
            if let Err(e) = self.step(m) {
                debug!("{:x} error occurred during heartbeat: {e}", self.id);
            }
        }
    }

    /// Becomes a follower of `lead` (or of nobody) in `term`.
    pub fn become_follower(&mut self, term: u64, lead: u64) {
        self.reset(term);
        self.lead = lead;
        self.state = StateType::Follower;
        info!("{:x} became follower at term {}", self.id, self.term);
    }

    /// Becomes a candidate: bumps the term and votes for itself (Raft §5.2).
    pub fn become_candidate(&mut self) {
        assert_ne!(
            self.state,
            StateType::Leader,
            "invalid transition [leader -> candidate]"
        );
        let term = self.term + 1;
        self.reset(term);
        self.vote = self.id;
        self.state = StateType::Candidate;
        info!("{:x} became candidate at term {}", self.id, self.term);
    }

    /// Becomes a pre-candidate: asks for pre-votes without changing term or vote, so a node
    /// cut off from the cluster cannot inflate the term (Raft thesis §9.6).
    pub fn become_pre_candidate(&mut self) {
        assert_ne!(
            self.state,
            StateType::Leader,
            "invalid transition [leader -> pre-candidate]"
        );
        self.prs.reset_votes();
        self.lead = INVALID_ID;
        self.state = StateType::PreCandidate;
        info!("{:x} became pre-candidate at term {}", self.id, self.term);
    }

    /// Becomes leader: tracks every follower afresh and appends an empty entry of its term,
    /// whose commit also commits every entry before it (Raft §5.4.2, thesis §6.4).
    pub fn become_leader(&mut self) {
        assert_ne!(
            self.state,
            StateType::Follower,
            "invalid transition [follower -> leader]"
        );
        let term = self.term;
        self.reset(term);
        self.lead = self.id;
        self.state = StateType::Leader;
        let last_index = self.raft_log.last_index();
        let pr = self
            .prs
            .progress
            .get_mut(&self.id)
            .expect("a new leader tracks itself");
        pr.become_replicate();
        pr.recent_active = true;
        // There may be a configuration change in the uncommitted tail. Rather than scanning the
        // log, accept no new change until everything up to here is applied.
        self.pending_conf_index = last_index;
        let mut noop = [Entry::default()];
        assert!(self.append_entry(&mut noop), "empty entry was dropped");
        info!("{:x} became leader at term {}", self.id, self.term);
    }

    fn promotable_progress(&self) -> bool {
        self.prs
            .progress
            .get(&self.id)
            .is_some_and(|pr| !pr.is_learner)
    }

    /// True when this node may campaign: it is a voter and has no snapshot to persist.
    pub fn promotable(&self) -> bool {
        self.promotable_progress() && !self.raft_log.has_pending_snapshot()
    }

    /// True once `election_elapsed` reached the randomized timeout.
    pub fn past_election_timeout(&self) -> bool {
        self.election_elapsed >= self.randomized_election_timeout
    }

    /// Draws a new timeout in `[election_timeout, 2 * election_timeout - 1]`.
    pub fn reset_randomized_election_timeout(&mut self) {
        let prev = self.randomized_election_timeout;
        let timeout = self
            .rng
            .gen_range(self.election_timeout, 2 * self.election_timeout);
        debug!("{:x} reset election timeout {prev} -> {timeout}", self.id);
        self.randomized_election_timeout = timeout;
    }

    fn hup(&mut self, campaign_type: CampaignType) {
        if self.state == StateType::Leader {
            debug!("{:x} ignoring Hup because already leader", self.id);
            return;
        }
        if !self.promotable() {
            warn!("{:x} is unpromotable and can not campaign", self.id);
            return;
        }
        if self.has_unapplied_conf_changes() {
            warn!(
                "{:x} cannot campaign at term {} since there are still pending configuration \
                 changes to apply",
                self.id, self.term
            );
            return;
        }
        info!(
            "{:x} is starting a new election at term {}",
            self.id, self.term
        );
        self.campaign(campaign_type);
    }

    fn has_unapplied_conf_changes(&self) -> bool {
        let log = &self.raft_log;
        if log.applied >= log.committed {
            return false;
        }
        let lo = (log.applied + 1).max(log.first_index());
        match log.slice(lo, log.committed + 1, crate::storage::NO_LIMIT) {
            Ok(entries) => entries.iter().any(|e| e.entry_type != EntryType::Normal),
            Err(e) => panic!("{:x} error scanning unapplied entries: {e}", self.id),
        }
    }

    /// Starts an election of the given type.
    pub fn campaign(&mut self, campaign_type: CampaignType) {
        let (vote_msg, term) = if campaign_type == CampaignType::PreElection {
            self.become_pre_candidate();
            // Pre-votes are asked for the term this node would campaign at.
            (MessageType::RequestPreVote, self.term + 1)
        } else {
            self.become_candidate();
            (MessageType::RequestVote, self.term)
        };
        let self_id = self.id;
        if self.poll(self_id, vote_msg.vote_response(), true) == VoteResult::Won {
            // A single-voter cluster wins on its own vote.
            if campaign_type == CampaignType::PreElection {
                self.campaign(CampaignType::Election);
            } else {
                self.become_leader();
            }
            return;
        }
        let (last_index, last_term) = (self.raft_log.last_index(), self.raft_log.last_term());
        let context = if campaign_type == CampaignType::Transfer {
            CAMPAIGN_TRANSFER.to_vec()
        } else {
            vec![]
        };
        for id in self.prs.voter_ids() {
            if id == self_id {
                continue;
            }
            info!(
                "{:x} [log_term: {last_term}, index: {last_index}] sent {vote_msg:?} request to \
                 {id:x} at term {}",
                self.id, self.term
            );
            self.send(Message {
                msg_type: vote_msg,
                to: id,
                term,
                index: last_index,
                log_term: last_term,
                context: context.clone(),
                ..Message::default()
            });
        }
    }

    fn poll(&mut self, id: u64, msg_type: MessageType, granted: bool) -> VoteResult {
        if granted {
            info!(
                "{:x} received {msg_type:?} from {id:x} at term {}",
                self.id, self.term
            );
        } else {
            info!(
                "{:x} received {msg_type:?} rejection from {id:x} at term {}",
                self.id, self.term
            );
        }
        self.prs.record_vote(id, granted);
        let (granted, rejected, result) = self.prs.tally_votes();
        info!(
            "{:x} has received {granted} {msg_type:?} votes and {rejected} vote rejections",
            self.id
        );
        result
    }

    /// Steps a message through the state machine: term checks common to every role first
    /// (Raft §5.1), then the role's own step function.
    pub fn step(&mut self, m: Message) -> Result<()> {
        if m.term == 0 {
            // Local message, or a proposal or read forwarded without a term.
        } else if m.term > self.term {
            if matches!(
                m.msg_type,
                MessageType::RequestVote | MessageType::RequestPreVote
            ) {
                let force = m.context == CAMPAIGN_TRANSFER;
                let in_lease = self.check_quorum
                    && self.lead != INVALID_ID
                    && self.election_elapsed < self.election_timeout;
                if !force && in_lease {
                    // This node heard from a leader within the election timeout: a leader lease
                    // (Raft thesis §4.2.3) keeps a disruptive node from deposing it.
                    info!(
                        "{:x} [log_term: {}, index: {}, vote: {:x}] ignored {:?} from {:x} \
                         [log_term: {}, index: {}] at term {}: lease is not expired \
                         (remaining ticks: {})",
                        self.id,
                        self.raft_log.last_term(),
                        self.raft_log.last_index(),
                        self.vote,
                        m.msg_type,
                        m.from,
                        m.log_term,
                        m.index,
                        self.term,
                        self.election_timeout - self.election_elapsed
                    );
                    return Ok(());
                }
            }
            match m.msg_type {
                // A pre-vote never changes our term.
                MessageType::RequestPreVote => {}
                // A granted pre-vote carries the term we will campaign at; keep ours until
                // the pre-election is won.
                MessageType::RequestPreVoteResponse if !m.reject => {}
                _ => {
                    info!(
                        "{:x} [term: {}] received a {:?} message with higher term from {:x} \
                         [term: {}]",
                        self.id, self.term, m.msg_type, m.from, m.term
                    );
                    let from_leader = matches!(
                        m.msg_type,
                        MessageType::Append | MessageType::Heartbeat | MessageType::Snapshot
                    );
                    let lead = if from_leader { m.from } else { INVALID_ID };
                    self.become_follower(m.term, lead);
                }
            }
        } else if m.term < self.term {
            self.step_stale_term(&m);
            return Ok(());
        }

        match m.msg_type {
            MessageType::Hup => {
                let campaign_type = if self.pre_vote {
                    CampaignType::PreElection
                } else {
                    CampaignType::Election
                };
                self.hup(campaign_type);
                Ok(())
            }
            MessageType::RequestVote | MessageType::RequestPreVote => {
                self.handle_vote_request(&m);
                Ok(())
            }
            _ => match self.state {
                StateType::Leader => self.step_leader(m),
                StateType::Candidate | StateType::PreCandidate => self.step_candidate(m),
                StateType::Follower => self.step_follower(m),
            },
        }
    }

    /// A message from an older term is ignored, with two answers that keep the cluster live.
    fn step_stale_term(&mut self, m: &Message) {
        let from_old_leader = matches!(m.msg_type, MessageType::Heartbeat | MessageType::Append);
        if (self.check_quorum || self.pre_vote) && from_old_leader {
            // A node partitioned away with a higher term would otherwise never rejoin when
            // check-quorum or pre-vote keep the others from adopting its term: this response
            // tells the stale leader about the new term, so it steps down.
            self.send(Message {
                msg_type: MessageType::AppendResponse,
                to: m.from,
                ..Message::default()
            });
        } else if m.msg_type == MessageType::RequestPreVote {
            // Rejecting with our term lets the pre-candidate learn it and step down.
            info!(
                "{:x} [term: {}] rejected {:?} from {:x} [term: {}]",
                self.id, self.term, m.msg_type, m.from, m.term
            );
            self.send(Message {
                msg_type: MessageType::RequestPreVoteResponse,
                to: m.from,
                term: self.term,
                reject: true,
                ..Message::default()
            });
        } else {
            info!(
                "{:x} [term: {}] ignored a {:?} message with lower term from {:x} [term: {}]",
                self.id, self.term, m.msg_type, m.from, m.term
            );
        }
    }

    /// Grants a vote at most once per term, and only to a candidate whose log is at least as up
    /// to date (Raft §5.2, §5.4.1).
    fn handle_vote_request(&mut self, m: &Message) {
        let can_vote = self.vote == m.from
            || (self.vote == INVALID_ID && self.lead == INVALID_ID)
            || (m.msg_type == MessageType::RequestPreVote && m.term > self.term);
        let up_to_date = self.raft_log.is_up_to_date(m.index, m.log_term);
        let response = m.msg_type.vote_response();
        if can_vote && up_to_date {
            info!(
                "{:x} [log_term: {}, index: {}, vote: {:x}] cast {:?} for {:x} [log_term: {}, \
                 index: {}] at term {}",
                self.id,
                self.raft_log.last_term(),
                self.raft_log.last_index(),
                self.vote,
                m.msg_type,
                m.from,
                m.log_term,
                m.index,
                self.term
            );
            // The response carries the candidate's term: for a pre-vote that is a future term,
            // which the pre-candidate recognises as its own.
            self.send(Message {
                msg_type: response,
                to: m.from,
                term: m.term,
                ..Message::default()
            });
            if m.msg_type == MessageType::RequestVote {
                self.election_elapsed = 0;
                self.vote = m.from;
            }
        } else {
            info!(
                "{:x} [log_term: {}, index: {}, vote: {:x}] rejected {:?} from {:x} [log_term: \
                 {}, index: {}] at term {}",
                self.id,
                self.raft_log.last_term(),
                self.raft_log.last_index(),
                self.vote,
                m.msg_type,
                m.from,
                m.log_term,
                m.index,
                self.term
            );
            self.send(Message {
                msg_type: response,
                to: m.from,
                term: self.term,
                reject: true,
                ..Message::default()
            });
        }
    }

    fn step_leader(&mut self, mut m: Message) -> Result<()> {
        match m.msg_type {
            MessageType::Beat => {
                self.bcast_heartbeat();
                return Ok(());
            }
            MessageType::CheckQuorum => {
                if !self.prs.quorum_active(self.id) {
                    warn!(
                        "{:x} stepped down to follower since quorum is not active",
                        self.id
                    );
                    let term = self.term;
                    self.become_follower(term, INVALID_ID);
                }
                // Everyone but us must show activity again before the next check.
                let self_id = self.id;
                for (&id, pr) in self.prs.progress.iter_mut() {
                    if id != self_id {
                        pr.recent_active = false;
                    }
                }
                return Ok(());
            }
            MessageType::Propose => {
                self.propose_as_leader(&mut m.entries)?;
                return Ok(());
            }
            MessageType::ReadIndex => {
                self.read_index_as_leader(m);
                return Ok(());
            }
            _ => {}
        }

        // Every other message is about a peer's progress.
        if !self.prs.progress.contains_key(&m.from) {
            debug!("{:x} no progress available for {:x}", self.id, m.from);
            return Ok(());
        }
        match m.msg_type {
            MessageType::AppendResponse => self.handle_append_response(&m),
            MessageType::HeartbeatResponse => self.handle_heartbeat_response(&m),
            MessageType::SnapshotStatus => self.handle_snapshot_status(&m),
            MessageType::Unreachable => {
                let pr = self.prs.progress.get_mut(&m.from).expect("checked above");
                // While pipelining, an unreachable peer most likely lost an append: probe.
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
                debug!(
                    "{:x} failed to send message to {:x}: unreachable",
                    self.id, m.from
                );
            }
            MessageType::TransferLeader => self.handle_transfer_leader(&m),
            _ => {}
        }
        Ok(())
    }

    fn propose_as_leader(&mut self, entries: &mut [Entry]) -> Result<()> {
        if entries.is_empty() {
            warn!("{:x} dropped an empty proposal", self.id);
            return Err(Error::ProposalDropped);
        }
        if !self.prs.progress.contains_key(&self.id) {
            // This leader was removed from the configuration: it takes no new proposals.
            return Err(Error::ProposalDropped);
        }
        if self.lead_transferee != INVALID_ID {
            debug!(
                "{:x} [term {}] transfer leadership to {:x} is in progress; dropping proposal",
                self.id, self.term, self.lead_transferee
            );
            return Err(Error::ProposalDropped);
        }
        for (i, e) in entries.iter_mut().enumerate() {
            let cc = match e.entry_type {
                EntryType::Normal => continue,
                EntryType::ConfChange => ConfChange::decode(&e.data).map(ConfChange::into_v2),
                EntryType::ConfChangeV2 => ConfChangeV2::decode(&e.data),
            };
            let refused = match cc {
                Err(err) => Some(format!("does not decode: {err}")),
                Ok(cc) => self.conf_change_refusal(&cc),
            };
            match refused {
                Some(reason) => {
                    // Never lose the slot silently: the proposer sees an empty entry apply.
                    info!(
                        "{:x} ignoring conf change at config {}: {reason}",
                        self.id, self.prs.conf
                    );
                    *e = Entry::default();
                }
                None => self.pending_conf_index = self.raft_log.last_index() + i as u64 + 1,
            }
        }
        if !self.append_entry(entries) {
            return Err(Error::ProposalDropped);
        }
        self.bcast_append();
        Ok(())
    }

    /// Why a proposed configuration change cannot be appended now, if it cannot.
    fn conf_change_refusal(&self, cc: &ConfChangeV2) -> Option<String> {
        let already_pending = self.pending_conf_index > self.raft_log.applied;
        let already_joint = self.prs.conf.voters.is_joint();
        let wants_leave_joint = cc.leave_joint_requested();
        if already_pending {
            Some(format!(
                "possible unapplied conf change at index {} (applied to {})",
                self.pending_conf_index, self.raft_log.applied
            ))
        } else if already_joint && !wants_leave_joint {
            Some("must transition out of joint config first".to_string())
        } else if !already_joint && wants_leave_joint {
            Some("not in joint state; refusing empty conf change".to_string())
        } else {
            None
        }
    }

    fn read_index_as_leader(&mut self, m: Message) {
        if self.prs.is_singleton() {
            let committed = self.raft_log.committed;
            self.respond_to_read_index(m, committed);
            return;
        }
        // A new leader does not know the commit index of its predecessor until it commits an
        // entry of its own term (Raft thesis §6.4; etcd#7331): hold reads until then.
        if !self.committed_entry_in_current_term() {
            self.pending_read_index_messages.push(m);
            return;
        }
        self.send_read_index_response(m);
    }

    fn committed_entry_in_current_term(&self) -> bool {
        let committed = self.raft_log.committed;
        matches!(self.raft_log.term(committed), Ok(t) if t == self.term)
    }

    fn send_read_index_response(&mut self, m: Message) {
        let committed = self.raft_log.committed;
        match self.read_only.option {
            ReadOnlyOption::Safe => {
                let ctx = m.entries[0].data.clone();
                self.read_only.add_request(committed, m);
                // The leader acknowledges its own round.
                self.read_only.recv_ack(self.id, &ctx);
                self.bcast_heartbeat_with_ctx(ctx);
            }
            ReadOnlyOption::LeaseBased => self.respond_to_read_index(m, committed),
        }
    }

    fn respond_to_read_index(&mut self, req: Message, index: u64) {
        let mut entries = req.entries;
        if req.from == INVALID_ID || req.from == self.id {
            let request_ctx = entries.pop().map(|e| e.data).unwrap_or_default();
            self.read_states.push(ReadState { index, request_ctx });
        } else {
            self.send(Message {
                msg_type: MessageType::ReadIndexResp,
                to: req.from,
                index,
                entries,
                ..Message::default()
            });
        }
    }

    fn release_pending_read_index_messages(&mut self) {
        if self.pending_read_index_messages.is_empty() {
            return;
        }
        if !self.committed_entry_in_current_term() {
            return;
        }
        for m in std::mem::take(&mut self.pending_read_index_messages) {
            self.send_read_index_response(m);
        }
    }

    fn handle_append_response(&mut self, m: &Message) {
        let last_index = self.raft_log.last_index();
        let pr = self
            .prs
            .progress
            .get_mut(&m.from)
            .expect("checked by step_leader");
        pr.recent_active = true;
        if m.reject {
            debug!(
                "{:x} received append rejection (last index {}) from {:x} for index {}",
                self.id, m.reject_hint, m.from, m.index
            );
            // The follower's hint is its last index at or below the rejected one, with that
            // entry's term; skip every entry of ours with a higher term in one step.
            let mut next_probe_idx = m.reject_hint;
            if m.log_term > 0 {
                next_probe_idx = self
                    .raft_log
                    .find_conflict_by_term(m.reject_hint, m.log_term)
                    .0;
            }
            let pr = self
                .prs
                .progress
                .get_mut(&m.from)
                .expect("checked by step_leader");
            if pr.maybe_decr_to(m.index, next_probe_idx) {
                debug!(
                    "{:x} decreased progress of {:x} to next {}",
                    self.id, m.from, pr.next_idx
                );
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
                self.send_append(m.from);
            }
            return;
        }
        let old_paused = pr.is_paused();
        if !pr.maybe_update(m.index) {
            return;
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot if pr.matched >= pr.pending_snapshot => {
                debug!(
                    "{:x} snapshot to {:x} done, resuming replication",
                    self.id, m.from
                );
                // Probe first: become_probe moves next past the snapshot.
                pr.become_probe();
                pr.become_replicate();
            }
            ProgressState::Snapshot => {}
            ProgressState::Replicate => pr.ins.free_to(m.index),
        }
        let matched = pr.matched;
        if self.maybe_commit() {
            // The commit index moved in this term: reads held for it can proceed.
            self.release_pending_read_index_messages();
            self.bcast_append();
        } else if old_paused {
            // A paused follower may be missing the latest commit index.
            self.send_append(m.from);
        }
        // Flow control may allow several (size-limited) appends now; send them all without
        // sending empty ones.
        while m.from != self.id && self.maybe_send_append(m.from, false) {}
        if m.from == self.lead_transferee && matched == last_index {
            info!(
                "{:x} sent TimeoutNow to {:x} after its log caught up",
                self.id, m.from
            );
            self.send_timeout_now(m.from);
        }
    }

    fn handle_heartbeat_response(&mut self, m: &Message) {
        let last_index = self.raft_log.last_index();
        let pr = self
            .prs
            .progress
            .get_mut(&m.from)
            .expect("checked by step_leader");
        pr.recent_active = true;
        pr.probe_sent = false;
        // A full pipeline whose acknowledgements were all lost would stall forever: free one
        // slot per heartbeat so an append gets through.
        if pr.state == ProgressState::Replicate && pr.ins.full() {
            pr.ins.free_first_one();
        }
        if pr.matched < last_index {
            self.send_append(m.from);
        }
        if self.read_only.option != ReadOnlyOption::Safe || m.context.is_empty() {
            return;
        }
        let Some(acks) = self.read_only.recv_ack(m.from, &m.context) else {
            return;
        };
        let result = self
            .prs
            .conf
            .voters
            .vote_result(|id| acks.contains(&id).then_some(true));
        if result != VoteResult::Won {
            return;
        }
        for status in self.read_only.advance(&m.context) {
            self.respond_to_read_index(status.req, status.index);
        }
    }

    fn handle_snapshot_status(&mut self, m: &Message) {
        let pr = self
            .prs
            .progress
            .get_mut(&m.from)
            .expect("checked by step_leader");
        if pr.state != ProgressState::Snapshot {
            return;
        }
        if m.reject {
            // Order matters: clearing the pending index first makes become_probe retry from
            // matched + 1 instead of assuming the snapshot landed.
            pr.pending_snapshot = 0;
            pr.become_probe();
            debug!(
                "{:x} snapshot to {:x} failed, probing again",
                self.id, m.from
            );
        } else {
            pr.become_probe();
            debug!(
                "{:x} snapshot to {:x} succeeded, probing from {}",
                self.id, m.from, pr.next_idx
            );
        }
        // Wait for the follower's append response (success) or a heartbeat interval (failure)
        // before sending again.
        pr.probe_sent = true;
    }

    fn handle_transfer_leader(&mut self, m: &Message) {
        let transferee = m.from;
        if self.prs.progress[&transferee].is_learner {
            debug!(
                "{:x} is a learner; ignored transferring leadership",
                transferee
            );
            return;
        }
        if self.lead_transferee != INVALID_ID {
            if self.lead_transferee == transferee {
                info!(
                    "{:x} [term {}] transfer leadership to {:x} is in progress, ignores request \
                     to the same node",
                    self.id, self.term, transferee
                );
                return;
            }
            self.abort_leader_transfer();
            info!(
                "{:x} [term {}] abort previous transfer leadership",
                self.id, self.term
            );
        }
        if transferee == self.id {
            debug!(
                "{:x} is already leader; ignored transferring leadership to self",
                self.id
            );
            return;
        }
        info!(
            "{:x} [term {}] starts to transfer leadership to {:x}",
            self.id, self.term, transferee
        );
        // The transfer must finish within an election timeout.
        self.election_elapsed = 0;
        self.lead_transferee = transferee;
        if self.prs.progress[&transferee].matched == self.raft_log.last_index() {
            self.send_timeout_now(transferee);
            info!(
                "{:x} sends TimeoutNow to {:x} immediately: its log is up to date",
                self.id, transferee
            );
        } else {
            self.send_append(transferee);
        }
    }

    fn send_timeout_now(&mut self, to: u64) {
        self.send(Message {
            msg_type: MessageType::TimeoutNow,
            to,
            ..Message::default()
        });
    }

    /// Forgets a leadership transfer in progress.
    pub fn abort_leader_transfer(&mut self) {
        self.lead_transferee = INVALID_ID;
    }

    fn step_candidate(&mut self, m: Message) -> Result<()> {
        let my_vote_response = if self.state == StateType::PreCandidate {
            MessageType::RequestPreVoteResponse
        } else {
            MessageType::RequestVoteResponse
        };
        match m.msg_type {
            MessageType::Propose => {
                info!(
                    "{:x} no leader at term {}; dropping proposal",
                    self.id, self.term
                );
                return Err(Error::ProposalDropped);
            }
            MessageType::ReadIndex => {
                info!(
                    "{:x} no leader at term {}; dropping read index",
                    self.id, self.term
                );
                return Err(Error::ProposalDropped);
            }
            // A leader of our term exists (the term check has run): follow it.
            MessageType::Append => {
                self.become_follower(m.term, m.from);
                self.handle_append_entries(&m);
            }
            MessageType::Heartbeat => {
                self.become_follower(m.term, m.from);
                self.handle_heartbeat(m);
            }
            MessageType::Snapshot => {
                self.become_follower(m.term, m.from);
                self.handle_snapshot(m);
            }
            t if t == my_vote_response => {
                match self.poll(m.from, m.msg_type, !m.reject) {
                    VoteResult::Won => {
                        if self.state == StateType::PreCandidate {
                            self.campaign(CampaignType::Election);
                        } else {
                            self.become_leader();
                            self.bcast_append();
                        }
                    }
                    VoteResult::Lost => {
                        // A pre-vote response carries a future term: keep ours.
                        let term = self.term;
                        self.become_follower(term, INVALID_ID);
                    }
                    VoteResult::Pending => {}
                }
            }
            MessageType::TimeoutNow => {
                debug!(
                    "{:x} [term {} state {}] ignored TimeoutNow from {:x}",
                    self.id, self.term, self.state, m.from
                );
            }
            _ => {}
        }
        Ok(())
    }

    fn step_follower(&mut self, mut m: Message) -> Result<()> {
        match m.msg_type {
            MessageType::Propose => {
                if self.lead == INVALID_ID {
                    info!(
                        "{:x} no leader at term {}; dropping proposal",
                        self.id, self.term
                    );
                    return Err(Error::ProposalDropped);
                }
                if self.disable_proposal_forwarding {
                    info!(
                        "{:x} not forwarding to leader {:x} at term {}; dropping proposal",
                        self.id, self.lead, self.term
                    );
                    return Err(Error::ProposalDropped);
                }
                m.to = self.lead;
                self.send(m);
            }
            MessageType::Append => {
                self.election_elapsed = 0;
                self.lead = m.from;
                self.handle_append_entries(&m);
            }
            MessageType::Heartbeat => {
                self.election_elapsed = 0;
                self.lead = m.from;
                self.handle_heartbeat(m);
            }
            MessageType::Snapshot => {
                self.election_elapsed = 0;
                self.lead = m.from;
                self.handle_snapshot(m);
            }
            MessageType::TransferLeader => {
                if self.lead == INVALID_ID {
                    info!(
                        "{:x} no leader at term {}; dropping leader transfer msg",
                        self.id, self.term
                    );
                    return Ok(());
                }
                m.to = self.lead;
                self.send(m);
            }
            MessageType::TimeoutNow => {
                info!(
                    "{:x} [term {}] received TimeoutNow from {:x} and starts an election to get \
                     leadership",
                    self.id, self.term, m.from
                );
                // A transfer never uses pre-vote: the leader asked for it, so there is no
                // partition to recover from.
                self.hup(CampaignType::Transfer);
            }
            MessageType::ReadIndex => {
                if self.lead == INVALID_ID {
                    info!(
                        "{:x} no leader at term {}; dropping index reading msg",
                        self.id, self.term
                    );
                    return Err(Error::ProposalDropped);
                }
                m.to = self.lead;
                self.send(m);
            }
            MessageType::ReadIndexResp => {
                if m.entries.len() != 1 {
                    warn!(
                        "{:x} invalid format of ReadIndexResp from {:x}, entries count: {}",
                        self.id,
                        m.from,
                        m.entries.len()
                    );
                    return Ok(());
                }
                let request_ctx = m.entries.pop().map(|e| e.data).unwrap_or_default();
                self.read_states.push(ReadState {
                    index: m.index,
                    request_ctx,
                });
            }
            _ => {}
        }
        Ok(())
    }

    /// Appends the leader's entries if the logs match at the preceding entry, else rejects
    /// with a hint for fast backtracking (Raft §5.3).
    pub fn handle_append_entries(&mut self, m: &Message) {
        if m.index < self.raft_log.committed {
            self.send(Message {
                msg_type: MessageType::AppendResponse,
                to: m.from,
                index: self.raft_log.committed,
                ..Message::default()
            });
            return;
        }
        if let Some(last_new_index) = self
            .raft_log
            .maybe_append(m.index, m.log_term, m.commit, &m.entries)
        {
            self.send(Message {
                msg_type: MessageType::AppendResponse,
                to: m.from,
                index: last_new_index,
                ..Message::default()
            });
            return;
        }
        debug!(
            "{:x} [log_term: {}, index: {}] rejected append [log_term: {}, index: {}] from {:x}",
            self.id,
            self.raft_log.term(m.index).unwrap_or(0),
            m.index,
            m.log_term,
            m.index,
            m.from
        );
        // Hint the largest (index, term) at or below the leader's (index, log_term) where the
        // logs could match: it skips our whole tail of entries from terms the leader lacks.
        let hint_index = m.index.min(self.raft_log.last_index());
        let (hint_index, hint_term) = self.raft_log.find_conflict_by_term(hint_index, m.log_term);
        self.send(Message {
            msg_type: MessageType::AppendResponse,
            to: m.from,
            index: m.index,
            reject: true,
            reject_hint: hint_index,
            log_term: hint_term,
            ..Message::default()
        });
    }

    /// Commits up to the leader's advertised index and acknowledges, echoing a read context.
    pub fn handle_heartbeat(&mut self, m: Message) {
        self.raft_log.commit_to(m.commit);
        self.send(Message {
            msg_type: MessageType::HeartbeatResponse,
            to: m.from,
            context: m.context,
            ..Message::default()
        });
    }

    /// Restores the leader's snapshot if it is newer than our commit index.
    pub fn handle_snapshot(&mut self, m: Message) {
        let Some(snapshot) = m.snapshot else {
            warn!(
                "{:x} ignored a snapshot message without a snapshot from {:x}",
                self.id, m.from
            );
            return;
        };
        let (index, term) = (snapshot.metadata.index, snapshot.metadata.term);
        if self.restore(snapshot) {
            info!(
                "{:x} [commit: {}] restored snapshot [index: {index}, term: {term}]",
                self.id, self.raft_log.committed
            );
            self.send(Message {
                msg_type: MessageType::AppendResponse,
                to: m.from,
                index: self.raft_log.last_index(),
                ..Message::default()
            });
        } else {
            info!(
                "{:x} [commit: {}] ignored snapshot [index: {index}, term: {term}]",
                self.id, self.raft_log.committed
            );
            self.send(Message {
                msg_type: MessageType::AppendResponse,
                to: m.from,
                index: self.raft_log.committed,
                ..Message::default()
            });
        }
    }

    /// Resets the log and configuration to a snapshot. False when the snapshot is stale, names
    /// a configuration without this node, or is already matched by our log (then only the
    /// commit index moves).
    pub fn restore(&mut self, snapshot: Snapshot) -> bool {
        let meta = &snapshot.metadata;
        if meta.index <= self.raft_log.committed {
            return false;
        }
        if self.state != StateType::Follower {
            // Defense in depth: only followers receive snapshots.
            warn!(
                "{:x} attempted to restore snapshot as {}; should never happen",
                self.id, self.state
            );
            let term = self.term + 1;
            self.become_follower(term, INVALID_ID);
            return false;
        }
        let cs = &meta.conf_state;
        let member = cs
            .voters
            .iter()
            .chain(&cs.learners)
            .chain(&cs.voters_outgoing)
            .any(|&id| id == self.id);
        if !member {
            warn!("{:x} attempted to restore snapshot but it is not in the ConfState {cs:?}; should never happen", self.id);
            return false;
        }
        if self.raft_log.match_term(meta.index, meta.term) {
            info!(
                "{:x} [commit: {}, last_index: {}, last_term: {}] fast-forwarded commit to \
                 snapshot [index: {}, term: {}]",
                self.id,
                self.raft_log.committed,
                self.raft_log.last_index(),
                self.raft_log.last_term(),
                meta.index,
                meta.term
            );
            self.raft_log.commit_to(meta.index);
            return false;
        }
        let cs = cs.clone();
        self.raft_log.restore(snapshot);
        self.prs = ProgressTracker::new(self.prs.max_inflight);
        let (cfg, prs) = confchange::restore(&self.prs, self.raft_log.last_index(), &cs)
            .unwrap_or_else(|e| panic!("{:x} unable to restore config {cs:?}: {e}", self.id));
        let restored = self.switch_to_config(cfg, prs);
        assert_conf_states_equivalent(&cs, &restored);
        let pr = self
            .prs
            .progress
            .get_mut(&self.id)
            .expect("member checked above");
        let next = pr.next_idx;
        pr.maybe_update(next - 1);
        true
    }

    /// Applies a committed configuration change and returns the new configuration.
    pub fn apply_conf_change(&mut self, cc: &ConfChangeV2) -> Result<ConfState> {
        let changer = Changer {
            tracker: &self.prs,
            last_index: self.raft_log.last_index(),
        };
        let outcome = if cc.leave_joint_requested() {
            changer.leave_joint()
        } else if let Some(auto_leave) = cc.enter_joint() {
            changer.enter_joint(auto_leave, &cc.changes)
        } else {
            changer.simple(&cc.changes)
        };
        let (cfg, prs) = outcome?;
        Ok(self.switch_to_config(cfg, prs))
    }

    /// Installs a configuration; a leader that removed or demoted itself steps down, and a
    /// leader whose quorum changed commits and probes accordingly.
    pub fn switch_to_config(&mut self, cfg: TrackerConfig, prs: ProgressMap) -> ConfState {
        self.prs.conf = cfg;
        self.prs.progress = prs;
        info!("{:x} switched to configuration {}", self.id, self.prs.conf);
        let cs = self.prs.conf_state();
        let own = self.prs.progress.get(&self.id).map(|pr| pr.is_learner);
        self.is_learner = own == Some(true);
        if (own.is_none() || self.is_learner) && self.state == StateType::Leader {
            // A leader that is no longer a voter steps down (etcd#11038): it would otherwise
            // keep leading a configuration it is not part of.
            info!(
                "{:x} is removed or demoted and steps down as leader",
                self.id
            );
            let term = self.term;
            self.become_follower(term, INVALID_ID);
            return cs;
        }
        if self.state != StateType::Leader || cs.voters.is_empty() {
            return cs;
        }
        if self.maybe_commit() {
            self.bcast_append();
        } else {
            // Probe new members now rather than at the next heartbeat or proposal.
            for id in self.peer_ids() {
                self.maybe_send_append(id, false);
            }
        }
        if self.lead_transferee != INVALID_ID
            && !self.prs.conf.voters.contains(self.lead_transferee)
        {
            info!(
                "{:x} aborts leader transfer: {:x} is no longer a voter",
                self.id, self.lead_transferee
            );
            self.abort_leader_transfer();
        }
        cs
    }

    /// After the application applied up to `applied`: a leader in a joint configuration with
    /// automatic leave proposes the leave entry once the entering change is applied (this
    /// also covers a new leader inheriting such a configuration, etcd#12136).
    pub fn on_applied(&mut self, old_applied: u64, new_applied: u64) {
        if self.prs.conf.auto_leave
            && self.state == StateType::Leader
            && old_applied <= self.pending_conf_index
            && new_applied >= self.pending_conf_index
        {
            // Empty data decodes to the leave-joint change and counts zero bytes, so the size
            // limit can never refuse it.
            let mut leave = [Entry {
                entry_type: EntryType::ConfChangeV2,
                ..Entry::default()
            }];
            assert!(
                self.append_entry(&mut leave),
                "refused un-refusable auto-leaving ConfChangeV2"
            );
            self.pending_conf_index = self.raft_log.last_index();
            info!(
                "{:x} initiating automatic transition out of joint configuration {}",
                self.id, self.prs.conf
            );
            self.bcast_append();
        }
    }
}

fn assert_conf_states_equivalent(want: &ConfState, got: &ConfState) {
    let norm = |v: &[u64]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v
    };
    let same = norm(&want.voters) == norm(&got.voters)
        && norm(&want.learners) == norm(&got.learners)
        && norm(&want.voters_outgoing) == norm(&got.voters_outgoing)
        && norm(&want.learners_next) == norm(&got.learners_next)
        && want.auto_leave == got.auto_leave;
    assert!(
        same,
        "conf states differ after restore: want {want:?}, got {got:?}"
    );
}
