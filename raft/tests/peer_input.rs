//! Messages no correct peer sends, each of which once broke a node (issue 14): the core
//! refuses or clamps them, and never panics.

mod common;

use common::*;
use raft::{MemoryStorage, Message, MessageType, Raft, StateType, TERM_JUMP_MAX, TERM_MAX};

/// A follower of leader 2 at term 2 with entries 1..=3.
fn follower() -> Raft<MemoryStorage> {
    let mut storage = storage_with_peers(&[1, 2, 3]);
    storage.append(&entries_with_terms(&[1, 1, 2])).unwrap();
    let mut r = new_test_raft(1, &[1, 2, 3], 10, 1, storage);
    r.become_follower(2, 2);
    r
}

#[test]
fn a_heartbeat_committing_beyond_the_log_is_clamped_not_a_panic() {
    let mut r = follower();
    let mut m = new_message(2, 1, MessageType::Heartbeat, 2);
    m.commit = 3976;
    r.step(m).unwrap();
    assert_eq!(r.raft_log.committed, 3, "commit clamped to the last index");
    assert!(read_messages(&mut r).iter().any(|m| m.msg_type == MessageType::HeartbeatResponse));
}

#[test]
fn an_append_past_the_end_of_the_log_is_rejected_not_a_gap() {
    let mut r = follower();
    let mut m = new_message(2, 1, MessageType::Append, 2);
    (m.index, m.log_term) = (10, 0);
    m.entries = vec![entry(2, 11, b"x")];
    r.step(m).unwrap();
    assert_eq!(r.raft_log.last_index(), 3, "nothing appended after a gap");
    let responses = read_messages(&mut r);
    let response = responses.iter().find(|m| m.msg_type == MessageType::AppendResponse).unwrap();
    assert!(response.reject);
    assert!(response.reject_hint <= 3, "the hint is within this log");
}

#[test]
fn a_term_past_the_largest_or_an_absurd_jump_is_ignored() {
    for term in [u64::MAX, TERM_MAX + 1, 2 + TERM_JUMP_MAX + 1] {
        let mut r = follower();
        let mut m = new_message(3, 1, MessageType::Append, term);
        m.commit = 1;
        r.step(m).unwrap();
        assert_eq!(r.term, 2, "term {term} not taken");
        assert_eq!((r.state, r.lead), (StateType::Follower, 2));
        assert!(read_messages(&mut r).is_empty());
        // And elections still work: no wrap-around of term + 1.
        r.step(Message { from: 1, to: 1, msg_type: MessageType::Hup, ..Message::default() })
            .unwrap();
    }
    // A large but possible jump is taken (a node that was away for many elections).
    let mut r = follower();
    r.step(new_message(3, 1, MessageType::Heartbeat, 2 + TERM_JUMP_MAX)).unwrap();
    assert_eq!(r.term, 2 + TERM_JUMP_MAX);
}

#[test]
fn timeout_now_from_anyone_but_the_leader_is_ignored() {
    let mut r = follower();
    r.step(new_message(3, 1, MessageType::TimeoutNow, 2)).unwrap();
    assert_eq!((r.state, r.term, r.lead), (StateType::Follower, 2, 2), "no election");
    assert!(read_messages(&mut r).is_empty());
    // From the leader, it starts the transfer election.
    r.step(new_message(2, 1, MessageType::TimeoutNow, 2)).unwrap();
    assert_eq!((r.state, r.term), (StateType::Candidate, 3));
}

/// A leader of 1, 2, 3 at term 3 whose log is 1..=4, with follower 2 acknowledged through 4
/// and then reported unreachable (so probing it, one append at a time).
fn leader_probing_2() -> Raft<MemoryStorage> {
    let mut storage = storage_with_peers(&[1, 2, 3]);
    storage.append(&entries_with_terms(&[1, 1, 2])).unwrap();
    let mut r = new_test_raft(1, &[1, 2, 3], 10, 1, storage);
    r.become_candidate();
    r.become_leader();
    assert_eq!(r.raft_log.last_index(), 4);
    let mut ack = new_message(2, 1, MessageType::AppendResponse, r.term);
    ack.index = 4;
    r.step(ack).unwrap();
    assert_eq!(r.prs.progress[&2].matched, 4);
    r.step(new_message(2, 1, MessageType::Unreachable, 0)).unwrap();
    read_messages(&mut r);
    r
}

fn appends_to(r: &mut Raft<MemoryStorage>, to: u64) -> usize {
    read_messages(r).iter().filter(|m| m.to == to && m.msg_type == MessageType::Append).count()
}

