//! The leader's side: replication to followers, proposals, reads, leader transfer.

use std::ops::Bound;

use bytes::Bytes;
use log::{debug, info, warn};

use super::*;

impl<T: Storage> Raft<T> {
    /// Sends an append (or a snapshot when the entries are compacted) to `to`.
    pub fn send_append(&mut self, to: u64) {
        self.maybe_send_append(to, true);
    }

    /// Sends an append to `to` if its progress allows; an empty append only when
    /// `send_if_empty`. True when a message was sent.
    pub(super) fn maybe_send_append(&mut self, to: u64, send_if_empty: bool) -> bool {
        let Some(pr) = self.prs.progress.get(&to) else {
            return false;
        };
        if pr.is_paused() {
            return false;
        }
        let next_idx = pr.next_idx;
        let prev_term = self.raft_log.term(next_idx - 1);
        let entries = self.raft_log.entries(next_idx, self.max_msg_size);
        if entries.as_ref().is_ok_and(|e| e.is_empty()) && !send_if_empty {
            return false;
        }
        match (prev_term, entries) {
            (Ok(_), Ok(entries)) if self.try_batch_append(to, next_idx, &entries) => {
                let last = entries.last().map_or(next_idx - 1, |e| e.index);
                let committed = self.raft_log.committed;
                let m = self.msgs.iter_mut().rev().find(|m| m.to == to).expect("found by the try");
                m.entries.extend(entries);
                m.commit = committed;
                let pr = self.prs.progress.get_mut(&to).expect("progress checked above");
                pr.optimistic_update(last);
                pr.ins.extend_last(last);
                true
            }
            (Ok(log_term), Ok(entries)) => {
                let last_sent = entries.last().map(|e| e.index);
                let pr = self.prs.progress.get_mut(&to).expect("progress checked above");
                if let Some(last) = last_sent {
                    match pr.state {
                        ProgressState::Replicate => {
                            pr.optimistic_update(last);
                            pr.ins.add(last);
                        }
                        ProgressState::Probe => pr.probe_sent = true,
                        ProgressState::Snapshot => {
                            panic!("{:x} sending append to {to:x} in snapshot state", self.id)
                        }
                    }
                }
                let m = Message {
                    msg_type: MessageType::Append,
                    to,
                    index: next_idx - 1,
                    log_term,
                    entries,
                    commit: self.raft_log.committed,
                    ..Message::default()
                };
                self.send(m);
                true
            }
            _ => self.send_snapshot(to),
        }
    }

    /// Whether `entries`, from `next_idx`, can join the last message queued for `to` (see
    /// [`crate::Config::batch_append`]): an append of this term in replication whose last
    /// entry is `next_idx - 1`, whose inflight slot is the last, with room in the size limit.
    fn try_batch_append(&self, to: u64, next_idx: u64, entries: &[Entry]) -> bool {
        if !self.batch_append || entries.is_empty() {
            return false;
        }
        let pr = &self.prs.progress[&to];
        if pr.state != ProgressState::Replicate {
            return false;
        }
        let Some(m) = self.msgs.iter().rev().find(|m| m.to == to) else {
            return false;
        };
        // Sized as `limit_size` sizes a message's entries.
        let size = |es: &[Entry]| es.iter().map(Entry::size_bytes).fold(0u64, u64::saturating_add);
        m.msg_type == MessageType::Append
            && m.term == self.term
            && m.entries.last().is_some_and(|e| e.index + 1 == next_idx)
            && pr.ins.last_index() == Some(next_idx - 1)
            && size(&m.entries).saturating_add(size(entries)) <= self.max_msg_size
    }

