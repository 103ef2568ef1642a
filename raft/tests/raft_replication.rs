//! Replication: log matching and commit rules, fast backtracking, flow control, the
//! uncommitted-size limit and proposal forwarding (after etcd's `raft_test.go`).

mod common;

use std::cell::Cell;
use std::rc::Rc;

use common::*;
use raft::tracker::ProgressState;
use raft::{Config, Entry, Error, HardState, MemoryStorage, Message, MessageType, Raft, StateType};

fn leader_of(peers: &[u64], configure: impl Fn(&mut Config)) -> Raft<MemoryStorage> {
    let mut config = new_test_config(1, 5, 1);
    configure(&mut config);
    let mut r = new_test_raft_with_config(&config, storage_with_peers(peers));
    r.become_candidate();
    r.become_leader();
    read_messages(&mut r);
    r
}

fn ack(from: u64, index: u64) -> Message {
    Message { index, ..new_message(from, 1, MessageType::AppendResponse, 0) }
}

/// §5.3: proposals replicate to every node and commit with a quorum; with a quorum down
/// nothing is proposed at all.
#[test]
fn proposal_commits_with_quorum_only() {
    let cases: Vec<(Vec<NetPeer>, bool)> = vec![
        (vec![NetPeer::Default, NetPeer::Default, NetPeer::Default], true),
        (vec![NetPeer::Default, NetPeer::Default, NetPeer::Hole], true),
        (vec![NetPeer::Default, NetPeer::Hole, NetPeer::Hole], false),
        (vec![NetPeer::Default, NetPeer::Hole, NetPeer::Hole, NetPeer::Default], false),
        (
            vec![
                NetPeer::Default,
                NetPeer::Hole,
                NetPeer::Hole,
                NetPeer::Default,
                NetPeer::Default,
            ],
            true,
        ),
    ];
    for (i, (peers, success)) in cases.into_iter().enumerate() {
        let mut n = Network::new(peers);
        n.send(vec![hup(1)]);
        n.send(vec![propose(1, b"somedata")]);
        let want: Vec<(u64, u64, Vec<u8>)> =
            if success { vec![(1, 1, vec![]), (2, 1, b"somedata".to_vec())] } else { vec![] };
        for (&id, r) in &n.peers {
            assert_eq!(log_entries(r), want, "case {i}, node {id}");
            assert_eq!(r.raft_log.committed, want.len() as u64, "case {i}, node {id}");
        }
        assert_eq!(n.peer(1).term, 1);
    }
}

/// A follower forwards proposals to the leader (etcd's proposal forwarding).
#[test]
fn proposal_by_proxy_is_forwarded_to_the_leader() {
    for peers in [
        vec![NetPeer::Default, NetPeer::Default, NetPeer::Default],
        vec![NetPeer::Default, NetPeer::Default, NetPeer::Hole],
    ] {
        let mut n = Network::new(peers);
        n.send(vec![hup(1)]);
        n.send(vec![propose(2, b"somedata")]);
        let want = vec![(1, 1, vec![]), (2, 1, b"somedata".to_vec())];
        for (&id, r) in &n.peers {
            assert_eq!(log_entries(r), want, "node {id}");
            assert_eq!(r.raft_log.committed, 2, "node {id}");
        }
    }
}

/// With `disable_proposal_forwarding`, a follower drops proposals with a typed error instead
/// of forwarding them.
#[test]
fn proposal_dropped_by_follower_when_forwarding_disabled() {
    let mut n =
        Network::new_with_config(vec![NetPeer::Default, NetPeer::Default, NetPeer::Default], |c| {
            c.disable_proposal_forwarding = true
        });
    n.send(vec![hup(1)]);
    let result = n.peer_mut(2).step(propose(2, b"somedata"));
    assert!(matches!(result, Err(Error::ProposalDropped)), "{result:?}");
    assert!(n.peer(2).msgs.is_empty(), "nothing was forwarded");
    // The leader itself still accepts proposals.
    n.send(vec![propose(1, b"direct")]);
    assert_eq!(n.peer(2).raft_log.committed, 2);
}

