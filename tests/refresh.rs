//! Staying logged in (the refresh-token extension, docs/protocol.md) over
//! real HTTP on both engines: the cookie's attributes exactly, rotation,
//! reuse detection revoking the family, logout by cookie and by Bearer,
//! and a defined answer for every bad input (missing, malformed, oversized,
//! expired, unknown, cross-origin). A family made on one node rotates on
//! another (two nodes on one Redis).

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::broker::*;

on_both_engines!(
    remember_login_sets_the_cookie_exactly,
    session_rotates_and_reuse_revokes_the_family,
    logout_revokes_and_clears_the_cookie,
    bad_refresh_input_gets_defined_answers,
    an_abandoned_family_expires,
    cookie_secure_can_be_turned_off,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_family_rotates_on_any_node_of_one_redis() {
    let n = Node::start(Kind::RedisTwoNodes, |_| {}).await;
    let other = n.other.as_ref().expect("two nodes");
    add_dora(&n.broker).await;
    let (a, _) = login(&n.broker, true).await;
    let c1 = cookie_token(&a).expect("a cookie");
    let b = session(other, Some(&c1), &[]).await;
    assert_eq!(b.status, 200, "{}", b.body);
    let c2 = cookie_token(&b).expect("rotated");
    // The old token on the first node: reuse, the family is gone everywhere.
    assert_eq!(session(&n.broker, Some(&c1), &[]).await.status, 401);
    assert_eq!(session(other, Some(&c2), &[]).await.status, 401);
}

/// An answer: status, body, and every `Set-Cookie` line.
struct Answer {
    status: u16,
    body: Value,
    cookies: Vec<String>,
    cache_control: Option<String>,
}

async fn answer(resp: reqwest::Response) -> Answer {
    let status = resp.status().as_u16();
    let cookies = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().expect("ascii").to_string())
        .collect();
    let cache_control = resp
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    Answer {
        status,
        body: resp.json().await.unwrap_or(Value::Null),
        cookies,
        cache_control,
    }
}

const PASSWORD: &str = "correct horse";

async fn add_dora(b: &Broker) {
    let (s, body) = b
        .post(
            "/v1/admin/users",
            Some(&admin_token()),
            Body::Json(json!({"username": "dora", "password": PASSWORD})),
        )
        .await;
    assert_eq!(s, 201, "{body}");
}

/// `POST /v1/auth/login` as dora; `remember` as given. Returns the answer
/// and the access token.
async fn login(b: &Broker, remember: bool) -> (Answer, String) {
    let resp = Broker::http()
        .post(format!("{}/v1/auth/login", b.base))
        .json(&json!({"username": "dora", "password": PASSWORD, "remember": remember}))
        .send()
        .await
        .expect("login");
    let a = answer(resp).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let token = a.body["access_token"].as_str().expect("token").to_string();
    (a, token)
}

