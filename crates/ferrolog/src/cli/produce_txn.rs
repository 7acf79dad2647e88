//! `ferrolog produce --transactional-id`: the transactional half of `produce`. Records go
//! into transactions of `--transaction-records` records (or one for the whole input), each
//! committed, or aborted with `--abort`. A record that fails makes its transaction abort,
//! and the command stops with the error: what it committed before stays committed.

use anyhow::{Context, bail};
use ferrolog_client::{Producer, ProducerRecord};
use tokio::io::AsyncBufReadExt;

/// The arguments of `produce` the transactional path reads.
pub struct TxnArgs {
    pub topic: String,
    pub transaction_records: Option<u64>,
    pub abort: bool,
}

/// Counts for the summary line.
#[derive(Default)]
struct Tally {
    transactions: u64,
    records: u64,
}

pub async fn run(
    args: TxnArgs,
    producer: Producer,
    mut record_for: impl FnMut(String, u64) -> Result<ProducerRecord, String>,
) -> anyhow::Result<()> {
    producer
        .init_transactions()
        .await
        .context("initialize the transactional producer")?;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut ended = Tally::default();
    let mut in_transaction: Option<u64> = None;
    let mut line_no = 0u64;
    while let Some(line) = lines.next_line().await.context("read standard input")? {
        line_no += 1;
        let record = match record_for(line, line_no) {
            Ok(record) => record,
            Err(error) => {
                if in_transaction.is_some() {
                    producer.abort_transaction().await.ok();
                }
                bail!("{error}; the open transaction was aborted");
            }
        };
        if in_transaction.is_none() {
            producer
                .begin_transaction()
                .context("begin a transaction")?;
        }
        // Outcomes are checked by the commit, which refuses when any record failed.
        drop(producer.send(record).await);
        let records = in_transaction.get_or_insert(0);
        *records += 1;
        if args.transaction_records == Some(*records) {
            end(&producer, args.abort, *records, &mut ended).await?;
            in_transaction = None;
        }
    }
    if let Some(records) = in_transaction {
        end(&producer, args.abort, records, &mut ended).await?;
    }
    tokio::time::timeout(std::time::Duration::from_secs(30), producer.close())
        .await
        .ok();
    eprintln!(
        "{} {} transaction(s) of {} record(s) to {}",
        if args.abort { "aborted" } else { "committed" },
        ended.transactions,
        ended.records,
        args.topic
    );
    Ok(())
}

/// Commits (or aborts) the open transaction of `records` records.
async fn end(
    producer: &Producer,
    abort: bool,
    records: u64,
    ended: &mut Tally,
) -> anyhow::Result<()> {
    let number = ended.transactions + 1;
    if abort {
        // Sent first, so the aborted records are in the log (read_uncommitted consumers see
        // them, read_committed ones never do) rather than dropped before they were sent.
        producer
            .flush()
            .await
            .with_context(|| format!("send transaction {number} before aborting it"))?;
        producer
            .abort_transaction()
            .await
            .with_context(|| format!("abort transaction {number}"))?;
    } else if let Err(error) = producer.commit_transaction().await {
        let aborted = producer.abort_transaction().await;
        let outcome = if aborted.is_ok() {
            "it was aborted"
        } else {
            "aborting it failed too"
        };
        bail!(
            "transaction {number} ({records} record(s)) could not commit, {outcome}; \
             {} transaction(s) committed before it: {error}",
            ended.transactions
        );
    }
    ended.transactions += 1;
    ended.records += records;
    Ok(())
}
