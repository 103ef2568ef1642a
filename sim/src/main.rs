//! Runs many seeds, or replays one with a trace.
//!
//! Usage: raft-sim [--lease] [--seeds N] [--start S] [--steps K] | --replay SEED [--steps K]
//!
//! `--lease` runs lease-based reads with modelled time (clock drift, pauses).

use std::process::ExitCode;
use std::time::Instant;

use raft_sim::{run_lease_seed, run_seed, Stats, Violation};

fn main() -> ExitCode {
    let mut seeds = 1000u64;
    let mut start = 1u64;
    let mut steps = 2000u64;
    let mut replay = None;
    let mut lease = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--lease" {
            lease = true;
            continue;
        }
        let Some(value) = args.next().and_then(|v| v.parse::<u64>().ok()) else {
            eprintln!("raft-sim: {flag} needs a number\nusage: raft-sim [--lease] [--seeds N] [--start S] [--steps K] | --replay SEED");
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
