//! The `mythos-broker` command itself: `--help`, bad settings (one line naming
//! the setting, exit code 2), `user add` on the embedded engine, and a clean
//! exit on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mythos-broker");

/// The broker binary with an environment of PATH only: nothing the developer
/// exported (`MYTHOS_REDIS_URL`, ...) reaches it. Each test sets what it needs.
fn broker_command() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    support::redis::die_with_parent(&mut cmd);
    cmd
}

/// Runs the binary to its end; a run that does not end within 20 s (a bad
/// value the broker accepted and started serving with) fails, never hangs.
fn run(env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let mut cmd = broker_command();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    if !env.iter().any(|(k, _)| *k == "MYTHOS_BIND") {
        cmd.env("MYTHOS_BIND", "127.0.0.1:0");
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run binary");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(out) => out.expect("run binary"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{args:?} with {env:?} did not exit within 20 s (it was killed)");
        }
    };
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_every_setting() {
    let (code, out, _) = run(&[], &["--help"]);
    assert_eq!(code, 0);
    for name in [
        "MYTHOS_BIND",
        "MYTHOS_REDIS_URL",
        "MYTHOS_JWT_SECRET",
        "MYTHOS_MAX_BACKLOG",
        "MYTHOS_MAX_BACKLOG_AGE",
        "MYTHOS_DEDUPE_WINDOW",
        "MYTHOS_MAX_EVENT_BYTES",
        "MYTHOS_TOKEN_TTL",
        "MYTHOS_LOG",
        "NOT durable",
    ] {
        assert!(out.contains(name), "--help lacks {name}");
    }
    // Every setting, by its flag and its variable: nothing is undocumented.
    for (flag, var) in SETTINGS {
        assert!(out.contains(&format!("--{flag}")), "--help lacks --{flag}");
        assert!(out.contains(&format!("[env: {var}")), "--help lacks {var}");
    }
}

/// Every setting: (flag, environment variable).
const SETTINGS: &[(&str, &str)] = &[
    ("bind", "MYTHOS_BIND"),
    ("redis-url", "MYTHOS_REDIS_URL"),
    ("jwt-secret", "MYTHOS_JWT_SECRET"),
    ("jwt-secret-previous", "MYTHOS_JWT_SECRET_PREVIOUS"),
    ("jwt-public-key", "MYTHOS_JWT_PUBLIC_KEY"),
    ("dev", "MYTHOS_DEV"),
    ("max-backlog", "MYTHOS_MAX_BACKLOG"),
    ("max-backlog-age", "MYTHOS_MAX_BACKLOG_AGE"),
    ("dedupe-window", "MYTHOS_DEDUPE_WINDOW"),
    ("max-event-bytes", "MYTHOS_MAX_EVENT_BYTES"),
    ("token-ttl", "MYTHOS_TOKEN_TTL"),
    ("log", "MYTHOS_LOG"),
    ("log-format", "MYTHOS_LOG_FORMAT"),
    ("keepalive", "MYTHOS_KEEPALIVE"),
    ("idle-timeout", "MYTHOS_IDLE_TIMEOUT"),
    ("ws-max-frame", "MYTHOS_WS_MAX_FRAME"),
    ("ws-max-depth", "MYTHOS_WS_MAX_DEPTH"),
    ("ws-max-command", "MYTHOS_WS_MAX_COMMAND"),
    ("ws-max-args", "MYTHOS_WS_MAX_ARGS"),
    ("rate-per-sec", "MYTHOS_RATE_PER_SEC"),
    ("rate-burst", "MYTHOS_RATE_BURST"),
    ("send-queue", "MYTHOS_SEND_QUEUE"),
    ("allowed-origins", "MYTHOS_ALLOWED_ORIGINS"),
    ("redis-pool", "MYTHOS_REDIS_POOL"),
    ("node-id", "MYTHOS_NODE_ID"),
    ("ingest-claim-idle", "MYTHOS_INGEST_CLAIM_IDLE"),
];

