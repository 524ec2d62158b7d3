//! The request/response surface over real HTTP and the WebSocket message
//! protocol, on both engines: publish validation, idempotency, accounts and
//! login, roles, message validation, rate limits, commands upstream.

mod support;

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{json, Value};
use support::broker::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

on_both_engines!(
    publish_bad_input_is_refused_and_appends_nothing,
    publish_is_idempotent_by_id,
    publish_to_players_and_rooms,
    accounts_login_and_refresh,
    roles_and_missing_tokens,
    ws_invalid_messages_get_errors_and_keep_the_connection,
    ws_rate_limit_and_sustained_abuse,
    ws_commands_reach_the_command_stream,
    health_and_unknown_routes,
    origins_are_checked_when_configured,
    login_attempts_are_rate_limited,
    edge_inputs_named_by_the_contract,
    message_limits_are_configurable,
    hostile_input_gets_a_defined_answer_and_others_are_served,
    envelope_has_every_key_and_a_utc_millisecond_timestamp,
    cursor_answers_exact_bodies,
    jwt_secret_rotation_accepts_the_previous_secret,
);

/// A strict `YYYY-MM-DDTHH:MM:SS.mmmZ` (RFC 3339, UTC, milliseconds).
fn assert_timestamp(ts: &str) {
    let b = ts.as_bytes();
    let shape = b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        });
    assert!(shape, "timestamp {ts:?} is not YYYY-MM-DDTHH:MM:SS.mmmZ");
    let num = |r: std::ops::Range<usize>| ts[r].parse::<u32>().expect("digits");
    assert!(
        (1..=12).contains(&num(5..7))
            && (1..=31).contains(&num(8..10))
            && num(11..13) < 24
            && num(14..16) < 60
            && num(17..19) <= 60,
        "timestamp {ts:?} has a field out of range"
    );
}

/// An envelope as received, checked whole: `timestamp` strictly formatted
/// and between `before` and `after` (fixed width: text order is time
/// order), WebSocket's `"type":"event"`, then every other key exactly as
/// `want` (a missing key is not a `null` one).
fn assert_envelope(mut got: Value, want: &Value, ws: bool, before: &str, after: &str) {
    let o = got.as_object_mut().expect("an envelope is an object");
    let ts = o.remove("timestamp").expect("timestamp");
    let ts = ts.as_str().expect("timestamp is a string");
    assert_timestamp(ts);
    assert!(
        before <= ts && ts <= after,
        "timestamp {ts} not within the publish ({before} .. {after})"
    );
    if ws {
        assert_eq!(o.remove("type"), Some(json!("event")));
    }
    assert_eq!(&got, want);
}

/// protocol.md "Events": every envelope carries exactly `event_type`,
/// `sequence_number`, `timestamp` (RFC 3339 UTC, milliseconds, `Z`),
/// `player_id`, `room_id`, `data`, `id`; `room_id` and `id` are present as
/// `null` when absent. Over SSE and WebSocket, live and replayed.
async fn envelope_has_every_key_and_a_utc_millisecond_timestamp(kind: Kind) {
    let n = Node::start(kind, |_| {}).await;
    let tok = player_token("alice");
    let (mut live_ws, _) = n.ws_player("alice", None).await;
    let mut live_sse = n.sse("/v1/events", &tok, None).await.expect("sse");
    let before = mythos_broker::protocol::now_rfc3339();
    assert_eq!(
        n.publish(json!({"player": "alice"}), "plain", json!({"x": 1}))
            .await,
        vec![("alice".to_string(), 1)]
    );
    let (s, b) = n
        .post(
            "/v1/publish",
            Some(&service_token()),
            Body::Json(json!({"to": {"player": "alice"}, "event_type": "tagged",
                "data": {"y": [2]}, "room_id": "tavern", "id": "pub-7"})),
        )
        .await;
    assert_eq!((s, deliveries(&b)), (200, vec![("alice".to_string(), 2)]));
    let after = mythos_broker::protocol::now_rfc3339();
    let want = [
        json!({"event_type": "plain", "sequence_number": 1, "player_id": "alice",
            "room_id": null, "data": {"x": 1}, "id": null}),
        json!({"event_type": "tagged", "sequence_number": 2, "player_id": "alice",
            "room_id": "tavern", "data": {"y": [2]}, "id": "pub-7"}),
    ];
    // Replayed: from the log.
    let (mut replay_ws, _) = n.ws_player("alice", Some(0)).await;
    let mut replay_sse = n
        .sse("/v1/events?last_event_id=0", &tok, None)
        .await
        .expect("sse");
    for w in &want {
        for ws in [&mut live_ws, &mut replay_ws] {
            let got = ws.next_event().await.expect("an event");
            assert_envelope(got, w, true, &before, &after);
        }
        for sse in [&mut live_sse, &mut replay_sse] {
            let got = sse.next_event().await.expect("an event");
            assert_eq!(got.event.as_deref(), w["event_type"].as_str());
            assert_envelope(got.data, w, false, &before, &after);
        }
    }
}

