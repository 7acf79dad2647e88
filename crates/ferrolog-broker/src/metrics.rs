//! The broker's Prometheus metrics: what an operator graphs to see load, latency and
//! durability cost. Exposed as text on the HTTP port's `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Labels of per-request counters: the RPC and its outcome code ("OK" or an ErrorCode name).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub rpc: &'static str,
    pub code: &'static str,
}

/// Labels of per-group, per-partition gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupPartitionLabels {
    pub group: String,
    pub topic: String,
    pub partition: u32,
}

/// Labels of transaction counters: how a transaction ended ("commit", "abort", or
/// "timeout" for the coordinator's own abort of one open too long).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TxnOutcomeLabels {
    pub outcome: &'static str,
}

/// Metrics of the transaction coordinator, under `ferrolog_transaction_`.
pub struct TxnMetrics {
    /// Transactions this broker's coordinator ended, by outcome.
    pub ended: Family<TxnOutcomeLabels, Counter>,
    /// From a transaction's first partition to its completed end.
    pub duration_seconds: Histogram,
    /// Markers this broker appended to partitions it leads.
    pub markers_written: Counter,
}

/// Every metric the broker updates.
pub struct BrokerMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub produced_records: Counter,
    pub produced_bytes: Counter,
    pub fetched_bytes: Counter,
    /// Batch bytes this broker sent to followers.
    pub replicated_bytes: Counter,
    /// The part of `replicated_bytes` answered from the newest batches kept in memory.
    pub replicated_from_memory_bytes: Counter,
    /// ISR changes this broker asked the controller for, and those refused.
    pub isr_changes: Counter,
    pub isr_change_failures: Counter,
    /// Producer ids this broker gave idempotent producers, and the blocks it took for them.
    pub producer_ids_handed_out: Counter,
    pub producer_id_blocks: Counter,
    pub produce_seconds: Histogram,
    pub fetch_seconds: Histogram,
    pub flush_seconds: Histogram,
    pub partitions: Gauge,
    /// Per group and partition: high watermark minus committed offset, exported by the
    /// group's coordinator.
    pub consumer_lag: Family<GroupPartitionLabels, Gauge>,
    /// The log cleaner (compaction): what it read and wrote, the dirtiest compacted log's
    /// dirty ratio, and when its last cleaning ended and how long it took.
    pub cleaner: CleanerMetrics,
    pub transactions: TxnMetrics,
}

/// Metrics of the log cleaner, under `ferrolog_log_cleaner_`.
#[derive(Default)]
pub struct CleanerMetrics {
    pub bytes_read: Counter,
    pub bytes_written: Counter,
    pub runs: Counter,
    pub failures: Counter,
    pub max_dirty_ratio: Gauge<f64, AtomicU64>,
    pub last_run_timestamp_seconds: Gauge<f64, AtomicU64>,
    pub last_run_duration_seconds: Gauge<f64, AtomicU64>,
}

