//! Redis-native publishing: consuming `mythos:publish` for game servers that
//! speak Redis rather than HTTP; started by the node through
//! [`Engine::start_ingest`](crate::engine::Engine::start_ingest).
//!
//! Owns: the consumer group `mythos-broker` on `mythos:publish` (or on each
//! of its partitions, read by a loop of its own), one consumer per node (the
//! node name). Each entry
//! `to <json target> event_type <t> data <json> [id <key>] [room_id <r>]`
//! is validated by [`Publish::new`] (as HTTP bodies are), appended with the
//! dedupe key `id`, else `stream:<entry id>`, and only then `XACK`ed, so a
//! crash in between duplicates nothing: whoever takes the entry over (with
//! `XAUTOCLAIM`, after `claim_idle`) gets the same deliveries back from the
//! dedupe key. Malformed entries go to the stream's dead letters
//! (`mythos:publish:dead`, `<partition>:dead`) with a `reason` and are acked
//! (never retried forever, never dropped silently); engine errors (Redis
//! down) are retried. Unknown fields are ignored.
//!
//! Must not touch: anything but these two streams and the publishing engine.
//! Entries are processed one at a time per node, in stream order; across
//! several nodes two entries may be appended in either order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use super::conn::Conns;
use super::consumer::Group;
use super::keys;
use super::stream::Entry;
use crate::engine::{Engine, EngineError, IngestExit as Exit, IngestOptions};
use crate::publish::{Publish, PublishError};

/// The consumer group every broker node shares.
const GROUP: &str = "mythos-broker";

/// How often idle entries of other consumers are looked for.
fn claim_every(opts: &IngestOptions) -> Duration {
    (opts.claim_idle / 2).clamp(Duration::from_millis(10), Duration::from_secs(5))
}

/// Consumes every stream of `streams` (the partitions of `mythos:publish`)
/// until `shutdown` (or the test fault point fires on one of them).
pub(super) async fn run(
    publisher: Arc<dyn Engine>,
    conns: Arc<Conns>,
    streams: Vec<String>,
    opts: IngestOptions,
    shutdown: CancellationToken,
) -> Exit {
    let loops = streams.into_iter().map(|stream| {
        let c = Consumer {
            publisher: publisher.clone(),
            conns: conns.clone(),
            dead: keys::dead(&stream),
            stream,
            opts: opts.clone(),
            own_pending: true,
            last_claim: None,
        };
        consume(c, shutdown.clone())
    });
    let exits = join_all(loops).await;
    exits
        .into_iter()
        .find(|e| *e != Exit::Shutdown)
        .unwrap_or(Exit::Shutdown)
}

/// Consumes one stream.
async fn consume(mut c: Consumer, shutdown: CancellationToken) -> Exit {
    loop {
        let step = tokio::select! {
            r = c.step() => r,
            _ = shutdown.cancelled() => return Exit::Shutdown,
        };
        match step {
            Ok(Some(exit)) => return exit,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "publish stream: will retry");
                metrics::counter!(crate::telemetry::INGEST_RETRIES).increment(1);
                c.own_pending = true;
                tokio::select! {
                    _ = tokio::time::sleep(c.opts.retry_delay) => {}
                    _ = shutdown.cancelled() => return Exit::Shutdown,
                }
            }
        }
    }
}

struct Consumer {
    publisher: Arc<dyn Engine>,
    conns: Arc<Conns>,
    stream: String,
    /// Where this stream's malformed entries go.
    dead: String,
    opts: IngestOptions,
    /// Re-read this consumer's own pending entries (at start and after an error).
    own_pending: bool,
    last_claim: Option<Instant>,
}

type Step = Result<Option<Exit>, EngineError>;

