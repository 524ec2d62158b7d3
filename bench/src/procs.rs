//! The processes a benchmark owns — its `redis-server` (AOF on) and its broker
//! — and readings of CPU time and resident memory from `/proc`.
//!
//! Owns: starting both on free loopback ports (never 6379) in a throw-away
//! directory, waiting until they answer, killing them on drop; `/proc/<pid>`
//! parsing; the "is the machine quiet" gate. Must not touch: any process or
//! Redis it did not start.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (never Redis's default 6379).
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port on 127.0.0.1");
        if port != 6379 {
            return port;
        }
    }
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// A fresh directory under the system temp dir, removed by its owner.
pub fn temp_dir(what: &str) -> PathBuf {
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("mythos-bench-{what}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}

fn wait_until(timeout: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `request` on a fresh connection and returns what comes back (for
/// readiness probes only).
fn probe(addr: SocketAddr, request: &[u8]) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(request).ok()?;
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A `redis-server` with `--appendonly yes --appendfsync everysec` (unless
/// [`Redis::start_with`]'s arguments say otherwise), killed (and its
/// directory removed) on drop.
pub struct Redis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    /// On `port`, with `extra` arguments.
    pub fn start_with(port: u16, extra: &[&str]) -> Self {
        let dir = temp_dir("redis");
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (apt-get install redis-server)");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_until(Duration::from_secs(10), "redis-server to answer", || {
            probe(addr, b"PING\r\n").is_some_and(|r| r.starts_with("+PONG"))
        });
        Self { child, port, dir }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    #[allow(dead_code)] // bench-engine's and bench-replay's
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its throw-away directory (removed with it).
    #[allow(dead_code)] // bench-replay's
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The text of an `INFO`-like command (words split on spaces), or "".
    pub fn info(&self, command: &str) -> String {
        let mut words = command.split_whitespace();
        let Some(first) = words.next() else {
            return String::new();
        };
        let mut cmd = redis::cmd(first);
        for w in words {
            cmd.arg(w);
        }
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| cmd.query::<String>(&mut c))
            .unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of three masters with one replica each (every node with
/// the same AOF as [`Redis`]), killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    pub fn start() -> Self {
        // The cluster bus listens on port + 10000.
        let nodes: Vec<Redis> = (0..6)
            .map(|_| {
                Redis::start_with(
                    free_port_below(55_000),
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-node-timeout",
                        "2000",
                        "--repl-diskless-sync-delay",
                        "0",
                    ],
                )
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = create
            .output()
            .expect("run redis-cli --cluster create (it comes with redis-server)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = Self { nodes };
        wait_until(
            Duration::from_secs(60),
            "the cluster to be ok and in sync",
            || {
                c.nodes.iter().all(|n| {
                    let cluster = n.info("CLUSTER INFO");
                    let repl = n.info("INFO replication");
                    cluster.contains("cluster_state:ok")
                        && (repl.contains("role:master") || repl.contains("master_link_status:up"))
                })
            },
        );
        c
    }

    /// `MYTHOS_REDIS_CLUSTER`: every node's URL.
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(Redis::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A free TCP port on 127.0.0.1 below `limit`.
fn free_port_below(limit: u16) -> u16 {
    loop {
        let p = free_port();
        if p < limit {
            return p;
        }
    }
}

/// The server process under test, killed on drop: our broker
/// (`mythos-broker --bind 127.0.0.1:<free>`), or the Socket.IO peer's node
/// process ([`Broker::start_peer`]).
pub struct Broker {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    dir: PathBuf,
}

impl Broker {
    /// Starts `bin` (under `prefix`, a command split on spaces, if given)
    /// against `store` (`MYTHOS_REDIS_URL` or `MYTHOS_REDIS_CLUSTER` and its
    /// value) with `secret`, plus `env` overrides.
    pub fn start(
        bin: &Path,
        prefix: Option<&str>,
        store: (&str, &str),
        secret: &str,
        env: &[(String, String)],
    ) -> Self {
        let dir = temp_dir("broker");
        let log = dir.join("broker.log");
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut words = prefix.unwrap_or("").split_whitespace();
        let mut cmd = match words.next() {
            Some(first) => {
                let mut c = Command::new(first);
                c.args(words).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("--bind")
            .arg(addr.to_string())
            .env(store.0, store.1)
            .env("MYTHOS_JWT_SECRET", secret)
            .env("MYTHOS_LOG", "warn")
            .env_remove("MYTHOS_DEV")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create the broker log"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "start {} ({e}); build it first: cargo build --release",
                bin.display()
            )
        });
        Self::wait_healthy(child, addr, log, dir, "/healthz")
    }

    /// Starts the Socket.IO peer (`node server.js` in `dir`, which must hold
    /// `node_modules`: `npm ci` there) against the Redis at `redis_url`; it
    /// then stands where the broker does (pid, address, log).
    pub fn start_peer(peer_dir: &Path, redis_url: &str) -> Self {
        let dir = temp_dir("peer");
        let log = dir.join("peer.log");
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        assert!(
            peer_dir.join("node_modules").is_dir(),
            "{}/node_modules is missing: run `npm ci` there first (scripts/bench-peer does)",
            peer_dir.display()
        );
        let child = Command::new("node")
            .arg("server.js")
            .current_dir(peer_dir)
            .env("PORT", addr.port().to_string())
            .env("REDIS_URL", redis_url)
            .env("NODE_ENV", "production")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create the peer log"))
            .spawn()
            .unwrap_or_else(|e| panic!("start node ({e}); Node 20 or later is needed"));
        Self::wait_healthy(child, addr, log, dir, "/stats")
    }

    /// Waits (up to 60 s) until `GET <path>` answers 200; panics with the
    /// log's end if the process exits or never answers.
    fn wait_healthy(
        child: Child,
        addr: SocketAddr,
        log: PathBuf,
        dir: PathBuf,
        path: &str,
    ) -> Self {
        let mut b = Self {
            child,
            addr,
            log,
            dir,
        };
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if probe(addr, request.as_bytes()).is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
                break;
            }
            if let Ok(Some(status)) = b.child.try_wait() {
                panic!("the server exited ({status}): {}", b.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "the server did not answer {path}: {}",
                b.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        b
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The end of the server's stderr (warnings and errors only).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Lines the server logged to stderr (the broker: warnings, MYTHOS_LOG=warn).
    pub fn warnings(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }
}

impl Drop for Broker {
    /// SIGTERM first (a broker under a profiler then writes its output), then
    /// SIGKILL if it is still there after 5 s.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Clock ticks per second for `/proc/<pid>/stat` (`getconf CLK_TCK`, else 100).
pub fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|&t| t > 0.0)
            .unwrap_or(100.0)
    })
}

/// CPU seconds (user + system, all threads) a process has used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // `comm` (field 2) may hold spaces: the fields after it follow the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): utime is field 14, stime field 15.
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (tick(11) + tick(12)) as f64 / clk_tck()
}

/// A line's number of KiB from `/proc/<pid>/status` (`VmRSS`, `VmHWM`, ...).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident memory of a process in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// The soft limit on open files of this process (`/proc/self/limits`).
pub fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(1024)
}

/// The 1-minute load average.
pub fn loadavg1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// CPU seconds all processes of the machine have used (`/proc/stat`).
pub fn machine_busy_seconds() -> f64 {
    cpu_jiffies().0 as f64 / clk_tck()
}

/// Busy and total jiffies of all CPUs (`/proc/stat`).
fn cpu_jiffies() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Cores busy right now, averaged over `window` (all processes).
pub fn busy_cores(window: Duration) -> f64 {
    let (b0, t0) = cpu_jiffies();
    std::thread::sleep(window);
    let (b1, t1) = cpu_jiffies();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    if t1 <= t0 {
        return 0.0;
    }
    (b1 - b0) as f64 / (t1 - t0) as f64 * cores
}

/// What the quiet gate saw before a measurement.
#[derive(Debug, Clone)]
pub struct Quiet {
    pub load1: f64,
    pub busy: f64,
    pub waited: Duration,
    pub quiet: bool,
}

impl std::fmt::Display for Quiet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "load avg (1 min) {:.2}, busy {:.2} cores over 3 s, waited {} s{}",
            self.load1,
            self.busy,
            self.waited.as_secs(),
            if self.quiet {
                ""
            } else {
                " — NOT QUIET (gave up waiting)"
            }
        )
    }
}

