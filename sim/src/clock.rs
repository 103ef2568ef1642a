//! Time for lease reads: one global clock, and per node a local clock that runs at its own
//! rate (bounded drift), ticks derived from it (missed ticks caught up, as raftd does), and
//! pauses (a process stopped while time goes on).
//!
//! Leases are only as safe as their clock assumption (README, "Lease-based reads"): a
//! voter's clock runs no more than 10% slower than the leader's over an election timeout.
//! The model draws every rate within [`CLOCK_DRIFT_PPM_MAX`] of true time, so any two
//! clocks differ by less than that assumption, and a stale lease read is a bug, not a
//! broken assumption.

use std::time::Duration;

/// Global time per simulation step.
pub const STEP_MICROS: u64 = 10_000;
/// Local time per tick.
pub const TICK_MICROS: u64 = 100_000;
/// Largest deviation of a node's clock rate from true time, in parts per million (4%: two
/// clocks differ by at most ~8.3%, inside the lease's 10% margin).
pub const CLOCK_DRIFT_PPM_MAX: u64 = 40_000;
/// Ticks caught up at most after a pause, in election timeouts (raftd's
/// `TICK_CATCH_UP_ELECTION_TIMEOUTS`).
pub const TICK_CATCH_UP_ELECTION_TIMEOUTS: u64 = 2;

/// One node's clock.
#[derive(Clone, Debug)]
pub struct NodeClock {
    /// Local microseconds per million global ones.
    pub rate_ppm: u64,
    /// Local time at global time 0.
    pub offset_micros: u64,
    /// Local time when the running process started ticking.
    pub tick_base_micros: u64,
    /// Ticks delivered since `tick_base_micros`, or counted as due.
    pub ticks_done: u64,
    /// Global time until which the process is stopped (0: running).
    pub paused_until_micros: u64,
}

impl NodeClock {
    /// A clock of `rate_ppm` and `offset_micros`, not yet ticking.
    pub fn new(rate_ppm: u64, offset_micros: u64) -> NodeClock {
        NodeClock {
            rate_ppm,
            offset_micros,
            tick_base_micros: 0,
            ticks_done: 0,
            paused_until_micros: 0,
        }
    }

    /// The local time at global time `now_micros` (monotonic, as CLOCK_BOOTTIME: it runs on
    /// through pauses and restarts).
    pub fn local_micros(&self, now_micros: u64) -> u64 {
        self.offset_micros + now_micros * self.rate_ppm / 1_000_000
    }

    /// The local time as the core's lease clock.
    pub fn lease_clock(&self, now_micros: u64) -> Duration {
        Duration::from_micros(self.local_micros(now_micros))
    }

    /// Starts ticking from `now_micros` (a process start).
    pub fn restart(&mut self, now_micros: u64) {
        self.tick_base_micros = self.local_micros(now_micros);
        self.ticks_done = 0;
        self.paused_until_micros = 0;
    }

    /// Whether the process is stopped at `now_micros`.
    pub fn paused(&self, now_micros: u64) -> bool {
        now_micros < self.paused_until_micros
    }

    /// Ticks to deliver now: every tick interval passed since the last, at most
    /// `catch_up_max` (the rest are dropped, as raftd drops them).
    pub fn ticks_due(&mut self, now_micros: u64, catch_up_max: u64) -> u64 {
        let elapsed = self.local_micros(now_micros).saturating_sub(self.tick_base_micros);
        let due = elapsed / TICK_MICROS;
        let ticks = due.saturating_sub(self.ticks_done);
        self.ticks_done = due;
        ticks.min(catch_up_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_runs_at_its_rate_and_ticks_catch_up_within_the_cap() {
        let mut c = NodeClock::new(1_040_000, 5);
        assert_eq!(c.local_micros(1_000_000), 1_040_005);
        c.restart(0);
        assert_eq!(c.ticks_due(STEP_MICROS, 20), 0);
        assert_eq!(c.ticks_due(1_000_000, 20), 10);
        // A pause of ten seconds: 104 ticks due, 20 delivered, none owed afterwards.
        assert_eq!(c.ticks_due(11_000_000, 20), 20);
        assert_eq!(c.ticks_due(11_000_000, 20), 0);
    }
}
