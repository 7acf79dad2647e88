//! Behaviour of `Log` through its public API: appends, reads, indexes, timestamps,
//! retention, rolls, truncation and the persisted replication state.

mod common;

use common::{append_batches, batch, read_all, read_records, small_config};
use std::sync::Arc;

use ferrolog_log::{
    BatchIter, LeaderEpoch, Log, LogConfig, LogError, Offset, RecentBatchBudget,
    RecordBatchBuilder, decode_records, validate_batch,
};

const T0_MS: i64 = 1_700_000_000_000;
const HOUR_MS: i64 = 3_600_000;

fn open(dir: &std::path::Path, config: LogConfig) -> Log {
    Log::open(dir, config).expect("log opens")
}

#[test]
fn given_an_empty_directory_when_opened_then_the_log_is_empty_at_zero() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(&dir.path().join("orders-0"), small_config())?;
    assert_eq!(log.log_start_offset(), Offset(0));
    assert_eq!(log.log_end_offset(), Offset(0));
    assert_eq!(log.flushed_offset(), Offset(0));
    assert_eq!(log.high_watermark(), Offset(0));
    assert_eq!(log.leader_epoch(), LeaderEpoch(0));
    assert_eq!(log.segment_count(), 1);
    assert!(log.read(Offset(0), 1024, Offset(0))?.batches.is_empty());
    assert!(
        dir.path()
            .join("orders-0/00000000000000000000.log")
            .exists()
    );
    Ok(())
}

#[test]
fn given_small_segments_when_appending_many_batches_then_everything_reads_back_across_rolls()
-> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(dir.path(), small_config());
    let mut expected_next = Offset(0);
    for i in 0..60u32 {
        let mut buf = batch(i, 1 + i % 4, T0_MS + i64::from(i));
        let info = log.append_batch(&mut buf, LeaderEpoch(3), T0_MS)?;
        assert_eq!(info.base_offset, expected_next, "offsets are contiguous");
        assert_eq!(info.record_count, 1 + i % 4);
        assert_eq!(
            info.last_offset.0,
            info.base_offset.0 + i64::from(info.record_count) - 1
        );
        assert_eq!(info.size_bytes as usize, buf.len());
        let stamped = validate_batch(&buf)?;
        assert_eq!(
            stamped.base_offset, info.base_offset,
            "the caller's buffer is stamped"
        );
        assert_eq!(stamped.partition_leader_epoch, LeaderEpoch(3));
        expected_next = info.last_offset.next();
    }
    assert_eq!(log.log_end_offset(), expected_next);
    assert!(
        log.segment_count() > 5,
        "1 KiB segments roll often: {}",
        log.segment_count()
    );
    assert!(
        log.flushed_offset() > Offset(0),
        "rolls fsync the sealed segments"
    );

    let records = read_all(&log)?;
    assert_eq!(records.len() as i64, expected_next.0);
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record.offset, Offset(i as i64));
    }
    assert_eq!(records[0].key.as_deref(), Some(&b"key-0-0"[..]));
    assert_eq!(records[0].value.as_deref(), Some(&b"value-0-0"[..]));
    assert_eq!(records[0].timestamp_ms, T0_MS);
    assert_eq!(records[0].headers[0].key, "tag");

    let reopened = open(dir.path(), small_config());
    assert_eq!(reopened.log_end_offset(), expected_next);
    assert_eq!(reopened.segment_count(), log.segment_count());
    assert_eq!(read_all(&reopened)?, records);
    Ok(())
}

#[test]
fn every_offset_reads_from_the_batch_that_contains_it() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(dir.path(), small_config());
    append_batches(&mut log, 80, 3, T0_MS)?;
    let end = log.log_end_offset();
    for target in 0..end.0 {
        let result = log.read(Offset(target), 1, end)?;
        let mut batches = BatchIter::new(&result.batches);
        let (header, _) = batches.next().expect("one batch")?;
        assert!(
            batches.next().is_none(),
            "max_bytes 1 still returns exactly one batch"
        );
        assert!(
            header.base_offset.0 <= target && target <= header.last_offset().0,
            "offset {target} read batch {}..={}",
            header.base_offset,
            header.last_offset()
        );
    }
    Ok(())
}

