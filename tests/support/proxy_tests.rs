//! Unit tests of `support::proxy`, compiled into `tests/harness.rs` only
//! (code in `support/` is part of every test binary).
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::proxy::*;

async fn echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 1024];
                while let Ok(n) = s.read(&mut b).await {
                    if n == 0 || s.write_all(&b[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, task)
}

async fn roundtrip(c: &mut TcpStream, msg: &[u8], within: Duration) -> Option<Vec<u8>> {
    c.write_all(msg).await.ok()?;
    let mut out = vec![0u8; msg.len()];
    tokio::time::timeout(within, c.read_exact(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(out)
}

#[tokio::test]
async fn modes_do_what_they_say() {
    let (echo, server) = echo_server().await;
    let p = Proxy::start(echo).await;
    let mut c = TcpStream::connect(p.addr()).await.expect("connect");
    let short = Duration::from_millis(300);
    assert_eq!(
        roundtrip(&mut c, b"hi", short).await.as_deref(),
        Some(&b"hi"[..])
    );

    p.set_mode(Mode::Stall);
    assert_eq!(roundtrip(&mut c, b"x", short).await, None, "stalled");
    p.set_mode(Mode::Pass);
    // The byte held during the stall arrives, nothing is lost.
    let mut b = [0u8; 1];
    tokio::time::timeout(short, c.read_exact(&mut b))
        .await
        .expect("released")
        .expect("read");
    assert_eq!(&b, b"x");

    p.set_mode(Mode::Latency {
        base: Duration::from_millis(100),
        jitter: Duration::from_millis(20),
    });
    let t = std::time::Instant::now();
    assert!(roundtrip(&mut c, b"l", Duration::from_secs(2))
        .await
        .is_some());
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "both ways delayed"
    );

    p.set_mode(Mode::HalfOpen(Dir::Down));
    assert_eq!(roundtrip(&mut c, b"h", short).await, None, "no answers");

    p.set_mode(Mode::Blackhole);
    let mut c2 = TcpStream::connect(p.addr()).await.expect("accepted");
    assert_eq!(roundtrip(&mut c2, b"b", short).await, None, "blackholed");
    p.set_mode(Mode::Pass);
    for (c, want) in [(&mut c2, b"b"), (&mut c, b"h")] {
        let mut b = [0u8; 1];
        tokio::time::timeout(short, c.read_exact(&mut b))
            .await
            .expect("healed")
            .expect("read");
        assert_eq!(&b, want);
    }

    p.reset_all();
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(short, c.read(&mut b))
        .await
        .expect("ends");
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "RST, not FIN: {r:?}"
    );
    drop(p);
    server.abort();
}
