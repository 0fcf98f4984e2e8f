//! Lists: label and field selectors, pagination with `limit` and `continue`, and the list
//! written straight from the stored JSON bytes (a 10k-pod list is concatenation, not
//! re-serialisation).
//!
//! Pages after the first are read from the current state, not from a snapshot at the first
//! page's version as etcd would serve them: objects changed between pages show their newest
//! version. Every page reports the first page's resourceVersion, so a watch started from it
//! misses nothing.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::error::ApiError;
use super::request::{Query, ResourcePath};
use super::{Api, Body, Call, json_response, table, value_response};
use crate::registry::ResourceInfo;
use crate::selector::{FieldSelector, LabelSelector};
use crate::storage::{ObjectKey, StoreError, StoredObject};

/// The fields each resource can be selected by, beyond `metadata.name` and
/// `metadata.namespace`.
pub fn selectable_fields(info: &ResourceInfo) -> &'static [&'static str] {
    match (info.group.as_str(), info.plural.as_str()) {
        ("", "pods") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "events") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("", "nodes") => &["spec.unschedulable"],
        ("", "namespaces") => &["status.phase"],
        ("", "secrets") => &["type"],
        ("apps", "replicasets") => &["status.replicas"],
        _ => &[],
    }
}

/// The label and field selectors of a list or watch.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    labels: LabelSelector,
    fields: FieldSelector,
    has_fields: bool,
}

impl Filter {
    /// Reads `labelSelector` and `fieldSelector`; a malformed one is a 400.
    pub fn from_query(info: &ResourceInfo, query: &Query) -> Result<Self, ApiError> {
        let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let field_str = query.get("fieldSelector").unwrap_or("");
        let fields = FieldSelector::parse(field_str, selectable_fields(info))
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        Ok(Self {
            labels,
            fields,
            has_fields: !field_str.trim().is_empty(),
        })
    }

    /// Whether the object passes.
    pub fn keep(&self, obj: &StoredObject) -> bool {
        self.labels.matches(&obj.labels) && (!self.has_fields || self.fields.matches(&obj.value()))
    }

    /// Whether the selectors select everything.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && !self.has_fields
    }
}

/// A continue token: the version of the first page and the key to continue after.
fn encode_continue(rv: u64, after: &ObjectKey) -> String {
    URL_SAFE_NO_PAD.encode(json!({"rv": rv, "ns": after.namespace, "name": after.name}).to_string())
}

fn decode_continue(resource: &str, token: &str) -> Result<(u64, ObjectKey), ApiError> {
    let bad = || ApiError::BadRequest(format!("continue key is not valid: {token:?}"));
    let bytes = URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let rv = v.get("rv").and_then(Value::as_u64).ok_or_else(bad)?;
    let ns = v.get("ns").and_then(Value::as_str).ok_or_else(bad)?;
    let name = v.get("name").and_then(Value::as_str).ok_or_else(bad)?;
    Ok((rv, ObjectKey::new(resource, ns, name)))
}

/// One page of a list.
pub struct Page {
    /// The objects.
    pub items: Vec<StoredObject>,
    /// The version the list is at.
    pub rv: u64,
    /// The token for the next page.
    pub continue_token: Option<String>,
    /// How many objects the pages after this one hold, when the list has no selector (as
    /// kube-apiserver says it only then).
    pub remaining: Option<usize>,
}

/// A `resourceVersion` parameter, as kube-apiserver's storage parses it: empty and `"0"` mean
/// any version; anything but a number is a 400 in its words.
pub(crate) fn parse_resource_version(v: &str) -> Result<u64, ApiError> {
    if v.is_empty() || v == "0" {
        return Ok(0);
    }
    v.parse::<u64>().map_err(|_| {
        let why = if v.bytes().all(|b| b.is_ascii_digit()) {
            "value out of range"
        } else {
            "invalid syntax"
        };
        ApiError::BadRequest(format!(
            "invalid resource version: resourceVersion: Invalid value: {v:?}: strconv.ParseUint: parsing {v:?}: {why}"
        ))
    })
}

