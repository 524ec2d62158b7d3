//! What a player's connection sends up, whatever the transport: each client
//! message in, at most one reply frame out.
//!
//! Owns: the per-player message rate limit, the size limit, parsing
//! (`protocol::parse_client_message`), acting on a message (an ack through
//! [`super::ack`], a command or chat appended to the command stream, a ping),
//! the reply frames (`pong`, `command_accepted`, `error` with the same codes
//! and messages as HTTP) and the strikes that make sustained violations
//! abuse. Must not touch: sockets, framing of the transport, timers.

use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::DefaultKeyedRateLimiter;
use serde_json::json;

use crate::engine::{Command, Engine, EngineError};
use crate::error::ApiError;
use crate::protocol::{
    parse_client_message, ClientMessage, ErrorCode, MessageLimits, ProtocolError,
};

/// Violations within [`STRIKE_WINDOW`] that are sustained abuse: ten a
/// second for ten seconds, or a flood. A burst (say 45 messages at once: 20
/// allowed, 25 `rate_limited`) keeps the connection.
const MAX_STRIKES: u32 = 100;
const STRIKE_WINDOW: Duration = Duration::from_secs(10);

/// One message as the transport received it.
pub enum Incoming<'m> {
    Text(&'m str),
    /// A binary frame (never valid here, but its size and id still count).
    Binary(&'m [u8]),
}

impl Incoming<'_> {
    fn len(&self) -> usize {
        match self {
            Incoming::Text(t) => t.len(),
            Incoming::Binary(b) => b.len(),
        }
    }

    fn text(&self) -> Option<&str> {
        match self {
            Incoming::Text(t) => Some(t),
            Incoming::Binary(b) => std::str::from_utf8(b).ok(),
        }
    }
}

/// What the transport does about a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to send (an ack).
    Nothing,
    /// Send this frame.
    Reply(String),
    /// Sustained abuse: close the connection (`1008`).
    Abuse,
    /// The client said `bye`: a clean logout (presence offline at once);
    /// close the connection (`1000`).
    Bye,
}

/// What a message gets, before strikes are counted.
enum Answer {
    /// Nothing to send (an ack).
    Silent,
    /// A reply frame.
    Frame(String),
    /// An error frame for a violation (counts as a strike).
    Violation(String),
    /// The client said `bye`.
    Bye,
}

/// A connection's inbound half.
pub struct Inbox<'a> {
    engine: &'a dyn Engine,
    limiter: &'a DefaultKeyedRateLimiter<String>,
    limits: MessageLimits,
    /// Messages above this get `too_large` (the transport closes on larger
    /// ones before they reach here).
    max_frame: usize,
    player: &'a str,
    session_id: &'a str,
    strikes: u32,
    since: Instant,
}

impl<'a> Inbox<'a> {
    /// The inbox of `player`'s connection `session_id`: messages checked
    /// against `limiter` (per player, shared by the player's connections),
    /// `limits` and `max_frame`, acted on through `engine`.
    pub fn new(
        engine: &'a dyn Engine,
        limiter: &'a DefaultKeyedRateLimiter<String>,
        limits: MessageLimits,
        max_frame: usize,
        player: &'a str,
        session_id: &'a str,
    ) -> Self {
        Self {
            engine,
            limiter,
            limits,
            max_frame,
            player,
            session_id,
            strikes: 0,
            since: Instant::now(),
        }
    }

    /// Handles one message.
    pub async fn handle(&mut self, msg: Incoming<'_>) -> Outcome {
        match self.answer(msg).await {
            Answer::Silent => Outcome::Nothing,
            Answer::Bye => Outcome::Bye,
            Answer::Violation(_) if self.strike() => Outcome::Abuse,
            Answer::Frame(frame) | Answer::Violation(frame) => Outcome::Reply(frame),
        }
    }

    /// Counts a violation; true once they are sustained abuse.
    fn strike(&mut self) -> bool {
        if self.since.elapsed() > STRIKE_WINDOW {
            self.strikes = 0;
            self.since = Instant::now();
        }
        self.strikes += 1;
        self.strikes >= MAX_STRIKES
    }

    /// The reply frame, and whether the message was a violation.
    async fn answer(&self, msg: Incoming<'_>) -> Answer {
        if let Err(not_until) = self.limiter.check_key(&self.player.to_string()) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            crate::telemetry::rate_limited("message");
            crate::telemetry::rejected(ErrorCode::RateLimited);
            let mut v = json!({"type": "error", "code": ErrorCode::RateLimited,
                "message": "too many messages; slow down",
                "retry_after_ms": wait.as_millis().max(1) as u64});
            if let Some(id) = msg.text().and_then(peek_id) {
                v["id"] = json!(id);
            }
            return Answer::Violation(v.to_string());
        }
        if msg.len() > self.max_frame {
            let e = ProtocolError::new(
                ErrorCode::TooLarge,
                format!("a message may be at most {} bytes", self.max_frame),
            );
            // The id too, so a client can tell which command was refused (the
            // frame is at most the hard limit, 64 KiB, and rate-limited).
            let id = msg.text().and_then(peek_id);
            return Answer::Violation(error_frame(&e, id.as_deref()));
        }
        let Incoming::Text(text) = msg else {
            let e = ProtocolError::invalid("binary frames are not supported; send JSON text");
            return Answer::Violation(error_frame(&e, None));
        };
        let parsed = match parse_client_message(text, &self.limits) {
            Ok(m) => m,
            Err(e) => return Answer::Violation(error_frame(&e, peek_id(text).as_deref())),
        };
        match &parsed {
            ClientMessage::Ping => Answer::Frame(json!({"type": "pong"}).to_string()),
            ClientMessage::Bye => Answer::Bye,
            ClientMessage::Ack(n) => match super::ack(self.engine, self.player, *n).await {
                Ok(_) => Answer::Silent,
                Err(e) => Answer::Frame(engine_error(e, None)),
            },
            ClientMessage::Command { .. } | ClientMessage::Chat { .. } => {
                let Some((kind, id, payload)) = parsed.upstream() else {
                    return Answer::Silent;
                };
                let cmd = Command {
                    player_id: self.player.to_string(),
                    session_id: self.session_id.to_string(),
                    kind: kind.to_string(),
                    id: id.to_string(),
                    payload,
                };
                let started = Instant::now();
                match self.engine.push_command(&cmd).await {
                    Ok(_) => {
                        crate::telemetry::observe_append("command", started);
                        metrics::counter!(crate::telemetry::COMMANDS).increment(1);
                        Answer::Frame(json!({"type": "command_accepted", "id": id}).to_string())
                    }
                    Err(e) => Answer::Frame(engine_error(e, Some(id))),
                }
            }
        }
    }
}

/// An `error` frame (counted as a rejection).
fn error_frame(e: &ProtocolError, id: Option<&str>) -> String {
    crate::telemetry::rejected(e.code);
    let mut v = json!({"type": "error", "code": e.code, "message": e.message});
    if let Some(id) = id {
        v["id"] = json!(id);
    }
    v.to_string()
}

/// An engine failure as an error frame: the same code and message as over
/// HTTP (`engine_unavailable`, `not_replicated`).
fn engine_error(e: EngineError, id: Option<&str>) -> String {
    let e = ApiError::from(e);
    error_frame(&ProtocolError::new(e.code, e.message), id)
}

/// The `id` of a message, if it has one, to label its error.
fn peek_id(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.get("id")?.as_str().map(|s| s.chars().take(128).collect())
}
