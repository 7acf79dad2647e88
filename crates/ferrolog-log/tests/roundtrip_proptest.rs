//! Property: whatever sequence of appends, rolls, restarts, truncations and retention passes
//! happens, every record still in the log reads back identically (offset, timestamp, key,
//! value, headers), with tiny segments so that batches straddle many rolls and index entries.

mod common;

use bytes::Bytes;
use common::read_records;
use ferrolog_log::{Header, LeaderEpoch, Log, LogConfig, Offset, Record, RecordBatchBuilder};
use proptest::prelude::*;

const T0_MS: i64 = 1_700_000_000_000;

#[derive(Clone, Debug)]
struct RecordSpec {
    timestamp_delta_ms: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

#[derive(Clone, Debug)]
enum Op {
    Append(Vec<RecordSpec>),
    Reopen,
    RollIfDue,
    /// Truncates at one of the batch boundaries still in the log, picked by index.
    Truncate(usize),
    /// Runs retention with `retention.bytes` set to this.
    Retain(u64),
}

fn record_spec() -> impl Strategy<Value = RecordSpec> {
    (
        0i64..10_000,
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        proptest::collection::vec(
            (
                "[a-z]{0,6}",
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..10)),
            ),
            0..3,
        ),
    )
        .prop_map(|(timestamp_delta_ms, key, value, headers)| RecordSpec {
            timestamp_delta_ms,
            key,
            value,
            headers,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => proptest::collection::vec(record_spec(), 1..8).prop_map(Op::Append),
        1 => Just(Op::Reopen),
        1 => Just(Op::RollIfDue),
        1 => any::<usize>().prop_map(Op::Truncate),
        1 => (0u64..8192).prop_map(Op::Retain),
    ]
}

fn to_headers(specs: &[(String, Option<Vec<u8>>)]) -> Vec<Header> {
    specs
        .iter()
        .map(|(key, value)| Header {
            key: key.clone(),
            value: value.clone().map(Bytes::from),
        })
        .collect()
}

/// Checks the log against the model: `expected[i]` is the record at offset `i`; records below
/// the log start offset were removed by retention.
fn check_reads(log: &Log, expected: &[Record], max_bytes: u32) -> Result<(), TestCaseError> {
    prop_assert_eq!(log.log_end_offset(), Offset(expected.len() as i64));
    let start = log.log_start_offset();
    let records = read_records(log, start, max_bytes)
        .map_err(|err| TestCaseError::fail(format!("read failed: {err}")))?;
    prop_assert_eq!(records.as_slice(), &expected[start.0 as usize..]);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn everything_appended_reads_back_across_rolls_and_restarts(
        ops in proptest::collection::vec(op(), 1..40),
        segment_bytes in 256u64..2048,
        index_interval_bytes in 16u32..512,
        max_read_bytes in 1u32..4096,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig {
            segment_bytes,
            segment_ms: 60_000,
            index_interval_bytes,
            retention_ms: None,
            ..LogConfig::default()
        };
        let mut log = Log::open(dir.path(), config.clone()).expect("open");
        let mut expected: Vec<Record> = Vec::new();
        let mut boundaries: Vec<Offset> = Vec::new();
        let mut now_ms = T0_MS;
        for op in ops {
            now_ms += 10_000;
            match op {
                Op::Append(specs) => {
                    let mut builder = RecordBatchBuilder::new(T0_MS);
                    let first = expected.len() as i64;
                    boundaries.push(Offset(first));
                    for (i, spec) in specs.iter().enumerate() {
                        let headers = to_headers(&spec.headers);
                        let timestamp_ms = T0_MS + spec.timestamp_delta_ms;
                        builder.push(timestamp_ms, spec.key.as_deref(), spec.value.as_deref(), &headers);
                        expected.push(Record {
                            offset: Offset(first + i as i64),
                            timestamp_ms,
                            key: spec.key.clone().map(Bytes::from),
                            value: spec.value.clone().map(Bytes::from),
                            headers,
                        });
                    }
                    let info = log
                        .append_batch(&mut builder.build(), LeaderEpoch(1), now_ms)
                        .expect("append");
                    prop_assert_eq!(info.base_offset, Offset(first));
                }
                Op::Reopen => {
                    drop(log);
                    log = Log::open(dir.path(), config.clone()).expect("reopen");
                    check_reads(&log, &expected, max_read_bytes)?;
                }
                Op::RollIfDue => {
                    log.roll_if_due(now_ms).expect("roll");
                }
                Op::Truncate(pick) => {
                    boundaries.retain(|&b| b >= log.log_start_offset());
                    if !boundaries.is_empty() {
                        let at = boundaries[pick % boundaries.len()];
                        log.truncate_to(at).expect("truncate");
                        expected.truncate(at.0 as usize);
                        boundaries.retain(|&b| b < at);
                        check_reads(&log, &expected, max_read_bytes)?;
                    }
                }
                Op::Retain(retention_bytes) => {
                    log.set_config(LogConfig { retention_bytes: Some(retention_bytes), ..config.clone() });
                    let end = log.log_end_offset();
                    let outcome = log.enforce_retention(now_ms, end).expect("retention");
                    log.set_config(config.clone());
                    prop_assert_eq!(outcome.log_start_offset, log.log_start_offset());
                    prop_assert!(
                        log.log_start_offset() == end || boundaries.contains(&log.log_start_offset()),
                        "log start {} is a batch boundary", log.log_start_offset()
                    );
                    check_reads(&log, &expected, max_read_bytes)?;
                }
            }
        }
        check_reads(&log, &expected, max_read_bytes)?;
        drop(log);
        let log = Log::open(dir.path(), config).expect("final reopen");
        check_reads(&log, &expected, max_read_bytes)?;
        let kept = &expected[log.log_start_offset().0 as usize..];
        for (i, record) in kept.iter().enumerate() {
            let found = log.offset_for_timestamp(record.timestamp_ms).expect("lookup");
            let first = kept
                .iter()
                .find(|r| r.timestamp_ms >= record.timestamp_ms)
                .map(|r| r.offset);
            prop_assert_eq!(found, first, "timestamp of record {}", i);
        }
    }
}
