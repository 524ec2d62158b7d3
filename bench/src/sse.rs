//! A player's Server-Sent Events stream (`GET /v1/events`) for the load
//! generator: one keep-alive HTTP/1.1 connection per stream (hyper), the
//! body read as it arrives, split into blocks at blank lines, and each
//! event's `data:` line *scanned* for `sequence_number` and `data.t` the way
//! [`crate::net::scan_event`] scans a WebSocket frame, not parsed.
//!
//! Framing (docs/protocol.md): first `retry: 1000`, then per event `id:`,
//! `event:` and `data:` lines; `resync_required` comes without `id:`;
//! `: keep-alive` comments in between.
//!
//! Owns: opening the stream and splitting it. Must not touch: what a
//! workload expects of the events.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::net::{number_after, Error};

/// What one block of the stream (text up to a blank line) was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// An event: its sequence number and, for benchmark events, `data.t`.
    Event { seq: u64, t: Option<u64> },
    /// The connection-local `resync_required` marker (no `id:`).
    Resync,
    /// `retry:`, a comment (`: keep-alive`), or a block without an event.
    Other,
}

/// Scans one block (without its blank line).
pub fn scan_block(block: &[u8]) -> Block {
    let mut resync = false;
    for line in block.split(|&b| b == b'\n') {
        if line == b"event: resync_required" {
            resync = true;
        } else if let Some(data) = line.strip_prefix(b"data: ") {
            if resync {
                return Block::Resync;
            }
            let Ok(text) = std::str::from_utf8(data) else {
                return Block::Other;
            };
            return match number_after(text, r#""sequence_number":"#) {
                Some(seq) => Block::Event {
                    seq,
                    t: number_after(text, r#""data":{"t":"#),
                },
                None => Block::Other,
            };
        }
    }
    Block::Other
}

/// An open event stream. Dropping it closes the connection.
pub struct SseStream {
    body: Incoming,
    /// Bytes received and not yet returned as blocks.
    buf: Vec<u8>,
    /// How far `buf` is known to hold no blank line.
    searched: usize,
    /// Kept so that hyper does not close the connection early.
    _sender: http1::SendRequest<Empty<Bytes>>,
    conn: JoinHandle<()>,
}

impl Drop for SseStream {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// Opens `GET /v1/events` as the token's player (`Last-Event-ID: <from>`
/// when given) and reads its first block (`retry: 1000`): the stream is open
/// and the broker has registered the connection.
pub async fn connect(addr: SocketAddr, token: &str, from: Option<u64>) -> Result<SseStream, Error> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("SSE handshake: {e}"))?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut request = Request::get("/v1/events")
        .header("host", addr.to_string())
        .header("accept", "text/event-stream")
        .header("authorization", format!("Bearer {token}"));
    if let Some(n) = from {
        request = request.header("last-event-id", n.to_string());
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("SSE request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("GET /v1/events: {e}"))?;
    let status = response.status();
    if status != hyper::StatusCode::OK {
        conn.abort();
        return Err(format!("GET /v1/events answered {status}"));
    }
    let mut stream = SseStream {
        body: response.into_body(),
        buf: Vec::with_capacity(1024),
        searched: 0,
        _sender: sender,
        conn,
    };
    match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
        Ok(Ok(Block::Other)) => Ok(stream),
        Ok(Ok(b)) => Err(format!("SSE: expected `retry:` first, got {b:?}")),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("SSE: nothing within 30 s".into()),
    }
}

impl SseStream {
    /// The next block, scanned; Err says how the stream ended.
    pub async fn next(&mut self) -> Result<Block, Error> {
        loop {
            if let Some(i) = find_blank_line(&self.buf, self.searched) {
                let block = scan_block(&self.buf[..i]);
                self.buf.drain(..i + 2);
                self.searched = 0;
                return Ok(block);
            }
            // A blank line may straddle two reads: look again from its first byte.
            self.searched = self.buf.len().saturating_sub(1);
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(format!("SSE stream broke: {e}")),
                None => return Err("SSE stream ended".into()),
            }
        }
    }
}

/// Where the first `\n\n` at or after `from` starts.
fn find_blank_line(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| from + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_sse_blocks() {
        let ev = br#"id: 42
event: bench
data: {"event_type":"bench","sequence_number":42,"timestamp":"2026-01-01T00:00:00.000Z","player_id":"p","room_id":"r","data":{"t":123456789,"k":7},"id":null}"#;
        assert_eq!(
            scan_block(ev),
            Block::Event {
                seq: 42,
                t: Some(123456789)
            }
        );
        let entered = br#"id: 3
event: player_entered
data: {"event_type":"player_entered","sequence_number":3,"data":{"player_id":"x"}}"#;
        assert_eq!(scan_block(entered), Block::Event { seq: 3, t: None });
        assert_eq!(
            scan_block(b"event: resync_required\ndata: {\"oldest_available\":5}"),
            Block::Resync
        );
        assert_eq!(scan_block(b"retry: 1000"), Block::Other);
        assert_eq!(scan_block(b": keep-alive"), Block::Other);
    }

    #[test]
    fn finds_a_blank_line_across_reads() {
        assert_eq!(find_blank_line(b"retry: 1000\n\nid", 0), Some(11));
        assert_eq!(find_blank_line(b"abc\n", 0), None);
        assert_eq!(find_blank_line(b"abc\n\n", 3), Some(3));
        assert_eq!(find_blank_line(b"ab", 5), None);
    }
}
