//! The gRPC API as any language's generated stubs see it: reflection and health (what
//! grpcurl needs), structured and ready-made-batch produce, fetch in both formats with
//! long-poll, the Subscribe stream, ListOffsets by timestamp, and stable error codes.

use std::time::Duration;

use bytes::Bytes;
use ferrolog_log::RecordBatchBuilder;
use ferrolog_proto::v1::admin_service_client::AdminServiceClient;
use ferrolog_proto::v1::client_service_client::ClientServiceClient;
use ferrolog_proto::v1::{
    Acks, CreateTopicRequest, FetchFormat, FetchRequest, ListOffsetsRequest, MetadataRequest,
    OffsetSpec, ProduceRequest, Record, RecordHeader, SubscribeRequest,
};
use ferrolog_tests::{Server, init_logging};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(20);

async fn channel(server: &Server) -> anyhow::Result<Channel> {
    Ok(
        Channel::from_shared(format!("http://{}", server.grpc_address))?
            .connect()
            .await?,
    )
}

fn record(value: &str, timestamp_ms: Option<i64>) -> Record {
    Record {
        key: Some(Bytes::from(format!("key-{value}"))),
        value: Some(Bytes::from(value.to_owned())),
        headers: vec![RecordHeader {
            key: "h".into(),
            value: Some(Bytes::from_static(b"1")),
        }],
        timestamp_ms,
        offset: 0,
    }
}

