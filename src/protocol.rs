//! The wire protocol: identifiers, the event envelope, publish targets and the
//! messages a WebSocket client may send.
//!
//! Owns: parsing and validating what arrives from outside (ids, targets, client
//! frames) and serialising what leaves (envelopes). Must not touch: I/O, the
//! engine, or HTTP status codes (callers map [`ProtocolError`] to answers).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Why a piece of client input was refused; `code` is the protocol's error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProtocolError {
    pub code: &'static str,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new("invalid_message", message)
    }
}

/// A validated identifier (`[A-Za-z0-9_-]{1,64}`), used for players and rooms.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks an id, naming `what` in the error.
pub fn check_id(what: &str, s: &str) -> Result<(), ProtocolError> {
    if valid_id(s) {
        Ok(())
    } else {
        Err(ProtocolError::new(
            "invalid_request",
            format!("{what} must match [A-Za-z0-9_-]{{1,64}}"),
        ))
    }
}

/// What an event carries apart from its recipient and sequence number; shared
/// (behind an `Arc`) by every delivery of one publish.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventBody {
    pub event_type: String,
    pub timestamp: String,
    #[serde(default)]
    pub room_id: Option<String>,
    pub data: Box<RawValue>,
    #[serde(default)]
    pub id: Option<String>,
}

impl EventBody {
    /// A body stamped with the current time (RFC 3339, milliseconds, UTC).
    pub fn now(
        event_type: impl Into<String>,
        data: Box<RawValue>,
        room_id: Option<String>,
        id: Option<String>,
    ) -> Self {
        Self {
            event_type: event_type.into(),
            timestamp: now_rfc3339(),
            room_id,
            data,
            id,
        }
    }
}

/// One event in one player's log.
#[derive(Debug, Clone)]
pub struct Event {
    pub sequence_number: u64,
    pub body: Arc<EventBody>,
}

/// The current UTC time as `2026-11-23T10:30:00.123Z`.
pub fn now_rfc3339() -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(&fmt)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".to_string())
}

#[derive(Serialize)]
struct EnvelopeRef<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    event_type: &'a str,
    sequence_number: u64,
    timestamp: &'a str,
    player_id: &'a str,
    room_id: Option<&'a str>,
    data: &'a RawValue,
    id: Option<&'a str>,
}

/// Serialises the envelope of `event` for `player`; `ws` adds `"type":"event"`.
pub fn envelope_json(player: &str, event: &Event, ws: bool) -> String {
    let b = &event.body;
    let env = EnvelopeRef {
        kind: ws.then_some("event"),
        event_type: &b.event_type,
        sequence_number: event.sequence_number,
        timestamp: &b.timestamp,
        player_id: player,
        room_id: b.room_id.as_deref(),
        data: &b.data,
        id: b.id.as_deref(),
    };
    // Serialising borrowed strings and a RawValue cannot fail.
    serde_json::to_string(&env).unwrap_or_default()
}

/// Who a publish goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Player(String),
    Players(Vec<String>),
    Room(String),
}

impl Target {
    /// Parses `{"player": ".."} | {"players": [..]} | {"room": ".."}`.
    pub fn from_json(v: &serde_json::Value) -> Result<Self, ProtocolError> {
        let bad = || {
            ProtocolError::new(
                "invalid_target",
                r#"`to` must be {"player": id}, {"players": [ids]} or {"room": id}"#,
            )
        };
        let obj = v.as_object().filter(|o| o.len() == 1).ok_or_else(bad)?;
        let (k, v) = obj.iter().next().ok_or_else(bad)?;
        let t = match (k.as_str(), v) {
            ("player", serde_json::Value::String(p)) => Target::Player(p.clone()),
            ("room", serde_json::Value::String(r)) => Target::Room(r.clone()),
            ("players", serde_json::Value::Array(a)) => {
                let mut ps = Vec::with_capacity(a.len());
                for p in a {
                    let p = p.as_str().ok_or_else(bad)?;
                    if !ps.iter().any(|q: &String| q == p) {
                        ps.push(p.to_string());
                    }
                }
                if ps.is_empty() || ps.len() > MAX_TARGET_PLAYERS {
                    return Err(ProtocolError::new(
                        "invalid_target",
                        format!("`players` must list 1 to {MAX_TARGET_PLAYERS} players"),
                    ));
                }
                Target::Players(ps)
            }
            _ => return Err(bad()),
        };
        match &t {
            Target::Player(p) => check_id("player id", p)?,
            Target::Players(ps) => ps.iter().try_for_each(|p| check_id("player id", p))?,
            Target::Room(r) => check_id("room id", r)?,
        }
        Ok(t)
    }

    /// A stable text form, used in idempotency keys and logs.
    pub fn describe(&self) -> String {
        match self {
            Target::Player(p) => format!("player:{p}"),
            Target::Players(ps) => format!("players:{}", ps.join(",")),
            Target::Room(r) => format!("room:{r}"),
        }
    }
}

/// Most players one `{"players": [...]}` publish may name.
pub const MAX_TARGET_PLAYERS: usize = 1000;

/// One appended copy of an event: who got it, under which sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub player_id: String,
    pub sequence_number: u64,
}
