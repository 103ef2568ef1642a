//! The whole node under simulation (issue 17): N `raftd` nodes, the daemon's own code
//! (`raftd::node::Node`: its event loop's turn, sessions, reads, snapshots, WAL recovery),
//! run in one thread from one seed over the simulated network ([`crate::net`]), simulated
//! disks (`wal::fs::SimFs`: a crash keeps a random part of what was not synced) and manual
//! clocks, with clients that put and read over the client protocol.
//!
//! Faults: partitions of one node from the others (its streams held, as TCP holds them),
//! resets of its streams, crashes with power loss (the node's process is dropped, its disk
//! keeps a random subset of its unsynced writes, and it restarts later from it), of one node
//! or of all of them at once (they come back one by one), and pauses (a process stopped, as by
//! SIGSTOP or a long stall, while time goes on: it does not turn, its clock runs). Each node's
//! monotonic clock runs at its own rate, within [`crate::clock::CLOCK_DRIFT_PPM_MAX`] of true
//! time, and its wall clock (which stamps session commands) is offset by up to two seconds.
//! With [`WholeConfig::lease`] the nodes answer reads from the leader's lease
//! (`--read-only-option lease-based`), so a pause or a drifting clock that let a deposed
//! leader answer from its lease shows as a stale read.
//!
//! Checks, on the client history: every key is written once, by one put, with a value of its
//! own, so each key is a register written once (with [`WholeConfig::cas`], a register its one
//! writer moves through versions), and the history is linearizable exactly when no read
//! returns a value before its write was invoked, and no read that began after a write was
//! acknowledged misses it. After every step, the core's safety properties over the running
//! nodes (one leader per term; a committed index holds the same entry everywhere). At the end,
//! with every fault healed, each acknowledged write is in every node's state machine:
//! acknowledged writes survived every crash. A node that stops on anything but a full disk,
//! or panics, fails the seed.
//!
//! The other modes (each from a random stream of its own, so that a mode's seeds replay as
//! they did before the next mode came): [`WholeConfig::membership`] (an operator replacing
//! disks, in place first), [`WholeConfig::disk_faults`], [`WholeConfig::cas`],
//! [`WholeConfig::single_voter`], [`WholeConfig::hostile`] (impostors, `whole/impostor.rs`)
//! and [`WholeConfig::one_way`].

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use codec::FrameDecoder;
use raftd::args::Args;
use raftd::clock::ManualClock;
use raftd::node::{Booting, Node, NodeConfig, Started};
use raftd::protocol::{
    AdminReply, AdminRequest, ClientError, ClientRequest, ClientResponse, Hello, HelloAck, Op,
    OpResult,
};
use wal::fs::SimFs;

use crate::net::{Endpoint, SimNet, SimStream, World};
use crate::Rng;

mod impostor;

/// Simulated time per step.
const STEP: Duration = Duration::from_millis(1);
/// The nodes' tick (`--tick-interval-ms`); elections after 10 ticks.
const TICK_MS: u64 = 10;
/// Steps given to the healed cluster at the end to settle and answer the final reads.
const SETTLE_STEPS: u64 = 5_000;
/// A client waits this long for an answer before it gives the connection up.
const CLIENT_PATIENCE: Duration = Duration::from_millis(1_500);
/// The same with timing faults: clients leave a paused or cut-off node sooner, so that writes
/// go on at a new leader while the old one may still believe it leads.
const CLIENT_PATIENCE_TIMING: Duration = Duration::from_millis(300);
/// A crash within a node's turn interrupts one of its next this many disk operations.
const CRASH_OPS_AHEAD: u64 = 8;
/// Largest frame a test client reads.
const CLIENT_FRAME_MAX: usize = 1 << 20;
/// Longest pause of a node, in milliseconds: three election timeouts (10 ticks of
/// [`TICK_MS`]), long enough for the others to elect a new leader and write under it.
const PAUSE_MS_MAX: u64 = 300;
/// Chance per step that the operator, idle, starts replacing a node's disk, per mille.
const REPLACE_PER_MILLE: u64 = 1;
/// The operator's disk replacements done in place, not removing the member first, per mille.
const WIPE_IN_PLACE_PER_MILLE: u64 = 300;
/// The operator waits this long after a refusal before asking again.
const OPERATOR_RETRY: Duration = Duration::from_millis(50);
/// A change a leader says is in force already is taken as done when a leader says so again
/// this long after (five election timeouts: any deposed leader has stepped down by then).
const OPERATOR_CONFIRM_AFTER: Duration = Duration::from_millis(500);
/// The roaming reader's requests that ask for a leader transfer, per mille.
const TRANSFER_PER_MILLE: u64 = 20;
/// A writer's requests that are compare-and-swaps (with [`WholeConfig::cas`]), per mille.
const CAS_PER_MILLE: u64 = 300;
/// Of those, the ones where the writer starts a new session instead, per mille.
const SESSION_RENEW_PER_MILLE: u64 = 10;
/// Largest offset of a node's wall clock from true time, in milliseconds.
const WALL_SKEW_MS_MAX: u64 = 2_000;

/// How one whole-node simulation runs.
#[derive(Clone, Debug)]
pub struct WholeConfig {
    /// The seed.
    pub seed: u64,
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Clients.
    pub clients: usize,
    /// Steps (1 ms of simulated time each) with faults.
    pub steps: u64,
    /// Timing faults: clocks that drift and wall clocks offset, and pauses. Drawn from a
    /// random stream of their own, so that runs without them are those of the seeds before
    /// them (the bite seeds stay valid).
    pub timing: bool,
    /// Reads answered from the leader's lease instead of a heartbeat round (with timing
    /// faults: they are what a lease must survive).
    pub lease: bool,
    /// An operator replaces nodes' disks: removes a member, gives it an empty disk and a new
    /// incarnation, starts it with `--join`, adds it back as a learner and promotes it, all
    /// over the admin protocol while the faults go on. Drawn from a stream of its own too.
    pub membership: bool,
    /// Disk faults: a node's disk full for a while (writes past it fail with ENOSPC: the node
    /// stops, and starts again once there is room), and the time its writes and syncs take
    /// (its loop is blocked meanwhile: after a turn that wrote, it does not turn for a few
    /// milliseconds, now and then for tens or hundreds). A stream of its own too.
    pub disk_faults: bool,
    /// Compare-and-swaps: each writer moves its own keys through versions with CAS (retried
    /// in its session until answered, so a retry applied twice shows as a swap refused), and
    /// now and then sends one whose expectation is stale on purpose (it must be refused,
    /// naming the current version). Writers also start a new session now and then, as a
    /// restarted client does, with `--max-sessions` at the number of writers, so that
    /// sessions are evicted under retries. A stream of its own too.
    pub cas: bool,
    /// One voter and learners, the way the README grows a cluster: node 1 bootstraps alone,
    /// the others start with `--join` on empty disks and the operator adds them as learners
    /// (never promoting them). The voter commits what it alone has synced, and its learners
    /// apply and serve it; a power loss of the voter must take back nothing they applied.
    /// Not with [`WholeConfig::membership`].
    pub single_voter: bool,
    /// Impostors on the peer port: strangers and members' ids with wrong incarnations, which
    /// must be refused, and members whose process is down spoken for with their real
    /// credentials, sending frames a node must drop without effect (see `whole/impostor.rs`).
    /// A stream of its own too.
    pub hostile: bool,
    /// One-way links: a node's outbound (or inbound) bytes lost for 0.1-1.6 s while the other
    /// direction still delivers, as a firewall rule on one direction does (the partitions of
    /// every mode cut both ways). A stream of its own too.
    pub one_way: bool,
}

impl WholeConfig {
    /// Three nodes, three clients, `steps` steps.
    pub fn new(seed: u64, steps: u64) -> WholeConfig {
        WholeConfig {
            seed,
            nodes: 3,
            clients: 3,
            steps,
            timing: false,
            lease: false,
            membership: false,
            disk_faults: false,
            cas: false,
            single_voter: false,
            hostile: false,
            one_way: false,
        }
    }

    /// The same, with one-way links (see [`WholeConfig::one_way`]).
    pub fn with_one_way_links(self) -> WholeConfig {
        WholeConfig { one_way: true, ..self }
    }

    /// The same, with one voter and learners (see [`WholeConfig::single_voter`]).
    pub fn with_single_voter(self) -> WholeConfig {
        WholeConfig { single_voter: true, ..self }
    }

    /// The same, with compare-and-swaps and session evictions (see [`WholeConfig::cas`]).
    pub fn with_cas(self) -> WholeConfig {
        WholeConfig { cas: true, ..self }
    }

