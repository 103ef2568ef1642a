//! Fault scenarios against a real cluster under concurrent load. Every scenario records the
//! clients' history and checks it for linearizability (not just the final state), checks that
//! the nodes converge to identical state, and that no term ever had two leaders.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use faults::checker::{self, Input, Operation, Output, Verdict};
use faults::harness::{self, Cluster, Workload, DEADLINE};
use raftd::protocol::*;

/// Stops the workload, heals, and checks everything a scenario must hold.
fn verify(cluster: &Cluster, workload: Workload) {
    if let Err(e) = harness::verify(cluster, workload) {
        panic!("{e}");
    }
}

#[test]
fn leader_crash_under_load_elects_a_new_leader_and_the_old_one_catches_up() {
    let mut cluster = Cluster::start(3, &[]);
    cluster.wait_for_leader();
    let workload = Workload::start(&cluster, 4, 5);
    workload.wait_ops(30);
    for _ in 0..3 {
        let leader = cluster.wait_for_leader();
        cluster.kill(leader);
        let started = Instant::now();
        let others: Vec<u64> = cluster.nodes.keys().copied().filter(|&id| id != leader).collect();
        let new_leader = cluster.wait_for_leader_among(&others);
        assert_ne!(new_leader, leader);
        // Bounded: 75 election timeouts (10 ticks of 20 ms), generous for a loaded machine.
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "failover took {:?}",
            started.elapsed()
        );
        workload.wait_ops(20);
        cluster.restart(leader);
        workload.wait_ops(20);
    }
    verify(&cluster, workload);
}

#[test]
fn an_isolated_leader_acknowledges_nothing_and_steps_down_after_healing() {
    let cluster = Cluster::start(3, &[]);
    let old = cluster.wait_for_leader();
    let others: Vec<u64> = cluster.nodes.keys().copied().filter(|&id| id != old).collect();
    let workload = Workload::start(&cluster, 4, 5);
    workload.wait_ops(30);
    cluster.isolate(old, &others);
    let new = cluster.wait_for_leader_among(&others);
    assert_ne!(new, old);
    workload.wait_ops(30);
    // The old leader, cut off, cannot commit: a write sent to it directly is not acknowledged.
    let mut direct = raftctl::Client::new(
        vec![cluster.nodes[&old].client_addr.clone()],
        Duration::from_millis(800),
        None,
    );
    let minority = direct.kv(Op::Put { key: b"minority".to_vec(), value: b"x".to_vec() });
    assert!(minority.is_err(), "the minority acknowledged a write: {minority:?}");
    cluster.heal();
    let deadline = Instant::now() + DEADLINE;
    while cluster.status(old).is_none_or(|s| s.role == "leader") {
        assert!(Instant::now() < deadline, "the old leader never stepped down");
        std::thread::sleep(Duration::from_millis(50));
    }
    workload.wait_ops(20);
    verify(&cluster, workload);
    // The old leader's uncommitted write was discarded when it rejoined.
    let leader = cluster.wait_for_leader();
    let mut client =
        raftctl::Client::new(vec![cluster.nodes[&leader].client_addr.clone()], DEADLINE, None);
    let read = client.kv(Op::Get { key: b"minority".to_vec(), serializable: false }).expect("read");
    assert_eq!(read.result, OpResult::Get(None), "an unacknowledged minority write survived");
}

#[test]
fn bridge_flapping_and_outbound_only_partitions_keep_the_history_linearizable() {
    let cluster = Cluster::start(3, &[]);
    cluster.wait_for_leader();
    let workload = Workload::start(&cluster, 4, 5);
    workload.wait_ops(20);
    // Bridge: 1 and 3 cannot talk; 2 talks to both.
    let cut = |b: u64| AdminRequest::Fault { drop_to: vec![b], drop_from: vec![b], delay_ms: 0 };
    cluster.admin(1, cut(3)).unwrap();
    cluster.admin(3, cut(1)).unwrap();
    workload.wait_ops(30);
    cluster.heal();
    // A flapping link between the leader and a follower.
    let leader = cluster.wait_for_leader();
    let follower = if leader == 1 { 2 } else { 1 };
    for _ in 0..6 {
        cluster.admin(leader, cut(follower)).unwrap();
        std::thread::sleep(Duration::from_millis(150));
        cluster.heal();
        std::thread::sleep(Duration::from_millis(150));
    }
    workload.wait_ops(20);
    // A node that loses only its outbound traffic.
    let leader = cluster.wait_for_leader();
    let others: Vec<u64> = cluster.nodes.keys().copied().filter(|&id| id != leader).collect();
    cluster
        .admin(
            leader,
            AdminRequest::Fault { drop_to: others.clone(), drop_from: vec![], delay_ms: 0 },
        )
        .unwrap();
    cluster.wait_for_leader_among(&others);
    workload.wait_ops(20);
    verify(&cluster, workload);
}

