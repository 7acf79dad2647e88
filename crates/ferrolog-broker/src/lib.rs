//! Ferrolog's data plane: the partitions a broker hosts, the produce and fetch paths with
//! their durability rules (group commit, high watermark), and the gRPC services clients
//! call.
//!
//! The broker reads the cluster image and asks the control plane for changes through its
//! own [`ControlPlane`] trait; it never writes metadata records itself, and it must never
//! depend on the controller crate (`scripts/test.sh` checks): the binary wires the
//! controller in. It also coordinates consumer groups (see `group`).

mod broker;
pub mod cleaner;
pub mod control_plane;
mod error;
mod fetcher;
pub mod group;
mod grpc_wire;
mod internal_topic;
pub mod metrics;
mod partition;
mod partition_manager;
pub mod producer_ids;
pub mod replica;
mod replica_fetch_call;
pub mod service;
pub mod txn;

pub use broker::{Broker, BrokerConfig};
pub use control_plane::{
    AdminChange, AlterIsrRequest, ControlPlane, ControlPlaneError, InternalTopic,
};

pub use error::BrokerError;
pub use fetcher::{Applied as ReplicaFetchApplied, apply_replica_fetch_answer};
pub use metrics::BrokerMetrics;
pub use partition::{
    Divergence, FetchOutcome, FlushRound, FollowerAssignment, Partition, PartitionShared, Progress,
};
pub use partition_manager::{PartitionManager, StorageSettings};

/// The largest HTTP/2 frame a broker accepts, on its server and on its replica fetchers'
/// connections. At HTTP/2's default of 16 KiB, each megabyte of a produce request or a
/// replica fetch response is 64 frames, each its own write and TCP segment; 1 MiB frames
/// let the kernel move it in 64 KiB segments. A frame is HTTP/2's unit of multiplexing:
/// a small reply on the same connection may wait behind one 1 MiB frame (about 1 ms at
/// 10 Gbit/s) instead of one of 16 KiB.
pub const HTTP2_MAX_FRAME_BYTES: u32 = 1024 * 1024;
