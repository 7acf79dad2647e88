//! Transactions at the protocol level, with a real server and raw gRPC (issue 21 items 2-3):
//! what a transactional client sends, step by step, and what read_committed and
//! read_uncommitted readers see after each step. The Rust client's transactional producer is
//! tested on top of this in `transactions.rs`.
//!
//! The steps follow one transactional id through a commit, an abort, a transaction left
//! open, a zombie of the old epoch, a new instance that fences it (aborting what it left
//! open), and offsets committed inside transactions.

use std::time::Duration;

use bytes::Bytes;
use ferrolog_log::RecordBatchBuilder;
use ferrolog_proto::status::code_of;
use ferrolog_proto::v1::client_service_client::ClientServiceClient;
use ferrolog_proto::v1::group_service_client::GroupServiceClient;
use ferrolog_proto::v1::transaction_service_client::TransactionServiceClient;
use ferrolog_proto::v1::{
    Acks, AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, CommittedOffset,
    DescribeProducersRequest, DescribeTransactionRequest, EndTxnRequest, ErrorCode, FetchFormat,
    FetchRequest, FindTransactionCoordinatorRequest, InitProducerIdRequest, IsolationLevel,
    OffsetFetchRequest, ProduceRequest, ProducerFields, Record, TopicPartitions,
    TxnOffsetCommitRequest,
};
use ferrolog_tests::{Server, init_logging, stderr};
use tonic::transport::Channel;

const TOPIC: &str = "txn";
const ID: &str = "app-1";
/// How long the first calls may wait for the internal topics to be created and led.
const INTERNAL_TOPIC_DEADLINE: Duration = Duration::from_secs(60);

struct Clients {
    client: ClientServiceClient<Channel>,
    txn: TransactionServiceClient<Channel>,
    group: GroupServiceClient<Channel>,
}

