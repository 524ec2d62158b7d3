//! Replay is paced by the socket: a client that reads slowly during a
//! 10 000-event replay gets all of it, in order, once, and the broker's memory
//! stays bounded. Alone in its own test binary because it measures the
//! process's resident memory (the broker runs in the test process); the two
//! engines' runs take turns.

mod support;

use std::time::Duration;

use support::broker::*;

on_both_engines!(replay_is_paced_by_a_slow_reader_with_bounded_memory);

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
