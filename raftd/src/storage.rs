//! `raft::Storage` over the write-ahead log and snapshot files.
//!
//! Entries are stored in the WAL as bytes: entry type (u8), context length (u32 LE), context,
//! data. The first three are the entry's head, written into the log beside its shared data
//! (never joined with it in a buffer); read back, context and data are slices of one buffer.
//! Snapshots are files under `snap/`; the WAL's snapshot marker records the one in force, and
//! is written only after its file is durable.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use log::{error, info, warn};
use raft::{
    Bytes, ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata, StorageError,
};

use crate::entry_cache::EntryCache;
use crate::errors::{Error, Result};
use crate::snapfile;

/// Bytes of an entry's head before its context: type (1), context length (4).
pub(crate) const ENTRY_PREFIX_SIZE: usize = 5;

/// Writes the bytes stored before an entry's data: its type, its context's length, its context.
fn encode_entry_head(e: &Entry, out: &mut Vec<u8>) {
    out.clear();
    out.push(match e.entry_type {
        EntryType::Normal => 0,
        EntryType::ConfChange => 1,
        EntryType::ConfChangeV2 => 2,
    });
    out.extend_from_slice(&(e.context.len() as u32).to_le_bytes());
    out.extend_from_slice(&e.context);
}

fn decode_entry(w: wal::Entry) -> std::result::Result<Entry, StorageError> {
    let bytes = Bytes::from(w.data);
    let bad = |why: &str| {
        StorageError::Other(format!("entry {} in the log is malformed: {why}", w.index))
    };
    if bytes.len() < ENTRY_PREFIX_SIZE {
        return Err(bad("too short"));
    }
    let entry_type = match bytes[0] {
        0 => EntryType::Normal,
        1 => EntryType::ConfChange,
        2 => EntryType::ConfChangeV2,
        _ => return Err(bad("unknown entry type")),
    };
    let ctx_len = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    if ENTRY_PREFIX_SIZE + ctx_len > bytes.len() {
        return Err(bad("context runs past the end"));
    }
    let context = bytes.slice(ENTRY_PREFIX_SIZE..ENTRY_PREFIX_SIZE + ctx_len);
    let data = bytes.slice(ENTRY_PREFIX_SIZE + ctx_len..);
    Ok(Entry { entry_type, term: w.term, index: w.index, data, context })
}

fn storage_error(e: wal::Error) -> StorageError {
    match e {
        wal::Error::Compacted { .. } => StorageError::Compacted,
        wal::Error::Unavailable { .. } => StorageError::Unavailable,
        other => StorageError::Other(other.to_string()),
    }
}

/// A snapshot whose file is being written (see [`WalStorage::begin_snapshot`]).
pub struct SnapshotJob {
    /// The applied index it images.
    pub index: u64,
    writer: SnapshotWriter,
}

/// Where a snapshot's file is written.
enum SnapshotWriter {
    /// On a thread of its own.
    Thread(std::thread::JoinHandle<Result<SnapshotMetadata>>),
    /// Already, on the caller's thread (see [`WalStorage::set_inline`]).
    Done(Result<SnapshotMetadata>),
}

impl SnapshotJob {
    /// True once its file is written (or failed): finishing it will not wait.
    pub fn is_finished(&self) -> bool {
        match &self.writer {
            SnapshotWriter::Thread(handle) => handle.is_finished(),
            SnapshotWriter::Done(_) => true,
        }
    }
}

/// What the WAL's syncs cost so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct SyncStats {
    /// Syncs.
    pub count: u64,
    /// Microseconds spent in them.
    pub micros: u64,
    /// The longest, microseconds.
    pub max_micros: u64,
}

/// The node's durable state: the WAL and the latest snapshot.
///
/// Only the snapshot's metadata stays in memory; its data (the whole state machine image) is
/// read from its file when a follower needs it, not held for the life of the process.
pub struct WalStorage {
    sync_stats: SyncStats,
    /// Where each sync's duration is recorded.
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
    /// The snapshot in force; index 0 when there is none.
    snapshot: SnapshotMetadata,
    /// The snapshot read at open, until the node takes it to restore its state machine.
    loaded: Option<Snapshot>,
    wal: wal::Wal,
    fs: Arc<dyn wal::fs::Fs>,
    snap_dir: PathBuf,
    scratch: Vec<Vec<u8>>,
    /// The newest entries as appended, handed back without reading the WAL.
    cache: EntryCache,
    /// Write snapshot files and delete old files on the calling thread, not helpers
    /// (deterministic crash tests and the simulator).
    inline: bool,
}

