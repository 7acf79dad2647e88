//! Compaction through `Log`: latest values survive at their offsets, the cleaned part holds
//! one record per key, tombstones expire, and a crash at any step of a swap loses nothing.

use std::collections::BTreeMap;
use std::path::Path;

use super::swap::Steps;
use super::*;
use crate::builder::RecordBatchBuilder;
use crate::compression::Compression;
use crate::config::{CompactionConfig, LogConfig};
use crate::log::Log;
use crate::record::{Record, decode_records};
use crate::types::LeaderEpoch;

const T0_MS: i64 = 1_700_000_000_000;
const RETENTION_MS: u64 = 60_000;

fn compacted_config() -> LogConfig {
    LogConfig {
        segment_bytes: 2048,
        index_interval_bytes: 256,
        retention_ms: None,
        compaction: Some(CompactionConfig {
            min_cleanable_dirty_ratio: 0.0,
            delete_retention_ms: RETENTION_MS,
            ..CompactionConfig::default()
        }),
        ..LogConfig::default()
    }
}

/// What was written: offset -> (key, value), and each key's latest value.
#[derive(Default)]
struct Written {
    by_offset: BTreeMap<i64, (String, Option<String>)>,
    latest: BTreeMap<String, Option<String>>,
}

/// Appends `updates` records over `keys` keys, `per_batch` to a batch; every 7th update of
/// a key with `tombstones` set is a tombstone. Batches take every codec in turn, so every
/// test cleans compressed batches too.
fn write_updates(
    log: &mut Log,
    written: &mut Written,
    updates: u32,
    keys: u32,
    per_batch: u32,
    tombstones: bool,
) {
    let mut i = 0;
    let mut batches = 0usize;
    while i < updates {
        let mut builder = RecordBatchBuilder::new(T0_MS);
        let mut records = Vec::new();
        for _ in 0..per_batch.min(updates - i) {
            let key = format!("key-{}", i % keys);
            let value = (!(tombstones && i % 7 == 3)).then(|| format!("value-{i}"));
            builder.push(
                T0_MS,
                Some(key.as_bytes()),
                value.as_deref().map(str::as_bytes),
                &[],
            );
            records.push((key, value));
            i += 1;
        }
        let codec = Compression::ALL[batches % Compression::ALL.len()];
        batches += 1;
        let mut batch = builder.build_compressed(codec).expect("compresses");
        let info = log
            .append_batch(&mut batch, LeaderEpoch(1), T0_MS)
            .expect("append");
        for (n, (key, value)) in records.into_iter().enumerate() {
            written.latest.insert(key.clone(), value.clone());
            written
                .by_offset
                .insert(info.base_offset.0 + n as i64, (key, value));
        }
    }
    let end = log.log_end_offset();
    log.checkpoint_high_watermark(end).expect("high watermark");
}

fn read_everything(log: &Log) -> Vec<Record> {
    let mut records = Vec::new();
    let mut next = log.log_start_offset();
    let end = log.log_end_offset();
    while next < end {
        let read = log.read(next, 64 * 1024, end).expect("read");
        assert!(!read.batches.is_empty(), "a read at {next} makes progress");
        for batch in crate::batch::BatchIter::new(&read.batches) {
            let (header, bytes) = batch.expect("intact batch");
            records.extend(decode_records(bytes).expect("decodes"));
            next = header.next_offset();
        }
    }
    records
}

fn as_text(bytes: &Option<bytes::Bytes>) -> Option<String> {
    bytes
        .as_ref()
        .map(|b| String::from_utf8(b.to_vec()).expect("utf-8"))
}

/// Every record read sits at the offset it was written at with its value; every key's
/// latest value (or its tombstone, unless `tombstones_may_be_gone`) is readable; below
/// `clean_end` no key appears twice.
fn check(log: &Log, written: &Written, clean_end: Offset, tombstones_may_be_gone: bool) {
    let records = read_everything(log);
    let mut last: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut seen_clean: BTreeMap<String, i64> = BTreeMap::new();
    let mut previous = -1;
    for record in &records {
        assert!(record.offset.0 > previous, "offsets ascend");
        previous = record.offset.0;
        let key = as_text(&record.key).expect("every record has a key");
        let value = as_text(&record.value);
        assert_eq!(
            written.by_offset.get(&record.offset.0),
            Some(&(key.clone(), value.clone())),
            "record at {} kept its offset",
            record.offset
        );
        if record.offset < clean_end
            && let Some(before) = seen_clean.insert(key.clone(), record.offset.0)
        {
            panic!(
                "{key} appears at {before} and {} in the cleaned part",
                record.offset
            );
        }
        last.insert(key, value);
    }
    for (key, latest) in &written.latest {
        match (last.get(key), latest) {
            (Some(found), _) => assert_eq!(found, latest, "{key}'s latest value"),
            (None, None) if tombstones_may_be_gone => {}
            (None, _) => panic!("{key} lost its latest value {latest:?}"),
        }
    }
}

