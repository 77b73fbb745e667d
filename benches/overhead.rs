//! Layer overhead in process: `FallbackService` over an instant inner
//! service against the same inner service alone, in the same run, for
//! 1 KiB and 1 MiB bodies, on the happy path and with two failures before
//! the third route serves; and the happy path with the chain picked by the
//! requested model among 32 model keys (`fallback_by_model`) against the
//! single-chain path (`fallback_happy`), the first part of issue 17's
//! 300 ns budget; and the happy path with the primary route's three
//! deployments chosen by weight (`fallback_weighted`) or by peak-EWMA with
//! two random choices (`fallback_least_latency`), the second part; and all
//! three at once (`fallback_routed`, `fallback_routed_latency`): the chain
//! picked by model among 32 keys, its primary's deployment chosen, and a
//! sticky session (by an `x-session-id` header, 1,024 sessions in turn)
//! looked up and pinned — the whole of the 300 ns budget. The `sticky`
//! group times the sticky part alone (session hash, lookup, choice, pin)
//! against the choice without it, by header and by the leading messages.
//!
//! ```text
//! cargo bench --bench overhead
//! ```
//!
//! On a loaded machine the whole-request times swing by microseconds; count
//! instructions instead (`OVERHEAD_PROFILE`, see [`profile`]), e.g. with
//! 1000 and 2000 requests and the difference divided by 1000:
//!
//! ```text
//! OVERHEAD_PROFILE=weighted OVERHEAD_REQUESTS=2000 valgrind --tool=callgrind target/release/deps/overhead-*
//! ```
//!
//! For the whole-request differences of the routed stacks, alternating
//! batches are steadier than criterion's arms run one after another:
//!
//! ```text
//! OVERHEAD_INTERLEAVED=1 cargo bench --bench overhead
//! ```
//!
//! The inner service reads the whole request body (frame by frame, no copy)
//! and answers a fixed completion, so the difference is what the layer adds:
//! buffering the body, indexing it, one `ReplayBody` and request per
//! attempt, buffering and inspecting each response, the report and its
//! headers. A table of the added time per request follows the groups.

#[path = "support/bodies.rs"]
mod bodies;
#[path = "support/instant.rs"]
mod instant;
#[path = "support/summary.rs"]
mod summary;

use bodies::{chat_body, Flavour, REQUESTED_MODEL};
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use instant::{drain, request, Instant};
use llm_fallback::affinity::Affinity;
use llm_fallback::{Balance, Chain, ChainSet, Deployment, FallbackBuilder, FallbackLayer, Route};
use std::time::SystemTime;
use tower::{Layer, ServiceExt};

const GROUP: &str = "layer_overhead";
const PICK_GROUP: &str = "chain_pick";
const PICK_PARAMETER: &str = "32_keys";
const DEPLOY_GROUP: &str = "deployment_choice";
const DEPLOY_PARAMETER: &str = "3_deployments";
const STICKY_GROUP: &str = "sticky";
const SESSIONS: usize = 1024;
const SESSION: http::HeaderName = http::HeaderName::from_static("x-session-id");
const SIZES: [(&str, usize); 2] = [("1KiB", 1 << 10), ("1MiB", 1 << 20)];

fn chain() -> Chain {
    Chain::new([
        Route::new("a/primary"),
        Route::new("b/secondary"),
        Route::new("c/budget"),
    ])
}

/// [`chain`] with its primary as three deployments of one model, chosen
/// by `balance` (names only: no endpoint or provider edit, so the
/// difference is the choice and its bookkeeping).
fn deployed_chain(balance: Balance) -> Chain {
    Chain::new([
        Route::new("a/primary")
            .deployments([
                Deployment::new("one").weight(2),
                Deployment::new("two"),
                Deployment::new("three"),
            ])
            .balance(balance)
            .balance_seed(1),
        Route::new("b/secondary"),
        Route::new("c/budget"),
    ])
}

/// A set like a gateway's: 16 named chains, 32 model keys (ids and
/// aliases), the requested model keyed to a chain like [`chain`].
fn keyed_chains() -> ChainSet {
    let mut set = ChainSet::new(Chain::new([Route::new("z/default")]));
    for i in 0..16 {
        set = set.chain(format!("chain-{i}"), Chain::new([Route::new(format!("v{i}/m"))]));
    }
    for i in 0..31 {
        set = set.model(format!("vendor-{i}/model-{i}"), format!("chain-{}", i % 16).as_str());
    }
    set.model(REQUESTED_MODEL, chain())
}

