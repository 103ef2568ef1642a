//! Encoding and decoding the frames on raftd's hot paths, with the real wire types: an append
//! of 64 entries of 256 bytes (leader to follower), its acknowledgement, and a client's put
//! with its reply. `bincode` inside, behind the `codec` crate.
//!
//! Run with `cargo bench -p raftd --bench codec`; results are recorded in `BENCHMARKS.md`.

// criterion_group! generates a public function without a doc comment.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use raft::{Entry, Message, MessageType};
use raftd::kv::{Command, CommandBody};
use raftd::protocol::{ClientRequest, ClientResponse, KvReply, Op, OpResult, PeerFrame};

const VALUE_SIZE_BYTES: usize = 256;
const ENTRIES_PER_APPEND: usize = 64;

fn append() -> PeerFrame {
    let entries = (0..ENTRIES_PER_APPEND as u64)
        .map(|i| Entry {
            term: 3,
            index: 1000 + i,
            data: vec![7; VALUE_SIZE_BYTES].into(),
            ..Entry::default()
        })
        .collect();
    PeerFrame::Raft(Message {
        msg_type: MessageType::Append,
        from: 1,
        to: 2,
        term: 3,
        log_term: 3,
        index: 999,
        commit: 990,
        entries,
        ..Message::default()
    })
}

fn ack() -> PeerFrame {
    PeerFrame::Raft(Message {
        msg_type: MessageType::AppendResponse,
        from: 2,
        to: 1,
        term: 3,
        index: 1063,
        ..Message::default()
    })
}

fn put() -> ClientRequest {
    ClientRequest::Kv {
        request_id: 77,
        session_id: 0x1234_5678,
        seq: 42,
        op: Op::Put { key: b"key000042".to_vec(), value: vec![b'v'; VALUE_SIZE_BYTES] },
    }
}

fn bench_encode<T: serde::Serialize>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    value: &T,
) {
    let mut encoder = codec::FrameEncoder::new(codec::FRAME_SIZE_MAX_DEFAULT);
    encoder.encode(value).expect("encodes");
    let len = encoder.pending_len();
    encoder.consume(len);
    group.throughput(Throughput::Bytes(len as u64));
    group.bench_function(format!("encode/{name}"), |b| {
        b.iter(|| {
            encoder.encode(black_box(value)).expect("encodes");
            let n = encoder.pending_len();
            encoder.consume(n);
        })
    });
}

fn bench_frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("frames");
    bench_encode(&mut group, "append_64x256", &append());
    bench_encode(&mut group, "append_ack", &ack());
    bench_encode(&mut group, "put_256", &put());
    let reply = KvReply { index: 1063, result: OpResult::Put };
    bench_encode(
        &mut group,
        "put_reply",
        &ClientResponse::Kv { request_id: 77, result: Ok(reply) },
    );
    let frame = codec::encode_value(&append()).expect("encodes");
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function("decode/append_64x256", |b| {
        b.iter(|| black_box(codec::decode_payload::<PeerFrame>(&frame).expect("decodes")))
    });
    let frame = codec::encode_value(&put()).expect("encodes");
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function("decode/put_256", |b| {
        b.iter(|| black_box(codec::decode_payload::<ClientRequest>(&frame).expect("decodes")))
    });
    // What the state machine does per applied write: decode the entry's command.
    let command = Command {
        leader_time_ms: 1_796_000_000_000,
        body: CommandBody::Write {
            session_id: 9,
            seq: 1,
            op: Op::Put { key: b"key000042".to_vec(), value: vec![b'v'; VALUE_SIZE_BYTES] },
        },
    };
    let bytes = codec::encode_value(&command).expect("encodes");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("decode/command_put_256", |b| {
        b.iter(|| black_box(codec::decode_payload::<Command>(&bytes).expect("decodes")))
    });
    group.finish();
}

criterion_group!(benches, bench_frames);
criterion_main!(benches);
