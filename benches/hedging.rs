//! Tail latency with and without hedging, and the cost of a dead primary
//! with and without cooldowns, over loopback HTTP against the mock upstream.
//!
//! ```text
//! cargo bench --bench hedging
//! ```
//!
//! 1. A primary that hangs for 10 s and a secondary answering in 50 ms: 200
//!    requests (50 at a time) through the layer with `hedge_after(200ms)`,
//!    and without hedging (the primary's 10 s route timeout, then the
//!    secondary). Prints p50/p99.
//! 2. A primary that is down (503) and a secondary answering in 20 ms: the
//!    median of 200 sequential requests (after the first 5) through the
//!    layer with cooldowns, against requests sent straight to the secondary.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use llm_fallback::health::{Cooldowns, HedgeBudget};
use llm_fallback::{Chain, FallbackLayer, ReplayBody, Route};
use llm_fallback_mock::{MockServer, MockUpstream, Reply};
use std::time::{Duration, Instant};
use tower::{Layer, ServiceExt};

const BODY: &str = r#"{"model":"x","messages":[{"role":"user","content":"hi"}]}"#;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn run_batch(layer: FallbackLayer, url: &str, total: usize, concurrency: usize) -> Vec<Duration> {
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
    let svc = layer.layer(client);
    let mut all = Vec::with_capacity(total);
    for _ in 0..total / concurrency {
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let svc = svc.clone();
            let url = url.to_owned();
            tasks.push(tokio::spawn(async move {
                let req = http::Request::post(url)
                    .body(Full::new(Bytes::from_static(BODY.as_bytes())))
                    .unwrap();
                let t = Instant::now();
                let resp = svc.oneshot(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                resp.into_body().collect().await.unwrap();
                t.elapsed()
            }));
        }
        for t in tasks {
            all.push(t.await.unwrap());
        }
    }
    all
}

fn sorted(mut v: Vec<Duration>) -> Vec<Duration> {
    v.sort();
    v
}

#[tokio::main]
async fn main() {
    // 1. Hedging.
    let server = MockServer::start(
        MockUpstream::new()
            .model("slow/primary", Reply::ok().latency(Duration::from_secs(10)))
            .model("fast/secondary", Reply::ok().latency(Duration::from_millis(50))),
    )
    .await
    .unwrap();
    let hedged = FallbackLayer::builder(Chain::new([
        Route::new("slow/primary").hedge_after(Duration::from_millis(200)),
        Route::new("fast/secondary"),
    ]))
    .hedging(HedgeBudget::new(1.0, Duration::from_secs(60)))
    .layer();
    let plain = FallbackLayer::new(Chain::new([
        Route::new("slow/primary").timeout(Duration::from_secs(10)),
        Route::new("fast/secondary"),
    ]));
    let with = sorted(run_batch(hedged, &server.chat_url(), 200, 50).await);
    let without = sorted(run_batch(plain, &server.chat_url(), 200, 50).await);
    println!("hedging: primary hangs 10 s, secondary 50 ms, 200 requests, 50 at a time");
    println!("| stack | p50 | p99 |");
    println!("|---|---|---|");
    println!(
        "| hedge_after(200ms) | {:?} | {:?} |",
        pct(&with, 0.5),
        pct(&with, 0.99)
    );
    println!("| no hedging | {:?} | {:?} |", pct(&without, 0.5), pct(&without, 0.99));

    // 2. Cooldowns.
    let server = MockServer::start(
        MockUpstream::new()
            .model("down/primary", Reply::status(503))
            .model("ok/secondary", Reply::ok().latency(Duration::from_millis(20))),
    )
    .await
    .unwrap();
    let cooled = FallbackLayer::builder(Chain::new([Route::new("down/primary"), Route::new("ok/secondary")]))
        .cooldowns(Cooldowns::new().failures(3).base(Duration::from_secs(60)))
        .layer();
    let direct = FallbackLayer::new(Chain::new([Route::new("ok/secondary")]));
    let through = run_batch(cooled, &server.chat_url(), 205, 1).await;
    let straight = sorted(run_batch(direct, &server.chat_url(), 200, 1).await);
    // The first few requests pay for the dead primary until it cools down.
    let after_first_few = sorted(through[5..].to_vec());
    let (m1, m2) = (pct(&after_first_few, 0.5), pct(&straight, 0.5));
    println!();
    println!("cooldowns: primary 503, secondary 20 ms, 200 sequential requests (after the first 5)");
    println!("| stack | median |");
    println!("|---|---|");
    println!("| primary down, cooldowns on | {m1:?} |");
    println!("| straight to the secondary | {m2:?} |");
    println!("ratio: {:.3}", m1.as_secs_f64() / m2.as_secs_f64());
}
