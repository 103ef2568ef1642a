//! The application's interface: `RawNode`, the `Ready` contract, restarts from storage, and
//! input validation.

mod common;

use common::cluster::{cluster_config, voters_storage, Cluster, Node};
use common::*;
use raft::{
    ConfState, Config, ConfigError, Error, HardState, MemoryStorage, Message, MessageType, RawNode,
    SoftState, StateType, Storage,
};

fn single_node() -> RawNode<MemoryStorage> {
    RawNode::new(&cluster_config(1), voters_storage(&[1])).unwrap()
}

/// Persists a Ready to the node's own storage and advances, returning what it held.
fn persist_and_advance(node: &mut RawNode<MemoryStorage>) -> raft::Ready {
    let rd = node.ready();
    node.store_mut().append(&rd.entries).unwrap();
    if let Some(hs) = rd.hard_state {
        node.store_mut().set_hard_state(hs);
    }
    let copy = raft::Ready {
        soft_state: rd.soft_state,
        hard_state: rd.hard_state,
        read_states: rd.read_states.clone(),
        entries: rd.entries.clone(),
        snapshot: rd.snapshot.clone(),
        committed_entries: rd.committed_entries.clone(),
        messages: rd.messages.clone(),
        must_sync: rd.must_sync,
        messages_before_persist: rd.messages_before_persist,
    };
    node.advance(rd);
    copy
}

/// Persists and advances Readies until there is none; returns the committed entries.
fn persist_until_quiet(node: &mut RawNode<MemoryStorage>) -> Vec<raft::Entry> {
    let mut committed = Vec::new();
    while node.has_ready() {
        committed.extend(persist_and_advance(node).committed_entries);
    }
    committed
}

/// A campaign's Ready carries the new role, the term and vote to persist (synced) and the
/// leader's no-op entry; a single voter commits it only once it is persisted, in the next
/// Ready.
#[test]
fn ready_after_campaign_holds_state_and_entries_then_the_commit() {
    let mut node = single_node();
    assert!(!node.has_ready(), "a new node has nothing to do");
    node.campaign().unwrap();
    assert!(node.has_ready());
    let rd = persist_and_advance(&mut node);
    assert_eq!(rd.soft_state, Some(SoftState { lead: 1, raft_state: StateType::Leader }));
    assert_eq!(rd.hard_state, Some(HardState { term: 1, vote: 1, commit: 0 }));
    assert_eq!(rd.entries.len(), 1);
    assert!(rd.committed_entries.is_empty(), "not durable when the Ready was taken");
    assert!(rd.must_sync);
    let committed = persist_and_advance(&mut node);
    assert_eq!(committed.hard_state.map(|hs| hs.commit), Some(1));
    assert_eq!(committed.committed_entries, rd.entries);
    assert!(committed.entries.is_empty());
    assert!(!node.has_ready(), "advance consumed everything");
}

/// A single voter with a learner elects itself without a message: the Ready that makes its
/// term and vote durable also holds its first append to the learner, which must wait for them
/// (after a crash before that sync it could lead the same term again, with other entries at
/// the same indexes). Its later appends may leave before its own write (Raft thesis §10.2.1).
/// Found by the whole-node simulator (`--single-voter`, seed 9649).
#[test]
fn a_leaders_messages_wait_for_its_term_to_be_durable() {
    let storage = MemoryStorage::new_with_conf_state(ConfState {
        voters: vec![1],
        learners: vec![2],
        ..ConfState::default()
    });
    let mut node = RawNode::new(&cluster_config(1), storage).unwrap();
    // Elected, and a proposal taken in the same turn, before the Ready is handled.
    node.campaign().unwrap();
    node.propose(vec![], b"x".to_vec()).unwrap();
    let rd = persist_and_advance(&mut node);
    assert_eq!(rd.hard_state.map(|hs| (hs.term, hs.vote)), Some((1, 1)));
    assert!(rd.messages.iter().any(|m| m.to == 2 && m.msg_type == MessageType::Append));
    assert!(!rd.messages_before_persist, "appends of a term not yet durable");
    node.propose(vec![], b"y".to_vec()).unwrap();
    let rd = node.ready();
    assert!(!rd.entries.is_empty());
    assert!(rd.messages_before_persist, "the term is durable: appends may run ahead");
}