/// `GET /v1/cursor` (our extension), exact bodies: an unknown player; after
/// publishes; after acks (`oldest_available` moves past them, to `last + 1`
/// when nothing is retained); after the count cap trimmed (5 kept).
async fn cursor_answers_exact_bodies(kind: Kind) {
    let n = Node::start(kind, |c| c.max_backlog = 5).await;
    let cursor = |p: &str| {
        let tok = player_token(p);
        let n = &n;
        async move {
            n.request(reqwest::Method::GET, "/v1/cursor", Some(&tok))
                .await
        }
    };
    let want = |p: &str, last: u64, acked: u64, oldest: u64| {
        (
            200,
            json!({"player_id": p, "last_sequence_number": last, "acked": acked,
                "oldest_available": oldest}),
        )
    };
    let ack = |seq: u64| {
        let n = &n;
        async move {
            let (s, b) = n
                .post(
                    "/v1/ack",
                    Some(&player_token("alice")),
                    Body::Json(json!({"sequence_number": seq})),
                )
                .await;
            assert_eq!(s, 200, "{b}");
        }
    };
    assert_eq!(cursor("nobody").await, want("nobody", 0, 0, 1));
    assert_eq!(n.publish_n("alice", 3).await, range(1, 3));
    assert_eq!(cursor("alice").await, want("alice", 3, 0, 1));
    ack(2).await;
    assert_eq!(cursor("alice").await, want("alice", 3, 2, 3));
    ack(3).await;
    assert_eq!(cursor("alice").await, want("alice", 3, 3, 4));
    // 4..12 appended, the cap keeps 8..12.
    assert_eq!(n.publish_n("alice", 9).await, range(4, 12));
    assert_eq!(cursor("alice").await, want("alice", 12, 3, 8));
    ack(9).await;
    assert_eq!(cursor("alice").await, want("alice", 12, 9, 10));
    // Asking created nothing.
    assert_eq!(cursor("nobody").await, want("nobody", 0, 0, 1));
}

/// Issue 11's hostile input, each with its defined answer, while a
/// connected player keeps receiving (checked by sequence number at the end):
/// a tampered token, an 8 KiB+ token, 10 000-deep JSON bodies on every JSON
/// route, a non-UTF-8 text frame (close 1007), and the 431 hyper gives a
/// header block too large to read.
async fn hostile_input_gets_a_defined_answer_and_others_are_served(kind: Kind) {
    let n = Node::start(kind, |_| {}).await;
    let (mut bystander, _) = n.ws_player("carol", None).await;
    // Tokens.
    let good = player_token("alice");
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    let claims = parts[1].replace('A', "B");
    parts[1] = if claims == parts[1] {
        format!("{}A", &parts[1][..parts[1].len() - 1])
    } else {
        claims
    };
    let tampered = parts.join(".");
    let huge = "a".repeat(9 * 1024);
    for (token, why) in [(&tampered, "invalid token"), (&huge, "longer than 8 KiB")] {
        let (s, b) = n
            .request(reqwest::Method::GET, "/v1/cursor", Some(token))
            .await;
        assert_eq!(
            (s, &b["error"]["code"]),
            (401, &json!("unauthorized")),
            "{b}"
        );
        let message = b["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(why), "{b}");
    }
    // 10 000-deep JSON on every route that reads a JSON body.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    for (path, token) in [
        ("/v1/publish", Some(service_token())),
        ("/v1/ack", Some(player_token("alice"))),
        ("/v1/auth/login", None),
        ("/v1/admin/users", Some(admin_token())),
    ] {
        let (s, b) = n
            .post(path, token.as_deref(), Body::Raw(deep.clone()))
            .await;
        assert_eq!(s, 400, "{path}: {b}");
        assert!(b["error"]["code"].is_string(), "{path}: {b}");
    }
    // A text frame that is not UTF-8 fails that connection with 1007.
    let (mut ws, _) = n.ws_player("alice", None).await;
    use tokio_tungstenite::tungstenite::protocol::frame::{coding::Data, coding::OpCode, Frame};
    let bad = Frame::message(vec![0xff, 0xfe, 0xfd], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(bad)).await;
    assert_eq!(ws.end().await, WsEnd::Close(1007, "invalid_utf8".into()));
    // A header block too large to read: hyper's 431, connection closed.
    let resp = Broker::http()
        .get(format!("{}/v1/cursor", n.base))
        .header("x-junk", "j".repeat(512 * 1024))
        .send()
        .await;
    assert_eq!(resp.expect("an answer").status().as_u16(), 431);
    // The bystander was served throughout.
    assert_eq!(n.publish_n("carol", 2).await, vec![1, 2]);
    assert_eq!(bystander.seqs(2).await, vec![1, 2]);
}

async fn origins_are_checked_when_configured(kind: Kind) {
    let n = Node::start(kind, |c| c.allowed_origins = "https://game.example".into()).await;
    let q = format!("/v1/ws?token={}", player_token("alice"));
    assert_eq!(
        n.ws(&q, &[("origin", "https://evil.example")]).await.err(),
        Some(403)
    );
    n.ws(&q, &[("origin", "https://game.example")])
        .await
        .expect("allowed origin");
    n.ws(&q, &[]).await.expect("no Origin (not a browser)");
    let resp = Broker::http()
        .request(reqwest::Method::OPTIONS, format!("{}/v1/publish", n.base))
        .header("origin", "https://game.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .expect("preflight");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://game.example")
    );
}