    /// The same, with disk faults (see [`WholeConfig::disk_faults`]).
    pub fn with_disk_faults(self) -> WholeConfig {
        WholeConfig { disk_faults: true, ..self }
    }

    /// The same, with an operator replacing disks (see [`WholeConfig::membership`]).
    pub fn with_membership(self) -> WholeConfig {
        WholeConfig { membership: true, ..self }
    }

    /// The same, with timing faults.
    pub fn timed(seed: u64, steps: u64) -> WholeConfig {
        WholeConfig { timing: true, ..WholeConfig::new(seed, steps) }
    }

    /// The same, with timing faults and reads answered from the leader's lease.
    pub fn lease(seed: u64, steps: u64) -> WholeConfig {
        WholeConfig { lease: true, ..WholeConfig::timed(seed, steps) }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WholeOutcome {
    /// Puts acknowledged.
    pub puts_acknowledged: u64,
    /// Reads answered and checked.
    pub reads_checked: u64,
    /// Crashes with power loss.
    pub crashes: u64,
    /// Partitions.
    pub partitions: u64,
    /// Pauses of a running node.
    pub pauses: u64,
    /// Leader transfers a leader accepted.
    pub transfers: u64,
    /// Nodes removed, given a new disk and added back as voters.
    pub disks_replaced: u64,
    /// Times a node's disk was full.
    pub disks_full: u64,
    /// Turns whose writes and syncs took 50 ms or more.
    pub slow_syncs: u64,
    /// Compare-and-swaps answered and checked (swapped, or refused as they had to be).
    pub cas_checked: u64,
    /// Sessions a writer gave up for a new one.
    pub sessions_renewed: u64,
    /// Disks replaced in place (the member not removed first) whose node then refused to
    /// start, as it must.
    pub replaced_in_place_refused: u64,
    /// Learners the operator added to the single voter (see [`WholeConfig::single_voter`]).
    pub learners_added: u64,
    /// Impostors refused at the hello, as they had to be.
    pub impostors_refused: u64,
    /// Frames impostors sent once welcomed under a member's identity.
    pub impostor_frames: u64,
    /// One-way links (a node's outbound or inbound bytes lost).
    pub one_way_links: u64,
}

/// A run that broke a property: the seed, what broke, and the last events.
#[derive(Debug)]
pub struct WholeFailure {
    /// The seed that replays it.
    pub seed: u64,
    /// What broke.
    pub reason: String,
    /// The last events, oldest first.
    pub trace: Vec<String>,
}

impl std::fmt::Display for WholeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "seed {}: {}", self.seed, self.reason)?;
        writeln!(f, "last events:")?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// Reads what `stream` holds into `decoder`, until it would block; true when the stream
/// ended or failed.
fn read_available(decoder: &mut FrameDecoder, stream: &mut SimStream) -> bool {
    loop {
        match decoder.read_from(stream) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

fn peer_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i as u8 + 1], 7001))
}

fn client_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i as u8 + 1], 7101))
}

/// One simulated node: its disk, its clock, and its process when running.
struct SimNode {
    config: NodeConfig,
    fs: SimFs,
    clock: Arc<ManualClock>,
    /// Its clock's nanoseconds per simulated millisecond (1,000,000: true time).
    clock_rate: u64,
    incarnation: u64,
    node: Option<Node<SimNet>>,
    /// Its empty data dir asking the initial members what it is (a disk replaced under its
    /// old id, started with `--initial-cluster`).
    booting: Option<Booting<SimNet>>,
    /// Starts by asking the initial members (its disk was replaced in place).
    ask_members: bool,
    /// Kept stopped by the operator (it refused to start on its replaced disk) until removed.
    held: bool,
    /// When a crashed node starts again.
    restart_at: Option<Duration>,
    /// Until when the running process is stopped.
    paused_until: Option<Duration>,
    /// Until when its disk is full, and the bytes it holds then.
    disk_full: Option<(Duration, u64)>,
    /// Until when its loop is blocked in the writes and syncs of its last turn.
    stalled_until: Duration,
}

/// One version of a key (version 0 its put, the others its compare-and-swaps): when
/// acknowledged (None: not, or not known), and when a read that returned it first completed.
#[derive(Clone, Debug, Default)]
struct VersionRecord {
    acknowledged: Option<Duration>,
    seen: Option<Duration>,
}

/// A key's history. Only its writer writes it, one version after the other, each version
/// invoked once the one before was acknowledged: the key is a register with one sequential
/// writer and a value of its own per version.
#[derive(Clone, Debug)]
struct KeyHistory {
    /// The writing client.
    owner: usize,
    /// Every version invoked, in order.
    versions: Vec<VersionRecord>,
    /// The last write's outcome cannot be known (its session expired): no more writes.
    frozen: bool,
}

/// What a write in progress must be answered.
#[derive(Clone, Debug)]
enum Expect {
    /// Version `.0` of the key written.
    Write(usize),
    /// A compare-and-swap from a stale version: refused, the key at version `.0`.
    Refused(usize),
}

/// A write in progress, retried with its seq in its session until answered.
#[derive(Clone, Debug)]
struct WriteOp {
    key: String,
    seq: u64,
    op: Op,
    expect: Expect,
}

#[derive(Debug)]
enum Pending {
    Hello,
    Register { request_id: u64 },
    Write { request_id: u64 },
    Get { request_id: u64, key: String, invoked: Duration },
    Transfer { request_id: u64, to: u64 },
    Change { request_id: u64 },
}

/// What a client of the simulation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Puts (retried in its session until answered) and linearizable reads, at the leader.
    Writer,
    /// Reads only, from each node in turn, not following redirects (with timing faults): it
    /// asks a deposed leader that still believes it leads, which must not answer from a
    /// lease that is over. Now and then it asks the node for a leader transfer instead (a
    /// leader hands over; the others refuse).
    Roamer,
    /// Replaces disks (see [`WholeConfig::membership`]).
    Operator,
}

/// Where the operator's disk replacement stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Replacement {
    Idle,
    /// Before replacing node `.0`'s disk in place: waiting until a leader reports every member
    /// a voter and caught up, twice [`OPERATOR_CONFIRM_AFTER`] apart (as an operator checks
    /// `raftctl status` first: a node whose vote is still needed, say under a configuration
    /// a full power loss left uncommitted, cannot be taken away without stalling the cluster).
    Checking(usize),
    /// Node `.0`'s disk was replaced in place (not removed first) and it started again under
    /// its id with `--initial-cluster`: it must refuse to start, as the members recorded
    /// another data dir for its id. Then it is removed and added back as below.
    Wiped(usize),
    /// Removing node `.0` (an index) from the configuration.
    Removing(usize),
    /// Node `.0` runs on its new disk; adding it as a learner.
    Adding(usize),
    /// Promoting the learner `.0`.
    Promoting(usize),
}

/// A client of the test: one connection at a time, one request at a time.
struct SimClient {
    index: usize,
    conn: Option<(SimStream, FrameDecoder, usize)>,
    session: Option<u64>,
    seq: u64,
    pending: Option<Pending>,
    /// When the pending request was sent.
    sent_at: Duration,
    /// The write in progress (retried with its seq until answered).
    write: Option<WriteOp>,
    next_request_id: u64,
    next_key: u64,
    /// Where to connect next.
    target: usize,
    role: Role,
}

struct Sim {
    cfg: WholeConfig,
    rng: Rng,
    /// Draws the timing faults (see [`WholeConfig::timing`]).
    timing_rng: Rng,
    world: World,
    nodes: Vec<SimNode>,
    clients: Vec<SimClient>,
    now: Duration,
    keys: BTreeMap<String, KeyHistory>,
    outcome: WholeOutcome,
    trace: std::collections::VecDeque<String>,
    /// The node cut from the others, and until when.
    partition: Option<(usize, Duration)>,
    /// Nodes that crash during this step's turn.
    crashing: Vec<usize>,
    /// Draws the operator's changes (see [`WholeConfig::membership`]).
    members_rng: Rng,
    /// The operator's disk replacement in progress.
    replacement: Replacement,
    /// Draws the disk faults (see [`WholeConfig::disk_faults`]).
    disk_rng: Rng,
    /// When the operator may send its next request (after a refusal).
    operator_retry_at: Duration,
    /// Since when leaders have said the change in progress is in force already.
    operator_in_force_since: Option<Duration>,
    /// Draws the compare-and-swaps (see [`WholeConfig::cas`]).
    cas_rng: Rng,
    /// Draws which disk replacements are done in place (see [`Replacement::Wiped`]).
    wipe_rng: Rng,
    /// The nodes' `--initial-cluster`, as first started.
    initial_cluster: BTreeMap<u64, String>,
    /// Draws the impostors (see [`WholeConfig::hostile`]).
    hostile_rng: Rng,
    /// The impostor connected, if one is.
    impostor: Option<impostor::Impostor>,
    /// Impostors connected so far (each gets an endpoint of its own).
    impostors_connected: u64,
    /// Draws the one-way links (see [`WholeConfig::one_way`]).
    one_way_rng: Rng,
    /// The one-way link in force: the node, whether its outbound bytes are lost (else its
    /// inbound ones), and until when.
    one_way: Option<(usize, bool, Duration)>,
    /// The leader seen in each term (Election Safety: at most one).
    leaders_by_term: BTreeMap<u64, u64>,
    /// Each committed entry seen, as its term and its bytes (State Machine Safety: every node
    /// that commits an index holds the same entry there).
    committed_entries: BTreeMap<u64, (u64, raft::Bytes)>,
    /// Each node's commit index checked so far (reset when its disk is replaced).
    checked_commit: Vec<u64>,
}

