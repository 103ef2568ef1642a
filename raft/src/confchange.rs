//! Applying configuration changes to a tracker: simple one-voter changes and joint consensus
//! (Raft thesis §4.3; etcd `confchange`).
//!
//! A [`Changer`] computes the next configuration and progress map from the current ones
//! without modifying them; the caller switches to the result.

use std::collections::BTreeSet;

use crate::errors::ConfChangeError;
use crate::message::{ConfChangeSingle, ConfChangeType, ConfState};
use crate::tracker::{Progress, ProgressMap, ProgressTracker, TrackerConfig};

type Outcome = Result<(TrackerConfig, ProgressMap), ConfChangeError>;

/// Computes configuration changes against a tracker.
pub struct Changer<'a> {
    /// The current configuration and progress.
    pub tracker: &'a ProgressTracker,
    /// The log's last index, where new members start probing.
    pub last_index: u64,
}

impl Changer<'_> {
    /// Enters a joint configuration: the current voters become the outgoing half and the
    /// changes are applied to the incoming half.
    pub fn enter_joint(&self, auto_leave: bool, changes: &[ConfChangeSingle]) -> Outcome {
        let (mut cfg, mut prs) = self.check_and_copy()?;
        if cfg.voters.is_joint() {
            return Err(ConfChangeError::AlreadyJoint);
        }
        if cfg.voters.incoming.is_empty() {
            return Err(ConfChangeError::ZeroVoterJoint);
        }
        cfg.voters.outgoing = cfg.voters.incoming.clone();
        self.apply(&mut cfg, &mut prs, changes)?;
        cfg.auto_leave = auto_leave;
        check_and_return(cfg, prs)
    }

    /// Leaves the joint configuration: the outgoing half is dropped, staged learners become
    /// learners, and nodes no longer in any role lose their progress.
    pub fn leave_joint(&self) -> Outcome {
        let (mut cfg, mut prs) = self.check_and_copy()?;
        if !cfg.voters.is_joint() {
            return Err(ConfChangeError::NotJoint);
        }
        for id in std::mem::take(&mut cfg.learners_next) {
            cfg.learners.insert(id);
            progress_of(&mut prs, id)?.is_learner = true;
        }
        let outgoing = std::mem::take(&mut cfg.voters.outgoing);
        for &id in outgoing.ids() {
            if !cfg.voters.incoming.contains(id) && !cfg.learners.contains(&id) {
                prs.remove(&id);
            }
        }
        cfg.auto_leave = false;
        check_and_return(cfg, prs)
    }

    /// Applies changes that alter at most one voter, without joint consensus.
    pub fn simple(&self, changes: &[ConfChangeSingle]) -> Outcome {
        let (mut cfg, mut prs) = self.check_and_copy()?;
        if cfg.voters.is_joint() {
            return Err(ConfChangeError::AlreadyJoint);
        }
        self.apply(&mut cfg, &mut prs, changes)?;
        let before = self.tracker.conf.voters.incoming.ids();
        let after = cfg.voters.incoming.ids();
        let count = before.symmetric_difference(after).count();
        if count > 1 {
            return Err(ConfChangeError::TooManyVoterChanges { count });
        }
        check_and_return(cfg, prs)
    }

    fn apply(
        &self,
        cfg: &mut TrackerConfig,
        prs: &mut ProgressMap,
        changes: &[ConfChangeSingle],
    ) -> Result<(), ConfChangeError> {
        for change in changes {
            let id = change.node_id;
            if id == 0 {
                return Err(ConfChangeError::NodeIdZero);
            }
            match change.change_type {
                ConfChangeType::AddNode => self.make_voter(cfg, prs, id)?,
                ConfChangeType::AddLearnerNode => self.make_learner(cfg, prs, id)?,
                ConfChangeType::RemoveNode => {
                    let member = cfg.voters.incoming.contains(id) || cfg.learners.contains(&id);
                    if !member {
                        return Err(ConfChangeError::RemoveNonMember { id });
                    }
                    remove(cfg, prs, id);
                }
                ConfChangeType::UpdateNode => {
                    let member = cfg.voters.contains(id)
                        || cfg.learners.contains(&id)
                        || cfg.learners_next.contains(&id);
                    if !member {
                        return Err(ConfChangeError::UpdateNonMember { id });
                    }
                }
            }
        }
        if cfg.voters.incoming.is_empty() {
            return Err(ConfChangeError::NoVoters);
        }
        Ok(())
    }

    fn make_voter(
        &self,
        cfg: &mut TrackerConfig,
        prs: &mut ProgressMap,
        id: u64,
    ) -> Result<(), ConfChangeError> {
        if cfg.voters.incoming.contains(id) {
            return Err(ConfChangeError::AlreadyVoter { id });
        }
        match prs.get_mut(&id) {
            None => self.init_progress(cfg, prs, id, false),
            Some(progress) => {
                progress.is_learner = false;
                cfg.learners.remove(&id);
                cfg.learners_next.remove(&id);
                cfg.voters.incoming.ids_mut().insert(id);
            }
        }
        Ok(())
    }

    fn make_learner(
        &self,
        cfg: &mut TrackerConfig,
        prs: &mut ProgressMap,
        id: u64,
    ) -> Result<(), ConfChangeError> {
        let Some(existing) = prs.get(&id) else {
            self.init_progress(cfg, prs, id, true);
            return Ok(());
        };
        if existing.is_learner || cfg.learners_next.contains(&id) {
            return Err(ConfChangeError::AlreadyLearner { id });
        }
        // Demote a voter, keeping its progress.
        let mut progress = existing.clone();
        remove(cfg, prs, id);
        // A voter of the outgoing half cannot become a learner until the joint configuration
        // is left: stage it in learners_next.
        if cfg.voters.outgoing.contains(id) {
            cfg.learners_next.insert(id);
        } else {
            progress.is_learner = true;
            cfg.learners.insert(id);
        }
        prs.insert(id, progress);
        Ok(())
    }

    fn init_progress(
        &self,
        cfg: &mut TrackerConfig,
        prs: &mut ProgressMap,
        id: u64,
        learner: bool,
    ) {
        if learner {
            cfg.learners.insert(id);
        } else {
            cfg.voters.incoming.ids_mut().insert(id);
        }
        let mut progress = Progress::new(self.last_index.max(1), self.tracker.max_inflight);
        progress.is_learner = learner;
        // A new member counts as active, so that a check-quorum round right after adding it
        // does not depose the leader before the member had a chance to answer.
        progress.recent_active = true;
        prs.insert(id, progress);
    }

    fn check_and_copy(&self) -> Result<(TrackerConfig, ProgressMap), ConfChangeError> {
        let cfg = self.tracker.conf.clone();
        let prs = self.tracker.progress.clone();
        check_invariants(&cfg, &prs)?;
        Ok((cfg, prs))
    }
}

