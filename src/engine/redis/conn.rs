//! The engine's connections to one Redis or to a Redis Cluster.
//!
//! Owns: which connection a command goes out on. Ordinary commands share
//! multiplexed connections ([`Conns::shared`]): on one Redis a few long-held
//! pooled ones ([`super::lanes`]); on a cluster one `ClusterConnection`
//! (the `redis` crate's async cluster client, which routes each command to
//! the master of its keys' slot and follows `MOVED`/`ASK`, refreshing its
//! slot map after a failover or a resharding). Commands that block on the
//! server (`WAIT`, `XREADGROUP BLOCK`) take a connection of their own from a
//! deadpool-redis pool ([`Conns::own`]: the single-server pool, or
//! deadpool-redis's cluster pool), because on a shared connection they would
//! stall everyone queued behind them. Must not touch: keys and scripts (the
//! engine decides what to send).

use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use redis::aio::ConnectionLike;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, Value};

use super::lanes::{Lane, Lanes};
use super::{pool_err, OP_TIMEOUT};
use crate::engine::{EngineError, Result};

/// Multiplexed lanes shared by all non-blocking commands on one Redis.
pub const LANES: usize = 4;

/// Where the engine's Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One Redis (`MYTHOS_REDIS_URL`; a Sentinel-managed master is one too).
    Single(String),
    /// A Redis Cluster, by its seed URLs (`MYTHOS_REDIS_CLUSTER`).
    Cluster(Vec<String>),
}

impl Topology {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Topology::Cluster(_))
    }
}

/// Builds a deadpool pool (one Redis or cluster: their builder types
/// differ) whose every wait is bounded by `OP_TIMEOUT`.
macro_rules! bounded {
    ($builder:expr) => {
        $builder
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(OP_TIMEOUT))
            .create_timeout(Some(OP_TIMEOUT))
            .recycle_timeout(Some(OP_TIMEOUT))
            .build()
            .map_err(pool_err)?
    };
}

/// The engine's connections.
pub enum Conns {
    Single {
        pool: Pool,
        lanes: Lanes,
    },
    Cluster {
        shared: ClusterConnection,
        pool: deadpool_redis::cluster::Pool,
    },
}

impl Conns {
    /// Connects: `pool_size` own connections for blocking commands (plus the
    /// shared ones). Fails if Redis (or no cluster seed) answers.
    pub async fn connect(topology: &Topology, pool_size: usize) -> Result<Self> {
        let size = pool_size.max(1);
        Ok(match topology {
            Topology::Single(url) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(OP_TIMEOUT))
                    .set_response_timeout(Some(OP_TIMEOUT));
                let manager = Manager::new_with_config(url.as_str(), config)?;
                let pool = bounded!(Pool::builder(manager).max_size(size + LANES));
                // Fail now, not on first use, when Redis is unreachable.
                drop(pool.get().await.map_err(pool_err)?);
                Conns::Single {
                    lanes: Lanes::new(pool.clone(), LANES),
                    pool,
                }
            }
            Topology::Cluster(seeds) => {
                let shared = ClusterClientBuilder::new(seeds.clone())
                    .connection_timeout(OP_TIMEOUT)
                    .response_timeout(OP_TIMEOUT)
                    // Redirections and a failover's reconnects get their own
                    // time on top of one slow answer.
                    .overall_response_timeout(Some(2 * OP_TIMEOUT))
                    .build()?
                    .get_async_connection()
                    .await?;
                // deadpool-redis's cluster manager sets no response timeout,
                // which blocking commands need; callers bound them instead.
                let manager = deadpool_redis::cluster::Manager::new(seeds.clone(), false)?;
                let pool = bounded!(deadpool_redis::cluster::Pool::builder(manager).max_size(size));
                Conns::Cluster { shared, pool }
            }
        })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Conns::Cluster { .. })
    }

    /// A multiplexed connection shared with other tasks (never block on it).
    pub async fn shared(&self) -> Result<Shared<'_>> {
        Ok(match self {
            Conns::Single { lanes, .. } => Shared::Lane(lanes.get().await?),
            Conns::Cluster { shared, .. } => Shared::Cluster(shared.clone()),
        })
    }

    /// Runs `cmd` (one that names no key, such as `SCAN`) on the server that
    /// holds `key`: on a cluster, the master of its slot.
    pub async fn on_master_of(&self, key: &str, cmd: &Cmd) -> Result<Value> {
        match self {
            Conns::Single { .. } => Ok(cmd.query_async(&mut self.shared().await?).await?),
            Conns::Cluster { shared, .. } => {
                let route = redis::cluster_routing::Route::with_key(
                    key,
                    redis::cluster_routing::SlotAddr::Master,
                );
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                Ok(shared.clone().route_command(cmd.clone(), routing).await?)
            }
        }
    }

    /// A connection of its own, for commands that block on the server.
    pub async fn own(&self) -> Result<Own> {
        Ok(match self {
            Conns::Single { pool, .. } => {
                Own::new(Pooled::Single(pool.get().await.map_err(pool_err)?))
            }
            Conns::Cluster { pool, .. } => {
                Own::new(Pooled::Cluster(pool.get().await.map_err(pool_err)?))
            }
        })
    }
}

