//! Publishing: turning a publish request (HTTP body or a `mythos:publish`
//! stream entry) into a validated append, and making it.
//!
//! Owns: the validation rules every publish path shares (target shape, ids,
//! event type, `data` size) and the dedupe key; the node's handler of
//! Redis-native publishing ([`EntryPublisher`]: an entry's fields, checked
//! by size before any parsing, then as an HTTP body; the dead-letter
//! reasons). Must not touch: HTTP details (the route maps [`PublishError`]
//! to a status) or Redis details (the engine reads and acknowledges entries).

use std::sync::Arc;

use serde_json::value::RawValue;

use crate::engine::{Engine, EngineError, IngestHandler};
use crate::protocol::{check_id, Delivery, ErrorCode, EventBody, ProtocolError, Target};

/// Why a publish was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Invalid(#[from] ProtocolError),
    #[error("`data` is {0} bytes, more than the {1} allowed")]
    TooLarge(usize, u64),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A checked publish, ready for the engine.
#[derive(Debug, Clone)]
pub struct Publish {
    pub target: Target,
    pub body: Arc<EventBody>,
    /// The idempotency key: the publisher's `id`, else (stream entries) the entry id.
    pub dedupe_key: Option<String>,
}

/// Longest event type, room id or publish id.
const MAX_NAME: usize = 128;

impl Publish {
    /// Validates the parts of a publish. `data` is the raw JSON text of `data`.
    pub fn new(
        to: &serde_json::Value,
        event_type: &str,
        data: Box<RawValue>,
        room_id: Option<String>,
        id: Option<String>,
        max_event_bytes: u64,
    ) -> Result<Self, PublishError> {
        let target = Target::from_json(to)?;
        if event_type.is_empty() || event_type.len() > MAX_NAME {
            return Err(ProtocolError::new(
                ErrorCode::InvalidEventType,
                format!("`event_type` must be 1 to {MAX_NAME} characters"),
            )
            .into());
        }
        if event_type.chars().any(char::is_control) {
            return Err(ProtocolError::new(
                ErrorCode::InvalidEventType,
                "`event_type` must not contain control characters",
            )
            .into());
        }
        if let Some(r) = &room_id {
            check_id("room_id", r)?;
        }
        if let Some(i) = &id {
            if i.is_empty() || i.len() > MAX_NAME {
                return Err(ProtocolError::new(
                    ErrorCode::InvalidRequest,
                    format!("`id` must be 1 to {MAX_NAME} characters"),
                )
                .into());
            }
        }
        // SSE carries the envelope on one `data:` line: keep `data` on one line.
        let data = if data.get().contains(['\n', '\r']) {
            let v: serde_json::Value = serde_json::from_str(data.get()).map_err(|_| {
                ProtocolError::new(ErrorCode::InvalidJson, "`data` is not valid JSON")
            })?;
            serde_json::value::to_raw_value(&v).unwrap_or(data)
        } else {
            data
        };
        let size = data.get().len();
        if size as u64 > max_event_bytes {
            return Err(PublishError::TooLarge(size, max_event_bytes));
        }
        let room_id = room_id.or_else(|| match &target {
            Target::Room(r) => Some(r.clone()),
            _ => None,
        });
        Ok(Self {
            target,
            body: Arc::new(EventBody::now(event_type, data, room_id, id.clone())),
            dedupe_key: id,
        })
    }

    /// Appends it; the answer comes once every delivery is durable.
    pub async fn run(&self, engine: &dyn Engine) -> Result<Vec<Delivery>, PublishError> {
        let started = std::time::Instant::now();
        let deliveries = engine
            .publish(&self.target, self.body.clone(), self.dedupe_key.as_deref())
            .await?;
        crate::telemetry::observe_append("event", started);
        metrics::counter!(crate::telemetry::PUBLISHED).increment(1);
        metrics::counter!(crate::telemetry::DELIVERIES).increment(deliveries.len() as u64);
        Ok(deliveries)
    }
}

/// The JSON body of `POST /v1/publish`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    pub to: serde_json::Value,
    pub event_type: String,
    pub data: Box<RawValue>,
    #[serde(default)]
    pub room_id: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
}

