//! The group coordinator's requests and answers in domain terms. Each front end (gRPC in
//! `service::group`, the Kafka protocol later) converts its own wire messages to and from
//! these, so the coordinator is written once.

use std::collections::BTreeSet;
use std::time::Duration;

use ferrolog_metadata::BrokerId;

use super::assignor::TopicPartition;
use super::state::Committed;

/// Where a group is coordinated: the leader of its `__consumer_offsets` partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoordinatorLocation {
    pub coordinator: BrokerId,
    pub address: String,
    pub offsets_partition: u32,
}

/// A KIP-848 member heartbeat (which is also how a member joins, with epoch 0, and leaves,
/// with epoch -1).
#[derive(Clone, Debug, Default)]
pub struct HeartbeatRequest {
    pub group_id: String,
    /// Empty when joining: the coordinator hands out the id.
    pub member_id: String,
    pub member_epoch: i32,
    pub client_id: String,
    pub subscribed_topics: Vec<String>,
    /// The assignor's name (`uniform`, `range`); empty keeps the group's.
    pub assignor: String,
    /// What the member owns now.
    pub owned: BTreeSet<TopicPartition>,
}

/// The coordinator's answer to a heartbeat: the member's identity and what it may own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatResponse {
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval: Duration,
    pub assignment: BTreeSet<TopicPartition>,
}

/// One offset to commit, as the member sent it (validated by the coordinator).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetToCommit {
    pub topic: String,
    pub partition: u32,
    /// The next offset to read.
    pub offset: i64,
    pub metadata: String,
}

/// A member's offset commit.
#[derive(Clone, Debug, Default)]
pub struct OffsetCommitRequest {
    pub group_id: String,
    pub member_id: String,
    pub member_epoch: i32,
    pub offsets: Vec<OffsetToCommit>,
}

/// A committed offset of one partition.
pub type CommittedOffset = (TopicPartition, Committed);

/// A group as `ListGroups` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSummary {
    pub group_id: String,
    pub state: &'static str,
    pub members: usize,
    pub coordinator: BrokerId,
}

/// A member as `DescribeGroup` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    pub member_epoch: i32,
    pub client_id: String,
    pub subscribed_topics: Vec<String>,
    pub assignment: BTreeSet<TopicPartition>,
    pub target_assignment: BTreeSet<TopicPartition>,
}

/// A group as `DescribeGroup` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    pub state: &'static str,
    pub group_epoch: i32,
    pub assignor: &'static str,
    pub members: Vec<MemberDescription>,
    pub offsets: Vec<CommittedOffset>,
    pub coordinator: BrokerId,
}
