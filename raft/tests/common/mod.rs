//! Test harness: raft nodes on an in-memory network that can deliver, drop, cut, isolate and
//! recover (after etcd's `network` and raft-rs's `harness`).

#![allow(dead_code)]

pub mod cluster;

use std::collections::{BTreeMap, HashMap, HashSet};

use raft::{
    ConfState, Config, Entry, HardState, MemoryStorage, Message, MessageType, Raft, StateType,
    NO_LIMIT,
};

/// A config for tests: fixed ticks, no limits, check-quorum and pre-vote off unless asked.
pub fn new_test_config(id: u64, election_tick: usize, heartbeat_tick: usize) -> Config {
    Config {
        id,
        election_tick,
        heartbeat_tick,
        max_size_per_msg: NO_LIMIT,
        max_committed_size_per_ready: 0,
        max_uncommitted_entries_size: 0,
        max_inflight_msgs: 256,
        check_quorum: false,
        pre_vote: false,
        ..Config::default()
    }
}

/// A storage whose configuration is these voters, with an empty log (as etcd's tests build
/// them; `Config.peers` instead writes the configuration into the log).
pub fn storage_with_peers(peers: &[u64]) -> MemoryStorage {
    MemoryStorage::new_with_conf_state(ConfState { voters: peers.to_vec(), ..ConfState::default() })
}

/// A node over `storage`; if the storage holds no configuration, `peers` are the voters.
pub fn new_test_raft(
    id: u64,
    peers: &[u64],
    election_tick: usize,
    heartbeat_tick: usize,
    storage: MemoryStorage,
) -> Raft<MemoryStorage> {
    let config = new_test_config(id, election_tick, heartbeat_tick);
    let mut storage = storage;
    if storage.conf_state().voters.is_empty() && storage.conf_state().learners.is_empty() {
        storage.set_conf_state(ConfState { voters: peers.to_vec(), ..ConfState::default() });
    }
    Raft::new(&config, storage).expect("valid test raft")
}

/// A node from a full config over `storage`.
pub fn new_test_raft_with_config(config: &Config, storage: MemoryStorage) -> Raft<MemoryStorage> {
    Raft::new(config, storage).expect("valid test raft")
}

/// A node with voters `peers` and learners `learners`.
pub fn new_test_learner_raft(
    id: u64,
    peers: &[u64],
    learners: &[u64],
    election_tick: usize,
    heartbeat_tick: usize,
) -> Raft<MemoryStorage> {
    let config = new_test_config(id, election_tick, heartbeat_tick);
    let storage = MemoryStorage::new_with_conf_state(ConfState {
        voters: peers.to_vec(),
        learners: learners.to_vec(),
        ..ConfState::default()
    });
    Raft::new(&config, storage).expect("valid test raft")
}

/// Takes the node's outgoing messages.
pub fn read_messages(r: &mut Raft<MemoryStorage>) -> Vec<Message> {
    std::mem::take(&mut r.msgs)
}

/// Persists what `r` holds unstable, as an application would before `advance`: a pending
/// snapshot, then the unstable entries; a leader then counts them in its own progress.
pub fn persist(r: &mut Raft<MemoryStorage>) {
    if let Some(snapshot) = r.raft_log.unstable.snapshot.clone() {
        let index = snapshot.metadata.index;
        r.raft_log.store.apply_snapshot(snapshot).expect("a newer snapshot applies");
        r.raft_log.stable_snap_to(index);
    }
    let entries = r.raft_log.unstable_entries().to_vec();
    if let Some(last) = entries.last() {
        r.raft_log.store.append(&entries).expect("unstable entries follow the storage");
        r.on_persist_entries(last.index, last.term);
    }
}

/// An entry of `term` at `index` with `data`.
pub fn entry(term: u64, index: u64, data: &[u8]) -> Entry {
    Entry::new(term, index, data.to_vec())
}

