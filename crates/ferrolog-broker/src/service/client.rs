//! The client data plane: Produce, Fetch, Subscribe, ListOffsets, Metadata.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ferrolog_log::{LogError, Offset};
use ferrolog_proto::v1::client_service_server::ClientService;
use ferrolog_proto::v1::{self, Acks, ErrorCode, FetchFormat, OffsetSpec};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert::{batches_to_records, next_offset, records_to_batch};
use crate::group::OFFSETS_TOPIC;
use crate::partition::{FetchOutcome, now_ms};
use crate::txn::{TRANSACTION_STATE_TOPIC, TransactionCoordinator};
use crate::{Broker, BrokerError};
use ferrolog_proto::status::status_with;

/// Kafka's `request.timeout.ms` default: how long a produce waits for its acknowledgement
/// when the request does not say.
const DEFAULT_PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);
/// Kafka's `max.partition.fetch.bytes` default, used when a fetch does not say.
const DEFAULT_FETCH_MAX_BYTES: u32 = 1024 * 1024;
/// Upper bound on one fetch response's batch bytes, whatever the request asks. Decoded into
/// structured records small records can take twice their batch size, so this keeps every
/// response under the 100 MiB gRPC message limit.
pub const MAX_FETCH_BYTES: u32 = 32 * 1024 * 1024;
/// Responses a Subscribe stream may have queued for a slow client before it stops reading.
const SUBSCRIBE_QUEUE_DEPTH: usize = 2;
/// Concurrent Subscribe streams per node; each may hold SUBSCRIBE_QUEUE_DEPTH responses.
pub const MAX_SUBSCRIPTIONS: usize = 1024;
/// How long each poll of a Subscribe stream waits for new data.
const SUBSCRIBE_POLL_WAIT: Duration = Duration::from_secs(1);

/// The ClientService implementation.
#[derive(Clone)]
pub struct ClientApi {
    broker: Arc<Broker>,
    subscriptions: Arc<tokio::sync::Semaphore>,
    /// Answers InitProducerId with a transactional id; set once the coordinator runs.
    transactions: Arc<std::sync::OnceLock<Arc<TransactionCoordinator>>>,
}

