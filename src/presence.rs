//! This node's side of presence: which players it holds connections of,
//! kept true in the engine ([`crate::engine::Presence`]), its lease, the
//! upkeep every node shares, and the room events the game asked for.
//!
//! Owns: counting connections per player on this node (a player with three
//! tabs is one connection to the engine), telling the engine in order (one
//! worker per player at a time, so a quick disconnect and reconnect can never
//! reach the engine the other way round, and a flap coalesces to nothing),
//! retrying what failed until it lands (at most 64 writes in flight),
//! refreshing the node's lease and, when the store lost it or let it expire
//! (Redis restart, failover, a stall), re-asserting every held player under
//! a new lease name, the sweep that reaps dead nodes and ends graces, and turning facts into `player_entered` /
//! `player_left` events for rooms that opted in. Must not touch: sockets,
//! HTTP, the engine's storage (it calls the capability).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::engine::presence::{Fact, Reason, State};
use crate::engine::{Engine, EngineError};
use crate::protocol::{EventBody, Target};
use crate::telemetry::{
    PRESENCE_FACTS, PRESENCE_PLAYERS, PRESENCE_REAPS, PRESENCE_REASSERTS, PRESENCE_RETRIES,
};

/// Pause before retrying a presence write that failed: 100 ms doubling to 2 s.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Presence writes one node has in flight at once: a storm of connects or
/// disconnects (a network blip, a deploy) queues here instead of piling
/// thousands of commands (and their buffers) onto the Redis connection.
const MAX_WRITES: usize = 64;
/// How often every node runs the shared sweep (dead leases, ended graces).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// How presence behaves on this node.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node's lease name: its configured name plus its start time, so a
    /// node restarted under the same name never renews its dead self's lease.
    pub node: String,
    /// `MYTHOS_PRESENCE_GRACE`: how long a player stays `linkdead`.
    pub grace: Duration,
    /// `MYTHOS_PRESENCE_LEASE`: how long a node's lease lasts unrefreshed
    /// (refreshed every fifth of it).
    pub lease: Duration,
}

impl Settings {
    /// `node` with the defaults: a 15 s grace, a 5 s lease.
    pub fn new(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            grace: Duration::from_secs(15),
            lease: Duration::from_secs(5),
        }
    }
}

/// One player's connections on this node, and what the engine was told.
#[derive(Debug, Default)]
struct Entry {
    /// Open connections.
    count: usize,
    /// The engine counts this node as holding the player.
    told: bool,
    /// A logout is waiting to be told.
    logout: bool,
    /// After a logout, the connections still open do not make the player
    /// online again; a new connection does.
    muted: bool,
    /// A worker is telling the engine.
    busy: bool,
    /// A lease name the engine may still count this player under (the name
    /// before a re-assertion): dropped once the current name is told.
    stale: Option<Arc<str>>,
}

impl Entry {
    fn wants_online(&self) -> bool {
        self.count > 0 && !self.muted
    }
}

/// What a worker tells the engine next.
enum Step {
    Logout,
    Connect,
    Disconnect,
}

/// This node's presence.
pub struct Tracker {
    engine: Arc<dyn Engine>,
    settings: Settings,
    players: Mutex<HashMap<String, Entry>>,
    /// Players with at least one connection here (the gauge).
    local: AtomicUsize,
    /// Bounds the engine writes in flight ([`MAX_WRITES`]).
    writes: Semaphore,
    /// The lease name now: `<settings.node>.<generation>`; a new generation
    /// each time the store lost (or let expire) the lease.
    name: Mutex<(u64, String)>,
    /// Set by [`Tracker::leave`]: no more connects reach the engine.
    closing: AtomicBool,
    shutdown: CancellationToken,
}

/// A connection counted in presence; uncounted when dropped.
pub struct Present {
    tracker: Arc<Tracker>,
    player: String,
}

impl Drop for Present {
    fn drop(&mut self) {
        self.tracker.change(&self.player, |e| {
            e.count = e.count.saturating_sub(1);
        });
    }
}

