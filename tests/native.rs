//! OpenRouter native routing through the layer: provider preferences, native
//! model groups, server-side fallback in the report.

mod common;

use common::*;
use llm_fallback::native::{ProviderPrefs, ProviderSort, SortBy, MAX_NATIVE_FALLBACKS};
use llm_fallback::{Chain, FallbackLayer, FallbackReport, Outcome, Route, StreamReport};
use llm_fallback_mock::{MockServer, MockUpstream, Reply};
use serde_json::{json, Value};
use tower::{Layer, ServiceExt};

fn prefs(order: &[&str], allow_fallbacks: bool) -> ProviderPrefs {
    let mut prefs = ProviderPrefs::default();
    prefs.order = Some(order.iter().map(|s| s.to_string()).collect());
    prefs.allow_fallbacks = Some(allow_fallbacks);
    prefs
}

async fn send(upstream: MockUpstream, chain: Chain, body: Value) -> (http::response::Parts, Value, MockServer) {
    let server = MockServer::start(upstream).await.unwrap();
    let resp = FallbackLayer::new(chain)
        .layer(http_client())
        .oneshot(post(&server.chat_url(), body.to_string()))
        .await
        .unwrap();
    let (parts, json) = body_json(resp).await;
    (parts, json, server)
}

fn without(mut v: Value, key: &str) -> Value {
    v.as_object_mut().unwrap().remove(key);
    v
}

#[tokio::test]
async fn route_provider_is_inserted_when_the_caller_has_none() {
    let body = json!({"model": "x", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.1});
    let upstream = MockUpstream::new().model("a/a", Reply::ok());
    let mut sorted = prefs(&["OpenAI"], true);
    sorted.sort = Some(ProviderSort::By(SortBy::Price));
    let route = Route::new("a/a").provider(sorted);
    let (parts, _, server) = send(upstream, Chain::new([route]), body.clone()).await;
    assert_eq!(parts.status, 200);
    let sent = server.upstream().requests()[0].json();
    assert_eq!(
        sent["provider"],
        json!({"order": ["OpenAI"], "allow_fallbacks": true, "sort": "price"})
    );
    let mut expected = body;
    expected["model"] = json!("a/a");
    assert_eq!(without(sent, "provider"), expected, "nothing else changes");
}

