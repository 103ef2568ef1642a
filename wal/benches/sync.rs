//! One group commit as raftd does it per loop iteration: append a batch of 256-byte entries
//! and a hard state, then sync. Criterion timing per batch, for batches of 1, 64 and 256.
//! (`append.rs` measures long steady runs and recovery; this is the per-iteration cost.)
//!
//! Run with `cargo bench -p wal --bench sync`; results are recorded in `BENCHMARKS.md`.

// criterion_group! generates a public function without a doc comment.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wal::{EntryRef, HardState, Identity, Options, Wal};

const ENTRY_SIZE_BYTES: usize = 256;

fn bench_group_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_append_and_sync");
    group.sample_size(20);
    for batch in [1u64, 64, 256] {
        group.throughput(Throughput::Elements(batch));
        group.bench_with_input(BenchmarkId::new("batch", batch), &batch, |b, &batch| {
            let dir = tempfile::tempdir().expect("tempdir");
            let identity = Identity { node_id: 1, cluster_id: "bench".to_string() };
            let (mut wal, _) = Wal::open(dir.path(), &identity, Options::default()).expect("open");
            let payload = vec![0x5au8; ENTRY_SIZE_BYTES];
            let mut index = 0u64;
            let mut refs: Vec<EntryRef<'_>> = Vec::with_capacity(batch as usize);
            b.iter(|| {
                refs.clear();
                refs.extend((1..=batch).map(|k| EntryRef {
                    head: &[],
                    index: index + k,
                    term: 1,
                    data: &payload,
                }));
                wal.append_entries(&refs).expect("append");
                index += batch;
                wal.set_hard_state(HardState { term: 1, vote: 1, commit: index })
                    .expect("hard state");
                wal.sync().expect("sync");
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_group_commit);
criterion_main!(benches);
