//! The HTTP surface: warp routes, authentication of each request, error
//! answers, CORS, and starting/stopping a node.
//!
//! Owns: which path and method reach which handler, and turning every
//! rejection into the JSON error shape. Must not touch: handler logic (in
//! `api` and `transport`), storage.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use crate::admin;
use crate::api::{self, json_reply, Answer, Body};
use crate::auth::{token_from, Principal, TokenError};
use crate::error::ApiError;
use crate::protocol::ErrorCode;
use crate::state::App;
use crate::transport::{sse, ws};

type Query = HashMap<String, String>;

fn respond(r: Answer) -> Response {
    r.unwrap_or_else(|e| error_reply(&e))
}

/// An error's answer; a client error is counted by its code.
fn error_reply(e: &ApiError) -> Response {
    if e.status.is_client_error() {
        crate::telemetry::rejected(e.code);
    }
    json_reply(e.status, &e.body())
}

/// Runs `handler` for an authenticated request, or answers the
/// authentication error: the one place a route turns `authed` into a reply.
async fn authorized<F, Fut>(p: Result<Principal, ApiError>, handler: F) -> Response
where
    F: FnOnce(Principal) -> Fut,
    Fut: std::future::Future<Output = Answer>,
{
    respond(match p {
        Ok(p) => handler(p).await,
        Err(e) => Err(e),
    })
}

/// Authenticates from the `Authorization` header, `?token=`, or (WebSocket)
/// the `bearer.<jwt>` subprotocol; only those two headers are read.
fn authenticate(
    app: &App,
    authz: Option<&str>,
    ws_protocols: Option<&str>,
    q: &Query,
) -> Result<Principal, ApiError> {
    let token = token_from(authz, q.get("token").map(String::as_str), ws_protocols)
        .ok_or_else(|| TokenError::Missing.into_api())?;
    app.auth().verify(&token)
}

/// Largest request body accepted: an event of the maximum size plus its envelope.
fn body_limit(app: &App) -> u64 {
    app.config().max_event_bytes.saturating_mul(2) + 16 * 1024
}

/// Reads a request body of at most `limit` bytes, with or without a
/// `Content-Length` (chunked bodies are read too), as a [`Body`]: a declared
/// length over the limit is refused before reading, a longer chunked body
/// when it passes the limit.
fn read_body(
    limit: u64,
    timeout: Duration,
) -> impl Filter<Extract = (Body,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .then(move |declared, chunks| collect_body(declared, chunks, limit, timeout))
}

async fn collect_body<S, B>(declared: Option<u64>, chunks: S, limit: u64, timeout: Duration) -> Body
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    use futures_util::StreamExt;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge,
            format!("the request body is larger than {limit} bytes"),
        )
    };
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut chunks = std::pin::pin!(chunks);
    let mut buf = bytes::BytesMut::new();
    // Slowloris on the body: the whole body within `timeout`.
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, chunks.next()).await;
        let Ok(chunk) = next else {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::RequestTimeout,
                format!("the request body did not arrive within {timeout:?}"),
            ));
        };
        let Some(chunk) = chunk else { break };
        let chunk = chunk.map_err(|_| {
            ApiError::bad_request(
                ErrorCode::InvalidRequest,
                "the request body could not be read",
            )
        })?;
        if (buf.len() + chunk.remaining()) as u64 > limit {
            return Err(too_large());
        }
        bytes::BufMut::put(&mut buf, chunk);
    }
    Ok(buf.freeze())
}

type Routes = BoxedFilter<(Response,)>;

/// The filters every route group builds on.
struct Parts {
    app: BoxedFilter<(Arc<App>,)>,
    /// The app and the request's principal, not yet checked: handlers go
    /// through [`authorized`].
    authed: BoxedFilter<(Arc<App>, Result<Principal, ApiError>)>,
    body: BoxedFilter<(Body,)>,
}

/// The query string as a map (empty when there is none).
fn query() -> BoxedFilter<(Query,)> {
    warp::query::<Query>()
        .or(warp::any().map(Query::new))
        .unify()
        .boxed()
}

/// The first of `routes` that matches (each boxed: see docs/decisions.md).
fn any_of(routes: Vec<Routes>) -> Routes {
    routes
        .into_iter()
        .reduce(|a, b| a.or(b).unify().boxed())
        .unwrap_or_else(|| {
            warp::any()
                .map(|| json_reply(StatusCode::NOT_FOUND, &json!({})))
                .boxed()
        })
}

