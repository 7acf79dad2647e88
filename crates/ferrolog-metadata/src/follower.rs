//! A broker that is not a controller follows the committed metadata through a gRPC stream
//! from the controllers (as KRaft's observers do) and keeps its own copy of the image.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrolog_proto::v1::FetchMetadataRequest;
use ferrolog_proto::v1::controller_service_client::ControllerServiceClient;
use tokio::sync::watch;

use crate::{ClusterImage, MetadataError};

/// Pause before trying the next controller after a stream ended or failed.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);

/// The image a broker-only node follows.
pub struct MetadataFollower {
    image: watch::Sender<Arc<ClusterImage>>,
    cluster_id: Mutex<Option<String>>,
}

impl MetadataFollower {
    /// Starts following; the stream moves to the next controller whenever one fails.
    pub fn start(controllers: Vec<String>) -> Arc<Self> {
        let follower = Arc::new(Self {
            image: watch::Sender::new(Arc::new(ClusterImage::default())),
            cluster_id: Mutex::new(None),
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

    async fn run(self: Arc<Self>, controllers: Vec<String>) {
        for address in controllers.iter().cycle() {
            if let Err(error) = self.follow(address).await {
                tracing::warn!(controller = %address, %error, "metadata stream ended; trying the next controller");
            }
            tokio::time::sleep(RECONNECT_BACKOFF).await;
        }
    }

    async fn follow(&self, address: &str) -> Result<(), MetadataError> {
        let fail = |e: &dyn std::fmt::Display| MetadataError::Raft(format!("{address}: {e}"));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| fail(&e))?
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .map_err(|e| fail(&e))?;
        let mut stream = ControllerServiceClient::new(channel)
            .max_decoding_message_size(crate::raft::MAX_CONTROLLER_MESSAGE_BYTES)
            .fetch_metadata(FetchMetadataRequest { from_index: 0 })
            .await
            .map_err(|e| fail(&e))?
            .into_inner();
        while let Some(message) = stream.message().await.map_err(|e| fail(&e))? {
            // A lagging controller must not move this node's image back in time: the broker
            // deletes the partitions of topics its image lacks.
            if message.index < self.image.borrow().applied_index {
                continue;
            }
            let image = ClusterImage::from_records(message.index, &message.records)?;
            // The image first: whoever waits for the cluster id then finds the image too.
            self.image.send_replace(Arc::new(image));
            *self.cluster_id.lock().unwrap_or_else(|p| p.into_inner()) = Some(message.cluster_id);
        }
        Ok(())
    }
}
