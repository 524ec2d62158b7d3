//! A player's ordered feed for one connection: where it resumes, what that
//! acknowledges, then replay and live with no gap and no duplicate, whatever
//! the transport.
//!
//! Owns: the delivery semantics both transports share — the resume point
//! ([`ResumePoint`]) and what it acknowledges, the connection-local
//! `resync_required` decision (contract §5), and the handover between the
//! log and live notifications. [`open`] subscribes to the hub and has the
//! engine deliver the player's appends to this node ([`Engine::watch`])
//! *before* reading the cursor, so nothing appended meanwhile is missed; the feed reads
//! the log in bounded batches (paced by the caller, who only asks for the next
//! event once the socket took the last), and treats live notifications as
//! hints: the sequence number decides. An event at `last_sent + 1` is sent,
//! anything at or below is dropped, anything above means "something is
//! missing" and sends the feed back to the log. What the connection sends
//! up (acks, commands, chat, pings, with the rate limit and strikes) is the
//! session's too ([`Inbox`]); every acknowledgement, from any transport or
//! `POST /v1/ack`, goes through [`ack`]. An open feed counts its
//! connection in the node's presence ([`Tracker::connected`]).
//! Must not touch: sockets, HTTP, transport framing, timers (transports do that).

mod inbox;

pub use inbox::{Inbox, Incoming, Outcome};

use std::collections::VecDeque;
use std::sync::Arc;

use crate::engine::{Cursor, Engine, EngineError};
use crate::hub::{Hub, Live, SubState, Subscription};
use crate::presence::{Present, Tracker};
use crate::protocol::Event;

/// Events read from the log per round trip.
const READ_BATCH: usize = 256;
/// Backoff between reads of a log that is unavailable: 50 ms doubling to 2 s.
const RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(50);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// Where a connection asks to resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumePoint {
    /// No explicit point: after the player's acknowledged cursor.
    Acked,
    /// After `N` (`?since=N`, `?last_event_id=N`); acknowledges nothing.
    After(u64),
    /// After `N`, which the client has seen (SSE `Last-Event-ID: N`):
    /// acknowledges `1..=N` first. The `resync_required` marker carries no
    /// `id:`, so `N` is always an event the client received.
    Seen(u64),
}

/// A connection's opened session: its feed and where the log stood.
pub struct Opened {
    pub feed: Feed,
    /// The cursor when the session opened (after any acknowledgement).
    pub cursor: Cursor,
    /// `Some(S)` when the resume point fell before the oldest retained event
    /// `S`: the transport sends `resync_required {"oldest_available": S}` to
    /// this connection first, and the feed continues from `S`. Not stored,
    /// no sequence number, seen by no other connection (contract §5);
    /// counted here (`mythos_resyncs_total`), whatever the transport.
    pub resync: Option<u64>,
}

/// Opens `player`'s session at `point`.
pub async fn open(
    engine: Arc<dyn Engine>,
    hub: &Arc<Hub>,
    presence: &Arc<Tracker>,
    player: &str,
    point: ResumePoint,
) -> Result<Opened, EngineError> {
    let opened = std::time::Instant::now();
    let sub = hub.subscribe(player);
    // From here on this node receives the player's appends (the engine's
    // live subscription follows the node's sessions); the guard pairs the
    // watch with an unwatch, also when it fails.
    let watching = Watching {
        engine: engine.clone(),
        player: player.to_string(),
    };
    engine.watch(player).await?;
    if let ResumePoint::Seen(n) = point {
        ack(engine.as_ref(), player, n).await?;
    }
    // The cursor read applies the retention caps, so `oldest` is current.
    let cursor = engine.cursor(player).await?;
    let (after, resync) = start_after(point, cursor);
    if resync.is_some() {
        let reason = resync_reason(cursor);
        metrics::counter!(crate::telemetry::RESYNCS, "reason" => reason).increment(1);
    }
    let feed = Feed {
        engine,
        player: player.to_string(),
        sub,
        last_sent: after,
        buffer: VecDeque::new(),
        catching_up: true,
        retry: RETRY_MIN,
        opened: Some(opened),
        handed_live: Vec::new(),
        _watching: watching,
        // Counted in presence while the feed (the connection) lives.
        _present: presence.connected(player),
    };
    Ok(Opened {
        feed,
        cursor,
        resync,
    })
}

/// Acknowledges `1..=n` of `player`'s log (cumulative, clamped, never
/// backwards: the engine's rule): the one way an acknowledgement enters,
/// whether from a WebSocket `ack`, an SSE `Last-Event-ID` or `POST /v1/ack`.
pub async fn ack(engine: &dyn Engine, player: &str, n: u64) -> Result<Cursor, EngineError> {
    engine.ack(player, n).await
}

/// Where to read from (exclusive), and the `oldest_available` of a resync.
/// A point beyond the last event means "nothing to replay"; one before the
/// oldest retained event (trimmed by a cap or by another connection's ack)
/// restarts from the oldest, which is `last + 1` when nothing is retained.
pub fn start_after(point: ResumePoint, cursor: Cursor) -> (u64, Option<u64>) {
    let asked = match point {
        ResumePoint::Acked => cursor.acked,
        ResumePoint::After(n) | ResumePoint::Seen(n) => n,
    };
    let after = asked.min(cursor.last);
    if after + 1 < cursor.oldest {
        (cursor.oldest - 1, Some(cursor.oldest))
    } else {
        (after, None)
    }
}

