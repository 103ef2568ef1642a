//! The rules of the Raft paper, sections 5.1 to 5.4, each as a test named after it (after
//! etcd's `raft_paper_test.go`).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use raft::{ConfState, Entry, HardState, MemoryStorage, Message, MessageType, Raft, StateType};

fn sorted(mut msgs: Vec<Message>) -> Vec<Message> {
    msgs.sort_by_key(|m| (m.to, m.from));
    msgs
}

fn storage_with(peers: &[u64], entries: &[Entry], hs: HardState) -> MemoryStorage {
    let mut s = storage_with_peers(peers);
    s.append(entries).unwrap();
    s.set_hard_state(hs);
    s
}

fn raft_123() -> Raft<MemoryStorage> {
    new_test_raft(1, &[1, 2, 3], 10, 1, storage_with_peers(&[1, 2, 3]))
}

/// What a follower answers to an append: accept it and acknowledge its last entry.
fn accept_and_reply(m: &Message) -> Message {
    assert_eq!(m.msg_type, MessageType::Append);
    Message {
        from: m.to,
        to: m.from,
        term: m.term,
        msg_type: MessageType::AppendResponse,
        index: m.index + m.entries.len() as u64,
        ..Message::default()
    }
}

/// Lets a new leader commit its no-op entry and persists everything, as a Ready would.
fn commit_noop_entry(r: &mut Raft<MemoryStorage>) {
    assert_eq!(r.state, StateType::Leader);
    persist(r);
    r.bcast_append();
    for m in read_messages(r) {
        assert!(m.msg_type == MessageType::Append && m.entries.len() == 1);
        assert!(m.entries[0].data.is_empty(), "not the no-op entry");
        r.step(accept_and_reply(&m)).unwrap();
    }
    read_messages(r);
    let committed = r.raft_log.committed;
    r.raft_log.applied_to(committed);
}

fn update_term_from_message(state: StateType) {
    let mut r = raft_123();
    match state {
        StateType::Follower => r.become_follower(1, 2),
        StateType::Candidate => r.become_candidate(),
        StateType::Leader => {
            r.become_candidate();
            r.become_leader();
        }
        StateType::PreCandidate => r.become_pre_candidate(),
    }
    r.step(new_message(2, 1, MessageType::Append, 2)).unwrap();
    assert_eq!(r.term, 2, "{state}: term");
    assert_eq!(r.state, StateType::Follower, "{state}: state");
}

/// §5.1: a server that sees a larger term updates its term; a candidate or leader reverts to
/// follower.
#[test]
fn follower_update_term_from_message() {
    update_term_from_message(StateType::Follower);
}

/// §5.1, for a candidate.
#[test]
fn candidate_update_term_from_message() {
    update_term_from_message(StateType::Candidate);
}

/// §5.1, for a leader.
#[test]
fn leader_update_term_from_message() {
    update_term_from_message(StateType::Leader);
}

/// §5.1: a request with a stale term is rejected (ignored): nothing changes.
#[test]
fn reject_stale_term_message() {
    let storage = storage_with(&[1, 2, 3], &[], HardState { term: 2, vote: 0, commit: 0 });
    let mut r = new_test_raft(1, &[1, 2, 3], 10, 1, storage);
    let stale = Message {
        entries: vec![entry(1, 1, b"stale")],
        ..new_message(2, 1, MessageType::Append, 1)
    };
    r.step(stale).unwrap();
    assert_eq!((r.term, r.lead, r.raft_log.last_index()), (2, 0, 0));
    assert!(read_messages(&mut r).is_empty());
}

/// §5.1, with check-quorum: the stale leader is told the current term so that it steps down.
#[test]
fn reject_stale_term_message_answers_stale_leader_with_check_quorum() {
    let storage = storage_with(&[1, 2, 3], &[], HardState { term: 2, vote: 0, commit: 0 });
    let mut config = new_test_config(1, 10, 1);
    config.check_quorum = true;
    let mut r = new_test_raft_with_config(&config, storage);
    r.step(new_message(2, 1, MessageType::Heartbeat, 1)).unwrap();
    let msgs = read_messages(&mut r);
    assert_eq!(msgs.len(), 1);
    assert_eq!((msgs[0].msg_type, msgs[0].term, msgs[0].to), (MessageType::AppendResponse, 2, 2));
}

