//! Keep LLM chat-completion calls alive when a model or provider fails.
//!
//! [`FallbackLayer`] wraps any HTTP client service that speaks the
//! OpenAI/OpenRouter chat-completions JSON. It buffers the request body once,
//! then replays it down an ordered [`Chain`] of models — rewriting only the
//! top-level `"model"` value, never re-serializing the prompt — until one
//! attempt gives an acceptable answer. Each response says which model served
//! and why the earlier ones failed ([`FallbackReport`]).
//!
//! # Example
//!
//! ```
//! use llm_fallback_mock::{MockUpstream, Reply};
//! use llm_fallback::{Chain, FallbackLayer, FallbackReport, Route};
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Any `Service<http::Request<ReplayBody>>` works: a hyper client, or here
//! // the OpenRouter mock of the llm-fallback-mock crate, with a primary that is down.
//! let upstream = MockUpstream::new()
//!     .model("anthropic/claude-3.5-sonnet", Reply::status(503))
//!     .model("openai/gpt-4o", Reply::ok());
//!
//! let chain = Chain::new([
//!     Route::new("anthropic/claude-3.5-sonnet").label("primary").timeout(Duration::from_secs(30)),
//!     Route::new("openai/gpt-4o").label("secondary").timeout(Duration::from_secs(25)),
//! ])
//! .deadline(Duration::from_secs(60));
//!
//! let svc = ServiceBuilder::new().layer(FallbackLayer::new(chain)).service(upstream);
//! let request = http::Request::post("http://127.0.0.1/api/v1/chat/completions")
//!     .header("content-type", "application/json")
//!     .body(r#"{"model":"anthropic/claude-3.5-sonnet","messages":[{"role":"user","content":"hi"}]}"#.to_string())
//!     .unwrap();
//!
//! let resp = svc.oneshot(request).await.unwrap();
//! let report = resp.extensions().get::<FallbackReport>().unwrap();
//! assert_eq!(report.served_model(), "openai/gpt-4o");
//! assert_eq!(report.attempts().len(), 2);
//! assert_eq!(resp.headers()["x-fallback-model"], "openai/gpt-4o");
//! # }
//! ```
//!
//! `FallbackLayer::new(chain)` uses the default settings. The others (the
//! [`Policy`], body limits, cooldowns, hedging, drills, what the exhaustion
//! answer says) are given once on a [`FallbackBuilder`]
//! (`FallbackLayer::builder(chain)`), which builds the tower layer with
//! [`layer`](FallbackBuilder::layer) or the reqwest middleware with
//! `middleware` (feature `reqwest`).
//!
//! # What falls back and what stops
//!
//! The [`DefaultPolicy`]:
//!
//! | the attempt got | the chain |
//! |---|---|
//! | a transport error (connect, reset, unreadable body) | falls back |
//! | no answer within the route's `timeout` | falls back |
//! | 408, 429, 500, 502, 503, 504, 524, 529 (any 5xx) | falls back |
//! | 400 or 404 that names the model: unknown model, no endpoints, `context_length_exceeded` | falls back |
//! | 403 moderation (`content_policy_violation`, moderation metadata) | falls back |
//! | HTTP 2xx whose JSON has an `error` object, no `choices`, or `finish_reason: "error"`; or a 2xx body that is not JSON | falls back |
//! | 401 (bad key), 402 (no credits), any other 400 (the caller's bug), other 4xx | stops: that response goes back as-is |
//! | a 2xx completion; a 2xx event stream that reached its first content | is served |
//!
//! Write your own rules with a closure; see [`Policy`].
//!
//! # Streaming
//!
//! For a `text/event-stream` answer the layer holds the response until the
//! stream's *commit point*: the first `data:` chunk that carries content (a
//! delta with text, tool calls, reasoning…, or a `finish_reason`), or
//! `[DONE]`. Keep-alive comments (`: OPENROUTER PROCESSING`) and role-only
//! chunks are not progress. Before commit, an error chunk (`error` object or
//! `finish_reason: "error"`, `code` a number or a string), a broken body, the
//! stream ending, or [`Route::first_token_timeout`] (which keep-alives do not
//! reset) fail the attempt and the next route is tried — the caller sees
//! nothing of it.
//!
//! After commit the held bytes and the rest of the stream pass through
//! unchanged, one frame per poll (backpressure is kept). Nothing is ever
//! replayed once the caller has part of an answer. Instead, a stream that
//! breaks, stalls past [`Route::idle_timeout`], ends without `[DONE]` or a
//! final `finish_reason`, or sends an event larger than 8 MiB is ended with
//! one SSE error chunk in OpenRouter's shape (`finish_reason: "error"`,
//! `error.code` `stream_broken`, `stream_stalled`, `stream_truncated` or
//! `stream_event_too_large`), so no client mistakes it for a whole answer;
//! the upstream's body is dropped then. Before commit an event that large
//! fails the attempt (no buffer an upstream fills grows past that bound). An error chunk the upstream sends itself passes through.
//!
//! A streamed response carries the [`FallbackReport`] as of the commit point
//! (the served model is the committed chunk's `model`) and a
//! [`StreamReport`] handle that resolves to the final report when the stream
//! ends: [`Outcome::StreamBroken`] with the reason, or the usage from the
//! last chunk. The chain's deadline bounds the wait for the commit point; a
//! stream that has begun is bounded by its idle timeout only.
//!
//! # API shapes
//!
//! The same guarantees hold for every [`Dialect`], told by the request's
//! path (`…/chat/completions`, `…/responses`, `…/messages`, `…/embeddings`,
//! `…/completions`) or by a `Dialect` the caller puts in the request's
//! extensions. Each reads its own answers: a Responses `status` and
//! `error`, a Messages `type`, an embeddings `data`. Each stream commits at
//! its own first output (a Responses output delta, never
//! `response.created`; a Messages `content_block_delta`, never
//! `message_start` or `ping`), ends properly its own way
//! (`response.completed`, `message_stop`), and when broken after commit gets
//! one terminal event of its own shape (`response.failed`; Anthropic's
//! `event: error`). Errors the layer writes (exhaustion, refusals) are
//! OpenAI's error JSON, or Anthropic's for Messages. An
//! [`Endpoint`](native::Endpoint) maps a request to its dialect's path on
//! another base, with that API's key header (`x-api-key` and
//! `anthropic-version` for Messages on Anthropic's own API), skips routes
//! whose endpoint does not serve the dialect, and keeps stateful Responses
//! requests (`previous_response_id`, `conversation`) on their upstream
//! ([`SkipReason::Stateful`]).
//!
//! ```
//! use llm_fallback_mock::{MockUpstream, Reply};
//! use llm_fallback::{Chain, FallbackLayer, FallbackReport, Route};
//! use http_body_util::BodyExt;
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Anthropic overloaded (529): the Messages request falls back.
//! let upstream = MockUpstream::new()
//!     .model("anthropic/claude-sonnet-4", Reply::status(529))
//!     .model("anthropic/claude-3.5-haiku", Reply::ok().content("pong"));
//! let chain = Chain::new([Route::new("anthropic/claude-sonnet-4"), Route::new("anthropic/claude-3.5-haiku")]);
//! let request = http::Request::post("http://openrouter.test/api/v1/messages")
//!     .body(r#"{"model":"anthropic/claude-sonnet-4","max_tokens":64,"messages":[{"role":"user","content":"ping"}]}"#.to_string())
//!     .unwrap();
//! let resp = FallbackLayer::new(chain).layer(upstream).oneshot(request).await.unwrap();
//! assert_eq!(resp.extensions().get::<FallbackReport>().unwrap().served_model(), "anthropic/claude-3.5-haiku");
//! let body = resp.into_body().collect().await.unwrap().to_bytes();
//! let message: serde_json::Value = serde_json::from_slice(&body).unwrap();
//! assert_eq!(message["type"], "message");
//! assert_eq!(message["content"][0]["text"], "pong");
//! # }
//! ```
//!
//! # Routing by the requested model
//!
//! A [`ChainSet`] maps model names and aliases to chains
//! ([`ChainSet::model`]), so the caller's `model` picks its fallbacks; a
//! model that names no chain is passed through, sent to the default chain
//! or refused ([`UnknownModel`]). With
//! [`FallbackBuilder::caller_chains`] a request's OpenRouter-style `models`
//! array is its chain ([`CallerChains`], off by default). The order in which
//! explicit picks, the caller's list, the model and the request's needs
//! choose a chain is in [`ChainSet`]'s docs.
//!
//! # Per-route overrides
//!
//! A route may set or remove top-level keys of its attempts' bodies
//! ([`Route::set`], [`Route::remove`], like Portkey's `override_params`):
//! `max_tokens`, `temperature`, `reasoning`, `service_tier`, for any API
//! shape. They are edits of the caller's bytes like the model's, so the
//! prompt is still never copied; the keys the layer owns are refused when
//! the route is built ([`Overrides::OWNED_KEYS`]).
//!
//! # When everything fails
//!
//! The caller gets **one synthesized answer**, whatever the last failure was
//! (an error status, a transport error or a timeout): `502 Bad Gateway`, or
//! `504 Gateway Timeout` when the chain's deadline ended it, with an
//! OpenAI-style error body whose `message` names every model tried and why it
//! failed, and whose `metadata.attempts` lists them as data (status,
//! `error_type`, upstream message, `raw`, provider, elapsed). The shortest
//! upstream `Retry-After` is passed on. The [`FallbackReport`] says the same
//! in the response extensions ([`Resolution::Exhausted`]). For callers who
//! should not see upstream texts or transport errors (a gateway), set
//! [`FallbackBuilder::exhaustion_body`] to [`ExhaustionBody::Summary`].
//!
//! A response the policy *stops* on (a `401`, a caller-fault `400`) is the
//! upstream's own response, unchanged, with the report attached.
//!
//! # Bad input
//!
//! The body is refused with a `400` in OpenAI error JSON — and the upstream
//! is never called — when it is not a JSON object, has no top-level `model`,
//! has a `model` that is not a string, has a duplicate top-level `model`
//! (also `models`, `provider`, `stream`, `route`, `transforms`), or is malformed around its
//! top-level keys. A body larger than [`FallbackBuilder::max_body_bytes`] is
//! refused with `413`.
//!
//! # Composition
//!
//! Per-model retries go *inside* the fallback (`tower::retry` under it, so a
//! model gets its retries before the chain moves on), overall timeouts and
//! tracing *outside* (`tower_http::trace::TraceLayer` over it). Layers inside
//! see an [`Attempt`] extension naming the hop they serve. [`ReplayBody`] is
//! `Clone`, so an inner retry policy can clone requests cheaply.
//!
//! # Observability
//!
//! Each request runs in a `llm_fallback.request` span, each attempt in a
//! `llm_fallback.attempt` span, with the OpenTelemetry GenAI attributes
//! `gen_ai.request.model` and `gen_ai.response.model`, plus
//! `fallback.attempt`, `fallback.label`, `fallback.outcome`,
//! `fallback.latency_ms`, `http.response.status_code` and `error.type`.
//! Headers, keys and bodies are never recorded. A failed attempt logs one
//! `WARN` event.
//!
//! # How it differs from `tower::retry`
//!
//! `tower::retry` sends the same request again. This layer changes the
//! request between attempts (the model), understands LLM error bodies
//! (including errors inside HTTP 200), bounds the whole chain with a deadline
//! and reports every hop. Use both: retry inside, fallback outside.
//!
//! # Features
//!
//! - `metrics`: counters and histograms through the `metrics` facade (names
//!   and labels in the README).
//! - `reqwest`: [`FallbackMiddleware`], the same engine for
//!   [`reqwest_middleware`] clients: `ClientBuilder::new(client).with(FallbackMiddleware::new(chain))`.
//!   Same chain, policy, rewrite, streaming commit point, report and
//!   exhaustion answer; the report is in the `reqwest::Response`'s
//!   extensions. Off by default; needs Rust 1.85 (reqwest 0.13).
//! - `config`: [`config::Config`], the whole setup (named chains, routes,
//!   policy knobs, limits) from a TOML or JSON file, and
//!   [`FallbackBuilder::from_config`]. Unknown keys and bad values are errors
//!   naming the file, the key and what is expected; API keys come only from
//!   the environment variables the file names. Off by default; needs Rust
//!   1.85 (toml 1).
//! - `full`: every feature.
//!
//! # Testing
//!
//! The OpenRouter-compatible mock upstream the examples here use is its own
//! crate, [llm-fallback-mock](https://docs.rs/llm-fallback-mock): an
//! in-process tower service and a loopback HTTP server with scripted faults.
//! Add it as a dev-dependency (`cargo add --dev llm-fallback-mock`).