async fn login_attempts_are_rate_limited(kind: Kind) {
    let n = Node::start(kind, |_| {}).await;
    let mut codes = Vec::new();
    for _ in 0..40 {
        let (s, _) = n
            .post(
                "/v1/auth/login",
                None,
                Body::Json(json!({"username": "eve", "password": "guess"})),
            )
            .await;
        codes.push(s);
    }
    assert!(codes[..10].iter().all(|&s| s == 401), "{codes:?}");
    assert!(
        codes.contains(&429),
        "too-fast logins are refused: {codes:?}"
    );
}

async fn publish_bad_input_is_refused_and_appends_nothing(kind: Kind) {
    let n = Node::start(kind, |c| c.max_event_bytes = 1024).await;
    let svc = service_token();
    assert_eq!(n.publish_n("alice", 1).await, vec![1]);
    let cases: Vec<(Body, u16, &str)> = vec![
        (
            Body::Json(json!({"to": {"team": "x"}, "event_type": "t", "data": 1})),
            400,
            "invalid_target",
        ),
        (
            Body::Json(json!({"to": {"player": "a", "room": "b"}, "event_type": "t", "data": 1})),
            400,
            "invalid_target",
        ),
        (
            Body::Json(json!({"to": {"players": []}, "event_type": "t", "data": 1})),
            400,
            "invalid_target",
        ),
        (
            Body::Json(json!({"to": {"player": "alice"}, "event_type": "", "data": 1})),
            400,
            "invalid_event_type",
        ),
        (
            Body::Json(json!({"to": {"player": "al ice"}, "event_type": "t", "data": 1})),
            400,
            "invalid_request",
        ),
        (
            Body::Json(json!({"to": {"player": "x".repeat(65)}, "event_type": "t", "data": 1})),
            400,
            "invalid_request",
        ),
        (
            Body::Json(json!({"to": {"players": ["alice", "b/c"]}, "event_type": "t", "data": 1})),
            400,
            "invalid_request",
        ),
        (
            Body::Json(json!({"to": {"player": "alice"}, "data": 1})),
            400,
            "invalid_request",
        ),
        (Body::Raw("{not json".into()), 400, "invalid_json"),
        (Body::Raw("[1,2]".into()), 400, "invalid_request"),
        (
            Body::Json(
                json!({"to": {"player": "alice"}, "event_type": "t", "data": "x".repeat(2000)}),
            ),
            413,
            "too_large",
        ),
        (Body::Raw("x".repeat(256 * 1024)), 413, "too_large"),
    ];
    for (body, status, code) in cases {
        let (s, b) = n.post("/v1/publish", Some(&svc), body).await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (status, Some(code)),
            "{b}"
        );
        assert!(b["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(
        n.publish_n("alice", 1).await,
        vec![2],
        "the next good publish gets the next number"
    );
}

async fn publish_is_idempotent_by_id(kind: Kind) {
    let n = Node::start(kind, |_| {}).await;
    let svc = service_token();
    let body = json!({"to": {"players": ["alice", "bob"]}, "event_type": "loot", "data": {"gold": 5}, "id": "pub-1"});
    let (s1, b1) = n
        .post("/v1/publish", Some(&svc), Body::Json(body.clone()))
        .await;
    let (s2, b2) = n.post("/v1/publish", Some(&svc), Body::Json(body)).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(b1, b2, "a repeat returns the same deliveries");
    assert_eq!(
        deliveries(&b1),
        vec![("alice".into(), 1), ("bob".into(), 1)]
    );
    assert_eq!(
        n.publish_n("alice", 1).await,
        vec![2],
        "the repeat appended nothing"
    );
    let (mut ws, _) = n.ws_player("alice", Some(0)).await;
    let e = ws.next_event().await.expect("event");
    assert_eq!(
        (e["id"].as_str(), e["data"]["gold"].as_u64()),
        (Some("pub-1"), Some(5))
    );
}

async fn publish_to_players_and_rooms(kind: Kind) {
    let n = Node::start(kind, |_| {}).await;
    let d = n
        .publish(json!({"players": ["a", "b", "c"]}), "t", json!(null))
        .await;
    assert_eq!(d, vec![("a".into(), 1), ("b".into(), 1), ("c".into(), 1)]);
    let d = n.publish(json!({"room": "empty"}), "t", json!(null)).await;
    assert!(d.is_empty(), "a room without members gets nothing");
    let svc = service_token();
    for p in ["a", "b"] {
        n.request(
            reqwest::Method::PUT,
            &format!("/v1/rooms/hall/members/{p}"),
            Some(&svc),
        )
        .await;
    }
    let d = n.publish(json!({"room": "hall"}), "t", json!(null)).await;
    // a: 1 (players), 2 (player_entered for b), 3; b: 1, 2.
    assert_eq!(d, vec![("a".into(), 3), ("b".into(), 2)]);
}

async fn accounts_login_and_refresh(kind: Kind) {
    let n = Node::start(kind, |_| {}).await;
    let admin = admin_token();
    let user = json!({"username": "dora", "password": "correct horse"});
    let (s, b) = n
        .post("/v1/admin/users", Some(&admin), Body::Json(user.clone()))
        .await;
    assert_eq!((s, b["username"].as_str()), (201, Some("dora")));
    let (s, b) = n
        .post("/v1/admin/users", Some(&admin), Body::Json(user.clone()))
        .await;
    assert_eq!((s, b["error"]["code"].as_str()), (409, Some("user_exists")));
    let (s, b) = n
        .post(
            "/v1/admin/users",
            Some(&player_token("x")),
            Body::Json(user.clone()),
        )
        .await;
    assert_eq!((s, b["error"]["code"].as_str()), (403, Some("forbidden")));
    let (s, _) = n
        .post(
            "/v1/admin/users",
            Some(&admin),
            Body::Json(json!({"username": "bad name", "password": "p"})),
        )
        .await;
    assert_eq!(s, 400);

    let (s, b) = n.post("/v1/auth/login", None, Body::Json(user)).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (b["token_type"].as_str(), b["player_id"].as_str()),
        (Some("Bearer"), Some("dora"))
    );
    assert_eq!(b["expires_in"].as_u64(), Some(3600));
    let token = b["access_token"].as_str().expect("token").to_string();
    let (s, c) = n
        .request(reqwest::Method::GET, "/v1/cursor", Some(&token))
        .await;
    assert_eq!((s, c["player_id"].as_str()), (200, Some("dora")));

    for (u, p) in [
        ("dora", "wrong"),
        ("nobody", "correct horse"),
        ("bad name!", "x"),
    ] {
        let (s, b) = n
            .post(
                "/v1/auth/login",
                None,
                Body::Json(json!({"username": u, "password": p})),
            )
            .await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (401, Some("invalid_credentials")),
            "{u}"
        );
    }
    let (s, b) = n
        .post("/v1/auth/refresh", Some(&token), Body::Raw(String::new()))
        .await;
    assert_eq!((s, b["player_id"].as_str()), (200, Some("dora")));
    assert!(b["access_token"].as_str().is_some_and(|t| !t.is_empty()));
    let (s, b) = n
        .post("/v1/auth/refresh", Some("nope"), Body::Raw(String::new()))
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
}

