//! Sticky sessions (issue 17, point 5): a session stays on the deployment
//! that served it, re-pins after a failure there, forgets its pin after the
//! TTL, and the store stays bounded however many sessions come.

mod common;

use common::*;
use http::{HeaderName, Request, Response};
use llm_fallback::affinity::{Affinity, AffinityStore, MemoryAffinity};
use llm_fallback::native::Endpoint;
use llm_fallback::{Balance, Chain, Deployment, FallbackLayer, Outcome, ReplayBody, Route};
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::{Layer, ServiceExt};

type Upstream =
    tower::util::BoxCloneService<Request<ReplayBody>, Response<http_body_util::Full<bytes::Bytes>>, Infallible>;

/// An upstream that answers 200 from every host but those in `down` (500).
fn upstream(down: Arc<Mutex<HashSet<String>>>) -> Upstream {
    slow_upstream(down, "", Duration::ZERO)
}

/// [`upstream`], with `slow_host` taking `latency` to answer.
fn slow_upstream(down: Arc<Mutex<HashSet<String>>>, slow_host: &'static str, latency: Duration) -> Upstream {
    tower::util::BoxCloneService::new(tower::service_fn(move |req: Request<ReplayBody>| {
        let host = req.uri().host().unwrap_or_default().to_owned();
        let failing = down.lock().unwrap().contains(&host);
        async move {
            if host == slow_host {
                tokio::time::sleep(latency).await;
            }
            let (status, body) = if failing {
                (500, r#"{"error":{"message":"down","type":"server_error"}}"#.to_owned())
            } else {
                (
                    200,
                    r#"{"model":"m","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"hi"}}]}"#
                        .to_owned(),
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

fn endpoint(host: &str) -> Endpoint {
    Endpoint::new(format!("http://{host}/v1")).unwrap()
}

/// A route over deployments `names` (weights given), each on its own host,
/// then a last route without deployments.
fn chain(deployments: &[(&str, u32)], balance: Balance, seed: u64) -> Chain {
    Chain::new([
        Route::new("m")
            .deployments(deployments.iter().map(|(name, w)| {
                Deployment::new(*name)
                    .endpoint(endpoint(&format!("{name}.test")))
                    .weight(*w)
            }))
            .balance(balance)
            .balance_seed(seed),
        Route::new("last"),
    ])
}

const SESSION: HeaderName = HeaderName::from_static("x-session-id");

fn request(session: Option<&str>, body: String) -> Request<http_body_util::Full<bytes::Bytes>> {
    let mut req = post("http://caller.test/v1/chat/completions", body);
    if let Some(s) = session {
        req.headers_mut().insert(SESSION, s.parse().unwrap());
    }
    req
}

/// Sends one request; the deployment that served it and the report's outcomes.
async fn send(layer: &FallbackLayer, svc: &Upstream, session: Option<&str>) -> (String, Vec<Outcome>) {
    send_req(layer, svc, request(session, chat("m"))).await
}

async fn send_req<P: llm_fallback::Policy>(
    layer: &FallbackLayer<P>,
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

fn no_faults() -> Arc<Mutex<HashSet<String>>> {
    Arc::default()
}

#[tokio::test]
async fn a_session_lands_on_the_same_deployment_and_sessions_spread() {
    let deployments = [("a", 1), ("b", 1), ("c", 1)];
    let svc = upstream(no_faults());
    let sticky = FallbackLayer::builder(chain(&deployments, Balance::Weighted, 7))
        .affinity(Affinity::header(SESSION))
        .layer();
    let mut first_of: HashMap<String, String> = HashMap::new();
    for round in 0..6 {
        for s in 0..30 {
            let session = format!("session-{s}");
            let (served, outcomes) = send(&sticky, &svc, Some(&session)).await;
            assert_eq!(outcomes, [Outcome::Served]);
            let first = first_of.entry(session.clone()).or_insert_with(|| served.clone());
            assert_eq!(&served, first, "{session} moved in round {round}");
        }
    }
    let used: HashSet<&String> = first_of.values().collect();
    assert_eq!(used.len(), 3, "sessions are still balanced: {first_of:?}");

    // The control: without affinity the same session is scattered.
    let loose = FallbackLayer::new(chain(&deployments, Balance::Weighted, 7));
    let mut hosts = HashSet::new();
    for _ in 0..30 {
        hosts.insert(send(&loose, &svc, Some("session-0")).await.0);
    }
    assert!(hosts.len() > 1, "{hosts:?}");
    // And a request without the header is balanced, not pinned.
    let mut hosts = HashSet::new();
    for _ in 0..30 {
        hosts.insert(send(&sticky, &svc, None).await.0);
    }
    assert!(hosts.len() > 1, "{hosts:?}");
}

#[tokio::test(start_paused = true)]
async fn a_pin_holds_against_the_least_latency_choice() {
    let down = no_faults();
    // `b` is slow: the least-latency choice sends everything to `a`.
    let svc = slow_upstream(down.clone(), "b.test", Duration::from_millis(200));
    let layer = FallbackLayer::builder(chain(&[("a", 1), ("b", 1)], Balance::LeastLatency, 3))
        .affinity(Affinity::header(SESSION))
        .layer();
    for s in 0..4 {
        send(&layer, &svc, Some(&format!("warm-{s}"))).await;
    }
    for _ in 0..10 {
        assert_eq!(send(&layer, &svc, Some("fresh")).await.0, "a");
    }
    // `a` fails once for session `t`, which `b` serves: `t` stays there.
    down.lock().unwrap().insert("a.test".into());
    assert_eq!(send(&layer, &svc, Some("t")).await.0, "b");
    down.lock().unwrap().clear();
    for _ in 0..10 {
        assert_eq!(send(&layer, &svc, Some("t")).await.0, "b");
    }
    // The others still follow the latency.
    assert_eq!(send(&layer, &svc, Some("u")).await.0, "a");
}

#[tokio::test]
async fn a_session_re_pins_after_its_deployment_fails() {
    let down = no_faults();
    let svc = upstream(down.clone());
    // `a` has all the weight: a fresh session starts there.
    let layer = FallbackLayer::builder(chain(&[("a", 1), ("b", 0), ("c", 0)], Balance::Weighted, 1))
        .affinity(Affinity::header(SESSION))
        .layer();
    assert_eq!(send(&layer, &svc, Some("s")).await.0, "a");
    down.lock().unwrap().insert("a.test".into());
    let (served, outcomes) = send(&layer, &svc, Some("s")).await;
    assert_eq!(
        (served.as_str(), outcomes),
        ("b", vec![Outcome::HttpError, Outcome::Served])
    );
    // `a` is back, but the session's cache is on `b` now.
    down.lock().unwrap().clear();
    for _ in 0..5 {
        assert_eq!(send(&layer, &svc, Some("s")).await, ("b".into(), vec![Outcome::Served]));
    }
    // Another session starts where the weights say.
    assert_eq!(send(&layer, &svc, Some("t")).await.0, "a");
    // When its pinned deployment fails, the pin moves on again.
    down.lock().unwrap().insert("b.test".into());
    assert_eq!(send(&layer, &svc, Some("s")).await.0, "a");
    down.lock().unwrap().clear();
    assert_eq!(send(&layer, &svc, Some("s")).await.0, "a");
}

#[tokio::test(start_paused = true)]
async fn a_pin_expires_after_its_ttl() {
    let down = no_faults();
    let svc = upstream(down.clone());
    let ttl = Duration::from_secs(120);
    let layer = FallbackLayer::builder(chain(&[("a", 1), ("b", 0)], Balance::Weighted, 1))
        .affinity(Affinity::header(SESSION).ttl(ttl))
        .layer();
    // Pinned to the standby after `a` failed once.
    down.lock().unwrap().insert("a.test".into());
    assert_eq!(send(&layer, &svc, Some("s")).await.0, "b");
    down.lock().unwrap().clear();
    // Each served request extends the pin by the TTL.
    for _ in 0..3 {
        tokio::time::advance(ttl - Duration::from_secs(1)).await;
        assert_eq!(send(&layer, &svc, Some("s")).await.0, "b");
    }
    // Idle past the TTL, the session is balanced afresh.
    tokio::time::advance(ttl + Duration::from_secs(1)).await;
    assert_eq!(send(&layer, &svc, Some("s")).await.0, "a");
    // The default TTL is five minutes.
    assert_eq!(Affinity::header(SESSION).time_to_live(), Duration::from_secs(300));
}

#[tokio::test]
async fn sessions_by_the_body_user_and_by_the_leading_messages() {
    let down = no_faults();
    let svc = upstream(down.clone());
    let by_user = FallbackLayer::builder(chain(&[("a", 1), ("b", 0)], Balance::Weighted, 1))
        .affinity(Affinity::user())
        .layer();
    let with_user = |user: &str| {
        let body = serde_json::json!({"model": "m", "user": user, "messages": [{"role": "user", "content": "hi"}]});
        request(None, body.to_string())
    };
    down.lock().unwrap().insert("a.test".into());
    assert_eq!(send_req(&by_user, &svc, with_user("u-1")).await.0, "b");
    down.lock().unwrap().clear();
    assert_eq!(
        send_req(&by_user, &svc, with_user("u-1")).await.0,
        "b",
        "pinned by user"
    );
    assert_eq!(send_req(&by_user, &svc, with_user("u-2")).await.0, "a");

    let by_conversation = FallbackLayer::builder(chain(&[("a", 1), ("b", 0)], Balance::Weighted, 1))
        .affinity(Affinity::leading_messages(2))
        .layer();
    let turn = |first: &str, turns: usize| {
        let mut messages = vec![
            serde_json::json!({"role": "system", "content": "You are terse."}),
            serde_json::json!({"role": "user", "content": first}),
        ];
        for i in 0..turns {
            messages.push(serde_json::json!({"role": "assistant", "content": format!("answer {i}")}));
            messages.push(serde_json::json!({"role": "user", "content": format!("question {i}")}));
        }
        request(
            None,
            serde_json::json!({"model": "m", "messages": messages}).to_string(),
        )
    };
    down.lock().unwrap().insert("a.test".into());
    assert_eq!(send_req(&by_conversation, &svc, turn("plan a trip", 0)).await.0, "b");
    down.lock().unwrap().clear();
    for turns in 1..4 {
        assert_eq!(
            send_req(&by_conversation, &svc, turn("plan a trip", turns)).await.0,
            "b"
        );
    }
    assert_eq!(send_req(&by_conversation, &svc, turn("write a poem", 1)).await.0, "a");
}

#[tokio::test]
async fn a_shared_store_stays_bounded_with_many_sessions() {
    let store = Arc::new(MemoryAffinity::with_capacity(500));
    let svc = upstream(no_faults());
    let layer = FallbackLayer::builder(chain(&[("a", 1), ("b", 1)], Balance::Weighted, 5))
        .affinity(Affinity::header(SESSION).shared_store(store.clone()))
        .layer();
    for s in 0..5_000 {
        send(&layer, &svc, Some(&format!("s{s}"))).await;
    }
    assert!(store.len() <= 550, "{} sessions held", store.len());
    // A recent session still has its pin.
    let recent = send(&layer, &svc, Some("s4999")).await.0;
    for _ in 0..5 {
        assert_eq!(send(&layer, &svc, Some("s4999")).await.0, recent);
    }
    // Nothing of the session id is kept: only hashes.
    assert!(!format!("{store:?}").contains("s4999"));
}

/// A store a fleet could share: here, one that counts what it is asked.
#[derive(Default)]
struct Counting {
    inner: MemoryAffinity,
    gets: std::sync::atomic::AtomicUsize,
    pins: std::sync::atomic::AtomicUsize,
}

impl AffinityStore for Counting {
    fn get(&self, session: llm_fallback::affinity::SessionKey, now: tokio::time::Instant) -> Option<u32> {
        self.gets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.get(session, now)
    }
    fn pin(&self, session: llm_fallback::affinity::SessionKey, d: u32, now: tokio::time::Instant, ttl: Duration) {
        self.pins.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.pin(session, d, now, ttl)
    }
}

#[tokio::test]
async fn a_custom_store_is_asked_once_per_request_and_only_for_routes_with_deployments() {
    let store = Arc::new(Counting::default());
    let svc = upstream(no_faults());
    let layer = FallbackLayer::builder(chain(&[("a", 1), ("b", 1)], Balance::Weighted, 5))
        .affinity(Affinity::header(SESSION).shared_store(store.clone()))
        .layer();
    for _ in 0..4 {
        send(&layer, &svc, Some("s")).await;
    }
    send(&layer, &svc, None).await;
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!((store.gets.load(Relaxed), store.pins.load(Relaxed)), (4, 4));
    // A chain without deployments never asks.
    let plain = FallbackLayer::builder(Chain::new([Route::new("m")]))
        .affinity(Affinity::header(SESSION).shared_store(store.clone()))
        .layer();
    send(&plain, &svc, Some("s")).await;
    assert_eq!((store.gets.load(Relaxed), store.pins.load(Relaxed)), (4, 4));
}

#[cfg(feature = "config")]
#[tokio::test]
async fn the_config_turns_sticky_sessions_on() {
    let text = r#"
[affinity]
key = "user"
ttl = "1m"
capacity = 10

[[chains.default.routes]]
model = "m"
balance_seed = 1

[[chains.default.routes.deployments]]
name = "a"
endpoint = { base_url = "http://a.test/v1" }

[[chains.default.routes.deployments]]
name = "b"
endpoint = { base_url = "http://b.test/v1" }
weight = 0
"#;
    let config = llm_fallback::config::Config::from_toml_str(text).unwrap();
    let layer = llm_fallback::FallbackBuilder::from_config(&config).unwrap().layer();
    let down = no_faults();
    let svc = upstream(down.clone());
    let with_user = |user: &str| {
        let body = serde_json::json!({"model": "m", "user": user, "messages": [{"role": "user", "content": "hi"}]});
        request(None, body.to_string())
    };
    down.lock().unwrap().insert("a.test".into());
    assert_eq!(send_req(&layer, &svc, with_user("u")).await.0, "b");
    down.lock().unwrap().clear();
    assert_eq!(send_req(&layer, &svc, with_user("u")).await.0, "b", "pinned");
    assert_eq!(send_req(&layer, &svc, with_user("v")).await.0, "a");
}
