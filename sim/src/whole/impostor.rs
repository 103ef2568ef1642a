//! Impostors on the peer port (`--hostile`, [`WholeConfig::hostile`]): connections that
//! claim to be peers, and what each must get.
//!
//! A stranger (an id that was never a member) and a member's id with an incarnation that was
//! never its are refused at the hello: a welcome fails the seed. A member whose process is
//! down is spoken for with its real credentials, as a buggy or compromised process holding
//! the peer secret would: welcomed, it sends frames that a node must drop without effect,
//! and never a reason to stop (issue 14): any message at an absurd term, a TimeoutNow from
//! a member that is not the node's leader, and, speaking for the node's leader (down, and the
//! node does not know yet), an append past the end of the log and a snapshot whose
//! configuration is invalid. Frames that a correct node would act on are not sent: Raft does
//! not survive a lying member (a forged commit index at the current term, or an append at
//! the current term from another member, which the node then takes for the term's leader),
//! and no check at the door can tell one from the real member (the README's trust model).
//!
//! The checks that catch a node taken in: a welcome given to a stranger, a node stopping on
//! an error that no full disk explains, a term past [`TERM_JUMP_MAX`] on any node (no
//! honest term gets near it), a node's panic, and the history checks of every seed.

use std::io::Write;
use std::time::Duration;

use codec::FrameDecoder;
use raft::{ConfState, Entry, Message, MessageType, Snapshot, SnapshotMetadata, TERM_JUMP_MAX};
use raftd::protocol::{Hello, HelloAck, PeerFrame, Role};

use super::{peer_addr, Sim, WholeConfig, WholeFailure};
use crate::net::SimStream;

/// Chance per step that an impostor connects, when none is connected, per mille.
const IMPOSTOR_PER_MILLE: u64 = 4;
/// An impostor hangs up this long after it connected (so that the member it speaks for can
/// connect again once it restarts).
const IMPOSTOR_STAYS: Duration = Duration::from_millis(60);
/// Client indices on the network from here on are impostors.
const IMPOSTOR_ENDPOINT_BASE: usize = 1_000;
/// Largest frame an impostor reads or writes.
const IMPOSTOR_FRAME_MAX: usize = 1 << 20;

/// Who an impostor claims to be.
#[derive(Debug)]
pub(super) enum Claim {
    /// An id that was never a member: must be refused.
    Stranger { id: u64 },
    /// A member's id with an incarnation that was never its: must be refused.
    WrongIncarnation { id: u64 },
    /// A member whose process is down, with its real credentials: the frames it sends once
    /// welcomed must change nothing.
    Member { id: u64, frames: Vec<PeerFrame> },
}

/// One impostor's connection.
pub(super) struct Impostor {
    /// The node it speaks to (an index).
    target: usize,
    claim: Claim,
    stream: SimStream,
    decoder: FrameDecoder,
    /// When it hangs up.
    until: Duration,
    /// Its hello was answered.
    answered: bool,
}

impl Sim {
    /// Connects an impostor now and then; reads the answer of the one connected and acts on
    /// it; hangs it up when its time is over.
    pub(super) fn impostor_step(&mut self, with_faults: bool) -> Result<(), WholeFailure> {
        if self.impostor.is_none() {
            if with_faults && self.hostile_rng.chance(IMPOSTOR_PER_MILLE) {
                self.connect_impostor();
            }
            return Ok(());
        }
        let impostor = self.impostor.as_mut().expect("checked");
        let mut answer = None;
        let mut broken = false;
        if !impostor.answered {
            broken = super::read_available(&mut impostor.decoder, &mut impostor.stream);
            if let Ok(Some(payload)) = impostor.decoder.next_payload() {
                answer = Some(codec::decode_payload::<HelloAck>(payload).ok());
            }
        }
        if let Some(answer) = answer {
            impostor.answered = true;
            self.impostor_answered(answer)?;
        }
        let impostor = self.impostor.as_ref().expect("still connected");
        if broken || self.now >= impostor.until {
            self.impostor = None;
        }
        Ok(())
    }

    /// A node answered the impostor's hello.
    fn impostor_answered(&mut self, answer: Option<HelloAck>) -> Result<(), WholeFailure> {
        let welcomed = matches!(answer, Some(HelloAck::Welcome { .. }));
        let impostor = self.impostor.as_mut().expect("connected");
        let target = impostor.target;
        let frames = match &mut impostor.claim {
            Claim::Member { frames, .. } if welcomed => std::mem::take(frames),
            // Refused for now (its member connected already, say).
            Claim::Member { .. } => return Ok(()),
            claim if welcomed => {
                let what = format!("{claim:?}");
                return Err(self.fail(format!("node {} welcomed an impostor: {what}", target + 1)));
            }
            _ => {
                self.outcome.impostors_refused += 1;
                return Ok(());
            }
        };
        let mut bytes = Vec::new();
        for frame in &frames {
            if codec::encode_into(&mut bytes, frame, IMPOSTOR_FRAME_MAX).is_err() {
                return Err(self.fail(format!("an impostor's frame does not encode: {frame:?}")));
            }
        }
        let impostor = self.impostor.as_mut().expect("connected");
        if impostor.stream.write_all(&bytes).is_ok() {
            self.outcome.impostor_frames += frames.len() as u64;
            let kinds: Vec<String> = frames.iter().map(frame_kind).collect();
            self.note(format!("impostor welcomed by node {}; sends {kinds:?}", target + 1));
        }
        Ok(())
    }

