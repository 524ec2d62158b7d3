//! Configuration: every setting from `MYTHOS_*` environment variables, mirrored
//! by CLI flags, validated once at start-up.
//!
//! Owns: names, defaults and validation of settings. Must not touch: anything
//! that runs. A bad value stops start-up with one line naming the setting
//! (exit code 2, like every usage error).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::engine::redis::{RedisOptions, Topology};
use crate::engine::Limits;

/// Redis-backed, guaranteed-delivery real-time message broker for MythosMUD.
///
/// Without MYTHOS_REDIS_URL the broker runs on the embedded in-memory engine:
/// one node, and NOT durable (a restart forgets every event, cursor, room and
/// account). Set MYTHOS_REDIS_URL for durability and several nodes.
#[derive(Debug, Parser)]
#[command(name = "mythos-broker", version, about, long_about)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the broker (the default).
    Serve,
    /// Manage accounts.
    #[command(subcommand)]
    User(UserCmd),
    /// Write a player's retained events (or the upstream commands) to
    /// standard output as JSON lines: a recording. Reads Redis directly
    /// (MYTHOS_REDIS_URL / MYTHOS_REDIS_CLUSTER), or a running broker with --url.
    Export(ExportArgs),
    /// Publish a recording into a player's log (same event types, data and
    /// relative timing; ids `replay:<player>:<seq>`, so a replay run twice
    /// appends once). Through Redis directly, or a running broker with --url.
    Replay(ReplayArgs),
    /// Look at a player or at the streams (plain `name: value` lines, or --json).
    #[command(subcommand)]
    Inspect(InspectCmd),
}

impl Cmd {
    /// `export`, `replay` and `inspect`: tools that read or publish through
    /// a store or a running broker, and serve nothing.
    pub fn is_tool(&self) -> bool {
        matches!(self, Cmd::Export(_) | Cmd::Replay(_) | Cmd::Inspect(_))
    }
}

/// How a tool reaches the broker: a running node's HTTP API (`--url`), or,
/// without it, the store the settings name.
#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// A running broker's base URL (http://host:port): use its admin HTTP API
    /// (either engine) instead of reading Redis directly.
    #[arg(long)]
    pub url: Option<String>,
    /// The bearer token for --url (admin role). Default: one minted from
    /// MYTHOS_JWT_SECRET.
    #[arg(long, hide_env_values = true, env = "MYTHOS_TOKEN")]
    pub token: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// The player whose retained events to write (with --commands: only
    /// this player's commands).
    #[arg(long)]
    pub player: Option<String>,
    /// First sequence number to write (default: the oldest retained).
    #[arg(long)]
    pub from: Option<u64>,
    /// Last sequence number to write (default: the newest).
    #[arg(long)]
    pub to: Option<u64>,
    /// Write the upstream commands (every partition) instead of events.
    #[arg(long)]
    pub commands: bool,
    /// With --commands: only those after a stream entry id (1700000000000-5),
    /// at or after an RFC 3339 time, or within a duration back from now (10m).
    #[arg(long)]
    pub since: Option<String>,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// The recording (JSON lines, as `export` writes them).
    pub file: PathBuf,
    /// The player whose log receives the replay.
    #[arg(long)]
    pub to_player: String,
    /// 1 = the recorded timing, 10 = ten times faster, max = no waiting.
    #[arg(long, default_value = "1")]
    pub speed: String,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Clone, Subcommand)]