/// Every route of a node.
pub(crate) fn routes(app: Arc<App>) -> Routes {
    crate::telemetry::install();
    let with_app = {
        let app = app.clone();
        warp::any().map(move || app.clone()).boxed()
    };
    let authed = with_app
        .clone()
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("sec-websocket-protocol"))
        .and(query())
        .map(
            |app: Arc<App>, authz: Option<String>, proto: Option<String>, q: Query| {
                let p = authenticate(&app, authz.as_deref(), proto.as_deref(), &q);
                (app, p)
            },
        )
        .untuple_one()
        .boxed();
    let p = Parts {
        app: with_app,
        authed,
        body: read_body(body_limit(&app), app.config().request_timeout).boxed(),
    };
    any_of(vec![
        health(&p),
        auth(&p),
        admin(&p),
        publish(&p),
        rooms(&p),
        presence(&p),
        player(&p),
        events(&p),
        websocket(&p),
        crate::web::routes(),
    ])
    .recover(recover)
    .unify()
    .with(cors(&app))
    .map(Reply::into_response)
    .boxed()
}

/// `GET /healthz`, `GET /readyz`, `GET /metrics`.
fn health(p: &Parts) -> Routes {
    let health = warp::path!("healthz")
        .and(warp::get())
        .map(|| json_reply(StatusCode::OK, &json!({"status": "ok"})));
    let ready = warp::path!("readyz")
        .and(warp::get())
        .and(p.app.clone())
        .then(|app| async move { respond(api::ready(app).await) });
    let metrics = warp::path!("metrics").and(warp::get()).map(|| {
        let text = crate::telemetry::render();
        warp::reply::with_header(text, "content-type", "text/plain; version=0.0.4").into_response()
    });
    any_of(vec![health.boxed(), ready.boxed(), metrics.boxed()])
}

/// `POST /v1/auth/login`, `POST /v1/auth/refresh`; the extension's
/// `POST /v1/auth/session` and `POST /v1/auth/logout` (`crate::refresh`).
fn auth(p: &Parts) -> Routes {
    let login = warp::path!("v1" / "auth" / "login")
        .and(warp::post())
        .and(p.app.clone())
        .and(p.body.clone())
        .and(warp::header::headers_cloned())
        .then(|app, b, h| async move { respond(api::login(app, b, h).await) });
    let session = warp::path!("v1" / "auth" / "session")
        .and(warp::post())
        .and(p.app.clone())
        .and(warp::header::headers_cloned())
        .then(|app, h| async move { respond(crate::refresh::session(app, h).await) });
    let logout = warp::path!("v1" / "auth" / "logout")
        .and(warp::post())
        .and(p.app.clone())
        .and(warp::header::headers_cloned())
        .then(|app, h| async move { respond(crate::refresh::logout(app, h).await) });
    let refresh = warp::path!("v1" / "auth" / "refresh")
        .and(warp::post())
        .and(p.authed.clone())
        .then(|app, p| authorized(p, move |p| api::refresh(app, p)));
    any_of(vec![
        login.boxed(),
        refresh.boxed(),
        session.boxed(),
        logout.boxed(),
    ])
}

/// `POST /v1/admin/users`; the admin reads of `crate::admin`:
/// `GET /v1/admin/players/{P}`, `GET /v1/admin/players/{P}/events`,
/// `GET /v1/admin/commands`, `GET /v1/admin/streams`.
fn admin(p: &Parts) -> Routes {
    let users = warp::path!("v1" / "admin" / "users")
        .and(warp::post())
        .and(p.authed.clone())
        .and(p.body.clone())
        .then(|app, p, b| authorized(p, move |p| api::add_user(app, p, b)));
    let player = warp::path!("v1" / "admin" / "players" / String)
        .and(warp::get())
        .and(p.authed.clone())
        .and(query())
        .then(|player, app, p, q| authorized(p, move |p| admin::player(app, p, player, q)));
    let events = warp::path!("v1" / "admin" / "players" / String / "events")
        .and(warp::get())
        .and(p.authed.clone())
        .and(query())
        .then(|player, app, p, q| authorized(p, move |p| admin::events(app, p, player, q)));
    let commands = warp::path!("v1" / "admin" / "commands")
        .and(warp::get())
        .and(p.authed.clone())
        .and(query())
        .then(|app, p, q| authorized(p, move |p| admin::commands(app, p, q)));
    let streams = warp::path!("v1" / "admin" / "streams")
        .and(warp::get())
        .and(p.authed.clone())
        .and(query())
        .then(|app, p, q| authorized(p, move |p| admin::streams(app, p, q)));
    any_of(vec![
        users.boxed(),
        player.boxed(),
        events.boxed(),
        commands.boxed(),
        streams.boxed(),
    ])
}

