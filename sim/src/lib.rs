//! Deterministic simulation of the Raft core.
//!
//! One thread drives 3-7 [`RawNode`]s over [`MemoryStorage`] from a single `u64` seed: ticks
//! at uneven rates (clock drift), messages delayed, dropped, duplicated and reordered,
//! partitions that form and heal, crashes that keep only what earlier Readys persisted,
//! proposals, reads, leader transfers, membership changes (single-step and joint, with
//! learners), snapshots and compaction. After every step it checks Raft's safety properties;
//! at the end it heals everything and checks liveness. The same seed replays the same run.
//!
//! With [`SimConfig::lease_reads`], reads are answered from the leader's lease, and time is
//! modelled ([`clock`]): a global clock, per-node clocks of bounded drift that drive ticks
//! and the lease, and pauses (a process stopped while the others go on, resumed with a read
//! waiting on its socket). Every read's index is checked against the writes completed before
//! it began.

#![warn(clippy::unwrap_used)]

pub mod clock;
pub mod net;
pub mod whole;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::Duration;

use clock::{
    NodeClock, CLOCK_DRIFT_PPM_MAX, STEP_MICROS, TICK_CATCH_UP_ELECTION_TIMEOUTS, TICK_MICROS,
};

use raft::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, Config,
    Entry, EntryType, MemoryStorage, Message, RawNode, ReadOnlyOption, StateType, Storage,
};

/// SplitMix64, seeded: the only source of randomness.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `[0, n)`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `p` per mille.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// How a simulation runs.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed.
    pub seed: u64,
    /// Steps with faults.
    pub steps: u64,
    /// Keep a trace of every event (for replays); otherwise only the last ones.
    pub verbose: bool,
    /// Deliberately break the core: nodes forget their vote now and then (to show that the
    /// checks bite).
    pub forgetful_voters: bool,
    /// Lease-based reads, with modelled time: clocks of bounded drift, ticks from them,
    /// pauses.
    pub lease_reads: bool,
    /// Deliberately break leases: two election timeouts long (what a lease on check-quorum
    /// rounds amounted to), to show that the freshness check bites.
    pub long_leases: bool,
    /// Deliberately break leases: a restarted voter votes at once (the core's
    /// `lease_hold_at_start` reverted), though it may have granted the leader's lease.
    pub restarted_voters_vote: bool,
}

impl SimConfig {
    /// A run of `seed` for `steps` steps, every deliberate bug off, safe reads.
    pub fn new(seed: u64, steps: u64) -> SimConfig {
        SimConfig {
            seed,
            steps,
            verbose: false,
            forgetful_voters: false,
            lease_reads: false,
            long_leases: false,
            restarted_voters_vote: false,
        }
    }
}

/// A broken invariant.
#[derive(Clone, Debug)]
pub struct Violation {
    /// The seed.
    pub seed: u64,
    /// The step.
    pub step: u64,
    /// Which property.
    pub invariant: &'static str,
    /// The values that broke it.
    pub detail: String,
    /// The last events before it.
    pub trace: Vec<String>,
    /// The run was of lease-based reads (`--lease`).
    pub lease_reads: bool,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {} step {}: {} violated: {}",
            self.seed, self.step, self.invariant, self.detail
        )?;
        writeln!(f, "last events:")?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        let mode = if self.lease_reads { "--lease " } else { "" };
        write!(f, "replay: cargo run --release -p raft-sim -- {mode}--replay {}", self.seed)
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Steps run.
    pub steps: u64,
    /// Faults injected (drops, duplicates, partitions, crashes).
    pub faults: u64,
    /// Proposals committed.
    pub committed: u64,
    /// Reads answered.
    pub reads: u64,
    /// Reads answered from a leader's lease.
    pub lease_reads: u64,
    /// Configuration changes applied.
    pub conf_changes: u64,
    /// Snapshots taken or installed.
    pub snapshots: u64,
}

struct Node {
    raw: Option<RawNode<MemoryStorage>>,
    /// What survives a crash: everything earlier Readys persisted.
    storage: MemoryStorage,
    /// Index -> data applied by this incarnation and before (rebuilt from the log on restart).
    applied: u64,
    /// The highest commit index seen in this incarnation.
    commit_seen: u64,
    /// Ticks per step weight: clock drift.
    drift: u64,
    /// The node's clock, when time is modelled (lease reads).
    clock: NodeClock,
}

struct InFlight {
    deliver_at: u64,
    message: Message,
}

