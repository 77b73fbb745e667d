//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use llm_fallback::{FallbackReport, ReplayBody};
use serde_json::Value;

/// A realistic chat request body for `model`.
pub fn chat(model: &str) -> String {
    serde_json::json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You are terse. The word \"model\" appears here on purpose."},
            {"role": "user", "content": "Say hi — ünïcødé ✓ 🚀"}
        ],
        "temperature": 0.2,
        "provider": {"order": ["OpenAI"], "allow_fallbacks": true}
    })
    .to_string()
}

pub fn post(url: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-test-secret")
        .body(Full::new(body.into()))
        .unwrap()
}

/// A plain hyper client over loopback HTTP/1.1.
pub fn http_client() -> Client<HttpConnector, ReplayBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn body_bytes<B>(resp: Response<B>) -> (http::response::Parts, Bytes)
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let (parts, body) = resp.into_parts();
    (parts, body.collect().await.expect("body reads").to_bytes())
}

pub async fn body_json<B>(resp: Response<B>) -> (http::response::Parts, Value)
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let (parts, bytes) = body_bytes(resp).await;
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    (parts, v)
}

pub fn report(parts: &http::response::Parts) -> &FallbackReport {
    parts
        .extensions
        .get::<FallbackReport>()
        .expect("every response carries a FallbackReport")
}

/// A body that arrives in pieces with no length known up front (like a
/// chunked upload).
pub struct Chunked(pub std::collections::VecDeque<Bytes>);

impl Chunked {
    pub fn new(parts: impl IntoIterator<Item = Bytes>) -> Self {
        Chunked(parts.into_iter().collect())
    }
}

impl http_body::Body for Chunked {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// Log output captured from a thread-local `tracing` subscriber.
#[derive(Clone, Default)]
pub struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    /// Installs a subscriber writing plain text here (with span-close lines)
    /// for as long as the guard lives.
    pub fn install(level: tracing::Level) -> (Self, tracing::subscriber::DefaultGuard) {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .with_max_level(level)
            .with_ansi(false)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        // Another test's thread may have registered a callsite with no
        // subscriber in sight while this one was being installed, caching
        // "never" for it; recompute every callsite's interest now that this
        // subscriber is in place.
        tracing::callsite::rebuild_interest_cache();
        (out, guard)
    }

    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a metrics recorder holds, as `metrics_util`'s debugging recorder
/// snapshots it.
pub type Snapshot = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    metrics_util::debugging::DebugValue,
)>;

/// Runs `test` on a current-thread runtime (its clock paused when
/// `paused`) under a fresh local metrics recorder, and returns what was
/// recorded.
pub fn recorded<F: std::future::Future<Output = ()>>(paused: bool, test: impl FnOnce() -> F) -> Snapshot {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(paused)
            .build()
            .unwrap()
            .block_on(test())
    });
    snapshotter.snapshot().into_vec()
}

/// The counters named `name`, summed by the value of their `label`.
pub fn counters_by(snapshot: &Snapshot, name: &str, label: &str) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for (key, _, _, value) in snapshot {
        if key.key().name() != name {
            continue;
        }
        let value_of = key.key().labels().find(|l| l.key() == label);
        let (Some(l), metrics_util::debugging::DebugValue::Counter(n)) = (value_of, value) else {
            panic!("{name}: a counter with a {label} label, not {key:?} {value:?}")
        };
        *out.entry(l.value().to_owned()).or_default() += n;
    }
    out
}
