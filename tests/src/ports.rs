//! Free ports for tests that start real processes. Shared by this crate and raftd's own
//! integration tests (`raftd/tests/common`, by path), so that both hand out ports the same way.

use std::net::TcpListener;

/// `n` ports free now on 127.0.0.1.
pub fn free_ports(n: usize) -> Vec<u16> {
    // Ports below the kernel's ephemeral range (32768-60999 by default), handed out in turn
    // from a random start: a port given here is never meanwhile the source port of some
    // test's outgoing connection (the flood tests open thousands), nor given twice to tests
    // running in parallel in this process (cargo runs test binaries one at a time).
    const PORT_LOW: u32 = 10_000;
    const PORT_HIGH: u32 = 32_000;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().wrapping_mul(7919);
    let _ = NEXT.compare_exchange(
        0,
        seed % (PORT_HIGH - PORT_LOW),
        std::sync::atomic::Ordering::Relaxed,
        std::sync::atomic::Ordering::Relaxed,
    );
    let mut listeners = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let offset =
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % (PORT_HIGH - PORT_LOW);
        let port = (PORT_LOW + offset) as u16;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            listeners.push(listener);
            ports.push(port);
        }
    }
    ports
}