    /// Connects an impostor to a running node, with a claim drawn from what the simulation
    /// knows (who is down, every incarnation).
    fn connect_impostor(&mut self) {
        let running: Vec<usize> =
            (0..self.cfg.nodes).filter(|&i| self.nodes[i].node.is_some()).collect();
        if running.is_empty() {
            return;
        }
        let mut target = running[self.hostile_rng.below(running.len() as u64) as usize];
        let incarnation_known_everywhere = !self.cfg.membership && !self.cfg.single_voter;
        // A node that has applied no configuration yet (it joined and waits for the leader to
        // dial it, or it restarted and has not applied its log again) speaks to anyone
        // claiming a peer id: it cannot tell who is a member. Only a node that applied one
        // must refuse a stranger.
        let configured = self.nodes[target].node.as_ref().expect("running").status().applied > 0;
        let (claim, incarnation) = match self.hostile_rng.below(3) {
            0 if !configured => return,
            0 => {
                let id = self.cfg.nodes as u64 + 1 + self.hostile_rng.below(5);
                (Claim::Stranger { id }, self.hostile_rng.next_u64() | 1)
            }
            // Only where every member's incarnation is recorded from the start: a learner just
            // added has none recorded until the leader hears from it, and whoever presents one
            // first is believed (certificates, not this check, are the answer to that).
            1 if !configured => return,
            1 if incarnation_known_everywhere => {
                let others: Vec<usize> = (0..self.cfg.nodes).filter(|&i| i != target).collect();
                let j = others[self.hostile_rng.below(others.len() as u64) as usize];
                let mut incarnation = self.hostile_rng.next_u64() | 1;
                if incarnation == self.nodes[j].incarnation {
                    incarnation ^= 2;
                }
                (Claim::WrongIncarnation { id: j as u64 + 1 }, incarnation)
            }
            _ => {
                // A member that is down, spoken for to a running node; half the time, if
                // there is one, a node's leader that is down (its followers do not know yet):
                // only the leader's identity can send a snapshot.
                let down = |j: usize| {
                    self.nodes[j].node.is_none()
                        && self.nodes[j].booting.is_none()
                        && !self.nodes[j].held
                };
                let pairs: Vec<(usize, usize)> = running
                    .iter()
                    .flat_map(|&t| (0..self.cfg.nodes).map(move |j| (t, j)))
                    .filter(|&(t, j)| t != j && down(j))
                    .collect();
                let led: Vec<(usize, usize)> = pairs
                    .iter()
                    .copied()
                    .filter(|&(t, j)| {
                        self.nodes[t].node.as_ref().expect("running").status().leader
                            == j as u64 + 1
                    })
                    .collect();
                let from =
                    if !led.is_empty() && self.hostile_rng.chance(500) { &led } else { &pairs };
                if from.is_empty() {
                    return;
                }
                let (t, j) = from[self.hostile_rng.below(from.len() as u64) as usize];
                target = t;
                let frames = self.crafted_frames(target, j as u64 + 1);
                (Claim::Member { id: j as u64 + 1, frames }, self.nodes[j].incarnation)
            }
        };
        let id = match &claim {
            Claim::Stranger { id } | Claim::WrongIncarnation { id } | Claim::Member { id, .. } => {
                *id
            }
        };
        let endpoint = IMPOSTOR_ENDPOINT_BASE + self.impostors_connected as usize;
        let Ok(mut stream) = self.world.dial(endpoint, peer_addr(target)) else { return };
        self.impostors_connected += 1;
        let hello = Hello {
            versions: raftd::protocol::ProtocolVersions::OURS,
            cluster_id: "sim".into(),
            node_id: id,
            role: Role::Peer,
            token: None,
            client_addr: None,
            peer_addr: None,
            incarnation,
            cluster_incarnation: 0,
        };
        let mut bytes = Vec::new();
        if codec::encode_into(&mut bytes, &hello, IMPOSTOR_FRAME_MAX).is_err()
            || stream.write_all(&bytes).is_err()
        {
            return;
        }
        self.note(format!("impostor connects to node {} as {claim:?}", target + 1));
        self.impostor = Some(Impostor {
            target,
            claim,
            stream,
            decoder: FrameDecoder::new(IMPOSTOR_FRAME_MAX),
            until: self.now + IMPOSTOR_STAYS,
            answered: false,
        });
    }

