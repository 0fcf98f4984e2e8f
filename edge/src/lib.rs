//! Wedge's edge agent, `edgecore`: KubeEdge's edge modules, in one process.
//!
//! - [`metamanager`]: MetaManager, owner of every object the cloud sent for this node (pods
//!   and what they reference, Devices, DeviceModels, Rules): stored, then kept in memory parsed
//!   once per version, and the changed keys told to the modules that subscribed to their kinds.
//! - [`store`]: the edge's SQLite database: MetaManager's `objects` table (applied idempotently
//!   by resourceVersion, Secrets encrypted at rest when configured), the outbox (reports that
//!   survive restarts and disconnections, coalesced to the newest per object; held in memory
//!   when the disk is full) and DeviceTwin's twins.
//! - [`edgehub`]: the one connection to CloudHub: reconnecting, acknowledged, resynced.
//! - [`edged`]: runs the pods MetaManager holds, Wasm and containers (through CRI), and reports
//!   their status, the node's status and its lease through the outbox.
//! - [`edgestream`]: serves the streams the cloud opens on EdgeHub's connection (`kubectl
//!   logs`, `exec`, `attach`, `port-forward`) against Edged's pods.
//! - [`devicetwin`]: DeviceTwin: the devices bound to this node, their twins in SQLite, the
//!   `wedge:device` backend for apps, and the Device status reported to the cloud.
//! - [`eventbus`]: EventBus: the MQTT bus (the embedded broker, with logins and ACLs, or the
//!   operator's mosquitto), KubeEdge's twin topics, pods' messaging, and the uploads Rules route
//!   to the cloud.
//! - [`mappers`]: the built-in Modbus mapper, a task per Device.
//! - [`reports`]: the outbox entries and the frames they become.
//! - [`metrics`]: edgecore's `/metrics`.
//! - [`tls`], [`join`], [`rotation`]: the edge's credentials, joining with a bootstrap token,
//!   and certificate rotation.
//! - [`agent`]: all of it together, as `edgecore` and `wedge up` run it.

pub mod agent;
pub mod devicetwin;
pub mod edged;
pub mod edgehub;
pub mod edgestream;
pub mod eventbus;
pub mod join;
pub mod mappers;
pub mod metamanager;
pub mod metrics;
pub mod reports;
pub mod rotation;
pub mod store;
pub mod tls;
