//! End to end over loopback: a hyper client → an axum proxy that forwards to
//! the mock upstream (a real HTTP server), with and without `FallbackLayer`
//! in the proxy's stack, sequential and 32 requests in flight.
//!
//! ```text
//! cargo bench --bench e2e
//! ```
//!
//! Both proxies run the same stack (set the upstream URI, a hyper-util
//! legacy client, errors to 502); the second has the layer in the
//! forwarding path, with a one-route chain that rewrites the model. The
//! client asks the plain proxy for the route's model directly, so the mock
//! upstream receives byte-identical bodies from both and does the same work. The
//! criterion groups give mean times; then a closed-loop run (both stacks
//! alternating in rounds, so they share the machine's noise) prints the
//! throughput and the p50/p99 latency of each and the layer's cost.
//! `E2E_REQUESTS` sets the requests per stack and mode (default 20000).

#[path = "support/bodies.rs"]
mod bodies;

use axum::error_handling::HandleError;
use bodies::{chat_body, with_model, Flavour, NEW_MODEL, REQUESTED_MODEL};
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use llm_fallback::testing::{MockServer, MockUpstream, Reply};
use llm_fallback::{Chain, FallbackLayer, Route};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tower::ServiceBuilder;

const SIZES: [(&str, usize); 2] = [("1KiB", 1 << 10), ("64KiB", 64 << 10)];
const CONCURRENCY: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stack {
    Plain,
    Fallback,
}

impl Stack {
    fn name(self) -> &'static str {
        match self {
            Stack::Plain => "without_layer",
            Stack::Fallback => "with_layer",
        }
    }
}

async fn bad_gateway(e: hyper_util::client::legacy::Error) -> (StatusCode, String) {
    (StatusCode::BAD_GATEWAY, e.to_string())
}

