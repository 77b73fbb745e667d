//! Peak memory with 1,000 requests of 100 KiB in flight through the layer:
//! each body is held once (the buffered request, shared by every attempt's
//! `ReplayBody`), never once per attempt, so the peak resident memory stays
//! within 1.3× the bodies' own bytes.
//!
//! Its own test binary: it reads the process's peak RSS (`VmHWM`, reset
//! first through `/proc/self/clear_refs`). Time is paused, so the upstream's
//! delay, which keeps every request in flight at once, costs no wall time.

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use llm_fallback::{Chain, FallbackLayer, Route};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, ServiceExt};

const REQUESTS: usize = 1_000;
const BODY: usize = 100 << 10;
/// What a socket read hands over at a time.
const CHUNK: usize = 16 << 10;

const HEAD: &str = r#"{"model":"a/primary","messages":[{"role":"user","content":""#;
const TAIL: &str = r#""}],"temperature":0.2}"#;

/// A request body of exactly `BODY` bytes that does not exist before it is
/// read: it is made chunk by chunk as it is polled, like bytes arriving on
/// a socket, so the only copy of a body in memory is the one the layer
/// buffers.
struct Arriving {
    seed: u8,
    sent: usize,
}

impl Arriving {
    fn byte(&self, i: usize) -> u8 {
        if i < HEAD.len() {
            HEAD.as_bytes()[i]
        } else if i >= BODY - TAIL.len() {
            TAIL.as_bytes()[i - (BODY - TAIL.len())]
        } else if i % 61 == 0 {
            b' '
        } else {
            b'a' + ((i as u8) ^ self.seed) % 26
        }
    }
}

impl Body for Arriving {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent == BODY {
            return Poll::Ready(None);
        }
        let end = (self.sent + CHUNK).min(BODY);
        let chunk: Vec<u8> = (self.sent..end).map(|i| self.byte(i)).collect();
        self.sent = end;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent == BODY
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact((BODY - self.sent) as u64)
    }
}

/// An upstream that reads each request body to the end (without copying
/// it: the frames are slices of the layer's buffer), holds it for a second
/// as a slow client would, then answers: `503` for the primary, a completion
/// for the secondary. So every request makes two attempts.
#[derive(Clone, Default)]
struct Slow {
    calls: Arc<AtomicUsize>,
}

impl tower::Service<Request<llm_fallback::ReplayBody>> for Slow {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<llm_fallback::ReplayBody>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let primary = req.extensions().get::<llm_fallback::Attempt>().unwrap().index() == 0;
        Box::pin(async move {
            let mut body = req.into_body();
            let mut held = Vec::new();
            while let Some(frame) = body.frame().await {
                held.push(frame.unwrap().into_data().unwrap());
            }
            assert_eq!(
                held.iter().map(Bytes::len).sum::<usize>(),
                // The primary gets the caller's body as is (same model).
                if primary {
                    BODY
                } else {
                    BODY - "a/primary".len() + "b/secondary".len()
                }
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(held);
            let (status, text) = if primary {
                (503, r#"{"error":{"code":503,"message":"down"}}"#)
            } else {
                (
                    200,
                    r#"{"id":"x","model":"b/secondary","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"ok"}}]}"#,
                )
            };
            Ok(Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(text.as_bytes())))
                .unwrap())
        })
    }
}

/// `VmRSS` or `VmHWM` of this process, in bytes.
fn status_kib(field: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

#[tokio::test(start_paused = true)]
async fn a_thousand_100_kib_requests_in_flight_hold_each_body_once() {
    let upstream = Slow::default();
    let chain = Chain::new([Route::new("a/primary"), Route::new("b/secondary")]);
    let svc = FallbackLayer::new(chain).layer(upstream.clone());

    // Warm up the allocator, tracing callsites and the runtime with a few
    // requests, then take the baseline and reset the peak.
    for seed in 0..4 {
        let req = Request::post("http://upstream/api/v1/chat/completions")
            .body(Arriving { seed, sent: 0 })
            .unwrap();
        assert_eq!(svc.clone().oneshot(req).await.unwrap().status(), 200);
    }
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM (Linux)");
    let baseline = status_kib("VmRSS:");

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..REQUESTS {
        let svc = svc.clone();
        tasks.spawn(async move {
            let req = Request::post("http://upstream/api/v1/chat/completions")
                .header("content-type", "application/json")
                .header("content-length", BODY)
                .body(Arriving { seed: i as u8, sent: 0 })
                .unwrap();
            let resp = svc.oneshot(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["x-fallback-attempts"], "2");
            resp.into_body().collect().await.unwrap();
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert_eq!(upstream.calls.load(Ordering::Relaxed), 4 * 2 + REQUESTS * 2);

    let peak = status_kib("VmHWM:").saturating_sub(baseline);
    let bodies = REQUESTS * BODY;
    println!(
        "{REQUESTS} requests of {} KiB in flight, 2 attempts each: peak RSS {:.1} MB over a {:.1} MB baseline, for {:.1} MB of bodies ({:.2}×)",
        BODY >> 10,
        peak as f64 / 1e6,
        baseline as f64 / 1e6,
        bodies as f64 / 1e6,
        peak as f64 / bodies as f64
    );
    assert!(
        peak as f64 <= 1.3 * bodies as f64,
        "peak RSS grew by {peak} bytes for {bodies} bytes of bodies"
    );
}
