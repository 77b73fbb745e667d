//! End to end over loopback: a hyper client → an axum proxy that forwards to
//! the mock upstream (a real HTTP server), with and without `FallbackLayer`
//! in the proxy's stack, sequential and 32 requests in flight.
//!
//! ```text
//! cargo bench --bench e2e
//! ```
//!
//! The proxies run the same stack (set the upstream URI, a hyper-util
//! legacy client, errors to 502); one has the layer in the forwarding path,
//! with a one-route chain that rewrites the model. A third does only what
//! the layer's design must (buffer the request, rewrite the model, buffer
//! the response): the floor any implementation of it pays. The client asks
//! the plain proxy for the route's model directly, so the mock upstream
//! receives byte-identical bodies from all three and does the same work. The
//! criterion groups give mean times; then a closed-loop run (the stacks
//! alternating in rounds, so they share the machine's noise) prints the
//! throughput and the p50/p99 latency of each and the layer's cost.
//! `E2E_REQUESTS` sets the requests per stack and mode (default 20000).
//! `E2E_PROFILE=with_layer` (or `without_layer`, `buffer_and_rewrite`) only
//! sends `E2E_REQUESTS` sequential 1 KiB requests through that stack, for a
//! profiler.

#[path = "support/bodies.rs"]
mod bodies;

use axum::error_handling::HandleError;
use bodies::{chat_body, with_model, Flavour, NEW_MODEL, REQUESTED_MODEL};
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use http::header::CONTENT_LENGTH;
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use llm_fallback::{Chain, FallbackLayer, Route};
use llm_fallback_mock::{MockServer, MockUpstream, Reply};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tower::ServiceBuilder;

const SIZES: [(&str, usize); 2] = [("1KiB", 1 << 10), ("64KiB", 64 << 10)];
const CONCURRENCY: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stack {
    /// The proxy streams request and response through.
    Plain,
    /// The least the layer's design must do: buffer the request, rewrite the
    /// model (`__private::rewrite_model`), send the `ReplayBody`, buffer the
    /// response. No policy, report, spans or headers: the floor.
    Floor,
    /// `FallbackLayer`.
    Fallback,
}

const STACKS: [Stack; 3] = [Stack::Plain, Stack::Floor, Stack::Fallback];

impl Stack {
    fn name(self) -> &'static str {
        match self {
            Stack::Plain => "without_layer",
            Stack::Floor => "buffer_and_rewrite",
            Stack::Fallback => "with_layer",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Stack::Plain => "without layer",
            Stack::Floor => "buffer + rewrite only",
            Stack::Fallback => "with layer",
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
        Stack::Floor => {
            let client: Client<HttpConnector, llm_fallback::ReplayBody> =
                Client::builder(TokioExecutor::new()).build_http();
            let route = std::sync::Arc::new(llm_fallback::__private::Compiled::new(llm_fallback::Route::new(
                NEW_MODEL,
            )));
            let svc = tower::service_fn(move |req: Request<axum::body::Body>| {
                let client = client.clone();
                let route = route.clone();
                let (mut parts, body) = set_uri(req).into_parts();
                async move {
                    let bytes = body.collect().await?.to_bytes();
                    let replay = llm_fallback::__private::rewrite_for(&bytes, &route)?;
                    parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(replay.len()));
                    let (head, body) = client.request(Request::from_parts(parts, replay)).await?.into_parts();
                    let bytes = body.collect().await?.to_bytes();
                    Ok::<_, axum::BoxError>(http::Response::from_parts(head, Full::new(bytes)))
                }
            });
            let svc = HandleError::new(svc, |e: axum::BoxError| async move {
                (StatusCode::BAD_GATEWAY, e.to_string())
            });
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

/// One request body per stack: the layer's (and the floor's) asks for
/// [`REQUESTED_MODEL`] and is rewritten to [`NEW_MODEL`]; the plain one asks
/// for [`NEW_MODEL`] itself. Either way the upstream receives the same bytes.
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
            Stack::Floor | Stack::Fallback => &self.layer,
        }
    }
}

struct Setup {
    _server: MockServer,
    client: Client<HttpConnector, Full<Bytes>>,
    uris: [Uri; 3],
}

impl Setup {
    async fn start() -> Setup {
        let upstream = MockUpstream::new().model(NEW_MODEL, Reply::ok());
        let server = MockServer::start(upstream).await.unwrap();
        let target: Uri = server.chat_url().parse().unwrap();
        let mut uris = Vec::new();
        for stack in STACKS {
            let addr = proxy(stack, target.clone()).await;
            uris.push(format!("http://{addr}/api/v1/chat/completions").parse().unwrap());
        }
        Setup {
            _server: server,
            client: Client::builder(TokioExecutor::new()).build_http(),
            uris: uris.try_into().unwrap(),
        }
    }