    /// The entries `to` needs are compacted: send the snapshot instead.
    pub(super) fn send_snapshot(&mut self, to: u64) -> bool {
        let pr = &self.prs.progress[&to];
        if !pr.recent_active {
            debug!("{:x} ignored sending snapshot to {to:x}: not recently active", self.id);
            return false;
        }
        let snapshot = match self.raft_log.snapshot(pr.next_idx - 1) {
            Ok(snapshot) => snapshot,
            Err(StorageError::SnapshotTemporarilyUnavailable) => {
                debug!("{:x} failed to send snapshot to {to:x}: temporarily unavailable", self.id);
                return false;
            }
            Err(e) => panic!("{:x} needs a snapshot for {to:x} but storage failed: {e}", self.id),
        };
        assert!(!snapshot.is_empty(), "{:x} needs a non-empty snapshot for {to:x}", self.id);
        let (index, term) = (snapshot.metadata.index, snapshot.metadata.term);
        let pr = self.prs.progress.get_mut(&to).expect("progress checked above");
        debug!(
            "{:x} [first_index: {}, commit: {}] sent snapshot [index: {index}, term: {term}] to \
             {to:x} [matched: {}, next: {}]",
            self.id,
            self.raft_log.first_index(),
            self.raft_log.committed,
            pr.matched,
            pr.next_idx
        );
        pr.become_snapshot(index);
        self.send(Message {
            msg_type: MessageType::Snapshot,
            to,
            snapshot: Some(Box::new(snapshot)),
            ..Message::default()
        });
        true
    }

    pub(super) fn send_heartbeat(&mut self, to: u64, ctx: Bytes) {
        // Never advertise a commit index the follower may not have: it could not commit to it.
        let commit = self.prs.progress[&to].matched.min(self.raft_log.committed);
        self.send(Message {
            msg_type: MessageType::Heartbeat,
            to,
            commit,
            context: ctx,
            sent_at: self.now_nanos(),
            ..Message::default()
        });
    }

    /// The first follower or learner, in id order, after `after` (from the first when
    /// `None`): a walk over the peers that sends to each as it goes, without collecting their
    /// ids (a broadcast per proposal allocated a list each time).
    fn next_peer(&self, after: Option<u64>) -> Option<u64> {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.prs
            .progress
            .range((from, Bound::Unbounded))
            .map(|(&id, _)| id)
            .find(|&id| id != self.id)
    }

    /// Calls `f` with each follower and learner in id order.
    pub(super) fn for_each_peer(&mut self, mut f: impl FnMut(&mut Self, u64)) {
        let mut peer = self.next_peer(None);
        while let Some(id) = peer {
            f(self, id);
            peer = self.next_peer(Some(id));
        }
    }

    /// Sends appends to every follower and learner.
    pub fn bcast_append(&mut self) {
        self.for_each_peer(|r, id| r.send_append(id));
    }

    /// Sends heartbeats carrying the newest waiting read's context.
    pub fn bcast_heartbeat(&mut self) {
        let ctx = self.read_only.last_pending_request_ctx().cloned();
        self.bcast_heartbeat_with_ctx(ctx.unwrap_or_default());
    }

    pub(super) fn bcast_heartbeat_with_ctx(&mut self, ctx: Bytes) {
        self.for_each_peer(|r, id| r.send_heartbeat(id, ctx.clone()));
    }

    /// Commits what a quorum has replicated; true when the commit index moved.
    pub fn maybe_commit(&mut self) -> bool {
        let committed = self.prs.committed();
        self.raft_log.maybe_commit(committed, self.term)
    }

    /// Appends entries proposed to this leader; false when the uncommitted-size limit refuses
    /// them.
    pub(super) fn append_entry(&mut self, entries: &mut [Entry]) -> bool {
        let last_index = self.raft_log.last_index();
        for (i, e) in entries.iter_mut().enumerate() {
            e.term = self.term;
            e.index = last_index + 1 + i as u64;
        }
        if !self.increase_uncommitted_size(entries) {
            debug!(
                "{:x} appending new entries to log would exceed uncommitted entry size limit; \
                 dropping proposal",
                self.id
            );
            return false;
        }
        // The leader's own progress moves only when the entries are durable here
        // (`on_persist_entries`): a quorum counts what its members have synced, so that no
        // message carries a commit index that a power loss could take back.
        self.raft_log.append(entries);
        true
    }

