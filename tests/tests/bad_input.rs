//! Bad input, as one table: every user-controlled field of every RPC (names, sizes,
//! offsets, partition numbers, configs, timeouts, malformed batches) sent over raw gRPC, so
//! no client library can pre-validate it. Each row names the gRPC code, the stable domain
//! code (`ferrolog-error-code`) and a piece of the message it must get. After every row the
//! node still answers; at the end the records acknowledged before the table, and the offset
//! a consumer group committed, read back unchanged, and the server process never exited.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use ferrolog_log::RecordBatchBuilder;
use ferrolog_proto::status::code_of;
use ferrolog_proto::v1::admin_service_client::AdminServiceClient;
use ferrolog_proto::v1::client_service_client::ClientServiceClient;
use ferrolog_proto::v1::controller_service_client::ControllerServiceClient;
use ferrolog_proto::v1::group_service_client::GroupServiceClient;
use ferrolog_proto::v1::replication_service_client::ReplicationServiceClient;
use ferrolog_proto::v1::{
    Acks, AlterConfigsRequest, AlterPartitionRequest, BrokerHeartbeatRequest, CommittedOffset,
    ConfigResourceType, ConsumerGroupHeartbeatRequest, ControlledShutdownRequest,
    CreatePartitionsRequest, CreateTopicRequest, DeleteGroupRequest, DeleteTopicRequest,
    DescribeConfigsRequest, DescribeGroupRequest, DescribeTopicRequest, ElectLeaderRequest,
    ErrorCode, FetchFormat, FetchRequest, FindCoordinatorRequest, ListOffsetsRequest,
    MetadataRequest, OffsetCommitRequest, OffsetFetchRequest, OffsetSpec, ProduceRequest,
    ReassignPartitionRequest, Record, RegisterBrokerRequest, ReplicaFetchPartition,
    ReplicaFetchRequest, SubscribeRequest,
};
use ferrolog_tests::{Server, free_ports, init_logging};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

/// The topic whose acknowledged records the table must not change.
const TOPIC: &str = "orders";
/// Partitions of [`TOPIC`]: partition numbers from this one up name nothing.
const TOPIC_PARTITIONS: i32 = 2;
/// A topic with a small `max.message.bytes`, for the record-too-large rows.
const SMALL_TOPIC: &str = "small-records";
const SMALL_MAX_MESSAGE_BYTES: usize = 1024;
/// The consumer group that has a member and a committed offset while the table runs.
const GROUP: &str = "billing";
/// The offset the group commits for `orders-0` before the table.
const COMMITTED_OFFSET: i64 = 2;
/// The group coordinator's internal topic.
const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// The one node's id (`ferrolog server` defaults to 1).
const NODE_ID: i32 = 1;
/// Longest any single call of the table may take: a call that does not answer by then is a
/// hang, and a mismatch.
const CALL_DEADLINE: Duration = Duration::from_secs(30);
/// Longest the liveness probe after each row may take.
const PROBE_DEADLINE: Duration = Duration::from_secs(10);

/// One request of the table, to one RPC of one service.
enum Call {
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    /// Refused either at once or as the stream's first message.
    Subscribe(SubscribeRequest),
    ListOffsets(ListOffsetsRequest),
    Metadata(MetadataRequest),
    CreateTopic(CreateTopicRequest),
    DeleteTopic(DeleteTopicRequest),
    DescribeTopic(DescribeTopicRequest),
    ElectLeader(ElectLeaderRequest),
    CreatePartitions(CreatePartitionsRequest),
    ReassignPartition(ReassignPartitionRequest),
    AlterConfigs(AlterConfigsRequest),
    DescribeConfigs(DescribeConfigsRequest),
    FindCoordinator(FindCoordinatorRequest),
    Heartbeat(ConsumerGroupHeartbeatRequest),
    OffsetCommit(OffsetCommitRequest),
    OffsetFetch(OffsetFetchRequest),
    DescribeGroup(DescribeGroupRequest),
    DeleteGroup(DeleteGroupRequest),
    /// Its errors travel in the answer, per partition: the first one counts.
    ReplicaFetch(ReplicaFetchRequest),
    ControllerCreateTopic(CreateTopicRequest),
    ControllerRegisterBroker(RegisterBrokerRequest),
    ControllerAlterPartition(AlterPartitionRequest),
    ControllerElectLeader(ElectLeaderRequest),
    ControllerBrokerHeartbeat(BrokerHeartbeatRequest),
    ControllerControlledShutdown(ControlledShutdownRequest),
    ControllerAlterConfigs(AlterConfigsRequest),
}

/// What a row must get back.
enum Expect {
    /// A valid request at an extreme (a zero or huge limit): answered, with the limit
    /// clamped or defaulted.
    Accepted,
    /// Refused with this gRPC code (`Code::Ok` for an error in the answer, as ReplicaFetch
    /// reports them), this domain code, and a message containing this text.
    Refused(Code, ErrorCode, String),
}

/// What a row got back.
enum Outcome {
    Answered,
    Refused {
        grpc: Code,
        code: Option<ErrorCode>,
        message: String,
    },
    NoAnswer,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Answered => write!(f, "answered"),
            Outcome::Refused {
                grpc,
                code,
                message,
            } => write!(
                f,
                "{grpc:?} / {} / {message:?}",
                code.map_or("<no domain code>", |c| c.as_str_name())
            ),
            Outcome::NoAnswer => write!(f, "no answer within {CALL_DEADLINE:?}"),
        }
    }
}

struct Case {
    name: &'static str,
    call: Call,
    expect: Expect,
}

fn refused(grpc: Code, code: ErrorCode, message: impl Into<String>) -> Expect {
    Expect::Refused(grpc, code, message.into())
}

/// The mismatch of `outcome` against `expect`, if any.
fn mismatch(expect: &Expect, outcome: &Outcome) -> Option<String> {
    match (expect, outcome) {
        (Expect::Accepted, Outcome::Answered) => None,
        (Expect::Accepted, other) => Some(format!("expected an answer, got {other}")),
        (
            Expect::Refused(grpc, code, text),
            Outcome::Refused {
                grpc: got_grpc,
                code: got_code,
                message,
            },
        ) if got_grpc == grpc && *got_code == Some(*code) && message.contains(text.as_str()) => {
            None
        }
        (Expect::Refused(grpc, code, text), other) => Some(format!(
            "expected {grpc:?} / {} / message containing {text:?}, got {other}",
            code.as_str_name()
        )),
    }
}

/// One client of each service, on one connection to the client port and one to the
/// controller port.
struct Clients {
    client: ClientServiceClient<Channel>,
    admin: AdminServiceClient<Channel>,
    group: GroupServiceClient<Channel>,
    replication: ReplicationServiceClient<Channel>,
    controller: ControllerServiceClient<Channel>,
}

impl Clients {
    async fn connect(client_address: &str, controller_address: &str) -> anyhow::Result<Self> {
        let channel = Channel::from_shared(format!("http://{client_address}"))?
            .connect()
            .await?;
        let controller = Channel::from_shared(format!("http://{controller_address}"))?
            .connect()
            .await?;
        Ok(Self {
            // Both limits high, so that the node's own limits are what the rows meet.
            client: ClientServiceClient::new(channel.clone())
                .max_decoding_message_size(256 * 1024 * 1024)
                .max_encoding_message_size(256 * 1024 * 1024),
            admin: AdminServiceClient::new(channel.clone()),
            group: GroupServiceClient::new(channel.clone()),
            replication: ReplicationServiceClient::new(channel),
            controller: ControllerServiceClient::new(controller),
        })
    }

    /// Sends one row's request and classifies the answer.
    async fn run(&mut self, call: Call) -> Outcome {
        match tokio::time::timeout(CALL_DEADLINE, self.send(call)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::NoAnswer,
        }
    }

