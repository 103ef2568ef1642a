//! The operating system's file system plus a record of what was made durable, so that a
//! power cut of a real process can be simulated from outside it.
//!
//! [`ShadowFs`] does every operation on the real files (the process runs as it would), and at
//! every sync also copies what the sync made durable into a shadow directory: the synced
//! pages of a mapping, the whole content of a file synced with `sync_all`, and a directory's
//! entries when the directory is synced. Files are tracked by an id of the shadow's own (not
//! the inode number, which the kernel reuses), through renames. A `kill -9` of the process
//! followed by [`power_cut_shadowed`] then rebuilds the data directory as a disk would be
//! after losing power at that moment: only what was made durable, plus any unsynced pages the
//! caller chooses to keep. Used by the black-box power-loss tests through raftd's hidden
//! `--shadow-dir` flag; never in production.

use std::any::Any;
use std::collections::BTreeMap;
use std::fs::{self as stdfs, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{
    parent_of, Fs, FsFile, FsMap, FsSyncer, OpenMode, OsFile, OsFs, OsMap, OsSyncer, PAGE_SIZE,
};

const CACHED_NAMES: &str = "names.cached";
const DURABLE_NAMES: &str = "names.durable";
const INODES_DIR: &str = "inodes";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    Dir,
    File(u64),
}

#[derive(Debug)]
struct Names {
    shadow: PathBuf,
    next_id: u64,
    /// The real directory tree under the root, as this process made it.
    cached: BTreeMap<PathBuf, Entry>,
    /// What of it is durable.
    durable: BTreeMap<PathBuf, Entry>,
}

fn encode_names(names: &BTreeMap<PathBuf, Entry>) -> String {
    let mut out = String::new();
    for (path, entry) in names {
        match entry {
            Entry::Dir => out.push_str(&format!("D\t-\t{}\n", path.display())),
            Entry::File(id) => out.push_str(&format!("F\t{id}\t{}\n", path.display())),
        }
    }
    out
}

fn decode_names(text: &str) -> io::Result<BTreeMap<PathBuf, Entry>> {
    let mut names = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, '\t');
        let (Some(kind), Some(id), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(io::Error::other(format!("bad shadow names line {line:?}")));
        };
        let entry = match kind {
            "D" => Entry::Dir,
            _ => Entry::File(id.parse().map_err(io::Error::other)?),
        };
        names.insert(PathBuf::from(path), entry);
    }
    Ok(names)
}

fn read_names(shadow: &Path, file: &str) -> io::Result<BTreeMap<PathBuf, Entry>> {
    match stdfs::read_to_string(shadow.join(file)) {
        Ok(text) => decode_names(&text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e),
    }
}

/// Replaces a file of the shadow (which is not itself under test: no sync needed).
fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("new");
    stdfs::write(&tmp, bytes)?;
    stdfs::rename(&tmp, path)
}

impl Names {
    fn save(&self) -> io::Result<()> {
        replace(&self.shadow.join(CACHED_NAMES), encode_names(&self.cached).as_bytes())?;
        replace(&self.shadow.join(DURABLE_NAMES), encode_names(&self.durable).as_bytes())
    }

    fn inode_path(&self, id: u64) -> PathBuf {
        self.shadow.join(INODES_DIR).join(id.to_string())
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

/// The operating system's file system, recording what is durable. See the module docs.
#[derive(Clone, Debug)]
pub struct ShadowFs {
    root: PathBuf,
    names: Arc<Mutex<Names>>,
}

impl ShadowFs {
    /// Shadows the tree under `root` (a directory that exists) into `shadow` (created if
    /// missing). Files found under `root` that the shadow does not know of are taken as
    /// not durable.
    pub fn new(root: &Path, shadow: &Path) -> io::Result<ShadowFs> {
        stdfs::create_dir_all(shadow.join(INODES_DIR))?;
        let durable = read_names(shadow, DURABLE_NAMES)?;
        let mut cached = read_names(shadow, CACHED_NAMES)?;
        let mut next_id = cached
            .values()
            .chain(durable.values())
            .filter_map(|e| if let Entry::File(id) = e { Some(*id) } else { None })
            .max()
            .unwrap_or(0);
        // The real tree is the truth of what exists now.
        let mut found = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in stdfs::read_dir(&dir)? {
                let path = entry?.path();
                if path.is_dir() {
                    found.insert(path.clone(), Entry::Dir);
                    stack.push(path);
                } else {
                    let known = cached.get(&path).copied().filter(|e| matches!(e, Entry::File(_)));
                    let entry = known.unwrap_or_else(|| {
                        next_id += 1;
                        Entry::File(next_id)
                    });
                    found.insert(path, entry);
                }
            }
        }
        cached = found;
        let names = Names { shadow: shadow.to_path_buf(), next_id, cached, durable };
        names.save()?;
        Ok(ShadowFs { root: root.to_path_buf(), names: Arc::new(Mutex::new(names)) })
    }

    fn lock_names(&self) -> MutexGuard<'_, Names> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tracked(&self, path: &Path) -> bool {
        path.starts_with(&self.root) && path != self.root
    }
}

