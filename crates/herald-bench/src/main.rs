//! `herald-bench`: measures Herald against its performance targets (issue "Benchmarks").
//!
//! It starts a Herald itself (fresh data directory; or `--url` for one already running), seeds
//! what each scenario needs through the public API — or, for the million-webhook scenarios,
//! through the `Store` trait straight into the data directory before Herald starts (the bulk
//! path) — runs its own receiver for webhook POSTs, and prints each figure beside its target.
//! Every scenario is bounded in time and stops by itself. Everything runs on 127.0.0.1.

mod chaos;
mod cluster;
mod floor;
mod fuzz;
mod harness;
mod read;
mod scenarios;
mod soak;

use std::path::PathBuf;

use clap::Parser;
use serde_json::{json, Map, Value};

#[derive(Parser, Debug, Clone)]
#[command(name = "herald-bench", about = "Benchmarks Herald against its performance targets")]
pub struct Args {
    /// Scenarios: create, read, latency, fanout, memory, startup, isolation, auth-flood, chaos,
    /// log-size, fuzz, soak, cluster (PostgreSQL and NATS), or all.
    #[arg(default_value = "all")]
    pub scenarios: Vec<String>,
    /// A Herald already running (only create and latency use it; they need
    /// HERALD_WEBHOOKS_ALLOW_PRIVATE_URLS=true for latency).
    #[arg(long)]
    pub url: Option<String>,
    /// The herald binary (default: next to this one).
    #[arg(long)]
    pub herald: Option<PathBuf>,
    /// Tiny sizes: proves every scenario works, measures nothing meaningful (CI).
    #[arg(long)]
    pub tiny: bool,
    /// Repeat each scenario and report the median.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results.json")]
    pub out: PathBuf,
    /// Webhooks for the memory and start-up scenarios.
    #[arg(long, default_value_t = 1_000_000)]
    pub webhooks: usize,
    /// Users for the fan-out scenario.
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    /// Length of the soak scenario in seconds (default: 1800; 6 with --tiny).
    #[arg(long)]
    pub soak_secs: Option<u64>,
    /// kill -9 cycles of the chaos scenario.
    #[arg(long, default_value_t = 30)]
    pub cycles: usize,
    /// Events of the `read` scenario's user.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: usize,
    /// Keep the `read` scenario's data directory here and reuse it on the next run (building a
    /// million events takes a while).
    #[arg(long)]
    pub keep_data: Option<PathBuf>,
    /// The cluster scenario's 1-node figures only (8 clients, 1 client): quicker A/B runs.
    #[arg(long)]
    pub cluster_one_node: bool,
}

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: &'static str,
    pub value: f64,
    pub unit: &'static str,
    /// (target, true when higher is better)
    pub target: Option<(f64, bool)>,
}

impl Figure {
    pub fn met(&self) -> Option<bool> {
        self.target.map(|(t, higher)| if higher { self.value >= t } else { self.value <= t })
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let all = [
        "create",
        "read",
        "latency",
        "fanout",
        "memory",
        "startup",
        "isolation",
        "auth-flood",
        "chaos",
        "log-size",
        "fuzz",
        "soak",
        "cluster",
    ];
    let wanted: Vec<String> =
        if args.scenarios.iter().any(|s| s == "all") { all.iter().map(|s| s.to_string()).collect() } else { args.scenarios.clone() };
    if let Some(bad) = wanted.iter().find(|s| !all.contains(&s.as_str())) {
        eprintln!("unknown scenario {bad}; choose from {all:?} or all");
        std::process::exit(2);
    }
    let mut results = Map::new();
    let mut failed = false;
    for name in &wanted {
        let mut runs: Vec<Vec<Figure>> = vec![];
        for i in 0..args.runs.max(1) {
            eprintln!("== {name} (run {}/{})", i + 1, args.runs.max(1));
            match scenarios::run(name, &args).await {
                Ok(f) => runs.push(f),
                Err(e) => {
                    eprintln!("{name} failed: {e}");
                    failed = true;
                    break;
                }
            }
        }
        let Some(first) = runs.first() else { continue };
        let mut figs = Vec::new();
        for (k, f) in first.iter().enumerate() {
            let values: Vec<f64> = runs.iter().filter_map(|r| r.get(k).map(|x| x.value)).collect();
            figs.push(Figure { value: median(values.clone()), ..f.clone() });
            let _ = values;
        }
        let mut out = Map::new();
        for f in &figs {
            let met = f.met();
            let target = f.target.map(|(t, higher)| format!("{} {t} {}", if higher { "≥" } else { "≤" }, f.unit)).unwrap_or_default();
            println!(
                "{:<10} {:<58} {:>12.2} {:<6} target {:<16} {}",
                name,
                f.name,
                f.value,
                f.unit,
                target,
                match met {
                    Some(true) => "met",
                    Some(false) => "MISSED",
                    None => "",
                }
            );
            out.insert(
                f.name.to_string(),
                json!({ "value": f.value, "unit": f.unit, "target": f.target.map(|t| t.0), "met": met, "runs": runs.len(),
                        "all": runs.iter().filter_map(|r| r.iter().find(|x| x.name == f.name).map(|x| x.value)).collect::<Vec<_>>() }),
            );
        }
        results.insert(name.clone(), Value::Object(out));
    }
    let doc = json!({ "tiny": args.tiny, "results": results });
    if let Err(e) = std::fs::write(&args.out, serde_json::to_string_pretty(&doc).unwrap_or_default()) {
        eprintln!("cannot write {}: {e}", args.out.display());
    }
    eprintln!("results written to {}", args.out.display());
    if failed {
        std::process::exit(1);
    }
}