#[test]
fn reads_respect_max_bytes_but_always_return_one_batch() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(dir.path(), LogConfig::default());
    append_batches(&mut log, 10, 2, T0_MS)?;
    let end = log.log_end_offset();
    let one = log.read(Offset(0), 1, end)?.batches.len();
    let two_and_a_half = (one * 5 / 2) as u32;
    let result = log.read(Offset(0), two_and_a_half, end)?;
    assert_eq!(BatchIter::new(&result.batches).count(), 2);
    assert!(result.batches.len() <= two_and_a_half as usize);
    let everything = log.read(Offset(0), u32::MAX, end)?;
    assert_eq!(BatchIter::new(&everything.batches).count(), 10);
    assert_eq!(everything.log_start_offset, Offset(0));
    assert_eq!(everything.log_end_offset, end);
    Ok(())
}

#[test]
fn reads_stop_before_batches_reaching_the_upper_bound() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(dir.path(), small_config());
    append_batches(&mut log, 20, 2, T0_MS)?;
    let high_watermark = Offset(10);
    let result = log.read(Offset(0), u32::MAX, high_watermark)?;
    let last = BatchIter::new(&result.batches)
        .map(|item| item.map(|(header, _)| header.last_offset()))
        .collect::<Result<Vec<_>, _>>()?;
    assert_eq!(
        last.last(),
        Some(&Offset(9)),
        "batches end right below the bound"
    );
    assert!(
        log.read(Offset(10), u32::MAX, high_watermark)?
            .batches
            .is_empty()
    );
    assert!(
        log.read(Offset(12), u32::MAX, high_watermark)?
            .batches
            .is_empty()
    );
    let end = log.log_end_offset();
    assert!(
        log.read(end, u32::MAX, end)?.batches.is_empty(),
        "reading at the end"
    );
    Ok(())
}

#[test]
fn out_of_range_reads_carry_the_valid_range() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(dir.path(), small_config());
    append_batches(&mut log, 30, 2, T0_MS)?;
    log.set_config(LogConfig {
        retention_bytes: Some(2048),
        ..small_config()
    });
    log.enforce_retention(T0_MS, log.log_end_offset())?;
    let (start, end) = (log.log_start_offset(), log.log_end_offset());
    assert!(start > Offset(0));
    for requested in [
        Offset(0),
        Offset(start.0 - 1),
        end.next(),
        Offset(end.0 + 100),
    ] {
        match log.read(requested, 1024, end) {
            Err(LogError::OffsetOutOfRange {
                requested: r,
                log_start,
                log_end,
            }) => {
                assert_eq!((r, log_start, log_end), (requested, start, end));
            }
            other => panic!("expected OffsetOutOfRange for {requested}, got {other:?}"),
        }
    }
    assert!(!log.read(start, 1024, end)?.batches.is_empty());
    Ok(())
}

#[test]
fn offset_for_timestamp_finds_the_first_record_at_or_after_it_across_segments()
-> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(dir.path(), small_config());
    // Batch i holds offsets 2i and 2i+1, both stamped T0 + 10 i.
    for i in 0..50u32 {
        let mut buf = batch(i, 2, T0_MS + 10 * i64::from(i));
        log.append_batch(&mut buf, LeaderEpoch(0), T0_MS)?;
    }
    assert!(log.segment_count() > 3);
    assert_eq!(log.offset_for_timestamp(0)?, Some(Offset(0)));
    assert_eq!(log.offset_for_timestamp(T0_MS)?, Some(Offset(0)));
    for i in 0..50i64 {
        assert_eq!(
            log.offset_for_timestamp(T0_MS + 10 * i)?,
            Some(Offset(2 * i))
        );
        assert_eq!(
            log.offset_for_timestamp(T0_MS + 10 * i - 5)?,
            Some(Offset(2 * i))
        );
    }
    assert_eq!(log.offset_for_timestamp(T0_MS + 10 * 49 + 1)?, None);

    let reopened = open(dir.path(), small_config());
    assert_eq!(
        reopened.offset_for_timestamp(T0_MS + 10 * 33)?,
        Some(Offset(66))
    );
    Ok(())
}

