//! Time to the first streamed byte over loopback, through `FallbackLayer`
//! against the same client alone, in the same run.
//!
//! ```text
//! cargo bench --bench streaming
//! ```
//!
//! The mock upstream streams an answer in each dialect that streams (chat
//! completions, OpenAI Responses, Anthropic Messages, legacy completions);
//! each iteration sends a `"stream": true` request and stops at the first
//! body frame that carries the first token. The layer holds the response
//! until that event (its commit point: Responses' `response.created` and
//! Messages' `message_start` and `ping` come before it and commit nothing),
//! so the difference is what the commit decision adds to the first token:
//! the target is at most 5 µs per stream.
//!
//! Only the wait for the first token is timed; the rest of the stream is
//! then read to its end, untimed, so the connection is reused (a body
//! dropped mid-stream closes its connection, and every iteration would
//! time a reconnect in both arms).
//!
//! `STREAM_PROFILE=<alone|layer>:<dialect>` (dialect `chat`, `responses`,
//! `messages`, `completions`) only sends `STREAM_REQUESTS` (default 1000)
//! whole streams, one after the other on one current-thread runtime, for a
//! profiler: `valgrind --tool=callgrind` of the two arms, their
//! instruction counts' difference divided by the requests, is the layer's
//! CPU per stream without the noise of a shared machine.
//!
//! `STREAM_INTERLEAVED=1` times the first token as the default run does,
//! but on one current-thread runtime (client, layer and mock on one
//! thread, so no wake-up crosses cores) and in alternating batches: for
//! each dialect, 40 rounds of a batch of 400 streams per arm (which arm
//! goes first alternates), the fastest batch of each arm kept. A drift of
//! the machine then moves both arms alike, which criterion's arms, run one
//! after the other, do not give for a difference of a few microseconds.

use bytes::Bytes;
use criterion::{criterion_group, Criterion};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use llm_fallback::{Chain, FallbackLayer, Route};
use llm_fallback_mock::{Dialect, MockServer, MockUpstream, Reply};
use std::time::{Duration, Instant};
use tower::{Layer, Service, ServiceExt};

/// A streaming request of `dialect`'s shape.
fn body(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Responses => r#"{"model":"m/1","stream":true,"input":"hi"}"#,
        Dialect::Messages => {
            r#"{"model":"m/1","stream":true,"max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#
        }
        Dialect::Completions => r#"{"model":"m/1","stream":true,"prompt":"hi"}"#,
        _ => r#"{"model":"m/1","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    }
}

/// The first token the mock streams; the frame holding it ends an iteration.
const FIRST_TOKEN: &[u8] = b"Hel";

/// Sends the request; returns when the first token arrived, with the rest
/// of the body.
async fn first_token<S, B>(svc: S, url: &str, body: &'static str) -> B
where
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let mut body = svc.oneshot(req).await.unwrap().into_body();
    while let Some(frame) = body.frame().await {
        if frame
            .unwrap()
            .data_ref()
            .is_some_and(|d| d.windows(FIRST_TOKEN.len()).any(|w| w == FIRST_TOKEN))
        {
            return body;
        }
    }
    panic!("no first token");
}

/// Reads the rest of a stream (so its connection goes back to the pool).
async fn drain<B>(mut body: B)
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    while let Some(frame) = body.frame().await {
        frame.unwrap();
    }
}

/// Polls the wait for a first token: a function of its own, so a profiler
/// can count what runs until the first token alone (`valgrind
/// --tool=callgrind --collect-atstart=no --toggle-collect='*first_token_poll*'`).
#[inline(never)]
fn first_token_poll<F: std::future::Future>(
    wait: std::pin::Pin<&mut F>,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<F::Output> {
    wait.poll(cx)
}

/// Times `iters` first tokens, draining each stream untimed.
async fn timed<S, B>(svc: S, url: &str, body: &'static str, iters: u64) -> Duration
where
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        let mut wait = std::pin::pin!(first_token(svc.clone(), url, body));
        let rest = std::future::poll_fn(|cx| first_token_poll(wait.as_mut(), cx)).await;
        total += start.elapsed();
        drain(rest).await;
    }
    total
}

