//! The simulator under `cargo test`: a fixed set of seeds must hold every invariant, and a
//! deliberately broken core must be caught.

use raft_sim::{run_lease_seed, run_seed, Sim, SimConfig};

/// Seeds run by CI (sized for about a minute of a debug build on two cores).
const CI_SEEDS: u64 = 3000;
const CI_STEPS: u64 = 2000;

#[test]
fn fixed_seeds_hold_every_invariant() {
    for seed in 1..=CI_SEEDS {
        if let Err(v) = run_seed(seed, CI_STEPS, false) {
            panic!("{v}");
        }
    }
}

/// Seeds that once found a bug, kept as regression tests.
/// - 2527: a joining node that had restored one snapshot excluding itself refused the next,
///   and stalled (fixed in `Raft::restore`).
/// - 31401: removed nodes restarted with their stale configurations formed a quorum of an
///   old configuration and elected a leader without committed entries. Removed nodes must
///   stay down: the simulator decommissions them, and raftd refuses their connections.
/// - 549, 15, 260: simulator bugs (a liveness marker proposed to a deposed leader; a
///   learner decommissioned by mistake; a restart from a snapshot with the latest
///   configuration instead of the snapshot's), kept as checks of the simulator itself.
#[test]
fn regression_seeds_hold() {
    for seed in [2527, 31401, 549, 15, 260] {
        if let Err(v) = run_seed(seed, 2000, false) {
            panic!("{v}");
        }
    }
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let a = run_seed(7, 1500, false).expect("seed 7 holds");
    let b = run_seed(7, 1500, false).expect("seed 7 holds");
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}

/// A core whose nodes forget their vote (and so may vote twice in a term) is caught: the
/// invariants bite. (Seed 606 was the first to catch it when this was written; the range
/// leaves room for the run to move as the core changes.)
#[test]
fn a_node_that_votes_twice_in_a_term_is_caught() {
    let caught = (1..=3000u64).find_map(|seed| {
        let cfg = SimConfig { forgetful_voters: true, ..SimConfig::new(seed, 2000) };
        Sim::new(cfg).run().err()
    });
    let v = caught.expect("some seed exposes the double vote");
    assert!(
        ["election safety", "log matching", "state machine safety", "leader completeness"]
            .contains(&v.invariant),
        "{v}"
    );
    assert!(v.to_string().contains("replay"), "the report says how to replay it");
}

/// Lease-based reads under clocks of bounded drift, pauses of up to three election timeouts
/// (a stopped leader resumed with a read waiting), crashes, partitions and every other fault:
/// no read misses a write completed before it began (issue 15, item 2).
const LEASE_SEEDS: u64 = 1000;
/// Seeds searched for a deliberately broken lease.
const LEASE_BITE_SEEDS: u64 = 1000;

#[test]
fn lease_reads_stay_fresh_under_drift_and_pauses() {
    let mut reads = 0;
    for seed in 1..=LEASE_SEEDS {
        match run_lease_seed(seed, CI_STEPS, false) {
            Ok(stats) => reads += stats.reads,
            Err(v) => panic!("{v}"),
        }
    }
    assert!(reads > LEASE_SEEDS * 10, "reads were answered: {reads}");
}

/// A lease as long as two election timeouts (what a lease on check-quorum rounds amounted to,
/// the bug of issue 15 item 2) is caught as a stale read.
#[test]
fn a_lease_outliving_the_election_timeout_is_caught() {
    let caught = (1..=LEASE_BITE_SEEDS).find_map(|seed| {
        let cfg = SimConfig { lease_reads: true, long_leases: true, ..SimConfig::new(seed, 2000) };
        Sim::new(cfg).run().err()
    });
    let v = caught.expect("some seed exposes the stale lease");
    assert!(["lease exclusivity", "ReadIndex freshness"].contains(&v.invariant), "{v}");
}

/// A voter that restarts and votes at once, though before the restart it may have
/// acknowledged the heartbeat a leader's lease started from, lets a second leader commit
/// while the first still answers reads from its lease. The core holds a restarted voter's
/// votes for an election timeout (`Raft::lease_hold_at_start`); with that reverted, seed 2933
/// was the first to catch it when this was written (searched from seed 1). CI searches from
/// 2900, to keep the debug run short; the range leaves room for the run to move.
#[test]
fn a_restarted_voter_voting_within_a_lease_is_caught() {
    let caught = (2900..=2900 + LEASE_BITE_SEEDS).find_map(|seed| {
        let cfg = SimConfig {
            lease_reads: true,
            restarted_voters_vote: true,
            ..SimConfig::new(seed, 2000)
        };
        Sim::new(cfg).run().err()
    });
    let v = caught.expect("some seed exposes the restarted voter");
    assert!(["lease exclusivity", "ReadIndex freshness"].contains(&v.invariant), "{v}");
}
