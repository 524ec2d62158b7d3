//! Running a node as a process: logging, serving until SIGTERM/SIGINT, dev
//! mode's printed lines, exit codes. Used by the `mythos-broker` binary and by
//! programs that embed a broker the same way (the demo example,
//! `examples/demo`), so both print the same lines.
//!
//! Owns: process concerns — logging set-up, signals, the stdout lines scripts
//! read ("listening", dev mode's `export`s), exit codes (2 for a bad setting,
//! 1 for an engine that cannot be reached or an address that cannot be bound).
//! Must not touch: broker logic.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use crate::auth::Role;
use crate::config::Config;
use crate::server;
use crate::state::{App, StartError};

/// Prints `mythos-broker: <msg>` to stderr; exit code 2 (a bad setting or usage).
pub fn usage_error(msg: &str) -> ExitCode {
    eprintln!("mythos-broker: {msg}");
    ExitCode::from(2)
}

/// Exit code 2 for a wrong setting, 1 for an engine that cannot be reached.
pub fn start_error(e: &StartError) -> ExitCode {
    match e {
        StartError::Config(msg) => usage_error(msg),
        StartError::Unavailable(msg) => {
            eprintln!("mythos-broker: {msg}");
            ExitCode::from(1)
        }
    }
}

/// Logs go to stderr, filtered by `MYTHOS_LOG`, as text or JSON lines
/// (`MYTHOS_LOG_FORMAT`). Text is coloured only when both stdout and stderr
/// are terminals (and `NO_COLOR` is unset): `cargo run > file` or a pipe gets
/// plain text.
pub fn init_logging(config: &Config) {
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

/// Runs a node until SIGTERM or SIGINT, then drains it; the process's exit
/// code. Once it listens (and has printed its lines), `started` runs with
/// the node and its address: a program embedding the broker starts its own
/// tasks there (they stop with `app.shutdown()`).
pub async fn serve<F, Fut>(mut config: Config, started: F) -> ExitCode
where
    F: FnOnce(Arc<App>, SocketAddr) -> Fut,
    Fut: Future<Output = ()>,
{
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
    started(app.clone(), running.addr).await;
    signals.wait().await;
    tracing::info!("shutting down: closing connections, finishing in-flight appends");
    running.shutdown().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// The address to reach a listener bound to `addr` from this host (an
/// unspecified address becomes localhost).
pub fn reachable(addr: SocketAddr) -> SocketAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// Dev mode's secret (if generated) and service/admin tokens, printed as
/// lines a shell takes as they are: `#` comments and `export`s, so that
/// pasting the block sets `$BROKER`, `$SERVICE` and `$ADMIN` (stdout only,
/// never the log).
fn print_dev_exports(app: &App, addr: SocketAddr, generated: Option<&str>) {
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
    println!("export BROKER=http://{}", reachable(addr));
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
