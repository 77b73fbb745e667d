//! An OpenAI- and Anthropic-compatible gateway: `FallbackLayer` from a
//! config file behind `POST /v1/chat/completions`, `/v1/responses`,
//! `/v1/messages`, `/v1/embeddings` and `/v1/completions`, so any OpenAI or
//! Anthropic client gets fallbacks by changing its base URL.
//!
//! Run with:
//!
//! ```text
//! cargo run --example gateway                                   # demo: mock upstream, primary down
//! cargo run --example gateway -- --config examples/fallback.toml
//! ```
//!
//! Flags: `--config FILE` (TOML, or JSON for `*.json`), `--listen ADDR`
//! (overrides `gateway.listen`), `--serve-mock ADDR` (serve only the built-in
//! mock upstream, for `benches/gateway.sh`).
//!
//! Routes: `POST /v1/chat/completions`, `/v1/responses`, `/v1/messages`,
//! `/v1/embeddings`, `/v1/completions` and their `/api/v1/…` forms (the
//! fallback chain, each request forwarded to the same API's path on the
//! upstream), `GET /v1/models` (the model names and aliases of
//! `[models.*]`, or else the models the chains can serve), `GET
//! /health`, and `GET /metrics` (Prometheus text) when `gateway.metrics =
//! true`. Anything else is a JSON `404` in OpenAI's error shape (Anthropic's
//! under `/v1/messages`). With a `[health]` table, `/health` also says where
//! route health is kept (`memory`; with `store = "redis://..."`,
//! `connected`, or `local-only` while Redis is unreachable) and which routes
//! cool down: replicas naming one Redis and `key_prefix` learn together.
//! Every request gets an `x-request-id` (kept
//! if the caller sent one) and a `tower-http` trace span. The caller's
//! `Authorization` is never forwarded: the upstream gets the gateway's own key
//! (`gateway.api_key_env`, default `OPENROUTER_API_KEY` for OpenRouter).
//!
//! Callers: with `gateway.client_keys_env` (a variable holding keys,
//! comma-separated) every route but `/health` wants `Authorization: Bearer
//! <one of them>` (or `x-api-key: <one of them>`, as the Anthropic SDKs
//! send it) and answers `401` otherwise, before reading the body. Without
//! it the gateway refuses to listen on anything but loopback unless
//! `gateway.allow_unauthenticated = true`. A caller gets
//! `gateway.header_read_timeout` (10s) for a request head and
//! `gateway.request_body_timeout` (30s, then `408`) for the body; past
//! `gateway.max_concurrent_requests` (1024) chat requests in flight, streams
//! included, a request gets `503` at once.
//!
//! With no `--config` and no `OPENROUTER_API_KEY` it starts the mock
//! OpenRouter on 127.0.0.1 with a primary model that is down (503) and serves
//! on `127.0.0.1:8080`, printing a `curl` line to try. Ctrl-C stops accepting
//! connections and lets in-flight requests and streams finish, for at most
//! `gateway.shutdown_grace` (default 30s).
//!
//! Routing by model: each `[models.NAME]` of the config (a model id or an
//! alias such as `smart`) is served by its chain, so one client asks for
//! `"smart"` or `"cheap"` and each has its own fallbacks; `x-fallback-model`
//! says which model served. With `[models.*]` and no `unknown_model`, a
//! model the gateway does not serve is a `400` (`model_not_found`) listing
//! what it serves. A config without `[models.*]` sends every request down
//! the default chain, as before.
//!
//! The `[gateway]` table of the config file is this example's own
//! ([`GatewayConfig`], with its defaults and checks): the library keeps it
//! for the gateway (`Config::gateway`) and reads nothing in it.
//!
//! The tests (`tests/gateway.rs`, `tests/gateway_dialects.rs`) include this file as a module and drive
//! [`app`] and [`serve`] with the `async-openai` client.

// Items only the tests use are dead code in the example binary, and the
// reverse in the tests.
#![allow(dead_code)]

use axum::body::Body;
use axum::extract::State;
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, Error as ClientError};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use llm_fallback::config::{Config, ConfigError, ConfigPolicy};
use llm_fallback::native::{Endpoint, EndpointError};
use llm_fallback::{Dialect, ExhaustionBody, FallbackBuilder, FallbackService, ReplayBody, UnknownModel};
use llm_fallback_mock::{MockUpstream, Reply};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use pin_project_lite::pin_project;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service, ServiceBuilder};
use tower_http::trace::TraceLayer;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// A server allocating per request: mimalloc spends less time in malloc than
// glibc's (measured in benches/gateway.sh). The tests keep the system one.
#[cfg(not(test))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The demo's chain: a primary that is down, then two that work.
const DEMO_CONFIG: &str = r#"
# The demo listens on loopback only; its callers (benches/gateway.sh) pick
# the `healthy` chain by header.
allow_chain_header = true

[gateway]
metrics = true
shutdown_grace = "10s"

[chains.default]
deadline = "60s"

[[chains.default.routes]]
model = "anthropic/claude-3.5-sonnet"
label = "primary"
timeout = "30s"
first_token_timeout = "10s"

[[chains.default.routes]]
model = "openai/gpt-4o"
label = "secondary"
timeout = "25s"

[[chains.default.routes]]
model = "openai/gpt-4o-mini"
label = "budget"
timeout = "15s"

# Picked with the header `x-fallback-chain: healthy` (benches/gateway.sh).
[[chains.healthy.routes]]
model = "openai/gpt-4o"
label = "primary"
timeout = "25s"

# The models callers may ask for (`GET /v1/models` lists them); any other is
# a 400 listing these.
[models."anthropic/claude-3.5-sonnet"]
chain = "default"

[models.smart]
chain = "default"

[models."openai/gpt-4o"]
chain = "healthy"
"#;

