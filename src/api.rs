//! The request/response endpoints: login, refresh, accounts, publish, rooms,
//! acks, cursor, health.
//!
//! Owns: each endpoint's checks (role, ids, body shape) and answer. Must not
//! touch: routing (see `server`), streaming (see `transport`).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use crate::auth::{hash_password, Principal, Role};
use crate::engine::Account;
use crate::error::ApiError;
use crate::protocol::{ack_number, check_id, valid_id, Delivery, ErrorCode};
use crate::publish::{Publish, PublishBody, PublishError};
use crate::rooms;
use crate::state::App;

pub type Answer = Result<Response, ApiError>;

/// A request body as the route read it: its bytes, or why it was refused
/// (too large); a value, not a rejection, so that a handler answers
/// authentication and role first.
pub type Body = Result<bytes::Bytes, ApiError>;

/// A JSON answer with a status.
pub fn json_reply<T: Serialize>(status: StatusCode, v: &T) -> Response {
    warp::reply::with_status(warp::reply::json(v), status).into_response()
}

/// A `200` JSON answer.
pub(crate) fn ok<T: Serialize>(v: &T) -> Answer {
    Ok(json_reply(StatusCode::OK, v))
}

/// Parses a JSON body into `T`, with the protocol's error codes.
pub fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::bad_request(ErrorCode::InvalidRequest, e.to_string())
        }
        _ => ApiError::bad_request(ErrorCode::InvalidJson, "the body is not valid JSON"),
    })
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::Invalid(p) => p.into(),
            PublishError::TooLarge(..) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::TooLarge,
                e.to_string(),
            ),
            PublishError::Engine(e) => e.into(),
        }
    }
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
    /// Extension: also start a refresh-token family in an `HttpOnly`
    /// cookie (`crate::refresh`).
    #[serde(default)]
    remember: bool,
}

fn token_body(app: &App, sub: &str, role: Role) -> Answer {
    let (token, expires_in) = app.auth().issue(sub, role)?;
    ok(&json!({"access_token": token, "token_type": "Bearer",
                "expires_in": expires_in, "player_id": sub}))
}

/// `POST /v1/auth/login`
pub async fn login(app: Arc<App>, body: Body, headers: warp::http::HeaderMap) -> Answer {
    let mut c: Credentials = parse_body(&body?)?;
    // Only well-formed names reach the limiter, so junk cannot grow its map.
    let key = if valid_id(&c.username) {
        c.username.as_str()
    } else {
        ""
    };
    if app.login_limiter().check_key(&key.to_string()).is_err() {
        crate::telemetry::rate_limited("login");
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "too many login attempts for this user; wait a few seconds",
        ));
    }
    let account = if valid_id(&c.username) {
        app.engine().user(&c.username).await?
    } else {
        None
    };
    let username = c.username.clone();
    let app2 = app.clone();
    let stored = account.as_ref().map(|a| a.password_hash.clone());
    let password = std::mem::take(&mut c.password);
    let ok = tokio::task::spawn_blocking(move || {
        app2.auth().check_password(&password, stored.as_deref())
    })
    .await
    .unwrap_or(false);
    match account {
        Some(a) if ok => {
            let role = Role::parse(&a.role).unwrap_or(Role::Player);
            if c.remember {
                crate::refresh::remember(&app, &headers, &username, role).await
            } else {
                token_body(&app, &username, role)
            }
        }
        _ => Err({
            metrics::counter!(crate::telemetry::AUTH_FAILURES, "reason" => "invalid_credentials")
                .increment(1);
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::InvalidCredentials,
                "unknown user or wrong password",
            )
        }),
    }
}

/// `POST /v1/auth/refresh`. A token issued under a refresh-token family
/// (`sid`, extension) is refreshed only while the family lives: after a
/// logout it is refused like an expired one.
pub async fn refresh(app: Arc<App>, p: Principal) -> Answer {
    let Some(family) = p.session.as_deref() else {
        return token_body(&app, &p.player_id, p.role);
    };
    if !app.engine().family_exists(family).await? {
        metrics::counter!(crate::telemetry::AUTH_FAILURES, "reason" => "logged_out").increment(1);
        return Err(ApiError::unauthorized(
            "invalid token: its session was logged out",
        ));
    }
    let (token, expires_in) = app.auth().issue_in(&p.player_id, p.role, Some(family))?;
    ok(&json!({"access_token": token, "token_type": "Bearer",
                "expires_in": expires_in, "player_id": p.player_id}))
}

#[derive(Deserialize)]
struct NewUser {
    username: String,
    password: String,
    #[serde(default)]
    role: Option<String>,
}