/// `must_sync` is false when only the commit index changed.
#[test]
fn must_sync_is_false_for_commit_only_changes() {
    let mut cluster = Cluster::new(&[1, 2], |_| {});
    cluster.elect(1);
    cluster.node(1).propose(vec![], b"x".to_vec()).unwrap();
    // Node 1 appends and sends; node 2 appends (synced) and acknowledges.
    cluster.handle_ready(1);
    cluster.stabilize_messages_only();
    let follower = &mut cluster.nodes.get_mut(&2).unwrap().raw;
    let mut rd = follower.ready();
    assert!(rd.must_sync, "new entries must be synced");
    assert_eq!(rd.entries.len(), 1);
    let acks = std::mem::take(&mut rd.messages);
    follower.store_mut().append(&rd.entries).unwrap();
    follower.advance(rd);
    cluster.in_flight.extend(acks);
    // Node 1 commits and tells node 2, whose next Ready only moves the commit index.
    cluster.stabilize_messages_only();
    cluster.handle_ready(1);
    cluster.stabilize_messages_only();
    let rd = cluster.nodes.get_mut(&2).unwrap().raw.ready();
    assert_eq!(rd.hard_state.map(|hs| hs.commit), Some(2));
    assert!(rd.entries.is_empty());
    assert!(!rd.must_sync, "a commit-only change need not be synced");
}

/// Proposals through a three-node cluster are applied on every node, in the same order.
#[test]
fn proposals_apply_in_order_on_every_node() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.elect(1);
    for i in 0..20u8 {
        let proposer = [1, 2, 3][i as usize % 3]; // Followers forward to the leader.
        cluster.node(proposer).propose(vec![], vec![i]).unwrap();
        cluster.stabilize();
    }
    let want: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i]).collect();
    for (id, node) in &cluster.nodes {
        assert_eq!(node.applied, want, "node {id}");
    }
}

/// Committed entries per Ready are capped by `max_committed_size_per_ready`, but at least
/// one entry is always delivered.
#[test]
fn committed_entries_per_ready_are_size_limited() {
    let mut config = cluster_config(1);
    config.max_committed_size_per_ready = 1;
    let mut node = RawNode::new(&config, voters_storage(&[1])).unwrap();
    node.campaign().unwrap();
    assert_eq!(persist_until_quiet(&mut node).len(), 1);
    for i in 0..5u8 {
        node.propose(vec![], vec![i; 100]).unwrap();
    }
    let mut batches = Vec::new();
    while node.has_ready() {
        let rd = persist_and_advance(&mut node);
        if !rd.committed_entries.is_empty() {
            batches.push(rd.committed_entries.len());
        }
    }
    assert_eq!(batches, vec![1, 1, 1, 1, 1], "one entry per Ready under a tiny limit");
    assert_eq!(node.raft.raft_log.applied, 6);
}

/// A restarted node reads its hard state from storage; `Config.applied` keeps entries already
/// applied from being delivered again.
#[test]
fn restart_with_applied_does_not_redeliver_applied_entries() {
    let mut node = single_node();
    node.campaign().unwrap();
    persist_until_quiet(&mut node);
    for i in 0..4u8 {
        node.propose(vec![], vec![i]).unwrap();
        persist_until_quiet(&mut node);
    }
    let storage = node.store().clone();
    assert_eq!(storage.hard_state().commit, 5);

    // Restart with applied = 3: entries 4 and 5 come again, 1 to 3 do not.
    let config = Config { applied: 3, ..cluster_config(1) };
    let mut restarted = RawNode::new(&config, {
        let mut s = storage.clone();
        s.set_conf_state(ConfState { voters: vec![1], ..ConfState::default() });
        s
    })
    .unwrap();
    assert_eq!(restarted.raft.term, 1);
    assert_eq!(restarted.raft.vote, 1);
    assert_eq!(restarted.raft.raft_log.committed, 5);
    let rd = restarted.ready();
    let indexes: Vec<u64> = rd.committed_entries.iter().map(|e| e.index).collect();
    assert_eq!(indexes, vec![4, 5]);
    assert!(rd.hard_state.is_none(), "nothing changed since the restart");
    restarted.advance(rd);
}

