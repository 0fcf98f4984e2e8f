//! DeviceTwin's rows: both sides of every property's twin and each device's state.
//!
//! Values are stored as JSON `StampedValue`s (value, timestamp, version), so a restart brings
//! back exactly what apps and the cloud saw, versions included.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, params};
use wedge_core::twin::{StampedValue, TwinProperty, TwinSide};

use super::{Database, Pending, StoreError, sql};

/// One property's stored twin.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredTwin {
    /// Both sides.
    pub twin: TwinProperty,
    /// The desired value last read from the Device's spec (KubeEdge's string form).
    pub spec_desired: Option<String>,
}

/// DeviceTwin's table access.
#[derive(Clone, Debug)]
pub struct TwinStore {
    pub(super) db: Database,
}

fn stamped(text: Option<String>, key: &str) -> Option<StampedValue> {
    let text = text?;
    match serde_json::from_str(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            // A damaged value is as good as none: the next report or desired value replaces it.
            tracing::warn!(twin = key, error = %e, "a stored twin value is damaged; ignoring it");
            None
        }
    }
}

fn json(v: Option<&StampedValue>) -> Option<String> {
    v.and_then(|v| serde_json::to_string(v).ok())
}

impl TwinStore {
    /// Every property of `device`, by name.
    pub fn load(&self, device: &str) -> Result<BTreeMap<String, StoredTwin>, StoreError> {
        let conn = self.db.conn();
        let mut statement = conn
            .prepare_cached(
                "SELECT property, reported, desired, spec_desired FROM twins WHERE device = ?1",
            )
            .map_err(sql(format!("reading the twins of {device}")))?;
        let rows = statement
            .query_map(params![device], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(sql(format!("reading the twins of {device}")))?;
        Ok(rows
            .into_iter()
            .map(|(property, reported, desired, spec_desired)| {
                let key = format!("{device}/{property}");
                let twin = TwinProperty {
                    reported: stamped(reported, &key),
                    desired: stamped(desired, &key),
                };
                (property, StoredTwin { twin, spec_desired })
            })
            .collect())
    }

    /// Writes one property's twin; resolves once it is stored.
    pub async fn save(
        &self,
        device: &str,
        property: &str,
        twin: &StoredTwin,
    ) -> Result<(), StoreError> {
        self.save_all(device, vec![(property.to_owned(), twin.clone())])
            .await
    }

    /// Writes several properties' twins of `device` in one transaction: all of them, or (when
    /// one fails) none, so a report is stored whole or not at all. Resolves once they are
    /// stored.
    pub async fn save_all(
        &self,
        device: &str,
        twins: Vec<(String, StoredTwin)>,
    ) -> Result<(), StoreError> {
        let device = device.to_owned();
        self.db
            .write(
                move |tx| {
                    for (property, twin) in &twins {
                        tx.prepare_cached(
                            "INSERT OR REPLACE INTO twins (device, property, reported, desired, spec_desired) VALUES (?1, ?2, ?3, ?4, ?5)",
                        )
                        .and_then(|mut s| {
                            s.execute(params![
                                device,
                                property,
                                json(twin.twin.reported.as_ref()),
                                json(twin.twin.desired.as_ref()),
                                twin.spec_desired
                            ])
                        })
                        .map_err(sql(format!("storing the twin {device}/{property}")))?;
                    }
                    // On an error above, the writer rolls back this write whole.
                    Ok(())
                },
                |_, _| {},
            )
            .await
    }

    /// Queues a write of values of several properties of `device` (each on its side, reported
    /// or desired), in one savepoint: all of them, or (when one fails) none. Only the sides set
    /// are written: a row's other side and its spec value stay as the disk has them, so writes
    /// queued together never carry each other's values. `settled` runs on the writer thread once
    /// the write's group has settled, in queue order ([`Database::queue`]); returns once queued,
    /// with the answer to await.
    pub(crate) async fn queue_sides(
        &self,
        device: &str,
        values: Vec<(TwinSide, String, StampedValue)>,
        settled: impl FnOnce(&Result<(), StoreError>, bool) + Send + 'static,
    ) -> Result<Pending<()>, StoreError> {
        let device = device.to_owned();
        self.db
            .queue(
                move |tx| {
                    for (side, property, value) in &values {
                        let statement = match side {
                            TwinSide::Reported => {
                                "INSERT INTO twins (device, property, reported) VALUES (?1, ?2, ?3)
                                 ON CONFLICT (device, property) DO UPDATE SET reported = excluded.reported"
                            }
                            TwinSide::Desired => {
                                "INSERT INTO twins (device, property, desired) VALUES (?1, ?2, ?3)
                                 ON CONFLICT (device, property) DO UPDATE SET desired = excluded.desired"
                            }
                        };
                        tx.prepare_cached(statement)
                            .and_then(|mut s| {
                                s.execute(params![device, property, json(Some(value))])
                            })
                            .map_err(sql(format!("storing the twin {device}/{property}")))?;
                    }
                    // On an error above, the writer rolls back this write whole.
                    Ok(())
                },
                settled,
            )
            .await
    }

    /// Queues a write of a device's state; `settled` runs on the writer thread once its group
    /// has settled, in queue order, as for [`TwinStore::queue_sides`].
    pub(crate) async fn queue_state(
        &self,
        device: &str,
        state: &str,
        last_online: Option<&str>,
        settled: impl FnOnce(&Result<(), StoreError>, bool) + Send + 'static,
    ) -> Result<Pending<()>, StoreError> {
        let (device, state) = (device.to_owned(), state.to_owned());
        let last_online = last_online.map(str::to_owned);
        self.db
            .queue(
                move |tx| {
                    tx.execute(
                        "INSERT OR REPLACE INTO device_states (device, state, last_online) VALUES (?1, ?2, ?3)",
                        params![device, state, last_online],
                    )
                    .map_err(sql(format!("storing the state of {device}")))?;
                    Ok(())
                },
                settled,
            )
            .await
    }

    /// Queues `then` to run on the writer thread once every write queued before it has
    /// settled, before any queued after it does (a write of no statements): a read of memory
    /// that sees exactly the writes before it. Returns once queued, with what resolves after it
    /// ran.
    pub(crate) async fn queue_after(
        &self,
        then: impl FnOnce() + Send + 'static,
    ) -> Result<Pending<()>, StoreError> {
        self.db.queue(|_| Ok(()), move |_, _| then()).await
    }

    /// Resolves once every write queued before it has settled ([`Database::settled`]).
    pub(crate) async fn settled(&self) -> Result<(), StoreError> {
        self.db.settled().await
    }

    /// A device's state and when it was last online.
    pub fn state(&self, device: &str) -> Result<Option<(String, Option<String>)>, StoreError> {
        self.db
            .conn()
            .query_row(
                "SELECT state, last_online FROM device_states WHERE device = ?1",
                params![device],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql(format!("reading the state of {device}")))
    }

    /// Records a device's state; resolves once it is stored.
    pub async fn save_state(
        &self,
        device: &str,
        state: &str,
        last_online: Option<&str>,
    ) -> Result<(), StoreError> {
        self.queue_state(device, state, last_online, |_, _| {})
            .await?
            .wait()
            .await
    }

    /// Forgets a device's twins and state (the device left this node).
    pub async fn forget(&self, device: &str) -> Result<(), StoreError> {
        let device = device.to_owned();
        self.db
            .write(
                move |tx| {
                    tx.execute("DELETE FROM twins WHERE device = ?1", params![device])
                        .and_then(|_| {
                            tx.execute(
                                "DELETE FROM device_states WHERE device = ?1",
                                params![device],
                            )
                        })
                        .map_err(sql(format!("forgetting {device}")))?;
                    Ok(())
                },
                |_, _| {},
            )
            .await
    }

    /// The devices that have rows.
    pub fn devices(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.db.conn();
        let mut statement = conn
            .prepare_cached(
                "SELECT device FROM twins UNION SELECT device FROM device_states ORDER BY 1",
            )
            .map_err(sql("listing twin devices"))?;
        statement
            .query_map([], |r| r.get(0))
            .and_then(Iterator::collect)
            .map_err(sql("listing twin devices"))
    }
}
