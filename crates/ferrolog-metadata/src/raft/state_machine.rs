//! The state machine: applies committed metadata commands to the cluster image and
//! publishes each new image; snapshots are the image written as records.
//!
//! The image lives in memory. On restart it is rebuilt from the last snapshot, and openraft
//! re-applies the committed entries after it (it reads the committed index from the log
//! store), so nothing but the snapshot needs to be persisted here.

use std::io::Cursor;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageIOError, StoredMembership,
};
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::flush::{FlushMode, FlushObserver, Flusher};
use super::{CommandOutcome, NodeId, StoreError, TypeConfig, decode, encode};
use crate::recent_commands::{AppliedCommand, MetadataChanges, RecentCommands};
use crate::records::MetadataRecord;
use crate::{ClusterImage, MetadataError};

const SNAPSHOT_KEY: &[u8] = b"current";

/// What a snapshot holds: the image as records, and Raft's own bookkeeping.
#[derive(Clone, Serialize, Deserialize)]
struct SnapshotPayload {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, BasicNode>,
    image_index: u64,
    records: Vec<Vec<u8>>,
}

/// Decodes a snapshot's payload and rebuilds the image it holds, as `install_snapshot` does
/// with the snapshot a leader sends. Public (as `raft::fuzzing::decode_snapshot_image`) for
/// the `metadata_snapshot` fuzz target, which feeds it arbitrary bytes.
pub fn decode_snapshot_image(data: &[u8]) -> Result<ClusterImage, MetadataError> {
    let payload: SnapshotPayload =
        decode(data).map_err(|e| MetadataError::InvalidRecord(format!("snapshot payload: {e}")))?;
    ClusterImage::from_records(payload.image_index, &payload.records)
}

/// Encodes `image` as a snapshot payload laid out as `build_snapshot` lays it out, with no
/// Raft log position or membership. Public (as `raft::fuzzing::encode_snapshot_image`) for
/// the fuzz seed corpus.
pub fn encode_snapshot_image(image: &ClusterImage) -> Result<Vec<u8>, MetadataError> {
    let payload = SnapshotPayload {
        last_applied: None,
        last_membership: StoredMembership::default(),
        image_index: image.applied_index,
        records: image
            .to_records()
            .iter()
            .map(Message::encode_to_vec)
            .collect(),
    };
    encode(&payload).map_err(|e| MetadataError::InvalidRecord(format!("snapshot payload: {e}")))
}

#[derive(Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

struct Applied {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, BasicNode>,
    image: Arc<ClusterImage>,
    /// The commands applied after the last snapshot, for followers (bounded).
    recent: RecentCommands,
}

/// The metadata state machine. Clones share state (openraft wants a separate snapshot
/// builder).
#[derive(Clone)]
pub struct MetadataStateMachine {
    applied: Arc<Mutex<Applied>>,
    snapshot: Arc<Mutex<Option<StoredSnapshot>>>,
    snapshots: sled::Tree,
    flusher: Flusher,
    /// Serializes persisting snapshots: openraft builds them in a task that can race an
    /// install, and an older snapshot must never replace a newer one.
    persisting: Arc<tokio::sync::Mutex<()>>,
    published: Arc<watch::Sender<Arc<ClusterImage>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MetadataStateMachine {
    /// Opens the state machine, restoring the image from the last snapshot if there is one.
    pub fn open(db: &sled::Db) -> Result<Self, MetadataError> {
        let store = |context| move |source| MetadataError::Store { context, source };
        let snapshots = db
            .open_tree("raft-snapshot")
            .map_err(store("open snapshot tree"))?;
        let stored: Option<StoredSnapshot> = snapshots
            .get(SNAPSHOT_KEY)
            .map_err(store("read snapshot"))?
            .map(|bytes| decode(&bytes))
            .transpose()
            .map_err(|e| MetadataError::InvalidRecord(format!("stored snapshot: {e}")))?;
        let applied = match &stored {
            Some(s) => {
                let payload: SnapshotPayload = decode(&s.data)
                    .map_err(|e| MetadataError::InvalidRecord(format!("snapshot payload: {e}")))?;
                Applied {
                    last_applied: payload.last_applied,
                    last_membership: payload.last_membership,
                    image: Arc::new(ClusterImage::from_records(
                        payload.image_index,
                        &payload.records,
                    )?),
                    recent: RecentCommands::starting_at(payload.image_index),
                }
            }
            None => Applied {
                last_applied: None,
                last_membership: StoredMembership::default(),
                image: Arc::new(ClusterImage::default()),
                recent: RecentCommands::starting_at(0),
            },
        };
        let (published, _) = watch::channel(Arc::clone(&applied.image));
        Ok(Self {
            applied: Arc::new(Mutex::new(applied)),
            snapshot: Arc::new(Mutex::new(stored)),
            snapshots,
            flusher: Flusher::default(),
            persisting: Arc::default(),
            published: Arc::new(published),
        })
    }

    /// Where snapshot flushes run (the default suits a server).
    pub fn with_flush_mode(mut self, mode: FlushMode) -> Self {
        self.flusher.mode = mode;
        self
    }

    /// Tells `observer` of every completed snapshot flush (see [`FlushObserver`]).
    pub fn with_flush_observer(mut self, observer: Arc<dyn FlushObserver>) -> Self {
        self.flusher.observer = Some(observer);
        self
    }

    /// A receiver of every new image.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterImage>> {
        self.published.subscribe()
    }

