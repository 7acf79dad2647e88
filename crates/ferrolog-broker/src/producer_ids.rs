//! Producer ids for idempotent producers, handed out by this broker process from blocks the
//! controller gives it through the metadata log (Kafka's KIP-730 `ProducerIdManager`).
//!
//! Each block belongs to this process alone (the controller gives it only to the registered
//! incarnation, and blocks never overlap), so ids are handed out without asking anyone. The
//! next block is fetched in the background once 90% of the current one is used, so callers
//! rarely wait. A restarted process starts with no block and asks for a fresh one: the
//! unused ids of its old block are skipped, never handed out again.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ferrolog_metadata::{BrokerId, ProducerIdBlock};
use ferrolog_proto::retry::Backoff;
use ferrolog_proto::v1::ErrorCode;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::BrokerError;
use crate::control_plane::{ControlPlane, ControlPlaneError};
use crate::metrics::BrokerMetrics;

/// Longest a caller waits for a producer id while a block is being fetched, and longest one
/// fetch keeps retrying: a client's InitProducerId times out after about as long.
pub const DEFAULT_PRODUCER_ID_WAIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between attempts of a failed allocation (no active controller, or this process
/// not registered yet).
pub const PRODUCER_ID_RETRY_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
/// Share of a block (in percent) handed out before the next block is fetched (Kafka's).
pub const PRODUCER_ID_PREFETCH_PERCENT: u32 = 90;

/// How a [`ProducerIdManager`] waits and retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerIdSettings {
    /// Longest a caller waits for an id, and longest one fetch keeps retrying.
    pub wait_timeout: Duration,
    pub retry_backoff: Backoff,
    /// Share of a block (in percent) handed out before the next one is fetched.
    pub prefetch_percent: u32,
}

impl Default for ProducerIdSettings {
    fn default() -> Self {
        Self {
            wait_timeout: DEFAULT_PRODUCER_ID_WAIT_TIMEOUT,
            retry_backoff: PRODUCER_ID_RETRY_BACKOFF,
            prefetch_percent: PRODUCER_ID_PREFETCH_PERCENT,
        }
    }
}

/// Hands out producer ids, each once, from this process's blocks.
pub struct ProducerIdManager {
    inner: Arc<Inner>,
}

struct Inner {
    broker: BrokerId,
    incarnation_id: u64,
    control_plane: Arc<dyn ControlPlane>,
    settings: ProducerIdSettings,
    metrics: Arc<BrokerMetrics>,
    state: Mutex<State>,
    /// Woken whenever a fetch ends, with a block or with a failure.
    fetched: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// The block ids are handed out from, and the next id in it.
    current: Option<ProducerIdBlock>,
    next_id: i64,
    /// The block fetched ahead, used once `current` runs out.
    prefetched: Option<ProducerIdBlock>,
    /// The end of the newest block received: every later block must start at or above it.
    highest_end: i64,
    /// Whether a fetch is running; at most one is, and every caller waits on it.
    fetching: bool,
    /// Fetches that ended in failure, and the last failure.
    failures: u64,
    last_failure: Option<ControlPlaneError>,
}

impl State {
    /// The next id, moving on to the prefetched block when the current one is used up.
    fn take_id(&mut self) -> Option<i64> {
        if self.current.is_none_or(|block| self.next_id >= block.end())
            && let Some(block) = self.prefetched.take()
        {
            self.current = Some(block);
            self.next_id = block.first_producer_id;
        }
        let block = self.current?;
        if self.next_id >= block.end() {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        Some(id)
    }

    /// Whether the next block should be fetched now: the current one is used up to the
    /// prefetch share and none is fetched or being fetched.
    fn wants_prefetch(&self, percent: u32) -> bool {
        let Some(block) = self.current else {
            return false;
        };
        let used = self.next_id.saturating_sub(block.first_producer_id);
        let threshold = i64::from(block.producer_id_count) * i64::from(percent.min(100)) / 100;
        !self.fetching && self.prefetched.is_none() && used >= threshold
    }
}

/// Whether a failed allocation may succeed if asked again: no controller was reachable or
/// active, or this process is not registered yet (it registers right after it starts).
fn is_retriable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NotController
            | ErrorCode::RequestTimedOut
            | ErrorCode::BrokerNotAvailable
            | ErrorCode::FencedEpoch
    )
}