/// Proposals are refused with `ProposalDropped` when there is no leader.
#[test]
fn proposal_dropped_without_leader() {
    let mut r = new_test_raft(1, &[1, 2, 3], 10, 1, storage_with_peers(&[1, 2, 3]));
    assert!(matches!(r.step(propose(1, b"x")), Err(Error::ProposalDropped)));
    r.become_candidate();
    assert!(matches!(r.step(propose(1, b"x")), Err(Error::ProposalDropped)));
    assert!(r.msgs.is_empty());
}

/// A single-voter cluster commits proposals on its own.
#[test]
fn single_node_commit() {
    let mut n = Network::new(vec![NetPeer::Default]);
    n.send(vec![hup(1)]);
    n.send(vec![propose(1, b"some data")]);
    n.send(vec![propose(1, b"some data")]);
    assert_eq!(n.peer(1).raft_log.committed, 3);
}

/// §5.3: logs replicate to every node and commit, across leader changes.
#[test]
fn log_replication_across_leader_changes() {
    let mut n = Network::new(vec![NetPeer::Default, NetPeer::Default, NetPeer::Default]);
    n.send(vec![hup(1)]);
    n.send(vec![propose(1, b"a")]);
    n.send(vec![hup(2)]);
    n.send(vec![propose(1, b"b")]); // Forwarded by node 1, now a follower, to leader 2.
    let want = vec![(1, 1, vec![]), (2, 1, b"a".to_vec()), (3, 2, vec![]), (4, 2, b"b".to_vec())];
    for (&id, r) in &n.peers {
        assert_eq!(log_entries(r), want, "node {id}");
        assert_eq!(r.raft_log.committed, 4, "node {id}");
    }
}

/// §5.3 and §5.4.2: the commit index is the highest index a quorum matched, and only an
/// entry of the current term commits by counting.
#[test]
fn commit_index_follows_quorum_match_of_current_term() {
    // (matched indexes of nodes 1.., log terms, node term, want commit)
    let cases: Vec<(Vec<u64>, Vec<u64>, u64, u64)> = vec![
        (vec![1], vec![1], 1, 1),
        (vec![1], vec![1], 2, 0),
        (vec![2], vec![1, 2], 2, 2),
        (vec![1], vec![2], 2, 1),
        (vec![2, 1, 1], vec![1, 2], 1, 1),
        (vec![2, 1, 1], vec![1, 1], 2, 0),
        (vec![2, 1, 2], vec![1, 2], 2, 2),
        (vec![2, 1, 2], vec![1, 1], 2, 0),
        (vec![2, 1, 1, 1], vec![1, 2], 1, 1),
        (vec![2, 1, 1, 1], vec![1, 1], 2, 0),
        (vec![2, 1, 1, 2], vec![1, 2], 1, 1),
        (vec![2, 1, 1, 2], vec![1, 1], 2, 0),
        (vec![2, 1, 2, 2], vec![1, 2], 2, 2),
        (vec![2, 1, 2, 2], vec![1, 1], 2, 0),
    ];
    for (matches, terms, term, want) in cases {
        let ids: Vec<u64> = (1..=matches.len() as u64).collect();
        let mut storage = storage_with_peers(&ids);
        storage.append(&entries_with_terms(&terms)).unwrap();
        storage.set_hard_state(HardState { term, vote: 0, commit: 0 });
        let mut r = new_test_raft(1, &ids, 10, 2, storage);
        for (i, &m) in matches.iter().enumerate() {
            let pr = r.prs.progress.get_mut(&(i as u64 + 1)).unwrap();
            pr.matched = m;
            pr.next_idx = m + 1;
        }
        r.maybe_commit();
        assert_eq!(r.raft_log.committed, want, "matches {matches:?} terms {terms:?} term {term}");
    }
}

