//! Server-Sent Events: `GET /v1/events` and `GET /events/{player_id}`.
//!
//! Owns: SSE framing (`retry: 1000`, then `id:` / `event:` / `data:` per event,
//! the `resync_required` marker without an `id:` line, `: keep-alive`
//! comments) and which request value is which resume point: `Last-Event-ID`
//! is a point the client has seen (it acknowledges), `?last_event_id=` only
//! a point. The stream ends when the token expires, the node shuts down, or
//! the client is a slow consumer; the client resumes from `Last-Event-ID`.
//! Must not touch: the engine, delivery semantics (the session's).

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use warp::http::HeaderValue;

use super::{check_reader, parse_resume, ready_batch, session_id, End};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::listener::{body_channel, BodyTx};
use crate::protocol::Event;
use crate::session::{self, Feed, FeedEnd, ResumePoint};
use crate::state::App;
use crate::telemetry::{ConnectionGauge, Transport};
use tracing::Instrument;

/// Chunks buffered between the session and the socket; the session waits
/// beyond this, so replay is paced by what the socket accepts.
const BODY_QUEUE: usize = 4;

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
    let point = match (header_point, query_point) {
        (Some(n), _) => ResumePoint::Seen(n),
        (None, Some(n)) => ResumePoint::After(n),
        (None, None) => ResumePoint::Acked,
    };
    let player = p.player_id.clone();
    let pass = app.gate().admit(&player, "sse")?;
    let opened = session::open(
        app.engine().clone(),
        app.hub(),
        app.presence(),
        &player,
        point,
    )
    .await?;
    let feed = opened.feed;
    let mut first = String::from("retry: 1000\n\n");
    if let Some(oldest) = opened.resync {
        // No `id:` line: the client's Last-Event-ID stays at its resume
        // point until event `oldest` arrives (contract §5).
        let _ = write!(
            first,
            "event: resync_required\ndata: {{\"oldest_available\":{oldest}}}\n\n"
        );
    }
    let (tx, body) = body_channel(BODY_QUEUE);
    let expires_in = p.time_left();
    // Boxed before the task captures it: see `run`.
    let session = Box::new(SseSession {
        app: app.clone(),
        feed,
        first,
        tx,
        expires_in,
    });
    let span = tracing::info_span!(parent: None, "connection", player = %player,
        transport = "sse", session = %session_id(), node = %app.node());
    app.tasks().spawn(
        async move {
            run(session).await;
            drop(pass);
        }
        .instrument(span),
    );
    let mut resp = warp::reply::Response::default(); // 200 OK
    let h = resp.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp.extensions_mut().insert(body);
    Ok(resp)
}

/// One event's `id:` / `event:` / `data:` lines, the envelope spliced
/// straight into `out` (its shared part is encoded once per publish).
fn frame(out: &mut String, player: &str, ev: &Event) {
    let _ = write!(
        out,
        "id: {}\nevent: {}\ndata: ",
        ev.sequence_number, ev.body.event_type
    );
    ev.body.envelope(player, ev.sequence_number, false, out);
    out.push_str("\n\n");
}

/// What a stream's task starts with.
struct SseSession {
    app: Arc<App>,
    feed: Feed,
    /// `retry:`, then `resync_required` where the session says so.
    first: String,
    tx: BodyTx,
    expires_in: std::time::Duration,
}

/// Streams the feed to its end. This future is the stream's task for as
/// long as it is open: the session comes boxed, because an async fn keeps
/// its arguments in its future for its whole life (rust-lang/rust#62958) and
/// they would sit there beside the locals they are moved into (as for
/// WebSocket, `ws::run`).
async fn run(s: Box<SseSession>) {
    let SseSession {
        app,
        mut feed,
        first,
        tx,
        expires_in,
    } = *s;
    let _gauge = ConnectionGauge::open(Transport::Sse);
    tracing::info!("connection opened");
    let player = feed.player().to_string();
    let state = feed.state();
    let expiry = tokio::time::sleep(expires_in);
    tokio::pin!(expiry);
    let mut keepalive = tokio::time::interval(app.config().keepalive);
    keepalive.tick().await;
    let mut chunk = Some(Bytes::from(first));
    let why = loop {
        if let Some(c) = chunk.take() {
            tokio::select! {
                r = tx.send(c) => if r.is_err() { break None } else { feed.written() },
                _ = state.killed() => break Some(End::Slow),
                _ = app.shutdown().cancelled() => break Some(End::Shutdown),
                _ = &mut expiry => break Some(End::Expired),
            }
        }
        tokio::select! {
            biased;
            _ = app.shutdown().cancelled() => break Some(End::Shutdown),
            _ = &mut expiry => break Some(End::Expired),
            _ = state.killed() => break Some(End::Slow),
            // The client went away: free its place now, not at the next write.
            _ = tx.closed() => break None,
            _ = keepalive.tick() => chunk = Some(Bytes::from_static(b": keep-alive\n\n")),
            r = feed.next() => match r {
                Ok(ev) => {
                    let mut out = String::with_capacity(512);
                    for ev in ready_batch(ev, &mut feed) {
                        frame(&mut out, &player, &ev);
                    }
                    chunk = Some(Bytes::from(out));
                }
                Err(FeedEnd::SlowConsumer) => break Some(End::Slow),
                Err(FeedEnd::Engine(e)) => {
                    tracing::warn!(error = %e, "SSE feed stopped: engine error");
                    break Some(End::EngineLost)
                }
            },
        }
    };
    tracing::info!(
        reason = why.map_or("client_left", End::reason),
        "connection closed"
    );
}
