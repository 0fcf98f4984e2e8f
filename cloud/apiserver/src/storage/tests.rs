//! Store tests against real SQLite files.

use std::time::Duration;

use serde_json::json;

use super::*;

fn pod(name: &str, labels: serde_json::Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "labels": labels}})
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::new("pods", "default", name)
}

#[tokio::test]
async fn writes_are_versioned_and_checked() {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(&dir.path().join("db")).expect("open");
    let a = store
        .create(&key("a"), pod("a", json!({"app": "x"})))
        .await
        .expect("created");
    assert_eq!(a.rv, 1);
    assert_eq!(a.value()["metadata"]["resourceVersion"], "1");
    assert_eq!(a.labels.get("app").map(String::as_str), Some("x"));
    assert!(matches!(
        store.create(&key("a"), pod("a", json!({}))).await,
        Err(StoreError::AlreadyExists(_))
    ));

    let b = store
        .update(&key("a"), pod("a", json!({"app": "y"})), Some(1))
        .await
        .expect("updated");
    assert_eq!(b.rv, 2);
    let stale = store.update(&key("a"), pod("a", json!({})), Some(1)).await;
    assert!(
        matches!(
            stale,
            Err(StoreError::Conflict {
                expected: 1,
                found: 2,
                ..
            })
        ),
        "{stale:?}"
    );
    assert_eq!(
        store.get(&key("a")).expect("get").rv,
        2,
        "a refused write changes nothing"
    );
    assert!(matches!(
        store
            .update(&key("nope"), pod("nope", json!({})), None)
            .await,
        Err(StoreError::NotFound(_))
    ));

    let gone = store.delete(&key("a"), None).await.expect("deleted");
    assert_eq!((gone.rv, store.current_rv()), (3, 3));
    assert!(matches!(store.get(&key("a")), Err(StoreError::NotFound(_))));
    assert!(matches!(
        store.create(&key("x"), json!({"kind": "Pod"})).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(store.current_rv(), 3, "an invalid object takes no version");
}

#[tokio::test]
async fn acknowledged_writes_survive_reopening() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("db");
    {
        let store = Store::open(&path).expect("open");
        for name in ["a", "b", "c"] {
            store
                .create(&key(name), pod(name, json!({"n": name})))
                .await
                .expect("created");
        }
        store.delete(&key("b"), None).await.expect("deleted");
    }
    let store = Store::open(&path).expect("reopen");
    assert_eq!(store.current_rv(), 4);
    let (items, rv, more) = store.list("pods", Some("default"), None, None, |_| true);
    let names: Vec<_> = items
        .iter()
        .map(|o| o.value()["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names, [Some("a".to_owned()), Some("c".to_owned())]);
    assert_eq!((rv, more), (4, false));
    assert_eq!(
        store
            .get(&key("c"))
            .expect("c")
            .labels
            .get("n")
            .map(String::as_str),
        Some("c")
    );
    assert_eq!(
        store
            .create(&key("d"), pod("d", json!({})))
            .await
            .expect("next")
            .rv,
        5
    );
}

#[tokio::test]
async fn lists_page_and_filter_within_a_resource() {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(&dir.path().join("db")).expect("open");
    for i in 0..10 {
        let name = format!("p{i}");
        store
            .create(
                &key(&name),
                pod(&name, json!({"even": (i % 2 == 0).to_string()})),
            )
            .await
            .expect("created");
    }
    store
        .create(&ObjectKey::new("pods", "other", "q"), pod("q", json!({})))
        .await
        .expect("other ns");
    store
        .create(
            &ObjectKey::new("configmaps", "default", "c"),
            json!({"metadata": {"name": "c"}}),
        )
        .await
        .expect("cm");

    let (page, _, more) = store.list("pods", Some("default"), None, Some(4), |_| true);
    assert_eq!((page.len(), more), (4, true));
    let last = page.last().expect("page").value();
    let after = key(last["metadata"]["name"].as_str().expect("name"));
    let (rest, _, more) = store.list("pods", Some("default"), Some(&after), None, |_| true);
    assert_eq!((rest.len(), more), (6, false));
    let (all, _, _) = store.list("pods", None, None, None, |_| true);
    assert_eq!(all.len(), 11, "every namespace, no configmaps");
    let (even, _, _) = store.list("pods", Some("default"), None, None, |o| {
        o.labels.get("even").is_some_and(|v| v == "true")
    });
    assert_eq!(even.len(), 5);
}

#[tokio::test]
async fn watches_replay_history_then_follow_live_events() {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(&dir.path().join("db")).expect("open");
    store
        .create(&key("a"), pod("a", json!({})))
        .await
        .expect("1");
    store
        .create(
            &ObjectKey::new("configmaps", "default", "c"),
            json!({"metadata": {"name": "c"}}),
        )
        .await
        .expect("2");
    store
        .update(&key("a"), pod("a", json!({"v": "2"})), None)
        .await
        .expect("3");

    let mut w = store.watch("pods", Some("default"), 1).expect("watch");
    let e = w.next().await.expect("from history");
    assert_eq!((e.rv, e.kind), (3, EventType::Modified));
    store.delete(&key("a"), None).await.expect("4");
    store
        .create(&ObjectKey::new("pods", "other", "b"), pod("b", json!({})))
        .await
        .expect("5, other namespace");
    store
        .create(&key("z"), pod("z", json!({})))
        .await
        .expect("6");
    let e = w.next().await.expect("live");
    assert_eq!(
        (e.rv, e.kind, e.key.name.as_str()),
        (4, EventType::Deleted, "a")
    );
    let e = w.next().await.expect("live");
    assert_eq!((e.rv, e.key.name.as_str()), (6, "z"));
    assert_eq!(w.position(), 6);
    let nothing = tokio::time::timeout(Duration::from_millis(50), w.next()).await;
    assert!(nothing.is_err(), "no more events");
}

#[tokio::test]
async fn watches_resume_after_a_restart_and_too_old_versions_are_gone() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("db");
    {
        let store = Store::open(&path).expect("open");
        for i in 0..5 {
            store
                .create(&key(&format!("p{i}")), pod("p", json!({})))
                .await
                .expect("created");
        }
    }
    let store = Store::open_with_history(
        &path,
        HistoryLimits {
            events: 20,
            bytes: HISTORY_BYTES,
        },
    )
    .expect("reopen");
    let mut w = store.watch("pods", None, 3).expect("resume from 3");
    assert_eq!(w.next().await.expect("4").rv, 4);
    assert_eq!(w.next().await.expect("5").rv, 5);

    // Push version 1 out of the history.
    for i in 0..20 {
        store
            .update(&key("p0"), pod("p0", json!({"i": i.to_string()})), None)
            .await
            .expect("update");
    }
    match store.watch("pods", None, 1) {
        Err(StoreError::Gone {
            requested: 1,
            oldest,
        }) => assert!(oldest > 1),
        other => panic!("expected Gone, got {:?}", other.err()),
    }
}

#[tokio::test]
async fn derived_values_are_rebuilt_only_when_their_resources_change() {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(&dir.path().join("db")).expect("open");
    let builds = std::sync::atomic::AtomicUsize::new(0);
    let count_pods = |store: &Store| {
        builds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        store.list("pods", None, None, None, |_| true).0.len()
    };
    assert_eq!(*store.derived("pods", &["pods"], count_pods), 0);
    store
        .create(&key("a"), pod("a", json!({})))
        .await
        .expect("a");
    assert_eq!(*store.derived("pods", &["pods"], count_pods), 1);
    assert_eq!(*store.derived("pods", &["pods"], count_pods), 1);
    assert_eq!(builds.load(std::sync::atomic::Ordering::SeqCst), 2);
    // A write elsewhere leaves the value as it is.
    store
        .create(
            &ObjectKey::new("configmaps", "default", "c"),
            json!({"metadata": {"name": "c"}}),
        )
        .await
        .expect("configmap");
    assert_eq!(*store.derived("pods", &["pods"], count_pods), 1);
    assert_eq!(builds.load(std::sync::atomic::Ordering::SeqCst), 2);
    store.delete(&key("a"), None).await.expect("deleted");
    assert_eq!(*store.derived("pods", &["pods"], count_pods), 0);
    assert_eq!(builds.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test]
async fn the_history_keeps_a_byte_budget_on_disk_too_and_objects_have_a_size_limit() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("db");
    let limits = HistoryLimits {
        events: 1000,
        bytes: 64 * 1024,
    };
    let big = "x".repeat(10 * 1024);
    {
        let store = Store::open_with_history(&path, limits).expect("open");
        store
            .create(&key("p"), pod("p", json!({})))
            .await
            .expect("created");
        for i in 0..20 {
            store
                .update(
                    &key("p"),
                    pod("p", json!({"i": i.to_string(), "blob": big.clone()})),
                    None,
                )
                .await
                .expect("update");
        }
        // Twenty 10 KiB versions do not fit in 64 KiB: the first ones expired.
        let oldest = match store.watch("pods", None, 1) {
            Err(StoreError::Gone { oldest, .. }) => oldest,
            other => panic!("expected Gone, got {:?}", other.err()),
        };
        assert!((15..21).contains(&oldest), "oldest kept {oldest}");
        let mut w = store
            .watch("pods", None, oldest)
            .expect("the newest are kept");
        assert_eq!(w.next().await.expect("event").rv, oldest + 1);

        let huge = "y".repeat(MAX_OBJECT_BYTES);
        match store
            .create(&key("huge"), pod("huge", json!({"blob": huge})))
            .await
        {
            Err(StoreError::TooLarge { size, .. }) => assert!(size > MAX_OBJECT_BYTES),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(matches!(
            store.get(&key("huge")),
            Err(StoreError::NotFound(_))
        ));
    }
    // What expired in memory was dropped on disk in the same commits: a restart with room for
    // everything still starts from the same oldest version.
    let store = Store::open(&path).expect("reopen");
    assert!(matches!(
        store.watch("pods", None, 1),
        Err(StoreError::Gone { .. })
    ));
}

fn lease(n: u32) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": "edge-a", "namespace": "kube-node-lease", "labels": {"n": n.to_string()}}})
}

const LEASES: &str = "leases.coordination.k8s.io";

#[tokio::test]
async fn a_storm_on_one_resource_lags_no_watch_of_another() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("db");
    let limits = HistoryLimits {
        events: 2 * LIVE_EVENTS,
        bytes: HISTORY_BYTES,
    };
    let store = Store::open_with_history(&path, limits).expect("open");
    let lease_key = ObjectKey::new(LEASES, "kube-node-lease", "edge-a");
    let created = store.create(&lease_key, lease(0)).await.expect("lease").rv;
    let mut leases = store.watch(LEASES, None, created).expect("watch leases");
    let mut early_pods = store.watch("pods", None, created).expect("watch pods");
    let mut late_pods = None;
    let mut renewed = 0;
    // Three channels' worth of pods, none of them read while they are written, with the
    // lease renewed in the middle; a second pod watch starts when 1.5 channels remain.
    let storm = 3 * LIVE_EVENTS;
    for i in 0..storm {
        if i == storm / 2 {
            renewed = store
                .update(&lease_key, lease(1), None)
                .await
                .expect("renew")
                .rv;
        }
        if i == storm - LIVE_EVENTS * 3 / 2 {
            late_pods = Some(
                store
                    .watch("pods", None, store.current_rv())
                    .expect("watch"),
            );
        }
        let name = format!("p{i}");
        store
            .create(&key(&name), pod(&name, json!({})))
            .await
            .expect("pod");
    }

    // The lease watch has not read the storm's 3,000 events: it never held them.
    assert_eq!(
        leases.position(),
        created,
        "its channel still holds the renewal"
    );
    let e = leases.next().await.expect("the renewal, not a lag");
    assert_eq!((e.rv, e.kind), (renewed, EventType::Modified));
    assert_eq!(e.object.labels.get("n").map(String::as_str), Some("1"));
    assert_eq!(
        leases.position(),
        store.current_rv(),
        "a bookmark reports every version seen, the other resources' included"
    );

    // 1.5 channels behind: caught up from the pods' window, every event once, in order.
    let mut late = late_pods.expect("started");
    let first = storm - LIVE_EVENTS * 3 / 2;
    for i in first..storm {
        let e = late.next().await.expect("caught up from the window");
        assert_eq!(e.key.name, format!("p{i}"));
    }
    assert_eq!(late.position(), store.current_rv());

    // Three channels behind is further than the pods' window reaches: a relist.
    assert!(matches!(
        early_pods.next().await,
        Err(WatchEnded::Lagged(_))
    ));
    // And so is a new watch from there; the leases' window still reaches back to it.
    let oldest = match store.watch("pods", None, created) {
        Err(StoreError::Gone { oldest, .. }) => oldest,
        other => panic!("expected Gone, got {:?}", other.err()),
    };
    assert_eq!(
        store.current_rv() - oldest - 1,
        2 * LIVE_EVENTS as u64,
        "the pods' window is full (the renewal is among their versions)"
    );
    store
        .watch(LEASES, None, created)
        .expect("the lease's window");

    // The windows are where they were after a restart.
    drop(store);
    let store = Store::open_with_history(&path, limits).expect("reopen");
    let mut leases = store
        .watch(LEASES, None, created)
        .expect("the lease's window");
    assert_eq!(leases.next().await.expect("replayed").rv, renewed);
    match store.watch("pods", None, created) {
        Err(StoreError::Gone { oldest: again, .. }) => assert_eq!(again, oldest),
        other => panic!("expected Gone, got {:?}", other.err()),
    }
}

#[tokio::test]
async fn a_busy_resource_gives_way_first_and_a_quiet_one_keeps_its_past() {
    let dir = tempfile::tempdir().expect("dir");
    let limits = HistoryLimits {
        events: 1000,
        bytes: 64 * 1024,
    };
    let store = Store::open_with_history(&dir.path().join("db"), limits).expect("open");
    let lease_key = ObjectKey::new(LEASES, "kube-node-lease", "edge-a");
    let mut lease_bytes = store
        .create(&lease_key, lease(0))
        .await
        .expect("lease")
        .json
        .len();
    for i in 0..10 {
        lease_bytes += store
            .update(&lease_key, lease(i), None)
            .await
            .expect("renew")
            .json
            .len();
    }
    let blob = "x".repeat(1024);
    let mut sizes = HashMap::new();
    for i in 0..500 {
        let name = format!("p{i}");
        let stored = store
            .create(&key(&name), pod(&name, json!({"blob": blob.clone()})))
            .await
            .expect("pod");
        sizes.insert(stored.rv, stored.json.len());
    }
    // The leases' eleven events are all still there; the pods have the rest of the bytes.
    let mut leases = store.watch(LEASES, None, 0).expect("from the start");
    for rv in 1..=11 {
        assert_eq!(leases.next().await.expect("lease").rv, rv);
    }
    let current = store.current_rv();
    let oldest = match store.watch("pods", None, 0) {
        Err(StoreError::Gone { oldest, .. }) => oldest,
        other => panic!("expected Gone, got {:?}", other.err()),
    };
    let pods_bytes: usize = (oldest + 1..=current).map(|rv| sizes[&rv]).sum();
    assert!(lease_bytes + pods_bytes <= limits.bytes);
    assert!(
        lease_bytes + pods_bytes + sizes[&oldest] > limits.bytes,
        "the pods keep what the budget leaves"
    );
}

#[tokio::test]
async fn a_group_is_decided_in_order_committed_once_and_every_write_answered() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("db");
    let store = Store::open_gated(&path).expect("open");
    let mut watch = store.watch("pods", None, 0).expect("watch");
    // Queued before the writer takes any: one group, each write decided with the earlier
    // ones in.
    let a = store.create(&key("a"), pod("a", json!({})));
    let b = store.create(&key("b"), pod("b", json!({})));
    let again = store.create(&key("a"), pod("a", json!({})));
    let a2 = store.update(&key("a"), pod("a", json!({"v": "2"})), Some(1));
    let stale = store.update(&key("b"), pod("b", json!({})), Some(7));
    let b_gone = store.delete(&key("b"), None);
    store.let_group_through();
    let (a, b, again, a2, stale, b_gone) = tokio::join!(a, b, again, a2, stale, b_gone);
    assert_eq!(a.expect("a").rv, 1);
    assert_eq!(b.expect("b").rv, 2);
    assert!(
        matches!(again, Err(StoreError::AlreadyExists(_))),
        "{again:?}"
    );
    let a2 = a2.expect("the update sees the group's create");
    assert_eq!(
        (a2.rv, a2.labels.get("v").map(String::as_str)),
        (3, Some("2"))
    );
    assert!(
        matches!(
            stale,
            Err(StoreError::Conflict {
                expected: 7,
                found: 2,
                ..
            })
        ),
        "{stale:?}"
    );
    assert_eq!(
        b_gone.expect("deleted").rv,
        4,
        "refused writes take no version"
    );
    assert_eq!(store.current_rv(), 4);
    for (rv, kind, name) in [
        (1, EventType::Added, "a"),
        (2, EventType::Added, "b"),
        (3, EventType::Modified, "a"),
        (4, EventType::Deleted, "b"),
    ] {
        let e = watch.next().await.expect("event");
        assert_eq!((e.rv, e.kind, e.key.name.as_str()), (rv, kind, name));
    }
    drop(store);
    let store = Store::open(&path).expect("reopen");
    assert_eq!(store.current_rv(), 4);
    assert_eq!(store.get(&key("a")).expect("a").rv, 3);
    assert!(matches!(store.get(&key("b")), Err(StoreError::NotFound(_))));
}

