//! Metrics vocabulary: the names, label values, help texts and histogram
//! buckets of what `/metrics` exposes, and the few helpers the hot paths call.
//!
//! Owns: every metric *name* introduced for operators (docs/operations.md
//! lists them all; no other module spells one), their Prometheus help lines
//! and buckets, the process's recorder, and turning an
//! event's timestamp into a delivery lag. Label values are `&'static str`
//! so that recording allocates nothing. Must not touch: what is measured
//! (the modules that do the work call in), logging, the recorder's HTTP
//! endpoint (`server` serves [`render`]).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::protocol::ErrorCode;

/// HTTP publish: request parsed → durable answer ready (`POST /v1/publish`).
pub const PUBLISH_DURATION: &str = "mythos_publish_duration_seconds";
/// One engine append (event fan-out or upstream command), label `kind`.
pub const APPEND_DURATION: &str = "mythos_engine_append_duration_seconds";
/// An event's timestamp (stamped just before its append) → its frame written
/// to a live connection's socket.
pub const DELIVERY_LAG: &str = "mythos_live_delivery_lag_seconds";
/// A connection opened → its feed caught up with the log (replay done).
pub const REPLAY_DURATION: &str = "mythos_replay_duration_seconds";
/// Open player connections, label `transport`.
pub const CONNECTIONS: &str = "mythos_connections";
/// Players with at least one live subscription on this node.
pub const SUBSCRIBED_PLAYERS: &str = "mythos_subscribed_players";
/// Events queued in the hub for live connections, not yet taken by their feed.
pub const QUEUED_EVENTS: &str = "mythos_live_queued_events";
/// Refused tokens and logins, label `reason`.
pub const AUTH_FAILURES: &str = "mythos_auth_failures_total";
/// Client errors answered (HTTP 4xx, WebSocket `error` frames), label `reason` (the error code).
pub const REJECTIONS: &str = "mythos_rejections_total";
/// Rate-limited client actions, label `reason`.
pub const RATE_LIMITED: &str = "mythos_rate_limited_total";

/// Players with at least one connection on this node (presence).
pub const PRESENCE_PLAYERS: &str = "mythos_presence_local_players";
/// Presence facts this node recorded, labels `state` and `reason`.
pub const PRESENCE_FACTS: &str = "mythos_presence_facts_total";
/// Dead nodes' leases this node reaped.
pub const PRESENCE_REAPS: &str = "mythos_presence_reaps_total";
/// Times this node found its lease missing and re-asserted its players.
pub const PRESENCE_REASSERTS: &str = "mythos_presence_reasserts_total";
/// Presence writes that failed and are retried, label `op`.
pub const PRESENCE_RETRIES: &str = "mythos_presence_retries_total";

/// A feed's log read failed transiently and is retried.
pub const FEED_READ_RETRIES: &str = "mythos_feed_read_retries_total";
/// Redis-native publishing: a consumer round failed and is retried.
pub const INGEST_RETRIES: &str = "mythos_ingest_retries_total";
/// Redis-native publishing: entries taken over from another consumer.
pub const INGEST_CLAIMED: &str = "mythos_ingest_claimed_total";
/// Redis-native publishing: entries appended.
pub const INGEST_PUBLISHED: &str = "mythos_ingest_published_total";
/// Redis-native publishing: malformed entries dead-lettered, label `reason`.
pub const INGEST_DEAD_LETTERS: &str = "mythos_ingest_dead_letters_total";
/// The live subscriber task restarted after a panic.
pub const LIVE_LISTENER_RESTARTS: &str = "mythos_live_listener_restarts_total";
/// Live channels subscribed again, label `reason`.
pub const LIVE_RESUBSCRIBES: &str = "mythos_live_resubscribes_total";
/// Live announcements received.
pub const LIVE_MESSAGES: &str = "mythos_live_messages_total";
/// Bytes of live announcements received.
pub const LIVE_BYTES: &str = "mythos_live_bytes_total";
/// Live announcements that did not decode (dropped).
pub const LIVE_UNDECODABLE: &str = "mythos_live_undecodable_total";
/// `WAIT` round trips for replica confirmation.
pub const REDIS_WAITS: &str = "mythos_redis_waits_total";
/// Appends that replicas did not confirm in time.
pub const NOT_REPLICATED: &str = "mythos_not_replicated_total";
/// Publishes appended.
pub const PUBLISHED: &str = "mythos_published_total";
/// Deliveries (one per recipient) of those publishes.
pub const DELIVERIES: &str = "mythos_deliveries_total";
/// Live connections cut off as slow consumers.
pub const SLOW_CONSUMERS: &str = "mythos_slow_consumers_total";
/// `resync_required` markers sent, label `reason`.
pub const RESYNCS: &str = "mythos_resyncs_total";
/// Upstream commands and chat lines appended.
pub const COMMANDS: &str = "mythos_commands_total";
/// Connections refused by a cap, label `reason` (`node`, `player`).
pub const CONNECTIONS_REFUSED: &str = "mythos_connections_refused_total";

/// Histogram buckets (seconds): 250 µs to 10 s, for every `*_seconds`
/// histogram (without them the exporter renders summaries, which cannot be
/// aggregated across nodes).
const BUCKETS: [f64; 15] = [
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The transport label of [`CONNECTIONS`] and of a connection's span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Sse,
    Ws,
}

impl Transport {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Sse => "sse",
            Self::Ws => "ws",
        }
    }
}

/// Counts an open connection until dropped (also when its task panics).
pub struct ConnectionGauge(Transport);

