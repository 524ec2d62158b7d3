//! The HTTP listener: accepts connections, serves the warp routes on each, and
//! drains them on shutdown.
//!
//! Owns: the accept loop and two things warp 0.4 cannot do itself: streaming a
//! response body of our own framing (a route that streams, SSE, answers with an
//! empty body plus a [`StreamBody`] extension, which this layer swaps in), and
//! a WebSocket with our own buffer sizes (this layer hands the connection's
//! upgrade to the route as an [`Upgrade`] extension).
//! Must not touch: routing, auth, sessions.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody as HttpStreamBody};
use hyper::body::Frame;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
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

/// A response body produced chunk by chunk by a session task: the route
/// answers with it as an extension, and this layer swaps it in.
#[derive(Clone)]
pub struct StreamBody(Arc<Mutex<Option<BodyRx>>>);

impl StreamBody {
    fn take(&self) -> Option<BodyRx> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// A bounded queue of `depth` body chunks from a session task to the
/// connection: its sending half and the [`StreamBody`] to answer with. Not a
/// tokio `mpsc`, which allocates ~1.5 KiB per stream up front (a
/// cache-padded header and a block of 32 slots); this one is one small
/// allocation plus the chunks queued.
pub fn body_channel(depth: usize) -> (BodyTx, StreamBody) {
    let shared = Arc::new(BodyShared {
        depth: depth.max(1),
        state: Mutex::new(BodyState::default()),
    });
    let rx = BodyRx(shared.clone());
    (BodyTx(shared), StreamBody(Arc::new(Mutex::new(Some(rx)))))
}

struct BodyShared {
    depth: usize,
    state: Mutex<BodyState>,
}

#[derive(Default)]
struct BodyState {
    chunks: std::collections::VecDeque<Bytes>,
    /// The connection, waiting for a chunk.
    rx_waker: Option<std::task::Waker>,
    /// The session, waiting for room or for the connection to go.
    tx_waker: Option<std::task::Waker>,
    rx_gone: bool,
    tx_gone: bool,
}

impl BodyShared {
    fn state(&self) -> std::sync::MutexGuard<'_, BodyState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn park(slot: &mut Option<std::task::Waker>, cx: &std::task::Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// The session's end of a [`body_channel`]; the body ends when it is dropped.
pub struct BodyTx(Arc<BodyShared>);

impl BodyTx {
    /// Queues `chunk`, waiting while `depth` chunks are queued; gives it back
    /// if the connection is gone.
    pub async fn send(&self, chunk: Bytes) -> Result<(), Bytes> {
        let mut chunk = Some(chunk);
        std::future::poll_fn(|cx| {
            let mut st = self.0.state();
            if st.rx_gone {
                return std::task::Poll::Ready(Err(chunk.take().unwrap_or_default()));
            }
            if st.chunks.len() < self.0.depth {
                st.chunks.push_back(chunk.take().unwrap_or_default());
                if let Some(w) = st.rx_waker.take() {
                    w.wake();
                }
                return std::task::Poll::Ready(Ok(()));
            }
            park(&mut st.tx_waker, cx);
            std::task::Poll::Pending
        })
        .await
    }

    /// Resolves once the connection has dropped the body (the client left).
    pub async fn closed(&self) {
        std::future::poll_fn(|cx| {
            let mut st = self.0.state();
            if st.rx_gone {
                return std::task::Poll::Ready(());
            }
            park(&mut st.tx_waker, cx);
            std::task::Poll::Pending
        })
        .await
    }
}

impl Drop for BodyTx {
    fn drop(&mut self) {
        let mut st = self.0.state();
        st.tx_gone = true;
        if let Some(w) = st.rx_waker.take() {
            w.wake();
        }
    }
}

/// The connection's end of a [`body_channel`]: the chunks, then the end
/// once the session dropped its [`BodyTx`].
struct BodyRx(Arc<BodyShared>);

impl futures_util::Stream for BodyRx {
    type Item = Bytes;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Bytes>> {
        let mut st = self.0.state();
        if let Some(chunk) = st.chunks.pop_front() {
            if let Some(w) = st.tx_waker.take() {
                w.wake();
            }
            return std::task::Poll::Ready(Some(chunk));
        }
        if st.tx_gone {
            return std::task::Poll::Ready(None);
        }
        park(&mut st.rx_waker, cx);
        std::task::Poll::Pending
    }
}

impl Drop for BodyRx {
    fn drop(&mut self) {
        let mut st = self.0.state();
        st.rx_gone = true;
        st.chunks.clear();
        if let Some(w) = st.tx_waker.take() {
            w.wake();
        }
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

/// The response with our body; `true` when it is a stream (SSE).
fn into_box_body(resp: warp::reply::Response) -> (hyper::Response<BoxBody>, bool) {
    let (parts, body) = resp.into_parts();
    if let Some(rx) = parts
        .extensions
        .get::<StreamBody>()
        .and_then(StreamBody::take)
    {
        let frames = rx.map(|b| Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(b)));
        let body = BodyExt::boxed(HttpStreamBody::new(frames));
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
}

impl Activity {
    fn new() -> Self {
        Self {
            start: std::time::Instant::now(),
            in_flight: Default::default(),
            streaming: Default::default(),
            last_ms: Default::default(),
        }
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
        let svc = warp::service(filter.clone());
        let activity = Arc::new(Activity::new());
        let act = activity.clone();
        let svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                let mut svc = svc.clone();
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
                        let (resp, streaming) = into_box_body(resp);
                        act.finished(streaming);
                        Ok::<_, Infallible>(resp)
                    }
                    .instrument(span),
                )
            });
        let conn = http1::Builder::new()
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let draining = tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    false
                }
                // Dropping the connection closes it.
                _ = activity.idle_for(idle_timeout) => {
                    tracing::debug!("connection closed: no request within {idle_timeout:?}");
                    false
                }
                _ = shutdown.cancelled() => true,
            };
            if draining {
                conn.as_mut().graceful_shutdown();
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error while draining");
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
