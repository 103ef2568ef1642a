//! The identity file: which node of which cluster a data directory belongs to, and which
//! incarnation of that node it is.
//!
//! Layout (version 2): magic `RAFTWALI` (8), format version u32 (4), reserved (4), node id
//! u64 (8), incarnation u64 (8), cluster id length u16 (2), cluster id bytes (n), crc32 of
//! everything before it (4). Version 1 had no incarnation; a version 1 file is rewritten as
//! version 2 with a new incarnation when its directory is opened (no peer can have recorded an
//! incarnation the directory never had).
//!
//! The incarnation is a random number drawn when the directory is created. A node whose disk
//! was wiped or replaced comes back under its old id with a new one, and its peers, which
//! recorded the old one, can tell it from the node that acknowledged their writes.

use std::path::Path;

use crate::errors::{Error, Result};
use crate::fs::{write_atomically, Fs};
use crate::record::{read_u32, read_u64};

/// The identity file's own format version (unchanged by the log's).
pub const IDENTITY_VERSION: u32 = 2;
/// The version before incarnations, still read (and upgraded).
const IDENTITY_VERSION_1: u32 = 1;

/// The identity file's name.
pub const IDENTITY_FILE: &str = "IDENTITY";
const IDENTITY_MAGIC: [u8; 8] = *b"RAFTWALI";
const IDENTITY_FIXED_SIZE_V1: usize = 26;
const IDENTITY_FIXED_SIZE: usize = 34;
/// The longest cluster id accepted.
pub const CLUSTER_ID_LEN_MAX: usize = 256;

/// Which node of which cluster owns a data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The node's id.
    pub node_id: u64,
    /// The cluster's name.
    pub cluster_id: String,
}

