//! Every row of the default classification table, through the mock upstream
//! over real loopback HTTP.

mod common;

use common::*;
use http::StatusCode;
use llm_fallback::{Chain, FallbackLayer, Outcome, Resolution, Route};
use llm_fallback_mock::{MockServer, MockUpstream, Reply};
use tower::{Layer, ServiceExt};

const PRIMARY: &str = "primary/model";
const SECONDARY: &str = "secondary/model";

enum Expect {
    /// The chain falls back: the secondary serves, the primary's attempt ends with this outcome.
    Fallback(Outcome),
    /// The chain stops: the primary's response comes back as-is with this status.
    Stop(StatusCode),
    /// The primary serves.
    Served,
}

async fn check(row: &str, primary: Option<Reply>, expect: Expect) {
    let mut upstream = MockUpstream::new().model(SECONDARY, Reply::ok());
    if let Some(reply) = primary {
        upstream = upstream.model(PRIMARY, reply);
    }
    let server = MockServer::start(upstream).await.unwrap();
    let chain = Chain::new([
        Route::new(PRIMARY).label("primary"),
        Route::new(SECONDARY).label("secondary"),
    ]);
    let svc = FallbackLayer::new(chain).layer(http_client());
    let resp = svc
        .oneshot(post(&server.chat_url(), chat("caller/model")))
        .await
        .unwrap();
    let (parts, body) = body_json(resp).await;
    let report = report(&parts).clone();
    let up = server.upstream();
    match expect {
        Expect::Fallback(outcome) => {
            assert_eq!(parts.status, StatusCode::OK, "{row}: {body}");
            assert_eq!(report.served_model(), SECONDARY, "{row}");
            assert_eq!(report.attempts().len(), 2, "{row}");
            assert_eq!(report.attempts()[0].outcome(), outcome, "{row}: {report}");
            assert_eq!(report.attempts()[1].outcome(), Outcome::Served, "{row}");
            assert!(report.fell_back(), "{row}");
            assert_eq!(parts.headers["x-fallback-model"], SECONDARY, "{row}");
            assert_eq!(parts.headers["x-fallback-attempts"], "2", "{row}");
            assert_eq!(parts.headers["x-fallback-label"], "secondary", "{row}");
            assert_eq!(body["model"], SECONDARY, "{row}");
            assert_eq!(up.request_count(PRIMARY), 1, "{row}");
            assert_eq!(up.request_count(SECONDARY), 1, "{row}");
        }
        Expect::Stop(status) => {
            assert_eq!(parts.status, status, "{row}: {body}");
            assert_eq!(report.resolution(), Resolution::Stopped, "{row}");
            assert_eq!(report.attempts().len(), 1, "{row}");
            assert_eq!(report.attempts()[0].outcome(), Outcome::Stopped, "{row}");
            assert_eq!(report.served_model(), PRIMARY, "{row}");
            // The upstream's own error body, unchanged.
            assert_eq!(body["error"]["code"], status.as_u16(), "{row}: {body}");
            assert_eq!(
                up.request_count(SECONDARY),
                0,
                "{row}: falling back would hide the problem"
            );
        }
        Expect::Served => {
            assert_eq!(parts.status, StatusCode::OK, "{row}");
            assert_eq!(report.resolution(), Resolution::Served);
            assert_eq!(report.served_model(), PRIMARY);
            assert_eq!(report.attempts().len(), 1);
            assert!(!report.fell_back());
            assert_eq!(up.request_count(SECONDARY), 0);
        }
    }
}

#[tokio::test]
async fn a_healthy_primary_serves() {
    check("200 completion", Some(Reply::ok()), Expect::Served).await;
}

#[tokio::test]
async fn transport_errors_fall_back() {
    check(
        "connection dropped",
        Some(Reply::transport_error()),
        Expect::Fallback(Outcome::Transport),
    )
    .await;
}

#[tokio::test]
async fn retryable_statuses_fall_back() {
    for status in [408, 429, 500, 502, 503, 504, 524, 529, 520] {
        check(
            &format!("HTTP {status}"),
            Some(Reply::status(status)),
            Expect::Fallback(Outcome::HttpError),
        )
        .await;
    }
}

