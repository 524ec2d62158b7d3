//! A broker node started inside the test process on a free port, plus real
//! clients for it: HTTP (reqwest, statuses and headers exactly), SSE and
//! WebSocket (the library's client, `mythos_broker::client`, with the tests'
//! patience and assertions). Nothing here is a mock: every call crosses a socket.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use mythos_broker::auth::Role;
pub use mythos_broker::client::WsEnd;
use mythos_broker::client::{Player, SseReader};
use mythos_broker::config::Config;
use mythos_broker::server::{self, Running};
use mythos_broker::state::App;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub const SECRET: &str = "test-secret-0123456789abcdef";
/// How long a test waits for something that should happen.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A default test configuration (memory engine, port 0).
pub fn config() -> Config {
    Config::for_tests(SECRET)
}

/// A running node and a base URL.
pub struct Broker {
    pub base: String,
    pub ws_base: String,
    pub running: Option<Running>,
}

impl Broker {
    pub async fn start(config: Config) -> Self {
        let app = App::new(config).await.expect("broker state");
        Self::start_app(app).await
    }

    pub async fn start_app(app: Arc<App>) -> Self {
        let running = server::start(app).await.expect("broker listens");
        let addr = running.addr;
        Self {
            base: format!("http://{addr}"),
            ws_base: format!("ws://{addr}"),
            running: Some(running),
        }
    }

    pub fn app(&self) -> &Arc<App> {
        &self.running.as_ref().expect("running").app
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    pub fn http() -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(PATIENCE)
            .build()
            .expect("client")
    }

