//! Staying logged in across a reload (an extension, docs/protocol.md): the
//! refresh token, its `HttpOnly` cookie, and the endpoints that use it —
//! `POST /v1/auth/login` with `"remember": true`, `POST /v1/auth/session`
//! (rotate the cookie, answer a fresh access token) and `POST
//! /v1/auth/logout`.
//!
//! A refresh token is `<family>.<secret>`: 32 and 64 hex digits of fresh
//! randomness. The engine keeps, per family, only the SHA-256 of its one
//! current token ([`crate::engine::RefreshTokens`]); every use rotates it,
//! and presenting a token already rotated away revokes the whole family.
//!
//! Owns: the token's format and hashing, reading and writing the cookie
//! (every attribute), the same-origin check of cookie requests, and these
//! handlers' answers. Must not touch: the `Bearer` refresh of the contract
//! (`api::refresh`), JWT signing (`auth`), storage beyond the engine's
//! `RefreshTokens` capability, sessions and transports.

use std::sync::Arc;

use rand::TryRngCore;
use serde_json::json;
use sha2::{Digest, Sha256};
use warp::http::{HeaderMap, HeaderValue, StatusCode};
use warp::reply::Response;

use crate::auth::{token_from, valid_family, Principal, Role, TokenError};
use crate::engine::{RefreshFamily, Rotation};
use crate::error::ApiError;
use crate::protocol::ErrorCode;
use crate::state::App;

/// The cookie's name.
pub const COOKIE: &str = "mythos-refresh";
/// The only path the browser sends it to.
pub const COOKIE_PATH: &str = "/v1/auth";
/// Longest `Cookie` header read; longer is refused before it is parsed.
pub const MAX_COOKIE_HEADER: usize = 8 * 1024;

const FAMILY_HEX: usize = crate::auth::FAMILY_HEX;
const SECRET_HEX: usize = 64;

/// An answer, or the error to answer.
pub type Answer = Result<Response, ApiError>;

/// A JSON answer with a status (as `api::json_reply`, which sits above this module).
fn json_reply<T: serde::Serialize>(status: StatusCode, v: &T) -> Response {
    use warp::Reply;
    warp::reply::with_status(warp::reply::json(v), status).into_response()
}

/// A refresh token, parsed.
struct Token<'a> {
    family: &'a str,
    text: &'a str,
}

impl Token<'_> {
    /// What the engine stores and compares: SHA-256 of the whole token, hex.
    fn hash(&self) -> String {
        hex(&Sha256::digest(self.text.as_bytes()))
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// `<family>.<secret>` exactly, or `None`.
fn parse(text: &str) -> Option<Token<'_>> {
    let (family, secret) = text.split_once('.')?;
    let secret_ok = secret.len() == SECRET_HEX
        && secret
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (valid_family(family) && secret_ok).then_some(Token { family, text })
}

/// `n` random bytes from the operating system, hex.
fn random_hex(n: usize) -> Result<String, ApiError> {
    let mut buf = vec![0u8; n];
    rand::rngs::OsRng
        .try_fill_bytes(&mut buf)
        .map_err(|_| ApiError::internal("no randomness for a refresh token"))?;
    Ok(hex(&buf))
}

/// A fresh token of `family` (a new family when `None`): its text.
fn mint(family: Option<&str>) -> Result<String, ApiError> {
    let family = match family {
        Some(f) => f.to_string(),
        None => random_hex(FAMILY_HEX / 2)?,
    };
    Ok(format!("{family}.{}", random_hex(SECRET_HEX / 2)?))
}

/// What the request's `Cookie` header says about our cookie.
enum Presented<'a> {
    None,
    /// Present, but not a token we could have made (or the header is over
    /// [`MAX_COOKIE_HEADER`]).
    Malformed(&'static str),
    Token(Token<'a>),
}

fn presented(headers: &HeaderMap) -> Presented<'_> {
    let mut found = None;
    for value in headers.get_all("cookie") {
        if value.len() > MAX_COOKIE_HEADER {
            return Presented::Malformed("the Cookie header is longer than 8 KiB");
        }
        let Ok(text) = value.to_str() else {
            continue;
        };
        found = found.or_else(|| {
            text.split(';')
                .filter_map(|c| c.trim().split_once('='))
                .find(|(name, _)| *name == COOKIE)
                .map(|(_, v)| v.trim())
        });
    }
    match found {
        None => Presented::None,
        Some(v) => parse(v).map_or(
            Presented::Malformed("the refresh cookie is malformed"),
            Presented::Token,
        ),
    }
}

/// The `Set-Cookie` value carrying `token` (or clearing the cookie).
pub(crate) fn set_cookie(app: &App, token: Option<&str>) -> String {
    let secure = if app.config().cookie_secure {
        "; Secure"
    } else {
        ""
    };
    let (value, max_age) = match token {
        Some(t) => (t, app.config().refresh_ttl.as_secs().max(1)),
        None => ("", 0),
    };
    format!("{COOKIE}={value}; Path={COOKIE_PATH}; Max-Age={max_age}; HttpOnly{secure}; SameSite=Strict")
}

