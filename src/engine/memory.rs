//! The embedded in-memory engine: the default when `MYTHOS_REDIS_URL` is unset.
//!
//! Owns: one process's logs, cursors, rooms, command stream, accounts and
//! refresh-token families, with
//! exactly the semantics of the Redis engine. Single node, not durable: a
//! restart forgets everything. Must not touch: anything outside this process.
//! One mutex guards all state, so a fan-out is atomic across its members.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Notify;

use super::presence::{self, now_ms, Fact, FactEntry, Lease, Presence, Reason, Record};
use super::{
    parse_entry_id, Account, Accounts, Command, CommandEntry, CommandStream, ConsumerInfo, Cursor,
    DedupeKeys, Engine, EngineError, EventLog, GroupInfo, Inspect, Limits, LiveSink, PendingEntry,
    RefreshFamily, RefreshTokens, Result, Rooms, Rotation, StreamInfo, MAX_PENDING_SHOWN,
};
use crate::protocol::{Delivery, Event, EventBody, Target};

struct Stored {
    seq: u64,
    body: Arc<EventBody>,
    at: Instant,
}

#[derive(Default)]
struct PlayerLog {
    events: VecDeque<Stored>,
    last: u64,
    acked: u64,
    /// publisher key → (sequence number, remembered until)
    dedupe: HashMap<String, (u64, Instant)>,
    rooms: BTreeSet<String>,
}

impl PlayerLog {
    fn cursor(&self) -> Cursor {
        Cursor {
            last: self.last,
            acked: self.acked,
            oldest: self.events.front().map_or(self.last + 1, |e| e.seq),
        }
    }

    /// Drops events past the age cap and the count cap.
    fn enforce_caps(&mut self, limits: &Limits, now: Instant) {
        while self.events.len() as u64 > limits.max_backlog {
            self.events.pop_front();
        }
        while self
            .events
            .front()
            .is_some_and(|e| now.duration_since(e.at) > limits.max_backlog_age)
        {
            self.events.pop_front();
        }
    }

    fn append(&mut self, body: Arc<EventBody>, limits: &Limits, now: Instant) -> Event {
        self.last += 1;
        self.events.push_back(Stored {
            seq: self.last,
            body: body.clone(),
            at: now,
        });
        self.enforce_caps(limits, now);
        Event {
            sequence_number: self.last,
            body,
        }
    }

    fn dedupe_hit(&mut self, key: &str, now: Instant) -> Option<u64> {
        match self.dedupe.get(key) {
            Some(&(seq, until)) if until > now => Some(seq),
            Some(_) => {
                self.dedupe.remove(key);
                None
            }
            None => None,
        }
    }

    fn remember(&mut self, key: &str, seq: u64, until: Instant, now: Instant) {
        if self.dedupe.len() >= 1024 && self.dedupe.len().is_power_of_two() {
            self.dedupe.retain(|_, (_, u)| *u > now);
        }
        self.dedupe.insert(key.to_string(), (seq, until));
    }
}

#[derive(Default)]
struct CommandGroup {
    /// Index into `CommandLog::entries` of the next entry to hand out.
    next: u64,
    /// Handed out, not acknowledged: index → to whom, when, how often.
    pending: BTreeMap<u64, Pending>,
    /// Each consumer's last read or claim.
    consumers: HashMap<String, Instant>,
}

/// A command handed out and not acknowledged (as `XPENDING` tracks it).
struct Pending {
    consumer: String,
    at: Instant,
    deliveries: u64,
}

/// Milliseconds from `then` to `now`.
fn ms_since(now: Instant, then: Instant) -> u64 {
    u64::try_from(now.duration_since(then).as_millis()).unwrap_or(u64::MAX)
}

/// The index of a command entry id `<ms>-<index>` (this engine numbers its
/// commands with one counter).
fn command_index(entry_id: &str) -> Option<u64> {
    entry_id.rsplit_once('-')?.1.parse().ok()
}

#[derive(Default)]
struct CommandLog {
    entries: BTreeMap<u64, CommandEntry>,
    counter: u64,
    groups: HashMap<String, CommandGroup>,
}