/// `POST <path>` with the refresh cookie (if any) and extra headers.
async fn post_with(
    b: &Broker,
    path: &str,
    cookie: Option<&str>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = Broker::http().post(format!("{}{path}", b.base));
    if let Some(c) = cookie {
        req = req.header("cookie", format!("mythos-refresh={c}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    answer(req.send().await.expect("request")).await
}

async fn session(b: &Broker, cookie: Option<&str>, headers: &[(&str, &str)]) -> Answer {
    post_with(b, "/v1/auth/session", cookie, headers).await
}

/// The token a `Set-Cookie: mythos-refresh=<token>; ...` carries (`None`
/// without one, `Some("")` when it clears the cookie).
fn cookie_token(a: &Answer) -> Option<String> {
    let [line] = a.cookies.as_slice() else {
        return None;
    };
    let first = line.split(';').next()?;
    first.strip_prefix("mythos-refresh=").map(String::from)
}

/// The attributes of the one `Set-Cookie` line, after the value, sorted.
fn attributes(a: &Answer) -> Vec<String> {
    assert_eq!(a.cookies.len(), 1, "{:?}", a.cookies);
    let mut v: Vec<String> = a.cookies[0]
        .split(';')
        .skip(1)
        .map(|s| s.trim().to_string())
        .collect();
    v.sort();
    v
}

fn is_token(t: &str) -> bool {
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    t.split_once('.')
        .is_some_and(|(f, s)| hex(f, 32) && hex(s, 64))
}

async fn cursor_status(b: &Broker, token: &str) -> u16 {
    b.request(reqwest::Method::GET, "/v1/cursor", Some(token))
        .await
        .0
}

fn code(a: &Answer) -> Option<&str> {
    a.body["error"]["code"].as_str()
}

/// The cookie: `HttpOnly`, `Secure`, `SameSite=Strict`, `Path=/v1/auth`,
/// `Max-Age` = `MYTHOS_REFRESH_TTL`; only with `"remember": true`; the
/// login body unchanged.
async fn remember_login_sets_the_cookie_exactly(kind: Kind) {
    let n = Node::start(kind, |_| {}).await;
    add_dora(&n.broker).await;
    let (plain, token) = login(&n.broker, false).await;
    assert!(plain.cookies.is_empty(), "{:?}", plain.cookies);
    assert_eq!(cursor_status(&n.broker, &token).await, 200);

    let (a, token) = login(&n.broker, true).await;
    let c = cookie_token(&a).expect("a cookie");
    assert!(is_token(&c), "{c}");
    assert_eq!(
        attributes(&a),
        [
            "HttpOnly",
            "Max-Age=2592000",
            "Path=/v1/auth",
            "SameSite=Strict",
            "Secure"
        ]
    );
    assert_eq!(a.cache_control.as_deref(), Some("no-store"));
    let keys: Vec<&String> = a.body.as_object().expect("object").keys().collect();
    assert_eq!(
        keys,
        ["access_token", "expires_in", "player_id", "token_type"]
    );
    assert_eq!(
        (a.body["player_id"].as_str(), a.body["token_type"].as_str()),
        (Some("dora"), Some("Bearer"))
    );
    assert_eq!(cursor_status(&n.broker, &token).await, 200);
    // A rotation answers the same attributes.
    let r = session(&n.broker, Some(&c), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(attributes(&r), attributes(&a));
}

async fn session_rotates_and_reuse_revokes_the_family(kind: Kind) {
    let n = Node::start(kind, |_| {}).await;
    let b = &n.broker;
    add_dora(b).await;
    let (a, _) = login(b, true).await;
    let c1 = cookie_token(&a).expect("cookie");
    let r = session(b, Some(&c1), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let c2 = cookie_token(&r).expect("rotated");
    assert!(is_token(&c2) && c2 != c1);
    assert_eq!(c2[..32], c1[..32], "the same family");
    assert_eq!(r.body["player_id"].as_str(), Some("dora"));
    let t2 = r.body["access_token"].as_str().expect("token").to_string();
    assert_eq!(cursor_status(b, &t2).await, 200);
    // The contract's Bearer refresh works on a family's token while it lives.
    let (s, refreshed) = b
        .post("/v1/auth/refresh", Some(&t2), Body::Raw(String::new()))
        .await;
    assert_eq!(s, 200, "{refreshed}");
    let t2b = refreshed["access_token"]
        .as_str()
        .expect("token")
        .to_string();

    let r = session(b, Some(&c2), &[]).await;
    let c3 = cookie_token(&r).expect("rotated again");
    // c1 again: reuse. 401, the cookie cleared, and the family is gone.
    let reused = session(b, Some(&c1), &[]).await;
    assert_eq!((reused.status, code(&reused)), (401, Some("unauthorized")));
    assert_eq!(cookie_token(&reused).as_deref(), Some(""));
    assert!(attributes(&reused).contains(&"Max-Age=0".to_string()));
    let newest = session(b, Some(&c3), &[]).await;
    assert_eq!((newest.status, code(&newest)), (401, Some("unauthorized")));
    // Access tokens of the family are no longer refreshed by Bearer either.
    for t in [&t2, &t2b] {
        let (s, body) = b
            .post("/v1/auth/refresh", Some(t), Body::Raw(String::new()))
            .await;
        assert_eq!(
            (s, body["error"]["code"].as_str()),
            (401, Some("unauthorized"))
        );
    }
    // A token of no family refreshes exactly as the contract says.
    let (s, _) = b
        .post(
            "/v1/auth/refresh",
            Some(&player_token("dora")),
            Body::Raw(String::new()),
        )
        .await;
    assert_eq!(s, 200);
}

async fn logout_revokes_and_clears_the_cookie(kind: Kind) {
    let n = Node::start(kind, |_| {}).await;
    let b = &n.broker;
    add_dora(b).await;
    // By cookie.
    let (a, _) = login(b, true).await;
    let c = cookie_token(&a).expect("cookie");
    let out = post_with(b, "/v1/auth/logout", Some(&c), &[]).await;
    assert_eq!((out.status, &out.body), (200, &json!({"revoked": true})));
    assert_eq!(cookie_token(&out).as_deref(), Some(""));
    assert_eq!(
        attributes(&out),
        [
            "HttpOnly",
            "Max-Age=0",
            "Path=/v1/auth",
            "SameSite=Strict",
            "Secure"
        ]
    );
    assert_eq!(session(b, Some(&c), &[]).await.status, 401);
    let again = post_with(b, "/v1/auth/logout", Some(&c), &[]).await;
    assert_eq!(
        (again.status, &again.body),
        (200, &json!({"revoked": false}))
    );

    // By Bearer alone: the token names its family (`sid`).
    let (a, t) = login(b, true).await;
    let c = cookie_token(&a).expect("cookie");
    let bearer = format!("Bearer {t}");
    let out = post_with(b, "/v1/auth/logout", None, &[("authorization", &bearer)]).await;
    assert_eq!((out.status, &out.body), (200, &json!({"revoked": true})));
    assert_eq!(session(b, Some(&c), &[]).await.status, 401);

    // A token of no family: nothing to revoke, still a logout.
    let plain = format!("Bearer {}", player_token("dora"));
    let out = post_with(b, "/v1/auth/logout", None, &[("authorization", &plain)]).await;
    assert_eq!((out.status, &out.body), (200, &json!({"revoked": false})));
    // Neither, or a bad Bearer: 401.
    let none = post_with(b, "/v1/auth/logout", None, &[]).await;
    assert_eq!((none.status, code(&none)), (401, Some("unauthorized")));
    let bad = post_with(
        b,
        "/v1/auth/logout",
        None,
        &[("authorization", "Bearer nope")],
    )
    .await;
    assert_eq!((bad.status, code(&bad)), (401, Some("unauthorized")));
    let bad = post_with(b, "/v1/auth/logout", Some("nope"), &[]).await;
    assert_eq!((bad.status, code(&bad)), (401, Some("unauthorized")));
}

async fn bad_refresh_input_gets_defined_answers(kind: Kind) {
    let n = Node::start(kind, |_| {}).await;
    let b = &n.broker;
    add_dora(b).await;
    let missing = session(b, None, &[]).await;
    assert_eq!(
        (missing.status, code(&missing)),
        (401, Some("unauthorized"))
    );
    assert!(missing.cookies.is_empty());
    // Malformed values: refused unread by the engine, and cleared.
    let (a, _) = login(b, true).await;
    let good = cookie_token(&a).expect("cookie");
    for bad in [
        "x".to_string(),
        good.to_uppercase(),
        format!("{good}0"),
        good.replace('.', ""),
        "a".repeat(4000),
    ] {
        let r = session(b, Some(&bad), &[]).await;
        assert_eq!((r.status, code(&r)), (401, Some("unauthorized")), "{bad}");
        assert_eq!(cookie_token(&r).as_deref(), Some(""), "{bad}");
    }
    // A Cookie header over 8 KiB: refused before it is parsed.
    let pad = format!("mythos-refresh={good}; pad={}", "p".repeat(9000));
    let r = post_with(b, "/v1/auth/session", None, &[("cookie", &pad)]).await;
    assert_eq!((r.status, code(&r)), (401, Some("unauthorized")));
    // Well-formed but unknown.
    let unknown = format!("{}.{}", "0".repeat(32), "1".repeat(64));
    let r = session(b, Some(&unknown), &[]).await;
    assert_eq!((r.status, code(&r)), (401, Some("unauthorized")));
    // Another origin: refused before the token is looked at (it still works).
    let host = b.base.trim_start_matches("http://").to_string();
    for headers in [
        vec![("origin", "http://evil.example")],
        vec![("origin", "null")],
        vec![("sec-fetch-site", "cross-site")],
        vec![("sec-fetch-site", "same-site")],
    ] {
        let r = session(b, Some(&good), &headers).await;
        assert_eq!(
            (r.status, code(&r)),
            (403, Some("forbidden_origin")),
            "{headers:?}"
        );
    }
    let own = format!("http://{host}");
    let r = session(
        b,
        Some(&good),
        &[("origin", &own), ("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The wrong method, a mistyped `remember`, a wrong password.
    let (s, _) = b
        .request(reqwest::Method::GET, "/v1/auth/session", None)
        .await;
    assert_eq!(s, 405);
    let (s, body) = b
        .post(
            "/v1/auth/login",
            None,
            Body::Json(json!({"username": "dora", "password": PASSWORD, "remember": "yes"})),
        )
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (400, Some("invalid_request"))
    );
    let resp = Broker::http()
        .post(format!("{}/v1/auth/login", b.base))
        .json(&json!({"username": "dora", "password": "wrong", "remember": true}))
        .send()
        .await
        .expect("login");
    let a = answer(resp).await;
    assert_eq!((a.status, code(&a)), (401, Some("invalid_credentials")));
    assert!(a.cookies.is_empty());
}

/// `MYTHOS_REFRESH_TTL` unused: the family is gone.
async fn an_abandoned_family_expires(kind: Kind) {
    let n = Node::start(kind, |c| c.refresh_ttl = Duration::from_secs(1)).await;
    let b = &n.broker;
    add_dora(b).await;
    let (a, _) = login(b, true).await;
    assert!(attributes(&a).contains(&"Max-Age=1".to_string()));
    let c = cookie_token(&a).expect("cookie");
    // Past the time to live (a deadline, not a wait for something to happen).
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = session(b, Some(&c), &[]).await;
    assert_eq!((r.status, code(&r)), (401, Some("unauthorized")));
    assert_eq!(cookie_token(&r).as_deref(), Some(""));
}

/// `MYTHOS_COOKIE_SECURE=false`: the same cookie without `Secure`.
async fn cookie_secure_can_be_turned_off(kind: Kind) {
    let n = Node::start(kind, |c| c.cookie_secure = false).await;
    add_dora(&n.broker).await;
    let (a, _) = login(&n.broker, true).await;
    assert_eq!(
        attributes(&a),
        [
            "HttpOnly",
            "Max-Age=2592000",
            "Path=/v1/auth",
            "SameSite=Strict"
        ]
    );
}
