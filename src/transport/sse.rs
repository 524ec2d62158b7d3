//! Server-Sent Events: `GET /v1/events` and `GET /events/{player_id}`.
//!
//! Owns: SSE framing (`retry: 1000`, then `id:` / `event:` / `data:` per event,
//! `: keep-alive` comments) and the rule that a reconnect carrying
//! `Last-Event-ID: N` acknowledges up to N (up to what N shows was seen,
//! when N is a `resync_required` event: see [`seen_through`]). The stream ends when the token
//! expires, the node shuts down, or the client is a slow consumer; the client
//! resumes from `Last-Event-ID`. Must not touch: the engine beyond ack/cursor.

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use warp::http::{header, HeaderValue, StatusCode};

use super::{check_reader, parse_resume, resolve_after};
use crate::auth::Principal;
use crate::engine::RESYNC_REQUIRED;
use crate::error::ApiError;
use crate::listener::StreamBody;
use crate::protocol::{envelope_json, Event};
use crate::session::{Feed, FeedEnd};
use crate::state::App;

/// Chunks buffered between the session and the socket; the session waits
/// beyond this, so replay is paced by what the socket accepts.
const BODY_QUEUE: usize = 4;
/// Events written in one chunk when several are ready.
const MAX_BATCH: usize = 64;

/// The parts of an SSE request the handler needs.
pub struct SseRequest {
    pub principal: Principal,
    pub path_player: Option<String>,
    pub last_event_id: Option<String>,
    pub query_last_event_id: Option<String>,
}

/// Opens the stream, or answers with an error before it starts.
pub async fn open(app: Arc<App>, req: SseRequest) -> Result<warp::reply::Response, ApiError> {
    let p = &req.principal;
    check_reader(p, req.path_player.as_deref())?;
    // An empty value means "none", as a browser means by not sending one.
    fn given(v: &Option<String>) -> Option<&str> {
        v.as_deref().filter(|s| !s.trim().is_empty())
    }
    let header_point = given(&req.last_event_id).map(parse_resume).transpose()?;
    let query_point = given(&req.query_last_event_id)
        .map(parse_resume)
        .transpose()?;
    let player = p.player_id.clone();
    let (header_point, has) = match header_point {
        Some(n) => {
            let seen = seen_through(&app, &player, n).await?;
            // The client holds N even when it has not seen what precedes it.
            (Some(seen), (seen < n).then_some(n))
        }
        None => (None, None),
    };
    if let Some(n) = header_point {
        app.engine.ack(&player, n).await?;
    }
    let after = resolve_after(&app, &player, header_point.or(query_point)).await?;
    let (feed, _) = Feed::open(app.engine.clone(), &app.hub, &player, after, has).await?;
    let (tx, rx) = mpsc::channel(BODY_QUEUE);
    let expires_in = p.time_left();
    let app2 = app.clone();
    app.tasks
        .spawn(async move { run(app2, player, feed, tx, expires_in).await });
    let mut resp = warp::reply::Response::default();
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp.extensions_mut().insert(StreamBody::new(rx));
    Ok(resp)
}

/// What a reconnect's `Last-Event-ID: N` shows the client has seen. Up to N
/// — unless N is a `resync_required` event that the stream sent *before* the
/// events from its `oldest_available` S on (S < N): a client that dropped
/// right after it has seen none of S..N-1, and acknowledging N would trim
/// them unseen. Then it has seen up to S - 1, or up to the acked cursor if
/// that is further (another connection saw more), and holds N itself: the
/// replay sends S..N-1 and not N again, so the client's next `Last-Event-ID`
/// is an event it saw in order. If everything before N is
/// acknowledged already, N came in order (replayed at its place after S..N-1
/// on a later connection): up to N, or an idle client would be sent back
/// before the oldest event, and get a needless resync, on every reconnect.
async fn seen_through(app: &App, player: &str, n: u64) -> Result<u64, ApiError> {
    if n == 0 {
        return Ok(0);
    }
    let ev = app.engine.read(player, n - 1, 1).await?;
    let Some(ev) = ev.first().filter(|e| e.sequence_number == n) else {
        return Ok(n);
    };
    if ev.body.event_type != RESYNC_REQUIRED {
        return Ok(n);
    }
    let oldest = serde_json::from_str::<serde_json::Value>(ev.body.data.get())
        .ok()
        .and_then(|v| v["oldest_available"].as_u64());
    // S = N: nothing was retained before it, nothing came out of order.
    let Some(s) = oldest.filter(|s| (1..n).contains(s)) else {
        return Ok(n);
    };
    let acked = app.engine.cursor(player).await?.acked;
    Ok(if acked + 1 >= n {
        n
    } else {
        (s - 1).max(acked)
    })
}

fn frame(out: &mut String, player: &str, ev: &Event) {
    let _ = write!(
        out,
        "id: {}\nevent: {}\ndata: {}\n\n",
        ev.sequence_number,
        ev.body.event_type,
        envelope_json(player, ev, false)
    );
}

async fn run(
    app: Arc<App>,
    player: String,
    mut feed: Feed,
    tx: mpsc::Sender<Bytes>,
    expires_in: std::time::Duration,
) {
    metrics::gauge!("mythos_sse_connections").increment(1.0);
    let state = feed.state();
    let expiry = tokio::time::sleep(expires_in);
    tokio::pin!(expiry);
    let mut keepalive = tokio::time::interval(app.config.keepalive);
    keepalive.tick().await;
    let mut chunk = Some(Bytes::from_static(b"retry: 1000\n\n"));
    let why = loop {
        if let Some(c) = chunk.take() {
            tokio::select! {
                r = tx.send(c) => if r.is_err() { break "client gone" },
                _ = state.killed() => break "slow consumer",
                _ = app.shutdown.cancelled() => break "shutdown",
                _ = &mut expiry => break "token expired",
            }
        }
        tokio::select! {
            biased;
            _ = app.shutdown.cancelled() => break "shutdown",
            _ = &mut expiry => break "token expired",
            _ = state.killed() => break "slow consumer",
            _ = keepalive.tick() => chunk = Some(Bytes::from_static(b": keep-alive\n\n")),
            r = feed.next() => match r {
                Ok(ev) => {
                    let mut out = String::with_capacity(512);
                    frame(&mut out, &player, &ev);
                    for _ in 1..MAX_BATCH {
                        match feed.try_next() {
                            Some(ev) => frame(&mut out, &player, &ev),
                            None => break,
                        }
                    }
                    chunk = Some(Bytes::from(out));
                }
                Err(FeedEnd::SlowConsumer) => break "slow consumer",
                Err(FeedEnd::Engine(e)) => {
                    tracing::warn!(error = %e, "SSE feed stopped: engine error");
                    break "engine error"
                }
            },
        }
    };
    tracing::debug!(player = %player, why, "SSE stream ended");
    metrics::gauge!("mythos_sse_connections").decrement(1.0);
}
