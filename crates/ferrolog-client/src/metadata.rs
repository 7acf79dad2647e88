//! The cluster handle every client shares: connections plus a cache of who leads what.
//!
//! The cache maps topic -> partitions -> leader broker id, and broker id -> address. It is
//! filled by the `Metadata` RPC from any reachable broker (bootstrap brokers first, then brokers
//! learnt from earlier answers), and refreshed when a caller reports a stale leader
//! (`NOT_LEADER`, unreachable broker), when it is older than `metadata_max_age_ms`, and when a
//! topic is asked for that it does not know. Concurrent refreshes collapse into one.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ferrolog_proto::v1::client_service_client::ClientServiceClient;
use ferrolog_proto::v1::{ErrorCode, MetadataRequest, MetadataResponse};
use tonic::transport::Channel;

use crate::config::ClientConfig;
use crate::connection::{Connections, call};
use crate::error::{ClientError, Result};
use ferrolog_proto::retry::Backoff;

/// What the client knows about one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PartitionInfo {
    /// Leader broker id; negative while the partition has no leader.
    pub(crate) leader: i32,
    pub(crate) leader_epoch: i32,
}

/// What the client knows about one topic; `partitions[i]` is partition `i`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicInfo {
    pub(crate) partitions: Vec<PartitionInfo>,
}

impl TopicInfo {
    pub(crate) fn partition_count(&self) -> u32 {
        self.partitions.len() as u32
    }
}

#[derive(Debug, Default)]
struct MetadataCache {
    brokers: HashMap<i32, String>,
    topics: HashMap<String, Arc<TopicInfo>>,
    fetched_at: Option<Instant>,
    /// Set when a caller saw evidence that the cache is wrong.
    stale: bool,
}

#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    connections: Connections,
    cache: RwLock<MetadataCache>,
    /// Serializes refreshes so that many callers noticing the same leader move cause one RPC.
    refresh_lock: tokio::sync::Mutex<()>,
    /// Counts completed refreshes; a caller that saw generation `g` and finds a larger one
    /// after taking `refresh_lock` knows someone else already refreshed for it.
    generation: AtomicU64,
    /// The broker that answered the last metadata request; asked first next time, so a dead
    /// bootstrap broker does not cost a connect timeout on every refresh.
    last_good_address: Mutex<Option<String>>,
}

/// A cheap-to-clone handle on connections and cached metadata, shared by a client's tasks.
#[derive(Debug, Clone)]
pub(crate) struct Cluster {
    inner: Arc<Inner>,
}

impl Cluster {
    /// Creates the handle and fetches metadata once, so a wrong address fails here with a
    /// clear error instead of later inside a background task.
    pub(crate) async fn connect(config: ClientConfig) -> Result<Cluster> {
        if config.brokers.is_empty() {
            return Err(ClientError::InvalidArgument(
                "no bootstrap brokers configured (ClientConfig::brokers is empty)".to_owned(),
            ));
        }
        let cluster = Cluster {
            inner: Arc::new(Inner {
                connections: Connections::new(&config),
                config,
                cache: RwLock::new(MetadataCache::default()),
                refresh_lock: tokio::sync::Mutex::new(()),
                generation: AtomicU64::new(0),
                last_good_address: Mutex::new(None),
            }),
        };
        cluster.refresh(0).await?;
        Ok(cluster)
    }

    pub(crate) fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Number of completed refreshes; producers compare it to notice partition count changes.
    pub(crate) fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// The channel to a broker by address (no I/O until the first request).
    pub(crate) fn channel(&self, address: &str) -> Result<Channel> {
        self.inner.connections.channel(address)
    }

    /// Marks the cache stale: the next leader lookup refreshes it first.
    pub(crate) fn invalidate(&self) {
        self.write_cache().stale = true;
    }

    /// The topic as cached, without any I/O; `None` when it is not cached.
    pub(crate) fn cached_topic(&self, topic: &str) -> Option<Arc<TopicInfo>> {
        self.read_cache().topics.get(topic).cloned()
    }

