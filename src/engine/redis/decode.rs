//! Turning stream entries and script answers back into engine types.
//!
//! Owns: the field names of a player's events and of `mythos:commands`
//! entries, as written by the scripts. Must not touch: I/O.

use std::sync::Arc;

use serde_json::value::RawValue;

use super::stream;
use crate::engine::{Command, CommandEntry, Cursor, EngineError, Result};
use crate::protocol::{Delivery, Event, EventBody};

pub fn cursor_of(v: &[u64]) -> Cursor {
    Cursor {
        last: v[0],
        acked: v[1],
        oldest: v[2],
    }
}

fn utf8(b: Vec<u8>) -> Result<String> {
    String::from_utf8(b).map_err(|_| EngineError::Corrupt("non-UTF-8 event field".into()))
}

/// An event read back from a player's log.
pub fn event_of(e: stream::Entry) -> Result<Event> {
    let seq =
        e.id.split('-')
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| EngineError::Corrupt(format!("bad event id {}", e.id)))?;
    let (mut event_type, mut timestamp, mut data, mut room_id, mut id) =
        (None, None, None, None, None);
    for (k, v) in e.fields.unwrap_or_default() {
        let v = utf8(v)?;
        match k.as_str() {
            "event_type" => event_type = Some(v),
            "timestamp" => timestamp = Some(v),
            "data" => data = Some(v),
            "room_id" => room_id = Some(v),
            "id" => id = Some(v),
            _ => {}
        }
    }
    let missing = |f: &str| EngineError::Corrupt(format!("event {seq} has no {f}"));
    let data = data.ok_or_else(|| missing("data"))?;
    Ok(Event {
        sequence_number: seq,
        body: Arc::new(EventBody::new(
            event_type.ok_or_else(|| missing("event_type"))?,
            timestamp.ok_or_else(|| missing("timestamp"))?,
            RawValue::from_string(data)
                .map_err(|_| EngineError::Corrupt(format!("event {seq} data is not JSON")))?,
            room_id,
            id,
        )),
    })
}

/// A command read back from `mythos:commands`; `None` for a deleted entry.
pub fn command_of(e: stream::Entry) -> Result<Option<CommandEntry>> {
    if e.fields.is_none() {
        return Ok(None);
    }
    let field = |name: &str| -> Result<String> { utf8(e.get(name).unwrap_or_default().to_vec()) };
    let command = Command {
        player_id: field("player_id")?,
        session_id: field("session_id")?,
        kind: field("type")?,
        id: field("id")?,
        payload: field("payload")?,
    };
    Ok(Some(CommandEntry {
        entry_id: e.id,
        command,
    }))
}

/// `player seq player seq ...`: a room publish's deliveries as its
/// idempotency record stores them (player ids hold no spaces).
pub fn encode_room_deliveries(d: &[Delivery]) -> String {
    let pairs: Vec<String> = d
        .iter()
        .map(|x| format!("{} {}", x.player_id, x.sequence_number))
        .collect();
    pairs.join(" ")
}

/// The inverse of [`encode_room_deliveries`].
pub fn room_deliveries(s: &str) -> Result<Vec<Delivery>> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    parts
        .chunks(2)
        .map(|c| match c {
            [p, n] => Some(Delivery {
                player_id: (*p).to_string(),
                sequence_number: n.parse().ok()?,
            }),
            _ => None,
        })
        .collect::<Option<_>>()
        .ok_or_else(|| EngineError::Corrupt("a room dedupe record".into()))
}
