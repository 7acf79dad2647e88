//! Crash recovery: torn tails, bit flips, lost index files and leftovers of interrupted
//! operations. Each test damages files the way a crash or a bad disk would, then reopens.

mod common;

use std::fs::OpenOptions;
use std::path::Path;

use common::{append_batches, batch, read_all, segment_files, small_config};
use ferrolog_log::{BatchIter, LeaderEpoch, Log, LogError, Offset};

const T0_MS: i64 = 1_700_000_000_000;

fn set_len(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open segment")
        .set_len(len)
        .expect("truncate segment");
}

fn flip_byte(path: &Path, pos: usize) {
    let mut bytes = std::fs::read(path).expect("read segment");
    bytes[pos] ^= 0x20;
    std::fs::write(path, bytes).expect("write segment");
}

/// Byte ranges and next offsets of the batches of one segment file.
fn batches_of(path: &Path) -> Vec<(usize, usize, Offset)> {
    let bytes = std::fs::read(path).expect("read segment");
    let mut pos = 0;
    BatchIter::new(&bytes)
        .map(|item| {
            let (header, slice) = item.expect("intact segment");
            let range = (pos, pos + slice.len(), header.next_offset());
            pos += slice.len();
            range
        })
        .collect()
}

fn active_segment(dir: &Path) -> std::path::PathBuf {
    segment_files(dir, ".log").pop().expect("a segment")
}

#[test]
fn given_a_torn_tail_when_reopened_then_the_log_ends_after_the_last_intact_batch()
-> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), small_config())?;
    append_batches(&mut log, 23, 2, T0_MS)?;
    let before = read_all(&log)?;
    drop(log);

    tracing::info!("a crash tore the last write: the final batch is missing its last bytes");
    let active = active_segment(dir.path());
    let (last_start, last_end, _) = *batches_of(&active).last().expect("active has batches");
    set_len(&active, (last_end - 3) as u64);
    let expected_end = Offset(before.len() as i64 - 2);

    let mut log = Log::open(dir.path(), small_config())?;
    assert_eq!(log.log_end_offset(), expected_end);
    assert_eq!(log.flushed_offset(), log.log_end_offset());
    assert_eq!(
        std::fs::metadata(&active).expect("stat").len(),
        last_start as u64
    );
    assert_eq!(read_all(&log)?, before[..before.len() - 2].to_vec());

    tracing::info!("appends continue right after the last intact record");
    let info = log.append_batch(&mut batch(100, 2, T0_MS), LeaderEpoch(1), T0_MS)?;
    assert_eq!(info.base_offset, expected_end);
    let reopened = Log::open(dir.path(), small_config())?;
    assert_eq!(reopened.log_end_offset(), expected_end.next().next());
    Ok(())
}

#[test]
fn given_a_bit_flip_in_the_last_batch_when_reopened_then_that_batch_is_dropped()
-> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), small_config())?;
    append_batches(&mut log, 23, 2, T0_MS)?;
    let before = read_all(&log)?;
    drop(log);

    let active = active_segment(dir.path());
    let (last_start, last_end, _) = *batches_of(&active).last().expect("batches");
    flip_byte(&active, last_end - 5);

    let log = Log::open(dir.path(), small_config())?;
    assert_eq!(log.log_end_offset(), Offset(before.len() as i64 - 2));
    assert_eq!(
        std::fs::metadata(&active).expect("stat").len(),
        last_start as u64
    );
    let records = read_all(&log)?;
    assert_eq!(records, before[..before.len() - 2].to_vec());
    Ok(())
}

#[test]
fn given_a_bit_flip_in_the_first_batch_of_the_active_segment_then_the_segment_is_removed()
-> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), small_config())?;
    append_batches(&mut log, 23, 2, T0_MS)?;
    let before = read_all(&log)?;
    let segments = log.segment_count();
    assert!(segments > 1);
    drop(log);
    let active = active_segment(dir.path());
    let active_base = Offset(
        active
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse().ok())
            .expect("segment name is its base offset"),
    );
    flip_byte(&active, batches_of(&active)[0].0 + 30);

    let mut log = Log::open(dir.path(), small_config())?;
    assert_eq!(
        log.segment_count(),
        segments - 1,
        "the emptied active segment is removed"
    );
    assert!(!active.exists());
    assert_eq!(log.log_end_offset(), active_base);
    assert_eq!(read_all(&log)?, before[..active_base.0 as usize].to_vec());

    tracing::info!("the previous segment is active again and takes appends");
    let info = log.append_batch(&mut batch(50, 2, T0_MS), LeaderEpoch(1), T0_MS)?;
    assert_eq!(info.base_offset, active_base);
    drop(log);
    let log = Log::open(dir.path(), small_config())?;
    assert_eq!(log.log_end_offset(), active_base.next().next());
    Ok(())
}

#[test]
fn given_a_bit_flip_in_a_closed_segment_then_reads_fail_instead_of_serving_it()
-> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), small_config())?;
    append_batches(&mut log, 30, 2, T0_MS)?;
    let end = log.log_end_offset();
    drop(log);

    let files = segment_files(dir.path(), ".log");
    assert!(files.len() > 3);
    let oldest = &files[0];
    let batches = batches_of(oldest);
    let (second_start, second_end, _) = batches[1];
    flip_byte(oldest, (second_start + second_end) / 2);

    tracing::info!("closed segments are not rescanned on open, so the flip is found on read");
    let log = Log::open(dir.path(), small_config())?;
    assert_eq!(log.log_end_offset(), end);
    let second_base = batches[0].2;
    assert!(matches!(
        log.read(second_base, u32::MAX, end),
        Err(LogError::CorruptBatch { .. })
    ));

    tracing::info!("a read before the corrupt batch returns only the intact batches");
    let result = log.read(Offset(0), u32::MAX, end)?;
    let served: Vec<_> = BatchIter::new(&result.batches).collect::<Result<_, _>>()?;
    assert_eq!(
        served.len(),
        1,
        "only the first batch precedes the corrupt one"
    );

    tracing::info!("later segments are still served");
    let third_segment_base = batches.last().expect("batches").2;
    assert!(
        !log.read(third_segment_base, u32::MAX, end)?
            .batches
            .is_empty()
    );
    Ok(())
}

