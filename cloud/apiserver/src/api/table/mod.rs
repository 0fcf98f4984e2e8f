//! Server-side printing: `kubectl get` asks for a `meta.k8s.io/v1` `Table` and prints the
//! columns the server chooses. These are kube-apiserver's columns for the built-in kinds (the
//! `wide` ones at priority 1), a CRD's `additionalPrinterColumns`, and `Name`/`Age` otherwise.

use serde_json::{Value, json};

mod printers;

use super::list::Page;
use super::{Api, Call};
use crate::registry::ResourceInfo;
use crate::storage::StoredObject;

/// Whether the client asked for a Table.
pub(crate) fn wanted(call: &Call<'_>) -> bool {
    call.accept()
        .split(',')
        .next()
        .is_some_and(|first| first.replace(' ', "").contains("as=Table"))
}

/// Kubernetes' `HumanDuration`: how `AGE` columns read.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        return if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = s / 3600;
    if h < 8 {
        return if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    if h < 24 * 8 {
        return if h % 24 == 0 {
            format!("{}d", h / 24)
        } else {
            format!("{}d{}h", h / 24, h % 24)
        };
    }
    if h < 24 * 365 * 2 {
        return format!("{}d", h / 24);
    }
    let (y, d) = (h / 24 / 365, (h / 24) % 365);
    if h < 24 * 365 * 8 && d != 0 {
        format!("{y}y{d}d")
    } else {
        format!("{y}y")
    }
}

fn age(ts: Option<&str>) -> String {
    let Some(t) = ts.and_then(|t| t.parse::<jiff::Timestamp>().ok()) else {
        return "<unknown>".into();
    };
    human_duration(jiff::Timestamp::now().as_second() - t.as_second())
}

fn col(name: &str, kind: &str, priority: u8, description: &str) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({"name": name, "type": kind, "format": format, "description": description, "priority": priority})
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn n(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(x: String) -> String {
    if x.is_empty() { "<none>".into() } else { x }
}

fn containers_and_images(spec: &Value) -> (String, String) {
    let cs = spec
        .get("containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = cs.iter().filter_map(|c| c["name"].as_str()).collect();
    let images: Vec<&str> = cs.iter().filter_map(|c| c["image"].as_str()).collect();
    (names.join(","), images.join(","))
}

fn selector_string(sel: &Value) -> String {
    or_none(crate::selector::LabelSelector::format_k8s(sel))
}

/// A pod's `STATUS` column, as kubectl's pod printer derives it.
pub fn pod_status(pod: &Value) -> String {
    let mut reason = match s(pod, "/status/reason") {
        "" => s(pod, "/status/phase").to_owned(),
        r => r.to_owned(),
    };
    let mut running = false;
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for c in statuses.iter().rev() {
        if let Some(w) = c
            .pointer("/state/waiting/reason")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
        {
            reason = w.to_owned();
        } else if let Some(t) = c.pointer("/state/terminated") {
            reason = match t
                .get("reason")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty())
            {
                Some(r) => r.to_owned(),
                None if t.get("signal").and_then(Value::as_i64).unwrap_or(0) != 0 => {
                    format!("Signal:{}", n(t, "/signal"))
                }
                None => format!("ExitCode:{}", n(t, "/exitCode")),
            };
        } else if c.pointer("/state/running").is_some() && c["ready"].as_bool() == Some(true) {
            running = true;
        }
    }
    if reason == "Completed" && running {
        reason = "Running".into();
    }
    if pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        reason = if s(pod, "/status/reason") == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    reason
}

/// As kubectl prints it: `Ready` when the Ready condition is True, `NotReady` for False and
/// Unknown alike, `Unknown` only when there is no Ready condition.
fn node_status(node: &Value) -> String {
    let ready = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .map(|c| match c["status"].as_str() {
            Some("True") => "Ready",
            _ => "NotReady",
        })
        .unwrap_or("Unknown");
    let mut out = ready.to_owned();
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        out.push_str(",SchedulingDisabled");
    }
    out
}

fn node_roles(node: &Value) -> String {
    let mut roles: Vec<String> = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| match k.strip_prefix("node-role.kubernetes.io/") {
                    Some(r) if !r.is_empty() => Some(r.to_owned()),
                    _ if k == "kubernetes.io/role" => v.as_str().map(str::to_owned),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    or_none(roles.join(","))
}

fn address(node: &Value, kind: &str) -> String {
    let found = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|x| x["type"] == kind))
        .and_then(|x| x["address"].as_str());
    or_none(found.unwrap_or("").to_owned())
}

