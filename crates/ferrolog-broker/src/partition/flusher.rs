//! The flusher: one task per partition that makes appends durable, sharing each fsync
//! among every append that arrived before it started (group commit).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrolog_log::FlushPolicy;

use super::Partition;

impl Partition {
    /// Group commit: each round fsyncs everything appended so far, outside the log lock, so
    /// appends that arrive during an fsync are covered by the next one. A round starts when
    /// an append wakes the flusher (`EveryAppend`) or every `interval_ms` (`Interval`). The
    /// task ends when the partition closes or an fsync fails.
    pub(super) async fn run_flusher(self: Arc<Self>) {
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
                self.on_durable(flushed);
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
                        self.on_durable(end);
                    } else {
                        // What the log holds now is not covered (a follower truncated and
                        // may have appended again): sync once more rather than wait for
                        // an append that may not come.
                        self.dirty.notify_one();
                    }
                }
                Ok(Err(error)) => {
                    // After a failed fsync the page cache may have dropped the data: the only
                    // safe answer is to stop acknowledging, as Kafka takes a log dir offline.
                    tracing::error!(topic = %self.topic, partition = %self.id, %error,
                        "fsync failed; partition goes offline");
                    self.progress.send_modify(|p| p.storage_failed = true);
                    // Its high watermark never moves again: nothing kept would be released.
                    self.log_write().keep_recent_batches(None);
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
