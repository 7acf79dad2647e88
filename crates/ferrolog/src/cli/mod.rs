//! The client-side commands. Each talks to a cluster through `ferrolog-client`, exactly as
//! an application would, except `bench fsync`, which measures the disk alone.

pub mod bench;
pub mod cluster;
pub mod consume;
mod delete_records;
mod fsync_bench;
pub mod group;
pub mod health;
pub mod partition;
pub mod produce;
mod produce_txn;
pub mod producer;
pub mod topic;
pub mod transaction;

use anyhow::Context;
use clap::Args;
use ferrolog_client::{Acks, Admin, ClientConfig, Compression};

/// How to reach the cluster; shared by every client command.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Bootstrap brokers, comma-separated host:port
    #[arg(
        long,
        env = "FERROLOG_BROKERS",
        default_value = "127.0.0.1:9290",
        value_delimiter = ','
    )]
    pub brokers: Vec<String>,
}

impl ClientArgs {
    pub fn config(&self) -> ClientConfig {
        ClientConfig::with_brokers(self.brokers.iter().map(|b| b.trim().to_owned()))
    }
}

/// Parses `--acks` as Kafka's tools spell it: 0, 1, all (or -1).
pub fn parse_acks(value: &str) -> Result<Acks, String> {
    match value {
        "0" => Ok(Acks::None),
        "1" => Ok(Acks::Leader),
        "all" | "-1" => Ok(Acks::All),
        other => Err(format!("'{other}' is not one of 0, 1, all")),
    }
}

/// Parses a `--compression` value: none, gzip, snappy, lz4 or zstd.
pub fn parse_compression(value: &str) -> Result<Compression, String> {
    Compression::from_name(value)
        .ok_or_else(|| format!("'{value}' is not one of none, gzip, snappy, lz4, zstd"))
}

/// The number of partitions of `topic`, with an error naming it when it does not exist.
pub async fn partition_count(admin: &Admin, topic: &str) -> anyhow::Result<u32> {
    let metadata = admin
        .metadata(&[topic])
        .await
        .with_context(|| format!("look up topic '{topic}'"))?;
    let found = metadata
        .topics
        .iter()
        .find(|t| t.name == topic)
        .with_context(|| format!("unknown topic '{topic}'"))?;
    Ok(found.partitions.len() as u32)
}