/// Waits (polling every 15 s, at most `max_wait`) until the machine is quiet:
/// the 1-minute load average is below `max_load`, or — since the load average
/// still carries the tail of this benchmark's own previous workload for a
/// minute or two — fewer than 0.25 cores are busy over a 3 s sample while no
/// workload of ours runs. Returns what it saw; proceeds anyway after `max_wait`.
pub fn wait_for_quiet(max_load: f64, max_wait: Duration) -> Quiet {
    let start = Instant::now();
    loop {
        let load1 = loadavg1();
        let busy = busy_cores(Duration::from_secs(3));
        let quiet = load1 < max_load || busy < 0.25;
        if quiet || start.elapsed() >= max_wait {
            return Quiet {
                load1,
                busy,
                waited: start.elapsed(),
                quiet,
            };
        }
        eprintln!(
            "  waiting for a quiet machine: load avg {load1:.2}, busy {busy:.2} cores (others' builds?)"
        );
        std::thread::sleep(Duration::from_secs(12));
    }
}

/// CPU seconds of the broker(s), Redis (all its servers) and this
/// generator at one instant.
#[derive(Debug, Clone, Default)]
pub struct Cpu {
    pub broker: f64,
    /// Each broker's, when there are several.
    pub brokers: Vec<f64>,
    pub redis: f64,
    pub generator: f64,
    /// Every process of the machine, the three above included.
    pub machine: f64,
    pub at: Option<Instant>,
}