#[tokio::main]
async fn main() {
    // Errors (a bad config above all) print as one readable line.
    if let Err(e) = run().await {
        eprintln!("gateway: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,llm_fallback=warn,tower_http=info".into()),
        )
        .init();
    // The HTTPS client uses rustls with ring; there is no other provider.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let args = Args::parse()?;
    if let Some(addr) = args.serve_mock {
        let (addr, _server) = serve_mock(addr).await?;
        println!("mock OpenRouter on http://{addr}/api/v1 (Ctrl-C to stop)");
        tokio::signal::ctrl_c().await?;
        return Ok(());
    }

    let key_set = std::env::var(GatewayConfig::DEFAULT_API_KEY_ENV).is_ok_and(|k| !k.trim().is_empty());
    let (config, _mock) = match (&args.config, key_set) {
        (Some(path), _) => (Config::from_path(path)?, None),
        (None, true) => (openrouter_config()?, None),
        (None, false) => {
            let (mock_addr, mock) = serve_mock("127.0.0.1:0".parse()?).await?;
            let text = DEMO_CONFIG.replace(
                "[gateway]\n",
                &format!("[gateway]\nupstream = \"http://{mock_addr}/api/v1\"\n"),
            );
            println!("no --config and no OPENROUTER_API_KEY: demo against the mock OpenRouter on http://{mock_addr} (primary down)");
            (Config::from_toml_str(&text)?, Some(mock))
        }
    };
    // The `[gateway]` table first: a bad key there is named before anything starts.
    let gateway = GatewayConfig::from_config(&config)?;
    let listen = args.listen.unwrap_or_else(|| gateway.listen_addr());
    let app = app(&config)?;
    // Before binding: an open gateway never listens beyond loopback by accident.
    let access = access(&config, listen)?;

    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    match access {
        Access::Keys => tracing::info!(
            "callers must send Authorization: Bearer <a key from {}>",
            gateway.client_keys_env.as_deref().unwrap_or_default()
        ),
        Access::LoopbackOnly => tracing::info!(
            "callers are not authenticated (no gateway.client_keys_env): serving {addr}, a loopback address, only"
        ),
        Access::Open => tracing::warn!(
            "callers are not authenticated and gateway.allow_unauthenticated = true: anyone who can reach {addr} uses the upstream keys"
        ),
    }
    println!(
        "gateway on http://{addr}: POST /v1/{{chat/completions,responses,messages,embeddings,completions}}, GET /v1/models, GET /health{}",
        if gateway.metrics_enabled() {
            ", GET /metrics"
        } else {
            ""
        }
    );
    let auth = match &gateway.client_keys_env {
        Some(var) => format!(" -H \"authorization: Bearer ${{{var}%%,*}}\""),
        None => String::new(),
    };
    println!(
        "try:\n  curl -s http://{addr}/v1/chat/completions -H 'content-type: application/json'{auth} \\\n    -d '{{\"model\":\"anthropic/claude-3.5-sonnet\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}]}}'"
    );
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        println!("shutting down: letting in-flight requests finish");
    };
    match serve(listener, app, &gateway, shutdown).await {
        Drained::AllFinished => println!("stopped"),
        Drained::GraceElapsed => println!("stopped: the grace period ended with requests still in flight"),
    }
    Ok(())
}

/// The command line.
struct Args {
    config: Option<std::path::PathBuf>,
    listen: Option<SocketAddr>,
    serve_mock: Option<SocketAddr>,
}

impl Args {
    fn parse() -> Result<Args, BoxError> {
        let mut args = Args {
            config: None,
            listen: None,
            serve_mock: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--config" => args.config = Some(value()?.into()),
                "--listen" => args.listen = Some(value()?.parse()?),
                "--serve-mock" => args.serve_mock = Some(value()?.parse()?),
                "-h" | "--help" => {
                    println!("usage: gateway [--config FILE] [--listen ADDR] [--serve-mock ADDR]");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other:?}; try --help").into()),
            }
        }
        Ok(args)
    }
}

/// With `OPENROUTER_API_KEY` and no file: a real chain on OpenRouter whose
/// primary does not exist, so the fallback is real.
fn openrouter_config() -> Result<Config, ConfigError> {
    Config::from_toml_str(
        r#"
        [gateway]
        metrics = true

        [chains.default]
        deadline = "90s"

        [[chains.default.routes]]
        model = "llm-fallback/no-such-model"
        label = "primary"
        timeout = "30s"

        [[chains.default.routes]]
        model = "openai/gpt-4o-mini"
        label = "secondary"
        timeout = "30s"
        first_token_timeout = "20s"
        idle_timeout = "30s"
        "#,
    )
}

// ===== the [gateway] settings =====

/// `[gateway]` in the config file: this server's own settings. The library
/// keeps the table for it ([`Config::gateway`]) and reads nothing in it; the
/// type, its defaults and its checks are the gateway's.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address to listen on (default `127.0.0.1:8080`).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// The upstream API base requests are forwarded to (default OpenRouter's).
    #[serde(default)]
    pub upstream: Option<String>,
    /// The environment variable holding the upstream's key; required when
    /// named. Left out: `OPENROUTER_API_KEY` for an OpenRouter upstream, no
    /// key for others.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Serve Prometheus metrics on `GET /metrics` (default false).
    #[serde(default)]
    pub metrics: Option<bool>,
    /// How long in-flight requests and streams may take to finish after a
    /// shutdown signal (default 30s).
    #[serde(default, deserialize_with = "duration")]
    pub shutdown_grace: Option<Duration>,
    /// How long a caller may take to send a request head, from the moment
    /// the gateway waits for one (an idle keep-alive connection included);
    /// past it the connection is closed (default 10s).
    #[serde(default, deserialize_with = "duration")]
    pub header_read_timeout: Option<Duration>,
    /// How long a caller may take to send a whole request body, from the
    /// end of its head; past it the caller gets a `408` and the connection is
    /// closed (default 30s).
    #[serde(default, deserialize_with = "duration")]
    pub request_body_timeout: Option<Duration>,
    /// Most chat requests in flight at once, streams included until their
    /// last byte; past it a request gets a `503` at once (default 1024).
    #[serde(default)]
    pub max_concurrent_requests: Option<usize>,
    /// The environment variable holding the keys callers must send as
    /// `Authorization: Bearer <key>` (comma-separated); required and
    /// non-empty when named. Left out: callers are not authenticated, and the
    /// gateway listens on loopback only unless `allow_unauthenticated`.
    #[serde(default)]
    pub client_keys_env: Option<String>,
    /// Without `client_keys_env`, listen on a non-loopback address anyway,
    /// for anyone who can reach it (default false; no effect with keys).
    #[serde(default)]
    pub allow_unauthenticated: Option<bool>,
}