#[test]
fn offset_for_timestamp_with_non_monotonic_timestamps_returns_the_earliest_offset()
-> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(dir.path(), small_config());
    // Timestamps jump around; offset i is stamped stamps[i].
    let stamps: Vec<i64> = (0..120).map(|i| T0_MS + (i * 37 % 101)).collect();
    for chunk in stamps.chunks(3) {
        let mut builder = RecordBatchBuilder::new(chunk[0]);
        for &ts in chunk {
            builder.push(ts, None, Some(&[0u8; 40]), &[]);
        }
        log.append_batch(&mut builder.build(), LeaderEpoch(0), T0_MS)?;
    }
    assert!(log.segment_count() > 3);
    for target in (T0_MS - 1)..(T0_MS + 102) {
        let expected = stamps
            .iter()
            .position(|&ts| ts >= target)
            .map(|i| Offset(i as i64));
        assert_eq!(
            log.offset_for_timestamp(target)?,
            expected,
            "target {target}"
        );
    }
    Ok(())
}

#[test]
fn retention_by_bytes_deletes_oldest_segments_and_keeps_the_active_one() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(dir.path(), small_config());
    append_batches(&mut log, 40, 2, T0_MS)?;
    let segments_before = log.segment_count();
    let size_before = log.size_bytes();
    let end = log.log_end_offset();
    log.set_config(LogConfig {
        retention_bytes: Some(3000),
        ..small_config()
    });
    let outcome = log.enforce_retention(T0_MS, end)?;
    assert!(outcome.deleted_segments > 0);
    assert_eq!(
        log.segment_count(),
        segments_before - outcome.deleted_segments
    );
    assert_eq!(log.size_bytes(), size_before - outcome.deleted_bytes);
    assert!(
        log.size_bytes() <= 3000 + 1024,
        "within one segment of the limit"
    );
    assert_eq!(outcome.log_start_offset, log.log_start_offset());
    assert!(log.log_start_offset() > Offset(0));
    assert_eq!(log.log_end_offset(), end);

    log.set_config(LogConfig {
        retention_bytes: Some(0),
        ..small_config()
    });
    log.enforce_retention(T0_MS, end)?;
    assert_eq!(
        log.segment_count(),
        1,
        "the active segment is never deleted"
    );
    assert_eq!(log.log_end_offset(), end);
    let reopened = open(dir.path(), small_config());
    assert_eq!(reopened.log_start_offset(), log.log_start_offset());
    assert_eq!(read_all(&reopened)?, read_all(&log)?);
    Ok(())
}

#[test]
fn retention_by_time_uses_the_newest_record_of_each_segment() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(
        dir.path(),
        LogConfig {
            retention_ms: Some(24 * HOUR_MS as u64),
            ..small_config()
        },
    );
    // Old records first (two days ago), then fresh ones.
    append_batches(&mut log, 15, 2, T0_MS - 48 * HOUR_MS)?;
    let first_fresh = log.log_end_offset();
    append_batches(&mut log, 15, 2, T0_MS)?;
    let end = log.log_end_offset();

    let outcome = log.enforce_retention(T0_MS, end)?;
    assert!(outcome.deleted_segments > 0);
    assert!(log.log_start_offset() <= first_fresh, "fresh records stay");
    assert!(log.log_start_offset() > Offset(0));
    let again = log.enforce_retention(T0_MS, end)?;
    assert_eq!(again.deleted_segments, 0, "nothing else expired");
    Ok(())
}

