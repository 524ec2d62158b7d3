//! Presence over real connections: tabs, graces, `bye`, room events, the
//! HTTP reads and their bad input, on every topology (memory, Redis, two
//! nodes on Redis, two nodes on a cluster); and the faults presence must
//! survive, with real processes: `kill -9` of a node (offline within the
//! bound, no ghost left in Redis) and a Redis restart that forgot
//! everything (the nodes re-assert their connections within 5 s). Facts are
//! checked by their per-player sequence number; waits poll with deadlines.

mod support;

use std::time::{Duration, Instant};

use mythos_broker::client::WsEnd;
use serde_json::{json, Value};
use support::broker::*;
use support::eventually;
use support::process;

const WAIT: Duration = Duration::from_secs(10);

/// `GET path` as a service, 200 expected.
async fn get(b: &Broker, path: &str) -> Value {
    let (status, v) = b
        .request(reqwest::Method::GET, path, Some(&service_token()))
        .await;
    assert_eq!(status, 200, "{path}: {v}");
    v
}

/// The player's presence state as `b` reports it.
async fn state(b: &Broker, player: &str) -> String {
    get(b, &format!("/v1/presence/players/{player}")).await["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Polls until `player` is `want` (as `b` reports it); returns how long it took.
async fn until_state(b: &Broker, player: &str, want: &str, within: Duration) -> Duration {
    let t0 = Instant::now();
    eventually(within, &format!("{player} {want}"), || async {
        (state(b, player).await == want).then_some(())
    })
    .await;
    t0.elapsed()
}

/// `(seq, state, reason)` of every fact of `player`, oldest first.
async fn facts(b: &Broker, player: &str) -> Vec<(u64, String, String)> {
    let mut out = Vec::new();
    let mut after = "0-0".to_string();
    loop {
        let v = get(b, &format!("/v1/presence/facts/0?after={after}&limit=500")).await;
        for f in v["facts"].as_array().cloned().unwrap_or_default() {
            if f["player_id"] == player {
                out.push((
                    f["seq"].as_u64().unwrap_or(0),
                    f["state"].as_str().unwrap_or("").to_string(),
                    f["reason"].as_str().unwrap_or("").to_string(),
                ));
            }
        }
        match v["next_after"].as_str() {
            Some(n) => after = n.to_string(),
            None => return out,
        }
    }
}

fn fact(seq: u64, state: &str, reason: &str) -> (u64, String, String) {
    (seq, state.to_string(), reason.to_string())
}

on_every_topology!(
    three_tabs_are_one_join_and_one_leave,
    a_reconnect_inside_the_grace_emits_nothing_and_bye_is_at_once,
    room_members_get_presence_events_only_when_the_room_asks,
    presence_reads_refuse_bad_input_and_page,
    logout_over_http_is_offline_at_once,
);

async fn logout_over_http_is_offline_at_once(kind: Kind) {
    let node = Node::start(kind, |_| {}).await;
    let reader = node.publisher();
    let (_ws, _) = node.next_node().ws_player("gus", None).await;
    until_state(reader, "gus", "online", WAIT).await;
    let (s, v) = node
        .next_node()
        .post(
            "/v1/auth/logout",
            Some(&player_token("gus")),
            Body::Raw(String::new()),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // The default grace is 15 s: offline well before it, reason logout.
    let took = until_state(reader, "gus", "offline", WAIT).await;
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(
        facts(reader, "gus").await,
        vec![fact(1, "online", "connect"), fact(2, "offline", "logout")]
    );
}

async fn three_tabs_are_one_join_and_one_leave(kind: Kind) {
    let node = Node::start(kind, |c| c.presence_grace = Duration::from_millis(500)).await;
    let reader = node.publisher();
    let mut tabs = Vec::new();
    for _ in 0..3 {
        tabs.push(node.next_node().ws_player("alice", None).await.0);
    }
    until_state(reader, "alice", "online", WAIT).await;
    let nodes = if node.other.is_some() { 2 } else { 1 };
    let r = get(reader, "/v1/presence/players/alice").await;
    assert_eq!(r["nodes"].as_array().map(Vec::len), Some(nodes), "{r}");
    // Two tabs close: still online, nothing said. With two nodes, the node
    // that held one of them lets go (seen in `nodes`) while the other holds
    // on; then a wait longer than the grace: nothing may follow.
    drop(tabs.pop());
    drop(tabs.pop());
    eventually(WAIT, "one node left holding alice", || async {
        let r = get(reader, "/v1/presence/players/alice").await;
        (r["nodes"].as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await; // longer than the grace
    assert_eq!(state(reader, "alice").await, "online");
    assert_eq!(
        facts(reader, "alice").await,
        vec![fact(1, "online", "connect")]
    );
    // The last one: linkdead, then one leave.
    drop(tabs.pop());
    until_state(reader, "alice", "offline", WAIT).await;
    assert_eq!(
        facts(reader, "alice").await,
        vec![fact(1, "online", "connect"), fact(2, "offline", "timeout")]
    );
    let m = reader.metrics_text().await;
    assert!(
        m.contains("mythos_presence_facts_total"),
        "the facts are counted"
    );
}

async fn a_reconnect_inside_the_grace_emits_nothing_and_bye_is_at_once(kind: Kind) {
    let node = Node::start(kind, |c| c.presence_grace = Duration::from_secs(30)).await;
    let reader = node.publisher();
    let (ws, _) = node.next_node().ws_player("bob", None).await;
    until_state(reader, "bob", "online", WAIT).await;
    drop(ws);
    until_state(reader, "bob", "linkdead", WAIT).await;
    let r = get(reader, "/v1/presence/players/bob").await;
    assert!(r["until_ms"].as_u64() > r["since_ms"].as_u64(), "{r}");
    // Back (on the other node, with two) inside the grace: online, silently.
    let (mut ws, _) = node.next_node().ws_player("bob", None).await;
    until_state(reader, "bob", "online", WAIT).await;
    assert_eq!(
        facts(reader, "bob").await,
        vec![fact(1, "online", "connect")]
    );
    // A clean logout: the connection closes 1000 "bye", offline at once.
    ws.send_json(json!({"type": "bye"})).await;
    match ws.end().await {
        WsEnd::Close(code, reason) => assert_eq!((code, reason.as_str()), (1000, "bye")),
        other => panic!("closed with {other:?}"),
    }
    let took = until_state(reader, "bob", "offline", WAIT).await;
    assert!(
        took < Duration::from_secs(5),
        "offline at once, not after the grace: {took:?}"
    );
    assert_eq!(
        facts(reader, "bob").await,
        vec![fact(1, "online", "connect"), fact(2, "offline", "logout")]
    );
}

async fn room_members_get_presence_events_only_when_the_room_asks(kind: Kind) {
    let node = Node::start(kind, |c| c.presence_grace = Duration::from_millis(300)).await;
    let b = node.publisher();
    let svc = service_token();
    let member = |p: &'static str, join: bool| {
        let method = if join {
            reqwest::Method::PUT
        } else {
            reqwest::Method::DELETE
        };
        let svc = svc.clone();
        async move {
            let (s, v) = b
                .request(method, &format!("/v1/rooms/hall/members/{p}"), Some(&svc))
                .await;
            assert_eq!(s, 200, "{v}");
        }
    };
    member("carol", true).await;
    member("dan", true).await;
    // Not asked: eve, a member, comes and goes; then she leaves the room
    // before the room asks (so even a late check finds nothing to send).
    member("eve", true).await;
    let (eve, _) = node.next_node().ws_player("eve", None).await;
    until_state(b, "eve", "online", WAIT).await;
    drop(eve);
    until_state(b, "eve", "offline", WAIT).await;
    member("eve", false).await;
    // Asked: dan's join and leave reach carol, in order, once each.
    let put = Broker::http()
        .put(format!("{}/v1/rooms/hall/presence_events", b.base))
        .bearer_auth(&svc)
        .json(&json!({"events": true}))
        .send()
        .await
        .expect("put");
    assert_eq!(put.status().as_u16(), 200);
    assert_eq!(
        get(b, "/v1/rooms/hall/presence_events").await["events"],
        true
    );
    let (dan, _) = node.next_node().ws_player("dan", None).await;
    until_state(b, "dan", "online", WAIT).await;
    drop(dan);
    until_state(b, "dan", "offline", WAIT).await;
    // carol's whole log, by sequence number: the membership events, then
    // dan's two presence events; a fence published after must come next.
    let (mut carol, _) = node.next_node().ws_player("carol", Some(0)).await;
    let mut got = Vec::new();
    while got.len() < 5 {
        let e = carol.next_event().await.expect("an event");
        assert_eq!(
            e["sequence_number"].as_u64(),
            Some(got.len() as u64 + 1),
            "{e}"
        );
        assert_eq!(e["room_id"], "hall", "{e}");
        got.push((
            e["event_type"].as_str().unwrap_or("").to_string(),
            e["data"]["player_id"].as_str().unwrap_or("").to_string(),
            e["data"]["presence"].as_str().unwrap_or("-").to_string(),
            e["data"]["reason"].as_str().unwrap_or("-").to_string(),
        ));
    }
    let ev = |t: &str, p: &str, s: &str, r: &str| (t.into(), p.into(), s.into(), r.into());
    assert_eq!(
        got,
        vec![
            ev("player_entered", "dan", "-", "-"),
            ev("player_entered", "eve", "-", "-"),
            ev("player_left", "eve", "-", "-"),
            ev("player_entered", "dan", "online", "connect"),
            ev("player_left", "dan", "offline", "timeout"),
        ]
    );
    let fence = b
        .publish(json!({"player": "carol"}), "fence", json!({}))
        .await[0]
        .1;
    assert_eq!(fence, 6);
    let e = carol.next_event().await.expect("the fence");
    assert_eq!(
        e["sequence_number"].as_u64(),
        Some(6),
        "nothing else came: {e}"
    );
}

async fn presence_reads_refuse_bad_input_and_page(kind: Kind) {
    let node = Node::start(kind, |_| {}).await;
    let b = node.publisher();
    let svc = service_token();
    let get_as = |path: &'static str, token: Option<String>| async move {
        b.request(reqwest::Method::GET, path, token.as_deref())
            .await
    };
    // Unauthorised, wrong role, bad ids and parameters.
    assert_eq!(get_as("/v1/presence/players/alice", None).await.0, 401);
    let (s, v) = get_as("/v1/presence/players/alice", Some(player_token("alice"))).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    assert_eq!(
        get_as("/v1/presence/players/a%20b", Some(svc.clone()))
            .await
            .0,
        400
    );
    assert_eq!(
        get_as("/v1/presence/hall?limit=0", Some(svc.clone()))
            .await
            .0,
        400
    );
    assert_eq!(
        get_as("/v1/presence/hall?limit=501", Some(svc.clone()))
            .await
            .0,
        400
    );
    assert_eq!(
        get_as("/v1/presence/hall?x=1", Some(svc.clone())).await.0,
        400
    );
    assert_eq!(
        get_as("/v1/presence/hall?after=a%20b", Some(svc.clone()))
            .await
            .0,
        400
    );
    assert_eq!(
        get_as("/v1/presence/facts/x", Some(svc.clone())).await.0,
        400
    );
    assert_eq!(
        get_as("/v1/presence/facts/9", Some(svc.clone())).await.0,
        400
    );
    assert_eq!(
        get_as("/v1/presence/facts/0?after=nonsense", Some(svc.clone()))
            .await
            .0,
        400
    );
    assert_eq!(get_as("/v1/admin/presence", Some(svc.clone())).await.0, 403);
    let put = |body: &'static str| {
        Broker::http()
            .put(format!("{}/v1/rooms/hall/presence_events", b.base))
            .bearer_auth(&svc)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_eq!(put("{").await.expect("put").status().as_u16(), 400);
    assert_eq!(
        put(r#"{"events":"yes"}"#)
            .await
            .expect("put")
            .status()
            .as_u16(),
        400
    );
    assert_eq!(
        put(r#"{"events":true,"x":1}"#)
            .await
            .expect("put")
            .status()
            .as_u16(),
        400
    );
    // A room of three, two per page.
    for p in ["p1", "p2", "p3"] {
        let (s, _) = b
            .request(
                reqwest::Method::PUT,
                &format!("/v1/rooms/hall/members/{p}"),
                Some(&svc),
            )
            .await;
        assert_eq!(s, 200);
    }
    let (_ws, _) = node.next_node().ws_player("p2", None).await;
    until_state(b, "p2", "online", WAIT).await;
    let page = get(b, "/v1/presence/hall?limit=2").await;
    let ids: Vec<&str> = page["players"]
        .as_array()
        .expect("players")
        .iter()
        .filter_map(|p| p["player_id"].as_str())
        .collect();
    assert_eq!(ids, vec!["p1", "p2"]);
    assert_eq!(
        (page["online"].as_u64(), page["offline"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        (page["members"].as_u64(), page["next_after"].as_str()),
        (Some(3), Some("p2"))
    );
    let rest = get(b, "/v1/presence/hall?limit=2&after=p2").await;
    assert_eq!(rest["players"][0]["player_id"], "p3");
    assert_eq!(rest["next_after"], Value::Null);
    let (s, leases) = b
        .request(
            reqwest::Method::GET,
            "/v1/admin/presence",
            Some(&admin_token()),
        )
        .await;
    assert_eq!(s, 200, "{leases}");
    assert!(
        leases["leases"].as_array().is_some_and(|l| !l.is_empty()),
        "{leases}"
    );
}

/// The store forgets a live node's lease (an operator's `ZREM`, a failover
/// that lost it): the node's next renewal finds it gone, takes a new lease
/// name and re-asserts its player under it, dropping the old name — the
/// player stays online with one node, and leaves cleanly later (no ghost of
/// the old name keeps them online).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_is_reasserted_under_a_new_name_without_a_ghost() {
    let redis = support::RedisServer::start();
    let mut c = config();
    c.redis_url = Some(redis.url());
    c.presence_grace = Duration::from_millis(300);
    let node = Broker::start(c).await;
    let (ws, _) = node.ws_player("ida", None).await;
    until_state(&node, "ida", "online", WAIT).await;
    let admin = |b: &Broker| {
        let base = b.base.clone();
        async move {
            let v: Value = Broker::http()
                .get(format!("{base}/v1/admin/presence"))
                .bearer_auth(admin_token())
                .send()
                .await
                .expect("admin presence")
                .json()
                .await
                .expect("json");
            v["node"].as_str().unwrap_or("").to_string()
        }
    };
    let first = admin(&node).await;
    assert!(first.ends_with(".0"), "{first}");
    let mut conn = redis.client().get_connection().expect("redis");
    let removed: u64 = ::redis::cmd("ZREM")
        .arg("mythos:presence:leases")
        .arg(&first)
        .query(&mut conn)
        .expect("zrem");
    assert_eq!(removed, 1);
    let second = eventually(WAIT, "a new lease name", || async {
        let n = admin(&node).await;
        (n != first).then_some(n)
    })
    .await;
    assert!(second.ends_with(".1"), "{second}");
    eventually(WAIT, "ida held under the new name only", || async {
        let r = get(&node, "/v1/presence/players/ida").await;
        (r["nodes"] == json!([second.clone()]) && r["state"] == "online").then_some(())
    })
    .await;
    drop(ws);
    until_state(&node, "ida", "offline", WAIT).await;
    assert_eq!(
        facts(&node, "ida").await,
        vec![fact(1, "online", "connect"), fact(2, "offline", "timeout")]
    );
}

/// `kill -9` of the node holding a player's only connection: the other node
/// reaps it — `linkdead` within 12 s, `offline` (reason `node_lost`) within
/// the grace + 15 s — and nothing of the dead node is left in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_node_leaves_no_ghost() {
    let redis = support::RedisServer::start();
    let store = ("MYTHOS_REDIS_URL", redis.url());
    let env = [("MYTHOS_PRESENCE_GRACE", "3s")];
    let mut victim = process::Node::start("victim", store.clone(), &env).await;
    let survivor = process::Node::start("survivor", store, &env).await;
    let reader = Broker {
        base: survivor.base(),
        ws_base: survivor.base().replace("http://", "ws://"),
        running: None,
    };
    let on_victim = Broker {
        base: victim.base(),
        ws_base: victim.base().replace("http://", "ws://"),
        running: None,
    };
    let (_ws, _) = on_victim.ws_player("ghost", None).await;
    until_state(&reader, "ghost", "online", WAIT).await;
    let t0 = Instant::now();
    victim.kill9();
    until_state(&reader, "ghost", "linkdead", Duration::from_secs(12)).await;
    let linkdead = t0.elapsed();
    until_state(&reader, "ghost", "offline", Duration::from_secs(3 + 15)).await;
    let offline = t0.elapsed();
    assert_eq!(
        facts(&reader, "ghost").await,
        vec![
            fact(1, "online", "connect"),
            fact(2, "offline", "node_lost")
        ]
    );
    // No ghost: the dead node's lease and player list are gone, no
    // deadline is left, the player has no node.
    let mut c = redis.client().get_connection().expect("redis");
    let leases: Vec<String> = ::redis::cmd("ZRANGE")
        .arg("mythos:presence:leases")
        .arg(0)
        .arg(-1)
        .query(&mut c)
        .expect("leases");
    assert!(
        leases.iter().all(|l| !l.starts_with("victim.")),
        "{leases:?}"
    );
    assert_eq!(leases.len(), 1, "only the survivor: {leases:?}");
    let due: u64 = ::redis::cmd("ZCARD")
        .arg("mythos:presence:linkdead")
        .query(&mut c)
        .expect("zcard");
    let nodes: u64 = ::redis::cmd("SCARD")
        .arg("mythos:player:{ghost}:presence:nodes")
        .query(&mut c)
        .expect("scard");
    let held: Vec<String> = ::redis::cmd("KEYS")
        .arg("mythos:presence:node:*")
        .query(&mut c)
        .expect("keys");
    assert_eq!((due, nodes), (0, 0));
    assert!(held.iter().all(|k| !k.contains("victim.")), "{held:?}");
    eprintln!(
        "PRESENCE kill -9: linkdead after {linkdead:?}, offline after {offline:?} (grace 3 s)"
    );
}

/// Redis restarts empty (no AOF: every presence record, lease and fact is
/// gone): the node finds its lease missing and re-asserts its connections
/// within 5 s; the player is online again without reconnecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_is_reasserted_within_5_s() {
    let mut redis = support::RedisServer::start();
    let mut c = config();
    c.redis_url = Some(redis.url());
    let node = Broker::start(c).await;
    let (_ws, _) = node.ws_player("fay", None).await;
    until_state(&node, "fay", "online", WAIT).await;
    redis.restart();
    let back = Instant::now();
    // The node's engine reconnects; from then on it must re-assert in time.
    let took = eventually(WAIT, "fay online after the restart", || async {
        let (s, v) = node
            .request(
                reqwest::Method::GET,
                "/v1/presence/players/fay",
                Some(&service_token()),
            )
            .await;
        (s == 200 && v["state"] == "online").then(|| back.elapsed())
    })
    .await;
    assert!(took <= Duration::from_secs(5), "re-asserted after {took:?}");
    assert_eq!(
        facts(&node, "fay").await,
        vec![fact(1, "online", "connect")]
    );
}
