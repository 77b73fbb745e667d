//! Every API shape beside chat completions — OpenAI Responses, Anthropic
//! Messages, embeddings, legacy completions — with chat's guarantees:
//! fall back on upstream faults (statuses and errors inside a 2xx), stop on
//! the caller's faults, one exhaustion answer in the dialect's shape, a
//! stream that commits at its first output and never ends silently or
//! spliced, capability skips, endpoint paths, stateful requests kept on
//! their upstream. Through the mock upstream, tower-level, with paused time.

mod common;

use bytes::Bytes;
use common::*;
use http::StatusCode;
use llm_fallback::native::Endpoint;
use llm_fallback::{
    Capabilities, Chain, Dialect, FallbackLayer, FallbackReport, Outcome, Resolution, Route, SkipReason, StreamReport,
};
use llm_fallback_mock::{parse_sse_named, Dialect as MockDialect, MockUpstream, NamedEvent, Reply};
use serde_json::{json, Value};
use std::time::Duration;
use tower::{Layer, ServiceExt};

const A: &str = "primary/model";
const B: &str = "secondary/model";

/// The four new dialects, with the mock's name for each.
const DIALECTS: [(Dialect, MockDialect); 4] = [
    (Dialect::Responses, MockDialect::Responses),
    (Dialect::Messages, MockDialect::Messages),
    (Dialect::Embeddings, MockDialect::Embeddings),
    (Dialect::Completions, MockDialect::Completions),
];

/// The three that stream.
const STREAMING: [(Dialect, MockDialect); 3] = [
    (Dialect::Responses, MockDialect::Responses),
    (Dialect::Messages, MockDialect::Messages),
    (Dialect::Completions, MockDialect::Completions),
];

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn url(d: MockDialect) -> String {
    format!("http://openrouter.test{}", d.path())
}

/// A typical request of `d`.
fn body(d: MockDialect, stream: bool) -> Value {
    let mut b = match d {
        MockDialect::Responses => json!({"model": "caller/model", "input": "hi", "instructions": "be terse"}),
        MockDialect::Messages => {
            json!({"model": "caller/model", "max_tokens": 64, "system": "terse", "messages": [{"role": "user", "content": "hi"}]})
        }
        MockDialect::Embeddings => json!({"model": "caller/model", "input": ["a cat", "a kitten"]}),
        MockDialect::Completions => json!({"model": "caller/model", "prompt": "Say hi", "max_tokens": 16}),
        _ => json!({"model": "caller/model", "messages": []}),
    };
    if stream {
        b["stream"] = Value::Bool(true);
    }
    b
}

fn routes() -> [Route; 2] {
    [
        Route::new(A).first_token_timeout(secs(10)).idle_timeout(secs(5)),
        Route::new(B).first_token_timeout(secs(10)).idle_timeout(secs(5)),
    ]
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    bytes: Bytes,
    report: FallbackReport,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.bytes)))
    }

    fn events(&self) -> Vec<NamedEvent> {
        parse_sse_named(&self.bytes)
            .into_iter()
            .filter(|e| !e.is_comment())
            .collect()
    }
}

async fn send_to(
    upstream: &MockUpstream,
    routes: impl IntoIterator<Item = Route>,
    req: http::Request<http_body_util::Full<Bytes>>,
) -> Answer {
    let svc = FallbackLayer::new(Chain::new(routes)).layer(upstream.clone());
    let resp = svc.oneshot(req).await.unwrap();
    let handle = resp.extensions().get::<StreamReport>().cloned();
    let (parts, bytes) = body_bytes(resp).await;
    let report = match handle {
        Some(h) => h.finished().await,
        None => report(&parts).clone(),
    };
    Answer {
        status: parts.status,
        headers: parts.headers,
        bytes,
        report,
    }
}

async fn send(upstream: &MockUpstream, d: MockDialect, stream: bool) -> Answer {
    send_to(upstream, routes(), post(&url(d), body(d, stream).to_string())).await
}