impl WalStorage {
    /// Opens (or creates) the state under `data_dir`.
    pub fn open(
        data_dir: &Path,
        identity: &wal::Identity,
        options: wal::Options,
    ) -> Result<(WalStorage, wal::Recovery)> {
        WalStorage::open_on(wal::fs::os(), data_dir, identity, options)
    }

    /// [`WalStorage::open`] on the file system `fs` (a simulated disk in tests).
    pub fn open_on(
        fs: Arc<dyn wal::fs::Fs>,
        data_dir: &Path,
        identity: &wal::Identity,
        options: wal::Options,
    ) -> Result<(WalStorage, wal::Recovery)> {
        let (wal, recovery) =
            wal::Wal::open_on(fs.clone(), &data_dir.join("wal"), identity, options)?;
        let snap_dir = data_dir.join("snap");
        let marked = recovery.snapshot.as_ref().map(|m| m.index);
        let snapshot = match marked {
            Some(index) => {
                let snapshot = snapfile::read(fs.as_ref(), &snap_dir, index)?;
                let marker = recovery.snapshot.as_ref().expect("marked");
                if snapshot.metadata.term != marker.term {
                    return Err(Error::Corrupt {
                        path: snap_dir.clone(),
                        reason: format!(
                            "snapshot {index} has term {}, the log says {}",
                            snapshot.metadata.term, marker.term
                        ),
                    });
                }
                snapshot
            }
            None => Snapshot::default(),
        };
        // A snapshot file written but never marked (a crash in between) is not in force.
        snapfile::prune(
            fs.as_ref(),
            &snap_dir,
            marked.unwrap_or(0),
            snapfile::SNAPSHOT_FILES_KEPT,
        )?;
        if let Some(index) = marked {
            info!("storage: snapshot at index {index} in force");
        }
        Ok((
            WalStorage {
                sync_stats: SyncStats::default(),
                metrics: None,
                snapshot: snapshot.metadata.clone(),
                loaded: (!snapshot.is_empty()).then_some(snapshot),
                wal,
                fs,
                snap_dir,
                scratch: Vec::new(),
                cache: EntryCache::default(),
                inline: false,
            },
            recovery,
        ))
    }

    /// The data dir's incarnation (see `wal::Wal::incarnation`).
    pub fn incarnation(&self) -> u64 {
        self.wal.incarnation()
    }

    /// True when nothing was ever written (a new data dir, or one never bootstrapped).
    pub fn is_empty(&self) -> bool {
        self.wal.hard_state().is_none() && self.wal.last_index() == 0 && self.snapshot.index == 0
    }

    /// The metadata of the snapshot in force (index 0: none).
    pub fn current_snapshot(&self) -> &SnapshotMetadata {
        &self.snapshot
    }

    /// The snapshot in force as read when the storage was opened, once (for the node to
    /// restore its state machine from); None when there is none or it was taken.
    pub fn take_loaded_snapshot(&mut self) -> Option<Snapshot> {
        self.loaded.take()
    }

    /// Where the snapshot file at `index` is (or would be).
    pub fn snapshot_path(&self, index: u64) -> PathBuf {
        snapfile::path(&self.snap_dir, index)
    }

    /// The snapshot in force, data included, read from its file (checksum verified).
    pub fn load_snapshot(&self) -> Result<Snapshot> {
        let snapshot = snapfile::read(self.fs.as_ref(), &self.snap_dir, self.snapshot.index)?;
        if snapshot.metadata != self.snapshot {
            return Err(Error::Corrupt {
                path: self.snap_dir.clone(),
                reason: format!(
                    "snapshot file {} does not match the snapshot in force",
                    self.snapshot.index
                ),
            });
        }
        Ok(snapshot)
    }

