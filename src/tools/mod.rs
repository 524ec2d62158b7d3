//! Tools for operators and test authors: recording a player's session
//! (export), replaying it into another player's log (replay), and looking at
//! a player or at the streams (inspect).
//!
//! Owns: the recording format ([`recording`]), the replay plan and its pacing
//! ([`replay`]), the inspect reports ([`inspect`]), and publishing a replay
//! through a running broker (`--url`, with [`crate::client::Http`]). Must not touch:
//! delivery or storage semantics — every read goes through the [`Engine`]
//! trait (or the HTTP API) and every replayed event is an ordinary publish.
//!
//! [`Engine`]: crate::engine::Engine

mod client;
pub mod inspect;
pub mod recording;
pub mod replay;

/// Most events one page of an export reads (engine read or API page).
pub const PAGE: usize = 1000;

/// One command as a JSON line of `export --commands` (the same shape
/// `GET /v1/admin/commands` answers).
pub fn command_line(partition: usize, e: crate::engine::CommandEntry) -> serde_json::Value {
    serde_json::to_value(CommandLine::new(partition, e)).unwrap_or_default()
}

/// One command as `export --commands` and the API show it: the entry, its
/// partition, and the client's message as JSON (text if it is not JSON).
#[derive(Debug, serde::Serialize)]
pub struct CommandLine {
    pub entry_id: String,
    pub partition: usize,
    pub player_id: String,
    pub session_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
    pub payload: serde_json::Value,
}

impl CommandLine {
    pub fn new(partition: usize, e: crate::engine::CommandEntry) -> Self {
        let c = e.command;
        Self {
            payload: serde_json::from_str(&c.payload)
                .unwrap_or(serde_json::Value::String(c.payload)),
            entry_id: e.entry_id,
            partition,
            player_id: c.player_id,
            session_id: c.session_id,
            kind: c.kind,
            id: c.id,
        }
    }
}