    async fn send(&mut self, call: Call) -> Outcome {
        fn unary<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Outcome {
            match result {
                Ok(_) => Outcome::Answered,
                Err(status) => refusal(&status),
            }
        }
        match call {
            Call::Produce(r) => unary(self.client.produce(r).await),
            Call::Fetch(r) => unary(self.client.fetch(r).await),
            Call::Subscribe(r) => match self.client.subscribe(r).await {
                Err(status) => refusal(&status),
                Ok(stream) => match stream.into_inner().next().await {
                    Some(Ok(_)) => Outcome::Answered,
                    Some(Err(status)) => refusal(&status),
                    None => Outcome::Refused {
                        grpc: Code::Ok,
                        code: None,
                        message: "the stream ended without a message".to_owned(),
                    },
                },
            },
            Call::ListOffsets(r) => unary(self.client.list_offsets(r).await),
            Call::Metadata(r) => unary(self.client.metadata(r).await),
            Call::CreateTopic(r) => unary(self.admin.create_topic(r).await),
            Call::DeleteTopic(r) => unary(self.admin.delete_topic(r).await),
            Call::DescribeTopic(r) => unary(self.admin.describe_topic(r).await),
            Call::ElectLeader(r) => unary(self.admin.elect_leader(r).await),
            Call::CreatePartitions(r) => unary(self.admin.create_partitions(r).await),
            Call::ReassignPartition(r) => unary(self.admin.reassign_partition(r).await),
            Call::AlterConfigs(r) => unary(self.admin.alter_configs(r).await),
            Call::DescribeConfigs(r) => unary(self.admin.describe_configs(r).await),
            Call::FindCoordinator(r) => unary(self.group.find_coordinator(r).await),
            Call::Heartbeat(r) => unary(self.group.consumer_group_heartbeat(r).await),
            Call::OffsetCommit(r) => unary(self.group.offset_commit(r).await),
            Call::OffsetFetch(r) => unary(self.group.offset_fetch(r).await),
            Call::DescribeGroup(r) => unary(self.group.describe_group(r).await),
            Call::DeleteGroup(r) => unary(self.group.delete_group(r).await),
            Call::ReplicaFetch(r) => match self.replication.replica_fetch(r).await {
                Err(status) => refusal(&status),
                Ok(answer) => {
                    let answer = answer.into_inner();
                    match answer.partitions.iter().find(|p| p.error_code != 0) {
                        None => Outcome::Answered,
                        Some(p) => Outcome::Refused {
                            grpc: Code::Ok,
                            code: ErrorCode::try_from(p.error_code).ok(),
                            message: p.error_message.clone(),
                        },
                    }
                }
            },
            Call::ControllerCreateTopic(r) => unary(self.controller.create_topic(r).await),
            Call::ControllerRegisterBroker(r) => unary(self.controller.register_broker(r).await),
            Call::ControllerAlterPartition(r) => unary(self.controller.alter_partition(r).await),
            Call::ControllerElectLeader(r) => unary(self.controller.elect_leader(r).await),
            Call::ControllerBrokerHeartbeat(r) => unary(self.controller.broker_heartbeat(r).await),
            Call::ControllerControlledShutdown(r) => {
                unary(self.controller.controlled_shutdown(r).await)
            }
            Call::ControllerAlterConfigs(r) => unary(self.controller.alter_configs(r).await),
        }
    }

    /// Whether the node still answers a cheap RPC, on each of its ports.
    async fn node_answers(&mut self) -> Result<(), String> {
        let metadata = self.client.metadata(MetadataRequest::default());
        match tokio::time::timeout(PROBE_DEADLINE, metadata).await {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => return Err(format!("Metadata failed: {status}")),
            Err(_) => return Err(format!("Metadata gave no answer within {PROBE_DEADLINE:?}")),
        }
        let quorum = self
            .controller
            .quorum_status(ferrolog_proto::v1::QuorumStatusRequest {});
        match tokio::time::timeout(PROBE_DEADLINE, quorum).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(format!("QuorumStatus failed: {status}")),
            Err(_) => Err(format!(
                "QuorumStatus gave no answer within {PROBE_DEADLINE:?}"
            )),
        }
    }
}

fn refusal(status: &tonic::Status) -> Outcome {
    Outcome::Refused {
        grpc: status.code(),
        code: code_of(status),
        message: status.message().to_owned(),
    }
}

/// What the rows refer to: the state set up before the table.
struct Fixture {
    /// The group member's id and epoch.
    member_id: String,
    member_epoch: i32,
    /// Log end offset of `orders-0` before the table. Accepted produce rows write to
    /// `orders-1`, so it stays the log end throughout.
    log_end: i64,
    /// Leader epoch of `orders-0`.
    leader_epoch: i32,
}

fn record(value: &[u8]) -> Record {
    Record {
        key: None,
        value: Some(Bytes::copy_from_slice(value)),
        headers: Vec::new(),
        timestamp_ms: None,
        offset: 0,
    }
}

fn produce(topic: &str, partition: i32) -> ProduceRequest {
    ProduceRequest {
        topic: topic.to_owned(),
        partition,
        acks: Acks::All as i32,
        records: vec![record(b"x")],
        ..Default::default()
    }
}

fn produce_batch(batch: Vec<u8>) -> Call {
    Call::Produce(ProduceRequest {
        topic: TOPIC.to_owned(),
        acks: Acks::All as i32,
        record_batch: Bytes::from(batch),
        ..Default::default()
    })
}

fn fetch(topic: &str, partition: i32, offset: i64) -> FetchRequest {
    FetchRequest {
        topic: topic.to_owned(),
        partition,
        offset,
        ..Default::default()
    }
}

fn subscribe(topic: &str, partition: i32, offset: i64) -> SubscribeRequest {
    SubscribeRequest {
        topic: topic.to_owned(),
        partition,
        offset,
        ..Default::default()
    }
}

fn list_offsets(topic: &str, partition: i32, spec: i32) -> Call {
    Call::ListOffsets(ListOffsetsRequest {
        topic: topic.to_owned(),
        partition,
        spec,
        timestamp_ms: 0,
    })
}

fn create(name: &str, partitions: i32, replication_factor: i32) -> CreateTopicRequest {
    CreateTopicRequest {
        name: name.to_owned(),
        partitions,
        replication_factor,
        configs: HashMap::new(),
    }
}

fn create_with(config: &str, value: &str) -> Call {
    let mut request = create("configured", 1, 1);
    request.configs.insert(config.to_owned(), value.to_owned());
    Call::CreateTopic(request)
}

/// An AlterConfigs request for a resource given by its raw wire type.
fn alter_configs(resource_type: i32, name: &str, set: &[(&str, &str)]) -> AlterConfigsRequest {
    AlterConfigsRequest {
        resource_type,
        resource_name: name.to_owned(),
        set: set
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        delete: Vec::new(),
    }
}

fn elect(topic: &str, partition: i32, leader_id: i32) -> ElectLeaderRequest {
    ElectLeaderRequest {
        topic: topic.to_owned(),
        partition,
        leader_id,
    }
}

fn reassign(topic: &str, partition: i32, replicas: &[i32]) -> Call {
    Call::ReassignPartition(ReassignPartitionRequest {
        topic: topic.to_owned(),
        partition,
        replicas: replicas.to_vec(),
    })
}

fn heartbeat(group: &str, member_id: &str, member_epoch: i32) -> ConsumerGroupHeartbeatRequest {
    ConsumerGroupHeartbeatRequest {
        group_id: group.to_owned(),
        member_id: member_id.to_owned(),
        member_epoch,
        subscribed_topics: vec![TOPIC.to_owned()],
        ..Default::default()
    }
}

