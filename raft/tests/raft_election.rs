//! Elections: leader election and its variants, pre-vote, check-quorum and leader leases
//! (after etcd's `raft_test.go`). Each test is named after the rule it checks.

mod common;

use common::*;
use raft::{Config, Message, MessageType, StateType};

fn pre_vote(c: &mut Config) {
    c.pre_vote = true;
}

fn check_quorum(c: &mut Config) {
    c.check_quorum = true;
}

fn no_config(_: &mut Config) {}

fn run_leader_election(configure: fn(&mut Config)) {
    let pre = {
        let mut c = new_test_config(1, 10, 1);
        configure(&mut c);
        c.pre_vote
    };
    let (cand_state, cand_term) =
        if pre { (StateType::PreCandidate, 0) } else { (StateType::Candidate, 1) };
    let ids5 = [1, 2, 3, 4, 5];
    let cases: Vec<(Network, StateType, u64)> = vec![
        (
            Network::new_with_config(
                vec![NetPeer::Default, NetPeer::Default, NetPeer::Default],
                configure,
            ),
            StateType::Leader,
            1,
        ),
        (
            Network::new_with_config(
                vec![NetPeer::Default, NetPeer::Default, NetPeer::Hole],
                configure,
            ),
            StateType::Leader,
            1,
        ),
        (
            Network::new_with_config(
                vec![NetPeer::Default, NetPeer::Hole, NetPeer::Hole],
                configure,
            ),
            cand_state,
            cand_term,
        ),
        (
            Network::new_with_config(
                vec![NetPeer::Default, NetPeer::Hole, NetPeer::Hole, NetPeer::Default],
                configure,
            ),
            cand_state,
            cand_term,
        ),
        (
            Network::new_with_config(
                vec![
                    NetPeer::Default,
                    NetPeer::Hole,
                    NetPeer::Hole,
                    NetPeer::Default,
                    NetPeer::Default,
                ],
                configure,
            ),
            StateType::Leader,
            1,
        ),
        // Three logs further along than node 1's, in the same term: rejections come back
        // instead of the requests being ignored.
        (
            Network::new_with_config(
                vec![
                    NetPeer::Default,
                    NetPeer::Raft(ents_with_config(2, &ids5, &[1], configure)),
                    NetPeer::Raft(ents_with_config(3, &ids5, &[1], configure)),
                    NetPeer::Raft(ents_with_config(4, &ids5, &[1, 1], configure)),
                    NetPeer::Default,
                ],
                configure,
            ),
            StateType::Follower,
            1,
        ),
    ];
    for (i, (mut network, want_state, want_term)) in cases.into_iter().enumerate() {
        network.send(vec![hup(1)]);
        let r = network.peer(1);
        assert_eq!(r.state, want_state, "case {i}: state");
        assert_eq!(r.term, want_term, "case {i}: term");
    }
}

/// §5.2: a candidate wins with a majority, and stays a candidate (or pre-candidate) without.
#[test]
fn leader_election() {
    run_leader_election(no_config);
}

/// Thesis §9.6: the same rules hold with a pre-vote phase, which does not bump the term.
#[test]
fn leader_election_with_pre_vote() {
    run_leader_election(pre_vote);
}

fn run_leader_cycle(configure: fn(&mut Config)) {
    let mut n = Network::new_with_config(
        vec![NetPeer::Default, NetPeer::Default, NetPeer::Default],
        configure,
    );
    for campaigner in 1..=3 {
        n.send(vec![hup(campaigner)]);
        for (&id, r) in &n.peers {
            if id == campaigner {
                assert_eq!(r.state, StateType::Leader, "campaigner {campaigner}");
            } else {
                assert_eq!(r.state, StateType::Follower, "campaigner {campaigner}, peer {id}");
            }
        }
    }
}

/// Each node can be elected in turn: a leader steps down when another wins a later term.
#[test]
fn leader_cycle() {
    run_leader_cycle(no_config);
}

