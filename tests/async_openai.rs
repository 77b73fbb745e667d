//! async-openai (feature `middleware`) with `llm_fallback::async_openai::FallbackService`
//! as its HTTP service, over loopback against the mock upstream; and the
//! `on_report` hook on all three fronts (the adapter, the reqwest
//! middleware, the tower layer).

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::retry::OpenAIRetryLayer;
use async_openai::middleware::ReqwestService;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequest, CreateChatCompletionRequestArgs,
};
use async_openai::types::completions::CreateCompletionRequestArgs;
use async_openai::types::embeddings::CreateEmbeddingRequestArgs;
use async_openai::types::responses::{CreateResponseArgs, ResponseStreamEvent};
use async_openai::Client as OpenAI;
use futures_util::StreamExt;
use llm_fallback::async_openai::FallbackService;
use llm_fallback::{Chain, FallbackBuilder, FallbackLayer, FallbackMiddleware, FallbackReport, Resolution, Route};
use llm_fallback_mock::{MockServer, MockUpstream, Reply, Script};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::timeout;
use tower::Layer;

const PRIMARY: &str = "primary/model";
const SECONDARY: &str = "secondary/model";
/// A bound on every wait, far above what loopback needs.
const BOUND: Duration = Duration::from_secs(20);

fn http() -> reqwest::Client {
    // reqwest's dev build has rustls without a provider; a client cannot be
    // built before one is installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn two_routes() -> Chain {
    Chain::new([
        Route::new(PRIMARY).label("primary"),
        Route::new(SECONDARY).label("secondary"),
    ])
}

fn config(mock: &MockServer) -> OpenAIConfig {
    OpenAIConfig::new()
        .with_api_base(mock.base_url())
        .with_api_key("sk-test-secret")
}

/// The reports the hook was called with.
#[derive(Clone, Default)]
struct Reports(Arc<Mutex<Vec<FallbackReport>>>);

impl Reports {
    fn hook(&self) -> impl Fn(&FallbackReport) + Send + Sync + 'static {
        let seen = self.0.clone();
        move |report: &FallbackReport| seen.lock().unwrap().push(report.clone())
    }

    fn all(&self) -> Vec<FallbackReport> {
        self.0.lock().unwrap().clone()
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// The one report; panics unless the hook ran exactly once.
    fn one(&self) -> FallbackReport {
        let all = self.all();
        assert_eq!(all.len(), 1, "the hook runs exactly once per request");
        all.into_iter().next().unwrap()
    }
}

/// An async-openai client over the adapter with `chain`, and the hook's reports.
fn client_with(mock: &MockServer, chain: Chain) -> (OpenAI<OpenAIConfig>, Reports) {
    let reports = Reports::default();
    let service = FallbackBuilder::new(chain)
        .on_report(reports.hook())
        .async_openai(http());
    (OpenAI::with_config(config(mock)).with_http_service(service), reports)
}

fn client(mock: &MockServer) -> (OpenAI<OpenAIConfig>, Reports) {
    client_with(mock, two_routes())
}

fn ask(model: &str) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model(model)
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("Say hello.")
            .build()
            .unwrap()
            .into()])
        .build()
        .unwrap()
}

fn down() -> Reply {
    Reply::error(503, "provider_unavailable", "No available provider")
}

async fn mock(primary: impl Into<Script>, secondary: impl Into<Script>) -> MockServer {
    MockServer::start(MockUpstream::new().model(PRIMARY, primary).model(SECONDARY, secondary))
        .await
        .unwrap()
}

fn models_tried(mock: &MockServer) -> Vec<String> {
    mock.upstream()
        .requests()
        .iter()
        .map(|r| r.model.clone().unwrap_or_default())
        .collect()
}

// ===== the adapter =====