    /// The topic's metadata, refreshing first when the cache is stale, too old, or lacks it.
    pub(crate) async fn topic(&self, topic: &str) -> Result<Arc<TopicInfo>> {
        let seen = self.generation();
        if let Some(info) = self.fresh_topic(topic) {
            return Ok(info);
        }
        self.refresh(seen).await?;
        self.cached_topic(topic)
            .ok_or_else(|| ClientError::server(ErrorCode::UnknownTopic, unknown_topic(topic)))
    }

    /// The leader's broker address and a channel to it.
    pub(crate) async fn leader_channel(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<(String, Channel)> {
        let info = self.topic(topic).await?;
        let Some(state) = info.partitions.get(partition as usize) else {
            return Err(unknown_partition(topic, partition, info.partition_count()));
        };
        if state.leader < 0 {
            return Err(ClientError::server(
                ErrorCode::NotLeader,
                format!("partition {topic}-{partition} has no leader right now"),
            ));
        }
        let address = self
            .read_cache()
            .brokers
            .get(&state.leader)
            .cloned()
            .ok_or_else(|| {
                ClientError::server(
                    ErrorCode::NotLeader,
                    format!(
                        "partition {topic}-{partition} is led by broker {}, whose address is not \
                     known yet",
                        state.leader
                    ),
                )
            })?;
        let channel = self.inner.connections.channel(&address)?;
        Ok((address, channel))
    }

    /// Runs `request` against the partition's leader, retrying retriable failures (after a
    /// metadata refresh when they suggest a leader move) with backoff until
    /// `request_timeout_ms` has passed.
    pub(crate) async fn with_leader<T, F, Fut>(
        &self,
        topic: &str,
        partition: u32,
        mut request: F,
    ) -> Result<T>
    where
        F: FnMut(String, Channel) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let config = self.config();
        let deadline = Instant::now() + config.request_timeout();
        let backoff = Backoff::from_millis(config.retry_backoff_ms, config.retry_backoff_max_ms);
        let mut attempt = 0u32;
        loop {
            let result = match self.leader_channel(topic, partition).await {
                Ok((address, channel)) => request(address, channel).await,
                Err(e) => Err(e),
            };
            let error = match result {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            if error.invalidates_metadata() {
                self.invalidate();
            }
            attempt += 1;
            let delay = backoff.jittered(attempt, rand::random());
            if !error.is_retriable() || Instant::now() + delay >= deadline {
                return Err(error);
            }
            tracing::debug!(%error, attempt, "retrying after {} ms", delay.as_millis());
            tokio::time::sleep(delay).await;
        }
    }

    /// Runs `request` against some broker (for admin RPCs, which any broker forwards),
    /// moving on to the next broker while they are unreachable. A timeout moves on too only
    /// with `failover_on_timeout`: a request that timed out may still take effect, and an admin
    /// change must not be sent twice.
    pub(crate) async fn with_any_broker<T, F, Fut>(
        &self,
        what: &str,
        failover_on_timeout: bool,
        mut request: F,
    ) -> Result<T>
    where
        F: FnMut(String, Channel) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let addresses = self.candidate_addresses();
        let mut last_error = None;
        for address in &addresses {
            let channel = self.inner.connections.channel(address)?;
            match request(address.clone(), channel).await {
                Ok(value) => {
                    *self.lock_last_good() = Some(address.clone());
                    return Ok(value);
                }
                Err(e @ ClientError::Unreachable { .. }) => {
                    tracing::debug!(%address, error = %e, "{what}: trying the next broker");
                    last_error = Some(e);
                }
                Err(e @ ClientError::Timeout { .. }) if failover_on_timeout => {
                    tracing::debug!(%address, error = %e, "{what}: trying the next broker");
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(match last_error {
            Some(ClientError::Unreachable { address, reason }) if addresses.len() == 1 => {
                ClientError::Unreachable { address, reason }
            }
            Some(ClientError::Unreachable { reason, .. }) => ClientError::Unreachable {
                address: format!("any of {}", addresses.join(", ")),
                reason,
            },
            Some(ClientError::Timeout { after_ms, .. }) => ClientError::Unreachable {
                address: addresses.join(", "),
                reason: format!(
                    "no answer to {what} within {after_ms} ms (is this a Ferrolog server?)"
                ),
            },
            Some(other) => other,
            None => ClientError::InvalidArgument("no broker addresses to try".to_owned()),
        })
    }

    /// Fetches metadata unless another caller refreshed since the caller saw generation
    /// `seen`.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn refresh(&self, seen: u64) -> Result<()> {
        let _guard = self.inner.refresh_lock.lock().await;
        if self.generation() != seen {
            return Ok(());
        }
        let timeout = self.config().request_timeout();
        let response = self
            .with_any_broker("a Metadata request", true, |address, channel| async move {
                let mut client = ClientServiceClient::new(channel);
                call(
                    &address,
                    "metadata",
                    timeout,
                    client.metadata(MetadataRequest::default()),
                )
                .await
            })
            .await?;
        self.install(response);
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Replaces the cache with a full metadata answer (the client always asks for every
    /// topic, so a topic missing from the answer does not exist).
    fn install(&self, response: MetadataResponse) {
        let brokers = response
            .brokers
            .into_iter()
            .map(|b| (b.broker_id, b.address))
            .collect();
        let mut topics = HashMap::with_capacity(response.topics.len());
        for topic in response.topics {
            // Partition ids are dense (0..n); an id outside that range is ignored rather than
            // trusted to size an allocation.
            let count = topic.partitions.len();
            let mut partitions = vec![
                PartitionInfo {
                    leader: -1,
                    leader_epoch: -1
                };
                count
            ];
            for p in &topic.partitions {
                if let Some(slot) = usize::try_from(p.partition)
                    .ok()
                    .and_then(|i| partitions.get_mut(i))
                {
                    *slot = PartitionInfo {
                        leader: p.leader,
                        leader_epoch: p.leader_epoch,
                    };
                }
            }
            topics.insert(topic.name, Arc::new(TopicInfo { partitions }));
        }
        let mut cache = self.write_cache();
        *cache = MetadataCache {
            brokers,
            topics,
            fetched_at: Some(Instant::now()),
            stale: false,
        };
    }

    fn fresh_topic(&self, topic: &str) -> Option<Arc<TopicInfo>> {
        let cache = self.read_cache();
        let max_age = Duration::from_millis(self.config().metadata_max_age_ms);
        let fresh = !cache.stale && cache.fetched_at.is_some_and(|at| at.elapsed() < max_age);
        if fresh {
            cache.topics.get(topic).cloned()
        } else {
            None
        }
    }

    /// Addresses to ask for metadata: the last broker that answered, then the bootstrap list,
    /// then every broker learnt from metadata, without duplicates.
    fn candidate_addresses(&self) -> Vec<String> {
        let mut addresses: Vec<String> = Vec::new();
        let mut push = |address: &String| {
            if !addresses.contains(address) {
                addresses.push(address.clone());
            }
        };
        if let Some(address) = self.lock_last_good().as_ref() {
            push(address);
        }
        self.config().brokers.iter().for_each(&mut push);
        let cache = self.read_cache();
        let mut known: Vec<_> = cache.brokers.iter().collect();
        known.sort();
        known.into_iter().for_each(|(_, address)| push(address));
        addresses
    }

    fn read_cache(&self) -> std::sync::RwLockReadGuard<'_, MetadataCache> {
        self.inner.cache.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_cache(&self) -> std::sync::RwLockWriteGuard<'_, MetadataCache> {
        self.inner.cache.write().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_last_good(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.inner
            .last_good_address
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) fn unknown_topic(topic: &str) -> String {
    format!("unknown topic '{topic}'")
}

/// The error for a partition number outside the topic, naming the valid range.
pub(crate) fn unknown_partition(topic: &str, partition: u32, count: u32) -> ClientError {
    let valid = match count {
        0 => "it has no partitions".to_owned(),
        1 => "the only valid partition is 0".to_owned(),
        n => format!("valid partitions are 0..={}", n - 1),
    };
    ClientError::server(
        ErrorCode::UnknownPartition,
        format!("topic '{topic}' has no partition {partition}; {valid}"),
    )
}
