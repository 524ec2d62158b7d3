//! The generator's clients: HS256 tokens, a keep-alive HTTP/1.1 client for
//! publishing and room changes, and WebSocket players with a cheap scan of
//! event frames. Tokens, requests and sockets are the broker library's
//! client ([`mythos_broker::client`]); this adds what the workloads share.
//!
//! Owns: the wire details the workloads share. Must not touch: measurement
//! policy (the workloads decide what to record).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use mythos_broker::auth::Role;
use mythos_broker::client::{self, Player};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A client WebSocket.
pub type Ws = client::Socket;

/// Any error of a benchmark client, as text.
pub type Error = String;

/// A token for `sub` with `role`, valid for six hours.
pub fn mint(secret: &str, sub: &str, role: Role) -> String {
    client::token(secret, sub, role, 6 * 3600)
        .expect("HS256 signing cannot fail with a byte secret")
}

/// A keep-alive HTTP/1.1 client of the broker (one request in flight at a
/// time, so one connection), authenticated as a service.
pub struct Http {
    client: client::Http,
}

impl Http {
    pub async fn connect(addr: SocketAddr, token: &str) -> Result<Self, Error> {
        Ok(Self {
            client: client::Http::new(&format!("http://{addr}")).with_token(token),
        })
    }

    /// Sends one request and reads the whole answer: status and body.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Bytes,
    ) -> Result<(u16, Bytes), Error> {
        let method = Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let (status, body) = self
            .client
            .exchange(method.clone(), path, body)
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        Ok((status.as_u16(), body))
    }

    /// `POST /v1/publish`; on 200 the answer's deliveries (`(player, seq)`).
    pub async fn publish(&mut self, body: Bytes) -> Result<Vec<(String, u64)>, Error> {
        let (status, answer) = self.request("POST", "/v1/publish", body).await?;
        if status != 200 {
            return Err(format!(
                "publish answered {status}: {}",
                String::from_utf8_lossy(&answer)
            ));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&answer).map_err(|e| format!("publish answer: {e}"))?;
        Ok(v["deliveries"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| {
                        Some((
                            d["player_id"].as_str()?.to_string(),
                            d["sequence_number"].as_u64()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// `PUT /v1/rooms/{room}/members/{player}`.
    pub async fn join(&mut self, room: &str, player: &str) -> Result<(), Error> {
        let path = format!("/v1/rooms/{room}/members/{player}");
        let (status, body) = self.request("PUT", &path, Bytes::new()).await?;
        if status != 200 {
            return Err(format!(
                "join answered {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        Ok(())
    }
}

/// The publish body of a benchmark event: `data` carries the send time (ns
/// since the run's base instant) and a counter.
pub fn event_body(to: &str, t_ns: u64, k: u64) -> Bytes {
    Bytes::from(format!(
        r#"{{"to":{to},"event_type":"bench","data":{{"t":{t_ns},"k":{k}}}}}"#
    ))
}

/// Opens a player's WebSocket (`?since=` when given) and reads the welcome;
/// returns the socket and the welcome's `last_sequence_number`.
pub async fn ws_connect(
    addr: SocketAddr,
    token: &str,
    since: Option<u64>,
) -> Result<(Ws, u64), Error> {
    let url = Player::url(&format!("http://{addr}"), token, since);
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    // A small read buffer: the default (128 KiB, zero-filled on the first
    // read) would cost 10,000 idle clients over a GiB.
    let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
    let mut player = Player::open_on(tcp, &url, Some(config))
        .await
        .map_err(|e| format!("WebSocket handshake: {e}"))?;
    let first = tokio::time::timeout(Duration::from_secs(30), player.next_json())
        .await
        .map_err(|_| "no welcome within 30 s".to_string())?;
    match first {
        Ok(v) if v["type"] == "welcome" => {
            let last = v["last_sequence_number"]
                .as_u64()
                .ok_or_else(|| format!("welcome without last_sequence_number: {v}"))?;
            Ok((player.ws, last))
        }
        Ok(v) => Err(format!("first frame is not a welcome: {v}")),
        Err(end) => Err(format!("expected a welcome, got {end:?}")),
    }
}

/// The number right after `key` in `text` (e.g. `"sequence_number":`).
pub fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let digits = text[start..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .fold((0u64, 0usize), |(n, len), d| {
            (n.wrapping_mul(10) + u64::from(d - b'0'), len + 1)
        });
    (digits.1 > 0).then_some(digits.0)
}

/// What the generator needs from a frame: an event's sequence number and, for
/// benchmark events, the send time carried in `data.t`. `None` for non-events.
/// A scan, not a JSON parse, so that the generator stays cheap.
pub fn scan_event(text: &str) -> Option<(u64, Option<u64>)> {
    if !text.starts_with(r#"{"type":"event""#) {
        return None;
    }
    let seq = number_after(text, r#""sequence_number":"#)?;
    Some((seq, number_after(text, r#""data":{"t":"#)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_an_event_frame() {
        let f = r#"{"type":"event","event_type":"bench","sequence_number":42,"timestamp":"2026-01-01T00:00:00.000Z","player_id":"p","room_id":null,"data":{"t":123456789,"k":7},"id":null}"#;
        assert_eq!(scan_event(f), Some((42, Some(123456789))));
        let other = r#"{"type":"event","event_type":"player_entered","sequence_number":3,"data":{"player_id":"x"}}"#;
        assert_eq!(scan_event(other), Some((3, None)));
        assert_eq!(scan_event(r#"{"type":"pong"}"#), None);
    }
}