/// [`keyed_chains`] with the requested model's chain [`deployed_chain`].
fn keyed_deployed_chains(balance: Balance) -> ChainSet {
    let mut set = ChainSet::new(Chain::new([Route::new("z/default")]));
    for i in 0..16 {
        set = set.chain(format!("chain-{i}"), Chain::new([Route::new(format!("v{i}/m"))]));
    }
    for i in 0..31 {
        set = set.model(format!("vendor-{i}/model-{i}"), format!("chain-{}", i % 16).as_str());
    }
    set.model(REQUESTED_MODEL, deployed_chain(balance))
}

/// The layer of the `fallback_routed` arms: model keys, deployments and
/// sticky sessions by header.
fn routed(balance: Balance) -> llm_fallback::FallbackService<Instant> {
    FallbackBuilder::with_chains(keyed_deployed_chains(balance))
        .affinity(Affinity::header(SESSION))
        .layer()
        .layer(Instant::new(0))
}

/// `SESSIONS` session ids, taken in turn.
fn sessions() -> Vec<http::HeaderValue> {
    (0..SESSIONS)
        .map(|i| http::HeaderValue::from_str(&format!("session-{i:08x}")).unwrap())
        .collect()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group(GROUP);
    for (name, size) in SIZES {
        let body = Bytes::from(chat_body(Flavour::Prose, size));
        group.throughput(Throughput::Elements(1));
        // Baseline: the inner service alone (it still reads the body).
        group.bench_with_input(BenchmarkId::new("inner_alone", name), &body, |b, body| {
            let svc = Instant::new(0);
            b.to_async(&rt).iter(|| {
                let svc = svc.clone();
                async move { drain(svc.oneshot(request(body)).await.unwrap()).await }
            })
        });
        group.bench_with_input(BenchmarkId::new("fallback_happy", name), &body, |b, body| {
            let svc = FallbackLayer::new(chain()).layer(Instant::new(0));
            b.to_async(&rt).iter(|| {
                let svc = svc.clone();
                async move { drain(svc.oneshot(request(body)).await.unwrap()).await }
            })
        });
        group.bench_with_input(BenchmarkId::new("fallback_by_model", name), &body, |b, body| {
            let svc = FallbackLayer::with_chains(keyed_chains()).layer(Instant::new(0));
            b.to_async(&rt).iter(|| {
                let svc = svc.clone();
                async move { drain(svc.oneshot(request(body)).await.unwrap()).await }
            })
        });
        for (function, balance) in [
            ("fallback_weighted", Balance::Weighted),
            ("fallback_least_latency", Balance::LeastLatency),
        ] {
            group.bench_with_input(BenchmarkId::new(function, name), &body, |b, body| {
                let svc = FallbackLayer::new(deployed_chain(balance)).layer(Instant::new(0));
                b.to_async(&rt).iter(|| {
                    let svc = svc.clone();
                    async move { drain(svc.oneshot(request(body)).await.unwrap()).await }
                })
            });
        }
        // The routed stacks, each request with the next of `SESSIONS`
        // session headers; their baseline is the happy path with the same
        // header (which it ignores), so the header's own cost is not counted,
        // and the stack without the pin says what the pin adds.
        let stacks: [(&str, llm_fallback::FallbackService<Instant>); 4] = [
            (
                "fallback_happy_session",
                FallbackLayer::new(chain()).layer(Instant::new(0)),
            ),
            (
                "fallback_routed_unpinned",
                FallbackBuilder::with_chains(keyed_deployed_chains(Balance::Weighted))
                    .layer()
                    .layer(Instant::new(0)),
            ),
            ("fallback_routed", routed(Balance::Weighted)),
            ("fallback_routed_latency", routed(Balance::LeastLatency)),
        ];
        for (function, svc) in stacks {
            group.bench_with_input(BenchmarkId::new(function, name), &body, |b, body| {
                let ids = sessions();
                let mut turn = 0usize;
                b.to_async(&rt).iter(|| {
                    let svc = svc.clone();
                    let mut req = request(body);
                    turn = (turn + 1) % SESSIONS;
                    req.headers_mut().insert(SESSION, ids[turn].clone());
                    async move { drain(svc.oneshot(req).await.unwrap()).await }
                })
            });
        }
        group.bench_with_input(BenchmarkId::new("fallback_two_failures", name), &body, |b, body| {
            let svc = FallbackLayer::new(chain()).layer(Instant::new(2));
            b.to_async(&rt).iter(|| {
                let svc = svc.clone();
                async move {
                    let resp = svc.oneshot(request(body)).await.unwrap();
                    debug_assert_eq!(resp.headers()["x-fallback-attempts"], "3");
                    drain(resp).await
                }
            })
        });
    }
    group.finish();

    // The choice alone: a lookup among 32 model keys against a set
    // without keys (the single-chain path), same run.
    let mut group = c.benchmark_group(PICK_GROUP);
    let single = ChainSet::new(chain());
    let keyed = keyed_chains();
    for (function, set) in [("single_chain", &single), ("by_model", &keyed)] {
        group.bench_with_input(BenchmarkId::new(function, PICK_PARAMETER), set, |b, set| {
            b.iter(|| llm_fallback::__private::pick_chain(std::hint::black_box(set), REQUESTED_MODEL))
        });
    }
    group.finish();

    // The deployment choice alone (the plan's one call per request that
    // enters a route with deployments), by weight and by peak-EWMA.
    let mut group = c.benchmark_group(DEPLOY_GROUP);
    for (function, balance) in [
        ("weighted", Balance::Weighted),
        ("least_latency", Balance::LeastLatency),
    ] {
        let chain = deployed_chain(balance);
        group.bench_with_input(BenchmarkId::new(function, DEPLOY_PARAMETER), &chain, |b, chain| {
            let now = tokio::time::Instant::now();
            b.iter(|| llm_fallback::__private::choose_deployment(std::hint::black_box(chain), now))
        });
    }
    group.finish();

    // The sticky part alone: session hash, pin lookup, choice and pin, by
    // header (1,024 sessions in turn) and by the leading two messages of a
    // 1 KiB body, against the weighted choice without it.
    let mut group = c.benchmark_group(STICKY_GROUP);
    let chain = deployed_chain(Balance::Weighted);
    let now = tokio::time::Instant::now();
    group.bench_function("weighted_choice", |b| {
        b.iter(|| llm_fallback::__private::choose_deployment(std::hint::black_box(&chain), now))
    });
    let body = llm_fallback::__private::index_body(Bytes::from(chat_body(Flavour::Prose, 1 << 10))).unwrap();
    let by_header = Affinity::header(SESSION);
    let headers: Vec<http::HeaderMap> = sessions()
        .into_iter()
        .map(|v| {
            let mut h = http::HeaderMap::new();
            h.insert(SESSION, v);
            h
        })
        .collect();
    group.bench_function("by_header", |b| {
        let mut turn = 0usize;
        b.iter(|| {
            turn = (turn + 1) % SESSIONS;
            llm_fallback::__private::sticky_choice(&by_header, &chain, &headers[turn], &body, now)
        })
    });
    let by_messages = Affinity::leading_messages(2);
    let empty = http::HeaderMap::new();
    group.bench_function("by_leading_messages", |b| {
        b.iter(|| {
            llm_fallback::__private::sticky_choice(&by_messages, &chain, &empty, std::hint::black_box(&body), now)
        })
    });
    group.finish();
}

