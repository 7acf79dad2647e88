//! The tests' one way to read what a node knows about the cluster: the admin API of
//! `ferrolog-client`, asked through one node, answered in the wire types. The CLI's JSON
//! output is tested where the CLI itself is under test (tests/cli.rs), not parsed here.
//!
//! Each call bootstraps on the one address it is given, as `ferrolog --brokers ADDRESS`
//! would: `DescribeTopic` and `ClusterStatus` are answered from that node's own metadata
//! image (the offsets of a topic's partitions are that node's own replicas), so describing
//! through each node in turn shows what each one sees. A group is described by its
//! coordinator, wherever the client finds it.
//!
//! The functions block: the whole-cluster tests are synchronous, and some callers run on a
//! tokio runtime of their own. Each call therefore runs on a thread of its own with a
//! runtime of its own, and is bounded as a whole.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use ferrolog_client::{Admin, ClientConfig};

pub use ferrolog_client::{DescribeGroupResponse, DescribeTopicResponse, PartitionDescription};
pub use ferrolog_proto::v1::{
    BrokerStatus, ClusterStatusResponse, ControllerStatus, OfflinePartition,
};

/// How long one topic or group description may take, connecting included, so a node that
/// hangs (paused, or without a quorum) cannot stall a whole wait.
pub const DESCRIBE_LIMIT: Duration = Duration::from_secs(10);

/// How long one status poll may take. Shorter than [`DESCRIBE_LIMIT`]: a node without a
/// leader may answer only after its own timeout, and the leader polls go round the nodes,
/// so one silent node must not use up the wait.
pub const STATUS_LIMIT: Duration = Duration::from_secs(5);

/// `topic` as the node at `address` describes it: leader, leader epoch, replicas and ISR
/// of each partition from its metadata image, offsets from its own replicas.
pub fn topic(address: &str, topic: &str) -> anyhow::Result<DescribeTopicResponse> {
    let name = topic.to_owned();
    ask(address, DESCRIBE_LIMIT, move |admin| async move {
        admin.describe_topic(&name).await
    })
    .with_context(|| format!("describe topic {topic} via {address}"))
}

/// The metadata quorum and the brokers as the node at `address` reports them.
pub fn cluster_status(address: &str) -> anyhow::Result<ClusterStatusResponse> {
    ask(address, STATUS_LIMIT, |admin| async move {
        admin.cluster_status().await
    })
    .with_context(|| format!("cluster status via {address}"))
}

/// `group` as its coordinator describes it (members, assignments, committed offsets),
/// found through the node at `address`.
pub fn group(address: &str, group: &str) -> anyhow::Result<DescribeGroupResponse> {
    let name = group.to_owned();
    ask(address, DESCRIBE_LIMIT, move |admin| async move {
        admin.describe_group(&name).await
    })
    .with_context(|| format!("describe group {group} via {address}"))
}

/// Partition `partition` of a topic description.
pub fn partition(
    described: &DescribeTopicResponse,
    partition: i32,
) -> anyhow::Result<&PartitionDescription> {
    described
        .partitions
        .iter()
        .find(|p| p.partition == partition)
        .with_context(|| {
            format!(
                "topic {} has no partition {partition}: {described:?}",
                described.name
            )
        })
}

/// Broker `id`'s state in a cluster status ("registered" or "fenced"), if it is listed.
pub fn broker_state(status: &ClusterStatusResponse, id: i32) -> Option<&str> {
    status
        .brokers
        .iter()
        .find(|b| b.broker_id == id)
        .map(|b| b.state.as_str())
}

/// Connects an admin client bootstrapped on `address` alone and runs `request` with it, on
/// a thread and a current-thread runtime of its own, within `limit`.
fn ask<T, F, Fut>(address: &str, limit: Duration, request: F) -> anyhow::Result<T>
where
    T: Send,
    F: FnOnce(Admin) -> Fut + Send,
    Fut: Future<Output = ferrolog_client::Result<T>>,
{
    let config = ClientConfig::with_brokers([address.to_owned()]);
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> anyhow::Result<T> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("build the admin client's runtime")?;
                runtime.block_on(async move {
                    let answer = tokio::time::timeout(limit, async move {
                        let admin = Admin::connect(config).await?;
                        request(admin).await
                    })
                    .await
                    .with_context(|| format!("no answer within {limit:?}"))??;
                    Ok(answer)
                })
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the admin request thread panicked"))?
    })
}
