//! The Redis engine: durable logs shared by many broker nodes, on one Redis
//! or on a Redis Cluster.
//!
//! Owns: the connections ([`conn`]: shared multiplexed ones, and pooled ones
//! of their own for blocking commands), the Lua scripts in `lua/` that make
//! every append, ack and cursor read atomic per player, the live
//! subscriptions ([`live`]) that are the only way appends reach the node's
//! [`LiveSink`] (this node's own appends included), and consumer groups
//! ([`consumer`]) for the command stream and Redis-native publishing
//! ([`ingest`]), each split into partitions ([`keys::partition`]).
//! Every key of a player shares the player's hash tag, so each per-player
//! script runs on one slot; a fan-out over players of several slots is one
//! script call per slot, run concurrently ([`RedisEngine::append_all`]).
//! With `MYTHOS_REDIS_WAIT_REPLICAS` every write (a fan-out's slot groups, a
//! command) goes out on a connection of its own and is confirmed by `WAIT`
//! ([`RedisEngine::wait_each`], the one path) before it is answered.
//! Must not touch: HTTP, sockets, validation (callers pass checked input;
//! a `mythos:publish` entry is the node's [`IngestHandler`]'s to judge).
//! The key layout is in [`keys`] and `docs/redis-layout.md`.

mod accounts;
mod append;
mod commands;
mod conn;
mod consumer;
mod decode;
mod info;
mod ingest;
pub mod keys;
mod lanes;
mod live;
mod log;
mod presence;
mod refresh;
mod rooms;
mod scripts;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use self::conn::Topology;
use self::conn::{Conns, Shared};
use self::scripts::Scripts;
use super::{
    Engine, EngineError, IngestExit, IngestHandler, IngestOptions, Limits, LiveSink, Result,
};
use crate::protocol::{Delivery, EventBody, Target};

/// How long one ordinary command may take before it fails.
const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// How the Redis engine connects, and how its streams are split.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub topology: Topology,
    /// Connections of their own for blocking commands (`MYTHOS_REDIS_POOL`).
    pub pool_size: usize,
    /// Partitions of `mythos:commands` (`MYTHOS_COMMAND_PARTITIONS`).
    pub command_partitions: usize,
    /// Partitions of `mythos:publish` (`MYTHOS_PUBLISH_PARTITIONS`).
    pub publish_partitions: usize,
}

impl RedisOptions {
    /// One Redis at `url`, a pool of 8, unpartitioned streams.
    pub fn single(url: &str) -> Self {
        Self {
            topology: Topology::Single(url.to_string()),
            pool_size: 8,
            command_partitions: 1,
            publish_partitions: 1,
        }
    }

    /// The same with `n` connections of their own.
    pub fn with_pool(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }

    /// A Redis Cluster by its seed URLs, a pool of 8, unpartitioned streams.
    pub fn cluster(seeds: &[String]) -> Self {
        Self {
            topology: Topology::Cluster(seeds.to_vec()),
            ..Self::single("")
        }
    }
}

/// The Redis engine. Dropping it stops its live subscriptions.
pub struct RedisEngine {
    conns: Arc<Conns>,
    live: live::Live,
    limits: Limits,
    scripts: Scripts,
    options: RedisOptions,
    /// How scripts announce appends: `PUBLISH`, or `SPUBLISH` on a cluster.
    publish: &'static str,
}

fn pool_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Pool(e.to_string())
}

/// An event's flags as the scripts and live announcements carry them
/// (`append.lua`, `confirm.lua`, [`live::encode`]): `r` with a room id, `i`
/// with an id.
fn flags_of(body: &EventBody) -> &'static str {
    match (&body.room_id, &body.id) {
        (Some(_), Some(_)) => "ri",
        (Some(_), None) => "r",
        (None, Some(_)) => "i",
        (None, None) => "",
    }
}

