//! The streams of every dialect: the exact event order, each fault, timing,
//! and that every event is well-formed SSE that parses as the API's event
//! JSON (the OpenAI SDK's own types for Responses, completions and chat;
//! Anthropic's SDK shapes for Messages).

use std::time::Duration;

use async_openai::types::chat::CreateChatCompletionStreamResponse;
use async_openai::types::completions::CreateCompletionResponse;
use async_openai::types::responses::{ResponseStreamEvent, Status};
use http_body::Body as _;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower::ServiceExt;

use super::dialect_tests::{AnthropicErrorDetail, AnthropicMessage, StopReason};
use super::*;

const SECOND: Duration = Duration::from_secs(1);
const STREAMING: [Dialect; 4] = [
    Dialect::Chat,
    Dialect::Responses,
    Dialect::Messages,
    Dialect::Completions,
];

fn stream_body(dialect: Dialect, model: &str) -> String {
    let body = match dialect {
        Dialect::Responses => json!({"model": model, "input": "hi", "stream": true}),
        Dialect::Messages => json!({"model": model, "max_tokens": 64, "stream": true, "messages": []}),
        Dialect::Completions => json!({"model": model, "prompt": "hi", "stream": true}),
        Dialect::Embeddings => json!({"model": model, "input": "hi", "stream": true}),
        _ => json!({"model": model, "stream": true, "messages": []}),
    };
    body.to_string()
}

async fn open(dialect: Dialect, reply: Reply) -> (http::response::Parts, MockBody) {
    let up = MockUpstream::new().model("m/x", reply);
    let req = Request::post(dialect.path()).body(stream_body(dialect, "m/x")).unwrap();
    up.oneshot(req).await.expect("no transport error").into_parts()
}

/// Reads frames until the end or an error, at most 200.
async fn frames(body: &mut MockBody) -> (Vec<Bytes>, Option<MockBodyError>) {
    let mut out = Vec::new();
    for _ in 0..200 {
        match body.frame().await {
            Some(Ok(frame)) => out.push(frame.into_data().expect("only data frames")),
            Some(Err(e)) => return (out, Some(e)),
            None => return (out, None),
        }
    }
    panic!("more than 200 frames")
}

// ===== a strict reader: one well-formed event per frame =====

/// One frame, checked strictly.
#[derive(Debug, Clone, PartialEq)]
enum Ev {
    KeepAlive,
    /// A named event and its JSON data (Responses, Messages).
    Named(String, Value),
    /// An unnamed `data:` JSON event (chat, completions).
    Data(Value),
    Done,
}

/// Checks that `frame` holds exactly one SSE event as `dialect` sends it:
/// a keep-alive comment; `event: <name>\ndata: <one-line JSON>\n\n` whose
/// JSON `type` is the name (Responses, Messages); or `data: <JSON>\n\n` /
/// `data: [DONE]\n\n` (chat, completions). Nothing else: no other field, no
/// CR, no multi-line data, the blank line at the end.
fn strict(dialect: Dialect, frame: &[u8]) -> Result<Ev, String> {
    let text = std::str::from_utf8(frame).map_err(|e| format!("not UTF-8: {e}"))?;
    if text == ": OPENROUTER PROCESSING\n\n" {
        return Ok(Ev::KeepAlive);
    }
    let body = text
        .strip_suffix("\n\n")
        .ok_or_else(|| format!("no blank line at the end: {text:?}"))?;
    if body.contains('\r') || body.contains("\n\n") {
        return Err(format!("more than one event, or a CR: {text:?}"));
    }
    let lines: Vec<&str> = body.split('\n').collect();
    let named = matches!(dialect, Dialect::Responses | Dialect::Messages);
    match (named, lines.as_slice()) {
        (true, [event, data]) => {
            let name = event
                .strip_prefix("event: ")
                .ok_or_else(|| format!("no event line: {text:?}"))?;
            let data = data
                .strip_prefix("data: ")
                .ok_or_else(|| format!("no data line: {text:?}"))?;
            let value: Value = serde_json::from_str(data).map_err(|e| format!("data is not JSON ({e}): {data}"))?;
            if value["type"] != name {
                return Err(format!("event {name} carries type {}", value["type"]));
            }
            Ok(Ev::Named(name.to_owned(), value))
        }
        (false, [data]) => {
            let data = data
                .strip_prefix("data: ")
                .ok_or_else(|| format!("no data line: {text:?}"))?;
            if data == "[DONE]" {
                return Ok(Ev::Done);
            }
            serde_json::from_str(data)
                .map(Ev::Data)
                .map_err(|e| format!("data is not JSON ({e}): {data}"))
        }
        _ => Err(format!("not one {dialect} event: {text:?}")),
    }
}

