//! Hedging and metrics, on paused time.

mod common;

use common::*;
use llm_fallback::health::HedgeBudget;
use llm_fallback::{Chain, FallbackLayer, FallbackReport, Outcome, Route};
use llm_fallback_mock::{MockUpstream, Reply};
use std::future::Future;
use std::time::Duration;
use tower::{Layer, ServiceExt};

const URL: &str = "http://mock/api/v1/chat/completions";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn generous() -> HedgeBudget {
    HedgeBudget::new(1.0, Duration::from_secs(60))
}

async fn ask(layer: &FallbackLayer, up: &MockUpstream) -> (FallbackReport, Duration) {
    let started = tokio::time::Instant::now();
    let resp = layer
        .clone()
        .layer(up.clone())
        .oneshot(post(URL, chat("x")))
        .await
        .unwrap();
    let (parts, _) = body_bytes(resp).await;
    (report(&parts).clone(), started.elapsed())
}

#[tokio::test(start_paused = true)]
async fn a_hedge_wins_over_a_slow_primary_which_is_cancelled() {
    let up = MockUpstream::new()
        .model("slow/a", Reply::ok().latency(ms(10_000)))
        .model("fast/b", Reply::ok().latency(ms(50)));
    let layer = FallbackLayer::builder(Chain::new([
        Route::new("slow/a").hedge_after(ms(200)),
        Route::new("fast/b"),
    ]))
    .hedging(generous())
    .layer();
    let (r, took) = ask(&layer, &up).await;
    assert_eq!(took, ms(250), "hedge at 200 ms + 50 ms answer");
    assert_eq!(r.served_model(), "fast/b");
    let a = &r.attempts();
    assert_eq!(a.len(), 2);
    assert_eq!(
        (a[0].model(), a[0].outcome(), a[0].hedged()),
        ("fast/b", Outcome::Served, true)
    );
    assert_eq!((a[1].model(), a[1].outcome()), ("slow/a", Outcome::Cancelled));
    assert_eq!(a[1].elapsed(), ms(250));
}

#[tokio::test(start_paused = true)]
async fn the_primary_can_still_win_after_the_hedge_starts() {
    let up = MockUpstream::new()
        .model("a/a", Reply::ok().latency(ms(300)))
        .model("b/b", Reply::ok().latency(ms(1_000)));
    let layer = FallbackLayer::builder(Chain::new([Route::new("a/a"), Route::new("b/b")]).hedge_after(ms(200)))
        .hedging(generous())
        .layer();
    let (r, took) = ask(&layer, &up).await;
    assert_eq!(took, ms(300));
    assert_eq!(r.served_model(), "a/a");
    assert_eq!(r.attempts()[1].outcome(), Outcome::Cancelled);
    assert!(r.attempts()[1].hedged());
    assert_eq!(up.request_count("b/b"), 1, "the hedge was sent, then dropped");
}

