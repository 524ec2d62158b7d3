//! The storage engine: the one trait every backend implements, and its types.
//!
//! Owns: the contract of a player's durable event log (dense sequence numbers,
//! idempotent appends, cumulative acknowledgements, retention),
//! room membership, the upstream command stream, accounts, refresh-token
//! families and presence ([`presence`]). Must not touch:
//! HTTP, sockets, JWTs. Engines announce fresh appends to a [`LiveSink`] (the
//! node's hub, which routes them to the live connections); engines never hold
//! a connection and do not know the hub.
//!
//! Two engines: [`memory::MemoryEngine`] (embedded default, one node, not
//! durable) and [`redis::RedisEngine`] (durable, many nodes). Both pass the same
//! conformance suite (`tests/conformance.rs`).

pub mod memory;
pub mod presence;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use self::presence::Presence;
pub use crate::error::EngineError;
use crate::protocol::{Delivery, Event, EventBody, Target};

pub type Result<T> = std::result::Result<T, EngineError>;

/// Where an engine announces fresh appends: this node's live routing (the
/// hub). Every method returns at once; none may wait on a connection.
pub trait LiveSink: Send + Sync {
    /// True if some connection on this node follows one of the `targets`'
    /// players (the Redis engine decodes an announcement only then).
    fn wants_any(&self, targets: &[(&str, u64)]) -> bool;
    /// `event` was just appended to `player`'s log.
    fn deliver(&self, player: &str, event: &Event);
    /// One event (one `body`) was just appended to several players' logs,
    /// each under its own sequence number: a fan-out handed on at once.
    fn deliver_all(&self, targets: &[(&str, u64)], body: &Arc<EventBody>) {
        for (player, seq) in targets {
            let event = Event {
                sequence_number: *seq,
                body: body.clone(),
            };
            self.deliver(player, &event);
        }
    }
    /// Announcements may have been lost: every reader should re-read its log.
    fn nudge_all(&self);
    /// Announcements of `player` may have been lost: its readers re-read.
    fn nudge(&self, player: &str);
}

/// What becomes of the publishes game servers hand to the storage itself
/// ([`Engine::start_ingest`]): the node's handler validates each entry as an
/// HTTP publish and appends it; the engine only reads, acknowledges and
/// dead-letters entries, and does not know what they mean.
#[async_trait]
pub trait IngestHandler: Send + Sync {
    /// Handles the entry `entry_id` with `fields`: `Ok(None)` appended (the
    /// engine acknowledges it), `Ok(Some(reason))` refused (`<code>: <message>`;
    /// dead-lettered and acknowledged), `Err` the engine failed (retried).
    async fn handle(&self, entry_id: &str, fields: &[(String, Vec<u8>)]) -> Result<Option<String>>;
}

/// How an engine consumes publishes handed to the storage itself
/// ([`Engine::start_ingest`]; Redis: the `mythos:publish` stream).
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// This node's consumer name.
    pub consumer: String,
    /// Entries pending this long on another consumer are taken over (default 30 s).
    pub claim_idle: Duration,
    /// Entries read per call.
    pub batch: usize,
    /// Longest wait for new entries in one read.
    pub block: Duration,
    /// Pause after an engine or Redis error before retrying.
    pub retry_delay: Duration,
    /// Fault point for tests: stop right after the first append, without
    /// acknowledging it, as a crashed node would.
    #[cfg(feature = "test-support")]
    pub crash_after_append: bool,
}

impl IngestOptions {
    pub fn new(consumer: impl Into<String>) -> Self {
        Self {
            consumer: consumer.into(),
            claim_idle: Duration::from_secs(30),
            batch: 100,
            block: Duration::from_secs(2),
            retry_delay: Duration::from_millis(500),
            #[cfg(feature = "test-support")]
            crash_after_append: false,
        }
    }
}

/// Why an ingest consumer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestExit {
    /// The node shut down.
    Shutdown,
    /// The `crash_after_append` fault point fired.
    #[cfg(feature = "test-support")]
    Crashed,
}

