//! Test support: a history of what every publisher and client saw, and a
//! checker for it, in the manner of Jepsen (record operations under faults,
//! then judge the history as a whole).
//!
//! Publishers record every attempt of a publish: its `id`, its target
//! player and the answer — `Ok(sequence_number)` (a 200; the sequence number
//! is unknown for a `mythos:publish` stream entry, whose "200" is the `XADD`),
//! `Err(status/code)` or `Unknown` (timeout, connection lost: it may or may
//! not have been appended). A publish that did not get a 200 is retried with
//! the same `id` until it does, which the contract makes idempotent, so in
//! the end every publish must be delivered exactly once. Clients record every
//! event they receive (sequence number and the event's publish `id`), across
//! reconnects, what they acknowledged, and `resync_required` markers.
//!
//! [`History::check`] then counts, per client:
//! - **lost**: a publish answered 200 that the player's client never received;
//! - **unexpected**: a received event that nobody published to that player;
//! - **duplicated**: one publish `id` received under two sequence numbers
//!   (i.e. still twice after the client's dedupe by sequence number);
//! - **redelivered**: one sequence number received twice on one connection
//!   (a client's dedupe hides it, but the broker sent an event twice where
//!   the contract says once; across a reconnect a repeat can be the
//!   client's own resume point, so only repeats within a connection count);
//! - **reordered**: the application-visible sequence (first receipt of each
//!   sequence number, in arrival order) not starting at 1 and going up by 1;
//! - **sequence reused**: one sequence number carrying two different ids;
//! - **mismatched**: delivered under another sequence number than the 200 said;
//! - **resyncs**: `resync_required` markers (none can be right here: every
//!   client resumes from what it has, and no cap trims unread events);
//! - **fence**: the player's fence event (published after everything else)
//!   not the last one the client saw.
//!
//! Must not touch: anything but its own records (it does no I/O).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write;
use std::sync::Mutex;

/// The answer one publish attempt got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 200 (with the sequence number the broker answered, when it says one).
    Ok(Option<u64>),
    /// A definite error answer, e.g. `503 engine_unavailable`.
    Err(String),
    /// No answer: timeout or connection lost. It may have been appended.
    Unknown,
}

#[derive(Debug, Default)]
struct Publish {
    player: String,
    attempts: Vec<Answer>,
}

#[derive(Debug, Default)]
struct ClientLog {
    player: String,
    /// (sequence number, publish id, connection number), in arrival order.
    received: Vec<(u64, Option<String>, u32)>,
    acked: Vec<u64>,
    connections: u32,
    resyncs: Vec<u64>,
    /// How connections ended ("close 4008", "reset", …) and how often.
    ends: BTreeMap<String, u32>,
}

#[derive(Debug, Default)]
struct Inner {
    publishes: BTreeMap<String, Publish>,
    clients: BTreeMap<String, ClientLog>,
    fences: HashMap<String, String>,
}

/// The shared, thread-safe history of one scenario.
#[derive(Debug, Default)]
pub struct History(Mutex<Inner>);

/// The verdict, with Jepsen's vocabulary.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Distinct publish ids answered 200.
    pub published: usize,
    /// Publish ids never answered 200 (the publisher gave up).
    pub unconfirmed: usize,
    pub attempts: usize,
    /// Attempts answered with an error / not answered at all.
    pub errors: usize,
    pub unknown: usize,
    pub clients: usize,
    pub connections: u64,
    /// Events received, counting repeats.
    pub received: usize,
    pub acks: usize,
    pub lost: usize,
    pub unexpected: usize,
    pub duplicated: usize,
    pub redelivered: usize,
    pub reordered: usize,
    pub reused: usize,
    pub mismatched: usize,
    pub resyncs: usize,
    pub fence: usize,
    /// How client connections ended, summed over clients.
    pub ends: BTreeMap<String, u32>,
    /// The first examples of each anomaly, for the failure message.
    pub details: Vec<String>,
}

const MAX_DETAILS: usize = 40;

impl Report {
    pub fn anomalies(&self) -> usize {
        self.lost
            + self.unexpected
            + self.duplicated
            + self.redelivered
            + self.reordered
            + self.reused
            + self.mismatched
            + self.resyncs
            + self.fence
    }

    fn detail(&mut self, s: String) {
        if self.details.len() < MAX_DETAILS {
            self.details.push(s);
        }
    }

