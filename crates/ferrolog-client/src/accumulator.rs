//! The producer's record accumulator: open batches per topic-partition, and the decision of
//! when a batch is complete.
//!
//! A batch is sealed (moved to the ready queue for the sender task) when the next record would
//! push it past `batch_size_bytes`, when it reaches that size, when `linger_ms` has passed since
//! its first record, or on `flush`/`close`. Everything here is synchronous and free of I/O so
//! that the batching rules can be unit tested; the producer wraps it in a mutex.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferrolog_log::{Header, RecordBatchBuilder};
use ferrolog_proto::v1::ErrorCode;
use rand::Rng;

use crate::delivery::{BatchCompletion, DeliveryFuture};
use crate::error::{ClientError, Result};
use crate::metadata::unknown_partition;
use crate::partitioner::{StickyPartitioner, partition_for_key};

/// Upper bound on a record's framing inside a batch: length, attributes, timestamp delta,
/// offset delta, key and value lengths and header count, all varints.
const RECORD_OVERHEAD_BYTES: usize = 40;
/// Upper bound on one header's framing (key and value length varints).
const HEADER_OVERHEAD_BYTES: usize = 10;
/// Initial buffer of a partition's first batch; it grows as records arrive, up to
/// `batch_size_bytes`. Later batches start at the size the one before reached (see
/// `batch_capacity`).
const INITIAL_BATCH_CAPACITY_BYTES: usize = 16 * 1024;

/// Bytes a record takes in a batch, rounded up; also what it holds of `buffer_memory_bytes`.
pub(crate) fn estimate_record_bytes(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[Header],
) -> usize {
    let headers_bytes: usize = headers
        .iter()
        .map(|h| HEADER_OVERHEAD_BYTES + h.key.len() + h.value.as_ref().map_or(0, |v| v.len()))
        .sum();
    RECORD_OVERHEAD_BYTES
        + key.map_or(0, <[u8]>::len)
        + value.map_or(0, <[u8]>::len)
        + headers_bytes
}

/// A record on its way into a batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PendingRecord<'a> {
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) value: Option<&'a [u8]>,
    pub(crate) headers: &'a [Header],
    pub(crate) timestamp_ms: i64,
    pub(crate) estimate_bytes: usize,
}

/// A sealed batch waiting for, or in, a produce request.
#[derive(Debug)]
pub(crate) struct ReadyBatch {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: u32,
    /// Creation order across the producer; within a partition it is also send order.
    pub(crate) seq: u64,
    pub(crate) records: Bytes,
    pub(crate) record_count: u32,
    pub(crate) completion: Arc<BatchCompletion>,
    pub(crate) created_at: Instant,
    /// Buffer memory to give back once the batch is done.
    pub(crate) reserved_bytes: usize,
    /// Produce attempts that failed with a retriable error so far.
    pub(crate) attempts: u32,
    /// The idempotent producer's epoch and base sequence stamped on the batch when it was
    /// first sent; a retry resends the same, so the leader recognises it.
    pub(crate) producer_stamp: Option<(i16, i32)>,
    pub(crate) last_error: Option<ClientError>,
}

struct OpenBatch {
    builder: RecordBatchBuilder,
    completion: Arc<BatchCompletion>,
    seq: u64,
    created_at: Instant,
    reserved_bytes: usize,
}

impl std::fmt::Debug for OpenBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenBatch")
            .field("records", &self.builder.record_count())
            .field("size_bytes", &self.builder.size_bytes())
            .field("seq", &self.seq)
            .field("created_at", &self.created_at)
            .field("reserved_bytes", &self.reserved_bytes)
            .finish_non_exhaustive()
    }
}

/// The accumulator's view of one topic.
#[derive(Debug)]
struct TopicBatches {
    name: Arc<str>,
    partition_count: u32,
    /// `Cluster::generation` when `partition_count` was last taken from metadata.
    metadata_generation: u64,
    sticky: StickyPartitioner,
    open: Vec<Option<OpenBatch>>,
    /// Per partition, the size its last sealed batch reached: where the next one's buffer
    /// starts, so that a busy partition's batches do not grow by doubling, each doubling a
    /// copy of everything so far (about one extra copy of every full batch).
    last_sealed_bytes: Vec<usize>,
}

