//! Presence: who is connected, per player, across every node — the engine
//! capability ([`Presence`]), its types, and the state machine both engines
//! follow.
//!
//! Owns: the three states (`online`: a connection on some node; `linkdead`:
//! lost its last connection, inside the grace period; `offline`), the rules
//! that move a player between them, the facts (one per change between
//! online and offline, with a reason and a per-player dense sequence
//! number) and node leases (a node that stops refreshing its lease is
//! reaped: its players go linkdead). [`Book`] is the machine in memory (the
//! memory engine's); `lua/presence.lua` is the same machine in Redis, and
//! the conformance suite holds both to it. Must not touch: connections,
//! timers, HTTP (the node's `presence` module drives this), room events.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;

use super::Result;

/// Most facts a presence stream keeps (Redis trims with `MAXLEN ~`).
pub(crate) const MAX_FACTS: usize = 100_000;
/// Most players [`Presence::presence_of`] answers at once (a page).
pub const MAX_PRESENCE_PAGE: usize = 500;
/// How long a reaper holds a dead node's lease (`reaping:<node>`) while it
/// moves the node's players to `linkdead` (another reaper takes over after).
pub(crate) const REAP_CLAIM: Duration = Duration::from_secs(30);

/// A player's presence state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Online,
    Linkdead,
    Offline,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Online => "online",
            State::Linkdead => "linkdead",
            State::Offline => "offline",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "online" => Some(State::Online),
            "linkdead" => Some(State::Linkdead),
            "offline" => Some(State::Offline),
            _ => None,
        }
    }
}

/// Why a player's presence changed (a fact's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Came online: a first connection after being offline.
    Connect,
    /// A clean logout (`bye`, `POST /v1/auth/logout`): offline at once.
    Logout,
    /// The last connection ended and no new one came within the grace.
    Timeout,
    /// The node holding the last connection stopped refreshing its lease
    /// (crashed, cut off) and no new connection came within the grace.
    NodeLost,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Connect => "connect",
            Reason::Logout => "logout",
            Reason::Timeout => "timeout",
            Reason::NodeLost => "node_lost",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "connect" => Some(Reason::Connect),
            "logout" => Some(Reason::Logout),
            "timeout" => Some(Reason::Timeout),
            "node_lost" => Some(Reason::NodeLost),
            _ => None,
        }
    }
}

/// A change between online and offline, as the facts stream carries it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Fact {
    pub player_id: String,
    /// Per player: 1, 2, 3 … with no gap (odd: online, even: offline).
    pub seq: u64,
    /// `online` or `offline`.
    pub state: State,
    pub reason: Reason,
    /// Milliseconds since the Unix epoch (the store's clock).
    pub at_ms: u64,
    /// The node that recorded it.
    pub node: String,
}

/// A fact with its stream entry id (`<ms>-<n>`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FactEntry {
    pub entry_id: String,
    #[serde(flatten)]
    pub fact: Fact,
}

/// Where a player stands now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Record {
    pub player_id: String,
    pub state: State,
    /// When the state began (ms since the epoch; 0: never seen).
    pub since_ms: u64,
    /// `linkdead` only: when the player goes offline unless a connection comes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
    /// The nodes holding a connection of the player, sorted.
    pub nodes: Vec<String>,
    /// The sequence number of the player's last fact (0: none yet).
    pub seq: u64,
}

/// A node's lease, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lease {
    pub node: String,
    /// When it expires (ms since the epoch, the store's clock); a lease
    /// being reaped shows the reaper's claim.
    pub expires_ms: u64,
}

/// Presence, kept by the engine so that every node sees the same truth.
///
/// Every operation is idempotent where a retry could repeat it (a connect of
/// a node already counted, a disconnect of a node not counted, an expiry of
/// a player who is not due): only real changes produce facts.
#[async_trait]
pub trait Presence: Send + Sync {
    /// `node` holds a connection of `player` (its first on that node).
    /// A fact when the player was offline; none from `linkdead`.
    async fn presence_connect(&self, node: &str, player: &str) -> Result<Option<Fact>>;

