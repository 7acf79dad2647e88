//! The simulated disk: real files (on tmpfs when there is one), plus a record of how much
//! of each segment file its last successful fsync covered, fed by ferrolog-log's sync
//! probe. A crash cuts every segment file back to that length, keeping a seeded part of
//! the unsynced rest (the page cache may have written some of it back) whose end may be
//! torn (zeros where the data never reached the disk). Log recovery must cope with all
//! of it.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::{Mutex, MutexGuard, OnceLock};

use ferrolog_log::SyncObserver;

use crate::rng::Rng;

/// Durable length per file, by (device, inode): the probe sees open files, not paths.
fn durable_lengths() -> MutexGuard<'static, HashMap<(u64, u64), u64>> {
    static LENGTHS: OnceLock<Mutex<HashMap<(u64, u64), u64>>> = OnceLock::new();
    LENGTHS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn key(metadata: &std::fs::Metadata) -> (u64, u64) {
    (metadata.dev(), metadata.ino())
}

struct Probe;

impl SyncObserver for Probe {
    fn created(&self, file: &File) {
        if let Ok(metadata) = file.metadata() {
            durable_lengths().insert(key(&metadata), 0);
        }
    }

    fn synced(&self, file: &File) {
        // Each seed runs on one thread and nothing appends between its fsync and this, so
        // the length now is the length the fsync covered.
        if let Ok(metadata) = file.metadata() {
            durable_lengths().insert(key(&metadata), metadata.len());
        }
    }
}

/// Installs the probe (once per process; every seed shares it).
pub fn install() {
    ferrolog_log::install_sync_observer(Box::new(Probe));
}

/// What a crash did to one segment file.
#[derive(Debug)]
pub struct Cut {
    pub file: String,
    pub length: u64,
    pub durable: u64,
    pub kept: u64,
    pub torn_bytes: u64,
}

/// Every `*.log` segment file under `dir`, sorted, so the cuts happen in one order.
fn segment_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            segment_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "log") {
            out.push(path);
        }
    }
    Ok(())
}

/// Applies a crash to the broker data under `dir` (its processes' files all closed):
/// each segment file loses what no fsync covered, except a seeded prefix of it, which may
/// end torn. Afterwards what is on disk is all there is, and counts as durable.
pub fn crash(dir: &Path, rng: &mut Rng) -> std::io::Result<Vec<Cut>> {
    let mut files = Vec::new();
    if dir.exists() {
        segment_files(dir, &mut files)?;
    }
    let mut cuts = Vec::new();
    for path in files {
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let metadata = file.metadata()?;
        let length = metadata.len();
        let durable = durable_lengths()
            .get(&key(&metadata))
            .copied()
            .unwrap_or_else(|| {
                panic!(
                    "{} was never created through the log: the sync probe missed it",
                    path.display()
                )
            });
        let mut kept = length;
        let mut torn_bytes = 0;
        if length > durable {
            let unsynced = length - durable;
            kept = if rng.chance(50) {
                durable
            } else {
                durable + rng.below(unsynced + 1)
            };
            file.set_len(kept)?;
            if kept > durable && rng.chance(30) {
                torn_bytes = (1 + rng.below(16)).min(kept - durable);
                file.write_all_at(&vec![0u8; torn_bytes as usize], kept - torn_bytes)?;
            }
            cuts.push(Cut {
                file: path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .display()
                    .to_string(),
                length,
                durable,
                kept,
                torn_bytes,
            });
        }
        durable_lengths().insert(key(&metadata), kept);
    }
    Ok(cuts)
}

/// The log cleaner's `.cleaned` files under `dir`, sorted.
fn cleaned_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            cleaned_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "cleaned") {
            out.push(path);
        }
    }
    Ok(())
}

/// Suffix of a hard link that keeps a `.cleaned` file through the drop of its cleaning.
const KEPT_SUFFIX: &str = "sim-kept";

/// Hard-links every `.cleaned` file under `dir` aside, so that dropping the cleaning that
/// owns them (which deletes them, as a live process does) leaves them on disk, as a crash
/// does. Returns what [`restore_cleaned_files`] puts back. The links share the inodes, so
/// the durable lengths stay known.
pub fn keep_cleaned_files(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    if dir.exists() {
        cleaned_files(dir, &mut files)?;
    }
    for file in &files {
        std::fs::hard_link(file, file.with_extension(format!("cleaned.{KEPT_SUFFIX}")))?;
    }
    Ok(files)
}

/// Puts the files [`keep_cleaned_files`] kept back under their names.
pub fn restore_cleaned_files(files: &[std::path::PathBuf]) -> std::io::Result<()> {
    for file in files {
        std::fs::rename(file.with_extension(format!("cleaned.{KEPT_SUFFIX}")), file)?;
    }
    Ok(())
}