/// Adds `Set-Cookie` (and `Cache-Control: no-store`) to an answer.
fn with_cookie(mut r: Response, cookie: &str) -> Response {
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(cookie) {
        h.append("set-cookie", v);
    }
    h.insert("cache-control", HeaderValue::from_static("no-store"));
    r
}

/// An error answer that also clears the cookie.
fn refused(app: &App, e: ApiError) -> Answer {
    crate::telemetry::rejected(e.code);
    Ok(with_cookie(
        json_reply(e.status, &e.body()),
        &set_cookie(app, None),
    ))
}

fn unauthorized(reason: &'static str, message: &str) -> ApiError {
    metrics::counter!(crate::telemetry::AUTH_FAILURES, "reason" => reason).increment(1);
    ApiError::unauthorized(message)
}

/// Cookie requests must come from the broker's own page: a browser sends
/// `Origin` (and `Sec-Fetch-Site`) with every POST, and both must say
/// same-origin. Requests without them (curl, tests, a game server) pass:
/// only a browser attaches a cookie on a user's behalf. Defence in depth
/// besides `SameSite=Strict`, which ignores ports (another port of the same
/// host is the same site).
pub(crate) fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let forbidden = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::ForbiddenOrigin,
            "the refresh cookie is used only by pages of this broker's own origin",
        )
    };
    let get = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{0}"));
    if let Some(site) = get("sec-fetch-site") {
        if !matches!(site, "same-origin" | "none") {
            return Err(forbidden());
        }
    }
    if let Some(origin) = get("origin") {
        let authority = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        match (authority, get("host")) {
            (Some(a), Some(host)) if a.eq_ignore_ascii_case(host) => {}
            _ => return Err(forbidden()),
        }
    }
    Ok(())
}

/// The login answer for `owner`, with a token of family `family`.
fn token_answer(app: &App, owner: &str, role: Role, family: &str) -> Result<Response, ApiError> {
    let (token, expires_in) = app.auth().issue_in(owner, role, Some(family))?;
    Ok(json_reply(
        StatusCode::OK,
        &json!({"access_token": token, "token_type": "Bearer",
                "expires_in": expires_in, "player_id": owner}),
    ))
}

/// `POST /v1/auth/login` with `"remember": true`, after the password
/// checked out: a new family, its first token in the cookie, and an access
/// token of the family. A family named by a cookie the request carries is
/// revoked first (a second login replaces the first).
pub(crate) async fn remember(app: &App, headers: &HeaderMap, player: &str, role: Role) -> Answer {
    same_origin(headers)?;
    if let Presented::Token(old) = presented(headers) {
        app.engine().revoke_family(old.family).await?;
    }
    let token = mint(None)?;
    let Some(t) = parse(&token) else {
        return Err(ApiError::internal("a minted refresh token does not parse"));
    };
    let owner = RefreshFamily {
        player: player.to_string(),
        role: role.as_str().to_string(),
    };
    let ttl = app.config().refresh_ttl;
    app.engine()
        .create_family(t.family, &owner, &t.hash(), ttl)
        .await?;
    let answer = token_answer(app, player, role, t.family)?;
    Ok(with_cookie(answer, &set_cookie(app, Some(&token))))
}

/// `POST /v1/auth/session`: the cookie's token is rotated; the answer is
/// the login body and the next token in the cookie.
pub async fn session(app: Arc<App>, headers: HeaderMap) -> Answer {
    same_origin(&headers)?;
    let t = match presented(&headers) {
        Presented::Token(t) => t,
        Presented::None => {
            return Err(unauthorized(
                "refresh_missing",
                "no refresh cookie: log in with \"remember\": true",
            ))
        }
        Presented::Malformed(why) => return refused(&app, unauthorized("refresh_malformed", why)),
    };
    let next = mint(Some(t.family))?;
    let Some(n) = parse(&next) else {
        return Err(ApiError::internal("a minted refresh token does not parse"));
    };
    let ttl = app.config().refresh_ttl;
    match app
        .engine()
        .rotate_family(t.family, &t.hash(), &n.hash(), ttl)
        .await?
    {
        Rotation::Rotated(owner) => {
            let role = Role::parse(&owner.role).unwrap_or(Role::Player);
            let answer = token_answer(&app, &owner.player, role, t.family)?;
            Ok(with_cookie(answer, &set_cookie(&app, Some(&next))))
        }
        Rotation::Reused(owner) => {
            tracing::warn!(
                player = %owner.player,
                "a refresh token was presented again after its rotation; its family is revoked"
            );
            refused(
                &app,
                unauthorized(
                    "refresh_reused",
                    "this refresh token was already used; every session it began is logged out",
                ),
            )
        }
        Rotation::Unknown => refused(
            &app,
            unauthorized(
                "refresh_unknown",
                "the refresh token has expired or was revoked; log in again",
            ),
        ),
    }
}

