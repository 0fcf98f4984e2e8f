//! `wedge node`: what the cloud knows of an edge node's identity.
//!
//! `revoke` revokes every certificate issued to a node (its live session is closed at once,
//! with `CertificateRevoked`, and renewals with them are refused); `certificates` lists them.
//! Both read and write the node's record in `kube-system` (`edge-certificates.<node>`), which
//! cloudcore watches, so they work against the embedded API server and a real cluster alike.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use wedge_cloudcore::join::certificates;

use super::token::{ClientArgs, client};

/// `wedge node ...`
#[derive(Subcommand)]
pub enum NodeCommand {
    /// Revokes every certificate issued to the node and drops its edge's session; the edge
    /// can come back only by joining again with a new token.
    Revoke(RevokeArgs),
    /// Lists the certificates issued to the node that have not expired.
    Certificates(ShowArgs),
}

/// Options of `wedge node revoke`.
#[derive(Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The node.
    name: String,
    /// Why, as the edge and `wedge node certificates` will say.
    #[arg(long, default_value = "revoked by an operator (wedge node revoke)")]
    reason: String,
}

/// Options of `wedge node certificates`.
#[derive(Args)]
pub struct ShowArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The node.
    name: String,
}

/// Runs a node command.
pub async fn run(root: &std::path::Path, command: NodeCommand) -> anyhow::Result<ExitCode> {
    match command {
        NodeCommand::Revoke(args) => {
            let client = client(root, &args.client).await?;
            let revoked = certificates::revoke_node(&client, &args.name, &args.reason).await?;
            println!(
                "revoked the certificates of node {} ({revoked} still valid until now); cloudcore closes its session",
                args.name
            );
        }
        NodeCommand::Certificates(args) => {
            let client = client(root, &args.client).await?;
            let Some(record) = certificates::read(&client, &args.name).await? else {
                println!("no certificates recorded for node {}", args.name);
                return Ok(ExitCode::SUCCESS);
            };
            println!(
                "{:<42} {:<22} {:<28} STATE",
                "SERIAL", "NOT AFTER", "ISSUED BY"
            );
            for cert in &record.certificates {
                let state = cert.revoked.as_ref().map_or_else(
                    || "valid".to_owned(),
                    |r| format!("revoked at {}: {}", r.at, r.reason),
                );
                println!(
                    "{:<42} {:<22} {:<28} {state}",
                    cert.serial,
                    cert.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    cert.by
                );
            }
            if let Some(r) = &record.revoked_before {
                println!(
                    "every certificate issued before {} is revoked: {}",
                    r.at, r.reason
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