/// Reads one page as the query asks: the first at the current version (or 410 when an exact
/// older one is asked for), the next ones at the first's (410 once the history no longer
/// reaches it, as after etcd's compaction).
pub fn page(
    api: &Api,
    info: &ResourceInfo,
    namespace: Option<&str>,
    query: &Query,
) -> Result<Page, ApiError> {
    let filter = Filter::from_query(info, query)?;
    let limit = query.number::<usize>("limit")?.filter(|l| *l > 0);
    let resource = info.storage_key();
    let requested = parse_resource_version(query.get("resourceVersion").unwrap_or(""))?;
    let (first_rv, after) = match query.get("continue") {
        Some(_) if requested != 0 => {
            return Err(ApiError::BadRequest(
                "specifying resource version is not allowed when using continue".into(),
            ));
        }
        Some(token) => {
            let (rv, key) = decode_continue(&resource, token)?;
            (Some(rv), Some(key))
        }
        None => (None, None),
    };
    let current = api.store.current_rv();
    if requested > current {
        return Err(ApiError::TooLargeResourceVersion { requested, current });
    }
    if requested != 0 && requested != current && query.get("resourceVersionMatch") == Some("Exact")
    {
        return Err(ApiError::Gone(format!(
            "too old resource version: {requested} ({current})"
        )));
    }
    let read = api
        .store
        .page_at(&resource, namespace, after.as_ref(), limit, first_rv, |o| {
            filter.keep(o)
        });
    let read = match read {
        Ok(read) => read,
        Err(StoreError::Gone { .. }) => {
            return Err(ApiError::Gone(
                "The provided continue parameter is too old to display a consistent list result. \
                 You can start a new list without the continue parameter."
                    .into(),
            ));
        }
        Err(e) => return Err(ApiError::from_store(e, &info.group, &info.plural)),
    };
    let more = read.remaining > 0;
    let continue_token = match (more, read.items.last()) {
        (true, Some(last)) => {
            let v = last.value();
            let key = ObjectKey::new(
                &resource,
                v.pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
                v.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
            );
            Some(encode_continue(read.rv, &key))
        }
        _ => None,
    };
    Ok(Page {
        items: read.items,
        rv: read.rv,
        continue_token,
        remaining: (more && filter.is_empty()).then_some(read.remaining),
    })
}

/// GET of a collection.
pub(crate) fn serve(
    api: &Api,
    call: &Call<'_>,
    info: &ResourceInfo,
    path: &ResourcePath,
) -> Result<Response<Body>, ApiError> {
    let page = page(api, info, path.namespace.as_deref(), &call.query)?;
    if table::wanted(call) {
        return Ok(value_response(
            StatusCode::OK,
            &table::render(api, call, info, &page.items, Some(&page)),
        ));
    }
    Ok(json_response(StatusCode::OK, write_list(info, &page)))
}

/// The list's JSON, written from the items' stored bytes.
pub fn write_list(info: &ResourceInfo, page: &Page) -> Vec<u8> {
    let size: usize = page.items.iter().map(|o| o.json.len() + 1).sum();
    let mut out = Vec::with_capacity(size + 256);
    let mut metadata = json!({"resourceVersion": page.rv.to_string()});
    if let Some(token) = &page.continue_token {
        metadata["continue"] = json!(token);
    }
    if let Some(remaining) = page.remaining {
        metadata["remainingItemCount"] = json!(remaining);
    }
    out.extend_from_slice(b"{\"kind\":");
    out.extend_from_slice(json!(info.list_kind()).to_string().as_bytes());
    out.extend_from_slice(b",\"apiVersion\":");
    out.extend_from_slice(json!(info.api_version()).to_string().as_bytes());
    out.extend_from_slice(b",\"metadata\":");
    out.extend_from_slice(metadata.to_string().as_bytes());
    out.extend_from_slice(b",\"items\":[");
    let presenter = super::conversion::Presenter::new(info);
    for (i, item) in page.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&presenter.present(item).json);
    }
    out.extend_from_slice(b"]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let k = ObjectKey::new("pods", "default", "web-7");
        let token = encode_continue(42, &k);
        assert_eq!(decode_continue("pods", &token).ok(), Some((42, k)));
        assert!(matches!(
            decode_continue("pods", "not a token"),
            Err(ApiError::BadRequest(_))
        ));
    }
}
