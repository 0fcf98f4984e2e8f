//! Watches: a stream of `{"type","object"}` lines, one per change, from a resourceVersion.
//!
//! - No version (or `0`): synthetic `ADDED` events for what exists, then changes; with
//!   `sendInitialEvents=true`, a bookmark annotated `k8s.io/initial-events-end` after them
//!   (the streaming list kube-rs and client-go can ask for).
//! - A version: every change after it, or, when the history no longer holds it, one `ERROR`
//!   event with a 410 `Expired` status, as kube-apiserver sends, so clients list again.
//! - Selectors apply to each event; an object that stops matching is sent as `DELETED`, one that
//!   starts matching as `ADDED`.
//! - Bookmarks every [`BOOKMARK_EVERY`] when `allowWatchBookmarks=true`.
//!
//! Each watch is a task writing into a bounded channel that the response body reads: a client
//! that stops reading stalls only its own task, and one that goes away ends it.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::conversion::Presenter;
use super::error::ApiError;
use super::list::Filter;
use super::request::ResourcePath;
use super::{Api, Body, Call};
use crate::registry::ResourceInfo;
use crate::storage::{Event, EventType, StoreError, StoredObject, WatchStream};

/// How often a watch that allows bookmarks gets one.
pub const BOOKMARK_EVERY: Duration = Duration::from_secs(10);
/// How long a watch lasts when the client does not say (kube-apiserver: 30 to 60 minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
/// Lines buffered per watch before its task waits for the client.
const BUFFER: usize = 128;

/// GET with `watch=true`.
pub(crate) fn serve(
    api: &Api,
    call: &Call<'_>,
    info: &ResourceInfo,
    path: &ResourcePath,
    name: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let filter = match name {
        // A watch of one object (legacy `/watch/.../name`) selects it by name.
        Some(name) => {
            let fields = match call.query.get("fieldSelector") {
                Some(f) => format!("{f},metadata.name={name}"),
                None => format!("metadata.name={name}"),
            };
            Filter::from_query(info, &call.query.with("fieldSelector", &fields))?
        }
        None => Filter::from_query(info, &call.query)?,
    };
    let timeout = call
        .query
        .number::<u64>("timeoutSeconds")?
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let bookmarks = call.query.flag("allowWatchBookmarks");
    let send_initial = call.query.get("sendInitialEvents").map(|v| v == "true");
    let resource = info.storage_key();
    let namespace = path.namespace.clone();
    let requested = call.query.get("resourceVersion");

    let (initial, from) = match (requested, send_initial) {
        (None | Some("0"), None | Some(true)) | (Some(_), Some(true)) => {
            let (items, rv, _) = api
                .store
                .list(&resource, namespace.as_deref(), None, None, |o| {
                    filter.keep(o)
                });
            (items, rv)
        }
        (None | Some("0"), Some(false)) => (Vec::new(), api.store.current_rv()),
        (Some(v), _) => (Vec::new(), super::list::parse_resource_version(v)?),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(BUFFER);
    // A version the store has not reached (read after subscribing, so a write in between
    // counts): one ERROR event, as kube-apiserver's watch cache sends once it has waited for
    // it (the store here is never behind, so it does not wait).
    let stream = match api.store.watch(&resource, namespace.as_deref(), from) {
        Ok(_) if from > api.store.current_rv() => {
            let status = ApiError::TooLargeResourceVersion {
                requested: from,
                current: api.store.current_rv(),
            }
            .status();
            let _ = tx.try_send(line("ERROR", &status));
            None
        }
        Ok(s) => Some(s),
        Err(StoreError::Gone { requested, oldest }) => {
            let status =
                ApiError::Gone(format!("too old resource version: {requested} ({oldest})"))
                    .status();
            let _ = tx.try_send(line("ERROR", &status));
            None
        }
        Err(e) => return Err(ApiError::from_store(e, &info.group, &info.plural)),
    };
    if let Some(stream) = stream {
        let watch = Watch {
            filter,
            info: info.clone(),
            presenter: super::conversion::Presenter::new(info),
            bookmarks,
            initial_end: send_initial == Some(true),
        };
        let shutdown = api.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = watch.run(stream, initial, tx) => {}
                () = tokio::time::sleep(timeout) => {}
                () = shutdown.cancelled() => {}
            }
        });
    }
    let body = StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, super::BodyError>(Frame::data(chunk)), rx))
    }));
    let mut response = Response::new(body.boxed_unsync());
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(response)
}

/// One watch event line.
fn line(kind: &str, object: &Value) -> Bytes {
    let mut out = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

/// One watch event line from stored bytes, in the version `presenter` shows (without parsing
/// them when they are in it).
fn stored_line(presenter: &Presenter, kind: &str, object: &StoredObject) -> Bytes {
    let object = presenter.present(object);
    let mut out = Vec::with_capacity(object.json.len() + 32);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    out.extend_from_slice(&object.json);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

struct Watch {
    filter: Filter,
    info: ResourceInfo,
    presenter: Presenter,
    bookmarks: bool,
    initial_end: bool,
}

impl Watch {
    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(
            "BOOKMARK",
            &json!({"kind": self.info.kind, "apiVersion": self.info.api_version(), "metadata": metadata}),
        )
    }

    /// What a change looks like to this watch's selectors, if anything.
    fn translate<'e>(&self, event: &'e Event) -> Option<(&'static str, &'e StoredObject)> {
        if self.filter.is_empty() {
            return Some((event.kind.as_str(), &event.object));
        }
        let now = self.filter.keep(&event.object);
        let before = event.prev.as_ref().map(|p| self.filter.keep(p));
        match (event.kind, before, now) {
            (EventType::Added, _, true) => Some(("ADDED", &event.object)),
            (EventType::Deleted, _, true) => Some(("DELETED", &event.object)),
            (EventType::Modified, Some(false), true) => Some(("ADDED", &event.object)),
            (EventType::Modified, Some(true), false) => Some(("DELETED", &event.object)),
            (EventType::Modified, _, true) => Some(("MODIFIED", &event.object)),
            _ => None,
        }
    }

    async fn run(
        self,
        mut stream: WatchStream,
        initial: Vec<StoredObject>,
        tx: mpsc::Sender<Bytes>,
    ) {
        for obj in &initial {
            if tx
                .send(stored_line(&self.presenter, "ADDED", obj))
                .await
                .is_err()
            {
                return;
            }
        }
        if self.initial_end
            && tx
                .send(self.bookmark(stream.position(), true))
                .await
                .is_err()
        {
            return;
        }
        let mut ticker = tokio::time::interval(BOOKMARK_EVERY);
        ticker.tick().await;
        loop {
            tokio::select! {
                next = stream.next() => match next {
                    Ok(event) => {
                        if let Some((kind, obj)) = self.translate(&event)
                            && tx.send(stored_line(&self.presenter, kind, obj)).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(ended) => {
                        tracing::debug!("watch ended: {ended}");
                        let status = ApiError::Gone(format!("the watch must restart: {ended}")).status();
                        let _ = tx.send(line("ERROR", &status)).await;
                        return;
                    }
                },
                _ = ticker.tick(), if self.bookmarks => {
                    if tx.send(self.bookmark(stream.position(), false)).await.is_err() {
                        return;
                    }
                }
                () = tx.closed() => return,
            }
        }
    }
}
