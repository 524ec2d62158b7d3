//! Test support: a real Redis Cluster of throw-away `redis-server` processes.
//!
//! Owns: starting 3 masters with one replica each on free ports
//! (`redis-server --cluster-enabled yes` ×6, then `redis-cli --cluster create
//! ... --cluster-replicas 1 --cluster-yes`, then waiting for
//! `cluster_state:ok` everywhere), and the faults cluster tests inject:
//! killing a master (`kill -9`) and waiting for its replica to take over,
//! moving one slot to another master while traffic flows. Must not touch any
//! Redis it did not start.
//!
//! Starting a cluster takes seconds, so a test binary shares one
//! ([`shared`]): tests take turns ([`Lease`]), and each turn starts on empty
//! masters (`FLUSHALL`).

use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::redis::{free_port_below, wait_for, RedisServer};

/// Cluster node timeout: how long a master may be silent before its replica
/// is promoted (kept short so failover tests take seconds).
pub const NODE_TIMEOUT_MS: u64 = 1000;
const READY: Duration = Duration::from_secs(30);

/// A 3-master, 3-replica cluster; its processes die with it.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

fn sync_conn(port: u16) -> redis::RedisResult<redis::Connection> {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))?
        .get_connection_with_timeout(Duration::from_secs(2))
}

/// One field of `CLUSTER INFO` / `INFO` text.
fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

impl RedisCluster {
    /// Starts six servers and joins them into a cluster (3 masters, 1 replica each).
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// The same with every node keeping an AOF (`appendfsync always`), so
    /// a node killed and restarted comes back with its data, and with
    /// `cluster-require-full-coverage no`, so the shards still up serve
    /// their slots while one shard is down (as docs/scaling.md recommends).
    pub fn start_persistent() -> Self {
        Self::start_with(true)
    }

