//! The Redis engine: durable logs shared by many broker nodes.
//!
//! Owns: the command pool (deadpool-redis), the Lua scripts in `lua/` that
//! make every append, ack and cursor read atomic, and this node's one pub/sub
//! subscription to `mythos:live` (see [`live`]), which is the only way
//! appends reach the node's [`LiveSink`], including this node's own appends;
//! consumer groups ([`consumer`]) for the command stream and Redis-native
//! publishing ([`ingest`]).
//! Must not touch: HTTP, sockets, validation (callers pass checked input).
//! The key layout is in [`keys`] and `docs/redis-layout.md`.

mod consumer;
mod decode;
mod ingest;
mod keys;
mod lanes;
mod live;
mod scripts;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::{Manager, Pool, Runtime};
use redis::streams::StreamMaxlen;
use redis::{AsyncConnectionConfig, Cmd, Script, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use self::consumer::Group;
use self::decode::{command_of, cursor_of, event_of};
pub use self::scripts::Scripts;
use super::{
    Account, Command, CommandEntry, Cursor, Engine, EngineError, IngestExit, IngestOptions, Limits,
    LiveSink, Result,
};
use crate::protocol::{Delivery, Event, EventBody, Target};

/// How long one ordinary command may take before it fails.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Multiplexed connections shared by all non-blocking commands (see [`lanes`]).
pub const LANES: usize = 4;

/// The Redis engine. Dropping it stops its live subscription.
pub struct RedisEngine {
    pool: Pool,
    lanes: lanes::Lanes,
    limits: Limits,
    scripts: Scripts,
    /// The live subscription's task, aborted when the engine is dropped.
    _listener: AbortOnDropHandle<()>,
    /// Whether the live subscription is up (`/readyz` says not ready when not).
    live: Arc<live::LiveHealth>,
}

fn pool_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Pool(e.to_string())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisEngine {
    /// Connects a pool of `pool_size` connections for blocking commands plus
    /// [`LANES`] multiplexed lanes for all others, loads the scripts and
    /// subscribes to `mythos:live` (before returning, so no append made after
    /// this returns can be missed by the hub). Fails if Redis is unreachable.
    pub async fn connect(
        url: &str,
        pool_size: usize,
        limits: Limits,
        hub: Arc<dyn LiveSink>,
    ) -> Result<Arc<Self>> {
        let client = redis::Client::open(url)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT));
        let manager = Manager::new_with_config(url, config)?;
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1) + LANES)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(OP_TIMEOUT))
            .create_timeout(Some(OP_TIMEOUT))
            .recycle_timeout(Some(OP_TIMEOUT))
            .build()
            .map_err(pool_err)?;
        let scripts = Scripts::new();
        {
            let mut conn = pool.get().await.map_err(pool_err)?;
            for s in scripts.all() {
                s.prepare_invoke().load_async(&mut conn).await?;
            }
        }
        let first = live::subscribe(&client).await?;
        let live = Arc::new(live::LiveHealth::default());
        let listener = AbortOnDropHandle::new(live::spawn(client, hub, first, live.clone()));
        Ok(Arc::new(Self {
            lanes: lanes::Lanes::new(pool.clone(), LANES),
            pool,
            limits,
            scripts,
            _listener: listener,
            live,
        }))
    }

    /// The scripts, for benchmarks that call them directly.
    pub fn scripts(&self) -> &Scripts {
        &self.scripts
    }

    /// A connection for writes: a shared lane, or — with
    /// `MYTHOS_REDIS_WAIT_REPLICAS` — a pooled connection of its own, because
    /// `WAIT` blocks the connection it runs on (on a shared lane a replica
    /// outage would stall every command queued behind it).
    async fn writer(&self) -> Result<Writer<'_>> {
        Ok(if self.limits.wait_replicas == 0 {
            Writer::Lane(self.lanes.get().await?)
        } else {
            Writer::Own(Some(self.pool.get().await.map_err(pool_err)?))
        })
    }

    /// Runs one append with an overall deadline: connection set-up, the
    /// command and any `WAIT` each have their own timeouts, which could add
    /// up while Redis is unreachable; a publisher is answered (503, retry-safe
    /// with the same id) within 2 × `OP_TIMEOUT` (+ the WAIT timeout).
    async fn within<T>(&self, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let deadline =
            2 * OP_TIMEOUT + self.limits.wait_timeout * u32::from(self.limits.wait_replicas > 0);
        tokio::time::timeout(deadline, f)
            .await
            .unwrap_or_else(|_| Err(EngineError::Pool(format!("no answer within {deadline:?}"))))
    }

    /// With `MYTHOS_REDIS_WAIT_REPLICAS` ≥ 1, waits until that many replicas
    /// confirm this connection's writes, or fails `NotReplicated` after
    /// `MYTHOS_REDIS_WAIT_TIMEOUT`. The writes stay: a retry with the same
    /// idempotency key finds them and appends nothing twice.
    async fn confirm(&self, conn: &mut Writer<'_>) -> Result<()> {
        let wanted = self.limits.wait_replicas;
        let Writer::Own(Some(c)) = conn else {
            return Ok(());
        };
        c.set_response_timeout(self.limits.wait_timeout + OP_TIMEOUT);
        let got: redis::RedisResult<u64> = redis::cmd("WAIT")
            .arg(wanted)
            .arg(ms(self.limits.wait_timeout).max(1))
            .query_async(&mut **c)
            .await;
        c.set_response_timeout(OP_TIMEOUT);
        let got = match got {
            Ok(n) => n,
            Err(e) => {
                // A WAIT that may still be blocked on the server: this
                // connection must not serve anyone else.
                if let Some(c) = conn.take() {
                    drop(deadpool_redis::Connection::take(c));
                }
                return Err(e.into());
            }
        };
        metrics::counter!("mythos_redis_waits_total").increment(1);
        if got < wanted {
            metrics::counter!("mythos_not_replicated_total").increment(1);
            return Err(EngineError::NotReplicated { got, wanted });
        }
        Ok(())
    }

    /// Appends `body` to `players` (distinct, in delivery order) in one script
    /// call on `conn` (the caller confirms).
    async fn append(
        &self,
        conn: &mut Writer<'_>,
        players: &[String],
        body: &EventBody,
        dedupe_key: Option<&str>,
    ) -> Result<Vec<Delivery>> {
        if players.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.scripts.append.prepare_invoke();
        for p in players {
            inv.key(keys::events(p)).key(keys::meta(p));
            if let Some(k) = dedupe_key {
                inv.key(keys::dedupe(p, k));
            }
        }
        let flags = match (&body.room_id, &body.id) {
            (Some(_), Some(_)) => "ri",
            (Some(_), None) => "r",
            (None, Some(_)) => "i",
            (None, None) => "",
        };
        inv.arg(players.len())
            .arg(dedupe_key.map_or(0, |_| ms(self.limits.dedupe_window)))
            .arg(self.limits.max_backlog)
            .arg(ms(self.limits.max_backlog_age))
            .arg(flags)
            .arg(&body.event_type)
            .arg(&body.timestamp)
            .arg(body.data.get())
            .arg(body.room_id.as_deref().unwrap_or(""))
            .arg(body.id.as_deref().unwrap_or(""));
        for p in players {
            inv.arg(p.as_str());
        }
        let out: Vec<u64> = inv.invoke_async(conn).await?;
        if out.len() != players.len() * 2 {
            return Err(EngineError::Corrupt("append.lua answered short".into()));
        }
        Ok(players
            .iter()
            .zip(out.chunks_exact(2))
            .map(|(p, r)| Delivery {
                player_id: p.clone(),
                sequence_number: r[0],
            })
            .collect())
    }

    /// The members of a set, sorted.
    async fn sorted_set(&self, key: &str) -> Result<Vec<String>> {
        let mut m: Vec<String> = redis::cmd("SMEMBERS")
            .arg(key)
            .query_async(&mut self.lanes.get().await?)
            .await?;
        m.sort_unstable();
        Ok(m)
    }

    /// Runs a script over one player's events and meta keys, answering a cursor first.
    async fn player_script(
        &self,
        script: &Script,
        player: &str,
        args: &[String],
    ) -> Result<Vec<u64>> {
        let mut inv = script.prepare_invoke();
        inv.key(keys::events(player)).key(keys::meta(player));
        for a in args {
            inv.arg(a.as_str());
        }
        let out: Vec<u64> = inv.invoke_async(&mut self.lanes.get().await?).await?;
        if out.len() < 3 {
            return Err(EngineError::Corrupt("script answered short".into()));
        }
        Ok(out)
    }
}

