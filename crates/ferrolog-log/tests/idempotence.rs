//! Idempotent producers through `Log`: retries answered with their original offsets, gaps
//! and old epochs refused, and the producer state following the log through rolls,
//! restarts, corrupt snapshots, truncation, replication, recompression, retention,
//! compaction and expiry.

mod common;

use bytes::BytesMut;
use common::{read_all, small_config};
use ferrolog_log::{
    AppendInfo, BatchIter, CleanerOptions, CompactEveryDataBatch, CompactionConfig, Compression,
    LeaderEpoch, Log, LogConfig, LogError, Offset, ProducerSnapshotEntry, RecordBatchBuilder,
    Throttle, set_producer_fields, validate_batch,
};

const T0_MS: i64 = 1_700_000_000_000;
const EPOCH: LeaderEpoch = LeaderEpoch(1);
const PRODUCER: i64 = 1000;

/// A batch of `count` records from `producer` with `epoch`, its first record numbered
/// `base_sequence`; records are keyed by their sequence.
fn producer_batch(producer: i64, epoch: i16, base_sequence: i32, count: i32) -> BytesMut {
    let mut builder = RecordBatchBuilder::new(T0_MS).with_producer(producer, epoch, base_sequence);
    for i in 0..count {
        let key = format!("seq-{}", i64::from(base_sequence) + i64::from(i));
        builder.push(T0_MS, Some(key.as_bytes()), Some(&[7u8; 40]), &[]);
    }
    builder.build()
}

fn append(
    log: &mut Log,
    producer: i64,
    epoch: i16,
    seq: i32,
    count: i32,
) -> Result<AppendInfo, LogError> {
    log.append_batch(
        &mut producer_batch(producer, epoch, seq, count),
        EPOCH,
        T0_MS,
    )
}

/// Appends `batches` batches of `count` records from `PRODUCER`, epoch 0, sequences from 0.
fn append_run(log: &mut Log, batches: i32, count: i32) -> Result<Vec<AppendInfo>, LogError> {
    (0..batches)
        .map(|i| append(log, PRODUCER, 0, i * count, count))
        .collect()
}

fn entry(log: &Log, producer: i64) -> Option<ProducerSnapshotEntry> {
    log.producers()
        .into_iter()
        .find(|e| e.producer_id == producer)
}

fn snapshot_files(dir: &std::path::Path) -> Vec<String> {
    common::segment_files(dir, ".snapshot")
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_retry_of_each_of_the_last_five_batches_returns_its_original_offsets_and_writes_nothing()
-> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), LogConfig::default())?;
    let originals = append_run(&mut log, 6, 3)?;
    let (end, size, records) = (
        log.log_end_offset(),
        log.size_bytes(),
        read_all(&log)?.len(),
    );
    for (i, original) in originals.iter().enumerate().skip(1) {
        let seq = i as i32 * 3;
        // Both leader paths: the borrowed and the owned batch.
        let retried = if i % 2 == 0 {
            append(&mut log, PRODUCER, 0, seq, 3)?
        } else {
            log.append_owned_batch(producer_batch(PRODUCER, 0, seq, 3), EPOCH, T0_MS)?
        };
        assert!(retried.duplicate, "batch {i}");
        assert_eq!(retried.base_offset, original.base_offset);
        assert_eq!(retried.last_offset, original.last_offset);
        assert_eq!(retried.max_timestamp_ms, original.max_timestamp_ms);
        assert_eq!(retried.size_bytes, 0);
        assert!(!original.duplicate);
    }
    assert_eq!(log.log_end_offset(), end, "nothing was appended");
    assert_eq!(log.size_bytes(), size);
    assert_eq!(read_all(&log)?.len(), records);
    // The oldest batch is no longer cached, so its retry fails the sequence check (Kafka
    // answers OUT_OF_ORDER_SEQUENCE_NUMBER too; the producer knows it was acknowledged).
    let sixth_oldest = append(&mut log, PRODUCER, 0, 0, 3);
    assert!(matches!(
        sixth_oldest,
        Err(LogError::OutOfOrderSequence {
            producer_id: PRODUCER,
            expected: 18,
            got: 0,
            ..
        })
    ));
    assert_eq!(log.log_end_offset(), end);
    Ok(())
}

