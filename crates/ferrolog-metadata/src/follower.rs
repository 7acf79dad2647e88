//! A broker that is not a controller follows the committed metadata through a gRPC stream
//! from the controllers (as KRaft's observers do) and keeps its own copy of the image. It
//! asks for the entries after its image and applies them; the whole image comes only on
//! the first connection or when the controller no longer keeps every entry it missed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrolog_proto::retry::Backoff;
use ferrolog_proto::v1::controller_service_client::ControllerServiceClient;
use ferrolog_proto::v1::{FetchMetadataRequest, FetchMetadataResponse};
use tokio::sync::watch;

use prost::Message;

use crate::records::MetadataRecord;
use crate::{ClusterImage, MetadataError};

/// Pause before trying the next controller after a stream ended or failed: 500 ms, doubling
/// while no controller answers, up to 5 s; a stream that delivered anything starts over.
const RECONNECT_BACKOFF: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
/// How long connecting to one controller may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The image a broker-only node follows.
pub struct MetadataFollower {
    image: watch::Sender<Arc<ClusterImage>>,
    cluster_id: Mutex<Option<String>>,
    /// Encoded bytes of the metadata messages received, for operators and tests.
    received_bytes: AtomicU64,
    /// Set when entries could not be applied, or came from another cluster: the next
    /// connection asks for the whole image instead of the same entries again.
    needs_whole_image: AtomicBool,
}

impl MetadataFollower {
    /// Starts following; the stream moves to the next controller whenever one fails.
    pub fn start(controllers: Vec<String>) -> Arc<Self> {
        let follower = Arc::new(Self {
            image: watch::Sender::new(Arc::new(ClusterImage::default())),
            cluster_id: Mutex::new(None),
            received_bytes: AtomicU64::new(0),
            needs_whole_image: AtomicBool::new(false),
        });
        tokio::spawn(Arc::clone(&follower).run(controllers));
        follower
    }

