/// A bounded ring of the last indexes of append messages sent to one follower and not yet
/// acknowledged (etcd `tracker.Inflights`). When full, the leader stops sending appends to
/// that follower until acknowledgements free room: this is the flow control that keeps a slow
/// follower from being buried.
///
/// Invariant: the indexes in the ring increase from `start` onward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inflights {
    start: usize,
    count: usize,
    /// Grows on demand up to `cap`, so an idle follower costs no memory.
    buffer: Vec<u64>,
    cap: usize,
}

impl Inflights {
    /// An empty ring holding at most `cap` messages.
    pub fn new(cap: usize) -> Inflights {
        assert!(cap > 0, "inflight capacity must be positive");
        Inflights { start: 0, count: 0, buffer: Vec::new(), cap }
    }

    /// The capacity.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Records an append whose last entry is `inflight`.
    pub fn add(&mut self, inflight: u64) {
        assert!(!self.full(), "cannot add into a full inflights ring (cap {})", self.cap);
        if let Some(last) = self.last() {
            assert!(inflight >= last, "inflight {inflight} added after {last}");
        }
        let mut next = self.start + self.count;
        if next >= self.cap {
            next -= self.cap;
        }
        if next >= self.buffer.len() {
            self.grow();
        }
        self.buffer[next] = inflight;
        self.count += 1;
    }

    /// Moves the last recorded append's last index up to `inflight`: more entries were merged
    /// into that message before it left.
    pub fn extend_last(&mut self, inflight: u64) {
        assert!(self.count > 0, "no inflight append to extend");
        let mut idx = self.start + self.count - 1;
        if idx >= self.cap {
            idx -= self.cap;
        }
        assert!(inflight >= self.buffer[idx], "inflight {inflight} below {}", self.buffer[idx]);
        self.buffer[idx] = inflight;
    }

    /// The last recorded append's last index.
    pub fn last_index(&self) -> Option<u64> {
        self.last()
    }

    fn grow(&mut self) {
        let new_len = (self.buffer.len() * 2).clamp(1, self.cap);
        self.buffer.resize(new_len, 0);
    }

    fn last(&self) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let mut idx = self.start + self.count - 1;
        if idx >= self.cap {
            idx -= self.cap;
        }
        Some(self.buffer[idx])
    }

    /// Frees every message whose last index is at or below `to`.
    pub fn free_to(&mut self, to: u64) {
        if self.count == 0 || to < self.buffer[self.start] {
            return;
        }
        let mut idx = self.start;
        let mut freed = 0;
        while freed < self.count {
            if to < self.buffer[idx] {
                break;
            }
            idx += 1;
            if idx >= self.cap {
                idx -= self.cap;
            }
            freed += 1;
        }
        self.count -= freed;
        self.start = idx;
        if self.count == 0 {
            // Reset the start to keep the live window at the front of the buffer.
            self.start = 0;
        }
    }

    /// Frees the oldest message, so that a follower whose acknowledgements were all lost still
    /// gets a message through on the next heartbeat response.
    pub fn free_first_one(&mut self) {
        if let Some(&first) = self.buffer.get(self.start) {
            if self.count > 0 {
                self.free_to(first);
            }
        }
    }

    /// True when no more messages may be sent.
    pub fn full(&self) -> bool {
        self.count == self.cap
    }

    /// Messages in flight.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Forgets every message (on a state change of the progress).
    pub fn reset(&mut self) {
        self.count = 0;
        self.start = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflights_fill_wrap_and_free() {
        let mut ins = Inflights::new(10);
        for i in 0..5 {
            ins.add(i);
        }
        assert_eq!(ins.count(), 5);
        ins.free_to(1);
        assert_eq!((ins.start, ins.count()), (2, 3));
        for i in 5..12 {
            ins.add(i);
        }
        assert!(ins.full());
        ins.free_to(6);
        assert_eq!(ins.count(), 5);
        // Freeing below the first is a no-op; freeing past the last empties the ring.
        ins.free_to(3);
        assert_eq!(ins.count(), 5);
        ins.free_to(100);
        assert_eq!((ins.start, ins.count()), (0, 0));
    }

    #[test]
    fn inflights_free_first_one_frees_exactly_the_oldest() {
        let mut ins = Inflights::new(3);
        ins.add(5);
        ins.add(7);
        ins.add(9);
        assert!(ins.full());
        ins.free_first_one();
        assert_eq!(ins.count(), 2);
        assert!(!ins.full());
        ins.free_first_one();
        ins.free_first_one();
        ins.free_first_one();
        assert_eq!(ins.count(), 0);
    }

    #[test]
    #[should_panic(expected = "full inflights")]
    fn inflights_refuse_to_overfill() {
        let mut ins = Inflights::new(1);
        ins.add(1);
        ins.add(2);
    }
}
