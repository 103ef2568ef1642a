//! The node: one thread, one `mio::Poll`, around the Raft core, the WAL and the state
//! machine.
//!
//! Each loop iteration: read every ready socket and decode frames -> step peer messages,
//! collect client writes and reads -> propose the writes as one batch, ask one read index for
//! the reads -> while the core has a Ready: persist (one sync for the batch; a leader sends
//! first), send, apply, answer clients, advance -> flush sockets.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::Token;
use raft::{
    ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, MessageType, RawNode,
    SnapshotStatus, StateType,
};

use crate::clock::{Clock, SystemClock};
use crate::errors::{Error, Result};
use crate::kv::{
    Applied, CommandBody, CommandBodyOf, CommandOf, CommandRef, EntryPayload, Kv, LegacyWrite,
    MemberContext, SessionLimits,
};
use crate::metrics::{Metrics, Operation};
use crate::net::{MioNet, Net, NetEvent, Port, CLIENT_LISTENER, PEER_LISTENER, SYNC_DONE};
use crate::protocol::*;
use crate::resolve::{Lookup, Resolver};
use crate::storage::{SnapshotJob, WalStorage};
use crate::transport::{Conn, ConnKind, ReadOutcome};

mod apply;
mod backup;
mod client;
mod peers;

/// A peer frame at least this long (an append carrying entries, a snapshot piece) is copied
/// whole into one shared buffer, and the entries in it are decoded as slices of that buffer;
/// a shorter one (a heartbeat, a response, an append of one small entry) is decoded with a
/// copy of each field, which then costs no more.
const SHARED_FRAME_BYTES_MIN: usize = 256;

const FIRST_CONN_TOKEN: usize = 3;
/// A partly received snapshot is dropped after this long without a chunk.
const SNAPSHOT_RECEIVE_TIMEOUT: Duration = Duration::from_secs(30);
/// Reconnection backoff bounds for peer connections.
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A node that every peer refuses as removed for this many election timeouts stops: it was
/// removed for good (a re-added node is welcomed by the peers that applied its re-addition
/// within moments, which clears the count).
const REMOVED_STOP_AFTER_ELECTION_TIMEOUTS: u32 = 10;
/// Writes kept aside during a snapshot folded back into the state machine's map per loop
/// iteration (about a millisecond's worth).
const FOLD_IN_ENTRIES_PER_ITERATION: usize = 2048;
/// Time one loop iteration may spend handling Readies before it polls sockets again.
const READY_TIME_BUDGET: Duration = Duration::from_millis(20);
/// A read index not answered after this long is asked again, with the same context: the
/// request or its answer may have been lost with a connection, or the leader may have changed
/// (a new leader never heard of it). A leader that still holds the request ignores the
/// repeat, and whichever answer comes first serves the reads. (etcd retries after 500 ms too.)
const READ_INDEX_RETRY: Duration = Duration::from_millis(500);
/// Most ticks caught up at once after a pause, in election timeouts.
const TICK_CATCH_UP_ELECTION_TIMEOUTS: u64 = 2;
/// A peer's space alarm counts this long after its last report (sent every second).
const PEER_ALARM_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest snapshot accepted from the leader, in bytes (it is received into memory).
pub const SNAPSHOT_RECEIVE_BYTES_MAX: u64 = 4 * 1024 * 1024 * 1024;
/// A second connection from a peer that is connected is refused; the first is closed too when
/// nothing arrived on it for this many election timeouts (its peer restarted or its machine
/// went away without a FIN), so that the peer's next attempt gets in.
const STALE_CONNECTION_ELECTION_TIMEOUTS: u32 = 1;
/// Largest key-value command accepted by default (`--max-request-bytes`): a 16 MiB value
/// with its key.
pub const REQUEST_SIZE_MAX_DEFAULT: usize = 17 * 1024 * 1024;
/// Bytes a frame needs besides the command it carries (message and entry headers): the
/// frame limit must exceed the request limit by this much.
pub const FRAME_OVERHEAD_BYTES_MAX: usize = 1024 * 1024;

/// Everything a node is started with.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id.
    pub id: u64,
    /// The cluster's name.
    pub cluster_id: String,
    /// Where the WAL and snapshots live.
    pub data_dir: PathBuf,
    /// Peer listener address.
    pub listen_peer: SocketAddr,
    /// Where `/metrics` and `/health` are served over HTTP, if anywhere.
    pub listen_metrics: Option<SocketAddr>,
    /// Client and admin listener address.
    pub listen_client: SocketAddr,
    /// Where other nodes reach this node's peer listener.
    pub advertise_peer: String,
    /// Where clients reach this node's client listener (told in redirects).
    pub advertise_client: String,
    /// Peer addresses of the initial members (used only when the data dir is empty).
    pub initial_cluster: BTreeMap<u64, String>,
    /// Start empty and wait to be added.
    pub join: bool,
    /// A backup (`raftctl snapshot save`) an empty data dir starts a new cluster from, with
    /// `initial_cluster` for members.
    pub restore: Option<PathBuf>,
    /// The Raft knobs (id, applied and peers are set by the node).
    pub raft: raft::Config,
    /// Seeds the randomized election timeout (None: from the process id and the time; a
    /// simulator gives one so that a run replays).
    pub election_seed: Option<u64>,
    /// Time per tick.
    pub tick_interval: Duration,
    /// Snapshot every this many applied entries (0: never automatically).
    pub snapshot_entries: u64,
    /// Entries kept in the log behind a snapshot, for followers slightly behind.
    pub snapshot_catchup_entries: u64,
    /// Secret required in every client handshake.
    pub token: Option<String>,
    /// Secret required in every peer handshake (never the client one).
    pub peer_token: Option<String>,
    /// Which ports speak TLS, with which certificates.
    pub tls: crate::tls::TlsSettings,
    /// Accept `Fault`/`Heal` admin requests.
    pub allow_fault_injection: bool,
    /// Tests only: record what each sync makes durable here (`wal::fs::ShadowFs`).
    pub shadow_dir: Option<PathBuf>,
    /// How long a client request may wait.
    pub request_timeout: Duration,
    /// Largest frame accepted.
    pub frame_size_max: usize,
    /// Largest key-value command accepted (encoded).
    pub max_request_bytes: usize,
    /// WAL segment size.
    pub segment_size_bytes: u64,
    /// Bounds of the client session table, written into each session registration this node
    /// proposes as leader (the table follows the limits of the last registration applied).
    pub session_limits: SessionLimits,
    /// Bounds on connections.
    pub conn_limits: ConnLimits,
    /// The data dir's quota and the free space kept on its file system (both 0: not
    /// watched, as in a simulation, whose file system is not the machine's).
    pub space_limits: crate::space::SpaceLimits,
}

/// Client connections kept at most by default (`--max-client-connections`).
pub const CLIENT_CONNECTIONS_MAX_DEFAULT: usize = 1024;
/// Connections in their handshake at most by default (`--max-pending-handshakes`).
pub const PENDING_HANDSHAKES_MAX_DEFAULT: usize = 128;
/// Time to send a Hello by default (`--handshake-timeout-ms`).
pub const HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Bytes of connection buffers held at most by default (`--max-buffered-bytes`): 256 MiB,
/// four frames of the default size and then some.
pub const BUFFERED_BYTES_MAX_DEFAULT: usize = 256 * 1024 * 1024;
/// A learner is promoted only once its log is within this many entries of the leader's...
pub const PROMOTE_LAG_ENTRIES_MAX: u64 = 1000;
/// ...and holds at least this share of the leader's log, in percent (etcd's 90%), so that on a
/// short log an empty learner is not within the allowance.
pub const PROMOTE_MATCHED_PERCENT_MIN: u64 = 90;

/// How far behind the leader's last index `last_index` a learner may be and be promoted.
pub fn promote_lag_allowed(last_index: u64) -> u64 {
    PROMOTE_LAG_ENTRIES_MAX.min(last_index * (100 - PROMOTE_MATCHED_PERCENT_MIN) / 100)
}
/// File descriptors kept free for storage (WAL segments, snapshot files, directories):
/// connections are shed before the process's limit comes closer than this.
pub const FD_RESERVE: usize = 64;
/// File descriptors kept for peer connections besides: client connections are shed this
/// many earlier, so that a flood of clients never keeps a peer from reconnecting.
pub const PEER_FD_RESERVE: usize = 32;

