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

const WS: &str = "mythos_connections{transport=\"ws\"}";
const SSE: &str = "mythos_connections{transport=\"sse\"}";
const LAG_COUNT: &str = "mythos_live_delivery_lag_seconds_count";

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
    assert_eq!(mid.get(WS), Some(&1.0), "{mid:?}");
    assert_eq!(mid.get(SSE), Some(&1.0), "{mid:?}");
    assert_eq!(
        mid.get("mythos_subscribed_players"),
        Some(&1.0),
        "alice, on two connections: {mid:?}"
    );

    // Refused credentials: no token, a malformed one, a wrong password.
    let (s, _) = n.request(reqwest::Method::GET, "/v1/cursor", None).await;
    assert_eq!(s, 401);
    let (s, _) = n
        .request(reqwest::Method::GET, "/v1/cursor", Some("not-a-jwt"))
        .await;
    assert_eq!(s, 401);
    let (s, _) = n
        .post(
            "/v1/auth/login",
            None,
            Body::Json(json!({"username": "nobody", "password": "wrong"})),
        )
        .await;
    assert_eq!(s, 401);
    // A publish refused for its target.
    let (s, _) = n
        .post(
            "/v1/publish",
            Some(&service_token()),
            Body::Json(json!({"to": {"planet": "x"}, "event_type": "t", "data": 1})),
        )
        .await;
    assert_eq!(s, 400);

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
    // Both stale connections go live: one event reaches each, live.
    let lag_before = scrape(&n).await;
    assert_eq!(n.publish_n("r", 1).await, vec![4]);
    (published, deliveries) = (published + 1.0, deliveries + 1.0);
    assert_eq!(stale_ws.seqs(1).await, vec![4]);
    assert_eq!(stale_sse.seqs(1).await, vec![4]);
    let lag = eventually(PATIENCE, "both live frames to be measured", || {
        let n = &n;
        let lag_before = &lag_before;
        async move {
            let m = moved(lag_before, &scrape(n).await);
            let c = m.get(LAG_COUNT).copied().unwrap_or(0.0);
            (c >= 2.0).then_some(c)
        }
    })
    .await;
    assert_eq!(lag, 2.0, "one lag per live frame written");
    drop((stale_ws, stale_sse));

    // A WebSocket that stops reading is cut as a slow consumer, once.
    let (mut slow, _) = n.ws_player("slow", None).await;
    let big = "x".repeat(32 * 1024);
    let hub = n.app().hub().clone();
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
            let gauges = [
                WS,
                SSE,
                "mythos_subscribed_players",
                "mythos_live_queued_events",
                "mythos_presence_local_players",
            ];
            gauges.iter().all(|g| !m.contains_key(*g)).then_some(m)
        }
    })
    .await;
    // Histograms: their counts (buckets and sums follow from the same
    // observations). The slow consumer's live frames are as many as its
    // socket took, so the lag count is checked only from below here.
    let lag_total = settled.get(LAG_COUNT).copied().unwrap_or(0.0);
    assert!(lag_total >= 2.0, "{settled:?}");
    let settled: BTreeMap<String, f64> = settled
        .into_iter()
        .filter(|(k, _)| !k.contains("_bucket{") && !k.contains("_sum") && k != LAG_COUNT)
        .collect();
    assert_eq!(
        settled,
        expect(&[
            ("mythos_publish_duration_seconds_count", published),
            (
                "mythos_engine_append_duration_seconds_count{kind=\"event\"}",
                published,
            ),
            (
                "mythos_engine_append_duration_seconds_count{kind=\"command\"}",
                2.0,
            ),
            // alice's WebSocket and SSE, r's two, and the slow one.
            ("mythos_replay_duration_seconds_count", 5.0),
            ("mythos_auth_failures_total{reason=\"missing\"}", 1.0),
            ("mythos_auth_failures_total{reason=\"malformed\"}", 1.0),
            (
                "mythos_auth_failures_total{reason=\"invalid_credentials\"}",
                1.0,
            ),
            ("mythos_rejections_total{reason=\"unauthorized\"}", 2.0),
            (
                "mythos_rejections_total{reason=\"invalid_credentials\"}",
                1.0,
            ),
            ("mythos_rejections_total{reason=\"invalid_target\"}", 1.0),
            ("mythos_rejections_total{reason=\"rate_limited\"}", limited),
            (
                "mythos_rejections_total{reason=\"too_many_connections\"}",
                1.0,
            ),
            ("mythos_rate_limited_total{reason=\"message\"}", limited),
            ("mythos_published_total", published),
            ("mythos_deliveries_total", deliveries),
            ("mythos_commands_total", 2.0),
            ("mythos_connections_refused_total{reason=\"player\"}", 1.0),
            // r had acknowledged 1..3 before both resumed from 0.
            ("mythos_resyncs_total{reason=\"acknowledged\"}", 2.0),
            ("mythos_slow_consumers_total", 1.0),
            // alice, r and slow came online (once each, whatever their
            // connections); none went offline: the grace is 15 s.
            (
                "mythos_presence_facts_total{state=\"online\",reason=\"connect\"}",
                3.0,
            ),
        ]),
        "exactly what the session did, and nothing else"
    );
}
