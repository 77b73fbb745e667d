//! Streaming responses: the commit point and the body after it.
//!
//! Before commit the engine reads an SSE response frame by frame, holding the
//! frames, until the first `data:` event that carries content (or `[DONE]`).
//! Keep-alive comments and empty lines are not progress. An error chunk, a
//! broken body or the end of the stream before that point is a failed attempt
//! and the chain moves on. After commit the held frames and the rest of the
//! upstream body pass through unchanged, one frame per poll; the tracker keeps
//! watching so a stream that breaks, stalls or ends without `[DONE]` or a
//! final `finish_reason` is ended with an explicit SSE error chunk instead of
//! looking complete.

use crate::inspect::error_from_value;
use crate::report::{FallbackReport, Outcome, Resolution, UpstreamError, Usage};
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

/// What one dispatched event meant before commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Signal {
    /// Nothing decisive (keep-alives, role-only or usage-only chunks).
    None,
    /// The first content (or `[DONE]`): commit to this attempt.
    Commit,
    /// An error before commit: the chunk's error.
    Error(UpstreamError),
}

/// Incremental SSE reader that remembers what matters about the stream.
#[derive(Debug, Default)]
pub(crate) struct SseTracker {
    /// Bytes of an unfinished line carried between frames.
    partial: Vec<u8>,
    /// The `data:` payload of the event being read (lines joined by `\n`).
    data: Vec<u8>,
    has_data: bool,
    pub(crate) committed: bool,
    pub(crate) model: Option<String>,
    pub(crate) provider: Option<String>,
    pub(crate) done: bool,
    pub(crate) finish_reason: Option<String>,
    pub(crate) error: Option<UpstreamError>,
    pub(crate) usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    error: Option<Value>,
    #[serde(default)]
    choices: Option<Vec<ChunkChoice>>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<Map<String, Value>>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    error: Option<Value>,
}

impl SseTracker {
    /// Reads one frame's bytes. Before commit it stops at the first decisive
    /// event and returns it; after commit it only keeps track.
    ///
    /// The first decisive event of a frame wins: after a commit the rest of
    /// the frame is still tracked; after an error the attempt is over.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> Signal {
        let mut result = Signal::None;
        while let Some(nl) = memchr::memchr(b'\n', bytes) {
            let signal = if self.partial.is_empty() {
                self.line(&bytes[..nl])
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&bytes[..nl]);
                let s = self.line(&line);
                line.clear();
                self.partial = line;
                s
            };
            bytes = &bytes[nl + 1..];
            match signal {
                Signal::None => {}
                Signal::Commit => result = Signal::Commit,
                Signal::Error(e) => return Signal::Error(e),
            }
        }
        self.partial.extend_from_slice(bytes);
        result
    }

    /// The upstream body ended: dispatch what is pending.
    pub(crate) fn finish(&mut self) -> Signal {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            let s = self.line(&line);
            if s != Signal::None {
                return s;
            }
        }
        self.dispatch()
    }

    /// The stream ended properly: `[DONE]`, or a final `finish_reason`.
    pub(crate) fn complete(&self) -> bool {
        self.done || self.finish_reason.as_deref().is_some_and(|r| r != "error")
    }

    /// A line ended mid-event (the client's parser holds a partial line).
    pub(crate) fn mid_line(&self) -> bool {
        !self.partial.is_empty()
    }

    fn line(&mut self, line: &[u8]) -> Signal {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return self.dispatch();
        }
        if line[0] == b':' {
            return Signal::None; // keep-alive comment
        }
        if let Some(rest) = line.strip_prefix(b"data:") {
            let rest = rest.strip_prefix(b" ").unwrap_or(rest);
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(rest);
            self.has_data = true;
        }
        Signal::None
    }

    fn dispatch(&mut self) -> Signal {
        if !std::mem::take(&mut self.has_data) {
            return Signal::None;
        }
        let data = std::mem::take(&mut self.data);
        let signal = self.event(&data);
        self.data = data;
        self.data.clear();
        signal
    }

    fn event(&mut self, data: &[u8]) -> Signal {
        if data.trim_ascii() == b"[DONE]" {
            self.done = true;
            return self.commit();
        }
        let chunk: Chunk = match serde_json::from_slice(data) {
            Ok(c) => c,
            Err(e) if !self.committed => {
                return Signal::Error(UpstreamError {
                    message: Some(format!("malformed stream chunk before the first token: {e}")),
                    ..UpstreamError::default()
                })
            }
            Err(_) => return Signal::None,
        };
        if self.model.is_none() {
            self.model = chunk.model;
        }
        if self.provider.is_none() {
            self.provider = chunk.provider;
        }
        if let Some(u) = chunk.usage {
            self.usage = Some(u);
        }
        let mut error = chunk.error.filter(|e| !e.is_null()).map(|e| error_from_value(&e));
        let mut content = false;
        for choice in chunk.choices.iter().flatten() {
            match choice.finish_reason.as_deref() {
                Some("error") if error.is_none() => {
                    error = Some(match &choice.error {
                        Some(e) => error_from_value(e),
                        None => UpstreamError {
                            message: Some("stream chunk finished with finish_reason \"error\"".into()),
                            ..UpstreamError::default()
                        },
                    });
                }
                Some("error") | None => {}
                Some(reason) => {
                    self.finish_reason = Some(reason.to_owned());
                    content = true;
                }
            }
            content |= choice.delta.as_ref().is_some_and(carries_content);
        }
        if let Some(e) = error {
            self.finish_reason = Some("error".into());
            if self.committed {
                self.error.get_or_insert(e);
                return Signal::None;
            }
            return Signal::Error(e);
        }
        if content {
            self.commit()
        } else {
            Signal::None
        }
    }

    fn commit(&mut self) -> Signal {
        if self.committed {
            Signal::None
        } else {
            self.committed = true;
            Signal::Commit
        }
    }
}

