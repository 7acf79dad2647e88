//! TransactionService: transactional producers' calls, answered by the transactional id's
//! coordinator (see `crate::txn`), the markers brokers send each other, and DescribeProducers.
//! This module only converts between the gRPC messages and the domain calls.

use std::sync::Arc;

use ferrolog_proto::v1;
use ferrolog_proto::v1::transaction_service_server::TransactionService;
use tonic::{Request, Response, Status};

use super::group::offsets_from_wire;
use crate::group::GroupCoordinator;
use crate::txn::{
    MarkerWriter, TransactionCoordinator, TxnMetadata, from_wire_partitions, offsets_partition_of,
    to_wire_partitions,
};
use crate::{Broker, BrokerError};

/// The TransactionService implementation.
#[derive(Clone)]
pub struct TransactionApi {
    broker: Arc<Broker>,
    transactions: Arc<TransactionCoordinator>,
    groups: Arc<GroupCoordinator>,
    markers: Arc<MarkerWriter>,
}

impl TransactionApi {
    pub fn new(
        broker: Arc<Broker>,
        transactions: Arc<TransactionCoordinator>,
        groups: Arc<GroupCoordinator>,
        markers: Arc<MarkerWriter>,
    ) -> Self {
        Self {
            broker,
            transactions,
            groups,
            markers,
        }
    }

    fn answer<T>(
        &self,
        rpc: &'static str,
        result: Result<T, BrokerError>,
    ) -> Result<Response<T>, Status> {
        self.broker
            .metrics()
            .count_request(rpc, result.as_ref().err().map(BrokerError::code));
        result.map(Response::new).map_err(Status::from)
    }
}

/// A producer epoch from the wire: Kafka's is an int16.
fn epoch(value: i32) -> Result<i16, BrokerError> {
    i16::try_from(value).map_err(|_| {
        BrokerError::InvalidRequest(format!("producer epoch {value} is outside 0..=32767"))
    })
}

fn describe(txn: TxnMetadata, coordinator_id: i32) -> v1::TransactionDescription {
    v1::TransactionDescription {
        transactional_id: txn.transactional_id,
        state: txn.state.name().to_owned(),
        producer_id: txn.producer_id,
        producer_epoch: i32::from(txn.producer_epoch),
        timeout_ms: txn.timeout_ms,
        start_timestamp_ms: txn.start_ms,
        partitions: to_wire_partitions(&txn.partitions),
        coordinator_id,
    }
}

#[tonic::async_trait]
impl TransactionService for TransactionApi {
    async fn find_transaction_coordinator(
        &self,
        request: Request<v1::FindTransactionCoordinatorRequest>,
    ) -> Result<Response<v1::FindTransactionCoordinatorResponse>, Status> {
        let id = request.into_inner().transactional_id;
        let result = self.transactions.find_coordinator(&id).await.map(|found| {
            v1::FindTransactionCoordinatorResponse {
                coordinator_id: found.coordinator,
                address: found.address,
                partition: found.state_partition as i32,
            }
        });
        self.answer("find_transaction_coordinator", result)
    }

    async fn add_partitions_to_txn(
        &self,
        request: Request<v1::AddPartitionsToTxnRequest>,
    ) -> Result<Response<v1::AddPartitionsToTxnResponse>, Status> {
        let r = request.into_inner();
        let result = async {
            let partitions = from_wire_partitions(&r.partitions)?;
            self.transactions
                .add_partitions(
                    &r.transactional_id,
                    r.producer_id,
                    epoch(r.producer_epoch)?,
                    partitions,
                )
                .await
        }
        .await;
        self.answer(
            "add_partitions_to_txn",
            result.map(|()| v1::AddPartitionsToTxnResponse {}),
        )
    }

    async fn add_offsets_to_txn(
        &self,
        request: Request<v1::AddOffsetsToTxnRequest>,
    ) -> Result<Response<v1::AddOffsetsToTxnResponse>, Status> {
        let r = request.into_inner();
        let result = async {
            // Creates __consumer_offsets if this is the group's first commit.
            let found = self.groups.find_coordinator(&r.group_id).await?;
            let offsets_partitions = self
                .broker
                .image()
                .topic(crate::group::OFFSETS_TOPIC)
                .map_or(0, |t| t.partitions.len() as u32);
            let tp = offsets_partition_of(&r.group_id, offsets_partitions);
            debug_assert_eq!(tp.partition, found.offsets_partition);
            self.transactions
                .add_partitions(
                    &r.transactional_id,
                    r.producer_id,
                    epoch(r.producer_epoch)?,
                    [tp].into(),
                )
                .await
        }
        .await;
        self.answer(
            "add_offsets_to_txn",
            result.map(|()| v1::AddOffsetsToTxnResponse {}),
        )
    }

