//! The knobs of one Raft node: the seed's `Config`, in snake_case.

use std::collections::HashSet;

use crate::errors::ConfigError;

/// How read-only requests are served (etcd `ReadOnlyOption`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadOnlyOption {
    /// The leader confirms its leadership with a heartbeat round to a quorum before answering
    /// (Raft thesis §6.4). Safe under any clock behaviour.
    #[default]
    Safe,
    /// The leader answers from its lease: it heard from a quorum within the election timeout.
    /// Assumes bounded clock drift; requires `check_quorum`.
    LeaseBased,
}

/// The parameters to start a node. Storage is passed beside it, as in raft-rs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node's id; never 0.
    pub id: u64,
    /// The voters of a new cluster. Only for bootstrapping an empty storage; a restarted node
    /// takes its configuration from storage and must leave this empty.
    pub peers: Vec<u64>,
    /// The learners of a new cluster; same rule as `peers`.
    pub learners: Vec<u64>,
    /// Ticks without hearing from a leader before a follower campaigns. The actual timeout is
    /// drawn from `[election_tick, 2 * election_tick - 1]` on every reset.
    pub election_tick: usize,
    /// Ticks between the leader's heartbeats.
    pub heartbeat_tick: usize,
    /// The last applied index when restarting: committed entries up to it are not delivered
    /// again.
    pub applied: u64,
    /// Bytes of entries per append message; 0 sends at most one entry per message.
    pub max_size_per_msg: u64,
    /// Bytes of committed entries per Ready; 0 means no limit. At least one entry is always
    /// delivered.
    pub max_committed_size_per_ready: u64,
    /// Bytes of uncommitted payload the leader accepts before dropping proposals; 0 means no
    /// limit.
    pub max_uncommitted_entries_size: u64,
    /// Append messages in flight to one follower before the leader pauses it.
    pub max_inflight_msgs: usize,
    /// A leader that has not heard from a quorum within an election timeout steps down; a node
    /// that heard from a leader within the timeout ignores vote requests.
    pub check_quorum: bool,
    /// Run a pre-vote phase before bumping the term (Raft thesis §9.6).
    pub pre_vote: bool,
    /// How read-only requests are served.
    pub read_only_option: ReadOnlyOption,
    /// Followers drop proposals instead of forwarding them to the leader.
    pub disable_proposal_forwarding: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            id: 0,
            peers: Vec::new(),
            learners: Vec::new(),
            election_tick: 10,
            heartbeat_tick: 1,
            applied: 0,
            max_size_per_msg: 1024 * 1024,
            max_committed_size_per_ready: 16 * 1024 * 1024,
            max_uncommitted_entries_size: 64 * 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            read_only_option: ReadOnlyOption::Safe,
            disable_proposal_forwarding: false,
        }
    }
}

impl Config {
    /// A default configuration for node `id`.
    pub fn new(id: u64) -> Config {
        Config { id, ..Config::default() }
    }

    /// Checks every parameter, naming the first mistake found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::IdZero);
        }
        if self.heartbeat_tick == 0 {
            return Err(ConfigError::HeartbeatTickZero);
        }
        if self.election_tick <= self.heartbeat_tick {
            return Err(ConfigError::ElectionTickTooSmall {
                election_tick: self.election_tick,
                heartbeat_tick: self.heartbeat_tick,
            });
        }
        if self.max_inflight_msgs == 0 {
            return Err(ConfigError::MaxInflightMsgsZero);
        }
        if self.read_only_option == ReadOnlyOption::LeaseBased && !self.check_quorum {
            return Err(ConfigError::LeaseBasedWithoutCheckQuorum);
        }
        let mut seen = HashSet::new();
        for &id in self.peers.iter().chain(&self.learners) {
            if id == 0 {
                return Err(ConfigError::MemberIdZero);
            }
            if !seen.insert(id) {
                if self.peers.contains(&id) && self.learners.contains(&id) {
                    return Err(ConfigError::PeerIsLearner { id });
                }
                return Err(ConfigError::DuplicateMember { id });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_each_mistake() {
        let ok = Config { peers: vec![1, 2, 3], ..Config::new(1) };
        assert_eq!(ok.validate(), Ok(()));
        let cases: Vec<(Config, ConfigError)> = vec![
            (Config { id: 0, ..ok.clone() }, ConfigError::IdZero),
            (Config { heartbeat_tick: 0, ..ok.clone() }, ConfigError::HeartbeatTickZero),
            (
                Config { election_tick: 3, heartbeat_tick: 3, ..ok.clone() },
                ConfigError::ElectionTickTooSmall { election_tick: 3, heartbeat_tick: 3 },
            ),
            (Config { max_inflight_msgs: 0, ..ok.clone() }, ConfigError::MaxInflightMsgsZero),
            (
                Config {
                    read_only_option: ReadOnlyOption::LeaseBased,
                    check_quorum: false,
                    ..ok.clone()
                },
                ConfigError::LeaseBasedWithoutCheckQuorum,
            ),
            (Config { learners: vec![2], ..ok.clone() }, ConfigError::PeerIsLearner { id: 2 }),
            (Config { peers: vec![1, 0], ..ok.clone() }, ConfigError::MemberIdZero),
            (Config { peers: vec![1, 2, 1], ..ok.clone() }, ConfigError::DuplicateMember { id: 1 }),
        ];
        for (config, want) in cases {
            assert_eq!(config.validate(), Err(want));
        }
    }

    #[test]
    fn lease_based_with_check_quorum_is_valid() {
        let c = Config {
            read_only_option: ReadOnlyOption::LeaseBased,
            check_quorum: true,
            ..Config::new(1)
        };
        assert_eq!(c.validate(), Ok(()));
    }
}