/// Retention and idempotency limits, shared by both engines.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most unacknowledged events kept per player (`MYTHOS_MAX_BACKLOG`).
    pub max_backlog: u64,
    /// Oldest unacknowledged event kept (`MYTHOS_MAX_BACKLOG_AGE`).
    pub max_backlog_age: Duration,
    /// How long a publisher's idempotency key is remembered (`MYTHOS_DEDUPE_WINDOW`).
    pub dedupe_window: Duration,
    /// Replicas that must confirm every append before it is answered
    /// (`MYTHOS_REDIS_WAIT_REPLICAS`; Redis only; 0 = don't wait).
    pub wait_replicas: u64,
    /// How long that confirmation may take (`MYTHOS_REDIS_WAIT_TIMEOUT`).
    pub wait_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_backlog: 10_000,
            max_backlog_age: Duration::from_secs(7 * 24 * 3600),
            dedupe_window: Duration::from_secs(24 * 3600),
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
        }
    }
}

/// Where a player's log stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    /// Sequence number of the newest event (0 = none yet).
    pub last: u64,
    /// Highest acknowledged sequence number.
    pub acked: u64,
    /// Sequence number of the oldest retained event; `last + 1` when none is retained.
    pub oldest: u64,
}

/// A command or chat line from a player, bound for `mythos:commands`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub player_id: String,
    pub session_id: String,
    /// `command` or `chat`.
    pub kind: String,
    /// The client's id for it (echoed in `command_accepted`).
    pub id: String,
    /// The message as JSON text.
    pub payload: String,
}

/// A stream entry id `<ms>-<n>` as its two numbers (how streams order them).
pub fn parse_entry_id(id: &str) -> Option<(u64, u64)> {
    let (ms, n) = id.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(ms) || !digits(n) {
        return None;
    }
    Some((ms.parse().ok()?, n.parse().ok()?))
}

/// A command read back from the stream by a game server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandEntry {
    /// The stream entry id (Redis `ms-n`).
    pub entry_id: String,
    pub command: Command,
}

/// A stored account: an argon2id PHC hash (never the password) and a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub password_hash: String,
    /// `player`, `service` or `admin`.
    pub role: String,
}

/// The publish dedupe keys a player's log holds now (for `inspect player`).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct DedupeKeys {
    /// How many were found.
    pub count: u64,
    /// Up to the asked limit of them, sorted.
    pub sample: Vec<String>,
    /// False when the search stopped at its bound before seeing every key
    /// (`count` is then a lower bound).
    pub complete: bool,
}

/// One stream an operator looks at: a partition of `mythos:commands` or
/// `mythos:publish`, or a dead-letter stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StreamInfo {
    /// The key (`mythos:commands`, `mythos:publish:{1.3}`, ...).
    pub name: String,
    /// `commands`, `publish` or `dead`.
    pub kind: String,
    /// The partition number.
    pub partition: usize,
    /// Entries in the stream (`XLEN`).
    pub length: u64,
    /// Its consumer groups, by name.
    pub groups: Vec<GroupInfo>,
}

/// A consumer group of a stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupInfo {
    pub name: String,
    /// Entries handed out and not acknowledged.
    pub pending: u64,
    /// The last entry id handed out.
    pub last_delivered: String,
    /// Entries not yet handed out, when the store knows (`XINFO GROUPS` lag).
    pub lag: Option<u64>,
    /// The group's consumers, at most 100.
    pub consumers: Vec<ConsumerInfo>,
    /// The oldest pending entries, at most [`MAX_PENDING_SHOWN`].
    pub oldest_pending: Vec<PendingEntry>,
}

/// A consumer of a group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConsumerInfo {
    pub name: String,
    pub pending: u64,
    /// Since its last read, in milliseconds.
    pub idle_ms: u64,
}

/// An entry handed out and not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PendingEntry {
    pub entry_id: String,
    /// Who holds it.
    pub consumer: String,
    /// Since it was last handed out, in milliseconds.
    pub idle_ms: u64,
    /// How many times it was handed out.
    pub deliveries: u64,
}

/// Most pending entries [`Inspect::streams`] lists per group.
pub const MAX_PENDING_SHOWN: usize = 20;

/// About how many commands the upstream stream keeps (Redis trims with
/// `MAXLEN ~`), so it cannot grow without bound while no game server reads it.
pub(crate) const MAX_COMMANDS: usize = 100_000;

