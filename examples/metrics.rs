//! Fallback metrics in Prometheus format: a primary that is down, a slow
//! secondary hedged by a third route, and cooldowns.
//!
//! Run with:
//!
//! ```text
//! cargo run --example metrics
//! ```
//!
//! It installs `metrics-exporter-prometheus` as the `metrics` recorder, sends
//! twenty requests through the layer to the mock upstream, and prints what a
//! Prometheus scrape would see.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use llm_fallback::health::{Cooldowns, HedgeBudget};
use llm_fallback::{Chain, FallbackLayer, Route};
use llm_fallback_mock::{MockUpstream, Reply};
use metrics_exporter_prometheus::PrometheusBuilder;
use std::time::Duration;
use tower::{Layer, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let prometheus = PrometheusBuilder::new().install_recorder()?;

    let upstream = MockUpstream::new()
        .model("anthropic/claude-3.5-sonnet", Reply::status(503))
        .model("openai/gpt-4o", Reply::ok().latency(Duration::from_millis(120)))
        .model("openai/gpt-4o-mini", Reply::ok().latency(Duration::from_millis(10)));
    let chain = Chain::new([
        Route::new("anthropic/claude-3.5-sonnet").label("primary"),
        Route::new("openai/gpt-4o")
            .label("secondary")
            .hedge_after(Duration::from_millis(50)),
        Route::new("openai/gpt-4o-mini").label("budget"),
    ]);
    let layer = FallbackLayer::builder(chain)
        .cooldowns(Cooldowns::new().failures(3).base(Duration::from_secs(30)))
        .hedging(HedgeBudget::new(0.25, Duration::from_secs(60)))
        .layer();
    let svc = layer.layer(upstream);

    for _ in 0..20 {
        let body = r#"{"model":"anthropic/claude-3.5-sonnet","messages":[{"role":"user","content":"hi"}]}"#;
        let req = http::Request::post("http://mock/api/v1/chat/completions")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))?;
        let resp = svc.clone().oneshot(req).await?;
        resp.into_body().collect().await?;
    }

    for line in prometheus.render().lines().filter(|l| l.contains("llm_fallback")) {
        println!("{line}");
    }
    Ok(())
}
