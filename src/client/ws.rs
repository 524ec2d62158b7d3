//! A player's WebSocket feed (`GET /v1/ws?token=..&since=..`): the welcome,
//! frames as JSON, client messages, and how the connection ended.
//!
//! Owns: connecting (the URL, or a socket the caller prepared) and reading
//! frames. Must not touch: what a caller expects of them (tests and the
//! testkit check sequence numbers; benchmarks scan the text themselves).

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::ClientError;

/// A client WebSocket.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a WebSocket ended.
#[derive(Debug, PartialEq, Eq)]
pub enum WsEnd {
    /// A close frame: its code and reason.
    Close(u16, String),
    /// The connection ended without one (or broke).
    Dropped,
    /// A text frame that is not JSON (the broker never sends one).
    NotJson(String),
}

/// A player's WebSocket.
pub struct Player {
    pub ws: Socket,
    /// The subprotocol the broker chose (`Sec-WebSocket-Protocol`), if any.
    pub protocol: Option<String>,
}

impl Player {
    /// `ws://host:port/v1/ws?token=..[&since=..]` for the broker at `base`
    /// (`http://host:port`).
    pub fn url(base: &str, token: &str, since: Option<u64>) -> String {
        let host = base.trim_start_matches("http://").trim_end_matches('/');
        match since {
            Some(s) => format!("ws://{host}/v1/ws?token={token}&since={s}"),
            None => format!("ws://{host}/v1/ws?token={token}"),
        }
    }

    /// Connects as the token's player, from `since` (else from the oldest
    /// unacknowledged event); the welcome is the first frame to read.
    pub async fn connect(base: &str, token: &str, since: Option<u64>) -> Result<Self, ClientError> {
        Self::open(Self::url(base, token, since))
            .await
            .map_err(|e| ClientError::WebSocket(e.to_string()))
    }

    /// Opens any WebSocket request (a URL, or a request with headers); the
    /// error says why (`tungstenite::Error::Http` carries a refusal's status).
    pub async fn open(request: impl IntoClientRequest + Unpin) -> Result<Self, WsError> {
        let (ws, response) = tokio_tungstenite::connect_async(request).await?;
        Ok(Self {
            ws,
            protocol: response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        })
    }

    /// Opens `url` over a socket the caller connected (a small receive
    /// buffer, `TCP_NODELAY`), with `config` (e.g. a smaller read buffer).
    pub async fn open_on(
        tcp: TcpStream,
        url: &str,
        config: Option<WebSocketConfig>,
    ) -> Result<Self, ClientError> {
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(url, MaybeTlsStream::Plain(tcp), config)
                .await
                .map_err(|e| ClientError::WebSocket(e.to_string()))?;
        Ok(Self { ws, protocol: None })
    }

    /// Sends a client message (`{"type": "ack", ...}`, `command`, `chat`, ...).
    pub async fn send_json(&mut self, message: &Value) -> Result<(), ClientError> {
        self.send(Message::text(message.to_string())).await
    }

    /// Sends any frame.
    pub async fn send(&mut self, message: Message) -> Result<(), ClientError> {
        self.ws
            .send(message)
            .await
            .map_err(|e| ClientError::WebSocket(e.to_string()))
    }

    /// The next text frame, untouched (pings and binary frames skipped); Err
    /// with how the connection ended.
    pub async fn next_text(&mut self) -> Result<Utf8Bytes, WsEnd> {
        loop {
            match self.ws.next().await {
                None | Some(Err(_)) => return Err(WsEnd::Dropped),
                Some(Ok(Message::Text(t))) => return Ok(t),
                Some(Ok(Message::Close(c))) => {
                    return Err(c.map_or(WsEnd::Dropped, |f| {
                        WsEnd::Close(f.code.into(), f.reason.to_string())
                    }))
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next text frame as JSON.
    pub async fn next_json(&mut self) -> Result<Value, WsEnd> {
        let t = self.next_text().await?;
        serde_json::from_str(&t).map_err(|_| WsEnd::NotJson(t.chars().take(200).collect()))
    }

    /// The next frame whose `type` is `kind` (others are skipped).
    pub async fn until_type(&mut self, kind: &str) -> Result<Value, WsEnd> {
        loop {
            let v = self.next_json().await?;
            if v["type"] == kind {
                return Ok(v);
            }
        }
    }

    /// The next event frame (`"type": "event"`).
    pub async fn next_event(&mut self) -> Result<Value, WsEnd> {
        self.until_type("event").await
    }
}