// `unsafe` is denied everywhere but one module, `json::simd`, which says why.
#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
// No byte of a request or an answer may reach a panic: the library
// indexes with `get`, and has no `unwrap`, `expect` or `panic!` but the
// few configuration-time ones a builder documents (each allowed where it
// is, under `# Panics`). Tests may use them all (clippy.toml).
#![warn(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod affinity;
#[cfg(feature = "async-openai")]
#[cfg_attr(docsrs, doc(cfg(feature = "async-openai")))]
pub mod async_openai;
mod body;
mod builder;
mod capability;
mod chain;
#[cfg(feature = "config")]
#[cfg_attr(docsrs, doc(cfg(feature = "config")))]
pub mod config;
pub mod deployment;
mod dialect;
mod engine;
mod future;
pub mod health;
mod hop;
mod inspect;
mod json;
mod layer;
mod metrics;
pub mod native;
pub mod policy;
mod redact;
#[cfg(feature = "redis")]
mod redis_task;
mod report;
mod request;
#[cfg(feature = "reqwest")]
mod reqwest;
mod route;
mod stream;

#[cfg(feature = "reqwest")]
pub use crate::reqwest::{FallbackMiddleware, StreamingBodyError};
pub use body::ResponseBody;
pub use builder::FallbackBuilder;
pub use capability::{Capabilities, Needs, Price, PriceGuard, SkipReason, BYTES_PER_TOKEN};
pub use chain::{CallerChains, Chain, ChainName, ChainSet, ModelTarget, UnknownModel};
pub use deployment::{Balance, Deployment};
pub use dialect::Dialect;
pub use future::ResponseFuture;
pub use json::ReplayBody;
pub use layer::{FallbackLayer, FallbackService};
pub use policy::{DefaultPolicy, Policy};
pub use report::{
    AttemptRecord, ExhaustionBody, FallbackReport, Outcome, Resolution, UpstreamAttempt, UpstreamError, Usage,
};
pub use route::{Attempt, OverrideError, Overrides, Route};
pub use stream::StreamReport;

