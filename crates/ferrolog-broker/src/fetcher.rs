//! The follower side of replication. A broker runs one fetcher per leader it follows
//! partitions of (Kafka's replica fetcher): each request carries all of those partitions,
//! so a follower sends one request per leader however many partitions it follows there,
//! and an idle cluster sends about one request per follower-leader pair per long poll.
//!
//! Per partition, the fetcher truncates a divergent suffix when the leader says where its
//! log stops agreeing, restarts behind the leader's log start, and appends the batches it
//! gets; the partition's group-commit flusher fsyncs them. Each request reports both where
//! a log ends (what to send next) and where its fsynced log ends (what the leader counts
//! towards the high watermark). While the leader has more to send, the fetcher fetches on
//! during the fsyncs; once it has everything, it waits for them, so that its next request
//! (a long poll) reports them instead of an immediate one coming back empty. The wait
//! covers every partition of the request: a batch that reaches the leader meanwhile is
//! fetched once the fsyncs are done (at most `DURABLE_WAIT` later), in the request that
//! reports them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use ferrolog_log::Offset;
use ferrolog_metadata::BrokerId;
use ferrolog_proto::retry::Backoff;
use ferrolog_proto::v1::{self, ErrorCode};
use tokio::sync::Notify;
use tonic::transport::Channel;

use crate::HTTP2_MAX_FRAME_BYTES;
use crate::partition::{FollowerAssignment, Partition};
use crate::replica_fetch_call::replica_fetch;

/// How long a leader may hold a replica fetch when it has nothing new: bounds the traffic
/// of an idle cluster to about one request per follower-leader pair per wait.
pub const REPLICA_FETCH_MAX_WAIT: Duration = Duration::from_millis(500);
/// Bytes of batches per partition per fetch.
const PARTITION_FETCH_MAX_BYTES: u32 = 8 * 1024 * 1024;
/// Bytes of batches per fetch over all its partitions. The first partition with batches
/// gets at least one whole batch, however large (KIP-74).
const FETCH_MAX_BYTES: u32 = 16 * 1024 * 1024;
/// Above the largest batch a broker accepts (its gRPC messages stop at 100 MiB), so a
/// fetch that carries one can always be decoded.
const LARGEST_BATCH_BYTES: usize = 128 * 1024 * 1024;
/// Longest a follower waits for its own fsyncs before fetching again anyway: the
/// partitions fetched from one leader share the wait.
const DURABLE_WAIT: Duration = Duration::from_secs(1);
/// Pause after a failed request before fetching again (the leader may be down or changing).
const RETRY_BACKOFF: Duration = Duration::from_millis(200);
/// First pause of a partition the leader answered with an error for, doubling with each
/// failure in a row up to `RETRY_BACKOFF`. The usual error is transient: a new partition
/// whose leader has not opened it yet (both brokers apply the same metadata record, a few
/// milliseconds apart), and every acks=all produce to it waits for this retry.
const PARTITION_RETRY: Backoff = Backoff::new(Duration::from_millis(10), RETRY_BACKOFF);
/// Longest a fetcher waits for a TCP connection to a leader before the request fails (and
/// is retried after `RETRY_BACKOFF`). Brokers talk over a LAN, where a connection takes
/// well under a millisecond: one that has not come up within a second is to a leader that
/// is down or unreachable, and the next image may name another.
const LEADER_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Time a replica fetch may take beyond the leader's long poll (`REPLICA_FETCH_MAX_WAIT`)
/// before the follower gives up on it: room to send a full answer (`FETCH_MAX_BYTES` and a
/// batch of up to `LARGEST_BATCH_BYTES`, about a second at 1 Gbit/s) on a busy network.
/// The leader learns the whole deadline from the request and bounds its long poll by it.
const REPLICA_FETCH_TRANSFER_TIME: Duration = Duration::from_secs(5);

/// This broker's replica fetchers, one per leader, with the brokers' addresses (from the
/// image) and one channel per leader.
pub struct ReplicaFetchers {
    me: BrokerId,
    addresses: RwLock<HashMap<BrokerId, String>>,
    channels: Mutex<HashMap<String, Channel>>,
    fetchers: Mutex<HashMap<BrokerId, Arc<LeaderFetcher>>>,
}

