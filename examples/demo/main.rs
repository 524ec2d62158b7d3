//! The demo world: a small MUD run beside an embedded broker, written as an
//! example of how a real game server uses the broker.
//!
//! `cargo run --release --example demo` starts one broker node through the
//! library ([`mythos_broker::run::serve`], the same code as `mythos-broker`,
//! always in dev mode: it prints the same `listening` and `export` lines) and
//! this world against the node's HTTP API. Every `MYTHOS_*` setting and its
//! flag (`--bind`, `--redis-url`, ...) works as for `mythos-broker`.
//!
//! The split of work it shows:
//!
//! 1. Players connect to the broker (WebSocket or SSE), never to the game
//!    server. What they type arrives as `{"type":"command"}` and
//!    `{"type":"chat"}` frames, which the broker appends to the upstream
//!    command stream (`mythos:commands` on Redis). Every accepted message is
//!    appended, a resend too.
//! 2. The game server reads that stream as a consumer group
//!    (`XREADGROUP GROUP demo-world <consumer> ...`; here through the engine
//!    trait's [`Engine::read_commands`], which is the same call on the
//!    embedded engine), applies its rules ([`game`]), and acknowledges the
//!    entries (`XACK`, [`Engine::ack_commands`]) once their effects are
//!    published. Entries a stopped game server took and never acknowledged
//!    are taken over once idle for [`CLAIM_IDLE`] (`XAUTOCLAIM`,
//!    [`Engine::claim_commands`]); handling one twice is harmless (below).
//!    A client resends a command whose `command_accepted` it did not see
//!    (the connection dropped), with the same id, so the stream may hold it
//!    twice: the game server carries out a repeat of the same message (same
//!    player, id and payload) within [`RESEND_WINDOW`] once ([`Handled`]),
//!    the idempotent-consumer side of at-least-once delivery. A client that
//!    numbers ids per connection sends other messages under old ids: those
//!    differ in payload, or come later, and are carried out.
//! 3. Effects go out through the broker's public HTTP API with a service
//!    token ([`broker`]): `POST /v1/publish` for events — one
//!    `command_response` per command carrying the client's command id, chat
//!    lines to the room, a `game_tick` every 10 s — and
//!    `PUT`/`DELETE /v1/rooms/{room}/members/{player}` for where players are.
//!    The broker itself sends `player_entered`/`player_left` to the room.
//!    Each event of a command has an idempotency `id` derived from the
//!    command's stream entry, so handling an entry twice delivers it once.
//! 4. The broker stores every event until the player's client acknowledges
//!    it and replays it after a reconnect; the game server never tracks
//!    connections.
//!
//! Owns: the demo accounts, the command loop and the ticker. Must not touch:
//! the broker's insides. It is an example, not part of the library, so it
//! can only use the library's public API: apart from reading the command stream
//! through the engine (a separate game server would talk to Redis) and
//! minting its tokens from the broker's key (a separate one would be given
//! them), it does only what any client of the HTTP API can — the accounts
//! too are created with `POST /v1/admin/users`.

mod broker;
mod game;
mod world;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use broker::BrokerApi;
use game::Game;
use mythos_broker::auth::Role;
use mythos_broker::client::{self, Backoff};
use mythos_broker::config::Config;
use mythos_broker::engine::{CommandEntry, Engine};
use mythos_broker::run::{self, reachable};
use mythos_broker::state::App;

/// jemalloc, as the `mythos-broker` binary (see docs/decisions.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The broker's settings (every `MYTHOS_*` variable and its flag).
#[derive(Debug, Parser)]
#[command(
    name = "demo",
    about = "A broker on the embedded engine (or MYTHOS_REDIS_URL) with the demo world: web terminal at /, demo accounts"
)]
struct Args {
    #[command(flatten)]
    config: Config,
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut config = Args::parse().config;
    // Dev mode: a generated secret unless one is set, and the printed tokens.
    config.dev = true;
    if let Err(msg) = config.validate() {
        return run::usage_error(&msg);
    }
    run::init_logging(&config);
    run::serve(config, |app, addr| async move { start(&app, addr).await }).await
}

