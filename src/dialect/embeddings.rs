//! Embeddings (`POST …/embeddings`). Not streamed.
//!
//! - A good answer: `object: "list"` with a non-empty `data` array; an
//!   `error` object (and no `data`) inside a 2xx is an error.
//! - Errors are OpenAI's error JSON.
//! - A request needs nothing a route declares (the dimension is the
//!   route's); the prompt is the bytes of `input`.
//!
//! Vectors of different models are not comparable: a chain that falls back
//! to another embedding model mixes vector spaces unless the caller stores
//! the model (the report's served model, `x-fallback-model`) with each
//! vector. OpenRouter's `models` is not sent on embeddings (its reference
//! lists `provider` only there).

use crate::capability::Needs;
use crate::inspect::BodyFacts;
use crate::request::RequestIndex;

pub(super) fn needs(body: &[u8], index: &RequestIndex) -> Needs {
    crate::request::detect_needs(body, index)
}

pub(super) fn inspect(body: &[u8]) -> BodyFacts {
    BodyFacts::inspect_embeddings(body)
}
