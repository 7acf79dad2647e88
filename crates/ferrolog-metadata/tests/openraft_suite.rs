//! openraft's own storage test suite (`openraft::testing::Suite`) over the metadata quorum's
//! sled-backed log store and state machine: the vote, appends, truncation, purge, the log
//! state after each, membership found in the log or the state machine, the initial state
//! openraft derives at start (re-applying committed entries the state machine lacks), and a
//! snapshot built on one state machine and installed on another.
//!
//! These are the contracts openraft relies on and does not check at run time; the quorum
//! simulation (tests/simulation.rs) exercises the same stores only through a running Raft.
//! Each case gets a fresh sled database in a temporary directory of its own.

use ferrolog_metadata::raft::{MetadataStateMachine, SledLogStore, TypeConfig};
use openraft::StorageError;
use openraft::StorageIOError;
use openraft::testing::{StoreBuilder, Suite};

/// Builds the store pair the server builds, one log store and one state machine on one sled
/// database, in a new temporary directory per suite case.
struct SledStoreBuilder;

impl StoreBuilder<TypeConfig, SledLogStore, MetadataStateMachine, tempfile::TempDir>
    for SledStoreBuilder
{
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, SledLogStore, MetadataStateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let db = sled::open(dir.path()).map_err(|e| StorageIOError::write(&e))?;
        let log_store = SledLogStore::open(&db).map_err(|e| StorageIOError::write(&e))?;
        let state_machine =
            MetadataStateMachine::open(&db).map_err(|e| StorageIOError::write(&e))?;
        // The directory outlives both stores: the suite drops this guard last.
        Ok((dir, log_store, state_machine))
    }
}

/// A plain test, not `#[tokio::test]`: the suite starts a tokio runtime per case itself.
#[test]
// openraft fixes the suite's error type; it is large, and not ours to box.
#[allow(clippy::result_large_err)]
fn the_sled_log_store_and_state_machine_pass_openraft_s_storage_suite()
-> Result<(), StorageError<u64>> {
    Suite::test_all(SledStoreBuilder)
}