/// Anthropic's stream events, as its SDKs read them (every required field).
// Read by serde for their shape; the tests look at the JSON.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum AnthropicEvent {
    MessageStart {
        message: AnthropicMessage,
    },
    ContentBlockStart {
        index: u32,
        content_block: AnthropicBlock,
    },
    Ping {},
    ContentBlockDelta {
        index: u32,
        delta: AnthropicDelta,
    },
    ContentBlockStop {
        index: u32,
    },
    MessageDelta {
        delta: AnthropicMessageDelta,
        usage: AnthropicDeltaUsage,
    },
    MessageStop {},
    Error {
        error: AnthropicErrorDetail,
    },
}

// Read by serde for their shape; the tests look at the JSON.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum AnthropicBlock {
    Text { text: String },
}

// Read by serde for their shape; the tests look at the JSON.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum AnthropicDelta {
    TextDelta { text: String },
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnthropicMessageDelta {
    stop_reason: Option<StopReason>,
    stop_sequence: Option<String>,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnthropicDeltaUsage {
    output_tokens: u64,
}

/// Parses a checked event with the API's own types; `Err` says why not.
fn sdk_parse(dialect: Dialect, ev: &Ev) -> Result<(), String> {
    let as_text = |v: &Value| v.to_string();
    match (dialect, ev) {
        (_, Ev::KeepAlive) => Ok(()),
        (Dialect::Responses, Ev::Named(_, v)) => serde_json::from_str::<ResponseStreamEvent>(&as_text(v))
            .map(drop)
            .map_err(|e| format!("async-openai refuses {v}: {e}")),
        (Dialect::Messages, Ev::Named(_, v)) => serde_json::from_value::<AnthropicEvent>(v.clone())
            .map(drop)
            .map_err(|e| format!("not an Anthropic event {v}: {e}")),
        // OpenRouter's mid-stream error chunk is its own extension.
        (Dialect::Chat | Dialect::Completions, Ev::Data(v)) if v.get("error").is_some() => Ok(()),
        (Dialect::Chat, Ev::Data(v)) => serde_json::from_str::<CreateChatCompletionStreamResponse>(&as_text(v))
            .map(drop)
            .map_err(|e| format!("async-openai refuses {v}: {e}")),
        (Dialect::Completions, Ev::Data(v)) => serde_json::from_str::<CreateCompletionResponse>(&as_text(v))
            .map(drop)
            .map_err(|e| format!("async-openai refuses {v}: {e}")),
        (Dialect::Chat | Dialect::Completions, Ev::Done) => Ok(()),
        _ => Err(format!("{ev:?} is not a {dialect} event")),
    }
}

/// Every frame of `reply`'s stream in `dialect`, checked strictly and
/// parsed with the SDK types; plus the body error, if any.
async fn checked(dialect: Dialect, reply: Reply) -> (Vec<Ev>, Option<MockBodyError>) {
    let (head, mut body) = open(dialect, reply).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.headers[CONTENT_TYPE], "text/event-stream", "{dialect}");
    assert_eq!(head.headers["x-generation-id"], "gen-mock-1");
    let (frames, err) = frames(&mut body).await;
    let events = frames
        .iter()
        .map(|f| {
            let ev = strict(dialect, f).unwrap_or_else(|e| panic!("{dialect}: {e}"));
            sdk_parse(dialect, &ev).unwrap_or_else(|e| panic!("{dialect}: {e}"));
            ev
        })
        .collect();
    (events, err)
}

