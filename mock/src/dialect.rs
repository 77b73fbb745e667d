//! The API shapes the mock serves, told apart by the request's path, and
//! the error bodies of each.

use std::fmt;

use http::StatusCode;
use serde_json::{json, Map, Value};

/// One API shape the mock serves. The request's path picks it (see
/// [`Dialect::from_path`]); a [`Reply`](super::Reply) is rendered in the
/// dialect of the request it answers.
///
/// ```
/// use llm_fallback_mock::Dialect;
///
/// assert_eq!(Dialect::from_path("/v1/messages"), Some(Dialect::Messages));
/// assert_eq!(Dialect::from_path("/api/v1/chat/completions"), Some(Dialect::Chat));
/// assert_eq!(Dialect::Responses.path(), "/api/v1/responses");
/// assert_eq!(Dialect::from_path("/api/v1/models"), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dialect {
    /// Chat completions, `POST …/chat/completions` (OpenRouter's shape).
    Chat,
    /// The OpenAI Responses API, `POST …/responses`.
    Responses,
    /// Anthropic Messages, `POST …/messages`.
    Messages,
    /// Embeddings, `POST …/embeddings`.
    Embeddings,
    /// Legacy text completions, `POST …/completions`.
    Completions,
}

/// The two bases every dialect is served under: OpenRouter's (`/api/v1`)
/// and the one the OpenAI and Anthropic SDKs add to a bare host (`/v1`).
const BASES: [&str; 2] = ["/api/v1", "/v1"];

impl Dialect {
    /// Every dialect, chat first.
    pub const ALL: [Dialect; 5] = [
        Dialect::Chat,
        Dialect::Responses,
        Dialect::Messages,
        Dialect::Embeddings,
        Dialect::Completions,
    ];

    /// The dialect served at `path` (`/api/v1/<endpoint>` or
    /// `/v1/<endpoint>`, exactly), if any.
    pub fn from_path(path: &str) -> Option<Self> {
        let endpoint = BASES
            .iter()
            .find_map(|base| path.strip_prefix(base)?.strip_prefix('/'))?;
        Self::ALL.into_iter().find(|d| d.endpoint() == endpoint)
    }

    /// The endpoint under a base: `chat/completions`, `responses`,
    /// `messages`, `embeddings` or `completions`.
    pub fn endpoint(self) -> &'static str {
        match self {
            Dialect::Chat => "chat/completions",
            Dialect::Responses => "responses",
            Dialect::Messages => "messages",
            Dialect::Embeddings => "embeddings",
            Dialect::Completions => "completions",
        }
    }

    /// The path under OpenRouter's base, e.g. `/api/v1/responses`.
    pub fn path(self) -> &'static str {
        match self {
            Dialect::Chat => "/api/v1/chat/completions",
            Dialect::Responses => "/api/v1/responses",
            Dialect::Messages => "/api/v1/messages",
            Dialect::Embeddings => "/api/v1/embeddings",
            Dialect::Completions => "/api/v1/completions",
        }
    }

    /// A short lowercase name: `chat`, `responses`, `messages`,
    /// `embeddings`, `completions`.
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Chat => "chat",
            Dialect::Responses => "responses",
            Dialect::Messages => "messages",
            Dialect::Embeddings => "embeddings",
            Dialect::Completions => "completions",
        }
    }

    /// Whether the dialect's errors are OpenRouter's own
    /// `{"error":{"code":<int>,..}}` (chat and completions).
    pub(super) fn is_openrouter_shaped(self) -> bool {
        matches!(self, Dialect::Chat | Dialect::Completions)
    }

    /// Whether OpenRouter accepts `models` on this endpoint (all but
    /// embeddings, whose reference lists `provider` only).
    pub(super) fn accepts_models(self) -> bool {
        !matches!(self, Dialect::Embeddings)
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error body in `dialect`'s shape.
///
/// - Chat and completions: OpenRouter's `{"error":{"code":<status>,
///   "message":..,"metadata":..}}` (`error_type`, if any, belongs in
///   `metadata`, which the caller builds).
/// - Responses and embeddings: OpenAI's `{"error":{"message":..,"type":..,
///   "param":null,"code":..}}` (string `code`); `error_type` sets both `type`
///   and `code`, else [`openai_defaults`] does.
/// - Messages: Anthropic's `{"type":"error","error":{"type":..,
///   "message":..}}` (plus `request_id` when given); `error_type` sets
///   `error.type`, else [`anthropic_type`] does.
pub(super) fn error_value(
    dialect: Dialect,
    status: StatusCode,
    error_type: Option<&str>,
    message: &str,
    openrouter_metadata: Option<Value>,
    request_id: Option<&str>,
) -> Value {
    match dialect {
        Dialect::Chat | Dialect::Completions => openrouter_error(status.as_u16(), message, openrouter_metadata),
        Dialect::Responses | Dialect::Embeddings => {
            let (default_type, default_code) = openai_defaults(status);
            let (kind, code) = match error_type {
                Some(t) => (t, Some(t)),
                None => (default_type, default_code),
            };
            json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
        }
        Dialect::Messages => {
            let kind = error_type.unwrap_or_else(|| anthropic_type(status));
            let mut body = Map::new();
            body.insert("type".into(), Value::from("error"));
            body.insert("error".into(), json!({"type": kind, "message": message}));
            if let Some(id) = request_id {
                body.insert("request_id".into(), Value::from(id));
            }
            Value::Object(body)
        }
    }
}

/// OpenRouter's error body (chat and completions).
pub(super) fn openrouter_error(code: u16, message: &str, metadata: Option<Value>) -> Value {
    let mut error = Map::new();
    error.insert("code".into(), Value::from(code));
    error.insert("message".into(), Value::from(message));
    if let Some(metadata) = metadata {
        error.insert("metadata".into(), metadata);
    }
    json!({ "error": error })
}

/// `(type, code)` of an OpenAI-shaped error for a status. The codes are
/// the ones OpenRouter's Responses API documents (`invalid_prompt`,
/// `rate_limit_exceeded`, `server_error`) where it has one.
pub(super) fn openai_defaults(status: StatusCode) -> (&'static str, Option<&'static str>) {
    match status.as_u16() {
        400 => ("invalid_request_error", Some("invalid_prompt")),
        401 => ("authentication_error", Some("invalid_api_key")),
        402 => ("insufficient_quota", Some("insufficient_quota")),
        403 => ("permission_error", Some("content_policy_violation")),
        404 => ("invalid_request_error", Some("model_not_found")),
        405 => ("invalid_request_error", Some("method_not_allowed")),
        408 => ("timeout", Some("timeout")),
        413 => ("invalid_request_error", Some("request_too_large")),
        429 => ("rate_limit_error", Some("rate_limit_exceeded")),
        s if s >= 500 => ("server_error", Some("server_error")),
        _ => ("invalid_request_error", None),
    }
}

/// Anthropic's `error.type` for a status (its errors reference).
pub(super) fn anthropic_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        408 | 504 | 524 => "timeout_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        s if s >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}
