//! The engine conformance suite: the same test bodies run against the memory
//! engine (`memory::*`), the Redis engine (`redis::*`, each test on its own
//! fresh `redis-server`) and the Redis engine on a Redis Cluster
//! (`cluster::*`: 3 masters with a replica each, shared by the binary's
//! cluster tests one at a time, flushed before each). Assertions are by sequence number; nothing sleeps
//! and hopes: waits poll a condition with a deadline.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mythos_broker::engine::memory::MemoryEngine;
use mythos_broker::engine::redis::{RedisEngine, RedisOptions};
use mythos_broker::engine::{Account, Command, Cursor, Engine, Limits, RefreshFamily, Rotation};
use mythos_broker::hub::{Hub, Live, Subscription};
use mythos_broker::presence::{Settings, Tracker};
use mythos_broker::protocol::{Delivery, Event, EventBody, Target};
use mythos_broker::session::{self, Feed, ResumePoint};
use serde_json::value::RawValue;
use support::{eventually, RedisServer};

const WAIT: Duration = Duration::from_secs(10);

pub enum Kind {
    Memory,
    Redis,
    Cluster,
}

pub struct Fixture {
    pub engine: Arc<dyn Engine>,
    pub hub: Arc<Hub>,
    /// The Redis engine's own `redis-server`, for looking at it from outside.
    pub server: Option<RedisServer>,
    /// The turn on the shared cluster, held while the test runs.
    pub lease: Option<support::cluster::Lease>,
}

impl Fixture {
    /// A plain client of the server that holds `key` (Redis engines only).
    fn raw_client(&self, key: &str) -> Option<::redis::Client> {
        match (&self.server, &self.lease) {
            (Some(server), _) => Some(server.client()),
            (None, Some(lease)) => Some(support::cluster::master_client(&lease.seeds, key)),
            (None, None) => None,
        }
    }
}

impl Kind {
    async fn with(&self, limits: Limits) -> Fixture {
        let hub = Hub::new(4096);
        match self {
            Kind::Memory => Fixture {
                engine: Arc::new(MemoryEngine::new(limits, hub.clone())),
                hub,
                server: None,
                lease: None,
            },
            Kind::Redis => {
                let server = RedisServer::start();
                let engine = RedisEngine::connect(
                    &RedisOptions::single(&server.url()).with_pool(8),
                    limits,
                    hub.clone(),
                )
                .await
                .expect("connect to the test redis");
                Fixture {
                    engine,
                    hub,
                    server: Some(server),
                    lease: None,
                }
            }
            Kind::Cluster => {
                let lease = support::cluster::lease().await;
                let seeds: Vec<String> = lease.seeds.split(',').map(String::from).collect();
                let engine =
                    RedisEngine::connect(&RedisOptions::cluster(&seeds), limits, hub.clone())
                        .await
                        .expect("connect to the test cluster");
                Fixture {
                    engine,
                    hub,
                    server: None,
                    lease: Some(lease),
                }
            }
        }
    }

    async fn fixture(&self) -> Fixture {
        self.with(Limits::default()).await
    }
}

fn body(event_type: &str, data: &str) -> Arc<EventBody> {
    let data = RawValue::from_string(data.to_string()).expect("valid JSON");
    Arc::new(EventBody::now(event_type, data, None, None))
}

fn player(p: &str) -> Target {
    Target::Player(p.to_string())
}

fn players(ps: &[&str]) -> Target {
    Target::Players(ps.iter().map(|p| p.to_string()).collect())
}

fn d(p: &str, seq: u64) -> Delivery {
    Delivery {
        player_id: p.to_string(),
        sequence_number: seq,
    }
}

fn cur(last: u64, acked: u64, oldest: u64) -> Cursor {
    Cursor {
        last,
        acked,
        oldest,
    }
}

fn seqs(evs: &[Event]) -> Vec<u64> {
    evs.iter().map(|e| e.sequence_number).collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

async fn one(e: &dyn Engine, p: &str, data: &str) -> u64 {
    let ds = e
        .publish(&player(p), body("t", data), None)
        .await
        .expect("publish");
    assert_eq!(ds.len(), 1);
    ds[0].sequence_number
}

async fn publish_n(e: &dyn Engine, p: &str, n: u64) {
    for _ in 0..n {
        one(e, p, "{}").await;
    }
}

/// Opens a session as a transport does.
async fn open(f: &Fixture, p: &str, point: ResumePoint) -> session::Opened {
    let presence = Tracker::new(
        f.engine.clone(),
        Settings::new("conformance"),
        Default::default(),
    );
    session::open(f.engine.clone(), &f.hub, &presence, p, point)
        .await
        .expect("open a session")
}

/// The next live event for a subscription (nudges are skipped).
async fn next_live(sub: &mut Subscription) -> Event {
    loop {
        match tokio::time::timeout(WAIT, sub.rx.recv()).await {
            Ok(Some(Live::Event(ev))) => return ev,
            Ok(Some(Live::Nudge)) => continue,
            Ok(None) => panic!("subscription closed"),
            Err(_) => panic!("no live event within {WAIT:?}"),
        }
    }
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::cases::$case(super::Kind::Memory).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::cases::$case(super::Kind::Redis).await
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::cases::$case(super::Kind::Cluster).await
                }
            )*
        }
    };
}

conformance!(
    sequence_numbers_are_dense_and_ordered,
    unknown_player,
    publish_is_idempotent,
    dedupe_key_expires,
    acks_are_cumulative_clamped_and_never_backwards,
    count_cap,
    age_cap,
    age_cap_by_appends_alone,
    age_cap_after_count_cap,
    resync_required_after_ack,
    resync_required_after_count_cap,
    resync_required_after_age_cap,
    seen_point_acknowledges,
    room_fan_out,
    room_publish_repeat_answers_the_first,
    membership,
    commands,
    commands_are_capped,
    commands_are_reclaimed,
    accounts,
    hub_gets_fresh_appends_only,
    concurrent_publishers_get_dense_sequences,
    concurrent_same_key_appends_once,
    commands_after_reads_without_a_group,
    dedupe_keys_are_listed_until_they_expire,
    streams_report_length_groups_and_pending,
    streams_name_who_holds_what,
    presence_tabs_grace_and_expiry,
    presence_logout_and_zero_grace_are_at_once,
    presence_of_a_dead_node_is_reaped,
    presence_many_nodes_at_once_make_one_join_and_one_leave,
    presence_room_events_are_opt_in,
    presence_a_node_back_from_a_stall_keeps_its_players,
    refresh_families_rotate_and_reuse_revokes,
    refresh_families_rotate_once_under_a_race,
    refresh_families_expire,
);