pub enum InspectCmd {
    /// A player: last sequence number, acked, retained, oldest retained
    /// (number and age), dedupe keys, rooms, live connections (with --url).
    Player {
        player: String,
        /// Print JSON instead of `name: value` lines.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Presence: one player's state (online, linkdead, offline), since when,
    /// on which nodes; without a player, every node lease in the store.
    Presence {
        player: Option<String>,
        /// Print JSON instead of `name: value` lines.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// The publish and command streams: lengths per partition, consumer
    /// groups, pending entries and their idle times, dead letters.
    Streams {
        /// Print JSON instead of `name: value` lines.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Create an account; the password is read from the first line of stdin.
    Add {
        /// The username, which is also the player id ([A-Za-z0-9_-]{1,64}).
        name: String,
        /// The account's role.
        #[arg(long, default_value = "player", value_parser = ["player", "service", "admin"])]
        role: String,
    },
}

/// Every setting. Each flag can also be given by its environment variable.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Listen address.
    #[arg(long, global = true, env = "MYTHOS_BIND", default_value = "127.0.0.1:54731", value_parser = parse_addr)]
    pub bind: SocketAddr,

    /// Redis URL (redis:// or rediss://). Unset: the embedded in-memory engine (not durable).
    #[arg(long, global = true, env = "MYTHOS_REDIS_URL", value_parser = parse_redis_url)]
    pub redis_url: Option<String>,

    /// HS256 secret for JWTs. Required unless --dev.
    #[arg(long, global = true, env = "MYTHOS_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// The HS256 secret being rotated out: tokens it signed are still
    /// accepted (new ones are signed with MYTHOS_JWT_SECRET). Unset it once
    /// the longest token lifetime has passed. Empty: unset.
    #[arg(
        long,
        global = true,
        env = "MYTHOS_JWT_SECRET_PREVIOUS",
        hide_env_values = true
    )]
    pub jwt_secret_previous: Option<String>,

    /// PEM public key (RSA or Ed25519) accepted for RS256/EdDSA tokens minted by a game backend.
    #[arg(long, global = true, env = "MYTHOS_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// Development mode: generates and prints a JWT secret if none is set.
    #[arg(long, global = true, env = "MYTHOS_DEV")]
    pub dev: bool,

    /// Per-player cap on retained unacknowledged events.
    #[arg(long, global = true, env = "MYTHOS_MAX_BACKLOG", default_value = "10000", value_parser = parse_count("MYTHOS_MAX_BACKLOG"))]
    pub max_backlog: u64,

    /// Per-player cap on the age of retained unacknowledged events (e.g. 7d, 12h).
    #[arg(long, global = true, env = "MYTHOS_MAX_BACKLOG_AGE", default_value = "7d", value_parser = parse_duration("MYTHOS_MAX_BACKLOG_AGE"))]
    pub max_backlog_age: Duration,

    /// How long a publish `id` is remembered.
    #[arg(long, global = true, env = "MYTHOS_DEDUPE_WINDOW", default_value = "24h", value_parser = parse_duration("MYTHOS_DEDUPE_WINDOW"))]
    pub dedupe_window: Duration,

    /// Largest `data` of one published event, in bytes.
    #[arg(long, global = true, env = "MYTHOS_MAX_EVENT_BYTES", default_value = "65536", value_parser = parse_count("MYTHOS_MAX_EVENT_BYTES"))]
    pub max_event_bytes: u64,

    /// Lifetime of tokens issued by login and refresh.
    #[arg(long, global = true, env = "MYTHOS_TOKEN_TTL", default_value = "1h", value_parser = parse_duration("MYTHOS_TOKEN_TTL"))]
    pub token_ttl: Duration,

    /// Lifetime of an unused refresh-token family (the web terminal's "stay
    /// logged in" cookie); every use starts it again.
    #[arg(long, global = true, env = "MYTHOS_REFRESH_TTL", default_value = "30d", value_parser = parse_duration("MYTHOS_REFRESH_TTL"))]
    pub refresh_ttl: Duration,

    /// Whether the refresh cookie is `Secure` (sent over HTTPS only; browsers
    /// also send it to http://127.0.0.1 and http://localhost). Turn off only
    /// to try the web terminal over plain HTTP on another host.
    #[arg(long, global = true, env = "MYTHOS_COOKIE_SECURE", default_value = "true", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub cookie_secure: bool,

    /// Tracing filter (info, mythos_broker=debug, ...).
    #[arg(long, global = true, env = "MYTHOS_LOG", default_value = "info")]
    pub log: String,

