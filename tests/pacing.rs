//! Replay is paced by the socket: a client that reads slowly during a
//! 10 000-event replay gets all of it, in order, once, and the broker's memory
//! stays bounded. Alone in its own test binary because it measures the
//! process's resident memory (the broker runs in the test process); the two
//! engines' runs take turns.

mod support;

use std::sync::Arc;
use std::time::Duration;

use mythos_broker::protocol::{EventBody, Target};
use serde_json::json;
use support::broker::*;

on_both_engines!(replay_is_paced_by_a_slow_reader_with_bounded_memory);

/// Appends `n` events of about `pad` bytes each to `player` through the
/// node's engine (the same path a publish takes, without HTTP round trips).
async fn append(node: &Broker, player: &str, n: usize, pad: usize) {
    let data = serde_json::value::to_raw_value(&json!({ "pad": "x".repeat(pad) })).expect("raw");
    for _ in 0..n {
        node.app()
            .engine
            .publish(
                &Target::Player(player.into()),
                Arc::new(EventBody::now("blob", data.clone(), None, None)),
                None,
            )
            .await
            .expect("append");
    }
}

/// Publishes a `fence` event and requires it to be the very next event on
/// `ws`, with sequence number `seq`: nothing (a duplicate, a stray resend)
/// came between what the test read and the fence.
async fn fence(node: &Broker, ws: &mut WsClient, player: &str, seq: u64) {
    let d = node
        .publish(json!({"player": player}), "fence", json!({}))
        .await;
    assert_eq!(d[0].1, seq, "the fence's sequence number");
    let e = ws.next_event().await.expect("the fence arrives");
    assert_eq!(
        (e["sequence_number"].as_u64(), e["event_type"].as_str()),
        (Some(seq), Some("fence")),
        "the next event after the expected ones must be the fence"
    );
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// One memory measurement at a time (both engines' tests share the process).
static MEASURING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn replay_is_paced_by_a_slow_reader_with_bounded_memory(kind: Kind) {
    const EVENTS: u64 = 10_000;
    const PAD: usize = 4 * 1024; // 10 000 x 4 KiB = 40 MiB of replay
    let _one = MEASURING.lock().await;
    let n = Node::start(kind, |_| {}).await;
    append(&n, "alice", EVENTS as usize, PAD).await;
    let before = rss();
    let (mut ws, _) = n.ws_player("alice", Some(0)).await;
    let mut got = Vec::with_capacity(EVENTS as usize);
    let mut peak = before;
    while (got.len() as u64) < EVENTS {
        got.extend(ws.seqs(100).await);
        // A slow reader: it pauses after every 100 events, long enough for
        // the broker to fill every buffer it would fill.
        tokio::time::sleep(Duration::from_millis(5)).await;
        peak = peak.max(rss());
    }
    assert_eq!(got, range(1, EVENTS), "all of it, in order, once");
    fence(&n, &mut ws, "alice", EVENTS + 1).await;
    let grown = peak.saturating_sub(before);
    // Buffering the replay for this socket would take 40 MiB or more; what
    // may legitimately grow is a read batch (256 events, 1 MiB) and framing.
    assert!(
        grown < 24 * 1024 * 1024,
        "memory grew by {} MiB during a 40 MiB replay to a slow reader",
        grown / (1024 * 1024)
    );
}
