//! This node's live-delivery registry: which connections want which player's
//! events, and a bounded queue to each.
//!
//! Owns: routing an appended event to every local connection of its player
//! without blocking the publisher, and deciding when a queue overflow means
//! "slow consumer" (the connection is live) or merely "lagged" (the connection
//! is still replaying, and will re-read the log). Must not touch: storage,
//! sockets. Engines see it as their [`LiveSink`] (they do not know the hub);
//! sessions call [`Hub::subscribe`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::Notify;

use crate::engine::LiveSink;
use crate::protocol::{Event, EventBody};
use crate::telemetry::{QUEUED_EVENTS, SUBSCRIBED_PLAYERS};

/// What a subscriber's queue carries.
#[derive(Debug, Clone)]
pub enum Live {
    /// A newly appended event.
    Event(Event),
    /// Something may have been missed (e.g. the node's Redis subscription was
    /// re-established): re-read the log.
    Nudge,
}

/// Per-subscription flags shared between the hub and the session, and the
/// subscription's bounded queue.
#[derive(Debug, Default)]
pub struct SubState {
    live: AtomicBool,
    lagged: AtomicBool,
    slow: AtomicBool,
    kill: Notify,
    queue: Mutex<Queue>,
    /// Wakes the receiver when something is queued or the queue closes.
    ready: Notify,
}

/// A subscription's queue: a `VecDeque` that allocates on the first event
/// (a tokio `mpsc` allocated ~1 KiB per connection up front: a cache-padded
/// header and a block of 32 slots), shared in the `SubState` allocation.
#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Live>,
    /// The hub dropped its sender (slow consumer) or the receiver is gone.
    closed: bool,
}

impl SubState {
    /// Marks the session as caught up: from now on an overflow is fatal.
    pub fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::SeqCst);
    }
    /// True (once) if events were dropped while the session was replaying.
    pub fn take_lagged(&self) -> bool {
        self.lagged.swap(false, Ordering::SeqCst)
    }
    /// True if the hub gave up on this subscriber because its queue was full.
    pub fn is_slow(&self) -> bool {
        self.slow.load(Ordering::SeqCst)
    }
    /// Resolves when the hub has cut this subscriber off.
    pub async fn killed(&self) {
        if self.is_slow() {
            return;
        }
        self.kill.notified().await
    }
}

impl SubState {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why [`Sub::try_send`] did not queue.
enum SendError {
    Full,
    Closed,
}

/// The hub's end of a subscription: the only sender; dropping it closes the
/// queue (what is queued can still be received, then `recv` gives `None`).
struct Sub {
    id: u64,
    state: Arc<SubState>,
    cap: usize,
}

impl Sub {
    fn try_send(&self, live: Live) -> Result<(), SendError> {
        let mut q = self.state.queue();
        if q.closed {
            return Err(SendError::Closed);
        }
        if q.items.len() >= self.cap {
            return Err(SendError::Full);
        }
        q.items.push_back(live);
        drop(q);
        self.state.ready.notify_one();
        Ok(())
    }

    /// Queues a nudge; a full queue means the reader will re-read anyway.
    fn nudge(&self) {
        if self.try_send(Live::Nudge).is_err() {
            self.state.lagged.store(true, Ordering::SeqCst);
        }
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        self.state.queue().closed = true;
        self.state.ready.notify_one();
    }
}

/// The receiving end of a subscription's queue (the `recv` / `try_recv` of
/// a tokio `mpsc::Receiver`).
pub struct LiveRx {
    state: Arc<SubState>,
}

impl LiveRx {
    /// The next queued notification; `None` once the hub dropped this
    /// subscription (slow consumer) and the queue is empty. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Live> {
        loop {
            match self.try_recv() {
                Ok(live) => return Some(live),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => self.state.ready.notified().await,
            }
        }
    }

    /// A queued notification, without waiting.
    pub fn try_recv(&mut self) -> Result<Live, TryRecvError> {
        let mut q = self.state.queue();
        match q.items.pop_front() {
            Some(live) => {
                if q.items.is_empty() && q.items.capacity() > 64 {
                    // A burst is over: give back what it grew.
                    q.items = VecDeque::new();
                }
                Ok(live)
            }
            None if q.closed => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }
}

/// A live subscription; unsubscribes when dropped.
pub struct Subscription {
    pub rx: LiveRx,
    pub state: Arc<SubState>,
    hub: Arc<Hub>,
    player: String,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(&self.player, self.id);
        // No sender is left (the hub held the only one): what is still
        // queued will never be taken.
        let mut q = self.state.queue();
        q.closed = true;
        let left = q
            .items
            .drain(..)
            .filter(|live| matches!(live, Live::Event(_)))
            .count();
        drop(q);
        if left > 0 {
            metrics::gauge!(QUEUED_EVENTS).decrement(left as f64);
        }
    }
}

