//! The crash-state explorer (see `wal/tests/crash_states.rs`) one level up: a seeded node
//! workload through `WalStorage` (entries, hard states, syncs, snapshots written by the
//! background writer and put in force with compaction and deletion of old files, snapshots
//! installed from a leader) on the simulated disk. At every file-system operation, power cuts
//! keeping none, all, each one and all but each one of the unsynced items; the storage must
//! open, the Raft core must start from it, its state must be one the node had between its
//! last completed sync and the crash, and the snapshot in force must be readable.
//! `STORAGE_CRASH_SEEDS` (default 2) runs more seeds.

use std::path::Path;
use std::sync::Arc;

use raft::{ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata, Storage};
use raftd::storage::WalStorage;
use wal::fs::{Fs, SimFs};

const DIR: &str = "/data/node-1";

fn open(disk: &SimFs) -> raftd::errors::Result<WalStorage> {
    let shared: Arc<dyn Fs> = Arc::new(disk.clone());
    let identity = wal::Identity { node_id: 1, cluster_id: "crash".into() };
    let options = wal::Options { segment_size_bytes: 4096, ..wal::Options::default() };
    let (mut storage, _) = WalStorage::open_on(shared, Path::new(DIR), &identity, options)?;
    storage.set_inline(true);
    Ok(storage)
}

fn data_of(index: u64, term: u64) -> Vec<u8> {
    let mut data = format!("{index}/{term}").into_bytes();
    data.resize(4 + ((index * 41 + term) % 700) as usize, b'.');
    data
}

fn image_data(index: u64) -> Vec<u8> {
    vec![index as u8; 3000 + (index as usize * 97) % 6000]
}

