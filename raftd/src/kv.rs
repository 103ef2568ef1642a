//! The replicated state machine: a key-value map, the client session table that makes
//! retried writes apply once, and the member address book.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::protocol::{ClientError, KvReply, Op, OpRef, OpResult};

/// Client sessions kept at most by default (`--max-sessions`); past it the least recently
/// active is forgotten.
pub const SESSIONS_MAX_DEFAULT: u64 = 100_000;
/// A session idle this long by the replicated clock expires, by default
/// (`--session-ttl-secs`).
pub const SESSION_TTL_MS_DEFAULT: u64 = 3_600_000;
/// Bytes of values the kept replies may hold, all sessions together, by default
/// (`--max-session-reply-bytes`); past it the least recently active sessions are forgotten.
/// (A compare-and-swap's reply holds the value it replaced, up to a request's size: bounded
/// by count alone, 100,000 sessions could hold 100,000 such values.)
pub const SESSION_REPLY_BYTES_MAX_DEFAULT: u64 = 64 << 20;

/// The first byte of a normal entry's data that holds a [`Command`] (its encoding follows).
/// Entries written before sessions were registered carry a [`LegacyWrite`], whose encoding
/// begins with a varint, and no varint begins with 255 (bincode reserves it).
pub const COMMAND_TAG: u8 = 0xFF;
/// The entry context that marked a [`Command`] in the builds before [`COMMAND_TAG`] (each
/// copy of an entry allocated it: five allocations per write). Still read.
pub const COMMAND_CONTEXT_V1: &[u8] = &[2];

/// What a normal entry's data holds, by its format.
#[derive(Debug, PartialEq, Eq)]
pub enum EntryPayload<'a> {
    /// An encoded [`Command`].
    Command(&'a [u8]),
    /// An encoded [`LegacyWrite`].
    Legacy(&'a [u8]),
}

impl<'a> EntryPayload<'a> {
    /// Tells the format of a normal entry from its data and context.
    pub fn of(data: &'a [u8], context: &[u8]) -> EntryPayload<'a> {
        match data.split_first() {
            Some((&COMMAND_TAG, command)) => EntryPayload::Command(command),
            _ if context == COMMAND_CONTEXT_V1 => EntryPayload::Command(data),
            _ => EntryPayload::Legacy(data),
        }
    }
}

/// Appends a command entry's data for `command` to `out`: [`COMMAND_TAG`], then its encoding.
pub fn encode_command<B: serde_bytes::Serialize>(
    command: &CommandOf<B>,
    out: &mut Vec<u8>,
) -> codec::Result<()> {
    out.push(COMMAND_TAG);
    codec::encode_value_into(command, out)
}

/// A command as it travels through the log, its keys and values owned.
pub type Command = CommandOf<Vec<u8>>;

/// A command whose keys and values are borrowed from the request it is written from, or the
/// entry it is applied from.
pub type CommandRef<'a> = CommandOf<&'a [u8]>;

/// What a command does, its keys and values owned.
pub type CommandBody = CommandBodyOf<Vec<u8>>;

/// A command as it travels through the log (Raft thesis §6.3): stamped with the leader's
/// clock when proposed, so that sessions expire by replicated time, the same on every node.
/// Its keys and values are `B`: owned ([`Command`]) or borrowed ([`CommandRef`]), with the
/// same encoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "B: serde_bytes::Serialize",
    deserialize = "B: serde_bytes::Deserialize<'de>"
))]
pub struct CommandOf<B> {
    /// The proposing leader's wall clock, milliseconds since the Unix epoch. The state
    /// machine's clock is the largest stamp applied so far (a new leader's clock behind the
    /// old one's does not move it back).
    pub leader_time_ms: u64,
    /// What to do.
    pub body: CommandBodyOf<B>,
}

/// What a [`Command`] does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "B: serde_bytes::Serialize",
    deserialize = "B: serde_bytes::Deserialize<'de>"
))]
pub enum CommandBodyOf<B> {
    /// [`CommandBody::RegisterSession`] as written before the bound on reply bytes (still
    /// read: the bound is then [`SESSION_REPLY_BYTES_MAX_DEFAULT`]).
    RegisterSessionV1 {
        /// As in [`CommandBody::RegisterSession`].
        #[serde(with = "serde_bytes")]
        token: Vec<u8>,
        /// The limits of that format.
        limits: SessionLimitsV1,
    },
    /// A write in a session. `(session_id, seq)` identifies it across retries.
    Write {
        /// The session, from its registration.
        session_id: u64,
        /// Increases with each new write in the session, from 1.
        seq: u64,
        /// The write.
        op: Op<B>,
    },
    /// Opens a client session; its id is this entry's index.
    RegisterSession {
        /// Matches the registration to the request waiting on the proposing leader.
        #[serde(with = "serde_bytes")]
        token: Vec<u8>,
        /// The table's limits from here on: carried in the log so that every node applies
        /// the same ones (a flag read on each node could make their tables differ).
        limits: SessionLimits,
    },
}

impl<B: AsRef<[u8]>> CommandBodyOf<B> {
    /// Bytes of keys, values and tokens it carries (its encoding adds a few bytes of tags,
    /// lengths and integers).
    pub fn payload_len(&self) -> usize {
        match self {
            CommandBodyOf::RegisterSession { token, .. }
            | CommandBodyOf::RegisterSessionV1 { token, .. } => token.len(),
            CommandBodyOf::Write { op, .. } => op.payload_len(),
        }
    }
}

/// A write as logs from before registered sessions carry it: the client's random id stands
/// for a session created on its first write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyWrite {
    /// The client.
    pub client_id: u64,
    /// The client's write sequence number.
    pub seq: u64,
    /// The write.
    pub op: Op,
}

/// Bounds of the session table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionLimits {
    /// Sessions kept at most; registering one more forgets the least recently active.
    pub max_sessions: u64,
    /// A session with no write for this long (replicated clock) expires.
    pub ttl_ms: u64,
    /// Bytes of values held in the kept replies, all sessions together, at most; past it
    /// the least recently active sessions are forgotten.
    pub max_reply_bytes: u64,
}

impl Default for SessionLimits {
    fn default() -> SessionLimits {
        SessionLimits {
            max_sessions: SESSIONS_MAX_DEFAULT,
            ttl_ms: SESSION_TTL_MS_DEFAULT,
            max_reply_bytes: SESSION_REPLY_BYTES_MAX_DEFAULT,
        }
    }
}

/// [`SessionLimits`] as written before the bound on reply bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionLimitsV1 {
    /// As in [`SessionLimits`].
    pub max_sessions: u64,
    /// As in [`SessionLimits`].
    pub ttl_ms: u64,
}

impl From<SessionLimitsV1> for SessionLimits {
    fn from(v1: SessionLimitsV1) -> SessionLimits {
        SessionLimits {
            max_sessions: v1.max_sessions,
            ttl_ms: v1.ttl_ms,
            max_reply_bytes: SESSION_REPLY_BYTES_MAX_DEFAULT,
        }
    }
}

/// The outcome of applying a [`Command`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// A session was opened with this id.
    Registered {
        /// The new session.
        session_id: u64,
    },
    /// A write's reply, or why it was not applied.
    Write(Result<KvReply, ClientError>),
}

/// What a configuration-change entry carries besides the change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberContext {
    /// The node's peer address.
    pub peer_addr: Option<String>,
    /// Identifies the admin request waiting for this change.
    pub request_token: u64,
    /// The node's data dir incarnation, when known: recorded, and from then on a peer
    /// presenting another one under this id is refused as a replaced data dir.
    pub incarnation: Option<u64>,
    /// In the bootstrap entries only: the cluster's incarnation.
    pub cluster_incarnation: Option<u64>,
}

/// [`MemberContext`] as written before incarnations (still read from old logs).
#[derive(Deserialize)]
struct MemberContextV1 {
    peer_addr: Option<String>,
    request_token: u64,
}

impl MemberContext {
    /// Decodes a configuration change's context, of this format or the one before.
    pub fn decode(bytes: &[u8]) -> Option<MemberContext> {
        if let Ok(context) = codec::decode_payload::<MemberContext>(bytes) {
            return Some(context);
        }
        let old: MemberContextV1 = codec::decode_payload(bytes).ok()?;
        Some(MemberContext {
            peer_addr: old.peer_addr,
            request_token: old.request_token,
            ..MemberContext::default()
        })
    }
}

/// A client session: its last write and that write's reply, for deduplication.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    /// The last write applied (0: none yet).
    seq: u64,
    /// Its reply.
    reply: Option<KvReply>,
    /// The replicated clock at its registration or last write.
    last_active_ms: u64,
}

/// Bytes of values a reply holds (the rest of a session is bounded by the count limit).
fn reply_bytes(reply: &Option<KvReply>) -> u64 {
    let value = match reply.as_ref().map(|r| &r.result) {
        Some(OpResult::Get(Some(v))) | Some(OpResult::Cas { previous: Some(v), .. }) => v.len(),
        _ => 0,
    };
    value as u64
}

/// The session table, bounded by count, by the bytes its replies hold and by idle time
/// ([`SessionLimits`]), all decided by replicated state only: every node keeps and forgets
/// the same sessions.
#[derive(Clone, Debug, Default)]
struct Sessions {
    by_id: BTreeMap<u64, Session>,
    /// One `(time, id)` per session, ordered, where `time` is at most the session's
    /// `last_active_ms`: a write updates only its session, and an entry is moved up to its
    /// session's activity only when it reaches the front and is about to decide an expiry
    /// or an eviction (the rule of a lazily kept LRU list). A front entry that matches its
    /// session is then the least recently active session, ties to the smaller id, whatever
    /// the history: the same on every node and after a snapshot. A write no longer removes
    /// and inserts in the tree (a fifth of the apply path).
    by_age: BTreeSet<(u64, u64)>,
    /// The replicated clock: the largest leader stamp applied.
    clock_ms: u64,
    limits: SessionLimits,
    /// [`reply_bytes`] of every session, summed.
    reply_bytes: u64,
}

