//! The writer thread through the stores: group commit, a failed transaction, a write that
//! panics, shutdown.

use serde_json::json;
use wedge_core::protocol::{ObjectKey, Operation, ResourceKind};

use super::{Applied, Database, Pending, Queued, StoreError};
use crate::metamanager::MetaManager;

fn status(name: &str) -> ObjectKey {
    ObjectKey {
        kind: ResourceKind::PodStatus,
        namespace: "default".into(),
        name: name.into(),
    }
}

fn pod(name: &str) -> ObjectKey {
    ObjectKey {
        kind: ResourceKind::Pod,
        namespace: "default".into(),
        name: name.into(),
    }
}

#[tokio::test]
async fn writes_queued_while_the_writer_is_busy_share_one_transaction_and_each_is_answered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, tick) = Database::open_gated(&dir.path().join("edge.db")).expect("open");
    let outbox = db.outbox();
    let writers: Vec<_> = (0..50)
        .map(|i| {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                outbox
                    .put(&status(&format!("p{i}")), Operation::Update, &json!(i))
                    .await
            })
        })
        .collect();
    db.until_queued(50).await;
    tick.send(()).expect("tick");
    let mut seqs = Vec::new();
    for writer in writers {
        seqs.push(writer.await.expect("task").expect("stored"));
    }
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 50, "each caller has its own entry");
    let stats = db.write_stats();
    assert_eq!((stats.transactions, stats.writes), (1, 50));
    assert_eq!(outbox.len().expect("len"), 50);
}

#[tokio::test]
async fn a_write_whose_statements_fail_is_rolled_back_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, tick) = Database::open_gated(&dir.path().join("edge.db")).expect("open");
    let outbox = db.outbox();
    let bad = {
        let db = db.clone();
        tokio::spawn(async move {
            db.write(
                |tx| {
                    tx.execute("INSERT INTO counters (name, value) VALUES ('x', 1)", [])
                        .map_err(super::sql("a first row"))?;
                    tx.execute("INSERT INTO no_such_table VALUES (1)", [])
                        .map_err(super::sql("a second row"))?;
                    Ok(())
                },
                |_, _| {},
            )
            .await
        })
    };
    let good = {
        let outbox = outbox.clone();
        tokio::spawn(async move { outbox.put(&status("a"), Operation::Update, &json!(1)).await })
    };
    db.until_queued(2).await;
    tick.send(()).expect("tick");
    let error = bad.await.expect("task").expect_err("refused");
    assert!(error.to_string().contains("a second row"), "{error}");
    good.await.expect("task").expect("stored");
    assert_eq!(db.write_stats().transactions, 1, "one transaction for both");
    let counters: i64 = db
        .conn()
        .query_row("SELECT COUNT(*) FROM counters WHERE name = 'x'", [], |r| {
            r.get(0)
        })
        .expect("count");
    assert_eq!(counters, 0, "the failed write's first row is rolled back");
    assert_eq!(outbox.len().expect("len"), 1);
}

#[tokio::test]
async fn a_failed_transaction_fails_every_write_in_it_and_leaves_memory_as_it_was() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, tick) = Database::open_gated(&dir.path().join("edge.db")).expect("open");
    let meta = MetaManager::load(&db).expect("load");
    let mut pods = meta.subscribe(&[ResourceKind::Pod]);
    db.set_full(true);
    let applies: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let meta = meta.clone();
            tokio::spawn(async move {
                meta.apply(&pod(name), "u", "1", &json!({"name": name}))
                    .await
            })
        })
        .collect();
    let report = {
        let outbox = db.outbox();
        tokio::spawn(async move {
            outbox
                .queue(&status("a"), Operation::Update, &json!(1))
                .await
        })
    };
    db.until_queued(3).await;
    tick.send(()).expect("tick");
    for apply in applies {
        let error = apply.await.expect("task").expect_err("the commit failed");
        assert!(matches!(error, StoreError::Sql { .. }), "{error}");
    }
    assert_eq!(report.await.expect("task"), Queued::Held, "waits in memory");
    assert_eq!(db.write_stats().transactions, 1, "one transaction for all");
    assert!(meta.get(&pod("a")).is_none() && meta.get(&pod("b")).is_none());
    assert!(meta.held().is_empty());
    assert!(pods.take().is_empty(), "nothing announced");
    assert!(
        db.meta().list(ResourceKind::Pod).expect("list").is_empty(),
        "nothing on disk either"
    );

    // The disk takes writes again: the next write succeeds and is the first change announced.
    db.set_full(false);
    drop(tick);
    assert_eq!(
        meta.apply(&pod("a"), "u", "1", &json!({}))
            .await
            .expect("apply"),
        Applied::Inserted
    );
    assert_eq!(pods.changed().await, [pod("a")].into());
    let outbox = db.outbox();
    assert_eq!(outbox.retry().await, (1, Queued::Stored));
    assert_eq!(outbox.get(&status("a")).expect("get"), Some(json!(1)));
}