#[test]
fn a_gap_an_old_epoch_and_a_new_epoch_not_at_zero_are_refused_without_writing()
-> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), LogConfig::default())?;
    append(&mut log, PRODUCER, 3, 0, 2)?;
    let end = log.log_end_offset();
    let gap = append(&mut log, PRODUCER, 3, 3, 1).expect_err("gap");
    assert_eq!(
        gap.to_string(),
        "out of order sequence number for producer 1000 (epoch 3): expected sequence 2, got 3"
    );
    let fenced = append(&mut log, PRODUCER, 2, 2, 1).expect_err("old epoch");
    assert!(matches!(
        fenced,
        LogError::ProducerFenced {
            producer_id: PRODUCER,
            epoch: 2,
            current_epoch: 3
        }
    ));
    let not_at_zero = append(&mut log, PRODUCER, 4, 2, 1).expect_err("new epoch at 2");
    assert!(matches!(
        not_at_zero,
        LogError::OutOfOrderSequence {
            epoch: 4,
            expected: 0,
            got: 2,
            ..
        }
    ));
    assert_eq!(log.log_end_offset(), end, "refused batches are not written");
    let bumped = append(&mut log, PRODUCER, 4, 0, 1)?;
    assert!(!bumped.duplicate);
    assert_eq!(entry(&log, PRODUCER).map(|e| e.producer_epoch), Some(4));
    // Other producers and non-idempotent batches are unaffected.
    append(&mut log, PRODUCER + 1, 0, 77, 1)?;
    append(&mut log, -1, -1, -1, 1)?;
    append(&mut log, -1, -1, -1, 1)?;
    Ok(())
}

#[test]
fn sequences_wrap_from_i32_max_to_zero_through_the_log() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), LogConfig::default())?;
    append(&mut log, PRODUCER, 0, i32::MAX - 2, 3)?;
    assert_eq!(
        entry(&log, PRODUCER).map(|e| e.last_sequence),
        Some(i32::MAX)
    );
    append(&mut log, PRODUCER, 0, 0, 2)?;
    assert!(append(&mut log, PRODUCER, 0, i32::MAX - 2, 3)?.duplicate);
    assert!(matches!(
        append(&mut log, PRODUCER, 0, 3, 1),
        Err(LogError::OutOfOrderSequence { expected: 2, .. })
    ));
    Ok(())
}

#[test]
fn the_state_survives_a_restart_by_a_snapshot_at_the_last_roll_and_a_replay_of_the_tail()
-> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), small_config())?;
    let originals = append_run(&mut log, 40, 2)?;
    assert!(log.segment_count() > 3, "small segments roll");
    let expected = log.producers();
    drop(log);

    tracing::info!("a crash: no flush, so the newest snapshot is the one taken at the last roll");
    let snapshots = snapshot_files(dir.path());
    assert!(!snapshots.is_empty() && snapshots.len() <= ferrolog_log::PRODUCER_SNAPSHOTS_KEPT);
    let log_files = common::segment_files(dir.path(), ".log");
    let active_base: i64 = log_files
        .last()
        .and_then(|p| p.file_stem()?.to_str()?.parse().ok())
        .expect("an active segment");
    let mut log = Log::open(dir.path(), small_config())?;
    let recovery = log.producer_state_recovery();
    assert_eq!(recovery.snapshot_offset, Some(Offset(active_base)));
    let tail_batches = originals
        .iter()
        .filter(|info| info.base_offset.0 >= active_base)
        .count() as u64;
    assert_eq!(
        recovery.replayed_batches, tail_batches,
        "only the active segment is read"
    );
    assert!(tail_batches < originals.len() as u64 / 2);
    assert_eq!(log.producers(), expected);
    // Every one of the last five is still recognised, though they span segments.
    for (i, original) in originals.iter().enumerate().skip(35) {
        let retried = append(&mut log, PRODUCER, 0, i as i32 * 2, 2)?;
        assert!(retried.duplicate);
        assert_eq!(retried.base_offset, original.base_offset);
    }

    tracing::info!("a clean shutdown flushes, which snapshots at the log end: nothing to replay");
    log.flush()?;
    let end = log.log_end_offset();
    drop(log);
    let log = Log::open(dir.path(), small_config())?;
    assert_eq!(
        log.producer_state_recovery().snapshot_offset,
        Some(end),
        "snapshot taken at the log end"
    );
    assert_eq!(log.producer_state_recovery().replayed_batches, 0);
    assert_eq!(log.producers(), expected);
    Ok(())
}