impl Sessions {
    fn from_parts(by_id: BTreeMap<u64, Session>, clock_ms: u64, limits: SessionLimits) -> Sessions {
        let by_age = by_id.iter().map(|(&id, s)| (s.last_active_ms, id)).collect();
        let reply_bytes = by_id.values().map(|s| reply_bytes(&s.reply)).sum();
        let mut sessions = Sessions { by_id, by_age, clock_ms, limits, reply_bytes };
        // A snapshot taken under other limits (or before the bound on reply bytes).
        sessions.enforce_limits();
        sessions
    }

    /// Moves the front entry up to its session's activity, if behind it; true if it moved.
    fn refresh_front(&mut self) -> bool {
        let Some(&(time, id)) = self.by_age.first() else {
            return false;
        };
        let active = self.by_id[&id].last_active_ms;
        debug_assert!(time <= active, "an age entry is never ahead of its session");
        if time == active {
            return false;
        }
        self.by_age.pop_first();
        self.by_age.insert((active, id));
        true
    }

    /// Moves the clock to `leader_time_ms` (never back) and forgets the sessions idle longer
    /// than the TTL by it.
    fn advance_clock(&mut self, leader_time_ms: u64) {
        self.clock_ms = self.clock_ms.max(leader_time_ms);
        while let Some(&(time, id)) = self.by_age.first() {
            if self.clock_ms.saturating_sub(time) <= self.limits.ttl_ms {
                break;
            }
            if self.refresh_front() {
                continue;
            }
            self.by_age.pop_first();
            self.forget(id);
        }
    }

    /// Forgets session `id` (its age entry is already gone).
    fn forget(&mut self, id: u64) {
        let session = self.by_id.remove(&id).expect("an age entry for every session");
        self.reply_bytes -= reply_bytes(&session.reply);
    }

    /// Forgets the least recently active sessions while the table holds more sessions, or
    /// more bytes of replies, than its limits.
    fn enforce_limits(&mut self) {
        while self.by_id.len() as u64 > self.limits.max_sessions.max(1)
            || self.reply_bytes > self.limits.max_reply_bytes
        {
            while self.refresh_front() {}
            let (_, oldest) = self.by_age.pop_first().expect("an age entry for every session");
            self.forget(oldest);
        }
        debug_assert_eq!(self.by_id.len(), self.by_age.len());
    }

    /// Opens session `id`, forgetting the least recently active ones past the count limit.
    fn register(&mut self, id: u64) {
        let session = Session { seq: 0, reply: None, last_active_ms: self.clock_ms };
        match self.by_id.get_mut(&id) {
            // Not reached by registrations (an id is an entry index); its entry stays.
            Some(held) => {
                self.reply_bytes -= reply_bytes(&held.reply);
                *held = session;
            }
            None => {
                self.by_id.insert(id, session);
                self.by_age.insert((self.clock_ms, id));
            }
        }
        self.enforce_limits();
    }

    /// Records the write `seq` of session `id` and its reply. Past the bound on reply bytes
    /// the least recently active sessions are forgotten: this one too if its reply alone is
    /// larger (the write is applied and answered; a retry of it is refused SessionExpired).
    fn record(&mut self, id: u64, seq: u64, reply: KvReply) {
        let session = self.by_id.get_mut(&id).expect("recorded writes are in open sessions");
        let reply = Some(reply);
        self.reply_bytes = self.reply_bytes - reply_bytes(&session.reply) + reply_bytes(&reply);
        *session = Session { seq, reply, last_active_ms: self.clock_ms };
        self.enforce_limits();
    }

    fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// The state machine. Everything in it is a function of the applied log, so every node
/// holds the same state at the same index.
#[derive(Clone, Debug, Default)]
pub struct Kv {
    data: Data,
    sessions: Sessions,
    members: BTreeMap<u64, String>,
    /// Ids removed from the cluster, for good: their connections are refused, so that a
    /// removed node restarted with its stale configuration cannot disturb the cluster.
    removed: BTreeSet<u64>,
    /// The data dir incarnation recorded for each member, once known.
    incarnations: BTreeMap<u64, u64>,
    /// `(id, incarnation)` of every member removed with its incarnation recorded: that data
    /// dir is never a member again, even once the id is added back (on a new disk). A process
    /// of its former life (its bytes may still arrive over a connection that a partition held)
    /// must not be taken for the new one and have its incarnation recorded in its place.
    retired: BTreeSet<(u64, u64)>,
    /// The cluster's incarnation, from the bootstrap entries (0: a cluster bootstrapped
    /// before incarnations existed).
    cluster_incarnation: u64,
    applied: u64,
}

/// Writes `value` over `held`: in its allocation when that holds it and is less than twice
/// its size (an overwrite with a value of about the same size allocates nothing), otherwise
/// in one of its own size (a shrunken value does not keep a large allocation).
fn overwrite(held: &mut Vec<u8>, value: &[u8]) {
    if value.len() <= held.capacity() && held.capacity() / 2 <= value.len() {
        held.clear();
        held.extend_from_slice(value);
    } else {
        *held = value.to_vec();
    }
}

/// The key-value map, which can be frozen for a snapshot without a copy.
///
/// Hashed, not ordered: no operation needs key order, and a lookup is one hash and one
/// comparison instead of a tree walk of comparisons. While a snapshot of `base` is encoded on
/// another thread, `base` is shared with it and not changed: writes go to `overlay` (a value,
/// or `None` for a deletion) and reads look there first. Once thawed, writes go to `base` again
/// (and take their key out of `overlay`), and the overlay is folded into `base` a slice at a
/// time ([`Data::fold_in`]), so that no single loop iteration pays for all of it.
#[derive(Clone, Debug, Default)]
struct Data {
    base: Arc<HashMap<Vec<u8>, Vec<u8>>>,
    overlay: HashMap<Vec<u8>, Option<Vec<u8>>>,
    frozen: bool,
}

impl Data {
    fn get(&self, key: &[u8]) -> Option<&Vec<u8>> {
        if !self.overlay.is_empty() {
            if let Some(written) = self.overlay.get(key) {
                return written.as_ref();
            }
        }
        self.base.get(key)
    }

    /// The map, to change. Not frozen, it is shared with nobody (a finished snapshot has let
    /// go of it), so this copies nothing; a clone of the whole `Kv` would be copied here.
    fn base_mut(&mut self) -> &mut HashMap<Vec<u8>, Vec<u8>> {
        debug_assert!(!self.frozen, "the base of a frozen map is not changed");
        Arc::make_mut(&mut self.base)
    }

    /// Sets `key` to `value`, copying them in: a key already held is not allocated again, and
    /// its value is written over in place when it fits ([`overwrite`]).
    fn insert(&mut self, key: &[u8], value: &[u8]) {
        if self.frozen {
            match self.overlay.get_mut(key) {
                Some(Some(held)) => overwrite(held, value),
                Some(written) => *written = Some(value.to_vec()),
                None => drop(self.overlay.insert(key.to_vec(), Some(value.to_vec()))),
            }
            return;
        }
        if !self.overlay.is_empty() {
            self.overlay.remove(key);
        }
        let base = self.base_mut();
        match base.get_mut(key) {
            Some(held) => overwrite(held, value),
            None => drop(base.insert(key.to_vec(), value.to_vec())),
        }
    }

    /// Removes `key`; true if it was there.
    fn remove(&mut self, key: &[u8]) -> bool {
        if self.frozen {
            let existed = self.get(key).is_some();
            if existed {
                self.overlay.insert(key.to_vec(), None);
            }
            return existed;
        }
        let written = if self.overlay.is_empty() { None } else { self.overlay.remove(key) };
        let in_base = self.base_mut().remove(key).is_some();
        match written {
            Some(value) => value.is_some(),
            None => in_base,
        }
    }

    /// Stops changing `base` and shares it (for a snapshot taken now).
    fn freeze(&mut self) -> Arc<HashMap<Vec<u8>, Vec<u8>>> {
        assert!(!self.frozen, "one snapshot at a time");
        self.fold_in(usize::MAX);
        self.frozen = true;
        Arc::clone(&self.base)
    }

    /// Ends a freeze: writes go to `base` again. The overlay is folded in by `fold_in`.
    fn thaw(&mut self) {
        self.frozen = false;
    }

    /// Folds up to `budget` entries of the overlay into `base` (none while frozen).
    fn fold_in(&mut self, budget: usize) {
        if self.frozen || self.overlay.is_empty() {
            return;
        }
        let base = Arc::make_mut(&mut self.base);
        let mut moved = 0;
        self.overlay.retain(|key, value| {
            if moved == budget {
                return true;
            }
            moved += 1;
            match value.take() {
                Some(value) => base.insert(key.clone(), value),
                None => base.remove(key),
            };
            false
        });
        if self.overlay.is_empty() {
            // Give back the table grown during the snapshot.
            self.overlay = HashMap::new();
        }
    }

    /// True while writes made during a snapshot are still to be folded in.
    fn folding(&self) -> bool {
        !self.frozen && !self.overlay.is_empty()
    }

    /// Every key and value, sorted by key (the merged view while there is an overlay).
    fn sorted(&self) -> Vec<(&Vec<u8>, &Vec<u8>)> {
        let overlay = &self.overlay;
        let mut all: Vec<(&Vec<u8>, &Vec<u8>)> = self
            .base
            .iter()
            .filter(|(k, _)| overlay.is_empty() || !overlay.contains_key(*k))
            .chain(overlay.iter().filter_map(|(k, v)| v.as_ref().map(|v| (k, v))))
            .collect();
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        all
    }
}

/// The encoded form of a [`Kv`] (after the snapshot header), field by field.
#[derive(Serialize)]
struct ImageRef<'a> {
    #[serde(serialize_with = "bytes_map::serialize")]
    data: Vec<(&'a Vec<u8>, &'a Vec<u8>)>,
    sessions: &'a BTreeMap<u64, Session>,
    members: &'a BTreeMap<u64, String>,
    removed: &'a BTreeSet<u64>,
    applied: u64,
    incarnations: &'a BTreeMap<u64, u64>,
    cluster_incarnation: u64,
    session_clock_ms: u64,
    session_limits: SessionLimits,
    retired: &'a BTreeSet<(u64, u64)>,
}