fn commit(group: &str, member_id: &str, member_epoch: i32, partition: i32, offset: i64) -> Call {
    Call::OffsetCommit(OffsetCommitRequest {
        group_id: group.to_owned(),
        member_id: member_id.to_owned(),
        member_epoch,
        offsets: vec![CommittedOffset {
            topic: TOPIC.to_owned(),
            partition,
            offset,
            ..Default::default()
        }],
    })
}

fn replica_fetch(replica_id: i32, topic: &str, partition: i32, leader_epoch: i32) -> Call {
    Call::ReplicaFetch(ReplicaFetchRequest {
        replica_id,
        max_wait_ms: 0,
        max_bytes: 1024 * 1024,
        partitions: vec![ReplicaFetchPartition {
            topic: topic.to_owned(),
            partition,
            leader_epoch,
            fetch_offset: 0,
            last_fetched_epoch: -1,
            durable_offset: 0,
            max_bytes: 1024 * 1024,
        }],
    })
}

/// A valid one-record RecordBatch v2, as the Rust client sends it.
fn valid_batch() -> Vec<u8> {
    let mut builder = RecordBatchBuilder::new(1_700_000_000_000);
    builder.push(1_700_000_000_000, Some(b"key"), Some(b"value"), &[]);
    builder.build().to_vec()
}

/// Byte positions in the RecordBatch v2 header (see `ferrolog_log::batch`).
const LENGTH_AT: usize = 8;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
const CRC_START: usize = 21;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const RECORD_COUNT_AT: usize = 57;

