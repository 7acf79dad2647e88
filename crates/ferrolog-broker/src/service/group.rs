//! GroupService: consumer-group membership and committed offsets, answered by the
//! group's coordinator (see `crate::group`). This module only converts between the gRPC
//! messages and the coordinator's domain types.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ferrolog_proto::v1;
use ferrolog_proto::v1::group_service_server::GroupService;
use tonic::{Request, Response, Status};

use crate::group::{
    CommittedOffset, GroupCoordinator, HeartbeatRequest, OffsetCommitRequest, OffsetToCommit,
    TopicPartition,
};
use crate::{BrokerError, BrokerMetrics};

/// The GroupService implementation.
#[derive(Clone)]
pub struct GroupApi {
    coordinator: Arc<GroupCoordinator>,
    metrics: Arc<BrokerMetrics>,
}

impl GroupApi {
    pub fn new(coordinator: Arc<GroupCoordinator>, metrics: Arc<BrokerMetrics>) -> Self {
        Self {
            coordinator,
            metrics,
        }
    }

    fn answer<T>(
        &self,
        rpc: &'static str,
        result: Result<T, BrokerError>,
    ) -> Result<Response<T>, Status> {
        self.metrics
            .count_request(rpc, result.as_ref().err().map(BrokerError::code));
        result.map(Response::new).map_err(Status::from)
    }
}

#[tonic::async_trait]
impl GroupService for GroupApi {
    async fn find_coordinator(
        &self,
        request: Request<v1::FindCoordinatorRequest>,
    ) -> Result<Response<v1::FindCoordinatorResponse>, Status> {
        let group = request.into_inner().group_id;
        let result = self
            .coordinator
            .find_coordinator(&group)
            .await
            .map(|found| v1::FindCoordinatorResponse {
                coordinator_id: found.coordinator.0,
                address: found.address,
                partition: found.offsets_partition as i32,
            });
        self.answer("find_coordinator", result)
    }

    async fn consumer_group_heartbeat(
        &self,
        request: Request<v1::ConsumerGroupHeartbeatRequest>,
    ) -> Result<Response<v1::ConsumerGroupHeartbeatResponse>, Status> {
        let r = request.into_inner();
        let request = HeartbeatRequest {
            group_id: r.group_id,
            member_id: r.member_id,
            member_epoch: r.member_epoch,
            client_id: r.client_id,
            subscribed_topics: r.subscribed_topics,
            assignor: r.assignor,
            owned: partitions_from_wire(&r.owned_partitions),
        };
        let result = self.coordinator.heartbeat(request).await.map(|answer| {
            v1::ConsumerGroupHeartbeatResponse {
                member_id: answer.member_id,
                member_epoch: answer.member_epoch,
                heartbeat_interval_ms: i32::try_from(answer.heartbeat_interval.as_millis())
                    .unwrap_or(i32::MAX),
                assignment: partitions_to_wire(&answer.assignment),
            }
        });
        self.answer("consumer_group_heartbeat", result)
    }

    async fn offset_commit(
        &self,
        request: Request<v1::OffsetCommitRequest>,
    ) -> Result<Response<v1::OffsetCommitResponse>, Status> {
        let result = match commit_from_wire(request.into_inner()) {
            Ok(request) => self.coordinator.commit(request).await,
            Err(error) => Err(error),
        };
        self.answer(
            "offset_commit",
            result.map(|()| v1::OffsetCommitResponse {}),
        )
    }

    async fn offset_fetch(
        &self,
        request: Request<v1::OffsetFetchRequest>,
    ) -> Result<Response<v1::OffsetFetchResponse>, Status> {
        let r = request.into_inner();
        let result = self
            .coordinator
            .fetch_offsets(&r.group_id, &r.topics)
            .await
            .map(|offsets| v1::OffsetFetchResponse {
                offsets: committed_to_wire(offsets),
            });
        self.answer("offset_fetch", result)
    }

    async fn list_groups(
        &self,
        _request: Request<v1::ListGroupsRequest>,
    ) -> Result<Response<v1::ListGroupsResponse>, Status> {
        let result = self
            .coordinator
            .list_groups()
            .await
            .map(|groups| v1::ListGroupsResponse {
                groups: groups
                    .into_iter()
                    .map(|g| v1::GroupSummary {
                        group_id: g.group_id,
                        state: g.state.to_owned(),
                        members: i32::try_from(g.members).unwrap_or(i32::MAX),
                        coordinator_id: g.coordinator.0,
                    })
                    .collect(),
            });
        self.answer("list_groups", result)
    }

