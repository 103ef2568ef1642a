//! Messages to peers, snapshot transfer, connections and timers.

use super::*;

impl<N: Net> Node<N> {
    pub(super) fn send_messages(&mut self, messages: Vec<Message>) {
        for m in messages {
            let to = m.to;
            if self.drop_to.contains(&to) {
                continue;
            }
            if !self.delay.is_zero() && m.msg_type != MessageType::Snapshot {
                self.delayed.push_back((self.clock.now() + self.delay, m));
                continue;
            }
            if m.msg_type == MessageType::Snapshot {
                let mut header = m;
                let data = header
                    .snapshot
                    .as_mut()
                    .map(|s| std::mem::take(&mut s.data))
                    .unwrap_or_default();
                match self.peers.get_mut(&to) {
                    Some(link) => link.snapshot_out = Some((header, data, 0)),
                    None => self.raw.report_snapshot(to, SnapshotStatus::Failure),
                }
                continue;
            }
            if m.msg_type == MessageType::Heartbeat {
                let now = self.clock.now();
                if let Some(link) = self.peers.get_mut(&to) {
                    link.heartbeat_sent.get_or_insert(now);
                }
            }
            self.send_peer(to, &PeerFrame::Raft(m));
        }
    }

    pub(super) fn send_peer(&mut self, to: u64, frame: &PeerFrame) -> bool {
        let token = self.peers.get(&to).and_then(|l| l.conn);
        let Some(token) = token else {
            self.raw.report_unreachable(to);
            return false;
        };
        let Some(conn) = self.conns.get_mut(&token) else {
            return false;
        };
        match conn.send(frame) {
            Ok(true) => true,
            Ok(false) => {
                warn!("peer {to} cannot keep up; disconnecting");
                self.close(token, "output queue over its limit");
                false
            }
            Err(e) => {
                warn!("cannot encode a message to {to}: {e}");
                false
            }
        }
    }

    /// Sends the next chunks of snapshots in transfer, as much as the queues allow.
    pub(super) fn pump_snapshots(&mut self) {
        let ids: Vec<u64> = self
            .peers
            .iter()
            .filter(|(_, l)| l.snapshot_out.is_some())
            .map(|(&id, _)| id)
            .collect();
        for to in ids {
            while let Some(link) = self.peers.get_mut(&to) {
                let Some(token) = link.conn else { break };
                let queued = self.conns.get(&token).map_or(usize::MAX, |c| c.encoder.pending_len());
                if queued > 4 * SNAPSHOT_CHUNK_SIZE_BYTES {
                    break;
                }
                let Some((header, data, offset)) = link.snapshot_out.as_mut() else { break };
                let end = (*offset + SNAPSHOT_CHUNK_SIZE_BYTES).min(data.len());
                let frame = PeerFrame::SnapshotChunk {
                    message: header.clone(),
                    offset: *offset as u64,
                    total: data.len() as u64,
                    data: raft::Bytes::copy_from_slice(&data[*offset..end]),
                };
                *offset = end;
                let finished = end == data.len();
                if finished {
                    link.snapshot_out = None;
                }
                if !self.send_peer(to, &frame) {
                    if let Some(link) = self.peers.get_mut(&to) {
                        link.snapshot_out = None;
                    }
                    self.raw.report_snapshot(to, SnapshotStatus::Failure);
                    break;
                }
                if finished {
                    self.raw.report_snapshot(to, SnapshotStatus::Finish);
                    break;
                }
            }
        }
    }

    /// Sends the delayed messages that are due (fault injection).
    pub(super) fn release_delayed(&mut self) {
        let now = self.clock.now();
        while self.delayed.front().is_some_and(|(due, _)| *due <= now) {
            let (_, m) = self.delayed.pop_front().expect("checked");
            if !self.drop_to.contains(&m.to) {
                let to = m.to;
                self.send_peer(to, &PeerFrame::Raft(m));
            }
        }
    }

    /// Writes what is queued for peers (before a sync, so that it does not wait for it).
    pub(super) fn flush_peers(&mut self) {
        let tokens: Vec<Token> = self.peers.values().filter_map(|l| l.conn).collect();
        for token in tokens {
            let Some(conn) = self.conns.get_mut(&token) else { continue };
            if conn.encoder.pending_len() == 0 {
                continue;
            }
            if let Err(e) = conn.flush(&mut self.net, token) {
                self.close(token, &format!("write: {e}"));
            }
        }
    }