/// A shared multiplexed connection.
pub enum Shared<'a> {
    Lane(Lane<'a>),
    Cluster(ClusterConnection),
    /// A handle on an [`Own`] connection ([`Own::handle`]).
    Single(redis::aio::MultiplexedConnection),
}

/// A connection of one user's own: dropped, it returns to its pool, unless
/// it was dropped while a blocking command was in flight (a reader stopped
/// waiting) or [`Own::discard`] was called: the server may still be running
/// that command, and the connection's next user would wait behind it.
pub struct Own {
    conn: Option<Pooled>,
    blocked: bool,
}

enum Pooled {
    Single(deadpool_redis::Connection),
    Cluster(deadpool_redis::cluster::Connection),
}

impl Drop for Own {
    fn drop(&mut self) {
        if self.blocked {
            self.discard();
        }
    }
}

impl Own {
    fn new(conn: Pooled) -> Self {
        Own {
            conn: Some(conn),
            blocked: false,
        }
    }

    /// A handle on this same connection (the same server-side client, so a
    /// `WAIT` sent here covers writes sent through the handle) that several
    /// tasks can use at once; `None` once discarded.
    pub fn handle(&self) -> Option<Shared<'static>> {
        match &self.conn {
            Some(Pooled::Single(c)) => Some(Shared::Single((**c).clone())),
            Some(Pooled::Cluster(c)) => Some(Shared::Cluster((**c).clone())),
            None => None,
        }
    }

    /// Takes the connection out of its pool for good (it is closed when
    /// dropped).
    pub fn discard(&mut self) {
        match self.conn.take() {
            Some(Pooled::Single(c)) => drop(deadpool_redis::Connection::take(c)),
            Some(Pooled::Cluster(c)) => drop(deadpool_redis::cluster::Connection::take(c)),
            None => {}
        }
    }

    /// Sends `cmd` that may block on the server for up to `block`; discards
    /// the connection unless the command completed.
    pub async fn query_blocking(&mut self, cmd: &Cmd, block: Duration) -> Result<Value> {
        let limit = block + OP_TIMEOUT;
        if let Some(Pooled::Single(c)) = &mut self.conn {
            c.set_response_timeout(limit);
        }
        self.blocked = true;
        let r = match tokio::time::timeout(limit, cmd.query_async::<Value>(self)).await {
            Ok(r) => r.map_err(EngineError::from),
            Err(_) => Err(EngineError::Pool(format!("no answer within {limit:?}"))),
        };
        let completed = match &r {
            Ok(_) => true,
            Err(EngineError::Redis(e)) => {
                !(e.is_io_error() || e.is_timeout() || e.is_unrecoverable_error())
            }
            Err(_) => false,
        };
        self.blocked = false;
        if completed {
            if let Some(Pooled::Single(c)) = &mut self.conn {
                c.set_response_timeout(OP_TIMEOUT);
            }
        } else {
            self.discard();
        }
        r
    }

    /// `WAIT replicas timeout` on every node that took this connection's
    /// writes to `keys` (one Redis: the server, once; a cluster: the master
    /// of each key's slot, all at once); answers, per key, how many replicas
    /// confirmed.
    ///
    /// On a cluster the `WAIT`s of keys that share a master queue on that
    /// master's connection: when its replica is healthy the second returns
    /// at once, when it is not each would wait the whole `timeout` in turn.
    /// So once one `WAIT` comes back short (or fails), the others get
    /// [`WAIT_GRACE`] more; a healthy master answers within it, and a key
    /// still unanswered then counts as unconfirmed (0). The publish thus
    /// answers `not_replicated` after about one `timeout`, whatever the
    /// number of slots. Unanswered `WAIT`s discard the connection.
    pub async fn wait_each(
        &mut self,
        keys: &[String],
        replicas: u64,
        timeout: Duration,
    ) -> Vec<Result<u64>> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(super::ms(timeout));
        let out = match &mut self.conn {
            Some(Pooled::Cluster(c)) => {
                let conn: ClusterConnection = (**c).clone();
                let calls = keys.iter().enumerate().map(|(i, key)| {
                    let (mut conn, cmd) = (conn.clone(), cmd.clone());
                    let route = redis::cluster_routing::Route::with_key(
                        key.as_bytes(),
                        redis::cluster_routing::SlotAddr::Master,
                    );
                    let routing =
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                    async move {
                        let v = conn
                            .route_command(cmd, routing)
                            .await
                            .and_then(|v| redis::from_redis_value::<u64>(v).map_err(Into::into))
                            .map_err(EngineError::from);
                        (i, v)
                    }
                });
                self.blocked = true;
                let (out, abandoned) = gather_waits(calls, keys.len(), replicas, timeout).await;
                self.blocked = abandoned;
                out
            }
            _ => vec![self
                .query_blocking(&cmd, timeout)
                .await
                .and_then(|v| Ok(redis::from_redis_value(v).map_err(redis::RedisError::from)?))],
        };
        if self.blocked || out.iter().any(Result::is_err) {
            // A WAIT that may still be blocked on the server: this
            // connection must not serve anyone else.
            self.blocked = false;
            self.discard();
        }
        out
    }
}

