//! The node's one subscription to `mythos:live`, feeding the node's [`LiveSink`].
//!
//! Owns: the pub/sub connection (one per node, not per player), decoding the
//! announcements that `lua/lib.lua` publishes, and recovering from a lost
//! subscription (reconnect with backoff, then [`LiveSink::nudge_all`], because
//! announcements sent while disconnected are gone). Must not touch: the
//! command pool or any key: this module only listens.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::value::RawValue;

use super::keys::LIVE_CHANNEL;
use crate::engine::LiveSink;
use crate::protocol::{Event, EventBody};

/// How often the subscription is pinged to detect a silently dead connection.
const PING_EVERY: Duration = Duration::from_secs(5);
/// How long a ping may take before the connection counts as lost.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Opens a pub/sub connection subscribed to `mythos:live`.
pub async fn subscribe(client: &redis::Client) -> redis::RedisResult<redis::aio::PubSub> {
    let mut ps = client.get_async_pubsub().await?;
    ps.subscribe(LIVE_CHANNEL).await?;
    Ok(ps)
}

/// Runs forever: routes announcements from `first` (already subscribed), and
/// after each loss resubscribes with backoff and nudges every session.
pub async fn listen(client: redis::Client, hub: Arc<dyn LiveSink>, first: redis::aio::PubSub) {
    let mut ps = first;
    loop {
        pump(ps, &*hub).await;
        tracing::warn!("live subscription to {LIVE_CHANNEL} lost; reconnecting");
        metrics::counter!("mythos_live_resubscribes_total").increment(1);
        let mut wait = BACKOFF_MIN;
        ps = loop {
            match subscribe(&client).await {
                Ok(ps) => break ps,
                Err(e) => {
                    tracing::warn!(error = %e, "live resubscribe failed; retrying in {wait:?}");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(BACKOFF_MAX);
                }
            }
        };
        tracing::info!("live subscription re-established");
        hub.nudge_all();
    }
}

/// Routes messages until the connection ends or stops answering pings.
async fn pump(ps: redis::aio::PubSub, hub: &dyn LiveSink) {
    let (mut sink, mut stream) = ps.split();
    let mut ticker = tokio::time::interval(PING_EVERY);
    ticker.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(m) => {
                    if let Err(e) = route(hub, m.get_payload_bytes()) {
                        tracing::error!("undecodable announcement on {LIVE_CHANNEL}: {e}");
                    }
                }
                None => return,
            },
            _ = ticker.tick() => {
                let ping = tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await;
                if !matches!(ping, Ok(Ok(_))) {
                    return;
                }
            }
        }
    }
}

/// Hands an announcement's event to the local connections of its players.
/// The body is decoded only if some player has a connection on this node.
pub fn route(hub: &dyn LiveSink, payload: &[u8]) -> Result<(), &'static str> {
    let mut rest = payload;
    let n: usize = number(frame(&mut rest)?)?;
    let mut targets = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let player = text(frame(&mut rest)?)?;
        let seq: u64 = number(frame(&mut rest)?)?;
        targets.push((player, seq));
    }
    if !targets.iter().any(|(p, _)| hub.wants(p)) {
        return Ok(());
    }
    let body = Arc::new(body(&mut rest)?);
    for (player, seq) in targets {
        let ev = Event {
            sequence_number: seq,
            body: body.clone(),
        };
        hub.deliver(player, &ev);
    }
    Ok(())
}

/// `frame(flags) frame(event_type) frame(timestamp) frame(room_id) frame(id) frame(data)`.
fn body(rest: &mut &[u8]) -> Result<EventBody, &'static str> {
    let flags = frame(rest)?;
    let event_type = text(frame(rest)?)?;
    let timestamp = text(frame(rest)?)?;
    let room_id = text(frame(rest)?)?;
    let id = text(frame(rest)?)?;
    let data = text(frame(rest)?)?;
    Ok(EventBody {
        event_type: event_type.to_string(),
        timestamp: timestamp.to_string(),
        room_id: flags.contains(&b'r').then(|| room_id.to_string()),
        data: RawValue::from_string(data.to_string()).map_err(|_| "data is not JSON")?,
        id: flags.contains(&b'i').then(|| id.to_string()),
    })
}

/// Takes one `<len>:<bytes>` frame off the front of `rest`.
fn frame<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], &'static str> {
    let colon = rest
        .iter()
        .position(|&b| b == b':')
        .ok_or("missing frame")?;
    let len: usize = number(&rest[..colon])?;
    let end = colon
        .checked_add(1 + len)
        .filter(|&e| e <= rest.len())
        .ok_or("short frame")?;
    let out = &rest[colon + 1..end];
    *rest = &rest[end..];
    Ok(out)
}

fn text(b: &[u8]) -> Result<&str, &'static str> {
    std::str::from_utf8(b).map_err(|_| "not UTF-8")
}

fn number<T: std::str::FromStr>(b: &[u8]) -> Result<T, &'static str> {
    text(b)?.parse().map_err(|_| "not a number")
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records what the engine hands over, for one followed player.
    struct Sink(Mutex<Vec<(String, Event)>>);

    impl LiveSink for Sink {
        fn wants(&self, player: &str) -> bool {
            player == "a"
        }
        fn deliver(&self, player: &str, event: &Event) {
            let mut got = self.0.lock().unwrap_or_else(|e| e.into_inner());
            got.push((player.to_string(), event.clone()));
        }
        fn nudge_all(&self) {}
    }

    #[test]
    fn routes_a_fan_out() {
        let sink = Sink(Mutex::new(Vec::new()));
        let payload = b"1:21:a1:71:b2:120:4:chat24:2026-11-23T10:30:00.123Z0:0:7:{\"x\":1}";
        route(&sink, payload).expect("decodes");
        let got = sink.0.into_inner().unwrap_or_default();
        let (player, ev) = &got[0];
        assert_eq!((player.as_str(), ev.sequence_number), ("a", 7));
        assert_eq!(ev.body.event_type, "chat");
        assert_eq!(ev.body.data.get(), r#"{"x":1}"#);
        assert_eq!(ev.body.room_id, None);
        assert_eq!(got[1].0, "b");
    }

    #[test]
    fn rejects_truncation() {
        let sink = Sink(Mutex::new(Vec::new()));
        assert!(route(&sink, b"1:11:a1:72:r").is_err());
        assert!(route(&sink, b"9").is_err());
    }
}