    async fn describe_group(
        &self,
        request: Request<v1::DescribeGroupRequest>,
    ) -> Result<Response<v1::DescribeGroupResponse>, Status> {
        let group = request.into_inner().group_id;
        let result = self
            .coordinator
            .describe(&group)
            .await
            .map(|g| v1::DescribeGroupResponse {
                group_id: g.group_id,
                state: g.state.to_owned(),
                group_epoch: g.group_epoch,
                assignor: g.assignor.to_owned(),
                members: g
                    .members
                    .into_iter()
                    .map(|m| v1::GroupMember {
                        member_id: m.member_id,
                        member_epoch: m.member_epoch,
                        client_id: m.client_id,
                        subscribed_topics: m.subscribed_topics,
                        assignment: partitions_to_wire(&m.assignment),
                        target_assignment: partitions_to_wire(&m.target_assignment),
                    })
                    .collect(),
                offsets: committed_to_wire(g.offsets),
                coordinator_id: g.coordinator.0,
            });
        self.answer("describe_group", result)
    }

    async fn delete_group(
        &self,
        request: Request<v1::DeleteGroupRequest>,
    ) -> Result<Response<v1::DeleteGroupResponse>, Status> {
        let group = request.into_inner().group_id;
        let result = self
            .coordinator
            .delete(&group)
            .await
            .map(|()| v1::DeleteGroupResponse {});
        self.answer("delete_group", result)
    }
}

/// A member's owned partitions; negative partition numbers name nothing and are dropped.
fn partitions_from_wire(partitions: &[v1::TopicPartitions]) -> BTreeSet<TopicPartition> {
    partitions
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .filter_map(|p| u32::try_from(*p).ok())
                .map(|partition| TopicPartition {
                    topic: t.topic.clone(),
                    partition,
                })
        })
        .collect()
}

fn partitions_to_wire(partitions: &BTreeSet<TopicPartition>) -> Vec<v1::TopicPartitions> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for tp in partitions {
        by_topic
            .entry(&tp.topic)
            .or_default()
            .push(tp.partition as i32);
    }
    by_topic
        .into_iter()
        .map(|(topic, partitions)| v1::TopicPartitions {
            topic: topic.to_owned(),
            partitions,
        })
        .collect()
}

/// An offset commit; a negative partition number is refused, naming it.
fn commit_from_wire(r: v1::OffsetCommitRequest) -> Result<OffsetCommitRequest, BrokerError> {
    Ok(OffsetCommitRequest {
        offsets: offsets_from_wire(r.offsets)?,
        group_id: r.group_id,
        member_id: r.member_id,
        member_epoch: r.member_epoch,
    })
}

/// Offsets to commit, as the wire carries them; a negative partition is refused.
pub(crate) fn offsets_from_wire(
    offsets: Vec<v1::CommittedOffset>,
) -> Result<Vec<OffsetToCommit>, BrokerError> {
    offsets
        .into_iter()
        .map(|o| {
            let partition = u32::try_from(o.partition).map_err(|_| {
                BrokerError::InvalidRequest(format!("partition {} is negative", o.partition))
            })?;
            Ok(OffsetToCommit {
                topic: o.topic,
                partition,
                offset: o.offset,
                metadata: o.metadata,
            })
        })
        .collect()
}

fn committed_to_wire(offsets: Vec<CommittedOffset>) -> Vec<v1::CommittedOffset> {
    offsets
        .into_iter()
        .map(|(tp, c)| v1::CommittedOffset {
            topic: tp.topic,
            partition: tp.partition as i32,
            offset: c.offset,
            metadata: c.metadata,
            commit_timestamp_ms: c.commit_timestamp_ms,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_partitions_survive_the_round_trip_grouped_by_topic() {
        let wire = vec![
            v1::TopicPartitions {
                topic: "a".to_owned(),
                partitions: vec![2, 0],
            },
            v1::TopicPartitions {
                topic: "b".to_owned(),
                partitions: vec![1, -1],
            },
        ];
        let owned = partitions_from_wire(&wire);
        assert_eq!(owned.len(), 3, "the negative partition names nothing");
        let back = partitions_to_wire(&owned);
        assert_eq!(back[0].partitions, vec![0, 2]);
        assert_eq!(back[1].partitions, vec![1]);
    }

    #[test]
    fn a_commit_with_a_negative_partition_is_refused_with_its_number() {
        let request = v1::OffsetCommitRequest {
            group_id: "g".to_owned(),
            offsets: vec![v1::CommittedOffset {
                topic: "t".to_owned(),
                partition: -3,
                offset: 1,
                ..Default::default()
            }],
            ..Default::default()
        };
        let error = commit_from_wire(request).expect_err("refused");
        assert_eq!(error.to_string(), "partition -3 is negative");
    }
}