/// The leader's handling of append responses: stale rejections are ignored, a rejection
/// moves next back and probes, an acceptance commits and broadcasts the commit index.
#[test]
fn leader_handles_append_responses() {
    // (index, reject) -> (matched, next, messages, message index, message commit)
    let cases = [
        ((3, true), (0, 3, 0, 0, 0)),
        ((2, true), (0, 2, 1, 1, 0)),
        ((2, false), (2, 4, 2, 2, 2)),
        ((0, false), (0, 3, 0, 0, 0)),
    ];
    for ((index, reject), (w_match, w_next, w_msgs, w_index, w_commit)) in cases {
        let mut storage = storage_with_peers(&[1, 2, 3]);
        storage.append(&[entry(0, 1, b""), entry(1, 2, b"")]).unwrap();
        let mut r = new_test_raft(1, &[1, 2, 3], 10, 1, storage);
        r.become_candidate();
        r.become_leader();
        read_messages(&mut r);
        let term = r.term;
        let m = Message {
            index,
            reject,
            reject_hint: index,
            ..new_message(2, 1, MessageType::AppendResponse, term)
        };
        r.step(m).unwrap();
        let pr = &r.prs.progress[&2];
        assert_eq!((pr.matched, pr.next_idx), (w_match, w_next), "({index}, {reject})");
        let msgs = read_messages(&mut r);
        assert_eq!(msgs.len(), w_msgs, "({index}, {reject})");
        for m in msgs {
            assert_eq!((m.index, m.commit), (w_index, w_commit), "({index}, {reject})");
        }
    }
}

/// Fast backtracking: a follower with a long tail of entries from terms the leader lacks is
/// repaired in two append round trips instead of one per entry.
#[test]
fn fast_log_rejection_skips_whole_terms() {
    let leader_terms = [1, 1, 1, 4, 4, 4, 4, 4];
    let follower_terms = [1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3];
    let lead = new_test_raft(1, &[], 10, 1, {
        let mut s = storage_with_peers(&[1, 2, 3]);
        s.append(&entries_with_terms(&leader_terms)).unwrap();
        s.set_hard_state(HardState { term: 4, vote: 0, commit: 3 });
        s
    });
    let follower = new_test_raft(2, &[], 10, 1, {
        let mut s = storage_with_peers(&[1, 2, 3]);
        s.append(&entries_with_terms(&follower_terms)).unwrap();
        s.set_hard_state(HardState { term: 3, vote: 0, commit: 3 });
        s
    });
    let mut n = Network::new(vec![NetPeer::Raft(lead), NetPeer::Raft(follower), NetPeer::Hole]);
    let rejections = Rc::new(Cell::new(0));
    let counter = rejections.clone();
    n.msg_hook = Some(Box::new(move |m: &Message| {
        if m.msg_type == MessageType::AppendResponse && m.from == 2 && m.reject {
            counter.set(counter.get() + 1);
        }
        true
    }));
    n.send(vec![hup(1)]);
    n.send(vec![new_message(3, 1, MessageType::RequestVoteResponse, 5)]);
    assert_eq!(n.peer(1).state, StateType::Leader);
    assert_eq!(log_entries(n.peer(1)), log_entries(n.peer(2)));
    // The first probe (after index 8) is rejected with the hint (8, term 2); the leader skips
    // its whole term 4 and the second probe lands after index 3, the last entry both logs
    // share. One entry at a time would take five rejections.
    assert_eq!(rejections.get(), 1, "rejections needed to repair the follower");
}

/// Flow control: in Probe state one append is outstanding at a time.
#[test]
fn progress_paused_while_probing() {
    let mut r = leader_of(&[1, 2], |_| {});
    for _ in 0..3 {
        r.step(propose(1, b"somedata")).unwrap();
    }
    assert_eq!(read_messages(&mut r).len(), 1);
}

