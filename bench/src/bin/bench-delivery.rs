//! `bench-delivery`: end-to-end delivery benchmarks of issue 4, against a real
//! broker process and a real `redis-server` with AOF, both started here.
//!
//! Workloads:
//! - `w1`: fan-out — 1,000 WebSocket players in 20 rooms of 50, room events
//!   published over HTTP at 200/s (10,000 deliveries/s); publish→receive
//!   latency of every delivery, and loss checked by sequence number.
//! - `w1max`: the same, the rate ×1.25 every step until p99 > 100 ms, loss,
//!   or the generator cannot reach the rate; deliveries/s and per broker
//!   CPU-second, CPU of broker, Redis and generator apart. Runs `--runs`
//!   times (default 3, each on a fresh Redis and broker); the summary is the
//!   median.
//! - `w2`: resume — a player away while 1,000 (10,000) events were published
//!   reconnects with `since=`; time to the last one. Then the same with live
//!   traffic to the resuming player and 200 background players: every event
//!   checked for loss and duplication.
//! - `w3`: 10,000 idle WebSockets; broker RSS per connection, and where it goes.
//! - `all`: each in turn, then a summary against the peer and the targets.
//!
//! `--transport sse` runs W1, W1max and W3 over `GET /v1/events` instead of
//! WebSockets; `--peer socketio` runs them against the Socket.IO peer of
//! `bench/socketio-peer/` (its node process and its own Redis, started here)
//! with the same generator (issue 19). W2 is WebSocket-only. `--json FILE`
//! writes the figures `bench-compare` puts side by side.
//!
//! `--nodes N` runs W1/W1max through N broker nodes on the one store
//! (players and publishers spread evenly; W1 then reports what pub/sub each
//! node received against its own share), `--cluster` on a 3-master Redis
//! Cluster instead of one Redis (issue 10).
//!
//! `cargo run --release -p mythos-bench --bin bench-delivery -- <workload> [options]`
//! (`scripts/bench` builds, raises `ulimit -n`, and runs `all`).
//! The generator is a multi-thread tokio runtime; it scans frames instead of
//! parsing them, so that it is not the bottleneck. Must not touch: any Redis
//! or broker it did not start (never the Redis on 6379).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures_util::{stream, StreamExt};
use mythos_bench::feed::{self, Feed, Item, Target};
use mythos_bench::net::{event_body, mint, scan_event, ws_connect, Http, Ws};
use mythos_bench::procs::{self, Broker, Cpu, CpuUse, Quiet, Redis, RedisCluster};
use mythos_bench::socketio;
use mythos_bench::stats::{verdict, Lat, Recorder, SeqCheck, Table};
use mythos_broker::auth::Role;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    W1,
    W1max,
    W2,
    W3,
    All,
}

/// How our players connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Transport {
    Ws,
    Sse,
}

/// The peers the same generator can measure instead of our broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Peer {
    /// `bench/socketio-peer/`: Socket.IO with connection-state recovery and
    /// the Redis streams adapter.
    Socketio,
}

#[derive(Debug, Parser)]
#[command(about = "End-to-end delivery benchmarks (issue 4) against its own broker and Redis")]
// A later option overrides an earlier one (scripts pass defaults first).
#[command(args_override_self = true)]
struct Args {
    /// Which workloads to run, in turn (e.g. `w1 w1max w3`).
    #[arg(value_enum, required = true, num_args = 1..)]
    workloads: Vec<Workload>,
    /// How players connect to our broker (W1, W1max, W3): WebSocket or SSE.
    #[arg(long, value_enum, default_value = "ws")]
    transport: Transport,
    /// Measure a peer instead of our broker (W1, W1max, W3), same generator.
    #[arg(long, value_enum)]
    peer: Option<Peer>,
    /// Where the Socket.IO peer is (with `node_modules`: `npm ci` there).
    #[arg(long)]
    peer_dir: Option<PathBuf>,
    /// Also write the figures `bench-compare` reads (JSON) to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The broker binary (default: `mythos-broker` next to this one).
    #[arg(long)]
    broker_bin: Option<PathBuf>,
    /// W1: seconds measured (after a 2 s warm-up).
    #[arg(long, default_value = "30")]
    seconds: u64,
    /// W1 and the first W1max step: room events per second.
    #[arg(long, default_value = "200")]
    rate: f64,
    /// W1max: seconds per step.
    #[arg(long, default_value = "10")]
    step_secs: u64,
    /// W1max: the rate factor from one step to the next.
    #[arg(long, default_value = "1.25")]
    factor: f64,
    /// W1max: most steps.
    #[arg(long, default_value = "12")]
    max_steps: usize,
    /// W1max: independent runs (each with its own Redis and broker); the
    /// summary gives their median, because runs on a shared 2-core machine
    /// vary by up to ~25%.
    #[arg(long, default_value = "3")]
    runs: usize,
    /// Rooms (W1, W1max).
    #[arg(long, default_value = "20")]
    rooms: usize,
    /// Players per room (W1, W1max).
    #[arg(long, default_value = "50")]
    room_size: usize,
    /// Publisher tasks, each with its own keep-alive HTTP connection (one
    /// request in flight each, so this bounds publishes in flight).
    #[arg(long, default_value = "16")]
    publishers: usize,
    /// W2: reconnections measured per backlog size.
    #[arg(long, default_value = "20")]
    reps: usize,
    /// W3: idle connections.
    #[arg(long, default_value = "10000")]
    connections: usize,
    /// Wait for the 1-minute load average to fall below this before each workload.
    #[arg(long, default_value = "0.7")]
    max_load: f64,
    /// Longest wait for a quiet machine, in seconds (0: don't wait).
    #[arg(long, default_value = "300")]
    quiet_wait: u64,
    /// Diagnostics: an extra environment variable for the broker (KEY=VALUE),
    /// e.g. `LD_PRELOAD=...` or a `MYTHOS_*` setting; repeatable.
    #[arg(long = "broker-env", value_parser = parse_kv)]
    broker_env: Vec<(String, String)>,
    /// Diagnostics: an extra `redis-server` argument for the bench's Redis
    /// (ours and the peer's alike; not for `--cluster`), e.g.
    /// `--redis-arg=--appendonly --redis-arg=no`; repeatable, in order.
    #[arg(long = "redis-arg", allow_hyphen_values = true)]
    redis_args: Vec<String>,
    /// Diagnostics: a command the broker runs under, split on spaces (e.g.
    /// `valgrind --tool=massif`); CPU and RSS figures then describe it.
    #[arg(long)]
    broker_prefix: Option<String>,
    /// Also write the report (markdown) to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Broker nodes on the one store (W1, W1max): players connect to them
    /// in turn, publishers likewise (issue 10's scale-out figures).
    #[arg(long, default_value = "1", value_parser = clap::value_parser!(u16).range(1..=8))]
    nodes: u16,
    /// Run on a Redis Cluster (3 masters, 1 replica each, AOF) instead of one Redis.
    #[arg(long)]
    cluster: bool,
}

/// The peer's figures and our targets, as the product owner gave them.
mod goal {
    pub const W1_P50_PEER: f64 = 2.3;
    pub const W1_P99_PEER: f64 = 7.3;
    pub const W1_P99_TARGET: f64 = 10.0;
    pub const W1MAX_STOP_P99: f64 = 100.0;
    pub const W1MAX_TARGET: f64 = 37_000.0;
    pub const W1MAX_TARGET_PER_CPU: f64 = 70_000.0;
    pub const W2_1K_PEER: f64 = 33.0;
    pub const W2_1K_TARGET: f64 = 20.0;
    pub const W2_10K_PEER: f64 = 310.0;
    pub const W2_10K_TARGET: f64 = 150.0;
    pub const W3_TARGET_KIB: f64 = 8.0;
}

/// Where a workload's events are kept: one Redis, or a 3-master cluster.
enum Store {
    Single(Redis),
    Cluster(RedisCluster),
}

impl Store {
    fn servers(&self) -> Vec<&Redis> {
        match self {
            Store::Single(r) => vec![r],
            Store::Cluster(c) => c.nodes.iter().collect(),
        }
    }
}

/// One workload's environment: its own Redis (AOF) and broker processes
/// (`--nodes` of them, all on the same store) — or, with `--peer`, the
/// peer's server process in the broker's place, on its own Redis.
struct Env {
    /// What the players connect to, and how.
    target: Target,
    store: Store,
    brokers: Vec<Broker>,
    /// The first broker (single-node workloads use only it).
    broker: Broker,
    secret: String,
    service: String,
}