    /// The application persisted the log up to (`index`, `term`): those entries become stable
    /// and, on a leader, count in its own progress, which may commit them (Raft thesis §10.2.1:
    /// the leader acknowledges its own entries like any follower, once they are durable).
    pub fn on_persist_entries(&mut self, index: u64, term: u64) {
        self.raft_log.stable_to(index, term);
        if self.state != StateType::Leader {
            return;
        }
        let persisted = self.raft_log.persisted_index();
        let Some(pr) = self.prs.progress.get_mut(&self.id) else {
            return; // Removed from the configuration: it no longer counts.
        };
        if pr.maybe_update(persisted) && self.maybe_commit() {
            self.release_pending_read_index_messages();
            self.bcast_append();
        }
    }

    /// Counts proposed payload against `max_uncommitted_size`. An empty payload always fits,
    /// and so does any proposal when nothing is uncommitted, so one huge entry still progresses.
    pub(super) fn increase_uncommitted_size(&mut self, entries: &[Entry]) -> bool {
        let size: u64 = entries.iter().map(Entry::payload_size_bytes).sum();
        if self.uncommitted_size > 0
            && size > 0
            && self.uncommitted_size.saturating_add(size) > self.max_uncommitted_size
        {
            return false;
        }
        self.uncommitted_size += size;
        true
    }

    /// Releases the payload of applied entries from the uncommitted total.
    pub fn reduce_uncommitted_size(&mut self, entries: &[Entry]) {
        if self.uncommitted_size == 0 {
            // Fast path for followers, which never track it.
            return;
        }
        let size: u64 = entries.iter().map(Entry::payload_size_bytes).sum();
        self.uncommitted_size = self.uncommitted_size.saturating_sub(size);
    }

    pub(super) fn step_leader(&mut self, mut m: Message) -> Result<()> {
        match m.msg_type {
            MessageType::Beat => {
                self.bcast_heartbeat();
                return Ok(());
            }
            MessageType::CheckQuorum => {
                if !self.prs.quorum_active(self.id) {
                    warn!("{:x} stepped down to follower since quorum is not active", self.id);
                    let term = self.term;
                    self.become_follower(term, INVALID_ID);
                }
                // Everyone but us must show activity again before the next check.
                let self_id = self.id;
                for (&id, pr) in self.prs.progress.iter_mut() {
                    if id != self_id {
                        pr.recent_active = false;
                    }
                }
                return Ok(());
            }
            MessageType::Propose => {
                self.propose_as_leader(&mut m.entries)?;
                return Ok(());
            }
            MessageType::ReadIndex => {
                self.read_index_as_leader(m);
                return Ok(());
            }
            _ => {}
        }

        // Every other message is about a peer's progress.
        if !self.prs.progress.contains_key(&m.from) {
            debug!("{:x} no progress available for {:x}", self.id, m.from);
            return Ok(());
        }
        match m.msg_type {
            MessageType::AppendResponse => self.handle_append_response(&m),
            MessageType::HeartbeatResponse => self.handle_heartbeat_response(&m),
            MessageType::SnapshotStatus => self.handle_snapshot_status(&m),
            MessageType::Unreachable => {
                let pr = self.prs.progress.get_mut(&m.from).expect("checked above");
                // While pipelining, an unreachable peer most likely lost an append: probe.
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
                debug!("{:x} failed to send message to {:x}: unreachable", self.id, m.from);
            }
            MessageType::TransferLeader => self.handle_transfer_leader(&m),
            _ => {}
        }
        Ok(())
    }