/// Flow control: a heartbeat response lets a paused probe send again.
#[test]
fn progress_resumed_by_heartbeat_response() {
    let mut r = leader_of(&[1, 2], |_| {});
    r.prs.progress.get_mut(&2).unwrap().probe_sent = true;
    r.step(propose(1, b"somedata")).unwrap();
    assert!(read_messages(&mut r).is_empty(), "paused: the proposal is not sent");
    r.step(new_message(1, 1, MessageType::Beat, 0)).unwrap();
    assert!(r.prs.progress[&2].probe_sent, "a heartbeat does not unpause");
    let msgs = read_messages(&mut r);
    assert!(msgs.iter().all(|m| m.msg_type == MessageType::Heartbeat));
    r.step(new_message(2, 1, MessageType::HeartbeatResponse, 0)).unwrap();
    let msgs = read_messages(&mut r);
    assert_eq!(msgs.len(), 1, "its response does: one probe goes out");
    assert_eq!((msgs[0].msg_type, msgs[0].entries.len()), (MessageType::Append, 2));
    assert!(r.prs.progress[&2].probe_sent, "and the probe pauses again");
}

/// Flow control: appends are batched up to `max_size_per_msg`, pipelined up to
/// `max_inflight_msgs` in Replicate state, and resumed as acknowledgements arrive.
#[test]
fn progress_flow_control_batches_and_pipelines() {
    let mut r = leader_of(&[1, 2], |c| {
        c.max_inflight_msgs = 3;
        c.max_size_per_msg = 2048;
    });
    r.prs.progress.get_mut(&2).unwrap().become_probe();
    let blob = vec![b'a'; 1000];
    for _ in 0..10 {
        r.step(propose(1, &blob)).unwrap();
    }
    let ms = read_messages(&mut r);
    // Probe: one message, with the no-op and the first proposal (2048 bytes fit two).
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0].entries.len(), 2);
    assert_eq!((ms[0].entries[0].data.len(), ms[0].entries[1].data.len()), (0, 1000));
    // Acknowledged: Replicate state, three messages of two entries in flight.
    r.step(ack(2, ms[0].entries[1].index)).unwrap();
    let ms = read_messages(&mut r);
    assert_eq!(ms.len(), 3);
    assert!(ms.iter().all(|m| m.msg_type == MessageType::Append && m.entries.len() == 2));
    // All three acknowledged at once: the last three entries go in two messages.
    r.step(ack(2, ms[2].entries[1].index)).unwrap();
    let ms = read_messages(&mut r);
    assert_eq!(ms.iter().map(|m| m.entries.len()).collect::<Vec<_>>(), vec![2, 1]);
}

fn leader_with_full_window() -> Raft<MemoryStorage> {
    let mut r = leader_of(&[1, 2], |_| {});
    r.prs.progress.get_mut(&2).unwrap().become_replicate();
    for i in 0..r.prs.max_inflight {
        r.step(propose(1, b"somedata")).unwrap();
        assert_eq!(read_messages(&mut r).len(), 1, "proposal {i} is sent");
    }
    r
}

/// Flow control: once `max_inflight_msgs` appends are unacknowledged, the leader stops
/// sending to that follower.
#[test]
fn flow_control_pauses_at_max_inflight_msgs() {
    let mut r = leader_with_full_window();
    assert!(r.prs.progress[&2].ins.full());
    for _ in 0..10 {
        r.step(propose(1, b"somedata")).unwrap();
        assert!(read_messages(&mut r).is_empty());
    }
}

/// Flow control: each acknowledgement frees the window up to the acknowledged index and one
/// more append goes out; stale acknowledgements free nothing.
#[test]
fn flow_control_resumes_on_acks() {
    let mut r = leader_with_full_window();
    // Index 1 is the no-op; the first proposal is index 2.
    for acked in 2..r.prs.max_inflight as u64 {
        r.step(ack(2, acked)).unwrap();
        read_messages(&mut r);
        r.step(propose(1, b"somedata")).unwrap();
        assert_eq!(read_messages(&mut r).len(), 1, "after ack of {acked}");
        assert!(r.prs.progress[&2].ins.full());
        for stale in 0..acked {
            r.step(ack(2, stale)).unwrap();
            assert!(r.prs.progress[&2].ins.full(), "stale ack {stale} frees nothing");
        }
    }
}

