//! Scripted replies: what the mock answers for one request, and in what order.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};
use serde_json::{json, Map, Value};

use super::body::{MockBody, MockTransportError};
use super::dialect::{error_value, openrouter_error, Dialect};
use super::embeddings::EmbeddingRequest;
use super::shapes::Answer;
use super::stream::{split_words, End, Meta, SseBody, StreamScript};

/// The provider name used when a reply does not set one.
const DEFAULT_PROVIDER: &str = "MockProvider";

// ===== Reply =====

/// One scripted answer of the mock upstream.
///
/// Start from a constructor ([`Reply::ok`], [`Reply::status`],
/// [`Reply::hang`], ...) and refine it with the chainable setters. A setter
/// that does not apply to the kind of reply (say [`content`](Reply::content)
/// on a 429) is ignored.
///
/// A reply names no API shape: it is rendered in the [`Dialect`] of the
/// request it answers (told by the path), so one script serves chat,
/// Responses, Messages, embeddings and completions requests alike. The
/// docs of each constructor describe the chat answer; [the crate
/// docs](crate#dialects) list what each becomes in the other dialects.
///
/// ```
/// use llm_fallback_mock::Reply;
/// use std::time::Duration;
///
/// let slow_ok = Reply::ok().content("pong").latency(Duration::from_secs(2));
/// let limited = Reply::status(429).retry_after(7);
/// let opaque = Reply::status(502).provider("Anthropic").raw_message("upstream overloaded");
/// # let _ = (slow_ok, limited, opaque);
/// ```
#[derive(Debug, Clone)]
pub struct Reply {
    kind: Kind,
    content: Option<String>,
    served_model: Option<String>,
    provider: Option<String>,
    raw_message: Option<String>,
    retry_after: Option<u64>,
    latency: Option<Duration>,
    headers: Vec<(HeaderName, HeaderValue)>,
    length_stop: bool,
}

#[derive(Debug, Clone)]
enum Kind {
    Completion,
    Error {
        status: StatusCode,
        /// `None` with `message: None` means "the default for the status".
        error_type: Option<String>,
        message: Option<String>,
    },
    OkWithError,
    NoChoices,
    FinishReasonError,
    Raw {
        status: StatusCode,
        content_type: HeaderValue,
        body: Bytes,
    },
    Hang,
    TransportError,
    Stream(StreamScript),
}

