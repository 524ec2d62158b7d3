//! Record, replay and inspect (issue 12 §1–2), through the real binary and
//! real HTTP: `export` / `replay` / `inspect` on both engines, by both paths
//! (the store directly with `MYTHOS_REDIS_URL`, and a running broker with
//! `--url`); the admin endpoints behind them (roles, bounded pages, clear
//! errors); bad input (a malformed recording publishes nothing, unknown
//! players and bad flags exit 2). Assertions are by sequence number: every
//! replayed log is checked dense (no gap, no duplicate) and in order.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use support::broker::{
    admin_token, player_token, service_token, Body, Broker, Kind, Node, WsClient, SECRET,
};

const BIN: &str = env!("CARGO_BIN_EXE_mythos-broker");

/// Runs the broker binary with only PATH and `env`; (exit code, stdout, stderr).
pub async fn run(env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MYTHOS_LOG", "warn")
        .args(args)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{args:?} did not finish within 120 s"))
        .expect("run the binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs it and requires exit code 0; its stdout.
pub async fn ok(env: &[(&str, &str)], args: &[&str]) -> String {
    let (code, out, err) = run(env, args).await;
    assert_eq!(code, 0, "{args:?} failed: {err}");
    out
}

/// The lines of an export, parsed.
fn lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["sequence_number"].as_u64().expect("seq"))
        .collect()
}

/// A client's view: (event_type, data), in order.
fn view(events: &[Value]) -> Vec<(String, Value)> {
    events
        .iter()
        .map(|e| {
            (
                e["event_type"].as_str().unwrap_or_default().to_string(),
                e["data"].clone(),
            )
        })
        .collect()
}

/// The next `n` events of a WebSocket client, checked dense from `first`
/// (no gap, no duplicate, in order).
async fn receive(ws: &mut WsClient, first: u64, n: usize) -> Vec<Value> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let e = ws.next_event().await.expect("the connection stays open");
        got.push(e);
    }
    let want: Vec<u64> = (first..first + n as u64).collect();
    assert_eq!(seqs(&got), want, "dense, in order, no duplicate");
    got
}

/// Publishes 30 varied events to `player` (room ids on even ones, publish
/// ids on every fifth, data with escapes and non-ASCII).
async fn publish_session(node: &Node, player: &str) {
    for i in 0..30u64 {
        let mut body = json!({
            "to": {"player": player},
            "event_type": format!("kind_{}", i % 3),
            "data": {"i": i, "text": "ü \"quoted\" \\ line", "nested": {"list": [i, null, true]}},
        });
        if i % 2 == 0 {
            body["room_id"] = json!("tavern");
        }
        if i % 5 == 0 {
            body["id"] = json!(format!("p{i}"));
        }
        let (status, answer) = node
            .post("/v1/publish", Some(&service_token()), Body::Json(body))
            .await;
        assert_eq!(status, 200, "{answer}");
    }
}

