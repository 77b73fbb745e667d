//! What the engine learns from an upstream response body before deciding.
//!
//! Only the keys that matter are looked at (`model`, `provider`, `error`,
//! `usage`, and `finish_reason` inside `choices`), by the scanner, in one
//! pass; serde parses only an error object, on the failure path. Like the
//! request scanner, it checks the top level and each choice's members
//! strictly and values nested deeper (a choice's `message`) by their
//! brackets and strings only: a body cut short anywhere is not a
//! completion, but one with, say, a stray comma inside a message's content
//! object is passed on as the upstream sent it.

use crate::json::scan::{self, ValueKind};
use crate::report::{UpstreamAttempt, UpstreamError, Usage};
use serde::Deserialize;
use serde_json::Value;
use std::ops::Range;

/// Longest upstream text (message, raw) kept in a report.
const MAX_TEXT: usize = 1024;

#[derive(Debug, Default, Clone)]
pub(crate) struct BodyFacts {
    /// The body is a JSON object.
    pub(crate) json: bool,
    pub(crate) model: Option<String>,
    pub(crate) provider: Option<String>,
    pub(crate) error: Option<UpstreamError>,
    /// Number of entries when `choices` is an array.
    pub(crate) choices: Option<usize>,
    /// Some choice has `finish_reason: "error"`.
    pub(crate) finish_error: bool,
    pub(crate) usage: Option<Usage>,
    /// `openrouter_metadata.attempts`.
    pub(crate) upstream_attempts: Vec<UpstreamAttempt>,
}

#[derive(Deserialize)]
struct ErrorObject {
    #[serde(default)]
    code: Option<Value>,
    #[serde(default)]
    message: Option<Value>,
    #[serde(default, rename = "type")]
    kind: Option<Value>,
    #[serde(default)]
    metadata: Option<Metadata>,
}

#[derive(Deserialize)]
struct Metadata {
    #[serde(default)]
    error_type: Option<Value>,
    #[serde(default)]
    provider_name: Option<Value>,
    #[serde(default)]
    raw: Option<Value>,
    #[serde(default)]
    reasons: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    flagged_input: Option<serde::de::IgnoredAny>,
}

impl BodyFacts {
    /// Inspects a buffered response body. Never fails: what cannot be read is
    /// simply absent (`json == false` when the body is not a JSON object).
    pub(crate) fn inspect(body: &[u8]) -> Self {
        let mut facts = BodyFacts::default();
        let mut common = Common::default();
        // `choices` is most of a completion: it is read in the scanner's own
        // pass (only `finish_reason` and `error` matter), not skipped and
        // then parsed again.
        let mut choices = Choices::default();
        let mut read_choices = |start| choices.read(body, start);
        let watch = scan::Watch::Value("choices", &mut read_choices);
        let scanned = scan::scan_object_watching(body, watch, |m| {
            common.member(&mut facts, body, &m);
            Ok::<(), ()>(())
        });
        if scanned.is_err() {
            return BodyFacts::default();
        }
        common.finish(&mut facts, body, USAGE_CHAT);
        facts.choices = choices.count;
        if let (Some(_), Some(failed)) = (facts.choices, choices.failed) {
            facts.finish_error = true;
            if facts.error.is_none() {
                facts.error = Some(
                    failed
                        .and_then(|span| error_at(&body[span]))
                        .unwrap_or_else(|| UpstreamError {
                            message: Some("choice finished with finish_reason \"error\"".into()),
                            ..UpstreamError::default()
                        }),
                );
            }
        }
        facts
    }

    /// Reads a Responses answer: good when `object` is `"response"`, its
    /// `status` one of `completed`, `incomplete`, `queued`, `in_progress`,
    /// and `error` null or absent. `choices` is then `Some(1)` (one
    /// answer), else `None`; `status: "failed"` without an error object is
    /// still an error.
    pub(crate) fn inspect_responses(body: &[u8]) -> Self {
        let mut facts = BodyFacts::default();
        let mut common = Common::default();
        let (mut object, mut status) = (None, None);
        let scanned = scan::scan_object(body, |m| {
            if !common.member(&mut facts, body, &m) {
                match (&*m.key, m.kind) {
                    (b"object", ValueKind::String) => object = text(body, &m),
                    (b"status", ValueKind::String) => status = text(body, &m),
                    _ => {}
                }
            }
            Ok::<(), ()>(())
        });
        if scanned.is_err() {
            return BodyFacts::default();
        }
        common.finish(&mut facts, body, USAGE_IN_OUT);
        let good_status = matches!(
            status.as_deref(),
            Some("completed" | "incomplete" | "queued" | "in_progress")
        );
        if facts.error.is_none() && status.as_deref() == Some("failed") {
            facts.error = Some(UpstreamError {
                message: Some("the response failed (status \"failed\")".into()),
                ..UpstreamError::default()
            });
        }
        if object.as_deref() == Some("response") && good_status && facts.error.is_none() {
            facts.choices = Some(1);
        }
        facts
    }

