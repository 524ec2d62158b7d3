//! Following players and recovering: the supervised task that applies
//! watch/unwatch requests (one subscribe command per batch), routes pushes,
//! pings the connection, and after a loss, a failover or a moved slot
//! subscribes again with backoff and nudges the players' sessions; it is
//! restarted, with every session nudged, should it panic.
//!
//! Owns: the followed players and their local watcher counts, recovery and
//! [`LiveHealth`]. Must not touch: the connection's commands (the
//! subscriber's), decoding (the announce module's).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, oneshot};

use super::super::keys;
use super::announce::route;
use super::subscriber::Subscriber;
use super::{LiveHealth, Request};
use crate::engine::LiveSink;

/// How often the subscriber connection is pinged to detect a silently dead one.
const PING_EVERY: Duration = Duration::from_secs(5);
/// Backoff between resubscribe attempts: 50 ms doubling to 1 s. One
/// connection per node, and every open connection of the node waits for it
/// after an outage, so attempts stay frequent.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Runs the subscriber; should it ever end (a bug that panics), counts it,
/// marks live delivery down, nudges every session and starts it again with
/// the same followed players.
pub(super) async fn supervise(
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
        next_repair: tokio::time::Instant::now(),
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
    /// When the next repair may run: a deadline of its own, so pushes,
    /// requests and pings in between do not push it back (a sleep made
    /// afresh on every loop would be restarted by each of them, and one as
    /// long as the ping interval would never fire).
    next_repair: tokio::time::Instant,
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
                _ = tokio::time::sleep_until(self.next_repair), if repair => self.repair(health).await,
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
        self.next_repair = tokio::time::Instant::now() + BACKOFF_MIN;
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
                            self.next_repair = tokio::time::Instant::now() + BACKOFF_MIN;
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
                self.next_repair = tokio::time::Instant::now() + self.backoff;
                self.backoff = crate::backoff::next(self.backoff, BACKOFF_MAX);
            }
        }
    }
}