/// `POST /v1/publish`.
fn publish(p: &Parts) -> Routes {
    warp::path!("v1" / "publish")
        .and(warp::post())
        .and(p.authed.clone())
        .and(p.body.clone())
        .then(|app, p, b| authorized(p, move |p| api::publish(app, p, b)))
        .boxed()
}

/// `PUT` / `DELETE /v1/rooms/{room}/members/{player}`, `GET /v1/rooms/{room}/members`.
fn rooms(p: &Parts) -> Routes {
    // PUT joins, DELETE leaves.
    let join = warp::put().map(|| true).or(warp::delete().map(|| false));
    let membership = warp::path!("v1" / "rooms" / String / "members" / String)
        .and(join.unify())
        .and(p.authed.clone())
        .then(|room, player, join, app, p| {
            authorized(p, move |p| api::membership(app, p, room, player, join))
        });
    let members = warp::path!("v1" / "rooms" / String / "members")
        .and(warp::get())
        .and(p.authed.clone())
        .then(|room, app, p| authorized(p, move |p| api::members(app, p, room)));
    any_of(vec![membership.boxed(), members.boxed()])
}

/// Presence reads (`crate::admin::presence`): `GET /v1/presence/players/{P}`,
/// `GET /v1/presence/facts/{partition}`, `GET /v1/presence/{room}`,
/// `GET` / `PUT /v1/rooms/{room}/presence_events`, `GET /v1/admin/presence`.
fn presence(p: &Parts) -> Routes {
    use crate::admin::presence as pr;
    let player = warp::path!("v1" / "presence" / "players" / String)
        .and(warp::get())
        .and(p.authed.clone())
        .and(query())
        .then(|player, app, p, q| authorized(p, move |p| pr::player(app, p, player, q)));
    let facts = warp::path!("v1" / "presence" / "facts" / String)
        .and(warp::get())
        .and(p.authed.clone())
        .and(query())
        .then(|part, app, p, q| authorized(p, move |p| pr::facts(app, p, part, q)));
    let room = warp::path!("v1" / "presence" / String)
        .and(warp::get())
        .and(p.authed.clone())
        .and(query())
        .then(|room, app, p, q| authorized(p, move |p| pr::room(app, p, room, q)));
    let get_events = warp::path!("v1" / "rooms" / String / "presence_events")
        .and(warp::get())
        .and(p.authed.clone())
        .then(|room, app, p| authorized(p, move |p| pr::room_events(app, p, room, None)));
    let put_events = warp::path!("v1" / "rooms" / String / "presence_events")
        .and(warp::put())
        .and(p.authed.clone())
        .and(p.body.clone())
        .then(|room, app, p, b| authorized(p, move |p| pr::room_events(app, p, room, Some(b))));
    let leases = warp::path!("v1" / "admin" / "presence")
        .and(warp::get())
        .and(p.authed.clone())
        .and(query())
        .then(|app, p, q| authorized(p, move |p| pr::leases(app, p, q)));
    any_of(vec![
        player.boxed(),
        facts.boxed(),
        room.boxed(),
        get_events.boxed(),
        put_events.boxed(),
        leases.boxed(),
    ])
}

/// A player's reads of their own log's state: `POST /v1/ack`, `GET /v1/cursor`.
fn player(p: &Parts) -> Routes {
    let ack = warp::path!("v1" / "ack")
        .and(warp::post())
        .and(p.authed.clone())
        .and(p.body.clone())
        .then(|app, p, b| authorized(p, move |p| api::ack(app, p, b)));
    let cursor = warp::path!("v1" / "cursor")
        .and(warp::get())
        .and(p.authed.clone())
        .then(|app, p| authorized(p, move |p| api::cursor(app, p)));
    any_of(vec![ack.boxed(), cursor.boxed()])
}