    async fn txn_offset_commit(
        &self,
        request: Request<v1::TxnOffsetCommitRequest>,
    ) -> Result<Response<v1::TxnOffsetCommitResponse>, Status> {
        let r = request.into_inner();
        let result = async {
            let offsets = offsets_from_wire(r.offsets)?;
            self.groups
                .txn_commit(
                    &r.group_id,
                    r.producer_id,
                    epoch(r.producer_epoch)?,
                    &offsets,
                )
                .await
        }
        .await;
        self.answer(
            "txn_offset_commit",
            result.map(|()| v1::TxnOffsetCommitResponse {}),
        )
    }

    async fn end_txn(
        &self,
        request: Request<v1::EndTxnRequest>,
    ) -> Result<Response<v1::EndTxnResponse>, Status> {
        let r = request.into_inner();
        let result = async {
            self.transactions
                .end_txn(
                    &r.transactional_id,
                    r.producer_id,
                    epoch(r.producer_epoch)?,
                    r.commit,
                )
                .await
        }
        .await
        .map(|(producer_id, producer_epoch)| v1::EndTxnResponse {
            producer_id,
            producer_epoch: i32::from(producer_epoch),
        });
        self.answer("end_txn", result)
    }

    async fn write_txn_markers(
        &self,
        request: Request<v1::WriteTxnMarkersRequest>,
    ) -> Result<Response<v1::WriteTxnMarkersResponse>, Status> {
        let r = request.into_inner();
        let result = async {
            let partitions: Vec<_> = from_wire_partitions(&r.partitions)?.into_iter().collect();
            self.markers
                .write_local(
                    r.producer_id,
                    epoch(r.producer_epoch)?,
                    r.commit,
                    r.coordinator_epoch,
                    &partitions,
                )
                .await
                .map_err(|e| self.broker.with_leader_hint(e))
        }
        .await;
        self.answer(
            "write_txn_markers",
            result.map(|()| v1::WriteTxnMarkersResponse {}),
        )
    }

    async fn list_transactions(
        &self,
        request: Request<v1::ListTransactionsRequest>,
    ) -> Result<Response<v1::ListTransactionsResponse>, Status> {
        let states = request.into_inner().states;
        let me = self.broker.config().node_id.0;
        let result = self
            .transactions
            .list()
            .await
            .map(|txns| v1::ListTransactionsResponse {
                transactions: txns
                    .into_iter()
                    .filter(|t| states.is_empty() || states.iter().any(|s| s == t.state.name()))
                    .map(|t| v1::TransactionSummary {
                        transactional_id: t.transactional_id,
                        producer_id: t.producer_id,
                        state: t.state.name().to_owned(),
                        coordinator_id: me,
                    })
                    .collect(),
            });
        self.answer("list_transactions", result)
    }

    async fn describe_transaction(
        &self,
        request: Request<v1::DescribeTransactionRequest>,
    ) -> Result<Response<v1::TransactionDescription>, Status> {
        let id = request.into_inner().transactional_id;
        let me = self.broker.config().node_id.0;
        let result = self
            .transactions
            .describe(&id)
            .await
            .map(|txn| describe(txn, me));
        self.answer("describe_transaction", result)
    }

    async fn abort_transaction(
        &self,
        request: Request<v1::AbortTransactionRequest>,
    ) -> Result<Response<v1::AbortTransactionResponse>, Status> {
        let id = request.into_inner().transactional_id;
        let result = self
            .transactions
            .abort(&id)
            .await
            .map(
                |(producer_id, producer_epoch)| v1::AbortTransactionResponse {
                    producer_id,
                    producer_epoch: i32::from(producer_epoch),
                },
            );
        self.answer("abort_transaction", result)
    }

    async fn describe_producers(
        &self,
        request: Request<v1::DescribeProducersRequest>,
    ) -> Result<Response<v1::DescribeProducersResponse>, Status> {
        let r = request.into_inner();
        let result = self
            .broker
            .leader_partition(&r.topic, i64::from(r.partition))
            .map(|partition| {
                let (producers, last_stable_offset) = partition.producers();
                v1::DescribeProducersResponse {
                    producers: producers
                        .into_iter()
                        .map(|p| v1::ProducerState {
                            producer_id: p.producer_id,
                            producer_epoch: i32::from(p.producer_epoch),
                            last_sequence: p.last_sequence,
                            last_timestamp_ms: p.last_timestamp_ms,
                            current_txn_start_offset: p
                                .current_txn_first_offset
                                .map_or(-1, |o| o.0),
                        })
                        .collect(),
                    last_stable_offset: last_stable_offset.0,
                }
            });
        self.answer("describe_producers", result)
    }
}
