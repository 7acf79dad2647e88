//! Transactions end to end, on real `ferrolog server` processes: a transactional producer's
//! commits and aborts as read_committed and read_uncommitted consumers see them, a zombie
//! producer fenced by its successor, consume-transform-produce with offsets committed in
//! the transaction, and the CLI (`produce --transactional-id`, `consume --isolation-level`,
//! `transaction describe|list`, `producer list`).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use ferrolog_client::{
    Admin, ClientConfig, ClientError, Consumer, ConsumerConfig, ErrorCode, GroupConsumer,
    GroupConsumerConfig, IsolationLevel, OffsetQuery, OffsetReset, Producer, ProducerConfig,
    ProducerRecord, RecordMetadata, StartOffset,
};
use ferrolog_tests::history::{self, Ack, Read};
use ferrolog_tests::{Cluster, assert_ok, init_logging, stderr, stdout, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);
/// How long a reader waits for more records once it has what it expects, so that records
/// it must NOT see (aborted ones) had their chance to show up.
const QUIET: Duration = Duration::from_secs(2);
/// Bound on every async phase of a test.
const PHASE_LIMIT: Duration = Duration::from_secs(120);

/// Runs one async phase on its own runtime, bounded by [`PHASE_LIMIT`].
fn block_on<T>(what: &str, future: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start a runtime")?;
    runtime.block_on(async {
        tokio::time::timeout(PHASE_LIMIT, future)
            .await
            .with_context(|| format!("{what} did not finish within {PHASE_LIMIT:?}"))?
    })
}

fn brokers(cluster: &Cluster) -> Vec<String> {
    cluster
        .ids()
        .into_iter()
        .map(|id| cluster.address(id).to_owned())
        .collect()
}

/// A three-node cluster with `topics` (name, partitions), all RF=3.
fn three_nodes(topics: &[(&str, u32)]) -> anyhow::Result<Cluster> {
    let cluster = Cluster::start(3, &[])?;
    cluster.wait_for_leader(DEADLINE)?;
    for (topic, partitions) in topics {
        cluster.create_topic(1, topic, *partitions, 3)?;
    }
    Ok(cluster)
}

fn transactional(brokers: &[String], transactional_id: &str) -> ProducerConfig {
    let mut config = ProducerConfig::new(ClientConfig::with_brokers(brokers.iter().cloned()));
    config.transactional_id = Some(transactional_id.to_owned());
    config.linger_ms = 1;
    config
}

fn record(topic: &str, id: u64) -> ProducerRecord {
    ProducerRecord::new(topic, Bytes::from(format!("h-{id}"))).with_key(id.to_string())
}

fn id_of(value: Option<&[u8]>) -> anyhow::Result<u64> {
    value
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.strip_prefix("h-"))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("not a workload record: {value:?}"))
}

fn ack(id: u64, metadata: &RecordMetadata) -> Ack {
    Ack {
        id,
        partition: metadata.partition,
        offset: metadata.offset,
    }
}

/// Reads every partition of `topic` from the start at `isolation` until at least `expected`
/// records arrived and then nothing more for [`QUIET`] (or [`DEADLINE`] passed).
async fn read_topic(
    brokers: &[String],
    topic: &str,
    partitions: u32,
    isolation: IsolationLevel,
    expected: usize,
) -> anyhow::Result<Vec<Read>> {
    let mut config = ConsumerConfig::new(ClientConfig::with_brokers(brokers.iter().cloned()));
    config.isolation_level = isolation;
    let mut consumer = Consumer::connect(config).await?;
    for partition in 0..partitions {
        consumer
            .assign(topic, partition, StartOffset::Earliest)
            .await?;
    }
    let deadline = Instant::now() + DEADLINE;
    let mut reads = Vec::new();
    let mut last_record = Instant::now();
    while Instant::now() < deadline {
        let records = consumer.poll(Duration::from_millis(300)).await?;
        if !records.is_empty() {
            last_record = Instant::now();
        }
        for r in records {
            reads.push(Read {
                partition: r.partition,
                offset: r.offset,
                id: id_of(r.value.as_deref())?,
            });
        }
        if reads.len() >= expected && last_record.elapsed() >= QUIET {
            break;
        }
    }
    Ok(reads)
}

/// Fails unless each partition's reads come in ascending offset order.
fn ensure_offset_order(reads: &[Read]) -> anyhow::Result<()> {
    let mut last: BTreeMap<u32, i64> = BTreeMap::new();
    for read in reads {
        if let Some(before) = last.insert(read.partition, read.offset) {
            ensure!(
                before < read.offset,
                "partition {} read offset {} after {before}",
                read.partition,
                read.offset
            );
        }
    }
    Ok(())
}

