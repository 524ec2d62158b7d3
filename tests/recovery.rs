//! Recovery paths docs/delivery.md and docs/architecture.md promise: live
//! notifications are hints and a node whose Redis subscription drops nudges
//! its *open* connections back to the log; an overflow during replay is
//! "lagged", never a slow consumer; several nodes share one Redis; while
//! Redis is down an open WebSocket still answers pings; corrupt data in a
//! log closes it with `1011`. (Pacing
//! with bounded memory is in tests/pacing.rs, alone in its process.) Every check is by exact
//! sequence number, with a fence event (published last, required next) where
//! "nothing more" matters.

mod support;

use mythos_broker::engine::redis::keys;
use mythos_broker::hub::Live;
use serde_json::json;
use support::broker::*;
use support::{eventually, RedisServer};

on_both_engines!(overflow_during_replay_is_lagged_not_slow);

/// Catches: an overflow of a replaying connection's queue taken for a slow
/// consumer (cut with `4008`, counted), and events lost or repeated when the
/// lagged feed re-reads the log.
async fn overflow_during_replay_is_lagged_not_slow(kind: Kind) {
    const EVENTS: usize = 3000;
    const PAD: usize = 8 * 1024;
    // A queue of 4, and a replay (3000 events of 8 KiB = 24 MiB) far larger
    // than what a node can write toward a client that reads nothing (its
    // send buffer, the client's small receive buffer, a read batch of 256
    // events and a write batch of 64): while the client has read 10 events,
    // the broker cannot have finished replaying, so the 50 events published
    // then overflow the queue of a connection that is still replaying.
    let held = tcp_wmem_max() + 2 * SMALL_RECV_BUFFER + (256 + 64 + 10) * (PAD + 512);
    assert!(
        EVENTS * PAD > held,
        "the replay must outgrow the buffers ({held} bytes)"
    );
    let n = Node::start(kind, |c| c.send_queue = 4).await;
    append(&n, "alice", EVENTS, PAD).await;
    let (mut ws, _) = n.ws_player_small_buffer("alice", Some(0)).await;
    assert_eq!(ws.seqs(10).await, range(1, 10));
    // A witness of the overflow: a subscription of the same hub, with the
    // same queue of 4, that takes nothing from it, as a replaying connection
    // takes nothing from its own (its feed reads the log).
    let hub = n.app().hub().clone();
    let mut witness = hub.subscribe("alice");
    assert_eq!(hub.subscribers(), 2, "the connection and the witness");
    assert_eq!(n.publish_n("alice", 50).await, range(3001, 3050));
    // The queues overflowed: the hub marked the witness lagged (not slow),
    // and its queue holds exactly the first 4 of the 50.
    eventually(PATIENCE, "the witness's queue to overflow", || {
        let w = witness.state.clone();
        async move { w.take_lagged().then_some(()) }
    })
    .await;
    assert!(!witness.state.is_slow(), "lagged, not slow");
    let mut queued = Vec::new();
    for _ in 0..4 {
        match witness.rx.try_recv() {
            Ok(Live::Event(e)) => queued.push(e.sequence_number),
            other => panic!("the witness's queue: {other:?}"),
        }
    }
    assert_eq!(queued, range(3001, 3004), "a queue of 4 kept the first 4");
    drop(witness);
    assert_eq!(n.app().hub().slow_consumers(), 0);
    assert_eq!(ws.seqs(3040).await, range(11, 3050), "exactly 11..3050");
    fence(&n, &mut ws, "alice", 3051).await;
    assert_eq!(
        n.app().hub().slow_consumers(),
        0,
        "an overflow while replaying must not count as a slow consumer"
    );
}