/// Bounds on connections, so that floods cannot exhaust memory or file descriptors.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// Client connections kept at most.
    pub max_client_connections: usize,
    /// Inbound connections whose Hello is not yet accepted, at most.
    pub max_pending_handshakes: usize,
    /// Time an inbound connection has to send its Hello.
    pub handshake_timeout: Duration,
    /// Bytes all connections' buffers may hold together.
    pub max_buffered_bytes: usize,
}

/// How often freed memory is handed back to the system.
const MEMORY_COLLECT_INTERVAL: Duration = Duration::from_secs(1);

/// Hands memory freed more than the allocator's purge delay ago back to the system. mimalloc
/// (raftd's allocator) purges only when the thread that freed calls it again; a node gone
/// idle after a flood kept hundreds of MiB of freed buffers resident.
fn give_back_freed_memory() {
    // SAFETY: mi_collect takes no pointers; it walks the calling thread's heap.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(false)
    };
}

/// The process's limit on open file descriptors (its soft RLIMIT_NOFILE).
fn fd_limit() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given, which lives across the call.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if rc != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return usize::MAX;
    }
    usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
}

#[derive(Clone)]
struct Waiter {
    conn: Token,
    request_id: u64,
    /// When it times out: it arrived `--request-timeout-ms` before (which the latency
    /// metrics count from).
    deadline: Instant,
    /// What it asks (for the latency metrics).
    op: Operation,
}

struct PendingRead {
    waiter: Waiter,
    key: Vec<u8>,
    /// A backup waiting for its read index (`AdminRequest::SnapshotSave`), not a get.
    backup: bool,
}

/// Reads waiting for the read index asked with `ctx`.
struct ReadsInFlight {
    ctx: Vec<u8>,
    /// When the read index was last asked: see [`READ_INDEX_RETRY`].
    asked: Instant,
    reads: Vec<PendingRead>,
}

struct ConfWaiter {
    waiter: Waiter,
}

struct PeerLink {
    addr: Option<String>,
    client_addr: Option<String>,
    conn: Option<Token>,
    next_attempt: Instant,
    backoff: Duration,
    /// A snapshot being sent in chunks: the message without data, the data, the next offset.
    snapshot_out: Option<(Message, Vec<u8>, usize)>,
    /// Its last outbound connection was welcomed and has not closed since: the operator is
    /// told at INFO when a peer goes away and when it is back.
    up: bool,
    /// When the oldest heartbeat not answered yet was sent (the round-trip metric).
    heartbeat_sent: Option<Instant>,
}

struct SnapshotIn {
    message: Message,
    data: Vec<u8>,
    total: u64,
    last_chunk: Instant,
}

/// A running node, over the network `N`. Its maps are ordered, not hashed: what the node
/// does depends on no random hash seed, so that a simulated run replays.
pub struct Node<N: Net = MioNet> {
    config: NodeConfig,
    net: N,
    /// The readiness events of the last poll (kept to reuse their memory).
    events: Vec<NetEvent>,
    /// When the next tick is due.
    next_tick: Instant,
    conns: BTreeMap<Token, Conn<N::Stream>>,
    next_token: usize,
    raw: RawNode<WalStorage>,
    kv: Kv,
    peers: BTreeMap<u64, PeerLink>,
    snapshots_in: BTreeMap<u64, SnapshotIn>,
    /// Writes proposed, by `(session_id, seq)`: the first client waiting on each.
    write_waiters: BTreeMap<(u64, u64), Waiter>,
    /// Any further client waiting on one of those writes (a retry that arrived while it was
    /// in flight). Apart, so that the one waiter of nearly every write takes no allocation
    /// of its own (a `Vec` per write was 3% of a write's instructions).
    more_write_waiters: BTreeMap<(u64, u64), Vec<Waiter>>,
    /// Session registrations proposed, by the counter of their token.
    session_waiters: BTreeMap<u64, Waiter>,
    /// Connections whose reading stopped at the read budget with bytes possibly left in the
    /// socket: read again in the next iteration (no readiness event will come for them).
    read_again: std::collections::BTreeSet<Token>,
    /// When each refusal reason was last logged at WARN: a peer retrying every backoff (a
    /// removed node, a member waiting to bootstrap) is logged once a minute, not each time.
    refusals_logged: BTreeMap<String, Instant>,
    /// Peer host names, resolved off the loop.
    resolver: Resolver,
    /// The process's file descriptor limit (connections are shed `FD_RESERVE` before it).
    fd_limit: usize,
    /// An accept failed (out of file descriptors): the listeners are tried again at the next
    /// tick, since an edge-triggered listener says nothing more about connections it holds.
    accept_retry: bool,
    /// Output queued for clients: exact after each flush, plus the replies queued since. Over
    /// `--max-buffered-bytes`, the clients holding the most are shed at once, not at the next
    /// tick (in one tick, 24 clients not reading 1 MiB replies queued hundreds of MiB).
    client_queued: usize,
    /// When freed memory was last handed back to the system.
    memory_collected_at: Instant,
    /// Connections shed since the last log line about it, and when that was.
    shed_count: u64,
    shed_logged_at: Instant,
    proposals: Vec<(raft::Bytes, raft::Bytes)>,
    proposal_waiters: Vec<(client::Proposed, Waiter)>,
    read_batch: Vec<PendingRead>,
    reads_in_flight: BTreeMap<u64, ReadsInFlight>,
    reads_ready: VecDeque<(u64, Vec<PendingRead>)>,
    read_contexts: client::ReadContexts,
    conf_waiters: BTreeMap<u64, ConfWaiter>,
    next_conf_token: u64,
    drop_to: Vec<u64>,
    drop_from: Vec<u64>,
    delay: Duration,
    delayed: VecDeque<(Instant, Message)>,
    started: Instant,
    last_snapshot_index: u64,
    /// The state machine decoded from the last snapshot received, until the core installs it
    /// (or it is superseded): decoded once, before it reaches the core.
    restored: Option<(raft::SnapshotMetadata, Kv)>,
    /// Why the last snapshot attempt wrote no file, if it failed.
    snapshot_failure: Option<String>,
    /// An error found while serving a request that the node cannot continue after; the loop
    /// returns it.
    fatal: Option<Error>,
    /// The snapshot whose file is being written, and when it was taken.
    snapshot_job: Option<(SnapshotJob, Instant)>,
    /// The Ready whose sync is in flight.
    persisting: Option<apply::Persisting>,
    /// Peers that refused this node as removed from the cluster (cleared by any welcome).
    removed_by: std::collections::BTreeSet<u64>,
    /// Since when every known peer refuses this node as removed.
    refused_as_removed_since: Option<Instant>,
    shutdown: Arc<AtomicBool>,
    /// Where time is read.
    clock: Arc<dyn Clock>,
    /// This data dir's incarnation.
    incarnation: u64,
    /// The incarnation each peer presented (in its hello, or its welcome to this node); the
    /// leader records those the configuration lacks.
    seen_incarnations: BTreeMap<u64, u64>,
    /// Peers found with a data dir other than the recorded one, and the incarnation found
    /// (each logged once).
    replaced_peers: BTreeMap<u64, u64>,
    /// What the node measures (served by `--listen-metrics`).
    metrics: Arc<Metrics>,
    /// The leader last published to the metrics (to count changes).
    metrics_leader: u64,
    /// Writes whose waiters timed out while their entries may still apply, with the term
    /// they were proposed in: a retry of one is never refused with NoSpace.
    expired_writes: BTreeMap<(u64, u64), u64>,
    /// Backups waiting for a snapshot of at least the index they name.
    snapshot_saves: Vec<(Waiter, u64)>,
    /// Backups being read, by export id.
    snapshot_exports: BTreeMap<u64, backup::Export>,
    next_export: u64,
    /// A snapshot was started for the backups waiting (its failure is theirs).
    save_snapshot_began: bool,
    /// When the data dir was last measured.
    space_checked_at: Option<Instant>,
    /// Why this node's space alarm is raised, if it is.
    no_space: Option<String>,
    /// Why puts are refused for want of space (this node's alarm or a member's), if they
    /// are: kept up to date at each tick and each report, so that a write only looks here.
    space_refusal: Option<String>,
    /// The time replies are stamped with for the latency metrics: read after each poll and
    /// each sync (the waits of a loop iteration), not per reply.
    replied_at: Instant,
    /// The space alarm each peer last reported, and when (a report older than
    /// `PEER_ALARM_TIMEOUT` no longer counts: its node is down, and raises it again if it
    /// restarts short of space).
    peer_no_space: BTreeMap<u64, (bool, Instant)>,
}

