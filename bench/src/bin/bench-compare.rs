//! `bench-compare`: one side-by-side table of the sittings `bench-delivery
//! --json` wrote (issue 19): ours over WebSocket and SSE (and an older build
//! of ours, if measured) against the Socket.IO peer, with ratios us/peer and
//! the targets.
//!
//! `bench-compare [--out FILE] LABEL=FILE...`, e.g.
//! `bench-compare ws=ws.json sse=sse.json peer=peer.json`; the file whose
//! `"peer"` is true is the reference. `scripts/bench-peer` runs it.
//! Must not touch: the measurements (it only reads their JSON).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mythos_bench::stats::{verdict, Table};
use serde_json::Value;

#[derive(Debug, Parser)]
#[command(about = "Side-by-side table of bench-delivery --json files, with ratios us/peer")]
struct Args {
    /// `LABEL=FILE` for each sitting, in the order of the columns.
    #[arg(required = true, value_parser = parse_labelled)]
    files: Vec<(String, PathBuf)>,
    /// Also write the table (markdown) to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn parse_labelled(s: &str) -> Result<(String, PathBuf), String> {
    s.split_once('=')
        .map(|(l, p)| (l.to_string(), PathBuf::from(p)))
        .ok_or_else(|| format!("`{s}` is not LABEL=FILE"))
}

/// One row: its name, where the figure is (`workload`, `field`), and
/// whether more is better.
struct Measure {
    name: &'static str,
    workload: &'static str,
    field: &'static str,
    higher_is_better: bool,
}

const MEASURES: &[Measure] = &[
    Measure {
        name: "W1 latency p99 (ms)",
        workload: "w1",
        field: "p99_ms",
        higher_is_better: false,
    },
    Measure {
        name: "W1 deliveries per server CPU-s",
        workload: "w1",
        field: "per_server_cpu_s",
        higher_is_better: true,
    },
    Measure {
        name: "W1 deliveries per (server + Redis) CPU-s",
        workload: "w1",
        field: "per_server_redis_cpu_s",
        higher_is_better: true,
    },
    Measure {
        name: "W1max median deliveries/s",
        workload: "w1max",
        field: "median_deliveries_per_s",
        higher_is_better: true,
    },
    Measure {
        name: "W1max per (server + Redis) CPU-s, median",
        workload: "w1max",
        field: "median_per_server_redis_cpu_s",
        higher_is_better: true,
    },
    Measure {
        name: "W3 idle KiB per connection",
        workload: "w3",
        field: "kib_per_connection",
        higher_is_better: false,
    },
];

/// A sitting: its label and its JSON.
struct Sitting {
    label: String,
    doc: Value,
}

impl Sitting {
    fn figure(&self, workload: &str, field: &str) -> Option<f64> {
        self.doc[workload][field].as_f64()
    }

    fn is_peer(&self) -> bool {
        self.doc["peer"].as_bool().unwrap_or(false)
    }
}

fn load(files: &[(String, PathBuf)]) -> Result<Vec<Sitting>, String> {
    files
        .iter()
        .map(|(label, path)| {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let doc = serde_json::from_str(&text)
                .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
            Ok(Sitting {
                label: label.clone(),
                doc,
            })
        })
        .collect()
}

fn fmt(v: Option<f64>) -> String {
    match v {
        Some(x) if x.abs() >= 100.0 => {
            let s = format!("{:.0}", x);
            let mut out = String::new();
            for (i, c) in s.chars().enumerate() {
                if i > 0 && (s.len() - i) % 3 == 0 && c != '-' {
                    out.push(',');
                }
                out.push(c);
            }
            out
        }
        Some(x) if x.abs() < 1e-9 => "0".into(),
        Some(x) => format!("{x:.2}"),
        None => "—".into(),
    }
}

fn ratio(us: Option<f64>, peer: Option<f64>) -> Option<f64> {
    match (us, peer) {
        (Some(u), Some(p)) if p > 0.0 => Some(u / p),
        _ => None,
    }
}

