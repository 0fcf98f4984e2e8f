//! End-to-end tests of the Wasm pod runtime through real parts: a real OCI registry
//! (`docker-registry`), `skopeo`, the sample apps built for `wasm32-wasip2`, and the runtime as
//! Edged drives it (its pod workers, over the runtime boundary of `wedge_core::runtime`).

mod bad_input;
mod exec;
mod handlers;
mod harness;
mod images;
mod lifecycle;
mod portforward;
