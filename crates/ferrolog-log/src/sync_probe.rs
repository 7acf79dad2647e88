//! A test hook for the data-path simulation (`crates/ferrolog-sim`): it reports every
//! segment file the log creates and every fsync of one that succeeds, so the simulation
//! knows how much of each file a crash must keep. Its simulated crash cuts each segment
//! file back to what the last fsync covered (and may keep a torn part of the rest), which
//! recovery must then cope with. No observer is installed outside the simulation; then
//! each report costs one atomic load.

use std::fs::File;
use std::sync::OnceLock;

/// Told about segment files as the log makes them durable.
pub trait SyncObserver: Send + Sync {
    /// `file` was just created (or truncated to empty) as a new segment: nothing of it is
    /// durable yet.
    fn created(&self, file: &File);
    /// An fsync of `file` just succeeded: everything it holds now is durable.
    fn synced(&self, file: &File);
}

static OBSERVER: OnceLock<Box<dyn SyncObserver>> = OnceLock::new();

/// Installs the process's observer; only the first call takes effect (the simulation
/// installs one, shared by all its seeds). Returns whether this call installed it.
pub fn install_sync_observer(observer: Box<dyn SyncObserver>) -> bool {
    OBSERVER.set(observer).is_ok()
}

pub(crate) fn created(file: &File) {
    if let Some(observer) = OBSERVER.get() {
        observer.created(file);
    }
}

pub(crate) fn synced(file: &File) {
    if let Some(observer) = OBSERVER.get() {
        observer.synced(file);
    }
}
