//! Record and segment-header byte layouts, with their checksums.
//!
//! Every multi-byte integer is little-endian.

use crc32fast::Hasher;

/// Magic at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"RAFTWALS";
/// The on-disk format version this crate writes and reads. Version 2 numbers every record
/// and records in each one how far the log was synced when it was written.
pub const FORMAT_VERSION: u32 = 2;

/// Segment header: magic (8), version u32 (4), reserved (4), sequence u64 (8), the number of
/// its first record u64 (8), crc32 of the preceding 32 bytes (4), reserved (4).
pub const SEGMENT_HEADER_SIZE: usize = 40;
const SEGMENT_MAGIC_OFFSET: usize = 0;
const SEGMENT_VERSION_OFFSET: usize = SEGMENT_MAGIC_OFFSET + 8;
const SEGMENT_SEQUENCE_OFFSET: usize = SEGMENT_VERSION_OFFSET + 8;
const SEGMENT_FIRST_LSN_OFFSET: usize = SEGMENT_SEQUENCE_OFFSET + 8;
const SEGMENT_CRC_OFFSET: usize = SEGMENT_FIRST_LSN_OFFSET + 8;

/// Record header: payload length u32 (4), crc32 u32 (4), kind u8 (1), reserved zero bytes
/// (7), the record's number (log sequence number) u64 (8), the number of the last record a
/// completed sync covered when this one was written u64 (8). The crc covers the segment
/// sequence (u64), header bytes 8..32 and the payload.
pub const RECORD_HEADER_SIZE: usize = 32;
pub const RECORD_LEN_OFFSET: usize = 0;
pub const RECORD_CRC_OFFSET: usize = RECORD_LEN_OFFSET + 4;
pub const RECORD_KIND_OFFSET: usize = RECORD_CRC_OFFSET + 4;
pub const RECORD_RESERVED_OFFSET: usize = RECORD_KIND_OFFSET + 1;
pub const RECORD_LSN_OFFSET: usize = RECORD_RESERVED_OFFSET + 7;
pub const RECORD_SYNCED_LSN_OFFSET: usize = RECORD_LSN_OFFSET + 8;
/// Records start at multiples of this.
pub const RECORD_ALIGN: usize = 8;

/// Entries payload header: first index u64 (8), count u32 (4), reserved (4); then `count`
/// slots of term u64 (8), data offset u32 from the payload start (4), data length u32 (4);
/// then the data.
pub const ENTRIES_HEADER_SIZE: usize = 16;
pub const ENTRY_SLOT_SIZE: usize = 16;
/// Hard state payload: term, vote, commit, each u64.
pub const HARD_STATE_SIZE: usize = 24;
/// Compact payload: the new first index, u64.
pub const COMPACT_SIZE: usize = 8;
/// Snapshot marker payload: index u64, term u64, conf state length u32, conf state bytes.
pub const SNAPSHOT_MARKER_HEADER_SIZE: usize = 20;

/// The kinds of record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A batch of entries.
    Entries = 1,
    /// A hard state.
    HardState = 2,
    /// A snapshot marker.
    Snapshot = 3,
    /// Entries before an index were compacted.
    Compact = 4,
}

impl RecordKind {
    pub fn from_byte(b: u8) -> Option<RecordKind> {
        match b {
            1 => Some(RecordKind::Entries),
            2 => Some(RecordKind::HardState),
            3 => Some(RecordKind::Snapshot),
            4 => Some(RecordKind::Compact),
            _ => None,
        }
    }
}

/// The bytes a record with a payload of `payload_len` occupies, padding included.
pub fn record_size(payload_len: usize) -> usize {
    (RECORD_HEADER_SIZE + payload_len).div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// The checksum of a record: its segment's sequence, header bytes from the kind on, payload.
pub fn record_crc(sequence: u64, header_tail: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = Hasher::new();
    hasher.update(&sequence.to_le_bytes());
    hasher.update(header_tail);
    hasher.update(payload);
    hasher.finalize()
}

/// A record's numbers: its own, and the last one synced when it was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lsns {
    /// The record's number.
    pub lsn: u64,
    /// The last record a completed sync covered when it was written (0: none).
    pub synced_lsn: u64,
}

pub fn read_u32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