/// The counts (a whole number, at least 1) and durations (longer than zero).
const COUNTS: &[&str] = &[
    "MYTHOS_MAX_BACKLOG",
    "MYTHOS_MAX_EVENT_BYTES",
    "MYTHOS_WS_MAX_FRAME",
    "MYTHOS_WS_MAX_DEPTH",
    "MYTHOS_WS_MAX_COMMAND",
    "MYTHOS_WS_MAX_ARGS",
    "MYTHOS_RATE_PER_SEC",
    "MYTHOS_RATE_BURST",
    "MYTHOS_SEND_QUEUE",
    "MYTHOS_REDIS_POOL",
];
const DURATIONS: &[&str] = &[
    "MYTHOS_MAX_BACKLOG_AGE",
    "MYTHOS_DEDUPE_WINDOW",
    "MYTHOS_TOKEN_TTL",
    "MYTHOS_KEEPALIVE",
    "MYTHOS_IDLE_TIMEOUT",
    "MYTHOS_INGEST_CLAIM_IDLE",
];

#[test]
fn every_bad_count_and_duration_exits_2_naming_the_setting() {
    let secret = ("MYTHOS_JWT_SECRET", "0123456789abcdef0123");
    let mut cases: Vec<(&str, &str)> = Vec::new();
    for name in COUNTS {
        for bad in ["lots", "-1", "1.5"] {
            cases.push((name, bad));
        }
        // No args at all is a meaningful limit (commands without arguments).
        if *name != "MYTHOS_WS_MAX_ARGS" {
            cases.push((name, "0"));
        }
    }
    for name in DURATIONS {
        for bad in ["forever", "-1s", "0s"] {
            cases.push((name, bad));
        }
    }
    for (name, bad) in cases {
        let (code, _, err) = run(&[secret, (name, bad)], &[]);
        assert_eq!(code, 2, "{name}={bad}: {err}");
        assert!(
            err.contains(name),
            "{name}={bad}: stderr must name it: {err}"
        );
        if bad != "-1" && bad != "0s" {
            continue;
        }
        // The same value given as a flag is refused the same way.
        let flag = SETTINGS
            .iter()
            .find(|(_, v)| *v == name)
            .map(|(f, _)| format!("--{f}={bad}"))
            .expect("a flag");
        let (code, _, err) = run(&[secret], &[&flag]);
        assert_eq!(code, 2, "{flag}: {err}");
    }
}

#[test]
fn bad_settings_stop_startup_with_exit_2_naming_the_setting() {
    let secret = ("MYTHOS_JWT_SECRET", "0123456789abcdef0123");
    for (env, name) in [
        (vec![], "MYTHOS_JWT_SECRET"),
        (
            vec![secret, ("MYTHOS_MAX_BACKLOG", "-5")],
            "MYTHOS_MAX_BACKLOG",
        ),
        (
            vec![secret, ("MYTHOS_MAX_BACKLOG", "0")],
            "MYTHOS_MAX_BACKLOG",
        ),
        (
            vec![secret, ("MYTHOS_MAX_BACKLOG_AGE", "forever")],
            "MYTHOS_MAX_BACKLOG_AGE",
        ),
        (
            vec![secret, ("MYTHOS_REDIS_URL", "http://nope")],
            "MYTHOS_REDIS_URL",
        ),
        (
            vec![secret, ("MYTHOS_BIND", "not-an-address")],
            "MYTHOS_BIND",
        ),
        (
            vec![secret, ("MYTHOS_MAX_EVENT_BYTES", "lots")],
            "MYTHOS_MAX_EVENT_BYTES",
        ),
        (vec![("MYTHOS_JWT_SECRET", "short")], "MYTHOS_JWT_SECRET"),
        (
            vec![secret, ("MYTHOS_JWT_SECRET_PREVIOUS", "short")],
            "MYTHOS_JWT_SECRET_PREVIOUS",
        ),
        // A public key verifies a backend's tokens; login still needs the secret.
        (
            vec![(
                "MYTHOS_JWT_PUBLIC_KEY",
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/ed25519-public.pem"
                ),
            )],
            "MYTHOS_JWT_SECRET",
        ),
    ] {
        let (code, _, err) = run(&env, &[]);
        assert_eq!(code, 2, "{env:?}: {err}");
        assert!(
            err.contains(name),
            "{env:?}: stderr must name {name}: {err}"
        );
    }
}

