//! Room membership with its announcements: entering sends `player_entered` to
//! the room's other members, leaving sends `player_left` to those who remain.
//!
//! Owns: the shape of those two broker events. Must not touch: HTTP (routes
//! call in here) or storage details (the engine keeps the sets).

use std::sync::Arc;

use crate::engine::Engine;
use crate::protocol::{Delivery, EventBody, Target};
use crate::publish::PublishError;

/// What a membership change did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Change {
    /// False if the player already was (join) or was not (leave) a member.
    pub changed: bool,
    /// The announcement's deliveries to the other members.
    pub deliveries: Vec<Delivery>,
}

/// Puts `player` in `room` and tells the others.
pub async fn join(engine: &dyn Engine, room: &str, player: &str) -> Result<Change, PublishError> {
    let others = engine.join(room, player).await?;
    announce(engine, room, player, "player_entered", others).await
}

/// Takes `player` out of `room` and tells those who remain.
pub async fn leave(engine: &dyn Engine, room: &str, player: &str) -> Result<Change, PublishError> {
    let rest = engine.leave(room, player).await?;
    announce(engine, room, player, "player_left", rest).await
}

async fn announce(
    engine: &dyn Engine,
    room: &str,
    player: &str,
    event_type: &str,
    recipients: Option<Vec<String>>,
) -> Result<Change, PublishError> {
    let changed = recipients.is_some();
    let recipients = recipients.unwrap_or_default();
    if recipients.is_empty() {
        return Ok(Change {
            changed,
            deliveries: Vec::new(),
        });
    }
    let data = serde_json::value::to_raw_value(&serde_json::json!({
        "player_id": player,
        "room_id": room,
    }))
    .unwrap_or_default();
    let body = Arc::new(EventBody::now(
        event_type,
        data,
        Some(room.to_string()),
        None,
    ));
    let deliveries = engine
        .publish(&Target::Players(recipients), body, None)
        .await?;
    Ok(Change {
        changed: true,
        deliveries,
    })
}
