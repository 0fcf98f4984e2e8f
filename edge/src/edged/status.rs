//! A pod's status as the API shows it, built from what the pod workers report: phase, the four
//! conditions kubelets set, init container and container statuses, host and pod IPs and start
//! time.

use k8s_openapi::api::core::v1::{ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use wedge_core::status::{ContainerState, PodStatusReport};

/// What Edged knows of a pod beyond the runtime's report.
#[derive(Debug, Clone)]
pub struct PodFacts<'a> {
    /// The node's address; also the pod's when it has no network of its own (Wasm pods,
    /// `hostNetwork`).
    pub node_ip: &'a str,
    /// When Edged first accepted the pod.
    pub start_time: jiff::Timestamp,
    /// Why the pod could not be started, when it could not (kubelet's
    /// `CreateContainerConfigError`: a missing ConfigMap, an invalid spec).
    pub refused: Option<&'a str>,
    /// Whether the pod's MQTT login (`mqtt.wedge.io/login`) is accepted, if it names one: the
    /// [`logins::CONDITION`](crate::eventbus::logins::CONDITION) condition.
    pub mqtt_login: Option<&'a crate::eventbus::logins::Outcome>,
}

fn condition(
    kind: &str,
    ok: bool,
    previous: Option<&PodStatus>,
    now: jiff::Timestamp,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    // The transition time moves only when the condition's status does.
    let since = previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == kind))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    PodCondition {
        type_: kind.to_owned(),
        status: status.to_owned(),
        last_transition_time: Some(since),
        ..PodCondition::default()
    }
}

