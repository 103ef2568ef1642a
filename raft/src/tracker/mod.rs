//! What the leader knows of its followers: the configuration, a [`Progress`] per member, and
//! the votes of the current election (etcd `tracker`).

mod inflights;
mod progress;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

pub use inflights::Inflights;
pub use progress::{Progress, ProgressState};

use crate::message::ConfState;
use crate::quorum::{JointConfig, VoteResult};

/// A configuration as the tracker holds it (etcd `tracker.Config`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrackerConfig {
    /// The voters, possibly joint.
    pub voters: JointConfig,
    /// Leave the joint configuration automatically once it is committed.
    pub auto_leave: bool,
    /// The learners. Invariant: disjoint from both halves of `voters`.
    pub learners: BTreeSet<u64>,
    /// Outgoing voters that become learners when the joint configuration is left.
    /// Invariant: each is in `voters.outgoing` and not yet marked a learner.
    pub learners_next: BTreeSet<u64>,
}

impl TrackerConfig {
    /// The configuration as persisted.
    pub fn to_conf_state(&self) -> ConfState {
        ConfState {
            voters: self.voters.incoming.to_vec(),
            voters_outgoing: self.voters.outgoing.to_vec(),
            learners: self.learners.iter().copied().collect(),
            learners_next: self.learners_next.iter().copied().collect(),
            auto_leave: self.auto_leave,
        }
    }
}

impl fmt::Display for TrackerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "voters={}", self.voters)?;
        if !self.learners.is_empty() {
            write!(f, " learners={:?}", self.learners)?;
        }
        if !self.learners_next.is_empty() {
            write!(f, " learners_next={:?}", self.learners_next)?;
        }
        if self.auto_leave {
            write!(f, " autoleave")?;
        }
        Ok(())
    }
}

/// Every member's progress, keyed by id.
pub type ProgressMap = BTreeMap<u64, Progress>;

/// The configuration, progress and votes (etcd `tracker.ProgressTracker`).
#[derive(Clone, Debug)]
pub struct ProgressTracker {
    /// The active configuration.
    pub conf: TrackerConfig,
    /// One entry per voter and learner.
    pub progress: ProgressMap,
    /// Votes received in the current election.
    pub votes: BTreeMap<u64, bool>,
    /// The inflights capacity given to new members.
    pub max_inflight: usize,
}

impl ProgressTracker {
    /// An empty tracker.
    pub fn new(max_inflight: usize) -> ProgressTracker {
        ProgressTracker {
            conf: TrackerConfig::default(),
            progress: ProgressMap::new(),
            votes: BTreeMap::new(),
            max_inflight,
        }
    }

    /// The configuration as persisted.
    pub fn conf_state(&self) -> ConfState {
        self.conf.to_conf_state()
    }

    /// True when this is a single-voter, non-joint configuration.
    pub fn is_singleton(&self) -> bool {
        self.conf.voters.incoming.len() == 1 && !self.conf.voters.is_joint()
    }

    /// The highest index a quorum of voters has replicated.
    pub fn committed(&self) -> u64 {
        self.conf.voters.committed_index(|id| self.progress.get(&id).map(|p| p.matched))
    }

    /// True when a quorum of voters was recently active; the leader counts itself.
    pub fn quorum_active(&self, self_id: u64) -> bool {
        let result = self.conf.voters.vote_result(|id| {
            self.progress.get(&id).map(|p| p.is_learner || id == self_id || p.recent_active)
        });
        result == VoteResult::Won
    }

    /// Voter ids, sorted, both halves.
    pub fn voter_ids(&self) -> BTreeSet<u64> {
        self.conf.voters.ids()
    }

    /// Forgets the votes of the last election.
    pub fn reset_votes(&mut self) {
        self.votes.clear();
    }

    /// Records `id`'s vote; only its first vote in an election counts.
    pub fn record_vote(&mut self, id: u64, granted: bool) {
        self.votes.entry(id).or_insert(granted);
    }

    /// Grants, rejections among voters, and the election's result.
    pub fn tally_votes(&self) -> (usize, usize, VoteResult) {
        let (mut granted, mut rejected) = (0, 0);
        for (id, progress) in &self.progress {
            if progress.is_learner {
                continue;
            }
            match self.votes.get(id) {
                Some(true) => granted += 1,
                Some(false) => rejected += 1,
                None => {}
            }
        }
        let result = self.conf.voters.vote_result(|id| self.votes.get(&id).copied());
        (granted, rejected, result)
    }
}
