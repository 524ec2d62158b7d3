//! Shared test support: real redis-server processes (`redis`) and real broker
//! nodes with HTTP/SSE/WebSocket clients (`broker`).
#![allow(dead_code)]
pub mod broker;
pub mod cluster;
pub mod demo;
pub mod history;
pub mod process;
pub mod proxy;
pub mod redis;

#[allow(unused_imports)]
pub use self::redis::{eventually, wait_for, RedisServer};