/// An event taken off a subscription's queue (the session's feed calls it).
pub(crate) fn taken(live: &Live) {
    if matches!(live, Live::Event(_)) {
        metrics::gauge!(QUEUED_EVENTS).decrement(1.0);
    }
}

/// The registry. One per node, shared by the engine and every session.
pub struct Hub {
    players: Mutex<HashMap<String, Vec<Sub>>>,
    next_id: AtomicU64,
    queue_len: usize,
    slow_consumers: AtomicU64,
}

impl Hub {
    /// A hub whose subscriber queues hold `queue_len` events.
    pub fn new(queue_len: usize) -> Arc<Self> {
        Arc::new(Self {
            players: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            queue_len: queue_len.max(1),
            slow_consumers: AtomicU64::new(0),
        })
    }

    /// Starts receiving `player`'s new events. Subscribe *before* reading the
    /// log, so nothing appended in between is missed.
    pub fn subscribe(self: &Arc<Self>, player: &str) -> Subscription {
        let state = Arc::new(SubState::default());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let sub = Sub {
            id,
            state: state.clone(),
            cap: self.queue_len,
        };
        let mut map = self.lock();
        let subs = map.entry(player.to_string()).or_default();
        if subs.is_empty() {
            metrics::gauge!(SUBSCRIBED_PLAYERS).increment(1.0);
        }
        subs.push(sub);
        drop(map);
        Subscription {
            rx: LiveRx {
                state: state.clone(),
            },
            state,
            hub: self.clone(),
            player: player.to_string(),
            id,
        }
    }

    /// Slow consumers cut off since start.
    pub fn slow_consumers(&self) -> u64 {
        self.slow_consumers.load(Ordering::Relaxed)
    }

    /// Connections currently subscribed.
    pub fn subscribers(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    fn remove(&self, player: &str, id: u64) {
        let mut map = self.lock();
        if let Some(subs) = map.get_mut(player) {
            subs.retain(|s| s.id != id);
            if subs.is_empty() {
                map.remove(player);
                metrics::gauge!(SUBSCRIBED_PLAYERS).decrement(1.0);
            }
        }
    }

    /// Queues `event` for `player`'s local connections (the map locked):
    /// a full queue cuts a live connection off (slow consumer) and marks a
    /// replaying one lagged.
    fn deliver_locked(
        &self,
        map: &mut HashMap<String, Vec<Sub>>,
        queued: &metrics::Gauge,
        player: &str,
        event: &Event,
    ) {
        let Some(subs) = map.get_mut(player) else {
            return;
        };
        subs.retain(|s| match s.try_send(Live::Event(event.clone())) {
            Ok(()) => {
                queued.increment(1.0);
                true
            }
            Err(SendError::Closed) => false,
            Err(SendError::Full) => {
                if s.state.live.load(Ordering::SeqCst) {
                    s.state.slow.store(true, Ordering::SeqCst);
                    s.state.kill.notify_one();
                    self.slow_consumers.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(crate::telemetry::SLOW_CONSUMERS).increment(1);
                    false
                } else {
                    s.state.lagged.store(true, Ordering::SeqCst);
                    true
                }
            }
        });
        if subs.is_empty() {
            map.remove(player);
            metrics::gauge!(SUBSCRIBED_PLAYERS).decrement(1.0);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Sub>>> {
        // A panic while holding the lock leaves the map consistent (every
        // mutation is a single call), so recover from poisoning.
        self.players.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl LiveSink for Hub {
    /// True if some connection on this node wants one of the targets' events
    /// (one lock for a whole fan-out).
    fn wants_any(&self, targets: &[(&str, u64)]) -> bool {
        let map = self.lock();
        targets.iter().any(|(p, _)| map.contains_key(*p))
    }

    /// Hands `event` to every local connection of `player`, never waiting.
    fn deliver(&self, player: &str, event: &Event) {
        let mut map = self.lock();
        self.deliver_locked(&mut map, &metrics::gauge!(QUEUED_EVENTS), player, event);
    }

    /// The same for every target of a fan-out, under one lock.
    fn deliver_all(&self, targets: &[(&str, u64)], body: &Arc<EventBody>) {
        if targets.len() > 1 {
            // Several recipients: their envelopes share one encoding.
            body.share_envelope();
        }
        let queued = metrics::gauge!(QUEUED_EVENTS);
        let mut map = self.lock();
        for (player, seq) in targets {
            if map.contains_key(*player) {
                let event = Event {
                    sequence_number: *seq,
                    body: body.clone(),
                };
                self.deliver_locked(&mut map, &queued, player, &event);
            }
        }
    }

    /// Tells every local connection to re-read its log (something may have been missed).
    fn nudge_all(&self) {
        for subs in self.lock().values() {
            subs.iter().for_each(Sub::nudge);
        }
    }

    /// Tells `player`'s local connections to re-read their logs.
    fn nudge(&self, player: &str) {
        tracing::debug!(player, "nudge");
        if let Some(subs) = self.lock().get(player) {
            subs.iter().for_each(Sub::nudge);
        }
    }
}
