//! A model test of the `Engine` trait (issue 11): random sequences of
//! publish (one player, several, a room; with and without an idempotency
//! key), join/leave, ack, read, cursor and — on Redis — restart (a fresh
//! engine on the same data), run against a plain in-test model and against
//! both engines, which must agree with it answer for answer. The count cap
//! is small (6) so trimming happens often; the age cap is not modelled
//! (time-based; the conformance suite covers it).
//!
//! `PROPTEST_CASES` sets the number of sequences (default 48 per engine).

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use mythos_broker::engine::memory::MemoryEngine;
use mythos_broker::engine::redis::{RedisEngine, RedisOptions};
use mythos_broker::engine::{Cursor, Engine, Limits};
use mythos_broker::hub::Hub;
use mythos_broker::protocol::{Delivery, EventBody, Target};
use proptest::prelude::*;
use serde_json::value::RawValue;
use support::RedisServer;

const PLAYERS: [&str; 3] = ["a", "b", "c"];
const ROOMS: [&str; 2] = ["r0", "r1"];
const CAP: u64 = 6;

#[derive(Debug, Clone)]
enum Op {
    Publish(Vec<usize>, Option<u8>),
    PublishRoom(usize, Option<u8>),
    Join(usize, usize),
    Leave(usize, usize),
    Ack(usize, u64),
    Read(usize, u64, usize),
    Cursor(usize),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0..PLAYERS.len();
    let r = 0..ROOMS.len();
    let key = proptest::option::of(0u8..3);
    prop_oneof![
        4 => (proptest::sample::subsequence(vec![0usize, 1, 2], 1..=3).prop_shuffle(), key.clone())
            .prop_map(|(ps, k)| Op::Publish(ps, k)),
        2 => (r.clone(), key).prop_map(|(r, k)| Op::PublishRoom(r, k)),
        2 => (r.clone(), p.clone()).prop_map(|(r, p)| Op::Join(r, p)),
        1 => (r, p.clone()).prop_map(|(r, p)| Op::Leave(r, p)),
        2 => (p.clone(), 0u64..30).prop_map(|(p, n)| Op::Ack(p, n)),
        2 => (p.clone(), 0u64..30, 1usize..8).prop_map(|(p, a, l)| Op::Read(p, a, l)),
        1 => p.prop_map(Op::Cursor),
        1 => Just(Op::Restart),
    ]
}

/// One player's log in the model.
#[derive(Default)]
struct Log {
    last: u64,
    acked: u64,
    /// (sequence number, the publish's label)
    events: VecDeque<(u64, String)>,
    keys: HashMap<String, u64>,
}

impl Log {
    fn cursor(&self) -> Cursor {
        Cursor {
            last: self.last,
            acked: self.acked,
            oldest: self.events.front().map_or(self.last + 1, |e| e.0),
        }
    }
    /// Appends (or answers an earlier append of `key`).
    fn append(&mut self, label: &str, key: Option<&str>) -> u64 {
        if let Some(seq) = key.and_then(|k| self.keys.get(k)) {
            return *seq;
        }
        self.last += 1;
        self.events.push_back((self.last, label.to_string()));
        while self.events.len() as u64 > CAP {
            self.events.pop_front();
        }
        if let Some(k) = key {
            self.keys.insert(k.to_string(), self.last);
        }
        self.last
    }
}

#[derive(Default)]
struct Model {
    logs: BTreeMap<String, Log>,
    rooms: BTreeMap<String, BTreeSet<String>>,
    room_keys: HashMap<(String, String), Vec<Delivery>>,
}

impl Model {
    fn log(&mut self, p: &str) -> &mut Log {
        self.logs.entry(p.to_string()).or_default()
    }
    fn publish(&mut self, players: &[String], label: &str, key: Option<&str>) -> Vec<Delivery> {
        players
            .iter()
            .map(|p| Delivery {
                player_id: p.clone(),
                sequence_number: self.log(p).append(label, key),
            })
            .collect()
    }
}

fn body(label: &str) -> Arc<EventBody> {
    let data = RawValue::from_string(format!("{label:?}")).expect("JSON string");
    Arc::new(EventBody::now("t", data, None, None))
}

