//! HTTP calls to a broker: a method, a path, a bearer token, a JSON body;
//! the answer's JSON, or the error the broker gave.
//!
//! Owns: building requests and reading answers (at most [`MAX_ANSWER`]
//! bytes). Must not touch: what the calls mean (the callers: tools, demo,
//! benchmarks).

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

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
    #[error("the WebSocket: {0}")]
    WebSocket(String),
    #[error("cannot sign a token: {0}")]
    Token(String),
}

/// A client of the broker at `base` (`http://host:port`): keep-alive HTTP/1.1
/// connections (`TCP_NODELAY`), a bearer token if given.
#[derive(Clone)]
pub struct Http {
    base: String,
    token: Option<String>,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    /// A client without a token.
    pub fn new(base: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            base: base.trim_end_matches('/').to_string(),
            token: None,
            http: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// The same, sending `token` as `Authorization: Bearer`.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// `http://host:port`, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path` (with its query); the 2xx answer's JSON.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.send(Method::GET, path, None).await
    }

    /// `GET path`: the 2xx answer's bytes, untouched (the text of the
    /// envelopes in it keeps its field order).
    pub async fn get_raw(&self, path: &str) -> Result<Bytes, ClientError> {
        let (status, bytes) = self.exchange(Method::GET, path, Bytes::new()).await?;
        self.checked(status, bytes)
    }

    /// One request with this client's token; a 2xx answer's JSON body
    /// (`null` if it has none), or the error the broker gave.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        self.send_as(self.token.as_deref(), method, path, body)
            .await
    }

    /// [`Http::send`] with another token (or none).
    pub async fn send_as(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let (status, bytes) = self.exchange_as(token, method, path, body).await?;
        let bytes = self.checked(status, bytes)?;
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// One request with this client's token and a body of bytes (sent as
    /// JSON); the status and the body of any answer, 2xx or not.
    pub async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        self.exchange_as(self.token.as_deref(), method, path, body)
            .await
    }

    async fn exchange_as(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let unreachable = |message: String| ClientError::Unreachable {
            base: self.base.clone(),
            message,
        };
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        let request = request
            .body(Full::new(body))
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
        Ok((status, bytes))
    }

    /// A 2xx answer's body, or the broker's error (`{"error": {code, message}}`).
    fn checked(&self, status: StatusCode, bytes: Bytes) -> Result<Bytes, ClientError> {
        if status.is_success() {
            return Ok(bytes);
        }
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Err(ClientError::Refused {
            status,
            code: v["error"]["code"].as_str().unwrap_or("").to_string(),
            message: v["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(500).collect()),
        })
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