#[test]
fn retention_never_deletes_at_or_above_the_upper_bound() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(
        dir.path(),
        LogConfig {
            retention_bytes: Some(0),
            retention_ms: Some(1),
            ..small_config()
        },
    );
    append_batches(&mut log, 40, 2, T0_MS)?;
    let high_watermark = Offset(30);
    let outcome = log.enforce_retention(T0_MS + HOUR_MS, high_watermark)?;
    assert!(outcome.deleted_segments > 0);
    assert!(log.log_start_offset() <= high_watermark);
    let result = log.read(log.log_start_offset(), u32::MAX, log.log_end_offset())?;
    let offsets: Vec<Offset> = BatchIter::new(&result.batches)
        .map(|item| item.map(|(header, _)| header.last_offset()))
        .collect::<Result<_, _>>()?;
    assert!(offsets.iter().any(|&last| last >= high_watermark));
    assert_eq!(
        log.enforce_retention(T0_MS + HOUR_MS, Offset(0))?
            .deleted_segments,
        0
    );
    Ok(())
}

#[test]
fn segments_roll_by_age_on_append_and_when_due() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(
        dir.path(),
        LogConfig {
            segment_ms: 1000,
            ..LogConfig::default()
        },
    );
    assert!(!log.roll_if_due(T0_MS)?, "an empty segment never rolls");
    log.append_batch(&mut batch(0, 1, T0_MS), LeaderEpoch(0), T0_MS)?;
    log.append_batch(&mut batch(1, 1, T0_MS), LeaderEpoch(0), T0_MS + 1000)?;
    assert_eq!(log.segment_count(), 1, "not older than segment_ms yet");
    log.append_batch(&mut batch(2, 1, T0_MS), LeaderEpoch(0), T0_MS + 1001)?;
    assert_eq!(log.segment_count(), 2, "rolled by age before the append");
    assert!(!log.roll_if_due(T0_MS + 1500)?);
    assert!(log.roll_if_due(T0_MS + 2002)?);
    assert_eq!(log.segment_count(), 3);
    assert!(
        !log.roll_if_due(T0_MS + 10_000)?,
        "the new active segment is empty"
    );
    assert_eq!(
        log.flushed_offset(),
        Offset(3),
        "rolling fsyncs the sealed segment"
    );
    Ok(())
}

#[test]
fn truncate_to_removes_the_suffix_and_appends_continue_there() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(dir.path(), small_config());
    append_batches(&mut log, 40, 2, T0_MS)?;
    log.assign_leader_epoch(LeaderEpoch(2), Offset(40))?;
    log.assign_leader_epoch(LeaderEpoch(3), Offset(70))?;
    log.checkpoint_high_watermark(Offset(60))?;
    let before = read_all(&log)?;
    let segments_before = log.segment_count();

    log.truncate_to(Offset(30))?;
    assert_eq!(log.log_end_offset(), Offset(30));
    assert!(log.segment_count() < segments_before);
    assert_eq!(log.high_watermark(), Offset(30));
    assert_eq!(
        log.leader_epoch(),
        LeaderEpoch(1),
        "epochs starting at or above 30 dropped"
    );
    assert!(log.flushed_offset() <= Offset(30));
    assert_eq!(read_all(&log)?, before[..30].to_vec());

    log.append_batch(&mut batch(99, 2, T0_MS), LeaderEpoch(4), T0_MS)?;
    assert_eq!(log.log_end_offset(), Offset(32));
    assert_eq!(log.leader_epoch(), LeaderEpoch(4));
    assert_eq!(
        log.end_offset_for_epoch(LeaderEpoch(1)),
        Some((LeaderEpoch(1), Offset(30)))
    );

    let reopened = open(dir.path(), small_config());
    assert_eq!(reopened.log_end_offset(), Offset(32));
    assert_eq!(read_all(&reopened)?[..30], before[..30]);

    log.truncate_to(Offset(100))?;
    assert_eq!(
        log.log_end_offset(),
        Offset(32),
        "beyond the end is a no-op"
    );
    log.truncate_to(Offset(0))?;
    assert_eq!(log.log_end_offset(), Offset(0));
    assert_eq!(log.segment_count(), 1);
    Ok(())
}