impl TopicBatches {
    /// Takes the open batch of `partition` (which must hold one) and seals it.
    fn seal_open(&mut self, partition: u32) -> ReadyBatch {
        let batch = self.open[partition as usize]
            .take()
            .expect("the caller saw the slot holding a batch");
        self.last_sealed_bytes[partition as usize] = batch.builder.size_bytes();
        seal(Arc::clone(&self.name), partition, batch)
    }
}

/// What `append` did, so the caller knows whether to wake the sender.
#[derive(Debug)]
pub(crate) struct Appended {
    pub(crate) future: DeliveryFuture,
    /// A batch was started: the sender must schedule its linger deadline.
    pub(crate) opened_batch: bool,
    /// A batch became ready to send.
    pub(crate) sealed_batch: bool,
}

/// Open batches of every topic-partition plus the queue of sealed ones.
#[derive(Debug)]
pub(crate) struct Accumulator {
    topics: HashMap<Arc<str>, TopicBatches>,
    ready: VecDeque<ReadyBatch>,
    next_batch_seq: u64,
    /// Batches created and not yet completed, by `seq`; `flush` waits for its minimum.
    incomplete: BTreeSet<u64>,
    linger: Duration,
    batch_size_bytes: usize,
    open_batch_count: usize,
}

impl Accumulator {
    pub(crate) fn new(linger: Duration, batch_size_bytes: usize) -> Self {
        Self {
            topics: HashMap::new(),
            ready: VecDeque::new(),
            next_batch_seq: 0,
            incomplete: BTreeSet::new(),
            linger,
            batch_size_bytes: batch_size_bytes.max(1),
            open_batch_count: 0,
        }
    }

    /// The topic's partition count as the accumulator knows it; `None` if the topic was never
    /// seen. `current_generation` lets the caller skip the metadata lookup in `refreshed`
    /// unless metadata changed since the count was taken.
    pub(crate) fn partition_count(
        &mut self,
        topic: &str,
        current_generation: u64,
        refreshed: impl FnOnce() -> Option<u32>,
    ) -> Option<u32> {
        let state = self.topics.get_mut(topic)?;
        if state.metadata_generation != current_generation {
            state.metadata_generation = current_generation;
            // Partitions are only ever added; a topic missing from newer metadata (deleted)
            // keeps its count and the broker answers UNKNOWN_TOPIC.
            if let Some(count) = refreshed().filter(|c| *c > state.partition_count) {
                state.partition_count = count;
                state.open.resize_with(count as usize, || None);
                state.last_sealed_bytes.resize(count as usize, 0);
            }
        }
        Some(state.partition_count)
    }

    /// Starts tracking `topic` with the partition count metadata reported.
    pub(crate) fn add_topic(&mut self, topic: &str, partition_count: u32, generation: u64) {
        if self.topics.contains_key(topic) {
            return;
        }
        let name: Arc<str> = Arc::from(topic);
        let mut open = Vec::new();
        open.resize_with(partition_count as usize, || None);
        self.topics.insert(
            Arc::clone(&name),
            TopicBatches {
                name,
                partition_count,
                metadata_generation: generation,
                sticky: StickyPartitioner::default(),
                open,
                last_sealed_bytes: vec![0; partition_count as usize],
            },
        );
    }

