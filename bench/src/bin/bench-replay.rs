//! `bench-replay`: how fast `mythos-broker replay --speed max` publishes a
//! recording (issue 12), next to the raw Redis ceiling for the same work,
//! measured in one run.
//!
//! Starts its own `redis-server` (no persistence) on a free port, writes a
//! recording of `--events` events (100 000 by default) to a temporary file,
//! reads it back as the command does, and replays it through the same code
//! (`tools::replay::run` with the engine publisher) into a fresh player: (a)
//! on the Redis engine, (b) on the embedded engine. A replay is one publish
//! at a time, in order (a player's sequence numbers follow the recording),
//! so the ceiling is `redis-benchmark -c 1 -P 1` running `EVALSHA` of the
//! same `append.lua` with the same keys (events, meta, a dedupe key per
//! event) and arguments: one script call in flight, as in the replay. With
//! the `mythos-broker` binary of the same build beside it, it also times the
//! command itself, `replay FILE --speed max`, on the store directly and with
//! `--url` through a broker process on the same Redis (its own figure: the
//! command's own "events/s" line, process start excluded). Must not touch:
//! any Redis or process it did not start.
//!
//! `cargo run --release -p mythos-bench --bin bench-replay -- [--events N]`

use mythos_bench::procs::{self, Redis};
use std::io::Write;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use mythos_broker::engine::memory::MemoryEngine;
use mythos_broker::engine::redis::{RedisEngine, RedisOptions};
use mythos_broker::engine::{Engine, Limits};
use mythos_broker::hub::Hub;
use mythos_broker::protocol::{now_rfc3339, Event, EventBody};
use mythos_broker::tools::recording::{self, line_of};
use mythos_broker::tools::replay::{self, EnginePublisher, Speed};
use serde_json::value::RawValue;

#[derive(Parser)]
#[command(about = "replay --speed max throughput vs the raw Redis ceiling")]
struct Args {
    /// Events in the recording.
    #[arg(long, default_value = "100000")]
    events: u64,
    /// The `mythos-broker` binary whose `replay` command to time as well
    /// (default: the one next to this benchmark, i.e. the same build).
    #[arg(long)]
    broker: Option<std::path::PathBuf>,
}

const DATA: &str =
    r#"{"text":"The innkeeper polishes a glass and eyes you warily.","from":"innkeeper","n":1}"#;

/// A process of ours, killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Its own `redis-server` (no persistence) on a free port.
fn start_redis() -> Result<Redis, String> {
    std::panic::catch_unwind(|| Redis::start_with(procs::free_port(), &["--appendonly", "no"]))
        .map_err(|_| "redis-server did not start (apt-get install redis-server)".to_string())
}

/// Writes a recording of `n` events of `player` (10 ms apart) to `path`.
fn write_recording(path: &std::path::Path, n: u64) -> Result<(), String> {
    let f = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let mut w = std::io::BufWriter::new(f);
    let data = RawValue::from_string(DATA.to_string()).map_err(|e| e.to_string())?;
    let base = EventBody::now("chat_message", data, Some("tavern".into()), None);
    for seq in 1..=n {
        let ms = seq * 10;
        let body = EventBody::new(
            base.event_type.clone(),
            format!(
                "2026-11-23T10:{:02}:{:02}.{:03}Z",
                (ms / 60_000) % 60,
                (ms / 1000) % 60,
                ms % 1000
            ),
            base.data.clone(),
            base.room_id.clone(),
            base.id.clone(),
        );
        let ev = Event {
            sequence_number: seq,
            body: Arc::new(body),
        };
        writeln!(w, "{}", line_of("alice", &ev)).map_err(|e| e.to_string())?;
    }
    w.flush().map_err(|e| e.to_string())
}

/// `redis-benchmark -c 1 -P 1`: EVALSHA of append.lua for one player with a
/// fresh dedupe key per call, as a replay's publish makes; calls/s.
fn ceiling(port: u16, sha: &str, n: u64) -> Result<f64, String> {
    let ts = now_rfc3339();
    let cmd: Vec<String> = [
        "EVALSHA",
        sha,
        "3",
        "mythos:player:{ceiling}:events",
        "mythos:player:{ceiling}:meta",
        "mythos:player:{ceiling}:dedupe:replay:alice:__rand_int__",
        "1",
        "86400000",
        "10000",
        "604800000",
        "ri",
        "chat_message",
        &ts,
        DATA,
        "tavern",
        "replay:alice:1",
        "PUBLISH",
        "",
        "",
        "ceiling",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    mythos_bench::redis_side::redis_benchmark(port, (1, 1), n, 1_000_000_000, &cmd)
}

/// The rate a `replay` run printed ("... (N events/s)").
fn printed_rate(out: &std::process::Output) -> Result<f64, String> {
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "replay failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    text.rsplit_once(" events/s)")
        .and_then(|(head, _)| head.rsplit_once('(')?.1.parse().ok())
        .ok_or_else(|| format!("unreadable replay output: {text}"))
}