/// How `--redis-arg` changed the bench's Redis, for the report.
fn redis_note(a: &Args) -> String {
    if a.redis_args.is_empty() {
        String::new()
    } else {
        format!(" unless overridden by {:?}", a.redis_args.join(" "))
    }
}

/// The one Redis of a single-store run, with `--redis-arg`s.
fn single_redis(a: &Args) -> Redis {
    let extra: Vec<&str> = a.redis_args.iter().map(String::as_str).collect();
    Redis::start_with(procs::free_port(), &extra)
}

impl Env {
    fn start(a: &Args, bin: &std::path::Path) -> Self {
        if a.peer.is_some() {
            return Self::start_peer(a);
        }
        let store = if a.cluster {
            Store::Cluster(RedisCluster::start())
        } else {
            Store::Single(single_redis(a))
        };
        let (var, value) = match &store {
            Store::Single(r) => ("MYTHOS_REDIS_URL", r.url()),
            Store::Cluster(c) => ("MYTHOS_REDIS_CLUSTER", c.seeds()),
        };
        let secret: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let prefix = a.broker_prefix.as_deref();
        let start = || Broker::start(bin, prefix, (var, &value), &secret, &a.broker_env);
        let broker = start();
        let brokers = (1..a.nodes.max(1)).map(|_| start()).collect();
        let service = mint(&secret, "bench-service", Role::Service);
        Self {
            target: target(a),
            store,
            brokers,
            broker,
            secret,
            service,
        }
    }

    /// The Socket.IO peer on its own Redis (same AOF settings as ours).
    fn start_peer(a: &Args) -> Self {
        let redis = single_redis(a);
        let broker = Broker::start_peer(&peer_dir(a), &redis.url());
        Self {
            target: Target::SocketIo,
            store: Store::Single(redis),
            brokers: Vec::new(),
            broker,
            // The peer checks no tokens.
            secret: String::new(),
            service: String::new(),
        }
    }

    fn is_peer(&self) -> bool {
        self.target == Target::SocketIo
    }

    fn addr(&self) -> SocketAddr {
        self.broker.addr
    }

    /// Every node, the first one first.
    fn nodes(&self) -> impl Iterator<Item = &Broker> {
        std::iter::once(&self.broker).chain(&self.brokers)
    }

    /// The node of player (or publisher) number `i`: they are spread evenly.
    fn addr_of(&self, i: usize) -> SocketAddr {
        let n = 1 + self.brokers.len();
        match i % n {
            0 => self.broker.addr,
            k => self.brokers[k - 1].addr,
        }
    }

    fn cpu(&self) -> Cpu {
        let brokers: Vec<u32> = self.nodes().map(Broker::pid).collect();
        let redis: Vec<u32> = self.store.servers().iter().map(|r| r.pid()).collect();
        Cpu::sample(&brokers, &redis)
    }

    /// Redis's own account of the commands the run sent (`INFO
    /// commandstats`, summed over a cluster's servers): calls and
    /// microseconds per call, the engine's side of the cost.
    fn redis_commandstats(&self) -> String {
        let mut totals: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
        for r in self.store.servers() {
            for l in r.info("INFO commandstats").lines() {
                let Some((name, rest)) = l.strip_prefix("cmdstat_").and_then(|l| l.split_once(':'))
                else {
                    continue;
                };
                let field = |k: &str| {
                    rest.split(',')
                        .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                        .and_then(|v| v.parse::<f64>().ok())
                };
                if let (Some(calls), Some(usec)) = (field("calls"), field("usec")) {
                    let t = totals.entry(name.to_string()).or_default();
                    t.0 += calls;
                    t.1 += usec;
                }
            }
        }
        if totals.is_empty() {
            return "commandstats unavailable".into();
        }
        let mut rows: Vec<(f64, String)> = totals
            .into_iter()
            .map(|(name, (calls, usec))| {
                let per = if calls > 0.0 { usec / calls } else { 0.0 };
                (
                    usec,
                    format!("{name} {} calls × {per:.1} µs", fmt_int(calls)),
                )
            })
            .collect();
        rows.sort_by(|a, b| b.0.total_cmp(&a.0));
        rows.into_iter()
            .take(6)
            .map(|r| r.1)
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn token(&self, player: &str) -> String {
        if self.is_peer() {
            return String::new();
        }
        mint(&self.secret, player, Role::Player)
    }

    fn subject(&self) -> &'static str {
        subject(self.target)
    }

    /// A workload table's columns: what this sitting measured, the peer's
    /// figures the product owner gave (issue 4), the target, the verdict.
    fn columns(&self) -> [&'static str; 5] {
        let measured = if self.is_peer() { "measured" } else { "ours" };
        ["measure", measured, "peer", "target", "result"]
    }

    /// The server process's name in CPU columns.
    fn server(&self) -> &'static str {
        if self.is_peer() {
            "node"
        } else {
            "broker"
        }
    }
}

// ---------------------------------------------------------------------------
// Fan-out (W1, W1max, and the background traffic of W2-live)
// ---------------------------------------------------------------------------

/// A fan-out run: `rooms` × `size` players, room events on a schedule.
struct FanoutSpec {
    prefix: String,
    rooms: usize,
    size: usize,
    warmup: Duration,
    /// Each step: room events per second, and how long.
    steps: Vec<(f64, Duration)>,
    publishers: usize,
}

/// Counters the clients update as they go (read by the ramp's evaluation).
#[derive(Default)]
struct Live {
    gaps: AtomicU64,
    dups: AtomicU64,
    /// Connections that ended before the run did (closed by the broker, or an error).
    ended: AtomicU64,
    publish_errors: AtomicU64,
}

struct ClientReport {
    check: SeqCheck,
    expected: u64,
    end: Option<String>,
}

struct Fanout {
    spec: FanoutSpec,
    rec: Arc<Recorder>,
    /// Event times (ns since base) of each schedule step's start; the last is the end.
    bounds: Vec<u64>,
    stop_publishing: CancellationToken,
    finishing: CancellationToken,
    pubs: Vec<JoinHandle<()>>,
    clients: Vec<JoinHandle<ClientReport>>,
    room_ok: Arc<Vec<AtomicU64>>,
    expected: Arc<Vec<AtomicU64>>,
    /// Deliveries the broker confirmed, per recorder step (by send time).
    confirmed: Arc<Vec<AtomicU64>>,
    /// Publishes sent, per recorder step.
    sent: Arc<Vec<AtomicU64>>,
    /// The worst lateness of a publish behind its schedule, per recorder step (ns).
    lag: Arc<Vec<AtomicU64>>,
    live: Arc<Live>,
}

/// What a fan-out run saw in total.
struct FanoutTotals {
    check: SeqCheck,
    expected: u64,
    /// Deliveries expected by a client but never received (beyond gaps).
    short: u64,
    ended: u64,
    publish_errors: u64,
    end_reasons: Vec<String>,
    /// Deliveries received by the clients of each node.
    by_node: Vec<u64>,
}

impl FanoutTotals {
    fn lost(&self) -> u64 {
        self.short + self.check.gaps
    }
}

/// The schedule: when event `k` is due (ns since base), or `None` past the end.
struct Schedule {
    /// (first event index, start ns, events per second) per step, and the total.
    steps: Vec<(u64, u64, f64)>,
    total: u64,
}

impl Schedule {
    fn new(start_ns: u64, steps: &[(f64, Duration)]) -> Self {
        let (mut k, mut at, mut out) = (0u64, start_ns, Vec::new());
        for &(rate, d) in steps {
            out.push((k, at, rate));
            k += (rate * d.as_secs_f64()).round() as u64;
            at += d.as_nanos() as u64;
        }
        Self {
            steps: out,
            total: k,
        }
    }

    fn due(&self, k: u64) -> Option<u64> {
        if k >= self.total {
            return None;
        }
        let &(first, start, rate) = self.steps.iter().rev().find(|s| s.0 <= k)?;
        Some(start + ((k - first) as f64 * 1e9 / rate) as u64)
    }
}

fn step_of(bounds: &[u64], t: u64) -> Option<usize> {
    (0..bounds.len().saturating_sub(1)).find(|&i| t >= bounds[i] && t < bounds[i + 1])
}

fn counters(n: usize) -> Arc<Vec<AtomicU64>> {
    Arc::new((0..n).map(|_| AtomicU64::new(0)).collect())
}