#[test]
fn a_corrupt_snapshot_is_ignored_and_the_state_rebuilt_from_an_older_one_or_the_log()
-> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), small_config())?;
    append_run(&mut log, 40, 2)?;
    log.flush()?;
    let expected = log.producers();
    drop(log);
    let snapshots = common::segment_files(dir.path(), ".snapshot");
    assert!(snapshots.len() >= 2);
    let newest = snapshots.last().expect("a snapshot");
    let mut bytes = std::fs::read(newest).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(newest, bytes).expect("write");

    let log = Log::open(dir.path(), small_config())?;
    let recovery = log.producer_state_recovery();
    assert!(
        recovery
            .snapshot_offset
            .is_some_and(|o| o < log.log_end_offset())
    );
    assert!(recovery.replayed_batches > 0);
    assert_eq!(
        log.producers(),
        expected,
        "the corrupt snapshot was not trusted"
    );
    drop(log);

    tracing::info!("with every snapshot unreadable, the whole log is replayed");
    for path in common::segment_files(dir.path(), ".snapshot") {
        std::fs::write(&path, b"FLPS garbage").expect("write");
    }
    let mut log = Log::open(dir.path(), small_config())?;
    assert_eq!(log.producer_state_recovery().snapshot_offset, None);
    assert_eq!(log.producer_state_recovery().replayed_batches, 40);
    assert_eq!(log.producers(), expected);
    assert!(append(&mut log, PRODUCER, 0, 78, 2)?.duplicate);
    Ok(())
}

#[test]
fn truncation_rebuilds_the_state_so_a_removed_batch_is_no_longer_a_duplicate()
-> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), small_config())?;
    let originals = append_run(&mut log, 30, 2)?;
    let snapshots_before = snapshot_files(dir.path());

    tracing::info!("truncating below the newest snapshots removes them and rebuilds from older");
    let cut = originals[20].base_offset;
    log.truncate_to(cut)?;
    assert!(
        common::segment_files(dir.path(), ".snapshot")
            .iter()
            .all(|p| p
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<i64>().ok())
                <= Some(cut.0)),
        "no snapshot above the new end; before: {snapshots_before:?}"
    );
    assert_eq!(entry(&log, PRODUCER).map(|e| e.last_sequence), Some(39));
    assert_eq!(
        entry(&log, PRODUCER).map(|e| e.last_offset),
        Some(Offset(cut.0 - 1))
    );
    let retried_kept = append(&mut log, PRODUCER, 0, 38, 2)?;
    assert!(
        retried_kept.duplicate,
        "a batch below the cut is still a duplicate"
    );
    assert_eq!(retried_kept.base_offset, originals[19].base_offset);
    let resent = append(&mut log, PRODUCER, 0, 40, 2)?;
    assert!(!resent.duplicate, "the removed batch is appended again");
    assert_eq!(resent.base_offset, cut);

    tracing::info!("a restart after the truncation sees the same state");
    let expected = log.producers();
    drop(log);
    let log = Log::open(dir.path(), small_config())?;
    assert_eq!(log.producers(), expected);
    Ok(())
}

#[test]
fn emptying_the_log_for_the_leaders_start_forgets_every_producer() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), small_config())?;
    append_run(&mut log, 20, 2)?;
    log.truncate_fully_and_start_at(Offset(500))?;
    assert!(log.producers().is_empty());
    assert!(snapshot_files(dir.path()).is_empty());
    drop(log);
    let log = Log::open(dir.path(), small_config())?;
    assert!(log.producers().is_empty());
    Ok(())
}

