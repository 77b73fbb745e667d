//! `RedisAffinity` against a real `redis-server` on a loopback port (see
//! `support/redis_server.rs`): stores in one process, each its own
//! "replica". Redis keeps real time, so waits are bounded loops of
//! `sync()` that end as soon as the condition holds.

mod common;
#[path = "support/redis_server.rs"]
mod redis_server;

use common::*;
use http::{HeaderName, Request, Response};
use llm_fallback::affinity::{Affinity, AffinityStore, RedisAffinity, SessionKey};
use llm_fallback::native::Endpoint;
use llm_fallback::{Balance, Chain, Deployment, FallbackLayer, Outcome, ReplayBody, Route};
use redis_server::RedisServer;
use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A key prefix of its own per store group, so tests never share keys.
fn prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("pins-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn store_with(server: &RedisServer, prefix: &str, capacity: usize) -> Arc<RedisAffinity> {
    let store = RedisAffinity::builder(server.url())
        .key_prefix(prefix)
        .capacity(capacity)
        .timeout(ms(500))
        .retry_interval(ms(50))
        .build()
        .unwrap();
    Arc::new(store)
}

fn store(server: &RedisServer, prefix: &str) -> Arc<RedisAffinity> {
    store_with(server, prefix, 10_000)
}

async fn connected(s: &RedisAffinity) {
    for _ in 0..100 {
        if s.sync().await {
            return;
        }
        tokio::time::sleep(ms(20)).await;
    }
    panic!("the store did not connect to redis within ~2 s");
}

/// Syncs `s` (at most 50 times) until `cond` holds; whether it did.
async fn synced_until(s: &RedisAffinity, mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..50 {
        if cond() {
            return true;
        }
        s.sync().await;
    }
    cond()
}

const TTL: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_pin_on_one_replica_is_seen_by_the_other_and_the_last_pin_wins() {
    let Some(server) = RedisServer::start() else { return };
    let p = prefix();
    let (a, b) = (store(&server, &p), store(&server, &p));
    connected(&a).await;
    connected(&b).await;
    let k = SessionKey::from_u64(0x1234_5678_9abc_def0);
    assert_eq!(b.get(k, Instant::now()), None);

    let start = Instant::now();
    a.pin(k, 1, Instant::now(), TTL);
    assert_eq!(a.get(k, Instant::now()), Some(1), "local at once");
    assert!(a.sync().await);
    assert!(synced_until(&b, || b.get(k, Instant::now()) == Some(1)).await);
    eprintln!("a pin reached the other replica in {:?}", start.elapsed());
    // One sync of B is enough: it waits for its own publication to come
    // back, after everything published before it.
    let k2 = SessionKey::from_u64(99);
    a.pin(k2, 0, Instant::now(), TTL);
    assert!(a.sync().await);
    assert!(b.sync().await);
    assert_eq!(b.get(k2, Instant::now()), Some(0));

    // The TTL of a learned pin counts from its arrival.
    assert_eq!(b.get(k, Instant::now() + TTL - ms(5_000)), Some(1));
    assert_eq!(b.get(k, Instant::now() + TTL + ms(1)), None, "expired");

    // B re-pins (after a failure there): A follows.
    b.pin(k2, 1, Instant::now(), TTL);
    assert!(b.sync().await);
    assert!(synced_until(&a, || a.get(k2, Instant::now()) == Some(1)).await);

    // Both pin one session at once to different deployments: they agree.
    let k3 = SessionKey::from_u64(7);
    a.pin(k3, 0, Instant::now(), TTL);
    b.pin(k3, 1, Instant::now(), TTL);
    assert!(a.sync().await && b.sync().await);
    assert!(a.sync().await && b.sync().await);
    let (pa, pb) = (a.get(k3, Instant::now()), b.get(k3, Instant::now()));
    assert!(pa.is_some());
    assert_eq!(pa, pb, "the replicas agree on the channel's last pin");
}

