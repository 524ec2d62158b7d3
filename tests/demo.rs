//! The demo world end to end on the embedded engine, without a browser: a
//! player's commands go up the command stream over WebSocket, the demo game
//! server answers each through the HTTP API with one `command_response`
//! carrying the command's id, and moves the player between rooms.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use mythos_broker::config::Config;
use mythos_broker::state::App;
use mythos_broker::{demo, server};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn each_command_gets_one_answer_with_its_id() {
    let app = App::new(Config::for_tests("demo-test-secret-0123456789"))
        .await
        .expect("app");
    let running = server::start(app.clone()).await.expect("listen");
    let addr = running.addr;
    demo::start(&app, addr).await;

    let login: Value = reqwest::Client::new()
        .post(format!("http://{addr}/v1/auth/login"))
        .json(&json!({"username": "alice", "password": demo::PASSWORD}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("login body");
    let token = login["access_token"].as_str().expect("a token");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws?token={token}"))
        .await
        .expect("websocket");

    for frame in [
        json!({"type": "command", "id": "c1", "command": "look"}),
        json!({"type": "chat", "id": "c2", "channel": "say", "message": "hello"}),
        json!({"type": "command", "id": "c3", "command": "go", "args": ["north"]}),
        json!({"type": "command", "id": "c4", "command": "dance"}),
        // The fence: the world answers commands in the order of the command
        // stream, so any second answer to c1..c4 would come before this one's.
        json!({"type": "command", "id": "fence", "command": "look"}),
    ] {
        ws.send(Message::text(frame.to_string()))
            .await
            .expect("send");
    }

    let mut answers: HashMap<String, Vec<Value>> = HashMap::new();
    let mut order = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !answers.contains_key("fence") {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(msg))) => msg,
            other => {
                panic!("no answer to the fence within 10 s (got {other:?}); answers: {answers:?}")
            }
        };
        let Ok(text) = msg.to_text() else { continue };
        let frame: Value = serde_json::from_str(text).expect("JSON frame");
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
        ["c1", "c2", "c3", "c4", "fence"],
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

    let members: Value = reqwest::Client::new()
        .get(format!("http://{addr}/v1/rooms/square/members"))
        .bearer_auth(
            app.auth
                .issue("test", mythos_broker::auth::Role::Service)
                .expect("token")
                .0,
        )
        .send()
        .await
        .expect("members")
        .json()
        .await
        .expect("members body");
    assert_eq!(members["members"], json!(["alice"]));
    running.shutdown().await;
}