/// §5.2: servers start as followers.
#[test]
fn start_as_follower() {
    let r = raft_123();
    assert_eq!(r.state, StateType::Follower);
}

/// §5.2: the leader sends heartbeats to all followers every heartbeat interval, carrying a
/// commit index none of them may be behind.
#[test]
fn leader_bcast_beat() {
    let mut r = raft_123();
    r.become_candidate();
    r.become_leader();
    for _ in 0..10 {
        r.step(propose(1, b"")).unwrap();
    }
    read_messages(&mut r);
    r.tick();
    let msgs = sorted(read_messages(&mut r));
    let want: Vec<Message> = [2, 3]
        .iter()
        .map(|&to| Message { commit: 0, ..new_message(1, to, MessageType::Heartbeat, 1) })
        .collect();
    assert_eq!(msgs, want);
}

fn nonleader_start_election(state: StateType) {
    let et = 10;
    let mut r = new_test_raft(1, &[1, 2, 3], et, 1, storage_with_peers(&[1, 2, 3]));
    match state {
        StateType::Follower => r.become_follower(1, 2),
        StateType::Candidate => r.become_candidate(),
        _ => unreachable!(),
    }
    for _ in 1..2 * et {
        r.tick();
    }
    assert_eq!(r.term, 2);
    assert_eq!(r.state, StateType::Candidate);
    assert_eq!(r.vote, 1, "votes for itself");
    assert_eq!(r.prs.votes.get(&1), Some(&true));
    let msgs = sorted(read_messages(&mut r));
    let want: Vec<Message> =
        [2, 3].iter().map(|&to| new_message(1, to, MessageType::RequestVote, 2)).collect();
    assert_eq!(msgs, want);
}

/// §5.2: a follower that hears nothing for an election timeout becomes a candidate, votes for
/// itself and requests votes with a new term.
#[test]
fn follower_start_election() {
    nonleader_start_election(StateType::Follower);
}

/// §5.2: a candidate whose election times out starts a new one with a new term.
#[test]
fn candidate_start_new_election() {
    nonleader_start_election(StateType::Candidate);
}

/// §5.2: a candidate wins with votes from a majority, returns to follower on a majority of
/// denials, and stays candidate otherwise; all within one round.
#[test]
fn leader_election_in_one_round_rpc() {
    // (cluster size, votes received, resulting state)
    type Case = (usize, Vec<(u64, bool)>, StateType);
    let cases: Vec<Case> = vec![
        (1, vec![], StateType::Leader),
        (3, vec![(2, true), (3, true)], StateType::Leader),
        (3, vec![(2, true)], StateType::Leader),
        (5, vec![(2, true), (3, true), (4, true), (5, true)], StateType::Leader),
        (5, vec![(2, true), (3, true), (4, true)], StateType::Leader),
        (5, vec![(2, true), (3, true)], StateType::Leader),
        (3, vec![(2, false), (3, false)], StateType::Follower),
        (5, vec![(2, false), (3, false), (4, false), (5, false)], StateType::Follower),
        (5, vec![(2, true), (3, false), (4, false), (5, false)], StateType::Follower),
        (3, vec![], StateType::Candidate),
        (5, vec![(2, true)], StateType::Candidate),
        (5, vec![(2, false), (3, false)], StateType::Candidate),
        (5, vec![], StateType::Candidate),
    ];
    for (size, votes, want) in cases {
        let ids: Vec<u64> = (1..=size as u64).collect();
        let mut r = new_test_raft(1, &ids, 10, 1, storage_with_peers(&ids));
        r.step(hup(1)).unwrap();
        for (from, granted) in &votes {
            let m = Message {
                reject: !granted,
                ..new_message(*from, 1, MessageType::RequestVoteResponse, r.term)
            };
            r.step(m).unwrap();
        }
        assert_eq!(r.state, want, "size {size} votes {votes:?}");
        assert_eq!(r.term, 1);
    }
}

