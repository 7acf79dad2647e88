//! The active controller's logic: it validates admin requests against the cluster image,
//! places replicas, and proposes metadata records through the quorum, forwarding to the
//! active controller (the Raft leader) from any other node. It stores nothing itself:
//! every change it decides on becomes a record in the metadata log, and only a committed
//! record counts.
//!
//! It must never depend on the broker or the storage engine.

mod controller;
mod error;
pub mod liveness;
mod partition_change;
mod placement;
mod service;
mod topic_name;

pub use controller::{
    AlterPartitionRequest, Controller, CreateTopicRequest, DEFAULT_FORWARD_TIMEOUT,
    DEFAULT_LEADER_REBALANCE_INTERVAL, DEFAULT_REPLICATION_FACTOR, MAX_PARTITIONS_PER_TOPIC,
    decide_alter_partition, decide_create_partitions, decide_create_topic, decide_delete_topic,
    decide_elect_leader, decide_reassign_partition, decide_register_broker, status_to_wire,
};
pub use error::ControllerError;
pub use placement::assign_replicas;
pub use service::ControllerApi;
// The gRPC status mapping lives once, in ferrolog-proto; imported here for the crate's modules.
use ferrolog_proto::status::{code_of, status_with_code};
pub use topic_name::{MAX_TOPIC_NAME_CHARS, validate_topic_name};
