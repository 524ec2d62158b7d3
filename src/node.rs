//! Background work of a node besides serving requests: Redis-native
//! publishing (when the engine is Redis; the node owns its handler,
//! [`EntryPublisher`], so the engine never knows `publish`), presence's lease
//! and sweep ([`crate::presence::Tracker::run`]), pruning the rate limiters
//! and the metrics upkeep.
//!
//! Owns: starting those tasks and tying them to the node's shutdown (they are
//! tracked with the sessions, so shutdown waits for their in-flight appends).
//! Must not touch: request handling.

use std::sync::Arc;
use std::time::Duration;

use crate::engine::IngestOptions;
use crate::publish::EntryPublisher;
use crate::state::App;

/// How often idle rate-limiter entries are dropped.
const LIMITER_PRUNE: Duration = Duration::from_secs(60);
/// How often histogram buffers are drained when nobody scrapes `/metrics`.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// Starts the node's background tasks.
pub fn start_background(app: &Arc<App>) {
    let a = app.clone();
    app.tasks().spawn(async move {
        // Histogram observations pile up in the recorder until drained: by a
        // scrape, or by this upkeep when nobody scrapes.
        let mut tick = tokio::time::interval(METRICS_UPKEEP);
        loop {
            tokio::select! {
                _ = tick.tick() => crate::telemetry::upkeep(),
                _ = a.shutdown().cancelled() => break,
            }
        }
    });
    let a = app.clone();
    app.tasks().spawn(async move {
        let mut tick = tokio::time::interval(LIMITER_PRUNE);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // Keys whose bucket is full again are forgotten, so the maps
                    // hold only players and usernames active in the last minute.
                    a.limiter().retain_recent();
                    a.limiter().shrink_to_fit();
                    a.login_limiter().retain_recent();
                    a.login_limiter().shrink_to_fit();
                }
                _ = a.shutdown().cancelled() => break,
            }
        }
    });
    // Presence: the lease, and the sweep every node shares.
    app.tasks().spawn(app.presence().clone().run());
    let opts = IngestOptions {
        claim_idle: app.config().ingest_claim_idle,
        ..IngestOptions::new(app.config().node_name())
    };
    let handler = EntryPublisher::new(app.engine().clone(), app.config().max_event_bytes);
    let ingest = app
        .engine()
        .start_ingest(handler, opts, app.shutdown().clone());
    if let Some(consumer) = ingest {
        app.tasks().spawn(async move {
            if let Ok(exit) = consumer.await {
                tracing::info!(?exit, "Redis-native publishing stopped");
            }
        });
    }
}
