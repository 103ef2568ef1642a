//! Bootstrapping a new cluster without ever writing a second history.
//!
//! An empty data dir started with `--initial-cluster` does not write the initial
//! configuration at once. It first asks every listed member, on the peer port, what it is:
//!
//! - every member is new too (answers [`HelloAck::Bootstrapping`] with its data dir
//!   incarnation): once the incarnations of all of them are known, each node writes the same
//!   bootstrap entries (the members, their addresses and incarnations, and a cluster
//!   incarnation derived from them), so that their logs agree entry for entry;
//! - a member already bootstrapped the cluster and recorded this node with this very
//!   incarnation (this node crashed before it bootstrapped): it joins, writing nothing, and
//!   the leader sends it the log;
//! - a member already bootstrapped the cluster and recorded another incarnation for this id
//!   (the data dir was wiped or replaced): the node refuses to start, naming the remedy. It
//!   lost what its id acknowledged, and voting under that id could undo acknowledged writes.
//!
//! So a new cluster bootstraps once every member of `--initial-cluster` has started (as
//! Consul's `bootstrap_expect` does). While waiting, the node answers other members' hellos
//! and says every few seconds whom it waits for.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use codec::FrameDecoder;
use log::{info, warn};
use mio::Token;

use crate::clock::Clock;
use crate::errors::{Error, Result};
use crate::net::{Net, NetEvent, Port, CLIENT_LISTENER, PEER_LISTENER};
use crate::node::{peer_hello, tokens_match, NodeConfig};
use crate::protocol::{decode_hello, replaced_message, Hello, HelloAck, Role};
use crate::tls::TlsContext;

/// Largest hello accepted while bootstrapping.
const HELLO_SIZE_MAX: usize = 64 * 1024;
/// How long one exchange with a peer may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Time between rounds of asking the members not heard from.
const ROUND_INTERVAL: Duration = Duration::from_millis(200);
/// Time between "waiting for" log lines.
const WAITING_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// What an empty data dir started with `--initial-cluster` does.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every initial member is new: bootstrap with these incarnations (every member's).
    Bootstrap(BTreeMap<u64, u64>),
    /// The cluster exists and recorded this node with its incarnation: wait for the leader.
    Join,
}

/// The cluster incarnation of a bootstrap: a function of the cluster id and the members'
/// ids, addresses and (random) incarnations, so that every member computes the same one and
/// two bootstraps of the same cluster id differ.
pub fn cluster_incarnation(
    cluster_id: &str,
    initial_cluster: &BTreeMap<u64, String>,
    incarnations: &BTreeMap<u64, u64>,
) -> u64 {
    // FNV-1a, 64 bits: stable across builds and platforms (std's hashers are not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(cluster_id.as_bytes());
    for (id, addr) in initial_cluster {
        eat(&id.to_le_bytes());
        eat(addr.as_bytes());
        eat(&incarnations.get(id).copied().unwrap_or(0).to_le_bytes());
    }
    h.max(1)
}

/// The cluster incarnation of a bootstrap from a backup (`raftd --restore`): that of the
/// members, mixed with the backup's index, term and checksum, so that members that restored
/// different backups, or did not all restore one, refuse each other (each side checks the
/// other's cluster incarnation) instead of forming a cluster whose state machines differ.
pub fn restored_cluster_incarnation(plain: u64, index: u64, term: u64, data: &[u8]) -> u64 {
    let mut h = plain ^ 0x9e37_79b9_7f4a_7c15;
    for word in [index, term, u64::from(crc32fast::hash(data)), data.len() as u64] {
        h = (h ^ word).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29);
    }
    h.max(1)
}

fn write_frame<T: serde::Serialize>(stream: &mut impl Write, value: &T) -> std::io::Result<()> {
    let mut buf = Vec::new();
    codec::encode_into(&mut buf, value, HELLO_SIZE_MAX).map_err(std::io::Error::other)?;
    stream.write_all(&buf)
}

fn read_frame<T: serde::de::DeserializeOwned>(stream: &mut impl Read) -> std::io::Result<T> {
    let payload = read_payload(stream)?;
    codec::decode_payload(&payload).map_err(std::io::Error::other)
}

