//! A CRC-checked, memory-mapped, segmented write-ahead log for a Raft node.
//!
//! The log knows of Raft only that an entry has an index, a term and bytes, that there is a
//! hard state (term, vote, commit), and that a snapshot covers the log up to an index. It
//! keeps a directory of segment files, each preallocated and memory-mapped; records are
//! written into the mapping and made durable by [`Wal::sync`], once per batch (group
//! commit). Reads are served from the mappings through a small in-memory index (one slot per
//! appended batch), so entry payloads never occupy the heap.
//!
//! # Files
//!
//! ```text
//! <dir>/IDENTITY                   node id and cluster id; checked on every open
//! <dir>/LOCK                       flock'ed while open: one process per data dir
//! <dir>/00000000000000000001.wal   segments, named by sequence number
//! ```
//!
//! # Segment layout
//!
//! ```text
//! offset  size  field
//! 0       8     magic "RAFTWALS"
//! 8       4     format version (2)
//! 12      4     reserved, zero
//! 16      8     segment sequence number
//! 24      8     number (log sequence number) of its first record
//! 32      4     crc32 of bytes 0..32
//! 36      4     reserved, zero
//! 40      ...   records, each starting at a multiple of 8; zeros after the last
//! ```
//!
//! # Record layout
//!
//! ```text
//! offset  size  field
//! 0       4     payload length N
//! 4       4     crc32 over: segment sequence (u64), bytes 8..32, payload
//! 8       1     kind: 1 entries, 2 hard state, 3 snapshot marker, 4 compaction
//! 9       7     reserved, zero
//! 16      8     the record's number (log sequence number): one more than the record before
//! 24      8     the number of the last record a completed sync covered when it was written
//! 32      N     payload
//! 32+N    ...   zero padding to a multiple of 8
//!
//! entries payload:   first index u64, count u32, reserved u32,
//!                    count x (term u64, data offset u32, data length u32), data...
//! hard state:        term u64, vote u64, commit u64
//! snapshot marker:   index u64, term u64, conf state length u32, conf state bytes
//! compaction:        the new first index u64
//! ```
//!
//! Because the checksum covers the segment's sequence number, a record left over from an
//! older file cannot verify in a newer one. An all-zero header marks the end of a segment.
//!
//! # Recovery
//!
//! [`Wal::open`] scans every segment and verifies every record. A record damaged or missing
//! where no later record says that a completed sync covered it is a write the crash did not
//! keep (torn, or pages a power loss dropped, in any order): the log is truncated there and
//! it is reported in [`Recovery::torn_tail`]. Damage to a record that a later record shows
//! was synced is corruption: open fails naming the segment, offset and reason, unless the log
//! is opened with [`RecoveryMode::Repair`], which truncates there and reports what it dropped.
//!
//! # Use
//!
//! ```
//! use wal::{EntryRef, HardState, Identity, Options, Wal};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let identity = Identity { node_id: 1, cluster_id: "demo".into() };
//! let options = Options { segment_size_bytes: 1 << 20, ..Options::default() };
//! let (mut wal, recovery) = Wal::open(dir.path(), &identity, options.clone()).unwrap();
//! assert_eq!((recovery.first_index, recovery.last_index), (1, 0));
//!
//! wal.append_entries(&[EntryRef { head: &[], index: 1, term: 1, data: b"x=1" }]).unwrap();
//! wal.set_hard_state(HardState { term: 1, vote: 1, commit: 1 }).unwrap();
//! wal.sync().unwrap(); // Durable from here on.
//! drop(wal);
//!
//! let (wal, recovery) = Wal::open(dir.path(), &identity, options).unwrap();
//! assert_eq!(recovery.hard_state, Some(HardState { term: 1, vote: 1, commit: 1 }));
//! assert_eq!(wal.entries(1, 2, u64::MAX).unwrap()[0].data, b"x=1");
//! ```

#![warn(clippy::unwrap_used)]

mod errors;
pub mod fs;
mod identity;
mod record;
mod segment;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use log::{info, warn};

pub use crate::errors::{Error, Result};
use crate::fs::Fs;
pub use crate::identity::{new_incarnation, Identity, IDENTITY_VERSION};
pub use crate::record::FORMAT_VERSION as SEGMENT_FORMAT_VERSION;
use crate::record::*;
use crate::segment::{parse_segment_name, Segment};

/// The default size of a segment file: 64 MiB.
pub const SEGMENT_SIZE_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// The smallest segment size accepted.
pub const SEGMENT_SIZE_BYTES_MIN: u64 = 4096;
const LOCK_FILE: &str = "LOCK";

/// What to do with corruption found on open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Truncate a torn tail; fail on anything else.
    #[default]
    TruncateTornTail,
    /// Also truncate at corruption, dropping everything after it, and report what was lost.
    Repair,
}

/// Segments that a compaction left holding nothing, to be deleted (see
/// [`Wal::compact_deferred`]).
#[must_use = "the segments stay on disk until deleted"]
pub struct Garbage {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    segments: Vec<Segment>,
}

impl Garbage {
    /// How many segments.
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// True with nothing to delete.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Unmaps and deletes the segments, oldest first, each deletion made durable before the
    /// next: a crash meanwhile leaves the oldest ones gone and the rest in place, never a gap
    /// in the sequence of segments.
    pub fn delete(self) -> Result<()> {
        for segment in self.segments {
            let path = segment.path.clone();
            drop(segment);
            self.fs.remove_file(&path).map_err(|e| Error::io("delete segment", &path, e))?;
            self.fs
                .sync_dir(&self.dir)
                .map_err(|e| Error::SyncFailed { path: self.dir.clone(), source: e })?;
        }
        Ok(())
    }
}

/// How to open a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Bytes per segment file, preallocated.
    pub segment_size_bytes: u64,
    /// What to do with corruption found on open.
    pub recovery_mode: RecoveryMode,
    /// The incarnation a new directory gets (None: a random one, as it must be in use; a
    /// simulator gives one so that a run replays). Never 0.
    pub new_incarnation: Option<u64>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            segment_size_bytes: SEGMENT_SIZE_BYTES_DEFAULT,
            recovery_mode: RecoveryMode::TruncateTornTail,
            new_incarnation: None,
        }
    }
}

