//! `wedge rbac`: prints what an operator applies to a real cluster before running `cloudcore
//! --kubeconfig` there: the ClusterRole `cloudcore` (KubeEdge's, trimmed to what Wedge's
//! cloudcore calls), KubeEdge's ServiceAccount `kubeedge/cloudcore`, and the binding between
//! them. `deploy/cloudcore-rbac.yaml` is the same text. The embedded API server makes the same
//! role itself at start.

use std::process::ExitCode;

/// Prints the manifest.
pub fn run() -> anyhow::Result<ExitCode> {
    print!(
        "{}",
        wedge_apiserver::authz::components::cloudcore_manifest()
    );
    Ok(ExitCode::SUCCESS)
}
