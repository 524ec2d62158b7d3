//! `bench-engine`: throughput of the Redis engine next to the raw Redis
//! ceiling for the same script, measured in one run (issue 3).
//!
//! Starts its own `redis-server` (no persistence) on a free port, then
//! measures (a) appends/s to single players and (b) deliveries/s of room
//! events, through `RedisEngine::publish`, and (c) `redis-benchmark` running
//! `EVALSHA` of the same `append.lua` with the same number of keys and
//! arguments. Must not touch: any Redis it did not start.
//!
//! `cargo run --release -p mythos-bench --bin bench-engine -- [--seconds N]`

use mythos_bench::procs::{self, Redis};
use mythos_bench::redis_side;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use mythos_broker::engine::redis::{RedisEngine, RedisOptions};
use mythos_broker::engine::{Engine, Limits, Rooms};
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
    /// Pooled connections (for blocking commands; appends use the lanes).
    #[arg(long, default_value = "32")]
    pool: usize,
    /// Rounds; each measures the engine and the ceilings in turn. Medians are reported.
    #[arg(long, default_value = "3")]
    rounds: usize,
    /// Instead of the above: what a room append's writes cost Redis with AOF
    /// (everysec, as deployed), per member, for `append.lua` as it is, for
    /// the same script taking its sequence number from the stream's own id
    /// (`XADD … 0-*`, no `HINCRBY`: a layout change not made, issue 19),
    /// and for a raw `XADD`; each on a fresh Redis, alternating.
    #[arg(long)]
    aof_writes: bool,
}

const DATA: &str =
    r#"{"text":"The innkeeper polishes a glass and eyes you warily.","from":"innkeeper","n":1}"#;

/// Its own `redis-server` on a free port: AOF everysec unless `extra` says
/// otherwise ([`NO_AOF`] for the ceilings).
fn start_redis(extra: &[&str]) -> Result<Redis, String> {
    std::panic::catch_unwind(|| Redis::start_with(procs::free_port(), extra))
        .map_err(|_| "redis-server did not start (apt-get install redis-server)".to_string())
}

/// No persistence: the ceilings of the engine's own work.
const NO_AOF: &[&str] = &["--appendonly", "no"];
/// AOF everysec as deployed, without automatic rewrite (which would shrink
/// the AOF while it is measured).
const AOF: &[&str] = &["--auto-aof-rewrite-percentage", "0"];

fn body() -> Arc<EventBody> {
    let data = RawValue::from_string(DATA.to_string()).unwrap_or_default();
    Arc::new(EventBody::now("bench", data, None, None))
}

/// Failed publishes (they count for nothing; any is reported).
static ERRORS: AtomicU64 = AtomicU64::new(0);

