//! An OpenAI-compatible gateway: `FallbackLayer` from a config file behind
//! `POST /v1/chat/completions`, so any OpenAI client gets fallbacks by
//! changing its base URL.
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
//! Routes: `POST /v1/chat/completions` and `POST /api/v1/chat/completions`
//! (the fallback chain), `GET /health`, and `GET /metrics` (Prometheus text)
//! when `gateway.metrics = true`. Every request gets an `x-request-id` (kept
//! if the caller sent one) and a `tower-http` trace span. The caller's
//! `Authorization` is never forwarded: the upstream gets the gateway's own key
//! (`gateway.api_key_env`, default `OPENROUTER_API_KEY` for OpenRouter). The
//! gateway does not authenticate its callers: keep it on loopback or put it
//! behind your own auth.
//!
//! With no `--config` and no `OPENROUTER_API_KEY` it starts the crate's mock
//! OpenRouter on 127.0.0.1 with a primary model that is down (503) and serves
//! on `127.0.0.1:8080`, printing a `curl` line to try. Ctrl-C stops accepting
//! connections and lets in-flight requests and streams finish, for at most
//! `gateway.shutdown_grace` (default 30s).
//!
//! The tests (`tests/gateway.rs`) include this file as a module and drive
//! [`app`] and [`serve`] with the `async-openai` client.

// Items only the tests use are dead code in the example binary, and the
// reverse in the tests.
#![allow(dead_code)]

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use llm_fallback::config::{Config, ConfigError, GatewayConfig};
use llm_fallback::testing::{MockUpstream, Reply};
use llm_fallback::{FallbackLayer, ReplayBody};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// A server allocating per request: mimalloc spends less time in malloc than
// glibc's (measured in benches/gateway.sh). The tests keep the system one.
#[cfg(not(test))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The demo's chain: a primary that is down, then two that work.
const DEMO_CONFIG: &str = r#"
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
    let gateway = config.gateway.clone().unwrap_or_default();
    let listen = args.listen.unwrap_or_else(|| gateway.listen_addr());
    let app = app(&config)?;

    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    println!(
        "gateway on http://{addr}: POST /v1/chat/completions, GET /health{}",
        if gateway.metrics_enabled() {
            ", GET /metrics"
        } else {
            ""
        }
    );
    println!(
        "try:\n  curl -s http://{addr}/v1/chat/completions -H 'content-type: application/json' \\\n    -d '{{\"model\":\"anthropic/claude-3.5-sonnet\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}]}}'"
    );
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        println!("shutting down: letting in-flight requests finish");
    };
    match serve(listener, app, shutdown, gateway.grace()).await? {
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

// ===== the app =====

/// The gateway's router for `config`: chat completions through the
/// `FallbackLayer`, health, metrics, request ids and tracing.
///
/// Fails when the config names a key variable that is not set.
pub fn app(config: &Config) -> Result<Router, ConfigError> {
    let gateway = config.gateway.clone().unwrap_or_default();
    let upstream = Upstream::from_config(config, &gateway)?;
    let layer = FallbackLayer::from_config(config)?;
    let metrics = gateway.metrics_enabled().then(prometheus).flatten();

    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build::<_, ReplayBody>(https);

    let chat = ServiceBuilder::new()
        // The layer's error only comes from the client's `poll_ready`.
        .layer(HandleErrorLayer::new(|e: hyper_util::client::legacy::Error| {
            std::future::ready(error_response(StatusCode::BAD_GATEWAY, &e.to_string()))
        }))
        .map_response(|response: Response<_>| strip_response(response).map(Body::new))
        // Outside the fallback: once per request, not per attempt.
        .map_request(move |request: Request<Body>| upstream.prepare(request))
        .layer(layer)
        .service(client);

    let chains: Vec<String> = config.chains.keys().cloned().collect();
    let mut router = Router::new()
        .route_service("/v1/chat/completions", chat.clone())
        .route_service("/api/v1/chat/completions", chat)
        .route(
            "/health",
            get(move || {
                let body = serde_json::json!({"status": "ok", "chains": chains});
                async move { axum::Json(body) }
            }),
        );
    if let Some(handle) = metrics {
        router = router.route(
            "/metrics",
            get(move || {
                let text = handle.render();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text) }
            }),
        );
    }
    let x_request_id = HeaderName::from_static("x-request-id");
    Ok(router.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(x_request_id.clone(), RequestIds::default()))
            .layer(TraceLayer::new_for_http().make_span_with(|request: &Request<Body>| {
                let id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok());
                tracing::debug_span!("gateway", method = %request.method(), path = request.uri().path(), request_id = id)
            }))
            .layer(PropagateRequestIdLayer::new(x_request_id)),
    ))
}

/// How [`serve`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Every in-flight request and stream finished.
    AllFinished,
    /// The grace period ended first; what was left is dropped.
    GraceElapsed,
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops
/// accepting and waits for in-flight requests (streams included) to finish,
/// for at most `grace`.
pub async fn serve<F>(listener: TcpListener, app: Router, shutdown: F, grace: Duration) -> std::io::Result<Drained>
where
    F: Future<Output = ()> + Send + 'static,
{
    use axum::serve::ListenerExt;

    let signalled = Arc::new(tokio::sync::Notify::new());
    let signal = signalled.clone();
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        // `notify_one` keeps a permit, so the grace timer starts even if it
        // is not waiting yet.
        signal.notify_one();
    });
    tokio::select! {
        result = server => result.map(|()| Drained::AllFinished),
        () = async {
            signalled.notified().await;
            tokio::time::sleep(grace).await;
        } => Ok(Drained::GraceElapsed),
    }
}

/// Where requests go: `{upstream}/chat/completions`, with the gateway's key.
#[derive(Clone)]
struct Upstream {
    chat_uri: Uri,
    authorization: Option<HeaderValue>,
}

impl Upstream {
    fn from_config(config: &Config, gateway: &GatewayConfig) -> Result<Upstream, ConfigError> {
        let base = gateway.upstream_url();
        let chat_uri: Uri = format!("{base}/chat/completions")
            .parse()
            .map_err(|e| ConfigError::new("gateway.upstream", format!("invalid URL {base:?}: {e}")))?;
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
                let key = config.env_var("gateway.api_key_env", var)?;
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
        Ok(Upstream {
            chat_uri,
            authorization,
        })
    }

    fn prepare(&self, mut request: Request<Body>) -> Request<Body> {
        *request.uri_mut() = self.chat_uri.clone();
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

/// Request headers never forwarded upstream.
const DROPPED: [HeaderName; 8] = [
    header::AUTHORIZATION,
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

fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({"error": {"message": message, "type": "gateway_error", "code": status.as_u16()}});
    (status, axum::Json(body)).into_response()
}

/// `x-request-id` values: a per-process counter (cheaper than a UUID and
/// unique within the process); a caller's own id is kept.
#[derive(Clone, Default)]
struct RequestIds(Arc<AtomicU64>);

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        HeaderValue::try_from(format!("gw-{n:x}")).ok().map(RequestId::new)
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

/// The crate's mock OpenRouter over loopback, for the demo and the bench:
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