fn clean(log: &mut Log, now_ms: i64) -> CleanOutcome {
    let end = log.high_watermark();
    log.clean(
        now_ms,
        end,
        &CleanerOptions::default(),
        &CompactEveryDataBatch,
        &Throttle::unlimited(),
    )
    .expect("cleans")
    .expect("something to clean")
}

fn first_dirty(outcome: CleanOutcome) -> Offset {
    match outcome {
        CleanOutcome::Installed { first_dirty, .. } => first_dirty,
        CleanOutcome::Abandoned => panic!("the cleaning was abandoned"),
    }
}

fn leftover_cleaner_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".cleaned") || name.ends_with(".swap"))
        .collect()
}

#[test]
fn after_cleaning_every_key_keeps_its_latest_value_at_its_offset_and_once_in_the_clean_part() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), compacted_config()).expect("open");
    let mut written = Written::default();
    write_updates(&mut log, &mut written, 3_000, 40, 5, false);
    let segments_before = log.segment_count();
    let size_before = log.size_bytes();
    let state = log
        .dirty_state(T0_MS, log.high_watermark())
        .expect("compacted");
    assert!(state.is_due() && state.dirty_ratio() > 0.99, "{state:?}");

    let outcome = clean(&mut log, T0_MS);
    let clean_end = first_dirty(outcome);
    assert!(
        clean_end > Offset(2_900),
        "cleaned up to the active segment: {clean_end}"
    );
    assert!(log.size_bytes() < size_before / 5);
    assert_eq!(log.log_start_offset(), Offset(0), "the log start stays");
    check(&log, &written, clean_end, false);
    let state = log
        .dirty_state(T0_MS, log.high_watermark())
        .expect("compacted");
    assert!(
        !state.is_due(),
        "nothing dirty right after cleaning: {state:?}"
    );

    // More updates, a second cleaning over the clean part and the new dirty part, a reopen.
    write_updates(&mut log, &mut written, 1_000, 40, 3, false);
    let clean_end = first_dirty(clean(&mut log, T0_MS));
    check(&log, &written, clean_end, false);
    // Groups are formed by the sizes segments have before a cleaning (as Kafka does), so
    // the small segments a first cleaning leaves are merged by the next one.
    assert!(
        log.segment_count() < segments_before,
        "small segments were grouped: {} of {segments_before}",
        log.segment_count()
    );
    drop(log);
    let log = Log::open(dir.path(), compacted_config()).expect("reopen accepts the gaps");
    check(&log, &written, clean_end, false);
    assert!(leftover_cleaner_files(dir.path()).is_empty());
}

#[test]
fn tombstones_stay_for_delete_retention_after_their_first_cleaning_then_vanish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), compacted_config()).expect("open");
    let mut written = Written::default();
    write_updates(&mut log, &mut written, 2_000, 30, 4, true);
    let tombstoned = written.latest.values().filter(|v| v.is_none()).count();
    assert!(tombstoned > 0, "some keys end deleted");

    let clean_end = first_dirty(clean(&mut log, T0_MS));
    check(&log, &written, clean_end, false);
    let state = log
        .dirty_state(T0_MS + 1_000, log.high_watermark())
        .expect("compacted");
    assert!(!state.tombstones_due);

    let later = T0_MS + RETENTION_MS as i64 + 1;
    let state = log
        .dirty_state(later, log.high_watermark())
        .expect("compacted");
    assert!(state.tombstones_due && state.is_due(), "{state:?}");
    let clean_end = first_dirty(clean(&mut log, later));
    check(&log, &written, clean_end, true);
    let tombstones_left = read_everything(&log)
        .iter()
        .filter(|r| r.offset < clean_end && r.value.is_none())
        .count();
    assert_eq!(tombstones_left, 0, "expired tombstones are gone");
    let state = log
        .dirty_state(later, log.high_watermark())
        .expect("compacted");
    assert!(!state.tombstones_due);
}