/// `MYTHOS_JWT_SECRET_PREVIOUS`: during a rotation window tokens signed with
/// the previous secret still work (HTTP, SSE, WebSocket); login signs with the
/// new one; a token of neither secret is refused 401.
async fn jwt_secret_rotation_accepts_the_previous_secret(kind: Kind) {
    const NEW: &str = "the-rotated-in-secret-0123456789";
    let n = Node::start(kind, |c| {
        c.jwt_secret = Some(NEW.into());
        c.jwt_secret_previous = Some(SECRET.into());
    })
    .await;
    // Tokens of the previous secret (the support helpers sign with SECRET).
    assert_eq!(n.publish_n("rot", 2).await, range(1, 2));
    let (mut ws, _) = n.ws_player("rot", None).await;
    assert_eq!(ws.seqs(2).await, range(1, 2));
    let mut sse = n
        .sse("/v1/events", &player_token("rot"), None)
        .await
        .expect("an SSE stream with a previous-secret token");
    assert_eq!(sse.seqs(2).await, range(1, 2));
    let user = json!({"username": "rota", "password": "pw-rotation"});
    let (s, _) = n
        .post(
            "/v1/admin/users",
            Some(&admin_token()),
            Body::Json(user.clone()),
        )
        .await;
    assert_eq!(s, 201);
    // New tokens are signed with the current secret.
    let (s, b) = n.post("/v1/auth/login", None, Body::Json(user)).await;
    assert_eq!(s, 200, "{b}");
    let token = b["access_token"].as_str().expect("token");
    let key = |k: &str| jsonwebtoken::DecodingKey::from_secret(k.as_bytes());
    let v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    assert!(jsonwebtoken::decode::<mythos_broker::auth::Claims>(token, &key(NEW), &v).is_ok());
    assert!(jsonwebtoken::decode::<mythos_broker::auth::Claims>(token, &key(SECRET), &v).is_err());
    let (s, c) = n
        .request(reqwest::Method::GET, "/v1/cursor", Some(token))
        .await;
    assert_eq!((s, c["player_id"].as_str()), (200, Some("rota")));
    // A token of a third secret: 401.
    let now = mythos_broker::auth::now_secs();
    let claims = mythos_broker::auth::Claims {
        sub: "rot".into(),
        exp: now + 600,
        iat: Some(now),
        role: mythos_broker::auth::Role::Service,
    };
    let stranger = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"neither-secret-0123456789"),
    )
    .expect("token");
    let body = json!({"to": {"player": "rot"}, "event_type": "t", "data": 1});
    let (s, b) = n
        .post("/v1/publish", Some(&stranger), Body::Json(body))
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
}

