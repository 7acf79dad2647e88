//! The partitions this broker hosts, kept in step with the cluster image.
//!
//! Each partition directory holds a `partition.metadata` file with its topic id, as Kafka
//! does: a topic deleted and re-created under the same name is a different topic, and its
//! old data must never reappear under the new one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use ferrolog_log::{FlushPolicy, LogConfig};
use ferrolog_metadata::{BrokerId, ClusterImage, PartitionId, TopicConfig, TopicImage};
use tokio::sync::watch;

use crate::BrokerError;
use crate::metrics::BrokerMetrics;
use crate::partition::Partition;

const PARTITION_METADATA_FILE: &str = "partition.metadata";

/// Storage settings that are the broker's, not a topic's.
#[derive(Clone, Debug)]
pub struct StorageSettings {
    pub data_dir: PathBuf,
    pub flush_policy: FlushPolicy,
    pub index_interval_bytes: u32,
    /// Defaults for every topic config a topic does not set itself.
    pub topic_defaults: TopicConfig,
}

type PartitionKey = (String, u32);

/// Opens, reconfigures and deletes partitions as the image says.
pub struct PartitionManager {
    node_id: BrokerId,
    settings: StorageSettings,
    partitions: RwLock<HashMap<PartitionKey, Arc<Partition>>>,
    /// The image index the hosted partitions reflect; admin calls wait on it.
    reconciled: watch::Sender<u64>,
    metrics: Arc<BrokerMetrics>,
}

impl PartitionManager {
    pub fn new(node_id: BrokerId, settings: StorageSettings, metrics: Arc<BrokerMetrics>) -> Self {
        Self {
            node_id,
            settings,
            partitions: RwLock::new(HashMap::new()),
            reconciled: watch::Sender::new(0),
            metrics,
        }
    }

    pub fn settings(&self) -> &StorageSettings {
        &self.settings
    }