    /// Appends entries (replacing any conflicting suffix); durable after [`WalStorage::sync`].
    pub fn append(&mut self, entries: &[Entry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.resize_with(entries.len().max(scratch.len()), Vec::new);
        for (e, buf) in entries.iter().zip(scratch.iter_mut()) {
            encode_entry_head(e, buf);
        }
        let refs: Vec<wal::EntryRef<'_>> = entries
            .iter()
            .zip(&scratch)
            .map(|(e, head)| wal::EntryRef { index: e.index, term: e.term, head, data: &e.data })
            .collect();
        let result = self.wal.append_entries(&refs);
        drop(refs);
        self.scratch = scratch;
        match result {
            Ok(()) => self.cache.append(entries),
            Err(_) => self.cache.clear(),
        }
        result.map_err(Error::from)
    }

    /// The state machine has applied through `index`: those entries need not be kept in
    /// memory any more (a follower that still needs one gets it from the WAL).
    pub fn release_applied(&mut self, index: u64) {
        self.cache.forget_through(index);
    }

    /// Records the hard state; durable after [`WalStorage::sync`].
    pub fn set_hard_state(&mut self, hs: &HardState) -> Result<()> {
        let hs = wal::HardState { term: hs.term, vote: hs.vote, commit: hs.commit };
        Ok(self.wal.set_hard_state(hs)?)
    }

    /// Installs a snapshot: its file first (durable), then the log's marker.
    pub fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Result<()> {
        snapfile::write(self.fs.as_ref(), &self.snap_dir, snapshot)?;
        self.mark_snapshot(&snapshot.metadata)
    }

    /// Installs the snapshot an empty data dir starts from (`raftd --restore`), and keeps it
    /// for [`WalStorage::take_loaded_snapshot`]; durable after [`WalStorage::sync`].
    pub fn install_initial_snapshot(&mut self, snapshot: Snapshot) -> Result<()> {
        assert!(self.is_empty(), "a restored snapshot goes into an empty data dir");
        self.apply_snapshot(&snapshot)?;
        self.loaded = Some(snapshot);
        Ok(())
    }

    fn mark_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<()> {
        let conf_state = codec::encode_value(&meta.conf_state)?;
        self.wal.mark_snapshot(wal::SnapshotMarker {
            index: meta.index,
            term: meta.term,
            conf_state,
        })?;
        self.snapshot = meta.clone();
        self.loaded = None;
        self.cache.retain_within(self.wal.first_index(), self.wal.last_index());
        Ok(())
    }

    /// Starts snapshotting the state machine as of the applied `index` and returns at once:
    /// `encode` (which must write the image of the state at `index`) runs on another thread,
    /// writing straight into the file, which is then synced there too, so the event loop
    /// waits for neither the CPU work nor the disk, and the image is never held whole in
    /// memory. Put it in force with [`WalStorage::finish_snapshot`].
    pub fn begin_snapshot(
        &self,
        index: u64,
        conf_state: ConfState,
        encode: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()> + Send + 'static,
    ) -> Result<SnapshotJob> {
        let term = self.wal.term(index)?;
        let metadata = SnapshotMetadata { conf_state, index, term };
        let dir = self.snap_dir.clone();
        let fs = self.fs.clone();
        let write = move || {
            snapfile::write_streamed(fs.as_ref(), &dir, &metadata, encode)?;
            Ok(metadata)
        };
        if self.inline {
            return Ok(SnapshotJob { index, writer: SnapshotWriter::Done(write()) });
        }
        let handle = std::thread::Builder::new()
            .name("snapshot-writer".into())
            .spawn(write)
            .map_err(|e| Error::SnapshotNotWritten(format!("cannot start its writer: {e}")))?;
        Ok(SnapshotJob { index, writer: SnapshotWriter::Thread(handle) })
    }

    /// Waits for a snapshot's file, then puts the snapshot in force (the log's marker, durably)
    /// and drops log entries more than `keep_entries` behind it. A file that could not be
    /// written (but for a failed sync, which is fatal) is [`Error::SnapshotNotWritten`]:
    /// nothing changed. A snapshot no newer than the
    /// one in force (one installed from the leader meanwhile) is discarded. Returns the index
    /// of the snapshot in force.
    pub fn finish_snapshot(&mut self, job: SnapshotJob, keep_entries: u64) -> Result<u64> {
        let written = match job.writer {
            SnapshotWriter::Thread(handle) => handle
                .join()
                .map_err(|_| Error::Fatal("the snapshot writer thread panicked".into()))?,
            SnapshotWriter::Done(written) => written,
        };
        let metadata = match written {
            Ok(metadata) => metadata,
            // A failed sync is never retried: the node stops.
            Err(e @ Error::Fatal(_)) => return Err(e),
            Err(e) => return Err(Error::SnapshotNotWritten(e.to_string())),
        };
        let index = metadata.index;
        let mut garbage = None;
        if index <= self.snapshot.index {
            info!("snapshot at {index} superseded by {}", self.snapshot.index);
        } else {
            self.mark_snapshot(&metadata)?;
            self.sync()?;
            let compact_to = index.saturating_sub(keep_entries) + 1;
            if compact_to > self.wal.first_index() {
                garbage = Some(self.wal.compact_deferred(compact_to)?);
                self.cache.retain_within(self.wal.first_index(), self.wal.last_index());
            }
        }
        // Deleting files (a segment, an old snapshot) takes milliseconds each: not on the
        // loop. The compaction and the new snapshot are durable already; a file left behind
        // by a crash or an error is deleted by a later snapshot.
        let in_force = self.snapshot.index;
        let snap_dir = self.snap_dir.clone();
        let fs = self.fs.clone();
        let delete = move || {
            if let Some(garbage) = garbage {
                if let Err(e) = garbage.delete() {
                    warn!("deleting compacted WAL segments: {e}");
                }
            }
            if let Err(e) = snapfile::prune_older(
                fs.as_ref(),
                &snap_dir,
                in_force,
                snapfile::SNAPSHOT_FILES_KEPT,
            ) {
                warn!("deleting old snapshot files: {e}");
            }
        };
        if self.inline {
            delete();
        } else if let Err(e) =
            std::thread::Builder::new().name("snapshot-janitor".into()).spawn(delete)
        {
            warn!("cannot start a thread to delete old files ({e}); they stay until a compaction after a restart");
        }
        Ok(in_force)
    }

    /// Snapshots the state machine image `data` at the applied `index`, then drops log
    /// entries more than `keep_entries` behind it. Durable on return. (The node uses
    /// begin/finish, so as not to wait; this synchronous form is for tests.)
    #[cfg(test)]
    pub fn create_snapshot(
        &mut self,
        index: u64,
        conf_state: ConfState,
        data: Vec<u8>,
        keep_entries: u64,
    ) -> Result<()> {
        let job = self.begin_snapshot(index, conf_state, move |w| w.write_all(&data))?;
        self.finish_snapshot(job, keep_entries).map(drop)
    }

    /// Writes snapshot files and deletes compacted segments and old snapshot files on the
    /// calling thread instead of helper threads, so that the order of file-system operations
    /// is deterministic (crash-state tests, the simulator).
    pub fn set_inline(&mut self, inline: bool) {
        self.inline = inline;
    }

    /// Makes everything written durable. An error is fatal to the node.
    pub fn sync(&mut self) -> Result<()> {
        let started = std::time::Instant::now();
        self.wal.sync().map_err(|e| Error::Fatal(e.to_string()))?;
        self.record_sync(started.elapsed());
        Ok(())
    }

    /// Starts a sync of everything written so far, to be run off the loop
    /// ([`wal::SyncJob::run`]) and finished with [`WalStorage::finish_sync`]; nothing else
    /// syncs meanwhile.
    pub fn begin_sync(&mut self) -> Result<wal::SyncJob> {
        self.wal.begin_sync().map_err(|e| Error::Fatal(e.to_string()))
    }

    /// Records the end of a sync begun by [`WalStorage::begin_sync`], which took `took` on
    /// the disk. An error is fatal to the node.
    pub fn finish_sync(
        &mut self,
        job: wal::SyncJob,
        result: wal::Result<()>,
        took: std::time::Duration,
    ) -> Result<()> {
        self.wal.finish_sync(job, result).map_err(|e| Error::Fatal(e.to_string()))?;
        self.record_sync(took);
        Ok(())
    }

    /// True while a sync begun by [`WalStorage::begin_sync`] is not finished.
    pub fn sync_in_flight(&self) -> bool {
        self.wal.sync_in_flight()
    }

    fn record_sync(&mut self, elapsed: std::time::Duration) {
        if let Some(metrics) = &self.metrics {
            metrics.wal_fsync.observe(elapsed);
        }
        let micros = elapsed.as_micros() as u64;
        self.sync_stats.count += 1;
        self.sync_stats.micros += micros;
        self.sync_stats.max_micros = self.sync_stats.max_micros.max(micros);
    }

    /// Records each sync's duration in `metrics`.
    pub fn set_metrics(&mut self, metrics: std::sync::Arc<crate::metrics::Metrics>) {
        self.metrics = Some(metrics);
    }

    /// Syncs so far, and their time.
    pub fn sync_stats(&self) -> SyncStats {
        self.sync_stats
    }

    /// The first index in the log.
    pub fn first_index_now(&self) -> u64 {
        self.wal.first_index()
    }

    /// The last index in the log.
    pub fn last_index_now(&self) -> u64 {
        self.wal.last_index()
    }
}

impl raft::Storage for WalStorage {
    fn initial_state(&self) -> std::result::Result<raft::RaftState, StorageError> {
        let hard_state = self
            .wal
            .hard_state()
            .map(|h| HardState { term: h.term, vote: h.vote, commit: h.commit })
            .unwrap_or_default();
        // A snapshot covers only committed entries, so its index is committed even when the
        // hard state written after its marker did not reach the disk before a crash.
        let hard_state =
            HardState { commit: hard_state.commit.max(self.snapshot.index), ..hard_state };
        Ok(raft::RaftState { hard_state, conf_state: self.snapshot.conf_state.clone() })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: u64,
    ) -> std::result::Result<Vec<Entry>, StorageError> {
        // The log's bounds decide what exists; the cache only how it is fetched.
        let (first, last) = (self.wal.first_index(), self.wal.last_index());
        if low >= first && high <= last + 1 {
            if let Some(entries) = self.cache.entries(low, high, max_size) {
                return Ok(entries);
            }
        }
        let entries = self.wal.entries(low, high, max_size).map_err(storage_error)?;
        entries.into_iter().map(decode_entry).collect()
    }

