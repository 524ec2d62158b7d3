//! Live delivery from Redis to this node: subscriptions that follow the
//! node's connections, and decoding what arrives on them.
//!
//! Owns: this node's one subscriber connection (a RESP3 connection whose
//! pushes come to [`run`]); the set of players it follows, with a count of
//! local watchers each ([`Live::watch`] / [`Live::unwatch`], called by
//! sessions: subscribe before replay, drop after the player's last local
//! connection left); the channel commands — `SUBSCRIBE mythos:live:{p}` on one
//! Redis, `SSUBSCRIBE` (sharded pub/sub, one command per slot) on a cluster,
//! so a node receives only the announcements of players it holds a
//! connection of; decoding announcements (`lua/lib.lua` writes them; anyone
//! who may publish on the broker's Redis can send anything there: a message
//! that does not decode is counted and dropped, never a panic); and
//! recovery: after a lost connection, a failover or a resharding (Redis
//! unsubscribes shard channels of a slot that moved) the channels are
//! subscribed again with backoff, and each confirmed resubscription (not
//! the first subscription: its sessions read after it) nudges
//! that player's sessions to re-read their log (announcements sent meanwhile
//! are gone; the log is not). [`LiveHealth`] says whether every followed
//! channel is subscribed, for `/readyz`. Must not touch: keys, the command
//! connections.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::AbortOnDropHandle;

use super::conn::Topology;
use super::{keys, OP_TIMEOUT};
use crate::engine::{EngineError, LiveSink, Result as EngineResult};
use crate::protocol::{Event, EventBody};

/// How often the subscriber connection is pinged to detect a silently dead one.
const PING_EVERY: Duration = Duration::from_secs(5);
/// How long a ping may take before the connection counts as lost.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// Backoff between resubscribe attempts: 50 ms doubling to 5 s.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Channels per subscribe command.
const CHUNK: usize = 512;

/// Whether this node's live subscriptions are all in place.
#[derive(Debug, Default)]
pub struct LiveHealth(AtomicBool);

impl LiveHealth {
    pub fn is_up(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    fn set(&self, up: bool) {
        self.0.store(up, Ordering::SeqCst);
    }
}

enum Request {
    Watch(String, oneshot::Sender<std::result::Result<(), String>>),
    Unwatch(String),
}

/// This node's live subscriptions. Dropping it stops them.
pub struct Live {
    requests: mpsc::UnboundedSender<Request>,
    health: Arc<LiveHealth>,
    _task: AbortOnDropHandle<()>,
}

impl Live {
    /// Connects the subscriber connection (fails if Redis is unreachable)
    /// and starts routing what arrives to `hub`.
    pub async fn start(topology: &Topology, hub: Arc<dyn LiveSink>) -> EngineResult<Self> {
        let (push_tx, pushes) = mpsc::unbounded_channel();
        let mut sub = Subscriber {
            topology: topology.clone(),
            push_tx,
            conn: None,
        };
        sub.connect().await?;
        let health = Arc::new(LiveHealth::default());
        health.set(true);
        let (requests, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(supervise(sub, rx, pushes, hub, health.clone()));
        Ok(Self {
            requests,
            health,
            _task: AbortOnDropHandle::new(task),
        })
    }

    /// Follows `player`: answers once this node's subscription to the
    /// player's channel is confirmed, so every append after this returns is
    /// announced here. Pair every call with [`Live::unwatch`], also after an error.
    pub async fn watch(&self, player: &str) -> EngineResult<()> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::Watch(player.to_string(), tx))
            .map_err(|_| EngineError::Pool("live subscriber stopped".into()))?;
        match tokio::time::timeout(2 * OP_TIMEOUT, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(EngineError::Pool(format!("live subscribe: {e}"))),
            Ok(Err(_)) => Err(EngineError::Pool("live subscriber stopped".into())),
            Err(_) => Err(EngineError::Pool("live subscribe timed out".into())),
        }
    }

    /// One local watcher of `player` fewer; after the last, the node unsubscribes.
    pub fn unwatch(&self, player: &str) {
        let _ = self.requests.send(Request::Unwatch(player.to_string()));
    }

    pub fn is_up(&self) -> bool {
        self.health.is_up()
    }
}

/// The subscriber connection.
struct Subscriber {
    topology: Topology,
    push_tx: mpsc::UnboundedSender<PushInfo>,
    conn: Option<SubConn>,
}

