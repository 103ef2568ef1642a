//! A simulated disk that keeps what was made durable apart from what is only cached.
//!
//! The model, after ALICE (Pillai et al., OSDI 2014) and TigerBeetle's storage faults:
//!
//! - Every file has its cached content (what reads and mappings see) and its durable content.
//!   A write reaches the durable content only through a sync: [`FsMap::flush_range`] (whole
//!   pages), or [`FsFile::sync_all`] (all data and the length). Before that, write-back may
//!   have happened or not, page by page and in any order.
//! - A file's length is durable only after [`FsFile::sync_all`].
//! - The directory tree has its cached entries and its durable entries; a created, renamed or
//!   deleted name becomes durable only when its directory is synced ([`Fs::sync_dir`]).
//!   Before that each changed name may have reached the disk or not, independently of the
//!   others.
//!
//! A power cut ([`SimFs::power_cut`]) builds the disk a reboot would find: the durable state,
//! plus, for each of the [`SimFs::unsynced_items`] (a changed name, a page that differs from
//! its durable copy, a length not yet synced), whatever the caller's choice says. A test
//! explores crash points with [`SimFs::arm_capture`], which keeps the whole state as it was
//! just before a given file-system operation.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{parent_of, Fs, FsFile, FsMap, FsSyncer, OpenMode, PAGE_SIZE};

/// What a power cut keeps of one unsynced item; see [`SimFs::power_cut`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashChoice {
    /// Nothing unsynced survives.
    KeepNone,
    /// Everything written survives (as a process crash leaves it).
    KeepAll,
}

#[derive(Clone, Debug, Default)]
struct Inode {
    /// What reads see.
    data: Vec<u8>,
    /// What is on the disk, up to `durable_len`; beyond it, pages flushed from a mapping
    /// past the durable length (lost unless the length is kept).
    durable: Vec<u8>,
    durable_len: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File(usize),
}

#[derive(Clone, Debug, Default)]
struct State {
    inodes: Vec<Inode>,
    names: BTreeMap<PathBuf, Node>,
    durable_names: BTreeMap<PathBuf, Node>,
    locks: BTreeSet<PathBuf>,
    /// Mutating operations so far.
    ops: u64,
    capture_at: Option<u64>,
    captured: Option<Box<State>>,
    space_bytes_max: Option<u64>,
    /// The number of the first sync since [`SimFs::mark_syncs`], if any.
    first_sync: Option<u64>,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file (simulated)", path.display()))
}

impl State {
    fn new() -> State {
        let mut state = State::default();
        for root in ["/", "."] {
            state.names.insert(PathBuf::from(root), Node::Dir);
            state.durable_names.insert(PathBuf::from(root), Node::Dir);
        }
        state
    }

    /// Counts a mutating operation, capturing the state before it when armed.
    fn tick(&mut self) {
        self.ops += 1;
        if self.capture_at == Some(self.ops) {
            let mut copy = self.clone();
            copy.captured = None;
            copy.capture_at = None;
            self.captured = Some(Box::new(copy));
        }
    }

    /// Counts a sync (of a file, a mapping's range or a directory).
    fn tick_sync(&mut self) {
        self.tick();
        self.first_sync.get_or_insert(self.ops);
    }

    /// Makes the pages of inode `id` that cover `[offset, offset + len)` durable (a sync of a
    /// range: msync).
    fn flush_pages(&mut self, id: usize, offset: usize, len: usize) {
        self.tick_sync();
        let inode = &mut self.inodes[id];
        let start = offset / PAGE_SIZE * PAGE_SIZE;
        let end =
            (offset + len).div_ceil(PAGE_SIZE).saturating_mul(PAGE_SIZE).min(inode.data.len());
        if inode.durable.len() < end {
            inode.durable.resize(end, 0);
        }
        if start < end {
            inode.durable[start..end].copy_from_slice(&inode.data[start..end]);
        }
    }

    fn file(&self, path: &Path) -> io::Result<usize> {
        match self.names.get(path) {
            Some(Node::File(id)) => Ok(*id),
            Some(Node::Dir) => Err(io::Error::other(format!("{} is a directory", path.display()))),
            None => Err(not_found(path)),
        }
    }

    fn check_parent(&self, path: &Path) -> io::Result<()> {
        match self.names.get(&parent_of(path)) {
            Some(Node::Dir) => Ok(()),
            _ => Err(not_found(&parent_of(path))),
        }
    }

