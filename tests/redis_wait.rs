//! `MYTHOS_REDIS_WAIT_REPLICAS` (contract §10): an append is answered only
//! once that many replicas confirmed it; fewer in `MYTHOS_REDIS_WAIT_TIMEOUT`
//! → `503 not_replicated` (HTTP) / `error not_replicated` (WebSocket), and a
//! retry with the same `id` after the replica is back appends nothing twice.
//! Readers see only confirmed events: an event answered 503 is invisible
//! until a retry confirms it.
//! Real processes: a primary and a replica `redis-server`.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::broker::*;
use support::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_wait_for_replicas_and_a_retry_after_not_replicated_appends_once() {
    let primary = RedisServer::start();
    let mut replica = RedisServer::start_replica_of(&primary);
    let mut c = config();
    c.redis_url = Some(primary.url());
    c.redis_wait_replicas = 1;
    c.redis_wait_timeout = Duration::from_millis(500);
    let n = Node::single(Broker::start(c).await, None);
    let (mut ws, _) = n.ws_player("alice", None).await;
    // Commands go over another player's socket, so alice's reads only events.
    let (mut cmds, _) = n.ws_player("bob", None).await;
    let publish = |id: &'static str| {
        let n = &n;
        async move {
            let body = json!({"to": {"player": "alice"}, "event_type": "t", "data": id, "id": id});
            n.post("/v1/publish", Some(&service_token()), Body::Json(body))
                .await
        }
    };
    // With the replica up: 200, and the replica holds the event.
    let (s, b) = publish("p1").await;
    assert_eq!((s, deliveries(&b)), (200, vec![("alice".into(), 1)]), "{b}");
    let mut rc = replica
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("replica");
    let len: u64 = redis::cmd("XLEN")
        .arg("mythos:player:{alice}:events")
        .query_async(&mut rc)
        .await
        .expect("XLEN on the replica");
    assert_eq!(len, 1, "answered 200 only once the replica had it");
    assert_eq!(ws.seqs(1).await, vec![1]);
    cmds.send_json(json!({"type": "command", "id": "c1", "command": "look"}))
        .await;
    assert_eq!(
        cmds.until_type("command_accepted").await.expect("accepted")["id"],
        "c1"
    );

    // Replica gone: 503 not_replicated after about the timeout, on both paths.
    replica.kill();
    let t0 = Instant::now();
    let (s, b) = publish("p2").await;
    let took = t0.elapsed();
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (503, Some("not_replicated")),
        "{b}"
    );
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // The unconfirmed event is in the primary's log, but no reader sees it
    // (a failover could take it back): the cursor stops at 1, and neither
    // the open socket nor a new one gets it.
    //
    // The open socket: had event 2 been announced at its append (before
    // WAIT), it would have reached this socket a whole WAIT timeout before
    // the 503 came back; a ping sent now must be answered before anything
    // else, so the next frame is the pong, not event 2.
    ws.send_json(json!({"type": "ping"})).await;
    let next = ws.next_json().await.expect("a frame");
    assert_eq!(next["type"], "pong", "nothing before the pong: {next}");
    // A new socket replays from 0: event 1, and not event 2. A replay reads
    // the log in batches of up to 256, so an unconfirmed event 2 would come
    // in the same batch, in the same write, as event 1; the next frame
    // after event 1 must be the pong of a ping sent after it.
    let (mut fresh, welcome) = n.ws_player("alice", Some(0)).await;
    assert_eq!(welcome["last_sequence_number"], 1, "{welcome}");
    assert_eq!(fresh.seqs(1).await, vec![1]);
    fresh.send_json(json!({"type": "ping"})).await;
    let next = fresh.next_json().await.expect("a frame");
    assert_eq!(next["type"], "pong", "event 2 is not replayed: {next}");
    let (_, cur) = n
        .request(
            reqwest::Method::GET,
            "/v1/cursor",
            Some(&player_token("alice")),
        )
        .await;
    assert_eq!(cur["last_sequence_number"], 1, "{cur}");
    cmds.send_json(json!({"type": "command", "id": "c2", "command": "look"}))
        .await;
    let e = cmds.until_type("error").await.expect("an error frame");
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("not_replicated"), Some("c2")),
        "{e}"
    );

    // Replica back: the retry with the same id answers the first append's
    // sequence number and appends nothing; the next publish is 3.
    replica.restart();
    replica.wait_for_link();
    let (s, b) = publish("p2").await;
    assert_eq!((s, deliveries(&b)), (200, vec![("alice".into(), 2)]), "{b}");
    let (s, b) = publish("p3").await;
    assert_eq!((s, deliveries(&b)), (200, vec![("alice".into(), 3)]), "{b}");
    // The player got 1, 2, 3 exactly once each (1 above, 2 only once confirmed),
    // and nothing after: a fence is next. Both sockets, the one opened
    // during the outage included.
    assert_eq!(ws.seqs(2).await, vec![2, 3]);
    assert_eq!(fresh.seqs(2).await, vec![2, 3]);
    assert_eq!(publish("fence").await.0, 200);
    assert_eq!(ws.seqs(1).await, vec![4]);
    assert_eq!(fresh.seqs(1).await, vec![4]);
}

/// Without replicas configured, a WAIT setting is refused at start-up on the
/// embedded engine, and so are both Redis settings at once.
#[test]
fn wait_and_cluster_settings_are_checked() {
    let mut c = config();
    c.redis_wait_replicas = 1;
    let e = c.validate().expect_err("WAIT without Redis");
    assert!(e.contains("MYTHOS_REDIS_WAIT_REPLICAS"), "{e}");
    let mut c = config();
    c.redis_url = Some("redis://127.0.0.1:1/".into());
    c.redis_cluster = Some(mythos_broker::config::ClusterSeeds(vec![
        "redis://127.0.0.1:2".into(),
    ]));
    let e = c.validate().expect_err("both");
    assert!(
        e.contains("MYTHOS_REDIS_URL") && e.contains("MYTHOS_REDIS_CLUSTER"),
        "{e}"
    );
}
