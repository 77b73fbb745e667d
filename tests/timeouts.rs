//! Per-attempt timeouts and the chain deadline, on paused time.

mod common;

use common::*;
use http::StatusCode;
use llm_fallback::{Attempt, Chain, FallbackLayer, Outcome, Resolution, Route};
use llm_fallback_mock::{MockUpstream, Reply};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::{Layer, ServiceBuilder, ServiceExt};

const URL: &str = "http://mock/api/v1/chat/completions";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[tokio::test(start_paused = true)]
async fn a_hung_primary_times_out_and_the_next_route_serves() {
    let upstream = MockUpstream::new()
        .model("a/a", Reply::hang())
        .model("b/b", Reply::ok());
    let chain = Chain::new([Route::new("a/a").timeout(secs(5)), Route::new("b/b").timeout(secs(5))]);
    let started = tokio::time::Instant::now();
    let resp = FallbackLayer::new(chain)
        .layer(upstream.clone())
        .oneshot(post(URL, chat("a/a")))
        .await
        .unwrap();
    let (parts, _) = body_bytes(resp).await;
    let report = report(&parts);
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(report.served_model(), "b/b");
    assert_eq!(report.attempts()[0].outcome(), Outcome::Timeout);
    assert_eq!(report.attempts()[0].elapsed(), secs(5));
    assert_eq!(started.elapsed(), secs(5));
}

#[tokio::test(start_paused = true)]
async fn a_slow_answer_within_the_timeout_is_served() {
    let upstream = MockUpstream::new()
        .model("a/a", Reply::ok().latency(secs(4)))
        .model("b/b", Reply::ok());
    let chain = Chain::new([Route::new("a/a").timeout(secs(5)), Route::new("b/b")]);
    let resp = FallbackLayer::new(chain)
        .layer(upstream.clone())
        .oneshot(post(URL, chat("a/a")))
        .await
        .unwrap();
    let (parts, _) = body_bytes(resp).await;
    assert_eq!(report(&parts).served_model(), "a/a");
    assert_eq!(report(&parts).attempts()[0].elapsed(), secs(4));
    assert_eq!(upstream.request_count("b/b"), 0);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_bounds_a_cascade_of_timeouts() {
    let upstream = MockUpstream::new()
        .model("a/a", Reply::hang())
        .model("b/b", Reply::hang())
        .model("c/c", Reply::hang())
        .model("d/d", Reply::ok());
    let chain = Chain::new([
        Route::new("a/a").timeout(secs(10)),
        Route::new("b/b").timeout(secs(10)),
        Route::new("c/c").timeout(secs(10)),
        Route::new("d/d").timeout(secs(10)),
    ])
    .deadline(secs(25));
    let started = tokio::time::Instant::now();
    let resp = FallbackLayer::new(chain)
        .layer(upstream.clone())
        .oneshot(post(URL, chat("a/a")))
        .await
        .unwrap();
    let (parts, json) = body_json(resp).await;
    assert_eq!(started.elapsed(), secs(25), "no attempt outlives the deadline");
    assert_eq!(parts.status, StatusCode::GATEWAY_TIMEOUT);
    let report = report(&parts);
    assert_eq!(report.resolution(), Resolution::DeadlineExceeded);
    let outcomes: Vec<_> = report
        .attempts()
        .iter()
        .map(|a| (a.model().to_owned(), a.outcome(), a.elapsed()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("a/a".to_owned(), Outcome::Timeout, secs(10)),
            ("b/b".to_owned(), Outcome::Timeout, secs(10)),
            ("c/c".to_owned(), Outcome::DeadlineExceeded, secs(5)),
        ]
    );
    assert_eq!(upstream.request_count("d/d"), 0);
    assert_eq!(json["error"]["code"], "fallback_deadline_exceeded");
    let message = json["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("the fallback deadline expired after 3 attempt(s)"),
        "{message}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_deadline_shorter_than_the_route_timeout_wins() {
    let upstream = MockUpstream::new()
        .model("a/a", Reply::hang())
        .model("b/b", Reply::ok());
    let chain = Chain::new([Route::new("a/a").timeout(secs(30)), Route::new("b/b")]).deadline(secs(3));
    let resp = FallbackLayer::new(chain)
        .layer(upstream.clone())
        .oneshot(post(URL, chat("a/a")))
        .await
        .unwrap();
    let (parts, _) = body_bytes(resp).await;
    assert_eq!(parts.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(report(&parts).attempts().len(), 1);
    assert_eq!(report(&parts).attempts()[0].outcome(), Outcome::DeadlineExceeded);
    assert_eq!(report(&parts).attempts()[0].elapsed(), secs(3));
    assert_eq!(upstream.request_count("b/b"), 0);
}

/// Index, model, label and time budget of one attempt.
type Seen = (usize, String, Option<String>, Option<Duration>);

#[tokio::test(start_paused = true)]
async fn inner_layers_see_each_attempt_and_its_time_budget() {
    let upstream = MockUpstream::new()
        .model("a/a", Reply::status(503).latency(secs(2)))
        .model("b/b", Reply::status(503))
        .model("c/c", Reply::ok());
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    let inner = ServiceBuilder::new()
        .map_request(move |req: http::Request<llm_fallback::ReplayBody>| {
            let a = req
                .extensions()
                .get::<Attempt>()
                .expect("every attempt carries an Attempt");
            log.lock().unwrap().push((
                a.index(),
                a.model().to_owned(),
                a.label().map(str::to_owned),
                a.timeout(),
            ));
            req
        })
        .service(upstream);
    let chain = Chain::new([
        Route::new("a/a").label("primary").timeout(secs(8)),
        Route::new("b/b").timeout(secs(8)),
        Route::new("c/c"),
    ])
    .deadline(secs(9));
    let resp = FallbackLayer::new(chain)
        .layer(inner)
        .oneshot(post(URL, chat("a/a")))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            (0, "a/a".to_owned(), Some("primary".to_owned()), Some(secs(8))),
            // 2 s spent: the deadline leaves 7 s, less than the route's 8 s.
            (1, "b/b".to_owned(), None, Some(secs(7))),
            (2, "c/c".to_owned(), None, Some(secs(7))),
        ]
    );
}