/// §5.2: each server votes for at most one candidate in a term, first come first served.
#[test]
fn follower_vote() {
    let cases =
        [(0, 2, false), (0, 3, false), (2, 2, false), (3, 3, false), (2, 3, true), (3, 2, true)];
    for (vote, candidate, want_reject) in cases {
        let storage = storage_with(&[1, 2, 3], &[], HardState { term: 1, vote, commit: 0 });
        let mut r = new_test_raft(1, &[1, 2, 3], 10, 1, storage);
        r.step(new_message(candidate, 1, MessageType::RequestVote, 1)).unwrap();
        let want = Message {
            reject: want_reject,
            ..new_message(1, candidate, MessageType::RequestVoteResponse, 1)
        };
        assert_eq!(read_messages(&mut r), vec![want], "vote {vote} candidate {candidate}");
    }
}

/// §5.2: a candidate that hears from a leader of a term at least as large returns to follower.
#[test]
fn candidate_fallback() {
    for term in [1, 2] {
        let mut r = raft_123();
        r.step(hup(1)).unwrap();
        assert_eq!(r.state, StateType::Candidate);
        r.step(new_message(2, 1, MessageType::Append, term)).unwrap();
        assert_eq!((r.state, r.term, r.lead), (StateType::Follower, term, 2));
    }
}

fn nonleader_election_timeout_randomized(state: StateType) {
    let et = 10;
    let mut r = new_test_raft(1, &[1, 2, 3], et, 1, storage_with_peers(&[1, 2, 3]));
    let mut seen = BTreeSet::new();
    for _ in 0..50 * et {
        match state {
            StateType::Follower => {
                let term = r.term + 1;
                r.become_follower(term, 2);
            }
            StateType::Candidate => r.become_candidate(),
            _ => unreachable!(),
        }
        let mut ticks = 0;
        while read_messages(&mut r).is_empty() {
            r.tick();
            ticks += 1;
        }
        seen.insert(ticks);
    }
    let want: BTreeSet<usize> = (et..2 * et).collect();
    assert_eq!(seen, want, "every timeout in [et, 2et-1] occurs, and no other");
}

/// §5.2: election timeouts are chosen randomly from a fixed interval, for followers.
#[test]
fn follower_election_timeout_randomized() {
    nonleader_election_timeout_randomized(StateType::Follower);
}

/// §5.2: election timeouts are chosen randomly from a fixed interval, for candidates.
#[test]
fn candidate_election_timeout_randomized() {
    nonleader_election_timeout_randomized(StateType::Candidate);
}

fn nonleaders_election_timeout_nonconflict(state: StateType) {
    let et = 10;
    let ids = [1, 2, 3, 4, 5];
    let mut rs: Vec<Raft<MemoryStorage>> =
        ids.iter().map(|&id| new_test_raft(id, &ids, et, 1, storage_with_peers(&ids))).collect();
    let rounds = 1000;
    let mut conflicts = 0;
    for _ in 0..rounds {
        for r in rs.iter_mut() {
            match state {
                StateType::Follower => {
                    let term = r.term + 1;
                    r.become_follower(term, 0);
                }
                StateType::Candidate => r.become_candidate(),
                _ => unreachable!(),
            }
        }
        let mut timed_out = 0;
        while timed_out == 0 {
            for r in rs.iter_mut() {
                r.tick();
                if !read_messages(r).is_empty() {
                    timed_out += 1;
                }
            }
        }
        if timed_out > 1 {
            conflicts += 1;
        }
    }
    let p = conflicts as f64 / rounds as f64;
    assert!(p <= 0.3, "probability of conflicts = {p}, want <= 0.3");
}

