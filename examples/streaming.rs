//! A streamed answer through `FallbackLayer`: the primary fails before its
//! first token, the secondary streams, and tokens print as they arrive.
//!
//! Run with:
//!
//! ```text
//! cargo run --example streaming
//! ```
//!
//! With no `OPENROUTER_API_KEY` it runs against the mock OpenRouter (llm-fallback-mock) on
//! 127.0.0.1 (the primary sends keep-alives, then an error chunk). With the
//! key set it streams from `https://openrouter.ai/api/v1`, with a primary
//! model id that does not exist.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use llm_fallback::{Chain, FallbackLayer, FallbackReport, ReplayBody, Route, StreamReport};
use llm_fallback_mock::{MockServer, MockUpstream, Reply};
use std::io::Write;
use std::time::Duration;
use tower::{Service, ServiceBuilder, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let routes = |primary: &str, secondary: &str| {
        Chain::new([
            Route::new(primary)
                .label("primary")
                .first_token_timeout(Duration::from_secs(20))
                .idle_timeout(Duration::from_secs(30)),
            Route::new(secondary)
                .label("secondary")
                .first_token_timeout(Duration::from_secs(20))
                .idle_timeout(Duration::from_secs(30)),
        ])
        .deadline(Duration::from_secs(45))
    };
    match std::env::var("OPENROUTER_API_KEY").ok().filter(|k| !k.is_empty()) {
        Some(key) => {
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_webpki_roots()
                .https_only()
                .enable_http1()
                .build();
            let client = Client::builder(TokioExecutor::new()).build::<_, ReplayBody>(https);
            println!("streaming from OpenRouter (OPENROUTER_API_KEY is set)");
            let chain = routes("llm-fallback/no-such-model", "openai/gpt-4o-mini");
            run(
                client,
                chain,
                "https://openrouter.ai/api/v1/chat/completions",
                Some(&key),
            )
            .await
        }
        None => {
            let upstream = MockUpstream::new()
                .model(
                    "anthropic/claude-3.5-sonnet",
                    Reply::stream()
                        .keep_alive(3, Duration::from_millis(100))
                        .error_before_first_token(),
                )
                .model(
                    "openai/gpt-4o",
                    Reply::stream()
                        .tokens(["Streams ", "fail ", "over ", "before ", "the ", "first ", "token."])
                        .chunk_interval(Duration::from_millis(80)),
                );
            let server = MockServer::start(upstream).await?;
            println!(
                "mock OpenRouter on {} (set OPENROUTER_API_KEY to stream from the real one)",
                server.url()
            );
            let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
            let chain = routes("anthropic/claude-3.5-sonnet", "openai/gpt-4o");
            run(client, chain, &server.chat_url(), None).await
        }
    }
}

async fn run<S>(client: S, chain: Chain, url: &str, key: Option<&str>) -> Result<(), BoxError>
where
    S: Service<http::Request<ReplayBody>, Response = http::Response<hyper::body::Incoming>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError> + Send + 'static,
{
    let svc = ServiceBuilder::new().layer(FallbackLayer::new(chain)).service(client);
    let body = serde_json::json!({
        "model": "anthropic/claude-3.5-sonnet",
        "stream": true,
        "messages": [{"role": "user", "content": "In one sentence: why fail over before the first token?"}],
        "max_tokens": 60
    });
    let mut request = http::Request::post(url).header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let resp = svc
        .oneshot(request.body(Full::new(Bytes::from(body.to_string())))?)
        .await
        .map_err(Into::into)?;

    let report = resp
        .extensions()
        .get::<FallbackReport>()
        .cloned()
        .expect("the layer always reports");
    println!(
        "HTTP {} — committed to {} after {} attempt(s)",
        resp.status(),
        report.served_model(),
        report.attempts().len()
    );
    for failed in report.attempts().iter().filter(|a| a.outcome().is_failure()) {
        println!("  skipped: {failed}");
    }
    let Some(handle) = resp.extensions().get::<StreamReport>().cloned() else {
        // Not a stream: an error answer (all routes failed, or a stop).
        let bytes = resp.into_body().collect().await?.to_bytes();
        println!("{}", String::from_utf8_lossy(&bytes));
        return Ok(());
    };

    print!("answer: ");
    let mut body = resp.into_body();
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        pending.extend_from_slice(&data);
        // Print every complete event's content as soon as it arrives.
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            for line in String::from_utf8_lossy(&event).lines() {
                let Some(json) = line.strip_prefix("data: ").filter(|d| *d != "[DONE]") else {
                    continue;
                };
                let chunk: serde_json::Value = serde_json::from_str(json)?;
                if let Some(text) = chunk["choices"][0]["delta"]["content"].as_str() {
                    print!("{text}");
                    std::io::stdout().flush()?;
                }
                if chunk["choices"][0]["finish_reason"] == "error" {
                    print!(" [stream error: {}]", chunk["error"]["message"]);
                }
            }
        }
    }
    println!();
    let last = handle.finished().await;
    println!("stream ended: {last}");
    if let Some(usage) = last.usage() {
        println!(
            "usage: {} prompt + {} completion = {} tokens",
            usage.prompt_tokens, usage.completion_tokens, usage.total_tokens
        );
    }
    Ok(())
}
