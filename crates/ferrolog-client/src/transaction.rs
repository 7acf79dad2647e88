//! The transactional producer's side of Kafka transactions, with transaction v2 (KIP-890)
//! epochs: the state machine that orders `init_transactions`, `begin_transaction`,
//! `commit_transaction` and `abort_transaction`, the partitions the coordinator knows are
//! in the open transaction, and the calls to the transaction coordinator.
//!
//! Who does what:
//! - The application's calls on `Producer` move the state (ready -> in transaction ->
//!   committing or aborting -> ready) and make the coordinator calls InitProducerId,
//!   AddOffsetsToTxn, TxnOffsetCommit (at the group's coordinator) and EndTxn.
//! - The sender task sends a partition's batches only once the coordinator has added the
//!   partition to the transaction: it asks for the partitions its queued batches need, several
//!   per AddPartitionsToTxn call, one call at a time. It reports every failed batch here.
//!
//! Errors, as Kafka's producer sorts them: PRODUCER_FENCED and INVALID_PRODUCER_EPOCH mean
//! another instance with the same transactional id took over; the producer is then
//! [`TxnState::Fatal`] and refuses everything after with that error. Any other failure inside
//! a transaction (a batch given up, a failed AddPartitionsToTxn) makes it
//! [`TxnState::Abortable`]: `commit_transaction` refuses with the error, queued records fail,
//! and the application must call `abort_transaction`, after which the producer is usable.
//!
//! Epochs: EndTxn answers with the producer's next epoch (the coordinator moves it at every
//! transaction end, so a late request of the finished transaction is fenced everywhere). The
//! producer adopts it, and the sender restarts every partition's sequence at 0 when it sees
//! the new identity. No batch is in flight then: commit waited for every batch, abort for
//! every in-flight one.

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferrolog_proto::retry::Backoff;
use ferrolog_proto::v1::client_service_client::ClientServiceClient;
use ferrolog_proto::v1::transaction_service_client::TransactionServiceClient;
use ferrolog_proto::v1::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, CommittedOffset, EndTxnRequest, ErrorCode,
    FindTransactionCoordinatorRequest, InitProducerIdRequest, TopicPartitions,
    TxnOffsetCommitRequest,
};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::connection::call;
use crate::error::{ClientError, Result};
use crate::idempotence::{ProducerIdentity, identity_from_wire};
use crate::metadata::Cluster;

/// A topic partition as the sender keys its queues.
pub(crate) type PartitionKey = (Arc<str>, u32);

/// Where the transactional producer stands (Kafka's `TransactionManager.State`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TxnState {
    /// `init_transactions` has not succeeded yet.
    Uninitialized,
    /// Between transactions.
    Ready,
    /// `begin_transaction` was called; records may be sent.
    InTransaction,
    /// `commit_transaction` is flushing or waiting for EndTxn; a timed-out commit is retried
    /// by calling it again.
    Committing,
    /// `abort_transaction` is failing queued batches, waiting for in-flight ones, or waiting
    /// for EndTxn; a timed-out abort is retried by calling it again.
    Aborting,
    /// Something in the transaction failed: only `abort_transaction` helps.
    Abortable(ClientError),
    /// Fenced by a newer instance (or the epoch ran out): the producer is done.
    Fatal(ClientError),
}

/// What the sender does with queued batches in the current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SenderVerdict {
    /// Send them, once their partitions are in the transaction.
    Dispatch,
    /// Fail every batch not yet in flight with this error.
    FailQueued(ClientError),
}

/// Whether `error` means a newer producer with the same transactional id took over.
pub(crate) fn is_fencing(error: &ClientError) -> bool {
    matches!(
        error.code(),
        Some(ErrorCode::ProducerFenced | ErrorCode::InvalidProducerEpoch)
    )
}

fn invalid_state(message: impl Into<String>) -> ClientError {
    ClientError::server(ErrorCode::InvalidTxnState, message)
}

