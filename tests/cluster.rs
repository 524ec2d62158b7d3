//! The Redis Cluster engine (`MYTHOS_REDIS_CLUSTER`) on a real 3-master,
//! 3-replica cluster started by the test (tests/support/cluster.rs).

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use mythos_broker::config::ClusterSeeds;
use reqwest::Method;
use serde_json::{json, Value};
use support::broker::{self, deliveries, player_token, service_token, Body, Broker};
use support::cluster::RedisCluster;
use support::eventually;

/// The harness itself: six nodes, every slot served, and the faults it injects work.
#[test]
fn harness_starts_fails_over_and_moves_slots() {
    let mut c = RedisCluster::start();
    assert_eq!(c.masters().len(), 3);
    let slot = c.slot("mythos:player:{alice}:events");
    let first = c.master_of(slot);
    let other = c
        .masters()
        .into_iter()
        .find(|m| *m != first)
        .expect("another master");
    c.move_slot(slot, other);
    assert_eq!(c.master_of(slot), other);
    let killed = c.kill_master_of(slot);
    assert_eq!(killed, other);
    assert_ne!(c.master_of(slot), other);
    assert_eq!(c.masters().len(), 3, "the replica was promoted");
}

/// Publishes `body` until it is answered 200 (20 s at most); the answer.
async fn retry(node: &Broker, body: Value) -> Value {
    let svc = service_token();
    eventually(Duration::from_secs(20), "the retry to succeed", || {
        let (svc, body) = (&svc, body.clone());
        async move {
            let (s, a) = node.post("/v1/publish", Some(svc), Body::Json(body)).await;
            (s == 200).then_some(a)
        }
    })
    .await
}

/// `n` players `{prefix}0..` joined to `room`, spanning all three masters,
/// and where each one's log stands before the test's room events.
async fn room_on_every_master(
    cluster: &RedisCluster,
    node: &Broker,
    room: &str,
    prefix: &str,
    n: usize,
) -> (Vec<String>, HashMap<String, u64>) {
    let svc = service_token();
    let players: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let masters: HashSet<usize> = players
        .iter()
        .map(|p| cluster.master_of(cluster.slot(&format!("{{{p}}}"))))
        .collect();
    assert_eq!(masters.len(), 3, "the members span every master");
    for p in &players {
        // With WAIT, a join a replica did not confirm in time answers 503
        // (retry-safe: joining twice is joining once), as a publish does.
        let path = format!("/v1/rooms/{room}/members/{p}");
        let svc = &svc;
        eventually(Duration::from_secs(10), &format!("join {p}"), || {
            let path = path.clone();
            async move {
                let (status, _) = node.request(Method::PUT, &path, Some(svc)).await;
                (status == 200).then_some(())
            }
        })
        .await;
    }
    // Read after every join: a join may announce itself to the members.
    let mut before = HashMap::new();
    for p in &players {
        let (status, c) = node
            .request(Method::GET, "/v1/cursor", Some(&player_token(p)))
            .await;
        assert_eq!(status, 200);
        before.insert(p.clone(), c["last_sequence_number"].as_u64().expect("last"));
    }
    (players, before)
}

/// Publishes a fence to each player, then replays each log from `before`:
/// it must hold exactly the events with `ids`, at the next sequence numbers
/// in that order, and then the fence (nothing missing, repeated or extra).
async fn logs_end_with_a_fence(
    node: &Broker,
    players: &[String],
    before: &HashMap<String, u64>,
    ids: &[&str],
) {
    let svc = service_token();
    for p in players {
        let fence = json!({"to": {"player": p}, "event_type": "fence", "data": {}});
        let (status, _) = node
            .post("/v1/publish", Some(&svc), Body::Json(fence))
            .await;
        assert_eq!(status, 200);
        let b = before[p];
        let (mut ws, _) = node.ws_player(p, Some(b)).await;
        let mut got = Vec::new();
        for _ in 0..=ids.len() {
            let e = ws.next_event().await.expect("an event");
            got.push((
                e["sequence_number"].as_u64().unwrap_or(0),
                e["id"].as_str().unwrap_or("fence").to_string(),
            ));
        }
        let want: Vec<(u64, String)> = ids
            .iter()
            .chain(std::iter::once(&"fence"))
            .enumerate()
            .map(|(k, id)| (b + 1 + k as u64, id.to_string()))
            .collect();
        assert_eq!(got, want, "{p}");
    }
}

