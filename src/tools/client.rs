//! `replay --url`: publishing a replay's steps through a running broker's
//! `POST /v1/publish`, with the library's client ([`crate::client::Http`]).
//!
//! Owns: the publish body of a step and telling a refusal from a failure.
//! Must not touch: the broker's insides — it makes exactly the request any
//! HTTP client could.

use hyper::{Method, StatusCode};
use serde_json::json;

use super::replay::{PublishFailure, Publisher, Step};
use crate::client::{ClientError, Http};

#[async_trait::async_trait]
impl Publisher for Http {
    async fn publish(&self, step: &Step<'_>) -> Result<u64, PublishFailure> {
        let e = step.event;
        let mut body = json!({
            "to": {"player": step.to_player},
            "event_type": e.event_type,
            "data": e.data,
            "id": step.id,
        });
        if let Some(r) = &e.room_id {
            body["room_id"] = json!(r);
        }
        match self.send(Method::POST, "/v1/publish", Some(&body)).await {
            Ok(v) => v["deliveries"][0]["sequence_number"]
                .as_u64()
                .ok_or_else(|| {
                    PublishFailure::Failed(format!("an answer without a delivery: {v}"))
                }),
            Err(ClientError::Refused {
                status,
                code,
                message,
            }) if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS => Err(
                PublishFailure::Refused(format!("{status} {code}: {message}")),
            ),
            Err(e) => Err(PublishFailure::Failed(e.to_string())),
        }
    }
}
