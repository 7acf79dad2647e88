//! ControllerService on the controller port: admin writes forwarded by other nodes, broker
//! registration, the metadata stream for brokers that are not controllers, and quorum
//! status.

use std::pin::Pin;
use std::sync::Arc;

use ferrolog_metadata::{BrokerId, MetadataChanges, MetadataQuorum};
use ferrolog_proto::v1;
use ferrolog_proto::v1::ErrorCode;
use ferrolog_proto::v1::controller_service_server::ControllerService;
use prost::Message;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{Change, Controller, ControllerError, status_with_code};

/// Images a metadata stream may have queued for a slow broker.
const METADATA_STREAM_DEPTH: usize = 2;

/// The ControllerService implementation.
#[derive(Clone)]
pub struct ControllerApi {
    controller: Arc<Controller>,
}

impl ControllerApi {
    pub fn new(controller: Arc<Controller>) -> Self {
        Self { controller }
    }

    /// Commits the change a request carries on this node, never forwarding it again (see
    /// [`Controller::commit_here`]); the metadata log index it committed at.
    async fn commit(&self, request: impl Into<Change>) -> Result<u64, Status> {
        Ok(self.controller.commit_here(&request.into()).await?)
    }

    fn quorum(&self) -> Result<&Arc<MetadataQuorum>, Status> {
        self.controller.quorum().ok_or_else(|| {
            status_with_code(
                ErrorCode::NotController,
                "this node is not a controller".to_owned(),
            )
        })
    }
}

impl From<ControllerError> for Status {
    fn from(error: ControllerError) -> Self {
        status_with_code(error.code(), error.to_string())
    }
}

/// The next message of a metadata stream to a follower whose image is at `from`: the
/// entries after it when the follower applies entries and they are all kept, else the whole
/// image. A follower without an image gets the image, which is smaller than the history.
fn metadata_message(
    incremental: bool,
    cluster_id: &str,
    from: u64,
    changes: MetadataChanges,
) -> v1::FetchMetadataResponse {
    let index = changes.image.applied_index;
    match changes.commands.filter(|_| incremental && from > 0) {
        Some(commands) => v1::FetchMetadataResponse {
            reset: false,
            index: commands.last().map_or(from, |c| c.index),
            records: Vec::new(),
            cluster_id: cluster_id.to_owned(),
            entries: commands
                .into_iter()
                .map(|c| v1::MetadataEntry {
                    index: c.index,
                    records: c.records,
                })
                .collect(),
        },
        None => v1::FetchMetadataResponse {
            reset: true,
            index,
            records: changes
                .image
                .to_records()
                .iter()
                .map(Message::encode_to_vec)
                .collect(),
            cluster_id: cluster_id.to_owned(),
            entries: Vec::new(),
        },
    }
}

type MetadataStream = Pin<Box<dyn Stream<Item = Result<v1::FetchMetadataResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ControllerService for ControllerApi {
    async fn create_topic(
        &self,
        request: Request<v1::CreateTopicRequest>,
    ) -> Result<Response<v1::CreateTopicResponse>, Status> {
        let request = request.into_inner();
        let name = request.name.clone();
        let index = self.commit(request).await?;
        let image = self.quorum()?.image();
        let topic = image.topic(&name);
        Ok(Response::new(v1::CreateTopicResponse {
            name,
            partitions: topic.map_or(0, |t| t.partitions.len() as i32),
            replication_factor: topic.map_or(0, |t| t.replication_factor() as i32),
            metadata_index: index,
        }))
    }

    async fn delete_topic(
        &self,
        request: Request<v1::DeleteTopicRequest>,
    ) -> Result<Response<v1::DeleteTopicResponse>, Status> {
        let metadata_index = self.commit(request.into_inner()).await?;
        Ok(Response::new(v1::DeleteTopicResponse { metadata_index }))
    }

    async fn register_broker(
        &self,
        request: Request<v1::RegisterBrokerRequest>,
    ) -> Result<Response<v1::RegisterBrokerResponse>, Status> {
        let metadata_index = self.commit(request.into_inner()).await?;
        Ok(Response::new(v1::RegisterBrokerResponse { metadata_index }))
    }

    async fn alter_partition(
        &self,
        request: Request<v1::AlterPartitionRequest>,
    ) -> Result<Response<v1::AlterPartitionResponse>, Status> {
        let metadata_index = self.commit(request.into_inner()).await?;
        Ok(Response::new(v1::AlterPartitionResponse { metadata_index }))
    }

    async fn elect_leader(
        &self,
        request: Request<v1::ElectLeaderRequest>,
    ) -> Result<Response<v1::ElectLeaderResponse>, Status> {
        let metadata_index = self.commit(request.into_inner()).await?;
        Ok(Response::new(v1::ElectLeaderResponse { metadata_index }))
    }

    async fn create_partitions(
        &self,
        request: Request<v1::CreatePartitionsRequest>,
    ) -> Result<Response<v1::CreatePartitionsResponse>, Status> {
        let metadata_index = self.commit(request.into_inner()).await?;
        Ok(Response::new(v1::CreatePartitionsResponse {
            metadata_index,
        }))
    }

    async fn reassign_partition(
        &self,
        request: Request<v1::ReassignPartitionRequest>,
    ) -> Result<Response<v1::ReassignPartitionResponse>, Status> {
        let metadata_index = self.commit(request.into_inner()).await?;
        Ok(Response::new(v1::ReassignPartitionResponse {
            metadata_index,
        }))
    }

    async fn broker_heartbeat(
        &self,
        request: Request<v1::BrokerHeartbeatRequest>,
    ) -> Result<Response<v1::BrokerHeartbeatResponse>, Status> {
        let r = request.into_inner();
        let fenced = self
            .controller
            .record_heartbeat(BrokerId(r.broker_id), r.incarnation_id)?;
        Ok(Response::new(v1::BrokerHeartbeatResponse { fenced }))
    }

    async fn controlled_shutdown(
        &self,
        request: Request<v1::ControlledShutdownRequest>,
    ) -> Result<Response<v1::ControlledShutdownResponse>, Status> {
        let metadata_index = self.commit(request.into_inner()).await?;
        Ok(Response::new(v1::ControlledShutdownResponse {
            metadata_index,
        }))
    }

    type FetchMetadataStream = MetadataStream;

    /// Sends the whole image as records (a reset) now and after every change. Images are
    /// small next to the data they describe, and a full image can never leave a follower
    /// with a gap.
    async fn fetch_metadata(
        &self,
        request: Request<v1::FetchMetadataRequest>,
    ) -> Result<Response<Self::FetchMetadataStream>, Status> {
        let request = request.into_inner();
        let quorum = Arc::clone(self.quorum()?);
        let mut images = quorum.subscribe();
        let cluster_id = quorum.cluster_id().to_owned();
        let (tx, rx) = tokio::sync::mpsc::channel(METADATA_STREAM_DEPTH);
        tokio::spawn(async move {
            // The index the follower's image is at once it applied what was sent.
            let mut sent = if request.incremental {
                request.from_index
            } else {
                0
            };
            let mut first = true;
            loop {
                images.borrow_and_update();
                let changes = quorum.changes_since(sent);
                if first || changes.image.applied_index > sent {
                    let response =
                        metadata_message(request.incremental, &cluster_id, sent, changes);
                    sent = sent.max(response.index);
                    first = false;
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
                if images.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn quorum_status(
        &self,
        _request: Request<v1::QuorumStatusRequest>,
    ) -> Result<Response<v1::QuorumStatusResponse>, Status> {
        Ok(Response::new(self.quorum()?.status().to_wire()))
    }
}