/// The transaction state machine: synchronous and free of I/O, so that its ordering rules
/// are unit tested on their own.
#[derive(Debug)]
pub(crate) struct TxnMachine {
    state: TxnState,
    identity: Option<ProducerIdentity>,
    /// Partitions the coordinator added to the open transaction.
    added: HashSet<PartitionKey>,
    /// Partitions with a batch waiting, not yet asked for.
    to_add: BTreeSet<PartitionKey>,
    /// Partitions of the AddPartitionsToTxn call in flight.
    adding: BTreeSet<PartitionKey>,
    /// Whether the coordinator knows the transaction (a partition or a group's offsets were
    /// added): only then is there anything for EndTxn to end.
    started: bool,
}

impl Default for TxnMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl TxnMachine {
    pub(crate) fn new() -> Self {
        TxnMachine {
            state: TxnState::Uninitialized,
            identity: None,
            added: HashSet::new(),
            to_add: BTreeSet::new(),
            adding: BTreeSet::new(),
            started: false,
        }
    }

    #[cfg(test)]
    pub(crate) fn state(&self) -> &TxnState {
        &self.state
    }

    /// The producer id and epoch of the current (or next) transaction.
    pub(crate) fn identity(&self) -> Option<ProducerIdentity> {
        self.identity
    }

    /// The error a fatal producer answers everything with.
    fn fatal(&self) -> Result<()> {
        match &self.state {
            TxnState::Fatal(error) => Err(error.clone()),
            _ => Ok(()),
        }
    }

    /// Checks that `init_transactions` may run: once, before anything else.
    pub(crate) fn check_init(&self) -> Result<()> {
        self.fatal()?;
        match self.state {
            TxnState::Uninitialized => Ok(()),
            _ => Err(invalid_state(
                "init_transactions was already called on this producer",
            )),
        }
    }

    /// `init_transactions` succeeded with `identity`.
    pub(crate) fn initialized(&mut self, identity: ProducerIdentity) {
        if self.state == TxnState::Uninitialized {
            self.identity = Some(identity);
            self.state = TxnState::Ready;
        }
    }

    pub(crate) fn begin(&mut self) -> Result<()> {
        self.fatal()?;
        match &self.state {
            TxnState::Ready => {
                self.state = TxnState::InTransaction;
                Ok(())
            }
            TxnState::Uninitialized => Err(invalid_state(
                "begin_transaction needs init_transactions first",
            )),
            TxnState::InTransaction => Err(invalid_state("a transaction is already open")),
            other => Err(invalid_state(format!(
                "begin_transaction while the previous transaction is {}",
                describe(other)
            ))),
        }
    }

    /// Checks that a record may be sent now: only inside an open transaction.
    pub(crate) fn check_send(&self) -> Result<()> {
        match &self.state {
            TxnState::InTransaction => Ok(()),
            TxnState::Fatal(error) => Err(error.clone()),
            TxnState::Abortable(error) => Err(ClientError::TransactionAborted(format!(
                "the transaction must be aborted after an earlier error: {error}"
            ))),
            TxnState::Uninitialized => Err(invalid_state(
                "a transactional producer sends only after init_transactions and \
                 begin_transaction",
            )),
            other => Err(invalid_state(format!(
                "a transactional producer sends only inside a transaction (call \
                 begin_transaction); the transaction is {}",
                describe(other)
            ))),
        }
    }

    /// Checks that offsets may join the transaction, and notes that the coordinator will
    /// know the transaction (AddOffsetsToTxn starts it).
    pub(crate) fn check_offsets(&self) -> Result<()> {
        self.check_send()
    }

    /// AddOffsetsToTxn succeeded: EndTxn must end the transaction.
    pub(crate) fn offsets_added(&mut self) {
        self.started = true;
    }

    /// `commit_transaction` starts (or is retried after its EndTxn timed out).
    pub(crate) fn start_commit(&mut self) -> Result<()> {
        match &self.state {
            TxnState::InTransaction | TxnState::Committing => {
                self.state = TxnState::Committing;
                Ok(())
            }
            TxnState::Fatal(error) => Err(error.clone()),
            TxnState::Abortable(error) => Err(abort_first(error)),
            other => Err(invalid_state(format!(
                "commit_transaction with no transaction open (it is {})",
                describe(other)
            ))),
        }
    }