    /// `node` holds no connection of `player` any more. The last node
    /// gone: `linkdead` until now + `grace` (offline at once for a zero
    /// grace, reason `why`). `why` is [`Reason::Timeout`] or
    /// [`Reason::NodeLost`].
    async fn presence_disconnect(
        &self,
        node: &str,
        player: &str,
        grace: Duration,
        why: Reason,
    ) -> Result<Option<Fact>>;

    /// A clean logout: offline at once, whatever nodes held connections.
    async fn presence_logout(&self, node: &str, player: &str) -> Result<Option<Fact>>;

    /// Refreshes `node`'s lease for `lease` more; `true` when the store had
    /// no live lease of that name (its first; or the store lost it, a Redis
    /// restart, a failover; or it expired, and a reaper may be taking its
    /// players away): the node then takes a new lease name and re-asserts
    /// its connections under it (an expired lease is not renewed).
    async fn presence_heartbeat(&self, node: &str, lease: Duration) -> Result<bool>;

    /// Records that `player`'s connection on `node` is counted, for reaping
    /// (called before [`Presence::presence_connect`]; a stale entry is
    /// harmless).
    async fn presence_hold(&self, node: &str, player: &str) -> Result<()>;

    /// Gives up `node`'s lease and its list of players (a clean shutdown,
    /// after its players were disconnected).
    async fn presence_release(&self, node: &str) -> Result<()>;

    /// One round of upkeep, safe to run on every node at once: reaps the
    /// players of expired leases (to `linkdead`, reason `node_lost`; a fact
    /// of a zero grace names the lost node), then takes every `linkdead`
    /// player whose grace ended offline (as `node`). Returns the facts.
    async fn presence_sweep(&self, node: &str, grace: Duration) -> Result<Vec<Fact>>;

    /// Where each of `players` stands (at most [`MAX_PRESENCE_PAGE`]), in order.
    async fn presence_of(&self, players: &[String]) -> Result<Vec<Record>>;

    /// Up to `count` facts of presence partition `partition` after entry id
    /// `after` (`0-0`: from the oldest kept), oldest first.
    async fn presence_facts(
        &self,
        partition: usize,
        after: &str,
        count: usize,
    ) -> Result<Vec<FactEntry>>;

    /// The node leases the store holds.
    async fn presence_leases(&self) -> Result<Vec<Lease>>;

    /// Whether `room`'s members get `player_entered` / `player_left` when a
    /// member comes online or goes offline (off unless the game asks).
    async fn set_room_presence_events(&self, room: &str, on: bool) -> Result<()>;

    /// See [`Presence::set_room_presence_events`].
    async fn room_presence_events(&self, room: &str) -> Result<bool>;
}

/// One player's record in the machine.
#[derive(Debug, Clone, Default)]
struct Rec {
    state: Option<State>,
    since: u64,
    until: u64,
    why: Option<Reason>,
    seq: u64,
    nodes: BTreeSet<String>,
}

impl Rec {
    fn state(&self) -> State {
        self.state.unwrap_or(State::Offline)
    }

    fn fact(&mut self, player: &str, node: &str, state: State, reason: Reason, now: u64) -> Fact {
        self.seq += 1;
        self.state = Some(state);
        self.since = now;
        self.until = 0;
        Fact {
            player_id: player.to_string(),
            seq: self.seq,
            state,
            reason,
            at_ms: now,
            node: node.to_string(),
        }
    }
}

/// The presence machine in memory: records, leases, deadlines and facts
/// (the memory engine's; `lua/presence.lua` mirrors [`Book::connect`],
/// [`Book::disconnect`], [`Book::logout`] and [`Book::expire`]).
#[derive(Debug, Default)]
pub struct Book {
    players: HashMap<String, Rec>,
    /// node → lease expiry (ms).
    leases: BTreeMap<String, u64>,
    /// node → players it holds.
    held: HashMap<String, BTreeSet<String>>,
    /// `linkdead` players by deadline.
    due: BTreeSet<(u64, String)>,
    facts: VecDeque<FactEntry>,
    last_id: (u64, u64),
    rooms: BTreeSet<String>,
}

