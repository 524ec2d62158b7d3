//! The demo example (`examples/demo`, `cargo run --example demo`) as a user
//! runs it: it is a program of its own, not part of the library, so tests
//! start the process and read what it prints.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The demo example's binary, `target/<profile>/examples/demo`, next to
/// this test binary's `deps/`. `cargo test` builds examples only as unit
/// tests (`--all-targets`) or not at all (`--test demo`), so the first call
/// builds it with the cargo that builds the tests (`cargo build --example
/// demo`, same profile and target directory; quick when it is fresh).
pub fn bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("the test binary's path");
            let profile_dir = exe
                .parent()
                .and_then(|deps| deps.parent())
                .expect("target/<profile>/deps/<test binary>");
            let target_dir = profile_dir.parent().expect("target/");
            let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
                Some("debug") | None => "dev",
                Some(p) => p,
            };
            let status = Command::new(env!("CARGO"))
                .args([
                    "build",
                    "--quiet",
                    "--example",
                    "demo",
                    "--profile",
                    profile,
                ])
                .arg("--target-dir")
                .arg(target_dir)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .stdin(Stdio::null())
                .status()
                .expect("run cargo build --example demo");
            assert!(status.success(), "cargo build --example demo failed");
            let bin = profile_dir.join("examples").join("demo");
            assert!(bin.exists(), "no demo example at {}", bin.display());
            bin
        })
        .clone()
}

/// The demo process, killed when dropped.
pub struct Demo(pub Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the demo example on a free port; once the demo world is
/// ready, returns it, its address and the value of the `export <token>=`
/// line dev mode prints (`SERVICE`, `ADMIN`).
pub fn start(token: &str) -> (Demo, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(["--bind", "127.0.0.1:0"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MYTHOS_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    super::redis::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().expect("spawn the demo");
    let stdout = child.stdout.take().expect("stdout");
    let demo = Demo(child);
    let prefix = format!("export {token}=");
    let (mut addr, mut value) = (None, None);
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.expect("read stdout");
        if let Some(rest) = line.strip_prefix("mythos-broker listening on http://") {
            addr = rest.split_whitespace().next().map(str::to_string);
        }
        if let Some(t) = line.strip_prefix(&prefix) {
            value = Some(t.to_string());
        }
        if line.starts_with("demo world ready") {
            break;
        }
    }
    // Keep reading, so a later line does not fail on a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let (Some(addr), Some(value)) = (addr, value) else {
        panic!("the demo did not print its address and `{prefix}`");
    };
    (demo, addr, value)
}