/// The consumer group the game server reads the command stream with.
pub const GROUP: &str = "demo-world";
/// The demo accounts, all with [`PASSWORD`].
pub const ACCOUNTS: [&str; 3] = ["alice", "bob", "carol"];
pub const PASSWORD: &str = "mythos";
/// How often every occupied room gets a `game_tick`.
const TICK: Duration = Duration::from_secs(10);
/// Commands read per round trip, and how long one read waits for some.
const BATCH: usize = 16;
const BLOCK: Duration = Duration::from_secs(5);
/// Commands handed out this long ago and never acknowledged belong to a game
/// server that stopped: this one takes them over. Far longer than one batch
/// takes to handle, so a live server's commands are not taken from it.
pub const CLAIM_IDLE: Duration = Duration::from_secs(30);

/// Creates the demo accounts and starts the game server's tasks; returns once
/// they run. `addr` is where the broker listens.
pub async fn start(app: &Arc<App>, addr: SocketAddr) {
    let base = format!("http://{}", reachable(addr));
    // A real game server is given its tokens (or the key to mint them); the
    // demo mints them from the broker's key because it runs in-process.
    let ttl = app.config().token_ttl.max(Duration::from_secs(1));
    let issue = |subject, role: Role| {
        let secret = app.config().jwt_secret.as_deref().unwrap_or_default();
        client::token(secret, subject, role, ttl.as_secs() as i64)
            .map_err(|e| eprintln!("demo: cannot issue a {} token: {e}", role.as_str()))
    };
    let (Ok(admin), Ok(token)) = (
        issue("demo-world-admin", Role::Admin),
        issue("demo-world", Role::Service),
    ) else {
        return;
    };
    let api = Arc::new(BrokerApi::new(&base, token, ttl));
    create_accounts(&api, &admin).await;
    let consumer = app.config().node_name();
    // One loop (and one game state) per partition of the command stream: a
    // player's commands all land in one partition, in order.
    for partition in 0..app.engine().command_partitions() {
        tokio::spawn(command_loop(
            app.engine().clone(),
            Game::new(api.clone()),
            Reader {
                consumer: consumer.clone(),
                partition,
            },
            app.shutdown().clone(),
        ));
    }
    tokio::spawn(ticker(api, app.shutdown().clone()));
    println!(
        "demo world ready: open {base}/ and log in as {} (password: {PASSWORD})",
        ACCOUNTS.join(", ")
    );
}

/// Creates each demo account unless it exists (it does after a restart on Redis).
async fn create_accounts(api: &BrokerApi, admin_token: &str) {
    for name in ACCOUNTS {
        if let Err(e) = api.add_user(admin_token, name, PASSWORD).await {
            eprintln!("demo: cannot create account {name}: {e}");
        }
    }
}

/// Which partition of the command stream a loop reads, as which consumer.
struct Reader {
    consumer: String,
    partition: usize,
}

/// Reads commands, carries each out, acknowledges them; until shutdown.
async fn command_loop(
    engine: Arc<dyn Engine>,
    mut game: Game,
    reader: Reader,
    shutdown: CancellationToken,
) {
    let Reader {
        consumer,
        partition,
    } = reader;
    let mut last_claim: Option<tokio::time::Instant> = None;
    let mut handled = Handled::default();
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
    loop {
        // Look for abandoned commands at start and then every CLAIM_IDLE / 2.
        let claim = last_claim.is_none_or(|t| t.elapsed() >= CLAIM_IDLE / 2);
        let read = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = async {
                if claim {
                    last_claim = Some(tokio::time::Instant::now());
                    let claimed = engine.claim_commands(GROUP, &consumer, partition, CLAIM_IDLE, BATCH).await?;
                    if !claimed.is_empty() {
                        tracing::info!(n = claimed.len(), "demo: took over unacknowledged commands");
                        if claimed.len() >= BATCH {
                            // maybe more: look again on the next round
                            last_claim = None;
                        }
                        return Ok(claimed);
                    }
                }
                engine.read_commands(GROUP, &consumer, partition, BATCH, BLOCK.min(CLAIM_IDLE / 2)).await
            } => r,
        };
        let entries = match read {
            Ok(entries) => {
                backoff.reset();
                entries
            }
            Err(e) => {
                let wait = backoff.next_wait();
                tracing::warn!(error = %e, "demo: cannot read the command stream; retrying in {wait:?}");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
        };
        for entry in &entries {
            if !handled.first(entry) {
                tracing::debug!(player = %entry.command.player_id, id = %entry.command.id,
                    "demo: a resent command, already carried out");
                continue;
            }
            // A command whose events could not be published is logged and
            // acknowledged all the same: retrying it forever would stall
            // every player behind it, and the player can type it again.
            if let Err(e) = game.handle(entry).await {
                tracing::warn!(error = %e, player = %entry.command.player_id,
                    "demo: a command failed");
            }
        }
        let ids: Vec<String> = entries.iter().map(|e| e.entry_id.clone()).collect();
        if let Err(e) = engine.ack_commands(GROUP, partition, &ids).await {
            tracing::warn!(error = %e, "demo: cannot acknowledge commands");
        }
    }
}

