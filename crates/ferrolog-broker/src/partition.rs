//! One partition replica on this broker: its log, its high watermark, and the group-commit
//! flusher that makes appends durable.
//!
//! Durability and visibility are tied together: the high watermark (the end of what
//! consumers may read) never passes what is durable. With the `EveryAppend` flush policy a
//! produce is acknowledged, and becomes visible, only after an fsync covers it; concurrent
//! producers share one fsync because the flusher syncs whatever the log holds when it
//! starts, while appends carry on beside it (group commit).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use ferrolog_log::{AppendInfo, FlushPolicy, LeaderEpoch, Log, LogConfig, Offset, ReadResult};
use ferrolog_metadata::PartitionId;
use tokio::sync::{Notify, watch};

use crate::BrokerError;
use crate::metrics::BrokerMetrics;

/// How far a partition's data has come: what consumers may read, and whether the log has
/// failed (then nothing more is ever acknowledged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub high_watermark: Offset,
    pub storage_failed: bool,
}

const OPEN: u8 = 0;
const DELETED: u8 = 1;
const SHUT_DOWN: u8 = 2;

/// A partition replica led by this broker.
pub struct Partition {
    topic: String,
    id: PartitionId,
    topic_id: String,
    log: RwLock<Log>,
    progress: watch::Sender<Progress>,
    /// Wakes the flusher after appends.
    dirty: Notify,
    /// One of the `OPEN`, `DELETED`, `SHUT_DOWN` states; set under the log's write lock so
    /// no append or upkeep that saw `OPEN` can still be writing after `close`/`delete`.
    state: AtomicU8,
    metrics: Arc<BrokerMetrics>,
}

/// The result of a fetch: whole record batches below the high watermark.
#[derive(Debug)]
pub struct FetchOutcome {
    pub read: ReadResult,
    pub high_watermark: Offset,
}

impl Partition {
    /// Opens the partition's log (running recovery) and starts its flusher.
    pub fn open(
        topic: &str,
        id: PartitionId,
        topic_id: &str,
        dir: &std::path::Path,
        config: LogConfig,
        metrics: Arc<BrokerMetrics>,
    ) -> Result<Arc<Self>, BrokerError> {
        let log = Log::open(dir, config)?;
        // With one replica everything that survived recovery is durable and committed.
        let high_watermark = log.log_end_offset();
        let partition = Arc::new(Self {
            topic: topic.to_owned(),
            id,
            topic_id: topic_id.to_owned(),
            log: RwLock::new(log),
            progress: watch::Sender::new(Progress {
                high_watermark,
                storage_failed: false,
            }),
            dirty: Notify::new(),
            state: AtomicU8::new(OPEN),
            metrics,
        });
        tokio::spawn(Arc::clone(&partition).run_flusher());
        Ok(partition)
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn id(&self) -> PartitionId {
        self.id
    }

    pub fn topic_id(&self) -> &str {
        &self.topic_id
    }

    fn log_read(&self) -> RwLockReadGuard<'_, Log> {
        self.log.read().unwrap_or_else(|p| p.into_inner())
    }

    fn log_write(&self) -> RwLockWriteGuard<'_, Log> {
        self.log.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn high_watermark(&self) -> Offset {
        self.progress.borrow().high_watermark
    }

    pub fn log_start_offset(&self) -> Offset {
        self.log_read().log_start_offset()
    }

    pub fn log_end_offset(&self) -> Offset {
        self.log_read().log_end_offset()
    }

    pub fn size_bytes(&self) -> u64 {
        self.log_read().size_bytes()
    }

    pub fn set_config(&self, config: LogConfig) {
        self.log_write().set_config(config);
    }

    fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) != OPEN
    }

    fn check_open(&self) -> Result<(), BrokerError> {
        match self.state.load(Ordering::Acquire) {
            OPEN => {}
            DELETED => return Err(BrokerError::UnknownTopic(self.topic.clone())),
            _ => return Err(BrokerError::ShuttingDown),
        }
        if self.progress.borrow().storage_failed {
            return Err(BrokerError::StorageOffline {
                topic: self.topic.clone(),
                partition: self.id.0,
                reason: "an earlier fsync failed".to_owned(),
            });
        }
        Ok(())
    }

    /// Appends one validated-on-append batch and returns once it is as durable as `wait`
    /// asks. On timeout the records may still become durable later: the producer retries
    /// and may then duplicate, never lose.
    pub async fn append(
        &self,
        batch: &mut [u8],
        wait: bool,
        timeout: Duration,
    ) -> Result<AppendInfo, BrokerError> {
        self.check_open()?;
        let (info, policy) = {
            let mut log = self.log_write();
            self.check_open()?;
            let info = log.append_batch(batch, LeaderEpoch(0), now_ms())?;
            (info, log.config().flush_policy)
        };
        match policy {
            FlushPolicy::EveryAppend => self.dirty.notify_one(),
            // Data is acknowledged before it is durable by the operator's choice; consumers
            // may see it at once.
            FlushPolicy::Interval { .. } | FlushPolicy::Os => {
                self.advance_high_watermark(info.last_offset.next())
            }
        }
        if wait {
            self.wait_for_high_watermark(info.last_offset.next(), timeout)
                .await?;
        }
        Ok(info)
    }

    async fn wait_for_high_watermark(
        &self,
        target: Offset,
        timeout: Duration,
    ) -> Result<(), BrokerError> {
        let mut progress = self.progress.subscribe();
        let reached = progress
            .wait_for(|p| p.high_watermark >= target || p.storage_failed || self.is_closed());
        match tokio::time::timeout(timeout, reached).await {
            Ok(Ok(p)) if p.high_watermark >= target => Ok(()),
            Ok(Ok(p)) if !p.storage_failed => self.check_open().and(Err(BrokerError::ShuttingDown)),
            Ok(_) => Err(BrokerError::StorageOffline {
                topic: self.topic.clone(),
                partition: self.id.0,
                reason: "fsync failed or the partition was closed".to_owned(),
            }),
            Err(_) => Err(BrokerError::Timeout {
                timeout_ms: timeout.as_millis() as u64,
                waiting_for: "the records to become durable",
            }),
        }
    }

    fn advance_high_watermark(&self, to: Offset) {
        self.progress.send_if_modified(|p| {
            let moved = to > p.high_watermark;
            if moved {
                p.high_watermark = to;
            }
            moved
        });
    }

    /// Reads batches at `offset` below the high watermark, long-polling up to `max_wait`
    /// while nothing is available there yet.
    pub async fn fetch(
        &self,
        offset: Offset,
        max_bytes: u32,
        max_wait: Duration,
    ) -> Result<FetchOutcome, BrokerError> {
        let deadline = Instant::now() + max_wait;
        let mut progress = self.progress.subscribe();
        loop {
            self.check_open()?;
            let high_watermark = progress.borrow_and_update().high_watermark;
            let read = self.log_read().read(offset, max_bytes, high_watermark)?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if !read.batches.is_empty() || remaining.is_zero() {
                return Ok(FetchOutcome {
                    read,
                    high_watermark,
                });
            }
            match tokio::time::timeout(remaining, progress.changed()).await {
                Ok(Ok(())) => continue,
                // The partition closed or the wait ran out: answer with what there is.
                Ok(Err(_)) | Err(_) => {
                    let read = self.log_read().read(offset, max_bytes, high_watermark)?;
                    return Ok(FetchOutcome {
                        read,
                        high_watermark,
                    });
                }
            }
        }
    }

    /// First offset at or after `timestamp_ms` that consumers may read, if any.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<Offset>, BrokerError> {
        let high_watermark = self.high_watermark();
        let found = self.log_read().offset_for_timestamp(timestamp_ms)?;
        Ok(found.filter(|o| *o < high_watermark))
    }

    /// Periodic upkeep: time-based roll, retention, and a high-watermark checkpoint.
    pub fn maintain(&self) -> Result<(), BrokerError> {
        self.check_open()?;
        let mut log = self.log_write();
        self.check_open()?;
        log.roll_if_due(now_ms())?;
        // A roll fsyncs the old segment: what it covered is durable, and committed.
        if log.config().flush_policy == FlushPolicy::EveryAppend {
            self.advance_high_watermark(log.flushed_offset());
        }
        let high_watermark = self.high_watermark();
        let outcome = log.enforce_retention(now_ms(), high_watermark)?;
        if outcome.deleted_segments > 0 {
            tracing::info!(topic = %self.topic, partition = %self.id,
                segments = outcome.deleted_segments, bytes = outcome.deleted_bytes,
                log_start_offset = %outcome.log_start_offset, "retention deleted segments");
        }
        if log.high_watermark() != high_watermark {
            log.checkpoint_high_watermark(high_watermark)?;
        }
        Ok(())
    }

    /// Makes everything durable and stops the partition (clean shutdown). Produces that
    /// are waiting are answered: those whose records made it into the final flush succeed.
    pub fn close(&self) -> Result<(), BrokerError> {
        let flushed = {
            let mut log = self.log_write();
            self.state.store(SHUT_DOWN, Ordering::Release);
            log.flush().and_then(|()| {
                let end = log.log_end_offset();
                // With a single replica everything durable is committed (replication will
                // change this).
                log.checkpoint_high_watermark(end).map(|()| end)
            })
        };
        if let Ok(end) = flushed {
            self.advance_high_watermark(end);
        }
        self.wake_all();
        flushed.map(|_| ()).map_err(BrokerError::from)
    }

    /// Closes the partition and removes its data.
    pub fn delete(self: Arc<Self>) -> Result<(), BrokerError> {
        let dir = {
            let log = self.log_write();
            self.state.store(DELETED, Ordering::Release);
            log.dir().to_path_buf()
        };
        self.wake_all();
        std::fs::remove_dir_all(&dir).map_err(|source| {
            BrokerError::Log(ferrolog_log::LogError::Io {
                context: "delete partition directory",
                source,
            })
        })?;
        tracing::info!(topic = %self.topic, partition = %self.id, "partition deleted");
        Ok(())
    }

    /// Wakes the flusher (which then exits) and every waiting produce and fetch.
    fn wake_all(&self) {
        self.dirty.notify_one();
        self.progress.send_modify(|_| {});
    }

    /// Group commit: each round fsyncs everything appended so far, outside the log lock, so
    /// appends that arrive during an fsync are covered by the next one.
    async fn run_flusher(self: Arc<Self>) {
        loop {
            let interval = match self.log_read().config().flush_policy {
                FlushPolicy::Interval { interval_ms } => Some(Duration::from_millis(interval_ms)),
                _ => None,
            };
            match interval {
                Some(interval) => tokio::time::sleep(interval).await,
                None => self.dirty.notified().await,
            }
            if self.is_closed() {
                return;
            }
            let (handle, flushed) = {
                let log = self.log_read();
                (log.sync_handle(), log.flushed_offset())
            };
            let end = handle.end_offset();
            if end <= flushed {
                // A segment roll already made it durable.
                self.advance_high_watermark(flushed);
                continue;
            }
            let started = Instant::now();
            let syncing = handle.clone();
            let synced = tokio::task::spawn_blocking(move || syncing.sync()).await;
            self.metrics
                .flush_seconds
                .observe(started.elapsed().as_secs_f64());
            match synced {
                Ok(Ok(())) => {
                    // A truncation during the fsync makes the handle stale; its offsets are
                    // then not covered and the next round syncs again.
                    if self.log_write().mark_synced(&handle) {
                        self.advance_high_watermark(end);
                    }
                }
                Ok(Err(error)) => {
                    // After a failed fsync the page cache may have dropped the data: the only
                    // safe answer is to stop acknowledging, as Kafka takes a log dir offline.
                    tracing::error!(topic = %self.topic, partition = %self.id, %error,
                        "fsync failed; partition goes offline");
                    self.progress.send_modify(|p| p.storage_failed = true);
                    return;
                }
                Err(join_error) => {
                    tracing::error!(%join_error, "flusher task failed");
                    self.progress.send_modify(|p| p.storage_failed = true);
                    return;
                }
            }
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
