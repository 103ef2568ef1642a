//! Learners and membership changes: single-step and joint consensus (Raft thesis §4.3;
//! after etcd's learner and `confchange` tests).

mod common;

use common::cluster::{cluster_config, Cluster, Node};
use common::*;
use raft::{
    ConfChange, ConfChangeError, ConfChangeSingle, ConfChangeTransition, ConfChangeType,
    ConfChangeV2, ConfState, Error, MemoryStorage, Message, MessageType, Snapshot,
    SnapshotMetadata, StateType,
};
use ConfChangeType::{AddLearnerNode, AddNode, RemoveNode};

fn cc(change_type: ConfChangeType, node_id: u64) -> ConfChange {
    ConfChange { change_type, node_id, context: vec![] }
}

fn cc_v2(transition: ConfChangeTransition, changes: &[(ConfChangeType, u64)]) -> ConfChangeV2 {
    ConfChangeV2 {
        transition,
        changes: changes
            .iter()
            .map(|&(change_type, node_id)| ConfChangeSingle { change_type, node_id })
            .collect(),
        context: vec![],
    }
}

fn conf_of(cluster: &mut Cluster, id: u64) -> ConfState {
    cluster.node(id).raft.prs.conf_state()
}

/// A learner never campaigns, however long it hears nothing.
#[test]
fn learner_never_campaigns() {
    let mut n2 = new_test_learner_raft(2, &[1], &[2], 10, 1);
    n2.become_follower(1, 0);
    for _ in 0..n2.election_timeout * 5 {
        n2.tick();
    }
    assert_eq!(n2.state, StateType::Follower);
    assert!(n2.msgs.is_empty());
    assert!(n2.is_learner);
}

/// A learner is promoted to voter by AddNode, after which it can campaign and win.
#[test]
fn learner_promotion_lets_it_campaign() {
    let n1 = new_test_learner_raft(1, &[1], &[2], 10, 1);
    let n2 = new_test_learner_raft(2, &[1], &[2], 10, 1);
    let mut n = Network::new(vec![NetPeer::Raft(n1), NetPeer::Raft(n2)]);
    n.send(vec![hup(1)]);
    assert_eq!((n.peer(1).state, n.peer(2).state), (StateType::Leader, StateType::Follower));
    n.send(vec![new_message(1, 1, MessageType::Beat, 0)]);
    for id in [1, 2] {
        n.peer_mut(id).apply_conf_change(&cc(AddNode, 2).into_v2()).unwrap();
    }
    assert!(!n.peer(2).is_learner);
    let n2 = n.peer_mut(2);
    n2.randomized_election_timeout = n2.election_timeout;
    for _ in 0..n2.election_timeout {
        n2.tick();
    }
    let msgs = read_messages(n.peer_mut(2));
    n.send(msgs);
    assert_eq!((n.peer(1).state, n.peer(2).state), (StateType::Follower, StateType::Leader));
}

/// A candidate asks only voters for votes, and a learner's vote never counts.
#[test]
fn learner_vote_never_counts() {
    let mut r = new_test_learner_raft(1, &[1, 2, 3], &[4], 10, 1);
    r.step(hup(1)).unwrap();
    let asked: Vec<u64> = read_messages(&mut r).iter().map(|m| m.to).collect();
    assert_eq!(asked, vec![2, 3], "no vote request to the learner");
    let term = r.term;
    r.step(new_message(4, 1, MessageType::RequestVoteResponse, term)).unwrap();
    assert_eq!(r.state, StateType::Candidate, "the learner's grant does not make a quorum");
    r.step(new_message(2, 1, MessageType::RequestVoteResponse, term)).unwrap();
    assert_eq!(r.state, StateType::Leader);
}

/// A learner's acknowledgements never count toward a commit.
#[test]
fn learner_ack_never_commits() {
    let mut r = new_test_learner_raft(1, &[1, 2, 3], &[4], 10, 1);
    r.become_candidate();
    r.become_leader();
    read_messages(&mut r);
    r.step(propose(1, b"x")).unwrap();
    persist(&mut r);
    let last = r.raft_log.last_index();
    r.step(Message { index: last, ..new_message(4, 1, MessageType::AppendResponse, r.term) })
        .unwrap();
    assert_eq!(r.raft_log.committed, 0, "the learner's ack is not a quorum");
    r.step(Message { index: last, ..new_message(2, 1, MessageType::AppendResponse, r.term) })
        .unwrap();
    assert_eq!(r.raft_log.committed, last);
}

