//! The log as the core sees it: the application's stable [`Storage`] followed by the
//! [`Unstable`] tail, plus the commit and applied cursors (etcd `raftLog`).

use log::info;

use crate::errors::StorageError;
use crate::log_unstable::Unstable;
use crate::message::{Entry, Snapshot};
use crate::storage::{limit_size, Storage, NO_LIMIT};

/// Storage plus unstable tail.
///
/// Invariant: `applied <= committed <= last_index()`.
pub struct RaftLog<T: Storage> {
    /// Entries persisted by the application.
    pub store: T,
    /// Entries and snapshot not yet persisted.
    pub unstable: Unstable,
    /// The highest index known to be committed on a quorum.
    pub committed: u64,
    /// The highest index the application has applied.
    pub applied: u64,
    /// Bytes of committed entries handed out per Ready (`NO_LIMIT` for none).
    pub max_next_ents_size: u64,
}

/// Panics on a storage error the core cannot recover from: anything but the two range
/// answers means the application's storage failed, and continuing could lose data.
fn fatal(err: StorageError, what: &str) -> ! {
    panic!("storage failed in {what}: {err}")
}

impl<T: Storage> RaftLog<T> {
    /// The log over `store`, with commit and applied at the storage's compaction point.
    pub fn new(store: T, max_next_ents_size: u64) -> RaftLog<T> {
        let first_index = store.first_index().unwrap_or_else(|e| fatal(e, "first_index"));
        let last_index = store.last_index().unwrap_or_else(|e| fatal(e, "last_index"));
        RaftLog {
            store,
            unstable: Unstable::new(last_index + 1),
            committed: first_index - 1,
            applied: first_index - 1,
            max_next_ents_size: if max_next_ents_size == 0 { NO_LIMIT } else { max_next_ents_size },
        }
    }

    /// The first index with an entry.
    pub fn first_index(&self) -> u64 {
        match self.unstable.maybe_first_index() {
            Some(index) => index,
            None => self.store.first_index().unwrap_or_else(|e| fatal(e, "first_index")),
        }
    }

    /// The index of the last entry.
    pub fn last_index(&self) -> u64 {
        match self.unstable.maybe_last_index() {
            Some(index) => index,
            None => self.store.last_index().unwrap_or_else(|e| fatal(e, "last_index")),
        }
    }

    /// The term of entry `index`; 0 outside `[first_index - 1, last_index]`. `Compacted` or
    /// `Unavailable` when the storage no longer (or not yet) has it.
    pub fn term(&self, index: u64) -> Result<u64, StorageError> {
        let dummy_index = self.first_index() - 1;
        if index < dummy_index || index > self.last_index() {
            return Ok(0);
        }
        if let Some(term) = self.unstable.maybe_term(index) {
            return Ok(term);
        }
        match self.store.term(index) {
            Ok(term) => Ok(term),
            Err(e @ (StorageError::Compacted | StorageError::Unavailable)) => Err(e),
            Err(e) => fatal(e, "term"),
        }
    }

    /// The term of the last entry.
    pub fn last_term(&self) -> u64 {
        let last = self.last_index();
        self.term(last).unwrap_or_else(|e| panic!("term of the last index {last}: {e}"))
    }

    /// True when entry `index` exists with `term`.
    pub fn match_term(&self, index: u64, term: u64) -> bool {
        self.term(index).is_ok_and(|t| t == term)
    }

    /// The index of the first entry in `entries` that is missing or differs in term; 0 when
    /// all are present.
    pub fn find_conflict(&self, entries: &[Entry]) -> u64 {
        for e in entries {
            if !self.match_term(e.index, e.term) {
                if e.index <= self.last_index() {
                    info!(
                        "found conflict at index {} [existing term: {}, conflicting term: {}]",
                        e.index,
                        self.term(e.index).unwrap_or(0),
                        e.term
                    );
                }
                return e.index;
            }
        }
        0
    }

    /// The largest `(index, term)` at or below `index` whose term is at or below `term`: where
    /// this log may still match a leader whose entry at `index` has `term`. An unknown term
    /// (compacted) is answered `(index, 0)`.
    pub fn find_conflict_by_term(&self, index: u64, term: u64) -> (u64, u64) {
        let mut index = index;
        while index > 0 {
            match self.term(index) {
                Err(_) => return (index, 0),
                Ok(our_term) if our_term <= term => return (index, our_term),
                Ok(_) => index -= 1,
            }
        }
        (0, 0)
    }