/// §5.2: randomized timeouts make it rare that two followers time out together.
#[test]
fn followers_election_timeout_nonconflict() {
    nonleaders_election_timeout_nonconflict(StateType::Follower);
}

/// §5.2: randomized timeouts make it rare that two candidates time out together.
#[test]
fn candidates_election_timeout_nonconflict() {
    nonleaders_election_timeout_nonconflict(StateType::Candidate);
}

/// §5.3: the leader appends a proposal to its log as a new entry and sends appends to every
/// follower.
#[test]
fn leader_start_replication() {
    let mut r = raft_123();
    r.become_candidate();
    r.become_leader();
    commit_noop_entry(&mut r);
    let li = r.raft_log.last_index();
    r.step(propose(1, b"some data")).unwrap();
    assert_eq!(r.raft_log.last_index(), li + 1);
    assert_eq!(r.raft_log.committed, li);
    let want_ents = vec![entry(1, li + 1, b"some data")];
    let want: Vec<Message> = [2, 3]
        .iter()
        .map(|&to| Message {
            index: li,
            log_term: 1,
            entries: want_ents.clone(),
            commit: li,
            ..new_message(1, to, MessageType::Append, 1)
        })
        .collect();
    assert_eq!(sorted(read_messages(&mut r)), want);
    assert_eq!(r.raft_log.unstable_entries(), &want_ents[..]);
}

/// §5.3: the leader commits an entry once a majority replicated it, and tells followers the
/// new commit index in later appends.
#[test]
fn leader_commit_entry() {
    let mut r = raft_123();
    r.become_candidate();
    r.become_leader();
    commit_noop_entry(&mut r);
    let li = r.raft_log.last_index();
    r.step(propose(1, b"some data")).unwrap();
    for m in read_messages(&mut r) {
        r.step(accept_and_reply(&m)).unwrap();
    }
    assert_eq!(r.raft_log.committed, li + 1);
    assert_eq!(r.raft_log.next_entries(), vec![entry(1, li + 1, b"some data")]);
    let msgs = sorted(read_messages(&mut r));
    assert_eq!(msgs.len(), 2);
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!((m.to, m.msg_type, m.commit), (i as u64 + 2, MessageType::Append, li + 1));
    }
}

/// §5.3: an entry is committed once the leader replicated it on a majority, its own copy
/// included.
#[test]
fn leader_acknowledge_commit() {
    let cases: Vec<(usize, Vec<u64>, bool)> = vec![
        (1, vec![], true),
        (3, vec![], false),
        (3, vec![2], true),
        (3, vec![2, 3], true),
        (5, vec![], false),
        (5, vec![2], false),
        (5, vec![2, 3], true),
        (5, vec![2, 3, 4], true),
        (5, vec![2, 3, 4, 5], true),
    ];
    for (size, acceptors, want_ack) in cases {
        let ids: Vec<u64> = (1..=size as u64).collect();
        let mut r = new_test_raft(1, &ids, 10, 1, storage_with_peers(&ids));
        r.become_candidate();
        r.become_leader();
        commit_noop_entry(&mut r);
        let li = r.raft_log.last_index();
        r.step(propose(1, b"some data")).unwrap();
        persist(&mut r);
        for m in read_messages(&mut r) {
            if acceptors.contains(&m.to) {
                r.step(accept_and_reply(&m)).unwrap();
            }
        }
        assert_eq!(r.raft_log.committed > li, want_ack, "size {size} acceptors {acceptors:?}");
    }
}

/// §5.3: committing an entry also commits every preceding entry, including those of earlier
/// leaders.
#[test]
fn leader_commit_preceding_entries() {
    let cases: Vec<Vec<Entry>> = vec![
        vec![],
        vec![entry(2, 1, b"")],
        vec![entry(1, 1, b""), entry(2, 2, b"")],
        vec![entry(1, 1, b"")],
    ];
    for existing in cases {
        let storage =
            storage_with(&[1, 2, 3], &existing, HardState { term: 2, vote: 0, commit: 0 });
        let mut r = new_test_raft(1, &[1, 2, 3], 10, 1, storage);
        r.become_candidate();
        r.become_leader();
        r.step(propose(1, b"some data")).unwrap();
        for m in read_messages(&mut r) {
            r.step(accept_and_reply(&m)).unwrap();
        }
        let li = existing.len() as u64;
        let mut want = existing.clone();
        want.push(entry(3, li + 1, b""));
        want.push(entry(3, li + 2, b"some data"));
        assert_eq!(r.raft_log.next_entries(), want, "existing {existing:?}");
    }
}

