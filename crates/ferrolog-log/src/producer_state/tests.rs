//! The producer state's rules (Kafka's `ProducerAppendInfo`), its snapshot format and its
//! snapshot files, without a `Log`.

use proptest::prelude::*;

use super::snapshot::{decode, encode};
use super::*;
use crate::types::LeaderEpoch;

const T0_MS: i64 = 1_700_000_000_000;

/// The header of a batch of `count` records from `producer_id` at `base_offset`.
fn header(
    producer_id: i64,
    epoch: i16,
    base_sequence: i32,
    count: i32,
    base_offset: i64,
) -> BatchHeader {
    BatchHeader {
        base_offset: Offset(base_offset),
        batch_length: 100,
        partition_leader_epoch: LeaderEpoch(0),
        magic: 2,
        crc: 0,
        attributes: 0,
        last_offset_delta: count - 1,
        base_timestamp_ms: T0_MS,
        max_timestamp_ms: T0_MS + base_offset,
        producer_id,
        producer_epoch: epoch,
        base_sequence,
        record_count: count,
    }
}

fn manager() -> (tempfile::TempDir, ProducerStateManager) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (manager, from) = ProducerStateManager::open(dir.path(), Offset(0)).expect("opens");
    assert_eq!(from, None);
    (dir, manager)
}

/// Checks and records a batch as a leader append does; returns the verdict.
fn append(
    manager: &mut ProducerStateManager,
    header: &BatchHeader,
) -> Result<AppendCheck, LogError> {
    let check = manager.check_leader_append(header)?;
    if check == AppendCheck::Append {
        manager.record_batch(header);
    }
    Ok(check)
}

#[test]
fn sequence_numbers_wrap_from_i32_max_to_zero() {
    assert_eq!(increment_sequence(0, 1), 1);
    assert_eq!(increment_sequence(i32::MAX, 1), 0);
    assert_eq!(increment_sequence(i32::MAX - 1, 3), 1);
    assert_eq!(increment_sequence(i32::MAX - 4, 4), i32::MAX);
}

#[test]
fn a_batch_without_producer_id_is_never_checked() -> Result<(), LogError> {
    let (_dir, mut manager) = manager();
    for offset in 0..3 {
        assert_eq!(
            append(&mut manager, &header(-1, -1, -1, 1, offset))?,
            AppendCheck::Append
        );
    }
    assert!(manager.entries().is_empty());
    Ok(())
}

#[test]
fn an_unknown_producer_may_start_at_any_sequence_and_epoch() -> Result<(), LogError> {
    let (_dir, mut manager) = manager();
    assert_eq!(
        append(&mut manager, &header(7, 4, 1234, 2, 0))?,
        AppendCheck::Append
    );
    let entry = manager.entries()[0];
    assert_eq!((entry.producer_epoch, entry.last_sequence), (4, 1235));
    Ok(())
}

#[test]
fn retries_of_each_of_the_last_five_batches_are_duplicates_and_the_sixth_is_out_of_order()
-> Result<(), LogError> {
    let (_dir, mut manager) = manager();
    // Six batches of 2 records: sequences 0-1, 2-3, ..., 10-11 at offsets 0-1, ..., 10-11.
    for i in 0..6 {
        append(&mut manager, &header(1, 0, i * 2, 2, i64::from(i) * 2))?;
    }
    for i in 1..6 {
        let retry = header(1, 0, i * 2, 2, 999);
        let Ok(AppendCheck::Duplicate(original)) = manager.check_leader_append(&retry) else {
            panic!("batch {i} should be a duplicate");
        };
        assert_eq!(original.first_offset, Offset(i64::from(i) * 2));
        assert_eq!(original.last_offset, Offset(i64::from(i) * 2 + 1));
    }
    // The oldest batch fell out of the cache: its retry fails the sequence check.
    assert!(matches!(
        manager.check_leader_append(&header(1, 0, 0, 2, 999)),
        Err(LogError::OutOfOrderSequence {
            producer_id: 1,
            expected: 12,
            got: 0,
            ..
        })
    ));
    // The same first sequence with another length is not a duplicate either.
    assert!(matches!(
        manager.check_leader_append(&header(1, 0, 10, 1, 999)),
        Err(LogError::OutOfOrderSequence { .. })
    ));
    Ok(())
}