fn summary(since: SystemTime) {
    println!("\nlayer overhead summary (mean times of this run)");
    println!("| body | inner alone | fallback, happy | added | fallback, 2 failures + success | added |");
    println!("|---|---|---|---|---|---|");
    for (name, _) in SIZES {
        let get = |f: &str| summary::mean_ns(since, GROUP, f, name);
        let (Some(alone), Some(happy), Some(two)) =
            (get("inner_alone"), get("fallback_happy"), get("fallback_two_failures"))
        else {
            continue;
        };
        println!(
            "| {name} | {} | {} | +{} | {} | +{} |",
            summary::time(alone),
            summary::time(happy),
            summary::time(happy - alone),
            summary::time(two),
            summary::time(two - alone),
        );
    }
    println!("\nchain picked by model (32 keys) against the single-chain path, same run");
    println!("| body | fallback, happy | fallback, by model | added by the model choice |");
    println!("|---|---|---|---|");
    for (name, _) in SIZES {
        let get = |f: &str| summary::mean_ns(since, GROUP, f, name);
        if let (Some(happy), Some(by_model)) = (get("fallback_happy"), get("fallback_by_model")) {
            println!(
                "| {name} | {} | {} | {} |",
                summary::time(happy),
                summary::time(by_model),
                signed(by_model - happy),
            );
        }
    }
    let get = |f: &str| summary::mean_ns(since, PICK_GROUP, f, PICK_PARAMETER);
    if let (Some(single), Some(by_model)) = (get("single_chain"), get("by_model")) {
        println!(
            "| the choice alone | {} | {} | +{} |",
            summary::time(single),
            summary::time(by_model),
            summary::time(by_model - single),
        );
    }
}

