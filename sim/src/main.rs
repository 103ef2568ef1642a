//! Runs many seeds, or replays one with a trace.
//!
//! Usage: raft-sim [--lease] [--whole [--timing] [--membership | --single-voter] [--disk-faults] [--cas] [--hostile]] [--seeds N] [--start S] [--steps K] | --replay SEED [--steps K]
//!
//! `--lease` runs lease-based reads with modelled time (clock drift, pauses). `--whole` runs
//! whole raftd nodes (the daemon's loop, storage on simulated disks with power loss, the
//! client protocol) over a simulated network (see `raft_sim::whole`); with `--timing` their
//! clocks drift and they pause, and with `--lease` as well they answer reads from the lease;
//! with `--membership` an operator replaces nodes' disks (remove, wipe, join, add, promote);
//! with `--disk-faults` disks fill up for a while and syncs take time; with `--cas` writers
//! move their keys through versions with compare-and-swaps and renew their sessions; with
//! `--single-voter` the cluster is one voter and two learners the operator adds; with
//! `--hostile` impostors speak on the peer port; with `--one-way` links lose what goes one
//! way only.

use std::process::ExitCode;
use std::time::Instant;

use raft_sim::whole::{run_whole, WholeConfig, WholeOutcome};
use raft_sim::{run_lease_seed, run_seed, Stats, Violation};

fn main() -> ExitCode {
    // The nodes' own log lines (raftd's), for a replayed seed: RUST_LOG=info.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off")).init();
    let mut seeds = 1000u64;
    let mut start = 1u64;
    let mut steps = 2000u64;
    let mut replay = None;
    let mut lease = false;
    let mut whole = false;
    let mut timing = false;
    let mut membership = false;
    let mut disk_faults = false;
    let mut cas = false;
    let mut single_voter = false;
    let mut hostile = false;
    let mut one_way = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--lease" {
            lease = true;
            continue;
        }
        if flag == "--whole" {
            whole = true;
            continue;
        }
        if flag == "--timing" {
            timing = true;
            continue;
        }
        if flag == "--membership" {
            membership = true;
            continue;
        }
        if flag == "--cas" {
            cas = true;
            continue;
        }
        if flag == "--one-way" {
            one_way = true;
            continue;
        }
        if flag == "--hostile" {
            hostile = true;
            continue;
        }
        if flag == "--single-voter" {
            single_voter = true;
            continue;
        }
        if flag == "--disk-faults" {
            disk_faults = true;
            continue;
        }
        let Some(value) = args.next().and_then(|v| v.parse::<u64>().ok()) else {
            eprintln!("raft-sim: {flag} needs a number\nusage: raft-sim [--lease] [--whole [--timing] [--membership | --single-voter] [--disk-faults] [--cas] [--hostile] [--one-way]] [--seeds N] [--start S] [--steps K] | --replay SEED");
            return ExitCode::from(2);
        };
        match flag.as_str() {
            "--seeds" => seeds = value,
            "--start" => start = value,
            "--steps" => steps = value,
            "--replay" => replay = Some(value),
            other => {
                eprintln!("raft-sim: unknown flag {other}");
                return ExitCode::from(2);
            }
        }
    }
    if whole {
        if membership && single_voter {
            eprintln!("raft-sim: --single-voter and --membership do not go together");
            return ExitCode::from(2);
        }
        let config = |seed| {
            let cfg = match (lease, timing) {
                (true, _) => WholeConfig::lease(seed, steps),
                (false, true) => WholeConfig::timed(seed, steps),
                (false, false) => WholeConfig::new(seed, steps),
            };
            WholeConfig { membership, disk_faults, cas, single_voter, hostile, one_way, ..cfg }
        };
        return run_whole_seeds(replay.map_or(start, |s| s), replay.map_or(seeds, |_| 1), &config);
    }
    let run = |seed: u64, steps: u64, verbose: bool| -> Result<Stats, Violation> {
        if lease {
            run_lease_seed(seed, steps, verbose)
        } else {
            run_seed(seed, steps, verbose)
        }
    };
    if let Some(seed) = replay {
        return match run(seed, steps, true) {
            Ok(stats) => {
                println!("seed {seed}: ok {stats:?}");
                ExitCode::SUCCESS
            }
            Err(v) => {
                println!("{v}");
                ExitCode::from(1)
            }
        };
    }
    let began = Instant::now();
    let mut total = Stats::default();
    for seed in start..start + seeds {
        match run(seed, steps, false) {
            Ok(s) => {
                total.steps += s.steps;
                total.faults += s.faults;
                total.committed += s.committed;
                total.reads += s.reads;
                total.lease_reads += s.lease_reads;
                total.conf_changes += s.conf_changes;
                total.snapshots += s.snapshots;
            }
            Err(v) => {
                println!("{v}");
                return ExitCode::from(1);
            }
        }
        if (seed - start + 1) % 10_000 == 0 {
            eprintln!("{} seeds, {:.0}s", seed - start + 1, began.elapsed().as_secs_f64());
        }
    }
    println!(
        "raft-sim{}: {seeds} seeds from {start}, {steps} faulty steps each: all invariants held. {} steps, {} faults, {} proposals committed, {} reads ({} from a lease), {} configuration changes, {} snapshots, {:.0}s",
        if lease { " --lease" } else { "" },
        total.steps,
        total.faults,
        total.committed,
        total.reads,
        total.lease_reads,
        total.conf_changes,
        total.snapshots,
        began.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}