pub fn read_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Writes a record (header, payload, zero padding) at the start of `dst`, which must hold
/// `record_size(payload.len())` bytes. The payload is produced in place by `fill`.
pub fn write_record(
    dst: &mut [u8],
    sequence: u64,
    kind: RecordKind,
    lsns: Lsns,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8]),
) {
    let size = record_size(payload_len);
    assert!(dst.len() >= size, "record of {size} bytes into {} bytes", dst.len());
    assert!(lsns.synced_lsn < lsns.lsn, "record {} claims {} synced", lsns.lsn, lsns.synced_lsn);
    let (header, rest) = dst.split_at_mut(RECORD_HEADER_SIZE);
    let payload = &mut rest[..payload_len];
    fill(payload);
    header[RECORD_KIND_OFFSET] = kind as u8;
    header[RECORD_RESERVED_OFFSET..RECORD_LSN_OFFSET].fill(0);
    header[RECORD_LSN_OFFSET..RECORD_LSN_OFFSET + 8].copy_from_slice(&lsns.lsn.to_le_bytes());
    header[RECORD_SYNCED_LSN_OFFSET..RECORD_SYNCED_LSN_OFFSET + 8]
        .copy_from_slice(&lsns.synced_lsn.to_le_bytes());
    let crc = record_crc(sequence, &header[RECORD_KIND_OFFSET..], payload);
    rest[payload_len..size - RECORD_HEADER_SIZE].fill(0);
    header[RECORD_LEN_OFFSET..RECORD_LEN_OFFSET + 4]
        .copy_from_slice(&(payload_len as u32).to_le_bytes());
    header[RECORD_CRC_OFFSET..RECORD_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
}

/// What is found at an offset of a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A record that verifies: its kind, numbers, payload range and total size.
    Record { kind: RecordKind, lsns: Lsns, payload_start: usize, payload_len: usize, size: usize },
    /// A zero header: the end of the written part.
    End,
    /// Bytes that are not a valid record.
    Bad(&'static str),
}

/// Parses the record at `offset` of a segment with `sequence`.
pub fn parse_record(buf: &[u8], offset: usize, sequence: u64) -> Parsed {
    if offset + RECORD_HEADER_SIZE > buf.len() {
        return if buf[offset..].iter().all(|&b| b == 0) {
            Parsed::End
        } else {
            Parsed::Bad("partial header at the end of the file")
        };
    }
    let header = &buf[offset..offset + RECORD_HEADER_SIZE];
    if header.iter().all(|&b| b == 0) {
        return Parsed::End;
    }
    let Some(kind) = RecordKind::from_byte(header[RECORD_KIND_OFFSET]) else {
        return Parsed::Bad("unknown record kind");
    };
    if header[RECORD_RESERVED_OFFSET..RECORD_LSN_OFFSET].iter().any(|&b| b != 0) {
        return Parsed::Bad("reserved header bytes are not zero");
    }
    let payload_len = read_u32(header, RECORD_LEN_OFFSET) as usize;
    let payload_start = offset + RECORD_HEADER_SIZE;
    if payload_len > buf.len() - payload_start {
        return Parsed::Bad("payload runs past the end of the file");
    }
    let payload = &buf[payload_start..payload_start + payload_len];
    if read_u32(header, RECORD_CRC_OFFSET)
        != record_crc(sequence, &header[RECORD_KIND_OFFSET..], payload)
    {
        return Parsed::Bad("checksum mismatch");
    }
    let lsns = Lsns {
        lsn: read_u64(header, RECORD_LSN_OFFSET),
        synced_lsn: read_u64(header, RECORD_SYNCED_LSN_OFFSET),
    };
    if lsns.synced_lsn >= lsns.lsn {
        return Parsed::Bad("record claims itself synced before it was written");
    }
    let size = record_size(payload_len).min(buf.len() - offset);
    Parsed::Record { kind, lsns, payload_start, payload_len, size }
}

/// Writes a segment header for a segment whose first record will be number `first_lsn`.
pub fn write_segment_header(dst: &mut [u8], sequence: u64, first_lsn: u64) {
    dst[..SEGMENT_HEADER_SIZE].fill(0);
    dst[SEGMENT_FIRST_LSN_OFFSET..SEGMENT_FIRST_LSN_OFFSET + 8]
        .copy_from_slice(&first_lsn.to_le_bytes());
    dst[SEGMENT_MAGIC_OFFSET..SEGMENT_MAGIC_OFFSET + 8].copy_from_slice(&SEGMENT_MAGIC);
    dst[SEGMENT_VERSION_OFFSET..SEGMENT_VERSION_OFFSET + 4]
        .copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    dst[SEGMENT_SEQUENCE_OFFSET..SEGMENT_SEQUENCE_OFFSET + 8]
        .copy_from_slice(&sequence.to_le_bytes());
    let crc = crc32fast::hash(&dst[..SEGMENT_CRC_OFFSET]);
    dst[SEGMENT_CRC_OFFSET..SEGMENT_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Checks a segment header; returns the number of its first record, or the reason it is not
/// valid for `sequence`.
pub fn check_segment_header(buf: &[u8], sequence: u64) -> Result<u64, String> {
    if buf.len() < SEGMENT_HEADER_SIZE {
        return Err(format!("file of {} bytes is shorter than a segment header", buf.len()));
    }
    if buf[SEGMENT_MAGIC_OFFSET..SEGMENT_MAGIC_OFFSET + 8] != SEGMENT_MAGIC {
        return Err("bad magic: not a segment of this log".to_string());
    }
    // The version first: it sits where every version has it, while the checksum's place
    // depends on the version.
    let version = read_u32(buf, SEGMENT_VERSION_OFFSET);
    if version != FORMAT_VERSION {
        return Err(format!("format version {version}, this build reads {FORMAT_VERSION}"));
    }
    let crc = read_u32(buf, SEGMENT_CRC_OFFSET);
    if crc != crc32fast::hash(&buf[..SEGMENT_CRC_OFFSET]) {
        return Err("segment header checksum mismatch".to_string());
    }
    let found = read_u64(buf, SEGMENT_SEQUENCE_OFFSET);
    if found != sequence {
        return Err(format!("header says sequence {found}, file name says {sequence}"));
    }
    Ok(read_u64(buf, SEGMENT_FIRST_LSN_OFFSET))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_every_byte_is_covered() {
        let payload = b"hello, raft".to_vec();
        let mut buf = vec![0u8; 64];
        let lsns = Lsns { lsn: 12, synced_lsn: 9 };
        write_record(&mut buf, 7, RecordKind::Entries, lsns, payload.len(), |p| {
            p.copy_from_slice(&payload)
        });
        let size = record_size(payload.len());
        assert_eq!(size % RECORD_ALIGN, 0);
        assert_eq!(
            parse_record(&buf, 0, 7),
            Parsed::Record {
                kind: RecordKind::Entries,
                lsns,
                payload_start: RECORD_HEADER_SIZE,
                payload_len: payload.len(),
                size
            }
        );
        assert!(matches!(parse_record(&buf, 0, 8), Parsed::Bad(_)), "another segment's record");
        for i in 0..RECORD_HEADER_SIZE + payload.len() {
            for bit in 0..8 {
                let mut damaged = buf.clone();
                damaged[i] ^= 1 << bit;
                assert!(
                    !matches!(parse_record(&damaged, 0, 7), Parsed::Record { .. }),
                    "flip of bit {bit} in byte {i} went unnoticed"
                );
            }
        }
        assert_eq!(parse_record(&buf, size, 7), Parsed::End);
    }

    #[test]
    fn segment_header_checks_magic_version_sequence() {
        let mut buf = vec![0u8; SEGMENT_HEADER_SIZE];
        write_segment_header(&mut buf, 3, 17);
        assert_eq!(check_segment_header(&buf, 3), Ok(17));
        assert!(check_segment_header(&buf, 4).is_err());
        let mut bad = buf.clone();
        bad[0] = b'X';
        assert!(check_segment_header(&bad, 3).unwrap_err().contains("magic"));
        let mut v2 = buf.clone();
        v2[SEGMENT_VERSION_OFFSET] = 9;
        let crc = crc32fast::hash(&v2[..SEGMENT_CRC_OFFSET]);
        v2[SEGMENT_CRC_OFFSET..SEGMENT_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        assert!(check_segment_header(&v2, 3).unwrap_err().contains("version 9"));
        // A segment of format version 1 (a 32-byte header, its checksum at 24) is named as such.
        let mut v1 = vec![0u8; SEGMENT_HEADER_SIZE];
        v1[..8].copy_from_slice(&SEGMENT_MAGIC);
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        v1[16..24].copy_from_slice(&3u64.to_le_bytes());
        let crc = crc32fast::hash(&v1[..24]);
        v1[24..28].copy_from_slice(&crc.to_le_bytes());
        let err = check_segment_header(&v1, 3).unwrap_err();
        assert_eq!(err, "format version 1, this build reads 2");
    }
}
