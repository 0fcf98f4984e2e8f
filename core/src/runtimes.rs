//! Which runtimes a node offers, and how a pod asks for one.
//!
//! An edge advertises each runtime handler it has as a node label, `runtime.wedge.io/<handler>:
//! "true"`: `wasm` for the in-process wasmtime runtime, `runc` for containers through
//! containerd. A pod asks for a runtime the Kubernetes way, with `spec.runtimeClassName`: the
//! RuntimeClass's `handler` names the runtime, and the scheduler binds the pod only to nodes
//! labelled with it. Labels (not a status field) so that users can also select on them
//! themselves, in a nodeSelector or a RuntimeClass's `scheduling.nodeSelector`.

use std::collections::BTreeMap;

/// The prefix of the labels that advertise runtimes.
pub const LABEL_PREFIX: &str = "runtime.wedge.io/";
/// The handler of the Wasm runtime.
pub const WASM: &str = "wasm";
/// The handler of the container runtime (containerd with runc).
pub const RUNC: &str = "runc";

/// The label that advertises `handler`.
pub fn label(handler: &str) -> String {
    format!("{LABEL_PREFIX}{handler}")
}

/// Whether a node with these labels offers `handler`.
pub fn offers(labels: Option<&BTreeMap<String, String>>, handler: &str) -> bool {
    labels
        .and_then(|l| l.get(&label(handler)))
        .is_some_and(|v| v == "true")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_offers_what_its_labels_say() {
        let labels: BTreeMap<_, _> = [(label(WASM), "true".to_owned())].into();
        assert!(offers(Some(&labels), WASM));
        assert!(!offers(Some(&labels), RUNC));
        assert!(!offers(None, WASM));
    }
}
