//! Support code of the benchmarks (`bench-delivery`, `bench-compare`,
//! `bench-engine`, `bench-replay`): their processes ([`procs`]), their
//! clients ([`net`], [`sse`], [`socketio`], and [`feed`] over all three),
//! their measurements ([`stats`]) and the Redis side they compare the broker
//! with ([`redis_side`]).
//!
//! The benchmarks are a workspace member of their own (`mythos-bench`), so
//! nothing in the product is public for their sake: they use the library's
//! public API, and what they need of the Redis layout (the append script,
//! key names) they take from `lua/` and `docs/redis-layout.md` themselves.

pub mod feed;
pub mod net;
pub mod procs;
pub mod redis_side;
pub mod socketio;
pub mod sse;
pub mod stats;
