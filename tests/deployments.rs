//! Balanced deployments within a route, and several keys per endpoint
//! (issue 17, points 3 and 4), against an in-process upstream that answers
//! by host, key and `provider.order` with scripted statuses and latency.

mod common;

use common::*;
use http::{Request, Response};
use http_body_util::BodyExt;
use llm_fallback::health::Cooldowns;
use llm_fallback::native::{Endpoint, ProviderPrefs};
use llm_fallback::{Balance, Chain, Deployment, FallbackLayer, FallbackReport, Outcome, ReplayBody, Route};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::{Layer, ServiceExt};

/// What the upstream saw of one attempt.
#[derive(Clone, Debug)]
struct Seen {
    host: String,
    auth: String,
    model: String,
    order: Option<String>,
    max_tokens: Option<u64>,
}

/// What it answers: a status and how long it takes.
type Reply = (u16, Duration);

type Upstream =
    tower::util::BoxCloneService<Request<ReplayBody>, Response<http_body_util::Full<bytes::Bytes>>, Infallible>;

/// An upstream answering each attempt by `script`, recording what it saw.
fn upstream(script: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> (Upstream, Arc<Mutex<Vec<Seen>>>) {
    let script = Arc::new(script);
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen_log = log.clone();
    let svc = tower::service_fn(move |req: Request<ReplayBody>| {
        let (script, log) = (script.clone(), seen_log.clone());
        async move {
            let host = req.uri().host().unwrap_or_default().to_owned();
            let auth = req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let seen = Seen {
                host,
                auth,
                model: json["model"].as_str().unwrap_or_default().to_owned(),
                order: json["provider"]["order"][0].as_str().map(str::to_owned),
                max_tokens: json["max_tokens"].as_u64(),
            };
            let (status, latency) = script(&seen);
            log.lock().unwrap().push(seen.clone());
            tokio::time::sleep(latency).await;
            let body = if status == 200 {
                format!(
                    r#"{{"model":"{}","choices":[{{"index":0,"finish_reason":"stop","message":{{"role":"assistant","content":"hi"}}}}]}}"#,
                    seen.model
                )
            } else {
                r#"{"error":{"message":"try later","type":"rate_limit_exceeded"}}"#.to_owned()
            };
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                    .unwrap(),
            )
        }
    });
    (tower::util::BoxCloneService::new(svc), log)
}

const CALLER: &str = "http://caller.test/v1/chat/completions";