/// The hello a node opens each peer connection with (`cluster_incarnation` 0 while it has
/// none: waiting to bootstrap, or joined and not sent the log yet).
pub(crate) fn peer_hello(config: &NodeConfig, incarnation: u64, cluster_incarnation: u64) -> Hello {
    Hello {
        versions: ProtocolVersions::OURS,
        cluster_id: config.cluster_id.clone(),
        node_id: config.id,
        role: Role::Peer,
        token: config.peer_token.clone(),
        client_addr: Some(config.advertise_client.clone()),
        peer_addr: Some(config.advertise_peer.clone()),
        incarnation,
        cluster_incarnation,
    }
}

/// Whether a handshake's token is the configured one, in time that does not depend on where
/// they differ (a byte-by-byte comparison that stops early lets a remote guesser learn the
/// secret a prefix at a time from response times).
pub(crate) fn tokens_match(given: Option<&str>, expected: Option<&str>) -> bool {
    match (given, expected) {
        (None, None) => true,
        (Some(given), Some(expected)) => {
            let (a, b) = (given.as_bytes(), expected.as_bytes());
            // The length is not secret; the content is.
            let differ = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
            a.len() == b.len() && std::hint::black_box(differ) == 0
        }
        _ => false,
    }
}

fn refused(reason: impl Into<String>) -> ClientError {
    ClientError::Refused(reason.into())
}

fn role_name(state: StateType) -> &'static str {
    match state {
        StateType::Follower => "follower",
        StateType::PreCandidate => "pre-candidate",
        StateType::Candidate => "candidate",
        StateType::Leader => "leader",
    }
}

impl Node<MioNet> {
    /// Opens the node's state and binds its listeners.
    pub fn new(config: NodeConfig, shutdown: Arc<AtomicBool>) -> Result<Node> {
        Node::with_clock(config, shutdown, Arc::new(SystemClock))
    }

    /// A node reading time from `clock` (a simulator's).
    pub fn with_clock(
        config: NodeConfig,
        shutdown: Arc<AtomicBool>,
        clock: Arc<dyn Clock>,
    ) -> Result<Node> {
        let fs: Arc<dyn wal::fs::Fs> = match &config.shadow_dir {
            None => wal::fs::os(),
            Some(shadow) => {
                wal::fs::create_dir_all_durably(&wal::fs::OsFs, &config.data_dir)
                    .map_err(|e| Error::io("create data dir", &config.data_dir, e))?;
                let fs = wal::fs::ShadowFs::new(&config.data_dir, shadow)
                    .map_err(|e| Error::io("open the shadow of", shadow, e))?;
                warn!("recording what is durable in {} (a test setting)", shadow.display());
                Arc::new(fs)
            }
        };
        let metrics = Metrics::new(config.id);
        if let Some(addr) = config.listen_metrics {
            let listener = std::net::TcpListener::bind(addr)
                .map_err(|e| Error::io("listen (metrics)", addr.to_string(), e))?;
            crate::metrics::serve(listener, Arc::clone(&metrics))
                .map_err(|e| Error::io("start", "the metrics thread", e))?;
        }
        let mut storage = open_storage(&config, fs, None)?;
        let incarnation = storage.incarnation();
        let tls = if config.tls.any() {
            Some(
                crate::tls::TlsContext::load(&config.tls, config.id, &config.cluster_id)
                    .map_err(Error::Config)?,
            )
        } else {
            None
        };
        // Bound first: while it waits to bootstrap, the node answers its peers.
        let std_peer_listener = std::net::TcpListener::bind(config.listen_peer)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| Error::io("listen (peer)", config.listen_peer.to_string(), e))?;
        let restore = match (&config.restore, storage.is_empty()) {
            (Some(path), true) => Some(read_backup(path)?),
            (Some(path), false) => {
                warn!(
                    "the data dir is not empty: --restore {} ignored (it starts new clusters \
                     only)",
                    path.display()
                );
                None
            }
            (None, _) => None,
        };
        if let Some((snapshot, _)) = &restore {
            info!(
                "starting a new cluster from the backup {} (index {}, term {})",
                config.restore.as_deref().unwrap_or(std::path::Path::new("")).display(),
                snapshot.metadata.index,
                snapshot.metadata.term
            );
        }
        if storage.is_empty() {
            if config.join {
                info!(
                    "empty data dir (incarnation {incarnation:016x}): joining, waiting to be \
                     added by a membership change"
                );
            } else if config.initial_cluster.is_empty() {
                return Err(Error::Config(
                    "the data dir is empty: give --initial-cluster or --join".into(),
                ));
            } else {
                info!(
                    "empty data dir (incarnation {incarnation:016x}): asking the initial members"
                );
                match crate::bootstrap::await_initial_members(
                    &std_peer_listener,
                    &config,
                    tls.as_ref(),
                    incarnation,
                    &shutdown,
                )? {
                    crate::bootstrap::Outcome::Bootstrap(incarnations) => match restore {
                        Some(backup) => {
                            restore_bootstrap(&mut storage, &config, &incarnations, backup)?
                        }
                        None => bootstrap(&mut storage, &config, &incarnations)?,
                    },
                    crate::bootstrap::Outcome::Join => {
                        if restore.is_some() {
                            warn!(
                                "the cluster exists already (its members recorded this node): \
                                 joining it; --restore ignored"
                            );
                        }
                    }
                }
            }
        }
        let (raw, kv, applied) = open_core(&config, storage)?;
        let net = MioNet::new(std_peer_listener, config.listen_client, tls)
            .map_err(|e| Error::io("listen (client)", config.listen_client.to_string(), e))?;
        Node::assemble(config, shutdown, clock, (raw, kv, applied), net, metrics)
    }
}

/// What [`Node::simulated_start`] opened. (Made once per start and moved at once: the
/// difference in size between the variants costs nothing.)
#[allow(clippy::large_enum_variant)]
pub enum Started<N: Net> {
    /// The node, serving.
    Running(Node<N>),
    /// An empty data dir asking the initial members what it is.
    Booting(Booting<N>),
}

/// An empty data dir asking the initial members whether the cluster exists
/// ([`crate::bootstrap`]), over a simulator's network.
pub struct Booting<N: Net> {
    config: NodeConfig,
    clock: Arc<dyn Clock>,
    storage: WalStorage,
    exchange: crate::bootstrap::NetExchange<N>,
}

impl<N: Net> Booting<N> {
    /// One turn of the exchange: the node once the answers decided (bootstrapped, or joining
    /// the cluster that recorded it), an error when this node must not start (its id was
    /// recorded with another data dir, or removed), or the booting node again.
    pub fn turn(mut self) -> Result<Started<N>> {
        let Some(outcome) = self.exchange.turn() else { return Ok(Started::Booting(self)) };
        let Booting { config, clock, mut storage, exchange } = self;
        match outcome? {
            crate::bootstrap::Outcome::Bootstrap(incarnations) => {
                bootstrap(&mut storage, &config, &incarnations)?
            }
            crate::bootstrap::Outcome::Join => {}
        }
        let core = open_core(&config, storage)?;
        let net = exchange.into_net();
        let metrics = Metrics::new(config.id);
        let stop = Arc::new(AtomicBool::new(false));
        let node = Node::assemble(config, stop, clock, core, net, metrics)?;
        Ok(Started::Running(node))
    }
}

impl<N: Net> Node<N> {
    /// A node whose world is given (a simulator's): its data dir on `fs` (a new one gets the
    /// incarnation `new_incarnation`; an empty one with an `--initial-cluster` is bootstrapped
    /// with the members' incarnations `initial`, which the real node learns by asking its
    /// peers), its network `net` and its clock `clock`. Snapshot files are written, and old
    /// files deleted, on the loop's thread, so that a run replays.
    pub fn simulated(
        config: NodeConfig,
        clock: Arc<dyn Clock>,
        fs: Arc<dyn wal::fs::Fs>,
        net: N,
        new_incarnation: u64,
        initial: &BTreeMap<u64, u64>,
    ) -> Result<Node<N>> {
        let config = unwatched_space(config);
        let mut storage = open_storage(&config, fs, Some(new_incarnation))?;
        storage.set_inline(true);
        if storage.is_empty() && !config.join && !config.initial_cluster.is_empty() {
            bootstrap(&mut storage, &config, initial)?;
        }
        let core = open_core(&config, storage)?;
        let metrics = Metrics::new(config.id);
        Node::assemble(config, Arc::new(AtomicBool::new(false)), clock, core, net, metrics)
    }