#[test]
fn high_watermark_and_leader_epochs_survive_reopen() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut log = open(dir.path(), small_config());
        append_batches(&mut log, 10, 2, T0_MS)?;
        log.assign_leader_epoch(LeaderEpoch(5), Offset(20))?;
        log.append_batch(&mut batch(0, 3, T0_MS), LeaderEpoch(5), T0_MS)?;
        log.append_batch(&mut batch(1, 3, T0_MS), LeaderEpoch(7), T0_MS)?;
        log.checkpoint_high_watermark(Offset(23))?;
        assert_eq!(log.leader_epoch(), LeaderEpoch(7));
    }
    let log = open(dir.path(), small_config());
    assert_eq!(log.high_watermark(), Offset(23));
    assert_eq!(log.leader_epoch(), LeaderEpoch(7));
    assert_eq!(
        log.end_offset_for_epoch(LeaderEpoch(1)),
        Some((LeaderEpoch(1), Offset(20)))
    );
    assert_eq!(
        log.end_offset_for_epoch(LeaderEpoch(5)),
        Some((LeaderEpoch(5), Offset(23)))
    );
    assert_eq!(
        log.end_offset_for_epoch(LeaderEpoch(6)),
        Some((LeaderEpoch(5), Offset(23)))
    );
    assert_eq!(
        log.end_offset_for_epoch(LeaderEpoch(7)),
        Some((LeaderEpoch(7), Offset(26)))
    );
    assert_eq!(log.end_offset_for_epoch(LeaderEpoch(8)), None);
    Ok(())
}

#[test]
fn high_watermark_is_clamped_to_the_log_on_reopen() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("high-watermark"), "0\n500\n").expect("write");
    let mut log = open(dir.path(), small_config());
    assert_eq!(log.high_watermark(), Offset(0));
    append_batches(&mut log, 5, 2, T0_MS)?;
    log.checkpoint_high_watermark(Offset(500))?;
    assert_eq!(log.high_watermark(), Offset(10), "never beyond the log end");
    Ok(())
}

#[test]
fn oversized_and_invalid_batches_are_rejected_without_changing_the_log() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(
        dir.path(),
        LogConfig {
            max_message_bytes: 200,
            ..small_config()
        },
    );
    let mut big = RecordBatchBuilder::new(T0_MS);
    big.push(T0_MS, None, Some(&[7u8; 300]), &[]);
    let mut big = big.build();
    assert!(matches!(
        log.append_batch(&mut big, LeaderEpoch(0), T0_MS),
        Err(LogError::RecordTooLarge { max_bytes: 200, .. })
    ));
    let mut corrupt = batch(0, 1, T0_MS);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    assert!(matches!(
        log.append_batch(&mut corrupt, LeaderEpoch(0), T0_MS),
        Err(LogError::CorruptBatch { .. })
    ));
    assert!(matches!(
        log.append_batch(
            &mut RecordBatchBuilder::new(0).build(),
            LeaderEpoch(0),
            T0_MS
        ),
        Err(LogError::CorruptBatch { .. })
    ));
    assert_eq!(log.log_end_offset(), Offset(0));
    assert_eq!(log.size_bytes(), 0);
    Ok(())
}

#[test]
fn a_follower_behind_the_leaders_log_start_restarts_there() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let leader_dir = dir.path().join("leader");
    let mut leader = open(&leader_dir, small_config());
    append_batches(&mut leader, 20, 2, T0_MS)?;
    let mut follower = open(&dir.path().join("follower"), small_config());
    append_batches(&mut follower, 3, 2, T0_MS)?;
    follower.assign_leader_epoch(LeaderEpoch(5), Offset(6))?;

    follower.truncate_fully_and_start_at(Offset(30))?;
    assert_eq!(follower.log_start_offset(), Offset(30));
    assert_eq!(follower.log_end_offset(), Offset(30));
    assert_eq!(follower.last_batch_epoch(), None, "no epoch survives");
    // The leader's batches from 30 on append as usual, and survive a reopen.
    let fetched = leader.read(Offset(30), u32::MAX, leader.log_end_offset())?;
    for item in BatchIter::new(&fetched.batches) {
        follower.append_replicated(item?.1, T0_MS)?;
    }
    assert_eq!(follower.log_end_offset(), leader.log_end_offset());
    drop(follower);
    let reopened = open(&dir.path().join("follower"), small_config());
    assert_eq!(reopened.log_start_offset(), Offset(30));
    assert_eq!(read_all(&reopened)?, read_all(&leader)?[30..].to_vec());
    Ok(())
}

