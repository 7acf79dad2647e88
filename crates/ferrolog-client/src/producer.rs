//! The producer: `send` appends to an in-memory batch and returns at once; a background task
//! (see `sender.rs`) ships full or lingered batches to partition leaders and completes the
//! records' futures.
//!
//! Memory is bounded by `buffer_memory_bytes`: each record holds its estimated size from `send`
//! until its batch is acknowledged or fails, and `send` waits (asynchronously, up to
//! `max_block_ms`) while the buffer is full. That is why `send` is an `async fn` returning a
//! second future: awaiting `send` means "the record is queued, in order"; awaiting the
//! returned [`DeliveryFuture`] means "the record is acknowledged".
//!
//! With `ProducerConfig::transactional_id` the producer is transactional (Kafka's
//! transactional producer; the state machine and coordinator calls are in `transaction.rs`):
//! `init_transactions` once, then `begin_transaction`, `send`s, optionally
//! `send_offsets_to_transaction`, and `commit_transaction` or `abort_transaction`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferrolog_log::BATCH_HEADER_BYTES;
use ferrolog_proto::v1::{CommittedOffset, ErrorCode};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;

use crate::accumulator::{Accumulator, PendingRecord, estimate_record_bytes};
use crate::config::{Acks, MAX_IN_FLIGHT_IDEMPOTENT, ProducerConfig};
use crate::delivery::DeliveryFuture;
use crate::error::{ClientError, Result};
use crate::idempotence;
use crate::metadata::{Cluster, TopicInfo};
use crate::record::ProducerRecord;
use crate::sender;
use crate::transaction::Transactions;
use ferrolog_proto::retry::Backoff;

/// Room left in a produce request for everything but the record batch (topic name, fields,
/// gRPC framing).
const REQUEST_OVERHEAD_BYTES: usize = 1024;

/// State shared by producer handles and the sender task.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ProducerConfig,
    pub(crate) cluster: Cluster,
    pub(crate) accumulator: Mutex<Accumulator>,
    /// Wakes the sender: a batch was started (linger timer) or sealed, or the producer closes.
    pub(crate) wake_sender: Notify,
    /// One permit per byte of `buffer_memory_bytes`.
    pub(crate) memory: Semaphore,
    pub(crate) closing: AtomicBool,
    /// Low watermark of batch sequence numbers: every batch below it is complete.
    pub(crate) completed_below: watch::Sender<u64>,
    /// The transaction state of a producer with a transactional id.
    pub(crate) transactions: Option<Arc<Transactions>>,
}

impl Shared {
    pub(crate) fn lock_accumulator(&self) -> std::sync::MutexGuard<'_, Accumulator> {
        self.accumulator.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn release_memory(&self, bytes: usize) {
        self.memory.add_permits(bytes);
    }
}

/// Owned by the producer handles; when the last one goes away, the sender is told to finish
/// what is queued and stop.
#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
    sender_task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wake_sender.notify_one();
    }
}

/// An asynchronous, batching producer. Cheap to clone; clones share batches and the sender.
#[derive(Debug, Clone)]
pub struct Producer {
    handle: Arc<Handle>,
}

