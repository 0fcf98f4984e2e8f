//! Integration tests of the API server through a real client (the `kube` crate) against the
//! server on a loopback port, with fakes for what lies beyond it. One binary, so it compiles
//! once; the workspace's `tests` crate holds the end-to-end suite with `kubectl`.

mod fake_kubelet;
mod harness;
mod pod_logs;
