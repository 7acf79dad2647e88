//! A consumer of explicitly assigned partitions.
//!
//! `poll` long-polls every assigned partition's leader at once, in the raw RecordBatch v2
//! format, and returns as soon as any partition has records. Positions only advance when
//! `poll` returns records, so an error never loses records: the next `poll` fetches them
//! again. Leader moves and unreachable brokers are retried (after a metadata refresh, with
//! backoff) without surfacing; errors that need the caller's decision, such as
//! `OFFSET_OUT_OF_RANGE` (the position was deleted by retention, or lies past the end), are
//! returned, and the caller can [`Consumer::seek`].
//!
//! Transactions: every fetch carries the configured [`IsolationLevel`]. With read_committed
//! the broker leaves out aborted records and stops at the last stable offset, so the client
//! keeps no aborted-transaction list. Control batches (transaction markers) are skipped at
//! both levels: they are never records. A fetch may therefore move the position without
//! returning anything (everything in its range was filtered); `poll` applies that progress
//! and keeps fetching until records come or its wait is over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferrolog_log::{BatchIter, decode_records};
use ferrolog_proto::v1::client_service_client::ClientServiceClient;
use ferrolog_proto::v1::{FetchFormat, FetchRequest, FetchResponse};
use futures::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};

use crate::admin::{OffsetQuery, list_offsets};
use crate::config::{ConsumerConfig, IsolationLevel};
use crate::connection::call;
use crate::error::{ClientError, Result};
use crate::metadata::{Cluster, unknown_partition};
use crate::record::{ConsumedRecord, Header};
use ferrolog_proto::retry::Backoff;

/// Where an assigned partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOffset {
    /// The first retained record.
    Earliest,
    /// Only records produced after the assignment.
    Latest,
    /// This exact offset.
    Offset(i64),
}

/// Room for a fetch answer beyond the requested `max_bytes`: the server returns at least one
/// whole batch even when it is larger (Kafka's KIP-74), up to a topic's `max.message.bytes`.
const FETCH_DECODE_SLACK_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug)]
struct Assignment {
    topic: Arc<str>,
    partition: u32,
    /// Offset of the next record to return.
    position: i64,
    /// Failed fetch attempts in a row; drives the backoff.
    attempts: u32,
    retry_after: Option<Instant>,
    /// When the current run of failures began; bounds how long they are retried.
    failing_since: Option<Instant>,
}

/// Reads records from assigned partitions. Not `Clone`: positions belong to one reader.
#[derive(Debug)]
pub struct Consumer {
    cluster: Cluster,
    config: ConsumerConfig,
    backoff: Backoff,
    assignments: Vec<Assignment>,
}

/// What one partition's fetch yielded, applied only if the whole poll succeeds.
struct Fetched {
    index: usize,
    next_position: i64,
    records: Vec<ConsumedRecord>,
}

impl Consumer {
    /// Connects to the cluster, fetching its metadata once so a bad address fails here.
    pub async fn connect(config: ConsumerConfig) -> Result<Consumer> {
        let cluster = Cluster::connect(config.client.clone()).await?;
        let backoff = Backoff::from_millis(
            config.client.retry_backoff_ms,
            config.client.retry_backoff_max_ms,
        );
        Ok(Consumer {
            cluster,
            config,
            backoff,
            assignments: Vec::new(),
        })
    }

    /// Adds a partition to read (or moves an assigned one to `start`). `Earliest` and
    /// `Latest` are resolved now, at the leader, so `Latest` means "after this call".
    #[tracing::instrument(skip(self))]
    pub async fn assign(&mut self, topic: &str, partition: u32, start: StartOffset) -> Result<()> {
        let info = self.cluster.topic(topic).await?;
        if partition >= info.partition_count() {
            return Err(unknown_partition(topic, partition, info.partition_count()));
        }
        let position = match start {
            StartOffset::Offset(offset) if offset < 0 => {
                return Err(ClientError::InvalidArgument(format!(
                    "start offset {offset} is negative"
                )));
            }
            StartOffset::Offset(offset) => offset,
            StartOffset::Earliest => {
                list_offsets(&self.cluster, topic, partition, OffsetQuery::Earliest)
                    .await?
                    .offset
            }
            StartOffset::Latest => {
                list_offsets(&self.cluster, topic, partition, OffsetQuery::Latest)
                    .await?
                    .offset
            }
        };
        match self.find_mut(topic, partition) {
            Some(assignment) => {
                assignment.position = position;
                assignment.attempts = 0;
                assignment.retry_after = None;
                assignment.failing_since = None;
            }
            None => self.assignments.push(Assignment {
                topic: Arc::from(topic),
                partition,
                position,
                attempts: 0,
                retry_after: None,
                failing_since: None,
            }),
        }
        Ok(())
    }