/// SSE: `GET /v1/events`, `GET /events/{player}`.
fn events(p: &Parts) -> Routes {
    let sse_path = warp::path!("v1" / "events")
        .map(|| None)
        .or(warp::path!("events" / String).map(Some))
        .unify();
    sse_path
        .and(warp::get())
        .and(p.authed.clone())
        .and(warp::header::optional::<String>("last-event-id"))
        .and(query())
        .then(
            |path_player: Option<String>,
             app: Arc<App>,
             p: Result<Principal, ApiError>,
             lei,
             q: Query| {
                authorized(p, move |principal| {
                    let req = sse::SseRequest {
                        principal,
                        path_player,
                        last_event_id: lei,
                        query_last_event_id: q.get("last_event_id").cloned(),
                    };
                    sse::open(app, req)
                })
            },
        )
        .boxed()
}

/// WebSocket: `GET /v1/ws`, `GET /ws/{player}`.
fn websocket(p: &Parts) -> Routes {
    let ws_path = warp::path!("v1" / "ws")
        .map(|| None)
        .or(warp::path!("ws" / String).map(Some))
        .unify();
    let upgrade = warp::ext::optional::<crate::listener::Upgrade>();
    ws_path
        .and(warp::get())
        .and(p.authed.clone())
        .and(warp::header::headers_cloned())
        .and(query())
        .and(upgrade)
        .then(
            |path_player, app, p: Result<Principal, ApiError>, h, q, upgrade| async move {
                respond(ws::open(app, p, path_player, h, q, upgrade).await)
            },
        )
        .boxed()
}

fn cors(app: &App) -> warp::cors::Builder {
    let base = warp::cors()
        .allow_methods(vec!["GET", "POST", "PUT", "DELETE", "OPTIONS"])
        .allow_headers(vec!["authorization", "content-type", "last-event-id"])
        .max_age(Duration::from_secs(600));
    let origins = app.config().allowed_origins.trim();
    if origins == "*" {
        base.allow_any_origin()
    } else {
        base.allow_origins(origins.split(',').map(str::trim).filter(|o| !o.is_empty()))
    }
}

async fn recover(r: Rejection) -> Result<Response, Rejection> {
    let e = if r.is_not_found() {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such endpoint",
        )
    } else if let Some(e) = r.find::<ApiError>() {
        e.clone()
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::MethodNotAllowed,
            "this method is not allowed here",
        )
    } else if r.find::<warp::reject::UnsupportedMediaType>().is_some() {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            "send JSON",
        )
    } else if r
        .find::<warp::reject::InvalidHeader>()
        .is_some_and(|h| h.name().eq_ignore_ascii_case("last-event-id"))
    {
        ApiError::bad_request(
            ErrorCode::InvalidResumePoint,
            "the resume point must be a non-negative integer sequence number",
        )
    } else if r.find::<warp::reject::InvalidHeader>().is_some()
        || r.find::<warp::reject::InvalidQuery>().is_some()
    {
        ApiError::bad_request(
            ErrorCode::InvalidRequest,
            "a header or the query string is malformed",
        )
    } else {
        tracing::debug!(rejection = ?r, "unhandled rejection");
        ApiError::bad_request(
            ErrorCode::InvalidRequest,
            "the request could not be handled",
        )
    };
    Ok(error_reply(&e))
}

/// A running node.
pub struct Running {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, closes every session (WebSocket 1012, SSE end), lets
    /// in-flight requests finish, and returns when the node is down.
    pub async fn shutdown(self) {
        self.app.shutdown().cancel();
        let _ = self.task.await;
    }
}

/// Binds `app.config().bind` and serves until [`Running::shutdown`].
pub async fn start(app: Arc<App>) -> std::io::Result<Running> {
    let listener = tokio::net::TcpListener::bind(app.config().bind).await?;
    let addr = listener.local_addr()?;
    let filter = routes(app.clone());
    crate::node::start_background(&app);
    let app2 = app.clone();
    let task = tokio::spawn(async move {
        let shutdown = app2.shutdown().clone();
        crate::listener::serve(
            listener,
            filter,
            shutdown,
            Duration::from_secs(10),
            app2.config().request_timeout,
        )
        .await;
        app2.tasks().close();
        if tokio::time::timeout(Duration::from_secs(5), app2.tasks().wait())
            .await
            .is_err()
        {
            tracing::warn!("some sessions did not close within 5 s");
        }
        // The players this node held go linkdead (another node may take
        // them back within the grace), and the lease is given up.
        let _ = tokio::time::timeout(Duration::from_secs(3), app2.presence().leave()).await;
    });
    Ok(Running { addr, app, task })
}