#[derive(Default)]
struct State {
    players: HashMap<String, PlayerLog>,
    rooms: HashMap<String, BTreeSet<String>>,
    /// (room, id) → (the first publish's deliveries, remembered until)
    room_dedupe: HashMap<(String, String), (Vec<Delivery>, Instant)>,
    commands: CommandLog,
    users: HashMap<String, Account>,
    /// Refresh-token families: family id → owner, current hash, expiry.
    refresh: HashMap<String, StoredFamily>,
}

/// A refresh-token family as this engine keeps it (the hash, never a token).
struct StoredFamily {
    owner: RefreshFamily,
    hash: String,
    until: Instant,
}

/// The embedded engine.
pub struct MemoryEngine {
    state: Mutex<State>,
    limits: Limits,
    /// Where fresh appends are announced (the node's hub).
    hub: Arc<dyn LiveSink>,
    commands_ready: Notify,
    /// Presence, under a lock of its own (it never spans a log).
    presence: Mutex<presence::Book>,
}

impl MemoryEngine {
    pub fn new(limits: Limits, hub: Arc<dyn LiveSink>) -> Self {
        Self {
            state: Mutex::new(State::default()),
            limits,
            hub,
            commands_ready: Notify::new(),
            presence: Mutex::default(),
        }
    }

    fn book(&self) -> MutexGuard<'_, presence::Book> {
        self.presence.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation completes under the lock before any await point.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl EventLog for MemoryEngine {
    async fn read(&self, player: &str, after: u64, limit: usize) -> Result<Vec<Event>> {
        let st = self.lock();
        let Some(log) = st.players.get(player) else {
            return Ok(Vec::new());
        };
        let start = log.events.partition_point(|e| e.seq <= after);
        Ok(log
            .events
            .range(start..)
            .take(limit)
            .map(|e| Event {
                sequence_number: e.seq,
                body: e.body.clone(),
            })
            .collect())
    }

    async fn ack(&self, player: &str, seq: u64) -> Result<Cursor> {
        let mut st = self.lock();
        let log = st.players.entry(player.to_string()).or_default();
        let seq = seq.min(log.last);
        if seq > log.acked {
            log.acked = seq;
            while log.events.front().is_some_and(|e| e.seq <= seq) {
                log.events.pop_front();
            }
        }
        Ok(log.cursor())
    }

    async fn cursor(&self, player: &str) -> Result<Cursor> {
        let mut st = self.lock();
        Ok(match st.players.get_mut(player) {
            Some(log) => {
                log.enforce_caps(&self.limits, Instant::now());
                log.cursor()
            }
            None => PlayerLog::default().cursor(),
        })
    }
}

#[async_trait]
impl Rooms for MemoryEngine {
    async fn join(&self, room: &str, player: &str) -> Result<Option<Vec<String>>> {
        let mut st = self.lock();
        let members = st.rooms.entry(room.to_string()).or_default();
        if !members.insert(player.to_string()) {
            return Ok(None);
        }
        let others = members.iter().filter(|m| *m != player).cloned().collect();
        st.players
            .entry(player.to_string())
            .or_default()
            .rooms
            .insert(room.to_string());
        Ok(Some(others))
    }

    async fn leave(&self, room: &str, player: &str) -> Result<Option<Vec<String>>> {
        let mut st = self.lock();
        let Some(members) = st.rooms.get_mut(room) else {
            return Ok(None);
        };
        if !members.remove(player) {
            return Ok(None);
        }
        let rest: Vec<String> = members.iter().cloned().collect();
        if rest.is_empty() {
            st.rooms.remove(room);
        }
        if let Some(log) = st.players.get_mut(player) {
            log.rooms.remove(room);
        }
        Ok(Some(rest))
    }