impl Fanout {
    /// Joins the players to their rooms, connects them all, then starts the
    /// publishers; the first event is due 200 ms after this returns.
    async fn start(env: &Env, spec: FanoutSpec) -> Self {
        let players: Vec<(String, String)> = (0..spec.rooms * spec.size)
            .map(|i| {
                let room = format!("{}-r{}", spec.prefix, i / spec.size);
                (format!("{}-p{i}", spec.prefix), room)
            })
            .collect();
        if !env.is_peer() {
            join_rooms(env, &players).await;
        }
        // `since` beyond the end: nothing to replay (the join announcements);
        // the welcome (or the cursor) names where this client's checks start.
        let sockets = connect_all(env, &players, Some(1_000_000_000), 128).await;

        let base = Instant::now();
        let start = Duration::from_millis(200);
        let mut lengths = vec![spec.warmup];
        lengths.extend(spec.steps.iter().map(|s| s.1));
        let rec = Arc::new(Recorder::new(base, start, &lengths));
        let mut bounds: Vec<u64> = rec.steps.iter().map(|s| s.start_ns).collect();
        bounds.push(rec.steps.last().map_or(0, |s| s.end_ns));
        let mut sched_steps = vec![(spec.steps.first().map_or(1.0, |s| s.0), spec.warmup)];
        sched_steps.extend(spec.steps.iter().copied());
        let schedule = Arc::new(Schedule::new(start.as_nanos() as u64, &sched_steps));

        let n_steps = rec.steps.len();
        let mut f = Self {
            rec,
            bounds,
            stop_publishing: CancellationToken::new(),
            finishing: CancellationToken::new(),
            pubs: Vec::new(),
            clients: Vec::new(),
            room_ok: counters(spec.rooms),
            expected: Arc::new((0..spec.rooms).map(|_| AtomicU64::new(u64::MAX)).collect()),
            confirmed: counters(n_steps),
            sent: counters(n_steps),
            lag: counters(n_steps),
            live: Arc::new(Live::default()),
            spec,
        };
        for (id, (ws, last)) in sockets.into_iter().enumerate() {
            f.clients.push(tokio::spawn(fanout_client(
                id,
                ws,
                last,
                id / f.spec.size,
                f.rec.clone(),
                f.expected.clone(),
                f.live.clone(),
                f.finishing.clone(),
            )));
        }
        // The peer's events are numbered per room by the generator: one
        // publish per room at a time, so that they reach the peer in order.
        let peer_rooms: Option<Arc<Vec<tokio::sync::Mutex<u64>>>> = env.is_peer().then(|| {
            Arc::new(
                (0..f.spec.rooms)
                    .map(|_| tokio::sync::Mutex::new(0))
                    .collect(),
            )
        });
        for i in 0..f.spec.publishers {
            let http = Http::connect(env.addr_of(i), &env.service)
                .await
                .expect("HTTP connection to the broker");
            f.pubs.push(tokio::spawn(fanout_publisher(
                i as u64,
                f.spec.publishers as u64,
                http,
                schedule.clone(),
                FanoutShared {
                    rec: f.rec.clone(),
                    bounds: f.bounds.clone(),
                    prefix: f.spec.prefix.clone(),
                    rooms: f.spec.rooms,
                    room_ok: f.room_ok.clone(),
                    confirmed: f.confirmed.clone(),
                    sent: f.sent.clone(),
                    lag: f.lag.clone(),
                    live: f.live.clone(),
                    stop: f.stop_publishing.clone(),
                    peer_rooms: peer_rooms.clone(),
                },
            )));
        }
        f
    }

    /// When (as an Instant) recorder step `i` ends.
    fn step_end(&self, i: usize) -> Instant {
        self.rec.base + Duration::from_nanos(self.bounds[i + 1])
    }

    /// Stops publishing (if not done), waits for every client to have every
    /// event of its room (up to 15 s), and totals the checks.
    async fn finish(
        mut self,
        nodes: usize,
    ) -> (FanoutTotals, Arc<Recorder>, Vec<u64>, Vec<u64>, Vec<u64>) {
        for p in std::mem::take(&mut self.pubs) {
            let _ = p.await;
        }
        for (r, e) in self.expected.iter().enumerate() {
            e.store(self.room_ok[r].load(Ordering::SeqCst), Ordering::SeqCst);
        }
        self.finishing.cancel();
        let mut t = FanoutTotals {
            check: SeqCheck::default(),
            expected: 0,
            short: 0,
            ended: self.live.ended.load(Ordering::SeqCst),
            publish_errors: self.live.publish_errors.load(Ordering::SeqCst),
            end_reasons: Vec::new(),
            by_node: vec![0; nodes.max(1)],
        };
        for (i, c) in std::mem::take(&mut self.clients).into_iter().enumerate() {
            let Ok(r) = c.await else { continue };
            t.by_node[i % nodes.max(1)] += r.check.received;
            t.check.add(&r.check);
            t.expected += r.expected;
            t.short += r.expected.saturating_sub(r.check.received);
            if let Some(e) = r.end {
                if t.end_reasons.len() < 5 {
                    t.end_reasons.push(e);
                }
            }
        }
        let load = |v: &Arc<Vec<AtomicU64>>| v.iter().map(|a| a.load(Ordering::SeqCst)).collect();
        let (c, s, l) = (load(&self.confirmed), load(&self.sent), load(&self.lag));
        (t, self.rec, c, s, l)
    }
}

/// What every publisher of one fan-out shares.
struct FanoutShared {
    rec: Arc<Recorder>,
    bounds: Vec<u64>,
    prefix: String,
    rooms: usize,
    room_ok: Arc<Vec<AtomicU64>>,
    confirmed: Arc<Vec<AtomicU64>>,
    sent: Arc<Vec<AtomicU64>>,
    lag: Arc<Vec<AtomicU64>>,
    live: Arc<Live>,
    stop: CancellationToken,
    /// The peer only: each room's counter, locked over its publish.
    peer_rooms: Option<Arc<Vec<tokio::sync::Mutex<u64>>>>,
}

/// Publishes events `i, i + n, i + 2n, ...` each at its due time (or at once
/// when behind); `data.t` is the actual send time.
async fn fanout_publisher(
    i: u64,
    n: u64,
    mut http: Http,
    schedule: Arc<Schedule>,
    s: FanoutShared,
) {
    let mut k = i;
    while let Some(due) = schedule.due(k) {
        let at = tokio::time::Instant::from_std(s.rec.base + Duration::from_nanos(due));
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            _ = s.stop.cancelled() => return,
        }
        if s.stop.is_cancelled() {
            return;
        }
        let room = (k % s.rooms as u64) as usize;
        let mut counter = match &s.peer_rooms {
            Some(rooms) => Some(rooms[room].lock().await),
            None => None,
        };
        let t = s.rec.now_ns();
        let step = step_of(&s.bounds, t);
        if let Some(st) = step_of(&s.bounds, due) {
            s.lag[st].fetch_max(t.saturating_sub(due), Ordering::Relaxed);
        }
        if let Some(st) = step {
            s.sent[st].fetch_add(1, Ordering::Relaxed);
        }
        let room_name = format!("{}-r{room}", s.prefix);
        let result = match counter.as_deref_mut() {
            Some(n) => {
                *n += 1;
                socketio::publish(&mut http, &room_name, t, *n, k).await
            }
            None => {
                let to = format!(r#"{{"room":"{room_name}"}}"#);
                http.publish(event_body(&to, t, k))
                    .await
                    .map(|d| d.len() as u64)
            }
        };
        drop(counter);
        match result {
            Ok(d) => {
                s.room_ok[room].fetch_add(1, Ordering::SeqCst);
                if let Some(st) = step {
                    s.confirmed[st].fetch_add(d, Ordering::Relaxed);
                }
            }
            Err(e) => {
                if s.live.publish_errors.fetch_add(1, Ordering::Relaxed) < 3 {
                    eprintln!("  publish failed: {e}");
                }
            }
        }
        k += n;
    }
}

