//! DeleteRecords through `Log::advance_log_start`: the log start moves inside a segment, whole
//! segments below it go, nothing past the high watermark can be deleted, and the new start
//! survives reopening.

mod common;

use common::{append_batches, read_records, small_config};
use ferrolog_log::{Log, LogError, Offset};

const T0_MS: i64 = 1_700_000_000_000;

/// A log of 40 batches of 5 records (offsets 0..200), batch `i` stamped `T0_MS + i`, rolled
/// into many small segments, with everything committed.
fn committed_log(dir: &std::path::Path) -> Result<Log, LogError> {
    let mut log = Log::open(dir, small_config())?;
    append_batches(&mut log, 40, 5, T0_MS)?;
    log.flush()?;
    log.checkpoint_high_watermark(log.log_end_offset())?;
    assert!(log.segment_count() > 3, "small segments roll");
    Ok(log)
}

#[test]
fn the_start_moves_inside_a_segment_and_reads_below_it_are_out_of_range() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = committed_log(dir.path())?;
    let segments_before = log.segment_count();

    assert!(log.advance_log_start(Offset(123), Offset(200))?);
    assert_eq!(log.log_start_offset(), Offset(123));
    assert!(
        log.segment_count() < segments_before,
        "segments below the start are deleted"
    );
    assert!(matches!(
        log.read(Offset(122), 1024, log.high_watermark()),
        Err(LogError::OffsetOutOfRange {
            requested: Offset(122),
            log_start: Offset(123),
            ..
        })
    ));
    let records = read_records(&log, Offset(123), 1024)?;
    assert_eq!(records.first().map(|r| r.offset), Some(Offset(123)));
    assert_eq!(records.len(), 200 - 123);

    assert!(
        !log.advance_log_start(Offset(100), Offset(200))?,
        "the start never moves back"
    );
    assert_eq!(log.log_start_offset(), Offset(123));
    Ok(())
}

#[test]
fn the_moved_start_survives_reopening() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut log = committed_log(dir.path())?;
        log.advance_log_start(Offset(77), Offset(200))?;
    }
    let log = Log::open(dir.path(), small_config())?;
    assert_eq!(log.log_start_offset(), Offset(77));
    assert_eq!(log.log_end_offset(), Offset(200));
    assert!(log.read(Offset(76), 1024, Offset(200)).is_err());
    Ok(())
}

#[test]
fn records_past_the_high_watermark_cannot_be_deleted() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = committed_log(dir.path())?;
    let refused = log.advance_log_start(Offset(151), Offset(150));
    assert!(
        matches!(
            refused,
            Err(LogError::BeyondHighWatermark {
                requested: Offset(151),
                high_watermark: Offset(150)
            })
        ),
        "{refused:?}"
    );
    assert_eq!(log.log_start_offset(), Offset(0), "nothing moved");
    assert!(
        log.advance_log_start(Offset(150), Offset(200))?,
        "up to the high watermark is fine"
    );
    assert_eq!(read_records(&log, Offset(150), 1024)?.len(), 50);
    Ok(())
}

#[test]
fn a_lookup_by_timestamp_never_answers_below_the_start() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = committed_log(dir.path())?;
    assert_eq!(log.offset_for_timestamp(T0_MS)?, Some(Offset(0)));
    log.advance_log_start(Offset(42), Offset(200))?;
    // Batch 8 (offsets 40..45) is stamped T0 + 8; asking for T0 now finds offset 42.
    assert_eq!(log.offset_for_timestamp(T0_MS)?, Some(Offset(42)));
    assert_eq!(log.offset_for_timestamp(T0_MS + 20)?, Some(Offset(100)));
    assert_eq!(log.offset_for_timestamp(T0_MS + 40)?, None);
    Ok(())
}

#[test]
fn truncating_below_the_start_moves_the_start_down_to_the_end() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = committed_log(dir.path())?;
    log.advance_log_start(Offset(195), Offset(200))?;
    log.truncate_to(Offset(190))?;
    assert!(log.log_end_offset() <= Offset(190));
    assert_eq!(log.log_start_offset(), log.log_end_offset());
    drop(log);
    let log = Log::open(dir.path(), small_config())?;
    assert_eq!(log.log_start_offset(), log.log_end_offset());
    Ok(())
}
