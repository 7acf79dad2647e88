//! What the broker needs from the control plane, as a trait the broker owns.
//!
//! The broker never depends on the controller crate: it states here the few calls it makes
//! (register, heartbeat, ISR changes, controlled shutdown, creating an internal topic,
//! submitting an admin change, reading the quorum's status), and the binary wires the
//! controller in behind them. Tests run a broker against a fake.

use std::collections::BTreeMap;
use std::time::Duration;

use ferrolog_metadata::{BrokerId, ConfigResource, QuorumStatus};
use ferrolog_proto::v1::ErrorCode;
use thiserror::Error;

/// The control plane refused or failed a request. The code is the controller's own (for
/// example `TOPIC_ALREADY_EXISTS`, `NOT_CONTROLLER`, `FENCED_EPOCH`), so a client sees
/// exactly what the controller decided.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{message}")]
pub struct ControlPlaneError {
    pub code: ErrorCode,
    pub message: String,
}

/// A partition leader's request to change the ISR, at the epochs it knows (Kafka's
/// AlterPartition). The controller refuses it when either epoch is stale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlterIsrRequest {
    pub topic: String,
    pub partition: i32,
    pub leader: BrokerId,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub new_isr: Vec<BrokerId>,
}

/// A topic the broker itself needs (`__consumer_offsets`), created on first use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InternalTopic {
    pub name: String,
    pub partitions: u32,
    /// 0 picks the controller's default (at most the live brokers).
    pub replication_factor: u32,
    pub configs: BTreeMap<String, String>,
}

/// A topic administration change, as a client asked for it; the controller validates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminChange {
    CreateTopic {
        name: String,
        partitions: i64,
        /// 0 picks the controller's default.
        replication_factor: i64,
        configs: BTreeMap<String, String>,
    },
    DeleteTopic {
        name: String,
    },
    CreatePartitions {
        topic: String,
        partitions: i64,
    },
    ElectLeader {
        topic: String,
        partition: i32,
        leader: BrokerId,
    },
    ReassignPartition {
        topic: String,
        partition: i32,
        replicas: Vec<BrokerId>,
    },
    /// Sets and deletes configs of a topic or of the cluster defaults, all or nothing.
    AlterConfigs {
        resource: ConfigResource,
        set: BTreeMap<String, String>,
        delete: Vec<String>,
    },
}

/// The control plane as the broker sees it. Every call that changes metadata returns the
/// index of the metadata log entry that holds the change once it is committed; the broker
/// waits until its image has applied that index before it answers its own client.
#[tonic::async_trait]
pub trait ControlPlane: Send + Sync + 'static {
    /// Registers (or, after a restart or a fence, re-registers) this broker process.
    async fn register_broker(
        &self,
        broker: BrokerId,
        address: &str,
        incarnation_id: u64,
    ) -> Result<u64, ControlPlaneError>;

    /// Tells the controllers this broker is alive; `Ok(true)` when the active controller has
    /// it fenced or does not know this incarnation, so it must register again. Each
    /// controller is given at most `per_send` to answer.
    async fn broker_heartbeat(
        &self,
        broker: BrokerId,
        incarnation_id: u64,
        per_send: Duration,
    ) -> Result<bool, ControlPlaneError>;

    /// Asks to shrink or expand a partition's ISR.
    async fn alter_isr(&self, request: AlterIsrRequest) -> Result<u64, ControlPlaneError>;

    /// Asks for the next block of producer ids for this broker process; the block is in the
    /// image once it has applied the returned index.
    async fn allocate_producer_ids(
        &self,
        broker: BrokerId,
        incarnation_id: u64,
    ) -> Result<u64, ControlPlaneError>;

    /// Asks to move this broker's leaderships to other in-sync replicas before it stops.
    async fn controlled_shutdown(&self, broker: BrokerId) -> Result<u64, ControlPlaneError>;

    /// Creates an internal topic; `Ok(None)` when it exists already (another broker won).
    async fn create_internal_topic(
        &self,
        topic: InternalTopic,
    ) -> Result<Option<u64>, ControlPlaneError>;

    /// Submits an admin change to the active controller, wherever it runs.
    async fn submit_admin(&self, change: AdminChange) -> Result<u64, ControlPlaneError>;

    /// The quorum as the active controller reports it (this node's own view when none).
    async fn quorum_status(&self) -> QuorumStatus;
}
