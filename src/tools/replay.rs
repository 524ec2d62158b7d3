//! Replaying a recording into a player's log: each recorded event becomes an
//! ordinary publish to `{"player": Q}` with the same `event_type`, `data`
//! and `room_id`, at the recorded relative timing scaled by a [`Speed`].
//!
//! Every replayed publish carries the id `replay:<recorded player>:<recorded
//! sequence number>` (at most 92 characters). Idempotency keys are per
//! player's log, so that id replayed twice into Q appends once: a replay
//! interrupted and run again completes the log without duplicates.
//!
//! Owns: the plan (ids, pacing) and running it through a [`Publisher`] (the
//! engine directly, or a broker's `POST /v1/publish`). Must not touch: how a
//! publish is stored or delivered.

use std::time::Duration;

use async_trait::async_trait;

use super::recording::RecordedEvent;
use crate::engine::Engine;
use crate::protocol::valid_id;
use crate::publish::Publish;

/// How fast a replay goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speed {
    /// The recorded gaps divided by this factor (1 = real time).
    Times(u32),
    /// No waiting: each publish as soon as the previous one was answered.
    Max,
}

impl std::str::FromStr for Speed {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "max" => Ok(Speed::Max),
            n => match n.parse::<u32>() {
                Ok(f) if (1..=10_000).contains(&f) => Ok(Speed::Times(f)),
                _ => Err(format!(
                    "--speed: `{s}` must be a factor from 1 to 10000 (1 = real time, 10 = ten times faster) or `max`"
                )),
            },
        }
    }
}

/// One publish of a replay.
#[derive(Debug, Clone, PartialEq)]
pub struct Step<'a> {
    pub to_player: &'a str,
    pub event: &'a RecordedEvent,
    /// The idempotency id (`replay:<player>:<seq>`).
    pub id: String,
    /// When to send it, after the replay's start.
    pub at: Duration,
}

/// The id a replayed event gets.
pub fn replay_id(event: &RecordedEvent) -> String {
    format!("replay:{}:{}", event.player_id, event.sequence_number)
}

/// The steps of replaying `events` into `to_player` at `speed`. A recorded
/// clock that goes backwards counts as no gap.
pub fn plan<'a>(events: &'a [RecordedEvent], to_player: &'a str, speed: Speed) -> Vec<Step<'a>> {
    let start = events.first().map_or(0, |e| e.at_ms);
    let mut latest = start;
    events
        .iter()
        .map(|e| {
            latest = latest.max(e.at_ms);
            let at = match speed {
                Speed::Max => Duration::ZERO,
                Speed::Times(f) => Duration::from_millis(latest - start) / f.max(1),
            };
            Step {
                to_player,
                event: e,
                id: replay_id(e),
                at,
            }
        })
        .collect()
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("--to-player must match [A-Za-z0-9_-]{{1,64}}")]
    BadPlayer,
    #[error("event {index} (recorded sequence number {seq}) was refused: {message}")]
    Refused {
        index: usize,
        seq: u64,
        message: String,
    },
    #[error("event {index} (recorded sequence number {seq}) failed: {message} ({done} published before it; run the replay again to finish: it is idempotent)")]
    Failed {
        index: usize,
        seq: u64,
        done: usize,
        message: String,
    },
}

/// Why one publish of a replay failed: refused (bad input, no retry helps)
/// or failed (the store or the network).
#[derive(Debug, thiserror::Error)]
pub enum PublishFailure {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
}

/// Where a replay's publishes go.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Publishes one step; answers the sequence number Q's log gave it.
    async fn publish(&self, step: &Step<'_>) -> Result<u64, PublishFailure>;
}

/// Publishing through an engine directly (the settings' Redis, or an
/// embedded node in a test), validated as an HTTP publish is.
pub struct EnginePublisher<'a> {
    pub engine: &'a dyn Engine,
    pub max_event_bytes: u64,
}

