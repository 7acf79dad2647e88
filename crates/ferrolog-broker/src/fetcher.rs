//! The follower side of replication: one task per followed partition pulls batches from
//! the leader, truncates a divergent suffix when the leader says where its log stops
//! agreeing, and has what it appends fsynced by the partition's group-commit flusher while
//! it fetches on. Each fetch reports both where its log ends (what to send next) and where
//! its fsynced log ends (what the leader counts towards the high watermark).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ferrolog_log::Offset;
use ferrolog_metadata::BrokerId;
use ferrolog_proto::v1::replication_service_client::ReplicationServiceClient;
use ferrolog_proto::v1::{self, ErrorCode};
use tonic::transport::Channel;

use crate::partition::{FollowerAssignment, Partition};

/// How long a leader may hold a replica fetch when it has nothing new: bounds the traffic
/// of an idle cluster to about one request per followed partition per wait.
pub const REPLICA_FETCH_MAX_WAIT: Duration = Duration::from_millis(500);
/// Bytes per replica fetch.
const REPLICA_FETCH_MAX_BYTES: u32 = 8 * 1024 * 1024;
/// Longest a follower waits for its own fsync before fetching again anyway.
const DURABLE_WAIT: Duration = Duration::from_secs(5);
/// Pause after an error before fetching again (the leader may be down or changing).
const RETRY_BACKOFF: Duration = Duration::from_millis(200);

/// What every fetcher of this broker shares: the brokers' addresses (from the image) and
/// one channel per leader.
pub struct ReplicationContext {
    pub me: BrokerId,
    addresses: RwLock<HashMap<BrokerId, String>>,
    channels: Mutex<HashMap<String, Channel>>,
}

impl ReplicationContext {
    pub fn new(me: BrokerId) -> Self {
        Self {
            me,
            addresses: RwLock::default(),
            channels: Mutex::default(),
        }
    }

    pub fn set_addresses(&self, addresses: HashMap<BrokerId, String>) {
        *self.addresses.write().unwrap_or_else(|p| p.into_inner()) = addresses;
    }

    fn client(&self, broker: BrokerId) -> Option<ReplicationServiceClient<Channel>> {
        let address = self
            .addresses
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&broker)
            .cloned()?;
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(&address) {
            Some(channel) => channel.clone(),
            None => {
                let channel = Channel::from_shared(format!("http://{address}"))
                    .ok()?
                    .connect_timeout(Duration::from_secs(1))
                    .tcp_nodelay(true)
                    // A fetch response of megabytes must not trickle through HTTP/2's
                    // default 64 KiB window, a round trip per window.
                    .initial_stream_window_size(REPLICA_FETCH_MAX_BYTES * 2)
                    .initial_connection_window_size(REPLICA_FETCH_MAX_BYTES * 4)
                    .connect_lazy();
                channels.insert(address, channel.clone());
                channel
            }
        };
        Some(
            ReplicationServiceClient::new(channel)
                .max_decoding_message_size(REPLICA_FETCH_MAX_BYTES as usize + 1024 * 1024),
        )
    }
}

/// Follows the leader of `assignment` until this replica's role changes or it closes.
#[tracing::instrument(skip_all, fields(topic = partition.topic(), partition = %partition.id(),
    leader = %assignment.leader, leader_epoch = assignment.leader_epoch))]
pub async fn follow(
    partition: Arc<Partition>,
    assignment: FollowerAssignment,
    context: Arc<ReplicationContext>,
) {
    tracing::info!("following the leader");
    while partition.generation() == assignment.generation && !partition.is_closed() {
        if let Err(reason) = fetch_once(&partition, &assignment, &context).await {
            tracing::debug!(%reason, "replica fetch failed; retrying");
            tokio::time::sleep(RETRY_BACKOFF).await;
        }
    }
    tracing::info!("stopped following");
}

async fn fetch_once(
    partition: &Partition,
    assignment: &FollowerAssignment,
    context: &ReplicationContext,
) -> Result<(), String> {
    let mut client = context
        .client(assignment.leader)
        .ok_or_else(|| format!("no address known for broker {}", assignment.leader))?;
    let (fetch_offset, last_fetched_epoch) = partition.follower_position();
    let durable = partition.durable_offset();
    // While an fsync is pending, ask without waiting: the leader learns the durable end
    // from the fetch after it, which must not sit in a long poll meanwhile.
    let max_wait = if durable < fetch_offset {
        Duration::ZERO
    } else {
        REPLICA_FETCH_MAX_WAIT
    };
    let mut request = tonic::Request::new(v1::ReplicaFetchRequest {
        topic: partition.topic().to_owned(),
        partition: partition.id().0 as i32,
        replica_id: context.me.0,
        leader_epoch: assignment.leader_epoch,
        fetch_offset: fetch_offset.0,
        durable_offset: durable.0,
        last_fetched_epoch,
        max_bytes: REPLICA_FETCH_MAX_BYTES,
        max_wait_ms: max_wait.as_millis() as u32,
    });
    request.set_timeout(REPLICA_FETCH_MAX_WAIT + Duration::from_secs(5));
    let response = client
        .replica_fetch(request)
        .await
        .map_err(|status| status.message().to_owned())?
        .into_inner();
    if response.error_code == ErrorCode::OffsetOutOfRange as i32
        && fetch_offset.0 < response.log_start_offset
    {
        // Retention deleted what this replica lacks (a new replica of an old partition,
        // or one down for longer than the retention): start over at the leader's start.
        tracing::warn!(fetch_offset = %fetch_offset, leader_log_start = response.log_start_offset,
            "behind the leader's log start; restarting the log there");
        return partition
            .restart_at(Offset(response.log_start_offset), assignment.generation)
            .map_err(|e| e.to_string());
    }
    if response.error_code != ErrorCode::Unspecified as i32 {
        return Err(response.error_message);
    }
    if let Some(diverging) = response.diverging_epoch {
        if diverging.epoch < 0 && fetch_offset.0 < response.log_start_offset {
            // The leader no longer has the epochs this log ends in: retention deleted
            // them, and with them everything this replica lacks. Start over at its start.
            tracing::warn!(fetch_offset = %fetch_offset, leader_log_start = response.log_start_offset,
                "the leader's log starts after this one ends; restarting the log there");
            return partition
                .restart_at(Offset(response.log_start_offset), assignment.generation)
                .map_err(|e| e.to_string());
        }
        // Never below what this log itself says the diverging epoch covers.
        let own_end = partition
            .end_offset_for_epoch(diverging.epoch)
            .unwrap_or(Offset(diverging.end_offset));
        let target = Offset(diverging.end_offset).min(own_end);
        tracing::warn!(fetch_offset = %fetch_offset, last_fetched_epoch,
            leader_epoch_end = diverging.end_offset, epoch = diverging.epoch, truncate_to = %target,
            "log diverges from the leader's");
        return partition
            .truncate_to(target, assignment.generation)
            .map_err(|e| e.to_string());
    }
    let high_watermark = Offset(response.high_watermark);
    if response.record_batches.is_empty() {
        partition.learn_high_watermark(high_watermark);
        if durable < fetch_offset {
            // Nothing new: the next fetch is worth sending once the fsync is done.
            partition.wait_durable(fetch_offset, DURABLE_WAIT).await;
        }
        return Ok(());
    }
    partition
        .append_from_leader(
            &response.record_batches,
            high_watermark,
            assignment.generation,
        )
        .map_err(|e| e.to_string())
}