/// Leadership cycles with pre-vote too: a follower of an established leader grants a
/// pre-vote to an up-to-date candidate.
#[test]
fn leader_cycle_with_pre_vote() {
    run_leader_cycle(pre_vote);
}

/// A node that loses an election to a quorum aware of a later term adopts that term and wins
/// the next election, overwriting uncommitted entries of the lost term.
#[test]
fn leader_election_overwrite_newer_logs() {
    for configure in [no_config as fn(&mut Config), pre_vote] {
        let ids = [1, 2, 3, 4, 5];
        let mut n = Network::new_with_config(
            vec![
                NetPeer::Raft(ents_with_config(1, &ids, &[1], configure)), // Won the first election.
                NetPeer::Raft(ents_with_config(2, &ids, &[1], configure)), // Got its logs.
                NetPeer::Raft(ents_with_config(3, &ids, &[2], configure)), // Won the second.
                NetPeer::Raft(voted_with_config(4, &ids, 3, 2, configure)), // Voted, no logs.
                NetPeer::Raft(voted_with_config(5, &ids, 3, 2, configure)), // Voted, no logs.
            ],
            configure,
        );
        // A quorum knows of term 2: node 1 loses, but learns the term.
        n.send(vec![hup(1)]);
        assert_eq!((n.peer(1).state, n.peer(1).term), (StateType::Follower, 2));
        n.send(vec![hup(1)]);
        assert_eq!((n.peer(1).state, n.peer(1).term), (StateType::Leader, 3));
        for (&id, r) in &n.peers {
            let terms: Vec<u64> = r.raft_log.all_entries().iter().map(|e| e.term).collect();
            assert_eq!(terms, vec![1, 3], "node {id}");
        }
    }
}

fn vote_from_any_state(vote: MessageType) {
    for state in
        [StateType::Follower, StateType::PreCandidate, StateType::Candidate, StateType::Leader]
    {
        let mut r = new_test_raft(1, &[1, 2, 3], 10, 1, storage_with_peers(&[1, 2, 3]));
        r.term = 1;
        match state {
            StateType::Follower => r.become_follower(1, 3),
            StateType::PreCandidate => r.become_pre_candidate(),
            StateType::Candidate => r.become_candidate(),
            StateType::Leader => {
                r.become_candidate();
                r.become_leader();
            }
        }
        let orig_term = r.term;
        let new_term = r.term + 1;
        let m = Message { log_term: new_term, index: 42, ..new_message(2, 1, vote, new_term) };
        r.step(m).unwrap();
        let msgs = read_messages(&mut r);
        assert_eq!(msgs.len(), 1, "{state}");
        assert_eq!(msgs[0].msg_type, vote.vote_response());
        assert!(!msgs[0].reject, "{state}: {vote:?} granted");
        if vote == MessageType::RequestVote {
            assert_eq!((r.state, r.term, r.vote), (StateType::Follower, new_term, 2), "{state}");
        } else {
            // A pre-vote changes nothing.
            assert_eq!((r.state, r.term), (state, orig_term), "{state}");
            assert!(r.vote == 0 || r.vote == 1, "{state}: vote {}", r.vote);
        }
    }
}

/// §5.1: a vote request of a higher term is granted from any state (absent a lease), and a
/// real vote converts the voter to a follower of that term.
#[test]
fn vote_from_any_state_grants_higher_term() {
    vote_from_any_state(MessageType::RequestVote);
}

/// A pre-vote of a higher term is granted from any state and changes nothing.
#[test]
fn pre_vote_from_any_state_changes_nothing() {
    vote_from_any_state(MessageType::RequestPreVote);
}