    fn used_bytes(&self) -> u64 {
        self.inodes.iter().map(|i| i.data.len().max(i.durable.len()) as u64).sum()
    }

    /// Grows inode `id` to `len` bytes, failing with ENOSPC past the space limit.
    fn grow(&mut self, id: usize, len: usize) -> io::Result<()> {
        let current = self.inodes[id].data.len();
        if len <= current {
            return Ok(());
        }
        if let Some(max) = self.space_bytes_max {
            if self.used_bytes() + (len - current) as u64 > max {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
        }
        self.inodes[id].data.resize(len, 0);
        Ok(())
    }

    /// Inodes that a name (cached or durable) refers to, ascending.
    fn named_inodes(&self) -> Vec<usize> {
        let ids: BTreeSet<usize> = self
            .names
            .values()
            .chain(self.durable_names.values())
            .filter_map(|n| if let Node::File(id) = n { Some(*id) } else { None })
            .collect();
        ids.into_iter().collect()
    }

    fn changed_names(&self) -> Vec<PathBuf> {
        let all: BTreeSet<&PathBuf> = self.names.keys().chain(self.durable_names.keys()).collect();
        all.into_iter()
            .filter(|p| self.names.get(*p) != self.durable_names.get(*p))
            .cloned()
            .collect()
    }

    /// Pages whose cached content differs from the durable one (zeros past its end).
    fn dirty_pages(inode: &Inode) -> Vec<usize> {
        let pages = inode.data.len().div_ceil(PAGE_SIZE);
        (0..pages)
            .filter(|&p| {
                let start = p * PAGE_SIZE;
                let end = (start + PAGE_SIZE).min(inode.data.len());
                (start..end).any(|i| inode.durable.get(i).copied().unwrap_or(0) != inode.data[i])
            })
            .collect()
    }

    fn unsynced_items(&self) -> usize {
        let names = self.changed_names().len();
        let inodes: usize = self
            .named_inodes()
            .into_iter()
            .map(|id| {
                let inode = &self.inodes[id];
                State::dirty_pages(inode).len() + usize::from(inode.durable_len != inode.data.len())
            })
            .sum();
        names + inodes
    }

    /// The disk a reboot finds, keeping unsynced item `k` when `keep(k)`.
    fn crash_image(&self, keep: &mut dyn FnMut(usize) -> bool) -> State {
        let mut item = 0usize;
        let mut next = |keep: &mut dyn FnMut(usize) -> bool| {
            let k = keep(item);
            item += 1;
            k
        };
        let mut names = self.durable_names.clone();
        for path in self.changed_names() {
            if next(keep) {
                match self.names.get(&path) {
                    Some(node) => names.insert(path, *node),
                    None => names.remove(&path),
                };
            }
        }
        // A name whose directory did not survive is gone with it.
        let orphans: Vec<PathBuf> = names
            .keys()
            .filter(|p| {
                p.parent().is_some() && !matches!(names.get(&parent_of(p)), Some(Node::Dir))
            })
            .cloned()
            .collect();
        for p in orphans {
            names.remove(&p);
        }
        let mut inodes = vec![Inode::default(); self.inodes.len()];
        for id in self.named_inodes() {
            let old = &self.inodes[id];
            let mut content = old.durable.clone();
            content.resize(old.data.len().max(content.len()), 0);
            for page in State::dirty_pages(old) {
                let start = page * PAGE_SIZE;
                let end = (start + PAGE_SIZE).min(old.data.len());
                if next(keep) {
                    content[start..end].copy_from_slice(&old.data[start..end]);
                }
            }
            let len = if old.durable_len != old.data.len() && next(keep) {
                old.data.len()
            } else {
                old.durable_len
            };
            content.resize(len, 0);
            inodes[id] = Inode { durable: content.clone(), data: content, durable_len: len };
        }
        State {
            inodes,
            durable_names: names.clone(),
            names,
            space_bytes_max: self.space_bytes_max,
            ..State::default()
        }
    }
}

/// A simulated disk; see the module documentation. Clones share one disk.
#[derive(Clone, Debug)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

impl Default for SimFs {
    fn default() -> SimFs {
        SimFs::new()
    }
}

impl SimFs {
    /// An empty disk with the directories `/` and `.`.
    pub fn new() -> SimFs {
        SimFs::from_state(State::new())
    }

