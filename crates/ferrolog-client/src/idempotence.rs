//! The idempotent producer's identity and its per-partition sequence numbers.
//!
//! A producer takes a producer id (and epoch 0) from the cluster once, at connect. Each batch
//! is stamped, when first sent, with the id, the epoch and the partition's next sequence
//! number, and keeps that stamp through every retry: the partition leader answers a batch it
//! already has with its first offsets, refuses one that would leave a gap
//! (OUT_OF_ORDER_SEQUENCE_NUMBER), and so no retry duplicates or reorders records.
//!
//! When a stamped batch is given up (its delivery timeout passed, or a non-retriable error),
//! its partition's sequence may have a hole the leader will never see filled. The producer
//! then moves to the next epoch once every batch of the old one is settled, and numbers from
//! 0 again everywhere: a leader takes a higher epoch starting at 0 (Kafka's KIP-360 bump,
//! done by the client for a producer without a transactional id).
//!
//! A transactional producer takes its identity from its transaction coordinator instead
//! (see `transaction.rs`), never bumps its epoch itself (a failed batch makes the transaction
//! abortable, and the abort's EndTxn moves the epoch), and numbers from 0 again with the
//! identity every EndTxn returns.

use std::collections::HashMap;
use std::sync::Arc;

use ferrolog_proto::v1::InitProducerIdRequest;
use ferrolog_proto::v1::client_service_client::ClientServiceClient;

use crate::connection::call;
use crate::error::{ClientError, Result};
use crate::metadata::Cluster;

/// The producer id and epoch a producer stamps on its batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProducerIdentity {
    pub(crate) producer_id: i64,
    pub(crate) epoch: i16,
}

/// Asks any broker for a new producer id.
pub(crate) async fn init_producer_id(cluster: &Cluster) -> Result<ProducerIdentity> {
    let timeout = cluster.config().request_timeout();
    let response = cluster
        .with_any_broker(
            "an InitProducerId answer",
            false,
            |address, channel| async move {
                let mut client = ClientServiceClient::new(channel);
                call(
                    &address,
                    "an InitProducerId answer",
                    timeout,
                    client.init_producer_id(InitProducerIdRequest::default()),
                )
                .await
            },
        )
        .await?;
    let identity = identity_from_wire(response.producer_id, response.producer_epoch)?;
    tracing::debug!(
        producer_id = identity.producer_id,
        epoch = identity.epoch,
        "idempotent producer ready"
    );
    Ok(identity)
}

/// A producer id and epoch as a broker sends them (the epoch widened to 32 bits).
pub(crate) fn identity_from_wire(producer_id: i64, epoch: i32) -> Result<ProducerIdentity> {
    let epoch = i16::try_from(epoch).map_err(|_| {
        ClientError::Corrupt(format!(
            "the broker gave producer epoch {epoch}, outside Kafka's 16-bit range"
        ))
    })?;
    Ok(ProducerIdentity { producer_id, epoch })
}

/// Sequence numbers per partition under the current identity, and whether the identity must
/// move to the next epoch.
#[derive(Debug)]
pub(crate) struct Sequencer {
    identity: ProducerIdentity,
    next: HashMap<(Arc<str>, u32), i32>,
    /// The epoch in which each partition has acknowledged a batch of this producer.
    acknowledged_in: HashMap<(Arc<str>, u32), i16>,
    /// A stamped batch was given up: move to the next epoch once the old one is settled.
    bump_pending: bool,
}

impl Sequencer {
    pub(crate) fn new(identity: ProducerIdentity) -> Self {
        Sequencer {
            identity,
            next: HashMap::new(),
            acknowledged_in: HashMap::new(),
            bump_pending: false,
        }
    }

    /// Whether the partition has acknowledged a batch of the current epoch. Until it has, the
    /// producer sends it one batch at a time: a leader that does not know the producer (or
    /// this epoch) takes the first batch that arrives as the start of its sequence, and gRPC
    /// may hand it a later batch first.
    pub(crate) fn partition_knows_epoch(&self, topic: &Arc<str>, partition: u32) -> bool {
        self.acknowledged_in
            .get(&(Arc::clone(topic), partition))
            .is_some_and(|epoch| *epoch == self.identity.epoch)
    }

