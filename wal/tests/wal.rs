//! The write-ahead log: round trips, conflicts, compaction, and recovery from the damage
//! crashes and disks do.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use wal::{EntryRef, Error, HardState, Identity, Options, RecoveryMode, SnapshotMarker, Wal};

const SMALL_SEGMENT: u64 = 64 * 1024;
/// The segment header's size (format version 2).
const SEGMENT_HEADER: usize = 40;
/// A record header's size (format version 2).
const RECORD_HEADER: usize = 32;

fn identity() -> Identity {
    Identity { node_id: 1, cluster_id: "test".to_string() }
}

fn options() -> Options {
    Options { segment_size_bytes: SMALL_SEGMENT, ..Options::default() }
}

fn open(dir: &Path) -> (Wal, wal::Recovery) {
    Wal::open(dir, &identity(), options()).expect("opens")
}

fn data_of(index: u64, term: u64) -> Vec<u8> {
    format!("entry {index} of term {term}").into_bytes()
}

/// Appends entries `[first, last]` of `term` as one batch, each given as a head and the rest
/// split at a point that moves with the index (none, some, all of it in the head).
fn append(wal: &mut Wal, first: u64, last: u64, term: u64) {
    let datas: Vec<Vec<u8>> = (first..=last).map(|i| data_of(i, term)).collect();
    let refs: Vec<EntryRef<'_>> = (first..=last)
        .zip(&datas)
        .map(|(index, bytes)| {
            let (head, data) = bytes.split_at(index as usize % (bytes.len() + 1));
            EntryRef { head, index, term, data }
        })
        .collect();
    wal.append_entries(&refs).expect("append");
}

/// The (index, term) of every entry, checking each entry's data.
fn log_of(wal: &Wal) -> Vec<(u64, u64)> {
    if wal.last_index() < wal.first_index() {
        return Vec::new();
    }
    let entries = wal.entries(wal.first_index(), wal.last_index() + 1, u64::MAX).expect("read");
    entries
        .iter()
        .map(|e| {
            assert_eq!(e.data, data_of(e.index, e.term), "entry {} intact", e.index);
            assert_eq!(wal.term(e.index).unwrap(), e.term);
            (e.index, e.term)
        })
        .collect()
}

fn expected(ranges: &[(u64, u64, u64)]) -> Vec<(u64, u64)> {
    ranges.iter().flat_map(|&(first, last, term)| (first..=last).map(move |i| (i, term))).collect()
}

#[test]
fn round_trip_of_every_record_kind_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, recovery) = open(dir.path());
    assert_eq!((recovery.first_index, recovery.last_index, recovery.hard_state), (1, 0, None));
    append(&mut wal, 1, 10, 1);
    wal.set_hard_state(HardState { term: 1, vote: 2, commit: 7 }).unwrap();
    let marker = SnapshotMarker { index: 5, term: 1, conf_state: b"voters 1 2 3".to_vec() };
    wal.mark_snapshot(marker.clone()).unwrap();
    append(&mut wal, 11, 12, 2);
    wal.sync().unwrap();
    let before = log_of(&wal);
    assert_eq!(before, expected(&[(1, 10, 1), (11, 12, 2)]));
    drop(wal);

    let (wal, recovery) = open(dir.path());
    assert_eq!(recovery.hard_state, Some(HardState { term: 1, vote: 2, commit: 7 }));
    assert_eq!(recovery.snapshot, Some(marker));
    assert_eq!((recovery.first_index, recovery.last_index), (1, 12));
    assert_eq!(recovery.records, 4);
    assert!(recovery.torn_tail.is_none());
    assert_eq!(log_of(&wal), before);
}

