//! Handling a Ready: persist, send, apply committed entries, answer, snapshot.

use super::*;

/// How many of `rd`'s committed entries are durable on this node before `rd` is persisted:
/// those below its first new entry (every earlier Ready was synced before it was advanced, and
/// entries not yet synced are always in `rd.entries`). None when it installs a snapshot. The
/// rest are applied after the sync: an entry is applied only once durable here too, so that a
/// client is never answered for an entry that this node, counted in its quorum, could lose.
/// All of them are applied before any LightReady's (which start after the Ready's).
pub(super) fn durable_committed_prefix(rd: &raft::Ready) -> usize {
    if rd.snapshot.is_some() {
        return 0;
    }
    let durable_below = rd.entries.first().map_or(u64::MAX, |e| e.index);
    rd.committed_entries.partition_point(|e| e.index < durable_below)
}

/// A Ready whose sync runs off the loop (see [`Net::start_sync`]): what is left to do once it
/// is durable. Meanwhile the loop steps what arrives, and [`raft::LightReady`]s hand out what
/// need not wait for the sync.
pub(crate) struct Persisting {
    rd: raft::Ready,
    /// Messages that wait for the sync: a follower's acknowledgements, a candidate's votes,
    /// a new leader's first appends (empty when they left before it).
    messages: Vec<Message>,
    /// How many of `rd.committed_entries` were applied before the sync.
    early: usize,
    /// The state machine of the snapshot `rd` installs, decoded.
    installed: Option<Kv>,
}

impl<N: Net> Node<N> {
    /// Handles Readies until none is left, a sync is in flight, or [`READY_TIME_BUDGET`] is
    /// spent (replaying a long log at startup takes many): the rest wait for the next loop
    /// iteration, so that sockets and timers are served in between. While a sync is in flight,
    /// takes a LightReady instead.
    pub(super) fn handle_readies(&mut self) -> Result<()> {
        if self.persisting.is_some() {
            match self.net.take_synced() {
                Some(done) => self.sync_ended(done)?,
                None => return self.handle_light_ready(),
            }
        }
        let deadline = self.clock.now() + READY_TIME_BUDGET;
        while self.raw.has_ready() && self.clock.now() < deadline {
            let mut rd = self.raw.ready();
            if rd.soft_state.is_some_and(|ss| ss.lead != raft::INVALID_ID) {
                // A leader (new, or the same after an election): one that was not leading
                // when the reads in flight were asked never heard of them.
                self.ask_read_index_again(|_| true);
            }
            let mut messages = std::mem::take(&mut rd.messages);
            let read_states = std::mem::take(&mut rd.read_states);
            self.take_read_states(read_states);
            // Raft thesis §10.2.1: a leader's messages never acknowledge its own unsynced
            // state (the core counts the leader's entries once `advance` says they are
            // synced), so they may leave before it syncs, unless this Ready also makes its
            // term or vote durable (`messages_before_persist`: a single voter that just
            // elected itself must not send appends of a term it could, after a crash, lead
            // again with other entries). Appends of new entries leave first, so that the
            // followers' syncs overlap the leader's.
            let early_messages = rd.messages_before_persist;
            if early_messages && !rd.entries.is_empty() {
                self.send_messages(std::mem::take(&mut messages));
                self.flush_peers();
            }
            // A snapshot to install was decoded when it arrived; decoding is never left until
            // after it is durable (a bad image would then fail on every start).
            let installed = match &rd.snapshot {
                Some(snapshot) => Some(self.restored_state(snapshot)?),
                None => None,
            };
            let store = self.raw.store_mut();
            if let Some(snapshot) = &rd.snapshot {
                store.apply_snapshot(snapshot)?;
            }
            store.append(&rd.entries)?;
            if let Some(hs) = &rd.hard_state {
                store.set_hard_state(hs)?;
            }
            let must_sync = rd.must_sync || rd.snapshot.is_some() || !rd.entries.is_empty();
            if must_sync {
                // Off the loop: it goes on reading requests and acknowledgements meanwhile.
                let job = self.raw.store_mut().begin_sync()?;
                self.net.start_sync(job);
            }
            // Committed entries already durable here are applied (and answered, on the
            // leader) while the sync runs, so that those clients' next requests arrive
            // meanwhile; the rest once it is done.
            let early = durable_committed_prefix(&rd);
            if early > 0 {
                for entry in &rd.committed_entries[..early] {
                    self.apply(entry)?;
                }
                self.serve_reads();
                self.flush_all();
            }
            // Without new entries, the leader's messages (the new commit index, heartbeats)
            // follow the answers: a client waits on its answer, a follower does not.
            if early_messages {
                self.send_messages(std::mem::take(&mut messages));
                self.flush_peers();
            }
            let persisting = Persisting { rd, messages, early, installed };
            if must_sync {
                self.persisting = Some(persisting);
                return Ok(());
            }
            self.persisted(persisting)?;
        }
        if !self.raw.has_ready() {
            // A snapshot received but not installed (the core found it stale) is not kept.
            self.restored = None;
        }
        Ok(())
    }

