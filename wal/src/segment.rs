//! Segment files: preallocated, memory-mapped, named by sequence number.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use memmap2::MmapMut;

use crate::errors::{Error, Result};
use crate::record::{write_segment_header, SEGMENT_HEADER_SIZE};

/// Suffix of segment file names: `{sequence:020}.wal`, so names sort by sequence.
pub const SEGMENT_SUFFIX: &str = ".wal";
const SEGMENT_NAME_DIGITS: usize = 20;

/// One mapped segment file.
pub struct Segment {
    /// Its path.
    pub path: PathBuf,
    file: File,
    /// The mapping of the whole file.
    pub map: MmapMut,
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

/// Reserves `len` bytes of disk for the file, so that writes through the mapping cannot fail
/// for lack of space (which would kill the process with SIGBUS).
fn preallocate(file: &File, path: &Path, len: u64) -> Result<()> {
    let len_off = libc::off_t::try_from(len)
        .map_err(|_| Error::Invalid(format!("segment size {len} does not fit off_t")))?;
    // SAFETY: posix_fallocate only reads its integer arguments; the descriptor is open and
    // owned by `file` for the duration of the call.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len_off) };
    match rc {
        0 => Ok(()),
        // File systems without fallocate: fall back to setting the length.
        libc::EOPNOTSUPP | libc::EINVAL => {
            file.set_len(len).map_err(|e| Error::io("set length of", path, e))
        }
        errno => Err(Error::io("preallocate", path, std::io::Error::from_raw_os_error(errno))),
    }
}

fn map(file: &File, path: &Path) -> Result<MmapMut> {
    // SAFETY: the mapping is of a file in the log's directory, which the log locks for its
    // exclusive use; nothing else truncates or writes it while it is mapped.
    #[allow(unsafe_code)]
    let map = unsafe { MmapMut::map_mut(file) };
    map.map_err(|e| Error::io("memory-map", path, e))
}

impl Segment {
    /// Creates segment `sequence` of `size` bytes in `dir`, with its header, durably.
    pub fn create(dir: &Path, sequence: u64, size: u64) -> Result<Segment> {
        let path = dir.join(segment_name(sequence));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io("create segment", &path, e))?;
        preallocate(&file, &path, size)?;
        let mut map = map(&file, &path)?;
        write_segment_header(&mut map, sequence);
        map.flush_range(0, SEGMENT_HEADER_SIZE)
            .map_err(|e| Error::SyncFailed { path: path.clone(), source: e })?;
        file.sync_all().map_err(|e| Error::SyncFailed { path: path.clone(), source: e })?;
        Ok(Segment { path, file, map })
    }

    /// Opens and maps an existing segment file.
    pub fn open(path: PathBuf) -> Result<Segment> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open segment", &path, e))?;
        let len = file.metadata().map_err(|e| Error::io("stat segment", &path, e))?.len();
        if len < SEGMENT_HEADER_SIZE as u64 {
            // A segment whose creation was cut short: make room for its header.
            preallocate(&file, &path, SEGMENT_HEADER_SIZE as u64)?;
        }
        let map = map(&file, &path)?;
        Ok(Segment { path, file, map })
    }

    /// Grows the file (and its mapping) to `size` bytes.
    pub fn extend(&mut self, size: u64) -> Result<()> {
        if (self.map.len() as u64) >= size {
            return Ok(());
        }
        preallocate(&self.file, &self.path, size)?;
        self.map = map(&self.file, &self.path)?;
        Ok(())
    }

    /// Makes the bytes `[offset, offset + len)` durable.
    pub fn sync_range(&self, offset: usize, len: usize) -> Result<()> {
        self.map
            .flush_range(offset, len)
            .map_err(|e| Error::SyncFailed { path: self.path.clone(), source: e })
    }
}

/// Makes the directory's entries (created, renamed, deleted files) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(|e| Error::io("open directory", dir, e))?;
    d.sync_all().map_err(|e| Error::SyncFailed { path: dir.to_path_buf(), source: e })
}

/// Takes an exclusive lock on `file`, so that two processes never open one log.
pub fn lock_exclusive(file: &File, path: &Path) -> Result<()> {
    // SAFETY: flock only reads its integer arguments; the descriptor is owned by `file`.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        let e = std::io::Error::last_os_error();
        Err(Error::io("lock (is another process using this data dir?)", path, e))
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