async fn connect(address: &str) -> anyhow::Result<Clients> {
    let channel = Channel::from_shared(format!("http://{address}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(45))
        .connect()
        .await?;
    Ok(Clients {
        client: ClientServiceClient::new(channel.clone()),
        txn: TransactionServiceClient::new(channel.clone()),
        group: GroupServiceClient::new(channel),
    })
}

fn partitions(ps: &[i32]) -> Vec<TopicPartitions> {
    vec![TopicPartitions {
        topic: TOPIC.to_owned(),
        partitions: ps.to_vec(),
    }]
}

/// One transactional batch of `values` from producer `pid` at `epoch`, first sequence `seq`.
fn txn_batch(pid: i64, epoch: i16, seq: i32, values: &[&str]) -> Bytes {
    let mut builder = RecordBatchBuilder::new(1_000)
        .with_producer(pid, epoch, seq)
        .transactional();
    for value in values {
        builder.push(1_000, None, Some(value.as_bytes()), &[]);
    }
    builder.build().freeze()
}

async fn produce(c: &mut Clients, partition: i32, batch: Bytes) -> Result<(), tonic::Status> {
    c.client
        .produce(ProduceRequest {
            topic: TOPIC.to_owned(),
            partition,
            acks: Acks::All as i32,
            record_batch: batch,
            ..ProduceRequest::default()
        })
        .await
        .map(|_| ())
}

/// Values of partition `partition` from offset 0 as a reader with `isolation` sees them, and
/// the partition's last stable offset.
async fn read(
    c: &mut Clients,
    partition: i32,
    isolation: IsolationLevel,
) -> anyhow::Result<(Vec<String>, i64)> {
    let (values, last_stable_offset, _) = read_bounds(c, partition, isolation).await?;
    Ok((values, last_stable_offset))
}

/// `read`, with the high watermark as well.
async fn read_bounds(
    c: &mut Clients,
    partition: i32,
    isolation: IsolationLevel,
) -> anyhow::Result<(Vec<String>, i64, i64)> {
    let mut values = Vec::new();
    let mut offset = 0;
    let mut last_stable_offset;
    let mut high_watermark;
    loop {
        let answer = c
            .client
            .fetch(FetchRequest {
                topic: TOPIC.to_owned(),
                partition,
                offset,
                format: FetchFormat::Records as i32,
                isolation_level: isolation as i32,
                ..FetchRequest::default()
            })
            .await?
            .into_inner();
        last_stable_offset = answer.last_stable_offset;
        high_watermark = answer.high_watermark;
        values.extend(
            answer.records.iter().map(|r| {
                String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned()
            }),
        );
        if answer.next_offset == offset {
            break;
        }
        offset = answer.next_offset;
    }
    Ok((values, last_stable_offset, high_watermark))
}

async fn end(c: &mut Clients, pid: i64, epoch: i16, commit: bool) -> anyhow::Result<i16> {
    let answer = c
        .txn
        .end_txn(EndTxnRequest {
            transactional_id: ID.to_owned(),
            producer_id: pid,
            producer_epoch: i32::from(epoch),
            commit,
        })
        .await?
        .into_inner();
    anyhow::ensure!(answer.producer_id == pid, "same producer id");
    Ok(i16::try_from(answer.producer_epoch)?)
}

async fn add(c: &mut Clients, pid: i64, epoch: i16, ps: &[i32]) -> anyhow::Result<()> {
    c.txn
        .add_partitions_to_txn(AddPartitionsToTxnRequest {
            transactional_id: ID.to_owned(),
            producer_id: pid,
            producer_epoch: i32::from(epoch),
            partitions: partitions(ps),
        })
        .await?;
    Ok(())
}

/// InitProducerId for [`ID`], retried while `__transaction_state` is being created.
async fn init(c: &mut Clients) -> anyhow::Result<(i64, i16)> {
    let deadline = tokio::time::Instant::now() + INTERNAL_TOPIC_DEADLINE;
    loop {
        let asked = c
            .client
            .init_producer_id(InitProducerIdRequest {
                transactional_id: ID.to_owned(),
                transaction_timeout_ms: 0,
            })
            .await;
        match asked {
            Ok(answer) => {
                let answer = answer.into_inner();
                return Ok((answer.producer_id, i16::try_from(answer.producer_epoch)?));
            }
            Err(status) if tokio::time::Instant::now() < deadline => {
                tracing::info!(code = ?code_of(&status), message = status.message(),
                    "InitProducerId not answered yet; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => anyhow::bail!("InitProducerId: {status}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_id_through_commit_abort_zombie_and_fencing() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let server = Server::start_keeping_ports(dir.path())?;
    let created = server.cli(&["topic", "create", TOPIC, "--partitions", "2"], None)?;
    anyhow::ensure!(created.status.success(), "{}", stderr(&created));
    let mut c = connect(&server.grpc_address).await?;

    tracing::info!("phase: the coordinator is found and hands out epoch 0");
    let found = c
        .txn
        .find_transaction_coordinator(FindTransactionCoordinatorRequest {
            transactional_id: ID.to_owned(),
        })
        .await?
        .into_inner();
    assert_eq!(found.address, server.grpc_address);
    let (pid, epoch) = init(&mut c).await?;
    assert_eq!(epoch, 0);

    tracing::info!("phase: a committed transaction over two partitions");
    add(&mut c, pid, 0, &[0, 1]).await?;
    produce(&mut c, 0, txn_batch(pid, 0, 0, &["c1", "c2"])).await?;
    produce(&mut c, 1, txn_batch(pid, 0, 0, &["c3"])).await?;
    let (open, lso) = read(&mut c, 0, IsolationLevel::ReadCommitted).await?;
    assert!(open.is_empty(), "nothing of an open transaction: {open:?}");
    assert_eq!(lso, 0, "the open transaction starts at 0");
    let epoch = end(&mut c, pid, 0, true).await?;
    assert_eq!(epoch, 1, "every end moves the epoch");
    assert_eq!(
        read(&mut c, 0, IsolationLevel::ReadCommitted).await?.0,
        ["c1", "c2"]
    );
    assert_eq!(
        read(&mut c, 1, IsolationLevel::ReadCommitted).await?.0,
        ["c3"]
    );

    tracing::info!("phase: a late batch of the finished transaction is fenced");
    let late = produce(&mut c, 0, txn_batch(pid, 0, 2, &["late"])).await;
    assert_eq!(
        late.as_ref().err().and_then(code_of),
        Some(ErrorCode::InvalidProducerEpoch),
        "{late:?}"
    );

    tracing::info!("phase: an aborted transaction");
    add(&mut c, pid, 1, &[0]).await?;
    produce(&mut c, 0, txn_batch(pid, 1, 0, &["a1"])).await?;
    let epoch = end(&mut c, pid, 1, false).await?;
    assert_eq!(epoch, 2);

    tracing::info!("phase: a transaction left open");
    add(&mut c, pid, 2, &[0]).await?;
    produce(&mut c, 0, txn_batch(pid, 2, 0, &["o1"])).await?;
    let (committed, lso) = read(&mut c, 0, IsolationLevel::ReadCommitted).await?;
    assert_eq!(committed, ["c1", "c2"], "no aborted or open record");
    let (all, _) = read(&mut c, 0, IsolationLevel::ReadUncommitted).await?;
    assert_eq!(all, ["c1", "c2", "a1", "o1"], "markers are never records");
    let producers = c
        .txn
        .describe_producers(DescribeProducersRequest {
            topic: TOPIC.to_owned(),
            partition: 0,
        })
        .await?
        .into_inner();
    assert_eq!(producers.last_stable_offset, lso);
    let open = producers
        .producers
        .iter()
        .find(|p| p.producer_id == pid)
        .ok_or_else(|| anyhow::anyhow!("producer {pid} not listed: {producers:?}"))?;
    assert_eq!(open.current_txn_start_offset, lso);

    tracing::info!("phase: a new instance fences the old one and aborts what it left open");
    let (same_pid, new_epoch) = init(&mut c).await?;
    assert_eq!(same_pid, pid);
    assert!(new_epoch > 2, "epoch {new_epoch}");
    let (committed, lso, hw) = read_bounds(&mut c, 0, IsolationLevel::ReadCommitted).await?;
    assert_eq!(committed, ["c1", "c2"]);
    assert_eq!(lso, hw, "nothing open any more");
    let zombie = end(&mut c, pid, 2, true).await;
    assert_eq!(
        zombie
            .as_ref()
            .err()
            .and_then(|e| e.downcast_ref::<tonic::Status>())
            .and_then(code_of),
        Some(ErrorCode::ProducerFenced),
        "{zombie:?}"
    );
    let described = c
        .txn
        .describe_transaction(DescribeTransactionRequest {
            transactional_id: ID.to_owned(),
        })
        .await?
        .into_inner();
    assert_eq!(described.state, "empty");
    assert_eq!(described.producer_epoch, i32::from(new_epoch));

    tracing::info!("phase: offsets committed in a transaction take effect only on commit");
    let group = "readers";
    let mut epoch = new_epoch;
    for (offset, commit) in [(5, true), (9, false)] {
        add(&mut c, pid, epoch, &[1]).await?;
        c.txn
            .add_offsets_to_txn(AddOffsetsToTxnRequest {
                transactional_id: ID.to_owned(),
                producer_id: pid,
                producer_epoch: i32::from(epoch),
                group_id: group.to_owned(),
            })
            .await?;
        c.txn
            .txn_offset_commit(TxnOffsetCommitRequest {
                transactional_id: ID.to_owned(),
                group_id: group.to_owned(),
                producer_id: pid,
                producer_epoch: i32::from(epoch),
                offsets: vec![CommittedOffset {
                    topic: TOPIC.to_owned(),
                    partition: 0,
                    offset,
                    ..CommittedOffset::default()
                }],
            })
            .await?;
        let fetched = c
            .group
            .offset_fetch(OffsetFetchRequest {
                group_id: group.to_owned(),
                topics: vec![],
            })
            .await?
            .into_inner();
        assert!(
            fetched.offsets.iter().all(|o| o.offset != offset),
            "an offset of an open transaction is not committed yet: {fetched:?}"
        );
        produce(&mut c, 1, txn_batch(pid, epoch, 0, &["x"])).await?;
        epoch = end(&mut c, pid, epoch, commit).await?;
    }
    let fetched = c
        .group
        .offset_fetch(OffsetFetchRequest {
            group_id: group.to_owned(),
            topics: vec![],
        })
        .await?
        .into_inner();
    let committed: Vec<i64> = fetched.offsets.iter().map(|o| o.offset).collect();
    assert_eq!(
        committed,
        [5],
        "the committed transaction's offset, not the aborted one's"
    );

    tracing::info!("phase: the offsets and the transaction state survive a restart");
    let server = server.restart_after_kill()?;
    let mut c = connect(&server.grpc_address).await?;
    let deadline = tokio::time::Instant::now() + INTERNAL_TOPIC_DEADLINE;
    let committed = loop {
        match c
            .group
            .offset_fetch(OffsetFetchRequest {
                group_id: group.to_owned(),
                topics: vec![],
            })
            .await
        {
            Ok(answer) => break answer.into_inner().offsets,
            Err(status) if tokio::time::Instant::now() < deadline => {
                tracing::info!(%status, "offsets not served yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => anyhow::bail!("{status}"),
        }
    };
    assert_eq!(committed.iter().map(|o| o.offset).collect::<Vec<_>>(), [5]);
    // A restarted leader reaches its high watermark again a moment after it serves.
    for (partition, expected) in [(0, vec!["c1", "c2"]), (1, vec!["c3", "x"])] {
        let deadline = tokio::time::Instant::now() + INTERNAL_TOPIC_DEADLINE;
        loop {
            let (values, _) = read(&mut c, partition, IsolationLevel::ReadCommitted).await?;
            if values == expected {
                break;
            }
            anyhow::ensure!(
                values.len() < expected.len() && tokio::time::Instant::now() < deadline,
                "partition {partition} after the restart: {values:?}, expected {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (_, epoch_after) = init(&mut c).await?;
    assert!(
        epoch_after > epoch,
        "the epoch never goes back: {epoch_after} after {epoch}"
    );

    tracing::info!("phase: an operator aborts a transaction hanging at one partition");
    // A producer that wrote a transactional batch without any coordinator knowing it (a
    // client that skipped AddPartitionsToTxn): nothing would ever end it, and read_committed
    // readers would stop at it for good.
    let rogue = c
        .client
        .init_producer_id(InitProducerIdRequest::default())
        .await?
        .into_inner()
        .producer_id;
    // Sent as structured records with producer fields, as a gRPC client in any language
    // sends them.
    c.client
        .produce(ProduceRequest {
            topic: TOPIC.to_owned(),
            partition: 0,
            acks: Acks::All as i32,
            records: vec![Record {
                value: Some(Bytes::from_static(b"hanging")),
                ..Record::default()
            }],
            producer: Some(ProducerFields {
                producer_id: rogue,
                producer_epoch: 0,
                base_sequence: 0,
                transactional: true,
            }),
            ..ProduceRequest::default()
        })
        .await?;
    let (_, stuck_at, hw) = read_bounds(&mut c, 0, IsolationLevel::ReadCommitted).await?;
    assert!(
        stuck_at < hw,
        "the hanging transaction holds the LSO at {stuck_at}"
    );
    let rogue_id = rogue.to_string();
    let aborted = server.cli(
        &[
            "transaction",
            "abort",
            "--topic",
            TOPIC,
            "--partition",
            "0",
            "--producer-id",
            &rogue_id,
        ],
        None,
    )?;
    anyhow::ensure!(aborted.status.success(), "{}", stderr(&aborted));
    let (committed, lso, hw) = read_bounds(&mut c, 0, IsolationLevel::ReadCommitted).await?;
    assert_eq!(committed, ["c1", "c2"], "the hanging record is aborted");
    assert_eq!(lso, hw, "nothing holds the LSO any more");
    let again = produce(&mut c, 0, txn_batch(rogue, 0, 1, &["late"])).await;
    assert_eq!(
        again.as_ref().err().and_then(code_of),
        Some(ErrorCode::InvalidProducerEpoch),
        "the abort marker fenced the producer's old epoch: {again:?}"
    );
    Ok(())
}