/// The side-by-side table: every sitting's figures, then us/peer per sitting.
fn side_by_side(sittings: &[Sitting], peer: Option<&Sitting>) -> Table {
    let ours: Vec<&Sitting> = sittings.iter().filter(|s| !s.is_peer()).collect();
    let mut head: Vec<String> = vec!["measure".into()];
    head.extend(sittings.iter().map(|s| s.label.clone()));
    if let Some(p) = peer {
        head.extend(ours.iter().map(|s| format!("{} / {}", s.label, p.label)));
    }
    head.push("better".into());
    let head_refs: Vec<&str> = head.iter().map(String::as_str).collect();
    let mut tab = Table::new(
        "Delivery: ours and the Socket.IO peer (issue 19)",
        &head_refs,
    );
    for m in MEASURES {
        let mut row = vec![m.name.to_string()];
        row.extend(sittings.iter().map(|s| fmt(s.figure(m.workload, m.field))));
        if let Some(p) = peer {
            let pv = p.figure(m.workload, m.field);
            row.extend(ours.iter().map(|s| {
                ratio(s.figure(m.workload, m.field), pv)
                    .map_or("—".into(), |r| format!("{r:.2}×"))
            }));
        }
        row.push(
            if m.higher_is_better {
                "higher"
            } else {
                "lower"
            }
            .into(),
        );
        tab.row(row);
    }
    let mut lost = vec!["W1 lost / duplicated / ended".to_string()];
    lost.extend(sittings.iter().map(|s| {
        let w = &s.doc["w1"];
        match (
            w["lost"].as_u64(),
            w["duplicated"].as_u64(),
            w["ended"].as_u64(),
        ) {
            (Some(l), Some(d), Some(e)) => format!("{l} / {d} / {e}"),
            _ => "—".into(),
        }
    }));
    tab.row(lost);
    tab
}

/// Issue 19's targets for each of our sittings with the transport it names.
fn targets(sittings: &[Sitting], peer: &Sitting) -> Table {
    let mut tab = Table::new(
        "Issue 19 targets (ratios us/peer, one sitting)",
        &["sitting", "target", "ratio", "result"],
    );
    let w1max = |s: &Sitting| s.figure("w1max", "median_deliveries_per_s");
    let per_cpu = |s: &Sitting| s.figure("w1", "per_server_redis_cpu_s");
    for s in sittings.iter().filter(|s| !s.is_peer()) {
        let sse = s.doc["subject"].as_str().is_some_and(|t| t.contains("SSE"));
        let need = if sse { 1.0 } else { 1.3 };
        let r = ratio(w1max(s), w1max(peer));
        tab.row(vec![
            s.label.clone(),
            format!("W1max ≥ {need}× the peer's"),
            r.map_or("—".into(), |r| format!("{r:.2}×")),
            r.map_or("not measured".into(), |r| verdict(r >= need)),
        ]);
        let r = ratio(per_cpu(s), per_cpu(peer));
        tab.row(vec![
            s.label.clone(),
            "W1 deliveries per (server + Redis) CPU-s ≥ 0.9× the peer's".into(),
            r.map_or("—".into(), |r| format!("{r:.2}×")),
            r.map_or("not measured".into(), |r| verdict(r >= 0.9)),
        ]);
    }
    tab
}

fn main() -> ExitCode {
    let a = Args::parse();
    let sittings = match load(&a.files) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bench-compare: {e}");
            return ExitCode::from(2);
        }
    };
    let peer = sittings.iter().find(|s| s.is_peer());
    let mut out = side_by_side(&sittings, peer).render();
    match peer {
        Some(p) => out.push_str(&targets(&sittings, p).render()),
        None => out.push_str("\nNo peer sitting given: no ratios.\n"),
    }
    out.push_str("\nSittings:\n");
    for s in &sittings {
        out.push_str(&format!(
            "- {}: {} ({}); {}\n",
            s.label,
            s.doc["subject"].as_str().unwrap_or("?"),
            s.doc["server"].as_str().unwrap_or("?"),
            s.doc["machine"].as_str().unwrap_or("?")
        ));
    }
    print!("{out}");
    if let Some(path) = &a.out {
        if let Err(e) = std::fs::write(path, &out) {
            eprintln!("bench-compare: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}