#[test]
fn a_probe_rejected_at_or_below_the_followers_match_waits_for_the_next_heartbeat() {
    let mut r = leader_probing_2();
    let term = r.term;
    // A proposal sends the probe (prev index 4, which 2 acknowledged).
    r.step(propose(1, b"x")).unwrap();
    assert_eq!(appends_to(&mut r, 2), 1);
    // 2 now denies entry 4 (it lost what it acknowledged: a lying disk, a bug). Moving next
    // below the match is not allowed, so the probe cannot make progress: it must wait, not
    // be resent at once (that was a loop of thousands of appends per tick).
    for _ in 0..100 {
        let mut reject = new_message(2, 1, MessageType::AppendResponse, term);
        (reject.index, reject.reject, reject.reject_hint) = (4, true, 0);
        r.step(reject).unwrap();
    }
    assert_eq!(appends_to(&mut r, 2), 0, "no append until the next heartbeat answer");
    r.step(new_message(2, 1, MessageType::HeartbeatResponse, term)).unwrap();
    assert_eq!(appends_to(&mut r, 2), 1, "one probe per heartbeat");
    assert_eq!(r.prs.progress[&2].matched, 4, "the match never goes back");
}

fn follower_in_lease() -> Raft<MemoryStorage> {
    let mut storage = storage_with_peers(&[1, 2, 3]);
    storage.append(&entries_with_terms(&[1, 1, 2])).unwrap();
    let mut config = new_test_config(1, 10, 1);
    config.check_quorum = true;
    let mut r = new_test_raft_with_config(&config, storage);
    r.become_follower(2, 2);
    r
}

fn transfer_vote(from: u64, term: u64) -> Message {
    let mut m = new_message(from, 1, MessageType::RequestVote, term);
    (m.index, m.log_term) = (3, 2);
    m.context = raft::Bytes::from_static(raft::CAMPAIGN_TRANSFER);
    m
}

#[test]
fn a_transfer_campaign_overrides_the_lease_only_for_the_transferee_its_leader_named() {
    // 3 claims a transfer the leader never started: the lease holds, the term does not move.
    let mut r = follower_in_lease();
    r.step(transfer_vote(3, 3)).unwrap();
    assert_eq!((r.term, r.vote, r.lead), (2, 0, 2), "no vote, no new term");
    assert!(read_messages(&mut r).is_empty());
    // A notice from anyone but the leader names nobody.
    let mut notice = new_message(3, 1, MessageType::TransferNotice, 2);
    notice.index = 3;
    r.step(notice).unwrap();
    assert_eq!((r.term, r.vote), (2, 0));
    // The leader's notice, arriving after the vote request (another connection): the held
    // request is granted then.
    let mut notice = new_message(2, 1, MessageType::TransferNotice, 2);
    notice.index = 3;
    r.step(notice).unwrap();
    assert_eq!((r.term, r.vote), (3, 3));
    let granted = read_messages(&mut r);
    assert!(granted
        .iter()
        .any(|m| m.msg_type == MessageType::RequestVoteResponse && m.to == 3 && !m.reject));
    // Once named, a transfer campaign from the named node is granted at once.
    let mut r = follower_in_lease();
    let mut notice = new_message(2, 1, MessageType::TransferNotice, 2);
    notice.index = 3;
    r.step(notice).unwrap();
    r.step(transfer_vote(3, 3)).unwrap();
    assert_eq!((r.term, r.vote), (3, 3));
}

#[test]
fn a_second_leader_in_the_same_term_is_ignored() {
    let mut r = follower();
    for msg_type in [MessageType::Append, MessageType::Heartbeat, MessageType::Snapshot] {
        let mut m = new_message(3, 1, msg_type, 2);
        (m.index, m.log_term, m.commit) = (1, 1, 3);
        m.entries = vec![entry(2, 2, b"forged")];
        r.step(m).unwrap();
        assert_eq!(r.lead, 2, "{msg_type:?}");
        assert!(read_messages(&mut r).is_empty(), "{msg_type:?}");
    }
    assert_eq!(log_entries(&r).iter().map(|e| e.1).collect::<Vec<_>>(), [1, 1, 2]);
}

#[test]
fn an_append_rewriting_a_committed_entry_is_refused_not_a_panic() {
    let mut r = follower();
    r.raft_log.commit_to(3);
    // A leader of a later term whose entry 3 differs from the committed one: no correct
    // leader sends this (Leader Completeness, Raft §5.4).
    let mut m = new_message(3, 1, MessageType::Append, 3);
    (m.index, m.log_term) = (2, 1);
    m.entries = vec![entry(3, 3, b"rewrite")];
    r.step(m).unwrap();
    assert_eq!(log_entries(&r).iter().map(|e| e.1).collect::<Vec<_>>(), [1, 1, 2]);
    assert_eq!(r.raft_log.committed, 3);
}