    /// One line: what was done and the anomaly counts.
    pub fn line(&self) -> String {
        format!(
            "published={} attempts={} (errors={} unknown={}) unconfirmed={} clients={} \
             connections={} received={} acks={} | lost={} unexpected={} duplicated={} \
             redelivered={} reordered={} reused={} mismatched={} resyncs={} fence={}",
            self.published,
            self.attempts,
            self.errors,
            self.unknown,
            self.unconfirmed,
            self.clients,
            self.connections,
            self.received,
            self.acks,
            self.lost,
            self.unexpected,
            self.duplicated,
            self.redelivered,
            self.reordered,
            self.reused,
            self.mismatched,
            self.resyncs,
            self.fence
        )
    }

    /// The whole report, readable.
    pub fn render(&self) -> String {
        let mut s = format!("{}\nconnection ends: {:?}\n", self.line(), self.ends);
        for d in &self.details {
            let _ = writeln!(s, "  - {d}");
        }
        s
    }

    /// Panics with the report if there is any anomaly (or an unconfirmed publish).
    pub fn assert_clean(&self, scenario: &str) {
        assert!(
            self.anomalies() == 0 && self.unconfirmed == 0,
            "{scenario}: the history has anomalies:\n{}",
            self.render()
        );
    }
}

impl History {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A publish attempt of `id` to `player` got `answer`.
    pub fn publish(&self, id: &str, player: &str, answer: Answer) {
        let mut i = self.inner();
        let p = i.publishes.entry(id.to_string()).or_default();
        p.player = player.to_string();
        p.attempts.push(answer);
    }

    /// `id` is `player`'s fence: the last event published to them.
    pub fn fence(&self, player: &str, id: &str) {
        self.inner()
            .fences
            .insert(player.to_string(), id.to_string());
    }

