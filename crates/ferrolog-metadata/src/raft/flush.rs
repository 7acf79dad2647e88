//! Waiting for sled to reach the disk.
//!
//! sled 0.34 makes writes durable only on `flush()`. Its `flush_async` is not used: it runs
//! the flush on sled's own I/O thread pool, and the flush then waits for buffer writes
//! queued on that same pool. With more concurrent flushes than idle pool threads (the pool
//! keeps 7 and its growth accounting can stall), every pool thread waits on work queued
//! behind it and the node hangs; the quorum simulation hit exactly that. A synchronous
//! `flush()` on a thread outside sled's pool cannot deadlock that way.

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

/// fsyncs `tree`'s database: sled trees share one page cache, so this makes every earlier
/// write to any tree of the database durable.
pub(crate) async fn flush(tree: &sled::Tree, mode: FlushMode) -> std::io::Result<()> {
    match mode {
        FlushMode::CallingThread => tree.flush().map(drop).map_err(std::io::Error::other),
        FlushMode::BlockingPool => {
            let tree = tree.clone();
            tokio::task::spawn_blocking(move || tree.flush())
                .await
                .map_err(std::io::Error::other)?
                .map(drop)
                .map_err(std::io::Error::other)
        }
    }
}
