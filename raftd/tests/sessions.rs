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