impl Reply {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            content: None,
            served_model: None,
            provider: None,
            raw_message: None,
            retry_after: None,
            latency: None,
            headers: Vec::new(),
            length_stop: false,
        }
    }

    /// `200 OK` with an OpenRouter-shaped `chat.completion`: id
    /// `gen-mock-<n>`, provider `MockProvider`, the requested model, one
    /// choice with `finish_reason: "stop"` and the text `Hello from <model>`,
    /// and `usage`. Carries `Content-Type: application/json` and
    /// `X-Generation-Id`.
    ///
    /// In the other dialects: a Responses `response` with `status:
    /// "completed"` and one `output_text`, an Anthropic `message` with one
    /// `text` block and `stop_reason: "end_turn"`, an embeddings `list` with
    /// one vector per input, a `text_completion` with `choices[0].text`.
    pub fn ok() -> Self {
        Self::new(Kind::Completion)
    }

    /// Sets the assistant's text (for [`ok`](Reply::ok), the partial text
    /// of [`finish_reason_error`](Reply::finish_reason_error), and the
    /// default [`tokens`](Reply::tokens) of a [`stream`](Reply::stream)).
    pub fn content(mut self, text: impl Into<String>) -> Self {
        self.content = Some(text.into());
        self
    }

    /// Makes the body's `model` (every chunk's, for a
    /// [`stream`](Reply::stream)) differ from the requested one, as when
    /// OpenRouter falls back on its side.
    pub fn served_model(mut self, model: impl Into<String>) -> Self {
        self.served_model = Some(model.into());
        self
    }

    /// Sets the `provider` field of a completion (of every chunk of a
    /// [`stream`](Reply::stream)), or `error.metadata.provider_name` of an
    /// error. Default: the provider the reply was scripted for with
    /// [`MockUpstream::provider`](super::MockUpstream::provider), else
    /// `MockProvider`. Chat and completions bodies only (the Responses,
    /// Messages and embeddings shapes have no such field); every dialect
    /// names it in `openrouter_metadata.attempts`.
    pub fn provider(mut self, name: impl Into<String>) -> Self {
        self.provider = Some(name.into());
        self
    }

    /// An error reply with the OpenRouter error body
    /// `{"error":{"code":..,"message":..,"metadata":{..}}}` and the message
    /// and `metadata.error_type` OpenRouter uses for that status:
    ///
    /// | status | message | `error_type` |
    /// |---|---|---|
    /// | 400 | `Invalid request` | — |
    /// | 401 | `No auth credentials found` | — |
    /// | 402 | `Insufficient credits` | — |
    /// | 403 | `<model> requires moderation ...` (also `reasons`, `flagged_input`, `model_slug`) | `content_policy_violation` |
    /// | 404 | `No endpoints found for <model>.` | — |
    /// | 408 | `Request timed out` | `timeout` |
    /// | 413 | `Request payload too large` | — |
    /// | 429 | `Rate limit exceeded` | `rate_limit_exceeded` |
    /// | 500 | `Internal Server Error` | `server` |
    /// | 502 | `Provider returned error` | `provider_unavailable` |
    /// | 503 | `Service unavailable` | `provider_unavailable` |
    /// | 504, 524 | `Provider timed out` | `timeout` |
    /// | 529 | `Provider is overloaded` | `provider_overloaded` |
    /// | other | the status's reason phrase | `server` for 5xx |
    ///
    /// `metadata` (with `provider_name` and `raw`) is present when there is an
    /// `error_type`, when [`provider`](Reply::provider) or
    /// [`raw_message`](Reply::raw_message) was set, or when the reply comes
    /// from a provider's script ([`MockUpstream::provider`](super::MockUpstream::provider)).
    /// Meant for error statuses:
    /// a 2xx code gives that status with an error body (see
    /// [`ok_with_error`](Reply::ok_with_error) for OpenRouter's own shape).
    ///
    /// Responses and embeddings requests get the same status and message in
    /// OpenAI's shape, `{"error":{"message":..,"type":..,"param":null,
    /// "code":..}}`; Messages requests in Anthropic's, `{"type":"error",
    /// "error":{"type":..,"message":..},"request_id":..}` (529 is
    /// `overloaded_error`, 429 `rate_limit_error`, 401
    /// `authentication_error`, 400 `invalid_request_error`, ...: the table is
    /// in [the crate docs](crate#dialects)).
    ///
    /// # Panics
    ///
    /// If `code` is not a valid HTTP status (100..=999).
    pub fn status(code: u16) -> Self {
        Self::new(Kind::Error {
            status: status_code(code),
            error_type: None,
            message: None,
        })
    }

    /// An error reply with the given status, `metadata.error_type` and
    /// message: `{"error":{"code":status,"message":..,"metadata":
    /// {"error_type":..,"provider_name":..,"raw":..}}}`. In the OpenAI shape
    /// (Responses, embeddings) `error_type` is the error's `type` and
    /// `code`; in Anthropic's (Messages) its `error.type`, e.g.
    /// `Reply::error(529, "overloaded_error", "Overloaded")`.
    ///
    /// # Panics
    ///
    /// If `status` is not a valid HTTP status (100..=999).
    pub fn error(status: u16, error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Kind::Error {
            status: status_code(status),
            error_type: Some(error_type.into()),
            message: Some(message.into()),
        })
    }

    /// Sets `error.metadata.raw`: the upstream provider's own message, the
    /// real cause behind an opaque "Provider returned error" (chat and
    /// completions errors; the other dialects' error shapes have no
    /// `metadata`).
    pub fn raw_message(mut self, raw: impl Into<String>) -> Self {
        self.raw_message = Some(raw.into());
        self
    }

    /// Adds a `Retry-After: <secs>` header.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// Waits this long (with `tokio::time::sleep`, so paused-time tests can
    /// skip it) before answering; for a [`stream`](Reply::stream), before
    /// the response head.
    pub fn latency(mut self, d: Duration) -> Self {
        self.latency = Some(d);
        self
    }

    /// Never answers: the request is recorded, then its future stays pending
    /// forever (over HTTP the connection stays open and silent).
    pub fn hang() -> Self {
        Self::new(Kind::Hang)
    }

    /// `200 OK` whose body is an error and has no `choices`:
    /// `{"error":{"code":502,"message":"Provider returned error","metadata":
    /// {"error_type":"provider_unavailable",..}}}`. Responses: a `response`
    /// with `status: "failed"`, an `error` object and no output; Messages:
    /// `{"type":"error","error":{"type":"api_error",..}}`; embeddings: an
    /// OpenAI `error` object and no `data`.
    pub fn ok_with_error() -> Self {
        Self::new(Kind::OkWithError)
    }

    /// `200 OK` with valid JSON (`id`, `model`, `usage`, ...) but no `choices`
    /// (Responses: no `status` or `output`; Messages: no `content` or
    /// `stop_reason`; embeddings: no `data`).
    pub fn no_choices() -> Self {
        Self::new(Kind::NoChoices)
    }

    /// `200 OK` whose `choices[0].finish_reason` is `"error"`, with
    /// `choices[0].error` `{code, message}`: the provider failed after
    /// generation began. Responses: `status: "failed"` with the partial
    /// output; Messages and embeddings, which have no partial answer, get
    /// [`ok_with_error`](Reply::ok_with_error)'s body.
    pub fn finish_reason_error() -> Self {
        Self::new(Kind::FinishReasonError)
    }

    /// No answer at all. In process the service returns
    /// `Err(`[`MockTransportError`]`)`; over HTTP
    /// ([`MockServer`](super::MockServer)) the connection is closed without a
    /// response.
    pub fn transport_error() -> Self {
        Self::new(Kind::TransportError)
    }

    /// `200 OK`, `Content-Type: text/event-stream`: an OpenRouter stream
    /// (`"stream": true`), with `Cache-Control: no-cache` and
    /// `X-Generation-Id`. By default it sends, each SSE event in its own body
    /// frame:
    ///
    /// 1. one `chat.completion.chunk` per [token](Reply::tokens), with
    ///    `"delta":{"role":"assistant","content":<token>}` (the role on every
    ///    token chunk) and `"finish_reason":null`;
    /// 2. a chunk with `"delta":{}` and `"finish_reason":"stop"`;
    /// 3. a chunk with `"choices":[]` and `usage` (`completion_tokens` is the
    ///    number of tokens);
    /// 4. `data: [DONE]`.
    ///
    /// Every chunk carries the same `id` (`gen-mock-<n>`), `provider`,
    /// `model` and `created`. A completions request gets the same stream
    /// of `text_completion` chunks with `choices[0].text`. A Responses
    /// request gets named events (`response.created`,
    /// `response.in_progress`, `response.output_item.added`,
    /// `response.content_part.added`, one `response.output_text.delta` per
    /// token, `response.output_text.done`, `response.content_part.done`,
    /// `response.output_item.done`, `response.completed`; no `[DONE]`), a
    /// Messages request Anthropic's (`message_start`, `content_block_start`,
    /// `ping`, one `content_block_delta` per token, `content_block_stop`,
    /// `message_delta`, `message_stop`), an embeddings request the answer
    /// of [`ok`](Reply::ok) (embeddings do not stream).
    ///
    /// The setters below add
    /// [keep-alive comments](Reply::keep_alive), [delays](Reply::chunk_interval)
    /// and faults; of [`error_before_first_token`](Reply::error_before_first_token),
    /// [`error_after`](Reply::error_after),
    /// [`error_event_after`](Reply::error_event_after),
    /// [`cut_after`](Reply::cut_after),
    /// [`stall_after`](Reply::stall_after) and [`no_done`](Reply::no_done)
    /// the last one set wins. [`latency`](Reply::latency) delays the response
    /// head; then the body is lazy: each frame is made when the body is
    /// polled, its delay counted from that poll, so a consumer that stops
    /// reading stops the stream. Dropping the body stops everything.
    ///
    /// ```
    /// use llm_fallback_mock::{parse_sse, MockUpstream, Reply, SseEvent};
    /// use http_body_util::BodyExt;
    /// use std::time::Duration;
    /// use tower::ServiceExt;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let reply = Reply::stream()
    ///     .tokens(["Hel", "lo"])
    ///     .keep_alive(1, Duration::from_millis(1))
    ///     .error_after(1);
    /// let upstream = MockUpstream::new().model("x/y", reply);
    /// let request = http::Request::post("http://openrouter.test/api/v1/chat/completions")
    ///     .body(r#"{"model":"x/y","stream":true}"#.to_string())
    ///     .unwrap();
    /// let response = upstream.oneshot(request).await.unwrap();
    /// assert_eq!(response.headers()["content-type"], "text/event-stream");
    ///
    /// let bytes = response.into_body().collect().await.unwrap().to_bytes();
    /// let events = parse_sse(&bytes);
    /// assert_eq!(events[0], SseEvent::Comment("OPENROUTER PROCESSING".into()));
    /// assert_eq!(events[1].json().unwrap()["choices"][0]["delta"]["content"], "Hel");
    /// assert_eq!(events[2].json().unwrap()["choices"][0]["finish_reason"], "error");
    /// assert_eq!(events.len(), 3, "no [DONE] after an error");
    /// # }
    /// ```
    pub fn stream() -> Self {
        Self::new(Kind::Stream(StreamScript::default()))
    }

    /// The tokens a [`stream`](Reply::stream) sends, one chunk each. By
    /// default: the words of [`content`](Reply::content), or of
    /// `Hello from <served model>`, each with the whitespace before it, e.g.
    /// `["Hello", " from", " x/y"]`.
    pub fn tokens<I, S>(mut self, tokens: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        if let Kind::Stream(script) = &mut self.kind {
            script.tokens = Some(tokens.into_iter().map(Into::into).collect());
        }
        self
    }

    /// Before the first token of a [`stream`](Reply::stream), sends `count`
    /// comments `: OPENROUTER PROCESSING`, waiting `every` before each, as
    /// OpenRouter does while a provider is slow to start. They open the body
    /// in every dialect, before a Responses or Messages preamble (for
    /// Anthropic's own keep-alive events see [`pings`](Reply::pings)).
    pub fn keep_alive(mut self, count: usize, every: Duration) -> Self {
        if let Kind::Stream(script) = &mut self.kind {
            script.keep_alives = count;
            script.keep_alive_every = every;
        }
        self
    }

    /// Waits `d` before each data chunk of a [`stream`](Reply::stream) (each
    /// token, the finish, usage, error and `[DONE]` chunks; in Responses and
    /// Messages each event after the preamble, which comes at once) and
    /// before a [cut](Reply::cut_after). Default: no wait.
    pub fn chunk_interval(mut self, d: Duration) -> Self {
        if let Kind::Stream(script) = &mut self.kind {
            script.chunk_interval = d;
        }
        self
    }

    /// The [`stream`](Reply::stream) fails before its first token: after the
    /// keep-alives, an error chunk, then the body ends (no `[DONE]`). Same as
    /// [`error_after(0)`](Reply::error_after).
    pub fn error_before_first_token(self) -> Self {
        self.error_after(0)
    }

    /// The [`stream`](Reply::stream) fails after `k` tokens (all of them if
    /// there are fewer): an error chunk in OpenRouter's mid-stream shape,
    /// `"error":{"code":"server_error","message":"Provider disconnected"}`
    /// with `"finish_reason":"error"`, then the body ends cleanly with no
    /// finish, usage or `[DONE]` chunk.
    ///
    /// Responses: a terminal `response.failed` (its `response` has `status:
    /// "failed"`, `error: {code: "server_error", ..}` and the output so far);
    /// Messages: `event: error` with `{"type":"error","error":{"type":
    /// "overloaded_error","message":"Overloaded"}}`. The preamble
    /// (`response.created` .., `message_start` ..) comes first either way.
    pub fn error_after(self, k: usize) -> Self {
        self.stream_end(End::ErrorAfter(k))
    }

    /// Like [`error_after`](Reply::error_after), but a Responses stream
    /// fails with a stand-alone `event: error` (`{"type":"error","code":
    /// "server_error","message":..,"param":null,"sequence_number":..}`)
    /// instead of `response.failed`, as OpenAI reports quota errors right
    /// after `response.created`. Other dialects: the same as `error_after`.
    pub fn error_event_after(self, k: usize) -> Self {
        self.stream_end(End::ErrorEventAfter(k))
    }

    /// The [`stream`](Reply::stream) breaks after `k` tokens (all of them if
    /// there are fewer; `0`: after the keep-alives): reading the body then
    /// fails with [`MockBodyError`](super::MockBodyError). Over HTTP
    /// ([`MockServer`](super::MockServer)) the server drops the connection
    /// mid-body, without the chunked encoding's last chunk, so the client
    /// sees a body error.
    pub fn cut_after(self, k: usize) -> Self {
        self.stream_end(End::CutAfter(k))
    }

    /// The [`stream`](Reply::stream) goes silent after `k` tokens (all of
    /// them if there are fewer): the body never yields again and never ends,
    /// and the connection stays open.
    pub fn stall_after(self, k: usize) -> Self {
        self.stream_end(End::StallAfter(k))
    }

    /// The [`stream`](Reply::stream) sends every token, the finish and the
    /// usage chunks, then ends cleanly without `data: [DONE]`: a stream
    /// without its terminal event. Responses: everything up to
    /// `response.output_item.done`, no `response.completed`; Messages: up to
    /// `message_delta`, no `message_stop`.
    pub fn no_done(self) -> Self {
        self.stream_end(End::NoDone)
    }

    /// Anthropic's keep-alive: a Messages [`stream`](Reply::stream) sends
    /// `count` `event: ping` events after `content_block_start`, waiting
    /// `every` before each. Default: one ping, at once (as Anthropic sends
    /// it). Other dialects have no ping.
    pub fn pings(mut self, count: usize, every: Duration) -> Self {
        if let Kind::Stream(script) = &mut self.kind {
            script.pings = count;
            script.ping_every = every;
        }
        self
    }

    /// The answer stops at the output-token limit, a good answer that was
    /// cut short: chat and completions `finish_reason: "length"`; Responses
    /// `status: "incomplete"` with `incomplete_details: {reason:
    /// "max_output_tokens"}` (a stream ends with `response.incomplete`);
    /// Messages `stop_reason: "max_tokens"`. For [`ok`](Reply::ok) and
    /// [`stream`](Reply::stream).
    pub fn length_stop(mut self) -> Self {
        self.length_stop = true;
        self
    }

    fn stream_end(mut self, end: End) -> Self {
        if let Kind::Stream(script) = &mut self.kind {
            script.end = end;
        }
        self
    }

    /// Exactly this status, `Content-Type` and body (for bodies that are not
    /// JSON, say an HTML error page from a proxy).
    ///
    /// # Panics
    ///
    /// If `status` is not a valid HTTP status or `content_type` is not a
    /// valid header value.
    pub fn raw(status: u16, content_type: &str, body: impl Into<Bytes>) -> Self {
        let content_type = HeaderValue::from_str(content_type)
            .unwrap_or_else(|e| panic!("Reply::raw: invalid content type {content_type:?}: {e}"));
        Self::new(Kind::Raw {
            status: status_code(status),
            content_type,
            body: body.into(),
        })
    }

    /// Adds a response header (appended; names may repeat).
    ///
    /// # Panics
    ///
    /// If `name` or `value` is not a valid header name or value.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let n = HeaderName::from_bytes(name.as_bytes())
            .unwrap_or_else(|e| panic!("Reply::header: invalid header name {name:?}: {e}"));
        let v = HeaderValue::from_str(value)
            .unwrap_or_else(|e| panic!("Reply::header: invalid value for {name}: {value:?}: {e}"));
        self.headers.push((n, v));
        self
    }

    pub(super) fn delay(&self) -> Option<Duration> {
        self.latency
    }

    pub(super) fn is_hang(&self) -> bool {
        matches!(self.kind, Kind::Hang)
    }

    /// The `provider` this reply shows: its own, else the one whose script
    /// gave it, else `MockProvider`.
    pub(super) fn provider_name<'a>(&'a self, scripted: Option<&'a str>) -> &'a str {
        self.provider.as_deref().or(scripted).unwrap_or(DEFAULT_PROVIDER)
    }

    /// How OpenRouter's router treats this reply when it comes from one of
    /// several candidates.
    pub(super) fn verdict(&self, model: &str) -> Verdict {
        let failure = |status: u16, message: &str| Verdict::Failure {
            status,
            message: message.to_owned(),
        };
        match &self.kind {
            Kind::Completion => Verdict::Success(StatusCode::OK),
            // Kept simple: OpenRouter cannot fall back once a token is out,
            // and the mock does not look inside a stream.
            Kind::Stream(_) => Verdict::Success(StatusCode::OK),
            Kind::Hang | Kind::TransportError => Verdict::Final,
            Kind::OkWithError | Kind::FinishReasonError => failure(502, "Provider returned error"),
            Kind::NoChoices => failure(502, "Provider returned no choices"),
            Kind::Error { status, .. } | Kind::Raw { status, .. } if is_account_error(*status) => Verdict::Final,
            Kind::Error { status, message, .. } => Verdict::Failure {
                status: status.as_u16(),
                message: message.clone().unwrap_or_else(|| defaults(*status, model).0),
            },
            Kind::Raw { status, .. } if status.is_success() => Verdict::Success(*status),
            Kind::Raw { status, body, .. } => {
                let message = serde_json::from_slice::<Value>(body)
                    .ok()
                    .and_then(|v| v.pointer("/error/message").and_then(Value::as_str).map(str::to_owned))
                    .or_else(|| status.canonical_reason().map(str::to_owned))
                    .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
                failure(status.as_u16(), &message)
            }
        }
    }

    /// Turns the reply into what the service does for one request, in the
    /// dialect of that request.
    pub(super) fn render(&self, ctx: &Ctx<'_>) -> Action {
        let provider = self.provider_name(ctx.provider);
        let served = self.served_model.as_deref().unwrap_or(ctx.model);
        let generation_id = format!("gen-mock-{}", ctx.generation);
        let answer = Answer {
            dialect: ctx.dialect,
            generation: ctx.generation,
            provider,
            model: served,
            created: now_secs(),
            prompt_tokens: prompt_tokens(ctx),
            length_stop: self.length_stop,
            embedding: ctx.embedding,
        };
        let (status, body, generation) = match &self.kind {
            Kind::Hang => return Action::Hang,
            Kind::TransportError => return Action::Fail(MockTransportError::reset()),
            Kind::Raw {
                status,
                content_type,
                body,
            } => {
                let mut resp = Response::new(MockBody::full(body.clone()));
                *resp.status_mut() = *status;
                resp.headers_mut().insert(CONTENT_TYPE, content_type.clone());
                resp.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
                return Action::Respond(self.finish(resp));
            }
            // Embeddings do not stream: a stream reply answers as `ok` would.
            Kind::Stream(script) if ctx.dialect != Dialect::Embeddings => {
                let tokens = script.tokens.clone().unwrap_or_else(|| {
                    let content = self.content.clone().unwrap_or_else(|| format!("Hello from {served}"));
                    split_words(&content).into()
                });
                let meta = Meta {
                    dialect: ctx.dialect,
                    generation: ctx.generation,
                    provider: provider.to_owned(),
                    model: served.to_owned(),
                    created: answer.created,
                    prompt_tokens: answer.prompt_tokens,
                    length_stop: self.length_stop,
                };
                let body = SseBody::new(script.clone(), tokens, meta);
                let mut resp = Response::new(MockBody::new(body));
                let headers = resp.headers_mut();
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
                headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                insert_generation_id(headers, &generation_id);
                return Action::Respond(self.finish(resp));
            }
            Kind::Completion | Kind::Stream(_) => {
                let content = self.content.clone().unwrap_or_else(|| format!("Hello from {served}"));
                (StatusCode::OK, answer.good(&content, ctx.metadata.as_ref()), true)
            }
            Kind::NoChoices => (StatusCode::OK, answer.without_answer(), true),
            Kind::FinishReasonError => {
                let content = self.content.clone().unwrap_or_default();
                let body = answer.failed_after_start(&content, self.unavailable_metadata(provider));
                (StatusCode::OK, body, true)
            }
            Kind::OkWithError => (
                StatusCode::OK,
                answer.error_in_2xx(self.unavailable_metadata(provider)),
                true,
            ),
            Kind::Error {
                status,
                error_type,
                message,
            } => {
                let (default_message, default_type) = defaults(*status, ctx.model);
                let message = message.clone().unwrap_or(default_message);
                let body = if ctx.dialect.is_openrouter_shaped() {
                    let error_type = error_type.clone().or(default_type.map(str::to_owned));
                    let metadata = self.openrouter_metadata(*status, error_type, provider, ctx);
                    openrouter_error(status.as_u16(), &message, metadata)
                } else {
                    let request_id = format!("req_mock_{}", ctx.generation);
                    error_value(
                        ctx.dialect,
                        *status,
                        error_type.as_deref(),
                        &message,
                        None,
                        Some(&request_id),
                    )
                };
                (*status, body, false)
            }
        };
        let bytes = Bytes::from(serde_json::to_vec(&body).expect("serializing a JSON value"));
        let len = bytes.len();
        let mut resp = Response::new(MockBody::full(bytes));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        if generation {
            insert_generation_id(headers, &generation_id);
        }
        Action::Respond(self.finish(resp))
    }

    /// `error.metadata` of OpenRouter's "Provider returned error" (chat and
    /// completions).
    fn unavailable_metadata(&self, provider: &str) -> Value {
        json!({
            "error_type": "provider_unavailable",
            "provider_name": provider,
            "raw": self.raw_message,
        })
    }

    /// `error.metadata` of an OpenRouter error status, if it has one.
    fn openrouter_metadata(
        &self,
        status: StatusCode,
        error_type: Option<String>,
        provider: &str,
        ctx: &Ctx<'_>,
    ) -> Option<Value> {
        if status == StatusCode::FORBIDDEN && message_is_default(self) {
            Some(json!({
                "error_type": error_type,
                "reasons": ["harassment"],
                "flagged_input": "[mock] flagged input",
                "provider_name": provider,
                "model_slug": ctx.model,
                "raw": self.raw_message,
            }))
        } else if error_type.is_some()
            || self.provider.is_some()
            || ctx.provider.is_some()
            || self.raw_message.is_some()
        {
            let mut m = Map::new();
            if let Some(t) = error_type {
                m.insert("error_type".into(), Value::String(t));
            }
            m.insert("provider_name".into(), Value::String(provider.to_owned()));
            m.insert("raw".into(), json!(self.raw_message));
            Some(Value::Object(m))
        } else {
            None
        }
    }

    /// Adds `Retry-After` and the custom headers.
    fn finish(&self, mut resp: Response<MockBody>) -> Response<MockBody> {
        let headers = resp.headers_mut();
        if let Some(secs) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        for (name, value) in &self.headers {
            headers.append(name.clone(), value.clone());
        }
        resp
    }
}

