//! `RedisHealth` against a real `redis-server` on a loopback port (see
//! `support/redis_server.rs`): a fleet of stores in one process, each its
//! own "replica". Redis keeps real time, so waits are bounded loops that
//! end as soon as the condition holds.

mod common;
#[path = "support/redis_server.rs"]
mod redis_server;

use common::*;
use http::{Request, Response};
use llm_fallback::health::{Admission, Breaker, Cooldowns, HealthEvent, HealthStore, RedisHealth};
use llm_fallback::{Chain, FallbackLayer, FallbackReport, Outcome, Route, SkipReason};
use llm_fallback_mock::{MockUpstream, Reply};
use redis_server::RedisServer;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

const URL: &str = "http://mock/api/v1/chat/completions";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A key prefix of its own per store group, so tests never share keys.
fn prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn store(server: &RedisServer, prefix: &str, cooldowns: Cooldowns) -> Arc<RedisHealth> {
    let health = RedisHealth::builder(server.url())
        .key_prefix(prefix)
        .poll_interval(ms(50))
        .timeout(ms(200))
        .cooldowns(cooldowns)
        .build()
        .unwrap();
    Arc::new(health)
}

/// Waits (at most `limit`) until `cond` holds; how long it took.
async fn within(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(ms(2)).await;
    }
    cond().then(|| start.elapsed())
}

async fn connected(h: &RedisHealth) {
    for _ in 0..100 {
        if h.sync().await {
            return;
        }
        tokio::time::sleep(ms(20)).await;
    }
    panic!("the store did not connect to redis within ~2 s");
}

async fn ask<S>(svc: &S) -> FallbackReport
where
    S: Service<
            Request<http_body_util::Full<bytes::Bytes>>,
            Response = Response<llm_fallback::ResponseBody<llm_fallback_mock::MockBody>>,
        > + Clone,
    S::Error: std::fmt::Debug,
{
    let resp = svc.clone().oneshot(post(URL, chat("x"))).await.unwrap();
    let (parts, _) = body_bytes(resp).await;
    report(&parts).clone()
}

fn cooling_left(h: &RedisHealth, route: &str) -> Option<Duration> {
    h.cooling(Instant::now())
        .into_iter()
        .find_map(|(r, left)| (r == route).then_some(left))
}

#[tokio::test]
async fn a_retry_after_seen_by_one_layer_makes_the_other_skip_the_route_within_a_second() {
    let Some(server) = RedisServer::start() else { return };
    let p = prefix();
    let (ha, hb) = (
        store(&server, &p, Cooldowns::new()),
        store(&server, &p, Cooldowns::new()),
    );
    connected(&ha).await;
    connected(&hb).await;
    let chain = || Chain::new([Route::new("a/a"), Route::new("b/b")]);
    let up_a = MockUpstream::new()
        .model("a/a", Reply::status(429).retry_after(30))
        .model("b/b", Reply::ok());
    let up_b = MockUpstream::new().model("a/a", Reply::ok()).model("b/b", Reply::ok());
    let a = FallbackLayer::builder(chain())
        .health_store(ha.clone())
        .layer()
        .layer(up_a.clone());
    let b = FallbackLayer::builder(chain())
        .health_store(hb.clone())
        .layer()
        .layer(up_b.clone());

    let r = ask(&a).await;
    assert_eq!(r.served_model(), "b/b");
    let took = within(Duration::from_secs(1), || cooling_left(&hb, "a/a").is_some())
        .await
        .expect("the other replica learns the cooldown within 1 s");
    eprintln!("cooldown reached the other replica in {took:?}");
    let left = cooling_left(&hb, "a/a").unwrap();
    assert!(
        left > Duration::from_secs(28) && left <= Duration::from_secs(30),
        "{left:?}"
    );

    let r = ask(&b).await;
    assert_eq!(
        up_b.request_count("a/a"),
        0,
        "the other replica never sent to the cooling route"
    );
    assert_eq!(r.attempts()[0].outcome(), Outcome::Skipped);
    assert!(matches!(
        r.attempts()[0].skip_reason(),
        Some(SkipReason::Cooling { .. })
    ));
    assert_eq!(r.served_model(), "b/b");
}

