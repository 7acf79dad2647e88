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

/// Messages a metadata stream may have queued for a slow broker.
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
                    records: c.records.clone(),
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

    async fn allocate_producer_ids(
        &self,
        request: Request<v1::AllocateProducerIdsRequest>,
    ) -> Result<Response<v1::AllocateProducerIdsResponse>, Status> {
        let metadata_index = self.commit(request.into_inner()).await?;
        Ok(Response::new(v1::AllocateProducerIdsResponse {
            metadata_index,
        }))
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

    #[tracing::instrument(name = "controller_alter_configs", skip_all,
        fields(resource_type = request.get_ref().resource_type,
            resource = %request.get_ref().resource_name))]
    async fn alter_configs(
        &self,
        request: Request<v1::AlterConfigsRequest>,
    ) -> Result<Response<v1::AlterConfigsResponse>, Status> {
        let change = Change::try_from(request.into_inner())?;
        let metadata_index = self.commit(change).await?;
        Ok(Response::new(v1::AlterConfigsResponse { metadata_index }))
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

    /// Sends what the follower lacks now and after every change: the entries after its
    /// image's index, or the whole image (a reset) when it has none, did not ask for
    /// entries (an older broker), or fell further behind than the entries kept. Entries
    /// and the image are read under one lock, so entries end exactly at the image and a
    /// follower never has a gap.
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
                // Only an incremental follower with an image can use entries; for the others
                // the kept entries are not even looked at.
                let changes = if request.incremental && sent > 0 {
                    quorum.changes_since(sent)
                } else {
                    MetadataChanges {
                        image: quorum.image(),
                        commands: None,
                    }
                };
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

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolog_metadata::{AppliedCommand, ClusterImage};

    fn changes(image_index: u64, commands: Option<Vec<u64>>) -> MetadataChanges {
        let image = ClusterImage {
            applied_index: image_index,
            ..ClusterImage::default()
        };
        MetadataChanges {
            image: Arc::new(image),
            commands: commands.map(|indexes| {
                indexes
                    .into_iter()
                    .map(|index| {
                        Arc::new(AppliedCommand {
                            index,
                            records: vec![vec![1, 2]],
                        })
                    })
                    .collect()
            }),
        }
    }

    #[test]
    fn an_incremental_follower_with_an_image_gets_the_entries_after_it() {
        let message = metadata_message(true, "c", 5, changes(7, Some(vec![6, 7])));
        assert!(!message.reset);
        assert_eq!(message.index, 7);
        let indexes: Vec<u64> = message.entries.iter().map(|e| e.index).collect();
        assert_eq!(indexes, [6, 7]);
        assert!(message.records.is_empty());
    }

    #[test]
    fn an_up_to_date_follower_gets_an_empty_message_at_its_own_index() {
        // Also a follower ahead of this (lagging) controller: nothing goes back in time.
        let message = metadata_message(true, "c", 9, changes(7, Some(vec![])));
        assert!(!message.reset);
        assert_eq!(message.index, 9);
        assert!(message.entries.is_empty());
    }

    #[test]
    fn the_whole_image_goes_to_old_new_and_far_behind_followers() {
        for (incremental, from, kept) in [
            (false, 5, Some(vec![6])), // an older broker that does not apply entries
            (true, 0, Some(vec![1])),  // a follower without an image
            (true, 5, None),           // entries it lacks are no longer kept
        ] {
            let message = metadata_message(incremental, "c", from, changes(7, kept));
            assert!(message.reset, "incremental={incremental} from={from}");
            assert_eq!(message.index, 7);
            assert!(message.entries.is_empty());
            assert_eq!(message.cluster_id, "c");
        }
    }
}