/// Starts a proxy on 127.0.0.1 forwarding chat requests to `upstream`.
async fn proxy(stack: Stack, upstream: Uri) -> SocketAddr {
    let set_uri = move |mut req: Request<axum::body::Body>| {
        *req.uri_mut() = upstream.clone();
        req
    };
    let router = match stack {
        Stack::Plain => {
            let client: Client<HttpConnector, axum::body::Body> = Client::builder(TokioExecutor::new()).build_http();
            let svc = HandleError::new(ServiceBuilder::new().map_request(set_uri).service(client), bad_gateway);
            axum::Router::new().route_service("/api/v1/chat/completions", svc)
        }
        Stack::Fallback => {
            let client: Client<HttpConnector, llm_fallback::ReplayBody> =
                Client::builder(TokioExecutor::new()).build_http();
            let chain = Chain::new([Route::new(NEW_MODEL)]);
            let svc = HandleError::new(
                ServiceBuilder::new()
                    .map_request(set_uri)
                    .layer(FallbackLayer::new(chain))
                    .service(client),
                bad_gateway,
            );
            axum::Router::new().route_service("/api/v1/chat/completions", svc)
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// One request body per stack: the layer's asks for [`REQUESTED_MODEL`] and
/// is rewritten to [`NEW_MODEL`]; the plain one asks for [`NEW_MODEL`]
/// itself. Either way the upstream receives the same bytes.
#[derive(Clone)]
struct Bodies {
    plain: Bytes,
    layer: Bytes,
}

impl Bodies {
    fn new(size: usize) -> Bodies {
        let body = chat_body(Flavour::Prose, size);
        Bodies {
            plain: Bytes::from(with_model(&body, NEW_MODEL)),
            layer: Bytes::from(body),
        }
    }

    fn of(&self, stack: Stack) -> &Bytes {
        match stack {
            Stack::Plain => &self.plain,
            Stack::Fallback => &self.layer,
        }
    }
}

struct Setup {
    _server: MockServer,
    client: Client<HttpConnector, Full<Bytes>>,
    plain: Uri,
    fallback: Uri,
}

impl Setup {
    async fn start() -> Setup {
        let upstream = MockUpstream::new().model(NEW_MODEL, Reply::ok());
        let server = MockServer::start(upstream).await.unwrap();
        let target: Uri = server.chat_url().parse().unwrap();
        let plain = proxy(Stack::Plain, target.clone()).await;
        let fallback = proxy(Stack::Fallback, target).await;
        let uri = |addr: SocketAddr| format!("http://{addr}/api/v1/chat/completions").parse().unwrap();
        Setup {
            _server: server,
            client: Client::builder(TokioExecutor::new()).build_http(),
            plain: uri(plain),
            fallback: uri(fallback),
        }
    }

    fn uri(&self, stack: Stack) -> &Uri {
        match stack {
            Stack::Plain => &self.plain,
            Stack::Fallback => &self.fallback,
        }
    }

    /// One request through `stack`, its response read to the end.
    async fn send(&self, stack: Stack, bodies: &Bodies) {
        let req = Request::post(self.uri(stack).clone())
            .header("content-type", "application/json")
            .header("authorization", "Bearer sk-bench")
            .body(Full::new(bodies.of(stack).clone()))
            .unwrap();
        let resp = self.client.request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let _ = resp.into_body().collect().await.unwrap();
    }

    /// The mock records every request; forget them so memory stays flat.
    fn forget(&self) {
        self._server.upstream().clear_requests();
    }
}

/// A multi-threaded runtime with one worker per core (2 here), or
/// `E2E_WORKERS` of them (`1`: one current-thread runtime).
fn runtime() -> tokio::runtime::Runtime {
    let workers: usize = std::env::var("E2E_WORKERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder.enable_all().build().unwrap()
}

fn bench(c: &mut Criterion, rt: &tokio::runtime::Runtime, setup: &'static Setup) {
    for (name, size) in SIZES {
        let body = Bodies::new(size);
        let mut group = c.benchmark_group(format!("e2e_sequential_{name}"));
        group.throughput(Throughput::Elements(1));
        for stack in [Stack::Plain, Stack::Fallback] {
            group.bench_with_input(BenchmarkId::from_parameter(stack.name()), &body, |b, body| {
                b.to_async(rt).iter(|| setup.send(stack, body));
            });
            setup.forget();
        }
        group.finish();

        let mut group = c.benchmark_group(format!("e2e_concurrent{CONCURRENCY}_{name}"));
        group.throughput(Throughput::Elements(CONCURRENCY as u64));
        for stack in [Stack::Plain, Stack::Fallback] {
            group.bench_with_input(BenchmarkId::from_parameter(stack.name()), &body, |b, body| {
                b.to_async(rt).iter(|| async {
                    let tasks: Vec<_> = (0..CONCURRENCY)
                        .map(|_| {
                            let body = body.clone();
                            tokio::spawn(async move { setup.send(stack, &body).await })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                });
            });
            setup.forget();
        }
        group.finish();
    }
}

// ===== closed-loop run: throughput and tail latency =====

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    busy: Duration,
    cpu: Duration,
}

/// CPU time used by the whole process (client, both proxies and the mock
/// share it): per request, it is what throughput costs on a saturated
/// machine, and other processes' load does not inflate it.
fn cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the call only writes it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Tally {
    fn cpu_per_request(&self) -> Duration {
        self.cpu / self.latencies.len() as u32
    }

    fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.busy.as_secs_f64()
    }

    fn quantile(&mut self, q: f64) -> Duration {
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() as f64 * q).ceil() as usize).clamp(1, self.latencies.len()) - 1;
        self.latencies[i]
    }
}

/// `count` requests through `stack` from `workers` tasks in a closed loop;
/// adds each latency and the wall time to `tally`.
async fn round(setup: &'static Setup, stack: Stack, body: &Bodies, workers: usize, count: usize, tally: &mut Tally) {
    let started = Instant::now();
    let cpu = cpu_time();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let body = body.clone();
            let n = count / workers + usize::from(w < count % workers);
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(n);
                for _ in 0..n {
                    let t = Instant::now();
                    setup.send(stack, &body).await;
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    for t in tasks {
        tally.latencies.extend(t.await.unwrap());
    }
    tally.busy += started.elapsed();
    tally.cpu += cpu_time() - cpu;
    setup.forget();
}

fn closed_loop(rt: &tokio::runtime::Runtime, setup: &'static Setup) {
    let requests: usize = std::env::var("E2E_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    const ROUNDS: usize = 10;
    println!("\nend to end over loopback, closed loop: {requests} requests per stack and mode, in {ROUNDS} alternating rounds");
    println!("| body | in flight | stack | req/s | p50 | p99 | CPU/req | throughput cost | p99 cost | CPU cost |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (name, size) in SIZES {
        let body = Bodies::new(size);
        for workers in [1, CONCURRENCY] {
            let (mut plain, mut fallback) = (Tally::default(), Tally::default());
            rt.block_on(async {
                // Warm the connection pools.
                round(setup, Stack::Plain, &body, workers, workers * 20, &mut Tally::default()).await;
                round(
                    setup,
                    Stack::Fallback,
                    &body,
                    workers,
                    workers * 20,
                    &mut Tally::default(),
                )
                .await;
                for r in 0..ROUNDS {
                    let order = if r % 2 == 0 {
                        [Stack::Plain, Stack::Fallback]
                    } else {
                        [Stack::Fallback, Stack::Plain]
                    };
                    for stack in order {
                        let tally = if stack == Stack::Plain {
                            &mut plain
                        } else {
                            &mut fallback
                        };
                        round(setup, stack, &body, workers, requests / ROUNDS, tally).await;
                    }
                }
            });
            let (tp, tf) = (plain.throughput(), fallback.throughput());
            let (p50p, p99p) = (plain.quantile(0.50), plain.quantile(0.99));
            let (p50f, p99f) = (fallback.quantile(0.50), fallback.quantile(0.99));
            let (cp, cf) = (plain.cpu_per_request(), fallback.cpu_per_request());
            let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
            println!(
                "| {name} | {workers} | without layer | {tp:.0} | {} | {} | {:.1} µs | | | |",
                us(p50p),
                us(p99p),
                cp.as_secs_f64() * 1e6
            );
            println!(
                "| {name} | {workers} | with layer | {tf:.0} | {} | {} | {:.1} µs | {:+.1} % | {:+.1} % | {:+.1} % |",
                us(p50f),
                us(p99f),
                cf.as_secs_f64() * 1e6,
                (1.0 - tf / tp) * 100.0,
                (p99f.as_secs_f64() / p99p.as_secs_f64() - 1.0) * 100.0,
                (cf.as_secs_f64() / cp.as_secs_f64() - 1.0) * 100.0
            );
        }
    }
}

fn main() {
    let rt = runtime();
    let setup: &'static Setup = Box::leak(Box::new(rt.block_on(Setup::start())));
    // Both stacks answer, and the layer really rewrites the model.
    rt.block_on(async {
        let body = Bodies::new(1 << 10);
        setup.send(Stack::Plain, &body).await;
        setup.send(Stack::Fallback, &body).await;
        let sent = setup._server.upstream().requests();
        assert_eq!(sent.len(), 2);
        assert_eq!(
            sent[0].body, sent[1].body,
            "the upstream sees the same bytes from both stacks"
        );
        assert_eq!(sent[1].model.as_deref(), Some(NEW_MODEL));
        assert!(body
            .layer
            .starts_with(format!(r#"{{"model":"{REQUESTED_MODEL}""#).as_bytes()));
        setup.forget();
    });
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &rt, setup);
    c.final_summary();
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test" || a == "--list") {
        closed_loop(&rt, setup);
    }
}
