//! `FallbackMiddleware` in a `reqwest_middleware` client, over loopback HTTP
//! against the mock upstream: the classification table, streaming,
//! timeouts, exhaustion, refused bodies and the rewrite guarantees of the
//! tower layer, through the same engine.

mod common;

use bytes::Bytes;
use common::{chat, Chunked};
use http::{Extensions, StatusCode};
use llm_fallback::{
    Attempt, Chain, FallbackMiddleware, FallbackReport, Outcome, Resolution, Route, StreamReport, StreamingBodyError,
};
use llm_fallback_mock::{parse_sse, MockServer, MockUpstream, Reply, SseEvent};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PRIMARY: &str = "primary/model";
const SECONDARY: &str = "secondary/model";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A plain reqwest client (no proxy from the environment: loopback only).
fn reqwest_client() -> reqwest::Client {
    // The dev build of reqwest has rustls without a crypto provider (for the
    // example's OpenRouter path); a client cannot be built before one is set.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn client(mw: FallbackMiddleware) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest_client()).with(mw).build()
}

fn two_routes() -> Chain {
    Chain::new([
        Route::new(PRIMARY).label("primary"),
        Route::new(SECONDARY).label("secondary"),
    ])
}

async fn send(client: &ClientWithMiddleware, url: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    client
        .post(url)
        .header("content-type", "application/json")
        .bearer_auth("sk-test-secret")
        .body(body)
        .send()
        .await
        .expect("the middleware answers with a response")
}

fn report(resp: &reqwest::Response) -> FallbackReport {
    resp.extensions()
        .get::<FallbackReport>()
        .expect("every response carries a FallbackReport")
        .clone()
}

