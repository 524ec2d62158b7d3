//! The recording format: one event envelope per line (JSON lines), exactly
//! as the broker delivers it over SSE (`event_type`, `sequence_number`,
//! `timestamp`, `player_id`, `room_id`, `data`, `id`). `export` writes it,
//! `replay` and the test helpers read it.
//!
//! Owns: turning an event into its line and a line back into a checked
//! [`RecordedEvent`], with every length and count bounded; parsing never
//! panics (a proptest property checks it). Must not touch: I/O beyond the
//! reader it is handed, publishing.

use std::io::BufRead;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::protocol::{valid_id, Event};

/// Longest line accepted (an event of the largest `MYTHOS_MAX_EVENT_BYTES`,
/// 16 MiB, plus its envelope).
pub const MAX_LINE: usize = 16 * 1024 * 1024 + 4096;
/// Most events one recording may hold.
pub const MAX_EVENTS: usize = 1_000_000;
/// Longest event type, room id or id (the publish API's bound).
const MAX_NAME: usize = 128;

/// The line of `event` in `player`'s log: the envelope exactly as SSE
/// delivers it (a WebSocket frame adds `"type":"event"`), without a newline.
pub fn line_of(player: &str, event: &Event) -> String {
    crate::protocol::envelope_json(player, event, false)
}

/// One recorded event, checked.
#[derive(Debug, Clone)]
pub struct RecordedEvent {
    pub event_type: String,
    pub sequence_number: u64,
    pub timestamp: String,
    /// When it was appended, in milliseconds since the Unix epoch (from `timestamp`).
    pub at_ms: u64,
    pub player_id: String,
    pub room_id: Option<String>,
    pub data: Box<RawValue>,
    pub id: Option<String>,
}

impl PartialEq for RecordedEvent {
    fn eq(&self, o: &Self) -> bool {
        self.event_type == o.event_type
            && self.sequence_number == o.sequence_number
            && self.timestamp == o.timestamp
            && self.player_id == o.player_id
            && self.room_id == o.room_id
            && self.data.get() == o.data.get()
            && self.id == o.id
    }
}

/// Why a recording was refused; every variant names the line (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordingError {
    #[error("line {line}: {message}")]
    Malformed { line: usize, message: String },
    #[error("line {line}: longer than {MAX_LINE} bytes")]
    LineTooLong { line: usize },
    #[error("line {line}: more than {MAX_EVENTS} events")]
    TooManyEvents { line: usize },
    #[error(
        "line {line}: sequence number {got} does not come after {previous} (a recording is one player's log, oldest first)"
    )]
    OutOfOrder {
        line: usize,
        previous: u64,
        got: u64,
    },
    #[error("line {line}: player_id `{got}` differs from `{first}` on the first line (a recording is one player's log)")]
    MixedPlayers {
        line: usize,
        first: String,
        got: String,
    },
    #[error("cannot read the recording: {0}")]
    Io(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    /// A WebSocket frame's `"type":"event"` is accepted too.
    #[serde(rename = "type", default)]
    kind: Option<String>,
    event_type: String,
    sequence_number: u64,
    timestamp: String,
    player_id: String,
    #[serde(default)]
    room_id: Option<String>,
    data: Box<RawValue>,
    #[serde(default)]
    id: Option<String>,
}

/// Parses and checks one line (`line` is its 1-based number, for errors).
pub fn parse_line(text: &str, line: usize) -> Result<RecordedEvent, RecordingError> {
    let bad = |message: String| RecordingError::Malformed { line, message };
    if text.len() > MAX_LINE {
        return Err(RecordingError::LineTooLong { line });
    }
    let l: Line =
        serde_json::from_str(text).map_err(|e| bad(format!("not an event envelope: {e}")))?;
    if l.kind.as_deref().is_some_and(|k| k != "event") {
        return Err(bad("`type` must be \"event\" when present".into()));
    }
    if l.event_type.is_empty()
        || l.event_type.len() > MAX_NAME
        || l.event_type.chars().any(char::is_control)
    {
        return Err(bad(format!(
            "`event_type` must be 1 to {MAX_NAME} characters without control characters"
        )));
    }
    if l.sequence_number == 0 {
        return Err(bad("`sequence_number` must be at least 1".into()));
    }
    if !valid_id(&l.player_id) {
        return Err(bad("`player_id` must match [A-Za-z0-9_-]{1,64}".into()));
    }
    if l.room_id.as_deref().is_some_and(|r| !valid_id(r)) {
        return Err(bad("`room_id` must match [A-Za-z0-9_-]{1,64}".into()));
    }
    if l.id
        .as_deref()
        .is_some_and(|i| i.is_empty() || i.len() > MAX_NAME)
    {
        return Err(bad(format!("`id` must be 1 to {MAX_NAME} characters")));
    }
    let at = humantime::parse_rfc3339_weak(&l.timestamp).map_err(|_| {
        bad(format!(
            "`timestamp` `{}` is not an RFC 3339 time",
            l.timestamp
        ))
    })?;
    let at_ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .map_err(|_| bad("`timestamp` is before 1970".into()))?;
    Ok(RecordedEvent {
        event_type: l.event_type,
        sequence_number: l.sequence_number,
        timestamp: l.timestamp,
        at_ms,
        player_id: l.player_id,
        room_id: l.room_id,
        data: l.data,
        id: l.id,
    })
}

