//! The Redis engine (stub, being written).
