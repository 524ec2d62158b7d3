//! `session::Feed` by hand: the log is the truth, live notifications are
//! hints. Gaps, duplicates and nudges are fed to the feed's hub directly,
//! with the engine appending to a log whose own notifications go elsewhere
//! (a "silent" engine), so each case is exactly the one under test.
//!
//! Uses the public API only (MemoryEngine + Hub + Feed); `Feed::open` is
//! called in one place, [`open`].

use std::sync::Arc;
use std::time::Duration;

use mythos_broker::engine::memory::MemoryEngine;
use mythos_broker::engine::{Engine, Limits, LiveSink};
use mythos_broker::hub::Hub;
use mythos_broker::presence::{Settings, Tracker};
use mythos_broker::protocol::{Event, EventBody, Target};
use mythos_broker::session::{self, Feed, FeedEnd, ResumePoint};

const PATIENCE: Duration = Duration::from_secs(5);

/// The one call of `session::open`: a feed resuming after `after`.
async fn open(engine: &Arc<dyn Engine>, hub: &Arc<Hub>, player: &str, after: u64) -> Feed {
    let presence = Tracker::new(engine.clone(), Settings::new("feed"), Default::default());
    session::open(
        engine.clone(),
        hub,
        &presence,
        player,
        ResumePoint::After(after),
    )
    .await
    .expect("feed opens")
    .feed
}

/// An engine whose appends notify `hub`.
fn engine_on(hub: &Arc<Hub>) -> Arc<dyn Engine> {
    Arc::new(MemoryEngine::new(Limits::default(), hub.clone()))
}

/// An engine whose appends notify nobody the test's feeds listen to.
fn silent_engine() -> Arc<dyn Engine> {
    engine_on(&Hub::new(16))
}

async fn append(engine: &Arc<dyn Engine>, player: &str, n: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    for i in 0..n {
        let data = serde_json::value::to_raw_value(&serde_json::json!({ "i": i })).expect("raw");
        let d = engine
            .publish(
                &Target::Player(player.into()),
                Arc::new(EventBody::now("tick", data, None, None)),
                None,
            )
            .await
            .expect("append");
        seqs.push(d[0].sequence_number);
    }
    seqs
}

/// Event `seq` of `player`, as stored.
async fn stored(engine: &Arc<dyn Engine>, player: &str, seq: u64) -> Event {
    let e = engine.read(player, seq - 1, 1).await.expect("read");
    assert_eq!(e.first().map(|e| e.sequence_number), Some(seq));
    e.into_iter().next().expect("event")
}

async fn next(feed: &mut Feed) -> u64 {
    tokio::time::timeout(PATIENCE, feed.next())
        .await
        .expect("an event within the deadline")
        .expect("the feed goes on")
        .sequence_number
}

async fn take(feed: &mut Feed, n: usize) -> Vec<u64> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(next(feed).await);
    }
    v
}

/// Drives the feed until it waits for live notifications, asserting that
/// nothing is ready (the memory log answers at once: 100 ms is plenty for a
/// read that returns nothing). `next` is cancel-safe.
async fn assert_idle(feed: &mut Feed) {
    if let Ok(r) = tokio::time::timeout(Duration::from_millis(100), feed.next()).await {
        panic!(
            "nothing should be ready, got {:?}",
            r.map(|e| e.sequence_number)
        );
    }
    assert!(feed.try_next().is_none());
}

fn range(a: u64, b: u64) -> Vec<u64> {
    (a..=b).collect()
}

#[tokio::test]
async fn replays_the_log_then_continues_live() {
    let hub = Hub::new(16);
    let engine = engine_on(&hub);
    append(&engine, "alice", 3).await;
    let mut feed = open(&engine, &hub, "alice", 1).await;
    assert_eq!(
        take(&mut feed, 2).await,
        range(2, 3),
        "from after the resume point"
    );
    assert_idle(&mut feed).await;
    append(&engine, "alice", 2).await;
    assert_eq!(take(&mut feed, 2).await, range(4, 5));
    assert_idle(&mut feed).await;
}

