//! Membership requests with bad input are refused with a clear error (issue 16, item 5), on
//! real processes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use raftd::protocol::*;

fn refusal(reply: Result<AdminReply, ClientError>) -> String {
    match reply {
        Err(ClientError::Refused(why)) => why,
        other => panic!("not refused: {other:?}"),
    }
}

/// Before, `member add-learner` took `u64::MAX` and an address that does not parse, and a
/// learner was promoted however far behind it was.
#[test]
fn invalid_membership_requests_are_refused_with_the_reason() {
    let cluster = TestCluster::start(3, &["--allow-fault-injection"]);
    let leader = cluster.wait_for_leader();
    let mut admin = cluster.procs[leader as usize - 1].client().unwrap();
    let add = |id: u64, addr: &str| AdminRequest::AddLearner { id, addr: addr.into() };
    let why = refusal(admin.admin(add(u64::MAX, "127.0.0.1:7009")).unwrap());
    assert!(why.contains("above the largest"), "{why}");
    let why = refusal(admin.admin(add(0, "127.0.0.1:7009")).unwrap());
    assert!(why.contains("reserved"), "{why}");
    for bad in ["notanaddr", "bad host:7009", "-node:7009", "300.1.1.1:7009", "host:port"] {
        let why = refusal(admin.admin(add(6, bad)).unwrap());
        assert!(why.contains("not HOST:PORT"), "{bad}: {why}");
    }
    let why = refusal(admin.admin(add(6, "127.0.0.1:0")).unwrap());
    assert!(why.contains("port 0"), "{why}");
    let taken = cluster.procs[0].peer_addr.clone();
    let why = refusal(admin.admin(add(6, &taken)).unwrap());
    assert!(why.contains("already node 1's"), "{why}");
    let why = refusal(admin.admin(add(2, "127.0.0.1:7009")).unwrap());
    assert!(why.contains("already a member"), "{why}");
    // A member added again at its own address (a retry whose first answer was lost) is told
    // it is a member, not that its address is taken (by itself).
    let own = cluster.procs[1].peer_addr.clone();
    let why = refusal(admin.admin(add(2, &own)).unwrap());
    assert!(why.contains("node 2 is already a member"), "{why}");
    let why = refusal(admin.admin(AdminRequest::Promote { id: 9 }).unwrap());
    assert!(why.contains("not a learner"), "{why}");

    // A learner that runs but is cut off from the leader's appends, 1,100 entries behind:
    // not promoted until it catches up.
    let mut learner = joiner(&cluster, 4, &[]);
    learner.start();
    let reply = admin.admin(add(4, &learner.peer_addr.clone())).unwrap();
    assert!(reply.is_ok(), "{reply:?}");
    let cut = AdminRequest::Fault { drop_to: vec![4], drop_from: vec![4], delay_ms: 0 };
    admin.admin(cut).unwrap().unwrap();
    admin.register_session().unwrap().unwrap();
    for seq in 1..=1100u64 {
        let op = Op::Put { key: format!("k{seq}").into_bytes(), value: b"v".to_vec() };
        admin.kv_with_seq(op, seq).unwrap().unwrap();
    }
    // Refused while its incarnation is being recorded (the hello still gets through), then
    // for its lag.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let why = refusal(admin.admin(AdminRequest::Promote { id: 4 }).unwrap());
        if why.contains("not in sync") {
            break;
        }
        assert!(
            why.contains("not recorded") || why.contains("already pending"),
            "promotion refused for another reason: {why}"
        );
        assert!(Instant::now() < deadline, "never refused for lag: {why}");
        std::thread::sleep(Duration::from_millis(50));
    }
    admin.admin(AdminRequest::Heal).unwrap().unwrap();
    // Caught up, it is promoted.
    let reply = promote(&mut admin, 4);
    assert!(
        matches!(&reply, Ok(AdminReply::Membership { voters, .. }) if voters.contains(&4)),
        "{reply:?}"
    );
}
