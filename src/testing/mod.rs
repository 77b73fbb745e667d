//! An OpenRouter-compatible mock upstream with scripted faults.
//!
//! [`MockUpstream`] is an in-process tower [`Service`] that answers
//! `POST /api/v1/chat/completions` (and `/v1/chat/completions`) the way
//! OpenRouter does: completions, error bodies with `metadata.error_type`,
//! `Retry-After`, HTTP 200 bodies that are really errors, latency, hangs and
//! dropped connections. Each model follows a [`Script`] of [`Reply`]s; every
//! request is recorded so tests can check what was sent.
//! [`MockServer`] puts the same upstream behind a real loopback HTTP/1.1
//! server for clients that need a URL.
//!
//! ```
//! use llm_fallback::testing::{MockServer, MockUpstream, Reply, Script};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // The primary is rate limited once, then recovers; the secondary is healthy.
//! let upstream = MockUpstream::new()
//!     .model(
//!         "anthropic/claude-3.5-sonnet",
//!         Script::sequence([Reply::status(429).retry_after(2), Reply::ok()]),
//!     )
//!     .model("openai/gpt-4o", Reply::ok().content("pong"));
//!
//! let request = |model: &str| {
//!     http::Request::post("http://openrouter.test/api/v1/chat/completions")
//!         .header("content-type", "application/json")
//!         .body(format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"ping"}}]}}"#))
//!         .unwrap()
//! };
//!
//! let first = upstream.clone().oneshot(request("anthropic/claude-3.5-sonnet")).await.unwrap();
//! assert_eq!(first.status(), 429);
//! assert_eq!(first.headers()["retry-after"], "2");
//!
//! let second = upstream.clone().oneshot(request("anthropic/claude-3.5-sonnet")).await.unwrap();
//! assert_eq!(second.status(), 200);
//!
//! // Every request was recorded, body and all.
//! assert_eq!(upstream.request_count("anthropic/claude-3.5-sonnet"), 2);
//! let sent = &upstream.requests()[0];
//! assert_eq!(sent.json()["messages"][0]["content"], "ping");
//!
//! // Chaos drill: take the secondary down while the system runs.
//! upstream.set_script("openai/gpt-4o", Reply::status(503));
//! let down = upstream.clone().oneshot(request("openai/gpt-4o")).await.unwrap();
//! assert_eq!(down.status(), 503);
//!
//! // The same upstream over loopback HTTP, for clients that need a URL.
//! let server = MockServer::start(upstream.clone()).await.unwrap();
//! assert!(server.chat_url().starts_with("http://127.0.0.1:"));
//! # }
//! ```
//!
//! # What the mock answers
//!
//! | request | answer |
//! |---|---|
//! | a path other than the two chat-completions paths | `404` JSON error |
//! | a method other than `POST` | `405` JSON error with `Allow: POST` |
//! | a body that is not a JSON object | `400` `Invalid JSON body: ...` |
//! | no string `model` | `400` `No model specified` |
//! | a model with no script | `400` `<model> is not a valid model ID` |
//! | a scripted model | the script's next [`Reply`] |
//!
//! # Streams
//!
//! [`Reply::stream`] answers like OpenRouter with `"stream": true`: a
//! `text/event-stream` of keep-alive comments, one chunk per token, a finish
//! chunk, a usage chunk and `data: [DONE]`, each SSE event in its own body
//! frame. Its setters script the timing ([`Reply::keep_alive`],
//! [`Reply::chunk_interval`]) and the failures a streaming-aware fallback has
//! to tell apart: an error chunk before or after the first token
//! ([`Reply::error_before_first_token`], [`Reply::error_after`]), a broken
//! body ([`Reply::cut_after`]), silence ([`Reply::stall_after`]) and a
//! missing `[DONE]` ([`Reply::no_done`]). [`parse_sse`] reads back what a
//! client received.
//!
//! Every request is recorded first, whatever the answer (even for
//! [`Reply::hang`] and [`Reply::transport_error`]).

mod body;
mod reply;
mod server;
mod sse;
mod stream;

pub use body::{MockBody, MockBodyError, MockTransportError};
pub use reply::{Reply, Script};
pub use server::MockServer;
pub use sse::{parse_sse, SseEvent};

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use serde_json::Value;
use tower_service::Service;

use reply::{error_body, Action, Ctx};

/// The paths the mock serves.
const CHAT_PATHS: [&str; 2] = ["/api/v1/chat/completions", "/v1/chat/completions"];

// ===== MockUpstream =====

/// An in-process OpenRouter stand-in: a tower [`Service`] that answers each
/// model's requests from its [`Script`] and records every request.
///
/// # Clone
///
/// Clones share one state (scripts, per-model counters, recorded requests)
/// behind an `Arc`: keep a clone in the test and give another to the code
/// under test.
///
/// The service is always ready. Its error, [`MockTransportError`], only
/// happens for [`Reply::transport_error`] or a request body that fails to
/// read.
#[derive(Clone, Default)]
pub struct MockUpstream {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    models: Mutex<HashMap<String, Slot>>,
    requests: Mutex<Vec<RecordedRequest>>,
    generations: AtomicU64,
}

