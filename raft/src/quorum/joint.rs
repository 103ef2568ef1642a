use std::collections::BTreeSet;
use std::fmt;

use super::{MajorityConfig, VoteResult};

/// Two majority configurations that must both agree: the incoming and, while a membership
/// change is in progress, the outgoing one (Raft thesis §4.3).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JointConfig {
    /// The configuration being moved to, or the only one.
    pub incoming: MajorityConfig,
    /// The configuration being left; empty when not joint.
    pub outgoing: MajorityConfig,
}

impl JointConfig {
    /// A non-joint configuration of these voters.
    pub fn new(voters: BTreeSet<u64>) -> JointConfig {
        JointConfig { incoming: MajorityConfig::new(voters), outgoing: MajorityConfig::default() }
    }

    /// True while a joint change is in progress.
    pub fn is_joint(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Every voter of either half.
    pub fn ids(&self) -> BTreeSet<u64> {
        self.incoming.ids().union(self.outgoing.ids()).copied().collect()
    }

    /// True when `id` votes in either half.
    pub fn contains(&self, id: u64) -> bool {
        self.incoming.contains(id) || self.outgoing.contains(id)
    }

    /// The largest index both halves have committed.
    pub fn committed_index(&self, acked: impl Fn(u64) -> Option<u64>) -> u64 {
        self.incoming.committed_index(&acked).min(self.outgoing.committed_index(&acked))
    }

    /// Won when both halves won, lost when either lost, pending otherwise.
    pub fn vote_result(&self, votes: impl Fn(u64) -> Option<bool>) -> VoteResult {
        let incoming = self.incoming.vote_result(&votes);
        let outgoing = self.outgoing.vote_result(&votes);
        match (incoming, outgoing) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }
}

impl fmt::Display for JointConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_joint() {
            write!(f, "{}&&{}", self.incoming, self.outgoing)
        } else {
            write!(f, "{}", self.incoming)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joint(incoming: &[u64], outgoing: &[u64]) -> JointConfig {
        JointConfig {
            incoming: MajorityConfig::new(incoming.iter().copied().collect()),
            outgoing: MajorityConfig::new(outgoing.iter().copied().collect()),
        }
    }

    #[test]
    fn joint_committed_index_is_the_minimum_of_both_halves() {
        let acked = |id: u64| Some([0, 10, 9, 8, 2, 1][id as usize]);
        assert_eq!(joint(&[1, 2, 3], &[]).committed_index(acked), 9);
        // Outgoing {1,4,5} has only reached 2.
        assert_eq!(joint(&[1, 2, 3], &[1, 4, 5]).committed_index(acked), 2);
    }

    #[test]
    fn joint_vote_needs_both_halves() {
        let votes = |granted: &'static [u64], rejected: &'static [u64]| {
            move |id: u64| {
                if granted.contains(&id) {
                    Some(true)
                } else if rejected.contains(&id) {
                    Some(false)
                } else {
                    None
                }
            }
        };
        let cfg = joint(&[1, 2, 3], &[1, 4, 5]);
        assert_eq!(cfg.vote_result(votes(&[1, 2], &[])), VoteResult::Pending);
        assert_eq!(cfg.vote_result(votes(&[1, 2, 4], &[])), VoteResult::Won);
        assert_eq!(cfg.vote_result(votes(&[1, 2], &[4, 5])), VoteResult::Lost);
        assert_eq!(cfg.vote_result(votes(&[4, 5], &[2, 3])), VoteResult::Lost);
    }
}
