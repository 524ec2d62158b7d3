//! Publishing: turning a publish request (HTTP body or a `mythos:publish`
//! stream entry) into a validated append, and making it.
//!
//! Owns: the validation rules every publish path shares (target shape, ids,
//! event type, `data` size) and the dedupe key. Must not touch: HTTP details
//! (the route maps [`PublishError`] to a status) or Redis details.

use std::sync::Arc;

use serde_json::value::RawValue;

use crate::engine::{Engine, EngineError};
use crate::protocol::{check_id, Delivery, EventBody, ProtocolError, Target};

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
                "invalid_event_type",
                format!("`event_type` must be 1 to {MAX_NAME} characters"),
            )
            .into());
        }
        if event_type.chars().any(char::is_control) {
            return Err(ProtocolError::new(
                "invalid_event_type",
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
                    "invalid_request",
                    format!("`id` must be 1 to {MAX_NAME} characters"),
                )
                .into());
            }
        }
        // SSE carries the envelope on one `data:` line: keep `data` on one line.
        let data = if data.get().contains(['\n', '\r']) {
            let v: serde_json::Value = serde_json::from_str(data.get())
                .map_err(|_| ProtocolError::new("invalid_json", "`data` is not valid JSON"))?;
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
