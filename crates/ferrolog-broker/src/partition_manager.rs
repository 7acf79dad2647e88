//! The partitions this broker hosts, kept in step with the cluster image.
//!
//! Each partition directory holds a `partition.metadata` file with its topic id, as Kafka
//! does: a topic deleted and re-created under the same name is a different topic, and its
//! old data must never reappear under the new one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use ferrolog_log::{
    CompactionConfig, Compression, DEFAULT_MAX_DECOMPRESSED_BYTES,
    DEFAULT_PRODUCER_ID_EXPIRATION_MS, FlushPolicy, LogConfig, RecentBatchBudget,
};
use ferrolog_metadata::{
    BrokerId, ClusterImage, PartitionId, TopicCompression, TopicConfig, TopicImage,
};
use tokio::sync::watch;

use crate::BrokerError;
use crate::fetcher::ReplicaFetchers;
use crate::metrics::BrokerMetrics;
use crate::partition::{Partition, PartitionShared};
use crate::replica::image_for_incarnation;

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
    /// This process's registration: leaderships of an image without it are a previous
    /// process's (see `replica::image_for_incarnation`).
    incarnation_id: u64,
    settings: StorageSettings,
    partitions: RwLock<HashMap<PartitionKey, Arc<Partition>>>,
    /// The image index the hosted partitions reflect; admin calls wait on it.
    reconciled: watch::Sender<u64>,
    /// Set once this node's image has caught up with a write it made through the active
    /// controller (its registration): from then on a topic missing from the image is gone.
    image_is_current: std::sync::atomic::AtomicBool,
    metrics: Arc<BrokerMetrics>,
    /// Shared by the fetchers of the partitions this broker follows.
    replication: Arc<ReplicaFetchers>,
    /// Memory for the newest batches of the partitions this broker leads, which their
    /// followers fetch without a disk read.
    recent_budget: Arc<RecentBatchBudget>,
}

/// What all led partitions together may keep in memory for their followers. A partition
/// releases its batches as soon as every in-sync follower has them, so this fills only
/// when followers lag; past it, followers read from disk as before.
const RECENT_BATCHES_BUDGET_BYTES: usize = 256 * 1024 * 1024;