/// Times `bin replay FILE --speed max` on the store directly and through a
/// broker process (`--url`) on the same Redis; (direct, http) events/s.
fn cli_rates(
    bin: &std::path::Path,
    url: &str,
    file: &std::path::Path,
) -> Result<(f64, f64), String> {
    const SECRET: &str = "bench-replay-secret-0123456789";
    let base = |c: &mut Command| {
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("MYTHOS_LOG", "warn")
            .env("MYTHOS_REDIS_URL", url)
            .env("MYTHOS_JWT_SECRET", SECRET)
            .stdin(Stdio::null());
    };
    let mut direct = Command::new(bin);
    base(&mut direct);
    direct
        .arg("replay")
        .arg(file)
        .args(["--to-player", "bench-cli", "--speed", "max"]);
    let direct = printed_rate(
        &direct
            .output()
            .map_err(|e| format!("{}: {e}", bin.display()))?,
    )?;

    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let mut serve = Command::new(bin);
    base(&mut serve);
    serve
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null());
    let node = Proc(
        serve
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("the broker did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut http = Command::new(bin);
    base(&mut http);
    http.env_remove("MYTHOS_REDIS_URL")
        .arg("replay")
        .arg(file)
        .args(["--to-player", "bench-http", "--speed", "max"])
        .args(["--url", &format!("http://127.0.0.1:{port}")]);
    let http = printed_rate(
        &http
            .output()
            .map_err(|e| format!("{}: {e}", bin.display()))?,
    )?;
    drop(node);
    Ok((direct, http))
}

#[tokio::main]
async fn main() {
    if let Err(e) = bench(Args::parse()).await {
        eprintln!("bench-replay: {e}");
        std::process::exit(1);
    }
}

async fn bench(a: Args) -> Result<(), String> {
    let server = start_redis()?;
    let url = format!("redis://127.0.0.1:{}", server.port());
    let file = server.dir().join("recording.jsonl");
    write_recording(&file, a.events)?;
    let t0 = Instant::now();
    let f = std::fs::File::open(&file).map_err(|e| e.to_string())?;
    let events = recording::read(std::io::BufReader::new(f)).map_err(|e| e.to_string())?;
    let parse_s = t0.elapsed().as_secs_f64();

    let hub = Hub::new(1024);
    let redis = RedisEngine::connect(&RedisOptions::single(&url), Limits::default(), hub.clone())
        .await
        .map_err(|e| e.to_string())?;
    let sha = mythos_bench::redis_side::load(&url, &mythos_bench::redis_side::append_script())?;
    let max = 65536;
    let run = |engine: Arc<dyn Engine>, to: &'static str| {
        let events = &events;
        async move {
            let p = EnginePublisher {
                engine: engine.as_ref(),
                max_event_bytes: max,
            };
            let out = replay::run(&p, events, to, Speed::Max)
                .await
                .map_err(|e| e.to_string())?;
            let n = out.sequence_numbers.len() as u64;
            let dense = out.sequence_numbers.iter().copied().eq(1..=n);
            if n != events.len() as u64 || !dense {
                return Err(format!(
                    "{to}: the replay's sequence numbers are not 1..={n}"
                ));
            }
            Ok::<f64, String>(n as f64 / out.elapsed.as_secs_f64())
        }
    };
    let on_redis = run(redis.clone(), "bench-redis").await?;
    let memory: Arc<dyn Engine> = Arc::new(MemoryEngine::new(Limits::default(), hub));
    let on_memory = run(memory, "bench-memory").await?;
    let ceil = ceiling(server.port(), &sha, a.events)?;
    let broker = a.broker.clone().or_else(|| {
        let p = std::env::current_exe()
            .ok()?
            .with_file_name("mythos-broker");
        p.exists().then_some(p)
    });
    let cli = match &broker {
        Some(bin) => Some(cli_rates(bin, &url, &file)?),
        None => None,
    };
    println!(
        "recording: {} events, read and checked in {parse_s:.2} s",
        events.len()
    );
    println!("| path | events/s | ratio to ceiling |");
    println!("|---|---|---|");
    println!(
        "| replay --speed max, Redis engine | {on_redis:.0} | {:.2} |",
        on_redis / ceil
    );
    println!("| replay --speed max, embedded engine | {on_memory:.0} | - |");
    match cli {
        Some((direct, http)) => {
            println!(
                "| `mythos-broker replay --speed max`, Redis directly | {direct:.0} | {:.2} |",
                direct / ceil
            );
            println!(
                "| `mythos-broker replay --speed max --url` (a broker on the same Redis) | {http:.0} | {:.2} |",
                http / ceil
            );
        }
        None => println!(
            "| `mythos-broker replay` | not measured: no mythos-broker binary beside this one (cargo build --release --bin mythos-broker) | - |"
        ),
    }
    println!("| ceiling: redis-benchmark -c 1 -P 1 EVALSHA append.lua | {ceil:.0} | 1.00 |");
    Ok(())
}
