//! `FallbackMiddleware` with `reqwest-tracing`: before it, one span around
//! the whole chain; after it, one span per attempt, inside the attempt's
//! `llm_fallback.attempt` span.
//!
//! One test in its own binary: a thread-local subscriber is only reliable
//! when no other test registers the same callsites concurrently.

mod common;

use common::{chat, Captured};
use http::StatusCode;
use llm_fallback::{Chain, FallbackMiddleware, Route};
use llm_fallback_mock::{MockServer, MockUpstream, Reply};
use reqwest_middleware::{ClientBuilder, Middleware};
use reqwest_tracing::TracingMiddleware;
use std::sync::Arc;

/// Runs one call (`a/a` down, `b/b` serves) through `layers` and returns
/// the span-close lines, each naming the closing span's ancestors first.
async fn closed_spans(layers: Vec<Arc<dyn Middleware>>) -> Vec<String> {
    let (out, _guard) = Captured::install(tracing::Level::INFO);
    let upstream = MockUpstream::new()
        .model("a/a", Reply::status(503))
        .model("b/b", Reply::ok());
    let server = MockServer::start(upstream).await.unwrap();
    // The dev build of reqwest has rustls without a crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = layers
        .into_iter()
        .fold(
            ClientBuilder::new(reqwest::Client::builder().no_proxy().build().unwrap()),
            ClientBuilder::with_arc,
        )
        .build();
    let resp = client
        .post(server.chat_url())
        .header("content-type", "application/json")
        .body(chat("a/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    drop(_guard);
    let text = out.text();
    text.lines()
        .filter(|l| l.contains(" close "))
        .map(str::to_owned)
        .collect()
}

fn chain() -> Chain {
    Chain::new([Route::new("a/a"), Route::new("b/b")])
}

#[tokio::test(flavor = "current_thread")]
async fn tracing_before_is_one_span_around_the_chain_after_is_one_per_attempt() {
    // Before: one reqwest span; both attempt spans run inside it.
    let closes = closed_spans(vec![
        Arc::new(TracingMiddleware::default()),
        Arc::new(FallbackMiddleware::new(chain())),
    ])
    .await;
    let http: Vec<_> = closes.iter().filter(|l| l.contains(": reqwest_tracing::")).collect();
    let attempts: Vec<_> = closes.iter().filter(|l| l.contains("llm_fallback.attempt{")).collect();
    assert_eq!(http.len(), 1, "{closes:#?}");
    assert!(http[0].contains("http.response.status_code=200"), "{}", http[0]);
    assert_eq!(attempts.len(), 2, "{closes:#?}");
    for a in attempts {
        assert!(a.contains("HTTP request{"), "attempts run inside the reqwest span: {a}");
    }

    // After: one reqwest span per attempt, each inside its attempt span.
    let closes = closed_spans(vec![
        Arc::new(FallbackMiddleware::new(chain())),
        Arc::new(TracingMiddleware::default()),
    ])
    .await;
    let http: Vec<_> = closes.iter().filter(|l| l.contains(": reqwest_tracing::")).collect();
    assert_eq!(http.len(), 2, "{closes:#?}");
    assert!(http[0].contains("fallback.attempt=0") && http[0].contains("http.response.status_code=503"));
    assert!(http[1].contains("fallback.attempt=1") && http[1].contains("http.response.status_code=200"));
}