/// Reads one frame of at most [`HELLO_SIZE_MAX`] bytes, blocking.
fn read_payload(stream: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; codec::FRAME_LEN_SIZE];
    stream.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > HELLO_SIZE_MAX {
        return Err(std::io::Error::other(format!("a {len}-byte hello")));
    }
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload)?;
    Ok(payload)
}

/// The answer to a Hello frame: refused when it is of a version this build does not speak.
fn answer_payload(waiting: &mut Waiting, payload: &[u8]) -> HelloAck {
    match decode_hello(payload) {
        Ok(hello) => waiting.answer(&hello),
        Err(reason) => {
            warn!("a connection on the peer port refused: {reason}");
            HelloAck::Refused { reason }
        }
    }
}

/// The decisions of the exchange, without its I/O: what to answer a member's hello, and what
/// a member's answer decides. [`await_initial_members`] drives it over blocking sockets before
/// the daemon's loop starts; [`NetExchange`] over a [`Net`] (a simulator's).
pub struct Waiting {
    config: NodeConfig,
    incarnation: u64,
    known: BTreeMap<u64, u64>,
    /// The last refusal logged per member, so that each is logged once.
    refusals: BTreeMap<u64, String>,
}

impl Waiting {
    /// This node (`config`, its data dir's `incarnation`) knows only itself yet.
    pub fn new(config: &NodeConfig, incarnation: u64) -> Waiting {
        Waiting {
            config: config.clone(),
            incarnation,
            known: BTreeMap::from([(config.id, incarnation)]),
            refusals: BTreeMap::new(),
        }
    }

    /// The hello this node asks the members with.
    pub fn hello(&self) -> Hello {
        peer_hello(&self.config, self.incarnation, 0)
    }

    /// The members of `--initial-cluster` not heard from yet, with their addresses.
    pub fn missing(&self) -> Vec<(u64, String)> {
        self.config
            .initial_cluster
            .iter()
            .filter(|(id, _)| !self.known.contains_key(id))
            .map(|(&id, addr)| (id, addr.clone()))
            .collect()
    }

    /// Bootstrap, once every initial member is known to be new.
    pub fn complete(&self) -> Option<Outcome> {
        self.missing().is_empty().then(|| Outcome::Bootstrap(self.known.clone()))
    }

    /// The answer to a hello received on the peer port.
    pub fn answer(&mut self, hello: &Hello) -> HelloAck {
        let refusal = if !tokens_match(hello.token.as_deref(), self.config.peer_token.as_deref()) {
            Some("wrong token".to_string())
        } else if hello.role != Role::Peer {
            Some(format!("{:?} hello on the peer port", hello.role))
        } else if hello.cluster_id != self.config.cluster_id {
            Some(format!("cluster {:?}, this is {:?}", hello.cluster_id, self.config.cluster_id))
        } else if !self.config.initial_cluster.contains_key(&hello.node_id)
            || hello.node_id == self.config.id
        {
            Some(format!("node {} is not another member of --initial-cluster", hello.node_id))
        } else {
            None
        };
        match refusal {
            Some(reason) => {
                warn!("refused a hello while bootstrapping: {reason}");
                HelloAck::Refused { reason }
            }
            None => {
                // A member without a history yet tells its incarnation; one with a history
                // is asked directly (its answer says whether it recorded this node).
                if hello.cluster_incarnation == 0 && hello.incarnation != 0 {
                    self.known.insert(hello.node_id, hello.incarnation);
                }
                HelloAck::Bootstrapping { node_id: self.config.id, incarnation: self.incarnation }
            }
        }
    }