fn ids(reads: &[Read]) -> BTreeSet<u64> {
    reads.iter().map(|r| r.id).collect()
}

#[test]
fn given_three_commits_and_two_aborts_then_read_committed_sees_exactly_the_committed_records()
-> anyhow::Result<()> {
    const TOPIC: &str = "txn-commits";
    const PARTITIONS: u32 = 3;
    const PER_TRANSACTION: u64 = 20;
    init_logging();
    tracing::info!("phase: three nodes, {PARTITIONS} RF=3 partitions");
    let cluster = three_nodes(&[(TOPIC, PARTITIONS)])?;
    let brokers = brokers(&cluster);

    tracing::info!(
        "phase: five transactions of {PER_TRANSACTION} records: 0, 2 and 4 commit, 1 and 3 \
         abort after every record landed, so read_uncommitted has them all"
    );
    let (committed_acks, all_ids) = block_on("the transactions", async {
        let producer = Producer::connect(transactional(&brokers, "commits-and-aborts")).await?;
        producer.init_transactions().await?;
        let mut committed_acks = Vec::new();
        let mut all_ids = BTreeSet::new();
        for transaction in 0..5u64 {
            producer.begin_transaction()?;
            let mut futures = Vec::new();
            for i in 0..PER_TRANSACTION {
                let id = transaction * PER_TRANSACTION + i;
                futures.push((id, producer.send(record(TOPIC, id)).await));
            }
            producer.flush().await?;
            let mut acks = Vec::new();
            for (id, future) in futures {
                acks.push(ack(id, &future.await?));
                all_ids.insert(id);
            }
            if transaction % 2 == 0 {
                producer.commit_transaction().await?;
                committed_acks.extend(acks);
            } else {
                producer.abort_transaction().await?;
            }
        }
        producer.close().await;
        Ok((committed_acks, all_ids))
    })?;

    tracing::info!("phase: read_committed sees exactly the committed records, in offset order");
    let committed = block_on("the read_committed read", async {
        read_topic(
            &brokers,
            TOPIC,
            PARTITIONS,
            IsolationLevel::ReadCommitted,
            committed_acks.len(),
        )
        .await
    })?;
    let report = history::check(&committed_acks, &committed);
    ensure!(report.is_safe(), "read_committed: {report}");
    ensure!(report.duplicated.is_empty(), "read_committed: {report}");
    let expected: BTreeSet<u64> = committed_acks.iter().map(|a| a.id).collect();
    ensure!(
        ids(&committed) == expected,
        "read_committed must see the committed records and nothing else; extra: {:?}",
        ids(&committed).difference(&expected).collect::<Vec<_>>()
    );
    ensure_offset_order(&committed)?;

    tracing::info!("phase: read_uncommitted sees every record, aborted ones too, no markers");
    let everything = block_on("the read_uncommitted read", async {
        read_topic(
            &brokers,
            TOPIC,
            PARTITIONS,
            IsolationLevel::ReadUncommitted,
            all_ids.len(),
        )
        .await
    })?;
    ensure!(
        ids(&everything) == all_ids && everything.len() == all_ids.len(),
        "read_uncommitted read {} records ({} distinct) of {}",
        everything.len(),
        ids(&everything).len(),
        all_ids.len()
    );
    ensure_offset_order(&everything)?;
    Ok(())
}