    /// After the commit's flush: every batch is answered, and one that failed made the
    /// transaction abortable.
    pub(crate) fn check_commit_flushed(&self) -> Result<()> {
        match &self.state {
            TxnState::Committing => Ok(()),
            TxnState::Fatal(error) => Err(error.clone()),
            TxnState::Abortable(error) => Err(abort_first(error)),
            other => Err(invalid_state(format!(
                "the transaction changed to {} during commit_transaction",
                describe(other)
            ))),
        }
    }

    /// `abort_transaction` starts (or is retried after its EndTxn timed out).
    pub(crate) fn start_abort(&mut self) -> Result<()> {
        match &self.state {
            TxnState::InTransaction | TxnState::Abortable(_) | TxnState::Aborting => {
                self.state = TxnState::Aborting;
                Ok(())
            }
            TxnState::Fatal(error) => Err(error.clone()),
            TxnState::Committing => Err(invalid_state(
                "a commit of this transaction is under way: call commit_transaction again",
            )),
            other => Err(invalid_state(format!(
                "abort_transaction with no transaction open (it is {})",
                describe(other)
            ))),
        }
    }

    /// Whether EndTxn must be sent: the coordinator knows the transaction.
    pub(crate) fn started(&self) -> bool {
        self.started
    }

    /// The transaction ended (EndTxn answered with `next`, or there was nothing to end):
    /// the producer is ready for the next one.
    pub(crate) fn ended(&mut self, next: ProducerIdentity) {
        if matches!(self.state, TxnState::Committing | TxnState::Aborting) {
            self.state = TxnState::Ready;
            self.identity = Some(next);
            self.added.clear();
            self.to_add.clear();
            self.adding.clear();
            self.started = false;
        }
    }

    /// Records a failure inside the transaction: fencing is fatal; any other error makes an
    /// open transaction abortable (the first error is kept). Failures while aborting, or of
    /// records failed because of an earlier error, change nothing.
    pub(crate) fn fail(&mut self, error: &ClientError) {
        if matches!(self.state, TxnState::Fatal(_)) {
            return;
        }
        if is_fencing(error) {
            self.state = TxnState::Fatal(error.clone());
            return;
        }
        if matches!(error, ClientError::TransactionAborted(_)) {
            return;
        }
        if matches!(self.state, TxnState::InTransaction | TxnState::Committing) {
            self.state = TxnState::Abortable(error.clone());
        }
    }

    /// A coordinator call outside any batch (InitProducerId, EndTxn) failed for a reason that
    /// no retry fixes: the producer cannot know the transaction's state any more.
    pub(crate) fn fail_fatally(&mut self, error: &ClientError) {
        if !matches!(self.state, TxnState::Fatal(_)) {
            self.state = TxnState::Fatal(error.clone());
        }
    }

    /// What the sender does with queued batches now.
    pub(crate) fn sender_verdict(&self) -> SenderVerdict {
        match &self.state {
            TxnState::InTransaction | TxnState::Committing => SenderVerdict::Dispatch,
            TxnState::Aborting => SenderVerdict::FailQueued(ClientError::TransactionAborted(
                "abort_transaction was called".to_owned(),
            )),
            TxnState::Abortable(error) => SenderVerdict::FailQueued(
                ClientError::TransactionAborted(format!("an earlier error: {error}")),
            ),
            TxnState::Fatal(error) => SenderVerdict::FailQueued(error.clone()),
            other => SenderVerdict::FailQueued(invalid_state(format!(
                "a batch outside any transaction (it is {})",
                describe(other)
            ))),
        }
    }

    /// Whether the partition's batches may be sent; if not, asks for it to be added.
    pub(crate) fn admit(&mut self, key: &PartitionKey) -> bool {
        if self.added.contains(key) {
            return true;
        }
        if !self.adding.contains(key) {
            self.to_add.insert(key.clone());
        }
        false
    }

    /// The partitions for the next AddPartitionsToTxn call, if none is in flight.
    pub(crate) fn take_adds(&mut self) -> Vec<PartitionKey> {
        if !self.adding.is_empty() || self.sender_verdict() != SenderVerdict::Dispatch {
            return Vec::new();
        }
        self.adding = std::mem::take(&mut self.to_add);
        self.adding.iter().cloned().collect()
    }

