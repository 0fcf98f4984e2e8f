//! Wedge's Wasm pod runtime: WASI 0.2 components pulled from OCI registries, run on wasmtime as
//! the containers of Kubernetes pods.
//!
//! Start at [`WasmRuntime`], which implements the [`wedge_core::pod_runtime::PodRuntime`] trait
//! Edged drives. Then, in the order a pod meets them:
//!
//! - [`spec`]: the pod spec checked and turned into a plan;
//! - [`oci`]: the image pulled (or imported) into the content-addressed store;
//! - [`compile`]: the component compiled once and cached on disk;
//! - [`host`]: WASI, `wedge:device` and `wedge:messaging` linked in;
//! - [`container`]: apps run and restarted by policy, handlers ([`handler`]) called per event;
//! - [`limits`] and [`engine`]: memory and CPU limits, preemption by epochs;
//! - [`logs`]: stdout and stderr in the CRI log format.

pub mod compile;
pub mod config;
pub mod container;
pub mod engine;
pub mod handler;
pub mod host;
pub mod instance;
pub mod limits;
pub mod logs;
pub mod oci;
pub mod runtime;
pub mod spec;

pub use config::RuntimeConfig;
pub use runtime::{ContainerStats, RuntimeError, WasmRuntime};
