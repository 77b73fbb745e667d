//! The gateway example with every API shape, end to end over loopback:
//! `async-openai` for Responses (plain and streaming) and embeddings, raw
//! SSE for Anthropic Messages (no maintained Rust Anthropic client fits),
//! each through a failing primary, an error event before the first content,
//! and a stream that breaks after it; `GET /v1/models`; the JSON 404s; an
//! Anthropic caller's `x-api-key` for the gateway, never forwarded.
//!
//! Real sockets, real (millisecond) mock timings; every wait is bounded.

mod common;
#[path = "../examples/gateway.rs"]
mod gateway;

use async_openai::config::OpenAIConfig;
use async_openai::types::embeddings::CreateEmbeddingRequestArgs;
use async_openai::types::responses::{CreateResponseArgs, ResponseErrorCode, ResponseStreamEvent};
use async_openai::Client as OpenAI;
use bytes::Bytes;
use futures_util::StreamExt;
use gateway::{Drained, GatewayConfig};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use llm_fallback::config::Config;
use llm_fallback_mock::{parse_sse_named, MockServer, MockUpstream, Reply};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const PRIMARY: &str = "anthropic/claude-sonnet-4";
const SECONDARY: &str = "openai/gpt-4o";
const BOUND: Duration = Duration::from_secs(10);

struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    served: JoinHandle<Drained>,
}

impl Running {
    async fn start(config: &str) -> Running {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = Config::from_toml_str(config).expect("test config parses");
        let app = gateway::app(&config).expect("the gateway builds");
        let mut settings = GatewayConfig::from_config(&config).expect("the [gateway] table reads");
        settings.shutdown_grace = Some(Duration::from_secs(5));
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
        OpenAI::with_config(
            OpenAIConfig::new()
                .with_api_base(format!("http://{}/v1", self.addr))
                .with_api_key("sk-client-secret-for-the-gateway"),
        )
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn shutdown(&mut self) -> Drained {
        let _ = self.stop.take().expect("running").send(());
        timeout(BOUND, &mut self.served)
            .await
            .expect("bounded")
            .expect("no panic")
    }
}

fn config_for(mock: &MockServer, gateway_extra: &str) -> String {
    format!(
        "[gateway]\nupstream = \"{}/api/v1\"\n{gateway_extra}\n\
         [chains.default]\ndeadline = \"30s\"\n\
         [[chains.default.routes]]\nmodel = \"{PRIMARY}\"\ntimeout = \"10s\"\nidle_timeout = \"2s\"\n\
         [[chains.default.routes]]\nmodel = \"{SECONDARY}\"\ntimeout = \"10s\"\nidle_timeout = \"2s\"\n",
        mock.url()
    )
}

async fn raw(method: http::Method, url: &str, body: &str, headers: &[(&str, &str)]) -> (http::response::Parts, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json");
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

async fn start(primary: Reply, secondary: Reply) -> (MockServer, Running) {
    let mock = MockServer::start(MockUpstream::new().model(PRIMARY, primary).model(SECONDARY, secondary))
        .await
        .unwrap();
    let gw = Running::start(&config_for(&mock, "")).await;
    (mock, gw)
}

// ===== OpenAI Responses, with async-openai =====

#[tokio::test]
async fn async_openai_responses_through_a_failing_primary() {
    let (mock, mut gw) = start(Reply::status(529), Reply::ok().content("pong")).await;
    let request = CreateResponseArgs::default()
        .model(PRIMARY)
        .input("ping")
        .build()
        .unwrap();
    let answer = timeout(BOUND, gw.openai().responses().create(request))
        .await
        .unwrap()
        .expect("async-openai reads the answer");
    assert_eq!(answer.model, SECONDARY);
    assert_eq!(answer.output_text().as_deref(), Some("pong"));
    let sent = mock.upstream().requests();
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|r| r.uri.path() == "/api/v1/responses"));
    assert_eq!(gw.shutdown().await, Drained::AllFinished);
}

async fn responses_events(gw: &Running) -> Vec<ResponseStreamEvent> {
    let request = CreateResponseArgs::default()
        .model(PRIMARY)
        .input("ping")
        .build()
        .unwrap();
    let mut stream = timeout(BOUND, gw.openai().responses().create_stream(request))
        .await
        .unwrap()
        .expect("the stream starts");
    let mut events = Vec::new();
    while let Some(event) = timeout(BOUND, stream.next()).await.expect("bounded") {
        events.push(event.expect("every event parses with the SDK's types"));
    }
    events
}

