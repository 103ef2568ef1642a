//! Real raftd processes on 127.0.0.1: election, replication, crashes, restarts, bad input.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use raftd::protocol::*;

#[test]
fn three_nodes_elect_a_leader_and_replicate_puts() {
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_for_leader();
    for i in 0..20 {
        cluster.put(&format!("k{i}"), &format!("v{i}"));
    }
    for i in 0..20 {
        assert_eq!(cluster.get(&format!("k{i}")), Some(format!("v{i}").into_bytes()));
    }
    // Every node applies the same writes: a serializable read on each eventually sees them.
    for p in &cluster.procs {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut c = p.wait_client();
            let got = c.kv(Op::Get { key: b"k19".to_vec(), serializable: true }).unwrap();
            if let Ok(KvReply { result: OpResult::Get(Some(v)), .. }) = got {
                assert_eq!(v, b"v19");
                break;
            }
            assert!(Instant::now() < deadline, "node {} never applied k19", p.id);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_follower_answers_writes_with_the_leader_and_reads_linearizably() {
    let cluster = TestCluster::start(3, &[]);
    // On a loaded machine the leader may change between asking and writing: ask again until
    // a follower answers with a redirect.
    let deadline = Instant::now() + DEADLINE;
    let mut c = loop {
        let leader = cluster.wait_for_leader();
        let follower = (1..=3).find(|&id| id != leader).unwrap();
        let mut c = cluster.procs[follower as usize - 1].wait_client();
        match c.kv(Op::Put { key: b"a".to_vec(), value: b"1".to_vec() }).unwrap() {
            Err(ClientError::NotLeader { leader_id, leader_addr }) if leader_id != 0 => {
                assert_ne!(leader_id, follower, "a follower does not name itself");
                assert_eq!(
                    leader_addr.as_deref(),
                    Some(cluster.procs[leader_id as usize - 1].client_addr.as_str())
                );
                break c;
            }
            other => assert!(Instant::now() < deadline, "no redirect from a follower: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    cluster.put("a", "1");
    // A linearizable read through the follower sees the completed write.
    let got = c.kv(Op::Get { key: b"a".to_vec(), serializable: false }).unwrap().unwrap();
    assert_eq!(got.result, OpResult::Get(Some(b"1".to_vec())));
}

/// A follower asks the leader for a read index. If the request (or its answer) is lost, the
/// follower asks again with the same context: the read is answered once the link is back, not
/// left waiting until the request times out.
#[test]
fn a_follower_read_whose_read_index_request_was_lost_is_asked_again() {
    // The request timeout is under the test client's 10 s socket timeout: without asking again,
    // the read is answered Timeout.
    let cluster = TestCluster::start(3, &["--allow-fault-injection", "--request-timeout-ms=8000"]);
    let leader = cluster.wait_for_leader();
    cluster.put("a", "1");
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let proc = &cluster.procs[follower as usize - 1];
    let mut admin = proc.wait_client();
    let deadline = Instant::now() + DEADLINE;
    while admin.status().unwrap().leader != leader {
        assert!(Instant::now() < deadline, "node {follower} never heard of leader {leader}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut reader = proc.wait_client();
    // The follower still hears the leader (it stays a follower that knows its leader), but
    // what it sends the leader is lost: its read index request among them.
    let lose = AdminRequest::Fault { drop_to: vec![leader], drop_from: vec![], delay_ms: 0 };
    admin.admin(lose).unwrap().unwrap();
    let asked = Instant::now();
    let read =
        std::thread::spawn(move || reader.kv(Op::Get { key: b"a".to_vec(), serializable: false }));
    // Long enough for the request to reach the follower and be lost; shorter than an election
    // timeout, so that the leader keeps its place.
    std::thread::sleep(Duration::from_millis(150));
    admin.admin(AdminRequest::Heal).unwrap().unwrap();
    let got = read.join().unwrap().unwrap();
    assert_eq!(
        got.map(|r| r.result),
        Ok(OpResult::Get(Some(b"1".to_vec()))),
        "after {:?}: {}",
        asked.elapsed(),
        cluster.logs()
    );
}

#[test]
fn a_retried_write_is_applied_once() {
    let cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_for_leader();
    let mut c = cluster.procs[leader as usize - 1].client().unwrap();
    let incr = |expected: &str, new: &str| Op::Cas {
        key: b"n".to_vec(),
        expected: Some(expected.into()),
        new: new.into(),
    };
    c.kv(Op::Put { key: b"n".to_vec(), value: b"0".to_vec() }).unwrap().unwrap();
    let first = c.kv(incr("0", "1")).unwrap().unwrap();
    let seq = 2;
    // The same (session_id, seq) again, as after a lost reply: same answer, no second swap.
    let retry = c.kv_with_seq(incr("0", "1"), seq).unwrap().unwrap();
    assert_eq!(retry, first);
    let now = c.kv(Op::Get { key: b"n".to_vec(), serializable: false }).unwrap().unwrap();
    assert_eq!(now.result, OpResult::Get(Some(b"1".to_vec())));
}

#[test]
fn a_follower_killed_and_restarted_catches_up() {
    let mut cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_for_leader();
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    cluster.put("before", "1");
    cluster.node(follower).kill();
    for i in 0..50 {
        cluster.put(&format!("while-down-{i}"), "x");
    }
    cluster.node(follower).start();
    let mut c = cluster.node(follower).wait_client();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let status = c.status().unwrap();
        let leader_commit =
            cluster.procs[leader as usize - 1].client().unwrap().status().unwrap().commit;
        if status.applied >= leader_commit {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "follower stuck at {}: {}",
            status.applied,
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let got =
        c.kv(Op::Get { key: b"while-down-49".to_vec(), serializable: true }).unwrap().unwrap();
    assert_eq!(got.result, OpResult::Get(Some(b"x".to_vec())));
}

#[test]
fn the_leader_killed_a_new_one_has_every_acknowledged_write() {
    let mut cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_for_leader();
    for i in 0..30 {
        cluster.put(&format!("k{i}"), "acked");
    }
    cluster.node(leader).kill();
    let new_leader = cluster.wait_for_leader();
    assert_ne!(new_leader, leader);
    for i in 0..30 {
        assert_eq!(cluster.get(&format!("k{i}")), Some(b"acked".to_vec()), "k{i} lost");
    }
    cluster.put("after", "1");
    cluster.node(leader).start();
    cluster.wait_for_leader();
    assert_eq!(cluster.get("after"), Some(b"1".to_vec()));
}

#[test]
fn a_node_restarted_after_snapshots_recovers_from_snapshot_and_wal() {
    let mut cluster = TestCluster::start(3, &["--snapshot-entries", "25"]);
    cluster.wait_for_leader();
    for i in 0..120 {
        cluster.put(&format!("k{i}"), &format!("v{i}"));
    }
    for id in 1..=3 {
        cluster.node(id).kill();
    }
    for id in 1..=3 {
        cluster.node(id).start();
    }
    cluster.wait_for_leader();
    for i in (0..120).step_by(7) {
        assert_eq!(cluster.get(&format!("k{i}")), Some(format!("v{i}").into_bytes()));
    }
    let status = cluster.procs[0].wait_client().status().unwrap();
    assert!(status.snapshot_index >= 100, "snapshots were taken: {status:?}");
}

#[test]
fn a_follower_far_behind_is_sent_a_snapshot_in_chunks() {
    let mut cluster =
        TestCluster::start(3, &["--snapshot-entries", "50", "--snapshot-catchup-entries", "10"]);
    let leader = cluster.wait_for_leader();
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    cluster.node(follower).kill();
    // Enough data to need several chunks, and enough entries to compact past the follower.
    let big = "x".repeat(100_000);
    for i in 0..1100 {
        let value = if i % 100 == 0 { big.as_str() } else { "small" };
        cluster.put(&format!("k{i}"), value);
    }
    cluster.procs[leader as usize - 1]
        .client()
        .unwrap()
        .admin(AdminRequest::Snapshot)
        .unwrap()
        .unwrap();
    cluster.node(follower).start();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut c = cluster.node(follower).wait_client();
        let got = c.kv(Op::Get { key: b"k1099".to_vec(), serializable: true }).unwrap();
        if let Ok(KvReply { result: OpResult::Get(Some(v)), .. }) = got {
            assert_eq!(v, b"small");
            let big_back =
                c.kv(Op::Get { key: b"k500".to_vec(), serializable: true }).unwrap().unwrap();
            assert_eq!(big_back.result, OpResult::Get(Some(big.clone().into_bytes())));
            break;
        }
        assert!(Instant::now() < deadline, "follower never caught up: {}", cluster.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(&cluster.procs[follower as usize - 1].log).unwrap();
    assert!(log.contains("installed snapshot"), "the follower caught up through a snapshot");
}

#[test]
fn bad_bytes_on_each_port_leave_the_cluster_serving() {
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_for_leader();
    for p in &cluster.procs {
        for addr in [&p.peer_addr, &p.client_addr] {
            // Garbage, an oversize frame header, and a hello for the wrong cluster.
            let mut s = TcpStream::connect(addr).unwrap();
            let _ = s.write_all(b"\x05\x00\x00\x00garbage-garbage");
            let mut s = TcpStream::connect(addr).unwrap();
            let _ = s.write_all(&u32::MAX.to_le_bytes());
            let mut s = TcpStream::connect(addr).unwrap();
            let hello =
                Hello { cluster_id: "other".into(), ..peer_hello(&cluster.cluster_id, 9, 1) };
            let _ = write_frame(&mut s, &hello);
        }
    }
    cluster.put("still", "serving");
    assert_eq!(cluster.get("still"), Some(b"serving".to_vec()));
}

#[test]
fn sigterm_exits_zero_and_bad_flags_exit_two() {
    let mut cluster = TestCluster::start(1, &[]);
    cluster.wait_for_leader();
    cluster.put("k", "v");
    let status = cluster.node(1).terminate();
    assert_eq!(status.code(), Some(0));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_raftd"))
        .args([
            "--election-tick",
            "1",
            "--data-dir",
            cluster.dir.path().join("x").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--election-tick"));
    // A restart after SIGTERM finds everything.
    cluster.node(1).start();
    cluster.wait_for_leader();
    assert_eq!(cluster.get("k"), Some(b"v".to_vec()));
}

#[test]
fn a_node_joins_through_a_membership_change() {
    let cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_for_leader();
    cluster.put("before-join", "1");
    let mut joiner = joiner(&cluster, 4, &[]);
    let peer_addr = joiner.peer_addr.clone();
    joiner.start();
    let mut admin = cluster.procs[leader as usize - 1].client().unwrap();
    let reply = admin.admin(AdminRequest::AddLearner { id: 4, addr: peer_addr.clone() }).unwrap();
    assert_eq!(reply, Ok(AdminReply::Membership { voters: vec![1, 2, 3], learners: vec![4] }));
    let again = admin.admin(AdminRequest::AddLearner { id: 4, addr: peer_addr }).unwrap();
    assert!(matches!(again, Err(ClientError::Refused(_))), "{again:?}");
    let reply = promote(&mut admin, 4);
    assert_eq!(reply, Ok(AdminReply::Membership { voters: vec![1, 2, 3, 4], learners: vec![] }));
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut c = joiner.wait_client();
        let got = c.kv(Op::Get { key: b"before-join".to_vec(), serializable: true }).unwrap();
        if matches!(got, Ok(KvReply { result: OpResult::Get(Some(_)), .. })) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the joiner never caught up: {}\n--- joiner ---\n{}",
            cluster.logs(),
            std::fs::read_to_string(&joiner.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused = admin.admin(AdminRequest::Remove { id: 9 }).unwrap();
    assert!(matches!(refused, Err(ClientError::Refused(_))));
}

#[test]
fn a_token_is_required_when_configured_and_faults_need_permission() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let peer_token_file = dir.path().join("peer-token");
    std::fs::write(&peer_token_file, "p33r\n").unwrap();
    let cluster = TestCluster::start(
        1,
        &[
            "--token-file",
            token_file.to_str().unwrap(),
            "--peer-token-file",
            peer_token_file.to_str().unwrap(),
        ],
    );
    let addr = cluster.procs[0].client_addr.clone();
    let deadline = Instant::now() + DEADLINE;
    // Without the token the handshake is refused (the client retries until the node listens).
    let refusal = loop {
        match Client::connect(&addr) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                assert!(Instant::now() < deadline);
                std::thread::sleep(Duration::from_millis(20));
            }
            other => break other,
        }
    };
    assert!(refusal.is_err_and(|e| e.to_string().contains("wrong token")));
    let mut s = TcpStream::connect(&addr).unwrap();
    let hello = Hello::client("", Some("s3cret".into()));
    write_frame(&mut s, &hello).unwrap();
    let welcome = HelloAck::Welcome {
        node_id: 1,
        incarnation: 0,
        cluster_incarnation: 0,
        protocol: PROTOCOL_VERSION,
    };
    assert_eq!(read_frame::<HelloAck>(&mut s).unwrap(), welcome);
    // The client secret does not open the peer port (issue 14): peers have their own.
    let peer_addr = cluster.procs[0].peer_addr.clone();
    for (secret, accepted) in [("s3cret", false), ("p33r", true)] {
        let mut p = TcpStream::connect(&peer_addr).unwrap();
        let hello = Hello { token: Some(secret.into()), ..peer_hello(&cluster.cluster_id, 1, 1) };
        write_frame(&mut p, &hello).unwrap();
        match read_frame::<HelloAck>(&mut p).unwrap() {
            HelloAck::Refused { reason } if !accepted => assert!(reason.contains("wrong token")),
            // Past the secret, node 1 is this node's own id: refused for that, not the token.
            HelloAck::Refused { reason } if accepted => {
                assert!(reason.contains("bad node id"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
    let fault = ClientRequest::Admin {
        request_id: 1,
        request: AdminRequest::Fault { drop_to: vec![2], drop_from: vec![], delay_ms: 0 },
    };
    write_frame(&mut s, &fault).unwrap();
    match read_frame::<ClientResponse>(&mut s).unwrap() {
        ClientResponse::Admin { result: Err(ClientError::Refused(reason)), .. } => {
            assert!(reason.contains("--allow-fault-injection"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    s.flush().unwrap();
}

#[test]
fn injected_partitions_stop_a_leader_and_heal() {
    let cluster = TestCluster::start(3, &["--allow-fault-injection"]);
    let leader = cluster.wait_for_leader();
    cluster.put("before", "1");
    let others: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    let mut admin = cluster.procs[leader as usize - 1].client().unwrap();
    let fault =
        AdminRequest::Fault { drop_to: others.clone(), drop_from: others.clone(), delay_ms: 0 };
    assert!(admin.admin(fault).unwrap().is_ok());
    // The majority elects another leader; the isolated one steps down (check-quorum).
    let deadline = Instant::now() + DEADLINE;
    loop {
        let new = others.iter().find_map(|&id| {
            let s = cluster.procs[id as usize - 1].client().ok()?.status().ok()?;
            (s.role == "leader").then_some(id)
        });
        let old_role = admin.status().unwrap().role;
        if new.is_some() && old_role != "leader" {
            break;
        }
        assert!(Instant::now() < deadline, "no failover: {}", cluster.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(admin.admin(AdminRequest::Heal).unwrap().is_ok());
    cluster.put("after", "2");
    cluster.wait_for_leader();
    assert_eq!(cluster.get("before"), Some(b"1".to_vec()));
    assert_eq!(cluster.get("after"), Some(b"2".to_vec()));
}

#[test]
fn a_removed_node_is_refused_by_its_former_peers_and_stops() {
    let mut cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_for_leader();
    let victim = (1..=3).find(|&id| id != leader).unwrap();
    let mut admin = cluster.procs[leader as usize - 1].client().unwrap();
    let reply = admin.admin(AdminRequest::Remove { id: victim }).unwrap();
    assert!(
        matches!(reply, Ok(AdminReply::Membership { ref voters, .. }) if !voters.contains(&victim)),
        "{reply:?}"
    );
    // A stale incarnation of the removed node, knocking on the leader's peer port.
    let mut s = TcpStream::connect(&cluster.procs[leader as usize - 1].peer_addr).unwrap();
    let hello = peer_hello(
        &cluster.cluster_id,
        victim,
        incarnation_of(&cluster.procs[victim as usize - 1].data_dir),
    );
    write_frame(&mut s, &hello).unwrap();
    match read_frame::<HelloAck>(&mut s).unwrap() {
        HelloAck::Removed { node_id } => assert_eq!(node_id, leader),
        other => panic!("{other:?}"),
    }
    cluster.put("after-removal", "ok");
    // The removed node itself, refused by every peer for ten election timeouts, stops.
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        let child = cluster.node(victim).child.as_mut().unwrap();
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the removed node runs on: {}", cluster.logs());
        std::thread::sleep(Duration::from_millis(50));
    };
    cluster.node(victim).child = None;
    let log = std::fs::read_to_string(&cluster.procs[victim as usize - 1].log).unwrap();
    assert!(status.success(), "{status:?}: {log}");
    assert!(log.contains("was removed from the cluster") && log.contains("stopping"), "{log}");
}

#[test]
fn a_node_listening_on_every_interface_is_known_by_its_advertised_address() {
    let mut cluster = TestCluster::start(3, &[]);
    cluster.wait_for_leader();
    let node = cluster.node(3);
    node.kill();
    // Another loopback address than the one it was known by, to tell old from new.
    let port = node.client_addr.rsplit(':').next().unwrap().to_string();
    let advertised = format!("127.0.0.2:{port}");
    let i = node.args.iter().position(|a| a == "--listen-client").unwrap();
    node.args[i + 1] = format!("0.0.0.0:{port}");
    // With nothing to advertise it refuses to start, naming the flag to give.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_raftd")).args(&node.args).output();
    let out = out.unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--advertise-client"), "{stderr}");
    node.args.extend(["--advertise-client".to_string(), advertised.clone()]);
    node.start();
    // The others learn the advertised address from its hello: clients are redirected there.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let status = cluster.node(1).wait_client().status().unwrap();
        let known = status.members.iter().find(|m| m.id == 3).and_then(|m| m.client_addr.clone());
        if known.as_deref() == Some(advertised.as_str()) {
            break;
        }
        assert!(Instant::now() < deadline, "node 3's address never learned: {known:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let own = cluster.node(3).wait_client().status().unwrap();
    let me = own.members.iter().find(|m| m.id == 3).unwrap();
    assert_eq!(me.client_addr.as_deref(), Some(advertised.as_str()));
}

#[test]
fn a_wiped_node_waiting_to_be_added_again_under_its_removed_id_does_not_stop() {
    let mut cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_for_leader();
    let victim = (1..=3).find(|&id| id != leader).unwrap();
    cluster.put("before", "1");
    let mut admin = cluster.procs[leader as usize - 1].client().unwrap();
    cluster.node(victim).kill();
    let reply = admin.admin(AdminRequest::Remove { id: victim }).unwrap();
    assert!(reply.is_ok(), "{reply:?}");
    // Wiped and started empty, waiting to be added: every peer refuses its id as removed.
    let node = cluster.node(victim);
    std::fs::remove_dir_all(&node.data_dir).unwrap();
    let i = node.args.iter().position(|a| a == "--initial-cluster").unwrap();
    node.args.drain(i..i + 2);
    node.args.push("--join".into());
    node.start();
    // Twice as long as a removed member waits before it stops (ten election timeouts of
    // 10 ticks of 20 ms): it is still running.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let child = cluster.node(victim).child.as_mut().unwrap();
        assert!(child.try_wait().unwrap().is_none(), "the joiner stopped: {}", cluster.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let addr = cluster.node(victim).peer_addr.clone();
    let reply = admin.admin(AdminRequest::AddLearner { id: victim, addr }).unwrap();
    assert!(reply.is_ok(), "{reply:?}");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut c = cluster.node(victim).wait_client();
        let got = c.kv(Op::Get { key: b"before".to_vec(), serializable: true }).unwrap();
        if matches!(got, Ok(KvReply { result: OpResult::Get(Some(_)), .. })) {
            break;
        }
        assert!(Instant::now() < deadline, "never caught up again: {}", cluster.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 13, item 5: a snapshot from a peer is decoded and checked before anything of it is
/// made durable. One crafted frame, a snapshot whose image is not a state machine image,
/// sent as the leader: the follower refuses it, keeps serving, and starts again afterwards
/// (before, it wrote the snapshot, failed to restore it, stopped, and could never start).
#[test]
fn a_snapshot_that_does_not_decode_is_refused_before_it_is_made_durable() {
    // Long election timeouts (3-6 s): the follower still follows the killed leader while the
    // test speaks for it (only the leader may send snapshots, on one connection at a time).
    let mut cluster = TestCluster::start(3, &["--election-tick", "150"]);
    let leader = cluster.wait_for_leader();
    cluster.put("k", "v1");
    let follower = if leader == 1 { 2 } else { 1 };
    let status = cluster.node(follower).wait_client().status().unwrap();
    let incarnation = incarnation_of(&cluster.node(leader).data_dir);
    cluster.node(leader).kill();
    let peer_addr: std::net::SocketAddr = cluster.node(follower).peer_addr.parse().unwrap();
    let deadline = Instant::now() + DEADLINE;
    let mut stream = loop {
        let mut stream = TcpStream::connect_timeout(&peer_addr, Duration::from_secs(2)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write_frame(&mut stream, &peer_hello(&cluster.cluster_id, leader, incarnation)).unwrap();
        match read_frame::<HelloAck>(&mut stream).unwrap() {
            HelloAck::Welcome { .. } => break stream,
            // The killed leader's connection is not closed yet.
            other => assert!(Instant::now() < deadline, "{other:?}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let data = b"not a state machine image".to_vec();
    let message = raft::Message {
        msg_type: raft::MessageType::Snapshot,
        to: follower,
        from: leader,
        term: status.term,
        snapshot: Some(Box::new(raft::Snapshot {
            data: Vec::new(),
            metadata: raft::SnapshotMetadata {
                conf_state: raft::ConfState { voters: vec![1, 2, 3], ..Default::default() },
                index: status.last_index + 1000,
                term: status.term,
            },
        })),
        ..Default::default()
    };
    let frame = PeerFrame::SnapshotChunk {
        message,
        offset: 0,
        total: data.len() as u64,
        data: data.into(),
    };
    let _ = write_frame(&mut stream, &frame);
    let log = cluster.node(follower).log.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let refusal = format!("snapshot from {leader} at index {} refused", status.last_index + 1000);
    while !std::fs::read_to_string(&log).unwrap().contains(&refusal) {
        assert!(Instant::now() < deadline, "no refusal logged: {}", cluster.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.put("k", "v2");
    let after = cluster.node(follower).wait_client().status().unwrap();
    assert!(after.snapshot_index < status.last_index + 1000, "the bad snapshot is not in force");
    // The data dir is sound: the node restarts and catches up.
    cluster.node(follower).kill();
    cluster.node(follower).start();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let applied = cluster.node(follower).client().and_then(|mut c| c.status());
        if applied.is_ok_and(|s| s.applied >= after.applied) {
            break;
        }
        assert!(Instant::now() < deadline, "the follower did not come back: {}", cluster.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 15, item 2, on real processes: a lease-based leader frozen (SIGSTOP) while the others
/// elect a leader and write, then resumed with a linearizable read waiting on its socket,
/// never answers the value the new leader overwrote. Before, it resumed, answered from a
/// check-quorum "lease" that its stopped ticks had not ended, and returned the old value.
///
/// 50 rounds, as issue 15 asks (`LEASE_PAUSE_ROUNDS` sets another number).
#[test]
fn a_lease_based_leader_resumed_after_a_pause_answers_no_stale_read() {
    let rounds: u32 =
        std::env::var("LEASE_PAUSE_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(50);
    let mut cluster =
        TestCluster::start(3, &["--read-only-option", "lease-based", "--allow-fault-injection"]);
    let mut fresh = 0;
    let mut refused = std::collections::BTreeMap::<String, u32>::new();
    for round in 0..rounds {
        let old = cluster.wait_for_leader();
        let before = format!("before-{round}");
        cluster.put("x", &before);
        let mut reader = cluster.node(old).wait_client();
        // Cut off too, so that nothing from the new leader reaches it first when it resumes.
        let others: Vec<u64> = (1..=3).filter(|&id| id != old).collect();
        for id in 1..=3 {
            let drop = if id == old { others.clone() } else { vec![old] };
            let fault = AdminRequest::Fault { drop_to: drop.clone(), drop_from: drop, delay_ms: 0 };
            cluster.node(id).wait_client().admin(fault).unwrap().unwrap();
        }
        let pid = cluster.node(old).child.as_ref().unwrap().id() as i32;
        // SAFETY: signals to a child process this test started.
        #[allow(unsafe_code)]
        let stop = |sig| assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
        stop(libc::SIGSTOP);
        let deadline = Instant::now() + DEADLINE;
        let after = format!("after-{round}");
        'written: loop {
            for &id in &others {
                if let Ok(mut c) = cluster.node(id).client() {
                    let put = Op::Put { key: b"x".to_vec(), value: after.clone().into_bytes() };
                    if matches!(c.kv(put), Ok(Ok(_))) {
                        break 'written;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no new leader wrote: {}", cluster.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
        // The read is on the frozen leader's socket before it runs again.
        let read = std::thread::spawn(move || {
            reader.kv(Op::Get { key: b"x".to_vec(), serializable: false })
        });
        std::thread::sleep(Duration::from_millis(100));
        stop(libc::SIGCONT);
        let got = read.join().unwrap();
        if let Ok(Ok(KvReply { result: OpResult::Get(value), .. })) = &got {
            assert_eq!(value.as_deref(), Some(after.as_bytes()), "round {round}: a stale read");
            fresh += 1;
        } else {
            let kind = match &got {
                Ok(Err(e)) => format!("{e:?}").split([' ', '{', '(']).next().unwrap().to_string(),
                Ok(Ok(other)) => format!("{other:?}"),
                Err(e) => e.kind().to_string(),
            };
            *refused.entry(kind).or_default() += 1;
        }
        for id in 1..=3 {
            cluster.node(id).wait_client().admin(AdminRequest::Heal).unwrap().unwrap();
        }
    }
    println!("{rounds} rounds: {fresh} reads answered by the resumed leader, none stale; refused: {refused:?}");
}