#[test]
fn entries_respect_bounds_and_size_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path());
    append(&mut wal, 1, 5, 1);
    let one = data_of(1, 1).len() as u64;
    assert_eq!(wal.entries(2, 5, 0).unwrap().len(), 1, "always at least one");
    assert_eq!(wal.entries(2, 5, one * 2).unwrap().len(), 2);
    assert!(matches!(wal.entries(2, 7, u64::MAX), Err(Error::Unavailable { .. })));
    assert!(matches!(wal.term(6), Err(Error::Unavailable { .. })));
    assert_eq!(wal.term(0).unwrap(), 0);
}

#[test]
fn conflicting_append_replaces_the_suffix_durably() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path());
    append(&mut wal, 1, 10, 1);
    append(&mut wal, 6, 8, 2); // A new leader's entries conflict from 6.
    assert_eq!(log_of(&wal), expected(&[(1, 5, 1), (6, 8, 2)]));
    append(&mut wal, 9, 9, 2);
    append(&mut wal, 3, 3, 3);
    wal.sync().unwrap();
    let want = expected(&[(1, 2, 1), (3, 3, 3)]);
    assert_eq!(log_of(&wal), want);
    drop(wal);
    let (wal, _) = open(dir.path());
    assert_eq!(log_of(&wal), want);
}

#[test]
fn appends_must_follow_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path());
    append(&mut wal, 1, 3, 1);
    let gap = [EntryRef { head: &[], index: 5, term: 1, data: b"x" }];
    assert!(matches!(wal.append_entries(&gap), Err(Error::NonContiguous { first: 5, last: 3 })));
    let unordered = [
        EntryRef { head: &[], index: 4, term: 1, data: b"x" },
        EntryRef { head: &[], index: 6, term: 1, data: b"y" },
    ];
    assert!(matches!(wal.append_entries(&unordered), Err(Error::Invalid(_))));
    assert_eq!(wal.last_index(), 3);
}

#[test]
fn segments_rotate_and_an_oversized_entry_gets_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path());
    for i in 1..=400 {
        append(&mut wal, i, i, 1);
    }
    let big = vec![7u8; 3 * SMALL_SEGMENT as usize];
    // Given as a head and the rest: sized, placed and read back as one.
    let (head, data) = big.split_at(SMALL_SEGMENT as usize);
    wal.append_entries(&[EntryRef { head, index: 401, term: 1, data }]).unwrap();
    append(&mut wal, 402, 402, 1);
    wal.sync().unwrap();
    assert!(wal.segment_paths().len() >= 2);
    drop(wal);
    let (wal, _) = open(dir.path());
    assert_eq!(wal.last_index(), 402);
    assert_eq!(wal.entries(401, 402, u64::MAX).unwrap()[0].data, big);
    assert_eq!(wal.entries(400, 401, u64::MAX).unwrap()[0].data, data_of(400, 1));
}

#[test]
fn snapshot_marker_keeps_a_matching_log_and_resets_a_conflicting_one() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path());
    append(&mut wal, 1, 10, 1);
    wal.mark_snapshot(SnapshotMarker { index: 6, term: 1, conf_state: vec![] }).unwrap();
    assert_eq!((wal.first_index(), wal.last_index()), (1, 10), "matching: entries stay");
    // A leader's snapshot at 20 that this log cannot match: the log restarts after it.
    wal.mark_snapshot(SnapshotMarker { index: 20, term: 3, conf_state: vec![1] }).unwrap();
    assert_eq!((wal.first_index(), wal.last_index()), (21, 20));
    assert_eq!(wal.term(20).unwrap(), 3);
    append(&mut wal, 21, 22, 3);
    wal.sync().unwrap();
    drop(wal);
    let (wal, recovery) = open(dir.path());
    assert_eq!((recovery.first_index, recovery.last_index), (21, 22));
    assert_eq!(wal.term(20).unwrap(), 3);
    assert!(matches!(wal.term(19), Err(Error::Compacted { .. })));
    assert_eq!(log_of(&wal), expected(&[(21, 22, 3)]));
}