    /// The partition for a record: the explicit one (checked), the key's hash, or the
    /// topic's sticky partition. The topic must have been added.
    pub(crate) fn choose_partition(
        &mut self,
        topic: &str,
        explicit: Option<u32>,
        key: Option<&[u8]>,
        estimate_bytes: usize,
        rng: &mut impl Rng,
    ) -> Result<u32> {
        let batch_size_bytes = self.batch_size_bytes;
        let Some(state) = self.topics.get_mut(topic) else {
            return Err(ClientError::server(
                ErrorCode::UnknownTopic,
                crate::metadata::unknown_topic(topic),
            ));
        };
        let count = state.partition_count;
        if count == 0 {
            return Err(unknown_partition(topic, explicit.unwrap_or(0), 0));
        }
        if let Some(partition) = explicit {
            return if partition < count {
                Ok(partition)
            } else {
                Err(unknown_partition(topic, partition, count))
            };
        }
        if let Some(key) = key {
            return Ok(partition_for_key(key, count));
        }
        let sticky = state.sticky.partition(count, rng);
        match &state.open[sticky as usize] {
            Some(open) if fits(&open.builder, estimate_bytes, batch_size_bytes) => Ok(sticky),
            Some(_) => {
                // The sticky batch is as full as it gets: send it now rather than at linger
                // expiry, and move on.
                self.ready.push_back(state.seal_open(sticky));
                self.open_batch_count -= 1;
                Ok(state.sticky.on_new_batch(sticky, count, rng))
            }
            None => Ok(state.sticky.on_new_batch(sticky, count, rng)),
        }
    }

    /// Appends a record to the partition's open batch, sealing and starting batches as the
    /// size rules say. `reserved_bytes` of buffer memory now belong to the batch.
    pub(crate) fn append(
        &mut self,
        topic: &str,
        partition: u32,
        record: PendingRecord<'_>,
    ) -> Result<Appended> {
        let batch_size_bytes = self.batch_size_bytes;
        let Some(state) = self.topics.get_mut(topic) else {
            return Err(ClientError::server(
                ErrorCode::UnknownTopic,
                crate::metadata::unknown_topic(topic),
            ));
        };
        let Some(slot) = state.open.get(partition as usize) else {
            return Err(unknown_partition(topic, partition, state.partition_count));
        };
        let mut sealed_batch = false;
        if slot
            .as_ref()
            .is_some_and(|open| !fits(&open.builder, record.estimate_bytes, batch_size_bytes))
        {
            self.ready.push_back(state.seal_open(partition));
            self.open_batch_count -= 1;
            sealed_batch = true;
        }
        let capacity = batch_capacity(
            state.last_sealed_bytes[partition as usize],
            batch_size_bytes,
        );
        let mut opened_batch = false;
        let open = match &mut state.open[partition as usize] {
            Some(open) => open,
            slot @ None => {
                let seq = self.next_batch_seq;
                self.next_batch_seq += 1;
                self.incomplete.insert(seq);
                self.open_batch_count += 1;
                opened_batch = true;
                slot.insert(OpenBatch {
                    builder: RecordBatchBuilder::with_capacity(record.timestamp_ms, capacity),
                    completion: BatchCompletion::new(Arc::clone(&state.name), partition),
                    seq,
                    created_at: Instant::now(),
                    reserved_bytes: 0,
                })
            }
        };
        let index = open.builder.record_count();
        open.builder.push(
            record.timestamp_ms,
            record.key,
            record.value,
            record.headers,
        );
        open.reserved_bytes += record.estimate_bytes;
        let future =
            DeliveryFuture::pending(Arc::clone(&open.completion), index, record.timestamp_ms);
        if open.builder.size_bytes() >= batch_size_bytes {
            self.ready.push_back(state.seal_open(partition));
            self.open_batch_count -= 1;
            sealed_batch = true;
        }
        // `choose_partition` may have sealed the sticky batch too.
        sealed_batch |= !self.ready.is_empty();
        Ok(Appended {
            future,
            opened_batch,
            sealed_batch,
        })
    }

    /// Seals every batch whose linger time has passed; returns when the next one will.
    pub(crate) fn seal_expired(&mut self, now: Instant) -> Option<Instant> {
        if self.open_batch_count == 0 {
            return None;
        }
        let mut next_deadline: Option<Instant> = None;
        for state in self.topics.values_mut() {
            for partition in 0..state.open.len() {
                let Some(open) = &state.open[partition] else {
                    continue;
                };
                let deadline = open.created_at + self.linger;
                if deadline <= now {
                    self.ready.push_back(state.seal_open(partition as u32));
                    self.open_batch_count -= 1;
                } else {
                    next_deadline = Some(next_deadline.map_or(deadline, |d| d.min(deadline)));
                }
            }
        }
        next_deadline
    }

