//! The API shapes the layer understands. The engine asks a request's
//! dialect everything that depends on the shape: what a request needs, how
//! a buffered answer is judged, where a stream commits and how a broken one
//! is ended, what error bodies look like, and where a route's endpoint
//! takes it. It knows none of these itself: each shape is a module here and
//! a variant of [`Dialect`], not a change to the engine's loop.
//!
//! The SSE framing (events, `data:` lines, comments, CR/LF, frames split at
//! any byte) is shared and lives below the dialects, in `stream`; a dialect
//! judges whole events.

mod chat;
mod completions;
mod embeddings;
mod events;
mod messages;
mod responses;

pub(crate) use messages::ANTHROPIC_VERSION;

use crate::capability::Needs;
use crate::inspect::BodyFacts;
use crate::request::{BadRequest, RequestIndex};
use crate::stream::SseTracker;
use bytes::Bytes;
use http::{StatusCode, Uri};

/// The API shape of a request: which upstream API its body, its answers and
/// its event streams follow.
///
/// The layer tells it by the request's path: `…/chat/completions`,
/// `…/responses`, `…/messages`, `…/embeddings` and `…/completions` under
/// any base (`/v1`, `/api/v1`, a gateway's own prefix); any other path is
/// read as chat completions. For a path that says nothing (a gateway that
/// serves Messages at `/claude`, say), put the dialect in the request's
/// extensions: it wins over the path.
///
/// ```
/// use llm_fallback::Dialect;
///
/// assert_eq!(Dialect::from_path("/api/v1/responses"), Dialect::Responses);
/// assert_eq!(Dialect::from_path("/v1/messages"), Dialect::Messages);
/// assert_eq!(Dialect::from_path("/v1/chat/completions"), Dialect::Chat);
/// assert_eq!(Dialect::from_path("/v1/completions"), Dialect::Completions);
/// assert_eq!(Dialect::from_path("/generate"), Dialect::Chat);
///
/// // An unusual path: say what it is.
/// let req = http::Request::post("http://gateway.local/claude")
///     .extension(Dialect::Messages)
///     .body(r#"{"model":"anthropic/claude-sonnet-4","max_tokens":64,"messages":[]}"#)
///     .unwrap();
/// assert_eq!(req.extensions().get::<Dialect>(), Some(&Dialect::Messages));
/// ```
///
/// An [`Endpoint`](crate::native::Endpoint) maps each dialect to its own
/// path on the endpoint's base, and may be limited to the dialects it
/// serves ([`Endpoint::dialects`](crate::native::Endpoint::dialects)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dialect {
    /// OpenAI / OpenRouter chat completions (`POST …/chat/completions`).
    #[default]
    Chat,
    /// The OpenAI Responses API (`POST …/responses`).
    Responses,
    /// Anthropic Messages (`POST …/messages`).
    Messages,
    /// Embeddings (`POST …/embeddings`). Not streamed.
    Embeddings,
    /// Legacy text completions (`POST …/completions`).
    Completions,
}

/// What an error body says, in whatever shape the dialect writes it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrorBody<'a> {
    /// The error's kind (`invalid_request_error`, `upstream_error`).
    pub(crate) kind: &'static str,
    pub(crate) code: &'a str,
    pub(crate) param: Option<&'a str>,
    pub(crate) message: &'a str,
}

impl Dialect {
    /// Every dialect, in a fixed order.
    pub const ALL: [Dialect; 5] = [
        Dialect::Chat,
        Dialect::Responses,
        Dialect::Messages,
        Dialect::Embeddings,
        Dialect::Completions,
    ];

    /// The dialect of a request to `path` (a trailing `/` ignored); chat
    /// completions for a path that names none.
    pub fn from_path(path: &str) -> Self {
        Dialect::named_by_path(path).unwrap_or(Dialect::Chat)
    }