const DIALECTS: [Dialect; 4] = [
    Dialect::Chat,
    Dialect::Responses,
    Dialect::Messages,
    Dialect::Completions,
];

fn upstream() -> MockUpstream {
    MockUpstream::new().model("m/1", Reply::stream().tokens(["Hel", "lo", " there", "!"]))
}

/// `STREAM_PROFILE=<alone|layer>:<dialect>`: whole streams, one arm only.
fn profile(spec: &str) {
    let (arm, dialect) = spec.split_once(':').expect("STREAM_PROFILE=<alone|layer>:<dialect>");
    let dialect = *DIALECTS
        .iter()
        .find(|d| d.as_str() == dialect)
        .unwrap_or_else(|| panic!("unknown dialect {dialect}"));
    let requests: u64 = std::env::var("STREAM_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = MockServer::start(upstream()).await.unwrap();
        let url = server.url_for(dialect);
        let body = body(dialect);
        match arm {
            "alone" => {
                let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
                timed(client, &url, body, requests).await
            }
            "layer" => {
                let layered = FallbackLayer::new(Chain::new([Route::new("m/1")]))
                    .layer(Client::builder(TokioExecutor::new()).build_http());
                timed(layered, &url, body, requests).await
            }
            other => panic!("unknown arm {other}: alone or layer"),
        }
    });
}

/// `STREAM_INTERLEAVED=1`: the first token per dialect, both arms in
/// alternating batches on one current-thread runtime; prints a table.
fn interleaved() {
    const ROUNDS: usize = 40;
    const BATCH: u64 = 400;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "time to the first token, current-thread runtime, fastest of {ROUNDS} alternating batches of {BATCH} streams per arm (budget: +5 µs)"
    );
    println!("| dialect | client alone | through the layer | added |");
    println!("|---|---:|---:|---:|");
    rt.block_on(async {
        let server = MockServer::start(upstream()).await.unwrap();
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let layered = FallbackLayer::new(Chain::new([Route::new("m/1")]))
            .layer(Client::builder(TokioExecutor::new()).build_http());
        for dialect in DIALECTS {
            let url = server.url_for(dialect);
            let body = body(dialect);
            // Warm both pools and code paths.
            timed(client.clone(), &url, body, 50).await;
            timed(layered.clone(), &url, body, 50).await;
            let (mut alone, mut layer) = (f64::INFINITY, f64::INFINITY);
            for round in 0..ROUNDS {
                for arm in [round % 2, 1 - round % 2] {
                    if arm == 0 {
                        let t = timed(client.clone(), &url, body, BATCH).await;
                        alone = alone.min(t.as_secs_f64() / BATCH as f64);
                    } else {
                        let t = timed(layered.clone(), &url, body, BATCH).await;
                        layer = layer.min(t.as_secs_f64() / BATCH as f64);
                    }
                }
                server.upstream().clear_requests();
            }
            println!(
                "| {} | {:.2} µs | {:.2} µs | {:+.2} µs |",
                dialect.as_str(),
                alone * 1e6,
                layer * 1e6,
                (layer - alone) * 1e6
            );
        }
    });
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(MockServer::start(upstream())).unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let layered =
        FallbackLayer::new(Chain::new([Route::new("m/1")])).layer(Client::builder(TokioExecutor::new()).build_http());

    let mut group = c.benchmark_group("stream_first_token");
    for dialect in DIALECTS {
        let url = server.url_for(dialect);
        let body = body(dialect);
        group.bench_function(format!("{}/client alone", dialect.as_str()), |b| {
            b.to_async(&rt)
                .iter_custom(|iters| timed(client.clone(), &url, body, iters))
        });
        group.bench_function(format!("{}/through FallbackLayer", dialect.as_str()), |b| {
            b.to_async(&rt)
                .iter_custom(|iters| timed(layered.clone(), &url, body, iters))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);

fn main() {
    if let Ok(spec) = std::env::var("STREAM_PROFILE") {
        return profile(&spec);
    }
    if std::env::var_os("STREAM_INTERLEAVED").is_some() {
        return interleaved();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