    fn term(&self, index: u64) -> std::result::Result<u64, StorageError> {
        if index == self.snapshot.index && index > 0 {
            return Ok(self.snapshot.term);
        }
        self.wal.term(index).map_err(storage_error)
    }

    fn first_index(&self) -> std::result::Result<u64, StorageError> {
        Ok(self.wal.first_index())
    }

    fn last_index(&self) -> std::result::Result<u64, StorageError> {
        Ok(self.wal.last_index())
    }

    fn snapshot(&self, _request_index: u64) -> std::result::Result<Snapshot, StorageError> {
        if self.snapshot.index == 0 {
            warn!("storage: a snapshot was asked for but none exists yet");
            return Err(StorageError::SnapshotTemporarilyUnavailable);
        }
        // A file damaged since it was written: no follower gets it (the core would stop the
        // node on any other error), this node goes on serving, and the next snapshot taken
        // replaces the file.
        self.load_snapshot().map_err(|e| {
            error!("storage: the snapshot in force cannot be sent: {e}");
            StorageError::SnapshotTemporarilyUnavailable
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn identity() -> wal::Identity {
        wal::Identity { node_id: 1, cluster_id: "t".into() }
    }

    fn entry(index: u64, term: u64, entry_type: EntryType, data: &[u8], context: &[u8]) -> Entry {
        Entry {
            entry_type,
            term,
            index,
            data: Bytes::copy_from_slice(data),
            context: Bytes::copy_from_slice(context),
        }
    }

    #[test]
    fn entries_hard_state_and_snapshots_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let opts = wal::Options { segment_size_bytes: 1 << 20, ..wal::Options::default() };
        let (mut s, _) = WalStorage::open(dir.path(), &identity(), opts.clone()).unwrap();
        assert!(s.is_empty());
        let ents: Vec<Entry> = (1..=10)
            .map(|i| {
                entry(
                    i,
                    1,
                    if i == 1 { EntryType::ConfChange } else { EntryType::Normal },
                    &[i as u8],
                    b"ctx",
                )
            })
            .collect();
        s.append(&ents).unwrap();
        s.set_hard_state(&HardState { term: 1, vote: 1, commit: 10 }).unwrap();
        s.sync().unwrap();
        let cs = ConfState { voters: vec![1], ..ConfState::default() };
        s.create_snapshot(8, cs.clone(), b"image".to_vec(), 2).unwrap();
        drop(s);
        let (s, _) = WalStorage::open(dir.path(), &identity(), opts).unwrap();
        assert!(!s.is_empty());
        let state = s.initial_state().unwrap();
        assert_eq!(state.hard_state, HardState { term: 1, vote: 1, commit: 10 });
        assert_eq!(state.conf_state, cs);
        assert_eq!(s.snapshot(0).unwrap().data, b"image");
        assert_eq!(s.term(8), Ok(1));
        assert_eq!(s.last_index(), Ok(10));
        assert_eq!(s.entries(9, 11, u64::MAX).unwrap(), ents[8..].to_vec());
        assert_eq!(s.first_index(), Ok(7), "two entries kept behind the snapshot");
        assert_eq!(s.entries(1, 2, u64::MAX), Err(StorageError::Compacted));
    }

    /// Entries read back while they are among the newest share the bytes they were appended
    /// with (no copy out of the WAL); every read, cached or not, agrees with the WAL's as
    /// the log's suffix is replaced, a snapshot installed and the log compacted.
    #[test]
    fn the_newest_entries_are_read_back_sharing_their_bytes_and_agree_with_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let opts = wal::Options { segment_size_bytes: 1 << 20, ..wal::Options::default() };
        let (mut s, _) = WalStorage::open(dir.path(), &identity(), opts.clone()).unwrap();
        let payload = |i: u64, term: u64| format!("entry {i} of term {term}").into_bytes();
        let ents: Vec<Entry> = (1..=20)
            .map(|i| {
                entry(i, 1, EntryType::Normal, &payload(i, 1), if i % 3 == 0 { b"c" } else { b"" })
            })
            .collect();
        s.append(&ents).unwrap();
        let read = s.entries(5, 21, u64::MAX).unwrap();
        assert_eq!(read, ents[4..].to_vec());
        for (got, appended) in read.iter().zip(&ents[4..]) {
            assert_eq!(got.data.as_ptr(), appended.data.as_ptr(), "entry {} shared", got.index);
        }
        // A conflicting suffix from 15 on, of term 2.
        let tail: Vec<Entry> =
            (15..=17).map(|i| entry(i, 2, EntryType::Normal, &payload(i, 2), b"")).collect();
        s.append(&tail).unwrap();
        let want: Vec<Entry> = ents[..14].iter().chain(&tail).cloned().collect();
        assert_eq!(s.entries(1, 18, u64::MAX).unwrap(), want);
        assert_eq!(s.entries(15, 19, u64::MAX), Err(StorageError::Unavailable));
        // The size limit applies as the WAL applies it.
        let three: u64 = want[..3].iter().map(crate::entry_cache::stored_len).sum();
        assert_eq!(s.entries(1, 18, three).unwrap().len(), 3);
        assert_eq!(s.entries(1, 18, three - 1).unwrap().len(), 2);
        s.sync().unwrap();
        let cs = ConfState { voters: vec![1], ..ConfState::default() };
        s.create_snapshot(12, cs.clone(), b"image".to_vec(), 2).unwrap();
        assert_eq!(s.entries(1, 2, u64::MAX), Err(StorageError::Compacted));
        assert_eq!(s.entries(11, 18, u64::MAX).unwrap(), want[10..].to_vec());
        // A snapshot past the log's end resets it: nothing old is served.
        let leader = Snapshot {
            data: b"leader image".to_vec(),
            metadata: SnapshotMetadata { index: 40, term: 3, conf_state: cs },
        };
        s.apply_snapshot(&leader).unwrap();
        assert_eq!(s.entries(15, 16, u64::MAX), Err(StorageError::Compacted));
        let next = vec![entry(41, 3, EntryType::Normal, b"after", b"")];
        s.append(&next).unwrap();
        assert_eq!(s.entries(41, 42, u64::MAX).unwrap(), next);
        s.sync().unwrap();
        drop(s);
        let (s, _) = WalStorage::open(dir.path(), &identity(), opts).unwrap();
        assert_eq!(s.entries(41, 42, u64::MAX).unwrap(), next, "the same from the WAL");
    }

    #[test]
    fn a_snapshot_written_in_the_background_is_discarded_if_the_leader_sent_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) =
            WalStorage::open(dir.path(), &identity(), wal::Options::default()).unwrap();
        let ents: Vec<Entry> =
            (1..=10).map(|i| entry(i, 1, EntryType::Normal, b"x", b"")).collect();
        s.append(&ents).unwrap();
        s.sync().unwrap();
        let cs = ConfState { voters: vec![1, 2], ..ConfState::default() };
        let job = s.begin_snapshot(8, cs.clone(), |w| w.write_all(b"old image")).unwrap();
        assert_eq!(job.index, 8);
        let leader = Snapshot {
            data: b"leader image".to_vec(),
            metadata: SnapshotMetadata { index: 50, term: 4, conf_state: cs },
        };
        s.apply_snapshot(&leader).unwrap();
        s.sync().unwrap();
        assert_eq!(s.finish_snapshot(job, 0).unwrap(), 50, "the newer snapshot stays in force");
        assert_eq!(s.current_snapshot(), &leader.metadata);
        assert_eq!(
            snapfile::list(&wal::fs::OsFs, &dir.path().join("snap")).unwrap().last(),
            Some(&50)
        );
        drop(s);
        let (mut s, _) =
            WalStorage::open(dir.path(), &identity(), wal::Options::default()).unwrap();
        assert_eq!(s.take_loaded_snapshot(), Some(leader.clone()));
        assert_eq!(s.take_loaded_snapshot(), None, "given once");
        assert_eq!(s.snapshot(0).unwrap(), leader, "read from its file");
    }

