//! Streaming: commit at the first content chunk, fall back before it, never
//! pass a broken stream off as complete after it. Over loopback HTTP with
//! paused time.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use llm_fallback::{Chain, FallbackLayer, FallbackReport, Outcome, ReplayBody, Resolution, Route, StreamReport};
use llm_fallback_mock::{parse_sse, MockServer, MockUpstream, Reply, SseEvent};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{service_fn, Layer, ServiceExt};

const A: &str = "primary/model";
const B: &str = "secondary/model";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn stream_chat() -> String {
    serde_json::json!({"model": "caller/model", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
        .to_string()
}

struct Streamed {
    status: StatusCode,
    at_commit: FallbackReport,
    events: Vec<SseEvent>,
    raw: Bytes,
    last: FallbackReport,
}

impl Streamed {
    fn data(&self) -> Vec<serde_json::Value> {
        self.events
            .iter()
            .filter_map(|e| match e {
                SseEvent::Data(d) if d != "[DONE]" => Some(serde_json::from_str(d).unwrap()),
                _ => None,
            })
            .collect()
    }

    fn text(&self) -> String {
        self.data()
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
            .collect()
    }

    fn done(&self) -> bool {
        self.events
            .iter()
            .any(|e| matches!(e, SseEvent::Data(d) if d == "[DONE]"))
    }

    fn ends_with_error_chunk(&self) -> bool {
        self.data()
            .last()
            .is_some_and(|c| c["choices"][0]["finish_reason"] == "error")
    }
}

async fn stream(primary: Reply, secondary: Reply, routes: [Route; 2]) -> (Streamed, MockServer) {
    let upstream = MockUpstream::new().model(A, primary).model(B, secondary);
    let server = MockServer::start(upstream).await.unwrap();
    let svc = FallbackLayer::new(Chain::new(routes)).layer(http_client());
    let resp = svc.oneshot(post(&server.chat_url(), stream_chat())).await.unwrap();
    let status = resp.status();
    let at_commit = resp.extensions().get::<FallbackReport>().unwrap().clone();
    let handle = resp.extensions().get::<StreamReport>().cloned();
    let (_, raw) = body_bytes(resp).await;
    let last = match handle {
        Some(h) => h.finished().await,
        None => at_commit.clone(),
    };
    let events = parse_sse(&raw);
    (
        Streamed {
            status,
            at_commit,
            events,
            raw,
            last,
        },
        server,
    )
}

fn routes() -> [Route; 2] {
    [
        Route::new(A).first_token_timeout(secs(10)).idle_timeout(secs(5)),
        Route::new(B).first_token_timeout(secs(10)).idle_timeout(secs(5)),
    ]
}

#[tokio::test(start_paused = true)]
async fn keep_alives_then_tokens_commit_to_the_primary() {
    let (s, server) = stream(
        Reply::stream()
            .keep_alive(4, secs(2))
            .tokens(["Hel", "lo"])
            .served_model("primary/model-2024"),
        Reply::stream(),
        routes(),
    )
    .await;
    assert_eq!(s.status, StatusCode::OK);
    assert_eq!(s.text(), "Hello");
    assert!(s.done());
    assert!(!s.ends_with_error_chunk());
    // The keep-alives reach the client as comments, never as data.
    assert_eq!(s.events.iter().filter(|e| matches!(e, SseEvent::Comment(_))).count(), 4);
    assert!(!String::from_utf8_lossy(&s.raw).contains("data: : OPENROUTER"));
    assert_eq!(
        s.at_commit.served_model(),
        "primary/model-2024",
        "read from the committed chunk"
    );
    assert_eq!(s.last.resolution(), Resolution::Served);
    assert_eq!(s.last.attempts()[0].outcome(), Outcome::Served);
    assert!(
        s.last.usage().is_some_and(|u| u.total_tokens > 0),
        "usage from the final chunk"
    );
    assert_eq!(server.upstream().request_count(B), 0);
}

#[tokio::test(start_paused = true)]
async fn keep_alives_do_not_reset_the_first_token_timeout() {
    let (s, _server) = stream(Reply::stream().keep_alive(20, secs(1)), Reply::stream(), routes()).await;
    assert_eq!(s.at_commit.served_model(), B);
    let first = &s.at_commit.attempts()[0];
    assert_eq!(first.outcome(), Outcome::Timeout);
    assert_eq!(first.elapsed(), secs(10));
    assert!(s.text().starts_with("Hello from secondary/model"), "{}", s.text());
    assert_eq!(
        s.events.iter().filter(|e| matches!(e, SseEvent::Comment(_))).count(),
        0,
        "nothing of the failed attempt leaks"
    );
}

#[tokio::test(start_paused = true)]
async fn an_error_chunk_before_the_first_token_falls_back() {
    let (s, _server) = stream(
        Reply::stream().keep_alive(2, secs(1)).error_before_first_token(),
        Reply::stream(),
        routes(),
    )
    .await;
    assert_eq!(s.at_commit.served_model(), B);
    let first = &s.at_commit.attempts()[0];
    assert_eq!(first.outcome(), Outcome::ErrorInBody);
    assert_eq!(first.status(), Some(StatusCode::OK));
    assert_eq!(first.upstream_error().and_then(|e| e.code()), Some("server_error"));
    assert!(s.done());
}

#[tokio::test(start_paused = true)]
async fn a_connection_cut_before_the_first_token_falls_back() {
    let (s, _server) = stream(
        Reply::stream().keep_alive(1, secs(1)).cut_after(0),
        Reply::stream(),
        routes(),
    )
    .await;
    assert_eq!(s.at_commit.served_model(), B);
    assert_eq!(s.at_commit.attempts()[0].outcome(), Outcome::Transport);
    assert!(s.done());
}

#[tokio::test(start_paused = true)]
async fn an_error_chunk_after_tokens_is_surfaced_not_replayed() {
    let (s, server) = stream(
        Reply::stream().tokens(["a", "b", "c"]).error_after(2),
        Reply::stream(),
        routes(),
    )
    .await;
    assert_eq!(s.text(), "ab");
    assert!(
        s.ends_with_error_chunk(),
        "the upstream's error chunk reaches the client"
    );
    assert!(!s.done());
    assert_eq!(server.upstream().request_count(B), 0, "no replay after commit");
    assert_eq!(s.last.resolution(), Resolution::StreamBroken);
    let served = s.last.served_attempt().unwrap();
    assert_eq!(served.outcome(), Outcome::StreamBroken);
    assert_eq!(served.model(), A);
    assert_eq!(
        served.upstream_error().and_then(|e| e.message()),
        Some("Provider disconnected")
    );
}

#[tokio::test(start_paused = true)]
async fn a_connection_cut_after_tokens_ends_with_an_error_chunk() {
    let (s, server) = stream(
        Reply::stream().tokens(["a", "b", "c"]).cut_after(2),
        Reply::stream(),
        routes(),
    )
    .await;
    assert_eq!(s.text(), "ab");
    assert!(s.ends_with_error_chunk(), "a broken stream must not look complete");
    let last = s.data().pop().unwrap();
    assert_eq!(last["error"]["code"], "stream_broken");
    assert_eq!(server.upstream().request_count(B), 0);
    assert_eq!(s.last.served_attempt().unwrap().outcome(), Outcome::StreamBroken);
    assert_eq!(s.last.served_attempt().unwrap().error_type(), Some("stream_broken"));
}

#[tokio::test(start_paused = true)]
async fn a_stall_after_tokens_is_ended_by_the_idle_timeout() {
    let started = tokio::time::Instant::now();
    let (s, _server) = stream(
        Reply::stream().tokens(["a", "b", "c"]).stall_after(1),
        Reply::stream(),
        routes(),
    )
    .await;
    assert_eq!(s.text(), "a");
    assert!(s.ends_with_error_chunk());
    assert_eq!(s.data().pop().unwrap()["error"]["code"], "stream_stalled");
    assert_eq!(started.elapsed(), secs(5));
    assert_eq!(s.last.served_attempt().unwrap().error_type(), Some("stream_stalled"));
}

#[tokio::test(start_paused = true)]
async fn a_finished_stream_without_done_is_complete() {
    // It ended after `finish_reason: "stop"`: the answer is whole, only the
    // terminator is missing, so no error is added.
    let (s, _server) = stream(Reply::stream().tokens(["x"]).no_done(), Reply::stream(), routes()).await;
    assert_eq!(s.text(), "x");
    assert!(!s.done());
    assert!(!s.ends_with_error_chunk());
    assert_eq!(s.last.resolution(), Resolution::Served);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_bounds_the_wait_for_a_first_token() {
    let upstream = MockUpstream::new()
        .model(A, Reply::stream().keep_alive(100, secs(1)))
        .model(B, Reply::stream());
    let server = MockServer::start(upstream).await.unwrap();
    let chain = Chain::new([Route::new(A).first_token_timeout(secs(60)), Route::new(B)]).deadline(secs(7));
    let resp = FallbackLayer::new(chain)
        .layer(http_client())
        .oneshot(post(&server.chat_url(), stream_chat()))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    let report = resp.extensions().get::<FallbackReport>().unwrap();
    assert_eq!(report.attempts()[0].outcome(), Outcome::DeadlineExceeded);
    assert_eq!(report.attempts()[0].elapsed(), secs(7));
}

/// A body that yields scripted frames and counts how many it produced.
struct Frames {
    frames: VecDeque<Result<Bytes, &'static str>>,
    produced: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct Broken(&'static str);
impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}
impl std::error::Error for Broken {}

impl Body for Frames {
    type Data = Bytes;
    type Error = Broken;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Broken>>> {
        let next = self.frames.pop_front();
        if next.is_some() {
            self.produced.fetch_add(1, Ordering::SeqCst);
        }
        Poll::Ready(next.map(|f| f.map(Frame::data).map_err(Broken)))
    }
}

fn sse_service(
    frames: Vec<Result<&'static str, &'static str>>,
    produced: Arc<AtomicUsize>,
) -> impl tower::Service<Request<ReplayBody>, Response = Response<Frames>, Error = Infallible, Future = impl Send> + Clone
{
    service_fn(move |_req: Request<ReplayBody>| {
        let frames = frames
            .iter()
            .map(|f| f.map(|s| Bytes::from_static(s.as_bytes())))
            .collect();
        let produced = produced.clone();
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Frames { frames, produced })
                    .unwrap(),
            )
        }
    })
}

const UPSTREAM: [&str; 6] = [
    ": OPENROUTER PROCESSING\n\n",
    "data: {\"model\":\"m/1\",\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n",
    "data: {\"model\":\"m/1\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"model\":\"m/1\",\"choi",
    "ces\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n",
    "data: {\"model\":\"m/1\",\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
    "data: [DONE]\n\n",
];

#[tokio::test]
async fn bytes_after_commit_equal_the_upstream_bytes() {
    let produced = Arc::new(AtomicUsize::new(0));
    let svc = FallbackLayer::new(Chain::new([Route::new("m/1")]))
        .layer(sse_service(UPSTREAM.iter().map(|s| Ok(*s)).collect(), produced));
    let resp = svc
        .oneshot(post("http://up/v1/chat/completions", stream_chat()))
        .await
        .unwrap();
    assert!(resp.headers().get("content-length").is_none());
    let (_, raw) = body_bytes(resp).await;
    assert_eq!(raw, UPSTREAM.concat().as_bytes());
}

#[tokio::test]
async fn a_clean_end_without_done_or_finish_reason_is_truncation() {
    let produced = Arc::new(AtomicUsize::new(0));
    let frames = vec![Ok(UPSTREAM[0]), Ok(UPSTREAM[2]), Ok(UPSTREAM[3])];
    let svc = FallbackLayer::new(Chain::new([Route::new("m/1")])).layer(sse_service(frames, produced));
    let resp = svc
        .oneshot(post("http://up/v1/chat/completions", stream_chat()))
        .await
        .unwrap();
    let handle = resp.extensions().get::<StreamReport>().cloned().unwrap();
    let (_, raw) = body_bytes(resp).await;
    let text = String::from_utf8(raw.to_vec()).unwrap();
    assert!(text.starts_with(&[UPSTREAM[0], UPSTREAM[2], UPSTREAM[3]].concat()));
    let events = parse_sse(text.as_bytes());
    let SseEvent::Data(last) = events.last().unwrap() else {
        panic!("{events:?}")
    };
    let last: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(last["error"]["code"], "stream_truncated");
    assert_eq!(last["choices"][0]["finish_reason"], "error");
    let report = handle.finished().await;
    assert_eq!(report.resolution(), Resolution::StreamBroken);
    assert_eq!(report.served_model(), "m/1");
}

#[tokio::test]
async fn a_slow_consumer_keeps_backpressure() {
    let produced = Arc::new(AtomicUsize::new(0));
    let mut frames: Vec<Result<&'static str, &'static str>> = vec![Ok(UPSTREAM[2]), Ok(UPSTREAM[3])];
    frames.extend(std::iter::repeat_n(
        Ok("data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n"),
        1000,
    ));
    frames.push(Ok(UPSTREAM[5]));
    let svc = FallbackLayer::new(Chain::new([Route::new("m/1")])).layer(sse_service(frames, produced.clone()));
    let resp = svc
        .oneshot(post("http://up/v1/chat/completions", stream_chat()))
        .await
        .unwrap();
    // Committed after the first frame: nothing more was read.
    assert_eq!(produced.load(Ordering::SeqCst), 1);
    let mut body = resp.into_body();
    for consumed in 1..=50 {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
            .await
            .unwrap()
            .unwrap();
        assert!(frame.is_data());
        assert_eq!(
            produced.load(Ordering::SeqCst),
            consumed,
            "one upstream frame per frame the client takes"
        );
    }
}

/// A chat stream through the layer, committed and not yet read, with its
/// report handle.
async fn committed_chat() -> (Response<llm_fallback::ResponseBody<Frames>>, StreamReport) {
    committed_chat_through(FallbackLayer::new(Chain::new([Route::new("m/1")]))).await
}

/// [`committed_chat`] through `layer`.
async fn committed_chat_through(layer: FallbackLayer) -> (Response<llm_fallback::ResponseBody<Frames>>, StreamReport) {
    let produced = Arc::new(AtomicUsize::new(0));
    let svc = layer.layer(sse_service(UPSTREAM.iter().map(|s| Ok(*s)).collect(), produced));
    let resp = svc
        .oneshot(post("http://up/v1/chat/completions", stream_chat()))
        .await
        .unwrap();
    let handle = resp.extensions().get::<StreamReport>().cloned().unwrap();
    (resp, handle)
}

#[tokio::test]
async fn a_wait_begun_before_the_end_is_woken_by_it() {
    let (resp, handle) = committed_chat().await;
    let waiting = tokio::spawn(handle.clone().finished());
    // The waiter runs until it waits (one thread: it runs when this yields).
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
    assert!(!waiting.is_finished(), "no report before the stream ends");
    assert!(handle.get().is_none());
    let _ = body_bytes(resp).await;
    let report = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
        .await
        .expect("the end wakes the wait")
        .unwrap();
    assert_eq!(report.resolution(), Resolution::Served);
    assert_eq!(handle.get().unwrap().served_model(), "m/1");
}

#[tokio::test]
async fn a_report_hook_that_panics_still_leaves_the_report() {
    let layer = FallbackLayer::builder(Chain::new([Route::new("m/1")]))
        .on_report(|_: &FallbackReport| panic!("the user's hook fails"))
        .layer();
    let (resp, handle) = committed_chat_through(layer).await;
    // The hook runs (and panics) where the stream ends: in its reader.
    let reader = tokio::spawn(body_bytes(resp));
    assert!(reader.await.unwrap_err().is_panic());
    let report = tokio::time::timeout(Duration::from_secs(10), handle.finished())
        .await
        .expect("the report is sent, not waited for");
    assert_eq!(report.served_model(), "m/1");
}

#[tokio::test]
async fn dropping_the_stream_resolves_the_report() {
    let (resp, handle) = committed_chat().await;
    assert!(handle.get().is_none());
    drop(resp);
    let report = handle.finished().await;
    assert_eq!(report.attempts()[0].outcome(), Outcome::Abandoned);
}
