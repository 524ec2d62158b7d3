//! The HTTP listener: accepts connections, serves the warp routes on each, and
//! drains them on shutdown.
//!
//! Owns: the accept loop and two things warp 0.4 cannot do itself: a stream
//! that writes its own body (SSE answers with its head plus a [`TakeOver`]
//! extension; once hyper has flushed the head, this layer hands the socket to
//! the session), and a WebSocket with our own buffer sizes (this layer hands
//! the connection's upgrade to the route as an [`Upgrade`] extension).
//! Must not touch: routing, auth, sessions.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;
use tracing::Instrument;
use warp::Filter;

type BoxBody =
    http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The connection's HTTP upgrade, for a route that switches protocols.
#[derive(Clone)]
pub struct Upgrade(Arc<Mutex<Option<hyper::upgrade::OnUpgrade>>>);

impl Upgrade {
    /// Takes the upgrade (once).
    pub fn take(&self) -> Option<hyper::upgrade::OnUpgrade> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// A streaming answer (SSE) that takes its connection over: the route
/// answers with headers only plus this extension; once hyper has written and
/// flushed that head (`Transfer-Encoding: chunked`), this layer takes the
/// socket back from hyper and hands it to the session task, which writes the
/// body's chunks itself. hyper's read and write buffers (8 KiB each, its
/// minimum) and its connection task go with it; the stream costs the session
/// task and the socket, as a WebSocket does.
#[derive(Clone)]
pub struct TakeOver(Arc<Mutex<Option<oneshot::Sender<TcpStream>>>>);

impl TakeOver {
    /// The extension to answer with, and where the socket will arrive; the
    /// receiver fails if the connection ends before hyper wrote the head.
    pub fn new() -> (Self, oneshot::Receiver<TcpStream>) {
        let (tx, rx) = oneshot::channel();
        (Self(Arc::new(Mutex::new(Some(tx)))), rx)
    }

    fn take(&self) -> Option<oneshot::Sender<TcpStream>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The body hyper streams for a [`TakeOver`] answer: never a byte. Being
/// polled tells that the head is written (into hyper's buffer); it stays
/// pending until the connection is taken over.
struct HeadOnly(Arc<Activity>);

impl hyper::body::Body for HeadOnly {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.head_written();
        std::task::Poll::Pending
    }
}

/// The socket as hyper sees it; notes hyper's flushes for [`TakeOver`].
struct ConnIo {
    tcp: TcpStream,
    activity: Arc<Activity>,
}

impl tokio::io::AsyncRead for ConnIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for ConnIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    /// hyper flushes its socket only once its own buffer is empty.
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let r = std::pin::Pin::new(&mut self.tcp).poll_flush(cx);
        if let std::task::Poll::Ready(Ok(())) = r {
            self.activity.flushed();
        }
        r
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Folds repeated lines of a list-valued header into one comma-separated
/// line, which means the same (RFC 9110 §5.3; RFC 6455 §11.3.4 for
/// `Sec-WebSocket-Protocol`), so that routes read one value.
fn join_repeated_header(headers: &mut warp::http::HeaderMap, name: &'static str) {
    if headers.get_all(name).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<u8> = headers
        .get_all(name)
        .iter()
        .map(|v| v.as_bytes())
        .collect::<Vec<_>>()
        .join(&b", "[..]);
    if let Ok(v) = warp::http::HeaderValue::from_bytes(&joined) {
        headers.insert(name, v);
    }
}

/// The response with hyper's body type; `true` when it is a stream that
/// takes the connection over (SSE).
fn into_box_body(
    resp: warp::reply::Response,
    activity: &Arc<Activity>,
) -> (hyper::Response<BoxBody>, bool) {
    let (parts, body) = resp.into_parts();
    if let Some(tx) = parts.extensions.get::<TakeOver>().and_then(TakeOver::take) {
        *activity.claim.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        let body = BodyExt::boxed(HeadOnly(activity.clone()));
        return (hyper::Response::from_parts(parts, body), true);
    }
    (
        hyper::Response::from_parts(parts, body.map_err(|e| e.into()).boxed()),
        false,
    )
}

/// Slowloris guard of one HTTP connection: requests in progress, when the
/// last one finished, and whether it carries a stream. A connection with no
/// request in progress for the timeout is closed: headers that do not arrive
/// (hyper has not dispatched a request yet) look exactly like that, and so
/// does an idle keep-alive. One timer per connection, re-armed only when it
/// fires (hyper's per-request `header_read_timeout` cost ~12 % of the
/// broker's CPU at W1: docs/benchmarks.md). An SSE stream, or a WebSocket
/// (the connection future ends at the upgrade), is not idle.
struct Activity {
    start: std::time::Instant,
    in_flight: std::sync::atomic::AtomicUsize,
    streaming: std::sync::atomic::AtomicBool,
    /// Milliseconds from `start` to when the last request finished.
    last_ms: std::sync::atomic::AtomicU64,
    /// Where a [`TakeOver`] answer wants the socket.
    claim: Mutex<Option<oneshot::Sender<TcpStream>>>,
    /// [`TakeOver`]'s progress: [`HEAD_WRITTEN`], then [`HEAD_FLUSHED`].
    handoff: std::sync::atomic::AtomicU8,
}

/// hyper has polled a [`HeadOnly`] body: the head is in its write buffer.
const HEAD_WRITTEN: u8 = 1;
/// ... and hyper has flushed since: the head is on the socket.
const HEAD_FLUSHED: u8 = 2;

impl Activity {
    fn new() -> Self {
        Self {
            start: std::time::Instant::now(),
            in_flight: Default::default(),
            streaming: Default::default(),
            last_ms: Default::default(),
            claim: Mutex::new(None),
            handoff: Default::default(),
        }
    }

