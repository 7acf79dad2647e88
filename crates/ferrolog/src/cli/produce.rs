//! `ferrolog produce`: one record per line of standard input, optionally in transactions
//! (`--transactional-id`): every `--transaction-records` records, or the whole input, are
//! committed together (or aborted, with `--abort`, to show what read_committed consumers
//! never see).

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use ferrolog_client::{Acks, Compression, Producer, ProducerConfig, ProducerRecord};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::io::AsyncBufReadExt;

use super::ClientArgs;

/// Records awaiting acknowledgement before reading more input: bounds memory on big input.
const MAX_PENDING_RECORDS: usize = 100_000;

#[derive(Debug, Args)]
pub struct ProduceArgs {
    topic: String,
    /// Key for every record
    #[arg(long, conflicts_with = "key_separator")]
    key: Option<String>,
    /// Split each line into key and value at the first SEP
    #[arg(long, value_name = "SEP")]
    key_separator: Option<String>,
    /// Send every record to this partition (default: by key, or sticky without key)
    #[arg(long)]
    partition: Option<u32>,
    /// 0 (no wait), 1 (leader has it durably) or all (every in-sync replica)
    #[arg(long, default_value = "all", value_parser = super::parse_acks)]
    acks: Acks,
    /// Compress each batch: none, gzip, snappy, lz4 or zstd
    #[arg(long, default_value = "none", value_parser = super::parse_compression)]
    compression: Compression,
    /// Produce in transactions under this transactional id (fences any earlier producer
    /// with the same id); implies --acks all
    #[arg(long, value_name = "ID")]
    transactional_id: Option<String>,
    /// With --transactional-id: end a transaction after every N records (default: the whole
    /// input is one transaction)
    #[arg(long, value_name = "N", requires = "transactional_id",
        value_parser = clap::value_parser!(u64).range(1..))]
    transaction_records: Option<u64>,
    /// With --transactional-id: abort every transaction instead of committing it
    #[arg(long, requires = "transactional_id")]
    abort: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// Turns one input line into a record, or says why it cannot be one.
fn record_for(args: &ProduceArgs, line: String, line_no: u64) -> Result<ProducerRecord, String> {
    let (key, value) = match (&args.key, &args.key_separator) {
        (Some(key), _) => (Some(Bytes::from(key.clone())), line),
        (None, Some(sep)) => match line.split_once(sep.as_str()) {
            Some((k, v)) => (Some(Bytes::from(k.to_owned())), v.to_owned()),
            None => return Err(format!("line {line_no} has no key separator {sep:?}")),
        },
        (None, None) => (None, line),
    };
    let mut record = ProducerRecord::new(args.topic.clone(), Bytes::from(value));
    if let Some(key) = key {
        record = record.with_key(key);
    }
    if let Some(partition) = args.partition {
        record = record.with_partition(partition);
    }
    Ok(record)
}

pub async fn run(args: ProduceArgs) -> anyhow::Result<()> {
    if args.transactional_id.is_some() && args.acks != Acks::All {
        bail!("transactions need --acks all (every in-sync replica has each record)");
    }
    let mut config = ProducerConfig::new(args.client.config());
    config.acks = args.acks;
    config.compression = args.compression;
    config.transactional_id = args.transactional_id.clone();
    let producer = Producer::connect(config).await?;
    if args.transactional_id.is_some() {
        return super::produce_txn::run(args_txn(&args), producer, |line, n| {
            record_for(&args, line, n)
        })
        .await;
    }
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut pending = FuturesUnordered::new();
    let (mut sent, mut failed, mut line_no) = (0u64, 0u64, 0u64);
    let mut first_error: Option<String> = None;
    let mut note = |error: String, failed: &mut u64| {
        *failed += 1;
        first_error.get_or_insert(error);
    };

    while let Some(line) = lines.next_line().await.context("read standard input")? {
        line_no += 1;
        let record = match record_for(&args, line, line_no) {
            Ok(record) => record,
            Err(error) => {
                note(error, &mut failed);
                continue;
            }
        };
        pending.push(producer.send(record).await);
        sent += 1;
        while pending.len() >= MAX_PENDING_RECORDS {
            if let Some(Err(error)) = pending.next().await {
                note(error.to_string(), &mut failed);
            }
        }
    }
    producer.flush().await.context("flush producer")?;
    while let Some(result) = pending.next().await {
        if let Err(error) = result {
            note(error.to_string(), &mut failed);
        }
    }
    tokio::time::timeout(Duration::from_secs(30), producer.close())
        .await
        .ok();
    if failed > 0 {
        bail!(
            "{failed} of {line_no} record(s) failed; first error: {}",
            first_error.unwrap_or_default()
        );
    }
    eprintln!("produced {sent} record(s) to {}", args.topic);
    Ok(())
}

/// What the transactional path needs of the arguments.
fn args_txn(args: &ProduceArgs) -> super::produce_txn::TxnArgs {
    super::produce_txn::TxnArgs {
        topic: args.topic.clone(),
        transaction_records: args.transaction_records,
        abort: args.abort,
    }
}