/// Redis-native publishing's handler, owned by the node: each
/// `mythos:publish` entry `to <json target> event_type <t> data <json>
/// [id <key>] [room_id <r>]` is validated as an HTTP body is and appended
/// with the dedupe key `id`, else `stream:<entry id>`, so handling an entry
/// again (a consumer that crashed before its `XACK`) appends nothing twice.
/// Unknown fields are ignored.
pub struct EntryPublisher {
    engine: Arc<dyn Engine>,
    max_event_bytes: u64,
}

impl EntryPublisher {
    pub fn new(engine: Arc<dyn Engine>, max_event_bytes: u64) -> Arc<Self> {
        Arc::new(Self {
            engine,
            max_event_bytes,
        })
    }
}

#[async_trait::async_trait]
impl IngestHandler for EntryPublisher {
    async fn handle(
        &self,
        entry_id: &str,
        fields: &[(String, Vec<u8>)],
    ) -> Result<Option<String>, EngineError> {
        let publish = match parse(entry_id, fields, self.max_event_bytes) {
            Ok(p) => p,
            Err(reason) => return Ok(Some(reason)),
        };
        match publish.run(&*self.engine).await {
            Ok(_) => Ok(None),
            Err(PublishError::Engine(e)) => Err(e),
            Err(other) => Ok(Some(reason_of(&other))),
        }
    }
}

fn reason_of(e: &PublishError) -> String {
    match e {
        PublishError::Invalid(p) => format!("{}: {}", p.code, p.message),
        PublishError::TooLarge(..) => format!("too_large: {e}"),
        PublishError::Engine(_) => format!("engine: {e}"),
    }
}

/// Largest `to` field: a target list at its cap of ids at their longest.
const MAX_TO_BYTES: usize = crate::protocol::MAX_TARGET_PLAYERS * 68 + 64;
/// Most fields of an entry (five are known; unknown ones are ignored).
const MAX_FIELDS: usize = 32;

