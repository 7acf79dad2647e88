//! Transactions through `Log`: markers ending transactions (with the v2 epoch bump), the
//! last stable offset, the aborted-transaction index and read_committed reads, and all of
//! them following the log through restarts, truncation, retention and replication.

mod common;

use bytes::BytesMut;
use common::{segment_files, small_config};
use ferrolog_log::{
    AbortedTxn, AppendInfo, BatchIter, ControlType, LeaderEpoch, Log, LogError, Offset,
    RecordBatchBuilder, build_control_batch, decode_records, filter_read_committed,
};

const T0_MS: i64 = 1_700_000_000_000;
const EPOCH: LeaderEpoch = LeaderEpoch(1);
const COORDINATOR_EPOCH: i32 = 3;

/// A transactional batch of `count` records of `producer`, its values tagged `tag`.
fn txn_batch(producer: i64, epoch: i16, seq: i32, count: i32, tag: &str) -> BytesMut {
    let mut builder = RecordBatchBuilder::new(T0_MS)
        .with_producer(producer, epoch, seq)
        .transactional();
    for i in 0..count {
        builder.push(
            T0_MS,
            Some(format!("k{i}").as_bytes()),
            Some(tag.as_bytes()),
            &[],
        );
    }
    builder.build()
}

fn append_txn(
    log: &mut Log,
    producer: i64,
    epoch: i16,
    seq: i32,
    count: i32,
    tag: &str,
) -> Result<AppendInfo, LogError> {
    log.append_batch(
        &mut txn_batch(producer, epoch, seq, count, tag),
        EPOCH,
        T0_MS,
    )
}

fn append_marker(
    log: &mut Log,
    producer: i64,
    epoch: i16,
    kind: ControlType,
) -> Result<AppendInfo, LogError> {
    let mut marker = build_control_batch(producer, epoch, kind, COORDINATOR_EPOCH, T0_MS);
    log.append_batch(&mut marker, EPOCH, T0_MS)
}

/// The values a read_committed consumer reads below the LSO.
fn read_committed(log: &Log) -> Result<Vec<String>, LogError> {
    let lso = log.last_stable_offset(log.log_end_offset());
    let start = log.log_start_offset();
    let read = log.read(start, u32::MAX, lso)?;
    let kept = filter_read_committed(&read.batches, log.aborted_transactions(start, lso)?)?;
    let mut values = Vec::new();
    for item in BatchIter::new(&kept) {
        let (_, batch) = item?;
        for record in decode_records(batch)? {
            let value = record.value.unwrap_or_default();
            values.push(String::from_utf8_lossy(&value).into_owned());
        }
    }
    Ok(values)
}

fn open(dir: &std::path::Path) -> Result<Log, LogError> {
    Log::open(dir, small_config())
}

#[test]
fn given_an_open_transaction_then_the_lso_holds_at_its_start_until_the_commit()
-> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(dir.path())?;
    log.append_batch(&mut common::batch(0, 2, T0_MS), EPOCH, T0_MS)?;
    let first = append_txn(&mut log, 7, 0, 0, 2, "t")?.base_offset;
    append_txn(&mut log, 7, 0, 2, 2, "t")?;
    let end = log.log_end_offset();
    assert_eq!(log.first_unstable_offset(), Some(first));
    assert_eq!(log.last_stable_offset(end), first);
    assert_eq!(
        log.last_stable_offset(Offset(1)),
        Offset(1),
        "never above the HW"
    );
    assert_eq!(log.open_transactions(), vec![(7, first)]);
    assert_eq!(
        read_committed(&log)?.len(),
        2,
        "only the plain batch is stable"
    );

    append_marker(&mut log, 7, 1, ControlType::Commit)?;
    assert_eq!(log.first_unstable_offset(), None);
    let end = log.log_end_offset();
    assert_eq!(log.last_stable_offset(end), end);
    assert!(log.aborted_transactions(Offset(0), end)?.is_empty());
    assert_eq!(
        read_committed(&log)?.iter().filter(|v| *v == "t").count(),
        4
    );
    Ok(())
}

