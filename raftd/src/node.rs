//! The node: one thread, one `mio::Poll`, around the Raft core, the WAL and the state
//! machine.
//!
//! Each loop iteration: read every ready socket and decode frames -> step peer messages,
//! collect client writes and reads -> propose the writes as one batch, ask one read index for
//! the reads -> while the core has a Ready: persist (one sync for the batch; a leader sends
//! first), send, apply, answer clients, advance -> flush sockets.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use raft::{
    ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, MessageType, RawNode,
    SnapshotStatus, StateType,
};

use crate::errors::{Error, Result};
use crate::kv::{Command, Kv, MemberContext};
use crate::protocol::*;
use crate::storage::WalStorage;
use crate::transport::{Conn, ConnKind, ReadOutcome};

const PEER_LISTENER: Token = Token(0);
const CLIENT_LISTENER: Token = Token(1);
const FIRST_CONN_TOKEN: usize = 2;
/// A partly received snapshot is dropped after this long without a chunk.
const SNAPSHOT_RECEIVE_TIMEOUT: Duration = Duration::from_secs(30);
/// Reconnection backoff bounds for peer connections.
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Largest key-value request accepted.
pub const REQUEST_SIZE_MAX: usize = 4 * 1024 * 1024;

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
    /// Client and admin listener address.
    pub listen_client: SocketAddr,
    /// Peer addresses of the initial members (used only when the data dir is empty).
    pub initial_cluster: BTreeMap<u64, String>,
    /// Start empty and wait to be added.
    pub join: bool,
    /// The Raft knobs (id, applied and peers are set by the node).
    pub raft: raft::Config,
    /// Time per tick.
    pub tick_interval: Duration,
    /// Snapshot every this many applied entries (0: never automatically).
    pub snapshot_entries: u64,
    /// Entries kept in the log behind a snapshot, for followers slightly behind.
    pub snapshot_catchup_entries: u64,
    /// Shared secret required in every handshake.
    pub token: Option<String>,
    /// Accept `Fault`/`Heal` admin requests.
    pub allow_fault_injection: bool,
    /// How long a client request may wait.
    pub request_timeout: Duration,
    /// Largest frame accepted.
    pub frame_size_max: usize,
    /// WAL segment size.
    pub segment_size_bytes: u64,
}

struct Waiter {
    conn: Token,
    request_id: u64,
    deadline: Instant,
}

struct PendingRead {
    waiter: Waiter,
    key: Vec<u8>,
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
}

struct SnapshotIn {
    message: Message,
    data: Vec<u8>,
    total: u64,
    last_chunk: Instant,
}

/// A running node.
pub struct Node {
    config: NodeConfig,
    poll: Poll,
    peer_listener: TcpListener,
    client_listener: TcpListener,
    conns: HashMap<Token, Conn>,
    next_token: usize,
    raw: RawNode<WalStorage>,
    kv: Kv,
    peers: BTreeMap<u64, PeerLink>,
    snapshots_in: HashMap<u64, SnapshotIn>,
    write_waiters: HashMap<(u64, u64), Vec<Waiter>>,
    proposals: Vec<(Vec<u8>, Vec<u8>)>,
    proposal_waiters: Vec<((u64, u64), Waiter)>,
    read_batch: Vec<PendingRead>,
    reads_in_flight: HashMap<u64, Vec<PendingRead>>,
    reads_ready: VecDeque<(u64, Vec<PendingRead>)>,
    next_read_ctx: u64,
    conf_waiters: HashMap<u64, ConfWaiter>,
    next_conf_token: u64,
    drop_to: Vec<u64>,
    drop_from: Vec<u64>,
    delay: Duration,
    delayed: VecDeque<(Instant, Message)>,
    started: Instant,
    last_snapshot_index: u64,
    shutdown: Arc<AtomicBool>,
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

impl Node {
    /// Opens the node's state and binds its listeners.
    pub fn new(config: NodeConfig, shutdown: Arc<AtomicBool>) -> Result<Node> {
        let identity = wal::Identity { node_id: config.id, cluster_id: config.cluster_id.clone() };
        let wal_options = wal::Options {
            segment_size_bytes: config.segment_size_bytes,
            ..wal::Options::default()
        };
        let (mut storage, recovery) = WalStorage::open(&config.data_dir, &identity, wal_options)?;
        if let Some(torn) = &recovery.torn_tail {
            warn!("recovered after a torn write: {torn:?}");
        }
        if storage.is_empty() {
            if config.join {
                info!("empty data dir: joining, waiting to be added by a membership change");
            } else if config.initial_cluster.is_empty() {
                return Err(Error::Config(
                    "the data dir is empty: give --initial-cluster or --join".into(),
                ));
            } else {
                bootstrap(&mut storage, &config.initial_cluster)?;
            }
        }
        let snapshot = storage.current_snapshot().clone();
        let kv = if snapshot.is_empty() { Kv::new() } else { Kv::restore(&snapshot.data)? };
        let applied = snapshot.metadata.index;
        let raft_config = raft::Config {
            id: config.id,
            applied,
            peers: vec![],
            learners: vec![],
            ..config.raft.clone()
        };
        let mut raw = RawNode::new(&raft_config, storage)?;
        let seed = Instant::now().elapsed().as_nanos() as u64
            ^ std::process::id() as u64
            ^ config.id.rotate_left(32)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        raw.raft.seed_election_rng(seed);

        let poll = Poll::new().map_err(|e| Error::io("create poll", &config.data_dir, e))?;
        let mut peer_listener = TcpListener::bind(config.listen_peer)
            .map_err(|e| Error::io("listen (peer)", config.listen_peer.to_string(), e))?;
        let mut client_listener = TcpListener::bind(config.listen_client)
            .map_err(|e| Error::io("listen (client)", config.listen_client.to_string(), e))?;
        poll.registry()
            .register(&mut peer_listener, PEER_LISTENER, Interest::READABLE)
            .map_err(|e| Error::io("register", "peer listener", e))?;
        poll.registry()
            .register(&mut client_listener, CLIENT_LISTENER, Interest::READABLE)
            .map_err(|e| Error::io("register", "client listener", e))?;

        let mut node = Node {
            poll,
            peer_listener,
            client_listener,
            conns: HashMap::new(),
            next_token: FIRST_CONN_TOKEN,
            raw,
            kv,
            peers: BTreeMap::new(),
            snapshots_in: HashMap::new(),
            write_waiters: HashMap::new(),
            proposals: Vec::new(),
            proposal_waiters: Vec::new(),
            read_batch: Vec::new(),
            reads_in_flight: HashMap::new(),
            reads_ready: VecDeque::new(),
            next_read_ctx: 1,
            conf_waiters: HashMap::new(),
            next_conf_token: 1,
            drop_to: Vec::new(),
            drop_from: Vec::new(),
            delay: Duration::ZERO,
            delayed: VecDeque::new(),
            started: Instant::now(),
            last_snapshot_index: applied,
            shutdown,
            config,
        };
        for (&id, addr) in &node.config.initial_cluster.clone() {
            node.learn_peer(id, Some(addr.clone()), None);
        }
        for (id, addr) in node.kv.members().clone() {
            node.learn_peer(id, Some(addr), None);
        }
        info!(
            "node {} of cluster {:?} starting: peer {}, client {}, data {}, applied {applied}, config {:?}",
            node.config.id,
            node.config.cluster_id,
            node.config.listen_peer,
            node.config.listen_client,
            node.config.data_dir.display(),
            node.config.raft
        );
        Ok(node)
    }