    /// Log format on stderr: `text` (colours only when stdout and stderr are
    /// terminals) or `json` (one JSON object per line, with the spans).
    #[arg(long, global = true, env = "MYTHOS_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Interval of SSE keep-alive comments.
    #[arg(long, global = true, env = "MYTHOS_KEEPALIVE", default_value = "15s", value_parser = parse_duration("MYTHOS_KEEPALIVE"))]
    pub keepalive: Duration,

    /// A WebSocket peer silent this long is dropped (the server pings at a third of it).
    #[arg(long, global = true, env = "MYTHOS_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration("MYTHOS_IDLE_TIMEOUT"))]
    pub idle_timeout: Duration,

    /// Largest WebSocket frame accepted from a client, in bytes.
    #[arg(long, global = true, env = "MYTHOS_WS_MAX_FRAME", default_value = "8192", value_parser = parse_count("MYTHOS_WS_MAX_FRAME"))]
    pub ws_max_frame: u64,

    /// Deepest JSON nesting of a client message (WebSocket).
    #[arg(long, global = true, env = "MYTHOS_WS_MAX_DEPTH", default_value = "16", value_parser = parse_count("MYTHOS_WS_MAX_DEPTH"))]
    pub ws_max_depth: u64,

    /// Longest `command` name (and chat `channel`) of a client message, characters of [a-z_].
    #[arg(long, global = true, env = "MYTHOS_WS_MAX_COMMAND", default_value = "64", value_parser = parse_count("MYTHOS_WS_MAX_COMMAND"))]
    pub ws_max_command: u64,

    /// Most `args` of a client command.
    #[arg(long, global = true, env = "MYTHOS_WS_MAX_ARGS", default_value = "16", value_parser = parse_count("MYTHOS_WS_MAX_ARGS"))]
    pub ws_max_args: u64,

    /// Client messages per second allowed per player (WebSocket).
    #[arg(long, global = true, env = "MYTHOS_RATE_PER_SEC", default_value = "10", value_parser = parse_count("MYTHOS_RATE_PER_SEC"))]
    pub rate_per_sec: u64,

    /// Burst of client messages allowed per player above the rate.
    #[arg(long, global = true, env = "MYTHOS_RATE_BURST", default_value = "20", value_parser = parse_count("MYTHOS_RATE_BURST"))]
    pub rate_burst: u64,

    /// Events queued for one connection before it counts as a slow consumer.
    #[arg(long, global = true, env = "MYTHOS_SEND_QUEUE", default_value = "1024", value_parser = parse_count("MYTHOS_SEND_QUEUE"))]
    pub send_queue: u64,

