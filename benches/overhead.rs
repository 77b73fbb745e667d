//! Layer overhead in process: `FallbackService` over an instant inner service
//! against the same inner service alone, in the same run.
//!
//! ```text
//! cargo bench --bench overhead
//! ```

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use llm_fallback::{Chain, FallbackLayer, Route};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tower::{Layer, ServiceExt};

const OK: &str = r#"{"id":"gen-1","provider":"OpenAI","model":"openai/gpt-4o-mini","object":"chat.completion","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"Hello there, how can I help?"}}],"usage":{"prompt_tokens":14,"completion_tokens":7,"total_tokens":21}}"#;
const DOWN: &str =
    r#"{"error":{"code":503,"message":"No available provider","metadata":{"error_type":"provider_unavailable"}}}"#;

fn body_of(size: usize) -> Bytes {
    let turn = r#"{"role":"user","content":"Tell me about the \"model\" of the universe — ünïcødé ✓\nwith several lines\nof text."},"#;
    let mut s = String::from(r#"{"model":"caller/model","messages":["#);
    while s.len() + turn.len() < size {
        s.push_str(turn);
    }
    s.push_str(r#"{"role":"user","content":"end"}],"temperature":0.3}"#);
    Bytes::from(s)
}

/// An upstream that reads the whole body and answers at once; of every
/// `fail_first + 1` calls, the first `fail_first` answer 503.
#[derive(Clone)]
struct Upstream {
    calls: Arc<AtomicUsize>,
    fail_first: usize,
}

fn inner(fail_first: usize) -> Upstream {
    Upstream {
        calls: Arc::default(),
        fail_first,
    }
}

impl<B> tower::Service<Request<B>> for Upstream
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: std::fmt::Debug,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let fail = self.fail_first > 0 && n % (self.fail_first + 1) < self.fail_first;
        Box::pin(async move {
            let _ = req.into_body().collect().await.unwrap();
            let (status, text) = if fail { (503, DOWN) } else { (200, OK) };
            Ok(Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(text.as_bytes())))
                .unwrap())
        })
    }
}

fn request(body: &Bytes) -> Request<Full<Bytes>> {
    Request::post("http://upstream/api/v1/chat/completions")
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(Full::new(body.clone()))
        .unwrap()
}

async fn drain<B: Body>(resp: Response<B>)
where
    B::Error: std::fmt::Debug,
{
    let _ = resp.into_body().collect().await.unwrap();
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let chain = Chain::new([
        Route::new("a/primary"),
        Route::new("b/secondary"),
        Route::new("c/budget"),
    ]);
    let mut group = c.benchmark_group("layer_overhead");
    for (name, size) in [("1KiB", 1024), ("1MiB", 1024 * 1024)] {
        let body = body_of(size);
        group.throughput(Throughput::Bytes(body.len() as u64));
        // Baseline: the inner service alone (it still reads the body).
        group.bench_with_input(BenchmarkId::new("inner_alone", name), &body, |b, body| {
            let svc = inner(0);
            b.to_async(&rt).iter(|| {
                let svc = svc.clone();
                async move { drain(svc.oneshot(request(body)).await.unwrap()).await }
            })
        });
        group.bench_with_input(BenchmarkId::new("fallback_happy", name), &body, |b, body| {
            let svc = FallbackLayer::new(chain.clone()).layer(inner(0));
            b.to_async(&rt).iter(|| {
                let svc = svc.clone();
                async move { drain(svc.oneshot(request(body)).await.unwrap()).await }
            })
        });
        group.bench_with_input(BenchmarkId::new("fallback_two_failures", name), &body, |b, body| {
            let svc = FallbackLayer::new(chain.clone()).layer(inner(2));
            b.to_async(&rt).iter(|| {
                let svc = svc.clone();
                async move { drain(svc.oneshot(request(body)).await.unwrap()).await }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
