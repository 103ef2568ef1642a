//! The memory a client session costs the state machine, measured with a counting allocator:
//! the table is bounded by count (`--max-sessions`), and this is what one session weighs, so
//! the bound in bytes is known (README, "Client sessions").

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use raftd::kv::{Applied, Command, CommandBody, Kv, SessionLimits};
use raftd::protocol::Op;

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Sessions measured.
const SESSIONS: u64 = 100_000;
/// What one session may cost at most, a put's reply held (measured 156 bytes on x86_64; the
/// README states the bound).
const SESSION_BYTES_MAX: isize = 200;

#[test]
fn a_session_costs_under_its_stated_bound() {
    let limits =
        SessionLimits { max_sessions: SESSIONS, ttl_ms: 3_600_000, ..SessionLimits::default() };
    let mut kv = Kv::new();
    // The keys written: counted apart, they are data, not sessions.
    let mut index = 0;
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    for _ in 0..SESSIONS {
        index += 1;
        let register = CommandBody::RegisterSession { token: Vec::new(), limits };
        let Applied::Registered { session_id } =
            kv.apply(index, Command { leader_time_ms: index, body: register })
        else {
            panic!("registers")
        };
        index += 1;
        // Every session writes the same key: the data stays one entry.
        let op = Op::Put { key: b"k".to_vec(), value: b"v".to_vec() };
        let write = CommandBody::Write { session_id, seq: 1, op };
        let applied = kv.apply(index, Command { leader_time_ms: index, body: write });
        assert!(matches!(applied, Applied::Write(Ok(_))));
    }
    let per_session = (LIVE_BYTES.load(Ordering::Relaxed) - before) / SESSIONS as isize;
    assert_eq!(kv.session_count() as u64, SESSIONS);
    println!("{per_session} bytes per session ({SESSIONS} sessions, each with a put's reply)");
    assert!(per_session <= SESSION_BYTES_MAX, "{per_session} bytes per session");
}
