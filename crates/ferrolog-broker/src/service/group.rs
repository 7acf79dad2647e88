//! GroupService: consumer-group membership and committed offsets, answered by the
//! group's coordinator (see `crate::group`).

use std::sync::Arc;

use ferrolog_proto::v1;
use ferrolog_proto::v1::group_service_server::GroupService;
use tonic::{Request, Response, Status};

use crate::group::GroupCoordinator;
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
        let result = self.coordinator.find_coordinator(&group).await;
        self.answer("find_coordinator", result)
    }

    async fn consumer_group_heartbeat(
        &self,
        request: Request<v1::ConsumerGroupHeartbeatRequest>,
    ) -> Result<Response<v1::ConsumerGroupHeartbeatResponse>, Status> {
        let result = self.coordinator.heartbeat(request.into_inner()).await;
        self.answer("consumer_group_heartbeat", result)
    }

    async fn offset_commit(
        &self,
        request: Request<v1::OffsetCommitRequest>,
    ) -> Result<Response<v1::OffsetCommitResponse>, Status> {
        let result = self
            .coordinator
            .commit(request.into_inner())
            .await
            .map(|()| v1::OffsetCommitResponse {});
        self.answer("offset_commit", result)
    }

    async fn offset_fetch(
        &self,
        request: Request<v1::OffsetFetchRequest>,
    ) -> Result<Response<v1::OffsetFetchResponse>, Status> {
        let result = self.coordinator.fetch_offsets(request.into_inner()).await;
        self.answer("offset_fetch", result)
    }

    async fn list_groups(
        &self,
        _request: Request<v1::ListGroupsRequest>,
    ) -> Result<Response<v1::ListGroupsResponse>, Status> {
        let result = self.coordinator.list_groups().await;
        self.answer("list_groups", result)
    }

    async fn describe_group(
        &self,
        request: Request<v1::DescribeGroupRequest>,
    ) -> Result<Response<v1::DescribeGroupResponse>, Status> {
        let group = request.into_inner().group_id;
        let result = self.coordinator.describe(&group).await;
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
