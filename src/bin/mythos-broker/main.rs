//! The `mythos-broker` command: run a node (`serve`, the default), manage
//! accounts (`user add`), or record, replay and inspect (`export`, `replay`,
//! `inspect`, in [`tools`]).
//!
//! Owns: parsing the command line and choosing the command. Process concerns
//! (logging, signals, exit codes: 2 for a bad setting or usage) are in
//! [`mythos_broker::run`], shared with programs that embed a broker (the demo
//! world, `examples/demo`). Must not touch: broker logic.

mod tools;

use std::io::BufRead;
use std::process::ExitCode;

use clap::Parser;
use mythos_broker::config::{Cli, Cmd, Config, UserCmd};
use mythos_broker::run::{init_logging, start_error, usage_error};
use mythos_broker::state::App;
use mythos_broker::{create_account, run};

/// jemalloc rather than the system allocator: fan-out makes many small,
/// short-lived allocations on several threads (see docs/decisions.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = cli.config;
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
        Cmd::Serve => run::serve(config, |_, _| async {}).await,
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
