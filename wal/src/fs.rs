//! The file-system work of a node's durable state, behind one small interface.
//!
//! The WAL, the identity file and the snapshot files do every create, write, map, sync,
//! rename, unlink and directory sync through [`Fs`]. [`OsFs`] is the operating system;
//! [`SimFs`] is a simulated disk that keeps what was made durable apart from what is only in
//! the page cache, so that a test can cut the power at any point and see what a real disk
//! could have kept (see [`SimFs`] for the model). [`ShadowFs`] is the operating system plus a
//! record of what was made durable, so that a power cut of a real process can be simulated
//! from outside it.
//!
//! # Durability rules the callers follow (and the simulation enforces)
//!
//! - Bytes written to a file or a mapping are durable only after a sync covering them:
//!   [`FsMap::flush_range`] or [`FsSyncer::sync_range`] for a range, [`FsFile::sync_all`] for
//!   the whole file (data and length).
//! - A file's length (growth by [`FsFile::allocate`]) is durable only after
//!   [`FsFile::sync_all`].
//! - A directory entry (a created, renamed or deleted name) is durable only after its
//!   directory is synced with [`Fs::sync_dir`]. [`create_dir_all_durably`] and
//!   [`rename_durably`] are the one place where that is done for directories and renames.

use std::any::Any;
use std::fs::{self as stdfs, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::MmapMut;

mod shadow;
mod sim;

pub use shadow::{power_cut_shadowed, PowerCut, ShadowFs};
pub use sim::{CrashChoice, SimFs};

/// The page size the simulated disk writes back in, and the unit of torn writes.
pub const PAGE_SIZE: usize = 4096;

/// How [`Fs::open`] opens a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Create it; fail if it exists.
    CreateNew,
    /// Create it, or truncate it to nothing if it exists.
    CreateTruncate,
    /// Open it as it is, for reading and writing; fail if it is missing.
    Existing,
}

/// A file system. See the module documentation for the durability rules.
pub trait Fs: Send + Sync + std::fmt::Debug {
    /// Creates the directory `dir`, whose parent exists. Durable once the parent is synced.
    fn create_dir(&self, dir: &Path) -> io::Result<()>;
    /// True when something exists at `path`.
    fn exists(&self, path: &Path) -> bool;
    /// True when `path` is a directory.
    fn is_dir(&self, path: &Path) -> bool;
    /// The names in directory `dir`, in no particular order.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens a file for reading and writing.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn FsFile>>;
    /// The whole content of a file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Renames `from` to `to`, replacing `to`. Durable once the directory is synced.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Deletes a file. Durable once the directory is synced.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the entries of directory `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on the file at `path` (created if missing), held until the
    /// returned guard is dropped; fails at once if another holder has it.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send>>;
}

/// An open file.
pub trait FsFile: Send {
    /// Its length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// True when it is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Reserves disk blocks for its first `len` bytes, growing it to `len` if shorter, so that
    /// writes into a mapping of it cannot fail for lack of space. Durable after
    /// [`FsFile::sync_all`].
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// Writes `data` at `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Starts writing back `[offset, offset + len)` (with `wait`, waits until it is written).
    /// Only pacing: nothing is durable until [`FsFile::sync_all`]; errors are ignored, as the
    /// sync after reports them.
    fn write_back(&self, offset: u64, len: u64, wait: bool);
    /// Makes its data and length durable.
    fn sync_all(&self) -> io::Result<()>;
    /// Maps the whole file for reading and writing.
    fn map(&self) -> io::Result<Box<dyn FsMap>>;
    /// A handle that syncs ranges of this file from any thread, also after the file and its
    /// mappings are dropped (a log sync run off the event loop).
    fn syncer(&self) -> io::Result<Arc<dyn FsSyncer>>;
}

