//! Snapshots and compaction: sending, restoring, failure and retry (Raft §7; after etcd's
//! snapshot tests).

mod common;

use common::cluster::Cluster;
use common::*;
use raft::tracker::ProgressState;
use raft::{
    ConfState, MemoryStorage, Message, MessageType, Raft, Snapshot, SnapshotMetadata, StateType,
    Storage,
};

fn snap(index: u64, term: u64, voters: &[u64]) -> Snapshot {
    Snapshot {
        data: vec![],
        metadata: SnapshotMetadata {
            index,
            term,
            conf_state: ConfState { voters: voters.to_vec(), ..ConfState::default() },
        },
    }
}

/// A leader (of voters 1 and 2) whose log starts with the snapshot at index 11, term 11.
fn leader_after_snapshot() -> Raft<MemoryStorage> {
    let mut r = new_test_raft(1, &[1, 2], 10, 1, storage_with_peers(&[1, 2]));
    assert!(r.restore(snap(11, 11, &[1, 2])));
    r.become_candidate();
    r.become_leader();
    read_messages(&mut r);
    r
}

/// A follower restores a snapshot: its log is reset to the snapshot and its configuration
/// comes from the snapshot's.
#[test]
fn restore_resets_log_and_configuration() {
    let mut r = new_test_raft(1, &[1, 2], 10, 1, storage_with_peers(&[1, 2]));
    assert!(r.restore(snap(11, 11, &[1, 2, 3])));
    assert_eq!((r.raft_log.last_index(), r.raft_log.term(11)), (11, Ok(11)));
    assert_eq!(r.raft_log.committed, 11);
    assert_eq!(r.prs.conf_state().voters, vec![1, 2, 3]);
    assert!(r.raft_log.has_pending_snapshot());
    assert!(!r.promotable(), "no campaign until the snapshot is persisted");
    assert!(!r.restore(snap(11, 11, &[1, 2, 3])), "the same snapshot again is stale");
}

/// A stale snapshot (at or below the commit index) is ignored; one the log already matches
/// only moves the commit index.
#[test]
fn restore_ignores_stale_snapshots() {
    let mut r = new_test_raft(1, &[1, 2], 10, 1, storage_with_peers(&[1, 2]));
    r.raft_log.append(&entries_with_terms(&[1, 1, 1]));
    r.raft_log.commit_to(1);
    assert!(!r.restore(snap(1, 1, &[1, 2])));
    assert_eq!(r.raft_log.committed, 1);
    assert!(!r.restore(snap(2, 1, &[1, 2])), "matched by the log: fast-forward only");
    assert_eq!(r.raft_log.committed, 2);
    assert!(!r.raft_log.has_pending_snapshot());
}

/// A snapshot whose configuration lacks this (configured) node is refused.
#[test]
fn restore_refuses_a_configuration_without_this_node() {
    let mut r = new_test_raft(3, &[1, 2, 3], 10, 1, storage_with_peers(&[1, 2, 3]));
    assert!(!r.restore(snap(11, 11, &[1, 2])));
    assert_eq!(r.raft_log.last_index(), 0);
}

/// A follower receiving a Snapshot message restores it and acknowledges its index.
#[test]
fn restore_from_snapshot_message() {
    let mut r = new_test_raft(2, &[1, 2], 10, 1, storage_with_peers(&[1, 2]));
    let m = Message {
        snapshot: Some(Box::new(snap(11, 11, &[1, 2]))),
        ..new_message(1, 2, MessageType::Snapshot, 2)
    };
    r.step(m).unwrap();
    assert_eq!(r.lead, 1);
    let msgs = read_messages(&mut r);
    assert_eq!(
        (msgs[0].msg_type, msgs[0].index, msgs[0].reject),
        (MessageType::AppendResponse, 11, false)
    );
}