/// Raft::new refuses configurations that contradict the storage.
#[test]
fn new_refuses_configs_that_contradict_storage() {
    let storage = storage_with_peers(&[1, 2]);
    let config = Config { peers: vec![1, 2], ..cluster_config(1) };
    assert!(matches!(
        RawNode::new(&config, storage),
        Err(Error::ConfigInvalid(ConfigError::BootstrapOverExistingState))
    ));
    let config = Config { applied: 5, ..cluster_config(1) };
    assert!(matches!(
        RawNode::new(&config, voters_storage(&[1])),
        Err(Error::ConfigInvalid(ConfigError::AppliedBeyondCommit { applied: 5, committed: 0 }))
    ));
    let config = Config { election_tick: 1, ..cluster_config(1) };
    assert!(matches!(
        RawNode::new(&config, MemoryStorage::new()),
        Err(Error::ConfigInvalid(ConfigError::ElectionTickTooSmall { .. }))
    ));
}

/// Bad input from a peer gets a typed error and changes nothing: local message types, a
/// response from an unknown node, a message without term or sender, a read without context.
#[test]
fn step_refuses_bad_input_from_peers() {
    let mut node = RawNode::new(&cluster_config(1), voters_storage(&[1, 2, 3])).unwrap();
    for t in [MessageType::Hup, MessageType::Beat, MessageType::CheckQuorum] {
        let m = new_message(2, 1, t, 1);
        assert!(matches!(node.step(m), Err(Error::StepLocalMsg)), "{t:?}");
    }
    let unknown = new_message(9, 1, MessageType::AppendResponse, 1);
    assert!(matches!(node.step(unknown), Err(Error::StepPeerNotFound { id: 9 })));
    let no_term = new_message(2, 1, MessageType::Append, 0);
    assert!(matches!(node.step(no_term), Err(Error::MalformedMessage { .. })));
    let no_sender = new_message(0, 1, MessageType::Heartbeat, 1);
    assert!(matches!(node.step(no_sender), Err(Error::MalformedMessage { .. })));
    let read = Message { from: 2, to: 1, msg_type: MessageType::ReadIndex, ..Message::default() };
    assert!(matches!(node.step(read), Err(Error::MalformedMessage { .. })));
    let gap = Message {
        index: 0,
        entries: vec![entry(1, 2, b"gap")],
        ..new_message(2, 1, MessageType::Append, 1)
    };
    assert!(matches!(node.step(gap), Err(Error::MalformedMessage { .. })));
    let termed_proposal = Message { term: 3, ..propose(1, b"x") };
    assert!(matches!(node.step(termed_proposal), Err(Error::MalformedMessage { .. })));
    assert_eq!(node.raft.term, 0);
    assert!(!node.has_ready());
}

/// Odd but well-formed input does not crash the node: an acknowledgement past the leader's
/// last index is ignored, a leader-transfer request forwarded to a follower goes on to the
/// leader.
#[test]
fn odd_peer_input_is_ignored_or_forwarded_not_fatal() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.elect(1);
    let term = cluster.node(1).raft.term;
    let last = cluster.node(1).raft.raft_log.last_index();
    let beyond =
        Message { index: last + 100, ..new_message(2, 1, MessageType::AppendResponse, term) };
    cluster.node(1).step(beyond).unwrap();
    assert_eq!(cluster.node(1).raft.prs.progress[&2].matched, last);
    assert_eq!(cluster.node(1).raft.raft_log.committed, last);

    // Node 3 asks node 2 (a follower) for a transfer to 3, with its term set.
    let transfer = new_message(3, 2, MessageType::TransferLeader, term);
    cluster.node(2).step(transfer).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.leader(), Some(3), "forwarded to the leader, which handed over");
}