/// One fan-out player: checks every event's number (our sequence number, or
/// the peer room's counter) and records the latency of benchmark events;
/// ends once it has all of its room's events (known when `finishing` fires),
/// or 15 s after that.
#[allow(clippy::too_many_arguments)]
async fn fanout_client(
    id: usize,
    mut feed: Feed,
    last: u64,
    room: usize,
    rec: Arc<Recorder>,
    expected: Arc<Vec<AtomicU64>>,
    live: Arc<Live>,
    finishing: CancellationToken,
) -> ClientReport {
    let mut check = SeqCheck::starting_at(last);
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut end = None;
    loop {
        if check.received >= expected[room].load(Ordering::SeqCst) {
            break;
        }
        let item = match deadline {
            Some(d) => match tokio::time::timeout_at(d, feed.next_item()).await {
                Ok(m) => m,
                Err(_) => break,
            },
            None => tokio::select! {
                m = feed.next_item() => m,
                _ = finishing.cancelled() => {
                    deadline = Some(tokio::time::Instant::now() + Duration::from_secs(15));
                    continue;
                }
            },
        };
        match item {
            Ok(Item::Event { seq, t }) => {
                let now = rec.now_ns();
                let (g, d) = (check.gaps, check.dups);
                check.see(seq);
                if check.gaps > g {
                    live.gaps.fetch_add(check.gaps - g, Ordering::Relaxed);
                }
                if check.dups > d {
                    live.dups.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(sent) = t {
                    rec.record(id, sent, now);
                }
            }
            Ok(Item::Other) => {}
            Err(e) => {
                live.ended.fetch_add(1, Ordering::Relaxed);
                end = Some(e);
                break;
            }
        }
    }
    let e = expected[room].load(Ordering::SeqCst);
    ClientReport {
        check,
        expected: if e == u64::MAX { 0 } else { e },
        end,
    }
}

/// Puts each `(player, room)` in its room, over 8 connections.
async fn join_rooms(env: &Env, players: &[(String, String)]) {
    let chunks: Vec<Vec<(String, String)>> = players
        .chunks(players.len().div_ceil(8).max(1))
        .map(<[_]>::to_vec)
        .collect();
    let tasks: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let (addr, token) = (env.addr(), env.service.clone());
            tokio::spawn(async move {
                let mut http = Http::connect(addr, &token).await.expect("HTTP connection");
                for (p, r) in chunk {
                    http.join(&r, &p).await.expect("room join");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("join task");
    }
}

/// Opens a feed for each `(player, room)` (`concurrency` handshakes at a
/// time), in order, player `i` on node `i % nodes`; each is open (read its
/// welcome, its `retry:`, or its Socket.IO connect) when this returns, with
/// the number its first event must follow ([`feed::open`]).
async fn connect_all(
    env: &Env,
    players: &[(String, String)],
    since: Option<u64>,
    concurrency: usize,
) -> Vec<(Feed, u64)> {
    let targets: Vec<(SocketAddr, String, String)> = players
        .iter()
        .enumerate()
        .map(|(i, (p, room))| (env.addr_of(i), env.token(p), room.clone()))
        .collect();
    let target = env.target;
    stream::iter(targets)
        .map(|(addr, t, room)| async move { feed::open(target, addr, &t, &room, since).await })
        .buffered(concurrency)
        .map(|r| r.unwrap_or_else(|e| panic!("{target:?} connection: {e}")))
        .collect()
        .await
}

/// One step's outcome.
struct StepResult {
    /// Deliveries per second the schedule asked for.
    target: f64,
    /// Deliveries of events sent in the step that arrived, per second.
    achieved: f64,
    received: u64,
    lat: Lat,
    cpu: CpuUse,
    lag_ms: f64,
    failure: Option<String>,
}

impl StepResult {
    /// Deliveries per CPU-second of the server (our broker, or the peer's
    /// node process).
    fn per_broker_cpu(&self) -> f64 {
        per(self.received, self.cpu.broker)
    }

    /// Deliveries per CPU-second of the server and Redis together.
    fn per_total_cpu(&self) -> f64 {
        per(self.received, self.cpu.broker + self.cpu.redis)
    }
}

fn per(n: u64, cpu_seconds: f64) -> f64 {
    if cpu_seconds > 0.0 {
        n as f64 / cpu_seconds
    } else {
        0.0
    }
}

/// Runs the schedule; evaluates each step 1 s after it ended (while the next
/// runs). With `ramp`, stops at the first step that fails.
async fn run_steps(env: &Env, f: &Fanout, ramp: bool, size: usize) -> Vec<StepResult> {
    let mut out = Vec::new();
    let mut cpu_at = vec![env.cpu()];
    // Step 0 is the warm-up.
    tokio::time::sleep_until(tokio::time::Instant::from_std(
        f.rec.base + Duration::from_nanos(f.bounds[0]),
    ))
    .await;
    cpu_at[0] = env.cpu();
    for i in 0..f.rec.steps.len() {
        tokio::time::sleep_until(tokio::time::Instant::from_std(f.step_end(i))).await;
        cpu_at.push(env.cpu());
        if i == 0 {
            continue;
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(
            f.step_end(i) + Duration::from_secs(1),
        ))
        .await;
        let dur = f.rec.steps[i].end_ns - f.rec.steps[i].start_ns;
        let secs = dur as f64 / 1e9;
        let lat = Lat::of(&f.rec.histogram(i));
        let received = f.rec.steps[i].received.load(Ordering::SeqCst);
        let confirmed = f.confirmed[i].load(Ordering::SeqCst);
        let target = f.spec.steps[i - 1].0 * size as f64;
        let achieved = received as f64 / secs;
        let (gaps, dups, ended, perr) = (
            f.live.gaps.load(Ordering::SeqCst),
            f.live.dups.load(Ordering::SeqCst),
            f.live.ended.load(Ordering::SeqCst),
            f.live.publish_errors.load(Ordering::SeqCst),
        );
        let mut failure = None;
        if gaps + dups + ended + perr > 0 {
            failure = Some(format!(
                "loss: {gaps} gaps, {dups} dups, {ended} connections ended, {perr} publish errors"
            ));
        } else if received < confirmed {
            failure = Some(format!(
                "{} of {confirmed} deliveries not in after 1 s",
                confirmed - received
            ));
        } else if lat.p99 > goal::W1MAX_STOP_P99 {
            failure = Some(format!("p99 {:.1} ms > 100 ms", lat.p99));
        } else if achieved < 0.95 * target {
            failure = Some(format!(
                "generator reached only {:.0}% of the rate",
                100.0 * achieved / target
            ));
        }
        let failed = failure.is_some();
        out.push(StepResult {
            target,
            achieved,
            received,
            lat,
            cpu: cpu_at[i + 1].since(&cpu_at[i]),
            lag_ms: f.lag[i].load(Ordering::SeqCst) as f64 / 1e6,
            failure,
        });
        if ramp {
            let r = out.last().expect("just pushed");
            eprintln!(
                "  step {i}: {:.0}/s target, {:.0}/s achieved, p99 {:.2} ms, CPU {}{}",
                r.target,
                r.achieved,
                r.lat.p99,
                r.cpu.percent(),
                r.failure
                    .as_ref()
                    .map(|f| format!(" — {f}"))
                    .unwrap_or_default()
            );
        }
        if ramp && failed {
            f.stop_publishing.cancel();
            break;
        }
    }
    out
}

fn fmt_int(v: f64) -> String {
    let s = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(v: f64) -> String {
    format!("{v:.2} ms")
}

/// What the summary needs from each workload, and the figures `--json`
/// writes for `bench-compare` (by workload: `w1`, `w1max`, `w3`).
#[derive(Default)]
struct Summary {
    rows: Vec<(String, String, String, String, String)>,
    json: serde_json::Map<String, Value>,
}

impl Summary {
    fn add(&mut self, what: &str, ours: String, peer: &str, target: &str, result: String) {
        self.rows.push((
            what.to_string(),
            ours,
            peer.to_string(),
            target.to_string(),
            result,
        ));
    }
}

// ---------------------------------------------------------------------------
// W1
// ---------------------------------------------------------------------------

async fn w1(env: &Env, a: &Args, report: &mut String, sum: &mut Summary) {
    let spec = FanoutSpec {
        prefix: "w1".into(),
        rooms: a.rooms,
        size: a.room_size,
        warmup: Duration::from_secs(2),
        steps: vec![(a.rate, Duration::from_secs(a.seconds))],
        publishers: a.publishers,
    };
    let (rooms, size) = (spec.rooms, spec.size);
    let f = Fanout::start(env, spec).await;
    let live_before = live_counters(env).await;
    let steps = run_steps(env, &f, false, size).await;
    let (t, _, _, _, _) = f.finish(env.nodes().count()).await;
    let live_after = live_counters(env).await;
    let Some(s) = steps.first() else {
        return;
    };
    let mut tab = Table::new(
        &format!(
            "W1 fan-out ({}): {} players in {rooms} rooms of {size}, {} room events/s for {} s",
            env.subject(),
            rooms * size,
            a.rate,
            a.seconds
        ),
        &env.columns(),
    );
    let lost = t.lost();
    tab.row(vec![
        "deliveries/s (target rate)".into(),
        format!("{} ({})", fmt_int(s.achieved), fmt_int(s.target)),
        "10,000".into(),
        "10,000".into(),
        String::new(),
    ]);
    tab.row(vec![
        "latency p50".into(),
        ms(s.lat.p50),
        ms(goal::W1_P50_PEER),
        "—".into(),
        String::new(),
    ]);
    tab.row(vec![
        "latency p99".into(),
        ms(s.lat.p99),
        ms(goal::W1_P99_PEER),
        "≤ 10 ms".into(),
        verdict(s.lat.p99 <= goal::W1_P99_TARGET),
    ]);
    tab.row(vec![
        "latency max (deliveries measured)".into(),
        format!("{} ({})", ms(s.lat.max), fmt_int(s.lat.n as f64)),
        "—".into(),
        "—".into(),
        String::new(),
    ]);
    tab.row(vec![
        "lost / duplicated".into(),
        format!(
            "{lost} / {} of {} deliveries checked",
            t.check.dups,
            fmt_int(t.expected as f64)
        ),
        "—".into(),
        "0".into(),
        verdict(lost == 0 && t.check.dups == 0 && t.ended == 0 && t.publish_errors == 0),
    ]);
    tab.row(vec![
        format!("CPU {} / Redis / generator", env.server()),
        s.cpu.percent(),
        "—".into(),
        "—".into(),
        String::new(),
    ]);
    tab.row(vec![
        "other processes' CPU meanwhile (noise)".into(),
        format!("{:.2} cores", s.cpu.others_cores()),
        "—".into(),
        "—".into(),
        String::new(),
    ]);
    tab.row(vec![
        format!("deliveries per {} CPU-second", env.server()),
        fmt_int(s.per_broker_cpu()),
        "—".into(),
        "—".into(),
        String::new(),
    ]);
    tab.row(vec![
        format!("deliveries per ({} + Redis) CPU-second", env.server()),
        fmt_int(s.per_total_cpu()),
        "—".into(),
        "—".into(),
        String::new(),
    ]);
    tab.row(vec![
        "publisher lateness (worst)".into(),
        ms(s.lag_ms),
        "—".into(),
        "—".into(),
        String::new(),
    ]);
    report.push_str(&tab.render());
    if !env.is_peer() {
        per_node_live(env, &t, &live_before, &live_after, report);
    }
    let _ = writeln!(
        report,
        "\nRedis time by command (INFO commandstats): {}.",
        env.redis_commandstats()
    );
    if t.ended + t.publish_errors > 0 {
        let _ = writeln!(
            report,
            "\nW1 problems: {} connections ended early, {} publish errors; {:?}",
            t.ended, t.publish_errors, t.end_reasons
        );
    }
    sum.json.insert(
        "w1".into(),
        json!({
            "deliveries_per_s": s.achieved,
            "p50_ms": s.lat.p50,
            "p99_ms": s.lat.p99,
            "max_ms": s.lat.max,
            "server_cpu_pct": 100.0 * s.cpu.broker / s.cpu.wall.max(1e-9),
            "redis_cpu_pct": 100.0 * s.cpu.redis / s.cpu.wall.max(1e-9),
            "per_server_cpu_s": s.per_broker_cpu(),
            "per_server_redis_cpu_s": s.per_total_cpu(),
            "lost": lost,
            "duplicated": t.check.dups,
            "ended": t.ended,
            "publish_errors": t.publish_errors,
            "others_cores": s.cpu.others_cores(),
        }),
    );
    sum.add("W1 p50", ms(s.lat.p50), "2.3 ms", "—", String::new());
    sum.add(
        "W1 p99",
        ms(s.lat.p99),
        "7.3 ms",
        "≤ 10 ms",
        verdict(s.lat.p99 <= goal::W1_P99_TARGET),
    );
    sum.add(
        "W1 lost",
        format!("{lost} of {}", fmt_int(t.expected as f64)),
        "—",
        "0",
        verdict(lost == 0 && t.check.dups == 0 && t.ended == 0),
    );
}

/// Each node's `mythos_live_messages_total` and `mythos_live_bytes_total`:
/// the live announcements it received from Redis so far.
async fn live_counters(env: &Env) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for b in env.nodes() {
        let text = match Http::connect(b.addr, &env.service).await {
            Ok(mut h) => h
                .request("GET", "/metrics", bytes::Bytes::new())
                .await
                .map(|(_, body)| String::from_utf8_lossy(&body).into_owned())
                .unwrap_or_default(),
            Err(_) => String::new(),
        };
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
                .unwrap_or(0.0)
        };
        out.push((
            value("mythos_live_messages_total"),
            value("mythos_live_bytes_total"),
        ));
    }
    out
}

/// Issue 10's table: what each node received from Redis's pub/sub over the
/// run, against the deliveries its own clients got (its share of the load).
fn per_node_live(
    env: &Env,
    t: &FanoutTotals,
    before: &[(f64, f64)],
    after: &[(f64, f64)],
    report: &mut String,
) {
    let nodes = env.nodes().count();
    let delta: Vec<(f64, f64)> = after
        .iter()
        .zip(before)
        .map(|(a, b)| (a.0 - b.0, a.1 - b.1))
        .collect();
    let (all_msgs, all_bytes) = delta
        .iter()
        .fold((0.0, 0.0), |acc, d| (acc.0 + d.0, acc.1 + d.1));
    let all_own: u64 = t.by_node.iter().sum();
    let mut tab = Table::new(
        &format!("Live announcements received per node ({nodes} node(s), players spread evenly)"),
        &[
            "node",
            "own deliveries",
            "pub/sub messages",
            "pub/sub bytes",
            "messages ÷ own deliveries",
            "bytes ÷ own share of all bytes",
        ],
    );
    for (i, d) in delta.iter().enumerate() {
        let own = t.by_node.get(i).copied().unwrap_or(0) as f64;
        let share = if all_own > 0 {
            all_bytes * own / all_own as f64
        } else {
            0.0
        };
        tab.row(vec![
            (i + 1).to_string(),
            fmt_int(own),
            fmt_int(d.0),
            fmt_int(d.1),
            if own > 0.0 {
                format!("{:.3}", d.0 / own)
            } else {
                "—".into()
            },
            if share > 0.0 {
                format!("{:.3}", d.1 / share)
            } else {
                "—".into()
            },
        ]);
    }
    report.push_str(&tab.render());
    let _ = writeln!(
        report,
        "\nAll nodes together: {} messages, {} bytes for {} deliveries.",
        fmt_int(all_msgs),
        fmt_int(all_bytes),
        fmt_int(all_own as f64)
    );
}

// ---------------------------------------------------------------------------
// W1max
// ---------------------------------------------------------------------------

/// The highest sustained step of one W1max run: deliveries/s, per server
/// CPU-second and per (server + Redis) CPU-second (None: no step passed).
type W1maxRun = Option<(f64, f64, f64)>;

async fn w1max(env: &Env, a: &Args, report: &mut String) -> W1maxRun {
    let steps: Vec<(f64, Duration)> = (0..a.max_steps)
        .map(|i| {
            (
                a.rate * a.factor.powi(i as i32),
                Duration::from_secs(a.step_secs),
            )
        })
        .collect();
    let spec = FanoutSpec {
        prefix: "w1max".into(),
        rooms: a.rooms,
        size: a.room_size,
        warmup: Duration::from_secs(2),
        steps,
        publishers: a.publishers,
    };
    let size = spec.size;
    let f = Fanout::start(env, spec).await;
    let results = run_steps(env, &f, true, size).await;
    f.stop_publishing.cancel();
    let (t, _, _, _, _) = f.finish(env.nodes().count()).await;
    let mut tab = Table::new(
        &format!(
            "W1max ({}): rate ×{} every {} s from {} deliveries/s (stop: p99 > 100 ms, loss, or rate not reached)",
            env.subject(),
            a.factor,
            a.step_secs,
            fmt_int(a.rate * a.room_size as f64)
        ),
        &[
            "step",
            "target/s",
            "delivered/s",
            "p50",
            "p99",
            "max",
            &format!("CPU {} / Redis / gen", env.server()),
            "others",
            &format!("per {} CPU-s", env.server()),
            &format!("per {}+Redis CPU-s", env.server()),
            "publisher late",
            "result",
        ],
    );
    for (i, s) in results.iter().enumerate() {
        tab.row(vec![
            (i + 1).to_string(),
            fmt_int(s.target),
            fmt_int(s.achieved),
            ms(s.lat.p50),
            ms(s.lat.p99),
            ms(s.lat.max),
            s.cpu.percent(),
            format!("{:.2}", s.cpu.others_cores()),
            fmt_int(s.per_broker_cpu()),
            fmt_int(s.per_total_cpu()),
            ms(s.lag_ms),
            s.failure.clone().unwrap_or_else(|| "ok".into()),
        ]);
    }
    report.push_str(&tab.render());
    let best = results
        .iter()
        .filter(|s| s.failure.is_none())
        .max_by(|x, y| x.achieved.total_cmp(&y.achieved));
    let _ = writeln!(
        report,
        "\nAfter the ramp: {} of {} deliveries received, {} lost, {} duplicated, {} connections ended early{}.",
        fmt_int(t.check.received as f64),
        fmt_int(t.expected as f64),
        t.lost(),
        t.check.dups,
        t.ended,
        if t.end_reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", t.end_reasons.join("; "))
        }
    );
    let _ = writeln!(
        report,
        "Redis time by command over the whole ramp (INFO commandstats): {}.",
        env.redis_commandstats()
    );
    // With closed-loop publishers, a saturated step still delivers at p99 well
    // under 100 ms (the queue is bounded by the requests in flight): report
    // the most any step delivered without loss or p99 > 100 ms as well.
    if let Some(m) = results
        .iter()
        .filter(|s| {
            s.failure
                .as_deref()
                .is_none_or(|f| f.starts_with("generator reached"))
        })
        .max_by(|x, y| x.achieved.total_cmp(&y.achieved))
    {
        let _ = writeln!(
            report,
            "Most delivered by any step at p99 ≤ 100 ms without loss (rate reached or not): {} deliveries/s, {} per {} CPU-second.",
            fmt_int(m.achieved),
            fmt_int(m.per_broker_cpu()),
            env.server()
        );
    }
    match best {
        Some(b) => {
            let (per_cpu, per_total) = (b.per_broker_cpu(), b.per_total_cpu());
            let srv = env.server();
            let _ = writeln!(
                report,
                "Highest sustained step: {} deliveries/s, {} per {srv} CPU-second ({} per {srv}+Redis CPU-second); CPU {srv} / Redis / generator {}.",
                fmt_int(b.achieved),
                fmt_int(per_cpu),
                fmt_int(per_total),
                b.cpu.percent()
            );
            Some((b.achieved, per_cpu, per_total))
        }
        None => {
            report.push_str("No step passed.\n");
            None
        }
    }
}

/// The summary rows of W1max: the median over the runs of each figure (a run
/// where no step passed counts as 0).
fn w1max_summary(runs: &[W1maxRun], report: &mut String, sum: &mut Summary) {
    if runs.is_empty() {
        return;
    }
    let median = |pick: fn(&(f64, f64, f64)) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(|r| r.as_ref().map_or(0.0, pick)).collect();
        v.sort_by(f64::total_cmp);
        let all = v.iter().map(|x| fmt_int(*x)).collect::<Vec<_>>().join(", ");
        (v[v.len() / 2], all)
    };
    let (rate, rates) = median(|r| r.0);
    let (per_cpu, per_cpus) = median(|r| r.1);
    let (per_total, per_totals) = median(|r| r.2);
    let _ = writeln!(
        report,
        "\nW1max over {} runs (sorted): deliveries/s {rates}; per server CPU-second {per_cpus}; per server+Redis CPU-second {per_totals}. Median: {}, {} and {}.",
        runs.len(),
        fmt_int(rate),
        fmt_int(per_cpu),
        fmt_int(per_total)
    );
    sum.json.insert(
        "w1max".into(),
        json!({
            "runs": runs.iter().map(|r| r.map_or(0.0, |r| r.0)).collect::<Vec<f64>>(),
            "median_deliveries_per_s": rate,
            "median_per_server_cpu_s": per_cpu,
            "median_per_server_redis_cpu_s": per_total,
        }),
    );
    let label = if runs.len() > 1 {
        format!(" (median of {})", runs.len())
    } else {
        String::new()
    };
    sum.add(
        &format!("W1max deliveries/s{label}"),
        fmt_int(rate),
        "37,000",
        "≥ 37,000",
        verdict(rate >= goal::W1MAX_TARGET),
    );
    sum.add(
        &format!("W1max deliveries per broker CPU-s{label}"),
        fmt_int(per_cpu),
        "~35,000 (server)",
        "≥ 70,000",
        verdict(per_cpu >= goal::W1MAX_TARGET_PER_CPU),
    );
}