/// §5.2: dueling candidates: the one without a quorum stays candidate, then disrupts the
/// leader with its higher term but cannot win with a shorter log.
#[test]
fn dueling_candidates() {
    let mut n = Network::new(vec![NetPeer::Default, NetPeer::Default, NetPeer::Default]);
    n.cut(1, 3);
    n.send(vec![hup(1)]);
    n.send(vec![hup(3)]);
    assert_eq!(n.peer(1).state, StateType::Leader);
    assert_eq!(n.peer(3).state, StateType::Candidate);
    n.recover();
    // Node 3 campaigns at term 2; 1 and 2 reject it (its log lacks the no-op) but adopt term 2.
    n.send(vec![hup(3)]);
    let want_log = vec![(1, 1, vec![])];
    for (id, want_state, want_term, want_log, want_commit) in [
        (1, StateType::Follower, 2, want_log.clone(), 1),
        (2, StateType::Follower, 2, want_log, 1),
        (3, StateType::Follower, 2, vec![], 0),
    ] {
        let r = n.peer(id);
        assert_eq!((r.state, r.term), (want_state, want_term), "node {id}");
        assert_eq!(log_entries(r), want_log, "node {id}");
        assert_eq!(r.raft_log.committed, want_commit, "node {id}");
    }
}

/// Thesis §9.6: with pre-vote, a candidate that cannot win does not disrupt the leader.
#[test]
fn dueling_pre_candidates() {
    let mut n = Network::new_with_config(
        vec![NetPeer::Default, NetPeer::Default, NetPeer::Default],
        pre_vote,
    );
    n.cut(1, 3);
    n.send(vec![hup(1)]);
    n.send(vec![hup(3)]);
    assert_eq!(n.peer(1).state, StateType::Leader);
    assert_eq!(n.peer(3).state, StateType::Follower, "pre-vote rejected");
    n.recover();
    n.send(vec![hup(3)]);
    assert_eq!((n.peer(1).state, n.peer(1).term), (StateType::Leader, 1));
    assert_eq!((n.peer(2).state, n.peer(2).term), (StateType::Follower, 1));
    assert_eq!((n.peer(3).state, n.peer(3).term), (StateType::Follower, 1));
    assert_eq!(log_entries(n.peer(3)), vec![], "node 3's log is not yet repaired");
}

/// §5.2: a candidate concedes to a leader of its term and takes its log.
#[test]
fn candidate_concede() {
    let mut n = Network::new(vec![NetPeer::Default, NetPeer::Default, NetPeer::Default]);
    n.isolate(1);
    n.send(vec![hup(1)]);
    n.send(vec![hup(3)]);
    n.recover();
    // Node 3's heartbeat makes candidate 1 concede.
    n.send(vec![new_message(3, 3, MessageType::Beat, 0)]);
    n.send(vec![propose(3, b"force follower")]);
    n.send(vec![new_message(3, 3, MessageType::Beat, 0)]);
    assert_eq!((n.peer(1).state, n.peer(1).term), (StateType::Follower, 1));
    let want = vec![(1, 1, vec![]), (2, 1, b"force follower".to_vec())];
    for id in 1..=3 {
        assert_eq!(log_entries(n.peer(id)), want, "node {id}");
        assert_eq!(n.peer(id).raft_log.committed, 2, "node {id}");
    }
}

/// A single-voter cluster elects itself on its own vote.
#[test]
fn single_node_candidate() {
    let mut n = Network::new(vec![NetPeer::Default]);
    n.send(vec![hup(1)]);
    assert_eq!(n.peer(1).state, StateType::Leader);
    let mut n = Network::new_with_config(vec![NetPeer::Default], pre_vote);
    n.send(vec![hup(1)]);
    assert_eq!(n.peer(1).state, StateType::Leader, "with pre-vote");
}

