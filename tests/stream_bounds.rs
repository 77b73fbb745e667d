//! Issue 13, point 4: no buffer that upstream SSE bytes fill grows past the
//! layer's per-event limit (8 MiB). An upstream that sends a line without a
//! break, bigger than the limit, after commit: the caller gets the bytes
//! already passed through unchanged, then exactly one error chunk with code
//! `stream_event_too_large`, and the report says the stream broke; the
//! upstream body is dropped at once (as it is for a stalled stream). Before
//! commit the attempt fails and the chain falls back.
//!
//! Its own test binary: a counting global allocator (per thread, live bytes
//! and their peak) measures what a request holds while the stream flows.
//! The upstream's frames are slices of one static buffer, so they allocate
//! nothing: every byte counted is the layer's.

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::Full;
use llm_fallback::{Chain, FallbackLayer, FallbackReport, Outcome, ReplayBody, Resolution, Route, StreamReport};
use llm_fallback_mock::{parse_sse, SseEvent};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{service_fn, Layer, ServiceExt};

// ===== counting allocator =====

/// Live bytes allocated by the current thread, and their peak since the
/// last [`reset_peak`].
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    // `try_with`: the allocator also runs while thread-locals are torn down.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded to `System` unchanged; counting touches
// only const-initialized thread-local `Cell`s, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Starts a measurement: the peak is what is live now.
fn reset_peak() -> isize {
    let live = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(live));
    live
}

/// Bytes above `base` at the peak since [`reset_peak`].
fn peak_above(base: isize) -> usize {
    usize::try_from(PEAK.with(Cell::get) - base).unwrap_or(0)
}

// ===== the upstream =====

/// The layer's per-event limit (`stream::MAX_EVENT_BYTES`).
const LIMIT: usize = 8 << 20;
/// What a socket read hands over at a time.
const CHUNK: usize = 64 << 10;
static XS: [u8; CHUNK] = [b'x'; CHUNK];

const ROLE: &str = "data: {\"model\":\"a/model\",\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n";
const TOKEN: &str = "data: {\"model\":\"a/model\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n";
const OPEN: &str = "data: {\"model\":\"a/model\",\"choices\":[{\"delta\":{\"content\":\"";
const CLOSE: &str = "\"}}]}\n\n";
const FINISH: &str = "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
const DONE: &str = "data: [DONE]\n\n";

/// A scripted upstream body: every frame is a static slice (no allocation),
/// it counts the frames it produced and says when it was dropped. With
/// `stall`, it falls silent after its frames instead of ending.
struct Script {
    frames: VecDeque<Bytes>,
    stall: bool,
    produced: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
}

impl Body for Script {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = self.frames.pop_front();
        if next.is_some() {
            self.produced.fetch_add(1, Ordering::SeqCst);
        } else if self.stall {
            return Poll::Pending;
        }
        Poll::Ready(next.map(|b| Ok(Frame::data(b))))
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

/// Frames: `head`, then `xs` bytes of `x` (no line break) in `CHUNK`s, then
/// `tail`.
fn frames(head: &[&'static str], xs: usize, tail: &[&'static str]) -> Vec<Bytes> {
    assert_eq!(xs % CHUNK, 0);
    let mut out: Vec<Bytes> = head.iter().map(|s| Bytes::from_static(s.as_bytes())).collect();
    out.extend(std::iter::repeat_n(Bytes::from_static(&XS), xs / CHUNK));
    out.extend(tail.iter().map(|s| Bytes::from_static(s.as_bytes())));
    out
}

/// What one upstream did: frames produced, and whether its body is gone.
/// (`stall`: what its body does after its frames.)
#[derive(Clone, Default)]
struct Seen {
    stall: bool,
    produced: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
}

impl Seen {
    fn produced(&self) -> usize {
        self.produced.load(Ordering::SeqCst)
    }
    fn dropped(&self) -> bool {
        self.dropped.load(Ordering::SeqCst)
    }
}

/// A service whose n-th call streams `scripts[n]`.
fn upstream(
    scripts: Vec<(Vec<Bytes>, Seen)>,
) -> impl tower::Service<Request<ReplayBody>, Response = Response<Script>, Error = Infallible, Future = impl Send> + Clone
{
    let calls = Arc::new(AtomicUsize::new(0));
    let scripts = Arc::new(scripts);
    service_fn(move |_req: Request<ReplayBody>| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        let (frames, seen) = scripts[n].clone();
        async move {
            let body = Script {
                frames: frames.into(),
                stall: seen.stall,
                produced: seen.produced,
                dropped: seen.dropped,
            };
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(body)
                    .unwrap(),
            )
        }
    })
}

