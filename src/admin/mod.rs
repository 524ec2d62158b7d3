//! The read endpoints behind `export` and `inspect --url`:
//! `GET /v1/admin/players/{P}`, `GET /v1/admin/players/{P}/events`,
//! `GET /v1/admin/commands`, `GET /v1/admin/streams` (admin role only),
//! and presence ([`presence`]: service and admin roles).
//!
//! Owns: each endpoint's checks (role, ids, query parameters with bounded
//! page sizes) and answer. Must not touch: routing (`server`), storage
//! semantics (every read is an [`Engine`](crate::engine::Engine) call), and
//! anything that writes (but a room's presence opt-in, [`presence`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;
use warp::http::StatusCode;

use crate::api::{ok, Answer};
use crate::auth::{Principal, Role};
use crate::engine::parse_entry_id;
use crate::error::ApiError;
use crate::protocol::{check_id, ErrorCode};
use crate::state::App;
use crate::tools::inspect::{self, InspectError};
use crate::tools::recording::line_of;
use crate::tools::CommandLine;

pub mod presence;

/// Default and largest page of events or commands.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = crate::tools::PAGE;

pub(crate) type Query = HashMap<String, String>;

/// Refuses parameters other than `allowed`, naming the first.
fn only(q: &Query, allowed: &[&str]) -> Result<(), ApiError> {
    let mut unknown: Vec<&String> = q
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .collect();
    unknown.sort();
    match unknown.first() {
        Some(k) => Err(ApiError::bad_request(
            ErrorCode::InvalidRequest,
            format!(
                "unknown query parameter `{}` (allowed: {})",
                k.chars().take(64).collect::<String>(),
                allowed.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

/// A non-negative integer parameter, or its default.
fn number(q: &Query, name: &str, default: u64) -> Result<u64, ApiError> {
    match q.get(name) {
        None => Ok(default),
        Some(v) => v.parse::<u64>().map_err(|_| {
            ApiError::bad_request(
                ErrorCode::InvalidRequest,
                format!("`{name}` must be a non-negative whole number"),
            )
        }),
    }
}

/// The `after` query parameter of a stream page: an entry id (`0-0`, the
/// start, when absent).
fn after_entry(q: &Query) -> Result<&str, ApiError> {
    let after = q.get("after").map_or("0-0", String::as_str);
    if parse_entry_id(after).is_none() {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidRequest,
            "`after` must be a stream entry id like 1700000000000-0",
        ));
    }
    Ok(after)
}

/// The `limit` parameter: 1 to [`MAX_LIMIT`].
fn limit(q: &Query) -> Result<usize, ApiError> {
    let n = number(q, "limit", DEFAULT_LIMIT as u64)?;
    if n == 0 || n > MAX_LIMIT as u64 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            format!("`limit` must be from 1 to {MAX_LIMIT}"),
        ));
    }
    Ok(n as usize)
}

/// `GET /v1/admin/players/{P}`: the inspect report, with this node's
/// connections of the player.
pub async fn player(app: Arc<App>, p: Principal, player: String, q: Query) -> Answer {
    p.require(&[Role::Admin])?;
    check_id("player id", &player)?;
    only(&q, &[])?;
    let mut nodes = BTreeMap::new();
    nodes.insert(app.config().node_name(), app.gate().of_player(&player));
    match inspect::player(app.engine().as_ref(), &player, Some(nodes)).await {
        Ok(r) => ok(&r),
        Err(InspectError::UnknownPlayer(_)) => Err(unknown_player(&player)),
        Err(InspectError::Engine(e)) => Err(e.into()),
    }
}

fn unknown_player(player: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::UnknownPlayer,
        format!("nothing was ever published to `{player}` and they are in no room"),
    )
}