/// The boxed error type used where errors of different sources meet.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[doc(hidden)]
pub mod __private {
    //! Not public API: entry points for the benches, the property tests and
    //! the rewrite fuzz target. They call the engine's own functions (the
    //! request index and `attempt_body`), never a copy of them. May change
    //! in any release.

    use crate::hop::Hop;
    use crate::json::ReplayBody;
    use crate::Route;

    /// A route compiled as [`Chain::new`](crate::Chain::new) compiles it, so
    /// a bench measures the rewrite and not the compiling.
    #[derive(Debug)]
    pub struct Compiled(Hop, std::sync::Arc<crate::request::RecordKeys>);

    impl Compiled {
        /// Compiles `route` (its native fallbacks must fit one attempt),
        /// with the keys an index records for its overrides.
        pub fn new(route: Route) -> Self {
            let hop = Hop::new(route);
            let keys = crate::request::RecordKeys::new(hop.overrides.iter().map(|o| &*o.key));
            Compiled(hop, std::sync::Arc::new(keys))
        }

        /// The model id it sends.
        pub fn model(&self) -> &str {
            &self.0.model
        }
    }

    /// The deployment the first route of `chain` starts with for one
    /// request at `now`, as the plan chooses it (`None` when it has no
    /// deployments; the plan is handed the time it already read). For the
    /// deployment-choice bench.
    pub fn choose_deployment(chain: &crate::Chain, now: tokio::time::Instant) -> Option<usize> {
        let unit = chain.hops().first()?.route.unit.as_ref()?;
        Some(unit.group.choose(now))
    }

