//! The Raft server side: RaftService on the controller port hands openraft's RPCs to the
//! local Raft node, after checking that the sender belongs to this cluster and is the node
//! it claims to be.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferrolog_proto::v1::RaftPayload;
use ferrolog_proto::v1::raft_service_server::RaftService;
use openraft::Raft;
use tonic::{Request, Response, Status};

use super::{IncarnationTracker, NodeId, Sender, TypeConfig, decode, encode};

/// The RaftService implementation.
#[derive(Clone)]
pub struct RaftApi {
    raft: Raft<TypeConfig>,
    cluster_id: String,
    /// Configured controller addresses by node id.
    voters: BTreeMap<NodeId, String>,
    incarnations: Arc<IncarnationTracker>,
    /// This node, as its replies name it.
    own: Sender,
}

impl RaftApi {
    pub fn new(
        raft: Raft<TypeConfig>,
        own: Sender,
        voters: BTreeMap<NodeId, String>,
        incarnations: Arc<IncarnationTracker>,
    ) -> Self {
        Self {
            raft,
            cluster_id: own.cluster_id.clone(),
            voters,
            incarnations,
            own,
        }
    }

    fn reply<T: serde::Serialize>(&self, value: &T) -> Result<Response<RaftPayload>, Status> {
        let payload =
            encode(value).map_err(|e| Status::internal(format!("encode Raft reply: {e}")))?;
        Ok(Response::new(RaftPayload {
            payload,
            cluster_id: self.own.cluster_id.clone(),
            sender_id: self.own.node_id,
            sender_address: self.own.address.clone(),
            sender_incarnation: self.own.incarnation,
        }))
    }

    /// Refuses traffic from another cluster (a voters list that differs) or from a second
    /// node using an id that belongs to another address.
    fn check_sender(&self, payload: &RaftPayload) -> Result<(), Status> {
        if payload.cluster_id != self.cluster_id {
            tracing::error!(sender = payload.sender_id, sender_address = %payload.sender_address,
                their_cluster = %payload.cluster_id, our_cluster = %self.cluster_id,
                "refusing Raft traffic from another cluster; do the --controller-voters lists differ?");
            return Err(Status::failed_precondition(format!(
                "cluster id mismatch: this node is in cluster {}, the sender in {}; every node \
                 must be started with the same --controller-voters",
                self.cluster_id, payload.cluster_id
            )));
        }
        if let Some(address) = self.voters.get(&payload.sender_id)
            && *address != payload.sender_address
        {
            tracing::error!(sender = payload.sender_id, claimed = %payload.sender_address,
                configured = %address, "refusing Raft traffic: duplicate node id");
            return Err(Status::failed_precondition(format!(
                "node id {} belongs to {address}, but a node at {} uses it: two nodes share one id",
                payload.sender_id, payload.sender_address
            )));
        }
        if let Err(duplicate) = self
            .incarnations
            .observe(payload.sender_id, payload.sender_incarnation)
        {
            tracing::error!(sender = payload.sender_id, %duplicate, "refusing Raft traffic");
            return Err(Status::failed_precondition(duplicate.to_string()));
        }
        Ok(())
    }
}

fn bad_payload(e: postcard::Error) -> Status {
    Status::invalid_argument(format!("undecodable Raft message: {e}"))
}

#[tonic::async_trait]
impl RaftService for RaftApi {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let payload = request.into_inner();
        self.check_sender(&payload)?;
        let rpc = decode(&payload.payload).map_err(bad_payload)?;
        self.reply(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let payload = request.into_inner();
        self.check_sender(&payload)?;
        let rpc = decode(&payload.payload).map_err(bad_payload)?;
        self.reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let payload = request.into_inner();
        self.check_sender(&payload)?;
        let rpc = decode(&payload.payload).map_err(bad_payload)?;
        self.reply(&self.raft.install_snapshot(rpc).await)
    }
}