    pub(super) fn propose_as_leader(&mut self, entries: &mut [Entry]) -> Result<()> {
        if entries.is_empty() {
            warn!("{:x} dropped an empty proposal", self.id);
            return Err(Error::ProposalDropped);
        }
        if !self.prs.progress.contains_key(&self.id) {
            // This leader was removed from the configuration: it takes no new proposals.
            return Err(Error::ProposalDropped);
        }
        if self.lead_transferee != INVALID_ID {
            debug!(
                "{:x} [term {}] transfer leadership to {:x} is in progress; dropping proposal",
                self.id, self.term, self.lead_transferee
            );
            return Err(Error::ProposalDropped);
        }
        for (i, e) in entries.iter_mut().enumerate() {
            let cc = match e.entry_type {
                EntryType::Normal => continue,
                EntryType::ConfChange => ConfChange::decode(&e.data).map(ConfChange::into_v2),
                EntryType::ConfChangeV2 => ConfChangeV2::decode(&e.data),
            };
            let refused = match cc {
                Err(err) => Some(format!("does not decode: {err}")),
                Ok(cc) => self.conf_change_refusal(&cc),
            };
            match refused {
                Some(reason) => {
                    // Never lose the slot silently: the proposer sees an empty entry apply.
                    info!(
                        "{:x} ignoring conf change at config {}: {reason}",
                        self.id, self.prs.conf
                    );
                    *e = Entry::default();
                }
                None => self.pending_conf_index = self.raft_log.last_index() + i as u64 + 1,
            }
        }
        if !self.append_entry(entries) {
            return Err(Error::ProposalDropped);
        }
        self.bcast_append();
        Ok(())
    }

    /// Why a proposed configuration change cannot be appended now, if it cannot.
    pub(super) fn conf_change_refusal(&self, cc: &ConfChangeV2) -> Option<String> {
        let already_pending = self.pending_conf_index > self.raft_log.applied;
        let already_joint = self.prs.conf.voters.is_joint();
        let wants_leave_joint = cc.leave_joint_requested();
        if already_pending {
            Some(format!(
                "possible unapplied conf change at index {} (applied to {})",
                self.pending_conf_index, self.raft_log.applied
            ))
        } else if already_joint && !wants_leave_joint {
            Some("must transition out of joint config first".to_string())
        } else if !already_joint && wants_leave_joint {
            Some("not in joint state; refusing empty conf change".to_string())
        } else {
            None
        }
    }

    pub(super) fn read_index_as_leader(&mut self, m: Message) {
        // A new leader does not know the commit index of its predecessor until it commits an
        // entry of its own term (Raft thesis §6.4; etcd#7331): hold reads until then. A single
        // voter too: restarted, its log may end with entries it synced, committed and
        // acknowledged before the restart, which its recovered commit index (the last one
        // written, before them) does not cover until an entry of the new term commits.
        if !self.committed_entry_in_current_term() {
            self.pending_read_index_messages.push(m);
            return;
        }
        self.send_read_index_response(m);
    }

    pub(super) fn committed_entry_in_current_term(&self) -> bool {
        let committed = self.raft_log.committed;
        matches!(self.raft_log.term(committed), Ok(t) if t == self.term)
    }

    pub(super) fn send_read_index_response(&mut self, m: Message) {
        let committed = self.raft_log.committed;
        if self.prs.is_singleton() {
            // The only voter: no round to wait for.
            self.respond_to_read_index(m, committed, None);
            return;
        }
        // Only this node's own reads are answered from the lease: a forwarded read's answer
        // would reach its follower after the lease could have ended.
        let local = m.from == INVALID_ID || m.from == self.id;
        if let Some(expiry) = self.lease_expiry().filter(|_| local) {
            self.respond_to_read_index(m, committed, Some(expiry));
            return;
        }
        let ctx = m.entries[0].data.clone();
        self.read_only.add_request(committed, m);
        // The leader acknowledges its own round.
        self.read_only.recv_ack(self.id, &ctx);
        self.bcast_heartbeat_with_ctx(ctx);
    }

    pub(super) fn respond_to_read_index(
        &mut self,
        req: Message,
        index: u64,
        lease_expiry: Option<Duration>,
    ) {
        let mut entries = req.entries;
        if req.from == INVALID_ID || req.from == self.id {
            let request_ctx = entries.pop().map(|e| e.data).unwrap_or_default();
            self.read_states.push(ReadState { index, request_ctx, lease_expiry });
        } else {
            self.send(Message {
                msg_type: MessageType::ReadIndexResp,
                to: req.from,
                index,
                entries,
                ..Message::default()
            });
        }
    }