fn put_i32(batch: &mut [u8], at: usize, value: i32) {
    batch[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

/// Recomputes the CRC, so that only the field a row changed is wrong.
fn with_crc(mut batch: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    batch
}

/// A batch of 80 records of 1 MiB of zeros each, compressed with `codec` to a few hundred
/// kilobytes at most: past the broker's 64 MiB decompression bound.
fn decompression_bomb(codec: ferrolog_log::Compression) -> Vec<u8> {
    let zeros = vec![0u8; 1024 * 1024];
    let mut builder = RecordBatchBuilder::new(0);
    for _ in 0..80 {
        builder.push(0, None, Some(&zeros), &[]);
    }
    builder
        .build_compressed(codec)
        .expect("compressing into memory cannot fail")
        .to_vec()
}

fn batch_edited(edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut batch = valid_batch();
    edit(&mut batch);
    batch
}

/// Every row. Rows that change state (a topic created, a member added) are avoided: each
/// row leaves the node as it found it, except for records appended by accepted produces.
fn cases(fx: &Fixture) -> Vec<Case> {
    use Call as C;
    use Code::{AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, OutOfRange};
    use ErrorCode as E;
    let long_name = "x".repeat(250);
    let long_group = "g".repeat(256);
    let member = fx.member_id.as_str();
    let epoch = fx.member_epoch;
    let case = |name, call, expect| Case { name, call, expect };
    vec![
        // ---- ClientService.Produce: names and partition numbers.
        case(
            "produce to an empty topic name",
            C::Produce(produce("", 0)),
            refused(NotFound, E::UnknownTopic, "unknown topic ''"),
        ),
        case(
            "produce to an unknown topic",
            C::Produce(produce("nope", 0)),
            refused(NotFound, E::UnknownTopic, "unknown topic 'nope'"),
        ),
        case(
            "produce to a topic name with illegal characters",
            C::Produce(produce("bad/name", 0)),
            refused(NotFound, E::UnknownTopic, "unknown topic 'bad/name'"),
        ),
        case(
            "produce to a too long topic name",
            C::Produce(produce(&long_name, 0)),
            refused(NotFound, E::UnknownTopic, "unknown topic"),
        ),
        case(
            "produce to a negative partition",
            C::Produce(produce(TOPIC, -1)),
            refused(NotFound, E::UnknownPartition, "unknown partition -1"),
        ),
        case(
            "produce to the first partition past the last",
            C::Produce(produce(TOPIC, TOPIC_PARTITIONS)),
            refused(NotFound, E::UnknownPartition, "it has partitions 0..2"),
        ),
        case(
            "produce to partition i32::MAX",
            C::Produce(produce(TOPIC, i32::MAX)),
            refused(
                NotFound,
                E::UnknownPartition,
                "unknown partition 2147483647",
            ),
        ),
        case(
            "produce to partition i32::MIN",
            C::Produce(produce(TOPIC, i32::MIN)),
            refused(
                NotFound,
                E::UnknownPartition,
                "unknown partition -2147483648",
            ),
        ),
        case(
            "produce to the internal offsets topic",
            C::Produce(produce(OFFSETS_TOPIC, 0)),
            refused(InvalidArgument, E::InvalidRequest, "internal topic"),
        ),
        // ---- Produce: the payload.
        case(
            "produce with neither records nor record_batch",
            C::Produce(ProduceRequest {
                records: Vec::new(),
                ..produce(TOPIC, 0)
            }),
            refused(InvalidArgument, E::InvalidRequest, "no records"),
        ),
        case(
            "produce with both records and record_batch",
            C::Produce(ProduceRequest {
                record_batch: Bytes::from(valid_batch()),
                ..produce(TOPIC, 0)
            }),
            refused(
                InvalidArgument,
                E::InvalidRequest,
                "both records and record_batch",
            ),
        ),
        case(
            "produce a record with a negative timestamp",
            C::Produce(ProduceRequest {
                records: vec![Record {
                    timestamp_ms: Some(-5),
                    ..record(b"x")
                }],
                ..produce(TOPIC, 0)
            }),
            refused(InvalidArgument, E::InvalidRequest, "negative"),
        ),
        case(
            "produce a record larger than the topic's max.message.bytes",
            C::Produce(ProduceRequest {
                records: vec![record(&vec![b'r'; 2 * SMALL_MAX_MESSAGE_BYTES])],
                ..produce(SMALL_TOPIC, 0)
            }),
            refused(
                InvalidArgument,
                E::RecordTooLarge,
                "exceeds the maximum of 1024 bytes",
            ),
        ),
        case(
            "produce a record larger than the default max.message.bytes",
            C::Produce(ProduceRequest {
                records: vec![record(&vec![b'r'; 2 * 1024 * 1024])],
                ..produce(TOPIC, 0)
            }),
            refused(InvalidArgument, E::RecordTooLarge, "exceeds the maximum"),
        ),
        // ---- Produce: malformed record_batch.
        case(
            "produce a batch shorter than its header",
            produce_batch(valid_batch()[..30].to_vec()),
            refused(InvalidArgument, E::CorruptRecord, "header needs 61 bytes"),
        ),
        case(
            "produce a batch cut short in its records",
            produce_batch(batch_edited(|b| b.truncate(b.len() - 5))),
            refused(InvalidArgument, E::CorruptRecord, "batch length says"),
        ),
        case(
            "produce a batch with trailing bytes",
            produce_batch(batch_edited(|b| b.extend_from_slice(b"trailing"))),
            refused(InvalidArgument, E::CorruptRecord, "batch length says"),
        ),
        case(
            "produce two batches in one record_batch",
            produce_batch([valid_batch(), valid_batch()].concat()),
            refused(InvalidArgument, E::CorruptRecord, "batch length says"),
        ),
        case(
            "produce a batch with a bad CRC",
            produce_batch(batch_edited(|b| *b.last_mut().expect("non-empty") ^= 0xff)),
            refused(InvalidArgument, E::CorruptRecord, "CRC mismatch"),
        ),
        case(
            "produce a batch with magic 1",
            produce_batch(batch_edited(|b| b[MAGIC_AT] = 1)),
            refused(InvalidArgument, E::CorruptRecord, "unsupported magic 1"),
        ),
        case(
            "produce a batch whose length field claims more than was sent",
            produce_batch(batch_edited(|b| {
                let claimed = b.len() as i32;
                put_i32(b, LENGTH_AT, claimed + 1000);
            })),
            refused(InvalidArgument, E::CorruptRecord, "batch length says"),
        ),
        case(
            "produce a batch whose length field is smaller than the header",
            produce_batch(batch_edited(|b| put_i32(b, LENGTH_AT, 3))),
            refused(InvalidArgument, E::CorruptRecord, "smaller than the header"),
        ),
        case(
            "produce a batch whose length field is negative",
            produce_batch(batch_edited(|b| put_i32(b, LENGTH_AT, -1))),
            refused(InvalidArgument, E::CorruptRecord, "smaller than the header"),
        ),
        case(
            "produce a batch claiming i32::MAX records",
            produce_batch(with_crc(batch_edited(|b| {
                put_i32(b, RECORD_COUNT_AT, i32::MAX);
                put_i32(b, LAST_OFFSET_DELTA_AT, i32::MAX - 1);
            }))),
            refused(
                InvalidArgument,
                E::CorruptRecord,
                "record count is 2147483647 but the batch holds only 1",
            ),
        ),
        case(
            "produce a batch claiming zero records",
            produce_batch(with_crc(batch_edited(|b| {
                put_i32(b, RECORD_COUNT_AT, 0);
                put_i32(b, LAST_OFFSET_DELTA_AT, -1);
            }))),
            refused(
                InvalidArgument,
                E::CorruptRecord,
                "record count 0 is not positive",
            ),
        ),
        case(
            "produce a batch claiming a negative record count",
            produce_batch(with_crc(batch_edited(|b| {
                put_i32(b, RECORD_COUNT_AT, -7);
            }))),
            refused(
                InvalidArgument,
                E::CorruptRecord,
                "record count -7 is not positive",
            ),
        ),
        case(
            "produce a batch whose last offset delta disagrees with its count",
            produce_batch(with_crc(batch_edited(|b| {
                put_i32(b, LAST_OFFSET_DELTA_AT, 5);
            }))),
            refused(InvalidArgument, E::CorruptRecord, "last offset delta 5"),
        ),
        case(
            "produce a batch that says gzip but whose records are not gzip",
            produce_batch(with_crc(batch_edited(|b| b[ATTRIBUTES_AT + 1] = 1))),
            refused(
                InvalidArgument,
                E::CorruptRecord,
                "gzip data does not decompress",
            ),
        ),
        case(
            "produce a batch naming compression codec 5",
            produce_batch(with_crc(batch_edited(|b| b[ATTRIBUTES_AT + 1] = 5))),
            refused(
                InvalidArgument,
                E::CorruptRecord,
                "unknown compression codec 5",
            ),
        ),
        case(
            "produce a zstd batch that decompresses to 80 MiB (a decompression bomb)",
            produce_batch(decompression_bomb(ferrolog_log::Compression::Zstd)),
            refused(
                InvalidArgument,
                E::RecordTooLarge,
                "decompresses to more than 67108864 bytes",
            ),
        ),
        case(
            "produce a gzip batch that decompresses to 80 MiB (a decompression bomb)",
            produce_batch(decompression_bomb(ferrolog_log::Compression::Gzip)),
            refused(
                InvalidArgument,
                E::RecordTooLarge,
                "decompresses to more than 67108864 bytes",
            ),
        ),
        case(
            "produce 100 bytes of garbage as a batch",
            produce_batch((0..100u8).map(|i| i.wrapping_mul(37)).collect()),
            refused(InvalidArgument, E::CorruptRecord, "corrupt record batch"),
        ),
        // ---- Produce: acks and timeouts.
        case(
            "produce with acks 99",
            C::Produce(ProduceRequest {
                acks: 99,
                ..produce(TOPIC, 0)
            }),
            refused(InvalidArgument, E::InvalidRequest, "acks 99"),
        ),
        case(
            "produce with Kafka's acks -1",
            C::Produce(ProduceRequest {
                acks: -1,
                ..produce(TOPIC, 0)
            }),
            refused(InvalidArgument, E::InvalidRequest, "acks -1"),
        ),
        case(
            "produce with timeout 0 takes the default timeout",
            C::Produce(ProduceRequest {
                timeout_ms: 0,
                ..produce(TOPIC, 1)
            }),
            Expect::Accepted,
        ),
        case(
            "produce with timeout u32::MAX is clamped",
            C::Produce(ProduceRequest {
                timeout_ms: u32::MAX,
                ..produce(TOPIC, 1)
            }),
            Expect::Accepted,
        ),
        // ---- ClientService.Fetch.
        case(
            "fetch from an unknown topic",
            C::Fetch(fetch("nope", 0, 0)),
            refused(NotFound, E::UnknownTopic, "unknown topic 'nope'"),
        ),
        case(
            "fetch from an empty topic name",
            C::Fetch(fetch("", 0, 0)),
            refused(NotFound, E::UnknownTopic, "unknown topic ''"),
        ),
        case(
            "fetch from a negative partition",
            C::Fetch(fetch(TOPIC, -1, 0)),
            refused(NotFound, E::UnknownPartition, "unknown partition -1"),
        ),
        case(
            "fetch from partition i32::MAX",
            C::Fetch(fetch(TOPIC, i32::MAX, 0)),
            refused(
                NotFound,
                E::UnknownPartition,
                "unknown partition 2147483647",
            ),
        ),
        case(
            "fetch from a negative offset",
            C::Fetch(fetch(TOPIC, 0, -1)),
            refused(OutOfRange, E::OffsetOutOfRange, "offset -1 is out of range"),
        ),
        case(
            "fetch from i64::MIN",
            C::Fetch(fetch(TOPIC, 0, i64::MIN)),
            refused(OutOfRange, E::OffsetOutOfRange, "is out of range"),
        ),
        case(
            "fetch from one past the log end",
            C::Fetch(fetch(TOPIC, 0, fx.log_end + 1)),
            refused(OutOfRange, E::OffsetOutOfRange, "is out of range"),
        ),
        case(
            "fetch from i64::MAX",
            C::Fetch(fetch(TOPIC, 0, i64::MAX)),
            refused(OutOfRange, E::OffsetOutOfRange, "is out of range"),
        ),
        case(
            "fetch in an unknown format",
            C::Fetch(FetchRequest {
                format: 99,
                ..fetch(TOPIC, 0, 0)
            }),
            refused(InvalidArgument, E::InvalidRequest, "format 99"),
        ),
        case(
            "fetch with max_bytes 0 takes the default",
            C::Fetch(FetchRequest {
                max_bytes: 0,
                ..fetch(TOPIC, 0, 0)
            }),
            Expect::Accepted,
        ),
        case(
            "fetch with max_bytes u32::MAX is clamped",
            C::Fetch(FetchRequest {
                max_bytes: u32::MAX,
                format: FetchFormat::Batches as i32,
                ..fetch(TOPIC, 0, 0)
            }),
            Expect::Accepted,
        ),
        case(
            "fetch with max_wait_ms u32::MAX answers once data is there",
            C::Fetch(FetchRequest {
                max_wait_ms: u32::MAX,
                ..fetch(TOPIC, 0, 0)
            }),
            Expect::Accepted,
        ),
        // ---- ClientService.Subscribe.
        case(
            "subscribe to an unknown topic",
            C::Subscribe(subscribe("nope", 0, 0)),
            refused(NotFound, E::UnknownTopic, "unknown topic 'nope'"),
        ),
        case(
            "subscribe to a negative partition",
            C::Subscribe(subscribe(TOPIC, -3, 0)),
            refused(NotFound, E::UnknownPartition, "unknown partition -3"),
        ),
        case(
            "subscribe from a negative offset",
            C::Subscribe(subscribe(TOPIC, 0, -5)),
            refused(OutOfRange, E::OffsetOutOfRange, "offset -5 is out of range"),
        ),
        case(
            "subscribe from past the log end",
            C::Subscribe(subscribe(TOPIC, 0, i64::MAX)),
            refused(OutOfRange, E::OffsetOutOfRange, "is out of range"),
        ),
        case(
            "subscribe in an unknown format",
            C::Subscribe(SubscribeRequest {
                format: 7,
                ..subscribe(TOPIC, 0, 0)
            }),
            refused(InvalidArgument, E::InvalidRequest, "format 7"),
        ),
        case(
            "subscribe with max_bytes u32::MAX is clamped",
            C::Subscribe(SubscribeRequest {
                max_bytes: u32::MAX,
                ..subscribe(TOPIC, 0, 0)
            }),
            Expect::Accepted,
        ),
        // ---- ClientService.ListOffsets and Metadata.
        case(
            "list offsets of an unknown topic",
            list_offsets("nope", 0, OffsetSpec::Latest as i32),
            refused(NotFound, E::UnknownTopic, "unknown topic 'nope'"),
        ),
        case(
            "list offsets of a negative partition",
            list_offsets(TOPIC, -1, OffsetSpec::Latest as i32),
            refused(NotFound, E::UnknownPartition, "unknown partition -1"),
        ),
        case(
            "list offsets of partition i32::MAX",
            list_offsets(TOPIC, i32::MAX, OffsetSpec::Earliest as i32),
            refused(
                NotFound,
                E::UnknownPartition,
                "unknown partition 2147483647",
            ),
        ),
        case(
            "list offsets with an unknown spec",
            list_offsets(TOPIC, 0, 42),
            refused(InvalidArgument, E::InvalidRequest, "unknown offset spec 42"),
        ),
        case(
            "list offsets by a negative timestamp answers the first offset",
            C::ListOffsets(ListOffsetsRequest {
                topic: TOPIC.to_owned(),
                partition: 0,
                spec: OffsetSpec::Timestamp as i32,
                timestamp_ms: i64::MIN,
            }),
            Expect::Accepted,
        ),
        case(
            "metadata of an unknown topic",
            C::Metadata(MetadataRequest {
                topics: vec![TOPIC.to_owned(), "nope".to_owned()],
            }),
            refused(NotFound, E::UnknownTopic, "unknown topic 'nope'"),
        ),
        case(
            "metadata of an empty topic name",
            C::Metadata(MetadataRequest {
                topics: vec![String::new()],
            }),
            refused(NotFound, E::UnknownTopic, "unknown topic ''"),
        ),
        // ---- AdminService.CreateTopic: names.
        case(
            "create a topic with an empty name",
            C::CreateTopic(create("", 1, 1)),
            refused(InvalidArgument, E::InvalidTopicName, "it is empty"),
        ),
        case(
            "create a topic named '.'",
            C::CreateTopic(create(".", 1, 1)),
            refused(InvalidArgument, E::InvalidTopicName, "reserved"),
        ),
        case(
            "create a topic named '..'",
            C::CreateTopic(create("..", 1, 1)),
            refused(InvalidArgument, E::InvalidTopicName, "reserved"),
        ),
        case(
            "create a topic with a 250-character name",
            C::CreateTopic(create(&long_name, 1, 1)),
            refused(InvalidArgument, E::InvalidTopicName, "at most 249"),
        ),
        case(
            "create a topic with a slash in its name",
            C::CreateTopic(create("bad/name", 1, 1)),
            refused(InvalidArgument, E::InvalidTopicName, "contains '/'"),
        ),
        case(
            "create a topic with a space in its name",
            C::CreateTopic(create("with space", 1, 1)),
            refused(InvalidArgument, E::InvalidTopicName, "contains ' '"),
        ),
        case(
            "create a topic with a non-ASCII name",
            C::CreateTopic(create("ordérs", 1, 1)),
            refused(InvalidArgument, E::InvalidTopicName, "only ASCII letters"),
        ),
        case(
            "create a topic with a NUL in its name",
            C::CreateTopic(create("nul\0name", 1, 1)),
            refused(InvalidArgument, E::InvalidTopicName, "contains '\\0'"),
        ),
        case(
            "create a topic that exists",
            C::CreateTopic(create(TOPIC, 1, 1)),
            refused(AlreadyExists, E::TopicAlreadyExists, "already exists"),
        ),
        // ---- CreateTopic: partitions and replication factor.
        case(
            "create a topic with 0 partitions",
            C::CreateTopic(create("fresh", 0, 1)),
            refused(InvalidArgument, E::InvalidPartitions, "between 1 and 4096"),
        ),
        case(
            "create a topic with -1 partitions",
            C::CreateTopic(create("fresh", -1, 1)),
            refused(
                InvalidArgument,
                E::InvalidPartitions,
                "invalid partition count -1",
            ),
        ),
        case(
            "create a topic with one partition over the maximum",
            C::CreateTopic(create("fresh", 4097, 1)),
            refused(
                InvalidArgument,
                E::InvalidPartitions,
                "invalid partition count 4097",
            ),
        ),
        case(
            "create a topic with i32::MAX partitions",
            C::CreateTopic(create("fresh", i32::MAX, 1)),
            refused(InvalidArgument, E::InvalidPartitions, "between 1 and 4096"),
        ),
        case(
            "create a topic with more replicas than brokers",
            C::CreateTopic(create("fresh", 1, 2)),
            refused(
                InvalidArgument,
                E::InvalidReplicationFactor,
                "invalid replication factor 2",
            ),
        ),
        case(
            "create a topic with replication factor -1",
            C::CreateTopic(create("fresh", 1, -1)),
            refused(
                InvalidArgument,
                E::InvalidReplicationFactor,
                "invalid replication factor -1",
            ),
        ),
        case(
            "create a topic with replication factor i32::MAX",
            C::CreateTopic(create("fresh", 1, i32::MAX)),
            refused(
                InvalidArgument,
                E::InvalidReplicationFactor,
                "the 1 registered broker",
            ),
        ),
        // ---- CreateTopic: configs.
        case(
            "create a topic with retention.ms=abc",
            create_with("retention.ms", "abc"),
            refused(
                InvalidArgument,
                E::InvalidConfig,
                "invalid value 'abc' for topic config 'retention.ms'",
            ),
        ),
        case(
            "create a topic with retention.bytes=-2",
            create_with("retention.bytes", "-2"),
            refused(InvalidArgument, E::InvalidConfig, "'retention.bytes'"),
        ),
        case(
            "create a topic with an unknown config",
            create_with("retention.hours", "1"),
            refused(
                InvalidArgument,
                E::InvalidConfig,
                "unknown topic config 'retention.hours'",
            ),
        ),
        case(
            "create a topic with an empty config name",
            create_with("", "1"),
            refused(InvalidArgument, E::InvalidConfig, "unknown topic config ''"),
        ),
        case(
            "create a topic with segment.bytes below the minimum",
            create_with("segment.bytes", "1"),
            refused(InvalidArgument, E::InvalidConfig, "between 1024 and"),
        ),
        case(
            "create a topic with segment.ms=0",
            create_with("segment.ms", "0"),
            refused(InvalidArgument, E::InvalidConfig, "'segment.ms'"),
        ),
        case(
            "create a topic with max.message.bytes over i32",
            create_with("max.message.bytes", "4294967296"),
            refused(InvalidArgument, E::InvalidConfig, "'max.message.bytes'"),
        ),
        case(
            "create a topic with min.insync.replicas=0",
            create_with("min.insync.replicas", "0"),
            refused(InvalidArgument, E::InvalidConfig, "'min.insync.replicas'"),
        ),
        case(
            "create a topic with cleanup.policy=compacted",
            create_with("cleanup.policy", "compacted"),
            refused(
                InvalidArgument,
                E::InvalidConfig,
                "'delete', 'compact' or 'compact,delete'",
            ),
        ),
        case(
            "create a topic with compression.type=brotli",
            create_with("compression.type", "brotli"),
            refused(InvalidArgument, E::InvalidConfig, "'compression.type'"),
        ),
        // ---- AlterConfigs / DescribeConfigs (the TOPIC's configs must not change).
        case(
            "alter an unknown config of a topic",
            C::AlterConfigs(alter_configs(0, TOPIC, &[("retention.hours", "1")])),
            refused(
                InvalidArgument,
                E::InvalidConfig,
                "unknown topic config 'retention.hours'",
            ),
        ),
        case(
            "alter a topic config to a bad value beside a good one",
            C::AlterConfigs(alter_configs(
                0,
                TOPIC,
                &[("retention.ms", "1"), ("segment.ms", "0")],
            )),
            refused(
                InvalidArgument,
                E::InvalidConfig,
                "'segment.ms': milliseconds >= 1",
            ),
        ),
        case(
            "alter the configs of an unknown topic",
            C::AlterConfigs(alter_configs(0, "nope", &[("retention.ms", "1")])),
            refused(NotFound, E::UnknownTopic, "unknown topic 'nope'"),
        ),
        case(
            "alter a config resource of an unknown type",
            C::AlterConfigs(alter_configs(9, TOPIC, &[("retention.ms", "1")])),
            refused(
                InvalidArgument,
                E::InvalidRequest,
                "unknown config resource type 9",
            ),
        ),
        case(
            "alter the cluster resource under a name",
            C::AlterConfigs(alter_configs(
                ConfigResourceType::Cluster as i32,
                TOPIC,
                &[("retention.ms", "1")],
            )),
            refused(InvalidArgument, E::InvalidRequest, "has no name"),
        ),
        case(
            "alter a bad cluster default",
            C::AlterConfigs(alter_configs(
                ConfigResourceType::Cluster as i32,
                "",
                &[("max.message.bytes", "-1")],
            )),
            refused(InvalidArgument, E::InvalidConfig, "'max.message.bytes'"),
        ),
        case(
            "describe the configs of an unknown topic",
            C::DescribeConfigs(DescribeConfigsRequest {
                resource_type: 0,
                resource_name: "nope".to_owned(),
            }),
            refused(NotFound, E::UnknownTopic, "unknown topic 'nope'"),
        ),
        case(
            "describe a config resource of an unknown type",
            C::DescribeConfigs(DescribeConfigsRequest {
                resource_type: -1,
                resource_name: String::new(),
            }),
            refused(
                InvalidArgument,
                E::InvalidRequest,
                "unknown config resource type -1",
            ),
        ),
        case(
            "controller: alter a topic config to a bad value",
            C::ControllerAlterConfigs(alter_configs(0, TOPIC, &[("retention.bytes", "-2")])),
            refused(InvalidArgument, E::InvalidConfig, "'retention.bytes'"),
        ),
        // ---- AdminService: delete, describe, elect, grow, reassign.
        case(
            "delete an unknown topic",
            C::DeleteTopic(DeleteTopicRequest {
                name: "nope".to_owned(),
            }),
            refused(NotFound, E::UnknownTopic, "unknown topic 'nope'"),
        ),
        case(
            "delete a topic with an empty name",
            C::DeleteTopic(DeleteTopicRequest {
                name: String::new(),
            }),
            refused(NotFound, E::UnknownTopic, "unknown topic ''"),
        ),
        case(
            "delete the internal offsets topic",
            C::DeleteTopic(DeleteTopicRequest {
                name: OFFSETS_TOPIC.to_owned(),
            }),
            refused(InvalidArgument, E::InvalidRequest, "internal topic"),
        ),
        case(
            "describe an unknown topic",
            C::DescribeTopic(DescribeTopicRequest {
                name: "nope".to_owned(),
            }),
            refused(NotFound, E::UnknownTopic, "unknown topic 'nope'"),
        ),
        case(
            "elect a leader of an unknown topic",
            C::ElectLeader(elect("nope", 0, NODE_ID)),
            refused(NotFound, E::UnknownTopic, "unknown topic 'nope'"),
        ),
        case(
            "elect a leader of a negative partition",
            C::ElectLeader(elect(TOPIC, -1, NODE_ID)),
            refused(NotFound, E::UnknownPartition, "unknown partition orders--1"),
        ),
        case(
            "elect a leader of a partition past the last",
            C::ElectLeader(elect(TOPIC, TOPIC_PARTITIONS, NODE_ID)),
            refused(NotFound, E::UnknownPartition, "unknown partition orders-2"),
        ),
        case(
            "elect a broker that is not a replica",
            C::ElectLeader(elect(TOPIC, 0, 7)),
            refused(
                FailedPrecondition,
                E::IneligibleReplica,
                "broker 7 cannot lead orders-0",
            ),
        ),
        case(
            "elect broker -1",
            C::ElectLeader(elect(TOPIC, 0, -1)),
            refused(FailedPrecondition, E::IneligibleReplica, "not in the ISR"),
        ),
        case(
            "grow an unknown topic",
            C::CreatePartitions(CreatePartitionsRequest {
                topic: "nope".to_owned(),
                partitions: 3,
            }),
            refused(NotFound, E::UnknownTopic, "unknown topic 'nope'"),
        ),
        case(
            "shrink a topic",
            C::CreatePartitions(CreatePartitionsRequest {
                topic: TOPIC.to_owned(),
                partitions: 1,
            }),
            refused(InvalidArgument, E::InvalidPartitions, "must be larger"),
        ),
        case(
            "grow a topic to its current count",
            C::CreatePartitions(CreatePartitionsRequest {
                topic: TOPIC.to_owned(),
                partitions: TOPIC_PARTITIONS,
            }),
            refused(InvalidArgument, E::InvalidPartitions, "must be larger"),
        ),
        case(
            "grow a topic to -1 partitions",
            C::CreatePartitions(CreatePartitionsRequest {
                topic: TOPIC.to_owned(),
                partitions: -1,
            }),
            refused(InvalidArgument, E::InvalidPartitions, "not -1"),
        ),
        case(
            "grow a topic over the maximum",
            C::CreatePartitions(CreatePartitionsRequest {
                topic: TOPIC.to_owned(),
                partitions: i32::MAX,
            }),
            refused(InvalidArgument, E::InvalidPartitions, "at most 4096"),
        ),
        case(
            "grow the internal offsets topic",
            C::CreatePartitions(CreatePartitionsRequest {
                topic: OFFSETS_TOPIC.to_owned(),
                partitions: 4096,
            }),
            refused(InvalidArgument, E::InvalidRequest, "internal topic"),
        ),
        case(
            "reassign to a duplicated broker",
            reassign(TOPIC, 0, &[NODE_ID, NODE_ID]),
            refused(
                InvalidArgument,
                E::InvalidReplicaAssignment,
                "broker 1 appears twice",
            ),
        ),
        case(
            "reassign to an unknown broker",
            reassign(TOPIC, 0, &[NODE_ID, 99]),
            refused(
                InvalidArgument,
                E::InvalidReplicaAssignment,
                "broker 99 is not registered",
            ),
        ),
        case(
            "reassign to a negative broker id",
            reassign(TOPIC, 0, &[-1]),
            refused(
                InvalidArgument,
                E::InvalidReplicaAssignment,
                "broker -1 is not registered",
            ),
        ),
        case(
            "reassign to no broker",
            reassign(TOPIC, 0, &[]),
            refused(
                InvalidArgument,
                E::InvalidReplicaAssignment,
                "at least one replica",
            ),
        ),
        case(
            "reassign a partition of an unknown topic",
            reassign("nope", 0, &[NODE_ID]),
            refused(NotFound, E::UnknownTopic, "unknown topic 'nope'"),
        ),
        case(
            "reassign a partition past the last",
            reassign(TOPIC, 5, &[NODE_ID]),
            refused(NotFound, E::UnknownPartition, "unknown partition orders-5"),
        ),
        // ---- GroupService: group ids.
        case(
            "find the coordinator of an empty group id",
            C::FindCoordinator(FindCoordinatorRequest {
                group_id: String::new(),
            }),
            refused(InvalidArgument, E::InvalidRequest, "invalid group id"),
        ),
        case(
            "find the coordinator of a 256-character group id",
            C::FindCoordinator(FindCoordinatorRequest {
                group_id: long_group.clone(),
            }),
            refused(InvalidArgument, E::InvalidRequest, "1 to 255 characters"),
        ),
        case(
            "find the coordinator of a group id with a control character",
            C::FindCoordinator(FindCoordinatorRequest {
                group_id: "bad\ngroup".to_owned(),
            }),
            refused(InvalidArgument, E::InvalidRequest, "no control characters"),
        ),
        case(
            "heartbeat with an empty group id",
            C::Heartbeat(heartbeat("", "", 0)),
            refused(InvalidArgument, E::InvalidRequest, "invalid group id"),
        ),
        case(
            "heartbeat with a 256-character group id",
            C::Heartbeat(heartbeat(&long_group, "", 0)),
            refused(InvalidArgument, E::InvalidRequest, "invalid group id"),
        ),
        case(
            "join without subscribed topics",
            C::Heartbeat(ConsumerGroupHeartbeatRequest {
                subscribed_topics: Vec::new(),
                ..heartbeat(GROUP, "", 0)
            }),
            refused(
                InvalidArgument,
                E::InvalidRequest,
                "at least one subscribed topic",
            ),
        ),
        case(
            "join with an unknown assignor",
            C::Heartbeat(ConsumerGroupHeartbeatRequest {
                assignor: "magic".to_owned(),
                ..heartbeat(GROUP, "", 0)
            }),
            refused(
                InvalidArgument,
                E::InvalidRequest,
                "unknown assignor 'magic'",
            ),
        ),
        case(
            "heartbeat as an unknown member",
            C::Heartbeat(heartbeat(GROUP, "no-such-member", 3)),
            refused(FailedPrecondition, E::UnknownMemberId, "no-such-member"),
        ),
        case(
            "heartbeat with an epoch ahead of the member's",
            C::Heartbeat(heartbeat(GROUP, member, epoch + 5)),
            refused(FailedPrecondition, E::StaleMemberEpoch, member),
        ),
        case(
            "heartbeat with a negative epoch other than leave",
            C::Heartbeat(heartbeat(GROUP, member, -7)),
            refused(FailedPrecondition, E::StaleMemberEpoch, "-7"),
        ),
        case(
            "heartbeat with epoch i32::MIN",
            C::Heartbeat(heartbeat(GROUP, member, i32::MIN)),
            refused(FailedPrecondition, E::StaleMemberEpoch, "-2147483648"),
        ),
        // ---- GroupService: offsets and group administration.
        case(
            "commit a negative offset",
            commit(GROUP, member, epoch, 0, -1),
            refused(
                InvalidArgument,
                E::InvalidRequest,
                "offset -1 for orders-0 is negative",
            ),
        ),
        case(
            "commit i64::MIN as an offset",
            commit(GROUP, member, epoch, 0, i64::MIN),
            refused(InvalidArgument, E::InvalidRequest, "is negative"),
        ),
        case(
            "commit for a negative partition",
            commit(GROUP, member, epoch, -3, 1),
            refused(
                InvalidArgument,
                E::InvalidRequest,
                "partition -3 is negative",
            ),
        ),
        case(
            "commit for a partition the topic does not have",
            commit(GROUP, member, epoch, TOPIC_PARTITIONS, 1),
            refused(NotFound, E::UnknownPartition, "unknown partition 2"),
        ),
        case(
            "commit for an unknown topic",
            C::OffsetCommit(OffsetCommitRequest {
                group_id: GROUP.to_owned(),
                member_id: member.to_owned(),
                member_epoch: epoch,
                offsets: vec![CommittedOffset {
                    topic: "nope".to_owned(),
                    partition: 0,
                    offset: 1,
                    ..Default::default()
                }],
            }),
            refused(NotFound, E::UnknownTopic, "unknown topic 'nope'"),
        ),
        case(
            "commit as an unknown member",
            commit(GROUP, "no-such-member", epoch, 0, 1),
            refused(FailedPrecondition, E::UnknownMemberId, "no-such-member"),
        ),
        case(
            "commit with a stale member epoch",
            commit(GROUP, member, epoch + 5, 0, 1),
            refused(FailedPrecondition, E::StaleMemberEpoch, member),
        ),
        case(
            "commit without a member id while the group has members",
            commit(GROUP, "", 0, 0, 1),
            refused(FailedPrecondition, E::NonEmptyGroup, "billing"),
        ),
        case(
            "commit to an empty group id",
            commit("", member, epoch, 0, 1),
            refused(InvalidArgument, E::InvalidRequest, "invalid group id"),
        ),
        case(
            "fetch the offsets of an empty group id",
            C::OffsetFetch(OffsetFetchRequest {
                group_id: String::new(),
                topics: Vec::new(),
            }),
            refused(InvalidArgument, E::InvalidRequest, "invalid group id"),
        ),
        case(
            "describe an unknown group",
            C::DescribeGroup(DescribeGroupRequest {
                group_id: "no-such-group".to_owned(),
            }),
            refused(
                NotFound,
                E::GroupIdNotFound,
                "group 'no-such-group' does not exist",
            ),
        ),
        case(
            "describe a group with a control character in its id",
            C::DescribeGroup(DescribeGroupRequest {
                group_id: "bad\u{7}group".to_owned(),
            }),
            refused(InvalidArgument, E::InvalidRequest, "invalid group id"),
        ),
        case(
            "delete an unknown group",
            C::DeleteGroup(DeleteGroupRequest {
                group_id: "no-such-group".to_owned(),
            }),
            refused(
                NotFound,
                E::GroupIdNotFound,
                "group 'no-such-group' does not exist",
            ),
        ),
        case(
            "delete a group that has members",
            C::DeleteGroup(DeleteGroupRequest {
                group_id: GROUP.to_owned(),
            }),
            refused(FailedPrecondition, E::NonEmptyGroup, "billing"),
        ),
        // ---- ReplicationService (on the client port, so any client reaches it).
        case(
            "replica fetch from a broker that is not a replica",
            replica_fetch(7, TOPIC, 0, fx.leader_epoch),
            refused(
                Code::Ok,
                E::InvalidRequest,
                "broker 7 is not a follower of orders-0",
            ),
        ),
        case(
            "replica fetch claiming to be the leader itself",
            replica_fetch(NODE_ID, TOPIC, 0, fx.leader_epoch),
            refused(Code::Ok, E::InvalidRequest, "broker 1 is not a follower"),
        ),
        case(
            "replica fetch of a negative partition",
            replica_fetch(7, TOPIC, -1, fx.leader_epoch),
            refused(Code::Ok, E::UnknownPartition, "unknown partition -1"),
        ),
        case(
            "replica fetch at a leader epoch from the future",
            replica_fetch(7, TOPIC, 0, fx.leader_epoch + 100),
            refused(Code::Ok, E::NotLeader, "led by this broker at leader epoch"),
        ),
        // ---- ControllerService (on the controller port).
        case(
            "controller: create a topic with an invalid name",
            C::ControllerCreateTopic(create("bad/name", 1, 1)),
            refused(InvalidArgument, E::InvalidTopicName, "contains '/'"),
        ),
        case(
            "controller: register broker -1",
            C::ControllerRegisterBroker(RegisterBrokerRequest {
                broker_id: -1,
                address: "127.0.0.1:1".to_owned(),
                incarnation_id: 1,
            }),
            refused(InvalidArgument, E::InvalidRequest, "broker id -1"),
        ),
        case(
            "controller: register a broker without an address",
            C::ControllerRegisterBroker(RegisterBrokerRequest {
                broker_id: 42,
                address: String::new(),
                incarnation_id: 1,
            }),
            refused(InvalidArgument, E::InvalidRequest, "address"),
        ),
        case(
            "controller: register a broker at an address without a port",
            C::ControllerRegisterBroker(RegisterBrokerRequest {
                broker_id: 42,
                address: "localhost".to_owned(),
                incarnation_id: 1,
            }),
            refused(InvalidArgument, E::InvalidRequest, "host:port"),
        ),
        case(
            "controller: register the running broker's id from another process",
            C::ControllerRegisterBroker(RegisterBrokerRequest {
                broker_id: NODE_ID,
                address: "127.0.0.1:1".to_owned(),
                incarnation_id: 1,
            }),
            refused(
                FailedPrecondition,
                E::DuplicateBrokerId,
                "broker id 1 is registered by another running process",
            ),
        ),
        case(
            "controller: alter the ISR at stale epochs",
            C::ControllerAlterPartition(AlterPartitionRequest {
                topic: TOPIC.to_owned(),
                partition: 0,
                leader_id: NODE_ID,
                leader_epoch: fx.leader_epoch + 10,
                partition_epoch: 0,
                new_isr: vec![NODE_ID],
            }),
            refused(
                FailedPrecondition,
                E::FencedEpoch,
                "stale request for orders-0",
            ),
        ),
        case(
            "controller: alter the ISR of an unknown topic",
            C::ControllerAlterPartition(AlterPartitionRequest {
                topic: "nope".to_owned(),
                partition: 0,
                leader_id: NODE_ID,
                leader_epoch: 0,
                partition_epoch: 0,
                new_isr: vec![NODE_ID],
            }),
            refused(NotFound, E::UnknownTopic, "unknown topic 'nope'"),
        ),
        case(
            "controller: elect a broker that is not a replica",
            C::ControllerElectLeader(elect(TOPIC, 0, 7)),
            refused(FailedPrecondition, E::IneligibleReplica, "not in the ISR"),
        ),
        // Both are answered as for a fenced broker: the heartbeat says `fenced`, and a
        // shutdown has no leadership to move, so a broker stopping before it registered
        // does not fail.
        case(
            "controller: heartbeat of an unregistered broker",
            C::ControllerBrokerHeartbeat(BrokerHeartbeatRequest {
                broker_id: 99,
                incarnation_id: 1,
            }),
            Expect::Accepted,
        ),
        case(
            "controller: controlled shutdown of an unregistered broker",
            C::ControllerControlledShutdown(ControlledShutdownRequest { broker_id: 99 }),
            Expect::Accepted,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_its_stable_code_and_changes_nothing_acknowledged()
-> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let controller_port = free_ports(1)?[0];
    let controller_address = format!("127.0.0.1:{controller_port}");
    let mut server = Server::start_with(dir.path(), &["--controller-listen", &controller_address])?;
    let mut clients = Clients::connect(&server.grpc_address, &controller_address).await?;

    tracing::info!("phase: set up the topics, acknowledged records and a group to protect");
    clients
        .admin
        .create_topic(create(TOPIC, TOPIC_PARTITIONS, 1))
        .await?;
    let mut small = create(SMALL_TOPIC, 1, 1);
    small.configs.insert(
        "max.message.bytes".to_owned(),
        SMALL_MAX_MESSAGE_BYTES.to_string(),
    );
    clients.admin.create_topic(small).await?;
    let mut acknowledged: Vec<(i64, Vec<u8>)> = Vec::new();
    for i in 0..4 {
        let value = format!("acknowledged-{i}").into_bytes();
        let answer = clients
            .client
            .produce(ProduceRequest {
                records: vec![record(&value)],
                ..produce(TOPIC, 0)
            })
            .await?
            .into_inner();
        acknowledged.push((answer.base_offset, value));
    }
    let joined = clients
        .group
        .consumer_group_heartbeat(heartbeat(GROUP, "", 0))
        .await?
        .into_inner();
    clients
        .group
        .offset_commit(OffsetCommitRequest {
            group_id: GROUP.to_owned(),
            member_id: joined.member_id.clone(),
            member_epoch: joined.member_epoch,
            offsets: vec![CommittedOffset {
                topic: TOPIC.to_owned(),
                partition: 0,
                offset: COMMITTED_OFFSET,
                ..Default::default()
            }],
        })
        .await?;
    let described = clients
        .admin
        .describe_topic(DescribeTopicRequest {
            name: TOPIC.to_owned(),
        })
        .await?
        .into_inner();
    let partition0 = described
        .partitions
        .iter()
        .find(|p| p.partition == 0)
        .ok_or_else(|| anyhow::anyhow!("orders-0 missing from {described:?}"))?;
    let fixture = Fixture {
        member_id: joined.member_id,
        member_epoch: joined.member_epoch,
        log_end: partition0.log_end_offset,
        leader_epoch: partition0.leader_epoch,
    };

    let cases = cases(&fixture);
    let rows = cases.len();
    let mut mismatches: Vec<String> = Vec::new();
    for case in cases {
        tracing::info!("phase: {}", case.name);
        let outcome = clients.run(case.call).await;
        tracing::info!("  got: {outcome}");
        if let Some(why) = mismatch(&case.expect, &outcome) {
            mismatches.push(format!("{}: {why}", case.name));
        }
        if let Err(why) = clients.node_answers().await {
            mismatches.push(format!("{}: the node stopped answering: {why}", case.name));
        }
        if let Some(status) = server.exit_status()? {
            mismatches.push(format!("{}: the server exited: {status}", case.name));
            break;
        }
    }

    tracing::info!("phase: the topic's configs are unchanged");
    let configs_after = clients
        .admin
        .describe_topic(DescribeTopicRequest {
            name: TOPIC.to_owned(),
        })
        .await?
        .into_inner()
        .config_entries;
    if configs_after != described.config_entries {
        mismatches.push(format!(
            "the configs of {TOPIC} changed from {:?} to {configs_after:?}",
            described.config_entries
        ));
    }

    tracing::info!("phase: the acknowledged records read back unchanged at their offsets");
    let first = acknowledged[0].0;
    let fetched = clients
        .client
        .fetch(fetch(TOPIC, 0, first))
        .await?
        .into_inner();
    for (offset, value) in &acknowledged {
        let found = fetched.records.iter().find(|r| r.offset == *offset);
        if found.and_then(|r| r.value.as_deref()) != Some(value.as_slice()) {
            mismatches.push(format!(
                "acknowledged record at offset {offset} ({:?}) reads back as {found:?}",
                String::from_utf8_lossy(value)
            ));
        }
    }

    tracing::info!("phase: the group's committed offset is unchanged");
    let committed = clients
        .group
        .offset_fetch(OffsetFetchRequest {
            group_id: GROUP.to_owned(),
            topics: vec![TOPIC.to_owned()],
        })
        .await?
        .into_inner();
    let offsets: Vec<(String, i32, i64)> = committed
        .offsets
        .iter()
        .map(|o| (o.topic.clone(), o.partition, o.offset))
        .collect();
    if offsets != [(TOPIC.to_owned(), 0, COMMITTED_OFFSET)] {
        mismatches.push(format!(
            "the group's committed offsets changed: {offsets:?}"
        ));
    }

    tracing::info!("phase: the server process never exited");
    if let Some(status) = server.exit_status()? {
        mismatches.push(format!("the server exited: {status}"));
    }
    assert!(
        mismatches.is_empty(),
        "{} of {rows} rows (or final checks) mismatched:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    Ok(())
}
