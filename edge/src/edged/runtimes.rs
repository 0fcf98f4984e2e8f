//! The runtimes an edge has, by the handler a RuntimeClass names: `wasm` (wasmtime, in
//! process) and `runc` (containerd through CRI), each a [`RuntimeService`] with its
//! [`ImageService`].

use std::collections::BTreeMap;
use std::sync::Arc;

use wedge_core::runtime::{ImageService, RuntimeService};

/// One runtime and its images.
#[derive(Clone)]
pub struct RuntimeHandle {
    /// Sandboxes and containers.
    pub runtime: Arc<dyn RuntimeService>,
    /// Its images.
    pub images: Arc<dyn ImageService>,
}

impl RuntimeHandle {
    /// A handle over one value that is both services (as both runtimes are).
    pub fn new<R: RuntimeService + ImageService + 'static>(runtime: Arc<R>) -> Self {
        Self {
            runtime: runtime.clone(),
            images: runtime,
        }
    }

    /// The handler this runtime answers to.
    pub fn handler(&self) -> &'static str {
        self.runtime.handler()
    }

    /// The scheme of its containers' ids in statuses (`containerd://<id>`, as kubelets on
    /// containerd write them; `wasmtime://<id>`).
    pub fn id_scheme(&self) -> &'static str {
        match self.handler() {
            wedge_core::runtimes::RUNC => "containerd",
            wedge_core::runtimes::WASM => "wasmtime",
            other => other,
        }
    }
}

impl std::fmt::Debug for RuntimeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RuntimeHandle({})", self.handler())
    }
}

/// The runtimes of an edge, by handler. The first added is the default, for pods that neither
/// name a RuntimeClass nor have images another runtime holds.
#[derive(Clone, Default, Debug)]
pub struct Runtimes {
    handles: BTreeMap<&'static str, RuntimeHandle>,
    default: Option<&'static str>,
}

impl Runtimes {
    /// No runtimes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a runtime.
    pub fn with(mut self, handle: RuntimeHandle) -> Self {
        let handler = handle.handler();
        self.default.get_or_insert(handler);
        self.handles.insert(handler, handle);
        self
    }

    /// The runtime for `handler`.
    pub fn get(&self, handler: &str) -> Option<&RuntimeHandle> {
        self.handles.get(handler)
    }

    /// The default runtime.
    pub fn default_handle(&self) -> Option<&RuntimeHandle> {
        self.default.and_then(|h| self.handles.get(h))
    }

    /// Every runtime.
    pub fn iter(&self) -> impl Iterator<Item = &RuntimeHandle> {
        self.handles.values()
    }

    /// The handlers offered, for node labels and messages.
    pub fn handlers(&self) -> Vec<&'static str> {
        self.handles.keys().copied().collect()
    }
}
