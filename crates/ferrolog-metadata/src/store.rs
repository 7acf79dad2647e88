//! The durable metadata record log of a single node, kept in sled.
//!
//! Appends are validated against a copy of the image first, so a record that cannot be
//! applied is never written; a batch of records lands atomically (one sled batch) and is
//! flushed before `append` returns, because sled 0.34 only syncs on `flush()`.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use prost::Message;
use tokio::sync::watch;

use crate::records::MetadataRecord;
use crate::{ClusterImage, MetadataError};

const LOG_TREE: &str = "metadata-log";
const CLUSTER_ID_KEY: &[u8] = b"cluster-id";

/// A single node's metadata log and the image it has applied.
pub struct MetadataStore {
    db: sled::Db,
    log: sled::Tree,
    cluster_id: String,
    image: RwLock<Arc<ClusterImage>>,
    /// Serializes appends so index assignment and image swaps happen in log order.
    append_lock: Mutex<()>,
    /// Carries the applied index; brokers wait on it to act on changes.
    applied: watch::Sender<u64>,
}

impl MetadataStore {
    /// Opens (or creates) the store in `dir` and replays the log into the image.
    pub fn open(dir: &Path) -> Result<Self, MetadataError> {
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(|source| MetadataError::Store {
                context: "open sled database",
                source,
            })?;
        let log = db
            .open_tree(LOG_TREE)
            .map_err(|source| MetadataError::Store {
                context: "open metadata log",
                source,
            })?;
        let cluster_id = Self::load_or_create_cluster_id(&db)?;

        let mut image = ClusterImage::default();
        for entry in log.iter() {
            let (key, value) = entry.map_err(|source| MetadataError::Store {
                context: "read metadata log",
                source,
            })?;
            let index = decode_index(&key)?;
            let record = MetadataRecord::decode(value.as_ref())
                .map_err(|source| MetadataError::Decode { index, source })?;
            image.apply(index, &record)?;
        }
        tracing::info!(
            applied_index = image.applied_index,
            topics = image.topics.len(),
            "metadata log replayed"
        );
        let (applied, _) = watch::channel(image.applied_index);
        Ok(Self {
            db,
            log,
            cluster_id,
            image: RwLock::new(Arc::new(image)),
            append_lock: Mutex::new(()),
            applied,
        })
    }

    fn load_or_create_cluster_id(db: &sled::Db) -> Result<String, MetadataError> {
        let existing = db
            .get(CLUSTER_ID_KEY)
            .map_err(|source| MetadataError::Store {
                context: "read cluster id",
                source,
            })?;
        if let Some(id) = existing {
            return Ok(String::from_utf8_lossy(&id).into_owned());
        }
        let id = crate::ids::random_id();
        db.insert(CLUSTER_ID_KEY, id.as_bytes())
            .map_err(|source| MetadataError::Store {
                context: "write cluster id",
                source,
            })?;
        db.flush().map_err(|source| MetadataError::Store {
            context: "flush cluster id",
            source,
        })?;
        Ok(id)
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The image as of the last applied record. Cheap: the image is shared, not copied.
    pub fn image(&self) -> Arc<ClusterImage> {
        Arc::clone(&self.image.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// A receiver of the applied index, which changes after every append.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Validates, persists (durably) and applies `records` as one atomic unit; returns the
    /// index of the last one.
    pub fn append(&self, records: &[MetadataRecord]) -> Result<u64, MetadataError> {
        self.append_with(|_| Ok::<_, MetadataError>(records.to_vec()))
    }

    /// Decides records from the current image and appends them, atomically with respect to
    /// every other append: no other change can slip in between the decision and the write
    /// (two concurrent creates of one name cannot both pass the "exists?" check).
    pub fn append_with<E: From<MetadataError>>(
        &self,
        decide: impl FnOnce(&ClusterImage) -> Result<Vec<MetadataRecord>, E>,
    ) -> Result<u64, E> {
        let _serial = self.append_lock.lock().unwrap_or_else(|p| p.into_inner());
        let records = decide(&self.image())?;
        Ok(self.append_locked(&records)?)
    }

    fn append_locked(&self, records: &[MetadataRecord]) -> Result<u64, MetadataError> {
        let mut next = (*self.image()).clone();
        let mut batch = sled::Batch::default();
        for record in records {
            let index = next.applied_index + 1;
            next.apply(index, record)?;
            batch.insert(&index.to_be_bytes(), record.encode_to_vec());
        }
        self.log
            .apply_batch(batch)
            .map_err(|source| MetadataError::Store {
                context: "append metadata records",
                source,
            })?;
        self.db.flush().map_err(|source| MetadataError::Store {
            context: "flush metadata log",
            source,
        })?;
        let applied_index = next.applied_index;
        *self.image.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        self.applied.send_replace(applied_index);
        Ok(applied_index)
    }
}

fn decode_index(key: &[u8]) -> Result<u64, MetadataError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| {
        MetadataError::InvalidRecord(format!("metadata log key of {} bytes", key.len()))
    })?;
    Ok(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{CreateTopicRecord, PartitionAssignment, Record};

    fn create(name: &str) -> MetadataRecord {
        MetadataRecord {
            record: Some(Record::CreateTopic(CreateTopicRecord {
                name: name.to_owned(),
                topic_id: format!("{name}-id"),
                assignments: vec![PartitionAssignment {
                    partition: 0,
                    replicas: vec![1],
                }],
                configs: Default::default(),
            })),
        }
    }

    #[test]
    fn appended_records_survive_reopen_and_keep_the_cluster_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster_id = {
            let store = MetadataStore::open(dir.path()).expect("open");
            assert_eq!(
                store.append(&[create("a"), create("b")]).expect("append"),
                2
            );
            store.cluster_id().to_owned()
        };
        let store = MetadataStore::open(dir.path()).expect("reopen");
        assert_eq!(store.cluster_id(), cluster_id);
        let image = store.image();
        assert_eq!(image.applied_index, 2);
        assert!(image.topic("a").is_some() && image.topic("b").is_some());
    }

    #[test]
    fn a_batch_with_an_invalid_record_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = MetadataStore::open(dir.path()).expect("open");
        store.append(&[create("a")]).expect("append");
        assert!(store.append(&[create("b"), create("a")]).is_err());
        drop(store);
        let image = MetadataStore::open(dir.path()).expect("reopen").image();
        assert!(image.topic("b").is_none());
        assert_eq!(image.applied_index, 1);
    }
}