#[test]
fn user_add_on_the_embedded_engine_explains_instead_of_pretending() {
    let (code, _, err) = run(
        &[("MYTHOS_JWT_SECRET", "0123456789abcdef0123")],
        &["user", "add", "alice"],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("MYTHOS_REDIS_URL") && err.contains("/v1/admin/users"),
        "{err}"
    );
}

/// The first line the broker prints on stdout (its address), read on a
/// thread so that a broker that never prints fails the test after a
/// deadline instead of hanging it.
fn first_line(child: &mut std::process::Child) -> String {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the broker prints its address within 10 s")
}

#[test]
fn sigterm_stops_the_broker_with_exit_0() {
    let mut child = support::redis::KillOnDrop(
        broker_command()
            .args(["--bind", "127.0.0.1:0"])
            .env("MYTHOS_JWT_SECRET", "0123456789abcdef0123")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn"),
    );
    let line = first_line(&mut child);
    assert!(line.contains("listening on http://127.0.0.1:"), "{line}");
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert_eq!(status.code(), Some(0));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "broker did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_add_creates_an_account_a_node_can_log_in_with() {
    use std::io::Write;
    let redis = support::RedisServer::start();
    let add = |name: &str| {
        let mut child = broker_command()
            .args(["user", "add", name])
            .env("MYTHOS_JWT_SECRET", support::broker::SECRET)
            .env("MYTHOS_REDIS_URL", redis.url())
            .env("MYTHOS_LOG", "error")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"s3cret pass\nignored second line\n")
            .expect("write");
        let out = child.wait_with_output().expect("wait");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(add("zoe").0, Some(0));
    let (code, err) = add("zoe");
    assert_eq!(code, Some(1));
    assert!(err.contains("user_exists"), "{err}");
    assert_eq!(add("bad name").0, Some(2));

    let mut c = support::broker::config();
    c.redis_url = Some(redis.url());
    let b = support::broker::Broker::start(c).await;
    let login = |pw: &'static str| {
        let b = &b;
        async move {
            b.post(
                "/v1/auth/login",
                None,
                support::broker::Body::Json(serde_json::json!({"username": "zoe", "password": pw})),
            )
            .await
        }
    };
    let (s, body) = login("s3cret pass").await;
    assert_eq!((s, body["player_id"].as_str()), (200, Some("zoe")));
    assert_eq!(login("ignored second line").await.0, 401);
    // The hash is stored, never the password.
    let mut con = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let hash: String = redis::cmd("HGET")
        .arg("mythos:user:{zoe}")
        .arg("password_hash")
        .query_async(&mut con)
        .await
        .expect("HGET");
    assert!(
        hash.starts_with("$argon2id$") && !hash.contains("s3cret"),
        "{hash}"
    );
}

/// Hole 3 of issue 11: an unreachable Redis at start-up is not a usage error.
/// The broker retries with backoff (each attempt logged) for
/// `MYTHOS_REDIS_CONNECT_TIMEOUT`, then exits 1, not 2.
#[test]
fn unreachable_redis_is_retried_then_exit_1() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let url = format!("redis://127.0.0.1:{port}/");
    let t0 = Instant::now();
    let (code, _, err) = run(
        &[
            ("MYTHOS_JWT_SECRET", "0123456789abcdef0123"),
            ("MYTHOS_BIND", "127.0.0.1:0"),
            ("MYTHOS_REDIS_URL", &url),
            ("MYTHOS_REDIS_CONNECT_TIMEOUT", "1s"),
        ],
        &[],
    );
    let took = t0.elapsed();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("retrying in"), "each attempt is logged: {err}");
    assert!(err.contains("MYTHOS_REDIS_CONNECT_TIMEOUT"), "{err}");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(15),
        "it retried for about the timeout: {took:?}"
    );
}