/// Empty entries with these terms at indexes 1, 2, ...
pub fn entries_with_terms(terms: &[u64]) -> Vec<Entry> {
    terms.iter().enumerate().map(|(i, &t)| Entry::new(t, i as u64 + 1, vec![])).collect()
}

/// A message of `msg_type` from `from` to `to` at `term`.
pub fn new_message(from: u64, to: u64, msg_type: MessageType, term: u64) -> Message {
    Message { from, to, msg_type, term, ..Message::default() }
}

/// A proposal of `data` to node `to`.
pub fn propose(to: u64, data: &[u8]) -> Message {
    Message {
        from: to,
        to,
        msg_type: MessageType::Propose,
        entries: vec![entry(0, 0, data)],
        ..Message::default()
    }
}

/// Lets `r`'s check-quorum lease on its leader run out without it campaigning: its election
/// timeout is made one tick longer, then it ticks a whole (base) election timeout.
pub fn expire_lease(r: &mut Raft<MemoryStorage>) {
    r.randomized_election_timeout = r.election_timeout + 1;
    for _ in 0..r.election_timeout {
        r.tick();
    }
}

/// A local Hup to `to`.
pub fn hup(to: u64) -> Message {
    new_message(to, to, MessageType::Hup, 0)
}

/// Node `id` of voters `peers`, whose log holds entries of these terms and whose term is the
/// last of them.
pub fn ents_with_config(
    id: u64,
    peers: &[u64],
    terms: &[u64],
    configure: impl Fn(&mut Config),
) -> Raft<MemoryStorage> {
    let mut storage = storage_with_peers(peers);
    storage.append(&entries_with_terms(terms)).expect("append");
    let mut config = new_test_config(id, 5, 1);
    configure(&mut config);
    let mut r = new_test_raft_with_config(&config, storage);
    let term = terms.last().copied().unwrap_or(0);
    r.reset(term);
    r
}

/// Node `id` of voters `peers` that voted for `vote` in `term`, with an empty log.
pub fn voted_with_config(
    id: u64,
    peers: &[u64],
    vote: u64,
    term: u64,
    configure: impl Fn(&mut Config),
) -> Raft<MemoryStorage> {
    let mut storage = storage_with_peers(peers);
    storage.set_hard_state(HardState { vote, term, commit: 0 });
    let mut config = new_test_config(id, 5, 1);
    configure(&mut config);
    let mut r = new_test_raft_with_config(&config, storage);
    r.reset(term);
    r
}

/// Called for every message on the network; false drops it.
pub type MsgHook = Box<dyn Fn(&Message) -> bool>;

/// What occupies a slot of the network.
// Test-only and short-lived: boxing the large variant would only add noise at every use.
#[allow(clippy::large_enum_variant)]
pub enum NetPeer {
    /// A node with default test settings and every slot as a voter.
    Default,
    /// This node.
    Raft(Raft<MemoryStorage>),
    /// A black hole: swallows every message.
    Hole,
}

/// Nodes 1..=n on an in-memory network that delivers breadth first, synchronously.
pub struct Network {
    /// The nodes, by id.
    pub peers: BTreeMap<u64, Raft<MemoryStorage>>,
    holes: HashSet<u64>,
    dropm: HashMap<(u64, u64), f64>,
    ignorem: HashSet<MessageType>,
    /// Called for every message; false drops it.
    pub msg_hook: Option<MsgHook>,
    rng_state: u64,
}

impl Network {
    /// A network of these peers, with ids 1, 2, ...
    pub fn new(peers: Vec<NetPeer>) -> Network {
        Network::new_with_config(peers, |_| {})
    }