/// `GET /v1/admin/players/{P}/events?after=N&limit=M`: up to `limit`
/// retained events after `after`, each the envelope as SSE delivers it.
pub async fn events(app: Arc<App>, p: Principal, player: String, q: Query) -> Answer {
    p.require(&[Role::Admin])?;
    check_id("player id", &player)?;
    only(&q, &["after", "limit"])?;
    let after = number(&q, "after", 0)?;
    let limit = limit(&q)?;
    let c = app.engine().cursor(&player).await?;
    let evs = app.engine().read(&player, after, limit).await?;
    let mut lines = Vec::with_capacity(evs.len());
    for e in &evs {
        let line = RawValue::from_string(line_of(&player, e))
            .map_err(|_| ApiError::internal("an event did not serialise"))?;
        lines.push(line);
    }
    let next_after = match evs.last() {
        Some(e) if evs.len() == limit && e.sequence_number < c.last => Some(e.sequence_number),
        _ => None,
    };
    #[derive(Serialize)]
    struct Page {
        player_id: String,
        last_sequence_number: u64,
        acked: u64,
        oldest_available: u64,
        events: Vec<Box<RawValue>>,
        next_after: Option<u64>,
    }
    ok(&Page {
        player_id: player,
        last_sequence_number: c.last,
        acked: c.acked,
        oldest_available: c.oldest,
        events: lines,
        next_after,
    })
}

/// `GET /v1/admin/commands?partition=I&after=ID&limit=M`: up to `limit`
/// commands of partition `I` after entry id `ID` (default `0-0`).
pub async fn commands(app: Arc<App>, p: Principal, q: Query) -> Answer {
    p.require(&[Role::Admin])?;
    only(&q, &["partition", "after", "limit"])?;
    let partitions = app.engine().command_partitions();
    let partition = number(&q, "partition", 0)?;
    if partition >= partitions as u64 {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidRequest,
            format!("`partition` must be below {partitions} (MYTHOS_COMMAND_PARTITIONS)"),
        ));
    }
    let partition = partition as usize;
    let after = after_entry(&q)?;
    let limit = limit(&q)?;
    let entries = app.engine().commands_after(partition, after, limit).await?;
    let next_after = (entries.len() == limit)
        .then(|| entries.last().map(|e| e.entry_id.clone()))
        .flatten();
    let commands: Vec<CommandLine> = entries
        .into_iter()
        .map(|e| CommandLine::new(partition, e))
        .collect();
    ok(&serde_json::json!({
        "partitions": partitions,
        "partition": partition,
        "commands": commands,
        "next_after": next_after,
    }))
}

/// `GET /v1/admin/streams`: the streams report.
pub async fn streams(app: Arc<App>, p: Principal, q: Query) -> Answer {
    p.require(&[Role::Admin])?;
    only(&q, &[])?;
    ok(&inspect::streams(app.engine().as_ref()).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any query: an answer within bounds or a 400, never a panic.
        #[test]
        fn query_parameters_are_bounded(
            pairs in proptest::collection::hash_map("[a-z]{1,8}", "\\PC{0,30}", 0..5),
        ) {
            let q: Query = pairs;
            match limit(&q) {
                Ok(n) => prop_assert!((1..=MAX_LIMIT).contains(&n)),
                Err(e) => prop_assert_eq!(e.status, StatusCode::BAD_REQUEST),
            }
            if let Err(e) = number(&q, "after", 0) {
                prop_assert_eq!(e.status, StatusCode::BAD_REQUEST);
            }
            if let Err(e) = only(&q, &["after", "limit"]) {
                prop_assert!(e.message.len() < 200, "the message stays short");
            }
        }
    }

    #[test]
    fn limits() {
        let q = |k: &str, v: &str| Query::from([(k.to_string(), v.to_string())]);
        assert_eq!(limit(&Query::new()).ok(), Some(DEFAULT_LIMIT));
        assert_eq!(limit(&q("limit", "1000")).ok(), Some(1000));
        assert!(limit(&q("limit", "1001")).is_err());
        assert!(limit(&q("limit", "0")).is_err());
        assert!(only(&q("x", "1"), &["limit"]).is_err());
    }
}
