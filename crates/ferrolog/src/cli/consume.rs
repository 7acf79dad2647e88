//! `ferrolog consume`: prints records, one per line.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use ferrolog_client::{Admin, ConsumedRecord, Consumer, ConsumerConfig, StartOffset};

use super::ClientArgs;

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    topic: String,
    /// Start at the earliest offset (default: only new records)
    #[arg(long, conflicts_with = "offset")]
    from_beginning: bool,
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
    #[command(flatten)]
    client: ClientArgs,
}

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
    let config = args.client.config();
    let admin = Admin::connect(config.clone()).await?;
    let metadata = admin
        .metadata(&[args.topic.as_str()])
        .await
        .with_context(|| format!("look up topic '{}'", args.topic))?;
    let topic = metadata
        .topics
        .iter()
        .find(|t| t.name == args.topic)
        .with_context(|| format!("unknown topic '{}'", args.topic))?;
    let count = topic.partitions.len() as u32;
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
    let mut consumer = Consumer::connect(ConsumerConfig::new(config)).await?;
    for partition in partitions {
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