/// Contract §9 and docs/delivery.md (lifecycle): SIGTERM closes WebSockets
/// with `1012`, lets a publish already in flight finish, and exits 0. The
/// node's link to Redis goes through the fault proxy, which holds Redis's
/// answers back (`HalfOpen(Down)`): the publish's append has run on Redis
/// but the node has not heard back when SIGTERM arrives. Catches: a shutdown
/// that drops in-flight requests (the publisher gets no answer though the
/// event is stored), exits before they finish, or exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_publish_finish() {
    use futures_util::StreamExt;
    use support::proxy::{Dir, Mode, Proxy};
    let redis = support::RedisServer::start_persistent();
    let proxy = Proxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], redis.port()))).await;
    let mut child = support::redis::KillOnDrop(
        broker_command()
            .args(["--bind", "127.0.0.1:0"])
            .env("MYTHOS_JWT_SECRET", support::broker::SECRET)
            .env(
                "MYTHOS_REDIS_URL",
                format!("redis://127.0.0.1:{}/", proxy.port()),
            )
            .env("MYTHOS_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn"),
    );
    let line = first_line(&mut child);
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("the address")
        .to_string();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{addr}/v1/ws?token={}",
        support::broker::player_token("alice")
    ))
    .await
    .expect("ws");
    let welcome = ws.next().await.expect("welcome").expect("a frame");
    assert!(welcome.to_text().is_ok_and(|t| t.contains("welcome")));

    // Redis gets the append; its answer stays in the proxy.
    proxy.set_mode(Mode::HalfOpen(Dir::Down));
    let publish = tokio::spawn(async move {
        let r = reqwest::Client::new()
            .post(format!("http://{addr}/v1/publish"))
            .bearer_auth(support::broker::service_token())
            .json(&serde_json::json!({"to": {"player": "alice"}, "event_type": "t", "data": 1, "id": "in-flight"}))
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .expect("the publish is answered");
        let status = r.status().as_u16();
        (
            status,
            r.json::<serde_json::Value>().await.unwrap_or_default(),
        )
    });
    let con = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let stored = || {
        let mut con = con.clone();
        async move {
            redis::cmd("XRANGE")
                .arg("mythos:player:{alice}:events")
                .arg("-")
                .arg("+")
                .query_async::<Vec<(String, std::collections::HashMap<String, String>)>>(&mut con)
                .await
                .expect("XRANGE")
        }
    };
    support::eventually(
        Duration::from_secs(10),
        "the append to run on Redis",
        || {
            let stored = stored();
            async move { (!stored.await.is_empty()).then_some(()) }
        },
    )
    .await;
    assert!(
        !publish.is_finished(),
        "the publish waits for Redis's answer"
    );

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    // The shutdown is under way (the WebSocket is closed 1012) while the
    // publish is still in flight, and the process waits for it.
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(c))) => {
                    break c.map(|f| u16::from(f.code))
                }
                Some(Ok(_)) => continue,
                other => panic!("the WebSocket ended without a close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("the close frame within 10 s");
    assert_eq!(close, Some(1012));
    assert!(!publish.is_finished(), "still in flight");
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the process waits for the in-flight publish"
    );

    // Redis's answer goes through: the publish finishes, then the process.
    proxy.set_mode(Mode::Pass);
    let (status, body) = publish.await.expect("publish task");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["deliveries"],
        serde_json::json!([{"player_id": "alice", "sequence_number": 1}])
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "broker did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0));
    let log = stored().await;
    assert_eq!(log.len(), 1, "one event in the log: {log:?}");
    assert_eq!(
        (log[0].0.as_str(), log[0].1.get("id").map(String::as_str)),
        ("1-0", Some("in-flight"))
    );
}
