//! Putting a cleaned segment in place of the segments it replaces, so that a crash at any
//! point leaves either the old segments or the new one in service, never both or neither
//! (Kafka's `.cleaned` / `.swap` protocol).
//!
//! 1. The cleaner writes `B.log.cleaned` and its indexes (`B.index.cleaned`,
//!    `B.timeindex.cleaned`), outside the log's lock, and fsyncs them.
//! 2. Under the lock it renames the indexes, then the log, to `.swap`, and fsyncs the
//!    directory. The rename of `B.log.swap` is the commit point: a `.log.swap` file is
//!    complete, and recovery finishes what it started.
//! 3. It deletes the replaced segments (every file of a segment whose base offset lies in
//!    `B..end`, where `end` is where the swap file's last batch ends, which is where the
//!    replaced group ended: the cleaner always keeps the group's last batch, as an empty
//!    header if need be), fsyncs the directory, renames the indexes and then the log from
//!    `.swap` to their final names, and fsyncs the directory again.
//!
//! Recovery (`recover`, run by `Log::open` before it lists segments) deletes `.cleaned`
//! files (an unfinished step 1), completes every `.log.swap` as in step 3, and deletes
//! index `.swap` files left without their log (step 2 interrupted before its commit
//! point). The old indexes are always gone before the new log takes the name, so a stale
//! index never describes a cleaned log; indexes are a cache that `Segment::open` rebuilds
//! when missing.
//!
//! The aborted-transaction index (`.txnindex`) moves like the other indexes, but only
//! exists when the cleaned segment keeps an ABORT marker, so each of its steps is skipped
//! when its file is absent.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::batch::{BATCH_HEADER_BYTES, BatchHeader};
use crate::error::{IoContext, LogError};
use crate::fsutil::{remove_if_exists, sync_dir};
use crate::segment::{
    INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX, parse_segment_file_name, segment_file_name,
};
use crate::txn_index::TXN_INDEX_SUFFIX;
use crate::types::Offset;

/// Suffix of a cleaned file being written.
pub(crate) const CLEANED_SUFFIX: &str = ".cleaned";
/// Suffix of a complete cleaned file waiting to replace the originals.
pub(crate) const SWAP_SUFFIX: &str = ".swap";
const SUFFIXES: [&str; 4] = [
    LOG_SUFFIX,
    INDEX_SUFFIX,
    TIME_INDEX_SUFFIX,
    TXN_INDEX_SUFFIX,
];
/// The order files move in: indexes first, the log (the commit point) last.
const MOVE_ORDER: [&str; 4] = [
    TXN_INDEX_SUFFIX,
    INDEX_SUFFIX,
    TIME_INDEX_SUFFIX,
    LOG_SUFFIX,
];

/// Counts the steps of a swap, and in tests stops it after a given number, as a crash
/// would. `Steps::unlimited()` in production.
pub(crate) struct Steps {
    left: Option<usize>,
}

impl Steps {
    pub(crate) fn unlimited() -> Self {
        Steps { left: None }
    }

    #[cfg(test)]
    pub(crate) fn crash_after(steps: usize) -> Self {
        Steps { left: Some(steps) }
    }

    /// Marks one step done, or fails as a crash before it if the budget is spent.
    pub(crate) fn step(&mut self) -> Result<(), LogError> {
        match &mut self.left {
            None => Ok(()),
            Some(0) => Err(LogError::Io {
                context: "clean (simulated crash)",
                source: std::io::Error::other("crash injected by a test"),
            }),
            Some(left) => {
                *left -= 1;
                Ok(())
            }
        }
    }
}

fn named(base: Offset, suffix: &str, state: &str) -> String {
    format!("{}{state}", segment_file_name(base, suffix))
}

/// Removes the three `.cleaned` files of base `base`.
pub(crate) fn discard_cleaned(dir: &Path, base: Offset) -> Result<(), LogError> {
    for suffix in SUFFIXES {
        remove_if_exists(&dir.join(named(base, suffix, CLEANED_SUFFIX)))?;
    }
    Ok(())
}

fn rename(dir: &Path, from: &str, to: &str) -> Result<(), LogError> {
    std::fs::rename(dir.join(from), dir.join(to)).context("rename cleaned segment file")
}

/// Steps 2 and 3 above: replaces the segments at `originals` (their base offsets, the
/// first equal to `base`) by the cleaned segment `base`.
pub(crate) fn swap_in(
    dir: &Path,
    base: Offset,
    originals: &[Offset],
    steps: &mut Steps,
) -> Result<(), LogError> {
    for suffix in MOVE_ORDER {
        let from = named(base, suffix, CLEANED_SUFFIX);
        if suffix == TXN_INDEX_SUFFIX && !dir.join(&from).exists() {
            continue;
        }
        steps.step()?;
        rename(dir, &from, &named(base, suffix, SWAP_SUFFIX))?;
    }
    steps.step()?;
    sync_dir(dir)?;
    finish_swap(dir, base, originals, steps)
}

