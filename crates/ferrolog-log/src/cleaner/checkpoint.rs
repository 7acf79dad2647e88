//! The persisted cleaner state of a partition (`cleaner-offset-checkpoint`): where its dirty
//! part starts, and when its oldest kept tombstone may go. Written atomically, as the high
//! watermark is; decimal text an operator can read with `cat`.
//!
//! Format: a version line (`0`), the first dirty offset, then the earliest delete horizon of
//! a kept tombstone in milliseconds (`-1` for none).

use std::io::ErrorKind;
use std::path::Path;

use crate::error::{IoContext, LogError};
use crate::fsutil::write_atomically;
use crate::types::Offset;

pub(crate) const CLEANER_CHECKPOINT_FILE: &str = "cleaner-offset-checkpoint";
const VERSION: &str = "0";

/// What the cleaner knows about one log between runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CleanerCheckpoint {
    /// Everything below was cleaned; the log cleans from here next time.
    pub(crate) first_dirty: Offset,
    /// The earliest time a kept tombstone may be removed, if any is kept.
    pub(crate) tombstone_horizon_ms: Option<i64>,
}

pub(crate) fn read(dir: &Path) -> Result<CleanerCheckpoint, LogError> {
    let text = match std::fs::read_to_string(dir.join(CLEANER_CHECKPOINT_FILE)) {
        Ok(text) => text,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(CleanerCheckpoint::default()),
        Err(err) => return Err(err).context("read cleaner checkpoint"),
    };
    let corrupt = |reason: String| LogError::CorruptCheckpoint {
        file: CLEANER_CHECKPOINT_FILE,
        reason,
    };
    let mut lines = text.lines();
    if lines.next() != Some(VERSION) {
        return Err(corrupt("unknown version line".into()));
    }
    let mut number = |what: &str| -> Result<i64, LogError> {
        let line = lines
            .next()
            .ok_or_else(|| corrupt(format!("missing {what} line")))?;
        line.trim()
            .parse::<i64>()
            .map_err(|err| corrupt(format!("bad {what} {line:?}: {err}")))
    };
    let first_dirty = Offset(number("first dirty offset")?);
    let horizon = number("tombstone horizon")?;
    Ok(CleanerCheckpoint {
        first_dirty,
        tombstone_horizon_ms: (horizon >= 0).then_some(horizon),
    })
}

pub(crate) fn write(dir: &Path, checkpoint: CleanerCheckpoint) -> Result<(), LogError> {
    let text = format!(
        "{VERSION}\n{}\n{}\n",
        checkpoint.first_dirty,
        checkpoint.tombstone_horizon_ms.unwrap_or(-1)
    );
    write_atomically(dir, CLEANER_CHECKPOINT_FILE, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkpoint_round_trips_and_defaults_to_nothing_cleaned() -> Result<(), LogError> {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read(dir.path())?, CleanerCheckpoint::default());
        let checkpoint = CleanerCheckpoint {
            first_dirty: Offset(42),
            tombstone_horizon_ms: Some(1_000),
        };
        write(dir.path(), checkpoint)?;
        assert_eq!(read(dir.path())?, checkpoint);
        std::fs::write(dir.path().join(CLEANER_CHECKPOINT_FILE), "0\nx\n").expect("write");
        assert!(read(dir.path()).is_err());
        Ok(())
    }
}