async fn roles_and_missing_tokens(kind: Kind) {
    let n = Node::start(kind, |_| {}).await;
    let pub_body = || Body::Json(json!({"to": {"player": "a"}, "event_type": "t", "data": 1}));
    assert_eq!(n.post("/v1/publish", None, pub_body()).await.0, 401);
    assert_eq!(
        n.post("/v1/publish", Some(&player_token("a")), pub_body())
            .await
            .0,
        403
    );
    assert_eq!(
        n.post("/v1/publish", Some(&admin_token()), pub_body())
            .await
            .0,
        200
    );
    assert_eq!(
        n.post(
            "/v1/ack",
            Some(&service_token()),
            Body::Json(json!({"sequence_number": 1}))
        )
        .await
        .0,
        403
    );
    assert_eq!(
        n.request(
            reqwest::Method::GET,
            "/v1/rooms/x/members",
            Some(&player_token("a"))
        )
        .await
        .0,
        403
    );
}

async fn ws_invalid_messages_get_errors_and_keep_the_connection(kind: Kind) {
    let n = Node::start(kind, |c| c.rate_burst = 1000).await;
    let (mut ws, _) = n.ws_player("alice", None).await;
    let cases: Vec<(Message, &str)> = vec![
        (
            Message::text(format!(
                r#"{{"type":"chat","id":"big","channel":"say","message":"{}"}}"#,
                "x".repeat(9000)
            )),
            "too_large",
        ),
        (Message::text("{nope"), "invalid_message"),
        (Message::text("[1,2]"), "invalid_message"),
        (Message::text(r#"{"type":"dance"}"#), "invalid_message"),
        (Message::binary(vec![1u8, 2, 3]), "invalid_message"),
        (
            Message::text(r#"{"type":"command","id":"c1","command":"Look!"}"#),
            "invalid_message",
        ),
        (
            Message::text(format!(
                r#"{{"type":"command","id":"c1","command":"{}"}}"#,
                "a".repeat(65)
            )),
            "invalid_message",
        ),
        (
            Message::text(format!(
                r#"{{"type":"command","id":"c1","command":"go","args":{}}}"#,
                json!(vec!["x"; 17])
            )),
            "invalid_message",
        ),
        (
            Message::text(format!(
                r#"{{"type":"ping","x":{}{}}}"#,
                "[".repeat(20),
                "]".repeat(20)
            )),
            "invalid_message",
        ),
        (
            Message::text(r#"{"type":"ack","sequence_number":"7"}"#),
            "invalid_message",
        ),
    ];
    for (msg, code) in cases {
        let id = msg.to_text().ok().and_then(|t| {
            serde_json::from_str::<Value>(t)
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_string))
        });
        ws.send(msg).await;
        let e = ws.until_type("error").await.expect("error frame");
        assert_eq!(e["code"].as_str(), Some(code), "{e}");
        // Every error about a message with an `id` names it.
        assert_eq!(e["id"].as_str(), id.as_deref(), "{e}");
    }
    ws.send_json(json!({"type": "command", "id": "c9", "command": "Bad"}))
        .await;
    let e = ws.until_type("error").await.expect("error");
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("invalid_message"), Some("c9"))
    );
    ws.send_json(json!({"type": "ping"})).await;
    assert_eq!(
        ws.until_type("pong").await.expect("still open")["type"],
        "pong"
    );
    // Above the hard limit the connection is closed with 1009.
    ws.send(Message::text("y".repeat(70 * 1024))).await;
    let end = ws.end().await;
    assert!(matches!(end, WsEnd::Close(1009, _)), "{end:?}");
}