#[tokio::test]
async fn a_replica_that_missed_a_pin_fetches_it_on_a_miss() {
    let Some(server) = RedisServer::start() else { return };
    let p = prefix();
    let a = store(&server, &p);
    connected(&a).await;
    let k = SessionKey::from_u64(42);
    a.pin(k, 2, Instant::now(), TTL);
    assert!(a.sync().await);
    // B starts after the pin was published.
    let b = store(&server, &p);
    connected(&b).await;
    assert_eq!(b.get(k, Instant::now()), None, "get never waits on redis");
    assert!(b.sync().await);
    assert_eq!(
        b.get(k, Instant::now()),
        Some(2),
        "the next request finds the fleet's pin"
    );
    // Unknown to the fleet: still nothing, and nothing breaks.
    let unknown = SessionKey::from_u64(43);
    assert_eq!(b.get(unknown, Instant::now()), None);
    assert!(b.sync().await);
    assert_eq!(b.get(unknown, Instant::now()), None);
    // Fetching can be turned off.
    let c = Arc::new(
        RedisAffinity::builder(server.url())
            .key_prefix(&p)
            .fetch_on_miss(false)
            .build()
            .unwrap(),
    );
    connected(&c).await;
    assert_eq!(c.get(k, Instant::now()), None);
    assert!(c.sync().await);
    assert_eq!(c.get(k, Instant::now()), None);
}

// ===== through two layers =====

type Upstream =
    tower::util::BoxCloneService<Request<ReplayBody>, Response<http_body_util::Full<bytes::Bytes>>, Infallible>;

/// Answers 200 from every host but those in `down` (500).
fn upstream(down: Arc<Mutex<HashSet<String>>>) -> Upstream {
    tower::util::BoxCloneService::new(tower::service_fn(move |req: Request<ReplayBody>| {
        let host = req.uri().host().unwrap_or_default().to_owned();
        let failing = down.lock().unwrap().contains(&host);
        async move {
            let (status, body) = if failing {
                (500, r#"{"error":{"message":"down","type":"server_error"}}"#)
            } else {
                (
                    200,
                    r#"{"model":"m","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"hi"}}]}"#,
                )
            };
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                    .unwrap(),
            )
        }
    }))
}

/// A route over deployments `x` and `y` (weights given), then a last route.
fn chain(wx: u32, wy: u32) -> Chain {
    let d = |name: &str, w| {
        Deployment::new(name)
            .endpoint(Endpoint::new(format!("http://{name}.test/v1")).unwrap())
            .weight(w)
    };
    Chain::new([
        Route::new("m")
            .deployments([d("x", wx), d("y", wy)])
            .balance(Balance::Weighted)
            .balance_seed(3),
        Route::new("last"),
    ])
}

const SESSION: HeaderName = HeaderName::from_static("x-session-id");

fn layer(wx: u32, wy: u32, affinity: Affinity) -> FallbackLayer {
    FallbackLayer::builder(chain(wx, wy)).affinity(affinity).layer()
}

fn sticky(store: &Arc<RedisAffinity>) -> Affinity {
    Affinity::header(SESSION).ttl(TTL).shared_store(store.clone())
}

/// Sends one request; the deployment that served it and the outcomes.
async fn send_req(
    layer: &FallbackLayer,
    svc: &Upstream,
    req: Request<http_body_util::Full<bytes::Bytes>>,
) -> (String, Vec<Outcome>) {
    let resp = layer.layer(svc.clone()).oneshot(req).await.unwrap();
    let (parts, _) = body_bytes(resp).await;
    let served = parts
        .headers
        .get("x-fallback-deployment")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let outcomes = report(&parts).attempts().iter().map(|a| a.outcome()).collect();
    (served, outcomes)
}

fn request(session: &str) -> Request<http_body_util::Full<bytes::Bytes>> {
    let mut req = post("http://caller.test/v1/chat/completions", chat("m"));
    req.headers_mut().insert(SESSION, session.parse().unwrap());
    req
}

async fn send(layer: &FallbackLayer, svc: &Upstream, session: &str) -> (String, Vec<Outcome>) {
    send_req(layer, svc, request(session)).await
}

#[tokio::test]
async fn a_session_served_by_replica_a_on_y_goes_to_y_first_on_replica_b() {
    let Some(server) = RedisServer::start() else { return };
    let p = prefix();
    let (sa, sb) = (store(&server, &p), store(&server, &p));
    connected(&sa).await;
    connected(&sb).await;
    // On A, x fails: the session is served (and pinned) on y.
    let down_on_a = Arc::new(Mutex::new(HashSet::from(["x.test".to_owned()])));
    let (up_a, up_b) = (upstream(down_on_a), upstream(Arc::default()));
    let a = layer(1, 1, sticky(&sa));
    // B would send every session to x (y weighs nothing) but for a pin.
    let b = layer(1, 0, sticky(&sb));

    let (served, _) = send(&a, &up_a, "conversation-1").await;
    assert_eq!(served, "y");
    assert!(sa.sync().await);
    assert!(sb.sync().await);
    for i in 0..5 {
        let (served, outcomes) = send(&b, &up_b, "conversation-1").await;
        assert_eq!(served, "y", "request {i} on B");
        assert_eq!(outcomes, [Outcome::Served], "y first, nothing else tried");
    }
    // The control: a session A never served goes to x on B.
    assert_eq!(send(&b, &up_b, "conversation-2").await.0, "x");
}