    /// The dialect `path` names (a trailing `/` ignored), `None` for a path
    /// that names none (`/v1/models`, `/v1/messages/count_tokens`,
    /// `/v1/files`, the Assistants API's `/v1/threads/{id}/messages`).
    #[inline]
    pub(crate) fn named_by_path(path: &str) -> Option<Self> {
        let p = path.strip_suffix('/').unwrap_or(path);
        // Chat first: the hot path costs one comparison.
        if p.ends_with("/chat/completions") {
            Some(Dialect::Chat)
        } else if p.ends_with("/responses") {
            Some(Dialect::Responses)
        } else if let Some(rest) = p.strip_suffix("/messages") {
            // Not `…/threads/{id}/messages`.
            let assistants = rest
                .rsplit_once('/')
                .is_some_and(|(before, _)| before.ends_with("/threads"));
            (!assistants).then_some(Dialect::Messages)
        } else if p.ends_with("/embeddings") {
            Some(Dialect::Embeddings)
        } else if p.ends_with("/completions") {
            Some(Dialect::Completions)
        } else {
            None
        }
    }

    /// A short name for reports, metrics and skip reasons: `chat`,
    /// `responses`, `messages`, `embeddings`, `completions`.
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Chat => "chat",
            Dialect::Responses => "responses",
            Dialect::Messages => "messages",
            Dialect::Embeddings => "embeddings",
            Dialect::Completions => "completions",
        }
    }

    /// The OpenTelemetry GenAI `gen_ai.operation.name`: `chat` (chat
    /// completions, Responses, Messages), `text_completion`, `embeddings`.
    pub fn operation_name(self) -> &'static str {
        match self {
            Dialect::Chat | Dialect::Responses | Dialect::Messages => "chat",
            Dialect::Embeddings => "embeddings",
            Dialect::Completions => "text_completion",
        }
    }

    /// The path of this dialect below an API base (`/chat/completions`, ...).
    pub fn path(self) -> &'static str {
        match self {
            Dialect::Chat => "/chat/completions",
            Dialect::Responses => "/responses",
            Dialect::Messages => "/messages",
            Dialect::Embeddings => "/embeddings",
            Dialect::Completions => "/completions",
        }
    }

    /// Position in [`Dialect::ALL`].
    pub(crate) fn index_of(self) -> usize {
        self as usize
    }

    /// Indexes the request body's top-level keys (and, with `media`, the
    /// media parts the capability checks count; the members of `record`,
    /// the routes' override keys), or refuses it.
    pub(crate) fn index(
        self,
        body: &[u8],
        media: bool,
        record: &std::sync::Arc<crate::request::RecordKeys>,
    ) -> Result<RequestIndex, BadRequest> {
        match self {
            Dialect::Chat => chat::index(body, media, record),
            d => crate::request::index_recording(d, body, media, record),
        }
    }

    /// What the request needs of a route (capabilities, context).
    pub(crate) fn needs(self, body: &[u8], index: &RequestIndex) -> Needs {
        match self {
            Dialect::Chat => chat::needs(body, index),
            Dialect::Responses => responses::needs(body, index),
            Dialect::Messages => messages::needs(body, index),
            Dialect::Embeddings => embeddings::needs(body, index),
            Dialect::Completions => completions::needs(body, index),
        }
    }

    /// Reads a buffered answer: its model, error, usage, and whether it is
    /// a good one.
    pub(crate) fn inspect(self, body: &[u8]) -> BodyFacts {
        match self {
            Dialect::Chat => chat::inspect(body),
            Dialect::Responses => responses::inspect(body),
            Dialect::Messages => messages::inspect(body),
            Dialect::Embeddings => embeddings::inspect(body),
            Dialect::Completions => completions::inspect(body),
        }
    }

    /// Follows an event stream to its commit point and its end.
    pub(crate) fn stream_tracker(self) -> SseTracker {
        match self {
            Dialect::Chat => chat::stream_tracker(),
            d => SseTracker::for_dialect(d),
        }
    }

    /// An error body of this dialect.
    pub(crate) fn error_body(self, error: ErrorBody<'_>, metadata: Option<serde_json::Value>) -> Bytes {
        match self {
            Dialect::Messages => messages::error_body(error, metadata),
            // OpenAI's error JSON for the other four.
            _ => chat::error_body(error, metadata),
        }
    }

    /// Where a route's endpoint (its API base) takes this request.
    pub(crate) fn endpoint_uri(self, endpoint: &crate::native::Endpoint) -> &Uri {
        match self {
            Dialect::Chat => &endpoint.chat_uri,
            d => endpoint.uri_for(d),
        }
    }

    /// The status of the exhaustion answer: `504` when the deadline ended
    /// the chain, else `502` (the same for every shape).
    pub(crate) fn exhaustion_status(self, deadline: bool) -> StatusCode {
        match deadline {
            true => StatusCode::GATEWAY_TIMEOUT,
            false => StatusCode::BAD_GATEWAY,
        }
    }
}