    /// The `/metrics` text (Prometheus exposition format).
    pub async fn metrics_text(&self) -> String {
        Self::http()
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// POSTs JSON (or raw text) with a bearer token; returns status and body JSON.
    pub async fn post(&self, path: &str, token: Option<&str>, body: Body) -> (u16, Value) {
        let mut req = Self::http().post(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req = match body {
            Body::Json(v) => req.json(&v),
            Body::Raw(s) => req.header("content-type", "application/json").body(s),
        };
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut req = Self::http().request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Publishes `event_type` with `data` to `to`; panics unless 200. Returns the deliveries.
    pub async fn publish(&self, to: Value, event_type: &str, data: Value) -> Vec<(String, u64)> {
        let (status, body) = self
            .post(
                "/v1/publish",
                Some(&service_token()),
                Body::Json(json!({"to": to, "event_type": event_type, "data": data})),
            )
            .await;
        assert_eq!(status, 200, "publish failed: {body}");
        deliveries(&body)
    }

    /// Publishes `n` events `{"n": i}` to one player; returns their sequence numbers.
    pub async fn publish_n(&self, player: &str, n: usize) -> Vec<u64> {
        let mut seqs = Vec::with_capacity(n);
        for i in 0..n {
            let d = self
                .publish(json!({"player": player}), "tick", json!({"n": i}))
                .await;
            seqs.push(d[0].1);
        }
        seqs
    }

    pub async fn sse(
        &self,
        path: &str,
        token: &str,
        last_event_id: Option<&str>,
    ) -> Result<SseClient, (u16, Value)> {
        let mut req = Self::http_stream()
            .get(format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(l) = last_event_id {
            req = req.header("last-event-id", l);
        }
        let resp = req.send().await.expect("sse request");
        let status = resp.status().as_u16();
        if status != 200 {
            return Err((status, resp.json().await.unwrap_or(Value::Null)));
        }
        assert_eq!(
            resp.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("text/event-stream")
        );
        Ok(SseClient::new(Box::pin(
            resp.bytes_stream().map(|r| r.map_err(BoxError::from)),
        )))
    }

    /// Opens `/v1/events` (from `Last-Event-ID: last_event_id`, if any) over
    /// a socket whose receive buffer is [`SMALL_RECV_BUFFER`], so that the
    /// kernel holds little for a client that does not read (reqwest cannot
    /// set it; this is hyper's client). Panics unless 200.
    pub async fn sse_small_buffer(&self, token: &str, last_event_id: Option<&str>) -> SseClient {
        use http_body_util::BodyExt;
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_recv_buffer_size(Some(SMALL_RECV_BUFFER));
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build::<_, http_body_util::Empty<bytes::Bytes>>(connector);
        let mut req = hyper::Request::get(format!("{}/v1/events", self.base))
            .header("authorization", format!("Bearer {token}"));
        if let Some(l) = last_event_id {
            req = req.header("last-event-id", l);
        }
        let req = req.body(http_body_util::Empty::new()).expect("request");
        let resp = tokio::time::timeout(PATIENCE, client.request(req))
            .await
            .expect("SSE answered in time")
            .expect("SSE request");
        assert_eq!(resp.status(), 200, "SSE opens");
        let data = resp
            .into_body()
            .into_data_stream()
            .map(|r| r.map_err(BoxError::from));
        SseClient::new(Box::pin(data))
    }

    /// [`Broker::ws_player`] over a socket whose receive buffer is
    /// [`SMALL_RECV_BUFFER`], so that the kernel holds little for a client
    /// that does not read.
    pub async fn ws_player_small_buffer(
        &self,
        player: &str,
        since: Option<u64>,
    ) -> (WsClient, Value) {
        let mut url = format!("{}/v1/ws?token={}", self.ws_base, player_token(player));
        if let Some(s) = since {
            url.push_str(&format!("&since={s}"));
        }
        let addr = self.base.trim_start_matches("http://").to_string();
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.set_recv_buffer_size(SMALL_RECV_BUFFER as u32)
            .expect("SO_RCVBUF");
        let tcp = sock
            .connect(addr.parse().expect("node address"))
            .await
            .expect("connect");
        let mut c = WsClient(Player::open_on(tcp, &url, None).await.expect("ws opens"));
        let welcome = c.next_json().await.expect("welcome");
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (c, welcome)
    }

    fn http_stream() -> reqwest::Client {
        reqwest::Client::builder().build().expect("client")
    }

    /// Opens a WebSocket at `path` (with any query); `Err` carries the HTTP status of a refusal.
    pub async fn ws(
        &self,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<WsClient, u16> {
        let mut req = format!("{}{path_and_query}", self.ws_base)
            .into_client_request()
            .expect("ws request");
        for (k, v) in headers {
            req.headers_mut().insert(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        match Player::open(req).await {
            Ok(p) => Ok(WsClient(p)),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("ws connect: {e}"),
        }
    }

    /// Opens `/v1/ws?token=..&since=..` and reads the welcome.
    pub async fn ws_player(&self, player: &str, since: Option<u64>) -> (WsClient, Value) {
        let mut q = format!("/v1/ws?token={}", player_token(player));
        if let Some(s) = since {
            q.push_str(&format!("&since={s}"));
        }
        let mut c = self.ws(&q, &[]).await.expect("ws opens");
        let welcome = c.next_json().await.expect("welcome");
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (c, welcome)
    }
}

pub enum Body {
    Json(Value),
    Raw(String),
}

pub fn deliveries(body: &Value) -> Vec<(String, u64)> {
    body["deliveries"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    (
                        d["player_id"].as_str().unwrap_or_default().to_string(),
                        d["sequence_number"].as_u64().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn token_with(sub: &str, role: Role, exp_in_secs: i64) -> String {
    mythos_broker::client::token(SECRET, sub, role, exp_in_secs).expect("token")
}

pub fn player_token(p: &str) -> String {
    token_with(p, Role::Player, 3600)
}
pub fn service_token() -> String {
    token_with("game", Role::Service, 3600)
}
pub fn admin_token() -> String {
    token_with("root", Role::Admin, 3600)
}

/// One parsed SSE event (the library client's).
pub use mythos_broker::client::SseEvent;

/// An SSE event's sequence number, which it must have.
pub trait Seq {
    fn seq(&self) -> u64;
}

impl Seq for SseEvent {
    fn seq(&self) -> u64 {
        self.sequence_number().expect("sequence_number")
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The receive buffer of the `*_small_buffer` clients (the kernel doubles it).
pub const SMALL_RECV_BUFFER: usize = 8 * 1024;

/// The largest send buffer the kernel grows a TCP socket to (`tcp_wmem`'s
/// maximum), in bytes: with a `*_small_buffer` client, about what a node can
/// write toward a client that reads nothing, before its own buffers.
pub fn tcp_wmem_max() -> usize {
    let v = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem").expect("tcp_wmem");
    v.split_whitespace()
        .nth(2)
        .and_then(|m| m.parse().ok())
        .expect("tcp_wmem max")
}

type SseStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, BoxError>> + Send>>;

/// The library's SSE reader, with the tests' patience: nothing within
/// [`PATIENCE`], a broken stream or one ending inside an event panics.
pub struct SseClient {
    reader: SseReader<SseStream>,
}

impl SseClient {
    fn new(stream: SseStream) -> Self {
        Self {
            reader: SseReader::new(stream),
        }
    }

    /// The next raw block (text up to a blank line), or None when the stream
    /// ends cleanly (the broker ended the response). A broken stream (a
    /// connection reset, a truncated chunked body) is not an end: it panics.
    pub async fn next_block(&mut self) -> Option<String> {
        match tokio::time::timeout(PATIENCE, self.reader.next_block()).await {
            Ok(r) => r.unwrap_or_else(|e| panic!("{e}")),
            Err(_) => panic!(
                "SSE: nothing within {PATIENCE:?}; buffered: {:?}",
                self.reader.buf
            ),
        }
    }

    /// The next event (skipping `retry:` and comments), or None at the end of the stream.
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        match tokio::time::timeout(PATIENCE, self.reader.next_event()).await {
            Ok(r) => r.unwrap_or_else(|e| panic!("{e}")),
            Err(_) => panic!(
                "SSE: nothing within {PATIENCE:?}; buffered: {:?}",
                self.reader.buf
            ),
        }
    }

    /// The sequence numbers of the next `n` events.
    pub async fn seqs(&mut self, n: usize) -> Vec<u64> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let ev = self.next_event().await.expect("stream ended early");
            assert_eq!(
                ev.id.as_deref(),
                Some(ev.seq().to_string().as_str()),
                "id: matches sequence_number"
            );
            out.push(ev.seq());
        }
        out
    }
}

/// The library's player WebSocket ([`Player`]: its `ws` and `protocol`),
/// with the tests' patience: nothing within [`PATIENCE`], a failed send or a
/// frame that is not JSON panics.
pub struct WsClient(Player);

impl std::ops::Deref for WsClient {
    type Target = Player;
    fn deref(&self) -> &Player {
        &self.0
    }
}

impl std::ops::DerefMut for WsClient {
    fn deref_mut(&mut self) -> &mut Player {
        &mut self.0
    }
}

impl WsClient {
    pub async fn send_json(&mut self, v: Value) {
        self.0.send_json(&v).await.expect("ws send");
    }

    pub async fn send(&mut self, m: Message) {
        self.0.send(m).await.expect("ws send");
    }

    /// The next JSON text frame; Err with how the connection ended.
    pub async fn next_json(&mut self) -> Result<Value, WsEnd> {
        match tokio::time::timeout(PATIENCE, self.0.next_json()).await {
            Err(_) => panic!("WebSocket: nothing within {PATIENCE:?}"),
            Ok(Err(WsEnd::NotJson(t))) => panic!("JSON frame: {t}"),
            Ok(r) => r,
        }
    }

    /// The next frame that is an event; other frames are returned to nobody.
    pub async fn next_event(&mut self) -> Result<Value, WsEnd> {
        loop {
            let v = self.next_json().await?;
            if v["type"] == "event" {
                return Ok(v);
            }
        }
    }

    /// Sequence numbers of the next `n` events.
    pub async fn seqs(&mut self, n: usize) -> Vec<u64> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let v = self.next_event().await.expect("connection ended early");
            out.push(v["sequence_number"].as_u64().expect("seq"));
        }
        out
    }

    /// Reads frames until one with `type` = `kind`, returning it.
    pub async fn until_type(&mut self, kind: &str) -> Result<Value, WsEnd> {
        loop {
            let v = self.next_json().await?;
            if v["type"] == kind {
                return Ok(v);
            }
        }
    }

    /// Reads until the connection ends; returns how.
    pub async fn end(&mut self) -> WsEnd {
        loop {
            if let Err(e) = self.next_json().await {
                return e;
            }
        }
    }
}

/// Appends `n` events of about `pad` bytes each to `player` through the
/// node's engine (the same path a publish takes, without HTTP round trips).
pub async fn append(node: &Broker, player: &str, n: usize, pad: usize) {
    use mythos_broker::protocol::{EventBody, Target};
    let data = serde_json::value::to_raw_value(&json!({ "pad": "x".repeat(pad) })).expect("raw");
    for _ in 0..n {
        node.app()
            .engine()
            .publish(
                &Target::Player(player.into()),
                Arc::new(EventBody::now("blob", data.clone(), None, None)),
                None,
            )
            .await
            .expect("append");
    }
}

/// Publishes a `fence` event and requires it to be the very next event on
/// `ws`, with sequence number `seq`: nothing (a duplicate, a stray resend)
/// came between what the test read and the fence.
pub async fn fence(node: &Broker, ws: &mut WsClient, player: &str, seq: u64) {
    let d = node
        .publish(json!({"player": player}), "fence", json!({}))
        .await;
    assert_eq!(d[0].1, seq, "the fence's sequence number");
    let e = ws.next_event().await.expect("the fence arrives");
    assert_eq!(
        (e["sequence_number"].as_u64(), e["event_type"].as_str()),
        (Some(seq), Some("fence")),
        "the next event after the expected ones must be the fence"
    );
}

/// `a..=b` as a vector, for comparing sequences.
pub fn range(a: u64, b: u64) -> Vec<u64> {
    (a..=b).collect()
}

/// Which engine (and how many nodes) a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Memory,
    Redis,
    /// Two nodes on one Redis: publishes go through the second, and
    /// connections alternate between the two (each reconnect lands on the
    /// other node).
    RedisTwoNodes,
    /// The same on a Redis Cluster (3 masters with a replica each).
    ClusterTwoNodes,
    /// One node on that Redis Cluster.
    Cluster,
}

impl Kind {
    /// The same store with one node: for what is per node by definition
    /// (connection caps, a node's shutdown).
    pub fn alone(self) -> Self {
        match self {
            Kind::RedisTwoNodes => Kind::Redis,
            Kind::ClusterTwoNodes => Kind::Cluster,
            k => k,
        }
    }
}

/// A node of `kind` (with its own redis-server for Redis), configured by
/// `tweak`; for the two-node kinds, a pair.
pub struct Node {
    pub broker: Broker,
    /// The second node of a two-node kind.
    pub other: Option<Broker>,
    pub redis: Option<super::RedisServer>,
    /// A turn on the shared cluster, held while the test runs.
    pub lease: Option<super::cluster::Lease>,
    /// Connections opened so far (they alternate between the two nodes).
    turn: std::sync::atomic::AtomicUsize,
}

impl Node {
    pub async fn start(kind: Kind, tweak: impl Fn(&mut Config)) -> Self {
        let mut c = config();
        let (mut redis, mut lease) = (None, None);
        match kind {
            Kind::Memory => {}
            Kind::Redis | Kind::RedisTwoNodes => {
                let r = super::RedisServer::start();
                c.redis_url = Some(r.url());
                redis = Some(r);
            }
            Kind::ClusterTwoNodes | Kind::Cluster => {
                let l = super::cluster::lease().await;
                c.redis_cluster = Some(mythos_broker::config::ClusterSeeds(
                    l.seeds.split(',').map(String::from).collect(),
                ));
                lease = Some(l);
            }
        }
        tweak(&mut c);
        let other = match kind {
            Kind::RedisTwoNodes | Kind::ClusterTwoNodes => Some(Broker::start(c.clone()).await),
            Kind::Memory | Kind::Redis | Kind::Cluster => None,
        };
        Self {
            broker: Broker::start(c).await,
            other,
            redis,
            lease,
            turn: Default::default(),
        }
    }

    /// A node alone, on whatever `redis` says.
    pub fn single(broker: Broker, redis: Option<super::RedisServer>) -> Self {
        Self {
            broker,
            other: None,
            redis,
            lease: None,
            turn: Default::default(),
        }
    }

    /// Where publishes go: the second node if there is one.
    pub fn publisher(&self) -> &Broker {
        self.other.as_ref().unwrap_or(&self.broker)
    }

    /// Where the next connection goes: alternately each node.
    pub fn next_node(&self) -> &Broker {
        let i = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match &self.other {
            Some(b) if i % 2 == 1 => b,
            _ => &self.broker,
        }
    }

    pub async fn publish(&self, to: Value, event_type: &str, data: Value) -> Vec<(String, u64)> {
        self.publisher().publish(to, event_type, data).await
    }

    pub async fn publish_n(&self, player: &str, n: usize) -> Vec<u64> {
        self.publisher().publish_n(player, n).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Body) -> (u16, Value) {
        self.publisher().post(path, token, body).await
    }

    pub async fn ws_player(&self, player: &str, since: Option<u64>) -> (WsClient, Value) {
        self.next_node().ws_player(player, since).await
    }

    pub async fn ws(
        &self,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<WsClient, u16> {
        self.next_node().ws(path_and_query, headers).await
    }

    pub async fn sse(
        &self,
        path: &str,
        token: &str,
        last_event_id: Option<&str>,
    ) -> Result<SseClient, (u16, Value)> {
        self.next_node().sse(path, token, last_event_id).await
    }

    pub async fn sse_small_buffer(&self, token: &str, last_event_id: Option<&str>) -> SseClient {
        self.next_node()
            .sse_small_buffer(token, last_event_id)
            .await
    }

    pub async fn ws_player_small_buffer(
        &self,
        player: &str,
        since: Option<u64>,
    ) -> (WsClient, Value) {
        self.next_node().ws_player_small_buffer(player, since).await
    }
}

impl std::ops::Deref for Node {
    type Target = Broker;
    fn deref(&self) -> &Broker {
        &self.broker
    }
}

impl std::ops::DerefMut for Node {
    fn deref_mut(&mut self) -> &mut Broker {
        &mut self.broker
    }
}

/// Generates `mod memory`, `mod redis`, `mod redis_two_nodes` and
/// `mod cluster_two_nodes`, each running every listed `async fn name(kind:
/// Kind)` on that topology.
#[macro_export]
macro_rules! on_every_topology {
    ($($name:ident),* $(,)?) => {
        $crate::on_both_engines!($($name),*);
        mod redis_two_nodes {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::support::broker::Kind::RedisTwoNodes).await } )*
        }
        mod cluster_two_nodes {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::support::broker::Kind::ClusterTwoNodes).await } )*
        }
    };
}

/// Generates `mod memory` and `mod redis`, each running every listed
/// `async fn name(kind: Kind)` on its engine.
#[macro_export]
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::support::broker::Kind::Memory).await } )*
        }

        mod redis {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::support::broker::Kind::Redis).await } )*
        }
    };
}
