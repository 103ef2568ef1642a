//! Client and admin requests: reads, writes, membership, status.

use std::collections::btree_map::Entry as MapEntry;

use super::*;

/// Bytes a command's encoding adds to its keys and values: tags, lengths, the session, the
/// sequence number and the leader's clock, each a varint of at most 9 bytes (an estimate
/// that sizes the buffer; a larger encoding grows it).
const COMMAND_OVERHEAD_BYTES: usize = 64;

/// Read contexts unique across the cluster and its restarts: the leader keys waiting reads
/// and counts heartbeat acknowledgements by context alone, so a context two reads share lets
/// an acknowledgement of one confirm the other (a stale read), or drops a follower's read.
/// A context is this node's id, its data dir incarnation, a number drawn at start and a
/// counter. Session registrations carry one too, as the token that finds their waiter.
pub(crate) struct ReadContexts {
    prefix: [u8; 24],
    next: u64,
}

impl ReadContexts {
    /// Length of every context.
    pub(crate) const LEN: usize = 32;

    pub(crate) fn new(node_id: u64, incarnation: u64) -> ReadContexts {
        let mut prefix = [0u8; 24];
        prefix[..8].copy_from_slice(&node_id.to_le_bytes());
        prefix[8..16].copy_from_slice(&incarnation.to_le_bytes());
        prefix[16..].copy_from_slice(&wal::new_incarnation().to_le_bytes());
        ReadContexts { prefix, next: 1 }
    }

    /// A context never used before, and its counter (the key of the reads waiting on it).
    pub(crate) fn next(&mut self) -> (u64, Vec<u8>) {
        let n = self.next;
        self.next += 1;
        let mut ctx = Vec::with_capacity(Self::LEN);
        ctx.extend_from_slice(&self.prefix);
        ctx.extend_from_slice(&n.to_le_bytes());
        (n, ctx)
    }

    /// The counter of a context this node made, `None` for any other.
    pub(crate) fn counter(&self, ctx: &[u8]) -> Option<u64> {
        let (prefix, n) = ctx.split_at_checked(self.prefix.len())?;
        (prefix == self.prefix).then_some(())?;
        Some(u64::from_le_bytes(n.try_into().ok()?))
    }
}

/// What a proposal waiting in the batch is, to find its waiter when it applies.
pub(super) enum Proposed {
    /// A write, by `(session_id, seq)`.
    Write(u64, u64),
    /// A session registration, by its token's counter.
    Session(u64),
}

