//! Whole nodes (raftd's own loop, storage and client protocol) under the simulator: a bounded
//! number of seeds in every `cargo test` (`WHOLE_SEEDS`, default 8), and the seeds that found
//! each reverted fix (TESTING.md's bite table).

use raft_sim::whole::{run_whole, WholeConfig};

#[test]
fn whole_node_seeds_keep_every_acknowledged_write_and_read_fresh() {
    let seeds: u64 = std::env::var("WHOLE_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    let steps: u64 =
        std::env::var("WHOLE_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(4_000);
    let mut totals = (0, 0, 0, 0);
    // 1: WalStorage::sync not syncing; 60: read contexts without node and incarnation;
    // 197: a follower acknowledging before its sync.
    for seed in (0..seeds).chain([60, 197]) {
        match run_whole(&WholeConfig::new(seed, steps)) {
            Ok(o) => {
                totals.0 += o.puts_acknowledged;
                totals.1 += o.reads_checked;
                totals.2 += o.crashes;
                totals.3 += o.partitions;
            }
            Err(failure) => panic!("{failure}"),
        }
    }
    println!(
        "{seeds} seeds: {} puts acknowledged, {} reads checked, {} crashes, {} partitions",
        totals.0, totals.1, totals.2, totals.3
    );
    assert!(totals.0 > seeds * 10, "too few writes acknowledged to mean anything: {totals:?}");
}

/// A seed replays: the node's maps are ordered, its clock, disk, network and random seeds are
/// the simulation's, so the same seed makes the same run (a failure's seed reproduces it).
#[test]
fn a_whole_node_seed_replays_exactly() {
    let cfg = WholeConfig::new(17, 3_000);
    let first = run_whole(&cfg).unwrap();
    assert_eq!(run_whole(&cfg).unwrap(), first);
    assert!(first.puts_acknowledged > 0, "{first:?}");
}