    async fn members(&self, room: &str) -> Result<Vec<String>> {
        let st = self.lock();
        Ok(st
            .rooms
            .get(room)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn rooms_of(&self, player: &str) -> Result<Vec<String>> {
        let st = self.lock();
        Ok(st
            .players
            .get(player)
            .map(|l| l.rooms.iter().cloned().collect())
            .unwrap_or_default())
    }
}

#[async_trait]
impl CommandStream for MemoryEngine {
    async fn push_command(&self, cmd: &Command) -> Result<String> {
        let entry_id = {
            let mut st = self.lock();
            let log = &mut st.commands;
            log.counter += 1;
            let ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            let entry_id = format!("{ms}-{}", log.counter);
            log.entries.insert(
                log.counter,
                CommandEntry {
                    entry_id: entry_id.clone(),
                    command: cmd.clone(),
                },
            );
            while log.entries.len() > super::MAX_COMMANDS {
                log.entries.pop_first();
            }
            entry_id
        };
        self.commands_ready.notify_waiters();
        Ok(entry_id)
    }

    async fn read_commands(
        &self,
        group: &str,
        consumer: &str,
        partition: usize,
        count: usize,
        block: Duration,
    ) -> Result<Vec<CommandEntry>> {
        only_partition(partition)?;
        let deadline = Instant::now() + block;
        loop {
            let notified = self.commands_ready.notified();
            {
                let mut st = self.lock();
                let log = &mut st.commands;
                // Like `XGROUP CREATE mythos:commands <group> 0`: a new group
                // sees every command still kept.
                let g = log.groups.entry(group.to_string()).or_default();
                let now = Instant::now();
                g.consumers.insert(consumer.to_string(), now);
                let batch: Vec<CommandEntry> = log
                    .entries
                    .range(g.next..)
                    .take(count.max(1))
                    .map(|(k, e)| {
                        g.next = k + 1;
                        let (consumer, at) = (consumer.to_string(), now);
                        g.pending.insert(
                            *k,
                            Pending {
                                consumer,
                                at,
                                deliveries: 1,
                            },
                        );
                        e.clone()
                    })
                    .collect();
                if !batch.is_empty() {
                    return Ok(batch);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Vec::new());
            }
            let _ = tokio::time::timeout(left, notified).await;
        }
    }

    async fn commands_after(
        &self,
        partition: usize,
        after: &str,
        count: usize,
    ) -> Result<Vec<CommandEntry>> {
        only_partition(partition)?;
        let after = parse_entry_id(after).ok_or(EngineError::Rejected(
            "a command entry id must look like <ms>-<n>",
        ))?;
        let st = self.lock();
        Ok(st
            .commands
            .entries
            .values()
            .filter(|e| parse_entry_id(&e.entry_id).is_some_and(|id| id > after))
            .take(count)
            .cloned()
            .collect())
    }

    async fn ack_commands(
        &self,
        group: &str,
        partition: usize,
        entry_ids: &[String],
    ) -> Result<()> {
        only_partition(partition)?;
        let mut st = self.lock();
        if let Some(g) = st.commands.groups.get_mut(group) {
            for k in entry_ids.iter().filter_map(|id| command_index(id)) {
                g.pending.remove(&k);
            }
        }
        Ok(())
    }

    async fn claim_commands(
        &self,
        group: &str,
        consumer: &str,
        partition: usize,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<CommandEntry>> {
        only_partition(partition)?;
        let mut st = self.lock();
        let log = &mut st.commands;
        let Some(g) = log.groups.get_mut(group) else {
            return Ok(Vec::new());
        };
        let now = Instant::now();
        g.consumers.insert(consumer.to_string(), now);
        let idle: Vec<u64> = g
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.at) >= min_idle)
            .map(|(k, _)| *k)
            .collect();
        let mut out = Vec::new();
        for k in idle {
            if out.len() >= count.max(1) {
                break;
            }
            match (log.entries.get(&k), g.pending.get_mut(&k)) {
                (Some(e), Some(p)) => {
                    (p.consumer, p.at) = (consumer.to_string(), now);
                    p.deliveries += 1;
                    out.push(e.clone());
                }
                _ => {
                    g.pending.remove(&k);
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Accounts for MemoryEngine {
    async fn create_user(&self, username: &str, account: &Account) -> Result<bool> {
        let mut st = self.lock();
        if st.users.contains_key(username) {
            return Ok(false);
        }
        st.users.insert(username.to_string(), account.clone());
        Ok(true)
    }

    async fn user(&self, username: &str) -> Result<Option<Account>> {
        Ok(self.lock().users.get(username).cloned())
    }
}

#[async_trait]
impl RefreshTokens for MemoryEngine {
    async fn create_family(
        &self,
        family: &str,
        owner: &RefreshFamily,
        hash: &str,
        ttl: Duration,
    ) -> Result<()> {
        let now = Instant::now();
        let mut st = self.lock();
        // Abandoned families expire; sweep them as the map doubles.
        if st.refresh.len() >= 1024 && st.refresh.len().is_power_of_two() {
            st.refresh.retain(|_, f| f.until > now);
        }
        st.refresh.insert(
            family.to_string(),
            StoredFamily {
                owner: owner.clone(),
                hash: hash.to_string(),
                until: now + ttl,
            },
        );
        Ok(())
    }

    async fn rotate_family(
        &self,
        family: &str,
        presented: &str,
        next: &str,
        ttl: Duration,
    ) -> Result<Rotation> {
        let now = Instant::now();
        let mut st = self.lock();
        let Some(f) = st.refresh.get_mut(family) else {
            return Ok(Rotation::Unknown);
        };
        if f.until <= now {
            st.refresh.remove(family);
            return Ok(Rotation::Unknown);
        }
        if f.hash != presented {
            let owner = f.owner.clone();
            st.refresh.remove(family);
            return Ok(Rotation::Reused(owner));
        }
        f.hash = next.to_string();
        f.until = now + ttl;
        Ok(Rotation::Rotated(f.owner.clone()))
    }

    async fn revoke_family(&self, family: &str) -> Result<Option<RefreshFamily>> {
        let now = Instant::now();
        Ok(self
            .lock()
            .refresh
            .remove(family)
            .filter(|f| f.until > now)
            .map(|f| f.owner))
    }

    async fn family_exists(&self, family: &str) -> Result<bool> {
        let now = Instant::now();
        Ok(self
            .lock()
            .refresh
            .get(family)
            .is_some_and(|f| f.until > now))
    }
}

#[async_trait]
impl Inspect for MemoryEngine {
    async fn dedupe_keys(&self, player: &str, limit: usize) -> Result<DedupeKeys> {
        let now = Instant::now();
        let st = self.lock();
        let mut keys: Vec<&String> = st
            .players
            .get(player)
            .map(|l| {
                l.dedupe
                    .iter()
                    .filter(|(_, (_, until))| *until > now)
                    .map(|(k, _)| k)
                    .collect()
            })
            .unwrap_or_default();
        keys.sort_unstable();
        Ok(DedupeKeys {
            count: keys.len() as u64,
            sample: keys.into_iter().take(limit).cloned().collect(),
            complete: true,
        })
    }

    async fn streams(&self) -> Result<Vec<StreamInfo>> {
        let now = Instant::now();
        let st = self.lock();
        let log = &st.commands;
        let mut groups: Vec<GroupInfo> = log
            .groups
            .iter()
            .map(|(name, g)| GroupInfo {
                name: name.clone(),
                pending: g.pending.len() as u64,
                last_delivered: g
                    .next
                    .checked_sub(1)
                    .and_then(|k| log.entries.get(&k))
                    .map_or_else(|| "0-0".to_string(), |e| e.entry_id.clone()),
                lag: Some(log.entries.range(g.next..).count() as u64),
                consumers: {
                    let mut c: Vec<ConsumerInfo> = (g.consumers.iter())
                        .map(|(name, seen)| ConsumerInfo {
                            name: name.clone(),
                            pending: g.pending.values().filter(|p| &p.consumer == name).count()
                                as u64,
                            idle_ms: ms_since(now, *seen),
                        })
                        .collect();
                    c.sort_by(|a, b| a.name.cmp(&b.name));
                    c
                },
                oldest_pending: g
                    .pending
                    .iter()
                    .take(MAX_PENDING_SHOWN)
                    .map(|(k, p)| PendingEntry {
                        entry_id: log
                            .entries
                            .get(k)
                            .map_or_else(|| format!("0-{k}"), |e| e.entry_id.clone()),
                        consumer: p.consumer.clone(),
                        idle_ms: ms_since(now, p.at),
                        deliveries: p.deliveries,
                    })
                    .collect(),
            })
            .collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(vec![StreamInfo {
            name: "mythos:commands".into(),
            kind: "commands".into(),
            partition: 0,
            length: log.entries.len() as u64,
            groups,
        }])
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    async fn publish(
        &self,
        target: &Target,
        body: Arc<EventBody>,
        dedupe_key: Option<&str>,
    ) -> Result<Vec<Delivery>> {
        let now = Instant::now();
        let until = now + self.limits.dedupe_window;
        let mut fresh = Vec::new();
        let deliveries = {
            let mut st = self.lock();
            // A room repeat answers what the first publish answered, even if
            // the room's members changed since: no new member gets it.
            let room_key = match (target, dedupe_key) {
                (Target::Room(r), Some(k)) => Some((r.clone(), k.to_string())),
                _ => None,
            };
            if let Some(key) = &room_key {
                match st.room_dedupe.get(key) {
                    Some((first, until)) if *until > now => return Ok(first.clone()),
                    Some(_) => {
                        st.room_dedupe.remove(key);
                    }
                    None => {}
                }
            }
            let players: Vec<String> = match target {
                Target::Player(p) => vec![p.clone()],
                Target::Players(ps) => ps.clone(),
                Target::Room(r) => st
                    .rooms
                    .get(r)
                    .map(|m| m.iter().cloned().collect())
                    .unwrap_or_default(),
            };
            let mut out = Vec::with_capacity(players.len());
            for p in players {
                let log = st.players.entry(p.clone()).or_default();
                let hit = dedupe_key.and_then(|k| log.dedupe_hit(k, now));
                let seq = match hit {
                    Some(seq) => seq,
                    None => {
                        let ev = log.append(body.clone(), &self.limits, now);
                        if let Some(k) = dedupe_key {
                            log.remember(k, ev.sequence_number, until, now);
                        }
                        fresh.push((p.clone(), ev.sequence_number));
                        ev.sequence_number
                    }
                };
                out.push(Delivery {
                    player_id: p,
                    sequence_number: seq,
                });
            }
            if let Some(key) = room_key {
                if st.room_dedupe.len() >= 1024 && st.room_dedupe.len().is_power_of_two() {
                    st.room_dedupe.retain(|_, (_, u)| *u > now);
                }
                st.room_dedupe.insert(key, (out.clone(), until));
            }
            out
        };
        // Every fresh append shares `body`: handed on at once, under one
        // lock of the hub, and encoded once for all (protocol::Encoded).
        let targets: Vec<(&str, u64)> = fresh.iter().map(|(p, s)| (p.as_str(), *s)).collect();
        self.hub.deliver_all(&targets, &body);
        Ok(deliveries)
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

/// The memory engine's command stream is one partition, number 0.
fn only_partition(partition: usize) -> Result<()> {
    if partition == 0 {
        Ok(())
    } else {
        Err(EngineError::Rejected("no such command partition"))
    }
}

#[async_trait]
impl Presence for MemoryEngine {
    async fn presence_connect(&self, node: &str, player: &str) -> Result<Option<Fact>> {
        Ok(self.book().connect(node, player, now_ms()))
    }

    async fn presence_disconnect(
        &self,
        node: &str,
        player: &str,
        grace: Duration,
        why: Reason,
    ) -> Result<Option<Fact>> {
        Ok(self.book().disconnect(node, player, grace, why, now_ms()))
    }

    async fn presence_logout(&self, node: &str, player: &str) -> Result<Option<Fact>> {
        Ok(self.book().logout(node, player, now_ms()))
    }

    async fn presence_heartbeat(&self, node: &str, lease: Duration) -> Result<bool> {
        Ok(self.book().heartbeat(node, lease, now_ms()))
    }

    async fn presence_hold(&self, node: &str, player: &str) -> Result<()> {
        self.book().hold(node, player);
        Ok(())
    }

    async fn presence_release(&self, node: &str) -> Result<()> {
        self.book().release(node);
        Ok(())
    }

    async fn presence_sweep(&self, node: &str, grace: Duration) -> Result<Vec<Fact>> {
        Ok(self.book().sweep(node, grace, now_ms()))
    }

    async fn presence_of(&self, players: &[String]) -> Result<Vec<Record>> {
        let book = self.book();
        Ok(players
            .iter()
            .take(presence::MAX_PRESENCE_PAGE)
            .map(|p| book.record_of(p))
            .collect())
    }

    async fn presence_facts(
        &self,
        partition: usize,
        after: &str,
        count: usize,
    ) -> Result<Vec<FactEntry>> {
        only_partition(partition)?;
        let after = parse_entry_id(after).ok_or(EngineError::Rejected(
            "a presence entry id must look like <ms>-<n>",
        ))?;
        Ok(self.book().facts_after(after, count))
    }

    async fn presence_leases(&self) -> Result<Vec<Lease>> {
        Ok(self.book().leases())
    }

    async fn set_room_presence_events(&self, room: &str, on: bool) -> Result<()> {
        self.book().set_room(room, on);
        Ok(())
    }

    async fn room_presence_events(&self, room: &str) -> Result<bool> {
        Ok(self.book().room(room))
    }
}