#[test]
fn replicated_batches_keep_their_offsets_and_never_go_back() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let leader_dir = dir.path().join("leader");
    let mut leader = open(&leader_dir, small_config());
    append_batches(&mut leader, 20, 2, T0_MS)?;
    let fetched = leader.read(Offset(0), u32::MAX, leader.log_end_offset())?;

    let mut follower = open(&dir.path().join("follower"), small_config());
    let batches: Vec<&[u8]> = BatchIter::new(&fetched.batches)
        .map(|item| item.map(|(_, bytes)| bytes))
        .collect::<Result<_, _>>()?;
    for bytes in &batches[..2] {
        follower.append_replicated(bytes, T0_MS)?;
    }
    // Going back is refused; a gap is not (a compacted leader's log has them, as in Kafka).
    assert!(matches!(
        follower.append_replicated(batches[1], T0_MS),
        Err(LogError::NonContiguousAppend {
            expected: Offset(4),
            actual: Offset(2)
        })
    ));
    for bytes in &batches[2..] {
        follower.append_replicated(bytes, T0_MS)?;
    }
    assert_eq!(follower.log_end_offset(), leader.log_end_offset());
    assert_eq!(
        follower.leader_epoch(),
        LeaderEpoch(1),
        "epoch taken from the batches"
    );
    assert_eq!(read_all(&follower)?, read_all(&leader)?);
    Ok(())
}

#[test]
fn flushing_tracks_what_is_durable() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(dir.path(), LogConfig::default());
    append_batches(&mut log, 3, 2, T0_MS)?;
    assert_eq!(log.flushed_offset(), Offset(0), "appends do not fsync");
    let handle = log.sync_handle();
    assert_eq!(handle.end_offset(), Offset(6));
    append_batches(&mut log, 1, 2, T0_MS)?;
    handle.sync()?;
    log.mark_flushed(handle.end_offset());
    assert_eq!(log.flushed_offset(), Offset(6));
    log.mark_flushed(Offset(2));
    assert_eq!(log.flushed_offset(), Offset(6), "monotonic");
    log.mark_flushed(Offset(1000));
    assert_eq!(log.flushed_offset(), Offset(8), "never beyond the log end");
    append_batches(&mut log, 1, 2, T0_MS)?;
    log.flush()?;
    assert_eq!(log.flushed_offset(), Offset(10));

    tracing::info!("a handle taken before a truncation cannot vouch for later appends");
    let stale = log.sync_handle();
    log.truncate_to(Offset(4))?;
    assert_eq!(log.flushed_offset(), Offset(4));
    append_batches(&mut log, 3, 2, T0_MS)?;
    stale.sync()?;
    assert!(!log.mark_synced(&stale));
    assert_eq!(log.flushed_offset(), Offset(4));
    let fresh = log.sync_handle();
    fresh.sync()?;
    assert!(log.mark_synced(&fresh));
    assert_eq!(log.flushed_offset(), Offset(10));
    Ok(())
}