impl Producer {
    /// Connects to the cluster (fetching metadata once, so a bad address fails here) and
    /// starts the sender task on the current Tokio runtime.
    pub async fn connect(mut config: ProducerConfig) -> Result<Producer> {
        if let Some(id) = &config.transactional_id {
            if id.is_empty() {
                return Err(ClientError::InvalidArgument(
                    "transactional_id must not be empty (use None for a producer without \
                     transactions)"
                        .to_owned(),
                ));
            }
            // Transactions build on idempotence, which needs acks from every in-sync replica.
            config.enable_idempotence = true;
            config.acks = Acks::All;
        }
        if config.max_request_bytes <= BATCH_HEADER_BYTES + REQUEST_OVERHEAD_BYTES {
            return Err(ClientError::InvalidArgument(format!(
                "max_request_bytes {} leaves no room for records",
                config.max_request_bytes
            )));
        }
        if config.max_in_flight_per_partition == 0 {
            return Err(ClientError::InvalidArgument(
                "max_in_flight_per_partition must be at least 1".to_owned(),
            ));
        }
        // As Kafka's producer: acks 0 or 1 ask for less than idempotence needs, and turn it
        // off rather than fail.
        let idempotent = config.enable_idempotence && config.acks == Acks::All;
        if idempotent && config.max_in_flight_per_partition > MAX_IN_FLIGHT_IDEMPOTENT {
            return Err(ClientError::InvalidArgument(format!(
                "an idempotent producer keeps at most {MAX_IN_FLIGHT_IDEMPOTENT} requests in \
                 flight per partition (the leader remembers that many batches), not {}",
                config.max_in_flight_per_partition
            )));
        }
        let cluster = Cluster::connect(config.client.clone()).await?;
        let transactions = config
            .transactional_id
            .clone()
            .map(|id| Arc::new(Transactions::new(id, config.transaction_timeout_ms)));
        // A transactional producer takes its identity from its coordinator, in
        // init_transactions.
        let identity = if idempotent && transactions.is_none() {
            Some(idempotence::init_producer_id(&cluster).await?)
        } else {
            None
        };
        // A batch must fit in one request.
        let batch_size_bytes = config
            .batch_size_bytes
            .min(config.max_request_bytes - BATCH_HEADER_BYTES - REQUEST_OVERHEAD_BYTES);
        let accumulator =
            Accumulator::new(Duration::from_millis(config.linger_ms), batch_size_bytes);
        let memory_bytes = config.buffer_memory_bytes.min(Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            cluster,
            accumulator: Mutex::new(accumulator),
            wake_sender: Notify::new(),
            memory: Semaphore::new(memory_bytes),
            closing: AtomicBool::new(false),
            completed_below: watch::Sender::new(0),
            config,
            transactions,
        });
        let sender_task = tokio::spawn(sender::run(Arc::clone(&shared), identity));
        Ok(Producer {
            handle: Arc::new(Handle {
                shared,
                sender_task: Mutex::new(Some(sender_task)),
            }),
        })
    }

    /// Queues a record and returns the future of its acknowledgement.
    ///
    /// Returns as soon as the record is in a batch, waiting only while buffer memory is full
    /// or the topic's metadata is not known yet (both bounded by `max_block_ms`). Records sent
    /// one after another from one task to one partition are appended in that order. Errors
    /// that are known before sending (unknown topic or partition, record too large, closed
    /// producer) come out of the returned future, like every other error.
    pub async fn send(&self, record: ProducerRecord) -> DeliveryFuture {
        match self.enqueue(record).await {
            Ok(future) => future,
            Err(error) => DeliveryFuture::failed(error),
        }
    }

    async fn enqueue(&self, record: ProducerRecord) -> Result<DeliveryFuture> {
        let shared = &self.handle.shared;
        if shared.closing.load(Ordering::Acquire) {
            return Err(ClientError::Closed);
        }
        if let Some(transactions) = &shared.transactions {
            transactions.machine().check_send()?;
        }
        let estimate_bytes = estimate_record_bytes(
            record.key.as_deref(),
            record.value.as_deref(),
            &record.headers,
        );
        self.check_record_size(&record.topic, estimate_bytes)?;
        let reservation = self.reserve_memory(estimate_bytes).await?;
        let timestamp_ms = record.timestamp_ms.unwrap_or_else(now_ms);
        let pending = PendingRecord {
            key: record.key.as_deref(),
            value: record.value.as_deref(),
            headers: &record.headers,
            timestamp_ms,
            estimate_bytes,
        };
        let cluster = &shared.cluster;
        loop {
            {
                // Held while the record goes into a batch: a commit that starts after this
                // check seals the batch and waits for it, and one that started before makes
                // the check fail. Lock order: transaction, then accumulator.
                let transaction = shared.transactions.as_ref().map(|t| t.machine());
                if let Some(machine) = &transaction {
                    machine.check_send()?;
                }
                let mut accumulator = shared.lock_accumulator();
                let known =
                    accumulator.partition_count(&record.topic, cluster.generation(), || {
                        cluster
                            .cached_topic(&record.topic)
                            .map(|t| t.partition_count())
                    });
                // Checked under the lock: the sender decides to stop under it too, so a record
                // appended here is always seen by the sender.
                if shared.closing.load(Ordering::Acquire) {
                    return Err(ClientError::Closed);
                }
                if known.is_some() {
                    let partition = accumulator.choose_partition(
                        &record.topic,
                        record.partition,
                        pending.key,
                        estimate_bytes,
                        &mut rand::rng(),
                    )?;
                    let appended = accumulator.append(&record.topic, partition, pending)?;
                    drop(accumulator);
                    drop(transaction);
                    // The batch owns the memory now and gives it back when it completes.
                    reservation.commit();
                    if appended.opened_batch || appended.sealed_batch {
                        shared.wake_sender.notify_one();
                    }
                    return Ok(appended.future);
                }
            }
            let generation = cluster.generation();
            let topic = self.wait_for_topic(&record.topic).await?;
            shared
                .lock_accumulator()
                .add_topic(&record.topic, topic.partition_count(), generation);
        }
    }

    /// The topic's metadata, retrying retriable failures (an unreachable broker) for up to
    /// `max_block_ms`. An unknown topic fails at once.
    async fn wait_for_topic(&self, topic: &str) -> Result<Arc<TopicInfo>> {
        let shared = &self.handle.shared;
        let client = &shared.config.client;
        let backoff = Backoff::from_millis(client.retry_backoff_ms, client.retry_backoff_max_ms);
        let deadline = Instant::now() + Duration::from_millis(shared.config.max_block_ms);
        let mut attempt = 0;
        loop {
            let lookup = shared.cluster.topic(topic);
            let error = match tokio::time::timeout_at(deadline.into(), lookup).await {
                Ok(Ok(info)) => return Ok(info),
                Ok(Err(error)) => error,
                Err(_) => {
                    return Err(ClientError::Timeout {
                        what: format!("metadata of topic '{topic}'"),
                        after_ms: shared.config.max_block_ms,
                    });
                }
            };
            attempt += 1;
            let delay = backoff.jittered(attempt, rand::random());
            if !error.is_retriable() || Instant::now() + delay >= deadline {
                return Err(error);
            }
            if error.invalidates_metadata() {
                shared.cluster.invalidate();
            }
            tokio::time::sleep(delay).await;
        }
    }

    fn check_record_size(&self, topic: &str, estimate_bytes: usize) -> Result<()> {
        let config = &self.handle.shared.config;
        let request_bytes = estimate_bytes + BATCH_HEADER_BYTES + REQUEST_OVERHEAD_BYTES;
        if request_bytes > config.max_request_bytes || estimate_bytes > config.buffer_memory_bytes {
            return Err(ClientError::server(
                ErrorCode::RecordTooLarge,
                format!(
                    "a record of about {estimate_bytes} bytes for topic '{topic}' exceeds the \
                     producer's max_request_bytes ({}) or buffer_memory_bytes ({})",
                    config.max_request_bytes, config.buffer_memory_bytes
                ),
            ));
        }
        Ok(())
    }

    async fn reserve_memory(&self, bytes: usize) -> Result<Reservation<'_>> {
        let shared = &self.handle.shared;
        // `check_record_size` bounded `bytes` by max_request_bytes, far below u32::MAX in any
        // sane configuration; saturate rather than wrap otherwise.
        let permits = u32::try_from(bytes).unwrap_or(u32::MAX);
        let permit = match shared.memory.try_acquire_many(permits) {
            Ok(permit) => permit,
            Err(_) => {
                let max_block = Duration::from_millis(shared.config.max_block_ms);
                tokio::time::timeout(max_block, shared.memory.acquire_many(permits))
                    .await
                    .map_err(|_| ClientError::Timeout {
                        what: format!(
                            "{bytes} bytes of producer buffer memory (buffer_memory_bytes {} is \
                             in use by unacknowledged records)",
                            shared.config.buffer_memory_bytes
                        ),
                        after_ms: shared.config.max_block_ms,
                    })?
                    .map_err(|_| ClientError::Closed)?
            }
        };
        permit.forget();
        Ok(Reservation {
            shared,
            bytes,
            committed: false,
        })
    }

    /// Sends every record queued so far without waiting for `linger_ms`, and waits until each
    /// of them succeeded or failed (the outcome is in each record's future).
    pub async fn flush(&self) -> Result<()> {
        let shared = &self.handle.shared;
        let target = {
            let mut accumulator = shared.lock_accumulator();
            accumulator.seal_all();
            accumulator.next_batch_seq()
        };
        shared.wake_sender.notify_one();
        let mut completed = shared.completed_below.subscribe();
        // Every batch finishes within the delivery timeout; the margin covers the last
        // request. Beyond that the sender task is gone, and waiting longer would hang.
        let limit_ms = shared.config.delivery_timeout_ms
            + shared.config.client.request_timeout_ms
            + shared.config.linger_ms
            + 1_000;
        match tokio::time::timeout(
            Duration::from_millis(limit_ms),
            completed.wait_for(|below| *below >= target),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout {
                what: "queued records to be acknowledged (flush)".to_owned(),
                after_ms: limit_ms,
            }),
        }
    }

    /// The transaction state, or an error for a producer without a transactional id.
    fn transactions(&self) -> Result<&Arc<Transactions>> {
        self.handle.shared.transactions.as_ref().ok_or_else(|| {
            ClientError::InvalidArgument(
                "transactions need ProducerConfig::transactional_id".to_owned(),
            )
        })
    }

    /// How long one transaction call may take, coordinator retries included (Kafka bounds
    /// `initTransactions`, `commitTransaction` and `abortTransaction` by `max.block.ms`).
    fn transaction_deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.handle.shared.config.max_block_ms)
    }

    /// Takes this producer's identity from its transactional id's coordinator: the same
    /// producer id as every earlier instance with that id, and a newer epoch, which fences
    /// them (their later sends and commits fail with `PRODUCER_FENCED`). The coordinator first
    /// aborts whatever transaction an earlier instance left open. Call once, before the first
    /// `begin_transaction`.
    pub async fn init_transactions(&self) -> Result<()> {
        let transactions = self.transactions()?;
        transactions.machine().check_init()?;
        let shared = &self.handle.shared;
        let identity = transactions
            .init_producer_id(&shared.cluster, self.transaction_deadline())
            .await
            .inspect_err(|error| {
                if crate::transaction::is_fencing(error) {
                    transactions.machine().fail_fatally(error);
                }
            })?;
        tracing::debug!(
            transactional_id = %transactions.transactional_id,
            producer_id = identity.producer_id,
            epoch = identity.epoch,
            "transactional producer ready"
        );
        transactions.machine().initialized(identity);
        shared.wake_sender.notify_one();
        Ok(())
    }

    /// Opens a transaction: records sent from now until `commit_transaction` or
    /// `abort_transaction` become visible to read_committed consumers together, or never.
    /// Local only: the coordinator hears of the transaction with its first partition.
    pub fn begin_transaction(&self) -> Result<()> {
        self.transactions()?.machine().begin()
    }

    /// Makes a consumer group's offsets part of the open transaction
    /// (consume-transform-produce): they are committed if the transaction commits and
    /// dropped if it aborts. `offsets` are `(topic, partition, next offset to read)`.
    pub async fn send_offsets_to_transaction(
        &self,
        offsets: &[(&str, u32, i64)],
        group_id: &str,
    ) -> Result<()> {
        let transactions = self.transactions()?;
        if group_id.is_empty() {
            return Err(ClientError::InvalidArgument(
                "send_offsets_to_transaction needs a group id".to_owned(),
            ));
        }
        let identity = {
            let machine = transactions.machine();
            machine.check_offsets()?;
            machine
                .identity()
                .ok_or_else(|| ClientError::InvalidArgument("no producer identity".to_owned()))?
        };
        let cluster = &self.handle.shared.cluster;
        let deadline = self.transaction_deadline();
        let wire: Vec<CommittedOffset> = offsets
            .iter()
            .map(|(topic, partition, offset)| CommittedOffset {
                topic: (*topic).to_owned(),
                partition: *partition as i32,
                offset: *offset,
                ..CommittedOffset::default()
            })
            .collect();
        let result = async {
            transactions
                .add_offsets(cluster, identity, group_id, deadline)
                .await?;
            transactions.machine().offsets_added();
            transactions
                .commit_offsets(cluster, identity, group_id, wire, deadline)
                .await
        }
        .await;
        if let Err(error) = &result {
            transactions.machine().fail(error);
        }
        result
    }

    /// Commits the open transaction: sends every record of it and waits for them, then
    /// asks the coordinator to commit (EndTxn), which writes the commit markers. Refuses
    /// when a record of the transaction failed: the application must `abort_transaction`.
    /// After a timeout, call it again (the commit may be under way); after `PRODUCER_FENCED`
    /// the producer is done.
    pub async fn commit_transaction(&self) -> Result<()> {
        self.end_transaction(true).await
    }

    /// Aborts the open transaction: records still queued fail with
    /// [`ClientError::TransactionAborted`], the ones in flight are waited for, then the
    /// coordinator writes abort markers (EndTxn). read_committed consumers never see any
    /// record of the transaction.
    pub async fn abort_transaction(&self) -> Result<()> {
        self.end_transaction(false).await
    }

    async fn end_transaction(&self, commit: bool) -> Result<()> {
        let transactions = self.transactions()?;
        let shared = &self.handle.shared;
        if commit {
            transactions.machine().start_commit()?;
        } else {
            transactions.machine().start_abort()?;
        }
        // The sender fails what an abort leaves queued; a commit's flush sends it all.
        shared.wake_sender.notify_one();
        self.flush().await?;
        if commit {
            transactions.machine().check_commit_flushed()?;
        } else {
            // An AddPartitionsToTxn call must not reach the coordinator after the EndTxn.
            let mut adding = transactions.adding.subscribe();
            let limit = Duration::from_millis(shared.config.max_block_ms);
            match tokio::time::timeout(limit, adding.wait_for(|adding| !*adding)).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Err(ClientError::Closed),
                Err(_) => {
                    return Err(ClientError::Timeout {
                        what: "the AddPartitionsToTxn call in flight before the abort".to_owned(),
                        after_ms: shared.config.max_block_ms,
                    });
                }
            }
        }
        let (identity, started) = {
            let machine = transactions.machine();
            let identity = machine
                .identity()
                .ok_or_else(|| ClientError::InvalidArgument("no producer identity".to_owned()))?;
            (identity, machine.started())
        };
        let next = if started {
            match transactions
                .end_txn(
                    &shared.cluster,
                    identity,
                    commit,
                    self.transaction_deadline(),
                )
                .await
            {
                Ok(next) => next,
                // Retriable ones ran out of time: the caller may call again.
                Err(error) if error.is_retriable() => return Err(error),
                Err(error) => {
                    transactions.machine().fail_fatally(&error);
                    return Err(error);
                }
            }
        } else {
            // The coordinator never heard of this transaction: nothing to end.
            identity
        };
        tracing::debug!(
            transactional_id = %transactions.transactional_id,
            commit,
            producer_id = next.producer_id,
            epoch = next.epoch,
            "transaction ended"
        );
        transactions.machine().ended(next);
        shared.wake_sender.notify_one();
        Ok(())
    }

    /// Sends everything queued, waits for it, and stops the sender task. Sends on any clone
    /// of this producer fail with [`ClientError::Closed`] from now on.
    pub async fn close(self) {
        let shared = Arc::clone(&self.handle.shared);
        shared.closing.store(true, Ordering::Release);
        if let Err(error) = self.flush().await {
            tracing::warn!(%error, "producer closed before all records completed");
        }
        shared.wake_sender.notify_one();
        let task = self
            .handle
            .sender_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task
            && let Err(error) = task.await
        {
            tracing::error!(%error, "producer sender task failed");
        }
    }
}

/// Buffer memory taken by a record that is not in a batch yet; given back if the record never
/// makes it into one.
struct Reservation<'a> {
    shared: &'a Shared,
    bytes: usize,
    committed: bool,
}

impl Reservation<'_> {
    fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.committed {
            self.shared.release_memory(self.bytes);
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
