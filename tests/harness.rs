//! The test harness itself: a Redis server a test starts is its own process,
//! never another test's server that happened to be on the port.

mod support;

#[path = "support/history_tests.rs"]
mod history_tests;
#[path = "support/proxy_tests.rs"]
mod proxy_tests;

use support::redis::{RedisServer, SpawnError};

fn info_pid(r: &RedisServer) -> u32 {
    let mut con = r.client().get_connection().expect("connect");
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut con)
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
        .expect("process_id")
}

#[test]
fn a_started_server_is_the_child_itself() {
    let r = RedisServer::start();
    assert_ne!(r.port(), 6379);
    assert_eq!(Some(info_pid(&r)), r.pid());
}

#[test]
fn a_port_held_by_another_server_is_never_shared() {
    let a = RedisServer::start();
    // Exactly what a lost race looks like: our child is started on a port
    // where another redis-server already answers PONG.
    match RedisServer::try_start_on(a.port(), false) {
        Ok(b) => panic!(
            "the harness took the server on port {} (pid {:?}) for its own child (pid {:?})",
            a.port(),
            a.pid(),
            b.pid()
        ),
        Err(SpawnError::Exited(_)) | Err(SpawnError::NotOurs { .. }) => {}
        Err(e) => panic!("expected a refusal, got {e:?}"),
    }
    // The first server is untouched and still the only one there.
    assert_eq!(Some(info_pid(&a)), a.pid());
}

#[test]
fn a_restart_on_a_port_someone_else_took_fails_loudly() {
    let mut a = RedisServer::start_persistent();
    let port = a.port();
    a.kill();
    let b = RedisServer::try_start_on(port, false).expect("the port is free again");
    let restarted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| a.restart()));
    assert!(
        restarted.is_err(),
        "restart must not adopt another process's server"
    );
    assert_eq!(Some(info_pid(&b)), b.pid());
}

#[test]
fn a_port_handed_out_stays_reserved_while_its_server_is_down() {
    let mut a = RedisServer::start_persistent();
    let port = a.port();
    a.kill();
    // Free at the TCP level, but still this process's: neither another test
    // here nor another test process gets it before the restart.
    assert!(
        !support::redis::reserve(port),
        "port {port} of a killed server was reserved again by this process"
    );
    let path = format!("/tmp/mythos-test-ports/{port}");
    let other = std::process::Command::new("flock")
        .args(["-n", &path, "true"])
        .status()
        .expect("run flock (util-linux) as another process");
    assert_eq!(
        other.code(),
        Some(1),
        "another process could lock {path} while this one holds it"
    );
    for _ in 0..200 {
        assert_ne!(
            support::redis::free_port(),
            port,
            "a reserved port was handed out"
        );
    }
    a.restart();
    assert_eq!(Some(info_pid(&a)), a.pid());
}
