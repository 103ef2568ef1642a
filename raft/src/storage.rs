//! The log's stable part: the [`Storage`] trait the core reads from, and [`MemoryStorage`].
//!
//! The core only reads storage. The application writes it when it handles a `Ready`: it appends
//! `ready.entries`, records `ready.hard_state`, applies `ready.snapshot`, and may compact.

use crate::errors::StorageError;
use crate::message::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use bytes::Bytes;

/// "No limit" for size-limited reads.
pub const NO_LIMIT: u64 = u64::MAX;

/// What a node restarts from: its hard state and its configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftState {
    /// The persisted term, vote and commit.
    pub hard_state: HardState,
    /// The configuration as of the last snapshot or recorded change.
    pub conf_state: ConfState,
}

/// The stable log, as the core reads it (etcd `Storage`).
///
/// Index conventions: entries `first_index()..=last_index()` are available; the entry just
/// before `first_index()` is covered by the snapshot and only its term is known.
pub trait Storage {
    /// The hard state and configuration to start from.
    fn initial_state(&self) -> Result<RaftState, StorageError>;

    /// Entries `[low, high)`, at most `max_size` bytes of them but always at least one.
    fn entries(&self, low: u64, high: u64, max_size: u64) -> Result<Vec<Entry>, StorageError>;

    /// The term of entry `index`, which may be the snapshot's index.
    fn term(&self, index: u64) -> Result<u64, StorageError>;

    /// The first index with an entry available (the snapshot index + 1).
    fn first_index(&self) -> Result<u64, StorageError>;

    /// The index of the last entry (the snapshot index when the log is empty).
    fn last_index(&self) -> Result<u64, StorageError>;

    /// The most recent snapshot. `request_index` is the index the leader needs the snapshot to
    /// cover at least; an implementation still building one answers
    /// `SnapshotTemporarilyUnavailable` and the leader asks again later.
    fn snapshot(&self, request_index: u64) -> Result<Snapshot, StorageError>;
}

/// Keeps the longest prefix of `entries` within `max_size` bytes, but always at least one
/// entry, so a single entry larger than the limit still makes progress.
pub fn limit_size(entries: &mut Vec<Entry>, max_size: u64) {
    if entries.len() <= 1 || max_size == NO_LIMIT {
        return;
    }
    let mut size = 0u64;
    let keep = entries
        .iter()
        .take_while(|e| {
            size = size.saturating_add(e.size_bytes());
            size <= max_size
        })
        .count();
    entries.truncate(keep.max(1));
}

/// An in-memory [`Storage`], for tests and for applications that keep their own durability.
///
/// Invariant: `entries[0]` is a dummy holding the snapshot's index and term; real entries follow
/// it contiguously.
#[derive(Clone, Debug)]
pub struct MemoryStorage {
    hard_state: HardState,
    conf_state: ConfState,
    snapshot_metadata: SnapshotMetadata,
    snapshot_data: Vec<u8>,
    entries: Vec<Entry>,
    snapshot_unavailable: bool,
}

impl Default for MemoryStorage {
    fn default() -> MemoryStorage {
        MemoryStorage::new()
    }
}

impl MemoryStorage {
    /// An empty storage with no configuration.
    pub fn new() -> MemoryStorage {
        MemoryStorage {
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            snapshot_metadata: SnapshotMetadata::default(),
            snapshot_data: Vec::new(),
            entries: vec![Entry::default()],
            snapshot_unavailable: false,
        }
    }

    /// An empty storage whose configuration is `conf_state`: a cluster bootstrapped this way
    /// has its initial configuration outside the log, so a node added later cannot learn it by
    /// replaying the log and must first receive a snapshot. Prefer `Config.peers`, which
    /// writes the configuration into the log.
    pub fn new_with_conf_state(conf_state: ConfState) -> MemoryStorage {
        MemoryStorage { conf_state, ..MemoryStorage::new() }
    }

    fn offset(&self) -> u64 {
        self.entries[0].index
    }

    fn last(&self) -> u64 {
        self.offset() + self.entries.len() as u64 - 1
    }

    /// The persisted hard state.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// Records the hard state of a Ready.
    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    /// The recorded configuration.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Records the configuration returned by `apply_conf_change`, so a restart starts from it.
    ///
    /// Contract: the configuration stored must be the one in force at the applied index the
    /// node restarts with (`Config.applied`). An application that rebuilds its state machine
    /// from a snapshot and re-applies the log after it must restart with the snapshot's
    /// configuration, or the configuration changes it re-applies are applied twice.
    pub fn set_conf_state(&mut self, conf_state: ConfState) {
        self.conf_state = conf_state;
    }

