//! Wedge's edge agent, `edgecore`: KubeEdge's edge modules, in one process.
//!
//! - [`store`]: the edge's SQLite database: MetaManager (every object the cloud sent, applied
//!   idempotently by resourceVersion) and the outbox (status updates that survive restarts and
//!   disconnections, coalesced to the newest per object).
