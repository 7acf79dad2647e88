//! Topic administration. A change goes to the control plane (which forwards it to the
//! active controller) and is acknowledged only once it is committed to the metadata log and
//! this node's partitions reflect it, so the topic is usable at once.

use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;

use ferrolog_metadata::{BrokerId, ConfigEntry, ConfigResource, ConfigSource};
use ferrolog_proto::v1;
use ferrolog_proto::v1::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

use crate::group::OFFSETS_TOPIC;
use crate::txn::TRANSACTION_STATE_TOPIC;
use crate::{AdminChange, Broker, BrokerError};

/// How long an admin call waits for local partitions to open after its commit.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(30);

/// The AdminService implementation.
#[derive(Clone)]
pub struct AdminApi {
    broker: Arc<Broker>,
}

impl AdminApi {
    pub fn new(broker: Arc<Broker>) -> Self {
        Self { broker }
    }

    fn count(&self, rpc: &'static str, result: &Result<impl Sized, BrokerError>) {
        self.broker
            .metrics()
            .count_request(rpc, result.as_ref().err().map(BrokerError::code));
    }

    /// Waits (bounded) until this node's image and partitions reflect the metadata log
    /// entry at `index`, so a topic is usable here as soon as its creation is answered.
    async fn caught_up(&self, index: u64) -> Result<(), BrokerError> {
        self.broker.wait_reconciled(index, RECONCILE_TIMEOUT).await
    }

    /// Submits `change` to the control plane and waits until this node reflects it.
    async fn apply(&self, change: AdminChange) -> Result<u64, BrokerError> {
        let index = self.broker.control_plane().submit_admin(change).await?;
        self.caught_up(index).await?;
        Ok(index)
    }

    #[tracing::instrument(name = "create_topic", skip_all, fields(topic = %request.name))]
    async fn create_topic_inner(
        &self,
        request: v1::CreateTopicRequest,
    ) -> Result<v1::CreateTopicResponse, BrokerError> {
        let name = request.name.clone();
        let index = self
            .apply(AdminChange::CreateTopic {
                name: request.name,
                partitions: i64::from(request.partitions),
                replication_factor: i64::from(request.replication_factor),
                configs: request.configs.into_iter().collect(),
            })
            .await?;
        let image = self.broker.image();
        let topic = image
            .topic(&name)
            .ok_or_else(|| BrokerError::UnknownTopic(name.clone()))?;
        Ok(v1::CreateTopicResponse {
            name: topic.name.clone(),
            partitions: topic.partitions.len() as i32,
            replication_factor: topic.replication_factor() as i32,
            metadata_index: index,
        })
    }

