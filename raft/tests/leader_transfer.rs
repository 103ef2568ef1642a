//! Leadership transfer (Raft thesis §3.10; after etcd's `TestLeaderTransfer*`).

mod common;

use common::cluster::Cluster;
use common::*;
use raft::{
    ConfChange, ConfChangeType, Error, MemoryStorage, MessageType, Raft, StateType,
    TransferLeaderError,
};

fn transfer(to: u64, via: u64) -> raft::Message {
    new_message(to, via, MessageType::TransferLeader, 0)
}

fn check_transfer_state(r: &Raft<MemoryStorage>, state: StateType, lead: u64) {
    assert_eq!((r.state, r.lead), (state, lead), "node {}", r.id);
    assert_eq!(r.lead_transferee, 0, "node {}: no transfer pending", r.id);
}

fn three_nodes_led_by_1() -> Network {
    let mut n = Network::new(vec![NetPeer::Default, NetPeer::Default, NetPeer::Default]);
    n.send(vec![hup(1)]);
    assert_eq!(n.peer(1).state, StateType::Leader);
    n
}

/// A transfer to an up-to-date follower completes at once (TimeoutNow, then an election
/// the target wins), and leadership can be transferred back.
#[test]
fn transfer_to_up_to_date_node_and_back() {
    let mut n = three_nodes_led_by_1();
    n.send(vec![transfer(2, 1)]);
    check_transfer_state(n.peer(1), StateType::Follower, 2);
    assert_eq!(n.peer(2).state, StateType::Leader);
    n.send(vec![propose(2, b"")]);
    n.send(vec![transfer(1, 2)]);
    check_transfer_state(n.peer(1), StateType::Leader, 1);
}

/// A transfer requested at a follower is forwarded to the leader.
#[test]
fn transfer_requested_at_follower_is_forwarded() {
    let mut n = three_nodes_led_by_1();
    n.send(vec![transfer(2, 2)]);
    check_transfer_state(n.peer(1), StateType::Follower, 2);
    n.send(vec![propose(1, b"")]);
    n.send(vec![transfer(1, 1)]);
    check_transfer_state(n.peer(1), StateType::Leader, 1);
}

/// A transfer succeeds under check-quorum: the target's vote request carries the transfer
/// marker, which voters honour even within their leader lease.
#[test]
fn transfer_with_check_quorum_overrides_leases() {
    let mut n =
        Network::new_with_config(vec![NetPeer::Default, NetPeer::Default, NetPeer::Default], |c| {
            c.check_quorum = true
        });
    for id in 1..=3u64 {
        let r = n.peer_mut(id);
        r.randomized_election_timeout = r.election_timeout + id as usize;
    }
    let f = n.peer_mut(2);
    for _ in 0..f.election_timeout {
        f.tick();
    }
    n.send(vec![hup(1)]);
    assert_eq!(n.peer(1).state, StateType::Leader);
    n.send(vec![transfer(2, 1)]);
    check_transfer_state(n.peer(1), StateType::Follower, 2);
    n.send(vec![propose(2, b"")]);
    n.send(vec![transfer(1, 2)]);
    check_transfer_state(n.peer(1), StateType::Leader, 1);
}

/// A transfer to a follower whose log lags first brings its log up to date, then hands over.
#[test]
fn transfer_to_slow_follower_catches_it_up_first() {
    let mut n = three_nodes_led_by_1();
    n.isolate(3);
    n.send(vec![propose(1, b"")]);
    n.recover();
    assert_eq!(n.peer(1).prs.progress[&3].matched, 1);
    n.send(vec![transfer(3, 1)]);
    check_transfer_state(n.peer(1), StateType::Follower, 3);
    assert_eq!(n.peer(3).state, StateType::Leader);
}

/// A transfer to a follower behind the leader's compacted log sends the snapshot first and
/// hands over once the follower acknowledges it.
#[test]
fn transfer_after_snapshot_waits_for_the_snapshot() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.elect(1);
    cluster.isolate(3);
    for i in 0..3u8 {
        cluster.node(1).propose(vec![], vec![i]).unwrap();
        cluster.stabilize();
    }
    cluster.nodes.get_mut(&1).unwrap().snapshot_and_compact();
    cluster.heal();
    cluster.node(1).transfer_leader(3).unwrap();
    assert_eq!(cluster.node(1).raft.lead_transferee, 3);
    cluster.stabilize();
    assert_eq!(cluster.leader(), Some(3));
    assert_eq!(cluster.node(1).raft.lead_transferee, 0);
    assert_eq!(cluster.nodes[&3].restored.len(), 1, "node 3 restored the snapshot");
    assert_eq!(cluster.nodes[&3].applied, vec![vec![0], vec![1], vec![2]]);
}

/// A transfer to self on the leader changes nothing; RawNode refuses it with a typed error.
#[test]
fn transfer_to_self_is_refused() {
    let mut n = three_nodes_led_by_1();
    n.send(vec![transfer(1, 1)]);
    check_transfer_state(n.peer(1), StateType::Leader, 1);

    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.elect(1);
    let result = cluster.node(1).transfer_leader(1);
    assert!(matches!(
        result,
        Err(Error::TransferLeader(TransferLeaderError::AlreadyLeader { to: 1 }))
    ));
}