/// A log of entries 1..=3000 (term 1, one per batch) over several segments, synced.
fn three_thousand_synced_entries() -> (tempfile::TempDir, Wal) {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path());
    for i in 1..=3000 {
        append(&mut wal, i, i, 1);
    }
    wal.set_hard_state(HardState { term: 1, vote: 1, commit: 3000 }).unwrap();
    wal.sync().unwrap();
    (dir, wal)
}

#[test]
fn compaction_deletes_whole_segments_below_the_snapshot() {
    let (dir, mut wal) = three_thousand_synced_entries();
    let segments_before = wal.segment_paths().len();
    assert!(segments_before >= 3, "{segments_before} segments");
    assert!(matches!(
        wal.compact(500),
        Err(Error::CompactBeyondSnapshot { index: 500, snapshot_index: 0 })
    ));
    wal.mark_snapshot(SnapshotMarker { index: 2500, term: 1, conf_state: b"cs".to_vec() }).unwrap();
    assert!(matches!(wal.compact(2502), Err(Error::CompactBeyondSnapshot { .. })));
    wal.compact(2501).unwrap();
    assert_eq!(wal.first_index(), 2501);
    assert!(wal.segment_paths().len() < segments_before);
    assert!(matches!(wal.entries(400, 410, u64::MAX), Err(Error::Compacted { .. })));
    assert_eq!(log_of(&wal), expected(&[(2501, 3000, 1)]));
    drop(wal);
    let (wal, recovery) = open(dir.path());
    assert_eq!(recovery.hard_state, Some(HardState { term: 1, vote: 1, commit: 3000 }));
    assert_eq!(recovery.snapshot.map(|s| s.index), Some(2500));
    assert_eq!((recovery.first_index, recovery.last_index), (2501, 3000));
    let kept: Vec<(u64, u64)> = log_of(&wal).into_iter().filter(|(i, _)| *i >= 2501).collect();
    assert_eq!(kept, expected(&[(2501, 3000, 1)]));
}

#[test]
fn segments_of_a_deferred_compaction_left_undeleted_by_a_crash_are_compacted_on_open() {
    let (dir, mut wal) = three_thousand_synced_entries();
    let before = wal.segment_paths();
    wal.mark_snapshot(SnapshotMarker { index: 2500, term: 1, conf_state: b"cs".to_vec() }).unwrap();
    let garbage = wal.compact_deferred(2501).unwrap();
    assert!(!garbage.is_empty());
    assert_eq!(wal.segment_paths().len() + garbage.len(), before.len());
    // A crash before the garbage is deleted: the segments are still on disk.
    std::mem::forget(garbage);
    drop(wal);
    assert!(before.iter().all(|p| p.exists()));
    let (mut wal, recovery) = open(dir.path());
    assert_eq!((recovery.first_index, recovery.last_index), (2501, 3000));
    assert!(matches!(wal.entries(400, 410, u64::MAX), Err(Error::Compacted { .. })));
    assert_eq!(log_of(&wal), expected(&[(2501, 3000, 1)]));
    // The next compaction deletes them, from another thread.
    wal.mark_snapshot(SnapshotMarker { index: 2800, term: 1, conf_state: b"cs".to_vec() }).unwrap();
    let garbage = wal.compact_deferred(2801).unwrap();
    std::thread::spawn(move || garbage.delete()).join().unwrap().unwrap();
    let left = wal.segment_paths();
    for p in before.iter().filter(|p| !left.contains(p)) {
        assert!(!p.exists(), "{} deleted", p.display());
    }
    assert_eq!(log_of(&wal), expected(&[(2801, 3000, 1)]));
}

