//! What the engine learns from an upstream response body before deciding.
//!
//! Only the top-level keys that matter are looked at (`model`, `provider`,
//! `error`, `choices`); the scanner finds their spans and serde parses just
//! those spans.

use crate::json::scan::{self, ValueKind};
use crate::report::{UpstreamAttempt, UpstreamError, Usage};
use serde::Deserialize;
use serde_json::Value;

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

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    finish_reason: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
}

impl BodyFacts {
    /// Inspects a buffered response body. Never fails: what cannot be read is
    /// simply absent (`json == false` when the body is not a JSON object).
    pub(crate) fn inspect(body: &[u8]) -> Self {
        let mut facts = BodyFacts::default();
        let mut error_span = None;
        let mut choices_span = None;
        let mut usage_span = None;
        let mut metadata_span = None;
        let scanned = scan::scan_object(body, |m| {
            match (&*m.key, m.kind) {
                ("model", ValueKind::String) => {
                    facts.model = scan::decode_string(&body[m.value.clone()]).ok().map(|s| s.into_owned());
                }
                ("provider", ValueKind::String) => {
                    facts.provider = scan::decode_string(&body[m.value.clone()]).ok().map(|s| s.into_owned());
                }
                ("error", ValueKind::Null) => {}
                ("error", _) => error_span = Some(m.value.clone()),
                ("choices", ValueKind::Array) => choices_span = Some(m.value.clone()),
                ("usage", ValueKind::Object) => usage_span = Some(m.value.clone()),
                ("openrouter_metadata", ValueKind::Object) => metadata_span = Some(m.value.clone()),
                _ => {}
            }
            Ok::<(), ()>(())
        });
        if scanned.is_err() {
            return BodyFacts::default();
        }
        facts.json = true;
        facts.usage = usage_span.and_then(|span| serde_json::from_slice(&body[span]).ok());
        if let Some(span) = metadata_span {
            facts.upstream_attempts = upstream_attempts(&body[span]);
        }
        if let Some(span) = error_span {
            facts.error = Some(
                serde_json::from_slice::<Value>(&body[span])
                    .map(|v| error_from_value(&v))
                    .unwrap_or_else(|_| UpstreamError::default()),
            );
        }
        if let Some(span) = choices_span {
            match serde_json::from_slice::<Vec<Choice>>(&body[span]) {
                Ok(choices) => {
                    facts.choices = Some(choices.len());
                    for choice in choices {
                        if choice.finish_reason.as_ref().and_then(Value::as_str) == Some("error") {
                            facts.finish_error = true;
                            if facts.error.is_none() {
                                facts.error = Some(match &choice.error {
                                    Some(v) => error_from_value(v),
                                    None => UpstreamError {
                                        message: Some("choice finished with finish_reason \"error\"".into()),
                                        ..UpstreamError::default()
                                    },
                                });
                            }
                        }
                    }
                }
                // Choices that are not objects: not a completion we can vouch for.
                Err(_) => facts.choices = None,
            }
        }
        facts
    }

    /// A short, printable excerpt of a body that is not JSON (an HTML error
    /// page from a proxy, say), so a report can still say what came back.
    pub(crate) fn text_excerpt(body: &[u8]) -> Option<String> {
        let text = std::str::from_utf8(body).ok()?.trim();
        (!text.is_empty()).then(|| truncate(text.to_owned()))
    }
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
