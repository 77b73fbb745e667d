//! Anthropic Messages (`POST …/messages`: Anthropic's own API with
//! `x-api-key` and `anthropic-version`, or OpenRouter's `/api/v1/messages`
//! with `Authorization: Bearer`).
//!
//! - A good answer: `type: "message"` with a `content` array. `type:
//!   "error"` is an error inside a 2xx.
//! - Errors: `{"type":"error","error":{"type","message"}}`; `529
//!   overloaded_error` falls back as every 5xx does.
//! - A stream commits at the first `content_block_delta` (text, tool input,
//!   thinking), a non-empty `content_block_start` (a `tool_use`, or text
//!   already in it) or a `message_delta` with a `stop_reason` (an empty
//!   answer); never at `message_start`, `ping` or an empty
//!   `content_block_start`. `event: error` before that is a failed attempt.
//!   A whole stream ends with `message_stop` after a `message_delta` with
//!   `stop_reason`. A broken committed stream gets one `event: error` with
//!   `{"type":"error","error":{"type":"api_error","message":…}}`, the
//!   message naming the cause (`stream_broken: …`).

use super::events;
use super::responses::ResponsesUsage;
use super::ErrorBody;
use crate::capability::Needs;
use crate::inspect::{error_from_value, BodyFacts};
use crate::json::scan::ValueKind;
use crate::json::valid::Reader;
use crate::report::UpstreamError;
use crate::request::RequestIndex;
use crate::stream::{Signal, SseTracker};
use bytes::Bytes;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::ops::Range;

/// The `anthropic-version` an attempt to Anthropic's own API carries when
/// the caller sent none.
pub(crate) const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Tools, image and document blocks, `thinking`, `max_tokens`; the prompt
/// from `messages`, `system` and `tools`.
pub(super) fn needs(body: &[u8], index: &RequestIndex) -> Needs {
    crate::request::detect_needs(body, index)
}

pub(super) fn inspect(body: &[u8]) -> BodyFacts {
    BodyFacts::inspect_messages(body)
}

/// Anthropic's error JSON. `kind` is mapped to Anthropic's error types
/// (`invalid_request_error`, `request_too_large`, `api_error`); the code,
/// the parameter and the metadata (the attempts of an exhausted chain) ride
/// along in the `error` object, where the SDKs ignore what they do not know.
pub(super) fn error_body(error: ErrorBody<'_>, metadata: Option<Value>) -> Bytes {
    let kind = match (error.kind, error.code) {
        (_, "request_too_large") => "request_too_large",
        ("invalid_request_error", _) => "invalid_request_error",
        (_, "fallback_deadline_exceeded") => "timeout_error",
        _ => "api_error",
    };
    let mut inner = json!({
        "type": kind,
        "message": error.message,
        "code": error.code,
    });
    if let Some(obj) = inner.as_object_mut() {
        if let Some(p) = error.param {
            obj.insert("param".to_owned(), Value::from(p));
        }
        if let Some(m) = metadata {
            obj.insert("metadata".to_owned(), m);
        }
    }
    Bytes::from(serde_json::to_vec(&json!({"type": "error", "error": inner})).unwrap_or_default())
}

/// What matters of one Messages event, read in one pass.
#[derive(Default)]
struct Event<'a> {
    /// `type`, as bytes (decoded only when it has an escape).
    kind: Option<Cow<'a, [u8]>>,
    /// `message_start`'s `message`: its model (while the tracker lacks one)
    /// and usage.
    model: Option<String>,
    head_usage: Option<ResponsesUsage>,
    /// `content_block_start`'s block already holds something (not looked
    /// for after commit, when it decides nothing).
    block_filled: bool,
    /// `message_delta`'s `delta.stop_reason`.
    stop_reason: Option<String>,
    usage: Option<ResponsesUsage>,
    error: Option<Range<usize>>,
}