#[derive(Clone)]
enum SubConn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Subscriber {
    /// Connects unless connected: on one Redis a connection is replaced
    /// (set to `None`) when lost; a cluster connection repairs itself
    /// (reconnects, follows the slot map) and is kept.
    async fn connect(&mut self) -> EngineResult<()> {
        if self.conn.is_some() {
            return Ok(());
        }
        let conn = match &self.topology {
            Topology::Single(url) => {
                let info = url.as_str().into_connection_info()?;
                let settings = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                let client = redis::Client::open(info.set_redis_settings(settings))?;
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(OP_TIMEOUT))
                    .set_response_timeout(Some(OP_TIMEOUT))
                    .set_push_sender(self.push_tx.clone());
                SubConn::Single(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )
            }
            Topology::Cluster(seeds) => SubConn::Cluster(
                ClusterClientBuilder::new(seeds.clone())
                    .use_protocol(ProtocolVersion::RESP3)
                    .push_sender(self.push_tx.clone())
                    .connection_timeout(OP_TIMEOUT)
                    .response_timeout(OP_TIMEOUT)
                    .build()?
                    .get_async_connection()
                    .await?,
            ),
        };
        self.conn = Some(conn);
        Ok(())
    }

    /// Subscribes to the live channels of `players`; on one Redis a failure
    /// drops the connection (the next attempt makes a fresh one).
    async fn subscribe(&mut self, players: &[String], on: bool) -> EngineResult<()> {
        if players.is_empty() {
            return Ok(());
        }
        self.connect().await?;
        let Some(conn) = self.conn.clone() else {
            return Err(EngineError::Pool("no subscriber connection".into()));
        };
        let channels: Vec<String> = players.iter().map(|p| keys::live(p)).collect();
        let r = match conn {
            SubConn::Single(mut c) => {
                let mut r = Ok(());
                for chunk in channels.chunks(CHUNK) {
                    r = if on {
                        c.subscribe(chunk).await
                    } else {
                        c.unsubscribe(chunk).await
                    };
                    if r.is_err() {
                        break;
                    }
                }
                r
            }
            SubConn::Cluster(c) => {
                // A shard-channel command names channels of one slot only.
                let mut by_slot: HashMap<u16, Vec<String>> = HashMap::new();
                for (p, ch) in players.iter().zip(channels) {
                    by_slot
                        .entry(keys::slot(p.as_bytes()))
                        .or_default()
                        .push(ch);
                }
                let calls = by_slot.into_values().map(|chs| {
                    let mut c = c.clone();
                    async move {
                        if on {
                            c.ssubscribe(chs).await
                        } else {
                            c.sunsubscribe(chs).await
                        }
                    }
                });
                join_all(calls).await.into_iter().collect()
            }
        };
        if let Err(e) = r {
            if matches!(self.conn, Some(SubConn::Single(_))) {
                self.conn = None;
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// False if the connection stopped answering (one Redis; a cluster
    /// connection reports its losses as pushes).
    async fn alive(&mut self) -> bool {
        let Some(SubConn::Single(c)) = &mut self.conn else {
            return true;
        };
        let cmd = redis::cmd("PING");
        let ping = tokio::time::timeout(PING_TIMEOUT, cmd.query_async::<Value>(c));
        if matches!(ping.await, Ok(Ok(_))) {
            return true;
        }
        self.conn = None;
        false
    }
}

/// Runs the subscriber; should it ever end (a bug that panics), counts it,
/// marks live delivery down, nudges every session and starts it again with
/// the same followed players.
async fn supervise(
    sub: Subscriber,
    mut requests: mpsc::UnboundedReceiver<Request>,
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    hub: Arc<dyn LiveSink>,
    health: Arc<LiveHealth>,
) {
    let mut state = State {
        sub,
        wanted: HashMap::new(),
        stale: HashSet::new(),
        confirming: HashSet::new(),
        all_stale: false,
        backoff: BACKOFF_MIN,
    };
    loop {
        let r = std::panic::AssertUnwindSafe(state.run(&mut requests, &mut pushes, &*hub, &health));
        let r = futures_util::FutureExt::catch_unwind(r).await;
        if r.is_ok() {
            return; // the engine was dropped
        }
        health.set(false);
        tracing::error!("live subscriber panicked; restarting it");
        metrics::counter!(crate::telemetry::LIVE_LISTENER_RESTARTS).increment(1);
        state.all_stale = true;
        hub.nudge_all();
    }
}

struct State {
    sub: Subscriber,
    /// Followed players and their local watcher counts.
    wanted: HashMap<String, usize>,
    /// Followed players whose subscription must be made again.
    stale: HashSet<String>,
    /// Players whose first subscription's confirmation is still to come:
    /// their sessions read the log after `watch` returned, so that
    /// confirmation nudges nobody (every later one does).
    confirming: HashSet<String>,
    /// Every followed player's subscription must be made again.
    all_stale: bool,
    backoff: Duration,
}

impl State {
    async fn run(
        &mut self,
        requests: &mut mpsc::UnboundedReceiver<Request>,
        pushes: &mut mpsc::UnboundedReceiver<PushInfo>,
        hub: &dyn LiveSink,
        health: &LiveHealth,
    ) {
        let mut ticker = tokio::time::interval(PING_EVERY);
        ticker.tick().await;
        loop {
            let repair = self.all_stale || !self.stale.is_empty();
            tokio::select! {
                biased;
                push = pushes.recv() => match push {
                    Some(p) => self.on_push(p, hub, health),
                    None => return,
                },
                req = requests.recv() => match req {
                    Some(r) => {
                        let mut batch = vec![r];
                        while let Ok(r) = requests.try_recv() {
                            batch.push(r);
                        }
                        self.apply(batch).await;
                    }
                    None => return,
                },
                _ = tokio::time::sleep(self.backoff), if repair => self.repair(health).await,
                _ = ticker.tick() => {
                    if !self.sub.alive().await {
                        self.lost(health);
                    }
                }
            }
        }
    }

    /// The subscriber connection (or, on a cluster, one node's) was lost:
    /// every followed channel is subscribed again (counted once per loss).
    fn lost(&mut self, health: &LiveHealth) {
        if !self.all_stale {
            tracing::warn!("live subscriber connection lost; resubscribing");
            metrics::counter!(crate::telemetry::LIVE_RESUBSCRIBES, "reason" => "connection_lost")
                .increment(1);
        }
        health.set(false);
        self.all_stale = true;
        self.confirming.clear();
        self.backoff = BACKOFF_MIN;
    }

    fn on_push(&mut self, p: PushInfo, hub: &dyn LiveSink, health: &LiveHealth) {
        let channel = |p: &PushInfo| match p.data.first() {
            Some(Value::BulkString(b)) => String::from_utf8(b.clone()).ok(),
            _ => None,
        };
        match p.kind {
            PushKind::Message | PushKind::SMessage => {
                let Some(Value::BulkString(payload)) = p.data.get(1) else {
                    return;
                };
                metrics::counter!(crate::telemetry::LIVE_MESSAGES).increment(1);
                metrics::counter!(crate::telemetry::LIVE_BYTES).increment(payload.len() as u64);
                if let Err(e) = route(hub, payload) {
                    metrics::counter!(crate::telemetry::LIVE_UNDECODABLE).increment(1);
                    tracing::error!("undecodable live announcement: {e}");
                }
            }
            // A (re)subscription is in effect: what was announced before it
            // may have been missed, so the player's sessions re-read.
            PushKind::Subscribe | PushKind::SSubscribe => {
                if let Some(ch) = channel(&p) {
                    if let Some(player) = keys::live_player(&ch) {
                        if !self.confirming.remove(player) {
                            hub.nudge(player);
                        }
                    }
                }
            }
            // Redis dropped a channel we still follow (its slot moved away).
            PushKind::Unsubscribe | PushKind::SUnsubscribe => {
                if let Some(ch) = channel(&p) {
                    if let Some(player) = keys::live_player(&ch) {
                        if self.wanted.contains_key(player) {
                            metrics::counter!(crate::telemetry::LIVE_RESUBSCRIBES, "reason" => "channel_dropped")
                                .increment(1);
                            self.confirming.remove(player);
                            self.stale.insert(player.to_string());
                            self.backoff = BACKOFF_MIN;
                        }
                    }
                }
            }
            PushKind::Disconnection => self.lost(health),
            _ => {}
        }
    }

    /// Applies a batch of watch/unwatch requests: one subscribe and one
    /// unsubscribe command (per slot on a cluster) for the whole batch.
    async fn apply(&mut self, batch: Vec<Request>) {
        let mut waiting: HashMap<String, Vec<oneshot::Sender<_>>> = HashMap::new();
        let mut gone = Vec::new();
        for r in batch {
            match r {
                Request::Watch(p, reply) => {
                    let n = self.wanted.entry(p.clone()).or_insert(0);
                    *n += 1;
                    if *n == 1 || waiting.contains_key(&p) {
                        waiting.entry(p).or_default().push(reply);
                    } else {
                        let _ = reply.send(Ok(()));
                    }
                }
                Request::Unwatch(p) => {
                    if let Some(n) = self.wanted.get_mut(&p) {
                        *n -= 1;
                        if *n == 0 {
                            self.wanted.remove(&p);
                            self.stale.remove(&p);
                            self.confirming.remove(&p);
                            if !waiting.contains_key(&p) {
                                gone.push(p);
                            }
                        }
                    }
                }
            }
        }
        if !gone.is_empty() {
            // Best effort: a channel left subscribed only costs messages
            // that `wants` then ignores.
            let _ = self.sub.subscribe(&gone, false).await;
        }
        let fresh: Vec<String> = waiting
            .keys()
            .filter(|p| self.wanted.contains_key(*p))
            .cloned()
            .collect();
        self.confirming.extend(fresh.iter().cloned());
        let r = self.sub.subscribe(&fresh, true).await;
        if r.is_err() {
            for p in &fresh {
                self.confirming.remove(p);
            }
            self.stale.extend(fresh);
        }
        for reply in waiting.into_values().flatten() {
            let _ = reply.send(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        }
    }

    /// Subscribes again what must be; on success live delivery is up.
    async fn repair(&mut self, health: &LiveHealth) {
        let players: Vec<String> = if self.all_stale {
            // A connection that still answers is kept (the loss reported may
            // have been an older connection's); one that doesn't is replaced.
            self.sub.alive().await;
            self.wanted.keys().cloned().collect()
        } else {
            self.stale.iter().cloned().collect()
        };
        let r = match self.sub.connect().await {
            Ok(()) => self.sub.subscribe(&players, true).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => {
                if self.all_stale {
                    tracing::info!(players = players.len(), "live subscriptions re-established");
                    // Players of no channel (none followed) still re-read.
                    self.all_stale = false;
                }
                self.stale.clear();
                self.backoff = BACKOFF_MIN;
                health.set(true);
            }
            Err(e) => {
                tracing::warn!(error = %e, "live resubscribe failed; retrying in {:?}", self.backoff);
                self.backoff = crate::backoff::next(self.backoff, BACKOFF_MAX);
            }
        }
    }
}

/// Hands an announcement's event to the local connections of its players.
/// The body is decoded only if some player has a connection on this node.
pub fn route(hub: &dyn LiveSink, payload: &[u8]) -> Result<(), &'static str> {
    let mut rest = payload;
    let n: usize = number(frame(&mut rest)?)?;
    let mut targets = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let player = text(frame(&mut rest)?)?;
        let seq: u64 = number(frame(&mut rest)?)?;
        targets.push((player, seq));
    }
    if !targets.iter().any(|(p, _)| hub.wants(p)) {
        return Ok(());
    }
    let body = Arc::new(body(&mut rest)?);
    for (player, seq) in targets {
        let ev = Event {
            sequence_number: seq,
            body: body.clone(),
        };
        hub.deliver(player, &ev);
    }
    Ok(())
}

/// `frame(flags) frame(event_type) frame(timestamp) frame(room_id) frame(id) frame(data)`.
fn body(rest: &mut &[u8]) -> Result<EventBody, &'static str> {
    let flags = frame(rest)?;
    let event_type = text(frame(rest)?)?;
    let timestamp = text(frame(rest)?)?;
    let room_id = text(frame(rest)?)?;
    let id = text(frame(rest)?)?;
    let data = text(frame(rest)?)?;
    Ok(EventBody {
        event_type: event_type.to_string(),
        timestamp: timestamp.to_string(),
        room_id: flags.contains(&b'r').then(|| room_id.to_string()),
        data: RawValue::from_string(data.to_string()).map_err(|_| "data is not JSON")?,
        id: flags.contains(&b'i').then(|| id.to_string()),
    })
}

