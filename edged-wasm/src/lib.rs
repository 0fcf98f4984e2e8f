//! Wedge's Wasm pod runtime: WASI 0.2 components pulled from OCI registries, run on wasmtime as
//! the containers of Kubernetes pods.
//!
//! Start at [`WasmRuntime`], which implements the runtime boundary Edged drives
//! ([`wedge_core::runtime`]: sandboxes, containers, images). Edged does the kubelet's job
//! (restarts, backoff, pull policy); this crate runs what it is told. In the order a container
//! meets them:
//!
//! - [`oci`]: the image pulled (or imported) into the content-addressed store;
//! - [`spec`]: the container's settings checked and turned into a plan (argv, mounts, limits);
//! - [`compile`]: the component compiled once and cached on disk;
//! - [`host`]: WASI, `wedge:device` and `wedge:messaging` linked in;
//! - [`container`]: an app run once, a handler ([`handler`]) called per event until stopped;
//! - [`exec`]: commands run in a container (`kubectl exec`, exec probes) and clients attached to
//!   it (`kubectl attach`), their streams over channels ([`stdio`]);
//! - [`limits`] and [`engine`]: memory and CPU limits, preemption by epochs;
//! - [`logs`]: stdout and stderr in the CRI log format.

pub mod compile;
pub mod config;
pub mod container;
pub mod engine;
pub mod exec;
pub mod handler;
pub mod host;
pub mod instance;
pub mod limits;
pub mod logs;
pub mod netns;
pub mod oci;
pub mod runtime;
pub mod spec;
pub mod stdio;

pub use config::{RegistryHosts, RuntimeConfig};
pub use runtime::{RuntimeStartError, WasmRuntime, WasmStats};
