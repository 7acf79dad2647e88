//! Forwarding: how a node that is not the active controller reaches one. It keeps one lazy
//! gRPC channel per controller address and sends a [`Change`] as its ControllerService
//! request; which node to send to, and when to retry, is [`Controller::submit`]'s call.
//!
//! [`Controller::submit`]: crate::Controller::submit

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use ferrolog_metadata::QuorumStatus;
use ferrolog_proto::v1::controller_service_client::ControllerServiceClient;
use ferrolog_proto::v1::{self, ErrorCode};
use tonic::transport::Channel;

use crate::change::Change;
use crate::wire;
use crate::{ControllerError, code_of};
use ferrolog_proto::status::code_name_of;

/// How long connecting to another controller may take before the attempt fails (and a
/// forwarded request moves on or retries).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bound on one ControllerService call to another controller.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The ControllerService clients of one node, one channel per controller address.
pub(crate) struct Forwarder {
    /// Controller addresses to forward to when no leader is known locally.
    voters: Vec<String>,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Forwarder {
    pub(crate) fn new(voters: Vec<String>) -> Self {
        Self {
            voters,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// The configured controller addresses (empty on a controller node, which learns them
    /// from the quorum).
    pub(crate) fn voters(&self) -> &[String] {
        &self.voters
    }

    /// A client for the controller at `address`, on a channel that connects on first use.
    pub(crate) fn client(
        &self,
        address: &str,
    ) -> Result<ControllerServiceClient<Channel>, tonic::Status> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(address) {
            Some(channel) => channel.clone(),
            None => {
                let channel = Channel::from_shared(format!("http://{address}"))
                    .map_err(|e| {
                        tonic::Status::invalid_argument(format!("bad address {address}: {e}"))
                    })?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .timeout(REQUEST_TIMEOUT)
                    .connect_lazy();
                channels.insert(address.to_owned(), channel.clone());
                channel
            }
        };
        Ok(ControllerServiceClient::new(channel))
    }

    /// Sends `change` to the controller at `address`; the index it committed at there.
    pub(crate) async fn forward(
        &self,
        address: &str,
        change: &Change,
    ) -> Result<u64, tonic::Status> {
        let mut client = self.client(address)?;
        wire::send(&mut client, change).await
    }

    /// Tries every configured controller; `Err(None)` when none accepted (retry later),
    /// `Err(Some(e))` for an answer that retrying cannot change.
    pub(crate) async fn forward_to_any(
        &self,
        change: &Change,
    ) -> Result<u64, Option<ControllerError>> {
        for address in &self.voters {
            match self.forward(address, change).await {
                Ok(index) => return Ok(index),
                Err(status) if is_retriable(&status) => continue,
                Err(status) => return Err(Some(remote_error(&status))),
            }
        }
        Err(None)
    }

    /// The quorum status as the controller at `address` sees it.
    pub(crate) async fn quorum_status_at(
        &self,
        address: &str,
    ) -> Result<QuorumStatus, tonic::Status> {
        let mut client = self.client(address)?;
        let answer = client.quorum_status(v1::QuorumStatusRequest {}).await?;
        Ok(QuorumStatus::from_wire(answer.into_inner()))
    }

    /// A broker-only node asks the controllers: the first that knows a leader, then that
    /// leader itself (only it knows replication progress).
    pub(crate) async fn quorum_status_from_voters(&self) -> QuorumStatus {
        let mut best = QuorumStatus::default();
        for address in &self.voters {
            let Ok(status) = self.quorum_status_at(address).await else {
                continue;
            };
            if status.leader.is_some_and(|l| l == status.node_id) {
                return status;
            }
            if status.leader.is_some() {
                best = status;
            }
        }
        best
    }
}

/// Whether a forwarded request certainly did not take effect, so sending it again cannot
/// apply it twice: the controller said it is not the leader, or it was never reached. Any
/// status that carries a domain code is a controller's answer, even one this build does not
/// know (a newer node's), and is final unless it is NOT_CONTROLLER.
pub(crate) fn is_retriable(status: &tonic::Status) -> bool {
    match code_name_of(status) {
        Some(_) => code_of(status) == Some(ErrorCode::NotController),
        None => status.code() == tonic::Code::Unavailable,
    }
}

/// The error for a forwarded request the active controller refused or failed, with its
/// domain code kept.
pub(crate) fn remote_error(status: &tonic::Status) -> ControllerError {
    ControllerError::Remote {
        code: code_of(status).unwrap_or(ErrorCode::Unspecified),
        message: status.message().to_owned(),
    }
}
