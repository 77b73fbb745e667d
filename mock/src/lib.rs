//! An OpenRouter-compatible mock upstream with scripted faults.
//!
//! [`MockUpstream`] is an in-process tower [`Service`] that answers
//! `POST /api/v1/chat/completions` (and `/v1/chat/completions`) the way
//! OpenRouter does: completions, error bodies with `metadata.error_type`,
//! `Retry-After`, HTTP 200 bodies that are really errors, latency, hangs and
//! dropped connections. Each model follows a [`Script`] of [`Reply`]s; every
//! request is recorded so tests can check what was sent.
//! It serves the OpenAI Responses API (`…/responses`), Anthropic Messages
//! (`…/messages`), embeddings (`…/embeddings`) and legacy completions
//! (`…/completions`) the same way, each reply in the shape of the
//! request's API: see [Dialects](#dialects).
//! [`MockServer`] puts the same upstream behind a real loopback HTTP/1.1
//! server for clients that need a URL.
//!
//! It is the upstream [llm-fallback](https://docs.rs/llm-fallback)'s own
//! tests, examples and benches run against, and works for any client of an
//! OpenAI-compatible chat-completions, Responses or embeddings API, or of
//! the Anthropic Messages API. Add it as a dev-dependency:
//! `cargo add --dev llm-fallback-mock`. It does not depend on llm-fallback.
//!
//! ```
//! use llm_fallback_mock::{MockServer, MockUpstream, Reply, Script};
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
//! | a path other than `/api/v1/<endpoint>` and `/v1/<endpoint>` of the five [`Dialect`]s | `404` JSON error (OpenRouter's shape) |
//! | a method other than `POST` | `405` JSON error with `Allow: POST` |
//! | a body that is not a JSON object | `400` `Invalid JSON body: ...` |
//! | no string `model` | `400` `No model specified` |
//! | embeddings: no `input`, or one that is not a string, token array or array of those (or objects); `dimensions` not 1..=3072; `encoding_format` not `float` or `base64` | `400` naming the field in `error.param` |
//! | embeddings: a `models` array | `400` `'models' is not supported on embeddings ...` |
//! | more than 3 entries in `models` | `400` `'models' array must have 3 items or fewer` |
//! | `models` not an array of strings | `400` `'models' must be an array of model IDs, found ...` |
//! | a `provider` object OpenRouter would refuse (unknown key, wrong type) | `400` `Invalid provider preferences: ...` (serde's message, naming the key) |
//! | `route` other than `"fallback"` or `"sort"` | `400` `Invalid route ...: expected "fallback" or "sort"` |
//! | a model with no script | `400` `<model> is not a valid model ID` |
//! | a scripted model | the script's next [`Reply`] |
//! | `model` plus `models`, or a model with [provider scripts](MockUpstream::provider) | OpenRouter's server-side routing, below |
//!
//! The mock's own errors (these rows) come in the error shape of the
//! path's dialect; every request, valid or not, is recorded with its
//! [`dialect`](RecordedRequest::dialect).
//!
//! # Server-side routing
//!
//! Like OpenRouter, the mock falls back on its side within one HTTP request.
//! It does so on chat completions, Responses, Messages and completions,
//! whose OpenRouter references all list `models`, `provider` and `route`.
//! Embeddings take `provider` (their reference lists it) but not `models`:
//! the mock refuses a `models` there with a 400, so a test sees a client
//! that would mix two models' vector spaces.
//! The candidates are `model`, then each entry of `models` in order; a
//! model scripted per provider with [`MockUpstream::provider`] is one
//! candidate per allowed provider, all of them before the next model. For
//! such a model the `provider` object picks the providers: the entries of
//! `order` that serve the model, in that order, then (unless
//! `allow_fallbacks` is `false`) its other providers in registration order;
//! `only` keeps the providers it names and `ignore` drops them (names match
//! ignoring ASCII case). With none left, that model fails with `404` `No
//! allowed providers are available for the selected model.` A model scripted
//! with [`MockUpstream::model`] has one provider, its script, whatever the
//! `provider` object says. `route` (`"fallback"` or the deprecated `"sort"`)
//! changes nothing: models are tried in turn either way.
//!
//! Each candidate draws its script's next reply, advancing the script as a
//! request of its own would, and takes the reply's
//! [latency](Reply::latency). The first success is served, with the
//! candidate as the body's `model` and the provider as its `provider`. Every
//! error is tried over: a non-2xx status other than 401 and 402,
//! [`ok_with_error`](Reply::ok_with_error), [`no_choices`](Reply::no_choices),
//! [`finish_reason_error`](Reply::finish_reason_error), a model with no
//! script. A 401 or 402 is served at once (it is about the account, not the
//! model), a [`hang`](Reply::hang) hangs and a
//! [`transport_error`](Reply::transport_error) drops the connection. A
//! [`stream`](Reply::stream) counts as a success whatever it sends later:
//! OpenRouter cannot fall back once a token is out, and the mock does not
//! look ahead for an error before the first token. When every candidate
//! fails, the last one's error is served.
//!
//! With the request header `X-OpenRouter-Metadata: enabled`, a successful
//! completion (not a stream) carries
//! `"openrouter_metadata":{"attempts":[...]}`, one entry per try in order:
//! `{"model":..,"provider":..,"status":..}` plus `"error":{"message":..}` for
//! a failure. `provider` is `null` when no provider was reached (a model
//! with no script or no allowed provider); `status` is the HTTP status, or
//! 502 for a 200 that is really an error. [`MockUpstream::tries`] and
//! [`MockUpstream::tries_for_provider`] count the tries.
//!
//! ```
//! use llm_fallback_mock::{MockUpstream, Reply};
//! use http_body_util::BodyExt;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let upstream = MockUpstream::new()
//!     .provider("anthropic/claude-3.5-sonnet", "Anthropic", Reply::status(529))
//!     .provider("anthropic/claude-3.5-sonnet", "Amazon Bedrock", Reply::status(429))
//!     .model("openai/gpt-4o", Reply::ok().provider("OpenAI"));
//! let request = http::Request::post("http://openrouter.test/api/v1/chat/completions")
//!     .header("x-openrouter-metadata", "enabled")
//!     .body(r#"{"model":"anthropic/claude-3.5-sonnet","models":["openai/gpt-4o"],"messages":[]}"#.to_string())
//!     .unwrap();
//! let response = upstream.clone().oneshot(request).await.unwrap();
//! assert_eq!(response.status(), 200);
//! let bytes = response.into_body().collect().await.unwrap().to_bytes();
//! let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
//! assert_eq!(body["model"], "openai/gpt-4o");
//! let attempts = body["openrouter_metadata"]["attempts"].as_array().unwrap();
//! let tried: Vec<_> = attempts.iter().map(|a| (a["provider"].as_str().unwrap(), a["status"].as_u64().unwrap())).collect();
//! assert_eq!(tried, [("Anthropic", 529), ("Amazon Bedrock", 429), ("OpenAI", 200)]);
//!
//! // One HTTP request, three tries.
//! assert_eq!(upstream.request_count("anthropic/claude-3.5-sonnet"), 1);
//! assert_eq!(upstream.tries("anthropic/claude-3.5-sonnet"), 2);
//! assert_eq!(upstream.tries_for_provider("anthropic/claude-3.5-sonnet", "Amazon Bedrock"), 1);
//! assert_eq!(upstream.tries("openai/gpt-4o"), 1);
//! # }
//! ```
//!
//! # Dialects
//!
//! The path picks the [`Dialect`]: `…/chat/completions`, `…/responses`,
//! `…/messages`, `…/embeddings` or `…/completions`, under `/api/v1`
//! (OpenRouter's base; [`MockServer::base_url`]) or `/v1` (what the OpenAI
//! and Anthropic SDKs add to a bare host). Scripts are per model, not per
//! dialect: one [`Reply`] is rendered in the dialect of each request it
//! answers, so existing chat scripts keep working and the same fault can be
//! played in any API's shape.
//!
//! | reply | Responses | Messages | embeddings | completions |
//! |---|---|---|---|---|
//! | [`ok`](Reply::ok) | `{"object":"response","status":"completed","error":null,"output":[{"type":"message",.."content":[{"type":"output_text",..}]}],"usage":..}` | `{"type":"message","role":"assistant","content":[{"type":"text",..}],"stop_reason":"end_turn","usage":..}` | `{"object":"list","data":[{"object":"embedding","index":0,"embedding":[..]}],"model":..,"usage":..}` | `{"object":"text_completion","choices":[{"text":..,"index":0,"finish_reason":"stop"}],..}` |
//! | [`length_stop`](Reply::length_stop) | `status: "incomplete"`, `incomplete_details.reason: "max_output_tokens"` | `stop_reason: "max_tokens"` | — | `finish_reason: "length"` |
//! | [`status`](Reply::status), [`error`](Reply::error) | OpenAI error JSON | Anthropic error JSON | OpenAI error JSON | as chat |
//! | [`ok_with_error`](Reply::ok_with_error) | 200, `status: "failed"`, an `error` object | 200, `{"type":"error",..}` (`api_error`) | 200, an `error` object, no `data` | as chat |
//! | [`finish_reason_error`](Reply::finish_reason_error) | 200, `status: "failed"` with the partial output | as `ok_with_error` | as `ok_with_error` | `finish_reason: "error"` |
//! | [`no_choices`](Reply::no_choices) | no `status`, no `output` | no `content`, no `stop_reason` | no `data` | no `choices` |
//! | [`stream`](Reply::stream) | named events, `response.created` .. `response.completed`, no `[DONE]` | `message_start` .. `message_stop` | as `ok` | `text_completion` chunks, `[DONE]` |
//! | [`error_after`](Reply::error_after) | `response.failed` | `event: error`, `overloaded_error` | — | as chat |
//! | [`error_event_after`](Reply::error_event_after) | `event: error` (`{type, code, message, param, sequence_number}`) | as `error_after` | — | as chat |
//! | [`no_done`](Reply::no_done) | no `response.completed` | no `message_stop` | — | no `[DONE]` |
//! | [`hang`](Reply::hang), [`latency`](Reply::latency), [`transport_error`](Reply::transport_error), [`raw`](Reply::raw), [`retry_after`](Reply::retry_after), [`header`](Reply::header), [`cut_after`](Reply::cut_after), [`stall_after`](Reply::stall_after), [`keep_alive`](Reply::keep_alive), [`chunk_interval`](Reply::chunk_interval) | the same in every dialect ||||
//!
//! The error bodies by status:
//!
//! | status | OpenAI `type` / `code` (Responses, embeddings) | Anthropic `error.type` (Messages) |
//! |---|---|---|
//! | 400 | `invalid_request_error` / `invalid_prompt` | `invalid_request_error` |
//! | 401 | `authentication_error` / `invalid_api_key` | `authentication_error` |
//! | 402 | `insufficient_quota` / `insufficient_quota` | `billing_error` |
//! | 403 | `permission_error` / `content_policy_violation` | `permission_error` |
//! | 404 | `invalid_request_error` / `model_not_found` | `not_found_error` |
//! | 408 | `timeout` / `timeout` | `timeout_error` |
//! | 413 | `invalid_request_error` / `request_too_large` | `request_too_large` |
//! | 429 | `rate_limit_error` / `rate_limit_exceeded` | `rate_limit_error` |
//! | 504, 524 | `server_error` / `server_error` | `timeout_error` |
//! | 529 | `server_error` / `server_error` | `overloaded_error` |
//! | other 5xx | `server_error` / `server_error` | `api_error` |
//! | other 4xx | `invalid_request_error` / `null` | `invalid_request_error` |
//!
//! The OpenAI shape is `{"error":{"message":..,"type":..,"param":null,
//! "code":..}}` (`code` a string, as the SDKs read it; the codes are the
//! ones OpenRouter's Responses API documents), Anthropic's `{"type":"error",
//! "error":{"type":..,"message":..},"request_id":"req_mock_<n>"}`; the
//! messages are the chat ones. [`Reply::error`]'s `error_type` sets the
//! OpenAI `type` and `code`, or the Anthropic `error.type`.
//! [`provider`](Reply::provider) and [`raw_message`](Reply::raw_message)
//! show only in chat and completions bodies (the other shapes have no
//! field for them); `openrouter_metadata` (with `X-OpenRouter-Metadata:
//! enabled`) comes on a good buffered answer of every dialect. Ids:
//! `resp_mock_<n>` (a response), `msg_mock_<n>` (its output message, or a
//! Messages message), `gen-mock-<n>` (chat, completions and the
//! `X-Generation-Id` header of every good answer).
//!
//! Streams of the Responses and Messages dialects send a preamble at once
//! (Responses: `response.created`, `response.in_progress`,
//! `response.output_item.added` with an empty item,
//! `response.content_part.added`; Messages: `message_start`,
//! `content_block_start` and [`pings`](Reply::pings), one by default),
//! then one event per token (`response.output_text.delta`,
//! `content_block_delta`) after each [`chunk_interval`](Reply::chunk_interval),
//! then the closing events. [Keep-alive comments](Reply::keep_alive) come
//! first, before the preamble, in every dialect. Each event is in its own
//! body frame, as `event: <type>` and one `data:` line whose JSON `type`
//! says the same; Responses events carry a `sequence_number` counting
//! every event. [`parse_sse_named`] reads them back with their names.
//!
//! An OpenAI Responses request, first rate limited, then answered:
//!
//! ```
//! use llm_fallback_mock::{Dialect, MockUpstream, Reply, Script};
//! use http_body_util::BodyExt;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let upstream = MockUpstream::new().model(
//!     "openai/gpt-4o",
//!     Script::sequence([Reply::status(429).retry_after(1), Reply::ok().content("pong")]),
//! );
//! let request = || {
//!     http::Request::post("http://openrouter.test/api/v1/responses")
//!         .body(r#"{"model":"openai/gpt-4o","input":"ping"}"#.to_string())
//!         .unwrap()
//! };
//! let limited = upstream.clone().oneshot(request()).await.unwrap();
//! assert_eq!(limited.status(), 429);
//! let bytes = limited.into_body().collect().await.unwrap().to_bytes();
//! let error: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
//! assert_eq!(error["error"]["code"], "rate_limit_exceeded");
//!
//! let answer = upstream.clone().oneshot(request()).await.unwrap();
//! let bytes = answer.into_body().collect().await.unwrap().to_bytes();
//! let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
//! assert_eq!(body["object"], "response");
//! assert_eq!(body["status"], "completed");
//! assert_eq!(body["output"][0]["content"][0]["text"], "pong");
//! assert_eq!(upstream.requests()[1].dialect, Some(Dialect::Responses));
//! # }
//! ```
//!
//! An Anthropic Messages stream that fails with `overloaded_error` before
//! its first content, after `message_start` and a `ping`:
//!
//! ```
//! use llm_fallback_mock::{parse_sse_named, MockUpstream, Reply};
//! use http_body_util::BodyExt;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let upstream = MockUpstream::new().model(
//!     "anthropic/claude-sonnet-4",
//!     Reply::stream().error_before_first_token(),
//! );
//! let request = http::Request::post("http://openrouter.test/v1/messages")
//!     .header("x-api-key", "sk-ant-test")
//!     .header("anthropic-version", "2023-06-01")
//!     .body(r#"{"model":"anthropic/claude-sonnet-4","max_tokens":64,"stream":true,"messages":[]}"#.to_string())
//!     .unwrap();
//! let response = upstream.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), 200);
//! let bytes = response.into_body().collect().await.unwrap().to_bytes();
//! let events = parse_sse_named(&bytes);
//! let names: Vec<_> = events.iter().map(|e| e.name().unwrap()).collect();
//! assert_eq!(names, ["message_start", "content_block_start", "ping", "error"]);
//! assert_eq!(events[3].json().unwrap()["error"]["type"], "overloaded_error");
//! # }
//! ```
//!
//! Embeddings: one small deterministic unit vector per input (8 floats, or
//! `dimensions`; base64 with `encoding_format: "base64"`), the same for the
//! same model and input and different for another model, as the vectors of
//! two real models are not comparable:
//!
//! ```
//! use llm_fallback_mock::{MockUpstream, Reply};
//! use http_body_util::BodyExt;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let upstream = MockUpstream::new()
//!     .model("openai/text-embedding-3-small", Reply::ok())
//!     .model("other/embedder", Reply::ok());
//! let embed = |model: &str| {
//!     let body = format!(r#"{{"model":"{model}","input":["cat","kitten"]}}"#);
//!     let request = http::Request::post("http://openrouter.test/api/v1/embeddings").body(body).unwrap();
//!     let upstream = upstream.clone();
//!     async move {
//!         let response = upstream.oneshot(request).await.unwrap();
//!         let bytes = response.into_body().collect().await.unwrap().to_bytes();
//!         serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
//!     }
//! };
//! let small = embed("openai/text-embedding-3-small").await;
//! assert_eq!(small["object"], "list");
//! assert_eq!(small["data"].as_array().unwrap().len(), 2);
//! assert_eq!(small["data"][1]["index"], 1);
//! assert_eq!(small["data"][0]["embedding"].as_array().unwrap().len(), 8);
//! let other = embed("other/embedder").await;
//! assert_ne!(small["data"][0]["embedding"], other["data"][0]["embedding"]);
//! # }
//! ```
//!
//! A legacy completions stream: `text_completion` chunks with
//! `choices[0].text`, then `[DONE]`, as chat:
//!
//! ```
//! use llm_fallback_mock::{parse_sse, MockUpstream, Reply};
//! use http_body_util::BodyExt;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let upstream = MockUpstream::new().model("openai/gpt-3.5-turbo-instruct", Reply::stream().tokens(["4", "2"]));
//! let request = http::Request::post("http://openrouter.test/api/v1/completions")
//!     .body(r#"{"model":"openai/gpt-3.5-turbo-instruct","prompt":"6*7=","stream":true}"#.to_string())
//!     .unwrap();
//! let response = upstream.oneshot(request).await.unwrap();
//! let bytes = response.into_body().collect().await.unwrap().to_bytes();
//! let events = parse_sse(&bytes);
//! let first = events[0].json().unwrap();
//! assert_eq!(first["object"], "text_completion");
//! assert_eq!(first["choices"][0]["text"], "4");
//! assert!(events.last().unwrap().is_done());
//! # }
//! ```
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

