//! Fixtures for Wedge's tests and benchmarks: never a dependency of production code.
//!
//! - [`sample_apps`] builds the guests in `sample-apps/` for `wasm32-wasip2`, once per process.
//! - [`registry`] runs a real OCI registry (Debian's `docker-registry`) on a free local port, with or
//!   without htpasswd auth, and can corrupt the blobs it stores.
//! - [`mosquitto`] runs a real MQTT broker (Debian's `mosquitto`) on a free local port.
//! - [`http_sink`] is an HTTP service that keeps what is POSTed to it (the router's targets).
//! - [`oci`] builds Wasm images in every layout found in the wild and pushes them, either over the
//!   registry HTTP API or as an OCI layout through `skopeo`.
//! - [`containerd`] runs a real containerd (Debian's 1.6, runc, CNI bridge) with its own state,
//!   network and cgroup parent, for the edge's container pods through CRI; dropping it removes every
//!   process, mount, link and cgroup it made.
//! - [`container_images`] builds ordinary container images locally (a `pause` image for pod
//!   sandboxes, a `busybox` image) and pushes them to a [`registry::Registry`].
//! - [`netns`] makes a network namespace for a process to run in, reached through listeners bound
//!   inside it, with packet loss from iptables rules.
//! - [`wait`] polls for the event that proves a thing ([`wait::eventually`]) and gives free
//!   loopback ports; [`metrics`] reads a process's Prometheus figures.
//!
//! The fuzz tests' inputs come from `wedge-testkit-fuzz` (`testkit/fuzz/`), a crate of its own so
//! that the small crates' tests need not build these fixtures.
//!
//! A typical test starts a [`registry::Registry`], pushes an [`oci::Image::wasm`] of a sample app with
//! [`oci::push`], and points the code under test at [`registry::Registry::host`]. A container test
//! starts a [`containerd::Containerd`], pushes busybox with [`container_images::push_busybox`], tells
//! containerd where the registry is ([`containerd::Containerd::add_registry_host`] or
//! [`containerd::Containerd::add_mirror`]) and runs pods made with
//! [`containerd::Containerd::pod_config`].

pub mod container_images;
pub mod containerd;
pub mod http_sink;
pub mod metrics;
pub mod mosquitto;
pub mod netns;
pub mod oci;
pub mod process;
pub mod registry;
pub mod sample_apps;
pub mod wait;