impl ClientApi {
    pub fn new(broker: Arc<Broker>) -> Self {
        Self {
            broker,
            subscriptions: Arc::new(tokio::sync::Semaphore::new(MAX_SUBSCRIPTIONS)),
            transactions: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// Routes InitProducerId with a transactional id to `coordinator`.
    pub fn with_transactions(self, coordinator: Arc<TransactionCoordinator>) -> Self {
        // A second call keeps the first coordinator: there is one per broker.
        let _ = self.transactions.set(coordinator);
        self
    }

    fn count(&self, rpc: &'static str, result: &Result<impl Sized, BrokerError>) {
        self.broker
            .metrics()
            .count_request(rpc, result.as_ref().err().map(BrokerError::code));
    }

    #[tracing::instrument(name = "produce", skip_all, fields(topic = %request.topic, partition = request.partition))]
    async fn produce_inner(
        &self,
        request: v1::ProduceRequest,
    ) -> Result<v1::ProduceResponse, BrokerError> {
        refuse_internal_topic(&request.topic)?;
        let partition = self
            .broker
            .leader_partition(&request.topic, i64::from(request.partition))?;
        // An unknown value is refused rather than read as the default: a client that means
        // Kafka's acks=-1 or a newer level must not silently get another guarantee.
        let acks = Acks::try_from(request.acks).map_err(|_| {
            BrokerError::InvalidRequest(format!(
                "unknown acks {}: use 0 (unspecified, meaning all), 1 (none), 2 (leader) or 3 \
                 (all)",
                request.acks
            ))
        })?;
        let batch = match (request.records.is_empty(), request.record_batch.is_empty()) {
            (false, true) => {
                let mut batch = records_to_batch(&request.records, now_ms())?;
                if let Some(producer) = &request.producer {
                    stamp_producer(&mut batch, producer)?;
                }
                batch
            }
            (true, false) if request.producer.is_some() => {
                return Err(BrokerError::InvalidRequest(
                    "producer fields go with structured records; a record_batch carries its own"
                        .into(),
                ));
            }
            (true, false) => owned_batch(request.record_batch),
            (true, true) => {
                return Err(BrokerError::InvalidRequest(
                    "produce request has no records".into(),
                ));
            }
            (false, false) => {
                return Err(BrokerError::InvalidRequest(
                    "produce request has both records and record_batch; send one".into(),
                ));
            }
        };
        // Transaction markers are written by transaction coordinators (WriteTxnMarkers),
        // never by producers: a forged one could end another producer's transaction.
        if ferrolog_log::BatchHeader::parse(&batch).is_ok_and(|h| h.is_control()) {
            return Err(BrokerError::InvalidRequest(
                "a produce request may not carry a control batch (a transaction marker)".into(),
            ));
        }
        let timeout = match request.timeout_ms {
            0 => DEFAULT_PRODUCE_TIMEOUT,
            ms => Duration::from_millis(u64::from(ms)),
        }
        .min(self.broker.config().max_produce_timeout);
        let info = partition
            .append(batch, acks, timeout)
            .await
            .map_err(|e| self.broker.with_leader_hint(e))?;
        let metrics = self.broker.metrics();
        metrics
            .produced_records
            .inc_by(u64::from(info.record_count));
        metrics.produced_bytes.inc_by(u64::from(info.size_bytes));
        Ok(v1::ProduceResponse {
            topic: request.topic,
            partition: request.partition,
            base_offset: info.base_offset.0,
            last_offset: info.last_offset.0,
            log_start_offset: partition.log_start_offset().0,
        })
    }

    async fn fetch_once(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: u32,
        max_wait: Duration,
        isolation: i32,
    ) -> Result<FetchOutcome, BrokerError> {
        let read_committed = match v1::IsolationLevel::try_from(isolation) {
            Ok(level) => level == v1::IsolationLevel::ReadCommitted,
            Err(_) => {
                return Err(BrokerError::InvalidRequest(format!(
                    "unknown isolation level {isolation}: use 0 (read_uncommitted) or 1 \
                     (read_committed)"
                )));
            }
        };
        let partition = self.broker.leader_partition(topic, i64::from(partition))?;
        let max_bytes = match max_bytes {
            0 => DEFAULT_FETCH_MAX_BYTES,
            n => n.min(MAX_FETCH_BYTES),
        };
        let max_wait = max_wait.min(self.broker.config().max_fetch_wait);
        let outcome = partition
            .fetch_isolated(Offset(offset), max_bytes, max_wait, read_committed)
            .await?;
        self.broker
            .metrics()
            .fetched_bytes
            .inc_by(outcome.read.batches.len() as u64);
        Ok(outcome)
    }

    #[tracing::instrument(name = "fetch", skip_all, fields(topic = %request.topic, partition = request.partition, offset = request.offset))]
    async fn fetch_inner(
        &self,
        request: v1::FetchRequest,
    ) -> Result<v1::FetchResponse, BrokerError> {
        check_fetch_format(request.format)?;
        let outcome = self
            .fetch_once(
                &request.topic,
                request.partition,
                request.offset,
                request.max_bytes,
                Duration::from_millis(u64::from(request.max_wait_ms)),
                request.isolation_level,
            )
            .await?;
        fetch_response(
            request.topic,
            request.partition,
            request.offset,
            request.format,
            outcome,
        )
    }

    #[tracing::instrument(name = "list_offsets", skip_all, fields(topic = %request.topic, partition = request.partition))]
    fn list_offsets_inner(
        &self,
        request: v1::ListOffsetsRequest,
    ) -> Result<v1::ListOffsetsResponse, BrokerError> {
        let partition = self
            .broker
            .leader_partition(&request.topic, i64::from(request.partition))?;
        let high_watermark = partition.high_watermark();
        let log_start_offset = partition.log_start_offset();
        let offset = match OffsetSpec::try_from(request.spec) {
            Ok(OffsetSpec::Earliest) => log_start_offset.0,
            Ok(OffsetSpec::Latest) => high_watermark.0,
            Ok(OffsetSpec::Timestamp) => partition
                .offset_for_timestamp(request.timestamp_ms)?
                .map_or(-1, |o| o.0),
            Err(_) => {
                return Err(BrokerError::InvalidRequest(format!(
                    "unknown offset spec {}",
                    request.spec
                )));
            }
        };
        Ok(v1::ListOffsetsResponse {
            offset,
            log_start_offset: log_start_offset.0,
            high_watermark: high_watermark.0,
        })
    }

    #[tracing::instrument(name = "init_producer_id", skip_all)]
    async fn init_producer_id_inner(
        &self,
        request: v1::InitProducerIdRequest,
    ) -> Result<v1::InitProducerIdResponse, BrokerError> {
        let (producer_id, epoch) = if request.transactional_id.is_empty() {
            self.broker.init_producer_id().await?
        } else {
            let coordinator = self.transactions.get().ok_or_else(|| {
                BrokerError::Internal("the transaction coordinator is not running".to_owned())
            })?;
            coordinator
                .init_producer_id(&request.transactional_id, request.transaction_timeout_ms)
                .await?
        };
        Ok(v1::InitProducerIdResponse {
            producer_id,
            producer_epoch: i32::from(epoch),
        })
    }

    #[tracing::instrument(name = "delete_records", skip_all, fields(topic = %request.topic, partition = request.partition, before = request.before_offset))]
    fn delete_records_inner(
        &self,
        request: v1::DeleteRecordsRequest,
    ) -> Result<v1::DeleteRecordsResponse, BrokerError> {
        let before = match request.before_offset {
            -1 => None,
            offset if offset >= 0 => Some(Offset(offset)),
            offset => {
                return Err(BrokerError::InvalidRequest(format!(
                    "before_offset {offset} is negative; give an offset, or -1 for the high \
                     watermark"
                )));
            }
        };
        let partition = self
            .broker
            .leader_partition(&request.topic, i64::from(request.partition))?;
        let log_start_offset = partition.delete_records_before(before)?;
        Ok(v1::DeleteRecordsResponse {
            log_start_offset: log_start_offset.0,
            high_watermark: partition.high_watermark().0,
        })
    }

    fn metadata_inner(
        &self,
        request: v1::MetadataRequest,
    ) -> Result<v1::MetadataResponse, BrokerError> {
        let image = self.broker.image();
        let topics = if request.topics.is_empty() {
            image.topics.values().collect::<Vec<_>>()
        } else {
            request
                .topics
                .iter()
                .map(|name| {
                    image
                        .topic(name)
                        .ok_or_else(|| BrokerError::UnknownTopic(name.clone()))
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        Ok(v1::MetadataResponse {
            brokers: image
                .brokers
                .values()
                .map(|b| v1::BrokerMetadata {
                    broker_id: b.id.0,
                    address: b.address.clone(),
                })
                .collect(),
            topics: topics
                .into_iter()
                .map(|t| v1::TopicMetadata {
                    name: t.name.clone(),
                    partitions: t
                        .partitions
                        .iter()
                        .map(|p| v1::PartitionMetadata {
                            partition: p.partition.0 as i32,
                            leader: p.leader.map_or(-1, |l| l.0),
                            leader_epoch: p.leader_epoch,
                            replicas: p.replicas.iter().map(|b| b.0).collect(),
                            isr: p.isr.iter().map(|b| b.0).collect(),
                        })
                        .collect(),
                })
                .collect(),
            controller_id: self
                .broker
                .metadata()
                .controller_leader()
                .map_or(-1, |id| id as i32),
            cluster_id: self.broker.cluster_id(),
        })
    }
}

fn fetch_response(
    topic: String,
    partition: i32,
    offset: i64,
    format: i32,
    outcome: FetchOutcome,
) -> Result<v1::FetchResponse, BrokerError> {
    let batches = outcome.read.batches;
    let next = next_offset(&batches, Offset(offset));
    let (records, record_batches) = match FetchFormat::try_from(format) {
        Ok(FetchFormat::Batches) => (Vec::new(), batches),
        _ => (
            batches_to_records(&batches, Offset(offset))?,
            bytes::Bytes::new(),
        ),
    };
    Ok(v1::FetchResponse {
        topic,
        partition,
        high_watermark: outcome.high_watermark.0,
        log_start_offset: outcome.read.log_start_offset.0,
        next_offset: next.0,
        records,
        record_batches,
        last_stable_offset: outcome.last_stable_offset.0,
    })
}

/// Refuses a fetch format this build does not know, instead of answering in another one.
fn check_fetch_format(format: i32) -> Result<(), BrokerError> {
    FetchFormat::try_from(format).map(|_| ()).map_err(|_| {
        BrokerError::InvalidRequest(format!(
            "unknown fetch format {format}: use 0 (records) or 1 (batches)"
        ))
    })
}

/// Refuses records for an internal topic: only the node itself writes there, and a record
/// it cannot decode would keep every group of that partition from loading.
/// Puts a structured produce's producer fields into the batch built from its records.
fn stamp_producer(batch: &mut BytesMut, producer: &v1::ProducerFields) -> Result<(), BrokerError> {
    let epoch = i16::try_from(producer.producer_epoch)
        .ok()
        .filter(|e| *e >= 0);
    let (Some(epoch), true, true) = (
        epoch,
        producer.producer_id >= 0,
        producer.base_sequence >= 0,
    ) else {
        return Err(BrokerError::InvalidRequest(format!(
            "producer fields need a producer id, an epoch in 0..=32767 and a base sequence, \
             all non-negative; got id {}, epoch {}, sequence {}",
            producer.producer_id, producer.producer_epoch, producer.base_sequence
        )));
    };
    ferrolog_log::set_producer_fields(batch, producer.producer_id, epoch, producer.base_sequence)?;
    if producer.transactional {
        ferrolog_log::set_transactional(batch)?;
    }
    Ok(())
}

fn refuse_internal_topic(topic: &str) -> Result<(), BrokerError> {
    let writer = match topic {
        OFFSETS_TOPIC => "it holds consumer-group offsets and only the group coordinator",
        TRANSACTION_STATE_TOPIC => {
            "it holds transactional producers' state and only the transaction coordinator"
        }
        _ => return Ok(()),
    };
    Err(BrokerError::InvalidRequest(format!(
        "cannot produce to internal topic {topic}: {writer} writes it"
    )))
}

/// A corrupt batch found while reading is damage on this node's disk, not bad input.
fn read_status(error: BrokerError) -> Status {
    match error {
        BrokerError::Log(LogError::CorruptBatch { reason }) => {
            tracing::error!(%reason, "corrupt batch on disk; refusing to serve it");
            status_with(
                tonic::Code::DataLoss,
                ErrorCode::CorruptRecord,
                format!("stored data is corrupt and will not be served: {reason}"),
            )
        }
        other => other.into(),
    }
}

type SubscribeStream = Pin<Box<dyn Stream<Item = Result<v1::FetchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ClientService for ClientApi {
    async fn produce(
        &self,
        request: Request<v1::ProduceRequest>,
    ) -> Result<Response<v1::ProduceResponse>, Status> {
        let started = Instant::now();
        let result = self.produce_inner(request.into_inner()).await;
        self.broker
            .metrics()
            .produce_seconds
            .observe(started.elapsed().as_secs_f64());
        self.count("produce", &result);
        result.map(Response::new).map_err(Status::from)
    }

    async fn fetch(
        &self,
        request: Request<v1::FetchRequest>,
    ) -> Result<Response<v1::FetchResponse>, Status> {
        let started = Instant::now();
        let result = self.fetch_inner(request.into_inner()).await;
        self.broker
            .metrics()
            .fetch_seconds
            .observe(started.elapsed().as_secs_f64());
        self.count("fetch", &result);
        result.map(Response::new).map_err(read_status)
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let request = request.into_inner();
        // Refuse at once what can never succeed, instead of opening a stream that only fails.
        let checked = check_fetch_format(request.format).and_then(|()| {
            self.broker
                .leader_partition(&request.topic, i64::from(request.partition))
        });
        self.count("subscribe", &checked);
        checked?;
        let Ok(permit) = Arc::clone(&self.subscriptions).try_acquire_owned() else {
            return Err(status_with(
                tonic::Code::ResourceExhausted,
                ErrorCode::InvalidRequest,
                format!(
                    "this node already serves {MAX_SUBSCRIPTIONS} Subscribe streams; use Fetch"
                ),
            ));
        };
        let (tx, rx) = tokio::sync::mpsc::channel(SUBSCRIBE_QUEUE_DEPTH);
        let api = self.clone();
        let span =
            tracing::info_span!("subscribe", topic = %request.topic, partition = request.partition);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let _permit = permit;
                let mut offset = request.offset;
                loop {
                    let fetched = api
                        .fetch_once(
                            &request.topic,
                            request.partition,
                            offset,
                            request.max_bytes,
                            SUBSCRIBE_POLL_WAIT,
                            request.isolation_level,
                        )
                        .await
                        .and_then(|outcome| {
                            fetch_response(
                                request.topic.clone(),
                                request.partition,
                                offset,
                                request.format,
                                outcome,
                            )
                        });
                    match fetched {
                        Ok(response) if response.next_offset == offset => {
                            if tx.is_closed() {
                                return;
                            }
                        }
                        Ok(response) => {
                            offset = response.next_offset;
                            if tx.send(Ok(response)).await.is_err() {
                                return;
                            }
                        }
                        Err(error) => {
                            let _ = tx.send(Err(read_status(error))).await;
                            return;
                        }
                    }
                }
            },
            span,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_offsets(
        &self,
        request: Request<v1::ListOffsetsRequest>,
    ) -> Result<Response<v1::ListOffsetsResponse>, Status> {
        let result = self.list_offsets_inner(request.into_inner());
        self.count("list_offsets", &result);
        result.map(Response::new).map_err(Status::from)
    }

    async fn init_producer_id(
        &self,
        request: Request<v1::InitProducerIdRequest>,
    ) -> Result<Response<v1::InitProducerIdResponse>, Status> {
        let result = self.init_producer_id_inner(request.into_inner()).await;
        self.count("init_producer_id", &result);
        result.map(Response::new).map_err(Status::from)
    }

    async fn delete_records(
        &self,
        request: Request<v1::DeleteRecordsRequest>,
    ) -> Result<Response<v1::DeleteRecordsResponse>, Status> {
        let result = self.delete_records_inner(request.into_inner());
        self.count("delete_records", &result);
        result.map(Response::new).map_err(Status::from)
    }

    async fn metadata(
        &self,
        request: Request<v1::MetadataRequest>,
    ) -> Result<Response<v1::MetadataResponse>, Status> {
        let result = self.metadata_inner(request.into_inner());
        self.count("metadata", &result);
        result.map(Response::new).map_err(Status::from)
    }
}

/// The produce request's batch as a buffer the log may rewrite in place (offsets, epoch).
/// It is a slice of the request's decode buffer, sized for a whole 1 MiB batch
/// (`ferrolog_proto::codec`), and the leader keeps it in memory for its followers, charged
/// at its capacity: a batch much smaller than that buffer is copied out, so that it does
/// not hold (and get charged for) megabytes.
fn owned_batch(batch: bytes::Bytes) -> BytesMut {
    match batch.try_into_mut() {
        Ok(owned) if owned.capacity() <= 4 * owned.len() => owned,
        Ok(owned) => BytesMut::from(&owned[..]),
        Err(shared) => BytesMut::from(&shared[..]),
    }
}