#[test]
fn given_deleted_index_files_when_reopened_then_they_are_rebuilt() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), small_config())?;
    for i in 0..40u32 {
        log.append_batch(
            &mut batch(i, 2, T0_MS + i64::from(i)),
            LeaderEpoch(0),
            T0_MS,
        )?;
    }
    let before = read_all(&log)?;
    let end = log.log_end_offset();
    drop(log);
    let indexes = segment_files(dir.path(), ".index");
    let time_indexes = segment_files(dir.path(), ".timeindex");
    let sizes: Vec<u64> = indexes
        .iter()
        .map(|p| std::fs::metadata(p).expect("stat").len())
        .collect();
    for path in indexes.iter().chain(&time_indexes) {
        std::fs::remove_file(path).expect("remove index");
    }
    std::fs::write(&indexes[1], [1, 2, 3]).expect("write a malformed index");

    let log = Log::open(dir.path(), small_config())?;
    assert_eq!(log.log_end_offset(), end);
    for (path, size) in indexes.iter().zip(&sizes) {
        assert_eq!(
            std::fs::metadata(path).expect("rebuilt").len(),
            *size,
            "{path:?}"
        );
    }
    assert!(time_indexes.iter().all(|path| path.exists()));
    assert_eq!(read_all(&log)?, before);
    for target in 0..end.0 {
        let result = log.read(Offset(target), 1, end)?;
        let (header, _) = BatchIter::new(&result.batches).next().expect("a batch")?;
        assert!(header.base_offset.0 <= target && target <= header.last_offset().0);
    }
    assert_eq!(log.offset_for_timestamp(T0_MS + 17)?, Some(Offset(34)));
    Ok(())
}

#[test]
fn leftovers_of_interrupted_operations_are_cleaned_up() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), small_config())?;
    append_batches(&mut log, 10, 2, T0_MS)?;
    let end = log.log_end_offset();
    drop(log);
    let stray_temp = dir.path().join("high-watermark.tmp");
    let orphan_index = dir.path().join("00000000000000999999.index");
    std::fs::write(&stray_temp, "0\n9").expect("write");
    std::fs::write(&orphan_index, [0u8; 8]).expect("write");

    let log = Log::open(dir.path(), small_config())?;
    assert!(!stray_temp.exists());
    assert!(!orphan_index.exists());
    assert_eq!(log.log_end_offset(), end);
    Ok(())
}

#[test]
fn given_garbage_after_the_last_batch_when_reopened_then_it_is_cut_off() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), small_config())?;
    append_batches(&mut log, 3, 2, T0_MS)?;
    let size = log.size_bytes();
    drop(log);
    let active = active_segment(dir.path());
    set_len(&active, size + 4096);

    let mut log = Log::open(dir.path(), small_config())?;
    assert_eq!(log.log_end_offset(), Offset(6));
    assert_eq!(log.size_bytes(), size);
    log.append_batch(&mut batch(3, 2, T0_MS), LeaderEpoch(1), T0_MS)?;
    drop(log);
    let log = Log::open(dir.path(), small_config())?;
    assert_eq!(log.log_end_offset(), Offset(8));
    Ok(())
}

#[test]
fn given_unflushed_epoch_and_high_watermark_beyond_a_torn_tail_then_both_are_clamped()
-> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), small_config())?;
    append_batches(&mut log, 3, 2, T0_MS)?;
    log.append_batch(&mut batch(9, 2, T0_MS), LeaderEpoch(4), T0_MS)?;
    log.checkpoint_high_watermark(Offset(8))?;
    drop(log);
    let active = active_segment(dir.path());
    let (last_start, _, _) = *batches_of(&active).last().expect("batches");
    set_len(&active, last_start as u64 + 10);

    let log = Log::open(dir.path(), small_config())?;
    assert_eq!(log.log_end_offset(), Offset(6));
    assert_eq!(log.high_watermark(), Offset(6));
    assert_eq!(
        log.leader_epoch(),
        LeaderEpoch(1),
        "epoch 4 started at the lost offset 6"
    );
    Ok(())
}

#[test]
fn given_a_lost_index_and_a_corrupt_closed_segment_then_the_log_ends_at_the_corruption()
-> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), small_config())?;
    append_batches(&mut log, 30, 2, T0_MS)?;
    let before = read_all(&log)?;
    drop(log);
    let files = segment_files(dir.path(), ".log");
    assert!(files.len() > 3);
    let damaged = &files[1];
    let batches = batches_of(damaged);
    let (third_start, _, _) = batches[2];
    flip_byte(damaged, third_start + 40);
    std::fs::remove_file(damaged.with_extension("index")).expect("remove index");

    tracing::info!("the rescan truncates the closed segment, so later ones cannot follow it");
    let log = Log::open(dir.path(), small_config())?;
    let intact_end = batches[1].2;
    assert_eq!(log.log_end_offset(), intact_end);
    assert_eq!(log.segment_count(), 2);
    assert!(files[2..].iter().all(|later| !later.exists()));
    assert_eq!(read_all(&log)?, before[..intact_end.0 as usize].to_vec());
    Ok(())
}
