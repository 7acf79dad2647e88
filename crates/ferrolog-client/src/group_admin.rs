//! Group administration: list, describe, delete, and set committed offsets (resets).
//! Each call goes to the group's coordinator, except listing, which asks every broker for
//! the groups it coordinates.

use ferrolog_proto::v1::group_service_client::GroupServiceClient;
use ferrolog_proto::v1::{
    CommittedOffset, DeleteGroupRequest, DescribeGroupRequest, DescribeGroupResponse, GroupSummary,
    ListGroupsRequest, OffsetCommitRequest, OffsetFetchRequest,
};

use crate::admin::Admin;
use crate::connection::call;
use crate::error::Result;
use crate::group::{Shared, with_coordinator};

impl Admin {
    /// Every group of the cluster, from every broker's coordinator.
    #[tracing::instrument(skip(self))]
    pub async fn list_groups(&self) -> Result<Vec<GroupSummary>> {
        let brokers = self.metadata(&[]).await?.brokers;
        let timeout = self.cluster().config().request_timeout();
        let mut groups = Vec::new();
        for address in brokers.into_iter().map(|b| b.address) {
            let channel = self.cluster().channel(&address)?;
            let answer = call(
                &address,
                "a ListGroups answer",
                timeout,
                GroupServiceClient::new(channel).list_groups(ListGroupsRequest {}),
            )
            .await?;
            groups.extend(answer.groups);
        }
        groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        groups.dedup_by(|a, b| a.group_id == b.group_id);
        Ok(groups)
    }

    /// Members, assignments and committed offsets of `group`.
    #[tracing::instrument(skip(self))]
    pub async fn describe_group(&self, group: &str) -> Result<DescribeGroupResponse> {
        let request = DescribeGroupRequest {
            group_id: group.to_owned(),
        };
        with_coordinator(self.cluster(), &Shared::detached(), group, |mut c, a, t| {
            let request = request.clone();
            async move { call(&a, "a DescribeGroup answer", t, c.describe_group(request)).await }
        })
        .await
    }

    /// The committed offsets of `group` (all topics when `topics` is empty).
    pub async fn group_offsets(
        &self,
        group: &str,
        topics: &[&str],
    ) -> Result<Vec<CommittedOffset>> {
        let request = OffsetFetchRequest {
            group_id: group.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        };
        let answer = with_coordinator(self.cluster(), &Shared::detached(), group, |mut c, a, t| {
            let request = request.clone();
            async move { call(&a, "an OffsetFetch answer", t, c.offset_fetch(request)).await }
        })
        .await?;
        Ok(answer.offsets)
    }

    /// Sets committed offsets of `group` from outside it; refused (NON_EMPTY_GROUP) while
    /// the group has members, whose own commits would race the reset.
    pub async fn set_group_offsets(
        &self,
        group: &str,
        offsets: Vec<CommittedOffset>,
    ) -> Result<()> {
        let request = OffsetCommitRequest {
            group_id: group.to_owned(),
            member_id: String::new(),
            member_epoch: -1,
            offsets,
        };
        with_coordinator(self.cluster(), &Shared::detached(), group, |mut c, a, t| {
            let request = request.clone();
            async move { call(&a, "an OffsetCommit answer", t, c.offset_commit(request)).await }
        })
        .await?;
        Ok(())
    }

    /// Deletes `group` and its committed offsets; refused while it has members.
    pub async fn delete_group(&self, group: &str) -> Result<()> {
        let request = DeleteGroupRequest {
            group_id: group.to_owned(),
        };
        with_coordinator(self.cluster(), &Shared::detached(), group, |mut c, a, t| {
            let request = request.clone();
            async move { call(&a, "a DeleteGroup answer", t, c.delete_group(request)).await }
        })
        .await?;
        Ok(())
    }
}