#[test]
fn a_crash_at_any_step_of_the_swap_loses_no_latest_value_and_leaves_no_half_segment() {
    let mut crashed_runs = 0;
    for crash_after in 0.. {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = Log::open(dir.path(), compacted_config()).expect("open");
        let mut written = Written::default();
        write_updates(&mut log, &mut written, 600, 20, 3, true);
        let end = log.high_watermark();
        let task = log.prepare_cleaning(T0_MS, end).expect("cleanable");
        let cleaned = task
            .run(
                &CleanerOptions::default(),
                &CompactEveryDataBatch,
                &Throttle::unlimited(),
            )
            .expect("runs");
        let result = log.install_cleaned_with(cleaned, &mut Steps::crash_after(crash_after));
        let crashed = result.is_err();
        if crashed {
            assert!(
                log.sync_failed(),
                "a failed swap takes the log offline for writes"
            );
            crashed_runs += 1;
        }
        // `mem::forget` would keep the handles; dropping them is what a crash does too.
        drop(log);
        let mut log = Log::open(dir.path(), compacted_config()).expect("recovery opens");
        assert!(
            leftover_cleaner_files(dir.path()).is_empty(),
            "step {crash_after}"
        );
        check(&log, &written, Offset(0), false);
        if !crashed {
            break;
        }
        // Whatever the crash left, cleaning again works and gives the same result.
        let clean_end = first_dirty(clean(&mut log, T0_MS));
        check(&log, &written, clean_end, false);
    }
    assert!(crashed_runs > 10, "every step was tried: {crashed_runs}");
}

#[test]
fn a_small_dedupe_buffer_cleans_in_several_passes_without_losing_a_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), compacted_config()).expect("open");
    let mut written = Written::default();
    write_updates(&mut log, &mut written, 2_000, 500, 10, false);
    let options = CleanerOptions {
        dedupe_buffer_bytes: 120 * offset_map::OFFSET_MAP_ENTRY_BYTES,
    };
    let mut passes = 0;
    let mut clean_end = Offset(0);
    loop {
        let end = log.high_watermark();
        let outcome = log
            .clean(
                T0_MS,
                end,
                &options,
                &CompactEveryDataBatch,
                &Throttle::unlimited(),
            )
            .expect("cleans");
        let Some(outcome) = outcome else { break };
        let next = first_dirty(outcome);
        assert!(next > clean_end, "each pass makes progress");
        clean_end = next;
        passes += 1;
        check(&log, &written, Offset(0), false);
        assert!(passes < 100);
    }
    assert!(
        passes > 3,
        "the map held a part of the dirty keys at a time: {passes}"
    );
}

#[test]
fn a_follower_stores_the_cleaned_batches_of_its_leader_with_their_gaps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut leader = Log::open(&dir.path().join("leader"), compacted_config()).expect("open");
    let mut written = Written::default();
    write_updates(&mut leader, &mut written, 1_000, 25, 4, true);
    let clean_end = first_dirty(clean(&mut leader, T0_MS));
    let config = LogConfig {
        compaction: None,
        ..compacted_config()
    };
    let mut follower = Log::open(&dir.path().join("follower"), config.clone()).expect("open");
    let end = leader.log_end_offset();
    while follower.log_end_offset() < end {
        let from = follower.log_end_offset();
        let read = leader.read(from, 4096, end).expect("read");
        follower
            .append_replicated_batches(&read.batches, T0_MS)
            .expect("gaps are accepted");
    }
    check(&follower, &written, clean_end, false);
    drop(follower);
    let follower = Log::open(&dir.path().join("follower"), config).expect("reopen");
    check(&follower, &written, clean_end, false);
    assert_eq!(follower.log_end_offset(), end);
}