impl Consumer {
    fn group(&self) -> Group<'_> {
        Group::new(&self.stream, GROUP)
    }

    /// One round: own pending entries first, then idle ones of others, then new ones.
    async fn step(&mut self) -> Step {
        let (consumer, batch) = (&self.opts.consumer, self.opts.batch);
        if self.own_pending {
            let entries = self
                .group()
                .read(&self.conns, consumer, "0", batch, Duration::ZERO)
                .await?;
            if entries.is_empty() {
                self.own_pending = false;
            }
            return self.process(entries).await;
        }
        let claim_every = claim_every(&self.opts);
        if self.last_claim.is_none_or(|t| t.elapsed() >= claim_every) {
            self.last_claim = Some(Instant::now());
            if let Some(exit) = self.claim().await? {
                return Ok(Some(exit));
            }
        }
        let block = self.opts.block.min(claim_every);
        let entries = self
            .group()
            .read(&self.conns, &self.opts.consumer, ">", batch, block)
            .await?;
        self.process(entries).await
    }

    /// Takes over entries idle for `claim_idle` on any consumer and processes them.
    async fn claim(&mut self) -> Step {
        let mut cursor = "0-0".to_string();
        loop {
            let (next, entries) = self
                .group()
                .claim(
                    &mut self.conns.shared().await?,
                    &self.opts.consumer,
                    self.opts.claim_idle,
                    &cursor,
                    self.opts.batch,
                )
                .await?;
            if !entries.is_empty() {
                tracing::info!(n = entries.len(), "took over idle publish entries");
                metrics::counter!(crate::telemetry::INGEST_CLAIMED).increment(entries.len() as u64);
            }
            if let Some(exit) = self.process(entries).await? {
                return Ok(Some(exit));
            }
            if next == "0-0" {
                return Ok(None);
            }
            cursor = next;
        }
    }

    /// Handles entries in order; stops at the first engine error (not acked: retried).
    async fn process(&self, entries: Vec<Entry>) -> Step {
        for e in entries {
            if e.fields.is_none() {
                self.ack(&e.id).await?;
                continue;
            }
            let publish = match parse(&e, self.opts.max_event_bytes) {
                Ok(p) => p,
                Err(reason) => {
                    self.dead_letter(&e, &reason).await?;
                    continue;
                }
            };
            match publish.run(&*self.publisher).await {
                Ok(_) => {}
                Err(PublishError::Engine(err)) => return Err(err),
                Err(other) => {
                    self.dead_letter(&e, &reason_of(&other)).await?;
                    continue;
                }
            }
            #[cfg(feature = "test-support")]
            if self.opts.crash_after_append {
                tracing::warn!(entry = %e.id, "fault point: crashing before XACK");
                return Ok(Some(Exit::Crashed));
            }
            self.ack(&e.id).await?;
            metrics::counter!(crate::telemetry::INGEST_PUBLISHED).increment(1);
        }
        Ok(None)
    }

    async fn ack(&self, id: &str) -> Result<(), EngineError> {
        let ids = [id.to_string()];
        self.group()
            .ack(&mut self.conns.shared().await?, &ids)
            .await
    }

    /// Moves an entry to the dead letters (original fields + `reason` +
    /// `entry_id`) and acks it: in one transaction where both streams share
    /// a slot (one Redis; a partition and its dead letters); on a cluster's
    /// untagged `mythos:publish` the XADD goes first, so a crash in between
    /// can dead-letter an entry twice, never lose it.
    async fn dead_letter(&self, e: &Entry, reason: &str) -> Result<(), EngineError> {
        tracing::warn!(entry = %e.id, reason, "publish entry dead-lettered");
        metrics::counter!(crate::telemetry::INGEST_DEAD_LETTERS, "reason" => reason_label(reason))
            .increment(1);
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&self.dead).arg("*");
        for (k, v) in e.fields.iter().flatten() {
            xadd.arg(k).arg(v.as_slice());
        }
        xadd.arg("reason").arg(reason).arg("entry_id").arg(&e.id);
        let mut xack = redis::cmd("XACK");
        xack.arg(&self.stream).arg(GROUP).arg(&e.id);
        let mut pipe = redis::pipe();
        if !self.conns.is_cluster() || self.stream.contains('{') {
            pipe.atomic();
        }
        let _: (String, u64) = pipe
            .add_command(xadd)
            .add_command(xack)
            .query_async(&mut self.conns.shared().await?)
            .await?;
        Ok(())
    }
}