/// The names of named events, `:` for a keep-alive, `data` / `[DONE]` otherwise.
fn names(events: &[Ev]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            Ev::KeepAlive => ":".to_owned(),
            Ev::Named(name, _) => name.clone(),
            Ev::Data(_) => "data".to_owned(),
            Ev::Done => "[DONE]".to_owned(),
        })
        .collect()
}

fn data(ev: &Ev) -> &Value {
    match ev {
        Ev::Named(_, v) | Ev::Data(v) => v,
        other => panic!("no data: {other:?}"),
    }
}

const RESPONSES_PREAMBLE: [&str; 4] = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
];
const RESPONSES_CLOSING: [&str; 3] = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
];

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

// ===== the checker itself =====

#[test]
fn the_strict_reader_refuses_malformed_events() {
    use Dialect::{Chat, Messages, Responses};
    let bad: &[(Dialect, &[u8])] = &[
        (Responses, b"data: {\"type\":\"response.created\"}\n\n"),
        (
            Responses,
            b"event: response.created\ndata: {\"type\":\"response.completed\"}\n\n",
        ),
        (
            Responses,
            b"event: response.created\ndata: {\"type\":\"response.created\"}\n",
        ),
        (
            Messages,
            b"event: ping\ndata: {\"type\":\"ping\"}\n\nevent: ping\ndata: {\"type\":\"ping\"}\n\n",
        ),
        (Messages, b"event: ping\r\ndata: {\"type\":\"ping\"}\r\n\r\n"),
        (Messages, b"event: ping\ndata: {\"type\":\n\n"),
        (Chat, b"event: x\ndata: {}\n\n"),
        (Chat, b"data: {}\ndata: {}\n\n"),
        (Chat, b"id: 1\n\n"),
    ];
    for (dialect, frame) in bad {
        assert!(
            strict(*dialect, frame).is_err(),
            "{dialect}: accepted {:?}",
            String::from_utf8_lossy(frame)
        );
    }
    assert!(sdk_parse(Responses, &Ev::Named("x".into(), json!({"type": "response.created"}))).is_err());
    assert!(sdk_parse(
        Messages,
        &Ev::Named("x".into(), json!({"type": "message_stop", "extra": 1}))
    )
    .is_err());
}

// ===== whole streams =====

