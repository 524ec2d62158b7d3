//! The `export`, `replay` and `inspect` subcommands: a store the settings
//! name (Redis or a Redis Cluster, read through the engine) or a running
//! broker's admin HTTP API (`--url`), and standard output.
//!
//! Owns: choosing the path, paging, printing, and exit codes — 0 done, 2 bad
//! usage or input (flags, an unknown player, a malformed recording, a
//! refused publish), 1 the store or the broker failed. Must not touch: the
//! formats and the logic, which live in the library (`mythos_broker::tools`).

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use mythos_broker::auth::Role;
use mythos_broker::client::{self, query_value, ClientError, Http};
use mythos_broker::config::{Config, ExportArgs, InspectCmd, Remote, ReplayArgs};
use mythos_broker::engine::parse_entry_id;
use mythos_broker::protocol::valid_id;
use mythos_broker::state::App;
use mythos_broker::tools::inspect::{self, InspectError, PlayerReport};
use mythos_broker::tools::recording::{self, line_of};
use mythos_broker::tools::replay::{self, EnginePublisher, ReplayError, Speed};
use mythos_broker::tools::PAGE;
use serde_json::Value;

/// A failed tool: its message and exit code.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// Bad flags or input: exit 2.
    #[error("{0}")]
    Usage(String),
    /// The store, the broker or the output failed: exit 1.
    #[error("{0}")]
    Failed(String),
}

impl ToolError {
    pub fn exit(&self) -> ExitCode {
        eprintln!("mythos-broker: {self}");
        ExitCode::from(match self {
            ToolError::Usage(_) => 2,
            ToolError::Failed(_) => 1,
        })
    }
}

impl From<ClientError> for ToolError {
    fn from(e: ClientError) -> Self {
        match &e {
            ClientError::Refused { status, .. } if status.is_client_error() => {
                ToolError::Usage(e.to_string())
            }
            _ => ToolError::Failed(e.to_string()),
        }
    }
}

impl From<mythos_broker::engine::EngineError> for ToolError {
    fn from(e: mythos_broker::engine::EngineError) -> Self {
        ToolError::Failed(e.to_string())
    }
}

fn write_failed(e: std::io::Error) -> ToolError {
    ToolError::Failed(format!("cannot write the output: {e}"))
}

/// Where a tool reads and publishes.
enum Source {
    Engine(Arc<App>),
    Api(Box<Http>),
}

async fn source(config: Config, remote: &Remote) -> Result<Source, ToolError> {
    if let Some(url) = &remote.url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ToolError::Usage(format!(
                "--url: `{url}` must look like http://host:port"
            )));
        }
        let token = match (&remote.token, &config.jwt_secret) {
            (Some(t), _) => t.clone(),
            (None, Some(secret)) => client::token(secret, "mythos-cli", Role::Admin, 3600)
                .map_err(|e| ToolError::Usage(e.to_string()))?,
            (None, None) => {
                return Err(ToolError::Usage(
                    "--url needs an admin token: --token (or MYTHOS_TOKEN), or MYTHOS_JWT_SECRET to mint one".into(),
                ))
            }
        };
        return Ok(Source::Api(Box::new(Http::new(url).with_token(token))));
    }
    if config.redis_options().is_none() {
        return Err(ToolError::Usage(
            "this needs MYTHOS_REDIS_URL (or MYTHOS_REDIS_CLUSTER) to read the store directly, or \
             --url http://host:port to ask a running broker (the embedded engine lives inside the \
             running server's memory)"
                .into(),
        ));
    }
    let mut config = config;
    if config.jwt_secret.is_none() {
        // The tool verifies no token; the node state wants a key anyway.
        config.jwt_secret = Some(format!("{:032x}", rand::random::<u128>()));
    }
    App::new(config)
        .await
        .map(Source::Engine)
        .map_err(|e| ToolError::Failed(e.to_string()))
}

fn check_player(what: &str, p: &str) -> Result<(), ToolError> {
    if valid_id(p) {
        Ok(())
    } else {
        Err(ToolError::Usage(format!(
            "{what}: `{p}` is not a player id ([A-Za-z0-9_-]{{1,64}})"
        )))
    }
}

fn unknown_player(p: &str) -> ToolError {
    ToolError::Usage(format!(
        "unknown player `{p}`: nothing was ever published to them and they are in no room"
    ))
}

fn is_unknown_player(e: &ClientError) -> bool {
    matches!(e, ClientError::Refused { code, .. } if code == "unknown_player")
}

