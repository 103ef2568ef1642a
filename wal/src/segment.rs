//! Segment files: preallocated, memory-mapped, named by sequence number.

use std::path::{Path, PathBuf};

use crate::errors::{Error, Result};
use std::sync::Arc;

use crate::fs::{Fs, FsFile, FsMap, FsSyncer, OpenMode};
use crate::record::{write_segment_header, SEGMENT_HEADER_SIZE};

/// Suffix of segment file names: `{sequence:020}.wal`, so names sort by sequence.
pub const SEGMENT_SUFFIX: &str = ".wal";
const SEGMENT_NAME_DIGITS: usize = 20;

/// One mapped segment file.
pub struct Segment {
    /// Its path.
    pub path: PathBuf,
    file: Box<dyn FsFile>,
    map: Box<dyn FsMap>,
    syncer: Arc<dyn FsSyncer>,
}

/// The file name of segment `sequence`.
pub fn segment_name(sequence: u64) -> String {
    format!("{sequence:0width$}{SEGMENT_SUFFIX}", width = SEGMENT_NAME_DIGITS)
}

/// The sequence number in a segment file name, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(crate) fn sync_failed(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::SyncFailed { path: path.to_path_buf(), source }
}

impl Segment {
    /// Creates segment `sequence` of `size` bytes in `dir`, whose first record will be number
    /// `first_lsn`, durably: blocks reserved (so that writes through the mapping cannot fail
    /// for lack of space, which would kill the process with SIGBUS), header written, file and
    /// directory entry synced, all before any record is written into it. So a segment that
    /// exists after a crash has its header, and segments exist without gaps.
    pub fn create(
        fs: &dyn Fs,
        dir: &Path,
        sequence: u64,
        size: u64,
        first_lsn: u64,
    ) -> Result<Segment> {
        let path = dir.join(segment_name(sequence));
        let file = fs
            .open(&path, OpenMode::CreateNew)
            .map_err(|e| Error::io("create segment", &path, e))?;
        file.allocate(size).map_err(|e| Error::io("preallocate", &path, e))?;
        let mut map = file.map().map_err(|e| Error::io("memory-map", &path, e))?;
        map.update(0, SEGMENT_HEADER_SIZE, &mut |h| write_segment_header(h, sequence, first_lsn));
        map.flush_range(0, SEGMENT_HEADER_SIZE).map_err(sync_failed(&path))?;
        file.sync_all().map_err(sync_failed(&path))?;
        fs.sync_dir(dir).map_err(sync_failed(dir))?;
        let syncer = file.syncer().map_err(|e| Error::io("open segment", &path, e))?;
        Ok(Segment { path, file, map, syncer })
    }

    /// Opens and maps an existing segment file.
    pub fn open(fs: &dyn Fs, path: PathBuf) -> Result<Segment> {
        let file =
            fs.open(&path, OpenMode::Existing).map_err(|e| Error::io("open segment", &path, e))?;
        let len = file.len().map_err(|e| Error::io("stat segment", &path, e))?;
        if len < SEGMENT_HEADER_SIZE as u64 {
            // A segment whose creation was cut short: make room for its header.
            file.allocate(SEGMENT_HEADER_SIZE as u64)
                .map_err(|e| Error::io("preallocate", &path, e))?;
        }
        let map = file.map().map_err(|e| Error::io("memory-map", &path, e))?;
        let syncer = file.syncer().map_err(|e| Error::io("open segment", &path, e))?;
        Ok(Segment { path, file, map, syncer })
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        self.map.bytes()
    }

    /// Changes `[offset, offset + len)` through `change`.
    pub fn update(&mut self, offset: usize, len: usize, change: &mut dyn FnMut(&mut [u8])) {
        self.map.update(offset, len, change)
    }

    /// Grows the file (and its mapping) to `size` bytes, durably.
    pub fn extend(&mut self, size: u64) -> Result<()> {
        if (self.map.bytes().len() as u64) >= size {
            return Ok(());
        }
        self.file.allocate(size).map_err(|e| Error::io("preallocate", &self.path, e))?;
        self.file.sync_all().map_err(sync_failed(&self.path))?;
        self.map = self.file.map().map_err(|e| Error::io("memory-map", &self.path, e))?;
        Ok(())
    }

    /// Makes the bytes `[offset, offset + len)` durable.
    pub fn sync_range(&self, offset: usize, len: usize) -> Result<()> {
        self.map.flush_range(offset, len).map_err(sync_failed(&self.path))
    }

    /// A handle that makes ranges of this segment durable from any thread.
    pub fn syncer(&self) -> Arc<dyn FsSyncer> {
        self.syncer.clone()
    }

    /// Makes the whole file durable (including what an earlier process left in the cache).
    pub fn sync_all(&self) -> Result<()> {
        self.file.sync_all().map_err(sync_failed(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_sequence_and_parse_back() {
        assert_eq!(segment_name(42), "00000000000000000042.wal");
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert!(segment_name(9) < segment_name(10));
        assert_eq!(parse_segment_name("42.wal"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.wal"), None);
        assert_eq!(parse_segment_name("IDENTITY"), None);
    }
}
