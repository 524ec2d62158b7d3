//! The generator's side of the Socket.IO peer (`bench/socketio-peer/`): a
//! Socket.IO v5 client over a raw Engine.IO v4 WebSocket, and the peer's
//! publish request.
//!
//! The client opens `/socket.io/?EIO=4&transport=websocket`, reads the open
//! packet `0{...}`, sends `40{"room":"<room>"}` (the peer joins it to that
//! room), and reads `40{"sid":...}`. Afterwards the server pings (`2`), the
//! client answers `3` (see [`crate::feed`]), and events arrive as
//! `42["bench",{"t":T,"n":N,"k":K},"<offset>"]` (connection-state recovery
//! appends the offset). The generator numbers each room's events itself
//! (`n`, from 1), so a client checks loss and order by `n` the way it checks
//! our sequence numbers.
//!
//! Owns: the Engine.IO / Socket.IO wire details. Must not touch: the
//! measurement (the workloads record what [`scan_packet`] returns).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use mythos_broker::client::Player;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::net::{number_after, Error, Http, Ws};

/// What a text frame from the peer was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet {
    /// A benchmark event: the room's counter `n` and the send time `t`.
    Event { n: u64, t: Option<u64> },
    /// An Engine.IO ping (`2`): answer `3`.
    Ping,
    /// Anything else (another event, a pong, ...).
    Other,
}

/// Scans a text frame; a scan, not a JSON parse, as for our frames.
pub fn scan_packet(text: &str) -> Packet {
    if text == "2" {
        return Packet::Ping;
    }
    if !text.starts_with(r#"42["bench","#) {
        return Packet::Other;
    }
    match number_after(text, r#""n":"#) {
        Some(n) => Packet::Event {
            n,
            t: number_after(text, r#"{"t":"#),
        },
        None => Packet::Other,
    }
}

/// Connects to the peer at `addr` and joins `room` (the handshake's auth);
/// returns once the Socket.IO connection is confirmed (`40{"sid":..}`).
pub async fn connect(addr: SocketAddr, room: &str) -> Result<Ws, Error> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    // The same small read buffer as our WebSocket clients.
    let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
    let mut ws = Player::open_on(tcp, &url, Some(config))
        .await
        .map_err(|e| format!("Socket.IO WebSocket handshake: {e}"))?
        .ws;
    let open = next_text(&mut ws).await?;
    if !open.starts_with("0{") {
        return Err(format!("expected an Engine.IO open packet, got {open:?}"));
    }
    let auth = serde_json::json!({ "room": room });
    ws.send(Message::text(format!("40{auth}")))
        .await
        .map_err(|e| format!("Socket.IO connect: {e}"))?;
    loop {
        let text = next_text(&mut ws).await?;
        if text.starts_with("40") {
            return Ok(ws);
        }
        if text == "2" {
            ws.send(Message::text("3"))
                .await
                .map_err(|e| format!("Socket.IO pong: {e}"))?;
            continue;
        }
        return Err(format!("Socket.IO connect refused: {text:?}"));
    }
}

/// The next text frame within 30 s.
async fn next_text(ws: &mut Ws) -> Result<String, Error> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .map_err(|_| "Socket.IO: nothing within 30 s".to_string())?;
        match msg {
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(Message::Close(f))) => return Err(format!("Socket.IO closed: {f:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("Socket.IO socket error: {e}")),
            None => return Err("Socket.IO socket ended".into()),
        }
    }
}

/// `POST /publish` on the peer: event `k`, the `n`-th of `room`, sent at `t`
/// (ns since the run's base). Returns the deliveries the emit made (the
/// room's size on the peer).
pub async fn publish(http: &mut Http, room: &str, t: u64, n: u64, k: u64) -> Result<u64, Error> {
    let body = Bytes::from(format!(
        r#"{{"room":"{room}","data":{{"t":{t},"n":{n},"k":{k}}}}}"#
    ));
    let (status, answer) = http.request("POST", "/publish", body).await?;
    let text = String::from_utf8_lossy(&answer);
    if status != 200 {
        return Err(format!("peer publish answered {status}: {text}"));
    }
    number_after(&text, r#""members":"#)
        .ok_or_else(|| format!("peer publish answer without members: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_socketio_packets() {
        let ev = r#"42["bench",{"t":123456789,"n":42,"k":7},"1796597967504-0"]"#;
        assert_eq!(
            scan_packet(ev),
            Packet::Event {
                n: 42,
                t: Some(123456789)
            }
        );
        assert_eq!(scan_packet("2"), Packet::Ping);
        assert_eq!(scan_packet(r#"42["other",{"n":1}]"#), Packet::Other);
        assert_eq!(scan_packet(r#"40{"sid":"x"}"#), Packet::Other);
    }
}