    pub fn image(&self) -> Arc<ClusterImage> {
        Arc::clone(&lock(&self.applied).image)
    }

    /// The image and the commands applied after `from` (see [`MetadataChanges`]), read
    /// together so that the commands end exactly at the image.
    pub fn changes_since(&self, from: u64) -> MetadataChanges {
        let applied = lock(&self.applied);
        MetadataChanges {
            image: Arc::clone(&applied.image),
            commands: applied.recent.since(from),
        }
    }

    /// Applies one command all-or-nothing to a copy of the image.
    fn apply_command(
        image: &ClusterImage,
        index: u64,
        records: &[Vec<u8>],
    ) -> Result<ClusterImage, String> {
        let mut next = image.clone();
        for bytes in records {
            let record = MetadataRecord::decode(bytes.as_slice())
                .map_err(|e| format!("undecodable metadata record: {e}"))?;
            next.apply(index, &record).map_err(|e| e.to_string())?;
        }
        Ok(next)
    }

    /// Stores `stored` durably and makes it current, unless a newer snapshot already is.
    async fn persist(&self, stored: StoredSnapshot) -> Result<(), StoreError> {
        let _serial = self.persisting.lock().await;
        let current = lock(&self.snapshot)
            .as_ref()
            .and_then(|s| s.meta.last_log_id);
        if current.is_some() && current > stored.meta.last_log_id {
            return Ok(());
        }
        let bytes = encode(&stored).map_err(|e| StorageIOError::write(&e))?;
        self.snapshots
            .insert(SNAPSHOT_KEY, bytes)
            .map_err(|e| StorageIOError::write(&e))?;
        self.flusher
            .flush(&self.snapshots)
            .await
            .map_err(|e| StorageIOError::write(&e))?;
        *lock(&self.snapshot) = Some(stored);
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MetadataStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StoreError> {
        let payload = {
            let applied = lock(&self.applied);
            SnapshotPayload {
                last_applied: applied.last_applied,
                last_membership: applied.last_membership.clone(),
                image_index: applied.image.applied_index,
                records: applied
                    .image
                    .to_records()
                    .iter()
                    .map(Message::encode_to_vec)
                    .collect(),
            }
        };
        let data = encode(&payload).map_err(|e| StorageIOError::write(&e))?;
        let snapshot_id = match payload.last_applied {
            Some(l) => format!("{}-{}", l.leader_id, l.index),
            None => "empty".to_owned(),
        };
        let meta = SnapshotMeta {
            last_log_id: payload.last_applied,
            last_membership: payload.last_membership,
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        self.persist(stored).await?;
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = data.len(), "metadata snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for MetadataStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StoreError> {
        let applied = lock(&self.applied);
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandOutcome>, StoreError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut outcomes = Vec::new();
        let image = {
            let mut applied = lock(&self.applied);
            for entry in entries {
                let index = entry.log_id.index;
                applied.last_applied = Some(entry.log_id);
                let mut outcome = CommandOutcome { index, error: None };
                match entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Normal(command) => {
                        match Self::apply_command(&applied.image, index, &command.records) {
                            Ok(next) => {
                                applied.image = Arc::new(next);
                                applied.recent.push(AppliedCommand {
                                    index,
                                    records: command.records,
                                });
                            }
                            Err(error) => {
                                tracing::warn!(index, %error, "metadata command refused");
                                outcome.error = Some(error);
                            }
                        }
                    }
                    EntryPayload::Membership(membership) => {
                        applied.last_membership =
                            StoredMembership::new(Some(entry.log_id), membership);
                    }
                }
                outcomes.push(outcome);
            }
            Arc::clone(&applied.image)
        };
        self.published.send_if_modified(|current| {
            let changed = !Arc::ptr_eq(current, &image);
            *current = Arc::clone(&image);
            changed
        });
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StoreError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StoreError> {
        let data = snapshot.into_inner();
        let signature = meta.signature();
        let image = decode_snapshot_image(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(signature), &e))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.persist(stored).await?;
        let image = Arc::new(image);
        {
            let mut applied = lock(&self.applied);
            applied.last_applied = meta.last_log_id;
            applied.last_membership = meta.last_membership.clone();
            applied.recent.reset(image.applied_index);
            applied.image = Arc::clone(&image);
        }
        self.published.send_replace(image);
        tracing::info!(last_log_id = ?meta.last_log_id, "metadata snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
        Ok(lock(&self.snapshot).as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{CreateTopicRecord, PartitionAssignment, Record, RegisterBrokerRecord};

    #[test]
    fn snapshot_image_round_trips_and_garbage_is_refused() {
        let mut image = ClusterImage::default();
        let register = MetadataRecord {
            record: Some(Record::RegisterBroker(RegisterBrokerRecord {
                broker_id: 1,
                address: "a:1".into(),
                incarnation_id: 7,
            })),
        };
        let create = MetadataRecord {
            record: Some(Record::CreateTopic(CreateTopicRecord {
                name: "orders".into(),
                topic_id: "orders-id".into(),
                assignments: vec![PartitionAssignment {
                    partition: 0,
                    replicas: vec![1],
                }],
                configs: Default::default(),
            })),
        };
        image.apply(1, &register).expect("register");
        image.apply(2, &create).expect("create");
        let data = encode_snapshot_image(&image).expect("encodes");
        assert_eq!(decode_snapshot_image(&data).expect("decodes"), image);
        for cut in 0..data.len() {
            assert!(decode_snapshot_image(&data[..cut]).is_err(), "cut at {cut}");
        }
    }
}