/// How long the other `WAIT`s of a fan-out may still take once one came
/// back short (see [`Own::wait_each`]).
pub const WAIT_GRACE: Duration = Duration::from_millis(100);

/// Runs the `WAIT` calls (each answering its index) and collects their
/// answers by index; unanswered ones at the deadline are `Ok(0)` when
/// another already came back short, else an error. Also answers whether any
/// call was abandoned unanswered.
async fn gather_waits<F>(
    calls: impl Iterator<Item = F>,
    n: usize,
    replicas: u64,
    timeout: Duration,
) -> (Vec<Result<u64>>, bool)
where
    F: std::future::Future<Output = (usize, Result<u64>)>,
{
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let mut pending: FuturesUnordered<F> = calls.collect();
    let mut out: Vec<Option<Result<u64>>> = (0..n).map(|_| None).collect();
    let deadline = tokio::time::sleep(timeout + OP_TIMEOUT);
    tokio::pin!(deadline);
    let mut short = false;
    loop {
        tokio::select! {
            next = pending.next() => match next {
                Some((i, r)) => {
                    if !matches!(r, Ok(got) if got >= replicas) && !short {
                        short = true;
                        let grace = tokio::time::Instant::now() + WAIT_GRACE;
                        if grace < deadline.deadline() {
                            deadline.as_mut().reset(grace);
                        }
                    }
                    out[i] = Some(r);
                }
                None => break,
            },
            _ = &mut deadline => break,
        }
    }
    let abandoned = !pending.is_empty();
    let out = out
        .into_iter()
        .map(|r| match r {
            Some(r) => r,
            None if short => Ok(0),
            None => Err(EngineError::Pool("WAIT did not answer".into())),
        })
        .collect();
    (out, abandoned)
}

fn discarded() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "connection discarded"))
}

impl ConnectionLike for Shared<'_> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Shared::Lane(l) => l.req_packed_command(cmd),
            Shared::Cluster(c) => c.req_packed_command(cmd),
            Shared::Single(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Shared::Lane(l) => l.req_packed_commands(cmd, offset, count),
            Shared::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            Shared::Single(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Shared::Lane(l) => l.get_db(),
            Shared::Cluster(c) => c.get_db(),
            Shared::Single(c) => c.get_db(),
        }
    }
}

impl ConnectionLike for Own {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.conn {
            Some(Pooled::Single(c)) => c.req_packed_command(cmd),
            Some(Pooled::Cluster(c)) => c.req_packed_command(cmd),
            None => Box::pin(async { Err(discarded()) }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.conn {
            Some(Pooled::Single(c)) => c.req_packed_commands(cmd, offset, count),
            Some(Pooled::Cluster(c)) => c.req_packed_commands(cmd, offset, count),
            None => Box::pin(async { Err(discarded()) }),
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}
