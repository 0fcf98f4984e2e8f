//! Wedge's embedded control plane: what kube-scheduler and kube-controller-manager do, for a
//! cluster with no Kubernetes behind it (the embedded API server, `wedge up`). Against a real
//! cluster it stays off: that cluster has its own.
//!
//! Everything here is a client of the API through the `kube` crate and `kube::runtime`
//! (watchers, reflector stores, controllers with idempotent reconcilers), so it works against
//! any API server. Modules:
//!
//! - [`scheduler`]: binds pending pods to nodes (filters, scores, kube-scheduler's messages);
//! - [`events`]: core/v1 events, as `kubectl describe` shows them.

pub mod events;
pub mod scheduler;