/// A node that crashes loses what it had not persisted and recovers from what it had: after
/// a restart from its storage it rejoins and catches up.
#[test]
fn crashed_follower_restarts_from_storage_and_catches_up() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.elect(1);
    for i in 0..5u8 {
        cluster.node(1).propose(vec![], vec![i]).unwrap();
        cluster.stabilize();
    }
    // Node 3 crashes: keep only its storage. Meanwhile the others commit more.
    let old = cluster.nodes.remove(&3).unwrap();
    let storage = old.raw.store().clone();
    let applied = old.raw.raft.raft_log.applied;
    for i in 5..10u8 {
        cluster.node(1).propose(vec![], vec![i]).unwrap();
        cluster.stabilize();
    }
    let config = Config { applied, ..cluster_config(3) };
    let mut restarted = Node::new(&config, {
        let mut s = storage;
        s.set_conf_state(ConfState { voters: vec![1, 2, 3], ..ConfState::default() });
        s
    });
    restarted.applied = old.applied;
    cluster.nodes.insert(3, restarted);
    cluster.settle(3);
    let want: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i]).collect();
    assert_eq!(cluster.nodes[&3].applied, want);
    assert_eq!(cluster.leader(), Some(1));
}

/// A partitioned leader cannot commit; the majority elects a new leader which commits; on
/// healing the old leader's uncommitted entries are replaced.
#[test]
fn partitioned_leader_cannot_commit_and_is_replaced() {
    let mut cluster = Cluster::new(&[1, 2, 3], |c| {
        c.check_quorum = true;
        c.pre_vote = true;
    });
    cluster.elect(1);
    cluster.isolate(1);
    cluster.node(1).propose(vec![], b"lost".to_vec()).unwrap();
    cluster.stabilize();
    assert!(cluster.nodes[&1].applied.is_empty(), "no quorum, no commit");
    // Once their leases expire, nodes 2 and 3 elect a leader between them.
    let mut new_leader = None;
    for _ in 0..100 {
        cluster.tick();
        cluster.stabilize();
        new_leader =
            [2, 3].into_iter().find(|&id| cluster.node(id).raft.state == StateType::Leader);
        if new_leader.is_some() {
            break;
        }
    }
    let new_leader = new_leader.expect("the majority elects a leader");
    cluster.node(new_leader).propose(vec![], b"kept".to_vec()).unwrap();
    cluster.stabilize();
    // The isolated leader steps down once it misses a quorum for an election timeout.
    cluster.settle(20);
    assert_ne!(cluster.node(1).raft.state, StateType::Leader);
    cluster.heal();
    cluster.settle(5);
    for (id, node) in &cluster.nodes {
        assert_eq!(node.applied, vec![b"kept".to_vec()], "node {id}");
    }
}

/// The leader's status reports every member's progress; a follower's reports none.
#[test]
fn status_reports_progress_on_the_leader() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.elect(1);
    let status = cluster.node(1).status();
    assert_eq!(status.soft_state.raft_state, StateType::Leader);
    assert_eq!(status.conf_state.voters, vec![1, 2, 3]);
    assert_eq!(status.progress.len(), 3);
    let last = cluster.node(1).raft.raft_log.last_index();
    assert!(status.progress.values().all(|p| p.matched == last));
    assert!(cluster.node(2).status().progress.is_empty());
    assert_eq!(cluster.node(2).status().soft_state.lead, 1);
}