#[tokio::test]
async fn responses_stream_is_openais_event_sequence() {
    let (events, err) = checked(Dialect::Responses, Reply::stream().tokens(["Hel", "lo"])).await;
    assert!(err.is_none());
    let mut expected = strings(&RESPONSES_PREAMBLE);
    expected.extend(strings(&["response.output_text.delta", "response.output_text.delta"]));
    expected.extend(strings(&RESPONSES_CLOSING));
    expected.push("response.completed".into());
    assert_eq!(names(&events), expected);

    let sequence: Vec<u64> = events
        .iter()
        .map(|e| data(e)["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(
        sequence,
        (0..10).collect::<Vec<u64>>(),
        "sequence numbers count every event"
    );
    assert_eq!(data(&events[0])["response"]["status"], "in_progress");
    assert_eq!(data(&events[0])["response"]["id"], "resp_mock_1");
    assert_eq!(data(&events[2])["item"]["content"], json!([]), "an empty output item");
    let deltas: Vec<&Value> = events[4..6].iter().map(|e| &data(e)["delta"]).collect();
    assert_eq!(deltas, ["Hel", "lo"]);
    assert_eq!(data(&events[4])["item_id"], "msg_mock_1");
    assert_eq!(data(&events[6])["text"], "Hello");
    let done = &data(&events[9])["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["error"], Value::Null);
    assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
    assert_eq!(done["usage"]["output_tokens"], 2);
    let parsed: ResponseStreamEvent = serde_json::from_value(data(&events[9]).clone()).unwrap();
    let ResponseStreamEvent::ResponseCompleted(completed) = parsed else {
        panic!("{parsed:?}")
    };
    assert_eq!(completed.response.status, Status::Completed);
    assert_eq!(completed.response.output_text().as_deref(), Some("Hello"));
}

#[tokio::test]
async fn messages_stream_is_anthropics_event_sequence() {
    let (events, err) = checked(Dialect::Messages, Reply::stream().tokens(["Hel", "lo"])).await;
    assert!(err.is_none());
    assert_eq!(
        names(&events),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let start = &data(&events[0])["message"];
    assert_eq!(start["content"], json!([]), "message_start has empty content");
    assert_eq!(start["stop_reason"], Value::Null);
    assert_eq!(start["id"], "msg_mock_1");
    assert_eq!(data(&events[1])["content_block"], json!({"type": "text", "text": ""}));
    assert_eq!(data(&events[3])["delta"], json!({"type": "text_delta", "text": "Hel"}));
    assert_eq!(data(&events[6])["delta"]["stop_reason"], "end_turn");
    assert_eq!(data(&events[6])["usage"]["output_tokens"], 2);
}

#[tokio::test]
async fn completions_stream_is_text_chunks_and_done() {
    let (events, err) = checked(Dialect::Completions, Reply::stream().tokens(["4", "2"])).await;
    assert!(err.is_none());
    assert_eq!(names(&events), ["data", "data", "data", "data", "[DONE]"]);
    let texts: Vec<&Value> = events[..2].iter().map(|e| &data(e)["choices"][0]["text"]).collect();
    assert_eq!(texts, ["4", "2"]);
    assert_eq!(data(&events[0])["object"], "text_completion");
    assert_eq!(data(&events[0])["id"], "gen-mock-1");
    assert!(data(&events[0])["choices"][0].get("delta").is_none());
    assert_eq!(data(&events[2])["choices"][0]["finish_reason"], "stop");
    assert_eq!(data(&events[3])["usage"]["completion_tokens"], 2);
}

#[tokio::test]
async fn an_embeddings_stream_reply_answers_as_ok() {
    let (head, body) = open(Dialect::Embeddings, Reply::stream().cut_after(0)).await;
    assert_eq!(head.headers[CONTENT_TYPE], "application/json");
    let v: Value = serde_json::from_slice(&body.collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["object"], "list");
}

#[tokio::test]
async fn length_stops_end_each_stream_as_its_api_does() {
    let (events, _) = checked(Dialect::Responses, Reply::stream().length_stop()).await;
    let last = events.last().unwrap();
    assert_eq!(names(std::slice::from_ref(last)), ["response.incomplete"]);
    assert_eq!(data(last)["response"]["status"], "incomplete");
    assert_eq!(
        data(last)["response"]["incomplete_details"]["reason"],
        "max_output_tokens"
    );
    let (events, _) = checked(Dialect::Messages, Reply::stream().length_stop()).await;
    let delta = events
        .iter()
        .find(|e| names(std::slice::from_ref(e)) == ["message_delta"])
        .unwrap();
    assert_eq!(data(delta)["delta"]["stop_reason"], "max_tokens");
    for dialect in [Dialect::Chat, Dialect::Completions] {
        let (events, _) = checked(dialect, Reply::stream().length_stop()).await;
        let finish = &events[events.len() - 3];
        assert_eq!(data(finish)["choices"][0]["finish_reason"], "length", "{dialect}");
    }
}

// ===== faults, in every dialect =====

/// Every fault a stream can script, in every dialect: each event is
/// well-formed and parses as the API's event.
#[tokio::test]
async fn every_fault_sends_only_well_formed_events() {
    let faults: Vec<(&str, Reply)> = vec![
        ("complete", Reply::stream()),
        ("keep-alives", Reply::stream().keep_alive(2, Duration::ZERO)),
        ("pings", Reply::stream().pings(3, Duration::ZERO)),
        ("no pings", Reply::stream().pings(0, Duration::ZERO)),
        (
            "error before",
            Reply::stream().keep_alive(1, Duration::ZERO).error_before_first_token(),
        ),
        ("error after", Reply::stream().error_after(2)),
        ("error event", Reply::stream().error_event_after(0)),
        ("error event after", Reply::stream().error_event_after(2)),
        ("cut", Reply::stream().cut_after(1)),
        ("cut before", Reply::stream().cut_after(0)),
        ("no done", Reply::stream().no_done()),
        ("length", Reply::stream().length_stop().no_done()),
    ];
    for dialect in STREAMING {
        for (name, reply) in &faults {
            let (events, _) = checked(dialect, reply.clone()).await;
            let preamble_only = matches!(dialect, Dialect::Responses | Dialect::Messages);
            assert!(
                !events.is_empty() || (*name == "cut before" && !preamble_only),
                "{dialect} {name}"
            );
        }
    }
}

#[tokio::test]
async fn errors_before_the_first_content_come_after_the_preamble() {
    // Responses: response.failed, or a stand-alone error event.
    let (events, err) = checked(
        Dialect::Responses,
        Reply::stream().keep_alive(2, Duration::ZERO).error_before_first_token(),
    )
    .await;
    assert!(err.is_none());
    let mut expected = strings(&[":", ":"]);
    expected.extend(strings(&RESPONSES_PREAMBLE));
    expected.push("response.failed".into());
    assert_eq!(names(&events), expected);
    let failed = &data(&events[6])["response"];
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], "server_error");
    assert_eq!(failed["output"], json!([]));
    assert_eq!(data(&events[6])["sequence_number"], 4);

    let (events, _) = checked(Dialect::Responses, Reply::stream().error_event_after(0)).await;
    let mut expected = strings(&RESPONSES_PREAMBLE);
    expected.push("error".into());
    assert_eq!(names(&events), expected);
    assert_eq!(
        *data(&events[4]),
        json!({"type": "error", "code": "server_error", "message": "Provider disconnected", "param": null, "sequence_number": 4})
    );

    // Messages: event: error with overloaded_error, after message_start and the ping.
    let (events, _) = checked(Dialect::Messages, Reply::stream().error_before_first_token()).await;
    assert_eq!(
        names(&events),
        ["message_start", "content_block_start", "ping", "error"]
    );
    assert_eq!(
        *data(&events[3]),
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );

    // Completions: as chat.
    let (events, _) = checked(Dialect::Completions, Reply::stream().error_before_first_token()).await;
    assert_eq!(names(&events), ["data"]);
    assert_eq!(data(&events[0])["choices"][0]["finish_reason"], "error");
    assert_eq!(data(&events[0])["error"]["code"], "server_error");
}

#[tokio::test]
async fn errors_after_k_tokens_carry_what_was_sent() {
    let reply = || Reply::stream().tokens(["a", "b", "c"]);
    let (events, _) = checked(Dialect::Responses, reply().error_after(2)).await;
    assert_eq!(events.len(), 4 + 2 + 1);
    let failed = &data(&events[6])["response"];
    assert_eq!(failed["output"][0]["content"][0]["text"], "ab");
    assert_eq!(failed["output"][0]["status"], "incomplete");
    let (events, _) = checked(Dialect::Responses, reply().error_event_after(2)).await;
    assert_eq!(names(&events).last().unwrap(), "error");
    assert_eq!(events.len(), 7);

    let (events, _) = checked(Dialect::Messages, reply().error_after(9)).await;
    assert_eq!(events.len(), 3 + 3 + 1, "all tokens if fewer than k");
    assert!(!names(&events)
        .iter()
        .any(|n| n == "message_stop" || n == "message_delta"));
    let (events, _) = checked(Dialect::Completions, reply().error_after(1)).await;
    assert_eq!(events.len(), 2);
    assert!(!events.contains(&Ev::Done));
}

#[tokio::test]
async fn cuts_break_the_body_after_k_tokens_in_every_dialect() {
    for dialect in STREAMING {
        let (events, err) = checked(dialect, Reply::stream().tokens(["a", "b", "c"]).cut_after(2)).await;
        let err = err.unwrap_or_else(|| panic!("{dialect}: ended cleanly"));
        assert_eq!(err.to_string(), "mock upstream cut the stream");
        let preamble = match dialect {
            Dialect::Responses => 4,
            Dialect::Messages => 3,
            _ => 0,
        };
        assert_eq!(events.len(), preamble + 2, "{dialect}: {:?}", names(&events));
    }
}

#[tokio::test]
async fn streams_without_their_terminal_event() {
    let (events, err) = checked(Dialect::Responses, Reply::stream().no_done()).await;
    assert!(err.is_none());
    assert_eq!(names(&events).last().unwrap(), "response.output_item.done");
    assert!(!names(&events).iter().any(|n| n == "response.completed"));
    let (events, _) = checked(Dialect::Messages, Reply::stream().no_done()).await;
    assert_eq!(names(&events).last().unwrap(), "message_delta");
    let (events, _) = checked(Dialect::Completions, Reply::stream().no_done()).await;
    assert!(!events.contains(&Ev::Done));
    assert!(data(events.last().unwrap())["usage"].is_object());
}

#[tokio::test(start_paused = true)]
async fn stalls_go_silent_after_k_tokens_in_every_dialect() {
    for dialect in STREAMING {
        let (_, mut body) = open(dialect, Reply::stream().tokens(["a", "b"]).stall_after(1)).await;
        let preamble = match dialect {
            Dialect::Responses => 4,
            Dialect::Messages => 3,
            _ => 0,
        };
        for _ in 0..preamble + 1 {
            assert!(body.frame().await.unwrap().is_ok());
        }
        let silent = tokio::time::timeout(Duration::from_secs(3600), body.frame()).await;
        assert!(silent.is_err(), "{dialect}: a stalled stream sent more");
        assert!(!body.is_end_stream());
    }
}

/// When each frame of `reply`'s stream arrives (seconds since the request),
/// with its name.
async fn timeline(dialect: Dialect, reply: Reply) -> Vec<(u64, String)> {
    let start = Instant::now();
    let (_, mut body) = open(dialect, reply).await;
    let mut out = Vec::new();
    for _ in 0..100 {
        match body.frame().await {
            Some(Ok(frame)) => {
                let ev = strict(dialect, &frame.into_data().unwrap()).unwrap();
                out.push((start.elapsed().as_secs(), names(&[ev]).remove(0)));
            }
            _ => break,
        }
    }
    out
}

#[tokio::test(start_paused = true)]
async fn keep_alives_preamble_pings_and_intervals_are_timed() {
    let reply = || {
        Reply::stream()
            .tokens(["a"])
            .keep_alive(2, Duration::from_secs(5))
            .pings(2, Duration::from_secs(10))
            .chunk_interval(SECOND)
    };
    // Keep-alives first, then the preamble at once, then each later event after its interval.
    let got = timeline(Dialect::Responses, reply()).await;
    let at: Vec<u64> = got.iter().map(|(t, _)| *t).collect();
    assert_eq!(at, [5, 10, 10, 10, 10, 10, 11, 12, 13, 14, 15]);
    assert_eq!(got[6].1, "response.output_text.delta");
    // Anthropic pings wait their own interval.
    let got = timeline(Dialect::Messages, reply()).await;
    let expected: Vec<(u64, &str)> = vec![
        (5, ":"),
        (10, ":"),
        (10, "message_start"),
        (10, "content_block_start"),
        (20, "ping"),
        (30, "ping"),
        (31, "content_block_delta"),
        (32, "content_block_stop"),
        (33, "message_delta"),
        (34, "message_stop"),
    ];
    let got: Vec<(u64, &str)> = got.iter().map(|(t, n)| (*t, n.as_str())).collect();
    assert_eq!(got, expected);
    // Chat keeps its timing: no preamble, no pings.
    let at: Vec<u64> = timeline(Dialect::Chat, reply()).await.iter().map(|(t, _)| *t).collect();
    assert_eq!(at, [5, 10, 11, 12, 13, 14]);
}

#[tokio::test]
async fn parse_sse_named_reads_what_the_mock_sends() {
    let (_, body) = open(
        Dialect::Messages,
        Reply::stream().keep_alive(1, Duration::ZERO).tokens(["x"]),
    )
    .await;
    let bytes = body.collect().await.unwrap().to_bytes();
    let events = parse_sse_named(&bytes);
    assert!(events[0].is_comment());
    assert_eq!(events[0].name(), None);
    let named: Vec<&str> = events[1..].iter().map(|e| e.name().unwrap()).collect();
    assert_eq!(named[..3], ["message_start", "content_block_start", "ping"]);
    assert_eq!(events[4].json().unwrap()["delta"]["text"], "x");
    // parse_sse reads the same data, without the names.
    let plain = parse_sse(&bytes);
    assert_eq!(plain.len(), events.len());
    assert_eq!(plain[4], events[4].event);
    assert_eq!(
        parse_sse_named(b"event: a\nevent: b\ndata: 1\n\ndata: 2\n\n"),
        [
            NamedEvent::new(Some("b"), SseEvent::Data("1".into())),
            NamedEvent::new(None, SseEvent::Data("2".into())),
        ],
        "the last event line wins, and a name lasts one event"
    );
}

// ===== over HTTP =====

/// Sends one streaming request on `path` with `Connection: close` and
/// returns the de-chunked body and whether its chunked encoding ended.
async fn raw_stream(server: &MockServer, dialect: Dialect, path: &str) -> (String, Vec<u8>, bool) {
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    let body = stream_body(dialect, "m/x");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        server.addr(),
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut out))
        .await
        .expect("the server closed the connection");
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8(out[..split].to_vec()).unwrap();
    let mut rest = &out[split + 4..];
    let mut body = Vec::new();
    let mut terminated = false;
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap(), 16).unwrap();
        rest = &rest[eol + 2..];
        if size == 0 {
            terminated = rest == b"\r\n";
            break;
        }
        if rest.len() < size + 2 {
            break;
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
    (head, body, terminated)
}