/// The partitions this broker follows on one leader.
struct LeaderFetcher {
    leader: BrokerId,
    followed: Mutex<Vec<Followed>>,
    /// Wakes the fetcher when a partition joins, so the partition does not wait out a long
    /// poll before its first fetch.
    joined: Notify,
}

struct Followed {
    partition: Arc<Partition>,
    assignment: FollowerAssignment,
    /// After an error, the partition sits out of requests until then.
    retry_at: Option<Instant>,
    /// Errors in a row for this partition (sets the next pause).
    failures: u32,
}

/// A followed partition as one request asks for it.
struct Asked {
    partition: Arc<Partition>,
    assignment: FollowerAssignment,
    fetch_offset: Offset,
    last_fetched_epoch: i32,
    durable: Offset,
    /// Its errors in a row so far.
    failures: u32,
}

/// What a fetcher does next.
enum Next {
    /// Ask for these; `next_retry` is when the first partition left out (backing off after
    /// an error) may be asked again.
    Fetch {
        asked: Vec<Asked>,
        next_retry: Option<Instant>,
    },
    /// Every partition is backing off after an error.
    WaitUntil(Instant),
    /// It follows nothing any more (it was removed from the fetchers).
    Stop,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl ReplicaFetchers {
    pub fn new(me: BrokerId) -> Self {
        Self {
            me,
            addresses: RwLock::default(),
            channels: Mutex::default(),
            fetchers: Mutex::default(),
        }
    }

    pub fn set_addresses(&self, addresses: HashMap<BrokerId, String>) {
        *self.addresses.write().unwrap_or_else(|p| p.into_inner()) = addresses;
    }

    /// Follows the leader of `assignment` for `partition`, until the partition's role
    /// changes (its generation moves on) or it closes.
    pub fn follow(self: &Arc<Self>, partition: Arc<Partition>, assignment: FollowerAssignment) {
        tracing::info!(topic = partition.topic(), partition = %partition.id(),
            leader = %assignment.leader, leader_epoch = assignment.leader_epoch,
            "following the leader");
        let mut fetchers = lock(&self.fetchers);
        let mut started = None;
        let fetcher = fetchers.entry(assignment.leader).or_insert_with(|| {
            let fetcher = Arc::new(LeaderFetcher {
                leader: assignment.leader,
                followed: Mutex::default(),
                joined: Notify::new(),
            });
            started = Some(Arc::clone(&fetcher));
            fetcher
        });
        {
            let mut followed = lock(&fetcher.followed);
            followed.retain(|f| !Arc::ptr_eq(&f.partition, &partition));
            followed.push(Followed {
                partition,
                assignment,
                retry_at: None,
                failures: 0,
            });
        }
        fetcher.joined.notify_one();
        drop(fetchers);
        if let Some(fetcher) = started {
            tokio::spawn(Arc::clone(self).run(fetcher));
        }
    }

    fn channel(&self, broker: BrokerId) -> Option<Channel> {
        let address = self
            .addresses
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&broker)
            .cloned()?;
        let mut channels = lock(&self.channels);
        let channel = match channels.get(&address) {
            Some(channel) => channel.clone(),
            None => {
                let channel = Channel::from_shared(format!("http://{address}"))
                    .ok()?
                    .connect_timeout(LEADER_CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    // A fetch response of megabytes must not trickle through HTTP/2's
                    // default 64 KiB window, a round trip per window.
                    .initial_stream_window_size(FETCH_MAX_BYTES)
                    .initial_connection_window_size(FETCH_MAX_BYTES * 2)
                    .max_frame_size(HTTP2_MAX_FRAME_BYTES)
                    .connect_lazy();
                channels.insert(address, channel.clone());
                channel
            }
        };
        Some(channel)
    }

    #[tracing::instrument(name = "replica_fetcher", skip_all, fields(leader = %fetcher.leader))]
    async fn run(self: Arc<Self>, fetcher: Arc<LeaderFetcher>) {
        tracing::info!("replica fetcher started");
        let mut rotation = 0usize;
        loop {
            let (asked, next_retry) = match self.next(&fetcher, rotation) {
                Next::Fetch { asked, next_retry } => (asked, next_retry),
                Next::WaitUntil(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at.into()) => {}
                        () = fetcher.joined.notified() => {}
                    }
                    continue;
                }
                Next::Stop => break,
            };
            // Rotating where a request starts shares the byte budget among busy partitions.
            rotation = rotation.wrapping_add(1);
            let joined = fetcher.joined.notified();
            tokio::pin!(joined);
            let round = async {
                match self.fetch(&fetcher, &asked, next_retry).await {
                    Ok(()) => {}
                    Err(reason) => {
                        tracing::debug!(%reason, "replica fetch failed; retrying");
                        tokio::time::sleep(RETRY_BACKOFF).await;
                    }
                }
            };
            tokio::select! {
                () = round => {}
                // A partition joined: ask again at once, for it too.
                () = &mut joined => {}
            }
        }
        tracing::info!("replica fetcher stopped");
    }

    /// The partitions to ask for now, dropping those whose role changed since they joined.
    fn next(&self, fetcher: &Arc<LeaderFetcher>, rotation: usize) -> Next {
        // Lock order: the fetchers, then one fetcher's partitions (as in `follow`), so no
        // partition can join a fetcher that has just decided to stop.
        let mut fetchers = lock(&self.fetchers);
        let mut followed = lock(&fetcher.followed);
        // A replica whose fsync failed replicates nothing more (its log is offline).
        followed.retain(|f| {
            f.partition.generation() == f.assignment.generation
                && !f.partition.is_closed()
                && !f.partition.storage_failed()
        });
        if followed.is_empty() {
            if fetchers
                .get(&fetcher.leader)
                .is_some_and(|f| Arc::ptr_eq(f, fetcher))
            {
                fetchers.remove(&fetcher.leader);
            }
            return Next::Stop;
        }
        drop(fetchers);
        let now = Instant::now();
        let mut asked: Vec<Asked> = followed
            .iter()
            .filter(|f| f.retry_at.is_none_or(|at| at <= now))
            .map(|f| {
                let (fetch_offset, last_fetched_epoch) = f.partition.follower_position();
                Asked {
                    partition: Arc::clone(&f.partition),
                    assignment: f.assignment,
                    fetch_offset,
                    last_fetched_epoch,
                    durable: f.partition.durable_offset(),
                    failures: f.failures,
                }
            })
            .collect();
        // When the first partition left out (backing off after an error) may be asked again.
        let next_retry = followed
            .iter()
            .filter_map(|f| f.retry_at)
            .filter(|at| *at > now)
            .min();
        if asked.is_empty() {
            return Next::WaitUntil(next_retry.unwrap_or(now + RETRY_BACKOFF));
        }
        let len = asked.len();
        asked.rotate_left(rotation % len);
        Next::Fetch { asked, next_retry }
    }

    /// One request to the leader for `asked`, and what follows from its answer.
    async fn fetch(
        &self,
        fetcher: &LeaderFetcher,
        asked: &[Asked],
        next_retry: Option<Instant>,
    ) -> Result<(), String> {
        let channel = self
            .channel(fetcher.leader)
            .ok_or_else(|| format!("no address known for broker {}", fetcher.leader))?;
        let fsync_pending = asked.iter().any(|a| a.durable < a.fetch_offset);
        let max_wait = long_poll_wait(Instant::now(), fsync_pending, next_retry);
        let request = v1::ReplicaFetchRequest {
            replica_id: self.me.0,
            // Rounded up: a retry due in under a millisecond is not asked for early.
            max_wait_ms: max_wait.as_micros().div_ceil(1000) as u32,
            max_bytes: FETCH_MAX_BYTES,
            partitions: asked
                .iter()
                .map(|a| v1::ReplicaFetchPartition {
                    topic: a.partition.topic().to_owned(),
                    partition: a.partition.id().0 as i32,
                    leader_epoch: a.assignment.leader_epoch,
                    fetch_offset: a.fetch_offset.0,
                    last_fetched_epoch: a.last_fetched_epoch,
                    durable_offset: a.durable.0,
                    max_bytes: PARTITION_FETCH_MAX_BYTES,
                })
                .collect(),
        };
        let response = replica_fetch(
            &channel,
            &request,
            REPLICA_FETCH_MAX_WAIT + REPLICA_FETCH_TRANSFER_TIME,
            FETCH_MAX_BYTES as usize + LARGEST_BATCH_BYTES,
        )
        .await
        .map_err(|status| status.message().to_owned())?;
        if response.partitions.len() != asked.len() {
            return Err(format!(
                "the leader answered for {} partitions, asked {}",
                response.partitions.len(),
                asked.len()
            ));
        }
        let mut moved = false;
        let mut leader_has_more = false;
        // Partitions whose count of errors in a row changes, with the new count.
        let mut outcomes = Vec::new();
        for (a, data) in asked.iter().zip(response.partitions) {
            match apply(a, data) {
                Ok(applied) => {
                    moved |= applied.moved;
                    leader_has_more |= applied.leader_has_more;
                    if a.failures > 0 {
                        outcomes.push((a, 0));
                    }
                }
                Err(reason) => {
                    tracing::debug!(topic = a.partition.topic(), partition = %a.partition.id(),
                        %reason, "partition fetch failed; retrying it");
                    outcomes.push((a, a.failures.saturating_add(1)));
                }
            }
        }
        if !outcomes.is_empty() {
            let now = Instant::now();
            for f in lock(&fetcher.followed).iter_mut() {
                // Only the entry the request was for: one that re-joined since (a new
                // role) starts afresh.
                let outcome = outcomes.iter().find(|(a, _)| {
                    Arc::ptr_eq(&a.partition, &f.partition)
                        && a.assignment.generation == f.assignment.generation
                });
                if let Some((_, failures)) = outcome {
                    f.failures = *failures;
                    f.retry_at = (*failures > 0).then(|| now + partition_retry_backoff(*failures));
                }
            }
        }
        // The next request is worth sending at once only if it can bring something: more
        // batches. Otherwise it is worth sending once the fsyncs of what this one brought
        // (or of what an earlier one did) are done, as it then moves the high watermark.
        let wait_for_fsyncs = !leader_has_more && (moved || fsync_pending);
        if wait_for_fsyncs {
            let deadline = tokio::time::Instant::now() + DURABLE_WAIT;
            let _ = tokio::time::timeout_at(deadline, async {
                // A partition whose role changed meanwhile (another fetcher's now) returns
                // at once.
                for a in asked {
                    let (end, _) = a.partition.follower_position();
                    let generation = a.assignment.generation;
                    a.partition
                        .wait_durable(end, generation, DURABLE_WAIT)
                        .await;
                }
            })
            .await;
        }
        Ok(())
    }
}

