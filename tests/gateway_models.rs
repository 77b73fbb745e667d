//! The gateway example routing by model, end to end over loopback: each
//! configured model name and alias is served by its chain (async-openai and
//! the official Python `openai` SDK, which reads the served model in
//! `x-fallback-model`), `GET /v1/models` lists them, and a model it does not
//! serve is a `400` listing what it does.
//!
//! The Python test runs `python3` with the `openai` package; it skips with a
//! printed reason when that is missing, unless
//! `LLM_FALLBACK_REQUIRE_PYTHON_OPENAI=1` (as `.ci/run` sets, after
//! installing it). Real sockets, real (millisecond) mock timings; every wait
//! is bounded.

mod common;
#[path = "../examples/gateway.rs"]
mod gateway;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs};
use async_openai::Client as OpenAI;
use bytes::Bytes;
use gateway::{Drained, GatewayConfig};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use llm_fallback::config::Config;
use llm_fallback_mock::{MockServer, MockUpstream, Reply};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const BOUND: Duration = Duration::from_secs(10);
/// Python starts and imports `openai` (a second or two on a busy machine).
const PYTHON_BOUND: Duration = Duration::from_secs(60);

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

    fn base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    fn openai(&self) -> OpenAI<OpenAIConfig> {
        OpenAI::with_config(
            OpenAIConfig::new()
                .with_api_base(self.base())
                .with_api_key("sk-client-secret-for-the-gateway"),
        )
    }

    async fn shutdown(&mut self) -> Drained {
        let _ = self.stop.take().expect("running").send(());
        timeout(BOUND, &mut self.served)
            .await
            .expect("bounded")
            .expect("serve does not panic")
    }
}

fn upstream() -> MockUpstream {
    MockUpstream::new()
        .model("anthropic/claude-3.5-sonnet", Reply::ok().content("from sonnet"))
        .model("strong/a", Reply::status(503))
        .model("strong/b", Reply::ok().content("from strong b"))
        .model("openai/gpt-4o-mini", Reply::status(502))
        .model("google/gemini-flash-1.5", Reply::ok().content("from gemini"))
}

/// `[models.*]`: a model id on the default chain, an alias of a named
/// chain, and a model id with a chain of its own; no `unknown_model` (the
/// gateway refuses models it does not serve).
fn config_for(mock: &MockServer) -> String {
    format!(
        r#"
        [gateway]
        upstream = "{}/api/v1"

        [chains.default]
        deadline = "30s"
        [[chains.default.routes]]
        model = "anthropic/claude-3.5-sonnet"
        label = "primary"
        timeout = "10s"

        [[chains.strong.routes]]
        model = "strong/a"
        timeout = "10s"
        [[chains.strong.routes]]
        model = "strong/b"
        label = "strong-backup"
        timeout = "10s"

        [models."anthropic/claude-3.5-sonnet"]
        chain = "default"

        [models.smart]
        chain = "strong"

        [[models."openai/gpt-4o-mini".routes]]
        model = "openai/gpt-4o-mini"
        timeout = "10s"
        [[models."openai/gpt-4o-mini".routes]]
        model = "google/gemini-flash-1.5"
        label = "mini-backup"
        timeout = "10s"
        "#,
        mock.url()
    )
}

/// Each configured name, the model that serves it, its label, and what the
/// upstream is sent in order.
const SERVED: [(&str, &str, Option<&str>, &[&str]); 3] = [
    (
        "anthropic/claude-3.5-sonnet",
        "anthropic/claude-3.5-sonnet",
        Some("primary"),
        &["anthropic/claude-3.5-sonnet"],
    ),
    ("smart", "strong/b", Some("strong-backup"), &["strong/a", "strong/b"]),
    (
        "openai/gpt-4o-mini",
        "google/gemini-flash-1.5",
        Some("mini-backup"),
        &["openai/gpt-4o-mini", "google/gemini-flash-1.5"],
    ),
];

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

async fn raw_post(url: &str, body: &str) -> (http::response::Parts, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = timeout(BOUND, client.request(request))
        .await
        .expect("answered within the bound")
        .expect("the gateway answers");
    let (parts, body) = response.into_parts();
    let bytes = timeout(BOUND, body.collect()).await.unwrap().unwrap().to_bytes();
    (parts, bytes)
}

fn sent_models(mock: &MockServer) -> Vec<String> {
    mock.upstream()
        .requests()
        .iter()
        .filter_map(|r| r.model.clone())
        .collect()
}

