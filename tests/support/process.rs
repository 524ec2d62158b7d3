//! Test support: `mythos-broker` nodes as real child processes (the
//! binary, spawned with a cleared environment), for the tests that
//! `kill -9` a node (`tests/faults.rs`, `tests/presence.rs`).
//!
//! Owns: spawning a node on a free port with a Redis (URL or cluster seeds)
//! and extra settings, waiting for `/readyz`, `kill -9`, restarting it on the
//! same port. Must not touch: anything it did not start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::broker::SECRET;
use super::redis::free_port;

/// The broker binary cargo built for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_mythos-broker");

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// A `mythos-broker` child process; SIGKILLed on drop, and when the test
/// process dies (`PR_SET_PDEATHSIG`).
pub struct Node {
    child: Option<Child>,
    pub port: u16,
    pub node_id: String,
    /// `MYTHOS_REDIS_URL` or `MYTHOS_REDIS_CLUSTER`, and its value.
    redis: (&'static str, String),
    env: Vec<(String, String)>,
    log: PathBuf,
}

impl Node {
    pub async fn start(node_id: &str, redis: (&'static str, String), env: &[(&str, &str)]) -> Self {
        let mut n = Self {
            child: None,
            port: free_port(),
            node_id: node_id.to_string(),
            redis,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log: PathBuf::new(),
        };
        n.spawn().await;
        n
    }

    async fn spawn(&mut self) {
        self.log = std::env::temp_dir().join(format!(
            "mythos-faults-{}-{}-{}.log",
            std::process::id(),
            self.node_id,
            self.port
        ));
        let log = std::fs::File::create(&self.log).expect("node log file");
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(self.redis.0, &self.redis.1)
            .env("MYTHOS_JWT_SECRET", SECRET)
            .env("MYTHOS_BIND", format!("127.0.0.1:{}", self.port))
            .env("MYTHOS_NODE_ID", &self.node_id)
            // MYTHOS_TEST_NODE_LOG: a filter for the nodes' logs when chasing a
            // failure (e.g. `mythos_broker::engine::redis::live=debug,warn`).
            .env(
                "MYTHOS_LOG",
                std::env::var("MYTHOS_TEST_NODE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("MYTHOS_KEEPALIVE", "1s")
            .env("MYTHOS_IDLE_TIMEOUT", "3s")
            .env("MYTHOS_INGEST_CLAIM_IDLE", "1s")
            .env("MYTHOS_RATE_PER_SEC", "1000")
            .env("MYTHOS_RATE_BURST", "1000");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        // scripts/mutation-check: the injected defect reaches the brokers.
        if let Ok(d) = std::env::var("MYTHOS_DEFECT") {
            cmd.env("MYTHOS_DEFECT", d);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        // Dies with the test process (a runner killed by a timeout, an abort).
        super::redis::die_with_parent(&mut cmd);
        self.child = Some(cmd.spawn().expect("spawn mythos-broker"));
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("client");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{} exited at start-up ({st}): {}",
                    self.node_id,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never got ready",
                self.node_id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, as a new consumer `node_id`.
    pub async fn restart_as(&mut self, node_id: &str) {
        self.kill9();
        self.node_id = node_id.to_string();
        self.spawn().await;
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        // Kept for the one chasing a failure with MYTHOS_TEST_NODE_LOG.
        if std::env::var_os("MYTHOS_TEST_NODE_LOG").is_none() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