    /// Allowed browser origins for WebSocket and CORS, comma-separated; `*` allows any.
    #[arg(
        long,
        global = true,
        env = "MYTHOS_ALLOWED_ORIGINS",
        default_value = "*"
    )]
    pub allowed_origins: String,

    /// Pooled Redis connections per node.
    #[arg(long, global = true, env = "MYTHOS_REDIS_POOL", default_value = "32", value_parser = parse_count("MYTHOS_REDIS_POOL"))]
    pub redis_pool: u64,

    /// How long a player who lost their last connection stays `linkdead`
    /// before going offline (a reconnect inside it emits nothing; 0: offline at once).
    #[arg(long, global = true, env = "MYTHOS_PRESENCE_GRACE", default_value = "15s", value_parser = parse_duration("MYTHOS_PRESENCE_GRACE"))]
    pub presence_grace: Duration,

    /// How long a node's presence lease lasts unrefreshed (refreshed every
    /// fifth of it); a node silent this long is reaped by the others.
    #[arg(long, global = true, env = "MYTHOS_PRESENCE_LEASE", default_value = "5s", value_parser = parse_duration("MYTHOS_PRESENCE_LEASE"))]
    pub presence_lease: Duration,

    /// This node's name in Redis consumer groups (default: host-pid).
    #[arg(long, global = true, env = "MYTHOS_NODE_ID")]
    pub node_id: Option<String>,

    /// Redis-native publishing: entries pending this long on a consumer (a
    /// crashed node) are taken over by another node.
    #[arg(long, global = true, env = "MYTHOS_INGEST_CLAIM_IDLE", default_value = "30s", value_parser = parse_duration("MYTHOS_INGEST_CLAIM_IDLE"))]
    pub ingest_claim_idle: Duration,

    /// Seed URLs of a Redis Cluster, comma-separated (contract §10); set
    /// instead of MYTHOS_REDIS_URL.
    #[arg(long, global = true, env = "MYTHOS_REDIS_CLUSTER", value_parser = parse_cluster_seeds)]
    pub redis_cluster: Option<ClusterSeeds>,

    /// Partitions of the upstream command stream (1 keeps `mythos:commands`;
    /// see docs/redis-layout.md). A player's commands stay in one partition.
    #[arg(long, global = true, env = "MYTHOS_COMMAND_PARTITIONS", default_value = "1", value_parser = parse_count("MYTHOS_COMMAND_PARTITIONS"))]
    pub command_partitions: u64,

    /// Partitions of the Redis-native publish stream (1 keeps `mythos:publish`).
    #[arg(long, global = true, env = "MYTHOS_PUBLISH_PARTITIONS", default_value = "1", value_parser = parse_count("MYTHOS_PUBLISH_PARTITIONS"))]
    pub publish_partitions: u64,

    /// After every append, WAIT for this many replicas to confirm it before
    /// answering 200 / command_accepted (0: don't wait; needs MYTHOS_REDIS_URL).
    #[arg(long, global = true, env = "MYTHOS_REDIS_WAIT_REPLICAS", default_value = "0", value_parser = parse_count("MYTHOS_REDIS_WAIT_REPLICAS"))]
    pub redis_wait_replicas: u64,

    /// How long that WAIT may take; fewer confirmations → 503 not_replicated.
    #[arg(long, global = true, env = "MYTHOS_REDIS_WAIT_TIMEOUT", default_value = "1s", value_parser = parse_duration("MYTHOS_REDIS_WAIT_TIMEOUT"))]
    pub redis_wait_timeout: Duration,

    /// How long start-up keeps retrying (with backoff) to reach an unreachable
    /// Redis before it gives up with exit code 1; 0 = one attempt.
    #[arg(long, global = true, env = "MYTHOS_REDIS_CONNECT_TIMEOUT", default_value = "30s", value_parser = parse_duration("MYTHOS_REDIS_CONNECT_TIMEOUT"))]
    pub redis_connect_timeout: Duration,

    /// How long a client may take to send a request's headers, and its body
    /// (slow senders are cut: headers → connection closed, body → 408).
    #[arg(long, global = true, env = "MYTHOS_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration("MYTHOS_REQUEST_TIMEOUT"))]
    pub request_timeout: Duration,

    /// Most open player connections (SSE streams and WebSockets) on this node;
    /// the next one is refused with 429 before the stream or upgrade.
    #[arg(long, global = true, env = "MYTHOS_MAX_CONNECTIONS", default_value = "100000", value_parser = parse_count("MYTHOS_MAX_CONNECTIONS"))]
    pub max_connections: u64,

    /// Most open connections of one player on this node (tabs, devices, and
    /// the SSE transport's command WebSocket each count); the next one gets 429.
    #[arg(long, global = true, env = "MYTHOS_MAX_PLAYER_CONNECTIONS", default_value = "32", value_parser = parse_count("MYTHOS_MAX_PLAYER_CONNECTIONS"))]
    pub max_player_connections: u64,
}

