//! Issue 20, a full disk is an alarm, not an outage: a follower's data dir on a small tmpfs is
//! filled by another program until ENOSPC; the leader refuses puts with NoSpace while reads and deletes go on, the alarm shows
//! in the status and the metrics, and once space returns writes resume, nothing wiped.
//! (Mounting a tmpfs needs root, which CI has.)

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use raftd::protocol::*;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a tmpfs, which needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("df").args(["-B1", "--output=avail"]).arg(path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().nth(1).unwrap().trim().parse().unwrap()
}

fn put(addr: &str, key: &str) -> Result<KvReply, ClientError> {
    let mut c = Client::connect(addr).unwrap();
    let op = Op::Put { key: key.into(), value: b"v".to_vec() };
    c.kv(op).unwrap()
}

fn metric(addr: &str, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect(addr).ok()?;
    write!(s, "GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let line = text.lines().find(|l| l.starts_with(&format!("{name} ")))?;
    line.rsplit(' ').next()?.parse().ok()
}

#[test]
fn a_full_disk_on_a_follower_refuses_puts_until_space_returns_without_a_wipe() {
    // (Node 3 survives a file system at ENOSPC: its segment is preallocated, and while its
    // alarm stands only deletes and registrations reach its log.)
    const RESERVE: u64 = 16 * 1024 * 1024;
    let mut cluster = TestCluster::start_some(3, &[], &["--space-reserve-bytes", "16777216"]);
    let small = Tmpfs::mount(&cluster.dir.path().join("small"), "64m");
    let metrics_addr = format!("127.0.0.1:{}", free_ports(1)[0]);
    {
        let p = cluster.node(3);
        p.data_dir = small.0.join("node-3");
        let dir = p.data_dir.display().to_string();
        p.args.extend(["--data-dir".into(), dir, "--listen-metrics".into(), metrics_addr.clone()]);
    }
    for id in 1..=3 {
        cluster.node(id).start();
    }
    let mut leader = cluster.wait_for_leader();
    if leader == 3 {
        let mut c = cluster.node(3).wait_client();
        let _ = c.admin(AdminRequest::TransferLeader { to: 1 }).unwrap();
        let deadline = Instant::now() + DEADLINE;
        while leader == 3 {
            assert!(Instant::now() < deadline, "leadership never left node 3");
            std::thread::sleep(Duration::from_millis(50));
            leader = cluster.wait_for_leader();
        }
    }
    let leader_addr = cluster.procs[leader as usize - 1].client_addr.clone();
    put(&leader_addr, "before").unwrap();
    cluster.put("doomed", "1");
    assert_eq!(metric(&metrics_addr, "raft_no_space_alarm"), Some(0.0));

    // Node 3's file system full: another program writes until ENOSPC.
    let free = free_bytes(&small.0);
    assert!(free > RESERVE, "{free} bytes free on the new tmpfs");
    let filler = small.0.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("{e}"),
            }
        }
        let _ = f.write_all(&[0u8; 1]);
    }
    assert!(free_bytes(&small.0) < 64 * 1024, "the file system is full");
    let deadline = Instant::now() + DEADLINE;
    let refusal = loop {
        match put(&leader_addr, "during") {
            Err(ClientError::NoSpace(why)) => break why,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline, "puts never refused");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(refusal.contains("node 3"), "{refusal}");
    // Reads and deletes go on; the alarm is shown by the leader, by node 3 and its metrics.
    assert_eq!(cluster.get("before"), Some(b"v".to_vec()));
    let mut c = Client::connect(&leader_addr).unwrap();
    let deleted = c.kv(Op::Delete { key: b"doomed".to_vec() }).unwrap().unwrap();
    assert_eq!(deleted.result, OpResult::Delete(true));
    let cas = Op::Cas { key: b"before".to_vec(), expected: None, new: b"x".to_vec() };
    assert!(matches!(c.kv(cas).unwrap(), Err(ClientError::NoSpace(_))));
    let status = c.status().unwrap();
    assert!(status.alarms.iter().any(|a| a.starts_with("NOSPACE on node 3")), "{status:?}");
    let own = cluster.node(3).wait_client().status().unwrap();
    assert!(own.alarms.iter().any(|a| a.contains("--space-reserve-bytes")), "{own:?}");
    assert_eq!(metric(&metrics_addr, "raft_no_space_alarm"), Some(1.0));
    assert!(cluster.logs().contains("space alarm raised"));

    // Space returns: the alarm clears by itself and writes resume.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        match put(&leader_addr, "after") {
            Ok(_) => break,
            Err(ClientError::NoSpace(_)) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline, "puts never resumed");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(c.status().unwrap().alarms.is_empty());
    // Node 3 ran throughout and holds every write.
    assert!(cluster.node(3).child.as_mut().unwrap().try_wait().unwrap().is_none());
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut c3 = cluster.node(3).wait_client();
        let get = |c3: &mut Client, key: &[u8]| {
            let op = Op::Get { key: key.to_vec(), serializable: true };
            c3.kv(op).unwrap().unwrap().result
        };
        if get(&mut c3, b"after") == OpResult::Get(Some(b"v".to_vec())) {
            assert_eq!(get(&mut c3, b"before"), OpResult::Get(Some(b"v".to_vec())));
            assert_eq!(get(&mut c3, b"doomed"), OpResult::Get(None));
            break;
        }
        assert!(Instant::now() < deadline, "node 3 never applied the write after");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(metric(&metrics_addr, "raft_no_space_alarm"), Some(0.0));
    for id in 1..=3 {
        cluster.node(id).kill();
    }
    drop(small);
}

#[test]
fn a_data_dir_over_its_quota_refuses_puts_until_deletes_and_a_snapshot_shrink_it() {
    // 1 MiB segments (the cluster's default here), a 3 MiB quota, nothing kept behind a
    // snapshot: the operator's remedy (delete, snapshot) gives the space back.
    let flags = ["--space-quota-bytes", "3145728", "--snapshot-catchup-entries", "0"];
    let cluster = TestCluster::start(1, &flags);
    cluster.wait_for_leader();
    let addr = cluster.procs[0].client_addr.clone();
    let mut c = Client::connect(&addr).unwrap();
    let deadline = Instant::now() + DEADLINE;
    let mut written = 0;
    let refusal = loop {
        let op = Op::Put { key: format!("big/{written}").into_bytes(), value: vec![1; 64 * 1024] };
        match c.kv(op).unwrap() {
            Ok(_) => written += 1,
            Err(ClientError::NoSpace(why)) => break why,
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline, "the quota never refused a put");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(refusal.contains("--space-quota-bytes"), "{refusal}");
    assert!(written >= 20, "refused after {written} puts of 64 KiB");
    for i in 0..written {
        let deleted = c.kv(Op::Delete { key: format!("big/{i}").into_bytes() }).unwrap().unwrap();
        assert_eq!(deleted.result, OpResult::Delete(true));
    }
    match c.admin(AdminRequest::Snapshot).unwrap() {
        Ok(AdminReply::Snapshot { .. }) => {}
        other => panic!("{other:?}"),
    }
    let deadline = Instant::now() + DEADLINE;
    loop {
        match put(&addr, "after") {
            Ok(_) => break,
            Err(ClientError::NoSpace(_)) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline, "puts never resumed after the snapshot");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(c.status().unwrap().alarms.is_empty());
}
