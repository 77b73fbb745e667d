//! async-openai with fallbacks: `llm_fallback::async_openai::FallbackService`
//! as its HTTP service, one chat request and one streamed one, each failing
//! over from a broken primary; the `on_report` hook logs which model served
//! (with `tracing`), since a typed client never sees the response headers.
//!
//! Run with:
//!
//! ```text
//! cargo run --example async_openai --features async-openai
//! ```
//!
//! With no `OPENROUTER_API_KEY` it runs against the mock OpenRouter
//! (llm-fallback-mock) on 127.0.0.1: the primary answers 503 to the chat
//! request and an error chunk (after keep-alives) to the streamed one. With
//! the key set it calls `https://openrouter.ai/api/v1` (rustls with the ring
//! provider), with a primary model id that does not exist, so the fallback
//! is real there too. `RUST_LOG` sets the log filter (default `info`).

use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs};
use futures_util::StreamExt;
use llm_fallback::{Chain, FallbackBuilder, FallbackReport, Route};
use llm_fallback_mock::{MockServer, MockUpstream, Reply, Script};
use std::io::Write;
use std::time::Duration;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const MOCK_PRIMARY: &str = "anthropic/claude-3.5-sonnet";
const MOCK_SECONDARY: &str = "openai/gpt-4o";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    // This example's reqwest has rustls without a built-in crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let key = std::env::var("OPENROUTER_API_KEY").ok().filter(|k| !k.is_empty());
    let (base, key, primary, secondary, _server) = match key {
        Some(key) => {
            println!("calling OpenRouter (OPENROUTER_API_KEY is set)");
            let base = "https://openrouter.ai/api/v1".to_owned();
            (base, key, "llm-fallback/no-such-model", "openai/gpt-4o-mini", None)
        }
        None => {
            let upstream = MockUpstream::new()
                .model(
                    MOCK_PRIMARY,
                    Script::sequence([
                        Reply::error(503, "provider_unavailable", "No available provider").provider("Anthropic"),
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
            let base = server.base_url();
            (
                base,
                "sk-or-mock".to_owned(),
                MOCK_PRIMARY,
                MOCK_SECONDARY,
                Some(server),
            )
        }
    };

    let chain = Chain::new([
        Route::new(primary)
            .label("primary")
            .timeout(Duration::from_secs(30))
            .first_token_timeout(Duration::from_secs(20)),
        Route::new(secondary)
            .label("secondary")
            .timeout(Duration::from_secs(30))
            .first_token_timeout(Duration::from_secs(20)),
    ])
    .deadline(Duration::from_secs(60));

    // The one line async-openai needs: our engine as its HTTP service.
    // (A client that follows no redirects: LLM APIs send none.)
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let service = FallbackBuilder::new(chain).on_report(log_report).async_openai(http);
    let config = OpenAIConfig::new().with_api_base(base).with_api_key(key);
    let client = async_openai::Client::with_config(config).with_http_service(service);

    // A chat request.
    let request = CreateChatCompletionRequestArgs::default()
        .model(primary)
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("Say hello in five words.")
            .build()?
            .into()])
        .max_tokens(32u32)
        .build()?;
    match client.chat().create(request).await {
        Ok(answer) => println!(
            "answer from {}: {}",
            answer.model,
            answer
                .choices
                .first()
                .and_then(|c| c.message.content.as_deref())
                .unwrap_or("")
        ),
        Err(e) => println!("error: {e}"),
    }
    println!();

    // A streamed one: tokens print as they arrive; the hook logs at the end.
    let request = CreateChatCompletionRequestArgs::default()
        .model(primary)
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("In one sentence: why fail over before the first token?")
            .build()?
            .into()])
        .max_tokens(60u32)
        .build()?;
    let mut stream = client.chat().create_stream(request).await?;
    print!("answer: ");
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                for choice in &chunk.choices {
                    print!("{}", choice.delta.content.as_deref().unwrap_or(""));
                }
                std::io::stdout().flush()?;
            }
            // A stream that broke after it began ends with this item.
            Err(e) => print!(" [stream error: {e}]"),
        }
    }
    println!();
    // async-openai reads the body on its own task: give its end a moment
    // to reach the hook's log line before the program exits.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}

/// The `on_report` hook: which model served each request, and why the
/// others failed. The report holds no key, header or body.
fn log_report(report: &FallbackReport) {
    tracing::info!(
        served = report.served_model(),
        attempts = report.attempts().len(),
        resolution = report.resolution().as_str(),
        "llm request finished"
    );
    for failed in report.attempts().iter().filter(|a| a.outcome().is_failure()) {
        tracing::info!(attempt = %failed, "failed attempt");
    }
}