    /// A node whose world is given, as [`Node::simulated`], whose empty data dir started with
    /// an `--initial-cluster` asks the members what it is, as the daemon's does
    /// ([`crate::bootstrap`]), over `net`: Booting until the answers decide. A data dir
    /// replaced under an id the cluster recorded is refused there.
    pub fn simulated_start(
        config: NodeConfig,
        clock: Arc<dyn Clock>,
        fs: Arc<dyn wal::fs::Fs>,
        net: N,
        new_incarnation: u64,
    ) -> Result<Started<N>> {
        let config = unwatched_space(config);
        let mut storage = open_storage(&config, fs, Some(new_incarnation))?;
        storage.set_inline(true);
        if storage.is_empty() && !config.join && !config.initial_cluster.is_empty() {
            let incarnation = storage.incarnation();
            let exchange =
                crate::bootstrap::NetExchange::new(&config, incarnation, net, clock.clone());
            return Ok(Started::Booting(Booting { config, clock, storage, exchange }));
        }
        let core = open_core(&config, storage)?;
        let metrics = Metrics::new(config.id);
        let stop = Arc::new(AtomicBool::new(false));
        let node = Node::assemble(config, stop, clock, core, net, metrics)?;
        Ok(Started::Running(node))
    }

    /// The node around its opened core and state machine, on `net`, measuring into `metrics`
    /// (the daemon's are served from before the node exists: during a bootstrap too).
    fn assemble(
        config: NodeConfig,
        shutdown: Arc<AtomicBool>,
        clock: Arc<dyn Clock>,
        (mut raw, kv, applied): (RawNode<WalStorage>, Kv, u64),
        net: N,
        metrics: Arc<Metrics>,
    ) -> Result<Node<N>> {
        raw.store_mut().set_metrics(Arc::clone(&metrics));
        let incarnation = raw.store().incarnation();
        let mut node = Node {
            net,
            events: Vec::new(),
            next_tick: clock.now() + config.tick_interval,
            conns: BTreeMap::new(),
            next_token: FIRST_CONN_TOKEN,
            raw,
            kv,
            peers: BTreeMap::new(),
            snapshots_in: BTreeMap::new(),
            write_waiters: BTreeMap::new(),
            more_write_waiters: BTreeMap::new(),
            session_waiters: BTreeMap::new(),
            read_again: std::collections::BTreeSet::new(),
            refusals_logged: BTreeMap::new(),
            resolver: Resolver::start()
                .map_err(|e| Error::io("start", "the host name resolver thread", e))?,
            fd_limit: fd_limit(),
            accept_retry: false,
            client_queued: 0,
            memory_collected_at: clock.now(),
            replied_at: clock.now(),
            shed_count: 0,
            shed_logged_at: clock.now(),
            proposals: Vec::new(),
            proposal_waiters: Vec::new(),
            read_batch: Vec::new(),
            reads_in_flight: BTreeMap::new(),
            reads_ready: VecDeque::new(),
            read_contexts: client::ReadContexts::new(config.id, incarnation),
            conf_waiters: BTreeMap::new(),
            next_conf_token: 1,
            drop_to: Vec::new(),
            drop_from: Vec::new(),
            delay: Duration::ZERO,
            delayed: VecDeque::new(),
            started: clock.now(),
            last_snapshot_index: applied,
            restored: None,
            snapshot_failure: None,
            fatal: None,
            snapshot_job: None,
            persisting: None,
            removed_by: std::collections::BTreeSet::new(),
            refused_as_removed_since: None,
            shutdown,
            clock,
            incarnation,
            seen_incarnations: BTreeMap::from([(config.id, incarnation)]),
            replaced_peers: BTreeMap::new(),
            metrics,
            metrics_leader: 0,
            snapshot_saves: Vec::new(),
            expired_writes: BTreeMap::new(),
            snapshot_exports: BTreeMap::new(),
            next_export: 1,
            save_snapshot_began: false,
            space_checked_at: None,
            no_space: None,
            space_refusal: None,
            peer_no_space: BTreeMap::new(),
            config,
        };
        for (&id, addr) in &node.config.initial_cluster.clone() {
            node.learn_peer(id, Some(addr.clone()), None);
        }
        for (id, addr) in node.kv.members().clone() {
            node.learn_peer(id, Some(addr), None);
        }
        let raft = &node.config.raft;
        info!(
            "node {} of cluster {:?} (incarnation {:016x}, data dir {incarnation:016x}) starting: \
             peer {}, client {}, data {}, applied {applied}; ticks of {} ms, election after {} \
             ticks, heartbeat every {}, check-quorum {}, pre-vote {}, reads {}, TLS {}",
            node.config.id,
            node.config.cluster_id,
            node.kv.cluster_incarnation(),
            node.config.listen_peer,
            node.config.listen_client,
            node.config.data_dir.display(),
            node.config.tick_interval.as_millis(),
            raft.election_tick,
            raft.heartbeat_tick,
            if raft.check_quorum { "on" } else { "off" },
            if raft.pre_vote { "on" } else { "off" },
            match raft.read_only_option {
                raft::ReadOnlyOption::Safe => "safe",
                raft::ReadOnlyOption::LeaseBased => "lease-based",
            },
            match (&node.config.tls.peer, &node.config.tls.client) {
                (None, None) => "off",
                (Some(_), None) => "on the peer port",
                (None, Some(_)) => "on the client port",
                (Some(_), Some(_)) => "on both ports",
            }
        );
        Ok(node)
    }

    /// Runs until SIGTERM/SIGINT (Ok) or a fatal error.
    pub fn run(&mut self) -> Result<()> {
        while !self.shutdown.load(Ordering::Relaxed) {
            self.turn()?;
        }
        info!("node {}: shutting down", self.config.id);
        crate::notify::notify("STOPPING=1");
        self.settle_sync()?;
        self.finish_snapshot(true)?;
        self.raw.store_mut().sync()?;
        Ok(())
    }