    pub fn get(&self, topic: &str, partition: u32) -> Option<Arc<Partition>> {
        let partitions = self.partitions.read().unwrap_or_else(|p| p.into_inner());
        partitions.get(&(topic.to_owned(), partition)).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Partition>> {
        let partitions = self.partitions.read().unwrap_or_else(|p| p.into_inner());
        partitions.values().cloned().collect()
    }

    pub fn subscribe_reconciled(&self) -> watch::Receiver<u64> {
        self.reconciled.subscribe()
    }

    /// The effective log settings of a topic.
    pub fn log_config(&self, topic: &TopicImage) -> Result<LogConfig, BrokerError> {
        let config = self
            .settings
            .topic_defaults
            .with_overrides(&topic.configs)
            .map_err(ferrolog_controller::ControllerError::from)?;
        Ok(LogConfig {
            segment_bytes: config.segment_bytes,
            segment_ms: config.segment_ms,
            retention_ms: config.retention_ms,
            retention_bytes: config.retention_bytes,
            index_interval_bytes: self.settings.index_interval_bytes,
            max_message_bytes: config.max_message_bytes,
            flush_policy: self.settings.flush_policy,
        })
    }

    /// Brings the hosted partitions in line with `image`: opens new ones, deletes those of
    /// deleted topics, applies config changes. Runs on the blocking pool: opening a log
    /// reads and may truncate files.
    pub fn reconcile(&self, image: &ClusterImage) -> Result<(), BrokerError> {
        let mut wanted: HashMap<PartitionKey, (&TopicImage, PartitionId)> = HashMap::new();
        for topic in image.topics.values() {
            for p in &topic.partitions {
                if p.replicas.contains(&self.node_id) {
                    wanted.insert((topic.name.clone(), p.partition.0), (topic, p.partition));
                }
            }
        }

        let stale: Vec<(PartitionKey, Arc<Partition>)> = {
            let mut partitions = self.partitions.write().unwrap_or_else(|p| p.into_inner());
            let keys: Vec<PartitionKey> = partitions
                .iter()
                .filter(|(key, p)| {
                    wanted
                        .get(*key)
                        .is_none_or(|(topic, _)| topic.topic_id != p.topic_id())
                })
                .map(|(key, _)| key.clone())
                .collect();
            keys.into_iter()
                .filter_map(|key| partitions.remove(&key).map(|p| (key, p)))
                .collect()
        };
        for (_, partition) in stale {
            partition.delete()?;
        }

        for (key, (topic, id)) in &wanted {
            let config = self.log_config(topic)?;
            if let Some(existing) = self.get(&key.0, key.1) {
                existing.set_config(config);
                continue;
            }
            let dir = self.partition_dir(&topic.name, *id);
            prepare_partition_dir(&dir, &topic.topic_id)?;
            let partition = Partition::open(
                &topic.name,
                *id,
                &topic.topic_id,
                &dir,
                config,
                self.metrics.clone(),
            )?;
            tracing::info!(topic = %topic.name, partition = %id,
                log_end_offset = %partition.log_end_offset(), "partition opened");
            let mut partitions = self.partitions.write().unwrap_or_else(|p| p.into_inner());
            partitions.insert(key.clone(), partition);
        }

        self.remove_stray_directories(&wanted);
        let count = self
            .partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        self.metrics.partitions.set(count as i64);
        self.reconciled.send_replace(image.applied_index);
        Ok(())
    }

    fn partition_dir(&self, topic: &str, partition: PartitionId) -> PathBuf {
        self.settings.data_dir.join(format!("{topic}-{partition}"))
    }

    /// Deletes partition directories the image no longer knows (their topic was deleted
    /// while this broker was down). Only directories that carry our metadata file are
    /// touched, so nothing else a user keeps in the data directory is ever removed.
    fn remove_stray_directories(&self, wanted: &HashMap<PartitionKey, (&TopicImage, PartitionId)>) {
        let Ok(entries) = std::fs::read_dir(&self.settings.data_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.join(PARTITION_METADATA_FILE).is_file() {
                continue;
            }
            let Some(key) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(parse_dir_name)
            else {
                continue;
            };
            if !wanted.contains_key(&key) {
                tracing::warn!(dir = %path.display(), "removing partition of a deleted topic");
                if let Err(error) = std::fs::remove_dir_all(&path) {
                    tracing::error!(dir = %path.display(), %error, "cannot remove stray partition");
                }
            }
        }
    }

    /// Flushes and closes every partition (clean shutdown).
    pub fn close_all(&self) {
        for partition in self.all() {
            if let Err(error) = partition.close() {
                tracing::error!(topic = partition.topic(), partition = %partition.id(), %error,
                    "close failed");
            }
        }
    }
}

/// Creates the directory for a new partition, or wipes one left by an older topic of the
/// same name, and records the topic id.
fn prepare_partition_dir(dir: &Path, topic_id: &str) -> Result<(), BrokerError> {
    let io = |context: &'static str| {
        move |source| BrokerError::Log(ferrolog_log::LogError::Io { context, source })
    };
    let marker = dir.join(PARTITION_METADATA_FILE);
    let expected = format!("topic_id: {topic_id}\n");
    match std::fs::read_to_string(&marker) {
        Ok(found) if found == expected => return Ok(()),
        Ok(_) => {
            tracing::warn!(dir = %dir.display(), "removing data of an older topic with this name");
            std::fs::remove_dir_all(dir).map_err(io("remove stale partition directory"))?;
        }
        Err(_) => {}
    }
    std::fs::create_dir_all(dir).map_err(io("create partition directory"))?;
    std::fs::write(&marker, expected).map_err(io("write partition metadata"))?;
    Ok(())
}

/// Splits `<topic>-<partition>` at the last dash.
fn parse_dir_name(name: &str) -> Option<PartitionKey> {
    let (topic, partition) = name.rsplit_once('-')?;
    Some((topic.to_owned(), partition.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_names_split_at_the_last_dash() {
        assert_eq!(
            parse_dir_name("my-topic-12"),
            Some(("my-topic".to_owned(), 12))
        );
        assert_eq!(parse_dir_name("__cluster_metadata"), None);
        assert_eq!(parse_dir_name("topic-x"), None);
    }
}