    /// Appends the leader's `entries` after (`index`, `log_term`) if this log has that entry,
    /// truncating a conflicting suffix, and commits up to `committed`. Returns the index of
    /// the last new entry, or `None` when the logs do not match at `index` (Raft §5.3).
    pub fn maybe_append(
        &mut self,
        index: u64,
        log_term: u64,
        committed: u64,
        entries: &[Entry],
    ) -> Option<u64> {
        // `term` is 0 past the last index, so without the bound an append past the end with
        // `log_term` 0 would "match" and leave a gap in the log.
        if index > self.last_index() || !self.match_term(index, log_term) {
            return None;
        }
        let last_new_index = index + entries.len() as u64;
        let conflict = self.find_conflict(entries);
        if conflict != 0 {
            assert!(
                conflict > self.committed,
                "entry {conflict} conflicts with committed entry [committed({})]",
                self.committed
            );
            let start = (conflict - (index + 1)) as usize;
            self.append(&entries[start..]);
        }
        self.commit_to(committed.min(last_new_index));
        Some(last_new_index)
    }

    /// Appends entries to the unstable tail, truncating what they overlap. Returns the new last
    /// index. Panics if they would overwrite a committed entry.
    pub fn append(&mut self, entries: &[Entry]) -> u64 {
        let Some(first) = entries.first() else {
            return self.last_index();
        };
        let after = first.index - 1;
        assert!(
            after >= self.committed,
            "append after {after} is out of range [committed({})]",
            self.committed
        );
        self.unstable.truncate_and_append(entries);
        self.last_index()
    }

    /// Entries not yet persisted.
    pub fn unstable_entries(&self) -> &[Entry] {
        &self.unstable.entries
    }

    /// Committed entries not yet applied, at most `max_next_ents_size` bytes but at least one.
    pub fn next_entries(&self) -> Vec<Entry> {
        let offset = (self.applied + 1).max(self.first_index());
        if self.committed + 1 > offset {
            match self.slice(offset, self.committed + 1, self.max_next_ents_size) {
                Ok(entries) => entries,
                Err(e) => panic!("unapplied entries [{offset}, {}]: {e}", self.committed),
            }
        } else {
            Vec::new()
        }
    }

    /// True when committed entries wait to be applied.
    pub fn has_next_entries(&self) -> bool {
        let offset = (self.applied + 1).max(self.first_index());
        self.committed + 1 > offset
    }

    /// True when a received snapshot waits to be persisted.
    pub fn has_pending_snapshot(&self) -> bool {
        self.unstable.snapshot.as_ref().is_some_and(|s| !s.is_empty())
    }

    /// The newest snapshot: the unstable one, else the storage's.
    pub fn snapshot(&self, request_index: u64) -> Result<Snapshot, StorageError> {
        match &self.unstable.snapshot {
            Some(snapshot) => Ok(snapshot.clone()),
            None => self.store.snapshot(request_index),
        }
    }

    /// Moves the commit index forward (never back). Panics if the log does not reach it.
    pub fn commit_to(&mut self, to_commit: u64) {
        if self.committed < to_commit {
            assert!(
                self.last_index() >= to_commit,
                "to_commit({to_commit}) is out of range [last_index({})]. Was the raft log \
                 corrupted, truncated, or lost?",
                self.last_index()
            );
            self.committed = to_commit;
        }
    }

    /// Records that the application applied up to `index`.
    pub fn applied_to(&mut self, index: u64) {
        if index == 0 {
            return;
        }
        assert!(
            self.committed >= index && index >= self.applied,
            "applied({index}) is out of range [prev_applied({}), committed({})]",
            self.applied,
            self.committed
        );
        self.applied = index;
    }

    /// The application persisted entries up to (`index`, `term`).
    pub fn stable_to(&mut self, index: u64, term: u64) {
        self.unstable.stable_to(index, term);
    }

    /// The last index of the durable prefix of the log: every entry up to it was persisted
    /// (entries below the unstable tail). 0 while a received snapshot waits to be persisted:
    /// what precedes it is being replaced.
    pub fn persisted_index(&self) -> u64 {
        if self.unstable.snapshot.is_some() {
            return 0;
        }
        self.unstable.offset - 1
    }

    /// The application persisted the snapshot at `index`.
    pub fn stable_snap_to(&mut self, index: u64) {
        self.unstable.stable_snap_to(index);
    }

    /// Entries from `index` to the end, at most `max_size` bytes but at least one.
    pub fn entries(&self, index: u64, max_size: u64) -> Result<Vec<Entry>, StorageError> {
        if index > self.last_index() {
            return Ok(Vec::new());
        }
        self.slice(index, self.last_index() + 1, max_size)
    }

