//! The gateway example end to end over loopback: an unmodified OpenAI client
//! (`async-openai`) through it, plain and streaming, with a failing primary;
//! keep-alives; the upstream key; health, metrics and request ids; graceful
//! shutdown with a stream in flight; what a caller cannot do: hold a
//! connection with a half-sent head or body, go past the concurrency cap, get
//! in without a client key, or see its key reach the upstream or the logs.
//!
//! The mock upstream's timings here are real (a few milliseconds): these
//! tests run real sockets end to end. Every wait is bounded by a timeout; the
//! socket timeouts are short configured ones waited for with a generous
//! bound, never a tight one.

mod common;
#[path = "../examples/gateway.rs"]
mod gateway;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs};
use async_openai::Client as OpenAI;
use bytes::Bytes;
use futures_util::StreamExt;
use gateway::{Drained, GatewayConfig};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use llm_fallback::config::Config;
use llm_fallback_mock::{parse_sse, MockServer, MockUpstream, Reply, SseEvent};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const PRIMARY: &str = "anthropic/claude-3.5-sonnet";
const SECONDARY: &str = "openai/gpt-4o";
/// Bound on any one wait in these tests.
const BOUND: Duration = Duration::from_secs(10);

/// A gateway serving on a loopback port.
struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    served: JoinHandle<Drained>,
}

impl Running {
    /// Serves `config`, with `grace` as its `gateway.shutdown_grace`.
    async fn start(config: &str, grace: Duration) -> Running {
        // async-openai's reqwest has rustls without a provider; install ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = Config::from_toml_str(config).expect("test config parses");
        let app = gateway::app(&config).expect("the gateway builds");
        let mut settings = GatewayConfig::from_config(&config).expect("the [gateway] table reads");
        settings.shutdown_grace = Some(grace);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(gateway::serve(listener, app, &settings, async {
            let _ = stopped.await;
        }));
        Running {
            addr,
            stop: Some(stop),
            served,
        }
    }

    fn openai(&self) -> OpenAI<OpenAIConfig> {
        self.openai_with_key("sk-client-secret-for-the-gateway")
    }

    fn openai_with_key(&self, key: &str) -> OpenAI<OpenAIConfig> {
        OpenAI::with_config(
            OpenAIConfig::new()
                .with_api_base(format!("http://{}/v1", self.addr))
                .with_api_key(key),
        )
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends the shutdown signal and waits for `serve` to return.
    async fn shutdown(&mut self) -> Drained {
        let _ = self.stop.take().expect("running").send(());
        timeout(BOUND, &mut self.served)
            .await
            .expect("serve returns within the bound")
            .expect("serve does not panic")
    }
}

/// A config for the gateway in front of `mock`, with `rest` appended.
fn config_for(mock: &MockServer, gateway_keys: &str, rest: &str) -> String {
    format!(
        "[gateway]\nupstream = \"{}/api/v1\"\n{gateway_keys}\n{rest}\n\
         [chains.default]\ndeadline = \"30s\"\n\
         [[chains.default.routes]]\nmodel = \"{PRIMARY}\"\nlabel = \"primary\"\ntimeout = \"10s\"\n\
         [[chains.default.routes]]\nmodel = \"{SECONDARY}\"\nlabel = \"secondary\"\ntimeout = \"10s\"\n",
        mock.url()
    )
}

fn ask(model: &str) -> async_openai::types::chat::CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model(model)
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("Say hello.")
            .build()
            .unwrap()
            .into()])
        .max_tokens(32u32)
        .build()
        .unwrap()
}

async fn raw_post(url: &str, body: &str, headers: &[(&str, &str)]) -> (http::response::Parts, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = http::Request::post(url).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = timeout(
        BOUND,
        client.request(request.body(Full::new(Bytes::from(body.to_owned()))).unwrap()),
    )
    .await
    .expect("answered within the bound")
    .expect("the gateway answers");
    let (parts, body) = response.into_parts();
    let bytes = timeout(BOUND, body.collect()).await.unwrap().unwrap().to_bytes();
    (parts, bytes)
}