// ---------------------------------------------------------------------------
// W2
// ---------------------------------------------------------------------------

/// Publishes `n` events to `players` (each event to all of them), over 8
/// connections; returns the highest sequence number confirmed per player.
async fn burst(env: &Env, players: &[String], n: u64, tag: &str) -> Vec<u64> {
    let to = serde_json::json!({ "players": players }).to_string();
    let conns = 8u64;
    let tasks: Vec<JoinHandle<Vec<(String, u64)>>> = (0..conns)
        .map(|c| {
            let (addr, token, to, tag) =
                (env.addr(), env.service.clone(), to.clone(), tag.to_string());
            tokio::spawn(async move {
                let mut http = Http::connect(addr, &token).await.expect("HTTP connection");
                let mut last = Vec::new();
                let mut k = c;
                while k < n {
                    let body = bytes::Bytes::from(format!(
                        r#"{{"to":{to},"event_type":"{tag}","data":{{"k":{k}}}}}"#
                    ));
                    last = http.publish(body).await.expect("burst publish");
                    k += conns;
                }
                last
            })
        })
        .collect();
    let mut max = vec![0u64; players.len()];
    for t in tasks {
        for (p, seq) in t.await.expect("burst task") {
            if let Some(i) = players.iter().position(|q| *q == p) {
                max[i] = max[i].max(seq);
            }
        }
    }
    max
}