#[tokio::test]
async fn server_streams_and_cuts_every_dialect() {
    let up = MockUpstream::new().model(
        "m/x",
        Script::sequence([Reply::stream().tokens(["a", "b"]), Reply::stream().cut_after(1)]),
    );
    let server = MockServer::start(up.clone()).await.unwrap();
    for dialect in [Dialect::Responses, Dialect::Messages, Dialect::Completions] {
        up.set_script(
            "m/x",
            Script::sequence([Reply::stream().tokens(["a", "b"]), Reply::stream().cut_after(1)]),
        );
        let url = server.url_for(dialect);
        let path = url.strip_prefix(&server.url()).unwrap().to_owned();
        let (head, body, terminated) = raw_stream(&server, dialect, &path).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(terminated, "{dialect}: a whole stream ends its chunked body");
        let events = parse_sse_named(&body);
        let last = events.last().unwrap();
        match dialect {
            Dialect::Responses => assert_eq!(last.name(), Some("response.completed")),
            Dialect::Messages => assert_eq!(last.name(), Some("message_stop")),
            _ => assert!(last.event.is_done()),
        }

        let (_, body, terminated) = raw_stream(&server, dialect, &path.replace("/api/v1/", "/v1/")).await;
        assert!(!terminated, "{dialect}: a cut stream must not end its chunked body");
        let events = parse_sse_named(&body);
        let deltas = events
            .iter()
            .filter(|e| {
                matches!(e.name(), Some("response.output_text.delta" | "content_block_delta"))
                    || e.json().is_some_and(|v| v["choices"][0]["text"].is_string())
            })
            .count();
        assert_eq!(deltas, 1, "{dialect}: the frames before the cut arrive");
    }
    let dialects: Vec<Option<Dialect>> = up.requests().iter().map(|r| r.dialect).collect();
    assert_eq!(
        dialects,
        [
            Dialect::Responses,
            Dialect::Responses,
            Dialect::Messages,
            Dialect::Messages,
            Dialect::Completions,
            Dialect::Completions
        ]
        .map(Some)
    );
}

#[tokio::test]
async fn server_urls_name_every_endpoint() {
    let server = MockServer::start(MockUpstream::new()).await.unwrap();
    let base = server.base_url();
    assert_eq!(base, format!("{}/api/v1", server.url()));
    assert_eq!(server.chat_url(), format!("{base}/chat/completions"));
    assert_eq!(server.responses_url(), format!("{base}/responses"));
    assert_eq!(server.messages_url(), format!("{base}/messages"));
    assert_eq!(server.embeddings_url(), format!("{base}/embeddings"));
    assert_eq!(server.completions_url(), format!("{base}/completions"));
    for d in Dialect::ALL {
        assert_eq!(server.url_for(d), format!("{base}/{}", d.endpoint()));
    }
}
