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
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower_service::Service;
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

/// A response body produced chunk by chunk by a session task.
#[derive(Clone)]
pub struct StreamBody(Arc<Mutex<Option<mpsc::Receiver<Bytes>>>>);

impl StreamBody {
    pub fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        Self(Arc::new(Mutex::new(Some(rx))))
    }
    fn take(&self) -> Option<mpsc::Receiver<Bytes>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
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

fn into_box_body(resp: warp::reply::Response) -> hyper::Response<BoxBody> {
    let (parts, body) = resp.into_parts();
    if let Some(rx) = parts
        .extensions
        .get::<StreamBody>()
        .and_then(StreamBody::take)
    {
        let frames = tokio_stream::wrappers::ReceiverStream::new(rx)
            .map(|b| Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(b)));
        return hyper::Response::from_parts(parts, BodyExt::boxed(HttpStreamBody::new(frames)));
    }
    hyper::Response::from_parts(parts, body.map_err(|e| e.into()).boxed())
}

/// Serves `filter` on `listener` until `shutdown`, then waits up to `grace`
/// for open HTTP exchanges to finish. A client has `header_timeout` to send
/// each request's headers.
pub async fn serve<F>(
    listener: TcpListener,
    filter: F,
    shutdown: CancellationToken,
    grace: Duration,
    header_timeout: Duration,
) where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    let graceful = GracefulShutdown::new();
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
        let svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                let mut svc = svc.clone();
                let upgrade = hyper::upgrade::on(&mut req);
                join_repeated_header(req.headers_mut(), "sec-websocket-protocol");
                req.extensions_mut()
                    .insert(Upgrade(Arc::new(Mutex::new(Some(upgrade)))));
                async move {
                    let resp = svc
                        .call(req)
                        .await
                        .unwrap_or_else(|e: Infallible| match e {});
                    Ok::<_, Infallible>(into_box_body(resp))
                }
            });
        let mut builder = Builder::new(TokioExecutor::new());
        // Slowloris: a request's headers must arrive within `header_timeout`
        // (an upgrade's too), or the connection is closed.
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(header_timeout);
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(io), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some HTTP connections were still open after the grace period");
    }
}
