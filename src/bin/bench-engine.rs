//! `bench-engine`: throughput of the Redis engine next to the raw Redis
//! ceiling for the same script, measured in one run (issue 3).
//!
//! Starts its own `redis-server` (no persistence) on a free port, then
//! measures (a) appends/s to single players and (b) deliveries/s of room
//! events, through `RedisEngine::publish`, and (c) `redis-benchmark` running
//! `EVALSHA` of the same `append.lua` with the same number of keys and
//! arguments. Must not touch: any Redis it did not start.
//!
//! `cargo run --release --bin bench-engine -- [--seconds N]`

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use mythos_broker::engine::redis::RedisEngine;
use mythos_broker::engine::{Engine, Limits};
use mythos_broker::hub::Hub;
use mythos_broker::protocol::{now_rfc3339, EventBody, Target};
use serde_json::value::RawValue;

#[derive(Parser)]
#[command(about = "Redis engine throughput vs the raw Redis ceiling")]
struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value = "5")]
    seconds: u64,
    /// Distinct players for single-player appends.
    #[arg(long, default_value = "10000")]
    players: usize,
    /// Concurrent publishers (and redis-benchmark clients).
    #[arg(long, default_value = "64")]
    publishers: usize,
    /// Members per room.
    #[arg(long, default_value = "50")]
    room_size: usize,
    /// Rooms published to.
    #[arg(long, default_value = "20")]
    rooms: usize,
    /// Pooled connections.
    #[arg(long, default_value = "32")]
    pool: usize,
}

const DATA: &str =
    r#"{"text":"The innkeeper polishes a glass and eyes you warily.","from":"innkeeper","n":1}"#;

struct Server(Child, u16, std::path::PathBuf);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.2);
    }
}

fn start_redis() -> Result<Server, String> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let dir = std::env::temp_dir().join(format!("mythos-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("redis-server: {e} (apt-get install redis-server)"))?;
    let server = Server(child, port, dir);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("redis-server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(server)
}

fn body() -> Arc<EventBody> {
    let data = RawValue::from_string(DATA.to_string()).unwrap_or_default();
    Arc::new(EventBody::now("bench", data, None, None))
}

/// Runs `publishers` loops of `op` for `secs` (after a 1 s warm-up); returns units/s.
async fn measure<F, Fut>(publishers: usize, secs: u64, op: F) -> f64
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = u64> + Send,
{
    let op = Arc::new(op);
    let counting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(1 + secs);
    let mut tasks = Vec::new();
    for w in 0..publishers {
        let (op, counting, done) = (op.clone(), counting.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < stop {
                let n = op(w, i).await;
                if counting.load(Ordering::Relaxed) {
                    done.fetch_add(n, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    counting.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64()
}

/// `redis-benchmark` running EVALSHA of append.lua with `members` members; calls/s.
fn ceiling(port: u16, sha: &str, members: usize, clients: usize, secs: u64) -> Result<f64, String> {
    // One shared meta key keeps every sequence number increasing, so the
    // members' events keys can be random (as many players as the engine run).
    let mut cmd = vec![
        "EVALSHA".to_string(),
        sha.to_string(),
        (2 * members).to_string(),
    ];
    for _ in 0..members {
        cmd.push("mythos:player:{b__rand_int__}:events".into());
        cmd.push("mythos:player:{bench-meta}:meta".into());
    }
    let ts = now_rfc3339();
    for a in [
        &members.to_string(),
        "0",
        "10000",
        "604800000",
        "",
        "bench",
        &ts,
        DATA,
        "",
        "",
    ] {
        cmd.push(a.to_string());
    }
    cmd.extend((0..members).map(|i| format!("p{i}")));
    let run = |n: u64| -> Result<f64, String> {
        let out = Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "-P", "1"])
            .args([
                "-c",
                &clients.to_string(),
                "-n",
                &n.to_string(),
                "-r",
                "10000",
            ])
            .args(&cmd)
            .output()
            .map_err(|e| format!("redis-benchmark: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
        text.lines()
            .filter_map(|l| l.split(" requests per second").next()?.rsplit(' ').next())
            .filter_map(|v| v.parse::<f64>().ok())
            .next_back()
            .ok_or_else(|| format!("unreadable redis-benchmark output: {text}"))
    };
    let rough = run(2_000)?;
    run(((rough * secs as f64) as u64).max(2_000))
}

#[tokio::main]
async fn main() {
    if let Err(e) = bench(Args::parse()).await {
        eprintln!("bench-engine: {e}");
        std::process::exit(1);
    }
}

async fn bench(a: Args) -> Result<(), String> {
    let server = start_redis()?;
    let url = format!("redis://127.0.0.1:{}/", server.1);
    let engine = RedisEngine::connect(&url, a.pool, Limits::default(), Hub::new(1024))
        .await
        .map_err(|e| e.to_string())?;
    let sha = engine.scripts().append.get_hash().to_string();

    let players: Arc<Vec<Target>> = Arc::new(
        (0..a.players)
            .map(|i| Target::Player(format!("p{i}")))
            .collect(),
    );
    let e = engine.clone();
    let np = a.publishers;
    let singles = measure(a.publishers, a.seconds, move |w, i| {
        let (e, players) = (e.clone(), players.clone());
        async move {
            let t = &players[(w + i as usize * np) % players.len()];
            e.publish(t, body(), None)
                .await
                .map_or(0, |d| d.len() as u64)
        }
    })
    .await;

    for r in 0..a.rooms {
        for m in 0..a.room_size {
            engine
                .join(&format!("room{r}"), &format!("r{r}m{m}"))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    let rooms: Arc<Vec<Target>> = Arc::new(
        (0..a.rooms)
            .map(|r| Target::Room(format!("room{r}")))
            .collect(),
    );
    let e = engine.clone();
    let room_deliveries = measure(a.publishers, a.seconds, move |w, i| {
        let (e, rooms) = (e.clone(), rooms.clone());
        async move {
            let t = &rooms[(w + i as usize) % rooms.len()];
            e.publish(t, body(), None)
                .await
                .map_or(0, |d| d.len() as u64)
        }
    })
    .await;

    let c1 = ceiling(server.1, &sha, 1, a.publishers, a.seconds)?;
    let cn = ceiling(server.1, &sha, a.room_size, a.publishers, a.seconds)? * a.room_size as f64;

    let redis_version = Command::new("redis-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("machine: {cores} cores; {redis_version}");
    println!(
        "setup: {} publishers, pool {}, {} s per measurement, redis-benchmark -c {} -P 1",
        a.publishers, a.pool, a.seconds, a.publishers
    );
    println!();
    println!("| workload | engine | raw EVALSHA ceiling | ratio |");
    println!("|---|---:|---:|---:|");
    let row = |name: String, e: f64, c: f64| {
        println!("| {name} | {e:.0}/s | {c:.0}/s | {:.0} % |", 100.0 * e / c);
    };
    row(
        format!("(a) appends to single players ({} players)", a.players),
        singles,
        c1,
    );
    row(
        format!("(b) room deliveries ({} rooms of {})", a.rooms, a.room_size),
        room_deliveries,
        cn,
    );
    drop(engine);
    drop(server);
    Ok(())
}
