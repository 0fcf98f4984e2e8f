//! `kubectl get` columns of the kinds Wedge stores and serves beside those it acts on, as
//! kube-apiserver's printers (v1.33, `pkg/printers/internalversion`) define them: one list of
//! [`Column`]s per kind, each with the function that fills its cell.

use serde_json::{Value, json};

use super::{age, containers_and_images, n, or_none, s};

/// One column: its definition and how an object fills it.
pub(super) struct Column {
    name: &'static str,
    kind: &'static str,
    priority: u8,
    description: &'static str,
    cell: fn(&Value) -> Value,
}

impl Column {
    /// The column's `columnDefinitions` entry.
    pub(super) fn definition(&self) -> Value {
        super::col(self.name, self.kind, self.priority, self.description)
    }

    /// The column's cell for `object`.
    pub(super) fn cell(&self, object: &Value) -> Value {
        (self.cell)(object)
    }
}

const fn c(
    name: &'static str,
    kind: &'static str,
    description: &'static str,
    cell: fn(&Value) -> Value,
) -> Column {
    Column {
        name,
        kind,
        priority: 0,
        description,
        cell,
    }
}

/// A `-o wide` column.
const fn wide(
    name: &'static str,
    kind: &'static str,
    description: &'static str,
    cell: fn(&Value) -> Value,
) -> Column {
    Column {
        name,
        kind,
        priority: 1,
        description,
        cell,
    }
}

const NAME: Column = c(
    "Name",
    "string",
    "Name must be unique within a namespace.",
    |o| json!(s(o, "/metadata/name")),
);
const AGE: Column = c(
    "Age",
    "string",
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
    |o| {
        json!(age(o
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)))
    },
);

/// The `-o wide` columns of a workload's pod template: its containers' names and images.
const TEMPLATE_CONTAINERS: Column = wide(
    "Containers",
    "string",
    "Names of each container in the template.",
    |o| json!(containers_and_images(o.pointer("/spec/template/spec").unwrap_or(&Value::Null)).0),
);
/// See [`TEMPLATE_CONTAINERS`].
const TEMPLATE_IMAGES: Column = wide(
    "Images",
    "string",
    "Images referenced by each container in the template.",
    |o| json!(containers_and_images(o.pointer("/spec/template/spec").unwrap_or(&Value::Null)).1),
);

/// A string field, or `""`.
fn text(o: &Value, ptr: &str) -> Value {
    json!(s(o, ptr))
}

/// A string field, or `<none>`.
fn text_or_none(o: &Value, ptr: &str) -> Value {
    json!(or_none(s(o, ptr).to_owned()))
}

/// A string field, or `<unset>`.
fn text_or_unset(o: &Value, ptr: &str) -> Value {
    json!(match s(o, ptr) {
        "" => "<unset>",
        v => v,
    })
}

/// A boolean field (`false` when absent).
fn flag(o: &Value, ptr: &str) -> Value {
    json!(o.pointer(ptr).and_then(Value::as_bool).unwrap_or(false))
}

/// The length of an array field.
fn count(o: &Value, ptr: &str) -> Value {
    json!(o.pointer(ptr).and_then(Value::as_array).map_or(0, Vec::len))
}

/// The strings of an array field joined with `,`.
fn joined(o: &Value, ptr: &str) -> String {
    o.pointer(ptr)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// A number or a string (an `IntOrString`), or `N/A`.
fn int_or_string(o: &Value, ptr: &str) -> Value {
    match o.pointer(ptr) {
        Some(Value::Number(v)) => json!(v.to_string()),
        Some(Value::String(v)) => json!(v),
        _ => json!("N/A"),
    }
}

/// `k=v,...` of a map, sorted, or `<none>`.
fn map_string(o: &Value, ptr: &str) -> String {
    let pairs: Vec<String> = o
        .pointer(ptr)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    or_none(pairs.join(","))
}

/// A status that reads `Terminating` once the object is being deleted.
fn phase(o: &Value) -> Value {
    if o.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        json!("Terminating")
    } else {
        text(o, "/status/phase")
    }
}

