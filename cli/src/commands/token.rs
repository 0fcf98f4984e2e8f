//! `wedge token`: bootstrap tokens for edges to join with.
//!
//! `create` stores a kubeadm-style bootstrap token Secret through the API and prints
//! `<ca-hash>.<id>.<secret>`: the hash pins cloudcore's hub CA, so the edge checks it talks to
//! this cloud before it sends the secret.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use wedge_cloudcore::join::tokens;

/// `wedge token ...`
#[derive(Subcommand)]
pub enum TokenCommand {
    /// Creates a token and prints it with the edgecore command that uses it.
    Create(CreateArgs),
    /// Lists tokens (ids, expiry, description; never secrets).
    List(ClientArgs),
}

/// Where the API is.
#[derive(Args)]
pub struct ClientArgs {
    /// The kubeconfig (default: the embedded API server's admin kubeconfig under --root).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

/// Options of `wedge token create`.
#[derive(Args)]
pub struct CreateArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// How long the token is valid, e.g. 24h, 30m, 7d.
    #[arg(long, default_value = "24h", value_parser = wedge_cli::parse_duration)]
    ttl: Duration,
    /// What the token is for.
    #[arg(long, default_value = "an edge joining")]
    description: String,
    /// cloudcore's hub CA (default: under --root, as `cloudcore` and `wedge up` keep it).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// The address edges dial cloudcore at, for the printed command.
    #[arg(long, default_value = "<cloud-address>:10000")]
    cloud: String,
}

/// The hub CA, where `cloudcore` and `wedge up` keep it under the root.
fn default_ca(root: &std::path::Path) -> PathBuf {
    root.join("cloudcore/hub/pki/ca.crt")
}

async fn client(root: &std::path::Path, args: &ClientArgs) -> anyhow::Result<kube::Client> {
    let path = args
        .kubeconfig
        .clone()
        .unwrap_or_else(|| root.join("apiserver/admin.kubeconfig"));
    wedge_cli::kube_client(&path).await
}

/// Runs a token command.
pub async fn run(root: &std::path::Path, command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Create(args) => {
            let ttl = args.ttl;
            let ca_path = args.ca.clone().unwrap_or_else(|| default_ca(root));
            let pem = std::fs::read(&ca_path).with_context(|| {
                format!("reading cloudcore's CA {} (pass --ca)", ca_path.display())
            })?;
            let der = CertificateDer::from_pem_slice(&pem)
                .with_context(|| format!("{} is not a PEM certificate", ca_path.display()))?;
            let client = client(root, &args.client).await?;
            let token = tokens::create(&client, ttl, &args.description).await?;
            let hash = wedge_core::join_token::ca_hash(&der);
            let text = format!("{hash}.{}.{}", token.id, token.secret);
            println!("{text}");
            eprintln!("expires {}; join an edge with:", token.expires);
            eprintln!(
                "  edgecore --cloud {} --node <name> --token {text}",
                args.cloud
            );
        }
        TokenCommand::List(args) => {
            let client = client(root, &args).await?;
            println!("{:<8} {:<28} DESCRIPTION", "ID", "EXPIRES");
            for token in tokens::list(&client).await? {
                println!(
                    "{:<8} {:<28} {}",
                    token.id,
                    token.expires.as_deref().unwrap_or("never"),
                    token.description
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