/// `export`.
pub async fn export(config: Config, args: ExportArgs) -> Result<(), ToolError> {
    if args.commands {
        if args.from.is_some() || args.to.is_some() {
            return Err(ToolError::Usage(
                "--from/--to select events; with --commands use --since".into(),
            ));
        }
        if let Some(p) = &args.player {
            check_player("--player", p)?;
        }
        let after = match &args.since {
            Some(s) => since_after(s)?,
            None => "0-0".to_string(),
        };
        let src = source(config, &args.remote).await?;
        return export_commands(&src, args.player.as_deref(), &after).await;
    }
    if args.since.is_some() {
        return Err(ToolError::Usage(
            "--since selects commands (with --commands); events take --from/--to".into(),
        ));
    }
    let Some(player) = args.player.as_deref() else {
        return Err(ToolError::Usage(
            "export needs --player P (or --commands)".into(),
        ));
    };
    check_player("--player", player)?;
    let from = args.from.unwrap_or(1).max(1);
    let to = args.to.unwrap_or(u64::MAX);
    if to < from {
        return Err(ToolError::Usage(format!(
            "--to {to} is before --from {from}"
        )));
    }
    let src = source(config, &args.remote).await?;
    export_events(&src, player, from, to, args.from.is_some()).await
}

async fn export_events(
    src: &Source,
    player: &str,
    from: u64,
    to: u64,
    asked_from: bool,
) -> Result<(), ToolError> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut after = from - 1;
    let mut first = true;
    loop {
        let (lines, oldest, more) = match src {
            Source::Engine(app) => {
                let e = app.engine().as_ref();
                let c = e.cursor(player).await?;
                if first && c.last == 0 && e.rooms_of(player).await?.is_empty() {
                    return Err(unknown_player(player));
                }
                let evs = e.read(player, after, PAGE).await?;
                let more = evs.len() == PAGE;
                let lines: Vec<(u64, String)> = evs
                    .iter()
                    .map(|ev| (ev.sequence_number, line_of(player, ev)))
                    .collect();
                (lines, c.oldest, more)
            }
            Source::Api(api) => {
                let raw = api
                    .get_raw(&format!(
                        "/v1/admin/players/{player}/events?after={after}&limit={PAGE}"
                    ))
                    .await?;
                let page: EventsPage = serde_json::from_slice(&raw).map_err(|e| {
                    ToolError::Failed(format!("the broker's page did not parse: {e}"))
                })?;
                if first && page.last_sequence_number == 0 {
                    match api.get(&format!("/v1/admin/players/{player}")).await {
                        Err(e) if is_unknown_player(&e) => return Err(unknown_player(player)),
                        Err(e) => return Err(e.into()),
                        Ok(_) => {}
                    }
                }
                let mut lines = Vec::with_capacity(page.events.len());
                for e in page.events {
                    let seq: Seq = serde_json::from_str(e.get()).map_err(|e| {
                        ToolError::Failed(format!("an event of the page did not parse: {e}"))
                    })?;
                    lines.push((seq.sequence_number, e.get().to_string()));
                }
                (lines, page.oldest_available, page.next_after.is_some())
            }
        };
        if first && asked_from && from < oldest {
            eprintln!(
                "mythos-broker: events {from}..{} of {player} are no longer retained (acknowledged or past a cap); starting at {oldest}",
                oldest - 1
            );
        }
        first = false;
        for (seq, line) in &lines {
            if *seq > to {
                return out.flush().map_err(write_failed);
            }
            writeln!(out, "{line}").map_err(write_failed)?;
            after = *seq;
        }
        if !more || lines.is_empty() {
            return out.flush().map_err(write_failed);
        }
    }
}

/// A page of `GET /v1/admin/players/{P}/events`, its envelopes as sent.
#[derive(serde::Deserialize)]
struct EventsPage {
    last_sequence_number: u64,
    oldest_available: u64,
    events: Vec<Box<serde_json::value::RawValue>>,
    next_after: Option<u64>,
}

#[derive(serde::Deserialize)]
struct Seq {
    sequence_number: u64,
}

/// The exclusive start entry id of `--since`.
fn since_after(s: &str) -> Result<String, ToolError> {
    if parse_entry_id(s).is_some() {
        return Ok(s.to_string());
    }
    let now = std::time::SystemTime::now();
    let at = if let Ok(d) = humantime::parse_duration(s) {
        now.checked_sub(d).unwrap_or(std::time::UNIX_EPOCH)
    } else if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        t
    } else {
        return Err(ToolError::Usage(format!(
            "--since: `{s}` is not an entry id (1700000000000-0), an RFC 3339 time or a duration (10m)"
        )));
    };
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    Ok(match ms.checked_sub(1) {
        None => "0-0".to_string(),
        Some(before) => format!("{before}-{}", u64::MAX),
    })
}

