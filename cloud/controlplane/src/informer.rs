//! Shared informers: one watch of a resource for every controller that follows it, as
//! client-go's shared informers serve kube-controller-manager. An [`Informer`] keeps a
//! reflector [`Store`], runs hooks on each event before the store applies it (the
//! [`crate::indexes::ControllerIndex`], the scheduler's cache), and hands every change to each
//! subscriber as the object itself, once the store holds it.
//!
//! Why not kube-runtime's shared reflector (`store_shared` with `Writer::subscribe`):
//! - its subscribers are sent an object's key and read the object from the store when polled.
//!   An object deleted in between is skipped by returning `Pending` without arranging a wake-up,
//!   so that subscriber never yields again; once its buffer is full it holds up the watch for
//!   every other one. A scheduler whose pending pods came that way stopped placing pods after
//!   a pod was made and deleted quickly;
//! - it does not deliver deletions (kube-rs #1590), which every controller that counts its
//!   pods has to notice.
//!
//! Here a subscriber gets each applied and each deleted object, and after a relist the objects
//! that went while the watch was down (client-go's `DeletedFinalStateUnknown`) and then every
//! listed one. A full subscriber holds up the watch, as kube's does: nothing is dropped.

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::Arc;

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

/// How many changes a subscriber may be behind before it holds up the watch.
pub const BUFFER: usize = 1024;

/// A subscriber's stream of changes: each object applied or deleted, as the watch saw it.
pub type Changes<K> = mpsc::Receiver<Arc<K>>;

/// Something run on each watch event before the store applies it.
type Hook<K> = Box<dyn FnMut(&watcher::Event<K>) + Send>;

