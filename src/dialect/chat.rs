//! Chat completions (OpenAI, OpenRouter and every compatible API): the
//! first dialect. The reading itself lives in the modules that grew with it
//! (`request`, `capability`, `inspect`, `stream`); this module is what the
//! engine reaches them through.

use super::ErrorBody;
use crate::capability::Needs;
use crate::inspect::BodyFacts;
use crate::request::{index_recording, BadRequest, RecordKeys, RequestIndex};
use crate::stream::SseTracker;
use bytes::Bytes;
use serde_json::json;

pub(super) fn index(body: &[u8], media: bool, record: &std::sync::Arc<RecordKeys>) -> Result<RequestIndex, BadRequest> {
    index_recording(super::Dialect::Chat, body, media, record)
}

/// Tools, image and audio parts, `json_schema`, prompt size and `max_tokens`.
pub(super) fn needs(body: &[u8], index: &RequestIndex) -> Needs {
    crate::request::detect_needs(body, index)
}

/// Good: a JSON object with `choices`, none finished with `"error"`, no
/// top-level `error`.
pub(super) fn inspect(body: &[u8]) -> BodyFacts {
    BodyFacts::inspect(body)
}

/// Commits at the first chunk with content; ends with `[DONE]` or a final
/// `finish_reason`; a broken stream gets a chunk with `finish_reason:
/// "error"`.
pub(super) fn stream_tracker() -> SseTracker {
    SseTracker::default()
}

/// OpenAI's error JSON: `{"error": {"message", "type", "param", "code"}}`,
/// with `metadata` when given.
pub(super) fn error_body(error: ErrorBody<'_>, metadata: Option<serde_json::Value>) -> Bytes {
    let mut inner = json!({
        "message": error.message,
        "type": error.kind,
        "param": error.param,
        "code": error.code,
    });
    if let (Some(m), Some(obj)) = (metadata, inner.as_object_mut()) {
        obj.insert("metadata".to_owned(), m);
    }
    // A `Value` always serializes; an empty body would still be an answer.
    Bytes::from(serde_json::to_vec(&json!({ "error": inner })).unwrap_or_default())
}

/// The data of the chunk a broken committed stream ends with, in
/// OpenRouter's mid-stream shape, so OpenAI-style clients see
/// `finish_reason: "error"` instead of a silent end.
pub(super) fn terminal_event(model: &str, code: &str, message: &str) -> Vec<u8> {
    let chunk = json!({
        "id": "llm-fallback-error",
        "object": "chat.completion.chunk",
        "created": super::unix_now(),
        "model": model,
        "error": {"code": code, "message": message},
        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error", "native_finish_reason": "error"}],
    });
    super::data_event(None, &chunk)
}