/// Writes `batches` synced batches of 3 entries; returns the dir and the last segment.
fn written_log(batches: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path());
    for b in 0..batches {
        append(&mut wal, b * 3 + 1, b * 3 + 3, 1);
        wal.sync().unwrap();
    }
    let last = wal.segment_paths().pop().unwrap();
    drop(wal);
    (dir, last)
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "LOCK" {
            fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Where each 3-entry batch record of `written_log` starts, and where the last one ends.
fn record_starts(batches: u64) -> Vec<usize> {
    let mut starts = vec![SEGMENT_HEADER];
    for b in 0..batches {
        let size = (RECORD_HEADER + batch_payload_len(b)).div_ceil(8) * 8;
        starts.push(starts.last().unwrap() + size);
    }
    starts
}

fn batch_payload_len(batch: u64) -> usize {
    16 + (batch * 3 + 1..=batch * 3 + 3).map(|i| 16 + data_of(i, 1).len()).sum::<usize>()
}

/// Batches whose record is whole before `offset` (its padding is not needed).
fn intact_batches(starts: &[usize], offset: usize) -> u64 {
    (0..starts.len() - 1)
        .take_while(|&b| starts[b] + RECORD_HEADER + batch_payload_len(b as u64) <= offset)
        .count() as u64
}

#[test]
fn truncation_at_every_byte_of_the_tail_recovers_exactly_the_intact_records() {
    let batches = 5;
    let (dir, last) = written_log(batches);
    let starts = record_starts(batches);
    let end = *starts.last().unwrap();
    let tail_start = starts[starts.len() - 3];
    for cut in tail_start..=end {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), copy.path());
        let segment = copy.path().join(last.file_name().unwrap());
        let f = fs::OpenOptions::new().write(true).open(&segment).unwrap();
        f.set_len(cut as u64).unwrap();
        drop(f);
        let (wal, recovery) = open(copy.path());
        let intact = intact_batches(&starts, cut);
        assert_eq!(wal.last_index(), intact * 3, "cut at {cut}: every intact batch, nothing else");
        assert_eq!(log_of(&wal).len() as u64, intact * 3);
        // Torn when the cut falls inside a record's header or payload.
        let torn = (0..batches as usize).any(|b| {
            starts[b] < cut && cut < starts[b] + RECORD_HEADER + batch_payload_len(b as u64)
        });
        assert_eq!(recovery.torn_tail.is_some(), torn, "cut at {cut}");
        // The log is writable again after the cut.
        drop(wal);
        let (mut wal, _) = open(copy.path());
        append(&mut wal, intact * 3 + 1, intact * 3 + 1, 2);
        wal.sync().unwrap();
    }
}

fn damaged_copy(dir: &Path, last: &Path, damage: impl FnOnce(&mut Vec<u8>)) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir, copy.path());
    let segment = copy.path().join(last.file_name().unwrap());
    let mut bytes = fs::read(&segment).unwrap();
    damage(&mut bytes);
    fs::write(&segment, bytes).unwrap();
    copy
}