impl ProducerIdManager {
    /// A manager for process `incarnation_id` of broker `broker`; it holds no block until
    /// the first id is asked for.
    pub fn new(
        broker: BrokerId,
        incarnation_id: u64,
        control_plane: Arc<dyn ControlPlane>,
        metrics: Arc<BrokerMetrics>,
        settings: ProducerIdSettings,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                broker,
                incarnation_id,
                control_plane,
                settings,
                metrics,
                state: Mutex::new(State::default()),
                fetched: Notify::new(),
            }),
        }
    }

    /// A producer id never handed out before in this cluster. Waits, at most the wait
    /// timeout, while a block is fetched; fails at once when the controller refuses the
    /// fetch for good.
    pub async fn next_producer_id(&self) -> Result<i64, BrokerError> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.settings.wait_timeout;
        // Failures counted when this caller first found no id: only later ones are its own.
        let mut failures_before: Option<u64> = None;
        loop {
            let fetched = inner.fetched.notified();
            tokio::pin!(fetched);
            // Registered before the state is read, so a fetch that ends in between wakes it.
            fetched.as_mut().enable();
            {
                let mut state = inner.lock();
                if let Some(id) = state.take_id() {
                    if state.wants_prefetch(inner.settings.prefetch_percent) {
                        inner.start_fetch(&mut state);
                    }
                    drop(state);
                    inner.metrics.producer_ids.inc();
                    return Ok(id);
                }
                let before = *failures_before.get_or_insert(state.failures);
                if state.failures > before
                    && let Some(failure) = &state.last_failure
                {
                    // A fetch that gave up retrying ran out of time, as this caller would.
                    return Err(if is_retriable(failure.code) {
                        inner.unavailable(Some(failure))
                    } else {
                        BrokerError::ControlPlane(failure.clone())
                    });
                }
                if !state.fetching {
                    inner.start_fetch(&mut state);
                }
            }
            if tokio::time::timeout_at(deadline, fetched).await.is_err() {
                let last = inner.lock().last_failure.clone();
                return Err(inner.unavailable(last.as_ref()));
            }
        }
    }
}