#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod body;
mod dialect;
mod embeddings;
mod reply;
mod routing;
mod server;
mod shapes;
mod sse;
mod stream;

pub use body::{MockBody, MockBodyError, MockTransportError};
pub use dialect::Dialect;
pub use reply::{Reply, Script};
pub use server::MockServer;
pub use sse::{parse_sse, parse_sse_named, NamedEvent, SseEvent};

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

use dialect::error_value;
use embeddings::EmbeddingRequest;
use reply::{Action, Ctx, Verdict};
use routing::{Attempt, METADATA_HEADER};

/// The 404 of a model whose providers the `provider` object all excludes.
const NO_ALLOWED_PROVIDERS: &str = "No allowed providers are available for the selected model.";

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
    /// Replies drawn per model, server-side tries included.
    tries: Mutex<HashMap<String, Tries>>,
    generations: AtomicU64,
}

/// How a model is scripted.
#[derive(Debug)]
enum Slot {
    /// One script, whoever serves the model ([`MockUpstream::model`]).
    Plain(Counted),
    /// One script per provider, in registration order (never empty).
    Providers(Vec<(String, Counted)>),
}

#[derive(Debug)]
struct Counted {
    script: Script,
    /// Replies this script has given.
    served: usize,
}

impl Counted {
    fn new(script: Script) -> Self {
        Self { script, served: 0 }
    }