    /// Runs until SIGTERM/SIGINT (Ok) or a fatal error.
    pub fn run(&mut self) -> Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + self.config.tick_interval;
        while !self.shutdown.load(Ordering::Relaxed) {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(Error::io("poll", "event loop", e));
                }
            }
            for event in events.iter() {
                match event.token() {
                    PEER_LISTENER => self.accept(true),
                    CLIENT_LISTENER => self.accept(false),
                    token => self.conn_event(token, event.is_readable(), event.is_writable()),
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                next_tick += self.config.tick_interval;
                if next_tick < now {
                    next_tick = now + self.config.tick_interval;
                }
                self.housekeeping(now);
            }
            self.submit_batches();
            self.handle_readies()?;
            self.pump_snapshots();
            self.release_delayed();
            self.flush_all();
        }
        info!("node {}: shutting down", self.config.id);
        self.raw.store_mut().sync()?;
        Ok(())
    }

    fn alloc_token(&mut self) -> Token {
        let token = Token(self.next_token);
        self.next_token += 1;
        token
    }

    fn accept(&mut self, peer_port: bool) {
        loop {
            let listener = if peer_port { &self.peer_listener } else { &self.client_listener };
            match listener.accept() {
                Ok((stream, remote)) => {
                    let kind = if peer_port {
                        ConnKind::InboundPeer { from: None }
                    } else {
                        ConnKind::Client { greeted: false }
                    };
                    let token = self.alloc_token();
                    let mut conn = Conn::new(stream, kind, remote, self.config.frame_size_max);
                    if let Err(e) = conn.register(self.poll.registry(), token) {
                        warn!("register connection from {remote}: {e}");
                        continue;
                    }
                    self.conns.insert(token, conn);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!("accept: {e}");
                    return;
                }
            }
        }
    }

    fn close(&mut self, token: Token, why: &str) {
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        match conn.kind {
            ConnKind::OutboundPeer { to } => {
                debug!("connection to peer {to} at {} closed: {why}", conn.remote);
                if let Some(link) = self.peers.get_mut(&to) {
                    link.conn = None;
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

    fn conn_event(&mut self, token: Token, readable: bool, writable: bool) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if writable {
            if let ConnKind::OutboundPeer { .. } = conn.kind {
                if let Ok(Some(e)) | Err(e) = conn.stream.take_error() {
                    let why = format!("connect: {e}");
                    self.close(token, &why);
                    return;
                }
            }
            if let Err(e) = conn.flush(self.poll.registry(), token) {
                self.close(token, &format!("write: {e}"));
                return;
            }
        }
        if !readable {
            return;
        }
        let outcome = conn.read_available();
        // Frames first: a peer may send its last frames and close.
        loop {
            let Some(conn) = self.conns.get_mut(&token) else {
                return;
            };
            let payload = match conn.decoder.next_payload() {
                Ok(Some(payload)) => payload.to_vec(),
                Ok(None) => break,
                Err(e) => {
                    let remote = conn.remote;
                    warn!("closing connection from {remote}: {e}");
                    self.close(token, "bad frame");
                    return;
                }
            };
            if let Err(why) = self.dispatch(token, &payload) {
                let remote =
                    self.conns.get(&token).map(|c| c.remote.to_string()).unwrap_or_default();
                warn!("closing connection with {remote}: {why}");
                self.close(token, "refused");
                return;
            }
        }
        match outcome {
            Ok(ReadOutcome::Open) => {}
            Ok(ReadOutcome::Closed) => self.close(token, "closed by remote"),
            Err(e) => self.close(token, &format!("read: {e}")),
        }
    }

    /// Handles one frame; an error closes the connection.
    fn dispatch(&mut self, token: Token, payload: &[u8]) -> std::result::Result<(), String> {
        let kind = self.conns[&token].kind.clone();
        match kind {
            ConnKind::InboundPeer { from: None } | ConnKind::Client { greeted: false } => {
                let hello: Hello =
                    codec::decode_payload(payload).map_err(|e| format!("bad hello: {e}"))?;
                self.greet(token, hello)
            }
            ConnKind::InboundPeer { from: Some(from) } => {
                let frame: PeerFrame =
                    codec::decode_payload(payload).map_err(|e| format!("bad peer frame: {e}"))?;
                self.peer_frame(from, frame)
            }
            ConnKind::OutboundPeer { to } => {
                let ack: HelloAck =
                    codec::decode_payload(payload).map_err(|e| format!("bad hello ack: {e}"))?;
                match ack {
                    HelloAck::Welcome { node_id } if node_id == to => Ok(()),
                    HelloAck::Welcome { node_id } => {
                        Err(format!("dialled node {to}, reached node {node_id}"))
                    }
                    HelloAck::Refused { reason } => Err(format!("peer {to} refused us: {reason}")),
                }
            }
            ConnKind::Client { greeted: true } => {
                let request: ClientRequest =
                    codec::decode_payload(payload).map_err(|e| format!("bad request: {e}"))?;
                self.client_request(token, request);
                Ok(())
            }
        }
    }

    fn greet(&mut self, token: Token, hello: Hello) -> std::result::Result<(), String> {
        let peer_port = matches!(self.conns[&token].kind, ConnKind::InboundPeer { .. });
        let refusal = if hello.token != self.config.token {
            Some("wrong token".to_string())
        } else if (hello.role == Role::Peer) != peer_port {
            Some(format!("{:?} hello on the wrong port", hello.role))
        } else if hello.cluster_id != self.config.cluster_id
            && !(hello.role == Role::Client && hello.cluster_id.is_empty())
        {
            Some(format!("cluster {:?}, this is {:?}", hello.cluster_id, self.config.cluster_id))
        } else if hello.role == Role::Peer
            && (hello.node_id == 0 || hello.node_id == self.config.id)
        {
            Some(format!("bad node id {}", hello.node_id))
        } else {
            None
        };
        if let Some(reason) = refusal {
            let conn = self.conns.get_mut(&token).expect("dispatching on it");
            let _ = conn.send(&HelloAck::Refused { reason: reason.clone() });
            let _ = conn.flush(self.poll.registry(), token);
            return Err(reason);
        }
        let ack = HelloAck::Welcome { node_id: self.config.id };
        let conn = self.conns.get_mut(&token).expect("dispatching on it");
        conn.kind = match hello.role {
            Role::Peer => ConnKind::InboundPeer { from: Some(hello.node_id) },
            Role::Client => ConnKind::Client { greeted: true },
        };
        conn.send(&ack).map_err(|e| e.to_string())?;
        if hello.role == Role::Peer {
            self.learn_peer(hello.node_id, hello.peer_addr, hello.client_addr);
        }
        Ok(())
    }

    /// Records what is known of a peer's addresses. The peer address from the log or the
    /// command line wins over nothing; a client address comes from the peer's hello.
    fn learn_peer(&mut self, id: u64, addr: Option<String>, client_addr: Option<String>) {
        if id == self.config.id {
            return;
        }
        let link = self.peers.entry(id).or_insert_with(|| PeerLink {
            addr: None,
            client_addr: None,
            conn: None,
            next_attempt: Instant::now(),
            backoff: RECONNECT_BACKOFF_MIN,
            snapshot_out: None,
        });
        if addr.is_some() && link.addr != addr {
            link.addr = addr;
            link.next_attempt = Instant::now();
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
                self.step(m);
            }
            PeerFrame::SnapshotChunk { message, offset, total, data } => {
                if message.from != from || message.msg_type != MessageType::Snapshot {
                    return Err("bad snapshot chunk".to_string());
                }
                let now = Instant::now();
                let entry = self.snapshots_in.entry(from);
                let incoming = if offset == 0 {
                    entry
                        .insert_entry(SnapshotIn {
                            message,
                            data: Vec::new(),
                            total,
                            last_chunk: now,
                        })
                        .into_mut()
                } else {
                    match entry {
                        std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                        std::collections::hash_map::Entry::Vacant(_) => return Ok(()),
                    }
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
                    if let Some(s) = m.snapshot.as_mut() {
                        s.data = done.data;
                    }
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

    fn respond(&mut self, token: Token, response: ClientResponse) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        match conn.send(&response) {
            Ok(true) => {}
            Ok(false) => {
                warn!("client {} is not reading its replies; closing", conn.remote);
                self.close(token, "output queue over its limit");
            }
            Err(e) => warn!("cannot encode a reply: {e}"),
        }
    }

    fn kv_reply(&mut self, w: &Waiter, result: std::result::Result<KvReply, ClientError>) {
        self.respond(w.conn, ClientResponse::Kv { request_id: w.request_id, result });
    }

    fn admin_reply(&mut self, w: &Waiter, result: std::result::Result<AdminReply, ClientError>) {
        self.respond(w.conn, ClientResponse::Admin { request_id: w.request_id, result });
    }

    fn not_leader(&self) -> ClientError {
        let lead = self.raw.raft.lead;
        if lead == 0 {
            return ClientError::NoLeader;
        }
        let leader_addr = if lead == self.config.id {
            Some(self.config.listen_client.to_string())
        } else {
            self.peers.get(&lead).and_then(|l| l.client_addr.clone())
        };
        ClientError::NotLeader { leader_id: lead, leader_addr }
    }

    fn is_leader(&self) -> bool {
        self.raw.raft.state == StateType::Leader
    }

    fn client_request(&mut self, token: Token, request: ClientRequest) {
        let deadline = Instant::now() + self.config.request_timeout;
        match request {
            ClientRequest::Kv { request_id, client_id, seq, op } => {
                let waiter = Waiter { conn: token, request_id, deadline };
                self.kv_request(waiter, client_id, seq, op);
            }
            ClientRequest::Admin { request_id, request } => {
                let waiter = Waiter { conn: token, request_id, deadline };
                self.admin_request(waiter, request);
            }
        }
    }

    fn kv_request(&mut self, waiter: Waiter, client_id: u64, seq: u64, op: Op) {
        match op {
            Op::Get { key, serializable: true } => {
                let result = OpResult::Get(self.kv.get(&key).cloned());
                let reply = KvReply { index: self.kv.applied(), result };
                self.kv_reply(&waiter, Ok(reply));
            }
            Op::Get { key, serializable: false } => {
                self.read_batch.push(PendingRead { waiter, key })
            }
            op => {
                if !self.is_leader() {
                    let e = self.not_leader();
                    self.kv_reply(&waiter, Err(e));
                    return;
                }
                let command = Command { client_id, seq, op };
                let data = match codec::encode_value(&command) {
                    Ok(d) if d.len() <= REQUEST_SIZE_MAX => d,
                    Ok(d) => {
                        return self.kv_reply(
                            &waiter,
                            Err(ClientError::TooLarge { len: d.len(), max: REQUEST_SIZE_MAX }),
                        )
                    }
                    Err(e) => return self.kv_reply(&waiter, Err(refused(e.to_string()))),
                };
                self.proposals.push((Vec::new(), data));
                self.proposal_waiters.push(((client_id, seq), waiter));
            }
        }
    }

    /// Proposes the writes and asks one read index for the reads that arrived in this
    /// iteration.
    fn submit_batches(&mut self) {
        if !self.proposals.is_empty() {
            let batch = std::mem::take(&mut self.proposals);
            let waiters = std::mem::take(&mut self.proposal_waiters);
            match self.raw.propose_batch(batch) {
                Ok(()) => {
                    for (key, w) in waiters {
                        self.write_waiters.entry(key).or_default().push(w);
                    }
                }
                Err(e) => {
                    let err = match e {
                        raft::Error::ProposalDropped if !self.is_leader() => self.not_leader(),
                        raft::Error::ProposalDropped => ClientError::ProposalDropped,
                        other => refused(other.to_string()),
                    };
                    for (_, w) in waiters {
                        self.kv_reply(&w, Err(err.clone()));
                    }
                }
            }
        }
        if !self.read_batch.is_empty() {
            let batch = std::mem::take(&mut self.read_batch);
            let ctx = self.next_read_ctx;
            self.next_read_ctx += 1;
            match self.raw.read_index(ctx.to_le_bytes().to_vec()) {
                Ok(()) => {
                    self.reads_in_flight.insert(ctx, batch);
                }
                Err(_) => {
                    let err = self.not_leader();
                    let err = if matches!(err, ClientError::NotLeader { .. }) {
                        ClientError::NoLeader
                    } else {
                        err
                    };
                    for r in batch {
                        self.kv_reply(&r.waiter, Err(err.clone()));
                    }
                }
            }
        }
    }

    fn admin_request(&mut self, waiter: Waiter, request: AdminRequest) {
        let result = match request {
            AdminRequest::Status => Ok(AdminReply::Status(Box::new(self.status()))),
            AdminRequest::TransferLeader { to } => match self.raw.transfer_leader(to) {
                Ok(()) => Ok(AdminReply::Done(format!("leadership transfer to {to} started"))),
                Err(e) => Err(refused(e.to_string())),
            },
            AdminRequest::AddVoter { id, addr } => {
                return self.change_membership(waiter, ConfChangeType::AddNode, id, Some(addr))
            }
            AdminRequest::AddLearner { id, addr } => {
                return self.change_membership(
                    waiter,
                    ConfChangeType::AddLearnerNode,
                    id,
                    Some(addr),
                )
            }
            AdminRequest::Promote { id } => {
                return self.change_membership(waiter, ConfChangeType::AddNode, id, None)
            }
            AdminRequest::Remove { id } => {
                return self.change_membership(waiter, ConfChangeType::RemoveNode, id, None)
            }
            AdminRequest::Snapshot => match self.snapshot_now() {
                Ok(index) => Ok(AdminReply::Done(format!("snapshot at index {index}"))),
                Err(e) => Err(refused(e.to_string())),
            },
            AdminRequest::Fault { drop_to, drop_from, delay_ms } => {
                if self.config.allow_fault_injection {
                    info!(
                        "fault injection: dropping messages to {drop_to:?} and from \
                         {drop_from:?}, delaying by {delay_ms} ms"
                    );
                    self.drop_to = drop_to;
                    self.drop_from = drop_from;
                    self.delay = Duration::from_millis(delay_ms);
                    Ok(AdminReply::Done("fault injected".into()))
                } else {
                    Err(refused(
                        "fault injection is not allowed on this node (--allow-fault-injection)",
                    ))
                }
            }
            AdminRequest::Heal => {
                if self.config.allow_fault_injection {
                    self.drop_to.clear();
                    self.drop_from.clear();
                    self.delay = Duration::ZERO;
                    Ok(AdminReply::Done("healed".into()))
                } else {
                    Err(refused(
                        "fault injection is not allowed on this node (--allow-fault-injection)",
                    ))
                }
            }
        };
        self.admin_reply(&waiter, result);
    }

    fn change_membership(
        &mut self,
        waiter: Waiter,
        change_type: ConfChangeType,
        id: u64,
        addr: Option<String>,
    ) {
        if !self.is_leader() {
            let e = self.not_leader();
            return self.admin_reply(&waiter, Err(e));
        }
        let conf = &self.raw.raft.prs.conf;
        let is_voter = conf.voters.contains(id);
        let is_learner = conf.learners.contains(&id);
        let refusal = if self.raw.raft.pending_conf_index > self.raw.raft.raft_log.applied {
            Some("a configuration change is already pending".to_string())
        } else if conf.voters.is_joint() {
            Some("the configuration is joint; wait for it to settle".to_string())
        } else if id == 0 {
            Some("node id 0 is reserved".to_string())
        } else {
            match (change_type, addr.is_some()) {
                (ConfChangeType::AddNode, true) | (ConfChangeType::AddLearnerNode, true)
                    if is_voter || is_learner =>
                {
                    Some(format!("node {id} is already a member"))
                }
                (ConfChangeType::AddNode, false) if !is_learner => {
                    Some(format!("node {id} is not a learner"))
                }
                (ConfChangeType::RemoveNode, _) if !is_voter && !is_learner => {
                    Some(format!("node {id} is not a member"))
                }
                (ConfChangeType::RemoveNode, _) if is_voter && conf.voters.incoming.len() == 1 => {
                    Some("cannot remove the last voter".to_string())
                }
                _ => None,
            }
        };
        if let Some(reason) = refusal {
            return self.admin_reply(&waiter, Err(refused(reason)));
        }
        let token = self.next_conf_token;
        self.next_conf_token += 1;
        let context = codec::encode_value(&MemberContext { peer_addr: addr, request_token: token })
            .unwrap_or_default();
        let cc = ConfChange { change_type, node_id: id, context };
        match self.raw.propose_conf_change(Vec::new(), &cc) {
            Ok(()) => {
                self.conf_waiters.insert(token, ConfWaiter { waiter });
            }
            Err(e) => self.admin_reply(&waiter, Err(refused(e.to_string()))),
        }
    }

    fn status(&self) -> NodeStatus {
        let status = self.raw.status();
        let cs = &status.conf_state;
        let mut members = Vec::new();
        let mut add = |id: u64, role: &str| {
            let progress = status.progress.get(&id);
            let (peer_addr, client_addr) = if id == self.config.id {
                (
                    Some(self.config.listen_peer.to_string()),
                    Some(self.config.listen_client.to_string()),
                )
            } else {
                let link = self.peers.get(&id);
                (link.and_then(|l| l.addr.clone()), link.and_then(|l| l.client_addr.clone()))
            };
            members.push(MemberStatus {
                id,
                peer_addr,
                client_addr,
                role: role.to_string(),
                matched: progress.map(|p| p.matched),
                recent_active: progress.map(|p| p.recent_active),
            });
        };
        for &id in &cs.voters {
            add(id, "voter");
        }
        for &id in &cs.voters_outgoing {
            if !cs.voters.contains(&id) {
                add(id, "outgoing voter");
            }
        }
        for &id in &cs.learners {
            add(id, "learner");
        }
        NodeStatus {
            id: self.config.id,
            cluster_id: self.config.cluster_id.clone(),
            role: role_name(status.soft_state.raft_state).to_string(),
            term: status.hard_state.term,
            leader: status.soft_state.lead,
            commit: status.hard_state.commit,
            applied: status.applied,
            first_index: self.raw.store().first_index_now(),
            last_index: self.raw.store().last_index_now(),
            snapshot_index: self.raw.store().current_snapshot().metadata.index,
            joint: !cs.voters_outgoing.is_empty(),
            members,
            uptime_secs: self.started.elapsed().as_secs(),
        }
    }

    fn handle_readies(&mut self) -> Result<()> {
        while self.raw.has_ready() {
            let mut rd = self.raw.ready();
            let leader = self.is_leader();
            let messages = std::mem::take(&mut rd.messages);
            // Raft thesis §10.2.1: a leader's messages never acknowledge its own unsynced
            // state, so they may leave before it syncs.
            let messages = if leader {
                self.send_messages(messages);
                Vec::new()
            } else {
                messages
            };
            let store = self.raw.store_mut();
            if let Some(snapshot) = &rd.snapshot {
                store.apply_snapshot(snapshot)?;
            }
            store.append(&rd.entries)?;
            if let Some(hs) = &rd.hard_state {
                store.set_hard_state(hs)?;
            }
            if rd.must_sync || rd.snapshot.is_some() || !rd.entries.is_empty() {
                store.sync()?;
            }
            if let Some(snapshot) = &rd.snapshot {
                self.kv = Kv::restore(&snapshot.data)?;
                self.last_snapshot_index = snapshot.metadata.index;
                for (id, addr) in self.kv.members().clone() {
                    self.learn_peer(id, Some(addr), None);
                }
                info!("installed snapshot at index {}", snapshot.metadata.index);
            }
            self.send_messages(messages);
            for entry in &rd.committed_entries {
                self.apply(entry)?;
            }
            for rs in rd.read_states.drain(..) {
                let mut ctx = [0u8; 8];
                if rs.request_ctx.len() == 8 {
                    ctx.copy_from_slice(&rs.request_ctx);
                }
                if let Some(batch) = self.reads_in_flight.remove(&u64::from_le_bytes(ctx)) {
                    self.reads_ready.push_back((rs.index, batch));
                }
            }
            self.raw.advance(rd);
            self.serve_reads();
            self.maybe_snapshot()?;
        }
        Ok(())
    }

    fn apply(&mut self, entry: &Entry) -> Result<()> {
        match entry.entry_type {
            EntryType::Normal if entry.data.is_empty() => {}
            EntryType::Normal => {
                let result = match codec::decode_payload::<Command>(&entry.data) {
                    Ok(command) => {
                        let key = (command.client_id, command.seq);
                        let result = self.kv.apply(entry.index, &command);
                        Some((key, result))
                    }
                    Err(e) => {
                        error!("entry {} does not decode as a command: {e}", entry.index);
                        None
                    }
                };
                if let Some((key, result)) = result {
                    if let Some(waiters) = self.write_waiters.remove(&key) {
                        for w in waiters {
                            self.kv_reply(&w, result.clone());
                        }
                    }
                }
            }
            EntryType::ConfChange | EntryType::ConfChangeV2 => self.apply_conf_change(entry),
        }
        self.kv.set_applied(entry.index);
        Ok(())
    }

    fn apply_conf_change(&mut self, entry: &Entry) {
        let decoded = if entry.entry_type == EntryType::ConfChange {
            ConfChange::decode(&entry.data).map(|cc| (cc.context.clone(), cc.into_v2()))
        } else {
            ConfChangeV2::decode(&entry.data).map(|cc| (cc.context.clone(), cc))
        };
        let (context, cc) = match decoded {
            Ok(d) => d,
            Err(e) => {
                error!("configuration change at {} does not decode: {e}", entry.index);
                return;
            }
        };
        let member: Option<MemberContext> = codec::decode_payload(&context).ok();
        let result = self.raw.apply_conf_change(&cc);
        let waiter = member.as_ref().and_then(|m| self.conf_waiters.remove(&m.request_token));
        match result {
            Ok(cs) => {
                for change in &cc.changes {
                    match change.change_type {
                        ConfChangeType::RemoveNode => {
                            self.kv.remove_member(change.node_id);
                        }
                        _ => {
                            if let Some(addr) = member.as_ref().and_then(|m| m.peer_addr.clone()) {
                                self.kv.set_member(change.node_id, addr.clone());
                                self.learn_peer(change.node_id, Some(addr), None);
                            }
                        }
                    }
                }
                info!("configuration is now voters {:?} learners {:?}", cs.voters, cs.learners);
                if let Some(w) = waiter {
                    let reply = AdminReply::Membership { voters: cs.voters, learners: cs.learners };
                    self.admin_reply(&w.waiter, Ok(reply));
                }
            }
            Err(e) => {
                warn!("configuration change at {} refused: {e}", entry.index);
                if let Some(w) = waiter {
                    self.admin_reply(&w.waiter, Err(refused(e.to_string())));
                }
            }
        }
    }

    fn serve_reads(&mut self) {
        let applied = self.kv.applied();
        while self.reads_ready.front().is_some_and(|(index, _)| *index <= applied) {
            let (_, batch) = self.reads_ready.pop_front().expect("checked");
            for r in batch {
                let reply =
                    KvReply { index: applied, result: OpResult::Get(self.kv.get(&r.key).cloned()) };
                self.kv_reply(&r.waiter, Ok(reply));
            }
        }
    }

    fn maybe_snapshot(&mut self) -> Result<()> {
        let every = self.config.snapshot_entries;
        if every > 0 && self.kv.applied() >= self.last_snapshot_index + every {
            self.snapshot_now()?;
        }
        Ok(())
    }

    fn snapshot_now(&mut self) -> Result<u64> {
        let index = self.kv.applied();
        if index == 0 || index <= self.last_snapshot_index {
            return Ok(self.last_snapshot_index);
        }
        let data = self.kv.snapshot();
        let cs = self.raw.raft.prs.conf_state();
        self.raw.store_mut().create_snapshot(
            index,
            cs,
            data,
            self.config.snapshot_catchup_entries,
        )?;
        self.last_snapshot_index = index;
        info!("snapshot at index {index}");
        Ok(index)
    }

    fn send_messages(&mut self, messages: Vec<Message>) {
        for m in messages {
            let to = m.to;
            if self.drop_to.contains(&to) {
                continue;
            }
            if !self.delay.is_zero() && m.msg_type != MessageType::Snapshot {
                self.delayed.push_back((Instant::now() + self.delay, m));
                continue;
            }
            if m.msg_type == MessageType::Snapshot {
                let mut header = m;
                let data = header
                    .snapshot
                    .as_mut()
                    .map(|s| std::mem::take(&mut s.data))
                    .unwrap_or_default();
                match self.peers.get_mut(&to) {
                    Some(link) => link.snapshot_out = Some((header, data, 0)),
                    None => self.raw.report_snapshot(to, SnapshotStatus::Failure),
                }
                continue;
            }
            self.send_peer(to, &PeerFrame::Raft(m));
        }
    }

    fn send_peer(&mut self, to: u64, frame: &PeerFrame) -> bool {
        let token = self.peers.get(&to).and_then(|l| l.conn);
        let Some(token) = token else {
            self.raw.report_unreachable(to);
            return false;
        };
        let Some(conn) = self.conns.get_mut(&token) else {
            return false;
        };
        match conn.send(frame) {
            Ok(true) => true,
            Ok(false) => {
                warn!("peer {to} cannot keep up; disconnecting");
                self.close(token, "output queue over its limit");
                false
            }
            Err(e) => {
                warn!("cannot encode a message to {to}: {e}");
                false
            }
        }
    }

    /// Sends the next chunks of snapshots in transfer, as much as the queues allow.
    fn pump_snapshots(&mut self) {
        let ids: Vec<u64> = self
            .peers
            .iter()
            .filter(|(_, l)| l.snapshot_out.is_some())
            .map(|(&id, _)| id)
            .collect();
        for to in ids {
            while let Some(link) = self.peers.get_mut(&to) {
                let Some(token) = link.conn else { break };
                let queued = self.conns.get(&token).map_or(usize::MAX, |c| c.encoder.pending_len());
                if queued > 4 * SNAPSHOT_CHUNK_SIZE_BYTES {
                    break;
                }
                let Some((header, data, offset)) = link.snapshot_out.as_mut() else { break };
                let end = (*offset + SNAPSHOT_CHUNK_SIZE_BYTES).min(data.len());
                let frame = PeerFrame::SnapshotChunk {
                    message: header.clone(),
                    offset: *offset as u64,
                    total: data.len() as u64,
                    data: data[*offset..end].to_vec(),
                };
                *offset = end;
                let finished = end == data.len();
                if finished {
                    link.snapshot_out = None;
                }
                if !self.send_peer(to, &frame) {
                    if let Some(link) = self.peers.get_mut(&to) {
                        link.snapshot_out = None;
                    }
                    self.raw.report_snapshot(to, SnapshotStatus::Failure);
                    break;
                }
                if finished {
                    self.raw.report_snapshot(to, SnapshotStatus::Finish);
                    break;
                }
            }
        }
    }

    /// Sends the delayed messages that are due (fault injection).
    fn release_delayed(&mut self) {
        let now = Instant::now();
        while self.delayed.front().is_some_and(|(due, _)| *due <= now) {
            let (_, m) = self.delayed.pop_front().expect("checked");
            if !self.drop_to.contains(&m.to) {
                let to = m.to;
                self.send_peer(to, &PeerFrame::Raft(m));
            }
        }
    }

    fn flush_all(&mut self) {
        let tokens: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| c.encoder.pending_len() > 0)
            .map(|(&t, _)| t)
            .collect();
        for token in tokens {
            let Some(conn) = self.conns.get_mut(&token) else { continue };
            if let Err(e) = conn.flush(self.poll.registry(), token) {
                self.close(token, &format!("write: {e}"));
            }
        }
    }

    /// Once per tick: connect to peers, expire requests and stalled snapshot transfers.
    fn housekeeping(&mut self, now: Instant) {
        let ids: Vec<u64> = self.peers.keys().copied().collect();
        for id in ids {
            let link = &self.peers[&id];
            if link.conn.is_some() || now < link.next_attempt {
                continue;
            }
            let Some(addr) = link.addr.clone() else { continue };
            self.connect(id, &addr, now);
        }
        self.expire_waiters(now);
        self.snapshots_in.retain(|from, s| {
            let keep = now.duration_since(s.last_chunk) < SNAPSHOT_RECEIVE_TIMEOUT;
            if !keep {
                warn!("snapshot from {from} stalled; dropped");
            }
            keep
        });
    }

    fn connect(&mut self, id: u64, addr: &str, now: Instant) {
        let link = self.peers.get_mut(&id).expect("caller checked");
        link.next_attempt = now + link.backoff;
        link.backoff = (link.backoff * 2).min(RECONNECT_BACKOFF_MAX);
        let socket_addr: SocketAddr = match addr.parse() {
            Ok(a) => a,
            Err(e) => {
                warn!("peer {id} address {addr:?}: {e}");
                return;
            }
        };
        let stream = match TcpStream::connect(socket_addr) {
            Ok(s) => s,
            Err(e) => {
                debug!("connect to peer {id} at {addr}: {e}");
                return;
            }
        };
        let token = self.alloc_token();
        let mut conn = Conn::new(
            stream,
            ConnKind::OutboundPeer { to: id },
            socket_addr,
            self.config.frame_size_max,
        );
        let hello = Hello {
            cluster_id: self.config.cluster_id.clone(),
            node_id: self.config.id,
            role: Role::Peer,
            token: self.config.token.clone(),
            client_addr: Some(self.config.listen_client.to_string()),
            peer_addr: Some(self.config.listen_peer.to_string()),
        };
        if conn.send(&hello).is_err() || conn.register(self.poll.registry(), token).is_err() {
            return;
        }
        self.conns.insert(token, conn);
        let link = self.peers.get_mut(&id).expect("caller checked");
        link.conn = Some(token);
        link.backoff = RECONNECT_BACKOFF_MIN;
    }

    fn expire_waiters(&mut self, now: Instant) {
        let mut expired: Vec<Waiter> = Vec::new();
        self.write_waiters.retain(|_, ws| {
            let (gone, kept): (Vec<Waiter>, Vec<Waiter>) =
                std::mem::take(ws).into_iter().partition(|w| w.deadline <= now);
            expired.extend(gone);
            *ws = kept;
            !ws.is_empty()
        });
        self.reads_in_flight.retain(|_, batch| {
            let timed_out = batch.first().is_some_and(|r| r.waiter.deadline <= now);
            if timed_out {
                expired.extend(std::mem::take(batch).into_iter().map(|r| r.waiter));
            }
            !timed_out
        });
        while self
            .reads_ready
            .front()
            .is_some_and(|(_, b)| b.first().is_some_and(|r| r.waiter.deadline <= now))
        {
            let (_, batch) = self.reads_ready.pop_front().expect("checked");
            expired.extend(batch.into_iter().map(|r| r.waiter));
        }
        let conf_expired: Vec<u64> = self
            .conf_waiters
            .iter()
            .filter(|(_, w)| w.waiter.deadline <= now)
            .map(|(&t, _)| t)
            .collect();
        for token in conf_expired {
            if let Some(w) = self.conf_waiters.remove(&token) {
                self.admin_reply(&w.waiter, Err(ClientError::Timeout));
            }
        }
        for w in expired {
            self.kv_reply(&w, Err(ClientError::Timeout));
        }
    }
}

/// Writes the initial configuration into an empty log: one committed configuration change
/// per member, carrying its peer address, so that a node added later learns every member
/// (and where to reach it) by replaying the log.
fn bootstrap(storage: &mut WalStorage, initial_cluster: &BTreeMap<u64, String>) -> Result<()> {
    let entries: Vec<Entry> = initial_cluster
        .iter()
        .enumerate()
        .map(|(i, (&id, addr))| {
            let context = codec::encode_value(&MemberContext {
                peer_addr: Some(addr.clone()),
                request_token: 0,
            })
            .expect("member context encodes");
            let cc = ConfChange { change_type: ConfChangeType::AddNode, node_id: id, context };
            Entry {
                entry_type: EntryType::ConfChange,
                term: 1,
                index: i as u64 + 1,
                data: cc.encode(),
                context: Vec::new(),
            }
        })
        .collect();
    storage.append(&entries)?;
    storage.set_hard_state(&raft::HardState { term: 1, vote: 0, commit: entries.len() as u64 })?;
    storage.sync()?;
    info!("bootstrapped a new cluster of {:?}", initial_cluster.keys().collect::<Vec<_>>());
    Ok(())
}
