//! Live delivery from Redis to this node: subscriptions that follow the
//! node's connections, and decoding what arrives on them.
//!
//! Owns: the handle the engine holds ([`Live`]): following a player
//! ([`Live::watch`], then [`Live::watch_rooms`] with the rooms it is in, /
//! [`Live::unwatch`], called by sessions: subscribe before replay, drop
//! after the player's last local connection left) and whether every
//! followed channel is subscribed ([`LiveHealth`], for `/readyz`). The work
//! is split by concern: [`subscriber`] (this node's one subscriber
//! connection and the channel commands: `SUBSCRIBE` on one Redis,
//! `SSUBSCRIBE` per slot on a cluster, to the channel of each followed
//! player, `mythos:live:{p}`, and of each room one of them is in,
//! `mythos:live:room:{r}`, so a node receives only the announcements of its
//! own players and their rooms), [`supervisor`] (the followed players with
//! their local watcher counts and rooms, membership notices, and recovery:
//! after a lost connection, a failover or a moved slot the channels are
//! subscribed again with backoff, and each confirmed resubscription, not
//! the first, nudges the sessions concerned to re-read their log),
//! [`announce`] (decoding what arrives: a message that does not decode is
//! counted and dropped, never a panic). Must not touch: keys other than the
//! live channel names, the command connections.

mod announce;
mod subscriber;
mod supervisor;

pub(super) use announce::{encode, notice};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::AbortOnDropHandle;

use self::subscriber::Subscriber;
use self::supervisor::supervise;
use super::conn::Topology;
use super::OP_TIMEOUT;
use crate::engine::{EngineError, LiveSink, Result as EngineResult};

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

type Reply = oneshot::Sender<std::result::Result<(), String>>;

enum Request {
    Watch(String, Reply),
    /// The rooms of a watched player, read after its channel was subscribed.
    Rooms(String, Vec<String>, Reply),
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
    /// and starts routing what arrives to `hub`. A room's channel stays
    /// subscribed for `linger` (at least [`supervisor::ROOM_LINGER`]) after
    /// the last followed player left the room.
    pub async fn start(
        topology: &Topology,
        hub: Arc<dyn LiveSink>,
        linger: std::time::Duration,
    ) -> EngineResult<Self> {
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
        let task = tokio::spawn(supervise(sub, rx, pushes, hub, health.clone(), linger));
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
        Self::answer(rx).await
    }

    /// Follows the channels of `rooms`, which `player` (watched) is in:
    /// answers once every subscription not made before is confirmed. From
    /// then on the player's `+room` / `-room` notices keep them current.
    pub async fn watch_rooms(&self, player: &str, rooms: Vec<String>) -> EngineResult<()> {
        if rooms.is_empty() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::Rooms(player.to_string(), rooms, tx))
            .map_err(|_| EngineError::Pool("live subscriber stopped".into()))?;
        Self::answer(rx).await
    }

    async fn answer(rx: oneshot::Receiver<std::result::Result<(), String>>) -> EngineResult<()> {
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
