//! Following players and their rooms, and recovering: the supervised task
//! that applies watch/unwatch requests (one subscribe command per batch),
//! routes pushes, follows membership notices, pings the connection, and
//! after a loss, a failover or a moved slot subscribes again with backoff
//! and nudges the sessions concerned; it is restarted, with every session
//! nudged, should it panic.
//!
//! Room channels: a node subscribes to the channel of every room one of its
//! followed players is in (read when the player is first watched, then kept
//! current by the `+room` / `-room` notices on the player's channel). A room
//! joined by notice is subscribed, and once Redis confirmed the
//! subscription the player's sessions are nudged to re-read their log: an
//! event announced on the room before the subscription took effect is in
//! the log by then. A room no followed player is in any more stays
//! subscribed for a linger (at least [`ROOM_LINGER`]; the engine passes
//! its publish deadline plus a margin when that is longer), longer than any
//! publish can be in flight,
//! so an event whose member list was read before a leave still reaches the
//! player live (see docs/decisions.md, "Room channels").
//!
//! A subscription counts only once Redis confirmed it with its own
//! `subscribe` / `ssubscribe` push: a command's answer can be someone
//! else's. On a cluster, a slot that moves makes its old master push an
//! unasked `sunsubscribe`; redis-rs matches pushes of that kind to commands
//! by order, so one arriving while our `SSUBSCRIBE` is in flight on that
//! connection is taken for its answer, and the real one (`MOVED`) is
//! dropped (valkey-io/valkey#1066). A channel whose confirmation has not
//! come within [`CONFIRM_WITHIN`] is subscribed again. And redis-rs may
//! replace its connections to the masters while it recovers from a
//! topology change ("reconnect to initial nodes") without telling us and
//! without subscribing them again: so every [`PING_EVERY`] the supervisor
//! counts the shard channels its connections hold (`CLIENT INFO` on every
//! master) and, fewer than it follows twice in a row, subscribes them all
//! again (each confirmation nudges the channel's sessions).
//!
//! Owns: the followed players and their local watcher counts, the followed
//! rooms, recovery and [`LiveHealth`]. Must not touch: the connection's
//! commands (the subscriber's), decoding (the announce module's).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::announce::{route, Notice};
use super::subscriber::{Chan, Subscriber};
use super::{LiveHealth, Request};
use crate::engine::LiveSink;

/// How often the subscriber connection is pinged to detect a silently dead
/// one (and lingering rooms are swept).
const PING_EVERY: Duration = Duration::from_secs(5);
/// Backoff between resubscribe attempts: 50 ms doubling to 1 s. One
/// connection per node, and every open connection of the node waits for it
/// after an outage, so attempts stay frequent.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The least time a room's channel stays subscribed after the last followed
/// player left it; the engine asks for longer when a publish may be in
/// flight longer (its deadline is 4 s, plus the WAIT timeout with WAIT).
pub const ROOM_LINGER: Duration = Duration::from_secs(10);
/// How long a subscription may wait for its confirmation before it is made
/// again (it normally takes a round trip; a redundant one costs a second
/// confirmation and a re-read).
const CONFIRM_WITHIN: Duration = Duration::from_secs(2);