#[test]
fn the_log_abandons_a_cleaning_when_its_segments_changed_meanwhile() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), compacted_config()).expect("open");
    let mut written = Written::default();
    write_updates(&mut log, &mut written, 600, 20, 3, false);
    let task = log
        .prepare_cleaning(T0_MS, log.high_watermark())
        .expect("cleanable");
    let cleaned = task
        .run(
            &CleanerOptions::default(),
            &CompactEveryDataBatch,
            &Throttle::unlimited(),
        )
        .expect("runs");
    log.truncate_to(Offset(100)).expect("truncate");
    assert_eq!(
        log.install_cleaned(cleaned).expect("installs"),
        CleanOutcome::Abandoned
    );
    assert!(
        leftover_cleaner_files(dir.path()).is_empty(),
        "the cleaned files are removed"
    );
}

#[test]
fn a_compacted_log_refuses_records_without_a_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = Log::open(dir.path(), compacted_config()).expect("open");
    let mut builder = RecordBatchBuilder::new(T0_MS);
    builder.push(T0_MS, Some(b"k"), Some(b"v"), &[]);
    builder.push(T0_MS, None, Some(b"v"), &[]);
    let mut batch = builder.build();
    let refused = log.append_batch(&mut batch, LeaderEpoch(1), T0_MS);
    assert!(
        matches!(refused, Err(LogError::CorruptBatch { .. })),
        "{refused:?}"
    );
    assert_eq!(log.log_end_offset(), Offset(0));
}

#[test]
fn an_empty_retained_batch_is_a_valid_stored_batch_but_not_a_valid_produce() {
    let mut builder = RecordBatchBuilder::new(T0_MS);
    builder.push(T0_MS, Some(b"k"), Some(b"v"), &[]);
    builder.push(T0_MS, Some(b"k"), Some(b"w"), &[]);
    let batch = builder.build();
    let header = crate::batch::validate_batch(&batch).expect("valid");
    let empty = rebuild::empty_batch(&header);
    let stored = crate::stored_batch::validate_stored_batch(&empty).expect("stored batch");
    assert_eq!(stored.record_count, 0);
    assert_eq!(stored.next_offset(), header.next_offset());
    assert!(crate::batch::validate_batch(&empty).is_err());
}

mod transactions {
    use super::*;
    use crate::control::{ControlType, build_control_batch};
    use crate::read_committed::filter_read_committed;

    fn put(log: &mut Log, producer: Option<(i64, i32)>, key: &str, value: &str) -> Offset {
        let mut builder = RecordBatchBuilder::new(T0_MS);
        if let Some((producer_id, seq)) = producer {
            builder = builder.with_producer(producer_id, 0, seq).transactional();
        }
        builder.push(T0_MS, Some(key.as_bytes()), Some(value.as_bytes()), &[]);
        log.append_batch(&mut builder.build(), LeaderEpoch(1), T0_MS)
            .expect("appends")
            .base_offset
    }

    fn marker(log: &mut Log, producer_id: i64, kind: ControlType) -> Offset {
        let mut batch = build_control_batch(producer_id, 1, kind, 0, T0_MS);
        log.append_batch(&mut batch, LeaderEpoch(1), T0_MS)
            .expect("appends")
            .base_offset
    }

    /// Plain records of distinct keys until the log has rolled `segments` more times.
    fn roll(log: &mut Log, segments: usize) {
        let target = log.segment_count() + segments;
        let mut i = 0;
        while log.segment_count() < target {
            put(log, None, &format!("fill-{i}"), &"x".repeat(100));
            i += 1;
        }
    }

    /// key -> value as a read_committed consumer sees the whole log.
    fn visible(log: &Log) -> BTreeMap<String, String> {
        let (start, end) = (log.log_start_offset(), log.log_end_offset());
        let read = log.read(start, u32::MAX, end).expect("reads");
        let aborted = log.aborted_transactions(start, end).expect("index");
        let kept = filter_read_committed(&read.batches, aborted).expect("filters");
        let mut out = BTreeMap::new();
        for item in crate::batch::BatchIter::new(&kept) {
            let (_, batch) = item.expect("whole batch");
            for record in decode_records(batch).expect("decodes") {
                out.insert(
                    as_text(&record.key).expect("keyed"),
                    as_text(&record.value).unwrap_or_default(),
                );
            }
        }
        out
    }

    fn markers(log: &Log) -> Vec<Offset> {
        let read = log
            .read(log.log_start_offset(), u32::MAX, log.log_end_offset())
            .expect("reads");
        crate::batch::BatchIter::new(&read.batches)
            .map(|item| item.expect("whole batch").0)
            .filter(|header| header.is_control() && header.record_count > 0)
            .map(|header| header.base_offset)
            .collect()
    }