/// The status to report for `pod`, given the runtime's report (if the runtime holds the pod),
/// and the status reported before (to keep transition times).
pub fn pod_status(
    pod: &Pod,
    report: Option<&PodStatusReport>,
    facts: &PodFacts<'_>,
    previous: Option<&PodStatus>,
) -> PodStatus {
    let now = jiff::Timestamp::now();
    let waiting = |init: bool| {
        let refused = facts.refused;
        pod.spec
            .iter()
            .flat_map(move |s| {
                if init {
                    s.init_containers.iter().flatten().collect::<Vec<_>>()
                } else {
                    s.containers.iter().collect()
                }
            })
            .map(move |c| {
                let state = ContainerState::waiting(
                    if refused.is_some() {
                        wedge_core::status::reason::CREATE_CONTAINER_CONFIG_ERROR
                    } else {
                        wedge_core::status::reason::CONTAINER_CREATING
                    },
                    refused.map(str::to_owned),
                );
                wedge_core::status::ContainerStatus {
                    name: c.name.clone(),
                    image: c.image.clone().unwrap_or_default(),
                    image_id: None,
                    container_id: None,
                    state,
                    last_state: None,
                    restart_count: 0,
                    ready: false,
                    started: false,
                }
                .to_k8s()
            })
            .collect::<Vec<ContainerStatus>>()
    };
    let (init, containers): (Vec<ContainerStatus>, Vec<ContainerStatus>) = match report {
        Some(report) => (
            report.init_containers.iter().map(|c| c.to_k8s()).collect(),
            report.containers.iter().map(|c| c.to_k8s()).collect(),
        ),
        None => (waiting(true), waiting(false)),
    };
    let phase = report.map_or("Pending", |r| r.phase.as_str());
    let all_ready = !containers.is_empty() && containers.iter().all(|c| c.ready);
    let initialized = init.iter().all(|c| {
        c.state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .is_some_and(|t| t.exit_code == 0)
    });
    let pod_ip = report
        .and_then(|r| r.pod_ip.clone())
        .unwrap_or_else(|| facts.node_ip.to_owned());
    let mut conditions = vec![
        condition("PodScheduled", true, previous, now),
        condition("Initialized", initialized, previous, now),
        condition("ContainersReady", all_ready, previous, now),
        condition("Ready", all_ready, previous, now),
    ];
    if let Some(outcome) = facts.mqtt_login {
        let kind = crate::eventbus::logins::CONDITION;
        let mut c = condition(kind, outcome.is_ok(), previous, now);
        match outcome {
            Ok(()) => c.reason = Some("Accepted".into()),
            Err(e) => {
                c.reason = Some(e.reason().into());
                c.message = Some(e.to_string());
            }
        }
        conditions.push(c);
    }
    PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(conditions),
        init_container_statuses: (!init.is_empty()).then_some(init),
        container_statuses: Some(containers),
        host_ip: Some(facts.node_ip.to_owned()),
        host_ips: Some(vec![HostIP {
            ip: facts.node_ip.to_owned(),
        }]),
        pod_ips: Some(vec![PodIP { ip: pod_ip.clone() }]),
        pod_ip: Some(pod_ip),
        start_time: Some(Time(facts.start_time)),
        qos_class: pod.status.as_ref().and_then(|s| s.qos_class.clone()),
        ..PodStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use wedge_core::status::{ContainerStatus as Report, PodPhase};

    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u"},
            "spec": {"containers": [{"name": "app", "image": "r/app:1"}]}
        }))
        .expect("pod")
    }

    fn facts() -> PodFacts<'static> {
        PodFacts {
            node_ip: "10.0.0.5",
            start_time: jiff::Timestamp::UNIX_EPOCH,
            refused: None,
            mqtt_login: None,
        }
    }

    #[test]
    fn a_running_pod_is_ready_with_its_host_ip() {
        let report = PodStatusReport {
            phase: PodPhase::Running,
            init_containers: Vec::new(),
            pod_ip: None,
            containers: vec![Report {
                name: "app".into(),
                image: "r/app:1".into(),
                image_id: None,
                container_id: None,
                state: ContainerState::Running {
                    started_at: jiff::Timestamp::UNIX_EPOCH,
                },
                last_state: None,
                restart_count: 0,
                ready: true,
                started: true,
            }],
        };
        let status = pod_status(&pod(), Some(&report), &facts(), None);
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let conditions = status.conditions.expect("conditions");
        assert!(
            conditions.iter().all(|c| c.status == "True"),
            "{conditions:?}"
        );
        assert_eq!(status.host_ip.as_deref(), Some("10.0.0.5"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.0.0.5"));
    }

    #[test]
    fn a_pods_mqtt_login_is_a_condition_with_its_reason() {
        let refused: crate::eventbus::logins::Outcome = Err(
            crate::eventbus::logins::LoginError::SecretNotFound("login".into()),
        );
        let mut f = facts();
        f.mqtt_login = Some(&refused);
        let status = pod_status(&pod(), None, &f, None);
        let conditions = status.conditions.expect("conditions");
        let c = conditions
            .iter()
            .find(|c| c.type_ == crate::eventbus::logins::CONDITION)
            .expect("the login's condition");
        assert_eq!(c.status, "False");
        assert_eq!(c.reason.as_deref(), Some("SecretNotFound"));
        assert!(
            c.message
                .as_deref()
                .is_some_and(|m| m.contains("\"login\"")),
            "{c:?}"
        );
        let accepted = Ok(());
        f.mqtt_login = Some(&accepted);
        let status = pod_status(&pod(), None, &f, None);
        assert!(
            status
                .conditions
                .expect("conditions")
                .iter()
                .any(|c| { c.type_ == crate::eventbus::logins::CONDITION && c.status == "True" })
        );
        // No login named, no condition.
        let status = pod_status(&pod(), None, &facts(), None);
        assert_eq!(status.conditions.expect("conditions").len(), 4);
    }

    #[test]
    fn a_refused_pod_waits_with_the_reason_and_keeps_transition_times() {
        let mut f = facts();
        f.refused = Some("configmap \"settings\" not found");
        let first = pod_status(&pod(), None, &f, None);
        assert_eq!(first.phase.as_deref(), Some("Pending"));
        let waiting = first.container_statuses.as_ref().expect("containers")[0]
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .expect("waiting")
            .clone();
        assert_eq!(
            waiting.reason.as_deref(),
            Some("CreateContainerConfigError")
        );
        assert_eq!(waiting.message.as_deref(), f.refused);
        std::thread::sleep(std::time::Duration::from_millis(5));
        let again = pod_status(&pod(), None, &f, Some(&first));
        assert_eq!(
            first.conditions, again.conditions,
            "no transition, same times"
        );
    }
}
