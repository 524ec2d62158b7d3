//! Redis-native publishing: consuming `mythos:publish` for game servers that
//! speak Redis rather than HTTP; started by the node through
//! [`Engine::start_ingest`](crate::engine::Engine::start_ingest).
//!
//! Owns: the consumer group `mythos-broker` on `mythos:publish` (or on each
//! of its partitions, read by a loop of its own), one consumer per node (the
//! node name). Each entry goes to the node's [`IngestHandler`], which
//! validates and appends it (idempotently: see `publish::EntryPublisher`);
//! only then is it `XACK`ed, so a crash in between duplicates nothing:
//! whoever takes the entry over (with `XAUTOCLAIM`, after `claim_idle`)
//! hands it to its handler again. Entries the handler refuses go to the
//! stream's dead letters (`mythos:publish:dead`, `<partition>:dead`) with
//! the `reason` and are acked (never retried forever, never dropped
//! silently); engine errors (Redis down) are retried.
//!
//! Must not touch: anything but these two streams; what an entry means (the handler's).
//! Entries are processed one at a time per node, in stream order; across
//! several nodes two entries may be appended in either order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use super::conn::Conns;
use super::consumer::Group;
use super::keys;
use super::stream::Entry;
use crate::engine::{EngineError, IngestExit as Exit, IngestHandler, IngestOptions};

/// The consumer group every broker node shares.
const GROUP: &str = "mythos-broker";

/// How often idle entries of other consumers are looked for.
fn claim_every(opts: &IngestOptions) -> Duration {
    (opts.claim_idle / 2).clamp(Duration::from_millis(10), Duration::from_secs(5))
}

/// Consumes every stream of `streams` (the partitions of `mythos:publish`)
/// until `shutdown` (or the test fault point fires on one of them).
pub(super) async fn run(
    handler: Arc<dyn IngestHandler>,
    conns: Arc<Conns>,
    streams: Vec<String>,
    opts: IngestOptions,
    shutdown: CancellationToken,
) -> Exit {
    let loops = streams.into_iter().map(|stream| {
        let c = Consumer {
            handler: handler.clone(),
            conns: conns.clone(),
            dead: keys::dead(&stream),
            stream,
            opts: opts.clone(),
            own_pending: true,
            last_claim: None,
        };
        consume(c, shutdown.clone())
    });
    let exits = join_all(loops).await;
    exits
        .into_iter()
        .find(|e| *e != Exit::Shutdown)
        .unwrap_or(Exit::Shutdown)
}

/// Consumes one stream.
async fn consume(mut c: Consumer, shutdown: CancellationToken) -> Exit {
    loop {
        let step = tokio::select! {
            r = c.step() => r,
            _ = shutdown.cancelled() => return Exit::Shutdown,
        };
        match step {
            Ok(Some(exit)) => return exit,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "publish stream: will retry");
                metrics::counter!(crate::telemetry::INGEST_RETRIES).increment(1);
                c.own_pending = true;
                tokio::select! {
                    _ = tokio::time::sleep(c.opts.retry_delay) => {}
                    _ = shutdown.cancelled() => return Exit::Shutdown,
                }
            }
        }
    }
}

struct Consumer {
    handler: Arc<dyn IngestHandler>,
    conns: Arc<Conns>,
    stream: String,
    /// Where this stream's malformed entries go.
    dead: String,
    opts: IngestOptions,
    /// Re-read this consumer's own pending entries (at start and after an error).
    own_pending: bool,
    last_claim: Option<Instant>,
}

type Step = Result<Option<Exit>, EngineError>;

