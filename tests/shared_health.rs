//! The `[health]` table's breaker, open share and store keys, and the
//! gateway example on a shared Redis: two gateways, one learns that the
//! primary is dead, the other stops sending to it; `/health` says so.
//! Redis is a real `redis-server` on a loopback port (see
//! `support/redis_server.rs`).

mod common;
#[path = "../examples/gateway.rs"]
mod gateway;
#[path = "support/redis_server.rs"]
mod redis_server;

use common::*;
use llm_fallback::config::Config;
use llm_fallback::health::StoreState;
use llm_fallback::FallbackBuilder;
use llm_fallback_mock::{MockServer, MockUpstream, Reply};
use redis_server::RedisServer;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::{timeout, Instant};
use tower::{Layer, ServiceExt};

const ROUTES: &str =
    "[[chains.default.routes]]\nmodel = \"a/primary\"\n\n[[chains.default.routes]]\nmodel = \"b/secondary\"\n";

fn config(health: &str) -> Result<Config, llm_fallback::config::ConfigError> {
    Config::from_toml_str(&format!("[health]\n{health}\n{ROUTES}"))
}

#[test]
fn bad_health_keys_are_errors_naming_the_key() {
    let cases = [
        ("breaker_min_requests = 0", "health.breaker_min_requests", "at least 1"),
        (
            "breaker_failure_ratio = 1.5",
            "health.breaker_failure_ratio",
            "from 0.0 to 1.0",
        ),
        ("max_open_share = -0.1", "health.max_open_share", "from 0.0 to 1.0"),
        ("breaker_window = \"0s\"", "health.breaker_window", "above zero"),
        ("store = \"mysql://db\"", "health.store", "redis:// URL"),
        ("store = \"redis://\"", "health.store", "invalid redis health store URL"),
        ("key_prefix = \"\"", "health.key_prefix", "expected a word"),
    ];
    for (text, key, says) in cases {
        let err = match config(text) {
            Err(e) => e,
            Ok(c) => FallbackBuilder::from_config(&c)
                .err()
                .unwrap_or_else(|| panic!("{text}: accepted")),
        };
        assert_eq!(err.key(), key, "{text}: {err}");
        assert!(err.to_string().contains(says), "{text}: {err}");
    }
    // A password in the URL never shows in the error.
    let c = config("store = \"redis://:hunter2@[::1\"").unwrap();
    let Err(err) = FallbackBuilder::from_config(&c) else {
        panic!("a bad URL fails at start-up")
    };
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[tokio::test]
async fn the_breaker_keys_turn_the_breaker_on() {
    let c = config("failures = 100\nbreaker_min_requests = 4\nbreaker_failure_ratio = 0.5\nbreaker_window = \"1m\"")
        .unwrap();
    let upstream = MockUpstream::new()
        .model("a/primary", Reply::status(503))
        .model("b/secondary", Reply::ok());
    let builder = FallbackBuilder::from_config(&c).unwrap();
    let health = builder.health().expect("[health] keeps health");
    assert_eq!(health.status(Instant::now()).store, StoreState::Memory);
    let svc = builder.layer().layer(upstream.clone());
    for _ in 0..6 {
        let resp = svc
            .clone()
            .oneshot(post("http://mock/api/v1/chat/completions", chat("a/primary")))
            .await
            .unwrap();
        let (parts, _) = body_json(resp).await;
        assert_eq!(report(&parts).served_model(), "b/secondary");
    }
    assert_eq!(
        upstream.request_count("a/primary"),
        4,
        "open after 4 failed attempts of 4"
    );
    let status = health.status(Instant::now());
    assert_eq!(status.cooling.len(), 1);
    assert_eq!(status.cooling[0].0, "a/primary");
}

#[tokio::test]
async fn a_redis_store_from_the_config_is_shared() {
    let Some(server) = RedisServer::start() else { return };
    let text = format!(
        "store = \"{}\"\nkey_prefix = \"cfg-{}\"\nfailures = 1",
        server.url(),
        std::process::id()
    );
    let (a, b) = (config(&text).unwrap(), config(&text).unwrap());
    let (a, b) = (
        FallbackBuilder::from_config(&a).unwrap(),
        FallbackBuilder::from_config(&b).unwrap(),
    );
    let (ha, hb) = (a.health().unwrap(), b.health().unwrap());
    ha.record(
        "a/primary",
        llm_fallback::health::HealthEvent::Failure { retry_after: None },
        Instant::now(),
    );
    let start = Instant::now();
    loop {
        let s = hb.status(Instant::now());
        if s.store == StoreState::Connected && s.cooling.iter().any(|(r, _)| r == "a/primary") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(2), "B learns it: {s:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A gateway app on a loopback port, served until the test ends.
async fn serve(config: &Config) -> String {
    let app = gateway::app(config).expect("the gateway builds");
    let settings = gateway::GatewayConfig::from_config(config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(gateway::serve(listener, app, &settings, std::future::pending::<()>()));
    format!("http://{addr}")
}

/// A plain HTTP client (reqwest's rustls wants a provider installed first).
fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn get_json(client: &reqwest::Client, url: String) -> serde_json::Value {
    let resp = timeout(Duration::from_secs(5), client.get(url).send())
        .await
        .unwrap()
        .unwrap();
    resp.json().await.unwrap()
}

async fn chat_via(client: &reqwest::Client, base: &str) -> String {
    let resp = timeout(
        Duration::from_secs(5),
        client
            .post(format!("{base}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(chat("a/primary"))
            .send(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), 200);
    resp.headers()
        .get("x-fallback-model")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_redis_the_second_skips_the_dead_primary_the_first_learned() {
    let Some(server) = RedisServer::start() else { return };
    let upstream = MockUpstream::new()
        .model("a/primary", Reply::status(503))
        .model("b/secondary", Reply::ok());
    let mock = MockServer::start(upstream.clone()).await.unwrap();
    let text = format!(
        "[gateway]\nupstream = \"{}/api/v1\"\n\n[health]\nstore = \"{}\"\nkey_prefix = \"gw-{}\"\nfailures = 2\ncooldown = \"1m\"\n\n{ROUTES}",
        mock.url(),
        server.url(),
        std::process::id()
    );
    let config = Config::from_toml_str(&text).unwrap();
    let (first, second) = (serve(&config).await, serve(&config).await);
    let client = http();

    // Each gateway polls its store: wait until both are connected.
    for gw in [&first, &second] {
        let start = Instant::now();
        while get_json(&client, format!("{gw}/health")).await["health"]["store"] != "connected" {
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "the gateway connects to redis"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // The first gateway learns the primary is dead (two failures in a row).
    for _ in 0..2 {
        assert_eq!(chat_via(&client, &first).await, "b/secondary");
    }
    assert_eq!(upstream.request_count("a/primary"), 2);
    // The second learns it from Redis within a second.
    let start = Instant::now();
    loop {
        let health = get_json(&client, format!("{second}/health")).await;
        let cooling = health["health"]["cooling"].as_array().cloned().unwrap_or_default();
        if cooling.iter().any(|c| c["route"] == "a/primary") {
            let left = cooling[0]["remaining_ms"].as_u64().unwrap();
            assert!(left > 55_000, "about a minute left: {left}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "the second gateway learns within 1 s: {health}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for _ in 0..3 {
        assert_eq!(chat_via(&client, &second).await, "b/secondary");
    }
    assert_eq!(
        upstream.request_count("a/primary"),
        2,
        "the second gateway never sent to the dead primary"
    );
}

/// The gateway example as a process of its own (`target/debug/examples/
/// gateway`, built by `cargo test`), killed on drop.
struct GatewayProcess {
    child: std::process::Child,
    base: String,
}

impl GatewayProcess {
    fn start(config: &std::path::Path) -> Option<GatewayProcess> {
        use std::io::BufRead;
        let exe = std::env::current_exe().ok()?;
        let bin = exe.parent()?.parent()?.join("examples").join("gateway");
        if !bin.exists() {
            eprintln!(
                "\n!!!!! SKIPPED: {} is not built (cargo test builds it) !!!!!\n",
                bin.display()
            );
            return None;
        }
        let mut child = std::process::Command::new(bin)
            .args(["--config".as_ref(), config.as_os_str()])
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the gateway starts");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("gateway on ") {
                    let _ = tx.send(rest.split(':').take(3).collect::<Vec<_>>().join(":"));
                }
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the gateway says where it listens");
        Some(GatewayProcess { child, base })
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateway_processes_on_one_redis_the_second_stops_sending_to_a_dead_primary() {
    let Some(server) = RedisServer::start() else { return };
    let upstream = MockUpstream::new()
        .model("a/primary", Reply::status(503))
        .model("b/secondary", Reply::ok());
    let mock = MockServer::start(upstream.clone()).await.unwrap();
    let text = format!(
        "[gateway]\nupstream = \"{}/api/v1\"\n\n[health]\nstore = \"{}\"\nkey_prefix = \"proc-{}\"\nfailures = 2\ncooldown = \"1m\"\n\n{ROUTES}",
        mock.url(),
        server.url(),
        std::process::id()
    );
    let path = std::env::temp_dir().join(format!("llm-fallback-shared-health-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    let Some(first) = GatewayProcess::start(&path) else {
        return;
    };
    let Some(second) = GatewayProcess::start(&path) else {
        return;
    };
    let _ = std::fs::remove_file(&path);
    let client = http();
    for gw in [&first.base, &second.base] {
        let start = Instant::now();
        while get_json(&client, format!("{gw}/health")).await["health"]["store"] != "connected" {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the gateway process connects to redis"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    for _ in 0..2 {
        assert_eq!(chat_via(&client, &first.base).await, "b/secondary");
    }
    assert_eq!(
        upstream.request_count("a/primary"),
        2,
        "the first gateway learned the primary is dead"
    );
    let start = Instant::now();
    loop {
        let health = get_json(&client, format!("{}/health", second.base)).await;
        let cooling = health["health"]["cooling"].as_array().cloned().unwrap_or_default();
        if cooling.iter().any(|c| c["route"] == "a/primary") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "the second process learns within 1 s: {health}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for _ in 0..3 {
        assert_eq!(chat_via(&client, &second.base).await, "b/secondary");
    }
    assert_eq!(
        upstream.request_count("a/primary"),
        2,
        "the second process never sent to it"
    );
}