/// Issue 10: a room of 50 whose members live on all three masters. One
/// publish reaches each member once (one script call per slot, run
/// concurrently). Then a master is killed just before the next publish:
/// whatever that publish answers (the cluster client rides out the failover
/// and usually answers 200), its retry with the same `id` after the failover
/// answers 200 with every member once. Then a whole shard (master and
/// replica) is down during a publish: 503, the members elsewhere already
/// hold the event, and the retry once the shard is back fills in the rest.
/// Each member's log holds each room event exactly once, in order, with no
/// gap (checked by sequence number through a WebSocket replay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_spanning_every_master_gets_each_event_once_even_across_a_failover() {
    let mut cluster = RedisCluster::start_persistent();
    let mut config = broker::config();
    config.redis_cluster = Some(ClusterSeeds(
        cluster.seeds().split(',').map(String::from).collect(),
    ));
    let node = Broker::start(config).await;
    let svc = service_token();
    let (players, before) = room_on_every_master(&cluster, &node, "hall", "member", 50).await;
    let expect_once = |answer: &Value, n: u64| {
        let mut got = deliveries(answer);
        got.sort();
        let mut want: Vec<(String, u64)> =
            players.iter().map(|p| (p.clone(), before[p] + n)).collect();
        want.sort();
        assert_eq!(got, want, "every member once, at the next sequence number");
    };

    // One publish, 50 deliveries.
    let room = |id: &str| json!({"to": {"room": "hall"}, "event_type": "chat_message", "data": {"n": id}, "id": id});
    let (status, answer) = node
        .post("/v1/publish", Some(&svc), Body::Json(room("r1")))
        .await;
    assert_eq!(status, 200, "{answer}");
    expect_once(&answer, 1);

    // A master dies right before the next publish.
    let slot = cluster.slot(&format!("{{{}}}", players[0]));
    let victim = cluster.kill_master(slot);
    let (first, answer) = node
        .post("/v1/publish", Some(&svc), Body::Json(room("r2")))
        .await;
    eprintln!("publish during the failover: {first} {answer}");
    if first == 200 {
        expect_once(&answer, 2);
    } else {
        assert_eq!(
            (first, answer["error"]["code"].as_str()),
            (503, Some("engine_unavailable")),
            "{answer}"
        );
    }
    cluster.await_failover(slot, victim);
    expect_once(&retry(&node, room("r2")).await, 2);

    // A whole shard down: no failover can help this publish.
    let down = cluster.slot(&format!("{{{}}}", players[1]));
    let master = cluster.master_of(down);
    let replica = cluster.replica_of(master);
    let elsewhere = players
        .iter()
        .find(|p| cluster.master_of(cluster.slot(&format!("{{{p}}}"))) != master)
        .expect("a member on another shard")
        .clone();
    cluster.nodes[master].kill();
    cluster.nodes[replica].kill();
    let (status, answer) = node
        .post("/v1/publish", Some(&svc), Body::Json(room("r3")))
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (503, Some("engine_unavailable")),
        "{answer}"
    );
    // Members on the other masters already hold r3.
    let (status, c) = node
        .request(Method::GET, "/v1/cursor", Some(&player_token(&elsewhere)))
        .await;
    assert_eq!(
        (status, c["last_sequence_number"].as_u64()),
        (200, Some(before[&elsewhere] + 3)),
        "{elsewhere}: {c}"
    );
    cluster.nodes[master].restart();
    cluster.nodes[replica].restart();
    cluster.wait_ok();
    expect_once(&retry(&node, room("r3")).await, 3);

    // Each member's log: r1, r2, r3, then a fence, and nothing else.
    logs_end_with_a_fence(&node, &players, &before, &["r1", "r2", "r3"]).await;
}

