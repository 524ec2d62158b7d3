//! This node's side of presence: which players it holds connections of,
//! kept true in the engine ([`crate::engine::Presence`]), its lease, the
//! upkeep every node shares, and the room events the game asked for.
//!
//! Owns: counting connections per player on this node (a player with three
//! tabs is one connection to the engine), telling the engine in order (one
//! worker per player at a time, so a quick disconnect and reconnect can never
//! reach the engine the other way round, and a flap coalesces to nothing),
//! retrying what failed until it lands, refreshing the node's lease and
//! re-asserting every held player when the store lost it (Redis restart,
//! failover, a reaper that judged this node dead), the sweep that reaps dead
//! nodes and ends graces, and turning facts into `player_entered` /
//! `player_left` events for rooms that opted in. Must not touch: sockets,
//! HTTP, the engine's storage (it calls the capability).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
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
        Arc::new(Self {
            engine,
            settings,
            players: Mutex::default(),
            local: AtomicUsize::new(0),
            writes: Semaphore::new(MAX_WRITES),
            shutdown,
        })
    }

    /// This node's lease name.
    pub fn node(&self) -> &str {
        &self.settings.node
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.players.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection of `player` opened on this node.
    pub fn connected(self: &Arc<Self>, player: &str) -> Present {
        self.change(player, |e| {
            e.count += 1;
            e.muted = false;
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
                match Self::next_step(e) {
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
            let told = match step {
                Step::Logout => {
                    self.retry("logout", || {
                        self.engine.presence_logout(self.node(), player)
                    })
                    .await;
                    false
                }
                Step::Connect => {
                    self.retry("connect", || async {
                        self.engine.presence_hold(self.node(), player).await?;
                        self.engine.presence_connect(self.node(), player).await
                    })
                    .await;
                    true
                }
                Step::Disconnect => {
                    let grace = self.settings.grace;
                    self.retry("disconnect", || {
                        self.engine
                            .presence_disconnect(self.node(), player, grace, Reason::Timeout)
                    })
                    .await;
                    false
                }
            };
            if let Some(e) = self.lock().get_mut(player) {
                e.told = told;
            }
        }
    }

    /// Runs `op` until it succeeds (or the node shuts down), then handles
    /// the fact it produced.
    async fn retry<F, Fut>(&self, name: &'static str, op: F)
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
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, op = name, "presence: write failed; retrying");
                    metrics::counter!(PRESENCE_RETRIES, "op" => name).increment(1);
                    if self.shutdown.is_cancelled() {
                        return;
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

    /// Refreshes the lease (re-asserting every held player when the store
    /// had lost it) and runs the shared sweep, until shutdown; then tells
    /// the engine this node is gone.
    pub async fn run(self: Arc<Self>) {
        let beat = (self.settings.lease / 5).max(Duration::from_millis(50));
        let mut heartbeat = tokio::time::interval(beat);
        let mut sweep = tokio::time::interval(SWEEP_EVERY.min(beat * 2));
        let mut first = true;
        loop {
            tokio::select! {
                _ = heartbeat.tick() => self.heartbeat(&mut first).await,
                _ = sweep.tick() => self.sweep().await,
                _ = self.shutdown.cancelled() => break,
            }
        }
    }

    async fn heartbeat(self: &Arc<Self>, first: &mut bool) {
        match self
            .engine
            .presence_heartbeat(self.node(), self.settings.lease)
            .await
        {
            Ok(missing) => {
                if missing && !*first {
                    tracing::warn!(node = %self.node(), "presence: this node's lease was gone; re-asserting its players");
                    metrics::counter!(PRESENCE_REASSERTS).increment(1);
                    self.reassert();
                }
                *first = false;
            }
            Err(e) => tracing::debug!(error = %e, "presence: lease not refreshed"),
        }
    }

    /// Every held player is told again (connect is idempotent).
    fn reassert(self: &Arc<Self>) {
        let players: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, e)| e.told)
            .map(|(p, _)| p.clone())
            .collect();
        for p in players {
            self.change(&p, |e| e.told = false);
        }
    }

    async fn sweep(&self) {
        match self
            .engine
            .presence_sweep(self.node(), self.settings.grace)
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

    /// A clean shutdown, after the connections closed: every player still
    /// told is disconnected (they go linkdead and may reconnect to another
    /// node within the grace), then the lease is given up.
    pub async fn leave(&self) {
        let told: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, e)| e.told)
            .map(|(p, _)| p.clone())
            .collect();
        for p in told {
            let _ = self
                .engine
                .presence_disconnect(self.node(), &p, self.settings.grace, Reason::Timeout)
                .await;
        }
        let _ = self.engine.presence_release(self.node()).await;
    }
}
