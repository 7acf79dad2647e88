//! `ferrolog topic create|list|describe|alter-config|add-partitions|delete|delete-records`.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use clap::{ArgGroup, Args, Subcommand};
use ferrolog_client::{Admin, ConfigEntry, ConfigResource, ConfigSource};
use serde_json::json;

use super::ClientArgs;

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic
    Create(CreateArgs),
    /// List topics
    List(ListArgs),
    /// Show a topic's partitions (leader, replicas, isr, offsets) and configs with their
    /// sources
    Describe(DescribeArgs),
    /// Change a topic's configs at runtime: set some, delete others (a deleted config falls
    /// back to the cluster default, then the server default). All or nothing.
    AlterConfig(AlterConfigArgs),
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

/// `--set` and `--delete`, shared by `topic alter-config` and `cluster alter-config`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("change").required(true).multiple(true).args(["set", "delete"])))]
#[command(allow_negative_numbers = true)]
pub struct ConfigChangeArgs {
    /// Set a config as name=value (Kafka names, e.g. retention.ms=3600000), repeatable
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Stop setting a config here, so the next layer down applies, repeatable
    #[arg(long = "delete", value_name = "KEY")]
    pub delete: Vec<String>,
}

impl ConfigChangeArgs {
    /// Sends the change for `resource`; prints what changed.
    pub async fn apply(&self, admin: &Admin, resource: &ConfigResource) -> anyhow::Result<()> {
        let set = parse_pairs("--set", &self.set)?;
        let delete: Vec<String> = self.delete.iter().map(|k| k.trim().to_owned()).collect();
        let what = match resource {
            ConfigResource::Topic(name) => format!("topic {name}"),
            ConfigResource::Cluster => "the cluster defaults".to_owned(),
        };
        admin
            .alter_configs(resource, set.clone(), delete.clone())
            .await
            .with_context(|| format!("alter configs of {what}"))?;
        let mut changes: Vec<String> = set.iter().map(|(k, v)| format!("set {k}={v}")).collect();
        changes.extend(delete.iter().map(|k| format!("deleted {k}")));
        println!("altered {what}: {}", changes.join(", "));
        Ok(())
    }
}

#[derive(Debug, Args)]
pub struct AlterConfigArgs {
    name: String,
    #[command(flatten)]
    change: ConfigChangeArgs,
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
    parse_pairs("--config", pairs)
}

/// Parses `flag`'s KEY=VALUE arguments.
fn parse_pairs(flag: &str, pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
            _ => bail!("invalid {flag} '{pair}': expected KEY=VALUE, e.g. retention.ms=3600000"),
        })
        .collect()
}

/// How `describe` prints a config's source.
pub fn source_name(entry: &ConfigEntry) -> &'static str {
    match ConfigSource::try_from(entry.source) {
        Ok(ConfigSource::Default) => "default",
        Ok(ConfigSource::Cluster) => "cluster",
        Ok(ConfigSource::Topic) => "topic",
        Ok(ConfigSource::Unspecified) | Err(_) => "unknown",
    }
}

/// Prints configs as a table of name, value and source.
pub fn print_config_table(entries: &[ConfigEntry]) {
    let width = entries
        .iter()
        .map(|e| e.name.len())
        .max()
        .unwrap_or(0)
        .max(6);
    let value_width = entries
        .iter()
        .map(|e| e.value.len())
        .max()
        .unwrap_or(0)
        .max(5);
    println!("{:<width$}  {:<value_width$}  SOURCE", "CONFIG", "VALUE");
    for entry in entries {
        println!(
            "{:<width$}  {:<value_width$}  {}",
            entry.name,
            entry.value,
            source_name(entry)
        );
    }
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
                let sources: BTreeMap<_, _> = topic
                    .config_entries
                    .iter()
                    .map(|e| (e.name.as_str(), source_name(e)))
                    .collect();
                let out = json!({
                    "name": topic.name,
                    "partitions": partitions,
                    "configs": configs,
                    "config_sources": sources,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!(
                    "Topic: {}\tPartitions: {}",
                    topic.name,
                    topic.partitions.len()
                );
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
                println!();
                print_config_table(&topic.config_entries);
            }
        }
        TopicCommand::AlterConfig(args) => {
            let admin = Admin::connect(args.client.config()).await?;
            args.change
                .apply(&admin, &ConfigResource::Topic(args.name.clone()))
                .await?;
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
