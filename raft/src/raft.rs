//! The Raft state machine: the seed's `raft` struct, its roles, and its step functions
//! (etcd `raft.go`).

use bytes::Bytes;
use std::fmt;
use std::time::Duration;

mod follower;
mod leader;

use log::{debug, info, warn};

use crate::confchange::{self, Changer};
use crate::config::{Config, ReadOnlyOption};
use crate::errors::{ConfigError, Error, Result, StorageError};
use crate::message::{
    ConfChange, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, HardState, Message,
    MessageType, Snapshot,
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

/// The largest term a message may carry: no cluster reaches it (2^62 elections), and below it
/// `term + 1` never overflows.
pub const TERM_MAX: u64 = 1 << 62;

/// The largest jump past this node's term that a peer's message may make. Terms grow by one
/// per election; a jump this large is a bug or a forgery, and taking it would let one message
/// push every node's term toward the end of the range.
pub const TERM_JUMP_MAX: u64 = 1 << 32;

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
    /// On a follower: the transferee its leader announced in this term, or 0. Only its
    /// transfer campaign may override the leader lease.
    pub transfer_notice: u64,
    /// A transfer campaign's vote request that arrived before the leader's notice naming its
    /// sender (they travel on different connections); stepped again when the notice comes.
    pending_transfer_vote: Option<Message>,
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
    /// See [`Config::batch_append`].
    pub batch_append: bool,
    /// Reads received before this leader committed an entry of its term (etcd#7331).
    pending_read_index_messages: Vec<Message>,
    /// The application's clock ([`crate::RawNode::advance_clock`]); never goes back.
    pub now: Duration,
    /// See [`Config::lease_duration`].
    pub lease_duration: Duration,
    /// This leader sent `TimeoutNow` in its term: the transferee may be elected at once, so no
    /// read is answered from the lease until the next term (even if the transfer is aborted,
    /// the message may still arrive).
    pub lease_revoked: bool,
    /// With leader leases, a node that (re)starts refuses votes as if it had just heard from
    /// a leader, until an election timeout passed: before the restart it may have acknowledged
    /// the heartbeat a leader's lease started from, and it no longer knows. Cleared once the
    /// timeout passed or a leader is known.
    pub lease_hold_at_start: bool,
    rng: Rng,
}

