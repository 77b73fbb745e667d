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
use std::sync::Arc;

/// Longest upstream text (message, raw) kept in a report.
const MAX_TEXT: usize = 1024;

#[derive(Debug, Default, Clone)]
pub(crate) struct BodyFacts {
    /// The body is a JSON object.
    pub(crate) json: bool,
    /// Shared: the served model goes to the attempt's record and the report.
    pub(crate) model: Option<Arc<str>>,
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
        let mut usage = None;
        let mut read = |key: &[u8], start: usize| match (key, body.get(start)) {
            (b"choices", Some(b'[')) => Some(choices.read(body, start)),
            (b"usage", Some(b'{')) => Some(read_usage(body, start, USAGE_CHAT, &mut usage)),
            _ => None,
        };
        let scanned = scan::scan_object_watching(body, scan::Watch::Nested(&mut read), |m| {
            common.member(&mut facts, body, &m);
            Ok::<(), ()>(())
        });
        if scanned.is_err() {
            return BodyFacts::default();
        }
        common.finish(&mut facts, body, usage);
        facts.choices = choices.count;
        if let (Some(_), Some(failed)) = (facts.choices, choices.failed) {
            facts.finish_error = true;
            if facts.error.is_none() {
                facts.error =
                    Some(
                        failed
                            .and_then(|span| error_at(body.get(span)?))
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
        let mut usage = None;
        let mut read = |key: &[u8], start: usize| {
            (key == b"usage" && body.get(start) == Some(&b'{'))
                .then(|| read_usage(body, start, USAGE_IN_OUT, &mut usage))
        };
        let scanned = scan::scan_object_watching(body, scan::Watch::Nested(&mut read), |m| {
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
        common.finish(&mut facts, body, usage);
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
        let mut usage = None;
        let mut read = |key: &[u8], start: usize| {
            (key == b"usage" && body.get(start) == Some(&b'{'))
                .then(|| read_usage(body, start, USAGE_IN_OUT, &mut usage))
        };
        let scanned = scan::scan_object_watching(body, scan::Watch::Nested(&mut read), |m| {
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
        common.finish(&mut facts, body, usage);
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
        let (mut data, mut usage) = (None, None);
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
        let mut read = |key: &[u8], start: usize| match (key, body.get(start)) {
            (b"data", Some(b'[')) => Some(count(start)),
            (b"usage", Some(b'{')) => Some(read_usage(body, start, USAGE_CHAT, &mut usage)),
            _ => None,
        };
        let scanned = scan::scan_object_watching(body, scan::Watch::Nested(&mut read), |m| {
            common.member(&mut facts, body, &m);
            Ok::<(), ()>(())
        });
        if scanned.is_err() {
            return BodyFacts::default();
        }
        common.finish(&mut facts, body, usage);
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
/// reads only its own. (`usage` itself is read in the scan's pass, by
/// [`read_usage`] from the scan's [`scan::Watch::Nested`].)
#[derive(Default)]
struct Common {
    error: Option<Range<usize>>,
    metadata: Option<Range<usize>>,
}

impl Common {
    /// Takes `m` when it is one of the shared members; false otherwise.
    /// (Inlined into each scan's callback: it runs for every member.)
    #[inline(always)]
    fn member(&mut self, facts: &mut BodyFacts, body: &[u8], m: &scan::Member<'_>) -> bool {
        match (&*m.key, m.kind) {
            (b"model", ValueKind::String) => facts.model = shared_text(body, m),
            (b"provider", ValueKind::String) => facts.provider = text(body, m),
            (b"error", ValueKind::Null) => {}
            (b"error", _) => self.error = Some(m.value.clone()),
            (b"usage", ValueKind::Object) => {}
            (b"openrouter_metadata", ValueKind::Object) => self.metadata = Some(m.value.clone()),
            _ => return false,
        }
        true
    }

    /// Fills `facts` from a body that scanned whole; `usage` is what
    /// [`read_usage`] made of its last object-valued `usage`.
    fn finish(self, facts: &mut BodyFacts, body: &[u8], usage: Option<Usage>) {
        facts.json = true;
        facts.usage = usage;
        if let Some(span) = self.metadata {
            facts.upstream_attempts = upstream_attempts(body.get(span).unwrap_or_default());
        }
        // An error object that does not parse is still an error.
        facts.error = self
            .error
            .map(|span| body.get(span).and_then(error_at).unwrap_or_default());
    }
}

/// A string member's decoded text; `None` when it does not decode.
fn text(body: &[u8], m: &scan::Member<'_>) -> Option<String> {
    scan::decode_owned(body.get(m.value.clone())?).ok()
}

/// [`text`], shared: one allocation for the attempt's record and the report.
fn shared_text(body: &[u8], m: &scan::Member<'_>) -> Option<Arc<str>> {
    scan::decode_string(body.get(m.value.clone())?)
        .ok()
        .map(|s| Arc::from(&*s))
}

/// The error object (or string) `json` holds, if it parses: what
/// [`error_from_value`] makes of it, read from the bytes into the members
/// it keeps (no `Value` tree of the whole error first; a failed attempt's
/// error is read on every fallback).
fn error_at(json: &[u8]) -> Option<UpstreamError> {
    serde_json::from_slice::<ErrorJson>(json).ok().map(|e| match e {
        ErrorJson::Text(s) => error_from_text(s),
        ErrorJson::Object(obj) => error_from_object(obj),
        ErrorJson::Other(v) => error_from_value(&v),
        ErrorJson::Unreadable => UpstreamError::default(),
    })
}

/// An error member as [`error_at`] reads it.
enum ErrorJson {
    Text(String),
    /// An object: its members as `Value`'s map keeps them (the last of a
    /// repeated key), `metadata` read as [`ErrorObject`] reads it.
    Object(ErrorObject),
    /// An array (which a struct reads by position), kept as a `Value` and
    /// read as before.
    Other(Value),
    /// A number, `true`, `false`, `null`, or an object whose `metadata` is
    /// not one: no error [`ErrorObject`] can read.
    Unreadable,
}

impl<'de> Deserialize<'de> for ErrorJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;

        /// The members an error object keeps; any other is skipped.
        enum Key {
            Code,
            Message,
            Kind,
            Metadata,
            Other,
        }

        impl<'de> Deserialize<'de> for Key {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct KeyVisit;
                impl serde::de::Visitor<'_> for KeyVisit {
                    type Value = Key;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("a member name")
                    }
                    fn visit_str<E>(self, key: &str) -> Result<Key, E> {
                        Ok(match key {
                            "code" => Key::Code,
                            "message" => Key::Message,
                            "type" => Key::Kind,
                            "metadata" => Key::Metadata,
                            _ => Key::Other,
                        })
                    }
                }
                d.deserialize_identifier(KeyVisit)
            }
        }

        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = ErrorJson;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an error object or message")
            }
            fn visit_str<E>(self, s: &str) -> Result<ErrorJson, E> {
                Ok(ErrorJson::Text(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<ErrorJson, E> {
                Ok(ErrorJson::Text(s))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ErrorJson, A::Error> {
                let (mut code, mut message, mut kind, mut metadata) = (None, None, None, None);
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Code => code = map.next_value::<Option<Value>>()?,
                        Key::Message => message = map.next_value::<Option<Value>>()?,
                        Key::Kind => kind = map.next_value::<Option<Value>>()?,
                        Key::Metadata => metadata = map.next_value::<Option<Value>>()?,
                        Key::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                let metadata = match metadata.as_ref().map(Metadata::deserialize) {
                    None => None,
                    Some(Ok(m)) => Some(m),
                    Some(Err(_)) => return Ok(ErrorJson::Unreadable),
                };
                Ok(ErrorJson::Object(ErrorObject {
                    code,
                    message,
                    kind,
                    metadata,
                }))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<ErrorJson, A::Error> {
                let items = Vec::<Value>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
                Ok(ErrorJson::Other(Value::Array(items)))
            }
            fn visit_bool<E>(self, _: bool) -> Result<ErrorJson, E> {
                Ok(ErrorJson::Unreadable)
            }
            fn visit_i64<E>(self, _: i64) -> Result<ErrorJson, E> {
                Ok(ErrorJson::Unreadable)
            }
            fn visit_u64<E>(self, _: u64) -> Result<ErrorJson, E> {
                Ok(ErrorJson::Unreadable)
            }
            fn visit_f64<E>(self, _: f64) -> Result<ErrorJson, E> {
                Ok(ErrorJson::Unreadable)
            }
            fn visit_unit<E>(self) -> Result<ErrorJson, E> {
                Ok(ErrorJson::Unreadable)
            }
        }
        d.deserialize_any(Visit)
    }
}

/// Reads an OpenRouter (`{code, message, metadata: {error_type, provider_name,
/// raw}}`) or OpenAI (`{message, type, param, code}`) error object; a bare
/// string becomes the message.
pub(crate) fn error_from_value(v: &Value) -> UpstreamError {
    if let Some(s) = v.as_str() {
        return error_from_text(s.to_owned());
    }
    match ErrorObject::deserialize(v) {
        Ok(obj) => error_from_object(obj),
        Err(_) => UpstreamError::default(),
    }
}

/// A bare string error: its message.
fn error_from_text(s: String) -> UpstreamError {
    UpstreamError {
        message: Some(truncate(s)),
        ..UpstreamError::default()
    }
}

fn error_from_object(obj: ErrorObject) -> UpstreamError {
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
                        finished_in_error |= body.get(m.value).is_some_and(is_error);
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

/// The string literal `raw` (quotes included) decodes to `error`. Only a
/// literal with a backslash (`"\u0065rror"`) needs decoding to tell: any
/// other is its own text, so `"stop"` costs a compare, not a decode.
fn is_error(raw: &[u8]) -> bool {
    // With an escape (two bytes or more for one character) the literal is
    // longer than `"error"`, and no longer than five `\uXXXX` in quotes.
    raw == br#""error""#
        || ((8..=32).contains(&raw.len())
            && raw.contains(&b'\\')
            && scan::decode_string(raw).is_ok_and(|r| r == "error"))
}

/// Which names `usage`'s prompt, completion and total counts go by.
#[derive(Clone, Copy, PartialEq, Eq)]
enum UsageKeys {
    /// `prompt_tokens`, `completion_tokens`, `total_tokens`.
    Chat,
    /// `input_tokens`, `output_tokens`, `total_tokens`: Responses and
    /// Messages (which has no total: it is the sum).
    InOut,
}
const USAGE_CHAT: UsageKeys = UsageKeys::Chat;
const USAGE_IN_OUT: UsageKeys = UsageKeys::InOut;

/// Reads the `usage` object whose `{` is at `start`, in the pass of the
/// scan it is a member of, and returns one past its end as skipping it
/// would. `out` becomes its token counts, or `None` when one of them is
/// not a non-negative integer or the object does not scan on its own
/// (checked as strictly as the top level), which leaves the body as it is:
/// only skipped.
fn read_usage(body: &[u8], start: usize, keys: UsageKeys, out: &mut Option<Usage>) -> Result<usize, scan::ScanError> {
    let mut nested = false;
    match usage_at(body, start, keys, &mut nested) {
        Ok((end, usage)) if !nested => {
            *out = Some(usage);
            Ok(end)
        }
        read => {
            // The rare shapes (a count that is not one, a nested member such
            // as `prompt_tokens_details`, bad JSON) are skipped again as the
            // scan skips any value, so the body is judged as before, its
            // nesting limit counted from the top level.
            *out = read.ok().map(|(_, usage)| usage);
            scan::scan_value(body, start).map(|(end, _)| end)
        }
    }
}

/// `usage`'s token counts from the object at `start`, and one past its
/// end; `Err` when one of them is not a non-negative integer or the object
/// does not scan. `nested` is set when a member's value is an object or
/// an array.
fn usage_at(body: &[u8], start: usize, keys: UsageKeys, nested: &mut bool) -> Result<(usize, Usage), ()> {
    let mut usage = Usage::default();
    let mut total = false;
    let end = scan::scan_strict_object_at(body, start, |m| {
        *nested |= matches!(m.kind, ValueKind::Object | ValueKind::Array);
        use UsageKeys::{Chat, InOut};
        let slot = match (&*m.key, keys) {
            (b"prompt_tokens", Chat) | (b"input_tokens", InOut) => &mut usage.prompt_tokens,
            (b"completion_tokens", Chat) | (b"output_tokens", InOut) => &mut usage.completion_tokens,
            (b"total_tokens", _) => {
                total = true;
                &mut usage.total_tokens
            }
            _ => return Ok::<(), ()>(()),
        };
        if m.kind != ValueKind::Number {
            return Err(());
        }
        *slot = body.get(m.value).and_then(plain_u64).ok_or(())?;
        Ok(())
    })
    .map_err(drop)?;
    if !total && keys == UsageKeys::InOut {
        usage.total_tokens = usage.prompt_tokens.saturating_add(usage.completion_tokens);
    }
    Ok((end, usage))
}

/// A JSON number's text (validated by the scanner: no leading zero, no
/// `+`) as a `u64`, what `str::parse` makes of it: plain digits only, so a
/// sign, fraction or exponent, or a value past `u64::MAX`, is `None`.
fn plain_u64(number: &[u8]) -> Option<u64> {
    if number.is_empty() {
        return None;
    }
    number.iter().try_fold(0u64, |n, &digit| {
        let digit = digit.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
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
    fn usage_is_read_in_the_scans_pass_as_alone() {
        let read = |u: &str| {
            let body = format!(r#"{{"model":"m","usage":{u},"choices":[]}}"#);
            let f = BodyFacts::inspect(body.as_bytes());
            assert!(f.json, "{body}");
            f.usage.map(|u| (u.prompt_tokens, u.completion_tokens, u.total_tokens))
        };
        // Nested members (OpenRouter's details), strings, escaped keys.
        assert_eq!(
            read(
                r#"{"prompt_tokens":5,"prompt_tokens_details":{"cached_tokens":[1,{"x":2}]},"cost":"0.1","completion_tokens":2,"total_\u0074okens":7}"#
            ),
            Some((5, 2, 7))
        );
        assert_eq!(
            read(r#"{ "total_tokens" : 18446744073709551615 }"#),
            Some((0, 0, u64::MAX))
        );
        // Past u64, signed, a fraction, an exponent: no usage, body intact.
        for bad in [
            r#"{"total_tokens":18446744073709551616}"#,
            r#"{"total_tokens":-0}"#,
            r#"{"total_tokens":1.0}"#,
            r#"{"total_tokens":1e2}"#,
            r#"{"prompt_tokens":null,"total_tokens":3}"#,
            r#"{"total_tokens":3,"prompt_tokens":"3"}"#,
        ] {
            assert_eq!(read(bad), None, "{bad}");
        }
        // Invalid only by the top level's rules (a bad escape in a string,
        // a trailing comma): no usage, but the body still scans, as the
        // nested value it is.
        assert_eq!(read(r#"{"total_tokens":3,"note":"\q"}"#), None);
        assert_eq!(read(r#"{"total_tokens":3,}"#), None);
        // The last object-valued `usage` counts; a later non-object does not.
        let f = BodyFacts::inspect(br#"{"usage":{"total_tokens":1},"usage":{"total_tokens":2},"usage":null}"#);
        assert_eq!(f.usage.map(|u| u.total_tokens), Some(2));
        let f = BodyFacts::inspect(br#"{"usage":{"total_tokens":1},"usage":{"total_tokens":-2}}"#);
        assert!(f.json && f.usage.is_none());
        // Cut short, or broken in a way any nested value is: not JSON.
        for body in [
            &br#"{"choices":[],"usage":{"total_tokens":3"#[..],
            br#"{"choices":[],"usage":{"total_tokens":3,"x":[}}"#,
            br#"{"choices":[],"usage":{"total_tokens":"3}"#,
        ] {
            let f = BodyFacts::inspect(body);
            assert!(!f.json, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn usage_nesting_counts_from_the_top_level() {
        // 127 levels inside a member of `usage` are one too many for the
        // top-level skip (129 with the body and `usage`): refused, as when
        // `usage` was only skipped, though `usage` alone would scan.
        let deep = |n: usize| format!(r#"{{"usage":{{"x":{}{}}}}}"#, "[".repeat(n), "]".repeat(n));
        assert!(BodyFacts::inspect(deep(126).as_bytes()).json);
        assert!(!BodyFacts::inspect(deep(127).as_bytes()).json);
        let alone = format!(r#"{{"x":{}{}}}"#, "[".repeat(127), "]".repeat(127));
        assert!(scan::scan_object(alone.as_bytes(), |_| Ok::<_, ()>(())).is_ok());
    }

    #[test]
    fn finish_reason_is_compared_as_decoded() {
        for (reason, error) in [
            (r#""error""#, true),
            (r#""\u0065rror""#, true),
            (r#""err\u006Fr""#, true),
            (r#""\u0065\u0072\u0072\u006f\u0072""#, true),
            (r#""errors""#, false),
            (r#""erro""#, false),
            (r#""\u0065rrors""#, false),
            (r#""stop""#, false),
            (r#""""#, false),
            (r#""\\error""#, false),
        ] {
            let body = format!(r#"{{"choices":[{{"finish_reason":{reason}}}]}}"#);
            let f = BodyFacts::inspect(body.as_bytes());
            assert_eq!(f.finish_error, error, "{reason}");
            assert_eq!(
                f.finish_error,
                serde_json::from_str::<String>(reason).unwrap() == "error"
            );
        }
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
                prop::option::of(scalar()),
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
                if let Some((p, c, t, details)) = usage {
                    let mut u = Map::new();
                    for (k, v) in [("prompt_tokens", p), ("completion_tokens", c), ("total_tokens", t)] {
                        if let Some(v) = v {
                            u.insert(k.into(), v);
                        }
                    }
                    // Members nobody reads, nested ones too (OpenRouter's
                    // details), read in the same pass.
                    if let Some(d) = details {
                        u.insert("prompt_tokens_details".into(), json!({"cached_tokens": d}));
                        u.insert("cost".into(), d);
                    }
                    b.insert("usage".into(), Value::Object(u));
                }
                if let Some(x) = extra {
                    b.insert("system_fingerprint".into(), x);
                }
                (Value::Object(b), pretty)
            })
    }

    /// JSON text for an error member: objects whose keys repeat (which a
    /// `Value` keeps last-wins) or are spelled with escapes, metadata of
    /// every type, strings, arrays and scalars.
    fn error_text() -> impl Strategy<Value = String> {
        let scalar = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("503".to_owned()),
            Just("-1.5e3".to_owned()),
            "[a-zA-Z \\\"é]{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        ];
        let leaf = prop_oneof![
            4 => scalar.clone(),
            1 => proptest::collection::vec(scalar.clone(), 0..3).prop_map(|v| format!("[{}]", v.join(","))),
        ];
        let meta_key = prop_oneof![
            Just("\"error_type\""),
            Just("\"provider_name\""),
            Just("\"raw\""),
            Just("\"reasons\""),
            Just("\"flagged_input\""),
            Just("\"other\""),
        ];
        let metadata = prop_oneof![
            3 => proptest::collection::vec((meta_key, leaf.clone()), 0..4)
                .prop_map(|m| format!("{{{}}}", m.into_iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(","))),
            1 => leaf.clone(),
        ];
        let key = prop_oneof![
            Just("\"code\""),
            Just("\"message\""),
            Just("\"type\""),
            Just("\"co\\u0064e\""),
            Just("\"param\""),
        ];
        let member = prop_oneof![
            4 => (key, leaf.clone()).prop_map(|(k, v)| format!("{k}:{v}")),
            1 => metadata.prop_map(|m| format!("\"metadata\":{m}")),
        ];
        prop_oneof![
            6 => proptest::collection::vec(member, 0..6).prop_map(|m| format!("{{{}}}", m.join(","))),
            1 => leaf,
        ]
    }

    proptest! {
        #[test]
        fn an_error_is_read_as_from_its_value(text in error_text()) {
            // What the reader made of an error member before: a `Value`
            // first, then `error_from_value`.
            let before = serde_json::from_slice::<Value>(text.as_bytes()).ok().map(|v| error_from_value(&v));
            prop_assert_eq!(error_at(text.as_bytes()), before, "{}", text);
        }
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