    /// Every entry, for tests and debugging.
    pub fn all_entries(&self) -> Vec<Entry> {
        let first = self.first_index();
        self.entries(first, NO_LIMIT).unwrap_or_else(|e| panic!("all_entries from {first}: {e}"))
    }

    /// True when a log ending at (`last_index`, `term`) is at least as up to date as this one
    /// (Raft §5.4.1).
    pub fn is_up_to_date(&self, last_index: u64, term: u64) -> bool {
        term > self.last_term() || (term == self.last_term() && last_index >= self.last_index())
    }

    /// Commits up to `max_index` if that entry is of `term`: a leader commits by counting only
    /// entries of its own term (Raft §5.4.2).
    pub fn maybe_commit(&mut self, max_index: u64, term: u64) -> bool {
        let term_at = match self.term(max_index) {
            Ok(t) => t,
            Err(StorageError::Compacted) => 0,
            Err(e) => panic!("term of {max_index}: {e}"),
        };
        if max_index > self.committed && term_at == term {
            self.commit_to(max_index);
            true
        } else {
            false
        }
    }

    /// Resets the log to a snapshot from the leader.
    pub fn restore(&mut self, snapshot: Snapshot) {
        info!(
            "log [committed={}, applied={}, unstable.offset={}] starts to restore snapshot \
             [index: {}, term: {}]",
            self.committed,
            self.applied,
            self.unstable.offset,
            snapshot.metadata.index,
            snapshot.metadata.term
        );
        self.committed = snapshot.metadata.index;
        self.unstable.restore(snapshot);
    }

    /// Entries `[lo, hi)`, at most `max_size` bytes but at least one.
    pub fn slice(&self, lo: u64, hi: u64, max_size: u64) -> Result<Vec<Entry>, StorageError> {
        self.check_out_of_bounds(lo, hi)?;
        if lo == hi {
            return Ok(Vec::new());
        }
        let mut entries = Vec::new();
        let offset = self.unstable.offset;
        if lo < offset {
            let stable_hi = hi.min(offset);
            entries = match self.store.entries(lo, stable_hi, max_size) {
                Ok(entries) => entries,
                Err(StorageError::Compacted) => return Err(StorageError::Compacted),
                Err(e) => panic!("entries[{lo}, {stable_hi}) from storage: {e}"),
            };
            // The storage stopped early at the size limit: the unstable part is not needed.
            if (entries.len() as u64) < stable_hi - lo {
                return Ok(entries);
            }
        }
        if hi > offset {
            entries.extend_from_slice(self.unstable.slice(lo.max(offset), hi));
        }
        limit_size(&mut entries, max_size);
        Ok(entries)
    }