#[tokio::test]
async fn a_failed_commit_refuses_its_whole_group_and_publishes_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("db");
    let store = Store::open_gated(&path).expect("open");
    let mut watch = store.watch("pods", None, 0).expect("watch");
    // SQLite itself refuses one write of the group: a trigger, from a connection of the test's.
    let conn = rusqlite::Connection::open(&path).expect("second connection");
    conn.execute_batch(
        "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.name = 'poison'
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
    )
    .expect("trigger");
    let group = [
        store.create(&key("a"), pod("a", json!({}))),
        store.create(&key("poison"), pod("poison", json!({}))),
        store.create(&key("c"), pod("c", json!({}))),
    ];
    store.let_group_through();
    for answer in futures::future::join_all(group).await {
        match answer {
            Err(StoreError::Db(e)) => assert!(e.to_string().contains("refused by the test"), "{e}"),
            other => panic!("expected the commit's error, got {other:?}"),
        }
    }
    assert_eq!(store.current_rv(), 0);
    assert!(matches!(store.get(&key("a")), Err(StoreError::NotFound(_))));

    // The next group takes the versions the failed one did not use, and is the first thing
    // watchers see.
    let d = store.create(&key("d"), pod("d", json!({})));
    store.let_group_through();
    assert_eq!(d.await.expect("d").rv, 1);
    let e = watch.next().await.expect("event");
    assert_eq!((e.rv, e.key.name.as_str()), (1, "d"));
    drop(store);
    let store = Store::open(&path).expect("reopen");
    let (items, rv, _) = store.list("pods", None, None, None, |_| true);
    assert_eq!((items.len(), rv), (1, 1), "only d is on disk");
}

