//! The `mythos-broker` command itself: `--help`, bad settings (one line naming
//! the setting, exit code 2), `user add` on the embedded engine, and a clean
//! exit on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mythos-broker");

fn run(env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.stdin(Stdio::null()).output().expect("run binary");
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

#[test]
fn sigterm_stops_the_broker_with_exit_0() {
    let mut child = Command::new(BIN)
        .args(["--bind", "127.0.0.1:0"])
        .env("MYTHOS_JWT_SECRET", "0123456789abcdef0123")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read");
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
        let mut child = Command::new(BIN)
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
