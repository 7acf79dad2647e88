//! Waiting for sled to reach the disk.
//!
//! sled 0.34 makes writes durable only on `flush()`. Its `flush_async` is not used: it runs
//! the flush on sled's own I/O thread pool, and the flush then waits for buffer writes
//! queued on that same pool. With more concurrent flushes than idle pool threads (the pool
//! keeps 7 and its growth accounting can stall), every pool thread waits on work queued
//! behind it and the node hangs; the quorum simulation hit exactly that. A synchronous
//! `flush()` on a thread outside sled's pool cannot deadlock that way.

use std::sync::Arc;

/// Where a flush runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FlushMode {
    /// On tokio's blocking pool, so a worker thread is not held for an fsync.
    #[default]
    BlockingPool,
    /// On the calling thread, blocking it. Only for single-threaded, deterministic runs
    /// (the quorum simulation), where nothing else may happen while the disk is busy.
    CallingThread,
}

/// Told of every flush of a database that completed, right after sled reported it durable
/// and before the store tells openraft so.
///
/// A server has none. The quorum simulation installs one per node to learn what a crash
/// may keep: the node's files as they were at its last completed flush. Because it is
/// called from the stores' one flush path, the simulation sees exactly the flushes the
/// stores really do, not the ones they ought to do.
pub trait FlushObserver: Send + Sync {
    fn flushed(&self);
}

/// How a store makes its writes durable: where the flush runs, and who hears of it.
#[derive(Clone, Default)]
pub(crate) struct Flusher {
    pub(crate) mode: FlushMode,
    pub(crate) observer: Option<Arc<dyn FlushObserver>>,
}

impl Flusher {
    /// fsyncs `tree`'s database: sled trees share one page cache, so this makes every
    /// earlier write to any tree of the database durable.
    pub(crate) async fn flush(&self, tree: &sled::Tree) -> std::io::Result<()> {
        match self.mode {
            FlushMode::CallingThread => tree.flush().map(drop).map_err(std::io::Error::other)?,
            FlushMode::BlockingPool => {
                let tree = tree.clone();
                tokio::task::spawn_blocking(move || tree.flush())
                    .await
                    .map_err(std::io::Error::other)?
                    .map(drop)
                    .map_err(std::io::Error::other)?
            }
        }
        if let Some(observer) = &self.observer {
            observer.flushed();
        }
        Ok(())
    }
}
