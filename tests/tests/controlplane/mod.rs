//! End-to-end tests of the embedded control plane: the API server in-process on a loopback
//! port, the controllers against it through the `kube` crate, nodes registered through the API
//! as an edge registers them, and the real `kubectl` to look at the result.

mod autoscaling;
mod cascade;
mod cronjobs;
mod disruption;
mod edge;
mod endpoints;
mod events;
// The API server's harness: a server in-process, clients and kubectl against it.
use crate::apiserver::harness;
mod jobs;
mod leader;
mod lifecycle;
mod nodes;
mod scheduler;
mod statefulsets;
mod workloads;
