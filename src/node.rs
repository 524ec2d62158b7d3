//! Background work of a node besides serving requests: Redis-native
//! publishing, when the engine is Redis.
//!
//! Owns: starting those tasks and tying them to the node's shutdown (they are
//! tracked with the sessions, so shutdown waits for their in-flight appends).
//! Must not touch: request handling.

use std::sync::Arc;

use tokio::sync::watch;

use crate::ingest::{self, IngestOptions};
use crate::state::App;

/// Starts the node's background tasks.
pub fn start_background(app: &Arc<App>) {
    let Some(redis) = &app.redis else {
        return;
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let shutdown = app.shutdown.clone();
    app.tasks.spawn(async move {
        shutdown.cancelled().await;
        let _ = stop_tx.send(true);
    });
    let consumer = ingest::spawn(
        app.engine.clone(),
        redis.pool().clone(),
        IngestOptions::from_config(&app.config),
        stop_rx,
    );
    app.tasks.spawn(async move {
        if let Ok(exit) = consumer.await {
            tracing::info!(?exit, "Redis-native publishing stopped");
        }
    });
}
