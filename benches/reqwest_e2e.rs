//! `FallbackMiddleware` end to end: a `reqwest_middleware` client over
//! loopback HTTP to the mock upstream, with and without the middleware, in
//! the same run. Requests are sequential; the ratio to `plain_client` is the
//! result.
//!
//! ```text
//! cargo bench --bench reqwest_e2e
//! ```
//!
//! - `plain_client`: the client with no middleware, the body already naming
//!   the served model (the baseline);
//! - `fallback_served_first`: through `FallbackMiddleware`, the first route
//!   serves (one rewrite, one attempt, zero-copy body);
//! - `fallback_reusable_bodies`: the same with `reusable_bodies(true)` (one
//!   copy of the body per attempt);
//! - `fallback_one_failure`: the first route answers 503, the second serves
//!   (two round trips; compare with twice the baseline).
//!
//! `REQWEST_PROFILE=<plain|fallback>` only sends `REQWEST_REQUESTS`
//! (default 1000) 2 KiB requests through that client (`fallback`: the
//! served-first case), for an instruction counter (see [`profile`]).

use bytes::Bytes;
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use llm_fallback::{Chain, FallbackMiddleware, Route};
use llm_fallback_mock::{MockServer, MockUpstream, Reply};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use std::time::Duration;

const SERVED: &str = "openai/gpt-4o";
const DOWN: &str = "anthropic/claude-3.5-sonnet";

/// A chat request of about `size` bytes naming `model`.
fn body_of(size: usize, model: &str) -> Bytes {
    let turn = r#"{"role":"user","content":"Tell me about the \"model\" of the universe — ünïcødé ✓\nwith several lines\nof text."},"#;
    let mut s = format!(r#"{{"model":"{model}","messages":["#);
    while s.len() + turn.len() < size {
        s.push_str(turn);
    }
    s.push_str(r#"{"role":"user","content":"end"}],"temperature":0.3}"#);
    Bytes::from(s)
}

fn client(middleware: Option<FallbackMiddleware>) -> ClientWithMiddleware {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let inner = reqwest::Client::builder().no_proxy().build().unwrap();
    let builder = ClientBuilder::new(inner);
    match middleware {
        Some(m) => builder.with(m).build(),
        None => builder.build(),
    }
}

async fn send(client: &ClientWithMiddleware, url: &str, body: &Bytes, server: &MockServer) {
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.bytes().await.unwrap();
    // The mock records every request; keep its memory flat.
    server.upstream().clear_requests();
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let upstream = MockUpstream::new()
        .model(SERVED, Reply::ok())
        .model(DOWN, Reply::status(503));
    let server = rt.block_on(MockServer::start(upstream)).unwrap();
    let url = server.chat_url();

    let mut group = c.benchmark_group("reqwest_e2e");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    let cases: [(&str, Option<FallbackMiddleware>); 4] = [
        ("plain_client", None),
        (
            "fallback_served_first",
            Some(FallbackMiddleware::new(Chain::new([
                Route::new(SERVED),
                Route::new("x/y"),
            ]))),
        ),
        (
            "fallback_reusable_bodies",
            Some(FallbackMiddleware::new(Chain::new([Route::new(SERVED), Route::new("x/y")])).reusable_bodies(true)),
        ),
        (
            "fallback_one_failure",
            Some(FallbackMiddleware::new(Chain::new([
                Route::new(DOWN),
                Route::new(SERVED),
            ]))),
        ),
    ];
    for (size_name, size) in [("2KiB", 2 * 1024), ("256KiB", 256 * 1024)] {
        // The baseline names the served model itself; the middleware's callers
        // name their own and get it rewritten.
        let direct = body_of(size, SERVED);
        let rewritten = body_of(size, "caller/model");
        group.throughput(Throughput::Bytes(direct.len() as u64));
        for (name, middleware) in &cases {
            let body = if middleware.is_some() { &rewritten } else { &direct };
            let client = client(middleware.clone());
            group.bench_with_input(BenchmarkId::new(*name, size_name), body, |b, body| {
                b.to_async(&rt).iter(|| send(&client, &url, body, &server))
            });
        }
    }
    group.finish();
}

/// `REQWEST_PROFILE=<plain|fallback>`: only send `REQWEST_REQUESTS`
/// (default 1000) sequential 2 KiB requests through that client, e.g.
/// `REQWEST_PROFILE=fallback REQWEST_REQUESTS=700 valgrind --tool=callgrind
/// target/release/deps/reqwest_e2e-*` (per request: the difference of two
/// counts over the difference of their requests).
fn profile(name: &str) {
    let n: usize = std::env::var("REQWEST_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = rt
        .block_on(MockServer::start(MockUpstream::new().model(SERVED, Reply::ok())))
        .unwrap();
    let url = server.chat_url();
    let (client, body) = match name {
        "plain" => (client(None), body_of(2 * 1024, SERVED)),
        "fallback" => (
            client(Some(FallbackMiddleware::new(Chain::new([
                Route::new(SERVED),
                Route::new("x/y"),
            ])))),
            body_of(2 * 1024, "caller/model"),
        ),
        other => panic!("REQWEST_PROFILE={other}: expected plain or fallback"),
    };
    rt.block_on(async {
        for _ in 0..n {
            send(&client, &url, &body, &server).await;
        }
    });
}

criterion_group!(benches, bench);

fn main() {
    if let Ok(name) = std::env::var("REQWEST_PROFILE") {
        return profile(&name);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