/// §5.3: a follower applies an entry once it learns it is committed.
#[test]
fn follower_commit_entry() {
    let cases: Vec<(Vec<Entry>, u64)> = vec![
        (vec![entry(1, 1, b"some data")], 1),
        (vec![entry(1, 1, b"some data"), entry(1, 2, b"some data2")], 2),
        (vec![entry(1, 1, b"some data2"), entry(1, 2, b"some data")], 2),
        (vec![entry(1, 1, b"some data"), entry(1, 2, b"some data2")], 1),
    ];
    for (entries, commit) in cases {
        let mut r = raft_123();
        r.become_follower(1, 2);
        let m = Message {
            entries: entries.clone(),
            commit,
            ..new_message(2, 1, MessageType::Append, 1)
        };
        r.step(m).unwrap();
        assert_eq!(r.raft_log.committed, commit);
        assert_eq!(r.raft_log.next_entries(), entries[..commit as usize].to_vec());
    }
}

/// §5.3: a follower refuses an append whose preceding entry (index and term) it does not
/// have, and hints where the logs may match.
#[test]
fn follower_check_append_consistency() {
    let ents = vec![entry(1, 1, b""), entry(2, 2, b"")];
    // (log_term, index) -> (index, reject, reject_hint, log_term) of the answer
    let cases = [
        ((0, 0), (1, false, 0, 0)),
        ((1, 1), (1, false, 0, 0)),
        ((2, 2), (2, false, 0, 0)),
        ((1, 2), (2, true, 1, 1)),
        ((3, 3), (3, true, 2, 2)),
    ];
    for ((log_term, index), (w_index, w_reject, w_hint, w_log_term)) in cases {
        let storage = storage_with(&[1, 2, 3], &ents, HardState { term: 0, vote: 0, commit: 1 });
        let mut r = new_test_raft(1, &[1, 2, 3], 10, 1, storage);
        r.become_follower(2, 2);
        let m = Message { log_term, index, ..new_message(2, 1, MessageType::Append, 2) };
        r.step(m).unwrap();
        let want = Message {
            index: w_index,
            reject: w_reject,
            reject_hint: w_hint,
            log_term: w_log_term,
            ..new_message(1, 2, MessageType::AppendResponse, 2)
        };
        assert_eq!(read_messages(&mut r), vec![want], "append after ({index}, {log_term})");
    }
}

/// §5.3: a follower deletes conflicting entries and everything after them, then appends the
/// leader's.
#[test]
fn follower_append_entries() {
    // (index, log term, entries) -> (whole log, unstable part)
    type Case = (u64, u64, Vec<Entry>, Vec<Entry>, Vec<Entry>);
    let cases: Vec<Case> = vec![
        (
            2,
            2,
            vec![entry(3, 3, b"")],
            vec![entry(1, 1, b""), entry(2, 2, b""), entry(3, 3, b"")],
            vec![entry(3, 3, b"")],
        ),
        (
            1,
            1,
            vec![entry(3, 2, b""), entry(4, 3, b"")],
            vec![entry(1, 1, b""), entry(3, 2, b""), entry(4, 3, b"")],
            vec![entry(3, 2, b""), entry(4, 3, b"")],
        ),
        (0, 0, vec![entry(1, 1, b"")], vec![entry(1, 1, b""), entry(2, 2, b"")], vec![]),
        (0, 0, vec![entry(3, 1, b"")], vec![entry(3, 1, b"")], vec![entry(3, 1, b"")]),
    ];
    for (index, log_term, entries, want_all, want_unstable) in cases {
        let stored = [entry(1, 1, b""), entry(2, 2, b"")];
        let storage = storage_with(&[1, 2, 3], &stored, HardState::default());
        let mut r = new_test_raft(1, &[1, 2, 3], 10, 1, storage);
        r.become_follower(2, 2);
        let m = Message {
            log_term,
            index,
            entries: entries.clone(),
            ..new_message(2, 1, MessageType::Append, 2)
        };
        r.step(m).unwrap();
        assert_eq!(r.raft_log.all_entries(), want_all, "append {entries:?}");
        assert_eq!(r.raft_log.unstable_entries(), &want_unstable[..], "append {entries:?}");
    }
}