/// Takes one `<len>:<bytes>` frame off the front of `rest`. The length is
/// checked against what is there before it is used, whatever its value.
fn frame<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], &'static str> {
    // A length has at most 20 digits: look no further for the colon.
    let colon = rest
        .iter()
        .take(21)
        .position(|&b| b == b':')
        .ok_or("missing frame")?;
    let len: usize = number(&rest[..colon])?;
    let body = &rest[colon + 1..];
    if len > body.len() {
        return Err("short frame");
    }
    let (out, tail) = body.split_at(len);
    *rest = tail;
    Ok(out)
}

fn text(b: &[u8]) -> Result<&str, &'static str> {
    std::str::from_utf8(b).map_err(|_| "not UTF-8")
}

fn number<T: std::str::FromStr>(b: &[u8]) -> Result<T, &'static str> {
    text(b)?.parse().map_err(|_| "not a number")
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use crate::hub::{Hub, Live};

    use super::*;

    /// Records what the engine hands over, for one followed player.
    struct Sink(Mutex<Vec<(String, Event)>>);

    impl LiveSink for Sink {
        fn wants(&self, player: &str) -> bool {
            player == "a"
        }
        fn deliver(&self, player: &str, event: &Event) {
            let mut got = self.0.lock().unwrap_or_else(|e| e.into_inner());
            got.push((player.to_string(), event.clone()));
        }
        fn nudge_all(&self) {}
        fn nudge(&self, _: &str) {}
    }

    #[test]
    fn routes_a_fan_out() {
        let sink = Sink(Mutex::new(Vec::new()));
        let payload = b"1:21:a1:71:b2:120:4:chat24:2026-11-23T10:30:00.123Z0:0:7:{\"x\":1}";
        route(&sink, payload).expect("decodes");
        let got = sink.0.into_inner().unwrap_or_default();
        let (player, ev) = &got[0];
        assert_eq!((player.as_str(), ev.sequence_number), ("a", 7));
        assert_eq!(ev.body.event_type, "chat");
        assert_eq!(ev.body.data.get(), r#"{"x":1}"#);
        assert_eq!(ev.body.room_id, None);
        assert_eq!(got[1].0, "b");
    }

    #[test]
    fn rejects_truncation() {
        let sink = Sink(Mutex::new(Vec::new()));
        assert!(route(&sink, b"1:11:a1:72:r").is_err());
        assert!(route(&sink, b"9").is_err());
    }

    /// A length field of u64::MAX (or any length past the end) is an error,
    /// not an overflow: before, `colon + 1 + len` panicked in the listener.
    #[test]
    fn huge_lengths_are_errors() {
        let hub = Hub::new(8);
        let _a = hub.subscribe("a");
        for p in [
            &b"18446744073709551615:x"[..],
            b"1:118446744073709551615:a",
            b"1:11:a1:718446744073709551614:",
            b"99999999999999999999999:",
            b"1:11:a1:71:r18446744073709551615:chat",
        ] {
            assert!(route(&*hub, p).is_err(), "{:?}", String::from_utf8_lossy(p));
        }
    }

    fn frame_of(b: &[u8]) -> Vec<u8> {
        let mut out = format!("{}:", b.len()).into_bytes();
        out.extend_from_slice(b);
        out
    }

    proptest::proptest! {
        /// Whatever arrives on the channel: decoded or an error, never a panic.
        #[test]
        fn live_messages_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let hub = Hub::new(8);
            let _a = hub.subscribe("a");
            let _ = route(&*hub, &bytes);
        }

        /// What `lua/lib.lua` announces (the same framing) decodes to the event, for each target.
        #[test]
        fn announcements_round_trip(
            seqs in proptest::collection::vec(1u64..u64::MAX, 1..5),
            event_type in "[a-z_]{1,20}",
            data in "[1-9][0-9]{0,9}",
            room in proptest::option::of("[a-z]{1,8}"),
        ) {
            let hub = Hub::new(64);
            let mut subs: Vec<_> = (0..seqs.len()).map(|i| hub.subscribe(&format!("p{i}"))).collect();
            let mut msg = frame_of(seqs.len().to_string().as_bytes());
            for (i, s) in seqs.iter().enumerate() {
                msg.extend(frame_of(format!("p{i}").as_bytes()));
                msg.extend(frame_of(s.to_string().as_bytes()));
            }
            let flags = if room.is_some() { "r" } else { "" };
            for f in [flags, &event_type, "2026-11-23T10:30:00.123Z", room.as_deref().unwrap_or(""), "", &data] {
                msg.extend(frame_of(f.as_bytes()));
            }
            route(&*hub, &msg).expect("decodes");
            for (sub, s) in subs.iter_mut().zip(&seqs) {
                match sub.rx.try_recv() {
                    Ok(Live::Event(ev)) => {
                        proptest::prop_assert_eq!(ev.sequence_number, *s);
                        proptest::prop_assert_eq!(&ev.body.event_type, &event_type);
                        proptest::prop_assert_eq!(ev.body.data.get(), data.as_str());
                        proptest::prop_assert_eq!(&ev.body.room_id, &room);
                    }
                    other => proptest::prop_assert!(false, "expected an event, got {:?}", other),
                }
            }
        }
    }
}
