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
//! Must not touch: HTTP, sockets, validation (callers pass checked input).
//! The key layout is in [`keys`] and `docs/redis-layout.md`.

mod conn;
mod consumer;
mod decode;
mod info;
mod ingest;
pub mod keys;
mod lanes;
mod live;
mod scripts;
mod stream;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use redis::streams::StreamMaxlen;
use redis::{Cmd, Script, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use self::conn::Topology;
use self::conn::{Conns, Own, Shared};
use self::consumer::Group;
use self::decode::{command_of, cursor_of, event_of};
use self::scripts::Scripts;
use super::{
    parse_entry_id, Account, Command, CommandEntry, Cursor, DedupeKeys, Engine, EngineError,
    IngestExit, IngestOptions, Limits, LiveSink, Result, StreamInfo,
};
use crate::protocol::{Delivery, Event, EventBody, Target};

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
        let live = live::Live::start(&options.topology, hub).await?;
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

    /// A connection for writes: a shared one, or — with
    /// `MYTHOS_REDIS_WAIT_REPLICAS` — one of its own, because `WAIT` blocks
    /// the connection it runs on and counts that connection's writes.
    async fn writer(&self) -> Result<Writer<'_>> {
        Ok(if self.limits.wait_replicas == 0 {
            Writer::Shared(self.shared().await?)
        } else {
            Writer::Own(self.conns.own().await?)
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
    /// confirm this connection's writes to `key`'s master, or fails
    /// `NotReplicated` after `MYTHOS_REDIS_WAIT_TIMEOUT`. The writes stay: a
    /// retry with the same idempotency key finds them and appends nothing twice.
    async fn confirm(&self, conn: &mut Writer<'_>, key: &str) -> Result<()> {
        match conn {
            Writer::Own(c) => self.confirm_replicated(c, key).await,
            Writer::Shared(_) => Ok(()),
        }
    }

    /// `WAIT` on `conn` for the writes it sent to the master of `key`.
    async fn confirm_replicated(&self, conn: &mut Own, key: &str) -> Result<()> {
        let got = self.wait_each(conn, &[key.to_string()]).await;
        got.into_iter().next().unwrap_or(Ok(()))
    }

    /// `WAIT` on `conn` for the writes it sent to the masters of `keys`:
    /// per key, confirmed, `NotReplicated`, or the engine's error.
    async fn wait_each(&self, conn: &mut Own, keys: &[String]) -> Vec<Result<()>> {
        let wanted = self.limits.wait_replicas;
        let answers = conn.wait_each(keys, wanted, self.limits.wait_timeout).await;
        metrics::counter!("mythos_redis_waits_total").increment(1);
        let out: Vec<Result<()>> = answers
            .into_iter()
            .map(|r| match r {
                Ok(got) if got < wanted => Err(EngineError::NotReplicated { got, wanted }),
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            })
            .collect();
        if out
            .iter()
            .any(|r| matches!(r, Err(EngineError::NotReplicated { .. })))
        {
            metrics::counter!("mythos_not_replicated_total").increment(1);
        }
        out
    }

    /// Appends `body` to `players` (distinct, in delivery order): on one
    /// Redis in one script call; on a cluster in one call per slot, run
    /// concurrently. Every call that succeeded stays appended even if
    /// another failed: the error is answered (503) and a retry with the same
    /// dedupe key appends nothing twice and fills in the rest.
    async fn append_all(
        &self,
        players: &[String],
        body: &EventBody,
        dedupe_key: Option<&str>,
    ) -> Result<Vec<Delivery>> {
        let groups: Vec<Vec<&String>> = if self.conns.is_cluster() {
            let mut by_slot: HashMap<u16, Vec<&String>> = HashMap::new();
            for p in players {
                by_slot.entry(keys::slot(p.as_bytes())).or_default().push(p);
            }
            by_slot.into_values().collect()
        } else {
            vec![players.iter().collect()]
        };
        // With WAIT, every group is written through one connection of its
        // own, so that one `WAIT` per master covers them all (a `WAIT` for
        // the second slot of a master returns at once).
        let mut own = if self.waits() {
            Some(self.conns.own().await?)
        } else {
            None
        };
        let calls = groups.iter().map(|g| {
            let conn = own.as_ref().map(Own::handle);
            async move {
                let mut conn = match conn {
                    Some(Some(c)) => c,
                    Some(None) => return Err(pool_err("connection discarded")),
                    None => self.shared().await?,
                };
                self.append_group(&mut conn, g, body, dedupe_key).await
            }
        });
        let mut done = Vec::with_capacity(groups.len());
        let mut failed = None;
        for r in join_all(calls).await {
            match r {
                Ok(ds) => done.push(ds),
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if let Some(own) = own.as_mut() {
            // Each slot group is confirmed on its own, as it was appended on
            // its own: a group whose replica confirmed becomes visible (its
            // members get the event, as on a healthy master without WAIT),
            // one whose replica did not stays invisible until the retry.
            let firsts: Vec<String> = done
                .iter()
                .filter_map(|group| group.first().map(|(p, _)| keys::events(p)))
                .collect();
            let confirmed = self.wait_each(own, &firsts).await;
            let flags = flags_of(body);
            let mut failed = None;
            let mut visible = Vec::with_capacity(done.len());
            for (group, c) in done.iter().zip(confirmed) {
                match c {
                    Ok(()) => visible.push(group),
                    Err(e) => failed = Some(e),
                }
            }
            // The connection may be discarded by now: the confirmations go
            // out on a shared one (`confirm.lua` is an ordinary write).
            let calls = visible.into_iter().map(|group| async move {
                let mut conn = self.shared().await?;
                self.make_visible(&mut conn, group, body, flags).await
            });
            join_all(calls)
                .await
                .into_iter()
                .collect::<Result<Vec<()>>>()?;
            if let Some(e) = failed {
                return Err(e);
            }
        }
        let seqs: HashMap<&str, u64> = done.into_iter().flatten().collect();
        players
            .iter()
            .map(|p| {
                let sequence_number = *seqs
                    .get(p.as_str())
                    .ok_or_else(|| EngineError::Corrupt("append.lua skipped a member".into()))?;
                Ok(Delivery {
                    player_id: p.clone(),
                    sequence_number,
                })
            })
            .collect()
    }

    /// One `append.lua` call for `players` (all of one slot on a cluster).
    async fn append_group<'p>(
        &self,
        conn: &mut Shared<'_>,
        players: &[&'p String],
        body: &EventBody,
        dedupe_key: Option<&str>,
    ) -> Result<Vec<(&'p str, u64)>> {
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
        let flags = flags_of(body);
        inv.arg(players.len())
            .arg(dedupe_key.map_or(0, |_| ms(self.limits.dedupe_window)))
            .arg(self.limits.max_backlog)
            .arg(ms(self.limits.max_backlog_age))
            .arg(flags)
            .arg(&body.event_type)
            .arg(&body.timestamp)
            .arg(body.data.get())
            .arg(body.room_id.as_deref().unwrap_or(""))
            .arg(body.id.as_deref().unwrap_or(""))
            .arg(if self.waits() && !deliver_unconfirmed() {
                ""
            } else {
                self.publish
            });
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
            .map(|(p, r)| (p.as_str(), r[0]))
            .collect())
    }

    /// With `MYTHOS_REDIS_WAIT_REPLICAS` ≥ 1 readers see only what replicas
    /// confirmed: `confirm.lua` moves each player's `confirmed` mark up to
    /// its event and announces it (see the script's header).
    async fn make_visible(
        &self,
        conn: &mut Shared<'_>,
        seqs: &[(&str, u64)],
        body: &EventBody,
        flags: &str,
    ) -> Result<()> {
        let mut inv = self.scripts.confirm.prepare_invoke();
        for (p, _) in seqs {
            inv.key(keys::meta(p));
        }
        inv.arg(seqs.len())
            .arg(self.publish)
            .arg(flags)
            .arg(&body.event_type)
            .arg(&body.timestamp)
            .arg(body.room_id.as_deref().unwrap_or(""))
            .arg(body.id.as_deref().unwrap_or(""))
            .arg(body.data.get());
        for (p, seq) in seqs {
            inv.arg(*p).arg(*seq);
        }
        let _: u64 = inv.invoke_async(conn).await?;
        Ok(())
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

    /// A room publish. With an id, the players are those its first publish
    /// reached (its record `mythos:room:{r}:dedupe:<id>`), so a repeat —
    /// after a member left or joined, or after a partial failure — reaches
    /// exactly them: their own dedupe keys answer the sequence numbers
    /// already given and appends happen only where one is missing.
    async fn publish_room(
        &self,
        room: &str,
        body: &EventBody,
        dedupe_key: Option<&str>,
    ) -> Result<Vec<Delivery>> {
        let record = match dedupe_key {
            Some(k) => {
                let r: Option<String> = redis::cmd("GET")
                    .arg(keys::room_dedupe(room, k))
                    .query_async(&mut self.shared().await?)
                    .await?;
                r
            }
            None => None,
        };
        let players = match &record {
            Some(r) => decode::room_deliveries(r)?
                .into_iter()
                .map(|d| d.player_id)
                .collect(),
            None => self.sorted_set(&keys::members(room)).await?,
        };
        let out = self.append_all(&players, body, dedupe_key).await?;
        if let (Some(k), None) = (dedupe_key, record) {
            // NX: of two racing first publishes, the record of the one that
            // stored first stands (both reached each member once, by the
            // members' dedupe keys).
            let _: Option<String> = redis::cmd("SET")
                .arg(keys::room_dedupe(room, k))
                .arg(decode::encode_room_deliveries(&out))
                .arg("PX")
                .arg(ms(self.limits.dedupe_window))
                .arg("NX")
                .query_async(&mut self.shared().await?)
                .await?;
        }
        Ok(out)
    }

    /// The members of a set, sorted.
    async fn sorted_set(&self, key: &str) -> Result<Vec<String>> {
        let mut m: Vec<String> = redis::cmd("SMEMBERS")
            .arg(key)
            .query_async(&mut self.shared().await?)
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
        let out: Vec<u64> = inv.invoke_async(&mut self.shared().await?).await?;
        if out.len() < 3 {
            return Err(EngineError::Corrupt("script answered short".into()));
        }
        Ok(out)
    }

    /// Adds or removes `player` in `room` (both sets); answers whether it
    /// changed and the room's members after. On one Redis a transaction;
    /// on a cluster the two sets live on different slots, so the room's set
    /// (the one publishes read) is written first, then the player's.
    async fn membership(&self, room: &str, player: &str, add: bool) -> Result<(bool, Vec<String>)> {
        let (members, rooms) = (keys::members(room), keys::rooms(player));
        let cmd = if add { "SADD" } else { "SREM" };
        let mut pipe = redis::pipe();
        pipe.atomic().cmd(cmd).arg(&members).arg(player);
        if !self.conns.is_cluster() {
            pipe.cmd(cmd).arg(&rooms).arg(room).ignore();
        }
        pipe.cmd("SMEMBERS").arg(&members);
        let mut conn = self.shared().await?;
        let (changed, mut list): (u64, Vec<String>) = pipe.query_async(&mut conn).await?;
        if self.conns.is_cluster() {
            let _: u64 = redis::cmd(cmd)
                .arg(&rooms)
                .arg(room)
                .query_async(&mut conn)
                .await?;
        }
        list.sort_unstable();
        Ok((changed == 1, list))
    }

    /// Partition `partition` of the command stream, checked.
    fn commands(&self, partition: usize) -> Result<String> {
        let n = self.options.command_partitions;
        if partition >= n {
            return Err(EngineError::Rejected("no such command partition"));
        }
        Ok(keys::partition(keys::COMMANDS, partition, n))
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

/// The `append.lua` / `confirm.lua` flags: `r` with a room id, `i` with an id.
fn flags_of(body: &EventBody) -> &'static str {
    match (&body.room_id, &body.id) {
        (Some(_), Some(_)) => "ri",
        (Some(_), None) => "r",
        (None, Some(_)) => "i",
        (None, None) => "",
    }
}

/// Where an append is written (see [`RedisEngine::writer`]).
enum Writer<'a> {
    Shared(Shared<'a>),
    Own(Own),
}

impl redis::aio::ConnectionLike for Writer<'_> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Writer::Shared(c) => c.req_packed_command(cmd),
            Writer::Own(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Writer::Shared(c) => c.req_packed_commands(cmd, offset, count),
            Writer::Own(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        0
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
            match target {
                Target::Player(p) => {
                    self.append_all(std::slice::from_ref(p), &body, dedupe_key)
                        .await
                }
                Target::Players(ps) => self.append_all(ps, &body, dedupe_key).await,
                Target::Room(r) => self.publish_room(r, &body, dedupe_key).await,
            }
        })
        .await
    }

    async fn read(&self, player: &str, after: u64, limit: usize) -> Result<Vec<Event>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut xrange = redis::cmd("XRANGE");
        xrange
            .arg(keys::events(player))
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(limit);
        let mut conn = self.shared().await?;
        if !self.waits() || deliver_unconfirmed() {
            let v: Value = xrange.query_async(&mut conn).await?;
            return stream::entries(v)?.into_iter().map(event_of).collect();
        }
        // Only what replicas confirmed (absent mark: everything, see lib.lua).
        let (confirmed, v): (Option<u64>, Value) = redis::pipe()
            .cmd("HGET")
            .arg(keys::meta(player))
            .arg("confirmed")
            .add_command(xrange)
            .query_async(&mut conn)
            .await?;
        let upto = confirmed.unwrap_or(u64::MAX);
        let events: Result<Vec<Event>> = stream::entries(v)?.into_iter().map(event_of).collect();
        let mut events = events?;
        events.retain(|e| e.sequence_number <= upto);
        Ok(events)
    }

    async fn ack(&self, player: &str, seq: u64) -> Result<Cursor> {
        let args = [seq.to_string(), self.visibility().to_string()];
        let v = self.player_script(&self.scripts.ack, player, &args).await?;
        Ok(cursor_of(&v))
    }

    async fn cursor(&self, player: &str) -> Result<Cursor> {
        let args = [
            self.limits.max_backlog.to_string(),
            ms(self.limits.max_backlog_age).to_string(),
            self.visibility().to_string(),
        ];
        let v = self
            .player_script(&self.scripts.cursor, player, &args)
            .await?;
        Ok(cursor_of(&v))
    }

    async fn join(&self, room: &str, player: &str) -> Result<Option<Vec<String>>> {
        let (added, mut members) = self.membership(room, player, true).await?;
        if !added {
            return Ok(None);
        }
        members.retain(|m| m != player);
        Ok(Some(members))
    }

    async fn leave(&self, room: &str, player: &str) -> Result<Option<Vec<String>>> {
        let (removed, members) = self.membership(room, player, false).await?;
        Ok(removed.then_some(members))
    }

    async fn members(&self, room: &str) -> Result<Vec<String>> {
        self.sorted_set(&keys::members(room)).await
    }

    async fn rooms_of(&self, player: &str) -> Result<Vec<String>> {
        self.sorted_set(&keys::rooms(player)).await
    }

    async fn push_command(&self, cmd: &Command) -> Result<String> {
        let stream = self.commands(keys::partition_of(
            &cmd.player_id,
            self.options.command_partitions,
        ))?;
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
            let id: String = Cmd::xadd_maxlen(&stream, maxlen, "*", &fields)
                .query_async(&mut conn)
                .await?;
            self.confirm(&mut conn, &stream).await?;
            Ok(id)
        })
        .await
    }

    fn command_partitions(&self) -> usize {
        self.options.command_partitions
    }

    async fn read_commands(
        &self,
        group: &str,
        consumer: &str,
        partition: usize,
        count: usize,
        block: Duration,
    ) -> Result<Vec<CommandEntry>> {
        let stream = self.commands(partition)?;
        let entries = Group::new(&stream, group)
            .read(&self.conns, consumer, ">", count, block)
            .await?;
        entries
            .into_iter()
            .filter_map(|e| command_of(e).transpose())
            .collect()
    }

    async fn ack_commands(
        &self,
        group: &str,
        partition: usize,
        entry_ids: &[String],
    ) -> Result<()> {
        if entry_ids.is_empty() {
            return Ok(());
        }
        let stream = self.commands(partition)?;
        Group::new(&stream, group)
            .ack(&mut self.shared().await?, entry_ids)
            .await
    }

    async fn claim_commands(
        &self,
        group: &str,
        consumer: &str,
        partition: usize,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<CommandEntry>> {
        let stream = self.commands(partition)?;
        let group = Group::new(&stream, group);
        let count = count.max(1);
        let mut out = Vec::new();
        let mut cursor = "0-0".to_string();
        while out.len() < count {
            let (next, claimed) = group
                .claim(
                    &mut self.shared().await?,
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

    async fn commands_after(
        &self,
        partition: usize,
        after: &str,
        count: usize,
    ) -> Result<Vec<CommandEntry>> {
        let stream = self.commands(partition)?;
        let (ms, n) = parse_entry_id(after).ok_or(EngineError::Rejected(
            "a command entry id must look like <ms>-<n>",
        ))?;
        if count == 0 {
            return Ok(Vec::new());
        }
        let v: Value = redis::cmd("XRANGE")
            .arg(&stream)
            .arg(format!("({ms}-{n}"))
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.shared().await?)
            .await?;
        stream::entries(v)?
            .into_iter()
            .filter_map(|e| command_of(e).transpose())
            .collect()
    }

    async fn dedupe_keys(&self, player: &str, limit: usize) -> Result<DedupeKeys> {
        info::dedupe_keys(&self.conns, player, limit).await
    }

    async fn streams(&self) -> Result<Vec<StreamInfo>> {
        info::streams(
            &self.conns,
            self.options.command_partitions,
            self.options.publish_partitions,
        )
        .await
    }

    async fn create_user(&self, username: &str, account: &Account) -> Result<bool> {
        let created: u8 = self
            .scripts
            .create_user
            .key(keys::user(username))
            .arg(&account.password_hash)
            .arg(&account.role)
            .invoke_async(&mut self.shared().await?)
            .await?;
        Ok(created == 1)
    }

    async fn user(&self, username: &str) -> Result<Option<Account>> {
        let (hash, role): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(keys::user(username))
            .arg("password_hash")
            .arg("role")
            .query_async(&mut self.shared().await?)
            .await?;
        Ok(hash.map(|password_hash| Account {
            password_hash,
            role: role.unwrap_or_else(|| "player".into()),
        }))
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
        publisher: Arc<dyn Engine>,
        opts: IngestOptions,
        shutdown: CancellationToken,
    ) -> Option<JoinHandle<IngestExit>> {
        let n = self.options.publish_partitions;
        let streams = (0..n)
            .map(|i| keys::partition(keys::PUBLISH, i, n))
            .collect();
        let run = ingest::run(publisher, self.conns.clone(), streams, opts, shutdown);
        Some(tokio::spawn(run))
    }

    async fn watch(&self, player: &str) -> Result<()> {
        self.live.watch(player).await
    }

    fn unwatch(&self, player: &str) {
        self.live.unwatch(player);
    }
}
