//! Reading one SSE event's JSON for the stream trackers of the dialects
//! whose events are objects with a `type` (Responses, Messages): one pass
//! of [`Reader`] checks the event as serde_json would (a client's parser)
//! and reads the members the judgement needs; they are decoded only when
//! kept, and nothing else is built.
//!
//! An event that is not such JSON, or a known member of the wrong type,
//! reads as `None`: before commit that decides the attempt
//! ([`SseTracker::accept`](crate::stream::SseTracker::accept)); after commit
//! a malformed event is the client's to see and is skipped.

use crate::json::scan::{self, ValueKind};
use crate::json::valid::{Reader, ValueAt};
use std::borrow::Cow;
use std::ops::Range;

/// `key` is `want`: compared as whole words, where a `match` on byte-string
/// patterns compares byte by byte (a decision tree over the bytes, thirty
/// instructions for `sequence_number`).
#[inline(always)]
pub(super) fn is<const N: usize>(key: &[u8], want: &[u8; N]) -> bool {
    <&[u8; N]>::try_from(key).is_ok_and(|key| key == want)
}

/// A value that holds something: a non-empty string, array or object, a
/// number or `true` (not `null`, `false`, `""`, `[]`, `{}`).
pub(super) fn filled(data: &[u8], v: &ValueAt) -> bool {
    let inner = || {
        data.get(v.span.start + 1..v.span.end.saturating_sub(1))
            .unwrap_or_default()
    };
    match v.kind {
        ValueKind::Null | ValueKind::False => false,
        ValueKind::String => !inner().is_empty(),
        ValueKind::Array | ValueKind::Object => !inner().trim_ascii().is_empty(),
        ValueKind::Number | ValueKind::True => true,
    }
}

/// A string value decoded (`Ok(None)` for `null`); `Err` for another type
/// or a string that does not decode.
pub(super) fn text(data: &[u8], v: &ValueAt) -> Result<Option<String>, ()> {
    match word(data, v)? {
        None => Ok(None),
        Some(w) => String::from_utf8(w.into_owned()).map(Some).map_err(drop),
    }
}

/// A string value's text as bytes (`Ok(None)` for `null`): borrowed from
/// `data` when it has no escape (the reader checked its bytes and, for the
/// whole event, its UTF-8, and saw whether it has one), decoded when it
/// has; `Err` for another type or a string that does not decode (a lone
/// surrogate).
pub(super) fn word<'a>(data: &'a [u8], v: &ValueAt) -> Result<Option<Cow<'a, [u8]>>, ()> {
    match v.kind {
        ValueKind::Null => Ok(None),
        ValueKind::String => {
            let literal = data.get(v.span.clone()).ok_or(())?;
            if !v.escaped {
                let inner = literal.get(1..literal.len().saturating_sub(1)).ok_or(())?;
                return Ok(Some(Cow::Borrowed(inner)));
            }
            match scan::decode_string(literal).map_err(drop)? {
                Cow::Borrowed(s) => Ok(Some(Cow::Borrowed(s.as_bytes()))),
                Cow::Owned(s) => Ok(Some(Cow::Owned(s.into_bytes()))),
            }
        }
        _ => Err(()),
    }
}

/// The value is a string that decodes, or `null` ([`text`] without
/// keeping it).
pub(super) fn valid_text(data: &[u8], v: &ValueAt) -> bool {
    word(data, v).is_ok()
}

/// The value is the string `want` (escapes decoded).
pub(super) fn is_text(data: &[u8], v: &ValueAt, want: &str) -> bool {
    v.kind == ValueKind::String && word(data, v).is_ok_and(|w| w.as_deref() == Some(want.as_bytes()))
}

/// A number value as a `u64` (`Ok(None)` for `null`); `Err` for another
/// type or a number that is not a non-negative integer (`-0` is 0, as
/// serde_json reads it).
pub(super) fn unsigned(data: &[u8], v: &ValueAt) -> Result<Option<u64>, ()> {
    match v.kind {
        ValueKind::Null => Ok(None),
        ValueKind::Number => {
            // The reader checked it is a JSON number: only its digits, a
            // sign, a fraction or an exponent are left to look at.
            let digits = data.get(v.span.clone()).ok_or(())?;
            if digits == b"-0" {
                return Ok(Some(0));
            }
            digits
                .iter()
                .try_fold(0u64, |n, &d| match d {
                    b'0'..=b'9' => n.checked_mul(10)?.checked_add(u64::from(d - b'0')),
                    _ => None,
                })
                .map(Some)
                .ok_or(())
        }
        _ => Err(()),
    }
}

