//! `ferrolog transaction list|describe|abort`: transactions as an operator sees them (Kafka's
//! `kafka-transactions.sh`).

use anyhow::Context;
use clap::{Args, Subcommand};
use ferrolog_client::{Admin, TransactionDescription};
use serde_json::json;

use super::ClientArgs;

#[derive(Debug, Subcommand)]
pub enum TransactionCommand {
    /// List the cluster's transactional ids with their state and producer id
    List(ListArgs),
    /// Show a transactional id's state, producer id and epoch, partitions, timeout and the
    /// start time of its open transaction
    Describe(DescribeArgs),
    /// Abort a transactional id's open transaction at its coordinator, fencing its producer
    /// (for a transaction left hanging by a producer that is gone); or, with --topic,
    /// --partition and --producer-id, a transaction left open at one partition that no
    /// coordinator knows (see `ferrolog producer list`)
    Abort(AbortArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only transactions in this state (empty, ongoing, prepare_commit, prepare_abort,
    /// complete_commit, complete_abort); repeatable
    #[arg(long = "state", value_name = "STATE")]
    states: Vec<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    transactional_id: String,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct AbortArgs {
    /// The transactional id whose open transaction its coordinator aborts
    #[arg(
        required_unless_present = "producer_id",
        conflicts_with = "producer_id"
    )]
    transactional_id: Option<String>,
    /// The partition's topic, for a hanging transaction at one partition
    #[arg(long, requires = "producer_id")]
    topic: Option<String>,
    /// The partition, for a hanging transaction at one partition
    #[arg(long, requires = "producer_id")]
    partition: Option<u32>,
    /// The producer whose transaction hangs at the partition
    #[arg(long, requires_all = ["topic", "partition"])]
    producer_id: Option<i64>,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn run(command: TransactionCommand) -> anyhow::Result<()> {
    match command {
        TransactionCommand::List(args) => list(args).await,
        TransactionCommand::Describe(args) => describe(args).await,
        TransactionCommand::Abort(args) => abort(args).await,
    }
}

async fn abort(args: AbortArgs) -> anyhow::Result<()> {
    let admin = Admin::connect(args.client.config()).await?;
    if let (Some(topic), Some(partition), Some(producer_id)) =
        (&args.topic, args.partition, args.producer_id)
    {
        let epoch = admin
            .abort_hanging_transaction(topic, partition, producer_id)
            .await
            .with_context(|| {
                format!("abort producer {producer_id}'s transaction at {topic}-{partition}")
            })?;
        println!(
            "aborted producer {producer_id}'s transaction at {topic}-{partition} (marker epoch \
             {epoch})"
        );
        return Ok(());
    }
    let Some(transactional_id) = &args.transactional_id else {
        anyhow::bail!("name a transactional id, or --topic, --partition and --producer-id");
    };
    let fenced = admin
        .abort_transaction(transactional_id)
        .await
        .with_context(|| format!("abort the transaction of '{transactional_id}'"))?;
    println!(
        "aborted the transaction of {transactional_id} (producer {} now at epoch {})",
        fenced.producer_id, fenced.producer_epoch
    );
    Ok(())
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let admin = Admin::connect(args.client.config()).await?;
    let states: Vec<&str> = args.states.iter().map(String::as_str).collect();
    let transactions = admin
        .list_transactions(&states)
        .await
        .context("list transactions")?;
    println!(
        "{:<32} {:<16} {:>12} {:>11}",
        "TRANSACTIONAL ID", "STATE", "PRODUCER ID", "COORDINATOR"
    );
    for t in transactions {
        println!(
            "{:<32} {:<16} {:>12} {:>11}",
            t.transactional_id, t.state, t.producer_id, t.coordinator_id
        );
    }
    Ok(())
}

async fn describe(args: DescribeArgs) -> anyhow::Result<()> {
    let admin = Admin::connect(args.client.config()).await?;
    let t = admin
        .describe_transaction(&args.transactional_id)
        .await
        .with_context(|| format!("describe transactional id '{}'", args.transactional_id))?;
    let partitions = partitions_of(&t);
    if args.json {
        println!(
            "{}",
            json!({
                "transactional_id": t.transactional_id,
                "state": t.state,
                "producer_id": t.producer_id,
                "producer_epoch": t.producer_epoch,
                "timeout_ms": t.timeout_ms,
                "start_timestamp_ms": t.start_timestamp_ms,
                "partitions": partitions,
                "coordinator_id": t.coordinator_id,
            })
        );
        return Ok(());
    }
    println!("transactional id  {}", t.transactional_id);
    println!("state             {}", t.state);
    println!("producer id       {}", t.producer_id);
    println!("producer epoch    {}", t.producer_epoch);
    println!("timeout ms        {}", t.timeout_ms);
    println!("start time        {}", format_time(t.start_timestamp_ms));
    println!(
        "partitions        {}",
        if partitions.is_empty() {
            "-".to_owned()
        } else {
            partitions.join(", ")
        }
    );
    println!("coordinator       {}", t.coordinator_id);
    Ok(())
}

/// `topic-partition` names, in the order the coordinator listed them.
fn partitions_of(t: &TransactionDescription) -> Vec<String> {
    t.partitions
        .iter()
        .flat_map(|tp| {
            tp.partitions
                .iter()
                .map(move |p| format!("{}-{p}", tp.topic))
        })
        .collect()
}

/// A Unix-milliseconds time as RFC 3339 UTC; `-` for 0 or less (none).
pub fn format_time(ms: i64) -> String {
    if ms <= 0 {
        return "-".to_owned();
    }
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_utc_and_none_as_a_dash() {
        assert_eq!(format_time(0), "-");
        assert_eq!(format_time(-1), "-");
        assert_eq!(format_time(1_796_378_400_123), "2026-12-04T10:00:00.123Z");
    }
}
