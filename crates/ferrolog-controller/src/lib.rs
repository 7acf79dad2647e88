//! The controller: it turns admin and broker requests into [`Change`]s, decides each one
//! against the cluster image (validation, replica placement, ISR and leader changes, fencing
//! brokers that went silent), and proposes the resulting records through the metadata
//! quorum, forwarding to the active controller (the Raft leader) from any other node. It
//! proposes records and stores nothing itself: every change it decides on becomes a record
//! in the metadata log, and only a committed record counts.
//!
//! It must never depend on the broker or the storage engine.

mod change;
mod controller;
mod decide;
mod error;
mod forward;
pub mod liveness;
mod partition_change;
mod placement;
mod service;
mod topic_name;
mod wire;

pub use change::{AlterConfigsRequest, AlterPartitionRequest, Change, CreateTopicRequest};
pub use controller::{Controller, DEFAULT_FORWARD_TIMEOUT};
pub use decide::{DEFAULT_REPLICATION_FACTOR, MAX_PARTITIONS_PER_TOPIC};
/// The controller's pure decisions, public so that the data-path simulation
/// (`crates/ferrolog-sim`) runs the very rules the active controller does (creating
/// topics, ISR changes, registration, fencing, electing leaders) on its own image.
pub mod decisions {
    pub use crate::decide::{decide_alter_partition, decide_create_topic, decide_register_broker};
    pub use crate::liveness::{
        decide_elect_offline, decide_fence_broker, decide_preferred_leaders,
    };
}
pub use error::ControllerError;
pub use liveness::{
    DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_LEADER_REBALANCE_INTERVAL, DEFAULT_SESSION_TIMEOUT,
};
pub use placement::assign_replicas;
pub use service::ControllerApi;
// The gRPC status mapping lives once, in ferrolog-proto; imported here for the crate's modules.
use ferrolog_proto::status::{code_of, status_with_code};
pub use topic_name::{MAX_TOPIC_NAME_CHARS, validate_topic_name};