/// A player's durable log: dense sequence numbers, cumulative
/// acknowledgements, retention, and this node's interest in its fresh appends.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Up to `limit` events with sequence number `> after`, oldest first.
    async fn read(&self, player: &str, after: u64, limit: usize) -> Result<Vec<Event>>;

    /// Acknowledges `1..=seq` (clamped to `last`, never backwards) and trims them.
    async fn ack(&self, player: &str, seq: u64) -> Result<Cursor>;

    /// The player's cursor, after applying the retention caps.
    async fn cursor(&self, player: &str) -> Result<Cursor>;

    /// Makes `player`'s appends reach this node's [`LiveSink`] from now on
    /// (a session calls it before reading the log). Answers once that is in
    /// effect. Every call, failed or not, is paired with [`EventLog::unwatch`].
    /// The memory engine hands every append to its sink anyway.
    async fn watch(&self, player: &str) -> Result<()> {
        let _ = player;
        Ok(())
    }

    /// One watcher of `player` on this node fewer; after the last, the
    /// node stops receiving the player's appends.
    fn unwatch(&self, player: &str) {
        let _ = player;
    }
}

/// Room membership.
#[async_trait]
pub trait Rooms: Send + Sync {
    /// Adds `player` to `room`; returns the other members if the player was not
    /// a member yet, `None` if they already were.
    async fn join(&self, room: &str, player: &str) -> Result<Option<Vec<String>>>;

    /// Removes `player` from `room`; returns the remaining members if the player
    /// was a member, `None` otherwise.
    async fn leave(&self, room: &str, player: &str) -> Result<Option<Vec<String>>>;

    /// The room's members, sorted.
    async fn members(&self, room: &str) -> Result<Vec<String>>;

    /// The rooms a player is in, sorted.
    async fn rooms_of(&self, player: &str) -> Result<Vec<String>>;
}

/// The upstream command stream (`mythos:commands`), split into partitions:
/// appends from players, consumer groups for game servers.
#[async_trait]
pub trait CommandStream: Send + Sync {
    /// Appends a command to the upstream stream; returns its entry id. Every
    /// call appends: the contract has every accepted message appended, and a
    /// client's `id` need not be unique beyond its connection, so a game
    /// server that wants to drop a client's resend does it by
    /// `(player_id, id)` itself (as the demo world does).
    async fn push_command(&self, cmd: &Command) -> Result<String>;

    /// How many partitions the command stream has (`MYTHOS_COMMAND_PARTITIONS`;
    /// 1 for the memory engine). A player's commands all go to one
    /// partition, in order; a game server consumes every partition.
    fn command_partitions(&self) -> usize {
        1
    }

    /// Reads new commands of `partition` for consumer `consumer` of group
    /// `group` (created on first use), waiting up to `block` for some.
    async fn read_commands(
        &self,
        group: &str,
        consumer: &str,
        partition: usize,
        count: usize,
        block: Duration,
    ) -> Result<Vec<CommandEntry>>;

    /// Up to `count` commands of `partition` whose entry id comes after
    /// `after` (`<ms>-<n>`, compared as Redis compares stream ids; `0-0`:
    /// from the oldest kept), oldest first, without any consumer group
    /// (`XRANGE`): for exporting. A malformed `after` is refused.
    async fn commands_after(
        &self,
        partition: usize,
        after: &str,
        count: usize,
    ) -> Result<Vec<CommandEntry>>;

    /// Marks commands of `partition` as processed by `group`.
    async fn ack_commands(&self, group: &str, partition: usize, entry_ids: &[String])
        -> Result<()>;

    /// Takes over, for `consumer`, up to `count` commands that `group` handed
    /// out at least `min_idle` ago and nobody acknowledged (a game server
    /// that stopped mid-batch), oldest first, as `XAUTOCLAIM` does; they count
    /// as handed out again now. Commands trimmed meanwhile are dropped from
    /// the pending list. An unknown group has nothing pending.
    async fn claim_commands(
        &self,
        group: &str,
        consumer: &str,
        partition: usize,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<CommandEntry>>;
}

/// Stored accounts.
#[async_trait]
pub trait Accounts: Send + Sync {
    /// Stores an account; `false` if the name exists.
    async fn create_user(&self, username: &str, account: &Account) -> Result<bool>;