/// A delta carries content when any field other than `role` holds something:
/// text, tool calls, reasoning, a refusal.
fn carries_content(delta: &Map<String, Value>) -> bool {
    delta.iter().any(|(k, v)| {
        k != "role"
            && match v {
                Value::Null => false,
                Value::String(s) => !s.is_empty(),
                Value::Array(a) => !a.is_empty(),
                Value::Object(o) => !o.is_empty(),
                _ => true,
            }
    })
}

/// The final report of a streamed response, once the stream has ended.
///
/// A streamed response carries this handle in its extensions next to the
/// [`FallbackReport`] taken at commit time. The handle resolves when the
/// body ends — completed, broken, stalled, or dropped by the caller — with
/// the served attempt's final outcome and the usage from the last chunk.
///
/// ```
/// # async fn demo(resp: http::Response<llm_fallback::ResponseBody<llm_fallback::testing::MockBody>>) {
/// use http_body_util::BodyExt;
/// use llm_fallback::StreamReport;
///
/// let handle = resp.extensions().get::<StreamReport>().cloned();
/// let bytes = resp.into_body().collect().await.unwrap().to_bytes();
/// if let Some(handle) = handle {
///     let report = handle.finished().await;
///     println!("{} bytes from {}: {}", bytes.len(), report.served_model(), report);
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct StreamReport {
    rx: watch::Receiver<Option<FallbackReport>>,
}

impl StreamReport {
    /// Waits for the stream to end and returns its final report.
    pub async fn finished(mut self) -> FallbackReport {
        // The sender always sends before it goes away, so once `wait_for`
        // returns (ready or closed) the value is there.
        let _ = self.rx.wait_for(Option::is_some).await.map(|_| ());
        let report = self.rx.borrow().clone();
        report.expect("a stream report is sent before its sender drops")
    }

    /// The final report, if the stream has ended.
    pub fn get(&self) -> Option<FallbackReport> {
        self.rx.borrow().clone()
    }
}

impl fmt::Debug for StreamReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamReport")
            .field("finished", &self.rx.borrow().is_some())
            .finish()
    }
}

/// How a committed stream ended, for the final report.
enum Ending {
    Complete,
    Failed(UpstreamError),
    Abandoned,
}

/// Sends the final report exactly once: at the end of the stream, or when
/// the body is dropped early.
struct Finisher {
    report: FallbackReport,
    started: Instant,
    tx: watch::Sender<Option<FallbackReport>>,
}

impl Finisher {
    fn finish(mut self, ending: Ending, tracker: &SseTracker) {
        self.send(ending, tracker);
    }

