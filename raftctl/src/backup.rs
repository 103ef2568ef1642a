//! Backups: `raftctl snapshot save FILE` reads a consistent snapshot from the leader into a
//! file (the node's snapshot file format: index, term, configuration, state machine image, and
//! a CRC-32C of it all), and `raftctl snapshot status FILE` checks and describes one.
//! `raftd --restore FILE` starts a new cluster from it.

use std::io::Write;
use std::path::{Path, PathBuf};

use raftd::kv::Kv;
use raftd::protocol::{AdminReply, AdminRequest};

use crate::{Client, CtlError};

/// What a backup holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupInfo {
    /// The applied index it images.
    pub index: u64,
    /// The term of that entry.
    pub term: u64,
    /// Voters of the cluster it was taken from.
    pub voters: Vec<u64>,
    /// Learners of that cluster.
    pub learners: Vec<u64>,
    /// Keys in the state machine.
    pub keys: u64,
    /// The hash of every key and value (as `raftctl hashkv` computes it).
    pub hash: u64,
    /// The file's length.
    pub size: u64,
    /// The cluster incarnation of the cluster it was taken from.
    pub cluster_incarnation: u64,
}

/// Checks a backup's bytes and describes it.
pub fn inspect(path: &Path, bytes: &[u8]) -> Result<BackupInfo, String> {
    let snapshot = raftd::snapfile::decode(path, bytes).map_err(|e| e.to_string())?;
    let kv = Kv::restore(&snapshot.data)
        .map_err(|e| format!("{}: the state machine does not restore: {e}", path.display()))?;
    let (hash, keys) = kv.hash();
    let meta = &snapshot.metadata;
    Ok(BackupInfo {
        index: meta.index,
        term: meta.term,
        voters: meta.conf_state.voters.clone(),
        learners: meta.conf_state.learners.clone(),
        keys,
        hash,
        size: bytes.len() as u64,
        cluster_incarnation: kv.cluster_incarnation(),
    })
}

/// Reads a backup from the leader into `file`: written to `FILE.part`, synced, checked,
/// then renamed into place (and the directory synced), so that `file` is whole or absent.
pub fn save(client: &mut Client, file: &Path) -> Result<BackupInfo, CtlError> {
    let local =
        |reason: String| CtlError::Endpoint { endpoint: file.display().to_string(), reason };
    let reply = client.admin_leader(AdminRequest::SnapshotSave)?;
    let AdminReply::SnapshotSaved { export, index, term, size, .. } = reply else {
        return Err(local(format!("unexpected reply {reply:?}")));
    };
    let endpoint = client
        .leader_endpoint()
        .ok_or_else(|| local("the leader's endpoint is not known".into()))?
        .to_string();
    let mut part = file.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let mut out = std::fs::File::create(&part)
        .map_err(|e| local(format!("create {}: {e}", part.display())))?;
    let mut offset = 0u64;
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    while offset < size {
        let reply = client.admin_at(&endpoint, AdminRequest::SnapshotChunk { export, offset })?;
        let AdminReply::SnapshotChunk { data } = reply else {
            return Err(local(format!("unexpected reply {reply:?}")));
        };
        if data.is_empty() {
            return Err(local(format!("the backup ended at {offset} of {size} bytes")));
        }
        out.write_all(&data).map_err(|e| local(format!("write {}: {e}", part.display())))?;
        offset += data.len() as u64;
        bytes.extend_from_slice(&data);
    }
    out.sync_all().map_err(|e| local(format!("sync {}: {e}", part.display())))?;
    drop(out);
    let info = inspect(file, &bytes).map_err(|e| {
        let _ = std::fs::remove_file(&part);
        local(format!("the backup received does not check: {e}"))
    })?;
    if (info.index, info.term) != (index, term) {
        let _ = std::fs::remove_file(&part);
        return Err(local(format!(
            "the backup received is at index {} term {}, the leader announced {index} {term}",
            info.index, info.term
        )));
    }
    std::fs::rename(&part, file).map_err(|e| local(format!("rename into place: {e}")))?;
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| local(format!("sync {}: {e}", dir.display())))?;
    Ok(info)
}