#[tokio::test]
async fn keys_and_messages_carry_only_the_hashed_session() {
    let Some(server) = RedisServer::start() else { return };
    let p = prefix();
    let (sa, sb) = (store(&server, &p), store(&server, &p));
    connected(&sa).await;
    connected(&sb).await;
    // A raw subscriber records what is published.
    let client = redis::Client::open(server.url()).unwrap();
    let mut sub = client.get_async_pubsub().await.unwrap();
    sub.subscribe(format!("{p}:pins")).await.unwrap();
    let mut messages = sub.into_on_message();

    let up = upstream(Arc::default());
    let secret_session = "sess-7Hq2-very-private";
    let secret_user = "user-alice@example.com";
    let by_header = layer(1, 1, sticky(&sa));
    let by_user = layer(1, 1, Affinity::user().shared_store(sa.clone()));
    let by_prompt = layer(1, 1, Affinity::leading_messages(2).shared_store(sa.clone()));
    send(&by_header, &up, secret_session).await;
    let body = serde_json::json!({
        "model": "m", "user": secret_user,
        "messages": [{"role": "user", "content": "the-secret-prompt-text"}]
    });
    let (served, _) = send_req(
        &by_user,
        &up,
        post("http://caller.test/v1/chat/completions", body.to_string()),
    )
    .await;
    assert!(!served.is_empty());
    send_req(
        &by_prompt,
        &up,
        post("http://caller.test/v1/chat/completions", body.to_string()),
    )
    .await;
    assert!(sa.sync().await);
    assert!(sb.sync().await);
    assert_eq!(sa.len(), 3, "three sessions pinned");

    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{p}:*"))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(keys.len(), 3, "{keys:?}");
    let secrets = [
        secret_session,
        secret_user,
        "the-secret-prompt-text",
        "sk-test-secret",
        "alice",
    ];
    for key in &keys {
        let hex = key.strip_prefix(&format!("{p}:pin:")).expect("a pin key");
        assert_eq!(hex.len(), 16, "{key}");
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
        let value: String = redis::cmd("GET").arg(key).query_async(&mut con).await.unwrap();
        assert!(value == "0" || value == "1", "{key} = {value}");
        let pttl: i64 = redis::cmd("PTTL").arg(key).query_async(&mut con).await.unwrap();
        assert!(pttl > 0 && pttl <= 300_000, "{pttl}");
    }
    // What went over the channel: hashes and numbers only.
    let mut seen = 0;
    while let Ok(Some(msg)) = tokio::time::timeout(ms(200), futures_next(&mut messages)).await {
        let payload = msg.get_payload_bytes();
        for s in secrets {
            assert!(
                !payload.windows(s.len()).any(|w| w == s.as_bytes()),
                "{s} was published"
            );
        }
        seen += 1;
    }
    assert!(seen >= 1, "the pins were published");
}

#[tokio::test]
async fn a_busy_session_publishes_once_per_half_ttl_not_per_request() {
    let Some(server) = RedisServer::start() else { return };
    let p = prefix();
    let a = store(&server, &p);
    connected(&a).await;
    let client = redis::Client::open(server.url()).unwrap();
    let mut sub = client.get_async_pubsub().await.unwrap();
    sub.subscribe(format!("{p}:pins")).await.unwrap();
    let mut messages = sub.into_on_message();
    // Pins published: the bytes after the 17-byte header, 24 a pin.
    let mut published = async || {
        assert!(a.sync().await);
        let mut pins = 0;
        while let Ok(Some(msg)) = tokio::time::timeout(ms(100), futures_next(&mut messages)).await {
            pins += (msg.get_payload_bytes().len() - 17) / 24;
        }
        pins
    };
    let (k, t0) = (SessionKey::from_u64(5), Instant::now());
    for i in 0..100 {
        a.pin(k, 1, t0 + ms(i), TTL);
    }
    assert_eq!(published().await, 1, "a hundred requests, one publication");
    a.pin(k, 1, t0 + TTL / 2 - ms(1), TTL);
    assert_eq!(published().await, 0);
    a.pin(k, 1, t0 + TTL / 2, TTL);
    assert_eq!(published().await, 1, "half the TTL later: once more");
    a.pin(k, 0, t0 + TTL / 2 + ms(1), TTL);
    assert_eq!(published().await, 1, "moved: at once");
}

