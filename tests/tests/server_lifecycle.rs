//! A server's life across restarts: clean shutdown under open streams, data and metadata
//! kept across restarts, deleted topics' data removed, and a data directory that refuses a
//! different node id.

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use ferrolog_client::{Admin, OffsetQuery, Producer, ProducerConfig, ProducerRecord};
use ferrolog_proto::v1::SubscribeRequest;
use ferrolog_proto::v1::client_service_client::ClientServiceClient;
use ferrolog_tests::{Server, ferrolog_bin, init_logging};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_open_streams_exits_cleanly_and_keeps_everything() -> anyhow::Result<()> {
    init_logging();
    tracing::info!(
        "phase: a single-node server with two topics, 100 records in one, the other deleted"
    );
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path())?;
    let admin = Admin::connect(server.client_config()).await?;
    admin.create_topic("kept", 2, 1, Default::default()).await?;
    admin
        .create_topic("dropped", 1, 1, Default::default())
        .await?;
    let producer = Producer::connect(ProducerConfig::new(server.client_config())).await?;
    for i in 0..100u32 {
        producer
            .send(ProducerRecord::new("kept", Bytes::from(format!("v{i}"))).with_partition(i % 2))
            .await
            .await?;
    }
    producer.close().await;
    admin.delete_topic("dropped").await?;

    tracing::info!("phase: a Subscribe stream is open while SIGTERM arrives");
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_address))?
            .connect()
            .await?;
    let _stream = ClientServiceClient::new(channel)
        .subscribe(SubscribeRequest {
            topic: "kept".into(),
            offset: 100,
            ..Default::default()
        })
        .await?;
    let status = tokio::task::spawn_blocking(move || server.terminate()).await??;
    assert!(status.success(), "clean shutdown exits 0, got {status}");

    tracing::info!("phase: after a restart the topics, records and offsets are as they were");
    let server = Server::start(dir.path())?;
    let admin = Admin::connect(server.client_config()).await?;
    let names: Vec<String> = admin
        .list_topics()
        .await?
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, vec!["kept".to_owned()]);
    for p in 0..2 {
        let latest = admin.list_offsets("kept", p, OffsetQuery::Latest).await?;
        assert_eq!(latest.high_watermark, 50);
    }
    assert!(
        !dir.path().join("dropped-0").exists(),
        "a deleted topic's data is removed"
    );
    Ok(())
}

#[test]
fn a_data_directory_refuses_another_node_id() -> anyhow::Result<()> {
    init_logging();
    tracing::info!("phase: a server runs once as node 1 on a data directory");
    let dir = tempfile::tempdir()?;
    Server::start(dir.path())?.terminate()?;
    tracing::info!("phase: the same directory refuses to start as node 2");
    let output = Command::new(ferrolog_bin())
        .args([
            "server",
            "--node-id",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("belongs to node 1"), "{stderr}");
    Ok(())
}

#[test]
fn two_servers_on_one_data_directory_are_refused() -> anyhow::Result<()> {
    init_logging();
    tracing::info!("phase: a server runs on a data directory");
    let dir = tempfile::tempdir()?;
    let _first = Server::start(dir.path())?;
    tracing::info!("phase: a second server on the same directory exits, saying why");
    let mut second = Command::new(ferrolog_bin())
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = second.try_wait()? {
            break status;
        }
        if std::time::Instant::now() > deadline {
            second.kill()?;
            anyhow::bail!("the second server kept running on a data directory in use");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().expect("piped"), &mut stderr)?;
    assert!(stderr.contains("another ferrolog server"), "{stderr}");
    Ok(())
}
