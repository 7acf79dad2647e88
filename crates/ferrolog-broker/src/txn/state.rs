//! One transactional id as its coordinator holds it, and the rules of its transitions. Pure
//! state, no I/O: the coordinator computes the next state here, makes it durable in
//! `__transaction_state`, and only then installs it, so a crash at any point leaves either
//! the old state or the new one in the log.
//!
//! The life of a transaction (Kafka's `TransactionState`, with transaction v2 epochs):
//!
//! ```text
//! Empty ──AddPartitions──▶ Ongoing ──EndTxn──▶ PrepareCommit|PrepareAbort
//!   ▲                                               │ markers written to every partition
//!   └────────── CompleteCommit|CompleteAbort ◀──────┘
//! ```
//!
//! A transaction runs under one producer epoch E. Preparing its end moves the producer to
//! E + 1 and the markers carry E + 1, so once a partition has its marker, any request the
//! producer sent during the transaction and that arrives late (epoch E) is fenced there:
//! it cannot land in the next transaction (KAFKA-17754, fixed by KIP-890).

use std::collections::BTreeSet;

use ferrolog_proto::v1::TransactionState as WireState;
use thiserror::Error;

use crate::group::TopicPartition;

/// The largest epoch a producer id runs under. An end that would pass it hands the
/// transactional id a new producer id at epoch 0 (as Kafka's transaction v2 does), so a
/// producer committing ten times a second does not run out after an hour.
pub const MAX_PRODUCER_EPOCH: i16 = i16::MAX - 1;

/// Kafka's `transaction.timeout.ms` default.
pub const DEFAULT_TRANSACTION_TIMEOUT_MS: u32 = 60_000;
/// Kafka's `transaction.max.timeout.ms` default: a producer may not ask for longer.
pub const MAX_TRANSACTION_TIMEOUT_MS: u32 = 15 * 60 * 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Ongoing => "ongoing",
            Self::PrepareCommit => "prepare_commit",
            Self::PrepareAbort => "prepare_abort",
            Self::CompleteCommit => "complete_commit",
            Self::CompleteAbort => "complete_abort",
        }
    }

    pub fn to_wire(self) -> WireState {
        match self {
            Self::Empty => WireState::Empty,
            Self::Ongoing => WireState::Ongoing,
            Self::PrepareCommit => WireState::PrepareCommit,
            Self::PrepareAbort => WireState::PrepareAbort,
            Self::CompleteCommit => WireState::CompleteCommit,
            Self::CompleteAbort => WireState::CompleteAbort,
        }
    }

    pub fn from_wire(state: WireState) -> Self {
        match state {
            WireState::Empty => Self::Empty,
            WireState::Ongoing => Self::Ongoing,
            WireState::PrepareCommit => Self::PrepareCommit,
            WireState::PrepareAbort => Self::PrepareAbort,
            WireState::CompleteCommit => Self::CompleteCommit,
            WireState::CompleteAbort => Self::CompleteAbort,
        }
    }

    /// Markers are being written: the outcome is decided and durable.
    pub fn is_prepared(self) -> bool {
        matches!(self, Self::PrepareCommit | Self::PrepareAbort)
    }

    /// No transaction is open: a new one may start.
    fn is_idle(self) -> bool {
        matches!(
            self,
            Self::Empty | Self::CompleteCommit | Self::CompleteAbort
        )
    }
}

/// Why a transactional request was refused. Each maps to a stable code (see `BrokerError`).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TxnError {
    #[error(
        "transactional id '{transactional_id}' is now held by producer epoch {current}, not \
         {asked}: a newer producer instance took over (or the transaction timed out and was \
         aborted); this producer must stop"
    )]
    ProducerFenced {
        transactional_id: String,
        asked: i16,
        current: i16,
    },
    #[error(
        "producer epoch {asked} of transactional id '{transactional_id}' is newer than its \
         coordinator's {current}"
    )]
    InvalidProducerEpoch {
        transactional_id: String,
        asked: i16,
        current: i16,
    },
    #[error("transactional id '{transactional_id}' belongs to producer id {current}, not {asked}")]
    InvalidProducerIdMapping {
        transactional_id: String,
        asked: i64,
        current: i64,
    },
    #[error("transactional id '{0}' is not known to its coordinator: call InitProducerId first")]
    UnknownTransactionalId(String),
    #[error("transaction of '{transactional_id}' is {state}: {why}")]
    InvalidState {
        transactional_id: String,
        state: &'static str,
        why: &'static str,
    },
    #[error(
        "the previous transaction of '{0}' is still completing (its markers are being \
         written); retry shortly"
    )]
    Concurrent(String),
    #[error("transaction timeout {asked_ms} ms is above transaction.max.timeout.ms ({max_ms} ms)")]
    InvalidTimeout { asked_ms: u32, max_ms: u32 },
}

