//! The disk-space alarm: a full disk is an alarm, not an outage.
//!
//! Each node measures its data dir once a second: the bytes it holds and the bytes free on its
//! file system. Below the reserve (`--space-reserve-bytes`) or over the quota
//! (`--space-quota-bytes`), its alarm is raised; each node tells its peers its state every
//! second, and the leader refuses new puts and compare-and-swaps with `NoSpace` while any
//! member's alarm is raised. Reads, deletes and session registrations go on (deletes are how an
//! operator makes room), and the entries already accepted fit in the reserve. The alarm clears
//! by itself once the space is back (etcd's NOSPACE alarm, without the manual disarm).

use std::path::Path;

/// Bytes kept free on the data dir's file system, by default, in WAL segments: room for the
/// segment being written, the next one, and a snapshot's worth of churn.
pub const SPACE_RESERVE_SEGMENTS_DEFAULT: u64 = 4;
/// The data dir's size at most, by default: none (0), so that a node upgraded with a large
/// data dir does not start refusing writes; the reserve guards the disk itself. (etcd's
/// backend quota is 2 GiB by default.)
pub const SPACE_QUOTA_BYTES_DEFAULT: u64 = 0;

/// One measurement of the data dir.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Bytes its files take (apparent sizes: preallocated segments count whole).
    pub used: u64,
    /// Bytes free to unprivileged users on its file system.
    pub free: u64,
}

/// The limits a node holds its data dir to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpaceLimits {
    /// Alarm when the data dir holds this much or more (0: no quota).
    pub quota_bytes: u64,
    /// Alarm when its file system has less than this free.
    pub reserve_bytes: u64,
}

impl SpaceLimits {
    /// Why the alarm must be raised for `usage`, if it must.
    pub fn alarm(&self, usage: Usage) -> Option<String> {
        if self.quota_bytes > 0 && usage.used >= self.quota_bytes {
            return Some(format!(
                "the data dir holds {} bytes, the quota is {} (--space-quota-bytes)",
                usage.used, self.quota_bytes
            ));
        }
        if usage.free < self.reserve_bytes {
            return Some(format!(
                "{} bytes free on the data dir's file system, the reserve is {} \
                 (--space-reserve-bytes)",
                usage.free, self.reserve_bytes
            ));
        }
        None
    }
}

/// Measures `dir`: the apparent size of every file under it, and the free space on its file
/// system.
pub fn measure(dir: &Path) -> std::io::Result<Usage> {
    Ok(Usage { used: dir_bytes(dir)?, free: free_bytes(dir)? })
}

fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            // Deleted meanwhile (a compacted segment, an old snapshot).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.is_dir() {
            match dir_bytes(&entry.path()) {
                Ok(bytes) => total = total.saturating_add(bytes),
                // Not raftd's (a file system's root-only `lost+found`, where the data dir is a
                // mount point): not counted.
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        } else {
            total = total.saturating_add(meta.len());
        }
    }
    Ok(total)
}

fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("a NUL byte in the data dir's path"))?;
    // SAFETY: statvfs only writes the struct it is given; all-zero is a valid value of it.
    #[allow(unsafe_code)]
    let stat = unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut stat) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        stat
    };
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alarm_is_raised_over_the_quota_or_under_the_reserve() {
        let limits = SpaceLimits { quota_bytes: 1000, reserve_bytes: 100 };
        assert_eq!(limits.alarm(Usage { used: 999, free: 100 }), None);
        assert!(limits.alarm(Usage { used: 1000, free: 10_000 }).unwrap().contains("quota"));
        assert!(limits.alarm(Usage { used: 0, free: 99 }).unwrap().contains("reserve"));
        let no_quota = SpaceLimits { quota_bytes: 0, reserve_bytes: 0 };
        assert_eq!(no_quota.alarm(Usage { used: u64::MAX, free: 0 }), None);
    }

    #[test]
    fn a_subdirectory_that_cannot_be_read_is_not_counted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![0u8; 100]).unwrap();
        let locked = dir.path().join("lost+found");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        // (root reads it anyway; elsewhere it is skipped.)
        let usage = measure(dir.path()).unwrap();
        assert!(usage.used >= 100);
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn a_data_dir_is_measured_with_its_subdirectories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![0u8; 1000]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b"), vec![0u8; 24]).unwrap();
        let usage = measure(dir.path()).unwrap();
        assert_eq!(usage.used, 1024);
        assert!(usage.free > 0);
    }
}