    /// Like `new`, with every default node's config adjusted.
    pub fn new_with_config(peers: Vec<NetPeer>, configure: impl Fn(&mut Config)) -> Network {
        let ids: Vec<u64> = (1..=peers.len() as u64).collect();
        let mut network = Network {
            peers: BTreeMap::new(),
            holes: HashSet::new(),
            dropm: HashMap::new(),
            ignorem: HashSet::new(),
            msg_hook: None,
            rng_state: 0x5eed,
        };
        for (peer, &id) in peers.into_iter().zip(&ids) {
            match peer {
                NetPeer::Default => {
                    let mut config = new_test_config(id, 10, 1);
                    configure(&mut config);
                    let r = Raft::new(&config, storage_with_peers(&ids)).expect("valid raft");
                    network.peers.insert(id, r);
                }
                NetPeer::Raft(r) => {
                    assert_eq!(r.id, id, "a raft in slot {id} must have id {id}");
                    network.peers.insert(id, r);
                }
                NetPeer::Hole => {
                    network.holes.insert(id);
                }
            }
        }
        network
    }

    /// The node `id`.
    pub fn peer(&self, id: u64) -> &Raft<MemoryStorage> {
        &self.peers[&id]
    }

    /// The node `id`, mutably.
    pub fn peer_mut(&mut self, id: u64) -> &mut Raft<MemoryStorage> {
        self.peers.get_mut(&id).expect("peer exists")
    }

    /// Delivers messages and everything they cause, until the network is quiet.
    pub fn send(&mut self, msgs: Vec<Message>) {
        let mut queue: std::collections::VecDeque<Message> = msgs.into();
        while let Some(m) = queue.pop_front() {
            let Some(p) = self.peers.get_mut(&m.to) else {
                continue;
            };
            let _ = p.step(m);
            persist(p);
            let out = std::mem::take(&mut p.msgs);
            queue.extend(self.filter(out));
        }
    }

    fn random_f64(&mut self) -> f64 {
        self.rng_state ^= self.rng_state << 13;
        self.rng_state ^= self.rng_state >> 7;
        self.rng_state ^= self.rng_state << 17;
        (self.rng_state >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Applies drops, ignores and the hook.
    pub fn filter(&mut self, msgs: Vec<Message>) -> Vec<Message> {
        let mut kept = Vec::new();
        for m in msgs {
            assert_ne!(m.msg_type, MessageType::Hup, "hups never go over the network");
            if self.ignorem.contains(&m.msg_type) || self.holes.contains(&m.to) {
                continue;
            }
            let perc = self.dropm.get(&(m.from, m.to)).copied().unwrap_or(0.0);
            if perc > 0.0 && self.random_f64() < perc {
                continue;
            }
            if let Some(hook) = &self.msg_hook {
                if !hook(&m) {
                    continue;
                }
            }
            kept.push(m);
        }
        kept
    }

    /// Drops messages from `from` to `to` with probability `perc`.
    pub fn drop(&mut self, from: u64, to: u64, perc: f64) {
        self.dropm.insert((from, to), perc);
    }

    /// Drops every message between `one` and `other`.
    pub fn cut(&mut self, one: u64, other: u64) {
        self.drop(one, other, 2.0);
        self.drop(other, one, 2.0);
    }

    /// Drops every message to and from `id`.
    pub fn isolate(&mut self, id: u64) {
        let ids: Vec<u64> = self.peers.keys().chain(self.holes.iter()).copied().collect();
        for other in ids {
            if other != id {
                self.drop(id, other, 1.0);
                self.drop(other, id, 1.0);
            }
        }
    }

    /// Drops every message of this type.
    pub fn ignore(&mut self, t: MessageType) {
        self.ignorem.insert(t);
    }

    /// Heals every fault.
    pub fn recover(&mut self) {
        self.dropm.clear();
        self.ignorem.clear();
        self.msg_hook = None;
    }

    /// The roles of every node, by id.
    pub fn states(&self) -> BTreeMap<u64, StateType> {
        self.peers.iter().map(|(&id, r)| (id, r.state)).collect()
    }
}

/// The entries of a log, for comparisons.
pub fn log_entries(r: &Raft<MemoryStorage>) -> Vec<(u64, u64, Vec<u8>)> {
    r.raft_log.all_entries().into_iter().map(|e| (e.index, e.term, e.data.to_vec())).collect()
}
