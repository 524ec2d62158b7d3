//! The wire protocol: identifiers, the event envelope, publish targets and the
//! messages a WebSocket client may send.
//!
//! Owns: parsing and validating what arrives from outside (ids, targets, client
//! frames) and serialising what leaves (envelopes). Must not touch: I/O, the
//! engine, or HTTP status codes (callers map [`ProtocolError`] to answers).

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Declares [`ErrorCode`] with each variant's wire name.
macro_rules! error_codes {
    ($($name:ident = $text:literal,)*) => {
        /// Every error code the broker answers with, the same over HTTP
        /// (`{"error": {"code"}}`) and WebSocket (`{"type":"error","code"}`);
        /// docs/protocol.md lists them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum ErrorCode { $($name,)* }

        impl ErrorCode {
            /// The code on the wire.
            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$name => $text,)* }
            }
        }
    };
}

error_codes! {
    EngineUnavailable = "engine_unavailable",
    Forbidden = "forbidden",
    ForbiddenOrigin = "forbidden_origin",
    Internal = "internal",
    InvalidCredentials = "invalid_credentials",
    InvalidEventType = "invalid_event_type",
    InvalidJson = "invalid_json",
    InvalidMessage = "invalid_message",
    InvalidRequest = "invalid_request",
    InvalidResumePoint = "invalid_resume_point",
    InvalidTarget = "invalid_target",
    LoginDisabled = "login_disabled",
    MethodNotAllowed = "method_not_allowed",
    NotFound = "not_found",
    NotReplicated = "not_replicated",
    RateLimited = "rate_limited",
    RequestTimeout = "request_timeout",
    TooLarge = "too_large",
    TooManyConnections = "too_many_connections",
    Unauthorized = "unauthorized",
    UnknownPlayer = "unknown_player",
    UnsupportedMediaType = "unsupported_media_type",
    UpgradeRequired = "upgrade_required",
    UserExists = "user_exists",
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a piece of client input was refused; `code` is the protocol's error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidMessage, message)
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
pub(crate) fn check_id(what: &str, s: &str) -> Result<(), ProtocolError> {
    if valid_id(s) {
        Ok(())
    } else {
        Err(ProtocolError::new(
            ErrorCode::InvalidRequest,
            format!("{what} must match [A-Za-z0-9_-]{{1,64}}"),
        ))
    }
}

/// What an event carries apart from its recipient and sequence number; shared
/// (behind an `Arc`) by every delivery of one publish, which is why its
/// envelope is encoded once, for all of them ([`EventBody::envelope`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventBody {
    pub event_type: String,
    pub timestamp: String,
    #[serde(default)]
    pub room_id: Option<String>,
    pub data: Box<RawValue>,
    #[serde(default)]
    pub id: Option<String>,
    /// The envelope's shared text, made on first use.
    #[serde(skip)]
    encoded: OnceLock<Encoded>,
}

impl EventBody {
    pub fn new(
        event_type: impl Into<String>,
        timestamp: impl Into<String>,
        data: Box<RawValue>,
        room_id: Option<String>,
        id: Option<String>,
    ) -> Self {
        Self {
            event_type: event_type.into(),
            timestamp: timestamp.into(),
            room_id,
            data,
            id,
            encoded: OnceLock::new(),
        }
    }

    /// A body stamped with the current time (RFC 3339, milliseconds, UTC).
    pub fn now(
        event_type: impl Into<String>,
        data: Box<RawValue>,
        room_id: Option<String>,
        id: Option<String>,
    ) -> Self {
        Self::new(event_type, now_rfc3339(), data, room_id, id)
    }

    /// Appends the envelope of this body for `player` at `seq` to `out`
    /// (`ws`: with `"type":"event"` first, the WebSocket frame; else the SSE
    /// `data:`): the text around the two per-recipient fields, spliced. For
    /// a fan-out ([`EventBody::share_envelope`]) that text is built once and
    /// shared by every recipient; otherwise it is built for this call only,
    /// so a body kept in a log (the memory engine's) does not keep a second
    /// copy of itself. Either way the result is byte for byte what
    /// serialising the envelope gives.
    pub fn envelope(&self, player: &str, seq: u64, ws: bool, out: &mut String) {
        match self.encoded.get() {
            Some(e) => e.splice(player, seq, ws, out),
            None => Encoded::of(self).splice(player, seq, ws, out),
        }
    }