/// The fsyncgate lesson: after a failed fsync the kernel may have dropped the dirty pages and
/// a retried fsync can "succeed" without them, so the log must not take writes or vouch for
/// durability again (Kafka takes the log directory offline; PostgreSQL panics).
#[test]
fn after_a_failed_fsync_the_log_takes_no_writes_and_vouches_for_nothing_more()
-> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(dir.path(), small_config());
    append_batches(&mut log, 2, 2, T0_MS)?;
    log.flush()?;
    append_batches(&mut log, 1, 2, T0_MS)?;
    let handle = log.sync_handle();
    assert_eq!(handle.end_offset(), Offset(6));

    tracing::info!("the broker's fsync of the handle failed and it tells the log so");
    log.mark_sync_failed();
    assert!(log.sync_failed());
    handle.sync()?;
    assert!(
        !log.mark_synced(&handle),
        "a later fsync vouches for nothing"
    );
    log.mark_flushed(Offset(6));
    assert_eq!(log.flushed_offset(), Offset(4));
    assert!(matches!(log.flush(), Err(LogError::SyncFailed)));
    assert!(matches!(
        log.append_batch(&mut batch(9, 1, T0_MS), LeaderEpoch(0), T0_MS),
        Err(LogError::SyncFailed)
    ));
    assert!(matches!(
        log.roll_if_due(i64::MAX),
        Err(LogError::SyncFailed)
    ));
    assert_eq!(log.log_end_offset(), Offset(6), "nothing was appended");

    tracing::info!("reads go on: what is on disk is still served, below the high watermark");
    assert_eq!(read_all(&log)?.len(), 6);
    Ok(())
}

#[test]
fn reading_from_the_middle_of_a_batch_returns_the_whole_batch() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(dir.path(), small_config());
    append_batches(&mut log, 5, 4, T0_MS)?;
    let result = log.read(Offset(6), 1, log.log_end_offset())?;
    let (header, bytes) = BatchIter::new(&result.batches).next().expect("one batch")?;
    assert_eq!(header.base_offset, Offset(4));
    assert_eq!(decode_records(bytes)?.len(), 4);
    let records = read_records(&log, Offset(6), 1)?;
    assert_eq!(records.first().map(|r| r.offset), Some(Offset(6)));
    Ok(())
}

#[test]
fn delete_removes_the_partition_directory() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let partition = dir.path().join("orders-3");
    let mut log = open(&partition, small_config());
    append_batches(&mut log, 20, 2, T0_MS)?;
    log.checkpoint_high_watermark(Offset(5))?;
    log.delete()?;
    assert!(!partition.exists());
    Ok(())
}

/// A replica that became leader at epoch 3 and was deposed before writing anything has an
/// epoch-3 entry at its log end but no epoch-3 batch: it must report epoch 1 (its last
/// batch's) as a follower, and truncating at its log end drops the empty epoch.
#[test]
fn an_epoch_begun_without_a_batch_is_not_the_last_batch_epoch_and_truncation_drops_it()
-> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(dir.path(), small_config());
    assert_eq!(log.last_batch_epoch(), None);
    append_batches(&mut log, 2, 2, T0_MS)?;
    assert_eq!(log.last_batch_epoch(), Some(LeaderEpoch(1)));
    let end = log.log_end_offset();
    log.assign_leader_epoch(LeaderEpoch(3), end)?;
    assert_eq!(log.leader_epoch(), LeaderEpoch(3));
    assert_eq!(log.last_batch_epoch(), Some(LeaderEpoch(1)));

    log.truncate_to(end)?;
    assert_eq!(log.log_end_offset(), end, "no batch removed");
    assert_eq!(
        log.leader_epoch(),
        LeaderEpoch(1),
        "the empty epoch is gone"
    );
    Ok(())
}

