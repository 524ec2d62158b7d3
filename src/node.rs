//! Background work of a node besides serving requests: Redis-native
//! publishing (when the engine is Redis).
//!
//! Owns: starting those tasks and tying them to the node's shutdown. Must not
//! touch: request handling.

use std::sync::Arc;

use crate::state::App;

/// Starts the node's background tasks.
pub fn start_background(app: &Arc<App>) {
    let _ = app;
}
