//! Support code of the `bench-delivery` load generator: its processes
//! ([`procs`]), its clients ([`net`]) and its measurements ([`stats`]).

pub mod net;
pub mod procs;
pub mod stats;
