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

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use llm_fallback::{Chain, FallbackLayer, Route};
use llm_fallback_mock::{Dialect, MockServer, MockUpstream, Reply};
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

async fn first_token<S, B>(svc: S, url: &str, body: &'static str)
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
            return;
        }
    }
    panic!("no first token");
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt
        .block_on(MockServer::start(
            MockUpstream::new().model("m/1", Reply::stream().tokens(["Hel", "lo", " there", "!"])),
        ))
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let layered =
        FallbackLayer::new(Chain::new([Route::new("m/1")])).layer(Client::builder(TokioExecutor::new()).build_http());

    let mut group = c.benchmark_group("stream_first_token");
    for dialect in [
        Dialect::Chat,
        Dialect::Responses,
        Dialect::Messages,
        Dialect::Completions,
    ] {
        let url = server.url_for(dialect);
        let body = body(dialect);
        group.bench_function(format!("{}/client alone", dialect.as_str()), |b| {
            b.to_async(&rt).iter(|| first_token(client.clone(), &url, body))
        });
        group.bench_function(format!("{}/through FallbackLayer", dialect.as_str()), |b| {
            b.to_async(&rt).iter(|| first_token(layered.clone(), &url, body))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
