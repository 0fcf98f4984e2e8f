//! Which runtime a pod runs on, as the kubelet's RuntimeClass manager decides it, plus what a
//! mixed fleet needs when a pod names no RuntimeClass.
//!
//! 1. A pod that names a RuntimeClass runs on its handler (Edged resolves the name against the
//!    RuntimeClasses MetaManager holds; the cloud sends each pod's down with it). A handler this
//!    edge does not offer refuses the pod, as a kubelet without that handler does.
//! 2. An edge with one runtime runs everything on it: the runtime's own pull says clearly when
//!    an image is of the wrong kind.
//! 3. Otherwise the pod's images decide: the runtime that already holds an image (no network
//!    needed, so an offline edge restarts its pods), else the image's kind as its registry
//!    describes it (`wedge_oci::kinds`, with the pod's pull credentials), as the scheduler
//!    decides in the cloud. An image of unknown kind (registry unreachable) counts for nothing;
//!    when no image is known the default runtime (Wasm) takes the pod.
//!
//! Lookups are bounded in time, and the choice runs off Edged's reconcile loop.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use wedge_core::runtime::PullAuth;
use wedge_core::runtimes::{RUNC, WASM};

use super::plan::{PodPlan, registry_of};
use super::pod_workers::Placement;
use super::runtimes::Runtimes;

/// How long a runtime may take to say whether it holds an image.
const LOCAL_LOOKUP: Duration = Duration::from_secs(2);
/// How long a registry may take to describe an image.
const REGISTRY_LOOKUP: Duration = Duration::from_secs(5);

/// What an image holds, as far as choosing a runtime goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A Wasm component: the `wasm` handler.
    Wasm,
    /// A container image: the `runc` handler.
    Container,
}

impl Kind {
    /// The handler that runs this kind.
    pub fn handler(self) -> &'static str {
        match self {
            Self::Wasm => WASM,
            Self::Container => RUNC,
        }
    }

    /// The kind, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Wasm => "Wasm component",
            Self::Container => "container image",
        }
    }

    fn of_handler(handler: &str) -> Option<Self> {
        match handler {
            WASM => Some(Self::Wasm),
            RUNC => Some(Self::Container),
            _ => None,
        }
    }
}

/// Where the kind of an image not held on the edge is asked: its registry.
#[async_trait]
pub trait ImageKinds: Send + Sync {
    /// The kind of `image`, asked with `auth`; `None` when it cannot be told.
    async fn kind_of(&self, image: &str, auth: Option<&PullAuth>) -> Option<Kind>;
}

#[async_trait]
impl ImageKinds for wedge_oci::ImageKinds {
    async fn kind_of(&self, image: &str, auth: Option<&PullAuth>) -> Option<Kind> {
        let auth = match auth {
            None => wedge_oci::RegistryAuth::Anonymous,
            Some(PullAuth::Basic { username, password }) => {
                wedge_oci::RegistryAuth::Basic(username.clone(), password.clone())
            }
            Some(PullAuth::Bearer(token)) => wedge_oci::RegistryAuth::Bearer(token.clone()),
        };
        match self.kind_with(image, &auth).await {
            Ok(wedge_oci::ImageKind::Wasm { .. }) => Some(Kind::Wasm),
            Ok(wedge_oci::ImageKind::Container) => Some(Kind::Container),
            Ok(wedge_oci::ImageKind::Unsupported { .. }) => None,
            Err(error) => {
                tracing::debug!(image, %error, "image kind unknown");
                None
            }
        }
    }
}

