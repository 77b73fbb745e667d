//! The shared health store's cost on the request path, and how long a
//! cooldown takes to reach another replica, against a real `redis-server`
//! on loopback (started here, on a free port; the bench says so and stops
//! when the binary is missing).
//!
//! ```text
//! cargo bench --bench health_store
//! ```
//!
//! - `health_store/{cooldowns,redis}`: a request through the layer (three
//!   routes, an instant inner service, 1 KiB body) with the in-memory
//!   `Cooldowns` and with `RedisHealth`, in one run; the difference is what
//!   sharing adds to a request. `RedisHealth` is built outside the bench's
//!   runtime, so its background task (which sends each outcome to Redis)
//!   runs on its own thread and is not counted as request time.
//! - Propagation: 100 trials of one store recording a `Retry-After` and
//!   another seeing it, median and max, at the default 200 ms poll and at
//!   50 ms.

#[path = "support/bodies.rs"]
mod bodies;
#[path = "support/instant.rs"]
mod instant;
#[path = "../tests/support/redis_server.rs"]
mod redis_server;

use bodies::{chat_body, Flavour};
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use instant::{drain, request, Instant};
use llm_fallback::health::{Cooldowns, HealthEvent, HealthStore, RedisHealth};
use llm_fallback::{Chain, FallbackLayer, Route};
use redis_server::RedisServer;
use std::sync::Arc;
use std::time::Duration;
use tower::{Layer, ServiceExt};

const GROUP: &str = "health_store";

fn chain() -> Chain {
    Chain::new([
        Route::new("a/primary"),
        Route::new("b/secondary"),
        Route::new("c/budget"),
    ])
}

fn redis(server: &RedisServer, prefix: &str, poll: Duration) -> Arc<RedisHealth> {
    let h = RedisHealth::builder(server.url())
        .key_prefix(prefix)
        .poll_interval(poll)
        .build()
        .expect("the store builds");
    Arc::new(h)
}

fn bench(c: &mut Criterion, server: &RedisServer) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = Bytes::from(chat_body(Flavour::Prose, 1 << 10));
    let mut group = c.benchmark_group(GROUP);
    group.throughput(Throughput::Elements(1));
    group.bench_with_input(BenchmarkId::new("cooldowns", "1KiB"), &body, |b, body| {
        let svc = FallbackLayer::builder(chain())
            .cooldowns(Cooldowns::new())
            .layer()
            .layer(Instant::new(0));
        b.to_async(&rt).iter(|| {
            let svc = svc.clone();
            async move { drain(svc.oneshot(request(body)).await.unwrap()).await }
        })
    });
    // Built outside the runtime: its task runs on a thread of its own.
    let store = redis(server, "bench-hot", Duration::from_millis(200));
    let wait = std::time::Instant::now();
    while !store.connected() && wait.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(store.connected(), "the store connects to the bench's redis-server");
    group.bench_with_input(BenchmarkId::new("redis", "1KiB"), &body, |b, body| {
        let svc = FallbackLayer::builder(chain())
            .health_store(store.clone())
            .layer()
            .layer(Instant::new(0));
        b.to_async(&rt).iter(|| {
            let svc = svc.clone();
            async move { drain(svc.oneshot(request(body)).await.unwrap()).await }
        })
    });
    group.finish();
    println!(
        "redis store: {} changes dropped (queue full) during the bench",
        store.dropped()
    );
}

/// How long a cooldown recorded by one replica takes to show at another.
fn propagation(server: &RedisServer, poll: Duration) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let prefix = format!("bench-prop-{}", poll.as_millis());
        let (a, b) = (redis(server, &prefix, poll), redis(server, &prefix, poll));
        for h in [&a, &b] {
            let mut n = 0;
            while !h.sync().await {
                n += 1;
                assert!(n < 100, "the store connects");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let mut took = Vec::with_capacity(100);
        for i in 0..100 {
            let route = format!("m/{i}");
            let event = HealthEvent::Failure {
                retry_after: Some(Duration::from_secs(30)),
            };
            let start = tokio::time::Instant::now();
            a.record(&route, event, start);
            loop {
                if b.cooling(tokio::time::Instant::now()).iter().any(|(r, _)| *r == route) {
                    took.push(start.elapsed());
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(5), "trial {i} did not propagate");
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            // Trials start at spread-out points of the poll cycle.
            tokio::time::sleep(poll * ((i * 37) % 100) / 100).await;
        }
        took.sort();
        println!(
            "cooldown propagation, poll {:?}, 100 trials: median {:.1} ms, max {:.1} ms, min {:.1} ms",
            poll,
            took[49].as_secs_f64() * 1e3,
            took[99].as_secs_f64() * 1e3,
            took[0].as_secs_f64() * 1e3,
        );
    });
}

fn main() {
    let Some(server) = RedisServer::start() else {
        println!("health_store bench skipped: redis-server is not installed");
        return;
    };
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &server);
    c.final_summary();
    for poll in [Duration::from_millis(200), Duration::from_millis(50)] {
        propagation(&server, poll);
    }
}