    fn draw(&mut self) -> Reply {
        let reply = self.script.reply(self.served).clone();
        self.served = self.served.saturating_add(1);
        reply
    }
}

#[derive(Debug, Default)]
struct Tries {
    all: usize,
    by_provider: HashMap<String, usize>,
}

/// Who may serve a model, for one request.
enum Lookup {
    /// No script: not a valid model ID.
    Unknown,
    /// Its plain script.
    Plain,
    /// These providers, in the order to try.
    Providers(Vec<String>),
    /// It has provider scripts, but the `provider` object allows none.
    NoneAllowed,
}

/// What one request is answered with.
enum Pick {
    /// A drawn reply.
    Reply {
        reply: Box<Reply>,
        model: String,
        provider: Option<String>,
    },
    /// An error of the mock's own (a model with no script or no allowed provider).
    Mock { status: StatusCode, message: String },
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
    /// model's next request gets the new script's first reply. Provider
    /// scripts of the model are dropped: the new script serves it alone.
    pub fn set_script(&self, name: impl Into<String>, script: impl Into<Script>) {
        let slot = Slot::Plain(Counted::new(script.into()));
        lock(&self.shared.models).insert(name.into(), slot);
    }

    /// Scripts `model` as served by `provider` (builder form of
    /// [`set_provider_script`](Self::set_provider_script)). Call it once per
    /// provider: the order of the calls is the order OpenRouter tries them
    /// in when the request's `provider` object does not say otherwise (see
    /// [server-side routing](self#server-side-routing)).
    ///
    /// ```
    /// use llm_fallback_mock::{MockUpstream, Reply};
    ///
    /// // Azure is down; OpenRouter falls back to OpenAI on its side, unless
    /// // the request says `"provider":{"order":["Azure"],"allow_fallbacks":false}`.
    /// let upstream = MockUpstream::new()
    ///     .provider("openai/gpt-4o", "Azure", Reply::status(503))
    ///     .provider("openai/gpt-4o", "OpenAI", Reply::ok());
    /// # let _ = upstream;
    /// ```
    pub fn provider(self, model: impl Into<String>, provider: impl Into<String>, script: impl Into<Script>) -> Self {
        self.set_provider_script(model, provider, script);
        self
    }

