//! The node's clocks, behind one trait so that the node runs on simulated time as well as on
//! the machine's (issue 17: the whole node under a simulator).
//!
//! A node reads three clocks: the monotonic clock of its timers and deadlines (`Instant`), the
//! clock its leases are measured on (CLOCK_BOOTTIME, which keeps counting while the machine is
//! suspended), and the wall clock that stamps commands for session expiry. Everything in the
//! node reads them through [`Clock`]; [`SystemClock`] is the machine's, and [`ManualClock`]
//! moves only when told, by the same amount on all three (plus a wall-clock offset of its own).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a node knows of time.
pub trait Clock: Send + Sync {
    /// Monotonic time, for ticks, timers and deadlines.
    fn now(&self) -> Instant;
    /// The clock leases are measured on: it never goes back and counts suspended time.
    fn lease_now(&self) -> Duration;
    /// Milliseconds since the Unix epoch (it may jump, as wall clocks do).
    fn wall_ms(&self) -> u64;
}

/// The machine's clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn lease_now(&self) -> Duration {
        boot_time()
    }

    fn wall_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// CLOCK_BOOTTIME, which, unlike `Instant`'s CLOCK_MONOTONIC, keeps counting while the
/// machine is suspended.
fn boot_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the call to write.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_BOOTTIME) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Clocks that move only when told: all three by [`ManualClock::advance`], the wall clock
/// alone by [`ManualClock::set_wall_offset_ms`] (a wall clock stepped by NTP, or a machine
/// whose clock is wrong).
#[derive(Debug)]
pub struct ManualClock {
    /// The `Instant` that stands for time zero.
    origin: Instant,
    /// Nanoseconds since time zero.
    elapsed_nanos: AtomicU64,
    /// The wall clock at time zero, in milliseconds since the Unix epoch.
    wall_origin_ms: u64,
    /// Added to the wall clock, as a two's complement `i64`.
    wall_offset_ms: AtomicU64,
}

impl ManualClock {
    /// Clocks at time zero, whose wall clock reads `wall_origin_ms` then.
    pub fn new(wall_origin_ms: u64) -> ManualClock {
        ManualClock {
            origin: Instant::now(),
            elapsed_nanos: AtomicU64::new(0),
            wall_origin_ms,
            wall_offset_ms: AtomicU64::new(0),
        }
    }

    /// Moves every clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).expect("a step below 584 years");
        self.elapsed_nanos.fetch_add(nanos, Ordering::SeqCst);
    }

    /// Time since time zero.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.elapsed_nanos.load(Ordering::SeqCst))
    }

    /// Sets how far the wall clock is from the others (negative: behind).
    pub fn set_wall_offset_ms(&self, offset_ms: i64) {
        self.wall_offset_ms.store(offset_ms as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.origin + self.elapsed()
    }

    fn lease_now(&self) -> Duration {
        self.elapsed()
    }

    fn wall_ms(&self) -> u64 {
        let offset = self.wall_offset_ms.load(Ordering::SeqCst) as i64;
        let ms = self.wall_origin_ms as i64 + self.elapsed().as_millis() as i64 + offset;
        ms.max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_all_three_together() {
        let clock = ManualClock::new(1_000_000);
        let (t0, l0) = (clock.now(), clock.lease_now());
        assert_eq!(clock.now(), t0);
        assert_eq!(clock.wall_ms(), 1_000_000);
        clock.advance(Duration::from_millis(250));
        assert_eq!(clock.now() - t0, Duration::from_millis(250));
        assert_eq!(clock.lease_now() - l0, Duration::from_millis(250));
        assert_eq!(clock.wall_ms(), 1_000_250);
        clock.set_wall_offset_ms(-2_000_000);
        assert_eq!(clock.wall_ms(), 0, "a wall clock far behind reads the epoch, not below");
        clock.set_wall_offset_ms(-50);
        assert_eq!(clock.wall_ms(), 1_000_200);
        assert_eq!(clock.lease_now() - l0, Duration::from_millis(250), "leases do not jump");
    }

    #[test]
    fn the_system_clocks_move_forward() {
        let clock = SystemClock;
        let (t0, l0) = (clock.now(), clock.lease_now());
        std::thread::sleep(Duration::from_millis(2));
        assert!(clock.now() > t0 && clock.lease_now() > l0);
        assert!(clock.wall_ms() > 1_600_000_000_000, "after 2020");
    }
}