impl<'a> Event<'a> {
    /// Reads `data` into this (default) event; `false` when `data` is not
    /// JSON as serde_json takes it, not an object, or a member read has the
    /// wrong type (as a typed client would refuse it). The `message` and
    /// `delta` objects (and before commit a `content_block`) are read
    /// member by member in the event's one pass; the last of each key
    /// counts. (Read in place: the event is not moved about.)
    fn read(&mut self, data: &'a [u8], t: &SseTracker) -> bool {
        let ev = self;
        Reader::read(data, t.committed, |r, key, at| {
            let object = r.byte(at) == Some(b'{');
            match () {
                _ if object && events::is(key, b"message") => {
                    let (mut model, mut usage) = (None, None);
                    let end = r.object(at, |r, key, at| {
                        if events::is(key, b"usage") {
                            let (end, u) = events::usage(r, at)?;
                            usage = u;
                            return Some(end);
                        }
                        let v = r.value(at)?;
                        if events::is(key, b"model") {
                            match t.model {
                                None => model = events::text(data, &v).ok()?,
                                Some(_) => events::valid_text(data, &v).then_some(())?,
                            }
                        }
                        Some(v.span.end)
                    })?;
                    (ev.model, ev.head_usage) = (model, usage);
                    return Some(end);
                }
                _ if object && events::is(key, b"delta") => {
                    let mut stop_reason = None;
                    let end = r.object(at, |r, key, at| {
                        let v = r.value(at)?;
                        if events::is(key, b"stop_reason") {
                            stop_reason = events::text(data, &v).ok()?;
                        }
                        Some(v.span.end)
                    })?;
                    ev.stop_reason = stop_reason;
                    return Some(end);
                }
                _ if object && !t.committed && events::is(key, b"content_block") => {
                    let (mut tool, mut filled) = (false, false);
                    let end = r.object(at, |r, key, at| {
                        let v = r.value(at)?;
                        match () {
                            _ if events::is(key, b"type") => tool |= events::is_text(data, &v, "tool_use"),
                            _ if events::is(key, b"text")
                                || events::is(key, b"thinking")
                                || events::is(key, b"data") =>
                            {
                                filled |= v.kind == ValueKind::String && events::filled(data, &v)
                            }
                            _ => {}
                        }
                        Some(v.span.end)
                    })?;
                    ev.block_filled = tool || filled;
                    return Some(end);
                }
                _ if events::is(key, b"usage") => {
                    let (end, usage) = events::usage(r, at)?;
                    ev.usage = usage;
                    return Some(end);
                }
                _ => {}
            }
            let v = r.value(at)?;
            match () {
                _ if events::is(key, b"type") => ev.kind = events::word(data, &v).ok()?,
                _ if events::is(key, b"message") => match v.kind {
                    ValueKind::Null => (ev.model, ev.head_usage) = (None, None),
                    _ => return None,
                },
                _ if events::is(key, b"delta") => match v.kind {
                    ValueKind::Null => ev.stop_reason = None,
                    _ => return None,
                },
                _ if events::is(key, b"content_block") => ev.block_filled = false,
                _ if events::is(key, b"error") => ev.error = Some(v.span.clone()),
                _ => {}
            }
            Some(v.span.end)
        })
    }
}

/// Judges one event of a Messages stream.
pub(super) fn event(t: &mut SseTracker, data: &[u8]) -> Signal {
    if data.trim_ascii() == b"[DONE]" {
        return Signal::None;
    }
    if t.committed && quiet(data) {
        return Signal::None;
    }
    let mut ev = Event::default();
    let read = ev.read(data, t).then_some(());
    if let Err(signal) = t.accept(
        data,
        read,
        "event before the first content",
        "type, message and its model, usage, delta.stop_reason",
    ) {
        return signal;
    }
    match ev.kind.as_deref().unwrap_or_default() {
        b"message_start" => {
            if t.model.is_none() {
                t.model = ev.model;
            }
            if let Some(u) = ev.head_usage {
                t.usage = Some(u.usage(t.usage.as_ref()));
            }
            Signal::None
        }
        b"content_block_start" => match ev.block_filled {
            true => t.commit(),
            false => Signal::None,
        },
        b"content_block_delta" => t.commit(),
        b"message_delta" => {
            if let Some(u) = ev.usage {
                t.usage = Some(u.usage(t.usage.as_ref()));
            }
            match ev.stop_reason {
                Some(reason) => {
                    t.finish_reason = Some(reason);
                    t.commit()
                }
                None => Signal::None,
            }
        }
        b"message_stop" => {
            let stopped = t.finish_reason.as_deref().is_some_and(|r| r != "error");
            t.done = stopped;
            match stopped {
                true => t.commit(),
                false => Signal::None,
            }
        }
        b"error" => {
            let error = match events::value(data, ev.error) {
                Some(e) => error_from_value(&e),
                None => UpstreamError {
                    message: Some("the stream sent an error event".into()),
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
        // `ping`, `content_block_stop`, and whatever comes next.
        _ => Signal::None,
    }
}

/// After commit, an event whose reading would change nothing: its `type`
/// cannot be `message_start`, `message_delta`, `message_stop` or `error`
/// (the only ones that record anything once committed; a content block's
/// events and `ping` do not), since none of those words is in its bytes and
/// it has no `\u` escape that could spell one. Most of a stream's events
/// are content deltas, and they are not read.
fn quiet(data: &[u8]) -> bool {
    use memchr::memmem::Finder;
    use std::sync::LazyLock;
    static MESSAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"message_"));
    static ERROR: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"error"));
    MESSAGE.find(data).is_none() && ERROR.find(data).is_none() && !super::has_unicode_escape(data)
}

