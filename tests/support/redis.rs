//! Test support: real `redis-server` processes on free ports (never 6379).
//!
//! Owns: starting, killing and restarting throw-away Redis servers, each in
//! its own temporary directory, and polling helpers with deadlines. Must not
//! touch: any Redis it did not start. A server counts as started only when
//! the child is alive and the process answering on the port reports the
//! child's pid (`INFO server` `process_id`); a port taken by someone else
//! between the probe and the bind is retried with a new port, never shared.
//! Every port handed out is also reserved for the test process's lifetime
//! ([`reserve`]), so that no other test (of this process or of another suite
//! run at the same time) starts a server on a port whose server this one
//! killed and will restart: its nodes would reconnect to a stranger's Redis.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A `redis-server` child process; killed (and its directory removed) on drop.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    appendonly: bool,
    /// The primary's port, for a replica.
    replica_of: Option<u16>,
    /// More `redis-server` arguments (a cluster node's).
    extra: Vec<String>,
    child: Option<Child>,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// Attempts at a fresh port before giving up.
const PORT_ATTEMPTS: usize = 8;

/// A port nobody listened on a moment ago (never 6379), reserved for this
/// process ([`reserve`]). A process that does not reserve may still take it
/// before our child binds it: callers check who answers.
pub fn free_port() -> u16 {
    loop {
        let port = ephemeral_port();
        if port != 6379 && reserve(port) {
            return port;
        }
    }
}

/// A port the kernel just gave a listener (and freed again).
fn ephemeral_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// Where the port reservations of every test process on this machine live
/// (fixed, not `TMPDIR`: two suites with different temporary directories
/// must still see each other's).
const RESERVATIONS: &str = "/tmp/mythos-test-ports";

/// The reservation files this process holds locked; never closed, so a
/// reservation lasts as long as the process (the kernel drops the locks
/// when it exits, however it exits).
static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// Reserves `port` for this process: an exclusive `flock` on
/// `RESERVATIONS/<port>`, which fails while another test process, or this
/// one, holds it (each `open` is its own lock owner). `false`: held
/// elsewhere, pick another port.
pub fn reserve(port: u16) -> bool {
    lock(port).map(hold).is_some()
}

/// The locked reservation file of `port`, or `None` if someone holds it;
/// dropping the file gives the reservation up.
fn lock(port: u16) -> Option<File> {
    let dir = Path::new(RESERVATIONS);
    if let Err(e) = std::fs::create_dir_all(dir) {
        panic!("cannot create {RESERVATIONS} for test port reservations: {e}");
    }
    let file = match OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(port.to_string()))
    {
        Ok(f) => f,
        Err(e) => panic!("cannot open {RESERVATIONS}/{port}: {e}"),
    };
    // SAFETY: flock on a descriptor this function owns; no memory involved.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    locked.then_some(file)
}

/// Keeps a reservation for the rest of the process.
fn hold(file: File) {
    HELD.lock().unwrap_or_else(|p| p.into_inner()).push(file);
}

/// A free port below `max` whose port + 10000 (a cluster node's bus port)
/// is free too; both reserved ([`reserve`]), and nothing else kept.
pub fn free_port_below(max: u16) -> u16 {
    loop {
        // Ephemeral ports are mostly above `max`: a random lower one too.
        let guess = 20_000 + (rand_u16() % (max - 20_000));
        for port in [ephemeral_port(), guess] {
            if port >= max
                || port == 6379
                || TcpListener::bind(("127.0.0.1", port)).is_err()
                || TcpListener::bind(("127.0.0.1", port + 10_000)).is_err()
            {
                continue;
            }
            if let (Some(a), Some(b)) = (lock(port), lock(port + 10_000)) {
                hold(a);
                hold(b);
                return port;
            }
        }
    }
}

fn rand_u16() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    (h.finish() & 0xffff) as u16
}

/// Makes a child die with the test process: on Linux it gets SIGKILL when the
/// thread that spawned it exits (a runner killed by a timeout, an abort), so
/// no server outlives the run. Elsewhere, `Drop` is the only guard.
pub fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe, and nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// Why a start on one port did not give us our own server.
#[derive(Debug)]
pub enum SpawnError {
    /// The child exited (typically: the port was taken before it could bind).
    Exited(String),
    /// Something answers on the port, but it is not our child.
    NotOurs { answered_by: Option<u32>, ours: u32 },
    /// Neither happened before the deadline.
    NotReady,
}

impl RedisServer {
    /// A server without persistence (`--save "" --appendonly no`).
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// A server with `--appendonly yes` (`appendfsync always`), so that
    /// [`RedisServer::restart`] keeps the data.
    pub fn start_persistent() -> Self {
        Self::start_with(true)
    }

    /// A replica of `primary` (`--replicaof`), without persistence; waits
    /// until its link to the primary is up.
    pub fn start_replica_of(primary: &RedisServer) -> Self {
        let replica = Self::start_on_free_port(false, Some(primary.port));
        replica.wait_for_link();
        replica
    }

