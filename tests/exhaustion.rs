//! When every route fails the caller gets one answer naming every attempt.

mod common;

use common::*;
use http::StatusCode;
use llm_fallback::{Chain, FallbackLayer, Outcome, Resolution, Route};
use llm_fallback_mock::{MockServer, MockUpstream, Reply};
use std::time::Duration;
use tower::{Layer, ServiceExt};

#[tokio::test]
async fn every_attempt_is_named_whatever_the_last_failure() {
    let upstream = MockUpstream::new()
        .model(
            "anthropic/claude-3.5-sonnet",
            Reply::error(502, "provider_unavailable", "Provider returned error")
                .provider("Anthropic")
                .raw_message("upstream connect error"),
        )
        .model("openai/gpt-4o", Reply::status(429).retry_after(7))
        .model("openai/gpt-4o-mini", Reply::transport_error());
    let server = MockServer::start(upstream).await.unwrap();
    let chain = Chain::new([
        Route::new("anthropic/claude-3.5-sonnet").label("primary"),
        Route::new("openai/gpt-4o").label("secondary"),
        Route::new("openai/gpt-4o-mini").label("budget"),
    ]);
    let resp = FallbackLayer::new(chain)
        .layer(http_client())
        .oneshot(post(&server.chat_url(), chat("x")))
        .await
        .unwrap();
    let (parts, json) = body_json(resp).await;

    assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
    assert_eq!(parts.headers["content-type"], "application/json");
    assert_eq!(parts.headers["x-fallback-attempts"], "3");
    assert!(parts.headers.get("x-fallback-model").is_none());
    assert_eq!(parts.headers["retry-after"], "7");

    let error = &json["error"];
    assert_eq!(error["type"], "upstream_error");
    assert_eq!(error["code"], "fallback_exhausted");
    let message = error["message"].as_str().unwrap();
    for needle in [
        "all 3 fallback route(s) failed",
        "anthropic/claude-3.5-sonnet (primary): HTTP 502 provider_unavailable from Anthropic",
        "upstream connect error",
        "openai/gpt-4o (secondary): HTTP 429 rate_limit_exceeded",
        "openai/gpt-4o-mini (budget): transport error",
    ] {
        assert!(message.contains(needle), "message should contain {needle:?}: {message}");
    }
    let attempts = error["metadata"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3);
    assert_eq!(attempts[0]["status"], 502);
    assert_eq!(attempts[0]["provider_name"], "Anthropic");
    assert_eq!(attempts[0]["raw"], "upstream connect error");
    assert_eq!(attempts[1]["error_type"], "rate_limit_exceeded");
    assert_eq!(attempts[2]["outcome"], "transport_error");
    assert!(attempts[2]["status"].is_null());

    let report = report(&parts);
    assert_eq!(report.resolution(), Resolution::Exhausted);
    assert_eq!(report.served_model(), "");
    assert_eq!(report.attempts()[1].retry_after(), Some(Duration::from_secs(7)));
    assert_eq!(
        report.attempts().iter().map(|a| a.outcome()).collect::<Vec<_>>(),
        [Outcome::HttpError, Outcome::HttpError, Outcome::Transport]
    );
}

#[tokio::test(start_paused = true)]
async fn a_timeout_last_reads_the_same() {
    let upstream = MockUpstream::new()
        .model("a/a", Reply::status(503))
        .model("b/b", Reply::hang());
    let chain = Chain::new([Route::new("a/a"), Route::new("b/b").timeout(Duration::from_secs(2))]);
    let resp = FallbackLayer::new(chain)
        .layer(upstream)
        .oneshot(post("http://mock/v1/chat/completions", chat("a")))
        .await
        .unwrap();
    let (parts, json) = body_json(resp).await;
    assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
    assert_eq!(json["error"]["code"], "fallback_exhausted");
    let message = json["error"]["message"].as_str().unwrap();
    assert!(message.contains("a/a: HTTP 503"), "{message}");
    assert!(message.contains("b/b: timed out after 2000ms"), "{message}");
    assert_eq!(json["error"]["metadata"]["attempts"][1]["outcome"], "timeout");
}

#[tokio::test]
async fn an_error_hidden_in_http_200_last_reads_the_same() {
    let upstream = MockUpstream::new()
        .model("a/a", Reply::status(500))
        .model("b/b", Reply::ok_with_error());
    let chain = Chain::new([Route::new("a/a"), Route::new("b/b")]);
    let resp = FallbackLayer::new(chain)
        .layer(upstream)
        .oneshot(post("http://mock/v1/chat/completions", chat("a")))
        .await
        .unwrap();
    let (parts, json) = body_json(resp).await;
    assert_eq!(
        parts.status,
        StatusCode::BAD_GATEWAY,
        "a 200 carrying an error is never passed off as success"
    );
    assert_eq!(json["error"]["metadata"]["attempts"][1]["outcome"], "error_in_body");
    assert_eq!(json["error"]["metadata"]["attempts"][1]["status"], 200);
}