/// The longest a publish may run ([`RedisEngine::within`]): 2 × `OP_TIMEOUT`,
/// plus the WAIT timeout with WAIT.
fn publish_deadline(limits: &Limits) -> Duration {
    2 * OP_TIMEOUT + limits.wait_timeout * u32::from(limits.wait_replicas > 0)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisEngine {
    /// Connects (failing if Redis is unreachable), loads the scripts and
    /// starts the live subscriber. Appends reach `hub` for the players some
    /// session follows ([`Engine::watch`]).
    pub async fn connect(
        options: &RedisOptions,
        limits: Limits,
        hub: Arc<dyn LiveSink>,
    ) -> Result<Arc<Self>> {
        let conns = Conns::connect(&options.topology, options.pool_size).await?;
        let scripts = Scripts::new();
        if !conns.is_cluster() {
            // On a cluster each master loads a script the first time it is
            // asked to run it (EVALSHA answers NOSCRIPT, the script is sent).
            let mut conn = conns.shared().await?;
            for s in scripts.all() {
                s.prepare_invoke().load_async(&mut conn).await?;
            }
        }
        // A left room's channel outlives any publish still in flight.
        let linger = publish_deadline(&limits) + OP_TIMEOUT;
        let live = live::Live::start(&options.topology, hub, linger).await?;
        Ok(Arc::new(Self {
            publish: if conns.is_cluster() {
                "SPUBLISH"
            } else {
                "PUBLISH"
            },
            conns: Arc::new(conns),
            live,
            limits,
            scripts,
            options: options.clone(),
        }))
    }

    async fn shared(&self) -> Result<Shared<'_>> {
        self.conns.shared().await
    }

    /// Up to `count` entries of the stream `key` after the entry id `after`
    /// (exclusive), read for an HTTP page (commands, presence facts);
    /// `bad_id` is the refusal of an id not shaped `<ms>-<n>`.
    async fn entries_after(
        &self,
        key: &str,
        after: &str,
        count: usize,
        bad_id: &'static str,
    ) -> Result<Vec<stream::Entry>> {
        let (ms, n) = super::parse_entry_id(after).ok_or(EngineError::Rejected(bad_id))?;
        if count == 0 {
            return Ok(Vec::new());
        }
        let v: redis::Value = redis::cmd("XRANGE")
            .arg(key)
            .arg(format!("({ms}-{n}"))
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.shared().await?)
            .await?;
        stream::entries(v)
    }

    /// Runs one append with an overall deadline: connection set-up, the
    /// command and any `WAIT` each have their own timeouts, which could add
    /// up while Redis is unreachable; a publisher is answered (503, retry-safe
    /// with the same id) within 2 × `OP_TIMEOUT` (+ the WAIT timeout).
    async fn within<T>(&self, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let deadline = publish_deadline(&self.limits);
        tokio::time::timeout(deadline, f)
            .await
            .unwrap_or_else(|_| Err(EngineError::Pool(format!("no answer within {deadline:?}"))))
    }

    /// True with `MYTHOS_REDIS_WAIT_REPLICAS` ≥ 1.
    fn waits(&self) -> bool {
        self.limits.wait_replicas > 0
    }

    /// `c` when readers see only replica-confirmed events (the scripts' flag).
    fn visibility(&self) -> &'static str {
        if self.waits() {
            "c"
        } else {
            ""
        }
    }
}

/// [`crate::defects::Defect::DeliverUnconfirmed`] is on (never without the
/// `defects` feature).
#[cfg(feature = "defects")]
fn deliver_unconfirmed() -> bool {
    crate::defects::on(crate::defects::Defect::DeliverUnconfirmed)
}
#[cfg(not(feature = "defects"))]
const fn deliver_unconfirmed() -> bool {
    false
}

#[async_trait]
impl Engine for RedisEngine {
    async fn publish(
        &self,
        target: &Target,
        body: Arc<EventBody>,
        dedupe_key: Option<&str>,
    ) -> Result<Vec<Delivery>> {
        self.within(async {
            match target {
                Target::Player(p) => {
                    self.append_all(std::slice::from_ref(p), &body, dedupe_key, None)
                        .await
                }
                Target::Players(ps) => self.append_all(ps, &body, dedupe_key, None).await,
                Target::Room(r) => self.publish_room(r, &body, dedupe_key).await,
            }
        })
        .await
    }

    /// Redis answers, and this node's live subscriptions are up (without
    /// them, open connections would get nothing new until a resubscribe).
    async fn ping(&self) -> Result<()> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.shared().await?)
            .await?;
        if !self.live.is_up() {
            return Err(EngineError::Rejected(
                "live delivery is down (resubscribing)",
            ));
        }
        Ok(())
    }

    fn start_ingest(
        &self,
        handler: Arc<dyn IngestHandler>,
        opts: IngestOptions,
        shutdown: CancellationToken,
    ) -> Option<JoinHandle<IngestExit>> {
        let n = self.options.publish_partitions;
        let streams = (0..n)
            .map(|i| keys::partition(keys::PUBLISH, i, n))
            .collect();
        let run = ingest::run(handler, self.conns.clone(), streams, opts, shutdown);
        Some(tokio::spawn(run))
    }
}