    /// Replaces the log and state with a snapshot received from the leader.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        let meta = &snapshot.metadata;
        if meta.index <= self.offset() {
            return Err(StorageError::SnapshotOutOfDate);
        }
        self.entries = vec![Entry { term: meta.term, index: meta.index, ..Entry::default() }];
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.conf_state = meta.conf_state.clone();
        self.snapshot_metadata = snapshot.metadata;
        self.snapshot_data = snapshot.data;
        Ok(())
    }

    /// Makes a snapshot at `index` (which must be applied) with the application's `data`; the
    /// configuration is the given one, or the recorded one. Compaction is separate.
    pub fn create_snapshot(
        &mut self,
        index: u64,
        conf_state: Option<ConfState>,
        data: Vec<u8>,
    ) -> Result<Snapshot, StorageError> {
        if index <= self.snapshot_metadata.index {
            return Err(StorageError::SnapshotOutOfDate);
        }
        if index > self.last() {
            return Err(StorageError::Unavailable);
        }
        let term = self.term(index)?;
        if let Some(cs) = conf_state {
            self.conf_state = cs;
        }
        self.snapshot_metadata =
            SnapshotMetadata { conf_state: self.conf_state.clone(), index, term };
        self.snapshot_data = data;
        Ok(self.current_snapshot())
    }

    /// Discards entries before `compact_index`; the entry at `compact_index` becomes the dummy.
    /// The application must not compact past its applied index.
    pub fn compact(&mut self, compact_index: u64) -> Result<(), StorageError> {
        if compact_index <= self.offset() {
            return Err(StorageError::Compacted);
        }
        if compact_index > self.last() {
            return Err(StorageError::Unavailable);
        }
        let cut = (compact_index - self.offset()) as usize;
        self.entries.drain(..cut);
        self.entries[0].data = Bytes::new();
        self.entries[0].context = Bytes::new();
        Ok(())
    }

    /// Appends entries, replacing any suffix they overlap (a Raft log conflict). Entries
    /// already compacted are skipped.
    ///
    /// Panics when the entries would leave a gap after the last index: the core never hands
    /// out such a batch, so it is a bug in the caller.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first_new) = entries.first().map(|e| e.index) else {
            return Ok(());
        };
        let first = self.offset() + 1;
        let last_new = first_new + entries.len() as u64 - 1;
        if last_new < first {
            return Ok(());
        }
        let entries =
            if first > first_new { &entries[(first - first_new) as usize..] } else { entries };
        let start = entries[0].index;
        assert!(
            start <= self.last() + 1,
            "missing log entry [last: {}, append at: {}]",
            self.last(),
            start
        );
        self.entries.truncate((start - self.offset()) as usize);
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    /// Makes `snapshot()` answer `SnapshotTemporarilyUnavailable`, as a storage still building
    /// its snapshot would, until [`MemoryStorage::clear_snapshot_unavailable`].
    pub fn trigger_snapshot_unavailable(&mut self) {
        self.snapshot_unavailable = true;
    }

    /// Lets `snapshot()` answer again after `trigger_snapshot_unavailable`.
    pub fn clear_snapshot_unavailable(&mut self) {
        self.snapshot_unavailable = false;
    }

    fn current_snapshot(&self) -> Snapshot {
        Snapshot { data: self.snapshot_data.clone(), metadata: self.snapshot_metadata.clone() }
    }
}

impl Storage for MemoryStorage {
    fn initial_state(&self) -> Result<RaftState, StorageError> {
        Ok(RaftState { hard_state: self.hard_state, conf_state: self.conf_state.clone() })
    }

    fn entries(&self, low: u64, high: u64, max_size: u64) -> Result<Vec<Entry>, StorageError> {
        if low <= self.offset() {
            return Err(StorageError::Compacted);
        }
        if high > self.last() + 1 || low > high {
            return Err(StorageError::Unavailable);
        }
        let lo = (low - self.offset()) as usize;
        let hi = (high - self.offset()) as usize;
        let mut out = self.entries[lo..hi].to_vec();
        limit_size(&mut out, max_size);
        Ok(out)
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        if index < self.offset() {
            return Err(StorageError::Compacted);
        }
        if index > self.last() {
            return Err(StorageError::Unavailable);
        }
        Ok(self.entries[(index - self.offset()) as usize].term)
    }

    fn first_index(&self) -> Result<u64, StorageError> {
        Ok(self.offset() + 1)
    }

    fn last_index(&self) -> Result<u64, StorageError> {
        Ok(self.last())
    }