/// Reads events off `ws` into `check` until its last sequence number reaches
/// `until` (or `limit` passes); returns when it got there.
async fn read_until(
    ws: &mut Ws,
    check: &mut SeqCheck,
    until: u64,
    limit: Duration,
) -> Option<Instant> {
    let deadline = tokio::time::Instant::now() + limit;
    while check.last < until {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                if let Some((seq, _)) = scan_event(&t) {
                    check.see(seq);
                }
            }
            Ok(Some(Ok(_))) => {}
            _ => return None,
        }
    }
    Some(Instant::now())
}

async fn w2(env: &Env, a: &Args, report: &mut String, sum: &mut Summary) {
    let mut tab = Table::new(
        &format!(
            "W2 resume: reconnect with since=<last seen> after N events while away ({} reconnections each)",
            a.reps
        ),
        &["backlog", "p50", "p99", "max", "events checked", "lost / dup", "peer p50", "target p50", "result"],
    );
    for (n, peer, target) in [
        (1_000u64, goal::W2_1K_PEER, goal::W2_1K_TARGET),
        (10_000, goal::W2_10K_PEER, goal::W2_10K_TARGET),
    ] {
        let players: Vec<String> = (0..a.reps).map(|i| format!("w2-{n}-{i}")).collect();
        // Each was online (read its welcome), then went away.
        let mut seen = Vec::new();
        for p in &players {
            let (ws, last) = ws_connect(env.addr(), &env.token(p), None)
                .await
                .expect("WebSocket connection");
            drop(ws);
            seen.push(last);
        }
        let tops = burst(env, &players, n, "backlog").await;
        let mut times = Vec::new();
        let mut total = SeqCheck::default();
        let mut short = 0u64;
        for ((p, &last), &top) in players.iter().zip(&seen).zip(&tops) {
            let token = env.token(p);
            let start = Instant::now();
            let (mut ws, _) = ws_connect(env.addr(), &token, Some(last))
                .await
                .expect("WebSocket reconnection");
            let mut check = SeqCheck::starting_at(last);
            match read_until(&mut ws, &mut check, top, Duration::from_secs(30)).await {
                Some(done) => times.push(done - start),
                None => short += top - check.last,
            }
            total.add(&check);
        }
        let lat = Lat::of_samples(&times);
        let lost = short + total.gaps;
        let ok = lat.p50 <= target && lost == 0 && total.dups == 0 && times.len() == a.reps;
        tab.row(vec![
            fmt_int(n as f64),
            ms(lat.p50),
            ms(lat.p99),
            ms(lat.max),
            fmt_int(total.received as f64),
            format!("{lost} / {}", total.dups),
            ms(peer),
            format!("≤ {target} ms"),
            verdict(ok),
        ]);
        sum.add(
            &format!("W2 resume {} p50", fmt_int(n as f64)),
            ms(lat.p50),
            &ms(peer),
            &format!("≤ {target} ms"),
            verdict(ok),
        );
    }
    report.push_str(&tab.render());
    w2_live(env, a, report, sum).await;
}