/// `d` nanoseconds with its sign.
fn signed(d: f64) -> String {
    format!("{}{}", if d < 0.0 { "-" } else { "+" }, summary::time(d.abs()))
}

/// One row per body size: `base`'s time, then each of `arms` with what it
/// adds to `base`.
fn rows_against(since: SystemTime, base: &str, arms: [&str; 2]) {
    for (name, _) in SIZES {
        let get = |f: &str| summary::mean_ns(since, GROUP, f, name);
        let (Some(base), Some(a), Some(b)) = (get(base), get(arms[0]), get(arms[1])) else {
            continue;
        };
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            summary::time(base),
            summary::time(a),
            signed(a - base),
            summary::time(b),
            signed(b - base),
        );
    }
}

/// The deployment rows: each choice against the single-hop path.
fn deployment_summary(since: SystemTime) {
    println!("\ndeployments chosen (3 in the primary route) against the single-hop path, same run");
    println!("| body | fallback, happy | weighted | added | least latency | added |");
    println!("|---|---|---|---|---|---|");
    rows_against(since, "fallback_happy", ["fallback_weighted", "fallback_least_latency"]);
    let get = |f: &str| summary::mean_ns(since, DEPLOY_GROUP, f, DEPLOY_PARAMETER);
    if let (Some(w), Some(l)) = (get("weighted"), get("least_latency")) {
        println!(
            "| the choice alone | | {} | | {} | |",
            summary::time(w),
            summary::time(l)
        );
    }
}

/// The issue 17 budget: model keys, a deployment and a sticky pin at once,
/// against the single-chain path.
fn routing_summary(since: SystemTime) {
    println!("\nchain by model + deployment + sticky pin against the single-chain path, same run (budget 300 ns);");
    println!("both carry the same x-session-id header, which the single-chain path ignores");
    println!("| body | fallback, happy | routed, weighted | added | routed, least latency | added |");
    println!("|---|---|---|---|---|---|");
    rows_against(
        since,
        "fallback_happy_session",
        ["fallback_routed", "fallback_routed_latency"],
    );
    let get = |f: &str| summary::mean_ns(since, STICKY_GROUP, f, "");
    if let (Some(plain), Some(header), Some(messages)) =
        (get("weighted_choice"), get("by_header"), get("by_leading_messages"))
    {
        println!(
            "\nsticky part alone: weighted choice {}, with a pin by header {} ({}), by the leading messages of 1 KiB {} ({})",
            summary::time(plain),
            summary::time(header),
            signed(header - plain),
            summary::time(messages),
            signed(messages - plain),
        );
    }
}

