//! Named chains: picked by header, extension or detected needs; a moderation
//! failure can move the request to a designated chain.

mod common;

use common::*;
use http::StatusCode;
use llm_fallback::{Capabilities, Chain, ChainName, ChainSet, FallbackBuilder, Outcome, Route};
use llm_fallback_mock::{MockServer, MockUpstream, Reply};
use serde_json::{json, Value};
use tower::{Layer, ServiceExt};

fn upstream() -> MockUpstream {
    MockUpstream::new()
        .model("default/m", Reply::ok())
        .model("budget/m:free", Reply::ok())
        .model("vision/m", Reply::ok())
        .model("tools/m", Reply::ok())
        .model("long/m", Reply::ok())
        .model("strict/m", Reply::status(403))
        .model("lenient/m", Reply::ok())
}

fn chains() -> ChainSet {
    ChainSet::new(Chain::new([Route::new("default/m").context_window(16_000)]))
        .chain(ChainSet::BUDGET, Chain::new([Route::new("budget/m:free")]))
        .chain(
            ChainSet::VISION,
            Chain::new([Route::new("vision/m").capabilities(Capabilities::VISION)]),
        )
        .chain(ChainSet::TOOL_CALLING, Chain::new([Route::new("tools/m")]))
        .chain(
            ChainSet::LONG_CONTEXT,
            Chain::new([Route::new("long/m").context_window(1_000_000)]),
        )
        .chain(
            "moderated",
            Chain::new([Route::new("strict/m"), Route::new("default/m")]),
        )
        .chain("lenient", Chain::new([Route::new("lenient/m")]))
        .on_content_policy("lenient")
}

async fn send(
    req: http::Request<http_body_util::Full<bytes::Bytes>>,
    server: &MockServer,
) -> (http::response::Parts, Value) {
    let _ = server;
    let resp = FallbackBuilder::with_chains(chains())
        .allow_chain_header(true)
        .layer()
        .layer(http_client())
        .oneshot(req)
        .await
        .unwrap();
    body_json(resp).await
}

fn chat_body() -> String {
    json!({"model": "x", "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

#[tokio::test]
async fn a_header_picks_a_chain_and_is_not_forwarded() {
    let server = MockServer::start(upstream()).await.unwrap();
    let mut req = post(&server.chat_url(), chat_body());
    req.headers_mut().insert("x-fallback-chain", "budget".parse().unwrap());
    let (parts, body) = send(req, &server).await;
    assert_eq!(body["model"], "budget/m:free");
    assert_eq!(report(&parts).chain(), Some("budget"));
    assert!(server.upstream().requests()[0]
        .headers
        .get("x-fallback-chain")
        .is_none());
}

#[tokio::test]
async fn an_extension_picks_a_chain() {
    let server = MockServer::start(upstream()).await.unwrap();
    let mut req = post(&server.chat_url(), chat_body());
    req.extensions_mut().insert(ChainName("budget".into()));
    let (_, body) = send(req, &server).await;
    assert_eq!(body["model"], "budget/m:free");
}

#[tokio::test]
async fn an_unknown_chain_is_a_clear_400() {
    let server = MockServer::start(upstream()).await.unwrap();
    let mut req = post(&server.chat_url(), chat_body());
    req.headers_mut().insert("x-fallback-chain", "premium".parse().unwrap());
    let (parts, body) = send(req, &server).await;
    assert_eq!(parts.status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "unknown_chain");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"premium\"") && message.contains("budget") && message.contains("default"),
        "{message}"
    );
    assert!(server.upstream().requests().is_empty());
}

#[tokio::test]
async fn needs_pick_vision_tools_and_long_context_chains() {
    let server = MockServer::start(upstream()).await.unwrap();
    let cases = [
        (
            json!({"model": "x", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/cat.png"}}]}]}),
            "vision/m",
            "vision",
        ),
        (
            json!({"model": "x", "messages": [], "tools": [{"type": "function", "function": {"name": "f"}}]}),
            "tools/m",
            "tool_calling",
        ),
        (
            json!({"model": "x", "messages": [{"role": "user", "content": "y".repeat(60_000)}]}),
            "long/m",
            "long_context",
        ),
        (json!({"model": "x", "messages": []}), "default/m", "default"),
    ];
    for (body, model, chain) in cases {
        let (parts, answer) = send(post(&server.chat_url(), body.to_string()), &server).await;
        assert_eq!(answer["model"], model, "{chain}");
        assert_eq!(report(&parts).chain(), Some(chain));
    }
}

#[tokio::test]
async fn a_moderation_block_moves_to_the_content_policy_chain() {
    let server = MockServer::start(upstream()).await.unwrap();
    let mut req = post(&server.chat_url(), chat_body());
    req.extensions_mut().insert(ChainName("moderated".into()));
    let (parts, body) = send(req, &server).await;
    assert_eq!(body["model"], "lenient/m");
    let report = report(&parts);
    assert_eq!(report.chain(), Some("lenient"));
    assert_eq!(report.attempts()[0].outcome(), Outcome::HttpError);
    assert_eq!(report.attempts()[0].model(), "strict/m");
    assert_eq!(
        server.upstream().request_count("default/m"),
        0,
        "the rest of the moderated chain is not tried"
    );
}

#[tokio::test]
async fn each_attempt_is_told_its_chain() {
    // Inner layers (retry, tracing) read the `Attempt` extension: after a
    // moderation block it names the content-policy chain, not the first.
    let up = upstream();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let inner = tower::service_fn(move |req: http::Request<llm_fallback::ReplayBody>| {
        let a = req.extensions().get::<llm_fallback::Attempt>().cloned();
        record
            .lock()
            .unwrap()
            .push(a.map(|a| (a.chain().to_owned(), a.index(), a.model().to_owned())));
        up.clone().oneshot(req)
    });
    let mut req = post("http://mock/api/v1/chat/completions", chat_body());
    req.extensions_mut().insert(ChainName("moderated".into()));
    let resp = FallbackBuilder::with_chains(chains())
        .layer()
        .layer(inner)
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = seen.lock().unwrap();
    assert_eq!(
        *seen,
        [
            Some(("moderated".to_owned(), 0, "strict/m".to_owned())),
            Some(("lenient".to_owned(), 0, "lenient/m".to_owned())),
        ]
    );
}