/// Access modes as kubectl abbreviates them.
fn access_modes(o: &Value, ptr: &str) -> Value {
    let modes: Vec<&str> = o
        .pointer(ptr)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|m| match m.as_str() {
                    Some("ReadWriteOnce") => Some("RWO"),
                    Some("ReadOnlyMany") => Some("ROX"),
                    Some("ReadWriteMany") => Some("RWX"),
                    Some("ReadWriteOncePod") => Some("RWOP"),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    json!(modes.join(","))
}

/// The `VolumeMode` wide column: `Filesystem` unless set.
fn volume_mode(o: &Value) -> Value {
    json!(match s(o, "/spec/volumeMode") {
        "" => "Filesystem",
        m => m,
    })
}

/// `kind.group/name` of the controlling owner, lower-case as kubectl's `formatResourceName`.
fn controller(o: &Value) -> Value {
    let owner = o
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .and_then(|refs| {
            refs.iter()
                .find(|r| r["controller"].as_bool() == Some(true))
        });
    let Some(owner) = owner else {
        return json!("<none>");
    };
    let kind = owner["kind"].as_str().unwrap_or_default().to_lowercase();
    let group = owner["apiVersion"]
        .as_str()
        .and_then(|v| v.split_once('/'))
        .map(|(g, _)| g)
        .unwrap_or("");
    let name = owner["name"].as_str().unwrap_or_default();
    if group.is_empty() {
        json!(format!("{kind}/{name}"))
    } else {
        json!(format!("{kind}.{group}/{name}"))
    }
}

/// An HPA's `TARGETS`: each metric's current and target, as kubectl 1.33 prints them.
fn hpa_targets(o: &Value) -> Value {
    let specs = o
        .pointer("/spec/metrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let current = o
        .pointer("/status/currentMetrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if specs.is_empty() {
        return json!("<none>");
    }
    let shown: Vec<String> = specs
        .iter()
        .take(3)
        .enumerate()
        .map(|(i, m)| {
            let kind = m["type"].as_str().unwrap_or_default();
            let source = match kind {
                "Resource" => "resource",
                "ContainerResource" => "containerResource",
                "Pods" => "pods",
                "Object" => "object",
                "External" => "external",
                _ => return "<unknown type>".to_owned(),
            };
            let target = &m[source]["target"];
            let now = current.get(i).map(|c| &c[source]["current"]);
            let (want, have) = match target["type"].as_str() {
                Some("Utilization") => (
                    format!("{}%", n(target, "/averageUtilization")),
                    now.and_then(|c| c["averageUtilization"].as_i64())
                        .map(|u| format!("{u}%")),
                ),
                Some("AverageValue") => (
                    s(target, "/averageValue").to_owned(),
                    now.and_then(|c| c["averageValue"].as_str())
                        .map(str::to_owned),
                ),
                _ => (
                    s(target, "/value").to_owned(),
                    now.and_then(|c| c["value"].as_str()).map(str::to_owned),
                ),
            };
            let have = have.unwrap_or_else(|| "<unknown>".into());
            match kind {
                "Resource" | "ContainerResource" => {
                    format!("{}: {have}/{want}", s(m, &format!("/{source}/name")))
                }
                _ => format!("{have}/{want}"),
            }
        })
        .collect();
    let mut out = shown.join(", ");
    if specs.len() > 3 {
        out.push_str(&format!(" + {} more...", specs.len() - 3));
    }
    json!(out)
}

/// An Ingress's `ADDRESS`: its load balancer's IPs and host names.
fn load_balancer(o: &Value) -> Value {
    let found: Vec<&str> = o
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|i| i["ip"].as_str().or_else(|| i["hostname"].as_str()))
                .collect()
        })
        .unwrap_or_default();
    json!(found.join(","))
}

/// An EndpointSlice's `ENDPOINTS`: its first three addresses.
fn slice_endpoints(o: &Value) -> Value {
    let addresses: Vec<&str> = o
        .pointer("/endpoints")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|e| e["addresses"].as_array())
                .flatten()
                .filter_map(Value::as_str)
                .collect()
        })
        .unwrap_or_default();
    if addresses.is_empty() {
        return json!("<unset>");
    }
    let mut out = addresses
        .iter()
        .take(3)
        .copied()
        .collect::<Vec<_>>()
        .join(",");
    if addresses.len() > 3 {
        out.push_str(&format!(" + {} more...", addresses.len() - 3));
    }
    json!(out)
}

/// Endpoints' `ENDPOINTS`: the ready addresses with each port (`ip:port`; an address alone in a
/// subset without ports), the first three, as kube's `formatEndpoints` writes them.
fn endpoints(o: &Value) -> Value {
    let Some(subsets) = o
        .pointer("/subsets")
        .and_then(Value::as_array)
        .filter(|s| !s.is_empty())
    else {
        return json!("<none>");
    };
    let (mut list, mut count) = (Vec::new(), 0);
    for subset in subsets {
        let addresses: Vec<&str> = subset["addresses"]
            .as_array()
            .map(|a| a.iter().filter_map(|a| a["ip"].as_str()).collect())
            .unwrap_or_default();
        let ports: Vec<i64> = subset["ports"]
            .as_array()
            .map(|p| p.iter().filter_map(|p| p["port"].as_i64()).collect())
            .unwrap_or_default();
        if ports.is_empty() {
            count += addresses.len();
            list.extend(addresses.iter().map(|a| (*a).to_owned()));
            continue;
        }
        for port in ports {
            count += addresses.len();
            list.extend(addresses.iter().map(|ip| {
                if ip.contains(':') {
                    format!("[{ip}]:{port}")
                } else {
                    format!("{ip}:{port}")
                }
            }));
        }
    }
    let shown: Vec<String> = list.into_iter().take(3).collect();
    let mut out = shown.join(",");
    if count > 3 {
        out.push_str(&format!(" + {} more...", count - 3));
    }
    json!(out)
}

/// A CertificateSigningRequest's `CONDITION`: `Pending`, or its conditions, then `Issued`.
fn csr_condition(o: &Value) -> Value {
    let mut parts: Vec<String> = o
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| c["type"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if parts.is_empty() {
        parts.push("Pending".into());
    }
    if o.pointer("/status/certificate")
        .is_some_and(|c| !c.is_null())
    {
        parts.push("Issued".into());
    }
    json!(parts.join(","))
}

/// A condition's status, or `Unknown`.
fn condition(o: &Value, kind: &str) -> Option<Value> {
    o.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|c| c["type"] == kind))
        .cloned()
}

/// A ResourceQuota's `REQUEST` or `LIMIT` column: `name: used/hard` of each resource it limits.
fn quota(o: &Value, limits: bool) -> Value {
    let Some(hard) = o.pointer("/status/hard").and_then(Value::as_object) else {
        return json!("");
    };
    let mut names: Vec<&String> = hard.keys().collect();
    names.sort();
    let parts: Vec<String> = names
        .into_iter()
        .filter(|r| r.starts_with("limits.") == limits)
        .map(|r| {
            let used = o
                .pointer(&format!(
                    "/status/used/{}",
                    r.replace('~', "~0").replace('/', "~1")
                ))
                .and_then(Value::as_str)
                .unwrap_or("0");
            format!("{r}: {used}/{}", hard[r].as_str().unwrap_or_default())
        })
        .collect();
    json!(parts.join(", "))
}

