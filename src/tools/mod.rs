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
    serde_json::to_value(crate::admin::CommandLine::new(partition, e)).unwrap_or_default()
}