#[test]
fn bit_flips_in_the_last_record_are_a_torn_tail_and_elsewhere_corruption() {
    let batches = 6;
    let (dir, last) = written_log(batches);
    let starts = record_starts(batches);
    let mut seed = 0x9e37_79b9_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..200 {
        let in_last = next() % 2 == 0;
        let batch = if in_last { batches as usize - 1 } else { (next() % (batches - 1)) as usize };
        let (start, end) = (starts[batch], starts[batch + 1]);
        // Any byte of the record but its zero padding.
        let offset = start + (next() as usize % (end - start - 8));
        let bit = next() % 8;
        let copy = damaged_copy(dir.path(), &last, |b| b[offset] ^= 1 << bit);
        match Wal::open(copy.path(), &identity(), options()) {
            Ok((wal, recovery)) => {
                assert!(
                    in_last,
                    "damage at {offset} in batch {batch} must not pass as a torn tail"
                );
                assert!(recovery.torn_tail.is_some());
                assert_eq!(
                    log_of(&wal),
                    expected(&[(1, (batches - 1) * 3, 1)]),
                    "only the damaged record lost"
                );
            }
            Err(Error::Corruption { segment, offset: at, reason }) => {
                assert!(!in_last, "a flip in the last record is a torn tail: {reason}");
                assert_eq!(at as usize, start, "names the bad record");
                assert!(segment.ends_with(last.file_name().unwrap()));
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
}

#[test]
fn zeroed_page_in_the_middle_is_corruption_and_repair_truncates_there() {
    let batches = 200;
    let (dir, last) = written_log(batches);
    let starts = record_starts(batches);
    let end = *starts.last().unwrap();
    assert!(end > 3 * 4096);
    let copy = damaged_copy(dir.path(), &last, |b| b[4096..8192].fill(0));
    let err = Wal::open(copy.path(), &identity(), options()).err().expect("corruption");
    let Error::Corruption { offset, reason, .. } = err else { panic!("{err}") };
    let first_bad = *starts.iter().take_while(|&&s| s <= 4096).last().unwrap();
    assert_eq!(offset as usize, first_bad, "{reason}");
    let repair = Options { recovery_mode: RecoveryMode::Repair, ..options() };
    let (wal, recovery) = Wal::open(copy.path(), &identity(), repair).unwrap();
    let damage = recovery.repaired.expect("repaired");
    assert_eq!(damage.offset as usize, first_bad);
    assert!(damage.bytes_dropped > 0);
    let kept = intact_batches(&starts, first_bad) * 3;
    assert_eq!(log_of(&wal), expected(&[(1, kept, 1)]));
    drop(wal);
    // Once repaired, it opens cleanly.
    let (_, recovery) = open(copy.path());
    assert!(recovery.repaired.is_none() && recovery.torn_tail.is_none());

    // A zeroed page at the very end is a torn tail.
    let tail_page = (end - 1) / 4096 * 4096;
    let copy = damaged_copy(dir.path(), &last, |b| b[tail_page..tail_page + 4096].fill(0));
    let (wal, recovery) = open(copy.path());
    assert!(recovery.torn_tail.is_some());
    assert_eq!(wal.last_index(), intact_batches(&starts, tail_page) * 3);
}

#[test]
fn damage_in_a_segment_that_is_not_the_last_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path());
    for i in 1..=3000 {
        append(&mut wal, i, i, 1);
    }
    wal.sync().unwrap();
    // A record written after the sync shows that the sync completed.
    append(&mut wal, 3001, 3001, 1);
    wal.sync().unwrap();
    assert!(wal.segment_paths().len() >= 2);
    let first = wal.segment_paths()[0].clone();
    drop(wal);
    let len = fs::metadata(&first).unwrap().len();
    let copy = damaged_copy(dir.path(), &first, |b| {
        // Flip a byte near the end of the written part of the first segment.
        let last_written = b.iter().rposition(|&x| x != 0).unwrap();
        b[last_written] ^= 0xff;
    });
    assert_eq!(fs::metadata(copy.path().join(first.file_name().unwrap())).unwrap().len(), len);
    assert!(matches!(
        Wal::open(copy.path(), &identity(), options()),
        Err(Error::Corruption { .. })
    ));
}

#[test]
fn bad_data_dirs_fail_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    // Another node's directory.
    let other = Identity { node_id: 2, cluster_id: "test".to_string() };
    let err = Wal::open(dir.path(), &other, options()).err().unwrap();
    assert!(
        matches!(err, Error::IdentityMismatch { expected_node: 2, found_node: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("belongs to node 1"));
    // Another cluster's.
    let other = Identity { node_id: 1, cluster_id: "prod".to_string() };
    assert!(matches!(
        Wal::open(dir.path(), &other, options()),
        Err(Error::IdentityMismatch { .. })
    ));
    // A path that cannot be a directory.
    let file = dir.path().join("plain-file");
    fs::write(&file, b"x").unwrap();
    let err = Wal::open(&file.join("data"), &identity(), options()).err().unwrap();
    assert!(matches!(err, Error::Io { .. }) && err.to_string().contains("plain-file"), "{err}");
    // An unknown format version in a segment.
    let seg = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "wal"))
        .unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    bytes[8] = 9;
    let crc = crc32(&bytes[..32]);
    bytes[32..36].copy_from_slice(&crc.to_le_bytes());
    // Keep it from looking blank, and not the last segment: add an empty later segment.
    fs::write(&seg, &bytes).unwrap();
    let err = Wal::open(dir.path(), &identity(), options()).err().unwrap();
    assert!(err.to_string().contains("format version 9"), "{err}");
}

