//! Issue 20, backup and disaster recovery: `raftctl snapshot save` under a workload, checked
//! by `raftctl snapshot status`, restored into a fresh cluster of three with `raftd
//! --restore`: every key present, the hash equal, writes accepted, a restart keeping it.

use std::process::Command;
use std::time::Duration;

use faults::harness::{bin_dir, Cluster, Workload};
use raftd::protocol::*;

fn raftctl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin_dir().join("raftctl")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every node's whole log.
fn full_logs(cluster: &Cluster) -> String {
    cluster.nodes.values().map(|n| std::fs::read_to_string(&n.log).unwrap_or_default()).collect()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn a_backup_saved_under_load_restores_into_a_fresh_cluster_with_every_key() {
    let old = Cluster::start(3, &[]);
    old.wait_for_leader();
    let endpoints = old.endpoints().join(",");
    let mut client = old.client(old.endpoints(), Duration::from_secs(30));
    for i in 0..200 {
        let op = Op::Put { key: format!("pre/{i}").into_bytes(), value: vec![i as u8; 100] };
        client.kv(op).unwrap();
    }
    // Saved while four clients write.
    let workload = Workload::start(&old, 4, 20);
    workload.wait_ops(50);
    let file = old.dir.path().join("backup.snap");
    let file_arg = file.to_str().unwrap();
    let (ok, out, err) =
        raftctl(&["--endpoints", &endpoints, "--json", "snapshot", "save", file_arg]);
    assert!(ok, "save: {out}{err}");
    let saved = json(&out);
    workload.wait_ops(100);
    drop(workload.finish());
    assert!(!file.with_extension("snap.part").exists(), "the part file is renamed into place");
    let (ok, out, err) = raftctl(&["--json", "snapshot", "status", file_arg]);
    assert!(ok, "status: {out}{err}");
    let status = json(&out);
    for field in ["index", "term", "keys", "hash", "size"] {
        assert_eq!(status[field], saved[field], "{field}");
    }
    assert!(status["keys"].as_u64().unwrap() >= 200);
    assert_eq!(status["voters"], serde_json::json!([1, 2, 3]));

    // A fresh cluster of three from the file.
    let new = Cluster::start(3, &["--restore", file_arg]);
    new.wait_for_leader();
    let mut fresh = new.client(new.endpoints(), Duration::from_secs(30));
    for i in 0..200 {
        let op = Op::Get { key: format!("pre/{i}").into_bytes(), serializable: false };
        let reply = fresh.kv(op).unwrap();
        assert_eq!(reply.result, OpResult::Get(Some(vec![i as u8; 100])), "pre/{i}");
        assert!(reply.index >= status["index"].as_u64().unwrap());
    }
    // Every node holds exactly the backup's state.
    for id in 1..=3 {
        new.wait_caught_up(id);
        match new.admin(id, AdminRequest::HashKv).unwrap() {
            AdminReply::HashKv { hash, keys, .. } => {
                assert_eq!(Some(hash), status["hash"].as_u64(), "node {id}");
                assert_eq!(Some(keys), status["keys"].as_u64(), "node {id}");
            }
            other => panic!("{other:?}"),
        }
    }
    // It takes writes, its members are its own, and it is another cluster incarnation.
    fresh.kv(Op::Put { key: b"after".to_vec(), value: b"1".to_vec() }).unwrap();
    let s = new.status(1).unwrap();
    let peers: Vec<Option<String>> = s.members.iter().map(|m| m.peer_addr.clone()).collect();
    for p in &peers {
        assert!(!old.nodes.values().any(|n| Some(&n.peer_addr) == p.as_ref()), "{p:?}");
    }
    assert!(full_logs(&new).contains("from a backup at index"));
    // A node restarted with --restore still given keeps its data dir.
    let mut new = new;
    new.kill(2);
    new.restart(2);
    new.wait_caught_up(2);
    match new.admin(2, AdminRequest::HashKv).unwrap() {
        AdminReply::HashKv { keys, .. } => {
            assert_eq!(Some(keys), status["keys"].as_u64().map(|k| k + 1))
        }
        other => panic!("{other:?}"),
    }
    assert!(full_logs(&new).contains("--restore") && full_logs(&new).contains("ignored"));
}

#[test]
fn a_damaged_backup_is_refused_by_status_and_by_restore() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.snap");
    std::fs::write(&file, b"RAFTSNAP but nothing a snapshot holds, long enough to be read")
        .unwrap();
    let (ok, _, err) = raftctl(&["snapshot", "status", file.to_str().unwrap()]);
    assert!(!ok && err.contains("checksum"), "{err}");
    let out = Command::new(bin_dir().join("raftd"))
        .args(["--data-dir", dir.path().join("data").to_str().unwrap()])
        .args(["--initial-cluster", "1=127.0.0.1:1", "--restore", file.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--restore"), "{err}");
}

/// Members restored from different backups refuse each other: the two that share one form the
/// cluster, the third never joins it with its other state.
#[test]
fn members_restored_from_different_backups_refuse_each_other() {
    let old = Cluster::start(1, &[]);
    old.wait_for_leader();
    let endpoints = old.endpoints().join(",");
    let mut client = old.client(old.endpoints(), Duration::from_secs(30));
    let save = |name: &str| {
        let file = old.dir.path().join(name);
        let (ok, out, err) =
            raftctl(&["--endpoints", &endpoints, "snapshot", "save", file.to_str().unwrap()]);
        assert!(ok, "{out}{err}");
        file.to_str().unwrap().to_string()
    };
    client.kv(Op::Put { key: b"k".to_vec(), value: b"first".to_vec() }).unwrap();
    let first = save("first.snap");
    client.kv(Op::Put { key: b"k".to_vec(), value: b"second".to_vec() }).unwrap();
    let second = save("second.snap");
    let new = Cluster::start_each_flags(3, &mut |id| {
        let file = if id == 3 { &second } else { &first };
        vec!["--restore".to_string(), file.clone()]
    });
    let leader = new.wait_for_leader_among(&[1, 2]);
    assert!(leader == 1 || leader == 2);
    let deadline = std::time::Instant::now() + faults::harness::DEADLINE;
    while !full_logs(&new).contains("another bootstrap") {
        assert!(std::time::Instant::now() < deadline, "no refusal logged");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut fresh = new.client(new.endpoints()[..2].to_vec(), Duration::from_secs(30));
    let op = Op::Get { key: b"k".to_vec(), serializable: false };
    assert_eq!(fresh.kv(op).unwrap().result, OpResult::Get(Some(b"first".to_vec())));
    let s3 = new.status(3).map(|s| (s.leader, s.applied));
    assert!(s3.is_none_or(|(leader, _)| leader != 1 && leader != 2), "node 3 joined: {s3:?}");
}
