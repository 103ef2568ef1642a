//! What a frame can make the decoder allocate, measured with a counting allocator: a length
//! declared inside a payload must not be allocated beyond what the payload could hold
//! (issue 16, item 1: a 9-byte frame declaring a 255 MiB string allocated 255 MiB).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Deserialize;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Tests in this file measure one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Peak bytes allocated above the start while `f` runs.
fn peak_during(f: impl FnOnce()) -> usize {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    f();
    PEAK.load(Ordering::Relaxed) - base
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Hello {
    cluster_id: String,
    node_id: u64,
}

/// bincode's variable-length integer for a u32-sized value: marker 252, then 4 bytes.
fn varint_u32(n: u32) -> Vec<u8> {
    let mut out = vec![252];
    out.extend_from_slice(&n.to_le_bytes());
    out
}

#[test]
fn a_tiny_payload_declaring_a_huge_string_allocates_little() {
    let payload = varint_u32(255 * 1024 * 1024);
    assert_eq!(payload.len(), 5);
    let peak = peak_during(|| {
        let result = codec::decode_payload::<Hello>(&payload);
        assert!(matches!(result, Err(codec::Error::Malformed { .. })), "{result:?}");
    });
    assert!(peak < 64 * 1024, "a 5-byte payload made the decoder allocate {peak} bytes");
}

#[test]
fn a_payload_declaring_more_than_it_holds_allocates_at_most_32_times_its_length() {
    // 100 KiB of payload declaring a 200 MiB string.
    let mut payload = varint_u32(200 * 1024 * 1024);
    payload.resize(100 * 1024, b'x');
    let peak = peak_during(|| {
        assert!(codec::decode_payload::<Hello>(&payload).is_err());
    });
    assert!(peak <= 32 * payload.len(), "{peak} bytes for a {}-byte payload", payload.len());
}

#[test]
fn a_payload_declaring_a_huge_sequence_allocates_at_most_serdes_cautious_bound() {
    // serde preallocates at most 1 MiB for a sequence whatever length it declares.
    let payload = varint_u32(u32::MAX);
    let peak = peak_during(|| {
        assert!(codec::decode_payload::<Vec<u64>>(&payload).is_err());
    });
    assert!(peak <= 1024 * 1024 + 256 * 1024, "{peak} bytes");
}

#[test]
fn legitimate_payloads_of_every_size_still_decode() {
    for len in [0usize, 1, 4095, 4096, 4097, 70_000, 1 << 20, (1 << 22) + 1, 20 << 20] {
        let value = ("k".to_string(), vec![7u8; len]);
        let bytes = codec::encode_value(&value).expect("encodes");
        let back: (String, Vec<u8>) = codec::decode_payload(&bytes).expect("decodes");
        assert_eq!(back, value, "a value of {len} bytes");
    }
}

/// bincode's guard counts each primitive at its in-memory size (a `u64` encoded in one byte
/// counts 8): values made mostly of small integers must still decode.
#[test]
fn values_of_many_small_integers_decode_under_the_guard() {
    #[derive(Debug, PartialEq, serde::Serialize, Deserialize)]
    struct Small {
        kind: u32,
        term: u64,
        index: u64,
        data: Vec<u8>,
        flag: bool,
        wide: u128,
    }
    for n in [1usize, 200, 5_000, 100_000] {
        let value: Vec<Small> = (0..n)
            .map(|i| Small {
                kind: 1,
                term: 1,
                index: i as u64 % 100,
                data: vec![],
                flag: true,
                wide: 1,
            })
            .collect();
        let bytes = codec::encode_value(&value).expect("encodes");
        let back: Vec<Small> = codec::decode_payload(&bytes).expect("decodes");
        assert_eq!(back, value, "{n} values in {} bytes", bytes.len());
    }
}