    /// A stored account.
    async fn user(&self, username: &str) -> Result<Option<Account>>;
}

/// Who a refresh-token family belongs to. The engine never sees a token:
/// callers pass the SHA-256 (hex) of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshFamily {
    pub player: String,
    /// `player`, `service` or `admin`.
    pub role: String,
}

/// What presenting a refresh token did ([`RefreshTokens::rotate_family`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The presented hash was the family's current one: it is replaced by
    /// the next and the family's time to live starts again.
    Rotated(RefreshFamily),
    /// The family exists but the presented hash is not its current one (a
    /// token already rotated away, or a forged secret): the whole family is
    /// revoked, its newest token included.
    Reused(RefreshFamily),
    /// No such family: never created, expired or revoked.
    Unknown,
}

/// Refresh-token families: one per "stay logged in" login, each holding
/// only the hash of its one current token, rotated on every use. Stored by
/// the engine so that every node on one Redis sees the same families.
#[async_trait]
pub trait RefreshTokens: Send + Sync {
    /// Stores family `family` (random, unguessable) of `owner`, whose
    /// current token's secret hashes to `hash`; it expires after `ttl`
    /// unused.
    async fn create_family(
        &self,
        family: &str,
        owner: &RefreshFamily,
        hash: &str,
        ttl: Duration,
    ) -> Result<()>;

    /// Presents a token of `family` whose secret hashes to `presented`:
    /// atomically rotates it to `next` (and extends the time to live to
    /// `ttl`), or revokes the family on reuse.
    async fn rotate_family(
        &self,
        family: &str,
        presented: &str,
        next: &str,
        ttl: Duration,
    ) -> Result<Rotation>;

    /// Deletes the family; answers whose it was (`None`: there was none).
    async fn revoke_family(&self, family: &str) -> Result<Option<RefreshFamily>>;

    /// True while the family exists (not expired, not revoked).
    async fn family_exists(&self, family: &str) -> Result<bool>;
}

/// What an operator reads about the store (`inspect`, the admin reads):
/// each answer is what the engine knows, never a placeholder.
#[async_trait]
pub trait Inspect: Send + Sync {
    /// The publish dedupe keys `player`'s log holds now (unexpired), with
    /// up to `limit` of them listed.
    async fn dedupe_keys(&self, player: &str, limit: usize) -> Result<DedupeKeys>;

    /// Every stream of the store an operator watches: each command
    /// partition, each publish partition and its dead letters (the memory
    /// engine has the one command stream), with groups and pending entries.
    async fn streams(&self) -> Result<Vec<StreamInfo>>;
}

/// The operations the broker needs from storage: the sum of the
/// capabilities above, so `Arc<dyn Engine>` offers them all; its own are
/// those that span them (a publish to a room reads its members) and the
/// node's (readiness, Redis-native publishing).
///
/// Every append is atomic per player; a fan-out appends to each member exactly
/// once. A publish with a dedupe key that a player's log has seen inside the
/// dedupe window returns that player's earlier delivery and appends nothing.
#[async_trait]
pub trait Engine:
    EventLog + Rooms + CommandStream + Accounts + RefreshTokens + Inspect + Presence + 'static
{
    /// Appends `body` to every player of `target` (a room: its members now).
    async fn publish(
        &self,
        target: &Target,
        body: Arc<EventBody>,
        dedupe_key: Option<&str>,
    ) -> Result<Vec<Delivery>>;

    /// Fails if the engine cannot serve requests.
    async fn ping(&self) -> Result<()>;

    /// Starts consuming the publishes game servers hand to the storage itself
    /// (Redis-native publishing), each entry given to `handler` (the node's),
    /// until `shutdown`. `None`: this engine has no such inbox (the memory engine).
    fn start_ingest(
        &self,
        handler: Arc<dyn IngestHandler>,
        opts: IngestOptions,
        shutdown: CancellationToken,
    ) -> Option<JoinHandle<IngestExit>> {
        let _ = (handler, opts, shutdown);
        None
    }
}