    fn from_state(state: State) -> SimFs {
        SimFs { state: Arc::new(Mutex::new(state)) }
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock leaves a state that is still whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mutating operations done so far.
    pub fn op_count(&self) -> u64 {
        self.lock_state().ops
    }

    /// Keeps a copy of the whole state as it is just before mutating operation `op` (counted
    /// from 1), for [`SimFs::take_captured`].
    pub fn arm_capture(&self, op: u64) {
        let mut state = self.lock_state();
        state.capture_at = Some(op);
        state.captured = None;
    }

    /// The state captured by [`SimFs::arm_capture`], as a disk of its own.
    pub fn take_captured(&self) -> Option<SimFs> {
        self.lock_state().captured.take().map(|s| SimFs::from_state(*s))
    }

    /// Starts watching for syncs: [`SimFs::first_sync_since_mark`] names the first one after
    /// this call.
    pub fn mark_syncs(&self) {
        self.lock_state().first_sync = None;
    }

    /// The number of the first sync (of a file, a mapping's range or a directory) since
    /// [`SimFs::mark_syncs`]: what was done after it waited for it.
    pub fn first_sync_since_mark(&self) -> Option<u64> {
        self.lock_state().first_sync
    }

    /// A copy of the disk, cache included (what a process crash leaves), without locks.
    pub fn fork(&self) -> SimFs {
        let mut state = self.lock_state().clone();
        state.locks.clear();
        state.captured = None;
        state.capture_at = None;
        SimFs::from_state(state)
    }

    /// How many unsynced items a power cut decides on: changed directory entries, pages that
    /// differ from their durable copy, file lengths not yet synced.
    pub fn unsynced_items(&self) -> usize {
        self.lock_state().unsynced_items()
    }

    /// The disk a reboot after a power cut finds: what was durable, plus each unsynced item
    /// `k` (numbered as [`SimFs::unsynced_items`] counts them) for which `keep(k)`.
    pub fn power_cut(&self, keep: &mut dyn FnMut(usize) -> bool) -> SimFs {
        SimFs::from_state(self.lock_state().crash_image(keep))
    }

    /// [`SimFs::power_cut`] keeping nothing or everything unsynced.
    pub fn power_cut_keeping(&self, choice: CrashChoice) -> SimFs {
        let all = choice == CrashChoice::KeepAll;
        self.power_cut(&mut |_| all)
    }

    /// Limits the bytes all files may occupy: growing past it fails with ENOSPC (None: no
    /// limit).
    pub fn set_space_bytes_max(&self, max: Option<u64>) {
        self.lock_state().space_bytes_max = max;
    }

    /// The bytes all files occupy.
    pub fn used_bytes(&self) -> u64 {
        self.lock_state().used_bytes()
    }

    /// The durable content of a file (for tests that damage or inspect it).
    pub fn durable_content(&self, path: &Path) -> io::Result<Vec<u8>> {
        let state = self.lock_state();
        let id = match state.durable_names.get(path) {
            Some(Node::File(id)) => *id,
            _ => return Err(not_found(path)),
        };
        let inode = &state.inodes[id];
        Ok(inode.durable[..inode.durable_len.min(inode.durable.len())].to_vec())
    }

    /// Replaces a file's content, cached and durable (for tests that damage a disk).
    pub fn overwrite(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.lock_state();
        let id = state.file(path)?;
        let inode = &mut state.inodes[id];
        inode.data = bytes.to_vec();
        inode.durable = bytes.to_vec();
        inode.durable_len = bytes.len();
        Ok(())
    }
}

impl Fs for SimFs {
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock_state();
        state.check_parent(dir)?;
        if state.names.contains_key(dir) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists (simulated)"));
        }
        state.tick();
        state.names.insert(dir.to_path_buf(), Node::Dir);
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        self.lock_state().names.contains_key(path)
    }

