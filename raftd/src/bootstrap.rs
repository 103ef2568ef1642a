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
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::errors::{Error, Result};
use crate::node::{peer_hello, tokens_match, NodeConfig};
use crate::protocol::{replaced_message, Hello, HelloAck, Role};

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

fn write_frame<T: serde::Serialize>(stream: &mut TcpStream, value: &T) -> std::io::Result<()> {
    let mut buf = Vec::new();
    codec::encode_into(&mut buf, value, HELLO_SIZE_MAX).map_err(std::io::Error::other)?;
    stream.write_all(&buf)
}

fn read_frame<T: serde::de::DeserializeOwned>(stream: &mut TcpStream) -> std::io::Result<T> {
    let mut len = [0u8; codec::FRAME_LEN_SIZE];
    stream.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > HELLO_SIZE_MAX {
        return Err(std::io::Error::other(format!("a {len}-byte hello")));
    }
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload)?;
    codec::decode_payload(&payload).map_err(std::io::Error::other)
}

struct Waiting<'a> {
    config: &'a NodeConfig,
    incarnation: u64,
    known: BTreeMap<u64, u64>,
    /// The last refusal logged per member, so that each is logged once.
    refusals: BTreeMap<u64, String>,
}

impl Waiting<'_> {
    /// Answers one connection to the peer port.
    fn answer(&mut self, mut stream: TcpStream) {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(EXCHANGE_TIMEOUT));
        let _ = stream.set_write_timeout(Some(EXCHANGE_TIMEOUT));
        let Ok(hello) = read_frame::<Hello>(&mut stream) else { return };
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
        let ack = match refusal {
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
        };
        let _ = write_frame(&mut stream, &ack);
    }

    /// Asks member `id`; Some when the answer decides the outcome.
    fn ask(&mut self, id: u64, addr: &str) -> Option<Result<Outcome>> {
        let socket_addr = crate::resolve::resolve_blocking(addr).ok()?;
        let mut stream = TcpStream::connect_timeout(&socket_addr, EXCHANGE_TIMEOUT).ok()?;
        let _ = stream.set_read_timeout(Some(EXCHANGE_TIMEOUT));
        let _ = stream.set_write_timeout(Some(EXCHANGE_TIMEOUT));
        write_frame(&mut stream, &peer_hello(self.config, self.incarnation, 0)).ok()?;
        let ack: HelloAck = read_frame(&mut stream).ok()?;
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
}

/// Waits until the outcome is known (see the module's description), answering the other
/// members meanwhile on `listener` (which must be non-blocking).
pub fn await_initial_members(
    listener: &TcpListener,
    config: &NodeConfig,
    incarnation: u64,
    shutdown: &AtomicBool,
) -> Result<Outcome> {
    let mut waiting = Waiting {
        config,
        incarnation,
        known: BTreeMap::from([(config.id, incarnation)]),
        refusals: BTreeMap::new(),
    };
    let mut next_log = Instant::now() + WAITING_LOG_INTERVAL;
    loop {
        while let Ok((stream, _)) = listener.accept() {
            waiting.answer(stream);
        }
        let missing: Vec<(u64, String)> = config
            .initial_cluster
            .iter()
            .filter(|(id, _)| !waiting.known.contains_key(id))
            .map(|(&id, addr)| (id, addr.clone()))
            .collect();
        if missing.is_empty() {
            return Ok(Outcome::Bootstrap(waiting.known));
        }
        for (id, addr) in &missing {
            if let Some(outcome) = waiting.ask(*id, addr) {
                return outcome;
            }
        }
        if shutdown.load(Ordering::Relaxed) {
            return Err(Error::Stopped);
        }
        if Instant::now() >= next_log {
            let ids: Vec<u64> = missing.iter().map(|(id, _)| *id).collect();
            info!(
                "empty data dir: waiting for initial members {ids:?} to start before \
                 bootstrapping cluster {:?}",
                config.cluster_id
            );
            next_log = Instant::now() + WAITING_LOG_INTERVAL;
        }
        std::thread::sleep(ROUND_INTERVAL);
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
