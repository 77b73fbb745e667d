//! A hybrid chain: OpenRouter falls back server-side within a native group,
//! and the layer moves to a direct OpenAI-compatible endpoint when OpenRouter
//! itself is down.
//!
//! Run with:
//!
//! ```text
//! cargo run --example native_openrouter
//! ```
//!
//! With no `OPENROUTER_API_KEY` it starts two mock servers on 127.0.0.1: one
//! playing OpenRouter, one playing a direct provider. With the key set it
//! calls OpenRouter, and adds a direct OpenAI route when `OPENAI_API_KEY` is
//! set too.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use llm_fallback::native::{Endpoint, ProviderPrefs, ProviderSort, SortBy};
use llm_fallback::{Chain, FallbackLayer, FallbackReport, ReplayBody, Route};
use llm_fallback_mock::{MockServer, MockUpstream, Reply};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn chain(direct: Option<Route>) -> Chain {
    // `#[non_exhaustive]` (OpenRouter adds fields): start from the default.
    let mut anthropic_first = ProviderPrefs::default();
    anthropic_first.order = Some(vec!["Anthropic".into(), "Amazon Bedrock".into()]);
    anthropic_first.sort = Some(ProviderSort::By(SortBy::Latency));
    let mut routes = vec![
        // One request: OpenRouter tries Claude (Anthropic first), then GPT-4o, on its side.
        Route::new("anthropic/claude-3.5-sonnet")
            .label("openrouter-group")
            .native_fallbacks(["openai/gpt-4o"])
            .provider(anthropic_first)
            .openrouter_metadata(true)
            .timeout(Duration::from_secs(30)),
        // A second OpenRouter hop with a cheap model.
        Route::new("meta-llama/llama-3.1-8b-instruct")
            .label("openrouter-budget")
            .timeout(Duration::from_secs(20)),
    ];
    routes.extend(direct);
    Chain::new(routes).deadline(Duration::from_secs(60))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    if let Some(key) = std::env::var("OPENROUTER_API_KEY").ok().filter(|k| !k.is_empty()) {
        let direct = match std::env::var("OPENAI_API_KEY") {
            Ok(_) => Some(
                Route::new("gpt-4o-mini")
                    .label("openai-direct")
                    .endpoint(Endpoint::new("https://api.openai.com/v1")?.api_key_env("OPENAI_API_KEY")?),
            ),
            Err(_) => None,
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_only()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build::<_, ReplayBody>(https);
        let svc = FallbackLayer::new(chain(direct)).layer(client);
        let report = ask(svc, "https://openrouter.ai/api/v1/chat/completions", &key).await?;
        print_report("OpenRouter", &report);
        return Ok(());
    }

    // OpenRouter's stand-in: Claude's providers are down, GPT-4o answers.
    let openrouter = MockServer::start(
        MockUpstream::new()
            .provider("anthropic/claude-3.5-sonnet", "Anthropic", Reply::status(503))
            .provider("anthropic/claude-3.5-sonnet", "Amazon Bedrock", Reply::status(429))
            .model("openai/gpt-4o", Reply::ok().provider("OpenAI"))
            .model("meta-llama/llama-3.1-8b-instruct", Reply::ok()),
    )
    .await?;
    // A direct provider's stand-in, with its own key.
    let direct_server =
        MockServer::start(MockUpstream::new().model("gpt-4o-mini", Reply::ok().provider("OpenAI direct"))).await?;
    std::env::set_var("DEMO_DIRECT_API_KEY", "sk-demo-direct");
    let direct = Route::new("gpt-4o-mini")
        .label("direct")
        .endpoint(Endpoint::new(format!("{}/v1", direct_server.url()))?.api_key_env("DEMO_DIRECT_API_KEY")?);

    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
    let svc = FallbackLayer::new(chain(Some(direct))).layer(client);

    let report = ask(svc.clone(), &openrouter.chat_url(), "sk-or-demo").await?;
    print_report("1) OpenRouter up, Claude down", &report);

    // Chaos drill: OpenRouter itself goes down for every model.
    for model in ["openai/gpt-4o", "meta-llama/llama-3.1-8b-instruct"] {
        openrouter.upstream().set_script(model, Reply::status(502));
    }
    let report = ask(svc, &openrouter.chat_url(), "sk-or-demo").await?;
    print_report("2) OpenRouter down", &report);
    Ok(())
}

async fn ask<S>(svc: S, url: &str, key: &str) -> Result<FallbackReport, BoxError>
where
    S: Service<
        http::Request<Full<Bytes>>,
        Response = http::Response<llm_fallback::ResponseBody<hyper::body::Incoming>>,
    >,
    S::Error: Into<BoxError>,
{
    let body = serde_json::json!({
        "model": "anthropic/claude-3.5-sonnet",
        "messages": [{"role": "user", "content": "Name one prime number."}],
        "max_tokens": 16
    });
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"))
        .body(Full::new(Bytes::from(body.to_string())))?;
    let resp = svc.oneshot(request).await.map_err(Into::into)?;
    let report = resp
        .extensions()
        .get::<FallbackReport>()
        .cloned()
        .expect("always reported");
    let json: serde_json::Value = serde_json::from_slice(&resp.into_body().collect().await?.to_bytes())?;
    if let Some(text) = json["choices"][0]["message"]["content"].as_str() {
        println!("answer: {text}");
    }
    Ok(report)
}

fn print_report(title: &str, report: &FallbackReport) {
    println!("== {title}");
    println!(
        "served by {} (route {:?}, provider {:?}); OpenRouter fell back on its side: {}",
        report.served_model(),
        report.served_label(),
        report.provider(),
        report.upstream_fell_back()
    );
    for a in report.attempts() {
        println!("  #{} {a} [{}]", a.index(), a.outcome());
        for u in a.upstream_attempts() {
            println!(
                "      server-side: {} via {} -> {}{}",
                u.model.as_deref().unwrap_or("?"),
                u.provider.as_deref().unwrap_or("?"),
                u.status.map_or("?".into(), |s| s.to_string()),
                u.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
            );
        }
    }
}