    /// One turn of the event loop: waits for the network at most until the next tick (not at
    /// all when work is left over), ticks for the time that passed, handles what arrived,
    /// proposes, persists, sends and applies, and writes out what is queued.
    pub fn turn(&mut self) -> Result<()> {
        // Readies left over (see handle_readies), or connections with more to read: look at
        // the sockets, do not wait. (While a sync is in flight, its end wakes the poll.)
        let readies_left = self.raw.has_ready() && self.persisting.is_none();
        let timeout = if readies_left || !self.read_again.is_empty() {
            Duration::ZERO
        } else {
            self.next_tick.saturating_duration_since(self.clock.now())
        };
        let mut events = std::mem::take(&mut self.events);
        if let Err(e) = self.net.poll(&mut events, Some(timeout)) {
            return Err(Error::io("poll", "event loop", e));
        }
        // Ticks first: those due passed before what the sockets hold now arrived (a follower
        // that counted them after a heartbeat would campaign for nothing).
        let now = self.clock.now();
        self.replied_at = now;
        if now >= self.next_tick {
            self.catch_up_ticks(now);
            self.housekeeping(now);
        }
        for event in &events {
            match event.token {
                PEER_LISTENER => self.accept(true),
                CLIENT_LISTENER => self.accept(false),
                // Taken by handle_readies, below.
                SYNC_DONE => {}
                token => self.conn_event(token, event.readable, event.writable, event.read_closed),
            }
        }
        self.events = events;
        for token in std::mem::take(&mut self.read_again) {
            // No event says what the socket holds: read until it says WouldBlock.
            self.conn_event(token, true, false, true);
        }
        self.submit_batches();
        self.handle_readies()?;
        self.kv.fold_in(FOLD_IN_ENTRIES_PER_ITERATION);
        self.finish_snapshot(false)?;
        self.serve_snapshot_saves()?;
        self.pump_snapshots();
        self.release_delayed();
        self.flush_all();
        match self.fatal.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Ticks for every interval that passed since `next_tick`, also those missed while the
    /// process was paused or a sync was slow, up to `TICK_CATCH_UP_ELECTION_TIMEOUTS` election
    /// timeouts' worth (enough to fire every timer; fewer ticks only make timers late, which
    /// the lease does not depend on: it runs on the clock).
    fn catch_up_ticks(&mut self, now: Instant) {
        let interval = self.config.tick_interval;
        let due = (now.duration_since(self.next_tick).as_nanos() / interval.as_nanos()) as u64 + 1;
        let most = (self.config.raft.election_tick as u64) * TICK_CATCH_UP_ELECTION_TIMEOUTS;
        let ticks = due.min(most);
        if due > self.config.raft.election_tick as u64 {
            info!("{due} ticks were due at once (a pause or a slow sync?); ticking {ticks}");
        }
        self.raw.advance_clock(self.clock.lease_now());
        for _ in 0..ticks {
            self.raw.tick();
        }
        self.next_tick += interval * u32::try_from(due).unwrap_or(u32::MAX);
    }

    /// The election timeout in time: `election_tick` ticks (before randomization).
    fn election_timeout(&self) -> Duration {
        self.config.tick_interval
            * u32::try_from(self.config.raft.election_tick).unwrap_or(u32::MAX)
    }

    fn alloc_token(&mut self) -> Token {
        let token = Token(self.next_token);
        self.next_token += 1;
        token
    }

    /// Why a new connection on this port must be closed at once, if it must: near the file
    /// descriptor limit, too many handshakes in progress, or (client port) too many clients.
    fn shed_reason(&self, peer_port: bool) -> Option<String> {
        let reserve = if peer_port { FD_RESERVE } else { FD_RESERVE + PEER_FD_RESERVE };
        if self.conns.len().saturating_add(reserve) >= self.fd_limit {
            return Some(format!(
                "{} connections, near the file descriptor limit {} (keeping {reserve} for \
                 storage{})",
                self.conns.len(),
                self.fd_limit,
                if peer_port { "" } else { " and peers" }
            ));
        }
        let limits = &self.config.conn_limits;
        let pending = self
            .conns
            .values()
            .filter(|c| {
                c.in_handshake() && matches!(c.kind, ConnKind::InboundPeer { .. }) == peer_port
            })
            .count();
        if pending >= limits.max_pending_handshakes {
            let port = if peer_port { "peer" } else { "client" };
            return Some(format!(
                "{pending} handshakes in progress on the {port} port (--max-pending-handshakes)"
            ));
        }
        if !peer_port {
            let clients =
                self.conns.values().filter(|c| matches!(c.kind, ConnKind::Client { .. })).count();
            if clients >= limits.max_client_connections {
                return Some(format!("{clients} client connections (--max-client-connections)"));
            }
        }
        None
    }

    /// Counts a shed connection, logging at most once a second.
    fn shed(&mut self, remote: std::net::SocketAddr, why: &str) {
        self.shed_count += 1;
        let now = self.clock.now();
        if now.duration_since(self.shed_logged_at) >= Duration::from_secs(1) {
            warn!("closed {} new connection(s), the last from {remote}: {why}", self.shed_count);
            self.shed_count = 0;
            self.shed_logged_at = now;
        }
    }

    fn accept(&mut self, peer_port: bool) {
        loop {
            let port = if peer_port { Port::Peer } else { Port::Client };
            match self.net.accept(port) {
                Ok((stream, remote)) => {
                    if let Some(why) = self.shed_reason(peer_port) {
                        drop(stream);
                        self.shed(remote, &why);
                        continue;
                    }
                    let kind = if peer_port {
                        ConnKind::InboundPeer { from: None }
                    } else {
                        ConnKind::Client { greeted: false }
                    };
                    let token = self.alloc_token();
                    let mut conn = Conn::new(
                        stream,
                        kind,
                        remote,
                        self.config.frame_size_max,
                        self.clock.now(),
                    );
                    if let Err(e) = conn.register(&mut self.net, token) {
                        warn!("register connection from {remote}: {e}");
                        continue;
                    }
                    self.conns.insert(token, conn);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of file descriptors (EMFILE, ENFILE) or memory: the connection
                    // waits in the backlog; try again at the next tick.
                    let port = if peer_port { "peer" } else { "client" };
                    warn!("accept on the {port} port: {e}; trying again at the next tick");
                    self.accept_retry = true;
                    return;
                }
            }
        }
    }

    fn close(&mut self, token: Token, why: &str) {
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        self.net.deregister(&mut conn.stream);
        match conn.kind {
            ConnKind::OutboundPeer { to } => {
                debug!("connection to peer {to} at {} closed: {why}", conn.remote);
                if let Some(link) = self.peers.get_mut(&to) {
                    if std::mem::take(&mut link.up) {
                        info!(
                            "peer {to} at {}: connection lost ({why}); reconnecting",
                            conn.remote
                        );
                    }
                    link.conn = None;
                    link.heartbeat_sent = None;
                    if link.snapshot_out.take().is_some() {
                        self.raw.report_snapshot(to, SnapshotStatus::Failure);
                    }
                }
                self.raw.report_unreachable(to);
            }
            ConnKind::InboundPeer { from } => {
                debug!("connection from peer {from:?} at {} closed: {why}", conn.remote);
                if let Some(from) = from {
                    self.snapshots_in.remove(&from);
                }
            }
            ConnKind::Client { .. } => debug!("client {} closed: {why}", conn.remote),
        }
    }

    /// Handles readiness of connection `token`; `read_closed`: the event said the remote
    /// closed (or no event was seen), so a short read does not end the reading.
    fn conn_event(&mut self, token: Token, readable: bool, writable: bool, read_closed: bool) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if writable {
            if let ConnKind::OutboundPeer { .. } = conn.kind {
                if let Ok(Some(e)) | Err(e) = N::connect_error(&conn.stream) {
                    let why = format!("connect: {e}");
                    self.close(token, &why);
                    return;
                }
            }
            if let Err(e) = conn.flush(&mut self.net, token) {
                self.close(token, &format!("write: {e}"));
                return;
            }
        }
        if !readable {
            return;
        }
        let short_read_drains = !read_closed && N::drained_by_short_read(&conn.stream);
        let outcome = conn.read_available(self.clock.now(), short_read_drains);
        // Reading a TLS stream may have queued handshake answers the socket did not take.
        if let Err(e) = conn.flush_stream(&mut self.net, token) {
            self.close(token, &format!("write: {e}"));
            return;
        }
        // Frames first: a peer may send its last frames and close. Each is dispatched where it
        // lies in the decoder's buffer, lent out meanwhile: a request's key and value are
        // decoded borrowed from there.
        loop {
            let Some(conn) = self.conns.get_mut(&token) else {
                return;
            };
            let mut decoder = conn.lend_decoder();
            let dispatched = match decoder.next_payload() {
                Ok(Some(payload)) => self.dispatch(token, payload),
                Ok(None) => {
                    conn.return_decoder(decoder);
                    break;
                }
                Err(e) => {
                    let remote = conn.remote;
                    if conn.in_handshake() && crate::tls::looks_like_tls(decoder.buffered()) {
                        warn!(
                            "a TLS client connected from {remote} to a plaintext port (this node \
                             runs without TLS on it); refused"
                        );
                        self.close(token, "TLS on a plaintext port");
                        return;
                    }
                    warn!("closing connection from {remote}: {e}");
                    self.close(token, "bad frame");
                    return;
                }
            };
            if let Err(why) = dispatched {
                let remote =
                    self.conns.get(&token).map(|c| c.remote.to_string()).unwrap_or_default();
                self.warn_refusal(&remote, &why);
                self.close(token, "refused");
                return;
            }
            match self.conns.get_mut(&token) {
                Some(conn) => conn.return_decoder(decoder),
                None => return,
            }
        }
        match outcome {
            Ok(ReadOutcome::Open) => {}
            Ok(ReadOutcome::More) => {
                self.read_again.insert(token);
            }
            Ok(ReadOutcome::Closed) => self.close(token, "closed by remote"),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                // A TLS failure: a certificate refused, a plaintext client, a bad record.
                if let Some(conn) = self.conns.get(&token) {
                    let with = match conn.kind {
                        ConnKind::OutboundPeer { to } => format!("peer {to} at {}", conn.remote),
                        ConnKind::InboundPeer { .. } => format!("{} on the peer port", conn.remote),
                        ConnKind::Client { .. } => format!("{} on the client port", conn.remote),
                    };
                    warn!("connection with {with} refused: {e}");
                }
                self.close(token, &format!("read: {e}"))
            }
            Err(e) => self.close(token, &format!("read: {e}")),
        }
    }

    /// Logs why a connection was closed: at WARN the first time in a minute for this reason,
    /// at DEBUG after that.
    fn warn_refusal(&mut self, remote: &str, why: &str) {
        const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);
        /// Reasons remembered at most (each names a peer or an address).
        const REFUSALS_REMEMBERED_MAX: usize = 1024;
        let now = self.clock.now();
        let recent = self
            .refusals_logged
            .get(why)
            .is_some_and(|&at| now.duration_since(at) < REFUSAL_LOG_INTERVAL);
        if recent {
            debug!("closing connection with {remote}: {why}");
            return;
        }
        if self.refusals_logged.len() >= REFUSALS_REMEMBERED_MAX {
            self.refusals_logged.clear();
        }
        self.refusals_logged.insert(why.to_string(), now);
        warn!("closing connection with {remote}: {why} (repeats within a minute logged at DEBUG)");
    }

    /// Handles one frame; an error closes the connection.
    fn dispatch(&mut self, token: Token, payload: &[u8]) -> std::result::Result<(), String> {
        let kind = self.conns[&token].kind.clone();
        match kind {
            ConnKind::InboundPeer { from: None } | ConnKind::Client { greeted: false } => {
                let hello = match decode_hello(payload) {
                    Ok(hello) => hello,
                    Err(reason) => {
                        // Told, so that a node or client of another version can say why.
                        let conn = self.conns.get_mut(&token).expect("dispatching on it");
                        let _ = conn.send(&HelloAck::Refused { reason: reason.clone() });
                        let _ = conn.flush(&mut self.net, token);
                        return Err(reason);
                    }
                };
                self.greet(token, hello)
            }
            ConnKind::InboundPeer { from: Some(from) } => {
                let frame: PeerFrame = if payload.len() >= SHARED_FRAME_BYTES_MIN {
                    // One copy of the frame, its entries slices of it: not one allocation and
                    // copy per entry.
                    let shared = raft::Bytes::copy_from_slice(payload);
                    raft::decode_sharing(&shared, codec::decode_payload)
                } else {
                    codec::decode_payload(payload)
                }
                .map_err(|e| format!("bad peer frame: {e}"))?;
                self.peer_frame(from, frame)
            }
            ConnKind::OutboundPeer { to } => {
                let ack: HelloAck =
                    codec::decode_payload(payload).map_err(|e| format!("bad hello ack: {e}"))?;
                match ack {
                    HelloAck::Welcome { protocol, .. } if !ProtocolVersions::speaks(protocol) => {
                        Err(format!(
                            "peer {to} welcomed us in wire protocol {protocol}, which this node \
                             does not speak ({PROTOCOL_VERSION_MIN}..={PROTOCOL_VERSION})"
                        ))
                    }
                    HelloAck::Welcome { node_id, incarnation, cluster_incarnation, .. }
                        if node_id == to =>
                    {
                        self.check_peer_identity(to, incarnation, cluster_incarnation)?;
                        if let Some(link) = self.peers.get_mut(&to) {
                            if !std::mem::replace(&mut link.up, true) {
                                info!("peer {to}: connected");
                            }
                        }
                        self.removed_by.clear();
                        self.refused_as_removed_since = None;
                        Ok(())
                    }
                    HelloAck::Welcome { node_id, .. } => {
                        Err(format!("dialled node {to}, reached node {node_id}"))
                    }
                    HelloAck::Replaced { node_id, expected, found } if node_id == to => {
                        // Nothing changes until an operator acts: ask again rarely.
                        if let Some(link) = self.peers.get_mut(&to) {
                            link.next_attempt = self.clock.now() + RECONNECT_BACKOFF_MAX;
                        }
                        Err(format!(
                            "peer {to} says: {}",
                            replaced_message(self.config.id, found, expected)
                        ))
                    }
                    HelloAck::Bootstrapping { node_id, .. } if node_id == to => {
                        Err(format!("peer {to} waits for every initial member to bootstrap"))
                    }
                    HelloAck::Replaced { node_id, .. }
                    | HelloAck::Bootstrapping { node_id, .. } => {
                        Err(format!("dialled node {to}, reached node {node_id}"))
                    }
                    HelloAck::Refused { reason } => Err(format!("peer {to} refused us: {reason}")),
                    HelloAck::Removed { node_id } if node_id == to => {
                        self.removed_by.insert(to);
                        let everyone = self.peers.keys().all(|id| self.removed_by.contains(id));
                        if everyone && self.refused_as_removed_since.is_none() {
                            self.refused_as_removed_since = Some(self.clock.now());
                        }
                        Err(format!("peer {to} says this node was removed from the cluster"))
                    }
                    HelloAck::Removed { node_id } => {
                        Err(format!("dialled node {to}, reached node {node_id}"))
                    }
                }
            }
            ConnKind::Client { greeted: true } => {
                // Keys and values borrowed from the frame: a write's are copied once, into
                // its command.
                let request: ClientRequestRef = codec::decode_payload_borrowed(payload)
                    .map_err(|e| format!("bad request: {e}"))?;
                self.client_request(token, request);
                Ok(())
            }
        }
    }

    fn greet(&mut self, token: Token, hello: Hello) -> std::result::Result<(), String> {
        let peer_port = matches!(self.conns[&token].kind, ConnKind::InboundPeer { .. });
        // Each port has its own secret: a client credential does not let anyone speak Raft.
        let secret = if peer_port { &self.config.peer_token } else { &self.config.token };
        let refusal = if !tokens_match(hello.token.as_deref(), secret.as_deref()) {
            Some(HelloAck::Refused { reason: "wrong token".to_string() })
        } else if (hello.role == Role::Peer) != peer_port {
            Some(HelloAck::Refused { reason: format!("{:?} hello on the wrong port", hello.role) })
        } else if hello.cluster_id != self.config.cluster_id
            && !(hello.role == Role::Client && hello.cluster_id.is_empty())
        {
            let reason =
                format!("cluster {:?}, this is {:?}", hello.cluster_id, self.config.cluster_id);
            Some(HelloAck::Refused { reason })
        } else if hello.role == Role::Peer {
            match self.net.check_peer_identity(&self.conns[&token].stream, hello.node_id) {
                Err(reason) => Some(HelloAck::Refused { reason }),
                Ok(()) => self.peer_refusal(token, &hello),
            }
        } else {
            None
        };
        if let Some(ack) = refusal {
            let reason = match &ack {
                HelloAck::Refused { reason } => reason.clone(),
                HelloAck::Removed { .. } => {
                    format!("node {} was removed from the cluster", hello.node_id)
                }
                HelloAck::Replaced { expected, found, .. } => {
                    replaced_message(hello.node_id, *found, *expected)
                }
                other => format!("{other:?}"),
            };
            let conn = self.conns.get_mut(&token).expect("dispatching on it");
            let _ = conn.send(&ack);
            let _ = conn.flush(&mut self.net, token);
            return Err(reason);
        }
        // (Agreed when the Hello was decoded.)
        let protocol = hello.versions.agree().unwrap_or(PROTOCOL_VERSION);
        let ack = match hello.role {
            Role::Peer => HelloAck::Welcome {
                node_id: self.config.id,
                incarnation: self.incarnation,
                cluster_incarnation: self.kv.cluster_incarnation(),
                protocol,
            },
            Role::Client => HelloAck::Welcome {
                node_id: self.config.id,
                incarnation: 0,
                cluster_incarnation: 0,
                protocol,
            },
        };
        let conn = self.conns.get_mut(&token).expect("dispatching on it");
        conn.greeted(match hello.role {
            Role::Peer => ConnKind::InboundPeer { from: Some(hello.node_id) },
            Role::Client => ConnKind::Client { greeted: true },
        });
        conn.send(&ack).map_err(|e| e.to_string())?;
        if hello.role == Role::Peer {
            self.seen_incarnations.insert(hello.node_id, hello.incarnation);
            self.learn_peer_from_hello(hello.node_id, hello.peer_addr, hello.client_addr);
        }
        Ok(())
    }

    /// Who may speak Raft to this node: a member of its latest applied configuration (any
    /// node while it has none: it was started with `--join` and waits for the leader), under
    /// the data dir incarnation the configuration recorded for it, of the same bootstrap of
    /// the cluster, on one connection at a time. The answer to send when not.
    fn peer_refusal(&mut self, token: Token, hello: &Hello) -> Option<HelloAck> {
        let id = hello.node_id;
        let refused = |reason: String| Some(HelloAck::Refused { reason });
        if id == 0 || id == self.config.id {
            return refused(format!("bad node id {id}"));
        }
        // A removed member, or a former life of one added back on a new disk: a process of that
        // data dir is no member, and it stops once refused for long enough.
        if self.kv.is_removed(id) || self.kv.is_retired(id, hello.incarnation) {
            return Some(HelloAck::Removed { node_id: self.config.id });
        }
        if hello.incarnation == 0 {
            return refused(format!("node {id} presented no data dir incarnation"));
        }
        let cs = self.raw.raft.prs.conf_state();
        let has_config = !cs.voters.is_empty() || !cs.learners.is_empty();
        let member = cs.voters.contains(&id)
            || cs.voters_outgoing.contains(&id)
            || cs.learners.contains(&id)
            || cs.learners_next.contains(&id);
        // A node of this very bootstrap that is not in this node's configuration may have been
        // added by an entry this node has not applied yet (it was down, or is behind), and may
        // even lead: it is accepted, or this node would never learn of the addition and stay
        // behind for good. (etcd's peers likewise refuse only removed members.) Anyone else is
        // no member.
        let ours = self.kv.cluster_incarnation();
        let same_bootstrap = ours != 0 && hello.cluster_incarnation == ours;
        if has_config && !member && !same_bootstrap {
            return refused(format!(
                "node {id} is not a member (voters {:?}, learners {:?})",
                cs.voters, cs.learners
            ));
        }
        if has_config && !member {
            info!(
                "node {id} is not in this node's configuration (voters {:?}, learners {:?}) but \
                 of the same bootstrap: accepted as a member added by an entry not applied here \
                 yet",
                cs.voters, cs.learners
            );
        }
        if let Some(expected) = self.kv.incarnation(id) {
            if hello.incarnation != expected {
                return Some(HelloAck::Replaced {
                    node_id: self.config.id,
                    expected,
                    found: hello.incarnation,
                });
            }
        }
        let ours = self.kv.cluster_incarnation();
        if ours != 0 && hello.cluster_incarnation != 0 && hello.cluster_incarnation != ours {
            return refused(format!(
                "node {id} belongs to another bootstrap of cluster {:?} (cluster incarnation \
                 {:016x}, this one is {ours:016x})",
                self.config.cluster_id, hello.cluster_incarnation
            ));
        }
        let stale_after = self.election_timeout() * STALE_CONNECTION_ELECTION_TIMEOUTS;
        let now = self.clock.now();
        let live = self
            .conns
            .iter()
            .find(|(&t, c)| t != token && c.kind == ConnKind::InboundPeer { from: Some(id) })
            .map(|(&t, c)| (t, c.remote, now.duration_since(c.last_read) >= stale_after));
        if let Some((existing, remote, stale)) = live {
            if stale {
                self.close(existing, "silent, and its peer connected again");
            }
            return refused(format!(
                "node {id} is already connected (from {remote}{})",
                if stale { "; that connection was silent and is closed: retry" } else { "" }
            ));
        }
        None
    }

    /// Checks the identity a dialled peer welcomed this node with: the recorded incarnation
    /// (logged once per replaced data dir), and the same bootstrap of the cluster.
    fn check_peer_identity(
        &mut self,
        to: u64,
        incarnation: u64,
        cluster_incarnation: u64,
    ) -> std::result::Result<(), String> {
        if self.kv.is_retired(to, incarnation) {
            return Err(format!(
                "node {to} answered from data dir {incarnation:016x}, which was removed from the \
                 cluster"
            ));
        }
        if let Some(expected) = self.kv.incarnation(to) {
            if incarnation != expected {
                let message = replaced_message(to, incarnation, expected);
                if self.replaced_peers.insert(to, incarnation) != Some(incarnation) {
                    error!("{message}");
                }
                if let Some(link) = self.peers.get_mut(&to) {
                    link.next_attempt = self.clock.now() + RECONNECT_BACKOFF_MAX;
                }
                return Err(message);
            }
        }
        self.replaced_peers.remove(&to);
        let ours = self.kv.cluster_incarnation();
        if ours != 0 && cluster_incarnation != 0 && cluster_incarnation != ours {
            return Err(format!(
                "node {to} belongs to another bootstrap of cluster {:?} (cluster incarnation \
                 {cluster_incarnation:016x}, this one is {ours:016x})",
                self.config.cluster_id
            ));
        }
        self.seen_incarnations.insert(to, incarnation);
        Ok(())
    }

    /// What a peer's hello says of its addresses: its client address, and its peer address
    /// only when no configuration entry gave one (a node that joined and has not replayed the
    /// log yet must answer the leader that dialled it). A hello never changes an address the
    /// configuration holds: a token holder claiming a member's id cannot divert its traffic.
    fn learn_peer_from_hello(
        &mut self,
        id: u64,
        peer_addr: Option<String>,
        client_addr: Option<String>,
    ) {
        let known = self.kv.members().contains_key(&id)
            || self.peers.get(&id).is_some_and(|l| l.addr.is_some());
        self.learn_peer(id, if known { None } else { peer_addr }, client_addr);
    }

    /// Records what is known of a peer's addresses. The peer address from the log or the
    /// command line wins over nothing; a client address comes from the peer's hello.
    fn learn_peer(&mut self, id: u64, addr: Option<String>, client_addr: Option<String>) {
        if id == self.config.id || self.kv.is_removed(id) {
            return;
        }
        let link = self.peers.entry(id).or_insert_with(|| PeerLink {
            addr: None,
            client_addr: None,
            conn: None,
            next_attempt: self.clock.now(),
            backoff: RECONNECT_BACKOFF_MIN,
            snapshot_out: None,
            up: false,
            heartbeat_sent: None,
        });
        if addr.is_some() && link.addr != addr {
            link.addr = addr;
            link.next_attempt = self.clock.now();
        }
        if client_addr.is_some() {
            link.client_addr = client_addr;
        }
    }

    fn peer_frame(&mut self, from: u64, frame: PeerFrame) -> std::result::Result<(), String> {
        if self.drop_from.contains(&from) {
            return Ok(());
        }
        match frame {
            PeerFrame::Raft(m) => {
                if m.from != from {
                    return Err(format!("message from {} on node {from}'s connection", m.from));
                }
                if m.msg_type == MessageType::HeartbeatResponse {
                    let sent = self.peers.get_mut(&from).and_then(|l| l.heartbeat_sent.take());
                    if let Some(sent) = sent {
                        // An answer to a heartbeat sent before a lost connection or an earlier
                        // leadership would measure the gap, not the round trip.
                        let elapsed = self.clock.now().saturating_duration_since(sent);
                        if elapsed <= self.election_timeout() {
                            self.metrics.peer_round_trip(from, elapsed);
                        }
                    }
                }
                self.step(m);
            }
            PeerFrame::Alarm { no_space } => {
                let now = self.clock.now();
                let before = self.peer_no_space.insert(from, (no_space, now)).is_some_and(|p| p.0);
                if before != no_space {
                    let state = if no_space { "raised" } else { "cleared" };
                    info!("node {from}'s space alarm {state}");
                    self.space_refusal = self.space_alarm();
                }
            }
            PeerFrame::SnapshotChunk { message, offset, total, data } => {
                if message.from != from || message.msg_type != MessageType::Snapshot {
                    return Err("bad snapshot chunk".to_string());
                }
                // Only the leader sends snapshots; one stream at a time, of a bounded size.
                if from != self.raw.raft.lead {
                    self.snapshots_in.remove(&from);
                    return Err(format!(
                        "a snapshot from {from}, which is not the leader ({})",
                        self.raw.raft.lead
                    ));
                }
                if total > SNAPSHOT_RECEIVE_BYTES_MAX {
                    self.snapshots_in.remove(&from);
                    return Err(format!(
                        "a snapshot of {total} bytes, more than {SNAPSHOT_RECEIVE_BYTES_MAX}"
                    ));
                }
                self.snapshots_in.retain(|&id, _| id == from);
                let now = self.clock.now();
                if offset == 0 {
                    let first = SnapshotIn { message, data: Vec::new(), total, last_chunk: now };
                    self.snapshots_in.insert(from, first);
                }
                let Some(incoming) = self.snapshots_in.get_mut(&from) else {
                    return Ok(());
                };
                if incoming.data.len() as u64 != offset
                    || incoming.total != total
                    || offset + data.len() as u64 > total
                {
                    self.snapshots_in.remove(&from);
                    return Err("snapshot chunk out of order".to_string());
                }
                incoming.data.extend_from_slice(&data);
                incoming.last_chunk = now;
                if incoming.data.len() as u64 == total {
                    let done = self.snapshots_in.remove(&from).expect("present");
                    let mut m = done.message;
                    let Some(snapshot) = m.snapshot.as_mut() else {
                        return Err("a snapshot chunk without a snapshot".to_string());
                    };
                    snapshot.data = done.data;
                    // Decoded and checked before the core sees it, so that a bad image (a
                    // bug, damage in transit, a hostile sender) is refused here instead of
                    // being made durable and failing to restore on every start.
                    let kv = Kv::restore(&snapshot.data).map_err(|e| {
                        error!(
                            "snapshot from {from} at index {} refused: {e}",
                            snapshot.metadata.index
                        );
                        format!("snapshot refused: {e}")
                    })?;
                    if let Err(e) = snapshot.metadata.conf_state.validate() {
                        error!("snapshot from {from} refused: {e}");
                        return Err(format!("snapshot refused: {e}"));
                    }
                    self.restored = Some((snapshot.metadata.clone(), kv));
                    info!("received snapshot from {from}: {total} bytes");
                    self.step(m);
                }
            }
        }
        Ok(())
    }

    fn step(&mut self, m: Message) {
        let (from, t) = (m.from, m.msg_type);
        if let Err(e) = self.raw.step(m) {
            debug!("step {t:?} from {from}: {e}");
        }
    }
}