/// §5.3, Figure 7: a new leader brings every kind of divergent follower log to match its own.
#[test]
fn leader_sync_follower_log() {
    let terms_to_entries = |terms: &[u64]| entries_with_terms(terms);
    let leader_log = terms_to_entries(&[1, 1, 1, 4, 4, 5, 5, 6, 6, 6]);
    let term = 8;
    let followers: Vec<Vec<u64>> = vec![
        vec![1, 1, 1, 4, 4, 5, 5, 6, 6],          // (a) missing one entry
        vec![1, 1, 1, 4],                         // (b) missing many
        vec![1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],    // (c) one extra uncommitted entry
        vec![1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7], // (d) extra entries of a later term
        vec![1, 1, 1, 4, 4, 4, 4],                // (e) missing and extra
        vec![1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],    // (f) many entries of other terms
    ];
    for follower_terms in followers {
        let lead_hs = HardState { term, vote: 0, commit: leader_log.len() as u64 };
        let lead = new_test_raft(1, &[], 10, 1, storage_with(&[1, 2, 3], &leader_log, lead_hs));
        let follower_hs = HardState { term: term - 1, vote: 0, commit: 0 };
        let follower_log = terms_to_entries(&follower_terms);
        let follower =
            new_test_raft(2, &[], 10, 1, storage_with(&[1, 2, 3], &follower_log, follower_hs));
        // Three nodes: node 2 may have a longer log than node 1, which then needs node 3's vote.
        let mut n = Network::new(vec![NetPeer::Raft(lead), NetPeer::Raft(follower), NetPeer::Hole]);
        n.send(vec![hup(1)]);
        n.send(vec![new_message(3, 1, MessageType::RequestVoteResponse, term + 1)]);
        n.send(vec![propose(1, b"")]);
        assert_eq!(n.peer(1).state, StateType::Leader);
        assert_eq!(log_entries(n.peer(1)), log_entries(n.peer(2)), "follower {follower_terms:?}");
    }
}

/// §5.4.1: a vote request carries the candidate's last log index and term.
#[test]
fn vote_request_carries_last_log_position() {
    let cases = [(vec![entry(1, 1, b"")], 2), (vec![entry(1, 1, b""), entry(2, 2, b"")], 3)];
    for (entries, want_term) in cases {
        let mut r = raft_123();
        let m = Message {
            entries: entries.clone(),
            ..new_message(2, 1, MessageType::Append, want_term - 1)
        };
        r.step(m).unwrap();
        read_messages(&mut r);
        for _ in 1..r.election_timeout * 2 {
            r.tick_election();
        }
        let msgs = sorted(read_messages(&mut r));
        assert_eq!(msgs.len(), 2);
        let last = entries.last().unwrap();
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(
                (m.msg_type, m.to, m.term),
                (MessageType::RequestVote, i as u64 + 2, want_term)
            );
            assert_eq!((m.index, m.log_term), (last.index, last.term));
        }
    }
}