/// One transactional id's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnMetadata {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// The epoch the last ended transaction ran under (-1 before the first end): an EndTxn
    /// retried with it, after its answer was lost, is answered from the state.
    pub last_producer_epoch: i16,
    pub timeout_ms: u32,
    pub state: TxnState,
    pub partitions: BTreeSet<TopicPartition>,
    /// When the open transaction started; 0 when none is open.
    pub start_ms: i64,
    pub last_update_ms: i64,
}

/// What InitProducerId must do.
#[derive(Debug, PartialEq, Eq)]
pub enum InitPlan {
    /// Write this state and answer with its producer id and epoch.
    Ready(TxnMetadata),
    /// An older instance left a transaction open: abort it first (with `abort_open`), then
    /// plan again.
    AbortOpenFirst,
}

/// What EndTxn must do.
#[derive(Debug, PartialEq, Eq)]
pub enum EndPlan {
    /// Write this prepared state, then the markers, then complete it.
    Prepare(TxnMetadata),
    /// A retry of an end already decided: answer with the current id and epoch.
    AlreadyEnded {
        producer_id: i64,
        producer_epoch: i16,
    },
}

impl TxnMetadata {
    /// A transactional id's first state, under a new producer id.
    pub fn new(
        transactional_id: &str,
        producer_id: i64,
        timeout_ms: u32,
        now_ms: i64,
    ) -> TxnMetadata {
        TxnMetadata {
            transactional_id: transactional_id.to_owned(),
            producer_id,
            producer_epoch: 0,
            last_producer_epoch: -1,
            timeout_ms,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            start_ms: 0,
            last_update_ms: now_ms,
        }
    }

    fn invalid(&self, why: &'static str) -> TxnError {
        TxnError::InvalidState {
            transactional_id: self.transactional_id.clone(),
            state: self.state.name(),
            why,
        }
    }

    /// Checks that a request comes from the id's current producer.
    pub fn check_producer(&self, producer_id: i64, epoch: i16) -> Result<(), TxnError> {
        if producer_id != self.producer_id {
            return Err(TxnError::InvalidProducerIdMapping {
                transactional_id: self.transactional_id.clone(),
                asked: producer_id,
                current: self.producer_id,
            });
        }
        if epoch < self.producer_epoch {
            return Err(TxnError::ProducerFenced {
                transactional_id: self.transactional_id.clone(),
                asked: epoch,
                current: self.producer_epoch,
            });
        }
        if epoch > self.producer_epoch {
            return Err(TxnError::InvalidProducerEpoch {
                transactional_id: self.transactional_id.clone(),
                asked: epoch,
                current: self.producer_epoch,
            });
        }
        Ok(())
    }

