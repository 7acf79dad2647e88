//! The producer state is a function of the log: random sends (new batches, retries, gaps,
//! old and new epochs), restarts (with and without a flush) and truncations, checked after
//! every step against a model that recomputes each verdict from the batches in the log.

mod common;

use bytes::BytesMut;
use ferrolog_log::{LeaderEpoch, Log, LogConfig, LogError, Offset, RecordBatchBuilder};
use proptest::prelude::*;

const T0_MS: i64 = 1_700_000_000_000;
const PRODUCERS: usize = 3;
/// Where each producer's sequence starts: the third one wraps at i32::MAX soon.
const FIRST_SEQUENCE: [i32; PRODUCERS] = [0, 1_000, i32::MAX - 6];

#[derive(Clone, Debug)]
enum Op {
    /// The next batch of `count` records, continuing the log's sequence for the producer.
    Next {
        producer: usize,
        count: i32,
    },
    /// A resend of the producer's `back`-th most recent batch ever sent.
    Retry {
        producer: usize,
        back: usize,
    },
    /// A batch that skips one sequence number.
    Gap {
        producer: usize,
    },
    /// A batch from the epoch before the producer's current one.
    OldEpoch {
        producer: usize,
    },
    /// A new epoch, starting at sequence 0 (or, if `wrong_start`, at 1).
    Bump {
        producer: usize,
        wrong_start: bool,
    },
    /// A batch with no producer id.
    Plain,
    Reopen {
        flush: bool,
    },
    /// Truncates to the base offset of the `back`-th most recent batch in the log.
    Truncate {
        back: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let producer = 0..PRODUCERS;
    prop_oneof![
        8 => (producer.clone(), 1..4i32).prop_map(|(producer, count)| Op::Next { producer, count }),
        4 => (producer.clone(), 0..8usize).prop_map(|(producer, back)| Op::Retry { producer, back }),
        1 => producer.clone().prop_map(|producer| Op::Gap { producer }),
        1 => producer.clone().prop_map(|producer| Op::OldEpoch { producer }),
        1 => (producer, any::<bool>())
            .prop_map(|(producer, wrong_start)| Op::Bump { producer, wrong_start }),
        1 => Just(Op::Plain),
        1 => any::<bool>().prop_map(|flush| Op::Reopen { flush }),
        1 => (0..12usize).prop_map(|back| Op::Truncate { back }),
    ]
}

/// An idempotent batch in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stored {
    producer: i64,
    epoch: i16,
    first_seq: i32,
    last_seq: i32,
    base: Offset,
    last: Offset,
}

/// What the log must answer to a send.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Appended,
    Duplicate(Offset, Offset),
    Fenced,
    OutOfOrder { expected: i32 },
}

fn next_seq(seq: i32, by: i32) -> i32 {
    if seq > i32::MAX - by {
        by - (i32::MAX - seq) - 1
    } else {
        seq + by
    }
}

/// The model: everything in the log, in order (batches without a producer id are only
/// offsets), and every batch each producer ever sent, for retries.
#[derive(Default)]
struct Model {
    log: Vec<Option<Stored>>,
    /// Base offsets of every batch in the log, in order.
    bases: Vec<Offset>,
    sent: [Vec<(i16, i32, i32)>; PRODUCERS],
    epoch: [i16; PRODUCERS],
}

impl Model {
    /// The producer's cached batches: its trailing batches of its latest epoch, at most 5.
    fn cached(&self, producer: i64) -> Vec<Stored> {
        let mine: Vec<Stored> = self
            .log
            .iter()
            .flatten()
            .filter(|s| s.producer == producer)
            .copied()
            .collect();
        let Some(last) = mine.last() else {
            return Vec::new();
        };
        let same_epoch: Vec<Stored> = mine
            .iter()
            .rev()
            .take_while(|s| s.epoch == last.epoch)
            .take(5)
            .copied()
            .collect();
        same_epoch.into_iter().rev().collect()
    }

    fn verdict(&self, producer: i64, epoch: i16, first_seq: i32, last_seq: i32) -> Verdict {
        let cached = self.cached(producer);
        let Some(last) = cached.last() else {
            return Verdict::Appended;
        };
        if epoch < last.epoch {
            return Verdict::Fenced;
        }
        if epoch > last.epoch {
            return if first_seq == 0 {
                Verdict::Appended
            } else {
                Verdict::OutOfOrder { expected: 0 }
            };
        }
        if let Some(hit) = cached
            .iter()
            .find(|s| s.first_seq == first_seq && s.last_seq == last_seq)
        {
            return Verdict::Duplicate(hit.base, hit.last);
        }
        let expected = next_seq(last.last_seq, 1);
        if expected == first_seq {
            Verdict::Appended
        } else {
            Verdict::OutOfOrder { expected }
        }
    }

    /// The sequence the producer's next batch in `epoch` continues from.
    fn continuation(&self, producer: usize, epoch: i16) -> i32 {
        match self.cached(producer as i64).last() {
            Some(last) if last.epoch == epoch => next_seq(last.last_seq, 1),
            Some(_) => 0,
            None if epoch == 0 => FIRST_SEQUENCE[producer],
            None => 0,
        }
    }
}