    /// Builds the envelope's shared text now, for the recipients of a
    /// fan-out to use (the hub calls it when it hands one body to several).
    pub fn share_envelope(&self) {
        self.encoded.get_or_init(|| Encoded::of(self));
    }
}

impl Encoded {
    fn splice(&self, player: &str, seq: u64, ws: bool, out: &mut String) {
        let e = self;
        out.reserve(e.head.len() + e.mid.len() + e.tail.len() + player.len() + 40);
        out.push_str(if ws { "{\"type\":\"event\"," } else { "{" });
        out.push_str(&e.head);
        let _ = write!(out, "{seq}");
        out.push_str(&e.mid);
        push_json_str(out, player);
        out.push_str(&e.tail);
    }
}

/// An envelope split around `sequence_number` and `player_id` (field order:
/// `[type,] event_type, sequence_number, timestamp, player_id, room_id,
/// data, id`, as [`EnvelopeRef`] serialises it).
#[derive(Debug, Clone)]
struct Encoded {
    /// `"event_type":"…","sequence_number":`
    head: String,
    /// `,"timestamp":"…","player_id":`
    mid: String,
    /// `,"room_id":…,"data":…,"id":…}`
    tail: String,
}

impl Encoded {
    fn of(b: &EventBody) -> Self {
        let mut head = String::from("\"event_type\":");
        push_json_str(&mut head, &b.event_type);
        head.push_str(",\"sequence_number\":");
        let mut mid = String::from(",\"timestamp\":");
        push_json_str(&mut mid, &b.timestamp);
        mid.push_str(",\"player_id\":");
        let mut tail = String::from(",\"room_id\":");
        push_json_opt(&mut tail, b.room_id.as_deref());
        tail.push_str(",\"data\":");
        tail.push_str(b.data.get());
        tail.push_str(",\"id\":");
        push_json_opt(&mut tail, b.id.as_deref());
        tail.push('}');
        Self { head, mid, tail }
    }
}

/// `s` as a JSON string; ids (`[A-Za-z0-9_-]`) need no escaping and skip serde.
fn push_json_str(out: &mut String, s: &str) {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        // Serialising a string cannot fail.
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    }
}

