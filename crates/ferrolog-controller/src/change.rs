//! What a node asks the active controller to commit: one [`Change`] per admin or broker
//! request, the unit that is submitted, forwarded and committed.

use std::collections::BTreeMap;

use ferrolog_metadata::BrokerId;

/// A create-topic request as the admin API receives it, before validation.
#[derive(Clone, Debug, Default)]
pub struct CreateTopicRequest {
    pub name: String,
    pub partitions: i64,
    /// 0 picks [`DEFAULT_REPLICATION_FACTOR`](crate::DEFAULT_REPLICATION_FACTOR).
    pub replication_factor: i64,
    pub configs: BTreeMap<String, String>,
}

/// A change the controller commits.
#[derive(Clone, Debug)]
pub(crate) enum Change {
    CreateTopic(CreateTopicRequest),
    DeleteTopic(String),
    RegisterBroker {
        id: BrokerId,
        address: String,
        incarnation_id: u64,
    },
    AlterPartition(AlterPartitionRequest),
    ElectLeader {
        topic: String,
        partition: i32,
        leader: BrokerId,
    },
    ControlledShutdown(BrokerId),
    CreatePartitions {
        topic: String,
        partitions: i64,
    },
    ReassignPartition {
        topic: String,
        partition: i32,
        replicas: Vec<BrokerId>,
    },
}

/// A partition leader's request to change the ISR, at the epochs it knows.
#[derive(Clone, Debug)]
pub struct AlterPartitionRequest {
    pub topic: String,
    pub partition: i32,
    pub leader: BrokerId,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub new_isr: Vec<BrokerId>,
}
