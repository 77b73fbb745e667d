//! Scripted `text/event-stream` bodies: keep-alives, each dialect's
//! preamble, tokens, and the ways a stream can end or break.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body::{Body, Frame};
use pin_project_lite::pin_project;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Sleep;

use super::body::MockBodyError;
use super::dialect::Dialect;
use super::shapes::Answer;

const KEEP_ALIVE: &[u8] = b": OPENROUTER PROCESSING\n\n";
const DONE: &[u8] = b"data: [DONE]\n\n";
/// The message of every scripted in-stream error but Anthropic's.
const DISCONNECTED: &str = "Provider disconnected";

// ===== StreamScript =====

/// What a [`Reply::stream`](super::Reply::stream) sends, as set by its setters.
#[derive(Debug, Clone)]
pub(super) struct StreamScript {
    /// `None`: the words of the reply's content (or `Hello from <model>`).
    pub(super) tokens: Option<Arc<[String]>>,
    pub(super) keep_alives: usize,
    pub(super) keep_alive_every: Duration,
    pub(super) chunk_interval: Duration,
    /// Anthropic `ping` events after `content_block_start` (Messages only).
    pub(super) pings: usize,
    pub(super) ping_every: Duration,
    pub(super) end: End,
}

/// How a stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// Tokens, the closing events, the terminal one (`[DONE]`,
    /// `response.completed`, `message_stop`).
    Complete,
    /// Like `Complete` without the terminal event.
    NoDone,
    /// An error event after this many tokens, then the end.
    ErrorAfter(usize),
    /// Like `ErrorAfter`, as a stand-alone Responses `error` event rather
    /// than `response.failed`.
    ErrorEventAfter(usize),
    /// A body error after this many tokens.
    CutAfter(usize),
    /// Silence after this many tokens, forever.
    StallAfter(usize),
}

impl Default for StreamScript {
    fn default() -> Self {
        Self {
            tokens: None,
            keep_alives: 0,
            keep_alive_every: Duration::ZERO,
            chunk_interval: Duration::ZERO,
            pings: 1,
            ping_every: Duration::ZERO,
            end: End::Complete,
        }
    }
}

/// Splits `text` into tokens that keep their leading whitespace:
/// `"Hello from x/y"` gives `["Hello", " from", " x/y"]`.
pub(super) fn split_words(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut start = 0;
    let mut after_space = false;
    for (i, c) in text.char_indices() {
        let space = c.is_whitespace();
        if space && !after_space && i > start {
            tokens.push(text[start..i].to_owned());
            start = i;
        }
        after_space = space;
    }
    if start < text.len() {
        tokens.push(text[start..].to_owned());
    }
    tokens
}

// ===== SseBody =====

/// What every event of one stream shares.
#[derive(Debug)]
pub(super) struct Meta {
    pub(super) dialect: Dialect,
    /// `n` of `gen-mock-<n>` (and `resp_mock_<n>`, `msg_mock_<n>`).
    pub(super) generation: u64,
    pub(super) provider: String,
    pub(super) model: String,
    pub(super) created: u64,
    pub(super) prompt_tokens: u64,
    /// The stream stops at the token limit ([`Reply::length_stop`](super::Reply::length_stop)).
    pub(super) length_stop: bool,
}

/// The next thing the body sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    KeepAlive(usize),
    /// The dialect's events before the first token (Responses:
    /// `response.created` .. `response.content_part.added`; Messages:
    /// `message_start`, `content_block_start`, the pings).
    Preamble(usize),
    Token(usize),
    /// The dialect's events after the last token, the terminal one last
    /// (chat: finish, usage, `[DONE]`).
    Closing(usize),
    Error,
    Cut,
    Stall,
    End,
}

/// What one stream sends: fixed when the reply is rendered.
#[derive(Debug)]
struct Plan {
    script: StreamScript,
    tokens: Arc<[String]>,
    meta: Meta,
    /// Tokens sent before the end the script chose.
    sent: usize,
}

pin_project! {
    /// A lazy SSE body: each frame is made when the body is polled, after the
    /// scripted delay, so a consumer that stops polling stops the stream.
    /// Delays count from the poll that asks for the frame.
    #[derive(Debug)]
    pub(super) struct SseBody {
        plan: Plan,
        step: Step,
        // A zero-delay cut has paused once (see `poll_frame`).
        waited: bool,
        #[pin]
        sleep: Option<Sleep>,
    }
}

impl SseBody {
    pub(super) fn new(script: StreamScript, tokens: Arc<[String]>, meta: Meta) -> Self {
        let n = tokens.len();
        let sent = match script.end {
            End::Complete | End::NoDone => n,
            End::ErrorAfter(k) | End::ErrorEventAfter(k) | End::CutAfter(k) | End::StallAfter(k) => k.min(n),
        };
        let plan = Plan {
            script,
            tokens,
            meta,
            sent,
        };
        let step = if plan.script.keep_alives > 0 {
            Step::KeepAlive(0)
        } else {
            plan.preamble_or_tokens()
        };
        Self {
            plan,
            step,
            waited: false,
            sleep: None,
        }
    }
}