/// The newest batches a leader keeps in memory for its followers answer reads exactly as
/// the segment files do, and stop answering once they might not.
#[test]
fn kept_recent_batches_answer_reads_byte_for_byte_like_the_disk() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(dir.path(), small_config());
    append_batches(&mut log, 3, 2, T0_MS)?;
    let budget = RecentBatchBudget::new(1 << 20);
    log.keep_recent_batches(Some(Arc::clone(&budget)));
    for i in 0..6 {
        log.append_owned_batch(batch(10 + i, 3, T0_MS), LeaderEpoch(2), T0_MS)?;
    }
    let (kept_from, end) = (Offset(6), log.log_end_offset());
    assert_eq!(end, Offset(24));
    let cases: Vec<(Offset, u32, Offset)> = (0..end.0)
        .flat_map(|from| {
            [(1, end), (10_000, end), (300, end), (10_000, Offset(15))]
                .map(|(max, bound)| (Offset(from), max, bound))
        })
        .collect();
    let from_memory: Vec<_> = cases
        .iter()
        .map(|&(from, max, bound)| log.read(from, max, bound))
        .collect::<Result<_, _>>()?;
    for (&(from, ..), read) in cases.iter().zip(&from_memory) {
        assert_eq!(read.from_memory, from >= kept_from, "read at {from}");
    }
    assert!(budget.used() > 0);

    // Released below the high watermark, and dropped when keeping stops.
    log.release_recent_below(Offset(12));
    assert!(!log.read(Offset(11), 10_000, end)?.from_memory);
    assert!(log.read(Offset(12), 10_000, end)?.from_memory);
    log.keep_recent_batches(None);
    assert_eq!(budget.used(), 0);
    for (&(from, max, bound), memory) in cases.iter().zip(&from_memory) {
        let disk = log.read(from, max, bound)?;
        assert!(!disk.from_memory);
        assert_eq!(
            disk.batches, memory.batches,
            "read at {from}, {max} bytes, below {bound}"
        );
    }

    // An append that is not kept, or a truncation, leaves nothing kept (never a gap).
    log.keep_recent_batches(Some(Arc::clone(&budget)));
    log.append_owned_batch(batch(20, 2, T0_MS), LeaderEpoch(2), T0_MS)?;
    assert!(log.read(end, 10_000, Offset(100))?.from_memory);
    log.append_batch(&mut batch(21, 2, T0_MS), LeaderEpoch(2), T0_MS)?;
    assert!(!log.read(end, 10_000, Offset(100))?.from_memory);
    assert_eq!(budget.used(), 0);
    let before_truncation = log.log_end_offset();
    log.append_owned_batch(batch(22, 2, T0_MS), LeaderEpoch(2), T0_MS)?;
    log.truncate_to(before_truncation)?;
    log.append_owned_batch(batch(23, 5, T0_MS), LeaderEpoch(3), T0_MS)?;
    let read = log.read(before_truncation, 10_000, Offset(100))?;
    assert!(read.from_memory);
    let records = decode_records(&read.batches)?;
    assert_eq!(
        records.len(),
        5,
        "the batch after the truncation, not the one before"
    );
    Ok(())
}

/// A fetch response appends in one call, each CRC checked once; a corrupt batch stops it
/// after the intact batches before it, which stay.
#[test]
fn a_fetched_run_of_batches_appends_up_to_the_first_corrupt_one() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut leader = open(&dir.path().join("leader"), small_config());
    append_batches(&mut leader, 6, 2, T0_MS)?;
    let fetched = leader.read(Offset(0), u32::MAX, leader.log_end_offset())?;

    let mut follower = open(&dir.path().join("follower"), small_config());
    assert_eq!(
        follower.append_replicated_batches(&fetched.batches, T0_MS)?,
        leader.log_end_offset()
    );
    assert_eq!(read_all(&follower)?, read_all(&leader)?);

    let mut corrupt = fetched.batches.to_vec();
    let third = BatchIter::new(&fetched.batches)
        .take(2)
        .map(|item| item.map(|(_, bytes)| bytes.len()))
        .sum::<Result<usize, _>>()?;
    // A byte in the third batch's records, which its CRC covers.
    corrupt[third + 70] ^= 0xff;
    let mut damaged = open(&dir.path().join("damaged"), small_config());
    assert!(matches!(
        damaged.append_replicated_batches(&corrupt, T0_MS),
        Err(LogError::CorruptBatch { .. })
    ));
    assert_eq!(
        damaged.log_end_offset(),
        Offset(4),
        "the two batches before it"
    );
    Ok(())
}
