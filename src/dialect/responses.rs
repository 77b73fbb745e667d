//! The OpenAI Responses API (`POST …/responses`; OpenRouter serves it
//! statelessly at `/api/v1/responses`).
//!
//! - A good answer: `object: "response"` whose `status` is `completed`,
//!   `incomplete` (a length stop, served as a chat `length` finish is), or
//!   `queued`/`in_progress` (a `background` request the upstream accepted),
//!   with a null `error`. `status: "failed"` or a non-null `error` is an
//!   error inside a 2xx.
//! - A stream commits at the first event that carries output (a non-empty
//!   `….delta`: text, function-call arguments, reasoning, refusal, audio; an
//!   output item or part that already holds content), never at
//!   `response.created`, `response.in_progress`, `response.queued` or an
//!   empty `response.output_item.added`. `event: error` and
//!   `response.failed` before that are a failed attempt. A whole stream ends
//!   with `response.completed` or `response.incomplete` (there is no
//!   `[DONE]`; one is accepted and means nothing). A broken committed stream
//!   gets one `response.failed` event, its `response.error.code`
//!   `stream_broken`, `stream_stalled`, `stream_truncated` or
//!   `stream_event_too_large`, continuing the stream's `sequence_number` and
//!   response id.
//! - Errors are OpenAI's error JSON.

use super::events;
use crate::capability::Needs;
use crate::inspect::{error_from_value, BodyFacts};
use crate::json::scan::ValueKind;
use crate::json::valid::Reader;
use crate::report::{UpstreamError, Usage};
use crate::request::RequestIndex;
use crate::stream::{Signal, SseTracker};
use serde::Deserialize;
use serde_json::json;
use std::borrow::Cow;
use std::ops::Range;

/// Tools, image/audio/file input items, a `text.format` JSON schema,
/// `max_output_tokens`; the prompt from `input`, `instructions` and `tools`;
/// stateful when `previous_response_id` or `conversation` is set.
pub(super) fn needs(body: &[u8], index: &RequestIndex) -> Needs {
    crate::request::detect_needs(body, index)
}

pub(super) fn inspect(body: &[u8]) -> BodyFacts {
    BodyFacts::inspect_responses(body)
}

/// What matters of one Responses event, read in one pass.
#[derive(Default)]
struct Event<'a> {
    /// `type`, as bytes (decoded only when it has an escape).
    kind: Option<Cow<'a, [u8]>>,
    sequence_number: Option<u64>,
    /// A `delta`, `text` or `arguments` that holds something, or an `item`
    /// or `part` that already carries output (not looked for after commit,
    /// when it decides nothing).
    output: bool,
    response: Option<Head<'a>>,
    code: Option<Range<usize>>,
    message: Option<Range<usize>>,
}

/// What matters of an event's `response`.
#[derive(Default)]
struct Head<'a> {
    id: Option<String>,
    model: Option<String>,
    /// As bytes: decoded only at the end of the stream.
    status: Option<Cow<'a, [u8]>>,
    error: Option<Range<usize>>,
    usage: Option<ResponsesUsage>,
}

impl<'a> Event<'a> {
    /// Reads `data` into this (default) event; `false` when `data` is not
    /// JSON as serde_json takes it, not an object, or a member read has the
    /// wrong type (as a typed client would refuse it). `id` and `model` are
    /// decoded only while the tracker lacks them. The `response` object
    /// (and before commit an `item` or `part`) is read member by member in
    /// the event's one pass, into the event where it stays (an event is a
    /// few hundred bytes: it is not moved about).
    fn read(&mut self, data: &'a [u8], t: &SseTracker) -> bool {
        let ev = self;
        Reader::read(data, t.committed, |r, key, at| {
            match () {
                // The last `response` counts (`null`: none).
                _ if r.byte(at) == Some(b'{') && events::is(key, b"response") => {
                    return read_head(r, at, t, ev.response.insert(Head::default()));
                }
                _ if !t.committed
                    && r.byte(at) == Some(b'{')
                    && (events::is(key, b"item") || events::is(key, b"part")) =>
                {
                    let mut found = false;
                    let end = r.object(at, |r, key, at| {
                        let v = r.value(at)?;
                        if events::is(key, b"text")
                            || events::is(key, b"arguments")
                            || events::is(key, b"content")
                            || events::is(key, b"refusal")
                        {
                            found |= events::filled(data, &v);
                        }
                        Some(v.span.end)
                    })?;
                    ev.output |= found;
                    return Some(end);
                }
                _ => {}
            }
            let v = r.value(at)?;
            match () {
                _ if events::is(key, b"type") => ev.kind = events::word(data, &v).ok()?,
                _ if events::is(key, b"sequence_number") => ev.sequence_number = events::unsigned(data, &v).ok()?,
                _ if events::is(key, b"delta") || events::is(key, b"text") || events::is(key, b"arguments") => {
                    ev.output |= events::filled(data, &v)
                }
                _ if events::is(key, b"response") => match v.kind {
                    ValueKind::Null => ev.response = None,
                    _ => return None,
                },
                _ if events::is(key, b"code") => ev.code = Some(v.span.clone()),
                _ if events::is(key, b"message") => ev.message = Some(v.span.clone()),
                _ => {}
            }
            Some(v.span.end)
        })
    }
}