    /// The AddPartitionsToTxn call in flight returned.
    pub(crate) fn adds_done(&mut self, result: &Result<()>) {
        let adding = std::mem::take(&mut self.adding);
        match result {
            Ok(()) => {
                self.started |= !adding.is_empty();
                self.added.extend(adding);
            }
            Err(error) => {
                // A call that timed out or lost its connection may have reached the
                // coordinator: then only an EndTxn ends what it started.
                self.started |= !adding.is_empty() && error.is_retriable();
                self.fail(error);
            }
        }
    }
}

fn abort_first(error: &ClientError) -> ClientError {
    ClientError::TransactionAborted(format!(
        "the transaction cannot commit after an earlier error; call abort_transaction: {error}"
    ))
}

fn describe(state: &TxnState) -> &'static str {
    match state {
        TxnState::Uninitialized => "not initialized",
        TxnState::Ready => "ended",
        TxnState::InTransaction => "open",
        TxnState::Committing => "committing",
        TxnState::Aborting => "aborting",
        TxnState::Abortable(_) => "failed and must be aborted",
        TxnState::Fatal(_) => "fenced",
    }
}

/// A transactional producer's id, state and coordinator, shared by its handles and its
/// sender task.
#[derive(Debug)]
pub(crate) struct Transactions {
    pub(crate) transactional_id: String,
    timeout_ms: u32,
    machine: Mutex<TxnMachine>,
    /// The coordinator's address, once found; forgotten when it moves.
    coordinator: Mutex<Option<String>>,
    /// True while an AddPartitionsToTxn call is in flight: an abort waits for it, so that
    /// the call cannot reach the coordinator after the EndTxn.
    pub(crate) adding: watch::Sender<bool>,
}

impl Transactions {
    pub(crate) fn new(transactional_id: String, timeout_ms: u32) -> Self {
        Transactions {
            transactional_id,
            timeout_ms,
            machine: Mutex::new(TxnMachine::new()),
            coordinator: Mutex::new(None),
            adding: watch::Sender::new(false),
        }
    }