/// Flow control: when every acknowledgement was lost, each heartbeat response frees one slot
/// so replication can never stall for good.
#[test]
fn flow_control_frees_one_slot_per_heartbeat_response() {
    let mut r = leader_with_full_window();
    for round in 1..5 {
        assert!(r.prs.progress[&2].ins.full());
        for _ in 0..round {
            r.step(new_message(2, 1, MessageType::HeartbeatResponse, 0)).unwrap();
            read_messages(&mut r);
            assert!(!r.prs.progress[&2].ins.full(), "round {round}");
        }
        r.step(propose(1, b"somedata")).unwrap();
        assert_eq!(read_messages(&mut r).len(), 1, "one slot, one message");
        for _ in 0..10 {
            r.step(propose(1, b"somedata")).unwrap();
            assert!(read_messages(&mut r).is_empty(), "and only one");
        }
        r.step(new_message(2, 1, MessageType::HeartbeatResponse, 0)).unwrap();
        read_messages(&mut r);
    }
}

/// The uncommitted-size limit: proposals past `max_uncommitted_entries_size` are dropped; one
/// large proposal is accepted when nothing is uncommitted; an empty entry always fits; the
/// count returns to zero as entries are applied.
#[test]
fn uncommitted_entry_size_limit() {
    let max_entries = 1024u64;
    let test_entry = entry(0, 0, b"testdata");
    let limit = max_entries * test_entry.payload_size_bytes();
    assert_eq!(Entry::default().payload_size_bytes(), 0);
    let mut r = leader_of(&[1, 2, 3], |c| {
        c.max_uncommitted_entries_size = limit;
        c.max_inflight_msgs = 2048;
    });
    assert_eq!(r.uncommitted_size, 0, "the no-op counts nothing");
    r.prs.progress.get_mut(&2).unwrap().become_replicate();
    r.prs.progress.get_mut(&3).unwrap().become_replicate();
    for i in 0..max_entries {
        r.step(propose(1, b"testdata")).unwrap_or_else(|e| panic!("proposal {i}: {e}"));
    }
    assert!(matches!(r.step(propose(1, b"testdata")), Err(Error::ProposalDropped)));
    assert_eq!(read_messages(&mut r).len() as u64, max_entries * 2);
    let proposed = vec![test_entry.clone(); max_entries as usize];
    r.reduce_uncommitted_size(&proposed);
    assert_eq!(r.uncommitted_size, 0);

    let large =
        Message { entries: vec![test_entry.clone(); 2 * max_entries as usize], ..propose(1, b"") };
    r.step(large).expect("one large proposal fits when nothing is uncommitted");
    assert!(matches!(r.step(propose(1, b"testdata")), Err(Error::ProposalDropped)));
    r.step(propose(1, b"")).expect("an empty entry always fits");
    assert_eq!(read_messages(&mut r).len(), 4);
    r.reduce_uncommitted_size(&vec![test_entry; 2 * max_entries as usize]);
    assert_eq!(r.uncommitted_size, 0);
}

/// A follower commits to the leader's heartbeat commit index, never backwards.
#[test]
fn handle_heartbeat_commits_forward_only() {
    let commit = 2;
    for (heartbeat_commit, want) in [(commit + 1, commit + 1), (commit - 1, commit)] {
        let mut storage = storage_with_peers(&[1, 2]);
        storage.append(&entries_with_terms(&[1, 2, 3])).unwrap();
        let mut r = new_test_raft(1, &[1, 2], 5, 1, storage);
        r.become_follower(2, 2);
        r.raft_log.commit_to(commit);
        let m =
            Message { commit: heartbeat_commit, ..new_message(2, 1, MessageType::Heartbeat, 2) };
        r.step(m).unwrap();
        assert_eq!(r.raft_log.committed, want);
        let msgs = read_messages(&mut r);
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].msg_type, MessageType::HeartbeatResponse);
    }
}

