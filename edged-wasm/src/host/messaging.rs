//! `wedge:messaging`: the edge's MQTT bus as host functions, checked against the pod's grants.
//!
//! The bus lives behind [`BusBackend`]: the edge's EventBus (MQTT) in production, the
//! [`super::in_process`] backend in tests. A subscription is a bounded [`MessageQueue`] the
//! backend pushes into; when it is full the oldest message is dropped and counted, so a guest
//! that stops receiving cannot grow the host's memory.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Resource, ResourceTable};
use wedge_core::backend::{BusBackend, BusMessage, MessageQueue, Qos, SUBSCRIPTION_QUEUE, now_ms};
use wedge_core::grants::PodGrants;
use wedge_core::topic;

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wedge:messaging/imports",
        imports: { default: async | trappable },
        with: { "wedge:messaging/bus.subscription": super::GuestSubscription },
    });
}

use bindings::wedge::messaging::types as wit;

/// The largest payload the host accepts (MQTT's own limit is 256 MiB; edges are small).
pub const MAX_PAYLOAD: usize = 1 << 20;

/// A guest's subscription, held in its resource table.
pub struct GuestSubscription {
    filter: String,
    queue: Arc<MessageQueue>,
}

/// The messaging half of a store's data.
#[derive(Clone)]
pub struct MessagingCtx {
    pub(crate) backend: Arc<dyn BusBackend>,
    pub(crate) grants: Arc<PodGrants>,
}

impl MessagingCtx {
    /// A context for one pod.
    pub fn new(backend: Arc<dyn BusBackend>, grants: Arc<PodGrants>) -> Self {
        Self { backend, grants }
    }
}

/// The borrowed view the generated traits are implemented on.
pub struct MessagingView<'a> {
    pub(crate) ctx: &'a mut MessagingCtx,
    pub(crate) table: &'a mut ResourceTable,
}

/// Marks [`MessagingView`] as the data the bindings hand to host functions.
pub struct MessagingData;

impl wasmtime::component::HasData for MessagingData {
    type Data<'a> = MessagingView<'a>;
}

/// Converts a bus message to its WIT form.
pub fn message_to_wit(m: BusMessage) -> wit::Message {
    wit::Message {
        topic: m.topic,
        payload: m.payload,
        retained: m.retained,
        received_ms: m.received_ms,
    }
}

impl wit::Host for MessagingView<'_> {}

impl bindings::wedge::messaging::bus::Host for MessagingView<'_> {
    async fn publish(
        &mut self,
        topic_name: String,
        payload: Vec<u8>,
        qos: wit::Qos,
        retain: bool,
    ) -> wasmtime::Result<Result<(), wit::Error>> {
        if let Err(e) = topic::validate_name(&topic_name) {
            return Ok(Err(wit::Error::InvalidTopic(e.to_string())));
        }
        if !self.ctx.grants.may_publish(&topic_name) {
            return Ok(Err(wit::Error::NotPermitted(format!(
                "this pod may not publish on {topic_name:?} (messaging.wedge.io/publish)"
            ))));
        }
        if payload.len() > MAX_PAYLOAD {
            return Ok(Err(wit::Error::PayloadTooLarge(format!(
                "{} bytes; the limit is {MAX_PAYLOAD}",
                payload.len()
            ))));
        }
        let qos = match qos {
            wit::Qos::AtMostOnce => Qos::AtMostOnce,
            wit::Qos::AtLeastOnce => Qos::AtLeastOnce,
            wit::Qos::ExactlyOnce => Qos::ExactlyOnce,
        };
        let message = BusMessage {
            topic: topic_name,
            payload,
            retained: false,
            received_ms: now_ms(),
        };
        Ok(self
            .ctx
            .backend
            .publish(message, qos, retain)
            .await
            .map_err(|e| wit::Error::Unavailable(e.to_string())))
    }

    async fn subscribe(
        &mut self,
        filter: String,
    ) -> wasmtime::Result<Result<Resource<GuestSubscription>, wit::Error>> {
        if let Err(e) = topic::validate_filter(&filter) {
            return Ok(Err(wit::Error::InvalidTopic(e.to_string())));
        }
        if !self.ctx.grants.may_subscribe(&filter) {
            return Ok(Err(wit::Error::NotPermitted(format!(
                "this pod may not subscribe to {filter:?} (messaging.wedge.io/subscribe)"
            ))));
        }
        let queue = Arc::new(MessageQueue::default());
        if let Err(e) = self.ctx.backend.subscribe(&filter, &queue).await {
            return Ok(Err(wit::Error::Unavailable(e.to_string())));
        }
        Ok(Ok(self.table.push(GuestSubscription { filter, queue })?))
    }
}

impl bindings::wedge::messaging::bus::HostSubscription for MessagingView<'_> {
    async fn filter(&mut self, sub: Resource<GuestSubscription>) -> wasmtime::Result<String> {
        Ok(self.table.get(&sub)?.filter.clone())
    }

    async fn receive(
        &mut self,
        sub: Resource<GuestSubscription>,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<Option<wit::Message>, wit::Error>> {
        let queue = self.table.get(&sub)?.queue.clone();
        let lost = queue.take_lost();
        if lost > 0 {
            return Ok(Err(wit::Error::Unavailable(format!(
                "{lost} messages were dropped: the subscription's queue ({SUBSCRIPTION_QUEUE}) was full"
            ))));
        }
        let next = queue
            .next(Duration::from_millis(u64::from(timeout_ms)))
            .await;
        Ok(Ok(next.map(message_to_wit)))
    }

    async fn drop(&mut self, sub: Resource<GuestSubscription>) -> wasmtime::Result<()> {
        // Dropping the queue ends delivery: backends hold it weakly.
        self.table.delete(sub)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u8) -> BusMessage {
        BusMessage {
            topic: "t".into(),
            payload: vec![n],
            retained: false,
            received_ms: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn queues_are_bounded_and_drop_the_oldest() {
        let q = MessageQueue::default();
        for i in 0..(SUBSCRIPTION_QUEUE + 2) {
            q.push(msg((i % 256) as u8));
        }
        assert_eq!(q.take_lost(), 2);
        assert_eq!(q.take_lost(), 0);
        assert_eq!(
            q.next(Duration::ZERO).await.map(|m| m.payload),
            Some(vec![2])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn receive_waits_for_a_message_or_times_out() {
        let q = Arc::new(MessageQueue::default());
        assert_eq!(q.next(Duration::from_millis(50)).await, None);
        let pusher = q.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            pusher.push(msg(7));
        });
        assert_eq!(
            q.next(Duration::from_secs(5)).await.map(|m| m.payload),
            Some(vec![7])
        );
    }
}
