//! A test helper for game servers' own test suites (feature `testkit`):
//! start a broker on the embedded engine inside the test process, connect a
//! client as a player, replay a recording into that player's log, and assert
//! what the client received — `(event_type, data)` in order, with dense
//! sequence numbers (no gap, no duplicate).
//!
//! ```no_run
//! # async fn t() -> Result<(), mythos_broker::testkit::TestkitError> {
//! use mythos_broker::testkit::{Recording, TestBroker};
//! let rec = Recording::from_file("tests/sessions/alice.jsonl")?;
//! let broker = TestBroker::start().await?;
//! let mut client = broker.connect("alice2").await?;
//! broker.replay(&rec, "alice2").await?;
//! client.assert_view(&rec.view()).await?;
//! broker.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Owns: that harness. Must not touch: the broker's behaviour — it runs an
//! ordinary node (`server::start`) and talks to it over a real WebSocket;
//! the replay is the same code `mythos-broker replay` runs.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::Role;
use crate::client::{self, Player, WsEnd};
use crate::config::Config;
use crate::server::{self, Running};
use crate::state::App;
use crate::tools::recording::{self, compact, RecordedEvent, RecordingError};
use crate::tools::replay::{self, EnginePublisher, Outcome, ReplayError, Speed};

/// How long a client waits for the next event before the helper fails.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// What went wrong, said so that a failing test explains itself.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    #[error("the broker did not start: {0}")]
    Start(String),
    #[error("the client could not connect: {0}")]
    Connect(String),
    #[error("the recording: {0}")]
    Recording(#[from] RecordingError),
    #[error("the recording cannot be read: {0}")]
    Io(String),
    #[error("the replay: {0}")]
    Replay(#[from] ReplayError),
    #[error("the connection ended after {got} of {wanted} events")]
    Ended { got: usize, wanted: usize },
    #[error("no event within {0:?} ({1} of {2} received)")]
    Timeout(Duration, usize, usize),
    #[error("event {index}: sequence number {got}, expected {expected} (a gap or a duplicate)")]
    Sequence {
        index: usize,
        expected: u64,
        got: u64,
    },
    #[error("event {index}: got ({got_type}, {got_data}), expected ({want_type}, {want_data})")]
    Mismatch {
        index: usize,
        got_type: String,
        got_data: String,
        want_type: String,
        want_data: String,
    },
    #[error("a frame that is not an event envelope: {0}")]
    Frame(String),
}

/// A recording, read and checked.
#[derive(Debug, Clone)]
pub struct Recording {
    pub events: Vec<RecordedEvent>,
}

impl Recording {
    /// From JSON lines text (as `mythos-broker export` writes).
    pub fn parse(text: &str) -> Result<Self, TestkitError> {
        Ok(Self {
            events: recording::parse(text)?,
        })
    }

    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self, TestkitError> {
        let f = std::fs::File::open(path.as_ref())
            .map_err(|e| TestkitError::Io(format!("{}: {e}", path.as_ref().display())))?;
        Ok(Self {
            events: recording::read(std::io::BufReader::new(f))?,
        })
    }

    /// What a client should see: `(event_type, data as compact JSON)`.
    pub fn view(&self) -> Vec<(String, String)> {
        recording::view(&self.events)
    }
}

/// A broker on the embedded engine, listening on a free port of 127.0.0.1.
pub struct TestBroker {
    running: Running,
    base: String,
    secret: String,
}

impl TestBroker {
    /// Starts one with every default setting (the environment is ignored).
    pub async fn start() -> Result<Self, TestkitError> {
        Self::start_with(|_| {}).await
    }

    /// Starts one with settings changed by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Result<Self, TestkitError> {
        let secret = format!("{:032x}", rand::random::<u128>());
        let mut config = Config::for_tests(&secret);
        tweak(&mut config);
        let secret = config.jwt_secret.clone().unwrap_or(secret);
        let app = App::new(config)
            .await
            .map_err(|e| TestkitError::Start(e.to_string()))?;
        let running = server::start(app)
            .await
            .map_err(|e| TestkitError::Start(e.to_string()))?;
        Ok(Self {
            base: format!("http://{}", running.addr),
            running,
            secret,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The node, for anything else a test wants (its engine, its config).
    pub fn app(&self) -> &Arc<App> {
        &self.running.app
    }

    /// A token for `sub` with `role`, signed with this broker's key.
    pub fn token(&self, sub: &str, role: Role) -> Result<String, TestkitError> {
        let ttl = self.running.app.config().token_ttl.as_secs().max(1);
        client::token(&self.secret, sub, role, ttl as i64)
            .map_err(|e| TestkitError::Start(e.to_string()))
    }

    /// Connects a WebSocket client as `player` (from its oldest unacknowledged event).
    pub async fn connect(&self, player: &str) -> Result<ViewClient, TestkitError> {
        let token = self.token(player, Role::Player)?;
        let player = Player::connect(&self.base, &token, None)
            .await
            .map_err(|e| TestkitError::Connect(e.to_string()))?;
        Ok(ViewClient {
            player,
            next_seq: None,
            patience: PATIENCE,
        })
    }

    /// Replays `rec` into `to_player` as fast as it goes (`--speed max`).
    pub async fn replay(&self, rec: &Recording, to_player: &str) -> Result<Outcome, TestkitError> {
        self.replay_at(rec, to_player, Speed::Max).await
    }

    /// Replays `rec` into `to_player` at `speed`.
    pub async fn replay_at(
        &self,
        rec: &Recording,
        to_player: &str,
        speed: Speed,
    ) -> Result<Outcome, TestkitError> {
        let app = &self.running.app;
        let publisher = EnginePublisher {
            engine: app.engine().as_ref(),
            max_event_bytes: app.config().max_event_bytes,
        };
        Ok(replay::run(&publisher, &rec.events, to_player, speed).await?)
    }

    /// Stops the node.
    pub async fn shutdown(self) {
        self.running.shutdown().await;
    }
}

/// One event as a client received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub sequence_number: u64,
    pub event_type: String,
    /// Compact JSON text.
    pub data: String,
    /// The whole frame.
    pub envelope: serde_json::Value,
}

/// A player's WebSocket, reading events and checking their sequence numbers.
pub struct ViewClient {
    player: Player,
    /// The sequence number the next event must have (set by the first one).
    next_seq: Option<u64>,
    patience: Duration,
}

impl ViewClient {
    /// How long to wait for each event (default [`PATIENCE`]).
    pub fn with_patience(mut self, d: Duration) -> Self {
        self.patience = d;
        self
    }

    /// The next `n` events; fails on a gap or a duplicate (each event's
    /// sequence number must be the previous one's plus one).
    pub async fn events(&mut self, n: usize) -> Result<Vec<Received>, TestkitError> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let v = match tokio::time::timeout(self.patience, self.player.next_event()).await {
                Err(_) => return Err(TestkitError::Timeout(self.patience, out.len(), n)),
                Ok(Err(WsEnd::NotJson(text))) => return Err(TestkitError::Frame(text)),
                Ok(Err(_)) => {
                    return Err(TestkitError::Ended {
                        got: out.len(),
                        wanted: n,
                    })
                }
                Ok(Ok(v)) => v,
            };
            let (Some(seq), Some(et)) = (v["sequence_number"].as_u64(), v["event_type"].as_str())
            else {
                return Err(TestkitError::Frame(
                    v.to_string().chars().take(200).collect(),
                ));
            };
            let expected = self.next_seq.unwrap_or(seq);
            if seq != expected {
                return Err(TestkitError::Sequence {
                    index: out.len() + 1,
                    expected,
                    got: seq,
                });
            }
            self.next_seq = Some(seq + 1);
            out.push(Received {
                sequence_number: seq,
                event_type: et.to_string(),
                data: compact(&v["data"].to_string()),
                envelope: v,
            });
        }
        Ok(out)
    }

    /// Reads as many events as `expected` holds and requires them to be
    /// exactly `expected` (`(event_type, data)` in order), dense.
    pub async fn assert_view(
        &mut self,
        expected: &[(String, String)],
    ) -> Result<Vec<Received>, TestkitError> {
        let got = self.events(expected.len()).await?;
        for (i, (g, (want_type, want_data))) in got.iter().zip(expected).enumerate() {
            let want_data = compact(want_data);
            if g.event_type != *want_type || g.data != want_data {
                return Err(TestkitError::Mismatch {
                    index: i + 1,
                    got_type: g.event_type.clone(),
                    got_data: g.data.clone(),
                    want_type: want_type.clone(),
                    want_data,
                });
            }
        }
        Ok(got)
    }
}

/// All in one: a fresh embedded broker, a client of `to_player`, the
/// recording replayed into it, and the client's view checked against the
/// recording's. Answers what the client received.
pub async fn replay_and_check(
    rec: &Recording,
    to_player: &str,
) -> Result<Vec<Received>, TestkitError> {
    let broker = TestBroker::start().await?;
    let mut client = broker.connect(to_player).await?;
    broker.replay(rec, to_player).await?;
    let got = client.assert_view(&rec.view()).await;
    broker.shutdown().await;
    got
}