fn deltas(events: &[ResponseStreamEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            ResponseStreamEvent::ResponseOutputTextDelta(d) => Some(d.delta.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn async_openai_streams_responses_past_an_error_event_before_the_first_output() {
    let (_mock, mut gw) = start(
        Reply::stream().tokens(["x"]).error_event_after(0),
        Reply::stream().tokens(["Hel", "lo"]),
    )
    .await;
    let events = responses_events(&gw).await;
    assert_eq!(deltas(&events), "Hello");
    assert!(matches!(events.first(), Some(ResponseStreamEvent::ResponseCreated(_))));
    match events.last() {
        Some(ResponseStreamEvent::ResponseCompleted(done)) => assert_eq!(done.response.model, SECONDARY),
        other => panic!("{other:?}"),
    }
    assert!(!events
        .iter()
        .any(|e| matches!(e, ResponseStreamEvent::ResponseError(_))));
    assert_eq!(gw.shutdown().await, Drained::AllFinished);
}

#[tokio::test]
async fn async_openai_sees_a_broken_responses_stream_fail_not_end() {
    let (mock, mut gw) = start(Reply::stream().tokens(["a", "b", "c"]).cut_after(2), Reply::stream()).await;
    let events = responses_events(&gw).await;
    assert_eq!(deltas(&events), "ab");
    let failed: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, ResponseStreamEvent::ResponseFailed(_)))
        .collect();
    assert_eq!(failed.len(), 1);
    match events.last() {
        Some(ResponseStreamEvent::ResponseFailed(f)) => {
            let error = f.response.error.as_ref().expect("an error");
            assert_eq!(error.code, ResponseErrorCode::Other("stream_broken".into()));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        mock.upstream().request_count(SECONDARY),
        0,
        "no second answer spliced in"
    );
    assert_eq!(gw.shutdown().await, Drained::AllFinished);
}

// ===== embeddings, with async-openai =====

#[tokio::test]
async fn async_openai_embeddings_through_a_failing_primary_say_which_model() {
    let (mock, mut gw) = start(Reply::status(503), Reply::ok()).await;
    let request = CreateEmbeddingRequestArgs::default()
        .model(PRIMARY)
        .input(["a cat", "a kitten"])
        .build()
        .unwrap();
    let answer = timeout(BOUND, gw.openai().embeddings().create(request))
        .await
        .unwrap()
        .expect("async-openai reads the answer");
    assert_eq!(
        answer.model, SECONDARY,
        "the caller learns which model made the vectors"
    );
    assert_eq!(answer.data.len(), 2);
    let (parts, _) = raw(
        http::Method::POST,
        &gw.url("/v1/embeddings"),
        &json!({"model": PRIMARY, "input": "x"}).to_string(),
        &[],
    )
    .await;
    assert_eq!(parts.headers["x-fallback-model"], SECONDARY);
    assert!(mock
        .upstream()
        .requests()
        .iter()
        .all(|r| r.uri.path() == "/api/v1/embeddings"));
    assert_eq!(gw.shutdown().await, Drained::AllFinished);
}

// ===== Anthropic Messages, raw SSE =====

fn messages_body(stream: bool) -> String {
    json!({"model": PRIMARY, "max_tokens": 64, "stream": stream, "messages": [{"role": "user", "content": "ping"}]})
        .to_string()
}

const ANTHROPIC: [(&str, &str); 2] = [
    ("anthropic-version", "2023-06-01"),
    ("x-api-key", "sk-ant-for-the-gateway"),
];

#[tokio::test]
async fn messages_through_an_overloaded_primary() {
    let (mock, mut gw) = start(Reply::status(529), Reply::ok().content("pong")).await;
    let (parts, bytes) = raw(
        http::Method::POST,
        &gw.url("/v1/messages"),
        &messages_body(false),
        &ANTHROPIC,
    )
    .await;
    assert_eq!(parts.status, 200);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["text"], "pong");
    let sent = mock.upstream().requests();
    assert!(sent.iter().all(|r| r.uri.path() == "/api/v1/messages"));
    assert!(
        sent.iter().all(|r| r.headers.get("x-api-key").is_none()),
        "the caller's key is the gateway's"
    );
    assert_eq!(sent[1].headers["anthropic-version"], "2023-06-01");
    // Everything failing: Anthropic's error shape, naming both attempts.
    mock.upstream().set_script(SECONDARY, Reply::status(500));
    mock.upstream().set_script(PRIMARY, Reply::status(529));
    let (parts, bytes) = raw(
        http::Method::POST,
        &gw.url("/v1/messages"),
        &messages_body(false),
        &ANTHROPIC,
    )
    .await;
    assert_eq!(parts.status, 502);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "api_error");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains(PRIMARY) && message.contains(SECONDARY), "{message}");
    assert_eq!(gw.shutdown().await, Drained::AllFinished);
}