/// Where an append is written (see [`RedisEngine::writer`]).
enum Writer<'a> {
    Lane(lanes::Lane<'a>),
    /// `None` once discarded after a failed `WAIT`.
    Own(Option<deadpool_redis::Connection>),
}

impl Writer<'_> {
    fn take(&mut self) -> Option<deadpool_redis::Connection> {
        match self {
            Writer::Own(c) => c.take(),
            Writer::Lane(_) => None,
        }
    }
}

impl redis::aio::ConnectionLike for Writer<'_> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Writer::Lane(l) => l.req_packed_command(cmd),
            Writer::Own(Some(c)) => c.req_packed_command(cmd),
            Writer::Own(None) => Box::pin(async { Err(discarded()) }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Writer::Lane(l) => l.req_packed_commands(cmd, offset, count),
            Writer::Own(Some(c)) => c.req_packed_commands(cmd, offset, count),
            Writer::Own(None) => Box::pin(async { Err(discarded()) }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Writer::Lane(l) => l.get_db(),
            Writer::Own(Some(c)) => c.get_db(),
            Writer::Own(None) => 0,
        }
    }
}

fn discarded() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Io,
        "connection discarded after a failed WAIT",
    ))
}

/// Consumer group `group` on the command stream.
fn commands(group: &str) -> Group<'_> {
    Group {
        stream: keys::COMMANDS,
        name: group,
    }
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
            let mut conn = self.writer().await?;
            let out = match target {
                Target::Player(p) => {
                    self.append(&mut conn, std::slice::from_ref(p), &body, dedupe_key)
                        .await?
                }
                Target::Players(ps) => self.append(&mut conn, ps, &body, dedupe_key).await?,
                Target::Room(r) => {
                    // A repeat answers what the first publish answered, even if
                    // the room's members changed since: no new member gets it.
                    if let Some(k) = dedupe_key {
                        let first: Option<String> = redis::cmd("GET")
                            .arg(keys::room_dedupe(r, k))
                            .query_async(&mut conn)
                            .await?;
                        if let Some(first) = first {
                            // Confirmed too: the first answer may not have been.
                            self.confirm(&mut conn).await?;
                            return decode::room_deliveries(&first);
                        }
                    }
                    let members = self.sorted_set(&keys::members(r)).await?;
                    let out = self.append(&mut conn, &members, &body, dedupe_key).await?;
                    if let Some(k) = dedupe_key {
                        // NX: of two racing first publishes, the record of the
                        // one that stored first stands (both appended each
                        // member once, by the per-player dedupe keys).
                        let _: Option<String> = redis::cmd("SET")
                            .arg(keys::room_dedupe(r, k))
                            .arg(decode::encode_room_deliveries(&out))
                            .arg("PX")
                            .arg(ms(self.limits.dedupe_window))
                            .arg("NX")
                            .query_async(&mut conn)
                            .await?;
                    }
                    out
                }
            };
            self.confirm(&mut conn).await?;
            Ok(out)
        })
        .await
    }

    async fn read(&self, player: &str, after: u64, limit: usize) -> Result<Vec<Event>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let v: Value = redis::cmd("XRANGE")
            .arg(keys::events(player))
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut self.lanes.get().await?)
            .await?;
        stream::entries(v)?.into_iter().map(event_of).collect()
    }

    async fn ack(&self, player: &str, seq: u64) -> Result<Cursor> {
        let v = self
            .player_script(&self.scripts.ack, player, &[seq.to_string()])
            .await?;
        Ok(cursor_of(&v))
    }

    async fn cursor(&self, player: &str) -> Result<Cursor> {
        let args = [
            self.limits.max_backlog.to_string(),
            ms(self.limits.max_backlog_age).to_string(),
        ];
        let v = self
            .player_script(&self.scripts.cursor, player, &args)
            .await?;
        Ok(cursor_of(&v))
    }

    async fn join(&self, room: &str, player: &str) -> Result<Option<Vec<String>>> {
        let (added, _, mut members): (u64, u64, Vec<String>) = redis::pipe()
            .atomic()
            .sadd(keys::members(room), player)
            .sadd(keys::rooms(player), room)
            .smembers(keys::members(room))
            .query_async(&mut self.lanes.get().await?)
            .await?;
        if added == 0 {
            return Ok(None);
        }
        members.retain(|m| m != player);
        members.sort_unstable();
        Ok(Some(members))
    }

    async fn leave(&self, room: &str, player: &str) -> Result<Option<Vec<String>>> {
        let (removed, _, mut members): (u64, u64, Vec<String>) = redis::pipe()
            .atomic()
            .srem(keys::members(room), player)
            .srem(keys::rooms(player), room)
            .smembers(keys::members(room))
            .query_async(&mut self.lanes.get().await?)
            .await?;
        if removed == 0 {
            return Ok(None);
        }
        members.sort_unstable();
        Ok(Some(members))
    }

    async fn members(&self, room: &str) -> Result<Vec<String>> {
        self.sorted_set(&keys::members(room)).await
    }

    async fn rooms_of(&self, player: &str) -> Result<Vec<String>> {
        self.sorted_set(&keys::rooms(player)).await
    }

    async fn push_command(&self, cmd: &Command) -> Result<String> {
        self.within(async {
            // One XADD: no script needed, and it touches only the stream's slot.
            let mut conn = self.writer().await?;
            let fields = [
                ("player_id", &cmd.player_id),
                ("session_id", &cmd.session_id),
                ("type", &cmd.kind),
                ("id", &cmd.id),
                ("payload", &cmd.payload),
            ];
            let maxlen = StreamMaxlen::Approx(super::MAX_COMMANDS);
            let id: String = Cmd::xadd_maxlen(keys::COMMANDS, maxlen, "*", &fields)
                .query_async(&mut conn)
                .await?;
            self.confirm(&mut conn).await?;
            Ok(id)
        })
        .await
    }

    async fn read_commands(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<CommandEntry>> {
        let entries = commands(group)
            .read(&self.pool, consumer, ">", count, block)
            .await?;
        entries
            .into_iter()
            .filter_map(|e| command_of(e).transpose())
            .collect()
    }

    async fn ack_commands(&self, group: &str, entry_ids: &[String]) -> Result<()> {
        if entry_ids.is_empty() {
            return Ok(());
        }
        commands(group)
            .ack(&mut self.lanes.get().await?, entry_ids)
            .await
    }

    async fn claim_commands(
        &self,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<CommandEntry>> {
        let count = count.max(1);
        let mut out = Vec::new();
        let mut cursor = "0-0".to_string();
        while out.len() < count {
            let (next, claimed) = commands(group)
                .claim(
                    &mut self.lanes.get().await?,
                    consumer,
                    min_idle,
                    &cursor,
                    count - out.len(),
                )
                .await?;
            for e in claimed {
                out.extend(command_of(e)?);
            }
            if next == "0-0" {
                break;
            }
            cursor = next;
        }
        Ok(out)
    }

    async fn create_user(&self, username: &str, account: &Account) -> Result<bool> {
        let created: u8 = self
            .scripts
            .create_user
            .key(keys::user(username))
            .arg(&account.password_hash)
            .arg(&account.role)
            .invoke_async(&mut self.lanes.get().await?)
            .await?;
        Ok(created == 1)
    }

    async fn user(&self, username: &str) -> Result<Option<Account>> {
        let (hash, role): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(keys::user(username))
            .arg("password_hash")
            .arg("role")
            .query_async(&mut self.lanes.get().await?)
            .await?;
        Ok(hash.map(|password_hash| Account {
            password_hash,
            role: role.unwrap_or_else(|| "player".into()),
        }))
    }

    /// Redis answers, and this node's live subscription is up (without it,
    /// open connections would get nothing new until the next reconnect).
    async fn ping(&self) -> Result<()> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.lanes.get().await?)
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
        publisher: Arc<dyn Engine>,
        opts: IngestOptions,
        shutdown: CancellationToken,
    ) -> Option<JoinHandle<IngestExit>> {
        let run = ingest::run(publisher, self.pool.clone(), opts, shutdown);
        Some(tokio::spawn(run))
    }
}
