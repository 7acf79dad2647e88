//! The leader-epoch cache: for each leader epoch, the first offset that leader appended.
//! Followers use it to find where their log diverged from a new leader's (KIP-101/279).
//!
//! Persisted as `leader-epoch-checkpoint`, one `epoch start_offset` line per entry, replaced
//! atomically on every change (changes are rare: one per leader election).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, LogError};
use crate::fsutil::write_atomically;
use crate::types::{LeaderEpoch, Offset};

pub(crate) const LEADER_EPOCH_FILE: &str = "leader-epoch-checkpoint";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EpochEntry {
    pub(crate) epoch: LeaderEpoch,
    pub(crate) start_offset: Offset,
}

/// Entries are kept sorted with both epochs and start offsets strictly increasing.
pub(crate) struct LeaderEpochCache {
    dir: PathBuf,
    entries: Vec<EpochEntry>,
}

fn corrupt(reason: String) -> LogError {
    LogError::CorruptCheckpoint {
        file: LEADER_EPOCH_FILE,
        reason,
    }
}

fn parse_line(line: &str) -> Result<EpochEntry, LogError> {
    let mut fields = line.split_whitespace();
    let (Some(epoch), Some(offset), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err(corrupt(format!("malformed line {line:?}")));
    };
    let epoch = epoch
        .parse()
        .map_err(|err| corrupt(format!("bad epoch in {line:?}: {err}")))?;
    let offset = offset
        .parse()
        .map_err(|err| corrupt(format!("bad offset in {line:?}: {err}")))?;
    Ok(EpochEntry {
        epoch: LeaderEpoch(epoch),
        start_offset: Offset(offset),
    })
}

impl LeaderEpochCache {
    /// Loads the cache from `dir`, empty if the checkpoint does not exist.
    pub(crate) fn load(dir: &Path) -> Result<Self, LogError> {
        let text = match std::fs::read_to_string(dir.join(LEADER_EPOCH_FILE)) {
            Ok(text) => text,
            Err(err) if err.kind() == ErrorKind::NotFound => String::new(),
            Err(err) => return Err(err).context("read leader epoch checkpoint"),
        };
        let entries = text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(parse_line)
            .collect::<Result<Vec<_>, _>>()?;
        let increasing = entries.windows(2).all(|pair| {
            pair[1].epoch > pair[0].epoch && pair[1].start_offset > pair[0].start_offset
        });
        if !increasing {
            return Err(corrupt("entries are not increasing".into()));
        }
        Ok(LeaderEpochCache {
            dir: dir.to_path_buf(),
            entries,
        })
    }