    fn snapshot(&self, _request_index: u64) -> Result<Snapshot, StorageError> {
        if self.snapshot_unavailable {
            return Err(StorageError::SnapshotTemporarilyUnavailable);
        }
        Ok(self.current_snapshot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ents(terms: &[(u64, u64)]) -> Vec<Entry> {
        terms.iter().map(|&(i, t)| Entry::new(t, i, Vec::new())).collect()
    }

    fn storage_with(terms: &[(u64, u64)]) -> MemoryStorage {
        let mut s = MemoryStorage::new();
        s.entries = ents(terms);
        s
    }

    #[test]
    fn term_reports_compacted_and_unavailable() {
        let s = storage_with(&[(3, 3), (4, 4), (5, 5)]);
        assert_eq!(s.term(2), Err(StorageError::Compacted));
        assert_eq!(s.term(3), Ok(3));
        assert_eq!(s.term(5), Ok(5));
        assert_eq!(s.term(6), Err(StorageError::Unavailable));
    }

    #[test]
    fn entries_respect_bounds_and_size_limit_keeping_one() {
        let s = storage_with(&[(3, 3), (4, 4), (5, 5), (6, 6)]);
        assert_eq!(s.entries(2, 6, NO_LIMIT), Err(StorageError::Compacted));
        assert_eq!(s.entries(3, 4, NO_LIMIT), Err(StorageError::Compacted));
        assert_eq!(s.entries(4, 8, NO_LIMIT), Err(StorageError::Unavailable));
        assert_eq!(s.entries(4, 7, NO_LIMIT), Ok(ents(&[(4, 4), (5, 5), (6, 6)])));
        assert_eq!(s.entries(4, 7, 0), Ok(ents(&[(4, 4)])));
        let one = ents(&[(4, 4)])[0].size_bytes();
        assert_eq!(s.entries(4, 7, one * 2), Ok(ents(&[(4, 4), (5, 5)])));
        assert_eq!(s.entries(4, 7, one * 2 + 1), Ok(ents(&[(4, 4), (5, 5)])));
        assert_eq!(s.entries(4, 7, one * 3), Ok(ents(&[(4, 4), (5, 5), (6, 6)])));
    }

    #[test]
    fn compact_moves_the_dummy_and_refuses_out_of_range() {
        let mut s = storage_with(&[(3, 3), (4, 4), (5, 5)]);
        assert_eq!(s.compact(2), Err(StorageError::Compacted));
        assert_eq!(s.compact(3), Err(StorageError::Compacted));
        assert_eq!(s.compact(6), Err(StorageError::Unavailable));
        assert_eq!(s.compact(4), Ok(()));
        assert_eq!(s.first_index(), Ok(5));
        assert_eq!(s.term(4), Ok(4));
        assert_eq!(s.compact(5), Ok(()));
        assert_eq!(s.first_index(), Ok(6));
        assert_eq!(s.last_index(), Ok(5));
    }

    #[test]
    fn append_truncates_conflicts_and_skips_compacted() {
        let base = [(3, 3), (4, 4), (5, 5)];
        type Case = (Vec<(u64, u64)>, Vec<(u64, u64)>);
        let cases: Vec<Case> = vec![
            (vec![(1, 1), (2, 2)], vec![(3, 3), (4, 4), (5, 5)]),
            (vec![(3, 3), (4, 4), (5, 5)], vec![(3, 3), (4, 4), (5, 5)]),
            (vec![(3, 3), (4, 6), (5, 6)], vec![(3, 3), (4, 6), (5, 6)]),
            (vec![(3, 3), (4, 4), (5, 5), (6, 5)], vec![(3, 3), (4, 4), (5, 5), (6, 5)]),
            (vec![(2, 3), (3, 3), (4, 5)], vec![(3, 3), (4, 5)]),
            (vec![(4, 5)], vec![(3, 3), (4, 5)]),
            (vec![(6, 5)], vec![(3, 3), (4, 4), (5, 5), (6, 5)]),
        ];
        for (append, want) in cases {
            let mut s = storage_with(&base);
            s.append(&ents(&append)).unwrap();
            assert_eq!(s.entries, ents(&want), "append {append:?}");
        }
    }

    #[test]
    #[should_panic(expected = "missing log entry")]
    fn append_with_a_gap_panics() {
        let mut s = storage_with(&[(3, 3), (4, 4)]);
        s.append(&ents(&[(6, 4)])).unwrap();
    }

    #[test]
    fn create_snapshot_and_apply_snapshot_refuse_stale_indexes() {
        let mut s = storage_with(&[(3, 3), (4, 4), (5, 5)]);
        let cs = ConfState { voters: vec![1, 2, 3], ..ConfState::default() };
        let snap = s.create_snapshot(4, Some(cs.clone()), b"kv".to_vec()).unwrap();
        assert_eq!(snap.metadata, SnapshotMetadata { conf_state: cs, index: 4, term: 4 });
        assert_eq!(s.create_snapshot(4, None, vec![]), Err(StorageError::SnapshotOutOfDate));
        assert_eq!(s.create_snapshot(9, None, vec![]), Err(StorageError::Unavailable));

        let mut fresh = MemoryStorage::new();
        fresh.apply_snapshot(snap.clone()).unwrap();
        assert_eq!(fresh.first_index(), Ok(5));
        assert_eq!(fresh.last_index(), Ok(4));
        assert_eq!(fresh.hard_state().commit, 4);
        assert_eq!(fresh.apply_snapshot(snap), Err(StorageError::SnapshotOutOfDate));
    }
}
