//! `wedge token`: bootstrap tokens for edges to join with.
//!
//! `create` stores a kubeadm-style bootstrap token Secret through the API and prints
//! `<ca-hash>.<id>.<secret>`: the hash pins cloudcore's hub CA, so the edge checks it talks to
//! this cloud before it sends the secret. `--node` binds a token to one node name (which it
//! may then take over from the edge holding it: re-provisioning a machine), `--replace` lets
//! it take over any name, `--single-use` makes it good for one join.

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
    /// Join only this node name. If an edge holds the name now, the join takes it over: that
    /// edge is cut off and its certificates are revoked.
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// Let the token take over whatever node name it joins, even one in use (without it, a join
    /// as a node that is connected, Ready, or holds a valid certificate is refused).
    #[arg(long)]
    replace: bool,
    /// Good for one join only.
    #[arg(long)]
    single_use: bool,
}

/// The hub CA, where `cloudcore` and `wedge up` keep it under the root.
fn default_ca(root: &std::path::Path) -> PathBuf {
    root.join("cloudcore/hub/pki/ca.crt")
}

/// A client of the API server `args` names.
pub async fn client(root: &std::path::Path, args: &ClientArgs) -> anyhow::Result<kube::Client> {
    let path = args
        .kubeconfig
        .clone()
        .unwrap_or_else(|| root.join("apiserver/admin.kubeconfig"));
    wedge_cli::kube_client(&path).await
}

fn describe(binding: &tokens::Binding) -> String {
    let mut parts = Vec::new();
    match (&binding.node, binding.replace) {
        (Some(node), _) => parts.push(format!("joins only node {node}, even if it is in use")),
        (None, true) => parts.push("may take over any node name".to_owned()),
        (None, false) => parts.push("joins node names not in use".to_owned()),
    }
    if binding.single_use {
        parts.push("good for one join".to_owned());
    }
    format!(" ({})", parts.join(", "))
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
            let binding = tokens::Binding {
                node: args.node.clone(),
                replace: args.replace,
                single_use: args.single_use,
            };
            let token = tokens::create(&client, ttl, &args.description, &binding).await?;
            let hash = wedge_core::join_token::ca_hash(&der);
            let text = format!("{hash}.{}.{}", token.id, token.secret);
            println!("{text}");
            eprintln!(
                "expires {}{}; join an edge with:",
                token.expires,
                describe(&binding)
            );
            eprintln!(
                "  edgecore --cloud {} --node {} --token {text}",
                args.cloud,
                args.node.as_deref().unwrap_or("<name>")
            );
            if args.replace {
                eprintln!(
                    "warning: this token may take over any node name, cutting off the edge that has it"
                );
            }
        }
        TokenCommand::List(args) => {
            let client = client(root, &args).await?;
            println!("{:<8} {:<28} {:<32} DESCRIPTION", "ID", "EXPIRES", "JOINS");
            for token in tokens::list(&client).await? {
                let joins = match (&token.used_by, &token.binding) {
                    (Some(by), _) => format!("used: {by}"),
                    (None, b) => {
                        let mut joins = match (&b.node, b.replace) {
                            (Some(node), _) => format!("{node} (may replace)"),
                            (None, true) => "any (may replace)".to_owned(),
                            (None, false) => "any new node".to_owned(),
                        };
                        if b.single_use {
                            joins.push_str(", once");
                        }
                        joins
                    }
                };
                println!(
                    "{:<8} {:<28} {:<32} {}",
                    token.id,
                    token.expires.as_deref().unwrap_or("never"),
                    joins,
                    token.description
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