    /// What member `id`'s (at `addr`) answer to this node's hello decides: Some when it
    /// decides the outcome.
    pub fn answered(&mut self, id: u64, addr: &str, ack: HelloAck) -> Option<Result<Outcome>> {
        let mut refused = |why: String| {
            if self.refusals.get(&id) != Some(&why) {
                warn!("member {id} at {addr}: {why}");
                self.refusals.insert(id, why);
            }
        };
        match ack {
            HelloAck::Bootstrapping { node_id, incarnation }
                if node_id == id && incarnation != 0 =>
            {
                self.known.insert(id, incarnation);
                None
            }
            HelloAck::Welcome { node_id, cluster_incarnation, .. }
                if node_id == id && cluster_incarnation != 0 =>
            {
                info!(
                    "member {id} already bootstrapped cluster {:?} (incarnation \
                     {cluster_incarnation:016x}) with this data dir: joining it",
                    self.config.cluster_id
                );
                Some(Ok(Outcome::Join))
            }
            HelloAck::Replaced { node_id, expected, found } if node_id == id => {
                Some(Err(Error::Config(format!(
                    "refusing to start: member {id} says: {}",
                    replaced_message(self.config.id, found, expected)
                ))))
            }
            HelloAck::Removed { node_id } if node_id == id => Some(Err(Error::Config(format!(
                "refusing to start: member {id} says node {} was removed from cluster {:?}; \
                 to bring it back, add it again (raftctl member add-learner) and start it \
                 with --join",
                self.config.id, self.config.cluster_id
            )))),
            HelloAck::Refused { reason } => {
                refused(format!("refused this node: {reason}"));
                None
            }
            other => {
                refused(format!("answered {other:?}"));
                None
            }
        }
    }

    /// Logs whom the node waits for.
    fn log_waiting(&self) {
        let ids: Vec<u64> = self.missing().iter().map(|(id, _)| *id).collect();
        info!(
            "empty data dir: waiting for initial members {ids:?} to start before bootstrapping \
             cluster {:?}",
            self.config.cluster_id
        );
    }
}

/// Answers one connection to the peer port, blocking.
fn answer_blocking(waiting: &mut Waiting, tls: Option<&TlsContext>, stream: TcpStream) {
    let remote = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(EXCHANGE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(EXCHANGE_TIMEOUT));
    let Some(server) = tls.and_then(TlsContext::accept_peer) else {
        let mut stream = stream;
        let Ok(payload) = read_payload(&mut stream) else { return };
        let ack = answer_payload(waiting, &payload);
        let _ = write_frame(&mut stream, &ack);
        return;
    };
    let Ok(server) = server else { return };
    let mut stream = rustls::StreamOwned::new(server, stream);
    let payload = match read_payload(&mut stream) {
        Ok(payload) => payload,
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            warn!("connection from {remote} on the peer port refused: {e}");
            return;
        }
        Err(_) => return,
    };
    let cluster_id = tls.map(TlsContext::cluster_id).unwrap_or_default();
    let hello = match decode_hello(&payload) {
        Ok(hello) => hello,
        Err(reason) => {
            warn!("connection from {remote} on the peer port refused: {reason}");
            let _ = write_frame(&mut stream, &HelloAck::Refused { reason });
            let _ = stream.flush();
            return;
        }
    };
    let ack = match crate::tls::check_peer_identity(&stream.conn, hello.node_id, cluster_id) {
        Ok(()) => waiting.answer(&hello),
        Err(reason) => {
            warn!("connection from {remote} on the peer port refused: {reason}");
            HelloAck::Refused { reason }
        }
    };
    let _ = write_frame(&mut stream, &ack);
    let _ = stream.flush();
}