#[tokio::test]
async fn every_configured_model_name_is_served_by_its_chain() {
    for (name, served, label, sent) in SERVED {
        let mock = MockServer::start(upstream()).await.unwrap();
        let mut gw = Running::start(&config_for(&mock)).await;
        // async-openai, for a model name and an alias alike.
        let answer = timeout(BOUND, gw.openai().chat().create(ask(name)))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(answer.model, served, "{name}");
        assert_eq!(sent_models(&mock), sent, "{name}");
        // The headers say the same.
        let body = json!({"model": name, "messages": [{"role": "user", "content": "hi"}]}).to_string();
        let (parts, bytes) = raw_post(&format!("{}/chat/completions", gw.base()), &body).await;
        assert_eq!(
            parts.status,
            http::StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        assert_eq!(parts.headers["x-fallback-model"], served, "{name}");
        assert_eq!(
            parts.headers.get("x-fallback-label").map(|v| v.to_str().unwrap()),
            label,
            "{name}"
        );
        assert_eq!(parts.headers["x-fallback-attempts"], sent.len().to_string().as_str());
        assert_eq!(gw.shutdown().await, Drained::AllFinished);
    }
}

#[tokio::test]
async fn a_model_the_gateway_does_not_serve_is_a_400_listing_what_it_serves() {
    let mock = MockServer::start(upstream()).await.unwrap();
    let mut gw = Running::start(&config_for(&mock)).await;
    let body = json!({"model": "openai/o3", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let (parts, bytes) = raw_post(&format!("{}/chat/completions", gw.base()), &body).await;
    assert_eq!(parts.status, http::StatusCode::BAD_REQUEST);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["error"]["code"], "model_not_found", "{v}");
    assert_eq!(
        v["error"]["message"],
        "the model \"openai/o3\" is not served here; served models: anthropic/claude-3.5-sonnet, \
         openai/gpt-4o-mini, smart"
    );
    // async-openai reads it as an API error.
    match timeout(BOUND, gw.openai().chat().create(ask("openai/o3")))
        .await
        .unwrap()
    {
        Err(OpenAIError::ApiError(e)) => assert_eq!(e.api_error.code.as_deref(), Some("model_not_found"), "{e:?}"),
        other => panic!("expected the 400 as an API error, got {other:?}"),
    }
    assert!(mock.upstream().requests().is_empty(), "nothing is sent upstream");
    assert_eq!(gw.shutdown().await, Drained::AllFinished);
}

#[tokio::test]
async fn the_models_list_names_the_models_and_aliases_served() {
    let mock = MockServer::start(upstream()).await.unwrap();
    let mut gw = Running::start(&config_for(&mock)).await;
    let list = timeout(BOUND, gw.openai().models().list()).await.unwrap().unwrap();
    let ids: Vec<&str> = list.data.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["anthropic/claude-3.5-sonnet", "openai/gpt-4o-mini", "smart"]);
    assert_eq!(gw.shutdown().await, Drained::AllFinished);
}

/// Whether the Python `openai` package can be imported; the reason when not.
fn python_openai() -> Result<(), String> {
    match std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "`python3 -c \"import openai\"` failed: {}",
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
        )),
        Err(e) => Err(format!("python3 cannot be run: {e}")),
    }
}

/// Asks for each model with the official SDK's raw response and prints
/// the header and the parsed body's model, one JSON line per model.
const PYTHON: &str = r#"
import json, sys
from openai import OpenAI

client = OpenAI(base_url=sys.argv[1], api_key="sk-client-secret-for-the-gateway", max_retries=0, timeout=20)
for model in sys.argv[2:]:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=32)
    completion = raw.parse()
    print(json.dumps({"asked": model, "header": raw.headers["x-fallback-model"], "model": completion.model,
                      "content": completion.choices[0].message.content}))
"#;

#[tokio::test]
async fn the_official_python_client_sees_the_served_model_in_x_fallback_model() {
    if let Err(reason) = python_openai() {
        if std::env::var("LLM_FALLBACK_REQUIRE_PYTHON_OPENAI").is_ok_and(|v| v == "1") {
            panic!("LLM_FALLBACK_REQUIRE_PYTHON_OPENAI=1 but {reason}");
        }
        println!("skipped: {reason} (pip install openai, or set LLM_FALLBACK_REQUIRE_PYTHON_OPENAI=1 to fail)");
        return;
    }
    let mock = MockServer::start(upstream()).await.unwrap();
    let mut gw = Running::start(&config_for(&mock)).await;
    let mut command = tokio::process::Command::new("python3");
    command
        .arg("-c")
        .arg(PYTHON)
        .arg(gw.base())
        .args(SERVED.iter().map(|(name, ..)| *name))
        // No proxy between the SDK and 127.0.0.1.
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env("NO_PROXY", "127.0.0.1")
        .kill_on_drop(true);
    let out = timeout(PYTHON_BOUND, command.output())
        .await
        .expect("python finishes within the bound")
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the Python client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), SERVED.len(), "{lines:?}");
    for (line, (name, served, ..)) in lines.iter().zip(SERVED) {
        assert_eq!(line["asked"], name);
        assert_eq!(line["header"], served, "{line}");
        assert_eq!(line["model"], served, "{line}");
    }
    assert_eq!(lines[1]["content"], "from strong b");
    assert_eq!(gw.shutdown().await, Drained::AllFinished);
}