/// Why a resume point fell before the oldest retained event (the `reason`
/// of `mythos_resyncs_total`): `acknowledged` when every missing event had
/// been acknowledged (by another connection, or an earlier session) — benign;
/// `trimmed` when a retention cap dropped events nobody acknowledged.
fn resync_reason(cursor: Cursor) -> &'static str {
    if cursor.oldest <= cursor.acked.saturating_add(1) {
        "acknowledged"
    } else {
        "trimmed"
    }
}

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
    /// Highest sequence number handed out.
    last_sent: u64,
    /// Events not yet handed out, and whether each came live from the hub
    /// (else from the log).
    buffer: VecDeque<(Event, bool)>,
    /// True while the feed must read the log (replaying or filling a gap).
    catching_up: bool,
    /// The next pause before reading an unavailable log again.
    retry: std::time::Duration,
    /// When the session opened, until the feed first caught up (replay
    /// duration).
    opened: Option<std::time::Instant>,
    /// Timestamps of live events handed out since the last
    /// [`Feed::written`] (delivery lag).
    handed_live: Vec<Arc<crate::protocol::EventBody>>,
    _watching: Watching,
    _present: Present,
}

/// A session's interest in its player's live appends: unwatched on drop.
struct Watching {
    engine: Arc<dyn Engine>,
    player: String,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.engine.unwatch(&self.player);
    }
}

impl Feed {
    /// The player whose log this is.
    pub fn player(&self) -> &str {
        &self.player
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
                let batch = match self
                    .engine
                    .read(&self.player, self.last_sent, READ_BATCH)
                    .await
                {
                    #[allow(unused_mut)] // mutated by an injected defect only
                    Ok(mut batch) => {
                        self.retry = RETRY_MIN;
                        #[cfg(feature = "defects")]
                        if crate::defects::on(crate::defects::Defect::SkipReplay)
                            && batch.len() >= 2
                        {
                            batch.remove(1);
                        }
                        batch
                    }
                    // Redis down or restarting: the connection stays open
                    // and the feed reads again, backing off; the client
                    // gets the exact continuation once the log answers.
                    Err(e) if e.is_transient() => {
                        tracing::debug!(error = %e, "feed: log unavailable; retrying in {:?}", self.retry);
                        metrics::counter!(crate::telemetry::FEED_READ_RETRIES).increment(1);
                        tokio::time::sleep(self.retry).await;
                        self.retry = crate::backoff::next(self.retry, RETRY_MAX);
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                if batch.is_empty() {
                    self.catching_up = self.sub.state.take_lagged();
                    self.sub.state.set_live(!self.catching_up);
                    if !self.catching_up {
                        if let Some(opened) = self.opened.take() {
                            crate::telemetry::observe_since(
                                crate::telemetry::REPLAY_DURATION,
                                opened,
                            );
                        }
                    }
                } else {
                    self.buffer.extend(batch.into_iter().map(|ev| (ev, false)));
                }
                continue;
            }
            match self.sub.rx.recv().await {
                Some(live) => {
                    crate::hub::taken(&live);
                    self.accept(live)
                }
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
                Ok(live) => {
                    crate::hub::taken(&live);
                    self.accept(live)
                }
                Err(_) => return None,
            }
        }
    }

    fn take_ready(&mut self) -> Option<Event> {
        if self.sub.state.take_lagged() {
            self.catching_up = true;
            self.sub.state.set_live(false);
        }
        while let Some((ev, live)) = self.buffer.pop_front() {
            if ev.sequence_number > self.last_sent {
                self.last_sent = ev.sequence_number;
                #[cfg(feature = "defects")]
                if live && crate::defects::drop_this_live() {
                    continue;
                }
                if live {
                    self.handed_live.push(ev.body.clone());
                }
                return Some(ev);
            }
        }
        None
    }

    /// The transport wrote the frames of every event handed out so far:
    /// records the delivery lag of those that came live.
    pub fn written(&mut self) {
        for body in self.handed_live.drain(..) {
            crate::telemetry::observe_delivery_lag(&body.timestamp);
        }
    }

    fn accept(&mut self, live: Live) {
        match live {
            Live::Event(ev) if ev.sequence_number == self.last_sent + 1 => {
                self.buffer.push_back((ev, true));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cur(last: u64, acked: u64, oldest: u64) -> Cursor {
        Cursor {
            last,
            acked,
            oldest,
        }
    }

    #[test]
    fn resume_points() {
        use ResumePoint::*;
        // In range: from there, no marker.
        assert_eq!(start_after(After(5), cur(10, 0, 1)), (5, None));
        assert_eq!(start_after(Seen(5), cur(10, 5, 6)), (5, None));
        assert_eq!(start_after(Acked, cur(10, 4, 5)), (4, None));
        // Beyond the last: nothing to replay.
        assert_eq!(start_after(After(u64::MAX), cur(10, 0, 1)), (10, None));
        // Before the oldest retained: marker, then from the oldest.
        assert_eq!(start_after(After(0), cur(300, 0, 251)), (250, Some(251)));
        assert_eq!(start_after(After(3), cur(10, 6, 7)), (6, Some(7)));
        // Nothing retained: the next event is the oldest available.
        assert_eq!(start_after(After(3), cur(10, 10, 11)), (10, Some(11)));
        // Just before the oldest is in order.
        assert_eq!(start_after(After(6), cur(10, 6, 7)), (6, None));
        // An unknown player.
        assert_eq!(start_after(After(7), cur(0, 0, 1)), (0, None));
    }

    #[test]
    fn resync_reasons() {
        // Everything before the oldest was acknowledged.
        assert_eq!(resync_reason(cur(10, 6, 7)), "acknowledged");
        assert_eq!(resync_reason(cur(10, 10, 11)), "acknowledged");
        // A cap dropped unacknowledged events (251 oldest, nothing acked).
        assert_eq!(resync_reason(cur(300, 0, 251)), "trimmed");
        assert_eq!(resync_reason(cur(300, 100, 251)), "trimmed");
    }
}