fn endpoint(host: &str) -> Endpoint {
    Endpoint::new(format!("http://{host}/v1")).unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Sends one request through `layer` over `svc`; the head and the report.
async fn send(layer: &FallbackLayer, svc: &Upstream) -> (http::response::Parts, FallbackReport) {
    let resp = layer.layer(svc.clone()).oneshot(post(CALLER, chat("m"))).await.unwrap();
    let (parts, _) = body_bytes(resp).await;
    let report = report(&parts).clone();
    (parts, report)
}

fn deployment_header(parts: &http::response::Parts) -> Option<&str> {
    parts.headers.get("x-fallback-deployment").map(|v| v.to_str().unwrap())
}

// ===== weighted =====

#[tokio::test]
async fn weighted_deployments_share_traffic_by_weight_reproducibly() {
    let (svc, log) = upstream(|_| (200, Duration::ZERO));
    let chain = |seed| {
        Chain::new([Route::new("m")
            .deployments([
                Deployment::new("a").endpoint(endpoint("a.test")).weight(3),
                Deployment::new("b").endpoint(endpoint("b.test")).weight(1),
                Deployment::new("spare").endpoint(endpoint("spare.test")).weight(0),
            ])
            .balance_seed(seed)])
    };
    const N: usize = 400;
    let mut runs = Vec::new();
    for _ in 0..2 {
        let layer = FallbackLayer::new(chain(42));
        let mut served = Vec::with_capacity(N);
        for _ in 0..N {
            let (parts, report) = send(&layer, &svc).await;
            assert_eq!(parts.status, 200);
            let d = report.served_deployment().unwrap().to_owned();
            assert_eq!(deployment_header(&parts), Some(d.as_str()));
            assert_eq!(report.attempts().len(), 1);
            served.push(d);
        }
        runs.push(served);
    }
    assert_eq!(runs[0], runs[1], "the same seed picks the same deployments");
    let a = runs[0].iter().filter(|d| *d == "a").count();
    let b = runs[0].iter().filter(|d| *d == "b").count();
    // 3:1 of 400 is 300:100; a binomial's 4 sigma is about 35.
    assert!((265..=335).contains(&a), "a served {a} of {N}");
    assert_eq!(a + b, N, "a standby (weight 0) is never chosen first");
    // Each went to its own endpoint.
    let hosts = log.lock().unwrap().iter().filter(|s| s.host == "a.test").count();
    assert_eq!(hosts, 2 * a);
}

// ===== least latency =====

#[tokio::test(start_paused = true)]
async fn least_latency_moves_traffic_away_from_a_slow_deployment() {
    let slow = |s: &Seen| s.order.as_deref() == Some("Slow");
    let (svc, _log) = upstream(move |s| (200, if slow(s) { ms(2_000) } else { ms(50) }));
    let by = |p: &str| {
        let mut prefs = ProviderPrefs::default();
        prefs.order = Some(vec![p.into()]);
        Deployment::new(p.to_lowercase()).provider(prefs)
    };
    let layer = FallbackLayer::new(Chain::new([Route::new("m")
        .deployments([by("Slow"), by("Fast")])
        .balance(Balance::LeastLatency)
        .balance_seed(7)]));
    let mut counts = (0, 0);
    for _ in 0..60 {
        let (_, report) = send(&layer, &svc).await;
        match report.served_deployment() {
            Some("slow") => counts.0 += 1,
            Some("fast") => counts.1 += 1,
            other => panic!("served by {other:?}"),
        }
    }
    // Before any answer both cost the default; once measured, the slow one
    // loses every draw until its peak decays (seconds of idle time).
    assert!(counts.0 <= 1, "{counts:?}");

    // With equal weights instead, the slow one gets about half.
    let weighted = FallbackLayer::new(Chain::new([Route::new("m")
        .deployments([by("Slow"), by("Fast")])
        .balance_seed(7)]));
    let mut slow_count = 0;
    for _ in 0..60 {
        let (_, report) = send(&weighted, &svc).await;
        slow_count += usize::from(report.served_deployment() == Some("slow"));
    }
    assert!((15..=45).contains(&slow_count), "{slow_count}");
}

// ===== failures =====

#[tokio::test]
async fn a_failed_deployment_is_followed_by_the_next_one_before_the_next_route() {
    let (svc, log) = upstream(|s| match (s.host.as_str(), s.model.as_str()) {
        ("a.test", _) => (503, Duration::ZERO),
        (_, "z") => (200, Duration::ZERO),
        ("b.test", _) => (200, Duration::ZERO),
        _ => (500, Duration::ZERO),
    });
    let chain = Chain::new([
        Route::new("m").label("pooled").deployments([
            Deployment::new("a").endpoint(endpoint("a.test")),
            Deployment::new("b").endpoint(endpoint("b.test")).weight(0),
        ]),
        Route::new("z").label("next"),
    ]);
    let layer = FallbackLayer::new(chain);
    let (parts, report) = send(&layer, &svc).await;
    assert_eq!(parts.status, 200);
    let tried: Vec<_> = report
        .attempts()
        .iter()
        .map(|a| (a.model(), a.deployment(), a.outcome()))
        .collect();
    assert_eq!(
        tried,
        [("m", Some("a"), Outcome::HttpError), ("m", Some("b"), Outcome::Served)]
    );
    assert_eq!(report.served_label(), Some("pooled"));
    assert_eq!(deployment_header(&parts), Some("b"));
    assert!(
        log.lock().unwrap().iter().all(|s| s.model == "m"),
        "the next route is not tried"
    );
    assert!(
        report.attempts()[0].to_string().starts_with("m (pooled) on a: "),
        "{}",
        report.attempts()[0]
    );

    // Both deployments down: then the next route, which has none.
    let (svc, _) = upstream(|s| {
        if s.model == "z" {
            (200, Duration::ZERO)
        } else {
            (503, Duration::ZERO)
        }
    });
    let (parts, report) = send(&layer, &svc).await;
    let tried: Vec<_> = report.attempts().iter().map(|a| (a.model(), a.deployment())).collect();
    assert_eq!(tried, [("m", Some("a")), ("m", Some("b")), ("z", None)]);
    assert_eq!(report.served_deployment(), None);
    assert_eq!(
        deployment_header(&parts),
        None,
        "a route without deployments names none"
    );
}

#[tokio::test(start_paused = true)]
async fn each_deployment_cools_down_alone() {
    let (svc, log) = upstream(|s| {
        if s.host == "a.test" {
            (503, Duration::ZERO)
        } else {
            (200, Duration::ZERO)
        }
    });
    let builder = FallbackLayer::builder(Chain::new([Route::new("m").deployments([
        Deployment::new("a").endpoint(endpoint("a.test")),
        Deployment::new("b").endpoint(endpoint("b.test")).weight(0),
    ])]))
    .cooldowns(Cooldowns::new().failures(1).base(Duration::from_secs(30)));
    let health = builder.health().unwrap();
    let layer = builder.layer();

    let (_, report) = send(&layer, &svc).await;
    assert_eq!(report.served_deployment(), Some("b"));
    let cooling = health.status(tokio::time::Instant::now()).cooling;
    let names: Vec<&str> = cooling.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["m@http://a.test/v1 (a)"], "only the failed deployment cools");

    // The next request passes `a` by and goes straight to `b`.
    log.lock().unwrap().clear();
    let (_, report) = send(&layer, &svc).await;
    let tried: Vec<_> = report
        .attempts()
        .iter()
        .map(|a| (a.deployment(), a.outcome()))
        .collect();
    assert_eq!(tried, [(Some("a"), Outcome::Skipped), (Some("b"), Outcome::Served)]);
    assert_eq!(log.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_caller_chain_from_a_default_route_with_deployments_keeps_its_order() {
    let (svc, log) = upstream(|s| {
        if s.model == "y" {
            (200, Duration::ZERO)
        } else {
            (503, Duration::ZERO)
        }
    });
    let primary = Route::new("m")
        .deployments([
            Deployment::new("a").endpoint(endpoint("a.test")).weight(0),
            Deployment::new("b").endpoint(endpoint("b.test")),
        ])
        .balance_seed(3);
    let layer = FallbackLayer::builder(Chain::new([primary]))
        .caller_chains(llm_fallback::CallerChains::new())
        .layer();
    let body = serde_json::json!({"model": "x", "models": ["x", "y"], "messages": [{"role": "user", "content": "hi"}]});
    let resp = layer.layer(svc).oneshot(post(CALLER, body.to_string())).await.unwrap();
    let (parts, _) = body_bytes(resp).await;
    let report = common::report(&parts);
    let tried: Vec<_> = report.attempts().iter().map(|a| (a.model(), a.deployment())).collect();
    // The caller's order, each once; the template's endpoint for both.
    assert_eq!(tried, [("x", None), ("y", None)]);
    assert_eq!(log.lock().unwrap().len(), 2);
}

// ===== keys =====

const KEY_A: &str = "LLM_FALLBACK_TEST_DEPLOY_KEY_A";
const KEY_B: &str = "LLM_FALLBACK_TEST_DEPLOY_KEY_B";
const SECRET_A: &str = "sk-deploy-secret-aaaa";
const SECRET_B: &str = "sk-deploy-secret-bbbb";

fn keyed_endpoint() -> Endpoint {
    std::env::set_var(KEY_A, SECRET_A);
    std::env::set_var(KEY_B, SECRET_B);
    endpoint("pool.test").api_key_envs([KEY_A, KEY_B]).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_429_on_one_key_moves_to_the_next_key_and_the_route_holds() {
    let (out, guard) = Captured::install(tracing::Level::TRACE);
    let a_limited = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let limited = a_limited.clone();
    let (svc, log) = upstream(move |s| {
        let a = s.auth == format!("Bearer {SECRET_A}");
        match s.model.as_str() {
            "m" if a && limited.load(std::sync::atomic::Ordering::SeqCst) => (429, Duration::ZERO),
            "m" => (200, Duration::ZERO),
            _ => (200, Duration::ZERO),
        }
    });
    // Default cooldowns: three failures in a row eject a route, but a
    // key's bare 429 cools that key at once.
    let builder = FallbackLayer::builder(Chain::new([
        Route::new("m").endpoint(keyed_endpoint()),
        Route::new("z"),
    ]))
    .cooldowns(Cooldowns::new());
    let health = builder.health().unwrap();
    let layer = builder.layer();

    let (parts, report) = send(&layer, &svc).await;
    assert_eq!(parts.status, 200);
    let tried: Vec<_> = report
        .attempts()
        .iter()
        .map(|a| (a.model(), a.key_name(), a.status().map(|s| s.as_u16())))
        .collect();
    assert_eq!(tried, [("m", Some(KEY_A), Some(429)), ("m", Some(KEY_B), Some(200))]);
    assert!(
        log.lock().unwrap().iter().all(|s| s.model == "m"),
        "the route was not failed"
    );
    let cooling = health.status(tokio::time::Instant::now()).cooling;
    assert_eq!(cooling.len(), 1);
    assert_eq!(cooling[0].0, format!("m@http://pool.test/v1 (key {KEY_A})"));

    // While it cools, key B serves alone.
    log.lock().unwrap().clear();
    let (_, report) = send(&layer, &svc).await;
    assert_eq!(report.attempts()[0].outcome(), Outcome::Skipped);
    assert_eq!(report.served_attempt().unwrap().key_name(), Some(KEY_B));
    assert_eq!(log.lock().unwrap().len(), 1);

    // After the cooldown, key A is back first.
    a_limited.store(false, std::sync::atomic::Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(6)).await;
    let (_, report) = send(&layer, &svc).await;
    assert_eq!(report.served_attempt().unwrap().key_name(), Some(KEY_A));

    // Every key limited and the next route down too: the exhaustion answer
    // names the keys by variable.
    a_limited.store(true, std::sync::atomic::Ordering::SeqCst);
    let (svc, _) = upstream(|_| (429, Duration::ZERO));
    let resp = FallbackLayer::new(Chain::new([
        Route::new("m").endpoint(keyed_endpoint()),
        Route::new("z"),
    ]))
    .layer(svc)
    .oneshot(post(CALLER, chat("m")))
    .await
    .unwrap();
    let (parts, body) = body_bytes(resp).await;
    let exhausted = String::from_utf8(body.to_vec()).unwrap();
    assert!(exhausted.contains(KEY_B), "{exhausted}");
    let last = common::report(&parts).clone();

    drop(guard);
    let logs = out.text();
    assert!(logs.contains(KEY_A), "spans name the key by its variable");
    for text in [
        format!("{report:?}"),
        report.to_string(),
        format!("{last:?}"),
        last.to_string(),
        exhausted,
        format!("{:?}", parts.headers),
        logs,
        format!("{:?}", keyed_endpoint()),
        format!("{:?}", Route::new("m").endpoint(keyed_endpoint())),
    ] {
        for secret in [SECRET_A, SECRET_B] {
            assert!(!text.contains(secret), "a key leaked: {text}");
        }
    }
}

#[tokio::test]
async fn a_failure_that_is_no_rate_limit_passes_the_endpoints_other_keys_by() {
    let (svc, log) = upstream(|s| {
        if s.model == "z" {
            (200, Duration::ZERO)
        } else {
            (503, Duration::ZERO)
        }
    });
    let layer = FallbackLayer::new(Chain::new([
        Route::new("m").endpoint(keyed_endpoint()),
        Route::new("z"),
    ]));
    let (parts, report) = send(&layer, &svc).await;
    assert_eq!(parts.status, 200);
    let tried: Vec<_> = report
        .attempts()
        .iter()
        .map(|a| {
            (
                a.model(),
                a.key_name(),
                a.outcome(),
                a.skip_reason().map(|r| r.as_str()),
            )
        })
        .collect();
    assert_eq!(
        tried,
        [
            ("m", Some(KEY_A), Outcome::HttpError, None),
            ("m", Some(KEY_B), Outcome::Skipped, Some("endpoint_failed")),
            ("z", None, Outcome::Served, None),
        ]
    );
    assert_eq!(log.lock().unwrap().len(), 2, "the dead endpoint is asked once");
}

#[tokio::test]
async fn keys_of_a_deployment_follow_it() {
    let (svc, log) = upstream(|s| match s.auth.strip_prefix("Bearer ") {
        Some(SECRET_A) => (429, Duration::ZERO),
        _ if s.host == "pool.test" => (200, Duration::ZERO),
        _ => (503, Duration::ZERO),
    });
    let layer = FallbackLayer::new(Chain::new([Route::new("m").deployments([
        Deployment::new("pool").endpoint(keyed_endpoint()),
        Deployment::new("other").endpoint(endpoint("other.test")).weight(0),
    ])]));
    let (_, report) = send(&layer, &svc).await;
    let tried: Vec<_> = report
        .attempts()
        .iter()
        .map(|a| (a.deployment(), a.key_name(), a.outcome()))
        .collect();
    assert_eq!(
        tried,
        [
            (Some("pool"), Some(KEY_A), Outcome::HttpError),
            (Some("pool"), Some(KEY_B), Outcome::Served)
        ]
    );
    assert!(log.lock().unwrap().iter().all(|s| s.host == "pool.test"));
}

// ===== config =====

#[cfg(feature = "config")]
mod config {
    use llm_fallback::config::Config;
    use llm_fallback::FallbackBuilder;

    const TEXT: &str = r#"
[[chains.default.routes]]
model = "m"
balance = "least_latency"
endpoint = { base_url = "http://pool.test/v1", api_key_envs = ["LLM_FALLBACK_TEST_CFG_A", "LLM_FALLBACK_TEST_CFG_B"] }

[[chains.default.routes.deployments]]
name = "pool"
weight = 2

[[chains.default.routes.deployments]]
name = "azure"
provider = { order = ["Azure"] }
endpoint = { base_url = "https://openrouter.ai/api/v1" }

[[chains.default.routes]]
model = "z"
"#;

    fn err(text: &str) -> String {
        let config = Config::from_toml_str(text).and_then(|c| {
            c.validate()?;
            Ok(c)
        });
        match config {
            Ok(c) => FallbackBuilder::from_config(&c.with_source("f.toml"))
                .map(|_| ())
                .unwrap_err()
                .to_string(),
            Err(e) => e.in_file("f.toml").to_string(),
        }
    }

    #[tokio::test]
    async fn deployments_and_keys_come_from_the_config() {
        std::env::set_var("LLM_FALLBACK_TEST_CFG_A", "sk-cfg-a");
        std::env::set_var("LLM_FALLBACK_TEST_CFG_B", "sk-cfg-b");
        let config = Config::from_toml_str(TEXT).unwrap();
        assert_eq!(Config::from_toml_str(&config.to_toml_string()).unwrap(), config);
        let layer = FallbackBuilder::from_config(&config).unwrap().layer();
        let routes = layer.chains().default_chain().routes();
        // `pool` with two keys, `azure` on OpenRouter with none, then `z`.
        let shape: Vec<_> = routes
            .iter()
            .map(|r| (r.model.as_str(), r.endpoint.as_ref().map(|e| e.base_url().to_owned())))
            .collect();
        assert_eq!(shape.len(), 4, "{shape:?}");
        assert_eq!(shape[2].1.as_deref(), Some("https://openrouter.ai/api/v1"));
        assert_eq!(
            routes[2].provider.as_ref().unwrap().order.as_deref(),
            Some(&["Azure".to_owned()][..])
        );
        assert!(!format!("{routes:?}").contains("sk-cfg"));
    }

    #[test]
    fn mistakes_name_their_key() {
        std::env::set_var("LLM_FALLBACK_TEST_CFG_A", "sk-cfg-a");
        let route = "[[chains.default.routes]]\nmodel = \"m\"\n";
        let cases = [
            (
                format!("{route}deployments = [{{ name = \"a\" }}, {{ name = \"a\" }}]\n"),
                "f.toml: chains.default.routes[0].deployments[1].name: another deployment of the route is called \"a\"",
            ),
            (
                format!("{route}deployments = [{{ name = \" \" }}]\n"),
                "f.toml: chains.default.routes[0].deployments[0].name: the deployment's name is empty",
            ),
            (
                format!("{route}balance = \"least_latency\"\n"),
                "f.toml: chains.default.routes[0].balance: the route has no deployments",
            ),
            (
                format!("{route}endpoint = {{ base_url = \"http://x/v1\", api_key_env = \"A\", api_key_envs = [\"B\"] }}\n"),
                "f.toml: chains.default.routes[0].endpoint.api_key_envs: set with api_key_env",
            ),
            (
                format!("{route}endpoint = {{ base_url = \"http://x/v1\", api_key_envs = [\"LLM_FALLBACK_TEST_CFG_A\", \"LLM_FALLBACK_TEST_CFG_A\"] }}\n"),
                "f.toml: chains.default.routes[0].endpoint.api_key_envs[1]: LLM_FALLBACK_TEST_CFG_A is listed twice",
            ),
            (
                format!("{route}endpoint = {{ base_url = \"http://x/v1\", api_key_envs = [\"LLM_FALLBACK_TEST_CFG_A\", \"LLM_FALLBACK_TEST_SURELY_UNSET\"] }}\n"),
                "f.toml: chains.default.routes[0].endpoint.api_key_envs[1]: the environment variable LLM_FALLBACK_TEST_SURELY_UNSET is not set",
            ),
            (
                format!("{route}deployments = [{{ name = \"d\", endpoint = {{ base_url = \"nope\" }} }}]\n"),
                "f.toml: chains.default.routes[0].deployments[0].endpoint.base_url: invalid URL",
            ),
            (
                format!("{route}deployments = [{{ name = \"d\", weight = -1 }}]\n"),
                "chains.default.routes[0].deployments[0].weight",
            ),
            (
                format!("{route}balance = \"fastest\"\n"),
                "chains.default.routes[0].balance: unknown variant `fastest`, expected `weighted` or `least_latency`",
            ),
        ];
        for (text, expected) in cases {
            let got = err(&text);
            assert!(got.contains(expected), "{text}\n  got: {got}\n  expected: {expected}");
        }
    }
}

/// A route's overrides go with each of its deployments.
#[tokio::test]
async fn every_deployment_sends_the_routes_overrides() {
    let (svc, log) = upstream(|s| match s.host.as_str() {
        "a.test" => (503, Duration::ZERO),
        _ => (200, Duration::ZERO),
    });
    let chain = Chain::new([Route::new("m").set("max_tokens", serde_json::json!(77)).deployments([
        Deployment::new("a").endpoint(endpoint("a.test")),
        Deployment::new("b").endpoint(endpoint("b.test")).weight(0),
    ])]);
    let (parts, _) = send(&FallbackLayer::new(chain), &svc).await;
    assert_eq!(parts.status, 200);
    let seen = log.lock().unwrap().clone();
    assert_eq!(
        seen.iter().map(|s| (s.host.as_str(), s.max_tokens)).collect::<Vec<_>>(),
        [("a.test", Some(77)), ("b.test", Some(77))]
    );
}