fn error_code(status: &tonic::Status) -> String {
    status
        .metadata()
        .get(ferrolog_proto::ERROR_CODE_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("<none>")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_and_health_are_served_for_grpcurl() -> anyhow::Result<()> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    init_logging();
    tracing::info!("phase: a single-node server");
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path())?;
    let channel = channel(&server).await?;

    tracing::info!("phase: reflection lists the services, so grpcurl needs no .proto files");
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let response = tokio::time::timeout(WAIT, responses.next())
        .await?
        .expect("one response")?;
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "ferrolog.v1.ClientService",
        "ferrolog.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }

    tracing::info!("phase: the standard health service reports the client service serving");
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "ferrolog.v1.ClientService".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        health.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_and_batch_produce_land_in_one_log_and_fetch_returns_either()
-> anyhow::Result<()> {
    init_logging();
    tracing::info!("phase: a single-node server and a topic of one partition");
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path())?;
    let channel = channel(&server).await?;
    let mut admin = AdminServiceClient::new(channel.clone());
    let mut client = ClientServiceClient::new(channel);
    admin
        .create_topic(CreateTopicRequest {
            name: "events".into(),
            partitions: 1,
            ..Default::default()
        })
        .await?;

    tracing::info!("phase: structured records, as grpcurl would send them");
    let first = client
        .produce(ProduceRequest {
            topic: "events".into(),
            records: vec![record("a", Some(1_000)), record("b", Some(2_000))],
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!((first.base_offset, first.last_offset), (0, 1));

    tracing::info!("phase: a ready-made RecordBatch v2, as the Rust client sends");
    let mut builder = RecordBatchBuilder::new(3_000);
    builder.push(3_000, Some(b"key-c"), Some(b"c"), &[]);
    let second = client
        .produce(ProduceRequest {
            topic: "events".into(),
            acks: Acks::All as i32,
            record_batch: builder.build().freeze(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(second.base_offset, 2);

    tracing::info!("phase: fetch as structured records, from the middle of a batch");
    let fetched = client
        .fetch(FetchRequest {
            topic: "events".into(),
            offset: 1,
            ..Default::default()
        })
        .await?
        .into_inner();
    let values: Vec<(i64, Bytes)> = fetched
        .records
        .iter()
        .map(|r| (r.offset, r.value.clone().unwrap_or_default()))
        .collect();
    assert_eq!(values, vec![(1, Bytes::from("b")), (2, Bytes::from("c"))]);
    assert_eq!(
        fetched.records[0].headers,
        vec![RecordHeader {
            key: "h".into(),
            value: Some(Bytes::from("1"))
        }]
    );
    assert_eq!(fetched.records[0].timestamp_ms, Some(2_000));
    assert_eq!((fetched.next_offset, fetched.high_watermark), (3, 3));

    tracing::info!("phase: fetch as raw batches: the bytes decode to the same records");
    let raw = client
        .fetch(FetchRequest {
            topic: "events".into(),
            offset: 0,
            format: FetchFormat::Batches as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut offsets = Vec::new();
    for batch in ferrolog_log::BatchIter::new(&raw.record_batches) {
        let (_, bytes) = batch?;
        offsets.extend(
            ferrolog_log::decode_records(bytes)?
                .into_iter()
                .map(|r| r.offset.0),
        );
    }
    assert_eq!(offsets, vec![0, 1, 2]);

    tracing::info!("phase: ListOffsets: earliest, latest, and by timestamp");
    let list = |spec: OffsetSpec, timestamp_ms: i64| ListOffsetsRequest {
        topic: "events".into(),
        partition: 0,
        spec: spec as i32,
        timestamp_ms,
    };
    assert_eq!(
        client
            .list_offsets(list(OffsetSpec::Earliest, 0))
            .await?
            .into_inner()
            .offset,
        0
    );
    assert_eq!(
        client
            .list_offsets(list(OffsetSpec::Latest, 0))
            .await?
            .into_inner()
            .offset,
        3
    );
    assert_eq!(
        client
            .list_offsets(list(OffsetSpec::Timestamp, 1_500))
            .await?
            .into_inner()
            .offset,
        1
    );
    assert_eq!(
        client
            .list_offsets(list(OffsetSpec::Timestamp, 3_000))
            .await?
            .into_inner()
            .offset,
        2
    );
    assert_eq!(
        client
            .list_offsets(list(OffsetSpec::Timestamp, 9_999))
            .await?
            .into_inner()
            .offset,
        -1
    );

    let metadata = client
        .metadata(MetadataRequest::default())
        .await?
        .into_inner();
    assert_eq!(metadata.brokers.len(), 1);
    assert_eq!(metadata.brokers[0].address, server.grpc_address);
    assert_eq!(metadata.topics[0].partitions[0].leader, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_and_subscribe_deliver_records_as_they_arrive() -> anyhow::Result<()> {
    init_logging();
    tracing::info!("phase: a single-node server and an empty topic");
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path())?;
    let channel = channel(&server).await?;
    AdminServiceClient::new(channel.clone())
        .create_topic(CreateTopicRequest {
            name: "live".into(),
            partitions: 1,
            ..Default::default()
        })
        .await?;
    let mut client = ClientServiceClient::new(channel);

    tracing::info!("phase: a fetch at the end waits and returns nothing when nothing comes");
    let empty = client
        .fetch(FetchRequest {
            topic: "live".into(),
            offset: 0,
            max_wait_ms: 200,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(empty.records.is_empty());
    assert_eq!(empty.next_offset, 0);

    tracing::info!(
        "phase: a subscription and a long-poll both see records produced after they started"
    );
    let mut stream = client
        .subscribe(SubscribeRequest {
            topic: "live".into(),
            offset: 0,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut poller = client.clone();
    let long_poll = tokio::spawn(async move {
        poller
            .fetch(FetchRequest {
                topic: "live".into(),
                offset: 0,
                max_wait_ms: 15_000,
                ..Default::default()
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    for value in ["x", "y", "z"] {
        client
            .produce(ProduceRequest {
                topic: "live".into(),
                records: vec![record(value, None)],
                ..Default::default()
            })
            .await?;
    }
    let polled = tokio::time::timeout(WAIT, long_poll).await???.into_inner();
    assert_eq!(
        polled.records.first().and_then(|r| r.value.clone()),
        Some(Bytes::from("x"))
    );

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let response = tokio::time::timeout(WAIT, stream.next())
            .await?
            .expect("stream open")?;
        seen.extend(
            response
                .records
                .into_iter()
                .map(|r| (r.offset, r.value.unwrap_or_default())),
        );
    }
    assert_eq!(
        seen,
        vec![
            (0, Bytes::from("x")),
            (1, Bytes::from("y")),
            (2, Bytes::from("z"))
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_stable_codes_and_bad_batches_change_nothing() -> anyhow::Result<()> {
    init_logging();
    tracing::info!(
        "phase: a single-node server and a topic; each bad request below gets its stable code"
    );
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path())?;
    let channel = channel(&server).await?;
    AdminServiceClient::new(channel.clone())
        .create_topic(CreateTopicRequest {
            name: "t".into(),
            partitions: 1,
            ..Default::default()
        })
        .await?;
    let mut client = ClientServiceClient::new(channel);

    let unknown = client
        .produce(ProduceRequest {
            topic: "nope".into(),
            records: vec![record("a", None)],
            ..Default::default()
        })
        .await
        .expect_err("unknown topic");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert_eq!(error_code(&unknown), "UNKNOWN_TOPIC");
    assert!(unknown.message().contains("'nope'"));

    let mut builder = RecordBatchBuilder::new(1);
    builder.push(1, None, Some(b"payload"), &[]);
    let mut corrupt = builder.build();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x40;
    let refused = client
        .produce(ProduceRequest {
            topic: "t".into(),
            record_batch: corrupt.freeze(),
            ..Default::default()
        })
        .await
        .expect_err("corrupt batch");
    assert_eq!(error_code(&refused), "CORRUPT_RECORD");

    let both = client
        .produce(ProduceRequest {
            topic: "t".into(),
            records: vec![record("a", None)],
            record_batch: Bytes::from_static(b"x"),
            ..Default::default()
        })
        .await
        .expect_err("both forms");
    assert_eq!(error_code(&both), "INVALID_REQUEST");

    let out_of_range = client
        .fetch(FetchRequest {
            topic: "t".into(),
            offset: 5,
            ..Default::default()
        })
        .await
        .expect_err("out of range");
    assert_eq!(out_of_range.code(), tonic::Code::OutOfRange);
    assert!(
        out_of_range.message().contains("valid offsets are 0..0"),
        "{}",
        out_of_range.message()
    );

    let latest = client
        .list_offsets(ListOffsetsRequest {
            topic: "t".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        latest.offset, 0,
        "refused produces must not have appended anything"
    );
    Ok(())
}
