//! Scripted `text/event-stream` bodies: keep-alives, tokens and the ways a
//! stream can end or break.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body::{Body, Frame};
use pin_project_lite::pin_project;
use serde::Serialize;
use tokio::time::Sleep;

use super::body::MockBodyError;

const KEEP_ALIVE: &[u8] = b": OPENROUTER PROCESSING\n\n";
const DONE: &[u8] = b"data: [DONE]\n\n";

// ===== StreamScript =====

/// What a [`Reply::stream`](super::Reply::stream) sends, as set by its setters.
#[derive(Debug, Clone)]
pub(super) struct StreamScript {
    /// `None`: the words of the reply's content (or `Hello from <model>`).
    pub(super) tokens: Option<Arc<[String]>>,
    pub(super) keep_alives: usize,
    pub(super) keep_alive_every: Duration,
    pub(super) chunk_interval: Duration,
    pub(super) end: End,
}

/// How a stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// Tokens, finish chunk, usage chunk, `[DONE]`.
    Complete,
    /// Like `Complete` without `[DONE]`.
    NoDone,
    /// An error chunk after this many tokens, then the end.
    ErrorAfter(usize),
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

/// The envelope fields shared by every chunk of one stream.
#[derive(Debug)]
pub(super) struct Meta {
    pub(super) id: String,
    pub(super) provider: String,
    pub(super) model: String,
    pub(super) created: u64,
    pub(super) prompt_tokens: u64,
}

/// The next thing the body sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    KeepAlive(usize),
    Token(usize),
    Finish,
    Usage,
    Done,
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
        let plan = Plan { script, tokens, meta };
        let step = if plan.script.keep_alives > 0 {
            Step::KeepAlive(0)
        } else {
            plan.token_or_end(0)
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
    /// Token `i` if the script sends it, else what comes after the tokens.
    fn token_or_end(&self, i: usize) -> Step {
        let n = self.tokens.len();
        let (limit, after) = match self.script.end {
            End::Complete | End::NoDone => (n, Step::Finish),
            End::ErrorAfter(k) => (k.min(n), Step::Error),
            End::CutAfter(k) => (k.min(n), Step::Cut),
            End::StallAfter(k) => (k.min(n), Step::Stall),
        };
        if i < limit {
            Step::Token(i)
        } else {
            after
        }
    }

    fn next(&self, step: Step) -> Step {
        match step {
            Step::KeepAlive(i) if i + 1 < self.script.keep_alives => Step::KeepAlive(i + 1),
            Step::KeepAlive(_) => self.token_or_end(0),
            Step::Token(i) => self.token_or_end(i + 1),
            Step::Finish => Step::Usage,
            Step::Usage if self.script.end == End::NoDone => Step::End,
            Step::Usage => Step::Done,
            Step::Done | Step::Error | Step::Cut | Step::End => Step::End,
            Step::Stall => Step::Stall,
        }
    }

    fn delay(&self, step: Step) -> Duration {
        match step {
            Step::KeepAlive(_) => self.script.keep_alive_every,
            _ => self.script.chunk_interval,
        }
    }

    fn frame(&self, step: Step) -> Result<Bytes, MockBodyError> {
        let m = &self.meta;
        let chunk = |choices: &[Choice<'_>], usage: Option<Usage>| {
            data(&Chunk {
                id: &m.id,
                provider: &m.provider,
                model: &m.model,
                object: "chat.completion.chunk",
                created: m.created,
                choices,
                usage,
            })
        };
        let bytes = match step {
            Step::KeepAlive(_) => Bytes::from_static(KEEP_ALIVE),
            Step::Done => Bytes::from_static(DONE),
            Step::Token(i) => {
                let delta = Delta {
                    role: Some("assistant"),
                    content: Some(&self.tokens[i]),
                };
                chunk(&[Choice::new(delta, None)], None)
            }
            Step::Finish => chunk(&[Choice::new(Delta::default(), Some("stop"))], None),
            Step::Usage => {
                let completion = self.tokens.len() as u64;
                let usage = Usage {
                    prompt_tokens: m.prompt_tokens,
                    completion_tokens: completion,
                    total_tokens: m.prompt_tokens + completion,
                };
                chunk(&[], Some(usage))
            }
            Step::Error => {
                let delta = Delta {
                    role: None,
                    content: Some(""),
                };
                data(&ErrorChunk {
                    id: &m.id,
                    object: "chat.completion.chunk",
                    created: m.created,
                    model: &m.model,
                    provider: &m.provider,
                    error: ChunkError {
                        code: "server_error",
                        message: "Provider disconnected",
                    },
                    choices: [Choice::new(delta, Some("error"))],
                })
            }
            Step::Cut => return Err(MockBodyError::new("mock upstream cut the stream")),
            Step::Stall | Step::End => unreachable!("{step:?} sends no frame"),
        };
        Ok(bytes)
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
struct Chunk<'a> {
    id: &'a str,
    provider: &'a str,
    model: &'a str,
    object: &'static str,
    created: u64,
    choices: &'a [Choice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Serialize)]
struct ErrorChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    provider: &'a str,
    error: ChunkError,
    choices: [Choice<'a>; 1],
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