/// Check-quorum counts voters only: an active learner does not keep a leader in office.
#[test]
fn learner_activity_does_not_satisfy_check_quorum() {
    let mut r = new_test_learner_raft(1, &[1, 2, 3], &[4], 5, 1);
    r.check_quorum = true;
    r.become_candidate();
    r.become_leader();
    for _ in 0..=r.election_timeout {
        let term = r.term;
        r.step(new_message(4, 1, MessageType::HeartbeatResponse, term)).unwrap();
        r.tick();
    }
    assert_eq!(r.state, StateType::Follower);
}

/// A learner receives and applies the log.
#[test]
fn learner_receives_the_log() {
    let mut cluster = Cluster::bootstrap(&[1, 2, 3], |_| {});
    cluster.elect(1);
    cluster.add_empty_node(4, |_| {});
    cluster.node(1).propose_conf_change(vec![], &cc(AddLearnerNode, 4)).unwrap();
    cluster.settle(3);
    for i in 0..3u8 {
        cluster.node(1).propose(vec![], vec![i]).unwrap();
        cluster.stabilize();
    }
    assert_eq!(cluster.nodes[&4].applied, vec![vec![0], vec![1], vec![2]]);
    assert!(cluster.node(4).raft.is_learner);
    assert_eq!(conf_of(&mut cluster, 4).learners, vec![4]);
}

/// A learner restores a snapshot that names it a learner, and keeps its role.
#[test]
fn learner_restores_from_snapshot() {
    let snapshot = Snapshot {
        data: vec![],
        metadata: SnapshotMetadata {
            index: 11,
            term: 11,
            conf_state: ConfState { voters: vec![1, 2], learners: vec![3], ..ConfState::default() },
        },
    };
    let mut r = new_test_learner_raft(3, &[1, 2], &[3], 8, 2);
    assert!(r.restore(snapshot.clone()));
    assert_eq!(r.raft_log.last_index(), 11);
    assert_eq!(r.raft_log.term(11), Ok(11));
    assert_eq!(r.prs.conf_state().voters, vec![1, 2]);
    assert_eq!(r.prs.conf_state().learners, vec![3]);
    assert!(r.is_learner);
    assert!(!r.prs.progress[&1].is_learner && r.prs.progress[&3].is_learner);
    assert!(!r.restore(snapshot), "a snapshot already restored is stale");
}

/// Voters and learners added and removed one at a time; each change reaches every member.
#[test]
fn add_and_remove_voters_and_learners_one_at_a_time() {
    let mut cluster = Cluster::bootstrap(&[1, 2, 3], |_| {});
    cluster.elect(1);
    for id in [4, 5] {
        cluster.add_empty_node(id, |_| {});
    }
    let steps: Vec<(ConfChange, Vec<u64>, Vec<u64>)> = vec![
        (cc(AddNode, 4), vec![1, 2, 3, 4], vec![]),
        (cc(AddLearnerNode, 5), vec![1, 2, 3, 4], vec![5]),
        (cc(AddNode, 5), vec![1, 2, 3, 4, 5], vec![]),
        (cc(RemoveNode, 2), vec![1, 3, 4, 5], vec![]),
        (cc(AddLearnerNode, 3), vec![1, 4, 5], vec![3]),
        (cc(RemoveNode, 3), vec![1, 4, 5], vec![]),
    ];
    for (change, voters, learners) in steps {
        cluster.node(1).propose_conf_change(vec![], &change).unwrap();
        cluster.settle(3);
        let members: Vec<u64> = voters.iter().chain(&learners).copied().collect();
        for id in members {
            let cs = conf_of(&mut cluster, id);
            assert_eq!(
                (cs.voters, cs.learners),
                (voters.clone(), learners.clone()),
                "node {id} after {change:?}"
            );
        }
        cluster.node(1).propose(vec![], format!("{change:?}").into_bytes()).unwrap();
        cluster.settle(1);
    }
    // The final voters {1, 4, 5} still commit.
    let last = cluster.nodes[&1].applied.last().cloned();
    assert_eq!(cluster.nodes[&5].applied.last().cloned(), last);
    assert_eq!(cluster.leader(), Some(1));
}