    fn start_with(persistent: bool) -> Self {
        let mut extra = [
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            &NODE_TIMEOUT_MS.to_string(),
            // A replica takes over however stale it thinks it is: the tests
            // kill masters on purpose.
            "--cluster-replica-validity-factor",
            "0",
            // Redis 7 waits 5 s before a diskless full sync (for more
            // replicas to join it): a master killed within that time would
            // leave an empty replica in charge.
            "--repl-diskless-sync-delay",
            "0",
        ]
        .map(String::from)
        .to_vec();
        if persistent {
            extra.extend(
                [
                    "--appendonly",
                    "yes",
                    "--cluster-require-full-coverage",
                    "no",
                ]
                .map(String::from),
            );
        }
        // The cluster bus listens on port + 10000, so ports stay below 55535.
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| RedisServer::start_cluster_node(&extra, free_port_below(55_000)))
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port()));
        }
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = create
            .output()
            .expect("run redis-cli --cluster create (redis-cli comes with redis-server)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self { nodes };
        cluster.wait_ok();
        cluster.wait_replicas_synced();
        cluster
    }

    /// Waits until every running replica's link to its master is up (its
    /// first full sync done).
    pub fn wait_replicas_synced(&self) {
        let masters = self.masters();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.pid().is_some() && !masters.contains(&i) {
                n.wait_for_link();
            }
        }
    }

    /// `MYTHOS_REDIS_CLUSTER`: every node's URL, comma-separated.
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.pid().is_some())
            .map(|n| format!("redis://127.0.0.1:{}", n.port()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until every running node reports `cluster_state:ok`, all 16384
    /// slots served, and agrees on which nodes are masters.
    pub fn wait_ok(&self) {
        wait_for(READY, "cluster_state:ok on every node", || {
            self.nodes.iter().filter(|n| n.pid().is_some()).all(|n| {
                sync_conn(n.port())
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c))
                    .is_ok_and(|i| {
                        field(&i, "cluster_state") == Some("ok")
                            && field(&i, "cluster_slots_ok") == Some("16384")
                    })
            }) && self.masters_agree()
        });
    }

    fn masters_agree(&self) -> bool {
        let views: Vec<Vec<(u16, u16)>> = self
            .nodes
            .iter()
            .filter(|n| n.pid().is_some())
            .map(|n| self.slot_owners_seen_by(n.port()).unwrap_or_default())
            .collect();
        views.windows(2).all(|w| w[0] == w[1]) && views.first().is_some_and(|v| !v.is_empty())
    }

    /// `(first slot, master port)` of each slot range, as `port` sees it.
    fn slot_owners_seen_by(&self, port: u16) -> Option<Vec<(u16, u16)>> {
        let mut c = sync_conn(port).ok()?;
        let v: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut c).ok()?;
        let redis::Value::Array(ranges) = v else {
            return None;
        };
        let mut out = Vec::new();
        for r in ranges {
            let redis::Value::Array(parts) = r else {
                return None;
            };
            let start: u16 = redis::from_redis_value_ref(parts.first()?).ok()?;
            let redis::Value::Array(master) = parts.get(2)? else {
                return None;
            };
            let port: u16 = redis::from_redis_value_ref(master.get(1)?).ok()?;
            out.push((start, port));
        }
        out.sort_unstable();
        Some(out)
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot(&self, key: &str) -> u16 {
        let mut c = self.any();
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut c)
            .expect("CLUSTER KEYSLOT")
    }

    /// A connection to some running node.
    fn any(&self) -> redis::Connection {
        self.nodes
            .iter()
            .filter(|n| n.pid().is_some())
            .find_map(|n| sync_conn(n.port()).ok())
            .expect("no cluster node answers")
    }

    /// The index in `nodes` of the master serving `slot`.
    pub fn master_of(&self, slot: u16) -> usize {
        let port = slot_owner(&mut self.any(), slot)
            .unwrap_or_else(|| panic!("no master serves slot {slot}"));
        self.index_of(port)
    }

    /// The index of the replica of the master `master` (by index).
    ///
    /// Asks each running node its `ROLE`, which a replica answers with its
    /// primary's port as soon as it replicates: `CLUSTER REPLICAS` answers
    /// from a node's gossip table, which may not list a replica yet right
    /// after `--cluster create` (CI saw `[]` there).
    pub fn replica_of(&self, master: usize) -> usize {
        let primary = self.nodes[master].port();
        let mut found = None;
        wait_for(READY, &format!("a replica of node {master}"), || {
            found = self.nodes.iter().position(|n| {
                n.pid().is_some() && Self::primary_port_of(n.port()) == Some(primary)
            });
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no replica of node {master}"))
    }

    /// The primary's port `port`'s `ROLE` names, if it is a replica.
    fn primary_port_of(port: u16) -> Option<u16> {
        let mut c = sync_conn(port).ok()?;
        let v: redis::Value = redis::cmd("ROLE").query(&mut c).ok()?;
        let redis::Value::Array(parts) = v else {
            return None;
        };
        let role: String = redis::from_redis_value_ref(parts.first()?).ok()?;
        if role != "slave" {
            return None;
        }
        redis::from_redis_value_ref(parts.get(2)?).ok()
    }

    fn index_of(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.port() == port)
            .expect("a node of ours")
    }

    /// The indexes of the running masters.
    pub fn masters(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.pid().is_some())
            .filter(|(_, n)| {
                sync_conn(n.port())
                    .and_then(|mut c| redis::cmd("ROLE").query::<redis::Value>(&mut c))
                    .is_ok_and(|v| matches!(v, redis::Value::Array(ref a) if a.first().is_some_and(|r| redis::from_redis_value_ref::<String>(r).is_ok_and(|s| s == "master"))))
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// A node's cluster id (`CLUSTER MYID`).
    pub fn id(&self, i: usize) -> String {
        let mut c = sync_conn(self.nodes[i].port()).expect("connect");
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut c)
            .expect("CLUSTER MYID")
    }

    /// Kills (SIGKILL) the master serving `slot` and waits until its replica
    /// took over and the cluster is ok again; answers the killed node's index.
    pub fn kill_master_of(&mut self, slot: u16) -> usize {
        let started = Instant::now();
        let victim = self.kill_master(slot);
        self.await_failover(slot, victim);
        eprintln!("failover of slot {slot} took {:?}", started.elapsed());
        victim
    }

    /// `kill -9` of the master of `slot`, without waiting for anything.
    pub fn kill_master(&mut self, slot: u16) -> usize {
        let victim = self.master_of(slot);
        self.nodes[victim].kill();
        victim
    }

    /// Waits until a replica took over `slot` from the killed `victim` and
    /// the cluster is whole again.
    pub fn await_failover(&self, slot: u16, victim: usize) {
        let port = self.nodes[victim].port();
        wait_for(
            READY,
            "a replica to take over the killed master's slots",
            || {
                sync_conn(self.nodes[self.any_index()].port()).is_ok() && {
                    let owner = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.master_of(slot)
                    }));
                    owner.is_ok_and(|o| self.nodes[o].port() != port)
                }
            },
        );
        self.wait_ok();
    }

    fn any_index(&self) -> usize {
        self.nodes
            .iter()
            .position(|n| n.pid().is_some())
            .expect("a running node")
    }

    /// Moves `slot` to the master `to` (by index), as `redis-cli --cluster
    /// reshard` does for one slot: IMPORTING/MIGRATING, MIGRATE its keys in
    /// batches, then SETSLOT NODE on every master.
    pub fn move_slot(&self, slot: u16, to: usize) {
        let from = self.master_of(slot);
        assert_ne!(from, to, "slot {slot} already lives on node {to}");
        let (from_id, to_id) = (self.id(from), self.id(to));
        let mut src = sync_conn(self.nodes[from].port()).expect("connect");
        let mut dst = sync_conn(self.nodes[to].port()).expect("connect");
        let setslot = |c: &mut redis::Connection, how: &str, id: &str| {
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(how)
                .arg(id)
                .query::<()>(c)
                .unwrap_or_else(|e| panic!("CLUSTER SETSLOT {slot} {how}: {e}"));
        };
        setslot(&mut dst, "IMPORTING", &from_id);
        setslot(&mut src, "MIGRATING", &to_id);
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query(&mut src)
                .expect("GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(self.nodes[to].port())
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query::<()>(&mut src)
                .expect("MIGRATE");
        }
        for m in self.masters() {
            let mut c = sync_conn(self.nodes[m].port()).expect("connect");
            setslot(&mut c, "NODE", &to_id);
        }
        wait_for(READY, "every node to see the moved slot", || {
            self.nodes.iter().filter(|n| n.pid().is_some()).all(|n| {
                self.slot_owners_seen_by(n.port()).is_some_and(|v| {
                    // The range that contains the slot starts at it or before.
                    v.iter()
                        .rev()
                        .find(|(start, _)| *start <= slot)
                        .is_some_and(|(_, p)| *p == self.nodes[to].port())
                })
            })
        });
    }

    /// Empties every master (`FLUSHALL`), for a test's fresh start.
    pub fn flush(&self) {
        for m in self.masters() {
            let mut c = sync_conn(self.nodes[m].port()).expect("connect");
            redis::cmd("FLUSHALL")
                .query::<()>(&mut c)
                .expect("FLUSHALL");
        }
    }
}

