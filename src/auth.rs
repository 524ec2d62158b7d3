//! Authentication: JWT validation and issuing, where a request's token comes
//! from, roles, and password hashing.
//!
//! Owns: which algorithms verify (each key only its own: the HS256 secret only
//! HS256, a public key only its RS256/EdDSA; never `none`), `exp` enforcement
//! with no leeway, and argon2id hashes. Must not touch: storage (accounts are
//! loaded by the caller) or logging of tokens — a token never reaches a log line.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::protocol::{valid_id, ErrorCode};

/// Longest token accepted (a header line of up to ~400 KiB gets hyper's
/// `431` before it reaches us).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Also the role of a token without a `role` claim.
    #[default]
    Player,
    Service,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "player" => Some(Self::Player),
            "service" => Some(Self::Service),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Player => "player",
            Self::Service => "service",
            Self::Admin => "admin",
        }
    }
}

/// The claims the broker reads and writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default)]
    pub iat: Option<u64>,
    #[serde(default)]
    pub role: Role,
}

/// The claims read from a verified token: [`Claims`] plus `sid`, the
/// refresh-token family a token was issued under (an extension claim; a
/// token without it belongs to no family).
#[derive(Debug, Clone, Deserialize)]
struct Verified {
    sub: String,
    exp: u64,
    #[serde(default)]
    role: Role,
    #[serde(default)]
    sid: Option<String>,
}

/// The claims of a token the broker signs.
#[derive(Serialize)]
struct Issued<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
    role: Role,
    #[serde(skip_serializing_if = "Option::is_none")]
    sid: Option<&'a str>,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Principal {
    pub player_id: String,
    pub role: Role,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// The refresh-token family the token was issued under (`sid` claim).
    pub session: Option<String>,
}

impl Principal {
    /// Time left until the token expires (zero if past).
    pub fn time_left(&self) -> Duration {
        // Exact to the millisecond: whole seconds of `now` would keep a
        // connection up to a second past `exp` (the contract has no leeway).
        (UNIX_EPOCH + Duration::from_secs(self.exp))
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    }
    /// Refuses with 403 unless the role is one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            let need: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            Err(ApiError::forbidden(format!(
                "this needs a token with role {}",
                need.join(" or ")
            )))
        }
    }
    /// Refuses with 403 unless `player` is the token's subject.
    pub fn require_player(&self, player: &str) -> Result<(), ApiError> {
        if self.player_id == player {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "the player in the path is not the token's subject",
            ))
        }
    }
}

/// Why a token was refused: the `reason` label of
/// `mythos_auth_failures_total`, and the 401's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("a bearer token is required")]
    Missing,
    #[error("invalid token: longer than 8 KiB")]
    TooLong,
    #[error("invalid token: malformed")]
    Malformed,
    #[error("invalid token: algorithm not accepted")]
    Algorithm,
    #[error("invalid token: expired")]
    Expired,
    #[error("invalid token: bad signature")]
    BadSignature,
    #[error("invalid token: malformed or missing claims")]
    Claims,
    #[error("invalid token: `sub` must match [A-Za-z0-9_-]{{1,64}}")]
    Subject,
}

impl TokenError {
    /// The metric label (static: no allocation per failure).
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::TooLong => "too_long",
            Self::Malformed => "malformed",
            Self::Algorithm => "algorithm",
            Self::Expired => "expired",
            Self::BadSignature => "bad_signature",
            Self::Claims => "claims",
            Self::Subject => "subject",
        }
    }

    /// Counts the failure (`mythos_auth_failures_total{reason}`) and turns it
    /// into the 401 answer.
    pub(crate) fn into_api(self) -> ApiError {
        metrics::counter!(crate::telemetry::AUTH_FAILURES, "reason" => self.reason()).increment(1);
        ApiError::unauthorized(self.to_string())
    }
}

/// The keys tokens are verified (and issued) with.
pub struct Auth {
    secret: Option<(EncodingKey, DecodingKey)>,
    /// `MYTHOS_JWT_SECRET_PREVIOUS`: still verifies HS256 tokens during a
    /// rotation window; never signs.
    previous: Option<DecodingKey>,
    public: Option<(Algorithm, DecodingKey)>,
    ttl: Duration,
    /// A hash verified when the user does not exist, so both answers take as long.
    dummy_hash: String,
}

