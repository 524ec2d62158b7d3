//! Redis-native publishing end to end: entries XADDed to `mythos:publish`
//! reach the players' logs, malformed ones are dead-lettered with a reason,
//! engine errors are retried, and a consumer that dies between append and
//! XACK loses nothing and duplicates nothing (another one takes over).

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mythos_broker::engine::presence::{Fact, FactEntry, Lease, Reason, Record};
use mythos_broker::engine::redis::{RedisEngine, RedisOptions};
use mythos_broker::engine::{
    Account, Accounts, Command, CommandEntry, CommandStream, Cursor, Engine, EngineError, EventLog,
    IngestExit as Exit, IngestOptions, Inspect, Limits, Presence, RefreshFamily, RefreshTokens,
    Result, Rooms, Rotation,
};
use mythos_broker::hub::Hub;
use mythos_broker::protocol::{Delivery, Event, EventBody, Target};
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use support::{eventually, RedisServer};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);
/// The consumer group of Redis-native publishing (docs/redis-layout.md).
const GROUP: &str = "mythos-broker";

struct Setup {
    server: RedisServer,
    engine: Arc<RedisEngine>,
    redis: MultiplexedConnection,
    stop: CancellationToken,
}

async fn setup() -> Setup {
    let server = RedisServer::start();
    let engine = RedisEngine::connect(
        &RedisOptions::single(&server.url()).with_pool(4),
        Limits::default(),
        Hub::new(64),
    )
    .await
    .expect("connect");
    let redis = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("client");
    Setup {
        server,
        engine,
        redis,
        stop: CancellationToken::new(),
    }
}

impl Setup {
    fn opts(&self, consumer: &str) -> IngestOptions {
        IngestOptions {
            claim_idle: Duration::from_millis(200),
            block: Duration::from_millis(100),
            retry_delay: Duration::from_millis(20),
            ..IngestOptions::new(consumer)
        }
    }

    fn spawn(&self, opts: IngestOptions) -> tokio::task::JoinHandle<Exit> {
        self.spawn_on(self.engine.clone(), opts)
    }

    fn spawn_on(&self, e: Arc<dyn Engine>, opts: IngestOptions) -> tokio::task::JoinHandle<Exit> {
        let stop = self.stop.clone();
        self.engine
            .start_ingest(mythos_broker::EntryPublisher::new(e, 64), opts, stop)
            .expect("Redis ingests")
    }

    async fn xadd(&mut self, fields: &[(&str, &str)]) -> String {
        self.redis
            .xadd("mythos:publish", "*", fields)
            .await
            .expect("XADD")
    }

    async fn pending(&mut self) -> u64 {
        let v: redis::RedisResult<(u64, redis::Value, redis::Value, redis::Value)> =
            redis::cmd("XPENDING")
                .arg("mythos:publish")
                .arg(GROUP)
                .query_async(&mut self.redis)
                .await;
        v.map(|v| v.0).unwrap_or(u64::MAX)
    }

    async fn dead(&mut self) -> Vec<(String, Vec<(String, String)>)> {
        self.redis
            .xrange_all("mythos:publish:dead")
            .await
            .expect("XRANGE")
    }

