//! WebSocket: `GET /v1/ws` and `GET /ws/{player_id}`.
//!
//! Owns: the handshake and opening the session ([`open`], mirroring
//! `sse::open`), the frame protocol (welcome, resync_required, events, pong,
//! command_accepted, error as the session's [`Inbox`] words them), server
//! pings and the idle timeout, the frame size limits of the socket itself, and
//! closing with the code of each [`End`]. Two tasks per connection: a reader
//! (frames → the session's inbox) and a writer (feed and replies → socket).
//! Must not touch: the engine, what a client message means, delivery
//! semantics (all the session's).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use warp::http::{HeaderMap, HeaderValue, StatusCode};

use super::{check_reader, parse_resume, ready_batch, session_id, End};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::protocol::{envelope_json, ErrorCode};
use crate::session::{self, Feed, FeedEnd, Inbox, Incoming, Outcome, ResumePoint};
use crate::state::App;
use crate::telemetry::{ConnectionGauge, Transport};
use tracing::Instrument;

/// Frames above this (or above the configured limit, if larger) close the
/// connection with 1009; between the configured limit and this they get a
/// `too_large` error.
pub const HARD_FRAME_LIMIT: usize = 64 * 1024;
/// How long a closing connection waits for the peer's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Initial read buffer, and the most one read takes from the socket (it grows
/// for larger frames). tungstenite's default (128 KiB, allocated per
/// connection) would dominate an idle connection's memory, and it zero-fills
/// the whole buffer on the first read, so every byte of it is resident: 256
/// holds an ack or a command in one read (a frame of the default 8 KiB limit
/// takes 32, and the rate limit bounds how often); 1 KiB cost each idle
/// connection 0.75 KiB more (bench-delivery w3).
const READ_BUFFER: usize = 256;
/// Bytes gathered before a write; a flush sends a batch regardless.
const WRITE_BUFFER: usize = 16 * 1024;

type WebSocket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

fn origin_allowed(app: &App, headers: &HeaderMap) -> bool {
    let allowed = app.config().allowed_origins.trim();
    if allowed == "*" {
        return true;
    }
    match headers.get("origin").and_then(|v| v.to_str().ok()) {
        None => true,
        Some(o) => allowed.split(',').map(str::trim).any(|a| a == o),
    }
}

/// Checks the request, opens the player's session at `?since=` (else the
/// acked cursor) and answers `101`; the connection then runs on its own task.
/// Every refusal is an HTTP error before the upgrade.
pub async fn open(
    app: Arc<App>,
    principal: Result<Principal, ApiError>,
    path_player: Option<String>,
    headers: HeaderMap,
    query: HashMap<String, String>,
    upgrade: Option<crate::listener::Upgrade>,
) -> Result<warp::reply::Response, ApiError> {
    let principal = principal?;
    check_reader(&principal, path_player.as_deref())?;
    if !origin_allowed(&app, &headers) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::ForbiddenOrigin,
            "this Origin may not open a WebSocket here (MYTHOS_ALLOWED_ORIGINS)",
        ));
    }
    let since = query.get("since").map(|s| parse_resume(s)).transpose()?;
    let accept_key = handshake_key(&headers)?;
    let upgrade = upgrade.and_then(|u| u.take()).ok_or_else(|| {
        ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            ErrorCode::UpgradeRequired,
            "this connection cannot be upgraded",
        )
    })?;
    let player = principal.player_id.clone();
    let pass = app.gate().admit(&player, "websocket")?;
    let point = since.map_or(ResumePoint::Acked, ResumePoint::After);
    let opened = session::open(
        app.engine().clone(),
        app.hub(),
        app.presence(),
        &player,
        point,
    )
    .await?;
    let session_id = session_id();
    let mut first = vec![json!({"type": "welcome", "player_id": player,
        "session_id": session_id, "last_sequence_number": opened.cursor.last,
        "acked": opened.cursor.acked})
    .to_string()];
    if let Some(oldest) = opened.resync {
        first.push(json!({"type": "resync_required", "oldest_available": oldest}).to_string());
    }
    // Boxed before the task captures it (see `run`).
    let session = Box::new(WsSession {
        app: app.clone(),
        player,
        session_id,
        feed: opened.feed,
        first,
        expires_in: principal.time_left(),
    });
    let selected = select_subprotocol(
        headers
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
    );
    let hard_limit = HARD_FRAME_LIMIT.max(app.config().ws_max_frame as usize);
    let span = tracing::info_span!(parent: None, "connection", player = %session.player,
        transport = "ws", session = %session.session_id, node = %app.node());
    app.tasks().spawn(
        async move {
            run(upgrade, hard_limit, session).await;
            drop(pass);
        }
        .instrument(span),
    );
    Ok(switching_protocols(&accept_key, selected))
}

