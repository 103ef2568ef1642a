//! Linearizable reads without writing to the log (Raft thesis §6.4; etcd `readOnly`).

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::Bytes;

use crate::config::ReadOnlyOption;
use crate::message::Message;

/// A read that may be served once the application has applied up to `index`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadState {
    /// The commit index when the read was received by the leader.
    pub index: u64,
    /// The context the application passed to `read_index`.
    pub request_ctx: Bytes,
    /// Set when the leader answered from its lease: the lease's end on the application's
    /// clock. The read is linearizable only if the application's clock, read after it took
    /// this read state, is still before it (a pause between the clock reading the core was
    /// given and its answer could have outlasted the lease); otherwise ask again.
    pub lease_expiry: Option<std::time::Duration>,
}

/// A read waiting for a quorum to confirm the leader's leadership.
#[derive(Clone, Debug)]
pub struct ReadIndexStatus {
    /// The original request (its first entry's data is the context).
    pub req: Message,
    /// The commit index when the request arrived.
    pub index: u64,
    /// Voters that acknowledged a heartbeat carrying this context.
    pub acks: HashSet<u64>,
}

/// Reads waiting for their heartbeat round, in arrival order.
///
/// Invariant: `pending_read_index` and `read_index_queue` hold the same contexts.
#[derive(Clone, Debug, Default)]
pub struct ReadOnly {
    /// How reads are served.
    pub option: ReadOnlyOption,
    /// Waiting reads by context.
    pub pending_read_index: HashMap<Bytes, ReadIndexStatus>,
    /// Contexts in arrival order.
    pub read_index_queue: VecDeque<Bytes>,
}

impl ReadOnly {
    /// No reads waiting.
    pub fn new(option: ReadOnlyOption) -> ReadOnly {
        ReadOnly { option, ..ReadOnly::default() }
    }

    /// Queues a read at commit index `index`. A context already waiting is not queued twice.
    pub fn add_request(&mut self, index: u64, req: Message) {
        let ctx = req.entries[0].data.clone();
        if self.pending_read_index.contains_key(&ctx) {
            return;
        }
        self.read_index_queue.push_back(ctx.clone());
        self.pending_read_index.insert(ctx, ReadIndexStatus { req, index, acks: HashSet::new() });
    }

    /// Records `id`'s heartbeat acknowledgement for `ctx`; returns the acks so far, or `None`
    /// for an unknown (already answered) context.
    pub fn recv_ack(&mut self, id: u64, ctx: &[u8]) -> Option<&HashSet<u64>> {
        let status = self.pending_read_index.get_mut(ctx)?;
        status.acks.insert(id);
        Some(&status.acks)
    }

    /// A quorum acknowledged `ctx`: it and every read queued before it are confirmed, since
    /// they were all received before that heartbeat round was sent. Returns them in order and
    /// frees them.
    pub fn advance(&mut self, ctx: &[u8]) -> Vec<ReadIndexStatus> {
        let Some(position) = self.read_index_queue.iter().position(|c| c.as_ref() == ctx) else {
            return Vec::new();
        };
        let confirmed: Vec<ReadIndexStatus> = self
            .read_index_queue
            .drain(..=position)
            .map(|c| {
                self.pending_read_index
                    .remove(&c)
                    .unwrap_or_else(|| panic!("read context {c:?} queued but not pending"))
            })
            .collect();
        if self.read_index_queue.is_empty() {
            // Give back memory after a burst of reads.
            self.read_index_queue.shrink_to(16);
            self.pending_read_index.shrink_to(16);
        }
        confirmed
    }

    /// The context of the newest waiting read, carried by heartbeats.
    pub fn last_pending_request_ctx(&self) -> Option<&Bytes> {
        self.read_index_queue.back()
    }

    /// Reads waiting.
    pub fn pending_read_count(&self) -> usize {
        self.read_index_queue.len()
    }
}
