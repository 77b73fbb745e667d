//! The API shapes the layer understands. The engine asks a request's
//! dialect everything that depends on the shape: what a request needs, how
//! a buffered answer is judged, where a stream commits and how a broken one
//! is ended, what error bodies look like, and where a route's endpoint
//! takes it. It knows none of these itself, so another shape (OpenAI
//! Responses, Anthropic Messages, embeddings) is another module here and a
//! variant of [`Dialect`], not a change to the engine's loop.
//!
//! The SSE framing (events, `data:` lines, comments, CR/LF, frames split at
//! any byte) is shared and lives below the dialects, in `stream`.

mod chat;

use crate::capability::Needs;
use crate::inspect::BodyFacts;
use crate::request::{BadRequest, RequestIndex};
use crate::stream::SseTracker;
use bytes::Bytes;
use http::{StatusCode, Uri};

/// One API shape. An enum, so each question is one `match` and costs no
/// allocation or dynamic call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// OpenAI / OpenRouter chat completions (`POST …/chat/completions`).
    Chat,
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
    /// The dialect of a request to `path`. Chat completions is the only
    /// shape so far, and every path is read as it (as the layer always
    /// did); the next shapes are picked by their paths here.
    pub(crate) fn of(path: &str) -> Self {
        let _ = path;
        Dialect::Chat
    }

    /// Indexes the request body's top-level keys (and, with `media`, the
    /// media parts the capability checks count), or refuses it.
    pub(crate) fn index(self, body: &[u8], media: bool) -> Result<RequestIndex, BadRequest> {
        match self {
            Dialect::Chat => chat::index(body, media),
        }
    }

    /// What the request needs of a route (capabilities, context).
    pub(crate) fn needs(self, body: &[u8], index: &RequestIndex) -> Needs {
        match self {
            Dialect::Chat => chat::needs(body, index),
        }
    }

    /// Reads a buffered answer: its model, error, usage, and whether it is
    /// a good one.
    pub(crate) fn inspect(self, body: &[u8]) -> BodyFacts {
        match self {
            Dialect::Chat => chat::inspect(body),
        }
    }

    /// Follows an event stream to its commit point and its end.
    pub(crate) fn stream_tracker(self) -> SseTracker {
        match self {
            Dialect::Chat => chat::stream_tracker(),
        }
    }

    /// An error body of this dialect.
    pub(crate) fn error_body(self, error: ErrorBody<'_>, metadata: Option<serde_json::Value>) -> Bytes {
        match self {
            Dialect::Chat => chat::error_body(error, metadata),
        }
    }

    /// Where a route's endpoint (its API base) takes this request.
    pub(crate) fn endpoint_uri(self, endpoint: &crate::native::Endpoint) -> &Uri {
        match self {
            Dialect::Chat => &endpoint.chat_uri,
        }
    }

    /// The status of the exhaustion answer: `504` when the deadline ended
    /// the chain, else `502` (the same for every shape so far).
    pub(crate) fn exhaustion_status(self, deadline: bool) -> StatusCode {
        match (self, deadline) {
            (Dialect::Chat, true) => StatusCode::GATEWAY_TIMEOUT,
            (Dialect::Chat, false) => StatusCode::BAD_GATEWAY,
        }
    }
}
