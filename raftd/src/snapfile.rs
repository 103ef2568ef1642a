//! Snapshot files: the state machine image at an index, written atomically and checked.
//!
//! Layout of `snap-{index:020}.snap`: magic `RAFTSNAP` (8), format version u32 (4), reserved
//! (4), index u64 (8), term u64 (8), conf state length u32 (4), conf state (bincode), data
//! length u64 (8), data, crc32 of everything before it (4).

use std::path::{Path, PathBuf};

use raft::{ConfState, Snapshot, SnapshotMetadata};
use wal::fs::{Fs, OpenMode};

use crate::errors::{Error, Result};

const MAGIC: [u8; 8] = *b"RAFTSNAP";
/// The snapshot file's format version (its data: [`crate::kv::SNAPSHOT_FORMAT_VERSION`]).
pub const FILE_FORMAT_VERSION: u32 = 1;
const PREFIX: &str = "snap-";
const SUFFIX: &str = ".snap";
/// A snapshot file is written and synced this much at a time.
const WRITE_PIECE_BYTES: usize = 1024 * 1024;
/// Snapshot files kept; older ones are deleted.
pub const SNAPSHOT_FILES_KEPT: usize = 2;

fn file_name(index: u64) -> String {
    format!("{PREFIX}{index:020}{SUFFIX}")
}

/// The path of the snapshot file at `index` in `dir`.
pub fn path(dir: &Path, index: u64) -> PathBuf {
    dir.join(file_name(index))
}

fn parse_name(name: &str) -> Option<u64> {
    name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?.parse().ok()
}

/// Everything before the data: magic, version, reserved, index, term, conf state, data length.
fn encode_head(meta: &SnapshotMetadata, data_len: u64) -> Result<Vec<u8>> {
    let conf = codec::encode_value(&meta.conf_state)?;
    let mut out = Vec::with_capacity(44 + conf.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FILE_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&meta.index.to_le_bytes());
    out.extend_from_slice(&meta.term.to_le_bytes());
    out.extend_from_slice(&(conf.len() as u32).to_le_bytes());
    out.extend_from_slice(&conf);
    out.extend_from_slice(&data_len.to_le_bytes());
    Ok(out)
}

/// Decodes a snapshot file's bytes (`path` names it in errors): its checksum, format and
/// lengths checked.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<Snapshot> {
    let bad =
        |reason: &str| Error::Corrupt { path: path.to_path_buf(), reason: reason.to_string() };
    if bytes.len() < 48 || bytes[..8] != MAGIC {
        return Err(bad("not a snapshot file"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) != crc32fast::hash(body) {
        return Err(bad("checksum mismatch"));
    }
    let u32_at =
        |at: usize| u32::from_le_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&body[at..at + 8]);
        u64::from_le_bytes(b)
    };
    if u32_at(8) != FILE_FORMAT_VERSION {
        return Err(bad("unknown format version"));
    }
    let (index, term) = (u64_at(16), u64_at(24));
    let conf_len = u32_at(32) as usize;
    let conf_end = 36 + conf_len;
    if conf_end + 8 > body.len() {
        return Err(bad("conf state runs past the end"));
    }
    let conf_state: ConfState = codec::decode_payload(&body[36..conf_end])?;
    let data_len = u64_at(conf_end) as usize;
    if conf_end + 8 + data_len != body.len() {
        return Err(bad("data length does not match the file"));
    }
    let data = body[conf_end + 8..].to_vec();
    Ok(Snapshot { data, metadata: SnapshotMetadata { conf_state, index, term } })
}

/// Writes a snapshot file durably: temporary file, fsync, rename, directory fsync (the
/// directory itself created durably if missing).
pub fn write(fs: &dyn Fs, dir: &Path, snapshot: &Snapshot) -> Result<PathBuf> {
    write_streamed(fs, dir, &snapshot.metadata, |w| w.write_all(&snapshot.data))
}

