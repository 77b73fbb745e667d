//! `FallbackMiddleware` in a `reqwest_middleware` client: one plain request
//! and one streamed request, each failing over from a broken primary.
//!
//! Run with:
//!
//! ```text
//! cargo run --example reqwest_client
//! ```
//!
//! With no `OPENROUTER_API_KEY` it runs against the mock OpenRouter (llm-fallback-mock) on
//! 127.0.0.1: the primary answers 503 to the plain request and an error chunk
//! (after keep-alives) to the streamed one. With the key set it calls
//! `https://openrouter.ai/api/v1` (rustls with the ring provider and the
//! system's roots), with a primary model id that does not exist, so the
//! fallback is real there too.

use llm_fallback::{Chain, FallbackMiddleware, FallbackReport, Route, StreamReport};
use llm_fallback_mock::{MockServer, MockUpstream, Reply, Script};
use reqwest_middleware::ClientWithMiddleware;
use std::io::Write;
use std::time::Duration;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const MOCK_PRIMARY: &str = "anthropic/claude-3.5-sonnet";
const MOCK_SECONDARY: &str = "openai/gpt-4o";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // This example's reqwest has rustls without a built-in crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let key = std::env::var("OPENROUTER_API_KEY").ok().filter(|k| !k.is_empty());
    let (url, key, primary, secondary, _server) = match key {
        Some(key) => {
            println!("calling OpenRouter (OPENROUTER_API_KEY is set)");
            let url = "https://openrouter.ai/api/v1/chat/completions".to_owned();
            (url, key, "llm-fallback/no-such-model", "openai/gpt-4o-mini", None)
        }
        None => {
            let upstream = MockUpstream::new()
                .model(
                    MOCK_PRIMARY,
                    Script::sequence([
                        Reply::error(503, "provider_unavailable", "No available provider")
                            .provider("Anthropic")
                            .raw_message("overloaded_error: Overloaded"),
                        Reply::stream()
                            .keep_alive(3, Duration::from_millis(100))
                            .error_before_first_token(),
                    ]),
                )
                .model(
                    MOCK_SECONDARY,
                    Script::sequence([
                        Reply::ok().provider("OpenAI").content("Hello from the secondary!"),
                        Reply::stream()
                            .tokens(["Streams ", "fail ", "over ", "before ", "the ", "first ", "token."])
                            .chunk_interval(Duration::from_millis(80)),
                    ]),
                );
            let server = MockServer::start(upstream).await?;
            println!(
                "mock OpenRouter on {} (set OPENROUTER_API_KEY to call the real one)",
                server.url()
            );
            let url = server.chat_url();
            (url, "sk-or-mock".to_owned(), MOCK_PRIMARY, MOCK_SECONDARY, Some(server))
        }
    };

    let chain = Chain::new([
        Route::new(primary)
            .label("primary")
            .timeout(Duration::from_secs(30))
            .first_token_timeout(Duration::from_secs(20))
            .idle_timeout(Duration::from_secs(30)),
        Route::new(secondary)
            .label("secondary")
            .timeout(Duration::from_secs(30))
            .first_token_timeout(Duration::from_secs(20))
            .idle_timeout(Duration::from_secs(30)),
    ])
    .deadline(Duration::from_secs(60));

    // No redirects: LLM APIs send none, and reqwest would follow one to
    // another host with an `x-api-key`.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let client = reqwest_middleware::ClientBuilder::new(http)
        .with(FallbackMiddleware::new(chain))
        .build();

    plain(&client, &url, &key, primary).await?;
    println!();
    streamed(&client, &url, &key, primary).await
}

/// A plain request: the whole answer, then the report.
async fn plain(client: &ClientWithMiddleware, url: &str, key: &str, model: &str) -> Result<(), BoxError> {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hello in five words."}],
        "max_tokens": 32
    });
    let resp = client.post(url).bearer_auth(key).json(&body).send().await?;
    let report = print_report(&resp);
    let json: serde_json::Value = resp.json().await?;
    match json["choices"][0]["message"]["content"].as_str() {
        Some(text) => println!("answer: {text}"),
        None => println!("error: {}", json["error"]["message"]),
    }
    if let Some(usage) = report.usage() {
        println!("usage: {} tokens", usage.total_tokens);
    }
    Ok(())
}

/// A streamed request: tokens print as they arrive, the final report after.
async fn streamed(client: &ClientWithMiddleware, url: &str, key: &str, model: &str) -> Result<(), BoxError> {
    let body = serde_json::json!({
        "model": model,
        "stream": true,
        "messages": [{"role": "user", "content": "In one sentence: why fail over before the first token?"}],
        "max_tokens": 60
    });
    let mut resp = client.post(url).bearer_auth(key).json(&body).send().await?;
    print_report(&resp);
    let Some(handle) = resp.extensions().get::<StreamReport>().cloned() else {
        // Not a stream: an error answer (all routes failed, or a stop).
        println!("{}", resp.text().await?);
        return Ok(());
    };

    print!("answer: ");
    let mut pending = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        pending.extend_from_slice(&chunk);
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
        println!("usage: {} tokens", usage.total_tokens);
    }
    Ok(())
}

/// Prints which model served and why the others failed.
fn print_report(resp: &reqwest::Response) -> FallbackReport {
    let report = resp
        .extensions()
        .get::<FallbackReport>()
        .cloned()
        .expect("the middleware always reports");
    println!(
        "HTTP {} — served by {} after {} attempt(s) (x-fallback-model: {:?})",
        resp.status(),
        report.served_model(),
        report.attempts().len(),
        resp.headers().get("x-fallback-model"),
    );
    for failed in report.attempts().iter().filter(|a| a.outcome().is_failure()) {
        println!("  failed: {failed}");
    }
    report
}