impl Book {
    pub fn connect(&mut self, node: &str, player: &str, now: u64) -> Option<Fact> {
        let rec = self.players.entry(player.to_string()).or_default();
        rec.nodes.insert(node.to_string());
        let fact = match rec.state() {
            State::Offline => Some(rec.fact(player, node, State::Online, Reason::Connect, now)),
            #[cfg(feature = "defects")]
            State::Linkdead if crate::defects::on(crate::defects::Defect::PresenceRejoinFact) => {
                self.due.remove(&(rec.until, player.to_string()));
                Some(rec.fact(player, node, State::Online, Reason::Connect, now))
            }
            State::Linkdead => {
                self.due.remove(&(rec.until, player.to_string()));
                rec.state = Some(State::Online);
                rec.since = now;
                rec.until = 0;
                None
            }
            State::Online => None,
        };
        self.record(fact)
    }

    pub fn disconnect(
        &mut self,
        node: &str,
        player: &str,
        grace: Duration,
        why: Reason,
        now: u64,
    ) -> Option<Fact> {
        let rec = self.players.get_mut(player)?;
        if !rec.nodes.remove(node) || !rec.nodes.is_empty() || rec.state() != State::Online {
            return None;
        }
        if grace.is_zero() {
            let fact = rec.fact(player, node, State::Offline, why, now);
            return self.record(Some(fact));
        }
        rec.state = Some(State::Linkdead);
        rec.since = now;
        rec.until = now.saturating_add(ms(grace));
        rec.why = Some(why);
        self.due.insert((rec.until, player.to_string()));
        None
    }

    pub fn logout(&mut self, node: &str, player: &str, now: u64) -> Option<Fact> {
        let rec = self.players.get_mut(player)?;
        rec.nodes.clear();
        if rec.state() == State::Offline {
            return None;
        }
        self.due.remove(&(rec.until, player.to_string()));
        let fact = rec.fact(player, node, State::Offline, Reason::Logout, now);
        self.record(Some(fact))
    }

    /// Takes `player` offline if it is `linkdead` and its grace ended.
    pub fn expire(&mut self, node: &str, player: &str, now: u64) -> Option<Fact> {
        let rec = self.players.get_mut(player)?;
        if rec.state() != State::Linkdead || rec.until > now || !rec.nodes.is_empty() {
            return None;
        }
        self.due.remove(&(rec.until, player.to_string()));
        let why = rec.why.unwrap_or(Reason::Timeout);
        let fact = rec.fact(player, node, State::Offline, why, now);
        self.record(Some(fact))
    }

    /// `true` when `node`'s lease was absent or expired (an expired one is
    /// left for the sweep: the node takes a new name), as `lua/leases.lua`.
    pub fn heartbeat(&mut self, node: &str, lease: Duration, now: u64) -> bool {
        match self.leases.get(node) {
            Some(&until) if until > now => {
                self.leases
                    .insert(node.to_string(), now.saturating_add(ms(lease)));
                false
            }
            Some(_) => true,
            None => {
                self.leases
                    .insert(node.to_string(), now.saturating_add(ms(lease)));
                true
            }
        }
    }

    pub fn hold(&mut self, node: &str, player: &str) {
        self.held
            .entry(node.to_string())
            .or_default()
            .insert(player.to_string());
    }

    pub fn release(&mut self, node: &str) {
        self.leases.remove(node);
        self.held.remove(node);
    }

