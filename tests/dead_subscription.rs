//! The broker's detection of a silently dead live subscription
//! (`src/engine/redis/live.rs`: the subscription is pinged every 5 s and
//! counts as lost when a ping gets no answer within 3 s). A stalled link —
//! every socket open, no byte moving, no error — is what only that ping can
//! see. It reads `mythos_live_resubscribes_total` from `/metrics`, and the
//! metrics recorder is global to the process: this binary holds this one
//! broker test, so the count is this node's alone.

/// Only the support this test uses.
#[allow(dead_code)]
mod support {
    pub mod broker;
    pub mod cluster;
    pub mod proxy;
    pub mod redis;
    pub use self::redis::{eventually, RedisServer};
}

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use support::broker::*;
use support::proxy::{Mode, Proxy};
use support::{eventually, RedisServer};

/// Detection takes up to one ping interval plus the ping timeout (8 s).
const DETECTION: Duration = Duration::from_secs(15);

async fn resubscribes(n: &Broker) -> u64 {
    let text = n.metrics_text().await;
    // Summed over the `reason` label.
    text.lines()
        .filter(|l| l.starts_with("mythos_live_resubscribes_total{"))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(_, v)| v.trim().parse::<u64>().expect("a count"))
        .sum()
}

async fn readyz(n: &Broker) -> u16 {
    n.request(reqwest::Method::GET, "/readyz", None).await.0
}

/// The ids of the clients subscribed to a channel (`CLIENT LIST` `sub=`).
async fn subscribers(redis: &RedisServer) -> BTreeSet<u64> {
    let mut c = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut c)
        .await
        .expect("CLIENT LIST");
    list.lines()
        .filter(|l| {
            l.split(' ')
                .any(|f| f.strip_prefix("sub=").is_some_and(|n| n != "0"))
        })
        .map(|l| {
            l.split(' ')
                .find_map(|f| f.strip_prefix("id="))
                .and_then(|id| id.parse().ok())
                .expect("id=")
        })
        .collect()
}

/// A node whose link to Redis stalls (every socket open, nothing moving)
/// for longer than the ping interval plus the ping timeout: `/readyz` goes
/// 503; the listener counts the subscription as lost (exactly one
/// resubscribe); once the link moves again the node subscribes on a new
/// connection, `/readyz` is 200, and the same WebSocket, without any new
/// event to hint it, gets exactly the events another node published during
/// the stall — then a fence published through the recovered node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_subscription_is_detected_and_replaced() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], redis.port()))).await;
    let mut c = config();
    c.redis_url = Some(format!("redis://127.0.0.1:{}/", proxy.port()));
    // The test does not read (so does not answer pings) during the stall.
    c.idle_timeout = Duration::from_secs(120);
    let node = Broker::start(c).await;
    let mut c = config();
    c.redis_url = Some(redis.url());
    let other = Broker::start(c).await;

    let (mut ws, _) = node.ws_player("alice", None).await;
    assert_eq!(other.publish_n("alice", 3).await, range(1, 3));
    assert_eq!(ws.seqs(3).await, range(1, 3));
    // Only the node holding alice's connection follows her channel.
    let subscribed = subscribers(&redis).await;
    assert_eq!(subscribed.len(), 1, "one subscriber: {subscribed:?}");
    assert_eq!(resubscribes(&node).await, 0);
    assert_eq!(readyz(&node).await, 200);

    proxy.set_mode(Mode::Stall);
    assert_eq!(other.publish_n("alice", 2).await, range(4, 5));
    eventually(
        PATIENCE,
        "/readyz to answer 503 during the stall",
        || async { (readyz(&node).await == 503).then_some(()) },
    )
    .await;
    eventually(
        DETECTION,
        "the listener to count the subscription lost",
        || async { (resubscribes(&node).await == 1).then_some(()) },
    )
    .await;
    assert_eq!(other.publish_n("alice", 2).await, range(6, 7));

    proxy.set_mode(Mode::Pass);
    eventually(PATIENCE, "/readyz to answer 200 again", || async {
        (readyz(&node).await == 200).then_some(())
    })
    .await;
    // Subscribed again on a new connection; the stalled one is gone.
    let now = eventually(PATIENCE, "the old subscription to go", || {
        let (redis, subscribed) = (&redis, &subscribed);
        async move {
            let now = subscribers(redis).await;
            (now.len() == 1 && now != *subscribed).then_some(now)
        }
    })
    .await;
    assert_eq!(
        now.intersection(&subscribed).count(),
        0,
        "this node's subscription is new: {subscribed:?} → {now:?}"
    );
    // The resubscribe's nudge alone brings the continuation.
    assert_eq!(ws.seqs(4).await, range(4, 7));
    let fence = node.publish_n("alice", 1).await;
    assert_eq!(fence, vec![8]);
    assert_eq!(ws.seqs(1).await, fence);
    assert_eq!(resubscribes(&node).await, 1, "exactly one resubscribe");
}
