//! Test support: a small TCP fault proxy of our own.
//!
//! No well-kept Rust crate fits: toxiproxy is a Go server with an HTTP API to
//! run beside the tests, and the Rust TCP proxies on crates.io either forward
//! only or are unmaintained. What the fault suite needs is small: listen on a
//! free `127.0.0.1` port, forward to an upstream address, and switch at run
//! time (through a cloneable [`ProxyHandle`]) between the [`Mode`]s below,
//! plus [`ProxyHandle::reset_all`], which resets every open connection (RST:
//! `SO_LINGER 0`, then drop) on both sides.
//!
//! Owns: its listener, and two sockets and two pump tasks per connection.
//! Bounds: every loop waits on a socket, a timer or a state change; each read
//! is at most [`CHUNK`] bytes and is written before the next read, so a
//! connection holds at most one chunk per direction. Every task ends when the
//! [`Proxy`] is dropped (the state channel closes), when its connection is
//! reset, or when both sides have closed. Must not touch: anything but the
//! connections it accepted and the ones it opened upstream.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Largest read, hence largest chunk held per direction.
pub const CHUNK: usize = 16 * 1024;

/// Which way bytes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From the accepted client to the upstream server.
    Up,
    /// From the upstream server back to the client.
    Down,
}

/// What the proxy does to the bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Forward everything at once.
    Pass,
    /// Wait `base` plus up to `jitter` before forwarding each chunk.
    Latency { base: Duration, jitter: Duration },
    /// At most this many bytes per second, per connection and direction.
    Bandwidth(u64),
    /// Stop forwarding `Dir`; the other direction flows, every socket stays open.
    HalfOpen(Dir),
    /// Forward nothing either way; every socket stays open (new ones are
    /// connected upstream, then stalled too).
    Stall,
    /// New connections are accepted but never connected upstream; existing
    /// ones are stalled. Lifting it lets all of them go on (as a healed
    /// partition does within TCP's retransmission time).
    Blackhole,
}

impl Mode {
    fn forwards(&self, dir: Dir) -> bool {
        match self {
            Mode::Stall | Mode::Blackhole => false,
            Mode::HalfOpen(d) => *d != dir,
            _ => true,
        }
    }
}

#[derive(Debug, Clone)]
struct State {
    mode: Mode,
    /// Bumped by [`ProxyHandle::reset_all`]: every connection older than it is reset.
    reset: u64,
}

/// Controls a running proxy; cheap to clone and to share between tasks.
#[derive(Clone)]
pub struct ProxyHandle {
    addr: SocketAddr,
    state: Arc<watch::Sender<State>>,
    upstream: Arc<Mutex<SocketAddr>>,
    stats: Arc<Mutex<Stats>>,
}

/// What the proxy has seen, for a scenario's summary.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub accepted: u64,
    pub resets: u64,
}

/// The proxy; dropping it stops the listener and every connection.
pub struct Proxy {
    handle: ProxyHandle,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free `127.0.0.1` port, forwarding to `upstream`, in [`Mode::Pass`].
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy address");
        let (tx, rx) = watch::channel(State {
            mode: Mode::Pass,
            reset: 0,
        });
        let handle = ProxyHandle {
            addr,
            state: Arc::new(tx),
            upstream: Arc::new(Mutex::new(upstream)),
            stats: Arc::default(),
        };
        let accept = tokio::spawn(accept_loop(
            listener,
            rx,
            handle.upstream.clone(),
            handle.stats.clone(),
        ));
        Self { handle, accept }
    }

    pub fn handle(&self) -> ProxyHandle {
        self.handle.clone()
    }
}

impl std::ops::Deref for Proxy {
    type Target = ProxyHandle;
    fn deref(&self) -> &ProxyHandle {
        &self.handle
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Closing the channel ends every connection task (they all hold a
        // receiver and treat a closed channel as "stop now").
        self.handle.state.send_modify(|s| s.reset += 1);
        let _ = self.handle.state.send_replace(State {
            mode: Mode::Stall,
            reset: u64::MAX,
        });
    }
}

impl ProxyHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn mode(&self) -> Mode {
        self.state.borrow().mode
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.send_modify(|s| s.mode = mode);
    }

    /// Where connections accepted from now on are forwarded.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap_or_else(|e| e.into_inner()) = upstream;
    }

    /// Resets every open connection on both sides (RST, not FIN).
    pub fn reset_all(&self) {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).resets += 1;
        self.state
            .send_modify(|s| s.reset = s.reset.saturating_add(1));
    }

    pub fn stats(&self) -> Stats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn accept_loop(
    listener: TcpListener,
    rx: watch::Receiver<State>,
    upstream: Arc<Mutex<SocketAddr>>,
    stats: Arc<Mutex<Stats>>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors or similar: pause instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        stats.lock().unwrap_or_else(|e| e.into_inner()).accepted += 1;
        let to = *upstream.lock().unwrap_or_else(|e| e.into_inner());
        tokio::spawn(connection(client, to, rx.clone()));
    }
}