impl Auth {
    /// Builds from an HS256 secret (plus, during a rotation, the previous
    /// one, which only verifies) and/or a PEM public key (RSA → RS256,
    /// Ed25519 → EdDSA).
    pub fn new(
        secret: Option<&str>,
        previous: Option<&str>,
        public_pem: Option<&[u8]>,
        ttl: Duration,
    ) -> Result<Self, String> {
        let public = public_pem
            .map(|pem| {
                DecodingKey::from_rsa_pem(pem)
                    .map(|k| (Algorithm::RS256, k))
                    .or_else(|_| DecodingKey::from_ed_pem(pem).map(|k| (Algorithm::EdDSA, k)))
                    .map_err(|_| {
                        "MYTHOS_JWT_PUBLIC_KEY: not an RSA or Ed25519 public key in PEM".to_string()
                    })
            })
            .transpose()?;
        Ok(Self {
            secret: secret.map(|s| {
                (
                    EncodingKey::from_secret(s.as_bytes()),
                    DecodingKey::from_secret(s.as_bytes()),
                )
            }),
            previous: previous.map(|s| DecodingKey::from_secret(s.as_bytes())),
            public,
            ttl,
            dummy_hash: hash_password("not-a-real-password")
                .map_err(|e| format!("argon2 unavailable: {e}"))?,
        })
    }

    /// Verifies a token: signature by the key of its algorithm, `exp` required and in the future.
    /// Longer than [`MAX_TOKEN_BYTES`]: refused unread. A refusal is counted
    /// by reason and answered 401.
    pub(crate) fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        self.check(token).map_err(TokenError::into_api)
    }

    /// [`Auth::verify`] without the counting: why a token is refused.
    /// HS256 tokens are tried with the current secret, then the previous one.
    pub(crate) fn check(&self, token: &str) -> Result<Principal, TokenError> {
        // Bounded before any decoding: our tokens are a few hundred bytes.
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let keys: Vec<&DecodingKey> = match header.alg {
            Algorithm::HS256 => self
                .secret
                .as_ref()
                .map(|(_, d)| d)
                .into_iter()
                .chain(self.previous.as_ref())
                .collect(),
            alg => self
                .public
                .as_ref()
                .filter(|(a, _)| *a == alg)
                .map(|(_, d)| d)
                .into_iter()
                .collect(),
        };
        if keys.is_empty() {
            return Err(TokenError::Algorithm);
        }
        let mut v = Validation::new(header.alg);
        v.leeway = 0;
        // A token with `nbf` (not before) in the future is not valid yet.
        v.validate_nbf = true;
        v.validate_exp = true;
        v.validate_aud = false;
        v.set_required_spec_claims(&["exp", "sub"]);
        let mut last = TokenError::BadSignature;
        let mut claims = None;
        for key in keys {
            match jsonwebtoken::decode::<Verified>(token, key, &v) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    last = match e.kind() {
                        ErrorKind::ExpiredSignature => TokenError::Expired,
                        ErrorKind::InvalidSignature => TokenError::BadSignature,
                        _ => TokenError::Claims,
                    };
                    // Only a wrong signature is worth trying the next key.
                    if last != TokenError::BadSignature {
                        break;
                    }
                }
            }
        }
        let c = claims.ok_or(last)?;
        if !valid_id(&c.sub) {
            return Err(TokenError::Subject);
        }
        // jsonwebtoken compares `exp` with whole seconds; enforce it ourselves too.
        if c.exp <= now_secs() {
            return Err(TokenError::Expired);
        }
        // A `sid` is ours (a family id, 32 hex digits); anything else is not
        // a family and is ignored.
        let session = c.sid.filter(|s| valid_family(s));
        Ok(Principal {
            player_id: c.sub,
            role: c.role,
            exp: c.exp,
            session,
        })
    }

    /// Issues an HS256 token for `sub` with `role`; returns it and its lifetime in seconds.
    pub fn issue(&self, sub: &str, role: Role) -> Result<(String, u64), ApiError> {
        self.issue_in(sub, role, None)
    }

    /// [`Auth::issue`] for a token of the refresh-token family `session`
    /// (its `sid` claim), so that logging out with it revokes the family.
    pub(crate) fn issue_in(
        &self,
        sub: &str,
        role: Role,
        session: Option<&str>,
    ) -> Result<(String, u64), ApiError> {
        let (enc, _) = self.secret.as_ref().ok_or_else(|| {
            ApiError::new(
                warp::http::StatusCode::NOT_IMPLEMENTED,
                ErrorCode::LoginDisabled,
                "this broker has no MYTHOS_JWT_SECRET, so it cannot issue tokens",
            )
        })?;
        let now = now_secs();
        let ttl = self.ttl.as_secs().max(1);
        let claims = Issued {
            sub,
            exp: now + ttl,
            iat: now,
            role,
            sid: session,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, enc)
            .map_err(|_| ApiError::internal("could not sign a token"))?;
        Ok((token, ttl))
    }

    /// Checks a password against a stored hash, or against a dummy hash when
    /// there is no account, so unknown users and wrong passwords look alike.
    pub(crate) fn check_password(&self, password: &str, stored: Option<&str>) -> bool {
        let hash = stored.unwrap_or(&self.dummy_hash);
        let ok = PasswordHash::new(hash).is_ok_and(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        });
        ok && stored.is_some()
    }
}