/// Creates an account (shared by the admin endpoint, `user add` and the demo).
pub async fn create_account(
    app: &App,
    username: &str,
    password: &str,
    role: &str,
) -> Result<bool, ApiError> {
    check_id("username", username)?;
    if password.is_empty() || password.len() > 1024 {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidRequest,
            "the password must be 1 to 1024 bytes",
        ));
    }
    if Role::parse(role).is_none() {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidRequest,
            "role must be player, service or admin",
        ));
    }
    let pw = password.to_string();
    let hash = tokio::task::spawn_blocking(move || hash_password(&pw))
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| ApiError::internal("hashing failed"))?;
    let account = Account {
        password_hash: hash,
        role: role.to_string(),
    };
    Ok(app.engine().create_user(username, &account).await?)
}

/// `POST /v1/admin/users`
pub async fn add_user(app: Arc<App>, p: Principal, body: Body) -> Answer {
    p.require(&[Role::Admin])?;
    let u: NewUser = parse_body(&body?)?;
    let role = u.role.as_deref().unwrap_or("player");
    if create_account(&app, &u.username, &u.password, role).await? {
        Ok(json_reply(
            StatusCode::CREATED,
            &json!({"username": u.username, "player_id": u.username, "role": role}),
        ))
    } else {
        Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::UserExists,
            "an account with this username exists",
        ))
    }
}

/// `POST /v1/publish`
pub async fn publish(app: Arc<App>, p: Principal, body: Body) -> Answer {
    let started = std::time::Instant::now();
    p.require(&[Role::Service, Role::Admin])?;
    let b: PublishBody = parse_body(&body?)?;
    let max = app.config().max_event_bytes;
    let publish = Publish::new(&b.to, &b.event_type, b.data, b.room_id, b.id, max)?;
    #[cfg(feature = "defects")]
    if crate::defects::on(crate::defects::Defect::AckBeforeAppend) {
        let engine = app.engine().clone();
        tokio::spawn(async move { publish.run(engine.as_ref()).await });
        return ok(&serde_json::json!({ "deliveries": [] }));
    }
    let deliveries = publish.run(app.engine().as_ref()).await?;
    crate::telemetry::observe_since(crate::telemetry::PUBLISH_DURATION, started);
    /// The answer, serialised straight from the deliveries (a fan-out answers
    /// one object per member; `json!` would build a `Value` tree of them first).
    #[derive(Serialize)]
    struct Published<'a> {
        deliveries: &'a [Delivery],
    }
    ok(&Published {
        deliveries: &deliveries,
    })
}

/// `PUT` / `DELETE /v1/rooms/{room}/members/{player}`
pub async fn membership(
    app: Arc<App>,
    p: Principal,
    room: String,
    player: String,
    join: bool,
) -> Answer {
    p.require(&[Role::Service, Role::Admin])?;
    check_id("room id", &room)?;
    check_id("player id", &player)?;
    let change = if join {
        rooms::join(app.engine().as_ref(), &room, &player).await?
    } else {
        rooms::leave(app.engine().as_ref(), &room, &player).await?
    };
    ok(
        &json!({"room_id": room, "player_id": player, "member": join,
                "changed": change.changed, "deliveries": change.deliveries}),
    )
}

/// `GET /v1/rooms/{room}/members`
pub async fn members(app: Arc<App>, p: Principal, room: String) -> Answer {
    p.require(&[Role::Service, Role::Admin])?;
    check_id("room id", &room)?;
    let members = app.engine().members(&room).await?;
    ok(&json!({"room_id": room, "members": members}))
}

#[derive(Deserialize)]
struct AckBody {
    sequence_number: serde_json::Value,
}

/// `POST /v1/ack`
pub async fn ack(app: Arc<App>, p: Principal, body: Body) -> Answer {
    p.require(&[Role::Player])?;
    let a: AckBody = parse_body(&body?)?;
    let n = ack_number(&a.sequence_number).ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::InvalidRequest,
            "`sequence_number` must be a non-negative integer",
        )
    })?;
    let c = crate::session::ack(app.engine().as_ref(), &p.player_id, n).await?;
    ok(&json!({"player_id": p.player_id, "acked": c.acked, "last_sequence_number": c.last}))
}

/// `GET /v1/cursor`: where the caller's log stands.
pub async fn cursor(app: Arc<App>, p: Principal) -> Answer {
    p.require(&[Role::Player])?;
    let c = app.engine().cursor(&p.player_id).await?;
    ok(
        &json!({"player_id": p.player_id, "last_sequence_number": c.last,
                "acked": c.acked, "oldest_available": c.oldest}),
    )
}

/// `GET /readyz`
pub async fn ready(app: Arc<App>) -> Answer {
    match app.engine().ping().await {
        Ok(()) => ok(&json!({"status": "ready"})),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::EngineUnavailable,
                format!("the event store is not ready: {e}"),
            ))
        }
    }
}