/// A good buffered answer of `d`.
fn assert_good(d: MockDialect, v: &Value) {
    match d {
        MockDialect::Responses => {
            assert_eq!(v["object"], "response", "{v}");
            assert_eq!(v["status"], "completed", "{v}");
        }
        MockDialect::Messages => assert_eq!(v["type"], "message", "{v}"),
        MockDialect::Embeddings => assert_eq!(v["object"], "list", "{v}"),
        MockDialect::Completions => assert_eq!(v["object"], "text_completion", "{v}"),
        _ => unreachable!(),
    }
}

/// An error body in `d`'s shape; returns (type or code, message).
fn error_of(d: MockDialect, v: &Value) -> (String, String) {
    let text = |v: &Value| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
    match d {
        MockDialect::Messages => {
            assert_eq!(v["type"], "error", "{v}");
            assert!(v["error"]["type"].is_string(), "{v}");
            (text(&v["error"]["type"]), text(&v["error"]["message"]))
        }
        _ => {
            assert!(v["error"].is_object(), "{v}");
            assert!(v.get("type").is_none(), "OpenAI's shape has no top-level type: {v}");
            (text(&v["error"]["code"]), text(&v["error"]["message"]))
        }
    }
}

// ===== buffered answers =====

fn faults() -> Vec<(&'static str, Reply)> {
    vec![
        ("500", Reply::status(500)),
        ("503", Reply::status(503).retry_after(1)),
        ("429", Reply::status(429).retry_after(1)),
        ("529", Reply::status(529)),
        ("ok_with_error", Reply::ok_with_error()),
        ("finish_reason_error", Reply::finish_reason_error()),
        ("no_choices", Reply::no_choices()),
    ]
}

