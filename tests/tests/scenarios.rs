//! Fault scenarios against a real cluster under concurrent load. Every scenario records the
//! clients' history and checks it for linearizability (not just the final state), checks that
//! the nodes converge to identical state, and that no term ever had two leaders.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use faults::checker::{self, Input, Operation, Output, Verdict};
use faults::harness::{Cluster, Workload, DEADLINE};
use raftd::protocol::*;

/// Stops the workload, heals, and checks everything a scenario must hold.
fn verify(cluster: &Cluster, workload: Workload) {
    let keys = workload.keys.clone();
    let (mut history, leaders) = workload.finish();
    cluster.heal();
    cluster.assert_converged(&keys);
    for (term, ids) in &leaders {
        assert!(ids.len() <= 1, "term {term} had leaders {ids:?}");
    }
    // Final linearizable reads of every key join the history: every acknowledged write must
    // be readable or superseded.
    let leader = cluster.wait_for_leader();
    let mut client =
        raftctl::Client::new(vec![cluster.nodes[&leader].client_addr.clone()], DEADLINE, None);
    let base = history.iter().map(|o| o.ret.max(o.call)).max().unwrap_or(0) + 1;
    for key in &keys {
        let reply = client
            .kv(Op::Get { key: key.clone().into_bytes(), serializable: false })
            .expect("final read");
        let OpResult::Get(value) = reply.result else { panic!("not a read") };
        history.push(Operation {
            client: 999,
            key: key.clone().into_bytes(),
            input: Input::Get,
            output: Output::Get(value),
            call: base,
            ret: base + 1,
        });
    }
    let known = history.iter().filter(|o| o.output != Output::Unknown).count();
    assert!(known > 20, "too few completed operations to mean anything: {known}");
    let verdict = checker::check(&history);
    assert_eq!(verdict, Verdict::Ok, "{verdict}");
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
        // Bounded: 20 election timeouts of 10 ticks of 20 ms, for a loaded machine.
        assert!(
            started.elapsed() < Duration::from_secs(4),
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
                            cluster_id: "faults".into(),
                            node_id: 7,
                            role: Role::Peer,
                            token: None,
                            client_addr: None,
                            peer_addr: None,
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
