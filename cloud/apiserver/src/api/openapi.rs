//! OpenAPI v3 documents, one per group version, as kube-apiserver serves them under
//! `/openapi/v3`: the schemas of the kinds served (Kubernetes' own definitions for built-ins,
//! the CRD's `openAPIV3Schema` for custom resources) and the paths with their operations.
//!
//! Two clients read them closely: `kubectl explain` (the schemas, found by their
//! `x-kubernetes-group-version-kind`) and `kubectl apply`/`create` with validation on, which
//! looks for the `fieldValidation` parameter on each kind's PATCH operation to know that the
//! server validates fields itself.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};

use serde_json::{Map, Value, json};

use super::Api;
use super::discovery::KUBERNETES_VERSION;
use crate::registry::ResourceInfo;
use crate::schema::DEFINITIONS;

/// `/openapi/v3`: each group version's document and the hash that versions it.
pub fn index(api: &Api) -> Value {
    let mut paths = Map::new();
    for (group, versions) in api.registry.groups() {
        for version in versions {
            let key = if group.is_empty() {
                format!("api/{version}")
            } else {
                format!("apis/{group}/{version}")
            };
            let doc = document(api, &group, &version);
            let mut h = std::collections::hash_map::DefaultHasher::new();
            doc.to_string().hash(&mut h);
            paths.insert(
                key.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={:016X}", h.finish())}),
            );
        }
    }
    json!({"paths": paths})
}

/// The schema name a custom resource's schema gets (`com.example.v1.Widget`).
fn custom_schema_name(info: &ResourceInfo) -> String {
    let reversed: Vec<&str> = info.group.split('.').rev().collect();
    format!("{}.{}.{}", reversed.join("."), info.version, info.kind)
}

fn gvk(info: &ResourceInfo) -> Value {
    json!({"group": info.group, "version": info.version, "kind": info.kind})
}

/// The document of one group version.
pub fn document(api: &Api, group: &str, version: &str) -> Value {
    let resources: Vec<_> = api
        .registry
        .all()
        .into_iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    let mut schemas = Map::new();
    let mut wanted: Vec<String> = vec![
        "io.k8s.apimachinery.pkg.apis.meta.v1.Status".into(),
        "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions".into(),
    ];
    let mut paths = Map::new();
    for r in &resources {
        let name = match &r.crd {
            None => match crate::schema::definition_for(&r.group, &r.version, &r.kind) {
                Some(n) => {
                    wanted.push(n.to_owned());
                    if DEFINITIONS.contains_key(&format!("{n}List")) {
                        wanted.push(format!("{n}List"));
                    }
                    n.to_owned()
                }
                None => continue,
            },
            Some(_) => {
                let n = custom_schema_name(r);
                let mut s =
                    super::crd::schema_of(api, r).unwrap_or_else(|| json!({"type": "object"}));
                if let Some(p) = s
                    .as_object_mut()
                    .map(|o| o.entry("properties").or_insert_with(|| json!({})))
                    .and_then(Value::as_object_mut)
                {
                    {
                        p.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
                        p.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
                        p.insert("metadata".into(), json!({"allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}], "description": "Standard object's metadata."}));
                    }
                }
                s["x-kubernetes-group-version-kind"] = json!([gvk(r)]);
                schemas.insert(n.clone(), s);
                wanted.push("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta".into());
                n
            }
        };
        add_paths(&mut paths, r, &name);
    }
    // Every definition the wanted ones refer to.
    let mut seen = BTreeSet::new();
    while let Some(n) = wanted.pop() {
        if !seen.insert(n.clone()) {
            continue;
        }
        if let Some(def) = DEFINITIONS.get(&n) {
            refs(def, &mut wanted);
            schemas.insert(n, def.clone());
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    if let Some(name) = x.as_str().and_then(|r| r.rsplit('/').next()) {
                        out.push(name.to_owned());
                    }
                } else {
                    refs(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

fn query(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn add_paths(paths: &mut Map<String, Value>, r: &ResourceInfo, schema: &str) {
    let prefix = if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    let base = if r.namespaced {
        format!("{prefix}/namespaces/{{namespace}}/{}", r.plural)
    } else {
        format!("{prefix}/{}", r.plural)
    };
    let body = |s: &str| json!({"content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{s}")}}}});
    let op = |action: &str, params: Vec<Value>, s: &str| {
        json!({
            "operationId": format!("{action}{}", r.kind),
            "parameters": params,
            "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{s}")}}}}},
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk(r),
        })
    };
    let write_params = || {
        vec![
            query(
                "dryRun",
                "When present, indicates that modifications should not be persisted.",
            ),
            query(
                "fieldManager",
                "fieldManager is a name associated with the actor or entity that is making these changes.",
            ),
            query(
                "fieldValidation",
                "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: Ignore, Warn (the default), Strict.",
            ),
        ]
    };
    let list_schema = if DEFINITIONS.contains_key(&format!("{schema}List")) {
        format!("{schema}List")
    } else {
        schema.to_owned()
    };
    let mut create = op("post", write_params(), schema);
    create["requestBody"] = body(schema);
    paths.insert(
        base.clone(),
        json!({
            "get": op("list", vec![query("labelSelector", "A selector to restrict the list of returned objects by their labels."), query("fieldSelector", "A selector to restrict the list of returned objects by their fields.")], &list_schema),
            "post": create,
            "delete": op("deletecollection", vec![], "io.k8s.apimachinery.pkg.apis.meta.v1.Status"),
        }),
    );
    let mut patch_params = write_params();
    patch_params.push(query(
        "force",
        "Force is going to \"force\" Apply requests.",
    ));
    let mut patch = op("patch", patch_params, schema);
    patch["requestBody"] = json!({"content": {
        "application/apply-patch+yaml": {"schema": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}},
        "application/json-patch+json": {"schema": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}},
        "application/merge-patch+json": {"schema": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}},
        "application/strategic-merge-patch+json": {"schema": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}},
    }});
    let mut put = op("put", write_params(), schema);
    put["requestBody"] = body(schema);
    let item = json!({
        "get": op("get", vec![], schema),
        "put": put,
        "patch": patch,
        "delete": op("delete", vec![query("dryRun", "When present, indicates that modifications should not be persisted.")], "io.k8s.apimachinery.pkg.apis.meta.v1.Status"),
        "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
    });
    paths.insert(format!("{base}/{{name}}"), item);
}