/// The `-o wide` columns of every workload with a pod template.
fn template_columns() -> [Value; 3] {
    [
        col(
            "Containers",
            "string",
            1,
            "Names of each container in the template.",
        ),
        col(
            "Images",
            "string",
            1,
            "Images referenced by each container in the template.",
        ),
        col("Selector", "string", 1, "Label selector for pods."),
    ]
}

/// The `-o wide` cells of a workload with a pod template.
fn template_cells(o: &Value) -> [Value; 3] {
    let (containers, images) =
        containers_and_images(o.pointer("/spec/template/spec").unwrap_or(&Value::Null));
    let selector = selector_string(o.pointer("/spec/selector").unwrap_or(&Value::Null));
    [json!(containers), json!(images), json!(selector)]
}

/// A Job's `STATUS`, as kubectl's job printer (1.33) words it.
fn job_status(o: &Value) -> &'static str {
    let has = |kind: &str| {
        o.pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == kind && c["status"] == "True")
            })
    };
    if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if o
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
    {
        "Terminating"
    } else if has("Suspended") {
        "Suspended"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else if has("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    }
}

/// A Job's `COMPLETIONS`: succeeded of completions, or of 1 for a work queue.
fn job_completions(o: &Value) -> String {
    let succeeded = n(o, "/status/succeeded");
    match o.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(c) => format!("{succeeded}/{c}"),
        None => match n(o, "/spec/parallelism") {
            p if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        },
    }
}

/// A Job's `DURATION`: from its start to its completion, or to now while it runs.
fn job_duration(o: &Value) -> String {
    let time = |p: &str| {
        o.pointer(p)
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    };
    match (time("/status/startTime"), time("/status/completionTime")) {
        (None, _) => String::new(),
        (Some(start), None) => {
            human_duration(jiff::Timestamp::now().as_second() - start.as_second())
        }
        (Some(start), Some(end)) => human_duration(end.as_second() - start.as_second()),
    }
}