    fn uri(&self, stack: Stack) -> &Uri {
        &self.uris[STACKS.iter().position(|s| *s == stack).unwrap()]
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
        for stack in STACKS {
            group.bench_with_input(BenchmarkId::from_parameter(stack.name()), &body, |b, body| {
                b.to_async(rt).iter(|| setup.send(stack, body));
            });
            setup.forget();
        }
        group.finish();

        let mut group = c.benchmark_group(format!("e2e_concurrent{CONCURRENCY}_{name}"));
        group.throughput(Throughput::Elements(CONCURRENCY as u64));
        for stack in STACKS {
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
    let requests = requests();
    const ROUNDS: usize = 10;
    println!("\nend to end over loopback, closed loop: {requests} requests per stack and mode, in {ROUNDS} alternating rounds");
    println!("| body | in flight | stack | req/s | p50 | p99 | CPU/req | throughput cost | p99 cost | CPU cost |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (name, size) in SIZES {
        let body = Bodies::new(size);
        for workers in [1, CONCURRENCY] {
            let mut tallies: [Tally; 3] = Default::default();
            rt.block_on(async {
                // Warm the connection pools.
                for stack in STACKS {
                    round(setup, stack, &body, workers, workers * 20, &mut Tally::default()).await;
                }
                for r in 0..ROUNDS {
                    // Each stack goes first, second and third in turn.
                    for k in 0..STACKS.len() {
                        let i = (r + k) % STACKS.len();
                        round(setup, STACKS[i], &body, workers, requests / ROUNDS, &mut tallies[i]).await;
                    }
                }
            });
            let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
            let tp = tallies[0].throughput();
            let p99p = tallies[0].quantile(0.99);
            let cp = tallies[0].cpu_per_request();
            for (stack, tally) in STACKS.iter().zip(&mut tallies) {
                let (t, p50, p99, cpu) = (
                    tally.throughput(),
                    tally.quantile(0.50),
                    tally.quantile(0.99),
                    tally.cpu_per_request(),
                );
                let costs = if *stack == Stack::Plain {
                    " | | |".to_owned()
                } else {
                    format!(
                        " {:+.1} % | {:+.1} % | {:+.1} % |",
                        (1.0 - t / tp) * 100.0,
                        (p99.as_secs_f64() / p99p.as_secs_f64() - 1.0) * 100.0,
                        (cpu.as_secs_f64() / cp.as_secs_f64() - 1.0) * 100.0
                    )
                };
                println!(
                    "| {name} | {workers} | {} | {t:.0} | {} | {} | {:.1} µs |{costs}",
                    stack.label(),
                    us(p50),
                    us(p99),
                    cpu.as_secs_f64() * 1e6
                );
            }
        }
    }
}

/// `E2E_REQUESTS`, or 20,000.
fn requests() -> usize {
    std::env::var("E2E_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000)
}

/// `E2E_PROFILE=<stack name>`: only send `E2E_REQUESTS` sequential 1 KiB
/// requests through that stack, then exit; for profilers (`valgrind
/// --tool=callgrind`, `perf stat`), which then see one stack alone.
fn profile(rt: &tokio::runtime::Runtime, setup: &'static Setup, name: &str) {
    let stack = *STACKS
        .iter()
        .find(|s| s.name() == name)
        .unwrap_or_else(|| panic!("E2E_PROFILE={name}: expected one of {:?}", STACKS.map(Stack::name)));
    let requests = requests();
    let body = Bodies::new(1 << 10);
    rt.block_on(async {
        for i in 0..requests {
            setup.send(stack, &body).await;
            if i % 1000 == 999 {
                setup.forget();
            }
        }
    });
}

fn main() {
    let rt = runtime();
    let setup: &'static Setup = Box::leak(Box::new(rt.block_on(Setup::start())));
    if let Ok(name) = std::env::var("E2E_PROFILE") {
        return profile(&rt, setup, &name);
    }
    // Every stack answers, and the layer really rewrites the model.
    rt.block_on(async {
        let body = Bodies::new(1 << 10);
        for stack in STACKS {
            setup.send(stack, &body).await;
        }
        let sent = setup._server.upstream().requests();
        assert_eq!(sent.len(), 3);
        for other in &sent[1..] {
            assert_eq!(
                sent[0].body, other.body,
                "the upstream sees the same bytes from every stack"
            );
        }
        assert_eq!(sent[2].model.as_deref(), Some(NEW_MODEL));
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
