//! The Raft log, vote and committed index in sled.
//!
//! sled 0.34 only makes writes durable on `flush()`, so every write openraft must be able
//! to rely on (the vote, appended entries, truncation, purge) is flushed before it is
//! reported done.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogId, LogState, RaftLogReader, StorageIOError, Vote};

use std::sync::Arc;

use super::flush::{FlushMode, FlushObserver, Flusher};
use super::{NodeId, StoreError, TypeConfig, decode, encode};

const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const PURGED_KEY: &[u8] = b"last-purged";

/// The Raft log store. Cloning is cheap (sled trees are shared handles); a clone is also
/// the log reader.
#[derive(Clone)]
pub struct SledLogStore {
    /// Entries by big-endian index, so sled's order is log order.
    entries: sled::Tree,
    /// Vote, committed index and last purged log id.
    state: sled::Tree,
    flusher: Flusher,
}

impl SledLogStore {
    pub fn open(db: &sled::Db) -> sled::Result<Self> {
        Ok(Self {
            entries: db.open_tree("raft-log")?,
            state: db.open_tree("raft-state")?,
            flusher: Flusher::default(),
        })
    }

    /// Where this store's flushes run (the default suits a server).
    pub fn with_flush_mode(mut self, mode: FlushMode) -> Self {
        self.flusher.mode = mode;
        self
    }

    /// Tells `observer` of every completed flush (see [`FlushObserver`]).
    pub fn with_flush_observer(mut self, observer: Arc<dyn FlushObserver>) -> Self {
        self.flusher.observer = Some(observer);
        self
    }

    fn read_state<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        let value = self.state.get(key).map_err(|e| StorageIOError::read(&e))?;
        value
            .map(|v| decode(&v))
            .transpose()
            .map_err(|e| StorageIOError::read(&e).into())
    }

    fn write_state<T: serde::Serialize>(&self, key: &[u8], value: &T) -> Result<(), StoreError> {
        let bytes = encode(value).map_err(|e| StorageIOError::write(&e))?;
        self.state
            .insert(key, bytes)
            .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    /// Removes the entries whose keys fall in `range`, in one batch, and flushes.
    async fn remove_durably<R: RangeBounds<[u8; 8]>>(&self, range: R) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for item in self.entries.range(range) {
            let (key, _) = item.map_err(|e| StorageIOError::write_logs(&e))?;
            batch.remove(key);
        }
        self.entries
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    /// fsyncs: the trees share one page cache, so this makes every earlier write durable.
    async fn flush(&self) -> std::io::Result<()> {
        self.flusher.flush(&self.entries).await
    }
}

impl RaftLogReader<TypeConfig> for SledLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let key = |b: Bound<&u64>| match b {
            Bound::Included(i) => Bound::Included(i.to_be_bytes()),
            Bound::Excluded(i) => Bound::Excluded(i.to_be_bytes()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut entries = Vec::new();
        for item in self
            .entries
            .range((key(range.start_bound()), key(range.end_bound())))
        {
            let (_, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            entries.push(decode(&value).map_err(|e| StorageIOError::read_logs(&e))?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for SledLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StoreError> {
        let last_purged: Option<LogId<NodeId>> = self.read_state(PURGED_KEY)?;
        let last = match self
            .entries
            .last()
            .map_err(|e| StorageIOError::read_logs(&e))?
        {
            Some((_, value)) => {
                let entry: Entry<TypeConfig> =
                    decode(&value).map_err(|e| StorageIOError::read_logs(&e))?;
                Some(entry.log_id)
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StoreError> {
        self.write_state(VOTE_KEY, vote)?;
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StoreError> {
        self.read_state(VOTE_KEY)
    }

    /// Not flushed (the next append or vote flushes it). After a crash the image may be
    /// rebuilt to an older committed index until the leader catches the node up; brokers
    /// therefore delete partitions of topics missing from the image only once their image
    /// has caught up with their own registration (`PartitionManager::mark_image_current`).
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StoreError> {
        self.write_state(COMMITTED_KEY, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StoreError> {
        Ok(self
            .read_state::<Option<LogId<NodeId>>>(COMMITTED_KEY)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StoreError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = encode(&entry).map_err(|e| StorageIOError::write_logs(&e))?;
            batch.insert(&entry.log_id.index.to_be_bytes(), bytes);
        }
        self.entries
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        // The callback tells openraft the entries are durable: only after the flush.
        let flushed = self.flush().await.map_err(std::io::Error::other);
        callback.log_io_completed(flushed);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StoreError> {
        self.remove_durably(log_id.index.to_be_bytes()..).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StoreError> {
        // The purge point first: if we crash midway, get_log_state still reports it.
        self.write_state(PURGED_KEY, &log_id)?;
        self.remove_durably(..=log_id.index.to_be_bytes()).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use openraft::CommittedLeaderId;

    use super::*;

    /// Counts the flushes a store reports as completed.
    #[derive(Default)]
    struct Flushes(AtomicU64);

    impl FlushObserver for Flushes {
        fn flushed(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Flushes {
        fn count(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    /// The quorum simulation's crash keeps exactly what the store had flushed when it
    /// last told its observer; so every write openraft relies on (vote, truncation,
    /// purge) must reach a flush before it returns, and the committed index, which may be
    /// lost, need not.
    #[test]
    fn writes_openraft_relies_on_are_flushed_before_they_are_reported_done() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("tokio runtime");
        runtime.block_on(async {
            let db = sled::Config::new()
                .temporary(true)
                .open()
                .expect("temporary sled database");
            let flushes = Arc::new(Flushes::default());
            let mut store = SledLogStore::open(&db)
                .expect("log store")
                .with_flush_mode(FlushMode::CallingThread)
                .with_flush_observer(Arc::clone(&flushes) as Arc<dyn FlushObserver>);

            store.save_vote(&Vote::new(2, 1)).await.expect("save vote");
            assert_eq!(flushes.count(), 1, "a vote is flushed before it is saved");

            store
                .save_committed(Some(log_id(2, 3)))
                .await
                .expect("save committed");
            assert_eq!(flushes.count(), 1, "the committed index is not flushed");

            store.truncate(log_id(2, 5)).await.expect("truncate");
            assert_eq!(flushes.count(), 2, "a truncation is flushed");

            store.purge(log_id(2, 2)).await.expect("purge");
            assert_eq!(flushes.count(), 3, "a purge is flushed");
            let state = store.get_log_state().await.expect("log state");
            assert_eq!(state.last_purged_log_id, Some(log_id(2, 2)));
        });
    }
}