    fn send(&mut self, ending: Ending, tracker: &SseTracker) {
        let mut report = self.report.clone();
        report.usage = tracker.usage.clone().or(report.usage);
        report.elapsed = self.started.elapsed();
        if let Some(last) = report.attempts.last_mut() {
            match ending {
                Ending::Complete => {}
                Ending::Failed(ref e) => {
                    last.outcome = Outcome::StreamBroken;
                    last.error = Some(e.clone());
                    report.resolution = Resolution::StreamBroken;
                }
                Ending::Abandoned => {
                    last.outcome = Outcome::Abandoned;
                }
            }
            match ending {
                Ending::Complete => tracing::debug!(model = report.served_model(), "llm fallback stream completed"),
                Ending::Failed(e) => {
                    tracing::warn!(model = report.served_model(), error = %e, "llm fallback stream broke after commit")
                }
                Ending::Abandoned => {
                    tracing::debug!(
                        model = report.served_model(),
                        "llm fallback stream dropped by the caller"
                    )
                }
            }
        }
        self.tx.send_replace(Some(report));
    }
}

pin_project! {
    /// The body of a committed stream: held frames, then the upstream's
    /// frames as they come, then (only if the stream broke) one SSE error
    /// chunk.
    pub(crate) struct CommittedStream<B> {
        held: VecDeque<Bytes>,
        #[pin]
        inner: B,
        tracker: SseTracker,
        idle: Option<Duration>,
        sleep: Option<Pin<Box<Sleep>>>,
        tail: Option<Bytes>,
        ended: bool,
        finisher: Option<Finisher>,
    }

    impl<B> PinnedDrop for CommittedStream<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(mut f) = this.finisher.take() {
                f.send(Ending::Abandoned, this.tracker);
            }
        }
    }
}

impl<B> CommittedStream<B> {
    /// `held` were already fed to `tracker`. Returns the body and the handle
    /// that resolves when it ends.
    pub(crate) fn new(
        held: VecDeque<Bytes>,
        inner: B,
        tracker: SseTracker,
        idle: Option<Duration>,
        report: FallbackReport,
        started: Instant,
    ) -> (Self, StreamReport) {
        let (tx, rx) = watch::channel(None);
        let sleep = idle.map(|d| Box::pin(tokio::time::sleep(d)));
        let body = CommittedStream {
            held,
            inner,
            tracker,
            idle,
            sleep,
            tail: None,
            ended: false,
            finisher: Some(Finisher { report, started, tx }),
        };
        (body, StreamReport { rx })
    }
}

/// An SSE error chunk in OpenRouter's mid-stream shape, so OpenAI-style
/// clients see `finish_reason: "error"` instead of a silent end.
fn error_chunk(model: &str, code: &str, message: &str, mid_line: bool) -> Bytes {
    let chunk = serde_json::json!({
        "id": "llm-fallback-error",
        "object": "chat.completion.chunk",
        "created": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "model": model,
        "error": {"code": code, "message": message},
        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error", "native_finish_reason": "error"}],
    });
    let mut out = BytesMut::new();
    if mid_line {
        // End the upstream's half-written line so our event stands alone.
        out.extend_from_slice(b"\n\n");
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&serde_json::to_vec(&chunk).expect("JSON serializes"));
    out.extend_from_slice(b"\n\n");
    out.freeze()
}