#[tokio::test]
async fn a_fallback_on_another_endpoint_gets_that_endpoints_url_and_key() {
    // The caller's URL is reused for attempts that go there; a route on
    // another endpoint is sent to its own URL with its own key.
    let caller = mock(down(), Reply::ok()).await;
    let other = mock(Reply::ok(), Reply::ok().content("from the other endpoint")).await;
    std::env::set_var("LLM_FALLBACK_AOAI_TEST_KEY", "sk-other-endpoint");
    let endpoint = llm_fallback::native::Endpoint::new(other.base_url())
        .unwrap()
        .api_key_env("LLM_FALLBACK_AOAI_TEST_KEY")
        .unwrap();
    let chain = Chain::new([Route::new(PRIMARY), Route::new(SECONDARY).endpoint(endpoint)]);
    let (client, reports) = client_with(&caller, chain);
    let answer = timeout(BOUND, client.chat().create(ask(PRIMARY)))
        .await
        .unwrap()
        .expect("served by the other endpoint");
    assert_eq!(
        answer.choices[0].message.content.as_deref(),
        Some("from the other endpoint")
    );
    assert_eq!(models_tried(&caller), [PRIMARY]);
    let sent = other.upstream().requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].uri.path(), "/api/v1/chat/completions");
    assert_eq!(sent[0].headers["authorization"], "Bearer sk-other-endpoint");
    assert_eq!(sent[0].json()["model"], SECONDARY);
    assert_eq!(reports.one().served_model(), SECONDARY);
    // The caller's own attempt kept its URL and key.
    let first = &caller.upstream().requests()[0];
    assert_eq!(first.uri.path(), "/api/v1/chat/completions");
    assert_eq!(first.headers["authorization"], "Bearer sk-test-secret");
}

#[tokio::test]
async fn a_failing_primary_is_served_by_the_secondary() {
    let mock = mock(down(), Reply::ok().content("Hello from the secondary")).await;
    let (client, reports) = client(&mock);

    let answer = timeout(BOUND, client.chat().create(ask(PRIMARY)))
        .await
        .unwrap()
        .expect("async-openai reads the served answer");
    assert_eq!(answer.model, SECONDARY);
    assert_eq!(
        answer.choices[0].message.content.as_deref(),
        Some("Hello from the secondary")
    );
    assert_eq!(models_tried(&mock), [PRIMARY, SECONDARY]);
    // The caller's key reaches the upstream (same endpoint), the body is the
    // one async-openai serialized, with only the model rewritten.
    let sent = mock.upstream().requests();
    assert_eq!(sent[1].headers["authorization"], "Bearer sk-test-secret");
    assert_eq!(sent[1].json()["messages"][0]["content"], "Say hello.");

    let report = reports.one();
    assert_eq!(report.served_model(), SECONDARY);
    assert_eq!(report.attempts().len(), 2);
    assert_eq!(report.resolution(), Resolution::Served);
    // Never a secret in what the hook gets.
    assert!(!format!("{report:?} {report}").contains("sk-test-secret"));
}

#[tokio::test]
async fn a_stream_fails_over_before_its_first_token_and_the_hook_runs_at_its_end() {
    let tokens = ["Streams ", "fail ", "over."];
    let mock = mock(
        Reply::stream().error_before_first_token(),
        Reply::stream().tokens(tokens),
    )
    .await;
    let (client, reports) = client(&mock);

    let mut stream = timeout(BOUND, client.chat().create_stream(ask(PRIMARY)))
        .await
        .unwrap()
        .expect("the stream starts");
    let mut text = String::new();
    while let Some(chunk) = timeout(BOUND, stream.next()).await.expect("chunks keep coming") {
        let chunk = chunk.expect("every event is a chunk async-openai reads");
        assert_eq!(chunk.model, SECONDARY);
        for choice in &chunk.choices {
            text.push_str(choice.delta.content.as_deref().unwrap_or(""));
        }
    }
    assert_eq!(text, tokens.concat());
    assert_eq!(models_tried(&mock), [PRIMARY, SECONDARY]);
    // async-openai reads the body on a task of its own, which has ended it
    // by the time the stream ends; the hook ran once, with the final report.
    let report = reports.one();
    assert_eq!(report.served_model(), SECONDARY);
    assert_eq!(report.resolution(), Resolution::Served);
    assert!(report.usage().is_some(), "the final report has the last chunk's usage");
    // async-openai stops reading at `[DONE]` and drops the body before its
    // end: the stream is complete all the same, not dropped by the caller.
    assert_eq!(
        report.attempts().last().map(|a| a.outcome()),
        Some(llm_fallback::Outcome::Served)
    );
}