    /// Stops reading a partition; returns whether it was assigned.
    pub fn unassign(&mut self, topic: &str, partition: u32) -> bool {
        let before = self.assignments.len();
        self.assignments
            .retain(|a| !(&*a.topic == topic && a.partition == partition));
        self.assignments.len() != before
    }

    /// Moves an assigned partition to `offset`, e.g. after `OFFSET_OUT_OF_RANGE`.
    pub fn seek(&mut self, topic: &str, partition: u32, offset: i64) -> Result<()> {
        if offset < 0 {
            return Err(ClientError::InvalidArgument(format!(
                "offset {offset} is negative"
            )));
        }
        let assignment = self.find_mut(topic, partition).ok_or_else(|| {
            ClientError::InvalidArgument(format!("{topic}-{partition} is not assigned"))
        })?;
        assignment.position = offset;
        Ok(())
    }

    /// The offset of the next record `poll` returns for the partition, if assigned.
    pub fn position(&self, topic: &str, partition: u32) -> Option<i64> {
        self.assignments
            .iter()
            .find(|a| &*a.topic == topic && a.partition == partition)
            .map(|a| a.position)
    }

    /// Returns the next records of the assigned partitions, waiting up to `max_wait` for
    /// some to arrive; an empty result means none arrived in time.
    pub async fn poll(&mut self, max_wait: Duration) -> Result<Vec<ConsumedRecord>> {
        if self.assignments.is_empty() {
            return Err(ClientError::InvalidArgument(
                "poll needs at least one assigned partition (call assign first)".to_owned(),
            ));
        }
        let deadline = Instant::now() + max_wait;
        loop {
            let fetched = self.poll_once(deadline).await?;
            // Progress without records (markers, aborted records) is applied at once: it
            // loses nothing, and the next fetch must start after it.
            let records = self.apply(fetched);
            if !records.is_empty() || Instant::now() >= deadline {
                return Ok(records);
            }
        }
    }

    /// One round of concurrent fetches; returns as soon as one partition has records or moved
    /// its position, with those of any other fetch already finished by then.
    async fn poll_once(&mut self, deadline: Instant) -> Result<Vec<Fetched>> {
        let now = Instant::now();
        let wait = deadline
            .saturating_duration_since(now)
            .min(Duration::from_millis(u64::from(
                self.config.fetch_max_wait_ms,
            )));
        let wait_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
        let ready: Vec<usize> = (0..self.assignments.len())
            .filter(|i| self.assignments[*i].retry_after.is_none_or(|t| t <= now))
            .collect();
        if ready.is_empty() {
            let next_retry = self.assignments.iter().filter_map(|a| a.retry_after).min();
            let until = next_retry.map_or(deadline, |t| t.min(deadline));
            tokio::time::sleep_until(until.into()).await;
            return Ok(Vec::new());
        }
        let partition_count = self.assignments.len() as u32;
        let max_bytes = (self.config.fetch_max_bytes / partition_count)
            .clamp(1, self.config.max_partition_fetch_bytes.max(1));
        let decode_limit = max_bytes as usize + FETCH_DECODE_SLACK_BYTES;
        let mut fetches: FuturesUnordered<_> = ready
            .into_iter()
            .map(|index| {
                let a = &self.assignments[index];
                fetch(
                    self.cluster.clone(),
                    Arc::clone(&a.topic),
                    a.partition,
                    a.position,
                    max_bytes,
                    wait_ms,
                    decode_limit,
                    self.config.isolation_level,
                )
                .map(move |result| (index, result))
            })
            .collect();
        let mut fetched = Vec::new();
        while let Some((index, result)) = fetches.next().await {
            if self.handle(index, result, &mut fetched)? {
                break;
            }
        }
        while let Some(Some((index, result))) = fetches.next().now_or_never() {
            self.handle(index, result, &mut fetched)?;
        }
        Ok(fetched)
    }