/// [`ImageRef`], decoded.
#[derive(Deserialize)]
struct Image {
    #[serde(deserialize_with = "bytes_map::deserialize")]
    data: HashMap<Vec<u8>, Vec<u8>>,
    sessions: BTreeMap<u64, Session>,
    members: BTreeMap<u64, String>,
    removed: BTreeSet<u64>,
    applied: u64,
    incarnations: BTreeMap<u64, u64>,
    cluster_incarnation: u64,
    session_clock_ms: u64,
    session_limits: SessionLimits,
    retired: BTreeSet<(u64, u64)>,
}

/// [`Image`] of format version 4 as first written (before retired incarnations). Builds from
/// d840c2a to 2026-12-05 wrote the current layout under version 4 as well, so a version 4
/// image is read in the current layout first, then in this one (a payload decodes whole in at
/// most one of them: the other ends early or leaves bytes over).
#[derive(Deserialize)]
struct ImageV4 {
    #[serde(deserialize_with = "bytes_map::deserialize")]
    data: HashMap<Vec<u8>, Vec<u8>>,
    sessions: BTreeMap<u64, Session>,
    members: BTreeMap<u64, String>,
    removed: BTreeSet<u64>,
    applied: u64,
    incarnations: BTreeMap<u64, u64>,
    cluster_incarnation: u64,
    session_clock_ms: u64,
    session_limits: SessionLimits,
}

/// [`Image`] of format version 3 (before the bound on reply bytes).
#[derive(Deserialize)]
struct ImageV3 {
    #[serde(deserialize_with = "bytes_map::deserialize")]
    data: HashMap<Vec<u8>, Vec<u8>>,
    sessions: BTreeMap<u64, Session>,
    members: BTreeMap<u64, String>,
    removed: BTreeSet<u64>,
    applied: u64,
    incarnations: BTreeMap<u64, u64>,
    cluster_incarnation: u64,
    session_clock_ms: u64,
    session_limits: SessionLimitsV1,
}

/// A session as format versions 1 and 2 kept it: aged by applied entries, not by time.
#[derive(Serialize, Deserialize)]
struct SessionV2 {
    seq: u64,
    reply: KvReply,
    last_index: u64,
}

/// [`Image`] of format version 2 (before registered sessions).
#[derive(Deserialize)]
struct ImageV2 {
    #[serde(deserialize_with = "bytes_map::deserialize")]
    data: HashMap<Vec<u8>, Vec<u8>>,
    sessions: BTreeMap<u64, SessionV2>,
    members: BTreeMap<u64, String>,
    removed: BTreeSet<u64>,
    applied: u64,
    incarnations: BTreeMap<u64, u64>,
    cluster_incarnation: u64,
}

/// [`Image`] of format version 1 (before incarnations).
#[derive(Deserialize)]
struct ImageV1 {
    #[serde(deserialize_with = "bytes_map::deserialize")]
    data: HashMap<Vec<u8>, Vec<u8>>,
    sessions: BTreeMap<u64, SessionV2>,
    members: BTreeMap<u64, String>,
    removed: BTreeSet<u64>,
    applied: u64,
}

/// A state frozen for a snapshot: encodes on any thread, while the [`Kv`] it came from goes
/// on applying (see [`Kv::freeze`]).
pub struct FrozenKv {
    data: Arc<HashMap<Vec<u8>, Vec<u8>>>,
    sessions: BTreeMap<u64, Session>,
    session_clock_ms: u64,
    session_limits: SessionLimits,
    members: BTreeMap<u64, String>,
    removed: BTreeSet<u64>,
    incarnations: BTreeMap<u64, u64>,
    retired: BTreeSet<(u64, u64)>,
    cluster_incarnation: u64,
    applied: u64,
}

impl FrozenKv {
    /// The snapshot bytes, as [`Kv::snapshot`] gives them for the state when frozen.
    pub fn encode(self) -> Vec<u8> {
        self.with_image(encode_image)
    }

    /// Writes the snapshot bytes [`FrozenKv::encode`] gives to `out` as they are encoded,
    /// never holding them whole (a snapshot file is written so).
    pub fn write_to(self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        self.with_image(|image| write_image(image, out))
    }

    fn with_image<R>(self, f: impl FnOnce(&ImageRef<'_>) -> R) -> R {
        let mut data: Vec<(&Vec<u8>, &Vec<u8>)> = self.data.iter().collect();
        data.sort_unstable_by(|a, b| a.0.cmp(b.0));
        f(&ImageRef {
            data,
            sessions: &self.sessions,
            members: &self.members,
            removed: &self.removed,
            applied: self.applied,
            incarnations: &self.incarnations,
            cluster_incarnation: self.cluster_incarnation,
            session_clock_ms: self.session_clock_ms,
            session_limits: self.session_limits,
            retired: &self.retired,
        })
    }
}

fn encode_image(image: &ImageRef<'_>) -> Vec<u8> {
    // Sized exactly first: grown as it filled, a 30 MB image was copied twice over and
    // faulted in fresh (zeroed) memory at each doubling, a sixth of the leader's CPU under
    // a steady write load that snapshots every 100,000 entries.
    let len = codec::encoded_len(image).expect("the state machine always encodes");
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER_SIZE + len);
    write_image(image, &mut out).expect("the state machine always encodes into memory");
    debug_assert_eq!(out.len(), SNAPSHOT_HEADER_SIZE + len, "the image's size was counted");
    out
}

/// Writes the snapshot bytes of `image`: [`SNAPSHOT_MAGIC`], the format version, the state.
fn write_image(image: &ImageRef<'_>, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    out.write_all(SNAPSHOT_MAGIC)?;
    out.write_all(&SNAPSHOT_FORMAT_VERSION.to_le_bytes())?;
    codec::encode_value_to_writer(image, out).map_err(std::io::Error::other)
}

/// Equal states: equal contents, whatever is frozen.
impl PartialEq for Kv {
    fn eq(&self, other: &Kv) -> bool {
        self.applied == other.applied
            && self.sessions.by_id == other.sessions.by_id
            && self.sessions.clock_ms == other.sessions.clock_ms
            && self.sessions.limits == other.sessions.limits
            && self.members == other.members
            && self.removed == other.removed
            && self.incarnations == other.incarnations
            && self.retired == other.retired
            && self.cluster_incarnation == other.cluster_incarnation
            && self.data.sorted() == other.data.sorted()
    }
}

impl Eq for Kv {}

impl Kv {
    /// An empty state.
    pub fn new() -> Kv {
        Kv::default()
    }

    /// The index of the last entry applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Records that entry `index` (of any kind) was applied.
    pub fn set_applied(&mut self, index: u64) {
        assert!(index >= self.applied, "applied index moves back: {} -> {index}", self.applied);
        self.applied = index;
    }

    /// Applies the command at `index`. The replicated clock moves to its stamp first, so a
    /// session idle past the TTL is gone before the command is looked at.
    pub fn apply<B: AsRef<[u8]>>(&mut self, index: u64, command: CommandOf<B>) -> Applied {
        self.sessions.advance_clock(command.leader_time_ms);
        match command.body {
            CommandBodyOf::RegisterSession { limits, .. } => self.register(index, limits),
            CommandBodyOf::RegisterSessionV1 { limits, .. } => self.register(index, limits.into()),
            CommandBodyOf::Write { session_id, seq, op } => {
                Applied::Write(self.write(index, session_id, seq, op.borrowed()))
            }
        }
    }

    /// True when write `seq` of session `session_id` (or a later one) is applied: a retry of
    /// it is answered from the session, whatever else would refuse a new write.
    pub fn write_applied(&self, session_id: u64, seq: u64) -> bool {
        self.sessions.by_id.get(&session_id).is_some_and(|s| seq <= s.seq)
    }

    /// Opens session `index` under `limits`.
    fn register(&mut self, index: u64, limits: SessionLimits) -> Applied {
        self.sessions.limits = limits;
        // A shorter TTL than before takes effect now (and smaller bounds, at the registration).
        self.sessions.advance_clock(0);
        self.sessions.register(index);
        Applied::Registered { session_id: index }
    }

    /// Applies a write of the format before registered sessions: its client id opens a
    /// session on first use, as that format did.
    pub fn apply_legacy(&mut self, index: u64, w: LegacyWrite) -> Result<KvReply, ClientError> {
        if !self.sessions.by_id.contains_key(&w.client_id) {
            self.sessions.register(w.client_id);
        }
        self.write(index, w.client_id, w.seq, w.op.borrowed())
    }

    /// Applies write `seq` of a session at `index`. The write already applied for this
    /// `(session_id, seq)` returns its first reply instead of applying again; an older one is
    /// stale; one in a session this table does not hold (never registered, expired or
    /// evicted) is refused, since whether it was applied before cannot be known.
    fn write(
        &mut self,
        index: u64,
        session_id: u64,
        seq: u64,
        op: OpRef<'_>,
    ) -> Result<KvReply, ClientError> {
        let Some(session) = self.sessions.by_id.get(&session_id) else {
            return Err(ClientError::SessionExpired { session_id });
        };
        if seq <= session.seq {
            return match &session.reply {
                Some(reply) if seq == session.seq => {
                    let reply = reply.clone();
                    // A retry is activity: the session is kept as recently used.
                    self.sessions.record(session_id, seq, reply.clone());
                    Ok(reply)
                }
                _ => Err(ClientError::Stale { seq }),
            };
        }
        let result = match op {
            Op::Put { key, value } => {
                self.data.insert(key, value);
                OpResult::Put
            }
            Op::Delete { key } => OpResult::Delete(self.data.remove(key)),
            Op::Cas { key, expected, new } => {
                let previous = self.data.get(key).cloned();
                let swapped = previous.as_deref() == expected;
                if swapped {
                    self.data.insert(key, new);
                }
                OpResult::Cas { swapped, previous }
            }
            Op::Get { key, .. } => OpResult::Get(self.data.get(key).cloned()),
        };
        let reply = KvReply { index, result };
        self.sessions.record(session_id, seq, reply.clone());
        Ok(reply)
    }

    /// Client sessions held.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The replicated clock sessions expire by (milliseconds since the Unix epoch, as the
    /// leaders stamped their commands).
    pub fn session_clock_ms(&self) -> u64 {
        self.sessions.clock_ms
    }