    fn client<'a>(i: &'a mut Inner, client: &str, player: &str) -> &'a mut ClientLog {
        let c = i.clients.entry(client.to_string()).or_default();
        c.player = player.to_string();
        c
    }

    /// `client` (of `player`) opened a connection.
    pub fn connected(&self, client: &str, player: &str) {
        Self::client(&mut self.inner(), client, player).connections += 1;
    }

    /// `client`'s connection ended because of `why`.
    pub fn ended(&self, client: &str, player: &str, why: &str) {
        *Self::client(&mut self.inner(), client, player)
            .ends
            .entry(why.to_string())
            .or_default() += 1;
    }

    /// `client` received event `seq` carrying publish id `id`.
    pub fn received(&self, client: &str, player: &str, seq: u64, id: Option<&str>) {
        let mut i = self.inner();
        let c = Self::client(&mut i, client, player);
        let conn = c.connections;
        c.received.push((seq, id.map(str::to_string), conn));
    }

    pub fn acked(&self, client: &str, player: &str, seq: u64) {
        Self::client(&mut self.inner(), client, player)
            .acked
            .push(seq);
    }

    pub fn resync(&self, client: &str, player: &str, oldest: u64) {
        Self::client(&mut self.inner(), client, player)
            .resyncs
            .push(oldest);
    }

    /// Whether `client` has received the publish `id`.
    pub fn has(&self, client: &str, id: &str) -> bool {
        self.inner()
            .clients
            .get(client)
            .is_some_and(|c| c.received.iter().any(|(_, i, _)| i.as_deref() == Some(id)))
    }

    /// Number of publish ids answered 200 so far.
    pub fn confirmed(&self) -> usize {
        self.inner()
            .publishes
            .values()
            .filter(|p| p.attempts.iter().any(|a| matches!(a, Answer::Ok(_))))
            .count()
    }

    /// Judges the history.
    pub fn check(&self) -> Report {
        let i = self.inner();
        let mut r = Report {
            clients: i.clients.len(),
            ..Report::default()
        };
        for (id, p) in &i.publishes {
            r.attempts += p.attempts.len();
            r.errors += p
                .attempts
                .iter()
                .filter(|a| matches!(a, Answer::Err(_)))
                .count();
            r.unknown += p
                .attempts
                .iter()
                .filter(|a| matches!(a, Answer::Unknown))
                .count();
            let seqs: HashSet<Option<u64>> = p
                .attempts
                .iter()
                .filter_map(|a| match a {
                    Answer::Ok(s) => Some(*s),
                    _ => None,
                })
                .collect();
            if seqs.is_empty() {
                r.unconfirmed += 1;
                r.detail(format!(
                    "unconfirmed: {id} to {} never answered 200: {:?}",
                    p.player, p.attempts
                ));
            } else {
                r.published += 1;
                let known: Vec<u64> = seqs.iter().flatten().copied().collect();
                if known.len() > 1 {
                    r.mismatched += 1;
                    r.detail(format!(
                        "mismatched: {id} answered 200 with sequence numbers {known:?}"
                    ));
                }
            }
        }
        for (name, c) in &i.clients {
            r.connections += u64::from(c.connections);
            r.received += c.received.len();
            r.acks += c.acked.len();
            for (why, n) in &c.ends {
                *r.ends.entry(why.clone()).or_default() += n;
            }
            if !c.resyncs.is_empty() {
                r.resyncs += c.resyncs.len();
                r.detail(format!(
                    "resync: {name} got resync_required {:?}",
                    c.resyncs
                ));
            }
            // sequence number → the ids it carried.
            let mut by_seq: BTreeMap<u64, Vec<Option<&str>>> = BTreeMap::new();
            // publish id → the sequence numbers it came under.
            let mut by_id: BTreeMap<Option<&str>, Vec<u64>> = BTreeMap::new();
            let mut visible: Vec<(u64, Option<&str>, u32)> = Vec::new();
            for (seq, id, conn) in &c.received {
                let ids = by_seq.entry(*seq).or_default();
                if ids.is_empty() {
                    visible.push((*seq, id.as_deref(), *conn));
                }
                if !ids.contains(&id.as_deref()) {
                    ids.push(id.as_deref());
                }
                let seqs = by_id.entry(id.as_deref()).or_default();
                if !seqs.contains(seq) {
                    seqs.push(*seq);
                }
            }
            // (connection, sequence number) pairs seen: a repeat is a resend.
            let mut on_conn: HashSet<(u32, u64)> = HashSet::new();
            for (seq, id, conn) in &c.received {
                if !on_conn.insert((*conn, *seq)) {
                    r.redelivered += 1;
                    r.detail(format!(
                        "redelivered: {name} got sequence {seq} ({id:?}) twice on connection {conn}"
                    ));
                }
            }
            for (seq, ids) in &by_seq {
                if ids.len() > 1 {
                    r.reused += 1;
                    r.detail(format!(
                        "reused: {name} got sequence {seq} with ids {ids:?}"
                    ));
                }
            }
            for (id, seqs) in &by_id {
                if seqs.len() > 1 {
                    r.duplicated += 1;
                    r.detail(format!(
                        "duplicated: {name} got {id:?} under sequence numbers {seqs:?}"
                    ));
                }
                let published = id.and_then(|id| i.publishes.get(id));
                match published {
                    Some(p) if p.player == c.player => {
                        let answered: Vec<u64> = p
                            .attempts
                            .iter()
                            .filter_map(|a| match a {
                                Answer::Ok(Some(s)) => Some(*s),
                                _ => None,
                            })
                            .collect();
                        if answered.iter().any(|a| !seqs.contains(a)) {
                            r.mismatched += 1;
                            r.detail(format!(
                                "mismatched: {name} got {id:?} as {seqs:?}, the publisher \
                                 was answered {answered:?}"
                            ));
                        }
                    }
                    _ => {
                        r.unexpected += 1;
                        r.detail(format!(
                            "unexpected: {name} ({}) got {id:?} as {seqs:?}, never \
                             published to that player",
                            c.player
                        ));
                    }
                }
            }
            let mut expect = 1;
            for (seq, id, conn) in &visible {
                if *seq != expect {
                    r.reordered += 1;
                    r.detail(format!(
                        "reordered: {name} saw sequence {seq} ({id:?}, connection {conn}) \
                         where {expect} was next"
                    ));
                }
                expect = seq + 1;
            }
            for (id, p) in &i.publishes {
                if p.player != c.player || !p.attempts.iter().any(|a| matches!(a, Answer::Ok(_))) {
                    continue;
                }
                if !by_id.contains_key(&Some(id.as_str())) {
                    r.lost += 1;
                    r.detail(format!(
                        "lost: {name} never got {id} (answers {:?})",
                        p.attempts
                    ));
                }
            }
            if let Some(fence) = i.fences.get(&c.player) {
                let last = visible.last().and_then(|v| v.1);
                if last != Some(fence.as_str()) {
                    r.fence += 1;
                    r.detail(format!(
                        "fence: {name}'s last event is {last:?}, not its fence {fence}"
                    ));
                }
            }
        }
        r
    }
}