#[tokio::test]
async fn the_callers_provider_is_kept_unless_the_route_sets_one() {
    let body = json!({"provider": {"order": ["Caller"], "zdr": true}, "model": "x", "messages": []});
    let upstream = MockUpstream::new()
        .model("a/a", Reply::status(503))
        .model("b/b", Reply::ok());
    let chain = Chain::new([Route::new("a/a").provider(prefs(&["Azure"], false)), Route::new("b/b")]);
    let (_, _, server) = send(upstream, chain, body.clone()).await;
    let reqs = server.upstream().requests();
    assert_eq!(
        reqs[0].json()["provider"],
        json!({"order": ["Azure"], "allow_fallbacks": false})
    );
    // The second route sets none: the caller's object goes as the caller wrote it.
    let raw = String::from_utf8(reqs[1].body.to_vec()).unwrap();
    let original = body.to_string();
    assert_eq!(
        raw,
        original.replace(r#""model":"x""#, r#""model":"b/b""#),
        "byte for byte but the model"
    );
    assert!(raw.contains(r#""provider":{"order":["Caller"],"zdr":true}"#), "{raw}");
}

#[tokio::test]
async fn the_same_model_through_two_providers_is_two_routes() {
    let upstream = MockUpstream::new()
        .provider("openai/gpt-4o", "Azure", Reply::status(503))
        .provider("openai/gpt-4o", "OpenAI", Reply::ok());
    let chain = Chain::new([
        Route::new("openai/gpt-4o")
            .label("azure")
            .provider(prefs(&["Azure"], false)),
        Route::new("openai/gpt-4o")
            .label("openai")
            .provider(prefs(&["OpenAI"], false)),
    ]);
    let (parts, body, server) = send(upstream, chain, json!({"model": "x", "messages": []})).await;
    let report = report(&parts);
    assert_eq!(report.served_label(), Some("openai"));
    assert_eq!(report.provider(), Some("OpenAI"));
    assert_eq!(body["provider"], "OpenAI");
    assert_eq!(report.attempts()[0].outcome(), Outcome::HttpError);
    assert_eq!(server.upstream().tries_for_provider("openai/gpt-4o", "Azure"), 1);
}

#[tokio::test]
async fn a_native_group_falls_back_server_side_in_one_request() {
    let upstream = MockUpstream::new()
        .model("a/a", Reply::status(503))
        .model("b/b", Reply::ok())
        .model("c/c", Reply::ok());
    let chain = Chain::new([Route::new("a/a").native_fallbacks(["b/b", "c/c"]), Route::new("z/z")]);
    let (parts, body, server) = send(upstream, chain, json!({"model": "x", "messages": []})).await;
    let up = server.upstream();
    assert_eq!(up.requests().len(), 1, "one HTTP request for the whole group");
    assert_eq!(up.requests()[0].json()["models"], json!(["b/b", "c/c"]));
    assert_eq!(body["model"], "b/b");
    assert_eq!(
        parts.headers["x-fallback-model"], "b/b",
        "the model that served, not the route's"
    );
    let report = report(&parts);
    assert_eq!(report.served_model(), "b/b");
    assert!(report.upstream_fell_back(), "requested a/a, served b/b");
    assert!(!report.fell_back(), "no client-side hop");
    assert_eq!(report.attempts()[0].served_model(), Some("b/b"));
}

#[tokio::test]
async fn a_group_past_the_cap_becomes_consecutive_attempts() {
    let upstream = MockUpstream::new()
        .model("a/a", Reply::status(503))
        .model("b/b", Reply::status(503))
        .model("c/c", Reply::status(503))
        .model("d/d", Reply::status(503))
        .model("e/e", Reply::ok());
    let chain = Chain::new([Route::new("a/a").native_fallbacks(["b/b", "c/c", "d/d", "e/e"])]);
    let (parts, body, server) = send(upstream, chain, json!({"model": "x", "messages": []})).await;
    let reqs = server.upstream().requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[0].json()["models"],
        json!(["b/b", "c/c", "d/d"]),
        "never more than OpenRouter's 3"
    );
    assert_eq!(reqs[1].json()["model"], "e/e");
    assert!(reqs[1].json().get("models").is_none());
    assert_eq!(body["model"], "e/e");
    assert_eq!(report(&parts).attempts().len(), 2);
}

/// The mock (its own crate, with its own copy of the `provider` object's
/// shape and of OpenRouter's `models` cap) accepts everything the layer
/// sends: every `ProviderPrefs` field set and a full native group. The
/// fields come from JSON that must read back whole, and hold as many keys as
/// the crate's own `ProviderPrefs` literal (`native::tests`, which fails to
/// compile when a field is added), so a new field fails here until the mock
/// learns it. One more model than the cap is the mock's 400, as it is
/// OpenRouter's.
#[tokio::test]
async fn the_mock_accepts_every_provider_field_and_a_full_group() {
    let all = json!({
        "order": ["OpenAI"],
        "allow_fallbacks": true,
        "require_parameters": false,
        "data_collection": "deny",
        "zdr": false,
        "only": ["OpenAI", "Azure"],
        "ignore": ["Together"],
        "quantizations": ["fp8"],
        "sort": {"by": "throughput", "partition": "none"},
        "max_price": {"prompt": 1.0, "completion": 2.0, "request": 0.1, "image": 0.2, "audio": 0.3},
        "preferred_min_throughput": 10.0,
        "preferred_max_latency": 2.0,
    });
    let every_field: ProviderPrefs = serde_json::from_value(all.clone()).unwrap();
    assert_eq!(serde_json::to_value(&every_field).unwrap(), all, "every key is a field");
    assert_eq!(
        all.as_object().unwrap().len(),
        llm_fallback::native::PROVIDER_PREFS_FIELDS
    );
    let group: Vec<String> = (0..MAX_NATIVE_FALLBACKS).map(|i| format!("m/{i}")).collect();
    let mut upstream = MockUpstream::new().model("a/a", Reply::status(503));
    for (i, model) in group.iter().enumerate() {
        let last = i + 1 == group.len();
        upstream = upstream.model(model.as_str(), if last { Reply::ok() } else { Reply::status(503) });
    }
    let route = Route::new("a/a")
        .provider(every_field.clone())
        .native_fallbacks(group.clone());
    let (parts, body, server) = send(
        upstream.clone(),
        Chain::new([route]),
        json!({"model": "x", "messages": []}),
    )
    .await;
    assert_eq!(parts.status, 200, "{body}");
    assert_eq!(body["model"], group[group.len() - 1].as_str());
    let reqs = server.upstream().requests();
    assert_eq!(reqs.len(), 1, "one request, the whole group server-side");
    assert_eq!(reqs[0].json()["provider"], serde_json::to_value(&every_field).unwrap());
    assert_eq!(reqs[0].json()["models"], json!(group));

    let past_cap: Vec<String> = (0..=MAX_NATIVE_FALLBACKS).map(|i| format!("m/{i}")).collect();
    let refused = upstream
        .oneshot(post(
            "http://openrouter.test/api/v1/chat/completions",
            json!({"model": "a/a", "models": past_cap, "messages": []}).to_string(),
        ))
        .await
        .unwrap();
    let (parts, body) = body_json(refused).await;
    assert_eq!(parts.status, 400);
    assert_eq!(
        body["error"]["message"],
        format!("'models' array must have {MAX_NATIVE_FALLBACKS} items or fewer")
    );
}

#[tokio::test]
async fn a_caller_models_list_is_replaced_by_the_routes_group() {
    let upstream = MockUpstream::new().model("a/a", Reply::ok());
    let chain = Chain::new([Route::new("a/a").native_fallbacks(["b/b"])]);
    let (_, _, server) = send(
        upstream,
        chain,
        json!({"model": "x", "models": ["q/q", "r/r"], "messages": []}),
    )
    .await;
    assert_eq!(server.upstream().requests()[0].json()["models"], json!(["b/b"]));
}

#[tokio::test]
async fn server_side_fallback_is_seen_in_a_stream() {
    let upstream = MockUpstream::new()
        .model("a/a", Reply::status(429))
        .model("b/b", Reply::stream());
    let chain = Chain::new([Route::new("a/a").native_fallbacks(["b/b"])]);
    let server = MockServer::start(upstream).await.unwrap();
    let body = json!({"model": "x", "stream": true, "messages": []}).to_string();
    let resp = FallbackLayer::new(chain)
        .layer(http_client())
        .oneshot(post(&server.chat_url(), body))
        .await
        .unwrap();
    let report = resp.extensions().get::<FallbackReport>().unwrap().clone();
    let handle = resp.extensions().get::<StreamReport>().cloned().unwrap();
    let _ = body_bytes(resp).await;
    assert_eq!(report.served_model(), "b/b", "read from the first chunk");
    assert!(report.upstream_fell_back());
    assert!(handle.finished().await.upstream_fell_back());
}

#[tokio::test]
async fn openrouter_metadata_reaches_the_report() {
    let upstream = MockUpstream::new()
        .model("a/a", Reply::status(502))
        .model("b/b", Reply::ok());
    let chain = Chain::new([Route::new("a/a").native_fallbacks(["b/b"]).openrouter_metadata(true)]);
    let (parts, _, server) = send(upstream, chain, json!({"model": "x", "messages": []})).await;
    assert_eq!(
        server.upstream().requests()[0].headers["x-openrouter-metadata"],
        "enabled"
    );
    let upstream_attempts = report(&parts).attempts()[0].upstream_attempts().to_vec();
    assert_eq!(upstream_attempts.len(), 2, "{upstream_attempts:?}");
    assert_eq!(upstream_attempts[0].model.as_deref(), Some("a/a"));
    assert_eq!(upstream_attempts[0].status, Some(502));
    assert_eq!(upstream_attempts[1].model.as_deref(), Some("b/b"));
    assert_eq!(upstream_attempts[1].status, Some(200));
}
