//! Ferrolog's data plane: the partitions a broker hosts, the produce and fetch paths with
//! their durability rules (group commit, high watermark), and the gRPC services clients
//! call.
//!
//! The broker reads the cluster image and asks the controller for changes; it never
//! writes metadata records itself. It also coordinates consumer groups (see `group`).

mod broker;
mod error;
mod fetcher;
pub mod group;
pub mod metrics;
mod partition;
mod partition_manager;
pub mod replica;
pub mod service;

pub use broker::{Broker, BrokerConfig};
pub use error::BrokerError;
pub use metrics::BrokerMetrics;
pub use partition::{Divergence, FetchOutcome, FollowerAssignment, Partition, Progress};
pub use partition_manager::{PartitionManager, StorageSettings};