    /// Decodes one fetch answer, or schedules a retry; returns whether the partition made
    /// progress (records came back, or its position moved past filtered ones).
    fn handle(
        &mut self,
        index: usize,
        result: Result<FetchResponse>,
        fetched: &mut Vec<Fetched>,
    ) -> Result<bool> {
        let assignment = &mut self.assignments[index];
        let response = match result {
            Ok(response) => response,
            Err(error) if error.is_retriable() => {
                if error.invalidates_metadata() {
                    self.cluster.invalidate();
                }
                let failing_since = *assignment.failing_since.get_or_insert_with(Instant::now);
                if failing_since.elapsed() >= Duration::from_millis(self.config.retry_timeout_ms) {
                    tracing::error!(topic = %assignment.topic, partition = assignment.partition,
                        attempts = assignment.attempts, %error,
                        "fetches kept failing past the retry timeout; giving up");
                    return Err(error);
                }
                assignment.attempts += 1;
                let delay = self.backoff.jittered(assignment.attempts, rand::random());
                assignment.retry_after = Some(Instant::now() + delay);
                tracing::warn!(
                    topic = %assignment.topic,
                    partition = assignment.partition,
                    attempt = assignment.attempts,
                    %error,
                    "fetch failed; retrying in {} ms",
                    delay.as_millis()
                );
                return Ok(false);
            }
            Err(error) => return Err(error),
        };
        assignment.attempts = 0;
        assignment.retry_after = None;
        assignment.failing_since = None;
        let (records, next_position) = decode_response(
            &assignment.topic,
            assignment.partition,
            assignment.position,
            response,
        )?;
        let progressed = next_position > assignment.position;
        if progressed {
            fetched.push(Fetched {
                index,
                next_position,
                records,
            });
        }
        Ok(progressed)
    }

    fn apply(&mut self, fetched: Vec<Fetched>) -> Vec<ConsumedRecord> {
        let mut records = Vec::with_capacity(fetched.iter().map(|f| f.records.len()).sum());
        for f in fetched {
            let assignment = &mut self.assignments[f.index];
            assert!(
                f.next_position >= assignment.position,
                "a consumer position only moves forward"
            );
            assignment.position = f.next_position;
            records.extend(f.records);
        }
        records
    }

    fn find_mut(&mut self, topic: &str, partition: u32) -> Option<&mut Assignment> {
        self.assignments
            .iter_mut()
            .find(|a| &*a.topic == topic && a.partition == partition)
    }
}

/// Fetches from the partition's current leader.
#[allow(clippy::too_many_arguments)] // One fetch's parameters; a struct would only rename them.
#[tracing::instrument(skip(cluster, topic), fields(topic = %topic))]
async fn fetch(
    cluster: Cluster,
    topic: Arc<str>,
    partition: u32,
    offset: i64,
    max_bytes: u32,
    max_wait_ms: u32,
    decode_limit_bytes: usize,
    isolation_level: IsolationLevel,
) -> Result<FetchResponse> {
    let (address, channel) = cluster.leader_channel(&topic, partition).await?;
    let mut client =
        ClientServiceClient::new(channel).max_decoding_message_size(decode_limit_bytes);
    let request = FetchRequest {
        topic: topic.to_string(),
        partition: partition as i32,
        offset,
        max_bytes,
        max_wait_ms,
        format: FetchFormat::Batches as i32,
        isolation_level: isolation_level.to_wire() as i32,
    };
    let timeout =
        cluster.config().request_timeout() + Duration::from_millis(u64::from(max_wait_ms));
    call(&address, "a fetch answer", timeout, client.fetch(request)).await
}

