//! Backups (`raftctl snapshot save`): the leader takes a snapshot of what it applied and lets
//! the operator read its file in pieces. The snapshot is written by the usual writer thread
//! (the loop does not wait for it), and the file is kept open until it is read or left idle,
//! so that a newer snapshot pruning it meanwhile does not cut a backup short.

use std::os::unix::fs::FileExt;

use super::*;

/// A backup is dropped after this long without a piece asked.
const EXPORT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Backups being read at once, at most.
const EXPORTS_MAX: usize = 4;

/// A snapshot file being read by an operator.
pub(super) struct Export {
    file: std::fs::File,
    size: u64,
    last_used: Instant,
}

impl<N: Net> Node<N> {
    /// Queues a backup: first through a read index, as a linearizable read (a leader deposed
    /// without knowing it, or one that has not applied its predecessor's last writes, must
    /// not save less than was acknowledged); once `confirmed`, of everything applied now.
    pub(super) fn snapshot_save(&mut self, waiter: Waiter, confirmed: bool) {
        if !confirmed {
            self.read_batch.push(PendingRead { waiter, key: Vec::new(), backup: true });
            return;
        }
        if self.kv.applied() == 0 {
            return self.admin_reply(&waiter, Err(refused("nothing is applied yet")));
        }
        if self.snapshot_exports.len() + self.snapshot_saves.len() >= EXPORTS_MAX {
            let why = format!("{EXPORTS_MAX} backups are in progress; try again later");
            return self.admin_reply(&waiter, Err(refused(why)));
        }
        let wanted = self.kv.applied();
        self.snapshot_saves.push((waiter, wanted));
    }

    /// Answers the backups whose snapshot is in force, and starts one for those waiting when
    /// no snapshot is being written.
    pub(super) fn serve_snapshot_saves(&mut self) -> Result<()> {
        if self.snapshot_saves.is_empty() || self.snapshot_job.is_some() {
            return Ok(());
        }
        if std::mem::take(&mut self.save_snapshot_began) {
            if let Some(why) = self.snapshot_failure.clone() {
                for (waiter, _) in std::mem::take(&mut self.snapshot_saves) {
                    let e = refused(format!("the snapshot was not written: {why}"));
                    self.admin_reply(&waiter, Err(e));
                }
                return Ok(());
            }
        }
        let in_force = self.raw.store().current_snapshot().index;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.snapshot_saves)
            .into_iter()
            .partition(|(_, wanted)| *wanted <= in_force);
        self.snapshot_saves = waiting;
        for (waiter, _) in ready {
            let result = self.export(in_force);
            self.admin_reply(&waiter, result);
        }
        if !self.snapshot_saves.is_empty() {
            self.snapshot_failure = None;
            self.begin_snapshot()?;
            self.save_snapshot_began = true;
        }
        Ok(())
    }

    /// Opens the snapshot file at `index` for reading as a backup.
    fn export(&mut self, index: u64) -> std::result::Result<AdminReply, ClientError> {
        let path = self.raw.store().snapshot_path(index);
        let opened = std::fs::File::open(&path).and_then(|f| f.metadata().map(|m| (f, m.len())));
        let (file, size) = opened.map_err(|e| {
            refused(format!("the snapshot file {} cannot be read: {e}", path.display()))
        })?;
        let term = self.raw.store().current_snapshot().term;
        let export = self.next_export;
        self.next_export += 1;
        self.snapshot_exports.insert(export, Export { file, size, last_used: self.clock.now() });
        info!("backup {export}: snapshot at index {index} (term {term}, {size} bytes) to be read");
        Ok(AdminReply::SnapshotSaved { export, node: self.config.id, index, term, size })
    }

    /// A piece of backup `export` from `offset`; the backup is closed once read to its end.
    pub(super) fn snapshot_chunk(
        &mut self,
        export: u64,
        offset: u64,
    ) -> std::result::Result<AdminReply, ClientError> {
        let now = self.clock.now();
        let Some(e) = self.snapshot_exports.get_mut(&export) else {
            return Err(refused(format!("no backup {export} here (finished, or idle too long)")));
        };
        e.last_used = now;
        let len = e.size.saturating_sub(offset).min(SNAPSHOT_CHUNK_SIZE_BYTES as u64) as usize;
        let mut data = vec![0u8; len];
        if let Err(err) = e.file.read_exact_at(&mut data, offset) {
            self.snapshot_exports.remove(&export);
            return Err(refused(format!("reading backup {export}: {err}")));
        }
        if offset + len as u64 >= e.size {
            self.snapshot_exports.remove(&export);
            info!("backup {export}: read to its end");
        }
        Ok(AdminReply::SnapshotChunk { data })
    }

    /// Drops backups left idle.
    pub(super) fn expire_exports(&mut self, now: Instant) {
        self.snapshot_exports.retain(|id, e| {
            let keep = now.saturating_duration_since(e.last_used) < EXPORT_IDLE_TIMEOUT;
            if !keep {
                warn!("backup {id}: not read for {EXPORT_IDLE_TIMEOUT:?}; dropped");
            }
            keep
        });
    }
}
