//! Power loss of real processes under load: a node's data dir is rebuilt as its disk would be
//! after losing power (only what its syncs made durable, and a seeded choice of the unsynced
//! pages), for one node, two, and all three at once. `kill -9` alone keeps the page cache and
//! proves nothing about syncs; this does. Every acknowledged write must survive: the history
//! is checked for linearizability and the nodes for identical state.

use faults::harness::{self, Cluster, Workload};

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
    for victims in [vec![cluster.wait_for_leader()], vec![1, 2], vec![1, 2, 3]] {
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