/// Runs the subscriber; should it ever end (a bug that panics), counts it,
/// marks live delivery down, nudges every session and starts it again with
/// the same followed players.
pub(super) async fn supervise(
    sub: Subscriber,
    mut requests: mpsc::UnboundedReceiver<Request>,
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    hub: Arc<dyn LiveSink>,
    health: Arc<LiveHealth>,
    linger: Duration,
) {
    let mut state = State {
        sub,
        linger: linger.max(ROOM_LINGER),
        wanted: HashMap::new(),
        rooms_of: HashMap::new(),
        rooms: HashMap::new(),
        joined: Vec::new(),
        stale: HashSet::new(),
        confirming: HashSet::new(),
        unconfirmed: HashMap::new(),
        confirm_due: None,
        short: 0,
        all_stale: false,
        backoff: BACKOFF_MIN,
        next_repair: Instant::now(),
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

/// A room channel this node subscribes to.
#[derive(Default)]
struct Room {
    /// The followed players in the room.
    players: HashSet<String>,
    /// Since when no followed player is in it (it is unsubscribed after the
    /// linger).
    idle_since: Option<Instant>,
    /// A subscription was made (or, failed, is left to the repair).
    subscribed: bool,
}

struct State {
    sub: Subscriber,
    /// How long a room nobody here is in any more stays subscribed.
    linger: Duration,
    /// Followed players and their local watcher counts.
    wanted: HashMap<String, usize>,
    /// The rooms of each followed player (as far as this node knows).
    rooms_of: HashMap<String, HashSet<String>>,
    /// Subscribed (or lingering, or to be repaired) room channels.
    rooms: HashMap<String, Room>,
    /// (player, room) joins announced since the last loop: the room is
    /// subscribed if it is not, then the player's sessions re-read.
    joined: Vec<(String, String)>,
    /// Channels whose subscription must be made again.
    stale: HashSet<Chan>,
    /// Channels whose first subscription's confirmation is still to come:
    /// their sessions read the log after `watch` returned, so that
    /// confirmation nudges nobody (every later one does).
    confirming: HashSet<Chan>,
    /// Channels subscribed whose confirmation push has not come yet, and
    /// when it is due (then the subscription is made again).
    unconfirmed: HashMap<Chan, Instant>,
    /// The earliest of those times (kept apart: the loop turns once per
    /// push, and a full resubscription puts every channel in the map).
    confirm_due: Option<Instant>,
    /// Consecutive checks that found the cluster holding fewer shard
    /// channels than are followed.
    short: u32,
    /// Every followed channel's subscription must be made again.
    all_stale: bool,
    backoff: Duration,
    /// When the next repair may run: a deadline of its own, so pushes,
    /// requests and pings in between do not push it back (a sleep made
    /// afresh on every loop would be restarted by each of them, and one as
    /// long as the ping interval would never fire).
    next_repair: Instant,
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
            if !self.joined.is_empty() {
                self.follow_joins(hub).await;
            }
            let repair = self.all_stale || !self.stale.is_empty();
            let due = self.confirm_due;
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
                _ = tokio::time::sleep_until(self.next_repair), if repair => self.repair(health).await,
                _ = tokio::time::sleep_until(due.unwrap_or(self.next_repair)), if due.is_some() => self.unconfirmed_due(),
                _ = ticker.tick() => {
                    if !self.sub.alive().await {
                        self.lost(health);
                    }
                    self.sweep_rooms().await;
                    self.check_held().await;
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
        self.unconfirmed.clear();
        self.schedule_repair();
    }

    /// On a cluster: are the followed channels all held by the connections?
    /// Checked only when nothing is being subscribed (a channel dropped by
    /// a slot move is counted missing until its push is read, hence two
    /// checks in a row); when short, every channel is subscribed again, and
    /// each confirmation has its sessions re-read (they may have missed
    /// events).
    async fn check_held(&mut self) {
        let busy = self.all_stale || !self.stale.is_empty() || !self.unconfirmed.is_empty();
        let held = if busy {
            None
        } else {
            self.sub.shard_subscriptions().await
        };
        let Some(held) = held else {
            self.short = 0;
            return;
        };
        let rooms = self.rooms.values().filter(|r| r.subscribed).count();
        let want = (self.wanted.len() + rooms) as u64;
        tracing::debug!(held, want, "live shard subscriptions held");
        if held >= want {
            self.short = 0;
            return;
        }
        self.short += 1;
        if self.short < 2 {
            return;
        }
        self.short = 0;
        tracing::warn!(
            held,
            want,
            "live subscriptions missing on the cluster; subscribing all again"
        );
        metrics::counter!(crate::telemetry::LIVE_RESUBSCRIBES, "reason" => "missing").increment(1);
        self.all_stale = true;
        self.confirming.clear();
        self.unconfirmed.clear();
        self.schedule_repair();
    }

    /// `chans` were subscribed (the command was answered): each must now be
    /// confirmed by its own push within [`CONFIRM_WITHIN`].
    fn await_confirmations<'c>(&mut self, chans: impl IntoIterator<Item = &'c Chan>) {
        let due = Instant::now() + CONFIRM_WITHIN;
        for c in chans {
            self.unconfirmed.insert(c.clone(), due);
        }
        self.confirm_due = Some(self.confirm_due.map_or(due, |d| d.min(due)));
    }

    /// The subscriptions whose confirmation did not come in time are made
    /// again (and, confirmed then, nudge their sessions).
    fn unconfirmed_due(&mut self) {
        let now = Instant::now();
        let late: Vec<Chan> = self
            .unconfirmed
            .iter()
            .filter(|(_, due)| **due <= now)
            .map(|(c, _)| c.clone())
            .collect();
        for c in late {
            self.unconfirmed.remove(&c);
            self.confirming.remove(&c);
            if self.follows(&c) {
                tracing::warn!(channel = %c.name(), "live subscription not confirmed; subscribing again");
                metrics::counter!(crate::telemetry::LIVE_RESUBSCRIBES, "reason" => "unconfirmed")
                    .increment(1);
                self.stale.insert(c);
                self.schedule_repair();
            }
        }
        self.confirm_due = self.unconfirmed.values().min().copied();
    }

    fn schedule_repair(&mut self) {
        self.backoff = BACKOFF_MIN;
        self.next_repair = Instant::now() + BACKOFF_MIN;
    }

    fn on_push(&mut self, p: PushInfo, hub: &dyn LiveSink, health: &LiveHealth) {
        let chan = |p: &PushInfo| match p.data.first() {
            Some(Value::BulkString(b)) => std::str::from_utf8(b).ok().and_then(Chan::parse),
            _ => None,
        };
        if !matches!(p.kind, PushKind::Message | PushKind::SMessage) {
            tracing::debug!(kind = ?p.kind, channel = ?chan(&p), "live push");
        }
        match p.kind {
            PushKind::Message | PushKind::SMessage => {
                let Some(Value::BulkString(payload)) = p.data.get(1) else {
                    return;
                };
                metrics::counter!(crate::telemetry::LIVE_MESSAGES).increment(1);
                metrics::counter!(crate::telemetry::LIVE_BYTES).increment(payload.len() as u64);
                match route(hub, payload) {
                    Ok(None) => {}
                    Ok(Some(notice)) => match chan(&p) {
                        Some(Chan::Player(player)) => self.on_notice(player, notice),
                        _ => tracing::warn!("a membership notice on a room channel; dropped"),
                    },
                    Err(e) => {
                        metrics::counter!(crate::telemetry::LIVE_UNDECODABLE).increment(1);
                        tracing::error!("undecodable live announcement: {e}");
                    }
                }
            }
            // A (re)subscription is in effect: what was announced before it
            // may have been missed, so the sessions concerned re-read.
            PushKind::Subscribe | PushKind::SSubscribe => {
                if let Some(c) = chan(&p) {
                    self.unconfirmed.remove(&c);
                    if !self.confirming.remove(&c) {
                        match &c {
                            Chan::Player(player) => hub.nudge(player),
                            Chan::Room(room) => {
                                for player in
                                    self.rooms.get(room).into_iter().flat_map(|r| &r.players)
                                {
                                    hub.nudge(player);
                                }
                            }
                        }
                    }
                }
            }
            // Redis dropped a channel we still follow (its slot moved away).
            PushKind::Unsubscribe | PushKind::SUnsubscribe => {
                if let Some(c) = chan(&p) {
                    if self.follows(&c) {
                        metrics::counter!(crate::telemetry::LIVE_RESUBSCRIBES, "reason" => "channel_dropped")
                            .increment(1);
                        self.confirming.remove(&c);
                        self.unconfirmed.remove(&c);
                        self.stale.insert(c);
                        self.schedule_repair();
                    }
                }
            }
            PushKind::Disconnection => self.lost(health),
            _ => {}
        }
    }

    /// True if `c` is a channel this node must stay subscribed to.
    fn follows(&self, c: &Chan) -> bool {
        match c {
            Chan::Player(p) => self.wanted.contains_key(p),
            Chan::Room(r) => self.rooms.contains_key(r),
        }
    }

    /// A followed player joined or left a room.
    fn on_notice(&mut self, player: String, notice: Notice) {
        let Some(rooms) = self.rooms_of.get_mut(&player) else {
            return; // not followed here (any more)
        };
        match notice {
            Notice::Joined(room) => {
                if rooms.insert(room.clone()) {
                    let r = self.rooms.entry(room.clone()).or_default();
                    r.players.insert(player.clone());
                    r.idle_since = None;
                }
                // Subscribed (if it is not) and nudged in the next loop, even
                // if the room was known: one re-read per join is cheap.
                self.joined.push((player, room));
            }
            Notice::Left(room) => {
                if rooms.remove(&room) {
                    self.drop_member(&room, &player);
                }
            }
        }
    }

    /// `player` is no longer a followed member of `room`.
    fn drop_member(&mut self, room: &str, player: &str) {
        if let Some(r) = self.rooms.get_mut(room) {
            r.players.remove(player);
            if r.players.is_empty() {
                r.idle_since = Some(Instant::now());
            }
        }
    }

    /// Subscribes the rooms joined by notice that are not subscribed yet,
    /// then nudges the joiners: once the subscription is in effect, every
    /// event announced on the room before it is in the log.
    async fn follow_joins(&mut self, hub: &dyn LiveSink) {
        let joined = std::mem::take(&mut self.joined);
        let mut fresh = Vec::new();
        for (_, room) in &joined {
            if let Some(r) = self.rooms.get_mut(room) {
                if !r.subscribed {
                    r.subscribed = true;
                    fresh.push(Chan::Room(room.clone()));
                }
            }
        }
        if !fresh.is_empty() {
            // Their confirmations nudge the room's players (not "confirming").
            if self.sub.subscribe(&fresh, true).await.is_err() {
                self.stale.extend(fresh);
                self.schedule_repair();
            } else {
                self.await_confirmations(&fresh);
            }
        }
        for (player, _) in &joined {
            hub.nudge(player);
        }
    }

    /// Unsubscribes the rooms that lingered long enough without a followed player.
    async fn sweep_rooms(&mut self) {
        let now = Instant::now();
        let done: Vec<String> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.idle_since.is_some_and(|t| now - t >= self.linger))
            .map(|(name, _)| name.clone())
            .collect();
        if done.is_empty() {
            return;
        }
        let chans: Vec<Chan> = done.into_iter().map(Chan::Room).collect();
        for c in &chans {
            if let Chan::Room(r) = c {
                self.rooms.remove(r);
            }
            self.stale.remove(c);
            self.confirming.remove(c);
            self.unconfirmed.remove(c);
        }
        // Best effort: a channel left subscribed only costs messages that
        // `wants` then ignores.
        let _ = self.sub.subscribe(&chans, false).await;
    }

    /// Applies a batch of requests: one subscribe and one unsubscribe
    /// command (per slot on a cluster) for the whole batch.
    async fn apply(&mut self, batch: Vec<Request>) {
        let mut waiting: HashMap<Chan, Vec<oneshot::Sender<_>>> = HashMap::new();
        let mut gone = Vec::new();
        for r in batch {
            match r {
                Request::Watch(p, reply) => {
                    let n = self.wanted.entry(p.clone()).or_insert(0);
                    *n += 1;
                    self.rooms_of.entry(p.clone()).or_default();
                    let c = Chan::Player(p);
                    if *n == 1 || waiting.contains_key(&c) {
                        waiting.entry(c).or_default().push(reply);
                    } else {
                        let _ = reply.send(Ok(()));
                    }
                }
                Request::Rooms(p, rooms, reply) => {
                    let mut fresh = Vec::new();
                    if let Some(mine) = self.rooms_of.get_mut(&p) {
                        for room in rooms {
                            let r = self.rooms.entry(room.clone()).or_default();
                            if mine.insert(room.clone()) {
                                r.players.insert(p.clone());
                                r.idle_since = None;
                            }
                            let c = Chan::Room(room);
                            if !r.subscribed {
                                r.subscribed = true;
                                fresh.push(c);
                            } else if waiting.contains_key(&c) {
                                fresh.push(c);
                            }
                        }
                    }
                    if fresh.is_empty() {
                        let _ = reply.send(Ok(()));
                    } else {
                        // The reply waits for every fresh room (sent once, on the first).
                        let mut reply = Some(reply);
                        for c in fresh {
                            let slot = waiting.entry(c).or_default();
                            if let Some(r) = reply.take() {
                                slot.push(r);
                            }
                        }
                    }
                }
                Request::Unwatch(p) => {
                    if let Some(n) = self.wanted.get_mut(&p) {
                        *n -= 1;
                        if *n == 0 {
                            self.wanted.remove(&p);
                            for room in self.rooms_of.remove(&p).unwrap_or_default() {
                                self.drop_member(&room, &p);
                            }
                            let c = Chan::Player(p);
                            self.stale.remove(&c);
                            self.confirming.remove(&c);
                            self.unconfirmed.remove(&c);
                            if !waiting.contains_key(&c) {
                                gone.push(c);
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
        let fresh: Vec<Chan> = waiting
            .keys()
            .filter(|c| self.follows(c))
            .cloned()
            .collect();
        self.confirming.extend(fresh.iter().cloned());
        let r = self.sub.subscribe(&fresh, true).await;
        if r.is_err() {
            for c in &fresh {
                self.confirming.remove(c);
            }
            self.stale.extend(fresh);
        } else {
            self.await_confirmations(&fresh);
        }
        for reply in waiting.into_values().flatten() {
            let _ = reply.send(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        }
    }

    /// Subscribes again what must be; on success live delivery is up.
    async fn repair(&mut self, health: &LiveHealth) {
        let chans: Vec<Chan> = if self.all_stale {
            // A connection that still answers is kept (the loss reported may
            // have been an older connection's); one that doesn't is replaced.
            self.sub.alive().await;
            let players = self.wanted.keys().cloned().map(Chan::Player);
            let rooms = self.rooms.keys().cloned().map(Chan::Room);
            players.chain(rooms).collect()
        } else {
            self.stale.iter().cloned().collect()
        };
        tracing::debug!(all = self.all_stale, channels = ?chans, "live repair");
        let r = match self.sub.connect().await {
            Ok(()) => self.sub.subscribe(&chans, true).await,
            Err(e) => Err(e),
        };
        tracing::debug!(ok = r.is_ok(), "live repair done");
        match r {
            Ok(()) => {
                if self.all_stale {
                    tracing::info!(channels = chans.len(), "live subscriptions re-established");
                    self.all_stale = false;
                }
                self.stale.clear();
                self.await_confirmations(&chans);
                self.backoff = BACKOFF_MIN;
                health.set(true);
            }
            Err(e) => {
                tracing::warn!(error = %e, "live resubscribe failed; retrying in {:?}", self.backoff);
                self.next_repair = Instant::now() + self.backoff;
                self.backoff = crate::backoff::next(self.backoff, BACKOFF_MAX);
            }
        }
    }
}