/// Runs `ops` against `engine` (rebuilt by `restart` where it can be) and
/// the model; the first disagreement fails with the op's index.
async fn run<F, Fut>(mut engine: Arc<dyn Engine>, ops: &[Op], restart: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<Arc<dyn Engine>>>,
{
    let mut m = Model::default();
    for (i, op) in ops.iter().enumerate() {
        let label = format!("e{i}");
        let ctx = format!("op #{i}: {op:?}");
        match op {
            Op::Publish(ps, key) => {
                let ps: Vec<String> = ps.iter().map(|&p| PLAYERS[p].to_string()).collect();
                let key = key.map(|k| format!("k{k}"));
                let got = engine
                    .publish(&Target::Players(ps.clone()), body(&label), key.as_deref())
                    .await
                    .expect(&ctx);
                assert_eq!(got, m.publish(&ps, &label, key.as_deref()), "{ctx}");
            }
            Op::PublishRoom(r, key) => {
                let room = ROOMS[*r].to_string();
                let key = key.map(|k| format!("k{k}"));
                let got = engine
                    .publish(&Target::Room(room.clone()), body(&label), key.as_deref())
                    .await
                    .expect(&ctx);
                let want = match key
                    .as_ref()
                    .and_then(|k| m.room_keys.get(&(room.clone(), k.clone())))
                {
                    Some(first) => first.clone(),
                    None => {
                        let members: Vec<String> = m
                            .rooms
                            .get(&room)
                            .map(|s| s.iter().cloned().collect())
                            .unwrap_or_default();
                        let out = m.publish(&members, &label, key.as_deref());
                        if let Some(k) = key {
                            m.room_keys.insert((room, k), out.clone());
                        }
                        out
                    }
                };
                assert_eq!(got, want, "{ctx}");
            }
            Op::Join(r, p) => {
                let (room, p) = (ROOMS[*r], PLAYERS[*p]);
                let got = engine.join(room, p).await.expect(&ctx);
                let members = m.rooms.entry(room.to_string()).or_default();
                let want = members.insert(p.to_string()).then(|| {
                    members
                        .iter()
                        .filter(|q| q.as_str() != p)
                        .cloned()
                        .collect::<Vec<_>>()
                });
                assert_eq!(got, want, "{ctx}");
            }
            Op::Leave(r, p) => {
                let (room, p) = (ROOMS[*r], PLAYERS[*p]);
                let got = engine.leave(room, p).await.expect(&ctx);
                let members = m.rooms.entry(room.to_string()).or_default();
                let want = members
                    .remove(p)
                    .then(|| members.iter().cloned().collect::<Vec<_>>());
                assert_eq!(got, want, "{ctx}");
            }
            Op::Ack(p, n) => {
                let got = engine.ack(PLAYERS[*p], *n).await.expect(&ctx);
                let log = m.log(PLAYERS[*p]);
                let n = (*n).min(log.last);
                if n > log.acked {
                    log.acked = n;
                    while log.events.front().is_some_and(|e| e.0 <= n) {
                        log.events.pop_front();
                    }
                }
                assert_eq!(got, log.cursor(), "{ctx}");
            }
            Op::Read(p, after, limit) => {
                let got = engine.read(PLAYERS[*p], *after, *limit).await.expect(&ctx);
                let got: Vec<(u64, String)> = got
                    .iter()
                    .map(|e| {
                        let label: String = serde_json::from_str(e.body.data.get()).expect("label");
                        (e.sequence_number, label)
                    })
                    .collect();
                let want: Vec<(u64, String)> = m
                    .log(PLAYERS[*p])
                    .events
                    .iter()
                    .filter(|e| e.0 > *after)
                    .take(*limit)
                    .cloned()
                    .collect();
                assert_eq!(got, want, "{ctx}");
            }
            Op::Cursor(p) => {
                let got = engine.cursor(PLAYERS[*p]).await.expect(&ctx);
                assert_eq!(got, m.log(PLAYERS[*p]).cursor(), "{ctx}");
            }
            Op::Restart => {
                if let Some(e) = restart().await {
                    engine = e;
                }
            }
        }
    }
}

fn limits() -> Limits {
    Limits {
        max_backlog: CAP,
        ..Limits::default()
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn memory_engine_agrees_with_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        runtime().block_on(async {
            let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new(limits(), Hub::new(64)));
            // The embedded engine is not durable: a restart is not a step of its model.
            run(engine, &ops, || async { None }).await;
        });
    }
}

/// One redis-server for every case of the Redis run, flushed between cases.
fn shared_redis() -> &'static RedisServer {
    static SERVER: std::sync::OnceLock<RedisServer> = std::sync::OnceLock::new();
    SERVER.get_or_init(RedisServer::start)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn redis_engine_agrees_with_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let server = shared_redis();
        runtime().block_on(async {
            let mut con = server
                .client()
                .get_multiplexed_async_connection()
                .await
                .expect("redis");
            let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await.expect("FLUSHALL");
            let url = server.url();
            let connect = || {
                let url = url.clone();
                async move {
                    let e: Arc<dyn Engine> = RedisEngine::connect(&RedisOptions::single(&url).with_pool(4), limits(), Hub::new(64))
                        .await
                        .expect("connect");
                    e
                }
            };
            let engine = connect().await;
            run(engine, &ops, || async { Some(connect().await) }).await;
        });
    }
}