/// Resets `s` (RST on drop).
fn rst(s: &TcpStream) {
    #[allow(deprecated)] // tokio deprecates SO_LINGER for blocking closes; 0 never blocks.
    let _ = s.set_linger(Some(Duration::ZERO));
}

/// Why a wait ended.
enum Wake {
    /// The mode changed (or the wait's condition holds).
    Go,
    /// This connection must be reset.
    Reset,
    /// The proxy is gone.
    Closed,
}

/// Waits for the next state change and classifies it for a connection born at `born`.
async fn changed(rx: &mut watch::Receiver<State>, born: u64) -> Wake {
    match rx.changed().await {
        Err(_) => Wake::Closed,
        Ok(()) => {
            let s = rx.borrow_and_update();
            if s.reset == u64::MAX {
                Wake::Closed
            } else if s.reset != born {
                Wake::Reset
            } else {
                Wake::Go
            }
        }
    }
}

async fn connection(client: TcpStream, upstream: SocketAddr, mut rx: watch::Receiver<State>) {
    let born = rx.borrow_and_update().reset;
    // Blackhole: accepted, never connected upstream while it lasts.
    while rx.borrow().mode == Mode::Blackhole {
        match changed(&mut rx, born).await {
            Wake::Go => {}
            Wake::Reset | Wake::Closed => return rst(&client),
        }
    }
    let server = tokio::select! {
        r = TcpStream::connect(upstream) => match r {
            Ok(s) => s,
            // Nobody upstream: the client sees its connection reset.
            Err(_) => return rst(&client),
        },
        _ = tokio::time::sleep(Duration::from_secs(10)) => return rst(&client),
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = tokio::spawn(pump(cr, sw, Dir::Up, rx.clone(), born));
    let down = tokio::spawn(pump(sr, cw, Dir::Down, rx, born));
    // Put each socket back together before dropping it: a dropped write half
    // sends FIN (tokio shuts it down), which would come before the RST.
    if let (Ok((cr, sw, r1)), Ok((sr, cw, r2))) = tokio::join!(up, down) {
        if let (Ok(client), Ok(server)) = (cr.reunite(cw), sr.reunite(sw)) {
            if r1 || r2 {
                rst(&client);
                rst(&server);
            }
        }
    }
}

/// Moves bytes one way until EOF, an error, a reset or the proxy's end.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    dir: Dir,
    mut rx: watch::Receiver<State>,
    born: u64,
) -> (OwnedReadHalf, OwnedWriteHalf, bool) {
    let reset = |from: OwnedReadHalf, to: OwnedWriteHalf| (from, to, true);
    let mut buf = vec![0u8; CHUNK];
    loop {
        // Read only while this direction forwards.
        while !rx.borrow().mode.forwards(dir) {
            match changed(&mut rx, born).await {
                Wake::Go => {}
                Wake::Reset | Wake::Closed => return reset(from, to),
            }
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    // Pass the end on (FIN); the other pump ends on its own.
                    let _ = to.shutdown().await;
                    return (from, to, false);
                }
                Ok(n) => n,
            },
            w = changed(&mut rx, born) => match w {
                Wake::Go => continue,
                Wake::Reset | Wake::Closed => return reset(from, to),
            },
        };
        // The mode may have changed while reading: hold the chunk until it forwards.
        let mode = loop {
            let mode = rx.borrow().mode;
            if mode.forwards(dir) {
                break mode;
            }
            match changed(&mut rx, born).await {
                Wake::Go => {}
                Wake::Reset | Wake::Closed => return reset(from, to),
            }
        };
        let delay = match mode {
            Mode::Latency { base, jitter } => {
                let j = jitter.as_micros() as u64;
                base + Duration::from_micros(if j == 0 {
                    0
                } else {
                    rand::rng().random_range(0..j)
                })
            }
            Mode::Bandwidth(bps) => Duration::from_secs_f64(n as f64 / bps.max(1) as f64),
            _ => Duration::ZERO,
        };
        if !delay.is_zero() {
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    w = changed(&mut rx, born) => match w {
                        Wake::Go => {}
                        Wake::Reset | Wake::Closed => return reset(from, to),
                    },
                }
            }
        }
        // A write in progress is never abandoned on a mode change (that would
        // drop bytes): only a reset or the proxy's end stops it.
        let write = to.write_all(&buf[..n]);
        tokio::pin!(write);
        loop {
            tokio::select! {
                r = &mut write => {
                    if r.is_err() {
                        return reset(from, to);
                    }
                    break;
                }
                w = changed(&mut rx, born) => match w {
                    Wake::Go => {}
                    Wake::Reset | Wake::Closed => return reset(from, to),
                },
            }
        }
    }
}