/// Makes ranges of one file durable, from any thread.
pub trait FsSyncer: Send + Sync {
    /// Makes `[offset, offset + len)` durable, including what was written into it through a
    /// mapping (as [`FsMap::flush_range`] would). Within the file's durable length (growth is
    /// durable only after [`FsFile::sync_all`]).
    fn sync_range(&self, offset: usize, len: usize) -> io::Result<()>;
}

/// A writable mapping of a whole file.
pub trait FsMap: Send {
    /// The mapped bytes.
    fn bytes(&self) -> &[u8];
    /// Changes `[offset, offset + len)` through `change`, which gets exactly that range.
    fn update(&mut self, offset: usize, len: usize, change: &mut dyn FnMut(&mut [u8]));
    /// Makes `[offset, offset + len)` durable (msync).
    fn flush_range(&self, offset: usize, len: usize) -> io::Result<()>;
}

/// The operating system's file system.
pub fn os() -> Arc<dyn Fs> {
    Arc::new(OsFs)
}

/// Creates `dir` and its missing ancestors, syncing the parent of each one created, so that
/// the whole path survives a power loss.
pub fn create_dir_all_durably(fs: &dyn Fs, dir: &Path) -> io::Result<()> {
    if fs.is_dir(dir) {
        return Ok(());
    }
    if fs.exists(dir) {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a directory"));
    }
    let parent = parent_of(dir);
    create_dir_all_durably(fs, &parent)?;
    match fs.create_dir(dir) {
        Ok(()) => {}
        // Created meanwhile by someone else: theirs to make durable, but syncing is harmless.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && fs.is_dir(dir) => {}
        Err(e) => return Err(e),
    }
    fs.sync_dir(&parent)
}

/// Renames `from` to `to` (in the same directory) and syncs the directory.
pub fn rename_durably(fs: &dyn Fs, from: &Path, to: &Path) -> io::Result<()> {
    fs.rename(from, to)?;
    fs.sync_dir(&parent_of(to))
}

/// Writes a whole small file so that after a crash it holds either its old content or
/// `bytes`: a temporary file, synced, renamed over it, the directory synced.
pub fn write_atomically(fs: &dyn Fs, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temporary_path(path);
    let file = fs.open(&tmp, OpenMode::CreateTruncate)?;
    file.write_at(0, bytes)?;
    file.sync_all()?;
    drop(file);
    rename_durably(fs, &tmp, path)
}

/// The temporary name a file is written under before it is renamed into place.
pub fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(TEMPORARY_SUFFIX);
    path.with_file_name(name)
}

/// The suffix of [`temporary_path`].
pub const TEMPORARY_SUFFIX: &str = ".tmp";

/// The directory holding `path` ("." for a bare name).
pub fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The operating system's file system, with memory-mapped files.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsFs;

