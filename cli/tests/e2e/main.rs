//! wedge-cli's one test binary: Wedge's binaries (`wedge`, `cloudcore`, `edgecore`) as users run
//! them, through real processes and real parts (kubectl, a registry, containerd, mosquitto). One
//! binary, so the workspace is linked once for all of them; each module is one area, and
//! [`support`] is what they share. Filter by module: `cargo test -p wedge-cli --test e2e
//! containers::`.

mod authorization;
mod autoscaling;
mod cli;
mod cloud_edge;
mod cloud_edge_faults;
mod containers;
mod controllers;
mod devices_cloud;
mod devices_edge;
mod edge_full_disk;
mod encryption_at_rest;
mod fault_matrix;
mod jobs;
mod mqtt_logins;
mod node_identity;
mod real_cluster;
mod router;
mod services;
mod statefulsets;
mod support;