#[tokio::test]
async fn messages_stream_past_an_overloaded_error_event_and_end_with_one_error_when_broken() {
    let (mock, mut gw) = start(
        Reply::stream().tokens(["x"]).error_before_first_token(),
        Reply::stream().tokens(["Hel", "lo"]),
    )
    .await;
    let (parts, bytes) = raw(
        http::Method::POST,
        &gw.url("/v1/messages"),
        &messages_body(true),
        &ANTHROPIC,
    )
    .await;
    assert_eq!(parts.status, 200);
    let events = parse_sse_named(&bytes);
    let names: Vec<_> = events.iter().filter_map(|e| e.name()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    assert!(!names.contains(&"error"), "{names:?}");
    let text: String = events
        .iter()
        .filter(|e| e.name() == Some("content_block_delta"))
        .filter_map(|e| e.json()?["delta"]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "Hello");

    // Broken after the first content: one `event: error`, last.
    mock.upstream()
        .set_script(PRIMARY, Reply::stream().tokens(["a", "b", "c"]).cut_after(2));
    let (_, bytes) = raw(
        http::Method::POST,
        &gw.url("/v1/messages"),
        &messages_body(true),
        &ANTHROPIC,
    )
    .await;
    let events = parse_sse_named(&bytes);
    let errors: Vec<_> = events.iter().filter(|e| e.name() == Some("error")).collect();
    assert_eq!(errors.len(), 1);
    let last = events.last().unwrap();
    assert_eq!(last.name(), Some("error"));
    let v = last.json().unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "api_error");
    assert!(
        !events.iter().any(|e| e.name() == Some("message_stop")),
        "never mistaken for a whole answer"
    );
    assert_eq!(gw.shutdown().await, Drained::AllFinished);
}

// ===== models and 404s =====

#[tokio::test]
async fn models_are_listed_and_unknown_paths_get_json_404s() {
    let (_mock, mut gw) = start(Reply::ok(), Reply::ok()).await;
    let models = timeout(BOUND, gw.openai().models().list())
        .await
        .unwrap()
        .expect("async-openai reads the model list");
    let ids: Vec<_> = models.data.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, [PRIMARY, SECONDARY]);
    let (parts, bytes) = raw(http::Method::GET, &gw.url("/v1/nothing"), "", &[]).await;
    assert_eq!(parts.status, 404);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["error"]["code"], "not_found");
    let (parts, bytes) = raw(
        http::Method::POST,
        &gw.url("/v1/messages/count_tokens"),
        "{}",
        &ANTHROPIC,
    )
    .await;
    assert_eq!(parts.status, 404);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "not_found_error");
    assert_eq!(gw.shutdown().await, Drained::AllFinished);
}

#[tokio::test]
async fn an_anthropic_caller_sends_its_gateway_key_as_x_api_key() {
    const VAR: &str = "LLM_FALLBACK_TEST_GATEWAY_DIALECT_KEYS";
    std::env::set_var(VAR, "sk-ant-for-the-gateway");
    let mock = MockServer::start(MockUpstream::new().model(PRIMARY, Reply::ok()))
        .await
        .unwrap();
    let mut gw = Running::start(&config_for(&mock, &format!("client_keys_env = \"{VAR}\""))).await;
    let (parts, _) = raw(
        http::Method::POST,
        &gw.url("/v1/messages"),
        &messages_body(false),
        &ANTHROPIC,
    )
    .await;
    assert_eq!(parts.status, 200);
    let (parts, bytes) = raw(
        http::Method::POST,
        &gw.url("/v1/messages"),
        &messages_body(false),
        &[("x-api-key", "sk-wrong")],
    )
    .await;
    assert_eq!(parts.status, 401);
    // In Anthropic's error shape, as its SDK reads it.
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "authentication_error", "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    // A chat caller still gets OpenAI's.
    let (parts, bytes) = raw(
        http::Method::POST,
        &gw.url("/v1/chat/completions"),
        "{}",
        &[("x-api-key", "sk-wrong")],
    )
    .await;
    assert_eq!(parts.status, 401);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key", "{v}");
    let sent = mock.upstream().requests();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].headers.get("x-api-key").is_none());
    assert_eq!(gw.shutdown().await, Drained::AllFinished);
}