#[test]
fn a_gap_in_the_sequence_is_refused() -> Result<(), LogError> {
    let (_dir, mut manager) = manager();
    append(&mut manager, &header(1, 0, 0, 3, 0))?;
    let err = append(&mut manager, &header(1, 0, 4, 1, 3)).expect_err("gap");
    assert!(matches!(
        err,
        LogError::OutOfOrderSequence {
            producer_id: 1,
            epoch: 0,
            expected: 3,
            got: 4
        }
    ));
    assert_eq!(
        append(&mut manager, &header(1, 0, 3, 1, 3))?,
        AppendCheck::Append
    );
    Ok(())
}

#[test]
fn an_old_epoch_is_fenced_and_a_new_epoch_starts_at_zero() -> Result<(), LogError> {
    let (_dir, mut manager) = manager();
    append(&mut manager, &header(1, 5, 0, 2, 0))?;
    assert!(matches!(
        append(&mut manager, &header(1, 4, 2, 1, 2)),
        Err(LogError::ProducerFenced {
            producer_id: 1,
            epoch: 4,
            current_epoch: 5
        })
    ));
    assert!(matches!(
        append(&mut manager, &header(1, 6, 2, 1, 2)),
        Err(LogError::OutOfOrderSequence {
            epoch: 6,
            expected: 0,
            got: 2,
            ..
        })
    ));
    assert_eq!(
        append(&mut manager, &header(1, 6, 0, 1, 2))?,
        AppendCheck::Append
    );
    // The new epoch's cache holds only its own batches: the old epoch's retry is fenced.
    assert!(matches!(
        append(&mut manager, &header(1, 5, 0, 2, 3)),
        Err(LogError::ProducerFenced { .. })
    ));
    assert_eq!(manager.entries()[0].producer_epoch, 6);
    Ok(())
}

#[test]
fn sequences_continue_across_the_wrap_at_i32_max() -> Result<(), LogError> {
    let (_dir, mut manager) = manager();
    // Sequences i32::MAX - 1, i32::MAX and 0.
    append(&mut manager, &header(1, 0, i32::MAX - 1, 3, 0))?;
    assert_eq!(manager.entries()[0].last_sequence, 0);
    assert!(matches!(
        manager.check_leader_append(&header(1, 0, i32::MAX - 1, 3, 9)),
        Ok(AppendCheck::Duplicate(_))
    ));
    assert!(matches!(
        manager.check_leader_append(&header(1, 0, 0, 1, 3)),
        Err(LogError::OutOfOrderSequence { expected: 1, .. })
    ));
    assert_eq!(
        append(&mut manager, &header(1, 0, 1, 1, 3))?,
        AppendCheck::Append
    );
    // A batch that ends exactly at i32::MAX is followed by sequence 0.
    append(&mut manager, &header(2, 0, i32::MAX - 1, 2, 4))?;
    assert_eq!(
        append(&mut manager, &header(2, 0, 0, 1, 6))?,
        AppendCheck::Append
    );
    Ok(())
}

#[test]
fn an_idempotent_batch_needs_a_non_negative_epoch_and_sequence() {
    let (_dir, manager) = manager();
    assert!(matches!(
        manager.check_leader_append(&header(1, -1, 0, 1, 0)),
        Err(LogError::CorruptBatch { .. })
    ));
    assert!(matches!(
        manager.check_leader_append(&header(1, 0, -1, 1, 0)),
        Err(LogError::CorruptBatch { .. })
    ));
}

#[test]
fn recording_a_batch_twice_changes_nothing() {
    let (_dir, mut manager) = manager();
    manager.record_batch(&header(1, 0, 0, 2, 0));
    manager.record_batch(&header(1, 0, 2, 2, 2));
    let before = manager.producers.clone();
    manager.record_batch(&header(1, 0, 2, 2, 2));
    assert_eq!(manager.producers, before);
}