#[tokio::test]
async fn exhaustion_is_an_api_error_naming_every_model() {
    let mock = mock(down(), Reply::error(500, "server_error", "boom")).await;
    let (client, reports) = client(&mock);

    let err = timeout(BOUND, client.chat().create(ask(PRIMARY)))
        .await
        .unwrap()
        .expect_err("every model failed");
    let OpenAIError::ApiError(api) = &err else {
        panic!("not an ApiError: {err:?}")
    };
    assert_eq!(api.status_code, 502);
    for model in [PRIMARY, SECONDARY] {
        assert!(api.api_error.message.contains(model), "{}", api.api_error.message);
    }
    assert!(!api.api_error.message.contains("sk-test-secret"));
    let report = reports.one();
    assert_eq!(report.resolution(), Resolution::Exhausted);
    assert_eq!(report.attempts().len(), 2);
}

#[tokio::test]
async fn a_committed_stream_that_breaks_yields_an_error_item() {
    let mock = mock(Reply::stream().tokens(["a", "b", "c"]).cut_after(2), Reply::stream()).await;
    let (client, reports) = client(&mock);

    let mut stream = timeout(BOUND, client.chat().create_stream(ask(PRIMARY)))
        .await
        .unwrap()
        .expect("the stream starts");
    let mut items = Vec::new();
    while let Some(item) = timeout(BOUND, stream.next()).await.expect("bounded") {
        items.push(item);
    }
    let text: String = items
        .iter()
        .filter_map(|i| i.as_ref().ok())
        .flat_map(|c| c.choices.iter().filter_map(|ch| ch.delta.content.clone()))
        .collect();
    assert_eq!(text, "ab", "what was sent before the break reaches the caller");
    match items.last() {
        Some(Err(e)) => assert!(e.to_string().contains("stream_broken"), "{e}"),
        other => panic!("the stream must end with an error item, not {other:?}"),
    }
    assert_eq!(models_tried(&mock), [PRIMARY], "no fallback after the commit");
    let report = reports.one();
    assert_eq!(
        report.resolution(),
        Resolution::StreamBroken,
        "the report of the stream's end"
    );
}