/// A transfer to a node outside the configuration, or to a learner, is refused.
#[test]
fn transfer_to_non_member_or_learner_is_refused() {
    let mut n = three_nodes_led_by_1();
    n.send(vec![transfer(4, 1)]);
    check_transfer_state(n.peer(1), StateType::Leader, 1);

    let mut cluster = Cluster::bootstrap(&[1, 2, 3], |_| {});
    cluster.elect(1);
    let result = cluster.node(1).transfer_leader(4);
    assert!(matches!(result, Err(Error::TransferLeader(TransferLeaderError::NotVoter { to: 4 }))));
    let learner =
        ConfChange { change_type: ConfChangeType::AddLearnerNode, node_id: 4, context: vec![] };
    cluster.add_empty_node(4, |_| {});
    cluster.node(1).propose_conf_change(vec![], &learner).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.node(1).raft.prs.conf.learners.len(), 1);
    let result = cluster.node(1).transfer_leader(4);
    assert!(matches!(result, Err(Error::TransferLeader(TransferLeaderError::NotVoter { to: 4 }))));
    // Even stepped directly, the core ignores a transfer to a learner.
    let _ = cluster.node(1).raft.step(transfer(4, 1));
    assert_eq!(cluster.node(1).raft.lead_transferee, 0);
}

/// A transfer that does not complete within an election timeout is abandoned.
#[test]
fn transfer_times_out_after_an_election_timeout() {
    let mut n = three_nodes_led_by_1();
    n.isolate(3);
    n.send(vec![transfer(3, 1)]);
    let lead = n.peer_mut(1);
    assert_eq!(lead.lead_transferee, 3);
    for _ in 0..lead.heartbeat_timeout {
        lead.tick();
    }
    assert_eq!(lead.lead_transferee, 3);
    for _ in 0..lead.election_timeout - lead.heartbeat_timeout {
        lead.tick();
    }
    check_transfer_state(n.peer(1), StateType::Leader, 1);
}

/// While a transfer is pending the leader drops proposals.
#[test]
fn proposals_dropped_during_transfer() {
    let mut n = three_nodes_led_by_1();
    n.isolate(3);
    n.send(vec![transfer(3, 1)]);
    assert_eq!(n.peer(1).lead_transferee, 3);
    let result = n.peer_mut(1).step(propose(1, b"dropped"));
    assert!(matches!(result, Err(Error::ProposalDropped)));
    assert_eq!(n.peer(1).prs.progress[&1].matched, 1, "nothing was appended");
}

/// A vote of a higher term during a transfer ends it: the leader steps down.
#[test]
fn transfer_ends_on_higher_term_vote() {
    let mut n = three_nodes_led_by_1();
    n.isolate(3);
    n.send(vec![transfer(3, 1)]);
    assert_eq!(n.peer(1).lead_transferee, 3);
    n.send(vec![hup(2)]);
    check_transfer_state(n.peer(1), StateType::Follower, 2);
}

/// Removing the target aborts the transfer.
#[test]
fn transfer_aborted_when_target_removed() {
    let mut n = three_nodes_led_by_1();
    n.ignore(MessageType::TimeoutNow);
    n.send(vec![transfer(3, 1)]);
    assert_eq!(n.peer(1).lead_transferee, 3);
    let remove =
        ConfChange { change_type: ConfChangeType::RemoveNode, node_id: 3, context: vec![] };
    n.peer_mut(1).apply_conf_change(&remove.into_v2()).unwrap();
    check_transfer_state(n.peer(1), StateType::Leader, 1);
}

/// Transferring back to the leader while a transfer is pending cancels it.
#[test]
fn transfer_back_to_self_cancels_a_pending_transfer() {
    let mut n = three_nodes_led_by_1();
    n.isolate(3);
    n.send(vec![transfer(3, 1)]);
    assert_eq!(n.peer(1).lead_transferee, 3);
    n.send(vec![transfer(1, 1)]);
    check_transfer_state(n.peer(1), StateType::Leader, 1);

    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.elect(1);
    cluster.isolate(3);
    cluster.node(1).transfer_leader(3).unwrap();
    assert_eq!(cluster.node(1).raft.lead_transferee, 3);
    cluster.node(1).transfer_leader(1).expect("cancelling is allowed");
    assert_eq!(cluster.node(1).raft.lead_transferee, 0);
}

/// A second request to another target restarts the transfer toward it.
#[test]
fn second_transfer_to_another_node_restarts_the_transfer() {
    let mut n = three_nodes_led_by_1();
    n.isolate(3);
    n.send(vec![transfer(3, 1)]);
    assert_eq!(n.peer(1).lead_transferee, 3);
    n.send(vec![transfer(2, 1)]);
    check_transfer_state(n.peer(1), StateType::Follower, 2);
}

/// A second request to the same target is a no-op: it does not extend the timeout.
#[test]
fn second_transfer_to_same_node_does_not_extend_the_timeout() {
    let mut n = three_nodes_led_by_1();
    n.isolate(3);
    n.send(vec![transfer(3, 1)]);
    let lead = n.peer_mut(1);
    for _ in 0..lead.heartbeat_timeout {
        lead.tick();
    }
    n.send(vec![transfer(3, 1)]);
    let lead = n.peer_mut(1);
    for _ in 0..lead.election_timeout - lead.heartbeat_timeout {
        lead.tick();
    }
    check_transfer_state(n.peer(1), StateType::Leader, 1);
}

/// The target of a TimeoutNow campaigns at once, skipping pre-vote: its term goes up by one
/// and it wins, even with pre-vote and check-quorum on.
#[test]
fn timeout_now_campaigns_at_once_without_pre_vote() {
    let mut n =
        Network::new_with_config(vec![NetPeer::Default, NetPeer::Default, NetPeer::Default], |c| {
            c.pre_vote = true;
            c.check_quorum = true;
        });
    n.send(vec![hup(1)]);
    let term = n.peer(1).term;
    n.send(vec![transfer(2, 1)]);
    assert_eq!(n.peer(2).state, StateType::Leader);
    assert_eq!(n.peer(2).term, term + 1);
    // Node 3 heard from leader 1 within its lease, yet voted: the request was marked as a
    // transfer.
    assert_eq!((n.peer(3).lead, n.peer(3).term), (2, term + 1));
}
