//! Server-Sent Events: `GET /v1/events` and `GET /events/{player_id}`.
//!
//! Owns: SSE framing (`retry: 1000`, then `id:` / `event:` / `data:` per event,
//! the `resync_required` marker without an `id:` line, `: keep-alive`
//! comments), the body's HTTP/1.1 chunked framing (the stream writes to its
//! socket itself, see [`crate::listener::TakeOver`]), and which request
//! value is which resume point: `Last-Event-ID` is a point the client has
//! seen (it acknowledges), `?last_event_id=` only a point. The stream ends
//! when the token expires, the node shuts down, or the client is a slow
//! consumer or sends more than [`MAX_CLIENT_BYTES`]; the client resumes from
//! `Last-Event-ID`.
//! Must not touch: the engine, delivery semantics (the session's).

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use warp::http::HeaderValue;

use super::{check_reader, parse_resume, ready_batch, session_id, End};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::listener::TakeOver;
use crate::protocol::Event;
use crate::session::{self, Feed, FeedEnd, ResumePoint};
use crate::state::App;
use crate::telemetry::{ConnectionGauge, Transport};
use tracing::Instrument;

/// Bytes a client may send on its event stream (it has nothing to say
/// there; they are read and dropped) before the stream is closed as abuse.
pub const MAX_CLIENT_BYTES: usize = 4096;

/// How long a stream that ends (shutdown, token expiry) may take to write
/// what it had begun and the body's last chunk.
const END_WRITE: std::time::Duration = std::time::Duration::from_secs(1);

/// Room in front of a chunk's text for its size line (`ffffffff\r\n`).
const ROOM: usize = 10;

/// A chunk's text, with room in front for its size line (see [`seal`]).
fn chunk_text(capacity: usize) -> String {
    let mut s = String::with_capacity(ROOM + capacity + 2);
    s.push_str("\0\0\0\0\0\0\0\0\0\0");
    s
}

/// `text` (from [`chunk_text`]) as one chunk of HTTP/1.1 chunked transfer
/// coding (RFC 9112 §7.1): its size in hex, CRLF, the text, CRLF; the size
/// line is written into the room in front, so nothing is copied.
fn seal(text: String) -> Bytes {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut v = text.into_bytes();
    let mut n = v.len().saturating_sub(ROOM);
    v.extend_from_slice(b"\r\n");
    let mut start = ROOM - 2;
    v[start..ROOM].copy_from_slice(b"\r\n");
    loop {
        start -= 1;
        v[start] = HEX[n & 15];
        n >>= 4;
        if n == 0 || start == 0 {
            break;
        }
    }
    Bytes::from(v).slice(start..)
}

/// The body's end: the last chunk, empty.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

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
    let mut first = chunk_text(64);
    first.push_str("retry: 1000\n\n");
    if let Some(oldest) = opened.resync {
        // No `id:` line: the client's Last-Event-ID stays at its resume
        // point until event `oldest` arrives (contract §5).
        let _ = write!(
            first,
            "event: resync_required\ndata: {{\"oldest_available\":{oldest}}}\n\n"
        );
    }
    let (take_over, socket) = TakeOver::new();
    let expires_in = p.time_left();
    // Boxed before the task captures it: see `run`.
    let session = Box::new(SseSession {
        app: app.clone(),
        feed,
        first,
        socket,
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
    resp.extensions_mut().insert(take_over);
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
    /// `retry:`, then `resync_required` where the session says so (a
    /// [`chunk_text`]).
    first: String,
    /// The connection, once hyper has written the answer's head.
    socket: tokio::sync::oneshot::Receiver<TcpStream>,
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
        socket,
        expires_in,
    } = *s;
    let mut tcp = tokio::select! {
        r = socket => match r {
            Ok(tcp) => tcp,
            Err(_) => {
                tracing::debug!("the connection ended before the stream's head was written");
                return;
            }
        },
        _ = app.shutdown().cancelled() => return,
    };
    let _gauge = ConnectionGauge::open(Transport::Sse);
    tracing::info!("connection opened");
    let player = feed.player().to_string();
    let state = feed.state();
    let expiry = tokio::time::sleep(expires_in);
    tokio::pin!(expiry);
    let mut keepalive = tokio::time::interval(app.config().keepalive);
    keepalive.tick().await;
    let mut chunk = Some(seal(first));
    // What is left of a chunk whose writing was cut short by the end.
    let mut unsent = Bytes::new();
    let mut client_bytes = 0usize;
    let why = loop {
        if let Some(mut c) = chunk.take() {
            // `write_all_buf` advances `c` by what it wrote, even when cut short.
            let stop = tokio::select! {
                r = tcp.write_all_buf(&mut c) => match r {
                    Ok(()) => { feed.written(); None }
                    Err(_) => Some(None),
                },
                _ = state.killed() => Some(Some(End::Slow)),
                _ = app.shutdown().cancelled() => Some(Some(End::Shutdown)),
                _ = &mut expiry => Some(Some(End::Expired)),
            };
            if let Some(why) = stop {
                unsent = c;
                break why;
            }
        }
        tokio::select! {
            biased;
            _ = app.shutdown().cancelled() => break Some(End::Shutdown),
            _ = &mut expiry => break Some(End::Expired),
            _ = state.killed() => break Some(End::Slow),
            // The client went away (or talks): free its place now, not at
            // the next write.
            r = tcp.readable() => {
                if r.is_err() {
                    break None;
                }
                let mut scratch = [0u8; 256];
                match tcp.try_read(&mut scratch) {
                    Ok(0) => break None,
                    Ok(n) => {
                        client_bytes += n;
                        if client_bytes > MAX_CLIENT_BYTES {
                            break Some(End::Abuse);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break None,
                }
            }
            _ = keepalive.tick() => {
                let mut text = chunk_text(16);
                text.push_str(": keep-alive\n\n");
                chunk = Some(seal(text));
            }
            r = feed.next() => match r {
                Ok(ev) => {
                    let mut out = chunk_text(512);
                    for ev in ready_batch(ev, &mut feed) {
                        frame(&mut out, &player, &ev);
                    }
                    chunk = Some(seal(out));
                }
                Err(FeedEnd::SlowConsumer) => break Some(End::Slow),
                Err(FeedEnd::Engine(e)) => {
                    tracing::warn!(error = %e, "SSE feed stopped: engine error");
                    break Some(End::EngineLost)
                }
            },
        }
    };
    // A stream the node ends, ends its body (the client then knows it was
    // not cut); a slow or gone client is just closed.
    if matches!(why, Some(End::Shutdown | End::Expired | End::EngineLost)) {
        let _ = tokio::time::timeout(END_WRITE, async {
            tcp.write_all_buf(&mut unsent).await?;
            tcp.write_all(LAST_CHUNK).await?;
            tcp.shutdown().await
        })
        .await;
    }
    tracing::info!(
        reason = why.map_or("client_left", End::reason),
        "connection closed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(text: &str) -> Vec<u8> {
        let mut t = chunk_text(text.len());
        t.push_str(text);
        seal(t).to_vec()
    }

    #[test]
    fn a_chunk_is_its_size_in_hex_then_the_text() {
        assert_eq!(sealed("retry: 1000\n\n"), b"d\r\nretry: 1000\n\n\r\n");
        assert_eq!(sealed(""), b"0\r\n\r\n");
        let long = "x".repeat(0x1234);
        let mut want = b"1234\r\n".to_vec();
        want.extend_from_slice(long.as_bytes());
        want.extend_from_slice(b"\r\n");
        assert_eq!(sealed(&long), want);
    }
}