impl GatewayConfig {
    /// Default of `listen`.
    pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
    /// Default of `upstream`.
    pub const DEFAULT_UPSTREAM: &'static str = "https://openrouter.ai/api/v1";
    /// Default of `api_key_env`.
    pub const DEFAULT_API_KEY_ENV: &'static str = "OPENROUTER_API_KEY";
    /// Default of `shutdown_grace`.
    pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
    /// Default of `header_read_timeout`.
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default of `request_body_timeout`.
    pub const DEFAULT_REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default of `max_concurrent_requests`.
    pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 1024;

    /// `config`'s `[gateway]` table (the defaults without one), checked;
    /// an error names the file and the key, like the library's own.
    pub fn from_config(config: &Config) -> Result<GatewayConfig, ConfigError> {
        let gateway: GatewayConfig = config.gateway()?.unwrap_or_default();
        gateway.check().map_err(|e| located(config, e))?;
        Ok(gateway)
    }

    /// What the types alone cannot check.
    fn check(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.upstream {
            Endpoint::new(url.as_str()).map_err(|err| match err {
                EndpointError::InvalidUrl { url, reason } => ConfigError::new(
                    "gateway.upstream",
                    format!(
                        "invalid URL {url:?} ({reason}); expected an API base such as \"https://openrouter.ai/api/v1\""
                    ),
                ),
                other => ConfigError::new("gateway.upstream", other.to_string()),
            })?;
        }
        if self.api_key_env.as_deref().is_some_and(|v| v.trim().is_empty()) {
            return Err(ConfigError::new(
                "gateway.api_key_env",
                "empty; expected the name of an environment variable such as \"OPENROUTER_API_KEY\"",
            ));
        }
        if self.client_keys_env.as_deref().is_some_and(|v| v.trim().is_empty()) {
            return Err(ConfigError::new(
                "gateway.client_keys_env",
                "empty; expected the name of an environment variable such as \"GATEWAY_CLIENT_KEYS\" \
                 (leave the key out for no caller authentication)",
            ));
        }
        for (key, d, example) in [
            ("gateway.header_read_timeout", self.header_read_timeout, "10s"),
            ("gateway.request_body_timeout", self.request_body_timeout, "30s"),
        ] {
            if d == Some(Duration::ZERO) {
                return Err(ConfigError::new(
                    key,
                    format!("zero; expected a duration above zero, such as \"{example}\" (leave the key out for the default)"),
                ));
            }
        }
        if self.max_concurrent_requests == Some(0) {
            return Err(ConfigError::new(
                "gateway.max_concurrent_requests",
                "0; expected at least 1 request, such as 1024",
            ));
        }
        Ok(())
    }

    /// `listen`, or its default.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen.unwrap_or(Self::DEFAULT_LISTEN)
    }

    /// `upstream`, or its default, without a trailing `/`.
    pub fn upstream_url(&self) -> &str {
        self.upstream
            .as_deref()
            .unwrap_or(Self::DEFAULT_UPSTREAM)
            .trim_end_matches('/')
    }

    /// `metrics`, or its default.
    pub fn metrics_enabled(&self) -> bool {
        self.metrics.unwrap_or(false)
    }

    /// `shutdown_grace`, or its default.
    pub fn grace(&self) -> Duration {
        self.shutdown_grace.unwrap_or(Self::DEFAULT_SHUTDOWN_GRACE)
    }

    /// `header_read_timeout`, or its default.
    pub fn header_timeout(&self) -> Duration {
        self.header_read_timeout.unwrap_or(Self::DEFAULT_HEADER_READ_TIMEOUT)
    }

    /// `request_body_timeout`, or its default.
    pub fn body_timeout(&self) -> Duration {
        self.request_body_timeout.unwrap_or(Self::DEFAULT_REQUEST_BODY_TIMEOUT)
    }

    /// `max_concurrent_requests`, or its default.
    pub fn concurrency_limit(&self) -> usize {
        self.max_concurrent_requests
            .unwrap_or(Self::DEFAULT_MAX_CONCURRENT_REQUESTS)
    }

    /// `allow_unauthenticated`, or its default.
    pub fn unauthenticated_allowed(&self) -> bool {
        self.allow_unauthenticated.unwrap_or(false)
    }
}

const DURATION_EXPECTED: &str =
    "a duration: a number and a unit (h, m, s, ms, us, ns), such as \"30s\", \"250ms\", \"1.5s\" or \"1m30s\"";

/// A duration key, written like the library's: `"30s"`, `"250ms"`, `"1.5s"`,
/// `"1m30s"`.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(DURATION_EXPECTED)
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            parse_duration(text)
                .ok_or_else(|| E::custom(format!("invalid duration {text:?}: expected {DURATION_EXPECTED}")))
        }
    }
    d.deserialize_str(V).map(Some)
}

/// Groups of a number and a unit, optionally separated by spaces; `None`
/// for anything else or a duration too long to hold.
fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, tail) = rest.split_at(number_len);
        let unit_len = tail.find(|c: char| !c.is_alphabetic()).unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let unit_ns: u128 = match unit {
            "h" => 3_600_000_000_000,
            "m" | "min" => 60_000_000_000,
            "s" => 1_000_000_000,
            "ms" => 1_000_000,
            "us" | "µs" => 1_000,
            "ns" => 1,
            _ => return None,
        };
        let part = match number.split_once('.') {
            None => number.parse::<u128>().ok()?.checked_mul(unit_ns)?,
            Some(("", "")) => return None,
            Some(_) => (number.parse::<f64>().ok()? * unit_ns as f64).round() as u128,
        };
        total = total.checked_add(part)?;
        rest = tail.trim_start();
    }
    Some(Duration::from_nanos(u64::try_from(total).ok()?))
}