#[derive(Debug)]
struct Slot {
    script: Script,
    /// Requests this script has answered.
    served: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not hide the recordings from the others.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MockUpstream {
    /// An upstream that knows no model yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Scripts `name` (builder form of [`set_script`](Self::set_script)).
    pub fn model(self, name: impl Into<String>, script: impl Into<Script>) -> Self {
        self.set_script(name, script);
        self
    }

    /// Replaces the script of `name` (or adds the model) while the upstream
    /// is in use, e.g. to force a primary to fail in a chaos drill. The
    /// model's next request gets the new script's first reply.
    pub fn set_script(&self, name: impl Into<String>, script: impl Into<Script>) {
        let slot = Slot {
            script: script.into(),
            served: 0,
        };
        lock(&self.shared.models).insert(name.into(), slot);
    }

    /// Every request received, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// The requests whose body named `model`, in arrival order.
    pub fn requests_for(&self, model: &str) -> Vec<RecordedRequest> {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| r.model.as_deref() == Some(model))
            .cloned()
            .collect()
    }

    /// How many requests named `model` (since the last
    /// [`clear_requests`](Self::clear_requests)).
    pub fn request_count(&self, model: &str) -> usize {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| r.model.as_deref() == Some(model))
            .count()
    }

    /// Forgets the recorded requests. Scripts keep their position.
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// The reply for the next request to `model`, advancing its script.
    fn next_reply(&self, model: &str) -> Option<Reply> {
        let mut models = lock(&self.shared.models);
        let slot = models.get_mut(model)?;
        let reply = slot.script.reply(slot.served).clone();
        slot.served = slot.served.saturating_add(1);
        Some(reply)
    }

    async fn handle(self, parts: http::request::Parts, body: Bytes) -> Result<Response<MockBody>, MockTransportError> {
        let parsed = serde_json::from_slice::<Value>(&body);
        let model = parsed
            .as_ref()
            .ok()
            .and_then(|v| v.get("model"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        tracing::debug!(method = %parts.method, uri = %parts.uri, model = ?model, "mock upstream: request");
        lock(&self.shared.requests).push(RecordedRequest {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers,
            body: body.clone(),
            model: model.clone(),
        });

        let path = parts.uri.path();
        if !CHAT_PATHS.contains(&path) {
            let message = format!("Not Found: no route for {path}");
            return Ok(json_error(StatusCode::NOT_FOUND, &message));
        }
        if parts.method != Method::POST {
            let message = format!("Method {} not allowed; use POST", parts.method);
            let mut resp = json_error(StatusCode::METHOD_NOT_ALLOWED, &message);
            resp.headers_mut().insert(ALLOW, HeaderValue::from_static("POST"));
            return Ok(resp);
        }
        let value = match parsed {
            Ok(value) => value,
            Err(e) => {
                let message = format!("Invalid JSON body: {e}");
                return Ok(json_error(StatusCode::BAD_REQUEST, &message));
            }
        };
        if !value.is_object() {
            let message = "Invalid JSON body: expected a JSON object";
            return Ok(json_error(StatusCode::BAD_REQUEST, message));
        }
        let Some(model) = model else {
            let message = "No model specified: the body needs a string \"model\"";
            return Ok(json_error(StatusCode::BAD_REQUEST, message));
        };
        let Some(reply) = self.next_reply(&model) else {
            let message = format!("{model} is not a valid model ID");
            return Ok(json_error(StatusCode::BAD_REQUEST, &message));
        };

        if reply.is_hang() {
            return std::future::pending().await;
        }
        let ctx = Ctx {
            model: &model,
            generation: self.shared.generations.fetch_add(1, Ordering::Relaxed) + 1,
            request_bytes: body.len(),
        };
        let action = reply.render(&ctx);
        if let Some(delay) = reply.delay() {
            tokio::time::sleep(delay).await;
        }
        match action {
            Action::Respond(resp) => Ok(resp),
            Action::Fail(e) => Err(e),
            Action::Hang => std::future::pending().await,
        }
    }
}

/// A JSON error answer of the mock itself (routing, bad body, unknown model).
fn json_error(status: StatusCode, message: &str) -> Response<MockBody> {
    let body = serde_json::to_vec(&error_body(status.as_u16(), message, None)).expect("serializing a JSON value");
    let len = body.len();
    let mut resp = Response::new(MockBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

impl fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut models: Vec<String> = lock(&self.shared.models).keys().cloned().collect();
        models.sort();
        f.debug_struct("MockUpstream")
            .field("models", &models)
            .field("requests", &lock(&self.shared.requests).len())
            .finish()
    }
}

impl<B> Service<Request<B>> for MockUpstream
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<MockBody>;
    type Error = MockTransportError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<MockBody>, MockTransportError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => {
                    let e = e.into();
                    return Err(MockTransportError::new(format!(
                        "mock upstream could not read the request body: {e}"
                    )));
                }
            };
            this.handle(parts, body).await
        })
    }
}

// ===== RecordedRequest =====

/// A request as the mock received it, before any reply was applied.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RecordedRequest {
    /// The request method.
    pub method: Method,
    /// The request URI (absolute or path-only, as sent).
    pub uri: Uri,
    /// The request headers.
    pub headers: HeaderMap,
    /// The whole request body.
    pub body: Bytes,
    /// The body's top-level `"model"`, when it is a JSON object with a string
    /// `model`.
    pub model: Option<String>,
}

impl RecordedRequest {
    /// The body parsed as JSON.
    ///
    /// # Panics
    ///
    /// If the body is not valid JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "recorded request body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

#[cfg(test)]
mod stream_tests;
#[cfg(test)]
mod tests;