/// A simulated cluster.
pub struct Sim {
    cfg: SimConfig,
    rng: Rng,
    nodes: BTreeMap<u64, Node>,
    /// Ids that ever existed; a removed id is never reused.
    next_id: u64,
    network: Vec<InFlight>,
    cut: BTreeSet<(u64, u64)>,
    step: u64,
    trace: VecDeque<String>,
    /// Term -> leader.
    leaders: BTreeMap<u64, u64>,
    /// Index -> (term, data, commit term) of every entry known committed. The commit term is
    /// the term of the node that first saw it committed: at least the term it was committed
    /// in.
    committed: BTreeMap<u64, (u64, raft::Bytes, u64)>,
    /// Index -> data applied, from any node.
    applied: BTreeMap<u64, raft::Bytes>,
    /// Proposals whose entry was seen applied, for the liveness check.
    proposals_applied: BTreeSet<raft::Bytes>,
    /// Read contexts -> the highest applied index of a completed write when the read began.
    reads: BTreeMap<raft::Bytes, u64>,
    /// The highest index applied anywhere (writes completed by then).
    completed_write_index: u64,
    next_proposal: u64,
    /// Reads asked so far: each read's context is unique in the run.
    next_read: u64,
    /// Global time in microseconds (advanced only when time is modelled).
    now_micros: u64,
    /// No writes are proposed for now.
    idle: bool,
    /// Crashed processes to restart at a global time: `(time, id)`.
    quick_restarts: Vec<(u64, u64)>,
    /// After the faulty phase: no drops, duplicates or delays.
    reliable: bool,
    /// Nodes whose removal was committed: stopped for good, as an operator (or etcd) does.
    /// A removed node restarted with its stale configuration could, together with other
    /// stale nodes, form a quorum of an old configuration.
    decommissioned: BTreeSet<u64>,
    /// Voters removed by a joint change, gone once the joint configuration is left.
    pending_removals: BTreeSet<u64>,
    stats: Stats,
}

const TRACE_KEPT: usize = 60;

fn peers_config(id: u64) -> Config {
    Config {
        id,
        election_tick: 10,
        heartbeat_tick: 2,
        max_size_per_msg: 4096,
        max_inflight_msgs: 8,
        check_quorum: true,
        pre_vote: true,
        max_committed_size_per_ready: 8192,
        // Half the nodes merge the appends of one Ready: both behaviours lead in every run.
        batch_append: id % 2 == 1,
        ..Config::default()
    }
}

impl Sim {
    /// A cluster of 3-7 voters chosen by the seed.
    pub fn new(cfg: SimConfig) -> Sim {
        let mut rng = Rng::new(cfg.seed);
        let n = 3 + rng.below(5);
        // Leases are most exposed in three-node clusters (one voter besides the leader makes
        // its quorum): half of the lease runs have three.
        let n = if cfg.lease_reads && rng.chance(500) { 3 } else { n };
        let voters: Vec<u64> = (1..=n).collect();
        let mut sim = Sim {
            cfg,
            rng,
            nodes: BTreeMap::new(),
            next_id: n + 1,
            network: Vec::new(),
            cut: BTreeSet::new(),
            step: 0,
            trace: VecDeque::new(),
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            applied: BTreeMap::new(),
            proposals_applied: BTreeSet::new(),
            reads: BTreeMap::new(),
            completed_write_index: 0,
            next_proposal: 1,
            next_read: 1,
            now_micros: 0,
            quick_restarts: Vec::new(),
            idle: false,
            reliable: false,
            decommissioned: BTreeSet::new(),
            pending_removals: BTreeSet::new(),
            stats: Stats::default(),
        };
        // Bootstrapped through the log (`Config.peers`), so that a node added later learns
        // every member by replaying it.
        for &id in &voters {
            sim.add_node(id, voters.clone());
        }
        sim
    }

    /// A node's configuration: the simulation's, with lease reads when asked.
    fn node_config(&self, id: u64) -> Config {
        let config = peers_config(id);
        if !self.cfg.lease_reads {
            return config;
        }
        let tick = Duration::from_micros(TICK_MICROS);
        let lease_duration = if self.cfg.long_leases {
            tick * 2 * config.election_tick as u32
        } else {
            // raftd's rule: (election-tick - 1) ticks less 10%.
            config.lease_duration_for(tick, 10)
        };
        Config { read_only_option: ReadOnlyOption::LeaseBased, lease_duration, ..config }
    }

    fn add_node(&mut self, id: u64, peers: Vec<u64>) {
        let drift = 1 + self.rng.below(3);
        let rate_ppm =
            1_000_000 - CLOCK_DRIFT_PPM_MAX + self.rng.below(2 * CLOCK_DRIFT_PPM_MAX + 1);
        let mut clock = NodeClock::new(rate_ppm, self.rng.below(1_000_000_000));
        clock.restart(self.now_micros);
        let mut node = Node {
            raw: None,
            storage: MemoryStorage::new(),
            applied: 0,
            commit_seen: 0,
            drift,
            clock,
        };
        let config = Config { peers, ..self.node_config(id) };
        let mut raw = RawNode::new(&config, node.storage.clone()).expect("valid node");
        raw.raft.seed_election_rng(self.rng.next_u64());
        node.raw = Some(raw);
        self.nodes.insert(id, node);
    }

    fn log(&mut self, event: String) {
        if self.cfg.verbose {
            println!("[{}] {event}", self.step);
        }
        self.trace.push_back(format!("[{}] {event}", self.step));
        if self.trace.len() > TRACE_KEPT {
            self.trace.pop_front();
        }
    }