/// Live traffic to one player, 200 events/s, until stopped; the highest
/// sequence number the broker confirmed is kept in `top`.
fn live_publisher(
    env: &Env,
    player: &str,
    top: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<u64> {
    let (addr, token) = (env.addr(), env.service.clone());
    let to = format!(r#"{{"player":"{player}"}}"#);
    tokio::spawn(async move {
        let mut http = Http::connect(addr, &token).await.expect("HTTP connection");
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        let mut sent = 0u64;
        while !stop.load(Ordering::SeqCst) {
            tick.tick().await;
            let body = bytes::Bytes::from(format!(
                r#"{{"to":{to},"event_type":"live","data":{{"k":{sent}}}}}"#
            ));
            for (_, seq) in http.publish(body).await.expect("live publish") {
                top.fetch_max(seq, Ordering::SeqCst);
            }
            sent += 1;
        }
        sent
    })
}

/// W2 with live traffic: 200 background players get room traffic while each
/// resuming player drops its socket mid-stream, misses a 1,000-event burst
/// plus live events, and resumes with live events still arriving.
async fn w2_live(env: &Env, a: &Args, report: &mut String, sum: &mut Summary) {
    let reps = a.reps;
    // ~1.6 s per reconnection, plus margin.
    let secs = (reps as u64 * 16).div_ceil(10) + 4;
    let spec = FanoutSpec {
        prefix: "w2bg".into(),
        rooms: 4,
        size: 50,
        warmup: Duration::from_secs(1),
        steps: vec![(100.0, Duration::from_secs(secs))],
        publishers: 4,
    };
    let bg = Fanout::start(env, spec).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut total = SeqCheck::default();
    let mut short = 0u64;
    let mut catchup = Vec::new();
    for i in 0..reps {
        let p = format!("w2live-{i}");
        let token = env.token(&p);
        let top = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let live = live_publisher(env, &p, top.clone(), stop.clone());
        // Online for 300 ms of live traffic, then the socket drops.
        // A fresh player has acknowledged nothing: the feed starts at 1.
        let (mut ws, _) = ws_connect(env.addr(), &token, None)
            .await
            .expect("WebSocket connection");
        let mut check = SeqCheck::starting_at(0);
        let _ = read_until(&mut ws, &mut check, u64::MAX, Duration::from_millis(300)).await;
        drop(ws);
        // Away: a burst of 1,000 while live traffic goes on.
        let burst_top = burst(env, std::slice::from_ref(&p), 1_000, "backlog")
            .await
            .first()
            .copied()
            .unwrap_or(0);
        let start = Instant::now();
        let (mut ws, _) = ws_connect(env.addr(), &token, Some(check.last))
            .await
            .expect("WebSocket reconnection");
        let mut again = SeqCheck::starting_at(check.last);
        match read_until(&mut ws, &mut again, burst_top, Duration::from_secs(30)).await {
            Some(t) => catchup.push(t - start),
            None => eprintln!("  W2-live: {p} did not catch up"),
        }
        // Live for another 300 ms, then the publisher stops: read to its last.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
        let _ = live.await;
        let fin = top.load(Ordering::SeqCst).max(burst_top);
        let _ = read_until(&mut ws, &mut again, fin, Duration::from_secs(10)).await;
        // Anything after the last confirmed event would be a duplicate or stray.
        let _ = read_until(&mut ws, &mut again, u64::MAX, Duration::from_millis(100)).await;
        short += fin.saturating_sub(again.last);
        check.add(&again);
        total.add(&check);
    }
    bg.stop_publishing.cancel();
    let (t, _, _, _, _) = bg.finish(env.nodes().count()).await;
    let lat = Lat::of_samples(&catchup);
    let lost = short + total.gaps + t.lost();
    let dups = total.dups + t.check.dups;
    let checked = total.received + t.check.received;
    let mut tab = Table::new(
        &format!(
            "W2 live: {reps} players drop and resume under live traffic (200/s each) while 200 background players get 5,000 deliveries/s"
        ),
        &["measure", "ours", "peer", "target", "result"],
    );
    tab.row(vec![
        "events checked (resuming + background)".into(),
        format!(
            "{} ({} + {})",
            fmt_int(checked as f64),
            fmt_int(total.received as f64),
            fmt_int(t.check.received as f64)
        ),
        "141,519".into(),
        "—".into(),
        String::new(),
    ]);
    tab.row(vec![
        "lost / duplicated".into(),
        format!("{lost} / {dups}"),
        "11 lost".into(),
        "0 / 0".into(),
        verdict(lost == 0 && dups == 0 && t.ended == 0),
    ]);
    tab.row(vec![
        "catch-up past the 1,000-event burst p50 / max".into(),
        format!("{} / {}", ms(lat.p50), ms(lat.max)),
        "—".into(),
        "—".into(),
        String::new(),
    ]);
    report.push_str(&tab.render());
    sum.add(
        "W2 live lost / dup",
        format!("{lost} / {dups} of {}", fmt_int(checked as f64)),
        "11 of 141,519",
        "0",
        verdict(lost == 0 && dups == 0 && t.ended == 0),
    );
}

// ---------------------------------------------------------------------------
// W3
// ---------------------------------------------------------------------------

async fn w3(env: &Env, a: &Args, report: &mut String, sum: &mut Summary) {
    let n = a.connections;
    let limit = procs::open_files_limit();
    if limit < n as u64 + 500 {
        let _ = writeln!(
            report,
            "\nW3 skipped: the open-files limit is {limit}; run `ulimit -n 65536` first (scripts/bench does)."
        );
        sum.add(
            "W3 RSS per connection",
            "skipped".into(),
            "15.5 KiB",
            "≤ 8 KiB",
            verdict(false),
        );
        return;
    }
    let pid = env.broker.pid();
    // Warm up a little: the engine's connections, the allocator's arenas,
    // lazy statics. Few, so that memory they free is not reused by the
    // measured connections (which would hide part of their cost).
    // No room: an idle connection of ours is in none either.
    let warm: Vec<(String, String)> = (0..20)
        .map(|i| (format!("w3warm-{i}"), String::new()))
        .collect();
    drop(connect_all(env, &warm, None, 16).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss0 = procs::rss_kib(pid);
    let gen0 = procs::rss_kib(std::process::id());
    let players: Vec<(String, String)> =
        (0..n).map(|i| (format!("w3-{i}"), String::new())).collect();
    let t0 = Instant::now();
    let sockets = connect_all(env, &players, None, 128).await;
    let took = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = procs::rss_kib(pid);
    let gen1 = procs::rss_kib(std::process::id());
    let per = (rss1.saturating_sub(rss0)) as f64 / n as f64;
    drop(sockets);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss2 = procs::rss_kib(pid);

    let mut tab = Table::new(
        &format!(
            "W3 idle ({}): {} connections (distinct players, each open: welcome, `retry:` or Socket.IO connect read)",
            env.subject(),
            fmt_int(n as f64)
        ),
        &env.columns(),
    );
    tab.row(vec![
        format!("{} RSS delta per connection", env.server()),
        format!("{per:.1} KiB"),
        "15.5 KiB".into(),
        "≤ 8 KiB".into(),
        verdict(per <= goal::W3_TARGET_KIB),
    ]);
    tab.row(vec![
        format!("{} RSS before / with / after closing", env.server()),
        format!(
            "{:.1} / {:.1} / {:.1} MiB",
            rss0 as f64 / 1024.0,
            rss1 as f64 / 1024.0,
            rss2 as f64 / 1024.0
        ),
        "—".into(),
        "—".into(),
        String::new(),
    ]);
    tab.row(vec![
        "connect rate (handshake + welcome)".into(),
        format!("{}/s", fmt_int(n as f64 / took.as_secs_f64())),
        "—".into(),
        "—".into(),
        String::new(),
    ]);
    tab.row(vec![
        "generator RSS per connection".into(),
        format!("{:.1} KiB", gen1.saturating_sub(gen0) as f64 / n as f64),
        "—".into(),
        "—".into(),
        String::new(),
    ]);
    report.push_str(&tab.render());
    let _ = writeln!(
        report,
        "\nWhere it goes: a heap profile per connection is in docs/benchmarks.md (`--connections 1000 --broker-prefix \"valgrind --tool=massif --vgdb=yes\"`, then `vgdb --pid <pid> detailed_snapshot <file>` while the connections are open)."
    );
    sum.json.insert(
        "w3".into(),
        json!({
            "connections": n,
            "kib_per_connection": per,
            "rss_before_kib": rss0,
            "rss_with_kib": rss1,
        }),
    );
    sum.add(
        "W3 RSS per connection",
        format!("{per:.1} KiB"),
        "15.5 KiB",
        "≤ 8 KiB",
        verdict(per <= goal::W3_TARGET_KIB),
    );
}

// ---------------------------------------------------------------------------

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

fn broker_bin(a: &Args) -> PathBuf {
    a.broker_bin.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("mythos-broker")))
            .unwrap_or_else(|| PathBuf::from("target/release/mythos-broker"))
    })
}

