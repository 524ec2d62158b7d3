//! Shared test support: real redis-server processes and real broker nodes.
#![allow(dead_code)]
pub mod broker;
pub mod redis;