/// The columns of `group`/`kind`, when kube-apiserver prints more than a name and an age.
pub(super) fn printer(group: &str, kind: &str) -> Option<&'static [Column]> {
    let columns: &'static [Column] = match (group, kind) {
        ("", "Endpoints") => {
            const {
                &[
                    NAME,
                    c(
                        "Endpoints",
                        "string",
                        "The set of all endpoints is the union of all subsets. Addresses are placed into subsets according to the IPs they share. A single address with multiple ports, some of which are ready and some of which are not (because they come from different containers) will result in the address being displayed in different subsets for the different ports. No address will appear in both Addresses and NotReadyAddresses in the same subset. Sets of addresses and ports that comprise a service.",
                        endpoints,
                    ),
                    AGE,
                ]
            }
        }
        ("", "ComponentStatus") => {
            const {
                &[
                    NAME,
                    c(
                        "Status",
                        "string",
                        "Status of the component conditions",
                        |o| {
                            json!(match condition_status(o) {
                                Some("True") => "Healthy",
                                Some(_) => "Unhealthy",
                                None => "Unknown",
                            })
                        },
                    ),
                    c(
                        "Message",
                        "string",
                        "Message of the component conditions",
                        |o| {
                            json!(
                                component_condition(o)
                                    .map_or("", |c| c["message"].as_str().unwrap_or(""))
                            )
                        },
                    ),
                    c(
                        "Error",
                        "string",
                        "Error of the component conditions",
                        |o| {
                            json!(
                                component_condition(o)
                                    .map_or("", |c| c["error"].as_str().unwrap_or(""))
                            )
                        },
                    ),
                ]
            }
        }
        ("", "LimitRange") => {
            const {
                &[
                    NAME,
                    c(
                        "Created At",
                        "date",
                        "CreationTimestamp is a timestamp representing the server time when this object was created.",
                        |o| text(o, "/metadata/creationTimestamp"),
                    ),
                ]
            }
        }
        ("", "ResourceQuota") => {
            const {
                &[
                    NAME,
                    AGE,
                    c(
                        "Request",
                        "string",
                        "Request represents a minimum amount of cpu/memory that a container may consume.",
                        |o| quota(o, false),
                    ),
                    c(
                        "Limit",
                        "string",
                        "Limits control the maximum amount of cpu/memory that a container may use independent of contention on the node.",
                        |o| quota(o, true),
                    ),
                ]
            }
        }
        ("", "PersistentVolume") => {
            const {
                &[
                    NAME,
                    c(
                        "Capacity",
                        "string",
                        "capacity is the description of the persistent volume's resources and capacity.",
                        |o| text(o, "/spec/capacity/storage"),
                    ),
                    c(
                        "Access Modes",
                        "string",
                        "accessModes contains all ways the volume can be mounted.",
                        |o| access_modes(o, "/spec/accessModes"),
                    ),
                    c(
                        "Reclaim Policy",
                        "string",
                        "persistentVolumeReclaimPolicy defines what happens to a persistent volume when released from its claim.",
                        |o| text(o, "/spec/persistentVolumeReclaimPolicy"),
                    ),
                    c(
                        "Status",
                        "string",
                        "phase indicates if a volume is available, bound to a claim, or released by a claim.",
                        phase,
                    ),
                    c(
                        "Claim",
                        "string",
                        "claimRef is part of a bi-directional binding between PersistentVolume and PersistentVolumeClaim.",
                        |o| match (
                            s(o, "/spec/claimRef/namespace"),
                            s(o, "/spec/claimRef/name"),
                        ) {
                            (_, "") => json!(""),
                            (ns, name) => json!(format!("{ns}/{name}")),
                        },
                    ),
                    c(
                        "StorageClass",
                        "string",
                        "storageClassName is the name of StorageClass to which this persistent volume belongs.",
                        |o| text(o, "/spec/storageClassName"),
                    ),
                    c(
                        "VolumeAttributesClass",
                        "string",
                        "Name of VolumeAttributesClass to which this persistent volume belongs.",
                        |o| text_or_unset(o, "/spec/volumeAttributesClassName"),
                    ),
                    c(
                        "Reason",
                        "string",
                        "reason is a brief CamelCase string that describes any failure and is meant for machine parsing and tidy display in the CLI.",
                        |o| text(o, "/status/reason"),
                    ),
                    AGE,
                    wide(
                        "VolumeMode",
                        "string",
                        "volumeMode defines if a volume is intended to be used with a formatted filesystem or to remain in raw block state.",
                        volume_mode,
                    ),
                ]
            }
        }
        ("", "PersistentVolumeClaim") => {
            const {
                &[
                    NAME,
                    c(
                        "Status",
                        "string",
                        "phase represents the current phase of PersistentVolumeClaim.",
                        phase,
                    ),
                    c(
                        "Volume",
                        "string",
                        "volumeName is the binding reference to the PersistentVolume backing this claim.",
                        |o| text(o, "/spec/volumeName"),
                    ),
                    c(
                        "Capacity",
                        "string",
                        "capacity represents the actual resources of the underlying volume.",
                        |o| text(o, "/status/capacity/storage"),
                    ),
                    c(
                        "Access Modes",
                        "string",
                        "accessModes contains the actual access modes the volume backing the PVC has.",
                        |o| access_modes(o, "/status/accessModes"),
                    ),
                    c(
                        "StorageClass",
                        "string",
                        "storageClassName is the name of the StorageClass required by the claim.",
                        |o| text(o, "/spec/storageClassName"),
                    ),
                    c(
                        "VolumeAttributesClass",
                        "string",
                        "volumeAttributesClassName may be used to set the VolumeAttributesClass used by this claim.",
                        |o| text_or_unset(o, "/spec/volumeAttributesClassName"),
                    ),
                    AGE,
                    wide(
                        "VolumeMode",
                        "string",
                        "volumeMode defines what type of volume is required by the claim.",
                        volume_mode,
                    ),
                ]
            }
        }
        ("", "PodTemplate") => {
            const {
                &[
                    NAME,
                    c(
                        "Containers",
                        "string",
                        "Names of each container in the template.",
                        |o| {
                            json!(
                                containers_and_images(
                                    o.pointer("/template/spec").unwrap_or(&Value::Null)
                                )
                                .0
                            )
                        },
                    ),
                    c(
                        "Images",
                        "string",
                        "Images referenced by each container in the template.",
                        |o| {
                            json!(
                                containers_and_images(
                                    o.pointer("/template/spec").unwrap_or(&Value::Null)
                                )
                                .1
                            )
                        },
                    ),
                    c(
                        "Pod Labels",
                        "string",
                        "The labels for the pod template.",
                        |o| json!(map_string(o, "/template/metadata/labels")),
                    ),
                ]
            }
        }
        ("", "ReplicationController") => {
            const {
                &[
                    NAME,
                    c(
                        "Desired",
                        "integer",
                        "Replicas is the number of desired replicas.",
                        |o| json!(n(o, "/spec/replicas")),
                    ),
                    c(
                        "Current",
                        "integer",
                        "Replicas is the most recently observed number of replicas.",
                        |o| json!(n(o, "/status/replicas")),
                    ),
                    c(
                        "Ready",
                        "integer",
                        "The number of ready replicas for this replication controller.",
                        |o| json!(n(o, "/status/readyReplicas")),
                    ),
                    AGE,
                    TEMPLATE_CONTAINERS,
                    TEMPLATE_IMAGES,
                    wide(
                        "Selector",
                        "string",
                        "Selector is a label query over pods that should match the Replicas count.",
                        |o| json!(map_string(o, "/spec/selector")),
                    ),
                ]
            }
        }
        ("apiregistration.k8s.io", "APIService") => {
            const {
                &[
                    NAME,
                    c(
                        "Service",
                        "string",
                        "The reference to the service that hosts this API endpoint.",
                        |o| match (s(o, "/spec/service/namespace"), s(o, "/spec/service/name")) {
                            (_, "") => json!("Local"),
                            (ns, name) => json!(format!("{ns}/{name}")),
                        },
                    ),
                    c(
                        "Available",
                        "string",
                        "Whether this service is available.",
                        |o| {
                            json!(match condition(o, "Available") {
                                None => "Unknown".to_owned(),
                                Some(c) if c["status"] == "True" => "True".to_owned(),
                                Some(c) => format!("{} ({})", s(&c, "/status"), s(&c, "/reason")),
                            })
                        },
                    ),
                    AGE,
                ]
            }
        }
        ("apps", "StatefulSet") => {
            const {
                &[
                    NAME,
                    c(
                        "Ready",
                        "string",
                        "Number of the pod with ready state",
                        |o| {
                            json!(format!(
                                "{}/{}",
                                n(o, "/status/readyReplicas"),
                                n(o, "/spec/replicas")
                            ))
                        },
                    ),
                    AGE,
                    TEMPLATE_CONTAINERS,
                    TEMPLATE_IMAGES,
                ]
            }
        }
        ("apps", "ControllerRevision") => {
            const {
                &[
                    NAME,
                    c(
                        "Controller",
                        "string",
                        "Controller of the object",
                        controller,
                    ),
                    c(
                        "Revision",
                        "integer",
                        "Revision indicates the revision of the state represented by Data.",
                        |o| json!(n(o, "/revision")),
                    ),
                    AGE,
                ]
            }
        }
        ("autoscaling", "HorizontalPodAutoscaler") => {
            const {
                &[
                    NAME,
                    c(
                        "Reference",
                        "string",
                        "reference to scaled resource; horizontal pod autoscaler will learn the current resource consumption and will set the desired number of pods by using its Scale subresource.",
                        |o| {
                            json!(format!(
                                "{}/{}",
                                s(o, "/spec/scaleTargetRef/kind"),
                                s(o, "/spec/scaleTargetRef/name")
                            ))
                        },
                    ),
                    c(
                        "Targets",
                        "string",
                        "metrics contains the specifications for which to use to calculate the desired replica count (the maximum replica count across all metrics will be used).",
                        hpa_targets,
                    ),
                    c(
                        "MinPods",
                        "string",
                        "minReplicas is the lower limit for the number of replicas to which the autoscaler can scale down.",
                        |o| match o.pointer("/spec/minReplicas").and_then(Value::as_i64) {
                            Some(m) => json!(m.to_string()),
                            None => json!("<unset>"),
                        },
                    ),
                    c(
                        "MaxPods",
                        "integer",
                        "maxReplicas is the upper limit for the number of replicas to which the autoscaler can scale up.",
                        |o| json!(n(o, "/spec/maxReplicas")),
                    ),
                    c(
                        "Replicas",
                        "integer",
                        "currentReplicas is current number of replicas of pods managed by this autoscaler, as last seen by the autoscaler.",
                        |o| json!(n(o, "/status/currentReplicas")),
                    ),
                    AGE,
                ]
            }
        }
        ("certificates.k8s.io", "CertificateSigningRequest") => {
            const {
                &[
                    NAME,
                    AGE,
                    c(
                        "SignerName",
                        "string",
                        "Name of the signer that is requested to sign this certificate.",
                        |o| text(o, "/spec/signerName"),
                    ),
                    c(
                        "Requestor",
                        "string",
                        "Name of the user who requested this certificate.",
                        |o| text(o, "/spec/username"),
                    ),
                    c(
                        "RequestedDuration",
                        "string",
                        "Requested duration of the issued certificate.",
                        |o| match o.pointer("/spec/expirationSeconds").and_then(Value::as_i64) {
                            Some(secs) => json!(super::human_duration(secs)),
                            None => json!("<none>"),
                        },
                    ),
                    c(
                        "Condition",
                        "string",
                        "Approval and issuance status of the request.",
                        csr_condition,
                    ),
                ]
            }
        }
        ("networking.k8s.io", "Ingress") => {
            const {
                &[
                    NAME,
                    c(
                        "Class",
                        "string",
                        "The name of the IngressClass resource that should be used for ingresses.",
                        |o| text_or_none(o, "/spec/ingressClassName"),
                    ),
                    c(
                        "Hosts",
                        "string",
                        "Hosts that incoming requests are matched against before the ingress rule",
                        |o| {
                            let hosts: Vec<&str> = o
                                .pointer("/spec/rules")
                                .and_then(Value::as_array)
                                .map(|r| r.iter().filter_map(|r| r["host"].as_str()).collect())
                                .unwrap_or_default();
                            json!(if hosts.is_empty() {
                                "*".to_owned()
                            } else {
                                hosts.join(",")
                            })
                        },
                    ),
                    c(
                        "Address",
                        "string",
                        "Address is a list containing ingress points for the load-balancer",
                        load_balancer,
                    ),
                    c(
                        "Ports",
                        "string",
                        "Ports of TLS configurations that open",
                        |o| {
                            let tls = o
                                .pointer("/spec/tls")
                                .and_then(Value::as_array)
                                .is_some_and(|t| !t.is_empty());
                            json!(if tls { "80, 443" } else { "80" })
                        },
                    ),
                    AGE,
                ]
            }
        }
        ("networking.k8s.io", "IngressClass") => {
            const {
                &[
                    NAME,
                    c(
                        "Controller",
                        "string",
                        "Controller that is responsible for handling this class",
                        |o| text(o, "/spec/controller"),
                    ),
                    c(
                        "Parameters",
                        "string",
                        "A reference to a resource with additional parameters",
                        |o| {
                            let Some(p) = o.pointer("/spec/parameters").filter(|p| p.is_object())
                            else {
                                return json!("<none>");
                            };
                            let kind = s(p, "/kind");
                            json!(match s(p, "/apiGroup") {
                                "" => format!("{kind}/{}", s(p, "/name")),
                                group => format!("{kind}.{group}/{}", s(p, "/name")),
                            })
                        },
                    ),
                    AGE,
                ]
            }
        }
        ("networking.k8s.io", "NetworkPolicy") => {
            const {
                &[
                    NAME,
                    c(
                        "Pod-Selector",
                        "string",
                        "podSelector selects the pods to which this NetworkPolicy object applies.",
                        |o| {
                            json!(crate::selector::LabelSelector::format_k8s(
                                o.pointer("/spec/podSelector").unwrap_or(&Value::Null)
                            ))
                        },
                    ),
                    AGE,
                ]
            }
        }
        ("networking.k8s.io", "IPAddress") => {
            const {
                &[
                    NAME,
                    c(
                        "ParentRef",
                        "string",
                        "ParentRef references the resource that an IPAddress is attached to.",
                        |o| {
                            let Some(p) = o.pointer("/spec/parentRef").filter(|p| p.is_object())
                            else {
                                return json!("<none>");
                            };
                            let mut out = match s(p, "/group") {
                                "" => s(p, "/resource").to_lowercase(),
                                g => format!("{}.{g}", s(p, "/resource")).to_lowercase(),
                            };
                            let ns = s(p, "/namespace");
                            if !ns.is_empty() {
                                out.push('/');
                                out.push_str(ns);
                            }
                            out.push('/');
                            out.push_str(s(p, "/name"));
                            json!(out)
                        },
                    ),
                    AGE,
                ]
            }
        }
        ("networking.k8s.io", "ServiceCIDR") => {
            const {
                &[
                    NAME,
                    c(
                        "CIDRs",
                        "string",
                        "cidrs defines the IP blocks in CIDR notation",
                        |o| json!(joined(o, "/spec/cidrs")),
                    ),
                    AGE,
                ]
            }
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            const {
                &[
                    NAME,
                    c(
                        "AddressType",
                        "string",
                        "addressType specifies the type of address carried by this EndpointSlice.",
                        |o| text(o, "/addressType"),
                    ),
                    c(
                        "Ports",
                        "string",
                        "ports specifies the list of network ports exposed by each endpoint in this slice.",
                        |o| {
                            let ports: Vec<String> = o
                                .pointer("/ports")
                                .and_then(Value::as_array)
                                .map(|a| {
                                    a.iter()
                                        .filter_map(|p| p["port"].as_i64())
                                        .map(|p| p.to_string())
                                        .collect()
                                })
                                .unwrap_or_default();
                            json!(if ports.is_empty() {
                                "<unset>".to_owned()
                            } else {
                                ports.join(",")
                            })
                        },
                    ),
                    c(
                        "Endpoints",
                        "string",
                        "endpoints is a list of unique endpoints in this slice.",
                        slice_endpoints,
                    ),
                    AGE,
                ]
            }
        }
        ("policy", "PodDisruptionBudget") => {
            const {
                &[
                    NAME,
                    c(
                        "Min Available",
                        "string",
                        "The minimum number of pods that must be available simultaneously.  This can be either an integer or a string specifying a percentage, e.g. \"28%\".",
                        |o| int_or_string(o, "/spec/minAvailable"),
                    ),
                    c(
                        "Max Unavailable",
                        "string",
                        "The maximum number of pods that may be unavailable simultaneously.  This can be either an integer or a string specifying a percentage, e.g. \"33%\".",
                        |o| int_or_string(o, "/spec/maxUnavailable"),
                    ),
                    c(
                        "Allowed Disruptions",
                        "integer",
                        "Calculated number of pods that may be disrupted at this time.",
                        |o| json!(n(o, "/status/disruptionsAllowed")),
                    ),
                    AGE,
                ]
            }
        }
        ("storage.k8s.io", "StorageClass") => {
            const {
                &[
                    c(
                        "Name",
                        "string",
                        "Name must be unique within a namespace.",
                        |o| {
                            let default = [
                                "storageclass.kubernetes.io/is-default-class",
                                "storageclass.beta.kubernetes.io/is-default-class",
                            ]
                            .iter()
                            .any(|a| {
                                o.pointer("/metadata/annotations")
                                    .and_then(|m| m.get(*a))
                                    .and_then(Value::as_str)
                                    == Some("true")
                            });
                            let name = s(o, "/metadata/name");
                            json!(if default {
                                format!("{name} (default)")
                            } else {
                                name.to_owned()
                            })
                        },
                    ),
                    c(
                        "Provisioner",
                        "string",
                        "Indicates the type of the provisioner.",
                        |o| text(o, "/provisioner"),
                    ),
                    c(
                        "ReclaimPolicy",
                        "string",
                        "Dynamically provisioned PersistentVolumes of this storage class are created with this reclaimPolicy. Defaults to Delete.",
                        |o| {
                            json!(match s(o, "/reclaimPolicy") {
                                "" => "Delete",
                                p => p,
                            })
                        },
                    ),
                    c(
                        "VolumeBindingMode",
                        "string",
                        "VolumeBindingMode indicates how PersistentVolumeClaims should be provisioned and bound.  When unset, VolumeBindingImmediate is used.",
                        |o| {
                            json!(match s(o, "/volumeBindingMode") {
                                "" => "Immediate",
                                m => m,
                            })
                        },
                    ),
                    c(
                        "AllowVolumeExpansion",
                        "string",
                        "AllowVolumeExpansion shows whether the storage class allow volume expand",
                        |o| flag(o, "/allowVolumeExpansion"),
                    ),
                    AGE,
                ]
            }
        }
        ("storage.k8s.io", "VolumeAttachment") => {
            const {
                &[
                    NAME,
                    c(
                        "Attacher",
                        "string",
                        "Attacher indicates the name of the volume driver that MUST handle this request.",
                        |o| text(o, "/spec/attacher"),
                    ),
                    c(
                        "PV",
                        "string",
                        "Name of the persistent volume to attach.",
                        |o| text(o, "/spec/source/persistentVolumeName"),
                    ),
                    c(
                        "Node",
                        "string",
                        "The node that the volume should be attached to.",
                        |o| text(o, "/spec/nodeName"),
                    ),
                    c(
                        "Attached",
                        "boolean",
                        "Indicates the volume is successfully attached.",
                        |o| flag(o, "/status/attached"),
                    ),
                    AGE,
                ]
            }
        }
        ("storage.k8s.io", "CSIDriver") => {
            const {
                &[
                    NAME,
                    c(
                        "AttachRequired",
                        "boolean",
                        "Indicates this CSI volume driver requires an attach operation.",
                        |o| {
                            json!(
                                o.pointer("/spec/attachRequired")
                                    .and_then(Value::as_bool)
                                    .unwrap_or(true)
                            )
                        },
                    ),
                    c(
                        "PodInfoOnMount",
                        "boolean",
                        "Indicates this CSI volume driver requires additional pod information (like podName, podUID, etc.) during mount operations.",
                        |o| flag(o, "/spec/podInfoOnMount"),
                    ),
                    c(
                        "StorageCapacity",
                        "boolean",
                        "Indicates that the CSI volume driver wants pod scheduling to consider the storage capacity that the driver deployment will report by creating CSIStorageCapacity objects with capacity information.",
                        |o| flag(o, "/spec/storageCapacity"),
                    ),
                    c(
                        "TokenRequests",
                        "string",
                        "Indicates the CSI volume driver needs pods' service account tokens it is mounting volume for to do necessary authentication.",
                        |o| {
                            let audiences: Vec<&str> = o
                                .pointer("/spec/tokenRequests")
                                .and_then(Value::as_array)
                                .map(|a| a.iter().filter_map(|t| t["audience"].as_str()).collect())
                                .unwrap_or_default();
                            json!(if audiences.is_empty() {
                                "<unset>".to_owned()
                            } else {
                                audiences.join(",")
                            })
                        },
                    ),
                    c(
                        "RequiresRepublish",
                        "boolean",
                        "RequiresRepublish indicates the CSI driver wants `NodePublishVolume` being periodically called to reflect any possible change in the mounted volume.",
                        |o| flag(o, "/spec/requiresRepublish"),
                    ),
                    c(
                        "Modes",
                        "string",
                        "Defines what kind of volumes this CSI volume driver supports.",
                        |o| json!(or_none(joined(o, "/spec/volumeLifecycleModes"))),
                    ),
                    AGE,
                ]
            }
        }
        ("storage.k8s.io", "CSINode") => {
            const {
                &[
                    NAME,
                    c(
                        "Drivers",
                        "integer",
                        "Drivers indicates the number of CSI drivers registered on the node",
                        |o| count(o, "/spec/drivers"),
                    ),
                    AGE,
                ]
            }
        }
        ("storage.k8s.io", "CSIStorageCapacity") => {
            const {
                &[
                    NAME,
                    c(
                        "StorageClassName",
                        "string",
                        "The name of the StorageClass that the reported capacity applies to.",
                        |o| text(o, "/storageClassName"),
                    ),
                    c(
                        "Capacity",
                        "string",
                        "Capacity is the value reported by the CSI driver in its GetCapacityResponse.",
                        |o| text_or_unset(o, "/capacity"),
                    ),
                ]
            }
        }
        (
            "admissionregistration.k8s.io",
            "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration",
        ) => {
            const {
                &[
                    NAME,
                    c(
                        "Webhooks",
                        "integer",
                        "Webhooks indicates the number of webhooks included in the configuration.",
                        |o| count(o, "/webhooks"),
                    ),
                    AGE,
                ]
            }
        }
        ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy") => {
            const {
                &[
                    NAME,
                    c(
                        "Validations",
                        "integer",
                        "Validations indicates the number of validation rules defined in this configuration",
                        |o| count(o, "/spec/validations"),
                    ),
                    c(
                        "ParamKind",
                        "string",
                        "ParamKind specifies the kind of resources used to parameterize this policy",
                        |o| match (
                            s(o, "/spec/paramKind/apiVersion"),
                            s(o, "/spec/paramKind/kind"),
                        ) {
                            (_, "") => json!("<unset>"),
                            (v, k) => json!(format!("{v}/{k}")),
                        },
                    ),
                    AGE,
                ]
            }
        }
        ("admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding") => {
            const {
                &[
                    NAME,
                    c(
                        "PolicyName",
                        "string",
                        "PolicyName references a ValidatingAdmissionPolicy name which the ValidatingAdmissionPolicyBinding binds to.",
                        |o| text(o, "/spec/policyName"),
                    ),
                    c(
                        "ParamRef",
                        "string",
                        "ParamRef specifies the parameter resource used to configure the admission control policy.",
                        |o| match (
                            s(o, "/spec/paramRef/namespace"),
                            s(o, "/spec/paramRef/name"),
                        ) {
                            (_, "") if o.pointer("/spec/paramRef/selector").is_some() => {
                                json!("*/*")
                            }
                            (_, "") => json!("<unset>"),
                            ("", name) => json!(format!("*/{name}")),
                            (ns, name) => json!(format!("{ns}/{name}")),
                        },
                    ),
                    AGE,
                ]
            }
        }
        ("scheduling.k8s.io", "PriorityClass") => {
            const {
                &[
                    NAME,
                    c(
                        "Value",
                        "integer",
                        "value represents the integer value of this priority class.",
                        |o| json!(n(o, "/value")),
                    ),
                    c(
                        "Global-Default",
                        "boolean",
                        "globalDefault specifies whether this PriorityClass should be considered as the default priority for pods that do not have any priority class.",
                        |o| flag(o, "/globalDefault"),
                    ),
                    AGE,
                    c(
                        "PreemptionPolicy",
                        "string",
                        "preemptionPolicy is the Policy for preempting pods with lower priority.",
                        |o| {
                            json!(match s(o, "/preemptionPolicy") {
                                "" => "PreemptLowerPriority",
                                p => p,
                            })
                        },
                    ),
                ]
            }
        }
        ("flowcontrol.apiserver.k8s.io", "FlowSchema") => {
            const {
                &[
                    NAME,
                    c(
                        "PriorityLevel",
                        "string",
                        "priorityLevelConfiguration should reference a PriorityLevelConfiguration in the cluster.",
                        |o| text(o, "/spec/priorityLevelConfiguration/name"),
                    ),
                    c(
                        "MatchingPrecedence",
                        "string",
                        "matchingPrecedence is used to choose among the FlowSchemas that match a given request.",
                        |o| json!(n(o, "/spec/matchingPrecedence").to_string()),
                    ),
                    c(
                        "DistinguisherMethod",
                        "string",
                        "distinguisherMethod defines how to compute the flow distinguisher for requests that match this schema.",
                        |o| text_or_none(o, "/spec/distinguisherMethod/type"),
                    ),
                    AGE,
                    c(
                        "MissingPL",
                        "string",
                        "indicates whether the referenced priority level object is missing",
                        |o| {
                            json!(
                                condition(o, "Dangling")
                                    .map_or("?".to_owned(), |c| s(&c, "/status").to_owned())
                            )
                        },
                    ),
                ]
            }
        }
        ("flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration") => {
            const {
                &[
                    NAME,
                    c(
                        "Type",
                        "string",
                        "type indicates whether this priority level is subject to limitation on request execution.",
                        |o| text(o, "/spec/type"),
                    ),
                    c(
                        "NominalConcurrencyShares",
                        "string",
                        "nominalConcurrencyShares (NCS) contributes to the computation of the NominalConcurrencyLimit (NominalCL) of this level.",
                        |o| limited(o, "/spec/limited/nominalConcurrencyShares"),
                    ),
                    c(
                        "Queues",
                        "string",
                        "queues is the number of queues for this priority level.",
                        |o| limited(o, "/spec/limited/limitResponse/queuing/queues"),
                    ),
                    c(
                        "HandSize",
                        "string",
                        "handSize is a small positive number that configures the shuffle sharding of requests into queues.",
                        |o| limited(o, "/spec/limited/limitResponse/queuing/handSize"),
                    ),
                    c(
                        "QueueLengthLimit",
                        "string",
                        "queueLengthLimit is the maximum number of requests allowed to be waiting in a given queue of this priority level at a time.",
                        |o| limited(o, "/spec/limited/limitResponse/queuing/queueLengthLimit"),
                    ),
                    AGE,
                ]
            }
        }
        _ => return None,
    };
    Some(columns)
}