/// Contract §10 on a cluster, deterministically: while the replica of
/// alice's master lags (frozen with SIGSTOP, its link cut), a node with
/// `MYTHOS_REDIS_WAIT_REPLICAS=0` answers 200 to events only the master
/// holds, and a node with `1` answers `503 not_replicated`. The master then
/// dies and the lagging replica takes over: the events answered 200 without
/// WAIT are gone (the cost `0` has, docs/scaling.md), nothing answered 200
/// with WAIT is, and the WAIT node's retry with the same `id` lands once,
/// right after the last surviving event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_1_refuses_what_a_failover_would_lose() {
    let mut cluster = RedisCluster::start();
    let seeds = ClusterSeeds(cluster.seeds().split(',').map(String::from).collect());
    let node = |wait: u64| {
        let mut c = broker::config();
        c.redis_cluster = Some(seeds.clone());
        c.redis_wait_replicas = wait;
        c.redis_wait_timeout = Duration::from_millis(300);
        Broker::start(c)
    };
    let (fast, safe) = (node(0).await, node(1).await);
    let svc = service_token();
    let event =
        |id: &str| json!({"to": {"player": "alice"}, "event_type": "t", "data": id, "id": id});
    let publish = |b: &Broker, id: &str| {
        let body = event(id);
        let svc = svc.clone();
        let b = b.base.clone();
        async move {
            let r = Broker::http()
                .post(format!("{b}/v1/publish"))
                .bearer_auth(svc)
                .json(&body)
                .send()
                .await
                .expect("publish");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    for (b, id) in [(&fast, "a1"), (&safe, "a2")] {
        let (s, a) = publish(b, id).await;
        assert_eq!(s, 200, "{a}");
    }
    let slot = cluster.slot("{alice}");
    let master = cluster.master_of(slot);
    let replica = freeze_replica_of(&cluster, master);
    let mut answered_200 = Vec::new();
    for i in 3..=7 {
        let (s, a) = publish(&fast, &format!("a{i}")).await;
        assert_eq!((s, deliveries(&a)), (200, vec![("alice".into(), i)]), "{a}");
        answered_200.push(i);
    }
    let (s, a) = publish(&safe, "w1").await;
    assert_eq!(
        (s, a["error"]["code"].as_str()),
        (503, Some("not_replicated")),
        "{a}"
    );
    cluster.nodes[master].kill();
    cluster.nodes[replica].signal("CONT");
    cluster.await_failover(slot, master);
    // The WAIT node's retry: 200 once a replica confirms (the old master,
    // restarted, rejoins as the new master's replica).
    cluster.nodes[master].restart();
    cluster.nodes[master].wait_for_link();
    let answer = retry(&safe, event("w1")).await;
    // What survived: a1, a2; the five answered 200 without WAIT are lost.
    assert_eq!(deliveries(&answer), vec![("alice".into(), 3)], "{answer}");
    let (mut ws, _) = safe.ws_player("alice", Some(0)).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let e = ws.next_event().await.expect("an event");
        got.push((
            e["sequence_number"].as_u64().unwrap_or(0),
            e["id"].as_str().unwrap_or("").to_string(),
        ));
    }
    assert_eq!(
        got,
        vec![(1, "a1".into()), (2, "a2".into()), (3, "w1".into())],
        "lost without WAIT: {answered_200:?}"
    );
    // Nothing more (a lost event surfacing after all, w1 twice): a fence
    // published now is the very next event.
    let answer = retry(
        &safe,
        json!({"to": {"player": "alice"}, "event_type": "fence", "data": {}, "id": "fence"}),
    )
    .await;
    assert_eq!(deliveries(&answer), vec![("alice".into(), 4)], "{answer}");
    let e = ws.next_event().await.expect("the fence");
    assert_eq!(
        (e["sequence_number"].as_u64(), e["event_type"].as_str()),
        (Some(4), Some("fence"))
    );
    eprintln!(
        "WAIT 0 lost {} of {} events answered 200 while the replica lagged; WAIT 1 answered 503 and its retry landed once",
        answered_200.len(),
        answered_200.len()
    );
}

/// A node on `cluster` with `MYTHOS_REDIS_WAIT_REPLICAS=1` and a 500 ms WAIT.
async fn wait_1_node(cluster: &RedisCluster) -> Broker {
    let mut c = broker::config();
    c.redis_cluster = Some(ClusterSeeds(
        cluster.seeds().split(',').map(String::from).collect(),
    ));
    c.redis_wait_replicas = 1;
    c.redis_wait_timeout = Duration::from_millis(500);
    Broker::start(c).await
}

