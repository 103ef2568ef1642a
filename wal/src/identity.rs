//! The identity file: which node of which cluster a data directory belongs to.
//!
//! Layout: magic `RAFTWALI` (8), format version u32 (4), reserved (4), node id u64 (8),
//! cluster id length u16 (2), cluster id bytes (n), crc32 of everything before it (4).

use std::path::Path;

use crate::errors::{Error, Result};
use crate::fs::{write_atomically, Fs};
use crate::record::{read_u32, read_u64};

/// The identity file's own format version (unchanged by the log's).
const IDENTITY_VERSION: u32 = 1;

/// The identity file's name.
pub const IDENTITY_FILE: &str = "IDENTITY";
const IDENTITY_MAGIC: [u8; 8] = *b"RAFTWALI";
const IDENTITY_FIXED_SIZE: usize = 26;
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

fn encode(identity: &Identity) -> Vec<u8> {
    let mut out = Vec::with_capacity(IDENTITY_FIXED_SIZE + identity.cluster_id.len() + 4);
    out.extend_from_slice(&IDENTITY_MAGIC);
    out.extend_from_slice(&IDENTITY_VERSION.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&identity.node_id.to_le_bytes());
    out.extend_from_slice(&(identity.cluster_id.len() as u16).to_le_bytes());
    out.extend_from_slice(identity.cluster_id.as_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn decode(path: &Path, bytes: &[u8]) -> Result<Identity> {
    let bad = |reason: String| Error::UnknownFormat { path: path.to_path_buf(), reason };
    if bytes.len() < IDENTITY_FIXED_SIZE + 4 || bytes[..8] != IDENTITY_MAGIC {
        return Err(bad("not an identity file of this log".to_string()));
    }
    let version = read_u32(bytes, 8);
    if version != IDENTITY_VERSION {
        return Err(bad(format!("format version {version}, this build reads {IDENTITY_VERSION}")));
    }
    let len = u16::from_le_bytes([bytes[24], bytes[25]]) as usize;
    if bytes.len() != IDENTITY_FIXED_SIZE + len + 4 {
        return Err(bad(format!(
            "length {} does not match a cluster id of {len} bytes",
            bytes.len()
        )));
    }
    let body = &bytes[..IDENTITY_FIXED_SIZE + len];
    if read_u32(bytes, IDENTITY_FIXED_SIZE + len) != crc32fast::hash(body) {
        return Err(bad("checksum mismatch".to_string()));
    }
    let cluster_id = String::from_utf8(body[IDENTITY_FIXED_SIZE..].to_vec())
        .map_err(|_| bad("cluster id is not UTF-8".to_string()))?;
    Ok(Identity { node_id: read_u64(bytes, 16), cluster_id })
}

/// Checks the directory's identity against `expected`, or records it in a new directory.
pub fn check_or_create(fs: &dyn Fs, dir: &Path, expected: &Identity, new_dir: bool) -> Result<()> {
    if expected.cluster_id.len() > CLUSTER_ID_LEN_MAX {
        return Err(Error::Invalid(format!("cluster id longer than {CLUSTER_ID_LEN_MAX} bytes")));
    }
    let path = dir.join(IDENTITY_FILE);
    if new_dir {
        return write_atomically(fs, &path, &encode(expected))
            .map_err(|e| Error::io("write durably", &path, e));
    }
    let bytes = fs.read(&path).map_err(|e| Error::io("read", &path, e))?;
    let found = decode(&path, &bytes)?;
    if found != *expected {
        return Err(Error::IdentityMismatch {
            dir: dir.to_path_buf(),
            expected_node: expected.node_id,
            found_node: found.node_id,
            expected_cluster: expected.cluster_id.clone(),
            found_cluster: found.cluster_id,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_and_rejects_damage() {
        let id = Identity { node_id: 3, cluster_id: "prod-eu".to_string() };
        let bytes = encode(&id);
        let path = Path::new("IDENTITY");
        assert_eq!(decode(path, &bytes).unwrap(), id);
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x40;
            assert!(decode(path, &damaged).is_err(), "byte {i}");
        }
        assert!(decode(path, &bytes[..10]).is_err());
    }
}