/// Events kept for a failure's report.
const TRACE_KEPT: usize = 200;

impl Sim {
    fn note(&mut self, event: String) {
        if self.trace.len() == TRACE_KEPT {
            self.trace.pop_front();
        }
        let line = format!("{:>7.3}s {event}", self.now.as_secs_f64());
        // Inline with the nodes' own log lines when they are shown (RUST_LOG=info).
        log::info!(target: "sim", "{line}");
        self.trace.push_back(line);
    }

    fn fail(&self, reason: String) -> WholeFailure {
        let mut trace: Vec<String> = self.trace.iter().cloned().collect();
        for (i, n) in self.nodes.iter().enumerate() {
            trace.push(match &n.node {
                Some(node) => {
                    let s = node.status();
                    format!(
                        "now: node {} {} term {} leader {} commit {} applied {} last {}",
                        i + 1,
                        s.role,
                        s.term,
                        s.leader,
                        s.commit,
                        s.applied,
                        s.last_index
                    ) + &s
                        .members
                        .iter()
                        .filter_map(|m| {
                            Some(format!(" [{} {} matched {}]", m.id, m.role, m.matched?))
                        })
                        .collect::<String>()
                }
                None => format!("now: node {} down", i + 1),
            });
        }
        for (i, c) in self.clients.iter().enumerate() {
            trace.push(format!(
                "now: client {i} at node {:?} session {:?} pending {:?} write {:?}",
                c.conn.as_ref().map(|(_, _, n)| n + 1),
                c.session,
                c.pending,
                c.write
            ));
        }
        WholeFailure { seed: self.cfg.seed, reason, trace }
    }

    fn start_node(&mut self, i: usize) -> Result<(), WholeFailure> {
        if self.nodes[i].ask_members {
            return self.boot_node(i);
        }
        let initial: BTreeMap<u64, u64> =
            self.nodes.iter().map(|n| (n.config.id, n.incarnation)).collect();
        let n = &mut self.nodes[i];
        let net = self.world.attach(i, peer_addr(i), client_addr(i), &n.fs);
        let fs: Arc<dyn wal::fs::Fs> = Arc::new(n.fs.clone());
        let clock: Arc<dyn raftd::clock::Clock> = n.clock.clone();
        match Node::simulated(n.config.clone(), clock, fs, net, n.incarnation, &initial) {
            Ok(node) => {
                n.node = Some(node);
                n.restart_at = None;
                self.note(format!("node {} started", i + 1));
                Ok(())
            }
            Err(e) => self.not_started(i, e),
        }
    }

    fn not_started(&mut self, i: usize, e: raftd::errors::Error) -> Result<(), WholeFailure> {
        if self.nodes[i].disk_full.is_some() {
            self.nodes[i].restart_at = Some(self.now + Duration::from_millis(100));
            self.note(format!("node {} does not start, its disk full: {e}", i + 1));
            return Ok(());
        }
        Err(self.fail(format!("node {} does not start from its disk: {e}", i + 1)))
    }

    /// Starts node `i` on its replaced disk as the daemon starts an empty data dir with
    /// `--initial-cluster`: asking the members what it is, over the network.
    fn boot_node(&mut self, i: usize) -> Result<(), WholeFailure> {
        let n = &mut self.nodes[i];
        let net = self.world.attach(i, peer_addr(i), client_addr(i), &n.fs);
        let fs: Arc<dyn wal::fs::Fs> = Arc::new(n.fs.clone());
        let clock: Arc<dyn raftd::clock::Clock> = n.clock.clone();
        n.restart_at = None;
        match Node::simulated_start(n.config.clone(), clock, fs, net, n.incarnation) {
            Ok(started) => {
                self.note(format!("node {} starts on its new disk, asking the members", i + 1));
                self.started(i, started)
            }
            Err(e) => self.not_started(i, e),
        }
    }

    /// What node `i`'s booting came to.
    fn started(&mut self, i: usize, started: Started<SimNet>) -> Result<(), WholeFailure> {
        match started {
            Started::Booting(booting) => {
                self.nodes[i].booting = Some(booting);
                Ok(())
            }
            Started::Running(_) => Err(self.fail(format!(
                "node {}, its disk replaced under the id the cluster recorded with another, was \
                 let in (it bootstrapped or joined)",
                i + 1
            ))),
        }
    }

    /// One turn of node `i` asking the members; its refusal to start is what the operator
    /// waits for (then removes it and adds it back).
    fn boot_turn(&mut self, i: usize) -> Result<(), WholeFailure> {
        let booting = self.nodes[i].booting.take().expect("booting");
        match booting.turn() {
            Ok(started) => self.started(i, started),
            Err(raftd::errors::Error::Config(reason)) => {
                self.note(format!("node {} does not start: {reason}", i + 1));
                let n = &mut self.nodes[i];
                n.ask_members = false;
                n.held = true;
                self.outcome.replaced_in_place_refused += 1;
                if self.replacement == Replacement::Wiped(i) {
                    self.note(format!(
                        "operator: node {} refused its new disk; removing it",
                        i + 1
                    ));
                    self.replacement = Replacement::Removing(i);
                }
                Ok(())
            }
            Err(e) => {
                Err(self.fail(format!("node {} failed while asking the members: {e}", i + 1)))
            }
        }
    }

    /// Disk faults of this step: a disk full from now, or no longer; the limit applied to the
    /// node's disk as it is now (a power cut or a replacement gives it another).
    fn disk_faults(&mut self, with_faults: bool) {
        let none_full = self.nodes.iter().all(|n| n.disk_full.is_none());
        if with_faults && none_full && self.disk_rng.chance(1) {
            let i = self.disk_rng.below(self.cfg.nodes as u64) as usize;
            let limit = self.nodes[i].fs.used_bytes() + self.disk_rng.below(4 * 1024);
            let length = Duration::from_millis(100 + self.disk_rng.below(1_400));
            self.nodes[i].disk_full = Some((self.now + length, limit));
            self.outcome.disks_full += 1;
            self.note(format!("node {}'s disk full for {length:?}", i + 1));
        }
        for i in 0..self.cfg.nodes {
            match self.nodes[i].disk_full {
                Some((until, _)) if self.now >= until || !with_faults => {
                    self.nodes[i].disk_full = None;
                    self.nodes[i].fs.set_space_bytes_max(None);
                    self.note(format!("node {}'s disk has room again", i + 1));
                }
                Some((_, limit)) => self.nodes[i].fs.set_space_bytes_max(Some(limit)),
                None => {}
            }
        }
    }

    /// The time a turn's writes and syncs took: the loop was blocked in them, and what it
    /// sent after its first sync waited for them (a follower's acknowledgement goes out once
    /// its entries are synced; a leader's appends, sent before its sync, do not wait).
    fn sync_latency(&mut self, i: usize) {
        if !self.disk_rng.chance(300) {
            return;
        }
        let ms = if self.disk_rng.chance(20) {
            self.outcome.slow_syncs += 1;
            50 + self.disk_rng.below(200)
        } else {
            1 + self.disk_rng.below(4)
        };
        let until = self.now + Duration::from_millis(ms);
        self.nodes[i].stalled_until = until;
        if let Some(op) = self.nodes[i].fs.first_sync_since_mark() {
            self.world.hold_after(i, op, until);
        }
    }