/// The columns and cells of one kind.
fn columns(info: &ResourceInfo) -> Vec<Value> {
    let name = col(
        "Name",
        "string",
        0,
        "Name must be unique within a namespace.",
    );
    let age = col(
        "Age",
        "string",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    );
    match (info.group.as_str(), info.kind.as_str()) {
        ("", "Pod") => vec![
            name,
            col(
                "Ready",
                "string",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            col(
                "Status",
                "string",
                0,
                "The aggregate status of the containers in this pod.",
            ),
            col(
                "Restarts",
                "string",
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            age,
            col("IP", "string", 1, "IP address allocated to the pod."),
            col(
                "Node",
                "string",
                1,
                "Name of the Node this pod is scheduled on.",
            ),
            col(
                "Nominated Node",
                "string",
                1,
                "Name of the Node which the pod is nominated to.",
            ),
            col(
                "Readiness Gates",
                "string",
                1,
                "The readiness gates of the pod.",
            ),
        ],
        ("", "Node") => vec![
            name,
            col("Status", "string", 0, "The status of the node"),
            col("Roles", "string", 0, "The roles of the node"),
            age,
            col(
                "Version",
                "string",
                0,
                "Kubelet Version reported by the node.",
            ),
            col("Internal-IP", "string", 1, "List of internal IPs."),
            col("External-IP", "string", 1, "List of external IPs."),
            col(
                "OS-Image",
                "string",
                1,
                "OS Image reported by the node from /etc/os-release.",
            ),
            col(
                "Kernel-Version",
                "string",
                1,
                "Kernel Version reported by the node.",
            ),
            col(
                "Container-Runtime",
                "string",
                1,
                "Container Runtime Version reported by the node.",
            ),
        ],
        ("apps", "Deployment") => [
            name,
            col("Ready", "string", 0, "Number of the pod with ready state"),
            col(
                "Up-to-date",
                "integer",
                0,
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            col(
                "Available",
                "integer",
                0,
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            age,
        ]
        .into_iter()
        .chain(template_columns())
        .collect(),
        ("apps", "ReplicaSet") => [
            name,
            col("Desired", "integer", 0, "Number of desired pods."),
            col("Current", "integer", 0, "Number of actual replicas."),
            col(
                "Ready",
                "integer",
                0,
                "The number of ready replicas for this replica set.",
            ),
            age,
        ]
        .into_iter()
        .chain(template_columns())
        .collect(),
        ("apps", "DaemonSet") => [
            name,
            col(
                "Desired",
                "integer",
                0,
                "The total number of nodes that should be running the daemon pod.",
            ),
            col(
                "Current",
                "integer",
                0,
                "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.",
            ),
            col(
                "Ready",
                "integer",
                0,
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready.",
            ),
            col(
                "Up-to-date",
                "integer",
                0,
                "The total number of nodes that are running updated daemon pod",
            ),
            col(
                "Available",
                "integer",
                0,
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available.",
            ),
            col(
                "Node Selector",
                "string",
                0,
                "NodeSelector is a selector which must be true for the pod to fit on a node.",
            ),
            age,
        ]
        .into_iter()
        .chain(template_columns())
        .collect(),
        ("" | "events.k8s.io", "Event") => vec![
            col(
                "Last Seen",
                "string",
                0,
                "Time when last this event was recorded.",
            ),
            col("Type", "string", 0, "Type of this event."),
            col("Reason", "string", 0, "Reason is why the action was taken."),
            col("Object", "string", 0, "The object this Event is about."),
            col(
                "Message",
                "string",
                0,
                "A human-readable description of the status of this operation.",
            ),
            col(
                "Subobject",
                "string",
                1,
                "The subobject this Event is about.",
            ),
            col("Source", "string", 1, "The component reporting this event."),
            col(
                "First Seen",
                "string",
                1,
                "The time at which the event was first recorded.",
            ),
            col(
                "Count",
                "string",
                1,
                "The number of times this event has occurred.",
            ),
            col("Name", "string", 1, "The name of the event."),
        ],
        ("", "Namespace") => vec![
            name,
            col("Status", "string", 0, "The status of the namespace"),
            age,
        ],
        ("", "ConfigMap") => vec![
            name,
            col("Data", "string", 0, "Number of data entries."),
            age,
        ],
        ("", "Secret") => vec![
            name,
            col("Type", "string", 0, "The type of the secret"),
            col("Data", "string", 0, "Number of data entries."),
            age,
        ],
        ("", "Service") => vec![
            name,
            col("Type", "string", 0, "The type of service."),
            col("Cluster-IP", "string", 0, "The cluster IP of the service."),
            col(
                "External-IP",
                "string",
                0,
                "The external IPs of the service.",
            ),
            col("Port(s)", "string", 0, "The ports of the service."),
            age,
            col(
                "Selector",
                "string",
                1,
                "The label selector of the service.",
            ),
        ],
        ("batch", "Job") => [
            name,
            col("Status", "string", 0, "Status of the job."),
            col(
                "Completions",
                "string",
                0,
                "The number of pods which reached phase Succeeded. The value increases monotonically for a given spec. However, it may decrease in reaction to scale down of elastic indexed jobs.",
            ),
            col(
                "Duration",
                "string",
                0,
                "Time required to complete the job.",
            ),
            age,
        ]
        .into_iter()
        .chain(template_columns())
        .collect(),
        ("batch", "CronJob") => [
            name,
            col(
                "Schedule",
                "string",
                0,
                "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron.",
            ),
            col(
                "Timezone",
                "string",
                0,
                "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones. If not specified, this will default to the time zone of the kube-controller-manager process. The set of valid time zone names and the time zone offset is loaded from the system-wide time zone database by the API server during CronJob validation and the controller manager during execution. If no system-wide time zone database can be found a bundled version of the database is used instead. If the time zone name becomes invalid during the lifetime of a CronJob or due to a change in host configuration, the controller will stop creating new new Jobs and will create a system event with the reason UnknownTimeZone. More information can be found in https://kubernetes.io/docs/concepts/workloads/controllers/cron-jobs/#time-zones",
            ),
            col(
                "Suspend",
                "boolean",
                0,
                "This flag tells the controller to suspend subsequent executions, it does not apply to already started executions.  Defaults to false.",
            ),
            col(
                "Active",
                "integer",
                0,
                "A list of pointers to currently running jobs.",
            ),
            col(
                "Last Schedule",
                "string",
                0,
                "Information when was the last time the job was successfully scheduled.",
            ),
            age,
        ]
        .into_iter()
        .chain(template_columns())
        .collect(),
        ("coordination.k8s.io", "Lease") => vec![
            name,
            col("Holder", "string", 0, "The holder of the lease."),
            age,
        ],
        ("node.k8s.io", "RuntimeClass") => vec![
            name,
            col("Handler", "string", 0, "The runtime handler."),
            age,
        ],
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            vec![
                name,
                col("Created At", "date", 0, "The time the CRD was created."),
            ]
        }
        (group, kind) => match printers::printer(group, kind) {
            Some(printer) => printer.iter().map(printers::Column::definition).collect(),
            None => vec![name, age],
        },
    }
}

fn cells(info: &ResourceInfo, o: &Value) -> Vec<Value> {
    let name = json!(s(o, "/metadata/name"));
    let created = age(o
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str));
    match (info.group.as_str(), info.kind.as_str()) {
        ("", "Pod") => {
            let statuses = o
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let total = o
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let ready = statuses
                .iter()
                .filter(|c| c["ready"].as_bool() == Some(true))
                .count();
            let restarts: i64 = statuses
                .iter()
                .map(|c| c["restartCount"].as_i64().unwrap_or(0))
                .sum();
            let last = statuses
                .iter()
                .filter_map(|c| {
                    c.pointer("/lastState/terminated/finishedAt")
                        .and_then(Value::as_str)
                })
                .max()
                .map(|t| format!(" ({} ago)", age(Some(t))));
            let restarts = match (restarts, last) {
                (r, Some(ago)) if r > 0 => format!("{r}{ago}"),
                (r, _) => r.to_string(),
            };
            let gates = o
                .pointer("/spec/readinessGates")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(pod_status(o)),
                json!(restarts),
                json!(created),
                json!(or_none(s(o, "/status/podIP").to_owned())),
                json!(or_none(s(o, "/spec/nodeName").to_owned())),
                json!(or_none(s(o, "/status/nominatedNodeName").to_owned())),
                json!(if gates == 0 {
                    "<none>".to_owned()
                } else {
                    format!("0/{gates}")
                }),
            ]
        }
        ("", "Node") => vec![
            name,
            json!(node_status(o)),
            json!(node_roles(o)),
            json!(created),
            json!(s(o, "/status/nodeInfo/kubeletVersion")),
            json!(address(o, "InternalIP")),
            json!(address(o, "ExternalIP")),
            json!(or_none(s(o, "/status/nodeInfo/osImage").to_owned())),
            json!(or_none(s(o, "/status/nodeInfo/kernelVersion").to_owned())),
            json!(or_none(
                s(o, "/status/nodeInfo/containerRuntimeVersion").to_owned()
            )),
        ],
        ("apps", "Deployment") => vec![
            name,
            json!(format!(
                "{}/{}",
                n(o, "/status/readyReplicas"),
                n(o, "/spec/replicas")
            )),
            json!(n(o, "/status/updatedReplicas")),
            json!(n(o, "/status/availableReplicas")),
            json!(created),
        ]
        .into_iter()
        .chain(template_cells(o))
        .collect(),
        ("apps", "ReplicaSet") => vec![
            name,
            json!(n(o, "/spec/replicas")),
            json!(n(o, "/status/replicas")),
            json!(n(o, "/status/readyReplicas")),
            json!(created),
        ]
        .into_iter()
        .chain(template_cells(o))
        .collect(),
        ("batch", "Job") => vec![
            name,
            json!(job_status(o)),
            json!(job_completions(o)),
            json!(job_duration(o)),
            json!(created),
        ]
        .into_iter()
        .chain(template_cells(o))
        .collect(),
        ("batch", "CronJob") => {
            let (containers, images) = containers_and_images(
                o.pointer("/spec/jobTemplate/spec/template/spec")
                    .unwrap_or(&Value::Null),
            );
            let last = o
                .pointer("/status/lastScheduleTime")
                .and_then(Value::as_str)
                .map_or_else(|| "<none>".to_owned(), |t| age(Some(t)));
            let suspend = o
                .pointer("/spec/suspend")
                .and_then(Value::as_bool)
                .map_or_else(|| "<unset>".to_owned(), |b| b.to_string());
            vec![
                name,
                json!(s(o, "/spec/schedule")),
                json!(or_none(s(o, "/spec/timeZone").to_owned())),
                json!(suspend),
                json!(
                    o.pointer("/status/active")
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len)
                ),
                json!(last),
                json!(created),
                json!(containers),
                json!(images),
                json!(selector_string(
                    o.pointer("/spec/jobTemplate/spec/selector")
                        .unwrap_or(&Value::Null)
                )),
            ]
        }
        ("apps", "DaemonSet") => {
            let node_selector = o
                .pointer("/spec/template/spec/nodeSelector")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                name,
                json!(n(o, "/status/desiredNumberScheduled")),
                json!(n(o, "/status/currentNumberScheduled")),
                json!(n(o, "/status/numberReady")),
                json!(n(o, "/status/updatedNumberScheduled")),
                json!(n(o, "/status/numberAvailable")),
                json!(or_none(node_selector)),
                json!(created),
            ]
            .into_iter()
            .chain(template_cells(o))
            .collect()
        }
        ("" | "events.k8s.io", "Event") => {
            let last = [
                "/lastTimestamp",
                "/eventTime",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .find_map(|p| {
                o.pointer(p)
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
            });
            let first = [
                "/firstTimestamp",
                "/eventTime",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .find_map(|p| {
                o.pointer(p)
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
            });
            let object = format!(
                "{}/{}",
                s(o, "/involvedObject/kind").to_lowercase(),
                s(o, "/involvedObject/name")
            );
            let source = match (s(o, "/source/component"), s(o, "/source/host")) {
                ("", _) => s(o, "/reportingComponent").to_owned(),
                (c, "") => c.to_owned(),
                (c, h) => format!("{c}, {h}"),
            };
            vec![
                json!(age(last)),
                json!(s(o, "/type")),
                json!(s(o, "/reason")),
                json!(object),
                json!(s(o, "/message")),
                json!(s(o, "/involvedObject/fieldPath")),
                json!(source),
                json!(age(first)),
                json!(n(o, "/count").max(1).to_string()),
                name,
            ]
        }
        ("", "Namespace") => vec![name, json!(s(o, "/status/phase")), json!(created)],
        ("", "ConfigMap") => {
            let count = ["data", "binaryData"]
                .iter()
                .filter_map(|f| o.get(*f)?.as_object().map(|m| m.len()))
                .sum::<usize>();
            vec![name, json!(count), json!(created)]
        }
        ("", "Secret") => {
            let count = o
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len());
            vec![name, json!(s(o, "/type")), json!(count), json!(created)]
        }
        ("", "Service") => {
            let ports: Vec<String> = o
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                // `nodePort: 0` is no node port, as Kubernetes' printer reads it (protobuf
                // bodies carry the zero).
                .map(|p| match p.get("nodePort").and_then(Value::as_i64) {
                    Some(np) if np > 0 => {
                        format!("{}:{np}/{}", n(p, "/port"), s(p, "/protocol"))
                    }
                    _ => format!("{}/{}", n(p, "/port"), s(p, "/protocol")),
                })
                .collect();
            let selector = o
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                name,
                json!(s(o, "/spec/type")),
                json!(or_none(s(o, "/spec/clusterIP").to_owned())),
                json!(service_external_ip(o)),
                json!(or_none(ports.join(","))),
                json!(created),
                json!(or_none(selector)),
            ]
        }
        ("coordination.k8s.io", "Lease") => {
            vec![name, json!(s(o, "/spec/holderIdentity")), json!(created)]
        }
        ("node.k8s.io", "RuntimeClass") => vec![name, json!(s(o, "/handler")), json!(created)],
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            vec![name, json!(s(o, "/metadata/creationTimestamp"))]
        }
        (group, kind) => match printers::printer(group, kind) {
            Some(printer) => printer.iter().map(|c| c.cell(o)).collect(),
            None => vec![name, json!(created)],
        },
    }
}