fn crc32(bytes: &[u8]) -> u32 {
    // The standard CRC-32 (IEEE), as crc32fast computes it.
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn a_data_dir_is_used_by_one_process_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (_wal, _) = open(dir.path());
    let err = Wal::open(dir.path(), &identity(), options()).err().unwrap();
    assert!(err.to_string().contains("another process"), "{err}");
}

const CHILD_DIR_ENV: &str = "WAL_TEST_CHILD_DIR";

/// Run by `kill_mid_append_recovers_every_synced_batch` in a child process: appends and
/// syncs batches forever, reporting each synced batch on stdout.
#[test]
#[ignore = "helper: run in a child process by kill_mid_append_recovers_every_synced_batch"]
fn child_appends_until_killed() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let (mut wal, _) = open(Path::new(&dir));
    let payload = vec![0xabu8; 700];
    let mut index = 0u64;
    for batch in 0u64.. {
        let refs: Vec<EntryRef<'_>> = (0..5)
            .map(|k| EntryRef { head: &[], index: index + 1 + k, term: 1, data: &payload })
            .collect();
        wal.append_entries(&refs).unwrap();
        wal.set_hard_state(HardState { term: 1, vote: 1, commit: index + 5 }).unwrap();
        wal.sync().unwrap();
        index += 5;
        println!("synced {batch} {index}");
    }
}

#[test]
fn kill_mid_append_recovers_every_synced_batch() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "child_appends_until_killed",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut last_synced = 0u64;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("synced ") {
            let mut parts = rest.split(' ');
            let batch: u64 = parts.next().unwrap().parse().unwrap();
            last_synced = parts.next().unwrap().parse().unwrap();
            if batch == 300 {
                child.kill().unwrap(); // SIGKILL, mid-append of a later batch.
                break;
            }
        }
    }
    child.wait().unwrap();
    assert!(last_synced > 0, "the child reported synced batches");
    let (wal, recovery) = open(dir.path());
    assert!(wal.last_index() >= last_synced, "every synced batch is recovered");
    assert_eq!(wal.last_index() % 5, 0, "batches are whole");
    let hs = recovery.hard_state.unwrap();
    assert!(hs.commit >= last_synced && hs.commit <= wal.last_index());
    for e in wal.entries(1, wal.last_index() + 1, u64::MAX).unwrap() {
        assert_eq!(e.data, vec![0xabu8; 700], "entry {} intact", e.index);
    }
}

/// Issue 13, item 2: a segment whose first record is a snapshot marker (the log rotated right
/// at it), once the segments before it are compacted away, holds entries that start after the
/// ones the marker is followed by in the whole log. Closed cleanly and reopened, it must open.
#[test]
fn a_segment_starting_with_a_snapshot_marker_recovers_after_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let small = Options { segment_size_bytes: wal::SEGMENT_SIZE_BYTES_MIN, ..Options::default() };
    let (mut wal, _) = Wal::open(dir.path(), &identity(), small.clone()).unwrap();
    let big = vec![1u8; 600];
    let refs: Vec<EntryRef<'_>> =
        (1..=5).map(|index| EntryRef { head: &[], index, term: 1, data: &big }).collect();
    wal.append_entries(&refs).unwrap();
    wal.sync().unwrap();
    assert_eq!(wal.segment_paths().len(), 1);
    // Too large for what is left of the first segment: the marker starts the second, and
    // leaves room in it for the next entries.
    let marker = SnapshotMarker { index: 3, term: 1, conf_state: vec![7; 3600] };
    wal.mark_snapshot(marker).unwrap();
    assert_eq!(wal.segment_paths().len(), 2, "the marker opened a segment");
    append(&mut wal, 6, 10, 1);
    wal.mark_snapshot(SnapshotMarker { index: 5, term: 1, conf_state: b"conf".to_vec() }).unwrap();
    wal.compact(6).unwrap();
    let kept = wal.segment_paths();
    assert!(kept[0].ends_with("00000000000000000002.wal"), "the first segment is gone: {kept:?}");
    drop(wal);
    let (wal, recovery) = Wal::open(dir.path(), &identity(), small).expect("a valid log opens");
    assert_eq!(log_of(&wal), expected(&[(6, 10, 1)]));
    assert_eq!(recovery.snapshot.map(|s| s.index), Some(5));
    assert!(recovery.torn_tail.is_none() && recovery.repaired.is_none());
}

