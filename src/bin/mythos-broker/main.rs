//! The `mythos-broker` command: run a node (`serve`, the default), run it with
//! the demo world (`demo`), manage accounts (`user add`), or record,
//! replay and inspect (`export`, `replay`, `inspect`, in [`tools`]).
//!
//! Owns: process concerns — parsing configuration, logging, signals, exit
//! codes (2 for a bad setting or usage). Must not touch: broker logic. The
//! demo world ([`demo`]) lives here, not in the library: it is a user of the
//! broker and can reach only the library's public API.

mod demo;
mod tools;

use std::io::BufRead;
use std::process::ExitCode;

use clap::Parser;
use mythos_broker::auth::Role;
use mythos_broker::config::{Cli, Cmd, Config, UserCmd};
use mythos_broker::state::{App, StartError};
use mythos_broker::{create_account, server};

/// jemalloc rather than the system allocator: fan-out makes many small,
/// short-lived allocations on several threads (see docs/decisions.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("mythos-broker: {msg}");
    ExitCode::from(2)
}

/// Exit code 2 for a wrong setting, 1 for an engine that cannot be reached.
fn start_error(e: &StartError) -> ExitCode {
    match e {
        StartError::Config(msg) => usage_error(msg),
        StartError::Unavailable(msg) => {
            eprintln!("mythos-broker: {msg}");
            ExitCode::from(1)
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = cli.config;
    // `demo` implies dev mode; set it before validation, which needs a JWT
    // secret outside dev mode.
    if matches!(cli.command, Some(Cmd::Demo)) {
        config.dev = true;
    }
    let tool = cli.command.as_ref().is_some_and(Cmd::is_tool);
    let checked = if tool && config.jwt_secret.is_none() {
        // A tool needs no secret of its own (`--url` with `--token`, or
        // reading Redis): check every other setting.
        let mut c = config.clone();
        c.dev = true;
        c.validate()
    } else {
        config.validate()
    };
    if let Err(msg) = checked {
        return usage_error(&msg);
    }
    init_logging(&config);
    match cli.command.unwrap_or(Cmd::Serve) {
        Cmd::Serve => serve(config, false).await,
        Cmd::Demo => serve(config, true).await,
        Cmd::User(UserCmd::Add { name, role }) => user_add(config, &name, &role).await,
        Cmd::Export(args) => tools::export(config, args)
            .await
            .map_or_else(|e| e.exit(), |()| ExitCode::SUCCESS),
        Cmd::Replay(args) => tools::replay(config, args)
            .await
            .map_or_else(|e| e.exit(), |()| ExitCode::SUCCESS),
        Cmd::Inspect(cmd) => tools::inspect(config, cmd)
            .await
            .map_or_else(|e| e.exit(), |()| ExitCode::SUCCESS),
    }
}

/// Logs go to stderr, filtered by `MYTHOS_LOG`, as text or JSON lines
/// (`MYTHOS_LOG_FORMAT`). Text is coloured only when both stdout and stderr
/// are terminals (and `NO_COLOR` is unset): `cargo run > file` or a pipe gets
/// plain text.
fn init_logging(config: &Config) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_format == "json" {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init();
    } else {
        let colour = std::io::stdout().is_terminal()
            && std::io::stderr().is_terminal()
            && std::env::var_os("NO_COLOR").is_none();
        builder.with_ansi(colour).init();
    }
}

async fn serve(mut config: Config, demo: bool) -> ExitCode {
    let mut generated = None;
    if config.jwt_secret.is_none() && config.dev {
        let secret: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        generated = Some(secret.clone());
        config.jwt_secret = Some(secret);
    }
    let engine_name = if config.redis_url.is_some() {
        "redis"
    } else if config.redis_cluster.is_some() {
        "redis cluster"
    } else {
        "memory (embedded, not durable)"
    };
    let app = match App::new(config).await {
        Ok(a) => a,
        Err(e) => return start_error(&e),
    };
    // Before the "listening" line: a SIGTERM sent as soon as it appears must
    // find the handler installed (else it kills the process outright).
    let signals = Signals::install();
    let running = match server::start(app.clone()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "mythos-broker: cannot listen on {} (MYTHOS_BIND): {e}",
                app.config().bind
            );
            return ExitCode::from(1);
        }
    };
    // The one "listening" line goes to stdout (scripts read it); the log
    // does not repeat it, at any level.
    println!(
        "mythos-broker listening on http://{} (engine: {engine_name})",
        running.addr
    );
    if app.config().dev {
        print_dev_exports(&app, running.addr, generated.as_deref());
    }
    if demo {
        demo::start(&app, running.addr).await;
    }
    signals.wait().await;
    tracing::info!("shutting down: closing connections, finishing in-flight appends");
    running.shutdown().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Dev mode's secret (if generated) and service/admin tokens, printed as
/// lines a shell takes as they are: `#` comments and `export`s, so that
/// pasting the block sets `$BROKER`, `$SERVICE` and `$ADMIN` (stdout only,
/// never the log).
fn print_dev_exports(app: &App, addr: std::net::SocketAddr, generated: Option<&str>) {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let ttl = humantime::format_duration(app.config().token_ttl);
    println!(
        "# dev mode: paste these lines into a shell to try the HTTP API; the tokens are valid for {ttl} (MYTHOS_TOKEN_TTL)"
    );
    if let Some(secret) = generated {
        println!(
            "# a generated secret: a restart without it generates another and logs everybody out"
        );
        println!("export MYTHOS_JWT_SECRET={secret}");
    }
    println!(
        "export BROKER=http://{}",
        std::net::SocketAddr::new(ip, addr.port())
    );
    for (var, role) in [("SERVICE", Role::Service), ("ADMIN", Role::Admin)] {
        match app.auth().issue(&format!("dev-{}", role.as_str()), role) {
            Ok((token, _)) => println!("export {var}={token}"),
            Err(e) => eprintln!(
                "mythos-broker: cannot issue the dev {} token: {}",
                role.as_str(),
                e.message
            ),
        }
    }
}

/// SIGTERM and SIGINT, caught from the moment they are installed.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        Self {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    /// Resolves at the first of them.
    async fn wait(mut self) {
        async fn recv(s: Option<&mut tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = recv(self.term.as_mut()) => {}
            _ = recv(self.int.as_mut()) => {}
        }
    }
}

async fn user_add(config: Config, name: &str, role: &str) -> ExitCode {
    if config.redis_options().is_none() {
        return usage_error(
            "`user add` needs MYTHOS_REDIS_URL (or MYTHOS_REDIS_CLUSTER): the embedded engine keeps accounts inside the \
             running server's memory, which this command cannot reach. Create the account on the \
             running server instead: POST /v1/admin/users {\"username\",\"password\"} with an \
             admin token (run the server with --dev to get one printed).",
        );
    }
    let mut password = String::new();
    if std::io::stdin().lock().read_line(&mut password).is_err() {
        return usage_error("could not read the password from stdin");
    }
    let password = password.trim_end_matches(['\n', '\r']);
    let app = match App::new(config).await {
        Ok(a) => a,
        Err(e) => return start_error(&e),
    };
    match create_account(&app, name, password, role).await {
        Ok(true) => {
            println!("created account {name} (role {role})");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            eprintln!("mythos-broker: an account named {name} exists (user_exists)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("mythos-broker: {}", e.message);
            ExitCode::from(if e.status.is_client_error() { 2 } else { 1 })
        }
    }
}