#[tokio::test]
async fn two_applies_of_one_key_in_a_group_leave_memory_as_they_leave_the_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, tick) = Database::open_gated(&dir.path().join("edge.db")).expect("open");
    let meta = MetaManager::load(&db).expect("load");
    let apply = |rv: &'static str| {
        let meta = meta.clone();
        tokio::spawn(async move {
            meta.apply(&pod("p"), "u", rv, &json!({"rv": rv}))
                .await
                .expect("apply")
        })
    };
    let newer = apply("6");
    db.until_queued(1).await;
    let older = apply("5");
    db.until_queued(2).await;
    tick.send(()).expect("tick");
    assert_eq!(newer.await.expect("task"), Applied::Inserted);
    assert_eq!(older.await.expect("task"), Applied::Unchanged);
    let held = meta.get(&pod("p")).expect("held");
    assert_eq!(held.resource_version, "6");
    let stored = db.meta().get(&pod("p")).expect("get").expect("stored");
    assert_eq!(stored.resource_version, "6");
}

#[tokio::test]
async fn writes_queued_when_the_last_handle_goes_are_committed_before_the_writer_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("edge.db");
    let (db, tick) = Database::open_gated(&path).expect("open");
    let writers: Vec<_> = (0..20)
        .map(|i| {
            let outbox = db.outbox();
            tokio::spawn(async move {
                outbox
                    .put(&status(&format!("p{i}")), Operation::Update, &json!(i))
                    .await
            })
        })
        .collect();
    db.until_queued(20).await;
    let ended = db.writer_ended();
    // Shutdown: this handle goes while all twenty wait, and the gate opens for good. The
    // callers' handles go as they are answered; the last one stops the writer.
    drop(db);
    drop(tick);
    for writer in writers {
        writer
            .await
            .expect("task")
            .expect("stored before the writer ended");
    }
    ended.await;
    let reopened = Database::open(&path).expect("reopen: the writer has ended");
    assert_eq!(reopened.outbox().len().expect("len"), 20);
}

#[tokio::test]
async fn reports_held_in_memory_stay_there_when_the_write_that_carried_them_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::open(&dir.path().join("edge.db")).expect("open");
    let outbox = db.outbox();
    db.set_full(true);
    assert_eq!(
        outbox
            .queue(&status("a"), Operation::Update, &json!("a"))
            .await,
        Queued::Held
    );
    db.set_full(false);
    // The next report carries `a` into the database ahead of itself, but its own row fails:
    // its write is rolled back whole, `a` with it, and both wait in memory.
    db.conn()
        .execute_batch(
            "CREATE TRIGGER refuse_bad BEFORE INSERT ON outbox WHEN NEW.name = 'bad'
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
        )
        .expect("the trigger");
    assert_eq!(
        outbox
            .queue(&status("bad"), Operation::Update, &json!("bad"))
            .await,
        Queued::Held
    );
    let held: Vec<String> = outbox.held().into_iter().map(|h| h.key.name).collect();
    assert_eq!(held, ["a", "bad"]);
    assert_eq!(outbox.pending(0, 10).expect("pending"), vec![]);

    db.conn()
        .execute_batch("DROP TRIGGER refuse_bad")
        .expect("drop the trigger");
    assert_eq!(outbox.retry().await, (2, Queued::Stored));
    let stored: Vec<String> = outbox
        .pending(0, 10)
        .expect("pending")
        .into_iter()
        .map(|e| e.key.name)
        .collect();
    assert_eq!(stored, ["a", "bad"]);
}

/// Queues a row of its own in `counters` (`name`), without awaiting it.
async fn queue_counter(db: &Database, name: &str) -> Pending<()> {
    let name = name.to_owned();
    db.queue(
        move |tx| {
            tx.execute(
                "INSERT INTO counters (name, value) VALUES (?1, 1)",
                [name.as_str()],
            )
            .map_err(super::sql("a counter"))?;
            Ok(())
        },
        |_, _| {},
    )
    .await
    .expect("queued")
}

fn counters(db: &Database, like: &str) -> i64 {
    db.conn()
        .query_row(
            "SELECT COUNT(*) FROM counters WHERE name LIKE ?1",
            [like],
            |r| r.get(0),
        )
        .expect("count")
}

