//! A partition's persisted offsets, each in its own file written atomically: the high
//! watermark (`high-watermark`) and the log start offset that DeleteRecords moved
//! (`log-start-offset`).
//!
//! Format: a version line (`0`) followed by the offset, both as decimal text, so an operator
//! can read it with `cat`.

use std::io::ErrorKind;
use std::path::Path;

use crate::error::{IoContext, LogError};
use crate::fsutil::write_atomically;
use crate::types::Offset;

pub(crate) const HIGH_WATERMARK_FILE: &str = "high-watermark";
/// Written only when DeleteRecords moves the log start inside a segment: otherwise the first
/// segment's base offset is the log start.
pub(crate) const LOG_START_OFFSET_FILE: &str = "log-start-offset";
const VERSION: &str = "0";

/// Reads the checkpointed high watermark, `None` if none was ever written.
pub(crate) fn read_high_watermark(dir: &Path) -> Result<Option<Offset>, LogError> {
    read_offset(dir, HIGH_WATERMARK_FILE)
}

/// Durably replaces the high watermark checkpoint.
pub(crate) fn write_high_watermark(dir: &Path, high_watermark: Offset) -> Result<(), LogError> {
    write_offset(dir, HIGH_WATERMARK_FILE, high_watermark)
}

/// Reads the checkpointed log start offset, `None` if DeleteRecords never wrote one.
pub(crate) fn read_log_start_offset(dir: &Path) -> Result<Option<Offset>, LogError> {
    read_offset(dir, LOG_START_OFFSET_FILE)
}

/// Durably replaces the log start offset checkpoint.
pub(crate) fn write_log_start_offset(dir: &Path, log_start: Offset) -> Result<(), LogError> {
    write_offset(dir, LOG_START_OFFSET_FILE, log_start)
}

fn read_offset(dir: &Path, file: &'static str) -> Result<Option<Offset>, LogError> {
    let text = match std::fs::read_to_string(dir.join(file)) {
        Ok(text) => text,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).context("read offset checkpoint"),
    };
    let corrupt = |reason: String| LogError::CorruptCheckpoint { file, reason };
    let mut lines = text.lines();
    match lines.next() {
        Some(VERSION) => {}
        other => return Err(corrupt(format!("unknown version line {other:?}"))),
    }
    let value = lines
        .next()
        .ok_or_else(|| corrupt("missing offset line".into()))?;
    let offset = value
        .trim()
        .parse::<i64>()
        .map_err(|err| corrupt(format!("bad offset {value:?}: {err}")))?;
    Ok(Some(Offset(offset)))
}

fn write_offset(dir: &Path, file: &'static str, offset: Offset) -> Result<(), LogError> {
    let text = format!("{VERSION}\n{offset}\n");
    write_atomically(dir, file, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn high_watermark_round_trips_and_is_absent_at_first() -> Result<(), LogError> {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_high_watermark(dir.path())?, None);
        write_high_watermark(dir.path(), Offset(1234))?;
        assert_eq!(read_high_watermark(dir.path())?, Some(Offset(1234)));
        assert_eq!(
            read_log_start_offset(dir.path())?,
            None,
            "a file of its own"
        );
        write_log_start_offset(dir.path(), Offset(99))?;
        assert_eq!(read_log_start_offset(dir.path())?, Some(Offset(99)));
        assert_eq!(read_high_watermark(dir.path())?, Some(Offset(1234)));
        Ok(())
    }

    #[test]
    fn malformed_checkpoint_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(HIGH_WATERMARK_FILE), "0\nabc\n").expect("write");
        assert!(matches!(
            read_high_watermark(dir.path()),
            Err(LogError::CorruptCheckpoint { .. })
        ));
    }
}