impl ConnectionGauge {
    pub fn open(t: Transport) -> Self {
        metrics::gauge!(CONNECTIONS, "transport" => t.as_str()).increment(1.0);
        Self(t)
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        metrics::gauge!(CONNECTIONS, "transport" => self.0.as_str()).decrement(1.0);
    }
}

/// Records `since.elapsed()` in the histogram `name`.
pub fn observe_since(name: &'static str, since: Instant) {
    metrics::histogram!(name).record(since.elapsed().as_secs_f64());
}

/// Records an engine append's duration.
pub fn observe_append(kind: &'static str, since: Instant) {
    metrics::histogram!(APPEND_DURATION, "kind" => kind).record(since.elapsed().as_secs_f64());
}

/// Counts a client error answered with `code`.
pub fn rejected(code: ErrorCode) {
    metrics::counter!(REJECTIONS, "reason" => code.as_str()).increment(1);
}

/// Counts a rate-limited action.
pub fn rate_limited(reason: &'static str) {
    metrics::counter!(RATE_LIMITED, "reason" => reason).increment(1);
}

/// Records the delivery lag of an event stamped `timestamp` whose frame was
/// just written. A timestamp that does not parse (never ours) is skipped; a
/// clock step backwards counts as zero.
pub fn observe_delivery_lag(timestamp: &str) {
    if let Some(stamped) = unix_millis(timestamp) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let lag = Duration::from_millis(u64::try_from(now.saturating_sub(stamped)).unwrap_or(0));
        metrics::histogram!(DELIVERY_LAG).record(lag.as_secs_f64());
    }
}

/// Milliseconds since the epoch of our envelope timestamp
/// `YYYY-MM-DDTHH:MM:SS.mmmZ` ([`crate::protocol::now_rfc3339`]), parsed by
/// position: it runs once per live frame, so no general RFC 3339 parser.
pub fn unix_millis(ts: &str) -> Option<u128> {
    let b = ts.as_bytes();
    if b.len() != 24 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'.' {
        return None;
    }
    if b[13] != b':' || b[16] != b':' || b[23] != b'Z' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        b[from..to].iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let (y, m, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hh, mm, ss, ms) = (num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 23)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u128::try_from(secs * 1000 + ms).ok()
}

/// The process's recorder, installed by the first call (a second node in
/// the same process shares it); `None` if another recorder was installed.
fn recorder() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
                .ok()?
                .install_recorder()
                .ok()?;
            describe();
            Some(recorder)
        })
        .as_ref()
}

/// Installs the recorder (idempotent): what is recorded from now on shows in `/metrics`.
pub fn install() {
    let _ = recorder();
}

/// The text of `/metrics`.
pub fn render() -> String {
    recorder().map(|h| h.render()).unwrap_or_default()
}

/// Drains the recorder's histogram buffers (without it they grow with
/// every observation until the next scrape).
pub fn upkeep() {
    if let Some(h) = recorder() {
        h.run_upkeep();
    }
}

/// Registers units and help texts (the `# HELP` lines of `/metrics`).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        PUBLISH_DURATION,
        Unit::Seconds,
        "POST /v1/publish: request read to durable answer"
    );
    describe_histogram!(
        APPEND_DURATION,
        Unit::Seconds,
        "one engine append (kind=event: a publish's fan-out; kind=command: an upstream command)"
    );
    describe_histogram!(
        DELIVERY_LAG,
        Unit::Seconds,
        "event timestamp (just before its append) to its frame written on a live connection"
    );
    describe_histogram!(
        REPLAY_DURATION,
        Unit::Seconds,
        "connection opened to its replay caught up with the log"
    );
    describe_gauge!(CONNECTIONS, "open player connections by transport");
    describe_gauge!(
        SUBSCRIBED_PLAYERS,
        "players with a live subscription on this node"
    );
    describe_gauge!(
        QUEUED_EVENTS,
        "live events queued for connections on this node, not yet taken"
    );
    describe_counter!(AUTH_FAILURES, "refused tokens and logins by reason");
    describe_gauge!(
        PRESENCE_PLAYERS,
        "players with at least one connection on this node"
    );
    describe_counter!(
        PRESENCE_FACTS,
        "presence facts this node recorded, by state and reason"
    );
    describe_counter!(PRESENCE_REAPS, "dead nodes whose players this node reaped");
    describe_counter!(
        PRESENCE_REASSERTS,
        "times this node found its lease missing and re-asserted its players"
    );
    describe_counter!(PRESENCE_RETRIES, "presence writes retried, by op");
    describe_counter!(
        REJECTIONS,
        "client errors answered (HTTP 4xx, WebSocket error frames) by error code"
    );
    describe_counter!(RATE_LIMITED, "rate-limited client actions by reason");
}

#[cfg(test)]
mod tests {
    use super::unix_millis;

    #[test]
    fn our_timestamps_parse_to_epoch_millis() {
        assert_eq!(unix_millis("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(
            unix_millis("2026-11-23T10:30:00.123Z"),
            Some(1_795_429_800_123)
        );
        assert_eq!(
            unix_millis("2000-02-29T23:59:59.999Z"),
            Some(951_868_799_999)
        );
        let now = crate::protocol::now_rfc3339();
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis();
        let parsed = unix_millis(&now).expect("ours parses");
        assert!(ms.abs_diff(parsed) < 5_000, "{now} → {parsed} vs {ms}");
        for bad in [
            "",
            "2026-11-23T10:30:00Z",
            "2026-13-23T10:30:00.123Z",
            "2026-11-23T10:3x:00.123Z",
        ] {
            assert_eq!(unix_millis(bad), None, "{bad}");
        }
    }
}