#[tokio::test]
async fn a_60_s_retry_after_is_not_shortened_by_a_later_5_s_one() {
    let Some(server) = RedisServer::start() else { return };
    let p = prefix();
    let (ha, hb, hc) = (
        store(&server, &p, Cooldowns::new()),
        store(&server, &p, Cooldowns::new()),
        store(&server, &p, Cooldowns::new()),
    );
    for h in [&ha, &hb, &hc] {
        connected(h).await;
    }
    let retry = |s| HealthEvent::Failure {
        retry_after: Some(Duration::from_secs(s)),
    };
    ha.record("m", retry(60), Instant::now());
    assert!(ha.sync().await);
    // B has not polled yet: it learns a 5 s one on its own, and sends it.
    hb.record("m", retry(5), Instant::now());
    assert!(hb.sync().await);
    assert!(hc.sync().await);
    for h in [&ha, &hb, &hc] {
        let left = cooling_left(h, "m").expect("cooling");
        assert!(left > Duration::from_secs(58), "{left:?}: the 60 s cooldown stands");
    }
}

#[tokio::test]
async fn one_probe_per_fleet_after_a_cooldown() {
    let Some(server) = RedisServer::start() else { return };
    let p = prefix();
    let rules = || Cooldowns::new().failures(1).base(ms(300));
    let fleet: Vec<_> = (0..3).map(|_| store(&server, &p, rules())).collect();
    for h in &fleet {
        connected(h).await;
        h.admit("m", Instant::now()); // every replica knows the route
    }
    fleet[0].record("m", HealthEvent::Failure { retry_after: None }, Instant::now());
    assert!(fleet[0].sync().await);
    for h in &fleet[1..] {
        assert!(h.sync().await);
        assert!(matches!(h.admit("m", Instant::now()), Admission::Cooling { .. }));
    }
    // Every replica keeps asking; over 1.5 s (five cooldowns' worth)
    // exactly one request in the fleet gets the probe.
    let mut probes = Vec::new();
    let start = Instant::now();
    while start.elapsed() < ms(1500) {
        for (i, h) in fleet.iter().enumerate() {
            if h.admit("m", Instant::now()) == Admission::Probe {
                probes.push(i);
            }
        }
        tokio::time::sleep(ms(5)).await;
    }
    assert_eq!(probes.len(), 1, "probes taken by replicas {probes:?}");
    // The probe succeeds: the whole fleet is open again.
    let holder = &fleet[probes[0]];
    holder.record("m", HealthEvent::Success, Instant::now());
    assert!(holder.sync().await);
    for h in &fleet {
        let open = within(Duration::from_secs(1), || {
            h.admit("m", Instant::now()) == Admission::Open
        })
        .await;
        assert!(open.is_some(), "restored everywhere");
    }
}

#[tokio::test]
async fn redis_killed_mid_run_fails_and_delays_no_request_and_sharing_resumes() {
    let Some(mut server) = RedisServer::start() else { return };
    let p = prefix();
    let (ha, hb) = (
        store(&server, &p, Cooldowns::new()),
        store(&server, &p, Cooldowns::new()),
    );
    connected(&ha).await;
    connected(&hb).await;
    let up = MockUpstream::new().model("a/a", Reply::ok()).model("b/b", Reply::ok());
    let svc = FallbackLayer::builder(Chain::new([Route::new("a/a"), Route::new("b/b")]))
        .health_store(ha.clone())
        .layer()
        .layer(up.clone());
    let mut slowest = Duration::ZERO;
    for i in 0..300 {
        if i == 100 {
            server.kill();
        }
        let t = Instant::now();
        let r = ask(&svc).await;
        slowest = slowest.max(t.elapsed());
        assert_eq!(r.served_model(), "a/a", "request {i}");
        if i % 10 == 0 {
            tokio::time::sleep(ms(5)).await; // let the background task run into the outage
        }
    }
    eprintln!("slowest request across the outage: {slowest:?}");
    assert!(slowest < ms(100), "a request waited on redis: {slowest:?}");
    assert!(
        within(Duration::from_secs(2), || !ha.connected()).await.is_some(),
        "the store noticed the outage"
    );
    // Learned while Redis is down: kept locally.
    ha.record(
        "a/a",
        HealthEvent::Failure {
            retry_after: Some(Duration::from_secs(20)),
        },
        Instant::now(),
    );
    assert!(cooling_left(&ha, "a/a").is_some());
    assert!(!ha.sync().await, "redis is down");

    server.restart();
    connected(&ha).await;
    connected(&hb).await;
    // What A learned during the outage reached B, and new changes flow.
    let learned = within(Duration::from_secs(2), || cooling_left(&hb, "a/a").is_some()).await;
    assert!(learned.is_some(), "sharing resumed by itself");
    hb.record(
        "b/b",
        HealthEvent::Failure {
            retry_after: Some(Duration::from_secs(20)),
        },
        Instant::now(),
    );
    assert!(hb.sync().await);
    let learned = within(Duration::from_secs(1), || cooling_left(&ha, "b/b").is_some()).await;
    assert!(learned.is_some(), "new cooldowns flow after the restart");
}