/// The leader sends a snapshot to a follower that needs compacted entries, and records it
/// as pending; replication to it pauses meanwhile.
#[test]
fn leader_sends_snapshot_to_follower_behind_compaction() {
    let mut r = leader_after_snapshot();
    let first = r.raft_log.first_index();
    r.prs.progress.get_mut(&2).unwrap().next_idx = first;
    r.prs.progress.get_mut(&2).unwrap().recent_active = true;
    r.step(Message {
        index: first - 1,
        reject: true,
        ..new_message(2, 1, MessageType::AppendResponse, 0)
    })
    .unwrap();
    let msgs = read_messages(&mut r);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].msg_type, MessageType::Snapshot);
    assert_eq!(msgs[0].snapshot.as_ref().map(|s| s.metadata.index), Some(11));
    let pr = &r.prs.progress[&2];
    assert_eq!((pr.state, pr.pending_snapshot), (ProgressState::Snapshot, 11));
    r.step(propose(1, b"paused")).unwrap();
    assert!(read_messages(&mut r).is_empty(), "no appends while the snapshot is pending");
}

/// No snapshot goes to a follower that has not been heard from recently.
#[test]
fn no_snapshot_to_inactive_follower() {
    let mut r = leader_after_snapshot();
    let first = r.raft_log.first_index();
    let pr = r.prs.progress.get_mut(&2).unwrap();
    pr.next_idx = first - 1;
    pr.recent_active = false;
    r.step(propose(1, b"x")).unwrap();
    assert!(read_messages(&mut r).is_empty());
}

/// A failed snapshot moves the follower back to probing from its match, paused until the
/// next heartbeat, after which the snapshot is sent again (etcd#10225).
#[test]
fn snapshot_failure_is_reported_and_retried() {
    let mut r = leader_after_snapshot();
    let pr = r.prs.progress.get_mut(&2).unwrap();
    pr.next_idx = 1;
    pr.recent_active = true;
    pr.become_snapshot(11);
    r.step(Message { reject: true, ..new_message(2, 1, MessageType::SnapshotStatus, 0) }).unwrap();
    let pr = &r.prs.progress[&2];
    assert_eq!((pr.state, pr.pending_snapshot, pr.next_idx), (ProgressState::Probe, 0, 1));
    assert!(pr.probe_sent, "paused until the next heartbeat");
    r.step(new_message(2, 1, MessageType::HeartbeatResponse, 0)).unwrap();
    let msgs = read_messages(&mut r);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].msg_type, MessageType::Snapshot, "the snapshot is sent again");
}

/// A delivered snapshot moves the follower to probing just past it.
#[test]
fn snapshot_success_probes_past_the_snapshot() {
    let mut r = leader_after_snapshot();
    let pr = r.prs.progress.get_mut(&2).unwrap();
    pr.next_idx = 1;
    pr.become_snapshot(11);
    r.step(new_message(2, 1, MessageType::SnapshotStatus, 0)).unwrap();
    let pr = &r.prs.progress[&2];
    assert_eq!((pr.state, pr.pending_snapshot, pr.next_idx), (ProgressState::Probe, 0, 12));
    assert!(pr.probe_sent);
}

/// An acknowledgement at or past the pending snapshot ends the snapshot state: replication
/// resumes at once.
#[test]
fn ack_past_pending_snapshot_resumes_replication() {
    let mut r = leader_after_snapshot();
    let pr = r.prs.progress.get_mut(&2).unwrap();
    pr.next_idx = 1;
    pr.become_snapshot(11);
    r.step(Message { index: 11, ..new_message(2, 1, MessageType::AppendResponse, 0) }).unwrap();
    let pr = &r.prs.progress[&2];
    assert_eq!((pr.state, pr.pending_snapshot), (ProgressState::Replicate, 0));
    // The leader's no-op at 12 went out optimistically.
    assert_eq!((pr.next_idx, pr.ins.count()), (13, 1));
}

/// A storage still building its snapshot makes the leader wait instead of failing.
#[test]
fn snapshot_temporarily_unavailable_is_retried_later() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.elect(1);
    cluster.isolate(3);
    for i in 0..5u8 {
        cluster.node(1).propose(vec![], vec![i]).unwrap();
        cluster.stabilize();
    }
    cluster.nodes.get_mut(&1).unwrap().snapshot_and_compact();
    cluster.node(1).store_mut().trigger_snapshot_unavailable();
    cluster.heal();
    cluster.settle(3);
    assert!(cluster.nodes[&3].restored.is_empty());
    assert_ne!(cluster.node(1).raft.prs.progress[&3].state, ProgressState::Snapshot);
    cluster.node(1).store_mut().clear_snapshot_unavailable();
    cluster.settle(3);
    assert_eq!(cluster.nodes[&3].restored.len(), 1);
    assert_eq!(cluster.nodes[&3].applied.len(), 5);
}