/// Uncommitted bytes are released as the leader applies: a steady stream of proposals never
/// hits the limit.
#[test]
fn uncommitted_size_is_released_on_apply() {
    let mut cluster = Cluster::new(&[1, 2, 3], |c| c.max_uncommitted_entries_size = 1000);
    cluster.elect(1);
    for i in 0..100u32 {
        cluster.node(1).propose(vec![], vec![0; 300]).unwrap_or_else(|e| panic!("{i}: {e}"));
        cluster.stabilize();
    }
    assert_eq!(cluster.node(1).raft.uncommitted_size, 0);
    assert_eq!(cluster.nodes[&3].applied.len(), 100);
    assert_eq!(cluster.node(3).store().last_index(), Ok(101));
}

/// `Config.peers` writes the configuration into the log as committed configuration changes;
/// the node has no configuration, and cannot campaign, until the application applies them.
#[test]
fn bootstrap_writes_the_configuration_into_the_log() {
    let config = Config { peers: vec![1, 2, 3], ..cluster_config(1) };
    let mut node = RawNode::new(&config, MemoryStorage::new()).unwrap();
    node.campaign().unwrap();
    assert_eq!(node.raft.state, StateType::Follower, "no configuration yet");
    let rd = node.ready();
    assert_eq!(rd.hard_state, Some(HardState { term: 1, vote: 0, commit: 3 }));
    assert!(rd.must_sync);
    assert_eq!(rd.entries.len(), 3);
    assert_eq!(rd.committed_entries, rd.entries);
    let added: Vec<u64> = rd
        .entries
        .iter()
        .map(|e| {
            assert_eq!((e.entry_type, e.term), (raft::EntryType::ConfChange, 1));
            raft::ConfChange::decode(&e.data).unwrap().node_id
        })
        .collect();
    assert_eq!(added, vec![1, 2, 3]);
    assert!(rd.messages.is_empty());
    // Applying them gives the configuration.
    let mut conf_state = ConfState::default();
    for e in &rd.committed_entries {
        conf_state = node.apply_conf_change(&raft::ConfChange::decode(&e.data).unwrap()).unwrap();
    }
    assert_eq!(conf_state.voters, vec![1, 2, 3]);
    node.advance(rd);
    node.campaign().unwrap();
    assert_eq!(node.raft.state, StateType::Candidate);
}

/// A bootstrapped node refuses to bootstrap again over existing state.
#[test]
fn bootstrap_refuses_existing_state() {
    let mut storage = MemoryStorage::new();
    storage.append(&[entry(1, 1, b"")]).unwrap();
    let config = Config { peers: vec![1], ..cluster_config(1) };
    assert!(matches!(
        RawNode::new(&config, storage),
        Err(Error::ConfigInvalid(ConfigError::BootstrapOverExistingState))
    ));
}

/// A cluster bootstrapped through `Config.peers` elects a leader and commits.
#[test]
fn bootstrapped_cluster_elects_and_commits() {
    let mut cluster = common::cluster::Cluster::bootstrap(&[1, 2, 3], |_| {});
    for node in cluster.nodes.values() {
        assert_eq!(node.conf_state.as_ref().map(|cs| cs.voters.clone()), Some(vec![1, 2, 3]));
    }
    cluster.elect(2);
    cluster.node(2).propose(vec![], b"x".to_vec()).unwrap();
    cluster.stabilize();
    for (id, node) in &cluster.nodes {
        assert_eq!(node.applied, vec![b"x".to_vec()], "node {id}");
    }
}

/// A node that joins empty learns every member by replaying the log from the bootstrap
/// entries on; it never adopts a configuration of its own and never campaigns alone.
#[test]
fn joining_node_learns_members_by_replaying_the_log() {
    let mut cluster = common::cluster::Cluster::bootstrap(&[1, 2, 3], |_| {});
    cluster.elect(1);
    for i in 0..5u8 {
        cluster.node(1).propose(vec![], vec![i]).unwrap();
        cluster.stabilize();
    }
    cluster.add_empty_node(4, |_| {});
    for _ in 0..50 {
        cluster.node(4).tick();
    }
    assert_eq!(cluster.node(4).raft.state, StateType::Follower, "an empty node never campaigns");
    let add = raft::ConfChange {
        change_type: raft::ConfChangeType::AddNode,
        node_id: 4,
        context: vec![],
    };
    cluster.node(1).propose_conf_change(vec![], &add).unwrap();
    cluster.settle(5);
    let joined = &cluster.nodes[&4];
    assert_eq!(joined.applied, (0..5u8).map(|i| vec![i]).collect::<Vec<_>>());
    assert_eq!(joined.conf_state.as_ref().map(|cs| cs.voters.clone()), Some(vec![1, 2, 3, 4]));
    assert_eq!(cluster.leader(), Some(1));
}

