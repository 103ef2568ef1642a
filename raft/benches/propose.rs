//! Committed proposals per second through a three-node in-memory cluster, every Ready
//! handled as the contract says (entries persisted to `MemoryStorage`, messages delivered,
//! committed entries applied), for batches of 1 and of 64 proposals per Ready.
//!
//! Run with `cargo bench -p raft`; results are recorded in `BENCHMARKS.md`.

// criterion_group! generates a public function without a doc comment.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

#[path = "../tests/common/cluster.rs"]
mod cluster;

use cluster::Cluster;
use raft::{Bytes, Storage};

/// Bytes per proposal, as in the project's key-value workload.
const PAYLOAD_SIZE_BYTES: usize = 256;
/// Applied entries kept in storage before the benchmark compacts every log.
const COMPACT_EVERY_ENTRIES: u64 = 10_000;

fn compact_all(cluster: &mut Cluster) {
    let applied = cluster.nodes.values().map(|n| n.raw.raft.raft_log.applied).min().unwrap_or(0);
    for node in cluster.nodes.values_mut() {
        let first = node.raw.store().first_index().expect("first index");
        if applied > first + COMPACT_EVERY_ENTRIES {
            node.raw.store_mut().compact(applied).expect("compact applied prefix");
        }
        node.applied.clear();
    }
}

fn bench_propose(c: &mut Criterion) {
    let mut group = c.benchmark_group("committed_proposals_3_nodes");
    group.sample_size(20);
    for batch in [1u64, 64] {
        group.throughput(Throughput::Elements(batch));
        group.bench_with_input(BenchmarkId::new("batch", batch), &batch, |b, &batch| {
            let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
            cluster.elect(1);
            let payload = vec![7u8; PAYLOAD_SIZE_BYTES];
            let mut proposed = 0u64;
            b.iter(|| {
                for _ in 0..batch {
                    cluster.node(1).propose(Vec::new(), payload.clone()).expect("proposal");
                }
                cluster.stabilize();
                proposed += batch;
                if proposed % COMPACT_EVERY_ENTRIES < batch {
                    compact_all(&mut cluster);
                }
            });
            let leader = &cluster.nodes[&1].raw.raft.raft_log;
            assert_eq!(leader.applied, leader.committed, "every proposal applied");
        });
    }
    // The same 64 proposals in one propose_batch call: one append message per follower
    // instead of 64, which is what a daemon that batches its clients' writes does.
    group.throughput(Throughput::Elements(64));
    group.bench_function("propose_batch/64", |b| {
        let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
        cluster.elect(1);
        let payload = vec![7u8; PAYLOAD_SIZE_BYTES];
        let mut proposed = 0u64;
        b.iter(|| {
            let batch = (0..64).map(|_| (Bytes::new(), Bytes::from(payload.clone()))).collect();
            cluster.node(1).propose_batch(batch).expect("proposal");
            cluster.stabilize();
            proposed += 64;
            if proposed % COMPACT_EVERY_ENTRIES < 64 {
                compact_all(&mut cluster);
            }
        });
    });
    group.finish();
}

criterion_group!(benches, bench_propose);
criterion_main!(benches);
