//! Cooldowns, drills and cancellation safety, on paused time.

mod common;

use common::*;
use http::{Request, Response};
use llm_fallback::health::{Cooldowns, Drills};
use llm_fallback::{Chain, FallbackLayer, FallbackReport, Outcome, ReplayBody, Route, SkipReason};
use llm_fallback_mock::{MockUpstream, Reply};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

const URL: &str = "http://mock/api/v1/chat/completions";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

async fn ask<S>(svc: &S) -> FallbackReport
where
    S: Service<
            Request<http_body_util::Full<bytes::Bytes>>,
            Response = Response<llm_fallback::ResponseBody<llm_fallback_mock::MockBody>>,
        > + Clone,
    S::Error: std::fmt::Debug,
{
    let resp = svc.clone().oneshot(post(URL, chat("x"))).await.unwrap();
    let (parts, _) = body_bytes(resp).await;
    report(&parts).clone()
}

fn outcomes(r: &FallbackReport) -> Vec<(String, Outcome)> {
    r.attempts()
        .iter()
        .map(|a| (a.model().to_owned(), a.outcome()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_failing_primary_cools_down_then_a_probe_restores_it() {
    let up = MockUpstream::new()
        .model("a/a", Reply::status(503))
        .model("b/b", Reply::ok());
    let layer = FallbackLayer::builder(Chain::new([Route::new("a/a"), Route::new("b/b")]))
        .cooldowns(Cooldowns::new().failures(2).base(secs(10)))
        .layer();
    let svc = layer.layer(up.clone());

    ask(&svc).await;
    ask(&svc).await; // second failure in a row: ejected for 10 s
    assert_eq!(up.request_count("a/a"), 2);
    let r = ask(&svc).await;
    assert_eq!(up.request_count("a/a"), 2, "a cooling route is not sent to");
    assert_eq!(r.attempts()[0].outcome(), Outcome::Skipped);
    assert!(matches!(
        r.attempts()[0].skip_reason(),
        Some(SkipReason::Cooling { .. })
    ));
    assert_eq!(r.served_model(), "b/b");

    tokio::time::advance(secs(10)).await;
    ask(&svc).await; // the probe fails: cooled again, for 20 s
    assert_eq!(up.request_count("a/a"), 3);
    tokio::time::advance(secs(10)).await;
    ask(&svc).await;
    assert_eq!(up.request_count("a/a"), 3, "the second cooldown is longer");

    up.set_script("a/a", Reply::ok());
    tokio::time::advance(secs(10)).await;
    let r = ask(&svc).await; // the probe succeeds
    assert_eq!(r.served_model(), "a/a");
    let r = ask(&svc).await;
    assert_eq!(outcomes(&r), [("a/a".to_owned(), Outcome::Served)], "restored");
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_at_once() {
    let up = MockUpstream::new()
        .model("a/a", Reply::status(429).retry_after(30))
        .model("b/b", Reply::ok());
    let svc = FallbackLayer::builder(Chain::new([Route::new("a/a"), Route::new("b/b")]))
        .cooldowns(Cooldowns::new().failures(5))
        .layer()
        .layer(up.clone());
    ask(&svc).await;
    tokio::time::advance(secs(29)).await;
    ask(&svc).await;
    assert_eq!(up.request_count("a/a"), 1, "cooling for the 30 s the upstream asked");
    tokio::time::advance(secs(1)).await;
    ask(&svc).await;
    assert_eq!(up.request_count("a/a"), 2, "then probed");
}

#[tokio::test(start_paused = true)]
async fn retry_after_as_an_http_date_or_in_milliseconds_is_honoured() {
    // A date a minute ahead (whole seconds: 59 to 60 s from now), and
    // OpenAI's `retry-after-ms`, which wins over the seconds beside it.
    let date = httpdate::fmt_http_date(std::time::SystemTime::now() + secs(60));
    let up = MockUpstream::new()
        .model("a/a", Reply::status(429).header("retry-after", &date))
        .model(
            "b/b",
            Reply::status(429).header("retry-after-ms", "20000").retry_after(600),
        )
        .model("c/c", Reply::ok());
    let svc = FallbackLayer::builder(Chain::new([Route::new("a/a"), Route::new("b/b"), Route::new("c/c")]))
        .cooldowns(Cooldowns::new().failures(5))
        .layer()
        .layer(up.clone());
    let r = ask(&svc).await;
    assert_eq!(r.served_model(), "c/c");
    let waits: Vec<_> = r.attempts().iter().map(|a| a.retry_after()).collect();
    assert!(
        matches!(waits[0], Some(d) if d > secs(55) && d <= secs(60)),
        "{waits:?}"
    );
    assert_eq!(waits[1], Some(secs(20)));
    tokio::time::advance(secs(20)).await;
    ask(&svc).await;
    assert_eq!(up.request_count("a/a"), 1, "a/a cools until its date");
    assert_eq!(up.request_count("b/b"), 2, "b/b for its 20 000 ms, not 600 s");
}

#[tokio::test(start_paused = true)]
async fn with_every_route_cooling_the_soonest_is_tried_anyway() {
    let up = MockUpstream::new()
        .model("a/a", Reply::status(503).retry_after(60))
        .model("b/b", Reply::status(503).retry_after(20));
    let svc = FallbackLayer::builder(Chain::new([Route::new("a/a"), Route::new("b/b")]))
        .cooldowns(Cooldowns::new())
        .layer()
        .layer(up.clone());
    ask(&svc).await; // both fail, both cool
    up.set_script("b/b", Reply::ok());
    let r = ask(&svc).await;
    assert_eq!(
        r.served_model(),
        "b/b",
        "the route whose cooldown ends first is tried, not a failure untried"
    );
    assert_eq!(up.request_count("a/a"), 1);
    assert_eq!(
        outcomes(&r),
        [
            ("a/a".to_owned(), Outcome::Skipped),
            ("b/b".to_owned(), Outcome::Served)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_chain_of_one_model_still_cools_down() {
    let up = MockUpstream::new().model("a/a", Reply::status(502));
    let svc = FallbackLayer::builder(Chain::new([Route::new("a/a")]))
        .cooldowns(Cooldowns::new().failures(1).base(secs(5)))
        .layer()
        .layer(up.clone());
    ask(&svc).await;
    let r = ask(&svc).await;
    // Nothing else to try: the cooling model is tried (not refused untried).
    assert_eq!(up.request_count("a/a"), 2);
    assert_eq!(r.attempts().len(), 1);
    assert_eq!(r.attempts()[0].outcome(), Outcome::HttpError);
}

#[tokio::test(start_paused = true)]
async fn drills_skip_the_primary_at_a_fixed_fraction_and_by_header() {
    let up = MockUpstream::new().model("a/a", Reply::ok()).model("b/b", Reply::ok());
    let svc = FallbackLayer::builder(Chain::new([Route::new("a/a"), Route::new("b/b")]))
        .drills(Drills::fraction(0.25).allow_header(true))
        .layer()
        .layer(up.clone());
    let mut drills = 0;
    for _ in 0..8 {
        let r = ask(&svc).await;
        if r.is_drill() {
            drills += 1;
            assert_eq!(r.attempts()[0].skip_reason(), Some(&SkipReason::Drill));
            assert_eq!(r.served_model(), "b/b");
        }
    }
    assert_eq!(drills, 2);
    assert_eq!(up.request_count("b/b"), 2);

    let mut req = post(URL, chat("x"));
    req.headers_mut().insert("x-fallback-drill", "1".parse().unwrap());
    let before = up.request_count("b/b");
    let resp = svc.clone().oneshot(req).await.unwrap();
    let (parts, _) = body_bytes(resp).await;
    assert!(report(&parts).is_drill());
    assert_eq!(up.request_count("b/b"), before + 1);
    assert!(
        up.requests()
            .iter()
            .all(|r| r.headers.get("x-fallback-drill").is_none()),
        "never forwarded"
    );
}

/// Counts attempt futures alive (created by `call`, not yet dropped).
#[derive(Clone)]
struct Live<S> {
    inner: S,
    alive: Arc<AtomicUsize>,
}

struct Counted<F> {
    fut: Pin<Box<F>>,
    alive: Arc<AtomicUsize>,
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.fut.as_mut().poll(cx)
    }
}

impl<F> Drop for Counted<F> {
    fn drop(&mut self) {
        self.alive.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<S: Service<Request<ReplayBody>>> Service<Request<ReplayBody>> for Live<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = Counted<S::Future>;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, req: Request<ReplayBody>) -> Self::Future {
        self.alive.fetch_add(1, Ordering::SeqCst);
        Counted {
            fut: Box::pin(self.inner.call(req)),
            alive: self.alive.clone(),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn dropping_the_response_future_stops_every_attempt_and_frees_the_probe() {
    let alive = Arc::new(AtomicUsize::new(0));
    let up = MockUpstream::new()
        .model("a/a", Reply::status(503))
        .model("b/b", Reply::hang());
    let svc = FallbackLayer::builder(Chain::new([Route::new("a/a"), Route::new("b/b")]))
        .cooldowns(Cooldowns::new().failures(1).base(secs(1)))
        .layer()
        .layer(Live {
            inner: up.clone(),
            alive: alive.clone(),
        });

    // Attempt on b/b hangs; drop the request while it is in flight.
    let fut = svc.clone().oneshot(post(URL, chat("x")));
    let _ = tokio::time::timeout(secs(5), fut).await;
    assert_eq!(alive.load(Ordering::SeqCst), 0, "no attempt outlives its request");

    // a/a cooled down for 1 s; after it, a probe starts and is dropped mid-flight…
    up.set_script("a/a", Reply::hang());
    tokio::time::advance(secs(1)).await;
    let _ = tokio::time::timeout(secs(5), svc.clone().oneshot(post(URL, chat("x")))).await;
    assert_eq!(alive.load(Ordering::SeqCst), 0);
    let probes = up.request_count("a/a");
    // …and the probe is free again: the next request may probe a/a.
    up.set_script("a/a", Reply::ok());
    let resp = svc.clone().oneshot(post(URL, chat("x"))).await.unwrap();
    let (parts, _) = body_bytes(resp).await;
    assert_eq!(report(&parts).served_model(), "a/a");
    assert_eq!(up.request_count("a/a"), probes + 1);
}