    /// Crashes node `i` with power loss: its disk keeps a random half of what was not synced
    /// (of `at_op`, the disk as it was just before the operation the crash interrupted).
    fn crash_node(&mut self, i: usize, at_op: Option<(u64, SimFs)>) {
        let Some(node) = self.nodes[i].node.take() else { return };
        drop(node);
        self.nodes[i].paused_until = None;
        self.nodes[i].stalled_until = Duration::ZERO;
        let disk = match at_op {
            Some((op, captured)) => {
                self.world.take_back_after(i, op);
                self.note(format!("node {} crashes before its disk operation {op}", i + 1));
                captured
            }
            None => self.nodes[i].fs.clone(),
        };
        let rng = &mut self.rng;
        let kept = disk.power_cut(&mut |_| rng.chance(500));
        let unsynced = disk.unsynced_items();
        let n = &mut self.nodes[i];
        n.fs = kept;
        n.restart_at = Some(self.now + Duration::from_millis(50 + self.rng.below(500)));
        self.outcome.crashes += 1;
        self.note(format!("node {} crashed, power lost ({unsynced} unsynced items)", i + 1));
    }

    /// Sets up (or heals) a one-way link: one node's bytes to every other, or theirs to it.
    fn one_way_links(&mut self) {
        if let Some((node, outbound, until)) = self.one_way {
            if self.now >= until {
                self.set_one_way(node, outbound, false);
                self.one_way = None;
                self.note(format!("node {}'s one-way link healed", node + 1));
            }
            return;
        }
        if !self.one_way_rng.chance(2) {
            return;
        }
        let node = self.one_way_rng.below(self.cfg.nodes as u64) as usize;
        let outbound = self.one_way_rng.chance(500);
        let length = Duration::from_millis(100 + self.one_way_rng.below(1_500));
        self.set_one_way(node, outbound, true);
        self.one_way = Some((node, outbound, self.now + length));
        self.outcome.one_way_links += 1;
        let what = if outbound { "sends nothing but hears" } else { "hears nothing but sends" };
        self.note(format!("node {} {what} for {length:?}", node + 1));
    }

    fn set_one_way(&mut self, node: usize, outbound: bool, lost: bool) {
        for other in (0..self.cfg.nodes).filter(|&o| o != node) {
            let (from, to) = if outbound { (node, other) } else { (other, node) };
            self.world.set_one_way(Endpoint::Node(from), Endpoint::Node(to), lost);
        }
    }

    fn faults(&mut self) -> Result<(), WholeFailure> {
        if let Some((node, until)) = self.partition {
            if self.now >= until {
                self.world.heal();
                self.partition = None;
                self.note(format!("node {} reconnected", node + 1));
            }
        } else if self.rng.chance(2) {
            let node = self.rng.below(self.cfg.nodes as u64) as usize;
            for other in 0..self.cfg.nodes {
                if other != node {
                    self.world.set_cut(Endpoint::Node(node), Endpoint::Node(other), true);
                }
            }
            if self.rng.chance(300) {
                for other in 0..self.cfg.nodes {
                    self.world.reset_between(Endpoint::Node(node), Endpoint::Node(other));
                }
            }
            let length = Duration::from_millis(100 + self.rng.below(1_500));
            self.partition = Some((node, self.now + length));
            self.outcome.partitions += 1;
            self.note(format!("node {} cut off for {length:?}", node + 1));
        }
        if self.cfg.one_way {
            self.one_way_links();
        }
        for i in 0..self.cfg.nodes {
            if self.nodes[i].paused_until.is_some_and(|until| self.now >= until) {
                self.nodes[i].paused_until = None;
                self.note(format!("node {} resumes", i + 1));
            }
        }
        let unpaused = self.nodes.iter().all(|n| n.paused_until.is_none());
        if self.cfg.timing && unpaused && self.timing_rng.chance(1) {
            let i = self.timing_rng.below(self.cfg.nodes as u64) as usize;
            if self.nodes[i].node.is_some() {
                let length = Duration::from_millis(1 + self.timing_rng.below(PAUSE_MS_MAX));
                self.nodes[i].paused_until = Some(self.now + length);
                self.outcome.pauses += 1;
                self.note(format!("node {} paused for {length:?}", i + 1));
            }
        }
        let running = self.nodes.iter().filter(|n| n.node.is_some()).count();
        if running == self.cfg.nodes && self.rng.chance(1) {
            let node = self.rng.below(self.cfg.nodes as u64) as usize;
            self.crashing.push(node);
        } else if running == self.cfg.nodes && self.rng.below(10_000) < 3 {
            // The whole cluster loses power (one rack, one building); the nodes come back
            // one by one.
            self.note("every node loses power".into());
            self.crashing.extend(0..self.cfg.nodes);
        }
        for i in 0..self.cfg.nodes {
            if self.nodes[i].restart_at.is_some_and(|at| self.now >= at) {
                self.start_node(i)?;
            }
        }
        Ok(())
    }

    /// One step: time moves, faults, every node's loop turns once, clients act.
    fn step(&mut self, with_faults: bool) -> Result<(), WholeFailure> {
        self.now += STEP;
        self.world.set_now(self.now);
        for n in &self.nodes {
            // Monotonic time runs through pauses and crashes, at the node's own rate.
            n.clock.advance(Duration::from_nanos(n.clock_rate));
        }
        if self.cfg.disk_faults {
            self.disk_faults(with_faults);
        }
        if with_faults {
            self.faults()?;
        } else if self.cfg.membership || self.cfg.disk_faults {
            // A disk the operator replaced while the cluster settles comes back too.
            for i in 0..self.cfg.nodes {
                if self.nodes[i].restart_at.is_some_and(|at| self.now >= at) {
                    self.start_node(i)?;
                }
            }
        }
        if self.cfg.hostile {
            self.impostor_step(with_faults)?;
        }
        let crashing = std::mem::take(&mut self.crashing);
        for i in 0..self.cfg.nodes {
            if self.nodes[i].booting.is_some() {
                // (Neither paused nor crashed: faults of those kinds wait while a node boots.)
                self.boot_turn(i)?;
                continue;
            }
            if self.nodes[i].node.is_none() {
                continue;
            }
            if self.nodes[i].paused_until.is_some() || self.now < self.nodes[i].stalled_until {
                // Stopped, or blocked in a sync: it does not turn; power lost now is lost
                // while it was stopped (or in the middle of that sync).
                if crashing.contains(&i) {
                    self.crash_node(i, None);
                }
                continue;
            }
            // A node crashing in this step crashes within its turn: just before one of its
            // next few disk operations (what it sent after it is taken back), or after the
            // turn if it does fewer.
            let crash_op = crashing.contains(&i).then(|| {
                let op = self.nodes[i].fs.op_count() + 1 + self.rng.below(CRASH_OPS_AHEAD);
                self.nodes[i].fs.arm_capture(op);
                op
            });
            let ops_before = self.nodes[i].fs.op_count();
            self.nodes[i].fs.mark_syncs();
            let node = self.nodes[i].node.as_mut().expect("checked");
            if let Err(e) = node.turn() {
                // A node stops only when its disk fails it (here, when it is full): never on
                // bytes from a peer or a client.
                if self.nodes[i].disk_full.is_none() {
                    return Err(self.fail(format!("node {} stopped: {e}", i + 1)));
                }
                self.note(format!("node {} stopped: {e}", i + 1));
                self.nodes[i].node = None;
                self.nodes[i].restart_at = Some(self.now + Duration::from_millis(100));
            }
            let wrote = self.nodes[i].fs.op_count() > ops_before;
            if self.cfg.disk_faults && wrote && crash_op.is_none() && self.nodes[i].node.is_some() {
                self.sync_latency(i);
            }
            if let Some(op) = crash_op {
                let captured = self.nodes[i].fs.take_captured().map(|disk| (op, disk));
                // Disarmed: an operation this far is never reached.
                self.nodes[i].fs.arm_capture(u64::MAX);
                self.crash_node(i, captured);
            }
        }
        for c in 0..self.clients.len() {
            self.client_step(c, with_faults)?;
        }
        if self.cfg.hostile {
            self.check_terms()?;
        }
        self.check_core()
    }

