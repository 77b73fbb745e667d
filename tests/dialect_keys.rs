//! The keys an attempt carries on an endpoint switch, per dialect: Anthropic's
//! own API gets `x-api-key` and `anthropic-version` (the caller's
//! `anthropic-beta` kept), OpenRouter and OpenAI-compatible APIs get
//! `Authorization: Bearer`, and no attempt carries another provider's key.
//! Over loopback HTTP. (Its own binary: it sets environment variables.)

mod common;

use common::*;
use llm_fallback::native::Endpoint;
use llm_fallback::{Chain, FallbackLayer, Route};
use llm_fallback_mock::{MockServer, MockUpstream, Reply};
use serde_json::json;
use tower::{Layer, ServiceExt};

const KEY_VAR: &str = "LLM_FALLBACK_TEST_DIALECT_KEY";
const KEY: &str = "sk-ant-direct-5e1b";
const A: &str = "openrouter/primary";
const B: &str = "claude-sonnet-4";

fn messages_request(url: &str, version: Option<&str>) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let body = json!({"model": A, "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]});
    let mut req = post(url, body.to_string());
    let h = req.headers_mut();
    h.insert("x-api-key", "sk-ant-caller-secret".parse().unwrap());
    h.insert("anthropic-beta", "interleaved-thinking-2025-05-14".parse().unwrap());
    if let Some(v) = version {
        h.insert("anthropic-version", v.parse().unwrap());
    }
    req
}

#[tokio::test]
async fn each_dialect_carries_its_own_keys_on_an_endpoint_switch() {
    std::env::set_var(KEY_VAR, KEY);
    let caller = MockServer::start(MockUpstream::new().model(A, Reply::status(529)))
        .await
        .unwrap();
    let direct = MockServer::start(MockUpstream::new().model(B, Reply::ok()))
        .await
        .unwrap();
    let base = format!("{}/v1", direct.url());
    let anthropic = Endpoint::new(&base)
        .unwrap()
        .anthropic(true)
        .api_key_env(KEY_VAR)
        .unwrap();
    let openrouter_like = Endpoint::new(&base)
        .unwrap()
        .openrouter(true)
        .api_key_env(KEY_VAR)
        .unwrap();

    let send = |endpoint: Endpoint, req| async move {
        let chain = Chain::new([Route::new(A), Route::new(B).endpoint(endpoint)]);
        let resp = FallbackLayer::new(chain)
            .layer(http_client())
            .oneshot(req)
            .await
            .unwrap();
        body_json(resp).await
    };

    // Messages to Anthropic's own API: x-api-key and the caller's version.
    let messages_url = caller.messages_url();
    let (parts, answer) = send(anthropic.clone(), messages_request(&messages_url, Some("2023-06-01"))).await;
    assert_eq!(parts.status, 200, "{answer}");
    assert_eq!(answer["type"], "message");
    let sent = direct.upstream().requests();
    let h = &sent[0].headers;
    assert_eq!(sent[0].uri.path(), "/v1/messages");
    assert_eq!(h["x-api-key"], KEY);
    assert!(h.get("authorization").is_none(), "no Bearer key for Anthropic");
    assert_eq!(h["anthropic-version"], "2023-06-01");
    assert_eq!(h["anthropic-beta"], "interleaved-thinking-2025-05-14");
    // The caller's upstream saw the caller's keys, and only it did.
    let first = &caller.upstream().requests()[0];
    assert_eq!(first.headers["x-api-key"], "sk-ant-caller-secret");
    assert_eq!(first.headers["authorization"], "Bearer sk-test-secret");

    // No version from the caller: Anthropic's current one.
    send(anthropic.clone(), messages_request(&messages_url, None)).await;
    let sent = direct.upstream().requests();
    assert_eq!(sent[1].headers["anthropic-version"], "2023-06-01");
    assert_eq!(sent[1].headers["x-api-key"], KEY);

    // Messages to OpenRouter: Authorization, and no x-api-key at all.
    send(openrouter_like, messages_request(&messages_url, Some("2023-06-01"))).await;
    let sent = direct.upstream().requests();
    assert_eq!(sent[2].headers["authorization"], format!("Bearer {KEY}").as_str());
    assert!(sent[2].headers.get("x-api-key").is_none());
    assert_eq!(sent[2].uri.path(), "/v1/messages");

    // Responses (and chat) to the Anthropic endpoint: Bearer, as OpenAI's SDKs send.
    let body = json!({"model": A, "input": "hi"});
    let mut req = post(&caller.responses_url(), body.to_string());
    req.headers_mut()
        .insert("x-api-key", "sk-ant-caller-secret".parse().unwrap());
    let (parts, answer) = send(anthropic, req).await;
    assert_eq!(parts.status, 200, "{answer}");
    let sent = direct.upstream().requests();
    assert_eq!(sent[3].uri.path(), "/v1/responses");
    assert_eq!(sent[3].headers["authorization"], format!("Bearer {KEY}").as_str());
    assert!(sent[3].headers.get("x-api-key").is_none());

    // The caller's keys never reached the other provider.
    for r in &sent {
        for (_, v) in r.headers.iter() {
            let v = v.to_str().unwrap_or_default();
            assert!(
                !v.contains("sk-test-secret") && !v.contains("sk-ant-caller-secret"),
                "{v}"
            );
        }
    }
    assert!(!format!("{:?}", Endpoint::new(&base).unwrap().api_key_env(KEY_VAR).unwrap()).contains(KEY));
}