/// [`write`] for data produced by `write_data` as it is written (a state machine image
/// encoded straight into the file, never held whole in memory): written in pieces of
/// [`WRITE_PIECE_BYTES`] after a head whose data length, and so whose checksum, is filled in
/// once the data is done. An error from the disk (a full one, say) is reported as the disk's,
/// whatever `write_data` made of it.
pub fn write_streamed(
    fs: &dyn Fs,
    dir: &Path,
    metadata: &SnapshotMetadata,
    write_data: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<PathBuf> {
    wal::fs::create_dir_all_durably(fs, dir)
        .map_err(|e| Error::io("create snapshot dir", dir, e))?;
    let path = dir.join(file_name(metadata.index));
    let tmp = wal::fs::temporary_path(&path);
    let head_len = encode_head(metadata, 0)?.len() as u64;
    let f = fs.open(&tmp, OpenMode::CreateTruncate).map_err(|e| Error::io("create", &tmp, e))?;
    let mut pieces = Pieces {
        file: f.as_ref(),
        offset: head_len,
        previous: None,
        crc: crc32fast::Hasher::new(),
        buf: Vec::new(),
        failed: None,
    };
    let written = (|| {
        let produced = write_data(&mut pieces).and_then(|()| std::io::Write::flush(&mut pieces));
        if let Some(e) = pieces.failed.take() {
            return Err(Error::io("write", &tmp, e));
        }
        produced.map_err(|e| Error::SnapshotNotWritten(format!("encoding the image: {e}")))?;
        // The head, now that the data's length is known, and the checksum of both.
        let data_len = pieces.offset - head_len;
        let head = encode_head(metadata, data_len)?;
        assert_eq!(head.len() as u64, head_len, "the head's length does not depend on the data");
        f.write_at(0, &head).map_err(|e| Error::io("write", &tmp, e))?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        crc.combine(&pieces.crc);
        f.write_at(pieces.offset, &crc.finalize().to_le_bytes())
            .map_err(|e| Error::io("write", &tmp, e))
    })();
    if let Err(e) = written {
        // A full disk, say: the partial file goes, the caller may try again later.
        drop(f);
        let _ = fs.remove_file(&tmp);
        return Err(e);
    }
    f.sync_all().map_err(|e| Error::Fatal(format!("fsync of {} failed: {e}", tmp.display())))?;
    drop(f);
    fs.rename(&tmp, &path).map_err(|e| Error::io("rename", &path, e))?;
    fs.sync_dir(dir)
        .map_err(|e| Error::Fatal(format!("fsync of {} failed: {e}", dir.display())))?;
    Ok(path)
}

/// The data of a snapshot file on its way to the disk, a piece at a time: each piece's
/// write-back is started as it is written and waited for before the next is started, since
/// a single write-back of the whole file at the final fsync would hold the disk (and so the
/// WAL's syncs, which clients wait on) for as long as it takes.
struct Pieces<'a> {
    file: &'a dyn wal::fs::FsFile,
    /// Where the next piece goes.
    offset: u64,
    /// The last piece written, whose write-back is waited for before the next one's starts.
    previous: Option<(u64, u64)>,
    /// Of the data written so far.
    crc: crc32fast::Hasher,
    /// Bytes not yet making a whole piece.
    buf: Vec<u8>,
    /// The disk's error, kept as it was.
    failed: Option<std::io::Error>,
}

impl Pieces<'_> {
    fn put(&mut self, piece: &[u8]) -> std::io::Result<()> {
        if let Err(e) = self.file.write_at(self.offset, piece) {
            let kept = std::io::Error::new(e.kind(), e.to_string());
            self.failed = Some(e);
            return Err(kept);
        }
        self.crc.update(piece);
        if let Some((start, len)) = self.previous {
            self.file.write_back(start, len, true);
        }
        self.file.write_back(self.offset, piece.len() as u64, false);
        self.previous = Some((self.offset, piece.len() as u64));
        self.offset += piece.len() as u64;
        Ok(())
    }
}

impl std::io::Write for Pieces<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.is_empty() && data.len() >= WRITE_PIECE_BYTES {
            // Large writes go out from where they are.
            self.put(&data[..WRITE_PIECE_BYTES])?;
            return Ok(WRITE_PIECE_BYTES);
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(WRITE_PIECE_BYTES);
        }
        let n = data.len().min(WRITE_PIECE_BYTES - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == WRITE_PIECE_BYTES {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let result = self.put(&buf);
        self.buf = buf;
        self.buf.clear();
        result
    }
}

/// Indexes of the snapshot files in `dir`, ascending.
pub fn list(fs: &dyn Fs, dir: &Path) -> Result<Vec<u64>> {
    if !fs.exists(dir) {
        return Ok(Vec::new());
    }
    let names = fs.list(dir).map_err(|e| Error::io("list", dir, e))?;
    let mut out: Vec<u64> = names.iter().filter_map(|n| parse_name(n)).collect();
    out.sort_unstable();
    Ok(out)
}

/// Reads the snapshot at `index`.
pub fn read(fs: &dyn Fs, dir: &Path, index: u64) -> Result<Snapshot> {
    let path = dir.join(file_name(index));
    let bytes = fs.read(&path).map_err(|e| Error::io("read", &path, e))?;
    decode(&path, &bytes)
}

