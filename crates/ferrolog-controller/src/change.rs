//! What a node asks the active controller to commit: one [`Change`] per admin or broker
//! request, the unit that is submitted, forwarded and committed.

use std::collections::BTreeMap;

use ferrolog_metadata::{BrokerId, ConfigResource};

/// A create-topic request as the admin API receives it, before validation.
#[derive(Clone, Debug, Default)]
pub struct CreateTopicRequest {
    pub name: String,
    pub partitions: i64,
    /// 0 picks [`DEFAULT_REPLICATION_FACTOR`](crate::DEFAULT_REPLICATION_FACTOR).
    pub replication_factor: i64,
    pub configs: BTreeMap<String, String>,
}

/// A change to the cluster metadata: the unit a node submits
/// ([`Controller::submit`](crate::Controller::submit)), forwards to the active controller,
/// and the active controller decides on and commits. Each variant is one ControllerService
/// write.
#[derive(Clone, Debug)]
pub enum Change {
    /// Creates a topic (validated before it leaves the node that received it).
    CreateTopic(CreateTopicRequest),
    /// Deletes the named topic.
    DeleteTopic(String),
    /// Registers (or re-registers, after a restart) process `incarnation_id` of broker `id`
    /// at `address`; a registration unfences the broker.
    RegisterBroker {
        id: BrokerId,
        address: String,
        incarnation_id: u64,
    },
    /// Changes a partition's ISR at its leader's request.
    AlterPartition(AlterPartitionRequest),
    /// Makes `leader`, an ISR member, the partition's leader.
    ElectLeader {
        topic: String,
        partition: i32,
        leader: BrokerId,
    },
    /// Moves the broker's leaderships to other live in-sync replicas and fences it, before
    /// it stops.
    ControlledShutdown(BrokerId),
    /// Grows `topic` to `partitions` partitions (never fewer than it has).
    CreatePartitions { topic: String, partitions: i64 },
    /// Starts moving a partition to `replicas` (Kafka's KIP-455): the new replicas copy
    /// the log and join the ISR before the leaving ones are removed.
    ReassignPartition {
        topic: String,
        partition: i32,
        replicas: Vec<BrokerId>,
    },
    /// Sets and deletes configs of a topic or of the cluster defaults (Kafka's
    /// IncrementalAlterConfigs), all of it or none.
    AlterConfigs(AlterConfigsRequest),
    /// Gives process `incarnation_id` of broker `broker` the next block of producer ids
    /// (Kafka's AllocateProducerIds, KIP-730); the broker reads it from its image.
    AllocateProducerIds {
        broker: BrokerId,
        incarnation_id: u64,
    },
}

/// An incremental config change of one resource, as the admin API receives it.
#[derive(Clone, Debug)]
pub struct AlterConfigsRequest {
    pub resource: ConfigResource,
    pub set: BTreeMap<String, String>,
    pub delete: Vec<String>,
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
