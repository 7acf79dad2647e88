//! The flusher: one task per partition that makes appends durable, sharing each fsync
//! among every append that arrived before it started (group commit).
//!
//! A round has two halves around its fsync, [`Partition::begin_flush`] and
//! [`Partition::finish_flush`]; the task runs them with the fsync on a blocking thread in
//! between. The data-path simulation (`crates/ferrolog-sim`) opens partitions without the
//! task and runs the same halves itself, at moments its seed picks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrolog_log::{FlushPolicy, Log, LogError, Offset, SyncHandle};

use super::Partition;
use crate::BrokerError;

/// One group-commit round between its two halves: what to fsync and where the log ended
/// when the round began.
pub struct FlushRound {
    handle: SyncHandle,
    end: Offset,
}

impl FlushRound {
    /// The log end the round makes durable.
    pub fn end(&self) -> Offset {
        self.end
    }

    /// Fsyncs what the round covers; blocking, so the task runs it on a blocking thread.
    pub fn sync(&self) -> Result<(), LogError> {
        self.handle.sync()
    }
}

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
            let Some(round) = self.begin_flush() else {
                continue;
            };
            let started = Instant::now();
            let syncing = round.handle.clone();
            let synced = tokio::task::spawn_blocking(move || syncing.sync()).await;
            self.metrics
                .flush_seconds
                .observe(started.elapsed().as_secs_f64());
            let synced = synced.unwrap_or_else(|join_error| {
                Err(LogError::Io {
                    context: "join the fsync thread",
                    source: std::io::Error::other(join_error.to_string()),
                })
            });
            if !self.finish_flush(round, synced) {
                return;
            }
        }
    }

    /// Starts a group-commit round: `None` when everything appended is durable already
    /// (a segment roll may have synced it, which this records).
    pub fn begin_flush(&self) -> Option<FlushRound> {
        let (handle, flushed) = {
            let log = self.log_read();
            (log.sync_handle(), log.flushed_offset())
        };
        let end = handle.end_offset();
        if end <= flushed {
            self.on_durable(flushed);
            return None;
        }
        Some(FlushRound { handle, end })
    }

    /// Ends a round whose fsync returned `synced`; whether the partition may flush again
    /// (false once an fsync failed: the partition then acknowledges nothing more).
    pub fn finish_flush(&self, round: FlushRound, synced: Result<(), LogError>) -> bool {
        match synced {
            Ok(()) => {
                // A truncation during the fsync makes the handle stale; its offsets are
                // then not covered and the next round syncs again.
                if self.log_write().mark_synced(&round.handle) {
                    self.on_durable(round.end);
                } else {
                    // What the log holds now is not covered (a follower truncated and
                    // may have appended again): sync once more rather than wait for
                    // an append that may not come.
                    self.dirty.notify_one();
                }
                true
            }
            Err(error) => {
                // After a failed fsync the page cache may have dropped the data: the only
                // safe answer is to stop acknowledging, as Kafka takes a log dir offline,
                // and never to count a later fsync as covering it.
                let mut log = self.log_write();
                log.mark_sync_failed();
                self.go_offline(&mut log, &error);
                false
            }
        }
    }

    /// Takes the partition offline after an fsync of its log failed (the log itself then
    /// refuses writes, see `Log::sync_failed`). After a failed fsync the page cache may
    /// have dropped the data and a retried fsync can report success without it (the
    /// fsyncgate lesson): the only safe answer is to stop acknowledging and replicating,
    /// as Kafka takes a log directory offline. Waiting produces are told STORAGE_ERROR;
    /// the broker then asks the controller to move the leadership (`wanted_step_down`).
    /// Callers hold the log's write lock.
    pub(super) fn go_offline(&self, log: &mut Log, error: &dyn std::fmt::Display) {
        if self.progress.borrow().storage_failed {
            return;
        }
        tracing::error!(topic = %self.topic, partition = %self.id, %error,
            "fsync failed; the partition goes offline and gives up its leadership");
        // Its high watermark never moves again: nothing kept would be released.
        log.keep_recent_batches(None);
        self.progress.send_modify(|p| p.storage_failed = true);
    }

    /// `result` as a broker error, taking the partition offline first when it failed
    /// because the log's fsync failed (during a roll, say). Callers hold the log's write
    /// lock.
    pub(super) fn offline_on_sync_failure<T>(
        &self,
        log: &mut Log,
        result: Result<T, LogError>,
    ) -> Result<T, BrokerError> {
        result.map_err(|error| {
            if log.sync_failed() {
                self.go_offline(log, &error);
            }
            BrokerError::from(error)
        })
    }
}