impl PartitionManager {
    /// Partitions of broker `node_id`, run by the process registered as `incarnation_id`.
    pub fn new(
        node_id: BrokerId,
        incarnation_id: u64,
        settings: StorageSettings,
        metrics: Arc<BrokerMetrics>,
    ) -> Self {
        Self {
            node_id,
            incarnation_id,
            settings,
            partitions: RwLock::new(HashMap::new()),
            reconciled: watch::Sender::new(0),
            image_is_current: std::sync::atomic::AtomicBool::new(false),
            metrics,
            replication: Arc::new(ReplicaFetchers::new(node_id)),
            recent_budget: RecentBatchBudget::new(RECENT_BATCHES_BUDGET_BYTES),
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

    /// Allows removing directories of deleted topics (see `image_is_current`).
    pub fn mark_image_current(&self) {
        self.image_is_current
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn subscribe_reconciled(&self) -> watch::Receiver<u64> {
        self.reconciled.subscribe()
    }

    /// The effective config of a topic in `image`: this node's static defaults, then the
    /// cluster's dynamic defaults, then the topic's own settings.
    pub fn topic_config(
        &self,
        image: &ClusterImage,
        topic: &TopicImage,
    ) -> Result<TopicConfig, BrokerError> {
        Ok(image.topic_config(&self.settings.topic_defaults, topic)?)
    }

    /// The log settings of an effective topic config.
    pub fn log_config(&self, config: &TopicConfig) -> LogConfig {
        // `cleanup.policy=compact` alone never deletes by age or size, whatever the
        // retention settings say (Kafka's rule).
        let deletes = config.cleanup_policy.deletes();
        let compaction = config
            .cleanup_policy
            .compacts()
            .then_some(CompactionConfig {
                min_cleanable_dirty_ratio: config.min_cleanable_dirty_ratio,
                min_compaction_lag_ms: config.min_compaction_lag_ms,
                max_compaction_lag_ms: config.max_compaction_lag_ms,
                delete_retention_ms: config.delete_retention_ms,
            });
        // The active segment is never cleaned: with `max.compaction.lag.ms` set it rolls by
        // then, so its records can be cleaned in time (Kafka does the same).
        let segment_ms = match compaction {
            Some(compaction) => config.segment_ms.min(compaction.max_compaction_lag_ms),
            None => config.segment_ms,
        };
        LogConfig {
            segment_bytes: config.segment_bytes,
            segment_ms,
            retention_ms: config.retention_ms.filter(|_| deletes),
            retention_bytes: config.retention_bytes.filter(|_| deletes),
            index_interval_bytes: self.settings.index_interval_bytes,
            max_message_bytes: config.max_message_bytes,
            flush_policy: self.settings.flush_policy,
            compression: stored_codec(config.compression),
            max_decompressed_bytes: DEFAULT_MAX_DECOMPRESSED_BYTES,
            compaction,
            // Kafka's broker-wide `producer.id.expiration.ms`, not configurable here yet.
            producer_id_expiration_ms: DEFAULT_PRODUCER_ID_EXPIRATION_MS,
        }
    }

    /// Brings the hosted partitions in line with `image`: opens new ones, deletes those of
    /// deleted topics, applies config changes. Runs on the blocking pool: opening a log
    /// reads and may truncate files.
    pub fn reconcile(&self, image: &ClusterImage) -> Result<(), BrokerError> {
        let image = &*image_for_incarnation(image, self.node_id, self.incarnation_id);
        self.replication.set_addresses(
            image
                .brokers
                .values()
                .map(|b| (b.id, b.address.clone()))
                .collect(),
        );
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
        // One partition's failure (a damaged log, a full disk) must not keep the others
        // from serving: it is logged and left out, and the next image change retries it.
        let mut failures = 0usize;
        for (key, partition) in stale {
            // The same topic still exists: the partition moved to other brokers.
            let moved_away = image
                .topic(&key.0)
                .is_some_and(|t| t.topic_id == partition.topic_id());
            let deleted = if moved_away {
                partition.delete_moved_away()
            } else {
                partition.delete()
            };
            if let Err(error) = deleted {
                failures += 1;
                tracing::error!(topic = %key.0, partition = key.1, %error, "cannot delete partition");
            }
        }
        for (key, (topic, id)) in &wanted {
            if let Err(error) = self.open_or_update(image, key, topic, *id) {
                failures += 1;
                tracing::error!(topic = %key.0, partition = key.1, %error,
                    "cannot open partition; it stays offline on this broker");
            }
        }
        // Only an image known to be current may prove a topic gone: a restarted node's image
        // can briefly lag the committed log.
        if self
            .image_is_current
            .load(std::sync::atomic::Ordering::Acquire)
        {
            self.remove_stray_directories(image);
        }

        let count = self
            .partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        self.metrics.partitions.set(count as i64);
        // Monotonic: two reconciles finishing out of order must not move it back, or a
        // waiter on a later index would wait for a change that never comes.
        self.reconciled.send_if_modified(|reconciled| {
            let newer = image.applied_index > *reconciled;
            if newer {
                *reconciled = image.applied_index;
            }
            newer
        });
        if failures > 0 {
            return Err(BrokerError::Internal(format!(
                "{failures} partition(s) could not be opened or deleted; see the log"
            )));
        }
        Ok(())
    }

    /// Opens the partition, or, when it is open, applies the topic's current config to it (a
    /// runtime config change reaches the log here; retention and rolls use it from the next
    /// maintenance pass) and the role the image gives it.
    fn open_or_update(
        &self,
        image: &ClusterImage,
        key: &PartitionKey,
        topic: &TopicImage,
        id: PartitionId,
    ) -> Result<(), BrokerError> {
        let topic_config = self.topic_config(image, topic)?;
        let config = self.log_config(&topic_config);
        let min_insync = topic_config.min_insync_replicas as usize;
        let partition_image = topic.partitions.get(id.0 as usize).ok_or_else(|| {
            BrokerError::Internal(format!("{}-{id} is not in the image", topic.name))
        })?;
        if let Some(existing) = self.get(&key.0, key.1) {
            existing.set_config(config);
            self.take_role(&existing, partition_image, min_insync)?;
            return Ok(());
        }
        let dir = self.partition_dir(&topic.name, id);
        prepare_partition_dir(&dir, &topic.topic_id)?;
        let partition = Partition::open(
            &topic.name,
            id,
            &topic.topic_id,
            self.node_id,
            &dir,
            config,
            PartitionShared {
                metrics: Arc::clone(&self.metrics),
                recent_budget: Arc::clone(&self.recent_budget),
            },
        )?;
        self.take_role(&partition, partition_image, min_insync)?;
        tracing::info!(topic = %topic.name, partition = %id,
            log_end_offset = %partition.log_end_offset(), "partition opened");
        let mut partitions = self.partitions.write().unwrap_or_else(|p| p.into_inner());
        partitions.insert(key.clone(), partition);
        Ok(())
    }

    /// Gives `partition` the role the image says, starting a fetcher when it follows.
    fn take_role(
        &self,
        partition: &Arc<Partition>,
        image: &ferrolog_metadata::PartitionImage,
        min_insync: usize,
    ) -> Result<(), BrokerError> {
        if let Some(assignment) = partition.apply_assignment(image, min_insync)? {
            self.replication.follow(Arc::clone(partition), assignment);
        }
        Ok(())
    }

    fn partition_dir(&self, topic: &str, partition: PartitionId) -> PathBuf {
        self.settings.data_dir.join(format!("{topic}-{partition}"))
    }

    /// Deletes partition directories this broker no longer needs: of topics deleted, or of
    /// partitions moved to other brokers, while it was down. A directory is only removed
    /// when its marker names a topic id that no topic in the image carries, or names a
    /// topic whose partition (from the directory name) lists other replicas only: a
    /// directory whose marker is unreadable is left alone, and nothing else a user keeps
    /// in the data directory is ever touched.
    fn remove_stray_directories(&self, image: &ClusterImage) {
        let Ok(entries) = std::fs::read_dir(&self.settings.data_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(topic_id) = read_topic_id(&path) else {
                continue;
            };
            let reason = match image.topics.values().find(|t| t.topic_id == topic_id) {
                None => "its topic was deleted",
                Some(topic) => {
                    let partition = path
                        .file_name()
                        .and_then(|name| name.to_str())
                        .and_then(|name| name.strip_prefix(topic.name.as_str()))
                        .and_then(|rest| rest.strip_prefix('-'))
                        .and_then(|n| n.parse::<u32>().ok())
                        .and_then(|n| topic.partition(PartitionId(n)));
                    match partition {
                        Some(p) if !p.replicas.contains(&self.node_id) => {
                            "it was moved to other brokers"
                        }
                        _ => continue,
                    }
                }
            };
            tracing::warn!(dir = %path.display(), %topic_id, reason, "removing a partition directory");
            if let Err(error) = std::fs::remove_dir_all(&path) {
                tracing::error!(dir = %path.display(), %error, "cannot remove stray partition");
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

/// The topic id recorded in a partition directory, if its marker is well formed.
fn read_topic_id(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(PARTITION_METADATA_FILE)).ok()?;
    let id = text.strip_prefix("topic_id: ")?.strip_suffix('\n')?;
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit())).then(|| id.to_owned())
}

/// Creates the directory for a new partition, or wipes one left by an older topic of the
/// same name, and records the topic id. Only a well-formed marker naming another id causes
/// a wipe: a torn marker (power loss before it was synced) is rewritten, never trusted to
/// delete data.
fn prepare_partition_dir(dir: &Path, topic_id: &str) -> Result<(), BrokerError> {
    let io = |context: &'static str| {
        move |source| BrokerError::Log(ferrolog_log::LogError::Io { context, source })
    };
    match read_topic_id(dir) {
        Some(found) if found == topic_id => return Ok(()),
        Some(found) => {
            tracing::warn!(dir = %dir.display(), old_topic_id = %found,
                "removing data of an older topic with this name");
            std::fs::remove_dir_all(dir).map_err(io("remove stale partition directory"))?;
        }
        None => {}
    }
    std::fs::create_dir_all(dir).map_err(io("create partition directory"))?;
    let marker = format!("topic_id: {topic_id}\n");
    write_durably(&dir.join(PARTITION_METADATA_FILE), marker.as_bytes())
        .map_err(io("write partition metadata"))?;
    Ok(())
}

/// Writes a small file atomically and durably: temp file, fsync, rename, fsync directory.
pub(crate) fn write_durably(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// The codec a topic's `compression.type` makes the log store batches with; `None` keeps the
/// producer's.
fn stored_codec(compression: TopicCompression) -> Option<Compression> {
    match compression {
        TopicCompression::Producer => None,
        TopicCompression::Uncompressed => Some(Compression::None),
        TopicCompression::Gzip => Some(Compression::Gzip),
        TopicCompression::Snappy => Some(Compression::Snappy),
        TopicCompression::Lz4 => Some(Compression::Lz4),
        TopicCompression::Zstd => Some(Compression::Zstd),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_markers_name_a_topic() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_topic_id(dir.path()), None);
        std::fs::write(dir.path().join(PARTITION_METADATA_FILE), "topic_id: ab12\n")
            .expect("write");
        assert_eq!(read_topic_id(dir.path()).as_deref(), Some("ab12"));
        std::fs::write(dir.path().join(PARTITION_METADATA_FILE), "topic_id: ab").expect("write");
        assert_eq!(
            read_topic_id(dir.path()),
            None,
            "a torn marker is not trusted"
        );
    }

    #[test]
    fn a_torn_marker_never_wipes_the_partition() {
        let dir = tempfile::tempdir().expect("tempdir");
        let partition = dir.path().join("t-0");
        std::fs::create_dir_all(&partition).expect("mkdir");
        std::fs::write(partition.join("00000000000000000000.log"), b"data").expect("write");
        std::fs::write(partition.join(PARTITION_METADATA_FILE), "topic_").expect("write");
        prepare_partition_dir(&partition, "cafe").expect("prepare");
        assert!(partition.join("00000000000000000000.log").exists());
        assert_eq!(read_topic_id(&partition).as_deref(), Some("cafe"));
    }

    #[test]
    fn a_marker_of_another_topic_wipes_its_old_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let partition = dir.path().join("t-0");
        prepare_partition_dir(&partition, "aaaa").expect("prepare");
        std::fs::write(partition.join("00000000000000000000.log"), b"old").expect("write");
        prepare_partition_dir(&partition, "bbbb").expect("prepare");
        assert!(!partition.join("00000000000000000000.log").exists());
    }
}
