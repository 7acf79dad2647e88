//! Transactions: the coordinator, the states of a transactional id and their rules, what it
//! keeps in `__transaction_state`, and the markers it writes. See
//! `proto/ferrolog/v1/transaction.proto` for the protocol.

mod coordinator;
mod log;
mod markers;
mod state;

pub use coordinator::{
    TransactionCoordinator, TxnConfig, TxnCoordinatorLocation, offsets_partition_of,
};
pub use log::{
    DEFAULT_TRANSACTION_STATE_PARTITIONS, TRANSACTION_STATE_TOPIC, from_wire_partitions,
    to_wire_partitions,
};
pub use markers::MarkerWriter;
pub use state::{
    DEFAULT_TRANSACTION_TIMEOUT_MS, MAX_PRODUCER_EPOCH, MAX_TRANSACTION_TIMEOUT_MS, TxnError,
    TxnMetadata, TxnState,
};
