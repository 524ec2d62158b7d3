//! A player's connection as the fan-out and idle workloads see it, whatever
//! carries it: our WebSocket ([`crate::net`]), our SSE stream
//! ([`crate::sse`]) or a Socket.IO connection to the peer
//! ([`crate::socketio`]). Each yields the same [`Item`]: an event's number
//! (our sequence number, or the peer room's counter) and its send time.
//!
//! Owns: opening a feed per target and reading it item by item (answering
//! Engine.IO pings on the way). Must not touch: the checks (the workloads
//! feed [`crate::stats::SeqCheck`] and the [`crate::stats::Recorder`]).

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::net::{self, scan_event, Error, Http, Ws};
use crate::socketio::{self, Packet};
use crate::sse::{self, Block, SseStream};

/// What the players connect to, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Our broker, `GET /v1/ws`.
    Ws,
    /// Our broker, `GET /v1/events`.
    Sse,
    /// The Socket.IO peer.
    SocketIo,
}

/// One item read off a feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// An event: its number in the player's (room's) order, and for
    /// benchmark events the send time (`data.t`).
    Event { seq: u64, t: Option<u64> },
    /// Anything else (a keep-alive, a pong, a resync marker, ...).
    Other,
}

/// An open player connection.
pub enum Feed {
    Ws(Ws),
    Sse(SseStream),
    SocketIo(Ws),
}

/// Opens player `token`'s feed on `addr`, in `room` (the peer's clients join
/// it in their handshake; ours are members already). With `since`, our feeds
/// start at the end of the player's log (nothing replayed). Returns the feed
/// and the number its first event must follow: our welcome's
/// `last_sequence_number` (WebSocket), the player's `GET /v1/cursor` (SSE,
/// which has no welcome), or 0 (the peer's counters start at 1).
pub async fn open(
    target: Target,
    addr: SocketAddr,
    token: &str,
    room: &str,
    since: Option<u64>,
) -> Result<(Feed, u64), Error> {
    match target {
        Target::Ws => {
            let (ws, last) = net::ws_connect(addr, token, since).await?;
            Ok((Feed::Ws(ws), last))
        }
        Target::Sse => {
            let last = match since {
                Some(_) => last_sequence_number(addr, token).await?,
                None => 0,
            };
            let from = since.map(|_| last);
            Ok((Feed::Sse(sse::connect(addr, token, from).await?), last))
        }
        Target::SocketIo => Ok((Feed::SocketIo(socketio::connect(addr, room).await?), 0)),
    }
}

/// The player's last sequence number (`GET /v1/cursor`).
async fn last_sequence_number(addr: SocketAddr, token: &str) -> Result<u64, Error> {
    let mut http = Http::connect(addr, token).await?;
    let (status, body) = http
        .request("GET", "/v1/cursor", bytes::Bytes::new())
        .await?;
    let text = String::from_utf8_lossy(&body);
    if status != 200 {
        return Err(format!("GET /v1/cursor answered {status}: {text}"));
    }
    net::number_after(&text, r#""last_sequence_number":"#)
        .ok_or_else(|| format!("cursor without last_sequence_number: {text}"))
}

impl Feed {
    /// The next item; Err says how the connection ended (the server closed
    /// it, it broke, or an answer to a ping could not be sent).
    pub async fn next_item(&mut self) -> Result<Item, Error> {
        match self {
            Feed::Ws(ws) => match next_text(ws).await? {
                Some(text) => Ok(match scan_event(&text) {
                    Some((seq, t)) => Item::Event { seq, t },
                    None => Item::Other,
                }),
                None => Ok(Item::Other),
            },
            Feed::Sse(stream) => Ok(match stream.next().await? {
                Block::Event { seq, t } => Item::Event { seq, t },
                Block::Resync | Block::Other => Item::Other,
            }),
            Feed::SocketIo(ws) => {
                let Some(text) = next_text(ws).await? else {
                    return Ok(Item::Other);
                };
                match socketio::scan_packet(&text) {
                    Packet::Event { n, t } => Ok(Item::Event { seq: n, t }),
                    Packet::Ping => {
                        ws.send(Message::text("3"))
                            .await
                            .map_err(|e| format!("Socket.IO pong: {e}"))?;
                        Ok(Item::Other)
                    }
                    Packet::Other => Ok(Item::Other),
                }
            }
        }
    }
}

/// The next frame of a WebSocket: its text, or None for a non-text frame.
async fn next_text(
    ws: &mut Ws,
) -> Result<Option<tokio_tungstenite::tungstenite::Utf8Bytes>, Error> {
    match ws.next().await {
        Some(Ok(Message::Text(t))) => Ok(Some(t)),
        Some(Ok(Message::Close(f))) => Err(format!("closed by the server: {f:?}")),
        Some(Ok(_)) => Ok(None),
        Some(Err(e)) => Err(format!("socket error: {e}")),
        None => Err("socket ended".into()),
    }
}