/// A 403 built by [`Reply::status`] (not [`Reply::error`]) is a moderation
/// block and carries its metadata.
fn message_is_default(reply: &Reply) -> bool {
    matches!(&reply.kind, Kind::Error { message: None, .. })
}

/// 401 and 402 are about the account, not the model: OpenRouter answers them
/// without trying another candidate.
fn is_account_error(status: StatusCode) -> bool {
    matches!(status.as_u16(), 401 | 402)
}

fn status_code(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or_else(|_| panic!("{code} is not a valid HTTP status code"))
}

/// Default message and `error_type` for an error status.
fn defaults(status: StatusCode, model: &str) -> (String, Option<&'static str>) {
    let (message, error_type): (&str, Option<&'static str>) = match status.as_u16() {
        400 => ("Invalid request", None),
        401 => ("No auth credentials found", None),
        402 => ("Insufficient credits", None),
        403 => {
            return (
                format!(
                    "{model} requires moderation. Your input was flagged for \"harassment\". \
                     No credits were charged."
                ),
                Some("content_policy_violation"),
            )
        }
        404 => return (format!("No endpoints found for {model}."), None),
        408 => ("Request timed out", Some("timeout")),
        413 => ("Request payload too large", None),
        429 => ("Rate limit exceeded", Some("rate_limit_exceeded")),
        500 => ("Internal Server Error", Some("server")),
        502 => ("Provider returned error", Some("provider_unavailable")),
        503 => ("Service unavailable", Some("provider_unavailable")),
        504 | 524 => ("Provider timed out", Some("timeout")),
        529 => ("Provider is overloaded", Some("provider_overloaded")),
        s => (
            status.canonical_reason().unwrap_or("Mock upstream error"),
            (s >= 500).then_some("server"),
        ),
    };
    (message.to_owned(), error_type)
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Made-up but stable prompt size: a quarter of the request's bytes.
fn prompt_tokens(ctx: &Ctx<'_>) -> u64 {
    (ctx.request_bytes / 4).max(1) as u64
}

/// What a reply needs to know about the request it answers.
#[derive(Debug)]
pub(super) struct Ctx<'a> {
    /// The model tried (the requested one, or an entry of `models`).
    pub(super) model: &'a str,
    /// The provider whose script gave the reply, if the model has provider
    /// scripts: the default `provider` of the reply.
    pub(super) provider: Option<&'a str>,
    /// The `n` of `gen-mock-<n>`.
    pub(super) generation: u64,
    /// Size of the request body (for `usage`).
    pub(super) request_bytes: usize,
    /// `openrouter_metadata` for a completion, when the request asked for it.
    pub(super) metadata: Option<Value>,
    /// The dialect of the request's path: the shape of the answer.
    pub(super) dialect: Dialect,
    /// What an embeddings request asked for.
    pub(super) embedding: Option<&'a EmbeddingRequest>,
}