impl<B> Body for CommittedStream<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<crate::BoxError>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        loop {
            if *this.ended {
                return Poll::Ready(None);
            }
            if let Some(tail) = this.tail.take() {
                *this.ended = true;
                return Poll::Ready(Some(Ok(Frame::data(tail))));
            }
            if let Some(frame) = this.held.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(frame))));
            }
            let failure = match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        this.tracker.feed(data);
                    }
                    if let (Some(sleep), Some(idle)) = (this.sleep.as_mut(), *this.idle) {
                        sleep.as_mut().reset(Instant::now() + idle);
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => {
                    let e: crate::BoxError = e.into();
                    (
                        "stream_broken",
                        format!("the upstream stream broke after it began: {e}"),
                    )
                }
                Poll::Ready(None) => {
                    this.tracker.finish();
                    if this.tracker.complete() {
                        if let Some(f) = this.finisher.take() {
                            f.finish(Ending::Complete, this.tracker);
                        }
                        *this.ended = true;
                        return Poll::Ready(None);
                    }
                    if let Some(e) = this.tracker.error.clone() {
                        // The upstream already sent its own error chunk.
                        if let Some(f) = this.finisher.take() {
                            f.finish(Ending::Failed(e), this.tracker);
                        }
                        *this.ended = true;
                        return Poll::Ready(None);
                    }
                    (
                        "stream_truncated",
                        "the upstream stream ended without [DONE] or a final finish_reason; the answer is incomplete"
                            .to_owned(),
                    )
                }
                Poll::Pending => {
                    let stalled = this.sleep.as_mut().is_some_and(|s| s.as_mut().poll(cx).is_ready());
                    if !stalled {
                        return Poll::Pending;
                    }
                    (
                        "stream_stalled",
                        format!(
                            "no data from the upstream for {:?} after the stream began; the answer is incomplete",
                            this.idle.unwrap_or_default()
                        ),
                    )
                }
            };
            let (code, message) = failure;
            let model = this
                .finisher
                .as_ref()
                .map(|f| f.report.served_model().to_owned())
                .unwrap_or_default();
            *this.tail = Some(error_chunk(&model, code, &message, this.tracker.mid_line()));
            *this.sleep = None;
            if let Some(f) = this.finisher.take() {
                let error = UpstreamError {
                    error_type: Some(code.to_owned()),
                    message: Some(message),
                    ..UpstreamError::default()
                };
                f.finish(Ending::Failed(error), this.tracker);
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(model: &str, text: &str) -> String {
        format!(
            "data: {{\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}},\"finish_reason\":null}}]}}\n\n"
        )
    }

    #[test]
    fn keep_alives_and_role_only_chunks_do_not_commit() {
        let mut t = SseTracker::default();
        assert_eq!(
            t.feed(b": OPENROUTER PROCESSING\n\n: OPENROUTER PROCESSING\n\n"),
            Signal::None
        );
        assert_eq!(
            t.feed(b"data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n"),
            Signal::None
        );
        assert_eq!(t.feed(token("m", "Hi").as_bytes()), Signal::Commit);
        assert_eq!(t.model.as_deref(), Some("m"));
    }

    #[test]
    fn events_split_across_frames_are_joined() {
        let mut t = SseTracker::default();
        let text = token("a/b", "Hello");
        let (x, y) = text.split_at(17);
        assert_eq!(t.feed(x.as_bytes()), Signal::None);
        assert_eq!(t.feed(y.as_bytes()), Signal::Commit);
        assert_eq!(t.model.as_deref(), Some("a/b"));
    }

    #[test]
    fn crlf_and_multi_line_data_are_read() {
        let mut t = SseTracker::default();
        let s = t.feed(b"data: {\"choices\":\r\ndata: [{\"delta\":{\"content\":\"x\"}}]}\r\n\r\n");
        assert_eq!(s, Signal::Commit);
    }

    #[test]
    fn error_chunks_before_commit_are_errors() {
        let mut t = SseTracker::default();
        let s = t.feed(b": OPENROUTER PROCESSING\n\ndata: {\"error\":{\"code\":\"server_error\",\"message\":\"Provider disconnected\"},\"choices\":[{\"delta\":{\"content\":\"\"},\"finish_reason\":\"error\"}]}\n\n");
        match s {
            Signal::Error(e) => {
                assert_eq!(e.code(), Some("server_error"));
                assert_eq!(e.message(), Some("Provider disconnected"));
            }
            other => panic!("{other:?}"),
        }
        let mut t = SseTracker::default();
        let s = t.feed(b"data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"error\",\"error\":{\"code\":502,\"message\":\"x\"}}]}\n\n");
        assert!(matches!(s, Signal::Error(e) if e.code() == Some("502")));
    }

    #[test]
    fn done_commits_and_completes() {
        let mut t = SseTracker::default();
        assert_eq!(t.feed(b"data: [DONE]\n\n"), Signal::Commit);
        assert!(t.complete());
    }

    #[test]
    fn completion_needs_done_or_a_final_finish_reason() {
        let mut t = SseTracker::default();
        t.feed(token("m", "a").as_bytes());
        assert!(!t.complete());
        t.feed(b"data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
        assert!(t.complete());
        t.feed(
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n",
        );
        assert_eq!(t.usage.as_ref().map(|u| u.total_tokens), Some(5));
    }

    #[test]
    fn an_event_without_its_blank_line_is_read_at_the_end() {
        let mut t = SseTracker::default();
        assert_eq!(t.feed(b"data: [DONE]"), Signal::None);
        assert_eq!(t.finish(), Signal::Commit);
    }

    #[test]
    fn malformed_chunks_before_commit_are_errors() {
        let mut t = SseTracker::default();
        assert!(matches!(t.feed(b"data: {not json\n\n"), Signal::Error(_)));
    }
}
