//! The log's tail that has not been persisted yet (etcd `unstable`).

use crate::message::{Entry, Snapshot};

/// Entries and possibly a snapshot handed to the application in a `Ready` but not yet
/// acknowledged as persisted.
///
/// Invariant: `entries[i].index == offset + i`; with a snapshot, `offset == snapshot index + 1`
/// once restored.
#[derive(Clone, Debug, Default)]
pub struct Unstable {
    /// A snapshot received from the leader, not yet persisted.
    pub snapshot: Option<Snapshot>,
    /// Entries not yet persisted.
    pub entries: Vec<Entry>,
    /// The index of `entries[0]`.
    pub offset: u64,
}

/// Past this capacity, a mostly empty entries buffer is given back to the allocator.
const ENTRIES_CAPACITY_RETAINED_MAX: usize = 1024;

impl Unstable {
    /// An empty tail starting after `last_stable_index`.
    pub fn new(offset: u64) -> Unstable {
        Unstable { snapshot: None, entries: Vec::new(), offset }
    }

    /// The first index, if the tail holds a snapshot.
    pub fn maybe_first_index(&self) -> Option<u64> {
        self.snapshot.as_ref().map(|s| s.metadata.index + 1)
    }

    /// The last index, if the tail holds entries or a snapshot.
    pub fn maybe_last_index(&self) -> Option<u64> {
        if !self.entries.is_empty() {
            return Some(self.offset + self.entries.len() as u64 - 1);
        }
        self.snapshot.as_ref().map(|s| s.metadata.index)
    }

    /// The term of entry `index`, if the tail knows it.
    pub fn maybe_term(&self, index: u64) -> Option<u64> {
        if index < self.offset {
            return self
                .snapshot
                .as_ref()
                .filter(|s| s.metadata.index == index)
                .map(|s| s.metadata.term);
        }
        let last = self.maybe_last_index()?;
        if index > last {
            return None;
        }
        Some(self.entries[(index - self.offset) as usize].term)
    }

    /// The application persisted entries up to (`index`, `term`): drop them from the tail.
    /// A term mismatch means the entry was replaced since, and nothing is dropped.
    pub fn stable_to(&mut self, index: u64, term: u64) {
        let Some(found) = self.maybe_term(index) else {
            return;
        };
        if found == term && index >= self.offset {
            let persisted = (index + 1 - self.offset) as usize;
            self.entries.drain(..persisted);
            self.offset = index + 1;
            if self.entries.capacity() > ENTRIES_CAPACITY_RETAINED_MAX
                && self.entries.len() * 4 < self.entries.capacity()
            {
                self.entries.shrink_to_fit();
            }
        }
    }

    /// The application persisted the snapshot at `index`.
    pub fn stable_snap_to(&mut self, index: u64) {
        if self.snapshot.as_ref().is_some_and(|s| s.metadata.index == index) {
            self.snapshot = None;
        }
    }

    /// Replaces the tail with a snapshot.
    pub fn restore(&mut self, snapshot: Snapshot) {
        self.offset = snapshot.metadata.index + 1;
        self.entries.clear();
        self.snapshot = Some(snapshot);
    }

    /// Appends entries, truncating any conflicting suffix first.
    pub fn truncate_and_append(&mut self, entries: &[Entry]) {
        let Some(after) = entries.first().map(|e| e.index) else {
            return;
        };
        if after == self.offset + self.entries.len() as u64 {
            // The common case: a contiguous append.
        } else if after <= self.offset {
            // Replaces the whole tail (and possibly stable entries, which the application
            // overwrites when it persists this batch).
            self.offset = after;
            self.entries.clear();
        } else {
            self.entries.truncate((after - self.offset) as usize);
        }
        self.entries.extend_from_slice(entries);
    }

    /// Entries `[lo, hi)`, which must lie within the tail.
    pub fn slice(&self, lo: u64, hi: u64) -> &[Entry] {
        let upper = self.offset + self.entries.len() as u64;
        assert!(
            lo <= hi && self.offset <= lo && hi <= upper,
            "unstable.slice[{lo},{hi}) out of bound [{},{upper}]",
            self.offset
        );
        &self.entries[(lo - self.offset) as usize..(hi - self.offset) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::SnapshotMetadata;

    fn ents(first: u64, terms: &[u64]) -> Vec<Entry> {
        terms.iter().enumerate().map(|(i, &t)| Entry::new(t, first + i as u64, vec![])).collect()
    }

    fn snap(index: u64, term: u64) -> Snapshot {
        Snapshot {
            data: vec![],
            metadata: SnapshotMetadata { index, term, ..SnapshotMetadata::default() },
        }
    }

    #[test]
    fn stable_to_drops_only_matching_entries() {
        let mut u = Unstable { entries: ents(5, &[1, 1, 2]), offset: 5, snapshot: None };
        u.stable_to(6, 2); // Term mismatch: the entry at 6 has term 1.
        assert_eq!(u.entries.len(), 3);
        u.stable_to(6, 1);
        assert_eq!((u.offset, u.entries.len()), (7, 1));
        u.stable_to(4, 1); // Below offset, no snapshot: ignored.
        assert_eq!(u.offset, 7);
        let mut u = Unstable { entries: ents(6, &[2]), offset: 6, snapshot: Some(snap(5, 1)) };
        u.stable_to(5, 1); // The snapshot's index: entries stay.
        assert_eq!(u.entries.len(), 1);
    }

    #[test]
    fn truncate_and_append_handles_append_replace_and_truncate() {
        let mut u = Unstable { entries: ents(5, &[1]), offset: 5, snapshot: None };
        u.truncate_and_append(&ents(6, &[1, 1]));
        assert_eq!(u.entries, ents(5, &[1, 1, 1]));
        u.truncate_and_append(&ents(6, &[2, 2]));
        assert_eq!(u.entries, ents(5, &[1, 2, 2]));
        u.truncate_and_append(&ents(4, &[3, 3]));
        assert_eq!((u.offset, u.entries.clone()), (4, ents(4, &[3, 3])));
    }

    #[test]
    fn terms_come_from_entries_or_the_snapshot() {
        let u = Unstable { entries: ents(6, &[2, 3]), offset: 6, snapshot: Some(snap(5, 1)) };
        assert_eq!(u.maybe_term(5), Some(1));
        assert_eq!(u.maybe_term(7), Some(3));
        assert_eq!(u.maybe_term(8), None);
        assert_eq!(u.maybe_term(4), None);
        assert_eq!(u.maybe_first_index(), Some(6));
        assert_eq!(u.maybe_last_index(), Some(7));
    }
}