fn insert_generation_id(headers: &mut http::HeaderMap, id: &str) {
    if let Ok(value) = HeaderValue::from_str(id) {
        headers.insert(HeaderName::from_static("x-generation-id"), value);
    }
}

/// How the router treats a reply (see [`Reply::verdict`]).
#[derive(Debug)]
pub(super) enum Verdict {
    /// Served: a completion or a stream, with its status.
    Success(StatusCode),
    /// Served as is, never tried over: 401, 402, a hang, a dropped connection.
    Final,
    /// Tried over while another candidate is left.
    Failure { status: u16, message: String },
}

/// What the service does with a request.
#[derive(Debug)]
pub(super) enum Action {
    Respond(Response<MockBody>),
    Hang,
    Fail(MockTransportError),
}

// ===== Script =====

/// The replies one model gives, in order: the n-th request for the model gets
/// the n-th reply, and the last reply repeats forever.
///
/// A single [`Reply`] converts into a script that always gives it.
///
/// ```
/// use llm_fallback_mock::{MockUpstream, Reply, Script};
///
/// // Two rate limits, then it recovers for good.
/// let upstream = MockUpstream::new().model(
///     "openai/gpt-4o",
///     Script::sequence([Reply::status(429), Reply::status(429), Reply::ok()]),
/// );
/// # let _ = upstream;
/// ```
#[derive(Debug, Clone)]
pub struct Script {
    replies: Arc<[Reply]>,
}

impl Script {
    /// A script of these replies, in order.
    ///
    /// # Panics
    ///
    /// If `replies` is empty: a model needs at least one reply.
    pub fn sequence(replies: impl IntoIterator<Item = Reply>) -> Self {
        let replies: Arc<[Reply]> = replies.into_iter().collect();
        assert!(!replies.is_empty(), "Script::sequence needs at least one reply");
        Self { replies }
    }

    /// The reply for the `n`-th request (0-based).
    pub(super) fn reply(&self, n: usize) -> &Reply {
        &self.replies[n.min(self.replies.len() - 1)]
    }
}

impl From<Reply> for Script {
    fn from(reply: Reply) -> Self {
        Self::sequence([reply])
    }
}
