//! A cluster of `RawNode`s that handles every `Ready` as the contract says: persist to
//! `MemoryStorage`, send, apply (configuration changes included), advance. Shared by the
//! scenario tests and the benchmarks.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet, VecDeque};

use raft::{
    ConfChange, ConfChangeV2, ConfState, Config, Entry, EntryType, MemoryStorage, Message,
    MessageType, RawNode, ReadState, SnapshotStatus, StateType,
};

/// One node and what it applied.
pub struct Node {
    /// The node.
    pub raw: RawNode<MemoryStorage>,
    /// Data of the normal, non-empty entries it applied, in order.
    pub applied: Vec<Vec<u8>>,
    /// Reads it was answered.
    pub read_states: Vec<ReadState>,
    /// The configuration after the last applied change.
    pub conf_state: Option<ConfState>,
    /// Snapshot images it restored (their data).
    pub restored: Vec<Vec<u8>>,
}

/// Nodes exchanging messages through an in-memory queue.
pub struct Cluster {
    /// The nodes, by id.
    pub nodes: BTreeMap<u64, Node>,
    /// Messages sent and not yet delivered.
    pub in_flight: VecDeque<Message>,
    /// Links that drop messages, as (from, to).
    pub cut: HashSet<(u64, u64)>,
}

/// Test defaults for a cluster node. The members come from the storage (see
/// [`voters_storage`]); `Config.peers` is exercised through [`Cluster::bootstrap`].
pub fn cluster_config(id: u64) -> Config {
    Config {
        id,
        election_tick: 10,
        heartbeat_tick: 1,
        check_quorum: false,
        pre_vote: false,
        ..Config::default()
    }
}

/// A storage whose configuration is these voters.
pub fn voters_storage(ids: &[u64]) -> MemoryStorage {
    MemoryStorage::new_with_conf_state(ConfState { voters: ids.to_vec(), ..ConfState::default() })
}

impl Cluster {
    /// Voters `ids`, each configured by `configure`, over storages holding that
    /// configuration.
    pub fn new(ids: &[u64], configure: impl Fn(&mut Config)) -> Cluster {
        let mut nodes = BTreeMap::new();
        for &id in ids {
            let mut config = cluster_config(id);
            configure(&mut config);
            nodes.insert(id, Node::new(&config, voters_storage(ids)));
        }
        Cluster { nodes, in_flight: VecDeque::new(), cut: HashSet::new() }
    }

    /// Voters `ids` bootstrapped through `Config.peers`: the configuration is written into
    /// the log and applied from the first Ready.
    pub fn bootstrap(ids: &[u64], configure: impl Fn(&mut Config)) -> Cluster {
        let mut nodes = BTreeMap::new();
        for &id in ids {
            let mut config = Config { peers: ids.to_vec(), ..cluster_config(id) };
            configure(&mut config);
            nodes.insert(id, Node::new(&config, MemoryStorage::new()));
        }
        let mut cluster = Cluster { nodes, in_flight: VecDeque::new(), cut: HashSet::new() };
        cluster.stabilize();
        cluster
    }

    /// Adds a node that starts empty and waits to be added by a configuration change.
    pub fn add_empty_node(&mut self, id: u64, configure: impl Fn(&mut Config)) {
        let mut config = cluster_config(id);
        configure(&mut config);
        self.nodes.insert(id, Node::new(&config, MemoryStorage::new()));
    }

    /// The node `id`.
    pub fn node(&mut self, id: u64) -> &mut RawNode<MemoryStorage> {
        &mut self.nodes.get_mut(&id).expect("node exists").raw
    }

    /// Handles every node's Ready and delivers messages until nothing moves.
    pub fn stabilize(&mut self) {
        loop {
            let mut moved = false;
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for id in ids {
                moved |= self.handle_ready(id);
            }
            while let Some(m) = self.in_flight.pop_front() {
                moved = true;
                self.deliver(m);
            }
            if !moved {
                return;
            }
        }
    }

    /// Delivers the messages in flight, without handling any Ready.
    pub fn stabilize_messages_only(&mut self) {
        while let Some(m) = self.in_flight.pop_front() {
            self.deliver(m);
        }
    }

