//! `mythos-broker demo` as a user runs it: the demo is part of the binary,
//! not the library, so tests start the process and read what it prints.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// The demo process, killed when dropped.
pub struct Demo(pub Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `mythos-broker demo` on a free port; once the demo world is
/// ready, returns it, its address and the value of the `export <token>=`
/// line dev mode prints (`SERVICE`, `ADMIN`).
pub fn start(token: &str) -> (Demo, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mythos-broker"));
    cmd.args(["demo", "--bind", "127.0.0.1:0"])
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
