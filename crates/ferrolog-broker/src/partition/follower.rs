//! The follower's path: where its log stands, appending what the leader sent, taking the
//! leader's high watermark, and truncating or restarting the log where the leader says it
//! does not agree.

use std::time::Duration;

use bytes::Bytes;
use ferrolog_log::{FlushPolicy, Offset};

use super::{Partition, now_ms};
use crate::BrokerError;

impl Partition {
    /// Waits (bounded) until everything below `target` is durable here, or the role of
    /// `generation` ends (a truncation may then leave `target` beyond the log), or the
    /// partition closes or its storage fails.
    pub async fn wait_durable(&self, target: Offset, generation: u64, timeout: Duration) {
        let mut progress = self.progress.subscribe();
        let _ = tokio::time::timeout(
            timeout,
            progress.wait_for(|p| {
                p.durable >= target
                    || p.generation != generation
                    || p.storage_failed
                    || self.is_closed()
            }),
        )
        .await;
    }

    /// This follower's position: its log end offset and the epoch of its last batch.
    pub fn follower_position(&self) -> (Offset, i32) {
        let log = self.log_read();
        let epoch = log.last_batch_epoch().map_or(-1, |e| e.0);
        (log.log_end_offset(), epoch)
    }

    /// Appends batches fetched from the leader, keeping their offsets and epochs, starts
    /// making them durable (the flusher's next group commit; the follower reports the
    /// durable end with a later fetch), and takes the leader's high watermark as far as
    /// this log reaches. Returns the new log end. `generation` guards against a role change
    /// during the fetch.
    pub fn append_from_leader(
        &self,
        batches: &Bytes,
        leader_high_watermark: Offset,
        generation: u64,
    ) -> Result<Offset, BrokerError> {
        self.check_open()?;
        let (end, policy) = {
            let mut log = self.log_write();
            self.check_open()?;
            if self.generation() != generation {
                return Err(self.not_leader());
            }
            let appended = log.append_replicated_batches(batches, now_ms());
            let end = self.offline_on_sync_failure(&mut log, appended)?;
            (end, log.config().flush_policy)
        };
        self.appended.send_replace(end);
        match policy {
            FlushPolicy::EveryAppend => self.dirty.notify_one(),
            FlushPolicy::Interval { .. } | FlushPolicy::Os => self.on_durable(end),
        }
        self.advance_high_watermark(leader_high_watermark.min(end));
        Ok(end)
    }

    /// Takes the leader's high watermark when a fetch brought no batches.
    pub fn learn_high_watermark(&self, leader_high_watermark: Offset, generation: u64) {
        let log = self.log_read();
        // Under the log lock, like every follower change: a role change takes it too, so
        // an answer from a leadership that has ended is never applied.
        if self.generation() != generation {
            return;
        }
        let end = log.log_end_offset();
        drop(log);
        self.advance_high_watermark(leader_high_watermark.min(end));
    }

    /// Removes this follower's divergent suffix: everything at and above `offset`.
    pub fn truncate_to(&self, offset: Offset, generation: u64) -> Result<(), BrokerError> {
        let mut log = self.log_write();
        self.check_open()?;
        if self.generation() != generation {
            return Err(self.not_leader());
        }
        log.truncate_to(offset)?;
        let end = log.log_end_offset();
        drop(log);
        self.progress.send_modify(|p| {
            p.durable = p.durable.min(end);
            p.high_watermark = p.high_watermark.min(end);
        });
        self.appended.send_replace(end);
        tracing::warn!(topic = %self.topic, partition = %self.id, log_end_offset = %end,
            "truncated a suffix the leader does not have");
        Ok(())
    }

    /// As follower: empties the log to restart at the leader's log start, when this log ends
    /// below it (see `Log::truncate_fully_and_start_at`).
    pub fn restart_at(&self, offset: Offset, generation: u64) -> Result<(), BrokerError> {
        let mut log = self.log_write();
        self.check_open()?;
        if self.generation() != generation {
            return Err(self.not_leader());
        }
        if log.log_end_offset() >= offset {
            return Ok(());
        }
        log.truncate_fully_and_start_at(offset)?;
        drop(log);
        self.progress.send_modify(|p| {
            p.durable = offset;
            p.high_watermark = offset;
        });
        self.appended.send_replace(offset);
        Ok(())
    }
}
