//! Redis-only behaviour of the Redis engine: the documented key layout, the
//! live subscription surviving a Redis restart, durability with AOF, and
//! errors (not panics) while Redis is down.

mod support;

use std::sync::Arc;
use std::time::Duration;

use mythos_broker::engine::redis::{RedisEngine, RedisOptions};
use mythos_broker::engine::{Command, CommandStream, Engine, EventLog, Limits, Rooms};
use mythos_broker::hub::{Hub, Live};
use mythos_broker::protocol::{EventBody, Target};
use redis::AsyncCommands;
use serde_json::value::RawValue;
use support::{eventually, RedisServer};

const WAIT: Duration = Duration::from_secs(15);

fn body(data: &str, room: Option<&str>, id: Option<&str>) -> Arc<EventBody> {
    let data = RawValue::from_string(data.to_string()).expect("valid JSON");
    Arc::new(EventBody::now(
        "chat",
        data,
        room.map(Into::into),
        id.map(Into::into),
    ))
}

async fn engine(server: &RedisServer, hub: &Arc<Hub>) -> Arc<RedisEngine> {
    RedisEngine::connect(
        &RedisOptions::single(&server.url()).with_pool(4),
        Limits::default(),
        hub.clone(),
    )
    .await
    .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_layout_is_as_documented() {
    let server = RedisServer::start();
    let hub = Hub::new(64);
    let e = engine(&server, &hub).await;
    let alice = Target::Player("alice".into());
    e.publish(&alice, body("1", None, None), None)
        .await
        .unwrap();
    e.publish(
        &alice,
        body(r#"{"x":2}"#, Some("tavern"), Some("p2")),
        Some("p2"),
    )
    .await
    .unwrap();
    e.join("tavern", "alice").await.unwrap();
    e.ack("alice", 1).await.unwrap();
    let mut c = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();

    // XRANGE mythos:player:{alice}:events 2 2 shows event 2, fields in order.
    let v: Vec<(String, Vec<(String, String)>)> = c
        .xrange("mythos:player:{alice}:events", "2", "2")
        .await
        .unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].0, "2-0");
    let names: Vec<&str> = v[0].1.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["event_type", "timestamp", "data", "room_id", "id"]);
    assert_eq!(v[0].1[2].1, r#"{"x":2}"#);
    // Event 1 was acked and trimmed; event 1 had neither room_id nor id.
    let left: usize = c.xlen("mythos:player:{alice}:events").await.unwrap();
    assert_eq!(left, 1);
    let meta: (u64, u64) = redis::cmd("HMGET")
        .arg("mythos:player:{alice}:meta")
        .arg("seq")
        .arg("acked")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(meta, (2, 1));
    let seq: u64 = c.get("mythos:player:{alice}:dedupe:p2").await.unwrap();
    assert_eq!(seq, 2);
    let ttl: i64 = c.pttl("mythos:player:{alice}:dedupe:p2").await.unwrap();
    assert!(ttl > 0 && ttl <= 24 * 3600 * 1000);
    let members: Vec<String> = c.smembers("mythos:room:{tavern}:members").await.unwrap();
    assert_eq!(members, ["alice"]);
    let rooms: Vec<String> = c.smembers("mythos:player:{alice}:rooms").await.unwrap();
    assert_eq!(rooms, ["tavern"]);

    let cmd = Command {
        player_id: "alice".into(),
        session_id: "s".into(),
        kind: "chat".into(),
        id: "c1".into(),
        payload: "{}".into(),
    };
    let entry = e.push_command(&cmd).await.unwrap();
    let fields: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("mythos:commands")
        .arg(&entry)
        .arg(&entry)
        .query_async(&mut c)
        .await
        .unwrap();
    let expected: Vec<(String, String)> = [
        ("player_id", "alice"),
        ("session_id", "s"),
        ("type", "chat"),
        ("id", "c1"),
        ("payload", "{}"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(fields, vec![(entry.clone(), expected)]);
    e.read_commands("game", "w", 0, 10, Duration::ZERO)
        .await
        .unwrap();
    let pending: (u64, Option<String>, Option<String>, redis::Value) = redis::cmd("XPENDING")
        .arg("mythos:commands")
        .arg("game")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(pending.0, 1);
    e.ack_commands("game", 0, std::slice::from_ref(&entry))
        .await
        .unwrap();
    let pending: (u64, Option<String>, Option<String>, redis::Value) = redis::cmd("XPENDING")
        .arg("mythos:commands")
        .arg("game")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(pending.0, 0);

    let keys: Vec<String> = c.keys("*").await.unwrap();
    assert!(keys.iter().all(|k| k.starts_with("mythos:")), "{keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_subscription_survives_a_redis_restart() {
    let mut server = RedisServer::start();
    let hub = Hub::new(64);
    let e = engine(&server, &hub).await;
    let mut sub = hub.subscribe("alice");
    e.watch("alice").await.expect("watch");
    let alice = Target::Player("alice".into());
    e.publish(&alice, body("1", None, None), None)
        .await
        .unwrap();
    assert!(matches!(
        tokio::time::timeout(WAIT, sub.rx.recv()).await,
        Ok(Some(Live::Event(ev))) if ev.sequence_number == 1
    ));

    server.kill();
    assert!(e
        .publish(&alice, body("2", None, None), None)
        .await
        .is_err());
    server.restart();

    // The node resubscribes, then tells every session to re-read its log.
    match tokio::time::timeout(WAIT, sub.rx.recv()).await {
        Ok(Some(Live::Nudge)) => {}
        other => panic!("expected a nudge, got {other:?}"),
    }
    // The pool reconnects too (no persistence: the log starts again at 1).
    let seq = eventually(WAIT, "the pool to reconnect", || async {
        e.publish(&alice, body("3", None, None), None)
            .await
            .ok()
            .map(|d| d[0].sequence_number)
    })
    .await;
    match tokio::time::timeout(WAIT, sub.rx.recv()).await {
        Ok(Some(Live::Event(ev))) => assert_eq!(ev.sequence_number, seq),
        other => panic!("expected event {seq}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_survive_a_restart_with_aof() {
    let mut server = RedisServer::start_persistent();
    let hub = Hub::new(64);
    let e = engine(&server, &hub).await;
    let alice = Target::Player("alice".into());
    for i in 1..=5u64 {
        let d = e
            .publish(&alice, body(&i.to_string(), None, None), None)
            .await;
        assert_eq!(d.unwrap()[0].sequence_number, i);
    }
    e.ack("alice", 2).await.unwrap();
    server.restart();
    let c = eventually(WAIT, "the engine to reach the restarted redis", || async {
        e.cursor("alice").await.ok()
    })
    .await;
    assert_eq!((c.last, c.acked, c.oldest), (5, 2, 3));
    let evs = e.read("alice", 0, 10).await.unwrap();
    let got: Vec<(u64, &str)> = evs
        .iter()
        .map(|ev| (ev.sequence_number, ev.body.data.get()))
        .collect();
    assert_eq!(got, [(3, "3"), (4, "4"), (5, "5")]);
    let d = e
        .publish(&alice, body("6", None, None), None)
        .await
        .unwrap();
    assert_eq!(d[0].sequence_number, 6);
}

// The broker's detection of a silently dead subscription (the listener's
// pings) is tested through a stalled link in tests/dead_subscription.rs.

/// A blocking read whose caller stops waiting leaves no connection blocked on
/// the server: its connection is discarded, not returned to the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_blocking_read_does_not_go_back_to_the_pool() {
    let server = RedisServer::start();
    let e = engine(&server, &Hub::new(64)).await;
    let read = e.read_commands("game", "g1", 0, 10, Duration::from_secs(30));
    assert!(tokio::time::timeout(Duration::from_millis(300), read)
        .await
        .is_err());
    let c = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    eventually(
        Duration::from_secs(5),
        "the blocked client to go away",
        || {
            let mut c = c.clone();
            async move {
                let list: String = redis::cmd("CLIENT")
                    .arg("LIST")
                    .query_async(&mut c)
                    .await
                    .ok()?;
                (!list.contains("cmd=xreadgroup")).then_some(())
            }
        },
    )
    .await;
    // The pool still serves blocking reads.
    let empty = e.read_commands("game", "g1", 0, 10, Duration::from_millis(50));
    assert!(empty.await.unwrap().is_empty());
}
