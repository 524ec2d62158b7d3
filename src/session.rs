//! A player's ordered feed for one connection: replay from a resume point,
//! then live, with no gap and no duplicate, whatever the transport.
//!
//! Owns: the handover between the log and live notifications. It subscribes to
//! the hub *before* reading the log, reads the log in bounded batches (paced by
//! the caller, who only asks for the next event once the socket took the last),
//! and treats live notifications as hints: the sequence number decides. An
//! event at `last_sent + 1` is sent, anything at or below is dropped, anything
//! above means "something is missing" and sends the feed back to the log.
//! Must not touch: sockets, HTTP, JSON framing (transports do that).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::engine::{Engine, EngineError, Resume};
use crate::hub::{Hub, Live, SubState, Subscription};
use crate::protocol::Event;

/// Events read from the log per round trip.
const READ_BATCH: usize = 256;

/// Why a feed stopped.
#[derive(Debug, thiserror::Error)]
pub enum FeedEnd {
    #[error("the connection fell too far behind (slow consumer)")]
    SlowConsumer,
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// One connection's view of a player's log.
pub struct Feed {
    engine: Arc<dyn Engine>,
    player: String,
    sub: Subscription,
    /// Highest sequence number handed out (the resync event aside).
    last_sent: u64,
    /// A `resync_required` event to send first, out of order.
    first: Option<Event>,
    /// An event not to send when the log reaches it: this feed's resync event
    /// (sent first), or one the client already holds.
    skip: Option<u64>,
    /// Events read from the log, not yet handed out.
    buffer: VecDeque<Event>,
    /// True while the feed must read the log (replaying or filling a gap).
    catching_up: bool,
}

impl Feed {
    /// Opens a feed for `player` resuming after `after`. `has` names an event
    /// past `after` the client already holds (see `sse::seen_through`), which
    /// the feed then does not send again.
    pub async fn open(
        engine: Arc<dyn Engine>,
        hub: &Arc<Hub>,
        player: &str,
        after: u64,
        has: Option<u64>,
    ) -> Result<(Self, Resume), EngineError> {
        let sub = hub.subscribe(player);
        let resume = engine.resume(player, after).await?;
        let feed = Self {
            engine,
            player: player.to_string(),
            sub,
            last_sent: resume.after,
            first: resume.resync.clone(),
            skip: resume.resync.as_ref().map(|e| e.sequence_number).or(has),
            buffer: VecDeque::new(),
            catching_up: true,
        };
        Ok((feed, resume))
    }

    /// The subscription's flags (the transport waits on `killed()`).
    pub fn state(&self) -> Arc<SubState> {
        self.sub.state.clone()
    }

    /// The next event, in order, exactly once; waits for one. Cancel-safe:
    /// state changes only after each await completes.
    pub async fn next(&mut self) -> Result<Event, FeedEnd> {
        loop {
            if let Some(ev) = self.take_ready() {
                return Ok(ev);
            }
            if self.catching_up {
                let batch = self
                    .engine
                    .read(&self.player, self.last_sent, READ_BATCH)
                    .await?;
                if batch.is_empty() {
                    self.catching_up = self.sub.state.take_lagged();
                    self.sub.state.set_live(!self.catching_up);
                } else {
                    self.buffer.extend(batch);
                }
                continue;
            }
            match self.sub.rx.recv().await {
                Some(live) => self.accept(live),
                None => return Err(FeedEnd::SlowConsumer),
            }
        }
    }

    /// An event that is ready without waiting, if any (for batching writes).
    pub fn try_next(&mut self) -> Option<Event> {
        loop {
            if let Some(ev) = self.take_ready() {
                return Some(ev);
            }
            if self.catching_up {
                return None;
            }
            match self.sub.rx.try_recv() {
                Ok(live) => self.accept(live),
                Err(_) => return None,
            }
        }
    }

    fn take_ready(&mut self) -> Option<Event> {
        if let Some(ev) = self.first.take() {
            return Some(ev);
        }
        if self.sub.state.take_lagged() {
            self.catching_up = true;
            self.sub.state.set_live(false);
        }
        while let Some(ev) = self.buffer.pop_front() {
            if ev.sequence_number <= self.last_sent {
                continue;
            }
            self.last_sent = ev.sequence_number;
            if Some(ev.sequence_number) == self.skip {
                continue;
            }
            return Some(ev);
        }
        None
    }

    fn accept(&mut self, live: Live) {
        match live {
            Live::Event(ev) if ev.sequence_number == self.last_sent + 1 => {
                self.buffer.push_back(ev);
            }
            Live::Event(ev) if ev.sequence_number <= self.last_sent => {}
            // A gap, or a nudge: the log is the truth.
            Live::Event(_) | Live::Nudge => {
                self.catching_up = true;
                self.sub.state.set_live(false);
            }
        }
    }
}
