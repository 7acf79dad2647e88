//! Consumer groups: the coordinator, its state machine, the assignors, and what it keeps
//! in `__consumer_offsets`. See `proto/ferrolog/v1/group.proto` for the protocol.

pub mod assignor;
mod coordinator;
mod log;
mod requests;
mod state;

pub use assignor::TopicPartition;
pub use coordinator::{
    DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_SESSION_TIMEOUT, GroupConfig, GroupCoordinator,
};
pub use log::{DEFAULT_OFFSETS_PARTITIONS, OFFSETS_TOPIC, partition_for};
pub use requests::{
    CommittedOffset, CoordinatorLocation, GroupDescription, GroupSummary, HeartbeatRequest,
    HeartbeatResponse, MemberDescription, OffsetCommitRequest, OffsetToCommit,
};
pub use state::{Committed, GroupError};