    /// The core's safety properties, over every running node after every step: at most one
    /// leader per term (Election Safety), and an index committed anywhere holds the same entry
    /// everywhere it is committed, the same term and the same bytes (Log Matching and State
    /// Machine Safety; Leader Completeness shows in them too, as a leader missing a committed
    /// entry commits another there).
    fn check_core(&mut self) -> Result<(), WholeFailure> {
        for i in 0..self.cfg.nodes {
            let Some(node) = &self.nodes[i].node else { continue };
            let (term, leading, commit) = node.raft_state();
            let id = i as u64 + 1;
            if leading {
                let leader = *self.leaders_by_term.entry(term).or_insert(id);
                if leader != id {
                    return Err(self.fail(format!(
                        "Election Safety: nodes {leader} and {id} both led term {term}"
                    )));
                }
            }
            for index in self.checked_commit[i] + 1..=commit {
                let Some(entry) = node.log_entry(index) else { continue };
                let seen = (entry.term, entry.data);
                let known = self.committed_entries.entry(index).or_insert_with(|| seen.clone());
                if *known != seen {
                    let (term, known_term) = (seen.0, known.0);
                    return Err(self.fail(format!(
                        "State Machine Safety: node {id} committed entry {index} of term {term}, \
                         another node a different one (of term {known_term})"
                    )));
                }
            }
            self.checked_commit[i] = self.checked_commit[i].max(commit);
        }
        Ok(())
    }

    fn send(&mut self, c: usize, request: &impl serde::Serialize) -> bool {
        let client = &mut self.clients[c];
        let Some((stream, _, _)) = client.conn.as_mut() else { return false };
        let mut frame = Vec::new();
        if codec::encode_into(&mut frame, request, CLIENT_FRAME_MAX).is_err() {
            return false;
        }
        if stream.write_all(&frame).is_err() {
            client.conn = None;
            return false;
        }
        client.sent_at = self.now;
        true
    }

    fn client_step(&mut self, c: usize, issue_new: bool) -> Result<(), WholeFailure> {
        let now = self.now;
        let client = &mut self.clients[c];
        if client.conn.is_none() {
            client.pending = None;
            let target = client.target;
            match self.world.dial(client.index, client_addr(target)) {
                Ok(stream) => {
                    client.conn = Some((stream, FrameDecoder::new(CLIENT_FRAME_MAX), target));
                    client.pending = Some(Pending::Hello);
                    self.send(c, &Hello::client("sim", None));
                }
                Err(_) => {
                    client.target = (target + 1) % self.cfg.nodes;
                }
            }
            return Ok(());
        }
        // Read what arrived.
        let mut answers = Vec::new();
        let broken;
        {
            let (stream, decoder, _) = client.conn.as_mut().expect("checked");
            broken = read_available(decoder, stream);
            while let Ok(Some(payload)) = decoder.next_payload() {
                answers.push(payload.to_vec());
            }
        }
        for payload in answers {
            self.client_answer(c, &payload)?;
        }
        let client = &mut self.clients[c];
        let patience = if self.cfg.timing { CLIENT_PATIENCE_TIMING } else { CLIENT_PATIENCE };
        if broken || (client.pending.is_some() && now - client.sent_at > patience) {
            client.conn = None;
            client.target = (client.target + 1) % self.cfg.nodes;
            return Ok(());
        }
        if client.pending.is_some() {
            return Ok(());
        }
        // Next request: the put in progress, a new put, or a read of a written key.
        if client.role == Role::Operator {
            return self.operator_step(c, issue_new);
        }
        if client.role == Role::Roamer {
            if !issue_new || self.keys.is_empty() {
                return Ok(());
            }
            let request_id = client.next_request_id;
            client.next_request_id += 1;
            if self.timing_rng.chance(TRANSFER_PER_MILLE) {
                let to = 1 + self.timing_rng.below(self.cfg.nodes as u64);
                self.clients[c].pending = Some(Pending::Transfer { request_id, to });
                let request = AdminRequest::TransferLeader { to };
                self.send(c, &ClientRequest::Admin { request_id, request });
                return Ok(());
            }
            self.send_read(c, request_id);
            return Ok(());
        }
        if client.session.is_none() {
            let request_id = client.next_request_id;
            client.next_request_id += 1;
            client.pending = Some(Pending::Register { request_id });
            self.send(c, &ClientRequest::RegisterSession { request_id });
            return Ok(());
        }
        let client = &mut self.clients[c];
        let session_id = client.session.expect("checked");
        let request_id = client.next_request_id;
        client.next_request_id += 1;
        if let Some(write) = client.write.clone() {
            client.pending = Some(Pending::Write { request_id });
            let request =
                ClientRequest::Kv { request_id, session_id, seq: write.seq, op: write.op };
            self.send(c, &request);
            return Ok(());
        }
        if !issue_new {
            return Ok(());
        }
        if self.cfg.cas && self.cas_rng.chance(CAS_PER_MILLE) {
            if self.cas_rng.chance(SESSION_RENEW_PER_MILLE) {
                // A restarted client: a new session, the old one left to age out (past
                // --max-sessions, registering it evicts the least recently active one).
                self.clients[c].session = None;
                self.outcome.sessions_renewed += 1;
                self.note(format!("client {c} starts a new session"));
                return Ok(());
            }
            if let Some(write) = self.next_cas(c) {
                self.note(format!("client {c} sends {} ({:?})", shown_op(&write.op), write.expect));
                let client = &mut self.clients[c];
                client.write = Some(write.clone());
                client.pending = Some(Pending::Write { request_id });
                let request =
                    ClientRequest::Kv { request_id, session_id, seq: write.seq, op: write.op };
                self.send(c, &request);
                return Ok(());
            }
        }
        if self.rng.chance(500) || self.keys.is_empty() {
            let client = &mut self.clients[c];
            let key = format!("c{}k{}", client.index, client.next_key);
            client.next_key += 1;
            client.seq += 1;
            let seq = client.seq;
            let op = Op::Put { key: key.clone().into_bytes(), value: version_value(&key, 0) };
            let write = WriteOp { key: key.clone(), seq, op: op.clone(), expect: Expect::Write(0) };
            client.write = Some(write);
            client.pending = Some(Pending::Write { request_id });
            let history =
                KeyHistory { owner: c, versions: vec![VersionRecord::default()], frozen: false };
            self.keys.insert(key.clone(), history);
            self.note(format!("client {c} puts {key}"));
            self.send(c, &ClientRequest::Kv { request_id, session_id, seq, op });
        } else {
            self.send_read(c, request_id);
        }
        Ok(())
    }

    /// A compare-and-swap by client `c` on one of its keys whose last version was
    /// acknowledged: to the next version, or (one in five) from a stale version, which must be
    /// refused.
    fn next_cas(&mut self, c: usize) -> Option<WriteOp> {
        let writable: Vec<(&String, usize)> = self
            .keys
            .iter()
            .filter(|(_, h)| {
                h.owner == c
                    && !h.frozen
                    && h.versions.last().is_some_and(|v| v.acknowledged.is_some())
            })
            .map(|(k, h)| (k, h.versions.len() - 1))
            .collect();
        if writable.is_empty() {
            return None;
        }
        let (key, current) = writable[self.cas_rng.below(writable.len() as u64) as usize];
        let key = key.clone();
        let stale = self.cas_rng.chance(200);
        let (expected, new, expect) = if stale {
            let expected = current.checked_sub(1).map(|v| version_value(&key, v));
            (
                expected,
                format!("value of {key} stale {current}").into_bytes(),
                Expect::Refused(current),
            )
        } else {
            let history = self.keys.get_mut(&key).expect("listed");
            history.versions.push(VersionRecord::default());
            let new = version_value(&key, current + 1);
            (Some(version_value(&key, current)), new, Expect::Write(current + 1))
        };
        let client = &mut self.clients[c];
        client.seq += 1;
        let op = Op::Cas { key: key.clone().into_bytes(), expected, new };
        Some(WriteOp { key, seq: client.seq, op, expect })
    }

    /// Client `c` reads a key put before, at random (a linearizable get; no session).
    fn send_read(&mut self, c: usize, request_id: u64) {
        let nth = self.rng.below(self.keys.len() as u64) as usize;
        let key = self.keys.keys().nth(nth).expect("in range").clone();
        let invoked = self.now;
        self.clients[c].pending = Some(Pending::Get { request_id, key: key.clone(), invoked });
        let op = Op::Get { key: key.into_bytes(), serializable: false };
        self.send(c, &ClientRequest::Kv { request_id, session_id: 0, seq: 0, op });
    }