fn request() -> Request<Full<Bytes>> {
    Request::post("http://up/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"caller/model","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        )))
        .unwrap()
}

/// The caller's side of one streamed request: every frame (handles to the
/// upstream's own bytes, not copies), the report at commit and the final one.
struct Received {
    frames: Vec<Bytes>,
    at_commit: FallbackReport,
    last: FallbackReport,
    /// The upstream body(ies) were dropped before the caller's body was.
    released_before_end: bool,
}

async fn run<S, B>(svc: S, seen: &[Seen]) -> Received
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let resp = svc.oneshot(request()).await.unwrap();
    let at_commit = resp.extensions().get::<FallbackReport>().unwrap().clone();
    let handle = resp.extensions().get::<StreamReport>().cloned().unwrap();
    let mut body = resp.into_body();
    let mut frames = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        frames.push(frame.unwrap().into_data().unwrap());
    }
    let released_before_end = seen.iter().all(Seen::dropped);
    drop(body);
    Received {
        frames,
        at_commit,
        last: handle.finished().await,
        released_before_end,
    }
}

/// The one chunk a frame holds (`null` if it is not one JSON chunk).
fn error_chunk(frame: &[u8]) -> serde_json::Value {
    match parse_sse(frame).as_slice() {
        [SseEvent::Data(data)] => serde_json::from_str(data).unwrap_or(serde_json::Value::Null),
        _ => serde_json::Value::Null,
    }
}

#[tokio::test]
async fn a_committed_stream_then_a_line_twice_the_limit_ends_with_one_error_chunk() {
    let seen = Seen::default();
    let script = frames(&[ROLE, TOKEN, OPEN], 2 * LIMIT, &[CLOSE, FINISH, DONE]);
    let svc =
        FallbackLayer::new(Chain::new([Route::new("a/model")])).layer(upstream(vec![(script.clone(), seen.clone())]));

    let base = reset_peak();
    let got = run(svc, std::slice::from_ref(&seen)).await;
    let peak = peak_above(base);

    // Memory: one limit's worth of the line at most, never the line.
    println!("peak while streaming: {peak} bytes above the start");
    let (tail, passed) = got.frames.split_last().unwrap();
    let chunk = error_chunk(tail);
    assert_eq!(chunk["error"]["code"], "stream_event_too_large", "{chunk}");
    assert!(peak <= LIMIT + (1 << 20), "peak {peak} bytes for a {LIMIT}-byte limit");

    // The caller got every frame read from the upstream, unchanged and in
    // order, then the one error chunk.
    assert_eq!(passed.len(), seen.produced(), "every frame read was passed on");
    assert_eq!(passed, &script[..passed.len()], "the upstream's bytes, unchanged");
    assert_eq!(chunk["choices"][0]["finish_reason"], "error");
    assert!(tail.starts_with(b"\n\n"), "the caller's half-read line is ended first");
    assert!(
        passed
            .iter()
            .all(|f| !f.windows(19).any(|w| w == b"\"finish_reason\":\"e")),
        "exactly one error chunk"
    );

    // Reading stopped at the frame whose event passed the limit.
    let read: usize = passed.iter().map(Bytes::len).sum();
    let event_start = ROLE.len() + TOKEN.len();
    assert!(
        read - event_start > LIMIT && read - event_start <= LIMIT + CHUNK,
        "read {read} bytes"
    );
    assert!(
        got.released_before_end,
        "the upstream body is dropped with the error chunk"
    );

    // The final report says so.
    assert_eq!(got.at_commit.resolution(), Resolution::Served);
    assert_eq!(got.last.resolution(), Resolution::StreamBroken);
    let served = got.last.served_attempt().unwrap();
    assert_eq!(served.outcome(), Outcome::StreamBroken);
    assert_eq!(served.error_type(), Some("stream_event_too_large"));
}