impl Plan {
    /// Events before the first token.
    fn preamble_len(&self) -> usize {
        match self.meta.dialect {
            Dialect::Responses => 4,
            Dialect::Messages => 2 + self.script.pings,
            Dialect::Chat | Dialect::Completions | Dialect::Embeddings => 0,
        }
    }

    /// Events after the last token, the terminal one included.
    fn closing_len(&self) -> usize {
        let whole = match self.meta.dialect {
            Dialect::Responses => 4,
            Dialect::Chat | Dialect::Completions | Dialect::Messages | Dialect::Embeddings => 3,
        };
        if self.script.end == End::NoDone {
            whole - 1
        } else {
            whole
        }
    }

    fn preamble_or_tokens(&self) -> Step {
        if self.preamble_len() > 0 {
            Step::Preamble(0)
        } else {
            self.token_or_end(0)
        }
    }

    /// Token `i` if the script sends it, else what comes after the tokens.
    fn token_or_end(&self, i: usize) -> Step {
        if i < self.sent {
            return Step::Token(i);
        }
        match self.script.end {
            End::Complete | End::NoDone => Step::Closing(0),
            End::ErrorAfter(_) | End::ErrorEventAfter(_) => Step::Error,
            End::CutAfter(_) => Step::Cut,
            End::StallAfter(_) => Step::Stall,
        }
    }

    fn next(&self, step: Step) -> Step {
        match step {
            Step::KeepAlive(i) if i + 1 < self.script.keep_alives => Step::KeepAlive(i + 1),
            Step::KeepAlive(_) => self.preamble_or_tokens(),
            Step::Preamble(i) if i + 1 < self.preamble_len() => Step::Preamble(i + 1),
            Step::Preamble(_) => self.token_or_end(0),
            Step::Token(i) => self.token_or_end(i + 1),
            Step::Closing(i) if i + 1 < self.closing_len() => Step::Closing(i + 1),
            Step::Closing(_) | Step::Error | Step::Cut | Step::End => Step::End,
            Step::Stall => Step::Stall,
        }
    }

    fn delay(&self, step: Step) -> Duration {
        match step {
            Step::KeepAlive(_) => self.script.keep_alive_every,
            // Anthropic's pings follow `content_block_start`.
            Step::Preamble(i) if self.meta.dialect == Dialect::Messages && i >= 2 => self.script.ping_every,
            // An upstream sends its preamble at once.
            Step::Preamble(_) => Duration::ZERO,
            _ => self.script.chunk_interval,
        }
    }

