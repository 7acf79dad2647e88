//! The active controller's logic: it validates admin requests against the cluster image,
//! places replicas, and proposes metadata records. It stores nothing itself: every change
//! it decides on becomes a record in the metadata log, and only a committed record counts.
//!
//! It must never depend on the broker or the storage engine.

mod controller;
mod error;
mod placement;
mod topic_name;

pub use controller::{Controller, CreateTopicRequest, MAX_PARTITIONS_PER_TOPIC};
pub use error::ControllerError;
pub use placement::assign_replicas;
pub use topic_name::{MAX_TOPIC_NAME_CHARS, validate_topic_name};
