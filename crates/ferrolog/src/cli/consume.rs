//! `ferrolog consume`: prints records, one per line.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use ferrolog_client::{
    Admin, ConsumedRecord, Consumer, ConsumerConfig, GroupConsumer, GroupConsumerConfig,
    IsolationLevel, OffsetQuery, OffsetReset, Rebalance, StartOffset, TopicPartition,
};

use super::ClientArgs;

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    topic: String,
    /// Start at the earliest offset (default: only new records)
    #[arg(long, conflicts_with_all = ["offset", "from_timestamp"])]
    from_beginning: bool,
    /// Start, in each partition, at the first record whose timestamp is at or after T: ISO
    /// 8601 (2026-12-04T10:00:00Z, 2026-12-04T11:00:00+01:00, 2026-12-04 for midnight UTC)
    /// or Unix epoch milliseconds. A partition without such a record starts at its end.
    #[arg(long, value_name = "T", value_parser = parse_timestamp, conflicts_with_all = ["offset", "group"])]
    from_timestamp: Option<i64>,
    /// Start at this offset
    #[arg(long)]
    offset: Option<i64>,
    /// Read only this partition (default: all)
    #[arg(long)]
    partition: Option<u32>,
    /// Exit after this many records
    #[arg(long)]
    max_messages: Option<u64>,
    /// Exit when nothing new arrived for this long (default: never)
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// `value` (default), `json`, or a template with {topic} {partition} {offset}
    /// {timestamp} {key} {value}
    #[arg(long, default_value = "value")]
    format: String,
    /// Read as a member of this consumer group: partitions are shared with the group's
    /// other members, reading starts at the group's committed offsets, and what was
    /// printed is committed every 5 s and before exiting
    #[arg(long, conflicts_with_all = ["partition", "offset"])]
    group: Option<String>,
    /// With --group: where partitions without a committed offset start (earliest,
    /// latest, none) [default: latest, or earliest with --from-beginning]
    #[arg(long, requires = "group", value_parser = parse_reset)]
    reset: Option<OffsetReset>,
    /// read_committed: only records of committed transactions (and non-transactional ones),
    /// up to the first open transaction; read_uncommitted: everything
    #[arg(long, value_name = "LEVEL", default_value = "read_uncommitted")]
    isolation_level: IsolationLevel,
    #[command(flatten)]
    client: ClientArgs,
}

/// Parses `--from-timestamp`: epoch milliseconds, an RFC 3339 time, a date-time without zone
/// (UTC), or a date (midnight UTC).
fn parse_timestamp(value: &str) -> Result<i64, String> {
    if let Ok(ms) = value.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(value) {
        return Ok(time.timestamp_millis());
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(time) = chrono::NaiveDateTime::parse_from_str(value, format) {
            return Ok(time.and_utc().timestamp_millis());
        }
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        return Ok(date
            .and_hms_opt(0, 0, 0)
            .map_or(0, |time| time.and_utc().timestamp_millis()));
    }
    Err(format!(
        "'{value}' is neither epoch milliseconds nor an ISO 8601 time such as \
         2026-12-04T10:00:00Z"
    ))
}

fn parse_reset(value: &str) -> Result<OffsetReset, String> {
    match value {
        "earliest" => Ok(OffsetReset::Earliest),
        "latest" => Ok(OffsetReset::Latest),
        "none" => Ok(OffsetReset::None),
        other => Err(format!("'{other}' is not one of earliest, latest, none")),
    }
}

/// How often `consume --group` commits what it printed.
const GROUP_COMMIT_INTERVAL: Duration = Duration::from_secs(5);

/// How a record is printed.
enum Format {
    Value,
    Json,
    Template(String),
}

impl Format {
    fn parse(format: &str) -> anyhow::Result<Self> {
        Ok(match format {
            "value" => Self::Value,
            "json" => Self::Json,
            t if t.contains('{') => Self::Template(t.to_owned()),
            other => bail!(
                "unknown --format '{other}': use value, json, or a template such as '{{offset}} {{key}} {{value}}'"
            ),
        })
    }

