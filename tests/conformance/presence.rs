//! Presence cases of the conformance suite (`tests/conformance.rs` runs each
//! on the memory engine, on Redis and on a Redis Cluster): the machine of
//! `src/engine/presence.rs` through the engine trait, facts checked by
//! their per-player sequence number.

use std::time::Duration;

use mythos_broker::engine::presence::{Fact, Reason, State};
use mythos_broker::engine::Engine;

use super::{eventually, Kind, WAIT};

const GRACE: Duration = Duration::from_millis(300);

/// `(seq, state, reason)` of facts, for comparing.
fn brief(facts: &[Fact]) -> Vec<(u64, State, Reason)> {
    facts.iter().map(|f| (f.seq, f.state, f.reason)).collect()
}

/// Every fact of `player` in the stream, oldest first.
async fn facts_of(e: &dyn Engine, player: &str) -> Vec<Fact> {
    let mut out = Vec::new();
    for partition in 0..e.command_partitions() {
        let mut after = "0-0".to_string();
        loop {
            let page = e
                .presence_facts(partition, &after, 100)
                .await
                .expect("facts");
            let Some(last) = page.last() else { break };
            after = last.entry_id.clone();
            out.extend(
                page.into_iter()
                    .map(|f| f.fact)
                    .filter(|f| f.player_id == player),
            );
        }
    }
    out
}

async fn state_of(e: &dyn Engine, player: &str) -> State {
    e.presence_of(&[player.to_string()])
        .await
        .expect("presence")[0]
        .state
}

/// Sweeps (as node `n0`) until a sweep produces a fact for `player`.
async fn swept(e: &dyn Engine, player: &str, grace: Duration) -> Fact {
    eventually(WAIT, "a sweep to produce the fact", || async {
        let facts = e.presence_sweep("n0", grace).await.expect("sweep");
        facts.into_iter().find(|f| f.player_id == player)
    })
    .await
}

pub async fn presence_tabs_grace_and_expiry(k: Kind) {
    let f = k.fixture().await;
    let e = &*f.engine;
    assert_eq!(state_of(e, "alice").await, State::Offline);
    let join = e
        .presence_connect("n1", "alice")
        .await
        .unwrap()
        .expect("a join");
    assert_eq!(
        (join.seq, join.state, join.reason),
        (1, State::Online, Reason::Connect)
    );
    // Three tabs on two nodes are one join.
    assert_eq!(e.presence_connect("n2", "alice").await.unwrap(), None);
    assert_eq!(e.presence_connect("n2", "alice").await.unwrap(), None);
    assert_eq!(
        e.presence_disconnect("n1", "alice", GRACE, Reason::Timeout)
            .await
            .unwrap(),
        None
    );
    let r = &e.presence_of(&["alice".into()]).await.unwrap()[0];
    assert_eq!(
        (r.state, r.nodes.clone()),
        (State::Online, vec!["n2".to_string()])
    );
    // The last one: linkdead, silently.
    assert_eq!(
        e.presence_disconnect("n2", "alice", Duration::from_secs(60), Reason::Timeout)
            .await
            .unwrap(),
        None
    );
    let r = &e.presence_of(&["alice".into()]).await.unwrap()[0];
    assert_eq!(r.state, State::Linkdead);
    assert!(r.until_ms.is_some_and(|u| u > r.since_ms), "{r:?}");
    // Back within the grace: online, no fact; a sweep finds nothing to do.
    assert_eq!(e.presence_connect("n1", "alice").await.unwrap(), None);
    assert_eq!(state_of(e, "alice").await, State::Online);
    assert!(e.presence_sweep("n0", GRACE).await.unwrap().is_empty());
    // Gone for good: one leave after the grace, reason timeout.
    e.presence_disconnect("n1", "alice", GRACE, Reason::Timeout)
        .await
        .unwrap();
    let leave = swept(e, "alice", GRACE).await;
    assert_eq!(
        (leave.seq, leave.state, leave.reason),
        (2, State::Offline, Reason::Timeout)
    );
    assert_eq!(state_of(e, "alice").await, State::Offline);
    assert_eq!(
        brief(&facts_of(e, "alice").await),
        vec![
            (1, State::Online, Reason::Connect),
            (2, State::Offline, Reason::Timeout)
        ]
    );
}

pub async fn presence_logout_and_zero_grace_are_at_once(k: Kind) {
    let f = k.fixture().await;
    let e = &*f.engine;
    e.presence_connect("n1", "bob").await.unwrap();
    e.presence_connect("n2", "bob").await.unwrap();
    let out = e
        .presence_logout("n1", "bob")
        .await
        .unwrap()
        .expect("a leave");
    assert_eq!((out.seq, out.reason), (2, Reason::Logout));
    // Nothing twice: a second logout, the other node's late disconnect.
    assert_eq!(e.presence_logout("n1", "bob").await.unwrap(), None);
    assert_eq!(
        e.presence_disconnect("n2", "bob", GRACE, Reason::Timeout)
            .await
            .unwrap(),
        None
    );
    // A zero grace: offline at the last disconnect.
    e.presence_connect("n1", "bob").await.unwrap();
    let out = e
        .presence_disconnect("n1", "bob", Duration::ZERO, Reason::Timeout)
        .await
        .unwrap()
        .expect("a leave");
    assert_eq!((out.seq, out.state), (4, State::Offline));
    assert_eq!(
        brief(&facts_of(e, "bob").await),
        vec![
            (1, State::Online, Reason::Connect),
            (2, State::Offline, Reason::Logout),
            (3, State::Online, Reason::Connect),
            (4, State::Offline, Reason::Timeout),
        ]
    );
}