/// Raft's persistent state: term, vote, commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    /// Current term.
    pub term: u64,
    /// Vote in the current term, or 0.
    pub vote: u64,
    /// Commit index.
    pub commit: u64,
}

/// A snapshot covering the log up to `index`; `conf_state` is opaque to the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMarker {
    /// The last index the snapshot covers.
    pub index: u64,
    /// The term of that entry.
    pub term: u64,
    /// The configuration as of `index`, encoded by the caller.
    pub conf_state: Vec<u8>,
}

/// An entry to append. Its stored bytes are `head` followed by `data`, copied straight into
/// the log from where they are (a caller's framing and its shared payload need not be joined
/// into a buffer first); they read back as one byte string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRef<'a> {
    /// Its index.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// Bytes stored before `data` (empty for most callers).
    pub head: &'a [u8],
    /// Its bytes.
    pub data: &'a [u8],
}

impl EntryRef<'_> {
    /// The bytes it stores.
    pub fn len(&self) -> usize {
        self.head.len() + self.data.len()
    }

    /// True when it stores no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An entry read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its index.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// Damage truncated on open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The segment.
    pub segment: PathBuf,
    /// Where the first bad byte is.
    pub offset: u64,
    /// Bytes dropped from that segment.
    pub bytes_dropped: u64,
    /// Later segments deleted (repair only).
    pub segments_dropped: u64,
    /// What was wrong.
    pub reason: String,
}

/// What [`Wal::open`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The last hard state written.
    pub hard_state: Option<HardState>,
    /// The last snapshot marker written.
    pub snapshot: Option<SnapshotMarker>,
    /// The first index with an entry.
    pub first_index: u64,
    /// The last index (the snapshot's index when no entry follows it).
    pub last_index: u64,
    /// Records that verified.
    pub records: u64,
    /// Writes that no completed sync covered, found damaged or missing and truncated (a torn
    /// write, pages a power loss did not keep): never acknowledged, so nothing is lost.
    pub torn_tail: Option<Damage>,
    /// Corruption truncated in [`RecoveryMode::Repair`].
    pub repaired: Option<Damage>,
}

/// One appended batch of entries, as the in-memory index holds it.
#[derive(Clone, Copy, Debug)]
struct Batch {
    first_index: u64,
    /// Entries of the batch still in the log (a later conflict may cut the batch short).
    count: u64,
    sequence: u64,
    /// Offset of the batch's payload in its segment.
    payload: usize,
}

/// The write-ahead log. See the crate documentation.
///
/// Invariant: `batches` cover `first_index..=last_index` contiguously, in order.
pub struct Wal {
    /// The data directory's incarnation (see [`identity`]).
    incarnation: u64,
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    options: Options,
    segments: BTreeMap<u64, Segment>,
    batches: VecDeque<Batch>,
    first_index: u64,
    last_index: u64,
    /// False while recovering until entries or a snapshot marker place the log.
    position_known: bool,
    /// True while recovery replays the segments.
    replaying: bool,
    hard_state: Option<HardState>,
    snapshot: Option<SnapshotMarker>,
    active: u64,
    write_offset: usize,
    /// The number of the next record written.
    next_lsn: u64,
    /// The last record a completed sync covered (0: none). Every record carries it, so that
    /// recovery can tell damage to synced records (corruption) from unsynced ones (lost).
    synced_lsn: u64,
    /// Byte ranges written since the last sync, per segment.
    dirty: BTreeMap<u64, (usize, usize)>,
    /// Between [`Wal::begin_sync`] and [`Wal::finish_sync`].
    sync_in_flight: bool,
    poisoned: bool,
    /// Test hook: the next sync fails as a failing disk would make it.
    #[cfg(test)]
    fail_next_sync: bool,
    _lock: Box<dyn std::any::Any + Send>,
}

/// A sync begun by [`Wal::begin_sync`]: runs on any thread, keeps what it syncs open.
pub struct SyncJob {
    /// The last record it covers.
    covered_lsn: u64,
    ranges: Vec<SyncRange>,
    /// Test hook: the sync fails as a failing disk would make it.
    #[cfg(test)]
    fail: bool,
}

struct SyncRange {
    syncer: Arc<dyn crate::fs::FsSyncer>,
    path: PathBuf,
    offset: usize,
    len: usize,
}

impl SyncJob {
    /// Makes the ranges written before it was begun durable (blocks for the disk).
    pub fn run(&self) -> Result<()> {
        for range in &self.ranges {
            #[cfg(test)]
            if self.fail {
                return Err(Error::SyncFailed {
                    path: range.path.clone(),
                    source: std::io::Error::from_raw_os_error(libc::EIO),
                });
            }
            range
                .syncer
                .sync_range(range.offset, range.len)
                .map_err(crate::segment::sync_failed(&range.path))?;
        }
        Ok(())
    }

    /// True when it has nothing to sync (nothing was written since the last sync).
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

impl std::fmt::Debug for SyncJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncJob")
            .field("covered_lsn", &self.covered_lsn)
            .field("ranges", &self.ranges.len())
            .finish()
    }
}

fn entries_payload_len<'a>(entries: impl Iterator<Item = &'a EntryRef<'a>>) -> usize {
    entries.map(|e| ENTRY_SLOT_SIZE + e.len()).sum::<usize>() + ENTRIES_HEADER_SIZE
}

impl Wal {
    /// The data directory's incarnation: drawn at random when the directory was created, so
    /// that a node whose directory was replaced is told from the one that had it.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Opens the log in `dir` (created if missing) for the node `identity`, recovering what
    /// it holds, on the operating system's file system.
    pub fn open(dir: &Path, identity: &Identity, options: Options) -> Result<(Wal, Recovery)> {
        Wal::open_on(fs::os(), dir, identity, options)
    }