/// A heartbeat response from a lagging follower makes the leader send it entries.
#[test]
fn heartbeat_response_resends_to_lagging_follower() {
    let mut storage = storage_with_peers(&[1, 2]);
    storage.append(&entries_with_terms(&[1, 2, 3])).unwrap();
    let mut r = new_test_raft(1, &[1, 2], 5, 1, storage);
    r.become_candidate();
    r.become_leader();
    let committed = r.raft_log.last_index();
    r.raft_log.commit_to(committed);
    read_messages(&mut r);
    for _ in 0..2 {
        r.step(new_message(2, 1, MessageType::HeartbeatResponse, 0)).unwrap();
        let msgs = read_messages(&mut r);
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].msg_type, MessageType::Append);
    }
    // Once the follower acknowledged everything, heartbeat responses send nothing more.
    let last = r.raft_log.last_index();
    r.step(ack(2, last)).unwrap();
    read_messages(&mut r);
    r.step(new_message(2, 1, MessageType::HeartbeatResponse, 0)).unwrap();
    assert!(read_messages(&mut r).is_empty());
}

/// A new leader's commit index is only advertised after followers acknowledge: a follower
/// whose acknowledgement commits an entry gets the new commit index at once; the other does
/// not until it acknowledges.
#[test]
fn append_response_wait_reset() {
    let mut r = new_test_raft(1, &[1, 2, 3], 5, 1, storage_with_peers(&[1, 2, 3]));
    r.become_candidate();
    r.become_leader();
    persist(&mut r);
    r.bcast_append();
    read_messages(&mut r);
    r.step(ack(2, 1)).unwrap();
    assert_eq!(r.raft_log.committed, 1);
    read_messages(&mut r);
    r.step(propose(1, b"")).unwrap();
    let msgs = read_messages(&mut r);
    assert_eq!(msgs.len(), 1, "only node 2 (replicating) gets the entry; node 3 is probing");
    assert_eq!((msgs[0].to, msgs[0].entries[0].index), (2, 2));
    r.step(ack(3, 1)).unwrap();
    let msgs = read_messages(&mut r);
    assert_eq!(msgs.len(), 1);
    assert_eq!((msgs[0].to, msgs[0].entries.len(), msgs[0].entries[0].index), (3, 1, 2));
}

/// A leader in Replicate state that is told a follower is unreachable falls back to probing.
#[test]
fn unreachable_follower_drops_to_probe() {
    let mut r = leader_of(&[1, 2], |_| {});
    r.step(ack(2, 1)).unwrap();
    assert_eq!(r.prs.progress[&2].state, ProgressState::Replicate);
    r.step(new_message(2, 1, MessageType::Unreachable, 0)).unwrap();
    let pr = &r.prs.progress[&2];
    assert_eq!(pr.state, ProgressState::Probe);
    assert_eq!(pr.next_idx, pr.matched + 1);
}

/// In Replicate state the leader sends optimistically: next moves past what it sent.
#[test]
fn leader_increases_next_optimistically_when_replicating() {
    let previous = entries_with_terms(&[1, 2, 3]);
    for (state, next, want_next) in
        [(ProgressState::Replicate, 2, previous.len() as u64 + 2 + 1), (ProgressState::Probe, 2, 2)]
    {
        let mut storage = storage_with_peers(&[1, 2]);
        storage.append(&previous).unwrap();
        let mut r = new_test_raft(1, &[1, 2], 10, 1, storage);
        r.become_candidate();
        r.become_leader();
        let pr = r.prs.progress.get_mut(&2).unwrap();
        pr.state = state;
        pr.next_idx = next;
        r.step(propose(1, b"somedata")).unwrap();
        assert_eq!(r.prs.progress[&2].next_idx, want_next, "{state}");
    }
}

