//! Linearizable reads without log writes (Raft thesis §6.4; after etcd's `TestReadOnly*`).

mod common;

use common::cluster::Cluster;
use common::*;
use raft::{
    Config, Entry, Error, HardState, MemoryStorage, Message, MessageType, Raft, ReadOnlyOption,
    StateType,
};

fn read_index(from: u64, ctx: &[u8]) -> Message {
    Message {
        entries: vec![Entry { data: ctx.to_vec(), ..Entry::default() }],
        ..new_message(from, from, MessageType::ReadIndex, 0)
    }
}

fn check_reads_through_every_node(mut n: Network, readers: &[u64]) {
    let mut want_index = n.peer(1).raft_log.committed;
    for (i, &reader) in readers.iter().cycle().take(6).enumerate() {
        for _ in 0..10 {
            n.send(vec![propose(1, b"")]);
        }
        want_index += 10;
        let ctx = format!("ctx{i}").into_bytes();
        n.send(vec![read_index(reader, &ctx)]);
        let r = n.peer_mut(reader);
        assert_eq!(r.read_states.len(), 1, "read {i} through node {reader}");
        assert_eq!((r.read_states[0].index, &r.read_states[0].request_ctx), (want_index, &ctx));
        r.read_states.clear();
    }
}

fn leader_1_of_3(configure: impl Fn(&mut Config) + Copy) -> Network {
    let mut n = Network::new_with_config(
        vec![NetPeer::Default, NetPeer::Default, NetPeer::Default],
        configure,
    );
    expire_lease(n.peer_mut(2));
    n.send(vec![hup(1)]);
    assert_eq!(n.peer(1).state, StateType::Leader);
    n
}

/// Safe reads: the leader confirms leadership with a heartbeat round, then answers with its
/// commit index; followers forward reads and receive the answer.
#[test]
fn read_only_safe_through_leader_and_followers() {
    check_reads_through_every_node(leader_1_of_3(|_| {}), &[1, 2, 3]);
}

/// Lease-based reads are answered from the leader's lease, without a heartbeat round.
#[test]
fn read_only_lease_based_answers_without_a_round() {
    let lease = |c: &mut Config| {
        c.read_only_option = ReadOnlyOption::LeaseBased;
        c.check_quorum = true;
    };
    let mut n = leader_1_of_3(lease);
    n.send(vec![propose(1, b"")]);
    let leader = n.peer_mut(1);
    read_messages(leader);
    leader.step(read_index(1, b"lease")).unwrap();
    assert!(read_messages(leader).is_empty(), "no heartbeat round");
    assert_eq!(leader.read_states.len(), 1);
    assert_eq!(leader.read_states[0].index, 2);
    leader.read_states.clear();
    check_reads_through_every_node(n, &[1, 2, 3]);
}

/// A learner reads by forwarding to the leader.
#[test]
fn read_only_through_a_learner() {
    let a = new_test_learner_raft(1, &[1], &[2], 10, 1);
    let b = new_test_learner_raft(2, &[1], &[2], 10, 1);
    let mut n = Network::new(vec![NetPeer::Raft(a), NetPeer::Raft(b)]);
    n.send(vec![hup(1)]);
    assert_eq!(n.peer(1).state, StateType::Leader);
    check_reads_through_every_node(n, &[1, 2]);
}

/// A new leader answers no read until it has committed an entry of its own term
/// (etcd#7331): it holds them and answers them once it has.
#[test]
fn read_only_for_new_leader_waits_for_its_first_commit() {
    // (id, committed, applied, compacted)
    let nodes = [(1, 1, 1, 0), (2, 2, 2, 2), (3, 2, 2, 2)];
    let peers: Vec<NetPeer> = nodes
        .iter()
        .map(|&(id, committed, applied, compacted)| {
            let mut storage = storage_with_peers(&[1, 2, 3]);
            storage.append(&entries_with_terms(&[1, 1])).unwrap();
            storage.set_hard_state(HardState { term: 1, vote: 0, commit: committed });
            if compacted != 0 {
                storage.compact(compacted).unwrap();
            }
            let config = Config { applied, ..new_test_config(id, 10, 1) };
            NetPeer::Raft(new_test_raft_with_config(&config, storage))
        })
        .collect();
    let mut n = Network::new(peers);
    // Keep the new leader from committing an entry of its term.
    n.ignore(MessageType::Append);
    n.send(vec![hup(1)]);
    assert_eq!(n.peer(1).state, StateType::Leader);
    n.send(vec![read_index(1, b"ctx")]);
    assert!(n.peer(1).read_states.is_empty(), "held until the leader commits in its term");
    n.recover();
    let leader = n.peer_mut(1);
    for _ in 0..leader.heartbeat_timeout {
        leader.tick();
    }
    n.send(vec![propose(1, b"")]);
    let leader = n.peer_mut(1);
    assert_eq!(leader.raft_log.committed, 4);
    assert_eq!(leader.raft_log.term(4), Ok(leader.term));
    assert_eq!(leader.read_states.len(), 1, "the held read is answered");
    assert_eq!(
        (leader.read_states[0].index, leader.read_states[0].request_ctx.as_slice()),
        (4, &b"ctx"[..])
    );
    n.send(vec![read_index(1, b"ctx")]);
    let leader = n.peer(1);
    assert_eq!(leader.read_states.len(), 2, "later reads are answered directly");
    assert_eq!(leader.read_states[1].index, 4);
}

