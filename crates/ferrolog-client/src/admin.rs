//! Topic administration and cluster inspection.
//!
//! Admin RPCs go to any reachable broker (the server forwards them to the controller);
//! `list_offsets` names a partition and so goes to its leader. Admin changes are not retried
//! on timeouts: a timed-out create may still have happened, and repeating it would turn a
//! success into `TOPIC_ALREADY_EXISTS`.

use std::collections::BTreeMap;

use ferrolog_proto::v1::admin_service_client::AdminServiceClient;
use ferrolog_proto::v1::client_service_client::ClientServiceClient;
use ferrolog_proto::v1::{
    CreateTopicRequest, CreateTopicResponse, DeleteRecordsRequest, DeleteRecordsResponse,
    DeleteTopicRequest, DescribeTopicRequest, DescribeTopicResponse, ListOffsetsRequest,
    ListOffsetsResponse, ListTopicsRequest, MetadataRequest, MetadataResponse, OffsetSpec,
    TopicSummary,
};

use crate::config::ClientConfig;
use crate::connection::call;
use crate::error::{ClientError, Result};
use crate::metadata::Cluster;

/// Which offset of a partition to look up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetQuery {
    /// The log start offset: the first record still retained.
    Earliest,
    /// The offset the next record will get (the high watermark, as consumers see it).
    Latest,
    /// The first offset whose timestamp is at or after this many Unix milliseconds.
    Timestamp(i64),
}

/// A handle for administrative operations. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Admin {
    cluster: Cluster,
}

impl Admin {
    /// Connects to the cluster, fetching its metadata once so a bad address fails here.
    pub async fn connect(config: ClientConfig) -> Result<Admin> {
        Ok(Admin {
            cluster: Cluster::connect(config).await?,
        })
    }

    /// Creates a topic. `replication_factor` 0 means the server's default. `configs` takes
    /// Kafka topic config names (`retention.ms`, `cleanup.policy`, ...).
    #[tracing::instrument(skip(self, configs))]
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<CreateTopicResponse> {
        let request = CreateTopicRequest {
            name: name.to_owned(),
            partitions,
            replication_factor,
            configs: configs.into_iter().collect(),
        };
        let response = self
            .admin_call(
                "a CreateTopic answer",
                move |mut client, address, timeout| {
                    let request = request.clone();
                    async move {
                        call(
                            &address,
                            "a CreateTopic answer",
                            timeout,
                            client.create_topic(request),
                        )
                        .await
                    }
                },
            )
            .await?;
        self.cluster.invalidate();
        Ok(response)
    }