    /// Waits until `player`'s last sequence number is `last` and nothing is pending.
    async fn settled(&mut self, player: &str, last: u64) {
        let e = self.engine.clone();
        eventually(WAIT, "entries to be appended and acked", || {
            let e = e.clone();
            let mut r = self.redis.clone();
            async move {
                let c = e.cursor(player).await.ok()?;
                let p: (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
                    .arg("mythos:publish")
                    .arg(GROUP)
                    .query_async(&mut r)
                    .await
                    .ok()?;
                (c.last == last && p.0 == 0).then_some(())
            }
        })
        .await;
    }

    /// (sequence number, event_type, data, room_id, id) of each retained event.
    async fn log(
        &self,
        player: &str,
    ) -> Vec<(u64, String, String, Option<String>, Option<String>)> {
        let evs = self.engine.read(player, 0, 100).await.expect("read");
        evs.iter()
            .map(|e| {
                let b = &e.body;
                let d = b.data.get().to_string();
                (
                    e.sequence_number,
                    b.event_type.clone(),
                    d,
                    b.room_id.clone(),
                    b.id.clone(),
                )
            })
            .collect()
    }
}

fn ev(
    seq: u64,
    t: &str,
    data: &str,
    room: Option<&str>,
    id: Option<&str>,
) -> (u64, String, String, Option<String>, Option<String>) {
    (
        seq,
        t.into(),
        data.into(),
        room.map(Into::into),
        id.map(Into::into),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_reach_the_logs_once() {
    let mut s = setup().await;
    s.engine.join("tavern", "alice").await.unwrap();
    s.engine.join("tavern", "bob").await.unwrap();
    let task = s.spawn(s.opts("node-a"));
    let alice = r#"{"player":"alice"}"#;
    let both = r#"{"players":["alice","bob"]}"#;
    let p1 = [
        ("to", alice),
        ("event_type", "chat"),
        ("data", r#"{"x":1}"#),
        ("id", "p1"),
    ];
    s.xadd(&p1).await;
    s.xadd(&p1).await; // same id: deduped
    s.xadd(&[("to", both), ("event_type", "tick"), ("data", "2")])
        .await;
    s.xadd(&[("to", both), ("event_type", "tick"), ("data", "2")])
        .await; // no id: distinct
    let room = [
        ("to", r#"{"room":"tavern"}"#),
        ("event_type", "say"),
        ("data", "\"hi\""),
    ];
    s.xadd(&room).await;
    s.settled("alice", 4).await;
    assert_eq!(
        s.log("alice").await,
        vec![
            ev(1, "chat", r#"{"x":1}"#, None, Some("p1")),
            ev(2, "tick", "2", None, None),
            ev(3, "tick", "2", None, None),
            ev(4, "say", "\"hi\"", Some("tavern"), None),
        ]
    );
    let bob: Vec<u64> = s.log("bob").await.iter().map(|e| e.0).collect();
    assert_eq!(bob, vec![1, 2, 3]);
    assert!(s.dead().await.is_empty());
    s.stop.cancel();
    assert_eq!(task.await.unwrap(), Exit::Shutdown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entries_are_dead_lettered_with_a_reason() {
    let mut s = setup().await;
    let task = s.spawn(s.opts("node-a"));
    let to = r#"{"player":"alice"}"#;
    let big = format!("\"{}\"", "x".repeat(100));
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("event_type", "t"), ("data", "1")], "missing_field"),
        (vec![("to", to), ("data", "1")], "missing_field"),
        (vec![("to", to), ("event_type", "t")], "missing_field"),
        (
            vec![("to", "{"), ("event_type", "t"), ("data", "1")],
            "invalid_json",
        ),
        (
            vec![("to", to), ("event_type", "t"), ("data", "{nope")],
            "invalid_json",
        ),
        (
            vec![
                ("to", r#"{"team":"x"}"#),
                ("event_type", "t"),
                ("data", "1"),
            ],
            "invalid_target",
        ),
        (
            vec![
                ("to", r#"{"player":"a b"}"#),
                ("event_type", "t"),
                ("data", "1"),
            ],
            "invalid_request",
        ),
        (
            vec![("to", to), ("event_type", ""), ("data", "1")],
            "invalid_event_type",
        ),
        (
            vec![("to", to), ("event_type", "t"), ("data", &big)],
            "too_large",
        ),
    ];
    let mut ids = Vec::new();
    for (fields, _) in &cases {
        ids.push(s.xadd(fields).await);
    }
    s.xadd(&[("to", to), ("event_type", "ok"), ("data", "1")])
        .await;
    s.settled("alice", 1).await;
    let dead = s.dead().await;
    assert_eq!(dead.len(), cases.len());
    for ((fields, code), (id, (_, got))) in cases.iter().zip(ids.iter().zip(&dead)) {
        let get = |k: &str| got.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
        assert_eq!(get("entry_id"), Some(id.as_str()));
        let reason = get("reason").unwrap_or_default();
        assert!(
            reason.starts_with(&format!("{code}: ")),
            "{reason:?} for {fields:?}"
        );
        for (k, v) in fields {
            assert_eq!(get(k), Some(*v), "original field {k} kept");
        }
    }
    assert_eq!(s.log("alice").await, vec![ev(1, "ok", "1", None, None)]);
    s.stop.cancel();
    assert_eq!(task.await.unwrap(), Exit::Shutdown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_errors_are_retried_not_dead_lettered() {
    let mut s = setup().await;
    let flaky = Arc::new(Flaky {
        inner: s.engine.clone(),
        failures: AtomicU32::new(3),
    });
    let task = s.spawn_on(flaky.clone(), s.opts("node-a"));
    let to = r#"{"player":"alice"}"#;
    s.xadd(&[("to", to), ("event_type", "t"), ("data", "1")])
        .await;
    s.xadd(&[("to", to), ("event_type", "t"), ("data", "2")])
        .await;
    s.settled("alice", 2).await;
    assert_eq!(flaky.failures.load(Ordering::SeqCst), 0);
    let log: Vec<(u64, String)> = s
        .log("alice")
        .await
        .into_iter()
        .map(|e| (e.0, e.2))
        .collect();
    assert_eq!(log, vec![(1, "1".to_string()), (2, "2".to_string())]);
    assert!(s.dead().await.is_empty());
    s.stop.cancel();
    assert_eq!(task.await.unwrap(), Exit::Shutdown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_append_and_ack_loses_and_duplicates_nothing() {
    let mut s = setup().await;
    let a = s.spawn(IngestOptions {
        crash_after_append: true,
        ..s.opts("node-a")
    });
    let to = r#"{"players":["alice","bob"]}"#;
    let entry = s
        .xadd(&[("to", to), ("event_type", "t"), ("data", "\"once\"")])
        .await;
    let exit = tokio::time::timeout(WAIT, a)
        .await
        .expect("A stops")
        .unwrap();
    assert_eq!(exit, Exit::Crashed);
    // A appended, then died holding the entry.
    assert_eq!(s.engine.cursor("alice").await.unwrap().last, 1);
    assert_eq!(s.pending().await, 1);
    let owner: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg("mythos:publish")
        .arg(GROUP)
        .arg("-")
        .arg("+")
        .arg(10)
        .query_async(&mut s.redis)
        .await
        .unwrap();
    assert_eq!(
        (owner[0].0.as_str(), owner[0].1.as_str()),
        (entry.as_str(), "node-a")
    );

    // B takes it over after claim_idle; the dedupe key returns A's deliveries.
    let b = s.spawn(s.opts("node-b"));
    s.settled("alice", 1).await;
    for p in ["alice", "bob"] {
        assert_eq!(s.log(p).await, vec![ev(1, "t", "\"once\"", None, None)]);
    }
    assert!(s.dead().await.is_empty());
    // B goes on with new entries.
    s.xadd(&[("to", to), ("event_type", "t"), ("data", "\"next\"")])
        .await;
    s.settled("bob", 2).await;
    assert_eq!(s.engine.cursor("alice").await.unwrap().last, 2);
    s.stop.cancel();
    assert_eq!(b.await.unwrap(), Exit::Shutdown);
    drop(s.server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumer_finishes_its_own_pending_entries() {
    let mut s = setup().await;
    let a = s.spawn(IngestOptions {
        crash_after_append: true,
        claim_idle: Duration::from_secs(3600),
        ..s.opts("node-a")
    });
    let to = r#"{"player":"alice"}"#;
    s.xadd(&[("to", to), ("event_type", "t"), ("data", "1"), ("id", "k")])
        .await;
    assert_eq!(a.await.unwrap(), Exit::Crashed);
    assert_eq!(s.pending().await, 1);
    let a2 = s.spawn(IngestOptions {
        claim_idle: Duration::from_secs(3600),
        ..s.opts("node-a")
    });
    s.settled("alice", 1).await;
    assert_eq!(s.log("alice").await, vec![ev(1, "t", "1", None, Some("k"))]);
    s.stop.cancel();
    assert_eq!(a2.await.unwrap(), Exit::Shutdown);
}

/// An engine whose first `failures` publishes fail as if Redis were down.
struct Flaky {
    inner: Arc<RedisEngine>,
    failures: AtomicU32,
}

#[async_trait]
impl EventLog for Flaky {
    async fn read(&self, player: &str, after: u64, limit: usize) -> Result<Vec<Event>> {
        self.inner.read(player, after, limit).await
    }

    async fn ack(&self, player: &str, seq: u64) -> Result<Cursor> {
        self.inner.ack(player, seq).await
    }

    async fn cursor(&self, player: &str) -> Result<Cursor> {
        self.inner.cursor(player).await
    }

    async fn watch(&self, player: &str) -> Result<()> {
        self.inner.watch(player).await
    }

    fn unwatch(&self, player: &str) {
        self.inner.unwatch(player)
    }
}

#[async_trait]
impl Rooms for Flaky {
    async fn join(&self, room: &str, player: &str) -> Result<Option<Vec<String>>> {
        self.inner.join(room, player).await
    }

    async fn leave(&self, room: &str, player: &str) -> Result<Option<Vec<String>>> {
        self.inner.leave(room, player).await
    }

    async fn members(&self, room: &str) -> Result<Vec<String>> {
        self.inner.members(room).await
    }

    async fn rooms_of(&self, player: &str) -> Result<Vec<String>> {
        self.inner.rooms_of(player).await
    }
}

#[async_trait]
impl CommandStream for Flaky {
    async fn push_command(&self, cmd: &Command) -> Result<String> {
        self.inner.push_command(cmd).await
    }

    async fn read_commands(
        &self,
        group: &str,
        consumer: &str,
        partition: usize,
        count: usize,
        block: Duration,
    ) -> Result<Vec<CommandEntry>> {
        self.inner
            .read_commands(group, consumer, partition, count, block)
            .await
    }

    async fn commands_after(
        &self,
        partition: usize,
        after: &str,
        count: usize,
    ) -> Result<Vec<CommandEntry>> {
        self.inner.commands_after(partition, after, count).await
    }

    async fn ack_commands(
        &self,
        group: &str,
        partition: usize,
        entry_ids: &[String],
    ) -> Result<()> {
        self.inner.ack_commands(group, partition, entry_ids).await
    }

    async fn claim_commands(
        &self,
        group: &str,
        consumer: &str,
        partition: usize,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<CommandEntry>> {
        self.inner
            .claim_commands(group, consumer, partition, min_idle, count)
            .await
    }
}

#[async_trait]
impl Accounts for Flaky {
    async fn create_user(&self, username: &str, account: &Account) -> Result<bool> {
        self.inner.create_user(username, account).await
    }

    async fn user(&self, username: &str) -> Result<Option<Account>> {
        self.inner.user(username).await
    }
}

#[async_trait]
impl RefreshTokens for Flaky {
    async fn create_family(
        &self,
        family: &str,
        owner: &RefreshFamily,
        hash: &str,
        ttl: Duration,
    ) -> Result<()> {
        self.inner.create_family(family, owner, hash, ttl).await
    }

    async fn rotate_family(
        &self,
        family: &str,
        presented: &str,
        next: &str,
        ttl: Duration,
    ) -> Result<Rotation> {
        self.inner.rotate_family(family, presented, next, ttl).await
    }

    async fn revoke_family(&self, family: &str) -> Result<Option<RefreshFamily>> {
        self.inner.revoke_family(family).await
    }

    async fn family_exists(&self, family: &str) -> Result<bool> {
        self.inner.family_exists(family).await
    }
}

#[async_trait]
impl Inspect for Flaky {
    async fn dedupe_keys(
        &self,
        player: &str,
        limit: usize,
    ) -> Result<mythos_broker::engine::DedupeKeys> {
        self.inner.dedupe_keys(player, limit).await
    }

    async fn streams(&self) -> Result<Vec<mythos_broker::engine::StreamInfo>> {
        self.inner.streams().await
    }
}

#[async_trait]
impl Presence for Flaky {
    async fn presence_connect(&self, node: &str, player: &str) -> Result<Option<Fact>> {
        self.inner.presence_connect(node, player).await
    }

    async fn presence_disconnect(
        &self,
        node: &str,
        player: &str,
        grace: Duration,
        why: Reason,
    ) -> Result<Option<Fact>> {
        self.inner
            .presence_disconnect(node, player, grace, why)
            .await
    }

    async fn presence_logout(&self, node: &str, player: &str) -> Result<Option<Fact>> {
        self.inner.presence_logout(node, player).await
    }

    async fn presence_heartbeat(&self, node: &str, lease: Duration) -> Result<bool> {
        self.inner.presence_heartbeat(node, lease).await
    }

    async fn presence_hold(&self, node: &str, player: &str) -> Result<()> {
        self.inner.presence_hold(node, player).await
    }

    async fn presence_release(&self, node: &str) -> Result<()> {
        self.inner.presence_release(node).await
    }

    async fn presence_sweep(&self, node: &str, grace: Duration) -> Result<Vec<Fact>> {
        self.inner.presence_sweep(node, grace).await
    }

    async fn presence_of(&self, players: &[String]) -> Result<Vec<Record>> {
        self.inner.presence_of(players).await
    }

    async fn presence_facts(
        &self,
        partition: usize,
        after: &str,
        count: usize,
    ) -> Result<Vec<FactEntry>> {
        self.inner.presence_facts(partition, after, count).await
    }

    async fn presence_leases(&self) -> Result<Vec<Lease>> {
        self.inner.presence_leases().await
    }

    async fn set_room_presence_events(&self, room: &str, on: bool) -> Result<()> {
        self.inner.set_room_presence_events(room, on).await
    }

    async fn room_presence_events(&self, room: &str) -> Result<bool> {
        self.inner.room_presence_events(room).await
    }
}

#[async_trait]
impl Engine for Flaky {
    async fn publish(
        &self,
        target: &Target,
        body: Arc<EventBody>,
        dedupe_key: Option<&str>,
    ) -> Result<Vec<Delivery>> {
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(EngineError::Pool("injected outage".into()));
        }
        self.inner.publish(target, body, dedupe_key).await
    }

    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
}