impl Cpu {
    pub fn sample(brokers: &[u32], redis: &[u32]) -> Self {
        let each: Vec<f64> = brokers.iter().map(|&p| cpu_seconds(p)).collect();
        Self {
            broker: each.iter().sum(),
            brokers: each,
            redis: redis.iter().map(|&p| cpu_seconds(p)).sum(),
            generator: cpu_seconds(std::process::id()),
            machine: machine_busy_seconds(),
            at: Some(Instant::now()),
        }
    }

    /// The CPU used between `earlier` and `self`, and the wall time between.
    pub fn since(&self, earlier: &Cpu) -> CpuUse {
        let wall = match (self.at, earlier.at) {
            (Some(a), Some(b)) => a.saturating_duration_since(b).as_secs_f64(),
            _ => 0.0,
        };
        CpuUse {
            broker: self.broker - earlier.broker,
            brokers: self
                .brokers
                .iter()
                .zip(&earlier.brokers)
                .map(|(a, b)| a - b)
                .collect(),
            redis: self.redis - earlier.redis,
            generator: self.generator - earlier.generator,
            machine: self.machine - earlier.machine,
            wall,
        }
    }
}

/// CPU seconds used over a wall-clock interval.
#[derive(Debug, Clone, Default)]
pub struct CpuUse {
    pub broker: f64,
    pub brokers: Vec<f64>,
    pub redis: f64,
    pub generator: f64,
    pub machine: f64,
    pub wall: f64,
}

impl CpuUse {
    /// Cores used by everything else on the machine meanwhile (colleagues'
    /// builds, the kernel's own threads): a disturbed measurement shows here.
    pub fn others_cores(&self) -> f64 {
        if self.wall <= 0.0 {
            return 0.0;
        }
        ((self.machine - self.broker - self.redis - self.generator) / self.wall).max(0.0)
    }

    /// `broker / redis / generator` as percent of one core.
    pub fn percent(&self) -> String {
        let p = |s: f64| {
            if self.wall > 0.0 {
                100.0 * s / self.wall
            } else {
                0.0
            }
        };
        let broker = if self.brokers.len() > 1 {
            let each: Vec<String> = self
                .brokers
                .iter()
                .map(|b| format!("{:.0}", p(*b)))
                .collect();
            format!("{:.0}% ({}%)", p(self.broker), each.join("+"))
        } else {
            format!("{:.0}%", p(self.broker))
        };
        format!(
            "{broker} / {:.0}% / {:.0}%",
            p(self.redis),
            p(self.generator)
        )
    }
}