/// Why a pod has no runtime here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChoiceError {
    /// The pod's RuntimeClass names a handler this edge does not offer.
    #[error(
        "RuntimeClass {class:?} names the runtime handler {handler:?}, which this edge does not offer (it offers {offered})"
    )]
    ClassNotOffered {
        /// The RuntimeClass.
        class: String,
        /// Its handler.
        handler: String,
        /// The handlers this edge offers, comma-separated.
        offered: String,
    },
    /// The pod's RuntimeClass names a runtime that cannot run one of its images.
    #[error(
        "RuntimeClass {class:?} runs the pod on {handler:?}, but image {image:?} is a {what}: name a RuntimeClass for that kind, or none"
    )]
    ClassMismatch {
        /// The RuntimeClass.
        class: String,
        /// Its handler.
        handler: &'static str,
        /// The image.
        image: String,
        /// What the image is, in words.
        what: &'static str,
    },
    /// The pod's images need a runtime this edge does not have.
    #[error(
        "image {image:?} is a {what}, which needs the runtime handler {handler:?}; this edge does not offer it (it offers {offered})"
    )]
    KindNotOffered {
        /// The image.
        image: String,
        /// What kind it is, in words.
        what: &'static str,
        /// The handler it needs.
        handler: &'static str,
        /// The handlers this edge offers.
        offered: String,
    },
    /// The edge has no runtime at all.
    #[error("this edge offers no runtime")]
    NoRuntime,
}

/// Where `plan` runs. `class` is the pod's RuntimeClass as MetaManager holds it (name,
/// handler); `auth` the pod's pull credentials by registry host.
///
/// A pod with both kinds of image and no RuntimeClass is a mixed pod: its sandbox (and any
/// container of unknown kind) on `runc`, which owns the pod's network, its Wasm containers on
/// `wasm` inside that network.
pub async fn choose(
    runtimes: &Runtimes,
    class: Option<(&str, &str)>,
    plan: &PodPlan,
    auth: &BTreeMap<String, PullAuth>,
    registry: Option<&dyn ImageKinds>,
) -> Result<Placement, ChoiceError> {
    let offered = || runtimes.handlers().join(", ");
    // Each image's kind, asked once.
    let mut kinds: Vec<(&str, Option<Kind>)> = Vec::new();
    if let Some((class, handler)) = class {
        let chosen = runtimes.get(handler).map(|h| h.handler()).ok_or_else(|| {
            ChoiceError::ClassNotOffered {
                class: class.to_owned(),
                handler: handler.to_owned(),
                offered: offered(),
            }
        })?;
        // An image of the other kind would only fail to pull, less clearly.
        if let Some(wanted) = Kind::of_handler(chosen) {
            for container in plan.all_containers() {
                let image = container.image.as_str();
                if let Some(kind) = cached_kind(&mut kinds, runtimes, registry, auth, image).await
                    && kind != wanted
                {
                    return Err(ChoiceError::ClassMismatch {
                        class: class.to_owned(),
                        handler: chosen,
                        image: image.to_owned(),
                        what: kind.describe(),
                    });
                }
            }
        }
        return Ok(Placement::on(chosen));
    }
    let default = runtimes
        .default_handle()
        .map(|h| h.handler())
        .ok_or(ChoiceError::NoRuntime)?;
    if runtimes.handlers().len() == 1 {
        return Ok(Placement::on(default));
    }
    let mut of_container: Vec<(&str, &str, Option<Kind>)> = Vec::new();
    for container in plan.all_containers() {
        let image = container.image.as_str();
        let kind = cached_kind(&mut kinds, runtimes, registry, auth, image).await;
        of_container.push((container.name.as_str(), image, kind));
    }
    let first = |wanted: Kind| {
        of_container
            .iter()
            .find(|(_, _, k)| *k == Some(wanted))
            .map(|(_, image, _)| *image)
    };
    let needs = |kind: Kind, image: &str| -> Result<&'static str, ChoiceError> {
        runtimes
            .get(kind.handler())
            .map(|h| h.handler())
            .ok_or_else(|| ChoiceError::KindNotOffered {
                image: image.to_owned(),
                what: kind.describe(),
                handler: kind.handler(),
                offered: offered(),
            })
    };
    match (first(Kind::Wasm), first(Kind::Container)) {
        (None, None) => Ok(Placement::on(default)),
        (Some(image), None) => Ok(Placement::on(needs(Kind::Wasm, image)?)),
        (None, Some(image)) => Ok(Placement::on(needs(Kind::Container, image)?)),
        (Some(wasm_image), Some(container_image)) => {
            let sandbox = needs(Kind::Container, container_image)?;
            let wasm = needs(Kind::Wasm, wasm_image)?;
            Ok(Placement {
                sandbox: Some(sandbox),
                containers: of_container
                    .iter()
                    .filter(|(_, _, k)| *k == Some(Kind::Wasm))
                    .map(|(name, _, _)| ((*name).to_owned(), wasm))
                    .collect(),
            })
        }
    }
}