pub async fn presence_of_a_dead_node_is_reaped(k: Kind) {
    let f = k.fixture().await;
    let e = &*f.engine;
    let short = Duration::from_millis(300);
    assert!(
        e.presence_heartbeat("n1", short).await.unwrap(),
        "a first lease"
    );
    assert!(!e.presence_heartbeat("n1", short).await.unwrap());
    assert!(e
        .presence_heartbeat("n0", Duration::from_secs(60))
        .await
        .unwrap());
    for p in ["carol", "dave"] {
        e.presence_hold("n1", p).await.unwrap();
        e.presence_connect("n1", p).await.unwrap();
    }
    // dave has a second connection on a live node: not his last.
    e.presence_hold("n0", "dave").await.unwrap();
    e.presence_connect("n0", "dave").await.unwrap();
    // n1 stops refreshing: its players go linkdead, then offline (node_lost).
    let out = swept(e, "carol", GRACE).await;
    assert_eq!(
        (out.seq, out.state, out.reason),
        (2, State::Offline, Reason::NodeLost)
    );
    assert_eq!(state_of(e, "dave").await, State::Online);
    let leases = e.presence_leases().await.unwrap();
    assert!(
        leases.iter().all(|l| l.node != "n1"),
        "the dead lease is gone: {leases:?}"
    );
    assert!(leases.iter().any(|l| l.node == "n0"));
    // n1 comes back: its lease is new again (it re-asserts its players).
    assert!(e.presence_heartbeat("n1", short).await.unwrap());
    e.presence_release("n1").await.unwrap();
    assert!(e
        .presence_leases()
        .await
        .unwrap()
        .iter()
        .all(|l| l.node != "n1"));
}

pub async fn presence_many_nodes_at_once_make_one_join_and_one_leave(k: Kind) {
    let f = k.fixture().await;
    let e = f.engine.clone();
    let nodes: Vec<String> = (0..8).map(|i| format!("n{i}")).collect();
    let joins =
        futures_util::future::join_all(nodes.iter().map(|n| e.presence_connect(n, "erin"))).await;
    assert_eq!(joins.into_iter().filter_map(|j| j.unwrap()).count(), 1);
    let leaves = futures_util::future::join_all(
        nodes
            .iter()
            .map(|n| e.presence_disconnect(n, "erin", Duration::ZERO, Reason::Timeout)),
    )
    .await;
    assert_eq!(leaves.into_iter().filter_map(|l| l.unwrap()).count(), 1);
    assert_eq!(
        brief(&facts_of(&*e, "erin").await),
        vec![
            (1, State::Online, Reason::Connect),
            (2, State::Offline, Reason::Timeout)
        ]
    );
}

pub async fn presence_room_events_are_opt_in(k: Kind) {
    let f = k.fixture().await;
    let e = &*f.engine;
    assert!(!e.room_presence_events("hall").await.unwrap());
    e.set_room_presence_events("hall", true).await.unwrap();
    assert!(e.room_presence_events("hall").await.unwrap());
    assert!(!e.room_presence_events("yard").await.unwrap());
    e.set_room_presence_events("hall", false).await.unwrap();
    assert!(!e.room_presence_events("hall").await.unwrap());
    // A malformed entry id is refused, not read as "from the start".
    assert!(e.presence_facts(0, "nonsense", 10).await.is_err());
}

pub async fn presence_a_node_back_from_a_stall_keeps_its_players(k: Kind) {
    let f = k.fixture().await;
    let e = &*f.engine;
    let short = Duration::from_millis(300);
    assert!(e.presence_heartbeat("n1.0", short).await.unwrap());
    e.presence_hold("n1.0", "hana").await.unwrap();
    e.presence_connect("n1.0", "hana").await.unwrap();
    // The node stalls past its lease (a timer passing, not a wait for work).
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Back: the expired lease is reported lost and not renewed, so the
    // node moves to a new name (hold + connect there, then drop the old).
    assert!(e.presence_heartbeat("n1.0", short).await.unwrap(), "lost");
    assert!(e
        .presence_heartbeat("n1.1", Duration::from_secs(60))
        .await
        .unwrap());
    e.presence_hold("n1.1", "hana").await.unwrap();
    assert_eq!(e.presence_connect("n1.1", "hana").await.unwrap(), None);
    assert_eq!(
        e.presence_disconnect("n1.0", "hana", GRACE, Reason::Timeout)
            .await
            .unwrap(),
        None
    );
    // A reaper takes the old name: nothing changes for hana.
    assert!(e.presence_sweep("n0", GRACE).await.unwrap().is_empty());
    let r = &e.presence_of(&["hana".into()]).await.unwrap()[0];
    assert_eq!(
        (r.state, r.nodes.clone()),
        (State::Online, vec!["n1.1".to_string()])
    );
    let leases = e.presence_leases().await.unwrap();
    assert!(
        leases.iter().all(|l| !l.node.ends_with("n1.0")),
        "{leases:?}"
    );
    assert_eq!(
        brief(&facts_of(e, "hana").await),
        vec![(1, State::Online, Reason::Connect)]
    );
}
