//! Helpers shared by the integration tests. Each test binary uses a different subset.
#![allow(dead_code)]

use bytes::BytesMut;
use ferrolog_log::{
    BatchIter, Header, LeaderEpoch, Log, LogConfig, LogError, Offset, Record, RecordBatchBuilder,
    decode_records,
};

/// Small segments and a dense index so that a few kilobytes exercise rolls and lookups.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        index_interval_bytes: 128,
        retention_ms: None,
        ..LogConfig::default()
    }
}

/// A batch of `count` records stamped `timestamp_ms`, values naming their batch and index.
pub fn batch(tag: u32, count: u32, timestamp_ms: i64) -> BytesMut {
    let mut builder = RecordBatchBuilder::new(timestamp_ms);
    for i in 0..count {
        let key = format!("key-{tag}-{i}");
        let value = format!("value-{tag}-{i}");
        let header = Header {
            key: "tag".into(),
            value: Some(bytes::Bytes::from(tag.to_string())),
        };
        builder.push(
            timestamp_ms,
            Some(key.as_bytes()),
            Some(value.as_bytes()),
            &[header],
        );
    }
    builder.build()
}

/// Appends `batches` batches of `records_per_batch` records; batch `i` is stamped
/// `first_timestamp_ms + i`.
pub fn append_batches(
    log: &mut Log,
    batches: u32,
    records_per_batch: u32,
    first_timestamp_ms: i64,
) -> Result<(), LogError> {
    for i in 0..batches {
        let mut buf = batch(i, records_per_batch, first_timestamp_ms + i64::from(i));
        log.append_batch(&mut buf, LeaderEpoch(1), first_timestamp_ms)?;
    }
    Ok(())
}

/// Reads every record from `from` to the log end, `max_bytes` at a time, checking that each
/// read makes progress and that every batch is intact.
pub fn read_records(log: &Log, from: Offset, max_bytes: u32) -> Result<Vec<Record>, LogError> {
    let mut records = Vec::new();
    let mut next = from;
    let end = log.log_end_offset();
    while next < end {
        let result = log.read(next, max_bytes, end)?;
        assert!(
            !result.batches.is_empty(),
            "read at {next} made no progress"
        );
        for item in BatchIter::new(&result.batches) {
            let (header, bytes) = item?;
            records.extend(
                decode_records(bytes)?
                    .into_iter()
                    .filter(|r| r.offset >= next),
            );
            next = header.next_offset();
        }
    }
    Ok(records)
}

pub fn read_all(log: &Log) -> Result<Vec<Record>, LogError> {
    read_records(log, log.log_start_offset(), 64 * 1024)
}

/// Paths of the segment log files in `dir`, oldest first.
pub fn segment_files(dir: &std::path::Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("list dir")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    files
}