impl Tracker {
    pub fn new(
        engine: Arc<dyn Engine>,
        settings: Settings,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let name = format!("{}.0", settings.node);
        Arc::new(Self {
            engine,
            settings,
            players: Mutex::default(),
            local: AtomicUsize::new(0),
            writes: Semaphore::new(MAX_WRITES),
            name: Mutex::new((0, name)),
            closing: AtomicBool::new(false),
            shutdown,
        })
    }

    /// This node's lease name now.
    pub fn node(&self) -> String {
        self.name
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    /// Takes the next lease name (the old one is left to the reapers).
    fn next_name(&self) -> String {
        let mut n = self.name.lock().unwrap_or_else(|e| e.into_inner());
        n.0 += 1;
        n.1 = format!("{}.{}", self.settings.node, n.0);
        n.1.clone()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.players.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection of `player` opened on this node.
    pub fn connected(self: &Arc<Self>, player: &str) -> Present {
        self.change(player, |e| {
            e.count += 1;
            e.muted = false;
            // Told again, idempotently: another node may have logged the
            // player out meanwhile (the engine then no longer counts us).
            e.told = false;
        });
        Present {
            tracker: self.clone(),
            player: player.to_string(),
        }
    }

    /// A clean logout of `player` (a client's `bye`, `POST /v1/auth/logout`):
    /// offline at once, whatever holds connections.
    pub fn logout(self: &Arc<Self>, player: &str) {
        self.change(player, |e| {
            e.logout = true;
            e.muted = true;
        });
    }

    /// Players with a connection on this node now.
    pub fn local_players(&self) -> usize {
        self.local.load(Ordering::Relaxed)
    }

    /// Applies `f` to `player`'s entry and starts a worker if the engine
    /// must be told something and none is at it.
    fn change(self: &Arc<Self>, player: &str, f: impl FnOnce(&mut Entry)) {
        let mut map = self.lock();
        let e = map.entry(player.to_string()).or_default();
        let before = e.count > 0;
        f(e);
        match (before, e.count > 0) {
            (false, true) => {
                self.local.fetch_add(1, Ordering::Relaxed);
                metrics::gauge!(PRESENCE_PLAYERS).increment(1.0);
            }
            (true, false) => {
                self.local.fetch_sub(1, Ordering::Relaxed);
                metrics::gauge!(PRESENCE_PLAYERS).decrement(1.0);
            }
            _ => {}
        }
        let start = !e.busy && Self::next_step(e).is_some();
        if start {
            e.busy = true;
        } else if e.count == 0 && !e.told && !e.busy && !e.logout {
            // Nothing held, nothing to tell (after a `bye`, say).
            map.remove(player);
        }
        drop(map);
        if start {
            let me = self.clone();
            let player = player.to_string();
            // A connection dropped outside any runtime (a runtime already
            // gone) has nobody to tell: its node's lease ends with it.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { me.work(&player).await });
            }
        }
    }

    fn next_step(e: &Entry) -> Option<Step> {
        if e.logout {
            Some(Step::Logout)
        } else if e.wants_online() && !e.told {
            Some(Step::Connect)
        } else if !e.wants_online() && e.told {
            Some(Step::Disconnect)
        } else {
            None
        }
    }

    /// Tells the engine about `player` until it agrees with this node.
    async fn work(self: Arc<Self>, player: &str) {
        loop {
            let step = {
                let mut map = self.lock();
                let Some(e) = map.get_mut(player) else { return };
                let step = Self::next_step(e).filter(|s| {
                    !(matches!(s, Step::Connect) && self.closing.load(Ordering::SeqCst))
                });
                match step {
                    Some(s) => {
                        if matches!(s, Step::Logout) {
                            e.logout = false;
                        }
                        s
                    }
                    None => {
                        e.busy = false;
                        if e.count == 0 && !e.told {
                            map.remove(player);
                        }
                        return;
                    }
                }
            };
            let node = self.node();
            let node = node.as_str();
            let (landed, told) = match step {
                Step::Logout => (
                    self.retry("logout", || self.engine.presence_logout(node, player))
                        .await,
                    false,
                ),
                Step::Connect => {
                    let stale = self.lock().get_mut(player).and_then(|e| e.stale.take());
                    let grace = self.settings.grace;
                    let done = self
                        .retry("connect", || async {
                            self.engine.presence_hold(node, player).await?;
                            let fact = self.engine.presence_connect(node, player).await?;
                            if let Some(old) = &stale {
                                // Still counted under the current name: no
                                // state change, no fact.
                                self.engine
                                    .presence_disconnect(old, player, grace, Reason::Timeout)
                                    .await?;
                            }
                            Ok(fact)
                        })
                        .await;
                    (done, true)
                }
                Step::Disconnect => {
                    let grace = self.settings.grace;
                    let done = self
                        .retry("disconnect", || {
                            self.engine
                                .presence_disconnect(node, player, grace, Reason::Timeout)
                        })
                        .await;
                    (done, false)
                }
            };
            let mut map = self.lock();
            let Some(e) = map.get_mut(player) else { return };
            if !landed {
                // Given up (shutting down): what the engine holds is left
                // to this node's lease, which ends with it.
                e.busy = false;
                return;
            }
            e.told = told;
        }
    }

    /// Runs `op` until it succeeds (`true`; the fact it produced is
    /// handled) or the node shuts down while it fails (`false`).
    async fn retry<F, Fut>(&self, name: &'static str, op: F) -> bool
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Option<Fact>, EngineError>>,
    {
        let mut pause = RETRY_MIN;
        loop {
            let permit = self.writes.acquire().await;
            let done = op().await;
            drop(permit);
            match done {
                Ok(fact) => {
                    if let Some(f) = fact {
                        self.announce(&f).await;
                    }
                    return true;
                }
                Err(e) => {
                    tracing::debug!(error = %e, op = name, "presence: write failed; retrying");
                    metrics::counter!(PRESENCE_RETRIES, "op" => name).increment(1);
                    if self.shutdown.is_cancelled() {
                        return false;
                    }
                    tokio::time::sleep(pause).await;
                    pause = crate::backoff::next(pause, RETRY_MAX);
                }
            }
        }
    }

    /// Counts a fact and sends `player_entered` / `player_left` to the other
    /// members of each of the player's rooms that asked for them. The event's
    /// id is `presence:<player>:<seq>`, so a repeat appends nothing twice.
    async fn announce(&self, fact: &Fact) {
        metrics::counter!(PRESENCE_FACTS, "state" => fact.state.as_str(), "reason" => fact.reason.as_str())
            .increment(1);
        let rooms = match self.engine.rooms_of(&fact.player_id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, player = %fact.player_id, "presence: rooms unknown; no room events");
                return;
            }
        };
        let event_type = if fact.state == State::Online {
            "player_entered"
        } else {
            "player_left"
        };
        for room in rooms {
            if !self
                .engine
                .room_presence_events(&room)
                .await
                .unwrap_or(false)
            {
                continue;
            }
            let others: Vec<String> = match self.engine.members(&room).await {
                Ok(m) => m.into_iter().filter(|p| *p != fact.player_id).collect(),
                Err(_) => continue,
            };
            if others.is_empty() {
                continue;
            }
            let data = serde_json::json!({
                "player_id": fact.player_id,
                "room_id": room,
                "presence": fact.state,
                "reason": fact.reason,
                "presence_seq": fact.seq,
            });
            let Ok(data) = serde_json::value::to_raw_value(&data) else {
                continue;
            };
            let id = format!("presence:{}:{}", fact.player_id, fact.seq);
            let body = Arc::new(EventBody::now(
                event_type,
                data,
                Some(room.clone()),
                Some(id.clone()),
            ));
            if let Err(e) = self
                .engine
                .publish(&Target::Players(others), body, Some(&id))
                .await
            {
                tracing::warn!(error = %e, %room, "presence: room event not appended");
            }
        }
    }

