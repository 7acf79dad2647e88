//! Networked client tests against an in-process fake of the Ferrolog gRPC API: a tiny
//! in-memory log per partition behind real tonic services on 127.0.0.1, with scripted
//! failures. They prove the client's side of the protocol (batching, offsets, retries, error
//! mapping, fetch decoding) without a real broker.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ferrolog_client::{
    Acks, Admin, ClientConfig, ClientError, Consumer, ConsumerConfig, ErrorCode, OffsetQuery,
    Producer, ProducerConfig, ProducerRecord, StartOffset, partition_for_key,
};
use ferrolog_proto::ERROR_CODE_METADATA_KEY;
use ferrolog_proto::v1::admin_service_server::{AdminService, AdminServiceServer};
use ferrolog_proto::v1::client_service_server::{ClientService, ClientServiceServer};
use ferrolog_proto::v1::{
    BrokerMetadata, CreateTopicRequest, CreateTopicResponse, DeleteTopicRequest,
    DeleteTopicResponse, DescribeTopicRequest, DescribeTopicResponse, FetchRequest, FetchResponse,
    ListOffsetsRequest, ListOffsetsResponse, ListTopicsRequest, ListTopicsResponse,
    MetadataRequest, MetadataResponse, OffsetSpec, PartitionDescription, PartitionMetadata,
    ProduceRequest, ProduceResponse, SubscribeRequest, TopicMetadata, TopicSummary,
};
use futures::stream::BoxStream;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};

/// Every wait in these tests ends within this bound.
const TEST_TIMEOUT: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn ferrolog_error(code: Code, name: &str, message: impl Into<String>) -> Status {
    let mut metadata = MetadataMap::new();
    metadata.insert(
        ERROR_CODE_METADATA_KEY,
        name.parse().expect("code names are ASCII"),
    );
    Status::with_metadata(code, message, metadata)
}

#[derive(Debug, Default)]
struct PartitionLog {
    /// (base offset, next offset, batch bytes with offsets assigned)
    batches: Vec<(i64, i64, Bytes)>,
    end_offset: i64,
}

#[derive(Debug, Default)]
struct FakeState {
    topics: BTreeMap<String, Vec<PartitionLog>>,
    produce_requests: usize,
    metadata_requests: usize,
    /// Answers for the next produce requests, before any real work.
    scripted_produce_failures: VecDeque<Status>,
}

/// One fake broker (id 1) that leads every partition.
#[derive(Debug, Clone)]
struct FakeBroker {
    state: Arc<Mutex<FakeState>>,
    address: String,
}

impl FakeBroker {
    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().expect("fake broker state lock")
    }

    fn fail_next_produces(&self, statuses: impl IntoIterator<Item = Status>) {
        self.lock().scripted_produce_failures.extend(statuses);
    }

    fn produce_requests(&self) -> usize {
        self.lock().produce_requests
    }

    fn metadata_requests(&self) -> usize {
        self.lock().metadata_requests
    }
}

fn check_partition<'a>(
    state: &'a mut FakeState,
    topic: &str,
    partition: i32,
) -> Result<&'a mut PartitionLog, Status> {
    let partitions = state.topics.get_mut(topic).ok_or_else(|| {
        ferrolog_error(
            Code::NotFound,
            "UNKNOWN_TOPIC",
            format!("unknown topic '{topic}'"),
        )
    })?;
    let count = partitions.len();
    usize::try_from(partition)
        .ok()
        .and_then(|p| partitions.get_mut(p))
        .ok_or_else(|| {
            ferrolog_error(
                Code::NotFound,
                "UNKNOWN_PARTITION",
                format!("topic '{topic}' has {count} partitions, not {partition}"),
            )
        })
}