    /// Reads a key.
    pub fn get(&self, key: &[u8]) -> Option<&Vec<u8>> {
        self.data.get(key)
    }

    /// A hash of every key and value (sorted by key, each length-prefixed; 64-bit FNV-1a)
    /// and the number of keys: two members at the same applied index hold the same data
    /// exactly when these agree (`raftctl hashkv`). It walks the whole map.
    pub fn hash(&self) -> (u64, u64) {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h ^= b as u64;
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        let entries = self.data.sorted();
        for (key, value) in &entries {
            eat(&(key.len() as u64).to_le_bytes());
            eat(key);
            eat(&(value.len() as u64).to_le_bytes());
            eat(value);
        }
        (h, entries.len() as u64)
    }

    /// Records a member's peer address. Adding a removed id again (an operator re-adding a
    /// wiped node) lifts its tombstone.
    pub fn set_member(&mut self, id: u64, peer_addr: String) {
        self.removed.remove(&id);
        self.members.insert(id, peer_addr);
    }

    /// Records the data dir incarnation of member `id` (None: forget it, as when the member is
    /// added again).
    pub fn set_incarnation(&mut self, id: u64, incarnation: Option<u64>) {
        match incarnation {
            Some(incarnation) => self.incarnations.insert(id, incarnation),
            None => self.incarnations.remove(&id),
        };
    }

    /// The incarnation recorded for member `id`.
    pub fn incarnation(&self, id: u64) -> Option<u64> {
        self.incarnations.get(&id).copied()
    }

    /// Records the cluster's incarnation (from the bootstrap entries).
    pub fn set_cluster_incarnation(&mut self, cluster_incarnation: u64) {
        self.cluster_incarnation = cluster_incarnation;
    }

    /// The cluster's incarnation (0: bootstrapped before incarnations, or not known yet).
    pub fn cluster_incarnation(&self) -> u64 {
        self.cluster_incarnation
    }

    /// Forgets a removed member and remembers that it was removed, and its data dir for good.
    pub fn remove_member(&mut self, id: u64) {
        self.members.remove(&id);
        if let Some(incarnation) = self.incarnations.remove(&id) {
            self.retired.insert((id, incarnation));
        }
        self.removed.insert(id);
    }

    /// True for the data dir `incarnation` of node `id` once that member was removed.
    pub fn is_retired(&self, id: u64, incarnation: u64) -> bool {
        self.retired.contains(&(id, incarnation))
    }

    /// True for a node removed from the cluster.
    pub fn is_removed(&self, id: u64) -> bool {
        self.removed.contains(&id)
    }

    /// Forgets every member, removed id and incarnation, for a new cluster started from this
    /// state (`raftd --restore`): the new members are then recorded.
    pub fn forget_membership(&mut self) {
        self.members.clear();
        self.removed.clear();
        self.incarnations.clear();
        self.retired.clear();
        self.cluster_incarnation = 0;
    }

    /// The address book.
    pub fn members(&self) -> &BTreeMap<u64, String> {
        &self.members
    }

    /// The state as snapshot bytes: [`SNAPSHOT_MAGIC`], the format version, the state (keys
    /// in order, so that equal states give equal bytes).
    pub fn snapshot(&self) -> Vec<u8> {
        encode_image(&ImageRef {
            data: self.data.sorted(),
            sessions: &self.sessions.by_id,
            members: &self.members,
            removed: &self.removed,
            applied: self.applied,
            incarnations: &self.incarnations,
            cluster_incarnation: self.cluster_incarnation,
            session_clock_ms: self.sessions.clock_ms,
            session_limits: self.sessions.limits,
            retired: &self.retired,
        })
    }

    /// Freezes the state for a snapshot to be encoded elsewhere ([`FrozenKv::encode`]); until
    /// [`Kv::thaw`], writes are kept aside instead of changing the frozen map, so freezing
    /// costs no copy of the data. One snapshot at a time.
    pub fn freeze(&mut self) -> FrozenKv {
        FrozenKv {
            data: self.data.freeze(),
            sessions: self.sessions.by_id.clone(),
            session_clock_ms: self.sessions.clock_ms,
            session_limits: self.sessions.limits,
            members: self.members.clone(),
            removed: self.removed.clone(),
            incarnations: self.incarnations.clone(),
            retired: self.retired.clone(),
            cluster_incarnation: self.cluster_incarnation,
            applied: self.applied,
        }
    }

    /// Ends a [`Kv::freeze`] once its snapshot is encoded: writes change the map again, and the
    /// writes kept aside are folded in by [`Kv::fold_in`].
    pub fn thaw(&mut self) {
        self.data.thaw();
    }

    /// Folds up to `budget` of the writes kept aside during a snapshot into the map; the event
    /// loop calls it once per iteration, so that no iteration does it all.
    pub fn fold_in(&mut self, budget: usize) {
        self.data.fold_in(budget);
    }

    /// True while writes kept aside during a snapshot remain to be folded in.
    pub fn folding(&self) -> bool {
        self.data.folding()
    }

    /// The state from snapshot bytes.
    pub fn restore(bytes: &[u8]) -> Result<Kv, RestoreError> {
        if bytes.len() < SNAPSHOT_HEADER_SIZE || &bytes[..SNAPSHOT_MAGIC.len()] != SNAPSHOT_MAGIC {
            return Err(RestoreError::NotASnapshot);
        }
        let version = u32::from_le_bytes(
            bytes[SNAPSHOT_MAGIC.len()..SNAPSHOT_HEADER_SIZE].try_into().expect("4 bytes"),
        );
        let body = &bytes[SNAPSHOT_HEADER_SIZE..];
        // Migration from versions 1 and 2: their sessions were aged by applied entries; they
        // are kept, as last active at time 0, so the first command stamped with a leader's
        // clock expires them (their clients, from before registered sessions, are told
        // SessionExpired rather than risk a duplicate).
        let old_sessions = |sessions: BTreeMap<u64, SessionV2>| -> BTreeMap<u64, Session> {
            sessions
                .into_iter()
                .map(|(id, s)| {
                    (id, Session { seq: s.seq, reply: Some(s.reply), last_active_ms: 0 })
                })
                .collect()
        };
        let image: Image = match version {
            SNAPSHOT_FORMAT_VERSION => codec::decode_payload(body)?,
            4 => match codec::decode_payload::<Image>(body) {
                Ok(image) => image,
                Err(_) => {
                    let old: ImageV4 = codec::decode_payload(body)?;
                    Image {
                        data: old.data,
                        sessions: old.sessions,
                        members: old.members,
                        removed: old.removed,
                        applied: old.applied,
                        incarnations: old.incarnations,
                        cluster_incarnation: old.cluster_incarnation,
                        session_clock_ms: old.session_clock_ms,
                        session_limits: old.session_limits,
                        retired: BTreeSet::new(),
                    }
                }
            },
            3 => {
                let old: ImageV3 = codec::decode_payload(body)?;
                Image {
                    data: old.data,
                    sessions: old.sessions,
                    members: old.members,
                    removed: old.removed,
                    applied: old.applied,
                    incarnations: old.incarnations,
                    cluster_incarnation: old.cluster_incarnation,
                    session_clock_ms: old.session_clock_ms,
                    session_limits: old.session_limits.into(),
                    retired: BTreeSet::new(),
                }
            }
            2 => {
                let old: ImageV2 = codec::decode_payload(body)?;
                Image {
                    data: old.data,
                    sessions: old_sessions(old.sessions),
                    members: old.members,
                    removed: old.removed,
                    applied: old.applied,
                    incarnations: old.incarnations,
                    cluster_incarnation: old.cluster_incarnation,
                    session_clock_ms: 0,
                    session_limits: SessionLimits::default(),
                    retired: BTreeSet::new(),
                }
            }
            // Version 1 had no incarnations either; none are recorded, and each member's is
            // recorded when the leader next hears from it.
            1 => {
                let old: ImageV1 = codec::decode_payload(body)?;
                Image {
                    data: old.data,
                    sessions: old_sessions(old.sessions),
                    members: old.members,
                    removed: old.removed,
                    applied: old.applied,
                    incarnations: BTreeMap::new(),
                    cluster_incarnation: 0,
                    session_clock_ms: 0,
                    session_limits: SessionLimits::default(),
                    retired: BTreeSet::new(),
                }
            }
            found => {
                return Err(RestoreError::Version { found, supported: SNAPSHOT_FORMAT_VERSION })
            }
        };
        Ok(Kv {
            data: Data { base: Arc::new(image.data), overlay: HashMap::new(), frozen: false },
            sessions: Sessions::from_parts(
                image.sessions,
                image.session_clock_ms,
                image.session_limits,
            ),
            members: image.members,
            removed: image.removed,
            incarnations: image.incarnations,
            retired: image.retired,
            cluster_incarnation: image.cluster_incarnation,
            applied: image.applied,
        })
    }
}

/// The first bytes of every state machine snapshot.
pub const SNAPSHOT_MAGIC: &[u8; 4] = b"RKV\0";
/// The snapshot format this build writes and reads. Bump it (and add a migration from the
/// previous one to [`Kv::restore`]) whenever [`Kv`]'s encoding changes.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 5;
const SNAPSHOT_HEADER_SIZE: usize = SNAPSHOT_MAGIC.len() + 4;