impl<N: Net> Node<N> {
    pub(super) fn respond(&mut self, token: Token, response: ClientResponse) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let before = conn.encoder.pending_len();
        match conn.send(&response) {
            Ok(true) => {
                self.client_queued += conn.encoder.pending_len().saturating_sub(before);
                if self.client_queued > self.config.conn_limits.max_buffered_bytes {
                    self.shed_buffered_clients();
                }
            }
            Ok(false) => {
                warn!("client {} is not reading its replies; closing", conn.remote);
                self.close(token, "output queue over its limit");
            }
            Err(e) => warn!("cannot encode a reply: {e}"),
        }
    }

    /// Records a request's latency, and the outcome of a write.
    fn measure<T>(&self, w: &Waiter, result: &std::result::Result<T, ClientError>) {
        use std::sync::atomic::Ordering::Relaxed;
        let arrived = w.deadline.checked_sub(self.config.request_timeout).unwrap_or(w.deadline);
        let elapsed = self.replied_at.saturating_duration_since(arrived);
        self.metrics.request(w.op, elapsed);
        if matches!(w.op, Operation::Put | Operation::Delete | Operation::Cas | Operation::Session)
        {
            match result {
                Ok(_) => self.metrics.proposals_committed.fetch_add(1, Relaxed),
                // Redirected: never proposed here.
                Err(ClientError::NotLeader { .. } | ClientError::NoLeader) => 0,
                Err(_) => self.metrics.proposals_failed.fetch_add(1, Relaxed),
            };
        }
    }

    pub(super) fn kv_reply(
        &mut self,
        w: &Waiter,
        result: std::result::Result<KvReply, ClientError>,
    ) {
        self.measure(w, &result);
        self.respond(w.conn, ClientResponse::Kv { request_id: w.request_id, result });
    }

    pub(super) fn session_reply(
        &mut self,
        w: &Waiter,
        result: std::result::Result<u64, ClientError>,
    ) {
        self.measure(w, &result);
        self.respond(w.conn, ClientResponse::Session { request_id: w.request_id, result });
    }

    /// Answers a proposal that will not apply.
    fn proposal_failed(&mut self, proposed: &Proposed, w: &Waiter, e: ClientError) {
        match proposed {
            Proposed::Write(..) => self.kv_reply(w, Err(e)),
            Proposed::Session(_) => self.session_reply(w, Err(e)),
        }
    }

    pub(super) fn admin_reply(
        &mut self,
        w: &Waiter,
        result: std::result::Result<AdminReply, ClientError>,
    ) {
        self.measure(w, &result);
        self.respond(w.conn, ClientResponse::Admin { request_id: w.request_id, result });
    }

    /// Answers a request with an error, in the reply its kind takes.
    pub(super) fn fail_waiter(&mut self, w: &Waiter, e: ClientError) {
        match w.op {
            Operation::Admin => self.admin_reply(w, Err(e)),
            Operation::Session => self.session_reply(w, Err(e)),
            _ => self.kv_reply(w, Err(e)),
        }
    }

    pub(super) fn not_leader(&self) -> ClientError {
        let lead = self.raw.raft.lead;
        if lead == 0 {
            return ClientError::NoLeader;
        }
        let leader_addr = if lead == self.config.id {
            Some(self.config.advertise_client.clone())
        } else {
            self.peers.get(&lead).and_then(|l| l.client_addr.clone())
        };
        ClientError::NotLeader { leader_id: lead, leader_addr }
    }

    pub(super) fn is_leader(&self) -> bool {
        self.raw.raft.state == StateType::Leader
    }

    pub(super) fn client_request(&mut self, token: Token, request: ClientRequestRef) {
        let deadline = self.clock.now() + self.config.request_timeout;
        match request {
            ClientRequestOf::Kv { request_id, session_id, seq, op } => {
                let kind = match op {
                    Op::Put { .. } => Operation::Put,
                    Op::Get { .. } => Operation::Get,
                    Op::Delete { .. } => Operation::Delete,
                    Op::Cas { .. } => Operation::Cas,
                };
                let waiter = Waiter { conn: token, request_id, deadline, op: kind };
                self.kv_request(waiter, session_id, seq, op);
            }
            ClientRequestOf::RegisterSession { request_id } => {
                let op = Operation::Session;
                let waiter = Waiter { conn: token, request_id, deadline, op };
                if !self.is_leader() {
                    let e = self.not_leader();
                    return self.session_reply(&waiter, Err(e));
                }
                let (n, token) = self.read_contexts.next();
                let limits = self.config.session_limits;
                let body = CommandBody::RegisterSession { token, limits };
                self.propose_command(body, Proposed::Session(n), waiter);
            }
            ClientRequestOf::Admin { request_id, request } => {
                let op = Operation::Admin;
                let waiter = Waiter { conn: token, request_id, deadline, op };
                self.admin_request(waiter, request);
            }
        }
    }

    pub(super) fn kv_request(&mut self, waiter: Waiter, session_id: u64, seq: u64, op: OpRef) {
        match op {
            Op::Get { key, serializable: true } => {
                let result = OpResult::Get(self.kv.get(key).cloned());
                let reply = KvReply { index: self.kv.applied(), result };
                self.kv_reply(&waiter, Ok(reply));
            }
            Op::Get { key, serializable: false } => {
                self.read_batch.push(PendingRead { waiter, key: key.to_vec(), backup: false })
            }
            op => {
                if !self.is_leader() {
                    let e = self.not_leader();
                    self.kv_reply(&waiter, Err(e));
                    return;
                }
                if let Some(why) = &self.space_refusal {
                    // NoSpace says "not applied, ever": a write that may be in the log (a retry
                    // of one applied, in flight, or timed out here; or any write while entries
                    // of an earlier leader may still apply) goes the usual way instead.
                    let key = (session_id, seq);
                    let raft = &self.raw.raft;
                    let settled =
                        raft.raft_log.term(self.kv.applied()).is_ok_and(|t| t == raft.term);
                    let known = !settled
                        || self.kv.write_applied(session_id, seq)
                        || self.write_waiters.contains_key(&key)
                        || self.more_write_waiters.contains_key(&key)
                        || self.expired_writes.contains_key(&key)
                        || self
                            .proposal_waiters
                            .iter()
                            .any(|(p, _)| matches!(p, Proposed::Write(s, q) if (*s, *q) == key));
                    if matches!(op, Op::Put { .. } | Op::Cas { .. }) && !known {
                        let e = ClientError::NoSpace(why.clone());
                        return self.kv_reply(&waiter, Err(e));
                    }
                }
                let body = CommandBodyOf::Write { session_id, seq, op };
                self.propose_command(body, Proposed::Write(session_id, seq), waiter);
            }
        }
    }

    /// Adds a command, stamped with this leader's clock, to the batch proposed at the end of
    /// the loop iteration.
    fn propose_command<B: AsRef<[u8]> + serde_bytes::Serialize>(
        &mut self,
        body: CommandBodyOf<B>,
        proposed: Proposed,
        waiter: Waiter,
    ) {
        // The wall clock: what sessions expire by (a clock before 1970 reads 0, and then the
        // replicated clock does not move).
        let command = CommandOf { leader_time_ms: self.clock.wall_ms(), body };
        // Sized once: grown from empty, the buffer was reallocated and copied three times
        // for a 256-byte value.
        let mut data = Vec::with_capacity(command.body.payload_len() + COMMAND_OVERHEAD_BYTES);
        if let Err(e) = crate::kv::encode_command(&command, &mut data) {
            return self.proposal_failed(&proposed, &waiter, refused(e.to_string()));
        }
        if data.len() > self.config.max_request_bytes {
            let e = ClientError::TooLarge { len: data.len(), max: self.config.max_request_bytes };
            return self.proposal_failed(&proposed, &waiter, e);
        }
        self.proposals.push((raft::Bytes::new(), data.into()));
        self.proposal_waiters.push((proposed, waiter));
    }

    /// Proposes the writes and asks one read index for the reads that arrived in this
    /// iteration.
    pub(super) fn submit_batches(&mut self) {
        if !self.proposals.is_empty() {
            let batch = std::mem::take(&mut self.proposals);
            let waiters = std::mem::take(&mut self.proposal_waiters);
            match self.raw.propose_batch(batch) {
                Ok(()) => {
                    for (proposed, w) in waiters {
                        match proposed {
                            Proposed::Write(session_id, seq) => {
                                let key = (session_id, seq);
                                match self.write_waiters.entry(key) {
                                    MapEntry::Vacant(first) => drop(first.insert(w)),
                                    MapEntry::Occupied(_) => {
                                        self.more_write_waiters.entry(key).or_default().push(w)
                                    }
                                }
                            }
                            Proposed::Session(n) => {
                                self.session_waiters.insert(n, w);
                            }
                        }
                    }
                }
                Err(e) => {
                    let err = match e {
                        raft::Error::ProposalDropped if !self.is_leader() => self.not_leader(),
                        raft::Error::ProposalDropped => ClientError::ProposalDropped,
                        other => refused(other.to_string()),
                    };
                    for (proposed, w) in waiters {
                        self.proposal_failed(&proposed, &w, err.clone());
                    }
                }
            }
        }
        if !self.read_batch.is_empty() {
            let batch = std::mem::take(&mut self.read_batch);
            let (n, ctx) = self.read_contexts.next();
            self.raw.advance_clock(self.clock.lease_now());
            match self.raw.read_index(ctx.clone()) {
                Ok(()) => {
                    let asked = self.clock.now();
                    self.reads_in_flight.insert(n, ReadsInFlight { ctx, asked, reads: batch });
                }
                Err(_) => {
                    let err = self.not_leader();
                    let err = if matches!(err, ClientError::NotLeader { .. }) {
                        ClientError::NoLeader
                    } else {
                        err
                    };
                    for r in batch {
                        self.fail_waiter(&r.waiter, err.clone());
                    }
                }
            }
        }
    }

    pub(super) fn admin_request(&mut self, waiter: Waiter, request: AdminRequest) {
        let result = match request {
            AdminRequest::Status => Ok(AdminReply::Status(Box::new(self.status()))),
            // Only the leader starts a transfer: a follower's core would forward the request
            // stamped with the transferee's id, which the leader refuses from the follower's
            // connection. The client is redirected instead.
            AdminRequest::TransferLeader { .. } if !self.is_leader() => Err(self.not_leader()),
            AdminRequest::TransferLeader { to } => match self.raw.transfer_leader(to) {
                Ok(()) => Ok(AdminReply::Done(format!("leadership transfer to {to} started"))),
                Err(e) => Err(refused(e.to_string())),
            },
            AdminRequest::AddVoter { id, .. } => Err(refused(format!(
                "a voter counts in quorums only once its data dir incarnation is recorded: add \
                 node {id} as a learner (raftctl member add-learner {id} ADDR), start it with \
                 --join, then promote it (raftctl member promote {id})"
            ))),
            AdminRequest::AddLearner { id, addr } => {
                return self.change_membership(
                    waiter,
                    ConfChangeType::AddLearnerNode,
                    id,
                    Some(addr),
                )
            }
            AdminRequest::Promote { id } => {
                return self.change_membership(waiter, ConfChangeType::AddNode, id, None)
            }
            AdminRequest::Remove { id } => {
                return self.change_membership(waiter, ConfChangeType::RemoveNode, id, None)
            }
            AdminRequest::HashKv => {
                let (hash, keys) = self.kv.hash();
                Ok(AdminReply::HashKv {
                    node: self.config.id,
                    applied: self.kv.applied(),
                    hash,
                    keys,
                })
            }
            AdminRequest::SnapshotSave if !self.is_leader() => Err(self.not_leader()),
            AdminRequest::SnapshotSave => return self.snapshot_save(waiter, false),
            AdminRequest::SnapshotChunk { export, offset } => self.snapshot_chunk(export, offset),
            AdminRequest::UpdateMember { id, addr } => {
                return self.change_membership(waiter, ConfChangeType::UpdateNode, id, Some(addr))
            }
            AdminRequest::Snapshot => match self.snapshot_now() {
                Ok(index) => Ok(AdminReply::Snapshot { node: self.config.id, index }),
                Err(e @ Error::SnapshotNotWritten(_)) => Err(refused(e.to_string())),
                Err(e) => {
                    // A failed sync: the node stops at the end of this loop iteration.
                    let why = format!("the node is stopping: {e}");
                    self.fatal = Some(e);
                    Err(refused(why))
                }
            },
            AdminRequest::Fault { drop_to, drop_from, delay_ms } => {
                if self.config.allow_fault_injection {
                    info!(
                        "fault injection: dropping messages to {drop_to:?} and from \
                         {drop_from:?}, delaying by {delay_ms} ms"
                    );
                    self.drop_to = drop_to;
                    self.drop_from = drop_from;
                    self.delay = Duration::from_millis(delay_ms);
                    Ok(AdminReply::Done("fault injected".into()))
                } else {
                    Err(refused(
                        "fault injection is not allowed on this node (--allow-fault-injection)",
                    ))
                }
            }
            AdminRequest::Heal => {
                if self.config.allow_fault_injection {
                    self.drop_to.clear();
                    self.drop_from.clear();
                    self.delay = Duration::ZERO;
                    Ok(AdminReply::Done("healed".into()))
                } else {
                    Err(refused(
                        "fault injection is not allowed on this node (--allow-fault-injection)",
                    ))
                }
            }
        };
        self.admin_reply(&waiter, result);
    }

    pub(super) fn change_membership(
        &mut self,
        waiter: Waiter,
        change_type: ConfChangeType,
        id: u64,
        addr: Option<String>,
    ) {
        if !self.is_leader() {
            let e = self.not_leader();
            return self.admin_reply(&waiter, Err(e));
        }
        let conf = &self.raw.raft.prs.conf;
        let is_voter = conf.voters.contains(id);
        let is_learner = conf.learners.contains(&id);
        let last_index = self.raw.raft.raft_log.last_index();
        let matched = self.raw.raft.prs.progress.get(&id).map_or(0, |p| p.matched);
        let address_taken = addr
            .as_deref()
            .and_then(|a| self.kv.members().iter().find(|(&o, m)| o != id && m.as_str() == a))
            .map(|(&other, _)| other);
        let refusal = if self.raw.raft.pending_conf_index > self.raw.raft.raft_log.applied {
            Some("a configuration change is already pending".to_string())
        } else if conf.voters.is_joint() {
            Some("the configuration is joint; wait for it to settle".to_string())
        } else if let Err(e) = crate::args::check_node_id(id) {
            Some(e)
        } else if let Some(Err(e)) = addr.as_deref().map(crate::args::check_peer_address) {
            Some(e)
        } else if let (Some(other), Some(a)) = (address_taken, addr.as_deref()) {
            Some(format!("address {a} is already node {other}'s"))
        } else {
            match (change_type, addr.is_some()) {
                (ConfChangeType::AddNode, true) | (ConfChangeType::AddLearnerNode, true)
                    if is_voter || is_learner =>
                {
                    Some(format!("node {id} is already a member"))
                }
                (ConfChangeType::AddNode, false) if !is_learner => {
                    Some(format!("node {id} is not a learner"))
                }
                (ConfChangeType::AddNode, false) if self.kv.incarnation(id).is_none() => {
                    Some(format!(
                        "node {id}'s data dir incarnation is not recorded yet (it is once node \
                         {id} runs and is in contact with the leader): start it with --join and \
                         retry"
                    ))
                }
                // etcd: "can only promote a learner member which is in sync with leader".
                (ConfChangeType::AddNode, false)
                    if last_index.saturating_sub(matched) > promote_lag_allowed(last_index) =>
                {
                    Some(format!(
                        "learner {id} is not in sync with the leader: it holds the log up to \
                         {matched}, the leader's ends at {last_index} (promotion waits until it \
                         is within {} entries: {PROMOTE_LAG_ENTRIES_MAX}, or {}% of the log \
                         when shorter); retry",
                        promote_lag_allowed(last_index),
                        100 - PROMOTE_MATCHED_PERCENT_MIN
                    ))
                }
                (ConfChangeType::RemoveNode | ConfChangeType::UpdateNode, _)
                    if !is_voter && !is_learner =>
                {
                    Some(format!("node {id} is not a member"))
                }
                (ConfChangeType::RemoveNode, _) if is_voter && conf.voters.incoming.len() == 1 => {
                    Some("cannot remove the last voter".to_string())
                }
                _ => None,
            }
        };
        if let Some(reason) = refusal {
            return self.admin_reply(&waiter, Err(refused(reason)));
        }
        let token = self.next_conf_token;
        self.next_conf_token += 1;
        let context = codec::encode_value(&MemberContext {
            peer_addr: addr,
            request_token: token,
            ..MemberContext::default()
        })
        .unwrap_or_default();
        let cc = ConfChange { change_type, node_id: id, context };
        match self.raw.propose_conf_change(Vec::new(), &cc) {
            Ok(()) => {
                self.conf_waiters.insert(token, ConfWaiter { waiter });
            }
            Err(e) => self.admin_reply(&waiter, Err(refused(e.to_string()))),
        }
    }

    /// `key` in this node's state machine as applied so far: a serializable read (a
    /// simulator checks every node's state with it).
    pub fn applied_value(&self, key: &[u8]) -> Option<&Vec<u8>> {
        self.kv.get(key)
    }

    /// What the core holds of itself, cheaply (a simulator checks the core's safety
    /// properties with it after every turn): term, whether it leads, commit index.
    pub fn raft_state(&self) -> (u64, bool, u64) {
        let raft = &self.raw.raft;
        (raft.term, raft.state == raft::StateType::Leader, raft.raft_log.committed)
    }

    /// The entry at `index` in this node's log, if it holds it (not compacted).
    pub fn log_entry(&self, index: u64) -> Option<raft::Entry> {
        let log = &self.raw.raft.raft_log;
        if index < log.first_index() || index > log.last_index() {
            return None;
        }
        log.slice(index, index + 1, u64::MAX).ok()?.pop()
    }

    /// The alarms this node knows of, in words.
    fn alarms(&self) -> Vec<String> {
        let mut alarms = Vec::new();
        if let Some(why) = &self.no_space {
            alarms.push(format!("NOSPACE on node {}: {why}", self.config.id));
        }
        alarms.extend(self.members_short_of_space().map(|id| format!("NOSPACE on node {id}")));
        alarms
    }

    /// This node's view of itself and the cluster (what `raftctl status` shows).
    pub fn status(&self) -> NodeStatus {
        let status = self.raw.status();
        let sync = self.raw.store().sync_stats();
        let cs = &status.conf_state;
        let mut members = Vec::new();
        let mut add = |id: u64, role: &str| {
            let progress = status.progress.get(&id);
            let (peer_addr, client_addr) = if id == self.config.id {
                (
                    Some(self.config.advertise_peer.clone()),
                    Some(self.config.advertise_client.clone()),
                )
            } else {
                let link = self.peers.get(&id);
                (link.and_then(|l| l.addr.clone()), link.and_then(|l| l.client_addr.clone()))
            };
            members.push(MemberStatus {
                id,
                peer_addr,
                client_addr,
                role: role.to_string(),
                matched: progress.map(|p| p.matched),
                recent_active: progress.map(|p| p.recent_active),
            });
        };
        for &id in &cs.voters {
            add(id, "voter");
        }
        for &id in &cs.voters_outgoing {
            if !cs.voters.contains(&id) {
                add(id, "outgoing voter");
            }
        }
        for &id in &cs.learners {
            add(id, "learner");
        }
        NodeStatus {
            id: self.config.id,
            cluster_id: self.config.cluster_id.clone(),
            role: role_name(status.soft_state.raft_state).to_string(),
            term: status.hard_state.term,
            leader: status.soft_state.lead,
            commit: status.hard_state.commit,
            applied: status.applied,
            first_index: self.raw.store().first_index_now(),
            last_index: self.raw.store().last_index_now(),
            snapshot_index: self.raw.store().current_snapshot().index,
            joint: !cs.voters_outgoing.is_empty(),
            members,
            uptime_secs: self.clock.now().duration_since(self.started).as_secs(),
            wal_syncs: sync.count,
            wal_sync_micros: sync.micros,
            wal_sync_max_micros: sync.max_micros,
            alarms: self.alarms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ReadContexts;

    #[test]
    fn read_contexts_are_unique_across_nodes_and_restarts() {
        let mut seen = std::collections::HashSet::new();
        // Nodes 1 and 2 of one cluster, and node 1 started again on the same data dir.
        for (id, incarnation) in [(1, 7), (2, 9), (1, 7)] {
            let mut contexts = ReadContexts::new(id, incarnation);
            for want in 1..=100 {
                let (n, ctx) = contexts.next();
                assert_eq!((n, ctx.len()), (want, ReadContexts::LEN));
                assert_eq!(contexts.counter(&ctx), Some(n));
                assert!(seen.insert(ctx), "node {id}'s context {n} was used before");
            }
        }
        let other = ReadContexts::new(2, 9).next().1;
        assert_eq!(ReadContexts::new(1, 7).counter(&other), None);
        assert_eq!(ReadContexts::new(1, 7).counter(&other[..8]), None);
    }
}
