//! `ferrolog partition`: operator actions on one partition.

use anyhow::Context;
use clap::{Args, Subcommand};
use ferrolog_client::Admin;

use super::ClientArgs;

#[derive(Debug, Subcommand)]
pub enum PartitionCommand {
    /// Make an in-sync replica the partition's leader (bumps the leader epoch)
    ElectLeader(ElectLeaderArgs),
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

pub async fn run(command: PartitionCommand) -> anyhow::Result<()> {
    let PartitionCommand::ElectLeader(args) = command;
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
