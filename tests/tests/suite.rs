//! The end-to-end tests of `wedge-tests`, one binary (linking the whole stack once): the
//! embedded API server through real clients, the control plane against it, and the Wasm pod
//! runtime through a real registry. Each module's docs say what it drives.

mod apiserver;
mod controlplane;
mod wasm;