#[tokio::test(start_paused = true)]
async fn a_fast_answer_never_starts_a_hedge() {
    let up = MockUpstream::new()
        .model("a/a", Reply::ok().latency(ms(100)))
        .model("b/b", Reply::ok());
    let layer = FallbackLayer::builder(Chain::new([Route::new("a/a").hedge_after(ms(200)), Route::new("b/b")]))
        .hedging(generous())
        .layer();
    let (r, _) = ask(&layer, &up).await;
    assert_eq!(r.attempts().len(), 1);
    assert_eq!(up.request_count("b/b"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_hedge_leaves_the_primary_running() {
    let up = MockUpstream::new()
        .model("a/a", Reply::ok().latency(ms(500)))
        .model("b/b", Reply::status(503));
    let layer = FallbackLayer::builder(Chain::new([Route::new("a/a").hedge_after(ms(200)), Route::new("b/b")]))
        .hedging(generous())
        .layer();
    let (r, took) = ask(&layer, &up).await;
    assert_eq!(took, ms(500));
    assert_eq!(r.served_model(), "a/a");
    assert_eq!(r.attempts()[0].outcome(), Outcome::HttpError);
    assert_eq!(r.attempts()[1].outcome(), Outcome::Served);
}

#[tokio::test(start_paused = true)]
async fn the_hedge_budget_caps_extra_requests() {
    let up = MockUpstream::new()
        .model("a/a", Reply::ok().latency(ms(300)))
        .model("b/b", Reply::ok().latency(ms(500)));
    let layer = FallbackLayer::builder(Chain::new([Route::new("a/a").hedge_after(ms(200)), Route::new("b/b")]))
        .hedging(HedgeBudget::new(0.1, Duration::from_secs(3600)))
        .layer();
    for _ in 0..20 {
        ask(&layer, &up).await;
    }
    assert_eq!(up.request_count("b/b"), 2, "10 % of 20 requests");
}

#[tokio::test(start_paused = true)]
async fn hedging_respects_the_deadline() {
    let up = MockUpstream::new()
        .model("a/a", Reply::hang())
        .model("b/b", Reply::ok());
    let chain = Chain::new([Route::new("a/a").hedge_after(ms(500)), Route::new("b/b")]).deadline(ms(400));
    let layer = FallbackLayer::builder(chain).hedging(generous()).layer();
    let (r, took) = ask(&layer, &up).await;
    assert_eq!(took, ms(400));
    assert_eq!(up.request_count("b/b"), 0, "no hedge past the deadline");
    assert_eq!(r.attempts()[0].outcome(), Outcome::DeadlineExceeded);
}

#[test]
fn metrics_count_attempts_skips_hedges_and_fallback_position() {
    use metrics_util::debugging::DebugValue;
    let snapshot = recorded(true, || async {
        let up = MockUpstream::new()
            .model("a/a", Reply::status(503))
            .model("b/b", Reply::ok().latency(ms(1_000)))
            .model("c/c", Reply::ok().latency(ms(10)));
        let layer = FallbackLayer::builder(Chain::new([
            Route::new("a/a"),
            Route::new("b/b").hedge_after(ms(100)),
            Route::new("c/c"),
        ]))
        .hedging(generous())
        .layer();
        ask(&layer, &up).await;
    });
    let find = |name: &str, labels: &[(&str, &str)]| -> Option<&DebugValue> {
        snapshot.iter().find_map(|(key, _, _, value)| {
            let k = key.key();
            let matches = k.name() == name
                && labels
                    .iter()
                    .all(|(n, v)| k.labels().any(|l| l.key() == *n && l.value() == *v));
            matches.then_some(value)
        })
    };
    let counter = |name: &str, labels: &[(&str, &str)]| match find(name, labels) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name} {labels:?}: {other:?}"),
    };
    assert_eq!(
        counter(
            "llm_fallback_attempts_total",
            &[("model", "a/a"), ("outcome", "http_error")]
        ),
        1
    );
    assert_eq!(
        counter(
            "llm_fallback_attempts_total",
            &[("model", "c/c"), ("outcome", "served")]
        ),
        1
    );
    assert_eq!(
        counter(
            "llm_fallback_attempts_total",
            &[("model", "b/b"), ("outcome", "cancelled")]
        ),
        1
    );
    assert_eq!(counter("llm_fallback_hedges_started_total", &[("model", "c/c")]), 1);
    assert_eq!(counter("llm_fallback_hedges_won_total", &[("model", "c/c")]), 1);
    assert_eq!(
        counter(
            "llm_fallback_requests_total",
            &[("resolution", "served"), ("position", "2")]
        ),
        1
    );
    assert!(matches!(
        find("llm_fallback_attempt_duration_seconds", &[("model", "c/c")]),
        Some(DebugValue::Histogram(h)) if h.len() == 1
    ));
    assert!(matches!(
        find("llm_fallback_time_to_commit_seconds", &[("model", "c/c")]),
        Some(DebugValue::Histogram(_))
    ));
}

/// A body that arrives `delay` after its head.
struct SlowBody {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    data: Option<bytes::Bytes>,
}

impl http_body::Body for SlowBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::ready!(self.sleep.as_mut().poll(cx));
        std::task::Poll::Ready(self.data.take().map(|d| Ok(http_body::Frame::data(d))))
    }
}

#[tokio::test(start_paused = true)]
async fn a_response_head_in_time_rules_out_the_hedge() {
    // a/a sends its head at once and its body after 500 ms: it has committed,
    // so the 200 ms hedge never starts.
    let hedges = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = hedges.clone();
    let inner = tower::service_fn(move |req: http::Request<llm_fallback::ReplayBody>| {
        let seen = seen.clone();
        async move {
            let body = http_body_util::BodyExt::collect(req.into_body())
                .await
                .unwrap()
                .to_bytes();
            let model = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["model"]
                .as_str()
                .unwrap()
                .to_owned();
            if model != "a/a" {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            let answer =
                format!(r#"{{"model":"{model}","choices":[{{"finish_reason":"stop","message":{{"content":"hi"}}}}]}}"#);
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .header("content-type", "application/json")
                    .body(SlowBody {
                        sleep: Box::pin(tokio::time::sleep(ms(500))),
                        data: Some(answer.into()),
                    })
                    .unwrap(),
            )
        }
    });
    let layer = FallbackLayer::builder(Chain::new([Route::new("a/a").hedge_after(ms(200)), Route::new("b/b")]))
        .hedging(generous())
        .layer();
    let started = tokio::time::Instant::now();
    let resp = layer.layer(inner).oneshot(post(URL, chat("x"))).await.unwrap();
    assert_eq!(started.elapsed(), ms(500));
    assert_eq!(resp.extensions().get::<FallbackReport>().unwrap().attempts().len(), 1);
    assert_eq!(hedges.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_stream_without_a_first_token_is_hedged() {
    // Keep-alives are not a commit: after 200 ms the next route starts.
    let up = MockUpstream::new()
        .model("a/a", Reply::stream().keep_alive(100, ms(50)))
        .model("b/b", Reply::stream().latency(ms(10)));
    let layer = FallbackLayer::builder(Chain::new([Route::new("a/a").hedge_after(ms(200)), Route::new("b/b")]))
        .hedging(generous())
        .layer();
    let started = tokio::time::Instant::now();
    let body = serde_json::json!({"model": "x", "stream": true, "messages": []}).to_string();
    let resp = layer.clone().layer(up.clone()).oneshot(post(URL, body)).await.unwrap();
    assert_eq!(started.elapsed(), ms(210));
    let r = resp.extensions().get::<FallbackReport>().unwrap().clone();
    assert_eq!(r.served_model(), "b/b");
    assert_eq!(r.attempts()[1].outcome(), Outcome::Cancelled);
    let (_, bytes) = body_bytes(resp).await;
    assert!(
        !String::from_utf8_lossy(&bytes).contains("OPENROUTER PROCESSING"),
        "nothing of the loser reaches the client"
    );
}