/// Allowed range of each count setting: (name, least, most). Past the most,
/// a value would exhaust memory or overflow later; start-up refuses it.
const COUNT_BOUNDS: [(&str, u64, u64); 15] = [
    ("MYTHOS_MAX_BACKLOG", 1, 10_000_000),
    ("MYTHOS_MAX_EVENT_BYTES", 1, 16 * 1024 * 1024),
    ("MYTHOS_WS_MAX_FRAME", 1, 16 * 1024 * 1024),
    ("MYTHOS_WS_MAX_DEPTH", 1, 128),
    ("MYTHOS_WS_MAX_COMMAND", 1, 1024),
    ("MYTHOS_WS_MAX_ARGS", 0, 1024),
    ("MYTHOS_RATE_PER_SEC", 1, 1_000_000),
    ("MYTHOS_RATE_BURST", 1, 1_000_000),
    ("MYTHOS_SEND_QUEUE", 1, 1_000_000),
    ("MYTHOS_REDIS_POOL", 1, 1024),
    ("MYTHOS_MAX_CONNECTIONS", 1, 10_000_000),
    ("MYTHOS_MAX_PLAYER_CONNECTIONS", 1, 100_000),
    ("MYTHOS_REDIS_WAIT_REPLICAS", 0, 64),
    ("MYTHOS_COMMAND_PARTITIONS", 1, 1024),
    ("MYTHOS_PUBLISH_PARTITIONS", 1, 1024),
];

const SECOND: Duration = Duration::from_secs(1);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// Allowed range of each duration setting: (name, least, most). A timer of
/// zero panics, and a window past a few hundred years overflows a clock.
const DURATION_BOUNDS: [(&str, Duration, Duration); 12] = [
    (
        "MYTHOS_TOKEN_TTL",
        SECOND,
        Duration::from_secs(366 * 24 * 3600),
    ),
    (
        "MYTHOS_REFRESH_TTL",
        SECOND,
        Duration::from_secs(366 * 24 * 3600),
    ),
    ("MYTHOS_KEEPALIVE", Duration::from_millis(10), DAY),
    ("MYTHOS_IDLE_TIMEOUT", Duration::from_millis(30), DAY),
    (
        "MYTHOS_DEDUPE_WINDOW",
        Duration::from_millis(1),
        Duration::from_secs(366 * 24 * 3600),
    ),
    (
        "MYTHOS_MAX_BACKLOG_AGE",
        Duration::from_millis(1),
        Duration::from_secs(10 * 366 * 24 * 3600),
    ),
    ("MYTHOS_INGEST_CLAIM_IDLE", Duration::from_millis(1), DAY),
    ("MYTHOS_PRESENCE_GRACE", Duration::ZERO, DAY),
    (
        "MYTHOS_PRESENCE_LEASE",
        Duration::from_millis(250),
        Duration::from_secs(300),
    ),
    (
        "MYTHOS_REQUEST_TIMEOUT",
        Duration::from_millis(10),
        Duration::from_secs(3600),
    ),
    (
        "MYTHOS_REDIS_CONNECT_TIMEOUT",
        Duration::ZERO,
        Duration::from_secs(3600),
    ),
    (
        "MYTHOS_REDIS_WAIT_TIMEOUT",
        Duration::from_millis(1),
        Duration::from_secs(60),
    ),
];

