//! WAL throughput and recovery, as `cargo bench -p wal` prints them:
//! appends per second and MB/s for 256-byte entries synced every 1, 64 and 1024 entries;
//! recovery time for a 1-million-entry log; bytes on disk per entry.
//!
//! A plain timing harness rather than criterion: each figure is one long, steady run, which
//! is what an fsync-bound workload needs. Results go to `BENCHMARKS.md`.

use std::time::{Duration, Instant};

use wal::{EntryRef, HardState, Identity, Options, Wal};

const ENTRY_SIZE_BYTES: usize = 256;
const RUN_TIME: Duration = Duration::from_secs(3);
const RECOVERY_ENTRIES: u64 = 1_000_000;

fn identity() -> Identity {
    Identity { node_id: 1, cluster_id: "bench".to_string() }
}

fn append_run(sync_every: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(dir.path(), &identity(), Options::default()).expect("open");
    let payload = vec![0x5au8; ENTRY_SIZE_BYTES];
    let mut index = 0u64;
    let start = Instant::now();
    while start.elapsed() < RUN_TIME {
        let batch: Vec<EntryRef<'_>> = (1..=sync_every as u64)
            .map(|k| EntryRef { head: &[], index: index + k, term: 1, data: &payload })
            .collect();
        wal.append_entries(&batch).expect("append");
        index += sync_every as u64;
        wal.set_hard_state(HardState { term: 1, vote: 1, commit: index }).expect("hard state");
        wal.sync().expect("sync");
    }
    let secs = start.elapsed().as_secs_f64();
    let per_sec = index as f64 / secs;
    (per_sec, per_sec * ENTRY_SIZE_BYTES as f64 / 1e6)
}

fn recovery_run() -> (Duration, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let payload = vec![0x5au8; ENTRY_SIZE_BYTES];
    {
        let (mut wal, _) = Wal::open(dir.path(), &identity(), Options::default()).expect("open");
        let mut index = 0u64;
        while index < RECOVERY_ENTRIES {
            let batch: Vec<EntryRef<'_>> = (1..=64)
                .map(|k| EntryRef { head: &[], index: index + k, term: 1, data: &payload })
                .collect();
            wal.append_entries(&batch).expect("append");
            index += 64;
        }
        wal.sync().expect("sync");
    }
    let written: u64 = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .map(|p| {
            // Bytes written, not preallocated: up to the last non-zero byte.
            let bytes = std::fs::read(&p).expect("read segment");
            bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1) as u64
        })
        .sum();
    let start = Instant::now();
    let (wal, recovery) = Wal::open(dir.path(), &identity(), Options::default()).expect("reopen");
    let took = start.elapsed();
    assert!(recovery.last_index >= RECOVERY_ENTRIES && wal.last_index() >= RECOVERY_ENTRIES);
    (took, written as f64 / recovery.last_index as f64)
}

fn main() {
    // `cargo test --benches` runs benches with --test-ish flags; only measure under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    println!("wal append, {ENTRY_SIZE_BYTES}-byte entries, {}s per run:", RUN_TIME.as_secs());
    for sync_every in [1, 64, 1024] {
        let (per_sec, mb_per_sec) = append_run(sync_every);
        println!("  sync every {sync_every:>4} entries: {per_sec:>10.0} appends/s {mb_per_sec:>7.1} MB/s");
    }
    let (took, bytes_per_entry) = recovery_run();
    println!("recovery of {RECOVERY_ENTRIES} entries: {:.0} ms", took.as_secs_f64() * 1000.0);
    println!(
        "bytes on disk per {ENTRY_SIZE_BYTES}-byte entry (batches of 64): {bytes_per_entry:.1}"
    );
}