/// Writes A (synced), then B at the end of the first segment and C, which rotates to a
/// second one, and syncs both; then, with `later`, one more record D after that sync.
fn straddling_log(later: bool) -> (tempfile::TempDir, Options) {
    let dir = tempfile::tempdir().unwrap();
    let small = Options { segment_size_bytes: wal::SEGMENT_SIZE_BYTES_MIN, ..Options::default() };
    let (mut wal, _) = Wal::open(dir.path(), &identity(), small.clone()).unwrap();
    wal.append_entries(&[EntryRef { head: &[], index: 1, term: 1, data: b"A" }]).unwrap();
    wal.sync().unwrap();
    let b = vec![b'B'; 3500];
    let c = vec![b'C'; 1000];
    wal.append_entries(&[EntryRef { head: &[], index: 2, term: 1, data: &b }]).unwrap();
    wal.append_entries(&[EntryRef { head: &[], index: 3, term: 1, data: &c }]).unwrap();
    assert_eq!(wal.segment_paths().len(), 2, "C rotated to a second segment");
    wal.sync().unwrap();
    if later {
        wal.append_entries(&[EntryRef { head: &[], index: 4, term: 1, data: b"D" }]).unwrap();
        wal.sync().unwrap();
    }
    (dir, small)
}

/// Issue 13, item 3: the pages of one sync reach the disk in any order, and a sync's records
/// may straddle a rotation. A power cut before the sync completed can keep C (in the later
/// segment) and lose B (before it): damage followed by valid records, not in the last
/// segment, yet never acknowledged. It is truncated, not refused.
#[test]
fn unsynced_damage_before_valid_records_is_repaired_not_refused() {
    let (dir, small) = straddling_log(false);
    let first = dir.path().join("00000000000000000001.wal");
    let mut bytes = fs::read(&first).unwrap();
    bytes[1000..3000].fill(0); // B's pages, lost.
    fs::write(&first, bytes).unwrap();
    let (wal, recovery) = Wal::open(dir.path(), &identity(), small).expect("opens");
    assert_eq!(wal.last_index(), 1, "A, synced, is kept; B and C, never synced, are not");
    let damage = recovery.torn_tail.expect("reported as unsynced writes lost");
    assert_eq!(damage.segments_dropped, 1);
    assert!(recovery.repaired.is_none());
}

/// The same damage once a later record shows that the sync covering B completed: that is
/// corruption, refused with the segment, the offset and the proof.
#[test]
fn damage_to_records_a_later_record_proves_synced_is_corruption() {
    let (dir, small) = straddling_log(true);
    let first = dir.path().join("00000000000000000001.wal");
    let mut bytes = fs::read(&first).unwrap();
    bytes[1000..3000].fill(0);
    fs::write(&first, bytes).unwrap();
    let err = Wal::open(dir.path(), &identity(), small).err().expect("refused");
    let Error::Corruption { segment, offset, reason } = err else { panic!("{err}") };
    assert!(segment.ends_with("00000000000000000001.wal"));
    assert!(offset > 40 && offset < 1000, "names B's record: {offset}");
    assert!(reason.contains("after a sync that covered it"), "{reason}");
}