    /// Replaces the script of `provider` for `model`, or adds the provider
    /// after the model's others, while the upstream is in use. The
    /// provider's next try gets the new script's first reply; the model's
    /// other providers keep their scripts and positions. A plain script set
    /// with [`model`](Self::model) is dropped: once a model has a provider
    /// script, its providers serve it.
    pub fn set_provider_script(
        &self,
        model: impl Into<String>,
        provider: impl Into<String>,
        script: impl Into<Script>,
    ) {
        let (provider, counted) = (provider.into(), Counted::new(script.into()));
        let mut models = lock(&self.shared.models);
        let slot = models
            .entry(model.into())
            .or_insert_with(|| Slot::Providers(Vec::new()));
        match slot {
            Slot::Providers(list) => match list.iter_mut().find(|(name, _)| *name == provider) {
                Some((_, existing)) => *existing = counted,
                None => list.push((provider, counted)),
            },
            Slot::Plain(_) => *slot = Slot::Providers(vec![(provider, counted)]),
        }
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

    /// How many HTTP requests named `model` as their top-level `model`
    /// (since the last [`clear_requests`](Self::clear_requests)). Server-side
    /// tries of `model` as an entry of `models` are not requests: see
    /// [`tries`](Self::tries).
    pub fn request_count(&self, model: &str) -> usize {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| r.model.as_deref() == Some(model))
            .count()
    }

