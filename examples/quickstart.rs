//! One request through `FallbackLayer`, over real HTTP.
//!
//! Run with:
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! With no `OPENROUTER_API_KEY` it starts the mock OpenRouter (llm-fallback-mock) on
//! 127.0.0.1 with a primary model that is down (503) and a secondary that
//! works. With `OPENROUTER_API_KEY` set it calls `https://openrouter.ai/api/v1`
//! instead, with a primary model id that does not exist, so the fallback is
//! real there too.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use llm_fallback::{Chain, FallbackLayer, FallbackReport, ReplayBody, Route};
use llm_fallback_mock::{MockServer, MockUpstream, Reply};
use std::time::Duration;
use tower::{Service, ServiceBuilder, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let key = std::env::var("OPENROUTER_API_KEY").ok().filter(|k| !k.is_empty());
    match key {
        Some(key) => {
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_webpki_roots()
                .https_only()
                .enable_http1()
                .build();
            let client = Client::builder(TokioExecutor::new()).build::<_, ReplayBody>(https);
            let chain = Chain::new([
                Route::new("llm-fallback/no-such-model")
                    .label("primary")
                    .timeout(Duration::from_secs(30)),
                Route::new("openai/gpt-4o-mini")
                    .label("secondary")
                    .timeout(Duration::from_secs(30)),
                Route::new("meta-llama/llama-3.1-8b-instruct")
                    .label("budget")
                    .timeout(Duration::from_secs(30)),
            ])
            .deadline(Duration::from_secs(90));
            println!("calling OpenRouter (OPENROUTER_API_KEY is set)");
            ask(
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
                    Reply::error(503, "provider_unavailable", "No available provider")
                        .provider("Anthropic")
                        .raw_message("overloaded_error: Overloaded"),
                )
                .model(
                    "openai/gpt-4o",
                    Reply::ok()
                        .provider("OpenAI")
                        .content("Hello! (served by the secondary)"),
                );
            let server = MockServer::start(upstream).await?;
            println!(
                "mock OpenRouter on {} (set OPENROUTER_API_KEY to call the real one)",
                server.url()
            );
            let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
            let chain = Chain::new([
                Route::new("anthropic/claude-3.5-sonnet")
                    .label("primary")
                    .timeout(Duration::from_secs(30)),
                Route::new("openai/gpt-4o")
                    .label("secondary")
                    .timeout(Duration::from_secs(25)),
                Route::new("openai/gpt-4o-mini")
                    .label("budget")
                    .timeout(Duration::from_secs(15)),
            ])
            .deadline(Duration::from_secs(60));
            ask(client, chain, &server.chat_url(), None).await
        }
    }
}

async fn ask<S>(client: S, chain: Chain, url: &str, key: Option<&str>) -> Result<(), BoxError>
where
    S: Service<http::Request<ReplayBody>, Response = http::Response<hyper::body::Incoming>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError> + Send + 'static,
{
    let svc = ServiceBuilder::new().layer(FallbackLayer::new(chain)).service(client);

    let body = serde_json::json!({
        "model": "anthropic/claude-3.5-sonnet",
        "messages": [{"role": "user", "content": "Say hello in five words."}],
        "max_tokens": 32
    });
    let mut request = http::Request::post(url).header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let request = request.body(Full::new(Bytes::from(body.to_string())))?;

    let resp = svc.oneshot(request).await.map_err(Into::into)?;
    let report = resp
        .extensions()
        .get::<FallbackReport>()
        .cloned()
        .expect("the layer always reports");
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();

    println!("HTTP {status}: {}", report);
    println!(
        "served by {} after {} attempts",
        report.served_model(),
        report.attempts().len()
    );
    for attempt in report.attempts() {
        println!("  #{} {attempt} [{}]", attempt.index(), attempt.outcome());
    }
    let json: serde_json::Value = serde_json::from_slice(&bytes)?;
    match json["choices"][0]["message"]["content"].as_str() {
        Some(text) => println!("answer: {text}"),
        None => println!("error: {}", json["error"]["message"]),
    }
    Ok(())
}