#[tonic::async_trait]
impl ClientService for FakeBroker {
    async fn produce(
        &self,
        request: Request<ProduceRequest>,
    ) -> Result<Response<ProduceResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.lock();
        state.produce_requests += 1;
        if let Some(status) = state.scripted_produce_failures.pop_front() {
            return Err(status);
        }
        let log = check_partition(&mut state, &request.topic, request.partition)?;
        let records = ferrolog_log::decode_records(&request.record_batch)
            .map_err(|e| ferrolog_error(Code::InvalidArgument, "CORRUPT_RECORD", e.to_string()))?;
        ferrolog_log::validate_batch(&request.record_batch)
            .map_err(|e| ferrolog_error(Code::InvalidArgument, "CORRUPT_RECORD", e.to_string()))?;
        let base_offset = log.end_offset;
        let mut batch = BytesMut::from(&request.record_batch[..]);
        ferrolog_log::assign_offsets(
            &mut batch,
            ferrolog_log::Offset(base_offset),
            ferrolog_log::LeaderEpoch(0),
        );
        log.end_offset += records.len() as i64;
        let next = log.end_offset;
        log.batches.push((base_offset, next, batch.freeze()));
        // Every acks level reports the offsets the leader assigned, as the real broker does
        // (client.proto: with ACKS_NONE they are assigned but not yet durable).
        Ok(Response::new(ProduceResponse {
            topic: request.topic,
            partition: request.partition,
            base_offset,
            last_offset: next - 1,
            log_start_offset: 0,
        }))
    }

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        let request = request.into_inner();
        let deadline = Instant::now() + Duration::from_millis(u64::from(request.max_wait_ms));
        loop {
            {
                let mut state = self.lock();
                let log = check_partition(&mut state, &request.topic, request.partition)?;
                if request.offset > log.end_offset || request.offset < 0 {
                    return Err(ferrolog_error(
                        Code::OutOfRange,
                        "OFFSET_OUT_OF_RANGE",
                        format!(
                            "offset {} is outside {}-{}: valid offsets are 0..{}",
                            request.offset, request.topic, request.partition, log.end_offset
                        ),
                    ));
                }
                let mut bytes = BytesMut::new();
                let mut next_offset = request.offset;
                for (_, next, batch) in log.batches.iter().filter(|(_, n, _)| *n > request.offset) {
                    if !bytes.is_empty() && bytes.len() + batch.len() > request.max_bytes as usize {
                        break;
                    }
                    bytes.extend_from_slice(batch);
                    next_offset = *next;
                }
                if !bytes.is_empty() || Instant::now() >= deadline {
                    return Ok(Response::new(FetchResponse {
                        topic: request.topic,
                        partition: request.partition,
                        high_watermark: log.end_offset,
                        log_start_offset: 0,
                        next_offset,
                        records: Vec::new(),
                        record_batches: bytes.freeze(),
                        last_stable_offset: log.end_offset,
                    }));
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    type SubscribeStream = BoxStream<'static, Result<FetchResponse, Status>>;

    async fn subscribe(
        &self,
        _request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(Status::unimplemented("the fake broker does not stream"))
    }

    async fn init_producer_id(
        &self,
        _request: Request<ferrolog_proto::v1::InitProducerIdRequest>,
    ) -> Result<Response<ferrolog_proto::v1::InitProducerIdResponse>, Status> {
        // One producer per fake: its batches are checked by the fake's own log, if at all.
        Ok(Response::new(ferrolog_proto::v1::InitProducerIdResponse {
            producer_id: 1,
            producer_epoch: 0,
        }))
    }

    async fn delete_records(
        &self,
        _request: Request<ferrolog_proto::v1::DeleteRecordsRequest>,
    ) -> Result<Response<ferrolog_proto::v1::DeleteRecordsResponse>, Status> {
        Err(Status::unimplemented(
            "the fake broker does not delete records",
        ))
    }

    async fn list_offsets(
        &self,
        request: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.lock();
        let log = check_partition(&mut state, &request.topic, request.partition)?;
        let offset = match OffsetSpec::try_from(request.spec) {
            Ok(OffsetSpec::Earliest) => 0,
            _ => log.end_offset,
        };
        Ok(Response::new(ListOffsetsResponse {
            offset,
            log_start_offset: 0,
            high_watermark: log.end_offset,
        }))
    }

    async fn metadata(
        &self,
        _request: Request<MetadataRequest>,
    ) -> Result<Response<MetadataResponse>, Status> {
        let mut state = self.lock();
        state.metadata_requests += 1;
        let topics = state
            .topics
            .iter()
            .map(|(name, partitions)| TopicMetadata {
                name: name.clone(),
                partitions: (0..partitions.len() as i32)
                    .map(|p| PartitionMetadata {
                        partition: p,
                        leader: 1,
                        leader_epoch: 0,
                        replicas: vec![1],
                        isr: vec![1],
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(MetadataResponse {
            brokers: vec![BrokerMetadata {
                broker_id: 1,
                address: self.address.clone(),
            }],
            topics,
            controller_id: 1,
            cluster_id: "fake".to_owned(),
        }))
    }
}

#[tonic::async_trait]
impl AdminService for FakeBroker {
    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.lock();
        if state.topics.contains_key(&request.name) {
            return Err(ferrolog_error(
                Code::AlreadyExists,
                "TOPIC_ALREADY_EXISTS",
                format!("topic '{}' already exists", request.name),
            ));
        }
        let partitions = (0..request.partitions)
            .map(|_| PartitionLog::default())
            .collect();
        state.topics.insert(request.name.clone(), partitions);
        Ok(Response::new(CreateTopicResponse {
            name: request.name,
            partitions: request.partitions,
            replication_factor: 1,
            metadata_index: 1,
        }))
    }

    async fn delete_topic(
        &self,
        request: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        let name = request.into_inner().name;
        match self.lock().topics.remove(&name) {
            Some(_) => Ok(Response::new(DeleteTopicResponse { metadata_index: 2 })),
            None => Err(ferrolog_error(
                Code::NotFound,
                "UNKNOWN_TOPIC",
                format!("unknown topic '{name}'"),
            )),
        }
    }

    async fn list_topics(
        &self,
        _request: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        let topics = self
            .lock()
            .topics
            .iter()
            .map(|(name, p)| TopicSummary {
                name: name.clone(),
                partitions: p.len() as i32,
                replication_factor: 1,
            })
            .collect();
        Ok(Response::new(ListTopicsResponse { topics }))
    }

    async fn cluster_status(
        &self,
        _request: Request<ferrolog_proto::v1::ClusterStatusRequest>,
    ) -> Result<Response<ferrolog_proto::v1::ClusterStatusResponse>, Status> {
        Ok(Response::new(ferrolog_proto::v1::ClusterStatusResponse {
            controller_leader: 1,
            ..Default::default()
        }))
    }

    async fn elect_leader(
        &self,
        _request: Request<ferrolog_proto::v1::ElectLeaderRequest>,
    ) -> Result<Response<ferrolog_proto::v1::ElectLeaderResponse>, Status> {
        Err(Status::unimplemented(
            "the fake broker has one replica per partition",
        ))
    }

    async fn create_partitions(
        &self,
        _request: Request<ferrolog_proto::v1::CreatePartitionsRequest>,
    ) -> Result<Response<ferrolog_proto::v1::CreatePartitionsResponse>, Status> {
        Err(Status::unimplemented("the fake broker's topics are fixed"))
    }

    async fn reassign_partition(
        &self,
        _request: Request<ferrolog_proto::v1::ReassignPartitionRequest>,
    ) -> Result<Response<ferrolog_proto::v1::ReassignPartitionResponse>, Status> {
        Err(Status::unimplemented(
            "the fake broker has one replica per partition",
        ))
    }

    async fn alter_configs(
        &self,
        _request: Request<ferrolog_proto::v1::AlterConfigsRequest>,
    ) -> Result<Response<ferrolog_proto::v1::AlterConfigsResponse>, Status> {
        Err(Status::unimplemented("the fake broker's configs are fixed"))
    }

    async fn describe_configs(
        &self,
        _request: Request<ferrolog_proto::v1::DescribeConfigsRequest>,
    ) -> Result<Response<ferrolog_proto::v1::DescribeConfigsResponse>, Status> {
        Err(Status::unimplemented("the fake broker has no configs"))
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        let name = request.into_inner().name;
        let state = self.lock();
        let partitions = state.topics.get(&name).ok_or_else(|| {
            ferrolog_error(
                Code::NotFound,
                "UNKNOWN_TOPIC",
                format!("unknown topic '{name}'"),
            )
        })?;
        Ok(Response::new(DescribeTopicResponse {
            name: name.clone(),
            partitions: partitions
                .iter()
                .enumerate()
                .map(|(i, log)| PartitionDescription {
                    partition: i as i32,
                    leader: 1,
                    log_end_offset: log.end_offset,
                    high_watermark: log.end_offset,
                    ..Default::default()
                })
                .collect(),
            configs: Default::default(),
            config_entries: Vec::new(),
        }))
    }
}

/// Starts a fake broker with the given topics and partition counts.
async fn start_fake(topics: &[(&str, usize)]) -> FakeBroker {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let address = listener.local_addr().expect("bound address").to_string();
    let mut state = FakeState::default();
    for (name, partitions) in topics {
        state.topics.insert(
            (*name).to_owned(),
            (0..*partitions).map(|_| PartitionLog::default()).collect(),
        );
    }
    let fake = FakeBroker {
        state: Arc::new(Mutex::new(state)),
        address,
    };
    let server = tonic::transport::Server::builder()
        .add_service(ClientServiceServer::new(fake.clone()))
        .add_service(AdminServiceServer::new(fake.clone()))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(async move {
        if let Err(error) = server.await {
            eprintln!("fake broker stopped: {error}");
        }
    });
    fake
}

fn client_config(address: &str) -> ClientConfig {
    ClientConfig {
        brokers: vec![address.to_owned()],
        connect_timeout_ms: 2_000,
        request_timeout_ms: 5_000,
        retry_backoff_ms: 10,
        retry_backoff_max_ms: 50,
        ..ClientConfig::default()
    }
}

fn producer_config(address: &str) -> ProducerConfig {
    ProducerConfig {
        delivery_timeout_ms: 10_000,
        ..ProducerConfig::new(client_config(address))
    }
}

#[tokio::test]
async fn producer_returns_consecutive_offsets_for_a_batch_of_records() {
    let fake = start_fake(&[("orders", 1)]).await;
    let producer = within("connect", Producer::connect(producer_config(&fake.address)))
        .await
        .expect("connect to the fake broker");

    tracing::info!("sending 1000 records to one partition must batch them into few requests");
    let mut futures = Vec::new();
    for i in 0..1000u32 {
        let record = ProducerRecord::new("orders", format!("value-{i}")).with_partition(0);
        futures.push(producer.send(record).await);
    }
    within("flush", producer.flush()).await.expect("flush");
    for (i, future) in futures.into_iter().enumerate() {
        let metadata = within("delivery", future)
            .await
            .expect("record acknowledged");
        assert_eq!(metadata.offset, i as i64);
        assert_eq!(metadata.partition, 0);
        assert_eq!(&*metadata.topic, "orders");
    }
    assert!(
        fake.produce_requests() <= 10,
        "{} requests",
        fake.produce_requests()
    );
    within("close", producer.close()).await;
}

#[tokio::test]
async fn linger_sends_a_batch_without_flush() {
    let fake = start_fake(&[("events", 1)]).await;
    let config = ProducerConfig {
        linger_ms: 50,
        ..producer_config(&fake.address)
    };
    let producer = within("connect", Producer::connect(config))
        .await
        .expect("connect");
    let started = Instant::now();
    let future = producer.send(ProducerRecord::new("events", "lonely")).await;
    let metadata = within("linger send", future).await.expect("acknowledged");
    assert_eq!(metadata.offset, 0);
    assert!(
        started.elapsed() >= Duration::from_millis(40),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn full_batches_are_sent_before_linger_expires() {
    let fake = start_fake(&[("events", 1)]).await;
    let config = ProducerConfig {
        linger_ms: 600_000,
        batch_size_bytes: 1024,
        ..producer_config(&fake.address)
    };
    let producer = within("connect", Producer::connect(config))
        .await
        .expect("connect");
    let mut futures = Vec::new();
    for _ in 0..30 {
        futures.push(
            producer
                .send(ProducerRecord::new("events", vec![7u8; 100]))
                .await,
        );
    }
    // ~7 records fill a 1 KiB batch, so the first 20 are in full batches, sent long before the
    // ten-minute linger; only the last, partly filled batch still waits.
    for (i, future) in futures.drain(..20).enumerate() {
        let metadata = within("size-triggered send", future)
            .await
            .expect("acknowledged");
        assert_eq!(metadata.offset, i as i64);
    }
    assert!(fake.produce_requests() >= 2, "{}", fake.produce_requests());
}

#[tokio::test]
async fn not_leader_is_retried_after_a_metadata_refresh_and_succeeds() {
    let fake = start_fake(&[("orders", 2)]).await;
    let producer = within("connect", Producer::connect(producer_config(&fake.address)))
        .await
        .expect("connect");
    let metadata_before = fake.metadata_requests();
    let not_leader = || {
        ferrolog_error(
            Code::FailedPrecondition,
            "NOT_LEADER",
            format!(
                "NOT_LEADER: partition orders-1 is led by broker 1 at {}",
                fake.address
            ),
        )
    };
    fake.fail_next_produces([not_leader(), not_leader()]);

    let future = producer
        .send(ProducerRecord::new("orders", "v").with_partition(1))
        .await;
    let metadata = within("retried delivery", future)
        .await
        .expect("retries succeed");
    assert_eq!((metadata.partition, metadata.offset), (1, 0));
    assert_eq!(fake.produce_requests(), 3);
    assert!(
        fake.metadata_requests() > metadata_before,
        "NOT_LEADER must refresh metadata"
    );
}

#[tokio::test]
async fn retries_stop_at_the_delivery_timeout_with_the_last_error() {
    let fake = start_fake(&[("orders", 1)]).await;
    let config = ProducerConfig {
        delivery_timeout_ms: 500,
        ..producer_config(&fake.address)
    };
    let producer = within("connect", Producer::connect(config))
        .await
        .expect("connect");
    fake.fail_next_produces((0..1_000).map(|_| {
        ferrolog_error(
            Code::Unavailable,
            "NOT_ENOUGH_REPLICAS",
            "ISR has 1 of 2 replicas",
        )
    }));
    let started = Instant::now();
    let future = producer.send(ProducerRecord::new("orders", "v")).await;
    let error = within("expired delivery", future)
        .await
        .expect_err("never succeeds");
    assert_eq!(error.code(), Some(ErrorCode::NotEnoughReplicas), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(fake.produce_requests() >= 2, "retried before giving up");
}

#[tokio::test]
async fn non_retriable_error_fails_every_record_of_the_batch() {
    let fake = start_fake(&[("orders", 1)]).await;
    let producer = within("connect", Producer::connect(producer_config(&fake.address)))
        .await
        .expect("connect");
    fake.fail_next_produces([ferrolog_error(
        Code::InvalidArgument,
        "RECORD_TOO_LARGE",
        "batch exceeds max.message.bytes",
    )]);
    let mut futures = Vec::new();
    for i in 0..3 {
        futures.push(
            producer
                .send(ProducerRecord::new("orders", format!("{i}")))
                .await,
        );
    }
    producer.flush().await.expect("flush");
    for future in futures {
        let error = within("failed delivery", future)
            .await
            .expect_err("must fail");
        assert_eq!(error.code(), Some(ErrorCode::RecordTooLarge), "{error}");
    }
    assert_eq!(
        fake.produce_requests(),
        1,
        "a non-retriable error is not retried"
    );
}

#[tokio::test]
async fn unknown_topic_fails_fast() {
    let fake = start_fake(&[("orders", 1)]).await;
    let producer = within("connect", Producer::connect(producer_config(&fake.address)))
        .await
        .expect("connect");
    let started = Instant::now();
    let future = producer
        .send(ProducerRecord::new("no-such-topic", "v"))
        .await;
    let error = within("unknown topic", future)
        .await
        .expect_err("must fail");
    assert_eq!(error.code(), Some(ErrorCode::UnknownTopic));
    assert!(error.to_string().contains("no-such-topic"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn explicit_partition_out_of_range_fails_with_the_valid_range() {
    let fake = start_fake(&[("orders", 3)]).await;
    let producer = within("connect", Producer::connect(producer_config(&fake.address)))
        .await
        .expect("connect");
    let future = producer
        .send(ProducerRecord::new("orders", "v").with_partition(3))
        .await;
    let error = within("bad partition", future)
        .await
        .expect_err("must fail");
    assert_eq!(error.code(), Some(ErrorCode::UnknownPartition));
    assert!(error.to_string().contains("0..=2"), "{error}");
}

#[tokio::test]
async fn consumer_reads_back_what_was_produced_with_keys_on_kafkas_partitions() {
    let fake = start_fake(&[("orders", 3)]).await;
    let producer = within("connect", Producer::connect(producer_config(&fake.address)))
        .await
        .expect("connect");
    let mut sent = Vec::new();
    for i in 0..60 {
        let key = format!("customer-{}", i % 7);
        let record = ProducerRecord::new("orders", format!("order-{i}"))
            .with_key(key.clone())
            .with_header("source", Some(Bytes::from_static(b"test")));
        let future = producer.send(record).await;
        sent.push((key, format!("order-{i}"), future));
    }
    producer.flush().await.expect("flush");
    for (key, _, future) in &mut sent {
        let metadata = within("delivery", &mut *future)
            .await
            .expect("acknowledged");
        assert_eq!(metadata.partition, partition_for_key(key.as_bytes(), 3));
    }

    tracing::info!("a consumer of all three partitions must see every record exactly once");
    let mut consumer = within(
        "connect",
        Consumer::connect(ConsumerConfig::new(client_config(&fake.address))),
    )
    .await
    .expect("connect");
    for partition in 0..3 {
        within(
            "assign",
            consumer.assign("orders", partition, StartOffset::Earliest),
        )
        .await
        .expect("assign");
    }
    let mut received = Vec::new();
    while received.len() < sent.len() {
        let batch = within("poll", consumer.poll(Duration::from_millis(500)))
            .await
            .expect("poll");
        received.extend(batch);
    }
    assert_eq!(received.len(), sent.len());
    for partition in 0..3u32 {
        let offsets: Vec<i64> = received
            .iter()
            .filter(|r| r.partition == partition)
            .map(|r| r.offset)
            .collect();
        let expected: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(offsets, expected, "partition {partition} in order, no gaps");
        assert_eq!(
            consumer.position("orders", partition),
            Some(offsets.len() as i64)
        );
    }
    for (key, value, _) in &sent {
        let record = received
            .iter()
            .find(|r| r.value.as_deref() == Some(value.as_bytes()))
            .expect("every sent value is read back");
        assert_eq!(record.key.as_deref(), Some(key.as_bytes()));
        assert_eq!(record.headers[0].key, "source");
    }

    tracing::info!("a poll with nothing new returns empty after its wait");
    let started = Instant::now();
    let nothing = within("empty poll", consumer.poll(Duration::from_millis(200))).await;
    assert!(nothing.expect("poll").is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn consumer_starting_at_latest_sees_only_new_records_and_out_of_range_is_an_error() {
    let fake = start_fake(&[("orders", 1)]).await;
    let producer = within("connect", Producer::connect(producer_config(&fake.address)))
        .await
        .expect("connect");
    let old = producer.send(ProducerRecord::new("orders", "old")).await;
    within("old", old).await.expect("acknowledged");
    let mut consumer = within(
        "connect",
        Consumer::connect(ConsumerConfig::new(client_config(&fake.address))),
    )
    .await
    .expect("connect");
    within("assign", consumer.assign("orders", 0, StartOffset::Latest))
        .await
        .expect("assign");
    assert_eq!(consumer.position("orders", 0), Some(1));
    let new = producer.send(ProducerRecord::new("orders", "new")).await;
    within("new", new).await.expect("acknowledged");
    let records = within("poll", consumer.poll(Duration::from_secs(5)))
        .await
        .expect("poll");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value.as_deref(), Some(&b"new"[..]));

    consumer.seek("orders", 0, 99).expect("assigned");
    let error = within("poll", consumer.poll(Duration::from_secs(1)))
        .await
        .expect_err("past end");
    assert_eq!(error.code(), Some(ErrorCode::OffsetOutOfRange));
    assert!(
        error.to_string().contains("valid offsets are 0..2"),
        "{error}"
    );
    assert_eq!(
        consumer.position("orders", 0),
        Some(99),
        "an error does not move the position"
    );
}

#[tokio::test]
async fn admin_creates_lists_describes_and_deletes_topics() {
    let fake = start_fake(&[]).await;
    let admin = within("connect", Admin::connect(client_config(&fake.address)))
        .await
        .expect("connect");
    let created = within(
        "create",
        admin.create_topic("payments", 4, 0, BTreeMap::new()),
    )
    .await
    .expect("create");
    assert_eq!(created.partitions, 4);
    let again = within(
        "create twice",
        admin.create_topic("payments", 4, 0, BTreeMap::new()),
    )
    .await
    .expect_err("already exists");
    assert_eq!(again.code(), Some(ErrorCode::TopicAlreadyExists));
    let topics = within("list", admin.list_topics()).await.expect("list");
    assert_eq!(
        topics.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["payments"]
    );
    let described = within("describe", admin.describe_topic("payments"))
        .await
        .expect("describe");
    assert_eq!(described.partitions.len(), 4);
    let metadata = within("metadata", admin.metadata(&[]))
        .await
        .expect("metadata");
    assert_eq!(metadata.brokers[0].address, fake.address);
    let latest = within(
        "offsets",
        admin.list_offsets("payments", 2, OffsetQuery::Latest),
    )
    .await
    .expect("list offsets");
    assert_eq!(latest.offset, 0);
    within("delete", admin.delete_topic("payments"))
        .await
        .expect("delete");
    let error = within("describe deleted", admin.describe_topic("payments"))
        .await
        .expect_err("deleted");
    assert_eq!(error.code(), Some(ErrorCode::UnknownTopic));
}

#[tokio::test]
async fn acks_none_completes_with_the_offsets_the_leader_assigned() {
    let fake = start_fake(&[("orders", 1)]).await;
    let config = ProducerConfig {
        acks: Acks::None,
        ..producer_config(&fake.address)
    };
    let producer = within("connect", Producer::connect(config))
        .await
        .expect("connect");
    let first = producer.send(ProducerRecord::new("orders", "a")).await;
    let second = producer.send(ProducerRecord::new("orders", "b")).await;
    let first = within("delivery", first).await.expect("acknowledged");
    let second = within("delivery", second).await.expect("acknowledged");
    assert_eq!((first.offset, second.offset), (0, 1));
}

#[tokio::test]
async fn sends_after_close_fail_with_closed() {
    let fake = start_fake(&[("orders", 1)]).await;
    let producer = within("connect", Producer::connect(producer_config(&fake.address)))
        .await
        .expect("connect");
    let clone = producer.clone();
    let pending = producer
        .send(ProducerRecord::new("orders", "before close"))
        .await;
    within("close", producer.close()).await;
    within("pending", pending)
        .await
        .expect("close sends what was queued");
    let after = clone
        .send(ProducerRecord::new("orders", "after close"))
        .await;
    assert_eq!(within("after", after).await, Err(ClientError::Closed));
}

/// Accepts connections and writes something that is not HTTP/2; then hangs up, or with
/// `hold_open` keeps the connection open without another byte.
async fn start_garbage_server(hold_open: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let address = listener.local_addr().expect("bound address").to_string();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = socket
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\ngarbage")
                    .await;
                if hold_open {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                let _ = socket.shutdown().await;
            });
        }
    });
    address
}

fn assert_unreachable(result: Result<Admin, ClientError>, address: &str) {
    match result {
        Err(error @ ClientError::Unreachable { .. }) => {
            let message = error.to_string();
            println!("{message}");
            assert!(
                message.starts_with(&format!("could not reach a Ferrolog server at {address}")),
                "{message}"
            );
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn connecting_to_something_that_is_not_ferrolog_is_unreachable_with_a_clear_message() {
    for hold_open in [false, true] {
        let address = start_garbage_server(hold_open).await;
        let started = Instant::now();
        let result = within(
            "connect to garbage",
            Admin::connect(client_config(&address)),
        )
        .await;
        assert_unreachable(result, &address);
        // Bounded by request_timeout_ms (5 s here) even when the peer never hangs up.
        assert!(
            started.elapsed() < Duration::from_secs(7),
            "{:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn connecting_where_nothing_listens_is_unreachable() {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let address = listener.local_addr().expect("bound address").to_string();
    drop(listener);
    let result = within(
        "connect to nothing",
        Admin::connect(client_config(&address)),
    )
    .await;
    assert_unreachable(result, &address);
}

/// Measures how fast one task can enqueue records; run with
/// `cargo test -p ferrolog-client --release --test mock_server -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput measurement, not a correctness test"]
async fn send_enqueue_rate() {
    let fake = start_fake(&[("bench", 8)]).await;
    let config = ProducerConfig {
        buffer_memory_bytes: 512 * 1024 * 1024,
        ..producer_config(&fake.address)
    };
    let producer = within("connect", Producer::connect(config))
        .await
        .expect("connect");
    let value = Bytes::from(vec![42u8; 100]);
    let count = 1_000_000;
    let mut futures = Vec::with_capacity(count);
    let started = Instant::now();
    for _ in 0..count {
        futures.push(
            producer
                .send(ProducerRecord::new("bench", value.clone()))
                .await,
        );
    }
    let enqueue = started.elapsed();
    within("flush", producer.flush()).await.expect("flush");
    let total = started.elapsed();
    println!(
        "enqueued {count} records in {enqueue:?} ({:.0} records/s); acknowledged after {total:?}",
        count as f64 / enqueue.as_secs_f64()
    );
    let last = futures.pop().expect("sent records");
    within("last", last).await.expect("acknowledged");
}
