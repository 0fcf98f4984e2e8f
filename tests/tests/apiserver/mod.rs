//! End-to-end tests of the embedded API server through real clients: the `kube` crate (typed and
//! dynamic APIs, watcher, reflector, every patch type, server-side apply) and the real `kubectl`
//! on the machine, against the server on a loopback port with its own SQLite file.

mod admission;
mod bad_input;
mod builtins;
mod components;
mod durability;
mod encryption;
pub(crate) mod harness;
mod kube_client;
mod kubectl;
mod limits;
mod service_accounts;
mod services;
mod versions;
