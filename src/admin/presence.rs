//! Presence over HTTP: `GET /v1/presence/players/{P}`, `GET
//! /v1/presence/{room}`, `GET /v1/presence/facts/{partition}` (service and
//! admin roles), `GET` / `PUT /v1/rooms/{room}/presence_events` (the room's
//! opt-in to `player_entered` / `player_left` on presence changes) and `GET
//! /v1/admin/presence` (admin: the node leases).
//!
//! Owns: each endpoint's checks (role, ids, bounded pages of at most 500)
//! and answer. Must not touch: routing, presence's rules (every answer is
//! an engine read, or the node's own count).

use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;

use super::{number, only, Query};
use crate::api::{ok, parse_body, Answer, Body};
use crate::auth::{Principal, Role};
use crate::engine::presence::{State, MAX_PRESENCE_PAGE};
use crate::error::ApiError;
use crate::protocol::{check_id, ErrorCode};
use crate::state::App;

/// Players per page unless `limit` says otherwise.
const DEFAULT_PAGE: usize = 100;

/// The `limit` parameter: 1 to [`MAX_PRESENCE_PAGE`].
fn page(q: &Query) -> Result<usize, ApiError> {
    let n = number(q, "limit", DEFAULT_PAGE as u64)?;
    if n == 0 || n > MAX_PRESENCE_PAGE as u64 {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidRequest,
            format!("`limit` must be from 1 to {MAX_PRESENCE_PAGE}"),
        ));
    }
    Ok(n as usize)
}

/// `GET /v1/presence/players/{P}`: where one player stands.
pub async fn player(app: Arc<App>, p: Principal, player: String, q: Query) -> Answer {
    p.require(&[Role::Service, Role::Admin])?;
    check_id("player id", &player)?;
    only(&q, &[])?;
    let mut records = app.engine().presence_of(&[player]).await?;
    let record = records
        .pop()
        .ok_or_else(|| ApiError::internal("presence answered nothing"))?;
    ok(&record)
}

/// `GET /v1/presence/{room}?after=P&limit=N`: the room's members (sorted by
/// id, after `P`) with where each stands, and the counts of the page.
pub async fn room(app: Arc<App>, p: Principal, room: String, q: Query) -> Answer {
    p.require(&[Role::Service, Role::Admin])?;
    check_id("room id", &room)?;
    only(&q, &["after", "limit"])?;
    let limit = page(&q)?;
    let after = q.get("after").map(String::as_str).unwrap_or("");
    if !after.is_empty() {
        check_id("after", after)?;
    }
    let members = app.engine().members(&room).await?;
    let from = members.partition_point(|m| m.as_str() <= after);
    let chosen: Vec<String> = members.iter().skip(from).take(limit).cloned().collect();
    let more = from + chosen.len() < members.len();
    let records = app.engine().presence_of(&chosen).await?;
    let count = |s: State| records.iter().filter(|r| r.state == s).count();
    ok(&json!({
        "room_id": room,
        "players": records,
        "online": count(State::Online),
        "linkdead": count(State::Linkdead),
        "offline": count(State::Offline),
        "members": members.len(),
        "next_after": more.then(|| chosen.last().cloned()).flatten(),
    }))
}

/// `GET /v1/presence/facts/{partition}?after=ID&limit=N`: the facts of one
/// partition of `mythos:presence` after entry id `ID` (default `0-0`).
pub async fn facts(app: Arc<App>, p: Principal, partition: String, q: Query) -> Answer {
    p.require(&[Role::Service, Role::Admin])?;
    only(&q, &["after", "limit"])?;
    let partitions = app.engine().command_partitions();
    let partition = partition
        .parse::<usize>()
        .ok()
        .filter(|&n| n < partitions)
        .ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::InvalidRequest,
                format!(
                    "the partition must be a number below {partitions} (MYTHOS_COMMAND_PARTITIONS)"
                ),
            )
        })?;
    let after = super::after_entry(&q)?;
    let limit = page(&q)?;
    let facts = app.engine().presence_facts(partition, after, limit).await?;
    let next_after = (facts.len() == limit)
        .then(|| facts.last().map(|f| f.entry_id.clone()))
        .flatten();
    ok(&json!({
        "partition": partition,
        "partitions": partitions,
        "facts": facts,
        "next_after": next_after,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomEvents {
    events: bool,
}

/// `GET` (`body` is `None`) / `PUT /v1/rooms/{room}/presence_events`
/// `{"events": true|false}`.
pub async fn room_events(app: Arc<App>, p: Principal, room: String, body: Option<Body>) -> Answer {
    p.require(&[Role::Service, Role::Admin])?;
    check_id("room id", &room)?;
    if let Some(body) = body {
        let b: RoomEvents = parse_body(&body?)?;
        app.engine()
            .set_room_presence_events(&room, b.events)
            .await?;
    }
    let events = app.engine().room_presence_events(&room).await?;
    ok(&json!({"room_id": room, "events": events}))
}

/// `GET /v1/admin/presence`: this node's lease name and count, and every
/// node lease the store holds.
pub async fn leases(app: Arc<App>, p: Principal, q: Query) -> Answer {
    p.require(&[Role::Admin])?;
    only(&q, &[])?;
    let leases = app.engine().presence_leases().await?;
    ok(&json!({
        "node": app.presence().node(),
        "local_players": app.presence().local_players(),
        "grace_ms": app.config().presence_grace.as_millis() as u64,
        "lease_ms": app.config().presence_lease.as_millis() as u64,
        "leases": leases,
    }))
}