/// `config` without space watching: a simulator's file system is not the machine's.
fn unwatched_space(mut config: NodeConfig) -> NodeConfig {
    config.space_limits = crate::space::SpaceLimits { quota_bytes: 0, reserve_bytes: 0 };
    config
}

/// Opens the data dir on `fs` (a new one gets the incarnation `new_incarnation`, else a
/// random one).
fn open_storage(
    config: &NodeConfig,
    fs: Arc<dyn wal::fs::Fs>,
    new_incarnation: Option<u64>,
) -> Result<WalStorage> {
    let identity = wal::Identity { node_id: config.id, cluster_id: config.cluster_id.clone() };
    let wal_options = wal::Options {
        segment_size_bytes: config.segment_size_bytes,
        new_incarnation,
        ..wal::Options::default()
    };
    let (storage, recovery) = WalStorage::open_on(fs, &config.data_dir, &identity, wal_options)?;
    if let Some(torn) = &recovery.torn_tail {
        warn!("recovered after a torn write: {torn:?}");
    }
    Ok(storage)
}

/// The Raft core and the state machine over opened (and, if new, bootstrapped) storage, and
/// the index applied.
fn open_core(
    config: &NodeConfig,
    mut storage: WalStorage,
) -> Result<(RawNode<WalStorage>, Kv, u64)> {
    let snapshot = storage.take_loaded_snapshot().unwrap_or_default();
    let kv = if snapshot.is_empty() {
        Kv::new()
    } else {
        Kv::restore(&snapshot.data).map_err(|e| {
            Error::Fatal(format!(
                "the state machine snapshot at index {} in {} cannot be restored: {e}",
                snapshot.metadata.index,
                config.data_dir.display()
            ))
        })?
    };
    let applied = snapshot.metadata.index;
    let raft_config = raft::Config {
        id: config.id,
        applied,
        peers: vec![],
        learners: vec![],
        ..config.raft.clone()
    };
    let mut raw = RawNode::new(&raft_config, storage)?;
    let seed = config.election_seed.unwrap_or_else(|| {
        std::process::id() as u64
            ^ config.id.rotate_left(32)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
    });
    raw.raft.seed_election_rng(seed);
    Ok((raw, kv, applied))
}