impl Consumer {
    fn group(&self) -> Group<'_> {
        Group::new(&self.stream, GROUP)
    }

    /// One round: own pending entries first, then idle ones of others, then new ones.
    async fn step(&mut self) -> Step {
        let (consumer, batch) = (&self.opts.consumer, self.opts.batch);
        if self.own_pending {
            let entries = self
                .group()
                .read(&self.conns, consumer, "0", batch, Duration::ZERO)
                .await?;
            if entries.is_empty() {
                self.own_pending = false;
            }
            return self.process(entries).await;
        }
        let claim_every = claim_every(&self.opts);
        if self.last_claim.is_none_or(|t| t.elapsed() >= claim_every) {
            self.last_claim = Some(Instant::now());
            if let Some(exit) = self.claim().await? {
                return Ok(Some(exit));
            }
        }
        let block = self.opts.block.min(claim_every);
        let entries = self
            .group()
            .read(&self.conns, &self.opts.consumer, ">", batch, block)
            .await?;
        self.process(entries).await
    }

    /// Takes over entries idle for `claim_idle` on any consumer and processes them.
    async fn claim(&mut self) -> Step {
        let mut cursor = "0-0".to_string();
        loop {
            let (next, entries) = self
                .group()
                .claim(
                    &mut self.conns.shared().await?,
                    &self.opts.consumer,
                    self.opts.claim_idle,
                    &cursor,
                    self.opts.batch,
                )
                .await?;
            if !entries.is_empty() {
                tracing::info!(n = entries.len(), "took over idle publish entries");
                metrics::counter!(crate::telemetry::INGEST_CLAIMED).increment(entries.len() as u64);
            }
            if let Some(exit) = self.process(entries).await? {
                return Ok(Some(exit));
            }
            if next == "0-0" {
                return Ok(None);
            }
            cursor = next;
        }
    }

    /// Handles entries in order; stops at the first engine error (not acked: retried).
    async fn process(&self, entries: Vec<Entry>) -> Step {
        for e in entries {
            let Some(fields) = &e.fields else {
                self.ack(&e.id).await?;
                continue;
            };
            if let Some(reason) = self.handler.handle(&e.id, fields).await? {
                self.dead_letter(&e, &reason).await?;
                continue;
            }
            #[cfg(feature = "test-support")]
            if self.opts.crash_after_append {
                tracing::warn!(entry = %e.id, "fault point: crashing before XACK");
                return Ok(Some(Exit::Crashed));
            }
            self.ack(&e.id).await?;
            metrics::counter!(crate::telemetry::INGEST_PUBLISHED).increment(1);
        }
        Ok(None)
    }

    async fn ack(&self, id: &str) -> Result<(), EngineError> {
        let ids = [id.to_string()];
        self.group()
            .ack(&mut self.conns.shared().await?, &ids)
            .await
    }

    /// Moves an entry to the dead letters (original fields + `reason` +
    /// `entry_id`) and acks it: in one transaction where both streams share
    /// a slot (one Redis; a partition and its dead letters); on a cluster's
    /// untagged `mythos:publish` the XADD goes first, so a crash in between
    /// can dead-letter an entry twice, never lose it.
    async fn dead_letter(&self, e: &Entry, reason: &str) -> Result<(), EngineError> {
        tracing::warn!(entry = %e.id, reason, "publish entry dead-lettered");
        metrics::counter!(crate::telemetry::INGEST_DEAD_LETTERS, "reason" => reason_label(reason))
            .increment(1);
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&self.dead).arg("*");
        for (k, v) in e.fields.iter().flatten() {
            xadd.arg(k).arg(v.as_slice());
        }
        xadd.arg("reason").arg(reason).arg("entry_id").arg(&e.id);
        let mut xack = redis::cmd("XACK");
        xack.arg(&self.stream).arg(GROUP).arg(&e.id);
        let mut pipe = redis::pipe();
        if !self.conns.is_cluster() || self.stream.contains('{') {
            pipe.atomic();
        }
        let _: (String, u64) = pipe
            .add_command(xadd)
            .add_command(xack)
            .query_async(&mut self.conns.shared().await?)
            .await?;
        Ok(())
    }
}

/// The metric label of a dead-letter reason (`<code>: <message>`): the code,
/// from a fixed set so that a label never carries entry content.
fn reason_label(reason: &str) -> &'static str {
    const CODES: [&str; 7] = [
        "too_large",
        "invalid_json",
        "invalid_request",
        "invalid_target",
        "invalid_id",
        "invalid_event_type",
        "engine",
    ];
    let code = reason.split(':').next().unwrap_or_default().trim();
    CODES.into_iter().find(|c| *c == code).unwrap_or("other")
}