#[tokio::test]
async fn a_write_that_panics_is_rolled_back_and_refused_alone_and_the_group_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, tick) = Database::open_gated(&dir.path().join("edge.db")).expect("open");
    let outbox = db.outbox();
    // A report the disk refused waits in memory.
    db.set_full(true);
    let refused = {
        let outbox = outbox.clone();
        tokio::spawn(async move {
            outbox
                .queue(&status("a"), Operation::Update, &json!("a"))
                .await
        })
    };
    db.until_queued(1).await;
    db.tick_one(&tick).await;
    assert_eq!(refused.await.expect("task"), Queued::Held);
    db.set_full(false);

    // One group: a report that carries the one in memory into the database, a write that
    // panics halfway through its statements, and a write after it.
    let carrier = {
        let outbox = outbox.clone();
        tokio::spawn(async move {
            outbox
                .queue(&status("b"), Operation::Update, &json!("b"))
                .await
        })
    };
    db.until_queued(1).await;
    let panicking = {
        let db = db.clone();
        tokio::spawn(async move {
            db.write(
                |tx| {
                    tx.execute("INSERT INTO counters (name, value) VALUES ('x', 1)", [])
                        .map_err(super::sql("a first row"))?;
                    panic!("a bug in a write");
                    #[allow(unreachable_code)]
                    Ok(())
                },
                |_, _| {},
            )
            .await
        })
    };
    db.until_queued(2).await;
    let after = queue_counter(&db, "after").await;
    db.until_queued(3).await;
    let before = db.write_stats().transactions;
    db.tick_one(&tick).await;

    assert_eq!(carrier.await.expect("task"), Queued::Stored);
    match panicking.await.expect("task") {
        Err(StoreError::Panicked(message)) => {
            assert!(message.contains("a bug in a write"), "{message}");
        }
        other => panic!("the panicking write was answered {other:?}"),
    }
    after.wait().await.expect("the write after it");
    assert_eq!(db.write_stats().transactions - before, 1, "one group");
    assert_eq!(counters(&db, "x"), 0, "the panicking write is rolled back");
    assert_eq!(counters(&db, "after"), 1);
    // Nothing stays marked as being written: the report that waited in memory is stored.
    assert!(!outbox.is_holding(), "{:?}", outbox.held());
    let stored: Vec<String> = outbox
        .pending(0, 10)
        .expect("pending")
        .into_iter()
        .map(|e| e.key.name)
        .collect();
    assert_eq!(stored, ["a", "b"]);

    // The writer goes on.
    drop(tick);
    outbox
        .put(&status("c"), Operation::Update, &json!("c"))
        .await
        .expect("a write after the panic");
}

#[tokio::test]
async fn a_settle_hook_that_panics_still_answers_its_caller_and_the_group_settles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, tick) = Database::open_gated(&dir.path().join("edge.db")).expect("open");
    let panicking = db
        .queue(
            |tx| {
                tx.execute("INSERT INTO counters (name, value) VALUES ('x', 1)", [])
                    .map_err(super::sql("a row"))?;
                Ok(())
            },
            |_, _| panic!("a bug in a settle hook"),
        )
        .await
        .expect("queued");
    let settled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let after = {
        let settled = settled.clone();
        db.queue(
            |_| Ok(()),
            move |_, committed| settled.store(committed, std::sync::atomic::Ordering::SeqCst),
        )
        .await
        .expect("queued")
    };
    db.until_queued(2).await;
    drop(tick);
    panicking
        .wait()
        .await
        .expect("stored: its hook failed, not its write");
    after.wait().await.expect("the write after it");
    assert!(
        settled.load(std::sync::atomic::Ordering::SeqCst),
        "its hook ran"
    );
    assert_eq!(counters(&db, "x"), 1);
}

#[tokio::test]
async fn the_last_handle_dropped_in_the_runtime_does_not_wait_for_the_writes_queued() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("edge.db");
    let (db, tick) = Database::open_gated(&path).expect("open");
    let mut queued = Vec::new();
    for i in 0..3 {
        queued.push(queue_counter(&db, &format!("q{i}")).await);
    }
    db.until_queued(3).await;
    let ended = db.writer_ended();
    // Dropped on a thread inside the runtime, as an async worker would: it returns while the
    // writes still wait for the gate. Waited for up to ten seconds of the wall clock, only
    // so that a drop that blocks fails the test instead of hanging it.
    let runtime = tokio::runtime::Handle::current();
    let (dropped, returned) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _inside = runtime.enter();
        drop(db);
        let _ = dropped.send(());
    });
    let waited = returned.recv_timeout(std::time::Duration::from_secs(10));
    drop(tick);
    assert!(waited.is_ok(), "the drop waited for the writer thread");
    for write in queued {
        write
            .wait()
            .await
            .expect("committed after the last handle went");
    }
    ended.await;
    let reopened = Database::open(&path).expect("reopen: the writer has ended");
    assert_eq!(counters(&reopened, "q%"), 3);
}

#[tokio::test]
async fn close_commits_what_is_queued_and_then_every_handle_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("edge.db");
    let (db, tick) = Database::open_gated(&path).expect("open");
    let mut queued = Vec::new();
    for i in 0..3 {
        queued.push(queue_counter(&db, &format!("q{i}")).await);
    }
    let closing = {
        let db = db.clone();
        tokio::spawn(async move { db.close().await })
    };
    // Behind the three writes.
    db.until_queued(4).await;
    drop(tick);
    closing.await.expect("closed");
    for write in queued {
        write
            .wait()
            .await
            .expect("committed before the writer ended");
    }
    let outbox = db.outbox();
    assert!(matches!(
        outbox
            .put(&status("late"), Operation::Update, &json!(1))
            .await,
        Err(StoreError::Closed)
    ));
    assert_eq!(counters(&db, "q%"), 3);
    // Closing again is a no-op.
    db.close().await;
}
