//! The game server's calls to the broker's public HTTP API: publish an event,
//! put a player in a room or take them out, list a room, create an account,
//! and keep the service token fresh.
//!
//! Owns: building those requests and reading their answers. Must not touch:
//! game rules, or the broker's insides — a game server written in any
//! language makes exactly these requests (protocol sections 2 and 4).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// Why a call to the broker failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot reach the broker: {0}")]
    Unreachable(String),
    #[error("the broker answered {status}: {body}")]
    Refused { status: StatusCode, body: String },
}

/// A service token and when to refresh it.
struct Token {
    value: String,
    refresh_at: Instant,
}

/// A client of one broker's HTTP API, acting with the `service` role.
pub struct BrokerApi {
    /// `http://host:port`, without a trailing slash.
    base: String,
    http: Client<HttpConnector, Full<Bytes>>,
    token: Mutex<Token>,
}

impl BrokerApi {
    /// A client for the broker at `base`, holding a service token that is
    /// valid for `expires_in` from now.
    pub fn new(base: String, token: String, expires_in: Duration) -> Self {
        Self {
            base,
            http: Client::builder(TokioExecutor::new()).build_http(),
            token: Mutex::new(Token {
                value: token,
                refresh_at: Instant::now() + expires_in / 2,
            }),
        }
    }

    /// `POST /v1/publish`. `to` is `{"player": ..}`, `{"players": [..]}` or
    /// `{"room": ..}`; `id` is the idempotency key, if the event has one.
    pub async fn publish(
        &self,
        to: Value,
        event_type: &str,
        data: Value,
        room_id: Option<&str>,
        id: Option<&str>,
    ) -> Result<(), BrokerError> {
        let body = json!({"to": to, "event_type": event_type, "data": data,
                          "room_id": room_id, "id": id});
        self.call(Method::POST, "/v1/publish", Some(body)).await?;
        Ok(())
    }

    /// `POST /v1/admin/users` with an admin token: a `player` account;
    /// `false` if the name is taken (409 `user_exists`).
    pub async fn add_user(
        &self,
        admin_token: &str,
        username: &str,
        password: &str,
    ) -> Result<bool, BrokerError> {
        let body = json!({"username": username, "password": password});
        match self
            .send(Method::POST, "/v1/admin/users", Some(body), admin_token)
            .await
        {
            Ok(_) => Ok(true),
            Err(BrokerError::Refused {
                status: StatusCode::CONFLICT,
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `PUT /v1/rooms/{room}/members/{player}`: the broker tells the others.
    pub async fn join(&self, room: &str, player: &str) -> Result<(), BrokerError> {
        let path = format!("/v1/rooms/{room}/members/{player}");
        self.call(Method::PUT, &path, None).await?;
        Ok(())
    }

    /// `DELETE /v1/rooms/{room}/members/{player}`: the broker tells those who remain.
    pub async fn leave(&self, room: &str, player: &str) -> Result<(), BrokerError> {
        let path = format!("/v1/rooms/{room}/members/{player}");
        self.call(Method::DELETE, &path, None).await?;
        Ok(())
    }

    /// `GET /v1/rooms/{room}/members`, sorted.
    pub async fn members(&self, room: &str) -> Result<Vec<String>, BrokerError> {
        let answer = self
            .call(Method::GET, &format!("/v1/rooms/{room}/members"), None)
            .await?;
        let members = answer["members"].as_array().cloned().unwrap_or_default();
        Ok(members
            .iter()
            .filter_map(|m| m.as_str().map(str::to_string))
            .collect())
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, BrokerError> {
        let token = self.token().await?;
        self.send(method, path, body, &token).await
    }

    /// The service token, refreshed with `POST /v1/auth/refresh` once half of
    /// its lifetime has passed.
    async fn token(&self) -> Result<String, BrokerError> {
        let (current, due) = {
            let t = self.token.lock().unwrap_or_else(|e| e.into_inner());
            (t.value.clone(), Instant::now() >= t.refresh_at)
        };
        if !due {
            return Ok(current);
        }
        let answer = self
            .send(Method::POST, "/v1/auth/refresh", None, &current)
            .await?;
        let (Some(value), Some(secs)) = (
            answer["access_token"].as_str(),
            answer["expires_in"].as_u64(),
        ) else {
            return Err(BrokerError::Refused {
                status: StatusCode::OK,
                body: "a refresh answer without access_token/expires_in".into(),
            });
        };
        let mut t = self.token.lock().unwrap_or_else(|e| e.into_inner());
        t.value = value.to_string();
        t.refresh_at = Instant::now() + Duration::from_secs(secs) / 2;
        Ok(t.value.clone())
    }

    /// One request; a 2xx answer's JSON body (`null` if it has none).
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        token: &str,
    ) -> Result<Value, BrokerError> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| BrokerError::Unreachable(e.to_string()))?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| BrokerError::Unreachable(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| BrokerError::Unreachable(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(BrokerError::Refused {
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}
