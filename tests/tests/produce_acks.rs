//! Every acks level against a real `ferrolog server`: each reports the offsets the leader
//! assigned (client.proto's contract; with acks=0 they are not yet durable), and each record
//! is read back at the offset its producer was told.

use std::time::Duration;

use anyhow::{Context, ensure};
use ferrolog_client::{
    Acks, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord, StartOffset,
};
use ferrolog_tests::{Server, init_logging};

/// Records per acks level.
const RECORDS_PER_LEVEL: usize = 20;
/// Bound on the whole exchange with the server.
const DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn every_acks_level_reports_the_offsets_its_records_are_read_back_at() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path())?;
    tracing::info!("phase: one single-partition topic takes records at acks=0, 1 and all");
    let out = server.cli(&["topic", "create", "acks", "--partitions", "1"], None)?;
    ferrolog_tests::assert_ok(&out);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tokio::time::timeout(DEADLINE, async {
            let mut sent = Vec::new();
            for (label, acks) in [("0", Acks::None), ("1", Acks::Leader), ("all", Acks::All)] {
                let mut config = ProducerConfig::new(server.client_config());
                config.acks = acks;
                let producer = Producer::connect(config).await?;
                let mut deliveries = Vec::new();
                for i in 0..RECORDS_PER_LEVEL {
                    let value = format!("acks={label} #{i}");
                    let record = ProducerRecord::new("acks", value.clone()).with_partition(0);
                    deliveries.push((value, producer.send(record).await));
                }
                for (value, delivery) in deliveries {
                    let metadata = delivery.await.with_context(|| format!("deliver {value}"))?;
                    ensure!(
                        metadata.offset >= 0,
                        "acks={label} reported no offset for {value}"
                    );
                    sent.push((metadata.offset, value));
                }
                producer.close().await;
            }

            tracing::info!("phase: every record lies at the offset its producer was told");
            let mut consumer =
                Consumer::connect(ConsumerConfig::new(server.client_config())).await?;
            consumer.assign("acks", 0, StartOffset::Earliest).await?;
            let mut read = Vec::new();
            while read.len() < sent.len() {
                let polled = consumer.poll(Duration::from_secs(5)).await?;
                ensure!(
                    !polled.is_empty(),
                    "nothing more to read after {} records",
                    read.len()
                );
                read.extend(polled.into_iter().map(|r| {
                    let value = r.value.map(|v| String::from_utf8_lossy(&v).into_owned());
                    (r.offset, value.unwrap_or_default())
                }));
            }
            sent.sort();
            ensure!(read == sent, "read {read:?}\nsent {sent:?}");
            anyhow::Ok(())
        })
        .await
        .context("the exchange took longer than its deadline")?
    })
}