/// Writes the initial configuration into an empty log: one committed configuration change
/// per member, carrying its peer address and data dir incarnation (and, in each, the cluster
/// incarnation), so that a node added later learns every member (and where to reach it) by
/// replaying the log. Every initial member writes the same entries (see `bootstrap`).
fn bootstrap(
    storage: &mut WalStorage,
    config: &NodeConfig,
    incarnations: &BTreeMap<u64, u64>,
) -> Result<()> {
    let initial_cluster = &config.initial_cluster;
    let cluster_incarnation =
        crate::bootstrap::cluster_incarnation(&config.cluster_id, initial_cluster, incarnations);
    let entries: Vec<Entry> = initial_cluster
        .iter()
        .enumerate()
        .map(|(i, (&id, addr))| {
            let context = codec::encode_value(&MemberContext {
                peer_addr: Some(addr.clone()),
                request_token: 0,
                incarnation: incarnations.get(&id).copied(),
                cluster_incarnation: Some(cluster_incarnation),
            })
            .expect("member context encodes");
            let cc = ConfChange { change_type: ConfChangeType::AddNode, node_id: id, context };
            Entry {
                entry_type: EntryType::ConfChange,
                term: 1,
                index: i as u64 + 1,
                data: cc.encode().into(),
                context: raft::Bytes::new(),
            }
        })
        .collect();
    storage.append(&entries)?;
    storage.set_hard_state(&raft::HardState { term: 1, vote: 0, commit: entries.len() as u64 })?;
    storage.sync()?;
    info!(
        "bootstrapped cluster {:?} (incarnation {cluster_incarnation:016x}) of {:?}",
        config.cluster_id,
        initial_cluster.keys().collect::<Vec<_>>()
    );
    Ok(())
}

