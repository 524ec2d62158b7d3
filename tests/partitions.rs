//! Partitioned Redis-native streams (`MYTHOS_COMMAND_PARTITIONS`,
//! `MYTHOS_PUBLISH_PARTITIONS`; docs/redis-layout.md), on one Redis and on a
//! Redis Cluster: a player's commands all land in the one partition its name
//! maps to, in the order they were accepted, and every partition is used;
//! entries XADDed to any publish partition reach their player; one partition
//! keeps today's key names.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use ::redis::aio::ConnectionLike;
use mythos_broker::engine::redis::keys;
use serde_json::json;
use support::broker::{fence, Kind, Node};

const COMMANDS: usize = 4;
const PUBLISH: usize = 3;

/// A connection to where `key` lives (the one Redis, or the master of its slot).
async fn conn_for(n: &Node, key: &str) -> impl ConnectionLike {
    let client = match (&n.redis, &n.lease) {
        (Some(r), _) => r.client(),
        (None, Some(l)) => support::cluster::master_client(&l.seeds, key),
        (None, None) => panic!("a Redis topology"),
    };
    client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

/// The stream's entries as (field → value) maps, oldest first.
async fn entries(n: &Node, key: &str) -> Vec<BTreeMap<String, String>> {
    let mut c = conn_for(n, key).await;
    let v: Vec<(String, BTreeMap<String, String>)> = ::redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .expect("XRANGE");
    v.into_iter().map(|(_, f)| f).collect()
}

/// Players whose commands land in every one of `COMMANDS` partitions.
fn players() -> Vec<String> {
    let mut by_partition: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for i in 0.. {
        let p = format!("p{i}");
        let part = keys::partition_of(&p, COMMANDS);
        let list = by_partition.entry(part).or_default();
        if list.len() < 2 {
            list.push(p);
        }
        if by_partition.len() == COMMANDS && by_partition.values().all(|l| l.len() == 2) {
            break;
        }
    }
    by_partition.into_values().flatten().collect()
}

async fn commands_stay_in_their_partition_in_order(kind: Kind) {
    let n = Node::start(kind, |c| {
        c.command_partitions = COMMANDS as u64;
        c.publish_partitions = PUBLISH as u64;
    })
    .await;
    let players = players();
    for p in &players {
        let (mut ws, _) = n.ws_player(p, None).await;
        for i in 0..10 {
            ws.send_json(json!({"type": "command", "id": format!("c{i}"), "command": "look", "args": [i.to_string()]}))
                .await;
            let a = ws.until_type("command_accepted").await.expect("accepted");
            assert_eq!(a["id"], format!("c{i}"));
        }
    }
    let mut seen = BTreeSet::new();
    for part in 0..COMMANDS {
        let key = keys::partition(keys::COMMANDS, part, COMMANDS);
        assert_ne!(key, keys::COMMANDS, "partitions have names of their own");
        let mut per_player: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for e in entries(&n, &key).await {
            per_player
                .entry(e["player_id"].clone())
                .or_default()
                .push(e["id"].clone());
        }
        assert!(!per_player.is_empty(), "partition {part} ({key}) is used");
        for (p, ids) in per_player {
            assert_eq!(
                keys::partition_of(&p, COMMANDS),
                part,
                "{p}'s commands are in its own partition"
            );
            let want: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
            assert_eq!(ids, want, "{p}: every command once, in order");
            seen.insert(p);
        }
    }
    assert_eq!(
        seen.len(),
        players.len(),
        "every player's commands were found"
    );
}

async fn every_publish_partition_is_consumed(kind: Kind) {
    let n = Node::start(kind, |c| c.publish_partitions = PUBLISH as u64).await;
    let (mut ws, _) = n.ws_player("alice", None).await;
    for part in 0..PUBLISH {
        let key = keys::partition(keys::PUBLISH, part, PUBLISH);
        let mut c = conn_for(&n, &key).await;
        let _: String = ::redis::cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg("to")
            .arg(r#"{"player":"alice"}"#)
            .arg("event_type")
            .arg("chat_message")
            .arg("data")
            .arg(json!({"part": part}).to_string())
            .query_async(&mut c)
            .await
            .expect("XADD");
        let e = ws.next_event().await.expect("the event");
        assert_eq!(
            (e["sequence_number"].as_u64(), e["data"]["part"].as_u64()),
            (Some(part as u64 + 1), Some(part as u64)),
            "{key}"
        );
    }
    // Nothing more (an entry consumed twice, from two partitions or two
    // consumers): the fence is next.
    fence(&n, &mut ws, "alice", PUBLISH as u64 + 1).await;
}

#[test]
fn one_partition_keeps_todays_names() {
    assert_eq!(keys::partition(keys::COMMANDS, 0, 1), "mythos:commands");
    assert_eq!(keys::partition(keys::PUBLISH, 0, 1), "mythos:publish");
}

mod one_redis {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commands_stay_in_their_partition_in_order() {
        super::commands_stay_in_their_partition_in_order(Kind::Redis).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_publish_partition_is_consumed() {
        super::every_publish_partition_is_consumed(Kind::Redis).await
    }
}

mod cluster {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commands_stay_in_their_partition_in_order() {
        super::commands_stay_in_their_partition_in_order(Kind::Cluster).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_publish_partition_is_consumed() {
        super::every_publish_partition_is_consumed(Kind::Cluster).await
    }
}