/// `POST /v1/auth/logout`: revokes the family named by the cookie, else the
/// one the Bearer token was issued under (`sid`), and clears the cookie.
pub async fn logout(app: Arc<App>, headers: HeaderMap) -> Answer {
    let cookie = presented(&headers);
    let bearer = token_from(
        headers.get("authorization").and_then(|v| v.to_str().ok()),
        None,
        None,
    );
    if matches!(cookie, Presented::Token(_)) {
        same_origin(&headers)?;
    }
    let (family, mut player) = match (cookie, bearer) {
        (Presented::Token(t), _) => (Some(t.family.to_string()), None),
        (_, Some(b)) => {
            let p: Principal = app.auth().verify(&b)?;
            (p.session.clone(), Some(p.player_id))
        }
        (Presented::Malformed(why), None) => {
            return refused(&app, unauthorized("refresh_malformed", why))
        }
        (Presented::None, None) => return Err(TokenError::Missing.into_api()),
    };
    let mut revoked = false;
    if let Some(f) = family {
        if let Some(owner) = app.engine().revoke_family(&f).await? {
            revoked = true;
            player = Some(owner.player);
        }
    }
    if let Some(player) = player.as_deref() {
        tracing::debug!(%player, revoked, "logged out");
        // A clean logout: offline at once in presence (docs/presence.md).
        app.presence().logout(player);
    }
    Ok(with_cookie(
        json_reply(StatusCode::OK, &json!({"revoked": revoked})),
        &set_cookie(&app, None),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_only_in_their_own_shape() {
        let t = mint(None).expect("mint");
        let p = parse(&t).expect("parses");
        assert_eq!(p.family.len(), 32);
        assert_eq!(p.hash().len(), 64);
        let again = mint(Some(p.family)).expect("mint");
        assert_eq!(parse(&again).expect("parses").family, p.family);
        assert_ne!(again, t);
        for bad in [
            "",
            ".",
            "abc.def",
            &t[1..],
            &format!("{t}0"),
            &t.to_uppercase(),
            &t.replace('.', "-"),
            &format!("{}.{}", &t[..32], "g".repeat(64)),
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                warp::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn same_origin_requests_pass_and_others_do_not() {
        let ok = [
            vec![],
            vec![("host", "127.0.0.1:1"), ("origin", "http://127.0.0.1:1")],
            vec![("sec-fetch-site", "same-origin")],
        ];
        for h in ok {
            assert!(same_origin(&headers(&h)).is_ok(), "{h:?}");
        }
        let bad = [
            vec![("host", "127.0.0.1:1"), ("origin", "http://127.0.0.1:2")],
            vec![("origin", "http://127.0.0.1:1")],
            vec![("host", "a"), ("origin", "null")],
            vec![("sec-fetch-site", "same-site")],
            vec![("sec-fetch-site", "cross-site")],
        ];
        for h in bad {
            assert_eq!(
                same_origin(&headers(&h)).expect_err("refused").status,
                403,
                "{h:?}"
            );
        }
    }

    proptest::proptest! {
        /// Whatever a browser (or anyone) puts in `Cookie`, `Origin`, `Host`
        /// and `Sec-Fetch-Site`: an answer, never a panic; a token only in
        /// its own shape.
        #[test]
        fn any_cookie_and_origin_headers_are_judged_without_panic(
            cookie in "\\PC{0,300}",
            value in "[0-9a-f.]{0,120}",
            origin in "\\PC{0,60}",
            host in "\\PC{0,40}",
            site in "\\PC{0,20}",
        ) {
            let mut h = HeaderMap::new();
            for (name, v) in [
                ("cookie", cookie.clone()),
                ("cookie", format!("{COOKIE}={value}")),
                ("origin", origin),
                ("host", host),
                ("sec-fetch-site", site),
            ] {
                if let Ok(v) = HeaderValue::from_str(&v) {
                    h.append(name, v);
                }
            }
            if let Presented::Token(t) = presented(&h) {
                proptest::prop_assert!(parse(t.text).is_some());
            }
            let _ = same_origin(&h);
        }
    }

    #[test]
    fn the_cookie_is_found_among_others_and_bounded() {
        let t = mint(None).expect("mint");
        let h = headers(&[("cookie", &format!("a=1; {COOKIE}={t}; b=2"))]);
        assert!(matches!(presented(&h), Presented::Token(p) if p.text == t));
        let h = headers(&[("cookie", "a=1"), ("cookie", &format!("{COOKIE}={t}"))]);
        assert!(matches!(presented(&h), Presented::Token(_)));
        assert!(matches!(
            presented(&headers(&[("cookie", "a=1")])),
            Presented::None
        ));
        let h = headers(&[("cookie", &format!("{COOKIE}=nope"))]);
        assert!(matches!(presented(&h), Presented::Malformed(_)));
        let huge = format!("{COOKIE}={t}; pad={}", "x".repeat(MAX_COOKIE_HEADER));
        assert!(matches!(
            presented(&headers(&[("cookie", &huge)])),
            Presented::Malformed(_)
        ));
    }
}