/// Status reports the configuration (voters, outgoing voters, learners), each member's
/// progress with its flow-control state, and the transfer in progress.
#[test]
fn status_reports_configuration_progress_and_transferee() {
    let mut cluster = common::cluster::Cluster::bootstrap(&[1, 2, 3], |_| {});
    cluster.elect(1);
    cluster.add_empty_node(4, |_| {});
    let learner = raft::ConfChange {
        change_type: raft::ConfChangeType::AddLearnerNode,
        node_id: 4,
        context: vec![],
    };
    cluster.node(1).propose_conf_change(vec![], &learner).unwrap();
    cluster.settle(3);
    cluster.isolate(3);
    cluster.node(1).propose(vec![], b"x".to_vec()).unwrap();
    cluster.stabilize();
    cluster.node(1).transfer_leader(3).unwrap();
    let status = cluster.node(1).status();
    assert_eq!(status.id, 1);
    assert_eq!(
        (status.conf_state.voters.clone(), status.conf_state.learners.clone()),
        (vec![1, 2, 3], vec![4])
    );
    assert!(status.conf_state.voters_outgoing.is_empty());
    assert_eq!(status.lead_transferee, 3);
    assert_eq!(status.applied, status.hard_state.commit);
    let last = cluster.node(1).raft.raft_log.last_index();
    let p2 = status.progress[&2];
    assert_eq!(
        (p2.matched, p2.state, p2.paused, p2.inflight_count),
        (last, raft::tracker::ProgressState::Replicate, false, 0)
    );
    let p3 = status.progress[&3];
    assert!(p3.matched < last && p3.inflight_count > 0, "{p3:?}");
    assert!(status.progress[&4].is_learner);
}

/// Raft thesis §10.2.1: a leader may write its log in parallel with replicating it. While its
/// Ready is persisted (a sync in flight), a LightReady hands out its appends of later
/// proposals; the entries the followers committed meanwhile are not applied here before they
/// are durable here too, and are handed out once they are (by the next Ready).
#[test]
fn a_leader_replicates_while_it_persists_and_applies_only_what_is_durable_here() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.elect(1);
    cluster.node(1).propose(vec![], b"a".to_vec()).unwrap();
    let mut rd = cluster.node(1).ready();
    assert!(rd.messages_before_persist);
    let a = rd.entries.last().cloned().expect("a is to be persisted");
    cluster.in_flight.extend(std::mem::take(&mut rd.messages));
    cluster.node(1).store_mut().append(&rd.entries).unwrap();
    // The followers persist and acknowledge `a` while the leader's sync still runs.
    cluster.stabilize_messages_only();
    cluster.handle_ready(2);
    cluster.handle_ready(3);
    cluster.stabilize_messages_only();
    assert_eq!(cluster.node(1).raft.raft_log.committed, a.index, "a quorum has it");
    cluster.node(1).propose(vec![], b"b".to_vec()).unwrap();
    let light = cluster.node(1).light_ready();
    assert!(light.committed_entries.is_empty(), "a is not durable on the leader yet");
    let appends_b = light
        .messages
        .iter()
        .filter(|m| m.msg_type == MessageType::Append && m.entries.iter().any(|e| *e.data == *b"b"))
        .count();
    assert_eq!(appends_b, 2, "b's appends leave before the leader wrote b");
    cluster.node(1).advance(rd);
    let rd = cluster.node(1).ready();
    assert_eq!(rd.committed_entries, vec![a], "durable now: applied");
}

