//! `ferrolog cluster status`: the controllers (voters, the Raft leader, term, commit index,
//! replication lag) and the registered brokers, as the active controller sees them.
//! `ferrolog cluster alter-config|describe-config`: the cluster-wide dynamic topic defaults.

use std::collections::BTreeMap;

use anyhow::Context;
use clap::{Args, Subcommand};
use ferrolog_client::{Admin, ConfigResource};
use serde_json::json;

use super::ClientArgs;
use super::topic::{ConfigChangeArgs, print_config_table, source_name};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show the metadata quorum and the brokers
    Status(StatusArgs),
    /// Change the dynamic topic defaults of the whole cluster at runtime: every topic that
    /// does not set a config itself takes it (a deleted one falls back to the server default)
    AlterConfig(AlterConfigArgs),
    /// Show the cluster-wide topic defaults with their sources (cluster or default)
    DescribeConfig(DescribeConfigArgs),
}

#[derive(Debug, Args)]
pub struct AlterConfigArgs {
    #[command(flatten)]
    change: ConfigChangeArgs,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct DescribeConfigArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn run(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status(args) => status(args).await,
        ClusterCommand::AlterConfig(args) => {
            let admin = Admin::connect(args.client.config()).await?;
            args.change.apply(&admin, &ConfigResource::Cluster).await
        }
        ClusterCommand::DescribeConfig(args) => {
            let admin = Admin::connect(args.client.config()).await?;
            let entries = admin
                .describe_configs(&ConfigResource::Cluster)
                .await
                .context("describe the cluster's configs")?;
            if args.json {
                let configs: BTreeMap<_, _> = entries
                    .iter()
                    .map(|e| {
                        (
                            e.name.as_str(),
                            json!({ "value": e.value, "source": source_name(e) }),
                        )
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({ "configs": configs }))?
                );
            } else {
                print_config_table(&entries);
            }
            Ok(())
        }
    }
}

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let admin = Admin::connect(args.client.config()).await?;
    let status = admin
        .cluster_status()
        .await
        .context("read cluster status")?;
    if args.json {
        let out = json!({
            "cluster_id": status.cluster_id,
            "controller_leader": status.controller_leader,
            "term": status.term,
            "commit_index": status.commit_index,
            "applied_index": status.applied_index,
            "snapshot_index": status.snapshot_index,
            "purged_index": status.purged_index,
            "controllers": status.controllers.iter().map(|c| json!({
                "node_id": c.node_id,
                "address": c.address,
                "voter": c.voter,
                "leader": c.node_id == status.controller_leader,
                "matched_index": c.matched_index,
                "lag": c.lag,
            })).collect::<Vec<_>>(),
            "brokers": status.brokers.iter().map(|b| json!({
                "broker_id": b.broker_id,
                "address": b.address,
                "state": b.state,
            })).collect::<Vec<_>>(),
            "offline_partitions": status.offline_partitions.iter().map(|p| json!({
                "topic": p.topic,
                "partition": p.partition,
                "isr": p.isr,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("Cluster: {}", status.cluster_id);
    match status.controller_leader {
        -1 => println!("Controller leader: none (waiting for quorum)"),
        id => println!(
            "Controller leader: node {id} (term {}, commit index {})",
            status.term, status.commit_index
        ),
    }
    println!(
        "Answering node: applied index {}, snapshot at {}, log purged through {}",
        status.applied_index, status.snapshot_index, status.purged_index
    );
    println!(
        "\nCONTROLLERS\n{:>7} {:<24} {:<8} {:>8} {:>6}",
        "NODE", "ADDRESS", "ROLE", "MATCHED", "LAG"
    );
    for c in &status.controllers {
        let role = match (c.node_id == status.controller_leader, c.voter) {
            (true, _) => "leader",
            (false, true) => "voter",
            (false, false) => "learner",
        };
        println!(
            "{:>7} {:<24} {:<8} {:>8} {:>6}",
            c.node_id, c.address, role, c.matched_index, c.lag
        );
    }
    println!("\nBROKERS\n{:>7} {:<24} {:<10}", "ID", "ADDRESS", "STATE");
    for b in &status.brokers {
        println!("{:>7} {:<24} {:<10}", b.broker_id, b.address, b.state);
    }
    if !status.offline_partitions.is_empty() {
        println!(
            "\nOFFLINE PARTITIONS (no live in-sync replica; back when one of the ISR returns)"
        );
        for p in &status.offline_partitions {
            println!("  {}-{}  isr {:?}", p.topic, p.partition, p.isr);
        }
    }
    Ok(())
}