    /// Deletes a topic and all of its data.
    #[tracing::instrument(skip(self))]
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let request = DeleteTopicRequest {
            name: name.to_owned(),
        };
        self.admin_call(
            "a DeleteTopic answer",
            move |mut client, address, timeout| {
                let request = request.clone();
                async move {
                    call(
                        &address,
                        "a DeleteTopic answer",
                        timeout,
                        client.delete_topic(request),
                    )
                    .await
                }
            },
        )
        .await?;
        self.cluster.invalidate();
        Ok(())
    }

    /// Every topic with its partition count and replication factor.
    #[tracing::instrument(skip(self))]
    pub async fn list_topics(&self) -> Result<Vec<TopicSummary>> {
        let response = self
            .admin_call(
                "a ListTopics answer",
                |mut client, address, timeout| async move {
                    call(
                        &address,
                        "a ListTopics answer",
                        timeout,
                        client.list_topics(ListTopicsRequest {}),
                    )
                    .await
                },
            )
            .await?;
        Ok(response.topics)
    }

    /// Controllers (with the Raft leader, term and replication lag) and brokers.
    #[tracing::instrument(skip(self))]
    pub async fn cluster_status(&self) -> Result<ferrolog_proto::v1::ClusterStatusResponse> {
        self.admin_call(
            "a ClusterStatus answer",
            |mut client, address, timeout| async move {
                call(
                    &address,
                    "a ClusterStatus answer",
                    timeout,
                    client.cluster_status(ferrolog_proto::v1::ClusterStatusRequest {}),
                )
                .await
            },
        )
        .await
    }

    /// Makes `leader` (an in-sync replica) the leader of `topic`-`partition`; returns the
    /// metadata index of the change.
    #[tracing::instrument(skip(self))]
    pub async fn elect_leader(&self, topic: &str, partition: i32, leader: i32) -> Result<u64> {
        let request = ferrolog_proto::v1::ElectLeaderRequest {
            topic: topic.to_owned(),
            partition,
            leader_id: leader,
        };
        self.admin_call(
            "an ElectLeader answer",
            move |mut client, address, timeout| {
                let request = request.clone();
                async move {
                    call(
                        &address,
                        "an ElectLeader answer",
                        timeout,
                        client.elect_leader(request),
                    )
                    .await
                }
            },
        )
        .await
        .map(|r| r.metadata_index)
    }

    /// Grows `topic` to `partitions` partitions; returns the metadata index of the change.
    /// Producers see the new partitions at their next metadata refresh.
    #[tracing::instrument(skip(self))]
    pub async fn create_partitions(&self, topic: &str, partitions: i32) -> Result<u64> {
        let request = ferrolog_proto::v1::CreatePartitionsRequest {
            topic: topic.to_owned(),
            partitions,
        };
        let index = self
            .admin_call(
                "a CreatePartitions answer",
                move |mut client, address, timeout| {
                    let request = request.clone();
                    async move {
                        call(
                            &address,
                            "a CreatePartitions answer",
                            timeout,
                            client.create_partitions(request),
                        )
                        .await
                    }
                },
            )
            .await?
            .metadata_index;
        self.cluster.invalidate();
        Ok(index)
    }

    /// Starts moving `topic`-`partition` to `replicas` (preferred leader first); returns the
    /// metadata index of the change. The move completes once every new replica has caught
    /// up: [`Admin::describe_topic`] shows its adding and removing replicas until then.
    #[tracing::instrument(skip(self))]
    pub async fn reassign_partition(
        &self,
        topic: &str,
        partition: i32,
        replicas: &[i32],
    ) -> Result<u64> {
        let request = ferrolog_proto::v1::ReassignPartitionRequest {
            topic: topic.to_owned(),
            partition,
            replicas: replicas.to_vec(),
        };
        self.admin_call(
            "a ReassignPartition answer",
            move |mut client, address, timeout| {
                let request = request.clone();
                async move {
                    call(
                        &address,
                        "a ReassignPartition answer",
                        timeout,
                        client.reassign_partition(request),
                    )
                    .await
                }
            },
        )
        .await
        .map(|r| r.metadata_index)
    }

    /// Partitions (leader, replicas, ISR, offsets, size) and effective configuration.
    #[tracing::instrument(skip(self))]
    pub async fn describe_topic(&self, name: &str) -> Result<DescribeTopicResponse> {
        let request = DescribeTopicRequest {
            name: name.to_owned(),
        };
        self.admin_call(
            "a DescribeTopic answer",
            move |mut client, address, timeout| {
                let request = request.clone();
                async move {
                    call(
                        &address,
                        "a DescribeTopic answer",
                        timeout,
                        client.describe_topic(request),
                    )
                    .await
                }
            },
        )
        .await
    }

    /// Brokers and topics as some broker knows them; an empty `topics` means all.
    #[tracing::instrument(skip_all)]
    pub async fn metadata(&self, topics: &[&str]) -> Result<MetadataResponse> {
        let request = MetadataRequest {
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        };
        let timeout = self.cluster.config().request_timeout();
        self.cluster
            .with_any_broker("a Metadata answer", true, move |address, channel| {
                let request = request.clone();
                async move {
                    let mut client = ClientServiceClient::new(channel);
                    call(
                        &address,
                        "a Metadata answer",
                        timeout,
                        client.metadata(request),
                    )
                    .await
                }
            })
            .await
    }

    /// The earliest, latest or first-at-timestamp offset of a partition, from its leader.
    pub async fn list_offsets(
        &self,
        topic: &str,
        partition: u32,
        query: OffsetQuery,
    ) -> Result<ListOffsetsResponse> {
        list_offsets(&self.cluster, topic, partition, query).await
    }

    /// Deletes every record of `topic`-`partition` before `before` (`None`: everything
    /// committed) at the partition's leader, retrying leader moves; answers with the new log
    /// start offset. Followers follow with their next fetch.
    #[tracing::instrument(skip(self))]
    pub async fn delete_records(
        &self,
        topic: &str,
        partition: u32,
        before: Option<i64>,
    ) -> Result<DeleteRecordsResponse> {
        let partition_i32 = i32::try_from(partition).map_err(|_| {
            ClientError::InvalidArgument(format!("partition {partition} is too large"))
        })?;
        let timeout = self.cluster.config().request_timeout();
        self.cluster
            .with_leader(topic, partition, |address, channel| {
                let request = DeleteRecordsRequest {
                    topic: topic.to_owned(),
                    partition: partition_i32,
                    before_offset: before.unwrap_or(-1),
                };
                async move {
                    let mut client = ClientServiceClient::new(channel);
                    call(
                        &address,
                        "a DeleteRecords answer",
                        timeout,
                        client.delete_records(request),
                    )
                    .await
                }
            })
            .await
    }

    pub(crate) fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    async fn admin_call<T, F, Fut>(&self, what: &str, request: F) -> Result<T>
    where
        F: Fn(AdminServiceClient<tonic::transport::Channel>, String, std::time::Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let timeout = self.cluster.config().request_timeout();
        self.cluster
            .with_any_broker(what, false, |address, channel| {
                request(AdminServiceClient::new(channel), address, timeout)
            })
            .await
    }
}

/// Looks up an offset at the partition's leader, retrying leader moves.
#[tracing::instrument(skip(cluster))]
pub(crate) async fn list_offsets(
    cluster: &Cluster,
    topic: &str,
    partition: u32,
    query: OffsetQuery,
) -> Result<ListOffsetsResponse> {
    let (spec, timestamp_ms) = match query {
        OffsetQuery::Earliest => (OffsetSpec::Earliest, 0),
        OffsetQuery::Latest => (OffsetSpec::Latest, 0),
        OffsetQuery::Timestamp(ts) => (OffsetSpec::Timestamp, ts),
    };
    let partition_i32 = i32::try_from(partition)
        .map_err(|_| ClientError::InvalidArgument(format!("partition {partition} is too large")))?;
    let timeout = cluster.config().request_timeout();
    cluster
        .with_leader(topic, partition, |address, channel| {
            let request = ListOffsetsRequest {
                topic: topic.to_owned(),
                partition: partition_i32,
                spec: spec as i32,
                timestamp_ms,
            };
            async move {
                let mut client = ClientServiceClient::new(channel);
                call(
                    &address,
                    "a ListOffsets answer",
                    timeout,
                    client.list_offsets(request),
                )
                .await
            }
        })
        .await
}
