//! `ferrolog group list|describe|reset-offsets|delete`: consumer groups as an operator sees
//! them.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use ferrolog_client::{Admin, CommittedOffset, OffsetQuery};
use serde_json::json;

use super::ClientArgs;

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List the cluster's consumer groups
    List(ListArgs),
    /// Show a group's members and, per partition, committed offset, log end and lag
    Describe(DescribeArgs),
    /// Move a group's committed offsets (only while the group has no members)
    ResetOffsets(ResetArgs),
    /// Delete a group and its committed offsets (only while it has no members)
    Delete(DeleteArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    group: String,
    /// Print JSON instead of tables
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true)
    .args(["to_earliest", "to_latest", "to_offset", "to_datetime"])))]
pub struct ResetArgs {
    group: String,
    /// The topic whose partitions move (all of them)
    #[arg(long)]
    topic: String,
    /// To the first retained record
    #[arg(long)]
    to_earliest: bool,
    /// To the end: only records produced from now on are read
    #[arg(long)]
    to_latest: bool,
    /// To this offset in every partition (clamped to what the partition holds)
    #[arg(long, value_name = "N")]
    to_offset: Option<i64>,
    /// To the first record at or after this time, e.g. 2026-11-22T18:00:00Z or
    /// 2026-11-22T19:00:00+01:00
    #[arg(long, value_name = "ISO8601")]
    to_datetime: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    group: String,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn run(command: GroupCommand) -> anyhow::Result<()> {
    match command {
        GroupCommand::List(args) => list(args).await,
        GroupCommand::Describe(args) => describe(args).await,
        GroupCommand::ResetOffsets(args) => reset(args).await,
        GroupCommand::Delete(args) => {
            let admin = Admin::connect(args.client.config()).await?;
            admin
                .delete_group(&args.group)
                .await
                .with_context(|| format!("delete group '{}'", args.group))?;
            println!("deleted group {}", args.group);
            Ok(())
        }
    }
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let admin = Admin::connect(args.client.config()).await?;
    let groups = admin.list_groups().await.context("list groups")?;
    println!(
        "{:<32} {:<12} {:>7} {:>11}",
        "GROUP", "STATE", "MEMBERS", "COORDINATOR"
    );
    for g in groups {
        println!(
            "{:<32} {:<12} {:>7} {:>11}",
            g.group_id, g.state, g.members, g.coordinator_id
        );
    }
    Ok(())
}

async fn describe(args: DescribeArgs) -> anyhow::Result<()> {
    let admin = Admin::connect(args.client.config()).await?;
    let group = admin
        .describe_group(&args.group)
        .await
        .with_context(|| format!("describe group '{}'", args.group))?;
    let committed: BTreeMap<(String, i32), i64> = group
        .offsets
        .iter()
        .map(|o| ((o.topic.clone(), o.partition), o.offset))
        .collect();
    let mut owner: BTreeMap<(String, i32), String> = BTreeMap::new();
    for m in &group.members {
        for t in &m.assignment {
            for p in &t.partitions {
                owner.insert((t.topic.clone(), *p), m.member_id.clone());
            }
        }
    }
    let partitions: BTreeSet<(String, i32)> =
        committed.keys().chain(owner.keys()).cloned().collect();
    let mut rows = Vec::new();
    for (topic, partition) in partitions {
        let log_end = match u32::try_from(partition) {
            Ok(p) => admin
                .list_offsets(&topic, p, OffsetQuery::Latest)
                .await
                .map(|o| o.offset)
                .ok(),
            Err(_) => None,
        };
        let committed = committed.get(&(topic.clone(), partition)).copied();
        let lag = log_end.map(|end| (end - committed.unwrap_or(0)).max(0));
        let member = owner.get(&(topic.clone(), partition)).cloned();
        rows.push((topic, partition, committed, log_end, lag, member));
    }
    if args.json {
        let out = json!({
            "group": group.group_id,
            "state": group.state,
            "group_epoch": group.group_epoch,
            "assignor": group.assignor,
            "coordinator": group.coordinator_id,
            "members": group.members.iter().map(|m| json!({
                "member_id": m.member_id,
                "member_epoch": m.member_epoch,
                "client_id": m.client_id,
                "subscribed_topics": m.subscribed_topics,
                "assignment": m.assignment.iter().map(|t| json!({"topic": t.topic, "partitions": t.partitions})).collect::<Vec<_>>(),
                "target_assignment": m.target_assignment.iter().map(|t| json!({"topic": t.topic, "partitions": t.partitions})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "partitions": rows.iter().map(|(topic, partition, committed, log_end, lag, member)| json!({
                "topic": topic,
                "partition": partition,
                "committed": committed,
                "log_end": log_end,
                "lag": lag,
                "member": member,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "Group: {}\tState: {}\tEpoch: {}\tAssignor: {}\tCoordinator: {}",
        group.group_id, group.state, group.group_epoch, group.assignor, group.coordinator_id
    );
    println!(
        "{:<20} {:>6} {:<16} ASSIGNMENT",
        "MEMBER", "EPOCH", "CLIENT"
    );
    for m in &group.members {
        let assignment: Vec<String> = m
            .assignment
            .iter()
            .flat_map(|t| t.partitions.iter().map(move |p| format!("{}-{p}", t.topic)))
            .collect();
        println!(
            "{:<20} {:>6} {:<16} {}",
            m.member_id,
            m.member_epoch,
            m.client_id,
            assignment.join(",")
        );
    }
    println!(
        "{:<24} {:>9} {:>12} {:>12} {:>10}  MEMBER",
        "TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG"
    );
    let show = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    for (topic, partition, committed, log_end, lag, member) in &rows {
        println!(
            "{:<24} {:>9} {:>12} {:>12} {:>10}  {}",
            topic,
            partition,
            show(*committed),
            show(*log_end),
            show(*lag),
            member.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

async fn reset(args: ResetArgs) -> anyhow::Result<()> {
    let admin = Admin::connect(args.client.config()).await?;
    let partitions = super::partition_count(&admin, &args.topic).await?;
    let timestamp = args
        .to_datetime
        .as_deref()
        .map(parse_datetime_ms)
        .transpose()?;
    let mut offsets = Vec::new();
    for partition in 0..partitions {
        let earliest = admin
            .list_offsets(&args.topic, partition, OffsetQuery::Earliest)
            .await?
            .offset;
        let latest = admin
            .list_offsets(&args.topic, partition, OffsetQuery::Latest)
            .await?
            .offset;
        let offset = if args.to_earliest {
            earliest
        } else if args.to_latest {
            latest
        } else if let Some(n) = args.to_offset {
            n.clamp(earliest, latest)
        } else if let Some(ts) = timestamp {
            let found = admin
                .list_offsets(&args.topic, partition, OffsetQuery::Timestamp(ts))
                .await?
                .offset;
            // No record at or after the time: the end.
            if found < 0 { latest } else { found }
        } else {
            bail!("one of --to-earliest, --to-latest, --to-offset, --to-datetime is needed");
        };
        offsets.push(CommittedOffset {
            topic: args.topic.clone(),
            partition: partition as i32,
            offset,
            ..CommittedOffset::default()
        });
    }
    admin
        .set_group_offsets(&args.group, offsets.clone())
        .await
        .with_context(|| format!("reset offsets of group '{}'", args.group))?;
    for o in offsets {
        println!("{}-{} -> {}", o.topic, o.partition, o.offset);
    }
    Ok(())
}

/// Parses an ISO 8601 / RFC 3339 date-time (`2026-11-22T18:00:00Z`, with optional
/// fraction and a `Z` or `±HH:MM` offset; no offset means UTC) into Unix milliseconds.
pub fn parse_datetime_ms(text: &str) -> anyhow::Result<i64> {
    let bad = || {
        anyhow::anyhow!(
            "invalid date-time '{text}': expected e.g. 2026-11-22T18:00:00Z or 2026-11-22T18:00:00.000+01:00"
        )
    };
    let (date, rest) = text.split_once(['T', ' ']).ok_or_else(bad)?;
    let mut ymd = date.splitn(3, '-').map(str::parse::<i64>);
    let (Some(Ok(year)), Some(Ok(month)), Some(Ok(day))) = (ymd.next(), ymd.next(), ymd.next())
    else {
        return Err(bad());
    };
    let (time, offset_minutes) = if let Some(time) = rest.strip_suffix(['Z', 'z']) {
        (time, 0)
    } else if let Some(at) = rest.rfind(['+', '-']) {
        let (time, offset) = rest.split_at(at);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let (h, m) = offset[1..].split_once(':').ok_or_else(bad)?;
        let (h, m): (i64, i64) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        (time, sign * (h * 60 + m))
    } else {
        (rest, 0)
    };
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut parts = hms.splitn(3, ':').map(str::parse::<i64>);
    let (Some(Ok(hour)), Some(Ok(minute))) = (parts.next(), parts.next()) else {
        return Err(bad());
    };
    let second = match parts.next() {
        Some(Ok(s)) => s,
        Some(Err(_)) => return Err(bad()),
        None => 0,
    };
    let millis = if fraction.is_empty() {
        0
    } else {
        let digits: String = fraction.chars().chain("000".chars()).take(3).collect();
        digits.parse::<i64>().map_err(|_| bad())?
    };
    let valid = (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && (0..24).contains(&hour)
        && (0..60).contains(&minute)
        && (0..61).contains(&second);
    if !valid {
        return Err(bad());
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Ok(seconds * 1000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_parse_to_unix_milliseconds() {
        assert_eq!(parse_datetime_ms("1970-01-01T00:00:00Z").ok(), Some(0));
        assert_eq!(
            parse_datetime_ms("2026-11-22T18:00:00Z").ok(),
            Some(1_795_370_400_000)
        );
        assert_eq!(
            parse_datetime_ms("2026-11-22T19:00:00.250+01:00").ok(),
            Some(1_795_370_400_250)
        );
        assert_eq!(
            parse_datetime_ms("2000-02-29T12:30:00-02:30").ok(),
            Some(951_836_400_000)
        );
        for bad in [
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-11-22",
            "2026-11-22T25:00Z",
        ] {
            assert!(parse_datetime_ms(bad).is_err(), "{bad}");
        }
    }
}