#[test]
fn producers_expire_after_their_last_batch_unless_a_transaction_is_open() {
    let (_dir, mut manager) = manager();
    manager.record_batch(&header(1, 0, 0, 1, 0));
    manager.record_batch(&header(2, 0, 0, 1, 100));
    manager.record_batch(&header(3, 0, 0, 1, 1));
    manager
        .producers
        .get_mut(&3)
        .expect("recorded")
        .current_txn_first_offset = Some(Offset(1));
    // Producer 1's last timestamp is T0, producer 2's T0 + 100.
    assert_eq!(manager.expire(T0_MS + 999, 1_000), 0);
    assert_eq!(manager.expire(T0_MS + 1_000, 1_000), 1);
    let left: Vec<i64> = manager.entries().iter().map(|e| e.producer_id).collect();
    assert_eq!(left, vec![2, 3]);
    assert_eq!(manager.expire(i64::MAX, 1_000), 1);
    assert_eq!(
        manager.entries()[0].producer_id,
        3,
        "an open transaction keeps it"
    );
}

fn sample_state() -> BTreeMap<i64, ProducerEntry> {
    let (_dir, mut manager) = manager();
    for i in 0..7 {
        manager.record_batch(&header(1, 2, i * 3, 3, i64::from(i) * 10));
    }
    manager.record_batch(&header(9, 0, i32::MAX, 2, 80));
    manager
        .producers
        .get_mut(&9)
        .expect("recorded")
        .current_txn_first_offset = Some(Offset(80));
    manager.producers
}

#[test]
fn a_snapshot_round_trips_every_cached_batch() -> Result<(), LogError> {
    let state = sample_state();
    assert_eq!(state[&1].batches.len(), PRODUCER_BATCHES_CACHED);
    let bytes = encode(Offset(100), &state);
    assert_eq!(decode(&bytes, Offset(100))?, state);
    assert_eq!(
        decode(&encode(Offset(0), &BTreeMap::new()), Offset(0))?,
        BTreeMap::new()
    );
    Ok(())
}

#[test]
fn a_damaged_snapshot_is_refused() {
    let bytes = encode(Offset(100), &sample_state());
    assert!(decode(&bytes, Offset(101)).is_err(), "another offset");
    for len in 0..bytes.len() {
        assert!(decode(&bytes[..len], Offset(100)).is_err(), "cut at {len}");
    }
    for at in 0..bytes.len() {
        let mut flipped = bytes.clone();
        flipped[at] ^= 0x10;
        assert!(
            decode(&flipped, Offset(100)).is_err(),
            "bit flipped at {at}"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(decode(&longer, Offset(100)).is_err(), "trailing byte");
}

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode(&bytes, Offset(5));
        // Past the CRC, so the field checks are reached too.
        let mut framed = b"FLPS\0\x01\0\0\0\0".to_vec();
        framed.extend_from_slice(&bytes);
        let crc = crc32c::crc32c(&framed[10..]);
        framed[6..10].copy_from_slice(&crc.to_be_bytes());
        let _ = decode(&framed, Offset(5));
    }
}

#[test]
fn snapshots_are_bounded_and_reopening_drops_those_above_the_log_end() -> Result<(), LogError> {
    let (dir, mut manager) = manager();
    for i in 0..5 {
        manager.record_batch(&header(1, 0, i, 1, i64::from(i) * 10));
        manager.take_snapshot(Offset(i64::from(i) * 10 + 1))?;
    }
    assert_eq!(
        manager.snapshot_offsets(),
        vec![Offset(21), Offset(31), Offset(41)],
        "the newest PRODUCER_SNAPSHOTS_KEPT"
    );
    let (reopened, from) = ProducerStateManager::open(dir.path(), Offset(35))?;
    assert_eq!(from, Some(Offset(31)));
    assert_eq!(reopened.snapshot_offsets(), vec![Offset(21), Offset(31)]);
    assert_eq!(reopened.entries()[0].last_sequence, 3);
    assert!(!dir.path().join("00000000000000000041.snapshot").exists());
    Ok(())
}