/// The upstream key from the environment variable `var`, which the config
/// names at `gateway.api_key_env`; never printed.
fn upstream_key(config: &Config, var: &str) -> Result<String, ConfigError> {
    let refuse = |what: &str| {
        located(
            config,
            ConfigError::new(
                "gateway.api_key_env",
                format!("the environment variable {var} {what}; expected it to hold the API key"),
            ),
        )
    };
    match std::env::var(var) {
        Ok(key) if !key.trim().is_empty() => Ok(key),
        Ok(_) => Err(refuse("is empty")),
        Err(_) => Err(refuse("is not set")),
    }
}

// ===== the app =====

/// The gateway's router for `config`: chat completions through the
/// `FallbackLayer`, health, metrics, request ids and tracing; caller keys,
/// the concurrency cap and the body deadline from `[gateway]`.
///
/// Fails when the config names a key variable (upstream or callers') that is
/// not set.
pub fn app(config: &Config) -> Result<Router, ConfigError> {
    let gateway = GatewayConfig::from_config(config)?;
    let upstream = Upstream::from_config(config, &gateway)?;
    let keys = ClientKeys::from_config(config, &gateway)?;
    // Callers are other processes: the exhaustion answer is to name models
    // and outcomes only, never transport errors or provider text (the
    // report keeps the detail).
    // `exhaustion_body = "full"` in the config file says otherwise.
    // With `[models.*]`, a model the gateway does not serve is a 400 that
    // lists what it serves, unless `unknown_model` says otherwise: a
    // caller learns at once, rather than from a provider's error.
    let rejecting;
    let config = if config.unknown_model.is_none() && !config.models.is_empty() {
        let mut with = config.clone();
        with.unknown_model = Some(UnknownModel::Reject);
        rejecting = with;
        &rejecting
    } else {
        config
    };
    let mut settings = FallbackBuilder::from_config(config)?;
    if config.exhaustion_body.is_none() {
        settings = settings.exhaustion_body(ExhaustionBody::Summary);
    }
    // `/health` shows the store (memory, or Redis connected / local-only)
    // and the routes cooling down.
    let health = settings.health();
    let layer = settings.layer();
    let metrics = gateway.metrics_enabled().then(prometheus).flatten();

    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let client = UpstreamClient(Arc::new(
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build::<_, ReplayBody>(https),
    ));

    let chat = Chat {
        fallback: layer.layer(client),
        limits: Arc::new(ChatLimits {
            upstream,
            slots: Arc::new(Semaphore::new(gateway.concurrency_limit().min(Semaphore::MAX_PERMITS))),
            body_limit: gateway.body_timeout(),
        }),
    };

    let chains: Vec<String> = config.chains.keys().cloned().collect();
    let mut router = Router::new();
    for base in ["/v1", "/api/v1"] {
        for dialect in Dialect::ALL {
            router = router.route_service(&format!("{base}{}", dialect.path()), chat.clone());
        }
    }
    let models = models_list(config);
    if let Some(handle) = metrics {
        router = router.route(
            "/metrics",
            get(move || {
                let text = handle.render();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text) }
            }),
        );
    }
    for path in ["/v1/models", "/api/v1/models"] {
        let models = models.clone();
        router = router.route(path, get(move || std::future::ready(axum::Json(models.clone()))));
    }
    if let Some(keys) = keys {
        // Everything so far: the APIs, models and metrics; `/health` stays open.
        router = router.route_layer(middleware::from_fn_with_state(Arc::new(keys), authenticate));
    }
    router = router.route(
        "/health",
        get(move || {
            let mut body = serde_json::json!({"status": "ok", "chains": chains});
            if let Some(health) = &health {
                body["health"] = health_json(&health.status(tokio::time::Instant::now()));
            }
            async move { axum::Json(body) }
        }),
    );
    router = router.fallback(|uri: Uri| std::future::ready(not_found(uri.path())));
    Ok(router.layer(ServiceBuilder::new().layer(RequestIds::default()).layer(
        TraceLayer::new_for_http().make_span_with(|request: &Request<Body>| {
            let id = request.headers().get(X_REQUEST_ID).and_then(|v| v.to_str().ok());
            tracing::debug_span!("gateway", method = %request.method(), path = request.uri().path(), request_id = id)
        }),
    )))
}

/// `GET /v1/models`, in OpenAI's list shape: the model names and aliases
/// of `[models.*]`, what callers may ask for; without them, every model a
/// chain of `config` can serve.
fn models_list(config: &Config) -> serde_json::Value {
    let mut ids: Vec<&str> = if config.models.is_empty() {
        config
            .chains
            .values()
            .flat_map(|c| c.routes.iter().map(|r| r.model.as_str()))
            .collect()
    } else {
        config.models.keys().map(String::as_str).collect()
    };
    ids.sort_unstable();
    ids.dedup();
    let data: Vec<serde_json::Value> = ids
        .into_iter()
        .map(|id| serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "llm-fallback"}))
        .collect();
    serde_json::json!({"object": "list", "data": data})
}

/// The `404` of a path the gateway does not serve: Anthropic's error shape
/// under `/v1/messages` (what an Anthropic SDK reads), OpenAI's elsewhere.
fn not_found(path: &str) -> Response<Body> {
    let message = format!("the gateway serves no {path}");
    error_response(
        anthropic_path(path),
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "not_found",
        &message,
    )
}

/// `/health`'s `health` member: `{"store": "connected", "cooling":
/// [{"route": "...", "remaining_ms": 1200}]}` (route names carry no
/// endpoint credentials).
fn health_json(status: &llm_fallback::health::HealthStatus) -> serde_json::Value {
    let cooling: Vec<_> = status
        .cooling
        .iter()
        .map(|(route, left)| serde_json::json!({"route": route, "remaining_ms": left.as_millis() as u64}))
        .collect();
    serde_json::json!({"store": status.store.as_str(), "cooling": cooling})
}