#[tokio::test]
async fn a_401_stops_at_once() {
    let mock = mock(Reply::error(401, "authentication_error", "bad key"), Reply::ok()).await;
    let (client, reports) = client(&mock);

    let err = timeout(BOUND, client.chat().create(ask(PRIMARY)))
        .await
        .unwrap()
        .expect_err("the key is refused");
    // The upstream's own error, passed on unchanged. (OpenRouter's, like
    // the mock's, has a numeric `code`, which async-openai 0.43 cannot read
    // as its `ApiError`: it reports the body as it came instead.)
    match &err {
        OpenAIError::ApiError(api) => assert_eq!(api.status_code, 401),
        OpenAIError::JSONDeserialize(_, body) => assert!(body.contains("bad key"), "{body}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(models_tried(&mock), [PRIMARY], "the secondary is never tried");
    assert_eq!(reports.one().attempts().len(), 1);
}

#[tokio::test]
async fn responses_and_embeddings_go_through_the_adapter() {
    // The secondary's replies, in order: Responses, a Responses stream,
    // embeddings, completions.
    let secondary = Script::sequence([Reply::ok().content("pong"), Reply::stream(), Reply::ok(), Reply::ok()]);
    let mock = mock(down(), secondary).await;
    let (client, reports) = client(&mock);

    let request = CreateResponseArgs::default()
        .model(PRIMARY)
        .input("ping")
        .build()
        .unwrap();
    let answer = timeout(BOUND, client.responses().create(request))
        .await
        .unwrap()
        .expect("async-openai reads the Responses answer");
    assert_eq!(answer.model, SECONDARY);
    assert_eq!(answer.output_text().as_deref(), Some("pong"));

    let request = CreateResponseArgs::default()
        .model(PRIMARY)
        .input("ping")
        .build()
        .unwrap();
    let mut stream = timeout(BOUND, client.responses().create_stream(request))
        .await
        .unwrap()
        .expect("the stream starts");
    let mut events = Vec::new();
    while let Some(event) = timeout(BOUND, stream.next()).await.expect("bounded") {
        events.push(event.expect("every event parses"));
    }
    match events.last() {
        Some(ResponseStreamEvent::ResponseCompleted(done)) => assert_eq!(done.response.model, SECONDARY),
        other => panic!("{other:?}"),
    }

    let request = CreateEmbeddingRequestArgs::default()
        .model(PRIMARY)
        .input(["a cat", "a kitten"])
        .build()
        .unwrap();
    let answer = timeout(BOUND, client.embeddings().create(request))
        .await
        .unwrap()
        .expect("async-openai reads the embeddings");
    assert_eq!(answer.model, SECONDARY);
    assert_eq!(answer.data.len(), 2);

    let request = CreateCompletionRequestArgs::default()
        .model(PRIMARY)
        .prompt("Say hello.")
        .build()
        .unwrap();
    let answer = timeout(BOUND, client.completions().create(request))
        .await
        .unwrap()
        .expect("async-openai reads the completion");
    assert_eq!(answer.model, SECONDARY);

    let paths: Vec<_> = mock
        .upstream()
        .requests()
        .iter()
        .map(|r| r.uri.path().to_owned())
        .collect();
    assert_eq!(
        paths,
        [
            "/api/v1/responses",
            "/api/v1/responses",
            "/api/v1/responses",
            "/api/v1/responses",
            "/api/v1/embeddings",
            "/api/v1/embeddings",
            "/api/v1/completions",
            "/api/v1/completions",
        ]
    );
    let served: Vec<_> = reports.all().iter().map(|r| r.served_model().to_owned()).collect();
    assert_eq!(served, [SECONDARY; 4], "one report per request");
}

// ===== async-openai's own retry, both orders =====

#[tokio::test]
async fn openai_retry_outside_retries_the_whole_chain() {
    let mock = mock(down(), down()).await;
    let reports = Reports::default();
    let service = FallbackBuilder::new(two_routes())
        .on_report(reports.hook())
        .async_openai(http());
    let client = OpenAI::with_config(config(&mock)).with_http_service(OpenAIRetryLayer::new(1).layer(service));

    let err = timeout(BOUND, client.chat().create(ask(PRIMARY)))
        .await
        .unwrap()
        .expect_err("every model failed, twice");
    assert!(
        matches!(&err, OpenAIError::ApiError(api) if api.status_code == 502),
        "{err:?}"
    );
    // The chain ran twice: each model was tried once per run.
    assert_eq!(models_tried(&mock), [PRIMARY, SECONDARY, PRIMARY, SECONDARY]);
    let reports = reports.all();
    assert_eq!(reports.len(), 2, "one report per run of the chain");
    assert!(reports.iter().all(|r| r.resolution() == Resolution::Exhausted));
}

#[tokio::test]
async fn openai_retry_inside_retries_each_model_before_the_chain_moves_on() {
    let mock = mock(down(), Reply::ok()).await;
    let reports = Reports::default();
    let service = FallbackService::with_inner(
        FallbackBuilder::new(two_routes()).on_report(reports.hook()),
        OpenAIRetryLayer::new(1).layer(ReqwestService::new(http())),
    );
    let client = OpenAI::with_config(config(&mock)).with_http_service(service);

    let answer = timeout(BOUND, client.chat().create(ask(PRIMARY)))
        .await
        .unwrap()
        .expect("the secondary serves");
    assert_eq!(answer.model, SECONDARY);
    // The primary was retried once (the rebuilt request is the same bytes),
    // then the secondary served at its first try.
    assert_eq!(models_tried(&mock), [PRIMARY, PRIMARY, SECONDARY]);
    let sent = mock.upstream().requests();
    assert_eq!(sent[0].body, sent[1].body);
    let report = reports.one();
    assert_eq!(report.attempts().len(), 2, "the chain counts a retried model once");
    assert_eq!(report.served_model(), SECONDARY);
}

#[tokio::test]
async fn other_requests_pass_through_to_the_inner_service() {
    let mock = mock(Reply::ok(), Reply::ok()).await;
    let (client, reports) = client(&mock);
    // A GET is not replayed: it reaches the upstream as it is, once.
    let _ = timeout(BOUND, client.models().list()).await.unwrap();
    let sent = mock.upstream().requests();
    assert!(sent.iter().all(|r| r.method == http::Method::GET), "{sent:?}");
    assert!(sent.len() <= 1);
    assert_eq!(reports.len(), 0, "no report for a request the engine did not see");
}

#[tokio::test]
async fn a_post_to_another_api_passes_through_unchanged() {
    use tower::ServiceExt;

    let mock = mock(Reply::ok(), Reply::ok()).await;
    let reports = Reports::default();
    let service = FallbackBuilder::new(two_routes())
        .on_report(reports.hook())
        .async_openai(http());
    // The Assistants API's path ends in `/messages`, and its body has no
    // model: it is not an Anthropic Messages request to replay.
    let url = format!("{}/threads/t1/messages", mock.base_url());
    let client = http();
    let factory = async_openai::middleware::HttpRequestFactory::new(move || {
        let req = client
            .post(&url)
            .body(r#"{"role":"user","content":"hi"}"#)
            .build()
            .map_err(OpenAIError::Reqwest);
        async move { req }
    });
    let resp = timeout(BOUND, service.oneshot(factory)).await.unwrap().unwrap();
    assert!(
        resp.headers().get("x-fallback-attempts").is_none(),
        "not answered by the engine"
    );
    assert_eq!(reports.len(), 0);
}

// ===== the hook on the other fronts =====

#[tokio::test]
async fn the_middleware_hook_runs_once_after_the_stream_ends_and_for_a_refusal() {
    let mock = mock(
        Reply::stream().error_before_first_token(),
        Reply::stream().tokens(["a", "b"]),
    )
    .await;
    let reports = Reports::default();
    let mw = FallbackMiddleware::builder(two_routes())
        .on_report(reports.hook())
        .middleware();
    let client = reqwest_middleware::ClientBuilder::new(http()).with(mw).build();
    let body = serde_json::json!({"model": PRIMARY, "stream": true, "messages": [{"role": "user", "content": "hi"}]});

    let resp = timeout(BOUND, client.post(mock.chat_url()).json(&body).send())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(reports.len(), 0, "not before the stream ends");
    let bytes = timeout(BOUND, resp.bytes()).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&bytes).contains("[DONE]"));
    let report = reports.one();
    assert_eq!(report.served_model(), SECONDARY);

    // A streaming request body is refused before the engine: one report too.
    let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{}"))]);
    let refused = client
        .post(mock.chat_url())
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    assert!(refused.is_err());
    let all = reports.all();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].resolution(), Resolution::Rejected);
}