#[tokio::test]
async fn an_oversized_first_event_falls_back_before_commit() {
    let (a, b) = (Seen::default(), Seen::default());
    let first = frames(&[": OPENROUTER PROCESSING\n\n", OPEN], 2 * LIMIT, &[CLOSE, DONE]);
    let second: Vec<Bytes> = [
        "data: {\"model\":\"b/model\",\"choices\":[{\"delta\":{\"content\":\"Hello\"}}]}\n\n",
        FINISH,
        DONE,
    ]
    .iter()
    .map(|s| Bytes::from_static(s.as_bytes()))
    .collect();
    let chain = Chain::new([Route::new("a/model"), Route::new("b/model")]);
    let svc = FallbackLayer::new(chain).layer(upstream(vec![(first, a.clone()), (second.clone(), b.clone())]));

    let base = reset_peak();
    let got = run(svc, &[a.clone(), b.clone()]).await;
    let peak = peak_above(base);
    println!("peak while falling back: {peak} bytes above the start");

    let failed = &got.at_commit.attempts()[0];
    assert_eq!(failed.outcome(), Outcome::ErrorInBody);
    assert_eq!(
        failed.upstream_error().and_then(|e| e.error_type()),
        Some("stream_event_too_large")
    );
    assert_eq!(got.at_commit.served_model(), "b/model");
    assert_eq!(got.frames, second, "nothing of the refused attempt reaches the caller");
    assert_eq!(got.last.resolution(), Resolution::Served);
    assert!(a.dropped());
    let read = a.produced() * CHUNK;
    assert!(
        read <= LIMIT + 2 * CHUNK,
        "read about {read} bytes of the refused stream"
    );
    assert!(peak <= LIMIT + (1 << 20), "peak {peak} bytes for a {LIMIT}-byte limit");
}