/// §5.4.1: a voter denies its vote to a candidate whose log is less up to date: compare last
/// terms, then last indexes.
#[test]
fn voter_denies_less_up_to_date_candidate() {
    let cases: Vec<(Vec<Entry>, u64, u64, bool)> = vec![
        (vec![entry(1, 1, b"")], 1, 1, false),
        (vec![entry(1, 1, b"")], 1, 2, false),
        (vec![entry(1, 1, b""), entry(1, 2, b"")], 1, 1, true),
        (vec![entry(1, 1, b"")], 2, 1, false),
        (vec![entry(1, 1, b"")], 2, 2, false),
        (vec![entry(1, 1, b""), entry(1, 2, b"")], 2, 1, false),
        (vec![entry(2, 1, b"")], 1, 1, true),
        (vec![entry(2, 1, b"")], 1, 2, true),
        (vec![entry(2, 1, b""), entry(1, 2, b"")], 1, 1, true),
    ];
    for (entries, log_term, index, want_reject) in cases {
        let storage = storage_with(&[1, 2], &entries, HardState::default());
        let mut r = new_test_raft(1, &[1, 2], 10, 1, storage);
        let m = Message { log_term, index, ..new_message(2, 1, MessageType::RequestVote, 3) };
        r.step(m).unwrap();
        let msgs = read_messages(&mut r);
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].msg_type, MessageType::RequestVoteResponse);
        assert_eq!(msgs[0].reject, want_reject, "log {entries:?} vs ({index}, {log_term})");
    }
}

/// §5.4.2: a leader commits by counting replicas only for an entry of its own term.
#[test]
fn leader_only_commits_log_from_current_term() {
    let ents = [entry(1, 1, b""), entry(2, 2, b"")];
    for (ack_index, want_commit) in [(1, 0), (2, 0), (3, 3)] {
        let storage = storage_with(&[1, 2], &ents, HardState { term: 2, vote: 0, commit: 0 });
        let mut r = new_test_raft(1, &[1, 2], 10, 1, storage);
        r.become_candidate();
        r.become_leader();
        read_messages(&mut r);
        r.step(propose(1, b"")).unwrap();
        persist(&mut r);
        let term = r.term;
        let ack =
            Message { index: ack_index, ..new_message(2, 1, MessageType::AppendResponse, term) };
        r.step(ack).unwrap();
        assert_eq!(r.raft_log.committed, want_commit, "ack of {ack_index}");
    }
}

/// §5.4.2, Figure 8: entries of an earlier term are not committed by a new leader until an
/// entry of its own term is replicated on a majority.
#[test]
fn cannot_commit_without_new_term_entry() {
    let mut tt = Network::new((0..5).map(|_| NetPeer::Default).collect());
    tt.send(vec![hup(1)]);
    // Node 1 cannot reach 3, 4, 5: its proposals reach only node 2.
    tt.cut(1, 3);
    tt.cut(1, 4);
    tt.cut(1, 5);
    tt.send(vec![propose(1, b"some data")]);
    tt.send(vec![propose(1, b"some data")]);
    assert_eq!(tt.peer(1).raft_log.committed, 1);
    tt.recover();
    // Keep node 2's no-op from being replicated, which would commit everything.
    tt.ignore(MessageType::Append);
    tt.send(vec![hup(2)]);
    assert_eq!(tt.peer(2).state, StateType::Leader);
    assert_eq!(tt.peer(2).raft_log.committed, 1, "entries of term 1 are not committed yet");
    tt.recover();
    tt.send(vec![new_message(2, 2, MessageType::Beat, 0)]);
    tt.send(vec![propose(2, b"some data")]);
    assert_eq!(tt.peer(2).raft_log.committed, 5, "a term-2 entry commits everything before it");
}

/// The configuration of a bootstrapped node comes from `peers` when the storage has none.
#[test]
fn peers_bootstrap_an_empty_storage() {
    let r = new_test_raft(1, &[1, 2, 3], 10, 1, MemoryStorage::new());
    assert_eq!(r.prs.conf_state(), ConfState { voters: vec![1, 2, 3], ..ConfState::default() });
    let votes: BTreeMap<u64, bool> = BTreeMap::new();
    assert_eq!(r.prs.votes, votes);
}
