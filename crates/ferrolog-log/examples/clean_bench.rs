//! Cleaner throughput, for `scripts/bench-cleaner.sh` (docs/performance.md, "Compaction").
//!
//!   clean_bench prepare DIR MIB   writes a compacted log of about MIB MiB in DIR: batches
//!                                 of 100 uncompressed records, 1 KiB values over 100,000 keys (about 40% of a 256 MiB log survives)
//!   clean_bench clean DIR         opens it, cleans it once (no I/O limit) and prints
//!                                 `cleaned INPUT_BYTES in SECONDS s: MB_PER_S MB/s ...`
//!
//! MB/s is the log's size before cleaning divided by the cleaning's wall time (mapping the
//! keys, rewriting every segment, fsyncing the output and swapping it in), the figure an
//! operator compares with the disk.

use std::path::Path;
use std::time::Instant;

use ferrolog_log::{
    CleanOutcome, CleanerOptions, CompactEveryDataBatch, CompactionConfig, LeaderEpoch, Log,
    LogConfig, LogError, RecordBatchBuilder, Throttle,
};

const KEYS: u64 = 100_000;
const RECORDS_PER_BATCH: u64 = 100;
const VALUE_BYTES: usize = 1024;
const T0_MS: i64 = 1_700_000_000_000;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024 * 1024,
        retention_ms: None,
        compaction: Some(CompactionConfig::default()),
        flush_policy: ferrolog_log::FlushPolicy::Os,
        ..LogConfig::default()
    }
}

fn prepare(dir: &Path, mib: u64) -> Result<(), LogError> {
    let mut log = Log::open(dir, config())?;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut value = vec![0u8; VALUE_BYTES];
    let mut i = 0u64;
    while log.size_bytes() < mib * 1024 * 1024 {
        let mut builder = RecordBatchBuilder::with_capacity(T0_MS, 110 * 1024);
        for _ in 0..RECORDS_PER_BATCH {
            for chunk in value.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
            }
            let key = format!("key-{:08}", i % KEYS);
            builder.push(T0_MS, Some(key.as_bytes()), Some(&value), &[]);
            i += 1;
        }
        let mut batch = builder.build();
        log.append_batch(&mut batch, LeaderEpoch(1), T0_MS)?;
    }
    // The active segment is never cleaned: roll it by appending into a fresh one.
    log.flush()?;
    let end = log.log_end_offset();
    log.checkpoint_high_watermark(end)?;
    println!(
        "prepared {} bytes, {} records, {} segments",
        log.size_bytes(),
        i,
        log.segment_count()
    );
    Ok(())
}

fn clean(dir: &Path) -> Result<(), LogError> {
    let mut log = Log::open(dir, config())?;
    let input = log.size_bytes();
    let end = log.high_watermark();
    let started = Instant::now();
    let outcome = log.clean(
        T0_MS,
        end,
        &CleanerOptions::default(),
        &CompactEveryDataBatch,
        &Throttle::unlimited(),
    )?;
    let seconds = started.elapsed().as_secs_f64();
    let Some(CleanOutcome::Installed { stats, .. }) = outcome else {
        eprintln!("nothing was cleaned: {outcome:?}");
        std::process::exit(1);
    };
    println!(
        "cleaned {input} bytes in {seconds:.3} s: {:.1} MB/s (read {} written {} bytes, {} of {} records kept)",
        input as f64 / seconds / 1e6,
        stats.bytes_read,
        stats.bytes_written,
        stats.records_kept,
        stats.records_read
    );
    Ok(())
}

fn main() -> Result<(), LogError> {
    let args: Vec<String> = std::env::args().collect();
    match (args.get(1).map(String::as_str), args.get(2), args.get(3)) {
        (Some("prepare"), Some(dir), Some(mib)) => {
            prepare(Path::new(dir), mib.parse().expect("MIB is a number"))
        }
        (Some("clean"), Some(dir), None) => clean(Path::new(dir)),
        _ => {
            eprintln!("usage: clean_bench prepare DIR MIB | clean DIR");
            std::process::exit(2);
        }
    }
}