fn remove(cfg: &mut TrackerConfig, prs: &mut ProgressMap, id: u64) {
    cfg.voters.incoming.ids_mut().remove(&id);
    cfg.learners.remove(&id);
    cfg.learners_next.remove(&id);
    // A voter of the outgoing half keeps its progress until the joint configuration is left.
    if !cfg.voters.outgoing.contains(id) {
        prs.remove(&id);
    }
}

fn progress_of(prs: &mut ProgressMap, id: u64) -> Result<&mut Progress, ConfChangeError> {
    prs.get_mut(&id).ok_or_else(|| ConfChangeError::Invalid(format!("no progress for {id}")))
}

fn check_and_return(cfg: TrackerConfig, prs: ProgressMap) -> Outcome {
    check_invariants(&cfg, &prs)?;
    Ok((cfg, prs))
}

/// The invariants of a configuration and its progress map.
fn check_invariants(cfg: &TrackerConfig, prs: &ProgressMap) -> Result<(), ConfChangeError> {
    let invalid = |s: String| Err(ConfChangeError::Invalid(s));
    let voters = cfg.voters.ids();
    for id in voters.iter().chain(&cfg.learners).chain(&cfg.learners_next) {
        if !prs.contains_key(id) {
            return invalid(format!("no progress for {id}"));
        }
    }
    for id in &cfg.learners_next {
        if !cfg.voters.outgoing.contains(*id) {
            return invalid(format!("{id} is in learners_next but not an outgoing voter"));
        }
        if prs[id].is_learner {
            return invalid(format!("{id} is in learners_next but already a learner"));
        }
    }
    for id in &cfg.learners {
        if voters.contains(id) {
            return invalid(format!("{id} is both a learner and a voter"));
        }
        if !prs[id].is_learner {
            return invalid(format!("{id} is in learners but not marked as learner"));
        }
    }
    if !cfg.voters.is_joint() {
        if !cfg.learners_next.is_empty() {
            return invalid("learners_next must be empty when not joint".to_string());
        }
        if cfg.auto_leave {
            return invalid("auto_leave must be false when not joint".to_string());
        }
    }
    Ok(())
}