fn push_json_opt(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => push_json_str(out, s),
        None => out.push_str("null"),
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

#[cfg(test)]
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
pub(crate) fn envelope_json(player: &str, event: &Event, ws: bool) -> String {
    let mut out = String::new();
    event
        .body
        .envelope(player, event.sequence_number, ws, &mut out);
    out
}

/// The envelope as serde writes it: what [`EventBody::envelope`] must equal.
#[cfg(test)]
fn envelope_serde(player: &str, event: &Event, ws: bool) -> String {
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
    pub(crate) fn from_json(v: &serde_json::Value) -> Result<Self, ProtocolError> {
        let bad = || {
            ProtocolError::new(
                ErrorCode::InvalidTarget,
                r#"`to` must be {"player": id}, {"players": [ids]} or {"room": id}"#,
            )
        };
        let obj = v.as_object().filter(|o| o.len() == 1).ok_or_else(bad)?;
        let (k, v) = obj.iter().next().ok_or_else(bad)?;
        let t = match (k.as_str(), v) {
            ("player", serde_json::Value::String(p)) => Target::Player(p.clone()),
            ("room", serde_json::Value::String(r)) => Target::Room(r.clone()),
            ("players", serde_json::Value::Array(a)) => {
                // Bound first, then work: the list as sent (repeats
                // included) is at most MAX_TARGET_PLAYERS long.
                if a.is_empty() || a.len() > MAX_TARGET_PLAYERS {
                    return Err(ProtocolError::new(
                        ErrorCode::InvalidTarget,
                        format!("`players` must list 1 to {MAX_TARGET_PLAYERS} players"),
                    ));
                }
                let mut seen = std::collections::HashSet::with_capacity(a.len());
                let mut ps = Vec::with_capacity(a.len());
                for p in a {
                    let p = p.as_str().ok_or_else(bad)?;
                    if seen.insert(p) {
                        ps.push(p.to_string());
                    }
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
}

/// Most players one `{"players": [...]}` publish may name (repeats count).
pub(crate) const MAX_TARGET_PLAYERS: usize = 1000;

/// One appended copy of an event: who got it, under which sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub player_id: String,
    pub sequence_number: u64,
}

/// The `N` of an acknowledgement: a non-negative integer. One too large for
/// 64 bits is past any sequence number, so it is taken as the largest (the
/// engine clamps it to the last).
pub(crate) fn ack_number(v: &serde_json::Value) -> Option<u64> {
    let n = v.as_number()?;
    if let Some(u) = n.as_u64() {
        return Some(u);
    }
    match n.as_f64() {
        Some(f) if f >= u64::MAX as f64 && f.fract() == 0.0 => Some(u64::MAX),
        _ => None,
    }
}

/// The configurable limits of a client message (`MYTHOS_WS_MAX_DEPTH`,
/// `MYTHOS_WS_MAX_COMMAND`, `MYTHOS_WS_MAX_ARGS`); the default is the contract's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageLimits {
    /// Deepest JSON nesting.
    pub max_depth: usize,
    /// Longest `command` (and chat `channel`), characters of `[a-z_]`.
    pub max_command: usize,
    /// Most `args` of one command.
    pub max_args: usize,
}

impl Default for MessageLimits {
    fn default() -> Self {
        Self {
            max_depth: 16,
            max_command: 64,
            max_args: 16,
        }
    }
}
/// Longest chat message, in characters.
pub(crate) const MAX_CHAT: usize = 2000;
/// Longest client-chosen id.
pub(crate) const MAX_CLIENT_ID: usize = 128;

/// What a WebSocket client may send.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ClientMessage {
    Ack(u64),
    Command {
        id: String,
        command: String,
        args: Vec<String>,
    },
    Chat {
        id: String,
        channel: String,
        message: String,
    },
    Ping,
    /// A clean logout: the player goes offline at once (presence).
    Bye,
}

impl ClientMessage {
    /// The upstream kind and JSON payload of a command or chat line.
    pub fn upstream(&self) -> Option<(&'static str, &str, String)> {
        match self {
            Self::Command { id, command, args } => Some((
                "command",
                id,
                serde_json::json!({"command": command, "args": args}).to_string(),
            )),
            Self::Chat {
                id,
                channel,
                message,
            } => Some((
                "chat",
                id,
                serde_json::json!({"channel": channel, "message": message}).to_string(),
            )),
            _ => None,
        }
    }
}

/// The nesting depth of a JSON text (brackets outside strings).
pub(crate) fn json_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn short_str(
    obj: &serde_json::Map<String, serde_json::Value>,
    key: &str,
    max: usize,
) -> Result<String, ProtocolError> {
    match obj.get(key) {
        Some(serde_json::Value::String(s)) if !s.is_empty() && s.chars().count() <= max => {
            Ok(s.clone())
        }
        _ => Err(ProtocolError::invalid(format!(
            "`{key}` must be a string of 1 to {max} characters"
        ))),
    }
}

fn name(
    obj: &serde_json::Map<String, serde_json::Value>,
    key: &str,
    max: usize,
) -> Result<String, ProtocolError> {
    let s = short_str(obj, key, max)?;
    if s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        Ok(s)
    } else {
        Err(ProtocolError::invalid(format!(
            "`{key}` must be 1 to {max} characters of [a-z_]"
        )))
    }
}

/// Parses and validates one client text frame.
pub(crate) fn parse_client_message(
    text: &str,
    limits: &MessageLimits,
) -> Result<ClientMessage, ProtocolError> {
    if json_depth(text) > limits.max_depth {
        return Err(ProtocolError::invalid(format!(
            "JSON nested deeper than {}",
            limits.max_depth
        )));
    }
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|_| ProtocolError::invalid("not valid JSON"))?;
    let obj = v
        .as_object()
        .ok_or_else(|| ProtocolError::invalid("a message must be a JSON object"))?;
    let kind = obj
        .get("type")
        .and_then(|t| t.as_str())
        .ok_or_else(|| ProtocolError::invalid("a message needs a string `type`"))?;
    match kind {
        "ping" => Ok(ClientMessage::Ping),
        "bye" => Ok(ClientMessage::Bye),
        "ack" => obj
            .get("sequence_number")
            .and_then(ack_number)
            .map(ClientMessage::Ack)
            .ok_or_else(|| {
                ProtocolError::invalid("`sequence_number` must be a non-negative integer")
            }),
        "command" => {
            let id = short_str(obj, "id", MAX_CLIENT_ID)?;
            let command = name(obj, "command", limits.max_command)?;
            let args = match obj.get("args") {
                None => Vec::new(),
                Some(serde_json::Value::Array(a)) if a.len() <= limits.max_args => a
                    .iter()
                    .map(|x| {
                        x.as_str()
                            .filter(|s| s.chars().count() <= 256)
                            .map(str::to_string)
                    })
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        ProtocolError::invalid("`args` must be strings of at most 256 characters")
                    })?,
                Some(_) => {
                    return Err(ProtocolError::invalid(format!(
                        "`args` must be an array of at most {} strings",
                        limits.max_args
                    )))
                }
            };
            Ok(ClientMessage::Command { id, command, args })
        }
        "chat" => Ok(ClientMessage::Chat {
            id: short_str(obj, "id", MAX_CLIENT_ID)?,
            channel: name(obj, "channel", limits.max_command)?,
            message: short_str(obj, "message", MAX_CHAT)?,
        }),
        other => Err(ProtocolError::invalid(format!(
            "unknown message type `{}`",
            other.chars().take(32).collect::<String>()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_client_message() {
        assert_eq!(
            parse_client_message(
                r#"{"type":"ack","sequence_number":5}"#,
                &MessageLimits::default()
            ),
            Ok(ClientMessage::Ack(5))
        );
        assert_eq!(
            parse_client_message(
                r#"{"type":"command","id":"c1","command":"look","args":["north"]}"#,
                &MessageLimits::default()
            ),
            Ok(ClientMessage::Command {
                id: "c1".into(),
                command: "look".into(),
                args: vec!["north".into()]
            })
        );
        assert_eq!(
            parse_client_message(r#"{"type":"ping"}"#, &MessageLimits::default()),
            Ok(ClientMessage::Ping)
        );
    }

    #[test]
    fn refuses_bad_messages() {
        for bad in [
            "nope",
            "[1]",
            r#"{"type":"dance"}"#,
            r#"{"type":"ack","sequence_number":-1}"#,
            r#"{"type":"command","id":"c1","command":"Look!"}"#,
            r#"{"type":"command","command":"look"}"#,
            r#"{"type":"chat","id":"c","channel":"say","message":""}"#,
        ] {
            let e = parse_client_message(bad, &MessageLimits::default()).expect_err(bad);
            assert_eq!(e.code, ErrorCode::InvalidMessage, "{bad}");
        }
        let deep = format!("{}{}", "[".repeat(17), "]".repeat(17));
        assert!(parse_client_message(&deep, &MessageLimits::default()).is_err());
        assert_eq!(json_depth(r#"{"a":"[[[[","b":[1]}"#), 2);
    }

    #[test]
    fn targets_and_ids() {
        let t = Target::from_json(&serde_json::json!({"players": ["a", "b", "a"]})).expect("t");
        assert_eq!(t, Target::Players(vec!["a".into(), "b".into()]));
        assert!(Target::from_json(&serde_json::json!({"player": "a b"})).is_err());
        assert!(Target::from_json(&serde_json::json!({"team": "x"})).is_err());
        assert!(valid_id(&"x".repeat(64)) && !valid_id(&"x".repeat(65)) && !valid_id(""));
    }

    /// Hole 2 of issue 11: the list is bounded before any work on it (the
    /// old code de-duplicated first, quadratically, so 1001 repeats of one id
    /// passed and a 20 000-id body cost 2·10⁸ comparisons before the refusal).
    #[test]
    fn target_lists_are_bounded_before_they_are_deduplicated() {
        let repeats = serde_json::json!({"players": vec!["a"; MAX_TARGET_PLAYERS + 1]});
        assert_eq!(
            Target::from_json(&repeats).expect_err("too long").code,
            ErrorCode::InvalidTarget
        );
        let at_cap = serde_json::json!({"players": vec!["a"; MAX_TARGET_PLAYERS]});
        assert_eq!(
            Target::from_json(&at_cap).expect("at the cap"),
            Target::Players(vec!["a".into()])
        );
        let many: Vec<String> = (0..20_000).map(|i| format!("p{i}")).collect();
        let t = serde_json::json!({"players": many});
        assert_eq!(
            Target::from_json(&t).expect_err("20k").code,
            ErrorCode::InvalidTarget
        );
    }
}

/// Properties of the parsers of outside input (issue 11): they never panic,
/// whatever the bytes, and valid input round-trips.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// Arbitrary JSON, nested a few levels.
    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            ".{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("[a-z_]{0,10}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// The envelope spliced from its parts equals serde's, for any
        /// strings (escapes included), data, ids and both transports, built
        /// for one recipient or shared by several.
        #[test]
        fn spliced_envelopes_equal_serde(
            event_type in "\\PC{1,20}",
            data in json(),
            room in proptest::option::of("\\PC{0,12}"),
            id in proptest::option::of("\\PC{0,12}"),
            players in proptest::collection::vec("\\PC{1,12}", 1..4),
            seq in any::<u64>(),
            ws in any::<bool>(),
        ) {
            let data = RawValue::from_string(data.to_string()).expect("json");
            let body = Arc::new(EventBody::new(event_type, "2026-11-23T10:30:00.123Z", data, room, id));
            for (i, p) in players.iter().enumerate() {
                if i == 1 {
                    // The rest from the shared text (the first was built for itself).
                    body.share_envelope();
                }
                let ev = Event { sequence_number: seq.wrapping_add(i as u64), body: body.clone() };
                let spliced = envelope_json(p, &ev, ws);
                prop_assert_eq!(&spliced, &envelope_serde(p, &ev, ws));
                let v: serde_json::Value = serde_json::from_str(&spliced).expect("valid JSON");
                prop_assert_eq!(v["player_id"].as_str(), Some(p.as_str()));
            }
        }

        #[test]
        fn client_messages_never_panic(text in ".{0,300}") {
            let _ = parse_client_message(&text, &MessageLimits::default());
        }

        #[test]
        fn client_message_shapes_never_panic(v in json(), kind in prop_oneof![
            Just("ack"), Just("command"), Just("chat"), Just("ping"), Just("bye"), Just("x")
        ]) {
            let mut v = v;
            if let Some(o) = v.as_object_mut() {
                o.insert("type".into(), kind.into());
            }
            let _ = parse_client_message(&v.to_string(), &MessageLimits::default());
        }

        #[test]
        fn deep_nesting_is_refused_without_recursion(depth in 17usize..20_000) {
            let text = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let e = parse_client_message(&text, &MessageLimits::default()).expect_err("deep");
            prop_assert_eq!(e.code, ErrorCode::InvalidMessage);
        }

        #[test]
        fn commands_round_trip(
            id in "[A-Za-z0-9_-]{1,128}",
            command in "[a-z_]{1,64}",
            args in proptest::collection::vec(".{0,40}", 0..=16),
        ) {
            let text = serde_json::json!({"type": "command", "id": id, "command": command, "args": args}).to_string();
            let m = parse_client_message(&text, &MessageLimits::default()).expect("valid");
            prop_assert_eq!(m, ClientMessage::Command { id, command, args });
        }

        #[test]
        fn acks_round_trip(n in any::<u64>()) {
            let text = format!(r#"{{"type":"ack","sequence_number":{n}}}"#);
            prop_assert_eq!(parse_client_message(&text, &MessageLimits::default()).expect("ack"), ClientMessage::Ack(n));
        }

        #[test]
        fn targets_never_panic(v in json()) {
            let _ = Target::from_json(&v);
            let _ = Target::from_json(&serde_json::json!({"players": v.clone()}));
            let _ = Target::from_json(&serde_json::json!({"room": v}));
        }

        #[test]
        fn player_lists_round_trip(ps in proptest::collection::btree_set("[A-Za-z0-9_-]{1,64}", 1..50)) {
            let list: Vec<String> = ps.into_iter().collect();
            let t = Target::from_json(&serde_json::json!({"players": list.clone()})).expect("valid");
            prop_assert_eq!(t, Target::Players(list));
        }
    }
}