    fn render(&self, r: &ConsumedRecord) -> String {
        let text =
            |b: &Option<bytes::Bytes>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
        match self {
            Self::Value => text(&r.value).unwrap_or_default(),
            Self::Json => serde_json::json!({
                "topic": &*r.topic,
                "partition": r.partition,
                "offset": r.offset,
                "timestamp_ms": r.timestamp_ms,
                "key": text(&r.key),
                "value": text(&r.value),
                "headers": r.headers.iter().map(|h| (h.key.clone(), text(&h.value))).collect::<std::collections::BTreeMap<_, _>>(),
            })
            .to_string(),
            Self::Template(t) => t
                .replace("{topic}", &r.topic)
                .replace("{partition}", &r.partition.to_string())
                .replace("{offset}", &r.offset.to_string())
                .replace("{timestamp}", &r.timestamp_ms.to_string())
                .replace("{key}", &text(&r.key).unwrap_or_default())
                .replace("{value}", &text(&r.value).unwrap_or_default()),
        }
    }
}

pub async fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    let format = Format::parse(&args.format)?;
    if let Some(group) = args.group.clone() {
        return run_in_group(args, &group, format).await;
    }
    let config = args.client.config();
    let admin = Admin::connect(config.clone()).await?;
    let count = super::partition_count(&admin, &args.topic).await?;
    let partitions: Vec<u32> = match args.partition {
        Some(p) if p < count => vec![p],
        Some(p) => bail!(
            "unknown partition {p} of topic '{}'; it has partitions 0..{count}",
            args.topic
        ),
        None => (0..count).collect(),
    };
    let start = match (args.from_beginning, args.offset) {
        (true, _) => StartOffset::Earliest,
        (false, Some(offset)) => StartOffset::Offset(offset),
        (false, None) => StartOffset::Latest,
    };
    let mut consumer_config = ConsumerConfig::new(config);
    consumer_config.isolation_level = args.isolation_level;
    let mut consumer = Consumer::connect(consumer_config).await?;
    for partition in partitions {
        let start = match args.from_timestamp {
            Some(timestamp_ms) => {
                let found = admin
                    .list_offsets(&args.topic, partition, OffsetQuery::Timestamp(timestamp_ms))
                    .await
                    .with_context(|| {
                        format!(
                            "look up the first offset of {}-{partition} at or after {timestamp_ms} ms",
                            args.topic
                        )
                    })?;
                // -1: no record that new yet; read what comes.
                if found.offset < 0 {
                    StartOffset::Latest
                } else {
                    StartOffset::Offset(found.offset)
                }
            }
            None => start,
        };
        consumer.assign(&args.topic, partition, start).await?;
    }

    let idle_limit = args.timeout_ms.map(Duration::from_millis);
    let mut last_record = Instant::now();
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    loop {
        if args.max_messages.is_some_and(|max| printed >= max) {
            return Ok(());
        }
        let wait = match idle_limit {
            Some(limit) => {
                let left = limit.saturating_sub(last_record.elapsed());
                if left.is_zero() {
                    return Ok(());
                }
                left.min(Duration::from_secs(1))
            }
            None => Duration::from_secs(1),
        };
        let records = consumer.poll(wait).await?;
        if records.is_empty() {
            continue;
        }
        last_record = Instant::now();
        let mut out = stdout.lock();
        for record in records {
            if args.max_messages.is_some_and(|max| printed >= max) {
                break;
            }
            if let Err(error) = writeln!(out, "{}", format.render(&record)) {
                if error.kind() == std::io::ErrorKind::BrokenPipe {
                    return Ok(());
                }
                return Err(error).context("write standard output");
            }
            printed += 1;
        }
        out.flush().ok();
    }
}