#[async_trait]
impl Publisher for EnginePublisher<'_> {
    async fn publish(&self, step: &Step<'_>) -> Result<u64, PublishFailure> {
        let e = step.event;
        let p = Publish::new(
            &serde_json::json!({"player": step.to_player}),
            &e.event_type,
            e.data.clone(),
            e.room_id.clone(),
            Some(step.id.clone()),
            self.max_event_bytes,
        )
        .map_err(|e| PublishFailure::Refused(e.to_string()))?;
        let ds = p.run(self.engine).await.map_err(|e| match e {
            crate::publish::PublishError::Engine(e) => PublishFailure::Failed(e.to_string()),
            other => PublishFailure::Refused(other.to_string()),
        })?;
        ds.first()
            .map(|d| d.sequence_number)
            .ok_or_else(|| PublishFailure::Failed("the engine answered no delivery".into()))
    }
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Sequence numbers Q's log gave, in order (a repeat replay answers the
    /// earlier ones).
    pub sequence_numbers: Vec<u64>,
    pub elapsed: Duration,
}

/// Replays `events` into `to_player` at `speed` through `publisher`, one
/// publish at a time, in order; stops at the first failure.
pub async fn run(
    publisher: &dyn Publisher,
    events: &[RecordedEvent],
    to_player: &str,
    speed: Speed,
) -> Result<Outcome, ReplayError> {
    if !valid_id(to_player) {
        return Err(ReplayError::BadPlayer);
    }
    let start = tokio::time::Instant::now();
    let mut seqs = Vec::with_capacity(events.len());
    for (index, step) in plan(events, to_player, speed).iter().enumerate() {
        if !step.at.is_zero() {
            tokio::time::sleep_until(start + step.at).await;
        }
        let seq = step.event.sequence_number;
        match publisher.publish(step).await {
            Ok(s) => seqs.push(s),
            Err(PublishFailure::Refused(message)) => {
                return Err(ReplayError::Refused {
                    index: index + 1,
                    seq,
                    message,
                })
            }
            Err(PublishFailure::Failed(message)) => {
                return Err(ReplayError::Failed {
                    index: index + 1,
                    seq,
                    done: index,
                    message,
                })
            }
        }
    }
    Ok(Outcome {
        sequence_numbers: seqs,
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, at_ms: u64) -> RecordedEvent {
        RecordedEvent {
            event_type: "t".into(),
            sequence_number: seq,
            timestamp: String::new(),
            at_ms,
            player_id: "alice".into(),
            room_id: None,
            data: serde_json::value::RawValue::from_string("{}".into()).expect("json"),
            id: None,
        }
    }

    #[test]
    fn pacing_keeps_relative_timing() {
        let evs = [ev(4, 1000), ev(5, 3000), ev(9, 2500), ev(10, 7000)];
        let at = |s: Speed| plan(&evs, "q", s).iter().map(|s| s.at).collect::<Vec<_>>();
        let ms = Duration::from_millis;
        assert_eq!(at(Speed::Times(1)), [ms(0), ms(2000), ms(2000), ms(6000)]);
        assert_eq!(at(Speed::Times(10)), [ms(0), ms(200), ms(200), ms(600)]);
        assert_eq!(at(Speed::Max), [ms(0); 4]);
        assert_eq!(plan(&evs, "q", Speed::Max)[1].id, "replay:alice:5");
    }

    proptest::proptest! {
        /// Any recorded clock (even going backwards): steps never go back
        /// in time, and ids follow the recorded sequence numbers.
        #[test]
        fn plans_are_monotonic(times in proptest::collection::vec(0u64..u64::MAX / 2, 0..50), f in 1u32..100) {
            let evs: Vec<RecordedEvent> = times.iter().enumerate().map(|(i, t)| ev(i as u64 + 1, *t)).collect();
            let steps = plan(&evs, "q", Speed::Times(f));
            proptest::prop_assert!(steps.windows(2).all(|w| w[0].at <= w[1].at));
            for (s, e) in steps.iter().zip(&evs) {
                proptest::prop_assert_eq!(&s.id, &format!("replay:alice:{}", e.sequence_number));
            }
        }
    }

    #[test]
    fn speeds_parse() {
        assert_eq!("max".parse::<Speed>(), Ok(Speed::Max));
        assert_eq!("10".parse::<Speed>(), Ok(Speed::Times(10)));
        for bad in ["0", "-1", "fast", "1.5", "100000"] {
            assert!(bad.parse::<Speed>().is_err(), "{bad}");
        }
    }
}