    /// Refreshes the lease (taking a new lease name and re-asserting every
    /// held player when the store lost it or let it expire) and runs the
    /// shared sweep, until shutdown. The two loops are separate, so a long
    /// reap never delays this node's own renewal.
    pub async fn run(self: Arc<Self>) {
        let beat = (self.settings.lease / 5).max(Duration::from_millis(50));
        let me = self.clone();
        let heartbeat = async move {
            let mut tick = tokio::time::interval(beat);
            let mut fresh = true;
            loop {
                tokio::select! {
                    _ = tick.tick() => me.heartbeat(&mut fresh).await,
                    _ = me.shutdown.cancelled() => break,
                }
            }
        };
        let sweeping = async {
            let mut tick = tokio::time::interval(SWEEP_EVERY.min(beat * 2));
            loop {
                tokio::select! {
                    _ = tick.tick() => self.sweep().await,
                    _ = self.shutdown.cancelled() => break,
                }
            }
        };
        tokio::join!(heartbeat, sweeping);
    }

    async fn heartbeat(self: &Arc<Self>, fresh: &mut bool) {
        let name = self.node();
        match self
            .engine
            .presence_heartbeat(&name, self.settings.lease)
            .await
        {
            Ok(lost) => {
                if lost && !*fresh {
                    // A reaper may be taking the old name's players away:
                    // everything is told again under a new name, which no
                    // reaper touches.
                    let new = self.next_name();
                    tracing::warn!(old = %name, new = %new, "presence: this node's lease was lost or expired; re-asserting its players under a new lease");
                    metrics::counter!(PRESENCE_REASSERTS).increment(1);
                    if let Err(e) = self
                        .engine
                        .presence_heartbeat(&new, self.settings.lease)
                        .await
                    {
                        tracing::debug!(error = %e, "presence: new lease not started yet");
                    }
                    self.reassert(&name);
                }
                *fresh = false;
            }
            Err(e) => tracing::debug!(error = %e, "presence: lease not refreshed"),
        }
    }

