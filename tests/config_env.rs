//! Test configurations never read the developer's environment: after the
//! README's `export MYTHOS_REDIS_URL=redis://127.0.0.1:6379` (or a backlog
//! cap, a send queue, a rate), `Config::for_tests` must still be the memory
//! engine with every default. This binary holds one test only, because it
//! sets process-wide environment variables.

use std::time::Duration;

use mythos_broker::config::Config;

#[test]
fn for_tests_ignores_every_mythos_variable() {
    let hostile = [
        ("MYTHOS_REDIS_URL", "redis://127.0.0.1:6379"),
        ("MYTHOS_BIND", "0.0.0.0:6000"),
        ("MYTHOS_MAX_BACKLOG", "3"),
        ("MYTHOS_MAX_BACKLOG_AGE", "1s"),
        ("MYTHOS_DEDUPE_WINDOW", "1s"),
        ("MYTHOS_MAX_EVENT_BYTES", "10"),
        ("MYTHOS_SEND_QUEUE", "2"),
        ("MYTHOS_RATE_PER_SEC", "1"),
        ("MYTHOS_RATE_BURST", "1"),
        ("MYTHOS_WS_MAX_FRAME", "10"),
        ("MYTHOS_IDLE_TIMEOUT", "1s"),
        ("MYTHOS_KEEPALIVE", "1s"),
        ("MYTHOS_TOKEN_TTL", "1s"),
        ("MYTHOS_NODE_ID", "developer-laptop"),
        ("MYTHOS_DEV", "true"),
        ("MYTHOS_JWT_PUBLIC_KEY", "/nonexistent.pem"),
    ];
    for (k, v) in hostile {
        std::env::set_var(k, v);
    }
    let c = Config::for_tests("a-test-secret-0123456789");
    assert_eq!(
        c.redis_url, None,
        "the memory engine, not the exported Redis"
    );
    assert_eq!(c.bind.to_string(), "127.0.0.1:0");
    assert_eq!(c.max_backlog, 10_000);
    assert_eq!(c.max_backlog_age, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(c.dedupe_window, Duration::from_secs(24 * 3600));
    assert_eq!(c.max_event_bytes, 65_536);
    assert_eq!(c.send_queue, 1024);
    assert_eq!((c.rate_per_sec, c.rate_burst), (10, 20));
    assert_eq!(c.ws_max_frame, 8192);
    assert_eq!(c.idle_timeout, Duration::from_secs(60));
    assert_eq!(c.keepalive, Duration::from_secs(15));
    assert_eq!(c.token_ttl, Duration::from_secs(3600));
    assert_eq!(c.node_id, None);
    assert!(!c.dev);
    assert_eq!(c.jwt_public_key, None);
    assert_eq!(c.jwt_secret.as_deref(), Some("a-test-secret-0123456789"));
    for (k, _) in hostile {
        std::env::remove_var(k);
    }
}