/// Who may call a gateway listening on `listen`, from `config`'s
/// `[gateway]`.
#[derive(Debug, PartialEq, Eq)]
pub enum Access {
    /// Callers must send a key from `gateway.client_keys_env`.
    Keys,
    /// No keys, on a loopback address: only this machine can call.
    LoopbackOnly,
    /// No keys and `gateway.allow_unauthenticated = true`: anyone who can
    /// reach the address.
    Open,
}

/// Refuses a non-loopback `listen` without caller keys, unless
/// `gateway.allow_unauthenticated = true`. (The keys themselves are read by
/// [`app`].)
pub fn access(config: &Config, listen: SocketAddr) -> Result<Access, ConfigError> {
    let gateway = GatewayConfig::from_config(config)?;
    if gateway.client_keys_env.is_some() {
        Ok(Access::Keys)
    } else if listen.ip().to_canonical().is_loopback() {
        Ok(Access::LoopbackOnly)
    } else if gateway.unauthenticated_allowed() {
        Ok(Access::Open)
    } else {
        Err(located(
            config,
            ConfigError::new(
                "gateway.client_keys_env",
                format!(
                    "not set, and {listen} is not a loopback address; expected the name of the environment variable \
                     holding the keys callers must send, or gateway.allow_unauthenticated = true to let in anyone \
                     who can reach {listen}"
                ),
            ),
        ))
    }
}

/// Names `config`'s file in `err`.
fn located(config: &Config, err: ConfigError) -> ConfigError {
    match config.source() {
        Some(path) => err.in_file(path),
        None => err,
    }
}

/// How [`serve`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Every in-flight request and stream finished.
    AllFinished,
    /// The grace period ended first; what was left is dropped.
    GraceElapsed,
}

/// Serves `app` on `listener` (HTTP/1.1, `gateway.header_read_timeout` for
/// each request head) until `shutdown` resolves, then stops accepting and
/// waits for in-flight requests (streams included) to finish, for at most
/// `gateway.shutdown_grace`.
pub fn serve<F>(
    listener: TcpListener,
    app: Router,
    gateway: &GatewayConfig,
    shutdown: F,
) -> impl Future<Output = Drained> + Send + 'static
where
    F: Future<Output = ()> + Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    // The timer runs from when the connection waits for a head, so it also
    // closes a keep-alive connection idle that long.
    http.timer(TokioTimer::new())
        .header_read_timeout(gateway.header_timeout());
    let grace = gateway.grace();
    async move {
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let tcp = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    // The peer gave up before we took it: nothing to do.
                    Err(e) if is_connection_error(&e) => continue,
                    // Out of file descriptors and the like: give them time to free up.
                    Err(e) => {
                        tracing::error!(error = %e, "accepting a connection failed; retrying in 1s");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                            () = &mut shutdown => break,
                        }
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = tcp.set_nodelay(true);
            let conn = http.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app.clone()));
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                // A closed or timed-out connection is the caller's business.
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended");
                }
            });
        }
        drop(listener);
        tokio::select! {
            () = graceful.shutdown() => Drained::AllFinished,
            () = tokio::time::sleep(grace) => Drained::GraceElapsed,
        }
    }
}

/// Errors of one connection, not of the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

// ===== callers =====

/// The keys callers may send, from `gateway.client_keys_env`. Never printed:
/// there is no `Debug`.
struct ClientKeys(Vec<Box<[u8]>>);

impl ClientKeys {
    /// `None` without `gateway.client_keys_env`; an error when the variable
    /// it names is unset, empty or holds something that is not a key.
    fn from_config(config: &Config, gateway: &GatewayConfig) -> Result<Option<ClientKeys>, ConfigError> {
        const KEY: &str = "gateway.client_keys_env";
        let Some(var) = gateway.client_keys_env.as_deref() else {
            return Ok(None);
        };
        let refuse = |what: &str| {
            located(
                config,
                ConfigError::new(
                    KEY,
                    format!(
                        "the environment variable {var} {what}; expected it to hold the keys callers must send, \
                         comma-separated"
                    ),
                ),
            )
        };
        let text = match std::env::var(var) {
            Ok(text) => text,
            Err(std::env::VarError::NotPresent) => return Err(refuse("is not set")),
            Err(std::env::VarError::NotUnicode(_)) => return Err(refuse("is not UTF-8")),
        };
        let keys: Vec<Box<[u8]>> = text
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| k.as_bytes().into())
            .collect();
        if keys.is_empty() {
            return Err(refuse("is empty"));
        }
        // A key that no `Authorization: Bearer` value can carry would lock
        // everyone out without a word.
        if keys.iter().any(|k| k.iter().any(|b| !b.is_ascii_graphic())) {
            return Err(refuse("holds a key with a space or a character outside visible ASCII"));
        }
        Ok(Some(ClientKeys(keys)))
    }

    /// Why `headers` do not carry an accepted key, if they do not.
    fn check(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let mut api_keys = headers.get_all(X_API_KEY).iter();
        let key = match (values.next(), values.next(), api_keys.next(), api_keys.next()) {
            (Some(value), None, None, _) => {
                bearer(value.as_bytes()).ok_or("the Authorization header is not Bearer <key>")?
            }
            // Anthropic's SDKs send the key this way.
            (None, _, Some(value), None) => value.as_bytes(),
            (None, _, None, _) => return Err("no API key: send Authorization: Bearer <key>"),
            _ => return Err("more than one API key header; send one"),
        };
        if self.accepts(key) {
            Ok(())
        } else {
            Err("the API key is not valid for this gateway")
        }
    }

    /// Compares `presented` with every key, each in constant time, without
    /// stopping at a match (only the lengths show in the timing).
    fn accepts(&self, presented: &[u8]) -> bool {
        let mut any = subtle::Choice::from(0);
        for key in &self.0 {
            any |= key.as_ref().ct_eq(presented);
        }
        any.into()
    }
}