/// Runs `publishers` loops of `op` for `secs` (after a 1 s warm-up); returns units/s.
async fn measure<F, Fut>(publishers: usize, secs: u64, op: F) -> f64
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<u64>> + Send,
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
                let Some(n) = op(w, i).await else {
                    ERRORS.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
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

/// `redis-benchmark -c clients -P pipeline` running EVALSHA of append.lua with
/// `members` members; calls/s.
fn ceiling(
    port: u16,
    sha: &str,
    members: usize,
    (clients, pipeline): (usize, usize),
    secs: u64,
) -> Result<f64, String> {
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
    let n = members.to_string();
    for a in [
        n.as_str(),
        "0",
        "10000",
        "604800000",
        "",
        "bench",
        ts.as_str(),
        DATA,
        "",
        "",
        "PUBLISH",
        // A room of several members is announced once, on the room's channel.
        if members > 1 {
            "mythos:live:room:{bench}"
        } else {
            ""
        },
        "",
    ] {
        cmd.push(a.to_string());
    }
    cmd.extend((0..members).map(|i| format!("p{i}")));
    for_seconds(port, (clients, pipeline), secs, 2_000, &cmd)
}

/// `redis-benchmark` of `cmd` for about `secs`: a first run of `floor`
/// requests measures the rate, the second runs that rate × `secs` (at
/// least `floor`) and is the answer, in requests/s.
fn for_seconds(
    port: u16,
    conc: (usize, usize),
    secs: u64,
    floor: u64,
    cmd: &[String],
) -> Result<f64, String> {
    let run = |n: u64| mythos_bench::redis_side::redis_benchmark(port, conc, n, 10_000, cmd);
    let rough = run(floor)?;
    run(((rough * secs as f64) as u64).max(floor))
}

#[tokio::main]
async fn main() {
    if let Err(e) = bench(Args::parse()).await {
        eprintln!("bench-engine: {e}");
        std::process::exit(1);
    }
}

async fn bench(a: Args) -> Result<(), String> {
    if a.aof_writes {
        return aof_writes(&a);
    }
    let server = start_redis(NO_AOF)?;
    let url = format!("redis://127.0.0.1:{}/", server.port());
    let options = RedisOptions {
        pool_size: a.pool,
        ..RedisOptions::single(&url)
    };
    let engine = RedisEngine::connect(&options, Limits::default(), Hub::new(1024))
        .await
        .map_err(|e| e.to_string())?;
    let sha = redis_side::load(&url, &redis_side::append_script())?;
    for r in 0..a.rooms {
        for m in 0..a.room_size {
            let (room, member) = (format!("room{r}"), format!("r{r}m{m}"));
            engine
                .join(&room, &member)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    let players: Arc<Vec<Target>> = Arc::new(
        (0..a.players)
            .map(|i| Target::Player(format!("p{i}")))
            .collect(),
    );
    let rooms: Arc<Vec<Target>> = Arc::new(
        (0..a.rooms)
            .map(|r| Target::Room(format!("room{r}")))
            .collect(),
    );

    // The ceiling of the issue: one request in flight per connection. And,
    // for information, as many in flight pipelined over as many connections
    // as the engine has lanes, which is how the engine sends them.
    let plain = (a.publishers, 1);
    let lanes = mythos_bench::redis_side::ENGINE_LANES;
    let piped = (lanes, a.publishers.div_ceil(lanes));
    let room = a.room_size as f64;
    // [engine, ceiling, pipelined] for (a) and (b), one figure per round.
    let mut single: [Vec<f64>; 3] = Default::default();
    let mut rooms_out: [Vec<f64>; 3] = Default::default();
    // (append.lua per member, raw XADD per entry), one pair per round.
    let mut member_cost: Vec<(Cost, Cost)> = Vec::new();
    for round in 1..=a.rounds {
        eprintln!("round {round}/{}: (a) single players", a.rounds);
        let (e, ps, np) = (engine.clone(), players.clone(), a.publishers);
        single[0].push(
            measure(a.publishers, a.seconds, move |w, i| {
                let (e, ps) = (e.clone(), ps.clone());
                async move {
                    let t = &ps[(w + i as usize * np) % ps.len()];
                    e.publish(t, body(), None)
                        .await
                        .ok()
                        .map(|d| d.len() as u64)
                }
            })
            .await,
        );
        single[1].push(ceiling(server.port(), &sha, 1, plain, a.seconds)?);
        single[2].push(ceiling(server.port(), &sha, 1, piped, a.seconds)?);
        eprintln!("round {round}/{}: (b) rooms", a.rounds);
        let (e, rs) = (engine.clone(), rooms.clone());
        let before = Sample::take(&server);
        rooms_out[0].push(
            measure(a.publishers, a.seconds, move |w, i| {
                let (e, rs) = (e.clone(), rs.clone());
                async move {
                    let t = &rs[(w + i as usize) % rs.len()];
                    e.publish(t, body(), None)
                        .await
                        .ok()
                        .map(|d| d.len() as u64)
                }
            })
            .await,
        );
        let cost = Sample::take(&server).cost_since(&before, "evalsha", a.room_size);
        rooms_out[1].push(ceiling(server.port(), &sha, a.room_size, plain, a.seconds)? * room);
        rooms_out[2].push(ceiling(server.port(), &sha, a.room_size, piped, a.seconds)? * room);
        let before = Sample::take(&server);
        xadd_ceiling(server.port(), a.room_size, a.seconds)?;
        let raw = Sample::take(&server).cost_since(&before, "xadd", 1);
        member_cost.push((cost, raw));
    }

    let redis_version = Command::new("redis-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("machine: {cores} cores; {redis_version}");
    let errors = ERRORS.load(Ordering::Relaxed);
    if errors > 0 {
        println!("WARNING: {errors} publishes failed during the engine runs");
    }
    println!(
        "setup: {} publishers, {lanes} lanes, {} rounds of {} s; ceiling: redis-benchmark \
         -c {} -P 1; pipelined: -c {} -P {}; figures: median (min-max)",
        a.publishers, a.rounds, a.seconds, plain.0, piped.0, piped.1
    );
    println!();
    println!("| workload | engine | ceiling (-P 1) | ratio | pipelined | ratio |");
    println!("|---|---:|---:|---:|---:|---:|");
    let row = |name: String, v: &[Vec<f64>; 3]| {
        let [e, c, p] = [median(&v[0]), median(&v[1]), median(&v[2])];
        let (rc, rp) = (100.0 * e / c, 100.0 * e / p);
        println!(
            "| {name} | {} | {} | {rc:.0} % | {} | {rp:.0} % |",
            spread(&v[0]),
            spread(&v[1]),
            spread(&v[2])
        );
    };
    row(
        format!("(a) appends/s, single players ({} players)", a.players),
        &single,
    );
    row(
        format!("(b) deliveries/s, {} rooms of {}", a.rooms, a.room_size),
        &rooms_out,
    );
    println!();
    println!(
        "Redis CPU per member of a room publish ({} members), against the raw XADD \
         ceiling in the same rounds (redis-benchmark -P {} of the same entry); \
         median (min-max) of {} rounds, µs:",
        a.room_size, a.room_size, a.rounds
    );
    println!();
    println!("| measure | append.lua, per member | raw XADD, per entry | ratio |");
    println!("|---|---:|---:|---:|");
    let pick = |f: fn(&Cost) -> f64| -> ([Vec<f64>; 2], f64) {
        let ours: Vec<f64> = member_cost.iter().map(|(c, _)| f(c)).collect();
        let raw: Vec<f64> = member_cost.iter().map(|(_, r)| f(r)).collect();
        let ratio = median(&ours) / median(&raw);
        ([ours, raw], ratio)
    };
    for (name, f) in [
        (
            "commandstats usec (the command alone)",
            (|c: &Cost| c.stat_us) as fn(&Cost) -> f64,
        ),
        ("redis-server CPU (with networking)", |c: &Cost| c.cpu_us),
    ] {
        let ([ours, raw], ratio) = pick(f);
        println!(
            "| {name} | {} | {} | {ratio:.2} |",
            spread_us(&ours),
            spread_us(&raw)
        );
    }
    drop(engine);
    drop(server);
    Ok(())
}

/// `--aof-writes`: per member of a room append, Redis CPU, commandstats
/// and AOF bytes, for each candidate script and a raw `XADD`, every round on
/// fresh Redis servers with AOF everysec; medians (min-max) printed.
fn aof_writes(a: &Args) -> Result<(), String> {
    let scripts = [
        ("append.lua (as deployed)", redis_side::append_script()),
        (
            "append.lua, sequence from `XADD … 0-*` (no HINCRBY)",
            redis_side::append_script_auto_id()?,
        ),
    ];
    let mut costs: Vec<Vec<Cost>> = (0..=scripts.len()).map(|_| Vec::new()).collect();
    let plain = (a.publishers, 1);
    for round in 1..=a.rounds {
        eprintln!("round {round}/{}: AOF writes", a.rounds);
        for (i, (_, script)) in scripts.iter().enumerate() {
            let server = start_redis(AOF)?;
            let sha = redis_side::load(&server.url(), script)?;
            let before = Sample::take(&server);
            ceiling(server.port(), &sha, a.room_size, plain, a.seconds)?;
            costs[i].push(Sample::take(&server).cost_since(&before, "evalsha", a.room_size));
        }
        let server = start_redis(AOF)?;
        let before = Sample::take(&server);
        xadd_ceiling(server.port(), a.room_size, a.seconds)?;
        costs[scripts.len()].push(Sample::take(&server).cost_since(&before, "xadd", 1));
    }
    println!(
        "Redis with AOF everysec: cost per member of a room append ({} members; \
         redis-benchmark -c {} -P 1, raw XADD -P {}), median (min-max) of {} rounds",
        a.room_size, plain.0, a.room_size, a.rounds
    );
    println!();
    println!("| writes | redis-server CPU µs | ÷ raw XADD | commandstats µs | AOF bytes |");
    println!("|---|---:|---:|---:|---:|");
    let raw_cpu = median(
        &costs[scripts.len()]
            .iter()
            .map(|c| c.cpu_us)
            .collect::<Vec<_>>(),
    );
    let names = scripts
        .iter()
        .map(|(n, _)| *n)
        .chain(["raw `XADD` (same fields, MAXLEN =)"]);
    for (name, c) in names.zip(&costs) {
        let pick = |f: fn(&Cost) -> f64| c.iter().map(f).collect::<Vec<f64>>();
        let cpu = pick(|c| c.cpu_us);
        println!(
            "| {name} | {} | {:.2} | {} | {:.0} |",
            spread_us(&cpu),
            median(&cpu) / raw_cpu,
            spread_us(&pick(|c| c.stat_us)),
            median(&pick(|c| c.aof_bytes))
        );
    }
    Ok(())
}

/// Redis's own account at one moment: `INFO commandstats` (µs inside each
/// command, calls), the server process's CPU and the AOF's size.
struct Sample {
    stats: String,
    cpu_s: f64,
    aof: f64,
}

/// What one unit of work cost Redis between two samples, in µs.
struct Cost {
    /// Inside the command (commandstats).
    stat_us: f64,
    /// The server process's CPU (networking included).
    cpu_us: f64,
    /// Bytes the AOF grew by (0 without AOF).
    aof_bytes: f64,
}

impl Sample {
    fn take(server: &Redis) -> Self {
        Self {
            stats: server.info("INFO commandstats"),
            cpu_s: procs::cpu_seconds(server.pid()),
            aof: info_field(&server.info("INFO persistence"), "aof_current_size"),
        }
    }

    /// The cost per unit of `command` since `before`; a call counts `per_call` units.
    fn cost_since(&self, before: &Sample, command: &str, per_call: usize) -> Cost {
        let (u1, c1) = cmdstat(&self.stats, command);
        let (u0, c0) = cmdstat(&before.stats, command);
        let units = (c1 - c0) * per_call as f64;
        Cost {
            stat_us: (u1 - u0) / units,
            cpu_us: (self.cpu_s - before.cpu_s) * 1e6 / units,
            aof_bytes: (self.aof - before.aof) / units,
        }
    }
}

/// A number field of an `INFO` section (0 when absent).
fn info_field(info: &str, name: &str) -> f64 {
    let prefix = format!("{name}:");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// (usec, calls) of `cmdstat_<command>` in `INFO commandstats`.
fn cmdstat(info: &str, command: &str) -> (f64, f64) {
    let prefix = format!("cmdstat_{command}:");
    let Some(line) = info.lines().find_map(|l| l.strip_prefix(&prefix)) else {
        return (0.0, 0.0);
    };
    let field = |name: &str| {
        line.split(',')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (field("usec"), field("calls"))
}

/// The raw ceiling of one member's entry: `XADD` of the same fields with the
/// same exact MAXLEN, `members` pipelined per connection, random keys.
fn xadd_ceiling(port: u16, members: usize, secs: u64) -> Result<f64, String> {
    let ts = now_rfc3339();
    let cmd: Vec<String> = [
        "XADD",
        "mythos:player:{x__rand_int__}:events",
        "MAXLEN",
        "=",
        "10000",
        "*",
        "event_type",
        "bench",
        "timestamp",
        &ts,
        "data",
        DATA,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for_seconds(port, (4, members), secs, 20_000, &cmd)
}

fn spread_us(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.2} ({lo:.2}-{hi:.2})", median(v))
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn spread(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.0} ({:.0}-{:.0})", median(v), lo, hi)
}