    /// The sync in flight ended: finishes it (an error is fatal) and the Ready it made
    /// durable.
    fn sync_ended(&mut self, done: crate::net::SyncDone) -> Result<()> {
        self.raw.store_mut().finish_sync(done.job, done.result, done.took)?;
        let persisting = self.persisting.take().expect("a sync in flight belongs to a Ready");
        self.replied_at = self.clock.now();
        self.persisted(persisting)
    }

    /// Waits for the sync in flight, if any, and finishes its Ready: before anything else
    /// syncs the log (a snapshot put in force, shutdown).
    pub(super) fn settle_sync(&mut self) -> Result<()> {
        if self.persisting.is_none() {
            return Ok(());
        }
        match self.net.wait_synced() {
            Some(done) => self.sync_ended(done),
            None => Err(Error::Fatal("the sync in flight was lost: its thread died".into())),
        }
    }

    /// The rest of a Ready, once it is durable.
    fn persisted(&mut self, p: Persisting) -> Result<()> {
        let Persisting { rd, messages, early, installed } = p;
        if let (Some(snapshot), Some(kv)) = (&rd.snapshot, installed) {
            self.kv = kv;
            self.last_snapshot_index = snapshot.metadata.index;
            for (id, addr) in self.kv.members().clone() {
                self.learn_peer(id, Some(addr), None);
            }
            info!("installed snapshot at index {}", snapshot.metadata.index);
        }
        if !messages.is_empty() {
            // A follower's acknowledgements (or a leader's messages that had to wait for
            // its term to be durable): out before it applies anything.
            self.send_messages(messages);
            self.flush_peers();
        }
        for entry in &rd.committed_entries[early..] {
            self.apply(entry)?;
        }
        if let Some(last) = rd.committed_entries.last() {
            self.raw.store_mut().release_applied(last.index);
        }
        self.raw.advance(rd);
        self.serve_reads();
        self.maybe_snapshot()?;
        // Nothing syncs while a sync is in flight; between two, a snapshot written meanwhile
        // is put in force (under a steady load there may be no turn without a sync).
        self.finish_snapshot(false)
    }

    /// While a sync is in flight: applies the committed entries durable here, sends a
    /// leader's messages, takes confirmed reads (see [`raft::LightReady`]).
    fn handle_light_ready(&mut self) -> Result<()> {
        let light = self.raw.light_ready();
        self.take_read_states(light.read_states);
        if !light.messages.is_empty() {
            self.send_messages(light.messages);
            self.flush_peers();
        }
        if let Some(last) = light.committed_entries.last().map(|e| e.index) {
            for entry in &light.committed_entries {
                self.apply(entry)?;
            }
            self.raw.advance_apply_to(last);
            self.raw.store_mut().release_applied(last);
            self.maybe_snapshot()?;
        }
        self.serve_reads();
        Ok(())
    }

    /// Confirmed reads: served once applied reaches their index.
    fn take_read_states(&mut self, read_states: Vec<raft::ReadState>) {
        for rs in read_states {
            let n = self.read_contexts.counter(&rs.request_ctx);
            let Some(ReadsInFlight { reads: batch, .. }) =
                n.and_then(|n| self.reads_in_flight.remove(&n))
            else {
                continue;
            };
            // Answered from the lease: still linearizable only if the lease holds now,
            // after the core took its commit index; else ask again (a heartbeat round).
            if rs.lease_expiry.is_some_and(|expiry| self.clock.lease_now() >= expiry) {
                warn!("a lease read outlived the lease (a pause?); confirming it again");
                self.read_batch.extend(batch);
                continue;
            }
            self.reads_ready.push_back((rs.index, batch));
        }
    }

