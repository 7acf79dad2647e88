//! `ferrolog topic create|list|describe|add-partitions|delete|delete-records`.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use ferrolog_client::Admin;
use serde_json::json;

use super::ClientArgs;

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic
    Create(CreateArgs),
    /// List topics
    List(ListArgs),
    /// Show a topic's partitions (leader, replicas, isr, offsets) and configs
    Describe(DescribeArgs),
    /// Grow a topic to more partitions (records already written keep their partition; new
    /// keyed records may hash to the new ones)
    AddPartitions(AddPartitionsArgs),
    /// Delete a topic and all its data
    Delete(DeleteArgs),
    /// Delete every record of a partition before an offset (moves its log start offset on
    /// every replica; never past the high watermark)
    DeleteRecords(super::delete_records::DeleteRecordsArgs),
}

#[derive(Debug, Args)]
pub struct AddPartitionsArgs {
    name: String,
    /// The new total number of partitions; must be larger than the current one
    #[arg(long)]
    partitions: i32,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct CreateArgs {
    name: String,
    /// Number of partitions
    #[arg(long)]
    partitions: i32,
    /// Replicas per partition [default: 3, or the number of live brokers if fewer]
    #[arg(long, default_value_t = 0)]
    replication_factor: i32,
    /// Topic config as name=value (Kafka names), repeatable
    #[arg(long = "config", value_name = "KEY=VALUE")]
    configs: Vec<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    name: String,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    name: String,
    #[command(flatten)]
    client: ClientArgs,
}

fn parse_configs(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
            _ => bail!("invalid --config '{pair}': expected KEY=VALUE, e.g. retention.ms=3600000"),
        })
        .collect()
}

pub async fn run(command: TopicCommand) -> anyhow::Result<()> {
    match command {
        TopicCommand::DeleteRecords(args) => super::delete_records::run(args).await?,
        TopicCommand::Create(args) => {
            let configs = parse_configs(&args.configs)?;
            let admin = Admin::connect(args.client.config()).await?;
            let created = admin
                .create_topic(
                    &args.name,
                    args.partitions,
                    args.replication_factor,
                    configs,
                )
                .await
                .with_context(|| format!("create topic '{}'", args.name))?;
            println!(
                "created topic {} with {} partition(s), replication factor {}",
                created.name, created.partitions, created.replication_factor
            );
        }
        TopicCommand::List(args) => {
            let admin = Admin::connect(args.client.config()).await?;
            for topic in admin.list_topics().await.context("list topics")? {
                println!("{}", topic.name);
            }
        }
        TopicCommand::Describe(args) => {
            let admin = Admin::connect(args.client.config()).await?;
            let topic = admin
                .describe_topic(&args.name)
                .await
                .with_context(|| format!("describe topic '{}'", args.name))?;
            if args.json {
                let partitions: Vec<_> = topic
                    .partitions
                    .iter()
                    .map(|p| {
                        json!({
                            "partition": p.partition,
                            "leader": p.leader,
                            "leader_epoch": p.leader_epoch,
                            "replicas": p.replicas,
                            "isr": p.isr,
                            "log_start_offset": p.log_start_offset,
                            "log_end_offset": p.log_end_offset,
                            "high_watermark": p.high_watermark,
                            "size_bytes": p.size_bytes,
                            "adding_replicas": p.adding_replicas,
                            "removing_replicas": p.removing_replicas,
                        })
                    })
                    .collect();
                let configs: BTreeMap<_, _> = topic.configs.iter().collect();
                let out =
                    json!({ "name": topic.name, "partitions": partitions, "configs": configs });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!(
                    "Topic: {}\tPartitions: {}",
                    topic.name,
                    topic.partitions.len()
                );
                let configs: BTreeMap<_, _> = topic.configs.iter().collect();
                let configs: Vec<String> =
                    configs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("Configs: {}", configs.join(","));
                println!(
                    "{:>9} {:>6} {:>5} {:>10} {:>10} {:>14} {:>14} {:>14}  REASSIGNING",
                    "PARTITION",
                    "LEADER",
                    "EPOCH",
                    "REPLICAS",
                    "ISR",
                    "LOG-START",
                    "LOG-END",
                    "HIGH-WATERMARK"
                );
                for p in &topic.partitions {
                    let ids =
                        |v: &[i32]| v.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
                    let reassigning =
                        if p.adding_replicas.is_empty() && p.removing_replicas.is_empty() {
                            String::new()
                        } else {
                            format!(
                                "adding {} removing {}",
                                ids(&p.adding_replicas),
                                ids(&p.removing_replicas)
                            )
                        };
                    println!(
                        "{:>9} {:>6} {:>5} {:>10} {:>10} {:>14} {:>14} {:>14}  {}",
                        p.partition,
                        p.leader,
                        p.leader_epoch,
                        ids(&p.replicas),
                        ids(&p.isr),
                        p.log_start_offset,
                        p.log_end_offset,
                        p.high_watermark,
                        reassigning
                    );
                }
            }
        }
        TopicCommand::AddPartitions(args) => {
            let admin = Admin::connect(args.client.config()).await?;
            admin
                .create_partitions(&args.name, args.partitions)
                .await
                .with_context(|| {
                    format!(
                        "grow topic '{}' to {} partitions",
                        args.name, args.partitions
                    )
                })?;
            println!("topic {} has {} partitions", args.name, args.partitions);
        }
        TopicCommand::Delete(args) => {
            let admin = Admin::connect(args.client.config()).await?;
            admin
                .delete_topic(&args.name)
                .await
                .with_context(|| format!("delete topic '{}'", args.name))?;
            println!("deleted topic {}", args.name);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_parse_as_key_value_pairs() {
        let parsed = parse_configs(&["retention.ms=1000".into(), "segment.bytes = 4096".into()])
            .expect("valid");
        assert_eq!(parsed["retention.ms"], "1000");
        assert_eq!(parsed["segment.bytes"], "4096");
        assert!(parse_configs(&["retention.ms".into()]).is_err());
        assert!(parse_configs(&["=5".into()]).is_err());
    }
}
