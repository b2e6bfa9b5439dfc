//! Pryv.io's official JavaScript client, unmodified, against Herald: starts a server and runs the
//! Node test of `clients/js` (`pryv` and `@pryv/socket.io` pinned in its package-lock) with
//! `HERALD` set to it. Node.js and npm are required: without them this test fails, it does not
//! skip (CI has them; `.ci/run` installs the packages with `npm ci`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::Server;

fn clients_js() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/js")
}

fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run it ({e}); Node.js 20+ and npm are required for this test"));
    if !out.status.success() {
        panic!(
            "{what} failed ({})\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

#[test]
fn the_official_js_client_works_against_herald() {
    let dir = clients_js();
    if !dir.join("node_modules/pryv").is_dir() || !dir.join("node_modules/@pryv/socket.io").is_dir() {
        run(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&dir), "npm ci in clients/js");
    }
    let s = Server::start();
    let out = run(
        Command::new("node").args(["--test", "--test-timeout=20000"]).env("HERALD", &s.base).current_dir(&dir),
        "node --test in clients/js",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    // `node --test` exits 0 only if every test passed; make sure some ran.
    assert!(stdout.contains("# pass ") && !stdout.contains("# pass 0"), "{stdout}");
    assert!(stdout.contains("# fail 0"), "{stdout}");
}