#[test]
fn a_corrupt_newest_snapshot_falls_back_to_the_one_before() -> Result<(), LogError> {
    let (dir, mut manager) = manager();
    manager.record_batch(&header(1, 0, 0, 1, 0));
    manager.take_snapshot(Offset(1))?;
    manager.record_batch(&header(1, 0, 1, 1, 1));
    manager.take_snapshot(Offset(2))?;
    let newest = dir.path().join("00000000000000000002.snapshot");
    let mut bytes = std::fs::read(&newest).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&newest, bytes).expect("write");
    let (reopened, from) = ProducerStateManager::open(dir.path(), Offset(2))?;
    assert_eq!(from, Some(Offset(1)));
    assert_eq!(reopened.entries()[0].last_sequence, 0);
    assert!(
        !newest.exists(),
        "a corrupt snapshot is deleted, never trusted"
    );
    Ok(())
}

const TXN: i16 = crate::batch::TRANSACTIONAL_FLAG;
const MARKER: i16 = crate::batch::TRANSACTIONAL_FLAG | crate::batch::CONTROL_FLAG;

/// `header` with attribute bits set.
fn with_attributes(mut header: BatchHeader, attributes: i16) -> BatchHeader {
    header.attributes = attributes;
    header
}

/// A marker of `producer_id` at `offset` (base sequence -1, one record).
fn marker(producer_id: i64, epoch: i16, offset: i64) -> BatchHeader {
    with_attributes(header(producer_id, epoch, -1, 1, offset), MARKER)
}

#[test]
fn a_transactional_batch_opens_a_transaction_and_a_marker_ends_it() -> Result<(), LogError> {
    let (_dir, mut manager) = manager();
    append(&mut manager, &with_attributes(header(1, 0, 0, 2, 10), TXN))?;
    append(&mut manager, &with_attributes(header(2, 0, 0, 1, 12), TXN))?;
    append(&mut manager, &with_attributes(header(1, 0, 2, 1, 13), TXN))?;
    assert_eq!(
        manager.open_transactions(),
        vec![(1, Offset(10)), (2, Offset(12))]
    );
    assert_eq!(manager.first_unstable_offset(), Some(Offset(10)));
    assert_eq!(
        manager.check_leader_append(&marker(1, 1, 14))?,
        AppendCheck::Append
    );
    let completed = manager.record_batch(&marker(1, 1, 14));
    assert_eq!(
        completed,
        Some(CompletedTxn {
            producer_id: 1,
            first_offset: Offset(10),
            last_offset: Offset(14),
            last_stable_offset: Offset(12),
        }),
        "the LSO after it is producer 2's open transaction"
    );
    assert_eq!(manager.first_unstable_offset(), Some(Offset(12)));
    let completed = manager.record_batch(&marker(2, 0, 15));
    assert_eq!(completed.map(|t| t.last_stable_offset), Some(Offset(16)));
    assert_eq!(manager.first_unstable_offset(), None);
    // The next transaction runs under the marker's epoch, from sequence 0; the old epoch
    // is fenced.
    assert!(matches!(
        manager.check_leader_append(&with_attributes(header(1, 0, 3, 1, 16), TXN)),
        Err(LogError::ProducerFenced { .. })
    ));
    assert_eq!(
        append(&mut manager, &with_attributes(header(1, 1, 0, 1, 16), TXN))?,
        AppendCheck::Append
    );
    Ok(())
}

#[test]
fn a_marker_for_a_producer_without_a_transaction_completes_an_empty_one() {
    let (_dir, mut manager) = manager();
    let completed = manager.record_batch(&marker(4, 2, 30));
    assert_eq!(
        completed.map(|t| (t.first_offset, t.last_offset)),
        Some((Offset(30), Offset(30)))
    );
    assert!(matches!(
        manager.check_leader_append(&with_attributes(header(4, 1, 0, 1, 31), TXN)),
        Err(LogError::ProducerFenced {
            current_epoch: 2,
            ..
        })
    ));
}