#[test]
fn a_paused_leader_serves_no_stale_read_after_it_resumes() {
    let mut cluster = Cluster::start(3, &[]);
    let old = cluster.wait_for_leader();
    let workload = Workload::start(&cluster, 4, 5);
    workload.wait_ops(30);
    cluster.pause(old);
    let others: Vec<u64> = cluster.nodes.keys().copied().filter(|&id| id != old).collect();
    let new = cluster.wait_for_leader_among(&others);
    assert_ne!(new, old);
    workload.wait_ops(40);
    // While the old leader is frozen, its clients' requests queue on its sockets; once it
    // resumes it must learn the new term before answering any of them.
    cluster.resume(old);
    workload.wait_ops(40);
    verify(&cluster, workload);
}

/// Issue 15, item 2: with lease-based reads, a leader paused (SIGSTOP) past its lease or
/// isolated from its followers answers no read from a lease that ended: the lease runs on the
/// clock from the heartbeat round a quorum acknowledged, not on ticks that a pause stops.
/// Before, the paused leader resumed still leader and answered stale values.
#[test]
fn a_paused_or_isolated_lease_based_leader_serves_no_stale_read() {
    let mut cluster = Cluster::start(3, &["--read-only-option", "lease-based"]);
    cluster.wait_for_leader();
    let workload = Workload::start(&cluster, 4, 5);
    workload.wait_ops(30);
    for round in 0..4 {
        let old = cluster.wait_for_leader();
        let others: Vec<u64> = cluster.nodes.keys().copied().filter(|&id| id != old).collect();
        if round % 2 == 0 {
            cluster.pause(old);
        } else {
            cluster.isolate(old, &others);
        }
        let new = cluster.wait_for_leader_among(&others);
        assert_ne!(new, old);
        workload.wait_ops(30);
        if round % 2 == 0 {
            cluster.resume(old);
        } else {
            cluster.heal();
        }
        workload.wait_ops(30);
    }
    verify(&cluster, workload);
}

#[test]
fn bad_input_under_load_leaves_the_cluster_serving() {
    let cluster = Cluster::start(3, &[]);
    cluster.wait_for_leader();
    let workload = Workload::start(&cluster, 4, 5);
    workload.wait_ops(20);
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut half_open = Vec::new();
    for node in cluster.nodes.values() {
        for addr in [&node.peer_addr, &node.client_addr] {
            for round in 0..5 {
                let Ok(mut s) = TcpStream::connect(addr) else { continue };
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let bytes: Vec<u8> = match round {
                    0 => (0..64).map(|i| (seed >> (i % 8)) as u8).collect(),
                    1 => u32::MAX.to_le_bytes().to_vec(),
                    2 => {
                        // A valid frame of the wrong kind: a client request before any hello.
                        let mut buf = Vec::new();
                        let req =
                            ClientRequest::Admin { request_id: 1, request: AdminRequest::Snapshot };
                        codec::encode_into(&mut buf, &req, 1 << 20).unwrap();
                        buf
                    }
                    3 => {
                        // A hello claiming to be a peer on the client port.
                        let hello = Hello {
                            versions: ProtocolVersions::OURS,
                            cluster_id: "faults".into(),
                            node_id: 7,
                            role: Role::Peer,
                            token: None,
                            client_addr: None,
                            peer_addr: None,
                            incarnation: 1,
                            cluster_incarnation: 0,
                        };
                        let mut buf = Vec::new();
                        codec::encode_into(&mut buf, &hello, 1 << 20).unwrap();
                        buf
                    }
                    _ => {
                        // Half-open: a frame header promising bytes that never come.
                        half_open.push(TcpStream::connect(addr).ok());
                        vec![100, 0, 0, 0, 1, 2]
                    }
                };
                let _ = s.write_all(&bytes);
            }
        }
    }
    workload.wait_ops(40);
    drop(half_open);
    verify(&cluster, workload);
}

