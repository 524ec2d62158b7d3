//! Measurement: latency histograms per step of a schedule, per-client
//! sequence checking (contiguous, no gap, no duplicate), and table output.
//!
//! Owns: how a delivery is attributed (to the step its event was *sent* in)
//! and what counts as lost. Must not touch: sockets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Shards per step histogram (clients pick one by id, so that two worker
/// threads rarely contend on a lock).
const SHARDS: usize = 4;
/// Latencies are kept in microseconds, up to a minute, 3 significant digits.
const MAX_US: u64 = 60_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

/// One step's deliveries: latency histogram and count.
pub struct Step {
    /// Where the step starts, in ns since the run's base instant.
    pub start_ns: u64,
    pub end_ns: u64,
    shards: Vec<Mutex<Histogram<u64>>>,
    pub received: AtomicU64,
}

/// The steps of a run and its base instant (the `t` in event data is ns since `base`).
pub struct Recorder {
    pub base: Instant,
    pub steps: Vec<Step>,
}

impl Recorder {
    /// Steps of the given lengths, back to back from `offset` after `base`.
    pub fn new(base: Instant, offset: Duration, lengths: &[Duration]) -> Self {
        let mut at = offset.as_nanos() as u64;
        let steps = lengths
            .iter()
            .map(|d| {
                let start_ns = at;
                at += d.as_nanos() as u64;
                Step {
                    start_ns,
                    end_ns: at,
                    shards: (0..SHARDS).map(|_| Mutex::new(histogram())).collect(),
                    received: AtomicU64::new(0),
                }
            })
            .collect();
        Self { base, steps }
    }

    /// Nanoseconds since the base instant.
    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// Records one delivery of an event sent at `sent_ns`, received at `now_ns`.
    pub fn record(&self, shard: usize, sent_ns: u64, now_ns: u64) {
        let Some(step) = self
            .steps
            .iter()
            .find(|s| sent_ns >= s.start_ns && sent_ns < s.end_ns)
        else {
            return;
        };
        step.received.fetch_add(1, Ordering::Relaxed);
        let us = now_ns.saturating_sub(sent_ns) / 1000;
        let mut h = step.shards[shard % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        h.saturating_record(us.max(1));
    }

    /// Step `i`'s latency histogram (all shards merged).
    pub fn histogram(&self, i: usize) -> Histogram<u64> {
        let mut all = histogram();
        for s in &self.steps[i].shards {
            let h = s.lock().unwrap_or_else(|e| e.into_inner());
            let _ = all.add(&*h);
        }
        all
    }
}

/// Percentiles of a histogram in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lat {
    /// Samples.
    pub n: u64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Lat {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            n: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }

    /// From exact samples (nearest rank), e.g. a few resume timings.
    pub fn of_samples(samples: &[Duration]) -> Self {
        let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        v.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            if v.is_empty() {
                return 0.0;
            }
            let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            v[i]
        };
        Self {
            n: v.len() as u64,
            p50: rank(0.50),
            p99: rank(0.99),
            max: v.last().copied().unwrap_or(0.0),
        }
    }
}

/// What one client saw of its own log: checked event by event.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeqCheck {
    /// The last sequence number seen (the welcome's, before any event).
    pub last: u64,
    /// Events received in order.
    pub received: u64,
    /// Sequence numbers skipped over (events never seen).
    pub gaps: u64,
    /// Events at or below one already seen.
    pub dups: u64,
}

impl SeqCheck {
    pub fn starting_at(last: u64) -> Self {
        Self {
            last,
            ..Self::default()
        }
    }

    /// Checks the next event's sequence number.
    pub fn see(&mut self, seq: u64) {
        if seq == self.last + 1 {
            self.received += 1;
            self.last = seq;
        } else if seq <= self.last {
            self.dups += 1;
        } else {
            self.gaps += seq - self.last - 1;
            self.received += 1;
            self.last = seq;
        }
    }

    pub fn add(&mut self, o: &SeqCheck) {
        self.received += o.received;
        self.gaps += o.gaps;
        self.dups += o.dups;
    }
}

/// A plain text table, printed with aligned columns.
pub struct Table {
    title: String,
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: &str, head: &[&str]) -> Self {
        Self {
            title: title.to_string(),
            head: head.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Markdown-compatible, aligned.
    pub fn render(&self) -> String {
        let cols = self.head.len();
        let mut w = vec![0usize; cols];
        for r in std::iter::once(&self.head).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(cols) {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let line = |r: &Vec<String>| {
            let cells: Vec<String> = (0..cols)
                .map(|i| {
                    let c = r.get(i).map_or("", String::as_str);
                    format!("{c:<width$}", width = w[i])
                })
                .collect();
            format!("| {} |", cells.join(" | "))
        };
        let mut out = format!("\n### {}\n\n{}\n", self.title, line(&self.head));
        let sep: Vec<String> = w.iter().map(|n| "-".repeat(*n)).collect();
        out += &format!("|-{}-|\n", sep.join("-|-"));
        for r in &self.rows {
            out += &line(r);
            out.push('\n');
        }
        out
    }
}

/// `PASS`/`FAIL`.
pub fn verdict(ok: bool) -> String {
    if ok { "PASS" } else { "FAIL" }.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_check_counts_gaps_and_dups() {
        let mut c = SeqCheck::starting_at(10);
        for s in [11, 12, 12, 15, 16, 14] {
            c.see(s);
        }
        assert_eq!((c.received, c.gaps, c.dups, c.last), (4, 2, 2, 16));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        let l = Lat::of_samples(&v);
        assert_eq!((l.p50, l.p99, l.max), (10.0, 20.0, 20.0));
    }
}