/// `--whole`: seeds of whole nodes; a failure prints its seed, reason and last events.
fn run_whole_seeds(start: u64, seeds: u64, config: &dyn Fn(u64) -> WholeConfig) -> ExitCode {
    let began = Instant::now();
    let mut total = WholeOutcome::default();
    let first = config(start);
    for seed in start..start + seeds {
        match run_whole(&config(seed)) {
            Ok(o) => {
                total.puts_acknowledged += o.puts_acknowledged;
                total.reads_checked += o.reads_checked;
                total.crashes += o.crashes;
                total.partitions += o.partitions;
                total.pauses += o.pauses;
                total.transfers += o.transfers;
                total.disks_replaced += o.disks_replaced;
                total.disks_full += o.disks_full;
                total.slow_syncs += o.slow_syncs;
                total.cas_checked += o.cas_checked;
                total.sessions_renewed += o.sessions_renewed;
                total.replaced_in_place_refused += o.replaced_in_place_refused;
                total.learners_added += o.learners_added;
                total.impostors_refused += o.impostors_refused;
                total.impostor_frames += o.impostor_frames;
                total.one_way_links += o.one_way_links;
            }
            Err(failure) => {
                println!("{failure}");
                return ExitCode::from(1);
            }
        }
        if (seed - start + 1) % 1_000 == 0 {
            eprintln!("{} seeds, {:.0}s", seed - start + 1, began.elapsed().as_secs_f64());
        }
    }
    let mode = match (first.lease, first.timing) {
        (true, _) => " --lease",
        (false, true) => " --timing",
        (false, false) => "",
    };
    let mode = format!(
        "{mode}{}{}{}{}{}{}",
        if first.membership { " --membership" } else { "" },
        if first.single_voter { " --single-voter" } else { "" },
        if first.disk_faults { " --disk-faults" } else { "" },
        if first.cas { " --cas" } else { "" },
        if first.hostile { " --hostile" } else { "" },
        if first.one_way { " --one-way" } else { "" }
    );
    println!(
        "raft-sim --whole{mode}: {seeds} seeds from {start}, {} steps (1 ms) each: every \
         acknowledged write on every node, every read fresh. {} puts acknowledged, {} reads \
         checked, {} crashes with power loss, {} partitions, {} pauses, {} leader transfers, \
         {} disks replaced ({} in place, refused), {} disks full, {} slow syncs, {} compare-and-swaps checked, {} \
         sessions renewed, {} learners added to a single voter, {} impostors refused, {} \
         impostor frames dropped, {} one-way links, {:.0}s",
        first.steps,
        total.puts_acknowledged,
        total.reads_checked,
        total.crashes,
        total.partitions,
        total.pauses,
        total.transfers,
        total.disks_replaced,
        total.replaced_in_place_refused,
        total.disks_full,
        total.slow_syncs,
        total.cas_checked,
        total.sessions_renewed,
        total.learners_added,
        total.impostors_refused,
        total.impostor_frames,
        total.one_way_links,
        began.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}