/// How long a message is remembered to recognise its resend: the client
/// resends what it sent but saw no `command_accepted` for, on reconnecting.
/// Long enough for a reconnect; short enough that a client reusing an id
/// for the same command later (ids numbered per connection) is served.
const RESEND_WINDOW: Duration = Duration::from_secs(3600);

/// The messages carried out recently: (player, client id) → (payload, when).
#[derive(Default)]
struct Handled {
    at: HashMap<(String, String), (String, tokio::time::Instant)>,
}

impl Handled {
    /// False for a resend: the same player, id and payload again inside
    /// [`RESEND_WINDOW`].
    fn first(&mut self, entry: &CommandEntry) -> bool {
        let now = tokio::time::Instant::now();
        if self.at.len() >= 4096 && self.at.len().is_power_of_two() {
            self.at
                .retain(|_, (_, t)| now.duration_since(*t) < RESEND_WINDOW);
        }
        let c = &entry.command;
        let key = (c.player_id.clone(), c.id.clone());
        let resend = self
            .at
            .get(&key)
            .is_some_and(|(p, t)| *p == c.payload && now.duration_since(*t) < RESEND_WINDOW);
        if !resend {
            self.at.insert(key, (c.payload.clone(), now));
        }
        !resend
    }
}

/// What the world does on each tick, in turn.
const TICK_TEXTS: [&str; 6] = [
    "A clock somewhere strikes the hour.",
    "The wind shifts and the lamps gutter.",
    "A dog barks twice, far away, then stops.",
    "Fog thickens in the streets.",
    "Somebody laughs in the distance; it does not sound happy.",
    "The fog thins for a moment.",
];

/// Sends a `game_tick` to every room every [`TICK`]; until shutdown. Ticks
/// carry no idempotency id: each is new, and a lost one matters to nobody.
async fn ticker(api: Arc<BrokerApi>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(TICK);
    every.tick().await;
    for tick in 1u64.. {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let text = TICK_TEXTS[(tick as usize - 1) % TICK_TEXTS.len()];
        for room in world::ROOMS {
            let data = json!({"tick": tick, "text": text});
            let to = json!({"room": room.id});
            if let Err(e) = api
                .publish(to, "game_tick", data, Some(room.id), None)
                .await
            {
                tracing::warn!(error = %e, room = room.id, "demo: tick not published");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mythos_broker::engine::Command;

    fn entry(entry_id: &str, player: &str, id: &str, command: &str) -> CommandEntry {
        CommandEntry {
            entry_id: entry_id.into(),
            command: Command {
                player_id: player.into(),
                session_id: "s".into(),
                kind: "command".into(),
                id: id.into(),
                payload: format!(r#"{{"command":"{command}","args":[]}}"#),
            },
        }
    }

    #[test]
    fn a_resent_command_is_carried_out_once() {
        let mut h = Handled::default();
        assert!(h.first(&entry("1-1", "alice", "c-a-1", "look")));
        // The client resent it after a reconnect: a second stream entry.
        assert!(!h.first(&entry("1-2", "alice", "c-a-1", "look")));
        assert!(h.first(&entry("1-3", "alice", "c-a-2", "look")));
        assert!(h.first(&entry("1-4", "bob", "c-a-1", "look")));
        // An id reused for another message (ids numbered per connection).
        assert!(h.first(&entry("1-5", "alice", "c-a-1", "north")));
    }
}