#[tokio::test(start_paused = true)]
async fn every_dialect_falls_back_on_upstream_faults_and_errors_inside_a_2xx() {
    for (dialect, d) in DIALECTS {
        for (name, fault) in faults() {
            let upstream = MockUpstream::new().model(A, fault).model(B, Reply::ok());
            let a = send(&upstream, d, false).await;
            let case = format!("{dialect} {name}");
            assert_eq!(
                a.status,
                StatusCode::OK,
                "{case}: {}",
                String::from_utf8_lossy(&a.bytes)
            );
            assert_good(d, &a.json());
            assert_eq!(a.report.served_model(), B, "{case}");
            assert_eq!(a.headers["x-fallback-model"], B, "{case}");
            let first = &a.report.attempts()[0];
            assert!(first.outcome().is_failure(), "{case}: {:?}", first.outcome());
            assert_eq!(upstream.request_count(B), 1, "{case}");
            let sent = upstream.requests();
            assert_eq!(sent[0].dialect, Some(d), "{case}: sent to the same dialect's path");
            assert_eq!(sent[1].model.as_deref(), Some(B), "{case}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_responses_length_stop_is_served() {
    let upstream = MockUpstream::new()
        .model(A, Reply::ok().length_stop())
        .model(B, Reply::ok());
    let a = send(&upstream, MockDialect::Responses, false).await;
    assert_eq!(a.json()["status"], "incomplete");
    assert_eq!(a.report.served_model(), A);
    assert_eq!(upstream.request_count(B), 0);
    let u = a.report.usage().expect("usage read from input/output tokens");
    assert!(u.total_tokens > 0 && u.total_tokens == u.prompt_tokens + u.completion_tokens);
}

#[tokio::test(start_paused = true)]
async fn caller_faults_stop_and_come_back_unchanged() {
    for (dialect, d) in DIALECTS {
        for status in [400, 401] {
            let upstream = MockUpstream::new()
                .model(A, Reply::status(status))
                .model(B, Reply::ok());
            let a = send(&upstream, d, false).await;
            assert_eq!(a.status.as_u16(), status, "{dialect}");
            assert_eq!(upstream.request_count(B), 0, "{dialect} {status}: stopped");
            assert_eq!(a.report.attempts()[0].outcome(), Outcome::Stopped, "{dialect}");
            // The same bytes the upstream sends the caller directly.
            let direct = MockUpstream::new().model(A, Reply::status(status));
            let mut b = body(d, false);
            b["model"] = Value::from(A);
            let resp = direct.oneshot(post(&url(d), b.to_string())).await.unwrap();
            let (_, bytes) = body_bytes(resp).await;
            assert_eq!(a.bytes, bytes, "{dialect} {status}");
            let (kind, _) = error_of(d, &a.json());
            if d == MockDialect::Messages {
                let expected = if status == 400 {
                    "invalid_request_error"
                } else {
                    "authentication_error"
                };
                assert_eq!(kind, expected);
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn exhaustion_is_answered_in_the_dialects_shape_naming_every_attempt() {
    for (dialect, d) in DIALECTS {
        let upstream = MockUpstream::new()
            .model(A, Reply::status(503))
            .model(B, Reply::status(529));
        let a = send(&upstream, d, false).await;
        assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{dialect}");
        let v = a.json();
        let (kind, message) = error_of(d, &v);
        assert!(message.contains(A) && message.contains(B), "{dialect}: {message}");
        let attempts = &v["error"]["metadata"]["attempts"];
        assert_eq!(attempts.as_array().map(Vec::len), Some(2), "{dialect}: {v}");
        assert_eq!(attempts[1]["status"], 529, "{dialect}: {v}");
        match d {
            MockDialect::Messages => assert_eq!(kind, "api_error"),
            _ => assert_eq!(kind, "fallback_exhausted"),
        }
        assert_eq!(a.report.resolution(), Resolution::Exhausted);
    }
}

#[tokio::test(start_paused = true)]
async fn the_layers_own_refusals_are_in_the_dialects_shape() {
    for (dialect, d) in DIALECTS {
        let upstream = MockUpstream::new().model(A, Reply::ok());
        let a = send_to(&upstream, routes(), post(&url(d), "{\"model\": 42}")).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{dialect}");
        let (kind, _) = error_of(d, &a.json());
        match d {
            MockDialect::Messages => assert_eq!(kind, "invalid_request_error"),
            _ => assert_eq!(kind, "invalid_model"),
        }
        assert!(upstream.requests().is_empty());
    }
}

// ===== streams =====

/// The text a stream of `d` carried.
fn streamed_text(d: MockDialect, events: &[NamedEvent]) -> String {
    events
        .iter()
        .filter_map(|e| {
            let v = e.json()?;
            match d {
                MockDialect::Responses if e.name() == Some("response.output_text.delta") => {
                    v["delta"].as_str().map(str::to_owned)
                }
                MockDialect::Messages if e.name() == Some("content_block_delta") => {
                    v["delta"]["text"].as_str().map(str::to_owned)
                }
                MockDialect::Completions => v["choices"][0]["text"].as_str().map(str::to_owned),
                _ => None,
            }
        })
        .collect()
}

/// A stream of `d` that ended properly (and only once).
fn assert_whole(d: MockDialect, events: &[NamedEvent]) {
    let last = events.last().expect("events");
    match d {
        MockDialect::Responses => assert_eq!(last.name(), Some("response.completed")),
        MockDialect::Messages => assert_eq!(last.name(), Some("message_stop")),
        MockDialect::Completions => assert!(last.event.is_done()),
        _ => unreachable!(),
    }
    assert_eq!(terminal_errors(d, events), 0);
}

/// Error events of `d`'s shape in the stream.
fn terminal_errors(d: MockDialect, events: &[NamedEvent]) -> usize {
    events
        .iter()
        .filter(|e| match d {
            MockDialect::Responses => matches!(e.name(), Some("response.failed" | "error")),
            MockDialect::Messages => e.name() == Some("error"),
            _ => e.json().is_some_and(|v| v["choices"][0]["finish_reason"] == "error"),
        })
        .count()
}

/// The stream ends with exactly one error event of ours, with `code`.
fn assert_one_terminal_error(d: MockDialect, events: &[NamedEvent], code: &str) {
    assert_eq!(terminal_errors(d, events), 1, "{d:?}: exactly one error event");
    let last = events.last().expect("events");
    let v = last.json().expect("JSON");
    match d {
        MockDialect::Responses => {
            assert_eq!(last.name(), Some("response.failed"));
            assert_eq!(v["type"], "response.failed");
            assert_eq!(v["response"]["status"], "failed");
            assert_eq!(v["response"]["object"], "response");
            assert_eq!(v["response"]["error"]["code"], code);
            assert!(v["response"]["id"].as_str().is_some_and(|id| id.starts_with("resp_")));
            // It continues the stream's numbering.
            let before = events[events.len() - 2].json().unwrap()["sequence_number"]
                .as_u64()
                .unwrap();
            assert_eq!(v["sequence_number"].as_u64(), Some(before + 1));
        }
        MockDialect::Messages => {
            assert_eq!(last.name(), Some("error"));
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], "api_error");
            assert!(v["error"]["message"].as_str().unwrap().starts_with(code), "{v}");
        }
        _ => {
            assert_eq!(v["object"], "text_completion");
            assert_eq!(v["choices"][0]["finish_reason"], "error");
            assert_eq!(v["error"]["code"], code);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn keep_alives_and_preamble_events_are_not_a_commit() {
    for (dialect, d) in STREAMING {
        // The primary sends keep-alives, its preamble (and pings), then
        // fails: had any of it committed, the caller would see the failure.
        let primary = Reply::stream()
            .keep_alive(2, secs(1))
            .pings(2, secs(1))
            .tokens(["x"])
            .error_before_first_token();
        let upstream = MockUpstream::new()
            .model(A, primary)
            .model(B, Reply::stream().tokens(["Hel", "lo"]));
        let a = send(&upstream, d, true).await;
        assert_eq!(a.status, StatusCode::OK, "{dialect}");
        let events = a.events();
        assert_eq!(streamed_text(d, &events), "Hello", "{dialect}");
        assert_whole(d, &events);
        assert_eq!(a.report.served_model(), B, "{dialect}");
        assert_eq!(a.report.attempts()[0].outcome(), Outcome::ErrorInBody, "{dialect}");
        assert!(
            !String::from_utf8_lossy(&a.bytes).contains(A),
            "{dialect}: nothing of the primary"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_error_event_before_the_first_content_falls_back_invisibly() {
    for (dialect, d) in STREAMING {
        for primary in [Reply::stream().error_event_after(0), Reply::stream().error_after(0)] {
            let upstream = MockUpstream::new()
                .model(A, primary.tokens(["x", "y"]))
                .model(B, Reply::stream().tokens(["ok"]));
            let a = send(&upstream, d, true).await;
            let events = a.events();
            assert_eq!(streamed_text(d, &events), "ok", "{dialect}");
            assert_whole(d, &events);
            assert_eq!(a.report.served_model(), B);
            assert!(!String::from_utf8_lossy(&a.bytes).contains(A), "{dialect}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_broken_committed_stream_ends_with_one_terminal_error_event() {
    for (dialect, d) in STREAMING {
        let upstream = MockUpstream::new()
            .model(A, Reply::stream().tokens(["a", "b", "c"]).cut_after(2))
            .model(B, Reply::stream());
        let a = send(&upstream, d, true).await;
        assert_eq!(a.status, StatusCode::OK, "{dialect}");
        let events = a.events();
        assert_eq!(
            streamed_text(d, &events),
            "ab",
            "{dialect}: no second answer spliced in"
        );
        assert_one_terminal_error(d, &events, "stream_broken");
        assert_eq!(upstream.request_count(B), 0, "{dialect}");
        assert_eq!(a.report.resolution(), Resolution::StreamBroken, "{dialect}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_stalled_committed_stream_ends_with_one_terminal_error_event() {
    for (dialect, d) in STREAMING {
        let upstream = MockUpstream::new()
            .model(A, Reply::stream().tokens(["a", "b", "c"]).stall_after(1))
            .model(B, Reply::stream());
        let a = send(&upstream, d, true).await;
        let events = a.events();
        assert_eq!(streamed_text(d, &events), "a", "{dialect}");
        assert_one_terminal_error(d, &events, "stream_stalled");
        assert_eq!(a.report.resolution(), Resolution::StreamBroken, "{dialect}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_without_its_terminal_event_is_truncated() {
    for (dialect, d) in [
        (Dialect::Responses, MockDialect::Responses),
        (Dialect::Messages, MockDialect::Messages),
    ] {
        let upstream = MockUpstream::new()
            .model(A, Reply::stream().tokens(["a", "b"]).no_done())
            .model(B, Reply::stream());
        let a = send(&upstream, d, true).await;
        let events = a.events();
        assert_eq!(streamed_text(d, &events), "ab", "{dialect}");
        assert_one_terminal_error(d, &events, "stream_truncated");
    }
    // Completions: text, then the body ends without a finish or [DONE].
    let cut = "data: {\"object\":\"text_completion\",\"model\":\"primary/model\",\"choices\":[{\"index\":0,\"text\":\"a\",\"finish_reason\":null}]}\n\n";
    let upstream = MockUpstream::new()
        .model(A, Reply::raw(200, "text/event-stream", cut))
        .model(B, Reply::stream());
    let a = send(&upstream, MockDialect::Completions, true).await;
    let events = a.events();
    assert_eq!(streamed_text(MockDialect::Completions, &events), "a");
    assert_one_terminal_error(MockDialect::Completions, &events, "stream_truncated");
}

/// A whole stream of `d`, as its API sends it.
fn canned(d: MockDialect) -> &'static str {
    match d {
        MockDialect::Responses => concat!(
            ": keep-alive\n\n",
            "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"in_progress\",\"model\":\"primary/model\",\"output\":[],\"error\":null}}\n\n",
            "event: response.output_item.added\r\ndata: {\"type\":\"response.output_item.added\",\"sequence_number\":1,\"item\":{\"type\":\"message\",\"content\":[]}}\r\n\r\n",
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":2,\"delta\":\"Hi \\u00e9\"}\n\n",
            "event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":3,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"completed\",\"model\":\"primary/model\",\"output\":[],\"error\":null,\"usage\":{\"input_tokens\":2,\"output_tokens\":2,\"total_tokens\":4}}}\n\n",
        ),
        MockDialect::Messages => concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"model\":\"primary/model\",\"content\":[],\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: ping\ndata: {\"type\": \"ping\"}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":2}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        ),
        _ => concat!(
            "data: {\"object\":\"text_completion\",\"model\":\"primary/model\",\"choices\":[{\"index\":0,\"text\":\"Hi\",\"finish_reason\":null}]}\n\n",
            "data: {\"object\":\"text_completion\",\"model\":\"primary/model\",\"choices\":[{\"index\":0,\"text\":\"\",\"finish_reason\":\"stop\"}]}\n\n",
            "data: [DONE]\n\n",
        ),
    }
}

#[tokio::test(start_paused = true)]
async fn a_whole_stream_passes_through_byte_for_byte() {
    for (dialect, d) in STREAMING {
        let upstream = MockUpstream::new()
            .model(A, Reply::raw(200, "text/event-stream", canned(d)))
            .model(B, Reply::stream());
        let a = send(&upstream, d, true).await;
        assert_eq!(a.bytes, canned(d).as_bytes(), "{dialect}");
        assert_eq!(a.report.resolution(), Resolution::Served, "{dialect}");
        assert_eq!(a.report.attempts()[0].outcome(), Outcome::Served, "{dialect}");
        if d != MockDialect::Completions {
            let u = a.report.usage().expect("usage read from the stream's events");
            assert_eq!(u.total_tokens, u.prompt_tokens + u.completion_tokens, "{dialect}");
            assert!(u.total_tokens > 0, "{dialect}");
        }
    }
}

// ===== what a request needs =====

async fn first_skip(d: MockDialect, first: Route, request: Value) -> Option<SkipReason> {
    let upstream = MockUpstream::new().model(A, Reply::ok()).model(B, Reply::ok());
    let a = send_to(&upstream, [first, Route::new(B)], post(&url(d), request.to_string())).await;
    assert_eq!(a.status, StatusCode::OK, "{}", String::from_utf8_lossy(&a.bytes));
    a.report.attempts()[0].skip_reason().cloned()
}

#[tokio::test(start_paused = true)]
async fn capability_skips_read_each_dialects_own_members() {
    let plain = || Route::new(A).capabilities(Capabilities::NONE);
    let missing = |c| Some(SkipReason::Capability { missing: c });
    let r = MockDialect::Responses;
    let cases = [
        (
            r,
            json!({"model": "m", "input": "hi", "tools": [{"type": "function", "name": "f", "parameters": {}}]}),
            missing(Capabilities::TOOLS),
        ),
        (
            r,
            json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]}),
            missing(Capabilities::VISION),
        ),
        (
            r,
            json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]}),
            missing(Capabilities::FILES),
        ),
        (
            r,
            json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]}),
            missing(Capabilities::AUDIO),
        ),
        (
            r,
            json!({"model": "m", "input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": {}}}}),
            missing(Capabilities::STRUCTURED_OUTPUT),
        ),
        (
            r,
            json!({"model": "m", "input": "the word input_image in text", "text": {"format": {"type": "text"}}}),
            None,
        ),
        (
            r,
            json!({"model": "m", "input": "hi", "tools": [{"type": "function", "name": "f"}], "tool_choice": "none"}),
            None,
        ),
    ];
    for (d, request, expected) in cases {
        assert_eq!(first_skip(d, plain(), request.clone()).await, expected, "{request}");
    }
    let m = MockDialect::Messages;
    let msg =
        |content: Value| json!({"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": content}]});
    let cases = [
        (
            json!({"model": "m", "max_tokens": 64, "messages": [], "tools": [{"name": "f", "input_schema": {}}]}),
            missing(Capabilities::TOOLS),
        ),
        (
            json!({"model": "m", "max_tokens": 64, "messages": [], "tools": [{"name": "f"}], "tool_choice": {"type": "none"}}),
            None,
        ),
        (
            msg(
                json!([{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]),
            ),
            missing(Capabilities::VISION),
        ),
        (
            msg(json!([{"type": "document", "source": {"type": "url", "url": "https://x/y.pdf"}}])),
            missing(Capabilities::FILES),
        ),
        (msg(json!("an image and a document, in words")), None),
        (
            json!({"model": "m", "max_tokens": 2048, "messages": [], "thinking": {"type": "enabled", "budget_tokens": 1024}}),
            missing(Capabilities::THINKING),
        ),
        (
            json!({"model": "m", "max_tokens": 64, "messages": [], "thinking": {"type": "disabled"}}),
            None,
        ),
    ];
    for (request, expected) in cases {
        assert_eq!(first_skip(m, plain(), request.clone()).await, expected, "{request}");
    }
    // The output limit, by each dialect's own name for it.
    let capped = || Route::new(A).max_output_tokens(100);
    let over = Some(SkipReason::MaxOutput {
        requested: 500,
        limit: 100,
    });
    for (d, request) in [
        (r, json!({"model": "m", "input": "hi", "max_output_tokens": 500})),
        (m, json!({"model": "m", "messages": [], "max_tokens": 500})),
        (
            MockDialect::Completions,
            json!({"model": "m", "prompt": "hi", "max_tokens": 500}),
        ),
    ] {
        assert_eq!(first_skip(d, capped(), request.clone()).await, over, "{request}");
    }
    // Responses' `max_tokens` is not its limit's name.
    assert_eq!(
        first_skip(r, capped(), json!({"model": "m", "input": "x", "max_tokens": 500})).await,
        None
    );
    // The prompt's size counts `input`, `prompt` and `system`.
    let window = || Route::new(A).context_window(1_000);
    let long = "word ".repeat(2_000);
    for (d, request) in [
        (r, json!({"model": "m", "input": long})),
        (r, json!({"model": "m", "input": "hi", "instructions": long})),
        (
            m,
            json!({"model": "m", "max_tokens": 8, "system": long, "messages": []}),
        ),
        (MockDialect::Embeddings, json!({"model": "m", "input": [long]})),
        (MockDialect::Completions, json!({"model": "m", "prompt": long})),
    ] {
        let skip = first_skip(d, window(), request).await;
        assert!(
            matches!(skip, Some(SkipReason::ContextWindow { .. })),
            "{d:?}: {skip:?}"
        );
    }
    // Embeddings need nothing a route declares.
    let e = json!({"model": "m", "input": "tools vision"});
    assert_eq!(first_skip(MockDialect::Embeddings, plain(), e).await, None);
}

// ===== endpoints =====

fn endpoint() -> Endpoint {
    Endpoint::new("http://direct.test/v1").unwrap()
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_maps_each_dialect_to_its_own_path() {
    for (dialect, d) in DIALECTS {
        let upstream = MockUpstream::new().model(A, Reply::status(503)).model(B, Reply::ok());
        let chain = [Route::new(A), Route::new(B).endpoint(endpoint())];
        let a = send_to(&upstream, chain, post(&url(d), body(d, false).to_string())).await;
        assert_eq!(a.status, StatusCode::OK, "{dialect}");
        assert_good(d, &a.json());
        let sent = upstream.requests();
        assert_eq!(
            sent[1].uri.to_string(),
            format!("http://direct.test/v1/{}", d.endpoint())
        );
        assert_eq!(sent[1].dialect, Some(d));
    }
}

#[tokio::test(start_paused = true)]
async fn a_route_whose_endpoint_lacks_the_dialect_is_skipped() {
    let upstream = MockUpstream::new().model(A, Reply::status(503)).model(B, Reply::ok());
    let chat_only = endpoint().dialects([Dialect::Chat, Dialect::Responses]);
    let chain = [Route::new(A), Route::new(B).endpoint(chat_only)];
    let d = MockDialect::Messages;
    let a = send_to(&upstream, chain.clone(), post(&url(d), body(d, false).to_string())).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        a.report.attempts()[1].skip_reason(),
        Some(&SkipReason::Dialect {
            dialect: Dialect::Messages
        })
    );
    assert_eq!(upstream.request_count(B), 0);
    error_of(d, &a.json());
    // The same chain serves a Responses request there.
    let d = MockDialect::Responses;
    let a = send_to(&upstream, chain, post(&url(d), body(d, false).to_string())).await;
    assert_eq!(a.status, StatusCode::OK);
    // A known host: OpenAI's API has no /messages.
    assert!(!Endpoint::new("https://api.openai.com/v1")
        .unwrap()
        .serves(Dialect::Messages));
    assert!(Endpoint::new("https://openrouter.ai/api/v1")
        .unwrap()
        .serves(Dialect::Messages));
}

#[tokio::test(start_paused = true)]
async fn stateful_responses_requests_are_not_sent_to_another_endpoint() {
    let d = MockDialect::Responses;
    for key in ["previous_response_id", "conversation"] {
        let upstream = MockUpstream::new().model(A, Reply::status(503)).model(B, Reply::ok());
        let chain = [Route::new(A), Route::new(B).endpoint(endpoint())];
        let mut request = body(d, false);
        request[key] = json!("resp_abc");
        let a = send_to(&upstream, chain, post(&url(d), request.to_string())).await;
        assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{key}");
        let skipped = &a.report.attempts()[1];
        assert_eq!(skipped.skip_reason(), Some(&SkipReason::Stateful), "{key}");
        assert!(skipped
            .skip_reason()
            .unwrap()
            .to_string()
            .contains("previous_response_id"));
        assert_eq!(upstream.request_count(B), 0, "{key}");
        // On the caller's own upstream it is sent (a route without endpoint).
        let upstream = MockUpstream::new().model(A, Reply::status(503)).model(B, Reply::ok());
        let a = send_to(
            &upstream,
            [Route::new(A), Route::new(B)],
            post(&url(d), request.to_string()),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{key}");
        // And to an endpoint that says it holds the state.
        let upstream = MockUpstream::new().model(A, Reply::status(503)).model(B, Reply::ok());
        let chain = [Route::new(A), Route::new(B).endpoint(endpoint().shares_state(true))];
        let a = send_to(&upstream, chain, post(&url(d), request.to_string())).await;
        assert_eq!(a.status, StatusCode::OK, "{key}");
    }
    // A null `previous_response_id` is no state.
    let upstream = MockUpstream::new().model(A, Reply::status(503)).model(B, Reply::ok());
    let mut request = body(d, false);
    request["previous_response_id"] = Value::Null;
    let chain = [Route::new(A), Route::new(B).endpoint(endpoint())];
    let a = send_to(&upstream, chain, post(&url(d), request.to_string())).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn the_caller_can_name_the_dialect_of_an_unusual_path() {
    let upstream = MockUpstream::new().model(A, Reply::status(503)).model(B, Reply::ok());
    let chain = [Route::new(A).endpoint(endpoint()), Route::new(B).endpoint(endpoint())];
    let d = MockDialect::Messages;
    let mut req = post("http://gateway.test/claude", body(d, false).to_string());
    req.extensions_mut().insert(Dialect::Messages);
    let a = send_to(&upstream, chain.clone(), req).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_good(d, &a.json());
    assert_eq!(upstream.requests()[0].uri.path(), "/v1/messages");
    // Without it the path says chat completions.
    let upstream = MockUpstream::new().model(A, Reply::ok());
    let a = send_to(
        &upstream,
        [Route::new(A).endpoint(endpoint())],
        post("http://gateway.test/claude", body(d, false).to_string()),
    )
    .await;
    assert_eq!(upstream.requests()[0].uri.path(), "/v1/chat/completions");
    drop(a);
}

#[tokio::test(start_paused = true)]
async fn embeddings_never_send_native_model_fallbacks() {
    let upstream = MockUpstream::new().model(A, Reply::ok()).model(B, Reply::ok());
    let chain = [Route::new(A).native_fallbacks([B])];
    let d = MockDialect::Embeddings;
    let a = send_to(&upstream, chain.clone(), post(&url(d), body(d, false).to_string())).await;
    assert_eq!(a.status, StatusCode::OK, "{}", String::from_utf8_lossy(&a.bytes));
    assert!(upstream.requests()[0].json().get("models").is_none());
    assert_eq!(a.headers["x-fallback-model"], A, "the model that made the vectors");
    // Responses take them, as chat does.
    let d = MockDialect::Responses;
    send_to(&upstream, chain, post(&url(d), body(d, false).to_string())).await;
    assert_eq!(upstream.requests()[1].json()["models"], json!([B]));
}

#[tokio::test(start_paused = true)]
async fn an_anthropic_prompt_too_long_moves_to_a_larger_window() {
    let too_long = Reply::error(
        400,
        "invalid_request_error",
        "prompt is too long: 210000 tokens > 200000 maximum",
    );
    let upstream = MockUpstream::new()
        .model(A, too_long)
        .model("small/model", Reply::ok())
        .model(B, Reply::ok());
    let chain = [
        Route::new(A).context_window(200_000),
        Route::new("small/model").context_window(100_000),
        Route::new(B).context_window(1_000_000),
    ];
    let d = MockDialect::Messages;
    let a = send_to(&upstream, chain, post(&url(d), body(d, false).to_string())).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.report.served_model(), B);
    assert!(matches!(
        a.report.attempts()[1].skip_reason(),
        Some(SkipReason::NotLargerWindow { .. })
    ));
}
