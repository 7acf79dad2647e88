//! `ferrolog topic delete-records`: Kafka's DeleteRecords, moving a partition's log start.

use anyhow::Context;
use clap::Args;
use ferrolog_client::Admin;

use super::ClientArgs;

#[derive(Debug, Args)]
pub struct DeleteRecordsArgs {
    topic: String,
    /// The partition whose records are deleted
    #[arg(long)]
    partition: u32,
    /// Delete every record below this offset; `hw` (or -1) deletes everything committed.
    /// Offsets past the high watermark are refused.
    #[arg(long, value_parser = parse_before_offset, allow_negative_numbers = true)]
    before_offset: i64,
    #[command(flatten)]
    client: ClientArgs,
}

fn parse_before_offset(value: &str) -> Result<i64, String> {
    match value {
        "hw" | "-1" => Ok(-1),
        other => other
            .parse::<i64>()
            .ok()
            .filter(|offset| *offset >= 0)
            .ok_or_else(|| format!("'{other}' is not an offset >= 0, or hw")),
    }
}

pub async fn run(args: DeleteRecordsArgs) -> anyhow::Result<()> {
    let admin = Admin::connect(args.client.config()).await?;
    let before = (args.before_offset >= 0).then_some(args.before_offset);
    let answer = admin
        .delete_records(&args.topic, args.partition, before)
        .await
        .with_context(|| {
            format!(
                "delete records of {}-{} before offset {}",
                args.topic, args.partition, args.before_offset
            )
        })?;
    println!(
        "{}-{}: log start offset is now {} (high watermark {})",
        args.topic, args.partition, answer.log_start_offset, answer.high_watermark
    );
    Ok(())
}
