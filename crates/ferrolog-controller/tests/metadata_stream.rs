//! A broker-only node follows the metadata through `ControllerService.FetchMetadata`. Once
//! it has the image, a change costs it the change, not the image again: with a 1,000-
//! partition topic in the image, creating a one-partition topic sends a few hundred bytes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferrolog_controller::{Controller, ControllerApi, CreateTopicRequest};
use ferrolog_metadata::{
    BrokerId, ClusterImage, MetadataFollower, MetadataQuorum, QuorumConfig, TopicConfig,
};
use ferrolog_proto::v1::controller_service_server::ControllerServiceServer;
use prost::Message;
use tokio_stream::wrappers::TcpListenerStream;

/// Bound on every wait in this test.
const DEADLINE: Duration = Duration::from_secs(30);
const BIG_TOPIC_PARTITIONS: i64 = 1_000;
/// What one create of a one-partition topic may cost a follower: its records and framing.
const ONE_CREATE_MAX_BYTES: u64 = 512;

fn topic(name: &str, partitions: i64) -> CreateTopicRequest {
    CreateTopicRequest {
        name: name.to_owned(),
        partitions,
        replication_factor: 1,
        configs: BTreeMap::new(),
    }
}

/// Waits until the follower's image satisfies `condition`, within `DEADLINE`.
async fn follower_sees(
    follower: &MetadataFollower,
    what: &str,
    condition: impl Fn(&ClusterImage) -> bool,
) {
    let mut images = follower.subscribe();
    tokio::time::timeout(DEADLINE, images.wait_for(|image| condition(image)))
        .await
        .unwrap_or_else(|_| panic!("the follower did not see {what} within {DEADLINE:?}"))
        .expect("follower running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_create_sends_the_change_not_the_whole_image() {
    let dir = tempfile::tempdir().expect("temp dir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a free loopback port");
    let address = listener.local_addr().expect("bound").to_string();
    let quorum = MetadataQuorum::start(QuorumConfig {
        node_id: 1,
        voters: BTreeMap::from([(1, address.clone())]),
        advertised_address: address.clone(),
        dir: dir.path().join("metadata"),
        snapshot_entries: 10_000,
        heartbeat_interval_ms: 50,
        election_timeout_min_ms: 150,
        election_timeout_max_ms: 300,
        propose_timeout: Duration::from_secs(10),
    })
    .await
    .expect("a one-voter quorum starts");
    let controller = Arc::new(Controller::new(Arc::clone(&quorum), TopicConfig::default()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ControllerServiceServer::new(ControllerApi::new(
                Arc::clone(&controller),
            )))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    tracing::info!("phase: a broker and a topic of 1,000 partitions make a large image");
    controller
        .register_broker(BrokerId(1), "127.0.0.1:1", 7)
        .await
        .expect("broker registers");
    controller
        .create_topic(topic("big", BIG_TOPIC_PARTITIONS))
        .await
        .expect("big topic created");
    let whole_image_bytes: u64 = quorum
        .image()
        .to_records()
        .iter()
        .map(|r| r.encoded_len() as u64)
        .sum();

    tracing::info!("phase: a follower receives the whole image once, on its first connection");
    let follower = MetadataFollower::start(vec![address]);
    follower_sees(&follower, "the big topic", |image| {
        image.topic("big").is_some()
    })
    .await;
    let before = follower.received_bytes();
    assert!(
        before >= whole_image_bytes,
        "the first message is the whole image ({before} bytes received, image {whole_image_bytes})"
    );

    tracing::info!("phase: creating a one-partition topic sends only that change");
    controller
        .create_topic(topic("small", 1))
        .await
        .expect("small topic created");
    follower_sees(&follower, "the small topic", |image| {
        image.topic("small").is_some()
    })
    .await;
    let for_create = follower.received_bytes() - before;
    println!(
        "whole image: {whole_image_bytes} bytes; one topic create sent the follower {for_create} bytes"
    );
    assert!(
        for_create <= ONE_CREATE_MAX_BYTES,
        "a one-partition topic create sent {for_create} bytes (the whole image is \
         {whole_image_bytes})"
    );
    let image = follower.image();
    assert_eq!(
        image.topic("big").map(|t| t.partitions.len()),
        Some(BIG_TOPIC_PARTITIONS as usize)
    );
    assert_eq!(
        *image,
        *quorum.image(),
        "entries applied on top of the whole image give the controller's image"
    );
    quorum.shutdown().await;
}