/// A Redis node with its own connection URL (user `name` with every
/// permission), so the test can cut exactly this node's subscription.
async fn node_as(redis: &RedisServer, name: &str) -> Broker {
    let mut con = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let _: () = ::redis::cmd("ACL")
        .arg("SETUSER")
        .arg(name)
        .arg("on")
        .arg(">pw")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query_async(&mut con)
        .await
        .expect("ACL SETUSER");
    let mut c = config();
    c.redis_url = Some(format!("redis://{name}:pw@127.0.0.1:{}/", redis.port()));
    Broker::start(c).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nudge_reaches_an_open_connection_after_its_node_lost_the_subscription() {
    let redis = RedisServer::start();
    let a = node_as(&redis, "node_a").await;
    let b = node_as(&redis, "node_b").await;
    let (mut ws, _) = a.ws_player("alice", None).await;
    assert_eq!(b.publish_n("alice", 3).await, range(1, 3));
    assert_eq!(ws.seqs(3).await, range(1, 3));

    // Cut node A's subscription and keep it from coming back: Redis drops a
    // subscriber whose channel permission is revoked, and A's resubscribe
    // attempts fail until it is given back.
    let mut con = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let _: () = ::redis::cmd("ACL")
        .arg("SETUSER")
        .arg("node_a")
        .arg("resetchannels")
        .query_async(&mut con)
        .await
        .expect("ACL resetchannels");
    // Appended while A hears nothing: no notification for 4..8 reaches A.
    assert_eq!(b.publish_n("alice", 5).await, range(4, 8));
    let _: () = ::redis::cmd("ACL")
        .arg("SETUSER")
        .arg("node_a")
        .arg("allchannels")
        .query_async(&mut con)
        .await
        .expect("ACL allchannels");
    // A resubscribes, nudges, and the same socket reads its log: 4..8.
    assert_eq!(ws.seqs(5).await, range(4, 8), "the exact continuation");
    assert_eq!(b.publish_n("alice", 2).await, range(9, 10));
    assert_eq!(ws.seqs(2).await, range(9, 10), "and live again");
    fence(&b, &mut ws, "alice", 11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_connection_continues_exactly_after_redis_restarts() {
    let redis = RedisServer::start_persistent();
    let mut c = config();
    c.redis_url = Some(redis.url());
    let mut n = Node::single(Broker::start(c).await, Some(redis));
    let (mut ws, _) = n.ws_player("alice", None).await;
    assert_eq!(n.publish_n("alice", 5).await, range(1, 5));
    assert_eq!(ws.seqs(5).await, range(1, 5));
    n.redis.as_mut().expect("redis").kill();
    n.redis.as_mut().expect("redis").restart();
    // Publish as soon as the engine answers; the node's subscription may or
    // may not be back yet: either the notification or the nudge must bring
    // the events to the socket that stayed open.
    eventually(PATIENCE, "the node is ready again", || {
        let n = &n;
        async move { (n.request(reqwest::Method::GET, "/readyz", None).await.0 == 200).then_some(()) }
    })
    .await;
    assert_eq!(n.publish_n("alice", 5).await, range(6, 10));
    assert_eq!(ws.seqs(5).await, range(6, 10), "on the same socket");
    fence(&n, &mut ws, "alice", 11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_nodes_share_one_redis() {
    let redis = RedisServer::start();
    let node = || async {
        let mut c = config();
        c.redis_url = Some(redis.url());
        Broker::start(c).await
    };
    let a = node().await;
    let b = node().await;
    // Connected on A, published through B's HTTP API.
    let (mut ws, _) = a.ws_player("alice", None).await;
    let mut sse = a
        .sse("/v1/events", &player_token("alice"), None)
        .await
        .expect("sse on A");
    assert_eq!(b.publish_n("alice", 3).await, range(1, 3));
    assert_eq!(ws.seqs(3).await, range(1, 3));
    assert_eq!(sse.seqs(3).await, range(1, 3));
    // Published with XADD mythos:publish (either node's consumer may take it).
    let mut con = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    for k in 4..=6 {
        let _: String = ::redis::cmd("XADD")
            .arg("mythos:publish")
            .arg("*")
            .arg("to")
            .arg(r#"{"player":"alice"}"#)
            .arg("event_type")
            .arg("loot")
            .arg("data")
            .arg(json!({ "k": k }).to_string())
            .query_async(&mut con)
            .await
            .expect("XADD");
    }
    // The group spreads entries over both nodes, so their order across
    // nodes is not the stream's: each is appended once, at 4, 5 and 6.
    let mut ks = Vec::new();
    for seq in 4..=6u64 {
        let e = ws.next_event().await.expect("event");
        assert_eq!(e["sequence_number"].as_u64(), Some(seq));
        ks.push(e["data"]["k"].as_u64().expect("k"));
    }
    ks.sort_unstable();
    assert_eq!(ks, [4, 5, 6], "each entry appended exactly once");
    assert_eq!(sse.seqs(3).await, range(4, 6));
    drop(ws);
    drop(sse);
    // Reconnect to B from what was seen; more is published through A.
    assert_eq!(a.publish_n("alice", 2).await, range(7, 8));
    let (mut ws, welcome) = b.ws_player("alice", Some(6)).await;
    assert_eq!(welcome["last_sequence_number"].as_u64(), Some(8));
    assert_eq!(ws.seqs(2).await, range(7, 8));
    let mut sse = b
        .sse("/v1/events", &player_token("alice"), Some("4"))
        .await
        .expect("sse on B");
    assert_eq!(sse.seqs(4).await, range(5, 8));
    // An ack through B is the cursor A sees.
    ws.send_json(json!({"type": "ack", "sequence_number": 8}))
        .await;
    eventually(PATIENCE, "A sees B's ack", || {
        let a = &a;
        async move {
            let (_, c) = a
                .request(
                    reqwest::Method::GET,
                    "/v1/cursor",
                    Some(&player_token("alice")),
                )
                .await;
            (c["acked"].as_u64() == Some(8)).then_some(())
        }
    })
    .await;
    fence(&a, &mut ws, "alice", 9).await;
    let e = sse.next_event().await.expect("the fence on SSE");
    assert_eq!((e.seq(), e.event.as_deref()), (9, Some("fence")));
}

/// Waits until the node's `/readyz` answers `want`.
async fn readyz_becomes(n: &Broker, want: u16) {
    eventually(PATIENCE, "/readyz to follow Redis", || async move {
        (n.request(reqwest::Method::GET, "/readyz", None).await.0 == want).then_some(())
    })
    .await
}

/// docs/delivery.md step 6: while Redis is down an open WebSocket keeps
/// answering the client's pings and stays open; once Redis is back the same
/// socket gets the exact continuation. Catches: a ping answered only through
/// the engine (no pong while Redis is down), a connection closed by the
/// outage, a gap or a repeat after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_answers_pings_while_redis_is_down() {
    let redis = RedisServer::start_persistent();
    let mut c = config();
    c.redis_url = Some(redis.url());
    let mut n = Node::single(Broker::start(c).await, Some(redis));
    let (mut ws, _) = n.ws_player("alice", None).await;
    assert_eq!(n.publish_n("alice", 3).await, range(1, 3));
    assert_eq!(ws.seqs(3).await, range(1, 3));
    n.redis.as_mut().expect("redis").kill();
    readyz_becomes(&n, 503).await;
    // Over a second and a half of the outage: each ping's answer is the very
    // next frame (no event, no error, no close).
    for i in 0..6 {
        ws.send_json(json!({"type": "ping"})).await;
        assert_eq!(
            ws.next_json().await,
            Ok(json!({"type": "pong"})),
            "ping {i} while Redis is down"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(
        n.request(reqwest::Method::GET, "/readyz", None).await.0,
        503,
        "Redis was down all along"
    );
    n.redis.as_mut().expect("redis").restart();
    readyz_becomes(&n, 200).await;
    assert_eq!(n.publish_n("alice", 3).await, range(4, 6));
    assert_eq!(ws.seqs(3).await, range(4, 6), "on the same socket");
    fence(&n, &mut ws, "alice", 7).await;
}

/// docs/delivery.md step 6, contract §9: corrupt data in a player's log
/// (here an entry whose `data` is not JSON, written straight into the
/// stream) ends an open WebSocket with `1011 engine_unavailable`, and an SSE
/// stream, without delivering past it. Catches: corrupt data retried as if
/// Redis were away (the socket stays open and silent), or skipped (event 4
/// delivered over the hole at 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_log_entry_closes_an_open_websocket_with_1011() {
    let redis = RedisServer::start();
    let mut c = config();
    c.redis_url = Some(redis.url());
    let n = Node::single(Broker::start(c).await, Some(redis));
    let (mut ws, _) = n.ws_player("alice", None).await;
    let mut sse = n
        .sse("/v1/events", &player_token("alice"), None)
        .await
        .expect("sse");
    assert_eq!(n.publish_n("alice", 2).await, range(1, 2));
    assert_eq!(ws.seqs(2).await, range(1, 2));
    assert_eq!(sse.seqs(2).await, range(1, 2));
    let mut con = n
        .redis
        .as_ref()
        .expect("redis")
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    // Event 3, as no broker writes one: the sequence number taken, the
    // entry's data not JSON.
    let seq: u64 = ::redis::cmd("HINCRBY")
        .arg(keys::meta("alice"))
        .arg("seq")
        .arg(1)
        .query_async(&mut con)
        .await
        .expect("HINCRBY");
    assert_eq!(seq, 3);
    let _: String = ::redis::cmd("XADD")
        .arg(keys::events("alice"))
        .arg("3-0")
        .arg("event_type")
        .arg("tick")
        .arg("timestamp")
        .arg("2026-01-01T00:00:00.000Z")
        .arg("data")
        .arg("{not json")
        .query_async(&mut con)
        .await
        .expect("XADD");
    // Event 4 comes live with a gap (3 never did): both feeds go back to
    // the log, read 3, and stop.
    assert_eq!(n.publish_n("alice", 1).await, vec![4]);
    assert_eq!(
        ws.next_json().await,
        Err(WsEnd::Close(1011, "engine_unavailable".into())),
        "the next frame is the close, no event"
    );
    assert!(
        sse.next_event().await.is_none(),
        "the SSE stream ends, no event"
    );
}