fn joint_change_round_trip(transition: ConfChangeTransition) {
    let mut cluster = Cluster::bootstrap(&[1, 2, 3], |_| {});
    cluster.elect(1);
    for id in [4, 5] {
        cluster.add_empty_node(id, |_| {});
    }
    let change = cc_v2(transition, &[(AddNode, 4), (AddNode, 5), (RemoveNode, 3)]);
    cluster.node(1).propose_conf_change(vec![], &change).unwrap();
    cluster.settle(3);
    if transition == ConfChangeTransition::Explicit {
        let cs = conf_of(&mut cluster, 1);
        assert_eq!(
            (cs.voters, cs.voters_outgoing),
            (vec![1, 2, 4, 5], vec![1, 2, 3]),
            "still joint"
        );
        assert!(!cs.auto_leave);
        cluster.node(1).propose_conf_change(vec![], &ConfChangeV2::leave_joint()).unwrap();
        cluster.settle(3);
    }
    for id in [1, 2, 4, 5] {
        let cs = conf_of(&mut cluster, id);
        assert_eq!(cs.voters, vec![1, 2, 4, 5], "{transition:?}: node {id}");
        assert!(
            cs.voters_outgoing.is_empty() && !cs.auto_leave,
            "{transition:?}: node {id} left joint"
        );
    }
    cluster.node(1).propose(vec![], b"after".to_vec()).unwrap();
    cluster.settle(1);
    assert_eq!(cluster.nodes[&5].applied, vec![b"after".to_vec()]);
}

/// Several changes at once go through a joint configuration, left automatically: the leader
/// proposes the empty leave entry itself.
#[test]
fn joint_change_auto_leaves() {
    joint_change_round_trip(ConfChangeTransition::Auto);
}

/// Implicit transition: joint, left automatically.
#[test]
fn joint_change_implicit_leaves_automatically() {
    joint_change_round_trip(ConfChangeTransition::Implicit);
}

/// Explicit transition: joint until the application proposes the leave.
#[test]
fn joint_change_explicit_waits_for_the_leave() {
    joint_change_round_trip(ConfChangeTransition::Explicit);
}

/// A single change with the Implicit transition still goes through a joint configuration.
#[test]
fn single_change_with_implicit_transition_is_joint() {
    let change = cc_v2(ConfChangeTransition::Implicit, &[(AddNode, 4)]);
    let mut r = new_test_raft(1, &[1, 2, 3], 10, 1, storage_with_peers(&[1, 2, 3]));
    let cs = r.apply_conf_change(&change).unwrap();
    assert_eq!(
        (cs.voters, cs.voters_outgoing, cs.auto_leave),
        (vec![1, 2, 3, 4], vec![1, 2, 3], true)
    );
}

/// Commit and election both need a majority of each half of a joint configuration.
#[test]
fn joint_quorum_needs_both_halves() {
    let joint =
        ConfState { voters: vec![1, 2, 3], voters_outgoing: vec![1, 4, 5], ..ConfState::default() };
    let mut r = new_test_raft(1, &[], 10, 1, MemoryStorage::new_with_conf_state(joint.clone()));
    r.step(hup(1)).unwrap();
    let term = r.term;
    for from in [2, 3] {
        r.step(new_message(from, 1, MessageType::RequestVoteResponse, term)).unwrap();
    }
    assert_eq!(r.state, StateType::Candidate, "the incoming half alone is not enough");
    r.step(new_message(4, 1, MessageType::RequestVoteResponse, term)).unwrap();
    assert_eq!(r.state, StateType::Leader);
    read_messages(&mut r);
    r.step(propose(1, b"x")).unwrap();
    persist(&mut r);
    let last = r.raft_log.last_index();
    for from in [2, 3] {
        r.step(Message { index: last, ..new_message(from, 1, MessageType::AppendResponse, term) })
            .unwrap();
    }
    assert_eq!(r.raft_log.committed, 0, "the outgoing half has not acknowledged");
    r.step(Message { index: last, ..new_message(5, 1, MessageType::AppendResponse, term) })
        .unwrap();
    assert_eq!(r.raft_log.committed, last);
}

