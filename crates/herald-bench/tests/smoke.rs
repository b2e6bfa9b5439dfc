//! Every scenario of the harness, run once at `--tiny` size against the real `herald` binary:
//! the benchmarks must keep working as the server changes, though a tiny run measures nothing.
//!
//! It lives here rather than as a step of `.ci/run` so that `cargo test --workspace` builds
//! `herald-bench` with the same dependency features as everything else it builds: a separate
//! `cargo build -p herald -p herald-bench` resolved them differently and recompiled some fifty
//! crates (2 to 4 minutes of CI).
//!
//! `herald` is taken from next to `herald-bench` (`target/<profile>/`): `cargo test --workspace`
//! builds it for the server's own tests. The `cluster` scenario needs PostgreSQL and NATS: without
//! them it is skipped with a line saying so, except under CI (`CI` set), where it must run.

use std::path::PathBuf;
use std::process::Command;

/// The scenarios that need no PostgreSQL or NATS: run by name when those are missing. With
/// them, the run is `all`, so a scenario added to the harness is covered here at once.
const WITHOUT_CLUSTER: [&str; 12] =
    ["create", "read", "latency", "fanout", "memory", "startup", "isolation", "auth-flood", "chaos", "log-size", "fuzz", "soak"];

fn listening(addr: &str) -> bool {
    std::net::TcpStream::connect(addr).is_ok()
}

/// Straight to stderr, past the test harness's capture (which `eprintln!` goes to): a skip must
/// be seen.
fn skipped(what: &str) {
    let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("SKIPPED {what}\n"));
}

#[test]
fn every_scenario_runs_at_tiny_size_and_reports_its_figures() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_herald-bench"));
    let herald = bench.with_file_name(format!("herald{}", std::env::consts::EXE_SUFFIX));
    let ci = std::env::var_os("CI").is_some();
    if !herald.exists() {
        assert!(!ci, "{} is missing: run `cargo test --workspace`, which builds it", herald.display());
        skipped(&format!("the benchmark smoke run: {} is not built (`cargo test --workspace` builds it)", herald.display()));
        return;
    }
    // The scenario's own defaults (`HERALD_BENCH_DATABASE_URL`, `HERALD_BENCH_NATS_URL`) point here.
    let services = std::env::var_os("HERALD_BENCH_DATABASE_URL").is_some() || (listening("127.0.0.1:5432") && listening("127.0.0.1:4222"));
    let (scenarios, expected): (Vec<&str>, Vec<&str>) = if services {
        (vec!["all"], WITHOUT_CLUSTER.iter().copied().chain(["cluster"]).collect())
    } else {
        assert!(!ci, "the cluster scenario needs PostgreSQL (127.0.0.1:5432) and NATS (127.0.0.1:4222)");
        skipped("the benchmark smoke run's cluster scenario: PostgreSQL or NATS is not reachable on 127.0.0.1");
        (WITHOUT_CLUSTER.to_vec(), WITHOUT_CLUSTER.to_vec())
    };

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench-smoke.json");
    let run = Command::new(&bench)
        .arg("--tiny")
        .arg("--herald")
        .arg(&herald)
        .arg("--out")
        .arg(&out)
        .args(&scenarios)
        .current_dir(dir.path())
        .output()
        .expect("herald-bench starts");
    assert!(
        run.status.success(),
        "herald-bench --tiny failed ({}):\n{}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );

    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).expect("the results file is written")).unwrap();
    assert_eq!(doc["tiny"], true);
    let results = doc["results"].as_object().expect("results by scenario");
    for name in expected {
        assert!(results.contains_key(name), "no results for the {name} scenario: {doc}");
    }
    for (name, figures) in results {
        let figures = figures.as_object().unwrap_or_else(|| panic!("{name}: figures by name: {figures}"));
        assert!(!figures.is_empty(), "the {name} scenario reported no figure");
        for (figure, v) in figures {
            let value = v["value"].as_f64().unwrap_or_else(|| panic!("{name}: {figure} has no value: {v}"));
            assert!(value.is_finite() && value >= 0.0, "{name}: {figure} = {value}");
            assert_eq!(v["runs"], 1, "{name}: {figure}");
        }
    }
}