async fn json(resp: reqwest::Response) -> Value {
    let bytes = resp.bytes().await.unwrap();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

// ===== classification =====

enum Expect {
    Fallback(Outcome),
    Stop(StatusCode),
    Served,
}

/// One row of the table in tests/classification.rs, through reqwest.
async fn check(row: &str, primary: Option<Reply>, expect: Expect) {
    let mut upstream = MockUpstream::new().model(SECONDARY, Reply::ok());
    if let Some(reply) = primary {
        upstream = upstream.model(PRIMARY, reply);
    }
    let server = MockServer::start(upstream).await.unwrap();
    let resp = send(
        &client(FallbackMiddleware::new(two_routes())),
        &server.chat_url(),
        chat("caller/model"),
    )
    .await;
    let status = resp.status();
    let headers = resp.headers().clone();
    let report = report(&resp);
    let body = json(resp).await;
    let up = server.upstream();
    match expect {
        Expect::Fallback(outcome) => {
            assert_eq!(status, StatusCode::OK, "{row}: {body}");
            assert_eq!(report.served_model(), SECONDARY, "{row}");
            assert_eq!(report.attempts().len(), 2, "{row}");
            assert_eq!(report.attempts()[0].outcome(), outcome, "{row}: {report}");
            assert_eq!(report.attempts()[1].outcome(), Outcome::Served, "{row}");
            assert_eq!(headers["x-fallback-model"], SECONDARY, "{row}");
            assert_eq!(headers["x-fallback-attempts"], "2", "{row}");
            assert_eq!(headers["x-fallback-label"], "secondary", "{row}");
            assert_eq!(body["model"], SECONDARY, "{row}");
            assert_eq!(up.request_count(PRIMARY), 1, "{row}");
            assert_eq!(up.request_count(SECONDARY), 1, "{row}");
        }
        Expect::Stop(expected) => {
            assert_eq!(status, expected, "{row}: {body}");
            assert_eq!(report.resolution(), Resolution::Stopped, "{row}");
            assert_eq!(report.attempts().len(), 1, "{row}");
            assert_eq!(report.attempts()[0].outcome(), Outcome::Stopped, "{row}");
            assert_eq!(
                body["error"]["code"],
                expected.as_u16(),
                "{row}: the upstream's own body"
            );
            assert_eq!(
                up.request_count(SECONDARY),
                0,
                "{row}: falling back would hide the problem"
            );
        }
        Expect::Served => {
            assert_eq!(status, StatusCode::OK, "{row}");
            assert_eq!(report.resolution(), Resolution::Served, "{row}");
            assert_eq!(report.served_model(), PRIMARY, "{row}");
            assert_eq!(report.attempts().len(), 1, "{row}");
            assert_eq!(up.request_count(SECONDARY), 0, "{row}");
        }
    }
}

#[tokio::test]
async fn every_classification_row() {
    use Expect::*;
    let fallback_statuses = [408, 429, 500, 502, 503, 504, 524, 529, 520];
    for status in fallback_statuses {
        check(
            &format!("HTTP {status}"),
            Some(Reply::status(status)),
            Fallback(Outcome::HttpError),
        )
        .await;
    }
    let rows: Vec<(&str, Option<Reply>, Expect)> = vec![
        ("200 completion", Some(Reply::ok()), Served),
        (
            "connection dropped",
            Some(Reply::transport_error()),
            Fallback(Outcome::Transport),
        ),
        ("400 unknown model (unscripted)", None, Fallback(Outcome::HttpError)),
        (
            "400 context_length_exceeded",
            Some(Reply::error(
                400,
                "context_length_exceeded",
                "maximum context length is 8192 tokens",
            )),
            Fallback(Outcome::HttpError),
        ),
        (
            "400 context length in the message only",
            Some(Reply::raw(
                400,
                "application/json",
                r#"{"error":{"message":"This model's maximum context length is 4096 tokens","type":"invalid_request_error","code":null}}"#,
            )),
            Fallback(Outcome::HttpError),
        ),
        (
            "404 no endpoints",
            Some(Reply::status(404)),
            Fallback(Outcome::HttpError),
        ),
        ("403 moderation", Some(Reply::status(403)), Fallback(Outcome::HttpError)),
        (
            "200 with an error object",
            Some(Reply::ok_with_error()),
            Fallback(Outcome::ErrorInBody),
        ),
        (
            "200 without choices",
            Some(Reply::no_choices()),
            Fallback(Outcome::ErrorInBody),
        ),
        (
            "200 with finish_reason error",
            Some(Reply::finish_reason_error()),
            Fallback(Outcome::ErrorInBody),
        ),
        (
            "200 that is not JSON",
            Some(Reply::raw(200, "text/html", "<html>maintenance</html>")),
            Fallback(Outcome::ErrorInBody),
        ),
        ("401 bad key", Some(Reply::status(401)), Stop(StatusCode::UNAUTHORIZED)),
        (
            "402 no credits",
            Some(Reply::status(402)),
            Stop(StatusCode::PAYMENT_REQUIRED),
        ),
        (
            "400 caller's bad parameter",
            Some(Reply::error(
                400,
                "invalid_request",
                "temperature: must be between 0 and 2",
            )),
            Stop(StatusCode::BAD_REQUEST),
        ),
        (
            "403 that is not moderation",
            Some(Reply::error(403, "forbidden", "This key is disabled")),
            Stop(StatusCode::FORBIDDEN),
        ),
        (
            "422 unprocessable",
            Some(Reply::error(422, "invalid_request", "messages: expected an array")),
            Stop(StatusCode::UNPROCESSABLE_ENTITY),
        ),
    ];
    for (row, primary, expect) in rows {
        check(row, primary, expect).await;
    }
}

#[tokio::test]
async fn the_report_keeps_the_upstream_reason_and_the_url_is_the_upstreams() {
    let upstream = MockUpstream::new()
        .model(
            PRIMARY,
            Reply::error(502, "provider_unavailable", "Provider returned error")
                .provider("Anthropic")
                .raw_message("overloaded_error: Overloaded"),
        )
        .model(SECONDARY, Reply::ok().provider("OpenAI"));
    let server = MockServer::start(upstream).await.unwrap();
    let resp = send(
        &client(FallbackMiddleware::new(two_routes())),
        &server.chat_url(),
        chat("x/y"),
    )
    .await;
    assert_eq!(resp.url().as_str(), server.chat_url());
    assert!(resp.remote_addr().is_some(), "reqwest's connection info is kept");
    let report = report(&resp);
    let e = report.attempts()[0].upstream_error().unwrap();
    assert_eq!(e.provider_name(), Some("Anthropic"));
    assert_eq!(e.raw(), Some("overloaded_error: Overloaded"));
    assert_eq!(report.provider(), Some("OpenAI"));
    assert_eq!(report.requested_model(), Some("x/y"));
}

// ===== exhaustion =====

#[tokio::test]
async fn exhaustion_reads_the_same_as_the_tower_layer() {
    let upstream = MockUpstream::new()
        .model(
            "anthropic/claude-3.5-sonnet",
            Reply::error(502, "provider_unavailable", "Provider returned error")
                .provider("Anthropic")
                .raw_message("upstream connect error"),
        )
        .model("openai/gpt-4o", Reply::status(429).retry_after(7))
        .model("openai/gpt-4o-mini", Reply::transport_error());
    let server = MockServer::start(upstream).await.unwrap();
    let chain = Chain::new([
        Route::new("anthropic/claude-3.5-sonnet").label("primary"),
        Route::new("openai/gpt-4o").label("secondary"),
        Route::new("openai/gpt-4o-mini").label("budget"),
    ]);
    let url = format!("{}?trace=1", server.chat_url());
    let resp = send(&client(FallbackMiddleware::new(chain)), &url, chat("x")).await;

    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        resp.url().as_str(),
        url,
        "an answer the middleware wrote has the request's URL"
    );
    let headers = resp.headers().clone();
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-fallback-attempts"], "3");
    assert!(headers.get("x-fallback-model").is_none());
    assert_eq!(headers["retry-after"], "7", "Retry-After is read and passed on");
    let report = report(&resp);
    assert_eq!(report.resolution(), Resolution::Exhausted);
    assert_eq!(report.attempts()[1].retry_after(), Some(secs(7)));
    assert_eq!(
        report.attempts().iter().map(|a| a.outcome()).collect::<Vec<_>>(),
        [Outcome::HttpError, Outcome::HttpError, Outcome::Transport]
    );

    let json = json(resp).await;
    let error = &json["error"];
    assert_eq!(error["type"], "upstream_error");
    assert_eq!(error["code"], "fallback_exhausted");
    let message = error["message"].as_str().unwrap();
    for needle in [
        "all 3 fallback route(s) failed",
        "anthropic/claude-3.5-sonnet (primary): HTTP 502 provider_unavailable from Anthropic",
        "upstream connect error",
        "openai/gpt-4o (secondary): HTTP 429 rate_limit_exceeded",
        "openai/gpt-4o-mini (budget): transport error",
    ] {
        assert!(message.contains(needle), "message should contain {needle:?}: {message}");
    }
}