/// Export, replay and inspect on `kind`, through `--url` and (Redis) through
/// the store directly; both paths must print the same.
async fn export_replay_inspect(kind: Kind) {
    let partitions = if kind == Kind::Memory { 1 } else { 4 };
    let node = Node::start(kind, |c| c.command_partitions = partitions).await;
    let url = node.base.clone();
    let parts = partitions.to_string();
    let remote: Vec<(&str, &str)> = vec![("MYTHOS_JWT_SECRET", SECRET)];
    // The store directly: one Redis, or the cluster's seeds.
    let store: Option<(&str, String)> = match (&node.redis, &node.lease) {
        (Some(r), _) => Some(("MYTHOS_REDIS_URL", r.url())),
        (None, Some(l)) => Some(("MYTHOS_REDIS_CLUSTER", l.seeds.clone())),
        (None, None) => None,
    };
    let direct: Option<Vec<(&str, &str)>> = store.as_ref().map(|(k, v)| {
        vec![
            (*k, v.as_str()),
            ("MYTHOS_COMMAND_PARTITIONS", parts.as_str()),
            ("MYTHOS_REDIS_CONNECT_TIMEOUT", "5s"),
        ]
    });

    publish_session(&node, "alice").await;
    let (status, _) = node
        .post(
            "/v1/ack",
            Some(&player_token("alice")),
            Body::Json(json!({"sequence_number": 5})),
        )
        .await;
    assert_eq!(status, 200);

    // Export: the retained events 6..=30, each exactly the envelope a client gets.
    let out = ok(&remote, &["export", "--player", "alice", "--url", &url]).await;
    let exported = lines(&out);
    assert_eq!(seqs(&exported), (6..=30).collect::<Vec<_>>());
    let (mut alice, _) = node.ws_player("alice", None).await;
    let delivered = receive(&mut alice, 6, 25).await;
    for (e, mut d) in exported.iter().zip(delivered) {
        d.as_object_mut().map(|o| o.remove("type"));
        assert_eq!(e, &d, "the export is the envelope as delivered");
    }
    let part = ok(
        &remote,
        &[
            "export", "--player", "alice", "--from", "10", "--to", "12", "--url", &url,
        ],
    )
    .await;
    assert_eq!(seqs(&lines(&part)), vec![10, 11, 12]);
    let (code, early, err) = run(
        &remote,
        &[
            "export", "--player", "alice", "--from", "2", "--to", "7", "--url", &url,
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(seqs(&lines(&early)), vec![6, 7], "the retained part");
    assert!(
        err.contains("events 2..5 of alice are no longer retained"),
        "{err}"
    );
    if let Some(env) = &direct {
        let same = ok(env, &["export", "--player", "alice"]).await;
        assert_eq!(same, out, "Redis directly and --url export the same lines");
    }

    // Replay into a connected client of alice2, at full speed: it receives
    // the same (event_type, data), as 1..=25 with no gap.
    let file = std::env::temp_dir().join(format!(
        "mythos-rec-{}-{}.jsonl",
        std::process::id(),
        node.base.rsplit(':').next().unwrap_or("0")
    ));
    std::fs::write(&file, &out).expect("write the recording");
    let path = file.to_str().expect("utf-8 path");
    let (mut alice2, _) = node.ws_player("alice2", None).await;
    let replay = [
        "replay",
        path,
        "--to-player",
        "alice2",
        "--speed",
        "max",
        "--url",
        &url,
    ];
    let said = ok(&remote, &replay).await;
    assert!(said.contains("replayed 25 events into alice2"), "{said}");
    let replayed = receive(&mut alice2, 1, 25).await;
    assert_eq!(view(&replayed), view(&exported));
    for (r, e) in replayed.iter().zip(&exported) {
        assert_eq!(r["room_id"], e["room_id"], "room ids are kept");
        let want = format!("replay:alice:{}", e["sequence_number"]);
        assert_eq!(r["id"].as_str(), Some(want.as_str()));
    }
    // A replay is idempotent: run again, it appends nothing.
    ok(&remote, &replay).await;
    let report: Value = serde_json::from_str(
        &ok(
            &remote,
            &["inspect", "player", "alice2", "--json", "--url", &url],
        )
        .await,
    )
    .expect("JSON report");
    assert_eq!(report["last_sequence_number"], 25);

    // Through the store directly: a client connected to the node receives it live.
    if let Some(env) = &direct {
        let (mut alice3, _) = node.ws_player("alice3", None).await;
        ok(
            env,
            &["replay", path, "--to-player", "alice3", "--speed", "max"],
        )
        .await;
        let live = receive(&mut alice3, 1, 25).await;
        assert_eq!(view(&live), view(&exported));
    }

    // Inspect a player: the node's view (with connections) and the store's.
    let text = ok(&remote, &["inspect", "player", "alice", "--url", &url]).await;
    for want in [
        "player: alice",
        "last_sequence_number: 30",
        "acked: 5",
        "retained: 25",
        "oldest_available: 6",
        "dedupe_keys: 6",
        "rooms: -",
    ] {
        assert!(text.lines().any(|l| l == want), "no `{want}` in:\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("connections[") && l.ends_with("].websocket: 1")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("oldest_age: ")),
        "{text}"
    );
    if let Some(env) = &direct {
        let text = ok(env, &["inspect", "player", "alice"]).await;
        assert!(text.lines().any(|l| l == "retained: 25"), "{text}");
        assert!(text.contains("connections: unknown"), "{text}");
    }

    // Presence: alice's open connection makes her online (told to the
    // engine in the background: polled), and the node holds a lease.
    let presence = support::eventually(Duration::from_secs(10), "alice online", || async {
        let text = ok(&remote, &["inspect", "presence", "alice", "--url", &url]).await;
        text.lines().any(|l| l == "state: online").then_some(text)
    })
    .await;
    assert!(
        presence.lines().any(|l| l == "player_id: alice"),
        "{presence}"
    );
    assert!(
        presence
            .lines()
            .any(|l| l.starts_with("nodes: ") && l.len() > 7),
        "{presence}"
    );
    let leases = ok(&remote, &["inspect", "presence", "--url", &url]).await;
    assert!(leases.lines().any(|l| l == "leases: 1"), "{leases}");
    assert!(
        leases
            .lines()
            .any(|l| l.starts_with("lease[") && l.contains("(in ")),
        "{leases}"
    );
    if let Some(env) = &direct {
        let v: Value =
            serde_json::from_str(&ok(env, &["inspect", "presence", "alice", "--json"]).await)
                .expect("JSON");
        assert_eq!(
            (v["state"].as_str(), v["seq"].as_u64()),
            (Some("online"), Some(1)),
            "{v}"
        );
    }

    // Commands: every partition, filtered by player, the same by both paths.
    let mut sent = 0;
    for p in ["alice", "bob", "carol", "dave", "erin"] {
        let (mut ws, _) = node.ws_player(p, None).await;
        for i in 0..3 {
            ws.send_json(json!({"type": "command", "id": format!("{p}{i}"), "command": "look"}))
                .await;
            ws.until_type("command_accepted").await.expect("accepted");
            sent += 1;
        }
    }
    let all = lines(&ok(&remote, &["export", "--commands", "--url", &url]).await);
    assert_eq!(all.len(), sent);
    let players: BTreeSet<&str> = all.iter().filter_map(|c| c["player_id"].as_str()).collect();
    assert_eq!(players.len(), 5);
    let used: BTreeSet<u64> = all.iter().filter_map(|c| c["partition"].as_u64()).collect();
    if partitions > 1 {
        assert!(
            used.len() > 1,
            "the commands spread over partitions: {used:?}"
        );
    }
    assert_eq!(all[0]["payload"]["command"], "look");
    let bobs = lines(
        &ok(
            &remote,
            &["export", "--commands", "--player", "bob", "--url", &url],
        )
        .await,
    );
    let ids: Vec<&str> = bobs.iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(ids, ["bob0", "bob1", "bob2"], "in order");
    let last = bobs[2]["entry_id"].as_str().expect("entry id");
    let none = ok(
        &remote,
        &[
            "export",
            "--commands",
            "--player",
            "bob",
            "--since",
            last,
            "--url",
            &url,
        ],
    )
    .await;
    assert_eq!(none, "", "--since an entry id is exclusive");
    let recent = lines(
        &ok(
            &remote,
            &["export", "--commands", "--since", "10m", "--url", &url],
        )
        .await,
    );
    assert_eq!(recent.len(), sent);
    if let Some(env) = &direct {
        let same = lines(&ok(env, &["export", "--commands"]).await);
        assert_eq!(same, all);
    }

    // Streams.
    let text = ok(&remote, &["inspect", "streams", "--url", &url]).await;
    assert!(text.contains("mythos:commands"), "{text}");
    assert!(
        text.lines().any(|l| l.ends_with(".kind: commands")),
        "{text}"
    );
    let v: Value =
        serde_json::from_str(&ok(&remote, &["inspect", "streams", "--json", "--url", &url]).await)
            .expect("JSON");
    let total: u64 = v["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .filter(|s| s["kind"] == "commands")
        .map(|s| s["length"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(total, sent as u64);
    if let Some(env) = &direct {
        let d: Value =
            serde_json::from_str(&ok(env, &["inspect", "streams", "--json"]).await).expect("JSON");
        // Idle times move between two reads: compare what does not.
        let shape = |v: &Value| -> Vec<Shape> {
            v["streams"]
                .as_array()
                .expect("streams")
                .iter()
                .map(|s| {
                    let groups = s["groups"]
                        .as_array()
                        .expect("groups")
                        .iter()
                        .map(|g| {
                            let name = g["name"].as_str().unwrap_or_default().to_string();
                            (name, g["pending"].as_u64().unwrap_or(0))
                        })
                        .collect();
                    let name = s["name"].as_str().unwrap_or_default().to_string();
                    (name, s["length"].as_u64().unwrap_or(0), groups)
                })
                .collect()
        };
        assert_eq!(shape(&d), shape(&v));
        assert!(d["streams"]
            .as_array()
            .expect("streams")
            .iter()
            .any(|s| s["kind"] == "dead"));
    }
    let _ = std::fs::remove_file(&file);
}

/// A stream's name, length, and its groups' names and pending counts.
type Shape = (String, u64, Vec<(String, u64)>);

on_both_engines!(export_replay_inspect);

/// The same on a Redis Cluster (3 masters with a replica each): the store
/// directly is `MYTHOS_REDIS_CLUSTER`.
mod cluster {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn export_replay_inspect() {
        super::export_replay_inspect(super::Kind::Cluster).await
    }
}

/// A recording with a malformed third line: exit 2 naming line 3, and
/// nothing of it is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_recording_publishes_nothing() {
    let node = Node::start(Kind::Memory, |_| {}).await;
    publish_session(&node, "alice").await;
    let env = [("MYTHOS_JWT_SECRET", SECRET)];
    let out = ok(&env, &["export", "--player", "alice", "--url", &node.base]).await;
    let mut rows: Vec<&str> = out.lines().collect();
    rows[2] = r#"{"event_type":"x","sequence_number":3,"timestamp":"yesterday","player_id":"alice","data":{}}"#;
    let file = std::env::temp_dir().join(format!("mythos-bad-{}.jsonl", std::process::id()));
    std::fs::write(&file, rows.join("\n")).expect("write");
    let path = file.to_str().expect("path");
    let (code, _, err) = run(
        &env,
        &[
            "replay",
            path,
            "--to-player",
            "q",
            "--speed",
            "max",
            "--url",
            &node.base,
        ],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("line 3") && err.contains("timestamp"), "{err}");
    assert!(err.contains("nothing was published"), "{err}");
    let (code, _, err) = run(&env, &["inspect", "player", "q", "--url", &node.base]).await;
    assert_eq!(code, 2, "q's log stays empty: {err}");
    assert!(err.contains("unknown player"), "{err}");
    // Not JSON at all, on line 1.
    std::fs::write(&file, "hello\n").expect("write");
    let (code, _, err) = run(
        &env,
        &["replay", path, "--to-player", "q", "--url", &node.base],
    )
    .await;
    assert_eq!(code, 2);
    assert!(err.contains("line 1"), "{err}");
    let _ = std::fs::remove_file(&file);
}

/// Unknown players and bad flags: exit 2 with a message saying what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_players_and_bad_flags_exit_2() {
    let node = Node::start(Kind::Memory, |_| {}).await;
    let url = node.base.as_str();
    let env = [("MYTHOS_JWT_SECRET", SECRET)];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["export", "--player", "ghost", "--url", url],
            "unknown player",
        ),
        (
            vec!["inspect", "player", "ghost", "--url", url],
            "unknown player",
        ),
        (vec!["export", "--url", url], "--player"),
        (
            vec!["export", "--player", "bad id!", "--url", url],
            "not a player id",
        ),
        (
            vec![
                "export", "--player", "a", "--from", "5", "--to", "2", "--url", url,
            ],
            "--to",
        ),
        (
            vec!["export", "--player", "a", "--since", "10m", "--url", url],
            "--since",
        ),
        (
            vec!["export", "--commands", "--from", "3", "--url", url],
            "--from",
        ),
        (
            vec!["export", "--commands", "--since", "whenever", "--url", url],
            "--since",
        ),
        (
            vec!["export", "--player", "a", "--from", "minus", "--url", url],
            "--from",
        ),
        (
            vec![
                "replay",
                "/nonexistent/rec.jsonl",
                "--to-player",
                "q",
                "--url",
                url,
            ],
            "cannot open",
        ),
        (
            vec![
                "replay",
                "/dev/null",
                "--to-player",
                "q",
                "--speed",
                "fast",
                "--url",
                url,
            ],
            "--speed",
        ),
        (vec!["replay", "/dev/null", "--url", url], "--to-player"),
        (vec!["export", "--player", "a", "--url", "ftp://x"], "--url"),
        (vec!["inspect", "streams"], "MYTHOS_REDIS_URL"),
        (vec!["inspect", "everything", "--url", url], "everything"),
    ];
    for (args, says) in cases {
        let (code, _, err) = run(&env, &args).await;
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?} must say {says}: {err}");
    }
    // Without a secret or a token, --url cannot authenticate.
    let (code, _, err) = run(&[], &["inspect", "streams", "--url", url]).await;
    assert_eq!(code, 2);
    assert!(err.contains("--token"), "{err}");
    // A token without the admin role is refused by the broker: exit 2.
    let (code, _, err) = run(
        &[],
        &[
            "inspect",
            "streams",
            "--url",
            url,
            "--token",
            &service_token(),
        ],
    )
    .await;
    assert_eq!(code, 2);
    assert!(err.contains("403"), "{err}");
    // A broker that is not there: exit 1.
    let (code, _, err) = run(&env, &["inspect", "streams", "--url", "http://127.0.0.1:9"]).await;
    assert_eq!(code, 1, "{err}");
}

async fn get(node: &Broker, path: &str, token: Option<&str>) -> (u16, Value) {
    node.request(reqwest::Method::GET, path, token).await
}

/// The admin endpoints: admin role only, bounded pages, clear JSON errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_check_role_and_bounds() {
    let node = Node::start(Kind::Memory, |_| {}).await;
    publish_session(&node, "alice").await;
    let admin = admin_token();
    for path in [
        "/v1/admin/players/alice",
        "/v1/admin/players/alice/events",
        "/v1/admin/commands",
        "/v1/admin/streams",
    ] {
        let (s, b) = get(&node, path, None).await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{path}"
        );
        for t in [service_token(), player_token("alice")] {
            let (s, b) = get(&node, path, Some(&t)).await;
            assert_eq!(
                (s, b["error"]["code"].as_str()),
                (403, Some("forbidden")),
                "{path}"
            );
        }
        let (s, b) = get(&node, path, Some(&admin)).await;
        assert_eq!(s, 200, "{path}: {b}");
        let (s, b) = get(&node, &format!("{path}?bogus=1"), Some(&admin)).await;
        assert_eq!(s, 400, "{path}");
        assert!(
            b["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("bogus"),
            "{b}"
        );
    }
    // Pages: bounded, with a next_after while more remain.
    let (s, b) = get(
        &node,
        "/v1/admin/players/alice/events?after=10&limit=5",
        Some(&admin),
    )
    .await;
    assert_eq!(s, 200);
    let evs = b["events"].as_array().expect("events").clone();
    assert_eq!(seqs(&evs), vec![11, 12, 13, 14, 15]);
    assert_eq!(b["next_after"], 15);
    let (_, b) = get(
        &node,
        "/v1/admin/players/alice/events?after=25&limit=1000",
        Some(&admin),
    )
    .await;
    assert_eq!(
        seqs(b["events"].as_array().expect("events")),
        (26..=30).collect::<Vec<_>>()
    );
    assert_eq!(b["next_after"], Value::Null);
    for (q, says) in [
        ("limit=1001", "limit"),
        ("limit=0", "limit"),
        ("limit=99999999999999999999999", "limit"),
        ("after=-1", "after"),
        ("after=ten", "after"),
    ] {
        let (s, b) = get(
            &node,
            &format!("/v1/admin/players/alice/events?{q}"),
            Some(&admin),
        )
        .await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (400, Some("invalid_request")),
            "{q}"
        );
        assert!(
            b["error"]["message"].as_str().unwrap_or("").contains(says),
            "{q}: {b}"
        );
    }
    for q in [
        "partition=1",
        "after=yesterday",
        "limit=5000",
        "partition=x",
    ] {
        let (s, b) = get(&node, &format!("/v1/admin/commands?{q}"), Some(&admin)).await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (400, Some("invalid_request")),
            "{q}: {b}"
        );
    }
    let (s, b) = get(&node, "/v1/admin/players/ghost", Some(&admin)).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (404, Some("unknown_player"))
    );
    let (s, _) = get(&node, "/v1/admin/players/bad%20id", Some(&admin)).await;
    assert_eq!(s, 400);
    let long = "x".repeat(65);
    let (s, _) = get(
        &node,
        &format!("/v1/admin/players/{long}/events"),
        Some(&admin),
    )
    .await;
    assert_eq!(s, 400);
    // The report counts this node's connections by transport.
    let (_ws, _) = node.ws_player("alice", None).await;
    let _sse = node
        .sse("/v1/events", &player_token("alice"), None)
        .await
        .expect("sse opens");
    let (_, b) = get(&node, "/v1/admin/players/alice", Some(&admin)).await;
    let nodes = b["connections"].as_object().expect("connections");
    let mine = nodes.values().next().expect("this node");
    assert_eq!(
        (mine["websocket"].as_u64(), mine["sse"].as_u64()),
        (Some(1), Some(1)),
        "{b}"
    );
    assert_eq!(b["last_sequence_number"], 30);
    assert_eq!(b["dedupe_keys"]["count"], 6);
}