    #[tracing::instrument(name = "elect_leader", skip_all,
        fields(topic = %request.topic, partition = request.partition, leader = request.leader_id))]
    async fn elect_leader_inner(
        &self,
        request: v1::ElectLeaderRequest,
    ) -> Result<v1::ElectLeaderResponse, BrokerError> {
        let index = self
            .apply(AdminChange::ElectLeader {
                topic: request.topic,
                partition: request.partition,
                leader: BrokerId(request.leader_id),
            })
            .await?;
        Ok(v1::ElectLeaderResponse {
            metadata_index: index,
        })
    }

    #[tracing::instrument(name = "create_partitions", skip_all,
        fields(topic = %request.topic, partitions = request.partitions))]
    async fn create_partitions_inner(
        &self,
        request: v1::CreatePartitionsRequest,
    ) -> Result<v1::CreatePartitionsResponse, BrokerError> {
        refuse_internal_topic(&request.topic, "grow")?;
        let index = self
            .apply(AdminChange::CreatePartitions {
                topic: request.topic,
                partitions: i64::from(request.partitions),
            })
            .await?;
        Ok(v1::CreatePartitionsResponse {
            metadata_index: index,
        })
    }

    #[tracing::instrument(name = "reassign_partition", skip_all,
        fields(topic = %request.topic, partition = request.partition, replicas = ?request.replicas))]
    async fn reassign_partition_inner(
        &self,
        request: v1::ReassignPartitionRequest,
    ) -> Result<v1::ReassignPartitionResponse, BrokerError> {
        let index = self
            .apply(AdminChange::ReassignPartition {
                topic: request.topic,
                partition: request.partition,
                replicas: request.replicas.into_iter().map(BrokerId).collect(),
            })
            .await?;
        Ok(v1::ReassignPartitionResponse {
            metadata_index: index,
        })
    }

    #[tracing::instrument(name = "delete_topic", skip_all, fields(topic = %request.name))]
    async fn delete_topic_inner(
        &self,
        request: v1::DeleteTopicRequest,
    ) -> Result<v1::DeleteTopicResponse, BrokerError> {
        refuse_internal_topic(&request.name, "delete")?;
        let index = self
            .apply(AdminChange::DeleteTopic { name: request.name })
            .await?;
        Ok(v1::DeleteTopicResponse {
            metadata_index: index,
        })
    }

    #[tracing::instrument(name = "alter_configs", skip_all,
        fields(resource_type = request.resource_type, resource = %request.resource_name,
            set = ?request.set, delete = ?request.delete))]
    async fn alter_configs_inner(
        &self,
        request: v1::AlterConfigsRequest,
    ) -> Result<v1::AlterConfigsResponse, BrokerError> {
        let resource = ConfigResource::from_wire(request.resource_type, &request.resource_name)
            .map_err(BrokerError::InvalidRequest)?;
        let index = self
            .apply(AdminChange::AlterConfigs {
                resource,
                set: request.set.into_iter().collect(),
                delete: request.delete,
            })
            .await?;
        tracing::info!(metadata_index = index, "configs altered");
        Ok(v1::AlterConfigsResponse {
            metadata_index: index,
        })
    }

    #[tracing::instrument(name = "describe_configs", skip_all,
        fields(resource_type = request.resource_type, resource = %request.resource_name))]
    fn describe_configs_inner(
        &self,
        request: v1::DescribeConfigsRequest,
    ) -> Result<v1::DescribeConfigsResponse, BrokerError> {
        let resource = ConfigResource::from_wire(request.resource_type, &request.resource_name)
            .map_err(BrokerError::InvalidRequest)?;
        let image = self.broker.image();
        let defaults = &self.broker.partitions().settings().topic_defaults;
        let entries = match &resource {
            ConfigResource::Topic(name) => {
                let topic = image
                    .topic(name)
                    .ok_or_else(|| BrokerError::UnknownTopic(name.clone()))?;
                defaults.describe(&image.cluster_configs, &topic.configs)?
            }
            ConfigResource::Cluster => {
                defaults.describe(&image.cluster_configs, &BTreeMap::new())?
            }
        };
        Ok(v1::DescribeConfigsResponse {
            configs: entries.into_iter().map(config_entry_to_wire).collect(),
        })
    }

    async fn cluster_status_inner(&self) -> v1::ClusterStatusResponse {
        let wire = self.broker.control_plane().quorum_status().await.to_wire();
        let image = self.broker.image();
        v1::ClusterStatusResponse {
            cluster_id: self.broker.cluster_id(),
            controller_leader: wire.leader_id,
            term: wire.term,
            commit_index: wire.commit_index,
            applied_index: wire.applied_index,
            snapshot_index: wire.snapshot_index,
            purged_index: wire.purged_index,
            offline_partitions: image
                .topics
                .values()
                .flat_map(|t| {
                    t.partitions.iter().filter(|p| p.leader.is_none()).map(|p| {
                        v1::OfflinePartition {
                            topic: t.name.clone(),
                            partition: p.partition.0 as i32,
                            isr: p.isr.iter().map(|b| b.0).collect(),
                        }
                    })
                })
                .collect(),
            controllers: wire.controllers,
            brokers: image
                .brokers
                .values()
                .map(|b| v1::BrokerStatus {
                    broker_id: b.id.0,
                    address: b.address.clone(),
                    state: if b.fenced { "fenced" } else { "registered" }.to_owned(),
                })
                .collect(),
        }
    }

    fn list_topics_inner(&self) -> v1::ListTopicsResponse {
        let image = self.broker.image();
        v1::ListTopicsResponse {
            topics: image
                .topics
                .values()
                .map(|t| v1::TopicSummary {
                    name: t.name.clone(),
                    partitions: t.partitions.len() as i32,
                    replication_factor: t.replication_factor() as i32,
                })
                .collect(),
        }
    }

    #[tracing::instrument(name = "describe_topic", skip_all, fields(topic = %request.name))]
    fn describe_topic_inner(
        &self,
        request: v1::DescribeTopicRequest,
    ) -> Result<v1::DescribeTopicResponse, BrokerError> {
        let image = self.broker.image();
        let topic = image
            .topic(&request.name)
            .ok_or_else(|| BrokerError::UnknownTopic(request.name.clone()))?;
        let entries = self
            .broker
            .partitions()
            .settings()
            .topic_defaults
            .describe(&image.cluster_configs, &topic.configs)?;
        let partitions = topic
            .partitions
            .iter()
            .map(|p| {
                let local = self.broker.partitions().get(&topic.name, p.partition.0);
                let offsets = local.map(|l| {
                    (
                        l.log_start_offset().0,
                        l.log_end_offset().0,
                        l.high_watermark().0,
                        l.size_bytes(),
                    )
                });
                let (start, end, hw, size) = offsets.unwrap_or((-1, -1, -1, 0));
                v1::PartitionDescription {
                    partition: p.partition.0 as i32,
                    leader: p.leader.map_or(-1, |l| l.0),
                    leader_epoch: p.leader_epoch,
                    replicas: p.replicas.iter().map(|b| b.0).collect(),
                    isr: p.isr.iter().map(|b| b.0).collect(),
                    log_start_offset: start,
                    log_end_offset: end,
                    high_watermark: hw,
                    size_bytes: size,
                    adding_replicas: p.adding_replicas.iter().map(|b| b.0).collect(),
                    removing_replicas: p.removing_replicas.iter().map(|b| b.0).collect(),
                }
            })
            .collect();
        Ok(v1::DescribeTopicResponse {
            name: topic.name.clone(),
            partitions,
            configs: entries
                .iter()
                .map(|e| (e.name.clone(), e.value.clone()))
                .collect(),
            config_entries: entries.into_iter().map(config_entry_to_wire).collect(),
        })
    }
}