#[tokio::test]
async fn live_duplicates_are_dropped() {
    let hub = Hub::new(16);
    let engine = silent_engine();
    append(&engine, "alice", 3).await;
    let mut feed = open(&engine, &hub, "alice", 0).await;
    assert_eq!(take(&mut feed, 3).await, range(1, 3));
    assert_idle(&mut feed).await;
    // Notifications of what the replay already sent (as after a re-subscribe).
    for seq in [1, 2, 3, 3] {
        hub.deliver("alice", &stored(&engine, "alice", seq).await);
    }
    append(&engine, "alice", 1).await;
    let four = stored(&engine, "alice", 4).await;
    hub.deliver("alice", &four);
    hub.deliver("alice", &four);
    assert_eq!(next(&mut feed).await, 4);
    assert_idle(&mut feed).await;
}

#[tokio::test]
async fn a_gap_sends_the_feed_back_to_the_log() {
    let hub = Hub::new(16);
    let engine = silent_engine();
    append(&engine, "alice", 1).await;
    let mut feed = open(&engine, &hub, "alice", 0).await;
    assert_eq!(next(&mut feed).await, 1);
    assert_idle(&mut feed).await;
    // 2 and 3 are appended but their notifications are lost; 4's arrives.
    append(&engine, "alice", 3).await;
    hub.deliver("alice", &stored(&engine, "alice", 4).await);
    assert_eq!(
        take(&mut feed, 3).await,
        range(2, 4),
        "2 and 3 from the log"
    );
    // A late notification of 3 changes nothing.
    hub.deliver("alice", &stored(&engine, "alice", 3).await);
    assert_idle(&mut feed).await;
}

#[tokio::test]
async fn a_nudge_makes_a_live_feed_reread_the_log() {
    let hub = Hub::new(16);
    let engine = silent_engine();
    append(&engine, "alice", 1).await;
    let mut feed = open(&engine, &hub, "alice", 0).await;
    assert_eq!(next(&mut feed).await, 1);
    assert_idle(&mut feed).await;
    // Appended with no notification at all (a Redis subscription that dropped).
    append(&engine, "alice", 2).await;
    assert_idle(&mut feed).await;
    hub.nudge_all();
    assert_eq!(take(&mut feed, 2).await, range(2, 3));
    assert_idle(&mut feed).await;
    // A nudge with nothing new sends nothing.
    hub.nudge_all();
    assert_idle(&mut feed).await;
}

#[tokio::test]
async fn overflow_while_replaying_is_lagged_not_slow() {
    let hub = Hub::new(2);
    let engine = engine_on(&hub);
    append(&engine, "alice", 5).await;
    let mut feed = open(&engine, &hub, "alice", 0).await;
    // Still replaying: these overflow the queue of 2 while nothing is read.
    append(&engine, "alice", 10).await;
    assert_eq!(
        hub.slow_consumers(),
        0,
        "a replaying feed is never a slow consumer"
    );
    assert_eq!(take(&mut feed, 15).await, range(1, 15));
    assert_idle(&mut feed).await;
    assert!(!feed.state().is_slow());
    append(&engine, "alice", 1).await;
    assert_eq!(next(&mut feed).await, 16);
}

#[tokio::test]
async fn overflow_while_live_is_a_slow_consumer() {
    let hub = Hub::new(2);
    let engine = engine_on(&hub);
    let mut feed = open(&engine, &hub, "alice", 0).await;
    assert_idle(&mut feed).await;
    append(&engine, "alice", 3).await;
    assert_eq!(hub.slow_consumers(), 1);
    assert!(feed.state().is_slow());
    assert_eq!(hub.subscribers(), 0, "the hub let go of the queue");
    // What was queued may still come out, in order; then the feed ends.
    let mut got = Vec::new();
    let end = loop {
        match tokio::time::timeout(PATIENCE, feed.next()).await {
            Ok(Ok(e)) => got.push(e.sequence_number),
            Ok(Err(e)) => break e,
            Err(_) => panic!("the feed must end"),
        }
    };
    assert!(matches!(end, FeedEnd::SlowConsumer), "{end:?}");
    assert_eq!(got, range(1, got.len() as u64));
    assert!(got.len() <= 2);
}

#[tokio::test]
async fn feeds_of_other_players_are_independent() {
    let hub = Hub::new(16);
    let engine = engine_on(&hub);
    let mut alice = open(&engine, &hub, "alice", 0).await;
    let mut bob = open(&engine, &hub, "bob", 0).await;
    append(&engine, "bob", 2).await;
    append(&engine, "alice", 1).await;
    assert_eq!(next(&mut alice).await, 1);
    assert_eq!(take(&mut bob, 2).await, range(1, 2));
    assert_idle(&mut alice).await;
    assert_idle(&mut bob).await;
}