/// One watch of `K`, its store, and who follows its changes. Set it up (hooks, subscribers),
/// then [`Informer::run`] it.
pub struct Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    /// What is watched, for the logs ("pod", "node").
    what: &'static str,
    store: Store<K>,
    writer: reflector::store::Writer<K>,
    hooks: Vec<Hook<K>>,
    subscribers: Vec<mpsc::Sender<Arc<K>>>,
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    /// An informer of `what` ("pod"), with an empty store.
    pub fn new(what: &'static str) -> Self {
        let (store, writer) = reflector::store();
        Self {
            what,
            store,
            writer,
            hooks: Vec::new(),
            subscribers: Vec::new(),
        }
    }

    /// The store, ready once the first listing is in.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// A new subscriber: every change from the next event on.
    pub fn subscribe(&mut self) -> Changes<K> {
        let (tx, rx) = mpsc::channel(BUFFER);
        self.subscribers.push(tx);
        rx
    }

    /// Runs `hook` on each event, before the store applies it: a reconcile woken by a
    /// subscriber then finds what the hook keeps at least as new as the store.
    pub fn on_event(&mut self, hook: impl FnMut(&watcher::Event<K>) + Send + 'static) {
        self.hooks.push(Box::new(hook));
    }

    /// Watches `api` with `config` for good (a failing watch is retried with backoff).
    pub async fn run(mut self, api: Api<K>, config: watcher::Config) {
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => self.apply(event).await,
                Err(error) => {
                    tracing::warn!(what = self.what, %error, "watch failed; retrying");
                }
            }
        }
    }

    /// Applies one event: hooks, store, then subscribers.
    async fn apply(&mut self, event: watcher::Event<K>) {
        for hook in &mut self.hooks {
            hook(&event);
        }
        // A relist replaces the store at its end: what it held then and the listing lacks
        // went while the watch was down.
        let before = matches!(event, watcher::Event::InitDone).then(|| self.store.state());
        self.writer.apply_watcher_event(&event);
        match event {
            watcher::Event::Apply(object) => {
                // The store's own copy, rather than another allocation of it.
                let stored = self.store.get(&ObjectRef::from_obj(&object));
                self.dispatch(stored.unwrap_or_else(|| Arc::new(object)))
                    .await;
            }
            watcher::Event::Delete(object) => self.dispatch(Arc::new(object)).await,
            watcher::Event::InitDone => {
                let listed = self.store.state();
                let present: HashSet<ObjectRef<K>> = listed
                    .iter()
                    .map(|o| ObjectRef::from_obj(o.as_ref()))
                    .collect();
                for gone in before.unwrap_or_default() {
                    if !present.contains(&ObjectRef::from_obj(gone.as_ref())) {
                        self.dispatch(gone).await;
                    }
                }
                for object in listed {
                    self.dispatch(object).await;
                }
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
    }

    /// Hands `object` to every subscriber, waiting for room in each; forgets those that
    /// stopped listening.
    async fn dispatch(&mut self, object: Arc<K>) {
        let mut closed = false;
        for subscriber in &mut self.subscribers {
            if subscriber.send(object.clone()).await.is_err() {
                closed = true;
            }
        }
        if closed {
            self.subscribers.retain(|s| !s.is_closed());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use k8s_openapi::api::core::v1::Pod;
    use kube::ResourceExt;
    use serde_json::json;

    use super::*;

    fn pod(name: &str, version: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "resourceVersion": version}
        }))
        .expect("pod")
    }

    /// What a subscriber has been sent so far, as `name@version`.
    fn drain(changes: &mut Changes<Pod>) -> Vec<String> {
        let mut seen = Vec::new();
        while let Ok(pod) = changes.try_recv() {
            seen.push(format!(
                "{}@{}",
                pod.name_any(),
                pod.resource_version().unwrap_or_default()
            ));
        }
        seen
    }

    async fn list(informer: &mut Informer<Pod>, pods: &[Pod]) {
        informer.apply(watcher::Event::Init).await;
        for p in pods {
            informer.apply(watcher::Event::InitApply(p.clone())).await;
        }
        informer.apply(watcher::Event::InitDone).await;
    }

    #[tokio::test]
    async fn a_pod_made_and_deleted_before_the_subscriber_looks_is_still_delivered_both_times() {
        // kube-runtime's subscriber stalls for good on exactly this.
        let mut informer = Informer::<Pod>::new("pod");
        let mut changes = informer.subscribe();
        list(&mut informer, &[]).await;
        informer.apply(watcher::Event::Apply(pod("a", "2"))).await;
        informer.apply(watcher::Event::Delete(pod("a", "3"))).await;
        informer.apply(watcher::Event::Apply(pod("b", "4"))).await;
        assert_eq!(drain(&mut changes), ["a@2", "a@3", "b@4"]);
        assert!(
            informer
                .store()
                .get(&ObjectRef::new("a").within("default"))
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_relist_delivers_what_went_meanwhile_then_every_listed_object() {
        let mut informer = Informer::<Pod>::new("pod");
        let mut changes = informer.subscribe();
        list(&mut informer, &[pod("a", "1"), pod("b", "1")]).await;
        assert_eq!(drain(&mut changes).len(), 2);
        list(&mut informer, &[pod("b", "5"), pod("c", "5")]).await;
        let mut seen = drain(&mut changes);
        assert_eq!(
            seen.remove(0),
            "a@1",
            "the pod gone during the gap comes first"
        );
        seen.sort();
        assert_eq!(seen, ["b@5", "c@5"]);
        assert_eq!(informer.store().state().len(), 2);
    }

    #[tokio::test]
    async fn a_subscriber_is_sent_a_change_once_the_store_holds_it_and_hooks_run_before() {
        let mut informer = Informer::<Pod>::new("pod");
        let store = informer.store();
        let hooked = Arc::new(Mutex::new(Vec::new()));
        informer.on_event({
            let (hooked, store) = (hooked.clone(), store.clone());
            move |event| {
                if let watcher::Event::Apply(p) = event {
                    let held = store.get(&ObjectRef::from_obj(p)).is_some();
                    hooked.lock().expect("hooked").push(held);
                }
            }
        });
        let mut changes = informer.subscribe();
        list(&mut informer, &[]).await;
        informer.apply(watcher::Event::Apply(pod("a", "2"))).await;
        assert_eq!(
            *hooked.lock().expect("hooked"),
            [false],
            "hook before the store"
        );
        let sent = changes.try_recv().expect("sent");
        let stored = store
            .get(&ObjectRef::from_obj(sent.as_ref()))
            .expect("stored");
        assert!(Arc::ptr_eq(&sent, &stored), "the store's own copy");
    }

    #[tokio::test]
    async fn a_subscriber_that_stopped_listening_holds_up_no_one() {
        let mut informer = Informer::<Pod>::new("pod");
        let gone = informer.subscribe();
        let mut changes = informer.subscribe();
        drop(gone);
        list(&mut informer, &[]).await;
        for i in 0..(2 * BUFFER) {
            informer
                .apply(watcher::Event::Apply(pod(&format!("p{i}"), "1")))
                .await;
            drain(&mut changes);
        }
        assert_eq!(informer.subscribers.len(), 1);
    }
}