    fn head_written(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.handoff.load(Relaxed) == 0 {
            self.handoff.store(HEAD_WRITTEN, Relaxed);
        }
    }

    fn flushed(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.handoff.load(Relaxed) == HEAD_WRITTEN {
            self.handoff.store(HEAD_FLUSHED, Relaxed);
        }
    }

    /// The connection may be taken over: the head is on the socket.
    fn head_flushed(&self) -> bool {
        self.handoff.load(std::sync::atomic::Ordering::Relaxed) == HEAD_FLUSHED
    }

    fn started(&self) {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn finished(&self, streaming: bool) {
        use std::sync::atomic::Ordering::SeqCst;
        if streaming {
            self.streaming.store(true, SeqCst);
        }
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, SeqCst);
        self.in_flight.fetch_sub(1, SeqCst);
    }

    /// Resolves once the connection has been idle for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        use std::sync::atomic::Ordering::SeqCst;
        let mut deadline = tokio::time::Instant::from_std(self.start) + timeout;
        loop {
            tokio::time::sleep_until(deadline).await;
            if self.streaming.load(SeqCst) {
                return std::future::pending().await;
            }
            let now = tokio::time::Instant::now();
            if self.in_flight.load(SeqCst) > 0 {
                deadline = now + timeout;
                continue;
            }
            let idle_since = tokio::time::Instant::from_std(self.start)
                + Duration::from_millis(self.last_ms.load(SeqCst));
            if now >= idle_since + timeout {
                return;
            }
            deadline = idle_since + timeout;
        }
    }
}

/// How a connection's hyper part ended.
enum Ended {
    /// Closed, or upgraded (hyper hands a WebSocket its socket).
    Done,
    /// A [`TakeOver`] answer's head is on the socket: the socket is its.
    TakenOver,
}

