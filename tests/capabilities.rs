//! Capability-aware chains: routes that cannot serve a request are skipped
//! before sending, with the reason in the report.

mod common;

use common::*;
use http::StatusCode;
use llm_fallback::{Capabilities, Chain, FallbackLayer, Outcome, Price, PriceGuard, Route, SkipReason};
use llm_fallback_mock::{MockServer, MockUpstream, Reply};
use serde_json::{json, Value};
use tower::{Layer, ServiceExt};

async fn send(upstream: MockUpstream, chain: Chain, body: Value) -> (http::response::Parts, Value, MockServer) {
    send_with(upstream, chain, body, None).await
}

async fn send_with(
    upstream: MockUpstream,
    chain: Chain,
    body: Value,
    guard: Option<PriceGuard>,
) -> (http::response::Parts, Value, MockServer) {
    let server = MockServer::start(upstream).await.unwrap();
    let mut req = post(&server.chat_url(), body.to_string());
    if let Some(g) = guard {
        req.extensions_mut().insert(g);
    }
    let resp = FallbackLayer::new(chain)
        .layer(http_client())
        .oneshot(req)
        .await
        .unwrap();
    let (parts, json) = body_json(resp).await;
    (parts, json, server)
}

fn image_request() -> Value {
    json!({"model": "x", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", "iVBOR".repeat(2000))}}
    ]}]})
}

#[tokio::test]
async fn a_vision_request_skips_text_only_routes() {
    let upstream = MockUpstream::new()
        .model("text/only", Reply::ok())
        .model("sees/images", Reply::ok());
    let chain = Chain::new([
        Route::new("text/only").capabilities(Capabilities::TOOLS),
        Route::new("sees/images").capabilities(Capabilities::TOOLS | Capabilities::VISION),
    ]);
    let (parts, body, server) = send(upstream, chain, image_request()).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(body["model"], "sees/images");
    assert_eq!(server.upstream().request_count("text/only"), 0, "never sent");
    let report = report(&parts);
    assert_eq!(report.attempts()[0].outcome(), Outcome::Skipped);
    assert_eq!(
        report.attempts()[0].skip_reason(),
        Some(&SkipReason::Capability {
            missing: Capabilities::VISION
        })
    );
    assert_eq!(parts.headers["x-fallback-attempts"], "1", "skips are not attempts sent");
}