/// Deletes every snapshot file but the newest `keep` at or below `upto`, any above it, and
/// temporary files left by a write that a crash or an error cut short.
pub fn prune(fs: &dyn Fs, dir: &Path, upto: u64, keep: usize) -> Result<()> {
    prune_files(fs, dir, upto, keep, true)
}

/// Deletes every snapshot file but the newest `keep` at or below `upto`, leaving those above
/// it alone (a newer snapshot may be being written meanwhile).
pub fn prune_older(fs: &dyn Fs, dir: &Path, upto: u64, keep: usize) -> Result<()> {
    prune_files(fs, dir, upto, keep, false)
}

fn prune_files(fs: &dyn Fs, dir: &Path, upto: u64, keep: usize, at_open: bool) -> Result<()> {
    let all = list(fs, dir)?;
    let (below, above): (Vec<u64>, Vec<u64>) = all.into_iter().partition(|&i| i <= upto);
    let above = if at_open { above } else { Vec::new() };
    let doomed = below.iter().take(below.len().saturating_sub(keep)).chain(above.iter());
    let mut paths: Vec<PathBuf> = doomed.map(|index| dir.join(file_name(*index))).collect();
    if at_open && fs.exists(dir) {
        let names = fs.list(dir).map_err(|e| Error::io("list", dir, e))?;
        let leftovers = names.iter().filter(|n| {
            // `snap-N.snap.tmp`, or `snap-N.tmp` as earlier versions named them.
            n.strip_suffix(wal::fs::TEMPORARY_SUFFIX).is_some_and(|f| {
                parse_name(f).is_some() || parse_name(&format!("{f}{SUFFIX}")).is_some()
            })
        });
        paths.extend(leftovers.map(|n| dir.join(n)));
    }
    if paths.is_empty() {
        return Ok(());
    }
    for path in paths {
        fs.remove_file(&path).map_err(|e| Error::io("delete", &path, e))?;
    }
    fs.sync_dir(dir).map_err(|e| Error::io("sync", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use wal::fs::OsFs;

    #[test]
    fn snapshot_files_round_trip_and_detect_damage() {
        let dir = tempfile::tempdir().unwrap();
        let snap = Snapshot {
            data: b"state".to_vec(),
            metadata: SnapshotMetadata {
                index: 42,
                term: 3,
                conf_state: ConfState { voters: vec![1, 2, 3], ..ConfState::default() },
            },
        };
        let path = write(&OsFs, dir.path(), &snap).unwrap();
        assert_eq!(read(&OsFs, dir.path(), 42).unwrap(), snap);
        let mut bytes = fs::read(&path).unwrap();
        bytes[40] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(read(&OsFs, dir.path(), 42), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn a_snapshot_of_several_pieces_round_trips_and_its_last_byte_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..WRITE_PIECE_BYTES * 3 + 12345).map(|i| (i % 251) as u8).collect();
        let snap = Snapshot {
            data,
            metadata: SnapshotMetadata { index: 7, term: 2, conf_state: ConfState::default() },
        };
        let path = write(&OsFs, dir.path(), &snap).unwrap();
        assert_eq!(read(&OsFs, dir.path(), 7).unwrap(), snap);
        let mut bytes = fs::read(&path).unwrap();
        let last_data_byte = bytes.len() - 5;
        bytes[last_data_byte] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(read(&OsFs, dir.path(), 7), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn prune_keeps_the_newest_and_drops_unmarked_ones_and_leftover_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        for index in [10, 20, 30, 40] {
            let snap = Snapshot {
                metadata: SnapshotMetadata { index, ..SnapshotMetadata::default() },
                ..Snapshot::default()
            };
            write(&OsFs, dir.path(), &snap).unwrap();
        }
        std::fs::write(dir.path().join("snap-00000000000000000050.snap.tmp"), b"partial").unwrap();
        std::fs::write(dir.path().join("unrelated.tmp"), b"not ours").unwrap();
        prune(&OsFs, dir.path(), 30, 2).unwrap();
        assert_eq!(list(&OsFs, dir.path()).unwrap(), vec![20, 30]);
        let mut names: Vec<String> = OsFs.list(dir.path()).unwrap();
        names.sort();
        assert_eq!(
            names,
            ["snap-00000000000000000020.snap", "snap-00000000000000000030.snap", "unrelated.tmp"],
            "leftover temporary snapshot files are removed, nothing else"
        );
    }
}