/// A new incarnation: random, never 0 (0 means "none recorded" on the wire).
pub fn new_incarnation() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: the buffer is valid for 8 bytes; getrandom writes at most that many.
    #[allow(unsafe_code)]
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    let mut value = u64::from_le_bytes(bytes);
    if n != bytes.len() as isize {
        // No kernel randomness (a very old kernel): the clock and the process id still
        // make a collision with the replaced directory's incarnation improbable.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        value =
            now.rotate_left(17) ^ (std::process::id() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    value.max(1)
}

fn encode(identity: &Identity, incarnation: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(IDENTITY_FIXED_SIZE + identity.cluster_id.len() + 4);
    out.extend_from_slice(&IDENTITY_MAGIC);
    out.extend_from_slice(&IDENTITY_VERSION.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&identity.node_id.to_le_bytes());
    out.extend_from_slice(&incarnation.to_le_bytes());
    out.extend_from_slice(&(identity.cluster_id.len() as u16).to_le_bytes());
    out.extend_from_slice(identity.cluster_id.as_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The identity in `bytes`, and its incarnation (None in a version 1 file).
fn decode(path: &Path, bytes: &[u8]) -> Result<(Identity, Option<u64>)> {
    let bad = |reason: String| Error::UnknownFormat { path: path.to_path_buf(), reason };
    if bytes.len() < IDENTITY_FIXED_SIZE_V1 + 4 || bytes[..8] != IDENTITY_MAGIC {
        return Err(bad("not an identity file of this log".to_string()));
    }
    let version = read_u32(bytes, 8);
    let fixed = match version {
        IDENTITY_VERSION => IDENTITY_FIXED_SIZE,
        IDENTITY_VERSION_1 => IDENTITY_FIXED_SIZE_V1,
        _ => {
            return Err(bad(format!(
                "format version {version}, this build reads {IDENTITY_VERSION_1} and \
                 {IDENTITY_VERSION}"
            )))
        }
    };
    if bytes.len() < fixed + 4 {
        return Err(bad(format!("{} bytes: shorter than its fixed part", bytes.len())));
    }
    let len = u16::from_le_bytes([bytes[fixed - 2], bytes[fixed - 1]]) as usize;
    if bytes.len() != fixed + len + 4 {
        return Err(bad(format!(
            "length {} does not match a cluster id of {len} bytes",
            bytes.len()
        )));
    }
    let body = &bytes[..fixed + len];
    if read_u32(bytes, fixed + len) != crc32fast::hash(body) {
        return Err(bad("checksum mismatch".to_string()));
    }
    let cluster_id = String::from_utf8(body[fixed..].to_vec())
        .map_err(|_| bad("cluster id is not UTF-8".to_string()))?;
    let incarnation = (version == IDENTITY_VERSION).then(|| read_u64(bytes, 24));
    if incarnation == Some(0) {
        return Err(bad("incarnation 0".to_string()));
    }
    Ok((Identity { node_id: read_u64(bytes, 16), cluster_id }, incarnation))
}

/// Checks the directory's identity against `expected`, or records it with a new
/// incarnation (`given`, else a random one) in a new directory; returns the directory's
/// incarnation.
pub fn check_or_create(
    fs: &dyn Fs,
    dir: &Path,
    expected: &Identity,
    new_dir: bool,
    given: Option<u64>,
) -> Result<u64> {
    let new_incarnation = || given.filter(|&i| i != 0).unwrap_or_else(new_incarnation);
    if expected.cluster_id.len() > CLUSTER_ID_LEN_MAX {
        return Err(Error::Invalid(format!("cluster id longer than {CLUSTER_ID_LEN_MAX} bytes")));
    }
    let path = dir.join(IDENTITY_FILE);
    let write = |incarnation: u64| {
        write_atomically(fs, &path, &encode(expected, incarnation))
            .map_err(|e| Error::io("write durably", &path, e))
            .map(|()| incarnation)
    };
    if new_dir {
        return write(new_incarnation());
    }
    let bytes = fs.read(&path).map_err(|e| Error::io("read", &path, e))?;
    let (found, incarnation) = decode(&path, &bytes)?;
    if found != *expected {
        return Err(Error::IdentityMismatch {
            dir: dir.to_path_buf(),
            expected_node: expected.node_id,
            found_node: found.node_id,
            expected_cluster: expected.cluster_id.clone(),
            found_cluster: found.cluster_id,
        });
    }
    match incarnation {
        Some(incarnation) => Ok(incarnation),
        None => write(new_incarnation()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_and_rejects_damage() {
        let id = Identity { node_id: 3, cluster_id: "prod-eu".to_string() };
        let bytes = encode(&id, 0x5eed);
        let path = Path::new("IDENTITY");
        assert_eq!(decode(path, &bytes).unwrap(), (id.clone(), Some(0x5eed)));
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x40;
            assert!(decode(path, &damaged).is_err(), "byte {i}");
        }
        assert!(decode(path, &bytes[..10]).is_err());
    }

    #[test]
    fn a_version_1_file_is_read_and_upgraded_with_a_new_incarnation() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity { node_id: 2, cluster_id: "c".to_string() };
        let mut v1 = Vec::new();
        v1.extend_from_slice(&IDENTITY_MAGIC);
        v1.extend_from_slice(&IDENTITY_VERSION_1.to_le_bytes());
        v1.extend_from_slice(&[0; 4]);
        v1.extend_from_slice(&2u64.to_le_bytes());
        v1.extend_from_slice(&1u16.to_le_bytes());
        v1.extend_from_slice(b"c");
        let crc = crc32fast::hash(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        let path = dir.path().join(IDENTITY_FILE);
        assert_eq!(decode(&path, &v1).unwrap(), (id.clone(), None));
        std::fs::write(&path, &v1).unwrap();
        let fs = crate::fs::OsFs;
        let incarnation = check_or_create(&fs, dir.path(), &id, false, None).unwrap();
        assert_ne!(incarnation, 0);
        assert_eq!(
            check_or_create(&fs, dir.path(), &id, false, None).unwrap(),
            incarnation,
            "kept"
        );
    }

    #[test]
    fn new_directories_get_distinct_incarnations() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let id = Identity { node_id: 1, cluster_id: "c".to_string() };
        let fs = crate::fs::OsFs;
        let ia = check_or_create(&fs, a.path(), &id, true, None).unwrap();
        let ib = check_or_create(&fs, b.path(), &id, true, None).unwrap();
        assert_ne!(ia, ib, "a wiped and recreated directory is a new incarnation");
        assert_eq!(check_or_create(&fs, a.path(), &id, false, None).unwrap(), ia);
    }

    #[test]
    fn a_given_incarnation_is_used_for_a_new_directory_only() {
        let fs = crate::fs::OsFs;
        let dir = tempfile::tempdir().unwrap();
        let id = Identity { node_id: 3, cluster_id: "c".into() };
        assert_eq!(check_or_create(&fs, dir.path(), &id, true, Some(42)).unwrap(), 42);
        assert_eq!(check_or_create(&fs, dir.path(), &id, false, Some(7)).unwrap(), 42, "kept");
        let other = tempfile::tempdir().unwrap();
        assert_ne!(check_or_create(&fs, other.path(), &id, true, Some(0)).unwrap(), 0);
    }
}