/// The kind of `image`, remembered in `known` for the rest of one choice.
async fn cached_kind<'a>(
    known: &mut Vec<(&'a str, Option<Kind>)>,
    runtimes: &Runtimes,
    registry: Option<&dyn ImageKinds>,
    auth: &BTreeMap<String, PullAuth>,
    image: &'a str,
) -> Option<Kind> {
    if let Some((_, kind)) = known.iter().find(|(i, _)| *i == image) {
        return *kind;
    }
    let kind = kind_of(runtimes, registry, auth, image).await;
    known.push((image, kind));
    kind
}

/// The kind of `image`: from the runtime that holds it, else from its registry.
async fn kind_of(
    runtimes: &Runtimes,
    registry: Option<&dyn ImageKinds>,
    auth: &BTreeMap<String, PullAuth>,
    image: &str,
) -> Option<Kind> {
    if let Some(kind) = held_by(runtimes, image).await {
        return Some(kind);
    }
    let registry = registry?;
    let auth = auth.get(&registry_of(image));
    tokio::time::timeout(REGISTRY_LOOKUP, registry.kind_of(image, auth))
        .await
        .ok()
        .flatten()
}

/// The kind of `image` if a runtime here holds it.
async fn held_by(runtimes: &Runtimes, image: &str) -> Option<Kind> {
    for handle in runtimes.iter() {
        let held = tokio::time::timeout(LOCAL_LOOKUP, handle.images.image_status(image)).await;
        if let Ok(Ok(Some(_))) = held {
            return Kind::of_handler(handle.handler());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::edged::fake::Fake;
    use crate::edged::runtimes::RuntimeHandle;

    struct Registry(BTreeMap<&'static str, Kind>);

    #[async_trait]
    impl ImageKinds for Registry {
        async fn kind_of(&self, image: &str, _: Option<&PullAuth>) -> Option<Kind> {
            self.0.get(image).copied()
        }
    }

    fn plan(images: &[&str]) -> PodPlan {
        let containers: Vec<serde_json::Value> = images
            .iter()
            .enumerate()
            .map(|(i, image)| serde_json::json!({"name": format!("c{i}"), "image": image}))
            .collect();
        let pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
            "spec": {"containers": containers}
        }))
        .expect("pod");
        crate::edged::plan::plan_pod(&pod, std::path::Path::new("/pods")).expect("plan")
    }

    fn edge(handlers: &[&'static str]) -> (Runtimes, Vec<Arc<Fake>>) {
        let mut runtimes = Runtimes::new();
        let mut fakes = Vec::new();
        for handler in handlers {
            let fake = Arc::new(Fake::with_handler(handler));
            runtimes = runtimes.with(RuntimeHandle::new(fake.clone()));
            fakes.push(fake);
        }
        (runtimes, fakes)
    }

    #[tokio::test(start_paused = true)]
    async fn a_runtime_class_decides_when_its_handler_is_here() {
        let (runtimes, _) = edge(&[WASM, RUNC]);
        let p = plan(&["r/app:1"]);
        let none = BTreeMap::new();
        assert_eq!(
            choose(&runtimes, Some(("runc", RUNC)), &p, &none, None).await,
            Ok(Placement::on(RUNC))
        );
        let (wasm_only, _) = edge(&[WASM]);
        let refused = choose(&wasm_only, Some(("runc", RUNC)), &p, &none, None)
            .await
            .expect_err("no runc here");
        assert_eq!(
            refused.to_string(),
            "RuntimeClass \"runc\" names the runtime handler \"runc\", which this edge does not offer (it offers wasm)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_runtime_class_that_cannot_run_an_image_is_refused_by_name() {
        let (runtimes, _) = edge(&[WASM, RUNC]);
        let registry = Registry(BTreeMap::from([("r/app:1", Kind::Wasm)]));
        let refused = choose(
            &runtimes,
            Some(("runc", RUNC)),
            &plan(&["r/app:1"]),
            &BTreeMap::new(),
            Some(&registry),
        )
        .await
        .expect_err("a Wasm image under runc");
        assert_eq!(
            refused.to_string(),
            "RuntimeClass \"runc\" runs the pod on \"runc\", but image \"r/app:1\" is a Wasm component: name a RuntimeClass for that kind, or none"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn images_decide_without_a_class_held_ones_first() {
        let (runtimes, fakes) = edge(&[WASM, RUNC]);
        let registry = Registry(BTreeMap::from([
            ("r/box:1", Kind::Container),
            ("r/app:1", Kind::Wasm),
        ]));
        let none = BTreeMap::new();
        let ask = |images: &'static [&'static str]| {
            let (runtimes, registry, none) = (&runtimes, &registry, &none);
            async move { choose(runtimes, None, &plan(images), none, Some(registry)).await }
        };
        assert_eq!(ask(&["r/box:1"]).await, Ok(Placement::on(RUNC)));
        assert_eq!(ask(&["r/app:1"]).await, Ok(Placement::on(WASM)));
        // Unknown everywhere: the default, the first runtime added.
        assert_eq!(ask(&["r/unknown:1"]).await, Ok(Placement::on(WASM)));
        // Held by the container runtime: no registry needed.
        fakes[1].hold_image("r/offline:1");
        assert_eq!(
            ask(&["r/offline:1", "r/unknown:1"]).await,
            Ok(Placement::on(RUNC))
        );
        // Both kinds: a mixed pod, its sandbox on runc (which owns the pod's network), its
        // Wasm container on wasm, a container of unknown kind with the sandbox.
        assert_eq!(
            ask(&["r/app:1", "r/box:1", "r/unknown:1"]).await,
            Ok(Placement {
                sandbox: Some(RUNC),
                containers: BTreeMap::from([("c0".to_owned(), WASM)]),
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_edge_with_one_runtime_runs_every_pod_on_it_whatever_the_registry_says() {
        // One runtime: the registry's answer does not matter (the runtime's own pull reports
        // an image of the wrong kind, as the Wasm runtime's ErrImagePull does).
        let (runtimes, _) = edge(&[WASM]);
        let registry = Registry(BTreeMap::from([("r/box:1", Kind::Container)]));
        let chosen = choose(
            &runtimes,
            None,
            &plan(&["r/box:1"]),
            &BTreeMap::new(),
            Some(&registry),
        )
        .await;
        assert_eq!(chosen, Ok(Placement::on(WASM)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_kind_no_runtime_here_runs_is_refused_by_name() {
        let (runtimes, _) = edge(&[WASM, "other"]);
        let registry = Registry(BTreeMap::from([("r/box:1", Kind::Container)]));
        let refused = choose(
            &runtimes,
            None,
            &plan(&["r/box:1"]),
            &BTreeMap::new(),
            Some(&registry),
        )
        .await
        .expect_err("no runc");
        assert!(
            refused.to_string().starts_with(
                "image \"r/box:1\" is a container image, which needs the runtime handler \"runc\""
            ),
            "{refused}"
        );
    }
}
