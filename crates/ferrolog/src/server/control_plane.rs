//! The controller behind the broker's [`ControlPlane`] trait: the one place where the data
//! plane and the control plane meet, so neither library crate depends on the other.

use std::sync::Arc;
use std::time::Duration;

use ferrolog_broker::{
    AdminChange, AlterIsrRequest, ControlPlane, ControlPlaneError, InternalTopic,
};
use ferrolog_controller::{
    AlterConfigsRequest, AlterPartitionRequest, Controller, ControllerError, CreateTopicRequest,
};
use ferrolog_metadata::{BrokerId, QuorumStatus};
use ferrolog_proto::v1::ErrorCode;

/// The node's controller (a quorum member, or a forwarder on a broker-only node) as the
/// broker's control plane.
pub struct ControllerPlane(pub Arc<Controller>);

fn refused(error: ControllerError) -> ControlPlaneError {
    ControlPlaneError {
        code: error.code(),
        message: error.to_string(),
    }
}

#[tonic::async_trait]
impl ControlPlane for ControllerPlane {
    async fn register_broker(
        &self,
        broker: BrokerId,
        address: &str,
        incarnation_id: u64,
    ) -> Result<u64, ControlPlaneError> {
        self.0
            .register_broker(broker, address, incarnation_id)
            .await
            .map_err(refused)
    }

    async fn broker_heartbeat(
        &self,
        broker: BrokerId,
        incarnation_id: u64,
        per_send: Duration,
    ) -> Result<bool, ControlPlaneError> {
        self.0
            .broker_heartbeat(broker, incarnation_id, per_send)
            .await
            .map_err(refused)
    }

    async fn alter_isr(&self, request: AlterIsrRequest) -> Result<u64, ControlPlaneError> {
        self.0
            .alter_partition(AlterPartitionRequest {
                topic: request.topic,
                partition: request.partition,
                leader: request.leader,
                leader_epoch: request.leader_epoch,
                partition_epoch: request.partition_epoch,
                new_isr: request.new_isr,
            })
            .await
            .map_err(refused)
    }

    async fn allocate_producer_ids(
        &self,
        broker: BrokerId,
        incarnation_id: u64,
    ) -> Result<u64, ControlPlaneError> {
        self.0
            .allocate_producer_ids(broker, incarnation_id)
            .await
            .map_err(refused)
    }

    async fn controlled_shutdown(&self, broker: BrokerId) -> Result<u64, ControlPlaneError> {
        self.0.controlled_shutdown(broker).await.map_err(refused)
    }

    async fn create_internal_topic(
        &self,
        topic: InternalTopic,
    ) -> Result<Option<u64>, ControlPlaneError> {
        let request = CreateTopicRequest {
            name: topic.name,
            partitions: i64::from(topic.partitions),
            replication_factor: i64::from(topic.replication_factor),
            configs: topic.configs,
        };
        match self.0.create_topic(request).await {
            Ok(index) => Ok(Some(index)),
            Err(error) if error.code() == ErrorCode::TopicAlreadyExists => Ok(None),
            Err(error) => Err(refused(error)),
        }
    }

    async fn submit_admin(&self, change: AdminChange) -> Result<u64, ControlPlaneError> {
        let controller = &self.0;
        let result = match change {
            AdminChange::CreateTopic {
                name,
                partitions,
                replication_factor,
                configs,
            } => {
                controller
                    .create_topic(CreateTopicRequest {
                        name,
                        partitions,
                        replication_factor,
                        configs,
                    })
                    .await
            }
            AdminChange::DeleteTopic { name } => controller.delete_topic(&name).await,
            AdminChange::CreatePartitions { topic, partitions } => {
                controller.create_partitions(&topic, partitions).await
            }
            AdminChange::ElectLeader {
                topic,
                partition,
                leader,
            } => controller.elect_leader(&topic, partition, leader).await,
            AdminChange::ReassignPartition {
                topic,
                partition,
                replicas,
            } => {
                controller
                    .reassign_partition(&topic, partition, replicas)
                    .await
            }
            AdminChange::AlterConfigs {
                resource,
                set,
                delete,
            } => {
                controller
                    .alter_configs(AlterConfigsRequest {
                        resource,
                        set,
                        delete,
                    })
                    .await
            }
        };
        result.map_err(refused)
    }

    async fn quorum_status(&self) -> QuorumStatus {
        self.0.quorum_status().await
    }
}