    /// Seals every open batch, for `flush` and `close`.
    pub(crate) fn seal_all(&mut self) {
        if self.open_batch_count == 0 {
            return;
        }
        for state in self.topics.values_mut() {
            for partition in 0..state.open.len() {
                if state.open[partition].is_some() {
                    self.ready.push_back(state.seal_open(partition as u32));
                }
            }
        }
        self.open_batch_count = 0;
    }

    /// Takes the sealed batches, oldest first.
    pub(crate) fn drain_ready(&mut self) -> std::collections::vec_deque::Drain<'_, ReadyBatch> {
        self.ready.drain(..)
    }

    /// Whether nothing is open or waiting to be handed to the sender.
    pub(crate) fn is_idle(&self) -> bool {
        self.open_batch_count == 0 && self.ready.is_empty()
    }

    /// The `seq` the next batch will get; `flush` waits until every earlier one completed.
    pub(crate) fn next_batch_seq(&self) -> u64 {
        self.next_batch_seq
    }

    /// Records that batch `seq` is done and returns the new low watermark: every batch below
    /// it is complete.
    pub(crate) fn complete_batch(&mut self, seq: u64) -> u64 {
        self.incomplete.remove(&seq);
        self.low_watermark()
    }

    pub(crate) fn low_watermark(&self) -> u64 {
        self.incomplete
            .first()
            .copied()
            .unwrap_or(self.next_batch_seq)
    }
}

fn fits(builder: &RecordBatchBuilder, estimate_bytes: usize, batch_size_bytes: usize) -> bool {
    // An empty batch takes any record, so a record larger than the batch size still goes out
    // (alone), as in Kafka.
    builder.is_empty() || builder.size_bytes() + estimate_bytes <= batch_size_bytes
}

/// The buffer a partition's new batch starts with, from the size its last batch reached
/// (0 for none yet). A partition that filled half a batch or more last time most likely
/// fills this one too: its buffer starts whole and never reallocates. One that is sealed
/// small after all is copied out (`shrunk`), so it does not keep the whole buffer.
fn batch_capacity(last_sealed_bytes: usize, batch_size_bytes: usize) -> usize {
    if last_sealed_bytes.saturating_mul(2) >= batch_size_bytes {
        batch_size_bytes
    } else {
        last_sealed_bytes
            .max(INITIAL_BATCH_CAPACITY_BYTES)
            .min(batch_size_bytes)
    }
}

/// A sealed batch's bytes. A buffer far larger than what it holds (a batch that started
/// whole and was sealed early by linger or flush) is copied out, so the batch does not
/// hold a full batch's memory until it is acknowledged.
fn shrunk(records: bytes::BytesMut) -> Bytes {
    if records.capacity() > 4 * records.len() {
        Bytes::copy_from_slice(&records)
    } else {
        records.freeze()
    }
}

