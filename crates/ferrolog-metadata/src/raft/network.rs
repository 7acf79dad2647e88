//! The Raft client side: openraft's RPCs over gRPC to other controllers' RaftService.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ferrolog_proto::v1::RaftPayload;
use ferrolog_proto::v1::raft_service_client::RaftServiceClient;
use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;

use super::peer_reachability::PeerReachability;
use super::{IncarnationTracker, NodeId, TypeConfig, decode, encode};

/// Who this node is on the wire: sent with every RPC so receivers can refuse a wrong
/// cluster or a duplicate node id.
#[derive(Clone, Debug)]
pub struct Sender {
    pub cluster_id: String,
    pub node_id: NodeId,
    pub address: String,
    /// Random per process start.
    pub incarnation: u64,
}

/// Creates Raft clients; keeps one lazily connected channel per peer address.
#[derive(Clone)]
pub struct GrpcNetwork {
    sender: Sender,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Peers' incarnations, as their replies name them (shared with this node's
    /// RaftService, which sees their requests).
    incarnations: Arc<IncarnationTracker>,
    /// Which peers fail to answer: reported here once per change, not by openraft per RPC.
    reachability: Arc<PeerReachability>,
}

impl GrpcNetwork {
    pub fn new(sender: Sender, incarnations: Arc<IncarnationTracker>) -> Self {
        Self {
            sender,
            channels: Arc::default(),
            incarnations,
            reachability: Arc::default(),
        }
    }

    fn channel(&self, address: &str) -> Result<Channel, tonic::codegen::http::uri::InvalidUri> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let channel = Channel::from_shared(format!("http://{address}"))?
            .connect_timeout(std::time::Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = RaftClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        RaftClient {
            target,
            address: node.addr.clone(),
            network: self.clone(),
        }
    }
}

/// A Raft client to one peer.
pub struct RaftClient {
    target: NodeId,
    address: String,
    network: GrpcNetwork,
}

#[derive(Clone, Copy)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl RaftClient {
    /// Notes a failed RPC; warns when the peer has failed for a while (and again every
    /// minute while it stays down), in place of openraft's line per RPC.
    fn report_failure(&self, status: &tonic::Status) {
        let Some(failing) = self
            .network
            .reachability
            .failed(self.target, Instant::now())
        else {
            return;
        };
        tracing::warn!(
            peer = self.target,
            address = %self.address,
            failing_for_s = failing.failing_for.as_secs(),
            failed_rpcs = failing.failed_rpcs,
            code = ?status.code(),
            error = %status.message(),
            "controller peer does not answer Raft RPCs; the quorum goes on while a majority \
             answers"
        );
    }

    async fn call<Req, Resp, E>(
        &self,
        rpc: Rpc,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = encode(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let channel = self
            .network
            .channel(&self.address)
            // A malformed peer address is a configuration error, not a peer that is down:
            // openraft's own error line for it stays visible.
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let sender = &self.network.sender;
        let mut request = tonic::Request::new(RaftPayload {
            payload,
            cluster_id: sender.cluster_id.clone(),
            sender_id: sender.node_id,
            sender_address: sender.address.clone(),
            sender_incarnation: sender.incarnation,
        });
        request.set_timeout(option.hard_ttl());
        let mut client = RaftServiceClient::new(channel)
            .max_decoding_message_size(super::MAX_CONTROLLER_MESSAGE_BYTES)
            .max_encoding_message_size(super::MAX_CONTROLLER_MESSAGE_BYTES);
        let response = match rpc {
            Rpc::AppendEntries => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::InstallSnapshot => client.install_snapshot(request).await,
        };
        let response = response.map_err(|status| match status.code() {
            tonic::Code::FailedPrecondition => RPCError::Network(NetworkError::new(
                &std::io::Error::other(status.message().to_owned()),
            )),
            // No answer: the peer is down, cut off or too slow. Reported once per change.
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                self.report_failure(&status);
                RPCError::Unreachable(Unreachable::new(&std::io::Error::other(status.to_string())))
            }
            // The peer answered with an error: a bug or a misconfiguration, said each time
            // (openraft backs off after an Unreachable error, so at most a few a second).
            code => {
                tracing::warn!(peer = self.target, address = %self.address, ?code,
                    error = %status.message(), "controller peer rejects a Raft RPC");
                RPCError::Unreachable(Unreachable::new(&std::io::Error::other(status.to_string())))
            }
        })?;
        if let Some(recovered) = self
            .network
            .reachability
            .answered(self.target, Instant::now())
        {
            tracing::info!(
                peer = self.target,
                address = %self.address,
                down_for_s = recovered.was_down_for.as_secs(),
                failed_rpcs = recovered.failed_rpcs,
                "controller peer answers Raft RPCs again"
            );
        }
        let reply = response.into_inner();
        // A follower only ever answers, so its incarnation is seen in replies: that is how
        // a second process using its id is noticed while it never sends a request itself.
        if let Err(duplicate) = self
            .network
            .incarnations
            .observe(self.target, reply.sender_incarnation)
        {
            tracing::error!(peer = self.target, %duplicate, "refusing Raft reply");
            return Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other(duplicate.to_string()),
            )));
        }
        let result: Result<Resp, E> =
            decode(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for RaftClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}