    pub(crate) fn machine(&self) -> MutexGuard<'_, TxnMachine> {
        self.machine.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cached_coordinator(&self) -> Option<String> {
        self.coordinator
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_coordinator(&self, address: Option<String>) {
        *self.coordinator.lock().unwrap_or_else(|p| p.into_inner()) = address;
    }

    /// InitProducerId with the transactional id, at its coordinator: the id's producer id
    /// with a new epoch, after the coordinator aborted whatever an older instance left open.
    pub(crate) async fn init_producer_id(
        &self,
        cluster: &Cluster,
        deadline: Instant,
    ) -> Result<ProducerIdentity> {
        let request = InitProducerIdRequest {
            transactional_id: self.transactional_id.clone(),
            transaction_timeout_ms: self.timeout_ms,
        };
        let response = self
            .at_coordinator(cluster, deadline, |address, channel, timeout| {
                let request = request.clone();
                async move {
                    call(
                        &address,
                        "an InitProducerId answer",
                        timeout,
                        ClientServiceClient::new(channel).init_producer_id(request),
                    )
                    .await
                }
            })
            .await?;
        identity_from_wire(response.producer_id, response.producer_epoch)
    }

    /// AddPartitionsToTxn for `partitions`, at the coordinator.
    pub(crate) async fn add_partitions(
        self: Arc<Self>,
        cluster: Cluster,
        identity: ProducerIdentity,
        partitions: Vec<PartitionKey>,
        deadline: Instant,
    ) -> Result<()> {
        let request = AddPartitionsToTxnRequest {
            transactional_id: self.transactional_id.clone(),
            producer_id: identity.producer_id,
            producer_epoch: i32::from(identity.epoch),
            partitions: to_wire(&partitions),
        };
        self.at_coordinator(&cluster, deadline, |address, channel, timeout| {
            let request = request.clone();
            async move {
                call(
                    &address,
                    "an AddPartitionsToTxn answer",
                    timeout,
                    TransactionServiceClient::new(channel).add_partitions_to_txn(request),
                )
                .await
            }
        })
        .await
        .map(|_| ())
    }

    /// AddOffsetsToTxn for `group_id`, at the transaction's coordinator.
    pub(crate) async fn add_offsets(
        &self,
        cluster: &Cluster,
        identity: ProducerIdentity,
        group_id: &str,
        deadline: Instant,
    ) -> Result<()> {
        let request = AddOffsetsToTxnRequest {
            transactional_id: self.transactional_id.clone(),
            producer_id: identity.producer_id,
            producer_epoch: i32::from(identity.epoch),
            group_id: group_id.to_owned(),
        };
        self.at_coordinator(cluster, deadline, |address, channel, timeout| {
            let request = request.clone();
            async move {
                call(
                    &address,
                    "an AddOffsetsToTxn answer",
                    timeout,
                    TransactionServiceClient::new(channel).add_offsets_to_txn(request),
                )
                .await
            }
        })
        .await
        .map(|_| ())
    }

    /// TxnOffsetCommit at the group's coordinator (found with GroupService.FindCoordinator):
    /// the offsets take effect when the transaction commits.
    pub(crate) async fn commit_offsets(
        &self,
        cluster: &Cluster,
        identity: ProducerIdentity,
        group_id: &str,
        offsets: Vec<CommittedOffset>,
        deadline: Instant,
    ) -> Result<()> {
        let request = TxnOffsetCommitRequest {
            transactional_id: self.transactional_id.clone(),
            group_id: group_id.to_owned(),
            producer_id: identity.producer_id,
            producer_epoch: i32::from(identity.epoch),
            offsets,
        };
        let group_coordinator = Mutex::new(None);
        retry_at(
            cluster,
            deadline,
            &group_coordinator,
            || crate::group::find_coordinator(cluster, group_id),
            |address, channel, timeout| {
                let request = request.clone();
                async move {
                    call(
                        &address,
                        "a TxnOffsetCommit answer",
                        timeout,
                        TransactionServiceClient::new(channel).txn_offset_commit(request),
                    )
                    .await
                }
            },
        )
        .await
        .map(|_| ())
    }

    /// EndTxn: commits or aborts, and returns the identity of the next transaction. Safe to
    /// retry after a lost answer: the coordinator answers a repeated EndTxn of the epoch that
    /// just ended from its log.
    pub(crate) async fn end_txn(
        &self,
        cluster: &Cluster,
        identity: ProducerIdentity,
        commit: bool,
        deadline: Instant,
    ) -> Result<ProducerIdentity> {
        let request = EndTxnRequest {
            transactional_id: self.transactional_id.clone(),
            producer_id: identity.producer_id,
            producer_epoch: i32::from(identity.epoch),
            commit,
        };
        let response = self
            .at_coordinator(cluster, deadline, |address, channel, timeout| {
                let request = request.clone();
                async move {
                    call(
                        &address,
                        "an EndTxn answer",
                        timeout,
                        TransactionServiceClient::new(channel).end_txn(request),
                    )
                    .await
                }
            })
            .await?;
        identity_from_wire(response.producer_id, response.producer_epoch)
    }

    /// Runs `request` at the transactional id's coordinator (see [`retry_at`]).
    async fn at_coordinator<T, F, Fut>(
        &self,
        cluster: &Cluster,
        deadline: Instant,
        request: F,
    ) -> Result<T>
    where
        F: FnMut(String, Channel, Duration) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let cache = Mutex::new(self.cached_coordinator());
        let result = retry_at(
            cluster,
            deadline,
            &cache,
            || find_transaction_coordinator(cluster, &self.transactional_id),
            request,
        )
        .await;
        self.set_coordinator(cache.into_inner().unwrap_or_else(|p| p.into_inner()));
        result
    }
}

/// Runs `request` at the transactional id's coordinator for an admin call, within the
/// request timeout.
pub(crate) async fn at_transaction_coordinator<T, F, Fut>(
    cluster: &Cluster,
    transactional_id: &str,
    request: F,
) -> Result<T>
where
    F: FnMut(String, Channel, Duration) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + cluster.config().request_timeout();
    retry_at(
        cluster,
        deadline,
        &Mutex::new(None),
        || find_transaction_coordinator(cluster, transactional_id),
        request,
    )
    .await
}