fn seal(topic: Arc<str>, partition: u32, batch: OpenBatch) -> ReadyBatch {
    let record_count = batch.builder.record_count();
    ReadyBatch {
        topic,
        partition,
        seq: batch.seq,
        records: shrunk(batch.builder.build()),
        record_count,
        completion: batch.completion,
        created_at: batch.created_at,
        reserved_bytes: batch.reserved_bytes,
        attempts: 0,
        producer_stamp: None,
        last_error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn record(value: &[u8]) -> PendingRecord<'_> {
        PendingRecord {
            key: None,
            value: Some(value),
            headers: &[],
            timestamp_ms: 1_000,
            estimate_bytes: estimate_record_bytes(None, Some(value), &[]),
        }
    }

    fn accumulator(linger_ms: u64, batch_size_bytes: usize) -> Accumulator {
        let mut acc = Accumulator::new(Duration::from_millis(linger_ms), batch_size_bytes);
        acc.add_topic("t", 4, 0);
        acc
    }

    #[test]
    fn a_partition_that_filled_its_last_batch_starts_the_next_one_whole() {
        let batch_size = 64 * 1024;
        // First batch of a partition, or one that stayed small: a small buffer.
        assert_eq!(batch_capacity(0, batch_size), INITIAL_BATCH_CAPACITY_BYTES);
        assert_eq!(batch_capacity(20_000, batch_size), 20_000);
        // Half full or more last time: the whole batch size at once.
        assert_eq!(batch_capacity(batch_size / 2, batch_size), batch_size);
        assert_eq!(batch_capacity(batch_size, batch_size), batch_size);
        // Never above the batch size, even after a lone oversized record.
        assert_eq!(batch_capacity(10 * batch_size, batch_size), batch_size);
        assert_eq!(batch_capacity(0, 1000), 1000);

        let mut acc = accumulator(5, batch_size);
        let mut sealed = 0;
        while sealed == 0 {
            acc.append("t", 2, record(&[7; 1000]))
                .expect("topic exists");
            sealed = acc.drain_ready().count();
        }
        let remembered = acc.topics["t"].last_sealed_bytes[2];
        assert!(remembered >= batch_size - 1100 && remembered <= batch_size);
        assert_eq!(acc.topics["t"].last_sealed_bytes[1], 0);
    }

    #[test]
    fn given_records_below_batch_size_then_nothing_is_ready_until_linger_expires() {
        let mut acc = accumulator(5, 1 << 20);
        let appended = acc.append("t", 0, record(&[7; 100])).expect("topic exists");
        assert!(appended.opened_batch && !appended.sealed_batch);
        for _ in 0..9 {
            let appended = acc.append("t", 0, record(&[7; 100])).expect("topic exists");
            assert!(!appended.opened_batch && !appended.sealed_batch);
        }
        let next = acc.seal_expired(Instant::now()).expect("one batch is open");
        assert_eq!(acc.drain_ready().count(), 0);
        assert_eq!(acc.seal_expired(next), None);
        let ready: Vec<_> = acc.drain_ready().collect();
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].record_count, 10);
        assert_eq!(ready[0].reserved_bytes, 10 * (100 + RECORD_OVERHEAD_BYTES));
        let decoded = ferrolog_log::decode_records(&ready[0].records).expect("valid batch");
        assert_eq!(decoded.len(), 10);
        assert!(acc.is_idle());
    }

    #[test]
    fn given_batch_size_reached_then_batch_is_sealed_at_once_and_next_one_starts() {
        let mut acc = accumulator(60_000, 4 * 1024);
        let mut first_sealed_at = None;
        for i in 0..100 {
            let appended = acc.append("t", 1, record(&[1; 100])).expect("topic exists");
            if appended.sealed_batch && first_sealed_at.is_none() {
                first_sealed_at = Some(i);
            }
        }
        // 4 KiB holds about 29 records of ~140 bytes; the 30th or so seals the first batch.
        let first_sealed_at = first_sealed_at.expect("a batch was sealed");
        assert!((20..40).contains(&first_sealed_at), "{first_sealed_at}");
        let ready: Vec<_> = acc.drain_ready().collect();
        assert!(ready.len() >= 2, "{}", ready.len());
        for batch in &ready {
            assert!(batch.records.len() <= 4 * 1024, "{}", batch.records.len());
        }
        let seqs: Vec<u64> = ready.iter().map(|b| b.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        acc.seal_all();
        let rest: u32 = acc.drain_ready().map(|b| b.record_count).sum();
        assert_eq!(
            ready.iter().map(|b| b.record_count).sum::<u32>() + rest,
            100
        );
    }

    #[test]
    fn given_record_larger_than_batch_size_then_it_goes_alone() {
        let mut acc = accumulator(60_000, 1024);
        acc.append("t", 0, record(&[1; 10])).expect("topic exists");
        let appended = acc
            .append("t", 0, record(&[2; 4096]))
            .expect("topic exists");
        assert!(appended.sealed_batch);
        let ready: Vec<_> = acc.drain_ready().collect();
        assert_eq!(
            ready.iter().map(|b| b.record_count).collect::<Vec<_>>(),
            [1, 1]
        );
    }

    #[test]
    fn record_index_in_batch_gives_its_offset() {
        let mut acc = accumulator(60_000, 1 << 20);
        let futures: Vec<_> = (0..3)
            .map(|_| {
                acc.append("t", 2, record(b"v"))
                    .expect("topic exists")
                    .future
            })
            .collect();
        acc.seal_all();
        let batch = acc.drain_ready().next().expect("one batch");
        batch.completion.complete(Ok(40));
        let offsets: Vec<i64> = futures
            .into_iter()
            .map(|f| {
                futures::FutureExt::now_or_never(f)
                    .expect("done")
                    .expect("ok")
                    .offset
            })
            .collect();
        assert_eq!(offsets, [40, 41, 42]);
    }

    #[test]
    fn low_watermark_tracks_the_oldest_incomplete_batch() {
        let mut acc = accumulator(60_000, 1 << 20);
        assert_eq!(acc.low_watermark(), 0);
        acc.append("t", 0, record(b"a")).expect("topic exists");
        acc.append("t", 1, record(b"b")).expect("topic exists");
        acc.seal_all();
        let target = acc.next_batch_seq();
        assert_eq!(target, 2);
        assert_eq!(acc.complete_batch(1), 0);
        assert_eq!(acc.complete_batch(0), 2);
    }

    #[test]
    fn explicit_partition_out_of_range_names_the_valid_range() {
        let mut acc = accumulator(5, 1 << 20);
        let mut rng = StdRng::seed_from_u64(1);
        let error = acc
            .choose_partition("t", Some(9), None, 10, &mut rng)
            .expect_err("partition 9 of 4 does not exist");
        assert_eq!(error.code(), Some(ErrorCode::UnknownPartition));
        assert!(
            error.to_string().contains("valid partitions are 0..=3"),
            "{error}"
        );
        assert_eq!(
            acc.choose_partition("t", Some(3), Some(b"k"), 10, &mut rng),
            Ok(3)
        );
    }

    #[test]
    fn keyed_records_use_murmur2_and_keyless_stick_until_a_batch_is_sealed() {
        let mut acc = accumulator(60_000, 2 * 1024);
        let mut rng = StdRng::seed_from_u64(9);
        assert_eq!(
            acc.choose_partition("t", None, Some(b"abc"), 10, &mut rng),
            Ok(partition_for_key(b"abc", 4))
        );
        let value = [0u8; 100];
        let estimate = estimate_record_bytes(None, Some(&value), &[]);
        let mut partitions = Vec::new();
        for _ in 0..200 {
            let p = acc
                .choose_partition("t", None, None, estimate, &mut rng)
                .expect("ok");
            acc.append("t", p, record(&value)).expect("topic exists");
            partitions.push(p);
        }
        // Consecutive keyless records share a partition until that batch fills up.
        let switches = partitions.windows(2).filter(|w| w[0] != w[1]).count();
        let sealed = acc.drain_ready().count();
        assert!(
            switches >= 1 && switches <= sealed + 1,
            "{switches} switches, {sealed} sealed"
        );
        let distinct: BTreeSet<u32> = partitions.iter().copied().collect();
        assert!(distinct.len() > 1, "{distinct:?}");
    }

    #[test]
    fn partition_count_grows_when_metadata_generation_changes() {
        let mut acc = accumulator(5, 1 << 20);
        assert_eq!(
            acc.partition_count("t", 0, || panic!("same generation")),
            Some(4)
        );
        assert_eq!(acc.partition_count("t", 1, || Some(6)), Some(6));
        assert_eq!(
            acc.partition_count("t", 2, || Some(2)),
            Some(6),
            "never shrinks"
        );
        assert_eq!(acc.partition_count("other", 2, || Some(1)), None);
        acc.append("t", 5, record(b"x"))
            .expect("partition 5 exists now");
    }
}