/// Hex digits of a refresh-token family id (the `sid` claim).
pub(crate) const FAMILY_HEX: usize = 32;

/// True for a refresh-token family id as `refresh` makes them: 32
/// lowercase hex digits.
pub(crate) fn valid_family(s: &str) -> bool {
    s.len() == FAMILY_HEX && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Where a request's token was found.
pub(crate) fn token_from(
    authorization: Option<&str>,
    query_token: Option<&str>,
    ws_protocols: Option<&str>,
) -> Option<String> {
    if let Some(h) = authorization {
        let mut parts = h.splitn(2, ' ');
        if let (Some(scheme), Some(tok)) = (parts.next(), parts.next()) {
            if scheme.eq_ignore_ascii_case("bearer") && !tok.trim().is_empty() {
                return Some(tok.trim().to_string());
            }
        }
        return None;
    }
    if let Some(t) = query_token.filter(|t| !t.is_empty()) {
        return Some(t.to_string());
    }
    ws_protocols.and_then(|list| {
        list.split(',')
            .map(str::trim)
            .find_map(|p| p.strip_prefix("bearer."))
            .map(str::to_string)
    })
}

/// An argon2id PHC hash of `password` with a fresh salt.
pub(crate) fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(
            Some("0123456789abcdef0123"),
            None,
            None,
            Duration::from_secs(60),
        )
        .expect("auth")
    }

    #[test]
    fn issued_token_verifies_with_role() {
        let a = auth();
        let (t, ttl) = a.issue("alice", Role::Service).expect("issue");
        assert_eq!(ttl, 60);
        let p = a.verify(&t).expect("verify");
        assert_eq!((p.player_id.as_str(), p.role), ("alice", Role::Service));
    }

    #[test]
    fn rejects_other_secret_none_alg_and_expired() {
        let a = auth();
        let other = Auth::new(
            Some("another-secret-of-16+"),
            None,
            None,
            Duration::from_secs(60),
        )
        .expect("auth");
        let (t, _) = other.issue("alice", Role::Player).expect("issue");
        assert_eq!(a.verify(&t).expect_err("wrong key").status, 401);
        // alg "none": header {"alg":"none"} + payload, no signature.
        let none =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert_eq!(a.verify(none).expect_err("none").status, 401);
        let claims = Claims {
            sub: "alice".into(),
            exp: now_secs() - 1,
            iat: None,
            role: Role::Player,
        };
        let t = jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(b"0123456789abcdef0123"),
        )
        .expect("enc");
        assert_eq!(a.verify(&t).expect_err("expired").status, 401);
    }

    /// A rotation window: tokens of the previous secret still verify, new
    /// tokens are signed with the current one, a third secret's are refused.
    #[test]
    fn previous_secret_verifies_during_rotation_but_never_signs() {
        let old = auth();
        let (old_token, _) = old.issue("alice", Role::Player).expect("issue");
        let rotated = Auth::new(
            Some("the-new-secret-0123456789"),
            Some("0123456789abcdef0123"),
            None,
            Duration::from_secs(60),
        )
        .expect("auth");
        assert_eq!(rotated.check(&old_token).expect("old").player_id, "alice");
        let (new_token, _) = rotated.issue("bob", Role::Player).expect("issue");
        assert_eq!(
            old.check(&new_token)
                .expect_err("signed with the new secret"),
            TokenError::BadSignature
        );
        let stranger = Auth::new(
            Some("a-third-secret-0123456"),
            None,
            None,
            Duration::from_secs(60),
        )
        .expect("auth");
        let (other, _) = stranger.issue("carol", Role::Player).expect("issue");
        assert_eq!(
            rotated.check(&other).expect_err("neither"),
            TokenError::BadSignature
        );
    }

    #[test]
    fn public_key_verifies_only_its_own_algorithm() {
        let public = include_bytes!("../tests/fixtures/ed25519-public.pem");
        let private = include_bytes!("../tests/fixtures/ed25519-private.pem");
        let a = Auth::new(
            Some("0123456789abcdef0123"),
            None,
            Some(public),
            Duration::from_secs(60),
        )
        .expect("auth");
        let claims = Claims {
            sub: "gm".into(),
            exp: now_secs() + 60,
            iat: None,
            role: Role::Service,
        };
        let key = EncodingKey::from_ed_pem(private).expect("ed key");
        let t = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key).expect("enc");
        assert_eq!(a.verify(&t).expect("EdDSA verifies").role, Role::Service);
        // Algorithm confusion: an HS256 token whose "secret" is the public key.
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(public),
        )
        .expect("enc");
        assert_eq!(a.verify(&forged).expect_err("confusion").status, 401);
        // An RS256 header is refused outright: no RSA key is configured.
        let rs = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJnbSIsImV4cCI6OTk5OTk5OTk5OX0.c2ln";
        assert_eq!(a.verify(rs).expect_err("rs256").status, 401);
    }

    #[test]
    fn token_sources_in_order() {
        assert_eq!(
            token_from(Some("Bearer abc"), Some("q"), None).as_deref(),
            Some("abc")
        );
        assert_eq!(token_from(None, Some("q"), None).as_deref(), Some("q"));
        assert_eq!(
            token_from(None, None, Some("mythos.v1, bearer.xyz")).as_deref(),
            Some("xyz")
        );
        assert_eq!(token_from(Some("Basic abc"), Some("q"), None), None);
    }

    #[test]
    fn passwords_hash_and_verify() {
        let a = auth();
        let h = hash_password("hunter2").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(a.check_password("hunter2", Some(&h)));
        assert!(!a.check_password("wrong", Some(&h)));
        assert!(!a.check_password("hunter2", None));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// One for all cases: building one hashes a dummy password (argon2).
    fn auth() -> &'static Auth {
        static AUTH: std::sync::OnceLock<Auth> = std::sync::OnceLock::new();
        AUTH.get_or_init(|| {
            Auth::new(
                Some("0123456789abcdef0123"),
                None,
                None,
                std::time::Duration::from_secs(60),
            )
            .expect("auth")
        })
    }

    proptest! {
        /// Any token text: a principal or 401, never a panic.
        #[test]
        fn tokens_never_panic(raw in "\\PC{0,300}") {
            if let Err(e) = auth().verify(&raw) {
                prop_assert_eq!(e.status.as_u16(), 401);
            }
        }

        /// Three base64url-ish segments, the shape that reaches the decoder.
        #[test]
        fn token_shapes_never_panic(a in "[A-Za-z0-9_-]{0,80}", b in "[A-Za-z0-9_-]{0,200}", c in "[A-Za-z0-9_-]{0,80}") {
            let _ = auth().verify(&format!("{a}.{b}.{c}"));
        }

        /// Issued tokens verify to the same subject and role; any changed
        /// character of the payload is refused.
        #[test]
        fn issued_tokens_round_trip_and_tampering_fails(sub in "[A-Za-z0-9_-]{1,64}", role in prop_oneof![Just(Role::Player), Just(Role::Service), Just(Role::Admin)], at in 0usize..1000) {
            let a = auth();
            let (token, _) = a.issue(&sub, role).expect("issue");
            let p = a.verify(&token).expect("valid");
            prop_assert_eq!(&p.player_id, &sub);
            prop_assert_eq!(p.role, role);
            let dot = token.find('.').expect("header") + 1;
            let end = token.rfind('.').expect("signature");
            let i = dot + at % (end - dot);
            let mut bytes = token.into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).expect("ascii");
            prop_assert_eq!(a.verify(&tampered).expect_err("tampered").status.as_u16(), 401);
        }
    }

    #[test]
    fn a_huge_token_is_refused_unread() {
        let e = auth()
            .verify(&"a".repeat(MAX_TOKEN_BYTES + 1))
            .expect_err("too long");
        assert_eq!(
            (e.status.as_u16(), e.message.as_str()),
            (401, "invalid token: longer than 8 KiB")
        );
    }
}
