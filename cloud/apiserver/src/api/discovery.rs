//! Discovery: `/version`, `/api`, `/apis`, `/apis/<group>`, the resource lists of each group
//! version, aggregated discovery (`apidiscovery.k8s.io/v2`, one request for everything, when a
//! client asks for it in Accept), and the OpenAPI v3 documents.

use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

use super::error::ApiError;
use super::request::Target;
use super::{Api, Body, Call, openapi, value_response};
use crate::registry::ResourceInfo;

/// The Kubernetes version this server answers as (the API it implements).
pub const KUBERNETES_VERSION: &str = "v1.33.0";

/// `/version`.
pub fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": format!("{KUBERNETES_VERSION}+wedge-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "n/a (Rust)",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
        "emulationMajor": "1",
        "emulationMinor": "33",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "32",
    })
}

const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether the client asked for aggregated discovery.
fn wants_aggregated(call: &Call<'_>) -> bool {
    call.accept().split(',').any(|part| {
        let p = part.replace(' ', "");
        p.contains("as=APIGroupDiscoveryList")
            && p.contains("g=apidiscovery.k8s.io")
            && p.contains("v=v2")
            && !p.contains("v=v2beta1")
    })
}

/// Answers a non-resource path.
pub(crate) fn serve(
    api: &Api,
    call: &Call<'_>,
    target: Target,
) -> Result<Response<Body>, ApiError> {
    if call.method != http::Method::GET {
        return Err(ApiError::MethodNotAllowed);
    }
    let body = match target {
        Target::Version => api.version.clone(),
        Target::CoreVersions if wants_aggregated(call) => return Ok(aggregated(api, true)),
        Target::Groups if wants_aggregated(call) => return Ok(aggregated(api, false)),
        Target::CoreVersions => json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
        }),
        Target::Groups => json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": api.registry.groups().iter().filter(|(g, _)| !g.is_empty()).map(|(g, v)| group(g, v)).collect::<Vec<_>>(),
        }),
        Target::Group(name) => {
            let groups = api.registry.groups();
            let (g, v) = groups
                .iter()
                .find(|(g, _)| *g == name)
                .ok_or(ApiError::NoSuchPath)?;
            let mut body = group(g, v);
            body["apiVersion"] = json!("v1");
            body
        }
        Target::GroupVersion { group, version } => {
            if !api.registry.serves(&group, &version) {
                return Err(ApiError::NoSuchPath);
            }
            resource_list(api, &group, &version)
        }
        Target::OpenApiV3Index => openapi::index(api),
        Target::OpenApiV3 { group, version } => {
            if !api.registry.serves(&group, &version) {
                return Err(ApiError::NoSuchPath);
            }
            openapi::document(api, &group, &version)
        }
        Target::OpenApiV2 | Target::Health | Target::Resource(_) => {
            return Err(ApiError::NoSuchPath);
        }
    };
    Ok(value_response(StatusCode::OK, &body))
}

fn group(name: &str, versions: &[String]) -> Value {
    let gv = |v: &String| json!({"groupVersion": format!("{name}/{v}"), "version": v});
    json!({
        "kind": "APIGroup",
        "name": name,
        "versions": versions.iter().map(gv).collect::<Vec<_>>(),
        "preferredVersion": versions.first().map(gv),
    })
}

fn resource_list(api: &Api, group: &str, version: &str) -> Value {
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    let mut resources = Vec::new();
    for r in api
        .registry
        .all()
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs(),
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        resources.push(entry);
        for sub in &r.subresources {
            let (kind, verbs, group, version) = subresource_kind(r, sub);
            let mut e = json!({"name": format!("{}/{sub}", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": kind, "verbs": verbs});
            if let Some(g) = group {
                e["group"] = json!(g);
                e["version"] = json!(version);
            }
            resources.push(e);
        }
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

/// The kind and verbs of a subresource (and its group/version when it differs).
fn subresource_kind(
    r: &ResourceInfo,
    sub: &str,
) -> (
    String,
    Vec<&'static str>,
    Option<&'static str>,
    &'static str,
) {
    match sub {
        "status" => (r.kind.clone(), vec!["get", "patch", "update"], None, ""),
        "scale" => (
            "Scale".into(),
            vec!["get", "patch", "update"],
            Some("autoscaling"),
            "v1",
        ),
        "binding" => ("Binding".into(), vec!["create"], None, ""),
        "log" => ("Pod".into(), vec!["get"], None, ""),
        "exec" => ("PodExecOptions".into(), vec!["create", "get"], None, ""),
        "attach" => ("PodAttachOptions".into(), vec!["create", "get"], None, ""),
        "portforward" => (
            "PodPortForwardOptions".into(),
            vec!["create", "get"],
            None,
            "",
        ),
        "finalize" => (r.kind.clone(), vec!["update"], None, ""),
        _ => (r.kind.clone(), vec!["get"], None, ""),
    }
}

/// `apidiscovery.k8s.io/v2` `APIGroupDiscoveryList` for `/api` (core) or `/apis` (the rest).
fn aggregated(api: &Api, core: bool) -> Response<Body> {
    let all = api.registry.all();
    let mut items = Vec::new();
    for (group, versions) in api.registry.groups() {
        if group.is_empty() != core {
            continue;
        }
        let versions: Vec<Value> = versions
            .iter()
            .map(|version| {
                let resources: Vec<Value> = all
                    .iter()
                    .filter(|r| r.group == group && r.version == *version)
                    .map(|r| {
                        let mut e = json!({
                            "resource": r.plural,
                            "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                            "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                            "singularResource": r.singular,
                            "verbs": r.verbs(),
                        });
                        if !r.short_names.is_empty() {
                            e["shortNames"] = json!(r.short_names);
                        }
                        if !r.categories.is_empty() {
                            e["categories"] = json!(r.categories);
                        }
                        if !r.subresources.is_empty() {
                            e["subresources"] = r
                                .subresources
                                .iter()
                                .map(|sub| {
                                    let (kind, verbs, g, v) = subresource_kind(r, sub);
                                    json!({
                                        "subresource": sub,
                                        "responseKind": {"group": g.unwrap_or(&r.group), "version": if g.is_some() { v } else { &r.version }, "kind": kind},
                                        "verbs": verbs,
                                    })
                                })
                                .collect();
                        }
                        e
                    })
                    .collect();
                json!({"version": version, "resources": resources, "freshness": "Current"})
            })
            .collect();
        items.push(json!({"metadata": {"name": group}, "versions": versions}));
    }
    let body = json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items});
    let mut r = value_response(StatusCode::OK, &body);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(AGGREGATED));
    r.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    r
}
