use std::collections::BTreeSet;
use std::fmt;

use super::VoteResult;

/// A set of voters decided by simple majority.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MajorityConfig {
    voters: BTreeSet<u64>,
}

impl MajorityConfig {
    /// A configuration of these voters.
    pub fn new(voters: BTreeSet<u64>) -> MajorityConfig {
        MajorityConfig { voters }
    }

    /// The voters.
    pub fn ids(&self) -> &BTreeSet<u64> {
        &self.voters
    }

    /// Mutable access, for configuration changes.
    pub(crate) fn ids_mut(&mut self) -> &mut BTreeSet<u64> {
        &mut self.voters
    }

    /// True when `id` votes here.
    pub fn contains(&self, id: u64) -> bool {
        self.voters.contains(&id)
    }

    /// Number of voters.
    pub fn len(&self) -> usize {
        self.voters.len()
    }

    /// True with no voters.
    pub fn is_empty(&self) -> bool {
        self.voters.is_empty()
    }

    /// The voters, sorted.
    pub fn to_vec(&self) -> Vec<u64> {
        self.voters.iter().copied().collect()
    }

    /// The largest index acknowledged by a majority, given each voter's acknowledged index
    /// (`None` counts as 0). An empty configuration commits everything (`u64::MAX`), so that it
    /// never holds back the other half of a joint configuration.
    pub fn committed_index(&self, acked: impl Fn(u64) -> Option<u64>) -> u64 {
        if self.voters.is_empty() {
            return u64::MAX;
        }
        // Stack storage for the common small cluster; the heap only past seven voters.
        let mut small = [0u64; 7];
        let mut large;
        let matched: &mut [u64] = if self.voters.len() <= small.len() {
            &mut small[..self.voters.len()]
        } else {
            large = vec![0u64; self.voters.len()];
            &mut large
        };
        for (slot, &id) in matched.iter_mut().zip(&self.voters) {
            *slot = acked(id).unwrap_or(0);
        }
        matched.sort_unstable_by(|a, b| b.cmp(a));
        matched[self.voters.len() / 2]
    }

    /// The result of a vote given each voter's answer (`None`: not yet answered). An empty
    /// configuration wins, again so that joint quorums reduce to their other half.
    pub fn vote_result(&self, votes: impl Fn(u64) -> Option<bool>) -> VoteResult {
        if self.voters.is_empty() {
            return VoteResult::Won;
        }
        let (mut granted, mut missing) = (0, 0);
        for &id in &self.voters {
            match votes(id) {
                Some(true) => granted += 1,
                Some(false) => {}
                None => missing += 1,
            }
        }
        let quorum = self.voters.len() / 2 + 1;
        if granted >= quorum {
            VoteResult::Won
        } else if granted + missing >= quorum {
            VoteResult::Pending
        } else {
            VoteResult::Lost
        }
    }
}

impl fmt::Display for MajorityConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({:?})", self.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ids: &[u64]) -> MajorityConfig {
        MajorityConfig::new(ids.iter().copied().collect())
    }

    #[test]
    fn committed_index_is_the_median_acknowledged_by_a_majority() {
        let acked = |pairs: &'static [(u64, u64)]| {
            move |id: u64| pairs.iter().find(|p| p.0 == id).map(|p| p.1)
        };
        assert_eq!(cfg(&[]).committed_index(acked(&[])), u64::MAX);
        assert_eq!(cfg(&[1]).committed_index(acked(&[(1, 5)])), 5);
        assert_eq!(cfg(&[1, 2]).committed_index(acked(&[(1, 5), (2, 3)])), 3);
        assert_eq!(cfg(&[1, 2, 3]).committed_index(acked(&[(1, 5), (2, 3)])), 3);
        assert_eq!(cfg(&[1, 2, 3]).committed_index(acked(&[(1, 5)])), 0);
        assert_eq!(cfg(&[1, 2, 3, 4]).committed_index(acked(&[(1, 9), (2, 8), (3, 7)])), 7);
        let nine: Vec<u64> = (1..=9).collect();
        assert_eq!(cfg(&nine).committed_index(|id| Some(id * 10)), 50);
    }

    #[test]
    fn vote_result_needs_a_majority_of_grants() {
        let votes = |pairs: &'static [(u64, bool)]| {
            move |id: u64| pairs.iter().find(|p| p.0 == id).map(|p| p.1)
        };
        assert_eq!(cfg(&[]).vote_result(votes(&[])), VoteResult::Won);
        assert_eq!(cfg(&[1, 2, 3]).vote_result(votes(&[(1, true)])), VoteResult::Pending);
        assert_eq!(cfg(&[1, 2, 3]).vote_result(votes(&[(1, true), (2, true)])), VoteResult::Won);
        assert_eq!(
            cfg(&[1, 2, 3]).vote_result(votes(&[(1, true), (2, false), (3, false)])),
            VoteResult::Lost
        );
        assert_eq!(
            cfg(&[1, 2, 3, 4]).vote_result(votes(&[(1, true), (2, true), (3, false)])),
            VoteResult::Pending
        );
        assert_eq!(
            cfg(&[1, 2, 3, 4]).vote_result(votes(&[(1, false), (2, false)])),
            VoteResult::Lost
        );
    }
}