/// `usage` of a Responses or Messages event at `at` (an object, or
/// `null`), read in the event's pass: one past its end, and what it says;
/// `None` when it is another type or does not read as serde read it
/// (`input_tokens`, `output_tokens`, `total_tokens` each a `u64` or
/// `null`, none twice).
pub(super) fn usage(r: &mut Reader<'_>, at: usize) -> Option<(usize, Option<super::responses::ResponsesUsage>)> {
    if r.byte(at) != Some(b'{') {
        let v = r.value(at)?;
        return (v.kind == ValueKind::Null).then_some((v.span.end, None));
    }
    let data = r.bytes();
    let mut counts = [None; 3];
    let mut seen = [false; 3];
    let end = r.object(at, |r, key, at| {
        let v = r.value(at)?;
        let slot = match () {
            _ if is(key, b"input_tokens") => 0,
            _ if is(key, b"output_tokens") => 1,
            _ if is(key, b"total_tokens") => 2,
            _ => return Some(v.span.end),
        };
        let (Some(seen), Some(count)) = (seen.get_mut(slot), counts.get_mut(slot)) else {
            return None;
        };
        if std::mem::replace(seen, true) {
            return None; // serde refuses a field twice
        }
        *count = unsigned(data, &v).ok()?;
        Some(v.span.end)
    })?;
    let [input, output, total] = counts;
    Some((end, Some(super::responses::ResponsesUsage::new(input, output, total))))
}

/// The non-null value at `span` as JSON (for an error object, on the
/// failure path).
pub(super) fn value(data: &[u8], span: Option<Range<usize>>) -> Option<serde_json::Value> {
    span.filter(|span| data.get(span.clone()) != Some(b"null"))
        .and_then(|span| serde_json::from_slice(data.get(span)?).ok())
        .filter(|v: &serde_json::Value| !v.is_null())
}

/// The one-pass readers of Responses and Messages events against the serde
/// readers they replaced (kept here verbatim as the oracle), on random
/// event-shaped values: the signal and everything the tracker records must
/// agree.
#[cfg(test)]
mod oracle {
    use crate::dialect::Dialect;
    use crate::inspect::error_from_value;
    use crate::report::UpstreamError;
    use crate::stream::{Signal, SseTracker};
    use proptest::prelude::*;
    use serde::Deserialize;
    use serde_json::{json, Map, Value};
    use std::borrow::Cow;

    type ResponsesUsage = super::super::responses::ResponsesUsage;

