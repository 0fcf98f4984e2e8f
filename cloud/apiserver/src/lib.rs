//! Wedge's embedded Kubernetes-compatible API server, on SQLite.
//!
//! One machine needs nothing else: `cloudcore` and `wedge up` run this server in-process, and
//! every Wedge component reaches it (or a real cluster's API server) through the `kube` crate,
//! as `kubectl` does. Layers, bottom up:
//!
//! - [`storage`]: the versioned object store (SQLite WAL, one resourceVersion, watch history);
//! - [`selector`]: label and field selectors;
//! - [`schema`]: Kubernetes' OpenAPI definitions of the built-in types, and schema checks;
//! - [`protobuf`]: Kubernetes protobuf request bodies decoded into JSON;
//! - [`registry`]: the resources served, built-in and from CRDs;
//! - [`api`]: the REST API with Kubernetes' semantics (discovery, CRUD, watch, patch, apply,
//!   tables, subresources);
//! - [`pki`], [`auth`], [`kubeconfig`], [`server`], [`listener`]: TLS, who is asking, and the
//!   listener (whose accept loop the cloud's other listeners share);
//! - [`kubelet_client`]: how requests for a pod's logs reach its node, as kube-apiserver's do;
//! - [`service_account_tokens`] and [`token_controller`]: ServiceAccount tokens, bound and
//!   legacy, and the controller that fills token Secrets (here because it needs the signing key).

pub mod api;
pub mod auth;
pub mod authz;
#[cfg(test)]
mod fuzz;
pub mod kubeconfig;
pub mod kubelet_client;
pub mod protobuf;
pub mod registry;
pub mod schema;
pub mod selector;
pub mod server;
pub mod service_account_tokens;
pub mod storage;
pub mod token_controller;

pub use authz::components::Component;
pub use server::{Server, ServerConfig, ServerError};
