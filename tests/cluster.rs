//! The Redis Cluster engine (`MYTHOS_REDIS_CLUSTER`) on a real 3-master,
//! 3-replica cluster started by the test (tests/support/cluster.rs).

mod support;

use support::cluster::RedisCluster;

/// The harness itself: six nodes, every slot served, and the faults it injects work.
#[test]
fn harness_starts_fails_over_and_moves_slots() {
    let mut c = RedisCluster::start();
    assert_eq!(c.masters().len(), 3);
    let slot = c.slot("mythos:player:{alice}:events");
    let first = c.master_of(slot);
    let other = c
        .masters()
        .into_iter()
        .find(|m| *m != first)
        .expect("another master");
    c.move_slot(slot, other);
    assert_eq!(c.master_of(slot), other);
    let killed = c.kill_master_of(slot);
    assert_eq!(killed, other);
    assert_ne!(c.master_of(slot), other);
    assert_eq!(c.masters().len(), 3, "the replica was promoted");
}