/// The next item of a stream, without a futures dependency.
async fn futures_next(s: &mut redis::aio::PubSubStream) -> Option<redis::Msg> {
    use futures_core::Stream;
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *s).poll_next(cx)).await
}

#[tokio::test]
async fn redis_killed_mid_run_keeps_local_pins_delays_no_request_and_sharing_resumes() {
    let Some(mut server) = RedisServer::start() else { return };
    let p = prefix();
    let (sa, sb) = (store(&server, &p), store(&server, &p));
    connected(&sa).await;
    connected(&sb).await;
    let up = upstream(Arc::default());
    let a = layer(1, 1, sticky(&sa));
    let mut first: Vec<Option<String>> = vec![None; 10];
    let mut slowest = Duration::ZERO;
    for i in 0..300 {
        if i == 100 {
            server.kill();
        }
        let s = i % 10;
        let t = Instant::now();
        let (served, outcomes) = send(&a, &up, &format!("session-{s}")).await;
        slowest = slowest.max(t.elapsed());
        assert_eq!(outcomes, [Outcome::Served], "request {i}");
        let pinned = first[s].get_or_insert_with(|| served.clone());
        assert_eq!(&served, pinned, "request {i}: session-{s} kept its deployment");
        if i % 10 == 0 {
            tokio::time::sleep(ms(5)).await; // let the background task run into the outage
        }
    }
    eprintln!("slowest request across the outage: {slowest:?}");
    assert!(slowest < ms(100), "a request waited on redis: {slowest:?}");
    let mut noticed = false;
    for _ in 0..100 {
        if !sa.connected() {
            noticed = true;
            break;
        }
        tokio::time::sleep(ms(20)).await;
    }
    assert!(noticed, "the store noticed the outage");
    assert!(!sa.sync().await, "redis is down");
    // Pinned while Redis is down: kept locally.
    let (during, _) = send(&a, &up, "during-outage").await;
    assert_eq!(send(&a, &up, "during-outage").await.0, during);

    server.restart();
    connected(&sa).await;
    connected(&sb).await;
    // A new pin flows, and those made before (lost with Redis's data) and
    // during the outage are published by their sessions' next request.
    let (after, _) = send(&a, &up, "after-restart").await;
    send(&a, &up, "during-outage").await;
    for s in 0..10 {
        send(&a, &up, &format!("session-{s}")).await;
    }
    assert!(sa.sync().await);
    for _ in 0..3 {
        assert!(sb.sync().await);
    }
    // B would balance each session to the other deployment but for a pin.
    let up_b = upstream(Arc::default());
    let against = |d: &str| {
        if d == "x" {
            layer(0, 1, sticky(&sb))
        } else {
            layer(1, 0, sticky(&sb))
        }
    };
    let (b_after, b_during) = (against(&after), against(&during));
    for _ in 0..5 {
        assert_eq!(send(&b_after, &up_b, "after-restart").await.0, after, "sharing resumed");
        assert_eq!(send(&b_during, &up_b, "during-outage").await.0, during, "republished");
    }
    for (s, pinned) in first.iter().enumerate() {
        let pinned = pinned.as_deref().unwrap();
        let b = against(pinned);
        assert_eq!(send(&b, &up_b, &format!("session-{s}")).await.0, pinned, "session-{s}");
    }
    // Redis restarted empty: the pins made before the outage are in it
    // again (a replica started now fetches them), not only the new ones.
    let client = redis::Client::open(server.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{p}:pin:*"))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(keys.len(), 12, "10 sessions from before, 2 from during and after");
}

#[tokio::test]
async fn a_killed_subscription_is_made_again_and_pings_keep_a_live_one() {
    let Some(server) = RedisServer::start() else { return };
    let p = prefix();
    let a = store(&server, &p);
    // Without fetches: what B learns, it learns on the channel.
    let b = Arc::new(
        RedisAffinity::builder(server.url())
            .key_prefix(&p)
            .timeout(ms(500))
            .retry_interval(ms(40)) // pings every second
            .fetch_on_miss(false)
            .build()
            .unwrap(),
    );
    connected(&a).await;
    connected(&b).await;
    // Pings (about three of them) do not take a live subscription down.
    tokio::time::sleep(ms(3_300)).await;
    assert!(b.connected());
    let client = redis::Client::open(server.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(
        stats.contains("cmdstat_ping:calls="),
        "the subscription was pinged: {stats}"
    );
    a.pin(SessionKey::from_u64(1), 1, Instant::now(), TTL);
    assert!(a.sync().await);
    assert!(b.sync().await);
    assert_eq!(b.get(SessionKey::from_u64(1), Instant::now()), Some(1));

    // Redis drops every subscriber's connection.
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(killed >= 2, "{killed}");
    let mut learned = false;
    for i in 2..100u64 {
        let k = SessionKey::from_u64(i);
        a.pin(k, 0, Instant::now(), TTL);
        a.sync().await;
        b.sync().await;
        if b.get(k, Instant::now()) == Some(0) {
            learned = true;
            break;
        }
        tokio::time::sleep(ms(20)).await;
    }
    assert!(learned, "B subscribed again by itself");
    assert!(a.connected() && b.connected());
}

#[tokio::test]
async fn the_local_table_stays_within_its_capacity_whatever_the_fleet_publishes() {
    let Some(server) = RedisServer::start() else { return };
    let p = prefix();
    let (a, b) = (store_with(&server, &p, 100_000), store_with(&server, &p, 1_000));
    connected(&a).await;
    connected(&b).await;
    let start = std::time::Instant::now();
    let now = Instant::now();
    for chunk in 0..40u64 {
        for i in 0..1_000 {
            a.pin(SessionKey::from_u64(chunk * 1_000 + i), (i % 2) as u32, now, TTL);
        }
        assert!(a.sync().await);
    }
    assert!(b.sync().await);
    eprintln!(
        "40 000 pins published in {:?}; {} dropped",
        start.elapsed(),
        a.dropped()
    );
    assert_eq!(a.dropped(), 0, "1 000 at a time fit the queue");
    assert!(b.len() <= 1_100, "{} sessions held", b.len());
    assert!(b.memory_used() < 1 << 20, "{} bytes", b.memory_used());
    assert_eq!(b.capacity(), 1_000);
    // The latest are there.
    assert_eq!(b.get(SessionKey::from_u64(39_999), Instant::now()), Some(1));
}

#[cfg(feature = "config")]
#[tokio::test]
async fn the_config_shares_pins_through_redis() {
    let Some(server) = RedisServer::start() else { return };
    let p = prefix();
    let text = format!(
        r#"
[affinity]
key = "header:x-session-id"
store = "{url}"
key_prefix = "{p}"

[[chains.default.routes]]
model = "m"
balance_seed = 3

[[chains.default.routes.deployments]]
name = "x"
endpoint = {{ base_url = "http://x.test/v1" }}

[[chains.default.routes.deployments]]
name = "y"
endpoint = {{ base_url = "http://y.test/v1" }}
"#,
        url = server.url()
    );
    let config = llm_fallback::config::Config::from_toml_str(&text).unwrap();
    let a = llm_fallback::FallbackBuilder::from_config(&config).unwrap().layer();
    // Replica B: a store of its own under the same prefix, x weighing all.
    let sb = store(&server, &p);
    connected(&sb).await;
    let b = layer(1, 0, sticky(&sb));

    // On A, x fails: the session is served and pinned on y, and A's store
    // writes the pin to Redis.
    let up_a = upstream(Arc::new(Mutex::new(HashSet::from(["x.test".to_owned()]))));
    let resp = a.layer(up_a).oneshot(request("conversation-9")).await.unwrap();
    let (parts, _) = body_bytes(resp).await;
    assert_eq!(parts.headers["x-fallback-deployment"], "y");
    let client = redis::Client::open(server.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let mut written = false;
    for _ in 0..200 {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{p}:pin:*"))
            .query_async(&mut con)
            .await
            .unwrap();
        if !keys.is_empty() {
            written = true;
            break;
        }
        tokio::time::sleep(ms(10)).await;
    }
    assert!(written, "the config's store wrote the pin to redis");
    // Its publication went out with the key (one MULTI): B has it after a sync.
    assert!(sb.sync().await);
    let (served, outcomes) = send(&b, &upstream(Arc::default()), "conversation-9").await;
    assert_eq!((served.as_str(), outcomes), ("y", vec![Outcome::Served]));
}