#[test]
fn the_checker_is_wired_to_the_history() {
    // The harness's history feeds the checker: a forged stale read in a real history is caught.
    let cluster = Cluster::start(3, &[]);
    cluster.wait_for_leader();
    let workload = Workload::start(&cluster, 2, 1);
    workload.wait_ops(30);
    let (mut history, _) = workload.finish();
    let last_put = history
        .iter()
        .filter(|o| matches!(o.input, Input::Put(_)) && o.output == Output::Put)
        .max_by_key(|o| o.ret)
        .cloned()
        .expect("a completed put");
    let end = history.iter().map(|o| o.ret).max().unwrap_or(0);
    history.push(Operation {
        client: 77,
        key: last_put.key.clone(),
        input: Input::Get,
        output: Output::Get(Some(b"never-written".to_vec())),
        call: end + 10,
        ret: end + 20,
    });
    assert!(matches!(checker::check(&history), Verdict::Violation { .. }));
}

#[test]
fn rolling_kill_and_restart_of_every_node_including_two_at_once() {
    let mut cluster = Cluster::start(5, &[]);
    cluster.wait_for_leader();
    let workload = Workload::start(&cluster, 4, 5);
    workload.wait_ops(20);
    for id in 1..=5 {
        cluster.kill(id);
        workload.wait_ops(15);
        cluster.restart(id);
    }
    // Two at once: three of five remain, still a quorum.
    cluster.kill(1);
    cluster.kill(2);
    workload.wait_ops(20);
    cluster.restart(1);
    cluster.restart(2);
    workload.wait_ops(20);
    verify(&cluster, workload);
}

#[test]
fn membership_changes_under_load() {
    let mut cluster =
        Cluster::start(3, &["--snapshot-entries=50", "--snapshot-catchup-entries=10"]);
    cluster.wait_for_leader();
    let workload = Workload::start(&cluster, 4, 5);
    workload.wait_ops(30);

    // Add a learner, then promote it.
    let (peer, client) = Cluster::new_addrs();
    cluster.add_node(
        4,
        peer.clone(),
        client,
        vec!["--join".into(), "--snapshot-entries=50".into()],
    );
    let reply = cluster.change(AdminRequest::AddLearner { id: 4, addr: peer });
    assert!(
        matches!(reply, AdminReply::Membership { ref learners, .. } if learners == &[4]),
        "{reply:?}"
    );
    workload.wait_ops(20);
    cluster.change(AdminRequest::Promote { id: 4 });
    workload.wait_ops(20);

    // Remove the original leader: it applies its own removal and steps down.
    let leader = cluster.leader();
    let reply =
        cluster.admin(leader, AdminRequest::Remove { id: leader }).expect("remove the leader");
    assert!(
        matches!(reply, AdminReply::Membership { ref voters, .. } if !voters.contains(&leader)),
        "{reply:?}"
    );
    cluster.forget(leader);
    workload.wait_ops(30);

    // Replace a node whose data directory was deleted: it returns through a snapshot.
    let victim = *cluster.nodes.keys().find(|&&id| id != cluster.leader()).expect("a follower");
    cluster.kill(victim);
    let node = cluster.node(victim);
    std::fs::remove_dir_all(&node.data_dir).expect("wipe");
    node.args.retain(|a| !a.starts_with("--initial-cluster"));
    node.args.push("--join".into());
    cluster.change(AdminRequest::Remove { id: victim });
    workload.wait_ops(60);
    // Compact the leader's log past what the empty node could replay.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let leader = cluster.leader();
        cluster.admin(leader, AdminRequest::Snapshot).expect("snapshot");
        if cluster.status(leader).is_some_and(|s| s.first_index > 10) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the leader never compacted its log: {}",
            cluster.logs()
        );
        workload.wait_ops(20);
    }
    cluster.restart(victim);
    let addr = cluster.nodes[&victim].peer_addr.clone();
    cluster.change(AdminRequest::AddLearner { id: victim, addr });
    cluster.change(AdminRequest::Promote { id: victim });
    workload.wait_ops(30);
    verify(&cluster, workload);
    let log = std::fs::read_to_string(&cluster.nodes[&victim].log).unwrap();
    assert!(
        log.contains("installed snapshot"),
        "the replaced node came back through a snapshot:\n{log}{}",
        cluster.logs()
    );
}