    fn answer(&self) -> Answer<'_> {
        let m = &self.meta;
        Answer {
            dialect: m.dialect,
            generation: m.generation,
            provider: &m.provider,
            model: &m.model,
            created: m.created,
            prompt_tokens: m.prompt_tokens,
            length_stop: m.length_stop,
            embedding: None,
        }
    }

    fn frame(&self, step: Step) -> Result<Bytes, MockBodyError> {
        let bytes = match step {
            Step::KeepAlive(_) => Bytes::from_static(KEEP_ALIVE),
            Step::Cut => return Err(MockBodyError::new("mock upstream cut the stream")),
            // `next` never schedules a frame for these, and `poll_frame`
            // returns before asking; send nothing rather than panic.
            Step::Stall | Step::End => Bytes::new(),
            _ => match self.meta.dialect {
                Dialect::Chat | Dialect::Embeddings => self.chat_frame(step),
                Dialect::Completions => self.completions_frame(step),
                Dialect::Responses => self.responses_frame(step),
                Dialect::Messages => self.messages_frame(step),
            },
        };
        Ok(bytes)
    }

    fn token(&self, i: usize) -> &str {
        self.tokens.get(i).map_or("", String::as_str)
    }

    fn finish_reason(&self) -> &'static str {
        if self.meta.length_stop {
            "length"
        } else {
            "stop"
        }
    }

    fn usage(&self) -> Usage {
        let completion = self.sent as u64;
        Usage {
            prompt_tokens: self.meta.prompt_tokens,
            completion_tokens: completion,
            total_tokens: self.meta.prompt_tokens + completion,
        }
    }

    // ----- chat completions -----

    fn chat_frame(&self, step: Step) -> Bytes {
        let m = &self.meta;
        let id = format!("gen-mock-{}", m.generation);
        let chunk = |choices: &[Choice<'_>], usage: Option<Usage>| {
            data(&Chunk {
                id: &id,
                provider: &m.provider,
                model: &m.model,
                object: "chat.completion.chunk",
                created: m.created,
                choices,
                usage,
            })
        };
        match step {
            Step::Token(i) => {
                let delta = Delta {
                    role: Some("assistant"),
                    content: Some(self.token(i)),
                };
                chunk(&[Choice::new(delta, None)], None)
            }
            Step::Closing(0) => chunk(&[Choice::new(Delta::default(), Some(self.finish_reason()))], None),
            Step::Closing(1) => chunk(&[], Some(self.usage())),
            Step::Closing(_) => Bytes::from_static(DONE),
            _ => {
                let delta = Delta {
                    role: None,
                    content: Some(""),
                };
                data(&ErrorChunk {
                    id: &id,
                    object: "chat.completion.chunk",
                    created: m.created,
                    model: &m.model,
                    provider: &m.provider,
                    error: ChunkError {
                        code: "server_error",
                        message: DISCONNECTED,
                    },
                    choices: [Choice::new(delta, Some("error"))],
                })
            }
        }
    }

    // ----- legacy completions -----

    fn completions_frame(&self, step: Step) -> Bytes {
        let m = &self.meta;
        let id = format!("gen-mock-{}", m.generation);
        let chunk = |choices: &[TextChoice<'_>], usage: Option<Usage>| {
            data(&Chunk {
                id: &id,
                provider: &m.provider,
                model: &m.model,
                object: "text_completion",
                created: m.created,
                choices,
                usage,
            })
        };
        match step {
            Step::Token(i) => chunk(&[TextChoice::new(self.token(i), None)], None),
            Step::Closing(0) => chunk(&[TextChoice::new("", Some(self.finish_reason()))], None),
            Step::Closing(1) => chunk(&[], Some(self.usage())),
            Step::Closing(_) => Bytes::from_static(DONE),
            _ => data(&ErrorChunk {
                id: &id,
                object: "text_completion",
                created: m.created,
                model: &m.model,
                provider: &m.provider,
                error: ChunkError {
                    code: "server_error",
                    message: DISCONNECTED,
                },
                choices: [TextChoice::new("", Some("error"))],
            }),
        }
    }

    // ----- OpenAI Responses -----

    /// The text of the tokens sent.
    fn text(&self) -> String {
        self.tokens.iter().take(self.sent).map(String::as_str).collect()
    }

    fn responses_frame(&self, step: Step) -> Bytes {
        let a = self.answer();
        let item_id = a.message_id();
        // Every data event counts: the preamble, then one per token.
        let sequence = match step {
            Step::Preamble(i) => i,
            Step::Token(i) => 4 + i,
            Step::Closing(i) => 4 + self.sent + i,
            _ => 4 + self.sent,
        };
        let (kind, mut event) = match step {
            Step::Preamble(i @ (0 | 1)) => {
                let kind = if i == 0 {
                    "response.created"
                } else {
                    "response.in_progress"
                };
                let response = a.response("in_progress", json!([]), Value::Null, Value::Null, Value::Null);
                (kind, json!({ "response": response }))
            }
            Step::Preamble(2) => (
                "response.output_item.added",
                json!({
                    "output_index": 0,
                    "item": {"type": "message", "id": item_id, "status": "in_progress", "role": "assistant", "content": []},
                }),
            ),
            Step::Preamble(_) => (
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": a.output_text("")}),
            ),
            Step::Token(i) => (
                "response.output_text.delta",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "delta": self.token(i), "logprobs": []}),
            ),
            Step::Closing(0) => (
                "response.output_text.done",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "text": self.text(), "logprobs": []}),
            ),
            Step::Closing(1) => (
                "response.content_part.done",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": a.output_text(&self.text())}),
            ),
            Step::Closing(2) => {
                let status = if self.meta.length_stop {
                    "incomplete"
                } else {
                    "completed"
                };
                (
                    "response.output_item.done",
                    json!({"output_index": 0, "item": a.response_message(&self.text(), status)}),
                )
            }
            Step::Closing(_) => {
                let (kind, status, incomplete) = if self.meta.length_stop {
                    (
                        "response.incomplete",
                        "incomplete",
                        json!({"reason": "max_output_tokens"}),
                    )
                } else {
                    ("response.completed", "completed", Value::Null)
                };
                let output = json!([a.response_message(&self.text(), status)]);
                let usage = a.response_usage(self.sent as u64);
                let response = a.response(status, output, usage, Value::Null, incomplete);
                (kind, json!({ "response": response }))
            }
            _ if matches!(self.script.end, End::ErrorEventAfter(_)) => (
                "error",
                json!({"code": "server_error", "message": DISCONNECTED, "param": null}),
            ),
            _ => {
                let sent = self.tokens.get(..self.sent).unwrap_or_default();
                let response = a.failed_response(sent, DISCONNECTED);
                ("response.failed", json!({ "response": response }))
            }
        };
        if let Value::Object(fields) = &mut event {
            fields.insert("type".into(), Value::from(kind));
            fields.insert("sequence_number".into(), Value::from(sequence));
        }
        named(kind, &event)
    }

    // ----- Anthropic Messages -----

    fn messages_frame(&self, step: Step) -> Bytes {
        let a = self.answer();
        let (kind, event) = match step {
            Step::Preamble(0) => {
                let mut message = a.message_head(json!([]), Value::Null);
                message.insert("usage".into(), a.message_usage(1));
                ("message_start", json!({"type": "message_start", "message": message}))
            }
            Step::Preamble(1) => (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            Step::Preamble(_) => ("ping", json!({"type": "ping"})),
            Step::Token(i) => (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": self.token(i)}}),
            ),
            Step::Closing(0) => ("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
            Step::Closing(1) => {
                let stop_reason = if self.meta.length_stop {
                    "max_tokens"
                } else {
                    "end_turn"
                };
                (
                    "message_delta",
                    json!({
                        "type": "message_delta",
                        "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                        "usage": {"output_tokens": self.sent},
                    }),
                )
            }
            Step::Closing(_) => ("message_stop", json!({"type": "message_stop"})),
            _ => (
                "error",
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ),
        };
        named(kind, &event)
    }
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = MockBodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, MockBodyError>>> {
        let mut this = self.project();
        let step = *this.step;
        match step {
            Step::End => return Poll::Ready(None),
            // Stalled on purpose: nothing registers the waker, so the
            // consumer waits forever, as on a provider that went silent with
            // the connection still open.
            Step::Stall => return Poll::Pending,
            _ => {}
        }
        // `waited` is set only while a zero-delay cut pauses; take it back.
        if !std::mem::take(this.waited) {
            let delay = this.plan.delay(step);
            if !delay.is_zero() {
                if this.sleep.is_none() {
                    this.sleep.set(Some(tokio::time::sleep(delay)));
                }
                if let Some(sleep) = this.sleep.as_mut().as_pin_mut() {
                    ready!(sleep.poll(cx));
                }
                this.sleep.set(None);
            } else if step == Step::Cut {
                // CORRECTNESS: the waker is woken before returning Pending.
                // Pausing once lets a server flush what it buffered before
                // the error makes it drop the connection: without the pause,
                // hyper drops the buffered frames (even the response head).
                *this.waited = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        *this.step = this.plan.next(step);
        Poll::Ready(Some(this.plan.frame(step).map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.step == Step::End
    }
}

/// A named event: `event: <name>`, then `data: <json>`.
fn named(name: &str, event: &Value) -> Bytes {
    let mut buf = BytesMut::with_capacity(256).writer();
    let head = buf.get_mut();
    head.put_slice(b"event: ");
    head.put_slice(name.as_bytes());
    head.put_slice(b"\ndata: ");
    serde_json::to_writer(&mut buf, event).expect("serializing an event");
    let mut buf = buf.into_inner();
    buf.put_slice(b"\n\n");
    buf.freeze()
}

fn data<T: Serialize>(chunk: &T) -> Bytes {
    let mut buf = BytesMut::with_capacity(256).writer();
    buf.get_mut().put_slice(b"data: ");
    serde_json::to_writer(&mut buf, chunk).expect("serializing a chunk");
    let mut buf = buf.into_inner();
    buf.put_slice(b"\n\n");
    buf.freeze()
}

// Structs rather than `json!` so the keys keep OpenRouter's order.

#[derive(Serialize)]
struct Chunk<'a, C> {
    id: &'a str,
    provider: &'a str,
    model: &'a str,
    object: &'static str,
    created: u64,
    choices: &'a [C],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Serialize)]
struct ErrorChunk<'a, C> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    provider: &'a str,
    error: ChunkError,
    choices: [C; 1],
}

#[derive(Serialize)]
struct ChunkError {
    code: &'static str,
    message: &'static str,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    delta: Delta<'a>,
    finish_reason: Option<&'static str>,
    native_finish_reason: Option<&'static str>,
}

impl<'a> Choice<'a> {
    fn new(delta: Delta<'a>, finish_reason: Option<&'static str>) -> Self {
        Self {
            index: 0,
            delta,
            finish_reason,
            native_finish_reason: finish_reason,
        }
    }
}

/// A legacy completions choice: `text` instead of `delta`.
#[derive(Serialize)]
struct TextChoice<'a> {
    index: u32,
    text: &'a str,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
    native_finish_reason: Option<&'static str>,
}

impl<'a> TextChoice<'a> {
    fn new(text: &'a str, finish_reason: Option<&'static str>) -> Self {
        Self {
            index: 0,
            text,
            logprobs: None,
            finish_reason,
            native_finish_reason: finish_reason,
        }
    }
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}