/// Runs `request` at a coordinator, finding it with `find` first and again after it moved
/// (NOT_COORDINATOR, NOT_LEADER, an unreachable or shutting-down broker), and retrying
/// retriable answers (CONCURRENT_TRANSACTIONS: the previous transaction is still completing)
/// with backoff until `deadline`.
async fn retry_at<T, F, Fut, Find, FindFut>(
    cluster: &Cluster,
    deadline: Instant,
    coordinator: &Mutex<Option<String>>,
    mut find: Find,
    mut request: F,
) -> Result<T>
where
    F: FnMut(String, Channel, Duration) -> Fut,
    Fut: Future<Output = Result<T>>,
    Find: FnMut() -> FindFut,
    FindFut: Future<Output = Result<String>>,
{
    let config = cluster.config();
    let backoff = Backoff::from_millis(
        config.retry_backoff_ms.max(10),
        config.retry_backoff_max_ms.max(100),
    );
    let mut attempt = 0;
    loop {
        let known = coordinator
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = config
            .request_timeout()
            .min(left.max(Duration::from_millis(1)));
        let result = match known {
            Some(address) => match cluster.channel(&address) {
                Ok(channel) => request(address, channel, timeout).await,
                Err(e) => Err(e),
            },
            None => match find().await {
                Ok(address) => {
                    *coordinator.lock().unwrap_or_else(|p| p.into_inner()) = Some(address);
                    continue;
                }
                Err(e) => Err(e),
            },
        };
        let error = match result {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        let moved = matches!(
            error.code(),
            Some(ErrorCode::NotCoordinator | ErrorCode::NotLeader | ErrorCode::BrokerShuttingDown)
        ) || matches!(
            error,
            ClientError::Unreachable { .. } | ClientError::Timeout { .. }
        );
        if moved {
            *coordinator.lock().unwrap_or_else(|p| p.into_inner()) = None;
            cluster.invalidate();
        }
        attempt += 1;
        let delay = backoff.jittered(attempt, rand::random());
        if !(moved || error.is_retriable()) || Instant::now() + delay >= deadline {
            return Err(error);
        }
        tracing::debug!(%error, attempt, "coordinator call failed; retrying in {} ms", delay.as_millis());
        tokio::time::sleep(delay).await;
    }
}

/// TransactionService.FindTransactionCoordinator at any broker: the coordinator's address.
pub(crate) async fn find_transaction_coordinator(
    cluster: &Cluster,
    transactional_id: &str,
) -> Result<String> {
    let timeout = cluster.config().request_timeout();
    let request = FindTransactionCoordinatorRequest {
        transactional_id: transactional_id.to_owned(),
    };
    let answer = cluster
        .with_any_broker(
            "a FindTransactionCoordinator answer",
            true,
            |address, channel| {
                let request = request.clone();
                async move {
                    call(
                        &address,
                        "a FindTransactionCoordinator answer",
                        timeout,
                        TransactionServiceClient::new(channel)
                            .find_transaction_coordinator(request),
                    )
                    .await
                }
            },
        )
        .await?;
    if answer.address.is_empty() {
        return Err(ClientError::server(
            ErrorCode::BrokerNotAvailable,
            format!("no coordinator for transactional id '{transactional_id}' yet"),
        ));
    }
    Ok(answer.address)
}

fn to_wire(partitions: &[PartitionKey]) -> Vec<TopicPartitions> {
    let mut by_topic: std::collections::BTreeMap<&str, Vec<i32>> = Default::default();
    for (topic, partition) in partitions {
        by_topic.entry(topic).or_default().push(*partition as i32);
    }
    by_topic
        .into_iter()
        .map(|(topic, partitions)| TopicPartitions {
            topic: topic.to_owned(),
            partitions,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: ProducerIdentity = ProducerIdentity {
        producer_id: 9,
        epoch: 0,
    };

    fn key(topic: &str, partition: u32) -> PartitionKey {
        (Arc::from(topic), partition)
    }

    fn ready() -> TxnMachine {
        let mut m = TxnMachine::new();
        m.check_init().expect("fresh producer");
        m.initialized(FIRST);
        m
    }

    fn fenced() -> ClientError {
        ClientError::server(ErrorCode::ProducerFenced, "a newer producer took over")
    }

    fn code(result: Result<()>) -> Option<ErrorCode> {
        result.expect_err("refused").code()
    }

    #[test]
    fn given_a_fresh_producer_then_nothing_but_init_is_allowed() {
        let mut m = TxnMachine::new();
        assert_eq!(code(m.begin()), Some(ErrorCode::InvalidTxnState));
        assert_eq!(code(m.check_send()), Some(ErrorCode::InvalidTxnState));
        assert_eq!(code(m.start_commit()), Some(ErrorCode::InvalidTxnState));
        assert_eq!(code(m.start_abort()), Some(ErrorCode::InvalidTxnState));
        m.initialized(FIRST);
        assert_eq!(m.state(), &TxnState::Ready);
        assert_eq!(
            code(m.check_init()),
            Some(ErrorCode::InvalidTxnState),
            "only once"
        );
    }

    #[test]
    fn sends_need_an_open_transaction() {
        let mut m = ready();
        assert_eq!(code(m.check_send()), Some(ErrorCode::InvalidTxnState));
        m.begin().expect("ready");
        m.check_send().expect("open");
        assert_eq!(
            code(m.begin()),
            Some(ErrorCode::InvalidTxnState),
            "no nesting"
        );
    }

    #[test]
    fn commit_then_the_next_transaction_runs_under_the_returned_epoch() {
        let mut m = ready();
        m.begin().expect("ready");
        assert!(!m.admit(&key("t", 0)));
        assert_eq!(m.take_adds(), vec![key("t", 0)]);
        m.adds_done(&Ok(()));
        assert!(m.started());
        m.start_commit().expect("open");
        assert_eq!(
            code(m.check_send()),
            Some(ErrorCode::InvalidTxnState),
            "committing"
        );
        assert_eq!(code(m.start_abort()), Some(ErrorCode::InvalidTxnState));
        m.check_commit_flushed().expect("no batch failed");
        let next = ProducerIdentity {
            producer_id: 9,
            epoch: 1,
        };
        m.ended(next);
        assert_eq!(m.state(), &TxnState::Ready);
        assert_eq!(m.identity(), Some(next));
        assert!(!m.started());
        m.begin().expect("ready again");
        assert!(
            !m.admit(&key("t", 0)),
            "each transaction adds its partitions anew"
        );
    }

    #[test]
    fn a_commit_that_timed_out_is_retried_not_aborted() {
        let mut m = ready();
        m.begin().expect("ready");
        m.start_commit().expect("open");
        m.start_commit().expect("a retried commit");
        assert_eq!(code(m.start_abort()), Some(ErrorCode::InvalidTxnState));
    }

    #[test]
    fn partitions_are_added_in_batches_one_call_at_a_time() {
        let mut m = ready();
        m.begin().expect("ready");
        assert!(!m.admit(&key("a", 0)));
        assert!(!m.admit(&key("a", 1)));
        assert!(!m.admit(&key("a", 0)), "asked once");
        assert_eq!(m.take_adds(), vec![key("a", 0), key("a", 1)]);
        assert!(!m.admit(&key("b", 0)));
        assert!(!m.admit(&key("a", 1)), "in flight: not asked again");
        assert!(m.take_adds().is_empty(), "one call in flight at a time");
        m.adds_done(&Ok(()));
        assert!(m.admit(&key("a", 0)) && m.admit(&key("a", 1)));
        assert_eq!(m.take_adds(), vec![key("b", 0)]);
    }

    #[test]
    fn a_failed_batch_makes_the_transaction_abortable_and_commit_refuse() {
        let mut m = ready();
        m.begin().expect("ready");
        m.start_commit().expect("open");
        m.fail(&ClientError::server(ErrorCode::RecordTooLarge, "too big"));
        let refused = m.check_commit_flushed().expect_err("abortable");
        assert!(
            matches!(refused, ClientError::TransactionAborted(_)),
            "{refused:?}"
        );
        assert!(m.start_commit().is_err(), "commit stays refused");
        assert!(matches!(m.sender_verdict(), SenderVerdict::FailQueued(_)));
        m.start_abort().expect("abort is the way out");
        m.ended(ProducerIdentity {
            producer_id: 9,
            epoch: 1,
        });
        m.begin().expect("usable after the abort");
    }

    #[test]
    fn a_failed_add_partitions_makes_the_transaction_abortable() {
        let mut m = ready();
        m.begin().expect("ready");
        m.admit(&key("t", 0));
        m.take_adds();
        m.adds_done(&Err(ClientError::server(ErrorCode::UnknownTopic, "t")));
        assert!(matches!(m.state(), TxnState::Abortable(_)));
        assert!(!m.admit(&key("t", 0)), "never added");
        assert!(m.take_adds().is_empty(), "no more calls once abortable");
    }

    #[test]
    fn given_fencing_then_the_producer_refuses_everything_with_it() {
        for code in [ErrorCode::ProducerFenced, ErrorCode::InvalidProducerEpoch] {
            let mut m = ready();
            m.begin().expect("ready");
            let error = ClientError::server(code, "fenced");
            m.fail(&error);
            assert_eq!(m.check_send(), Err(error.clone()));
            assert_eq!(m.start_commit(), Err(error.clone()));
            assert_eq!(m.start_abort(), Err(error.clone()));
            assert_eq!(m.begin(), Err(error.clone()));
            assert_eq!(m.sender_verdict(), SenderVerdict::FailQueued(error.clone()));
            m.fail(&ClientError::server(ErrorCode::RecordTooLarge, "later"));
            assert_eq!(
                m.state(),
                &TxnState::Fatal(error),
                "the first fatal error stays"
            );
        }
    }

    #[test]
    fn fencing_while_aborting_is_fatal_too() {
        let mut m = ready();
        m.begin().expect("ready");
        m.start_abort().expect("open");
        m.fail(&fenced());
        assert_eq!(m.start_abort(), Err(fenced()));
    }

    #[test]
    fn aborting_fails_queued_batches_without_changing_the_state() {
        let mut m = ready();
        m.begin().expect("ready");
        m.start_abort().expect("open");
        let SenderVerdict::FailQueued(error) = m.sender_verdict() else {
            panic!("an abort fails what is queued");
        };
        m.fail(&error);
        m.fail(&ClientError::server(ErrorCode::NotLeader, "in flight"));
        assert_eq!(m.state(), &TxnState::Aborting);
        m.start_abort().expect("a retried abort");
    }

    #[test]
    fn offsets_start_the_transaction_at_the_coordinator() {
        let mut m = ready();
        assert!(
            m.check_offsets().is_err(),
            "offsets need an open transaction"
        );
        m.begin().expect("ready");
        m.check_offsets().expect("open");
        assert!(!m.started());
        m.offsets_added();
        assert!(m.started(), "EndTxn must end it");
    }

    #[test]
    fn transactional_batches_carry_bit_0x10_with_a_valid_crc() {
        let mut builder = ferrolog_log::RecordBatchBuilder::new(1_000);
        builder.push(1_000, None, Some(b"v"), &[]);
        let mut batch =
            ferrolog_log::compress_batch(&builder.build(), ferrolog_log::Compression::Lz4)
                .expect("compressible");
        ferrolog_log::set_transactional(&mut batch).expect("one whole batch");
        ferrolog_log::set_producer_fields(&mut batch, 9, 1, 0).expect("one whole batch");
        let header = ferrolog_log::verify_crc(&batch).expect("the CRC covers the new bit");
        assert_eq!(header.attributes & 0x10, 0x10);
        assert_eq!(header.attributes & 0x20, 0, "not a control batch");
        assert_eq!(
            header.compression().expect("codec"),
            ferrolog_log::Compression::Lz4
        );
        let len = batch.len();
        assert!(ferrolog_log::set_transactional(&mut batch[..len - 1]).is_err());
    }

    #[test]
    fn partitions_are_grouped_by_topic_on_the_wire() {
        let wire = to_wire(&[key("b", 1), key("a", 0), key("b", 0)]);
        assert_eq!(wire.len(), 2);
        assert_eq!(wire[0].topic, "a");
        assert_eq!(wire[1].partitions, vec![1, 0]);
    }
}