/// A node's WAL segment files, oldest first.
fn segments(data_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut segments: Vec<_> = std::fs::read_dir(data_dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segments.sort();
    segments
}

/// The newest segment holding records, and where its written bytes end. (The WAL may have
/// created the next segment already, holding only its 40-byte header: cutting into that would
/// damage a header, not tear a record.)
fn last_segment(data_dir: &std::path::Path) -> (std::path::PathBuf, usize) {
    const SEGMENT_HEADER_SIZE: usize = 40;
    segments(data_dir)
        .into_iter()
        .rev()
        .find_map(|segment| {
            let bytes = std::fs::read(&segment).unwrap();
            let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            (end > SEGMENT_HEADER_SIZE).then_some((segment, end))
        })
        .expect("a segment holding records")
}

/// A payload byte of the first record in this segment that a later record in it was written
/// after a sync covering (the layouts of wal/src/record.rs: a 40-byte segment header, then
/// records of a 32-byte header, payload length at 0, number at 16, number synced at 24,
/// padded to 8 bytes).
fn synced_record_byte(bytes: &[u8]) -> usize {
    const SEGMENT_HEADER_SIZE: usize = 40;
    const RECORD_HEADER_SIZE: usize = 32;
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let mut records = Vec::new(); // (offset, payload length, number, number synced)
    let mut at = SEGMENT_HEADER_SIZE;
    while at + RECORD_HEADER_SIZE <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let lsn = u64_at(at + 16);
        if lsn == 0 || at + RECORD_HEADER_SIZE + len > bytes.len() {
            break;
        }
        records.push((at, len, lsn, u64_at(at + 24)));
        at += (RECORD_HEADER_SIZE + len).div_ceil(8) * 8;
    }
    records
        .iter()
        .enumerate()
        .find(|&(i, &(_, len, lsn, _))| {
            len > 0 && records[i + 1..].iter().any(|&(_, _, _, synced)| synced >= lsn)
        })
        .map(|(_, &(at, len, _, _))| at + RECORD_HEADER_SIZE + len / 2)
        .unwrap_or_else(|| panic!("no record known to be synced among {records:?}"))
}

#[test]
fn disk_damage_a_torn_tail_recovers_and_mid_log_corruption_refuses_to_start() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader();
    let victim = if leader == 1 { 2 } else { 1 };
    let workload = Workload::start(&cluster, 4, 5);
    workload.wait_ops(40);
    cluster.wait_caught_up(victim);

    // A torn tail: the last record cut short. The node recovers and catches up.
    cluster.kill(victim);
    let (segment, end) = last_segment(&cluster.nodes[&victim].data_dir);
    let f = std::fs::OpenOptions::new().write(true).open(&segment).unwrap();
    f.set_len((end - 7) as u64).unwrap();
    drop(f);
    cluster.restart(victim);
    workload.wait_ops(30);
    // The others may serve those operations before the restarted node has recovered.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let log = loop {
        let log = std::fs::read_to_string(&cluster.nodes[&victim].log).unwrap();
        if log.contains("torn") || std::time::Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(log.contains("torn"), "the torn tail is reported:\n{log}");

    // Corruption in the middle of the log: the node refuses to start, naming file and offset.
    // The damaged byte is in a record that a later record shows a completed sync covered:
    // damage to a record no sync is known to have covered rightly counts as a torn tail.
    cluster.wait_caught_up(victim);
    cluster.kill(victim);
    let segment = segments(&cluster.nodes[&victim].data_dir).remove(0);
    let mut bytes = std::fs::read(&segment).unwrap();
    let damaged = synced_record_byte(&bytes);
    bytes[damaged] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();
    cluster.restart(victim);
    let code = cluster.node(victim).wait_exit();
    assert!(code.is_some_and(|c| c != 0), "a corrupt WAL stops the node: {code:?}");
    let log = std::fs::read_to_string(&cluster.nodes[&victim].log).unwrap();
    let name = segment.file_name().unwrap().to_str().unwrap();
    assert!(log.contains("corruption") && log.contains(name) && log.contains("offset"), "{log}");

    // Wiped and re-added, the cluster is whole again.
    let node = cluster.node(victim);
    std::fs::remove_dir_all(&node.data_dir).unwrap();
    node.args.retain(|a| !a.starts_with("--initial-cluster"));
    node.args.push("--join".into());
    cluster.change(AdminRequest::Remove { id: victim });
    cluster.restart(victim);
    let addr = cluster.nodes[&victim].peer_addr.clone();
    cluster.change(AdminRequest::AddLearner { id: victim, addr });
    cluster.change(AdminRequest::Promote { id: victim });
    workload.wait_ops(30);
    verify(&cluster, workload);
}