/// Reads a whole recording: every line checked (blank lines skipped),
/// sequence numbers strictly increasing, one player. The first bad line
/// fails the whole recording, so nothing of a broken file is replayed.
pub fn read(reader: impl BufRead) -> Result<Vec<RecordedEvent>, RecordingError> {
    let mut out: Vec<RecordedEvent> = Vec::new();
    let mut reader = reader;
    let mut buf = Vec::new();
    let mut line = 0usize;
    loop {
        line += 1;
        buf.clear();
        // Read at most MAX_LINE + 1 bytes of this line, so a file without
        // newlines cannot exhaust memory.
        let n = std::io::Read::take(std::io::Read::by_ref(&mut reader), MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| RecordingError::Io(e.to_string()))?;
        if n == 0 {
            return Ok(out);
        }
        if buf.len() > MAX_LINE && buf.last() != Some(&b'\n') {
            return Err(RecordingError::LineTooLong { line });
        }
        let text = std::str::from_utf8(&buf).map_err(|_| RecordingError::Malformed {
            line,
            message: "not UTF-8".into(),
        })?;
        let text = text.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        if out.len() >= MAX_EVENTS {
            return Err(RecordingError::TooManyEvents { line });
        }
        let ev = parse_line(text, line)?;
        if let Some(prev) = out.last() {
            if ev.player_id != prev.player_id {
                return Err(RecordingError::MixedPlayers {
                    line,
                    first: prev.player_id.clone(),
                    got: ev.player_id,
                });
            }
            if ev.sequence_number <= prev.sequence_number {
                return Err(RecordingError::OutOfOrder {
                    line,
                    previous: prev.sequence_number,
                    got: ev.sequence_number,
                });
            }
        }
        out.push(ev);
    }
}

/// Reads a recording from a string.
pub fn parse(text: &str) -> Result<Vec<RecordedEvent>, RecordingError> {
    read(text.as_bytes())
}

/// A client's view of a session: `(event_type, data)` in order, with `data`
/// as compact JSON text (so two views compare regardless of spacing).
pub fn view(events: &[RecordedEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| (e.event_type.clone(), compact(e.data.get())))
        .collect()
}

/// JSON text without insignificant whitespace (the text itself if it does
/// not parse).
pub fn compact(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| json.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OK: &str = r#"{"event_type":"chat_message","sequence_number":3,"timestamp":"2026-11-23T10:30:00.123Z","player_id":"alice","room_id":"tavern","data":{"text":"hi"},"id":"x"}"#;

    #[test]
    fn a_delivered_envelope_parses() {
        let e = parse_line(OK, 1).expect("parses");
        assert_eq!(e.sequence_number, 3);
        assert_eq!(e.data.get(), r#"{"text":"hi"}"#);
        assert_eq!(e.at_ms % 1000, 123);
        let ws = OK.replacen('{', r#"{"type":"event","#, 1);
        assert!(parse_line(&ws, 1).is_ok());
    }

    #[test]
    fn errors_name_the_line() {
        let text = format!("{OK}\n\n{{\"event_type\":\"x\"}}\n");
        match parse(&text) {
            Err(RecordingError::Malformed { line: 3, .. }) => {}
            other => panic!("{other:?}"),
        }
        let twice = format!("{OK}\n{OK}\n");
        assert!(matches!(
            parse(&twice),
            Err(RecordingError::OutOfOrder { line: 2, .. })
        ));
        let bob = OK.replace("alice", "bob").replace(":3,", ":4,");
        assert!(matches!(
            parse(&format!("{OK}\n{bob}")),
            Err(RecordingError::MixedPlayers { line: 2, .. })
        ));
    }

    proptest! {
        /// Any text: an answer, never a panic.
        #[test]
        fn never_panics(s in "\\PC{0,400}") {
            let _ = parse(&s);
        }

        /// Valid envelopes with arbitrary fields round-trip.
        #[test]
        fn envelopes_round_trip(
            et in "[a-z_]{1,20}",
            seq in 1u64..u64::MAX,
            text in "\\PC{0,50}",
            room in proptest::option::of("[A-Za-z0-9_-]{1,64}"),
        ) {
            let body = crate::protocol::EventBody::now(
                et.clone(),
                serde_json::value::to_raw_value(&serde_json::json!({"t": text})).expect("json"),
                room.clone(),
                None,
            );
            let ev = Event { sequence_number: seq, body: std::sync::Arc::new(body) };
            let line = line_of("p-1", &ev);
            let back = parse_line(&line, 1).expect("parses");
            prop_assert_eq!(back.event_type, et);
            prop_assert_eq!(back.sequence_number, seq);
            prop_assert_eq!(back.room_id, room);
            prop_assert_eq!(back.data.get(), ev.body.data.get());
        }

        /// Mangled envelopes (a byte cut out or changed): an answer, never a panic.
        #[test]
        fn mangled_lines_never_panic(cut in 0usize..200, b in any::<u8>()) {
            let mut bytes = OK.as_bytes().to_vec();
            let i = cut % bytes.len();
            bytes[i] = b;
            let _ = read(&bytes[..]);
            let _ = read(&OK.as_bytes()[..i]);
        }
    }
}