/// The leader is replaced through a joint configuration: it keeps leading while joint, and
/// steps down when the configuration without it takes effect; the rest elect a new leader.
#[test]
fn replace_the_leader_through_a_joint_configuration() {
    let mut cluster = Cluster::bootstrap(&[1, 2, 3], |_| {});
    cluster.elect(1);
    cluster.add_empty_node(4, |_| {});
    cluster.node(1).propose(vec![], b"before".to_vec()).unwrap();
    cluster.stabilize();
    let change = cc_v2(ConfChangeTransition::Auto, &[(RemoveNode, 1), (AddNode, 4)]);
    cluster.node(1).propose_conf_change(vec![], &change).unwrap();
    cluster.settle(40);
    assert_ne!(cluster.node(1).raft.state, StateType::Leader, "the removed leader stepped down");
    let leader = cluster.leader().expect("a new leader");
    assert!([2, 3, 4].contains(&leader));
    assert_eq!(conf_of(&mut cluster, leader).voters, vec![2, 3, 4]);
    cluster.node(leader).propose(vec![], b"after".to_vec()).unwrap();
    cluster.settle(1);
    for id in [2, 3, 4] {
        assert_eq!(
            cluster.nodes[&id].applied,
            vec![b"before".to_vec(), b"after".to_vec()],
            "node {id}"
        );
    }
}

/// Only one change may be pending: a second proposed before the first is applied becomes an
/// empty entry in the log rather than being lost silently.
#[test]
fn second_pending_conf_change_becomes_an_empty_entry() {
    let mut r = new_test_raft(1, &[1, 2], 10, 1, storage_with_peers(&[1, 2]));
    r.become_candidate();
    r.become_leader();
    let conf_entry = |node_id| Message {
        entries: vec![raft::Entry {
            entry_type: raft::EntryType::ConfChange,
            data: cc(AddNode, node_id).encode().into(),
            ..raft::Entry::default()
        }],
        ..propose(1, b"")
    };
    r.step(conf_entry(3)).unwrap();
    r.step(conf_entry(4)).unwrap();
    let entries = r.raft_log.all_entries();
    let n = entries.len();
    assert_eq!(entries[n - 2].entry_type, raft::EntryType::ConfChange, "the first goes in");
    let second = &entries[n - 1];
    assert_eq!((second.entry_type, second.data.is_empty()), (raft::EntryType::Normal, true));
    assert_eq!(r.pending_conf_index, n as u64 - 1);
    // Once the first is applied, the next change is accepted.
    let last = r.raft_log.last_index();
    r.raft_log.commit_to(last);
    r.raft_log.applied_to(last);
    r.step(conf_entry(4)).unwrap();
    let third = r.raft_log.all_entries().pop().unwrap();
    assert_eq!(third.entry_type, raft::EntryType::ConfChange);
    assert_eq!(r.pending_conf_index, r.raft_log.last_index());
}

/// A leader that applies its own removal steps down, and the others elect a new leader.
#[test]
fn removed_leader_steps_down() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.elect(1);
    cluster.node(1).propose_conf_change(vec![], &cc(RemoveNode, 1)).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.node(1).raft.state, StateType::Follower);
    assert!(matches!(
        cluster.node(1).propose(vec![], b"x".to_vec()),
        Err(Error::ProposalDropped) | Ok(())
    ));
    cluster.settle(40);
    let leader = cluster.leader().expect("2 or 3 leads");
    assert!([2, 3].contains(&leader));
    assert_eq!(conf_of(&mut cluster, leader).voters, vec![2, 3]);
}