    pub(super) fn release_pending_read_index_messages(&mut self) {
        if self.pending_read_index_messages.is_empty() {
            return;
        }
        if !self.committed_entry_in_current_term() {
            return;
        }
        for m in std::mem::take(&mut self.pending_read_index_messages) {
            self.send_read_index_response(m);
        }
    }

    pub(super) fn handle_append_response(&mut self, m: &Message) {
        let last_index = self.raft_log.last_index();
        let pr = self.prs.progress.get_mut(&m.from).expect("checked by step_leader");
        pr.recent_active = true;
        if m.reject {
            debug!(
                "{:x} received append rejection (last index {}) from {:x} for index {}",
                self.id, m.reject_hint, m.from, m.index
            );
            // The follower's hint is its last index at or below the rejected one, with that
            // entry's term; skip every entry of ours with a higher term in one step.
            let mut next_probe_idx = m.reject_hint;
            if m.log_term > 0 {
                next_probe_idx = self.raft_log.find_conflict_by_term(m.reject_hint, m.log_term).0;
            }
            let pr = self.prs.progress.get_mut(&m.from).expect("checked by step_leader");
            if m.index <= pr.matched && pr.state == ProgressState::Probe {
                warn!(
                    "{:x}: {:x} rejected index {} at or below its acknowledged {}: its log lost \
                     entries it had acknowledged; probing it once per heartbeat",
                    self.id, m.from, m.index, pr.matched
                );
            }
            if pr.maybe_decr_to(m.index, next_probe_idx) {
                debug!("{:x} decreased progress of {:x} to next {}", self.id, m.from, pr.next_idx);
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
                self.send_append(m.from);
            }
            return;
        }
        if m.index > last_index {
            warn!(
                "{:x} ignored an acknowledgement from {:x} of index {} beyond the last index {}",
                self.id, m.from, m.index, last_index
            );
            return;
        }
        let old_paused = pr.is_paused();
        if !pr.maybe_update(m.index) {
            return;
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot if pr.matched >= pr.pending_snapshot => {
                debug!("{:x} snapshot to {:x} done, resuming replication", self.id, m.from);
                // Probe first: become_probe moves next past the snapshot.
                pr.become_probe();
                pr.become_replicate();
            }
            ProgressState::Snapshot => {}
            ProgressState::Replicate => pr.ins.free_to(m.index),
        }
        let matched = pr.matched;
        if self.maybe_commit() {
            // The commit index moved in this term: reads held for it can proceed.
            self.release_pending_read_index_messages();
            self.bcast_append();
        } else if old_paused {
            // A paused follower may be missing the latest commit index.
            self.send_append(m.from);
        }
        // Flow control may allow several (size-limited) appends now; send them all without
        // sending empty ones.
        while m.from != self.id && self.maybe_send_append(m.from, false) {}
        if m.from == self.lead_transferee && matched == last_index {
            info!("{:x} sent TimeoutNow to {:x} after its log caught up", self.id, m.from);
            self.send_timeout_now(m.from);
        }
    }

    pub(super) fn handle_heartbeat_response(&mut self, m: &Message) {
        let last_index = self.raft_log.last_index();
        let now = self.now_nanos();
        let pr = self.prs.progress.get_mut(&m.from).expect("checked by step_leader");
        pr.recent_active = true;
        pr.probe_sent = false;
        // An echo from the future is a bug or a forgery: it never extends the lease past now.
        pr.lease_ack = pr.lease_ack.max(m.sent_at.min(now));
        // A full pipeline whose acknowledgements were all lost would stall forever: free one
        // slot per heartbeat so an append gets through.
        if pr.state == ProgressState::Replicate && pr.ins.full() {
            pr.ins.free_first_one();
        }
        if pr.matched < last_index {
            self.send_append(m.from);
        }
        // Safe reads, and lease-based reads the lease did not cover, wait for a round.
        if m.context.is_empty() {
            return;
        }
        let Some(acks) = self.read_only.recv_ack(m.from, &m.context) else {
            return;
        };
        let result = self.prs.conf.voters.vote_result(|id| acks.contains(&id).then_some(true));
        if result != VoteResult::Won {
            return;
        }
        for status in self.read_only.advance(&m.context) {
            self.respond_to_read_index(status.req, status.index, None);
        }
    }