/// Freezes the replica of `master` (SIGSTOP) and cuts its replication link,
/// so that nothing `master` takes from now on reaches a replica (a frozen
/// process's kernel would still buffer the replication stream; a closed link
/// does not); returns the replica's index. `SIGCONT` it to let it catch up.
fn freeze_replica_of(cluster: &RedisCluster, master: usize) -> usize {
    let replica = cluster.replica_of(master);
    cluster.nodes[replica].signal("STOP");
    let cut: u64 = ::redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query(
            &mut cluster.nodes[master]
                .client()
                .get_connection()
                .expect("master"),
        )
        .expect("CLIENT KILL TYPE replica");
    assert_eq!(cut, 1, "the replica's link was cut");
    replica
}

/// A WebSocket's next frame, which must be the answer to a ping sent now:
/// nothing was pending before it (an event delivered early would be).
async fn nothing_before_pong(ws: &mut support::broker::WsClient, who: &str) {
    ws.send_json(json!({"type": "ping"})).await;
    let next = ws.next_json().await.expect("a frame");
    assert_eq!(
        next["type"], "pong",
        "{who}: nothing before the pong: {next}"
    );
}

/// WAIT 1 on a room fan-out across slot groups: a room whose members live
/// on all three masters, and the replica of one master frozen. The publish
/// answers `503 not_replicated`; members on the other masters (their slot
/// groups confirmed) get the event, members on the frozen shard see nothing
/// (an open socket stays silent, a new one replays without it, the cursor
/// stops before it); once the replica is back the retry with the same `id`
/// answers every member once at the same sequence numbers, and the blocked
/// members get it then. Each member's log is checked by sequence number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_1_room_fan_out_shows_members_only_what_their_replica_confirmed() {
    let cluster = RedisCluster::start();
    let node = wait_1_node(&cluster).await;
    let svc = service_token();
    let (players, before) = room_on_every_master(&cluster, &node, "lobby", "waiter", 30).await;
    let master_of = |p: &str| cluster.master_of(cluster.slot(&format!("{{{p}}}")));
    let room = |id: &str| json!({"to": {"room": "lobby"}, "event_type": "t", "data": id, "id": id});
    let (status, answer) = node
        .post("/v1/publish", Some(&svc), Body::Json(room("q1")))
        .await;
    assert_eq!(status, 200, "{answer}");

    let frozen_master = master_of(&players[0]);
    let blocked: Vec<&String> = players
        .iter()
        .filter(|p| master_of(p) == frozen_master)
        .collect();
    let free = players
        .iter()
        .find(|p| master_of(p) != frozen_master)
        .expect("a member elsewhere");
    let (mut blocked_ws, _) = node.ws_player(blocked[0], Some(before[blocked[0]])).await;
    let (mut free_ws, _) = node.ws_player(free, Some(before[free])).await;
    assert_eq!(blocked_ws.seqs(1).await, vec![before[blocked[0]] + 1]);
    assert_eq!(free_ws.seqs(1).await, vec![before[free] + 1]);

    let replica = freeze_replica_of(&cluster, frozen_master);
    let (status, answer) = node
        .post("/v1/publish", Some(&svc), Body::Json(room("q2")))
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (503, Some("not_replicated")),
        "{answer}"
    );
    // A confirmed slot group is visible: the free member gets q2 live.
    let e = free_ws
        .next_event()
        .await
        .expect("q2 for a confirmed group");
    assert_eq!(
        (e["sequence_number"].as_u64(), e["id"].as_str()),
        (Some(before[free] + 2), Some("q2")),
        "{e}"
    );
    // The blocked members see nothing of q2: the open socket is silent (an
    // announcement at append time would have arrived a whole WAIT timeout
    // before the 503), a new socket replays q1 alone (q2 would come in the
    // same log batch), every blocked cursor stops at q1.
    nothing_before_pong(&mut blocked_ws, blocked[0]).await;
    let (mut fresh, welcome) = node.ws_player(blocked[0], Some(before[blocked[0]])).await;
    assert_eq!(
        welcome["last_sequence_number"].as_u64(),
        Some(before[blocked[0]] + 1),
        "{welcome}"
    );
    assert_eq!(fresh.seqs(1).await, vec![before[blocked[0]] + 1]);
    nothing_before_pong(&mut fresh, blocked[0]).await;
    for p in &blocked {
        let (_, c) = node
            .request(Method::GET, "/v1/cursor", Some(&player_token(p)))
            .await;
        assert_eq!(
            c["last_sequence_number"].as_u64(),
            Some(before[p.as_str()] + 1),
            "{p}: {c}"
        );
    }

    // The replica catches up; the retry answers every member once, at the
    // sequence number of the first attempt.
    cluster.nodes[replica].signal("CONT");
    cluster.nodes[replica].wait_for_link();
    let answer = retry(&node, room("q2")).await;
    let mut got = deliveries(&answer);
    got.sort();
    let mut want: Vec<(String, u64)> = players.iter().map(|p| (p.clone(), before[p] + 2)).collect();
    want.sort();
    assert_eq!(got, want, "every member once, q2 at the next number");
    assert_eq!(blocked_ws.seqs(1).await, vec![before[blocked[0]] + 2]);
    assert_eq!(fresh.seqs(1).await, vec![before[blocked[0]] + 2]);

    // Every member's log: q1, q2, a fence, and nothing else.
    logs_end_with_a_fence(&node, &players, &before, &["q1", "q2"]).await;
}