#[tokio::test]
async fn errors_that_name_the_model_fall_back() {
    check(
        "400 unknown model (unscripted in the mock)",
        None,
        Expect::Fallback(Outcome::HttpError),
    )
    .await;
    check(
        "400 context_length_exceeded",
        Some(Reply::error(
            400,
            "context_length_exceeded",
            "This endpoint's maximum context length is 8192 tokens. However, you requested about 9000 tokens.",
        )),
        Expect::Fallback(Outcome::HttpError),
    )
    .await;
    check(
        "400 context length in the message only",
        Some(Reply::raw(
            400,
            "application/json",
            r#"{"error":{"message":"This model's maximum context length is 4096 tokens","type":"invalid_request_error","code":null}}"#,
        )),
        Expect::Fallback(Outcome::HttpError),
    )
    .await;
    check(
        "404 no endpoints",
        Some(Reply::status(404)),
        Expect::Fallback(Outcome::HttpError),
    )
    .await;
    check(
        "403 moderation",
        Some(Reply::status(403)),
        Expect::Fallback(Outcome::HttpError),
    )
    .await;
}

#[tokio::test]
async fn errors_inside_http_200_fall_back() {
    check(
        "200 with an error object",
        Some(Reply::ok_with_error()),
        Expect::Fallback(Outcome::ErrorInBody),
    )
    .await;
    check(
        "200 without choices",
        Some(Reply::no_choices()),
        Expect::Fallback(Outcome::ErrorInBody),
    )
    .await;
    check(
        "200 with finish_reason error",
        Some(Reply::finish_reason_error()),
        Expect::Fallback(Outcome::ErrorInBody),
    )
    .await;
    check(
        "200 that is not JSON",
        Some(Reply::raw(200, "text/html", "<html>maintenance</html>")),
        Expect::Fallback(Outcome::ErrorInBody),
    )
    .await;
}

#[tokio::test]
async fn caller_and_account_errors_stop() {
    check(
        "401 bad key",
        Some(Reply::status(401)),
        Expect::Stop(StatusCode::UNAUTHORIZED),
    )
    .await;
    check(
        "402 no credits",
        Some(Reply::status(402)),
        Expect::Stop(StatusCode::PAYMENT_REQUIRED),
    )
    .await;
    check(
        "400 caller's bad parameter",
        Some(Reply::error(
            400,
            "invalid_request",
            "temperature: must be between 0 and 2",
        )),
        Expect::Stop(StatusCode::BAD_REQUEST),
    )
    .await;
    check(
        "403 that is not moderation",
        Some(Reply::error(403, "forbidden", "This key is disabled")),
        Expect::Stop(StatusCode::FORBIDDEN),
    )
    .await;
    check(
        "422 unprocessable",
        Some(Reply::error(422, "invalid_request", "messages: expected an array")),
        Expect::Stop(StatusCode::UNPROCESSABLE_ENTITY),
    )
    .await;
}

#[tokio::test]
async fn the_report_keeps_the_upstream_reason() {
    let upstream = MockUpstream::new()
        .model(
            PRIMARY,
            Reply::error(502, "provider_unavailable", "Provider returned error")
                .provider("Anthropic")
                .raw_message("overloaded_error: Overloaded"),
        )
        .model(SECONDARY, Reply::ok().provider("OpenAI"));
    let server = MockServer::start(upstream).await.unwrap();
    let svc = FallbackLayer::new(Chain::new([Route::new(PRIMARY), Route::new(SECONDARY)])).layer(http_client());
    let resp = svc.oneshot(post(&server.chat_url(), chat("x/y"))).await.unwrap();
    let (parts, _) = body_bytes(resp).await;
    let report = report(&parts);
    let first = &report.attempts()[0];
    assert_eq!(first.status(), Some(StatusCode::BAD_GATEWAY));
    assert_eq!(first.error_type(), Some("provider_unavailable"));
    let e = first.upstream_error().unwrap();
    assert_eq!(e.message(), Some("Provider returned error"));
    assert_eq!(e.provider_name(), Some("Anthropic"));
    assert_eq!(e.raw(), Some("overloaded_error: Overloaded"));
    assert_eq!(report.provider(), Some("OpenAI"));
    assert_eq!(report.requested_model(), Some("x/y"));
}
