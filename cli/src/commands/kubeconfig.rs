//! `wedge kubeconfig`: a kubeconfig for a named user of the embedded API server, as kubeadm's
//! `kubeconfig user` makes one. The user is a client certificate from the API server's CA: its
//! CN is the user name and its O entries the groups, which is how the API server (and RBAC's
//! bindings) know them. Without groups the user may do only what bindings grant them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use wedge_pki::Pki;

/// Options of `wedge kubeconfig`.
#[derive(Args)]
pub struct KubeconfigArgs {
    /// The user name (the certificate's CN).
    #[arg(long)]
    user: String,
    /// A group the user is in (the certificate's O; repeatable).
    #[arg(long = "group")]
    groups: Vec<String>,
    /// Where to write it (default: standard output).
    #[arg(long, short)]
    output: Option<PathBuf>,
}

/// Issues the certificate and writes the kubeconfig.
pub fn run(root: &Path, args: &KubeconfigArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(!args.user.trim().is_empty(), "--user must name a user");
    let data = root.join("apiserver");
    let admin = data.join("admin.kubeconfig");
    // Never make a CA here: a missing one means no embedded API server under this root.
    anyhow::ensure!(
        data.join("pki/ca.key").exists() && admin.exists(),
        "no embedded API server under {} (run `wedge up` or `cloudcore` first, or pass --root)",
        root.display()
    );
    let server = kube::config::Kubeconfig::read_from(&admin)
        .with_context(|| format!("reading {}", admin.display()))?
        .clusters
        .into_iter()
        .find_map(|c| c.cluster.and_then(|c| c.server))
        .with_context(|| format!("{} names no server", admin.display()))?;
    let pki = Pki::load_or_create(&data, &[]).context("loading the API server's CA")?;
    let groups: Vec<&str> = args.groups.iter().map(String::as_str).collect();
    let client = pki
        .issue_client(&args.user, &groups)
        .context("issuing the user's certificate")?;
    match &args.output {
        Some(path) => {
            wedge_apiserver::kubeconfig::write_for(
                path,
                &args.user,
                &server,
                &pki.ca.cert_pem,
                &client,
            )
            .with_context(|| format!("writing {}", path.display()))?;
        }
        None => print!(
            "{}",
            wedge_apiserver::kubeconfig::render_for(&args.user, &server, &pki.ca.cert_pem, &client)
        ),
    }
    Ok(ExitCode::SUCCESS)
}