impl Inner {
    /// The error of a caller that waited the whole wait timeout for a block.
    fn unavailable(&self, last: Option<&ControlPlaneError>) -> BrokerError {
        BrokerError::ProducerIdsUnavailable {
            timeout_ms: self.settings.wait_timeout.as_millis() as u64,
            last_error: last.map_or_else(
                || "no answer yet".to_owned(),
                |e| format!("{:?}: {e}", e.code),
            ),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the one fetch of the next block, in the background so that a caller that
    /// goes away does not cancel it.
    fn start_fetch(self: &Arc<Self>, state: &mut State) {
        state.fetching = true;
        tokio::spawn(Arc::clone(self).fetch());
    }

    /// Asks the control plane for a block, retrying what may succeed later, within the wait
    /// timeout; publishes the block or the failure and wakes the waiting callers.
    async fn fetch(self: Arc<Self>) {
        let deadline = Instant::now() + self.settings.wait_timeout;
        let mut attempt = 0;
        let outcome = loop {
            let answer = self
                .control_plane
                .allocate_producer_ids(self.broker, self.incarnation_id)
                .await;
            match answer {
                Ok(block) => break Ok(block),
                Err(error) if is_retriable(error.code) => {
                    attempt += 1;
                    let delay = self.settings.retry_backoff.delay(attempt);
                    if Instant::now() + delay >= deadline {
                        break Err(error);
                    }
                    tracing::debug!(%error, attempt, "retrying producer id allocation");
                    self.lock().last_failure = Some(error);
                    tokio::time::sleep(delay).await;
                }
                Err(error) => break Err(error),
            }
        };
        let mut state = self.lock();
        state.fetching = false;
        let outcome = outcome.and_then(|block| {
            // Blocks only move forward: a block below one already received could hand out
            // ids twice, so it is refused rather than used.
            if block.producer_id_count == 0 || block.first_producer_id < state.highest_end.max(0) {
                return Err(ControlPlaneError {
                    code: ErrorCode::InternalError,
                    message: format!(
                        "the controller gave producer ids {}..{} after a block that ended at {}: \
                         blocks must be non-empty and only move forward",
                        block.first_producer_id,
                        block.end(),
                        state.highest_end
                    ),
                });
            }
            Ok(block)
        });
        match outcome {
            Ok(block) => {
                tracing::info!(
                    first = block.first_producer_id,
                    count = block.producer_id_count,
                    "got a block of producer ids"
                );
                state.highest_end = block.end();
                state.prefetched = Some(block);
                state.last_failure = None;
                self.metrics.producer_id_blocks.inc();
            }
            Err(error) => {
                tracing::warn!(%error, "cannot get a block of producer ids");
                state.failures += 1;
                state.last_failure = Some(error);
            }
        }
        drop(state);
        self.fetched.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, VecDeque};
    use std::sync::atomic::{AtomicU64, Ordering};

    use ferrolog_metadata::QuorumStatus;
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::control_plane::{AdminChange, AlterIsrRequest, InternalTopic};

    const BLOCK: u32 = 10;
    const ME: BrokerId = BrokerId(1);
    const INCARNATION: u64 = 7;

    /// A control plane that gives consecutive blocks of [`BLOCK`] ids, after answering with
    /// the scripted errors first; it counts the allocations asked for.
    #[derive(Default)]
    struct Blocks {
        next: Mutex<i64>,
        errors: Mutex<VecDeque<ErrorCode>>,
        calls: AtomicU64,
        /// How long each allocation takes.
        delay: Duration,
    }

    #[tonic::async_trait]
    impl ControlPlane for Blocks {
        async fn register_broker(
            &self,
            _: BrokerId,
            _: &str,
            _: u64,
        ) -> Result<u64, ControlPlaneError> {
            unreachable!("the manager only allocates")
        }

        async fn broker_heartbeat(
            &self,
            _: BrokerId,
            _: u64,
            _: Duration,
        ) -> Result<bool, ControlPlaneError> {
            unreachable!("the manager only allocates")
        }

        async fn alter_isr(&self, _: AlterIsrRequest) -> Result<u64, ControlPlaneError> {
            unreachable!("the manager only allocates")
        }

        async fn allocate_producer_ids(
            &self,
            broker: BrokerId,
            incarnation_id: u64,
        ) -> Result<ProducerIdBlock, ControlPlaneError> {
            assert_eq!((broker, incarnation_id), (ME, INCARNATION));
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            if let Some(code) = self.errors.lock().expect("not poisoned").pop_front() {
                return Err(ControlPlaneError {
                    code,
                    message: format!("scripted {code:?}"),
                });
            }
            let mut next = self.next.lock().expect("not poisoned");
            let block = ProducerIdBlock {
                first_producer_id: *next,
                producer_id_count: BLOCK,
            };
            *next = block.end();
            Ok(block)
        }

        async fn controlled_shutdown(&self, _: BrokerId) -> Result<u64, ControlPlaneError> {
            unreachable!("the manager only allocates")
        }

        async fn create_internal_topic(
            &self,
            _: InternalTopic,
        ) -> Result<Option<u64>, ControlPlaneError> {
            unreachable!("the manager only allocates")
        }

        async fn submit_admin(&self, _: AdminChange) -> Result<u64, ControlPlaneError> {
            unreachable!("the manager only allocates")
        }

        async fn quorum_status(&self) -> QuorumStatus {
            QuorumStatus::default()
        }
    }

    fn manager(control_plane: Arc<Blocks>, wait_timeout: Duration) -> ProducerIdManager {
        let metrics = Arc::new(BrokerMetrics::new(&mut Registry::default()));
        ProducerIdManager::new(
            ME,
            INCARNATION,
            control_plane,
            metrics,
            ProducerIdSettings {
                wait_timeout,
                retry_backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(5)),
                prefetch_percent: PRODUCER_ID_PREFETCH_PERCENT,
            },
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_callers_never_get_the_same_id_and_share_each_allocation() {
        let blocks = Arc::new(Blocks {
            delay: Duration::from_millis(5),
            ..Blocks::default()
        });
        let manager = Arc::new(manager(Arc::clone(&blocks), Duration::from_secs(10)));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let manager = Arc::clone(&manager);
                tokio::spawn(async move {
                    let mut ids = Vec::new();
                    for _ in 0..25 {
                        ids.push(manager.next_producer_id().await.expect("an id"));
                    }
                    ids
                })
            })
            .collect();
        let mut all = BTreeSet::new();
        for task in tasks {
            for id in task.await.expect("caller") {
                assert!(all.insert(id), "producer id {id} handed out twice");
            }
        }
        assert_eq!(all.len(), 16 * 25);
        // 400 ids are 40 blocks; each allocation was shared, at most one more prefetched.
        let calls = blocks.calls.load(Ordering::SeqCst);
        assert!((40..=41).contains(&calls), "{calls} allocations");
        assert_eq!(manager.inner.metrics.producer_ids.get(), 400);
    }

    #[tokio::test]
    async fn the_next_block_is_fetched_once_ninety_percent_of_the_current_one_is_used() {
        let blocks = Arc::new(Blocks::default());
        let manager = manager(Arc::clone(&blocks), Duration::from_secs(10));
        for expected in 0..8 {
            assert_eq!(manager.next_producer_id().await.expect("id"), expected);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            blocks.calls.load(Ordering::SeqCst),
            1,
            "80% used: no prefetch"
        );
        assert_eq!(manager.next_producer_id().await.expect("id"), 8);
        tokio::time::timeout(Duration::from_secs(5), async {
            while manager.inner.lock().prefetched.is_none() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("90% used: the next block is fetched ahead");
        assert_eq!(blocks.calls.load(Ordering::SeqCst), 2);
        let rest: Vec<i64> = [
            manager.next_producer_id().await.expect("id"),
            manager.next_producer_id().await.expect("id"),
        ]
        .into();
        assert_eq!(rest, [9, 10], "the prefetched block follows on");
        assert_eq!(manager.inner.metrics.producer_id_blocks.get(), 2);
    }

    #[tokio::test]
    async fn no_controller_and_an_unregistered_process_are_retried_until_a_block_comes() {
        let blocks = Arc::new(Blocks {
            errors: Mutex::new(
                [
                    ErrorCode::NotController,
                    ErrorCode::FencedEpoch,
                    ErrorCode::RequestTimedOut,
                ]
                .into(),
            ),
            ..Blocks::default()
        });
        let manager = manager(Arc::clone(&blocks), Duration::from_secs(10));
        assert_eq!(
            manager.next_producer_id().await.expect("id after retries"),
            0
        );
        assert_eq!(blocks.calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_final_refusal_fails_the_caller_at_once_and_the_next_call_asks_again() {
        let blocks = Arc::new(Blocks {
            errors: Mutex::new([ErrorCode::InternalError].into()),
            ..Blocks::default()
        });
        let manager = manager(Arc::clone(&blocks), Duration::from_secs(30));
        let refused = manager.next_producer_id().await.expect_err("refused");
        assert_eq!(refused.code(), ErrorCode::InternalError, "{refused}");
        assert_eq!(manager.next_producer_id().await.expect("then an id"), 0);
    }

    #[tokio::test]
    async fn a_caller_waits_no_longer_than_the_wait_timeout() {
        let blocks = Arc::new(Blocks {
            errors: Mutex::new(std::iter::repeat_n(ErrorCode::NotController, 10_000).collect()),
            ..Blocks::default()
        });
        let manager = manager(Arc::clone(&blocks), Duration::from_millis(200));
        let started = std::time::Instant::now();
        let timed_out = manager.next_producer_id().await.expect_err("no controller");
        assert_eq!(timed_out.code(), ErrorCode::RequestTimedOut, "{timed_out}");
        assert!(
            timed_out.to_string().contains("NotController"),
            "{timed_out}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_restarted_process_skips_the_rest_of_its_old_block() {
        let blocks = Arc::new(Blocks::default());
        let before = manager(Arc::clone(&blocks), Duration::from_secs(10));
        let old: Vec<i64> = [
            before.next_producer_id().await.expect("id"),
            before.next_producer_id().await.expect("id"),
        ]
        .into();
        drop(before);
        let after = manager(Arc::clone(&blocks), Duration::from_secs(10));
        let new = after.next_producer_id().await.expect("id");
        assert_eq!(old, [0, 1]);
        assert_eq!(new, i64::from(BLOCK), "a fresh block, above every old id");
    }

    #[tokio::test]
    async fn a_block_below_one_already_received_is_refused() {
        let blocks = Arc::new(Blocks::default());
        let manager = manager(Arc::clone(&blocks), Duration::from_secs(10));
        assert_eq!(manager.next_producer_id().await.expect("id"), 0);
        *blocks.next.lock().expect("not poisoned") = 5;
        manager.inner.lock().current = None;
        let refused = manager
            .next_producer_id()
            .await
            .expect_err("overlapping block");
        assert_eq!(refused.code(), ErrorCode::InternalError, "{refused}");
    }
}
