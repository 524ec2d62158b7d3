//! The node's shared state, handed to every route and session.
//!
//! Owns: construction of the engine chosen by configuration, the hub, the
//! auth keys, the per-player rate limiter, and the shutdown signal. Must not
//! touch: request handling.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::config::Config;
use crate::engine::memory::MemoryEngine;
use crate::engine::redis::{RedisEngine, RedisOptions, Topology};
use crate::engine::Engine;
use crate::gate::Gate;
use crate::hub::Hub;
use crate::presence::{self, Tracker};

/// Everything a request or session may need. Its parts are reached through
/// methods: the public ones are what an embedder (a binary, a test, the
/// testkit) may use; the rest are the crate's own.
pub struct App {
    config: Config,
    engine: Arc<dyn Engine>,
    hub: Arc<Hub>,
    auth: Auth,
    /// Client messages per player (WebSocket).
    limiter: DefaultKeyedRateLimiter<String>,
    /// Login attempts per username.
    login_limiter: DefaultKeyedRateLimiter<String>,
    /// Cancelled when the node shuts down; sessions close their connections.
    shutdown: CancellationToken,
    /// Every session and background task, so shutdown can wait for them.
    tasks: TaskTracker,
    /// Connection caps per node and per player.
    gate: Arc<Gate>,
    /// This node's name (`MYTHOS_NODE_ID`, else host-pid), for logs.
    node: String,
    /// Who this node holds connections of (presence).
    presence: Arc<Tracker>,
}

impl App {
    /// Builds the state; the engine is Redis when `MYTHOS_REDIS_URL` is set.
    /// Settings are checked first ([`Config::validate`]: a bad one is
    /// `StartError::Config`, never a panic later); an unreachable Redis is
    /// retried with backoff for `MYTHOS_REDIS_CONNECT_TIMEOUT`, each attempt logged.
    pub async fn new(config: Config) -> Result<Arc<Self>, StartError> {
        config.validate().map_err(StartError::Config)?;
        let public_pem = match &config.jwt_public_key {
            Some(p) => Some(std::fs::read(p).map_err(|e| {
                StartError::Config(format!(
                    "MYTHOS_JWT_PUBLIC_KEY: cannot read {}: {e}",
                    p.display()
                ))
            })?),
            None => None,
        };
        let auth = Auth::new(
            config.jwt_secret.as_deref(),
            config.jwt_secret_previous(),
            public_pem.as_deref(),
            config.token_ttl,
        )
        .map_err(StartError::Config)?;
        let hub = Hub::new(config.send_queue as usize);
        let engine: Arc<dyn Engine> = match config.redis_options() {
            Some(options) => connect_redis(&config, &options, &hub).await?,
            None => Arc::new(MemoryEngine::new(config.limits(), hub.clone())),
        };
        let per_sec = NonZeroU32::new(config.rate_per_sec.min(u32::MAX as u64) as u32)
            .unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.rate_burst.min(u32::MAX as u64) as u32)
            .unwrap_or(NonZeroU32::MIN);
        let login_quota = Quota::per_second(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN));
        let gate = Gate::new(config.max_connections, config.max_player_connections);
        let node = config.node_name();
        let shutdown = CancellationToken::new();
        let presence = Tracker::new(
            engine.clone(),
            presence::Settings {
                node: format!("{node}.{}", crate::engine::presence::now_ms()),
                grace: config.presence_grace,
                lease: config.presence_lease,
            },
            shutdown.clone(),
        );
        Ok(Arc::new(Self {
            node,
            presence,
            limiter: RateLimiter::keyed(Quota::per_second(per_sec).allow_burst(burst)),
            login_limiter: RateLimiter::keyed(login_quota),
            config,
            engine,
            hub,
            auth,
            shutdown,
            tasks: TaskTracker::new(),
            gate,
        }))
    }
}

impl App {
    /// The node's settings.
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// The store (an embedder's tests and game servers use it directly).
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }
    /// Token verification and issuing.
    pub fn auth(&self) -> &Auth {
        &self.auth
    }
    /// Cancel it to stop the node (connections close with `1012`).
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }
    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }
    /// This node's presence: who it holds connections of.
    pub fn presence(&self) -> &Arc<Tracker> {
        &self.presence
    }
    /// The node's live routing (tests read its slow-consumer count).
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }
    pub(crate) fn limiter(&self) -> &DefaultKeyedRateLimiter<String> {
        &self.limiter
    }
    pub(crate) fn login_limiter(&self) -> &DefaultKeyedRateLimiter<String> {
        &self.login_limiter
    }
    pub(crate) fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }
    pub(crate) fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }
}

/// Why a node could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is wrong: a usage error (exit code 2).
    #[error("{0}")]
    Config(String),
    /// The engine cannot be reached: try again later (exit code 1).
    #[error("{0}")]
    Unavailable(String),
}

/// Connects the Redis engine, retrying with backoff (50 ms doubling to 2 s)
/// until `MYTHOS_REDIS_CONNECT_TIMEOUT` has passed.
async fn connect_redis(
    config: &Config,
    options: &RedisOptions,
    hub: &Arc<Hub>,
) -> Result<Arc<dyn Engine>, StartError> {
    let (setting, place) = match &options.topology {
        Topology::Single(url) => ("MYTHOS_REDIS_URL", format!("Redis at {}", redact(url))),
        Topology::Cluster(seeds) => (
            "MYTHOS_REDIS_CLUSTER",
            format!(
                "the Redis Cluster at {}",
                seeds
                    .iter()
                    .map(|s| redact(s))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
    };
    let deadline = tokio::time::Instant::now() + config.redis_connect_timeout;
    let mut wait = Duration::from_millis(50);
    loop {
        let r = RedisEngine::connect(options, config.limits(), hub.clone()).await;
        let e = match r {
            Ok(engine) => return Ok(engine),
            Err(e) => e,
        };
        let msg = format!("{setting}: cannot reach {place}: {e}");
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(StartError::Unavailable(format!(
                "{msg} (gave up after MYTHOS_REDIS_CONNECT_TIMEOUT={})",
                humantime::format_duration(config.redis_connect_timeout)
            )));
        }
        let pause = wait.min(left);
        tracing::warn!("{msg}; retrying in {pause:?}");
        tokio::time::sleep(pause).await;
        wait = crate::backoff::next(wait, Duration::from_secs(2));
    }
}

/// A Redis URL with any password replaced, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}