/// While a Ready is persisted, committed entries already durable here are handed out once by
/// a LightReady (and never again by the next Ready), in order, after those of the Ready.
#[test]
fn committed_entries_durable_here_are_handed_out_once_while_a_ready_is_persisted() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.elect(1);
    cluster.stabilize();
    cluster.node(1).propose(vec![], b"a".to_vec()).unwrap();
    // The leader persists `a`; the followers too, their acknowledgements held back.
    cluster.handle_ready(1);
    cluster.stabilize_messages_only();
    cluster.handle_ready(2);
    cluster.handle_ready(3);
    let acks = std::mem::take(&mut cluster.in_flight);
    cluster.node(1).propose(vec![], b"b".to_vec()).unwrap();
    let rd = cluster.node(1).ready();
    assert!(rd.committed_entries.is_empty());
    assert_eq!(rd.entries.len(), 1, "b is being persisted");
    for m in acks {
        cluster.node(1).step(m).unwrap();
    }
    let light = cluster.node(1).light_ready();
    let data: Vec<&[u8]> = light.committed_entries.iter().map(|e| &e.data[..]).collect();
    assert_eq!(data, vec![&b"a"[..]], "a is committed and durable here");
    let a = light.committed_entries[0].index;
    cluster.node(1).advance_apply_to(a);
    assert!(cluster.node(1).light_ready().committed_entries.is_empty(), "handed out once");
    cluster.node(1).advance(rd);
    assert_eq!(cluster.node(1).raft.raft_log.applied, a);
    let rd = cluster.node(1).ready();
    assert!(rd.committed_entries.iter().all(|e| e.index > a), "not again: {rd:?}");
}

/// A leader whose Ready being persisted makes its term and vote durable sends nothing through
/// a LightReady: its appends of that term wait for the sync (see
/// `a_leaders_messages_wait_for_its_term_to_be_durable`). A follower's messages (they may
/// acknowledge what is being persisted) always wait for the next Ready.
#[test]
fn no_message_overtakes_the_term_or_the_entries_it_depends_on() {
    let storage = MemoryStorage::new_with_conf_state(ConfState {
        voters: vec![1],
        learners: vec![2],
        ..ConfState::default()
    });
    let mut node = RawNode::new(&cluster_config(1), storage).unwrap();
    node.campaign().unwrap();
    let rd = node.ready();
    assert!(!rd.messages_before_persist);
    node.store_mut().append(&rd.entries).unwrap();
    node.store_mut().set_hard_state(rd.hard_state.expect("term and vote"));
    let heartbeat_tick = cluster_config(1).heartbeat_tick;
    for _ in 0..heartbeat_tick {
        node.tick();
    }
    assert!(!node.raft.msgs.is_empty(), "a heartbeat to the learner is due");
    assert!(node.light_ready().messages.is_empty(), "the term is not durable yet");
    node.advance(rd);
    let rd = node.ready();
    node.store_mut().append(&rd.entries).unwrap();
    for _ in 0..heartbeat_tick {
        node.tick();
    }
    assert!(!node.light_ready().messages.is_empty(), "durable: messages may run ahead");
    node.advance(rd);

    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.elect(1);
    cluster.node(1).propose(vec![], b"a".to_vec()).unwrap();
    cluster.handle_ready(1);
    cluster.stabilize_messages_only();
    let rd = cluster.node(2).ready();
    assert_eq!(rd.entries.len(), 1, "a is being persisted on the follower");
    cluster.node(1).propose(vec![], b"b".to_vec()).unwrap();
    cluster.handle_ready(1);
    cluster.stabilize_messages_only();
    let light = cluster.node(2).light_ready();
    assert!(light.messages.is_empty(), "its acknowledgement waits: {:?}", light.messages);
    cluster.node(2).advance(rd);
    let rd = cluster.node(2).ready();
    assert!(rd.messages.iter().any(|m| m.msg_type == MessageType::AppendResponse));
}