/// Asks member `id` at `addr`, blocking; Some when the answer decides the outcome.
fn ask_blocking(
    waiting: &mut Waiting,
    tls: Option<&TlsContext>,
    id: u64,
    addr: &str,
) -> Option<Result<Outcome>> {
    let socket_addr = crate::resolve::resolve_blocking(addr).ok()?;
    let stream = TcpStream::connect_timeout(&socket_addr, EXCHANGE_TIMEOUT).ok()?;
    let _ = stream.set_read_timeout(Some(EXCHANGE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(EXCHANGE_TIMEOUT));
    let ack: HelloAck = match tls.and_then(|t| t.dial_peer(id)) {
        None => {
            let mut stream = stream;
            write_frame(&mut stream, &waiting.hello()).ok()?;
            read_frame(&mut stream).ok()?
        }
        Some(client) => {
            let mut stream = rustls::StreamOwned::new(client.ok()?, stream);
            let asked = write_frame(&mut stream, &waiting.hello())
                .and_then(|()| stream.flush())
                .and_then(|()| read_frame(&mut stream));
            match asked {
                Ok(ack) => ack,
                Err(e) => {
                    if e.kind() == std::io::ErrorKind::InvalidData {
                        warn!("asking member {id} at {addr}: {e}");
                    }
                    return None;
                }
            }
        }
    };
    waiting.answered(id, addr, ack)
}

/// Waits until the outcome is known (see the module's description), answering the other
/// members meanwhile on `listener` (which must be non-blocking).
pub fn await_initial_members(
    listener: &TcpListener,
    config: &NodeConfig,
    tls: Option<&TlsContext>,
    incarnation: u64,
    shutdown: &AtomicBool,
) -> Result<Outcome> {
    let mut waiting = Waiting::new(config, incarnation);
    let mut next_log = Instant::now() + WAITING_LOG_INTERVAL;
    loop {
        while let Ok((stream, _)) = listener.accept() {
            answer_blocking(&mut waiting, tls, stream);
        }
        if let Some(outcome) = waiting.complete() {
            return Ok(outcome);
        }
        for (id, addr) in waiting.missing() {
            if let Some(outcome) = ask_blocking(&mut waiting, tls, id, &addr) {
                return outcome;
            }
        }
        if shutdown.load(Ordering::Relaxed) {
            return Err(Error::Stopped);
        }
        if Instant::now() >= next_log {
            waiting.log_waiting();
            next_log = Instant::now() + WAITING_LOG_INTERVAL;
        }
        std::thread::sleep(ROUND_INTERVAL);
    }
}

/// One connection of [`NetExchange`].
struct ExchangeConn<S> {
    stream: S,
    decoder: FrameDecoder,
    /// Whom this node asks on it (None: a member asks this node).
    asking: Option<(u64, String)>,
    /// The hello is written (asking), or the answer (answering).
    done_writing: bool,
    opened: Instant,
}

/// The same exchange as [`await_initial_members`] over a [`Net`], without blocking: a
/// simulator's network, where the node's empty data dir asks the members as the daemon's does
/// (see `Node::simulated_start`). Each [`NetExchange::turn`] answers the hellos that arrived,
/// reads the answers to this node's, and asks the members not heard from every
/// [`ROUND_INTERVAL`].
pub struct NetExchange<N: Net> {
    waiting: Waiting,
    net: N,
    clock: Arc<dyn Clock>,
    conns: BTreeMap<Token, ExchangeConn<N::Stream>>,
    next_token: usize,
    next_round: Instant,
    next_log: Instant,
    events: Vec<NetEvent>,
}

/// The first token of the exchange's connections (after the two listeners').
const EXCHANGE_FIRST_TOKEN: usize = 2;

impl<N: Net> NetExchange<N> {
    /// Starts asking at once.
    pub fn new(config: &NodeConfig, incarnation: u64, net: N, clock: Arc<dyn Clock>) -> Self {
        let now = clock.now();
        NetExchange {
            waiting: Waiting::new(config, incarnation),
            net,
            clock,
            conns: BTreeMap::new(),
            next_token: EXCHANGE_FIRST_TOKEN,
            next_round: now,
            next_log: now + WAITING_LOG_INTERVAL,
            events: Vec::new(),
        }
    }

    /// The network, once the outcome is known (the node's loop goes on with it).
    pub fn into_net(self) -> N {
        let NetExchange { mut net, conns, .. } = self;
        for (_, mut conn) in conns {
            net.deregister(&mut conn.stream);
        }
        net
    }

    fn open(&mut self, stream: N::Stream, asking: Option<(u64, String)>) {
        let token = Token(self.next_token);
        self.next_token += 1;
        let mut conn = ExchangeConn {
            stream,
            decoder: FrameDecoder::new(HELLO_SIZE_MAX),
            done_writing: false,
            opened: self.clock.now(),
            asking,
        };
        let writable = conn.asking.is_some();
        if self.net.register(&mut conn.stream, token, writable).is_ok() {
            self.conns.insert(token, conn);
        }
    }

    fn close(&mut self, token: Token) {
        if let Some(mut conn) = self.conns.remove(&token) {
            self.net.deregister(&mut conn.stream);
        }
    }

    /// One round: Some once the outcome is known (an error: this node must not start).
    pub fn turn(&mut self) -> Option<Result<Outcome>> {
        let mut events = std::mem::take(&mut self.events);
        if let Err(e) = self.net.poll(&mut events, Some(Duration::from_millis(10))) {
            return Some(Err(Error::io("poll", "the bootstrap exchange", e)));
        }
        for event in &events {
            match event.token {
                PEER_LISTENER => {
                    while let Ok((stream, _)) = self.net.accept(Port::Peer) {
                        self.open(stream, None);
                    }
                }
                // Clients wait for the node to start; their connections are closed.
                CLIENT_LISTENER => while self.net.accept(Port::Client).is_ok() {},
                token => {
                    if let Some(outcome) = self.serve(token, event.writable) {
                        self.events = events;
                        return Some(outcome);
                    }
                }
            }
        }
        self.events = events;
        if let Some(outcome) = self.waiting.complete() {
            return Some(Ok(outcome));
        }
        let now = self.clock.now();
        let expired: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| now.duration_since(c.opened) >= EXCHANGE_TIMEOUT)
            .map(|(&t, _)| t)
            .collect();
        for token in expired {
            self.close(token);
        }
        if now >= self.next_round {
            self.next_round = now + ROUND_INTERVAL;
            for (id, addr) in self.waiting.missing() {
                let asked =
                    self.conns.values().any(|c| c.asking.as_ref().is_some_and(|a| a.0 == id));
                let Ok(socket_addr) = addr.parse() else { continue };
                if !asked {
                    if let Ok(stream) = self.net.connect(socket_addr, id) {
                        self.open(stream, Some((id, addr)));
                    }
                }
            }
        }
        if now >= self.next_log {
            self.waiting.log_waiting();
            self.next_log = now + WAITING_LOG_INTERVAL;
        }
        None
    }

    /// Moves connection `token` on; Some when an answer decides the outcome.
    fn serve(&mut self, token: Token, writable: bool) -> Option<Result<Outcome>> {
        let conn = self.conns.get_mut(&token)?;
        if conn.asking.is_some() && !conn.done_writing && writable {
            if !matches!(N::connect_error(&conn.stream), Ok(None)) {
                self.close(token);
                return None;
            }
            let mut frame = Vec::new();
            let hello = self.waiting.hello();
            let sent = codec::encode_into(&mut frame, &hello, HELLO_SIZE_MAX).is_ok()
                && conn.stream.write_all(&frame).is_ok();
            if !sent {
                self.close(token);
                return None;
            }
            conn.done_writing = true;
            let _ = self.net.reregister(&mut conn.stream, token, false);
        }
        let conn = self.conns.get_mut(&token)?;
        let closed = loop {
            match conn.decoder.read_from(&mut conn.stream) {
                Ok(0) => break true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                Err(_) => break true,
            }
        };
        let payload = match conn.decoder.next_payload() {
            Ok(Some(payload)) => Some(payload.to_vec()),
            Ok(None) => None,
            Err(_) => {
                self.close(token);
                return None;
            }
        };
        let Some(payload) = payload else {
            if closed {
                self.close(token);
            }
            return None;
        };
        match conn.asking.clone() {
            Some((id, addr)) => {
                self.close(token);
                let ack = codec::decode_payload::<HelloAck>(&payload).ok()?;
                self.waiting.answered(id, &addr, ack)
            }
            None => {
                if !conn.done_writing {
                    {
                        let ack = answer_payload(&mut self.waiting, &payload);
                        let mut frame = Vec::new();
                        if codec::encode_into(&mut frame, &ack, HELLO_SIZE_MAX).is_ok() {
                            let _ = conn.stream.write_all(&frame);
                        }
                    }
                    conn.done_writing = true;
                }
                self.close(token);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_incarnation_is_the_same_for_every_member_and_differs_between_bootstraps() {
        let members: BTreeMap<u64, String> =
            (1..=3).map(|i| (i, format!("127.0.0.1:700{i}"))).collect();
        let a: BTreeMap<u64, u64> = [(1, 11), (2, 22), (3, 33)].into();
        let once = cluster_incarnation("c", &members, &a);
        assert_eq!(once, cluster_incarnation("c", &members, &a.clone()));
        let wiped: BTreeMap<u64, u64> = [(1, 11), (2, 23), (3, 33)].into();
        assert_ne!(once, cluster_incarnation("c", &members, &wiped));
        assert_ne!(once, cluster_incarnation("d", &members, &a));
        assert_ne!(once, 0);
    }
}