/// How long the leader may hold a request that finds nothing new.
///
/// Not at all while an fsync is pending (the leader had more to send, or the bounded wait
/// for the fsync ran out): the leader learns the durable end from the request after it,
/// which must not sit in a long poll meanwhile. And not past `next_retry`, when a partition
/// left out of the request after an error (often a new partition whose leader has not
/// opened it yet) may be asked again: it would otherwise wait out the whole poll.
fn long_poll_wait(now: Instant, fsync_pending: bool, next_retry: Option<Instant>) -> Duration {
    if fsync_pending {
        return Duration::ZERO;
    }
    next_retry.map_or(REPLICA_FETCH_MAX_WAIT, |at| {
        at.saturating_duration_since(now)
            .min(REPLICA_FETCH_MAX_WAIT)
    })
}

/// The pause before asking again for a partition after `failures` errors in a row.
fn partition_retry_backoff(failures: u32) -> Duration {
    PARTITION_RETRY.delay(failures)
}

/// What one partition's answer did to its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Its log changed: appended, truncated or restarted.
    pub moved: bool,
    /// The leader has more for it right now: the next request should go out at once.
    pub leader_has_more: bool,
}

impl Applied {
    /// A truncation or restart: fetch again at once from the new position.
    const RESET: Self = Self {
        moved: true,
        leader_has_more: true,
    };
}