/// §5.1: messages from an old leader's term are ignored; the current log is untouched.
#[test]
fn old_messages_are_ignored() {
    let mut n = Network::new(vec![NetPeer::Default, NetPeer::Default, NetPeer::Default]);
    n.send(vec![hup(1)]);
    n.send(vec![hup(2)]);
    n.send(vec![hup(1)]);
    // Leader 1 is at term 3; an append from term 2 arrives late.
    let stale =
        Message { entries: vec![entry(2, 3, b"")], ..new_message(2, 1, MessageType::Append, 2) };
    n.send(vec![stale]);
    n.send(vec![propose(1, b"somedata")]);
    let want = vec![(1, 1, vec![]), (2, 2, vec![]), (3, 3, vec![]), (4, 3, b"somedata".to_vec())];
    for id in 1..=3 {
        assert_eq!(log_entries(n.peer(id)), want, "node {id}");
        assert_eq!(n.peer(id).raft_log.committed, 4, "node {id}");
    }
}

/// A follower that times out with its leader's heartbeat delayed disrupts the leader: the
/// leader steps down on the candidate's higher-term answer (check-quorum without pre-vote).
#[test]
fn disruptive_follower_without_pre_vote() {
    let mut n = Network::new_with_config(
        vec![NetPeer::Default, NetPeer::Default, NetPeer::Default],
        check_quorum,
    );
    n.send(vec![hup(1)]);
    assert_eq!(n.states().values().filter(|s| **s == StateType::Leader).count(), 1);
    let n3 = n.peer_mut(3);
    n3.randomized_election_timeout = n3.election_timeout + 2;
    for _ in 0..n3.randomized_election_timeout {
        n3.tick();
    }
    assert_eq!(n.peer(3).state, StateType::Candidate);
    assert_eq!((n.peer(1).term, n.peer(3).term), (1, 2));
    // The leader's delayed heartbeat arrives with a lower term; the candidate's answer
    // carries its higher term and deposes the leader.
    let term = n.peer(1).term;
    n.send(vec![new_message(1, 3, MessageType::Heartbeat, term)]);
    assert_eq!(n.peer(1).state, StateType::Follower);
    assert_eq!(n.peer(3).state, StateType::Candidate);
    // Node 2 has not heard of term 2 yet.
    assert_eq!((n.peer(1).term, n.peer(2).term, n.peer(3).term), (2, 1, 2));
}

/// Thesis §9.6: with pre-vote, a rejoining follower with a stale log cannot disrupt the
/// leader: it stays a pre-candidate and the term does not move.
#[test]
fn disruptive_follower_with_pre_vote_cannot_disrupt() {
    let mut n = Network::new_with_config(
        vec![NetPeer::Default, NetPeer::Default, NetPeer::Default],
        check_quorum,
    );
    n.send(vec![hup(1)]);
    n.isolate(3);
    for _ in 0..3 {
        n.send(vec![propose(1, b"somedata")]);
    }
    for r in n.peers.values_mut() {
        r.pre_vote = true;
    }
    n.recover();
    n.send(vec![hup(3)]);
    assert_eq!(n.peer(1).state, StateType::Leader);
    assert_eq!(n.peer(3).state, StateType::PreCandidate);
    assert!(n.peers.values().all(|r| r.term == 1));
    let term = n.peer(1).term;
    n.send(vec![new_message(1, 3, MessageType::Heartbeat, term)]);
    assert_eq!(n.peer(1).state, StateType::Leader, "a delayed heartbeat deposes nobody");
}

