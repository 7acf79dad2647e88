//! `ferrolog partition`: operator actions on one partition.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use ferrolog_client::Admin;

use super::ClientArgs;

/// How often `reassign` looks at the partition while it waits.
const REASSIGN_POLL: Duration = Duration::from_millis(250);

#[derive(Debug, Subcommand)]
pub enum PartitionCommand {
    /// Make an in-sync replica the partition's leader (bumps the leader epoch)
    ElectLeader(ElectLeaderArgs),
    /// Move a partition to other brokers: the new replicas copy the log, and the old ones
    /// leave only once every new one is in sync
    Reassign(ReassignArgs),
}

#[derive(Debug, Args)]
pub struct ElectLeaderArgs {
    /// Topic name
    topic: String,
    /// Partition number
    partition: i32,
    /// Broker id of the new leader; it must be in the ISR
    #[arg(long)]
    leader: i32,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct ReassignArgs {
    /// Topic name
    topic: String,
    /// Partition number
    partition: i32,
    /// The new replica list, preferred leader first, e.g. 1,2,4
    #[arg(long, value_delimiter = ',', required = true)]
    replicas: Vec<i32>,
    /// Return once the move has started instead of waiting for it to finish
    #[arg(long)]
    no_wait: bool,
    /// Give up waiting after this long (the move itself goes on)
    #[arg(long, default_value_t = 600_000, value_name = "MS")]
    timeout_ms: u64,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn run(command: PartitionCommand) -> anyhow::Result<()> {
    match command {
        PartitionCommand::ElectLeader(args) => elect_leader(args).await,
        PartitionCommand::Reassign(args) => reassign(args).await,
    }
}

async fn elect_leader(args: ElectLeaderArgs) -> anyhow::Result<()> {
    let admin = Admin::connect(args.client.config()).await?;
    let index = admin
        .elect_leader(&args.topic, args.partition, args.leader)
        .await
        .with_context(|| {
            format!(
                "elect broker {} leader of {}-{}",
                args.leader, args.topic, args.partition
            )
        })?;
    println!(
        "broker {} leads {}-{} (metadata index {index})",
        args.leader, args.topic, args.partition
    );
    Ok(())
}

async fn reassign(args: ReassignArgs) -> anyhow::Result<()> {
    let admin = Admin::connect(args.client.config()).await?;
    let name = format!("{}-{}", args.topic, args.partition);
    let index = admin
        .reassign_partition(&args.topic, args.partition, &args.replicas)
        .await
        .with_context(|| format!("reassign {name} to {:?}", args.replicas))?;
    println!(
        "moving {name} to replicas {:?} (metadata index {index})",
        args.replicas
    );
    if args.no_wait {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_millis(args.timeout_ms);
    let mut last_progress = String::new();
    loop {
        let topic = admin
            .describe_topic(&args.topic)
            .await
            .with_context(|| format!("describe topic '{}'", args.topic))?;
        let partition = topic
            .partitions
            .iter()
            .find(|p| p.partition == args.partition)
            .with_context(|| format!("{name} no longer exists"))?;
        if partition.adding_replicas.is_empty() && partition.removing_replicas.is_empty() {
            if partition.replicas != args.replicas {
                bail!(
                    "{name} ended with replicas {:?}, not {:?}: another reassignment replaced this one",
                    partition.replicas,
                    args.replicas
                );
            }
            println!(
                "{name} is on replicas {:?}, leader {} at epoch {}",
                partition.replicas, partition.leader, partition.leader_epoch
            );
            return Ok(());
        }
        let progress = format!(
            "in sync: {:?}; adding {:?}, removing {:?} once they are",
            partition.isr, partition.adding_replicas, partition.removing_replicas
        );
        if progress != last_progress {
            println!("{progress}");
            last_progress = progress;
        }
        if Instant::now() >= deadline {
            bail!(
                "{name} is still being moved after {} ms (it goes on; `ferrolog topic describe {}` shows it)",
                args.timeout_ms,
                args.topic
            );
        }
        tokio::time::sleep(REASSIGN_POLL).await;
    }
}