/// Validates an entry; the error is the dead-letter reason (`<code>: <message>`).
/// Sizes are checked before any parsing: a huge entry costs one look at its
/// lengths, then goes to the dead letters, on this node and on any other.
fn parse(
    entry_id: &str,
    fields: &[(String, Vec<u8>)],
    max_event_bytes: u64,
) -> Result<Publish, String> {
    if fields.len() > MAX_FIELDS {
        return Err(format!(
            "too_large: the entry has {} fields, at most {MAX_FIELDS}",
            fields.len()
        ));
    }
    let limit = usize::try_from(max_event_bytes).unwrap_or(usize::MAX);
    for (name, value) in fields {
        let most = match name.as_str() {
            "data" => limit,
            "to" => MAX_TO_BYTES,
            _ => 1024,
        };
        if value.len() > most {
            return Err(format!(
                "too_large: `{}` is {} bytes, at most {most}",
                name.chars().take(64).collect::<String>(),
                value.len()
            ));
        }
    }
    let field = |name: &str| -> Result<Option<&str>, String> {
        let value = fields.iter().find(|(k, _)| k == name);
        value
            .map(|(_, b)| {
                std::str::from_utf8(b)
                    .map_err(|_| format!("invalid_encoding: `{name}` is not UTF-8"))
            })
            .transpose()
    };
    let required = |name: &str| -> Result<&str, String> {
        field(name)?.ok_or_else(|| format!("missing_field: `{name}` is required"))
    };
    let to = required("to")?;
    let event_type = required("event_type")?;
    let data = required("data")?;
    let to: serde_json::Value =
        serde_json::from_str(to).map_err(|err| format!("invalid_json: `to`: {err}"))?;
    if data.len() as u64 > max_event_bytes {
        return Err(reason_of(&PublishError::TooLarge(
            data.len(),
            max_event_bytes,
        )));
    }
    let data = RawValue::from_string(data.to_string())
        .map_err(|err| format!("invalid_json: `data`: {err}"))?;
    let room_id = field("room_id")?.map(str::to_string);
    let id = field("id")?.map(str::to_string);
    let mut p = Publish::new(&to, event_type, data, room_id, id, max_event_bytes)
        .map_err(|err| reason_of(&err))?;
    if p.dedupe_key.is_none() {
        p.dedupe_key = Some(format!("stream:{entry_id}"));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fields: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn parses_and_keys_by_entry_id() {
        let e = entry(&[
            ("to", r#"{"player":"a"}"#),
            ("event_type", "t"),
            ("data", "1"),
        ]);
        let p = parse("5-1", &e, 100).expect("valid");
        assert_eq!(p.dedupe_key.as_deref(), Some("stream:5-1"));
        assert_eq!(p.body.id, None);
        let e = entry(&[
            ("to", r#"{"room":"r"}"#),
            ("event_type", "t"),
            ("data", "1"),
            ("id", "k"),
        ]);
        let p = parse("5-1", &e, 100).expect("valid");
        assert_eq!(p.dedupe_key.as_deref(), Some("k"));
        assert_eq!(p.body.room_id.as_deref(), Some("r"));
    }

    #[test]
    fn reasons() {
        let r = |f: &[(&str, &str)]| parse("5-1", &entry(f), 8).err().unwrap_or_default();
        assert!(r(&[("event_type", "t"), ("data", "1")]).starts_with("missing_field"));
        let to = r#"{"player":"a"}"#;
        assert!(r(&[("to", "{"), ("event_type", "t"), ("data", "1")]).starts_with("invalid_json"));
        assert!(r(&[("to", to), ("event_type", "t"), ("data", "[")]).starts_with("invalid_json"));
        assert!(
            r(&[("to", "{}"), ("event_type", "t"), ("data", "1")]).starts_with("invalid_target")
        );
        let big = "\"0123456789\"";
        assert!(r(&[("to", to), ("event_type", "t"), ("data", big)]).starts_with("too_large"));
    }

    /// Hole 2 of issue 11: a huge entry is refused by its sizes before any
    /// parsing (before, a 20 000-id `to` was parsed and de-duplicated
    /// quadratically, stalling the node and every node that claimed it).
    #[test]
    fn huge_entries_are_refused_before_parsing() {
        let many: Vec<String> = (0..20_000).map(|i| format!("player-{i}")).collect();
        let to = serde_json::json!({"players": many}).to_string();
        let reason = parse(
            "5-1",
            &entry(&[("to", &to), ("event_type", "t"), ("data", "1")]),
            65536,
        )
        .err()
        .unwrap_or_default();
        assert!(reason.starts_with("too_large: `to`"), "{reason}");
        let long_type = "t".repeat(5000);
        let to = r#"{"player":"a"}"#;
        let reason = parse(
            "5-1",
            &entry(&[("to", to), ("event_type", &long_type), ("data", "1")]),
            65536,
        )
        .err()
        .unwrap_or_default();
        assert!(reason.starts_with("too_large: `event_type`"), "{reason}");
        let names: Vec<String> = (0..40).map(|i| format!("f{i}")).collect();
        let mut fields: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "x")).collect();
        fields.extend([("to", to), ("event_type", "t"), ("data", "1")]);
        let reason = parse("5-1", &entry(&fields), 65536)
            .err()
            .unwrap_or_default();
        assert!(
            reason.starts_with("too_large: the entry has 43 fields"),
            "{reason}"
        );
        // The largest valid target still passes.
        let cap: Vec<String> = (0..crate::protocol::MAX_TARGET_PLAYERS)
            .map(|i| format!("{i:0>64}"))
            .collect();
        let to = serde_json::json!({"players": cap}).to_string();
        assert!(to.len() <= MAX_TO_BYTES);
        assert!(parse(
            "5-1",
            &entry(&[("to", &to), ("event_type", "t"), ("data", "1")]),
            65536
        )
        .is_ok());
    }

    proptest::proptest! {
        /// Whatever a game server writes into an entry: a publish or a
        /// dead-letter reason, never a panic.
        #[test]
        fn entries_never_panic(
            fields in proptest::collection::vec(
                (proptest::sample::select(vec!["to", "event_type", "data", "id", "room_id", "x"]),
                 proptest::collection::vec(proptest::num::u8::ANY, 0..80)),
                0..8,
            )
        ) {
            let fields: Vec<(String, Vec<u8>)> =
                fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            let _ = parse("1-0", &fields, 64);
        }

        #[test]
        fn valid_entries_round_trip(player in "[A-Za-z0-9_-]{1,64}", t in "[a-z_]{1,32}", n in proptest::num::i64::ANY) {
            let to = serde_json::json!({"player": player}).to_string();
            let data = n.to_string();
            let p = parse("5-1", &entry(&[("to", &to), ("event_type", &t), ("data", &data)]), 64).expect("valid");
            proptest::prop_assert_eq!(p.body.data.get(), data.as_str());
            proptest::prop_assert_eq!(&p.body.event_type, &t);
        }
    }
}