/// WAIT 1 on WebSocket commands on a cluster: `command_accepted` only once a
/// replica of the command stream's master holds the command. With that
/// replica frozen the command gets `error not_replicated`; the master then
/// dies and the lagging replica takes over (the unconfirmed command is gone
/// with it, as the error said it might be); the client's resend is accepted,
/// and the stream holds k0, then k1 (once, plus at most one copy per resend
/// refused while the cluster settled: every resend is appended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_1_commands_are_accepted_only_once_a_replica_has_them() {
    let mut cluster = RedisCluster::start();
    let node = wait_1_node(&cluster).await;
    let (mut ws, _) = node.ws_player("carol", None).await;
    let command = |id: &str| json!({"type": "command", "id": id, "command": "look"});
    ws.send_json(command("k0")).await;
    let a = ws.next_json().await.expect("a reply");
    assert_eq!(
        (a["type"].as_str(), a["id"].as_str()),
        (Some("command_accepted"), Some("k0")),
        "{a}"
    );

    let slot = cluster.slot("mythos:commands");
    let master = cluster.master_of(slot);
    let replica = freeze_replica_of(&cluster, master);
    ws.send_json(command("k1")).await;
    let e = ws.next_json().await.expect("a reply");
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["id"].as_str()),
        (Some("error"), Some("not_replicated"), Some("k1")),
        "{e}"
    );
    cluster.nodes[master].kill();
    cluster.nodes[replica].signal("CONT");
    cluster.await_failover(slot, master);
    cluster.nodes[master].restart();
    cluster.nodes[master].wait_for_link();
    // The client resends what was not accepted (the reply may be a 503-like
    // error while the cluster settles: resend until accepted).
    // A resend answered with an error while the cluster settles may still
    // have been appended (the contract appends every accepted message and a
    // resend too; consumers recognise resends): count those.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut refused = Vec::new();
    loop {
        ws.send_json(command("k1")).await;
        let r = ws.next_json().await.expect("a reply");
        if r["type"] == "command_accepted" && r["id"] == "k1" {
            break;
        }
        refused.push(r["code"].as_str().unwrap_or("?").to_string());
        assert!(
            std::time::Instant::now() < deadline,
            "the resend was never accepted: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let entries = node
        .app()
        .engine()
        .commands_after(0, "0-0", 100)
        .await
        .expect("the command stream");
    let ids: Vec<String> = entries.iter().map(|e| e.command.id.clone()).collect();
    // k0 first; then k1: the accepted resend for certain, plus at most one
    // copy per resend refused after the failover. The unconfirmed first k1
    // died with the old master, as `not_replicated` warned it might.
    let copies = ids.iter().filter(|i| *i == "k1").count();
    assert!(
        ids.first().map(String::as_str) == Some("k0")
            && ids.len() == 1 + copies
            && (1..=1 + refused.len()).contains(&copies),
        "k0, then k1 once plus at most one per refused resend ({refused:?}): {ids:?}"
    );
}