async fn raw_get(url: &str) -> (http::StatusCode, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = timeout(BOUND, client.get(url.parse().unwrap())).await.unwrap().unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

fn down() -> Reply {
    Reply::error(503, "provider_unavailable", "No available provider").provider("Anthropic")
}

#[tokio::test]
async fn async_openai_gets_an_answer_through_a_failing_primary() {
    let mock = MockServer::start(MockUpstream::new().model(PRIMARY, down()).model(
        SECONDARY,
        Reply::ok().provider("OpenAI").content("Hello from the secondary"),
    ))
    .await
    .unwrap();
    let mut gw = Running::start(&config_for(&mock, "", ""), Duration::from_secs(5)).await;

    let answer = timeout(BOUND, gw.openai().chat().create(ask(PRIMARY)))
        .await
        .unwrap()
        .expect("async-openai reads the gateway's answer");
    assert_eq!(answer.model, SECONDARY);
    assert_eq!(
        answer.choices[0].message.content.as_deref(),
        Some("Hello from the secondary")
    );
    assert!(answer.usage.is_some(), "usage passes through");

    // The primary was tried first, with the request the client sent.
    let sent = mock.upstream().requests();
    let models: Vec<_> = sent.iter().map(|r| r.model.clone().unwrap()).collect();
    assert_eq!(models, [PRIMARY, SECONDARY]);
    assert_eq!(sent[0].json()["messages"][0]["content"], "Say hello.");
    assert_eq!(sent[0].uri.path(), "/api/v1/chat/completions");
    // The client's key is for the gateway: never forwarded. This upstream
    // (not OpenRouter, no api_key_env) gets none.
    assert!(sent.iter().all(|r| r.headers.get("authorization").is_none()));

    assert_eq!(gw.shutdown().await, Drained::AllFinished);
}

#[tokio::test]
async fn async_openai_streams_through_a_failing_primary_and_never_sees_keep_alives() {
    let tokens = ["Streams ", "fail ", "over ", "before ", "the ", "first ", "token."];
    let upstream = MockUpstream::new()
        .model(
            PRIMARY,
            Reply::stream()
                .keep_alive(3, Duration::from_millis(2))
                .error_before_first_token(),
        )
        .model(
            SECONDARY,
            Reply::stream()
                .provider("OpenAI")
                .keep_alive(2, Duration::from_millis(2))
                .tokens(tokens),
        );
    let mock = MockServer::start(upstream).await.unwrap();
    let mut gw = Running::start(&config_for(&mock, "", ""), Duration::from_secs(5)).await;

    let mut stream = timeout(BOUND, gw.openai().chat().create_stream(ask(PRIMARY)))
        .await
        .unwrap()
        .expect("the stream starts");
    let mut text = String::new();
    let mut models = Vec::new();
    while let Some(chunk) = timeout(BOUND, stream.next()).await.expect("chunks keep coming") {
        let chunk = chunk.expect("every event is a chunk async-openai can read");
        models.push(chunk.model.clone());
        for choice in &chunk.choices {
            text.push_str(choice.delta.content.as_deref().unwrap_or(""));
        }
    }
    assert_eq!(text, tokens.concat(), "one whole answer, from one model");
    assert!(models.iter().all(|m| m == SECONDARY), "{models:?}");

    // On the wire: the keep-alives are SSE comments at most, never data.
    let body = serde_json::json!({
        "model": PRIMARY, "stream": true,
        "messages": [{"role": "user", "content": "hi"}]
    })
    .to_string();
    let (parts, bytes) = raw_post(&gw.url("/v1/chat/completions"), &body, &[]).await;
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers["x-fallback-model"], SECONDARY);
    let events = parse_sse(&bytes);
    assert!(events.last().is_some_and(SseEvent::is_done), "ends with [DONE]");
    for event in &events {
        if let SseEvent::Data(data) = event {
            assert!(
                data == "[DONE]" || event.json().is_some_and(|j| j["choices"].is_array()),
                "every data line is a chunk: {data}"
            );
            assert!(!data.contains("OPENROUTER PROCESSING"));
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        !text.lines().any(|l| l.starts_with("data:") && l.contains("PROCESSING")),
        "{text}"
    );

    assert_eq!(gw.shutdown().await, Drained::AllFinished);
}

#[tokio::test]
async fn async_openai_reads_the_exhaustion_answer_as_an_api_error() {
    let mock = MockServer::start(
        MockUpstream::new()
            .model(PRIMARY, down())
            .model(SECONDARY, Reply::status(500)),
    )
    .await
    .unwrap();
    let mut gw = Running::start(&config_for(&mock, "", ""), Duration::from_secs(5)).await;

    let err = timeout(BOUND, gw.openai().chat().create(ask(PRIMARY)))
        .await
        .unwrap()
        .expect_err("every model failed");
    let OpenAIError::ApiError(api) = err else {
        panic!("an API error, not {err:?}")
    };
    assert_eq!(api.status_code.as_u16(), 502);
    // async-openai keeps a 5xx body as the message; it is our error JSON.
    let body: serde_json::Value = serde_json::from_str(&api.api_error.message).unwrap();
    assert_eq!(body["error"]["code"], "fallback_exhausted");
    let attempts = body["error"]["metadata"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    // The gateway's callers get the summary: models and outcomes, not what
    // the provider wrote.
    assert_eq!(attempts[0]["error_type"], "provider_unavailable");
    assert!(attempts[0].get("provider_name").is_none() && attempts[0].get("message").is_none());
    assert!(!api.api_error.message.contains("No available provider"));
    assert!(!api.api_error.message.contains("Anthropic"));
    // Like the official SDKs, async-openai retries a 5xx three times (after
    // 100, 200 and 400 ms, or the Retry-After): each retry runs the chain again.
    assert_eq!(mock.upstream().request_count(PRIMARY), 4);
    assert_eq!(mock.upstream().request_count(SECONDARY), 4);

    // A raw client sees the answer once, with the shortest upstream Retry-After.
    mock.upstream().set_script(SECONDARY, Reply::status(429).retry_after(7));
    let (parts, bytes) = raw_post(&gw.url("/api/v1/chat/completions"), &common_body(), &[]).await;
    assert_eq!(parts.status, 502);
    assert_eq!(parts.headers["retry-after"], "7");
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains(PRIMARY));

    assert_eq!(gw.shutdown().await, Drained::AllFinished);
}

fn common_body() -> String {
    serde_json::json!({"model": PRIMARY, "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

#[tokio::test]
async fn the_upstream_gets_the_gateways_key_and_a_missing_one_is_named() {
    let mock = MockServer::start(MockUpstream::new().model(PRIMARY, Reply::ok()))
        .await
        .unwrap();
    std::env::set_var("LLM_FALLBACK_GATEWAY_TEST_KEY", "sk-upstream-test");
    let mut gw = Running::start(
        &config_for(&mock, "api_key_env = \"LLM_FALLBACK_GATEWAY_TEST_KEY\"", ""),
        Duration::from_secs(5),
    )
    .await;
    let (parts, _) = raw_post(
        &gw.url("/v1/chat/completions"),
        &common_body(),
        &[
            ("authorization", "Bearer sk-client"),
            ("api-key", "sk-client"),
            ("cookie", "session=gateway-cookie"),
        ],
    )
    .await;
    assert_eq!(parts.status, 200);
    let sent = mock.upstream().requests();
    assert_eq!(sent[0].headers["authorization"], "Bearer sk-upstream-test");
    // Nothing else of the caller's credentials for the gateway goes on.
    assert!(sent[0].headers.get("api-key").is_none());
    assert!(sent[0].headers.get("cookie").is_none());
    assert_eq!(gw.shutdown().await, Drained::AllFinished);

    let config = Config::from_toml_str(&config_for(
        &mock,
        "api_key_env = \"LLM_FALLBACK_GATEWAY_SURELY_UNSET\"",
        "",
    ))
    .unwrap()
    .with_source("gateway.toml");
    let err = gateway::app(&config).map(|_| ()).unwrap_err();
    assert_eq!(err.key(), "gateway.api_key_env");
    assert_eq!(
        err.to_string(),
        "gateway.toml: gateway.api_key_env: the environment variable LLM_FALLBACK_GATEWAY_SURELY_UNSET is not set; expected it to hold the API key"
    );
}

#[tokio::test]
async fn health_metrics_and_request_ids() {
    let mock = MockServer::start(MockUpstream::new().model(PRIMARY, down()).model(SECONDARY, Reply::ok()))
        .await
        .unwrap();
    let mut gw = Running::start(&config_for(&mock, "metrics = true", ""), Duration::from_secs(5)).await;

    let (status, health) = raw_get(&gw.url("/health")).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&health).unwrap(),
        serde_json::json!({"status": "ok", "chains": ["default"]})
    );

    let (parts, _) = raw_post(&gw.url("/v1/chat/completions"), &common_body(), &[]).await;
    assert!(parts.headers["x-request-id"].to_str().unwrap().starts_with("gw-"));
    assert_eq!(parts.headers["x-fallback-attempts"], "2");
    let (parts, _) = raw_post(
        &gw.url("/v1/chat/completions"),
        &common_body(),
        &[("x-request-id", "caller-42")],
    )
    .await;
    assert_eq!(parts.headers["x-request-id"], "caller-42", "a caller's id is kept");

    let (status, metrics) = raw_get(&gw.url("/metrics")).await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("llm_fallback_attempts_total{model=\"anthropic/claude-3.5-sonnet\",outcome=\"http_error\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("llm_fallback_requests_total"), "{metrics}");

    // Without `metrics = true` there is no /metrics.
    let mut plain = Running::start(&config_for(&mock, "", ""), Duration::from_secs(5)).await;
    assert_eq!(raw_get(&plain.url("/metrics")).await.0, 404);

    assert_eq!(gw.shutdown().await, Drained::AllFinished);
    assert_eq!(plain.shutdown().await, Drained::AllFinished);
}

#[tokio::test]
async fn shutdown_lets_a_stream_in_flight_finish() {
    let tokens: Vec<String> = (0..8).map(|i| format!("t{i} ")).collect();
    let mock = MockServer::start(
        MockUpstream::new().model(
            PRIMARY,
            Reply::stream()
                .tokens(tokens.clone())
                .chunk_interval(Duration::from_millis(25)),
        ),
    )
    .await
    .unwrap();
    let mut gw = Running::start(&config_for(&mock, "", ""), Duration::from_secs(5)).await;

    let mut stream = gw.openai().chat().create_stream(ask(PRIMARY)).await.unwrap();
    // The first chunk has arrived: the stream is in flight.
    let first = timeout(BOUND, stream.next()).await.unwrap().unwrap().unwrap();
    let mut text = first.choices[0].delta.content.clone().unwrap_or_default();

    let _ = gw.stop.take().unwrap().send(());
    while let Some(chunk) = timeout(BOUND, stream.next())
        .await
        .expect("the stream goes on after the signal")
    {
        for choice in chunk.expect("a whole chunk").choices {
            text.push_str(choice.delta.content.as_deref().unwrap_or(""));
        }
    }
    assert_eq!(text, tokens.concat(), "the stream finished whole");
    let drained = timeout(BOUND, &mut gw.served).await.unwrap().unwrap();
    assert_eq!(drained, Drained::AllFinished);

    // The listener is closed once serve has returned.
    assert!(tokio::net::TcpStream::connect(gw.addr).await.is_err());
}

#[tokio::test]
async fn shutdown_is_bounded_by_the_grace_period() {
    let mock = MockServer::start(MockUpstream::new().model(PRIMARY, Reply::stream().stall_after(1)))
        .await
        .unwrap();
    let mut gw = Running::start(&config_for(&mock, "", ""), Duration::from_millis(100)).await;

    let mut stream = gw.openai().chat().create_stream(ask(PRIMARY)).await.unwrap();
    let _first = timeout(BOUND, stream.next()).await.unwrap().unwrap().unwrap();
    // The upstream now says nothing; the signal must not wait for it.
    assert_eq!(gw.shutdown().await, Drained::GraceElapsed);
}

// ===== what a caller cannot do =====

/// Reads until the gateway closes the connection (EOF or a reset), failing
/// if it is still open after `bound`.
async fn read_until_closed(tcp: &mut TcpStream, bound: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let closed = timeout(bound, async {
        let mut chunk = [0u8; 4096];
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the gateway still holds the connection after {bound:?}; it sent {:?}",
        String::from_utf8_lossy(&got)
    );
    got
}

/// Reads until `needle` has arrived.
async fn read_until(tcp: &mut TcpStream, needle: &str) -> String {
    let mut got = Vec::new();
    timeout(BOUND, async {
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains(needle) {
            let n = tcp.read(&mut chunk).await.expect("the connection stays up");
            assert!(n > 0, "closed before {needle:?}: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{needle:?} within {BOUND:?}"));
    String::from_utf8_lossy(&got).into_owned()
}

/// The status line, the head and the body (as JSON) of a raw HTTP/1.1 answer.
fn parse_answer(bytes: &[u8]) -> (String, String, serde_json::Value) {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("a whole answer: {text:?}"));
    let status = head.lines().next().unwrap_or_default().to_owned();
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("a JSON body ({e}): {body:?}"));
    (status, head.to_ascii_lowercase(), json)
}

/// Waits (bounded) until `check` holds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    timeout(BOUND, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}, within {BOUND:?}"));
}

/// A raw chat request head for `body_len` bytes, with `extra` header lines.
fn chat_head(body_len: usize, extra: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n\
         content-length: {body_len}\r\n{extra}\r\n"
    )
}

#[tokio::test]
async fn a_half_sent_head_and_a_silent_connection_are_closed_within_the_header_timeout() {
    let mock = MockServer::start(MockUpstream::new().model(PRIMARY, Reply::ok()))
        .await
        .unwrap();
    let mut gw = Running::start(
        &config_for(&mock, "header_read_timeout = \"200ms\"", ""),
        Duration::from_secs(5),
    )
    .await;

    let mut half = TcpStream::connect(gw.addr).await.unwrap();
    half.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-ty")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    // 200ms configured; the bound only says "not forever" on a busy machine.
    let sent = read_until_closed(&mut half, Duration::from_secs(5)).await;
    assert!(!String::from_utf8_lossy(&sent).contains(" 200 "), "{sent:?}");
    read_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(mock.upstream().requests().is_empty());

    // A whole request on a fresh connection is still served.
    let (parts, _) = raw_post(&gw.url("/v1/chat/completions"), &common_body(), &[]).await;
    assert_eq!(parts.status, 200);
    assert_eq!(gw.shutdown().await, Drained::AllFinished);
}

#[tokio::test]
async fn a_stalled_or_trickled_body_gets_408_and_a_closed_connection_within_the_body_timeout() {
    let mock = MockServer::start(MockUpstream::new().model(PRIMARY, Reply::ok()))
        .await
        .unwrap();
    let mut gw = Running::start(
        &config_for(&mock, "request_body_timeout = \"300ms\"", ""),
        Duration::from_secs(5),
    )
    .await;

    // Content-Length 100, then 10 bytes, then nothing.
    let mut stalled = TcpStream::connect(gw.addr).await.unwrap();
    stalled.write_all(chat_head(100, "").as_bytes()).await.unwrap();
    stalled.write_all(b"{\"model\":\"").await.unwrap();
    let answer = read_until_closed(&mut stalled, Duration::from_secs(5)).await;
    let (status, head, body) = parse_answer(&answer);
    assert_eq!(status, "HTTP/1.1 408 Request Timeout");
    assert!(head.contains("connection: close"), "{head}");
    assert!(head.contains("content-length: "), "{head}");
    assert_eq!(body["error"]["code"], "request_timeout");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(body["error"]["message"].as_str().unwrap().contains("300ms"), "{body}");

    // A body sent a byte every 20ms never stalls for 300ms, but it does not
    // arrive whole within 300ms either: the deadline is for the whole body.
    let mut trickled = TcpStream::connect(gw.addr).await.unwrap();
    trickled.write_all(chat_head(100, "").as_bytes()).await.unwrap();
    let (mut read, mut write) = trickled.into_split();
    let dripping = tokio::spawn(async move {
        for _ in 0..100 {
            if write.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut answer = Vec::new();
    timeout(Duration::from_secs(5), read.read_to_end(&mut answer))
        .await
        .expect("answered and closed within the bound")
        .ok();
    assert_eq!(parse_answer(&answer).0, "HTTP/1.1 408 Request Timeout");
    dripping.abort();

    assert!(mock.upstream().requests().is_empty(), "nothing went upstream");
    assert_eq!(gw.shutdown().await, Drained::AllFinished);
}

#[tokio::test]
async fn past_the_concurrency_cap_a_request_gets_503_at_once_and_a_stream_holds_its_slot() {
    let mock = MockServer::start(MockUpstream::new().model(PRIMARY, Reply::hang()))
        .await
        .unwrap();
    let mut gw = Running::start(
        &config_for(&mock, "max_concurrent_requests = 1", ""),
        Duration::from_secs(5),
    )
    .await;
    let url = gw.url("/v1/chat/completions");
    let refused = |parts: &http::response::Parts, bytes: &[u8]| {
        assert_eq!(parts.status, 503, "{}", String::from_utf8_lossy(bytes));
        assert_eq!(parts.headers["retry-after"], "1");
        let body: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        assert_eq!(body["error"]["code"], "overloaded");
        assert_eq!(body["error"]["type"], "server_error");
    };
    // Until a request gets through (the slot is freed as the caller leaves).
    let until_served = || async {
        for _ in 0..1000 {
            let (parts, bytes) = raw_post(&url, &common_body(), &[]).await;
            if parts.status != 503 {
                return parts.status;
            }
            refused(&parts, &bytes);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the slot never came back")
    };

    // The one slot is held by a request waiting on the upstream.
    let body = common_body();
    let mut held = TcpStream::connect(gw.addr).await.unwrap();
    held.write_all(format!("{}{body}", chat_head(body.len(), "")).as_bytes())
        .await
        .unwrap();
    eventually("the held request reaches the upstream", || {
        mock.upstream().request_count(PRIMARY) == 1
    })
    .await;
    let (parts, bytes) = timeout(Duration::from_secs(5), raw_post(&url, &body, &[]))
        .await
        .expect("refused at once, not queued");
    refused(&parts, &bytes);
    assert_eq!(
        mock.upstream().request_count(PRIMARY),
        1,
        "the refused one never went upstream"
    );
    drop(held);
    mock.upstream().set_script(PRIMARY, Reply::ok());
    assert_eq!(until_served().await, 200);

    // A stream holds its slot after its head, until its last byte.
    mock.upstream().set_script(PRIMARY, Reply::stream().stall_after(1));
    let stream_body = serde_json::json!({
        "model": PRIMARY, "stream": true,
        "messages": [{"role": "user", "content": "hi"}]
    })
    .to_string();
    let mut streaming = TcpStream::connect(gw.addr).await.unwrap();
    streaming
        .write_all(format!("{}{stream_body}", chat_head(stream_body.len(), "")).as_bytes())
        .await
        .unwrap();
    let so_far = read_until(&mut streaming, "data: ").await;
    assert!(so_far.starts_with("HTTP/1.1 200"), "{so_far}");
    // A request let through by mistake would be answered, not hang.
    mock.upstream().set_script(PRIMARY, Reply::ok());
    let (parts, bytes) = raw_post(&url, &body, &[]).await;
    refused(&parts, &bytes);
    drop(streaming);
    assert_eq!(until_served().await, 200);

    assert_eq!(gw.shutdown().await, Drained::AllFinished);
}

const CLIENT_KEYS_VAR: &str = "LLM_FALLBACK_GATEWAY_TEST_CLIENT_KEYS";

#[tokio::test]
async fn callers_need_a_client_key_which_never_reaches_the_upstream_or_the_logs() {
    std::env::set_var(CLIENT_KEYS_VAR, " sk-gw-first-key , sk-gw-second-key,");
    // The test's runtime has one thread: the gateway's and the mock's tasks
    // log here too.
    let (logs, _guard) = common::Captured::install(tracing::Level::TRACE);
    let mock = MockServer::start(MockUpstream::new().model(PRIMARY, Reply::ok()))
        .await
        .unwrap();
    let keys = format!("client_keys_env = \"{CLIENT_KEYS_VAR}\"\nmetrics = true");
    let mut gw = Running::start(&config_for(&mock, &keys, ""), Duration::from_secs(5)).await;
    let url = gw.url("/v1/chat/completions");
    let unauthorized = |parts: &http::response::Parts, bytes: &[u8]| {
        assert_eq!(parts.status, 401, "{}", String::from_utf8_lossy(bytes));
        assert_eq!(parts.headers["www-authenticate"], "Bearer");
        let body: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        assert_eq!(body["error"]["code"], "invalid_api_key");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(
            !String::from_utf8_lossy(bytes).contains("sk-gw-"),
            "no key in the answer"
        );
    };

    let (parts, bytes) = raw_post(&url, &common_body(), &[]).await;
    unauthorized(&parts, &bytes);
    for wrong in [
        "Bearer sk-gw-wrong-key",
        "Bearer sk-gw-first-ke",
        "Bearer sk-gw-first-key-and-more",
        "Basic sk-gw-first-key",
        "sk-gw-first-key",
        "Bearer ",
    ] {
        let (parts, bytes) = raw_post(&url, &common_body(), &[("authorization", wrong)]).await;
        unauthorized(&parts, &bytes);
    }
    // Before the body is read: a key-less head announcing a body it never
    // sends is answered at once.
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(chat_head(100, "authorization: Bearer sk-gw-nope\r\n").as_bytes())
        .await
        .unwrap();
    let answer = read_until(&mut tcp, "invalid_api_key").await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    drop(tcp);
    // The metrics need a key too; health does not.
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let metrics = timeout(BOUND, client.get(gw.url("/metrics").parse().unwrap()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(metrics.status(), 401);
    assert_eq!(raw_get(&gw.url("/health")).await.0, 200);
    // async-openai reads the refusal as OpenAI's own.
    let err = timeout(BOUND, gw.openai().chat().create(ask(PRIMARY)))
        .await
        .unwrap()
        .expect_err("a key the gateway does not know");
    let OpenAIError::ApiError(api) = err else {
        panic!("an API error, not {err:?}")
    };
    assert_eq!(api.status_code.as_u16(), 401);
    assert_eq!(api.api_error.code.as_deref(), Some("invalid_api_key"));
    assert!(mock.upstream().requests().is_empty(), "nothing refused went upstream");

    // Either key, the scheme in any case.
    let (parts, _) = raw_post(&url, &common_body(), &[("authorization", "bearer sk-gw-second-key")]).await;
    assert_eq!(parts.status, 200);
    let answer = timeout(BOUND, gw.openai_with_key("sk-gw-first-key").chat().create(ask(PRIMARY)))
        .await
        .unwrap()
        .expect("async-openai gets in with a key");
    assert_eq!(answer.model, PRIMARY);

    let sent = mock.upstream().requests();
    assert_eq!(sent.len(), 2);
    for request in &sent {
        assert!(request.headers.get("authorization").is_none());
        for (name, value) in &request.headers {
            assert!(
                !String::from_utf8_lossy(value.as_bytes()).contains("sk-gw-"),
                "the caller's key went upstream in {name}"
            );
        }
        assert!(!String::from_utf8_lossy(&request.body).contains("sk-gw-"));
    }
    assert_eq!(gw.shutdown().await, Drained::AllFinished);

    let logs = logs.text();
    assert!(logs.contains("refused a caller"), "the capture works: {logs}");
    assert!(!logs.contains("sk-gw-"), "a key reached the logs:\n{logs}");
}

#[tokio::test]
async fn the_gateway_refuses_to_start_open_beyond_loopback_or_with_a_missing_key_variable() {
    let route = "[[chains.default.routes]]\nmodel = \"a/b\"\n";
    let parse = |gateway: &str| {
        Config::from_toml_str(&format!(
            "[gateway]\nupstream = \"http://127.0.0.1:9/v1\"\n{gateway}\n{route}"
        ))
        .unwrap()
        .with_source("gateway.toml")
    };
    let addr = |a: &str| a.parse::<SocketAddr>().unwrap();

    let open = parse("");
    for loopback in [
        "127.0.0.1:8080",
        "127.0.0.2:80",
        "[::1]:8080",
        "[::ffff:127.0.0.1]:8080",
    ] {
        assert_eq!(
            gateway::access(&open, addr(loopback)).unwrap(),
            gateway::Access::LoopbackOnly
        );
    }
    for exposed in ["0.0.0.0:8080", "[::]:8080", "192.168.1.10:8080"] {
        let err = gateway::access(&open, addr(exposed)).unwrap_err();
        assert_eq!(err.key(), "gateway.client_keys_env");
        assert_eq!(
            err.to_string(),
            format!(
                "gateway.toml: gateway.client_keys_env: not set, and {exposed} is not a loopback address; expected \
                 the name of the environment variable holding the keys callers must send, or \
                 gateway.allow_unauthenticated = true to let in anyone who can reach {exposed}"
            )
        );
    }
    let allowed = parse("allow_unauthenticated = true");
    assert_eq!(
        gateway::access(&allowed, addr("0.0.0.0:8080")).unwrap(),
        gateway::Access::Open
    );
    let keyed = parse("client_keys_env = \"ANY\"");
    assert_eq!(
        gateway::access(&keyed, addr("0.0.0.0:8080")).unwrap(),
        gateway::Access::Keys
    );

    // A named key variable must hold keys.
    let refused = |var: &str| {
        let config = parse(&format!("client_keys_env = \"{var}\""));
        let err = gateway::app(&config).map(|_| ()).unwrap_err();
        assert_eq!(err.key(), "gateway.client_keys_env");
        err.to_string()
    };
    assert_eq!(
        refused("LLM_FALLBACK_GATEWAY_SURELY_UNSET_CLIENT_KEYS"),
        "gateway.toml: gateway.client_keys_env: the environment variable LLM_FALLBACK_GATEWAY_SURELY_UNSET_CLIENT_KEYS \
         is not set; expected it to hold the keys callers must send, comma-separated"
    );
    std::env::set_var("LLM_FALLBACK_GATEWAY_TEST_EMPTY_KEYS", " , ");
    assert!(refused("LLM_FALLBACK_GATEWAY_TEST_EMPTY_KEYS").contains("LLM_FALLBACK_GATEWAY_TEST_EMPTY_KEYS is empty"));
    std::env::set_var("LLM_FALLBACK_GATEWAY_TEST_SPACED_KEYS", "sk-one, sk two");
    let err = refused("LLM_FALLBACK_GATEWAY_TEST_SPACED_KEYS");
    assert!(err.contains("a key with a space"), "{err}");
    assert!(!err.contains("sk two"), "the key is not shown: {err}");
}

#[test]
fn the_gateway_keys_have_defaults_and_refuse_nonsense() {
    let route = "[[chains.default.routes]]\nmodel = \"a/b\"\n";
    let parse = |text: &str| Config::from_toml_str(&format!("[gateway]\n{text}\n{route}"));
    let gateway = |text: &str| {
        parse(text)
            .map(|config| config.with_source("gateway.toml"))
            .and_then(|config| GatewayConfig::from_config(&config))
    };
    let defaults = gateway("").unwrap();
    assert_eq!(defaults.header_timeout(), Duration::from_secs(10));
    assert_eq!(defaults.body_timeout(), Duration::from_secs(30));
    assert_eq!(defaults.concurrency_limit(), 1024);
    assert!(!defaults.unauthenticated_allowed());
    assert_eq!(defaults.client_keys_env, None);
    assert_eq!(defaults.listen_addr().to_string(), "127.0.0.1:8080");
    assert_eq!(defaults.upstream_url(), "https://openrouter.ai/api/v1");
    // No [gateway] table at all: the same defaults.
    let bare = Config::from_toml_str(route).unwrap();
    assert_eq!(GatewayConfig::from_config(&bare).unwrap(), defaults);

    let text = "header_read_timeout = \"2s\"\nrequest_body_timeout = \"1m\"\nmax_concurrent_requests = 8\n\
                client_keys_env = \"KEYS\"\nallow_unauthenticated = true\nshutdown_grace = \"1m30s\"\n\
                listen = \"0.0.0.0:9000\"\nupstream = \"http://127.0.0.1:9/v1/\"";
    let g = gateway(text).unwrap();
    assert_eq!(g.header_timeout(), Duration::from_secs(2));
    assert_eq!(g.body_timeout(), Duration::from_secs(60));
    assert_eq!(g.grace(), Duration::from_secs(90));
    assert_eq!(g.concurrency_limit(), 8);
    assert!(g.unauthenticated_allowed());
    assert_eq!(g.listen_addr().to_string(), "0.0.0.0:9000");
    assert_eq!(g.upstream_url(), "http://127.0.0.1:9/v1");
    // The library keeps the table as read: through TOML and JSON and back.
    let set = parse(text).unwrap();
    let toml_again = Config::from_toml_str(&set.to_toml_string()).unwrap();
    assert_eq!(toml_again, set);
    assert_eq!(GatewayConfig::from_config(&toml_again).unwrap(), g);
    let json_again = Config::from_json_str(&serde_json::to_string(&set).unwrap()).unwrap();
    assert_eq!(GatewayConfig::from_config(&json_again).unwrap(), g);

    for (text, key, says) in [
        ("header_read_timeout = \"0s\"", "gateway.header_read_timeout", "zero"),
        ("request_body_timeout = \"0ms\"", "gateway.request_body_timeout", "zero"),
        (
            "max_concurrent_requests = 0",
            "gateway.max_concurrent_requests",
            "at least 1",
        ),
        ("client_keys_env = \" \"", "gateway.client_keys_env", "empty"),
        ("api_key_env = \"\"", "gateway.api_key_env", "empty"),
        ("max_concurrent_requests = -1", "gateway.max_concurrent_requests", ""),
        ("listen = \"localhost\"", "gateway.listen", "invalid socket address"),
        ("upstream = \"openrouter\"", "gateway.upstream", "expected an API base"),
        (
            "shutdown_grace = \"30\"",
            "gateway.shutdown_grace",
            "invalid duration \"30\": expected a duration: a number and a unit",
        ),
        (
            "shutdown_grace = 30",
            "gateway.shutdown_grace",
            "invalid type: integer `30`",
        ),
        ("metrics = \"yes\"", "gateway.metrics", "invalid type: string \"yes\""),
        (
            "lisen = \"127.0.0.1:1\"",
            "gateway.lisen",
            "unknown field `lisen`, expected one of `listen`",
        ),
    ] {
        let err = gateway(text).unwrap_err();
        assert_eq!(err.key(), key, "{text}: {err}");
        assert!(err.message().contains(says), "{text}: {err}");
        // Named in the file like the library's own errors.
        assert_eq!(err.file(), Some(std::path::Path::new("gateway.toml")), "{text}: {err}");
        assert!(
            err.to_string().starts_with(&format!("gateway.toml: {key}: ")),
            "{text}: {err}"
        );
    }
    // JSON files carry the same table.
    let json = r#"{"gateway": {"listen": "nowhere"}, "chains": {"default": {"routes": [{"model": "a/b"}]}}}"#;
    let err = GatewayConfig::from_config(&Config::from_json_str(json).unwrap()).unwrap_err();
    assert_eq!(err.key(), "gateway.listen", "{err}");
}

/// The keys `GatewayConfig` accepts, read from serde's own "unknown field"
/// error, so the list comes from the type.
fn gateway_keys_from_type() -> std::collections::BTreeSet<String> {
    let config = Config::from_toml_str("[gateway]\nzzz = 1\n[[chains.default.routes]]\nmodel = \"a/b\"\n").unwrap();
    let err = GatewayConfig::from_config(&config).unwrap_err();
    assert_eq!(err.key(), "gateway.zzz");
    let list = err
        .message()
        .split_once("unknown field `zzz`, expected one of ")
        .unwrap_or_else(|| panic!("not an unknown-field error: {err}"))
        .1;
    list.split(", ")
        .map(|k| format!("gateway.{}", k.trim_matches('`')))
        .collect()
}

#[test]
fn the_readme_and_the_example_file_list_exactly_the_gateway_keys() {
    let types = gateway_keys_from_type();
    assert!(types.len() >= 10, "{types:?}");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme
        .split("<!-- config-reference:start -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- config-reference:end -->").next())
        .expect("README has the config reference markers");
    let documented: std::collections::BTreeSet<String> = table
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|line| line.split_once('`').map(|(key, _)| key.to_owned()))
        .filter(|key| key.starts_with("gateway."))
        .collect();
    assert_eq!(documented, types, "README config reference vs GatewayConfig");

    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/fallback.toml")).unwrap();
    let file: toml::Value = toml::from_str(&text).unwrap();
    let used: std::collections::BTreeSet<String> = file["gateway"]
        .as_table()
        .expect("examples/fallback.toml has [gateway]")
        .keys()
        .map(|k| format!("gateway.{k}"))
        .collect();
    assert_eq!(used, types, "examples/fallback.toml should show every gateway key");
    // And the gateway reads it.
    let config = Config::from_toml_str(&text).unwrap();
    assert!(GatewayConfig::from_config(&config).is_ok());
}