/// Turns a fetch answer into records at or after `position`, and the position after them.
///
/// A truncated or corrupt batch after good ones ends the answer early (the next fetch starts
/// there, and reports it if it is really corrupt); one at the very start is an error. Control
/// batches (transaction markers) yield no records but move the position past them.
fn decode_response(
    topic: &Arc<str>,
    partition: u32,
    position: i64,
    response: FetchResponse,
) -> Result<(Vec<ConsumedRecord>, i64)> {
    let consumed = |offset: i64, timestamp_ms, key, value, headers| ConsumedRecord {
        topic: Arc::clone(topic),
        partition,
        offset,
        timestamp_ms,
        key,
        value,
        headers,
    };
    let mut records = Vec::new();
    let mut next_position = position;
    if response.record_batches.is_empty() {
        // A server that ignores the requested format answers with structured records.
        for r in response
            .records
            .into_iter()
            .filter(|r| r.offset >= position)
        {
            next_position = next_position.max(r.offset + 1);
            let headers = r
                .headers
                .into_iter()
                .map(|h| Header {
                    key: h.key,
                    value: h.value,
                })
                .collect();
            records.push(consumed(
                r.offset,
                r.timestamp_ms.unwrap_or(-1),
                r.key,
                r.value,
                headers,
            ));
        }
        return Ok((records, next_position.max(response.next_offset)));
    }
    let bytes: Bytes = response.record_batches;
    let mut complete = true;
    for item in BatchIter::new(&bytes) {
        let decoded = item.and_then(|(header, batch)| {
            let next = header.next_offset().0;
            // A transaction marker's one record is for brokers, never for applications.
            if next <= position || header.is_control() {
                Ok((Vec::new(), next))
            } else {
                Ok((decode_records(batch)?, next))
            }
        });
        match decoded {
            Ok((batch_records, next)) => {
                next_position = next_position.max(next);
                for r in batch_records.into_iter().filter(|r| r.offset.0 >= position) {
                    records.push(consumed(
                        r.offset.0,
                        r.timestamp_ms,
                        r.key,
                        r.value,
                        r.headers,
                    ));
                }
            }
            Err(error) if next_position > position => {
                tracing::debug!(%error, "fetch answer ends with a partial batch");
                complete = false;
                break;
            }
            Err(error) => {
                return Err(ClientError::Corrupt(format!(
                    "fetch from {topic}-{partition} at offset {position}: {error}"
                )));
            }
        }
    }
    if complete {
        next_position = next_position.max(response.next_offset);
    }
    Ok((records, next_position))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolog_log::RecordBatchBuilder;

    fn batch_at(base_offset: i64, values: &[&[u8]]) -> Vec<u8> {
        let mut builder = RecordBatchBuilder::new(1_000);
        for v in values {
            builder.push(1_000, None, Some(v), &[]);
        }
        let mut bytes = builder.build();
        ferrolog_log::assign_offsets(
            &mut bytes,
            ferrolog_log::Offset(base_offset),
            ferrolog_log::LeaderEpoch(0),
        );
        bytes.to_vec()
    }

    fn response(batches: Vec<u8>, next_offset: i64) -> FetchResponse {
        FetchResponse {
            record_batches: Bytes::from(batches),
            next_offset,
            ..Default::default()
        }
    }

    #[test]
    fn records_below_the_position_in_the_first_batch_are_skipped() {
        let topic: Arc<str> = Arc::from("t");
        let mut bytes = batch_at(10, &[b"a", b"b", b"c"]);
        bytes.extend(batch_at(13, &[b"d"]));
        let (records, next) = decode_response(&topic, 0, 11, response(bytes, 14)).expect("valid");
        let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [11, 12, 13]);
        assert_eq!(records[0].value.as_deref(), Some(&b"b"[..]));
        assert_eq!(next, 14);
    }

    #[test]
    fn partial_trailing_batch_ends_the_answer_without_skipping_it() {
        let topic: Arc<str> = Arc::from("t");
        let mut bytes = batch_at(0, &[b"a"]);
        let second = batch_at(1, &[b"b"]);
        bytes.extend_from_slice(&second[..second.len() - 3]);
        let (records, next) = decode_response(&topic, 0, 0, response(bytes, 2)).expect("valid");
        assert_eq!(records.len(), 1);
        assert_eq!(next, 1, "the partial batch is fetched again");
    }

    /// A transaction marker at `offset`, as a coordinator writes it.
    fn marker_at(offset: i64) -> Vec<u8> {
        let mut bytes =
            ferrolog_log::build_control_batch(7, 1, ferrolog_log::ControlType::Commit, 0, 1_000);
        ferrolog_log::assign_offsets(
            &mut bytes,
            ferrolog_log::Offset(offset),
            ferrolog_log::LeaderEpoch(0),
        );
        bytes.to_vec()
    }

    #[test]
    fn control_batches_are_skipped_but_move_the_position() {
        let topic: Arc<str> = Arc::from("t");
        let mut bytes = batch_at(0, &[b"a", b"b"]);
        bytes.extend(marker_at(2));
        bytes.extend(batch_at(3, &[b"c"]));
        bytes.extend(marker_at(4));
        let (records, next) = decode_response(&topic, 0, 0, response(bytes, 5)).expect("valid");
        let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [0, 1, 3], "markers are never records");
        assert_eq!(next, 5, "the position moves past the last marker");
    }

    #[test]
    fn an_answer_of_only_markers_moves_the_position_without_records() {
        let topic: Arc<str> = Arc::from("t");
        let (records, next) =
            decode_response(&topic, 0, 7, response(marker_at(7), 8)).expect("valid");
        assert!(records.is_empty());
        assert_eq!(next, 8);
    }

    #[test]
    fn an_empty_answer_that_filtered_everything_moves_to_its_next_offset() {
        // read_committed: the broker left out an aborted transaction's batches.
        let topic: Arc<str> = Arc::from("t");
        let (records, next) =
            decode_response(&topic, 0, 10, response(Vec::new(), 25)).expect("valid");
        assert!(records.is_empty());
        assert_eq!(next, 25);
    }

    #[test]
    fn corrupt_first_batch_is_an_error() {
        let topic: Arc<str> = Arc::from("t");
        let mut bytes = batch_at(0, &[b"a"]);
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let error = decode_response(&topic, 0, 0, response(bytes, 1)).expect_err("bad crc");
        assert!(matches!(error, ClientError::Corrupt(_)), "{error:?}");
    }
}