/// Thesis §9.6: a node cut off from the cluster does not inflate its term with pre-vote, and
/// rejoins under the same leader and term once healed.
#[test]
fn pre_vote_prevents_term_inflation_by_a_partitioned_node() {
    let mut n = Network::new_with_config(
        vec![NetPeer::Default, NetPeer::Default, NetPeer::Default],
        pre_vote,
    );
    n.send(vec![hup(1)]);
    n.isolate(3);
    for _ in 0..10 {
        n.send(vec![hup(3)]);
    }
    assert_eq!(n.peer(3).term, 1, "pre-candidate does not bump the term");
    assert_eq!(n.peer(3).state, StateType::PreCandidate);
    n.recover();
    n.send(vec![new_message(1, 1, MessageType::Beat, 0)]);
    n.send(vec![propose(1, b"after heal")]);
    assert_eq!((n.peer(1).state, n.peer(1).term), (StateType::Leader, 1));
    assert_eq!((n.peer(3).state, n.peer(3).lead), (StateType::Follower, 1));
    assert_eq!(log_entries(n.peer(3)), log_entries(n.peer(1)));

    // Without pre-vote the same partition inflates the term and deposes the leader on heal.
    let mut n = Network::new(vec![NetPeer::Default, NetPeer::Default, NetPeer::Default]);
    n.send(vec![hup(1)]);
    n.isolate(3);
    for _ in 0..10 {
        n.send(vec![hup(3)]);
    }
    assert_eq!(n.peer(3).term, 11);
    n.recover();
    n.send(vec![hup(3)]);
    assert_eq!(n.peer(1).state, StateType::Follower, "the leader is deposed");
    assert_eq!(n.peer(1).term, 12, "and the cluster adopts the inflated term");
}

/// A node with a smaller term whose pre-vote was rejected can still complete a later
/// election once the leader is gone (etcd TestNodeWithSmallerTermCanCompleteElection).
#[test]
fn node_with_smaller_term_can_complete_election() {
    let mut n = Network::new_with_config(
        vec![NetPeer::Default, NetPeer::Default, NetPeer::Default],
        pre_vote,
    );
    n.cut(1, 3);
    n.cut(2, 3);
    n.send(vec![hup(1)]);
    assert_eq!(n.peer(1).state, StateType::Leader);
    n.send(vec![hup(3)]);
    assert_eq!(n.peer(3).state, StateType::PreCandidate);
    n.send(vec![hup(2)]);
    assert_eq!((n.peer(1).term, n.peer(2).term, n.peer(3).term), (2, 2, 0));
    assert_eq!(n.peer(2).state, StateType::Leader);
    n.recover();
    // Leader 2 crashes.
    n.isolate(2);
    n.send(vec![hup(3)]);
    n.send(vec![hup(1)]);
    let leaders = [1, 3].iter().filter(|&&id| n.peer(id).state == StateType::Leader).count();
    assert_eq!(leaders, 1, "a new leader is elected");
}

/// Check-quorum: a leader that keeps hearing from a quorum stays leader.
#[test]
fn leader_stays_when_quorum_active() {
    let mut r = new_test_raft(1, &[1, 2, 3], 5, 1, storage_with_peers(&[1, 2, 3]));
    r.check_quorum = true;
    r.become_candidate();
    r.become_leader();
    for _ in 0..=r.election_timeout {
        let term = r.term;
        r.step(new_message(2, 1, MessageType::HeartbeatResponse, term)).unwrap();
        r.tick();
    }
    assert_eq!(r.state, StateType::Leader);
}

/// Check-quorum: a leader that has not heard from a quorum within an election timeout steps
/// down.
#[test]
fn leader_steps_down_when_quorum_lost() {
    let mut r = new_test_raft(1, &[1, 2, 3], 5, 1, storage_with_peers(&[1, 2, 3]));
    r.check_quorum = true;
    r.become_candidate();
    r.become_leader();
    for _ in 0..=r.election_timeout {
        r.tick();
    }
    assert_eq!(r.state, StateType::Follower);
}

/// Check-quorum leases: a follower that heard from the leader within the election timeout
/// ignores vote requests; once the timeout has passed it votes.
#[test]
fn leader_superseding_with_check_quorum() {
    let mut n = Network::new_with_config(
        vec![NetPeer::Default, NetPeer::Default, NetPeer::Default],
        check_quorum,
    );
    expire_lease(n.peer_mut(2));
    n.send(vec![hup(1)]);
    assert_eq!(n.peer(1).state, StateType::Leader);
    assert_eq!(n.peer(3).state, StateType::Follower);
    n.send(vec![hup(3)]);
    assert_eq!(n.peer(3).state, StateType::Candidate, "node 2 is in its lease and ignores 3");
    let b = n.peer_mut(2);
    for _ in 0..b.election_timeout {
        b.tick();
    }
    n.send(vec![hup(3)]);
    assert_eq!(n.peer(3).state, StateType::Leader);
}