#[test]
fn given_interleaved_transactions_when_one_aborts_then_read_committed_drops_only_it()
-> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(dir.path())?;
    let a_first = append_txn(&mut log, 1, 0, 0, 2, "a")?.base_offset;
    let b_first = append_txn(&mut log, 2, 0, 0, 2, "b")?.base_offset;
    append_txn(&mut log, 1, 0, 2, 1, "a")?;
    assert_eq!(log.open_transactions(), vec![(1, a_first), (2, b_first)]);
    let abort = append_marker(&mut log, 1, 1, ControlType::Abort)?.base_offset;
    let end = log.log_end_offset();
    assert_eq!(log.last_stable_offset(end), b_first, "B is still open");
    append_txn(&mut log, 2, 0, 2, 1, "b")?;
    append_marker(&mut log, 2, 1, ControlType::Commit)?;
    let expected = AbortedTxn {
        producer_id: 1,
        first_offset: a_first,
        last_offset: abort,
    };
    let end = log.log_end_offset();
    assert_eq!(log.aborted_transactions(Offset(0), end)?, vec![expected]);
    assert_eq!(log.aborted_transactions(abort, end)?, vec![expected]);
    assert!(log.aborted_transactions(abort.next(), end)?.is_empty());
    assert!(
        log.aborted_transactions(Offset(0), a_first)?.is_empty(),
        "upper is exclusive"
    );
    assert_eq!(read_committed(&log)?, ["b", "b", "b"]);
    assert_eq!(segment_files(dir.path(), ".txnindex").len(), 1);
    Ok(())
}

#[test]
fn given_a_marker_with_a_bumped_epoch_then_the_next_transaction_starts_at_sequence_zero()
-> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(dir.path())?;
    append_txn(&mut log, 5, 0, 0, 3, "t1")?;
    append_marker(&mut log, 5, 1, ControlType::Commit)?;
    let producer = log.producers();
    assert_eq!(producer.len(), 1);
    assert_eq!(
        (producer[0].producer_epoch, producer[0].last_sequence),
        (1, -1),
        "listed at the marker's epoch, with no batch of it yet"
    );
    let fenced = append_txn(&mut log, 5, 0, 3, 1, "zombie");
    assert!(matches!(
        fenced,
        Err(LogError::ProducerFenced {
            epoch: 0,
            current_epoch: 1,
            ..
        })
    ));
    let gap = append_txn(&mut log, 5, 1, 3, 1, "t2");
    assert!(matches!(
        gap,
        Err(LogError::OutOfOrderSequence {
            expected: 0,
            got: 3,
            ..
        })
    ));
    append_txn(&mut log, 5, 1, 0, 1, "t2")?;
    append_txn(&mut log, 5, 1, 1, 1, "t2")?;
    assert_eq!(log.producers()[0].producer_epoch, 1);
    Ok(())
}

#[test]
fn a_marker_not_newer_than_the_producer_appends_nothing() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(dir.path())?;
    append_txn(&mut log, 5, 4, 0, 1, "t")?;
    let end = log.log_end_offset();
    // An older epoch (a zombie coordinator), and the transaction's own epoch (a late copy of
    // the previous transaction's marker, which carried this epoch): neither may end it.
    for epoch in [3, 4] {
        let stale = append_marker(&mut log, 5, epoch, ControlType::Abort)?;
        assert!(stale.duplicate, "answered as done, nothing written");
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(log.open_transactions().len(), 1);
    }
    Ok(())
}

#[test]
fn a_non_transactional_batch_during_an_open_transaction_is_refused() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(dir.path())?;
    append_txn(&mut log, 5, 0, 0, 1, "t")?;
    let mut plain = RecordBatchBuilder::new(T0_MS).with_producer(5, 0, 1);
    plain.push(T0_MS, Some(b"k"), Some(b"v"), &[]);
    let refused = log.append_batch(&mut plain.build(), EPOCH, T0_MS);
    let Err(err @ LogError::InvalidTxnState { .. }) = refused else {
        panic!("expected InvalidTxnState, got {refused:?}");
    };
    assert!(err.to_string().contains("producer 5"), "{err}");
    // A transactional batch without a producer id is malformed, as is a marker without one.
    let mut orphan = RecordBatchBuilder::new(T0_MS).transactional();
    orphan.push(T0_MS, None, Some(b"v"), &[]);
    assert!(matches!(
        log.append_batch(&mut orphan.build(), EPOCH, T0_MS),
        Err(LogError::CorruptBatch { .. })
    ));
    Ok(())
}