#[test]
fn a_follower_mirrors_its_leader_unchecked_and_then_recognises_retries_as_leader()
-> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut leader = Log::open(&dir.path().join("leader"), small_config())?;
    let mut follower = Log::open(&dir.path().join("follower"), small_config())?;
    let originals = append_run(&mut leader, 12, 2)?;
    // An epoch bump and a second producer that starts mid-sequence.
    append(&mut leader, PRODUCER, 1, 0, 1)?;
    append(&mut leader, PRODUCER + 1, 0, 500, 1)?;
    let all = leader.read(Offset(0), u32::MAX, leader.log_end_offset())?;
    follower.append_replicated_batches(&all.batches, T0_MS)?;
    assert_eq!(follower.producers(), leader.producers());

    tracing::info!("the follower becomes leader: a retry of the old leader's batch is a duplicate");
    let retried = append(&mut follower, PRODUCER + 1, 0, 500, 1)?;
    assert!(retried.duplicate);
    assert!(matches!(
        append(&mut follower, PRODUCER, 0, 24, 2),
        Err(LogError::ProducerFenced { .. })
    ));
    assert!(originals.iter().all(|o| !o.duplicate));
    Ok(())
}

#[test]
fn recompression_keeps_the_producer_fields() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        compression: Some(Compression::Zstd),
        ..LogConfig::default()
    };
    let mut log = Log::open(dir.path(), config)?;
    let first = append(&mut log, PRODUCER, 2, 10, 3)?;
    let stored = log.read(Offset(0), u32::MAX, log.log_end_offset())?;
    let (header, bytes) = BatchIter::new(&stored.batches).next().expect("one batch")?;
    assert_eq!(header.compression()?, Compression::Zstd, "recompressed");
    assert_eq!(
        (
            header.producer_id,
            header.producer_epoch,
            header.base_sequence
        ),
        (PRODUCER, 2, 10)
    );
    validate_batch(bytes)?;
    let retried = append(&mut log, PRODUCER, 2, 10, 3)?;
    assert!(retried.duplicate);
    assert_eq!(retried.base_offset, first.base_offset);
    Ok(())
}

#[test]
fn a_client_can_stamp_producer_fields_on_a_built_batch_when_it_sends_it() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), LogConfig::default())?;
    let mut builder = RecordBatchBuilder::new(T0_MS);
    builder.push(T0_MS, Some(b"k"), Some(b"v"), &[]);
    let built = ferrolog_log::compress_batch(&builder.build(), Compression::Lz4)?;
    let mut sent = built.clone();
    set_producer_fields(&mut sent, PRODUCER, 0, 0)?;
    log.append_batch(&mut sent.clone(), EPOCH, T0_MS)?;
    assert!(log.append_batch(&mut sent, EPOCH, T0_MS)?.duplicate);
    assert_eq!(entry(&log, PRODUCER).map(|e| e.last_sequence), Some(0));
    Ok(())
}

#[test]
fn retention_deletes_old_snapshots_but_keeps_the_producers() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), small_config())?;
    append(&mut log, PRODUCER + 1, 0, 0, 1)?;
    append_run(&mut log, 30, 2)?;
    let start = log.log_end_offset();
    log.advance_log_start(start, start)?;
    assert!(
        snapshot_files(dir.path()).iter().all(|name| name
            .trim_end_matches(".snapshot")
            .parse::<i64>()
            .ok()
            >= Some(start.0))
    );
    // The producer whose batches are all gone is still known, and still checked.
    assert!(entry(&log, PRODUCER + 1).is_some());
    assert!(matches!(
        append(&mut log, PRODUCER + 1, 0, 5, 1),
        Err(LogError::OutOfOrderSequence { expected: 1, .. })
    ));
    Ok(())
}

