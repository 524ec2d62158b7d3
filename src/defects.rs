//! Deliberate defects for the mutation check (`scripts/mutation-check`):
//! proof that the suites fail when a guarantee breaks.
//!
//! Owns: which defect is switched on (`MYTHOS_DEFECT=<name>`, read once per
//! process) and the counters that make "one in N" deterministic. The hooks
//! themselves sit where the real code would break, each behind
//! `#[cfg(feature = "defects")]`, so a build without the feature has none of
//! this. Only debug builds may have it (a release build with the feature
//! does not compile). Must not touch: anything else.

#[cfg(not(debug_assertions))]
compile_error!("the `defects` feature injects delivery bugs: debug/test builds only");

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

/// One injected defect, named by `MYTHOS_DEFECT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defect {
    /// `drop_live`: every [`DROP_EVERY`]th live event a feed hands out is
    /// never written (the feed believes it was), a silent loss.
    DropLive,
    /// `skip_replay`: every log batch of two or more events read for a
    /// replay loses its second event.
    SkipReplay,
    /// `ack_before_append`: `POST /v1/publish` answers 200 at once and
    /// appends in the background; a failed append is never reported.
    AckBeforeAppend,
    /// `resend_batch`: every write of two or more events writes them twice.
    ResendBatch,
    /// `deliver_unconfirmed` (Redis with `MYTHOS_REDIS_WAIT_REPLICAS` ≥ 1):
    /// appends are announced before `WAIT` and log reads ignore the
    /// `confirmed` mark, so readers see events no replica holds.
    DeliverUnconfirmed,
    /// `presence_no_reap` (Redis): the presence sweep never reaps the
    /// players of an expired node lease: a crashed node leaves ghosts.
    PresenceNoReap,
    /// `presence_rejoin_fact` (memory engine): a reconnect inside the grace
    /// counts as a new join (a fact, a room event) instead of nothing.
    PresenceRejoinFact,
}

/// Every how many live events [`Defect::DropLive`] drops one.
pub const DROP_EVERY: u64 = 7;

impl Defect {
    /// Every defect and its `MYTHOS_DEFECT` name.
    pub const ALL: [(Defect, &'static str); 7] = [
        (Defect::DropLive, "drop_live"),
        (Defect::SkipReplay, "skip_replay"),
        (Defect::AckBeforeAppend, "ack_before_append"),
        (Defect::ResendBatch, "resend_batch"),
        (Defect::DeliverUnconfirmed, "deliver_unconfirmed"),
        (Defect::PresenceNoReap, "presence_no_reap"),
        (Defect::PresenceRejoinFact, "presence_rejoin_fact"),
    ];
}

static ACTIVE: LazyLock<Option<Defect>> = LazyLock::new(|| {
    let name = std::env::var("MYTHOS_DEFECT").ok()?;
    let found = Defect::ALL
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(d, _)| *d);
    match found {
        Some(_) => {
            tracing::warn!(defect = %name, "DEFECT INJECTED: this broker is broken on purpose")
        }
        // A typo must not turn the check into a run of the healthy code.
        None => panic!("MYTHOS_DEFECT={name}: no such defect"),
    }
    found
});

/// True when `d` is the injected defect.
pub fn on(d: Defect) -> bool {
    *ACTIVE == Some(d)
}

static LIVE_SEEN: AtomicU64 = AtomicU64::new(0);

/// [`Defect::DropLive`]: true for every [`DROP_EVERY`]th live event.
pub fn drop_this_live() -> bool {
    on(Defect::DropLive) && LIVE_SEEN.fetch_add(1, Ordering::Relaxed) % DROP_EVERY == DROP_EVERY - 1
}