    /// Waits until a replica reports `master_link_status:up`.
    pub fn wait_for_link(&self) {
        let client = self.client();
        wait_for(
            Duration::from_secs(10),
            "the replica's link to its primary",
            || {
                client
                    .get_connection()
                    .and_then(|mut c| {
                        redis::cmd("INFO")
                            .arg("replication")
                            .query::<String>(&mut c)
                    })
                    .is_ok_and(|info| info.contains("master_link_status:up"))
            },
        );
    }

    fn start_with(appendonly: bool) -> Self {
        Self::start_on_free_port(appendonly, None)
    }

    /// A cluster node (`extra` holds the `--cluster-*` arguments) on `port`,
    /// or on other free ports below 55000 if that one is taken.
    pub fn start_cluster_node(extra: &[String], port: u16) -> Self {
        let mut errors = Vec::new();
        let mut port = port;
        for _ in 0..PORT_ATTEMPTS {
            match Self::try_start_with(port, false, None, extra.to_vec()) {
                Ok(s) => return s,
                Err(e) => errors.push(e),
            }
            port = free_port_below(55_000);
        }
        panic!("no cluster node of our own after {PORT_ATTEMPTS} ports: {errors:?}");
    }

    fn start_on_free_port(appendonly: bool, replica_of: Option<u16>) -> Self {
        let mut errors = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            match Self::try_start(free_port(), appendonly, replica_of) {
                Ok(s) => return s,
                // Another process took the port first: try another one.
                Err(e) => errors.push(e),
            }
        }
        panic!("no redis-server of our own after {PORT_ATTEMPTS} ports: {errors:?}");
    }

    /// Starts a server on exactly `port`; `Err` unless the process answering
    /// there is the child just started (never someone else's server).
    pub fn try_start_on(port: u16, appendonly: bool) -> Result<Self, SpawnError> {
        Self::try_start(port, appendonly, None)
    }

    fn try_start(port: u16, appendonly: bool, replica_of: Option<u16>) -> Result<Self, SpawnError> {
        Self::try_start_with(port, appendonly, replica_of, Vec::new())
    }

    fn try_start_with(
        port: u16,
        appendonly: bool,
        replica_of: Option<u16>,
        extra: Vec<String>,
    ) -> Result<Self, SpawnError> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mythos-redis-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the server's temp dir");
        let mut s = Self {
            port,
            dir,
            appendonly,
            replica_of,
            extra,
            child: None,
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> Result<(), SpawnError> {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--appendonly", if self.appendonly { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .args(
                self.replica_of
                    .map(|p| vec!["--replicaof".to_string(), "127.0.0.1".into(), p.to_string()])
                    .unwrap_or_default(),
            )
            .args(&self.extra)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        die_with_parent(&mut cmd);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server not found: install it with `apt-get install redis-server` \
                 (Debian) or `brew install redis`"
            ),
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        // Drain the log on a thread (a full pipe would block the server); it
        // explains an exit.
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(out) = child.stdout.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    if let Ok(mut l) = log.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            });
        }
        let ours = child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        let verdict = loop {
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(50)); // let the log thread catch up
                let tail = log.lock().map(|l| l.clone()).unwrap_or_default();
                break Err(SpawnError::Exited(format!("{status}: {tail}")));
            }
            match server_pid(self.port) {
                Some(Some(pid)) if pid == ours => break Ok(()),
                Some(answered_by) => break Err(SpawnError::NotOurs { answered_by, ours }),
                None => {}
            }
            if Instant::now() > deadline {
                break Err(SpawnError::NotReady);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if verdict.is_err() {
            let _ = child.kill();
            let _ = child.wait();
        } else {
            self.child = Some(child);
        }
        verdict
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The pid of the running child, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends the server `signal` (`STOP` freezes it, `CONT` resumes it).
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let ok = std::process::Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill -{signal} {pid}");
        }
    }

    /// Starts the server again on the same port (and directory); panics if
    /// that port now answers with someone else's server.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn() {
            panic!(
                "redis-server could not be restarted on port {} as our own process: {e:?}",
                self.port
            );
        }
    }

    /// A plain client for assertions.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("valid url")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What answers on `port`: `None` if nothing accepts a connection (or it is
/// still loading), else `Some` of the `process_id` from `INFO server`
/// (`Some(None)` when whatever answered reports no pid).
fn server_pid(port: u16) -> Option<Option<u32>> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    s.write_all(b"INFO server\r\n").ok()?;
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(1);
    while !(text.contains("process_id:") && text.ends_with("\r\n")) && Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => text.push_str(&String::from_utf8_lossy(&buf[..k])),
        }
    }
    if text.is_empty() || text.starts_with("-LOADING") {
        return None;
    }
    Some(
        text.lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|p| p.trim().parse().ok()),
    )
}

/// Polls `cond` until it holds; panics naming `what` after `timeout`.
pub fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls the async condition `f` until it returns `Some`; panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A child process killed (SIGKILL) and reaped when dropped, so a failed
/// assertion never leaves it running.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}