    /// How many replies were drawn from `model`'s scripts (plain or per
    /// provider), server-side tries included, since the last
    /// [`clear_requests`](Self::clear_requests). A model with no script, or
    /// with no provider the request allowed, draws nothing.
    pub fn tries(&self, model: &str) -> usize {
        lock(&self.shared.tries).get(model).map_or(0, |t| t.all)
    }

    /// How many replies were drawn from the script of `provider` for `model`
    /// (see [`provider`](Self::provider)), since the last
    /// [`clear_requests`](Self::clear_requests). Plain scripts count only in
    /// [`tries`](Self::tries).
    pub fn tries_for_provider(&self, model: &str, provider: &str) -> usize {
        lock(&self.shared.tries)
            .get(model)
            .and_then(|t| t.by_provider.get(provider))
            .copied()
            .unwrap_or(0)
    }

    /// Forgets the recorded requests and the [`tries`](Self::tries). Scripts
    /// keep their position.
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
        lock(&self.shared.tries).clear();
    }

    /// Who may serve `model` under `prefs`.
    fn lookup(&self, model: &str, prefs: &routing::ProviderPrefs) -> Lookup {
        match lock(&self.shared.models).get(model) {
            None => Lookup::Unknown,
            Some(Slot::Plain(_)) => Lookup::Plain,
            Some(Slot::Providers(list)) => {
                let registered: Vec<&str> = list.iter().map(|(name, _)| name.as_str()).collect();
                let allowed = routing::providers(&registered, prefs);
                if allowed.is_empty() {
                    Lookup::NoneAllowed
                } else {
                    Lookup::Providers(allowed.into_iter().map(str::to_owned).collect())
                }
            }
        }
    }

    /// The next reply of `model` (of its `provider`'s script), advancing the
    /// script and counting the try. `None` if that script is gone (replaced
    /// since the lookup).
    fn draw(&self, model: &str, provider: Option<&str>) -> Option<Reply> {
        let reply = {
            let mut models = lock(&self.shared.models);
            match (models.get_mut(model)?, provider) {
                (Slot::Plain(counted), None) => counted.draw(),
                (Slot::Providers(list), Some(p)) => list.iter_mut().find(|(name, _)| name == p)?.1.draw(),
                _ => return None,
            }
        };
        let mut tries = lock(&self.shared.tries);
        let entry = tries.entry(model.to_owned()).or_default();
        entry.all = entry.all.saturating_add(1);
        if let Some(p) = provider {
            let n = entry.by_provider.entry(p.to_owned()).or_default();
            *n = n.saturating_add(1);
        }
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
        let want_metadata = parts
            .headers
            .get(METADATA_HEADER)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"enabled"));
        let dialect = Dialect::from_path(parts.uri.path());
        lock(&self.shared.requests).push(RecordedRequest {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers,
            body: body.clone(),
            model: model.clone(),
            dialect,
        });

        let Some(dialect) = dialect else {
            let message = format!("Not Found: no route for {}", parts.uri.path());
            return Ok(json_error(Dialect::Chat, StatusCode::NOT_FOUND, &message));
        };
        if parts.method != Method::POST {
            let message = format!("Method {} not allowed; use POST", parts.method);
            let mut resp = json_error(dialect, StatusCode::METHOD_NOT_ALLOWED, &message);
            resp.headers_mut().insert(ALLOW, HeaderValue::from_static("POST"));
            return Ok(resp);
        }
        let bad_request = |message: &str| Ok(json_error(dialect, StatusCode::BAD_REQUEST, message));
        let value = match parsed {
            Ok(value) => value,
            Err(e) => return bad_request(&format!("Invalid JSON body: {e}")),
        };
        let Value::Object(fields) = value else {
            return bad_request("Invalid JSON body: expected a JSON object");
        };
        let Some(model) = model else {
            return bad_request("No model specified: the body needs a string \"model\"");
        };
        let plan = match routing::plan(&fields, model, dialect) {
            Ok(plan) => plan,
            Err(message) => return bad_request(&message),
        };
        let embedding = if dialect == Dialect::Embeddings {
            match embeddings::read(&fields) {
                Ok(request) => Some(request),
                Err((message, param)) => {
                    let mut body = error_value(dialect, StatusCode::BAD_REQUEST, None, &message, None, None);
                    if let Some(error) = body.get_mut("error").and_then(Value::as_object_mut) {
                        error.insert("param".into(), Value::from(param));
                    }
                    return Ok(json_response(StatusCode::BAD_REQUEST, &body));
                }
            }
        } else {
            None
        };
        let request = Served {
            dialect,
            bytes: body.len(),
            embedding,
        };

        // Server-side routing: each model in turn, each allowed provider of
        // a model in turn, until one succeeds.
        let mut attempts: Vec<Attempt> = Vec::new();
        let mut last: Option<Pick> = None;
        // The latency of a failure that was tried over, waited before the next try.
        let mut pending: Option<std::time::Duration> = None;
        for candidate in &plan.models {
            if let Some(delay) = pending.take() {
                tokio::time::sleep(delay).await;
            }
            let providers = match self.lookup(candidate, &plan.prefs) {
                Lookup::Plain => vec![None],
                Lookup::Providers(list) => list.into_iter().map(Some).collect(),
                Lookup::Unknown => {
                    let message = format!("{candidate} is not a valid model ID");
                    last = Some(mock_failure(&mut attempts, candidate, StatusCode::BAD_REQUEST, message));
                    continue;
                }
                Lookup::NoneAllowed => {
                    let message = NO_ALLOWED_PROVIDERS.to_owned();
                    last = Some(mock_failure(&mut attempts, candidate, StatusCode::NOT_FOUND, message));
                    continue;
                }
            };
            for provider in providers {
                if let Some(delay) = pending.take() {
                    tokio::time::sleep(delay).await;
                }
                let Some(reply) = self.draw(candidate, provider.as_deref()) else {
                    let message = format!("{candidate} is not a valid model ID");
                    last = Some(mock_failure(&mut attempts, candidate, StatusCode::BAD_REQUEST, message));
                    continue;
                };
                if reply.is_hang() {
                    return std::future::pending().await;
                }
                let shown = reply.provider_name(provider.as_deref()).to_owned();
                let verdict = reply.verdict(candidate);
                let pick = Pick::Reply {
                    reply: Box::new(reply),
                    model: candidate.clone(),
                    provider,
                };
                match verdict {
                    Verdict::Success(status) => {
                        attempts.push(Attempt {
                            model: candidate.clone(),
                            provider: Some(shown),
                            status: status.as_u16(),
                            error: None,
                        });
                        let metadata = want_metadata.then(|| routing::metadata(&attempts));
                        return self.serve(pick, &request, metadata).await;
                    }
                    Verdict::Final => return self.serve(pick, &request, None).await,
                    Verdict::Failure { status, message } => {
                        tracing::debug!(model = %candidate, provider = %shown, status, "mock upstream: server-side try failed");
                        attempts.push(Attempt {
                            model: candidate.clone(),
                            provider: Some(shown),
                            status,
                            error: Some(message),
                        });
                        if let Pick::Reply { reply, .. } = &pick {
                            pending = reply.delay();
                        }
                        last = Some(pick);
                    }
                }
            }
        }
        let Some(last) = last else {
            // Unreachable: a plan has at least one model, and each try that
            // fails sets `last`.
            let message = "mock upstream: no candidate was tried";
            return Ok(json_error(dialect, StatusCode::INTERNAL_SERVER_ERROR, message));
        };
        self.serve(last, &request, None).await
    }

    /// Answers with `pick`: renders a drawn reply after its latency.
    async fn serve(
        &self,
        pick: Pick,
        request: &Served,
        metadata: Option<Value>,
    ) -> Result<Response<MockBody>, MockTransportError> {
        let (reply, model, provider) = match pick {
            Pick::Mock { status, message } => return Ok(json_error(request.dialect, status, &message)),
            Pick::Reply { reply, model, provider } => (reply, model, provider),
        };
        let ctx = Ctx {
            model: &model,
            provider: provider.as_deref(),
            generation: self.shared.generations.fetch_add(1, Ordering::Relaxed) + 1,
            request_bytes: request.bytes,
            metadata,
            dialect: request.dialect,
            embedding: request.embedding.as_ref(),
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

/// Logs a try that failed in the mock itself and returns its answer.
fn mock_failure(attempts: &mut Vec<Attempt>, model: &str, status: StatusCode, message: String) -> Pick {
    attempts.push(Attempt {
        model: model.to_owned(),
        provider: None,
        status: status.as_u16(),
        error: Some(message.clone()),
    });
    Pick::Mock { status, message }
}

/// A valid request, as the reply that answers it needs it.
struct Served {
    dialect: Dialect,
    /// Size of the request body.
    bytes: usize,
    /// What an embeddings request asked for.
    embedding: Option<EmbeddingRequest>,
}

/// A JSON error answer of the mock itself (routing, bad body, unknown
/// model), in `dialect`'s error shape.
fn json_error(dialect: Dialect, status: StatusCode, message: &str) -> Response<MockBody> {
    json_response(status, &error_value(dialect, status, None, message, None, None))
}

fn json_response(status: StatusCode, body: &Value) -> Response<MockBody> {
    let body = serde_json::to_vec(body).expect("serializing a JSON value");
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
    /// The dialect of the request's path; `None` for a path the mock does
    /// not serve (answered with 404).
    pub dialect: Option<Dialect>,
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
mod dialect_stream_tests;
#[cfg(test)]
mod dialect_tests;
#[cfg(test)]
mod routing_tests;
#[cfg(test)]
mod stream_tests;
#[cfg(test)]
mod tests;
