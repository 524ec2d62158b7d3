//! Unit tests of `support::history`, compiled into `tests/harness.rs` only
//! (code in `support/` is part of every test binary).
use crate::support::history::*;

/// Two events to alice, both delivered, in order, acknowledged.
fn clean() -> History {
    let h = History::default();
    h.publish("a1", "alice", Answer::Unknown);
    h.publish("a1", "alice", Answer::Err("503 engine_unavailable".into()));
    h.publish("a1", "alice", Answer::Ok(Some(1)));
    h.publish("a2", "alice", Answer::Ok(Some(2)));
    h.fence("alice", "a2");
    h.connected("c", "alice");
    h.received("c", "alice", 1, Some("a1"));
    h.ended("c", "alice", "reset");
    h.connected("c", "alice");
    // A repeat of 1 after a reconnect is dropped by the dedupe.
    h.received("c", "alice", 1, Some("a1"));
    h.received("c", "alice", 2, Some("a2"));
    h.acked("c", "alice", 2);
    h
}

#[test]
fn a_clean_history_passes() {
    let r = clean().check();
    assert_eq!(r.anomalies(), 0, "{}", r.render());
    assert_eq!((r.published, r.attempts, r.errors, r.unknown), (2, 4, 1, 1));
    assert_eq!((r.received, r.connections, r.acks), (3, 2, 1));
    r.assert_clean("clean");
}

#[test]
fn lost() {
    let h = clean();
    h.publish("a3", "alice", Answer::Ok(Some(3)));
    let r = h.check();
    assert_eq!(r.lost, 1, "{}", r.render());
    assert!(
        r.render().contains("lost: c never got a3"),
        "{}",
        r.render()
    );
}

#[test]
fn a_publish_never_answered_200_is_not_lost_but_unconfirmed() {
    let h = clean();
    h.publish("a3", "alice", Answer::Unknown);
    let r = h.check();
    assert_eq!((r.lost, r.unconfirmed, r.anomalies()), (0, 1, 0));
    assert!(std::panic::catch_unwind(|| r.assert_clean("x")).is_err());
}

#[test]
fn unexpected() {
    let h = clean();
    h.received("c", "alice", 3, Some("never-published"));
    h.publish("b1", "bob", Answer::Ok(Some(1)));
    h.received("c", "alice", 4, Some("b1"));
    h.received("c", "alice", 5, None);
    let r = h.check();
    assert_eq!(r.unexpected, 3, "{}", r.render());
}

#[test]
fn duplicated() {
    let h = clean();
    h.received("c", "alice", 3, Some("a2"));
    let r = h.check();
    assert_eq!(r.duplicated, 1, "{}", r.render());
    assert_eq!(r.reused, 0);
}

#[test]
fn redelivered_on_one_connection() {
    let h = clean();
    // The same event twice on the second connection: a resend.
    h.received("c", "alice", 2, Some("a2"));
    let r = h.check();
    assert_eq!((r.redelivered, r.duplicated), (1, 0), "{}", r.render());
    assert!(
        r.render().contains("redelivered: c got sequence 2"),
        "{}",
        r.render()
    );
}

#[test]
fn reordered() {
    let h = History::default();
    for (id, seq) in [("x1", 1), ("x2", 2), ("x3", 3)] {
        h.publish(id, "alice", Answer::Ok(Some(seq)));
    }
    h.connected("c", "alice");
    h.received("c", "alice", 1, Some("x1"));
    h.received("c", "alice", 3, Some("x3"));
    h.received("c", "alice", 2, Some("x2"));
    let r = h.check();
    assert_eq!((r.reordered, r.lost), (2, 0), "{}", r.render());

    // A gap is a reorder too, even if the missing one never comes.
    let h = History::default();
    h.publish("y2", "bob", Answer::Ok(Some(2)));
    h.connected("c", "bob");
    h.received("c", "bob", 2, Some("y2"));
    assert_eq!(h.check().reordered, 1);
}

#[test]
fn sequence_reused() {
    let h = clean();
    h.publish("a3", "alice", Answer::Ok(Some(2)));
    h.received("c", "alice", 2, Some("a3"));
    let r = h.check();
    assert_eq!(r.reused, 1, "{}", r.render());
    // The later id hides behind the dedupe: the fence check still holds
    // (a2 was seen last), but the reuse is reported.
    assert!(r.anomalies() >= 1);
}

#[test]
fn mismatched_answer() {
    let h = clean();
    h.publish("a2", "alice", Answer::Ok(Some(7)));
    let r = h.check();
    assert_eq!(r.mismatched, 2, "{}", r.render());
}

#[test]
fn resync_and_fence() {
    let h = clean();
    h.resync("c", "alice", 1);
    h.fence("alice", "a1");
    let r = h.check();
    assert_eq!((r.resyncs, r.fence), (1, 1), "{}", r.render());
}

#[test]
fn the_report_panics_readably() {
    let h = clean();
    h.publish("a3", "alice", Answer::Ok(Some(3)));
    let err = std::panic::catch_unwind(|| h.check().assert_clean("demo")).expect_err("panics");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("demo: the history has anomalies") && msg.contains("lost=1"));
}
