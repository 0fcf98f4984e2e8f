//! Ordinary containers for Wedge's edge, through containerd's CRI v1 API.
//!
//! [`CriRuntime`] implements Wedge's runtime boundary ([`wedge_core::runtime::RuntimeService`]
//! with handler `runc`, and [`wedge_core::runtime::ImageService`]) over the same gRPC API the
//! kubelet drives, so Edged runs a container pod exactly as it runs a Wasm one and containerd
//! does what it does under a kubelet: images, sandboxes with a CNI network, runc containers,
//! CRI log files.
//!
//! Start reading at [`runtime`], which makes the calls. The mappings it uses are pure and
//! tested without containerd: [`sandbox`](crate::sandbox) and [`container`](crate::container)
//! (configs and statuses), [`image`](crate::image) (credentials), [`errors`] (gRPC statuses
//! to typed errors). [`wait`] stands in for the wait call CRI lacks; [`cni`] writes a pod
//! network for an edge that has none. [`streaming`](crate::streaming) carries `kubectl exec`
//! and `kubectl attach` sessions over containerd's streaming server, in SPDY/3.1
//! ([`spdy`](wedge_core::spdy) is the framing), and [`portforward`](crate::portforward) the
//! connections of `kubectl port-forward`.

mod client;
pub mod cni;
mod container;
mod errors;
mod image;
mod portforward;
pub mod runtime;
mod sandbox;
mod spdy_client;
mod streaming;
pub mod wait;

pub use client::socket_path;
pub use errors::ConnectError;
pub use runtime::CriRuntime;
