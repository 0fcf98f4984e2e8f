//! What cloudcore's CustomResourceDefinitions share: the schema vocabulary they are written in,
//! and [`install`], which puts them on the API server before any watch on them starts.
//!
//! cloudcore serves KubeEdge's resources (Device and DeviceModel, Rule and RuleEndpoint) against
//! the embedded API server and against real clusters that have never heard of KubeEdge, so it
//! brings their definitions itself, applied server-side and forced: cloudcore owns them.
//!
//! The schemas are written out (in this vocabulary), not derived with kube's `CustomResource`
//! and `schemars`: they must be what KubeEdge users apply, and the Rust types are not that.
//! Those types (`wedge_core::device`, `wedge_core::rule`) live in `wedge-core`, which the edge
//! shares and which has no kube dependency, and hold only what Wedge reads (a Device's
//! `methods` is in the schema, not in `DeviceSpec`); KubeEdge's open maps need
//! `x-kubernetes-preserve-unknown-fields`, and its optional fields are plain types where
//! schemars writes `nullable` for an `Option`. A derive would need an override per field, and
//! the printer columns and status subresource would still be written here.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::time::Instant;

/// The field manager of the CRDs' server-side apply.
pub const FIELD_MANAGER: &str = "wedge-cloudcore-crds";

/// How long [`install`] waits for the API server to serve the new resources.
pub const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a CustomResourceDefinition could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    /// The API server refused the CRD (no permission to write CRDs, say).
    #[error("cannot apply the CustomResourceDefinition {crd}: {source}")]
    Apply {
        /// The CRD's name.
        crd: &'static str,
        /// Why.
        source: kube::Error,
    },
    /// The CRD was applied but its resource was not served in time.
    #[error("the CustomResourceDefinition {crd} was not established within {timeout:?}: {last}")]
    NotEstablished {
        /// The CRD's name.
        crd: &'static str,
        /// How long we waited.
        timeout: Duration,
        /// What the last look showed.
        last: String,
    },
}

/// A definition to install: its name, the CRD, and the resource it serves.
pub type Wanted = (&'static str, Value, ApiResource);

/// Applies the CRDs (server-side, forced) and waits until every resource can be listed.
pub async fn install(client: &Client, wanted: &[Wanted]) -> Result<(), CrdError> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for (name, crd, _) in wanted {
        crds.patch(name, &params, &Patch::Apply(crd))
            .await
            .map_err(|source| CrdError::Apply { crd: name, source })?;
    }
    let deadline = Instant::now() + ESTABLISH_TIMEOUT;
    for (name, _, resource) in wanted {
        wait_established(client, &crds, name, resource, deadline).await?;
        tracing::info!(crd = name, "CustomResourceDefinition installed");
    }
    Ok(())
}

/// Waits for `name`'s Established condition with kube's own wait
/// ([`await_condition`] with [`conditions::is_crd_established`]), then until the resource can
/// be listed. The second wait is ours because kube has no condition for it: Established says
/// the definition was accepted, not that every API server (or discovery) serves the resource
/// yet, and the watches started next must not fail on a 404.
async fn wait_established(
    client: &Client,
    crds: &Api<CustomResourceDefinition>,
    name: &'static str,
    resource: &ApiResource,
    deadline: Instant,
) -> Result<(), CrdError> {
    let not_established = |last: String| CrdError::NotEstablished {
        crd: name,
        timeout: ESTABLISH_TIMEOUT,
        last,
    };
    let established = await_condition(crds.clone(), name, conditions::is_crd_established());
    match tokio::time::timeout_at(deadline, established).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(not_established(e.to_string())),
        Err(_) => return Err(not_established("not Established yet".to_owned())),
    }
    let objects: Api<DynamicObject> = Api::all_with(client.clone(), resource);
    loop {
        let last = match objects.list_metadata(&ListParams::default().limit(1)).await {
            Ok(_) => return Ok(()),
            Err(e) => format!("established, but listing fails: {e}"),
        };
        if Instant::now() >= deadline {
            return Err(not_established(last));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A string.
pub fn string() -> Value {
    json!({"type": "string"})
}

/// A 64-bit integer.
pub fn int64() -> Value {
    json!({"type": "integer", "format": "int64"})
}

/// An object whose fields are whatever the user wrote (KubeEdge's open maps).
pub fn open() -> Value {
    json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

/// A map of strings to strings.
pub fn string_map() -> Value {
    json!({"type": "object", "additionalProperties": {"type": "string"}})
}

/// An object with these properties.
pub fn object(properties: Value) -> Value {
    json!({"type": "object", "properties": properties})
}

/// A list of these items.
pub fn array(items: Value) -> Value {
    json!({"type": "array", "items": items})
}

/// A printer column (`priority` > 0: shown with `-o wide` only).
pub fn column(name: &str, kind: &str, path: &str, priority: i32) -> Value {
    let mut c = json!({"name": name, "type": kind, "jsonPath": path});
    if priority > 0 {
        c["priority"] = json!(priority);
    }
    c
}

/// The AGE column every kind shows last.
pub fn age() -> Value {
    column("AGE", "date", ".metadata.creationTimestamp", 0)
}

/// What a namespaced kind is called.
pub struct Names<'a> {
    /// Its API group.
    pub group: &'a str,
    /// Its version.
    pub version: &'a str,
    /// Its plural (the resource).
    pub plural: &'a str,
    /// Its kind.
    pub kind: &'a str,
    /// `kubectl get` abbreviations.
    pub short_names: &'a [&'a str],
}

/// A CRD for one namespaced kind with one version, and a status subresource if `status`.
pub fn crd(names: &Names<'_>, schema: Value, columns: Vec<Value>, status: bool) -> Value {
    let mut version = json!({
        "name": names.version,
        "served": true,
        "storage": true,
        "schema": {"openAPIV3Schema": schema},
        "additionalPrinterColumns": columns,
    });
    if status {
        version["subresources"] = json!({"status": {}});
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{}.{}", names.plural, names.group)},
        "spec": {
            "group": names.group,
            "scope": "Namespaced",
            "names": {
                "plural": names.plural,
                "singular": names.kind.to_ascii_lowercase(),
                "kind": names.kind,
                "listKind": format!("{}List", names.kind),
                "shortNames": names.short_names,
            },
            "versions": [version],
        },
    })
}