#[derive(Clone, Debug)]
enum Op {
    Append { first: u64, count: u64, term: u64 },
    HardState(HardState),
    Sync,
    Snapshot { index: u64, keep: u64 },
    Install { index: u64, term: u64 },
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn workload(seed: u64) -> Vec<Op> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let (mut last, mut term, mut commit, mut snapshot, mut first) = (0u64, 1u64, 0u64, 0u64, 1u64);
    let mut ops = Vec::new();
    while ops.len() < 60 {
        match rng.below(12) {
            0..=4 => {
                let conflict = rng.below(5) == 0 && last > commit.max(first);
                let at = if conflict {
                    term += 1;
                    commit.max(first) + 1 + rng.below(last - commit.max(first))
                } else {
                    last + 1
                };
                let count = 1 + rng.below(5);
                last = at + count - 1;
                ops.push(Op::Append { first: at, count, term });
            }
            5..=6 => {
                commit = (commit + 1 + rng.below(4)).min(last);
                ops.push(Op::HardState(HardState { term, vote: 1, commit }));
            }
            7..=8 => ops.push(Op::Sync),
            // A snapshot of what is applied: committed and synced.
            9 | 10 if commit > snapshot && commit >= first => {
                ops.push(Op::Sync);
                snapshot = commit;
                let keep = rng.below(4);
                first = first.max((commit + 1).saturating_sub(keep));
                ops.push(Op::Snapshot { index: commit, keep });
            }
            11 if rng.below(3) == 0 => {
                term += 1;
                let index = last + 1 + rng.below(4);
                (last, commit, snapshot, first) = (index, index, index, index + 1);
                ops.push(Op::Install { index, term });
            }
            _ => {}
        }
    }
    ops.push(Op::Sync);
    ops
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Image {
    snapshot: (u64, u64),
    hard_state: HardState,
    entries: Vec<(u64, u64)>,
}

fn image_of(s: &WalStorage) -> Image {
    let (first, last) = (s.first_index().unwrap(), s.last_index().unwrap());
    let entries =
        if last >= first { s.entries(first, last + 1, u64::MAX).unwrap() } else { vec![] };
    for e in &entries {
        assert_eq!(e.data, data_of(e.index, e.term), "entry {} intact", e.index);
    }
    let meta = s.current_snapshot();
    Image {
        snapshot: (meta.index, meta.term),
        hard_state: s.initial_state().unwrap().hard_state,
        entries: entries.iter().map(|e| (e.index, e.term)).collect(),
    }
}

fn conf() -> ConfState {
    ConfState { voters: vec![1, 2, 3], ..ConfState::default() }
}

/// Runs the workload; the image after each op, the file-system ops done by then, and
/// whether the op ended with a completed sync.
fn run(disk: &SimFs, ops: &[Op]) -> (Vec<Image>, Vec<u64>, Vec<bool>) {
    let mut s = open(disk).expect("opens");
    let (mut images, mut done, mut synced) =
        (vec![image_of(&s)], vec![disk.op_count()], vec![true]);
    for op in ops {
        let mut sync = false;
        match op {
            Op::Append { first, count, term } => {
                let entries: Vec<Entry> = (*first..first + count)
                    .map(|index| Entry {
                        entry_type: EntryType::Normal,
                        term: *term,
                        index,
                        data: data_of(index, *term).into(),
                        context: raft::Bytes::new(),
                    })
                    .collect();
                s.append(&entries).unwrap();
            }
            Op::HardState(hs) => s.set_hard_state(hs).unwrap(),
            Op::Sync => {
                s.sync().unwrap();
                sync = true;
            }
            Op::Snapshot { index, keep } => {
                let data = image_data(*index);
                let job = s.begin_snapshot(*index, conf(), move |w| w.write_all(&data)).unwrap();
                s.finish_snapshot(job, *keep).unwrap();
                sync = true;
            }
            Op::Install { index, term } => {
                let metadata = SnapshotMetadata { conf_state: conf(), index: *index, term: *term };
                s.apply_snapshot(&Snapshot { data: image_data(*index), metadata }).unwrap();
                s.set_hard_state(&HardState { term: *term, vote: 0, commit: *index }).unwrap();
                s.sync().unwrap();
                sync = true;
            }
        }
        images.push(image_of(&s));
        done.push(disk.op_count());
        synced.push(sync);
    }
    (images, done, synced)
}

#[test]
fn every_crash_state_of_a_node_workload_starts_with_what_was_synced() {
    let seeds: u64 =
        std::env::var("STORAGE_CRASH_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let mut checked = 0;
    for seed in 1..=seeds {
        let ops = workload(seed);
        let (_, reference, _) = run(&SimFs::new(), &ops);
        let total = *reference.last().unwrap();
        for k in 1..=total {
            let disk = SimFs::new();
            disk.arm_capture(k);
            let (images, done_at, synced) = run(&disk, &ops);
            let crashed = disk.take_captured().expect("captured");
            let done = done_at.iter().take_while(|&&d| d < k).count();
            if done == 0 {
                continue;
            }
            let last_sync = (0..done).rev().find(|&m| synced[m]).unwrap();
            let allowed = last_sync..=done.min(images.len() - 1);
            let n = crashed.unsynced_items();
            let mut choices = vec![vec![false; n], vec![true; n]];
            for i in 0..n.min(16) {
                choices.push((0..n).map(|j| j == i).collect());
                choices.push((0..n).map(|j| j != i).collect());
            }
            for choice in choices {
                let what = format!(
                    "seed {seed}, power cut before fs op {k} of {total} ({:?})",
                    ops.get(done.saturating_sub(1))
                );
                let image = crashed.power_cut(&mut |i| choice[i]);
                let s = open(&image).unwrap_or_else(|e| panic!("{what}: does not open: {e}"));
                let got = image_of(&s);
                // A snapshot is put in force, then the log compacted: between the two, the
                // snapshot's state with entries before it not yet dropped.
                let compaction_pending = |want: &Image| {
                    want.snapshot == got.snapshot
                        && want.hard_state == got.hard_state
                        && got.entries.ends_with(&want.entries)
                        && got.entries.len() > want.entries.len()
                };
                // An installed snapshot's marker is written before the hard state after it:
                // between the two, the old hard state, its commit at least the snapshot's.
                let hard_state_pending = |m: usize| {
                    let before = images[m.saturating_sub(1)].hard_state;
                    let commit = before.commit.max(got.snapshot.0);
                    images[m].snapshot == got.snapshot
                        && images[m].entries == got.entries
                        && got.hard_state == HardState { commit, ..before }
                };
                assert!(
                    allowed.clone().any(|m| {
                        images[m] == got || compaction_pending(&images[m]) || hard_state_pending(m)
                    }),
                    "{what}: {got:?} is none of the states since the last sync, from {:?}",
                    images[*allowed.start()]
                );
                let meta = s.current_snapshot().clone();
                if meta.index > 0 {
                    let snapshot = s.load_snapshot().unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_eq!(snapshot.data, image_data(meta.index), "{what}");
                }
                let config = raft::Config { id: 1, applied: meta.index, ..raft::Config::default() };
                if let Err(e) = raft::RawNode::new(&config, s) {
                    panic!("{what}: the core does not start: {e}");
                }
                checked += 1;
            }
        }
    }
    eprintln!("storage crash explorer: {seeds} seeds, {checked} crash states");
    assert!(checked > 100);
}