/// Why snapshot bytes do not restore.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The bytes do not start with [`SNAPSHOT_MAGIC`] (from a raftd before format versions,
    /// or not a snapshot at all).
    #[error("not a raftd state machine snapshot (no format header)")]
    NotASnapshot,
    /// Written by a build with another format.
    #[error("snapshot format version {found}; this build reads version {supported}")]
    Version {
        /// The version in the snapshot.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The header is right but the state does not decode.
    #[error("the state does not decode: {0}")]
    Decode(#[from] codec::Error),
}

/// Keys and values are byte strings: encoded as such (one copy), not byte by byte.
mod bytes_map {
    use std::collections::HashMap;
    use std::fmt;

    use serde::de::{MapAccess, Visitor};
    use serde::ser::SerializeMap;
    use serde::{Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    pub fn serialize<S: Serializer>(
        sorted: &[(&Vec<u8>, &Vec<u8>)],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_map(Some(sorted.len()))?;
        for (k, v) in sorted {
            out.serialize_entry(Bytes::new(k), Bytes::new(v))?;
        }
        out.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<HashMap<Vec<u8>, Vec<u8>>, D::Error> {
        struct MapVisitor;
        impl<'de> Visitor<'de> for MapVisitor {
            type Value = HashMap<Vec<u8>, Vec<u8>>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of byte strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut map = HashMap::with_capacity(access.size_hint().unwrap_or(0).min(1 << 20));
                while let Some((k, v)) = access.next_entry::<ByteBuf, ByteBuf>()? {
                    map.insert(k.into_vec(), v.into_vec());
                }
                Ok(map)
            }
        }
        deserializer.deserialize_map(MapVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write of session `session_id`, stamped at time 0.
    fn write(session_id: u64, seq: u64, op: Op) -> Command {
        Command { leader_time_ms: 0, body: CommandBody::Write { session_id, seq, op } }
    }

    fn put(session_id: u64, seq: u64, key: &str, value: &str) -> Command {
        write(session_id, seq, Op::Put { key: key.into(), value: value.into() })
    }

    fn register_at(leader_time_ms: u64, limits: SessionLimits) -> Command {
        let body = CommandBody::RegisterSession { token: vec![1; 8], limits };
        Command { leader_time_ms, body }
    }

    fn at(leader_time_ms: u64, command: Command) -> Command {
        Command { leader_time_ms, ..command }
    }

    /// A state machine holding the sessions `ids`, opened directly.
    fn with_sessions(ids: &[u64]) -> Kv {
        let mut kv = Kv::new();
        for &id in ids {
            kv.sessions.register(id);
        }
        kv
    }

    trait ApplyWrite {
        fn apply_write(&mut self, index: u64, command: Command) -> Result<KvReply, ClientError>;
    }

    impl ApplyWrite for Kv {
        fn apply_write(&mut self, index: u64, command: Command) -> Result<KvReply, ClientError> {
            match self.apply(index, command) {
                Applied::Write(result) => result,
                other => panic!("not a write: {other:?}"),
            }
        }
    }

    #[test]
    fn operations_apply_and_report_their_index() {
        let mut kv = with_sessions(&[1]);
        assert_eq!(
            kv.apply_write(1, put(1, 1, "a", "1")).unwrap(),
            KvReply { index: 1, result: OpResult::Put }
        );
        let cas = |seq, expected: Option<&str>, new: &str| {
            let op =
                Op::Cas { key: b"a".to_vec(), expected: expected.map(Into::into), new: new.into() };
            write(1, seq, op)
        };
        assert_eq!(
            kv.apply_write(2, cas(2, Some("0"), "2")).unwrap().result,
            OpResult::Cas { swapped: false, previous: Some(b"1".to_vec()) }
        );
        assert_eq!(
            kv.apply_write(3, cas(3, Some("1"), "2")).unwrap().result,
            OpResult::Cas { swapped: true, previous: Some(b"1".to_vec()) }
        );
        assert_eq!(kv.get(b"a"), Some(&b"2".to_vec()));
        let del = write(1, 4, Op::Delete { key: b"a".to_vec() });
        assert_eq!(kv.apply_write(4, del).unwrap().result, OpResult::Delete(true));
        assert_eq!(kv.get(b"a"), None);
    }

    #[test]
    fn a_retried_write_applies_once_and_older_ones_are_stale() {
        let mut kv = with_sessions(&[7, 8]);
        let first = kv.apply_write(5, put(7, 1, "k", "v1")).unwrap();
        kv.apply_write(6, put(8, 1, "k", "other")).unwrap();
        // The same write again (a retry after a leader change) returns the first reply.
        assert_eq!(kv.apply_write(9, put(7, 1, "k", "v1")).unwrap(), first);
        assert_eq!(kv.get(b"k"), Some(&b"other".to_vec()), "not applied twice");
        kv.apply_write(10, put(7, 2, "k", "v2")).unwrap();
        assert_eq!(kv.apply_write(11, put(7, 1, "k", "v1")), Err(ClientError::Stale { seq: 1 }));
    }

    #[test]
    fn a_registered_session_is_named_by_its_index_and_takes_writes() {
        let mut kv = Kv::new();
        let limits = SessionLimits::default();
        assert_eq!(kv.apply(4, register_at(1_000, limits)), Applied::Registered { session_id: 4 });
        assert_eq!(kv.session_count(), 1);
        assert_eq!(kv.session_clock_ms(), 1_000);
        let reply = kv.apply_write(5, at(1_001, put(4, 1, "k", "v"))).unwrap();
        assert_eq!(reply, KvReply { index: 5, result: OpResult::Put });
    }

    #[test]
    fn a_write_in_a_session_never_registered_is_refused_and_not_applied() {
        let mut kv = Kv::new();
        let refused = kv.apply_write(3, put(99, 1, "k", "v"));
        assert_eq!(refused, Err(ClientError::SessionExpired { session_id: 99 }));
        assert_eq!(kv.get(b"k"), None);
        assert_eq!(kv.session_count(), 0, "a refused write opens no session");
    }

    /// Raft thesis §6.3: a retry whose session was evicted must not be applied again. With
    /// sessions forgotten silently (the format before registration: a client id opened a
    /// session on first use), the retry below applied a second time and undid a later
    /// acknowledged write.
    #[test]
    fn a_retry_after_its_session_was_evicted_is_refused_not_applied_twice() {
        let mut kv = Kv::new();
        let limits = SessionLimits {
            max_sessions: 2,
            ttl_ms: SESSION_TTL_MS_DEFAULT,
            ..SessionLimits::default()
        };
        let Applied::Registered { session_id: a } = kv.apply(1, register_at(0, limits)) else {
            panic!("registers")
        };
        kv.apply_write(2, put(a, 1, "x", "1")).unwrap();
        // Another client overwrites x, acknowledged.
        let Applied::Registered { session_id: b } = kv.apply(3, register_at(0, limits)) else {
            panic!("registers")
        };
        kv.apply_write(4, put(b, 1, "x", "2")).unwrap();
        // Two more sessions evict the least recently active, a.
        kv.apply(5, register_at(0, limits));
        kv.apply(6, register_at(0, limits));
        assert_eq!(kv.session_count(), 2);
        // a's write retried (its reply was lost): refused, and x keeps the later write.
        let retry = kv.apply_write(7, put(a, 1, "x", "1"));
        assert_eq!(retry, Err(ClientError::SessionExpired { session_id: a }));
        assert_eq!(kv.get(b"x"), Some(&b"2".to_vec()), "the acknowledged later write stands");
    }

    #[test]
    fn sessions_expire_by_the_replicated_clock_not_by_entries() {
        let mut kv = Kv::new();
        let limits = SessionLimits { max_sessions: 10, ttl_ms: 60_000, ..SessionLimits::default() };
        let Applied::Registered { session_id: idle } = kv.apply(1, register_at(1_000, limits))
        else {
            panic!("registers")
        };
        let Applied::Registered { session_id: busy } = kv.apply(2, register_at(1_000, limits))
        else {
            panic!("registers")
        };
        // Thousands of entries in little time expire nothing (entries are not time).
        for i in 0..5_000u64 {
            kv.apply_write(3 + i, at(1_000 + i / 100, put(busy, i + 1, "k", "v"))).unwrap();
        }
        assert_eq!(kv.session_count(), 2);
        // Exactly the TTL after its last activity: still held.
        kv.apply_write(6_000, at(61_000, put(busy, 5_001, "k", "v"))).unwrap();
        assert_eq!(kv.session_count(), 2);
        // Past it: idle is gone, busy (active at 61 s) stays.
        kv.apply_write(6_001, at(61_001, put(busy, 5_002, "k", "v"))).unwrap();
        assert_eq!(kv.session_count(), 1);
        let late = kv.apply_write(6_002, at(61_002, put(idle, 1, "k", "late")));
        assert_eq!(late, Err(ClientError::SessionExpired { session_id: idle }));
        // A leader whose clock is behind does not move the replicated clock back.
        kv.apply_write(6_003, at(5, put(busy, 5_003, "k", "v"))).unwrap();
        assert_eq!(kv.session_clock_ms(), 61_002);
    }

    /// The table with its appended age entries keeps exactly the sessions a plain ordered
    /// set of `(last_active_ms, id)` keeps, over random registrations, writes with replies of
    /// random sizes and clock steps (ties at one millisecond included), and keeps one age
    /// entry per session and the sum of its replies' bytes.
    #[test]
    fn sessions_kept_lazily_match_an_ordered_set() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for round in 0..20 {
            let limits = SessionLimits {
                max_sessions: 1 + next(12),
                ttl_ms: 1 + next(50),
                max_reply_bytes: next(60),
            };
            let mut table = Sessions { limits, ..Sessions::default() };
            // The model: id -> (last activity, reply bytes), evicting by a scan for the least
            // `(last activity, id)`.
            let mut model: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
            let mut clock = 0u64;
            for step in 0..2_000u64 {
                clock += next(3); // 0: several events in one millisecond
                table.advance_clock(clock);
                model.retain(|_, &mut (t, _)| clock - t <= limits.ttl_ms);
                let open: Vec<u64> = model.keys().copied().collect();
                if open.is_empty() || next(4) == 0 {
                    let id = 1_000 * round + step + 1;
                    table.register(id);
                    model.insert(id, (clock, 0));
                } else {
                    let id = open[next(open.len() as u64) as usize];
                    let bytes = next(4) * next(10); // often none, as a put's reply
                    let previous = (bytes > 0).then(|| vec![b'p'; bytes as usize]);
                    let result = OpResult::Cas { swapped: true, previous };
                    table.record(id, step, KvReply { index: step, result });
                    model.insert(id, (clock, bytes));
                }
                while model.len() as u64 > limits.max_sessions
                    || model.values().map(|&(_, b)| b).sum::<u64>() > limits.max_reply_bytes
                {
                    let (&oldest, _) =
                        model.iter().min_by_key(|&(&id, &(t, _))| (t, id)).expect("not empty");
                    model.remove(&oldest);
                }
                let held: BTreeMap<u64, (u64, u64)> = table
                    .by_id
                    .iter()
                    .map(|(&id, s)| (id, (s.last_active_ms, reply_bytes(&s.reply))))
                    .collect();
                assert_eq!(held, model, "round {round} step {step}");
                assert_eq!(table.by_age.len(), table.by_id.len());
                assert_eq!(table.reply_bytes, model.values().map(|&(_, b)| b).sum::<u64>());
            }
        }
    }

    /// A command entry is told from a legacy write by its first byte, from an older build by
    /// its context, and no legacy write is taken for a command.
    #[test]
    fn entry_formats_are_told_apart_by_the_command_tag() {
        let command = put(7, 3, "k", "v");
        let mut data = Vec::new();
        encode_command(&command, &mut data).unwrap();
        let EntryPayload::Command(bytes) = EntryPayload::of(&data, &[]) else {
            panic!("a tagged entry is a command")
        };
        assert_eq!(codec::decode_payload::<Command>(bytes).unwrap(), command);
        let untagged = codec::encode_value(&command).unwrap();
        assert_eq!(
            EntryPayload::of(&untagged, COMMAND_CONTEXT_V1),
            EntryPayload::Command(&untagged[..])
        );
        for client_id in [0, 1, 250, 251, 65_535, 65_536, u32::MAX as u64, u64::MAX] {
            let op = Op::Put { key: b"k".to_vec(), value: b"v".to_vec() };
            let legacy = codec::encode_value(&LegacyWrite { client_id, seq: 1, op }).unwrap();
            assert_eq!(EntryPayload::of(&legacy, &[]), EntryPayload::Legacy(&legacy[..]));
        }
    }

    #[test]
    fn sessions_past_the_count_limit_evict_the_least_recently_active() {
        let mut kv = Kv::new();
        let limits = SessionLimits { max_sessions: 3, ttl_ms: 60_000, ..SessionLimits::default() };
        for index in 1..=3 {
            kv.apply(index, register_at(index, limits));
        }
        // Session 1 writes, so 2 is now the least recently active.
        kv.apply_write(4, at(4, put(1, 1, "k", "v"))).unwrap();
        kv.apply(5, register_at(5, limits));
        assert_eq!(kv.session_count(), 3);
        assert!(kv.apply_write(6, at(6, put(1, 2, "k", "v"))).is_ok());
        let evicted = kv.apply_write(7, at(7, put(2, 1, "k", "v")));
        assert_eq!(evicted, Err(ClientError::SessionExpired { session_id: 2 }));
        // A registration with a smaller limit shrinks the table at once.
        let smaller = SessionLimits { max_sessions: 1, ttl_ms: 60_000, ..SessionLimits::default() };
        kv.apply(8, register_at(8, smaller));
        assert_eq!(kv.session_count(), 1);
    }

    #[test]
    fn every_node_keeps_the_same_sessions_and_snapshots_keep_the_clock() {
        let limits = SessionLimits { max_sessions: 4, ttl_ms: 1_000, ..SessionLimits::default() };
        let mut commands = Vec::new();
        for i in 1..=40u64 {
            if i % 5 == 1 {
                commands.push(register_at(i * 100, limits));
            } else {
                let session = (i / 5) * 5 + 1;
                commands.push(at(i * 100, put(session, i % 5, "k", &i.to_string())));
            }
        }
        let run = |commands: &[Command]| {
            let mut kv = Kv::new();
            for (i, c) in commands.iter().enumerate() {
                kv.apply(i as u64 + 1, c.clone());
                kv.set_applied(i as u64 + 1);
            }
            kv
        };
        let (a, b) = (run(&commands), run(&commands));
        assert_eq!(a, b);
        assert_eq!(a.snapshot(), b.snapshot());
        let restored = Kv::restore(&a.snapshot()).unwrap();
        assert_eq!(restored, a);
        assert_eq!(restored.session_clock_ms(), 4_000);
        assert_eq!(restored.sessions.limits, limits);
        // The restored table expires by the same rule: one more stamp far ahead empties it.
        let mut restored = restored;
        restored.apply(41, register_at(10_000, limits));
        assert_eq!(restored.session_count(), 1);
    }

    #[test]
    fn legacy_writes_open_their_client_session_on_first_use() {
        let mut kv = Kv::new();
        let w = |seq, value: &str| LegacyWrite {
            client_id: 77,
            seq,
            op: Op::Put { key: b"k".to_vec(), value: value.into() },
        };
        let first = kv.apply_legacy(1, w(1, "a")).unwrap();
        assert_eq!(kv.apply_legacy(2, w(1, "a")).unwrap(), first, "deduplicated as before");
        kv.apply_legacy(3, w(2, "b")).unwrap();
        assert_eq!(kv.get(b"k"), Some(&b"b".to_vec()));
    }

    #[test]
    fn snapshot_round_trips_everything() {
        let mut kv = with_sessions(&[1]);
        kv.apply_write(1, put(1, 1, "a", "1")).unwrap();
        kv.set_member(2, "127.0.0.1:7002".into());
        kv.set_applied(1);
        let restored = Kv::restore(&kv.snapshot()).unwrap();
        assert_eq!(restored, kv);
        assert!(Kv::restore(b"garbage").is_err());
    }

    #[test]
    fn snapshots_carry_their_format_version_and_other_versions_are_refused() {
        let mut kv = with_sessions(&[1]);
        kv.apply_write(1, put(1, 1, "a", "1")).unwrap();
        let mut bytes = kv.snapshot();
        assert_eq!(&bytes[..4], SNAPSHOT_MAGIC);
        bytes[4] = 9;
        let e = Kv::restore(&bytes).unwrap_err();
        assert!(matches!(e, RestoreError::Version { found: 9, supported: 5 }), "{e}");
        // A snapshot from before format headers: the bare encoded state.
        let bare = kv.snapshot()[SNAPSHOT_HEADER_SIZE..].to_vec();
        assert!(matches!(Kv::restore(&bare), Err(RestoreError::NotASnapshot)));
        let mut truncated = kv.snapshot();
        truncated.pop();
        assert!(matches!(Kv::restore(&truncated), Err(RestoreError::Decode(_))));
    }

    #[test]
    fn a_version_1_snapshot_restores_with_no_incarnation_recorded() {
        #[derive(Serialize)]
        struct V1<'a> {
            #[serde(serialize_with = "bytes_map::serialize")]
            data: Vec<(&'a Vec<u8>, &'a Vec<u8>)>,
            sessions: BTreeMap<u64, SessionV2>,
            members: BTreeMap<u64, String>,
            removed: BTreeSet<u64>,
            applied: u64,
        }
        let (k, v) = (b"a".to_vec(), b"1".to_vec());
        let image = V1 {
            data: vec![(&k, &v)],
            sessions: BTreeMap::new(),
            members: [(2, "127.0.0.1:7002".to_string())].into(),
            removed: BTreeSet::new(),
            applied: 7,
        };
        let mut bytes = SNAPSHOT_MAGIC.to_vec();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        codec::encode_value_into(&image, &mut bytes).unwrap();
        let kv = Kv::restore(&bytes).unwrap();
        assert_eq!((kv.get(b"a"), kv.applied()), (Some(&v), 7));
        assert_eq!(kv.members().len(), 1);
        assert_eq!((kv.incarnation(2), kv.cluster_incarnation()), (None, 0));
        // And the incarnations survive a snapshot of the current version.
        let mut kv = kv;
        kv.set_incarnation(2, Some(0xabc));
        kv.set_cluster_incarnation(0xdef);
        assert_eq!(Kv::restore(&kv.snapshot()).unwrap(), kv);
    }

    /// A registration as builds before the bound on reply bytes wrote it decodes and opens a
    /// session under the default bound; one of this build carries its own bound.
    #[test]
    fn registrations_of_the_format_before_reply_bytes_still_apply() {
        #[derive(Serialize)]
        enum OldBody {
            RegisterSession {
                #[serde(with = "serde_bytes")]
                token: Vec<u8>,
                limits: SessionLimitsV1,
            },
        }
        #[derive(Serialize)]
        struct OldCommand {
            leader_time_ms: u64,
            body: OldBody,
        }
        let limits = SessionLimitsV1 { max_sessions: 7, ttl_ms: 9_000 };
        let old = OldCommand {
            leader_time_ms: 5,
            body: OldBody::RegisterSession { token: vec![3; 8], limits },
        };
        let bytes = codec::encode_value(&old).unwrap();
        let command: Command = codec::decode_payload(&bytes).unwrap();
        assert_eq!(command.body.payload_len(), 8);
        let mut kv = Kv::new();
        assert_eq!(kv.apply(4, command), Applied::Registered { session_id: 4 });
        let held = kv.sessions.limits;
        assert_eq!((held.max_sessions, held.ttl_ms), (7, 9_000));
        assert_eq!(held.max_reply_bytes, SESSION_REPLY_BYTES_MAX_DEFAULT);
        let limits = SessionLimits { max_reply_bytes: 11, ..SessionLimits::default() };
        let bytes = codec::encode_value(&register_at(6, limits)).unwrap();
        kv.apply(6, codec::decode_payload::<Command>(&bytes).unwrap());
        assert_eq!(kv.sessions.limits, limits);
    }

    /// Issue 16: a compare-and-swap's reply holds the value it replaced, and each session
    /// keeps its last reply; bounded by count alone, the table could hold a request's worth
    /// of bytes per session. Past `max_reply_bytes` the least recently active sessions are
    /// forgotten: their retries are refused SessionExpired, never applied twice.
    #[test]
    fn sessions_holding_more_reply_bytes_than_the_bound_are_forgotten_oldest_first() {
        let limits = SessionLimits { max_reply_bytes: 2_500, ..SessionLimits::default() };
        let mut kv = Kv::new();
        let mut sessions = Vec::new();
        for index in 1..=4 {
            let Applied::Registered { session_id } = kv.apply(index, register_at(index, limits))
            else {
                panic!("a registration registers");
            };
            sessions.push(session_id);
        }
        // Each session swaps out a 1,000-byte value: its reply holds it.
        let cas = |session_id, leader_time_ms, old: u8, new: u8| Command {
            leader_time_ms,
            body: CommandBody::Write {
                session_id,
                seq: 1,
                op: Op::Cas {
                    key: b"k".to_vec(),
                    expected: Some(vec![old; 1_000]),
                    new: vec![new; 1_000],
                },
            },
        };
        let Applied::Write(Ok(_)) = kv.apply(
            5,
            Command {
                leader_time_ms: 5,
                body: CommandBody::Write {
                    session_id: sessions[3],
                    seq: 1,
                    op: Op::Put { key: b"k".to_vec(), value: vec![0; 1_000] },
                },
            },
        ) else {
            panic!("the first put applies")
        };
        for (i, &session_id) in sessions[..3].iter().enumerate() {
            let at = 6 + i as u64;
            let applied = kv.apply(at, cas(session_id, at, i as u8, i as u8 + 1));
            let Applied::Write(Ok(KvReply { result: OpResult::Cas { swapped, .. }, .. })) = applied
            else {
                panic!("{applied:?}")
            };
            assert!(swapped);
        }
        assert!(kv.sessions.reply_bytes <= 2_500, "{} bytes held", kv.sessions.reply_bytes);
        // Three replies of 1,000 bytes do not fit: the first swap's session is forgotten, and
        // its retry refused; the last two are answered again from their replies.
        let retry = kv.apply(9, cas(sessions[0], 9, 0, 1));
        let refused = Applied::Write(Err(ClientError::SessionExpired { session_id: sessions[0] }));
        assert_eq!(retry, refused);
        assert_eq!(kv.get(b"k"), Some(&vec![3; 1_000]));
        for (i, &session_id) in sessions[1..3].iter().enumerate() {
            let i = i as u8 + 1;
            let Applied::Write(Ok(KvReply { result: OpResult::Cas { swapped, previous }, .. })) =
                kv.apply(10, cas(session_id, 10, i, i + 1))
            else {
                panic!("a retry of a kept session is answered")
            };
            assert!(swapped && previous == Some(vec![i; 1_000]));
        }
        // A snapshot keeps the count of bytes.
        let restored = Kv::restore(&kv.snapshot()).unwrap();
        assert_eq!(restored.sessions.reply_bytes, kv.sessions.reply_bytes);
    }

    /// A removed member's data dir is retired for good: once its id is added back (on a new
    /// disk), that incarnation is still not the member's, and the state says so after a
    /// snapshot too.
    #[test]
    fn a_removed_members_incarnation_is_retired_for_good() {
        let mut kv = Kv::new();
        kv.set_member(2, "10.0.0.2:7001".into());
        kv.set_incarnation(2, Some(0xa));
        assert!(!kv.is_retired(2, 0xa));
        kv.remove_member(2);
        assert!(kv.is_removed(2) && kv.is_retired(2, 0xa));
        // Added back: no longer removed, its new incarnation not yet known, the old one retired.
        kv.set_member(2, "10.0.0.2:7001".into());
        kv.set_incarnation(2, None);
        assert!(!kv.is_removed(2) && kv.is_retired(2, 0xa) && !kv.is_retired(2, 0xb));
        kv.set_incarnation(2, Some(0xb));
        let restored = Kv::restore(&kv.snapshot()).unwrap();
        assert!(restored.is_retired(2, 0xa) && !restored.is_retired(2, 0xb));
        assert_eq!(restored, kv);
        let frozen = Kv::restore(&kv.freeze().encode()).unwrap();
        assert!(frozen.is_retired(2, 0xa));
        kv.thaw();
        // Written as it is encoded (into a snapshot file): the same bytes.
        for i in 0..1000u32 {
            kv.data.insert(format!("k{i}").as_bytes(), &vec![i as u8; i as usize % 300]);
        }
        let encoded = kv.freeze().encode();
        kv.thaw();
        let mut streamed = Vec::new();
        kv.freeze().write_to(&mut streamed).unwrap();
        kv.thaw();
        assert_eq!(streamed, encoded);
        assert_eq!(Kv::restore(&streamed).unwrap(), kv);
        // A member removed before its incarnation was recorded retires nothing.
        kv.remove_member(3);
        assert!(!kv.is_retired(3, 0));
    }

    /// A snapshot of format 3 (before the bound on reply bytes) restores under the default
    /// bound, its sessions and limits kept.
    #[test]
    fn a_version_3_snapshot_restores_with_the_default_reply_bound() {
        #[derive(Serialize)]
        struct V3<'a> {
            #[serde(serialize_with = "bytes_map::serialize")]
            data: Vec<(&'a Vec<u8>, &'a Vec<u8>)>,
            sessions: BTreeMap<u64, Session>,
            members: BTreeMap<u64, String>,
            removed: BTreeSet<u64>,
            applied: u64,
            incarnations: BTreeMap<u64, u64>,
            cluster_incarnation: u64,
            session_clock_ms: u64,
            session_limits: SessionLimitsV1,
        }
        let (k, v) = (b"a".to_vec(), b"1".to_vec());
        let reply = KvReply { index: 3, result: OpResult::Delete(true) };
        let session = Session { seq: 2, reply: Some(reply), last_active_ms: 40 };
        let image = V3 {
            data: vec![(&k, &v)],
            sessions: [(3, session.clone())].into(),
            members: BTreeMap::new(),
            removed: BTreeSet::new(),
            applied: 9,
            incarnations: BTreeMap::new(),
            cluster_incarnation: 4,
            session_clock_ms: 50,
            session_limits: SessionLimitsV1 { max_sessions: 6, ttl_ms: 70 },
        };
        let mut bytes = SNAPSHOT_MAGIC.to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        codec::encode_value_into(&image, &mut bytes).unwrap();
        let kv = Kv::restore(&bytes).unwrap();
        assert_eq!((kv.get(b"a"), kv.applied(), kv.cluster_incarnation()), (Some(&v), 9, 4));
        assert_eq!(kv.sessions.by_id[&3], session);
        let limits = SessionLimits { max_sessions: 6, ttl_ms: 70, max_reply_bytes: 64 << 20 };
        assert_eq!((kv.sessions.limits, kv.session_clock_ms()), (limits, 50));
    }

    /// Both layouts written under format 4 restore: the first (no retired incarnations, as
    /// builds before d840c2a wrote it) and the current one (as builds from d840c2a until the
    /// bump to 5 wrote it under 4).
    #[test]
    fn both_layouts_of_version_4_snapshots_restore() {
        #[derive(Serialize)]
        struct V4<'a> {
            #[serde(serialize_with = "bytes_map::serialize")]
            data: Vec<(&'a Vec<u8>, &'a Vec<u8>)>,
            sessions: BTreeMap<u64, Session>,
            members: BTreeMap<u64, String>,
            removed: BTreeSet<u64>,
            applied: u64,
            incarnations: BTreeMap<u64, u64>,
            cluster_incarnation: u64,
            session_clock_ms: u64,
            session_limits: SessionLimits,
        }
        let (k, v) = (b"a".to_vec(), b"1".to_vec());
        let limits = SessionLimits { max_sessions: 6, ttl_ms: 70, max_reply_bytes: 1 << 20 };
        let image = V4 {
            data: vec![(&k, &v)],
            sessions: BTreeMap::new(),
            members: [(2, "10.0.0.2:7001".to_string())].into(),
            removed: [3].into(),
            applied: 9,
            incarnations: [(2, 22)].into(),
            cluster_incarnation: 4,
            session_clock_ms: 50,
            session_limits: limits,
        };
        let mut first = SNAPSHOT_MAGIC.to_vec();
        first.extend_from_slice(&4u32.to_le_bytes());
        codec::encode_value_into(&image, &mut first).unwrap();
        let kv = Kv::restore(&first).unwrap();
        assert_eq!((kv.get(b"a"), kv.applied(), kv.cluster_incarnation()), (Some(&v), 9, 4));
        assert_eq!((kv.incarnation(2), kv.is_removed(3)), (Some(22), true));
        assert_eq!((kv.sessions.limits, kv.session_clock_ms()), (limits, 50));
        assert!(kv.retired.is_empty());

        let mut kv = kv;
        kv.incarnations.insert(3, 33);
        kv.remove_member(3);
        let mut second = kv.snapshot();
        second[SNAPSHOT_MAGIC.len()..SNAPSHOT_HEADER_SIZE].copy_from_slice(&4u32.to_le_bytes());
        let restored = Kv::restore(&second).unwrap();
        assert!(restored.is_retired(3, 33));
        assert!(restored == kv);
    }

    #[test]
    fn old_member_contexts_still_decode() {
        #[derive(Serialize)]
        struct V1 {
            peer_addr: Option<String>,
            request_token: u64,
        }
        let old =
            codec::encode_value(&V1 { peer_addr: Some("a:1".into()), request_token: 5 }).unwrap();
        let context = MemberContext::decode(&old).unwrap();
        assert_eq!((context.peer_addr.as_deref(), context.request_token), (Some("a:1"), 5));
        assert_eq!(context.incarnation, None);
        let new = MemberContext { incarnation: Some(9), ..context.clone() };
        assert_eq!(MemberContext::decode(&codec::encode_value(&new).unwrap()), Some(new));
        assert_eq!(MemberContext::decode(b"\xff"), None);
    }

    #[test]
    fn equal_states_give_equal_snapshot_bytes_whatever_the_insertion_order() {
        let (mut a, mut b) = (with_sessions(&[1]), with_sessions(&[1]));
        for i in 0..500u64 {
            a.apply_write(i + 1, put(1, i + 1, &format!("k{i}"), "v")).unwrap();
        }
        for i in (0..500u64).rev() {
            b.apply_write(500 - i, put(1, 500 - i, &format!("k{i}"), "v")).unwrap();
        }
        b.sessions = a.sessions.clone();
        assert_eq!(a, b);
        assert_eq!(a.snapshot(), b.snapshot());
    }

    #[test]
    fn the_data_hash_follows_every_key_and_value_and_not_the_overlay() {
        let mut a = with_sessions(&[1]);
        let mut b = with_sessions(&[1]);
        a.apply_write(1, put(1, 1, "x", "1")).unwrap();
        a.apply_write(2, put(1, 2, "y", "2")).unwrap();
        // The same data written in another order, partly while frozen.
        b.apply_write(1, put(1, 1, "y", "2")).unwrap();
        let _frozen = b.freeze();
        b.apply_write(2, put(1, 2, "x", "1")).unwrap();
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.hash().1, 2);
        b.thaw();
        b.fold_in(usize::MAX);
        assert_eq!(a.hash(), b.hash());
        // One value differs, or a key and value split differently: the hash differs.
        b.apply_write(3, put(1, 3, "x", "9")).unwrap();
        assert_ne!(a.hash(), b.hash());
        let mut c = with_sessions(&[1]);
        c.apply_write(1, put(1, 1, "xy", "")).unwrap();
        let mut d = with_sessions(&[1]);
        d.apply_write(1, put(1, 1, "x", "y")).unwrap();
        assert_ne!(c.hash(), d.hash());
    }

    #[test]
    fn a_frozen_state_snapshots_as_it_was_while_writes_go_on() {
        let mut kv = with_sessions(&[1]);
        for i in 0..100u64 {
            kv.apply_write(i + 1, put(1, i + 1, &format!("k{i}"), "old")).unwrap();
        }
        kv.set_applied(100);
        let expected = kv.snapshot();
        let frozen = kv.freeze();
        // Writes while frozen: an overwrite, a delete, a new key, a delete of a new key.
        kv.apply_write(101, put(1, 101, "k1", "new")).unwrap();
        let del = |seq, key: &str| write(1, seq, Op::Delete { key: key.into() });
        assert_eq!(kv.apply_write(102, del(102, "k2")).unwrap().result, OpResult::Delete(true));
        assert_eq!(kv.apply_write(103, del(103, "k2")).unwrap().result, OpResult::Delete(false));
        kv.apply_write(104, put(1, 104, "fresh", "v")).unwrap();
        kv.apply_write(105, put(1, 105, "gone", "v")).unwrap();
        kv.apply_write(106, del(106, "gone")).unwrap();
        kv.set_applied(106);
        assert_eq!(kv.get(b"k1"), Some(&b"new".to_vec()), "reads see writes made while frozen");
        assert_eq!(kv.get(b"k2"), None);
        assert_eq!(kv.get(b"k3"), Some(&b"old".to_vec()), "and the frozen map beneath");
        let during = kv.snapshot();
        // The frozen image encodes on another thread, as it was at index 100.
        let image = std::thread::spawn(move || frozen.encode()).join().unwrap();
        assert_eq!(image, expected);
        let before_thaw = kv.clone();
        kv.thaw();
        assert!(kv.folding());
        assert_eq!(kv, before_thaw, "thawing changes nothing visible");
        // Thawed, writes go to the map while the overlay is folded in a slice at a time; a
        // write to a key still in the overlay must win over it.
        kv.apply_write(107, put(1, 107, "k1", "newer")).unwrap();
        assert_eq!(kv.apply_write(108, del(108, "k4")).unwrap().result, OpResult::Delete(true));
        assert_eq!(kv.apply_write(109, del(109, "k2")).unwrap().result, OpResult::Delete(false));
        kv.apply_write(110, put(1, 110, "gone", "back")).unwrap();
        kv.set_applied(110);
        let mut steps = 0;
        while kv.folding() {
            kv.fold_in(2);
            steps += 1;
        }
        assert_eq!(steps, 1, "one entry left to fold in (\"fresh\"), the others overwritten");
        assert_eq!(kv.get(b"k1"), Some(&b"newer".to_vec()));
        assert_eq!(kv.get(b"k2"), None);
        assert_eq!(kv.get(b"k4"), None);
        assert_eq!(kv.get(b"gone"), Some(&b"back".to_vec()));
        assert_eq!(kv.get(b"fresh"), Some(&b"v".to_vec()));
        assert_eq!(kv.get(b"k3"), Some(&b"old".to_vec()));
        assert_eq!(Kv::restore(&kv.snapshot()).unwrap(), kv);
        assert_ne!(kv.snapshot(), during);
        // And it can be frozen again (a freeze folds in whatever is left first).
        kv.apply_write(111, put(1, 111, "k5", "x")).unwrap();
        let again = kv.freeze();
        kv.apply_write(112, put(1, 112, "k6", "y")).unwrap();
        kv.thaw();
        drop(again);
        kv.fold_in(usize::MAX);
        assert_eq!(kv.get(b"k5"), Some(&b"x".to_vec()));
        assert_eq!(kv.get(b"k6"), Some(&b"y".to_vec()));
    }

    #[test]
    fn writes_kept_aside_are_folded_in_a_slice_at_a_time() {
        let mut kv = with_sessions(&[1]);
        kv.apply_write(1, put(1, 1, "base", "b")).unwrap();
        let frozen = kv.freeze();
        for i in 0..10u64 {
            kv.apply_write(2 + i, put(1, 2 + i, &format!("m{i}"), "v")).unwrap();
        }
        drop(frozen);
        kv.thaw();
        let whole = kv.snapshot();
        let mut steps = 0;
        while kv.folding() {
            kv.fold_in(3);
            steps += 1;
            assert_eq!(kv.snapshot(), whole, "folding in changes nothing visible");
        }
        assert_eq!(steps, 4);
        assert!((0..10).all(|i| kv.get(format!("m{i}").as_bytes()) == Some(&b"v".to_vec())));
    }

    #[test]
    fn keys_and_values_encode_as_byte_strings() {
        // Same bytes as a Vec<u8> sequence under bincode, so the wire and snapshot formats
        // did not change when byte strings stopped being encoded one element at a time.
        let op = Op::Put { key: b"key".to_vec(), value: vec![7; 300] };
        #[derive(Serialize)]
        enum Plain {
            Put { key: Vec<u8>, value: Vec<u8> },
        }
        let plain = Plain::Put { key: b"key".to_vec(), value: vec![7; 300] };
        assert_eq!(codec::encode_value(&op).unwrap(), codec::encode_value(&plain).unwrap());
        let back: Op = codec::decode_payload(&codec::encode_value(&op).unwrap()).unwrap();
        assert_eq!(back, op);
    }

    /// Whether `part` lies inside `whole` (a slice borrowed from it, not a copy).
    fn inside(part: &[u8], whole: &[u8]) -> bool {
        let range = whole.as_ptr_range();
        range.start <= part.as_ptr() && part.as_ptr_range().end <= range.end
    }

    /// A request's write becomes its command without a copy of its key and value on the way
    /// (both borrowed from the frame), in the encoding of the owned command; applied from the
    /// entry, borrowed again, it leaves the same state as the owned command.
    #[test]
    fn a_write_is_decoded_borrowed_from_its_frame_and_applied_borrowed_from_its_entry() {
        use crate::protocol::{ClientRequest, ClientRequestOf, ClientRequestRef};
        let ops = [
            Op::Put { key: b"k".to_vec(), value: vec![1; 300] },
            Op::Delete { key: b"k".to_vec() },
            Op::Cas { key: b"k".to_vec(), expected: None, new: b"n".to_vec() },
            Op::Cas { key: b"k".to_vec(), expected: Some(b"n".to_vec()), new: vec![] },
            Op::Get { key: b"k".to_vec(), serializable: true },
        ];
        let (mut owned, mut borrowed) = (Kv::default(), Kv::default());
        owned.apply(1, register_at(0, SessionLimits::default()));
        borrowed.apply(1, register_at(0, SessionLimits::default()));
        for (seq, op) in ops.into_iter().enumerate() {
            let seq = seq as u64 + 1;
            let request = ClientRequest::Kv { request_id: 9, session_id: 1, seq, op: op.clone() };
            let frame = codec::encode_value(&request).unwrap();
            let decoded: ClientRequestRef = codec::decode_payload_borrowed(&frame).unwrap();
            let ClientRequestOf::Kv { op: op_ref, .. } = decoded else { panic!("a kv request") };
            assert_eq!(op_ref, op.borrowed());
            let (key, value) = match op_ref {
                Op::Put { key, value } => (key, Some(value)),
                Op::Cas { key, new, .. } => (key, Some(new)),
                Op::Get { key, .. } | Op::Delete { key } => (key, None),
            };
            assert!(inside(key, &frame), "the key is the frame's");
            assert!(value.is_none_or(|v| inside(v, &frame)), "the value is the frame's");

            let body = CommandBodyOf::Write { session_id: 1, seq, op: op_ref };
            let mut data = Vec::new();
            encode_command(&CommandOf { leader_time_ms: 5, body }, &mut data).unwrap();
            let command = Command {
                leader_time_ms: 5,
                body: CommandBody::Write { session_id: 1, seq, op: op.clone() },
            };
            let mut owned_data = Vec::new();
            encode_command(&command, &mut owned_data).unwrap();
            assert_eq!(data, owned_data, "the same entry either way");

            let EntryPayload::Command(bytes) = EntryPayload::of(&data, &[]) else {
                panic!("a command entry")
            };
            let applied: CommandRef = codec::decode_payload_borrowed(bytes).unwrap();
            let index = seq + 1;
            assert_eq!(borrowed.apply(index, applied), owned.apply(index, command));
            assert_eq!(borrowed.snapshot(), owned.snapshot());
        }
    }

    /// A value written over one of about its size reuses its allocation; a much smaller one
    /// does not keep the large allocation.
    #[test]
    fn an_overwrite_reuses_the_value_allocation_unless_it_shrinks_by_half() {
        let mut held = vec![1u8; 256];
        let at = held.as_ptr();
        overwrite(&mut held, &[2; 200]);
        assert_eq!((held.as_ptr(), held.as_slice()), (at, &[2u8; 200][..]));
        overwrite(&mut held, &[3; 100]);
        assert_eq!(held, [3; 100]);
        assert_eq!(held.capacity(), 100, "a value under half the allocation gets its own");
        overwrite(&mut held, &[4; 1000]);
        assert_eq!(held, [4; 1000]);
        assert_eq!(held.capacity(), 1000, "a larger value is allocated at its size");
        let mut kv = Data::default();
        kv.insert(b"k", &[5; 64]);
        let at = kv.get(b"k").unwrap().as_ptr();
        kv.insert(b"k", &[6; 64]);
        assert_eq!(kv.get(b"k").unwrap().as_ptr(), at, "overwritten in place");
        assert_eq!(kv.get(b"k").unwrap(), &[6; 64]);
    }
}
