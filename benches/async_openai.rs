//! async-openai end to end: a chat request through async-openai's client
//! over loopback HTTP to the mock upstream, with
//! `llm_fallback::async_openai::FallbackService` as its HTTP service and
//! with async-openai's own `ReqwestService`, in the same run. Requests are
//! sequential on one current-thread runtime (client and mock on one
//! thread, so wall time is the CPU of both); the ratio to `plain_service`
//! is the result.
//!
//! ```text
//! cargo bench --bench async_openai --features async-openai
//! ```
//!
//! - `plain_service`: `ReqwestService` (no retry), the request naming the
//!   served model (the baseline);
//! - `fallback_served_first`: through the adapter, the first route serves
//!   (one rewrite, one attempt, zero-copy body).
//!
//! Before the timings it counts the bytes allocated per request (this
//! binary's counting allocator, on the runtime's one thread) for a 2 KiB
//! and a 1 MiB prompt through both, and fails if the adapter's extra grows
//! with the body: no copy of the body.

use async_openai::config::OpenAIConfig;
use async_openai::middleware::ReqwestService;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequest, CreateChatCompletionRequestArgs,
};
use criterion::{criterion_group, BenchmarkId, Criterion};
use llm_fallback::async_openai::FallbackService;
use llm_fallback::{Chain, Route};
use llm_fallback_mock::{MockServer, MockUpstream, Reply};
use std::time::Duration;

const SERVED: &str = "openai/gpt-4o";

#[path = "../tests/support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::allocated;

// ===== the clients =====

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn config(server: &MockServer) -> OpenAIConfig {
    // async-openai's `with_config` builds a reqwest client of its own.
    let _ = rustls::crypto::ring::default_provider().install_default();
    OpenAIConfig::new()
        .with_api_base(server.base_url())
        .with_api_key("sk-bench")
}

fn plain(server: &MockServer) -> async_openai::Client<OpenAIConfig> {
    async_openai::Client::with_config(config(server)).with_http_service(ReqwestService::new(http()))
}

fn fallback(server: &MockServer) -> async_openai::Client<OpenAIConfig> {
    let chain = Chain::new([Route::new(SERVED), Route::new("x/y")]);
    async_openai::Client::with_config(config(server)).with_http_service(FallbackService::new(chain, http()))
}

/// A chat request with a prompt of about `size` bytes naming `model`.
fn request(size: usize, model: &str) -> CreateChatCompletionRequest {
    let line = "Tell me about the \"model\" of the universe — ünïcødé ✓\n";
    let prompt = line.repeat(size / line.len() + 1);
    CreateChatCompletionRequestArgs::default()
        .model(model)
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content(prompt)
            .build()
            .unwrap()
            .into()])
        .build()
        .unwrap()
}

async fn send(client: &async_openai::Client<OpenAIConfig>, req: &CreateChatCompletionRequest, server: &MockServer) {
    let answer = client.chat().create(req.clone()).await.unwrap();
    assert_eq!(answer.model, SERVED);
    // The mock records every request; keep its memory flat.
    server.upstream().clear_requests();
}

/// Bytes allocated by one request (the median of a few, after a warm-up).
fn per_request(
    rt: &tokio::runtime::Runtime,
    client: &async_openai::Client<OpenAIConfig>,
    req: &CreateChatCompletionRequest,
    server: &MockServer,
) -> usize {
    rt.block_on(send(client, req, server));
    let mut samples: Vec<usize> = (0..5)
        .map(|_| {
            let before = allocated();
            rt.block_on(send(client, req, server));
            allocated() - before
        })
        .collect();
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = rt
        .block_on(MockServer::start(MockUpstream::new().model(SERVED, Reply::ok())))
        .unwrap();
    let plain = plain(&server);
    let fallback = fallback(&server);

    // No copy of the body: the adapter's extra allocation per request does
    // not grow with the prompt.
    let mut extra = Vec::new();
    for size in [2 * 1024, 1024 * 1024] {
        let direct = request(size, SERVED);
        let rewritten = request(size, "caller/model");
        let base = per_request(&rt, &plain, &direct, &server);
        let ours = per_request(&rt, &fallback, &rewritten, &server);
        println!(
            "alloc per request, {size} B prompt: ReqwestService {base} B, FallbackService {ours} B (extra {} B)",
            ours as isize - base as isize
        );
        extra.push(ours as isize - base as isize);
    }
    let growth = extra[1] - extra[0];
    assert!(
        growth < 64 * 1024,
        "the adapter's extra allocation grew by {growth} B from a 2 KiB to a 1 MiB prompt: a copy of the body"
    );

    let mut group = c.benchmark_group("async_openai");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    for (size_name, size) in [("2KiB", 2 * 1024), ("256KiB", 256 * 1024)] {
        let direct = request(size, SERVED);
        let rewritten = request(size, "caller/model");
        group.bench_with_input(BenchmarkId::new("plain_service", size_name), &direct, |b, req| {
            b.to_async(&rt).iter(|| send(&plain, req, &server))
        });
        group.bench_with_input(
            BenchmarkId::new("fallback_served_first", size_name),
            &rewritten,
            |b, req| b.to_async(&rt).iter(|| send(&fallback, req, &server)),
        );
    }
    group.finish();
}

/// `AOAI_PROFILE=<plain|fallback>`: only send `AOAI_REQUESTS` (default
/// 1000) 2 KiB chat requests through that client, for an instruction
/// counter, e.g. `AOAI_PROFILE=fallback AOAI_REQUESTS=2000 valgrind
/// --tool=callgrind target/release/deps/async_openai-*` (per request: the
/// difference of two counts over the difference of their requests).
fn profile(name: &str) {
    let n: usize = std::env::var("AOAI_REQUESTS")
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
    let (client, req) = match name {
        "plain" => (plain(&server), request(2 * 1024, SERVED)),
        "fallback" => (fallback(&server), request(2 * 1024, "caller/model")),
        other => panic!("AOAI_PROFILE={other}: expected plain or fallback"),
    };
    rt.block_on(async {
        for _ in 0..n {
            send(&client, &req, &server).await;
        }
    });
}

criterion_group!(benches, bench);

fn main() {
    if let Ok(name) = std::env::var("AOAI_PROFILE") {
        return profile(&name);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