    fn client_answer(&mut self, c: usize, payload: &[u8]) -> Result<(), WholeFailure> {
        let client = &mut self.clients[c];
        match client.pending.take() {
            None => {}
            Some(Pending::Hello) => match codec::decode_payload::<HelloAck>(payload) {
                Ok(HelloAck::Welcome { .. }) => {}
                _ => client.conn = None,
            },
            Some(Pending::Register { request_id }) => {
                if let Ok(ClientResponse::Session { request_id: r, result }) =
                    codec::decode_payload::<ClientResponse>(payload)
                {
                    match result {
                        Ok(id) if r == request_id => client.session = Some(id),
                        Err(e) => self.redirect(c, &e),
                        _ => {}
                    }
                }
            }
            Some(Pending::Write { request_id }) => {
                let Ok(ClientResponse::Kv { request_id: r, result }) =
                    codec::decode_payload::<ClientResponse>(payload)
                else {
                    return Ok(());
                };
                if r != request_id {
                    client.pending = Some(Pending::Write { request_id });
                    return Ok(());
                }
                let write = client.write.clone().expect("a write pending is in progress");
                let key = write.key.clone();
                match result {
                    Ok(reply) => {
                        client.write = None;
                        self.write_answered(c, &write, reply.result)?;
                    }
                    Err(ClientError::Stale { seq }) => {
                        // Only another writer in this client's session can have moved it past
                        // the seq this client is still retrying.
                        let session = client.session;
                        return Err(self.fail(format!(
                            "client {c}'s write of {key} (seq {seq}) refused as stale: another \
                             client wrote in its session {session:?}"
                        )));
                    }
                    Err(ClientError::SessionExpired { .. }) => {
                        // Its outcome cannot be known any more: not retried; the key is not
                        // written again (either version may be read).
                        client.write = None;
                        client.session = None;
                        if let Some(h) = self.keys.get_mut(&key) {
                            h.frozen = true;
                        }
                        self.note(format!("client {c}'s write of {key}: session expired"));
                    }
                    Err(e) => self.redirect(c, &e),
                }
            }
            Some(Pending::Transfer { request_id, to }) => {
                if let Ok(ClientResponse::Admin { request_id: r, result }) =
                    codec::decode_payload::<ClientResponse>(payload)
                {
                    if r == request_id {
                        let at = client.conn.as_ref().map_or(0, |(_, _, n)| n + 1);
                        if result.is_ok() {
                            self.outcome.transfers += 1;
                            self.note(format!("node {at} hands leadership to node {to}"));
                        }
                        self.roam(c);
                    }
                }
            }
            Some(Pending::Change { request_id }) => {
                if let Ok(ClientResponse::Admin { request_id: r, result }) =
                    codec::decode_payload::<ClientResponse>(payload)
                {
                    if r == request_id {
                        self.operator_answer(c, result);
                    } else {
                        self.clients[c].pending = Some(Pending::Change { request_id });
                    }
                }
            }
            Some(Pending::Get { request_id, key, invoked }) => {
                let Ok(ClientResponse::Kv { request_id: r, result }) =
                    codec::decode_payload::<ClientResponse>(payload)
                else {
                    return Ok(());
                };
                if r != request_id {
                    return Ok(());
                }
                match result {
                    Ok(reply) => {
                        let OpResult::Get(value) = reply.result else {
                            return Err(self.fail(format!("a get of {key} answered {reply:?}")));
                        };
                        let at = self.clients[c].conn.as_ref().map_or(0, |(_, _, n)| n + 1);
                        self.check_read(&key, invoked, value).map_err(|f| WholeFailure {
                            reason: format!("{} (answered by node {at})", f.reason),
                            ..f
                        })?;
                        if self.clients[c].role == Role::Roamer {
                            self.roam(c);
                        }
                    }
                    Err(e) => self.redirect(c, &e),
                }
            }
        }
        Ok(())
    }

    /// The operator's next request for the replacement in progress, or a new replacement.
    fn operator_step(&mut self, c: usize, issue_new: bool) -> Result<(), WholeFailure> {
        if self.now < self.operator_retry_at {
            return Ok(());
        }
        if self.replacement == Replacement::Idle {
            if self.cfg.single_voter {
                return Ok(()); // Its learners added, nothing more to do.
            }
            if !issue_new || !self.members_rng.chance(REPLACE_PER_MILLE) {
                return Ok(());
            }
            let v = self.members_rng.below(self.cfg.nodes as u64) as usize;
            if self.wipe_rng.chance(WIPE_IN_PLACE_PER_MILLE) {
                self.note(format!(
                    "operator: node {} gets a new disk in place; checking first",
                    v + 1
                ));
                self.replacement = Replacement::Checking(v);
            } else {
                self.replacement = Replacement::Removing(v);
                self.note(format!("operator: node {} gets a new disk; removing it", v + 1));
            }
        }
        let request = match self.replacement {
            Replacement::Idle => unreachable!("a replacement was just started"),
            Replacement::Checking(_) => AdminRequest::Status,
            // Waiting for the node to refuse its new disk.
            Replacement::Wiped(_) => return Ok(()),
            Replacement::Removing(v) => AdminRequest::Remove { id: v as u64 + 1 },
            Replacement::Adding(v) => {
                AdminRequest::AddLearner { id: v as u64 + 1, addr: peer_addr(v).to_string() }
            }
            Replacement::Promoting(v) => AdminRequest::Promote { id: v as u64 + 1 },
        };
        let client = &mut self.clients[c];
        let request_id = client.next_request_id;
        client.next_request_id += 1;
        client.pending = Some(Pending::Change { request_id });
        self.send(c, &ClientRequest::Admin { request_id, request });
        Ok(())
    }

    /// The answer to the operator's request: the next stage, or the same again later. A
    /// refusal saying the change is in force already (its first answer was lost) counts as
    /// done only when a leader says so again [`OPERATOR_CONFIRM_AFTER`] later: the first may
    /// come from a deposed leader that does not know yet (its view of the configuration is
    /// stale until check-quorum steps it down, within an election timeout).
    fn operator_answer(&mut self, c: usize, result: Result<AdminReply, ClientError>) {
        if let Replacement::Checking(v) = self.replacement {
            return self.operator_checked(c, v, result);
        }
        let in_force = match &result {
            Err(ClientError::Refused(reason)) => match self.replacement {
                Replacement::Removing(_) => reason.contains("is not a member"),
                Replacement::Adding(_) => reason.contains("is already a member"),
                Replacement::Promoting(_) => reason.contains("is not a learner"),
                Replacement::Idle | Replacement::Checking(_) | Replacement::Wiped(_) => false,
            },
            _ => false,
        };
        let done = match &result {
            Ok(_) => true,
            Err(_) if in_force => match self.operator_in_force_since {
                Some(since) => self.now - since >= OPERATOR_CONFIRM_AFTER,
                None => {
                    self.operator_in_force_since = Some(self.now);
                    false
                }
            },
            Err(ClientError::Refused(_)) => false,
            Err(e) => {
                self.redirect(c, e);
                false
            }
        };
        // A refusal for another reason says the change is not (or no longer) in force; a
        // redirect says nothing of it.
        if done || (!in_force && matches!(result, Err(ClientError::Refused(_)))) {
            self.operator_in_force_since = None;
        }
        if !done && matches!(result, Err(ClientError::Refused(_))) {
            // Refused for now (a change pending, a learner behind), or by a node that is not
            // the leader's peer: asked again later, elsewhere in turn (redirects lead back).
            self.roam(c);
        }
        if !done {
            self.operator_retry_at = self.now + OPERATOR_RETRY;
            return;
        }
        match self.replacement {
            Replacement::Idle | Replacement::Checking(_) | Replacement::Wiped(_) => {}
            Replacement::Removing(v) => {
                self.replace_disk(v);
                self.replacement = Replacement::Adding(v);
            }
            Replacement::Adding(v) if self.cfg.single_voter => {
                self.note(format!("operator: node {} is a learner", v + 1));
                self.outcome.learners_added += 1;
                self.replacement = if v + 1 < self.cfg.nodes {
                    Replacement::Adding(v + 1)
                } else {
                    Replacement::Idle
                };
            }
            Replacement::Adding(v) => {
                self.note(format!("operator: node {} is a learner; promoting it", v + 1));
                self.replacement = Replacement::Promoting(v);
            }
            Replacement::Promoting(v) => {
                self.note(format!("operator: node {} is a voter again", v + 1));
                self.replacement = Replacement::Idle;
                self.outcome.disks_replaced += 1;
            }
        }
    }

