//! The newest log entries, kept as appended: their payloads are the shared bytes that came
//! from the client (on the leader) or from the leader's frame (on a follower), so the
//! entries the core asks back from storage to apply or to send are handed out by reference,
//! not copied out of the WAL's mapped segments and decoded again.
//!
//! The WAL stays the truth: the cache holds a contiguous run of entries ending at the log's
//! last index, and is cut back whenever the log is (a conflicting suffix replaced, a
//! snapshot installed, a compaction). A range it does not hold is read from the WAL.
//!
//! Entries leave it once applied: what is still needed then is a lagging follower's, read
//! from the WAL as before. Holding applied payloads longer kept megabytes of them alive
//! that the allocator would otherwise have handed straight back to the next proposals.

use std::collections::VecDeque;

use raft::Entry;

/// Bytes of entries the cache holds at most, counted as the WAL counts them (head and data).
/// Applied entries leave at once, so this bounds only a backlog of unapplied ones (a
/// follower far behind its commit index, say).
pub const ENTRY_CACHE_BYTES_MAX: u64 = 8 * 1024 * 1024;

/// A contiguous run of the newest entries.
#[derive(Debug, Default)]
pub struct EntryCache {
    entries: VecDeque<Entry>,
    /// The sum of [`stored_len`] over `entries`.
    bytes: u64,
}

/// Bytes an entry takes in the WAL: its head (type, context length, context) and data.
pub fn stored_len(e: &Entry) -> u64 {
    crate::storage::ENTRY_PREFIX_SIZE as u64 + e.context.len() as u64 + e.data.len() as u64
}

impl EntryCache {
    /// The index of the first entry held, if any.
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|e| e.index)
    }

    /// The index of the last entry held, if any.
    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|e| e.index)
    }

    /// Records entries just appended to the log (contiguous, replacing the log's suffix from
    /// the first one on).
    pub fn append(&mut self, appended: &[Entry]) {
        let Some(first) = appended.first() else { return };
        self.truncate_from(first.index);
        if self.last_index().is_some_and(|last| last + 1 != first.index) {
            // Not contiguous with what is held (cannot happen after a truncation to a log
            // that accepted the append): start over from these.
            self.clear();
        }
        for e in appended {
            debug_assert!(self.last_index().is_none_or(|last| last + 1 == e.index));
            self.bytes += stored_len(e);
            self.entries.push_back(e.clone());
        }
        while self.bytes > ENTRY_CACHE_BYTES_MAX && self.entries.len() > 1 {
            self.pop_front();
        }
    }

    /// Keeps only entries within the log's `[first_index, last_index]`; drops everything if
    /// what is held does not end at `last_index`, or the log is empty (it was reset under it:
    /// a snapshot at the last index but of another term leaves `first_index = last_index + 1`).
    pub fn retain_within(&mut self, first_index: u64, last_index: u64) {
        if first_index > last_index || self.last_index().is_some_and(|last| last != last_index) {
            self.clear();
        }
        while self.first_index().is_some_and(|first| first < first_index) {
            self.pop_front();
        }
    }

    /// Entries `[low, high)`, at most `max_bytes` of stored bytes but always at least one,
    /// when the cache holds the whole range; `None` otherwise.
    pub fn entries(&self, low: u64, high: u64, max_bytes: u64) -> Option<Vec<Entry>> {
        let (first, last) = (self.first_index()?, self.last_index()?);
        if low < first || high > last + 1 || low >= high {
            return None;
        }
        let start = (low - first) as usize;
        let mut out = Vec::with_capacity((high - low).min(1024) as usize);
        let mut bytes = 0u64;
        for e in self.entries.range(start..start + (high - low) as usize) {
            bytes = bytes.saturating_add(stored_len(e));
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
        }
        Some(out)
    }

    /// Forgets the entries through `index` (applied: the state machine has them).
    pub fn forget_through(&mut self, index: u64) {
        while self.first_index().is_some_and(|first| first <= index) {
            self.pop_front();
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    fn truncate_from(&mut self, index: u64) {
        while self.last_index().is_some_and(|last| last >= index) {
            let e = self.entries.pop_back().expect("a last entry");
            self.bytes -= stored_len(&e);
        }
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= stored_len(&e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, len: usize) -> Entry {
        Entry::new(term, index, vec![index as u8; len])
    }

    fn indexes(es: &[Entry]) -> Vec<(u64, u64)> {
        es.iter().map(|e| (e.index, e.term)).collect()
    }

    #[test]
    fn a_conflicting_suffix_is_replaced() {
        let mut c = EntryCache::default();
        c.append(&(1..=5).map(|i| entry(i, 1, 10)).collect::<Vec<_>>());
        c.append(&[entry(4, 2, 10)]);
        let got = c.entries(1, 5, u64::MAX).expect("held");
        assert_eq!(indexes(&got), vec![(1, 1), (2, 1), (3, 1), (4, 2)]);
        assert_eq!(c.entries(1, 6, u64::MAX), None, "5 is gone");
        assert_eq!(c.bytes(), 4 * stored_len(&entry(1, 1, 10)));
    }

    #[test]
    fn a_range_not_held_is_not_served() {
        let mut c = EntryCache::default();
        assert_eq!(c.entries(1, 2, u64::MAX), None);
        c.append(&(10..=12).map(|i| entry(i, 1, 10)).collect::<Vec<_>>());
        assert_eq!(c.entries(9, 11, u64::MAX), None);
        assert_eq!(c.entries(11, 14, u64::MAX), None);
        assert_eq!(indexes(&c.entries(11, 13, u64::MAX).unwrap()), vec![(11, 1), (12, 1)]);
    }

    #[test]
    fn size_limit_counts_like_the_wal_and_returns_at_least_one() {
        let mut c = EntryCache::default();
        c.append(&(1..=4).map(|i| entry(i, 1, 95)).collect::<Vec<_>>());
        let each = stored_len(&entry(1, 1, 95));
        assert_eq!(c.entries(1, 5, 2 * each).unwrap().len(), 2);
        assert_eq!(c.entries(1, 5, 2 * each - 1).unwrap().len(), 1);
        assert_eq!(c.entries(1, 5, 0).unwrap().len(), 1);
    }

    #[test]
    fn the_oldest_entries_are_dropped_past_the_bound_and_the_log_bounds_are_followed() {
        let mut c = EntryCache::default();
        let big = (ENTRY_CACHE_BYTES_MAX / 4) as usize;
        c.append(&(1..=6).map(|i| entry(i, 1, big)).collect::<Vec<_>>());
        assert!(c.bytes() <= ENTRY_CACHE_BYTES_MAX);
        assert_eq!(c.first_index(), Some(4));
        c.retain_within(5, 6);
        assert_eq!(c.first_index(), Some(5));
        c.forget_through(5);
        assert_eq!(c.first_index(), Some(6));
        c.retain_within(7, 6); // A snapshot at the last index, of another term: log empty.
        assert_eq!((c.first_index(), c.bytes()), (None, 0));
        c.append(&[entry(7, 2, 10)]);
        c.retain_within(100, 100); // A snapshot past the log's end reset it.
        assert_eq!((c.first_index(), c.bytes()), (None, 0));
    }
}