    pub(crate) fn latest(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    pub(crate) fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    /// Records that `epoch` starts at `start_offset`, dropping entries it supersedes (same or
    /// later epochs, same or later start offsets), as Kafka's `LeaderEpochFileCache.assign`.
    /// Persists and returns `true` if anything changed.
    pub(crate) fn assign(
        &mut self,
        epoch: LeaderEpoch,
        start_offset: Offset,
    ) -> Result<bool, LogError> {
        if let Some(latest) = self.latest()
            && latest.epoch == epoch
            && latest.start_offset <= start_offset
        {
            return Ok(false);
        }
        self.entries
            .retain(|e| e.epoch < epoch && e.start_offset < start_offset);
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
        self.persist()?;
        Ok(true)
    }

    /// Forgets every epoch (the log was emptied).
    pub(crate) fn clear(&mut self) -> Result<(), LogError> {
        if !self.entries.is_empty() {
            self.entries.clear();
            self.persist()?;
        }
        Ok(())
    }

    /// Removes entries starting at or after `end_offset` (the log was truncated there).
    pub(crate) fn truncate_from_end(&mut self, end_offset: Offset) -> Result<(), LogError> {
        let before = self.entries.len();
        self.entries.retain(|e| e.start_offset < end_offset);
        if self.entries.len() != before {
            self.persist()?;
        }
        Ok(())
    }

    /// Forgets epochs wholly below the new log start offset; the epoch in force at the log
    /// start is kept, starting at the log start.
    pub(crate) fn truncate_from_start(&mut self, start_offset: Offset) -> Result<(), LogError> {
        let in_force = self
            .entries
            .partition_point(|e| e.start_offset <= start_offset);
        let mut changed = false;
        if in_force > 1 {
            self.entries.drain(..in_force - 1);
            changed = true;
        }
        if let Some(first) = self.entries.first_mut()
            && first.start_offset < start_offset
        {
            first.start_offset = start_offset;
            changed = true;
        }
        if changed {
            self.persist()?;
        }
        Ok(())
    }

    /// Kafka's `endOffsetFor`: the largest epoch `<= requested` this log knows and the offset
    /// where it ended (the start of the next epoch, or the log end for the latest epoch).
    /// `None` when the requested epoch is undefined or later than any known epoch.
    pub(crate) fn end_offset_for(
        &self,
        requested: LeaderEpoch,
        log_end_offset: Offset,
    ) -> Option<(LeaderEpoch, Offset)> {
        if requested.0 < 0 {
            return None;
        }
        let latest = self.latest()?;
        if latest.epoch == requested {
            return Some((requested, log_end_offset));
        }
        let higher = self.entries.partition_point(|e| e.epoch <= requested);
        let higher_entry = self.entries.get(higher)?;
        match higher.checked_sub(1) {
            None => Some((requested, higher_entry.start_offset)),
            Some(floor) => Some((self.entries[floor].epoch, higher_entry.start_offset)),
        }
    }

    fn persist(&self) -> Result<(), LogError> {
        let text: String = self
            .entries
            .iter()
            .map(|e| format!("{} {}\n", e.epoch, e.start_offset))
            .collect();
        write_atomically(&self.dir, LEADER_EPOCH_FILE, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(epoch: i32, start: i64) -> EpochEntry {
        EpochEntry {
            epoch: LeaderEpoch(epoch),
            start_offset: Offset(start),
        }
    }

    #[test]
    fn assign_supersedes_later_entries_and_persists() -> Result<(), LogError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cache = LeaderEpochCache::load(dir.path())?;
        assert!(cache.assign(LeaderEpoch(1), Offset(0))?);
        assert!(
            !cache.assign(LeaderEpoch(1), Offset(5))?,
            "same epoch, later offset"
        );
        assert!(cache.assign(LeaderEpoch(3), Offset(10))?);
        assert!(cache.assign(LeaderEpoch(4), Offset(20))?);
        assert!(
            cache.assign(LeaderEpoch(5), Offset(15))?,
            "drops epoch 4 starting at 20"
        );
        assert_eq!(cache.entries(), &[entry(1, 0), entry(3, 10), entry(5, 15)]);
        let reloaded = LeaderEpochCache::load(dir.path())?;
        assert_eq!(reloaded.entries(), cache.entries());
        Ok(())
    }

    #[test]
    fn end_offset_for_follows_kafka() -> Result<(), LogError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cache = LeaderEpochCache::load(dir.path())?;
        assert_eq!(cache.end_offset_for(LeaderEpoch(0), Offset(0)), None);
        cache.assign(LeaderEpoch(2), Offset(10))?;
        cache.assign(LeaderEpoch(4), Offset(30))?;
        let end = Offset(50);
        let lookup = |epoch| cache.end_offset_for(LeaderEpoch(epoch), end);
        assert_eq!(
            lookup(4),
            Some((LeaderEpoch(4), end)),
            "latest ends at log end"
        );
        assert_eq!(lookup(2), Some((LeaderEpoch(2), Offset(30))));
        assert_eq!(
            lookup(3),
            Some((LeaderEpoch(2), Offset(30))),
            "unknown: floor epoch"
        );
        assert_eq!(
            lookup(1),
            Some((LeaderEpoch(1), Offset(10))),
            "before all epochs"
        );
        assert_eq!(lookup(5), None, "after all epochs");
        assert_eq!(lookup(-1), None, "undefined");
        Ok(())
    }

    #[test]
    fn truncation_from_both_ends() -> Result<(), LogError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cache = LeaderEpochCache::load(dir.path())?;
        for (epoch, start) in [(1, 0), (2, 10), (3, 20), (4, 30)] {
            cache.assign(LeaderEpoch(epoch), Offset(start))?;
        }
        cache.truncate_from_end(Offset(30))?;
        assert_eq!(cache.entries(), &[entry(1, 0), entry(2, 10), entry(3, 20)]);
        cache.truncate_from_start(Offset(15))?;
        assert_eq!(cache.entries(), &[entry(2, 15), entry(3, 20)]);
        assert_eq!(
            LeaderEpochCache::load(dir.path())?.entries(),
            cache.entries()
        );
        Ok(())
    }

    #[test]
    fn malformed_checkpoint_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(LEADER_EPOCH_FILE), "1 0\n2\n").expect("write");
        assert!(LeaderEpochCache::load(dir.path()).is_err());
    }
}