/// Checks the request is a WebSocket handshake; returns `Sec-WebSocket-Accept`.
pub fn handshake_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let has = |name: &str, token: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !(has("connection", "upgrade") && has("upgrade", "websocket")) {
        return Err(ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            ErrorCode::UpgradeRequired,
            "this endpoint speaks WebSocket only",
        ));
    }
    if !has("sec-websocket-version", "13") {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidRequest,
            "Sec-WebSocket-Version must be 13",
        ));
    }
    let key = headers.get("sec-websocket-key").ok_or_else(|| {
        ApiError::bad_request(ErrorCode::InvalidRequest, "Sec-WebSocket-Key is missing")
    })?;
    Ok(tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// The subprotocol to answer with: `mythos.v1` when offered; else, when the
/// client offered only its `bearer.<jwt>` entry, that entry, because a
/// browser fails a handshake that selects none of the offered protocols.
pub fn select_subprotocol(offered: Option<&str>) -> Option<&str> {
    let all: Vec<&str> = offered?.split(',').map(str::trim).collect();
    if all.contains(&"mythos.v1") {
        return Some("mythos.v1");
    }
    all.into_iter().find(|p| p.starts_with("bearer."))
}

/// The `101` answer; `protocol` is the selected subprotocol, if any.
pub fn switching_protocols(accept_key: &str, protocol: Option<&str>) -> warp::reply::Response {
    let mut resp = warp::reply::Response::default();
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert("connection", HeaderValue::from_static("upgrade"));
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    if let Ok(v) = accept_key.parse() {
        h.insert("sec-websocket-accept", v);
    }
    if let Some(v) = protocol.and_then(|p| HeaderValue::from_str(p).ok()) {
        h.insert("sec-websocket-protocol", v);
    }
    resp
}

fn close(end: End) -> Message {
    let (code, reason) = end.close();
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

/// What the reader asks the writer to do.
enum Ctrl {
    Send(String),
    Close(End),
}

type CtrlTx = futures_channel::mpsc::Sender<Ctrl>;
type CtrlRx = futures_channel::mpsc::Receiver<Ctrl>;

/// Replies the reader may queue for the writer before it waits.
const CTRL_QUEUE: usize = 32;

/// The reader → writer queue; it ends when the reader is gone. A
/// futures-channel queue allocates per message, where a tokio channel holds
/// a 512-byte cache-padded header plus a block of 32 slots from the start:
/// ~250 bytes instead of ~800 for every idle connection (replies are rare).
fn ctrl_queue() -> (CtrlTx, CtrlRx) {
    // It holds its buffer plus one message per sender.
    futures_channel::mpsc::channel(CTRL_QUEUE - 1)
}

/// A connection that passed auth and whose feed is open.
struct WsSession {
    app: Arc<App>,
    player: String,
    session_id: String,
    feed: Feed,
    /// `welcome`, then `resync_required` where the session says so.
    first: Vec<String>,
    expires_in: Duration,
}

/// Waits for the upgrade, then runs the connection, with our buffer sizes,
/// to its end.
///
/// This future is the connection's task for as long as it is open, so what
/// it holds is per-connection memory: the session comes boxed and the socket
/// is made here, because an async fn keeps every argument in its future for
/// its whole life (rust-lang/rust#62958). Passed by value, the session and the
/// socket sat there twice over (an outer `accept` and this), dead, for 1.5 KiB
/// of each idle connection's 8 (docs/benchmarks.md, "W3 WebSocket").
async fn run(upgrade: hyper::upgrade::OnUpgrade, hard_limit: usize, s: Box<WsSession>) {
    let upgraded = match upgrade.await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "WebSocket upgrade failed");
            return;
        }
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(Some(hard_limit))
        .max_frame_size(Some(hard_limit));
    let ws: WebSocket =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
    let WsSession {
        app,
        player,
        session_id,
        mut feed,
        first,
        expires_in,
    } = *s;
    let _gauge = ConnectionGauge::open(Transport::Ws);
    tracing::info!("connection opened");
    let mut why = "client_left";
    let (mut sink, stream) = ws.split();
    let (ctrl_tx, ctrl_rx) = ctrl_queue();
    let clock = Liveness::new();
    let mut reader = tokio::spawn(
        read_loop(Box::new(Reader {
            app: app.clone(),
            player: player.clone(),
            session_id,
            stream,
            ctrl: ctrl_tx,
            clock: clock.clone(),
        }))
        .instrument(tracing::Span::current()),
    );
    let greeted = {
        let mut greet = futures_util::stream::iter(first.into_iter().map(|t| Ok(Message::text(t))));
        sink.send_all(&mut greet).await.is_ok()
    };
    if greeted {
        let w = Writer {
            app: &app,
            player: &player,
            expires_in,
            clock,
        };
        if let Some(end) = w.run(&mut feed, &mut sink, ctrl_rx).await {
            why = end.reason();
            let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(close(end))).await;
        }
    }
    // Give the peer a moment to answer our close frame (the closing
    // handshake), so the frame is not lost to a reset of the TCP connection.
    let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
    if tokio::time::timeout(CLOSE_GRACE, &mut reader)
        .await
        .is_err()
    {
        reader.abort();
    }
    tracing::info!(reason = why, "connection closed");
}