#[test]
fn producers_expire_after_producer_id_expiration_ms_and_may_then_start_anywhere()
-> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        producer_id_expiration_ms: 60_000,
        ..LogConfig::default()
    };
    let mut log = Log::open(dir.path(), config)?;
    append(&mut log, PRODUCER, 0, 0, 1)?;
    assert_eq!(log.expire_producers(T0_MS + 59_999), 0);
    assert_eq!(log.expire_producers(T0_MS + 60_000), 1);
    assert!(log.producers().is_empty());
    // Unknown now: any sequence is accepted, as for a producer whose state was lost.
    assert!(!append(&mut log, PRODUCER, 0, 42, 1)?.duplicate);
    Ok(())
}

#[test]
fn compaction_keeps_each_producers_last_batch_so_a_rebuild_still_knows_its_sequence()
-> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes: 1024,
        index_interval_bytes: 128,
        retention_ms: None,
        compaction: Some(CompactionConfig {
            min_cleanable_dirty_ratio: 0.0,
            ..CompactionConfig::default()
        }),
        ..LogConfig::default()
    };
    let mut log = Log::open(dir.path(), config.clone())?;
    // The producer's only batch writes key "k"; later non-idempotent batches overwrite it.
    let mut builder = RecordBatchBuilder::new(T0_MS).with_producer(PRODUCER, 0, 7);
    builder.push(T0_MS, Some(b"k"), Some(b"old"), &[]);
    let original = log.append_batch(&mut builder.build(), EPOCH, T0_MS)?;
    for _ in 0..40 {
        let mut builder = RecordBatchBuilder::new(T0_MS);
        builder.push(T0_MS, Some(b"k"), Some(&[1u8; 60]), &[]);
        log.append_batch(&mut builder.build(), EPOCH, T0_MS)?;
    }
    let end = log.log_end_offset();
    log.checkpoint_high_watermark(end)?;
    let outcome = log.clean(
        T0_MS,
        end,
        &CleanerOptions::default(),
        &CompactEveryDataBatch,
        &Throttle::unlimited(),
    )?;
    assert!(outcome.is_some(), "the log was cleaned");
    assert!(
        read_all(&log)?
            .iter()
            .all(|r| r.offset != original.base_offset),
        "the producer's record was compacted away"
    );
    drop(log);

    tracing::info!("without snapshots the state comes from the log: the empty batch keeps it");
    for path in common::segment_files(dir.path(), ".snapshot") {
        std::fs::remove_file(path).expect("remove snapshot");
    }
    let mut log = Log::open(dir.path(), config)?;
    let known = entry(&log, PRODUCER).expect("the producer is still known");
    assert_eq!(known.last_sequence, 7);
    assert_eq!(known.last_offset, original.last_offset);
    assert!(matches!(
        append(&mut log, PRODUCER, 0, 9, 1),
        Err(LogError::OutOfOrderSequence { expected: 8, .. })
    ));

    tracing::info!("once the producer writes again, a later cleaning drops the old empty batch");
    let newer = append(&mut log, PRODUCER, 0, 8, 1)?;
    for _ in 0..40 {
        let mut builder = RecordBatchBuilder::new(T0_MS);
        builder.push(T0_MS, Some(b"seq-8"), Some(&[1u8; 60]), &[]);
        builder.push(T0_MS, Some(b"k"), Some(&[2u8; 60]), &[]);
        log.append_batch(&mut builder.build(), EPOCH, T0_MS)?;
    }
    let end = log.log_end_offset();
    log.checkpoint_high_watermark(end)?;
    log.clean(
        T0_MS,
        end,
        &CleanerOptions::default(),
        &CompactEveryDataBatch,
        &Throttle::unlimited(),
    )?;
    let stored = log.read(log.log_start_offset(), u32::MAX, end)?;
    let producer_batches: Vec<(Offset, i32)> = BatchIter::new(&stored.batches)
        .filter_map(|item| item.ok())
        .filter(|(header, _)| header.producer_id == PRODUCER)
        .map(|(header, _)| (header.base_offset, header.record_count))
        .collect();
    assert_eq!(
        producer_batches,
        vec![(newer.base_offset, 0)],
        "only the producer's last batch stays, emptied"
    );
    Ok(())
}