/// A follower never sends anything before hearing from a leader, and a follower's log is
/// never overwritten below its commit index by a stale append.
#[test]
fn stale_append_below_commit_is_acknowledged_not_applied() {
    let mut storage = storage_with_peers(&[1, 2]);
    storage.append(&entries_with_terms(&[1, 1, 1])).unwrap();
    storage.set_hard_state(HardState { term: 1, vote: 0, commit: 3 });
    let mut r = new_test_raft(2, &[1, 2], 10, 1, storage);
    let m = Message {
        index: 1,
        log_term: 1,
        entries: vec![entry(1, 2, b"different")],
        commit: 1,
        ..new_message(1, 2, MessageType::Append, 1)
    };
    r.step(m).unwrap();
    let msgs = read_messages(&mut r);
    assert_eq!(msgs.len(), 1);
    assert_eq!(
        (msgs[0].msg_type, msgs[0].index, msgs[0].reject),
        (MessageType::AppendResponse, 3, false)
    );
    assert_eq!(r.raft_log.all_entries(), entries_with_terms(&[1, 1, 1]));
}

/// Raft thesis §10.2.1 (the leader writes to its disk in parallel, and counts itself in a
/// quorum only once its entries are durable): acknowledgements that make a quorum only with
/// the leader's unsynced log commit nothing; the leader's persisted notification commits
/// and tells the followers.
#[test]
fn leader_counts_itself_toward_a_commit_only_once_persisted() {
    let mut r = leader_of(&[1, 2, 3], |_| {});
    persist(&mut r);
    r.step(ack(2, 1)).unwrap();
    r.step(ack(3, 1)).unwrap();
    read_messages(&mut r);
    r.step(propose(1, b"x")).unwrap();
    read_messages(&mut r);
    r.step(ack(2, 2)).unwrap();
    assert_eq!(r.raft_log.committed, 1, "node 2 and the leader's unsynced log: no quorum");
    assert!(read_messages(&mut r).iter().all(|m| m.commit <= 1));
    persist(&mut r);
    assert_eq!(r.raft_log.committed, 2, "synced here too: a quorum holds it durably");
    let msgs = read_messages(&mut r);
    let told: Vec<u64> = msgs.iter().filter(|m| m.commit == 2).map(|m| m.to).collect();
    assert_eq!(told, vec![2, 3], "the new commit index goes out at once");
}

/// Issue 15 item 3: a single voter with a learner (the README's path for growing a one-node
/// cluster) never tells the learner of a commit that is not durable on the voter: a power
/// loss could take it back and the voter write another entry at that index.
#[test]
fn single_voter_sends_no_commit_above_its_persisted_log() {
    let mut r = new_test_learner_raft(1, &[1], &[2], 10, 1);
    r.become_candidate();
    r.become_leader();
    persist(&mut r);
    assert_eq!(r.raft_log.committed, 1, "the no-op commits once persisted");
    r.step(Message { index: 1, ..new_message(2, 1, MessageType::AppendResponse, r.term) }).unwrap();
    read_messages(&mut r);
    r.step(propose(1, b"x")).unwrap();
    r.step(propose(1, b"y")).unwrap();
    let msgs = read_messages(&mut r);
    assert!(!msgs.is_empty(), "the learner gets the entries before the voter syncs");
    assert!(
        msgs.iter().all(|m| m.commit <= 1),
        "commit above the persisted log sent: {:?}",
        msgs.iter().map(|m| (m.to, m.commit)).collect::<Vec<_>>()
    );
    assert_eq!(r.raft_log.committed, 1);
    persist(&mut r);
    assert_eq!(r.raft_log.committed, 3);
    assert!(read_messages(&mut r).iter().any(|m| m.to == 2 && m.commit == 3));
}