    #[test]
    fn a_snapshot_file_damaged_after_opening_is_unavailable_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) =
            WalStorage::open(dir.path(), &identity(), wal::Options::default()).unwrap();
        let ents: Vec<Entry> = (1..=5).map(|i| entry(i, 1, EntryType::Normal, b"x", b"")).collect();
        s.append(&ents).unwrap();
        s.sync().unwrap();
        let cs = ConfState { voters: vec![1], ..ConfState::default() };
        s.create_snapshot(5, cs, b"image".to_vec(), 0).unwrap();
        assert_eq!(s.snapshot(0).unwrap().data, b"image");
        let file = dir.path().join("snap").join(
            snapfile::list(&wal::fs::OsFs, &dir.path().join("snap"))
                .unwrap()
                .last()
                .map(|i| format!("snap-{i:020}.snap"))
                .unwrap(),
        );
        let mut bytes = std::fs::read(&file).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&file, bytes).unwrap();
        assert_eq!(s.snapshot(0), Err(StorageError::SnapshotTemporarilyUnavailable));
        assert!(s.load_snapshot().unwrap_err().to_string().contains("checksum"));
    }

    #[test]
    fn a_follower_snapshot_resets_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) =
            WalStorage::open(dir.path(), &identity(), wal::Options::default()).unwrap();
        s.append(&[entry(1, 1, EntryType::Normal, b"a", b"")]).unwrap();
        let snap = Snapshot {
            data: b"leader image".to_vec(),
            metadata: SnapshotMetadata {
                index: 50,
                term: 4,
                conf_state: ConfState { voters: vec![1, 2], ..ConfState::default() },
            },
        };
        s.apply_snapshot(&snap).unwrap();
        s.sync().unwrap();
        assert_eq!((s.first_index(), s.last_index(), s.term(50)), (Ok(51), Ok(50), Ok(4)));
        drop(s);
        let (s, _) = WalStorage::open(dir.path(), &identity(), wal::Options::default()).unwrap();
        assert_eq!(s.current_snapshot(), &snap.metadata);
        assert_eq!(s.snapshot(0).unwrap(), snap);
        assert_eq!(s.last_index(), Ok(50));
    }

    fn sim_open(fs: &wal::fs::SimFs, dir: &str) -> WalStorage {
        let shared: Arc<dyn wal::fs::Fs> = Arc::new(fs.clone());
        let options = wal::Options { segment_size_bytes: 1 << 16, ..wal::Options::default() };
        WalStorage::open_on(shared, Path::new(dir), &identity(), options).expect("opens").0
    }

    /// Issue 13, item 1: the data dir, `wal/`, `snap/`, segments and snapshot files are
    /// durable once written, on a disk that loses every directory entry not synced.
    #[test]
    fn directory_entries_are_durable_after_the_first_sync() {
        use wal::fs::CrashChoice::KeepNone;
        let disk = wal::fs::SimFs::new();
        let dir = "/var/lib/raftd/node-1";
        let mut s = sim_open(&disk, dir);
        let ents: Vec<Entry> = (1..=5).map(|i| entry(i, 1, EntryType::Normal, b"x", b"")).collect();
        s.append(&ents).unwrap();
        s.set_hard_state(&HardState { term: 1, vote: 1, commit: 5 }).unwrap();
        s.sync().unwrap();
        let after_power_loss = disk.power_cut_keeping(KeepNone);
        let s2 = sim_open(&after_power_loss, dir);
        assert!(!s2.is_empty(), "the log survives: it must not bootstrap a second history");
        assert_eq!(s2.last_index(), Ok(5));
        let cs = ConfState { voters: vec![1], ..ConfState::default() };
        s.create_snapshot(5, cs, b"image".to_vec(), 0).unwrap();
        let after_power_loss = disk.power_cut_keeping(KeepNone);
        let s3 = sim_open(&after_power_loss, dir);
        assert_eq!(s3.current_snapshot().index, 5);
        assert_eq!(s3.load_snapshot().unwrap().data, b"image");
    }

    /// Issue 13, item 4: installing a leader's snapshot writes the snapshot file, the log's
    /// marker, then the hard state; a power cut at any point of it, keeping any of what was
    /// not synced, leaves a state the node starts from.
    #[test]
    fn every_prefix_of_a_snapshot_install_recovers() {
        let dir = "/data";
        let setup = || {
            let disk = wal::fs::SimFs::new();
            let mut s = sim_open(&disk, dir);
            let ents: Vec<Entry> =
                (1..=5).map(|i| entry(i, 1, EntryType::Normal, b"x", b"")).collect();
            s.append(&ents).unwrap();
            s.set_hard_state(&HardState { term: 1, vote: 1, commit: 5 }).unwrap();
            s.sync().unwrap();
            (disk, s)
        };
        let snapshot = Snapshot {
            data: vec![9; 10_000],
            metadata: SnapshotMetadata {
                index: 50,
                term: 2,
                conf_state: ConfState { voters: vec![1, 2, 3], ..ConfState::default() },
            },
        };
        let install = |s: &mut WalStorage| {
            s.apply_snapshot(&snapshot).unwrap();
            s.set_hard_state(&HardState { term: 2, vote: 0, commit: 50 }).unwrap();
            s.sync().unwrap();
        };
        let (disk, mut s) = setup();
        let start = disk.op_count();
        install(&mut s);
        let end = disk.op_count();
        let mut states = 0;
        for k in start + 1..=end + 1 {
            let (disk, mut s) = setup();
            disk.arm_capture(k);
            install(&mut s);
            let crashed = disk.take_captured().unwrap_or_else(|| disk.fork());
            let n = crashed.unsynced_items();
            let mut choices: Vec<Vec<bool>> = vec![vec![false; n], vec![true; n]];
            for i in 0..n {
                choices.push((0..n).map(|j| j == i).collect());
                choices.push((0..n).map(|j| j != i).collect());
            }
            for choice in choices {
                let image = crashed.power_cut(&mut |i| choice[i]);
                let storage = sim_open(&image, dir);
                let snapshot_index = storage.current_snapshot().index;
                let state = storage.initial_state().unwrap();
                assert!(state.hard_state.commit >= 5, "op {k}: {state:?}");
                let config =
                    raft::Config { id: 1, applied: snapshot_index, ..raft::Config::default() };
                if let Err(e) = raft::RawNode::new(&config, storage) {
                    panic!("power cut before op {k} of the install ({choice:?}): {e}");
                }
                states += 1;
            }
        }
        assert!(states > 20, "{states} crash states");
    }

    /// Issue 13, item 6: a snapshot file that does not fit on the disk is not written, leaves
    /// no partial file, and is not fatal: the log goes on, and once space is freed a snapshot
    /// is written.
    #[test]
    fn a_snapshot_that_does_not_fit_on_the_disk_is_not_written_and_the_log_goes_on() {
        let disk = wal::fs::SimFs::new();
        let mut s = sim_open(&disk, "/data");
        let ents: Vec<Entry> = (1..=5).map(|i| entry(i, 1, EntryType::Normal, b"x", b"")).collect();
        s.append(&ents).unwrap();
        s.sync().unwrap();
        disk.set_space_bytes_max(Some(disk.used_bytes() + 1000));
        let cs = ConfState { voters: vec![1], ..ConfState::default() };
        let err = s.create_snapshot(5, cs.clone(), vec![7; 100_000], 0).unwrap_err();
        assert!(matches!(err, Error::SnapshotNotWritten(_)), "{err}");
        assert!(err.to_string().contains("No space left"), "{err}");
        assert_eq!(s.current_snapshot().index, 0, "nothing changed");
        let names = wal::fs::Fs::list(&disk, Path::new("/data/snap")).unwrap();
        assert!(names.is_empty(), "no partial file left: {names:?}");
        s.append(&[entry(6, 1, EntryType::Normal, b"y", b"")]).unwrap();
        s.sync().unwrap();
        disk.set_space_bytes_max(None);
        s.create_snapshot(6, cs, vec![7; 100_000], 0).unwrap();
        assert_eq!(s.current_snapshot().index, 6);
    }
}