/// Check-quorum: an election still succeeds when the voters' leases have expired.
#[test]
fn leader_election_with_check_quorum() {
    let mut n = Network::new_with_config(
        vec![NetPeer::Default, NetPeer::Default, NetPeer::Default],
        check_quorum,
    );
    n.peer_mut(1).randomized_election_timeout = 11;
    n.peer_mut(2).randomized_election_timeout = 12;
    n.send(vec![hup(1)]);
    assert_eq!(n.peer(1).state, StateType::Leader);
    assert_eq!(n.peer(3).state, StateType::Follower);
    n.peer_mut(1).randomized_election_timeout = 11;
    n.peer_mut(2).randomized_election_timeout = 12;
    for id in [1, 2] {
        let r = n.peer_mut(id);
        for _ in 0..r.election_timeout {
            r.tick();
        }
    }
    n.send(vec![hup(3)]);
    assert_eq!(n.peer(1).state, StateType::Follower);
    assert_eq!(n.peer(3).state, StateType::Leader);
}

/// Check-quorum: a candidate stuck at a higher term (its requests ignored under lease) is
/// freed when the leader learns of its term, after which it can win.
#[test]
fn free_stuck_candidate_with_check_quorum() {
    let mut n = Network::new_with_config(
        vec![NetPeer::Default, NetPeer::Default, NetPeer::Default],
        check_quorum,
    );
    expire_lease(n.peer_mut(2));
    n.send(vec![hup(1)]);
    n.isolate(1);
    n.send(vec![hup(3)]);
    assert_eq!(n.peer(2).state, StateType::Follower);
    assert_eq!(n.peer(3).state, StateType::Candidate);
    assert_eq!(n.peer(3).term, n.peer(2).term + 1);
    n.send(vec![hup(3)]);
    assert_eq!(n.peer(3).term, n.peer(2).term + 2);
    n.recover();
    let term = n.peer(1).term;
    n.send(vec![new_message(1, 3, MessageType::Heartbeat, term)]);
    assert_eq!(n.peer(1).state, StateType::Follower, "the stuck candidate's term deposes 1");
    assert_eq!(n.peer(3).term, n.peer(1).term);
    n.send(vec![hup(3)]);
    assert_eq!(n.peer(3).state, StateType::Leader);
}

/// A node outside the voter set never campaigns, and follows the leader.
#[test]
fn non_promotable_voter_with_check_quorum() {
    let mut a_config = new_test_config(1, 10, 1);
    a_config.check_quorum = true;
    let a = new_test_raft_with_config(&a_config, storage_with_peers(&[1, 2]));
    let mut b_config = new_test_config(2, 10, 1);
    b_config.check_quorum = true;
    // Node 2's configuration does not include itself.
    let b = new_test_raft_with_config(&b_config, storage_with_peers(&[1]));
    let mut n = Network::new(vec![NetPeer::Raft(a), NetPeer::Raft(b)]);
    assert!(!n.peer(2).promotable());
    let b = n.peer_mut(2);
    b.randomized_election_timeout = b.election_timeout + 1;
    for _ in 0..b.election_timeout * 3 {
        b.tick();
    }
    assert!(b.msgs.is_empty(), "a non-voter never campaigns");
    n.send(vec![hup(1)]);
    assert_eq!(n.peer(1).state, StateType::Leader);
    assert_eq!((n.peer(2).state, n.peer(2).lead), (StateType::Follower, 1));
}