    /// Reads an Anthropic Messages answer: good when `type` is `"message"`
    /// with a `content` array (`choices` is then `Some(1)`); `type:
    /// "error"` carries its `error`.
    pub(crate) fn inspect_messages(body: &[u8]) -> Self {
        let mut facts = BodyFacts::default();
        let mut common = Common::default();
        let (mut kind, mut content) = (None, false);
        let scanned = scan::scan_object(body, |m| {
            if !common.member(&mut facts, body, &m) {
                match (&*m.key, m.kind) {
                    (b"type", ValueKind::String) => kind = text(body, &m),
                    (b"content", ValueKind::Array) => content = true,
                    _ => {}
                }
            }
            Ok::<(), ()>(())
        });
        if scanned.is_err() {
            return BodyFacts::default();
        }
        common.finish(&mut facts, body, USAGE_IN_OUT);
        if facts.error.is_none() && kind.as_deref() == Some("error") {
            facts.error = Some(UpstreamError {
                message: Some("the answer is an error (type \"error\")".into()),
                ..UpstreamError::default()
            });
        }
        if kind.as_deref() == Some("message") && content && facts.error.is_none() {
            facts.choices = Some(1);
        }
        facts
    }

    /// Reads an embeddings answer: good when `data` is a non-empty array
    /// (`choices` counts its entries) and there is no `error`.
    pub(crate) fn inspect_embeddings(body: &[u8]) -> Self {
        let mut facts = BodyFacts::default();
        let mut common = Common::default();
        let mut data = None;
        let mut count = |start| -> Result<usize, scan::ScanError> {
            let mut n = 0usize;
            let end = scan::scan_array_at(body, start, |at| {
                n += 1;
                // Each entry holds a vector: long runs of numbers.
                scan::scan_numeric_value(body, at).map(|(end, _)| end)
            })?;
            data = Some(n);
            Ok(end)
        };
        let watch = scan::Watch::Value("data", &mut count);
        let scanned = scan::scan_object_watching(body, watch, |m| {
            common.member(&mut facts, body, &m);
            Ok::<(), ()>(())
        });
        if scanned.is_err() {
            return BodyFacts::default();
        }
        common.finish(&mut facts, body, USAGE_CHAT);
        facts.choices = data.filter(|_| facts.error.is_none());
        facts
    }

    /// A short, printable excerpt of a body that is not JSON (an HTML error
    /// page from a proxy, say), so a report can still say what came back.
    pub(crate) fn text_excerpt(body: &[u8]) -> Option<String> {
        let text = std::str::from_utf8(body).ok()?.trim();
        (!text.is_empty()).then(|| truncate(text.to_owned()))
    }
}

/// The members every answer shape reads the same way: the served model
/// and provider, a top-level `error` (`null` is none), `usage` and
/// OpenRouter's metadata. Each `inspect_*` passes its members here first and
/// reads only its own.
#[derive(Default)]
struct Common {
    error: Option<Range<usize>>,
    usage: Option<Range<usize>>,
    metadata: Option<Range<usize>>,
}

impl Common {
    /// Takes `m` when it is one of the shared members; false otherwise.
    fn member(&mut self, facts: &mut BodyFacts, body: &[u8], m: &scan::Member<'_>) -> bool {
        match (&*m.key, m.kind) {
            (b"model", ValueKind::String) => facts.model = text(body, m),
            (b"provider", ValueKind::String) => facts.provider = text(body, m),
            (b"error", ValueKind::Null) => {}
            (b"error", _) => self.error = Some(m.value.clone()),
            (b"usage", ValueKind::Object) => self.usage = Some(m.value.clone()),
            (b"openrouter_metadata", ValueKind::Object) => self.metadata = Some(m.value.clone()),
            _ => return false,
        }
        true
    }

