//! The demo world (placeholder).
use std::net::SocketAddr;
use std::sync::Arc;

use crate::state::App;

pub async fn start(_app: &Arc<App>, _addr: SocketAddr) {}