#[test]
fn a_newer_epoch_marker_empties_the_cache_and_an_older_one_is_skipped() -> Result<(), LogError> {
    let (_dir, mut manager) = manager();
    append(&mut manager, &with_attributes(header(1, 3, 0, 5, 0), TXN))?;
    assert_eq!(
        manager.check_leader_append(&marker(1, 2, 5))?,
        AppendCheck::StaleMarker
    );
    assert_eq!(
        manager.check_leader_append(&marker(1, 3, 5))?,
        AppendCheck::StaleMarker,
        "a marker ends a transaction of an older epoch, never one of its own"
    );
    manager.record_batch(&marker(1, 4, 5));
    let entries = manager.entries();
    assert_eq!(
        (entries[0].producer_epoch, entries[0].last_sequence),
        (4, -1),
        "no batch of epoch 4 yet"
    );
    assert!(matches!(
        manager.check_leader_append(&with_attributes(header(1, 4, 5, 1, 6), TXN)),
        Err(LogError::OutOfOrderSequence {
            expected: 0,
            got: 5,
            ..
        })
    ));
    append(&mut manager, &with_attributes(header(1, 4, 0, 1, 6), TXN))?;
    assert_eq!(manager.open_transactions(), vec![(1, Offset(6))]);
    Ok(())
}

#[test]
fn a_plain_batch_during_a_transaction_is_refused_but_mirrored_from_a_leader() {
    let (_dir, mut manager) = manager();
    manager.record_batch(&with_attributes(header(1, 0, 0, 1, 0), TXN));
    let plain = header(1, 0, 1, 1, 1);
    assert!(matches!(
        manager.check_leader_append(&plain),
        Err(LogError::InvalidTxnState { producer_id: 1, .. })
    ));
    assert!(matches!(
        manager.check_leader_append(&with_attributes(header(-1, -1, -1, 1, 1), TXN)),
        Err(LogError::CorruptBatch { .. })
    ));
    manager.record_batch(&plain);
    assert_eq!(manager.entries()[0].last_sequence, 1);
}

#[test]
fn a_snapshot_round_trips_open_transactions_and_producers_moved_by_a_marker() -> Result<(), LogError>
{
    let (dir, mut manager) = manager();
    manager.record_batch(&with_attributes(header(1, 0, 0, 2, 0), TXN));
    manager.record_batch(&with_attributes(header(2, 0, 0, 1, 2), TXN));
    manager.record_batch(&marker(2, 1, 3));
    manager.take_snapshot(Offset(4))?;
    let bytes = std::fs::read(dir.path().join("00000000000000000004.snapshot")).expect("read");
    let decoded = decode(&bytes, Offset(4))?;
    assert_eq!(decoded, manager.producers);
    assert!(decoded[&2].batches.is_empty());
    let (reopened, from) = ProducerStateManager::open(dir.path(), Offset(4))?;
    assert_eq!(from, Some(Offset(4)));
    assert_eq!(reopened.open_transactions(), vec![(1, Offset(0))]);
    assert!(matches!(
        reopened.check_leader_append(&header(2, 1, 3, 1, 4)),
        Err(LogError::OutOfOrderSequence { expected: 0, .. })
    ));
    Ok(())
}

#[test]
fn a_snapshot_with_a_transaction_opened_at_or_past_its_offset_is_refused() {
    let (_dir, mut manager) = manager();
    manager.record_batch(&header(1, 0, 0, 1, 0));
    manager
        .producers
        .get_mut(&1)
        .expect("recorded")
        .current_txn_first_offset = Some(Offset(1));
    assert!(decode(&encode(Offset(1), &manager.producers), Offset(1)).is_err());
    assert!(decode(&encode(Offset(2), &manager.producers), Offset(2)).is_ok());
}