impl BrokerMetrics {
    /// Creates the metrics and registers them under `ferrolog_`.
    pub fn new(registry: &mut Registry) -> Self {
        // 50 µs .. ~27 s: fsyncs and acks=all produces live in the low milliseconds.
        let latency = || Histogram::new(exponential_buckets(0.000_05, 2.0, 20));
        let metrics = Self {
            requests: Family::default(),
            produced_records: Counter::default(),
            produced_bytes: Counter::default(),
            fetched_bytes: Counter::default(),
            replicated_bytes: Counter::default(),
            replicated_from_memory_bytes: Counter::default(),
            isr_changes: Counter::default(),
            isr_change_failures: Counter::default(),
            producer_ids_handed_out: Counter::default(),
            producer_id_blocks: Counter::default(),
            produce_seconds: latency(),
            fetch_seconds: latency(),
            flush_seconds: latency(),
            partitions: Gauge::default(),
            consumer_lag: Family::default(),
            cleaner: CleanerMetrics::default(),
            transactions: TxnMetrics {
                ended: Family::default(),
                // 1 ms .. ~9 min: transactions commit every few milliseconds to minutes.
                duration_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
                markers_written: Counter::default(),
            },
        };
        let r = registry.sub_registry_with_prefix("ferrolog");
        r.register(
            "requests",
            "gRPC requests by RPC and result code",
            metrics.requests.clone(),
        );
        r.register(
            "produced_records",
            "Records appended by produce requests",
            metrics.produced_records.clone(),
        );
        r.register(
            "produced_bytes",
            "Record batch bytes appended by produce requests",
            metrics.produced_bytes.clone(),
        );
        r.register(
            "fetched_bytes",
            "Record batch bytes returned by fetches",
            metrics.fetched_bytes.clone(),
        );
        r.register(
            "replicated_bytes",
            "Record batch bytes sent to followers by this broker as leader",
            metrics.replicated_bytes.clone(),
        );
        r.register(
            "replicated_from_memory_bytes",
            "Of replicated_bytes, those sent from the newest batches kept in memory, not read back from disk",
            metrics.replicated_from_memory_bytes.clone(),
        );
        r.register(
            "isr_changes",
            "ISR changes this broker requested as partition leader",
            metrics.isr_changes.clone(),
        );
        r.register(
            "producer_ids_handed_out",
            "Producer ids this broker gave idempotent producers (InitProducerId)",
            metrics.producer_ids_handed_out.clone(),
        );
        r.register(
            "producer_id_blocks",
            "Blocks of producer ids this broker took from the controller",
            metrics.producer_id_blocks.clone(),
        );
        r.register(
            "isr_change_failures",
            "ISR change requests the controller refused or that failed",
            metrics.isr_change_failures.clone(),
        );
        r.register(
            "produce_latency_seconds",
            "Produce request latency, acknowledgement wait included",
            metrics.produce_seconds.clone(),
        );
        r.register(
            "fetch_latency_seconds",
            "Fetch request latency, long-poll wait included",
            metrics.fetch_seconds.clone(),
        );
        r.register(
            "log_flush_latency_seconds",
            "fsync latency of one group commit",
            metrics.flush_seconds.clone(),
        );
        r.register(
            "partitions",
            "Partition replicas hosted by this broker",
            metrics.partitions.clone(),
        );
        r.register(
            "consumer_group_lag",
            "Records between a group's committed offset and the high watermark, by group \
             and partition (exported by the group's coordinator)",
            metrics.consumer_lag.clone(),
        );
        let t = r.sub_registry_with_prefix("transaction");
        t.register(
            "ended",
            "Transactions this broker's coordinator ended, by outcome (commit, abort, timeout)",
            metrics.transactions.ended.clone(),
        );
        t.register(
            "duration_seconds",
            "Time from a transaction's first partition to its completed end",
            metrics.transactions.duration_seconds.clone(),
        );
        t.register(
            "markers_written",
            "Commit and abort markers this broker appended to partitions it leads",
            metrics.transactions.markers_written.clone(),
        );
        let c = r.sub_registry_with_prefix("log_cleaner");
        c.register(
            "bytes_read",
            "Segment bytes the log cleaner read (mapping keys and rewriting)",
            metrics.cleaner.bytes_read.clone(),
        );
        c.register(
            "bytes_written",
            "Cleaned segment bytes the log cleaner wrote",
            metrics.cleaner.bytes_written.clone(),
        );
        c.register(
            "runs",
            "Cleanings the log cleaner completed",
            metrics.cleaner.runs.clone(),
        );
        c.register(
            "failures",
            "Cleanings that failed (the log is tried again at the next pass)",
            metrics.cleaner.failures.clone(),
        );
        c.register(
            "dirty_ratio",
            "Largest dirty ratio (dirty / cleanable bytes) among this broker's compacted logs",
            metrics.cleaner.max_dirty_ratio.clone(),
        );
        c.register(
            "last_run_timestamp_seconds",
            "Unix time when the log cleaner's last cleaning ended",
            metrics.cleaner.last_run_timestamp_seconds.clone(),
        );
        c.register(
            "last_run_duration_seconds",
            "How long the log cleaner's last cleaning took",
            metrics.cleaner.last_run_duration_seconds.clone(),
        );
        metrics
    }

    /// Drops the lag gauge of one group partition (the group moved or was deleted).
    pub fn forget_consumer_lag(&self, group: &str, topic: &str, partition: u32) {
        self.consumer_lag.remove(&GroupPartitionLabels {
            group: group.to_owned(),
            topic: topic.to_owned(),
            partition,
        });
    }

    /// The lag gauge of one group partition.
    pub fn consumer_lag(&self, group: &str, topic: &str, partition: u32) -> Gauge {
        self.consumer_lag
            .get_or_create(&GroupPartitionLabels {
                group: group.to_owned(),
                topic: topic.to_owned(),
                partition,
            })
            .clone()
    }

    /// Counts one request by RPC and outcome (`None` is success).
    pub fn count_request(&self, rpc: &'static str, error: Option<ferrolog_proto::v1::ErrorCode>) {
        let code = error.map_or("OK", |c| c.as_str_name());
        self.requests
            .get_or_create(&RequestLabels { rpc, code })
            .inc();
    }

    /// Metrics registered nowhere, for tests.
    pub fn unregistered() -> Self {
        Self::new(&mut Registry::default())
    }
}
