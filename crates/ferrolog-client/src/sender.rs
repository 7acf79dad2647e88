//! The producer's background task: takes sealed batches from the accumulator, sends each to
//! its partition's leader, retries retriable failures, and completes the records' futures.
//!
//! Per partition, batches are sent in creation order with at most
//! `max_in_flight_per_partition` requests outstanding. An idempotent producer stamps each
//! batch with its producer id, epoch and the partition's next sequence number when it first
//! sends it (see `idempotence.rs`); a batch the leader refuses as out of order while an
//! earlier batch of its partition is still being retried waits for that one, like any
//! retriable failure. A batch that fails with a retriable
//! error goes back to the front of its partition's queue and the partition pauses for a
//! backoff delay (exponential, with jitter), after a metadata refresh when the error suggests
//! the leader moved. A batch is failed with its last error once `delivery_timeout_ms` has
//! passed since it was created, whether it was waiting or being retried.
//!
//! A transactional producer (see `transaction.rs`) sends a partition's batches only after
//! the coordinator added the partition to the transaction: the sender collects the
//! partitions its queued batches need and adds them with one AddPartitionsToTxn call at a
//! time. Its batches carry the transactional attribute bit. When the transaction is aborting
//! or must be aborted, or the producer was fenced, batches not yet in flight are failed.
//! The sequencer follows the identity each EndTxn returns, numbering from 0 again.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferrolog_log::{Compression, compress_batch, set_producer_fields, set_transactional};
use ferrolog_proto::v1::client_service_client::ClientServiceClient;
use ferrolog_proto::v1::{ErrorCode, ProduceRequest, ProduceResponse};
use tokio::task::{Id, JoinError, JoinSet};

use crate::accumulator::ReadyBatch;
use crate::config::Acks;
use crate::connection::call;
use crate::error::{ClientError, Result};
use crate::idempotence::{ProducerIdentity, Sequencer};
use crate::metadata::Cluster;
use crate::producer::Shared;
use crate::transaction::SenderVerdict;
use ferrolog_proto::retry::Backoff;

/// Extra client-side patience beyond the broker's own `timeout_ms`, so that the broker's
/// REQUEST_TIMED_OUT answer arrives before the client gives up on the request.
const CLIENT_TIMEOUT_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct PartitionQueue {
    /// Batches waiting to be sent, oldest (lowest `seq`) first.
    pending: VecDeque<ReadyBatch>,
    in_flight: usize,
    /// No sends before this instant: the partition is backing off after a failure.
    retry_after: Option<Instant>,
}

struct Sender {
    shared: Arc<Shared>,
    backoff: Backoff,
    delivery_timeout: Duration,
    queues: HashMap<(Arc<str>, u32), PartitionQueue>,
    requests: JoinSet<Result<ProduceResponse>>,
    in_flight: HashMap<Id, ReadyBatch>,
    /// The idempotent producer's numbering; `None` for a producer without idempotence (and
    /// for a transactional one before `init_transactions`).
    sequencer: Option<Sequencer>,
    /// The AddPartitionsToTxn call in flight (at most one).
    txn_requests: JoinSet<Result<()>>,
}