    pub(super) fn flush_all(&mut self) {
        let tokens: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| c.encoder.pending_len() > 0)
            .map(|(&t, _)| t)
            .collect();
        for token in tokens {
            let Some(conn) = self.conns.get_mut(&token) else { continue };
            if let Err(e) = conn.flush(&mut self.net, token) {
                self.close(token, &format!("write: {e}"));
            }
        }
        self.client_queued = self.client_queued_exact();
    }

    /// Output queued for clients, counted.
    fn client_queued_exact(&self) -> usize {
        self.conns
            .values()
            .filter(|c| matches!(c.kind, ConnKind::Client { .. }))
            .map(|c| c.encoder.pending_len())
            .sum()
    }

    /// While all connections' buffers together hold more than `--max-buffered-bytes`, closes
    /// the client connections holding the most (peers are not shed: they are members).
    pub(super) fn shed_buffered_clients(&mut self) {
        let max_buffered_bytes = self.config.conn_limits.max_buffered_bytes;
        let mut total: usize = self.conns.values().map(Conn::buffer_bytes).sum();
        if total > max_buffered_bytes {
            let mut clients: Vec<(usize, Token)> = self
                .conns
                .iter()
                .filter(|(_, c)| matches!(c.kind, ConnKind::Client { .. }))
                .map(|(&t, c)| (c.buffer_bytes(), t))
                .collect();
            clients.sort_unstable_by(|a, b| b.cmp(a));
            for (bytes, token) in clients {
                if total <= max_buffered_bytes {
                    break;
                }
                let remote = self.conns[&token].remote;
                warn!(
                    "closing client connection from {remote} holding {bytes} bytes: connections \
                     hold {total} bytes, above --max-buffered-bytes {max_buffered_bytes}"
                );
                self.close(token, "buffered bytes above the limit");
                total -= bytes;
            }
        }
        self.client_queued = self.client_queued_exact();
    }

    /// Once per tick: connect to peers, expire requests and stalled snapshot transfers.
    pub(super) fn housekeeping(&mut self, now: Instant) {
        self.watch_space(now);
        self.space_refusal = self.space_alarm();
        self.publish_metrics();
        self.expire_exports(now);
        self.stop_if_removed(now);
        self.record_incarnations();
        self.resolver.collect(now);
        self.resolver.expire(now);
        let ids: Vec<u64> = self.peers.keys().copied().collect();
        for id in ids {
            let link = &self.peers[&id];
            if link.conn.is_some() || now < link.next_attempt {
                continue;
            }
            let Some(addr) = link.addr.clone() else { continue };
            self.connect(id, &addr, now);
        }
        self.expire_waiters(now);
        self.ask_read_index_again(|asked| now.duration_since(asked) >= READ_INDEX_RETRY);
        self.police_connections(now);
        self.snapshots_in.retain(|from, s| {
            let keep = now.duration_since(s.last_chunk) < SNAPSHOT_RECEIVE_TIMEOUT;
            if !keep {
                warn!("snapshot from {from} stalled; dropped");
            }
            keep
        });
    }

    /// Publishes the gauges the loop holds (term, indexes, leadership, quorum, connections,
    /// pending proposals) and the bytes each peer connection moved since the last time.
    pub(super) fn publish_metrics(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        let m = Arc::clone(&self.metrics);
        let raft = &self.raw.raft;
        let lead = raft.lead;
        if lead != 0 && lead != self.metrics_leader {
            m.leader_changes.fetch_add(1, Relaxed);
        }
        if lead != 0 {
            self.metrics_leader = lead;
        }
        m.has_leader.store(lead != 0, Relaxed);
        let leader = raft.state == StateType::Leader;
        m.is_leader.store(leader, Relaxed);
        m.term.store(raft.term, Relaxed);
        m.commit_index.store(raft.raft_log.committed, Relaxed);
        m.applied_index.store(self.kv.applied(), Relaxed);
        let pending = self.write_waiters.len()
            + self.more_write_waiters.values().map(Vec::len).sum::<usize>()
            + self.session_waiters.len()
            + self.proposal_waiters.len();
        m.proposals_pending.store(pending as u64, Relaxed);
        let (mut clients, mut peers) = (0u64, 0u64);
        // When each peer was last heard from, on either connection.
        let mut heard: BTreeMap<u64, Instant> = BTreeMap::new();
        for conn in self.conns.values_mut() {
            let peer = match conn.kind {
                ConnKind::Client { .. } => {
                    clients += 1;
                    continue;
                }
                ConnKind::OutboundPeer { to } => Some(to),
                ConnKind::InboundPeer { from } => from,
            };
            peers += 1;
            let (sent, received) = conn.take_byte_counts();
            if let Some(peer) = peer {
                let at = heard.entry(peer).or_insert(conn.last_read);
                *at = (*at).max(conn.last_read);
                m.peer_bytes(peer, sent, received);
            }
        }
        m.client_connections.store(clients, Relaxed);
        m.peer_connections.store(peers, Relaxed);
        // A quorum of voters heard from within an election timeout (the core's own record of
        // activity exists only with check-quorum, and is reset at each of its rounds).
        let now = self.clock.now();
        let election_timeout = self.election_timeout();
        let id = self.config.id;
        let quorum = self.raw.raft.prs.conf.voters.vote_result(|voter| {
            Some(
                voter == id
                    || heard
                        .get(&voter)
                        .is_some_and(|&at| now.saturating_duration_since(at) <= election_timeout),
            )
        }) == raft::quorum::VoteResult::Won;
        m.quorum_active.store(leader && quorum, Relaxed);
        // (Refreshed just before, in `housekeeping`; it holds this node's own alarm too.)
        m.no_space.store(self.space_refusal.is_some(), Relaxed);
    }

    /// Once a second: measures the data dir, raises or clears this node's space alarm, and
    /// tells every peer.
    fn watch_space(&mut self, now: Instant) {
        use std::sync::atomic::Ordering::Relaxed;
        const SPACE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
        let limits = self.config.space_limits;
        if limits.quota_bytes == 0 && limits.reserve_bytes == 0 {
            return;
        }
        if self.space_checked_at.is_some_and(|at| now.duration_since(at) < SPACE_CHECK_INTERVAL) {
            return;
        }
        self.space_checked_at = Some(now);
        match crate::space::measure(&self.config.data_dir) {
            Ok(usage) => {
                self.metrics.data_dir_bytes.store(usage.used, Relaxed);
                self.metrics.data_dir_free_bytes.store(usage.free, Relaxed);
                let alarm = limits.alarm(usage);
                match (&self.no_space, &alarm) {
                    (None, Some(why)) => warn!(
                        "space alarm raised: {why}; puts and compare-and-swaps are refused \
                         with NoSpace until space returns"
                    ),
                    (Some(_), None) => info!(
                        "space alarm cleared: {} bytes free, the data dir holds {}",
                        usage.free, usage.used
                    ),
                    _ => {}
                }
                self.no_space = alarm;
            }
            Err(e) => warn!("cannot measure the data dir's space: {e}"),
        }
        let frame = PeerFrame::Alarm { no_space: self.no_space.is_some() };
        let ids: Vec<u64> =
            self.peers.iter().filter(|(_, l)| l.conn.is_some()).map(|(&id, _)| id).collect();
        for id in ids {
            self.send_peer(id, &frame);
        }
    }

    /// Why writes are refused for want of space, if they are: this node's alarm, or the
    /// alarm a member reported recently (see `space_refusal`, which holds it).
    pub(super) fn space_alarm(&self) -> Option<String> {
        if let Some(why) = &self.no_space {
            return Some(format!("node {}: {why}", self.config.id));
        }
        let id = self.members_short_of_space().next()?;
        Some(format!("node {id}'s data dir is short of space"))
    }

    /// The members whose last report, within `PEER_ALARM_TIMEOUT`, raised their space alarm.
    pub(super) fn members_short_of_space(&self) -> impl Iterator<Item = u64> + '_ {
        let now = self.clock.now();
        self.peer_no_space
            .iter()
            .filter(move |&(id, &(raised, at))| {
                raised
                    && now.saturating_duration_since(at) < PEER_ALARM_TIMEOUT
                    && self.raw.raft.prs.progress.contains_key(id)
            })
            .map(|(&id, _)| id)
    }

    /// Closes connections that did not say Hello in time, gives back idle buffers, sheds the
    /// client connections holding the most buffered bytes while all of them hold more than
    /// `--max-buffered-bytes`, and retries accepting after a failure.
    fn police_connections(&mut self, now: Instant) {
        let limits = self.config.conn_limits.clone();
        let late: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.in_handshake() && now.duration_since(c.opened_at) > limits.handshake_timeout
            })
            .map(|(&t, _)| t)
            .collect();
        for token in late {
            let remote = self.conns[&token].remote;
            debug!("connection from {remote} sent no Hello within {:?}", limits.handshake_timeout);
            self.close(token, "handshake timeout");
        }
        for conn in self.conns.values_mut() {
            conn.release_idle_buffers();
        }
        self.shed_buffered_clients();
        if now.saturating_duration_since(self.memory_collected_at) >= MEMORY_COLLECT_INTERVAL {
            self.memory_collected_at = now;
            give_back_freed_memory();
        }
        if self.accept_retry {
            self.accept_retry = false;
            self.accept(true);
            self.accept(false);
        }
    }

    /// On the leader: proposes the record of a member's data dir incarnation that the
    /// configuration lacks (one at a time; a member added as a learner, or one of a cluster
    /// bootstrapped before incarnations), as seen in its handshake. A learner is promoted only
    /// once its incarnation is recorded, so that every voter's is.
    fn record_incarnations(&mut self) {
        if !self.is_leader()
            || self.raw.raft.pending_conf_index > self.raw.raft.raft_log.applied
            || self.raw.raft.prs.conf.voters.is_joint()
        {
            return;
        }
        let cs = self.raw.raft.prs.conf_state();
        let unrecorded = self.seen_incarnations.iter().find(|(&id, &incarnation)| {
            (cs.voters.contains(&id) || cs.learners.contains(&id))
                && self.kv.incarnation(id).is_none()
                && !self.kv.is_retired(id, incarnation)
        });
        let Some((&id, &incarnation)) = unrecorded else { return };
        let context = codec::encode_value(&MemberContext {
            incarnation: Some(incarnation),
            ..MemberContext::default()
        })
        .unwrap_or_default();
        let cc = ConfChange { change_type: ConfChangeType::UpdateNode, node_id: id, context };
        match self.raw.propose_conf_change(Vec::new(), &cc) {
            Ok(()) => info!("recording node {id}'s data dir incarnation {incarnation:016x}"),
            Err(e) => debug!("cannot record node {id}'s incarnation now: {e}"),
        }
    }

    /// Stops the node (as SIGTERM would) once every peer has refused it as removed for
    /// [`REMOVED_STOP_AFTER_ELECTION_TIMEOUTS`] election timeouts: it is no longer a member,
    /// and must not go on answering its clients from a state that no longer changes.
    ///
    /// A node without a configuration (started empty with `--join`, perhaps under the id of
    /// a removed node, and not added yet) is waiting to be added, and never stops so.
    fn stop_if_removed(&mut self, now: Instant) {
        let Some(since) = self.refused_as_removed_since else { return };
        let cs = self.raw.raft.prs.conf_state();
        let never_a_member = cs.voters.is_empty() && cs.learners.is_empty();
        if never_a_member || self.peers.keys().any(|id| !self.removed_by.contains(id)) {
            self.refused_as_removed_since = None;
            return;
        }
        let grace = self.election_timeout() * REMOVED_STOP_AFTER_ELECTION_TIMEOUTS;
        if now.duration_since(since) >= grace {
            error!(
                "node {} was removed from the cluster: every peer ({:?}) has refused it as \
                 removed for {grace:?}; stopping",
                self.config.id, self.removed_by
            );
            self.shutdown.store(true, Ordering::Relaxed);
        }
    }

    pub(super) fn connect(&mut self, id: u64, addr: &str, now: Instant) {
        let socket_addr = match self.resolver.lookup(addr, now) {
            Lookup::Ready(a) => Some(a),
            // Being resolved: tried again at the next tick, with no backoff.
            Lookup::Pending => return,
            Lookup::Failed(why) => {
                warn!("peer {id} at {addr}: {why}");
                None
            }
        };
        let link = self.peers.get_mut(&id).expect("caller checked");
        link.next_attempt = now + link.backoff;
        link.backoff = (link.backoff * 2).min(RECONNECT_BACKOFF_MAX);
        let Some(socket_addr) = socket_addr else { return };
        let stream = match self.net.connect(socket_addr, id) {
            Ok(s) => s,
            Err(e) => {
                debug!("connect to peer {id} at {addr}: {e}");
                return;
            }
        };
        let token = self.alloc_token();
        let mut conn = Conn::new(
            stream,
            ConnKind::OutboundPeer { to: id },
            socket_addr,
            self.config.frame_size_max,
            now,
        );
        let hello = peer_hello(&self.config, self.incarnation, self.kv.cluster_incarnation());
        if conn.send(&hello).is_err() || conn.register(&mut self.net, token).is_err() {
            return;
        }
        self.conns.insert(token, conn);
        let link = self.peers.get_mut(&id).expect("caller checked");
        link.conn = Some(token);
        link.backoff = RECONNECT_BACKOFF_MIN;
    }

    /// Asks the read index again for the reads in flight for which `due(asked)` holds, each
    /// batch with its own context (see [`READ_INDEX_RETRY`]).
    pub(super) fn ask_read_index_again(&mut self, due: impl Fn(Instant) -> bool) {
        if !self.reads_in_flight.values().any(|r| due(r.asked)) {
            return;
        }
        let now = self.clock.now();
        self.raw.advance_clock(self.clock.lease_now());
        let mut asked_again = 0;
        for in_flight in self.reads_in_flight.values_mut() {
            if !due(in_flight.asked) {
                continue;
            }
            in_flight.asked = now;
            // Refused only without a leader to ask; asked again after the next interval.
            if self.raw.read_index(in_flight.ctx.clone()).is_ok() {
                asked_again += 1;
            }
        }
        if asked_again > 0 {
            debug!("asked the read index again for {asked_again} batches of reads");
        }
    }

    pub(super) fn expire_waiters(&mut self, now: Instant) {
        let mut expired: Vec<Waiter> = Vec::new();
        let term = self.raw.raft.term;
        let expired_writes = &mut self.expired_writes;
        self.write_waiters.retain(|&key, w| {
            if w.deadline > now {
                return true;
            }
            expired_writes.insert(key, term);
            expired.push(w.clone());
            false
        });
        self.more_write_waiters.retain(|&key, ws| {
            if ws.iter().any(|w| w.deadline <= now) {
                expired_writes.insert(key, term);
                let (gone, kept): (Vec<Waiter>, Vec<Waiter>) =
                    std::mem::take(ws).into_iter().partition(|w| w.deadline <= now);
                expired.extend(gone);
                *ws = kept;
            }
            !ws.is_empty()
        });
        // Those of earlier terms are applied or gone once an entry of this term applied.
        let raft = &self.raw.raft;
        if raft.raft_log.term(self.kv.applied()).is_ok_and(|t| t == raft.term) {
            self.expired_writes.retain(|_, &mut t| t == raft.term);
        }
        self.reads_in_flight.retain(|_, in_flight| {
            // (Reads in one batch arrived at different times: each expires on its own.)
            if in_flight.reads.iter().any(|r| r.waiter.deadline <= now) {
                let (gone, kept): (Vec<PendingRead>, Vec<PendingRead>) =
                    std::mem::take(&mut in_flight.reads)
                        .into_iter()
                        .partition(|r| r.waiter.deadline <= now);
                expired.extend(gone.into_iter().map(|r| r.waiter));
                in_flight.reads = kept;
            }
            !in_flight.reads.is_empty()
        });
        while self
            .reads_ready
            .front()
            .is_some_and(|(_, b)| b.first().is_some_and(|r| r.waiter.deadline <= now))
        {
            let (_, batch) = self.reads_ready.pop_front().expect("checked");
            expired.extend(batch.into_iter().map(|r| r.waiter));
        }
        let conf_expired: Vec<u64> = self
            .conf_waiters
            .iter()
            .filter(|(_, w)| w.waiter.deadline <= now)
            .map(|(&t, _)| t)
            .collect();
        for token in conf_expired {
            if let Some(w) = self.conf_waiters.remove(&token) {
                self.admin_reply(&w.waiter, Err(ClientError::Timeout));
            }
        }
        for w in expired {
            self.fail_waiter(&w, ClientError::Timeout);
        }
        let sessions_expired: Vec<u64> = self
            .session_waiters
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(&n, _)| n)
            .collect();
        for n in sessions_expired {
            if let Some(w) = self.session_waiters.remove(&n) {
                self.session_reply(&w, Err(ClientError::Timeout));
            }
        }
    }
}