impl Fs for OsFs {
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        stdfs::create_dir(dir)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in stdfs::read_dir(dir)? {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn FsFile>> {
        Ok(Box::new(OsFile { file: open_file(path, mode)? }))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        stdfs::read(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        stdfs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        stdfs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send>> {
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
        // SAFETY: flock only reads its integer arguments; the descriptor is owned by `file`.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Box::new(file))
    }
}

/// Opens a file of the operating system for reading and writing, as `mode` says.
fn open_file(path: &Path, mode: OpenMode) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    match mode {
        OpenMode::CreateNew => options.create_new(true),
        OpenMode::CreateTruncate => options.create(true).truncate(true),
        OpenMode::Existing => &mut options,
    };
    options.open(path)
}

struct OsFile {
    file: File,
}

impl FsFile for OsFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        let len_off = libc::off_t::try_from(len).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "length does not fit off_t")
        })?;
        // SAFETY: posix_fallocate only reads its integer arguments; the descriptor is open and
        // owned by `self.file` for the duration of the call.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::posix_fallocate(self.file.as_raw_fd(), 0, len_off) };
        match rc {
            0 => Ok(()),
            // A file system without fallocate: write zeros where the file has no data, so
            // that its blocks are allocated now (a sparse file would fail later, through the
            // mapping, with SIGBUS on a full disk).
            libc::EOPNOTSUPP | libc::EINVAL => allocate_by_writing_zeros(&self.file, len),
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn write_back(&self, offset: u64, len: u64, wait: bool) {
        let flags = if wait {
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER
        } else {
            libc::SYNC_FILE_RANGE_WRITE
        };
        let (Ok(offset), Ok(len)) = (libc::off64_t::try_from(offset), libc::off64_t::try_from(len))
        else {
            return;
        };
        // SAFETY: sync_file_range only reads its integer arguments; the descriptor is open and
        // owned by `self.file` for the duration of the call.
        #[allow(unsafe_code)]
        let _ = unsafe { libc::sync_file_range(self.file.as_raw_fd(), offset, len, flags) };
    }

    fn sync_all(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn map(&self) -> io::Result<Box<dyn FsMap>> {
        Ok(Box::new(self.map_os()?))
    }

    fn syncer(&self) -> io::Result<Arc<dyn FsSyncer>> {
        Ok(Arc::new(OsSyncer { file: self.file.try_clone()? }))
    }
}

/// Syncs through its own descriptor of the file. On Linux msync(MS_SYNC) of a range of a
/// shared mapping is an fdatasync of that range of the file (`vfs_fsync_range`), and
/// fdatasync writes back every page of the file dirtied through a mapping; so a whole-file
/// fdatasync covers the range, and it needs no mapping alive while it runs.
pub(crate) struct OsSyncer {
    file: File,
}

impl FsSyncer for OsSyncer {
    fn sync_range(&self, _offset: usize, _len: usize) -> io::Result<()> {
        self.file.sync_data()
    }
}

impl OsFile {
    fn map_os(&self) -> io::Result<OsMap> {
        // SAFETY: the files mapped are the log's segments, in a directory the log locks for
        // its exclusive use; nothing else truncates or writes them while they are mapped.
        #[allow(unsafe_code)]
        let map = unsafe { MmapMut::map_mut(&self.file) }?;
        Ok(OsMap { map })
    }
}

/// Grows `file` to `len` bytes by writing zeros past its end, so that its blocks are allocated
/// (the fallback where `posix_fallocate` is not supported; `set_len` would leave a sparse file).
fn allocate_by_writing_zeros(file: &File, len: u64) -> io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut at = file.metadata()?.len();
    while at < len {
        let n = (len - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

struct OsMap {
    map: MmapMut,
}

impl FsMap for OsMap {
    fn bytes(&self) -> &[u8] {
        &self.map
    }

    fn update(&mut self, offset: usize, len: usize, change: &mut dyn FnMut(&mut [u8])) {
        change(&mut self.map[offset..offset + len]);
    }

    fn flush_range(&self, offset: usize, len: usize) -> io::Result<()> {
        self.map.flush_range(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Issue 13, item 6: where fallocate is unsupported, the fallback allocates the blocks
    /// (a sparse file from `set_len` could fail later, through a mapping, with SIGBUS).
    #[test]
    fn the_fallback_for_fallocate_allocates_blocks_instead_of_a_sparse_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let file = File::create(&path).expect("create");
        file.write_all_at(b"head", 0).expect("write");
        allocate_by_writing_zeros(&file, 3 << 20).expect("allocate");
        file.sync_all().expect("sync");
        let meta = std::fs::metadata(&path).expect("stat");
        assert_eq!(meta.len(), 3 << 20);
        assert!(meta.blocks() * 512 >= 3 << 20, "{} blocks: sparse", meta.blocks());
        assert_eq!(&std::fs::read(&path).expect("read")[..4], b"head", "data kept");
        let sparse = dir.path().join("sparse");
        File::create(&sparse).expect("create").set_len(3 << 20).expect("set_len");
        assert!(
            std::fs::metadata(&sparse).expect("stat").blocks() * 512 < 3 << 20,
            "set_len is sparse here"
        );
    }
}