    /// A chat body with its request index, as the layer holds it.
    #[derive(Debug)]
    pub struct IndexedBody(bytes::Bytes, crate::request::RequestIndex);

    /// Indexes `body` as a chat request (`None` when the layer would refuse it).
    pub fn index_body(body: bytes::Bytes) -> Option<IndexedBody> {
        let index = crate::request::index_request(&body).ok()?;
        Some(IndexedBody(body, index))
    }

    /// What sticky sessions add to one request on `chain`'s primary route
    /// (with deployments): the session's hash from `headers` and `body`,
    /// its pin looked up, the deployment chosen (the pin, else by the
    /// route's balance), and the pin written as when that deployment
    /// serves. For the sticky-session bench.
    pub fn sticky_choice(
        affinity: &crate::affinity::Affinity,
        chain: &crate::Chain,
        headers: &http::HeaderMap,
        body: &IndexedBody,
        now: tokio::time::Instant,
    ) -> Option<usize> {
        let (body, index) = (&body.0[..], &body.1);
        let unit = chain.hops().first()?.route.unit.as_ref()?;
        let session = affinity.session(headers, body, index)?;
        let key = unit.group.session_key(session);
        let store = affinity.store_ref();
        let member = store
            .get(key, now)
            .map(|m| m as usize)
            .filter(|m| *m < unit.group.members())
            .unwrap_or_else(|| unit.group.choose(now));
        store.pin(key, member as u32, now, affinity.time_to_live());
        Some(member)
    }

