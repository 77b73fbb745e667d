//! Capability-aware chains against the mock upstream: a vision request skips
//! text-only routes, a long prompt skips small windows, and a context-length
//! failure jumps to a larger window.
//!
//! Run with:
//!
//! ```text
//! cargo run --example capabilities
//! ```

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use llm_fallback::{Capabilities, Chain, FallbackLayer, FallbackReport, Price, PriceGuard, Route};
use llm_fallback_mock::{MockUpstream, Reply};
use serde_json::json;
use tower::{Layer, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let upstream = MockUpstream::new()
        .model("mistralai/mistral-small", Reply::ok())
        .model(
            "meta-llama/llama-3.1-70b-instruct",
            Reply::error(
                400,
                "context_length_exceeded",
                "This endpoint's maximum context length is 131072 tokens.",
            ),
        )
        .model("openai/gpt-4o-mini", Reply::ok())
        .model("google/gemini-1.5-pro", Reply::ok());

    let chain = Chain::new([
        Route::new("mistralai/mistral-small")
            .label("small-text")
            .capabilities(Capabilities::TOOLS)
            .context_window(32_000)
            .price(Price::per_million(0.2, 0.6)),
        Route::new("meta-llama/llama-3.1-70b-instruct")
            .label("llama")
            .capabilities(Capabilities::TOOLS)
            .context_window(131_072)
            .price(Price::per_million(0.4, 0.4)),
        Route::new("openai/gpt-4o-mini")
            .label("mini")
            .capabilities(Capabilities::TOOLS | Capabilities::VISION | Capabilities::STRUCTURED_OUTPUT)
            .context_window(128_000)
            .price(Price::per_million(0.15, 0.6)),
        Route::new("google/gemini-1.5-pro")
            .label("long")
            .capabilities(Capabilities::TOOLS | Capabilities::VISION)
            .context_window(2_000_000)
            .price(Price::per_million(1.25, 5.0)),
    ]);
    let svc = FallbackLayer::new(chain).layer(upstream);

    let image = json!({"model": "any", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", "iVBORw0KGgo".repeat(500))}}
    ]}]});
    show("1) an image: text-only routes are skipped", svc.clone(), image).await?;

    let long = "The quick brown fox jumps over the lazy dog. ".repeat(4_000); // ~180 KB
    let long_prompt = json!({"model": "any", "messages": [{"role": "user", "content": long}], "max_tokens": 2000});
    show(
        "2) a long prompt: small windows are skipped; a context-length error jumps to a larger window",
        svc.clone(),
        long_prompt,
    )
    .await?;

    let mut capped = json!({"model": "any", "messages": [{"role": "user", "content": long}]});
    capped["max_tokens"] = json!(100);
    let mut req = request(&capped);
    req.extensions_mut()
        .insert(PriceGuard::Max(Price::per_million(0.5, 1.0)));
    let resp = svc.clone().oneshot(req).await?;
    print_report(
        "3) the same with a price cap of $0.5/$1 per M tokens: nothing affordable fits",
        &resp.extensions().get::<FallbackReport>().cloned().unwrap(),
    );
    println!(
        "   HTTP {}: {}",
        resp.status(),
        String::from_utf8_lossy(&resp.into_body().collect().await?.to_bytes())
    );
    Ok(())
}

fn request(body: &serde_json::Value) -> http::Request<Full<Bytes>> {
    http::Request::post("http://mock/api/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid request")
}

async fn show<S>(title: &str, svc: S, body: serde_json::Value) -> Result<(), BoxError>
where
    S: tower::Service<
        http::Request<Full<Bytes>>,
        Response = http::Response<llm_fallback::ResponseBody<llm_fallback_mock::MockBody>>,
    >,
    S::Error: Into<BoxError>,
{
    let resp = svc.oneshot(request(&body)).await.map_err(Into::into)?;
    print_report(
        title,
        resp.extensions().get::<FallbackReport>().expect("always reported"),
    );
    Ok(())
}

fn print_report(title: &str, report: &FallbackReport) {
    println!("== {title}");
    for a in report.attempts() {
        println!("   #{} {a}", a.index());
    }
    println!(
        "   -> {}",
        if report.served_model().is_empty() {
            "no model served"
        } else {
            report.served_model()
        }
    );
}