    fn is_dir(&self, path: &Path) -> bool {
        self.lock_state().names.get(path) == Some(&Node::Dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.lock_state();
        if state.names.get(dir) != Some(&Node::Dir) {
            return Err(not_found(dir));
        }
        Ok(state
            .names
            .keys()
            .filter(|p| p.as_path() != dir && parent_of(p) == dir)
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
            .collect())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn FsFile>> {
        let mut state = self.lock_state();
        let existing = state.names.get(path).copied();
        let id = match (mode, existing) {
            (OpenMode::CreateNew, Some(_)) => {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists (simulated)"))
            }
            (OpenMode::Existing, None) => return Err(not_found(path)),
            (_, Some(Node::Dir)) => return Err(io::Error::other("is a directory (simulated)")),
            (OpenMode::Existing, Some(Node::File(id))) => id,
            (OpenMode::CreateTruncate, Some(Node::File(id))) => {
                state.tick();
                state.inodes[id].data.clear();
                id
            }
            (_, None) => {
                state.check_parent(path)?;
                state.tick();
                state.inodes.push(Inode::default());
                let id = state.inodes.len() - 1;
                state.names.insert(path.to_path_buf(), Node::File(id));
                id
            }
        };
        Ok(Box::new(SimFile { fs: self.clone(), id }))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let state = self.lock_state();
        let id = state.file(path)?;
        Ok(state.inodes[id].data.clone())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock_state();
        let node = *state.names.get(from).ok_or_else(|| not_found(from))?;
        state.check_parent(to)?;
        state.tick();
        state.names.remove(from);
        state.names.insert(to.to_path_buf(), node);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock_state();
        state.file(path)?;
        state.tick();
        state.names.remove(path);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock_state();
        if state.names.get(dir) != Some(&Node::Dir) {
            return Err(not_found(dir));
        }
        state.tick_sync();
        let in_dir = |p: &PathBuf| p.as_path() != dir && parent_of(p) == dir;
        let cached: Vec<(PathBuf, Node)> =
            state.names.iter().filter(|(p, _)| in_dir(p)).map(|(p, n)| (p.clone(), *n)).collect();
        state.durable_names.retain(|p, _| !in_dir(p));
        state.durable_names.extend(cached);
        Ok(())
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send>> {
        if !self.exists(path) {
            drop(self.open(path, OpenMode::CreateNew)?);
        }
        let mut state = self.lock_state();
        if !state.locks.insert(path.to_path_buf()) {
            return Err(io::Error::new(io::ErrorKind::WouldBlock, "locked (simulated)"));
        }
        Ok(Box::new(SimLock { fs: self.clone(), path: path.to_path_buf() }))
    }
}

struct SimLock {
    fs: SimFs,
    path: PathBuf,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        self.fs.lock_state().locks.remove(&self.path);
    }
}

struct SimFile {
    fs: SimFs,
    id: usize,
}

impl FsFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.fs.lock_state().inodes[self.id].data.len() as u64)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        let mut state = self.fs.lock_state();
        let len = usize::try_from(len).map_err(io::Error::other)?;
        if len <= state.inodes[self.id].data.len() {
            return Ok(());
        }
        state.tick();
        state.grow(self.id, len)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut state = self.fs.lock_state();
        let offset = usize::try_from(offset).map_err(io::Error::other)?;
        state.tick();
        state.grow(self.id, offset + data.len())?;
        state.inodes[self.id].data[offset..offset + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn write_back(&self, _offset: u64, _len: u64, _wait: bool) {}

    fn sync_all(&self) -> io::Result<()> {
        let mut state = self.fs.lock_state();
        state.tick_sync();
        let inode = &mut state.inodes[self.id];
        inode.durable = inode.data.clone();
        inode.durable_len = inode.data.len();
        Ok(())
    }

    fn map(&self) -> io::Result<Box<dyn FsMap>> {
        let buf = self.fs.lock_state().inodes[self.id].data.clone();
        Ok(Box::new(SimMap { fs: self.fs.clone(), id: self.id, buf }))
    }

    fn syncer(&self) -> io::Result<Arc<dyn FsSyncer>> {
        Ok(Arc::new(SimSyncer { fs: self.fs.clone(), id: self.id }))
    }
}

/// Syncs pages of a file's cached content, as a mapping's flush does.
struct SimSyncer {
    fs: SimFs,
    id: usize,
}

impl FsSyncer for SimSyncer {
    fn sync_range(&self, offset: usize, len: usize) -> io::Result<()> {
        self.fs.lock_state().flush_pages(self.id, offset, len);
        Ok(())
    }
}

/// A mapping: its own copy of the file, every change also made to the file's cached content.
struct SimMap {
    fs: SimFs,
    id: usize,
    buf: Vec<u8>,
}

impl FsMap for SimMap {
    fn bytes(&self) -> &[u8] {
        &self.buf
    }