/// What is measured, for titles and the comparison.
fn subject(t: Target) -> &'static str {
    match t {
        Target::Ws => "mythos over WebSocket",
        Target::Sse => "mythos over SSE",
        Target::SocketIo => "Socket.IO peer",
    }
}

/// What the players connect to under these options.
fn target(a: &Args) -> Target {
    match (a.peer, a.transport) {
        (Some(Peer::Socketio), _) => Target::SocketIo,
        (None, Transport::Ws) => Target::Ws,
        (None, Transport::Sse) => Target::Sse,
    }
}

/// The Socket.IO peer's directory: `--peer-dir`, else `bench/socketio-peer`
/// of this source tree.
fn peer_dir(a: &Args) -> PathBuf {
    a.peer_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("socketio-peer"))
}

/// The installed versions the peer runs on: Node and its three packages.
fn peer_versions(a: &Args) -> String {
    let dir = peer_dir(a);
    let version = |pkg: &str| -> String {
        std::fs::read_to_string(dir.join("node_modules").join(pkg).join("package.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["version"].as_str().map(str::to_string))
            .unwrap_or_else(|| "not installed".into())
    };
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "no node".into());
    format!(
        "Node {node}, socket.io {}, @socket.io/redis-streams-adapter {}, redis (npm) {}",
        version("socket.io"),
        version("@socket.io/redis-streams-adapter"),
        version("redis")
    )
}

/// The workloads to run, in order (`all` expanded; W1max `--runs` times),
/// or why not.
fn workload_list(a: &Args) -> Result<Vec<Workload>, String> {
    let ws_ours = target(a) == Target::Ws;
    let mut list = Vec::new();
    for &w in &a.workloads {
        match w {
            Workload::All if ws_ours => {
                list.extend([Workload::W1, Workload::W1max, Workload::W2, Workload::W3])
            }
            Workload::All => list.extend([Workload::W1, Workload::W1max, Workload::W3]),
            Workload::W2 if !ws_ours => {
                return Err("W2 (resume) is measured over our WebSocket only".into())
            }
            w => list.push(w),
        }
    }
    // W1max runs `--runs` times, each on a fresh Redis and broker.
    Ok(list
        .into_iter()
        .flat_map(|w| {
            let n = if w == Workload::W1max {
                a.runs.max(1)
            } else {
                1
            };
            std::iter::repeat_n(w, n)
        })
        .collect())
}

/// Writes the figures of this sitting for `bench-compare`.
fn write_json(
    a: &Args,
    bin: &std::path::Path,
    figures: serde_json::Map<String, Value>,
    path: &std::path::Path,
) {
    let t = target(a);
    let mut doc = json!({
        "subject": subject(t),
        "peer": t == Target::SocketIo,
        "server": if t == Target::SocketIo { peer_versions(a) } else { bin.display().to_string() },
        "machine": machine_note(),
    });
    if let Value::Object(m) = &mut doc {
        m.extend(figures);
    }
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    if let Err(e) = std::fs::write(path, text) {
        eprintln!("bench-delivery: cannot write {}: {e}", path.display());
    }
}

fn machine_note() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let redis = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{cores} cores ({cpu}); {redis}")
}

fn main() -> ExitCode {
    let a = Args::parse();
    let bin = broker_bin(&a);
    if a.peer.is_none() && !bin.exists() {
        eprintln!(
            "bench-delivery: {} not found; build it: cargo build --release",
            bin.display()
        );
        return ExitCode::from(2);
    }
    if a.cluster && !a.redis_args.is_empty() {
        eprintln!("bench-delivery: --redis-arg applies to one Redis, not to --cluster");
        return ExitCode::from(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut report = format!(
        "Machine: {}. Broker, Redis (AOF everysec) and this generator share it.\n",
        machine_note()
    );
    let mut sum = Summary::default();
    let list = match workload_list(&a) {
        Ok(list) => list,
        Err(e) => {
            eprintln!("bench-delivery: {e}");
            return ExitCode::from(2);
        }
    };
    let mut w1max_runs: Vec<W1maxRun> = Vec::new();
    let started = Instant::now();
    for w in list {
        let quiet = if a.quiet_wait > 0 {
            procs::wait_for_quiet(a.max_load, Duration::from_secs(a.quiet_wait))
        } else {
            Quiet {
                load1: procs::loadavg1(),
                busy: 0.0,
                waited: Duration::ZERO,
                quiet: true,
            }
        };
        let run = match w {
            Workload::W1max if a.runs > 1 => format!(" run {} of {}", w1max_runs.len() + 1, a.runs),
            _ => String::new(),
        };
        eprintln!("== {w:?}{run} ({quiet})");
        let env = Env::start(&a, &bin);
        let mut part = String::new();
        if env.is_peer() {
            let _ = writeln!(
                part,
                "\n_Topology: the Socket.IO peer ({}; one node process) on one Redis (AOF everysec{})._",
                peer_versions(&a),
                redis_note(&a)
            );
        } else {
            let _ = writeln!(
                part,
                "\n_Topology: {} broker node(s) ({}) on {}{}._",
                a.nodes,
                env.subject(),
                if a.cluster {
                    "a Redis Cluster (3 masters + 3 replicas, AOF everysec)".to_string()
                } else {
                    format!("one Redis (AOF everysec{})", redis_note(&a))
                },
                if a.broker_env.is_empty() {
                    String::new()
                } else {
                    format!("; broker settings {:?}", a.broker_env)
                }
            );
        }
        let t = Instant::now();
        rt.block_on(async {
            match w {
                Workload::W1 => w1(&env, &a, &mut part, &mut sum).await,
                Workload::W1max => {
                    let _ = writeln!(part, "\n#### W1max{run}");
                    w1max_runs.push(w1max(&env, &a, &mut part).await);
                    if w1max_runs.len() == a.runs.max(1) {
                        w1max_summary(&w1max_runs, &mut part, &mut sum);
                    }
                }
                Workload::W2 => w2(&env, &a, &mut part, &mut sum).await,
                Workload::W3 => w3(&env, &a, &mut part, &mut sum).await,
                Workload::All => {}
            }
        });
        let warnings: usize = env.nodes().map(Broker::warnings).sum();
        let _ = writeln!(
            part,
            "\n({w:?}: {:.0} s; before it: {quiet}; load avg after: {:.2}; broker warnings logged: {warnings})",
            t.elapsed().as_secs_f64(),
            procs::loadavg1(),
        );
        if warnings > 0 {
            let _ = writeln!(
                part,
                "broker log tail:\n```\n{}\n```",
                env.broker.log_tail()
            );
        }
        print!("{part}");
        report.push_str(&part);
        drop(env);
    }
    if sum.rows.len() > 1 {
        let mut tab = Table::new(
            "Summary (issue 4)",
            &[
                "measure",
                "ours",
                "peer (Socket.IO 4.8)",
                "target",
                "result",
            ],
        );
        for (w, o, p, t, r) in &sum.rows {
            tab.row(vec![w.clone(), o.clone(), p.clone(), t.clone(), r.clone()]);
        }
        let s = tab.render();
        print!("{s}");
        report.push_str(&s);
    }
    let _ = writeln!(report, "\nTotal: {:.0} s", started.elapsed().as_secs_f64());
    if let Some(path) = &a.json {
        write_json(&a, &bin, sum.json, path);
    }
    if let Some(path) = &a.out {
        if let Err(e) = std::fs::write(path, &report) {
            eprintln!("bench-delivery: cannot write {}: {e}", path.display());
        }
    }
    ExitCode::SUCCESS
}
