//! Transaction administration, as Kafka's `kafka-transactions.sh`: list and describe
//! transactions, abort a hanging one, and list the producers a partition knows. Listing asks
//! every broker for the transactions its coordinators hold; describe and abort go to the
//! transactional id's coordinator; producers come from the partition's leader.

use ferrolog_proto::v1::transaction_service_client::TransactionServiceClient;
use ferrolog_proto::v1::{
    AbortTransactionRequest, AbortTransactionResponse, DescribeProducersRequest,
    DescribeProducersResponse, DescribeTransactionRequest, ListTransactionsRequest,
    TopicPartitions, TransactionDescription, TransactionSummary, WriteTxnMarkersRequest,
};

use crate::admin::Admin;
use crate::connection::call;
use crate::error::{ClientError, Result};
use crate::transaction::at_transaction_coordinator;

impl Admin {
    /// Every transactional id of the cluster, from every broker's coordinators; only those
    /// in `states` ("ongoing", "complete_abort", ...) unless it is empty.
    #[tracing::instrument(skip(self))]
    pub async fn list_transactions(&self, states: &[&str]) -> Result<Vec<TransactionSummary>> {
        let brokers = self.metadata(&[]).await?.brokers;
        let timeout = self.cluster().config().request_timeout();
        let request = ListTransactionsRequest {
            states: states.iter().map(|s| (*s).to_owned()).collect(),
        };
        let mut transactions = Vec::new();
        for address in brokers.into_iter().map(|b| b.address) {
            let channel = self.cluster().channel(&address)?;
            let answer = call(
                &address,
                "a ListTransactions answer",
                timeout,
                TransactionServiceClient::new(channel).list_transactions(request.clone()),
            )
            .await?;
            transactions.extend(answer.transactions);
        }
        // A coordinator that just moved may still answer for an id: keep one entry per id.
        transactions.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        transactions.dedup_by(|a, b| a.transactional_id == b.transactional_id);
        Ok(transactions)
    }

    /// State, producer id and epoch, partitions, timeout and start time of the transactional
    /// id's current (or last) transaction, from its coordinator.
    #[tracing::instrument(skip(self))]
    pub async fn describe_transaction(
        &self,
        transactional_id: &str,
    ) -> Result<TransactionDescription> {
        let request = DescribeTransactionRequest {
            transactional_id: transactional_id.to_owned(),
        };
        at_transaction_coordinator(self.cluster(), transactional_id, |a, channel, t| {
            let request = request.clone();
            async move {
                call(
                    &a,
                    "a DescribeTransaction answer",
                    t,
                    TransactionServiceClient::new(channel).describe_transaction(request),
                )
                .await
            }
        })
        .await
    }

    /// Aborts the transactional id's open transaction at its coordinator, fencing the
    /// producer that holds it: for a transaction left hanging by a producer that is gone.
    #[tracing::instrument(skip(self))]
    pub async fn abort_transaction(
        &self,
        transactional_id: &str,
    ) -> Result<AbortTransactionResponse> {
        let request = AbortTransactionRequest {
            transactional_id: transactional_id.to_owned(),
        };
        at_transaction_coordinator(self.cluster(), transactional_id, |a, channel, t| {
            let request = request.clone();
            async move {
                call(
                    &a,
                    "an AbortTransaction answer",
                    t,
                    TransactionServiceClient::new(channel).abort_transaction(request),
                )
                .await
            }
        })
        .await
    }

    /// The producers the partition's leader keeps state for, and the partition's last
    /// stable offset (Kafka's DescribeProducers).
    #[tracing::instrument(skip(self))]
    pub async fn describe_producers(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<DescribeProducersResponse> {
        let timeout = self.cluster().config().request_timeout();
        let request = DescribeProducersRequest {
            topic: topic.to_owned(),
            partition: partition as i32,
        };
        self.cluster()
            .with_leader(topic, partition, |address, channel| {
                let request = request.clone();
                async move {
                    call(
                        &address,
                        "a DescribeProducers answer",
                        timeout,
                        TransactionServiceClient::new(channel).describe_producers(request),
                    )
                    .await
                }
            })
            .await
    }

    /// Aborts a transaction left open at one partition by `producer_id` when no coordinator
    /// knows it (a hanging transaction, as `kafka-transactions.sh abort --topic --partition
    /// --producer-id` ends one): the partition's leader appends an abort marker with the
    /// producer's next epoch, which ends the transaction there and fences that producer's
    /// batches of the old epoch. Returns the epoch of the marker.
    #[tracing::instrument(skip(self))]
    pub async fn abort_hanging_transaction(
        &self,
        topic: &str,
        partition: u32,
        producer_id: i64,
    ) -> Result<i16> {
        let producers = self.describe_producers(topic, partition).await?;
        let producer = producers
            .producers
            .iter()
            .find(|p| p.producer_id == producer_id)
            .ok_or_else(|| {
                ClientError::InvalidArgument(format!(
                    "{topic}-{partition} has no state for producer {producer_id}"
                ))
            })?;
        if producer.current_txn_start_offset < 0 {
            return Err(ClientError::InvalidArgument(format!(
                "producer {producer_id} has no open transaction at {topic}-{partition}"
            )));
        }
        let epoch = i16::try_from(producer.producer_epoch)
            .ok()
            .and_then(|e| e.checked_add(1))
            .ok_or_else(|| {
                ClientError::InvalidArgument(format!(
                    "producer {producer_id} is at epoch {}: no epoch left for a marker",
                    producer.producer_epoch
                ))
            })?;
        let timeout = self.cluster().config().request_timeout();
        let request = WriteTxnMarkersRequest {
            producer_id,
            producer_epoch: i32::from(epoch),
            commit: false,
            // No coordinator: an operator's marker.
            coordinator_epoch: -1,
            partitions: vec![TopicPartitions {
                topic: topic.to_owned(),
                partitions: vec![partition as i32],
            }],
        };
        self.cluster()
            .with_leader(topic, partition, |address, channel| {
                let request = request.clone();
                async move {
                    call(
                        &address,
                        "a WriteTxnMarkers answer",
                        timeout,
                        TransactionServiceClient::new(channel).write_txn_markers(request),
                    )
                    .await
                }
            })
            .await?;
        Ok(epoch)
    }
}