    /// Every held player is told again (connect is idempotent).
    /// Every held player is told again under the current name; the `old`
    /// name is dropped from each once that landed (a reaper may drop it
    /// first; both are idempotent), so no entry of a name without a live
    /// lease stays behind.
    fn reassert(self: &Arc<Self>, old: &str) {
        let old: Arc<str> = Arc::from(old);
        let players: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, e)| e.told)
            .map(|(p, _)| p.clone())
            .collect();
        for p in players {
            self.change(&p, |e| {
                e.told = false;
                e.stale = Some(old.clone());
            });
        }
    }

    async fn sweep(&self) {
        match self
            .engine
            .presence_sweep(&self.node(), self.settings.grace)
            .await
        {
            Ok(facts) => {
                for f in facts {
                    if f.reason == Reason::NodeLost && f.state == State::Offline {
                        metrics::counter!(PRESENCE_REAPS).increment(1);
                    }
                    self.announce(&f).await;
                }
            }
            Err(e) => tracing::debug!(error = %e, "presence: sweep failed"),
        }
    }

    /// A clean shutdown, after the connections closed: no more connects; the
    /// players still told are disconnected (they go linkdead, and may
    /// reconnect to another node within the grace); the lease is given up
    /// only if all of that landed — otherwise it expires and the other
    /// nodes reap what is left, so nothing stays behind without a lease.
    pub async fn leave(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while self.lock().values().any(|e| e.busy) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let node = self.node();
        let told: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, e)| e.told)
            .map(|(p, _)| p.clone())
            .collect();
        let mut clean = !self.lock().values().any(|e| e.busy);
        for p in told {
            clean &= self
                .engine
                .presence_disconnect(&node, &p, self.settings.grace, Reason::Timeout)
                .await
                .is_ok();
        }
        if clean && self.engine.presence_release(&node).await.is_ok() {
            return;
        }
        tracing::warn!(%node, "presence: not every player was released; the lease expires and the other nodes reap them");
    }
}