/// A plain client of the master that serves `key` now, found through the
/// first of `seeds` (`CLUSTER KEYSLOT`, `CLUSTER SLOTS`).
pub fn master_client(seeds: &str, key: &str) -> redis::Client {
    let port: u16 = seeds
        .split(',')
        .find_map(|u| u.rsplit(':').next()?.trim_end_matches('/').parse().ok())
        .expect("a seed port");
    let mut c = sync_conn(port).expect("connect to a seed");
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(&mut c)
        .expect("CLUSTER KEYSLOT");
    let owner = slot_owner(&mut c, slot).expect("a master serves the slot");
    redis::Client::open(format!("redis://127.0.0.1:{owner}/")).expect("url")
}

/// The port of the master serving `slot`, as the node behind `c` sees it.
fn slot_owner(c: &mut redis::Connection, slot: u16) -> Option<u16> {
    let v: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query(c).ok()?;
    let redis::Value::Array(ranges) = v else {
        return None;
    };
    ranges.into_iter().find_map(|r| {
        let redis::Value::Array(parts) = r else {
            return None;
        };
        let a: u16 = redis::from_redis_value_ref(parts.first()?).ok()?;
        let b: u16 = redis::from_redis_value_ref(parts.get(1)?).ok()?;
        let redis::Value::Array(master) = parts.get(2)? else {
            return None;
        };
        (a..=b)
            .contains(&slot)
            .then(|| redis::from_redis_value_ref(master.get(1)?).ok())
            .flatten()
    })
}

/// The binary's one shared cluster, started on first use by a thread that
/// lives as long as the process (its children die with that thread).
pub fn shared() -> &'static String {
    static SEEDS: OnceLock<String> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let cluster = RedisCluster::start();
            let _ = tx.send(cluster.seeds());
            // Keep the processes (and this thread: their death signal) alive.
            let _keep = cluster;
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("the shared cluster failed to start")
    })
}

/// A turn on the shared cluster: tests hold it while they run, so one test's
/// keys never meet another's; the cluster is flushed when the turn starts.
pub struct Lease {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    pub seeds: String,
}

/// Waits for a turn on the shared cluster.
pub async fn lease() -> Lease {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let turn = TURN.lock().await;
    let seeds = shared().clone();
    let ports: Vec<u16> = seeds
        .split(',')
        .filter_map(|u| u.rsplit(':').next()?.parse().ok())
        .collect();
    for p in ports {
        if let Ok(mut c) = sync_conn(p) {
            let role: redis::RedisResult<redis::Value> = redis::cmd("ROLE").query(&mut c);
            if matches!(role, Ok(redis::Value::Array(ref a)) if a.first().is_some_and(|r| redis::from_redis_value_ref::<String>(r).is_ok_and(|s| s == "master")))
            {
                let _: redis::RedisResult<()> = redis::cmd("FLUSHALL").query(&mut c);
            }
        }
    }
    Lease { _turn: turn, seeds }
}
