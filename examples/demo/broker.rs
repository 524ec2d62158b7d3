//! The game server's calls to the broker's public HTTP API: publish an event,
//! put a player in a room or take them out, list a room, create an account,
//! and keep the service token fresh.
//!
//! Owns: which calls the game makes and the service token's refresh. The
//! requests themselves are the library's client ([`mythos_broker::client`]):
//! a game server written in any language makes exactly these requests
//! (protocol sections 2 and 4). Must not touch: game rules, or the broker's
//! insides.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use mythos_broker::client::Http;
use serde_json::{json, Value};

/// Why a call to the broker failed.
pub use mythos_broker::client::ClientError as BrokerError;

/// A service token and when to refresh it.
struct Token {
    value: String,
    refresh_at: Instant,
}

/// A client of one broker's HTTP API, acting with the `service` role.
pub struct BrokerApi {
    http: Http,
    token: Mutex<Token>,
}

impl BrokerApi {
    /// A client for the broker at `base`, holding a service token that is
    /// valid for `expires_in` from now.
    pub fn new(base: &str, token: String, expires_in: Duration) -> Self {
        Self {
            http: Http::new(base),
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
        let path = "/v1/admin/users";
        match self
            .http
            .send_as(Some(admin_token), Method::POST, path, Some(&body))
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

    /// `GET /v1/presence/{room}` (every page): each member with their
    /// presence state (`online`, `linkdead`, `offline`), sorted.
    pub async fn presence(&self, room: &str) -> Result<Vec<(String, String)>, BrokerError> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let mut path = format!("/v1/presence/{room}?limit=500");
            if !after.is_empty() {
                path.push_str(&format!("&after={after}"));
            }
            let answer = self.call(Method::GET, &path, None).await?;
            for p in answer["players"].as_array().cloned().unwrap_or_default() {
                if let (Some(id), Some(state)) = (p["player_id"].as_str(), p["state"].as_str()) {
                    out.push((id.to_string(), state.to_string()));
                }
            }
            match answer["next_after"].as_str() {
                Some(next) => after = next.to_string(),
                None => return Ok(out),
            }
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, BrokerError> {
        let token = self.token().await?;
        self.http
            .send_as(Some(&token), method, path, body.as_ref())
            .await
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
            .http
            .send_as(Some(&current), Method::POST, "/v1/auth/refresh", None)
            .await?;
        let (Some(value), Some(secs)) = (
            answer["access_token"].as_str(),
            answer["expires_in"].as_u64(),
        ) else {
            return Err(BrokerError::Refused {
                status: StatusCode::OK,
                code: String::new(),
                message: "a refresh answer without access_token/expires_in".into(),
            });
        };
        let mut t = self.token.lock().unwrap_or_else(|e| e.into_inner());
        t.value = value.to_string();
        t.refresh_at = Instant::now() + Duration::from_secs(secs) / 2;
        Ok(t.value.clone())
    }
}
