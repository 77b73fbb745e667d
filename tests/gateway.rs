//! The gateway example end to end over loopback: an unmodified OpenAI client
//! (`async-openai`) through it, plain and streaming, with a failing primary;
//! keep-alives; the upstream key; health, metrics and request ids; graceful
//! shutdown with a stream in flight.
//!
//! The mock upstream's timings here are real (a few milliseconds): these
//! tests run real sockets end to end. Every wait is bounded by a timeout.

#[path = "../examples/gateway.rs"]
mod gateway;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs};
use async_openai::Client as OpenAI;
use bytes::Bytes;
use futures_util::StreamExt;
use gateway::Drained;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use llm_fallback::config::Config;
use llm_fallback::testing::{parse_sse, MockServer, MockUpstream, Reply, SseEvent};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
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
    served: JoinHandle<std::io::Result<Drained>>,
}

impl Running {
    async fn start(config: &str, grace: Duration) -> Running {
        // async-openai's reqwest has rustls without a provider; install ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = Config::from_toml_str(config).expect("test config parses");
        let app = gateway::app(&config).expect("the gateway builds");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(gateway::serve(
            listener,
            app,
            async {
                let _ = stopped.await;
            },
            grace,
        ));
        Running {
            addr,
            stop: Some(stop),
            served,
        }
    }

    fn openai(&self) -> OpenAI<OpenAIConfig> {
        OpenAI::with_config(
            OpenAIConfig::new()
                .with_api_base(format!("http://{}/v1", self.addr))
                .with_api_key("sk-client-secret-for-the-gateway"),
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
            .expect("serve has no I/O error")
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
    assert_eq!(body["error"]["metadata"]["attempts"].as_array().unwrap().len(), 2);
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
        &[("authorization", "Bearer sk-client")],
    )
    .await;
    assert_eq!(parts.status, 200);
    let sent = mock.upstream().requests();
    assert_eq!(sent[0].headers["authorization"], "Bearer sk-upstream-test");
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
    let drained = timeout(BOUND, &mut gw.served).await.unwrap().unwrap().unwrap();
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