    fn check_out_of_bounds(&self, lo: u64, hi: u64) -> Result<(), StorageError> {
        assert!(lo <= hi, "invalid slice {lo} > {hi}");
        let first = self.first_index();
        if lo < first {
            return Err(StorageError::Compacted);
        }
        let last = self.last_index();
        assert!(hi <= last + 1, "slice[{lo},{hi}) out of bound [{first},{last}]");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::SnapshotMetadata;
    use crate::storage::MemoryStorage;

    fn ents(pairs: &[(u64, u64)]) -> Vec<Entry> {
        pairs.iter().map(|&(index, term)| Entry::new(term, index, vec![])).collect()
    }

    fn log_with(pairs: &[(u64, u64)]) -> RaftLog<MemoryStorage> {
        let mut log = RaftLog::new(MemoryStorage::new(), 0);
        log.append(&ents(pairs));
        log
    }

    #[test]
    fn find_conflict_returns_first_mismatch_or_new_entry() {
        let log = log_with(&[(1, 1), (2, 2), (3, 3)]);
        let cases: Vec<(Vec<(u64, u64)>, u64)> = vec![
            (vec![], 0),
            (vec![(1, 1), (2, 2), (3, 3)], 0),
            (vec![(2, 2), (3, 3)], 0),
            (vec![(1, 1), (2, 2), (3, 3), (4, 4), (5, 4)], 4),
            (vec![(4, 4), (5, 4)], 4),
            (vec![(1, 4), (2, 4)], 1),
            (vec![(2, 1), (3, 4), (4, 4)], 2),
            (vec![(3, 1), (4, 2), (5, 4), (6, 4)], 3),
        ];
        for (entries, want) in cases {
            assert_eq!(log.find_conflict(&ents(&entries)), want, "{entries:?}");
        }
    }

    #[test]
    fn find_conflict_by_term_skips_higher_terms() {
        let log = log_with(&[(1, 1), (2, 1), (3, 2), (4, 2), (5, 5), (6, 5)]);
        assert_eq!(log.find_conflict_by_term(6, 5), (6, 5));
        assert_eq!(log.find_conflict_by_term(6, 4), (4, 2));
        assert_eq!(log.find_conflict_by_term(6, 1), (2, 1));
        assert_eq!(log.find_conflict_by_term(6, 0), (0, 0));
    }

    #[test]
    fn maybe_append_appends_truncates_and_commits() {
        let base = [(1, 1), (2, 2), (3, 3)];
        // (index, log_term, committed, entries) -> (result, committed, last_index)
        type Case = (u64, u64, u64, Vec<(u64, u64)>, Option<u64>, u64, u64);
        let cases: Vec<Case> = vec![
            (3, 2, 3, vec![(4, 4)], None, 1, 3), // Term mismatch at 3.
            (4, 3, 3, vec![(5, 4)], None, 1, 3), // Index past the end.
            (3, 3, 3, vec![], Some(3), 3, 3),
            (3, 3, 4, vec![(4, 4)], Some(4), 4, 4),
            (3, 3, 2, vec![(4, 4)], Some(4), 2, 4),
            (2, 2, 4, vec![(3, 4)], Some(3), 3, 3), // Conflict at 3 truncates.
            (1, 1, 1, vec![(2, 4), (3, 4)], Some(3), 1, 3),
        ];
        for (index, log_term, committed, entries, want, want_commit, want_last) in cases {
            let mut log = log_with(&base);
            log.commit_to(1);
            assert_eq!(log.maybe_append(index, log_term, committed, &ents(&entries)), want);
            assert_eq!((log.committed, log.last_index()), (want_commit, want_last), "{entries:?}");
        }
    }

    #[test]
    #[should_panic(expected = "conflicts with committed entry")]
    fn maybe_append_panics_on_conflict_with_committed_entry() {
        let mut log = log_with(&[(1, 1), (2, 2), (3, 3)]);
        log.commit_to(3);
        log.maybe_append(1, 1, 3, &ents(&[(2, 5)]));
    }

    #[test]
    fn is_up_to_date_compares_last_term_then_last_index() {
        let log = log_with(&[(1, 1), (2, 2), (3, 3)]);
        assert!(!log.is_up_to_date(2, 2));
        assert!(!log.is_up_to_date(4, 2));
        assert!(log.is_up_to_date(1, 4));
        assert!(!log.is_up_to_date(2, 3));
        assert!(log.is_up_to_date(3, 3));
        assert!(log.is_up_to_date(4, 3));
    }

    #[test]
    fn next_entries_honour_applied_and_size_limit() {
        let mut log = log_with(&[(1, 1), (2, 1), (3, 1), (4, 1)]);
        log.commit_to(3);
        assert_eq!(log.next_entries(), ents(&[(1, 1), (2, 1), (3, 1)]));
        log.applied_to(1);
        assert_eq!(log.next_entries(), ents(&[(2, 1), (3, 1)]));
        log.max_next_ents_size = 1;
        assert_eq!(log.next_entries(), ents(&[(2, 1)]), "always at least one entry");
        log.applied_to(3);
        assert!(!log.has_next_entries());
    }

    #[test]
    fn slice_spans_storage_and_unstable() {
        let mut store = MemoryStorage::new();
        store.append(&ents(&[(1, 1), (2, 1), (3, 2)])).unwrap();
        let mut log = RaftLog::new(store, 0);
        log.append(&ents(&[(4, 2), (5, 3)]));
        assert_eq!(log.slice(2, 6, NO_LIMIT).unwrap(), ents(&[(2, 1), (3, 2), (4, 2), (5, 3)]));
        assert_eq!(log.slice(4, 5, NO_LIMIT).unwrap(), ents(&[(4, 2)]));
        let one = ents(&[(1, 1)])[0].size_bytes();
        assert_eq!(log.slice(2, 6, one * 3).unwrap(), ents(&[(2, 1), (3, 2), (4, 2)]));
        assert_eq!(log.slice(2, 6, one).unwrap(), ents(&[(2, 1)]));
    }

    #[test]
    fn restore_resets_to_the_snapshot() {
        let mut log = log_with(&[(1, 1)]);
        let snap = Snapshot {
            data: vec![],
            metadata: SnapshotMetadata { index: 100, term: 7, ..SnapshotMetadata::default() },
        };
        log.restore(snap);
        assert_eq!((log.committed, log.first_index(), log.last_index()), (100, 101, 100));
        assert_eq!(log.term(100), Ok(7));
        assert_eq!(log.last_term(), 7);
    }
}
