//! Linearizable reads without log writes (Raft thesis §6.4; after etcd's `TestReadOnly*`).

mod common;

use common::cluster::Cluster;
use common::*;
use std::time::Duration;

use raft::{
    Bytes, Config, Entry, Error, HardState, MemoryStorage, Message, MessageType, Raft,
    ReadOnlyOption, StateType,
};

fn read_index(from: u64, ctx: &[u8]) -> Message {
    Message {
        entries: vec![Entry { data: Bytes::copy_from_slice(ctx), ..Entry::default() }],
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
        assert_eq!(
            (r.read_states[0].index, &r.read_states[0].request_ctx),
            (want_index, &Bytes::copy_from_slice(&ctx))
        );
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

const LEASE: Duration = Duration::from_secs(1);

fn lease(c: &mut Config) {
    c.read_only_option = ReadOnlyOption::LeaseBased;
    c.check_quorum = true;
    c.lease_duration = LEASE;
}

/// Every node's clock at `at`, then a heartbeat round from node 1.
fn heartbeat_round_at(n: &mut Network, at: Duration) {
    for id in 1..=3 {
        n.peer_mut(id).advance_clock(at);
    }
    n.send(vec![new_message(1, 1, MessageType::Beat, 0)]);
}

/// Node 1 reads at `at`: answered from the lease (`Some(expiry)`), or with a heartbeat round
/// (`None`, the round's messages left in the leader's outbox).
fn lease_read_at(n: &mut Network, at: Duration, ctx: &[u8]) -> Option<Option<Duration>> {
    let leader = n.peer_mut(1);
    leader.advance_clock(at);
    read_messages(leader);
    leader.read_states.clear();
    leader.step(read_index(1, ctx)).unwrap();
    let state = leader.read_states.pop();
    if state.is_none() {
        assert!(
            leader.msgs.iter().any(|m| m.msg_type == MessageType::Heartbeat && m.context == ctx),
            "a read not answered from the lease starts a heartbeat round"
        );
    }
    state.map(|s| s.lease_expiry)
}

/// Lease-based reads are answered from the leader's lease, without a heartbeat round.
#[test]
fn read_only_lease_based_answers_without_a_round() {
    let mut n = leader_1_of_3(lease);
    n.send(vec![propose(1, b"")]);
    heartbeat_round_at(&mut n, Duration::from_secs(10));
    let leader = n.peer_mut(1);
    read_messages(leader);
    leader.step(read_index(1, b"lease")).unwrap();
    assert!(read_messages(leader).is_empty(), "no heartbeat round");
    assert_eq!(leader.read_states.len(), 1);
    assert_eq!(leader.read_states[0].index, 2);
    assert_eq!(leader.read_states[0].lease_expiry, Some(Duration::from_secs(10) + LEASE));
    leader.read_states.clear();
    check_reads_through_every_node(n, &[1, 2, 3]);
}

/// Raft thesis §6.4.1: the lease starts when the heartbeat round a quorum acknowledged was
/// sent, not when the acknowledgements arrived or when a tick counted them, and it ends
/// `lease_duration` later on the clock, however many ticks passed.
#[test]
fn a_lease_ends_lease_duration_after_the_heartbeat_a_quorum_acknowledged_was_sent() {
    let mut n = leader_1_of_3(lease);
    n.send(vec![propose(1, b"")]);
    let sent = Duration::from_secs(10);
    heartbeat_round_at(&mut n, sent);
    let expiry = Some(Some(sent + LEASE));
    assert_eq!(lease_read_at(&mut n, sent + LEASE - Duration::from_nanos(1), b"a"), expiry);
    // No tick passed (a paused process, a slow fsync): the clock alone ends the lease.
    assert_eq!(lease_read_at(&mut n, sent + LEASE, b"b"), None);
    // The round that read started renews it from its own sending.
    let round = read_messages(n.peer_mut(1));
    n.send(round);
    assert_eq!(lease_read_at(&mut n, sent + LEASE, b"c"), Some(Some(sent + 2 * LEASE)));
}

/// Only heartbeats that a quorum acknowledged extend the lease: a leader that lost its
/// followers keeps sending heartbeats, and its lease still ends.
#[test]
fn a_lease_counts_only_heartbeats_a_quorum_acknowledged() {
    let mut n = leader_1_of_3(lease);
    n.send(vec![propose(1, b"")]);
    heartbeat_round_at(&mut n, Duration::from_secs(10));
    n.isolate(1);
    heartbeat_round_at(&mut n, Duration::from_secs(10) + LEASE / 2);
    assert_eq!(lease_read_at(&mut n, Duration::from_secs(10) + LEASE, b"a"), None);
    // One follower back is a quorum of three with the leader.
    n.recover();
    n.cut(1, 3);
    heartbeat_round_at(&mut n, Duration::from_secs(20));
    let expiry = Duration::from_secs(20) + LEASE;
    assert_eq!(lease_read_at(&mut n, Duration::from_secs(20), b"b"), Some(Some(expiry)));
}

/// A leader that sent `TimeoutNow` may be succeeded at once (the transferee's campaign
/// overrides the voters' leases): it answers no read from its lease for the rest of its term,
/// even after the transfer is aborted.
#[test]
fn a_leader_that_sent_timeout_now_answers_no_read_from_its_lease() {
    let mut n = leader_1_of_3(lease);
    n.send(vec![propose(1, b"")]);
    heartbeat_round_at(&mut n, Duration::from_secs(10));
    n.isolate(2);
    n.send(vec![new_message(2, 1, MessageType::TransferLeader, 0)]);
    assert_eq!(n.peer(1).lead_transferee, 2);
    n.recover();
    n.cut(1, 2);
    heartbeat_round_at(&mut n, Duration::from_secs(11));
    assert_eq!(lease_read_at(&mut n, Duration::from_secs(11), b"a"), None);
    n.peer_mut(1).abort_leader_transfer();
    heartbeat_round_at(&mut n, Duration::from_secs(12));
    assert_eq!(lease_read_at(&mut n, Duration::from_secs(12), b"b"), None);
}

/// A read a follower forwards is confirmed with a heartbeat round even while the leader's
/// lease holds: its answer reaches the follower after the lease could have ended.
#[test]
fn a_forwarded_read_is_confirmed_by_a_round_even_in_lease() {
    let mut n = leader_1_of_3(lease);
    n.send(vec![propose(1, b"")]);
    heartbeat_round_at(&mut n, Duration::from_secs(10));
    assert!(n.peer(1).lease_expiry().is_some());
    read_messages(n.peer_mut(1));
    let leader = n.peer_mut(1);
    leader.step(read_index(2, b"f")).unwrap();
    assert!(
        leader.msgs.iter().any(|m| m.msg_type == MessageType::Heartbeat && m.context == b"f"[..]),
        "a round for the forwarded read"
    );
    assert!(!leader.msgs.iter().any(|m| m.msg_type == MessageType::ReadIndexResp));
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
        (leader.read_states[0].index, leader.read_states[0].request_ctx.as_ref()),
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
    let ctx = Bytes::from_static(b"ctx");
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
            context: Bytes::copy_from_slice(ctxs.last().unwrap()),
            ..new_message(2, 1, MessageType::HeartbeatResponse, 0)
        };
        r.step(ack).unwrap();
        let answered: Vec<Vec<u8>> =
            r.read_states.drain(..).map(|rs| rs.request_ctx.to_vec()).collect();
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
        context: Bytes::from_static(b"first"),
        ..new_message(2, 1, MessageType::HeartbeatResponse, 0)
    };
    r.step(first_ack).unwrap();
    let answered: Vec<&[u8]> = r.read_states.iter().map(|rs| rs.request_ctx.as_ref()).collect();
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
            context: Bytes::from_static(b"q"),
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
    assert_eq!((rs.index, rs.request_ctx.as_ref()), (2, &b"r1"[..]));
    assert!(follower.raw.raft.raft_log.applied >= rs.index);
}

