use std::fmt;

use super::Inflights;

/// How the leader currently replicates to a follower (etcd `tracker.StateType`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProgressState {
    /// One append per heartbeat interval until the follower's log position is found.
    #[default]
    Probe,
    /// Optimistic pipelined appends, bounded by the inflights ring.
    Replicate,
    /// A snapshot is on its way; nothing else is sent.
    Snapshot,
}

impl fmt::Display for ProgressState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ProgressState::Probe => "probe",
            ProgressState::Replicate => "replicate",
            ProgressState::Snapshot => "snapshot",
        };
        f.write_str(name)
    }
}

/// The leader's view of one follower (etcd `tracker.Progress`).
///
/// Invariant: `matched < next_idx`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The highest index known to be replicated on the follower (etcd `Match`).
    pub matched: u64,
    /// The next index to send (etcd `Next`).
    pub next_idx: u64,
    /// How the follower is replicated to.
    pub state: ProgressState,
    /// In Snapshot state, the index of the snapshot in flight.
    pub pending_snapshot: u64,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// In Probe state, an append is out and the next waits for its answer or a heartbeat.
    pub probe_sent: bool,
    /// Appends sent and not yet acknowledged.
    pub ins: Inflights,
    /// The follower is a learner.
    pub is_learner: bool,
    /// The sending time (`Message::sent_at`) of the newest heartbeat of this term the follower
    /// acknowledged, or 0: where the leader's lease may start.
    pub lease_ack: u64,
}

impl Progress {
    /// A progress probing from `next_idx`.
    pub fn new(next_idx: u64, inflight_cap: usize) -> Progress {
        Progress {
            matched: 0,
            next_idx,
            state: ProgressState::Probe,
            pending_snapshot: 0,
            recent_active: false,
            probe_sent: false,
            ins: Inflights::new(inflight_cap),
            is_learner: false,
            lease_ack: 0,
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.probe_sent = false;
        self.pending_snapshot = 0;
        self.state = state;
        self.ins.reset();
    }

    /// Back to probing: after a rejection, an unreachable report, or a finished snapshot.
    pub fn become_probe(&mut self) {
        // After a snapshot, probe from just past it: the follower has at least that much
        // when the snapshot applied, and if it did not, the probe's rejection corrects it.
        if self.state == ProgressState::Snapshot {
            let pending = self.pending_snapshot;
            self.reset_state(ProgressState::Probe);
            self.next_idx = (self.matched + 1).max(pending + 1);
        } else {
            self.reset_state(ProgressState::Probe);
            self.next_idx = self.matched + 1;
        }
    }

    /// Pipelined replication from just past `matched`.
    pub fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next_idx = self.matched + 1;
    }

    /// Waits for the snapshot at `snapshot_idx` to be applied.
    pub fn become_snapshot(&mut self, snapshot_idx: u64) {
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = snapshot_idx;
    }

    /// Records an acknowledgement up to `n`; true when `matched` moved.
    pub fn maybe_update(&mut self, n: u64) -> bool {
        let updated = self.matched < n;
        if updated {
            self.matched = n;
            self.probe_sent = false;
        }
        self.next_idx = self.next_idx.max(n + 1);
        updated
    }

    /// In Replicate state, assumes the append ending at `n` will succeed.
    pub fn optimistic_update(&mut self, n: u64) {
        self.next_idx = n + 1;
    }

    /// Handles the rejection of an append at `rejected`, with the follower's hint that the
    /// logs may match at `match_hint`. False when the rejection is stale and was ignored.
    pub fn maybe_decr_to(&mut self, rejected: u64, match_hint: u64) -> bool {
        if self.state == ProgressState::Replicate {
            // In Replicate state a rejection at or below matched is stale: that append was
            // overtaken by a later acknowledgement.
            if rejected <= self.matched {
                return false;
            }
            self.next_idx = self.matched + 1;
            return true;
        }
        // In Probe state only the answer to the last probe counts. A rejection at or below
        // matched cannot move next (never below matched + 1): resending at once would be
        // rejected again, in a loop as fast as the network. The probe stays sent, and is
        // retried at the next heartbeat answer.
        if self.next_idx == 0 || self.next_idx - 1 != rejected || rejected <= self.matched {
            return false;
        }
        self.next_idx = rejected.min(match_hint.saturating_add(1)).max(self.matched + 1);
        self.probe_sent = false;
        true
    }

    /// True when the leader must not send appends to this follower now.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.ins.full(),
            ProgressState::Snapshot => true,
        }
    }

    /// Checks the struct's invariant, naming the values that broke it.
    pub fn assert_invariants(&self, id: u64) {
        assert!(
            self.matched < self.next_idx,
            "progress of {id}: matched {} must be below next {}",
            self.matched,
            self.next_idx
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(state: ProgressState, matched: u64, next_idx: u64) -> Progress {
        Progress { state, matched, next_idx, ..Progress::new(next_idx, 256) }
    }

    #[test]
    fn maybe_decr_to_ignores_stale_rejections() {
        // Replicate: a rejection at or below matched is stale.
        let mut p = progress(ProgressState::Replicate, 5, 10);
        assert!(!p.maybe_decr_to(5, 5));
        assert_eq!(p.next_idx, 10);
        assert!(p.maybe_decr_to(9, 9));
        assert_eq!(p.next_idx, 6);
        // Probe: only a rejection of next - 1 counts; it moves next to the hint.
        let mut p = progress(ProgressState::Probe, 0, 10);
        assert!(!p.maybe_decr_to(8, 8));
        assert!(p.maybe_decr_to(9, 3));
        assert_eq!(p.next_idx, 4);
        // Never below matched + 1.
        let mut p = progress(ProgressState::Probe, 5, 10);
        assert!(p.maybe_decr_to(9, 0));
        assert_eq!(p.next_idx, 6);
        // A rejection of matched itself cannot make progress: it does not count.
        p.probe_sent = true;
        assert!(!p.maybe_decr_to(5, 0));
        assert_eq!((p.next_idx, p.probe_sent), (6, true));
    }

    #[test]
    fn maybe_update_moves_match_and_next_forward_only() {
        let mut p = progress(ProgressState::Probe, 3, 5);
        p.probe_sent = true;
        assert!(!p.maybe_update(2));
        assert!(p.probe_sent);
        assert!(p.maybe_update(4));
        assert!(!p.probe_sent);
        assert_eq!((p.matched, p.next_idx), (4, 5));
        assert!(p.maybe_update(7));
        assert_eq!((p.matched, p.next_idx), (7, 8));
    }

    #[test]
    fn paused_depends_on_state() {
        let mut p = progress(ProgressState::Probe, 0, 1);
        assert!(!p.is_paused());
        p.probe_sent = true;
        assert!(p.is_paused());
        let mut p = Progress::new(1, 1);
        p.become_replicate();
        assert!(!p.is_paused());
        p.ins.add(1);
        assert!(p.is_paused());
        p.become_snapshot(10);
        assert!(p.is_paused());
    }

    #[test]
    fn become_probe_after_snapshot_starts_past_the_snapshot() {
        let mut p = progress(ProgressState::Replicate, 1, 5);
        p.become_snapshot(10);
        p.become_probe();
        assert_eq!((p.state, p.next_idx), (ProgressState::Probe, 11));
        let mut p = progress(ProgressState::Replicate, 1, 5);
        p.become_snapshot(10);
        p.pending_snapshot = 0; // A failed snapshot clears the pending index first.
        p.become_probe();
        assert_eq!(p.next_idx, 2);
    }
}