fn leader_of_two_with_commit() -> Raft<MemoryStorage> {
    let mut r = new_test_raft(1, &[1, 2], 5, 1, storage_with_peers(&[1, 2]));
    r.become_candidate();
    r.become_leader();
    let last = r.raft_log.last_index();
    r.raft_log.commit_to(last);
    r
}

/// The memory held for a read is freed once it is answered.
#[test]
fn read_only_memory_is_freed_when_answered() {
    let mut r = leader_of_two_with_commit();
    let ctx = b"ctx".to_vec();
    r.step(Message { from: 2, ..read_index(2, &ctx) }).unwrap();
    let msgs = read_messages(&mut r);
    assert_eq!(msgs.len(), 1);
    assert_eq!((msgs[0].msg_type, &msgs[0].context), (MessageType::Heartbeat, &ctx));
    assert_eq!(r.read_only.read_index_queue.len(), 1);
    assert!(r.read_only.pending_read_index.contains_key(&ctx));
    r.step(Message {
        context: ctx.clone(),
        ..new_message(2, 1, MessageType::HeartbeatResponse, 0)
    })
    .unwrap();
    assert!(r.read_only.read_index_queue.is_empty());
    assert!(r.read_only.pending_read_index.is_empty());
}

/// Reads waiting on heartbeat rounds are all answered by the acknowledgement of the latest
/// round, in order; under a steady read load the memory held stays bounded.
#[test]
fn many_reads_answered_by_one_round_and_memory_stays_bounded() {
    let mut r = leader_of_two_with_commit();
    let committed = r.raft_log.committed;
    for batch in 0..1000u32 {
        let ctxs: Vec<Vec<u8>> =
            (0..10u32).map(|i| (batch * 10 + i).to_le_bytes().to_vec()).collect();
        for ctx in &ctxs {
            r.step(read_index(0, ctx)).unwrap();
        }
        read_messages(&mut r);
        let ack = Message {
            context: ctxs.last().unwrap().clone(),
            ..new_message(2, 1, MessageType::HeartbeatResponse, 0)
        };
        r.step(ack).unwrap();
        let answered: Vec<Vec<u8>> = r.read_states.drain(..).map(|rs| rs.request_ctx).collect();
        assert_eq!(answered, ctxs, "batch {batch}: one round answers all, in order");
        assert!(r.read_only.read_index_queue.is_empty());
    }
    assert!(r.read_only.read_index_queue.capacity() <= 16);
    assert_eq!(r.raft_log.committed, committed);
}

/// An acknowledgement of an older round does not answer reads that arrived after it.
#[test]
fn ack_of_an_older_round_does_not_answer_later_reads() {
    let mut r = new_test_raft(1, &[1, 2, 3], 5, 1, storage_with_peers(&[1, 2, 3]));
    r.become_candidate();
    r.become_leader();
    let last = r.raft_log.last_index();
    r.raft_log.commit_to(last);
    r.step(read_index(0, b"first")).unwrap();
    r.step(read_index(0, b"second")).unwrap();
    let first_ack = Message {
        context: b"first".to_vec(),
        ..new_message(2, 1, MessageType::HeartbeatResponse, 0)
    };
    r.step(first_ack).unwrap();
    let answered: Vec<&[u8]> = r.read_states.iter().map(|rs| rs.request_ctx.as_slice()).collect();
    assert_eq!(answered, vec![&b"first"[..]]);
    assert_eq!(r.read_only.pending_read_count(), 1, "the second read still waits");
}

/// A read needs a quorum of acknowledgements: one of two followers is not enough in a
/// five-node cluster.
#[test]
fn read_needs_a_quorum_of_acks() {
    let ids = [1, 2, 3, 4, 5];
    let mut r = new_test_raft(1, &ids, 5, 1, storage_with_peers(&ids));
    r.become_candidate();
    r.become_leader();
    let last = r.raft_log.last_index();
    r.raft_log.commit_to(last);
    r.step(read_index(0, b"q")).unwrap();
    for from in [2, 3] {
        assert!(r.read_states.is_empty());
        let ack = Message {
            context: b"q".to_vec(),
            ..new_message(from, 1, MessageType::HeartbeatResponse, 0)
        };
        r.step(ack).unwrap();
    }
    assert_eq!(r.read_states.len(), 1, "leader + 2 of 4 followers is a quorum of 5");
}

/// Without a leader, a read is refused with a typed error.
#[test]
fn read_without_leader_is_refused() {
    let mut r = new_test_raft(1, &[1, 2, 3], 10, 1, storage_with_peers(&[1, 2, 3]));
    assert!(matches!(r.step(read_index(0, b"x")), Err(Error::ProposalDropped)));
    r.become_candidate();
    assert!(matches!(r.step(read_index(0, b"x")), Err(Error::ProposalDropped)));
}

/// Through RawNode: a follower's read comes back in its Ready with the leader's commit
/// index, which the follower serves once applied.
#[test]
fn raw_node_read_index_through_follower() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.elect(1);
    cluster.node(1).propose(vec![], b"w".to_vec()).unwrap();
    cluster.stabilize();
    cluster.node(3).read_index(b"r1".to_vec()).unwrap();
    cluster.stabilize();
    let follower = &cluster.nodes[&3];
    assert_eq!(follower.read_states.len(), 1);
    let rs = &follower.read_states[0];
    assert_eq!((rs.index, rs.request_ctx.as_slice()), (2, &b"r1"[..]));
    assert!(follower.raw.raft.raft_log.applied >= rs.index);
}