/// Builds the configuration and progress a [`ConfState`] describes, as on restart or after
/// receiving a snapshot.
pub fn restore(
    tracker: &ProgressTracker,
    last_index: u64,
    cs: &ConfState,
) -> Result<(TrackerConfig, ProgressMap), ConfChangeError> {
    let set = |ids: &[u64]| ids.iter().copied().collect::<BTreeSet<u64>>();
    let mut cfg = TrackerConfig::default();
    cfg.voters.incoming = crate::quorum::MajorityConfig::new(set(&cs.voters));
    cfg.voters.outgoing = crate::quorum::MajorityConfig::new(set(&cs.voters_outgoing));
    cfg.learners = set(&cs.learners);
    cfg.learners_next = set(&cs.learners_next);
    cfg.auto_leave = cs.auto_leave;
    let mut prs = ProgressMap::new();
    let ids = cfg.voters.ids();
    for &id in ids.iter().chain(&cfg.learners).chain(&cfg.learners_next) {
        if id == 0 {
            return Err(ConfChangeError::NodeIdZero);
        }
        let mut progress = Progress::new(last_index + 1, tracker.max_inflight);
        progress.is_learner = cfg.learners.contains(&id);
        prs.insert(id, progress);
    }
    check_and_return(cfg, prs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConfChangeType::{AddLearnerNode, AddNode, RemoveNode, UpdateNode};

    fn tracker_with(voters: &[u64], learners: &[u64]) -> ProgressTracker {
        let mut tracker = ProgressTracker::new(256);
        let cs = ConfState {
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            ..ConfState::default()
        };
        let (cfg, prs) = restore(&tracker, 10, &cs).unwrap();
        tracker.conf = cfg;
        tracker.progress = prs;
        tracker
    }

    fn cc(change_type: ConfChangeType, node_id: u64) -> ConfChangeSingle {
        ConfChangeSingle { change_type, node_id }
    }

    fn apply(tracker: &mut ProgressTracker, outcome: Outcome) {
        let (cfg, prs) = outcome.unwrap();
        tracker.conf = cfg;
        tracker.progress = prs;
    }

    #[test]
    fn simple_change_refuses_more_than_one_voter() {
        let tracker = tracker_with(&[1, 2, 3], &[]);
        let ch = Changer { tracker: &tracker, last_index: 10 };
        assert!(ch.simple(&[cc(AddNode, 4)]).is_ok());
        assert!(ch.simple(&[cc(AddLearnerNode, 4), cc(AddLearnerNode, 5)]).is_ok());
        assert_eq!(
            ch.simple(&[cc(AddNode, 4), cc(RemoveNode, 1)]).unwrap_err(),
            ConfChangeError::TooManyVoterChanges { count: 2 }
        );
    }

    #[test]
    fn malformed_changes_are_refused_with_typed_errors() {
        let tracker = tracker_with(&[1, 2], &[3]);
        let ch = Changer { tracker: &tracker, last_index: 10 };
        assert_eq!(
            ch.simple(&[cc(RemoveNode, 9)]).unwrap_err(),
            ConfChangeError::RemoveNonMember { id: 9 }
        );
        assert_eq!(
            ch.simple(&[cc(UpdateNode, 9)]).unwrap_err(),
            ConfChangeError::UpdateNonMember { id: 9 }
        );
        let (cfg, prs) = ch.simple(&[cc(UpdateNode, 2)]).unwrap();
        assert_eq!(cfg, ch.tracker.conf, "an update changes no configuration");
        assert_eq!(prs.len(), ch.tracker.progress.len());
        assert_eq!(
            ch.simple(&[cc(AddNode, 2)]).unwrap_err(),
            ConfChangeError::AlreadyVoter { id: 2 }
        );
        assert_eq!(
            ch.simple(&[cc(AddLearnerNode, 3)]).unwrap_err(),
            ConfChangeError::AlreadyLearner { id: 3 }
        );
        assert_eq!(ch.simple(&[cc(AddNode, 0)]).unwrap_err(), ConfChangeError::NodeIdZero);
        let single = tracker_with(&[1], &[]);
        let ch = Changer { tracker: &single, last_index: 10 };
        assert_eq!(ch.simple(&[cc(RemoveNode, 1)]).unwrap_err(), ConfChangeError::NoVoters);
        assert_eq!(ch.leave_joint().unwrap_err(), ConfChangeError::NotJoint);
    }

    #[test]
    fn joint_change_demotes_through_learners_next_and_leaves() {
        let mut tracker = tracker_with(&[1, 2, 3], &[]);
        let outcome = Changer { tracker: &tracker, last_index: 10 }
            .enter_joint(true, &[cc(AddNode, 4), cc(AddLearnerNode, 3)]);
        apply(&mut tracker, outcome);
        assert_eq!(
            tracker.conf_state(),
            ConfState {
                voters: vec![1, 2, 4],
                voters_outgoing: vec![1, 2, 3],
                learners: vec![],
                learners_next: vec![3],
                auto_leave: true,
            }
        );
        let again = Changer { tracker: &tracker, last_index: 10 }.enter_joint(false, &[]);
        assert_eq!(again.unwrap_err(), ConfChangeError::AlreadyJoint);
        let outcome = Changer { tracker: &tracker, last_index: 10 }.leave_joint();
        apply(&mut tracker, outcome);
        assert_eq!(
            tracker.conf_state(),
            ConfState { voters: vec![1, 2, 4], learners: vec![3], ..ConfState::default() }
        );
        assert!(tracker.progress[&3].is_learner);
    }

    #[test]
    fn leaving_joint_drops_removed_voters_progress() {
        let mut tracker = tracker_with(&[1, 2, 3], &[]);
        let outcome = Changer { tracker: &tracker, last_index: 10 }
            .enter_joint(false, &[cc(RemoveNode, 3), cc(AddNode, 5)]);
        apply(&mut tracker, outcome);
        assert!(tracker.progress.contains_key(&3), "outgoing voter keeps its progress");
        let outcome = Changer { tracker: &tracker, last_index: 10 }.leave_joint();
        apply(&mut tracker, outcome);
        assert!(!tracker.progress.contains_key(&3));
        assert_eq!(tracker.conf_state().voters, vec![1, 2, 5]);
    }
}