    /// Records that the partition acknowledged a batch stamped with `epoch`.
    pub(crate) fn acknowledged(&mut self, topic: &Arc<str>, partition: u32, epoch: i16) {
        self.acknowledged_in
            .insert((Arc::clone(topic), partition), epoch);
    }

    pub(crate) fn identity(&self) -> ProducerIdentity {
        self.identity
    }

    /// Whether new batches must wait for the old epoch's batches to settle.
    pub(crate) fn bump_pending(&self) -> bool {
        self.bump_pending
    }

    /// Records that a stamped batch was given up: its partition's sequence may have a hole.
    pub(crate) fn batch_given_up(&mut self) {
        self.bump_pending = true;
    }

    /// Moves to the next epoch, every partition numbering from 0 again; the caller makes
    /// sure no batch of the old epoch is still waiting or in flight. Fails at the end of the
    /// 16-bit epoch range: the producer must then be recreated for a new producer id.
    pub(crate) fn bump_epoch(&mut self) -> Result<()> {
        let epoch = self.identity.epoch.checked_add(1).ok_or_else(|| {
            ClientError::InvalidArgument(format!(
                "producer {} used up its epochs; create a new producer",
                self.identity.producer_id
            ))
        })?;
        tracing::warn!(
            producer_id = self.identity.producer_id,
            epoch,
            "a batch was given up; the producer moves to the next epoch and numbers from 0"
        );
        self.identity.epoch = epoch;
        self.next.clear();
        self.bump_pending = false;
        Ok(())
    }

    /// The base sequence for the next batch of `records` records to `partition`, and
    /// advances it (wrapping after `i32::MAX`, as Kafka's).
    pub(crate) fn take(&mut self, topic: &Arc<str>, partition: u32, records: u32) -> i32 {
        let next = self.next.entry((Arc::clone(topic), partition)).or_insert(0);
        let base = *next;
        *next = wrapping_add(base, records);
        base
    }
}

/// `sequence + count` modulo 2^31, as Kafka's `DefaultRecordBatch.incrementSequence`.
fn wrapping_add(sequence: i32, count: u32) -> i32 {
    let sum = (i64::from(sequence) + i64::from(count)) % (i64::from(i32::MAX) + 1);
    sum as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sequencer() -> Sequencer {
        Sequencer::new(ProducerIdentity {
            producer_id: 7,
            epoch: 0,
        })
    }

    #[test]
    fn each_partition_numbers_its_batches_by_their_records() {
        let mut s = sequencer();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        assert_eq!(s.take(&a, 0, 10), 0);
        assert_eq!(s.take(&a, 0, 5), 10);
        assert_eq!(s.take(&a, 1, 3), 0, "another partition starts at 0");
        assert_eq!(s.take(&b, 0, 1), 0, "another topic starts at 0");
        assert_eq!(s.take(&a, 0, 1), 15);
    }

    #[test]
    fn sequences_wrap_after_i32_max_as_kafkas_do() {
        assert_eq!(wrapping_add(i32::MAX - 1, 1), i32::MAX);
        assert_eq!(wrapping_add(i32::MAX, 1), 0);
        assert_eq!(wrapping_add(i32::MAX - 2, 5), 2);
    }

    #[test]
    fn an_epoch_bump_restarts_every_partition_at_zero() {
        let mut s = sequencer();
        let a: Arc<str> = "a".into();
        s.take(&a, 0, 10);
        s.batch_given_up();
        assert!(s.bump_pending());
        s.bump_epoch().expect("epochs left");
        assert!(!s.bump_pending());
        assert_eq!(s.identity().epoch, 1);
        assert_eq!(s.take(&a, 0, 1), 0);
        s.identity.epoch = i16::MAX;
        assert!(s.bump_epoch().is_err(), "no epoch after i16::MAX");
    }
}