    /// InitProducerId for an id already known: the next epoch, fencing every older instance.
    /// `new_producer_id` is called only when the epoch ran out.
    pub fn plan_init(
        &self,
        timeout_ms: u32,
        now_ms: i64,
        new_producer_id: Option<i64>,
    ) -> Result<InitPlan, TxnError> {
        match self.state {
            TxnState::Ongoing => return Ok(InitPlan::AbortOpenFirst),
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                return Err(TxnError::Concurrent(self.transactional_id.clone()));
            }
            _ => {}
        }
        let mut next = self.clone();
        if self.producer_epoch >= MAX_PRODUCER_EPOCH {
            let Some(producer_id) = new_producer_id else {
                return Err(self.invalid("its producer epoch ran out and no new id was given"));
            };
            next.producer_id = producer_id;
            next.producer_epoch = 0;
        } else {
            next.producer_epoch += 1;
        }
        next.last_producer_epoch = -1;
        next.timeout_ms = timeout_ms;
        next.state = TxnState::Empty;
        next.partitions.clear();
        next.start_ms = 0;
        next.last_update_ms = now_ms;
        Ok(InitPlan::Ready(next))
    }

    /// Whether the epoch would pass `MAX_PRODUCER_EPOCH` at the next end or init: the
    /// coordinator then fetches a new producer id first.
    pub fn needs_new_producer_id(&self) -> bool {
        self.producer_epoch >= MAX_PRODUCER_EPOCH
    }

    /// AddPartitionsToTxn: the state with `partitions` added, opening the transaction if
    /// none is; `None` when nothing changes (all were added already).
    pub fn plan_add_partitions(
        &self,
        producer_id: i64,
        epoch: i16,
        partitions: &BTreeSet<TopicPartition>,
        now_ms: i64,
    ) -> Result<Option<TxnMetadata>, TxnError> {
        self.check_producer(producer_id, epoch)?;
        if self.state.is_prepared() {
            return Err(TxnError::Concurrent(self.transactional_id.clone()));
        }
        if self.state == TxnState::Ongoing && partitions.is_subset(&self.partitions) {
            return Ok(None);
        }
        let mut next = self.clone();
        if self.state.is_idle() {
            next.state = TxnState::Ongoing;
            next.partitions.clear();
            next.start_ms = now_ms;
        }
        next.partitions.extend(partitions.iter().cloned());
        next.last_update_ms = now_ms;
        Ok(Some(next))
    }

    /// EndTxn from the producer: the prepared state, under the producer's next epoch.
    pub fn plan_end(
        &self,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        now_ms: i64,
    ) -> Result<EndPlan, TxnError> {
        // A retry of the end that moved the producer on (its answer was lost).
        if producer_id == self.producer_id
            && self.last_producer_epoch >= 0
            && epoch == self.last_producer_epoch
        {
            let same_outcome = if commit {
                matches!(
                    self.state,
                    TxnState::PrepareCommit | TxnState::CompleteCommit
                )
            } else {
                matches!(self.state, TxnState::PrepareAbort | TxnState::CompleteAbort)
            };
            if same_outcome {
                return Ok(EndPlan::AlreadyEnded {
                    producer_id: self.producer_id,
                    producer_epoch: self.producer_epoch,
                });
            }
            return Err(TxnError::ProducerFenced {
                transactional_id: self.transactional_id.clone(),
                asked: epoch,
                current: self.producer_epoch,
            });
        }
        self.check_producer(producer_id, epoch)?;
        match self.state {
            TxnState::Ongoing => {}
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                return Err(TxnError::Concurrent(self.transactional_id.clone()));
            }
            _ => return Err(self.invalid("no transaction is open (no partition was added)")),
        }
        Ok(EndPlan::Prepare(self.prepared(commit, now_ms)))
    }

    /// The coordinator's own abort of the open transaction (timeout, an operator, or a new
    /// instance's InitProducerId): the producer moves to the next epoch, so the one that
    /// opened it is fenced.
    pub fn plan_abort_open(&self, now_ms: i64) -> Result<TxnMetadata, TxnError> {
        if self.state != TxnState::Ongoing {
            return Err(self.invalid("only an open transaction can be aborted"));
        }
        Ok(self.prepared(false, now_ms))
    }

    /// The state that decides the end: the next epoch, which the markers carry. Epochs stay
    /// within `MAX_PRODUCER_EPOCH + 1`: `completed` moves an id at the limit to a new
    /// producer id.
    fn prepared(&self, commit: bool, now_ms: i64) -> TxnMetadata {
        let mut next = self.clone();
        next.state = if commit {
            TxnState::PrepareCommit
        } else {
            TxnState::PrepareAbort
        };
        next.last_producer_epoch = self.producer_epoch;
        next.producer_epoch = self.producer_epoch.saturating_add(1);
        next.last_update_ms = now_ms;
        next
    }

    /// The state once every marker is written. `new_producer_id` (asked for when
    /// `needs_new_producer_id`) replaces a producer id whose epochs ran out: the producer
    /// continues under it at epoch 0.
    pub fn completed(&self, now_ms: i64, new_producer_id: Option<i64>) -> TxnMetadata {
        let mut next = self.clone();
        if let Some(producer_id) = new_producer_id {
            next.producer_id = producer_id;
            next.producer_epoch = 0;
            next.last_producer_epoch = -1;
        }
        next.state = match self.state {
            TxnState::PrepareCommit => TxnState::CompleteCommit,
            TxnState::PrepareAbort => TxnState::CompleteAbort,
            other => other,
        };
        next.partitions.clear();
        next.start_ms = 0;
        next.last_update_ms = now_ms;
        next
    }

    /// The open transaction ran past its timeout.
    pub fn timed_out(&self, now_ms: i64) -> bool {
        self.state == TxnState::Ongoing
            && now_ms.saturating_sub(self.start_ms) > i64::from(self.timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: u32) -> TopicPartition {
        TopicPartition {
            topic: "t".to_owned(),
            partition: p,
        }
    }

    fn parts(ps: &[u32]) -> BTreeSet<TopicPartition> {
        ps.iter().map(|p| tp(*p)).collect()
    }

    fn ongoing() -> TxnMetadata {
        let txn = TxnMetadata::new("app", 42, 60_000, 0);
        txn.plan_add_partitions(42, 0, &parts(&[0, 1]), 10)
            .expect("add")
            .expect("a change")
    }

    #[test]
    fn adding_partitions_opens_the_transaction_once() {
        let txn = ongoing();
        assert_eq!(txn.state, TxnState::Ongoing);
        assert_eq!(txn.start_ms, 10);
        assert_eq!(
            txn.plan_add_partitions(42, 0, &parts(&[1]), 20)
                .expect("add"),
            None,
            "nothing new to write"
        );
        let more = txn
            .plan_add_partitions(42, 0, &parts(&[2]), 20)
            .expect("add")
            .expect("a change");
        assert_eq!(more.partitions, parts(&[0, 1, 2]));
        assert_eq!(
            more.start_ms, 10,
            "the transaction started at its first partition"
        );
    }

    #[test]
    fn every_end_moves_the_epoch_and_a_late_request_of_the_old_one_is_fenced() {
        let txn = ongoing();
        let EndPlan::Prepare(prepared) = txn.plan_end(42, 0, true, 30).expect("end") else {
            panic!("expected a prepare");
        };
        assert_eq!(prepared.state, TxnState::PrepareCommit);
        assert_eq!(
            prepared.producer_epoch, 1,
            "the markers carry the next epoch"
        );
        assert!(matches!(
            prepared.plan_add_partitions(42, 1, &parts(&[0]), 31),
            Err(TxnError::Concurrent(_))
        ));
        let done = prepared.completed(40, None);
        assert_eq!(done.state, TxnState::CompleteCommit);
        assert!(done.partitions.is_empty());
        // The finished transaction's producer (epoch 0) cannot open the next one...
        assert!(matches!(
            done.plan_add_partitions(42, 0, &parts(&[0]), 41),
            Err(TxnError::ProducerFenced {
                asked: 0,
                current: 1,
                ..
            })
        ));
        // ...but its lost-answer retry of the same EndTxn is answered.
        assert_eq!(
            done.plan_end(42, 0, true, 41).expect("retry"),
            EndPlan::AlreadyEnded {
                producer_id: 42,
                producer_epoch: 1
            }
        );
        // A retry asking for the other outcome is not.
        assert!(done.plan_end(42, 0, false, 41).is_err());
        // The producer goes on under epoch 1.
        let next = done
            .plan_add_partitions(42, 1, &parts(&[3]), 50)
            .expect("add")
            .expect("a change");
        assert_eq!(next.partitions, parts(&[3]));
    }

    #[test]
    fn ending_without_a_transaction_is_an_invalid_state() {
        let txn = TxnMetadata::new("app", 42, 60_000, 0);
        assert!(matches!(
            txn.plan_end(42, 0, true, 1),
            Err(TxnError::InvalidState { .. })
        ));
    }

    #[test]
    fn a_new_instance_fences_the_old_one_after_aborting_its_transaction() {
        let txn = ongoing();
        assert_eq!(
            txn.plan_init(60_000, 50, None).expect("plan"),
            InitPlan::AbortOpenFirst
        );
        let aborting = txn.plan_abort_open(50).expect("abort");
        assert_eq!(aborting.state, TxnState::PrepareAbort);
        assert_eq!(aborting.producer_epoch, 1);
        let aborted = aborting.completed(60, None);
        let InitPlan::Ready(fresh) = aborted.plan_init(30_000, 70, None).expect("plan") else {
            panic!("expected a ready state");
        };
        assert_eq!(fresh.producer_epoch, 2);
        assert_eq!(fresh.state, TxnState::Empty);
        assert_eq!(fresh.timeout_ms, 30_000);
        assert!(matches!(
            fresh.check_producer(42, 0),
            Err(TxnError::ProducerFenced { .. })
        ));
        assert!(matches!(
            fresh.check_producer(7, 2),
            Err(TxnError::InvalidProducerIdMapping { .. })
        ));
    }

    #[test]
    fn an_id_whose_epochs_ran_out_continues_under_a_new_producer_id() {
        let mut txn = ongoing();
        txn.producer_epoch = MAX_PRODUCER_EPOCH - 1;
        let EndPlan::Prepare(prepared) = txn
            .plan_end(42, MAX_PRODUCER_EPOCH - 1, false, 1)
            .expect("end")
        else {
            panic!("expected a prepare");
        };
        assert_eq!(prepared.producer_epoch, MAX_PRODUCER_EPOCH);
        assert!(prepared.needs_new_producer_id());
        let done = prepared.completed(2, Some(99));
        assert_eq!((done.producer_id, done.producer_epoch), (99, 0));
    }

    #[test]
    fn an_open_transaction_times_out() {
        let txn = ongoing();
        assert!(!txn.timed_out(10 + 60_000));
        assert!(txn.timed_out(10 + 60_001));
        let EndPlan::Prepare(prepared) = txn.plan_end(42, 0, true, 20).expect("end") else {
            panic!("expected a prepare");
        };
        assert!(
            !prepared.timed_out(i64::MAX),
            "a decided end is never aborted"
        );
        assert!(!prepared.completed(30, None).timed_out(i64::MAX));
    }
}
