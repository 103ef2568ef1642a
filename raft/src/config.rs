//! The knobs of one Raft node: the seed's `Config`, in snake_case.

use std::collections::HashSet;
use std::time::Duration;

use crate::errors::ConfigError;

/// How read-only requests are served (etcd `ReadOnlyOption`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadOnlyOption {
    /// The leader confirms its leadership with a heartbeat round to a quorum before answering
    /// (Raft thesis §6.4). Safe under any clock behaviour.
    #[default]
    Safe,
    /// The leader answers its own reads from its lease, without a heartbeat round, while the
    /// lease holds: [`Config::lease_duration`] from the sending of a heartbeat that a quorum
    /// acknowledged, on the application's clock. Otherwise (a new leader, a transfer under
    /// way, no recent acknowledgement, a read forwarded by a follower) it confirms with a
    /// heartbeat round as `Safe` does. Assumes clocks whose rates differ by less than the
    /// margin the lease leaves; requires `check_quorum`.
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
    /// How long a heartbeat that a quorum acknowledged keeps the leader's lease, counted from
    /// its sending (`LeaseBased` reads). Followers that heard it refuse other candidates for
    /// `election_tick` ticks of their own clocks from its arrival, one tick of which may
    /// already have passed; the lease must end before, with room for the clocks' rates to
    /// differ: see [`Config::lease_duration_for`]. Zero: no lease (required unless
    /// `LeaseBased`).
    pub lease_duration: Duration,
    /// Followers drop proposals instead of forwarding them to the leader.
    pub disable_proposal_forwarding: bool,
    /// An append to a follower that continues the last append queued for it in the same
    /// Ready (and fits in `max_size_per_msg` with it) is merged into that message, taking one
    /// inflight slot: proposals made one call at a time leave as one message per follower
    /// (raft-rs's `batch_append`; etcd sends one message per proposal).
    pub batch_append: bool,
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
            lease_duration: Duration::ZERO,
            disable_proposal_forwarding: false,
            batch_append: false,
        }
    }
}

impl Config {
    /// A default configuration for node `id`.
    pub fn new(id: u64) -> Config {
        Config { id, ..Config::default() }
    }

    /// The longest safe lease for ticks of `tick_interval` and clocks whose rates differ by at
    /// most `drift_percent` percent: `(election_tick - 1)` ticks (a follower may be one tick
    /// into its count when the heartbeat arrives), less the drift over them.
    pub fn lease_duration_for(&self, tick_interval: Duration, drift_percent: u32) -> Duration {
        let ticks = u32::try_from(self.election_tick.saturating_sub(1)).unwrap_or(u32::MAX);
        let window = tick_interval.saturating_mul(ticks);
        // Saturating throughout: an absurd tick interval from a flag gives a long lease, not a
        // panic (and the flag's election timeout is as long).
        window.saturating_sub((window / 100).saturating_mul(drift_percent.min(100)))
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
        let lease_based = self.read_only_option == ReadOnlyOption::LeaseBased;
        if lease_based == self.lease_duration.is_zero() {
            return Err(ConfigError::LeaseDurationWithoutLeaseBased);
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
            (
                Config { read_only_option: ReadOnlyOption::LeaseBased, ..ok.clone() },
                ConfigError::LeaseDurationWithoutLeaseBased,
            ),
            (
                Config { lease_duration: Duration::from_secs(1), ..ok.clone() },
                ConfigError::LeaseDurationWithoutLeaseBased,
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
            lease_duration: Duration::from_millis(810),
            ..Config::new(1)
        };
        assert_eq!(c.validate(), Ok(()));
    }

    /// Ten ticks of 100 ms: a follower refuses other candidates for at least nine ticks after
    /// a heartbeat arrives; 10% drift leaves 810 ms.
    #[test]
    fn a_lease_is_shorter_than_the_shortest_election_timeout_less_drift() {
        let c = Config::new(1);
        assert_eq!(
            c.lease_duration_for(Duration::from_millis(100), 10),
            Duration::from_millis(810)
        );
        assert_eq!(c.lease_duration_for(Duration::from_millis(100), 0), Duration::from_millis(900));
        assert_eq!(c.lease_duration_for(Duration::from_millis(100), 250), Duration::ZERO);
        let huge = Duration::from_millis(u64::MAX);
        assert!(c.lease_duration_for(huge, 10) < Duration::MAX);
    }
}
