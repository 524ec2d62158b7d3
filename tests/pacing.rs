//! Replay is paced by the socket: a client that reads slowly during a
//! 10 000-event replay gets all of it, in order, once, and the broker's memory
//! stays bounded — over WebSocket and over SSE. Alone in its own test binary because it measures the
//! process's resident memory (the broker runs in the test process); the two
//! engines' runs take turns.

mod support;

use std::time::Duration;

use serde_json::json;
use support::broker::*;

on_both_engines!(
    replay_is_paced_by_a_slow_reader_with_bounded_memory,
    sse_replay_is_paced_by_a_slow_reader_with_bounded_memory,
);

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

const EVENTS: u64 = 10_000;
const PAD: usize = 4 * 1024; // 10 000 x 4 KiB = 40 MiB of replay

/// A client of either transport.
enum Reader<'a> {
    Ws(&'a mut WsClient),
    Sse(&'a mut SseClient),
}

impl Reader<'_> {
    async fn seqs(&mut self, n: usize) -> Vec<u64> {
        match self {
            Reader::Ws(ws) => ws.seqs(n).await,
            Reader::Sse(sse) => sse.seqs(n).await,
        }
    }
}

/// Reads the whole replay slowly; returns it and how much the process's
/// memory grew at the peak.
async fn read_slowly(mut r: Reader<'_>) -> (Vec<u64>, u64) {
    let before = rss();
    let mut got = Vec::with_capacity(EVENTS as usize);
    let mut peak = before;
    while (got.len() as u64) < EVENTS {
        got.extend(r.seqs(100).await);
        // A slow reader: it pauses after every 100 events, long enough for
        // the broker to fill every buffer it would fill.
        tokio::time::sleep(Duration::from_millis(5)).await;
        peak = peak.max(rss());
    }
    (got, peak.saturating_sub(before))
}

/// Catches: a WebSocket writer that reads the log ahead of the socket (the
/// replay buffered in the broker).
async fn replay_is_paced_by_a_slow_reader_with_bounded_memory(kind: Kind) {
    let _one = MEASURING.lock().await;
    let n = Node::start(kind, |_| {}).await;
    append(&n, "alice", EVENTS as usize, PAD).await;
    let (mut ws, _) = n.ws_player("alice", Some(0)).await;
    let (got, grown) = read_slowly(Reader::Ws(&mut ws)).await;
    assert_eq!(got, range(1, EVENTS), "all of it, in order, once");
    fence(&n, &mut ws, "alice", EVENTS + 1).await;
    bounded(grown);
}

/// The same over SSE. Catches: an SSE stream that takes the log faster than
/// the socket (an unbounded body queue, chunks made ahead of the client).
async fn sse_replay_is_paced_by_a_slow_reader_with_bounded_memory(kind: Kind) {
    let _one = MEASURING.lock().await;
    let n = Node::start(kind, |_| {}).await;
    append(&n, "alice", EVENTS as usize, PAD).await;
    let mut sse = n
        .sse("/v1/events", &player_token("alice"), Some("0"))
        .await
        .expect("sse");
    let (got, grown) = read_slowly(Reader::Sse(&mut sse)).await;
    assert_eq!(got, range(1, EVENTS), "all of it, in order, once");
    // Nothing more: the fence is the next event.
    let d = n
        .publish(json!({"player": "alice"}), "fence", json!({}))
        .await;
    assert_eq!(d[0].1, EVENTS + 1);
    let e = sse.next_event().await.expect("the fence");
    assert_eq!((e.seq(), e.event.as_deref()), (EVENTS + 1, Some("fence")));
    bounded(grown);
}

fn bounded(grown: u64) {
    eprintln!("memory grew by {} KiB at the peak", grown / 1024);
    // Buffering the replay for this socket would take 40 MiB or more; what
    // may legitimately grow is a read batch (256 events, 1 MiB) and framing.
    assert!(
        grown < 24 * 1024 * 1024,
        "memory grew by {} MiB during a 40 MiB replay to a slow reader",
        grown / (1024 * 1024)
    );
}