    /// The state machine of a snapshot the core installs: the one decoded when it arrived, or
    /// decoded now. Checked before anything of it is made durable.
    fn restored_state(&mut self, snapshot: &raft::Snapshot) -> Result<Kv> {
        if let Some((metadata, kv)) = self.restored.take() {
            if metadata == snapshot.metadata {
                return Ok(kv);
            }
        }
        Kv::restore(&snapshot.data).map_err(|e| {
            Error::Fatal(format!(
                "the snapshot at index {} from the leader cannot be restored (nothing of it was \
                 written): {e}",
                snapshot.metadata.index
            ))
        })
    }

    pub(super) fn apply(&mut self, entry: &Entry) -> Result<()> {
        match entry.entry_type {
            EntryType::Normal if entry.data.is_empty() => {}
            EntryType::Normal => match EntryPayload::of(&entry.data, &entry.context) {
                // Keys and values borrowed from the entry: copied once, into the map.
                EntryPayload::Command(bytes) => match codec::decode_payload_borrowed(bytes) {
                    Ok(command) => self.apply_command(entry.index, command),
                    Err(e) => error!("{}", undecodable(entry.index, "a command", e)),
                },
                EntryPayload::Legacy(bytes) => match codec::decode_payload::<LegacyWrite>(bytes) {
                    Ok(w) => {
                        let key = (w.client_id, w.seq);
                        let result = self.kv.apply_legacy(entry.index, w);
                        self.answer_write(key, result);
                    }
                    Err(e) => error!("{}", undecodable(entry.index, "a write", e)),
                },
            },
            EntryType::ConfChange | EntryType::ConfChangeV2 => self.apply_conf_change(entry),
        }
        self.kv.set_applied(entry.index);
        Ok(())
    }

    fn apply_command(&mut self, index: u64, command: CommandRef) {
        let token = match &command.body {
            CommandBodyOf::RegisterSession { token, .. }
            | CommandBodyOf::RegisterSessionV1 { token, .. } => self.read_contexts.counter(token),
            CommandBodyOf::Write { .. } => None,
        };
        let key = match &command.body {
            CommandBodyOf::Write { session_id, seq, .. } => Some((*session_id, *seq)),
            CommandBodyOf::RegisterSession { .. } | CommandBodyOf::RegisterSessionV1 { .. } => None,
        };
        match self.kv.apply(index, command) {
            Applied::Registered { session_id } => {
                if let Some(w) = token.and_then(|n| self.session_waiters.remove(&n)) {
                    self.session_reply(&w, Ok(session_id));
                }
            }
            Applied::Write(result) => {
                let key = key.expect("a write has a key");
                if !self.expired_writes.is_empty() {
                    self.expired_writes.remove(&key);
                }
                self.answer_write(key, result);
            }
        }
    }

    /// Answers the clients waiting on the write `(session_id, seq)`.
    fn answer_write(&mut self, key: (u64, u64), result: std::result::Result<KvReply, ClientError>) {
        if !self.more_write_waiters.is_empty() {
            for w in self.more_write_waiters.remove(&key).unwrap_or_default() {
                self.kv_reply(&w, result.clone());
            }
        }
        // The first waiter takes the result itself: nearly every write has only it, and a
        // reply may carry a value (a compare-and-swap's previous one) not worth copying.
        if let Some(w) = self.write_waiters.remove(&key) {
            self.kv_reply(&w, result);
        }
    }