/// `event: error` in Anthropic's shape; the message starts with the cause.
pub(super) fn terminal_event(code: &str, message: &str) -> Vec<u8> {
    let event = json!({
        "type": "error",
        "error": {"type": "api_error", "message": format!("{code}: {message}")},
    });
    super::data_event(Some("error"), &event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::Dialect;

    fn named(kind: &str, data: Value) -> Vec<u8> {
        let mut data = data;
        data["type"] = Value::from(kind);
        format!("event: {kind}\ndata: {data}\n\n").into_bytes()
    }

    #[test]
    fn a_whole_stream() {
        let mut t = SseTracker::for_dialect(Dialect::Messages);
        let start = named(
            "message_start",
            json!({"message": {"model": "claude", "content": [], "usage": {"input_tokens": 7, "output_tokens": 1}}}),
        );
        assert_eq!(t.feed(&start), Signal::None);
        assert_eq!(
            t.feed(&named(
                "content_block_start",
                json!({"index": 0, "content_block": {"type": "text", "text": ""}})
            )),
            Signal::None
        );
        assert_eq!(t.feed(&named("ping", json!({}))), Signal::None);
        assert_eq!(
            t.feed(&named(
                "content_block_delta",
                json!({"delta": {"type": "text_delta", "text": "Hi"}})
            )),
            Signal::Commit
        );
        assert_eq!(t.model.as_deref(), Some("claude"));
        assert!(!t.complete());
        t.feed(&named(
            "message_delta",
            json!({"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 4}}),
        ));
        assert!(!t.complete(), "message_stop is the end");
        t.feed(&named("message_stop", json!({})));
        assert!(t.complete());
        let u = t.usage.clone().unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.total_tokens), (7, 4, 11));
    }

    #[test]
    fn an_error_event_before_content_fails_and_one_after_is_kept() {
        let mut t = SseTracker::for_dialect(Dialect::Messages);
        t.feed(&named("message_start", json!({"message": {"model": "claude"}})));
        let s = t.feed(&named(
            "error",
            json!({"error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ));
        assert!(matches!(s, Signal::Error(e) if e.error_type() == Some("overloaded_error")));
        // A message_stop without a stop_reason is no proper end.
        let mut t = SseTracker::for_dialect(Dialect::Messages);
        t.feed(&named("content_block_delta", json!({"delta": {"text": "x"}})));
        t.feed(&named("message_stop", json!({})));
        assert!(!t.complete());
        // A tool call commits at its block.
        let mut t = SseTracker::for_dialect(Dialect::Messages);
        let tool = named(
            "content_block_start",
            json!({"content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}}),
        );
        assert_eq!(t.feed(&tool), Signal::Commit);
    }

    #[test]
    fn error_bodies_are_anthropic_shaped() {
        let body = error_body(
            ErrorBody {
                kind: "upstream_error",
                code: "fallback_exhausted",
                param: None,
                message: "all failed",
            },
            Some(json!({"attempts": []})),
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "api_error");
        assert_eq!(v["error"]["message"], "all failed");
        assert_eq!(v["error"]["metadata"]["attempts"], json!([]));
    }

    #[test]
    fn after_commit_an_escaped_type_is_still_read() {
        // The quick check after commit looks for the words of the types
        // that record something; a `\u` escape could spell one unseen, so
        // such an event is read in full.
        let mut t = SseTracker::for_dialect(Dialect::Messages);
        let delta = named(
            "content_block_delta",
            json!({"index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
        );
        assert_eq!(t.feed(&delta), Signal::Commit);
        assert_eq!(t.feed(&delta), Signal::None);
        t.feed(b"event: message_delta\ndata: {\"type\":\"message\\u005fdelta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n");
        assert_eq!(t.finish_reason.as_deref(), Some("end_turn"));
        assert_eq!(t.usage.as_ref().map(|u| u.completion_tokens), Some(2));
        assert!(!t.complete());
        t.feed(b"event: message_stop\ndata: {\"type\":\"m\\u0065ssage_stop\"}\n\n");
        assert!(t.complete());
        // An error after commit is kept however it is spelled.
        let mut t = SseTracker::for_dialect(Dialect::Messages);
        t.feed(&delta);
        t.feed(b"event: error\ndata: {\"type\":\"\\u0065rror\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n");
        assert!(t.error.is_some());
    }
}
