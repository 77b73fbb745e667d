//! Time to the first streamed byte over loopback, through `FallbackLayer`
//! against the same client alone, in the same run.
//!
//! ```text
//! cargo bench --bench streaming
//! ```
//!
//! The mock upstream streams a chat completion; each iteration sends a
//! `"stream": true` request and stops at the first body frame that carries
//! a `data:` chunk. The layer holds the response until that chunk (its
//! commit point), so the difference is what committing adds to the first
//! byte: the target is "within noise" of the client alone.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use llm_fallback::{Chain, FallbackLayer, Route};
use llm_fallback_mock::{MockServer, MockUpstream, Reply};
use tower::{Layer, Service, ServiceExt};

const BODY: &str = r#"{"model":"m/1","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

async fn first_data<S, B>(svc: S, url: &str)
where
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .unwrap();
    let mut body = svc.oneshot(req).await.unwrap().into_body();
    while let Some(frame) = body.frame().await {
        if frame
            .unwrap()
            .data_ref()
            .is_some_and(|d| d.windows(5).any(|w| w == b"data:"))
        {
            return;
        }
    }
    panic!("no data chunk");
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
    let url = server.chat_url();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let layered =
        FallbackLayer::new(Chain::new([Route::new("m/1")])).layer(Client::builder(TokioExecutor::new()).build_http());

    let mut group = c.benchmark_group("stream_first_byte");
    group.bench_function("client alone", |b| {
        b.to_async(&rt).iter(|| first_data(client.clone(), &url))
    });
    group.bench_function("through FallbackLayer", |b| {
        b.to_async(&rt).iter(|| first_data(layered.clone(), &url))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