fn config_entry_to_wire(entry: ConfigEntry) -> v1::ConfigEntry {
    let source = match entry.source {
        ConfigSource::Default => v1::ConfigSource::Default,
        ConfigSource::Cluster => v1::ConfigSource::Cluster,
        ConfigSource::Topic => v1::ConfigSource::Topic,
    };
    v1::ConfigEntry {
        name: entry.name,
        value: entry.value,
        source: source as i32,
    }
}

/// Refuses to delete or grow an internal topic: either loses what it holds (growing
/// `__consumer_offsets` moves groups to partitions that do not have their offsets, and
/// growing `__transaction_state` moves transactional ids away from their state).
fn refuse_internal_topic(topic: &str, action: &str) -> Result<(), BrokerError> {
    let holds = match topic {
        OFFSETS_TOPIC => "the committed offsets of consumer groups",
        TRANSACTION_STATE_TOPIC => "the state of transactional producers",
        _ => return Ok(()),
    };
    Err(BrokerError::InvalidRequest(format!(
        "cannot {action} internal topic {topic}: it holds {holds}"
    )))
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_topic(
        &self,
        request: Request<v1::CreateTopicRequest>,
    ) -> Result<Response<v1::CreateTopicResponse>, Status> {
        let result = self.create_topic_inner(request.into_inner()).await;
        self.count("create_topic", &result);
        result.map(Response::new).map_err(Status::from)
    }

    async fn delete_topic(
        &self,
        request: Request<v1::DeleteTopicRequest>,
    ) -> Result<Response<v1::DeleteTopicResponse>, Status> {
        let result = self.delete_topic_inner(request.into_inner()).await;
        self.count("delete_topic", &result);
        result.map(Response::new).map_err(Status::from)
    }

    async fn elect_leader(
        &self,
        request: Request<v1::ElectLeaderRequest>,
    ) -> Result<Response<v1::ElectLeaderResponse>, Status> {
        let result = self.elect_leader_inner(request.into_inner()).await;
        self.count("elect_leader", &result);
        result.map(Response::new).map_err(Status::from)
    }

    async fn create_partitions(
        &self,
        request: Request<v1::CreatePartitionsRequest>,
    ) -> Result<Response<v1::CreatePartitionsResponse>, Status> {
        let result = self.create_partitions_inner(request.into_inner()).await;
        self.count("create_partitions", &result);
        result.map(Response::new).map_err(Status::from)
    }

    async fn reassign_partition(
        &self,
        request: Request<v1::ReassignPartitionRequest>,
    ) -> Result<Response<v1::ReassignPartitionResponse>, Status> {
        let result = self.reassign_partition_inner(request.into_inner()).await;
        self.count("reassign_partition", &result);
        result.map(Response::new).map_err(Status::from)
    }

    async fn alter_configs(
        &self,
        request: Request<v1::AlterConfigsRequest>,
    ) -> Result<Response<v1::AlterConfigsResponse>, Status> {
        let result = self.alter_configs_inner(request.into_inner()).await;
        self.count("alter_configs", &result);
        result.map(Response::new).map_err(Status::from)
    }

    async fn describe_configs(
        &self,
        request: Request<v1::DescribeConfigsRequest>,
    ) -> Result<Response<v1::DescribeConfigsResponse>, Status> {
        let result = self.describe_configs_inner(request.into_inner());
        self.count("describe_configs", &result);
        result.map(Response::new).map_err(Status::from)
    }

    async fn list_topics(
        &self,
        _request: Request<v1::ListTopicsRequest>,
    ) -> Result<Response<v1::ListTopicsResponse>, Status> {
        let result: Result<_, BrokerError> = Ok(self.list_topics_inner());
        self.count("list_topics", &result);
        result.map(Response::new).map_err(Status::from)
    }

    async fn describe_topic(
        &self,
        request: Request<v1::DescribeTopicRequest>,
    ) -> Result<Response<v1::DescribeTopicResponse>, Status> {
        let result = self.describe_topic_inner(request.into_inner());
        self.count("describe_topic", &result);
        result.map(Response::new).map_err(Status::from)
    }

    async fn cluster_status(
        &self,
        _request: Request<v1::ClusterStatusRequest>,
    ) -> Result<Response<v1::ClusterStatusResponse>, Status> {
        let status = self.cluster_status_inner().await;
        self.broker.metrics().count_request("cluster_status", None);
        Ok(Response::new(status))
    }
}