    /// The name of the chain `chains` picks for a request asking for
    /// `model` (no explicit pick, no `models`, no needs), as the layer picks
    /// it; `None` when the model is refused. For the model-choice bench.
    pub fn pick_chain(chains: &crate::ChainSet, model: &str) -> Option<std::sync::Arc<str>> {
        // The literal is only sent by a pass-through chain, never here.
        match chains.pick(None, model, model.as_bytes(), None, None) {
            Ok(crate::chain::Picked::Set(name, _)) => Some(name.clone()),
            Ok(crate::chain::Picked::Own(name, _)) => Some(name),
            Err(_) => None,
        }
    }

    /// Indexes `body` like the layer does and reads what it needs
    /// (capabilities, prompt estimate); `Err` as for [`rewrite_for`].
    pub fn detect_needs(body: &bytes::Bytes) -> Result<crate::Needs, String> {
        let index = crate::request::index_request_with_media(body).map_err(|bad| bad.message)?;
        Ok(crate::request::detect_needs(body, &index))
    }

    /// What the layer does for a chain whose routes declare limits: one
    /// index, the needs read from it, and the attempt's body for `route`.
    pub fn rewrite_with_needs(body: &bytes::Bytes, route: &Compiled) -> Result<(ReplayBody, crate::Needs), String> {
        let index = crate::request::index_request_with_media(body).map_err(|bad| bad.message)?;
        let needs = crate::request::detect_needs(body, &index);
        let replay = crate::engine::attempt_body(body, &index, &route.0).map_err(|e| e.to_string())?;
        Ok((replay, needs))
    }

    /// Indexes `body` like the layer does and builds the body the layer
    /// would send to `route`; `Err` carries the message of the `400` the
    /// layer would send.
    ///
    /// The index records the members of the route's override keys, as the
    /// layer's does for the keys of its chains.
    pub fn rewrite_for(body: &bytes::Bytes, route: &Compiled) -> Result<ReplayBody, String> {
        let index =
            crate::request::index_recording(crate::Dialect::Chat, body, false, &route.1).map_err(|bad| bad.message)?;
        crate::engine::attempt_body(body, &index, &route.0).map_err(|e| e.to_string())
    }

    /// [`rewrite_for`] with an index that recorded nothing: the overrides'
    /// keys are found by a walk over the body (what a route the index was
    /// not told of gets). For the property tests, which check both agree.
    pub fn rewrite_walking(body: &bytes::Bytes, route: &Compiled) -> Result<ReplayBody, String> {
        let index = crate::request::index_request(body).map_err(|bad| bad.message)?;
        crate::engine::attempt_body(body, &index, &route.0).map_err(|e| e.to_string())
    }

    /// Reads a buffered answer as the engine does for `dialect` (one scan:
    /// its error, its answer parts, model, usage); true when it is a JSON
    /// object. For the inspection bench.
    pub fn inspect_answer(dialect: crate::Dialect, body: &[u8]) -> bool {
        let facts = dialect.inspect(body);
        facts.json && facts.error.is_none()
    }

    /// [`rewrite_for`] a plain route to `model`.
    pub fn rewrite_model(body: &bytes::Bytes, model: &str) -> Result<ReplayBody, String> {
        rewrite_for(body, &Compiled::new(Route::new(model)))
    }
}