impl Fs for ShadowFs {
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        OsFs.create_dir(dir)?;
        if self.tracked(dir) {
            let mut names = self.lock_names();
            names.cached.insert(dir.to_path_buf(), Entry::Dir);
            names.save()?;
        }
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        OsFs.exists(path)
    }

    fn is_dir(&self, path: &Path) -> bool {
        OsFs.is_dir(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        OsFs.list(dir)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn FsFile>> {
        let existed = path.exists();
        let file = super::open_file(path, mode)?;
        let mut names = self.lock_names();
        let id = match names.cached.get(path) {
            Some(Entry::File(id)) if existed => *id,
            _ => {
                let id = names.new_id();
                if self.tracked(path) {
                    names.cached.insert(path.to_path_buf(), Entry::File(id));
                    names.save()?;
                }
                id
            }
        };
        let inode = names.inode_path(id);
        Ok(Box::new(ShadowFile { os: OsFile { file }, inode, tracked: self.tracked(path) }))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        OsFs.read(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        OsFs.rename(from, to)?;
        let mut names = self.lock_names();
        if let Some(entry) = names.cached.remove(from) {
            names.cached.insert(to.to_path_buf(), entry);
            names.save()?;
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        OsFs.remove_file(path)?;
        let mut names = self.lock_names();
        if names.cached.remove(path).is_some() {
            names.save()?;
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        OsFs.sync_dir(dir)?;
        let mut names = self.lock_names();
        let in_dir = |p: &PathBuf| parent_of(p) == dir;
        let now: Vec<(PathBuf, Entry)> =
            names.cached.iter().filter(|(p, _)| in_dir(p)).map(|(p, e)| (p.clone(), *e)).collect();
        names.durable.retain(|p, _| !in_dir(p));
        names.durable.extend(now);
        names.save()
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send>> {
        if !path.exists() {
            drop(self.open(path, OpenMode::CreateNew)?);
        }
        OsFs.lock(path)
    }
}

struct ShadowFile {
    os: OsFile,
    inode: PathBuf,
    tracked: bool,
}

impl FsFile for ShadowFile {
    fn len(&self) -> io::Result<u64> {
        self.os.len()
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        self.os.allocate(len)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.os.write_at(offset, data)
    }

    fn write_back(&self, offset: u64, len: u64, wait: bool) {
        self.os.write_back(offset, len, wait)
    }

    fn sync_all(&self) -> io::Result<()> {
        self.os.sync_all()?;
        if self.tracked {
            let len = self.os.len()? as usize;
            let mut content = vec![0u8; len];
            self.os.file.read_exact_at(&mut content, 0)?;
            replace(&self.inode, &content)?;
        }
        Ok(())
    }

    fn map(&self) -> io::Result<Box<dyn FsMap>> {
        let os = self.os.map_os()?;
        Ok(Box::new(ShadowMap { os, inode: self.inode.clone(), tracked: self.tracked }))
    }

    fn syncer(&self) -> io::Result<Arc<dyn FsSyncer>> {
        Ok(Arc::new(ShadowSyncer {
            os: OsSyncer { file: self.os.file.try_clone()? },
            file: self.os.file.try_clone()?,
            inode: self.inode.clone(),
            tracked: self.tracked,
        }))
    }
}

struct ShadowMap {
    os: OsMap,
    inode: PathBuf,
    tracked: bool,
}

impl FsMap for ShadowMap {
    fn bytes(&self) -> &[u8] {
        self.os.bytes()
    }

    fn update(&mut self, offset: usize, len: usize, change: &mut dyn FnMut(&mut [u8])) {
        self.os.update(offset, len, change)
    }

    fn flush_range(&self, offset: usize, len: usize) -> io::Result<()> {
        self.os.flush_range(offset, len)?;
        if self.tracked {
            shadow_pages(&self.inode, offset, len, self.os.bytes().len(), |dst, at| {
                dst.copy_from_slice(&self.os.bytes()[at..at + dst.len()]);
                Ok(())
            })?;
        }
        Ok(())
    }
}

/// Copies the pages covering `[offset, offset + len)` of a file of `file_len` bytes into its
/// shadow `inode`, within the length the shadow holds as durable (set by the file's last
/// sync_all; no durable copy yet means nothing is durable past length zero). `read` fills a
/// buffer with the file's bytes from an offset.
fn shadow_pages(
    inode: &Path,
    offset: usize,
    len: usize,
    file_len: usize,
    read: impl FnOnce(&mut [u8], usize) -> io::Result<()>,
) -> io::Result<()> {
    let shadow = OpenOptions::new().create(true).truncate(false).write(true).open(inode)?;
    let durable_len = shadow.metadata()?.len() as usize;
    let start = offset / PAGE_SIZE * PAGE_SIZE;
    let end = (offset + len).div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let end = end.min(durable_len).min(file_len);
    if start < end {
        let mut pages = vec![0u8; end - start];
        read(&mut pages, start)?;
        shadow.write_all_at(&pages, start as u64)?;
    }
    Ok(())
}

/// Syncs through the operating system, then records the synced pages in the shadow, read
/// back through its own descriptor (the page cache holds what mappings wrote).
struct ShadowSyncer {
    os: OsSyncer,
    file: stdfs::File,
    inode: PathBuf,
    tracked: bool,
}

impl FsSyncer for ShadowSyncer {
    fn sync_range(&self, offset: usize, len: usize) -> io::Result<()> {
        self.os.sync_range(offset, len)?;
        if self.tracked {
            let file_len = self.file.metadata()?.len() as usize;
            shadow_pages(&self.inode, offset, len, file_len, |dst, at| {
                self.file.read_exact_at(dst, at as u64)
            })?;
        }
        Ok(())
    }
}

/// What [`power_cut_shadowed`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PowerCut {
    /// Files rebuilt.
    pub files: u64,
    /// Unsynced pages kept by the caller's choice.
    pub pages_kept: u64,
    /// Unsynced pages dropped.
    pub pages_lost: u64,
}

/// Rebuilds `root` as a disk would be after a power cut now, from the record `shadow` of a
/// [`ShadowFs`] (whose process must be dead): only what was made durable, plus, for each page
/// of a surviving file that differs from its durable copy, the page as it is now when
/// `keep(k)` (k counts those pages).
pub fn power_cut_shadowed(
    root: &Path,
    shadow: &Path,
    keep: &mut dyn FnMut(u64) -> bool,
) -> io::Result<PowerCut> {
    let durable = read_names(shadow, DURABLE_NAMES)?;
    let cached = read_names(shadow, CACHED_NAMES)?;
    let path_now: BTreeMap<u64, PathBuf> = cached
        .iter()
        .filter_map(|(p, e)| if let Entry::File(id) = e { Some((*id, p.clone())) } else { None })
        .collect();
    let mut cut = PowerCut::default();
    let mut pages = 0u64;
    let mut rebuilt: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    for (path, entry) in &durable {
        let Entry::File(id) = entry else { continue };
        let mut content = match stdfs::read(shadow.join(INODES_DIR).join(id.to_string())) {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        if let Some(now) = path_now.get(id).and_then(|p| stdfs::read(p).ok()) {
            for page in 0..content.len().div_ceil(PAGE_SIZE) {
                let start = page * PAGE_SIZE;
                let end = (start + PAGE_SIZE).min(content.len()).min(now.len());
                if start >= end || content[start..end] == now[start..end] {
                    continue;
                }
                if keep(pages) {
                    content[start..end].copy_from_slice(&now[start..end]);
                    cut.pages_kept += 1;
                } else {
                    cut.pages_lost += 1;
                }
                pages += 1;
            }
        }
        replace(&shadow.join(INODES_DIR).join(id.to_string()), &content)?;
        rebuilt.push((path.clone(), content));
    }
    for entry in stdfs::read_dir(root)? {
        let path = entry?.path();
        if path.is_dir() {
            stdfs::remove_dir_all(&path)?;
        } else {
            stdfs::remove_file(&path)?;
        }
    }
    for (path, entry) in &durable {
        if *entry == Entry::Dir && path.starts_with(root) {
            stdfs::create_dir_all(path)?;
        }
    }
    for (path, content) in rebuilt {
        if !path.starts_with(root) || !parent_of(&path).is_dir() {
            continue;
        }
        stdfs::write(&path, &content)?;
        cut.files += 1;
    }
    // The rebuilt tree is all durable; the next process starts from it.
    let names =
        Names { shadow: shadow.to_path_buf(), next_id: 0, cached: durable.clone(), durable };
    names.save()?;
    Ok(cut)
}
