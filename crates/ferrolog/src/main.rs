//! `ferrolog`: the server and every command-line tool, in one binary.

mod cli;
mod logging;
mod server;

use clap::{Parser, Subcommand};

/// Every produce, replica fetch and fetch moves megabyte buffers. glibc's malloc hands
/// buffers that size back to the kernel when they are freed (mmap and trim), so the next
/// request faults in and zeroes fresh pages: 15 % of the CPU of a replication benchmark
/// with the data on tmpfs. mimalloc keeps them for reuse.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Ferrolog: a durable, partitioned, replicated event log.
#[derive(Debug, Parser)]
#[command(name = "ferrolog", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node (with no flags: a single-node cluster in ./ferrolog-data).
    // Boxed: the settings (file sections included) are larger than every other command's.
    Server(Box<server::ServerSettings>),
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(cli::topic::TopicCommand),
    /// Produce one record per line of standard input, optionally in transactions.
    Produce(cli::produce::ProduceArgs),
    /// Print records of a topic, one per line (read_uncommitted or read_committed).
    Consume(cli::consume::ConsumeArgs),
    /// Inspect the cluster: controllers, the Raft leader, brokers.
    #[command(subcommand)]
    Cluster(cli::cluster::ClusterCommand),
    /// Operate on one partition
    #[command(subcommand)]
    Partition(cli::partition::PartitionCommand),
    /// List, describe, reset and delete consumer groups.
    #[command(subcommand)]
    Group(cli::group::GroupCommand),
    /// List, describe and abort transactions.
    #[command(subcommand)]
    Transaction(cli::transaction::TransactionCommand),
    /// List the producers a topic's partitions know (idempotent and transactional).
    #[command(subcommand)]
    Producer(cli::producer::ProducerCommand),
    /// Measure produce and consume throughput and latency.
    #[command(subcommand)]
    Bench(cli::bench::BenchCommand),
    /// Exit 0 if the node answers its gRPC health check (for container health checks).
    Health(cli::health::HealthArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        // openraft logs its internal state machine at info (whole-state dumps, every vote
        // step); the quorum logs leader changes itself (`metadata quorum leader`).
        Command::Server(_) => "info,openraft=warn",
        _ => "warn",
    };
    logging::init(default_filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Server(settings) => server::run(*settings).await,
            Command::Topic(cmd) => cli::topic::run(cmd).await,
            Command::Produce(args) => cli::produce::run(args).await,
            Command::Consume(args) => cli::consume::run(args).await,
            Command::Bench(cmd) => cli::bench::run(cmd).await,
            Command::Cluster(cmd) => cli::cluster::run(cmd).await,
            Command::Partition(cmd) => cli::partition::run(cmd).await,
            Command::Group(cmd) => cli::group::run(cmd).await,
            Command::Transaction(cmd) => cli::transaction::run(cmd).await,
            Command::Producer(cmd) => cli::producer::run(cmd).await,
            Command::Health(args) => cli::health::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
