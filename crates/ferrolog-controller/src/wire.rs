//! The ControllerService wire forms of the controller's types, written once for both sides:
//! a [`Change`] becomes one request when a node forwards it, and each request becomes that
//! [`Change`] again at the active controller; a quorum status goes out and comes back.

use ferrolog_metadata::{BrokerId, ConfigResource};
use ferrolog_proto::v1;
use ferrolog_proto::v1::controller_service_client::ControllerServiceClient;
use tonic::transport::Channel;

use crate::ControllerError;
use crate::change::{AlterConfigsRequest, AlterPartitionRequest, Change, CreateTopicRequest};

/// Sends `change` as its ControllerService request; the metadata log index it committed at.
pub(crate) async fn send(
    client: &mut ControllerServiceClient<Channel>,
    change: &Change,
) -> Result<u64, tonic::Status> {
    // Every ControllerService write answers with the index it committed at.
    macro_rules! call {
        ($method:ident, $request:expr) => {
            client.$method($request).await?.into_inner().metadata_index
        };
    }
    Ok(match change {
        Change::CreateTopic(r) => call!(
            create_topic,
            v1::CreateTopicRequest {
                name: r.name.clone(),
                partitions: r.partitions as i32,
                replication_factor: r.replication_factor as i32,
                configs: r.configs.clone().into_iter().collect(),
            }
        ),
        Change::DeleteTopic(name) => {
            call!(delete_topic, v1::DeleteTopicRequest { name: name.clone() })
        }
        Change::RegisterBroker {
            id,
            address,
            incarnation_id,
        } => call!(
            register_broker,
            v1::RegisterBrokerRequest {
                broker_id: id.0,
                address: address.clone(),
                incarnation_id: *incarnation_id,
            }
        ),
        Change::AlterPartition(r) => call!(
            alter_partition,
            v1::AlterPartitionRequest {
                topic: r.topic.clone(),
                partition: r.partition,
                leader_id: r.leader.0,
                leader_epoch: r.leader_epoch,
                partition_epoch: r.partition_epoch,
                new_isr: r.new_isr.iter().map(|b| b.0).collect(),
            }
        ),
        Change::ControlledShutdown(broker) => call!(
            controlled_shutdown,
            v1::ControlledShutdownRequest {
                broker_id: broker.0,
            }
        ),
        Change::CreatePartitions { topic, partitions } => call!(
            create_partitions,
            v1::CreatePartitionsRequest {
                topic: topic.clone(),
                partitions: i32::try_from(*partitions).unwrap_or(i32::MAX),
            }
        ),
        Change::ReassignPartition {
            topic,
            partition,
            replicas,
        } => call!(
            reassign_partition,
            v1::ReassignPartitionRequest {
                topic: topic.clone(),
                partition: *partition,
                replicas: replicas.iter().map(|b| b.0).collect(),
            }
        ),
        Change::ElectLeader {
            topic,
            partition,
            leader,
        } => call!(
            elect_leader,
            v1::ElectLeaderRequest {
                topic: topic.clone(),
                partition: *partition,
                leader_id: leader.0,
            }
        ),
        Change::AlterConfigs(r) => call!(alter_configs, alter_configs_to_wire(r)),
        Change::AllocateProducerIds {
            broker,
            incarnation_id,
        } => call!(
            allocate_producer_ids,
            v1::AllocateProducerIdsRequest {
                broker_id: broker.0,
                incarnation_id: *incarnation_id,
            }
        ),
    })
}

/// The wire form of a config change.
fn alter_configs_to_wire(r: &AlterConfigsRequest) -> v1::AlterConfigsRequest {
    let (resource_type, resource_name) = r.resource.to_wire();
    v1::AlterConfigsRequest {
        resource_type: resource_type as i32,
        resource_name,
        set: r.set.clone().into_iter().collect(),
        delete: r.delete.clone(),
    }
}

impl TryFrom<v1::AlterConfigsRequest> for Change {
    type Error = ControllerError;

    fn try_from(r: v1::AlterConfigsRequest) -> Result<Self, Self::Error> {
        Ok(Self::AlterConfigs(AlterConfigsRequest {
            resource: ConfigResource::from_wire(r.resource_type, &r.resource_name)
                .map_err(ControllerError::InvalidConfigResource)?,
            set: r.set.into_iter().collect(),
            delete: r.delete,
        }))
    }
}

impl From<v1::CreateTopicRequest> for CreateTopicRequest {
    fn from(r: v1::CreateTopicRequest) -> Self {
        Self {
            name: r.name,
            partitions: i64::from(r.partitions),
            replication_factor: i64::from(r.replication_factor),
            configs: r.configs.into_iter().collect(),
        }
    }
}

impl From<v1::AlterPartitionRequest> for AlterPartitionRequest {
    fn from(r: v1::AlterPartitionRequest) -> Self {
        Self {
            topic: r.topic,
            partition: r.partition,
            leader: BrokerId(r.leader_id),
            leader_epoch: r.leader_epoch,
            partition_epoch: r.partition_epoch,
            new_isr: r.new_isr.into_iter().map(BrokerId).collect(),
        }
    }
}

impl From<v1::CreateTopicRequest> for Change {
    fn from(r: v1::CreateTopicRequest) -> Self {
        Self::CreateTopic(r.into())
    }
}

impl From<v1::DeleteTopicRequest> for Change {
    fn from(r: v1::DeleteTopicRequest) -> Self {
        Self::DeleteTopic(r.name)
    }
}

impl From<v1::RegisterBrokerRequest> for Change {
    fn from(r: v1::RegisterBrokerRequest) -> Self {
        Self::RegisterBroker {
            id: BrokerId(r.broker_id),
            address: r.address,
            incarnation_id: r.incarnation_id,
        }
    }
}

impl From<v1::AlterPartitionRequest> for Change {
    fn from(r: v1::AlterPartitionRequest) -> Self {
        Self::AlterPartition(r.into())
    }
}

impl From<v1::ElectLeaderRequest> for Change {
    fn from(r: v1::ElectLeaderRequest) -> Self {
        Self::ElectLeader {
            topic: r.topic,
            partition: r.partition,
            leader: BrokerId(r.leader_id),
        }
    }
}

impl From<v1::ControlledShutdownRequest> for Change {
    fn from(r: v1::ControlledShutdownRequest) -> Self {
        Self::ControlledShutdown(BrokerId(r.broker_id))
    }
}

impl From<v1::AllocateProducerIdsRequest> for Change {
    fn from(r: v1::AllocateProducerIdsRequest) -> Self {
        Self::AllocateProducerIds {
            broker: BrokerId(r.broker_id),
            incarnation_id: r.incarnation_id,
        }
    }
}

impl From<v1::CreatePartitionsRequest> for Change {
    fn from(r: v1::CreatePartitionsRequest) -> Self {
        Self::CreatePartitions {
            topic: r.topic,
            partitions: i64::from(r.partitions),
        }
    }
}

impl From<v1::ReassignPartitionRequest> for Change {
    fn from(r: v1::ReassignPartitionRequest) -> Self {
        Self::ReassignPartition {
            topic: r.topic,
            partition: r.partition,
            replicas: r.replicas.into_iter().map(BrokerId).collect(),
        }
    }
}