/// Reads and checks a backup (`raftctl snapshot save`): its file, and the state machine in it.
fn read_backup(path: &std::path::Path) -> Result<(raft::Snapshot, Kv)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("read the backup", path, e))?;
    let snapshot = crate::snapfile::decode(path, &bytes)
        .map_err(|e| Error::Config(format!("--restore {}: {e}", path.display())))?;
    let kv = Kv::restore(&snapshot.data).map_err(|e| {
        Error::Config(format!(
            "--restore {}: its state machine does not restore: {e}",
            path.display()
        ))
    })?;
    Ok((snapshot, kv))
}

/// Starts a new cluster from a backup: the backup's state machine, with its members and
/// incarnations replaced by the initial cluster's (a new cluster incarnation, so that no node
/// of the old cluster is taken for a member), as a snapshot at the backup's index and term.
/// Every initial member restores the same backup and computes the same snapshot.
fn restore_bootstrap(
    storage: &mut WalStorage,
    config: &NodeConfig,
    incarnations: &BTreeMap<u64, u64>,
    (backup, mut kv): (raft::Snapshot, Kv),
) -> Result<()> {
    let initial_cluster = &config.initial_cluster;
    let (index, term) = (backup.metadata.index, backup.metadata.term);
    let cluster_incarnation = crate::bootstrap::restored_cluster_incarnation(
        crate::bootstrap::cluster_incarnation(&config.cluster_id, initial_cluster, incarnations),
        index,
        term,
        &backup.data,
    );
    kv.forget_membership();
    for (&id, addr) in initial_cluster {
        kv.set_member(id, addr.clone());
        kv.set_incarnation(id, incarnations.get(&id).copied());
    }
    kv.set_cluster_incarnation(cluster_incarnation);
    kv.set_applied(index);
    let conf_state = raft::ConfState {
        voters: initial_cluster.keys().copied().collect(),
        ..raft::ConfState::default()
    };
    let metadata = raft::SnapshotMetadata { conf_state, index, term };
    storage.install_initial_snapshot(raft::Snapshot { data: kv.snapshot(), metadata })?;
    storage.set_hard_state(&raft::HardState { term, vote: 0, commit: index })?;
    storage.sync()?;
    info!(
        "bootstrapped cluster {:?} (incarnation {cluster_incarnation:016x}) of {:?} from a backup \
         at index {index}, term {term}",
        config.cluster_id,
        initial_cluster.keys().collect::<Vec<_>>()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::tokens_match;

    #[test]
    fn tokens_are_compared_whole() {
        assert!(tokens_match(None, None));
        assert!(tokens_match(Some("s3cret"), Some("s3cret")));
        assert!(!tokens_match(Some("s3cres"), Some("s3cret")));
        assert!(!tokens_match(Some("s3cre"), Some("s3cret")), "a prefix is not the token");
        assert!(!tokens_match(Some("s3cret!"), Some("s3cret")));
        assert!(!tokens_match(None, Some("s3cret")));
        assert!(!tokens_match(Some("s3cret"), None), "a token where none is set is refused");
    }
}