impl std::fmt::Display for Dialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The event-stream judgement of a dialect: what one whole event means.
/// Chat completions (and legacy completions, which stream the same way)
/// are judged in `stream` itself, where they grew.
pub(crate) fn judge_event(dialect: Dialect, tracker: &mut SseTracker, data: &[u8]) -> Option<crate::stream::Signal> {
    match dialect {
        Dialect::Chat | Dialect::Completions | Dialect::Embeddings => None,
        Dialect::Responses => Some(responses::event(tracker, data)),
        Dialect::Messages => Some(messages::event(tracker, data)),
    }
}

/// The one terminal event a broken committed stream of `dialect` gets.
pub(crate) fn terminal_event(
    dialect: Dialect,
    tracker: &SseTracker,
    model: &str,
    code: &str,
    message: &str,
) -> Vec<u8> {
    match dialect {
        Dialect::Responses => responses::terminal_event(tracker, model, code, message),
        Dialect::Messages => messages::terminal_event(code, message),
        Dialect::Completions => completions::terminal_event(model, code, message),
        Dialect::Chat | Dialect::Embeddings => chat::terminal_event(model, code, message),
    }
}

/// How a stream of `dialect` ends properly, for the `stream_truncated`
/// message.
pub(crate) fn proper_end(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Responses => "response.completed or response.incomplete",
        Dialect::Messages => "message_stop after a stop_reason",
        _ => "[DONE] or a final finish_reason",
    }
}

/// `data` may hold a `\u` escape (it has a backslash followed by `u`): a
/// key or string whose bytes are not its text. The quick checks that skip
/// reading an event after commit look for names by their bytes, so an event
/// with one is read in full.
pub(crate) fn has_unicode_escape(data: &[u8]) -> bool {
    memchr::memchr_iter(b'\\', data).any(|at| data.get(at + 1) == Some(&b'u'))
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One SSE event: `event: <name>` when named, one `data:` line, the blank
/// line that ends it.
fn data_event(name: Option<&str>, data: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    // A `Value` always serializes (its map keys are strings).
    out.extend_from_slice(&serde_json::to_vec(data).unwrap_or_default());
    out.extend_from_slice(b"\n\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_tells_the_dialect() {
        let cases = [
            ("/v1/chat/completions", Dialect::Chat),
            ("/api/v1/chat/completions/", Dialect::Chat),
            ("/openai/deployments/x/chat/completions", Dialect::Chat),
            ("/v1/responses", Dialect::Responses),
            ("/gateway/v1/responses/", Dialect::Responses),
            ("/v1/messages", Dialect::Messages),
            ("/api/v1/embeddings", Dialect::Embeddings),
            ("/v1/completions", Dialect::Completions),
            // Not the create endpoints: read as chat, as before.
            ("/v1/messages/count_tokens", Dialect::Chat),
            ("/v1/responses/resp_123", Dialect::Chat),
            ("/", Dialect::Chat),
            ("", Dialect::Chat),
            ("/messages", Dialect::Messages),
            ("/v1/xmessages", Dialect::Chat),
            // The Assistants API's thread messages are no Anthropic call;
            // a base path that merely holds `threads` is no thread.
            ("/v1/threads/thread_1/messages", Dialect::Chat),
            ("/threads/api/v1/messages", Dialect::Messages),
        ];
        for (path, dialect) in cases {
            assert_eq!(Dialect::from_path(path), dialect, "{path}");
        }
        assert_eq!(Dialect::named_by_path("/v1/threads/thread_1/messages"), None);
        assert_eq!(Dialect::named_by_path("/v1/models"), None);
        for d in Dialect::ALL {
            assert_eq!(Dialect::from_path(&format!("/v1{}", d.path())), d);
            assert_eq!(Dialect::ALL[d.index_of()], d);
        }
    }
}