    pub(super) fn handle_snapshot_status(&mut self, m: &Message) {
        let pr = self.prs.progress.get_mut(&m.from).expect("checked by step_leader");
        if pr.state != ProgressState::Snapshot {
            return;
        }
        if m.reject {
            // Order matters: clearing the pending index first makes become_probe retry from
            // matched + 1 instead of assuming the snapshot landed.
            pr.pending_snapshot = 0;
            pr.become_probe();
            debug!("{:x} snapshot to {:x} failed, probing again", self.id, m.from);
        } else {
            pr.become_probe();
            debug!(
                "{:x} snapshot to {:x} succeeded, probing from {}",
                self.id, m.from, pr.next_idx
            );
        }
        // Wait for the follower's append response (success) or a heartbeat interval (failure)
        // before sending again.
        pr.probe_sent = true;
    }

    pub(super) fn handle_transfer_leader(&mut self, m: &Message) {
        let transferee = m.from;
        if self.prs.progress[&transferee].is_learner {
            debug!("{:x} is a learner; ignored transferring leadership", transferee);
            return;
        }
        if self.lead_transferee != INVALID_ID {
            if self.lead_transferee == transferee {
                info!(
                    "{:x} [term {}] transfer leadership to {:x} is in progress, ignores request \
                     to the same node",
                    self.id, self.term, transferee
                );
                return;
            }
            self.abort_leader_transfer();
            info!("{:x} [term {}] abort previous transfer leadership", self.id, self.term);
        }
        if transferee == self.id {
            debug!("{:x} is already leader; ignored transferring leadership to self", self.id);
            return;
        }
        info!(
            "{:x} [term {}] starts to transfer leadership to {:x}",
            self.id, self.term, transferee
        );
        // The transfer must finish within an election timeout.
        self.election_elapsed = 0;
        self.lead_transferee = transferee;
        if self.prs.progress[&transferee].matched == self.raft_log.last_index() {
            self.send_timeout_now(transferee);
            info!(
                "{:x} sends TimeoutNow to {:x} immediately: its log is up to date",
                self.id, transferee
            );
        } else {
            self.send_append(transferee);
        }
    }

    /// Tells the transferee to campaign, and every other voter that its campaign is the one
    /// that may override their lease.
    pub(super) fn send_timeout_now(&mut self, to: u64) {
        let voters: Vec<u64> = self
            .prs
            .conf
            .voters
            .ids()
            .into_iter()
            .filter(|&id| id != self.id && id != to)
            .collect();
        for voter in voters {
            self.send(Message {
                msg_type: MessageType::TransferNotice,
                to: voter,
                index: to,
                ..Message::default()
            });
        }
        self.send(Message { msg_type: MessageType::TimeoutNow, to, ..Message::default() });
        self.lease_revoked = true;
    }

    /// After the application applied up to `applied`: a leader in a joint configuration with
    /// automatic leave proposes the leave entry once the entering change is applied (this
    /// also covers a new leader inheriting such a configuration, etcd#12136).
    pub fn on_applied(&mut self, old_applied: u64, new_applied: u64) {
        if self.prs.conf.auto_leave
            && self.state == StateType::Leader
            && old_applied <= self.pending_conf_index
            && new_applied >= self.pending_conf_index
        {
            // Empty data decodes to the leave-joint change and counts zero bytes, so the size
            // limit can never refuse it.
            let mut leave = [Entry { entry_type: EntryType::ConfChangeV2, ..Entry::default() }];
            assert!(
                self.append_entry(&mut leave),
                "refused un-refusable auto-leaving ConfChangeV2"
            );
            self.pending_conf_index = self.raft_log.last_index();
            info!(
                "{:x} initiating automatic transition out of joint configuration {}",
                self.id, self.prs.conf
            );
            self.bcast_append();
        }
    }
}