#[tokio::test]
async fn tools_and_structured_output_are_needs_too() {
    let upstream = MockUpstream::new()
        .model("plain/m", Reply::ok())
        .model("tools/m", Reply::ok());
    let chain = Chain::new([
        Route::new("plain/m").capabilities(Capabilities::NONE),
        Route::new("tools/m").capabilities(Capabilities::TOOLS | Capabilities::STRUCTURED_OUTPUT),
    ]);
    let body = json!({"model": "x", "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {}}}});
    let (parts, _, _) = send(upstream, chain, body).await;
    let skipped = &report(&parts).attempts()[0];
    assert_eq!(
        skipped.skip_reason(),
        Some(&SkipReason::Capability {
            missing: Capabilities::TOOLS | Capabilities::STRUCTURED_OUTPUT
        })
    );
    assert_eq!(report(&parts).served_model(), "tools/m");
}

#[tokio::test]
async fn a_long_prompt_skips_small_windows() {
    let upstream = MockUpstream::new()
        .model("small/8k", Reply::ok())
        .model("big/128k", Reply::ok());
    let chain = Chain::new([
        Route::new("small/8k").context_window(8_192),
        Route::new("big/128k").context_window(128_000),
    ]);
    let long = "All work and no play makes Jack a dull boy. ".repeat(1_000); // 44 KB ≈ 11k real tokens
    let body = json!({"model": "x", "messages": [{"role": "user", "content": long}], "max_tokens": 1000});
    let (parts, _, server) = send(upstream, chain, body).await;
    assert_eq!(report(&parts).served_model(), "big/128k");
    match report(&parts).attempts()[0].skip_reason() {
        Some(SkipReason::ContextWindow { needed, window: 8_192 }) => assert!(*needed > 8_192),
        other => panic!("{other:?}"),
    }
    assert_eq!(server.upstream().request_count("small/8k"), 0);
}

#[tokio::test]
async fn a_context_length_failure_jumps_to_a_larger_window() {
    let upstream = MockUpstream::new()
        .model(
            "a/32k",
            Reply::error(
                400,
                "context_length_exceeded",
                "This endpoint's maximum context length is 32768 tokens.",
            ),
        )
        .model("b/16k", Reply::ok())
        .model("c/32k", Reply::ok())
        .model("d/200k", Reply::ok());
    let chain = Chain::new([
        Route::new("a/32k").context_window(32_768),
        Route::new("b/16k").context_window(16_384),
        Route::new("c/32k").context_window(32_768),
        Route::new("d/200k").context_window(200_000),
    ]);
    let (parts, _, server) = send(upstream, chain, json!({"model": "x", "messages": []})).await;
    let report = report(&parts);
    assert_eq!(report.served_model(), "d/200k");
    let outcomes: Vec<_> = report
        .attempts()
        .iter()
        .map(|a| (a.model().to_owned(), a.outcome()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("a/32k".to_owned(), Outcome::HttpError),
            ("b/16k".to_owned(), Outcome::Skipped),
            ("c/32k".to_owned(), Outcome::Skipped),
            ("d/200k".to_owned(), Outcome::Served),
        ]
    );
    assert_eq!(
        report.attempts()[1].skip_reason(),
        Some(&SkipReason::NotLargerWindow { failed_window: 32_768 })
    );
    assert_eq!(
        server.upstream().request_count("b/16k") + server.upstream().request_count("c/32k"),
        0
    );
}

#[tokio::test]
async fn the_price_guard_never_bills_a_pricier_model() {
    let upstream = MockUpstream::new()
        .model("cheap/m", Reply::status(503))
        .model("pricey/m", Reply::ok())
        .model("unknown/m", Reply::ok())
        .model("cheaper/m", Reply::ok());
    let chain = Chain::new([
        Route::new("cheap/m").price(Price::per_million(0.5, 1.5)),
        Route::new("pricey/m").price(Price::per_million(3.0, 15.0)),
        Route::new("unknown/m"),
        Route::new("cheaper/m").price(Price::per_million(0.1, 0.4)),
    ])
    .price_guard(PriceGuard::NotAbovePrimary);
    let (parts, _, server) = send(upstream, chain, json!({"model": "x", "messages": []})).await;
    let report = report(&parts);
    assert_eq!(report.served_model(), "cheaper/m");
    assert_eq!(
        report.attempts()[1].skip_reason(),
        Some(&SkipReason::PriceCap {
            price: Some(Price::per_million(3.0, 15.0))
        })
    );
    assert_eq!(
        report.attempts()[2].skip_reason(),
        Some(&SkipReason::PriceCap { price: None })
    );
    assert_eq!(server.upstream().request_count("pricey/m"), 0);
    assert_eq!(server.upstream().request_count("unknown/m"), 0);
}

#[tokio::test]
async fn a_free_primary_falls_back_to_free_models_only() {
    let upstream = MockUpstream::new()
        .model("meta-llama/llama-3.1-8b-instruct:free", Reply::status(429))
        .model("openai/gpt-4o", Reply::ok())
        .model("mistralai/mistral-7b-instruct:free", Reply::ok());
    let chain = Chain::new([
        Route::new("meta-llama/llama-3.1-8b-instruct:free"),
        Route::new("openai/gpt-4o").price(Price::per_million(2.5, 10.0)),
        Route::new("mistralai/mistral-7b-instruct:free"),
    ]);
    // Per request, through the extensions.
    let (parts, _, server) = send_with(
        upstream,
        chain,
        json!({"model": "x", "messages": []}),
        Some(PriceGuard::NotAbovePrimary),
    )
    .await;
    assert_eq!(report(&parts).served_model(), "mistralai/mistral-7b-instruct:free");
    assert_eq!(server.upstream().request_count("openai/gpt-4o"), 0);
}

#[tokio::test]
async fn no_fitting_route_is_a_clear_400() {
    let upstream = MockUpstream::new().model("text/only", Reply::ok());
    let chain = Chain::new([Route::new("text/only").capabilities(Capabilities::TOOLS)]);
    let (parts, body, server) = send(upstream, chain, image_request()).await;
    assert_eq!(parts.status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "no_route_fits");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("text/only: skipped (cannot do vision)"), "{message}");
    assert!(server.upstream().requests().is_empty());
}
