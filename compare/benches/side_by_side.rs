//! Committed proposals per second through a three-node in-memory cluster, the project's core
//! and raft-rs 0.7 side by side in one process, through the same loop: the leader proposes a
//! batch of 256-byte entries; every node's Ready is handled as each library's contract says
//! (entries and hard state persisted to its in-memory storage, messages delivered, committed
//! entries counted, advanced) until nothing moves; logs compacted every 10,000 entries.
//!
//! `cargo bench --manifest-path compare/Cargo.toml`: prints each case for both and the ratio
//! (the project's throughput over raft-rs's), the median of five alternating rounds.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Bytes per proposal, as in the project's key-value workload.
const PAYLOAD_SIZE_BYTES: usize = 256;
/// Applied entries kept in storage before the logs are compacted.
const COMPACT_EVERY_ENTRIES: u64 = 10_000;
/// Time each round measures.
const ROUND: Duration = Duration::from_millis(1500);
/// Rounds per case, alternating between the two libraries.
const ROUNDS: usize = 5;

/// One library's three-node cluster driven by the loop.
trait Loop {
    /// Proposes `batch` entries at the leader (one call per entry, or one batch call).
    fn propose(&mut self, batch: usize, as_one_call: bool);
    /// Handles Readies and delivers messages until nothing moves; returns the entries the
    /// leader applied (every node applies them; each counts once).
    fn stabilize(&mut self) -> u64;
    /// Compacts every log up to what all nodes applied.
    fn compact(&mut self);
}

mod ours_loop {
    use super::*;
    use ours::{ConfState, Config, MemoryStorage, Message, RawNode, StateType, Storage};

    pub struct Cluster {
        nodes: Vec<RawNode<MemoryStorage>>,
        in_flight: VecDeque<Message>,
        payload: Vec<u8>,
        applied: Vec<u64>,
    }

    impl Cluster {
        pub fn new(batch_append: bool) -> Cluster {
            let nodes = (1..=3)
                .map(|id| {
                    let config = Config {
                        id,
                        election_tick: 10,
                        heartbeat_tick: 1,
                        max_size_per_msg: 1024 * 1024,
                        max_inflight_msgs: 256,
                        batch_append,
                        ..Config::default()
                    };
                    let cs = ConfState { voters: vec![1, 2, 3], ..ConfState::default() };
                    RawNode::new(&config, MemoryStorage::new_with_conf_state(cs)).expect("node")
                })
                .collect();
            let mut c = Cluster {
                nodes,
                in_flight: VecDeque::new(),
                payload: vec![7; PAYLOAD_SIZE_BYTES],
                applied: vec![0; 3],
            };
            c.nodes[0].campaign().expect("campaign");
            c.stabilize();
            assert_eq!(c.nodes[0].raft.state, StateType::Leader);
            c
        }
    }

    impl Loop for Cluster {
        fn propose(&mut self, batch: usize, as_one_call: bool) {
            if as_one_call {
                let entries = (0..batch)
                    .map(|_| (ours::Bytes::new(), ours::Bytes::from(self.payload.clone())))
                    .collect();
                self.nodes[0].propose_batch(entries).expect("propose");
            } else {
                for _ in 0..batch {
                    self.nodes[0].propose(Vec::new(), self.payload.clone()).expect("propose");
                }
            }
        }

        fn stabilize(&mut self) -> u64 {
            let mut applied = 0;
            loop {
                let mut moved = false;
                for i in 0..3 {
                    let node = &mut self.nodes[i];
                    if !node.has_ready() {
                        continue;
                    }
                    moved = true;
                    let mut rd = node.ready();
                    let store = node.store_mut();
                    store.append(&rd.entries).expect("append");
                    if let Some(hs) = rd.hard_state {
                        store.set_hard_state(hs);
                    }
                    self.in_flight.extend(std::mem::take(&mut rd.messages));
                    for e in &rd.committed_entries {
                        if i == 0 && !e.data.is_empty() {
                            applied += 1;
                        }
                        self.applied[i] = e.index;
                    }
                    node.advance(rd);
                }
                while let Some(m) = self.in_flight.pop_front() {
                    moved = true;
                    let to = m.to as usize - 1;
                    let _ = self.nodes[to].step(m);
                }
                if !moved {
                    return applied;
                }
            }
        }

        fn compact(&mut self) {
            let applied = *self.applied.iter().min().expect("three nodes");
            for node in &mut self.nodes {
                let first = node.store().first_index().expect("first index");
                if applied > first + COMPACT_EVERY_ENTRIES {
                    node.store_mut().compact(applied).expect("compact");
                }
            }
        }
    }
}

mod raftrs_loop {
    use super::*;
    use raftrs::eraftpb::Message;
    use raftrs::prelude::ConfState;
    use raftrs::storage::MemStorage;
    use raftrs::{Config, RawNode, StateRole, Storage};

    pub struct Cluster {
        nodes: Vec<RawNode<MemStorage>>,
        in_flight: VecDeque<Message>,
        payload: Vec<u8>,
        applied: Vec<u64>,
    }