    /// The status the operator asked for before replacing node `v`'s disk in place: healthy
    /// when from a leader that has every node a voter, caught up, and everything committed.
    fn operator_checked(&mut self, c: usize, v: usize, result: Result<AdminReply, ClientError>) {
        let healthy = match &result {
            Ok(AdminReply::Status(s)) => {
                let voters = s.members.iter().filter(|m| m.role == "voter").count();
                s.role == "leader"
                    && !s.joint
                    && voters == self.cfg.nodes
                    && s.members.len() == self.cfg.nodes
                    && s.commit == s.last_index
                    && s.members.iter().all(|m| m.matched == Some(s.last_index))
            }
            _ => false,
        };
        self.operator_retry_at = self.now + OPERATOR_RETRY;
        if !healthy {
            self.operator_in_force_since = None;
            return self.roam(c);
        }
        match self.operator_in_force_since {
            Some(since) if self.now - since >= OPERATOR_CONFIRM_AFTER => {
                self.operator_in_force_since = None;
                self.wipe_in_place(v);
                self.replacement = Replacement::Wiped(v);
            }
            Some(_) => {}
            None => self.operator_in_force_since = Some(self.now),
        }
    }

    /// Node `v`'s disk is replaced while it is a member, and it is started again as before,
    /// under its id with `--initial-cluster` (an operator's mistake the cluster must refuse:
    /// what its id acknowledged is gone).
    fn wipe_in_place(&mut self, v: usize) {
        drop(self.nodes[v].node.take());
        drop(self.nodes[v].booting.take());
        let incarnation = self.wipe_rng.next_u64() | 1;
        let initial_cluster = self.initial_cluster.clone();
        self.checked_commit[v] = 0;
        let n = &mut self.nodes[v];
        n.fs = SimFs::new();
        n.incarnation = incarnation;
        n.config.join = false;
        n.config.initial_cluster = initial_cluster;
        n.ask_members = true;
        n.paused_until = None;
        n.restart_at = Some(self.now + Duration::from_millis(50));
        self.note(format!(
            "operator: node {}'s disk replaced in place; started again with --initial-cluster",
            v + 1
        ));
    }

    /// Node `v`, removed, is stopped and comes back on an empty disk with a new incarnation,
    /// started with `--join` (waiting to be added).
    fn replace_disk(&mut self, v: usize) {
        drop(self.nodes[v].node.take());
        drop(self.nodes[v].booting.take());
        let incarnation = self.members_rng.next_u64() | 1;
        self.checked_commit[v] = 0;
        let n = &mut self.nodes[v];
        n.held = false;
        n.ask_members = false;
        n.fs = SimFs::new();
        n.incarnation = incarnation;
        n.config.join = true;
        n.config.initial_cluster.clear();
        n.paused_until = None;
        n.restart_at = Some(self.now + Duration::from_millis(50));
        self.note(format!("operator: node {} removed; its disk replaced", v + 1));
    }

    /// A roaming client moves on to the next node.
    fn roam(&mut self, c: usize) {
        let client = &mut self.clients[c];
        client.conn = None;
        client.target = (client.target + 1) % self.cfg.nodes;
    }

    /// Follows a redirect to the leader; other errors retry elsewhere later.
    fn redirect(&mut self, c: usize, e: &ClientError) {
        if self.clients[c].role == Role::Roamer {
            return self.roam(c);
        }
        let client = &mut self.clients[c];
        if let ClientError::NotLeader { leader_addr: Some(addr), .. } = e {
            if let Some(i) = (0..self.cfg.nodes).find(|&i| client_addr(i).to_string() == *addr) {
                if client.conn.as_ref().is_some_and(|(_, _, at)| *at != i) {
                    client.conn = None;
                }
                client.target = i;
                return;
            }
        }
        // A node that waits to be added (membership changes) knows no leader and will not for
        // a while: the client moves on. (Without membership changes it waits out an election
        // where it is, as the seeds of the bite table were found with.)
        let no_leader =
            matches!(e, ClientError::NoLeader) && (self.cfg.membership || self.cfg.single_voter);
        if !matches!(e, ClientError::NotLeader { .. }) && !no_leader {
            return;
        }
        client.conn = None;
        client.target = (client.target + 1) % self.cfg.nodes;
    }

    /// Checks the answer to a write: a put or a compare-and-swap to the next version swapped
    /// from the version before (a retry applied twice would find its own version and refuse);
    /// one from a stale version was refused and saw the current one.
    fn write_answered(
        &mut self,
        c: usize,
        write: &WriteOp,
        result: OpResult,
    ) -> Result<(), WholeFailure> {
        let key = &write.key;
        let now = self.now;
        let fine = match (&write.expect, &result) {
            (Expect::Write(0), OpResult::Put) => true,
            (Expect::Write(v), OpResult::Cas { swapped: true, previous }) => {
                previous.as_deref() == Some(&version_value(key, v - 1)[..])
            }
            (Expect::Refused(v), OpResult::Cas { swapped: false, previous }) => {
                previous.as_deref() == Some(&version_value(key, *v)[..])
            }
            _ => false,
        };
        if !fine {
            return Err(self.fail(format!(
                "client {c}'s {} (seq {}, expecting {:?}) was answered {}",
                shown_op(&write.op),
                write.seq,
                write.expect,
                shown_result(&result)
            )));
        }
        match write.expect {
            Expect::Write(v) => {
                let history = self.keys.get_mut(key).expect("written keys are recorded");
                history.versions[v].acknowledged = Some(now);
                if v == 0 {
                    self.outcome.puts_acknowledged += 1;
                } else {
                    self.outcome.cas_checked += 1;
                }
                self.note(format!("client {c}'s write of {key} version {v} acknowledged"));
            }
            Expect::Refused(v) => {
                self.outcome.cas_checked += 1;
                self.note(format!("client {c}'s stale CAS of {key} refused at version {v}"));
            }
        }
        Ok(())
    }

    /// A linearizable read of a key: a register with one sequential writer. It must return
    /// a version that was invoked (or nothing, before the put), and none older than a
    /// version acknowledged, or returned by a read that completed, before it began.
    fn check_read(
        &mut self,
        key: &str,
        invoked: Duration,
        value: Option<Vec<u8>>,
    ) -> Result<(), WholeFailure> {
        let history = self.keys.get(key).cloned().expect("reads are of keys put");
        self.outcome.reads_checked += 1;
        let read = match &value {
            None => None,
            Some(v) => match version_of(key, v) {
                Some(n) if n < history.versions.len() => Some(n),
                _ => {
                    return Err(self.fail(format!(
                        "a read of {key} returned a value never written: {:?}",
                        String::from_utf8_lossy(v)
                    )))
                }
            },
        };
        let newer = read.map_or(0, |n| n + 1);
        for (n, version) in history.versions.iter().enumerate().skip(newer) {
            let what = match (version.acknowledged, version.seen) {
                (Some(at), _) if at < invoked => format!("was acknowledged at {at:?}"),
                (_, Some(at)) if at < invoked => format!("was read at {at:?}"),
                _ => continue,
            };
            return Err(self.fail(format!(
                "stale read: {key} version {n} {what} and a read begun at {invoked:?} \
                 returned {read:?}"
            )));
        }
        if let Some(n) = read {
            let now = self.now;
            let history = self.keys.get_mut(key).expect("checked");
            history.versions[n].seen.get_or_insert(now);
        }
        Ok(())
    }
}

fn shown(bytes: Option<&[u8]>) -> String {
    match bytes {
        Some(b) => format!("{:?}", String::from_utf8_lossy(b)),
        None => "absent".into(),
    }
}

/// A write as a trace shows it: its bytes as text.
fn shown_op(op: &Op) -> String {
    match op {
        Op::Put { key, value } => format!("put {} = {}", shown(Some(key)), shown(Some(value))),
        Op::Cas { key, expected, new } => format!(
            "cas {} from {} to {}",
            shown(Some(key)),
            shown(expected.as_deref()),
            shown(Some(new))
        ),
        other => format!("{other:?}"),
    }
}

/// A write's answer as a trace shows it.
fn shown_result(result: &OpResult) -> String {
    match result {
        OpResult::Cas { swapped, previous } => {
            format!("swapped {swapped}, previous {}", shown(previous.as_deref()))
        }
        other => format!("{other:?}"),
    }
}

/// The value of version `n` of `key` (version 0's is what the runs before compare-and-swaps
/// wrote: the seeds found with them still replay).
fn version_value(key: &str, n: usize) -> Vec<u8> {
    match n {
        0 => format!("value of {key}").into_bytes(),
        n => format!("value of {key} v{n}").into_bytes(),
    }
}

/// Which version of `key` `value` is, if it is one.
fn version_of(key: &str, value: &[u8]) -> Option<usize> {
    let rest = std::str::from_utf8(value).ok()?.strip_prefix("value of ")?.strip_prefix(key)?;
    match rest {
        "" => Some(0),
        rest => rest.strip_prefix(" v")?.parse().ok().filter(|&n| n > 0),
    }
}