/// The event's `response` object at `at`, read into `head`: one past its
/// end; `None` when it is not JSON or a member has the wrong type.
fn read_head<'a>(r: &mut Reader<'a>, at: usize, t: &SseTracker, head: &mut Head<'a>) -> Option<usize> {
    let data = r.bytes();
    r.object(at, |r, key, at| {
        if events::is(key, b"usage") {
            let (end, usage) = events::usage(r, at)?;
            head.usage = usage;
            return Some(end);
        }
        let v = r.value(at)?;
        match () {
            _ if events::is(key, b"id") => match t.response_id {
                None => head.id = events::text(data, &v).ok()?,
                Some(_) => events::valid_text(data, &v).then_some(())?,
            },
            _ if events::is(key, b"model") => match t.model {
                None => head.model = events::text(data, &v).ok()?,
                Some(_) => events::valid_text(data, &v).then_some(())?,
            },
            _ if events::is(key, b"status") => head.status = events::word(data, &v).ok()?,
            _ if events::is(key, b"error") => head.error = Some(v.span.clone()),
            _ => {}
        }
        Some(v.span.end)
    })
}

/// Responses (and Messages) usage: `input_tokens`, `output_tokens`.
#[derive(Deserialize, Default, Clone, Copy)]
pub(crate) struct ResponsesUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
}

impl ResponsesUsage {
    pub(crate) fn new(input_tokens: Option<u64>, output_tokens: Option<u64>, total_tokens: Option<u64>) -> Self {
        ResponsesUsage {
            input_tokens,
            output_tokens,
            total_tokens,
        }
    }

    pub(crate) fn usage(self, before: Option<&Usage>) -> Usage {
        let prompt = self.input_tokens.or(before.map(|u| u.prompt_tokens)).unwrap_or(0);
        let completion = self.output_tokens.or(before.map(|u| u.completion_tokens)).unwrap_or(0);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: self.total_tokens.unwrap_or(prompt.saturating_add(completion)),
        }
    }
}

/// Judges one event of a Responses stream.
pub(super) fn event(t: &mut SseTracker, data: &[u8]) -> Signal {
    if data.trim_ascii() == b"[DONE]" {
        // Not OpenAI's, but some proxies send it: accepted, and no end.
        return Signal::None;
    }
    let mut ev = Event::default();
    let read = ev.read(data, t).then_some(());
    if let Err(signal) = t.accept(
        data,
        read,
        "event before the first output",
        "type, sequence_number, response and its id, model, status, usage",
    ) {
        return signal;
    }
    if let Some(n) = ev.sequence_number {
        t.sequence = Some(n);
    }
    let mut status = None;
    let mut response_error = None;
    if let Some(head) = ev.response {
        if t.model.is_none() {
            t.model = head.model;
        }
        if t.response_id.is_none() {
            t.response_id = head.id;
        }
        if let Some(u) = head.usage {
            t.usage = Some(u.usage(t.usage.as_ref()));
        }
        status = head.status;
        response_error = events::value(data, head.error);
    }
    let kind = ev.kind.as_deref().unwrap_or_default();
    match kind {
        b"response.created" | b"response.in_progress" | b"response.queued" => Signal::None,
        b"response.completed" | b"response.incomplete" => {
            t.done = true;
            t.finish_reason = Some(match status {
                Some(status) => String::from_utf8_lossy(&status).into_owned(),
                None if kind == b"response.completed" => "completed".to_owned(),
                None => "incomplete".to_owned(),
            });
            t.commit()
        }
        b"response.failed" | b"error" => {
            let error = match (response_error, kind) {
                (Some(e), _) => error_from_value(&e),
                (None, b"error") => error_from_value(&json!({
                    "code": events::value(data, ev.code),
                    "message": events::value(data, ev.message),
                })),
                (None, _) => UpstreamError {
                    message: Some("the response failed (response.failed without an error)".into()),
                    ..UpstreamError::default()
                },
            };
            t.finish_reason = Some("error".into());
            if t.committed {
                t.error.get_or_insert(error);
                Signal::None
            } else {
                Signal::Error(error)
            }
        }
        _ => {
            let output = ev.output;
            if output {
                t.commit()
            } else {
                Signal::None
            }
        }
    }
}