/// A member that was down while a node was added does not know the new member when it comes
/// back: the new member may lead by then, and the returning member must take its appends
/// (etcd's peers likewise accept a member they have not applied yet, refusing only removed
/// ones). Refused as a non-member, it stayed behind for good.
#[test]
fn a_member_that_missed_an_addition_follows_the_new_member_as_leader() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader();
    let behind = if leader == 3 { 2 } else { 3 };
    cluster.kill(behind);
    let (peer, client) = Cluster::new_addrs();
    cluster.add_node(4, peer.clone(), client, vec!["--join".into()]);
    cluster.change(AdminRequest::AddLearner { id: 4, addr: peer });
    cluster.change(AdminRequest::Promote { id: 4 });
    // Node 4 leads.
    let deadline = Instant::now() + DEADLINE;
    while cluster.leader() != 4 {
        let leader = cluster.leader();
        let _ = cluster.admin(leader, AdminRequest::TransferLeader { to: 4 });
        assert!(Instant::now() < deadline, "node 4 never led: {}", cluster.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut client = cluster.client(vec![cluster.nodes[&4].client_addr.clone()], DEADLINE);
    let op = Op::Put { key: b"after".to_vec(), value: b"4 leads".to_vec() };
    client.kv(op).expect("node 4 takes writes");
    // The member that missed the addition comes back and catches up from node 4.
    cluster.restart(behind);
    cluster.wait_caught_up(behind);
    let status = cluster.status(behind).expect("it answers");
    assert_eq!(status.leader, 4, "{status:?}");
    assert!(status.members.iter().any(|m| m.id == 4), "it applied the addition: {status:?}");
}

/// `raftctl member update`: a member moved to another address is reached there once the
/// configuration says so, and the cluster keeps every acknowledged write.
#[test]
fn a_member_moved_to_another_address_is_reached_there_after_member_update() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader();
    let moved = if leader == 3 { 2 } else { 3 };
    let mut client = cluster.client(cluster.endpoints(), DEADLINE);
    client.kv(Op::Put { key: b"before".to_vec(), value: b"1".to_vec() }).expect("put");
    let (new_peer, _) = Cluster::new_addrs();
    let reply = cluster.change(AdminRequest::UpdateMember { id: moved, addr: new_peer.clone() });
    assert!(matches!(reply, AdminReply::Membership { .. }), "{reply:?}");
    // Not a member: refused with the reason.
    let leader = cluster.wait_for_leader();
    let elsewhere = "127.0.0.1:9".to_string();
    match cluster.admin(leader, AdminRequest::UpdateMember { id: 9, addr: elsewhere }) {
        Err(e) => assert!(e.to_string().contains("not a member"), "{e}"),
        Ok(reply) => panic!("updating a non-member answered {reply:?}"),
    }
    cluster.kill(moved);
    let old_peer = cluster.nodes[&moved].peer_addr.clone();
    for arg in cluster.node(moved).args.iter_mut() {
        if arg.starts_with("--listen-peer=") {
            *arg = format!("--listen-peer={new_peer}");
        }
    }
    cluster.node(moved).args.push(format!("--advertise-peer={new_peer}"));
    cluster.node(moved).peer_addr = new_peer.clone();
    cluster.restart(moved);
    client.kv(Op::Put { key: b"after".to_vec(), value: b"2".to_vec() }).expect("put");
    cluster.wait_caught_up(moved);
    let status = cluster.status(cluster.wait_for_leader()).expect("the leader answers");
    let member = status.members.iter().find(|m| m.id == moved).expect("still a member");
    assert_eq!(member.peer_addr.as_deref(), Some(new_peer.as_str()), "was {old_peer}");
}

