//! The demo world end to end on the embedded engine, without a browser: a
//! player's commands go up the command stream over WebSocket, the demo game
//! server answers each through the HTTP API with one `command_response`
//! carrying the command's id, and moves the player between rooms. The demo
//! is a user of the broker, an example program of its own, so this runs it
//! (`cargo run --example demo`) as a user would, with the accounts it announces.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use mythos_broker::client::Player;
use serde_json::{json, Value};

#[tokio::test]
async fn each_command_gets_one_answer_with_its_id() {
    let (_demo, addr, service_token) = support::demo::start("SERVICE");

    let login: Value = reqwest::Client::new()
        .post(format!("http://{addr}/v1/auth/login"))
        .json(&json!({"username": "alice", "password": "mythos"}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("login body");
    let token = login["access_token"].as_str().expect("a token");
    let mut ws = Player::connect(&format!("http://{addr}"), token, None)
        .await
        .expect("websocket");
    // `who` reads presence: wait until alice's connection counts.
    support::eventually(Duration::from_secs(10), "alice online", || async {
        let v: Value = reqwest::Client::new()
            .get(format!("http://{addr}/v1/presence/players/alice"))
            .bearer_auth(&service_token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["state"] == "online").then_some(())
    })
    .await;

    for frame in [
        json!({"type": "command", "id": "c1", "command": "look"}),
        json!({"type": "chat", "id": "c2", "channel": "say", "message": "hello"}),
        json!({"type": "command", "id": "c3", "command": "go", "args": ["north"]}),
        json!({"type": "command", "id": "c4", "command": "dance"}),
        json!({"type": "command", "id": "c5", "command": "who"}),
        // The fence: the world answers commands in the order of the command
        // stream, so any second answer to c1..c4 would come before this one's.
        json!({"type": "command", "id": "fence", "command": "look"}),
    ] {
        ws.send_json(&frame).await.expect("send");
    }

    let mut answers: HashMap<String, Vec<Value>> = HashMap::new();
    let mut order = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !answers.contains_key("fence") {
        let frame = match tokio::time::timeout_at(deadline, ws.next_json()).await {
            Ok(Ok(frame)) => frame,
            other => {
                panic!("no answer to the fence within 10 s (got {other:?}); answers: {answers:?}")
            }
        };
        if frame["type"] == "event" && frame["event_type"] == "command_response" {
            let id = frame["data"]["command_id"].as_str().unwrap_or_default();
            order.push(id.to_string());
            answers
                .entry(id.to_string())
                .or_default()
                .push(frame["data"].clone());
        }
    }
    assert_eq!(
        order,
        ["c1", "c2", "c3", "c4", "c5", "fence"],
        "one answer each, in order"
    );

    let one = |id: &str| {
        let a = answers.get(id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(a.len(), 1, "answers to {id}: {a:?}");
        a[0].clone()
    };
    assert_eq!(one("c1")["room"]["room_id"], "tavern");
    assert_eq!(one("c2")["text"], "You say: hello");
    let go = one("c3");
    assert_eq!(
        (go["text"].as_str(), go["room"]["room_id"].as_str()),
        (Some("You go north."), Some("square"))
    );
    let dance = one("c4");
    assert_eq!(dance["ok"], false);
    assert!(dance["text"]
        .as_str()
        .is_some_and(|t| t.contains("Unknown command")));

    let who = one("c5")["text"].as_str().unwrap_or_default().to_string();
    assert!(
        who.lines().any(|l| l.trim_start().starts_with("alice")
            && l.contains("Square")
            && !l.contains("link-dead")),
        "alice is online in the square: {who}"
    );

    let members: Value = reqwest::Client::new()
        .get(format!("http://{addr}/v1/rooms/square/members"))
        .bearer_auth(&service_token)
        .send()
        .await
        .expect("members")
        .json()
        .await
        .expect("members body");
    assert_eq!(members["members"], json!(["alice"]));
}

/// What a newcomer sees (issue 12 §5): the "listening" line once (even with
/// debug logging), dev tokens as lines a shell takes as they are (pasting
/// them sets `$SERVICE`, with which the README's `curl` example publishes),
/// and no ANSI colour codes when the output is not a terminal.
#[tokio::test]
async fn demo_output_is_pasteable_and_says_listening_once() {
    let mut child = Command::new(support::demo::bin())
        .args(["--bind", "127.0.0.1:0"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MYTHOS_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the broker");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });
    let pid = child.id() as i32;
    let demo = support::demo::Demo(child);
    let mut out = Vec::new();
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.expect("read stdout");
        let ready = line.starts_with("demo world ready");
        out.push(line);
        if ready {
            break;
        }
    }
    let exports: Vec<&String> = out
        .iter()
        .filter(|l| l.starts_with('#') || l.starts_with("export "))
        .collect();
    let get = |var: &str| {
        exports
            .iter()
            .find_map(|l| l.strip_prefix(&format!("export {var}=")))
            .unwrap_or_else(|| panic!("no `export {var}=` line in {out:?}"))
            .to_string()
    };
    let (broker, service) = (get("BROKER"), get("SERVICE"));
    assert!(get("ADMIN").starts_with("eyJ"));
    assert!(get("MYTHOS_JWT_SECRET").len() >= 32);
    // Pasted into a shell, the block sets the variables.
    let script = exports
        .iter()
        .map(|l| l.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let echoed = Command::new("sh")
        .arg("-c")
        .arg(format!("{script}\nprintf '%s' \"$SERVICE\""))
        .output()
        .expect("sh");
    assert_eq!(String::from_utf8_lossy(&echoed.stdout), service);
    // The README's curl example, with what the block set.
    let answer = reqwest::Client::new()
        .post(format!("{broker}/v1/publish"))
        .bearer_auth(&service)
        .body(r#"{"to":{"player":"alice"},"event_type":"chat_message","data":{"channel":"say","from":"gm","message":"hello from curl"}}"#)
        .send()
        .await
        .expect("publish");
    assert_eq!(answer.status(), 200);

    // SIGTERM, then everything either stream printed.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let err = err_reader.join().expect("stderr reader");
    drop(demo);
    let all = format!("{}\n{}\n{err}", out.join("\n"), rest.join("\n"));
    assert_eq!(
        all.matches("listening").count(),
        1,
        "the listening line once:\n{all}"
    );
    assert!(!all.contains('\u{1b}'), "no ANSI escapes in a pipe:\n{all}");
    assert!(err.contains("DEBUG"), "debug logging was on:\n{err}");
}
