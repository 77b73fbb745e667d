//! Bodies the layer refuses: the right status, a clear OpenAI-style message,
//! and an upstream that never saw a thing.

mod common;

use bytes::Bytes;
use common::*;
use http::StatusCode;
use llm_fallback::{Chain, FallbackBuilder, FallbackLayer, Resolution, Route};
use llm_fallback_mock::{MockUpstream, Reply};
use tower::{Layer, ServiceExt};

fn setup() -> (MockUpstream, impl Fn() -> FallbackBuilder) {
    let upstream = MockUpstream::new().model("a/a", Reply::ok()).model("b/b", Reply::ok());
    (upstream, || {
        FallbackLayer::builder(Chain::new([Route::new("a/a"), Route::new("b/b")]))
    })
}

async fn refused(body: &'static str, status: StatusCode, code: &str, says: &str) {
    let (upstream, settings) = setup();
    let svc = settings().layer().layer(upstream.clone());
    let resp = svc
        .oneshot(post("http://mock/api/v1/chat/completions", body))
        .await
        .unwrap();
    let (parts, json) = body_json(resp).await;
    assert_eq!(parts.status, status, "{body}");
    assert_eq!(parts.headers["content-type"], "application/json");
    assert_eq!(json["error"]["type"], "invalid_request_error", "{json}");
    assert_eq!(json["error"]["code"], code, "{body}: {json}");
    let message = json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(says),
        "{body}: message {message:?} should say {says:?}"
    );
    assert_eq!(report(&parts).resolution(), Resolution::Rejected);
    assert!(report(&parts).attempts().is_empty());
    assert!(
        upstream.requests().is_empty(),
        "{body}: the upstream must not be called"
    );
}

#[tokio::test]
async fn not_an_object() {
    refused(
        r#"["model","a"]"#,
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "not a JSON object",
    )
    .await;
    refused("", StatusCode::BAD_REQUEST, "invalid_json", "not a JSON object").await;
    refused(
        "model=a",
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "not a valid JSON object",
    )
    .await;
}

#[tokio::test]
async fn no_model() {
    refused(
        r#"{"messages":[{"role":"user","content":"model"}]}"#,
        StatusCode::BAD_REQUEST,
        "missing_model",
        "no top-level \"model\"",
    )
    .await;
}

#[tokio::test]
async fn model_not_a_string() {
    refused(
        r#"{"model":42,"messages":[]}"#,
        StatusCode::BAD_REQUEST,
        "invalid_model",
        "must be a string, found a number",
    )
    .await;
    refused(
        r#"{"model":["a"],"messages":[]}"#,
        StatusCode::BAD_REQUEST,
        "invalid_model",
        "found an array",
    )
    .await;
}

#[tokio::test]
async fn duplicate_model() {
    refused(
        r#"{"model":"a/a","messages":[],"model":"b/b"}"#,
        StatusCode::BAD_REQUEST,
        "duplicate_key",
        "more than one top-level \"model\"",
    )
    .await;
    // The same key spelled with an escape is still the same key.
    refused(
        r#"{"model":"a/a","mod\u0065l":"b/b"}"#,
        StatusCode::BAD_REQUEST,
        "duplicate_key",
        "\"model\"",
    )
    .await;
}

#[tokio::test]
async fn malformed_around_the_keys() {
    refused(
        r#"{"model":"a/a" "messages":[]}"#,
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "byte",
    )
    .await;
    refused(
        r#"{"model":"a/a","messages":[}"#,
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "byte",
    )
    .await;
    refused(r#"{"model":"a/a",}"#, StatusCode::BAD_REQUEST, "invalid_json", "byte").await;
    refused(
        r#"{"model":"a/a","stream":tru}"#,
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "byte",
    )
    .await;
    refused(
        r#"{"model":"a/a"}{"model":"b"}"#,
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "trailing",
    )
    .await;
    refused(
        r#"{"model":"a\x/a"}"#,
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "escape",
    )
    .await;
    refused(
        r#"{"model":"a/a","messages":[{"content":"unterminated}]}"#,
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "byte",
    )
    .await;
}

#[tokio::test]
async fn declared_length_over_the_limit_is_refused_before_reading() {
    let (upstream, settings) = setup();
    let svc = settings().max_body_bytes(1024).layer().layer(upstream.clone());
    // The header promises more than the limit; the body itself is never read.
    let req = http::Request::post("http://mock/api/v1/chat/completions")
        .header("content-length", "4096")
        .body(Chunked::new([Bytes::from_static(b"{\"model\":\"a/a\"")]))
        .unwrap();
    let resp = svc.oneshot(req).await.unwrap();
    let (parts, json) = body_json(resp).await;
    assert_eq!(parts.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json["error"]["code"], "request_too_large");
    assert!(json["error"]["message"].as_str().unwrap().contains("1024 bytes"));
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_refused_while_reading() {
    let (upstream, settings) = setup();
    let svc = settings().max_body_bytes(1024).layer().layer(upstream.clone());
    let piece = Bytes::from(vec![b' '; 300]);
    let mut parts = vec![Bytes::from_static(b"{\"model\":\"a/a\",\"pad\":\"")];
    parts.extend(std::iter::repeat_n(piece, 10));
    let req = http::Request::post("http://mock/api/v1/chat/completions")
        .body(Chunked::new(parts))
        .unwrap();
    let resp = svc.oneshot(req).await.unwrap();
    let (parts, json) = body_json(resp).await;
    assert_eq!(parts.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json["error"]["code"], "request_too_large");
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn a_body_exactly_at_the_limit_passes() {
    let (upstream, settings) = setup();
    let body = chat("a/a");
    let svc = settings().max_body_bytes(body.len()).layer().layer(upstream.clone());
    let resp = svc
        .oneshot(post("http://mock/api/v1/chat/completions", body))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(upstream.requests().len(), 1);
}
