//! Client sessions on real processes (Raft thesis §6.3, issue 15 item 4): a retry is applied
//! at most once, and a retry whose session is gone is refused with `SessionExpired`, never
//! applied a second time.

mod common;

use std::time::Duration;

use common::*;
use raftd::protocol::*;

fn put(key: &str, value: &str) -> Op {
    Op::Put { key: key.into(), value: value.into() }
}

/// Before sessions were registered, the table forgot the least recently used client in
/// silence; the client's retry then opened a fresh session and was applied again, undoing a
/// later acknowledged write of another client.
#[test]
fn a_retry_after_its_session_was_evicted_is_refused_not_applied_twice() {
    let cluster = TestCluster::start(3, &["--max-sessions", "2"]);
    let a = cluster.register_session();
    cluster.write_in(a, 1, put("x", "1")).unwrap();
    // A retry while the session is held: the first reply, not a second application.
    let b = cluster.register_session();
    cluster.write_in(b, 1, put("x", "2")).unwrap();
    // Two more sessions: a, the least recently active, is evicted.
    cluster.register_session();
    cluster.register_session();
    // a's write again, as after a lost reply: refused, and x keeps b's acknowledged write.
    let retry = cluster.write_in(a, 1, put("x", "1"));
    assert_eq!(retry, Err(ClientError::SessionExpired { session_id: a }), "{}", cluster.logs());
    assert_eq!(cluster.get("x"), Some(b"2".to_vec()));
    // A new write of a is refused as well: a client must register again.
    let next = cluster.write_in(a, 2, put("y", "1"));
    assert_eq!(next, Err(ClientError::SessionExpired { session_id: a }));
    assert_eq!(cluster.get("y"), None);
}

#[test]
fn a_retry_while_its_session_is_held_gets_the_first_reply() {
    let cluster = TestCluster::start(3, &[]);
    let a = cluster.register_session();
    let cas = Op::Cas { key: b"n".to_vec(), expected: None, new: b"1".to_vec() };
    let first = cluster.write_in(a, 1, cas.clone()).unwrap();
    let b = cluster.register_session();
    cluster.write_in(b, 1, put("n", "2")).unwrap();
    assert_eq!(cluster.write_in(a, 1, cas).unwrap(), first);
    assert_eq!(cluster.get("n"), Some(b"2".to_vec()), "the retry did not swap again");
}

/// Retries of a write that arrive while it is in flight wait on it with the first: every one
/// gets the first's reply, and the write applies once (the leader keeps the first waiter of a
/// write apart from any further ones).
#[test]
fn retries_of_a_write_in_flight_all_get_its_reply_and_it_applies_once() {
    let cluster = TestCluster::start(1, &[]);
    let leader = cluster.wait_for_leader();
    let session_id = cluster.register_session();
    let mut stream = cluster.procs[leader as usize - 1].wait_client().into_stream();
    let cas = Op::Cas { key: b"r".to_vec(), expected: None, new: b"1".to_vec() };
    // Written back to back, before any reply: the later ones arrive while the first is in
    // flight (or in the same batch).
    for request_id in 1..=3 {
        let request = ClientRequest::Kv { request_id, session_id, seq: 1, op: cas.clone() };
        write_frame(&mut stream, &request).unwrap();
    }
    let mut replies = std::collections::BTreeMap::new();
    while replies.len() < 3 {
        match read_frame::<ClientResponse>(&mut stream).unwrap() {
            ClientResponse::Kv { request_id, result } => replies.insert(request_id, result),
            other => panic!("unexpected {other:?}"),
        };
    }
    let first = replies[&1].clone().unwrap();
    assert!(matches!(first.result, OpResult::Cas { swapped: true, previous: None }), "{first:?}");
    assert!(replies.values().all(|r| r.as_ref() == Ok(&first)), "{replies:?}");
    let again = Op::Cas { key: b"r".to_vec(), expected: None, new: b"2".to_vec() };
    let next = cluster.write_in(session_id, 2, again).unwrap();
    assert!(matches!(next.result, OpResult::Cas { swapped: false, .. }), "applied once: {next:?}");
}

/// Sessions expire by the leaders' clocks carried in the log: a session idle past
/// `--session-ttl-secs` is gone on every node, and its retry refused.
#[test]
fn a_session_idle_past_its_ttl_expires_and_its_retry_is_refused() {
    let cluster = TestCluster::start(3, &["--session-ttl-secs", "1"]);
    let a = cluster.register_session();
    cluster.write_in(a, 1, put("x", "1")).unwrap();
    let b = cluster.register_session();
    cluster.write_in(b, 1, put("x", "2")).unwrap();
    // Wall-clock time passes (at least this long, however slow the machine): the next command
    // a leader stamps is more than the TTL after a's last write.
    std::thread::sleep(Duration::from_millis(2_500));
    let retry = cluster.write_in(a, 1, put("x", "1"));
    assert_eq!(retry, Err(ClientError::SessionExpired { session_id: a }), "{}", cluster.logs());
    assert_eq!(cluster.get("x"), Some(b"2".to_vec()));
    // A fresh session writes as usual.
    let c = cluster.register_session();
    cluster.write_in(c, 1, put("x", "3")).unwrap();
    assert_eq!(cluster.get("x"), Some(b"3".to_vec()));
}

/// Issue 16: a compare-and-swap's reply holds the value it replaced, and every session keeps
/// its last reply. Bounded by count only, sessions could hold a request's worth of bytes each.
/// Past `--max-session-reply-bytes` the least recently active sessions are forgotten, and a
/// retry in one of them is refused, not applied again.
#[test]
fn sessions_past_the_reply_bytes_bound_are_forgotten_and_their_retries_refused() {
    const MIB: usize = 1 << 20;
    let cluster = TestCluster::start(3, &["--max-session-reply-bytes", "3000000"]);
    let value = |n: u8| vec![n; MIB];
    let swap = |from: u8, to: u8| Op::Cas {
        key: b"k".to_vec(),
        expected: Some(value(from)),
        new: value(to),
    };
    let writer = cluster.register_session();
    cluster.write_in(writer, 1, Op::Put { key: b"k".to_vec(), value: value(0) }).unwrap();
    // Three sessions each swap out a 1 MiB value: three replies of 1 MiB do not fit in 3 MB.
    let swappers: Vec<u64> = (0..3).map(|_| cluster.register_session()).collect();
    let mut replies = Vec::new();
    for (n, &session) in swappers.iter().enumerate() {
        let reply = cluster.write_in(session, 1, swap(n as u8, n as u8 + 1)).unwrap();
        assert!(matches!(reply.result, OpResult::Cas { swapped: true, .. }), "{reply:?}");
        replies.push(reply);
    }
    // The oldest swapper is forgotten: its retry is refused, and the value stays the last one.
    let retry = cluster.write_in(swappers[0], 1, swap(0, 1));
    let refused = Err(ClientError::SessionExpired { session_id: swappers[0] });
    assert_eq!(retry, refused, "{}", cluster.logs());
    assert_eq!(cluster.get("k"), Some(value(3)));
    // The newer ones still answer a retry with their first reply.
    for n in 1..3 {
        assert_eq!(
            cluster.write_in(swappers[n], 1, swap(n as u8, n as u8 + 1)),
            Ok(replies[n].clone())
        );
    }
}
