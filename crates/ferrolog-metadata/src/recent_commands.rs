//! The metadata commands applied most recently, kept so that a broker following the
//! controllers receives only what changed since its image, not the whole image again.
//!
//! Bounded by count and by bytes: a follower that fell further behind than the kept commands
//! reach (or behind a snapshot install, which replaces the image wholesale) gets the whole
//! image instead, as KRaft's observers fetch a snapshot when the log before their offset
//! was deleted.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::ClusterImage;

/// Commands kept for followers, at most. A topic create or one ISR change is one command;
/// ten thousand of them cover minutes of a busy cluster's changes.
pub const MAX_RECENT_COMMANDS: usize = 10_000;
/// Bytes of encoded records kept for followers, at most.
pub const MAX_RECENT_COMMAND_BYTES: usize = 32 * 1024 * 1024;

/// One applied metadata command: its log index and its encoded `MetadataRecord`s, which
/// applied in order to the image before it give the image at `index`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedCommand {
    pub index: u64,
    pub records: Vec<Vec<u8>>,
}

impl AppliedCommand {
    fn bytes(&self) -> usize {
        self.records.iter().map(Vec::len).sum()
    }
}

/// What changed since a follower's image: the current image, and the commands after the
/// follower's index when they are all still kept (`None`: send the whole image).
#[derive(Clone, Debug)]
pub struct MetadataChanges {
    pub image: Arc<ClusterImage>,
    pub commands: Option<Vec<Arc<AppliedCommand>>>,
}

/// Every command applied after `complete_after`, oldest first, within the bounds.
#[derive(Debug)]
pub struct RecentCommands {
    /// Shared with the streams that send them: reading them under the state machine's lock
    /// copies pointers, not records.
    commands: VecDeque<Arc<AppliedCommand>>,
    bytes: usize,
    /// Every command with a larger index that changed the image is in `commands`.
    complete_after: u64,
    max_commands: usize,
    max_bytes: usize,
}

impl RecentCommands {
    /// An empty history of an image at `index` (restored from a snapshot, or installed).
    pub fn starting_at(index: u64) -> Self {
        Self::with_limits(index, MAX_RECENT_COMMANDS, MAX_RECENT_COMMAND_BYTES)
    }

    fn with_limits(index: u64, max_commands: usize, max_bytes: usize) -> Self {
        Self {
            commands: VecDeque::new(),
            bytes: 0,
            complete_after: index,
            max_commands,
            max_bytes,
        }
    }

    /// Keeps a command that was just applied, dropping the oldest beyond the bounds.
    pub fn push(&mut self, command: AppliedCommand) {
        debug_assert!(
            self.commands
                .back()
                .is_none_or(|last| last.index < command.index),
            "commands are applied in log order"
        );
        self.bytes += command.bytes();
        self.commands.push_back(Arc::new(command));
        while self.commands.len() > self.max_commands
            || (self.bytes > self.max_bytes && self.commands.len() > 1)
        {
            let Some(oldest) = self.commands.pop_front() else {
                break;
            };
            self.bytes -= oldest.bytes();
            self.complete_after = oldest.index;
        }
    }

    /// Forgets everything: the image was replaced wholesale at `index`.
    pub fn reset(&mut self, index: u64) {
        self.commands.clear();
        self.bytes = 0;
        self.complete_after = index;
    }

    /// The commands after `from`, or `None` when some of them are no longer kept.
    pub fn since(&self, from: u64) -> Option<Vec<Arc<AppliedCommand>>> {
        if from < self.complete_after {
            return None;
        }
        let first = self.commands.partition_point(|c| c.index <= from);
        Some(self.commands.range(first..).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(index: u64, bytes: usize) -> AppliedCommand {
        AppliedCommand {
            index,
            records: vec![vec![0; bytes]],
        }
    }

    fn indexes(commands: Option<Vec<Arc<AppliedCommand>>>) -> Option<Vec<u64>> {
        commands.map(|c| c.into_iter().map(|c| c.index).collect())
    }

    #[test]
    fn a_follower_gets_exactly_the_commands_after_its_index() {
        let mut recent = RecentCommands::starting_at(10);
        for index in [12, 13, 17] {
            recent.push(command(index, 8));
        }
        assert_eq!(indexes(recent.since(10)), Some(vec![12, 13, 17]));
        assert_eq!(indexes(recent.since(12)), Some(vec![13, 17]));
        // Index 14..16 were blank or membership entries: nothing to send for them.
        assert_eq!(indexes(recent.since(15)), Some(vec![17]));
        assert_eq!(indexes(recent.since(17)), Some(vec![]));
        // A follower ahead of this (lagging) controller waits for it.
        assert_eq!(indexes(recent.since(30)), Some(vec![]));
    }

    #[test]
    fn a_follower_behind_what_is_kept_gets_the_whole_image() {
        let mut recent = RecentCommands::starting_at(10);
        assert_eq!(
            recent.since(9),
            None,
            "before the snapshot this history starts at"
        );
        recent.push(command(11, 8));
        recent.reset(40);
        assert_eq!(recent.since(11), None, "behind an installed snapshot");
        assert_eq!(indexes(recent.since(40)), Some(vec![]));
    }

    #[test]
    fn the_oldest_commands_go_first_when_a_bound_is_reached() {
        let mut by_count = RecentCommands::with_limits(0, 3, usize::MAX);
        for index in 1..=5 {
            by_count.push(command(index, 1));
        }
        assert_eq!(indexes(by_count.since(2)), Some(vec![3, 4, 5]));
        assert_eq!(by_count.since(1), None);

        let mut by_bytes = RecentCommands::with_limits(0, usize::MAX, 100);
        by_bytes.push(command(1, 60));
        by_bytes.push(command(2, 60));
        assert_eq!(by_bytes.since(0), None);
        assert_eq!(indexes(by_bytes.since(1)), Some(vec![2]));
        // One command larger than the bound is still kept: it is the newest change.
        by_bytes.push(command(3, 500));
        assert_eq!(indexes(by_bytes.since(2)), Some(vec![3]));
    }
}
