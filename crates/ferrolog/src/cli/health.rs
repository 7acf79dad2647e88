//! `ferrolog health`: a gRPC health check, for container HEALTHCHECKs (no shell needed).

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// gRPC address of the node to check
    #[arg(
        long,
        env = "FERROLOG_HEALTH_ADDRESS",
        default_value = "127.0.0.1:9290"
    )]
    address: String,
    /// Give up after this long
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
}

pub async fn run(args: HealthArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", args.address))
        .with_context(|| format!("invalid address {}", args.address))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("could not reach a Ferrolog server at {}", args.address))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .with_context(|| format!("health check of {} failed", args.address))?
        .into_inner();
    if response.status() != ServingStatus::Serving {
        bail!("{} is {:?}", args.address, response.status());
    }
    println!("{} is serving", args.address);
    Ok(())
}
