//! Power loss of real processes under load: a node's data dir is rebuilt as its disk would be
//! after losing power (only what its syncs made durable, and a seeded choice of the unsynced
//! pages), for one node, two, and all three at once. `kill -9` alone keeps the page cache and
//! proves nothing about syncs; this does. Every acknowledged write must survive: the history
//! is checked for linearizability and the nodes for identical state.

use faults::harness::{self, Cluster, Workload};
use raftd::protocol::AdminRequest;

struct Rng(u64);

impl Rng {
    fn coin(&mut self) -> bool {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % 2 == 0
    }
}

#[test]
fn power_cuts_of_one_two_and_all_nodes_lose_no_acknowledged_write() {
    // Frequent snapshots, so that snapshot files, markers and compaction are cut too.
    let extra = ["--snapshot-entries=300", "--snapshot-catchup-entries=50"];
    let mut cluster = Cluster::start_shadowed(3, &extra);
    cluster.wait_for_leader();
    let workload = Workload::start(&cluster, 4, 5);
    workload.wait_ops(60);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut lost = 0;
    // POWER_LOSS_ROUNDS repeats the three cuts (a long run by hand; TESTING.md).
    let rounds: usize =
        std::env::var("POWER_LOSS_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let mut plan = Vec::new();
    for round in 0..rounds {
        plan.push(vec![1 + (round as u64 % 3)]);
        plan.push(vec![1 + (round as u64 % 3), 1 + ((round as u64 + 1) % 3)]);
        plan.push(vec![1, 2, 3]);
    }
    plan[0] = vec![cluster.wait_for_leader()];
    for victims in plan {
        for &id in &victims {
            // Half the cuts keep no unsynced page, half a random half of them.
            let keep_some = rng.coin();
            let cut = cluster.power_cut(id, &mut |_| keep_some && rng.coin());
            lost += cut.pages_lost;
        }
        for &id in &victims {
            cluster.restart(id);
        }
        cluster.wait_for_leader();
        workload.wait_ops(60);
    }
    eprintln!("power cuts dropped {lost} unsynced pages in all");
    if let Err(e) = harness::verify(&cluster, workload) {
        panic!("{e}");
    }
}

/// Issue 15 item 3, the README's path for growing a one-node cluster: a single voter with a
/// learner. The voter commits only what it has synced, so a power cut that loses its unsynced
/// tail loses nothing the learner applied; before, the learner was told of commits the voter
/// had not synced, applied them, and then met different entries at those indexes.
#[test]
fn a_learner_of_a_single_voter_applies_nothing_that_a_power_cut_of_the_voter_loses() {
    let mut cluster = Cluster::start_shadowed(1, &[]);
    cluster.wait_for_leader();
    let (peer, client) = Cluster::new_addrs();
    cluster.add_node(2, peer.clone(), client, vec!["--join".into()]);
    cluster.change(AdminRequest::AddLearner { id: 2, addr: peer });
    let workload = Workload::start(&cluster, 4, 5);
    workload.wait_ops(60);
    let mut lost = 0;
    for _ in 0..4 {
        lost += cluster.power_cut(1, &mut |_| false).pages_lost;
        cluster.restart(1);
        cluster.wait_for_leader();
        workload.wait_ops(60);
    }
    eprintln!("power cuts dropped {lost} unsynced pages in all");
    if let Err(e) = harness::verify(&cluster, workload) {
        panic!("{e}");
    }
}

/// Raft thesis §6.4 for a single voter (the README's one-node cluster): after a power cut its
/// recovered commit index lags the entries it synced and acknowledged (the hard state that
/// covered them was not synced yet). A read it takes in the loop iteration in which it elects
/// itself, answered at that commit index before the new term's first entry commits, misses an
/// acknowledged write. Found by the whole-node simulator (`--single-voter`, seed 969 with
/// `--one-way --timing`); `raft/tests/read_index.rs` has the rule alone. Here clients keep
/// reading while the node restarts, so that some read lands in that iteration (the history
/// check caught it in one run of four without the fix; the unit test in every run).
#[test]
fn a_single_voter_reads_every_acknowledged_write_after_a_power_cut() {
    let mut cluster = Cluster::start_shadowed(1, &[]);
    cluster.wait_for_leader();
    let workload = Workload::start(&cluster, 8, 5);
    workload.wait_ops(60);
    for _ in 0..10 {
        cluster.power_cut(1, &mut |_| false);
        cluster.restart(1);
        cluster.wait_for_leader();
        workload.wait_ops(60);
    }
    if let Err(e) = harness::verify(&cluster, workload) {
        panic!("{e}");
    }
}

/// Unmounts a tmpfs when dropped.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn run(cmd: &str, args: &[&str]) -> bool {
    std::process::Command::new(cmd).args(args).status().is_ok_and(|s| s.success())
}

/// A full disk: a node whose data dir runs out of space stops with the system's words, and
/// once space is freed it starts again, recovers and rejoins, nothing lost. The data dir is
/// moved onto a small tmpfs (this needs mount rights, which the project's machine and CI
/// have; elsewhere the test says so and does nothing).
#[test]
fn a_full_disk_stops_the_node_with_a_clear_error_and_it_rejoins_once_space_is_freed() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader();
    let workload = Workload::start(&cluster, 4, 5);
    workload.wait_ops(30);
    let victim = if leader == 1 { 2 } else { 1 };
    cluster.kill(victim);
    // Small segments: the next one, which does not fit, is soon needed.
    let node = cluster.node(victim);
    node.args.retain(|a| !a.starts_with("--segment-size-bytes"));
    node.args.push("--segment-size-bytes=65536".into());
    let data_dir = cluster.nodes[&victim].data_dir.clone();
    let kept = data_dir.with_extension("before");
    std::fs::rename(&data_dir, &kept).unwrap();
    std::fs::create_dir(&data_dir).unwrap();
    let used: u64 = walk_size(&kept);
    let size = format!("size={}", used + 96 * 1024);
    let dir = data_dir.to_str().unwrap();
    if !run("mount", &["-t", "tmpfs", "-o", &size, "tmpfs", dir]) {
        eprintln!("cannot mount a tmpfs here: the full-disk test did not run");
        return;
    }
    let _mount = Mount(data_dir.clone());
    assert!(run("cp", &["-a", &format!("{}/.", kept.display()), dir]));
    cluster.restart(victim);
    let code = cluster.node(victim).wait_exit();
    assert!(code.is_some_and(|c| c != 0), "the full disk stops the node: {code:?}");
    let log = std::fs::read_to_string(&cluster.nodes[&victim].log).unwrap();
    assert!(log.contains("No space left on device"), "a clear error:\n{log}");
    // Space freed: the node recovers what it had and catches up.
    assert!(run("mount", &["-o", "remount,size=256m", dir]));
    cluster.restart(victim);
    workload.wait_ops(60);
    if let Err(e) = harness::verify(&cluster, workload) {
        panic!("{e}");
    }
}

fn walk_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() { walk_size(&entry.path()) } else { meta.len() };
    }
    total
}