impl Config {
    /// Checks what a single flag's parser cannot; the error names the setting.
    /// The limits of a WebSocket client message.
    pub fn message_limits(&self) -> crate::protocol::MessageLimits {
        let n = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        crate::protocol::MessageLimits {
            max_depth: n(self.ws_max_depth),
            max_command: n(self.ws_max_command),
            max_args: n(self.ws_max_args),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.jwt_secret.is_none() && !self.dev {
            return Err(
                "MYTHOS_JWT_SECRET is required (set it, or run with --dev for a generated one)"
                    .into(),
            );
        }
        if self.redis_cluster.is_some() && self.redis_url.is_some() {
            return Err(
                "MYTHOS_REDIS_URL and MYTHOS_REDIS_CLUSTER are both set: set one (a single Redis, or a cluster's seeds)"
                    .into(),
            );
        }
        if self.redis_wait_replicas > 0 && self.redis_options().is_none() {
            return Err(
                "MYTHOS_REDIS_WAIT_REPLICAS needs MYTHOS_REDIS_URL or MYTHOS_REDIS_CLUSTER: the embedded engine has no replicas"
                    .into(),
            );
        }
        if matches!(&self.jwt_secret, Some(s) if s.len() < 16) {
            return Err("MYTHOS_JWT_SECRET must be at least 16 bytes".into());
        }
        if let Some(previous) = self.jwt_secret_previous() {
            if previous.len() < 16 {
                return Err("MYTHOS_JWT_SECRET_PREVIOUS must be at least 16 bytes".into());
            }
            if self.jwt_secret.is_none() {
                return Err(
                    "MYTHOS_JWT_SECRET_PREVIOUS needs MYTHOS_JWT_SECRET (the new secret)".into(),
                );
            }
        }
        let counts = [
            self.max_backlog,
            self.max_event_bytes,
            self.ws_max_frame,
            self.ws_max_depth,
            self.ws_max_command,
            self.ws_max_args,
            self.rate_per_sec,
            self.rate_burst,
            self.send_queue,
            self.redis_pool,
            self.max_connections,
            self.max_player_connections,
            self.redis_wait_replicas,
            self.command_partitions,
            self.publish_partitions,
        ];
        for ((name, least, most), v) in COUNT_BOUNDS.into_iter().zip(counts) {
            if !(least..=most).contains(&v) {
                return Err(format!("{name} must be from {least} to {most} (got {v})"));
            }
        }
        let durations = [
            self.token_ttl,
            self.refresh_ttl,
            self.keepalive,
            self.idle_timeout,
            self.dedupe_window,
            self.max_backlog_age,
            self.ingest_claim_idle,
            self.presence_grace,
            self.presence_lease,
            self.request_timeout,
            self.redis_connect_timeout,
            self.redis_wait_timeout,
        ];
        for ((name, least, most), d) in DURATION_BOUNDS.into_iter().zip(durations) {
            if !(least..=most).contains(&d) {
                let (l, m) = (
                    humantime::format_duration(least),
                    humantime::format_duration(most),
                );
                return Err(format!("{name} must be from {l} to {m}"));
            }
        }
        Ok(())
    }

    /// The previous JWT secret of a rotation; empty counts as unset (so that
    /// `MYTHOS_JWT_SECRET_PREVIOUS=` in a compose file means "no rotation").
    pub fn jwt_secret_previous(&self) -> Option<&str> {
        self.jwt_secret_previous
            .as_deref()
            .filter(|s| !s.is_empty())
    }

    /// The engine's retention limits.
    pub fn limits(&self) -> Limits {
        Limits {
            wait_replicas: self.redis_wait_replicas,
            wait_timeout: self.redis_wait_timeout,
            max_backlog: self.max_backlog,
            max_backlog_age: self.max_backlog_age,
            dedupe_window: self.dedupe_window,
        }
    }

    /// How the Redis engine connects; `None`: the embedded memory engine.
    pub fn redis_options(&self) -> Option<RedisOptions> {
        let topology = match (&self.redis_url, &self.redis_cluster) {
            (Some(url), _) => Topology::Single(url.clone()),
            (None, Some(seeds)) => Topology::Cluster(seeds.0.clone()),
            (None, None) => return None,
        };
        let n = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Some(RedisOptions {
            topology,
            pool_size: n(self.redis_pool),
            command_partitions: n(self.command_partitions),
            publish_partitions: n(self.publish_partitions),
        })
    }

    /// This node's consumer name.
    pub fn node_name(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "node".into());
            format!("{host}-{}", std::process::id())
        })
    }

    /// A configuration with every default and the given secret, for tests and
    /// embedding. The process environment is ignored: a developer's exported
    /// `MYTHOS_*` (a Redis URL, a backlog cap) must not change what a test runs on.
    #[cfg(feature = "testkit")]
    pub fn for_tests(secret: &str) -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let cmd = Cli::command().mut_args(|a| a.env(None::<&str>));
        let mut config = cmd
            .try_get_matches_from(["mythos-broker"])
            .map_err(|e| e.to_string())
            .and_then(|m| Cli::from_arg_matches(&m).map_err(|e| e.to_string()))
            .map(|cli| cli.config)
            .unwrap_or_else(|e| panic!("the defaults parse: {e}"));
        config.jwt_secret = Some(secret.to_string());
        config.bind = SocketAddr::from(([127, 0, 0, 1], 0));
        config
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("MYTHOS_BIND: `{s}` is not an address like 127.0.0.1:54731"))
}

