//! A route on another endpoint: URI, host and key change for its attempts,
//! the body stays the caller's, and the key never shows up anywhere.
//! (One test in its own binary: it sets an environment variable.)

mod common;

use common::*;
use llm_fallback::native::Endpoint;
use llm_fallback::{Chain, FallbackLayer, Route};
use llm_fallback_mock::{MockServer, MockUpstream, Reply};
use serde_json::json;
use tower::{Layer, ServiceExt};

const KEY_VAR: &str = "LLM_FALLBACK_TEST_DIRECT_KEY";
const KEY: &str = "sk-direct-7f3a9c";

#[tokio::test]
async fn an_endpoint_switch_rewrites_uri_host_and_key_only() {
    std::env::set_var(KEY_VAR, KEY);
    let (out, _guard) = Captured::install(tracing::Level::TRACE);

    let openrouter = MockServer::start(
        MockUpstream::new()
            .model("anthropic/claude-3.5-sonnet", Reply::status(503))
            .model("openai/gpt-4o", Reply::status(502)),
    )
    .await
    .unwrap();
    let direct = MockServer::start(MockUpstream::new().model("gpt-4o", Reply::ok()))
        .await
        .unwrap();

    let endpoint = Endpoint::new(format!("{}/v1", direct.url()))
        .unwrap()
        .api_key_env(KEY_VAR)
        .unwrap();
    let chain = Chain::new([
        Route::new("anthropic/claude-3.5-sonnet").label("openrouter"),
        Route::new("openai/gpt-4o").label("openrouter-2"),
        Route::new("gpt-4o").label("direct").endpoint(endpoint.clone()),
    ]);
    let body = json!({
        "model": "anthropic/claude-3.5-sonnet",
        "messages": [{"role": "user", "content": "hi"}],
        "provider": {"order": ["Anthropic"]},
        "route": "fallback",
        "temperature": 0.5
    });
    let resp = FallbackLayer::new(chain)
        .layer(http_client())
        .oneshot(post(&openrouter.chat_url(), body.to_string()))
        .await
        .unwrap();
    let (parts, answer) = body_json(resp).await;
    assert_eq!(parts.status, 200);
    assert_eq!(answer["model"], "gpt-4o");
    let report = report(&parts).clone();
    assert_eq!(report.served_label(), Some("direct"));

    // OpenRouter saw the caller's key; the direct provider only its own.
    let or_reqs = openrouter.upstream().requests();
    assert_eq!(or_reqs.len(), 2);
    assert_eq!(or_reqs[0].headers["authorization"], "Bearer sk-test-secret");
    let sent = &direct.upstream().requests()[0];
    assert_eq!(sent.uri.path(), "/v1/chat/completions");
    assert_eq!(sent.headers["authorization"], format!("Bearer {KEY}").as_str());
    assert_eq!(sent.headers["host"], direct.addr().to_string().as_str());
    // OpenRouter-only keys are gone for a plain OpenAI-compatible API; the rest is the caller's.
    assert_eq!(
        sent.json(),
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5})
    );
    assert_eq!(sent.headers["content-length"], sent.body.len().to_string().as_str());

    // The key is nowhere: not in the report, not in spans or logs, not in Debug output.
    drop(_guard);
    let logs = out.text();
    for text in [
        format!("{report:?}"),
        report.to_string(),
        logs,
        format!("{endpoint:?}"),
        format!("{:?}", parts.headers),
    ] {
        assert!(!text.contains(KEY), "the key leaked: {text}");
    }

    // Exhaustion names the endpoint's model but never the key.
    let down = MockServer::start(MockUpstream::new().model("gpt-4o", Reply::status(500)))
        .await
        .unwrap();
    let endpoint = Endpoint::new(format!("{}/v1", down.url()))
        .unwrap()
        .api_key_env(KEY_VAR)
        .unwrap();
    let chain = Chain::new([
        Route::new("anthropic/claude-3.5-sonnet"),
        Route::new("gpt-4o").endpoint(endpoint),
    ]);
    let resp = FallbackLayer::new(chain)
        .layer(http_client())
        .oneshot(post(&openrouter.chat_url(), body.to_string()))
        .await
        .unwrap();
    let (parts, answer) = body_json(resp).await;
    assert_eq!(parts.status, 502);
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("gpt-4o: HTTP 500"));
    assert!(!answer.to_string().contains(KEY));
}