    pub(super) fn apply_conf_change(&mut self, entry: &Entry) {
        let decoded = if entry.entry_type == EntryType::ConfChange {
            ConfChange::decode(&entry.data).map(|cc| (cc.context.clone(), cc.into_v2()))
        } else {
            ConfChangeV2::decode(&entry.data).map(|cc| (cc.context.clone(), cc))
        };
        let (context, cc) = match decoded {
            Ok(d) => d,
            Err(e) => {
                error!("{}", undecodable(entry.index, "a configuration change", e));
                return;
            }
        };
        let member = MemberContext::decode(&context);
        let result = self.raw.apply_conf_change(&cc);
        let waiter = member.as_ref().and_then(|m| self.conf_waiters.remove(&m.request_token));
        match result {
            Ok(cs) => {
                for change in &cc.changes {
                    match change.change_type {
                        ConfChangeType::RemoveNode => {
                            self.kv.remove_member(change.node_id);
                            // Its incarnation is forgotten with it: if it is added again,
                            // what is recorded is what it presents then.
                            self.seen_incarnations.remove(&change.node_id);
                            self.peer_no_space.remove(&change.node_id);
                            self.metrics.forget_peer(change.node_id);
                            if let Some(link) = self.peers.remove(&change.node_id) {
                                if let Some(token) = link.conn {
                                    self.close(token, "the peer was removed");
                                }
                            }
                            // Connections from the removed node are closed too; when it
                            // reconnects, its hello is refused.
                            let inbound: Vec<Token> = self
                                .conns
                                .iter()
                                .filter(|(_, c)| {
                                    c.kind == ConnKind::InboundPeer { from: Some(change.node_id) }
                                })
                                .map(|(&t, _)| t)
                                .collect();
                            for token in inbound {
                                self.close(token, "the peer was removed");
                            }
                            if change.node_id == self.config.id {
                                warn!("this node was removed from the cluster; it can be stopped");
                            }
                        }
                        _ => {
                            let id = change.node_id;
                            if let Some(addr) = member.as_ref().and_then(|m| m.peer_addr.clone()) {
                                self.kv.set_member(id, addr.clone());
                                self.learn_peer(id, Some(addr), None);
                            }
                            if let Some(incarnation) = member.as_ref().and_then(|m| m.incarnation) {
                                // (A node replaying the log may meet an old record of its
                                // own id, from before it was removed and added again.)
                                self.kv.set_incarnation(id, Some(incarnation));
                            }
                            if let Some(c) = member.as_ref().and_then(|m| m.cluster_incarnation) {
                                if self.kv.cluster_incarnation() == 0 {
                                    self.kv.set_cluster_incarnation(c);
                                }
                            }
                        }
                    }
                }
                info!("configuration is now voters {:?} learners {:?}", cs.voters, cs.learners);
                if let Some(w) = waiter {
                    let reply = AdminReply::Membership { voters: cs.voters, learners: cs.learners };
                    self.admin_reply(&w.waiter, Ok(reply));
                }
            }
            Err(e) => {
                warn!("configuration change at {} refused: {e}", entry.index);
                if let Some(w) = waiter {
                    self.admin_reply(&w.waiter, Err(refused(e.to_string())));
                }
            }
        }
    }

    pub(super) fn serve_reads(&mut self) {
        let applied = self.kv.applied();
        while self.reads_ready.front().is_some_and(|(index, _)| *index <= applied) {
            let (_, batch) = self.reads_ready.pop_front().expect("checked");
            for r in batch {
                if r.backup {
                    // Its read index is applied: a snapshot from here holds every write
                    // acknowledged before the backup was asked for.
                    self.snapshot_save(r.waiter, true);
                    continue;
                }
                let reply =
                    KvReply { index: applied, result: OpResult::Get(self.kv.get(&r.key).cloned()) };
                self.kv_reply(&r.waiter, Ok(reply));
            }
        }
    }

    /// Starts a snapshot every `snapshot_entries` applied entries (one at a time), give or
    /// take a per-node offset of up to a tenth of that, so that the nodes of a cluster (which
    /// apply the same entries at nearly the same time) do not all write a snapshot at once.
    pub(super) fn maybe_snapshot(&mut self) -> Result<()> {
        let every = self.config.snapshot_entries;
        let offset = self.config.id.wrapping_mul(0x9e37_79b9_7f4a_7c15) % (every / 10).max(1);
        if every > 0
            && self.snapshot_job.is_none()
            && self.kv.applied() >= self.last_snapshot_index + every + offset
        {
            self.begin_snapshot()?;
        }
        Ok(())
    }

    pub(super) fn begin_snapshot(&mut self) -> Result<()> {
        let index = self.kv.applied();
        let started = self.clock.now();
        // Frozen, not copied: the state is encoded on the writer thread while this one goes
        // on applying; the writes made meanwhile are folded in when the snapshot is finished.
        let frozen = self.kv.freeze();
        let cs = self.raw.raft.prs.conf_state();
        let job = match self.raw.store().begin_snapshot(index, cs, move |w| frozen.write_to(w)) {
            Ok(job) => job,
            Err(Error::SnapshotNotWritten(why)) => {
                self.kv.thaw();
                self.snapshot_not_written(index, why);
                return Ok(());
            }
            Err(e) => {
                self.kv.thaw();
                return Err(e);
            }
        };
        self.snapshot_job = Some((job, started));
        self.last_snapshot_index = index;
        Ok(())
    }