    /// One to three frames from member `from` (down) to node `target`, each of which the node
    /// must drop: drawn against the node's state now (it may move before they arrive, which
    /// keeps them droppable: terms and log ends only grow).
    fn crafted_frames(&mut self, target: usize, from: u64) -> Vec<PeerFrame> {
        let status = self.nodes[target].node.as_ref().expect("running").status();
        let (term, leader, last) = (status.term, status.leader, status.last_index);
        let to = target as u64 + 1;
        let count = 1 + self.hostile_rng.below(3);
        let mut frames = Vec::new();
        for _ in 0..count {
            let rng = &mut self.hostile_rng;
            // Speaking for the node's leader, a snapshot one time in two.
            let pick = if leader == from && rng.chance(500) { 2 } else { rng.below(4) };
            let frame = match pick {
                // Any message at a term no honest node reaches: refused whole.
                0 => {
                    let kinds = ABSURD_TERM_TYPES;
                    let msg_type = kinds[rng.below(kinds.len() as u64) as usize];
                    let absurd = if rng.chance(500) {
                        u64::MAX
                    } else {
                        // Past any jump the node allows from the term it has when the frame
                        // arrives (it may have grown a little since).
                        term.saturating_add(2 * TERM_JUMP_MAX + rng.below(1_000))
                    };
                    PeerFrame::Raft(Message {
                        msg_type,
                        to,
                        from,
                        term: absurd,
                        log_term: absurd,
                        index: last + rng.below(10),
                        commit: u64::MAX,
                        context: raft::Bytes::from_static(raft::CAMPAIGN_TRANSFER),
                        ..Message::default()
                    })
                }
                // From the node's leader, an append past the end of the log, its previous
                // entry's term 0 (which the log answers for any index it does not hold):
                // rejected with a hint. (From anyone else at the current term, an append
                // would make the node take the sender for the term's leader: a lying member,
                // which Raft does not survive.)
                1 if leader == from => {
                    let index = last + 2 + rng.below(100);
                    PeerFrame::Raft(Message {
                        msg_type: MessageType::Append,
                        to,
                        from,
                        term,
                        log_term: 0,
                        index,
                        commit: index + 1,
                        entries: vec![Entry {
                            term,
                            index: index + 1,
                            data: vec![0xff; 8].into(),
                            ..Entry::default()
                        }],
                        ..Message::default()
                    })
                }
                // A snapshot whose configuration has a voter that is also a learner, from
                // the node's leader (taken from no one else): refused.
                2 if leader == from => {
                    let image = raftd::kv::Kv::new().snapshot();
                    let message = Message {
                        msg_type: MessageType::Snapshot,
                        to,
                        from,
                        term,
                        snapshot: Some(Box::new(Snapshot {
                            data: Vec::new(),
                            metadata: SnapshotMetadata {
                                index: status.commit + 1_000,
                                term,
                                conf_state: ConfState {
                                    voters: vec![from, to],
                                    learners: vec![to],
                                    ..ConfState::default()
                                },
                            },
                        })),
                        ..Message::default()
                    };
                    PeerFrame::SnapshotChunk {
                        message,
                        offset: 0,
                        total: image.len() as u64,
                        data: image.into(),
                    }
                }
                // TimeoutNow at the current term: only the leader may send it (and then the
                // node campaigns with its own log, honestly); ignored from anyone else.
                _ => PeerFrame::Raft(Message {
                    msg_type: MessageType::TimeoutNow,
                    to,
                    from,
                    term,
                    ..Message::default()
                }),
            };
            frames.push(frame);
        }
        frames
    }

    /// Fails the seed if any node took a term no honest node reaches.
    pub(super) fn check_terms(&self) -> Result<(), WholeFailure> {
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(node) = &n.node {
                let term = node.status().term;
                if term >= TERM_JUMP_MAX {
                    return Err(self.fail(format!(
                        "node {} is at term {term}: it took an impostor's absurd term",
                        i + 1
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The message types sent at absurd terms.
const ABSURD_TERM_TYPES: [MessageType; 8] = [
    MessageType::Append,
    MessageType::AppendResponse,
    MessageType::RequestVote,
    MessageType::RequestPreVote,
    MessageType::Heartbeat,
    MessageType::HeartbeatResponse,
    MessageType::TimeoutNow,
    MessageType::ReadIndexResp,
];

/// A frame's kind, for the trace.
fn frame_kind(frame: &PeerFrame) -> String {
    match frame {
        PeerFrame::Raft(m) => format!("{:?} at term {}", m.msg_type, m.term),
        PeerFrame::SnapshotChunk { message, .. } => {
            format!("snapshot with an invalid configuration at term {}", message.term)
        }
        PeerFrame::Alarm { no_space } => format!("space alarm {no_space}"),
    }
}

impl WholeConfig {
    /// The same, with impostors on the peer port (see [`WholeConfig::hostile`]).
    pub fn with_impostors(self) -> WholeConfig {
        WholeConfig { hostile: true, ..self }
    }
}