/// A slow node behind compaction is restored from a snapshot, then caught up by appends; a
/// lost snapshot is reported by the transport and sent again.
#[test]
fn slow_node_restored_then_caught_up_by_appends() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.elect(1);
    cluster.isolate(3);
    for i in 0..100u8 {
        cluster.node(1).propose(vec![], vec![i]).unwrap();
        cluster.stabilize();
    }
    cluster.nodes.get_mut(&1).unwrap().snapshot_and_compact();
    // Healed, node 3 answers a heartbeat and the leader sends it the snapshot...
    // (The leader first learns from a rejected append that node 3 is behind its first index.)
    cluster.heal();
    cluster.tick();
    for _ in 0..5 {
        if cluster.node(1).raft.prs.progress[&3].state == ProgressState::Snapshot {
            break;
        }
        cluster.handle_ready(1);
        cluster.stabilize_messages_only();
        cluster.handle_ready(3);
        cluster.stabilize_messages_only();
    }
    assert_eq!(cluster.node(1).raft.prs.progress[&3].state, ProgressState::Snapshot);
    // ...which is lost on the way: the transport reports the failure, the leader probes.
    cluster.partition(1, 3);
    cluster.stabilize();
    assert!(cluster.nodes[&3].restored.is_empty());
    assert_eq!(cluster.node(1).raft.prs.progress[&3].state, ProgressState::Probe);
    cluster.heal();
    cluster.settle(3);
    assert_eq!(cluster.nodes[&3].restored.len(), 1, "restored from the retried snapshot");
    for i in 100..105u8 {
        cluster.node(1).propose(vec![], vec![i]).unwrap();
        cluster.stabilize();
    }
    let want: Vec<Vec<u8>> = (0..105u8).map(|i| vec![i]).collect();
    assert_eq!(cluster.nodes[&3].applied, want, "snapshot, then appends");
    let (leader_commit, follower_commit) =
        (cluster.node(1).raft.raft_log.committed, cluster.node(3).raft.raft_log.committed);
    assert_eq!(leader_commit, follower_commit);
    assert_eq!(
        cluster.node(3).store().first_index(),
        Ok(cluster.node(1).store().first_index().unwrap())
    );
}

/// A learner is brought up to date by snapshot too.
#[test]
fn learner_receives_snapshot() {
    let mut cluster = Cluster::bootstrap(&[1, 2, 3], |_| {});
    cluster.elect(1);
    for i in 0..10u8 {
        cluster.node(1).propose(vec![], vec![i]).unwrap();
        cluster.stabilize();
    }
    cluster.nodes.get_mut(&1).unwrap().snapshot_and_compact();
    cluster.add_empty_node(4, |_| {});
    let add = raft::ConfChange {
        change_type: raft::ConfChangeType::AddLearnerNode,
        node_id: 4,
        context: vec![],
    };
    cluster.node(1).propose_conf_change(vec![], &add).unwrap();
    cluster.settle(5);
    let learner = &cluster.nodes[&4];
    assert_eq!(learner.restored.len(), 1);
    assert_eq!(learner.applied.len(), 10);
    assert!(cluster.node(4).raft.is_learner);
    assert_eq!(cluster.node(4).raft.state, StateType::Follower);
}

/// A joining node outside its own configuration accepts snapshots that do not name it yet,
/// one after another, until the entries that add it arrive (found by the simulator, seed
/// 2527: the second snapshot was refused and the joiner stalled forever).
#[test]
fn a_joiner_accepts_successive_snapshots_that_predate_its_addition() {
    let mut r = new_test_raft(7, &[], 10, 1, MemoryStorage::new());
    assert!(r.prs.progress.is_empty());
    assert!(r.restore(snap(106, 7, &[2, 3, 4, 5])), "first snapshot while joining");
    assert!(!r.prs.progress.contains_key(&7), "still not a member");
    assert!(r.restore(snap(111, 7, &[2, 3, 4, 5])), "a later one too");
    assert_eq!(r.raft_log.last_index(), 111);
    // A member still refuses a snapshot whose configuration lacks it.
    let mut member = new_test_raft(3, &[1, 2, 3], 10, 1, storage_with_peers(&[1, 2, 3]));
    assert!(!member.restore(snap(11, 11, &[1, 2])));
}