#[test]
fn given_a_second_producer_with_the_same_id_then_the_zombie_is_fenced_and_its_records_never_show()
-> anyhow::Result<()> {
    const TOPIC: &str = "txn-zombie";
    const ID: &str = "zombie";
    init_logging();
    let cluster = three_nodes(&[(TOPIC, 1)])?;
    let brokers = brokers(&cluster);

    let survivor_ids: Vec<u64> = (100..105).collect();
    block_on("the zombie and its successor", async {
        tracing::info!("phase: the first producer leaves records of an open transaction");
        let zombie = Producer::connect(transactional(&brokers, ID)).await?;
        zombie.init_transactions().await?;
        zombie.begin_transaction()?;
        let mut pending = Vec::new();
        for id in 0..5 {
            pending.push(zombie.send(record(TOPIC, id)).await);
        }
        zombie.flush().await?;
        for future in pending {
            future.await?;
        }

        tracing::info!("phase: a second producer with the same id takes over and fences it");
        let successor = Producer::connect(transactional(&brokers, ID)).await?;
        successor.init_transactions().await?;

        tracing::info!("phase: the zombie's next send and its commit fail as fenced");
        let late = zombie.send(record(TOPIC, 5)).await;
        let fenced = |error: &ClientError| {
            matches!(
                error.code(),
                Some(ErrorCode::ProducerFenced | ErrorCode::InvalidProducerEpoch)
            )
        };
        let send_error = match late.await {
            Ok(metadata) => bail!("a fenced producer's send landed at {metadata:?}"),
            Err(error) => error,
        };
        ensure!(
            fenced(&send_error),
            "the send failed otherwise: {send_error}"
        );
        let commit_error = match zombie.commit_transaction().await {
            Ok(()) => bail!("a fenced producer committed"),
            Err(error) => error,
        };
        ensure!(
            fenced(&commit_error),
            "the commit failed otherwise: {commit_error}"
        );
        ensure!(
            zombie.begin_transaction().is_err(),
            "a fenced producer refuses everything after"
        );

        tracing::info!("phase: the successor commits a transaction of its own");
        successor.begin_transaction()?;
        for id in &survivor_ids {
            drop(successor.send(record(TOPIC, *id)).await);
        }
        successor.commit_transaction().await?;
        successor.close().await;
        Ok(())
    })?;

    tracing::info!("phase: read_committed sees only the successor's records");
    let reads = block_on("the read_committed read", async {
        read_topic(
            &brokers,
            TOPIC,
            1,
            IsolationLevel::ReadCommitted,
            survivor_ids.len(),
        )
        .await
    })?;
    let expected: BTreeSet<u64> = survivor_ids.iter().copied().collect();
    ensure!(
        ids(&reads) == expected && reads.len() == expected.len(),
        "read_committed read {:?}, expected {expected:?}",
        ids(&reads)
    );
    Ok(())
}

