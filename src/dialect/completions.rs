//! Legacy text completions (`POST …/completions`): chat completions'
//! judgement with `choices[].text` in place of a message or a delta.
//!
//! - A good answer: `choices` whose `finish_reason` is not `"error"`.
//! - A stream commits at the first chunk with text, ends with `[DONE]` or a
//!   final `finish_reason`, and a broken one gets a `text_completion` chunk
//!   with `finish_reason: "error"`.
//! - A request needs `max_tokens`; the prompt is the bytes of `prompt`.

use crate::capability::Needs;
use crate::inspect::BodyFacts;
use crate::request::RequestIndex;
use serde_json::json;

pub(super) fn needs(body: &[u8], index: &RequestIndex) -> Needs {
    crate::request::detect_needs(body, index)
}

pub(super) fn inspect(body: &[u8]) -> BodyFacts {
    BodyFacts::inspect(body)
}

/// A `text_completion` chunk with `finish_reason: "error"` and the error.
pub(super) fn terminal_event(model: &str, code: &str, message: &str) -> Vec<u8> {
    let chunk = json!({
        "id": "llm-fallback-error",
        "object": "text_completion",
        "created": super::unix_now(),
        "model": model,
        "error": {"code": code, "message": message},
        "choices": [{"index": 0, "text": "", "finish_reason": "error", "logprobs": null}],
    });
    super::data_event(None, &chunk)
}