// ===== timeouts =====

#[tokio::test(start_paused = true)]
async fn a_hung_primary_times_out_and_the_next_route_serves() {
    let upstream = MockUpstream::new()
        .model(PRIMARY, Reply::hang())
        .model(SECONDARY, Reply::ok());
    let server = MockServer::start(upstream).await.unwrap();
    let chain = Chain::new([
        Route::new(PRIMARY).timeout(secs(5)),
        Route::new(SECONDARY).timeout(secs(5)),
    ]);
    let started = tokio::time::Instant::now();
    let resp = send(&client(FallbackMiddleware::new(chain)), &server.chat_url(), chat("a")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let report = report(&resp);
    assert_eq!(report.served_model(), SECONDARY);
    assert_eq!(report.attempts()[0].outcome(), Outcome::Timeout);
    assert_eq!(report.attempts()[0].elapsed(), secs(5));
    assert_eq!(started.elapsed(), secs(5));
}

#[tokio::test(start_paused = true)]
async fn the_deadline_bounds_a_cascade_of_timeouts() {
    let upstream = MockUpstream::new()
        .model("a/a", Reply::hang())
        .model("b/b", Reply::hang())
        .model("c/c", Reply::ok());
    let server = MockServer::start(upstream).await.unwrap();
    let chain = Chain::new([
        Route::new("a/a").timeout(secs(10)),
        Route::new("b/b").timeout(secs(10)),
        Route::new("c/c").timeout(secs(10)),
    ])
    .deadline(secs(15));
    let started = tokio::time::Instant::now();
    let resp = send(&client(FallbackMiddleware::new(chain)), &server.chat_url(), chat("a")).await;
    assert_eq!(started.elapsed(), secs(15));
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    let report = report(&resp);
    assert_eq!(report.resolution(), Resolution::DeadlineExceeded);
    let outcomes: Vec<_> = report.attempts().iter().map(|a| (a.outcome(), a.elapsed())).collect();
    assert_eq!(
        outcomes,
        [(Outcome::Timeout, secs(10)), (Outcome::DeadlineExceeded, secs(5))]
    );
    assert_eq!(server.upstream().request_count("c/c"), 0);
    assert_eq!(json(resp).await["error"]["code"], "fallback_deadline_exceeded");
}

#[tokio::test(start_paused = true)]
async fn a_per_request_reqwest_timeout_applies_to_each_attempt() {
    // No route timeout: the caller's `.timeout()` survives the conversion and
    // bounds each attempt, which fails as a transport error.
    let upstream = MockUpstream::new()
        .model(PRIMARY, Reply::hang())
        .model(SECONDARY, Reply::ok().latency(secs(1)));
    let server = MockServer::start(upstream).await.unwrap();
    let resp = client(FallbackMiddleware::new(two_routes()))
        .post(server.chat_url())
        .timeout(secs(3))
        .body(chat("a"))
        .send()
        .await
        .unwrap();
    let report = report(&resp);
    assert_eq!(report.served_model(), SECONDARY);
    let first = &report.attempts()[0];
    assert_eq!(first.outcome(), Outcome::Transport);
    assert_eq!(first.elapsed(), secs(3));
    assert!(first.transport_error().unwrap().contains("timed out"), "{first}");
}

// ===== streaming =====

fn stream_chat() -> String {
    serde_json::json!({"model": "caller/model", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
        .to_string()
}

fn stream_routes() -> Chain {
    Chain::new([
        Route::new(PRIMARY).first_token_timeout(secs(10)).idle_timeout(secs(5)),
        Route::new(SECONDARY)
            .first_token_timeout(secs(10))
            .idle_timeout(secs(5)),
    ])
}

/// Reads a streamed answer chunk by chunk; returns the report at commit,
/// the text, whether `[DONE]` came, and the final report.
async fn read_stream(mut resp: reqwest::Response) -> (FallbackReport, String, Vec<Value>, FallbackReport) {
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let at_commit = report(&resp);
    let handle = resp
        .extensions()
        .get::<StreamReport>()
        .cloned()
        .expect("a stream has a StreamReport");
    let mut raw = Vec::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        raw.extend_from_slice(&chunk);
    }
    let data: Vec<Value> = parse_sse(&raw)
        .into_iter()
        .filter_map(|e| match e {
            SseEvent::Data(d) if d == "[DONE]" => Some(Value::String(d)),
            SseEvent::Data(d) => Some(serde_json::from_str(&d).unwrap()),
            _ => None,
        })
        .collect();
    let text = data
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    (at_commit, text, data, handle.finished().await)
}

#[tokio::test(start_paused = true)]
async fn an_error_chunk_before_the_first_token_falls_back() {
    let upstream = MockUpstream::new()
        .model(
            PRIMARY,
            Reply::stream().keep_alive(2, secs(1)).error_before_first_token(),
        )
        .model(SECONDARY, Reply::stream().tokens(["Hel", "lo"]));
    let server = MockServer::start(upstream).await.unwrap();
    let resp = send(
        &client(FallbackMiddleware::new(stream_routes())),
        &server.chat_url(),
        stream_chat(),
    )
    .await;
    assert_eq!(resp.headers()["x-fallback-model"], SECONDARY);
    let (at_commit, text, data, last) = read_stream(resp).await;
    assert_eq!(at_commit.served_model(), SECONDARY);
    assert_eq!(at_commit.attempts()[0].outcome(), Outcome::ErrorInBody);
    assert_eq!(
        at_commit.attempts()[0].upstream_error().and_then(|e| e.code()),
        Some("server_error")
    );
    assert_eq!(text, "Hello", "nothing of the failed attempt leaks");
    assert_eq!(data.last().unwrap(), "[DONE]");
    assert_eq!(last.resolution(), Resolution::Served);
    assert!(last.usage().is_some_and(|u| u.total_tokens > 0));
}

#[tokio::test(start_paused = true)]
async fn a_cut_or_a_silent_primary_before_the_first_token_falls_back() {
    for (row, primary, outcome) in [
        (
            "cut",
            Reply::stream().keep_alive(1, secs(1)).cut_after(0),
            Outcome::Transport,
        ),
        (
            "keep-alives only",
            Reply::stream().keep_alive(20, secs(1)),
            Outcome::Timeout,
        ),
    ] {
        let upstream = MockUpstream::new()
            .model(PRIMARY, primary)
            .model(SECONDARY, Reply::stream());
        let server = MockServer::start(upstream).await.unwrap();
        let resp = send(
            &client(FallbackMiddleware::new(stream_routes())),
            &server.chat_url(),
            stream_chat(),
        )
        .await;
        let (at_commit, text, _, _) = read_stream(resp).await;
        assert_eq!(at_commit.attempts()[0].outcome(), outcome, "{row}");
        assert!(text.starts_with("Hello from secondary/model"), "{row}: {text}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_break_after_the_first_token_is_an_error_chunk_not_a_replay() {
    let upstream = MockUpstream::new()
        .model(PRIMARY, Reply::stream().tokens(["a", "b", "c"]).cut_after(2))
        .model(SECONDARY, Reply::stream());
    let server = MockServer::start(upstream).await.unwrap();
    let resp = send(
        &client(FallbackMiddleware::new(stream_routes())),
        &server.chat_url(),
        stream_chat(),
    )
    .await;
    let (_, text, data, last) = read_stream(resp).await;
    assert_eq!(text, "ab");
    let tail = data.last().unwrap();
    assert_eq!(tail["choices"][0]["finish_reason"], "error");
    assert_eq!(tail["error"]["code"], "stream_broken");
    assert_eq!(server.upstream().request_count(SECONDARY), 0);
    assert_eq!(last.resolution(), Resolution::StreamBroken);
}

// ===== request bodies =====

#[tokio::test]
async fn a_streaming_request_body_is_refused_clearly() {
    let server = MockServer::start(MockUpstream::new().model(PRIMARY, Reply::ok()))
        .await
        .unwrap();
    let body = reqwest::Body::wrap(Chunked::new([Bytes::from(chat("caller/model"))]));
    let err = client(FallbackMiddleware::new(two_routes()))
        .post(server.chat_url())
        .body(body)
        .send()
        .await
        .expect_err("a streaming body cannot be replayed");
    assert!(err.is_middleware());
    let reqwest_middleware::Error::Middleware(inner) = &err else {
        unreachable!()
    };
    assert!(inner.downcast_ref::<StreamingBodyError>().is_some());
    let message = err.to_string();
    assert!(message.contains("cannot replay a streaming request body"), "{message}");
    assert!(message.contains(".json(&body)"), "says what to do: {message}");
    assert!(server.upstream().requests().is_empty(), "not even one silent attempt");
}

#[tokio::test]
async fn bad_input_is_refused_before_the_upstream() {
    let server = MockServer::start(MockUpstream::new().model(PRIMARY, Reply::ok()))
        .await
        .unwrap();
    let client = client(
        FallbackMiddleware::builder(two_routes())
            .max_body_bytes(64)
            .middleware(),
    );
    let resp = send(&client, &server.chat_url(), r#"{"messages":[]}"#).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(report(&resp).resolution(), Resolution::Rejected);
    assert_eq!(json(resp).await["error"]["code"], "missing_model");
    let resp = send(&client, &server.chat_url(), chat("caller/model")).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json(resp).await["error"]["code"], "request_too_large");
    assert!(server.upstream().requests().is_empty());
}

fn replace_once(haystack: &str, from: &str, to: &str) -> String {
    assert_eq!(haystack.matches(from).count(), 1, "test body must contain {from} once");
    haystack.replacen(from, to, 1)
}

#[tokio::test]
async fn the_upstream_gets_the_callers_bytes_with_only_model_changed() {
    let cases = [
        r#"{"model":"caller/m","messages":[{"role":"user","content":"hi"}]}"#,
        r#"{"messages":[{"role":"user","content":"hi"}],"model":"caller/m"}"#,
        "{\n  \"model\" :\t\"caller/m\" ,\r\n  \"messages\": [ ]\n}\n",
        r#"{"a\"b":"x\\\"","model":"caller/m","messages":[{"content":"\"model\":\"evil\" ünï 🚀 \ud83d\ude80","model":"nested"}],"meta":{"model":{"model":"deep"}}}"#,
    ];
    for reusable in [false, true] {
        let upstream = MockUpstream::new()
            .model("primary/é\"quoted\"", Reply::status(503))
            .model("caller/m", Reply::ok());
        let server = MockServer::start(upstream).await.unwrap();
        let chain = Chain::new([Route::new("primary/é\"quoted\""), Route::new("caller/m")]);
        let client = client(FallbackMiddleware::new(chain).reusable_bodies(reusable));
        for original in cases {
            server.upstream().clear_requests();
            let resp = send(&client, &server.chat_url(), original.to_owned()).await;
            assert_eq!(resp.status(), StatusCode::OK);
            let reqs = server.upstream().requests();
            assert_eq!(reqs.len(), 2);
            for r in &reqs {
                let declared: usize = r.headers["content-length"].to_str().unwrap().parse().unwrap();
                assert_eq!(declared, r.body.len(), "Content-Length matches what was sent");
                assert!(
                    r.headers.get("transfer-encoding").is_none(),
                    "sent with a length, not chunked"
                );
                assert_eq!(r.headers["authorization"], "Bearer sk-test-secret");
            }
            assert_eq!(
                String::from_utf8(reqs[0].body.to_vec()).unwrap(),
                replace_once(original, r#""caller/m""#, r#""primary/é\"quoted\"""#),
                "reusable_bodies({reusable})"
            );
            assert_eq!(
                &reqs[1].body[..],
                original.as_bytes(),
                "the caller's own model: untouched"
            );
        }
    }
}

// ===== extensions =====

/// Placed after the fallback: records the `Attempt` of every call and
/// leaves a mark in the extensions.
#[derive(Clone, Default)]
struct Inner {
    seen: Arc<Mutex<Vec<(usize, String, bool)>>>,
}

#[derive(Clone, Debug, PartialEq)]
struct Mark(usize);

#[derive(Clone, Debug, PartialEq)]
struct FromCaller;

#[async_trait::async_trait]
impl Middleware for Inner {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let attempt = extensions.get::<Attempt>().expect("each attempt names its hop").clone();
        let from_caller = extensions.get::<FromCaller>().is_some();
        self.seen
            .lock()
            .unwrap()
            .push((attempt.index(), attempt.model().to_owned(), from_caller));
        assert!(
            extensions.get::<Mark>().is_none(),
            "each attempt starts from the caller's extensions"
        );
        extensions.insert(Mark(attempt.index()));
        next.run(req, extensions).await
    }
}

/// The `Mark` found after the call, and whether an `Attempt` came back too.
type CameBack = (Option<Mark>, bool);

/// Placed before the fallback: puts `FromCaller` in and reads what came back.
#[derive(Clone, Default)]
struct Outer {
    back: Arc<Mutex<Option<CameBack>>>,
}

#[async_trait::async_trait]
impl Middleware for Outer {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        extensions.insert(FromCaller);
        let resp = next.run(req, extensions).await;
        *self.back.lock().unwrap() = Some((extensions.get::<Mark>().cloned(), extensions.get::<Attempt>().is_some()));
        resp
    }
}

#[tokio::test]
async fn middleware_after_it_run_once_per_attempt_and_see_the_attempt() {
    let upstream = MockUpstream::new()
        .model(PRIMARY, Reply::status(503))
        .model(SECONDARY, Reply::ok());
    let server = MockServer::start(upstream).await.unwrap();
    let (inner, outer) = (Inner::default(), Outer::default());
    let client = ClientBuilder::new(reqwest_client())
        .with(outer.clone())
        .with(FallbackMiddleware::new(two_routes()))
        .with(inner.clone())
        .build();
    let resp = send(&client, &server.chat_url(), chat("caller/model")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        *inner.seen.lock().unwrap(),
        [(0, PRIMARY.to_owned(), true), (1, SECONDARY.to_owned(), true)]
    );
    assert_eq!(
        *outer.back.lock().unwrap(),
        Some((Some(Mark(1)), false)),
        "the serving attempt's extensions come back, without its Attempt"
    );
}

// ===== what the middleware does not replay =====

/// A client with the middleware is used for the rest of the API too: a
/// `GET`, a `POST` to a path that names no API the engine knows, and the
/// Assistants API's thread messages reach the upstream once, as sent, and
/// their answers come back as the upstream gave them (no report).
#[tokio::test]
async fn requests_that_are_not_api_calls_pass_through_untouched() {
    let upstream = MockUpstream::new()
        .model(PRIMARY, Reply::status(503))
        .model(SECONDARY, Reply::ok());
    let server = MockServer::start(upstream).await.unwrap();
    let client = client(FallbackMiddleware::new(two_routes()));
    let base = server.base_url();
    let body = r#"{"model":"caller/model","messages":[{"role":"user","content":"hi"}]}"#;

    let get = client.get(format!("{base}/models")).send().await.unwrap();
    let count = client
        .post(format!("{}/v1/messages/count_tokens", server.url()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let thread = client
        .post(format!("{base}/threads/thread_1/messages"))
        .body(body)
        .send()
        .await
        .unwrap();
    for resp in [&get, &count, &thread] {
        // The mock serves none of these paths: its own 404, not a 400 of
        // the layer's nor a chain's answer.
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{}", resp.url());
        assert!(resp.extensions().get::<FallbackReport>().is_none());
        assert!(resp.headers().get("x-fallback-model").is_none());
    }
    let seen = server.upstream().requests();
    let paths: Vec<(&str, &str)> = seen.iter().map(|r| (r.method.as_str(), r.uri.path())).collect();
    assert_eq!(
        paths,
        [
            ("GET", "/api/v1/models"),
            ("POST", "/v1/messages/count_tokens"),
            ("POST", "/api/v1/threads/thread_1/messages"),
        ]
    );
    // Sent as the caller wrote it: no model of the chain, no `Attempt`.
    for r in &seen[1..] {
        assert_eq!(r.body, body.as_bytes());
    }

    // An API call through the same client still runs the chain.
    let resp = send(&client, &server.chat_url(), chat("caller/model")).await;
    assert_eq!(report(&resp).served_model(), SECONDARY);
    assert_eq!(server.upstream().request_count(PRIMARY), 1);

    // An API behind a path of its own, marked by the caller: replayed.
    let resp = client
        .post(format!("{}/my-llm-proxy", server.url()))
        .with_extension(llm_fallback::Dialect::Chat)
        .body(chat("caller/model"))
        .send()
        .await
        .unwrap();
    let marked = report(&resp);
    assert_eq!(marked.attempts()[0].model(), PRIMARY, "{marked}");
    let last = server.upstream().requests().pop().unwrap();
    assert_eq!(last.uri.path(), "/my-llm-proxy");
    assert_eq!(last.model.as_deref(), Some(PRIMARY), "the chain's model was sent");
}

/// A caller's URL may carry a credential (user info, an API-management
/// key in the query). reqwest prints the URL in its errors; the layer
/// writes transport errors into the report, its logs and the exhaustion
/// answer, so they must come without it.
#[tokio::test]
async fn a_credential_in_the_callers_url_reaches_no_report_log_or_answer() {
    let (out, guard) = common::Captured::install(tracing::Level::TRACE);
    // A port nothing listens on: every attempt is a transport error.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://user:sk-info-secret@{closed}/api/v1/chat/completions?subscription-key=sk-query-secret");
    let resp = send(
        &client(FallbackMiddleware::new(two_routes())),
        &url,
        chat("caller/model"),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let report = report(&resp);
    assert!(
        report.attempts().iter().all(|a| a.outcome() == Outcome::Transport),
        "{report}"
    );
    let body = resp.text().await.unwrap();
    drop(guard);
    // Still says where it failed.
    assert!(
        body.contains(&format!("http://{closed}/api/v1/chat/completions")),
        "{body}"
    );
    for text in [body, report.to_string(), format!("{report:?}"), out.text()] {
        assert!(!text.contains("sk-info-secret"), "{text}");
        assert!(!text.contains("sk-query-secret"), "{text}");
    }
}