/// A candidate that hears a heartbeat or append of its term resets to follower of that leader.
#[test]
fn candidate_resets_term_on_heartbeat_or_append() {
    for msg_type in [MessageType::Heartbeat, MessageType::Append] {
        let mut n = Network::new(vec![NetPeer::Default, NetPeer::Default, NetPeer::Default]);
        n.send(vec![hup(1)]);
        assert_eq!(n.peer(3).state, StateType::Follower);
        n.isolate(3);
        n.send(vec![hup(2)]);
        n.send(vec![hup(1)]);
        assert_eq!(n.peer(1).state, StateType::Leader);
        // Node 3 times out alone and becomes candidate at a higher term.
        let c = n.peer_mut(3);
        c.randomized_election_timeout = c.election_timeout + 1;
        for _ in 0..c.randomized_election_timeout {
            c.tick();
        }
        assert_eq!(n.peer(3).state, StateType::Candidate);
        assert!(n.peer(3).term < n.peer(1).term);
        n.recover();
        let term = n.peer(1).term;
        n.send(vec![new_message(1, 3, msg_type, term)]);
        assert_eq!(n.peer(3).state, StateType::Follower, "{msg_type:?}");
        assert_eq!(n.peer(3).term, term, "{msg_type:?}: the candidate takes the leader's term");
    }
}

/// A node of any role receiving a message of a higher term becomes a follower of that term;
/// an append names the leader.
#[test]
fn all_server_stepdown() {
    for state in [StateType::Follower, StateType::Candidate, StateType::Leader] {
        for msg_type in [MessageType::RequestVote, MessageType::Append] {
            let mut r = new_test_raft(1, &[1, 2, 3], 10, 1, storage_with_peers(&[1, 2, 3]));
            match state {
                StateType::Follower => r.become_follower(1, 0),
                StateType::Candidate => r.become_candidate(),
                _ => {
                    r.become_candidate();
                    r.become_leader();
                }
            }
            let m = Message { log_term: 3, ..new_message(2, 1, msg_type, 3) };
            r.step(m).unwrap();
            assert_eq!((r.state, r.term), (StateType::Follower, 3), "{state} {msg_type:?}");
            let want_lead = if msg_type == MessageType::Append { 2 } else { 0 };
            assert_eq!(r.lead, want_lead, "{state} {msg_type:?}");
        }
    }
}

/// A follower becoming leader directly is a bug.
#[test]
#[should_panic(expected = "invalid transition [follower -> leader]")]
fn state_transition_follower_to_leader_panics() {
    let mut r = new_test_raft(1, &[1, 2], 10, 1, storage_with_peers(&[1, 2]));
    r.become_leader();
}

/// A leader becoming candidate directly is a bug.
#[test]
#[should_panic(expected = "invalid transition [leader -> candidate]")]
fn state_transition_leader_to_candidate_panics() {
    let mut r = new_test_raft(1, &[1, 2], 10, 1, storage_with_peers(&[1, 2]));
    r.become_candidate();
    r.become_leader();
    r.become_candidate();
}

/// An election timeout elapses with probability rising with the elapsed ticks, and always
/// by twice the configured timeout.
#[test]
fn past_election_timeout_is_randomized_within_bounds() {
    let cases = [(5, 0.0), (10, 0.1), (13, 0.4), (15, 0.6), (18, 0.9), (20, 1.0)];
    for (elapsed, want_p) in cases {
        let mut r = new_test_raft(1, &[1], 10, 1, storage_with_peers(&[1]));
        r.election_elapsed = elapsed;
        let rounds = 10_000;
        let mut hits = 0;
        for _ in 0..rounds {
            r.reset_randomized_election_timeout();
            if r.past_election_timeout() {
                hits += 1;
            }
        }
        let p = (hits as f64 / rounds as f64 * 100.0).round() / 100.0;
        assert!((p - want_p).abs() <= 0.02, "elapsed {elapsed}: p = {p}, want {want_p}");
    }
}