    fn clean_until(log: &mut Log, now_ms: i64) {
        let end = log.log_end_offset();
        log.checkpoint_high_watermark(end).expect("hw");
        log.clean(
            now_ms,
            end,
            &CleanerOptions::default(),
            &CompactEveryDataBatch,
            &Throttle::unlimited(),
        )
        .expect("cleans");
    }

    #[test]
    fn the_cleaner_drops_aborted_data_without_letting_it_shadow_committed_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = Log::open(dir.path(), compacted_config()).expect("opens");
        put(&mut log, None, "a", "old");
        put(&mut log, Some((1, 0)), "a", "aborted");
        put(&mut log, Some((2, 0)), "b", "committed");
        let abort = marker(&mut log, 1, ControlType::Abort);
        let commit = marker(&mut log, 2, ControlType::Commit);
        roll(&mut log, 2);
        let open_first = put(&mut log, Some((3, 0)), "c", "open");
        roll(&mut log, 2);
        let before = visible(&log);
        assert_eq!(before["a"], "old");

        clean_until(&mut log, T0_MS);
        assert!(
            log.cleaner_first_dirty() <= open_first,
            "nothing at or above the open transaction is cleaned"
        );
        assert_eq!(visible(&log), before);
        let read = log.read(Offset(0), u32::MAX, abort).expect("reads");
        let stored: Vec<Option<String>> = crate::batch::BatchIter::new(&read.batches)
            .flat_map(|item| decode_records(item.expect("whole batch").1).expect("decodes"))
            .map(|record| as_text(&record.value))
            .collect();
        assert!(stored.contains(&Some("old".into())));
        assert!(
            !stored.contains(&Some("aborted".into())),
            "the aborted record is gone from the log itself"
        );
        assert_eq!(
            markers(&log),
            vec![abort, commit],
            "markers stay within retention"
        );
        assert_eq!(
            log.aborted_transactions(Offset(0), log.log_end_offset())
                .expect("index")
                .len(),
            1
        );

        // The open transaction commits; the cleaner may now pass it.
        marker(&mut log, 3, ControlType::Commit);
        roll(&mut log, 1);
        clean_until(&mut log, T0_MS);
        assert!(log.cleaner_first_dirty() > open_first);
        assert_eq!(visible(&log)["c"], "open");
        drop(log);
        let log = Log::open(dir.path(), compacted_config()).expect("reopens");
        assert_eq!(
            visible(&log)["a"],
            "old",
            "the cleaned index survives a restart"
        );
        assert_eq!(
            log.aborted_transactions(Offset(0), log.log_end_offset())
                .expect("index")
                .len(),
            1,
            "the cleaned segment's index holds the abort it kept, across a restart"
        );
    }

    #[test]
    fn markers_go_after_delete_retention_once_their_transaction_left_no_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = Log::open(dir.path(), compacted_config()).expect("opens");
        put(&mut log, Some((1, 0)), "a", "aborted");
        put(&mut log, Some((2, 0)), "b", "committed");
        put(&mut log, Some((4, 0)), "d", "kept");
        let abort = marker(&mut log, 1, ControlType::Abort);
        marker(&mut log, 2, ControlType::Commit);
        let kept_commit = marker(&mut log, 4, ControlType::Commit);
        put(&mut log, None, "b", "overwritten");
        roll(&mut log, 2);
        clean_until(&mut log, T0_MS);
        assert_eq!(markers(&log).len(), 3);

        let later_ms = T0_MS + RETENTION_MS as i64 + 1;
        roll(&mut log, 1);
        clean_until(&mut log, later_ms);
        assert_eq!(
            markers(&log),
            vec![kept_commit],
            "the abort and the commit whose data compaction removed go; the commit of \
             kept data stays"
        );
        let end = log.log_end_offset();
        assert!(
            log.aborted_transactions(Offset(0), end)
                .expect("index")
                .is_empty()
        );
        assert!(abort < kept_commit);
        let visible = visible(&log);
        assert_eq!(visible["b"], "overwritten");
        assert_eq!(visible["d"], "kept");
        assert!(!visible.contains_key("a"));
        assert!(leftover_cleaner_files(dir.path()).is_empty());
    }
}