    pub fn image(&self) -> Arc<ClusterImage> {
        self.image.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterImage>> {
        self.image.subscribe()
    }

    /// The cluster id, once a controller has answered.
    pub fn cluster_id(&self) -> Option<String> {
        self.cluster_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Bytes of metadata received from the controllers since start (encoded messages).
    pub fn received_bytes(&self) -> u64 {
        self.received_bytes.load(Ordering::Relaxed)
    }

    async fn run(self: Arc<Self>, controllers: Vec<String>) {
        let mut failures = 0;
        for address in controllers.iter().cycle() {
            let received = self.received_bytes();
            if let Err(error) = self.follow(address).await {
                tracing::warn!(controller = %address, %error, "metadata stream ended; trying the next controller");
            }
            failures = if self.received_bytes() > received {
                1
            } else {
                failures + 1
            };
            tokio::time::sleep(RECONNECT_BACKOFF.delay(failures)).await;
        }
    }

    async fn follow(&self, address: &str) -> Result<(), MetadataError> {
        let fail = |e: &dyn std::fmt::Display| MetadataError::Raft(format!("{address}: {e}"));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| fail(&e))?
            .connect_timeout(CONNECT_TIMEOUT)
            .connect()
            .await
            .map_err(|e| fail(&e))?;
        let from_index = if self.needs_whole_image.load(Ordering::Acquire) {
            0
        } else {
            self.image.borrow().applied_index
        };
        let mut stream = ControllerServiceClient::new(channel)
            .max_decoding_message_size(crate::raft::MAX_CONTROLLER_MESSAGE_BYTES)
            .fetch_metadata(FetchMetadataRequest {
                from_index,
                incremental: true,
            })
            .await
            .map_err(|e| fail(&e))?
            .into_inner();
        while let Some(message) = stream.message().await.map_err(|e| fail(&e))? {
            self.received_bytes
                .fetch_add(message.encoded_len() as u64, Ordering::Relaxed);
            let known_cluster = self.cluster_id();
            let other_cluster = known_cluster.is_some_and(|id| id != message.cluster_id);
            if other_cluster && !message.reset {
                self.needs_whole_image.store(true, Ordering::Release);
                return Err(fail(&format!(
                    "cluster id changed to {}; asking for the whole image",
                    message.cluster_id
                )));
            }
            let current = if other_cluster {
                Arc::new(ClusterImage::default())
            } else {
                self.image.borrow().clone()
            };
            match next_image(&current, &message) {
                Ok(Some(image)) => {
                    // The image first: whoever waits for the cluster id then finds it too.
                    self.image.send_replace(Arc::new(image));
                }
                Ok(None) => {}
                Err(error) => {
                    // The same entries would fail again: ask for the whole image next time.
                    self.needs_whole_image.store(true, Ordering::Release);
                    tracing::error!(controller = %address, %error,
                        "cannot apply metadata entries; asking for the whole image");
                    return Err(error);
                }
            }
            if message.reset {
                self.needs_whole_image.store(false, Ordering::Release);
            }
            *self.cluster_id.lock().unwrap_or_else(|p| p.into_inner()) = Some(message.cluster_id);
        }
        Ok(())
    }
}

/// The image after applying `message` to `current`; `None` when it changes nothing. A
/// lagging controller must not move this node's image back in time (the broker deletes the
/// partitions of topics its image lacks), so an older whole image or entries already
/// applied are skipped.
fn next_image(
    current: &ClusterImage,
    message: &FetchMetadataResponse,
) -> Result<Option<ClusterImage>, MetadataError> {
    if message.reset {
        if message.index < current.applied_index {
            return Ok(None);
        }
        return ClusterImage::from_records(message.index, &message.records).map(Some);
    }
    let mut next: Option<ClusterImage> = None;
    for entry in message
        .entries
        .iter()
        .filter(|e| e.index > current.applied_index)
    {
        let image = next.get_or_insert_with(|| current.clone());
        for bytes in &entry.records {
            let record = MetadataRecord::decode(bytes.as_slice()).map_err(|source| {
                MetadataError::Decode {
                    index: entry.index,
                    source,
                }
            })?;
            image.apply(entry.index, &record)?;
        }
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{CreateTopicRecord, PartitionAssignment, Record, RegisterBrokerRecord};
    use ferrolog_proto::v1::MetadataEntry;

    fn encoded(record: Record) -> Vec<u8> {
        MetadataRecord {
            record: Some(record),
        }
        .encode_to_vec()
    }

    fn register(id: i32) -> Vec<u8> {
        encoded(Record::RegisterBroker(RegisterBrokerRecord {
            broker_id: id,
            address: format!("b{id}:9290"),
            incarnation_id: 7,
        }))
    }

    fn create(name: &str) -> Vec<u8> {
        encoded(Record::CreateTopic(CreateTopicRecord {
            name: name.to_owned(),
            topic_id: format!("{name}-id"),
            assignments: vec![PartitionAssignment {
                partition: 0,
                replicas: vec![1],
            }],
            configs: Default::default(),
        }))
    }

    fn entries(entries: Vec<(u64, Vec<Vec<u8>>)>) -> FetchMetadataResponse {
        FetchMetadataResponse {
            index: entries.last().map_or(0, |e| e.0),
            entries: entries
                .into_iter()
                .map(|(index, records)| MetadataEntry { index, records })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn entries_apply_on_top_of_the_image_and_a_whole_image_replaces_it() {
        let whole = FetchMetadataResponse {
            reset: true,
            index: 3,
            records: vec![register(1)],
            ..Default::default()
        };
        let image = next_image(&ClusterImage::default(), &whole)
            .expect("valid")
            .expect("changed");
        assert_eq!(image.applied_index, 3);

        let image = next_image(
            &image,
            &entries(vec![(5, vec![create("a")]), (6, vec![create("b")])]),
        )
        .expect("valid")
        .expect("changed");
        assert_eq!(image.applied_index, 6);
        assert!(image.topic("a").is_some() && image.topic("b").is_some());
        assert_eq!(image.brokers.len(), 1, "kept from the whole image");
    }

    #[test]
    fn nothing_older_than_the_image_is_applied() {
        let mut image = ClusterImage::default();
        image
            .apply(
                9,
                &MetadataRecord::decode(register(1).as_slice()).expect("valid"),
            )
            .expect("applies");
        let stale_whole = FetchMetadataResponse {
            reset: true,
            index: 4,
            ..Default::default()
        };
        assert!(next_image(&image, &stale_whole).expect("valid").is_none());
        // Entry 8 is already in the image; only 10 applies (a second create of "a" would
        // fail if 8 were applied again).
        let replayed = entries(vec![(8, vec![create("a")]), (10, vec![create("b")])]);
        let mut with_a = image.clone();
        with_a
            .apply(
                9,
                &MetadataRecord::decode(create("a").as_slice()).expect("valid"),
            )
            .expect("applies");
        let next = next_image(&with_a, &replayed)
            .expect("valid")
            .expect("changed");
        assert_eq!(next.applied_index, 10);
        assert!(next.topic("b").is_some());
        assert!(next_image(&next, &replayed).expect("valid").is_none());
    }
}