#[tokio::test]
async fn concurrent_writes_get_consecutive_versions_and_watchers_see_them_in_order() {
    let dir = tempfile::tempdir().expect("dir");
    let store = std::sync::Arc::new(Store::open(&dir.path().join("db")).expect("open"));
    let mut watch = store.watch("pods", None, 0).expect("watch");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let store = store.clone();
        tasks.spawn(async move {
            let name = format!("p{i}");
            let created = store.create(&key(&name), pod(&name, json!({}))).await;
            (name, created.expect("created").rv)
        });
    }
    let mut answered = HashMap::new();
    while let Some(done) = tasks.join_next().await {
        let (name, rv) = done.expect("task");
        answered.insert(rv, name);
    }
    assert_eq!(answered.len(), 200, "every version once");
    for rv in 1..=200 {
        let e = watch.next().await.expect("event");
        assert_eq!(e.rv, rv);
        assert_eq!(
            answered.get(&rv),
            Some(&e.key.name),
            "the answer is the event"
        );
    }
}

#[tokio::test]
async fn all_windows_together_hold_at_most_windows_times_one() {
    let dir = tempfile::tempdir().expect("dir");
    let limits = HistoryLimits {
        events: 10,
        bytes: HISTORY_BYTES,
    };
    let store = Store::open_with_history(&dir.path().join("db"), limits).expect("open");
    let resources: Vec<String> = (0..=WINDOWS)
        .map(|i| format!("widgets{i}.example.com"))
        .collect();
    let mut first = Vec::new();
    for resource in &resources {
        first.push(store.current_rv());
        for i in 0..limits.events {
            let name = format!("w{i}");
            store
                .create(
                    &ObjectKey::new(resource, "", &name),
                    json!({"metadata": {"name": name}}),
                )
                .await
                .expect("created");
        }
    }
    // One window more than the budget holds: they share it, each keeping its newest events.
    let mut held = Vec::new();
    for (resource, from) in resources.iter().zip(&first) {
        let newest = from + limits.events as u64;
        held.push(match store.watch(resource, None, *from) {
            Ok(_) => limits.events as u64,
            Err(StoreError::Gone { oldest, .. }) => newest - oldest,
            Err(other) => panic!("{other}"),
        });
    }
    assert_eq!(
        held.iter().sum::<u64>(),
        (WINDOWS * limits.events) as u64,
        "{held:?}"
    );
    assert!(held.iter().all(|h| *h >= 7), "equal shares: {held:?}");
}