    /// Fills `facts` from a body that scanned whole.
    fn finish(self, facts: &mut BodyFacts, body: &[u8], usage_keys: UsageKeys) {
        facts.json = true;
        facts.usage = self.usage.and_then(|span| usage(&body[span], usage_keys));
        if let Some(span) = self.metadata {
            facts.upstream_attempts = upstream_attempts(&body[span]);
        }
        // An error object that does not parse is still an error.
        facts.error = self.error.map(|span| error_at(&body[span]).unwrap_or_default());
    }
}

/// A string member's decoded text; `None` when it does not decode.
fn text(body: &[u8], m: &scan::Member<'_>) -> Option<String> {
    scan::decode_string(&body[m.value.clone()]).ok().map(|s| s.into_owned())
}

/// The error object (or string) `json` holds, if it parses.
fn error_at(json: &[u8]) -> Option<UpstreamError> {
    serde_json::from_slice::<Value>(json).ok().map(|v| error_from_value(&v))
}

/// Reads an OpenRouter (`{code, message, metadata: {error_type, provider_name,
/// raw}}`) or OpenAI (`{message, type, param, code}`) error object; a bare
/// string becomes the message.
pub(crate) fn error_from_value(v: &Value) -> UpstreamError {
    if let Some(s) = v.as_str() {
        return UpstreamError {
            message: Some(truncate(s.to_owned())),
            ..UpstreamError::default()
        };
    }
    let Ok(obj) = ErrorObject::deserialize(v) else {
        return UpstreamError::default();
    };
    let meta = obj.metadata;
    let code = obj.code.as_ref().and_then(scalar_text);
    let string_code = obj.code.as_ref().and_then(Value::as_str).map(str::to_owned);
    let error_type = meta
        .as_ref()
        .and_then(|m| m.error_type.as_ref())
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or(string_code)
        .or_else(|| obj.kind.as_ref().and_then(Value::as_str).map(str::to_owned));
    UpstreamError {
        code,
        message: obj.message.as_ref().and_then(scalar_text).map(truncate),
        error_type,
        provider_name: meta
            .as_ref()
            .and_then(|m| m.provider_name.as_ref())
            .and_then(Value::as_str)
            .map(str::to_owned),
        raw: meta.as_ref().and_then(|m| m.raw.as_ref()).and_then(|raw| match raw {
            Value::Null => None,
            Value::String(s) => Some(truncate(s.clone())),
            other => Some(truncate(other.to_string())),
        }),
        moderation: meta
            .as_ref()
            .is_some_and(|m| m.reasons.is_some() || m.flagged_input.is_some()),
    }
}

/// What `choices` says, read in the scanner's pass.
#[derive(Default)]
struct Choices {
    /// Entries, when the array was read and every one is an object (other
    /// choices are not a completion we can vouch for).
    count: Option<usize>,
    /// The first entry with `finish_reason: "error"`, and the span of its
    /// `error` when it has one.
    failed: Option<Option<Range<usize>>>,
}

impl Choices {
    /// Reads the array at `start`; returns one past its end. A second
    /// `choices` (invalid, but seen) is read afresh.
    fn read(&mut self, body: &[u8], start: usize) -> Result<usize, scan::ScanError> {
        let (mut count, mut objects, mut failed) = (0usize, true, None);
        let end = scan::scan_array_at(body, start, |at| {
            count += 1;
            if body.get(at) != Some(&b'{') {
                objects = false;
                return scan::scan_value(body, at).map(|(end, _)| end);
            }
            let mut finished_in_error = false;
            let mut error = None;
            let end = scan::scan_object_at(body, at, |m| {
                match (&*m.key, m.kind) {
                    (b"finish_reason", ValueKind::String) => {
                        // Sticky: a duplicate cannot turn an error into a success.
                        finished_in_error |= scan::decode_string(&body[m.value]).is_ok_and(|r| r == "error");
                    }
                    (b"error", ValueKind::Null) => {}
                    (b"error", _) => error = Some(m.value),
                    _ => {}
                }
                Ok::<(), std::convert::Infallible>(())
            })
            .map_err(|e| match e {
                scan::ScanFail::Scan(e) => e,
                scan::ScanFail::Callback(never) => match never {},
            })?;
            if finished_in_error && failed.is_none() {
                failed = Some(error);
            }
            Ok(end)
        })?;
        *self = Choices {
            count: objects.then_some(count),
            failed,
        };
        Ok(end)
    }
}