    impl Cluster {
        pub fn new(batch_append: bool) -> Cluster {
            let logger = slog::Logger::root(slog::Discard, slog::o!());
            let nodes = (1..=3)
                .map(|id| {
                    let config = Config {
                        id,
                        election_tick: 10,
                        heartbeat_tick: 1,
                        max_size_per_msg: 1024 * 1024,
                        max_inflight_msgs: 256,
                        batch_append,
                        ..Config::default()
                    };
                    let cs = ConfState::from((vec![1, 2, 3], vec![]));
                    let storage = MemStorage::new_with_conf_state(cs);
                    RawNode::new(&config, storage, &logger).expect("node")
                })
                .collect();
            let mut c = Cluster {
                nodes,
                in_flight: VecDeque::new(),
                payload: vec![7; PAYLOAD_SIZE_BYTES],
                applied: vec![0; 3],
            };
            c.nodes[0].campaign().expect("campaign");
            c.stabilize();
            assert_eq!(c.nodes[0].raft.state, StateRole::Leader);
            c
        }

        fn count(&mut self, i: usize, entries: &[raftrs::eraftpb::Entry]) -> u64 {
            let mut applied = 0;
            for e in entries {
                if i == 0 && !e.data.is_empty() {
                    applied += 1;
                }
                self.applied[i] = e.index;
            }
            applied
        }
    }

    impl Loop for Cluster {
        fn propose(&mut self, batch: usize, _as_one_call: bool) {
            // (raft-rs has no batch call: one propose per entry.)
            for _ in 0..batch {
                self.nodes[0].propose(Vec::new(), self.payload.clone()).expect("propose");
            }
        }

        fn stabilize(&mut self) -> u64 {
            let mut applied = 0;
            loop {
                let mut moved = false;
                for i in 0..3 {
                    if !self.nodes[i].has_ready() {
                        continue;
                    }
                    moved = true;
                    let mut rd = self.nodes[i].ready();
                    self.in_flight.extend(rd.take_messages());
                    let committed = rd.take_committed_entries();
                    applied += self.count(i, &committed);
                    let store = self.nodes[i].store().clone();
                    store.wl().append(rd.entries()).expect("append");
                    if let Some(hs) = rd.hs() {
                        store.wl().set_hardstate(hs.clone());
                    }
                    self.in_flight.extend(rd.take_persisted_messages());
                    let mut light = self.nodes[i].advance(rd);
                    if let Some(commit) = light.commit_index() {
                        store.wl().mut_hard_state().commit = commit;
                    }
                    self.in_flight.extend(light.take_messages());
                    let committed = light.take_committed_entries();
                    applied += self.count(i, &committed);
                    self.nodes[i].advance_apply();
                }
                while let Some(m) = self.in_flight.pop_front() {
                    moved = true;
                    let to = m.to as usize - 1;
                    let _ = self.nodes[to].step(m);
                }
                if !moved {
                    return applied;
                }
            }
        }

        fn compact(&mut self) {
            let applied = *self.applied.iter().min().expect("three nodes");
            for node in &mut self.nodes {
                let first = node.store().first_index().expect("first index");
                if applied > first + COMPACT_EVERY_ENTRIES {
                    node.store().wl().compact(applied).expect("compact");
                }
            }
        }
    }
}

/// Committed proposals per second over one round.
fn round(cluster: &mut dyn Loop, batch: usize, as_one_call: bool) -> f64 {
    let started = Instant::now();
    let (mut applied, mut since_compact) = (0u64, 0u64);
    while started.elapsed() < ROUND {
        cluster.propose(batch, as_one_call);
        let n = cluster.stabilize();
        assert_eq!(n, batch as u64, "every proposal committed and applied");
        applied += n;
        since_compact += n;
        if since_compact >= COMPACT_EVERY_ENTRIES {
            cluster.compact();
            since_compact = 0;
        }
    }
    applied as f64 / started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("numbers"));
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; other arguments keep the cases whose name holds them.
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    println!("committed proposals/s, 3 in-memory nodes, 256-byte entries, median of {ROUNDS}");
    println!("{:<34} {:>14} {:>14} {:>8}", "case", "this core", "raft-rs 0.7", "ratio");
    // (name, proposals per Ready, this core's in one propose_batch call, batch_append on both)
    let cases: [(&str, usize, bool, bool); 5] = [
        ("batch 1", 1, false, false),
        ("batch 64 (64 propose calls)", 64, false, false),
        ("batch 64, batch_append on both", 64, false, true),
        ("batch 1, batch_append on both", 1, false, true),
        ("batch 64 (ours: propose_batch)", 64, true, false),
    ];
    for (name, batch, as_one_call, batch_append) in cases {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let mut cluster = ours_loop::Cluster::new(batch_append);
            ours.push(round(&mut cluster, batch, as_one_call));
            let mut cluster = raftrs_loop::Cluster::new(batch_append);
            theirs.push(round(&mut cluster, batch, as_one_call));
        }
        let (o, t) = (median(ours), median(theirs));
        println!("{name:<34} {o:>14.0} {t:>14.0} {:>7.2}x", o / t);
    }
}