/// `OVERHEAD_PROFILE=<happy|fallback|happy_session|weighted|least_latency|routed|routed_unpinned|routed_latency|sticky_messages>`: only send
/// `OVERHEAD_REQUESTS` (default 2000) 1 KiB requests through that stack,
/// for an instruction counter (`valgrind --tool=callgrind`), which a loaded
/// machine does not disturb as it does wall time.
fn profile(name: &str) {
    let n: usize = std::env::var("OVERHEAD_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = Bytes::from(chat_body(Flavour::Prose, 1 << 10));
    if name == "sticky_messages" {
        // The sticky part alone, by the leading messages of a 1 KiB body.
        let chain = deployed_chain(Balance::Weighted);
        let body = llm_fallback::__private::index_body(body).unwrap();
        let affinity = Affinity::leading_messages(2);
        let (headers, now) = (http::HeaderMap::new(), tokio::time::Instant::now());
        for _ in 0..n {
            std::hint::black_box(llm_fallback::__private::sticky_choice(
                &affinity, &chain, &headers, &body, now,
            ));
        }
        return;
    }
    let sessioned = match name {
        "routed" => Some(Some(Balance::Weighted)),
        "routed_latency" => Some(Some(Balance::LeastLatency)),
        "happy_session" => Some(None),
        "routed_unpinned" => Some(Some(Balance::Weighted)),
        _ => None,
    };
    if let Some(balance) = sessioned {
        let svc = match balance {
            // Model keys and deployments without sticky sessions: what the pin adds to them.
            Some(balance) if name == "routed_unpinned" => tower::util::BoxCloneService::new(
                FallbackBuilder::with_chains(keyed_deployed_chains(balance))
                    .layer()
                    .layer(Instant::new(0)),
            ),
            Some(balance) => tower::util::BoxCloneService::new(routed(balance)),
            None => tower::util::BoxCloneService::new(FallbackLayer::new(chain()).layer(Instant::new(0))),
        };
        let ids = sessions();
        return rt.block_on(async {
            for i in 0..n {
                let mut req = request(&body);
                req.headers_mut().insert(SESSION, ids[i % SESSIONS].clone());
                drain(svc.clone().oneshot(req).await.unwrap()).await;
            }
        });
    }
    let chain = match name {
        "happy" | "fallback" => chain(),
        "weighted" => deployed_chain(Balance::Weighted),
        "least_latency" => deployed_chain(Balance::LeastLatency),
        other => panic!("OVERHEAD_PROFILE={other}: expected happy, fallback, happy_session, weighted, least_latency, routed, routed_unpinned, routed_latency or sticky_messages"),
    };
    // `fallback`: the primary answers OpenRouter's 503 error JSON, the
    // secondary serves (two attempts per request).
    let inner = Instant::new(usize::from(name == "fallback"));
    let svc = FallbackLayer::new(chain).layer(inner.clone());
    rt.block_on(async {
        for _ in 0..n {
            drain(svc.clone().oneshot(request(&body)).await.unwrap()).await;
        }
    });
    let per_request = inner.calls() / n.max(1);
    assert_eq!(per_request, 1 + usize::from(name == "fallback"), "attempts per request");
}

/// `OVERHEAD_INTERLEAVED=1`: the routed stacks against the single-chain
/// path by alternating batches (40 rounds of 2,000 sequential 1 KiB
/// requests per stack, the fastest batch of each kept), so a drift of the
/// machine during the run moves every stack alike — which criterion's
/// one-arm-after-another runs do not give for differences of a few hundred
/// nanoseconds in ~8 µs.
fn interleaved() {
    type Svc = tower::util::BoxCloneService<
        http::Request<http_body_util::Full<Bytes>>,
        http::Response<llm_fallback::ResponseBody<http_body_util::Full<Bytes>>>,
        std::convert::Infallible,
    >;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = Bytes::from(chat_body(Flavour::Prose, 1 << 10));
    let ids = sessions();
    let stacks: Vec<(&str, Svc)> = vec![
        (
            "single chain (with the header)",
            Svc::new(FallbackLayer::new(chain()).layer(Instant::new(0))),
        ),
        (
            "model keys + weighted deployments",
            Svc::new(
                FallbackBuilder::with_chains(keyed_deployed_chains(Balance::Weighted))
                    .layer()
                    .layer(Instant::new(0)),
            ),
        ),
        (
            "model keys + weighted + sticky pin",
            Svc::new(routed(Balance::Weighted)),
        ),
        (
            "model keys + least latency + sticky pin",
            Svc::new(routed(Balance::LeastLatency)),
        ),
    ];
    const BATCH: usize = 2000;
    let mut best = vec![f64::INFINITY; stacks.len()];
    for _ in 0..40 {
        for (i, (_, svc)) in stacks.iter().enumerate() {
            let start = std::time::Instant::now();
            rt.block_on(async {
                for n in 0..BATCH {
                    let mut req = request(&body);
                    req.headers_mut().insert(SESSION, ids[n % SESSIONS].clone());
                    drain(svc.clone().oneshot(req).await.unwrap()).await;
                }
            });
            best[i] = best[i].min(start.elapsed().as_nanos() as f64 / BATCH as f64);
        }
    }
    println!("interleaved batches, fastest of 40 per stack, 1 KiB, ns per request (budget: +300 ns)");
    println!("| stack | per request | added |");
    println!("|---|---:|---:|");
    for (i, (name, _)) in stacks.iter().enumerate() {
        println!("| {name} | {:.0} | {:+.0} |", best[i], best[i] - best[0]);
    }
}

fn main() {
    if let Ok(name) = std::env::var("OVERHEAD_PROFILE") {
        return profile(&name);
    }
    if std::env::var_os("OVERHEAD_INTERLEAVED").is_some() {
        return interleaved();
    }
    let since = SystemTime::now();
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
    if summary::measuring() {
        summary(since);
        deployment_summary(since);
        routing_summary(since);
    }
}