/// A new leader that inherits a joint configuration with automatic leave proposes the leave
/// itself (etcd#12136).
#[test]
fn new_leader_leaves_an_inherited_auto_leave_joint_configuration() {
    let joint = ConfState {
        voters: vec![1, 2, 3],
        voters_outgoing: vec![1, 2],
        auto_leave: true,
        ..ConfState::default()
    };
    let mut cluster = Cluster::new(&[], |_| {});
    for id in [1, 2, 3] {
        let storage = MemoryStorage::new_with_conf_state(joint.clone());
        cluster.nodes.insert(id, Node::new(&cluster_config(id), storage));
    }
    cluster.elect(2);
    cluster.settle(2);
    for id in [1, 2, 3] {
        let cs = conf_of(&mut cluster, id);
        assert_eq!(
            (cs.voters.clone(), cs.voters_outgoing.clone()),
            (vec![1, 2, 3], vec![]),
            "node {id}: {cs:?}"
        );
    }
}

/// Malformed changes are refused at apply time with a typed error, identically on every
/// node, and leave the configuration unchanged.
#[test]
fn malformed_changes_are_refused_at_apply_time() {
    let mut r = new_test_raft(1, &[1, 2, 3], 10, 1, storage_with_peers(&[1, 2, 3]));
    let before = r.prs.conf_state();
    let cases = [
        (cc(RemoveNode, 9).into_v2(), ConfChangeError::RemoveNonMember { id: 9 }),
        (cc(AddNode, 2).into_v2(), ConfChangeError::AlreadyVoter { id: 2 }),
        (ConfChangeV2::leave_joint(), ConfChangeError::NotJoint),
        (
            cc_v2(ConfChangeTransition::Auto, &[(RemoveNode, 1), (RemoveNode, 2), (RemoveNode, 3)]),
            ConfChangeError::NoVoters,
        ),
    ];
    for (change, want) in cases {
        match r.apply_conf_change(&change) {
            Err(Error::ConfChange(got)) => assert_eq!(got, want, "{change:?}"),
            other => panic!("{change:?}: {other:?}"),
        }
        assert_eq!(r.prs.conf_state(), before);
    }

    // Through the log: every node refuses the same change and the cluster carries on.
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.elect(1);
    cluster.node(1).propose_conf_change(vec![], &cc(RemoveNode, 9)).unwrap();
    cluster.node(1).propose(vec![], b"x".to_vec()).unwrap();
    cluster.settle(2);
    for id in [1, 2, 3] {
        assert_eq!(conf_of(&mut cluster, id).voters, vec![1, 2, 3]);
        assert_eq!(cluster.nodes[&id].applied, vec![b"x".to_vec()]);
    }
}

/// Check-quorum in a joint configuration needs both halves active: a leader that hears only
/// from the incoming half steps down.
#[test]
fn check_quorum_in_joint_configuration_needs_both_halves() {
    let joint =
        ConfState { voters: vec![1, 2, 3], voters_outgoing: vec![1, 4, 5], ..ConfState::default() };
    let mut r = new_test_raft(1, &[], 5, 1, MemoryStorage::new_with_conf_state(joint));
    r.check_quorum = true;
    r.become_candidate();
    r.become_leader();
    for _ in 0..=r.election_timeout {
        let term = r.term;
        for from in [2, 3] {
            r.step(new_message(from, 1, MessageType::HeartbeatResponse, term)).unwrap();
        }
        r.tick();
    }
    assert_eq!(r.state, StateType::Follower);
}

/// A learner asked for its vote grants it (the candidate's newer configuration may already
/// count it as a voter, etcd's TestLearnerCanVote), but in a configuration where it is a
/// learner its vote is never asked for and never counted (see `learner_vote_never_counts`).
#[test]
fn learner_answers_a_vote_request_from_a_newer_configuration() {
    let mut learner = new_test_learner_raft(2, &[1], &[2], 10, 1);
    learner.become_follower(1, 0);
    let m = Message { log_term: 11, index: 11, ..new_message(1, 2, MessageType::RequestVote, 2) };
    learner.step(m).unwrap();
    let msgs = read_messages(&mut learner);
    assert_eq!(msgs.len(), 1);
    assert_eq!((msgs[0].msg_type, msgs[0].reject), (MessageType::RequestVoteResponse, false));
}