impl<T: Storage> Raft<T> {
    /// A node starting from `store`, as a follower.
    pub fn new(config: &Config, store: T) -> Result<Raft<T>> {
        config.validate()?;
        let raft_state = store.initial_state()?;
        let raft_log = RaftLog::new(store, config.max_committed_size_per_ready);
        let conf_state = raft_state.conf_state;
        let bootstrap = !config.peers.is_empty() || !config.learners.is_empty();
        if bootstrap {
            let empty = conf_state == ConfState::default()
                && raft_state.hard_state.is_empty()
                && raft_log.last_index() == 0;
            if !empty {
                return Err(ConfigError::BootstrapOverExistingState.into());
            }
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
            transfer_notice: INVALID_ID,
            pending_transfer_vote: None,
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
            batch_append: config.batch_append,
            pending_read_index_messages: Vec::new(),
            now: Duration::ZERO,
            lease_duration: config.lease_duration,
            lease_revoked: false,
            lease_hold_at_start: config.read_only_option == ReadOnlyOption::LeaseBased,
            // Distinct, reproducible sequences per node; `seed_election_rng` overrides.
            rng: Rng::new(config.id.wrapping_mul(0x2545_f491_4f6c_dd1d)),
        };
        let (cfg, prs) = confchange::restore(&raft.prs, raft.raft_log.last_index(), &conf_state)?;
        raft.switch_to_config(cfg, prs);
        if !raft_state.hard_state.is_empty() {
            raft.load_state(&raft_state.hard_state)?;
        }
        if bootstrap {
            raft.bootstrap(&config.peers, &config.learners);
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

    /// Writes the initial configuration into the log: one committed configuration-change
    /// entry per member, at term 1 (etcd `Bootstrap`). The application persists and applies
    /// them from the first Ready like any other entries, so the configuration has one source,
    /// the log, and a node that joins later learns every member by replaying it. Until they
    /// are applied the node has no configuration and cannot campaign.
    fn bootstrap(&mut self, peers: &[u64], learners: &[u64]) {
        self.become_follower(1, INVALID_ID);
        let changes = peers
            .iter()
            .map(|&id| (ConfChangeType::AddNode, id))
            .chain(learners.iter().map(|&id| (ConfChangeType::AddLearnerNode, id)));
        let entries: Vec<Entry> = changes
            .enumerate()
            .map(|(i, (change_type, node_id))| Entry {
                entry_type: EntryType::ConfChange,
                term: 1,
                index: i as u64 + 1,
                data: ConfChange { change_type, node_id, context: Vec::new() }.encode().into(),
                context: Bytes::new(),
            })
            .collect();
        self.raft_log.append(&entries);
        self.raft_log.commit_to(entries.len() as u64);
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
        SoftState { lead: self.lead, raft_state: self.state }
    }

    /// The state to persist.
    pub fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote, commit: self.raft_log.committed }
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
                assert!(m.term != 0, "term should be set when sending {:?}", m.msg_type);
            }
            _ => {
                assert!(m.term == 0, "term should not be set when sending {:?}", m.msg_type);
                // Proposals and read requests are forwarded as if local: no term.
                if m.msg_type != MessageType::Propose && m.msg_type != MessageType::ReadIndex {
                    m.term = self.term;
                }
            }
        }
        self.msgs.push(m);
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
        self.transfer_notice = INVALID_ID;
        self.pending_transfer_vote = None;
        self.prs.reset_votes();
        let last_index = self.raft_log.last_index();
        let persisted = self.raft_log.persisted_index();
        let self_id = self.id;
        for (&id, pr) in self.prs.progress.iter_mut() {
            let is_learner = pr.is_learner;
            *pr = crate::tracker::Progress::new(last_index + 1, self.prs.max_inflight);
            pr.is_learner = is_learner;
            if id == self_id {
                // Only what is durable here counts toward a quorum.
                pr.matched = persisted;
            }
        }
        self.pending_conf_index = 0;
        self.uncommitted_size = 0;
        self.read_only = ReadOnly::new(self.read_only.option);
        self.pending_read_index_messages.clear();
        self.lease_revoked = false;
    }

    /// Moves the clock to `now` (a monotonic reading of the application's); a reading behind
    /// the clock is ignored.
    pub fn advance_clock(&mut self, now: Duration) {
        self.now = self.now.max(now);
    }

    /// The clock in nanoseconds, as heartbeats carry it.
    pub(crate) fn now_nanos(&self) -> u64 {
        u64::try_from(self.now.as_nanos()).unwrap_or(u64::MAX)
    }

    /// When this leader's lease ends, if it holds now (`LeaseBased` reads). It starts at the
    /// sending of the newest heartbeat a quorum acknowledged (this leader counts as
    /// acknowledging at once) and lasts `lease_duration`: until then every voter of that quorum
    /// refuses other candidates, so no other leader can commit.
    pub fn lease_expiry(&self) -> Option<Duration> {
        if self.state != StateType::Leader
            || self.read_only.option != ReadOnlyOption::LeaseBased
            || self.lease_revoked
            || self.lead_transferee != INVALID_ID
        {
            return None;
        }
        let now = self.now_nanos();
        let start = self.prs.conf.voters.committed_index(|id| {
            if id == self.id {
                return Some(now);
            }
            self.prs.progress.get(&id).map(|pr| pr.lease_ack).filter(|&t| t > 0)
        });
        if start == 0 || start == u64::MAX {
            return None;
        }
        let expiry = Duration::from_nanos(start).saturating_add(self.lease_duration);
        (expiry > self.now).then_some(expiry)
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
        if self.election_elapsed >= self.election_timeout {
            self.lease_hold_at_start = false;
        }
        if self.promotable() && self.past_election_timeout() {
            self.election_elapsed = 0;
            let m = Message { from: self.id, ..Message::new(MessageType::Hup) };
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
                let m = Message { from: self.id, ..Message::new(MessageType::CheckQuorum) };
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
            let m = Message { from: self.id, ..Message::new(MessageType::Beat) };
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
        assert_ne!(self.state, StateType::Leader, "invalid transition [leader -> candidate]");
        let term = self.term + 1;
        self.reset(term);
        self.vote = self.id;
        self.state = StateType::Candidate;
        info!("{:x} became candidate at term {}", self.id, self.term);
    }

    /// Becomes a pre-candidate: asks for pre-votes without changing term or vote, so a node
    /// cut off from the cluster cannot inflate the term (Raft thesis §9.6).
    pub fn become_pre_candidate(&mut self) {
        assert_ne!(self.state, StateType::Leader, "invalid transition [leader -> pre-candidate]");
        self.prs.reset_votes();
        self.lead = INVALID_ID;
        self.state = StateType::PreCandidate;
        info!("{:x} became pre-candidate at term {}", self.id, self.term);
    }

    /// Becomes leader: tracks every follower afresh and appends an empty entry of its term,
    /// whose commit also commits every entry before it (Raft §5.4.2, thesis §6.4).
    pub fn become_leader(&mut self) {
        assert_ne!(self.state, StateType::Follower, "invalid transition [follower -> leader]");
        let term = self.term;
        self.reset(term);
        self.lead = self.id;
        self.state = StateType::Leader;
        let last_index = self.raft_log.last_index();
        let pr = self.prs.progress.get_mut(&self.id).expect("a new leader tracks itself");
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
        self.prs.progress.get(&self.id).is_some_and(|pr| !pr.is_learner)
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
        let timeout = self.rng.gen_range(self.election_timeout, 2 * self.election_timeout);
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
        info!("{:x} is starting a new election at term {}", self.id, self.term);
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
            Bytes::from_static(CAMPAIGN_TRANSFER)
        } else {
            Bytes::new()
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
            info!("{:x} received {msg_type:?} from {id:x} at term {}", self.id, self.term);
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
        if m.term > TERM_MAX || m.term > self.term.saturating_add(TERM_JUMP_MAX) {
            warn!(
                "{:x} [term: {}] ignored a {:?} from {:x} at the absurd term {}",
                self.id, self.term, m.msg_type, m.from, m.term
            );
            return Ok(());
        }
        if m.term == 0 {
            // Local message, or a proposal or read forwarded without a term.
        } else if m.term > self.term {
            if matches!(m.msg_type, MessageType::RequestVote | MessageType::RequestPreVote) {
                // A restarted voter holds votes too, for an election timeout: the lease it
                // may have granted before the restart is not known to have ended.
                let in_lease = self.check_quorum
                    && (self.lead != INVALID_ID || self.lease_hold_at_start)
                    && self.election_elapsed < self.election_timeout;
                let transfer = m.context == CAMPAIGN_TRANSFER;
                // A transfer campaign overrides the lease only when this node's leader chose
                // its candidate: else any peer could depose a healthy leader (and raise the
                // term) by claiming a transfer.
                let force = transfer && self.transfer_announced(m.from);
                if transfer && !force && in_lease {
                    warn!(
                        "{:x} [term: {}] holds a transfer campaign's {:?} from {:x} at term {}: \
                         its leader {:x} has not named it the transferee",
                        self.id, self.term, m.msg_type, m.from, m.term, self.lead
                    );
                    if m.msg_type == MessageType::RequestVote {
                        self.pending_transfer_vote = Some(m);
                    }
                    return Ok(());
                }
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
                let campaign_type =
                    if self.pre_vote { CampaignType::PreElection } else { CampaignType::Election };
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
        let granted = can_vote && self.raft_log.is_up_to_date(m.index, m.log_term);
        info!(
            "{:x} [log_term: {}, index: {}, vote: {:x}] {} {:?} from {:x} [log_term: {}, index: \
             {}] at term {}",
            self.id,
            self.raft_log.last_term(),
            self.raft_log.last_index(),
            self.vote,
            if granted { "granted" } else { "rejected" },
            m.msg_type,
            m.from,
            m.log_term,
            m.index,
            self.term
        );
        // A grant carries the candidate's term: for a pre-vote that is a future term, which the
        // pre-candidate recognises as its own. A rejection carries ours, so that a candidate
        // behind us learns the term.
        let term = if granted { m.term } else { self.term };
        let response = m.msg_type.vote_response();
        self.send(Message {
            msg_type: response,
            to: m.from,
            term,
            reject: !granted,
            ..Message::default()
        });
        if granted && m.msg_type == MessageType::RequestVote {
            self.election_elapsed = 0;
            self.vote = m.from;
        }
    }

    /// Whether this node's leader (or this node, leading) chose `candidate` as the target of
    /// a leadership transfer in the current term.
    fn transfer_announced(&self, candidate: u64) -> bool {
        candidate != INVALID_ID
            && if self.state == StateType::Leader {
                self.lead_transferee == candidate
            } else {
                self.transfer_notice == candidate
            }
    }

    /// Forgets a leadership transfer in progress.
    pub fn abort_leader_transfer(&mut self) {
        self.lead_transferee = INVALID_ID;
    }

    /// Applies a committed configuration change and returns the new configuration.
    pub fn apply_conf_change(&mut self, cc: &ConfChangeV2) -> Result<ConfState> {
        let changer = Changer { tracker: &self.prs, last_index: self.raft_log.last_index() };
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
            info!("{:x} is removed or demoted and steps down as leader", self.id);
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
            self.for_each_peer(|r, id| {
                r.maybe_send_append(id, false);
            });
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
}
