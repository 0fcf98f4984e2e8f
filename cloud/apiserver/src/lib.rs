//! Wedge's embedded Kubernetes-compatible API server, on SQLite.
//!
//! One machine needs nothing else: `cloudcore` and `wedge up` run this server in-process, and
//! every Wedge component reaches it (or a real cluster's API server) through the `kube` crate.
//!
//! Built bottom-up; start with [`storage`], the versioned object store every request ends in,
//! and [`selector`], the label and field selectors lists and watches filter by.

pub mod selector;
pub mod storage;