/// The key of a `Bearer <key>` header value (scheme in any case).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    let key = rest.trim_ascii();
    (scheme.eq_ignore_ascii_case(b"bearer ") && !key.is_empty()).then_some(key)
}

/// `401` unless the request carries an accepted key; the header is removed
/// before anything else sees the request. Nothing is read first.
async fn authenticate(State(keys): State<Arc<ClientKeys>>, mut request: Request<Body>, next: Next) -> Response<Body> {
    match keys.check(request.headers()) {
        Ok(()) => {
            request.headers_mut().remove(header::AUTHORIZATION);
            request.headers_mut().remove(X_API_KEY);
            next.run(request).await
        }
        Err(why) => {
            tracing::debug!(path = request.uri().path(), "refused a caller: {why}");
            let mut response = error_response(
                anthropic_path(request.uri().path()),
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "invalid_api_key",
                why,
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

// ===== the chat routes =====

/// The chat routes' service: the concurrency cap, the request body
/// deadline, the rewrite for the upstream and the error answers around the
/// fallback layer, in one service and one future. As separate middlewares
/// (two axum `from_fn`, `map_request`, `map_response`, `HandleErrorLayer`)
/// each cloned its inner service and wrapped or boxed a future on every
/// request, since axum clones a route's service for each one; this clone is
/// two reference counts (see [`UpstreamClient`]) and one more.
#[derive(Clone)]
struct Chat {
    fallback: FallbackService<UpstreamClient, ConfigPolicy>,
    limits: Arc<ChatLimits>,
}

/// What every chat request shares.
struct ChatLimits {
    upstream: Upstream,
    /// `gateway.max_concurrent_requests` slots.
    slots: Arc<Semaphore>,
    /// `gateway.request_body_timeout`.
    body_limit: Duration,
}

impl Service<Request<Body>> for Chat {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ChatFuture;

    /// Always ready: the fallback service is as ready as its client, which
    /// always is ([`UpstreamClient`]); each retry waits on its own clone.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    /// The cap first: past `gateway.max_concurrent_requests` a request gets
    /// `503` at once, and a request refused there gets no body deadline.
    /// The slot is held until the response body is dropped, so a stream
    /// counts until its last byte (tower's `ConcurrencyLimit` would free it
    /// at the response head).
    fn call(&mut self, request: Request<Body>) -> ChatFuture {
        let limits = &*self.limits;
        let anthropic = anthropic_path(request.uri().path());
        let Ok(slot) = limits.slots.clone().try_acquire_owned() else {
            tracing::debug!("refused a request: gateway.max_concurrent_requests are in flight");
            return ChatFuture::Answered(Some(overloaded(anthropic)));
        };
        let expired = Arc::new(AtomicBool::new(false));
        let request = request.map(|body| Deadline::new(body, limits.body_limit, expired.clone()));
        // Outside the fallback: once per request, not per attempt.
        let request = limits.upstream.prepare(request);
        ChatFuture::Forwarded {
            answer: self.fallback.call(request),
            slot: Some(slot),
            expired,
            limit: limits.body_limit,
            anthropic,
        }
    }
}

/// [`Chat`]'s future.
enum ChatFuture {
    /// An answer made at once (the cap's `503`).
    Answered(Option<Response<Body>>),
    /// The fallback at work, with the request's slot and the body
    /// deadline's flag.
    Forwarded {
        answer: llm_fallback::ResponseFuture<Incoming, ClientError>,
        slot: Option<OwnedSemaphorePermit>,
        expired: Arc<AtomicBool>,
        limit: Duration,
        /// The gateway's own errors in Anthropic's shape.
        anthropic: bool,
    },
}

impl Future for ChatFuture {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (answer, slot, expired, limit, anthropic) = match &mut *self {
            ChatFuture::Answered(response) => {
                return Poll::Ready(Ok(response.take().expect("ChatFuture polled after it completed")));
            }
            ChatFuture::Forwarded {
                answer,
                slot,
                expired,
                limit,
                anthropic,
            } => (answer, slot, expired, *limit, *anthropic),
        };
        let result = ready!(Pin::new(answer).poll(cx));
        let _slot = slot.take().expect("ChatFuture polled after it completed");
        let response = if expired.load(Ordering::Relaxed) {
            // The layer answered its own 400 for an unreadable body; say what it was.
            body_timed_out(anthropic, limit).map(|body| Body::new(Holding { body, _slot }))
        } else {
            match result {
                // Hop-by-hop headers off; the body boxed once, with its slot.
                Ok(response) => strip_response(response).map(|body| Body::new(Holding { body, _slot })),
                // The layer's error only comes from the client's readiness,
                // which never fails; should that change, this is the answer.
                Err(e) => {
                    tracing::warn!(error = %e, "the upstream client is not ready");
                    error_response(
                        anthropic,
                        StatusCode::BAD_GATEWAY,
                        "server_error",
                        "upstream_unavailable",
                        "the gateway cannot reach its upstream",
                    )
                    .map(|body| Body::new(Holding { body, _slot }))
                }
            }
        };
        Poll::Ready(Ok(response))
    }
}

/// The cap's `503`, with `Retry-After: 1`.
fn overloaded(anthropic: bool) -> Response<Body> {
    let mut response = error_response(
        anthropic,
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "overloaded",
        "the gateway has as many requests in flight as it takes; retry shortly",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// The `408` of a request body that did not arrive within `limit`; the
/// connection is closed after it.
fn body_timed_out(anthropic: bool, limit: Duration) -> Response<Body> {
    let mut response = error_response(
        anthropic,
        StatusCode::REQUEST_TIMEOUT,
        "invalid_request_error",
        "request_timeout",
        &format!("the request body did not arrive within {limit:?}"),
    );
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A response body holding a concurrency slot until it is dropped.
struct Holding<B> {
    body: B,
    _slot: OwnedSemaphorePermit,
}

impl<B: http_body::Body + Unpin> http_body::Body for Holding<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    // Both forwarded, so hyper still sends a Content-Length when it is known.
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

pin_project! {
    /// A request body that fails once its deadline passes before its end:
    /// `limit` from the end of the head for the whole body, not per frame
    /// like tower-http's `RequestBodyTimeoutLayer` (a body sent a byte at a
    /// time must not hold the connection either). Past it the caller gets
    /// `408` ([`ChatFuture`] reads `expired`).
    struct Deadline {
        body: Body,
        at: Instant,
        // Set the first time the body is not ready: a body that is never
        // waited for never reaches the runtime's timer.
        #[pin]
        sleep: Option<Sleep>,
        limit: Duration,
        expired: Arc<AtomicBool>,
    }
}

impl Deadline {
    fn new(body: Body, limit: Duration, expired: Arc<AtomicBool>) -> Deadline {
        Deadline {
            body,
            at: Instant::now() + limit,
            sleep: None,
            limit,
            expired,
        }
    }
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = Pin::new(this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(BoxError::from)));
        }
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep_until(*this.at)));
        }
        ready!(this.sleep.as_pin_mut().expect("set above").poll(cx));
        this.expired.store(true, Ordering::Relaxed);
        Poll::Ready(Some(Err(format!(
            "the request body did not arrive within {:?}",
            this.limit
        )
        .into())))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Where requests go: the same API's path on the upstream
/// (`{upstream}/chat/completions`, `{upstream}/messages`, …), with the
/// gateway's key.
#[derive(Clone)]
struct Upstream {
    /// One URI per dialect, in `Dialect::ALL` order.
    uris: Arc<[(Dialect, Uri)]>,
    authorization: Option<HeaderValue>,
}

impl Upstream {
    fn from_config(config: &Config, gateway: &GatewayConfig) -> Result<Upstream, ConfigError> {
        let base = gateway.upstream_url();
        let uris = Dialect::ALL
            .into_iter()
            .map(|d| {
                let uri: Uri = format!("{base}{}", d.path())
                    .parse()
                    .map_err(|e| ConfigError::new("gateway.upstream", format!("invalid URL {base:?}: {e}")))?;
                Ok((d, uri))
            })
            .collect::<Result<Arc<[_]>, ConfigError>>()?;
        let chat_uri = &uris[0].1;
        let openrouter = chat_uri
            .host()
            .is_some_and(|h| h == "openrouter.ai" || h.ends_with(".openrouter.ai"));
        let var = match &gateway.api_key_env {
            Some(var) => Some(var.as_str()),
            None if openrouter => Some(GatewayConfig::DEFAULT_API_KEY_ENV),
            None => None,
        };
        let authorization = match var {
            Some(var) => {
                let key = upstream_key(config, var)?;
                let mut value = HeaderValue::try_from(format!("Bearer {}", key.trim())).map_err(|_| {
                    ConfigError::new(
                        "gateway.api_key_env",
                        format!("the key in {var} cannot be sent in a header"),
                    )
                })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(Upstream { uris, authorization })
    }

    fn prepare<B>(&self, mut request: Request<B>) -> Request<B> {
        let dialect = Dialect::from_path(request.uri().path());
        if let Some((_, uri)) = self.uris.iter().find(|(d, _)| *d == dialect) {
            *request.uri_mut() = uri.clone();
        }
        *request.version_mut() = Version::HTTP_11;
        let headers = request.headers_mut();
        // The caller's key is for the gateway, never for the upstream; the
        // rest are hop-by-hop. One pass to find them: removing an absent
        // header still hashes its name.
        if headers.keys().any(|name| DROPPED.contains(name)) {
            for name in DROPPED {
                headers.remove(name);
            }
        }
        if let Some(auth) = &self.authorization {
            headers.insert(header::AUTHORIZATION, auth.clone());
        }
        request
    }
}

/// The upstream HTTP client as the layer's inner service, behind one `Arc`.
/// The layer clones its inner service for every request (and axum clones
/// the route's service): a bare hyper-util `Client` copies its pool handle,
/// executor and the rustls connector's `Arc`s on each clone and drops them
/// all again, where this is one reference count up and down.
#[derive(Clone)]
struct UpstreamClient(Arc<Client<HttpsConnector<HttpConnector>, ReplayBody>>);

impl Service<Request<ReplayBody>> for UpstreamClient {
    type Response = Response<hyper::body::Incoming>;
    type Error = ClientError;
    type Future = hyper_util::client::legacy::ResponseFuture;

    /// Always ready, like the `Client` itself: a connection is checked out
    /// (or opened) by the request's future.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReplayBody>) -> Self::Future {
        self.0.request(request)
    }
}

/// Anthropic's key header: a caller's key for the gateway, never forwarded.
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Request headers never forwarded upstream: the caller's credentials
/// for the gateway (its key in any of the headers SDKs send it in, its
/// cookies) and the hop-by-hop headers.
const DROPPED: [HeaderName; 11] = [
    header::AUTHORIZATION,
    X_API_KEY,
    HeaderName::from_static("api-key"),
    header::COOKIE,
    header::HOST,
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("keep-alive"),
];

/// Drops hop-by-hop headers of the upstream's response; hyper frames the
/// body again for the caller.
fn strip_response<B>(mut response: Response<B>) -> Response<B> {
    let headers = response.headers_mut();
    headers.remove(header::CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove("keep-alive");
    response
}

/// An OpenAI-style error answer.
fn error_response(anthropic: bool, status: StatusCode, kind: &str, code: &str, message: &str) -> Response<Body> {
    let body = if anthropic {
        // Anthropic's shape and error types, as an Anthropic SDK reads them.
        let kind = match status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::SERVICE_UNAVAILABLE => "overloaded_error",
            s if s.is_server_error() => "api_error",
            _ => "invalid_request_error",
        };
        serde_json::json!({"type": "error", "error": {"type": kind, "message": message}})
    } else {
        serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
    };
    (status, axum::Json(body)).into_response()
}

/// Whether a request to `path` is for Anthropic's Messages API (or under
/// it, as `/v1/messages/count_tokens`), whose callers read errors in
/// Anthropic's shape.
fn anthropic_path(path: &str) -> bool {
    llm_fallback::Dialect::from_path(path) == llm_fallback::Dialect::Messages
        || ["/v1/messages/", "/api/v1/messages/"]
            .iter()
            .any(|p| path.starts_with(p))
}

/// The request id header, set on every request and its answer.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// `x-request-id` on every request (a caller's own id is kept, else
/// `gw-` and a per-process counter in hex: cheaper than a UUID and unique
/// within the process) and on its answer unless the answer has one. What
/// tower-http's `SetRequestIdLayer` and `PropagateRequestIdLayer` did, in
/// one service: the id is written without `format!`, and it rides in the
/// header only, not also in a `RequestId` extension of the request and the
/// answer (nothing here reads one; each would allocate an extension map).
#[derive(Clone, Default)]
struct RequestIds(Arc<AtomicU64>);

impl RequestIds {
    /// `gw-` and the next number, in lowercase hex.
    fn next(&self) -> HeaderValue {
        let mut n = self.0.fetch_add(1, Ordering::Relaxed);
        let mut text = *b"gw-0000000000000000";
        let digits = (u64::BITS - n.leading_zeros()).div_ceil(4).max(1) as usize;
        for at in (3..3 + digits).rev() {
            text[at] = b"0123456789abcdef"[(n & 0xf) as usize];
            n >>= 4;
        }
        HeaderValue::from_bytes(&text[..3 + digits]).expect("gw- and hex digits are a header value")
    }
}

impl<S> Layer<S> for RequestIds {
    type Service = WithRequestId<S>;

    fn layer(&self, inner: S) -> WithRequestId<S> {
        WithRequestId {
            inner,
            ids: self.clone(),
        }
    }
}

/// A service under [`RequestIds`].
#[derive(Clone)]
struct WithRequestId<S> {
    inner: S,
    ids: RequestIds,
}

impl<S, B, RB> Service<Request<B>> for WithRequestId<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let id = match request.headers().get(X_REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = self.ids.next();
                request.headers_mut().insert(X_REQUEST_ID, id.clone());
                id
            }
        };
        RequestIdFuture {
            inner: self.inner.call(request),
            id: Some(id),
        }
    }
}

