//! `ferrolog bench fsync`: how long a disk takes to make an append durable, with one writer
//! and with several writing at once, the way a broker's log makes a produce durable.
//!
//! With the default flush policy every acks=all produce waits for an fsync on each
//! in-sync replica, so this latency is the floor of a produce's latency on that disk. Brokers
//! that share one disk (a laptop's compose cluster, the three local nodes of
//! `scripts/bench-replication.sh`) fsync at the same time and wait for each other: the
//! several-writer rows show what that costs, with no broker involved.
//!
//! Each writer appends to its own file and `fdatasync`s after every append, as a segment
//! is written. A file starts over (truncated to empty) every `WRAP_BYTES`, so the page
//! cache stays small and every append still extends the file (a new block allocation and a
//! new file size to commit to the journal, as for a real segment).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use hdrhistogram::Histogram;

/// A writer's file starts over at this size: bounds the benchmark's page cache.
const WRAP_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Args)]
pub struct FsyncBench {
    /// Directory on the disk to measure; the benchmark's files live in a subdirectory it
    /// removes afterwards
    #[arg(long)]
    dir: PathBuf,
    /// Bytes per append (a 1 MiB produce request appends about that much)
    #[arg(long, default_value_t = 1024 * 1024)]
    write_size: usize,
    /// Appends per writer, each followed by an fdatasync
    #[arg(long, default_value_t = 200)]
    writes: u32,
    /// Writer counts to measure, one after another; each writer has its own file, as
    /// brokers sharing a disk do
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    writers: Vec<u32>,
}

/// What one writer count measured.
struct Measured {
    writers: u32,
    /// fdatasync latency in microseconds, over every writer.
    latency_us: Histogram<u64>,
    /// Bytes made durable per second over all writers together.
    bytes_per_second: f64,
}

/// Removes the benchmark's directory however the run ends.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn run(args: FsyncBench) -> anyhow::Result<()> {
    if args.write_size == 0 || args.writes == 0 {
        bail!("--write-size and --writes must be at least 1");
    }
    if args.writers.is_empty() || args.writers.contains(&0) {
        bail!("--writers lists writer counts of at least 1, as in --writers 1,3");
    }
    let scratch = ScratchDir(
        args.dir
            .join(format!("ferrolog-fsync-bench-{}", std::process::id())),
    );
    fs::create_dir_all(&scratch.0).with_context(|| format!("create {}", scratch.0.display()))?;
    println!(
        "fdatasync after each append of {} bytes, {} appends per writer, in {}",
        args.write_size,
        args.writes,
        args.dir.display()
    );
    for &writers in &args.writers {
        let measured = measure(
            &scratch.0,
            writers,
            args.write_size,
            args.writes,
            WRAP_BYTES,
        )?;
        let ms = |q: f64| measured.latency_us.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "writers: {} fdatasync p50 {:.2} ms p99 {:.2} ms max {:.2} ms, {:.1} MB/s over all writers",
            measured.writers,
            ms(0.5),
            ms(0.99),
            measured.latency_us.max() as f64 / 1000.0,
            measured.bytes_per_second / 1e6
        );
    }
    Ok(())
}

/// Runs `writers` writers at once, started together, and merges what they measured.
fn measure(
    dir: &Path,
    writers: u32,
    write_size: usize,
    writes: u32,
    wrap_bytes: u64,
) -> anyhow::Result<Measured> {
    let start = Arc::new(Barrier::new(writers as usize));
    let began = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let path = dir.join(format!("writer-{writers}-{w}.log"));
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                write_and_sync(&path, &start, write_size, writes, wrap_bytes)
            })
        })
        .collect();
    let mut latency_us = new_histogram()?;
    for handle in handles {
        let own = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a writer thread panicked"))??;
        latency_us.add(own).context("merge writer latencies")?;
    }
    let elapsed = began.elapsed().max(Duration::from_micros(1));
    let bytes = f64::from(writers) * f64::from(writes) * write_size as f64;
    Ok(Measured {
        writers,
        latency_us,
        bytes_per_second: bytes / elapsed.as_secs_f64(),
    })
}

/// One writer: appends `writes` blocks to its file, fdatasyncing each, and returns the
/// fdatasync latencies. The file starts over when an append would take it past
/// `wrap_bytes`.
fn write_and_sync(
    path: &Path,
    start: &Barrier,
    write_size: usize,
    writes: u32,
    wrap_bytes: u64,
) -> anyhow::Result<Histogram<u64>> {
    // Not zeros: some storage compresses or skips them.
    let block: Vec<u8> = (0..write_size)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let prepared = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("create {}", path.display()))
        .and_then(|file| Ok((file, new_histogram()?)));
    // At the barrier even after a failure: the other writers wait there for this one.
    start.wait();
    let (file, mut latency_us) = prepared?;
    let mut position = 0u64;
    for _ in 0..writes {
        if position + write_size as u64 > wrap_bytes.max(write_size as u64) {
            start_over(&file, path)?;
            position = 0;
        }
        file.write_all_at(&block, position)
            .with_context(|| format!("write {}", path.display()))?;
        position += write_size as u64;
        let synced = Instant::now();
        file.sync_data()
            .with_context(|| format!("fdatasync {}", path.display()))?;
        latency_us.saturating_record(synced.elapsed().as_micros() as u64);
    }
    Ok(latency_us)
}

/// Empties the file (durably, outside the measured fdatasyncs) so its pages are reused.
fn start_over(file: &File, path: &Path) -> anyhow::Result<()> {
    file.set_len(0)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("truncate {}", path.display()))
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    // 1 µs to 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3).context("create a latency histogram")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_writer_counts_every_fdatasync_and_the_files_are_removed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let scratch = ScratchDir(dir.path().join("scratch"));
        fs::create_dir_all(&scratch.0).expect("scratch dir");
        let measured = measure(&scratch.0, 3, 4096, 5, WRAP_BYTES).expect("measure");
        assert_eq!(measured.writers, 3);
        assert_eq!(measured.latency_us.len(), 15);
        assert!(measured.bytes_per_second > 0.0);
        // Each writer's file holds what it appended.
        for w in 0..3 {
            let len = fs::metadata(scratch.0.join(format!("writer-3-{w}.log")))
                .expect("writer file")
                .len();
            assert_eq!(len, 5 * 4096);
        }
        let path = scratch.0.clone();
        drop(scratch);
        assert!(!path.exists(), "the scratch directory is removed");
    }

    #[test]
    fn a_file_starts_over_when_it_would_pass_the_wrap_size() {
        let dir = tempfile::tempdir().expect("temp dir");
        let write_size = 4096;
        // Three appends of half the wrap size: the third starts the file over.
        let measured =
            measure(dir.path(), 1, write_size, 3, 2 * write_size as u64).expect("measure");
        assert_eq!(measured.latency_us.len(), 3);
        let len = fs::metadata(dir.path().join("writer-1-0.log"))
            .expect("writer file")
            .len();
        assert_eq!(len, write_size as u64);
    }
}