#[test]
fn consume_transform_produce_with_an_abort_in_the_middle_copies_every_record_exactly_once()
-> anyhow::Result<()> {
    const SOURCE: &str = "ctp-source";
    const SINK: &str = "ctp-sink";
    const GROUP: &str = "ctp";
    const PARTITIONS: u32 = 3;
    const RECORDS: u64 = 90;
    init_logging();
    let cluster = three_nodes(&[(SOURCE, PARTITIONS), (SINK, PARTITIONS)])?;
    let brokers = brokers(&cluster);
    let client = ClientConfig::with_brokers(brokers.iter().cloned());

    tracing::info!("phase: {RECORDS} records in the source topic, from a plain producer");
    block_on("the source records", async {
        let producer = Producer::connect(ProducerConfig::new(client.clone())).await?;
        let mut pending = Vec::new();
        for id in 0..RECORDS {
            pending.push(producer.send(record(SOURCE, id)).await);
        }
        producer.flush().await?;
        for future in pending {
            future.await?;
        }
        producer.close().await;
        Ok(())
    })?;

    tracing::info!(
        "phase: a group member copies them in transactions with the offsets; the second \
         transaction aborts, and the member rewinds to the committed offsets"
    );
    block_on("consume-transform-produce", async {
        let admin = Admin::connect(client.clone()).await?;
        let mut ends = BTreeMap::new();
        for partition in 0..PARTITIONS {
            let end = admin
                .list_offsets(SOURCE, partition, OffsetQuery::Latest)
                .await?
                .offset;
            ends.insert(partition, end);
        }
        let mut consumer_config = ConsumerConfig::new(client.clone());
        consumer_config.isolation_level = IsolationLevel::ReadCommitted;
        let mut config = GroupConsumerConfig::new(consumer_config, GROUP, &[SOURCE]);
        config.auto_offset_reset = OffsetReset::Earliest;
        config.auto_commit_interval = None;
        let mut consumer = GroupConsumer::join(config).await?;
        let producer = Producer::connect(transactional(&brokers, "ctp-copier")).await?;
        producer.init_transactions().await?;

        // What committed transactions consumed: the next offset per source partition.
        let mut committed: BTreeMap<u32, i64> = BTreeMap::new();
        let mut transactions = 0;
        let deadline = Instant::now() + DEADLINE;
        while committed != ends {
            ensure!(
                Instant::now() < deadline,
                "copied only up to {committed:?} of {ends:?}"
            );
            let records = consumer.poll(Duration::from_millis(500)).await?;
            if records.is_empty() {
                continue;
            }
            producer.begin_transaction()?;
            let mut next: BTreeMap<u32, i64> = BTreeMap::new();
            for r in &records {
                let id = id_of(r.value.as_deref())?;
                drop(producer.send(record(SINK, id)).await);
                next.insert(r.partition, r.offset + 1);
            }
            let offsets: Vec<(&str, u32, i64)> =
                next.iter().map(|(p, o)| (SOURCE, *p, *o)).collect();
            producer
                .send_offsets_to_transaction(&offsets, GROUP)
                .await?;
            transactions += 1;
            if transactions == 2 {
                tracing::info!("aborting transaction 2 ({} records)", records.len());
                producer.abort_transaction().await?;
                for partition in next.keys() {
                    let rewind = committed.get(partition).copied().unwrap_or(0);
                    consumer.seek(SOURCE, *partition, rewind)?;
                }
            } else {
                producer.commit_transaction().await?;
                committed.extend(next);
            }
        }
        ensure!(transactions > 2, "the abort must sit between commits");
        producer.close().await;

        tracing::info!(
            "phase: the group's committed offsets reach the source's ends (once the last \
             commit's marker is in __consumer_offsets)"
        );
        let deadline = Instant::now() + DEADLINE;
        loop {
            let group_offsets: BTreeMap<u32, i64> = admin
                .group_offsets(GROUP, &[SOURCE])
                .await?
                .into_iter()
                .filter_map(|o| Some((u32::try_from(o.partition).ok()?, o.offset)))
                .collect();
            if group_offsets == ends {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "group offsets {group_offsets:?}, source ends {ends:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        consumer.close().await?;
        Ok(())
    })?;

    tracing::info!("phase: the sink holds every source record exactly once (read_committed)");
    let reads = block_on("the sink read", async {
        read_topic(
            &brokers,
            SINK,
            PARTITIONS,
            IsolationLevel::ReadCommitted,
            RECORDS as usize,
        )
        .await
    })?;
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    for read in &reads {
        *seen.entry(read.id).or_default() += 1;
    }
    let twice: Vec<u64> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| *id)
        .collect();
    let missing: Vec<u64> = (0..RECORDS).filter(|id| !seen.contains_key(id)).collect();
    ensure!(
        twice.is_empty() && missing.is_empty() && seen.len() == RECORDS as usize,
        "sink: {} records, duplicated {twice:?}, missing {missing:?}",
        reads.len()
    );
    Ok(())
}

#[test]
fn the_cli_aborts_a_transaction_that_read_committed_never_shows() -> anyhow::Result<()> {
    const TOPIC: &str = "txn-cli";
    const ID: &str = "cli-txn";
    init_logging();
    let cluster = three_nodes(&[(TOPIC, 1)])?;

    tracing::info!("phase: produce --transactional-id --abort");
    let out = cluster.cli(
        1,
        &["produce", TOPIC, "--transactional-id", ID, "--abort"],
        Some("one\ntwo\nthree\n"),
    )?;
    assert_ok(&out);
    ensure!(
        stderr(&out).contains("aborted 1 transaction(s) of 3 record(s)"),
        "summary: {}",
        stderr(&out)
    );

    tracing::info!("phase: consume --isolation-level read_committed shows none of it");
    let consume = |level: &str| {
        cluster.cli(
            1,
            &[
                "consume",
                TOPIC,
                "--from-beginning",
                "--isolation-level",
                level,
                "--timeout-ms",
                "3000",
            ],
            None,
        )
    };
    let committed = consume("read_committed")?;
    assert_ok(&committed);
    ensure!(
        stdout(&committed).trim().is_empty(),
        "read_committed printed {:?}",
        stdout(&committed)
    );
    let uncommitted = consume("read_uncommitted")?;
    assert_ok(&uncommitted);
    ensure!(
        stdout(&uncommitted).lines().collect::<Vec<_>>() == ["one", "two", "three"],
        "read_uncommitted printed {:?}",
        stdout(&uncommitted)
    );

    tracing::info!("phase: transaction describe shows complete_abort; list shows the id");
    // prepare_abort until the markers are written, then complete_abort.
    let mut last = String::new();
    let text = wait_until(
        "transaction describe shows complete_abort",
        DEADLINE,
        || {
            let out = cluster
                .cli(1, &["transaction", "describe", ID], None)
                .ok()?;
            last = format!("{}{}", stdout(&out), stderr(&out));
            (out.status.success() && stdout(&out).contains("complete_abort")).then(|| stdout(&out))
        },
    )
    .with_context(|| format!("last describe: {last}"))?;
    let producer_id = text
        .lines()
        .find_map(|line| line.strip_prefix("producer id"))
        .map(str::trim)
        .context("describe names the producer id")?
        .to_owned();
    let listed = cluster.cli(1, &["transaction", "list"], None)?;
    assert_ok(&listed);
    ensure!(stdout(&listed).contains(ID), "list: {}", stdout(&listed));

    tracing::info!("phase: producer list shows the producer at the partition's leader");
    let producers = cluster.cli(1, &["producer", "list", TOPIC], None)?;
    assert_ok(&producers);
    ensure!(
        stdout(&producers)
            .lines()
            .skip(1)
            .any(|line| line.split_whitespace().nth(1) == Some(producer_id.as_str())),
        "producer {producer_id} not in: {}",
        stdout(&producers)
    );
    Ok(())
}