/// `event: response.failed` with a whole `response` (the OpenAI SDKs parse
/// it as they parse OpenAI's own).
pub(super) fn terminal_event(t: &SseTracker, model: &str, code: &str, message: &str) -> Vec<u8> {
    let event = json!({
        "type": "response.failed",
        "sequence_number": t.sequence.map_or(0, |n| n.saturating_add(1)),
        "response": {
            "id": t.response_id.as_deref().unwrap_or("resp_llm_fallback_error"),
            "object": "response",
            "created_at": super::unix_now(),
            "status": "failed",
            "error": {"code": code, "message": message},
            "incomplete_details": null,
            "model": model,
            "output": [],
            "usage": null,
        },
    });
    super::data_event(Some("response.failed"), &event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::Dialect;
    use serde_json::Value;

    fn named(kind: &str, data: Value) -> Vec<u8> {
        let mut data = data;
        data["type"] = Value::from(kind);
        format!("event: {kind}\ndata: {data}\n\n").into_bytes()
    }

    #[test]
    fn preamble_events_do_not_commit_output_does() {
        let mut t = SseTracker::for_dialect(Dialect::Responses);
        let created = named(
            "response.created",
            json!({"sequence_number": 0, "response": {"id": "resp_1", "model": "m", "status": "in_progress", "error": null}}),
        );
        assert_eq!(t.feed(&created), Signal::None);
        assert_eq!(t.feed(&named("response.in_progress", json!({}))), Signal::None);
        assert_eq!(
            t.feed(&named(
                "response.output_item.added",
                json!({"item": {"type": "message", "content": []}})
            )),
            Signal::None
        );
        assert_eq!(
            t.feed(&named(
                "response.content_part.added",
                json!({"part": {"type": "output_text", "text": ""}})
            )),
            Signal::None
        );
        assert_eq!(
            t.feed(&named("response.output_text.delta", json!({"delta": ""}))),
            Signal::None
        );
        assert_eq!(
            t.feed(&named(
                "response.output_text.delta",
                json!({"delta": "Hi", "sequence_number": 5})
            )),
            Signal::Commit
        );
        assert_eq!(t.model.as_deref(), Some("m"));
        assert_eq!(t.response_id.as_deref(), Some("resp_1"));
        assert!(!t.complete());
        let done = named(
            "response.completed",
            json!({"response": {"status": "completed", "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}}}),
        );
        assert_eq!(t.feed(&done), Signal::None);
        assert!(t.complete());
        assert_eq!(t.usage.as_ref().map(|u| u.total_tokens), Some(5));
        // Our terminal event continues the stream.
        let tail = String::from_utf8(terminal_event(&t, "m", "stream_broken", "x")).unwrap();
        assert!(tail.starts_with("event: response.failed\ndata: "), "{tail}");
        let v: Value = serde_json::from_str(tail.trim_start_matches("event: response.failed\ndata: ").trim()).unwrap();
        assert_eq!(v["sequence_number"], 6);
        assert_eq!(v["response"]["id"], "resp_1");
        assert_eq!(v["response"]["error"]["code"], "stream_broken");
    }

    #[test]
    fn errors_before_commit_fail_the_attempt() {
        let mut t = SseTracker::for_dialect(Dialect::Responses);
        t.feed(&named("response.created", json!({"response": {"model": "m"}})));
        let s = t.feed(&named(
            "error",
            json!({"code": "insufficient_quota", "message": "You exceeded your quota", "param": null}),
        ));
        assert!(
            matches!(s, Signal::Error(ref e) if e.code() == Some("insufficient_quota")),
            "{s:?}"
        );
        let mut t = SseTracker::for_dialect(Dialect::Responses);
        let s = t.feed(&named(
            "response.failed",
            json!({"response": {"status": "failed", "error": {"code": "server_error", "message": "boom"}}}),
        ));
        assert!(matches!(s, Signal::Error(e) if e.message() == Some("boom")));
        // [DONE] is neither a commit nor an end.
        let mut t = SseTracker::for_dialect(Dialect::Responses);
        assert_eq!(t.feed(b"data: [DONE]\n\n"), Signal::None);
        assert!(!t.complete());
    }

    #[test]
    fn a_function_call_commits_at_its_arguments() {
        let mut t = SseTracker::for_dialect(Dialect::Responses);
        let added = named(
            "response.output_item.added",
            json!({"item": {"type": "function_call", "name": "f", "arguments": ""}}),
        );
        assert_eq!(t.feed(&added), Signal::None);
        assert_eq!(
            t.feed(&named(
                "response.function_call_arguments.delta",
                json!({"delta": "{\""})
            )),
            Signal::Commit
        );
    }
}