/// The metric label of a dead-letter reason (`<code>: <message>`): the code,
/// from a fixed set so that a label never carries entry content.
fn reason_label(reason: &str) -> &'static str {
    const CODES: [&str; 7] = [
        "too_large",
        "invalid_json",
        "invalid_request",
        "invalid_target",
        "invalid_id",
        "invalid_event_type",
        "engine",
    ];
    let code = reason.split(':').next().unwrap_or_default().trim();
    CODES.into_iter().find(|c| *c == code).unwrap_or("other")
}

fn reason_of(e: &PublishError) -> String {
    match e {
        PublishError::Invalid(p) => format!("{}: {}", p.code, p.message),
        PublishError::TooLarge(..) => format!("too_large: {e}"),
        PublishError::Engine(_) => format!("engine: {e}"),
    }
}

/// Largest `to` field: a target list at its cap of ids at their longest.
const MAX_TO_BYTES: usize = crate::protocol::MAX_TARGET_PLAYERS * 68 + 64;
/// Most fields of an entry (five are known; unknown ones are ignored).
const MAX_FIELDS: usize = 32;

/// Validates an entry; the error is the dead-letter reason (`<code>: <message>`).
/// Sizes are checked before any parsing: a huge entry costs one look at its
/// lengths, then goes to the dead letters, on this node and on any other.
fn parse(e: &Entry, max_event_bytes: u64) -> Result<Publish, String> {
    let fields = e.fields.as_deref().unwrap_or_default();
    if fields.len() > MAX_FIELDS {
        return Err(format!(
            "too_large: the entry has {} fields, at most {MAX_FIELDS}",
            fields.len()
        ));
    }
    let limit = usize::try_from(max_event_bytes).unwrap_or(usize::MAX);
    for (name, value) in fields {
        let most = match name.as_str() {
            "data" => limit,
            "to" => MAX_TO_BYTES,
            _ => 1024,
        };
        if value.len() > most {
            return Err(format!(
                "too_large: `{}` is {} bytes, at most {most}",
                name.chars().take(64).collect::<String>(),
                value.len()
            ));
        }
    }
    let field = |name: &str| -> Result<Option<&str>, String> {
        e.get(name)
            .map(|b| {
                std::str::from_utf8(b)
                    .map_err(|_| format!("invalid_encoding: `{name}` is not UTF-8"))
            })
            .transpose()
    };
    let required = |name: &str| -> Result<&str, String> {
        field(name)?.ok_or_else(|| format!("missing_field: `{name}` is required"))
    };
    let to = required("to")?;
    let event_type = required("event_type")?;
    let data = required("data")?;
    let to: serde_json::Value =
        serde_json::from_str(to).map_err(|err| format!("invalid_json: `to`: {err}"))?;
    if data.len() as u64 > max_event_bytes {
        return Err(reason_of(&PublishError::TooLarge(
            data.len(),
            max_event_bytes,
        )));
    }
    let data = RawValue::from_string(data.to_string())
        .map_err(|err| format!("invalid_json: `data`: {err}"))?;
    let room_id = field("room_id")?.map(str::to_string);
    let id = field("id")?.map(str::to_string);
    let mut p = Publish::new(&to, event_type, data, room_id, id, max_event_bytes)
        .map_err(|err| reason_of(&err))?;
    if p.dedupe_key.is_none() {
        p.dedupe_key = Some(format!("stream:{}", e.id));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fields: &[(&str, &str)]) -> Entry {
        Entry {
            id: "5-1".into(),
            fields: Some(
                fields
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                    .collect(),
            ),
        }
    }

    #[test]
    fn parses_and_keys_by_entry_id() {
        let e = entry(&[
            ("to", r#"{"player":"a"}"#),
            ("event_type", "t"),
            ("data", "1"),
        ]);
        let p = parse(&e, 100).expect("valid");
        assert_eq!(p.dedupe_key.as_deref(), Some("stream:5-1"));
        assert_eq!(p.body.id, None);
        let e = entry(&[
            ("to", r#"{"room":"r"}"#),
            ("event_type", "t"),
            ("data", "1"),
            ("id", "k"),
        ]);
        let p = parse(&e, 100).expect("valid");
        assert_eq!(p.dedupe_key.as_deref(), Some("k"));
        assert_eq!(p.body.room_id.as_deref(), Some("r"));
    }

    #[test]
    fn reasons() {
        let r = |f: &[(&str, &str)]| parse(&entry(f), 8).err().unwrap_or_default();
        assert!(r(&[("event_type", "t"), ("data", "1")]).starts_with("missing_field"));
        let to = r#"{"player":"a"}"#;
        assert!(r(&[("to", "{"), ("event_type", "t"), ("data", "1")]).starts_with("invalid_json"));
        assert!(r(&[("to", to), ("event_type", "t"), ("data", "[")]).starts_with("invalid_json"));
        assert!(
            r(&[("to", "{}"), ("event_type", "t"), ("data", "1")]).starts_with("invalid_target")
        );
        let big = "\"0123456789\"";
        assert!(r(&[("to", to), ("event_type", "t"), ("data", big)]).starts_with("too_large"));
    }

    /// Hole 2 of issue 11: a huge entry is refused by its sizes before any
    /// parsing (before, a 20 000-id `to` was parsed and de-duplicated
    /// quadratically, stalling the node and every node that claimed it).
    #[test]
    fn huge_entries_are_refused_before_parsing() {
        let many: Vec<String> = (0..20_000).map(|i| format!("player-{i}")).collect();
        let to = serde_json::json!({"players": many}).to_string();
        let reason = parse(
            &entry(&[("to", &to), ("event_type", "t"), ("data", "1")]),
            65536,
        )
        .err()
        .unwrap_or_default();
        assert!(reason.starts_with("too_large: `to`"), "{reason}");
        let long_type = "t".repeat(5000);
        let to = r#"{"player":"a"}"#;
        let reason = parse(
            &entry(&[("to", to), ("event_type", &long_type), ("data", "1")]),
            65536,
        )
        .err()
        .unwrap_or_default();
        assert!(reason.starts_with("too_large: `event_type`"), "{reason}");
        let names: Vec<String> = (0..40).map(|i| format!("f{i}")).collect();
        let mut fields: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "x")).collect();
        fields.extend([("to", to), ("event_type", "t"), ("data", "1")]);
        let reason = parse(&entry(&fields), 65536).err().unwrap_or_default();
        assert!(
            reason.starts_with("too_large: the entry has 43 fields"),
            "{reason}"
        );
        // The largest valid target still passes.
        let cap: Vec<String> = (0..crate::protocol::MAX_TARGET_PLAYERS)
            .map(|i| format!("{i:0>64}"))
            .collect();
        let to = serde_json::json!({"players": cap}).to_string();
        assert!(to.len() <= MAX_TO_BYTES);
        assert!(parse(
            &entry(&[("to", &to), ("event_type", "t"), ("data", "1")]),
            65536
        )
        .is_ok());
    }

    proptest::proptest! {
        /// Whatever a game server writes into an entry: a publish or a
        /// dead-letter reason, never a panic.
        #[test]
        fn entries_never_panic(
            fields in proptest::collection::vec(
                (proptest::sample::select(vec!["to", "event_type", "data", "id", "room_id", "x"]),
                 proptest::collection::vec(proptest::num::u8::ANY, 0..80)),
                0..8,
            )
        ) {
            let e = Entry {
                id: "1-0".into(),
                fields: Some(fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
            };
            let _ = parse(&e, 64);
        }

        #[test]
        fn valid_entries_round_trip(player in "[A-Za-z0-9_-]{1,64}", t in "[a-z_]{1,32}", n in proptest::num::i64::ANY) {
            let to = serde_json::json!({"player": player}).to_string();
            let data = n.to_string();
            let p = parse(&entry(&[("to", &to), ("event_type", &t), ("data", &data)]), 64).expect("valid");
            proptest::prop_assert_eq!(p.body.data.get(), data.as_str());
            proptest::prop_assert_eq!(&p.body.event_type, &t);
        }
    }
}