#[tokio::test]
async fn the_layer_hook_runs_once_per_request_and_for_a_dropped_stream() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let upstream = MockUpstream::new().model(PRIMARY, down()).model(
        SECONDARY,
        Script::sequence([Reply::ok(), Reply::stream().tokens(["a", "b", "c"])]),
    );
    let reports = Reports::default();
    let layer: FallbackLayer = FallbackLayer::builder(two_routes())
        .max_body_bytes(1024)
        .on_report(reports.hook())
        .layer();
    let svc = layer.layer(upstream);
    let req = |body: String| {
        http::Request::post("http://openrouter.test/api/v1/chat/completions")
            .body(body)
            .unwrap()
    };

    // A plain answer: the hook ran before the response is returned.
    let plain = format!(r#"{{"model":"{PRIMARY}","messages":[]}}"#);
    let resp = svc.clone().oneshot(req(plain)).await.unwrap();
    assert_eq!(reports.len(), 1);
    let _ = resp.into_body().collect().await.unwrap();
    assert_eq!(reports.len(), 1, "never twice");

    // A refused request (over the body limit).
    let big = format!(r#"{{"model":"{PRIMARY}","messages":[],"pad":"{}"}}"#, "x".repeat(2048));
    let resp = svc.clone().oneshot(req(big)).await.unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(reports.len(), 2);
    assert_eq!(reports.all()[1].resolution(), Resolution::Rejected);

    // A stream dropped by the caller before its end: once, at the drop.
    let streamed = format!(r#"{{"model":"{PRIMARY}","stream":true,"messages":[]}}"#);
    let resp = svc.clone().oneshot(req(streamed)).await.unwrap();
    assert_eq!(reports.len(), 2, "not before the stream ends");
    let mut body = resp.into_body();
    let _ = body.frame().await;
    assert_eq!(reports.len(), 2);
    drop(body);
    let all = reports.all();
    assert_eq!(all.len(), 3);
    assert_eq!(all[2].served_model(), SECONDARY);
    assert_eq!(
        all[2].attempts().last().map(|a| a.outcome()),
        Some(llm_fallback::Outcome::Abandoned)
    );
}