/// Acts on one partition's answer.
fn apply(asked: &Asked, data: v1::ReplicaFetchPartitionData) -> Result<Applied, String> {
    apply_replica_fetch_answer(
        &asked.partition,
        asked.assignment.generation,
        asked.fetch_offset,
        asked.last_fetched_epoch,
        data,
    )
}

/// Acts on the leader's answer for one partition, fetched at `fetch_offset` with
/// `last_fetched_epoch` under the follower role of `generation`: restarts the log behind
/// the leader's log start, truncates where the leader says it diverges, or appends the
/// batches and takes the leader's high watermark. Public for the data-path simulation
/// (`crates/ferrolog-sim`), whose followers act on answers exactly as fetchers do.
pub fn apply_replica_fetch_answer(
    partition: &Partition,
    generation: u64,
    fetch_offset: Offset,
    last_fetched_epoch: i32,
    data: v1::ReplicaFetchPartitionData,
) -> Result<Applied, String> {
    if data.error_code == ErrorCode::OffsetOutOfRange as i32
        && fetch_offset.0 < data.log_start_offset
    {
        // Retention deleted what this replica lacks (a new replica of an old partition,
        // or one down for longer than the retention): start over at the leader's start.
        tracing::warn!(topic = partition.topic(), partition = %partition.id(),
            fetch_offset = %fetch_offset, leader_log_start = data.log_start_offset,
            "behind the leader's log start; restarting the log there");
        return partition
            .restart_at(Offset(data.log_start_offset), generation)
            .map(|()| Applied::RESET)
            .map_err(|e| e.to_string());
    }
    if data.error_code != ErrorCode::Unspecified as i32 {
        return Err(data.error_message);
    }
    if let Some(diverging) = data.diverging_epoch {
        if diverging.epoch < 0 && fetch_offset.0 < data.log_start_offset {
            // The leader no longer has the epochs this log ends in: retention deleted
            // them, and with them everything this replica lacks. Start over at its start.
            tracing::warn!(topic = partition.topic(), partition = %partition.id(),
                fetch_offset = %fetch_offset, leader_log_start = data.log_start_offset,
                "the leader's log starts after this one ends; restarting the log there");
            return partition
                .restart_at(Offset(data.log_start_offset), generation)
                .map(|()| Applied::RESET)
                .map_err(|e| e.to_string());
        }
        // Never below what this log itself says the diverging epoch covers.
        let own_end = partition
            .end_offset_for_epoch(diverging.epoch)
            .unwrap_or(Offset(diverging.end_offset));
        let target = Offset(diverging.end_offset).min(own_end);
        tracing::warn!(topic = partition.topic(), partition = %partition.id(),
            fetch_offset = %fetch_offset, last_fetched_epoch,
            leader_epoch_end = diverging.end_offset, epoch = diverging.epoch,
            truncate_to = %target, "log diverges from the leader's");
        return partition
            .truncate_to(target, generation)
            .map(|()| Applied::RESET)
            .map_err(|e| e.to_string());
    }
    let high_watermark = Offset(data.high_watermark);
    let leader_log_start = Offset(data.log_start_offset);
    if data.record_batches.is_empty() {
        partition.learn_high_watermark(high_watermark, generation);
        partition.follow_log_start(leader_log_start, generation);
        // No batches though the leader has more: it held them back for the byte budget.
        return Ok(Applied {
            moved: false,
            leader_has_more: data.log_end_offset > fetch_offset.0,
        });
    }
    partition
        .append_from_leader(&data.record_batches, high_watermark, generation)
        .map(|end| {
            partition.follow_log_start(leader_log_start, generation);
            Applied {
                moved: true,
                leader_has_more: data.log_end_offset > end.0,
            }
        })
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_partition_is_asked_again_soon_then_less_and_less_often() {
        let pauses: Vec<u64> = (1..=7)
            .map(|failures| partition_retry_backoff(failures).as_millis() as u64)
            .collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 200, 200]);
        assert_eq!(partition_retry_backoff(u32::MAX), RETRY_BACKOFF);
    }

    #[test]
    fn a_long_poll_ends_when_a_partition_left_out_may_be_asked_again() {
        let now = Instant::now();
        let in_100ms = Some(now + Duration::from_millis(100));
        assert_eq!(long_poll_wait(now, false, None), REPLICA_FETCH_MAX_WAIT);
        assert_eq!(
            long_poll_wait(now, false, in_100ms),
            Duration::from_millis(100)
        );
        // A retry further off than a whole poll does not lengthen it.
        let in_a_minute = Some(now + Duration::from_secs(60));
        assert_eq!(
            long_poll_wait(now, false, in_a_minute),
            REPLICA_FETCH_MAX_WAIT
        );
        // Already due: ask without waiting.
        assert_eq!(long_poll_wait(now, false, Some(now)), Duration::ZERO);
        // A pending fsync wins: its report must not sit in a poll.
        assert_eq!(long_poll_wait(now, true, None), Duration::ZERO);
    }
}