/// A learner is promoted only once it holds nearly all of the leader's log, however short
/// the log: an empty learner promoted on a short log made a quorum that needed it before it
/// had anything.
#[test]
fn a_learner_that_holds_nothing_is_not_promoted_even_on_a_short_log() {
    let mut cluster = Cluster::start(3, &[]);
    cluster.wait_for_leader();
    let (peer, client) = Cluster::new_addrs();
    // Every node drops its Raft messages to node 4: its Hello gets through (its incarnation
    // is recorded), its log stays empty.
    for id in 1..=3 {
        let fault = AdminRequest::Fault { drop_to: vec![4], drop_from: vec![], delay_ms: 0 };
        cluster.admin(id, fault).expect("fault injected");
    }
    cluster.add_node(4, peer.clone(), client, vec!["--join".into()]);
    cluster.change(AdminRequest::AddLearner { id: 4, addr: peer });
    let deadline = Instant::now() + DEADLINE;
    loop {
        let leader = cluster.wait_for_leader();
        match cluster.admin(leader, AdminRequest::Promote { id: 4 }) {
            Ok(reply) => panic!("an empty learner was promoted: {reply:?}"),
            Err(e) if e.to_string().contains("not in sync") => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "never refused as not in sync: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    for id in 1..=3 {
        cluster.admin(id, AdminRequest::Heal).expect("healed");
    }
    cluster.change(AdminRequest::Promote { id: 4 });
    cluster.wait_caught_up(4);
}

/// What an operator reads in the logs: a peer that goes away and comes back, at INFO; a
/// removed node retrying, refused at WARN once a minute rather than at every attempt; no
/// Rust debug dump of the configuration at startup.
#[test]
fn logs_report_peers_lost_and_back_and_repeated_refusals_once() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader();
    let other = if leader == 3 { 2 } else { 3 };
    let log_of = |cluster: &Cluster, id: u64| {
        std::fs::read_to_string(&cluster.nodes[&id].log).unwrap_or_default()
    };
    let wait_for = |cluster: &Cluster, id: u64, needle: &str| {
        let deadline = Instant::now() + DEADLINE;
        while !log_of(cluster, id).contains(needle) {
            assert!(Instant::now() < deadline, "no {needle:?} in node {id}'s log");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(!log_of(&cluster, leader).contains("Config {"), "a debug dump at startup");
    cluster.kill(other);
    wait_for(&cluster, leader, &format!("peer {other} at"));
    assert!(log_of(&cluster, leader).contains("connection lost"));
    let connected = format!("INFO  raftd::node] peer {other}: connected");
    let before = log_of(&cluster, leader).matches(&connected).count();
    cluster.restart(other);
    let deadline = Instant::now() + DEADLINE;
    while log_of(&cluster, leader).matches(&connected).count() == before {
        assert!(Instant::now() < deadline, "node {other} never reported back");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Removed while it runs: it keeps knocking (every backoff, at most 2 s) until it stops.
    cluster.change(AdminRequest::Remove { id: other });
    let removed = format!("node {other} was removed from the cluster");
    let survivor = (1..=3).find(|&id| id != other).expect("a survivor");
    wait_for(&cluster, survivor, &removed);
    // Give it a few attempts, then count the WARN lines for that reason.
    std::thread::sleep(Duration::from_secs(5));
    let log = log_of(&cluster, survivor);
    let warned = log.lines().filter(|l| l.contains("WARN") && l.contains(&removed)).count();
    assert!(warned <= 1, "{warned} WARN lines for one reason within a minute:\n{log}");
}
