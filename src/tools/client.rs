//! A client of a running broker's HTTP API for the `--url` path of
//! `export`, `replay` and `inspect`: the admin reads and `POST /v1/publish`,
//! with a bearer token.
//!
//! Owns: building those requests and reading their answers (JSON bodies of
//! at most [`MAX_ANSWER`] bytes). Must not touch: the broker's insides — it
//! makes exactly the requests any HTTP client could.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use super::replay::{PublishFailure, Publisher, Step};

/// Largest answer read (a page of 1000 events of 64 KiB each, with room).
pub const MAX_ANSWER: usize = 256 * 1024 * 1024;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the broker at {base}: {message}")]
    Unreachable { base: String, message: String },
    #[error("the broker answered {status} {code}: {message}")]
    Refused {
        status: StatusCode,
        code: String,
        message: String,
    },
}

/// A client of the broker at `base` (`http://host:port`).
pub struct ApiClient {
    base: String,
    token: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl ApiClient {
    pub fn new(base: &str, token: String) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// `GET path` (with its query); the 2xx answer's JSON.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.send(Method::GET, path, None).await
    }

    /// One request; a 2xx answer's JSON body, or the error the broker gave.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let bytes = self.send_raw(method, path, body).await?;
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// `GET path`: the 2xx answer's bytes, untouched (the text of the
    /// envelopes in it keeps its field order).
    pub async fn get_raw(&self, path: &str) -> Result<Bytes, ClientError> {
        self.send_raw(Method::GET, path, None).await
    }

    /// One request; a 2xx answer's body, or the error the broker gave.
    async fn send_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Bytes, ClientError> {
        let unreachable = |message: String| ClientError::Unreachable {
            base: self.base.clone(),
            message,
        };
        let body = body.map(Value::to_string).unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| unreachable(e.to_string()))?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(ClientError::Refused {
                status,
                code: v["error"]["code"].as_str().unwrap_or("").to_string(),
                message: v["error"]["message"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(500).collect()),
            });
        }
        Ok(bytes)
    }
}

/// Percent-encodes a query value (entry ids and numbers need none, but a
/// value is never pasted raw).
pub fn query_value(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[async_trait::async_trait]
impl Publisher for ApiClient {
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