    /// Puts the snapshot being written in force once its file is (or, with `wait`, waits).
    /// Not while a sync is in flight (it syncs the log): then, with `wait`, that sync is waited
    /// for first; without, it is left for later.
    pub(super) fn finish_snapshot(&mut self, wait: bool) -> Result<()> {
        if wait {
            self.settle_sync()?;
        } else if self.persisting.is_some() {
            return Ok(());
        }
        if !self.snapshot_job.as_ref().is_some_and(|(job, _)| wait || job.is_finished()) {
            return Ok(());
        }
        let (job, started) = self.snapshot_job.take().expect("checked");
        let index = job.index;
        let keep = self.config.snapshot_catchup_entries;
        let finishing = self.clock.now();
        let finished = self.raw.store_mut().finish_snapshot(job, keep);
        // The writer thread is done with the frozen map (or this Kv is a newer one, restored
        // from the leader's snapshot meanwhile, and not frozen).
        self.kv.thaw();
        match finished {
            Ok(_) => {
                self.metrics.snapshot.observe(self.clock.now().saturating_duration_since(started));
                let file = self.raw.store().snapshot_path(index);
                if let Ok(meta) = std::fs::metadata(file) {
                    self.metrics
                        .snapshot_size_bytes
                        .store(meta.len(), std::sync::atomic::Ordering::Relaxed);
                }
                info!(
                    "snapshot at index {index} in {:?} (put in force in {:?} on the loop)",
                    self.clock.now().duration_since(started),
                    self.clock.now().duration_since(finishing)
                )
            }
            Err(Error::SnapshotNotWritten(why)) => self.snapshot_not_written(index, why),
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// A snapshot whose file could not be written: the node goes on (the log keeps the
    /// entries), and the next snapshot is tried after the usual number of entries.
    fn snapshot_not_written(&mut self, index: u64, why: String) {
        warn!(
            "snapshot at index {index} not written ({why}); the next one is tried after {} \
             more entries",
            self.config.snapshot_entries
        );
        self.last_snapshot_index = index;
        self.snapshot_failure = Some(why);
    }

    /// Snapshots the applied state now and waits until it is in force (an operator's request).
    pub(super) fn snapshot_now(&mut self) -> Result<u64> {
        self.finish_snapshot(true)?;
        let index = self.kv.applied();
        if index > 0 && index > self.last_snapshot_index {
            self.snapshot_failure = None;
            self.begin_snapshot()?;
            self.finish_snapshot(true)?;
            if let Some(why) = self.snapshot_failure.take() {
                return Err(Error::SnapshotNotWritten(why));
            }
        }
        Ok(self.last_snapshot_index)
    }
}

/// What is logged of a committed entry this build cannot decode: it is skipped. (Stopping
/// instead would let one forged append from a member's identity, which Raft takes as a new
/// leader's, stop every node it reaches; a node that skips holds a state the others may not,
/// which version skew can cause too: see README, "Client sessions", on upgrades.)
fn undecodable(index: u64, what: &str, e: impl std::fmt::Display) -> String {
    format!(
        "committed entry {index} does not decode as {what} ({e}): written by a newer build than \
         this one, or forged; skipped, so this node's state may now differ from the others' \
         (upgrade it to the leader's build, or wipe and re-add it)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        range.map(|i| Entry { index: i, term: 1, ..Entry::default() }).collect()
    }

    #[test]
    fn committed_entries_are_applied_before_the_sync_only_when_already_durable() {
        let mut rd = raft::Ready { committed_entries: entries(3..=6), ..raft::Ready::default() };
        assert_eq!(durable_committed_prefix(&rd), 4, "nothing new to persist: all durable");
        rd.entries = entries(5..=8);
        assert_eq!(durable_committed_prefix(&rd), 2, "3 and 4 were synced by earlier Readies");
        rd.entries = entries(3..=3);
        assert_eq!(durable_committed_prefix(&rd), 0, "a one-node cluster commits what it writes");
        rd.entries.clear();
        rd.snapshot = Some(raft::Snapshot::default());
        assert_eq!(durable_committed_prefix(&rd), 0, "after a snapshot, nothing early");
    }
}