    /// [`Wal::open`] on the file system `fs` (a simulated disk in tests).
    pub fn open_on(
        fs: Arc<dyn Fs>,
        dir: &Path,
        identity: &Identity,
        options: Options,
    ) -> Result<(Wal, Recovery)> {
        if options.segment_size_bytes < SEGMENT_SIZE_BYTES_MIN {
            return Err(Error::Invalid(format!(
                "segment_size_bytes {} is below the minimum {SEGMENT_SIZE_BYTES_MIN}",
                options.segment_size_bytes
            )));
        }
        fs::create_dir_all_durably(fs.as_ref(), dir)
            .map_err(|e| Error::io("create data dir", dir, e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = fs.lock(&lock_path).map_err(|e| {
            Error::io(
                "lock (is another process using this data dir? is it writable?)",
                &lock_path,
                e,
            )
        })?;
        let sequences = list_segments(fs.as_ref(), dir)?;
        let new_dir = !fs.exists(&dir.join(identity::IDENTITY_FILE));
        if new_dir && !sequences.is_empty() {
            return Err(Error::UnknownFormat {
                path: dir.to_path_buf(),
                reason: "segments without an IDENTITY file".to_string(),
            });
        }
        let incarnation = identity::check_or_create(
            fs.as_ref(),
            dir,
            identity,
            new_dir,
            options.new_incarnation,
        )?;
        let mut wal = Wal {
            incarnation,
            fs,
            dir: dir.to_path_buf(),
            options,
            segments: BTreeMap::new(),
            batches: VecDeque::new(),
            first_index: 1,
            last_index: 0,
            position_known: sequences.is_empty(),
            replaying: !sequences.is_empty(),
            hard_state: None,
            snapshot: None,
            active: 0,
            write_offset: SEGMENT_HEADER_SIZE,
            next_lsn: 1,
            synced_lsn: 0,
            dirty: BTreeMap::new(),
            sync_in_flight: false,
            poisoned: false,
            #[cfg(test)]
            fail_next_sync: false,
            _lock: lock,
        };
        let mut recovery = Recovery::default();
        if sequences.is_empty() {
            wal.create_segment(1, wal.options.segment_size_bytes)?;
        } else {
            wal.recover(&sequences, &mut recovery)?;
        }
        wal.position_known = true;
        wal.replaying = false;
        recovery.hard_state = wal.hard_state;
        recovery.snapshot = wal.snapshot.clone();
        recovery.first_index = wal.first_index;
        recovery.last_index = wal.last_index;
        info!(
            "wal {}: recovered {} records, entries [{}, {}], hard state {:?}, snapshot at {:?}",
            dir.display(),
            recovery.records,
            wal.first_index,
            wal.last_index,
            wal.hard_state,
            wal.snapshot.as_ref().map(|s| s.index)
        );
        Ok((wal, recovery))
    }

    fn recover(&mut self, sequences: &[u64], recovery: &mut Recovery) -> Result<()> {
        // The number of the next record, once the first segment's header gives it.
        let mut expected: Option<u64> = None;
        for (i, &sequence) in sequences.iter().enumerate() {
            let is_last = i + 1 == sequences.len();
            let path = self.dir.join(segment::segment_name(sequence));
            let mut segment = Segment::open(self.fs.as_ref(), path.clone())?;
            let first_lsn = match check_segment_header(segment.bytes(), sequence) {
                Ok(first_lsn) => first_lsn,
                Err(reason) => {
                    // A segment is synced with its header before any record is written into
                    // it, so only the last one can lack its header, and only if blank.
                    let blank = segment.bytes().iter().all(|&b| b == 0);
                    if !(is_last && blank) {
                        return Err(Error::Corruption { segment: path, offset: 0, reason });
                    }
                    let first_lsn = expected.unwrap_or(1);
                    warn!("wal: segment {} was never initialized; initializing it", path.display());
                    segment.update(0, SEGMENT_HEADER_SIZE, &mut |h| {
                        write_segment_header(h, sequence, first_lsn)
                    });
                    segment.sync_range(0, SEGMENT_HEADER_SIZE)?;
                    first_lsn
                }
            };
            if let Some(want) = expected.filter(|&want| want != first_lsn) {
                // Records at the end of the previous segment are missing.
                drop(segment);
                let why = if first_lsn > want {
                    format!("records {want} to {} are missing", first_lsn - 1)
                } else {
                    format!("the next segment starts at record {first_lsn}, not {want}")
                };
                let (previous, offset) = (sequences[i - 1], self.write_offset);
                self.damaged(sequences, i - 1, previous, offset, want, why, recovery)?;
                return self.finish_recovery();
            }
            self.segments.insert(sequence, segment);
            self.active = sequence;
            let mut next = first_lsn;
            let replayed = self.replay_segment(sequence, &mut next, recovery);
            expected = Some(next);
            match replayed {
                Ok(end) => self.write_offset = end,
                Err(bad) if bad.verified => {
                    // A record that verifies but does not fit the log: never a lost write.
                    if self.options.recovery_mode != RecoveryMode::Repair {
                        return Err(Error::Corruption {
                            segment: path,
                            offset: bad.offset as u64,
                            reason: bad.why,
                        });
                    }
                    self.truncate_damage(sequences, i, bad.offset, next, bad.why, true, recovery)?;
                    return self.finish_recovery();
                }
                Err(bad) => {
                    self.damaged(sequences, i, sequence, bad.offset, next, bad.why, recovery)?;
                    return self.finish_recovery();
                }
            }
        }
        self.next_lsn = expected.unwrap_or(1);
        self.finish_recovery()
    }

    /// Damage at `offset` of segment `sequence` (number `i` of `sequences`), where record
    /// `lsn` should be. If a later record shows that a completed sync covered record `lsn`,
    /// that is corruption; otherwise it is a write no sync completed (torn, or pages a power
    /// loss did not keep), and the log is truncated there.
    #[allow(clippy::too_many_arguments)]
    fn damaged(
        &mut self,
        sequences: &[u64],
        i: usize,
        sequence: u64,
        offset: usize,
        lsn: u64,
        why: String,
        recovery: &mut Recovery,
    ) -> Result<()> {
        let path = self.dir.join(segment::segment_name(sequence));
        let proof = self.find_sync_proof(sequences, i, offset, lsn)?;
        let Some(proof) = proof else {
            return self.truncate_damage(sequences, i, offset, lsn, why, false, recovery);
        };
        let why = format!(
            "record {lsn} is damaged or missing ({why}), but record {} in {} at offset {} was \
             written after a sync that covered it",
            proof.lsn,
            proof.segment.display(),
            proof.offset
        );
        if self.options.recovery_mode != RecoveryMode::Repair {
            return Err(Error::Corruption { segment: path, offset: offset as u64, reason: why });
        }
        self.truncate_damage(sequences, i, offset, lsn, why, true, recovery)
    }

    /// Truncates the log at `offset` of segment `sequences[i]`: zeroes the rest of it and
    /// deletes the later segments, durably, and reports it.
    #[allow(clippy::too_many_arguments)]
    fn truncate_damage(
        &mut self,
        sequences: &[u64],
        i: usize,
        offset: usize,
        lsn: u64,
        reason: String,
        corruption: bool,
        recovery: &mut Recovery,
    ) -> Result<()> {
        let sequence = sequences[i];
        let path = self.dir.join(segment::segment_name(sequence));
        let bytes_dropped = self.zero_from(sequence, offset)?;
        let later = &sequences[i + 1..];
        // Newest first, each deletion durable before the next: a crash meanwhile leaves the
        // oldest of them, never a gap in the sequence.
        for &dropped in later.iter().rev() {
            self.segments.remove(&dropped);
            let p = self.dir.join(segment::segment_name(dropped));
            self.fs.remove_file(&p).map_err(|e| Error::io("delete segment", &p, e))?;
            self.sync_dir()?;
        }
        let damage = Damage {
            segment: path,
            offset: offset as u64,
            bytes_dropped,
            segments_dropped: later.len() as u64,
            reason,
        };
        warn!("wal: truncated {damage:?}");
        if corruption {
            recovery.repaired = Some(damage);
        } else {
            recovery.torn_tail = Some(damage);
        }
        self.active = sequence;
        self.write_offset = offset;
        self.next_lsn = lsn;
        Ok(())
    }

    /// A record after `offset` of segment `sequences[i]`, or in a later segment, written
    /// after a sync that covered record `lsn`.
    fn find_sync_proof(
        &self,
        sequences: &[u64],
        i: usize,
        offset: usize,
        lsn: u64,
    ) -> Result<Option<Proof>> {
        for (k, &sequence) in sequences.iter().enumerate().skip(i) {
            let path = self.dir.join(segment::segment_name(sequence));
            let bytes = self.fs.read(&path).map_err(|e| Error::io("read segment", &path, e))?;
            let from = if k == i { offset + RECORD_ALIGN } else { SEGMENT_HEADER_SIZE };
            let start = from.div_ceil(RECORD_ALIGN) * RECORD_ALIGN;
            let end = bytes.len().saturating_sub(RECORD_HEADER_SIZE - 1);
            for at in (start..end).step_by(RECORD_ALIGN) {
                if let Parsed::Record { lsns, .. } = parse_record(&bytes, at, sequence) {
                    if lsns.synced_lsn >= lsn {
                        return Ok(Some(Proof { segment: path, offset: at, lsn: lsns.lsn }));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Checks that what was replayed is a whole log, makes every segment and the directory
    /// durable (a process that crashed may have left unsynced pages and names in the cache,
    /// which this process must not take for durable), and readies the active segment for
    /// writing.
    fn finish_recovery(&mut self) -> Result<()> {
        let missing = match &self.snapshot {
            Some(s) => self.first_index > s.index + 1,
            None => self.first_index != 1 && self.position_known,
        };
        if missing {
            let after = self.snapshot.as_ref().map_or(0, |s| s.index);
            return Err(Error::Corruption {
                segment: self.dir.clone(),
                offset: 0,
                reason: format!(
                    "entries {} to {} are missing: the log starts at {} after a snapshot at {after}",
                    after + 1,
                    self.first_index - 1,
                    self.first_index
                ),
            });
        }
        for segment in self.segments.values() {
            segment.sync_all()?;
        }
        // And their names: a segment the crashed process created may be in the directory only
        // in the cache (one whose preallocation failed on a full disk, initialized above), and
        // records synced into it would vanish with it at a power cut.
        self.sync_dir()?;
        self.synced_lsn = self.next_lsn - 1;
        let size = self.options.segment_size_bytes;
        let active = self.segments.get_mut(&self.active).expect("recovered at least one segment");
        active.extend(size)?;
        Ok(())
    }

    fn sync_dir(&self) -> Result<()> {
        self.fs
            .sync_dir(&self.dir)
            .map_err(|e| Error::SyncFailed { path: self.dir.clone(), source: e })
    }

    /// Verifies and replays the records of segment `sequence`, the first numbered `*next`;
    /// leaves `*next` at the number after the last one replayed. Returns where writing may
    /// continue, or where the first bad record is.
    fn replay_segment(
        &mut self,
        sequence: u64,
        next: &mut u64,
        recovery: &mut Recovery,
    ) -> std::result::Result<usize, BadRecord> {
        let (found, end) = scan_segment(self.segments[&sequence].bytes(), sequence, *next);
        for record in found {
            let decoded = {
                let map = self.segments[&sequence].bytes();
                decode_record(
                    record.kind,
                    &map[record.payload_start..record.payload_start + record.payload_len],
                )
            };
            let applied =
                decoded.and_then(|d| self.apply_decoded(d, sequence, record.payload_start));
            if let Err(why) = applied {
                return Err(BadRecord { offset: record.offset, why, verified: true });
            }
            *next += 1;
            recovery.records += 1;
        }
        end
    }

    fn apply_decoded(
        &mut self,
        decoded: Decoded,
        sequence: u64,
        payload: usize,
    ) -> std::result::Result<(), String> {
        match decoded {
            Decoded::Entries { first_index, count } => self
                .apply_batch(Batch { first_index, count, sequence, payload })
                .map_err(|e| e.to_string()),
            Decoded::HardState(hs) => {
                self.hard_state = Some(hs);
                Ok(())
            }
            Decoded::Compact(index) => {
                self.drop_before(index);
                Ok(())
            }
            Decoded::Snapshot(marker) => {
                self.apply_snapshot_marker(marker);
                Ok(())
            }
        }
    }

    /// Adds a batch to the index, replacing any suffix it overlaps (a Raft log conflict).
    fn apply_batch(&mut self, batch: Batch) -> Result<()> {
        let first = batch.first_index;
        // Replay may start at a segment that is not the log's first: those before it were
        // compacted away (or are being deleted), and with them the entries that a batch here
        // follows, or replaces from a lower index. The log then restarts at the batch. The
        // records replayed are complete from the first one (their numbers say so), and the
        // check at the end of recovery says whether anything the snapshot does not cover is
        // missing.
        let restart = first > self.last_index + 1 || first < self.first_index;
        if !self.position_known || (self.replaying && restart) {
            self.batches.clear();
            self.first_index = first;
            self.last_index = first - 1;
        }
        self.position_known = true;
        if first > self.last_index + 1 {
            return Err(Error::NonContiguous { first, last: self.last_index });
        }
        if first < self.first_index {
            return Err(Error::Compacted { index: first, first_index: self.first_index });
        }
        self.truncate_after(first - 1);
        self.last_index = first + batch.count - 1;
        self.batches.push_back(batch);
        Ok(())
    }

    /// Drops entries after `index` from the index.
    fn truncate_after(&mut self, index: u64) {
        while let Some(last) = self.batches.back_mut() {
            if last.first_index > index {
                self.batches.pop_back();
            } else {
                last.count = last.count.min(index + 1 - last.first_index);
                break;
            }
        }
        self.last_index = self.last_index.min(index);
    }

    /// A snapshot at `marker.index`: the entries after it stay when the log agrees with the
    /// snapshot there (Log Matching); otherwise the log restarts after the snapshot.
    ///
    /// While replaying from a segment that is not the log's first, the marker's entry may be
    /// in a segment already deleted (or the marker rewritten by a compaction after it): an
    /// entry whose term is unknown counts as matching, as it did when the marker was written.
    fn apply_snapshot_marker(&mut self, marker: SnapshotMarker) {
        let matches = self.position_known
            && marker.index <= self.last_index
            && match self.term(marker.index) {
                Ok(term) => term == marker.term,
                Err(_) => self.replaying && marker.index < self.first_index,
            };
        if !matches {
            self.batches.clear();
            self.first_index = marker.index + 1;
            self.last_index = marker.index;
            self.position_known = true;
        }
        self.snapshot = Some(marker);
    }

    fn check_usable(&self) -> Result<()> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        Ok(())
    }

    fn create_segment(&mut self, sequence: u64, size: u64) -> Result<()> {
        let created = Segment::create(self.fs.as_ref(), &self.dir, sequence, size, self.next_lsn);
        if let Err(Error::SyncFailed { .. }) = &created {
            // As for any failed sync: no retry, the log refuses further work.
            self.poisoned = true;
        }
        let segment = created?;
        self.segments.insert(sequence, segment);
        self.active = sequence;
        self.write_offset = SEGMENT_HEADER_SIZE;
        Ok(())
    }

    /// Writes a record into the active segment, rotating to a new one when it does not fit.
    /// Returns the sequence and payload offset written.
    fn write_record(
        &mut self,
        kind: RecordKind,
        payload_len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(u64, usize)> {
        let size = record_size(payload_len);
        let active_len = self.segments[&self.active].bytes().len();
        if self.write_offset + size > active_len {
            let needed = (SEGMENT_HEADER_SIZE + size) as u64;
            let segment_size = self.options.segment_size_bytes.max(needed.div_ceil(4096) * 4096);
            self.create_segment(self.active + 1, segment_size)?;
        }
        let (sequence, offset) = (self.active, self.write_offset);
        let lsns = Lsns { lsn: self.next_lsn, synced_lsn: self.synced_lsn };
        let segment = self.segments.get_mut(&sequence).expect("active segment exists");
        let mut fill = Some(fill);
        segment.update(offset, size, &mut |dst| {
            let fill = fill.take().expect("a record is written once");
            write_record(dst, sequence, kind, lsns, payload_len, fill)
        });
        self.next_lsn += 1;
        self.write_offset += size;
        let range = self.dirty.entry(sequence).or_insert((offset, offset + size));
        range.0 = range.0.min(offset);
        range.1 = range.1.max(offset + size);
        Ok((sequence, offset + RECORD_HEADER_SIZE))
    }

    /// Appends entries with contiguous indexes. If the first is at or below the last index,
    /// the log's suffix from there is replaced. Not durable until [`Wal::sync`].
    pub fn append_entries(&mut self, entries: &[EntryRef<'_>]) -> Result<()> {
        self.check_usable()?;
        let Some(first) = entries.first() else {
            return Ok(());
        };
        for (i, e) in entries.iter().enumerate() {
            if e.index != first.index + i as u64 {
                return Err(Error::Invalid(format!(
                    "entry {} at position {i} after {}",
                    e.index, first.index
                )));
            }
        }
        if first.index > self.last_index + 1 {
            return Err(Error::NonContiguous { first: first.index, last: self.last_index });
        }
        if first.index < self.first_index {
            return Err(Error::Compacted { index: first.index, first_index: self.first_index });
        }
        let capacity =
            self.options.segment_size_bytes as usize - SEGMENT_HEADER_SIZE - RECORD_HEADER_SIZE;
        let mut start = 0;
        while start < entries.len() {
            // The largest chunk that fits a segment (at least one entry).
            let mut end = start + 1;
            let mut len = entries_payload_len(entries[start..end].iter());
            while end < entries.len() && len + ENTRY_SLOT_SIZE + entries[end].len() <= capacity {
                len += ENTRY_SLOT_SIZE + entries[end].len();
                end += 1;
            }
            self.append_chunk(&entries[start..end], len)?;
            start = end;
        }
        Ok(())
    }

    fn append_chunk(&mut self, chunk: &[EntryRef<'_>], payload_len: usize) -> Result<()> {
        let first_index = chunk[0].index;
        let (sequence, payload) = self.write_record(RecordKind::Entries, payload_len, |p| {
            p[0..8].copy_from_slice(&first_index.to_le_bytes());
            p[8..12].copy_from_slice(&(chunk.len() as u32).to_le_bytes());
            p[12..16].fill(0);
            let mut data_at = ENTRIES_HEADER_SIZE + chunk.len() * ENTRY_SLOT_SIZE;
            for (k, e) in chunk.iter().enumerate() {
                let slot = ENTRIES_HEADER_SIZE + k * ENTRY_SLOT_SIZE;
                p[slot..slot + 8].copy_from_slice(&e.term.to_le_bytes());
                p[slot + 8..slot + 12].copy_from_slice(&(data_at as u32).to_le_bytes());
                p[slot + 12..slot + 16].copy_from_slice(&(e.len() as u32).to_le_bytes());
                let data_start = data_at + e.head.len();
                p[data_at..data_start].copy_from_slice(e.head);
                p[data_start..data_start + e.data.len()].copy_from_slice(e.data);
                data_at = data_start + e.data.len();
            }
        })?;
        self.apply_batch(Batch { first_index, count: chunk.len() as u64, sequence, payload })
    }

    /// Records the hard state. Not durable until [`Wal::sync`].
    pub fn set_hard_state(&mut self, hs: HardState) -> Result<()> {
        self.check_usable()?;
        self.write_hard_state(hs)
    }

    fn write_hard_state(&mut self, hs: HardState) -> Result<()> {
        self.write_record(RecordKind::HardState, HARD_STATE_SIZE, |p| {
            p[0..8].copy_from_slice(&hs.term.to_le_bytes());
            p[8..16].copy_from_slice(&hs.vote.to_le_bytes());
            p[16..24].copy_from_slice(&hs.commit.to_le_bytes());
        })?;
        self.hard_state = Some(hs);
        Ok(())
    }

    /// Records a snapshot covering the log up to `marker.index`. If the log holds that entry
    /// with the same term, the entries after it stay; otherwise the log restarts empty after
    /// the snapshot (a follower installing its leader's snapshot). Not durable until
    /// [`Wal::sync`].
    pub fn mark_snapshot(&mut self, marker: SnapshotMarker) -> Result<()> {
        self.check_usable()?;
        self.write_snapshot_marker(&marker)?;
        self.apply_snapshot_marker(marker);
        Ok(())
    }

    fn write_snapshot_marker(&mut self, marker: &SnapshotMarker) -> Result<()> {
        let len = SNAPSHOT_MARKER_HEADER_SIZE + marker.conf_state.len();
        self.write_record(RecordKind::Snapshot, len, |p| {
            p[0..8].copy_from_slice(&marker.index.to_le_bytes());
            p[8..16].copy_from_slice(&marker.term.to_le_bytes());
            p[16..20].copy_from_slice(&(marker.conf_state.len() as u32).to_le_bytes());
            p[20..].copy_from_slice(&marker.conf_state);
        })?;
        Ok(())
    }

    /// Makes everything appended so far durable. A failure is fatal: the log refuses all
    /// further work and the caller must exit. Refused while a [`SyncJob`] is in flight.
    pub fn sync(&mut self) -> Result<()> {
        let job = self.begin_sync()?;
        let synced = job.run();
        self.finish_sync(job, synced)
    }

    /// Starts a sync of everything appended so far, to be run by [`SyncJob::run`] on any
    /// thread while the log takes further writes (they are not covered), and finished with
    /// [`Wal::finish_sync`]. One at a time: refused while another is in flight, and so is
    /// anything that syncs (compaction), until it is finished.
    pub fn begin_sync(&mut self) -> Result<SyncJob> {
        self.check_usable()?;
        if self.sync_in_flight {
            return Err(Error::Invalid("a sync is already in flight".into()));
        }
        let mut ranges = Vec::new();
        for (sequence, (start, end)) in std::mem::take(&mut self.dirty) {
            if let Some(segment) = self.segments.get(&sequence) {
                ranges.push(SyncRange {
                    syncer: segment.syncer(),
                    path: segment.path.clone(),
                    offset: start,
                    len: end - start,
                });
            }
        }
        self.sync_in_flight = true;
        Ok(SyncJob {
            covered_lsn: self.next_lsn - 1,
            ranges,
            #[cfg(test)]
            fail: std::mem::take(&mut self.fail_next_sync),
        })
    }

    /// Records the outcome of `job`: on success what it covered is durable (and later records
    /// say so); a failure is fatal as for [`Wal::sync`].
    pub fn finish_sync(&mut self, job: SyncJob, synced: Result<()>) -> Result<()> {
        assert!(self.sync_in_flight, "a sync finished that was not begun");
        self.sync_in_flight = false;
        if let Err(e) = synced {
            self.poisoned = true;
            return Err(e);
        }
        self.check_usable()?;
        self.synced_lsn = self.synced_lsn.max(job.covered_lsn);
        Ok(())
    }

    /// True between [`Wal::begin_sync`] and [`Wal::finish_sync`].
    pub fn sync_in_flight(&self) -> bool {
        self.sync_in_flight
    }

    /// Drops the entries before `index` and deletes the segments that hold nothing else. The
    /// entries must be covered by a snapshot: `index <= snapshot index + 1`. Durable on return.
    pub fn compact(&mut self, index: u64) -> Result<()> {
        self.compact_deferred(index)?.delete()
    }

    /// [`Wal::compact`], except that the segments left holding nothing are handed back to be
    /// deleted later (for instance on another thread: unmapping and deleting a segment takes
    /// milliseconds). The compaction is durable on return; segments not deleted before a
    /// crash are recognised as compacted at the next open and deleted by a later compaction.
    pub fn compact_deferred(&mut self, index: u64) -> Result<Garbage> {
        self.check_usable()?;
        let snapshot_index = self.snapshot.as_ref().map_or(0, |s| s.index);
        if index > snapshot_index + 1 || self.snapshot.is_none() {
            return Err(Error::CompactBeyondSnapshot { index, snapshot_index });
        }
        let mut garbage =
            Garbage { fs: self.fs.clone(), dir: self.dir.clone(), segments: Vec::new() };
        if index <= self.first_index {
            return Ok(garbage);
        }
        // Keep the latest hard state and snapshot marker in a segment that stays.
        if let Some(hs) = self.hard_state {
            self.write_hard_state(hs)?;
        }
        if let Some(marker) = self.snapshot.clone() {
            self.write_snapshot_marker(&marker)?;
        }
        self.write_record(RecordKind::Compact, COMPACT_SIZE, |p| {
            p.copy_from_slice(&index.to_le_bytes())
        })?;
        self.sync()?;
        self.drop_before(index);
        let keep_from = self.batches.front().map_or(self.active, |b| b.sequence).min(self.active);
        let doomed: Vec<u64> = self.segments.range(..keep_from).map(|(&s, _)| s).collect();
        for sequence in doomed {
            garbage.segments.push(self.segments.remove(&sequence).expect("listed above"));
        }
        Ok(garbage)
    }

    /// Drops the entries before `index` from the index.
    fn drop_before(&mut self, index: u64) {
        if !self.position_known {
            return;
        }
        while let Some(front) = self.batches.front() {
            if front.first_index + front.count <= index {
                self.batches.pop_front();
            } else {
                break;
            }
        }
        self.first_index = index.min(self.last_index + 1).max(self.first_index);
    }

    /// The first index with an entry.
    pub fn first_index(&self) -> u64 {
        self.first_index
    }

    /// The last index (the snapshot's index when no entry follows it).
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// The last hard state recorded.
    pub fn hard_state(&self) -> Option<HardState> {
        self.hard_state
    }

    /// The last snapshot marker recorded.
    pub fn snapshot(&self) -> Option<&SnapshotMarker> {
        self.snapshot.as_ref()
    }

    /// The segment files currently in use, oldest first.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments.values().map(|s| s.path.clone()).collect()
    }

    fn batch_of(&self, index: u64) -> Option<&Batch> {
        let at = self.batches.partition_point(|b| b.first_index + b.count <= index);
        self.batches.get(at).filter(|b| b.first_index <= index)
    }

    /// Term, data offset and data length of entry `index`, which must be in the log.
    fn slot(&self, index: u64) -> (u64, &[u8]) {
        let batch = self.batch_of(index).expect("index within [first_index, last_index]");
        let map = self.segments[&batch.sequence].bytes();
        let slot = batch.payload
            + ENTRIES_HEADER_SIZE
            + (index - batch.first_index) as usize * ENTRY_SLOT_SIZE;
        let term = read_u64(map, slot);
        let data_offset = read_u32(map, slot + 8) as usize;
        let data_len = read_u32(map, slot + 12) as usize;
        let data_at = batch.payload + data_offset;
        (term, &map[data_at..data_at + data_len])
    }

    /// The term of entry `index`; also of the snapshot's index just before the first entry.
    pub fn term(&self, index: u64) -> Result<u64> {
        if index > self.last_index {
            return Err(Error::Unavailable { index, last_index: self.last_index });
        }
        if index + 1 == self.first_index {
            return match &self.snapshot {
                Some(s) if s.index == index => Ok(s.term),
                _ if index == 0 => Ok(0),
                _ => Err(Error::Compacted { index, first_index: self.first_index }),
            };
        }
        if index < self.first_index {
            return Err(Error::Compacted { index, first_index: self.first_index });
        }
        Ok(self.slot(index).0)
    }

    /// Entries `[lo, hi)`, at most `max_bytes` of data but always at least one.
    pub fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>> {
        if lo < self.first_index {
            return Err(Error::Compacted { index: lo, first_index: self.first_index });
        }
        if hi > self.last_index + 1 {
            return Err(Error::Unavailable { index: hi - 1, last_index: self.last_index });
        }
        let mut out = Vec::with_capacity(hi.saturating_sub(lo).min(1024) as usize);
        let mut bytes = 0u64;
        for index in lo..hi {
            let (term, data) = self.slot(index);
            bytes = bytes.saturating_add(data.len() as u64);
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(Entry { index, term, data: data.to_vec() });
        }
        Ok(out)
    }

    /// Zeroes a segment from `offset` through its last non-zero byte; returns the bytes zeroed.
    fn zero_from(&mut self, sequence: u64, offset: usize) -> Result<u64> {
        let segment = self.segments.get_mut(&sequence).expect("segment is open");
        let end =
            segment.bytes().iter().rposition(|&b| b != 0).map_or(offset, |p| p + 1).max(offset);
        segment.update(offset, end - offset, &mut |b| b.fill(0));
        segment.sync_range(offset, end - offset)?;
        Ok((end - offset) as u64)
    }
}

/// A record that failed to verify or replay.
struct BadRecord {
    offset: usize,
    why: String,
    /// It verified (its checksum holds) but does not fit the log.
    verified: bool,
}

/// A record written after a sync that covered a damaged one.
struct Proof {
    segment: PathBuf,
    offset: usize,
    lsn: u64,
}

/// A record that verified, found by a scan.
struct Found {
    offset: usize,
    kind: RecordKind,
    payload_start: usize,
    payload_len: usize,
}

/// Finds the records of a segment that verify and are numbered in order from `first_lsn`,
/// and where they end: the offset after the last one, or the first bad record.
fn scan_segment(
    buf: &[u8],
    sequence: u64,
    first_lsn: u64,
) -> (Vec<Found>, std::result::Result<usize, BadRecord>) {
    let mut found = Vec::new();
    let mut offset = SEGMENT_HEADER_SIZE;
    let mut lsn = first_lsn;
    loop {
        if offset >= buf.len() {
            return (found, Ok(buf.len()));
        }
        match parse_record(buf, offset, sequence) {
            Parsed::Record { lsns, .. } if lsns.lsn != lsn => {
                let why = format!("record number {} where {lsn} was expected", lsns.lsn);
                return (found, Err(BadRecord { offset, why, verified: false }));
            }
            Parsed::Record { kind, payload_start, payload_len, size, .. } => {
                found.push(Found { offset, kind, payload_start, payload_len });
                offset += size;
                lsn += 1;
            }
            Parsed::End => {
                if let Some(at) = valid_record_after_offset(buf, offset, sequence) {
                    let why = format!("zeroed bytes hide a valid record at offset {at}");
                    return (found, Err(BadRecord { offset, why, verified: false }));
                }
                return (found, Ok(offset));
            }
            Parsed::Bad(reason) => {
                return (
                    found,
                    Err(BadRecord { offset, why: reason.to_string(), verified: false }),
                );
            }
        }
    }
}

/// A verified record's content.
enum Decoded {
    Compact(u64),
    Entries { first_index: u64, count: u64 },
    HardState(HardState),
    Snapshot(SnapshotMarker),
}

/// Decodes a verified record's payload, checking its structure.
fn decode_record(kind: RecordKind, payload: &[u8]) -> std::result::Result<Decoded, String> {
    match kind {
        RecordKind::Entries => {
            let (first_index, count) = check_entries_payload(payload)?;
            Ok(Decoded::Entries { first_index, count })
        }
        RecordKind::Compact => {
            if payload.len() != COMPACT_SIZE {
                return Err(format!("compaction record of {} bytes", payload.len()));
            }
            Ok(Decoded::Compact(read_u64(payload, 0)))
        }
        RecordKind::HardState => {
            if payload.len() != HARD_STATE_SIZE {
                return Err(format!("hard state of {} bytes", payload.len()));
            }
            Ok(Decoded::HardState(HardState {
                term: read_u64(payload, 0),
                vote: read_u64(payload, 8),
                commit: read_u64(payload, 16),
            }))
        }
        RecordKind::Snapshot => {
            if payload.len() < SNAPSHOT_MARKER_HEADER_SIZE
                || payload.len() != SNAPSHOT_MARKER_HEADER_SIZE + read_u32(payload, 16) as usize
            {
                return Err(format!("snapshot marker of {} bytes", payload.len()));
            }
            Ok(Decoded::Snapshot(SnapshotMarker {
                index: read_u64(payload, 0),
                term: read_u64(payload, 8),
                conf_state: payload[SNAPSHOT_MARKER_HEADER_SIZE..].to_vec(),
            }))
        }
    }
}

fn valid_record_after_offset(buf: &[u8], from: usize, sequence: u64) -> Option<usize> {
    let start = from.div_ceil(RECORD_ALIGN) * RECORD_ALIGN;
    (start..buf.len().saturating_sub(RECORD_HEADER_SIZE - 1))
        .step_by(RECORD_ALIGN)
        .find(|&p| matches!(parse_record(buf, p, sequence), Parsed::Record { .. }))
}

/// Checks an entries payload's structure; returns its first index and count.
fn check_entries_payload(payload: &[u8]) -> std::result::Result<(u64, u64), String> {
    if payload.len() < ENTRIES_HEADER_SIZE {
        return Err("entries record shorter than its header".to_string());
    }
    let first_index = read_u64(payload, 0);
    let count = read_u32(payload, 8) as usize;
    let table_end = ENTRIES_HEADER_SIZE + count * ENTRY_SLOT_SIZE;
    if count == 0 || first_index == 0 || table_end > payload.len() {
        return Err(format!("entries record with count {count} and first index {first_index}"));
    }
    for k in 0..count {
        let slot = ENTRIES_HEADER_SIZE + k * ENTRY_SLOT_SIZE;
        let offset = read_u32(payload, slot + 8) as usize;
        let len = read_u32(payload, slot + 12) as usize;
        if offset < table_end || offset + len > payload.len() {
            return Err(format!("entry {k} data [{offset}, +{len}) outside the record"));
        }
    }
    Ok((first_index, count as u64))
}

fn list_segments(fs: &dyn Fs, dir: &Path) -> Result<Vec<u64>> {
    let names = fs.list(dir).map_err(|e| Error::io("list", dir, e))?;
    let mut sequences: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    sequences.sort_unstable();
    for pair in sequences.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(Error::Corruption {
                segment: dir.join(segment::segment_name(pair[1])),
                offset: 0,
                reason: format!("segment {} is missing", pair[0] + 1),
            });
        }
    }
    Ok(sequences)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_sync_is_fatal_and_never_retried() {
        let dir = tempfile::tempdir().expect("tempdir");
        let identity = Identity { node_id: 1, cluster_id: "t".to_string() };
        let (mut wal, _) = Wal::open(dir.path(), &identity, Options::default()).expect("open");
        wal.append_entries(&[EntryRef { head: &[], index: 1, term: 1, data: b"x" }])
            .expect("append");
        wal.fail_next_sync = true;
        assert!(matches!(wal.sync(), Err(Error::SyncFailed { .. })));
        assert!(matches!(wal.sync(), Err(Error::Poisoned)), "no retry");
        let more = [EntryRef { head: &[], index: 2, term: 1, data: b"y" }];
        assert!(matches!(wal.append_entries(&more), Err(Error::Poisoned)));
        assert!(matches!(wal.set_hard_state(HardState::default()), Err(Error::Poisoned)));
    }
}
