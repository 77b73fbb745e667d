//! Soak: 20,000 requests over loopback through the layer to the mock
//! upstream, from 64 concurrent tasks, with random faults per model
//! (error statuses, `Retry-After`, hangs cut by 50 ms route timeouts, HTTP
//! 200 bodies that are errors, dropped connections, a model the upstream
//! does not know). Every request must end served with the upstream's bytes
//! untouched, or with the exhaustion answer naming every attempt; the
//! upstream must have seen exactly the attempts the reports list; nothing
//! may panic; and the heap and the runtime's tasks must come back to their
//! baseline once everything is dropped.
//!
//! Its own test binary (a counting global allocator measures the live heap).
//! `SOAK_REQUESTS` changes the number of requests.

mod common;

use bytes::Bytes;
use common::{body_bytes, http_client, post, report};
use http::StatusCode;
use llm_fallback::testing::{MockServer, MockUpstream, Reply, Script};
use llm_fallback::{Chain, FallbackLayer, Outcome, Resolution, Route};
use serde_json::Value;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::{Layer, ServiceExt};

// ===== live heap =====

struct Live;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; the counter is an
// atomic and never allocates.
unsafe impl GlobalAlloc for Live {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Live = Live;

// ===== the faults =====

/// xorshift64*: deterministic faults and choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const MODELS: [&str; 3] = ["a/flaky", "b/flaky", "c/flaky"];
/// Not scripted: the upstream answers `400 ... is not a valid model ID`.
const UNKNOWN: &str = "x/unknown";
const ROUTE_TIMEOUT: Duration = Duration::from_millis(50);

/// The completion a model serves, byte for byte.
fn completion(model: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"id":"gen-soak","provider":"Soak","model":"{model}","object":"chat.completion","created":1,"choices":[{{"index":0,"finish_reason":"stop","message":{{"role":"assistant","content":"served by {model} — ✓"}}}}],"usage":{{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}}}"#
    ))
}

/// A long random script: about half the requests served, the rest failing
/// in every way the layer falls back on.
fn script(model: &str, rng: &mut Rng, len: usize) -> Script {
    Script::sequence((0..len).map(|_| match rng.below(100) {
        0..=52 => Reply::raw(200, "application/json", completion(model)),
        53..=60 => Reply::status(429).retry_after(1 + rng.below(30)),
        61..=65 => Reply::status(500),
        66..=69 => Reply::error(502, "provider_unavailable", "Provider returned error").raw_message("upstream reset"),
        70..=74 => Reply::status(503),
        75..=77 => Reply::status(529),
        78..=82 => Reply::ok_with_error(),
        83..=85 => Reply::no_choices(),
        86..=88 => Reply::finish_reason_error(),
        89..=91 => Reply::status(504),
        92..=93 => Reply::hang(),
        94..=95 => Reply::transport_error(),
        96..=97 => Reply::raw(502, "text/html", "<html>Bad Gateway</html>"),
        _ => Reply::status(408),
    }))
}

fn chains() -> Vec<Chain> {
    let route = |m: &str| Route::new(m).timeout(ROUTE_TIMEOUT);
    vec![
        Chain::new([route(MODELS[0]), route(MODELS[1]), route(MODELS[2])]),
        Chain::new([route(UNKNOWN), route(MODELS[0]), route(MODELS[1])]),
        Chain::new([route(MODELS[2]), route(UNKNOWN), route(MODELS[1]), route(MODELS[0])]),
        Chain::new([route(MODELS[1]), route(MODELS[0])]),
    ]
}

/// What one request ended as.
#[derive(Default)]
struct Totals {
    served: usize,
    exhausted: usize,
    attempts: usize,
}

