//! `ferrolog producer list`: the producers each partition's leader keeps state for (Kafka's
//! `kafka-transactions.sh describe-producers`), with the partition's last stable offset.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use ferrolog_client::Admin;

use super::ClientArgs;
use super::transaction::format_time;

#[derive(Debug, Subcommand)]
pub enum ProducerCommand {
    /// List a topic's producers per partition: producer id, epoch, last sequence, last
    /// timestamp, the start offset of an open transaction, and the last stable offset
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    topic: String,
    /// Only this partition (default: all)
    #[arg(long)]
    partition: Option<u32>,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn run(command: ProducerCommand) -> anyhow::Result<()> {
    match command {
        ProducerCommand::List(args) => list(args).await,
    }
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let admin = Admin::connect(args.client.config()).await?;
    let count = super::partition_count(&admin, &args.topic).await?;
    let partitions: Vec<u32> = match args.partition {
        Some(p) if p < count => vec![p],
        Some(p) => bail!(
            "unknown partition {p} of topic '{}'; it has partitions 0..{count}",
            args.topic
        ),
        None => (0..count).collect(),
    };
    println!(
        "{:>9} {:>12} {:>6} {:>13} {:<24} {:>16} {:>10}",
        "PARTITION",
        "PRODUCER ID",
        "EPOCH",
        "LAST SEQUENCE",
        "LAST TIMESTAMP",
        "TXN START OFFSET",
        "LSO"
    );
    for partition in partitions {
        let answer = admin
            .describe_producers(&args.topic, partition)
            .await
            .with_context(|| format!("describe the producers of {}-{partition}", args.topic))?;
        if answer.producers.is_empty() {
            println!(
                "{partition:>9} {:>12} {:>6} {:>13} {:<24} {:>16} {:>10}",
                "-", "-", "-", "-", "-", answer.last_stable_offset
            );
        }
        for p in answer.producers {
            let txn_start = if p.current_txn_start_offset < 0 {
                "-".to_owned()
            } else {
                p.current_txn_start_offset.to_string()
            };
            println!(
                "{partition:>9} {:>12} {:>6} {:>13} {:<24} {:>16} {:>10}",
                p.producer_id,
                p.producer_epoch,
                p.last_sequence,
                format_time(p.last_timestamp_ms),
                txn_start,
                answer.last_stable_offset
            );
        }
    }
    Ok(())
}