    /// Delivers one message unless its link is cut; the sender of a snapshot learns whether
    /// it arrived, as a transport reports it.
    fn deliver(&mut self, m: Message) {
        let (from, to, is_snapshot) = (m.from, m.to, m.msg_type == MessageType::Snapshot);
        let delivered = !self.cut.contains(&(from, to)) && self.nodes.contains_key(&to);
        if delivered {
            let _ = self.node(to).step(m);
        }
        if is_snapshot {
            let status = if delivered { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
            if let Some(sender) = self.nodes.get_mut(&from) {
                sender.raw.report_snapshot(to, status);
            }
        }
    }

    /// Handles one Ready of node `id`; false when it had none.
    pub fn handle_ready(&mut self, id: u64) -> bool {
        let node = self.nodes.get_mut(&id).expect("node exists");
        if !node.raw.has_ready() {
            return false;
        }
        let messages = node.handle_ready();
        self.in_flight.extend(messages);
        true
    }

    /// Ticks every node once.
    pub fn tick(&mut self) {
        for node in self.nodes.values_mut() {
            node.raw.tick();
        }
    }

    /// `rounds` times: tick every node once, then deliver until quiet.
    pub fn settle(&mut self, rounds: usize) {
        for _ in 0..rounds {
            self.tick();
            self.stabilize();
        }
    }

    /// Makes `id` campaign and settles the election.
    pub fn elect(&mut self, id: u64) {
        self.node(id).campaign().expect("campaign");
        self.stabilize();
        assert_eq!(self.node(id).raft.state, StateType::Leader, "node {id} should lead");
    }

    /// Drops messages in both directions between `a` and `b`.
    pub fn partition(&mut self, a: u64, b: u64) {
        self.cut.insert((a, b));
        self.cut.insert((b, a));
    }

    /// Drops every message to and from `id`.
    pub fn isolate(&mut self, id: u64) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for other in ids {
            if other != id {
                self.partition(id, other);
            }
        }
    }

    /// Heals every partition.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// The id of the node that believes it leads the highest term, if any.
    pub fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.raw.raft.state == StateType::Leader)
            .max_by_key(|(_, n)| n.raw.raft.term)
            .map(|(&id, _)| id)
    }
}

impl Node {
    /// A node over `storage`.
    pub fn new(config: &Config, storage: MemoryStorage) -> Node {
        let raw = RawNode::new(config, storage).expect("valid node");
        Node {
            raw,
            applied: Vec::new(),
            read_states: Vec::new(),
            conf_state: None,
            restored: Vec::new(),
        }
    }

    /// Persists, applies and advances one Ready; returns the messages to send.
    pub fn handle_ready(&mut self) -> Vec<Message> {
        let mut rd = self.raw.ready();
        let store = self.raw.store_mut();
        if let Some(snapshot) = &rd.snapshot {
            store.apply_snapshot(snapshot.clone()).expect("newer snapshot");
            self.restored.push(snapshot.data.clone());
            self.applied = decode_applied(&snapshot.data);
            self.conf_state = Some(snapshot.metadata.conf_state.clone());
        }
        store.append(&rd.entries).expect("append");
        if let Some(hs) = rd.hard_state {
            store.set_hard_state(hs);
        }
        let messages = std::mem::take(&mut rd.messages);
        for entry in &rd.committed_entries {
            self.apply(entry);
        }
        self.read_states.append(&mut rd.read_states);
        self.raw.advance(rd);
        messages
    }

    /// Snapshots the state machine (the applied data) at the applied index and compacts the
    /// log up to it.
    pub fn snapshot_and_compact(&mut self) {
        let applied = self.raw.raft.raft_log.applied;
        let data = encode_applied(&self.applied);
        let cs = self.raw.raft.prs.conf_state();
        let store = self.raw.store_mut();
        store.create_snapshot(applied, Some(cs), data).expect("snapshot at applied index");
        store.compact(applied).expect("compact to applied index");
    }

    fn apply(&mut self, entry: &Entry) {
        let cc = match entry.entry_type {
            EntryType::Normal => {
                if !entry.data.is_empty() {
                    self.applied.push(entry.data.to_vec());
                }
                return;
            }
            EntryType::ConfChange => ConfChange::decode(&entry.data).expect("decodes").into_v2(),
            EntryType::ConfChangeV2 => ConfChangeV2::decode(&entry.data).expect("decodes"),
        };
        if let Ok(cs) = self.raw.apply_conf_change(&cc) {
            self.raw.store_mut().set_conf_state(cs.clone());
            self.conf_state = Some(cs);
        }
    }
}

/// The state machine image: each applied datum as a u32 length and its bytes.
pub fn encode_applied(applied: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for data in applied {
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
    }
    out
}

/// The inverse of [`encode_applied`].
pub fn decode_applied(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        out.push(bytes[4..4 + len].to_vec());
        bytes = &bytes[4 + len..];
    }
    out
}