#[path = "conformance/presence.rs"]
mod presence;

mod cases {
    pub use super::presence::*;
    use super::*;

    pub async fn sequence_numbers_are_dense_and_ordered(k: Kind) {
        let f = k.fixture().await;
        let e = &*f.engine;
        for i in 1..=30u64 {
            let ds = e
                .publish(
                    &player("alice"),
                    body("t", &format!(r#"{{"i":{i}}}"#)),
                    None,
                )
                .await
                .unwrap();
            assert_eq!(ds, vec![d("alice", i)]);
        }
        for i in 1..=3 {
            assert_eq!(one(e, "bob", "{}").await, i);
        }
        let evs = e.read("alice", 0, 100).await.unwrap();
        assert_eq!(seqs(&evs), (1..=30).collect::<Vec<_>>());
        for ev in &evs {
            assert_eq!(
                ev.body.data.get(),
                format!(r#"{{"i":{}}}"#, ev.sequence_number)
            );
            assert_eq!(ev.body.event_type, "t");
        }
        assert_eq!(
            seqs(&e.read("alice", 10, 5).await.unwrap()),
            vec![11, 12, 13, 14, 15]
        );
        assert!(e.read("alice", 30, 10).await.unwrap().is_empty());
        assert!(e.read("alice", u64::MAX, 10).await.unwrap().is_empty());
        assert!(e.read("alice", 0, 0).await.unwrap().is_empty());
        assert_eq!(e.cursor("alice").await.unwrap(), cur(30, 0, 1));
        let ds = e
            .publish(&players(&["carol", "alice"]), body("t", "[]"), None)
            .await
            .unwrap();
        assert_eq!(ds, vec![d("carol", 1), d("alice", 31)]);
    }

    pub async fn unknown_player(k: Kind) {
        let f = k.fixture().await;
        let e = &*f.engine;
        assert_eq!(e.cursor("nobody").await.unwrap(), cur(0, 0, 1));
        assert!(e.read("nobody", 0, 10).await.unwrap().is_empty());
        assert_eq!(e.ack("nobody", 5).await.unwrap(), cur(0, 0, 1));
        let o = open(&f, "nobody", ResumePoint::After(7)).await;
        assert_eq!((o.resync, o.cursor), (None, cur(0, 0, 1)));
        assert_eq!(one(e, "nobody", "{}").await, 1);
    }

    pub async fn publish_is_idempotent(k: Kind) {
        let f = k.fixture().await;
        let e = &*f.engine;
        let t = players(&["a", "b"]);
        let first = e.publish(&t, body("t", "1"), Some("k1")).await.unwrap();
        assert_eq!(first, vec![d("a", 1), d("b", 1)]);
        let again = e.publish(&t, body("t", "2"), Some("k1")).await.unwrap();
        assert_eq!(again, first);
        assert_eq!(e.cursor("a").await.unwrap().last, 1);
        assert_eq!(e.cursor("b").await.unwrap().last, 1);
        // The key is remembered per player: a new member gets it once.
        let mixed = e
            .publish(&players(&["a", "c"]), body("t", "3"), Some("k1"))
            .await
            .unwrap();
        assert_eq!(mixed, vec![d("a", 1), d("c", 1)]);
        let other = e.publish(&player("a"), body("t", "4"), Some("k2")).await;
        assert_eq!(other.unwrap(), vec![d("a", 2)]);
        assert_eq!(one(e, "a", "5").await, 3);
        assert_eq!(one(e, "a", "5").await, 4);
        let evs = e.read("a", 0, 10).await.unwrap();
        assert_eq!(seqs(&evs), vec![1, 2, 3, 4]);
        assert_eq!(evs[0].body.data.get(), "1");
        assert_eq!(evs[1].body.data.get(), "4");
    }

    pub async fn dedupe_key_expires(k: Kind) {
        let limits = Limits {
            dedupe_window: Duration::from_millis(500),
            ..Limits::default()
        };
        let f = k.with(limits).await;
        let e = &*f.engine;
        let t = player("a");
        assert_eq!(
            e.publish(&t, body("t", "1"), Some("k")).await.unwrap(),
            vec![d("a", 1)]
        );
        // Every attempt inside the window appends nothing; the first one after it appends 2.
        let seq = eventually(WAIT, "the dedupe key to expire", || async {
            let ds = e.publish(&t, body("t", "1"), Some("k")).await.unwrap();
            (ds[0].sequence_number != 1).then_some(ds[0].sequence_number)
        })
        .await;
        assert_eq!(seq, 2);
        assert_eq!(
            e.publish(&t, body("t", "1"), Some("k")).await.unwrap(),
            vec![d("a", 2)]
        );
        assert_eq!(seqs(&e.read("a", 0, 10).await.unwrap()), vec![1, 2]);
    }

    pub async fn acks_are_cumulative_clamped_and_never_backwards(k: Kind) {
        let f = k.fixture().await;
        let e = &*f.engine;
        publish_n(e, "a", 10).await;
        assert_eq!(e.ack("a", 4).await.unwrap(), cur(10, 4, 5));
        assert_eq!(
            seqs(&e.read("a", 0, 100).await.unwrap()),
            (5..=10).collect::<Vec<_>>()
        );
        assert_eq!(e.ack("a", 2).await.unwrap(), cur(10, 4, 5));
        assert_eq!(e.ack("a", 4).await.unwrap(), cur(10, 4, 5));
        assert_eq!(e.ack("a", 100).await.unwrap(), cur(10, 10, 11));
        assert!(e.read("a", 0, 100).await.unwrap().is_empty());
        assert_eq!(e.ack("a", u64::MAX).await.unwrap(), cur(10, 10, 11));
        assert_eq!(one(e, "a", "{}").await, 11);
        assert_eq!(e.cursor("a").await.unwrap(), cur(11, 10, 11));
        assert_eq!(seqs(&e.read("a", 0, 100).await.unwrap()), vec![11]);
    }

    pub async fn count_cap(k: Kind) {
        let limits = Limits {
            max_backlog: 5,
            ..Limits::default()
        };
        let f = k.with(limits).await;
        let e = &*f.engine;
        publish_n(e, "a", 12).await;
        assert_eq!(e.cursor("a").await.unwrap(), cur(12, 0, 8));
        assert_eq!(
            seqs(&e.read("a", 0, 100).await.unwrap()),
            vec![8, 9, 10, 11, 12]
        );
        assert_eq!(e.ack("a", 9).await.unwrap(), cur(12, 9, 10));
        assert_eq!(seqs(&e.read("a", 0, 100).await.unwrap()), vec![10, 11, 12]);
    }

    fn aged() -> Limits {
        Limits {
            max_backlog_age: Duration::from_millis(400),
            ..Limits::default()
        }
    }

    /// Waits until `age` has passed since `t0` (taken after the appends): a
    /// condition on the clock, not a guess.
    async fn past(t0: Instant, age: Duration) {
        let until = t0 + age + Duration::from_millis(50);
        tokio::time::sleep_until(until.into()).await;
    }

    pub async fn age_cap(k: Kind) {
        let f = k.with(aged()).await;
        let e = &*f.engine;
        publish_n(e, "a", 3).await;
        publish_n(e, "b", 3).await;
        let t0 = Instant::now();
        past(t0, aged().max_backlog_age).await;
        assert_eq!(one(e, "a", "{}").await, 4);
        // Every reader takes the cursor first, and the cursor drops what
        // has expired (an append may leave it for a while: the Redis engine
        // checks the age on one append in 16 of a player).
        assert_eq!(e.cursor("a").await.unwrap(), cur(4, 0, 4));
        assert_eq!(seqs(&e.read("a", 0, 100).await.unwrap()), vec![4]);
        assert_eq!(e.cursor("b").await.unwrap(), cur(3, 0, 4));
        assert!(e.read("b", 0, 100).await.unwrap().is_empty());
        let c = eventually(WAIT, "event 4 to expire", || async {
            let c = e.cursor("a").await.unwrap();
            (c.oldest == 5).then_some(c)
        })
        .await;
        assert_eq!(c, cur(4, 0, 5));
    }

    /// Appends alone (no reader) keep the log bounded by age too: within
    /// 16 appends of a player every expired event is gone from its log (the
    /// memory engine drops them on each append, the Redis engine on one in
    /// 16, `AGE_EVERY` in lua/lib.lua).
    pub async fn age_cap_by_appends_alone(k: Kind) {
        // Long enough that the 16 fresh events cannot expire while a slow
        // machine publishes them.
        let limits = Limits {
            max_backlog_age: Duration::from_millis(1500),
            ..Limits::default()
        };
        let f = k.with(limits.clone()).await;
        let e = &*f.engine;
        publish_n(e, "a", 3).await;
        let t0 = Instant::now();
        past(t0, limits.max_backlog_age).await;
        publish_n(e, "a", 16).await;
        // No cursor read before this one: only appends can have trimmed.
        let left = seqs(&e.read("a", 0, 100).await.unwrap());
        assert_eq!(
            left,
            (4..=19).collect::<Vec<u64>>(),
            "expired 1..=3 still in the log"
        );
    }

    /// The count cap drops the oldest events first; the age cap must still
    /// find and drop the survivors once they expire (the Redis engine keeps a
    /// lower bound of the oldest event's time, which the count cap leaves
    /// stale), and must keep what has not expired.
    pub async fn age_cap_after_count_cap(k: Kind) {
        let limits = Limits {
            max_backlog: 5,
            ..aged()
        };
        let f = k.with(limits).await;
        let e = &*f.engine;
        publish_n(e, "a", 12).await;
        assert_eq!(e.cursor("a").await.unwrap(), cur(12, 0, 8));
        let t0 = Instant::now();
        past(t0, aged().max_backlog_age).await;
        publish_n(e, "a", 2).await;
        assert_eq!(e.cursor("a").await.unwrap(), cur(14, 0, 13));
        assert_eq!(seqs(&e.read("a", 0, 100).await.unwrap()), vec![13, 14]);
        // Fresh events are not taken for expired ones.
        publish_n(e, "a", 1).await;
        assert_eq!(seqs(&e.read("a", 0, 100).await.unwrap()), vec![13, 14, 15]);
    }

    /// The next `n` events of a feed, by sequence number.
    async fn take(feed: &mut Feed, n: usize) -> Vec<u64> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let ev = tokio::time::timeout(WAIT, feed.next())
                .await
                .expect("an event within the deadline")
                .expect("the feed goes on");
            out.push(ev.sequence_number);
        }
        out
    }

    /// Publishes one more event and requires it to be the feed's next: no
    /// event (and no marker) was left between what was taken and it.
    async fn fence(e: &dyn Engine, feed: &mut Feed, p: &str) {
        let seq = one(e, p, r#"{"fence":true}"#).await;
        assert_eq!(take(feed, 1).await, vec![seq], "the fence comes next");
    }

    /// `resync_required` is connection-local (contract §5): an ack by
    /// another connection trimmed 1..6; a resume from 3 is told 7 and gets
    /// 7..10; nothing is appended, a second stale resume gets the same
    /// answer, and an up-to-date connection sees only the game's events.
    pub async fn resync_required_after_ack(k: Kind) {
        let f = k.fixture().await;
        let e = &*f.engine;
        let mut other = f.hub.subscribe("a");
        e.watch("a").await.expect("watch");
        publish_n(e, "a", 10).await;
        assert_eq!(e.ack("a", 6).await.unwrap(), cur(10, 6, 7));
        for _ in 0..2 {
            let mut o = open(&f, "a", ResumePoint::After(3)).await;
            assert_eq!((o.resync, o.cursor), (Some(7), cur(10, 6, 7)));
            assert_eq!(take(&mut o.feed, 4).await, vec![7, 8, 9, 10]);
        }
        assert_eq!(
            e.cursor("a").await.unwrap(),
            cur(10, 6, 7),
            "nothing appended"
        );
        let mut o = open(&f, "a", ResumePoint::After(3)).await;
        assert_eq!(take(&mut o.feed, 4).await, vec![7, 8, 9, 10]);
        fence(e, &mut o.feed, "a").await; // 11
        let live: Vec<u64> = {
            let mut v = Vec::new();
            while v.last() != Some(&11) {
                v.push(next_live(&mut other).await.sequence_number);
            }
            v
        };
        assert_eq!(live, (1..=11).collect::<Vec<_>>());
        // In range, beyond the end, and at the acked cursor: no marker.
        let o = open(&f, "a", ResumePoint::After(6)).await;
        assert_eq!(o.resync, None);
        let o = open(&f, "a", ResumePoint::After(999)).await;
        assert_eq!(o.resync, None);
        let mut o = open(&f, "a", ResumePoint::Acked).await;
        assert_eq!(o.resync, None);
        assert_eq!(take(&mut o.feed, 5).await, vec![7, 8, 9, 10, 11]);
    }

    /// Cap 50, 300 unread events: a resume from 0 is told 251 and gets
    /// exactly 251..300, the newest 50 of the game's events; the marker
    /// displaces nothing, however often it is asked for.
    pub async fn resync_required_after_count_cap(k: Kind) {
        let limits = Limits {
            max_backlog: 50,
            ..Limits::default()
        };
        let f = k.with(limits).await;
        let e = &*f.engine;
        publish_n(e, "a", 300).await;
        for _ in 0..3 {
            let mut o = open(&f, "a", ResumePoint::After(0)).await;
            assert_eq!((o.resync, o.cursor), (Some(251), cur(300, 0, 251)));
            assert_eq!(take(&mut o.feed, 50).await, (251..=300).collect::<Vec<_>>());
        }
        assert_eq!(
            seqs(&e.read("a", 0, 100).await.unwrap()),
            (251..=300).collect::<Vec<_>>()
        );
        let mut o = open(&f, "a", ResumePoint::Acked).await;
        assert_eq!(o.resync, Some(251));
        assert_eq!(take(&mut o.feed, 50).await, (251..=300).collect::<Vec<_>>());
        fence(e, &mut o.feed, "a").await;
    }

    /// Every event expired: the oldest available is the next one to come.
    pub async fn resync_required_after_age_cap(k: Kind) {
        let f = k.with(aged()).await;
        let e = &*f.engine;
        publish_n(e, "a", 3).await;
        eventually(WAIT, "events 1..3 to expire", || async {
            (e.cursor("a").await.unwrap() == cur(3, 0, 4)).then_some(())
        })
        .await;
        let mut o = open(&f, "a", ResumePoint::After(0)).await;
        assert_eq!((o.resync, o.cursor), (Some(4), cur(3, 0, 4)));
        fence(e, &mut o.feed, "a").await; // 4
    }

    /// `Seen(N)` (SSE `Last-Event-ID`) acknowledges 1..N before it resumes;
    /// `After(N)` acknowledges nothing.
    pub async fn seen_point_acknowledges(k: Kind) {
        let f = k.fixture().await;
        let e = &*f.engine;
        publish_n(e, "a", 5).await;
        let mut o = open(&f, "a", ResumePoint::After(2)).await;
        assert_eq!((o.resync, o.cursor), (None, cur(5, 0, 1)));
        assert_eq!(take(&mut o.feed, 3).await, vec![3, 4, 5]);
        let mut o = open(&f, "a", ResumePoint::Seen(3)).await;
        assert_eq!((o.resync, o.cursor), (None, cur(5, 3, 4)));
        assert_eq!(take(&mut o.feed, 2).await, vec![4, 5]);
        fence(e, &mut o.feed, "a").await;
        // Past the last: clamped, nothing to replay.
        let mut o = open(&f, "a", ResumePoint::Seen(u64::MAX)).await;
        assert_eq!((o.resync, o.cursor), (None, cur(6, 6, 7)));
        fence(e, &mut o.feed, "a").await;
    }

    /// A repeat of a room publish (same `id`, same room) answers the first
    /// publish's deliveries and appends nothing, also after the room's
    /// members changed; another `id` reaches the members of now.
    pub async fn room_publish_repeat_answers_the_first(k: Kind) {
        let f = k.fixture().await;
        let e = &*f.engine;
        for p in ["a", "b"] {
            e.join("tavern", p).await.unwrap();
        }
        let room = Target::Room("tavern".into());
        let first = e.publish(&room, body("t", "1"), Some("r1")).await.unwrap();
        assert_eq!(first, vec![d("a", 1), d("b", 1)]);
        e.join("tavern", "c").await.unwrap();
        e.leave("tavern", "a").await.unwrap();
        let again = e.publish(&room, body("t", "1"), Some("r1")).await.unwrap();
        assert_eq!(again, first);
        assert_eq!(e.cursor("c").await.unwrap().last, 0, "c got nothing");
        assert_eq!(e.cursor("a").await.unwrap().last, 1);
        assert_eq!(e.cursor("b").await.unwrap().last, 1);
        let other = e.publish(&room, body("t", "2"), Some("r2")).await.unwrap();
        assert_eq!(other, vec![d("b", 2), d("c", 1)]);
        // Without an id every publish is new.
        let plain = e.publish(&room, body("t", "3"), None).await.unwrap();
        assert_eq!(plain, vec![d("b", 3), d("c", 2)]);
    }

    pub async fn room_fan_out(k: Kind) {
        let f = k.fixture().await;
        let e = &*f.engine;
        let mut sub_a = f.hub.subscribe("a");
        let mut sub_c = f.hub.subscribe("c");
        e.watch("a").await.expect("watch");
        e.watch("c").await.expect("watch");
        for p in ["c", "a", "b"] {
            e.join("tavern", p).await.unwrap();
        }
        assert_eq!(one(e, "b", "{}").await, 1);
        let data = RawValue::from_string(r#"{"say":"hi"}"#.into()).unwrap();
        let b = Arc::new(EventBody::now(
            "chat",
            data,
            Some("tavern".into()),
            Some("p1".into()),
        ));
        let room = Target::Room("tavern".into());
        let ds = e.publish(&room, b, Some("p1")).await.unwrap();
        assert_eq!(ds, vec![d("a", 1), d("b", 2), d("c", 1)]);
        for (p, seq) in [("a", 1), ("b", 2), ("c", 1)] {
            let evs = e.read(p, seq - 1, 10).await.unwrap();
            assert_eq!(seqs(&evs), vec![seq]);
            assert_eq!(evs[0].body.room_id.as_deref(), Some("tavern"));
            assert_eq!(evs[0].body.id.as_deref(), Some("p1"));
            assert_eq!(evs[0].body.data.get(), r#"{"say":"hi"}"#);
        }
        for sub in [&mut sub_a, &mut sub_c] {
            let ev = next_live(sub).await;
            assert_eq!(
                (ev.sequence_number, ev.body.event_type.as_str()),
                (1, "chat")
            );
            assert_eq!(ev.body.room_id.as_deref(), Some("tavern"));
        }
        let empty = Target::Room("void".into());
        assert!(e
            .publish(&empty, body("t", "{}"), None)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(e.cursor("a").await.unwrap().last, 1);
    }

    pub async fn membership(k: Kind) {
        let f = k.fixture().await;
        let e = &*f.engine;
        assert_eq!(e.join("tavern", "b").await.unwrap(), Some(vec![]));
        assert_eq!(e.join("tavern", "a").await.unwrap(), Some(strings(&["b"])));
        assert_eq!(
            e.join("tavern", "c").await.unwrap(),
            Some(strings(&["a", "b"]))
        );
        assert_eq!(e.join("tavern", "a").await.unwrap(), None);
        assert_eq!(
            e.members("tavern").await.unwrap(),
            strings(&["a", "b", "c"])
        );
        assert_eq!(e.join("inn", "a").await.unwrap(), Some(vec![]));
        assert_eq!(e.rooms_of("a").await.unwrap(), strings(&["inn", "tavern"]));
        assert_eq!(
            e.leave("tavern", "a").await.unwrap(),
            Some(strings(&["b", "c"]))
        );
        assert_eq!(e.leave("tavern", "a").await.unwrap(), None);
        assert_eq!(e.leave("nowhere", "a").await.unwrap(), None);
        assert_eq!(e.rooms_of("a").await.unwrap(), strings(&["inn"]));
        assert_eq!(e.leave("tavern", "b").await.unwrap(), Some(strings(&["c"])));
        assert_eq!(e.leave("tavern", "c").await.unwrap(), Some(vec![]));
        assert!(e.members("tavern").await.unwrap().is_empty());
        assert!(e.rooms_of("nobody").await.unwrap().is_empty());
    }

    fn cmd(p: &str, id: &str) -> Command {
        Command {
            player_id: p.into(),
            session_id: "s1".into(),
            kind: "command".into(),
            id: id.into(),
            payload: format!(r#"{{"command":"look","id":"{id}"}}"#),
        }
    }

    /// Commands a consumer took and never acknowledged (it stopped) can be
    /// taken over once idle long enough; acknowledged ones cannot.
    pub async fn commands_are_reclaimed(k: Kind) {
        let f = k.fixture().await;
        let e = &*f.engine;
        let hour = Duration::from_secs(3600);
        // Nothing pending in a group nobody has read with.
        assert!(e
            .claim_commands("game", "w2", 0, Duration::ZERO, 10)
            .await
            .unwrap()
            .is_empty());
        let mut ids = Vec::new();
        for n in 1..=3 {
            ids.push(
                e.push_command(&cmd("alice", &format!("c{n}")))
                    .await
                    .unwrap(),
            );
        }
        let taken = e
            .read_commands("game", "w1", 0, 2, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(taken.len(), 2);
        // Not idle for an hour: nothing to take over.
        assert!(e
            .claim_commands("game", "w2", 0, hour, 10)
            .await
            .unwrap()
            .is_empty());
        let claimed = e
            .claim_commands("game", "w2", 0, Duration::ZERO, 10)
            .await
            .unwrap();
        let claimed_ids: Vec<&str> = claimed.iter().map(|c| c.entry_id.as_str()).collect();
        assert_eq!(claimed_ids, vec![ids[0].as_str(), ids[1].as_str()]);
        assert_eq!(claimed[0].command, cmd("alice", "c1"));
        // Claiming counts as handing out again.
        assert!(e
            .claim_commands("game", "w3", 0, hour, 10)
            .await
            .unwrap()
            .is_empty());
        // `count` bounds a claim.
        let one = e
            .claim_commands("game", "w3", 0, Duration::ZERO, 1)
            .await
            .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].entry_id, ids[0]);
        e.ack_commands("game", 0, &ids[..2]).await.unwrap();
        assert!(e
            .claim_commands("game", "w2", 0, Duration::ZERO, 10)
            .await
            .unwrap()
            .is_empty());
        // The third was never handed out: it is read, not claimed.
        let rest = e
            .read_commands("game", "w2", 0, 10, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].entry_id, ids[2]);
    }

    pub async fn commands(k: Kind) {
        let f = k.fixture().await;
        let e = &*f.engine;
        let id1 = e.push_command(&cmd("alice", "c1")).await.unwrap();
        // Every push appends, a repeated id too (ids are the client's labels).
        let again = e.push_command(&cmd("alice", "c1")).await.unwrap();
        assert_ne!(again, id1);
        let id2 = e.push_command(&cmd("bob", "c1")).await.unwrap();
        let id3 = e.push_command(&cmd("alice", "c2")).await.unwrap();
        let got = e
            .read_commands("game", "w1", 0, 10, Duration::ZERO)
            .await
            .unwrap();
        let ids: Vec<&str> = got.iter().map(|c| c.entry_id.as_str()).collect();
        assert_eq!(
            ids,
            vec![id1.as_str(), again.as_str(), id2.as_str(), id3.as_str()]
        );
        assert_eq!(got[0].command, cmd("alice", "c1"));
        assert_eq!(got[1].command, cmd("alice", "c1"));
        assert_eq!(got[2].command, cmd("bob", "c1"));
        assert_eq!(got[3].command, cmd("alice", "c2"));
        let none = e
            .read_commands("game", "w1", 0, 10, Duration::from_millis(50))
            .await;
        assert!(none.unwrap().is_empty());
        e.ack_commands("game", 0, &[id1.clone(), again, id2, id3])
            .await
            .unwrap();
        // A new group starts from the oldest command kept.
        let other = e
            .read_commands("audit", "w9", 0, 1, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(other.len(), 1);
        assert_eq!(other[0].entry_id, id1);
        // A command pushed while a reader blocks wakes it: the reader waits
        // up to a minute, and must return with the command well before that
        // (within WAIT of the push). It is blocked before the push: the memory
        // engine registers for a wake-up in its first poll (nothing to hand
        // out, no I/O before it waits); Redis shows it in `blocked_clients`.
        let mut reader = Box::pin({
            let e = f.engine.clone();
            async move {
                e.read_commands("game", "w1", 0, 10, Duration::from_secs(60))
                    .await
            }
        });
        assert!(
            futures_util::poll!(&mut reader).is_pending(),
            "nothing to read yet"
        );
        let reader = tokio::spawn(reader);
        if let Some(server) = &f.server {
            blocked_clients_reach(server, 1).await;
        }
        let pushed = e.push_command(&cmd("alice", "c3")).await.unwrap();
        let reader = tokio::time::timeout(WAIT, reader)
            .await
            .expect("the push wakes the blocked reader long before its block ends")
            .expect("reader task")
            .unwrap();
        let ids: Vec<&str> = reader.iter().map(|c| c.entry_id.as_str()).collect();
        assert_eq!(ids, vec![pushed.as_str()]);
        assert_eq!(reader[0].command, cmd("alice", "c3"));
    }

    /// Polls `INFO clients` until at least `n` clients are blocked (a
    /// blocking read has reached the server).
    async fn blocked_clients_reach(server: &RedisServer, n: u64) {
        let c = server
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        eventually(WAIT, "a blocked reader on the server", || {
            let mut c = c.clone();
            async move {
                let info: String = ::redis::cmd("INFO")
                    .arg("clients")
                    .query_async(&mut c)
                    .await
                    .ok()?;
                let blocked: u64 = info
                    .lines()
                    .find_map(|l| l.strip_prefix("blocked_clients:"))?
                    .trim()
                    .parse()
                    .ok()?;
                (blocked >= n).then_some(())
            }
        })
        .await;
    }

    /// `engine::MAX_COMMANDS` (crate-private): about how many commands the
    /// upstream stream keeps.
    const MAX_COMMANDS: usize = 100_000;

    /// An entry id `ms-n` as a pair that sorts as the stream does.
    fn entry_key(id: &str) -> (u64, u64) {
        let (ms, n) = id.split_once('-').expect("an entry id is ms-n");
        (ms.parse().expect("ms"), n.parse().expect("n"))
    }

    /// Pushing past the cap keeps the stream bounded and keeps the newest
    /// commands: memory exactly `MAX_COMMANDS`; Redis (`XADD MAXLEN ~`,
    /// which trims whole nodes only) at least the cap and less than one node
    /// (`stream-node-max-entries`) more; the oldest kept is the oldest of
    /// the newest `len` pushed, so (ids being ordered) exactly the newest
    /// `len` are kept. The stream first gets `MAX_COMMANDS` entries (on
    /// Redis by a raw pipelined `XADD` of the same fields, a game server
    /// that was down a while; an engine push each costs a round trip),
    /// then `EXTRA` engine pushes from concurrent writers.
    pub async fn commands_are_capped(k: Kind) {
        const EXTRA: usize = 3_000;
        const WRITERS: usize = 16;
        let total = MAX_COMMANDS + EXTRA;
        let f = k.fixture().await;
        let mut pushed: Vec<(String, usize)> = Vec::with_capacity(total);
        // Straight to the server that holds `mythos:commands` (on a
        // cluster, the master of its slot).
        let redis = match f.raw_client("mythos:commands") {
            Some(client) => Some(
                client
                    .get_multiplexed_async_connection()
                    .await
                    .expect("connect"),
            ),
            None => None,
        };
        let push = |from: usize, to: usize| {
            let mut tasks = Vec::new();
            for w in 0..WRITERS {
                let e = f.engine.clone();
                tasks.push(tokio::spawn(async move {
                    let mut ids = Vec::new();
                    for i in (from + w..to).step_by(WRITERS) {
                        ids.push((
                            e.push_command(&cmd("p", &format!("c{i}"))).await.unwrap(),
                            i,
                        ));
                    }
                    ids
                }));
            }
            tasks
        };
        match redis.clone() {
            Some(mut c) => {
                for chunk in (0..MAX_COMMANDS).collect::<Vec<_>>().chunks(10_000) {
                    let mut pipe = ::redis::pipe();
                    for i in chunk {
                        let c = cmd("p", &format!("c{i}"));
                        pipe.cmd("XADD")
                            .arg("mythos:commands")
                            .arg("*")
                            .arg("player_id")
                            .arg(&c.player_id)
                            .arg("session_id")
                            .arg(&c.session_id)
                            .arg("type")
                            .arg(&c.kind)
                            .arg("id")
                            .arg(&c.id)
                            .arg("payload")
                            .arg(&c.payload);
                    }
                    let ids: Vec<String> = pipe.query_async(&mut c).await.unwrap();
                    pushed.extend(ids.into_iter().zip(chunk.iter().copied()));
                }
            }
            None => {
                for t in push(0, MAX_COMMANDS) {
                    pushed.extend(t.await.unwrap());
                }
            }
        }
        for t in push(MAX_COMMANDS, total) {
            pushed.extend(t.await.unwrap());
        }
        pushed.sort_by_key(|(id, _)| entry_key(id));
        pushed.dedup_by(|a, b| a.0 == b.0);
        assert_eq!(pushed.len(), total, "every push got its own entry id");

        // A new group starts from the oldest command kept.
        let oldest = f
            .engine
            .read_commands("audit", "a1", 0, 1, Duration::ZERO)
            .await
            .unwrap();
        let (len, slack) = match redis {
            None => {
                let mut len = oldest.len();
                loop {
                    let batch = f
                        .engine
                        .read_commands("audit", "a1", 0, 10_000, Duration::ZERO)
                        .await
                        .unwrap();
                    if batch.is_empty() {
                        break;
                    }
                    len += batch.len();
                }
                (len, 0)
            }
            Some(mut c) => {
                let (_, node): (String, usize) = ::redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("stream-node-max-entries")
                    .query_async(&mut c)
                    .await
                    .unwrap();
                let len: usize = ::redis::cmd("XLEN")
                    .arg("mythos:commands")
                    .query_async(&mut c)
                    .await
                    .unwrap();
                (len, node - 1)
            }
        };
        assert!(
            (MAX_COMMANDS..=MAX_COMMANDS + slack).contains(&len),
            "kept {len} of {total}, cap {MAX_COMMANDS} (+{slack})"
        );
        let first_kept = total - len;
        assert_eq!(oldest.len(), 1);
        assert_eq!(
            (&oldest[0].entry_id, &oldest[0].command),
            (
                &pushed[first_kept].0,
                &cmd("p", &format!("c{}", pushed[first_kept].1))
            ),
            "the oldest kept is the oldest of the newest {len}"
        );
    }

    pub async fn accounts(k: Kind) {
        let f = k.fixture().await;
        let e = &*f.engine;
        let acct = Account {
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            role: "service".into(),
        };
        assert!(e.create_user("game", &acct).await.unwrap());
        let other = Account {
            password_hash: "x".into(),
            role: "admin".into(),
        };
        assert!(!e.create_user("game", &other).await.unwrap());
        assert_eq!(e.user("game").await.unwrap(), Some(acct));
        assert_eq!(e.user("nobody").await.unwrap(), None);
        e.ping().await.unwrap();
    }

    pub async fn hub_gets_fresh_appends_only(k: Kind) {
        let f = k.fixture().await;
        let e = &*f.engine;
        let mut sub = f.hub.subscribe("a");
        e.watch("a").await.expect("watch");
        let t = player("a");
        assert_eq!(
            e.publish(&t, body("t", "1"), Some("k1")).await.unwrap(),
            vec![d("a", 1)]
        );
        assert_eq!(
            e.publish(&t, body("t", "1"), Some("k1")).await.unwrap(),
            vec![d("a", 1)]
        );
        assert_eq!(
            e.publish(&t, body("t", "2"), Some("k2")).await.unwrap(),
            vec![d("a", 2)]
        );
        let first = next_live(&mut sub).await;
        assert_eq!((first.sequence_number, first.body.data.get()), (1, "1"));
        // Announcements arrive in order, so the deduped publish would sit here.
        let second = next_live(&mut sub).await;
        assert_eq!((second.sequence_number, second.body.data.get()), (2, "2"));
        assert!(sub.rx.try_recv().is_err());
    }

    pub async fn concurrent_publishers_get_dense_sequences(k: Kind) {
        const WRITERS: u64 = 8;
        const EACH: u64 = 40;
        let f = k.fixture().await;
        static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        T0.get_or_init(Instant::now);
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let e = f.engine.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..EACH {
                    let data = format!(r#"{{"w":{w},"i":{i}}}"#);
                    got.push(one(&*e, "hot", &data).await);
                }
                got
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            let got = t.await.unwrap();
            assert!(
                got.windows(2).all(|p| p[0] < p[1]),
                "a writer's seqs increase"
            );
            all.extend(got);
        }
        all.sort_unstable();
        let n = WRITERS * EACH;
        assert_eq!(all, (1..=n).collect::<Vec<_>>());
        let evs = f.engine.read("hot", 0, 1000).await.unwrap();
        assert_eq!(seqs(&evs), (1..=n).collect::<Vec<_>>());
        let mut next_i = vec![0u64; WRITERS as usize];
        for ev in &evs {
            let v: serde_json::Value = serde_json::from_str(ev.body.data.get()).unwrap();
            let (w, i) = (v["w"].as_u64().unwrap() as usize, v["i"].as_u64().unwrap());
            assert_eq!(i, next_i[w], "writer {w}'s events are in order");
            next_i[w] += 1;
        }
        assert_eq!(f.engine.cursor("hot").await.unwrap(), cur(n, 0, 1));
    }

    pub async fn concurrent_same_key_appends_once(k: Kind) {
        let f = k.fixture().await;
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let e = f.engine.clone();
            tasks.push(tokio::spawn(async move {
                let t = players(&["a", "b"]);
                e.publish(&t, body("t", "{}"), Some("same")).await.unwrap()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), vec![d("a", 1), d("b", 1)]);
        }
        assert_eq!(f.engine.cursor("a").await.unwrap(), cur(1, 0, 1));
        assert_eq!(f.engine.cursor("b").await.unwrap(), cur(1, 0, 1));
    }

    /// `commands_after` (what `export --commands` reads): oldest first,
    /// exclusive of `after`, bounded by `count`, and invisible to consumer
    /// groups (a game server still gets every command).
    pub async fn commands_after_reads_without_a_group(k: Kind) {
        let f = k.fixture().await;
        let e = &*f.engine;
        let mut ids = Vec::new();
        for (p, c) in [
            ("alice", "c1"),
            ("bob", "c1"),
            ("alice", "c2"),
            ("carol", "c1"),
        ] {
            ids.push(e.push_command(&cmd(p, c)).await.unwrap());
        }
        let all = e.commands_after(0, "0-0", 100).await.unwrap();
        let got: Vec<&str> = all.iter().map(|c| c.entry_id.as_str()).collect();
        assert_eq!(got, ids.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(all[2].command, cmd("alice", "c2"));
        let page = e.commands_after(0, &ids[0], 2).await.unwrap();
        let got: Vec<&str> = page.iter().map(|c| c.entry_id.as_str()).collect();
        assert_eq!(got, vec![ids[1].as_str(), ids[2].as_str()]);
        assert!(e.commands_after(0, &ids[3], 10).await.unwrap().is_empty());
        assert!(e.commands_after(0, "0-0", 0).await.unwrap().is_empty());
        assert!(e.commands_after(0, "yesterday", 10).await.is_err());
        assert!(e.commands_after(1, "0-0", 10).await.is_err());
        let read = e
            .read_commands("game", "w1", 0, 10, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(read.len(), 4, "exporting consumed nothing");
    }

    /// `dedupe_keys` (what `inspect player` shows): the unexpired keys of
    /// one player only, sorted, the sample bounded.
    pub async fn dedupe_keys_are_listed_until_they_expire(k: Kind) {
        let limits = Limits {
            dedupe_window: Duration::from_millis(1500),
            ..Limits::default()
        };
        let f = k.with(limits).await;
        let e = &*f.engine;
        for key in ["k3", "k1", "k2"] {
            e.publish(&player("a"), body("t", "{}"), Some(key))
                .await
                .unwrap();
        }
        e.publish(&player("b"), body("t", "{}"), None)
            .await
            .unwrap();
        let keys = e.dedupe_keys("a", 2).await.unwrap();
        assert_eq!(keys.count, 3);
        assert_eq!(keys.sample, strings(&["k1", "k2"]));
        assert!(keys.complete);
        let none = e.dedupe_keys("b", 10).await.unwrap();
        assert_eq!((none.count, none.sample.len()), (0, 0));
        assert_eq!(e.dedupe_keys("nobody", 10).await.unwrap().count, 0);
        eventually(WAIT, "the dedupe keys expire", || async {
            (e.dedupe_keys("a", 10).await.unwrap().count == 0).then_some(())
        })
        .await;
    }

    /// `streams` (what `inspect streams` shows): the command stream's
    /// length, its groups and their pending entries, oldest first.
    /// Inspection answers what the engine knows (no placeholder): which
    /// consumer holds each pending command and how often it was handed out,
    /// and each consumer's pending count, the same on every engine.
    pub async fn streams_name_who_holds_what(k: Kind) {
        let f = k.fixture().await;
        let e = &*f.engine;
        let mut ids = Vec::new();
        for c in ["c1", "c2"] {
            ids.push(e.push_command(&cmd("alice", c)).await.unwrap());
        }
        e.read_commands("game", "w1", 0, 10, Duration::ZERO)
            .await
            .unwrap();
        let claimed = e
            .claim_commands("game", "w2", 0, Duration::ZERO, 1)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        let report = e.streams().await.unwrap();
        let s = report
            .iter()
            .find(|s| s.kind == "commands")
            .expect("commands");
        let g = &s.groups[0];
        let held: Vec<(&str, &str, u64)> = g
            .oldest_pending
            .iter()
            .map(|p| (p.entry_id.as_str(), p.consumer.as_str(), p.deliveries))
            .collect();
        assert_eq!(
            held,
            vec![(ids[0].as_str(), "w2", 2), (ids[1].as_str(), "w1", 1)]
        );
        let consumers: Vec<(&str, u64)> = g
            .consumers
            .iter()
            .map(|c| (c.name.as_str(), c.pending))
            .collect();
        assert_eq!(consumers, vec![("w1", 1), ("w2", 1)]);
    }

    pub async fn streams_report_length_groups_and_pending(k: Kind) {
        let f = k.fixture().await;
        let e = &*f.engine;
        let before = e.streams().await.unwrap();
        let commands = before
            .iter()
            .find(|s| s.kind == "commands")
            .expect("commands");
        assert_eq!((commands.length, commands.groups.len()), (0, 0));
        let mut ids = Vec::new();
        for c in ["c1", "c2", "c3"] {
            ids.push(e.push_command(&cmd("alice", c)).await.unwrap());
        }
        let got = e
            .read_commands("game", "w1", 0, 2, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(got.len(), 2);
        let report = e.streams().await.unwrap();
        let s = report
            .iter()
            .find(|s| s.kind == "commands")
            .expect("commands");
        assert_eq!((s.partition, s.length), (0, 3));
        assert_eq!(s.groups.len(), 1);
        let g = &s.groups[0];
        assert_eq!((g.name.as_str(), g.pending), ("game", 2));
        assert_eq!(g.last_delivered, ids[1]);
        let pending: Vec<&str> = g
            .oldest_pending
            .iter()
            .map(|p| p.entry_id.as_str())
            .collect();
        assert_eq!(pending, vec![ids[0].as_str(), ids[1].as_str()]);
        e.ack_commands("game", 0, &ids[..1]).await.unwrap();
        let report = e.streams().await.unwrap();
        let s = report
            .iter()
            .find(|s| s.kind == "commands")
            .expect("commands");
        assert_eq!(s.groups[0].pending, 1);
        assert_eq!(s.groups[0].oldest_pending[0].entry_id, ids[1]);
        // Every stream is reported once; dead letters only beside a publish stream.
        let publish = report.iter().filter(|s| s.kind == "publish").count();
        let dead = report.iter().filter(|s| s.kind == "dead").count();
        assert_eq!(publish, dead);
    }

    fn alice() -> RefreshFamily {
        RefreshFamily {
            player: "alice".into(),
            role: "player".into(),
        }
    }

    const MINUTE: Duration = Duration::from_secs(60);

    /// Each use rotates the family's one current hash; presenting an old
    /// one revokes the family, so its newest token stops working too.
    /// Revoking answers whose the family was, once.
    pub async fn refresh_families_rotate_and_reuse_revokes(k: Kind) {
        let f = k.fixture().await;
        let e = &*f.engine;
        let fam = "0123456789abcdef0123456789abcdef";
        e.create_family(fam, &alice(), "h1", Duration::from_secs(2))
            .await
            .unwrap();
        assert!(e.family_exists(fam).await.unwrap());
        assert_eq!(
            e.rotate_family(fam, "h1", "h2", MINUTE).await.unwrap(),
            Rotation::Rotated(alice())
        );
        if let Some(client) = f.raw_client(&format!("mythos:refresh:{{{fam}}}")) {
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            let key = format!("mythos:refresh:{{{fam}}}");
            // The rotation started the time to live again, at its own length.
            let ttl: i64 = ::redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut c)
                .await
                .unwrap();
            assert!(ttl > 2_000 && ttl <= 60_000, "pttl {ttl}");
            // Only hashes are stored.
            let fields: std::collections::HashMap<String, String> = ::redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut c)
                .await
                .unwrap();
            assert_eq!(fields.get("hash").map(String::as_str), Some("h2"));
            assert_eq!(fields.get("player").map(String::as_str), Some("alice"));
        }
        assert_eq!(
            e.rotate_family(fam, "h2", "h3", MINUTE).await.unwrap(),
            Rotation::Rotated(alice())
        );
        // h1 again: reuse. The family is gone, and h3 (the newest) with it.
        assert_eq!(
            e.rotate_family(fam, "h1", "h9", MINUTE).await.unwrap(),
            Rotation::Reused(alice())
        );
        assert!(!e.family_exists(fam).await.unwrap());
        assert_eq!(
            e.rotate_family(fam, "h3", "h4", MINUTE).await.unwrap(),
            Rotation::Unknown
        );
        // Revocation (logout), once.
        let other = "fedcba9876543210fedcba9876543210";
        e.create_family(other, &alice(), "x1", MINUTE)
            .await
            .unwrap();
        assert_eq!(e.revoke_family(other).await.unwrap(), Some(alice()));
        assert_eq!(e.revoke_family(other).await.unwrap(), None);
        assert_eq!(
            e.rotate_family(other, "x1", "x2", MINUTE).await.unwrap(),
            Rotation::Unknown
        );
        assert!(!e
            .family_exists("00000000000000000000000000000000")
            .await
            .unwrap());
    }

    /// Two requests presenting the same token at once: exactly one
    /// rotates, the other is reuse and revokes the family.
    pub async fn refresh_families_rotate_once_under_a_race(k: Kind) {
        let f = k.fixture().await;
        let e = f.engine.clone();
        for round in 0..20u32 {
            let fam = format!("{round:032x}");
            e.create_family(&fam, &alice(), "cur", MINUTE)
                .await
                .unwrap();
            let (a, b) = tokio::join!(
                e.rotate_family(&fam, "cur", "next-a", MINUTE),
                e.rotate_family(&fam, "cur", "next-b", MINUTE)
            );
            let mut got = [a.unwrap(), b.unwrap()];
            got.sort_by_key(|r| matches!(r, Rotation::Reused(_)));
            assert_eq!(
                got,
                [Rotation::Rotated(alice()), Rotation::Reused(alice())],
                "round {round}"
            );
            assert!(!e.family_exists(&fam).await.unwrap());
        }
    }

    /// An abandoned family expires after its time to live.
    pub async fn refresh_families_expire(k: Kind) {
        let f = k.fixture().await;
        let e = &*f.engine;
        let fam = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        e.create_family(fam, &alice(), "h1", Duration::from_millis(300))
            .await
            .unwrap();
        eventually(WAIT, "the family expires", || async {
            (!e.family_exists(fam).await.unwrap()).then_some(())
        })
        .await;
        assert_eq!(
            e.rotate_family(fam, "h1", "h2", MINUTE).await.unwrap(),
            Rotation::Unknown
        );
        assert_eq!(e.revoke_family(fam).await.unwrap(), None);
    }
}