/// When the peer was last heard from.
#[derive(Clone)]
struct Liveness {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Liveness {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }
    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn silent_for(&self) -> Duration {
        self.start
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

type Sink = futures_util::stream::SplitSink<WebSocket, Message>;
type Stream = futures_util::stream::SplitStream<WebSocket>;

struct Writer<'a> {
    app: &'a Arc<App>,
    player: &'a str,
    expires_in: Duration,
    clock: Liveness,
}

impl Writer<'_> {
    /// Sends events and replies until something ends the connection; returns
    /// the close frame to send, if any.
    async fn run(&self, feed: &mut Feed, sink: &mut Sink, mut ctrl_rx: CtrlRx) -> Option<End> {
        let app = self.app;
        let state = feed.state();
        let idle = app.config().idle_timeout;
        let mut ping = tokio::time::interval(idle / 3);
        ping.tick().await;
        let expiry = tokio::time::sleep(self.expires_in);
        tokio::pin!(expiry);
        loop {
            let outgoing: Vec<Message> = tokio::select! {
                biased;
                _ = app.shutdown().cancelled() => return Some(End::Shutdown),
                _ = &mut expiry => return Some(End::Expired),
                _ = state.killed() => return Some(End::Slow),
                c = ctrl_rx.next() => match c {
                    Some(Ctrl::Send(text)) => vec![Message::text(text)],
                    Some(Ctrl::Close(end)) => return Some(end),
                    None => return None,
                },
                _ = ping.tick() => {
                    if self.clock.silent_for() > idle {
                        return Some(End::Idle);
                    }
                    vec![Message::Ping(Default::default())]
                }
                r = feed.next() => match r {
                    Ok(ev) => ready_batch(ev, feed)
                        .map(|ev| Message::text(envelope_json(self.player, &ev, true)))
                        .collect(),
                    Err(FeedEnd::SlowConsumer) => return Some(End::Slow),
                    Err(FeedEnd::Engine(e)) => {
                        tracing::warn!(error = %e, "WebSocket feed stopped: engine error");
                        return Some(End::EngineLost);
                    }
                },
            };
            let send = async {
                for m in outgoing {
                    sink.feed(m).await?;
                }
                sink.flush().await
            };
            tokio::select! {
                r = send => if r.is_err() { return None } else { feed.written() },
                _ = state.killed() => return Some(End::Slow),
                _ = app.shutdown().cancelled() => return Some(End::Shutdown),
            }
        }
    }
}

/// What the reader task starts with (boxed, as the writer's session: see
/// [`run`]).
struct Reader {
    app: Arc<App>,
    player: String,
    session_id: String,
    stream: Stream,
    ctrl: CtrlTx,
    clock: Liveness,
}

/// Reads client frames and acts on them; replies go through the writer.
async fn read_loop(r: Box<Reader>) {
    let Reader {
        app,
        player,
        session_id,
        mut stream,
        mut ctrl,
        clock,
    } = *r;
    let mut inbox = Inbox::new(
        app.engine().as_ref(),
        app.limiter(),
        app.config().message_limits(),
        app.config().ws_max_frame as usize,
        &player,
        &session_id,
    );
    // After our 1008 the reader only drains: frames the peer still sends are
    // read and dropped until its close frame (or the grace period), so that
    // unread data does not turn our close into a TCP reset the peer sees
    // instead of the code.
    let mut closing = false;
    while let Some(frame) = stream.next().await {
        clock.touch();
        let msg = match frame {
            Ok(m) => m,
            Err(tungstenite::Error::Capacity(_)) => {
                let _ = ctrl.send(Ctrl::Close(End::TooBig)).await;
                break;
            }
            // A text frame that is not UTF-8 fails the connection (RFC 6455 §8.1).
            Err(tungstenite::Error::Utf8(_)) => {
                let _ = ctrl.send(Ctrl::Close(End::NotUtf8)).await;
                break;
            }
            Err(_) => break,
        };
        let incoming = match &msg {
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            Message::Text(t) => Incoming::Text(t.as_str()),
            Message::Binary(b) => Incoming::Binary(b),
        };
        if closing {
            continue;
        }
        // Boxed: its state lives only while a message is handled, instead of
        // enlarging every idle connection's reader task by its size.
        let text = match Box::pin(inbox.handle(incoming)).await {
            Outcome::Nothing => continue,
            Outcome::Reply(text) => text,
            Outcome::Abuse => {
                let _ = ctrl.send(Ctrl::Close(End::Abuse)).await;
                closing = true;
                continue;
            }
            Outcome::Bye => {
                app.presence().logout(&player);
                let _ = ctrl.send(Ctrl::Close(End::Bye)).await;
                closing = true;
                continue;
            }
        };
        if ctrl.send(Ctrl::Send(text)).await.is_err() {
            break;
        }
    }
}