/// Runs one seed.
pub fn run_whole(cfg: &WholeConfig) -> Result<WholeOutcome, WholeFailure> {
    let mut rng = Rng::new(cfg.seed);
    let world_rng = Rng::new(rng.next_u64());
    let world = World::new(world_rng, Duration::from_micros(100), Duration::from_millis(3));
    // With one voter, node 1 bootstraps alone and the others join.
    let initial_members = if cfg.single_voter { 1 } else { cfg.nodes };
    let initial: Vec<String> =
        (0..initial_members).map(|i| format!("{}={}", i + 1, peer_addr(i))).collect();
    let initial = initial.join(",");
    let mut timing_rng = Rng::new(cfg.seed ^ 0x7469_6d69_6e67);
    let mut nodes = Vec::new();
    for i in 0..cfg.nodes {
        let mut flags: Vec<String> = vec![
            "raftd".to_string(),
            "--id".into(),
            (i + 1).to_string(),
            "--data-dir".into(),
            format!("/data/node-{}", i + 1),
            "--listen-peer".into(),
            peer_addr(i).to_string(),
            "--listen-client".into(),
            client_addr(i).to_string(),
            "--initial-cluster".into(),
            initial.clone(),
            "--cluster-id".into(),
            "sim".into(),
            "--tick-interval-ms".into(),
            TICK_MS.to_string(),
            "--segment-size-bytes".into(),
            // With disk faults, small segments: the log rotates often, and a full disk meets a
            // new segment as well as a snapshot file.
            if cfg.disk_faults { 8 * 1024 } else { 64 * 1024 }.to_string(),
            "--snapshot-entries".into(),
            "200".into(),
        ];
        if i >= initial_members {
            // Waits to be added: no --initial-cluster.
            let at = flags.iter().position(|f| f == "--initial-cluster").expect("given above");
            flags.drain(at..at + 2);
            flags.push("--join".into());
        }
        if cfg.lease {
            flags.extend(["--read-only-option".into(), "lease-based".into()]);
        }
        if cfg.cas {
            // As many sessions as writers: a writer's new session evicts another's.
            flags.extend(["--max-sessions".into(), cfg.clients.to_string()]);
        }
        let args = Args::parse_from(flags);
        let mut config = args.to_config().map_err(|e| WholeFailure {
            seed: cfg.seed,
            reason: format!("configuration: {e}"),
            trace: Vec::new(),
        })?;
        config.election_seed = Some(rng.next_u64());

        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let mut clock_rate = 1_000_000;
        if cfg.timing {
            let skew = timing_rng.below(2 * WALL_SKEW_MS_MAX + 1) as i64 - WALL_SKEW_MS_MAX as i64;
            clock.set_wall_offset_ms(skew);
            let drift = crate::clock::CLOCK_DRIFT_PPM_MAX;
            clock_rate = 1_000_000 - drift + timing_rng.below(2 * drift + 1);
        }
        nodes.push(SimNode {
            config,
            fs: SimFs::new(),
            clock,
            clock_rate,
            incarnation: rng.next_u64() | 1,
            node: None,
            booting: None,
            ask_members: false,
            held: false,
            restart_at: None,
            paused_until: None,
            disk_full: None,
            stalled_until: Duration::ZERO,
        });
    }
    // With timing faults, one more client: a reader roaming over the nodes; with membership
    // changes (or learners to add), an operator.
    let initial_cluster = nodes[0].config.initial_cluster.clone();
    let operator = cfg.membership || cfg.single_voter;
    let clients = (0..cfg.clients + usize::from(cfg.timing) + usize::from(operator))
        .map(|index| SimClient {
            index,
            conn: None,
            session: None,
            seq: 0,
            pending: None,
            sent_at: Duration::ZERO,
            write: None,
            next_request_id: 1,
            next_key: 0,
            target: index % cfg.nodes,
            role: if index < cfg.clients {
                Role::Writer
            } else if index == cfg.clients && cfg.timing {
                Role::Roamer
            } else {
                Role::Operator
            },
        })
        .collect();
    let mut sim = Sim {
        cfg: cfg.clone(),
        rng,
        timing_rng,
        world,
        nodes,
        clients,
        now: Duration::ZERO,
        keys: BTreeMap::new(),
        outcome: WholeOutcome::default(),
        trace: Default::default(),
        partition: None,
        crashing: Vec::new(),
        members_rng: Rng::new(cfg.seed ^ 0x006d_656d_6265_7273),
        // With one voter, the operator's first task: adding the others as learners.
        replacement: if cfg.single_voter { Replacement::Adding(1) } else { Replacement::Idle },
        disk_rng: Rng::new(cfg.seed ^ 0x6469_736b),
        operator_retry_at: Duration::ZERO,
        operator_in_force_since: None,
        cas_rng: Rng::new(cfg.seed ^ 0x0063_6173),
        wipe_rng: Rng::new(cfg.seed ^ 0x7769_7065),
        initial_cluster,
        hostile_rng: Rng::new(cfg.seed ^ 0x686f_7374),
        impostor: None,
        impostors_connected: 0,
        one_way_rng: Rng::new(cfg.seed ^ 0x6f6e_6577_6179),
        one_way: None,
        leaders_by_term: BTreeMap::new(),
        committed_entries: BTreeMap::new(),
        checked_commit: vec![0; cfg.nodes],
    };
    // A panic in a node (an invariant of the core or of raftd) fails the seed like any other
    // broken property, with its trace.
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run()));
    run.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        Err(sim.fail(format!("a node panicked: {message}")))
    })
}

impl Sim {
    /// The faulty steps, then healing and settling, then the check of every acknowledged write.
    fn run(&mut self) -> Result<WholeOutcome, WholeFailure> {
        let cfg = self.cfg.clone();
        let sim = self;
        for i in 0..cfg.nodes {
            sim.start_node(i)?;
        }
        for _ in 0..cfg.steps {
            sim.step(true)?;
        }
        // Heal everything, restart every node, let the clients finish, then read every
        // acknowledged key back.
        sim.world.heal();
        sim.partition = None;
        sim.one_way = None;
        for n in &mut sim.nodes {
            n.paused_until = None;
        }
        for i in 0..cfg.nodes {
            let n = &sim.nodes[i];
            if n.node.is_none() && n.booting.is_none() && !n.held {
                sim.start_node(i)?;
            }
        }
        for _ in 0..SETTLE_STEPS {
            sim.step(false)?;
            if sim.clients.iter().any(|c| c.write.is_some()) || sim.replacement != Replacement::Idle
            {
                continue;
            }
            // Settled: a leader, and every node's log committed and applied to its end, the same
            // end (a leader just elected has not committed the entries of earlier terms yet).
            let applied: Vec<(u64, u64, u64, u64)> = sim
                .nodes
                .iter()
                .filter_map(|n| n.node.as_ref().map(|node| node.status()))
                .map(|s| (s.applied, s.commit, s.last_index, s.leader))
                .collect();
            let settled = applied.len() == cfg.nodes
                && applied.iter().all(|&(a, c, l, leader)| {
                    a == c && c == l && leader != 0 && (a, leader) == (applied[0].0, applied[0].3)
                });
            if !settled {
                continue;
            }
            // Every acknowledged write is in every node's state machine: each key at its last
            // acknowledged version, or a later one invoked (whose outcome was not known), the same
            // on every node.
            for (key, history) in &sim.keys {
                let acknowledged = history.versions.iter().rposition(|v| v.acknowledged.is_some());
                let values: Vec<Option<&Vec<u8>>> = sim
                    .nodes
                    .iter()
                    .map(|n| n.node.as_ref().expect("all running").applied_value(key.as_bytes()))
                    .collect();
                for (i, value) in values.iter().enumerate() {
                    let version = value.and_then(|v| version_of(key, v));
                    let fine = match (acknowledged, version) {
                        (_, Some(v)) if v >= history.versions.len() => false,
                        (Some(a), Some(v)) => v >= a,
                        (Some(_), None) => false,
                        (None, _) => value.is_none() || version.is_some(),
                    };
                    if !fine || *value != values[0] {
                        return Err(sim.fail(format!(
                            "acknowledged write {key} (version {acknowledged:?}) is missing on node \
                             {} at applied index {}: it holds {:?} (node 1 {:?})",
                            i + 1,
                            applied[0].0,
                            value.map(|v| String::from_utf8_lossy(v)),
                            values[0].map(|v| String::from_utf8_lossy(v)),
                        )));
                    }
                }
            }
            return Ok(std::mem::take(&mut sim.outcome));
        }
        Err(sim.fail(format!("the healed cluster did not settle within {SETTLE_STEPS} steps")))
    }
}