    #[derive(Deserialize)]
    struct REvent<'a> {
        #[serde(rename = "type", borrow, default)]
        kind: Option<Cow<'a, str>>,
        #[serde(default)]
        sequence_number: Option<u64>,
        #[serde(default)]
        delta: Option<Value>,
        #[serde(default)]
        text: Option<Value>,
        #[serde(default)]
        arguments: Option<Value>,
        #[serde(default)]
        item: Option<Value>,
        #[serde(default)]
        part: Option<Value>,
        #[serde(default)]
        response: Option<RHead>,
        #[serde(default)]
        code: Option<Value>,
        #[serde(default)]
        message: Option<Value>,
    }

    #[derive(Deserialize)]
    struct RHead {
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        model: Option<String>,
        #[serde(default)]
        status: Option<String>,
        #[serde(default)]
        error: Option<Value>,
        #[serde(default)]
        usage: Option<ResponsesUsage>,
    }

    fn filled(v: &Value) -> bool {
        match v {
            Value::Null | Value::Bool(false) => false,
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
            _ => true,
        }
    }

    fn carries_output(v: &Value) -> bool {
        ["text", "arguments", "content", "refusal"]
            .iter()
            .any(|k| v.get(k).is_some_and(filled))
    }

    #[derive(Deserialize)]
    struct MEvent<'a> {
        #[serde(rename = "type", borrow, default)]
        kind: Option<Cow<'a, str>>,
        #[serde(default)]
        message: Option<MHead>,
        #[serde(default)]
        content_block: Option<Value>,
        #[serde(default)]
        delta: Option<MDelta>,
        #[serde(default)]
        usage: Option<ResponsesUsage>,
        #[serde(default)]
        error: Option<Value>,
    }

    #[derive(Deserialize)]
    struct MHead {
        #[serde(default)]
        model: Option<String>,
        #[serde(default)]
        usage: Option<ResponsesUsage>,
    }

    #[derive(Deserialize)]
    struct MDelta {
        #[serde(default)]
        stop_reason: Option<String>,
    }

    fn old_block_filled(block: &Value) -> bool {
        if block.get("type").and_then(Value::as_str) == Some("tool_use") {
            return true;
        }
        ["text", "thinking", "data"]
            .iter()
            .any(|k| block.get(k).and_then(Value::as_str).is_some_and(|s| !s.is_empty()))
    }

    fn old_responses(t: &mut SseTracker, data: &[u8]) -> Signal {
        if data.trim_ascii() == b"[DONE]" {
            // Not OpenAI's, but some proxies send it: accepted, and no end.
            return Signal::None;
        }
        let ev: REvent<'_> = match serde_json::from_slice(data) {
            Ok(e) => e,
            Err(e) if !t.committed => {
                return Signal::Error(UpstreamError {
                    message: Some(format!("malformed stream event before the first output: {e}")),
                    ..UpstreamError::default()
                })
            }
            Err(_) => return Signal::None,
        };
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
            response_error = head.error.filter(|e| !e.is_null());
        }
        let kind = ev.kind.as_deref().unwrap_or("");
        match kind {
            "response.created" | "response.in_progress" | "response.queued" => Signal::None,
            "response.completed" | "response.incomplete" => {
                t.done = true;
                t.finish_reason = Some(status.unwrap_or_else(|| kind.trim_start_matches("response.").to_owned()));
                t.commit()
            }
            "response.failed" | "error" => {
                let error = match (response_error, kind) {
                    (Some(e), _) => error_from_value(&e),
                    (None, "error") => error_from_value(&json!({"code": ev.code, "message": ev.message})),
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
                let output = ev.delta.as_ref().is_some_and(filled)
                    || ev.text.as_ref().is_some_and(filled)
                    || ev.arguments.as_ref().is_some_and(filled)
                    || ev.item.as_ref().is_some_and(carries_output)
                    || ev.part.as_ref().is_some_and(carries_output);
                if output {
                    t.commit()
                } else {
                    Signal::None
                }
            }
        }
    }

    fn old_messages(t: &mut SseTracker, data: &[u8]) -> Signal {
        if data.trim_ascii() == b"[DONE]" {
            return Signal::None;
        }
        let ev: MEvent<'_> = match serde_json::from_slice(data) {
            Ok(e) => e,
            Err(e) if !t.committed => {
                return Signal::Error(UpstreamError {
                    message: Some(format!("malformed stream event before the first content: {e}")),
                    ..UpstreamError::default()
                })
            }
            Err(_) => return Signal::None,
        };
        match ev.kind.as_deref().unwrap_or("") {
            "message_start" => {
                if let Some(head) = ev.message {
                    if t.model.is_none() {
                        t.model = head.model;
                    }
                    if let Some(u) = head.usage {
                        t.usage = Some(u.usage(t.usage.as_ref()));
                    }
                }
                Signal::None
            }
            "content_block_start" => match ev.content_block.as_ref().is_some_and(old_block_filled) {
                true => t.commit(),
                false => Signal::None,
            },
            "content_block_delta" => t.commit(),
            "message_delta" => {
                if let Some(u) = ev.usage {
                    t.usage = Some(u.usage(t.usage.as_ref()));
                }
                match ev.delta.and_then(|d| d.stop_reason) {
                    Some(reason) => {
                        t.finish_reason = Some(reason);
                        t.commit()
                    }
                    None => Signal::None,
                }
            }
            "message_stop" => {
                let stopped = t.finish_reason.as_deref().is_some_and(|r| r != "error");
                t.done = stopped;
                match stopped {
                    true => t.commit(),
                    false => Signal::None,
                }
            }
            "error" => {
                let error = match ev.error.filter(|e| !e.is_null()) {
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

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            1 => Just(Value::Null),
            1 => any::<bool>().prop_map(Value::from),
            1 => (0u32..100).prop_map(Value::from),
            1 => Just(json!(-1)),
            1 => Just(json!(2.5)),
            2 => prop::sample::select(vec!["", "tool_use", "completed", "end_turn", "hi", "\u{e9}\"\n"]).prop_map(Value::from),
            1 => Just(json!([])),
            1 => Just(json!({})),
            1 => Just(json!([1])),
            1 => Just(json!({"message": "boom", "code": "server_error"})),
        ]
    }

    /// An object of some of `keys`, each a scalar or (for the `nested`
    /// ones) an object of the same kind.
    fn object(keys: &'static [&'static str], inner: &'static [&'static str]) -> impl Strategy<Value = Value> {
        prop::collection::vec((prop::sample::select(keys), any::<bool>(), scalar()), 0..5)
            .prop_flat_map(move |picked| {
                let word = prop::sample::select(vec!["tool_use", "end_turn", "completed", "x"]).prop_map(Value::from);
                let nested = prop::collection::vec((prop::sample::select(inner), prop_oneof![scalar(), word]), 0..4);
                (Just(picked), nested)
            })
            .prop_map(|(picked, nested)| {
                let inner: Map<String, Value> = nested.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                let mut m = Map::new();
                for (k, as_object, v) in picked {
                    m.insert(k.to_owned(), if as_object { Value::Object(inner.clone()) } else { v });
                }
                Value::Object(m)
            })
    }

    const RESPONSES: &[&str] = &[
        "response.created",
        "response.in_progress",
        "response.queued",
        "response.output_text.delta",
        "response.output_item.added",
        "response.content_part.added",
        "response.completed",
        "response.incomplete",
        "response.failed",
        "error",
        "other",
    ];
    const MESSAGES: &[&str] = &[
        "message_start",
        "content_block_start",
        "content_block_delta",
        "message_delta",
        "message_stop",
        "ping",
        "error",
        "other",
    ];

    fn event(
        types: &'static [&'static str],
        keys: &'static [&'static str],
        inner: &'static [&'static str],
    ) -> impl Strategy<Value = Value> {
        (
            prop::option::of(prop_oneof![6 => prop::sample::select(types).prop_map(Value::from), 1 => scalar()]),
            object(keys, inner),
        )
            .prop_map(|(kind, mut v)| {
                if let (Some(k), Some(o)) = (kind, v.as_object_mut()) {
                    o.insert("type".into(), k);
                }
                v
            })
    }

    /// serde reads a struct from an array too; the scanner, as a typed
    /// client would, does not: such events are malformed for both here.
    fn struct_from_array(v: &Value, paths: &[&[&str]]) -> bool {
        paths.iter().any(|path| {
            let mut at = v;
            for key in *path {
                match at.get(key) {
                    Some(next) => at = next,
                    None => return false,
                }
            }
            at.is_array()
        })
    }

    fn state(t: &SseTracker) -> String {
        format!(
            "{:?} {:?} {:?} {:?} {:?} {:?} {} {}",
            t.model, t.response_id, t.sequence, t.usage, t.finish_reason, t.error, t.done, t.committed
        )
    }

    fn compare(
        dialect: Dialect,
        value: &Value,
        committed: bool,
        arrays: &[&[&str]],
        old: fn(&mut SseTracker, &[u8]) -> Signal,
        new: fn(&mut SseTracker, &[u8]) -> Signal,
    ) -> Result<(), TestCaseError> {
        let data = serde_json::to_vec(value).unwrap();
        let mut was = SseTracker::for_dialect(dialect);
        let mut now = SseTracker::for_dialect(dialect);
        if committed {
            was.force_commit();
            now.force_commit();
        }
        let expected = if struct_from_array(value, arrays) {
            if committed {
                Signal::None
            } else {
                Signal::Error(UpstreamError::default())
            }
        } else {
            old(&mut was, &data)
        };
        let got = new(&mut now, &data);
        let text = String::from_utf8_lossy(&data);
        let malformed = |e: &UpstreamError| e.message().is_some_and(|m| m.starts_with("malformed"));
        match (&expected, &got) {
            // The reasons are worded apart; that both refuse is what counts.
            (Signal::Error(was), Signal::Error(e)) if struct_from_array(value, arrays) || malformed(was) => {
                prop_assert!(malformed(e), "{text}");
            }
            _ => {
                prop_assert_eq!(format!("{expected:?}"), format!("{got:?}"), "{}", text);
                if !struct_from_array(value, arrays) {
                    prop_assert_eq!(state(&was), state(&now), "{}", text);
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1500))]

        #[test]
        fn responses_events_read_as_serde_json_did(
            value in event(
                RESPONSES,
                &["sequence_number", "delta", "text", "arguments", "item", "part", "response", "code", "message"],
                &["id", "model", "status", "error", "usage", "text", "arguments", "content", "refusal", "input_tokens"],
            ),
            committed in any::<bool>(),
        ) {
            compare(Dialect::Responses, &value, committed, &[&["response"], &["response", "usage"]], old_responses, super::super::responses::event)?;
        }

        #[test]
        fn messages_events_read_as_serde_json_did(
            value in event(
                MESSAGES,
                &["message", "content_block", "delta", "usage", "error", "index"],
                &["model", "usage", "type", "text", "thinking", "data", "stop_reason", "output_tokens"],
            ),
            committed in any::<bool>(),
        ) {
            compare(Dialect::Messages, &value, committed, &[&["message"], &["message", "usage"], &["delta"], &["usage"]], old_messages, super::super::messages::event)?;
        }
    }
}