async fn export_commands(src: &Source, player: Option<&str>, start: &str) -> Result<(), ToolError> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut partitions = 1;
    let mut partition = 0;
    while partition < partitions {
        let mut after = start.to_string();
        loop {
            let (lines, next): (Vec<(String, Value)>, Option<String>) = match src {
                Source::Engine(app) => {
                    let e = app.engine().as_ref();
                    partitions = e.command_partitions();
                    let entries = e.commands_after(partition, &after, PAGE).await?;
                    let next = (entries.len() == PAGE)
                        .then(|| entries.last().map(|e| e.entry_id.clone()))
                        .flatten();
                    let lines = entries
                        .into_iter()
                        .map(|c| {
                            let line = mythos_broker::tools::command_line(partition, c);
                            (line["player_id"].as_str().unwrap_or("").to_string(), line)
                        })
                        .collect();
                    (lines, next)
                }
                Source::Api(api) => {
                    let page = api
                        .get(&format!(
                            "/v1/admin/commands?partition={partition}&after={}&limit={PAGE}",
                            query_value(&after)
                        ))
                        .await?;
                    partitions = page["partitions"].as_u64().unwrap_or(1) as usize;
                    let lines = match page["commands"].as_array() {
                        Some(a) => a
                            .iter()
                            .map(|c| (c["player_id"].as_str().unwrap_or("").to_string(), c.clone()))
                            .collect(),
                        None => Vec::new(),
                    };
                    (lines, page["next_after"].as_str().map(str::to_string))
                }
            };
            for (p, line) in lines {
                if player.is_none_or(|want| want == p) {
                    writeln!(out, "{line}").map_err(write_failed)?;
                }
            }
            match next {
                Some(n) => after = n,
                None => break,
            }
        }
        partition += 1;
    }
    out.flush().map_err(write_failed)
}

/// `replay`.
pub async fn replay(config: Config, args: ReplayArgs) -> Result<(), ToolError> {
    check_player("--to-player", &args.to_player)?;
    let speed: Speed = args.speed.parse().map_err(ToolError::Usage)?;
    let file = std::fs::File::open(&args.file)
        .map_err(|e| ToolError::Usage(format!("cannot open {}: {e}", args.file.display())))?;
    let events = recording::read(std::io::BufReader::new(file)).map_err(|e| {
        ToolError::Usage(format!(
            "{}: {e}; nothing was published",
            args.file.display()
        ))
    })?;
    let max_event_bytes = config.max_event_bytes;
    let src = source(config, &args.remote).await?;
    let outcome = match &src {
        Source::Engine(app) => {
            let p = EnginePublisher {
                engine: app.engine().as_ref(),
                max_event_bytes,
            };
            replay::run(&p, &events, &args.to_player, speed).await
        }
        Source::Api(api) => replay::run(api.as_ref(), &events, &args.to_player, speed).await,
    };
    let outcome = outcome.map_err(|e| match e {
        ReplayError::Failed { .. } => ToolError::Failed(e.to_string()),
        _ => ToolError::Usage(e.to_string()),
    })?;
    let secs = outcome.elapsed.as_secs_f64();
    let range = match (
        outcome.sequence_numbers.first(),
        outcome.sequence_numbers.last(),
    ) {
        (Some(a), Some(b)) => format!(" (sequence numbers {a}..{b})"),
        _ => String::new(),
    };
    println!(
        "replayed {} events into {}{range} in {secs:.3} s ({:.0} events/s)",
        outcome.sequence_numbers.len(),
        args.to_player,
        outcome.sequence_numbers.len() as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// `inspect`.
pub async fn inspect(config: Config, cmd: InspectCmd) -> Result<(), ToolError> {
    match cmd {
        InspectCmd::Player {
            player,
            json,
            remote,
        } => {
            check_player("player", &player)?;
            let report: PlayerReport = match source(config, &remote).await? {
                Source::Engine(app) => {
                    match inspect::player(app.engine().as_ref(), &player, None).await {
                        Ok(r) => r,
                        Err(InspectError::UnknownPlayer(_)) => return Err(unknown_player(&player)),
                        Err(InspectError::Engine(e)) => return Err(e.into()),
                    }
                }
                Source::Api(api) => match api.get(&format!("/v1/admin/players/{player}")).await {
                    Ok(v) => serde_json::from_value(v).map_err(|e| {
                        ToolError::Failed(format!("the broker's report did not parse: {e}"))
                    })?,
                    Err(e) if is_unknown_player(&e) => return Err(unknown_player(&player)),
                    Err(e) => return Err(e.into()),
                },
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print!("{}", report.lines());
            }
            Ok(())
        }
        InspectCmd::Presence {
            player,
            json,
            remote,
        } => {
            if let Some(p) = &player {
                check_player("player", p)?;
            }
            let v = match (source(config, &remote).await?, &player) {
                (Source::Engine(app), Some(p)) => {
                    let records = app.engine().presence_of(std::slice::from_ref(p)).await?;
                    serde_json::to_value(records.first()).unwrap_or(Value::Null)
                }
                (Source::Engine(app), None) => {
                    let leases = app.engine().presence_leases().await?;
                    serde_json::json!({ "leases": leases })
                }
                (Source::Api(api), Some(p)) => {
                    api.get(&format!("/v1/presence/players/{p}")).await?
                }
                (Source::Api(api), None) => api.get("/v1/admin/presence").await?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{}", inspect::presence_lines(&v));
            }
            Ok(())
        }
        InspectCmd::Streams { json, remote } => {
            let v = match source(config, &remote).await? {
                Source::Engine(app) => {
                    serde_json::to_value(inspect::streams(app.engine().as_ref()).await?)
                        .unwrap_or(Value::Null)
                }
                Source::Api(api) => api.get("/v1/admin/streams").await?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{}", inspect::streams_lines(&v));
            }
            Ok(())
        }
    }
}
