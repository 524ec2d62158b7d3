//! Reading a Server-Sent Events stream (`GET /v1/events`): blocks up to a
//! blank line, and events of `id:`, `event:` and `data:` lines.
//!
//! Owns: splitting the byte stream. Must not touch: opening it (any HTTP
//! client's body stream will do) or what callers expect of the events.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::Value;

/// One event: its `id:` (the sequence number, absent on connection-local
/// events), `event:` and `data:` (JSON).
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Value,
}

impl SseEvent {
    /// `data.sequence_number`, if it has one.
    pub fn sequence_number(&self) -> Option<u64> {
        self.data["sequence_number"].as_u64()
    }
}

/// Why a stream could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum SseError {
    #[error("SSE: the stream broke instead of ending: {0}")]
    Broken(String),
    #[error("SSE: the stream ended inside an event: {0:?}")]
    EndedInsideEvent(String),
    #[error("SSE: data is not JSON: {0}")]
    NotJson(String),
}

/// The reader of one SSE response body.
pub struct SseReader<S> {
    stream: S,
    /// Text received and not yet returned.
    pub buf: String,
}

impl<S, E> SseReader<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            buf: String::new(),
        }
    }

    /// The next raw block (text up to a blank line), or `None` when the
    /// stream ends cleanly (the broker ended the response).
    pub async fn next_block(&mut self) -> Result<Option<String>, SseError> {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let block = self.buf[..i].to_string();
                self.buf.drain(..i + 2);
                return Ok(Some(block));
            }
            match self.stream.next().await {
                Some(Ok(b)) => self.buf.push_str(&String::from_utf8_lossy(&b)),
                Some(Err(e)) => return Err(SseError::Broken(e.to_string())),
                None if self.buf.trim().is_empty() => return Ok(None),
                None => return Err(SseError::EndedInsideEvent(self.buf.clone())),
            }
        }
    }

    /// The next event (skipping `retry:` and comments), or `None` at the
    /// end of the stream.
    pub async fn next_event(&mut self) -> Result<Option<SseEvent>, SseError> {
        loop {
            let Some(block) = self.next_block().await? else {
                return Ok(None);
            };
            let mut ev = SseEvent {
                id: None,
                event: None,
                data: Value::Null,
            };
            let mut has_data = false;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    ev.id = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    ev.event = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    ev.data = serde_json::from_str(v)
                        .map_err(|_| SseError::NotJson(v.chars().take(200).collect()))?;
                    has_data = true;
                }
            }
            if has_data {
                return Ok(Some(ev));
            }
        }
    }
}