    pub fn sweep(&mut self, node: &str, grace: Duration, now: u64) -> Vec<Fact> {
        let mut facts = Vec::new();
        let dead: Vec<String> = self
            .leases
            .iter()
            .filter(|(_, &until)| until <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for lost in dead {
            self.leases.remove(&lost);
            for player in self.held.remove(&lost).unwrap_or_default() {
                facts.extend(self.disconnect(&lost, &player, grace, Reason::NodeLost, now));
            }
        }
        let due: Vec<String> = self
            .due
            .iter()
            .take_while(|(until, _)| *until <= now)
            .map(|(_, p)| p.clone())
            .collect();
        for player in due {
            facts.extend(self.expire(node, &player, now));
        }
        facts
    }

    pub fn record_of(&self, player: &str) -> Record {
        let rec = self.players.get(player).cloned().unwrap_or_default();
        Record {
            player_id: player.to_string(),
            state: rec.state(),
            since_ms: rec.since,
            until_ms: (rec.state() == State::Linkdead).then_some(rec.until),
            nodes: rec.nodes.into_iter().collect(),
            seq: rec.seq,
        }
    }

    pub fn facts_after(&self, after: (u64, u64), count: usize) -> Vec<FactEntry> {
        self.facts
            .iter()
            .filter(|f| super::parse_entry_id(&f.entry_id).is_some_and(|id| id > after))
            .take(count)
            .cloned()
            .collect()
    }

    pub fn leases(&self) -> Vec<Lease> {
        self.leases
            .iter()
            .map(|(node, &expires_ms)| Lease {
                node: node.clone(),
                expires_ms,
            })
            .collect()
    }

    pub fn set_room(&mut self, room: &str, on: bool) {
        if on {
            self.rooms.insert(room.to_string());
        } else {
            self.rooms.remove(room);
        }
    }

    pub fn room(&self, room: &str) -> bool {
        self.rooms.contains(room)
    }

    fn record(&mut self, fact: Option<Fact>) -> Option<Fact> {
        let f = fact?;
        let id = if f.at_ms > self.last_id.0 {
            (f.at_ms, 0)
        } else {
            (self.last_id.0, self.last_id.1 + 1)
        };
        self.last_id = id;
        self.facts.push_back(FactEntry {
            entry_id: format!("{}-{}", id.0, id.1),
            fact: f.clone(),
        });
        while self.facts.len() > MAX_FACTS {
            self.facts.pop_front();
        }
        Some(f)
    }
}

/// Whole milliseconds of `d`, saturating.
pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the Unix epoch now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(ms)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Duration = Duration::from_secs(15);

    #[test]
    fn tabs_grace_and_expiry() {
        let mut b = Book::default();
        let f = b.connect("n1", "alice", 1_000).expect("a join");
        assert_eq!(
            (f.seq, f.state, f.reason),
            (1, State::Online, Reason::Connect)
        );
        // A second tab on another node: nothing.
        assert_eq!(b.connect("n2", "alice", 1_100), None);
        assert_eq!(b.disconnect("n1", "alice", G, Reason::Timeout, 1_200), None);
        assert_eq!(b.record_of("alice").state, State::Online);
        // The last one: linkdead, no fact.
        assert_eq!(b.disconnect("n2", "alice", G, Reason::Timeout, 2_000), None);
        assert_eq!(b.record_of("alice").until_ms, Some(17_000));
        // Back inside the grace: online, no fact.
        assert_eq!(b.connect("n1", "alice", 3_000), None);
        assert_eq!(b.sweep("n1", G, 20_000), vec![]);
        assert_eq!(b.disconnect("n1", "alice", G, Reason::Timeout, 4_000), None);
        assert_eq!(b.sweep("n1", G, 18_999), vec![]);
        let left = b.sweep("n1", G, 19_000);
        assert_eq!(left.len(), 1);
        assert_eq!((left[0].seq, left[0].reason), (2, Reason::Timeout));
        assert_eq!(b.facts_after((0, 0), 10).len(), 2);
    }

    #[test]
    fn dead_leases_are_reaped_and_logout_is_at_once() {
        let mut b = Book::default();
        assert!(b.heartbeat("n1", Duration::from_secs(5), 0));
        assert!(!b.heartbeat("n1", Duration::from_secs(5), 1_000));
        b.hold("n1", "bob");
        b.connect("n1", "bob", 1_000);
        assert_eq!(b.sweep("n2", G, 5_999), vec![]);
        assert_eq!(b.sweep("n2", G, 6_000), vec![]);
        assert_eq!(b.record_of("bob").state, State::Linkdead);
        let gone = b.sweep("n2", G, 21_000);
        assert_eq!(gone[0].reason, Reason::NodeLost);
        b.connect("n3", "bob", 30_000);
        let out = b.logout("n3", "bob", 30_001).expect("a leave");
        assert_eq!((out.seq, out.reason), (4, Reason::Logout));
        assert_eq!(b.logout("n3", "bob", 30_002), None);
    }
}