/// Runs hyper on the connection until it ends or a [`TakeOver`] answer's
/// head is flushed (hyper then waits forever on that answer's body).
async fn drive<S, B>(
    conn: &mut http1::UpgradeableConnection<TokioIo<ConnIo>, S>,
    activity: &Activity,
) -> Ended
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B> + Unpin,
    S::Future: Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(r) = std::pin::Pin::new(&mut *conn).poll(cx) {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return std::task::Poll::Ready(Ended::Done);
        }
        if activity.head_flushed() {
            return std::task::Poll::Ready(Ended::TakenOver);
        }
        std::task::Poll::Pending
    })
    .await
}

/// Serves `filter` on `listener` until `shutdown`, then waits up to `grace`
/// for open HTTP exchanges to finish. A connection with no request in
/// progress for `idle_timeout` is closed (see [`Activity`]).
///
/// HTTP/1.1 only (hyper is built without HTTP/2), with hyper's own `http1`
/// builder: hyper-util's `auto` builder first reads the socket to tell an
/// HTTP/2 preface, hands the bytes back, and hyper's next read then doubles
/// the connection's read buffer to 16 KiB, which an SSE stream keeps for its
/// whole life. hyper-util's graceful shutdown does not take an upgradeable
/// `http1` connection, so each connection task drains itself on `shutdown`
/// (`graceful_shutdown`: no new request, the one in progress finishes) and a
/// [`TaskTracker`] waits for them.
pub async fn serve<F>(
    listener: TcpListener,
    filter: F,
    shutdown: CancellationToken,
    grace: Duration,
    idle_timeout: Duration,
) where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    let connections = TaskTracker::new();
    loop {
        let (io, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = io.set_nodelay(true);
        // In an `Arc`, so that the connection is `Unpin` (taken apart by
        // `into_parts` for a TakeOver).
        let svc = Arc::new(warp::service(filter.clone()));
        let activity = Arc::new(Activity::new());
        let act = activity.clone();
        let svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                let mut svc = (*svc).clone();
                let upgrade = hyper::upgrade::on(&mut req);
                join_repeated_header(req.headers_mut(), "sec-websocket-protocol");
                req.extensions_mut()
                    .insert(Upgrade(Arc::new(Mutex::new(Some(upgrade)))));
                let act = act.clone();
                act.started();
                // The path only: a query string may carry `?token=`.
                let span = tracing::info_span!("request", method = %req.method(),
                    path = %req.uri().path());
                // Boxed: hyper keeps a slot of this future's size for every
                // connection (an SSE stream's too) from its first request on.
                Box::pin(
                    async move {
                        let started = std::time::Instant::now();
                        let resp = svc
                            .call(req)
                            .await
                            .unwrap_or_else(|e: Infallible| match e {});
                        tracing::debug!(
                            status = resp.status().as_u16(),
                            elapsed_us = started.elapsed().as_micros() as u64,
                            "answered"
                        );
                        let (resp, streaming) = into_box_body(resp, &act);
                        act.finished(streaming);
                        Ok::<_, Infallible>(resp)
                    }
                    .instrument(span),
                )
            });
        let io = ConnIo {
            tcp: io,
            activity: activity.clone(),
        };
        let mut conn = http1::Builder::new()
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let ended = tokio::select! {
                e = drive(&mut conn, &activity) => e,
                // Dropping the connection closes it.
                _ = activity.idle_for(idle_timeout) => {
                    tracing::debug!("connection closed: no request within {idle_timeout:?}");
                    return;
                }
                _ = shutdown.cancelled() => {
                    // A stream about to be taken over ends with its session.
                    if activity.streaming.load(std::sync::atomic::Ordering::SeqCst) {
                        return;
                    }
                    std::pin::Pin::new(&mut conn).graceful_shutdown();
                    drive(&mut conn, &activity).await
                }
            };
            if let Ended::TakenOver = ended {
                let tx = activity
                    .claim
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                if let (Some(parts), Some(tx)) = (conn.into_parts(), tx) {
                    // A session that is gone drops the socket: closed.
                    let _ = tx.send(parts.io.into_inner().tcp);
                }
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("some HTTP connections were still open after the grace period");
    }
}