/// A voter restarted while the leader's lease holds must not help elect another leader before
/// that lease could have ended: it acknowledged the heartbeat the lease started from, and
/// after a restart it no longer knows that it did (its leader is unknown, so the check-quorum
/// rule that refuses votes within a leader's lease does not apply).
#[test]
fn a_voter_restarted_within_the_leaders_lease_elects_no_other_leader_before_it_ends() {
    let mut n = leader_1_of_3(lease);
    n.send(vec![propose(1, b"")]);
    let sent = Duration::from_secs(10);
    heartbeat_round_at(&mut n, sent);
    // Node 2 restarts from its durable state.
    let old = n.peer(2);
    let mut store = old.raft_log.store.clone();
    store.set_hard_state(old.hard_state());
    let mut config = new_test_config(2, 10, 1);
    lease(&mut config);
    n.peers.insert(2, Raft::new(&config, store).expect("restarts"));
    // Node 3, cut off from the leader, campaigns and asks node 2.
    n.cut(1, 3);
    expire_lease(n.peer_mut(3));
    n.send(vec![hup(3)]);
    let leader = n.peer_mut(1);
    leader.advance_clock(sent + LEASE - Duration::from_millis(1));
    leader.step(read_index(1, b"in lease")).unwrap();
    let answered_from_lease = leader.read_states.pop().is_some();
    assert!(
        !(answered_from_lease && n.peer(3).state == StateType::Leader),
        "node 3 leads term {} while node 1 still answers reads from its lease",
        n.peer(3).term
    );
}

/// Raft thesis §6.4, for a single voter: restarted, its log ends with an entry it synced,
/// committed and acknowledged before the restart, which its recovered commit index (the last
/// one written, before it) does not cover. A read must wait for an entry of the new term to
/// commit, which commits that entry too; answered at the recovered commit index, it would miss
/// the acknowledged write (found by the whole-node simulator, `--single-voter`).
#[test]
fn a_restarted_single_voter_answers_reads_only_once_its_term_committed_an_entry() {
    let mut storage = storage_with_peers(&[1]);
    storage.append(&entries_with_terms(&[1, 1, 1])).unwrap();
    storage.set_hard_state(HardState { term: 1, vote: 1, commit: 2 });
    let mut r = new_test_raft(1, &[1], 10, 1, storage);
    r.step(hup(1)).unwrap();
    assert_eq!(r.state, StateType::Leader);
    // The new term's entry is appended, not yet synced: nothing of this term is committed.
    assert_eq!(r.raft_log.committed, 2);
    r.step(read_index(1, b"ctx")).unwrap();
    assert!(r.read_states.is_empty(), "answered at {:?}", r.read_states);
    persist(&mut r);
    assert_eq!(r.raft_log.committed, 4);
    assert_eq!(r.read_states.len(), 1);
    assert_eq!((r.read_states[0].index, &r.read_states[0].request_ctx[..]), (4, &b"ctx"[..]));
}