/// `consume --group`: a group member that commits exactly what it printed, every few
/// seconds, when a partition is taken away, and before it exits (at `--max-messages`,
/// `--timeout-ms`, or Ctrl-C / SIGTERM).
async fn run_in_group(args: ConsumeArgs, group: &str, format: Format) -> anyhow::Result<()> {
    let mut consumer_config = ConsumerConfig::new(args.client.config());
    consumer_config.isolation_level = args.isolation_level;
    let mut config = GroupConsumerConfig::new(consumer_config, group, &[&args.topic]);
    config.auto_offset_reset = args.reset.unwrap_or(if args.from_beginning {
        OffsetReset::Earliest
    } else {
        OffsetReset::Latest
    });
    // Commits name printed records only, never records fetched but not printed.
    config.auto_commit_interval = None;
    config.client_id = "ferrolog-cli".to_owned();
    let mut consumer = GroupConsumer::join(config)
        .await
        .with_context(|| format!("join group '{group}'"))?;
    consumer.on_rebalance(|change| match change {
        Rebalance::Assigned(partitions) => {
            for (tp, offset) in partitions {
                eprintln!("assigned {}-{} at offset {offset}", tp.topic, tp.partition);
            }
        }
        Rebalance::Revoked(partitions) => {
            for tp in partitions {
                eprintln!("revoked {}-{}", tp.topic, tp.partition);
            }
        }
    });
    let idle_limit = args.timeout_ms.map(Duration::from_millis);
    let mut last_record = Instant::now();
    let mut last_commit = Instant::now();
    let mut printed = 0u64;
    let mut to_commit: std::collections::BTreeMap<TopicPartition, i64> = Default::default();
    let stop = stop_signal();
    tokio::pin!(stop);
    let outcome: anyhow::Result<()> = loop {
        if args.max_messages.is_some_and(|max| printed >= max) {
            break Ok(());
        }
        let wait = match idle_limit {
            Some(limit) => {
                let left = limit.saturating_sub(last_record.elapsed());
                if left.is_zero() {
                    break Ok(());
                }
                left.min(Duration::from_secs(1))
            }
            None => Duration::from_secs(1),
        };
        let records = tokio::select! {
            records = consumer.poll(wait) => records,
            () = &mut stop => break Ok(()),
        };
        let records = match records {
            Ok(records) => records,
            Err(error) => break Err(error).context("poll"),
        };
        let owned = consumer.assignment();
        to_commit.retain(|tp, _| owned.contains(tp));
        if !records.is_empty() {
            last_record = Instant::now();
        }
        let mut out = std::io::stdout().lock();
        let mut broken_pipe = false;
        for record in records {
            if args.max_messages.is_some_and(|max| printed >= max) {
                break;
            }
            if let Err(error) = writeln!(out, "{}", format.render(&record)) {
                if error.kind() == std::io::ErrorKind::BrokenPipe {
                    broken_pipe = true;
                    break;
                }
                return Err(error).context("write standard output");
            }
            printed += 1;
            to_commit.insert(
                TopicPartition {
                    topic: record.topic.to_string(),
                    partition: record.partition,
                },
                record.offset + 1,
            );
        }
        out.flush().ok();
        drop(out);
        if broken_pipe {
            break Ok(());
        }
        if last_commit.elapsed() >= GROUP_COMMIT_INTERVAL && !to_commit.is_empty() {
            last_commit = Instant::now();
            let offsets: Vec<(TopicPartition, i64)> =
                std::mem::take(&mut to_commit).into_iter().collect();
            if let Err(error) = consumer.commit_offsets(&offsets).await {
                eprintln!("commit failed (retried in 5 s): {error}");
                to_commit.extend(offsets);
            }
        }
    };
    let offsets: Vec<(TopicPartition, i64)> = to_commit.into_iter().collect();
    let committed = consumer.commit_offsets(&offsets).await;
    consumer.close().await.context("leave the group")?;
    committed.with_context(|| format!("commit the printed records' offsets to group '{group}'"))?;
    outcome
}

/// Resolves on Ctrl-C or SIGTERM, so a stopped `consume --group` still commits.
async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_timestamp_takes_epoch_ms_and_iso_8601_in_any_zone() {
        let utc = 1_796_378_400_000; // 2026-12-04T10:00:00Z
        for value in [
            "1796378400000",
            "2026-12-04T10:00:00Z",
            "2026-12-04T11:00:00+01:00",
            "2026-12-04T10:00:00.000Z",
            "2026-12-04T10:00:00",
            "2026-12-04 10:00:00",
        ] {
            assert_eq!(parse_timestamp(value), Ok(utc), "{value}");
        }
        assert_eq!(parse_timestamp("2026-12-04"), Ok(utc - 10 * 3_600_000));
        assert!(parse_timestamp("yesterday").is_err());
        assert!(parse_timestamp("2026-13-01").is_err());
    }
}