fn parse_redis_url(s: &str) -> Result<String, String> {
    if !(s.starts_with("redis://") || s.starts_with("rediss://") || s.starts_with("redis+unix://"))
    {
        return Err(format!(
            "MYTHOS_REDIS_URL: `{s}` must start with redis:// or rediss://"
        ));
    }
    redis::Client::open(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("MYTHOS_REDIS_URL: `{s}` is not a valid Redis URL ({e})"))
}

/// A Redis Cluster's seed URLs (`MYTHOS_REDIS_CLUSTER`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSeeds(pub Vec<String>);

/// Most seeds accepted (a cluster is found from any one of them).
const MAX_SEEDS: usize = 64;

fn parse_cluster_seeds(s: &str) -> Result<ClusterSeeds, String> {
    let seeds: Vec<&str> = s
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .take(MAX_SEEDS + 1)
        .collect();
    if seeds.is_empty() {
        return Err("MYTHOS_REDIS_CLUSTER: give at least one redis://host:port".into());
    }
    if seeds.len() > MAX_SEEDS {
        return Err(format!(
            "MYTHOS_REDIS_CLUSTER: at most {MAX_SEEDS} seed URLs"
        ));
    }
    seeds
        .into_iter()
        .map(|u| {
            parse_redis_url(u)
                .map_err(|e| e.replacen("MYTHOS_REDIS_URL", "MYTHOS_REDIS_CLUSTER", 1))
        })
        .collect::<Result<_, _>>()
        .map(ClusterSeeds)
}

fn parse_count(name: &'static str) -> impl Fn(&str) -> Result<u64, String> + Clone {
    move |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| format!("{name}: `{s}` is not a non-negative whole number"))
    }
}

fn parse_duration(name: &'static str) -> impl Fn(&str) -> Result<Duration, String> + Clone {
    move |s: &str| {
        humantime::parse_duration(s.trim())
            .map_err(|_| format!("{name}: `{s}` is not a duration like 30s, 12h or 7d"))
    }
}

#[cfg(test)]
mod bound_tests {
    use super::*;

    fn with(env: &[(&str, &str)]) -> Result<(), String> {
        let mut args = vec![
            "mythos-broker".to_string(),
            "--jwt-secret".into(),
            "0123456789abcdef".into(),
        ];
        for (k, v) in env {
            let flag = k
                .trim_start_matches("MYTHOS_")
                .to_lowercase()
                .replace('_', "-");
            args.push(format!("--{flag}={v}"));
        }
        // The process environment is ignored, as in `for_tests`.
        use clap::{CommandFactory, FromArgMatches};
        let m = Cli::command()
            .mut_args(|a| a.env(None::<&str>))
            .try_get_matches_from(args)
            .map_err(|e| e.to_string())?;
        let cli = Cli::from_arg_matches(&m).map_err(|e| e.to_string())?;
        cli.config.validate()
    }

    #[test]
    fn defaults_are_within_bounds() {
        assert_eq!(with(&[]), Ok(()));
    }

    /// Hole 3 of issue 11: values that passed validation and panicked later.
    #[test]
    fn absurd_values_are_refused_naming_the_setting() {
        for (k, v) in [
            ("MYTHOS_IDLE_TIMEOUT", "1ns"),
            ("MYTHOS_KEEPALIVE", "1ns"),
            ("MYTHOS_SEND_QUEUE", "18446744073709551615"),
            ("MYTHOS_DEDUPE_WINDOW", "100000000y"),
            ("MYTHOS_MAX_EVENT_BYTES", "18446744073709551615"),
            ("MYTHOS_MAX_BACKLOG", "0"),
            ("MYTHOS_WS_MAX_DEPTH", "100000"),
            ("MYTHOS_MAX_CONNECTIONS", "0"),
            ("MYTHOS_MAX_PLAYER_CONNECTIONS", "0"),
            ("MYTHOS_REDIS_POOL", "100000"),
        ] {
            let err = with(&[(k, v)]).expect_err(k);
            assert!(err.contains(k), "{k}={v}: {err}");
        }
    }
}