/// `batch_append`: proposals made one call at a time before the Ready is taken leave as one
/// append per follower, taking one inflight slot, split only by `max_size_per_msg`; without
/// it, one append per proposal (etcd's behaviour).
#[test]
fn batch_append_merges_appends_queued_for_a_follower_within_its_size_limit() {
    let entry_size = Entry::new(1, 2, b"somedata".to_vec()).size_bytes();
    // The first append also carries the leader's empty entry (index 1), not sent before.
    let one_each = [vec![2], vec![1; 9]].concat();
    for (batch_append, max_size, expected) in [
        (false, 1024 * 1024, Some(one_each)),
        (true, 1024 * 1024, Some(vec![11])),
        (true, 3 * entry_size, None),
    ] {
        let mut r = leader_of(&[1, 2, 3], |c| {
            c.batch_append = batch_append;
            c.max_size_per_msg = max_size;
        });
        for id in [2, 3] {
            r.prs.progress.get_mut(&id).unwrap().become_replicate();
        }
        for _ in 0..10 {
            r.step(propose(1, b"somedata")).unwrap();
        }
        let ms = read_messages(&mut r);
        for to in [2, 3] {
            let to_ms: Vec<&Message> = ms.iter().filter(|m| m.to == to).collect();
            let sizes: Vec<usize> = to_ms.iter().map(|m| m.entries.len()).collect();
            if let Some(expected) = &expected {
                assert_eq!(&sizes, expected, "batch_append {batch_append}, to {to}");
            }
            // In order, none twice, each message continuing the one before, within the limit.
            let indexes: Vec<u64> =
                to_ms.iter().flat_map(|m| m.entries.iter().map(|e| e.index)).collect();
            let sent = *indexes.last().unwrap();
            assert_eq!(indexes, (1..=sent).collect::<Vec<u64>>());
            let mut prev = 0;
            for m in &to_ms {
                assert_eq!(m.index, prev, "the message's previous index");
                prev = m.entries.last().unwrap().index;
                let bytes: u64 = m.entries.iter().map(Entry::size_bytes).sum();
                assert!(m.entries.len() == 1 || bytes <= max_size, "{bytes} > {max_size}");
            }
            assert_eq!(r.prs.progress[&to].ins.count(), to_ms.len(), "an inflight slot each");
            assert_eq!(r.prs.progress[&to].next_idx, sent + 1);
            if expected.is_none() {
                assert!(to_ms.len() > 1 && to_ms.len() < 10, "merged within the limit: {sizes:?}");
            }
        }
        // Acknowledgements of what was sent (a quorum without the leader, whose own entries
        // count once synced) commit it and free every slot.
        let sent = r.prs.progress[&2].next_idx - 1;
        r.step(ack(2, sent)).unwrap();
        r.step(ack(3, sent)).unwrap();
        assert_eq!(r.raft_log.committed, sent);
        assert_eq!(r.prs.progress[&2].ins.count(), 0);
    }
}

/// `batch_append` never merges into an append that a heartbeat or another message to the
/// same follower followed, nor across a follower still probing.
#[test]
fn batch_append_keeps_message_order_and_probing() {
    let mut r = leader_of(&[1, 2], |c| c.batch_append = true);
    r.prs.progress.get_mut(&2).unwrap().become_replicate();
    r.step(propose(1, b"a")).unwrap();
    r.step(new_message(1, 1, MessageType::Beat, 0)).unwrap();
    r.step(propose(1, b"b")).unwrap();
    let kinds: Vec<(MessageType, usize)> =
        read_messages(&mut r).iter().map(|m| (m.msg_type, m.entries.len())).collect();
    assert_eq!(
        kinds,
        vec![(MessageType::Append, 2), (MessageType::Heartbeat, 0), (MessageType::Append, 1)]
    );
    // Probing: one append in flight at a time, no merging.
    let mut r = leader_of(&[1, 2], |c| c.batch_append = true);
    r.step(propose(1, b"a")).unwrap();
    r.step(propose(1, b"b")).unwrap();
    let ms = read_messages(&mut r);
    assert_eq!(ms.len(), 1, "a probing follower gets one append: {ms:?}");
}