#[test]
fn given_a_restart_mid_transaction_then_the_lso_and_the_index_are_rebuilt() -> Result<(), LogError>
{
    let dir = tempfile::tempdir().expect("tempdir");
    let (first, abort) = {
        let mut log = open(dir.path())?;
        // Enough to roll a few segments, so a snapshot sits below the open transaction.
        for i in 0..6 {
            log.append_batch(&mut common::batch(i, 5, T0_MS), EPOCH, T0_MS)?;
        }
        let aborted_first = append_txn(&mut log, 1, 0, 0, 2, "a")?.base_offset;
        let abort = append_marker(&mut log, 1, 1, ControlType::Abort)?.base_offset;
        let first = append_txn(&mut log, 2, 0, 0, 2, "b")?.base_offset;
        assert!(log.segment_count() > 1);
        (first, (aborted_first, abort))
    };
    // Kill -9: no flush. The torn end of the index is as a crash could leave it.
    for path in segment_files(dir.path(), ".txnindex") {
        let len = std::fs::metadata(&path).expect("stat").len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        file.set_len(len - 10).expect("tear the index");
    }
    let mut log = open(dir.path())?;
    let end = log.log_end_offset();
    assert_eq!(log.open_transactions(), vec![(2, first)]);
    assert_eq!(log.last_stable_offset(end), first);
    assert_eq!(
        log.aborted_transactions(Offset(0), end)?,
        vec![AbortedTxn {
            producer_id: 1,
            first_offset: abort.0,
            last_offset: abort.1,
        }]
    );

    // A clean shutdown snapshots the open transaction: the next open replays nothing.
    log.flush()?;
    drop(log);
    let mut log = open(dir.path())?;
    assert_eq!(log.producer_state_recovery().replayed_batches, 0);
    assert_eq!(log.open_transactions(), vec![(2, first)]);
    append_marker(&mut log, 2, 1, ControlType::Commit)?;
    let end = log.log_end_offset();
    assert_eq!(log.last_stable_offset(end), end);
    Ok(())
}

#[test]
fn truncation_removes_index_entries_and_reopens_the_transaction() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(dir.path())?;
    let first = append_txn(&mut log, 1, 0, 0, 2, "a")?.base_offset;
    let abort = append_marker(&mut log, 1, 1, ControlType::Abort)?.base_offset;
    assert_eq!(log.aborted_transactions(Offset(0), Offset(100))?.len(), 1);
    log.truncate_to(abort)?;
    assert!(log.aborted_transactions(Offset(0), Offset(100))?.is_empty());
    assert_eq!(log.open_transactions(), vec![(1, first)]);
    drop(log);
    let log = open(dir.path())?;
    assert!(log.aborted_transactions(Offset(0), Offset(100))?.is_empty());
    assert_eq!(log.open_transactions(), vec![(1, first)]);
    Ok(())
}

#[test]
fn retention_deletes_the_index_with_its_segment() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = small_config();
    config.retention_ms = Some(1_000);
    let mut log = Log::open(dir.path(), config)?;
    append_txn(&mut log, 1, 0, 0, 2, "a")?;
    append_marker(&mut log, 1, 1, ControlType::Abort)?;
    assert_eq!(segment_files(dir.path(), ".txnindex").len(), 1);
    while log.segment_count() < 3 {
        log.append_batch(&mut common::batch(0, 5, T0_MS), EPOCH, T0_MS)?;
    }
    let end = log.log_end_offset();
    let outcome = log.enforce_retention(T0_MS + 10_000, end)?;
    assert!(outcome.deleted_segments > 0);
    assert!(segment_files(dir.path(), ".txnindex").is_empty());
    assert!(log.aborted_transactions(Offset(0), end)?.is_empty());
    Ok(())
}

#[test]
fn a_follower_indexes_the_aborts_it_replicates_and_tracks_the_lso() -> Result<(), LogError> {
    let leader_dir = tempfile::tempdir().expect("tempdir");
    let follower_dir = tempfile::tempdir().expect("tempdir");
    let mut leader = open(leader_dir.path())?;
    let mut follower = open(follower_dir.path())?;
    let first = append_txn(&mut leader, 1, 0, 0, 2, "a")?.base_offset;
    append_txn(&mut leader, 2, 0, 0, 1, "b")?;
    append_marker(&mut leader, 1, 1, ControlType::Abort)?;
    let end = leader.log_end_offset();
    let fetched = leader.read(Offset(0), u32::MAX, end)?;
    follower.append_replicated_batches(&fetched.batches, T0_MS)?;
    assert_eq!(
        follower.aborted_transactions(Offset(0), end)?,
        leader.aborted_transactions(Offset(0), end)?
    );
    assert_eq!(follower.aborted_transactions(first, end)?.len(), 1);
    assert_eq!(follower.open_transactions(), leader.open_transactions());
    assert_eq!(read_committed(&follower)?, read_committed(&leader)?);
    Ok(())
}