/// Reads a CRD printer column's `jsonPath` (`.spec.size`, `.status.conditions[0].type`).
fn json_path<'a>(o: &'a Value, path: &str) -> Option<&'a Value> {
    let mut v = o;
    for part in path
        .trim_start_matches('.')
        .split('.')
        .filter(|p| !p.is_empty())
    {
        let (field, index) = match part.split_once('[') {
            Some((f, rest)) => (f, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        if !field.is_empty() {
            v = v.get(field)?;
        }
        if let Some(i) = index {
            v = v.get(i)?;
        }
    }
    Some(v)
}

/// Renders objects as a Table.
pub(crate) fn render(
    api: &Api,
    call: &Call<'_>,
    info: &ResourceInfo,
    items: &[StoredObject],
    page: Option<&Page>,
) -> Value {
    let include = call.query.get("includeObject").unwrap_or("Metadata");
    let (mut definitions, custom) = match &info.crd {
        Some(_) => {
            let printer = super::crd::printer_columns(api, info);
            let mut defs = vec![col(
                "Name",
                "string",
                0,
                "Name must be unique within a namespace.",
            )];
            for c in &printer {
                defs.push(json!({
                    "name": c["name"], "type": c["type"].as_str().unwrap_or("string"), "format": c["format"].as_str().unwrap_or(""),
                    "description": c["description"].as_str().unwrap_or(""), "priority": c["priority"].as_i64().unwrap_or(0),
                }));
            }
            if !printer
                .iter()
                .any(|c| c["jsonPath"] == ".metadata.creationTimestamp")
            {
                defs.push(col("Age", "date", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."));
            }
            (defs, Some(printer))
        }
        None => (columns(info), None),
    };
    let rows: Vec<Value> = items
        .iter()
        .map(|obj| {
            let o = obj.value();
            let cells = match &custom {
                Some(printer) => {
                    let mut c = vec![json!(s(&o, "/metadata/name"))];
                    for p in printer {
                        let v = json_path(&o, p["jsonPath"].as_str().unwrap_or("")).cloned().unwrap_or(Value::Null);
                        c.push(if p["type"] == "date" { json!(age(v.as_str())) } else { v });
                    }
                    if definitions.len() > c.len() {
                        c.push(json!(age(o.pointer("/metadata/creationTimestamp").and_then(Value::as_str))));
                    }
                    c
                }
                None => cells(info, &o),
            };
            let object = match include {
                "Object" => super::conversion::to_version(info, o.clone()),
                "None" => Value::Null,
                _ => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}),
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    // Date columns print as ages.
    for d in &mut definitions {
        if d["type"] == "date" {
            d["type"] = json!("string");
        }
    }
    let mut metadata = json!({"resourceVersion": page.map_or_else(|| api.store.current_rv(), |p| p.rv).to_string()});
    if let Some(token) = page.and_then(|p| p.continue_token.as_ref()) {
        metadata["continue"] = json!(token);
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "columnDefinitions": definitions, "rows": rows})
}

/// kube's `getServiceExternalIP`, as the server prints it (wide, so not shortened): a load
/// balancer's ingress addresses and the `externalIPs`, `<pending>` for a load balancer with
/// neither, the name an ExternalName Service stands for.
fn service_external_ip(o: &Value) -> String {
    let strings = |ptr: &str| -> Vec<String> {
        o.pointer(ptr)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    let external = strings("/spec/externalIPs");
    match o
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("")
    {
        "ClusterIP" | "NodePort" | "" if !external.is_empty() => external.join(","),
        "ClusterIP" | "NodePort" | "" => "<none>".to_owned(),
        "LoadBalancer" => {
            let mut all: Vec<String> = o
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| {
                    i.get("ip")
                        .or_else(|| i.get("hostname"))
                        .and_then(Value::as_str)
                        .filter(|a| !a.is_empty())
                        .map(str::to_owned)
                })
                .collect();
            all.extend(external);
            if all.is_empty() {
                "<pending>".to_owned()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => o
            .pointer("/spec/externalName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        _ => "<unknown>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 120), "3h2m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_duration(40 * 86400), "40d");
    }

    #[test]
    fn job_columns() {
        let done = json!({"spec": {"completions": 3}, "status": {"succeeded": 3,
            "startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:01:05Z",
            "conditions": [{"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]}});
        assert_eq!(job_status(&done), "Complete");
        assert_eq!(job_completions(&done), "3/3");
        assert_eq!(job_duration(&done), "65s");
        let queue = json!({"spec": {"parallelism": 2}, "status": {"conditions": [{"type": "Failed", "status": "False"}]}});
        assert_eq!(job_status(&queue), "Running");
        assert_eq!(job_completions(&queue), "0/1 of 2");
        assert_eq!(job_duration(&queue), "");
        let failing =
            json!({"status": {"conditions": [{"type": "FailureTarget", "status": "True"}]}});
        assert_eq!(job_status(&failing), "FailureTarget");
    }

    #[test]
    fn pod_status_column() {
        let waiting = json!({"status": {"phase": "Pending", "containerStatuses": [{"state": {"waiting": {"reason": "ErrImagePull"}}}]}});
        assert_eq!(pod_status(&waiting), "ErrImagePull");
        let running = json!({"status": {"phase": "Running", "containerStatuses": [{"ready": true, "state": {"running": {}}}]}});
        assert_eq!(pod_status(&running), "Running");
        let deleting =
            json!({"metadata": {"deletionTimestamp": "x"}, "status": {"phase": "Running"}});
        assert_eq!(pod_status(&deleting), "Terminating");
    }
}