async fn ws_rate_limit_and_sustained_abuse(kind: Kind) {
    let n = Node::start(kind, |_| {}).await;
    let (mut ws, _) = n.ws_player("alice", None).await;
    for _ in 0..45 {
        ws.send_json(json!({"type": "ping"})).await;
    }
    let (mut pongs, mut limited, mut retry_after) = (0, 0, 0);
    for _ in 0..45 {
        let v = ws.next_json().await.expect("reply");
        match v["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") => {
                assert_eq!(v["code"], "rate_limited");
                let ms = v["retry_after_ms"].as_u64().unwrap_or(0);
                assert!(ms > 0 && ms <= 1000, "{v}");
                retry_after = ms;
                limited += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        (20..=22).contains(&pongs),
        "burst of 20 allowed, got {pongs}"
    );
    assert_eq!(pongs + limited, 45);
    // The connection stays open after a short burst, and a message is
    // accepted again once `retry_after_ms` (of the last refusal) has passed ...
    tokio::time::sleep(Duration::from_millis(retry_after)).await;
    ws.send_json(json!({"type": "ping"})).await;
    assert_eq!(ws.until_type("pong").await.expect("open")["type"], "pong");
    // ... but sustained abuse closes it with 1008.
    let mut closed = None;
    for _ in 0..400 {
        if ws
            .ws
            .send(Message::text(r#"{"type":"ping"}"#))
            .await
            .is_err()
        {
            break;
        }
    }
    while closed.is_none() {
        if let Err(e) = ws.next_json().await {
            closed = Some(e);
        }
    }
    assert_eq!(closed, Some(WsEnd::Close(1008, "policy_violation".into())));
}

async fn ws_commands_reach_the_command_stream(kind: Kind) {
    let n = Node::start(kind, |_| {}).await;
    let engine = n.app().engine().clone();
    // A game server's group, created before any command arrives.
    assert!(engine
        .read_commands("game", "g1", 0, 10, Duration::from_millis(1))
        .await
        .expect("read")
        .is_empty());
    let (mut ws, welcome) = n.ws_player("alice", None).await;
    let session = welcome["session_id"].as_str().expect("session").to_string();
    ws.send_json(json!({"type": "command", "id": "c1", "command": "look", "args": ["north"]}))
        .await;
    ws.send_json(json!({"type": "chat", "id": "c2", "channel": "say", "message": "hello"}))
        .await;
    for id in ["c1", "c2"] {
        let a = ws.until_type("command_accepted").await.expect("accepted");
        assert_eq!(a["id"], id);
    }
    // A client that numbers its messages per connection uses `c1` again on
    // the next one: every accepted message is appended, as the contract says.
    drop(ws);
    let (mut ws, _) = n.ws_player("alice", None).await;
    ws.send_json(json!({"type": "command", "id": "c1", "command": "attack", "args": ["orc"]}))
        .await;
    let a = ws.until_type("command_accepted").await.expect("accepted");
    assert_eq!(a["id"], "c1");
    let mut got = Vec::new();
    while got.len() < 3 {
        let more = engine
            .read_commands("game", "g1", 0, 10, Duration::from_secs(5))
            .await
            .expect("read");
        assert!(!more.is_empty(), "accepted commands missing: {got:?}");
        got.extend(more);
    }
    assert_eq!(got.len(), 3, "{got:?}");
    let c = &got[0].command;
    assert_eq!(
        (
            c.player_id.as_str(),
            c.kind.as_str(),
            c.id.as_str(),
            c.session_id.as_str()
        ),
        ("alice", "command", "c1", session.as_str())
    );
    let payload: Value = serde_json::from_str(&c.payload).expect("payload JSON");
    assert_eq!(payload, json!({"command": "look", "args": ["north"]}));
    let chat: Value = serde_json::from_str(&got[1].command.payload).expect("payload JSON");
    assert_eq!(chat, json!({"channel": "say", "message": "hello"}));
    let again: Value = serde_json::from_str(&got[2].command.payload).expect("payload JSON");
    assert_eq!(
        (got[2].command.id.as_str(), again),
        ("c1", json!({"command": "attack", "args": ["orc"]}))
    );
    assert_ne!(got[2].command.session_id, session);
    let ids: Vec<String> = got.iter().map(|e| e.entry_id.clone()).collect();
    engine.ack_commands("game", 0, &ids).await.expect("ack");
}

async fn health_and_unknown_routes(kind: Kind) {
    let n = Node::start(kind, |_| {}).await;
    assert_eq!(
        n.request(reqwest::Method::GET, "/healthz", None).await.0,
        200
    );
    assert_eq!(
        n.request(reqwest::Method::GET, "/readyz", None).await,
        (200, json!({"status": "ready"}))
    );
    let (s, b) = n.request(reqwest::Method::GET, "/v1/nothing", None).await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("not_found")));
    let (s, b) = n
        .request(
            reqwest::Method::DELETE,
            "/v1/publish",
            Some(&service_token()),
        )
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    n.publish_n("a", 1).await;
    let text = n.metrics_text().await;
    assert!(text.contains("mythos_published_total"), "{text}");
}

/// Inputs at the edges the contract names: a missing token on a POST is
/// `401` whatever the body; chunked bodies are read; a resume point or ack
/// past 64 bits means "beyond the last"; a `Last-Event-ID` that is not a
/// number is `invalid_resume_point`; the subprotocol list may come as
/// several header lines, or as the token alone.
async fn edge_inputs_named_by_the_contract(kind: Kind) {
    let n = Node::start(kind, |_| {}).await;
    let http = Broker::http();
    // No token, no body: authentication answers first.
    for path in ["/v1/publish", "/v1/admin/users", "/v1/ack"] {
        let r = http
            .post(format!("{}{path}", n.base))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), 401, "{path}");
        let b: Value = r.json().await.expect("json");
        assert_eq!(b["error"]["code"], "unauthorized", "{path}");
    }
    n.publish_n("alice", 3).await;
    // A chunked body (no Content-Length).
    let chunks = futures_util::stream::iter(vec![
        Ok::<_, std::io::Error>(r#"{"sequence_"#.to_string()),
        Ok(r#"number": 1}"#.to_string()),
    ]);
    let r = http
        .post(format!("{}/v1/ack", n.base))
        .bearer_auth(player_token("alice"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("chunked ack");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().await.expect("json")["acked"], 1);
    // An ack past 64 bits is clamped to the last sequence number.
    let (s, b) = n
        .post(
            "/v1/ack",
            Some(&player_token("alice")),
            Body::Raw(r#"{"sequence_number": 18446744073709551616}"#.into()),
        )
        .await;
    assert_eq!((s, &b["acked"]), (200, &json!(3)), "{b}");
    for bad in [r#"{"sequence_number": -1}"#, r#"{"sequence_number": 1.5}"#] {
        let (s, b) = n
            .post(
                "/v1/ack",
                Some(&player_token("alice")),
                Body::Raw(bad.into()),
            )
            .await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (400, Some("invalid_request"))
        );
    }
    // A resume point past 64 bits: nothing to replay (the player's two
    // earlier events are not sent), then live.
    let huge = "99999999999999999999";
    for (player, path, header) in [
        ("h1", "/v1/events".to_string(), Some(huge)),
        ("h2", format!("/v1/events?last_event_id={huge}"), None),
    ] {
        n.publish_n(player, 2).await;
        let mut sse = n
            .sse(&path, &player_token(player), header)
            .await
            .expect("stream opens");
        assert_eq!(n.publish_n(player, 1).await, vec![3]);
        let ev = sse.next_event().await.expect("the live event");
        assert_eq!(ev.data["sequence_number"], 3, "{path}");
    }
    n.publish_n("carol", 2).await;
    let mut ws = n
        .ws(
            &format!("/v1/ws?token={}&since={huge}", player_token("carol")),
            &[],
        )
        .await
        .expect("ws opens");
    assert_eq!(ws.next_json().await.expect("welcome")["type"], "welcome");
    assert_eq!(n.publish_n("carol", 1).await, vec![3]);
    assert_eq!(ws.next_event().await.expect("live")["sequence_number"], 3);
    // An empty Last-Event-ID is no resume point: the acked cursor is (1 of
    // 3 acked: the replay starts at 2, where "0" would have led to a resync).
    n.publish_n("erin", 3).await;
    let (st, _) = n
        .post(
            "/v1/ack",
            Some(&player_token("erin")),
            Body::Json(json!({"sequence_number": 1})),
        )
        .await;
    assert_eq!(st, 200);
    let mut sse = n
        .sse("/v1/events", &player_token("erin"), Some(""))
        .await
        .expect("an empty Last-Event-ID is none");
    let first = sse.next_event().await.expect("replay");
    assert_eq!(
        (first.event.as_deref(), &first.data["sequence_number"]),
        (Some("tick"), &json!(2))
    );
    // A token that is not valid yet (`nbf` in the future).
    let now = mythos_broker::auth::now_secs();
    let early = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "bob", "exp": now + 600, "nbf": now + 300, "role": "player"}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token");
    let (s, b) = n
        .request(reqwest::Method::GET, "/v1/cursor", Some(&early))
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    // A Last-Event-ID that is not text at all.
    let r = http
        .get(format!("{}/v1/events", n.base))
        .bearer_auth(player_token("bob"))
        .header(
            "last-event-id",
            reqwest::header::HeaderValue::from_bytes(&[0xC3, 0xA9]).expect("obs-text"),
        )
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 400);
    let b: Value = r.json().await.expect("json");
    assert_eq!(b["error"]["code"], "invalid_resume_point");
    // The subprotocol list as two header lines, and the token alone.
    let bearer = format!("bearer.{}", player_token("dave"));
    let mut req = format!("{}/v1/ws", n.ws_base)
        .into_client_request()
        .expect("request");
    req.headers_mut().append(
        "sec-websocket-protocol",
        "mythos.v1".parse().expect("value"),
    );
    req.headers_mut()
        .append("sec-websocket-protocol", bearer.parse().expect("value"));
    let (_ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("split protocol lines are one list");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes()),
        Some(&b"mythos.v1"[..])
    );
    let c = n
        .ws("/v1/ws", &[("sec-websocket-protocol", bearer.as_str())])
        .await
        .expect("the token alone as the offered protocol");
    assert_eq!(c.protocol.as_deref(), Some(bearer.as_str()));
}