/// The names of `usage`'s prompt, completion and total counts.
type UsageKeys = [&'static [u8]; 3];
const USAGE_CHAT: UsageKeys = [b"prompt_tokens", b"completion_tokens", b"total_tokens"];
/// Responses and Messages (which has no total: it is the sum).
const USAGE_IN_OUT: UsageKeys = [b"input_tokens", b"output_tokens", b"total_tokens"];

/// Reads `usage`'s token counts; `None` when one of them is not a
/// non-negative integer.
fn usage(object: &[u8], keys: UsageKeys) -> Option<Usage> {
    let mut usage = Usage::default();
    let mut total = false;
    scan::scan_object(object, |m| {
        let key = &*m.key;
        let slot = if key == keys[0] {
            &mut usage.prompt_tokens
        } else if key == keys[1] {
            &mut usage.completion_tokens
        } else if key == keys[2] {
            total = true;
            &mut usage.total_tokens
        } else {
            return Ok::<(), ()>(());
        };
        // A JSON number (the scanner validated it) that parses as a u64 is a
        // plain non-negative integer: a sign, fraction or exponent fails.
        if m.kind != ValueKind::Number {
            return Err(());
        }
        let text = std::str::from_utf8(&object[m.value]).map_err(drop)?;
        *slot = text.parse().map_err(drop)?;
        Ok(())
    })
    .ok()?;
    if !total && keys[0] == USAGE_IN_OUT[0] {
        usage.total_tokens = usage.prompt_tokens.saturating_add(usage.completion_tokens);
    }
    Some(usage)
}

/// Reads `openrouter_metadata.attempts`, tolerating shapes that vary.
fn upstream_attempts(metadata: &[u8]) -> Vec<UpstreamAttempt> {
    let Ok(v) = serde_json::from_slice::<Value>(metadata) else {
        return Vec::new();
    };
    let text = |v: &Value, keys: &[&str]| {
        keys.iter()
            .find_map(|k| v.get(*k).and_then(Value::as_str))
            .map(str::to_owned)
    };
    v.get("attempts")
        .and_then(Value::as_array)
        .map(|attempts| {
            attempts
                .iter()
                .map(|a| UpstreamAttempt {
                    model: text(a, &["model", "model_slug"]),
                    provider: text(a, &["provider", "provider_name"]),
                    status: ["status", "status_code", "code"]
                        .iter()
                        .find_map(|k| a.get(*k).and_then(Value::as_u64))
                        .and_then(|s| u16::try_from(s).ok()),
                    error: a.get("error").and_then(|e| match e {
                        Value::String(s) => Some(truncate(s.clone())),
                        Value::Object(_) => e.get("message").and_then(Value::as_str).map(|m| truncate(m.to_owned())),
                        _ => None,
                    }),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(crate) fn truncate(mut s: String) -> String {
    if s.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_openrouter_success() {
        let f = BodyFacts::inspect(
            br#"{"id":"gen-1","provider":"OpenAI","model":"openai/gpt-4o","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"hi"}}]}"#,
        );
        assert!(f.json);
        assert_eq!(f.model.as_deref(), Some("openai/gpt-4o"));
        assert_eq!(f.provider.as_deref(), Some("OpenAI"));
        assert_eq!(f.choices, Some(1));
        assert!(!f.finish_error);
        assert!(f.error.is_none());
        assert!(f.usage.is_none());
        let f = BodyFacts::inspect(
            br#"{"choices":[],"usage":{"prompt_tokens":14,"completion_tokens":7,"total_tokens":21}}"#,
        );
        assert_eq!(f.usage.unwrap().total_tokens, 21);
    }

    #[test]
    fn reads_an_openrouter_error() {
        let f = BodyFacts::inspect(
            br#"{"error":{"code":503,"message":"Provider returned error","metadata":{"error_type":"provider_unavailable","provider_name":"Anthropic","raw":{"detail":"overloaded"}}}}"#,
        );
        let e = f.error.unwrap();
        assert_eq!(e.code(), Some("503"));
        assert_eq!(e.error_type(), Some("provider_unavailable"));
        assert_eq!(e.provider_name(), Some("Anthropic"));
        assert_eq!(e.raw(), Some(r#"{"detail":"overloaded"}"#));
        assert_eq!(f.choices, None);
    }

    #[test]
    fn reads_an_openai_error_and_string_codes() {
        let f = BodyFacts::inspect(
            br#"{"error":{"message":"This model's maximum context length is 8192 tokens","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
        );
        assert_eq!(f.error.unwrap().error_type(), Some("context_length_exceeded"));
    }

    #[test]
    fn finish_reason_error_is_seen() {
        let f = BodyFacts::inspect(
            br#"{"model":"m","choices":[{"finish_reason":"error","error":{"code":"server_error","message":"boom"}}]}"#,
        );
        assert!(f.finish_error);
        assert_eq!(f.error.unwrap().message(), Some("boom"));
    }

    #[test]
    fn choices_and_usage_are_read_strictly() {
        let f = BodyFacts::inspect(br#"{"choices":[{"finish_reason":"stop"}, {"finish_reason":"\u0065rror"}]}"#);
        assert_eq!(f.choices, Some(2));
        assert!(f.finish_error, "an escaped \"error\" is still an error");
        assert_eq!(
            f.error.unwrap().message(),
            Some("choice finished with finish_reason \"error\"")
        );
        // Not objects, or not an array of values: not a completion.
        assert_eq!(BodyFacts::inspect(br#"{"choices":[{"index":0}, 3]}"#).choices, None);
        assert_eq!(BodyFacts::inspect(br#"{"choices":[{"index":0},]}"#).choices, None);
        assert_eq!(BodyFacts::inspect(br#"{"choices":[]}"#).choices, Some(0));
        // Token counts must be non-negative integers.
        let usage = |u: &str| BodyFacts::inspect(format!(r#"{{"choices":[],"usage":{u}}}"#).as_bytes()).usage;
        assert_eq!(
            usage(r#"{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"cost":0.5}"#),
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
                total_tokens: 7
            })
        );
        assert_eq!(usage(r#"{"total_tokens":7}"#).unwrap().total_tokens, 7);
        assert_eq!(usage(r#"{"total_tokens":-7}"#), None);
        assert_eq!(usage(r#"{"total_tokens":7.5}"#), None);
        assert_eq!(usage(r#"{"total_tokens":"7"}"#), None);
    }

    #[test]
    fn a_body_cut_inside_choices_is_not_json() {
        for body in [
            &br#"{"choices":["#[..],
            br#"{"choices":[ "#,
            br#"{"choices":[{},"#,
            br#"{"choices":[{"finish_reason":"stop"}"#,
            br#"{"choices":[{"finish_reason":"#,
        ] {
            let f = BodyFacts::inspect(body);
            assert!(!f.json, "{}", String::from_utf8_lossy(body));
            assert_eq!(f.choices, None);
        }
    }

    #[test]
    fn odd_choices_are_read_safely() {
        // Not an array: not a completion, but the error is still read.
        let f = BodyFacts::inspect(br#"{"error":{"message":"boom"},"choices":{}}"#);
        assert!(f.json);
        assert_eq!(f.choices, None);
        assert_eq!(f.error.unwrap().message(), Some("boom"));
        // A duplicate finish_reason cannot hide an error.
        let f = BodyFacts::inspect(br#"{"choices":[{"finish_reason":"error","finish_reason":"stop"}]}"#);
        assert!(f.finish_error);
        // A second `choices` is read afresh.
        let f = BodyFacts::inspect(br#"{"choices":[{"finish_reason":"error"}],"choices":[{"finish_reason":"stop"}]}"#);
        assert_eq!(f.choices, Some(1));
        assert!(!f.finish_error);
        // A null error keeps the generic message.
        let f = BodyFacts::inspect(br#"{"choices":[{"finish_reason":"error","error":null}]}"#);
        assert_eq!(
            f.error.unwrap().message(),
            Some("choice finished with finish_reason \"error\"")
        );
    }

    #[test]
    fn moderation_metadata_is_flagged() {
        let f = BodyFacts::inspect(
            br#"{"error":{"code":403,"message":"flagged","metadata":{"reasons":["violence"],"flagged_input":"..."}}}"#,
        );
        assert!(f.error.unwrap().is_moderation());
    }

    #[test]
    fn openrouter_metadata_attempts_are_read() {
        let f = BodyFacts::inspect(
            br#"{"model":"b","choices":[{"finish_reason":"stop"}],"openrouter_metadata":{"attempts":[{"model":"a","provider":"Azure","status":503,"error":{"message":"down"}},{"model":"b","provider":"OpenAI","status":200}]}}"#,
        );
        assert_eq!(f.upstream_attempts.len(), 2);
        assert_eq!(f.upstream_attempts[0].provider.as_deref(), Some("Azure"));
        assert_eq!(f.upstream_attempts[0].status, Some(503));
        assert_eq!(f.upstream_attempts[0].error.as_deref(), Some("down"));
        assert_eq!(f.upstream_attempts[1].error, None);
    }

    #[test]
    fn non_json_is_not_json() {
        assert!(!BodyFacts::inspect(b"<html>bad gateway</html>").json);
        assert_eq!(
            BodyFacts::text_excerpt(b" bad gateway \n").as_deref(),
            Some("bad gateway")
        );
    }
}

/// The scanner's reading of a completion against serde_json's, on random
/// completion-shaped bodies: the facts the policy decides on must agree.
#[cfg(test)]
mod dialect_tests {
    use super::*;

    #[test]
    fn responses_answers() {
        let good = BodyFacts::inspect_responses(
            br#"{"id":"resp_1","object":"response","status":"completed","error":null,"model":"m","output":[{"type":"message","content":[{"type":"output_text","text":"hi"}]}],"usage":{"input_tokens":3,"output_tokens":2,"total_tokens":5,"output_tokens_details":{"reasoning_tokens":0}}}"#,
        );
        assert_eq!(good.choices, Some(1));
        assert!(good.error.is_none());
        assert_eq!(good.model.as_deref(), Some("m"));
        assert_eq!(
            good.usage
                .map(|u| (u.prompt_tokens, u.completion_tokens, u.total_tokens)),
            Some((3, 2, 5))
        );
        for status in ["incomplete", "queued", "in_progress"] {
            let body = format!(r#"{{"object":"response","status":"{status}","error":null}}"#);
            assert_eq!(
                BodyFacts::inspect_responses(body.as_bytes()).choices,
                Some(1),
                "{status}"
            );
        }
        let failed = BodyFacts::inspect_responses(
            br#"{"object":"response","status":"failed","error":{"code":"server_error","message":"boom"}}"#,
        );
        assert_eq!(failed.choices, None);
        assert_eq!(failed.error.unwrap().message(), Some("boom"));
        // `failed` without an error object is still an error.
        let failed = BodyFacts::inspect_responses(br#"{"object":"response","status":"failed","error":null}"#);
        assert!(failed.error.is_some() && failed.choices.is_none());
        // A completed status with an error, no status, another object: not good.
        for body in [
            &br#"{"object":"response","status":"completed","error":{"message":"x"}}"#[..],
            br#"{"object":"response","output":[]}"#,
            br#"{"object":"chat.completion","status":"completed"}"#,
            br#"{"object":"response","status":"cancelled"}"#,
        ] {
            assert_eq!(
                BodyFacts::inspect_responses(body).choices,
                None,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // Cut short: not JSON.
        assert!(!BodyFacts::inspect_responses(br#"{"object":"response","status":"completed""#).json);
    }

    #[test]
    fn messages_answers() {
        let good = BodyFacts::inspect_messages(
            br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":4,"output_tokens":6,"cache_read_input_tokens":null}}"#,
        );
        assert_eq!(good.choices, Some(1));
        assert_eq!(good.model.as_deref(), Some("claude"));
        assert_eq!(good.usage.map(|u| u.total_tokens), Some(10));
        let error = BodyFacts::inspect_messages(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_1"}"#,
        );
        assert_eq!(error.choices, None);
        assert_eq!(error.error.unwrap().error_type(), Some("overloaded_error"));
        assert!(BodyFacts::inspect_messages(br#"{"type":"error"}"#).error.is_some());
        // No content: not an answer.
        assert_eq!(
            BodyFacts::inspect_messages(br#"{"type":"message","role":"assistant"}"#).choices,
            None
        );
        assert!(!BodyFacts::inspect_messages(br#"{"type":"message","content":["#).json);
    }

    #[test]
    fn embeddings_answers() {
        let good = BodyFacts::inspect_embeddings(
            br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,-0.2]},{"object":"embedding","index":1,"embedding":"AAAA"}],"model":"e","usage":{"prompt_tokens":2,"total_tokens":2}}"#,
        );
        assert_eq!(good.choices, Some(2));
        assert_eq!(good.model.as_deref(), Some("e"));
        assert_eq!(good.usage.map(|u| u.total_tokens), Some(2));
        let error = BodyFacts::inspect_embeddings(br#"{"error":{"message":"no","code":"server_error"}}"#);
        assert_eq!(error.choices, None);
        assert!(error.error.is_some());
        assert_eq!(
            BodyFacts::inspect_embeddings(br#"{"object":"list","data":[]}"#).choices,
            Some(0)
        );
        assert!(!BodyFacts::inspect_embeddings(br#"{"object":"list","data":[1,"#).json);
    }
}

#[cfg(test)]
mod oracle {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Map};

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z \"\\\\/\n\té€😀]{0,40}",
            Just("error".to_owned()),
            Just("stop".to_owned()),
        ]
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u32>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            text().prop_map(Value::String),
        ]
    }

    fn choice() -> impl Strategy<Value = Value> {
        let object = (
            prop::option::of(prop_oneof![
                3 => prop::sample::select(vec!["stop", "length", "error", "tool_calls"]).prop_map(Value::from),
                1 => scalar(),
            ]),
            prop::option::of(prop_oneof![
                text().prop_map(|m| json!({"code": 502, "message": m})),
                text().prop_map(Value::String),
            ]),
            prop::option::of(text().prop_map(|c| json!({"role": "assistant", "content": c, "tool_calls": [{"id": "x", "function": {"arguments": "{\"a\":[1,2]}"}}]}))),
        )
            .prop_map(|(finish, error, message)| {
                let mut c = Map::new();
                c.insert("index".into(), json!(0));
                if let Some(m) = message {
                    c.insert("message".into(), m);
                }
                if let Some(f) = finish {
                    c.insert("finish_reason".into(), f);
                }
                if let Some(e) = error {
                    c.insert("error".into(), e);
                }
                Value::Object(c)
            });
        prop_oneof![8 => object, 1 => scalar()]
    }

    fn count() -> impl Strategy<Value = Value> {
        prop_oneof![
            4 => any::<u32>().prop_map(Value::from),
            1 => scalar(),
        ]
    }

    fn body() -> impl Strategy<Value = (Value, bool)> {
        (
            prop::option::of(text()),
            prop::option::of(
                prop_oneof![4 => prop::collection::vec(choice(), 0..4).prop_map(Value::Array), 1 => scalar()],
            ),
            prop::option::of((
                prop::option::of(count()),
                prop::option::of(count()),
                prop::option::of(count()),
            )),
            prop::option::of(scalar()),
            any::<bool>(),
        )
            .prop_map(|(model, choices, usage, extra, pretty)| {
                let mut b = Map::new();
                b.insert("id".into(), json!("gen-1"));
                if let Some(m) = model {
                    b.insert("model".into(), Value::String(m));
                }
                if let Some(c) = choices {
                    b.insert("choices".into(), c);
                }
                if let Some((p, c, t)) = usage {
                    let mut u = Map::new();
                    for (k, v) in [("prompt_tokens", p), ("completion_tokens", c), ("total_tokens", t)] {
                        if let Some(v) = v {
                            u.insert(k.into(), v);
                        }
                    }
                    b.insert("usage".into(), Value::Object(u));
                }
                if let Some(x) = extra {
                    b.insert("system_fingerprint".into(), x);
                }
                (Value::Object(b), pretty)
            })
    }

    proptest! {
        #[test]
        fn the_scanner_reads_a_completion_as_serde_json_does((value, pretty) in body()) {
            let bytes = if pretty { serde_json::to_vec_pretty(&value) } else { serde_json::to_vec(&value) }.unwrap();
            let facts = BodyFacts::inspect(&bytes);
            prop_assert!(facts.json);
            prop_assert_eq!(facts.model.as_deref(), value["model"].as_str());
            let choices = value.get("choices").and_then(Value::as_array);
            let objects = choices.filter(|c| c.iter().all(Value::is_object));
            prop_assert_eq!(facts.choices, objects.map(Vec::len));
            let failed = objects.is_some_and(|c| c.iter().any(|c| c["finish_reason"] == "error"));
            prop_assert_eq!(facts.finish_error, failed);
            prop_assert_eq!(facts.error.is_some(), failed, "a failed choice always yields an error");
            let usage = value.get("usage").and_then(|u| serde_json::from_value::<Usage>(u.clone()).ok());
            prop_assert_eq!(facts.usage, usage);
        }
    }
}
