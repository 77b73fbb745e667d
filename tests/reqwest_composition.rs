//! `FallbackMiddleware` in reqwest middleware stacks with `reqwest-retry`
//! after it (retries per model) and before it (retries of the whole chain).
//! Loopback HTTP, paused time. `reqwest-tracing` is in reqwest_tracing.rs.

mod common;

use common::chat;
use http::StatusCode;
use llm_fallback::{Chain, FallbackMiddleware, FallbackReport, Outcome, Resolution, Route};
use llm_fallback_mock::{MockServer, MockUpstream, Reply, Script};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware};
use reqwest_retry::policies::ExponentialBackoff;
use reqwest_retry::RetryTransientMiddleware;
use std::sync::Arc;
use std::time::Duration;

fn reqwest_client() -> reqwest::Client {
    // The dev build of reqwest has rustls without a crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn retry(max: u32) -> RetryTransientMiddleware<ExponentialBackoff> {
    let policy = ExponentialBackoff::builder()
        .retry_bounds(Duration::from_millis(10), Duration::from_millis(10))
        .build_with_max_retries(max);
    RetryTransientMiddleware::new_with_policy(policy)
}

fn stack(layers: Vec<Arc<dyn Middleware>>) -> ClientWithMiddleware {
    layers
        .into_iter()
        .fold(ClientBuilder::new(reqwest_client()), ClientBuilder::with_arc)
        .build()
}

/// `a/a` is down for good; `b/b` has one blip, then serves.
async fn server() -> MockServer {
    let upstream = MockUpstream::new()
        .model("a/a", Reply::status(503))
        .model("b/b", Script::sequence([Reply::status(503), Reply::ok()]));
    MockServer::start(upstream).await.unwrap()
}

fn chain() -> Chain {
    Chain::new([Route::new("a/a"), Route::new("b/b")])
}

async fn call(client: &ClientWithMiddleware, server: &MockServer) -> reqwest::Response {
    client
        .post(server.chat_url())
        .header("content-type", "application/json")
        .body(chat("a/a"))
        .send()
        .await
        .unwrap()
}

fn report(resp: &reqwest::Response) -> FallbackReport {
    resp.extensions().get::<FallbackReport>().unwrap().clone()
}

#[tokio::test(start_paused = true)]
async fn retry_inside_retries_each_model_with_reusable_bodies() {
    let server = server().await;
    let client = stack(vec![
        Arc::new(FallbackMiddleware::new(chain()).reusable_bodies(true)),
        Arc::new(retry(2)),
    ]);
    let resp = call(&client, &server).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let up = server.upstream();
    assert_eq!(up.request_count("a/a"), 3, "one try and two retries on the primary");
    assert_eq!(up.request_count("b/b"), 2, "the retry inside served the blip");
    let report = report(&resp);
    assert_eq!(report.attempts().len(), 2, "the report counts models, not retries");
    assert_eq!(report.attempts()[0].outcome(), Outcome::HttpError);
    assert_eq!(report.served_model(), "b/b");
    // Every retry sent the same rewritten bytes.
    let bodies: Vec<_> = up.requests_for("a/a").into_iter().map(|r| r.body).collect();
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
}

#[tokio::test(start_paused = true)]
async fn retry_inside_without_reusable_bodies_fails_loudly_not_silently() {
    // The default zero-copy body is a stream to reqwest: the retry middleware
    // cannot clone it and refuses before sending anything.
    let server = server().await;
    let client = stack(vec![Arc::new(FallbackMiddleware::new(chain())), Arc::new(retry(2))]);
    let resp = call(&client, &server).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let report = report(&resp);
    assert_eq!(report.resolution(), Resolution::Exhausted);
    for a in report.attempts() {
        assert_eq!(a.outcome(), Outcome::Transport);
        assert!(a.transport_error().unwrap().contains("not cloneable"), "{a}");
    }
    assert!(server.upstream().requests().is_empty());
}

#[tokio::test(start_paused = true)]
async fn retry_outside_retries_the_whole_chain() {
    let server = server().await;
    let client = stack(vec![Arc::new(retry(1)), Arc::new(FallbackMiddleware::new(chain()))]);
    let resp = call(&client, &server).await;
    // First pass: a/a 503, b/b 503, exhausted (502, transient to the retry).
    // Second pass: a/a 503, b/b serves.
    assert_eq!(resp.status(), StatusCode::OK);
    let up = server.upstream();
    assert_eq!(up.request_count("a/a"), 2);
    assert_eq!(up.request_count("b/b"), 2);
    let report = report(&resp);
    assert_eq!(report.attempts().len(), 2, "the report is the last pass's");
    assert_eq!(report.served_model(), "b/b");
}