    fn violation(&self, invariant: &'static str, detail: String) -> Violation {
        Violation {
            seed: self.cfg.seed,
            step: self.step,
            invariant,
            detail,
            trace: self.trace.iter().cloned().collect(),
            lease_reads: self.cfg.lease_reads,
        }
    }

    /// Runs the faulty phase, then heals and checks liveness.
    pub fn run(mut self) -> Result<Stats, Violation> {
        for _ in 0..self.cfg.steps {
            self.step += 1;
            self.random_action();
            self.process_all()?;
        }
        self.heal_and_settle()?;
        self.stats.steps = self.step;
        Ok(self.stats)
    }

    fn random_ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    fn pick(&mut self) -> u64 {
        let ids = self.random_ids();
        ids[self.rng.below(ids.len() as u64) as usize]
    }

    fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .filter_map(|(&id, n)| {
                n.raw
                    .as_ref()
                    .filter(|r| r.raft.state == StateType::Leader)
                    .map(|r| (r.raft.term, id))
            })
            .max()
            .map(|(_, id)| id)
    }

    fn random_action(&mut self) {
        if self.cfg.lease_reads {
            self.advance_time();
        }
        let roll = self.rng.below(1000);
        match roll {
            // With modelled time, ticks come from the clocks; a process is stopped instead.
            0..=9 if self.cfg.lease_reads => self.pause(),
            // Reads at a node that believes it leads (a deposed one included): the reads a
            // lease answers.
            10..=209 if self.cfg.lease_reads => {
                let leaders: Vec<u64> = self
                    .nodes
                    .iter()
                    .filter(|(_, n)| {
                        n.raw.as_ref().is_some_and(|r| r.raft.state == StateType::Leader)
                    })
                    .map(|(&id, _)| id)
                    .collect();
                if !leaders.is_empty() {
                    let id = leaders[self.rng.below(leaders.len() as u64) as usize];
                    self.read_at(id);
                }
            }
            0..=499 if self.cfg.lease_reads => {}
            0..=499 => {
                let id = self.pick();
                let ticks = self.nodes[&id].drift;
                if let Some(raw) = self.nodes.get_mut(&id).and_then(|n| n.raw.as_mut()) {
                    for _ in 0..ticks {
                        raw.tick();
                    }
                }
            }
            // With modelled time, writes come in bursts between idle spells (a log that does
            // not move lets a candidate cut off from the leader be as up to date as a voter).
            500..=504 if self.cfg.lease_reads => {
                self.idle = !self.idle;
                self.log(format!("writes {}", if self.idle { "pause" } else { "resume" }));
            }
            500..=649 if self.idle => {}
            500..=649 => self.propose(),
            650..=699 => self.read(),
            // With modelled time a step is 10 ms: partitions change a fifth as often, so that
            // they outlast election timeouts as they do when a step is about a tick.
            700..=719 if self.cfg.lease_reads && !self.rng.chance(200) => {}
            700..=719 => {
                // Partitions form and heal.
                self.stats.faults += 1;
                if self.cut.is_empty() || self.rng.chance(500) {
                    let a = self.pick();
                    for b in self.random_ids() {
                        if b != a && self.rng.chance(600) {
                            self.cut.insert((a, b));
                            self.cut.insert((b, a));
                        }
                    }
                    self.log(format!("partition around {a}: {:?}", self.cut));
                } else {
                    self.cut.clear();
                    self.log("heal".to_string());
                }
            }
            720..=729 => self.crash_restart(),
            730..=749 if self.idle => {}
            730..=739 => self.transfer(),
            740..=749 => self.membership(),
            750..=764 => self.snapshot(),
            765..=774 if self.cfg.forgetful_voters => {
                // The deliberate bug: a node forgets whom it voted for, as one restarted with
                // its vote unsynced would; such a node also forgets whom it followed (followers
                // ignore a second leader in a term they know a leader of).
                let id = self.pick();
                if let Some(raw) = self.nodes.get_mut(&id).and_then(|n| n.raw.as_mut()) {
                    if raw.raft.state != StateType::Leader {
                        raw.raft.vote = 0;
                        raw.raft.lead = 0;
                    }
                }
            }
            _ => {}
        }
        self.deliver_due();
    }

    /// Moves time on by a step: each running process catches up its clock and its ticks; a
    /// process whose pause ended first reads the request waiting on its socket.
    fn advance_time(&mut self) {
        self.now_micros += STEP_MICROS;
        let now = self.now_micros;
        let (due, later) = self.quick_restarts.iter().partition(|&&(at, _)| at <= now);
        self.quick_restarts = later;
        for (_, id) in due {
            self.crash_restart_id(id);
            self.log(format!("restart {id} at once"));
        }
        for id in self.random_ids() {
            let node = self.nodes.get_mut(&id).expect("listed");
            let Some(raw) = node.raw.as_mut() else { continue };
            if node.clock.paused(now) {
                continue;
            }
            let resumed = node.clock.paused_until_micros != 0;
            node.clock.paused_until_micros = 0;
            raw.advance_clock(node.clock.lease_clock(now));
            let most = raw.raft.election_timeout as u64 * TICK_CATCH_UP_ELECTION_TIMEOUTS;
            for _ in 0..node.clock.ticks_due(now, most) {
                raw.tick();
            }
            if resumed {
                self.log(format!("resume {id}, a read waiting"));
                self.read_at(id);
            }
        }
    }

    /// Stops a running process for up to three election timeouts.
    fn pause(&mut self) {
        let id = self.pick();
        let now = self.now_micros;
        let node = self.nodes.get_mut(&id).expect("picked");
        if node.raw.is_none() || node.clock.paused(now) {
            return;
        }
        let longest = 3 * peers_config(id).election_tick as u64 * TICK_MICROS;
        let micros = STEP_MICROS + self.rng.below(longest);
        node.clock.paused_until_micros = now + micros;
        self.stats.faults += 1;
        self.log(format!("pause {id} for {} ms", micros / 1000));
    }

    /// The node, if it runs (not crashed, not paused).
    fn running(&mut self, id: u64) -> Option<&mut RawNode<MemoryStorage>> {
        let now = self.now_micros;
        self.nodes.get_mut(&id).filter(|n| !n.clock.paused(now)).and_then(|n| n.raw.as_mut())
    }

    fn propose(&mut self) {
        let id = self.pick();
        let data = format!("p{}", self.next_proposal).into_bytes();
        self.next_proposal += 1;
        if let Some(raw) = self.running(id) {
            let _ = raw.propose(vec![], data);
        }
    }

    fn read(&mut self) {
        let id = self.pick();
        self.read_at(id);
    }

    /// A linearizable read at `id`: its index must be at least that of every write completed
    /// before now. Its context is unique in the run (two reads sharing one could be answered
    /// by each other's confirmations).
    fn read_at(&mut self, id: u64) {
        let ctx = format!("r{}", self.next_read).into_bytes();
        self.next_read += 1;
        let floor = self.completed_write_index;
        let now = self.now_micros;
        let lease_reads = self.cfg.lease_reads;
        if let Some(node) = self.nodes.get_mut(&id).filter(|n| !n.clock.paused(now)) {
            let lease_clock = node.clock.lease_clock(now);
            let Some(raw) = node.raw.as_mut() else { return };
            if lease_reads {
                raw.advance_clock(lease_clock);
            }
            if raw.read_index(ctx.clone()).is_ok() {
                self.reads.insert(ctx.into(), floor);
            }
        }
    }

    fn crash_restart(&mut self) {
        let id = self.pick();
        if self.decommissioned.contains(&id) {
            return;
        }
        self.stats.faults += 1;
        let node = self.nodes.get_mut(&id).expect("picked");
        if node.raw.take().is_some() {
            self.log(format!("crash {id}"));
            if self.cfg.lease_reads && self.rng.chance(500) {
                // Back within a lease: the process restarts at once (a supervisor).
                let at = self.now_micros + STEP_MICROS * (1 + self.rng.below(20));
                self.quick_restarts.push((at, id));
            }
        } else {
            // Restart from what was persisted: the state machine is rebuilt by re-applying
            // from the snapshot, so `applied` restarts there.
            // The state machine restarts from the snapshot and re-applies the log after it,
            // configuration changes included: the configuration to start from is the
            // snapshot's, not the latest one applied before the crash.
            let snapshot = node.storage.snapshot(0).unwrap_or_default();
            let snapshot_index = snapshot.metadata.index;
            node.storage.set_conf_state(snapshot.metadata.conf_state);
            let config = Config { applied: snapshot_index, ..self.node_config(id) };
            let node = self.nodes.get_mut(&id).expect("picked");
            match RawNode::new(&config, node.storage.clone()) {
                Ok(mut raw) => {
                    raw.raft.seed_election_rng(self.rng.next_u64());
                    node.clock.restart(self.now_micros);
                    if self.cfg.restarted_voters_vote {
                        raw.raft.lease_hold_at_start = false;
                    }
                    node.raw = Some(raw);
                    node.applied = snapshot_index;
                    node.commit_seen = 0;
                    self.log(format!("restart {id} from applied {snapshot_index}"));
                }
                Err(e) => self.log(format!("restart {id} failed: {e}")),
            }
        }
    }

    fn transfer(&mut self) {
        let Some(leader) = self.leader() else { return };
        let to = self.pick();
        if let Some(raw) = self.running(leader) {
            if raw.transfer_leader(to).is_ok() {
                self.log(format!("transfer {leader} -> {to}"));
            }
        }
    }

    fn membership(&mut self) {
        let Some(leader) = self.leader() else { return };
        if self.running(leader).is_none() {
            return;
        }
        let raw = self.nodes[&leader].raw.as_ref().expect("leader runs");
        let conf = raw.raft.prs.conf_state();
        if !conf.voters_outgoing.is_empty() {
            return;
        }
        let roll = self.rng.below(4);
        let change = match roll {
            // Add a new learner (a fresh node that joins empty).
            0 if self.nodes.len() < 7 => {
                let id = self.next_id;
                self.next_id += 1;
                self.add_node(id, Vec::new());
                self.log(format!("new node {id}"));
                ConfChangeV2 {
                    transition: ConfChangeTransition::Auto,
                    changes: vec![ConfChangeSingle {
                        change_type: ConfChangeType::AddLearnerNode,
                        node_id: id,
                    }],
                    context: vec![],
                }
            }
            // Promote a learner.
            1 if !conf.learners.is_empty() => {
                let id = conf.learners[self.rng.below(conf.learners.len() as u64) as usize];
                ConfChange { change_type: ConfChangeType::AddNode, node_id: id, context: vec![] }
                    .into_v2()
            }
            // Remove a voter (never below three).
            2 if conf.voters.len() > 3 => {
                let id = conf.voters[self.rng.below(conf.voters.len() as u64) as usize];
                ConfChange { change_type: ConfChangeType::RemoveNode, node_id: id, context: vec![] }
                    .into_v2()
            }
            // A joint change: promote a learner and remove a voter at once.
            3 if !conf.learners.is_empty() && conf.voters.len() > 3 => {
                let add = conf.learners[0];
                let remove = conf.voters[self.rng.below(conf.voters.len() as u64) as usize];
                let transition = if self.rng.chance(500) {
                    ConfChangeTransition::Implicit
                } else {
                    ConfChangeTransition::Auto
                };
                ConfChangeV2 {
                    transition,
                    changes: vec![
                        ConfChangeSingle { change_type: ConfChangeType::AddNode, node_id: add },
                        ConfChangeSingle {
                            change_type: ConfChangeType::RemoveNode,
                            node_id: remove,
                        },
                    ],
                    context: vec![],
                }
            }
            _ => return,
        };
        self.log(format!("propose conf change {change:?} at {leader}"));
        if let Some(raw) = self.running(leader) {
            let _ = raw.propose_conf_change(vec![], &change);
        }
    }

    fn snapshot(&mut self) {
        let id = self.pick();
        let node = self.nodes.get_mut(&id).expect("picked");
        let Some(raw) = node.raw.as_mut() else { return };
        let applied = raw.raft.raft_log.applied;
        let cs = raw.raft.prs.conf_state();
        let store = raw.store_mut();
        if applied > store.first_index().unwrap_or(1) + 3
            && store.create_snapshot(applied, Some(cs), b"state".to_vec()).is_ok()
        {
            let keep = applied.saturating_sub(2);
            let _ = store.compact(keep.max(store.first_index().unwrap_or(1)));
            node.storage = store.clone();
            self.stats.snapshots += 1;
            self.log(format!("snapshot {id} at {applied}"));
        }
    }

    /// Delivers messages whose time has come (in a shuffled order: reordering).
    fn deliver_due(&mut self) {
        let now = self.step;
        let mut due: Vec<InFlight> = Vec::new();
        let mut rest = Vec::new();
        for m in self.network.drain(..) {
            if m.deliver_at <= now {
                due.push(m);
            } else {
                rest.push(m);
            }
        }
        self.network = rest;
        while !due.is_empty() {
            let i = self.rng.below(due.len() as u64) as usize;
            let m = due.swap_remove(i);
            if self.nodes.get(&m.message.to).is_some_and(|n| n.clock.paused(self.now_micros)) {
                // Waits in the stopped process's socket.
                self.network.push(m);
                continue;
            }
            let m = m.message;
            let reachable = !self.cut.contains(&(m.from, m.to))
                && self.nodes.get(&m.to).is_some_and(|n| n.raw.is_some());
            self.report_snapshot(&m, reachable);
            if !reachable {
                continue;
            }
            if let Some(raw) = self.nodes.get_mut(&m.to).and_then(|n| n.raw.as_mut()) {
                let _ = raw.step(m);
            }
        }
    }

    /// Tells the sender of a snapshot whether it arrived, as a transport does.
    fn report_snapshot(&mut self, m: &Message, delivered: bool) {
        if m.msg_type != raft::MessageType::Snapshot {
            return;
        }
        let status =
            if delivered { raft::SnapshotStatus::Finish } else { raft::SnapshotStatus::Failure };
        if let Some(raw) = self.nodes.get_mut(&m.from).and_then(|n| n.raw.as_mut()) {
            raw.report_snapshot(m.to, status);
        }
    }

    fn send(&mut self, messages: Vec<Message>) {
        for m in messages {
            if self.reliable {
                self.network.push(InFlight { deliver_at: self.step, message: m });
                continue;
            }
            if self.rng.chance(30) {
                self.stats.faults += 1;
                self.report_snapshot(&m, false);
                continue; // Dropped.
            }
            let delay = self.rng.below(4);
            if self.rng.chance(20) {
                self.stats.faults += 1;
                self.network
                    .push(InFlight { deliver_at: self.step + delay + 2, message: m.clone() });
            }
            self.network.push(InFlight { deliver_at: self.step + delay, message: m });
        }
    }

    /// Handles every node's Ready until quiet, checking invariants as things change.
    fn process_all(&mut self) -> Result<(), Violation> {
        let ids = self.random_ids();
        for id in ids {
            self.handle_node(id)?;
        }
        self.check_global()
    }

    fn handle_node(&mut self, id: u64) -> Result<(), Violation> {
        loop {
            let now = self.now_micros;
            let Some(node) = self.nodes.get_mut(&id) else { return Ok(()) };
            let Some(raw) = node.raw.as_mut() else { return Ok(()) };
            if !raw.has_ready() || node.clock.paused(now) {
                return Ok(());
            }
            let mut rd = raw.ready();
            let store = raw.store_mut();
            if let Some(s) = &rd.snapshot {
                let _ = store.apply_snapshot(s.clone());
            }
            store.append(&rd.entries).expect("entries follow the log");
            if let Some(hs) = rd.hard_state {
                store.set_hard_state(hs);
            }
            // Synced: this is what survives a crash.
            node.storage = store.clone();
            let messages = std::mem::take(&mut rd.messages);
            // `advance` needs the committed entries to move the applied index.
            let committed = rd.committed_entries.clone();
            let read_states = std::mem::take(&mut rd.read_states);
            let snapshot_index = rd.snapshot.as_ref().map(|s| s.metadata.index);
            raw.advance(rd);
            if let Some(index) = snapshot_index {
                node.applied = node.applied.max(index);
                self.stats.snapshots += 1;
            }
            self.send(messages);
            for entry in committed {
                self.apply(id, &entry)?;
            }
            let applied_now = self.nodes[&id].applied;
            for rs in read_states {
                if let Some(floor) = self.reads.remove(&rs.request_ctx) {
                    if rs.index < floor {
                        return Err(self.violation(
                            "ReadIndex freshness",
                            format!(
                                "node {id} read at index {} but a write had completed at {floor}",
                                rs.index
                            ),
                        ));
                    }
                    let _ = applied_now;
                    self.stats.reads += 1;
                    if rs.lease_expiry.is_some() {
                        self.stats.lease_reads += 1;
                    }
                }
            }
        }
    }

    fn apply(&mut self, id: u64, entry: &Entry) -> Result<(), Violation> {
        let node = self.nodes.get_mut(&id).expect("applying");
        if entry.index <= node.applied {
            return Ok(()); // Covered by a snapshot already.
        }
        if entry.index != node.applied + 1 {
            let detail = format!("node {id} applied {} after {}", entry.index, node.applied);
            return Err(self.violation("applied index order", detail));
        }
        node.applied = entry.index;
        match entry.entry_type {
            EntryType::Normal => {}
            EntryType::ConfChange | EntryType::ConfChangeV2 => {
                let cc = if entry.entry_type == EntryType::ConfChange {
                    ConfChange::decode(&entry.data).map(ConfChange::into_v2)
                } else {
                    ConfChangeV2::decode(&entry.data)
                };
                if let Ok(cc) = cc {
                    let raw = node.raw.as_mut().expect("applying on a running node");
                    if let Ok(cs) = raw.apply_conf_change(&cc) {
                        raw.store_mut().set_conf_state(cs.clone());
                        node.storage = raw.store().clone();
                        self.stats.conf_changes += 1;
                        // Once the configuration without a node is in force (not joint), the
                        // node is gone for good. Removals inside a joint change take effect
                        // when the joint configuration is left.
                        let mut gone = Vec::new();
                        for change in &cc.changes {
                            if change.change_type == ConfChangeType::RemoveNode {
                                if cs.voters_outgoing.is_empty() {
                                    gone.push(change.node_id);
                                } else {
                                    self.pending_removals.insert(change.node_id);
                                }
                            }
                        }
                        if cc.leave_joint_requested() {
                            gone.extend(std::mem::take(&mut self.pending_removals));
                        }
                        for id in gone {
                            let still_member = cs.voters.contains(&id) || cs.learners.contains(&id);
                            if !still_member && self.decommissioned.insert(id) {
                                if let Some(n) = self.nodes.get_mut(&id) {
                                    n.raw = None;
                                }
                                self.log(format!(
                                    "decommission {id} (removed at {} by {cc:?}, config {cs:?})",
                                    entry.index
                                ));
                            }
                        }
                    }
                }
            }
        }
        match self.applied.get(&entry.index) {
            Some(data) if *data != entry.data => {
                let detail = format!(
                    "node {id} applied {:?} at {}, another node {:?}",
                    entry.data, entry.index, data
                );
                return Err(self.violation("state machine safety", detail));
            }
            Some(_) => {}
            None => {
                self.applied.insert(entry.index, entry.data.clone());
                if entry.entry_type == EntryType::Normal && !entry.data.is_empty() {
                    self.proposals_applied.insert(entry.data.clone());
                    self.stats.committed += 1;
                }
            }
        }
        self.completed_write_index = self.completed_write_index.max(entry.index);
        Ok(())
    }

    /// Checks election safety, log matching, leader completeness and commit monotonicity.
    fn check_global(&mut self) -> Result<(), Violation> {
        let ids = self.random_ids();
        let mut events = Vec::new();
        for id in ids {
            let node = &self.nodes[&id];
            let Some(raw) = node.raw.as_ref() else { continue };
            let r = &raw.raft;
            if r.state == StateType::Leader {
                match self.leaders.get(&r.term) {
                    Some(&other) if other != id => {
                        let detail = format!("nodes {other} and {id} both led term {}", r.term);
                        return Err(self.violation("election safety", detail));
                    }
                    Some(_) => {}
                    None => {
                        self.leaders.insert(r.term, id);
                        events.push(format!("{id} leads term {}", r.term));
                        // Leader completeness (Raft §5.4): every entry committed in an earlier
                        // term that it can still see is in its log with the same term. (A
                        // leader elected late, by votes of its term that arrived after a later
                        // term committed entries, need not hold those.)
                        let first = r.raft_log.first_index();
                        let earlier = self
                            .committed
                            .range(first..)
                            .filter(|(_, (_, _, commit_term))| *commit_term < r.term);
                        for (&index, (term, _, _)) in earlier {
                            match r.raft_log.term(index) {
                                Ok(t) if t == *term => {}
                                other => {
                                    let detail = format!(
                                        "leader {id} of term {} has {other:?} at committed index {index} (term {term})",
                                        r.term
                                    );
                                    return Err(self.violation("leader completeness", detail));
                                }
                            }
                        }
                    }
                }
            }
            let commit = r.raft_log.committed;
            if commit < node.commit_seen {
                let detail = format!("node {id} commit went from {} to {commit}", node.commit_seen);
                return Err(self.violation("commit monotonicity", detail));
            }
            // Log matching on committed entries: same index, same term and data everywhere.
            let first = r.raft_log.first_index().max(node.commit_seen + 1);
            if commit >= first {
                let entries =
                    r.raft_log.slice(first, commit + 1, raft::NO_LIMIT).unwrap_or_default();
                for e in entries {
                    match self.committed.get(&e.index) {
                        Some((t, d, _)) if *t != e.term || *d != e.data => {
                            let detail = format!(
                                "node {id} committed ({}, {}) at {}, another node ({t}, {d:?})",
                                e.term,
                                String::from_utf8_lossy(&e.data),
                                e.index
                            );
                            return Err(self.violation("log matching", detail));
                        }
                        Some(_) => {}
                        None => {
                            self.committed.insert(e.index, (e.term, e.data.clone(), r.term));
                        }
                    }
                }
            }
            self.nodes.get_mut(&id).expect("exists").commit_seen = commit;
        }
        for e in events {
            self.log(e);
        }
        if self.cfg.lease_reads {
            self.check_lease_exclusivity()?;
        }
        Ok(())
    }

    /// Raft thesis §6.4.1: while a leader's lease holds (by its own clock, now), no later
    /// leader has committed anything, or a read it answers from the lease could miss that
    /// write. Checked at every step, whether or not a read arrives in the window.
    fn check_lease_exclusivity(&self) -> Result<(), Violation> {
        let Some((&index, &(term, _, _))) =
            self.committed.iter().max_by_key(|(_, (term, _, _))| *term)
        else {
            return Ok(());
        };
        for (&id, node) in &self.nodes {
            let Some(raw) = node.raw.as_ref() else { continue };
            let local_now = node.clock.lease_clock(self.now_micros);
            let Some(expiry) = raw.raft.lease_expiry().filter(|&e| e > local_now) else {
                continue;
            };
            if raw.raft.term < term {
                let detail = format!(
                    "node {id} leads term {} with a lease until {expiry:?} (its clock: \
                     {local_now:?}), but an entry of term {term} is committed at {index}",
                    raw.raft.term
                );
                return Err(self.violation("lease exclusivity", detail));
            }
        }
        Ok(())
    }

    /// Stops the faults, heals, restarts crashed nodes, and requires a leader and every
    /// proposal committed and applied everywhere within a bound.
    fn heal_and_settle(&mut self) -> Result<(), Violation> {
        self.cut.clear();
        self.reliable = true;
        for node in self.nodes.values_mut() {
            node.clock.paused_until_micros = 0;
        }
        for id in self.random_ids() {
            if self.nodes[&id].raw.is_none() {
                self.crash_restart_id(id);
            }
        }
        self.log("heal everything".to_string());
        let bound = 3000;
        let mut marker_proposed = false;
        for _ in 0..bound {
            self.step += 1;
            if self.cfg.lease_reads {
                self.advance_time();
            } else {
                for id in self.random_ids() {
                    if let Some(raw) = self.nodes.get_mut(&id).and_then(|n| n.raw.as_mut()) {
                        raw.tick();
                    }
                }
            }
            // Reliable delivery now.
            let due: Vec<InFlight> = self.network.drain(..).collect();
            for m in due {
                self.report_snapshot(&m.message, true);
                if let Some(raw) = self.nodes.get_mut(&m.message.to).and_then(|n| n.raw.as_mut()) {
                    let _ = raw.step(m.message);
                }
            }
            self.process_all_reliable()?;
            // A marker proposed to a leader that then lost its place may never commit:
            // propose it again now and then until it applies.
            if self.step % 100 == 0 && !self.proposals_applied.contains(b"final".as_slice()) {
                marker_proposed = false;
            }
            if let Some(leader) = self.leader() {
                if !marker_proposed {
                    if let Some(raw) = self.nodes.get_mut(&leader).and_then(|n| n.raw.as_mut()) {
                        marker_proposed = raw.propose(vec![], b"final".to_vec()).is_ok();
                    }
                }
                let members = self.nodes[&leader]
                    .raw
                    .as_ref()
                    .map(|r| r.raft.prs.conf_state())
                    .unwrap_or_default();
                let target =
                    self.nodes[&leader].raw.as_ref().map_or(0, |r| r.raft.raft_log.committed);
                let done = marker_proposed
                    && self.proposals_applied.contains(b"final".as_slice())
                    && members.voters.iter().chain(&members.learners).all(|id| {
                        self.nodes.get(id).is_some_and(|n| {
                            n.raw.as_ref().is_some_and(|r| r.raft.raft_log.applied >= target)
                        })
                    });
                if done {
                    return Ok(());
                }
            }
        }
        let states: Vec<String> = self
            .nodes
            .iter()
            .map(|(id, n)| match &n.raw {
                Some(r) => format!(
                    "{id}: {} term {} lead {} commit {} applied {} log [{}, {}] last term {}",
                    r.raft.state,
                    r.raft.term,
                    r.raft.lead,
                    r.raft.raft_log.committed,
                    r.raft.raft_log.applied,
                    r.raft.raft_log.first_index(),
                    r.raft.raft_log.last_index(),
                    r.raft.raft_log.last_term()
                ),
                None => format!("{id}: down"),
            })
            .collect();
        let progress = self
            .leader()
            .and_then(|l| self.nodes[&l].raw.as_ref())
            .map(|r| {
                let st = r.status();
                let prs: Vec<String> = st
                    .progress
                    .iter()
                    .map(|(id, p)| {
                        format!(
                            "{id}: {:?} matched {} next {} paused {}",
                            p.state, p.matched, p.next_idx, p.paused
                        )
                    })
                    .collect();
                format!(
                    "leader config {:?}, progress {prs:?}, first index {}",
                    st.conf_state,
                    r.raft.raft_log.first_index()
                )
            })
            .unwrap_or_default();
        Err(self.violation(
            "liveness",
            format!("no progress within {bound} steps after healing: {states:?}; {progress}"),
        ))
    }

    fn crash_restart_id(&mut self, id: u64) {
        if self.nodes[&id].raw.is_none() && !self.decommissioned.contains(&id) {
            // Reuse the restart path.
            let node = self.nodes.get_mut(&id).expect("exists");
            // The state machine restarts from the snapshot and re-applies the log after it,
            // configuration changes included: the configuration to start from is the
            // snapshot's, not the latest one applied before the crash.
            let snapshot = node.storage.snapshot(0).unwrap_or_default();
            let snapshot_index = snapshot.metadata.index;
            node.storage.set_conf_state(snapshot.metadata.conf_state);
            let config = Config { applied: snapshot_index, ..self.node_config(id) };
            let node = self.nodes.get_mut(&id).expect("exists");
            if let Ok(mut raw) = RawNode::new(&config, node.storage.clone()) {
                raw.raft.seed_election_rng(self.rng.next_u64());
                node.clock.restart(self.now_micros);
                if self.cfg.restarted_voters_vote {
                    raw.raft.lease_hold_at_start = false;
                }
                node.raw = Some(raw);
                node.applied = snapshot_index;
                node.commit_seen = 0;
            }
        }
    }

    fn process_all_reliable(&mut self) -> Result<(), Violation> {
        for id in self.random_ids() {
            self.handle_node(id)?;
        }
        for m in self.network.iter_mut() {
            m.deliver_at = 0;
        }
        self.check_global()
    }
}

/// Runs one seed.
pub fn run_seed(seed: u64, steps: u64, verbose: bool) -> Result<Stats, Violation> {
    Sim::new(SimConfig { verbose, ..SimConfig::new(seed, steps) }).run()
}

/// Runs one seed with lease-based reads and modelled time (drift, pauses).
pub fn run_lease_seed(seed: u64, steps: u64, verbose: bool) -> Result<Stats, Violation> {
    Sim::new(SimConfig { verbose, lease_reads: true, ..SimConfig::new(seed, steps) }).run()
}