/// A Limited priority level's number, or `<none>`.
fn limited(o: &Value, ptr: &str) -> Value {
    match o.pointer(ptr).and_then(Value::as_i64) {
        Some(v) if s(o, "/spec/type") == "Limited" => json!(v.to_string()),
        _ => json!("<none>"),
    }
}

fn component_condition(o: &Value) -> Option<&Value> {
    o.pointer("/conditions")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|c| c["type"] == "Healthy"))
}

fn condition_status(o: &Value) -> Option<&str> {
    component_condition(o).and_then(|c| c["status"].as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(group: &str, kind: &str, o: &Value) -> Vec<Value> {
        printer(group, kind)
            .expect("a printer")
            .iter()
            .map(|c| c.cell(o))
            .collect()
    }

    #[test]
    fn hpa_targets_read_as_kubectl_prints_them() {
        let hpa = json!({"metadata": {"name": "web"}, "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"},
            "minReplicas": 1, "maxReplicas": 5, "metrics": [
                {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}},
                {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}}]},
            "status": {"currentReplicas": 2, "currentMetrics": [
                {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 12}}}]}});
        let cells = row("autoscaling", "HorizontalPodAutoscaler", &hpa);
        assert_eq!(cells[1], "Deployment/web");
        assert_eq!(cells[2], "cpu: 12%/80%, memory: <unknown>/100Mi");
        assert_eq!(cells[3], "1");
        assert_eq!(cells[5], 2);
    }

    #[test]
    fn volumes_claims_and_budgets_read_as_kubectl_prints_them() {
        let pv = json!({"metadata": {"name": "v"}, "spec": {"capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce", "ReadOnlyMany"], "persistentVolumeReclaimPolicy": "Retain",
            "claimRef": {"namespace": "ns", "name": "data"}, "storageClassName": "local"},
            "status": {"phase": "Bound"}});
        let cells = row("", "PersistentVolume", &pv);
        assert_eq!(
            &cells[1..7],
            &[
                json!("1Gi"),
                json!("RWO,ROX"),
                json!("Retain"),
                json!("Bound"),
                json!("ns/data"),
                json!("local")
            ]
        );
        assert_eq!(cells[7], "<unset>");
        assert_eq!(cells[10], "Filesystem");
        let pdb = json!({"metadata": {"name": "p"}, "spec": {"minAvailable": "50%"}, "status": {"disruptionsAllowed": 1}});
        let cells = row("policy", "PodDisruptionBudget", &pdb);
        assert_eq!(&cells[1..4], &[json!("50%"), json!("N/A"), json!(1)]);
        let quota = json!({"metadata": {"name": "q"}, "status": {"hard": {"pods": "10", "limits.cpu": "2", "requests.cpu": "1"},
            "used": {"pods": "3"}}});
        let cells = row("", "ResourceQuota", &quota);
        assert_eq!(cells[2], "pods: 3/10, requests.cpu: 0/1");
        assert_eq!(cells[3], "limits.cpu: 0/2");
    }

    #[test]
    fn owners_slices_and_default_classes_read_as_kubectl_prints_them() {
        let revision = json!({"metadata": {"name": "web-1", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "controller": true}]}, "revision": 3});
        assert_eq!(
            row("apps", "ControllerRevision", &revision)[1..3],
            [json!("statefulset.apps/web"), json!(3)]
        );
        let slice = json!({"metadata": {"name": "s"}, "addressType": "IPv4", "ports": [{"port": 80}, {"port": 443}],
            "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}, {"addresses": ["10.0.0.3"]}, {"addresses": ["10.0.0.4"]}]});
        assert_eq!(
            row("discovery.k8s.io", "EndpointSlice", &slice)[1..4],
            [
                json!("IPv4"),
                json!("80,443"),
                json!("10.0.0.1,10.0.0.2,10.0.0.3 + 1 more...")
            ]
        );
        let ep = json!({"metadata": {"name": "web"}, "subsets": [
            {"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "notReadyAddresses": [{"ip": "10.0.0.9"}],
             "ports": [{"port": 80}, {"port": 443}]}]});
        assert_eq!(
            row("", "Endpoints", &ep)[1],
            json!("10.0.0.1:80,10.0.0.2:80,10.0.0.1:443 + 1 more...")
        );
        let none = json!({"metadata": {"name": "web"}});
        assert_eq!(row("", "Endpoints", &none)[1], json!("<none>"));
        let unready = json!({"metadata": {"name": "web"}, "subsets": [{"notReadyAddresses": [{"ip": "10.0.0.9"}], "ports": [{"port": 80}]}]});
        assert_eq!(row("", "Endpoints", &unready)[1], json!(""));
        let class = json!({"metadata": {"name": "local", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "wedge.io/local"});
        assert_eq!(
            row("storage.k8s.io", "StorageClass", &class)[0..4],
            [
                json!("local (default)"),
                json!("wedge.io/local"),
                json!("Delete"),
                json!("Immediate")
            ]
        );
    }
}