pin_project! {
    /// [`WithRequestId`]'s future: the answer, with the request's id.
    struct RequestIdFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, RB, E> Future for RequestIdFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        if let Some(id) = this.id.take() {
            if let header::Entry::Vacant(slot) = response.headers_mut().entry(X_REQUEST_ID) {
                slot.insert(id);
            }
        }
        Poll::Ready(Ok(response))
    }
}

// ===== metrics =====

/// The process-wide Prometheus recorder for the layer's `metrics` (feature
/// `metrics`), installed on first use; `None` if another recorder was
/// installed first.
fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ])
                .ok()?
                .install_recorder()
                .ok()?;
            // Histograms buffer samples until upkeep folds them in.
            let upkeep = handle.clone();
            std::thread::spawn(move || loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            });
            Some(handle)
        })
        .clone()
}

// ===== the demo mock =====

/// The mock OpenRouter (llm-fallback-mock) over loopback, for the demo and the bench:
/// `anthropic/claude-3.5-sonnet` is down (503), `openai/gpt-4o` and
/// `openai/gpt-4o-mini` answer; a request with `"stream": true` gets a
/// stream. Returns the address and the task serving it.
pub async fn serve_mock(addr: SocketAddr) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let down = || {
        Reply::error(503, "provider_unavailable", "No available provider")
            .provider("Anthropic")
            .raw_message("overloaded_error: Overloaded")
    };
    let plain = MockUpstream::new()
        .model("anthropic/claude-3.5-sonnet", down())
        .model(
            "openai/gpt-4o",
            Reply::ok()
                .provider("OpenAI")
                .content("Hello! (served by openai/gpt-4o)"),
        )
        .model("openai/gpt-4o-mini", Reply::ok().provider("OpenAI"));
    let streaming = MockUpstream::new()
        .model("anthropic/claude-3.5-sonnet", down())
        .model(
            "openai/gpt-4o",
            Reply::stream()
                .provider("OpenAI")
                .tokens(["Hello", "! ", "(streamed ", "by ", "openai/gpt-4o)"]),
        )
        .model("openai/gpt-4o-mini", Reply::stream().provider("OpenAI"));
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        // The mock records every request; a long benchmark must not keep them.
        let (p, s) = (plain.clone(), streaming.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                p.clear_requests();
                s.clear_requests();
            }
        });
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::task::yield_now().await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (plain, streaming) = (plain.clone(), streaming.clone());
            let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                let (plain, streaming) = (plain.clone(), streaming.clone());
                async move {
                    let (parts, body) = request.into_parts();
                    let bytes = body.collect().await.map_err(|e| MockError(e.to_string()))?.to_bytes();
                    let upstream = if wants_stream(&bytes) { streaming } else { plain };
                    tower::ServiceExt::oneshot(upstream, Request::from_parts(parts, Full::new(bytes)))
                        .await
                        .map_err(|e| MockError(e.to_string()))
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok((addr, task))
}

/// Ends a mock connection (a scripted transport error, an unreadable body).
#[derive(Debug)]
struct MockError(String);

impl std::fmt::Display for MockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MockError {}

/// `"stream": true` somewhere in the body (good enough for a mock).
fn wants_stream(body: &Bytes) -> bool {
    let mut rest = &body[..];
    while let Some(i) = memchr::memmem::find(rest, b"\"stream\"") {
        rest = &rest[i + 8..];
        let after = rest
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b':'));
        if after.is_some_and(|j| rest[j..].starts_with(b"true")) {
            return true;
        }
    }
    false
}