/// Runs until the producer is closed (or every handle dropped) and nothing is left to send.
pub(crate) async fn run(shared: Arc<Shared>, identity: Option<ProducerIdentity>) {
    let config = &shared.config;
    let mut sender = Sender {
        backoff: Backoff::from_millis(
            config.client.retry_backoff_ms,
            config.client.retry_backoff_max_ms,
        ),
        delivery_timeout: Duration::from_millis(config.delivery_timeout_ms),
        shared: Arc::clone(&shared),
        queues: HashMap::new(),
        requests: JoinSet::new(),
        in_flight: HashMap::new(),
        sequencer: identity.map(Sequencer::new),
        txn_requests: JoinSet::new(),
    };
    loop {
        let now = Instant::now();
        let closing = shared.closing.load(Ordering::Acquire);
        let (next_linger, accumulator_idle) = sender.take_ready(now, closing);
        sender.expire(now);
        sender.dispatch(now);
        sender.start_adding_partitions();
        if closing && accumulator_idle && sender.is_idle() {
            break;
        }
        let wake_at = [next_linger, sender.next_deadline()]
            .into_iter()
            .flatten()
            .min();
        tokio::select! {
            _ = shared.wake_sender.notified() => {}
            Some(joined) = sender.requests.join_next_with_id(), if !sender.requests.is_empty() => {
                sender.on_response(joined);
            }
            Some(joined) = sender.txn_requests.join_next(), if !sender.txn_requests.is_empty() => {
                sender.on_partitions_added(joined);
            }
            _ = sleep_until(wake_at) => {}
        }
    }
    tracing::debug!("producer sender stopped");
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

impl Sender {
    /// Moves sealed batches (and lingered ones, or all when closing) into partition queues.
    fn take_ready(&mut self, now: Instant, closing: bool) -> (Option<Instant>, bool) {
        let mut accumulator = self.shared.lock_accumulator();
        if closing {
            accumulator.seal_all();
        }
        let next_linger = accumulator.seal_expired(now);
        let ready: Vec<ReadyBatch> = accumulator.drain_ready().collect();
        let idle = accumulator.is_idle();
        drop(accumulator);
        // Compressed here, outside the accumulator's lock, so `send` callers never wait on a
        // codec; once per batch, so retries resend the same bytes.
        let codec = self.shared.config.compression;
        for mut batch in ready {
            if codec != Compression::None {
                match compress_batch(&batch.records, codec) {
                    Ok(packed) => batch.records = packed.freeze(),
                    // Cannot happen for a batch the accumulator built; sending it as it is
                    // beats losing it.
                    Err(error) => tracing::warn!(%error, %codec,
                        "could not compress a batch; sending it uncompressed"),
                }
            }
            let key = (Arc::clone(&batch.topic), batch.partition);
            self.queues.entry(key).or_default().pending.push_back(batch);
        }
        (next_linger, idle)
    }

    /// Fails waiting batches whose delivery timeout has passed.
    fn expire(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for queue in self.queues.values_mut() {
            while queue
                .pending
                .front()
                .is_some_and(|b| b.created_at + self.delivery_timeout <= now)
            {
                expired.extend(queue.pending.pop_front());
            }
        }
        for batch in expired {
            let error = batch
                .last_error
                .clone()
                .unwrap_or_else(|| ClientError::Timeout {
                    what: format!(
                        "delivery of {} records to {}-{}",
                        batch.record_count, batch.topic, batch.partition
                    ),
                    after_ms: self.delivery_timeout.as_millis() as u64,
                });
            self.finish(batch, Err(error));
        }
    }

    /// Moves the idempotent producer to its next epoch once a batch was given up and every
    /// batch stamped with the old epoch is settled (none waits or is in flight); until then
    /// unstamped batches wait.
    fn maybe_bump_epoch(&mut self) {
        let Some(sequencer) = &mut self.sequencer else {
            return;
        };
        if !sequencer.bump_pending() {
            return;
        }
        let old_epoch_busy = !self.in_flight.is_empty()
            || self
                .queues
                .values()
                .any(|q| q.pending.iter().any(|b| b.producer_stamp.is_some()));
        if old_epoch_busy {
            return;
        }
        if let Err(error) = sequencer.bump_epoch() {
            // No epoch left: every waiting batch fails rather than be sent with a number the
            // leader cannot accept.
            let waiting: Vec<ReadyBatch> = self
                .queues
                .values_mut()
                .flat_map(|q| q.pending.drain(..))
                .collect();
            for batch in waiting {
                self.finish(batch, Err(error.clone()));
            }
        }
    }

    /// Starts produce requests for every partition that may send now.
    fn dispatch(&mut self, now: Instant) {
        self.maybe_bump_epoch();
        if !self.follow_transaction() {
            return;
        }
        let max_in_flight = self.shared.config.max_in_flight_per_partition;
        let hold_unstamped = self.sequencer.as_ref().is_some_and(Sequencer::bump_pending);
        let transactional = self.shared.transactions.is_some();
        let mut machine = self.shared.transactions.as_ref().map(|t| t.machine());
        for (key, queue) in self.queues.iter_mut() {
            let (topic, partition) = key;
            if queue.retry_after.is_some_and(|t| t > now) {
                continue;
            }
            if let Some(machine) = &mut machine
                && !queue.pending.is_empty()
                && !machine.admit(key)
            {
                continue;
            }
            queue.retry_after = None;
            // See `Sequencer::partition_knows_epoch`: one at a time until the partition has
            // acknowledged a batch of this epoch.
            let limit = match &self.sequencer {
                Some(sequencer) if !sequencer.partition_knows_epoch(topic, *partition) => 1,
                _ => max_in_flight,
            };
            while queue.in_flight < limit {
                if hold_unstamped
                    && queue
                        .pending
                        .front()
                        .is_some_and(|b| b.producer_stamp.is_none())
                {
                    break;
                }
                let Some(mut batch) = queue.pending.pop_front() else {
                    break;
                };
                if let Some(sequencer) = &mut self.sequencer
                    && batch.producer_stamp.is_none()
                {
                    let identity = sequencer.identity();
                    let base = sequencer.take(topic, *partition, batch.record_count);
                    let mut bytes = match std::mem::take(&mut batch.records).try_into_mut() {
                        Ok(owned) => owned,
                        Err(shared) => bytes::BytesMut::from(&shared[..]),
                    };
                    if transactional && let Err(error) = set_transactional(&mut bytes) {
                        // Cannot happen for a batch this producer built.
                        tracing::error!(%error, "could not mark a batch transactional");
                    }
                    match set_producer_fields(
                        &mut bytes,
                        identity.producer_id,
                        identity.epoch,
                        base,
                    ) {
                        Ok(()) => {}
                        // Cannot happen for a batch this producer built.
                        Err(error) => tracing::error!(%error, "could not stamp a batch"),
                    }
                    batch.records = bytes.freeze();
                    batch.producer_stamp = Some((identity.epoch, base));
                }
                queue.in_flight += 1;
                let request = produce(
                    self.shared.cluster.clone(),
                    Arc::clone(&batch.topic),
                    batch.partition,
                    batch.records.clone(),
                    batch.record_count,
                    self.shared.config.acks,
                );
                let task = self.requests.spawn(request);
                self.in_flight.insert(task.id(), batch);
            }
        }
    }

    /// Applies the transaction state before dispatching: fails queued batches when the
    /// transaction is aborting or failed, and moves the sequencer to the identity of the
    /// current transaction. Returns whether batches may be dispatched.
    fn follow_transaction(&mut self) -> bool {
        let Some(transactions) = &self.shared.transactions else {
            return true;
        };
        let (verdict, identity) = {
            let machine = transactions.machine();
            (machine.sender_verdict(), machine.identity())
        };
        match verdict {
            SenderVerdict::Dispatch => {
                if let Some(identity) = identity
                    && self.sequencer.as_ref().map(Sequencer::identity) != Some(identity)
                {
                    // A new transaction under the epoch EndTxn returned: nothing of the old one
                    // waits or is in flight, and every partition numbers from 0.
                    self.sequencer = Some(Sequencer::new(identity));
                }
                true
            }
            SenderVerdict::FailQueued(error) => {
                let queued: Vec<ReadyBatch> = self
                    .queues
                    .values_mut()
                    .flat_map(|q| q.pending.drain(..))
                    .collect();
                for batch in queued {
                    self.finish(batch, Err(error.clone()));
                }
                false
            }
        }
    }

    /// Starts an AddPartitionsToTxn call for the partitions queued batches wait for, unless
    /// one is in flight.
    fn start_adding_partitions(&mut self) {
        let Some(transactions) = &self.shared.transactions else {
            return;
        };
        if !self.txn_requests.is_empty() {
            return;
        }
        let (partitions, identity) = {
            let mut machine = transactions.machine();
            (machine.take_adds(), machine.identity())
        };
        let Some(identity) = identity else {
            return;
        };
        if partitions.is_empty() {
            return;
        }
        tracing::debug!(
            partitions = partitions.len(),
            "adding partitions to the transaction"
        );
        transactions.adding.send_replace(true);
        let deadline = Instant::now() + self.delivery_timeout;
        self.txn_requests
            .spawn(Arc::clone(transactions).add_partitions(
                self.shared.cluster.clone(),
                identity,
                partitions,
                deadline,
            ));
    }

    fn on_partitions_added(&mut self, joined: std::result::Result<Result<()>, JoinError>) {
        let Some(transactions) = &self.shared.transactions else {
            return;
        };
        let result = joined.unwrap_or_else(|error| {
            Err(ClientError::server(
                ErrorCode::Unspecified,
                format!("the AddPartitionsToTxn task failed: {error}"),
            ))
        });
        if let Err(error) = &result {
            tracing::warn!(%error, "could not add partitions to the transaction");
        }
        transactions.machine().adds_done(&result);
        transactions.adding.send_replace(false);
    }

    fn on_response(
        &mut self,
        joined: std::result::Result<(Id, Result<ProduceResponse>), JoinError>,
    ) {
        let (id, result) = match joined {
            Ok((id, result)) => (id, result),
            Err(error) => (
                error.id(),
                Err(ClientError::server(
                    ErrorCode::Unspecified,
                    format!("the produce request task failed: {error}"),
                )),
            ),
        };
        let Some(mut batch) = self.in_flight.remove(&id) else {
            tracing::error!("produce response for an unknown request task");
            return;
        };
        let key = (Arc::clone(&batch.topic), batch.partition);
        let queue = self.queues.entry(key.clone()).or_default();
        queue.in_flight = queue.in_flight.saturating_sub(1);
        let error = match result {
            Ok(response) => {
                check_offsets(&batch, &response);
                if let (Some(sequencer), Some((epoch, _))) =
                    (&mut self.sequencer, batch.producer_stamp)
                {
                    sequencer.acknowledged(&batch.topic, batch.partition, epoch);
                }
                self.finish(batch, Ok(response.base_offset));
                return;
            }
            Err(error) => error,
        };
        // Out of order: an earlier batch of the partition has not landed yet (it failed and
        // waits for its retry, or is still in flight, or was answered a moment ago). Retried
        // like any retriable failure, behind it, unless a batch of this epoch was given up:
        // then the gap is for good, and the producer moves to its next epoch instead.
        let follows_a_retry = error.code() == Some(ErrorCode::OutOfOrderSequenceNumber)
            && !self.sequencer.as_ref().is_some_and(Sequencer::bump_pending);
        let queue = self.queues.entry(key).or_default();
        if error.invalidates_metadata() {
            self.shared.cluster.invalidate();
        }
        batch.attempts += 1;
        let now = Instant::now();
        let delay = self.backoff.jittered(batch.attempts, rand::random());
        let deadline = batch.created_at + self.delivery_timeout;
        if !(error.is_retriable() || follows_a_retry) || now + delay >= deadline {
            self.finish(batch, Err(error));
            return;
        }
        tracing::debug!(
            topic = %batch.topic,
            partition = batch.partition,
            attempt = batch.attempts,
            %error,
            "retrying produce in {} ms",
            delay.as_millis()
        );
        batch.last_error = Some(error);
        // Back in creation order, ahead of younger batches of the partition.
        let position = queue.pending.iter().position(|b| b.seq > batch.seq);
        match position {
            Some(index) => queue.pending.insert(index, batch),
            None => queue.pending.push_back(batch),
        }
        queue.retry_after = Some(now + delay);
    }

    /// Completes a batch's records, gives back its memory and advances the flush watermark.
    /// A stamped batch given up may leave a hole in its partition's sequence: the idempotent
    /// producer then moves to its next epoch (see `idempotence.rs`).
    fn finish(&mut self, batch: ReadyBatch, result: Result<i64>) {
        if let Err(error) = &result {
            match &self.shared.transactions {
                // The abort's EndTxn moves a transactional producer's epoch, not the client.
                Some(transactions) => transactions.machine().fail(error),
                None => {
                    if batch.producer_stamp.is_some()
                        && let Some(sequencer) = &mut self.sequencer
                    {
                        sequencer.batch_given_up();
                    }
                }
            }
        }
        if let Err(ClientError::TransactionAborted(reason)) = &result {
            tracing::debug!(topic = %batch.topic, partition = batch.partition,
                records = batch.record_count, %reason, "batch failed: transaction aborted");
        } else if let Err(error) = &result {
            tracing::warn!(
                topic = %batch.topic,
                partition = batch.partition,
                records = batch.record_count,
                %error,
                "produce failed"
            );
        }
        batch.completion.complete(result);
        self.shared.release_memory(batch.reserved_bytes);
        let below = self.shared.lock_accumulator().complete_batch(batch.seq);
        self.shared.completed_below.send_replace(below);
    }

    fn is_idle(&self) -> bool {
        self.in_flight.is_empty()
            && self.txn_requests.is_empty()
            && self.queues.values().all(|q| q.pending.is_empty())
    }

    /// The earliest retry or delivery-timeout instant among waiting batches.
    fn next_deadline(&self) -> Option<Instant> {
        self.queues
            .values()
            .filter_map(|q| {
                let front = q.pending.front()?;
                let expiry = front.created_at + self.delivery_timeout;
                Some(q.retry_after.map_or(expiry, |t| t.min(expiry)))
            })
            .min()
    }
}

/// Asserts what the broker promised: consecutive offsets, one per record.
fn check_offsets(batch: &ReadyBatch, response: &ProduceResponse) {
    if response.base_offset < 0 {
        return; // The broker reported no offsets.
    }
    let expected_last = response.base_offset + i64::from(batch.record_count) - 1;
    if response.last_offset != expected_last {
        tracing::warn!(
            topic = %batch.topic,
            partition = batch.partition,
            base_offset = response.base_offset,
            last_offset = response.last_offset,
            records = batch.record_count,
            "broker reported offsets that do not match the batch's record count"
        );
    }
}

/// Sends one batch to the partition's current leader.
#[tracing::instrument(
    skip_all,
    fields(topic = %topic, partition = partition, records = record_count)
)]
async fn produce(
    cluster: Cluster,
    topic: Arc<str>,
    partition: u32,
    record_batch: Bytes,
    record_count: u32,
    acks: Acks,
) -> Result<ProduceResponse> {
    let (address, channel) = cluster.leader_channel(&topic, partition).await?;
    let request_timeout = cluster.config().request_timeout();
    let request = ProduceRequest {
        producer: None,
        topic: topic.to_string(),
        partition: partition as i32,
        acks: acks.to_wire() as i32,
        records: Vec::new(),
        record_batch,
        timeout_ms: u32::try_from(request_timeout.as_millis()).unwrap_or(u32::MAX),
    };
    let mut client = ClientServiceClient::new(channel);
    call(
        &address,
        "a produce answer",
        request_timeout + CLIENT_TIMEOUT_GRACE,
        client.produce(request),
    )
    .await
}
