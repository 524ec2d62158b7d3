//! `/metrics` values, not only names: one scripted session on one node
//! (memory engine), and every counter and gauge must have moved by exactly
//! what the session did — and nothing else moved. The metrics recorder is
//! global to the process, so this binary holds this one test only.

/// Only the support this test uses: the other support modules carry unit
/// tests of their own, and this binary must run one test.
#[allow(dead_code)]
mod support {
    pub mod broker;
    pub mod cluster;
    pub mod redis;
    pub use self::redis::{eventually, RedisServer};
}

use std::collections::BTreeMap;

use serde_json::json;
use support::broker::*;
use support::eventually;

/// `/metrics` as `name{labels}` → value.
async fn scrape(n: &Broker) -> BTreeMap<String, f64> {
    let text = n.metrics_text().await;
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("`name value`");
            (k.to_string(), v.parse().expect("a number"))
        })
        .collect()
}

/// What moved between two scrapes (a metric seen first counts from 0).
fn moved(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d != 0.0)
        .collect()
}

fn expect(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs
        .iter()
        .filter(|(_, d)| *d != 0.0)
        .map(|(k, d)| (k.to_string(), *d))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_what_happened() {
    let n = Node::start(Kind::Memory, |c| {
        c.send_queue = 8;
        c.max_player_connections = 2;
    })
    .await;
    let before = scrape(&n).await;

    // Publishes: 5 to alice, 1 to a two-player list.
    assert_eq!(n.publish_n("alice", 5).await, range(1, 5));
    let d = n
        .publish(json!({"players": ["bob", "carol"]}), "t", json!({}))
        .await;
    assert_eq!(d.len(), 2);
    let (mut published, mut deliveries) = (6.0, 7.0);

    // A WebSocket that reads, acks and sends a command and a chat line.
    let (mut ws, _) = n.ws_player("alice", None).await;
    assert_eq!(ws.seqs(5).await, range(1, 5));
    ws.send_json(json!({"type": "ack", "sequence_number": 5}))
        .await;
    ws.send_json(json!({"type": "command", "id": "c1", "command": "look", "args": []}))
        .await;
    ws.send_json(json!({"type": "chat", "id": "c2", "channel": "say", "message": "hi"}))
        .await;
    for id in ["c1", "c2"] {
        assert_eq!(
            ws.until_type("command_accepted").await.expect("ok")["id"],
            id
        );
    }
    let sse = n
        .sse("/v1/events", &player_token("alice"), None)
        .await
        .expect("sse");
    let mid = moved(&before, &scrape(&n).await);
    assert_eq!(mid.get("mythos_ws_connections"), Some(&1.0), "{mid:?}");
    assert_eq!(mid.get("mythos_sse_connections"), Some(&1.0), "{mid:?}");

    // A burst past the rate limit: every refusal is counted.
    for _ in 0..45 {
        ws.send_json(json!({"type": "ping"})).await;
    }
    let mut limited = 0.0;
    for _ in 0..45 {
        let v = ws.next_json().await.expect("a reply");
        match v["type"].as_str() {
            Some("pong") => {}
            Some("error") if v["code"] == "rate_limited" => limited += 1.0,
            _ => panic!("unexpected {v}"),
        }
    }
    assert!(limited >= 20.0, "the burst is 20: {limited} refused of 45");

    // A third connection for alice is refused (two per player).
    let (status, _) = n
        .sse("/v1/events", &player_token("alice"), None)
        .await
        .err()
        .expect("refused");
    assert_eq!(status, 429);

    // Two stale resumes (WebSocket and SSE) get `resync_required`.
    assert_eq!(n.publish_n("r", 3).await, range(1, 3));
    (published, deliveries) = (published + 3.0, deliveries + 3.0);
    let (s, _) = n
        .post(
            "/v1/ack",
            Some(&player_token("r")),
            Body::Json(json!({"sequence_number": 3})),
        )
        .await;
    assert_eq!(s, 200);
    let (mut stale_ws, _) = n.ws_player("r", Some(0)).await;
    assert_eq!(
        stale_ws.next_json().await.expect("marker")["type"],
        "resync_required"
    );
    let mut stale_sse = n
        .sse("/v1/events?last_event_id=0", &player_token("r"), None)
        .await
        .expect("sse");
    assert_eq!(
        stale_sse
            .next_event()
            .await
            .expect("marker")
            .event
            .as_deref(),
        Some("resync_required")
    );
    drop((stale_ws, stale_sse));

    // A WebSocket that stops reading is cut as a slow consumer, once.
    let (mut slow, _) = n.ws_player("slow", None).await;
    let big = "x".repeat(32 * 1024);
    let hub = n.app().hub.clone();
    let cut_before = hub.slow_consumers();
    let mut blobs = 0.0;
    while hub.slow_consumers() == cut_before {
        assert!(
            blobs < 5000.0,
            "a client that does not read must be cut off"
        );
        n.publish(json!({"player": "slow"}), "blob", json!({"pad": big}))
            .await;
        blobs += 1.0;
    }
    (published, deliveries) = (published + blobs, deliveries + blobs);
    assert_eq!(slow.end().await, WsEnd::Close(4008, "slow_consumer".into()));

    // Every connection closed: the gauges are back where they were.
    drop((ws, sse, slow));
    let settled = eventually(PATIENCE, "the connection gauges to settle", || {
        let n = &n;
        let before = &before;
        async move {
            let after = scrape(n).await;
            let m = moved(before, &after);
            (!m.contains_key("mythos_ws_connections") && !m.contains_key("mythos_sse_connections"))
                .then_some(m)
        }
    })
    .await;
    assert_eq!(
        settled,
        expect(&[
            ("mythos_published_total", published),
            ("mythos_deliveries_total", deliveries),
            ("mythos_commands_total", 2.0),
            ("mythos_ws_rate_limited_total", limited),
            ("mythos_connections_refused_total{reason=\"player\"}", 1.0),
            ("mythos_resyncs_total", 2.0),
            ("mythos_slow_consumers_total", 1.0),
        ]),
        "exactly what the session did, and nothing else"
    );
}