#[tokio::test]
async fn an_event_of_exactly_the_limit_passes_unchanged() {
    // `OPEN` + x… + `"}}]}` is one line of exactly the limit.
    let close = &CLOSE[..CLOSE.len() - 2];
    let pad = LIMIT - OPEN.len() - close.len();
    let head = [ROLE, TOKEN, OPEN];
    let mut script = frames(&head, pad / CHUNK * CHUNK, &[]);
    script.push(Bytes::from_static(&XS[..pad % CHUNK]));
    script.extend([CLOSE, FINISH, DONE].map(|s| Bytes::from_static(s.as_bytes())));
    let seen = Seen::default();
    let svc =
        FallbackLayer::new(Chain::new([Route::new("a/model")])).layer(upstream(vec![(script.clone(), seen.clone())]));
    let got = run(svc, std::slice::from_ref(&seen)).await;
    assert_eq!(got.frames, script, "the upstream's bytes, and nothing else");
    assert_eq!(got.last.resolution(), Resolution::Served);
    assert_eq!(got.last.served_attempt().unwrap().outcome(), Outcome::Served);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_stream_releases_its_upstream_with_the_error_chunk() {
    let seen = Seen {
        stall: true,
        ..Seen::default()
    };
    let script = frames(&[ROLE, TOKEN], 0, &[]);
    let route = Route::new("a/model").idle_timeout(std::time::Duration::from_secs(5));
    let svc = FallbackLayer::new(Chain::new([route])).layer(upstream(vec![(script.clone(), seen.clone())]));
    let got = run(svc, std::slice::from_ref(&seen)).await;
    let (tail, passed) = got.frames.split_last().unwrap();
    assert_eq!(passed, &script[..]);
    assert_eq!(error_chunk(tail)["error"]["code"], "stream_stalled");
    assert!(
        got.released_before_end,
        "the silent upstream's connection is released when the stream is ended, not when the caller lets go"
    );
    assert_eq!(got.last.served_attempt().unwrap().error_type(), Some("stream_stalled"));
}

#[tokio::test]
async fn a_frame_that_commits_and_then_passes_the_limit_is_passed_on_then_ended() {
    // One frame: the first token, then a line longer than the limit.
    let mut frame = [TOKEN, OPEN].concat().into_bytes();
    frame.resize(frame.len() + LIMIT, b'x');
    let script = vec![
        Bytes::from(frame),
        Bytes::from_static(CLOSE.as_bytes()),
        Bytes::from_static(DONE.as_bytes()),
    ];
    let seen = Seen::default();
    let svc =
        FallbackLayer::new(Chain::new([Route::new("a/model")])).layer(upstream(vec![(script.clone(), seen.clone())]));
    let got = run(svc, std::slice::from_ref(&seen)).await;
    assert_eq!(got.at_commit.resolution(), Resolution::Served);
    let (tail, passed) = got.frames.split_last().unwrap();
    assert_eq!(
        passed,
        &script[..1],
        "the committing frame, whole; nothing after it is read"
    );
    assert_eq!(seen.produced(), 1);
    assert_eq!(error_chunk(tail)["error"]["code"], "stream_event_too_large");
    assert!(got.released_before_end);
    assert_eq!(got.last.served_attempt().unwrap().outcome(), Outcome::StreamBroken);
    assert_eq!(
        got.last.served_attempt().unwrap().error_type(),
        Some("stream_event_too_large")
    );
}

/// `keep_alives` frames of `:\n`, each the first two bytes of a fresh
/// 8 KiB buffer (as hyper cuts its frames from its read buffer: a frame
/// keeps the buffer alive), then `tail`.
struct Pinning {
    keep_alives: usize,
    tail: VecDeque<Bytes>,
}

impl Body for Pinning {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.keep_alives > 0 {
            self.keep_alives -= 1;
            let mut buffer = vec![0u8; 8 * 1024];
            buffer[..2].copy_from_slice(b":\n");
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(buffer).slice(..2)))));
        }
        Poll::Ready(self.tail.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

/// Before its first token a stream is held. What it holds is bounded by
/// `max_response_bytes` counted in bytes, and what that costs in memory is
/// bounded too: past 64 frames, small ones are copied rather than held as
/// handles on their read buffers. 3,000 keep-alives each pinning 8 KiB
/// would otherwise hold ~24 MiB for 6,000 bytes.
#[tokio::test]
async fn tiny_frames_before_the_first_token_do_not_hold_their_read_buffers() {
    const KEEP_ALIVES: usize = 3_000;
    let tail = [TOKEN, FINISH, DONE].map(|s| Bytes::from_static(s.as_bytes()));
    let svc = FallbackLayer::new(Chain::new([Route::new("a/model"), Route::new("b/model")])).layer(service_fn({
        let tail = tail.clone();
        move |_req: Request<ReplayBody>| {
            let body = Pinning {
                keep_alives: KEEP_ALIVES,
                tail: tail.clone().into(),
            };
            async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(body)
                        .unwrap(),
                )
            }
        }
    }));
    let base = reset_peak();
    let resp = svc.oneshot(request()).await.unwrap();
    let peak = peak_above(base);
    println!("peak until commit: {peak} bytes above the start");
    assert!(peak < (2 << 20), "held {peak} bytes for 6,000 bytes of keep-alives");
    let report = resp.extensions().get::<FallbackReport>().unwrap().clone();
    assert_eq!(
        report.served_model(),
        "a/model",
        "committed at the first token, no fallback"
    );
    // Every byte reaches the caller, in order.
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        got.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    let mut expected = b":\n".repeat(KEEP_ALIVES);
    tail.iter().for_each(|b| expected.extend_from_slice(b));
    assert_eq!(got, expected);
}