/// Step 3: deletes the replaced segments and gives the swap files their final names.
fn finish_swap(
    dir: &Path,
    base: Offset,
    originals: &[Offset],
    steps: &mut Steps,
) -> Result<(), LogError> {
    for original in originals {
        for suffix in SUFFIXES {
            let path = dir.join(segment_file_name(*original, suffix));
            if suffix == TXN_INDEX_SUFFIX && !path.exists() {
                continue;
            }
            steps.step()?;
            remove_if_exists(&path)?;
        }
    }
    steps.step()?;
    sync_dir(dir)?;
    for suffix in MOVE_ORDER {
        let from = named(base, suffix, SWAP_SUFFIX);
        if dir.join(&from).exists() {
            steps.step()?;
            rename(dir, &from, &segment_file_name(base, suffix))?;
        }
    }
    steps.step()?;
    sync_dir(dir)
}

/// Where the batches of a complete swap file end: the offset after its last batch.
fn end_of_swap_file(path: &Path) -> Result<Offset, LogError> {
    let file = File::open(path).context("open swap file")?;
    let len = file.metadata().context("stat swap file")?.len();
    let mut pos = 0u64;
    let mut end = None;
    let mut raw = [0u8; BATCH_HEADER_BYTES];
    while pos < len {
        let header = file
            .read_exact_at(&mut raw, pos)
            .context("read swap file")
            .and_then(|()| BatchHeader::parse(&raw))
            .map_err(|err| LogError::InconsistentSegments {
                reason: format!("swap file {} is unreadable: {err}", path.display()),
            })?;
        end = Some(header.next_offset());
        pos += header.total_size_bytes() as u64;
    }
    end.ok_or_else(|| LogError::InconsistentSegments {
        reason: format!("swap file {} is empty", path.display()),
    })
}

/// Finishes or discards every interrupted cleaning in `dir` (see the module comment).
/// Returns whether it changed anything.
pub(crate) fn recover(dir: &Path) -> Result<bool, LogError> {
    let mut log_swaps = Vec::new();
    let mut index_swaps = Vec::new();
    let mut segments = Vec::new();
    let mut changed = false;
    for entry in std::fs::read_dir(dir).context("list partition directory")? {
        let entry = entry.context("list partition directory")?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(CLEANED_SUFFIX) {
            tracing::info!(file = %entry.path().display(), "removing unfinished cleaned file");
            remove_if_exists(&entry.path())?;
            changed = true;
        } else if let Some(stem) = name.strip_suffix(SWAP_SUFFIX) {
            if let Some(base) = parse_segment_file_name(stem, LOG_SUFFIX) {
                log_swaps.push(base);
            } else if let Some(base) = parse_segment_file_name(stem, INDEX_SUFFIX)
                .or_else(|| parse_segment_file_name(stem, TIME_INDEX_SUFFIX))
                .or_else(|| parse_segment_file_name(stem, TXN_INDEX_SUFFIX))
            {
                index_swaps.push((base, entry.path()));
            }
        } else if let Some(base) = parse_segment_file_name(name, LOG_SUFFIX) {
            segments.push(base);
        }
    }
    log_swaps.sort();
    for &base in &log_swaps {
        let end = end_of_swap_file(&dir.join(named(base, LOG_SUFFIX, SWAP_SUFFIX)))?;
        let replaced: Vec<Offset> = segments
            .iter()
            .copied()
            .filter(|s| *s >= base && *s < end)
            .collect();
        // The new segment's own old indexes go too, even when its old log is already gone.
        let mut originals = replaced.clone();
        if !originals.contains(&base) {
            originals.insert(0, base);
        }
        tracing::warn!(dir = %dir.display(), base_offset = %base, end_offset = %end,
            replaced = ?replaced, "completing an interrupted segment swap of the log cleaner");
        finish_swap(dir, base, &originals, &mut Steps::unlimited())?;
        segments.retain(|s| !replaced.contains(s));
        changed = true;
    }
    for (base, path) in index_swaps {
        if !log_swaps.contains(&base) {
            tracing::info!(file = %path.display(), "removing index swap file without its log");
            remove_if_exists(&path)?;
            changed = true;
        }
    }
    if changed {
        sync_dir(dir)?;
    }
    Ok(changed)
}