fn batch(producer: i64, epoch: i16, first_seq: i32, count: i32) -> BytesMut {
    let mut builder = RecordBatchBuilder::new(T0_MS).with_producer(producer, epoch, first_seq);
    for i in 0..count {
        builder.push(T0_MS, Some(&i.to_be_bytes()), Some(&[0u8; 80]), &[]);
    }
    builder.build()
}

fn send(
    log: &mut Log,
    model: &mut Model,
    producer: usize,
    epoch: i16,
    first_seq: i32,
    count: i32,
) -> Result<(), TestCaseError> {
    let id = producer as i64;
    let last_seq = next_seq(first_seq, count - 1);
    let expected = model.verdict(id, epoch, first_seq, last_seq);
    let answer = log.append_batch(
        &mut batch(id, epoch, first_seq, count),
        LeaderEpoch(1),
        T0_MS,
    );
    let got = match answer {
        Ok(info) if info.duplicate => Verdict::Duplicate(info.base_offset, info.last_offset),
        Ok(info) => {
            let stored = Stored {
                producer: id,
                epoch,
                first_seq,
                last_seq,
                base: info.base_offset,
                last: info.last_offset,
            };
            model.log.push(Some(stored));
            model.bases.push(info.base_offset);
            model.sent[producer].push((epoch, first_seq, count));
            Verdict::Appended
        }
        Err(LogError::ProducerFenced { .. }) => Verdict::Fenced,
        Err(LogError::OutOfOrderSequence { expected, .. }) => Verdict::OutOfOrder { expected },
        Err(other) => return Err(TestCaseError::fail(format!("unexpected error {other}"))),
    };
    prop_assert_eq!(
        got,
        expected,
        "producer {} epoch {} seq {}",
        producer,
        epoch,
        first_seq
    );
    Ok(())
}

fn check_listing(log: &Log, model: &Model) -> Result<(), TestCaseError> {
    let expected: Vec<(i64, i16, i32, Offset, Offset)> = (0..PRODUCERS as i64)
        .filter_map(|p| {
            let last = *model.cached(p).last()?;
            Some((p, last.epoch, last.last_seq, last.base, last.last))
        })
        .collect();
    let listed: Vec<(i64, i16, i32, Offset, Offset)> = log
        .producers()
        .iter()
        .map(|e| {
            (
                e.producer_id,
                e.producer_epoch,
                e.last_sequence,
                e.first_offset,
                e.last_offset,
            )
        })
        .collect();
    prop_assert_eq!(listed, expected);
    Ok(())
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        index_interval_bytes: 128,
        retention_ms: None,
        ..LogConfig::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_producer_state_always_matches_a_model_computed_from_the_log(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = Log::open(dir.path(), config()).expect("opens");
        let mut model = Model::default();
        for op in ops {
            match op {
                Op::Next { producer, count } => {
                    let epoch = model.epoch[producer];
                    let seq = model.continuation(producer, epoch);
                    send(&mut log, &mut model, producer, epoch, seq, count)?;
                }
                Op::Retry { producer, back } => {
                    let sent = &model.sent[producer];
                    if let Some(&(epoch, seq, count)) = sent.iter().rev().nth(back) {
                        send(&mut log, &mut model, producer, epoch, seq, count)?;
                    }
                }
                Op::Gap { producer } => {
                    let epoch = model.epoch[producer];
                    let seq = next_seq(model.continuation(producer, epoch), 1);
                    send(&mut log, &mut model, producer, epoch, seq, 1)?;
                }
                Op::OldEpoch { producer } => {
                    if model.epoch[producer] > 0 {
                        let epoch = model.epoch[producer] - 1;
                        let seq = model.continuation(producer, epoch);
                        send(&mut log, &mut model, producer, epoch, seq, 1)?;
                    }
                }
                Op::Bump { producer, wrong_start } => {
                    model.epoch[producer] += 1;
                    let epoch = model.epoch[producer];
                    send(&mut log, &mut model, producer, epoch, i32::from(wrong_start), 1)?;
                }
                Op::Plain => {
                    let info = log
                        .append_batch(&mut batch(-1, -1, -1, 1), LeaderEpoch(1), T0_MS)
                        .expect("a plain batch appends");
                    model.log.push(None);
                    model.bases.push(info.base_offset);
                }
                Op::Reopen { flush } => {
                    if flush {
                        log.flush().expect("flushes");
                    }
                    drop(log);
                    log = Log::open(dir.path(), config()).expect("reopens");
                }
                Op::Truncate { back } => {
                    if back < model.bases.len() {
                        let keep = model.bases.len() - 1 - back;
                        log.truncate_to(model.bases[keep]).expect("truncates");
                        model.bases.truncate(keep);
                        model.log.truncate(keep);
                    }
                }
            }
            check_listing(&log, &model)?;
        }
    }
}