    fn update(&mut self, offset: usize, len: usize, change: &mut dyn FnMut(&mut [u8])) {
        change(&mut self.buf[offset..offset + len]);
        let mut state = self.fs.lock_state();
        state.tick();
        let data = &mut state.inodes[self.id].data;
        // A mapping never reaches past the file it maps (the file only grows).
        let end = (offset + len).min(data.len());
        if offset < end {
            data[offset..end].copy_from_slice(&self.buf[offset..end]);
        }
    }

    fn flush_range(&self, offset: usize, len: usize) -> io::Result<()> {
        self.fs.lock_state().flush_pages(self.id, offset, len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{create_dir_all_durably, write_atomically};

    #[test]
    fn unsynced_writes_and_names_are_lost_in_a_power_cut() {
        let fs = SimFs::new();
        create_dir_all_durably(&fs, Path::new("/d/e")).unwrap();
        let f = fs.open(Path::new("/d/e/a"), OpenMode::CreateNew).unwrap();
        f.write_at(0, b"hello").unwrap();
        let lost = fs.power_cut_keeping(CrashChoice::KeepNone);
        assert!(lost.is_dir(Path::new("/d/e")), "directories created durably survive");
        assert!(!lost.exists(Path::new("/d/e/a")), "an entry not synced is gone");
        f.sync_all().unwrap();
        let lost = fs.power_cut_keeping(CrashChoice::KeepNone);
        assert!(!lost.exists(Path::new("/d/e/a")), "a synced file without its entry is gone");
        fs.sync_dir(Path::new("/d/e")).unwrap();
        let kept = fs.power_cut_keeping(CrashChoice::KeepNone);
        assert_eq!(kept.read(Path::new("/d/e/a")).unwrap(), b"hello");
        assert_eq!(
            fs.power_cut_keeping(CrashChoice::KeepAll).read(Path::new("/d/e/a")).unwrap(),
            b"hello"
        );
    }

    #[test]
    fn mapped_pages_are_durable_only_once_flushed_and_survive_out_of_order() {
        let fs = SimFs::new();
        let f = fs.open(Path::new("/seg"), OpenMode::CreateNew).unwrap();
        f.allocate(3 * PAGE_SIZE as u64).unwrap();
        f.sync_all().unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        let mut map = f.map().unwrap();
        for page in 0..3 {
            map.update(page * PAGE_SIZE, 1, &mut |b| b[0] = page as u8 + 1);
        }
        assert_eq!(fs.unsynced_items(), 3, "three dirty pages");
        // Only the last page reaches the disk.
        let image = fs.power_cut(&mut |k| k == 2);
        let bytes = image.read(Path::new("/seg")).unwrap();
        assert_eq!((bytes[0], bytes[PAGE_SIZE], bytes[2 * PAGE_SIZE]), (0, 0, 3));
        map.flush_range(0, 1).unwrap();
        let bytes = fs.power_cut_keeping(CrashChoice::KeepNone).read(Path::new("/seg")).unwrap();
        assert_eq!((bytes[0], bytes[PAGE_SIZE]), (1, 0));
    }

    #[test]
    fn an_atomic_write_is_old_or_new_at_every_crash_point() {
        let fs = SimFs::new();
        write_atomically(&fs, Path::new("/id"), b"old").unwrap();
        let start = fs.op_count();
        let probe = fs.fork();
        write_atomically(&probe, Path::new("/id"), b"new").unwrap();
        let ops = probe.op_count() - start;
        for op in 1..=ops + 1 {
            let run = fs.fork();
            run.arm_capture(start + op);
            write_atomically(&run, Path::new("/id"), b"new").unwrap();
            let at = run.take_captured().unwrap_or_else(|| run.fork());
            for keep in [CrashChoice::KeepNone, CrashChoice::KeepAll] {
                let content = at.power_cut_keeping(keep).read(Path::new("/id")).unwrap();
                assert!(content == b"old" || content == b"new", "op {op}: {content:?}");
            }
        }
    }

    #[test]
    fn growth_past_the_space_limit_fails_with_enospc() {
        let fs = SimFs::new();
        fs.set_space_bytes_max(Some(10_000));
        let f = fs.open(Path::new("/f"), OpenMode::CreateNew).unwrap();
        f.allocate(8_000).unwrap();
        let err = f.allocate(12_000).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    }
}
