//! mythos-broker: a Redis-backed, guaranteed-delivery real-time message broker
//! for MythosMUD.
//!
//! Data flows one way: `transport` (SSE, WebSocket) → `session` (replay + live,
//! acks, commands) → `engine` (Redis or memory). Publishing flows `server` /
//! `ingest` → `publish` → `engine`, and the engine announces appends to the
//! node's `hub`, which feeds the sessions.

pub mod api;
pub mod auth;
pub mod config;
pub mod engine;
pub mod error;
pub mod hub;
pub mod listener;
pub mod node;
pub mod protocol;
pub mod publish;
pub mod rooms;
pub mod server;
pub mod session;
pub mod state;
pub mod transport;
pub mod web;
