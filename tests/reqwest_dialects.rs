//! The reqwest middleware is the same engine: every dialect falls back,
//! streams and fails in its own shape through it. Over loopback HTTP.

use llm_fallback::{Chain, FallbackMiddleware, FallbackReport, Route, StreamReport};
use llm_fallback_mock::{parse_sse_named, MockServer, MockUpstream, Reply};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use serde_json::{json, Value};

const PRIMARY: &str = "primary/model";
const SECONDARY: &str = "secondary/model";

fn client() -> ClientWithMiddleware {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let chain = Chain::new([Route::new(PRIMARY), Route::new(SECONDARY)]);
    ClientBuilder::new(http).with(FallbackMiddleware::new(chain)).build()
}

async fn post(url: &str, body: Value) -> reqwest::Response {
    client()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("the middleware answers")
}

#[tokio::test]
async fn responses_messages_and_embeddings_fall_back_through_the_middleware() {
    let server = MockServer::start(
        MockUpstream::new()
            .model(PRIMARY, Reply::status(529))
            .model(SECONDARY, Reply::ok().content("pong")),
    )
    .await
    .unwrap();
    let cases = [
        (
            server.responses_url(),
            json!({"model": PRIMARY, "input": "ping"}),
            "object",
            "response",
        ),
        (
            server.messages_url(),
            json!({"model": PRIMARY, "max_tokens": 8, "messages": [{"role": "user", "content": "ping"}]}),
            "type",
            "message",
        ),
        (
            server.embeddings_url(),
            json!({"model": PRIMARY, "input": "ping"}),
            "object",
            "list",
        ),
        (
            server.completions_url(),
            json!({"model": PRIMARY, "prompt": "ping"}),
            "object",
            "text_completion",
        ),
    ];
    for (url, body, key, value) in cases {
        let resp = post(&url, body).await;
        assert_eq!(resp.status(), 200, "{url}");
        let report = resp.extensions().get::<FallbackReport>().cloned().unwrap();
        assert_eq!(report.served_model(), SECONDARY, "{url}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v[key], value, "{url}: {v}");
    }
}

#[tokio::test]
async fn a_messages_exhaustion_and_a_broken_responses_stream_keep_their_shapes() {
    let server = MockServer::start(
        MockUpstream::new()
            .model(PRIMARY, Reply::status(503))
            .model(SECONDARY, Reply::status(529)),
    )
    .await
    .unwrap();
    let resp = post(
        &server.messages_url(),
        json!({"model": PRIMARY, "max_tokens": 8, "messages": []}),
    )
    .await;
    assert_eq!(resp.status(), 502);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["metadata"]["attempts"].as_array().map(Vec::len), Some(2));

    server
        .upstream()
        .set_script(PRIMARY, Reply::stream().tokens(["a", "b", "c"]).cut_after(2));
    let resp = post(
        &server.responses_url(),
        json!({"model": PRIMARY, "input": "ping", "stream": true}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let handle = resp.extensions().get::<StreamReport>().cloned().unwrap();
    let bytes = resp.bytes().await.unwrap();
    let events = parse_sse_named(&bytes);
    let last = events.last().unwrap();
    assert_eq!(last.name(), Some("response.failed"));
    assert_eq!(last.json().unwrap()["response"]["error"]["code"], "stream_broken");
    assert_eq!(events.iter().filter(|e| e.name() == Some("response.failed")).count(), 1);
    let report = handle.finished().await;
    assert_eq!(report.resolution(), llm_fallback::Resolution::StreamBroken);
}
