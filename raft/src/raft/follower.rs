//! The follower's and candidate's side: appends, heartbeats and snapshots from the leader,
//! votes received while campaigning.

use log::{debug, info, warn};

use super::*;

impl<T: Storage> Raft<T> {
    pub(super) fn step_candidate(&mut self, m: Message) -> Result<()> {
        let my_vote_response = if self.state == StateType::PreCandidate {
            MessageType::RequestPreVoteResponse
        } else {
            MessageType::RequestVoteResponse
        };
        match m.msg_type {
            MessageType::Propose => {
                info!("{:x} no leader at term {}; dropping proposal", self.id, self.term);
                return Err(Error::ProposalDropped);
            }
            MessageType::ReadIndex => {
                info!("{:x} no leader at term {}; dropping read index", self.id, self.term);
                return Err(Error::ProposalDropped);
            }
            // A leader of our term exists (the term check has run): follow it.
            MessageType::Append => {
                self.become_follower(m.term, m.from);
                self.handle_append_entries(&m);
            }
            MessageType::Heartbeat => {
                self.become_follower(m.term, m.from);
                self.handle_heartbeat(m);
            }
            MessageType::Snapshot => {
                self.become_follower(m.term, m.from);
                self.handle_snapshot(m);
            }
            t if t == my_vote_response => {
                match self.poll(m.from, m.msg_type, !m.reject) {
                    VoteResult::Won => {
                        if self.state == StateType::PreCandidate {
                            self.campaign(CampaignType::Election);
                        } else {
                            self.become_leader();
                            self.bcast_append();
                        }
                    }
                    VoteResult::Lost => {
                        // A pre-vote response carries a future term: keep ours.
                        let term = self.term;
                        self.become_follower(term, INVALID_ID);
                    }
                    VoteResult::Pending => {}
                }
            }
            MessageType::TimeoutNow => {
                debug!(
                    "{:x} [term {} state {}] ignored TimeoutNow from {:x}",
                    self.id, self.term, self.state, m.from
                );
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) fn step_follower(&mut self, mut m: Message) -> Result<()> {
        let from_a_leader = matches!(
            m.msg_type,
            MessageType::Append | MessageType::Heartbeat | MessageType::Snapshot
        );
        if from_a_leader && self.lead != INVALID_ID && m.from != self.lead {
            // A term has at most one leader (Raft §5.2): a second one claiming ours is a bug or
            // a forgery, and following it could truncate what the real leader replicated.
            warn!(
                "{:x} [term {}] ignored a {:?} from {:x}: its leader in this term is {:x}",
                self.id, self.term, m.msg_type, m.from, self.lead
            );
            return Ok(());
        }
        match m.msg_type {
            MessageType::Propose => {
                if self.lead == INVALID_ID {
                    info!("{:x} no leader at term {}; dropping proposal", self.id, self.term);
                    return Err(Error::ProposalDropped);
                }
                if self.disable_proposal_forwarding {
                    info!(
                        "{:x} not forwarding to leader {:x} at term {}; dropping proposal",
                        self.id, self.lead, self.term
                    );
                    return Err(Error::ProposalDropped);
                }
                m.to = self.lead;
                self.send(m);
            }
            MessageType::Append => {
                self.election_elapsed = 0;
                self.lead = m.from;
                self.handle_append_entries(&m);
            }
            MessageType::Heartbeat => {
                self.election_elapsed = 0;
                self.lead = m.from;
                self.handle_heartbeat(m);
            }
            MessageType::Snapshot => {
                self.election_elapsed = 0;
                self.lead = m.from;
                self.handle_snapshot(m);
            }
            MessageType::TransferLeader => {
                if self.lead == INVALID_ID {
                    info!(
                        "{:x} no leader at term {}; dropping leader transfer msg",
                        self.id, self.term
                    );
                    return Ok(());
                }
                // A request forwarded by a peer that took us for the leader carries its term;
                // forward it afresh under ours.
                m.to = self.lead;
                m.term = 0;
                self.send(m);
            }
            MessageType::TimeoutNow if m.from != self.lead => {
                // Only the leader may hand over leadership: from anyone else it would move
                // leadership (and terms) at a stranger's word.
                warn!(
                    "{:x} [term {}] ignored TimeoutNow from {:x}, which is not its leader {:x}",
                    self.id, self.term, m.from, self.lead
                );
            }
            MessageType::TimeoutNow => {
                info!(
                    "{:x} [term {}] received TimeoutNow from {:x} and starts an election to get \
                     leadership",
                    self.id, self.term, m.from
                );
                // A transfer never uses pre-vote: the leader asked for it, so there is no
                // partition to recover from.
                self.hup(CampaignType::Transfer);
            }
            MessageType::TransferNotice if m.from != self.lead => {
                warn!(
                    "{:x} [term {}] ignored a transfer notice from {:x}, which is not its leader \
                     {:x}",
                    self.id, self.term, m.from, self.lead
                );
            }
            MessageType::TransferNotice => {
                self.transfer_notice = m.index;
                if let Some(vote) = self.pending_transfer_vote.take_if(|v| v.from == m.index) {
                    return self.step(vote);
                }
            }
            MessageType::ReadIndex => {
                if self.lead == INVALID_ID {
                    info!(
                        "{:x} no leader at term {}; dropping index reading msg",
                        self.id, self.term
                    );
                    return Err(Error::ProposalDropped);
                }
                m.to = self.lead;
                self.send(m);
            }
            MessageType::ReadIndexResp => {
                if m.entries.len() != 1 {
                    warn!(
                        "{:x} invalid format of ReadIndexResp from {:x}, entries count: {}",
                        self.id,
                        m.from,
                        m.entries.len()
                    );
                    return Ok(());
                }
                let request_ctx = m.entries.pop().map(|e| e.data).unwrap_or_default();
                self.read_states.push(ReadState {
                    index: m.index,
                    request_ctx,
                    lease_expiry: None,
                });
            }
            _ => {}
        }
        Ok(())
    }

    /// Appends the leader's entries if the logs match at the preceding entry, else rejects
    /// with a hint for fast backtracking (Raft §5.3).
    pub fn handle_append_entries(&mut self, m: &Message) {
        // Entries at or below the commit index are never rewritten (Raft §5.4): an append
        // before it, even a forged one, only learns our commit index.
        if m.index < self.raft_log.committed {
            self.send(Message {
                msg_type: MessageType::AppendResponse,
                to: m.from,
                index: self.raft_log.committed,
                ..Message::default()
            });
            return;
        }
        if let Some(last_new_index) =
            self.raft_log.maybe_append(m.index, m.log_term, m.commit, &m.entries)
        {
            self.send(Message {
                msg_type: MessageType::AppendResponse,
                to: m.from,
                index: last_new_index,
                ..Message::default()
            });
            return;
        }
        debug!(
            "{:x} [log_term: {}, index: {}] rejected append [log_term: {}, index: {}] from {:x}",
            self.id,
            self.raft_log.term(m.index).unwrap_or(0),
            m.index,
            m.log_term,
            m.index,
            m.from
        );
        // Hint the largest (index, term) at or below the leader's (index, log_term) where the
        // logs could match: it skips our whole tail of entries from terms the leader lacks.
        let hint_index = m.index.min(self.raft_log.last_index());
        let (hint_index, hint_term) = self.raft_log.find_conflict_by_term(hint_index, m.log_term);
        self.send(Message {
            msg_type: MessageType::AppendResponse,
            to: m.from,
            index: m.index,
            reject: true,
            reject_hint: hint_index,
            log_term: hint_term,
            ..Message::default()
        });
    }

    /// Commits up to the leader's advertised index and acknowledges, echoing a read context.
    pub fn handle_heartbeat(&mut self, m: Message) {
        // A leader sends at most what this follower holds (min(match, committed)); more is a
        // bug or a forgery, never a reason to stop: clamp to this log.
        let last = self.raft_log.last_index();
        if m.commit > last {
            warn!(
                "{:x} got a heartbeat from {:x} committing {} beyond its last index {last}",
                self.id, m.from, m.commit
            );
        }
        self.raft_log.commit_to(m.commit.min(last));
        self.send(Message {
            msg_type: MessageType::HeartbeatResponse,
            to: m.from,
            context: m.context,
            sent_at: m.sent_at,
            ..Message::default()
        });
    }

    /// Restores the leader's snapshot if it is newer than our commit index.
    pub fn handle_snapshot(&mut self, m: Message) {
        let Some(snapshot) = m.snapshot else {
            warn!("{:x} ignored a snapshot message without a snapshot from {:x}", self.id, m.from);
            return;
        };
        let (index, term) = (snapshot.metadata.index, snapshot.metadata.term);
        if self.restore(*snapshot) {
            info!(
                "{:x} [commit: {}] restored snapshot [index: {index}, term: {term}]",
                self.id, self.raft_log.committed
            );
            self.send(Message {
                msg_type: MessageType::AppendResponse,
                to: m.from,
                index: self.raft_log.last_index(),
                ..Message::default()
            });
        } else {
            info!(
                "{:x} [commit: {}] ignored snapshot [index: {index}, term: {term}]",
                self.id, self.raft_log.committed
            );
            self.send(Message {
                msg_type: MessageType::AppendResponse,
                to: m.from,
                index: self.raft_log.committed,
                ..Message::default()
            });
        }
    }

    /// Resets the log and configuration to a snapshot. False when the snapshot is stale, names
    /// a configuration without this node, or is already matched by our log (then only the
    /// commit index moves).
    pub fn restore(&mut self, snapshot: Snapshot) -> bool {
        let meta = &snapshot.metadata;
        if meta.index <= self.raft_log.committed {
            return false;
        }
        if self.state != StateType::Follower {
            // Defense in depth: only followers receive snapshots.
            warn!(
                "{:x} attempted to restore snapshot as {}; should never happen",
                self.id, self.state
            );
            let term = self.term + 1;
            self.become_follower(term, INVALID_ID);
            return false;
        }
        let cs = &meta.conf_state;
        let member = cs
            .voters
            .iter()
            .chain(&cs.learners)
            .chain(&cs.voters_outgoing)
            .any(|&id| id == self.id);
        // A node outside its own configuration is joining: the snapshot may predate its own
        // addition, which it learns from the entries that follow; it cannot campaign or vote
        // meanwhile, so any newer snapshot is safe for it. (Requiring membership here stalled
        // a joiner that had already restored one such snapshot: simulator seed 2527.) A member
        // must be in the configuration it restores.
        let joining = !self.prs.progress.contains_key(&self.id);
        if !member && !joining {
            warn!("{:x} attempted to restore snapshot but it is not in the ConfState {cs:?}; should never happen", self.id);
            return false;
        }
        if self.raft_log.match_term(meta.index, meta.term) {
            info!(
                "{:x} [commit: {}, last_index: {}, last_term: {}] fast-forwarded commit to \
                 snapshot [index: {}, term: {}]",
                self.id,
                self.raft_log.committed,
                self.raft_log.last_index(),
                self.raft_log.last_term(),
                meta.index,
                meta.term
            );
            self.raft_log.commit_to(meta.index);
            return false;
        }
        let cs = cs.clone();
        self.raft_log.restore(snapshot);
        self.prs = ProgressTracker::new(self.prs.max_inflight);
        let (cfg, prs) = confchange::restore(&self.prs, self.raft_log.last_index(), &cs)
            .unwrap_or_else(|e| panic!("{:x} unable to restore config {cs:?}: {e}", self.id));
        let restored = self.switch_to_config(cfg, prs);
        assert_conf_states_equivalent(&cs, &restored);
        if let Some(pr) = self.prs.progress.get_mut(&self.id) {
            let next = pr.next_idx;
            pr.maybe_update(next - 1);
        }
        true
    }
}

fn assert_conf_states_equivalent(want: &ConfState, got: &ConfState) {
    let norm = |v: &[u64]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v
    };
    let same = norm(&want.voters) == norm(&got.voters)
        && norm(&want.learners) == norm(&got.learners)
        && norm(&want.voters_outgoing) == norm(&got.voters_outgoing)
        && norm(&want.learners_next) == norm(&got.learners_next)
        && want.auto_leave == got.auto_leave;
    assert!(same, "conf states differ after restore: want {want:?}, got {got:?}");
}