/// The message limits the contract calls configurable answer by their settings.
async fn message_limits_are_configurable(kind: Kind) {
    let n = Node::start(kind, |c| {
        c.ws_max_depth = 3;
        c.ws_max_command = 4;
        c.ws_max_args = 1;
    })
    .await;
    let (mut ws, _) = n.ws_player("alice", None).await;
    for (bad, why) in [
        (
            json!({"type": "command", "id": "a", "command": "look", "args": ["n", "e"]}),
            "args",
        ),
        (
            json!({"type": "command", "id": "b", "command": "lookx"}),
            "command",
        ),
        (json!({"type": "ping", "pad": [[[1]]]}), "depth"),
    ] {
        ws.send_json(bad).await;
        let e = ws.until_type("error").await.expect("error");
        assert_eq!(e["code"], "invalid_message", "{why}: {e}");
    }
    ws.send_json(json!({"type": "ping", "pad": [[1]]})).await;
    assert_eq!(ws.until_type("pong").await.expect("pong")["type"], "pong");
    ws.send_json(json!({"type": "command", "id": "d", "command": "look", "args": ["n"]}))
        .await;
    let a = ws.until_type("command_accepted").await.expect("accepted");
    assert_eq!(a["id"], "d");
}

/// Slowloris (issue 11): a client that sends its headers, or its body, too
/// slowly is cut after `MYTHOS_REQUEST_TIMEOUT` (headers: the connection is
/// closed; body: `408 request_timeout`), while everyone else is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_senders_are_cut_and_others_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let n = Node::start(Kind::Memory, |c| {
        c.request_timeout = std::time::Duration::from_millis(400)
    })
    .await;
    let addr = n.base.trim_start_matches("http://").to_string();
    // Headers that never finish: on a plain GET, on an SSE request, on an upgrade.
    let partials = [
        "GET /healthz HTTP/1.1\r\nHost: x\r\n".to_string(),
        format!(
            "GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n",
            player_token("a")
        ),
        "GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n".to_string(),
    ];
    for partial in partials {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        s.write_all(partial.as_bytes()).await.expect("write");
        let t0 = std::time::Instant::now();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(PATIENCE, s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the server closes a slow header sender");
        let waited = t0.elapsed();
        assert!(
            waited >= std::time::Duration::from_millis(300)
                && waited < std::time::Duration::from_secs(5),
            "closed after the request timeout, not before or much later: {waited:?}"
        );
        // Others are served meanwhile.
        assert_eq!(
            n.request(reqwest::Method::GET, "/healthz", None).await.0,
            200
        );
    }
    // A body that never finishes: 408 once the timeout passes.
    let mut s = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"to\":",
        service_token()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let got = tokio::time::timeout(PATIENCE, s.read(&mut buf))
        .await
        .expect("an answer")
        .expect("read");
    let text = String::from_utf8_lossy(&buf[..got]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    assert_eq!(
        n.request(reqwest::Method::GET, "/healthz", None).await.0,
        200
    );
}

/// An embedder that skips `main` gets the same checks: a bad setting is
/// refused by `App::new` (a usage error naming it), not a panic later (a
/// zero interval would panic in `tokio::time::interval`).
#[tokio::test]
async fn app_new_refuses_a_bad_config() {
    use mythos_broker::config::Config;
    use mythos_broker::state::{App, StartError};
    let mut c = Config::for_tests("a-test-secret-0123456789");
    c.keepalive = Duration::ZERO;
    match App::new(c).await {
        Err(StartError::Config(msg)) => assert!(msg.contains("MYTHOS_KEEPALIVE"), "{msg}"),
        Err(e) => panic!("a usage error, not {e}"),
        Ok(_) => panic!("a zero keep-alive interval must be refused"),
    }
    let mut c = Config::for_tests("short");
    c.dev = false;
    assert!(matches!(App::new(c).await, Err(StartError::Config(_))));
}

/// An SSE stream is written by its session straight to the socket after the
/// head (issue 19): the head says chunked, every chunk is framed right, and a
/// client that talks on its stream has up to `MAX_CLIENT_BYTES` read and
/// dropped (the stream goes on) and is then closed, which frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_stream_is_chunked_and_a_talking_client_is_cut() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let n = Node::start(Kind::Memory, |c| c.max_player_connections = 1).await;
    let addr = n.base.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        player_token("alice")
    );
    s.write_all(head.as_bytes()).await.expect("write");
    // Reads until `want` is in what came, within PATIENCE; returns it all.
    async fn until(s: &mut tokio::net::TcpStream, got: &mut Vec<u8>, want: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !String::from_utf8_lossy(got).contains(want) {
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no {want:?} within {PATIENCE:?}: {:?}",
                        String::from_utf8_lossy(got)
                    )
                })
                .expect("read");
            assert!(
                n > 0,
                "closed before {want:?}: {:?}",
                String::from_utf8_lossy(got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    }
    let mut got = Vec::new();
    until(&mut s, &mut got, "\r\n\r\nd\r\nretry: 1000\n\n\r\n").await;
    let text = String::from_utf8_lossy(&got).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
    assert!(
        text.contains("content-type: text/event-stream\r\n"),
        "{text}"
    );
    // A few bytes from the client are dropped; the stream goes on.
    s.write_all(&[b'x'; 100]).await.expect("write");
    assert_eq!(n.publish_n("alice", 1).await, vec![1]);
    got.clear();
    until(&mut s, &mut got, "\n\n\r\n").await;
    let chunk = String::from_utf8_lossy(&got).to_string();
    let (size, rest) = chunk.split_once("\r\n").expect("a chunk-size line");
    let size = usize::from_str_radix(size, 16).expect("hex size");
    assert_eq!(rest.len(), size + 2, "one whole chunk: {chunk:?}");
    assert!(rest.starts_with("id: 1\n"), "{chunk:?}");
    // More than MAX_CLIENT_BYTES: closed.
    let _ = s
        .write_all(&[b'x'; 4097]) // transport::sse::MAX_CLIENT_BYTES + 1
        .await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("closed within PATIENCE")
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    // Its place (one per player here) is free again.
    let mut again = support::eventually(PATIENCE, "the place to be freed", || {
        let n = &n;
        async move { n.sse("/v1/events", &player_token("alice"), None).await.ok() }
    })
    .await;
    assert_eq!(n.publish_n("alice", 1).await, vec![2]);
    assert_eq!(again.seqs(2).await, vec![1, 2]);
}