/// Checks one answer against the contract; returns its attempt count.
async fn check(
    resp: http::Response<llm_fallback::ResponseBody<hyper::body::Incoming>>,
    chain: &Chain,
) -> (bool, usize) {
    let (parts, body) = body_bytes(resp).await;
    let report = report(&parts).clone();
    let attempts = report.attempts();
    let routes: Vec<&str> = chain.routes().iter().map(|r| r.model()).collect();
    match parts.status {
        StatusCode::OK => {
            assert_eq!(report.resolution(), Resolution::Served);
            let served = report.served_model();
            assert_eq!(parts.headers["x-fallback-model"], served);
            assert_eq!(body, completion(served), "the served body is the upstream's, untouched");
            let (last, failed) = attempts.split_last().unwrap();
            assert_eq!(last.outcome(), Outcome::Served);
            assert_eq!(last.model(), served);
            assert!(failed.iter().all(|a| a.outcome().is_failure()), "{report:?}");
            for (a, model) in attempts.iter().zip(&routes) {
                assert_eq!(a.model(), *model, "attempts follow the chain");
            }
            (true, attempts.len())
        }
        StatusCode::BAD_GATEWAY => {
            assert_eq!(report.resolution(), Resolution::Exhausted);
            assert_eq!(attempts.len(), routes.len(), "every route was tried");
            assert!(attempts.iter().all(|a| a.outcome().is_failure()), "{report:?}");
            let json: Value = serde_json::from_slice(&body).unwrap();
            let error = &json["error"];
            assert_eq!(error["code"], "fallback_exhausted");
            let message = error["message"].as_str().unwrap();
            assert!(
                message.starts_with(&format!("all {} fallback route(s) failed", routes.len())),
                "{message}"
            );
            for model in &routes {
                assert!(message.contains(model), "{model} missing from {message}");
            }
            // The shortest upstream `Retry-After` is passed on.
            let shortest = attempts.iter().filter_map(|a| a.retry_after()).min();
            let header = parts
                .headers
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            assert_eq!(header, shortest.map(|d| d.as_secs().max(1)));
            let listed = error["metadata"]["attempts"].as_array().unwrap();
            assert_eq!(listed.len(), routes.len());
            for (entry, model) in listed.iter().zip(&routes) {
                assert_eq!(entry["model"], *model);
            }
            (false, attempts.len())
        }
        other => panic!("unexpected status {other}: {}", String::from_utf8_lossy(&body)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_requests_with_random_faults() {
    let requests: usize = std::env::var("SOAK_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    const TASKS: usize = 64;

    let panics = Arc::new(AtomicUsize::new(0));
    let hook_panics = panics.clone();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        hook_panics.fetch_add(1, Ordering::Relaxed);
        default_hook(info);
    }));

    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();
    let heap_before = LIVE.load(Ordering::Relaxed);
    let started = Instant::now();

    let mut rng = Rng(0x5EED_50A4);
    let mut upstream = MockUpstream::new();
    for model in MODELS {
        upstream = upstream.model(model, script(model, &mut rng, requests * 2));
    }
    let server = MockServer::start(upstream.clone()).await.unwrap();
    let url = server.chat_url();
    let client = http_client();
    let layers: Arc<Vec<_>> = Arc::new(
        chains()
            .into_iter()
            .map(|chain| (chain.clone(), FallbackLayer::new(chain).layer(client.clone())))
            .collect(),
    );

    let mut workers = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let layers = layers.clone();
        let url = url.clone();
        let n = requests / TASKS + usize::from(t < requests % TASKS);
        workers.spawn(async move {
            let mut rng = Rng(0x1234_5678 + t as u64);
            let mut totals = Totals::default();
            for i in 0..n {
                let (chain, svc) = &layers[rng.below(layers.len() as u64) as usize];
                let body = serde_json::json!({
                    "model": "caller/model",
                    "messages": [
                        {"role": "system", "content": "Soak test — ünïcødé ✓"},
                        {"role": "user", "content": format!("request {t}/{i}: say \"hi\"\n")}
                    ],
                    "temperature": 0.2
                })
                .to_string();
                let resp = svc.clone().oneshot(post(&url, body)).await.unwrap();
                let (served, attempts) = check(resp, chain).await;
                if served {
                    totals.served += 1;
                } else {
                    totals.exhausted += 1;
                }
                totals.attempts += attempts;
            }
            totals
        });
    }
    let mut totals = Totals::default();
    while let Some(done) = workers.join_next().await {
        let t = done.expect("no worker panicked");
        totals.served += t.served;
        totals.exhausted += t.exhausted;
        totals.attempts += t.attempts;
    }
    let elapsed = started.elapsed();

    assert_eq!(totals.served + totals.exhausted, requests, "no request lost");
    let received = upstream.requests().len();
    assert_eq!(
        received, totals.attempts,
        "the upstream saw exactly the attempts the reports list"
    );
    assert!(
        totals.served > requests / 2 && totals.exhausted > 0,
        "both endings were exercised"
    );
    let heap_peak_hint = LIVE.load(Ordering::Relaxed) - heap_before;

    // Tear down: the layers (and their client's pool), the server (its hung
    // connections included), the mock's recordings.
    drop(layers);
    drop(client);
    drop(server);
    upstream.clear_requests();
    drop(upstream);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.num_alive_tasks() > tasks_before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let tasks_after = metrics.num_alive_tasks();
    let heap_after = LIVE.load(Ordering::Relaxed) - heap_before;
    println!(
        "soak: {requests} requests in {elapsed:.1?} from {TASKS} tasks: {} served, {} exhausted, {} upstream requests \
         ({:.2} attempts per request); live heap {:.1} MiB at the end of the run, {:+} bytes after teardown; \
         tasks {tasks_before} before, {tasks_after} after; {} panics",
        totals.served,
        totals.exhausted,
        received,
        totals.attempts as f64 / requests as f64,
        heap_peak_hint as f64 / (1 << 20) as f64,
        heap_after,
        panics.load(Ordering::Relaxed)
    );
    assert_eq!(panics.load(Ordering::Relaxed), 0, "something panicked");
    assert_eq!(tasks_after, tasks_before, "tasks left running after the run");
    // The runtime keeps some grown tables (I/O driver slabs, timer wheel);
    // the run's own state (requests, bodies, reports, connections) is gone.
    assert!(
        heap_after < 1 << 20,
        "{heap_after} bytes still live after the run (it peaked at {heap_peak_hint})"
    );
}
