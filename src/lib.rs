//! mythos-broker: a Redis-backed, guaranteed-delivery real-time message broker
//! for MythosMUD.
//!
//! Data flows one way: `transport` (SSE, WebSocket) → `session` (replay + live,
//! acks, commands) → `engine` (Redis or memory). Publishing flows `server` (or
//! the Redis engine's `mythos:publish` consumer) → `publish` → `engine`, and
//! the engine announces appends to the node's `hub` (a [`engine::LiveSink`]),
//! which feeds the sessions.
//!
//! The public surface is what a binary or a test embedding a node needs, and
//! a client of a running broker ([`client`]):
//! configuration, the engines and their trait, the hub, the session (the
//! delivery semantics any transport uses), the wire types, the
//! node's state and starting it, issuing tokens, and creating an account.
//! Everything else is crate-private.

pub mod auth;
pub mod client;
pub mod config;
pub mod engine;
pub mod hub;
pub mod presence;
pub mod protocol;
pub mod run;
pub mod server;
pub mod session;
pub mod state;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod tools;

mod admin;
mod api;
mod backoff;
#[cfg(feature = "defects")]
mod defects;
mod error;
mod gate;
mod listener;
mod node;
mod publish;
mod refresh;
mod rooms;
mod telemetry;
mod transport;
mod web;

pub use api::create_account;
pub use error::ApiError;
pub use publish::EntryPublisher;
