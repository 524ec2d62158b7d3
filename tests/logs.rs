//! The broker's own log output, from the process as operators run it: a full
//! session (an admin creates an account, the player logs in with a password,
//! opens WebSocket and SSE connections with the token in the query and in the
//! header, a service publishes, the player refreshes) with trace logging, and
//! then the log must hold no token material — no JWT used, no signature of
//! one, no password, not the secret. With `MYTHOS_LOG_FORMAT=json` every
//! line is a JSON object, and connection lines carry the connection's span.

/// Only the support this test uses: the child's death signal.
#[allow(dead_code)]
mod support {
    pub mod redis;
}

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use mythos_broker::auth::Role;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "log-scan-secret-7f3a9c2e5b1d";
const PASSWORD: &str = "pw-never-logged-4k9q";
const WRONG_PASSWORD: &str = "pw-wrong-never-logged-8x2m";

fn mint(sub: &str, role: Role) -> String {
    mythos_broker::client::token(SECRET, sub, role, 600).expect("token")
}

/// What a session leaves behind: the broker's stderr and every secret used.
struct Run {
    log: String,
    secrets: Vec<String>,
}

/// Runs the broker with `env`, plays the session, stops it with SIGTERM.
async fn session(env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mythos-broker"));
    cmd.args(["--bind", "127.0.0.1:0"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MYTHOS_JWT_SECRET", SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Dies with the test process, also when an assertion below fails first.
    support::redis::die_with_parent(&mut cmd);
    let mut child = support::redis::KillOnDrop(cmd.spawn().expect("spawn the broker"));
    let stderr = child.stderr.take().expect("stderr");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut s);
        s
    });
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("mythos-broker listening on http://")
                .and_then(|r| r.split_whitespace().next().map(str::to_string))
        })
        .expect("the listening line");
    std::thread::spawn(move || lines.for_each(drop));
    let base = format!("http://{addr}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");

    let admin = mint("root", Role::Admin);
    let service = mint("game", Role::Service);
    let r = http
        .post(format!("{base}/v1/admin/users"))
        .bearer_auth(&admin)
        .json(&json!({"username": "logan", "password": PASSWORD}))
        .send()
        .await
        .expect("add user");
    assert_eq!(r.status(), 201);
    let r = http
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"username": "logan", "password": WRONG_PASSWORD}))
        .send()
        .await
        .expect("wrong login");
    assert_eq!(r.status(), 401);
    let login: Value = http
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"username": "logan", "password": PASSWORD}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("login body");
    let token = login["access_token"].as_str().expect("token").to_string();

    // WebSocket: token in the query, then in the Authorization header.
    let (mut ws_query, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws?token={token}"))
            .await
            .expect("ws with ?token=");
    let mut req = format!("ws://{addr}/v1/ws")
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let (mut ws_header, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("ws with a header");
    // SSE: the same two ways.
    let sse_query = http
        .get(format!("{base}/v1/events?token={token}"))
        .send()
        .await
        .expect("sse ?token=");
    assert_eq!(sse_query.status(), 200);
    let sse_header = http
        .get(format!("{base}/v1/events"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("sse header");
    assert_eq!(sse_header.status(), 200);

    let r = http
        .post(format!("{base}/v1/publish"))
        .bearer_auth(&service)
        .json(&json!({"to": {"player": "logan"}, "event_type": "t", "data": {"n": 1}}))
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 200);
    for ws in [&mut ws_query, &mut ws_header] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let m = tokio::time::timeout_at(deadline, ws.next())
                .await
                .expect("the event within 10 s")
                .expect("open")
                .expect("a frame");
            let Ok(text) = m.to_text() else { continue };
            if text.contains("\"sequence_number\":1") {
                break;
            }
        }
    }
    let mut chunks = sse_query.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), chunks.next())
        .await
        .expect("an SSE chunk");
    assert!(first.is_some());
    let refreshed: Value = http
        .post(format!("{base}/v1/auth/refresh"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("refresh")
        .json()
        .await
        .expect("refresh body");
    let refreshed = refreshed["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    drop((ws_query, ws_header, chunks, sse_header));

    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    let log = err_reader.join().expect("stderr");
    let mut secrets = vec![
        SECRET.to_string(),
        PASSWORD.to_string(),
        WRONG_PASSWORD.to_string(),
    ];
    for t in [admin, service, token, refreshed] {
        // The whole token and its signature (the header part is the same
        // in every token, so it proves nothing).
        let sig = t.rsplit('.').next().unwrap_or_default().to_string();
        secrets.push(t);
        secrets.push(sig);
    }
    Run { log, secrets }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbose_logs_of_a_full_session_hold_no_token_or_password() {
    // `trace` for every crate: the most verbose level, debug included.
    let run = session(&[("MYTHOS_LOG", "trace")]).await;
    assert!(
        run.log.contains("connection opened") && run.log.contains("connection closed"),
        "connections are logged at info:\n{}",
        run.log
    );
    assert!(
        run.log.contains("DEBUG") && run.log.contains("TRACE"),
        "debug and trace logging were on"
    );
    for s in &run.secrets {
        assert!(
            !run.log.contains(s.as_str()),
            "the log holds `{s}`:\n{}",
            run.log
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_json_lines_with_connection_spans() {
    let run = session(&[("MYTHOS_LOG", "debug"), ("MYTHOS_LOG_FORMAT", "json")]).await;
    let lines: Vec<Value> = run
        .log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 10, "{}", run.log);
    let opened: Vec<&Value> = lines
        .iter()
        .filter(|v| v["fields"]["message"] == "connection opened")
        .collect();
    assert_eq!(opened.len(), 4, "two WebSockets, two SSE streams");
    let mut transports: Vec<&str> = opened
        .iter()
        .map(|v| {
            let span = &v["span"];
            assert_eq!(span["name"], "connection", "{v}");
            assert_eq!(span["player"], "logan", "{v}");
            assert!(
                span["session"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("s-")),
                "{v}"
            );
            assert!(span["node"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
            span["transport"].as_str().expect("transport")
        })
        .collect();
    transports.sort_unstable();
    assert_eq!(transports, ["sse", "sse", "ws", "ws"]);
    assert!(
        lines.iter().any(|v| v["span"]["name"] == "request"),
        "requests have a span"
    );
    for s in &run.secrets {
        assert!(!run.log.contains(s.as_str()), "the log holds `{s}`");
    }
}