#[tokio::test]
async fn the_fleet_breaker_opens_at_its_ratio_after_the_minimum_requests() {
    let Some(server) = RedisServer::start() else { return };
    let p = prefix();
    let rules = || {
        Cooldowns::new().failures(100).breaker(
            Breaker::new()
                .window(Duration::from_secs(30))
                .min_requests(6)
                .failure_ratio(0.5),
        )
    };
    let (ha, hb) = (store(&server, &p, rules()), store(&server, &p, rules()));
    connected(&ha).await;
    connected(&hb).await;
    let fail = HealthEvent::Failure { retry_after: None };
    for _ in 0..3 {
        hb.record("m", HealthEvent::Success, Instant::now());
    }
    assert!(hb.sync().await);
    for i in 0..2 {
        ha.record("m", fail, Instant::now());
        assert!(ha.sync().await);
        assert_eq!(
            ha.admit("m", Instant::now()),
            Admission::Open,
            "failure {i}: under the fleet's minimum"
        );
    }
    // 3 failures of 6 across the fleet (A alone saw only 3 attempts).
    ha.record("m", fail, Instant::now());
    assert!(ha.sync().await);
    assert!(matches!(ha.admit("m", Instant::now()), Admission::Cooling { .. }));
    assert!(hb.sync().await);
    assert!(matches!(hb.admit("m", Instant::now()), Admission::Cooling { .. }));
}

#[tokio::test]
async fn the_breaker_never_ejects_past_its_maximum_share_of_a_chain() {
    let Some(server) = RedisServer::start() else { return };
    let p = prefix();
    let rules = Cooldowns::new()
        .failures(1)
        .base(Duration::from_secs(30))
        .max_open_share(0.5);
    let health = store(&server, &p, rules);
    connected(&health).await;
    let models = ["a/a", "b/b", "c/c", "d/d"];
    let mut up = MockUpstream::new();
    for m in models {
        up = up.model(m, Reply::status(500));
    }
    let chain = Chain::new(models.map(Route::new));
    let svc = FallbackLayer::builder(chain)
        .health_store(health.clone())
        .layer()
        .layer(up.clone());
    for _ in 0..5 {
        let r = ask(&svc).await;
        let cooling = r
            .attempts()
            .iter()
            .filter(|a| matches!(a.skip_reason(), Some(SkipReason::Cooling { .. })))
            .count();
        assert!(cooling <= 2, "at most half the chain is skipped as cooling: {cooling}");
    }
    // Every route failed and cools, yet each request still tried two.
    assert_eq!(health.cooling(Instant::now()).len(), 4);
    let r = ask(&svc).await;
    let sent = r.attempts().iter().filter(|a| a.outcome() != Outcome::Skipped).count();
    assert_eq!(sent, 2);
}

/// A replica whose queue of changes never empties (a route failing under
/// load) still polls: the fleet's cooldowns reach it within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_busy_sending_changes_still_learns_the_fleets_cooldowns() {
    let Some(server) = RedisServer::start() else { return };
    let p = prefix();
    // Every failure of `flood/m` is one change to send (it never cools).
    let busy = store(&server, &p, Cooldowns::new().failures(u32::MAX));
    let other = store(&server, &p, Cooldowns::new());
    connected(&busy).await;
    connected(&other).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = tokio::spawn({
        let (busy, stop) = (busy.clone(), stop.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..64 {
                    busy.record("flood/m", HealthEvent::Failure { retry_after: None }, Instant::now());
                }
                tokio::task::yield_now().await;
            }
        }
    });
    // Let the queue fill.
    tokio::time::sleep(ms(100)).await;
    other.record(
        "a/a",
        HealthEvent::Failure {
            retry_after: Some(Duration::from_secs(30)),
        },
        Instant::now(),
    );
    let learned = within(Duration::from_secs(1), || cooling_left(&busy, "a/a").is_some()).await;
    stop.store(true, Ordering::Relaxed);
    flood.await.unwrap();
    let took = learned.expect("the busy replica learns the cooldown within 1 s");
    eprintln!("cooldown reached the busy replica in {took:?}");
}
