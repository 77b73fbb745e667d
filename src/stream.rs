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
//! looking complete. No event may be larger than [`MAX_EVENT_BYTES`]: that
//! bounds every buffer upstream bytes fill, before commit (the attempt
//! fails) and after (the stream ends with a `stream_event_too_large` chunk).

use crate::dialect::Dialect;
use crate::inspect::error_from_value;
use crate::json::valid::Reader;
use crate::json::within;
use crate::report::{FallbackReport, Outcome, Resolution, UpstreamError, Usage};
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use serde_json::Value;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Notify;
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

/// The largest SSE event the layer reads from an upstream: 8 MiB, counting
/// the bytes of the event's lines without their line breaks (comments and
/// field names included). Past it the event is refused: before commit the
/// attempt fails (an error in a 200, so the chain moves on); after commit
/// the stream ends with a `stream_event_too_large` error chunk. It bounds
/// every buffer that upstream bytes fill (the unfinished line, the event's
/// `data`), which would otherwise grow for the life of a stream that never
/// sends a line break.
///
/// Why 8 MiB: real chunks are small (a token, a tool-call-arguments or
/// reasoning fragment: bytes to tens of KiB), but a model that returns an
/// image sends it whole, base64 in one `delta`: a 1024×1024 PNG is 2–3 MB
/// encoded, a 2K one several MB. 8 MiB carries those. It is also half the
/// default `max_response_bytes` (16 MiB), on purpose: before commit the
/// engine commits once it holds more than `max_response_bytes`, so the event
/// limit must be reached first for an oversized first event to be refused
/// (and fallen back from) rather than committed to; half leaves room for
/// 8 MiB of keep-alives and role chunks ahead of it. A stream holds at most
/// about one limit of upstream bytes (plus the parse of one event), less
/// than one buffered response may.
pub(crate) const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

const _: () = assert!(MAX_EVENT_BYTES < crate::engine::DEFAULT_MAX_RESPONSE_BYTES);

/// A buffer that has held more than this is given back after its event, so
/// one large event does not keep its memory for the rest of the stream.
const KEEP_CAPACITY: usize = 64 * 1024;

/// The error code (and the report's `error_type`) of an event larger than
/// the limit.
pub(crate) const EVENT_TOO_LARGE: &str = "stream_event_too_large";

/// Incremental SSE reader that remembers what matters about the stream.
#[derive(Debug)]
pub(crate) struct SseTracker {
    /// Bytes of an unfinished line carried between frames.
    partial: Vec<u8>,
    /// The `data:` payload of the event being read (lines joined by `\n`).
    data: Vec<u8>,
    has_data: bool,
    /// Bytes of the current event's complete lines, line breaks not counted.
    event_len: usize,
    /// The largest event read ([`MAX_EVENT_BYTES`] by default).
    max_event_bytes: usize,
    /// An event passed `max_event_bytes`: nothing more is read.
    too_large: bool,
    /// When `too_large`: the bytes fed so far ended mid-line.
    cut_mid_line: bool,
    /// The last byte fed was not a line break: a client holds a partial
    /// line (kept when `finish` reads that line itself).
    ends_mid_line: bool,
    pub(crate) committed: bool,
    pub(crate) model: Option<String>,
    pub(crate) provider: Option<String>,
    pub(crate) done: bool,
    pub(crate) finish_reason: Option<String>,
    pub(crate) error: Option<UpstreamError>,
    pub(crate) usage: Option<Usage>,
    /// The API shape whose events these are.
    pub(crate) dialect: Dialect,
    /// Responses: the `response.id` the stream announced, and the last
    /// `sequence_number` seen (the terminal event of ours continues both).
    pub(crate) response_id: Option<String>,
    pub(crate) sequence: Option<u64>,
}

impl Default for SseTracker {
    fn default() -> Self {
        Self::new(MAX_EVENT_BYTES)
    }
}

impl SseTracker {
    /// A tracker that refuses events larger than `max_event_bytes`.
    pub(crate) fn new(max_event_bytes: usize) -> Self {
        SseTracker {
            partial: Vec::new(),
            data: Vec::new(),
            has_data: false,
            event_len: 0,
            max_event_bytes,
            too_large: false,
            cut_mid_line: false,
            ends_mid_line: false,
            committed: false,
            model: None,
            provider: None,
            done: false,
            finish_reason: None,
            error: None,
            usage: None,
            dialect: Dialect::Chat,
            response_id: None,
            sequence: None,
        }
    }

    /// A tracker of `dialect`'s events, refusing events larger than
    /// [`MAX_EVENT_BYTES`].
    pub(crate) fn for_dialect(dialect: Dialect) -> Self {
        SseTracker {
            dialect,
            ..Self::default()
        }
    }

    /// Reads one frame's bytes. Before commit it stops at the first decisive
    /// event and returns it; after commit it only keeps track.
    ///
    /// The first decisive event of a frame wins: after a commit the rest of
    /// the frame is still tracked; after an error the attempt is over. An
    /// event larger than the limit is an error before commit; after it (see
    /// [`SseTracker::too_large`]) nothing more is read.
    pub(crate) fn feed(&mut self, frame: &[u8]) -> Signal {
        if self.too_large {
            return Signal::None;
        }
        if let Some(&last) = frame.last() {
            self.ends_mid_line = last != b'\n';
        }
        let mut pos = 0;
        let mut result = Signal::None;
        // The current event's one `data:` line while it is still in `frame`
        // (most events come whole in one frame): read there, not copied.
        let mut held = None;
        loop {
            // A third of an event's lines are the blank line that ends it.
            let nl = match frame.get(pos) {
                Some(b'\n') => 0,
                Some(_) => match memchr::memchr(b'\n', within(frame, pos..)) {
                    Some(nl) => nl,
                    None => break,
                },
                None => break,
            };
            let end = pos + nl;
            let signal = if self.partial.is_empty() {
                self.line(frame, pos..end, Some(&mut held))
            } else {
                self.rest_of_line(within(frame, pos..end))
            };
            pos = end + 1;
            match signal {
                Signal::None => {}
                Signal::Commit => result = Signal::Commit,
                Signal::Error(e) => return Signal::Error(e),
            }
            if self.too_large {
                self.cut_mid_line = frame.last() != Some(&b'\n');
                return result;
            }
        }
        if let Some(data) = held {
            // The event goes on in the next frame.
            extend_bounded(&mut self.data, within(frame, data), self.max_event_bytes);
        }
        let bytes = within(frame, pos..);
        if !bytes.is_empty() {
            if !self.fits(self.partial.len() + bytes.len(), bytes.last()) {
                self.cut_mid_line = true;
                return match self.refuse() {
                    Signal::None => result,
                    s => s,
                };
            }
            extend_bounded(&mut self.partial, bytes, self.max_event_bytes.saturating_add(1));
        }
        result
    }

    /// The end of a line whose start an earlier frame held (in `partial`).
    #[cold]
    fn rest_of_line(&mut self, piece: &[u8]) -> Signal {
        if !self.fits(self.partial.len() + piece.len(), piece.last().or(self.partial.last())) {
            return self.refuse();
        }
        let mut line = std::mem::take(&mut self.partial);
        extend_bounded(&mut line, piece, self.max_event_bytes.saturating_add(1));
        let s = self.line(&line, 0..line.len(), None);
        if !self.too_large && line.capacity() <= KEEP_CAPACITY {
            line.clear();
            self.partial = line;
        }
        s
    }

    /// A line of `len` bytes (its `\r` included, `last` its last byte) fits
    /// in the current event. A trailing `\r` is not counted: it may be half
    /// of a `\r\n` line break.
    fn fits(&self, len: usize, last: Option<&u8>) -> bool {
        let len = len.saturating_sub(usize::from(last == Some(&b'\r')));
        self.event_len.saturating_add(len) <= self.max_event_bytes
    }

    /// An event passed the limit: give its buffers back and stop reading.
    /// Before commit that is the attempt's error. (`feed` records whether
    /// the caller was left mid-line.)
    fn refuse(&mut self) -> Signal {
        self.too_large = true;
        self.partial = Vec::new();
        self.data = Vec::new();
        self.has_data = false;
        if self.committed {
            Signal::None
        } else {
            Signal::Error(self.too_large_error())
        }
    }

    /// An event passed the limit; the stream must end.
    pub(crate) fn too_large(&self) -> bool {
        self.too_large
    }

    /// The error of an event larger than the limit (`error_type`
    /// [`EVENT_TOO_LARGE`], like the other ends of a broken stream).
    pub(crate) fn too_large_error(&self) -> UpstreamError {
        UpstreamError {
            error_type: Some(EVENT_TOO_LARGE.to_owned()),
            message: Some(format!(
                "the upstream sent a stream event larger than {} bytes",
                self.max_event_bytes
            )),
            ..UpstreamError::default()
        }
    }

    /// The upstream body ended: dispatch what is pending.
    pub(crate) fn finish(&mut self) -> Signal {
        if self.too_large {
            return Signal::None;
        }
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            let s = self.line(&line, 0..line.len(), None);
            if s != Signal::None {
                return s;
            }
        }
        self.dispatch()
    }

    /// The stream ended properly: `[DONE]`, or a final `finish_reason`
    /// (Responses: `response.completed` or `response.incomplete`; Messages:
    /// `message_stop` after a `stop_reason`, both recorded as `done`).
    pub(crate) fn complete(&self) -> bool {
        match self.dialect {
            Dialect::Responses | Dialect::Messages => self.done,
            _ => self.done || self.finish_reason.as_deref().is_some_and(|r| r != "error"),
        }
    }

    /// A line ended mid-event (the client's parser holds a partial line).
    pub(crate) fn mid_line(&self) -> bool {
        !self.partial.is_empty() || self.cut_mid_line || self.ends_mid_line
    }

    /// What a client needs before an event of ours so it stands alone: the
    /// end of a half-written line and the blank line that closes the
    /// upstream's event, or only the blank line after complete lines of an
    /// event not yet dispatched, or nothing.
    pub(crate) fn separator(&self) -> &'static [u8] {
        if self.mid_line() {
            b"\n\n"
        } else if self.event_len > 0 || self.too_large {
            b"\n"
        } else {
            b""
        }
    }

    /// The engine committed to the stream without a content event (it held
    /// more than it may before one): what follows is read as a committed
    /// stream's, to its end.
    pub(crate) fn force_commit(&mut self) {
        self.committed = true;
    }

    /// The line `at` of `bytes` (its line break cut). With `held` (the line
    /// is in the frame being fed, which outlives the call), an event's
    /// first `data:` line is only noted there, as a range of `bytes`, and
    /// copied to `data` only if another one follows.
    fn line(&mut self, bytes: &[u8], at: Range<usize>, held: Option<&mut Option<Range<usize>>>) -> Signal {
        let mut at = at;
        let line = match bytes.get(at.clone()) {
            Some([line @ .., b'\r']) => {
                at.end -= 1;
                line
            }
            Some(line) => line,
            None => return Signal::None,
        };
        let Some(&first) = line.first() else {
            self.event_len = 0;
            return match held.and_then(Option::take) {
                Some(data) => {
                    self.has_data = false;
                    self.event(within(bytes, data))
                }
                None => self.dispatch(),
            };
        };
        self.event_len = self.event_len.saturating_add(line.len());
        if self.event_len > self.max_event_bytes {
            return self.refuse();
        }
        if first == b':' {
            return Signal::None; // keep-alive comment
        }
        if line.starts_with(b"data:") {
            let skip = if line.get(5) == Some(&b' ') { 6 } else { 5 };
            let rest = at.start + skip..at.end;
            match held {
                Some(held) if !self.has_data => *held = Some(rest),
                held => {
                    if let Some(first) = held.and_then(Option::take) {
                        extend_bounded(&mut self.data, within(bytes, first), self.max_event_bytes);
                    }
                    if self.has_data {
                        // Within the event's size: each `data:` line's prefix
                        // is longer than the `\n` that joins it.
                        extend_bounded(&mut self.data, b"\n", self.max_event_bytes);
                    }
                    extend_bounded(&mut self.data, within(bytes, rest), self.max_event_bytes);
                }
            }
            self.has_data = true;
        }
        Signal::None
    }

    fn dispatch(&mut self) -> Signal {
        if !std::mem::take(&mut self.has_data) {
            return Signal::None;
        }
        let mut data = std::mem::take(&mut self.data);
        let signal = self.event(&data);
        if data.capacity() > KEEP_CAPACITY {
            data = Vec::new();
        }
        data.clear();
        self.data = data;
        signal
    }

    fn event(&mut self, data: &[u8]) -> Signal {
        if !matches!(self.dialect, Dialect::Chat | Dialect::Completions) {
            if let Some(signal) = crate::dialect::judge_event(self.dialect, self, data) {
                return signal;
            }
        }
        if data.trim_ascii() == b"[DONE]" {
            self.done = true;
            return self.commit();
        }
        if self.committed && self.quiet_chunk(data) {
            // After commit a chunk that names nothing the tracker keeps
            // changes nothing (its content commits nothing more): it is not
            // read.
            return Signal::None;
        }
        self.read_chunk(data)
    }

    /// Reads a chat or legacy-completions chunk in full.
    fn read_chunk(&mut self, data: &[u8]) -> Signal {
        let read = ChunkFacts::read(data, self.model.is_none(), self.provider.is_none(), self.committed);
        let chunk = match self.accept(data, read, "chunk before the first token", CHAT_TYPED) {
            Ok(c) => c,
            Err(signal) => return signal,
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
        if let Some(reason) = chunk.finish_reason {
            self.finish_reason = Some(reason);
        }
        let error = match (chunk.error, chunk.failed) {
            (Some(span), _) => Some(error_at(data, span)),
            (None, Some(Some(span))) => Some(error_at(data, span)),
            (None, Some(None)) => Some(UpstreamError {
                message: Some("stream chunk finished with finish_reason \"error\"".into()),
                ..UpstreamError::default()
            }),
            (None, None) => None,
        };
        let content = chunk.content;
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

    /// After commit, a chat or legacy-completions chunk whose reading would
    /// change nothing: every member it might hold that the tracker keeps
    /// (`finish_reason`, `usage`, `error`, and `model` or `provider` while
    /// none is known) is absent or `null`, found without reading the JSON.
    /// Each name is looked for by its bytes and its closing quote (a key the
    /// scanner reports has them, unless it has a `\u` escape, which sends
    /// the chunk to the full read); a key is followed by `:`, so a match that
    /// is not is no key, and one inside a string only makes the chunk read
    /// in full.
    fn quiet_chunk(&self, data: &[u8]) -> bool {
        use memchr::memmem::Finder;
        use std::sync::LazyLock;
        static FINISH: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"finish_reason\""));
        static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"usage\""));
        static ERROR: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"error\""));
        static MODEL: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"model\""));
        static PROVIDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"provider\""));
        let absent_or_null = |name: &Finder<'_>| {
            name.find_iter(data).all(|at| {
                let after = data
                    .get(at + name.needle().len()..)
                    .unwrap_or_default()
                    .trim_ascii_start();
                match after.strip_prefix(b":") {
                    Some(value) => value.trim_ascii_start().starts_with(b"null"),
                    None => true,
                }
            })
        };
        absent_or_null(&FINISH)
            && absent_or_null(&USAGE)
            && absent_or_null(&ERROR)
            && (self.model.is_some() || absent_or_null(&MODEL))
            && (self.provider.is_some() || absent_or_null(&PROVIDER))
            && !crate::dialect::has_unicode_escape(data)
    }

    /// What a dialect's reader made of one event's `data`, as the tracker
    /// takes it. The readers check the event in their one pass
    /// ([`Reader`]): `None` when it is not UTF-8 JSON as a client's parser
    /// (serde_json) takes it, not an object of its shape, or a member read
    /// has the wrong type. Before commit the event decides the attempt, and
    /// a refusal is the attempt's error, naming `what` and the members
    /// `typed`; after commit a malformed event is the client's to see and is
    /// skipped (`Err(Signal::None)`).
    // The error is the attempt's `Signal`, returned once per event to the
    // reader that returns it on: boxing it would cost more than it saves.
    #[allow(clippy::result_large_err)]
    pub(crate) fn accept<E>(&self, data: &[u8], read: Option<E>, what: &str, typed: &str) -> Result<E, Signal> {
        match read {
            Some(event) => Ok(event),
            None if self.committed => Err(Signal::None),
            None => Err(Signal::Error(UpstreamError {
                message: Some(format!("malformed stream {what}: {}", malformed(data, typed))),
                ..UpstreamError::default()
            })),
        }
    }

    /// Commits (once): the first decisive content.
    pub(crate) fn commit(&mut self) -> Signal {
        if self.committed {
            Signal::None
        } else {
            self.committed = true;
            Signal::Commit
        }
    }
}

/// Appends `bytes` to `buf`, growing it (by doubling, as `Vec` does) to at
/// most `cap` bytes of capacity (more only if `bytes` needs it; callers
/// check the length first), so a buffer never holds twice the limit.
fn extend_bounded(buf: &mut Vec<u8>, bytes: &[u8], cap: usize) {
    let need = buf.len().saturating_add(bytes.len());
    if need > buf.capacity() {
        // At least 1 KiB at once: most events fit, without a few
        // reallocations while a new stream's first ones are read.
        let target = buf.capacity().saturating_mul(2).max(1024).min(cap).max(need);
        buf.reserve_exact(target - buf.len());
    }
    buf.extend_from_slice(bytes);
}

/// What a chat or legacy-completions chunk says, read by the scanner in
/// one pass (nothing is built but the few strings kept): the first model and
/// provider, `usage`, an `error`, each choice's `finish_reason`, and whether
/// a choice carries content.
#[derive(Default)]
struct ChunkFacts {
    model: Option<String>,
    provider: Option<String>,
    usage: Option<Usage>,
    /// A non-null top-level `error`.
    error: Option<Range<usize>>,
    /// The last `finish_reason` that is not `"error"`.
    finish_reason: Option<String>,
    /// The first choice that finished with `"error"`, and its `error`.
    failed: Option<Option<Range<usize>>>,
    /// A choice finished, or its `delta` (or legacy `text`) holds something.
    content: bool,
}

impl ChunkFacts {
    /// `None` when the chunk is not JSON as serde_json takes it, or not an
    /// object of that shape: a known member of another type (`model` a
    /// number, a choice not an object, …), as a typed client would refuse
    /// it. `model` and `provider` are decoded only when asked for (the
    /// tracker keeps the first). One pass ([`Reader`]) checks and reads it.
    fn read(data: &[u8], want_model: bool, want_provider: bool, skim: bool) -> Option<ChunkFacts> {
        use crate::json::scan::ValueKind;
        let mut facts = ChunkFacts::default();
        let (mut model, mut provider, mut usage) = (None, None, None);
        let read = Reader::read(data, skim, |r, key, at| {
            if key == b"choices" && r.byte(at) == Some(b'[') {
                return r.array(at, |r, at| {
                    if r.byte(at) != Some(b'{') {
                        return None; // a choice that is not an object
                    }
                    let mut choice = Choice::default();
                    let end = r.object(at, |r, key, at| choice.member(r, key, at))?;
                    match choice.finish_reason.as_deref() {
                        Some("error") if facts.failed.is_none() => facts.failed = Some(choice.error),
                        Some("error") => {}
                        Some(_) => {
                            facts.finish_reason = choice.finish_reason;
                            facts.content = true;
                        }
                        None => {}
                    }
                    facts.content |= choice.content;
                    Some(end)
                });
            }
            let v = r.value(at)?;
            match (key, v.kind) {
                (b"model" | b"provider" | b"usage" | b"error" | b"choices", ValueKind::Null) => {}
                (b"model", ValueKind::String) => model = Some(v.span.clone()),
                (b"provider", ValueKind::String) => provider = Some(v.span.clone()),
                (b"usage", ValueKind::Object) => usage = Some(v.span.clone()),
                (b"error", _) => facts.error = Some(v.span.clone()),
                (b"model" | b"provider" | b"usage" | b"choices", _) => return None,
                _ => {}
            }
            Some(v.span.end)
        });
        if !read {
            return None;
        }
        let text = |span: Option<Range<usize>>, wanted: bool| match span.filter(|_| wanted) {
            None => Some(None),
            Some(span) => crate::json::scan::decode_string(data.get(span)?)
                .ok()
                .map(|s| Some(s.into_owned())),
        };
        Some(ChunkFacts {
            model: text(model, want_model)?,
            provider: text(provider, want_provider)?,
            usage: match usage {
                Some(span) => Some(serde_json::from_slice(data.get(span)?).ok()?),
                None => None,
            },
            ..facts
        })
    }
}

/// One choice of a chunk.
#[derive(Default)]
struct Choice {
    finish_reason: Option<String>,
    error: Option<Range<usize>>,
    content: bool,
}

impl Choice {
    /// Reads the member `key` whose value is at `at`; one past its end
    /// (`None`: not JSON, or a known member of the wrong type).
    fn member(&mut self, r: &mut Reader<'_>, key: &[u8], at: usize) -> Option<usize> {
        use crate::json::scan::{self, ValueKind};
        let data = r.bytes();
        if key == b"delta" && r.byte(at) == Some(b'{') {
            // A delta carries content when any member other than `role`
            // holds something: text, tool calls, reasoning, a refusal.
            let mut content = false;
            let end = r.object(at, |r, key, at| {
                let v = r.value(at)?;
                if key != b"role" {
                    let inner = data
                        .get(v.span.start + 1..v.span.end.saturating_sub(1))
                        .unwrap_or_default();
                    content |= match v.kind {
                        ValueKind::Null => false,
                        ValueKind::String => !inner.is_empty(),
                        ValueKind::Array | ValueKind::Object => !inner.trim_ascii().is_empty(),
                        _ => true,
                    };
                }
                Some(v.span.end)
            })?;
            self.content |= content;
            return Some(end);
        }
        let v = r.value(at)?;
        match (key, v.kind) {
            (b"finish_reason" | b"delta" | b"text" | b"error", ValueKind::Null) => {}
            (b"finish_reason", ValueKind::String) => {
                self.finish_reason = Some(scan::decode_string(data.get(v.span.clone())?).ok()?.into_owned())
            }
            (b"error", _) => self.error = Some(v.span.clone()),
            // Legacy completions carry their text here, not in a `delta`.
            (b"text", ValueKind::String) => self.content |= v.span.len() > 2,
            (b"finish_reason" | b"delta" | b"text", _) => return None,
            _ => {}
        }
        Some(v.span.end)
    }
}

/// The error object at `span` of a chunk (an unreadable one is still an
/// error).
fn error_at(data: &[u8], span: Range<usize>) -> UpstreamError {
    serde_json::from_slice::<Value>(within(data, span))
        .map(|v| error_from_value(&v))
        .unwrap_or_default()
}

/// The members a chat chunk's reader types ([`SseTracker::accept`]).
const CHAT_TYPED: &str = "model, provider, usage, choices or a choice's finish_reason, delta, text";

/// Why an event before commit is refused: serde_json's message when it is
/// not JSON, else that one of `typed` (the members read) has the wrong type.
fn malformed(data: &[u8], typed: &str) -> String {
    match std::str::from_utf8(data).map(serde_json::from_str::<serde::de::IgnoredAny>) {
        Err(e) => format!("not UTF-8: {e}"),
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(_)) => format!("a member has the wrong type ({typed})"),
    }
}

/// The final report of a streamed response, once the stream has ended.
///
/// A streamed response carries this handle in its extensions next to the
/// [`FallbackReport`] taken at commit time. The handle resolves when the
/// body ends — completed, broken, stalled, or dropped by the caller — with
/// the served attempt's final outcome and the usage from the last chunk.
///
/// ```
/// # async fn demo(resp: http::Response<llm_fallback::ResponseBody<llm_fallback_mock::MockBody>>) {
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
    end: Arc<End>,
}

/// What a stream's [`StreamReport`]s and its [`Finisher`] share: one
/// allocation per stream, a lock taken at its end and by each reader.
struct End {
    state: Mutex<EndState>,
    /// Woken when the report is sent or the finisher goes away.
    changed: Notify,
}

struct EndState {
    /// The final report, once sent.
    report: Option<FallbackReport>,
    hook: HookSlot,
    /// The finisher went away (always after sending).
    gone: bool,
}

/// The builder's `on_report` hook: called once per request with the final
/// report.
pub(crate) type ReportHook = Arc<dyn Fn(&FallbackReport) + Send + Sync>;

/// Where a stream's report hook waits for the stream's end. Whichever of
/// the hook and the end comes second calls it, so it runs exactly once.
enum HookSlot {
    /// Neither the hook nor the end yet.
    Waiting,
    /// The hook, waiting for the end.
    Hook(ReportHook),
    /// The stream ended before a hook was given: the report is sent.
    Ended,
    /// The hook was called.
    Fired,
}

impl End {
    fn state(&self) -> std::sync::MutexGuard<'_, EndState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl StreamReport {
    /// Waits for the stream to end and returns its final report.
    pub async fn finished(self) -> FallbackReport {
        loop {
            // Registered before the state is read, so a report sent in
            // between still wakes this wait.
            let changed = self.end.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            {
                let state = self.end.state();
                if let Some(report) = &state.report {
                    return report.clone();
                }
                // The finisher sends before it goes away, a report hook's
                // panic included ([`SendOnDrop`]): `gone` with no report
                // would be a bug of the crate.
                assert!(!state.gone, "a stream report is sent before its sender drops");
            }
            changed.await;
        }
    }

    /// The final report, if the stream has ended.
    pub fn get(&self) -> Option<FallbackReport> {
        self.end.state().report.clone()
    }

    /// Calls `hook` with the final report when the stream ends (now, if it
    /// has), once; a second hook is ignored.
    pub(crate) fn on_end(&self, hook: ReportHook) {
        let mut state = self.end.state();
        match std::mem::replace(&mut state.hook, HookSlot::Fired) {
            HookSlot::Waiting => state.hook = HookSlot::Hook(hook),
            HookSlot::Ended => {
                // Sent before the slot said `Ended`; the hook runs without
                // the lock (it may read this handle).
                let report = state.report.clone();
                drop(state);
                if let Some(report) = report {
                    hook(&report);
                }
            }
            other => state.hook = other,
        }
    }
}

impl fmt::Debug for StreamReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamReport")
            .field("finished", &self.end.state().report.is_some())
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
    end: Sender,
}

/// The finisher's side of [`End`]: says when it goes away, so a wait for a
/// report that can no longer come does not hang.
struct Sender(Arc<End>);

impl Drop for Sender {
    fn drop(&mut self) {
        let mut state = self.0.state();
        if state.report.is_none() {
            state.gone = true;
            drop(state);
            self.0.changed.notify_waiters();
        }
    }
}

/// Sends its report when dropped: after the report hook returns, or while
/// a panic in it unwinds.
struct SendOnDrop<'a> {
    end: &'a Sender,
    report: Option<FallbackReport>,
}

impl Drop for SendOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(report) = self.report.take() {
            self.end.send(&mut self.end.0.state(), report);
        }
    }
}

impl Sender {
    /// Makes `report` the final report and wakes whoever waits for it.
    fn send(&self, state: &mut EndState, report: FallbackReport) {
        state.report = Some(report);
        self.0.changed.notify_waiters();
    }
}

impl Finisher {
    /// Sends the report (moved, not cloned: a finisher sends once).
    fn finish(self, ending: Ending, tracker: &SseTracker) {
        let mut report = self.report;
        report.usage = tracker.usage.clone().or(report.usage);
        report.elapsed = self.started.elapsed();
        // The attempt that answered (hedges it beat are recorded after it).
        if let Some(last) = report.attempts.iter_mut().rev().find(|a| a.outcome.answered()) {
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
        let mut state = self.end.0.state();
        match std::mem::replace(&mut state.hook, HookSlot::Fired) {
            HookSlot::Hook(hook) => {
                drop(state);
                // Sent after the hook, so whoever awaits
                // `StreamReport::finished` sees its effects, and sent by the
                // guard's drop even if the hook panics, so no wait is left
                // without a report.
                let pending = SendOnDrop {
                    end: &self.end,
                    report: Some(report),
                };
                if let Some(report) = &pending.report {
                    hook(report);
                }
            }
            HookSlot::Waiting => {
                // Sent while the slot is held, so a hook given later finds it.
                self.end.send(&mut state, report);
                state.hook = HookSlot::Ended;
            }
            other => {
                state.hook = other;
                self.end.send(&mut state, report);
            }
        }
    }
}

pin_project! {
    /// The body of a committed stream: held frames, then the upstream's
    /// frames as they come, then (only if the stream broke) one SSE error
    /// chunk. A broken, stalled or oversized stream's upstream body is
    /// dropped when the error chunk is queued, releasing its connection.
    pub(crate) struct CommittedStream<B> {
        held: VecDeque<Bytes>,
        #[pin]
        inner: Option<B>,
        // Boxed since the engine looked at the stream's first events: it
        // moves on with the body rather than being copied out of its box.
        tracker: Box<SseTracker>,
        idle: Option<Duration>,
        sleep: Option<Pin<Box<Sleep>>>,
        tail: Option<Bytes>,
        ended: bool,
        finisher: Option<Finisher>,
    }

    impl<B> PinnedDrop for CommittedStream<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(f) = this.finisher.take() {
                // A client that stops reading at the proper end (`[DONE]`,
                // `response.completed`), as async-openai does, got the whole
                // answer: only the body's own end is left unread.
                let ending = if this.tracker.complete() {
                    Ending::Complete
                } else {
                    Ending::Abandoned
                };
                f.finish(ending, this.tracker);
            }
        }
    }
}

impl<B> CommittedStream<B> {
    /// `held` were already fed to `tracker`. Returns the body, built in the
    /// box the response body keeps it in (not built and then moved there),
    /// and the handle that resolves when it ends.
    pub(crate) fn new(
        held: VecDeque<Bytes>,
        inner: B,
        tracker: Box<SseTracker>,
        idle: Option<Duration>,
        report: FallbackReport,
        started: Instant,
    ) -> (Pin<Box<Self>>, StreamReport) {
        let end = Arc::new(End {
            state: Mutex::new(EndState {
                report: None,
                hook: HookSlot::Waiting,
                gone: false,
            }),
            changed: Notify::new(),
        });
        let sleep = idle.map(|d| Box::pin(tokio::time::sleep(d)));
        let body = Box::pin(CommittedStream {
            held,
            inner: Some(inner),
            tracker,
            idle,
            sleep,
            tail: None,
            ended: false,
            finisher: Some(Finisher {
                report,
                started,
                end: Sender(end.clone()),
            }),
        });
        (body, StreamReport { end })
    }
}

/// The one terminal error event of a broken stream, in its dialect's shape
/// (chat: a chunk with `finish_reason: "error"`; Responses:
/// `response.failed`; Messages: `event: error`), after what the client
/// needs so it stands alone.
fn error_chunk(tracker: &SseTracker, model: &str, code: &str, message: &str) -> Bytes {
    let mut out = BytesMut::new();
    // End the upstream's half-written line or event so ours stands alone.
    out.extend_from_slice(tracker.separator());
    out.extend_from_slice(&crate::dialect::terminal_event(
        tracker.dialect,
        tracker,
        model,
        code,
        message,
    ));
    out.freeze()
}

/// The code and message of an event past the limit, for the error chunk.
fn too_large(tracker: &SseTracker) -> (&'static str, String) {
    let message = tracker.too_large_error().message.unwrap_or_default();
    (EVENT_TOO_LARGE, format!("{message}; the answer is incomplete"))
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
            // A frame to pass on before the error chunk: the one whose event
            // passed the limit (the caller gets every byte read).
            let mut last = None;
            let failure = if this.tracker.too_large() {
                // An event the held frames began passed the limit.
                too_large(this.tracker)
            } else {
                let Some(inner) = this.inner.as_mut().as_pin_mut() else {
                    *this.ended = true;
                    return Poll::Ready(None);
                };
                match inner.poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            this.tracker.feed(data);
                        }
                        if let (Some(sleep), Some(idle)) = (this.sleep.as_mut(), *this.idle) {
                            sleep.as_mut().reset(Instant::now() + idle);
                        }
                        if !this.tracker.too_large() {
                            return Poll::Ready(Some(Ok(frame)));
                        }
                        last = Some(frame);
                        too_large(this.tracker)
                    }
                    Poll::Ready(Some(Err(e))) => {
                        let e: crate::BoxError = e.into();
                        (
                            "stream_broken",
                            format!(
                                "the upstream stream broke after it began: {}",
                                crate::redact::error_chain(&*e)
                            ),
                        )
                    }
                    Poll::Ready(None) => {
                        // What a client needs to dispatch an event the
                        // upstream left open (its last line break or blank
                        // line missing), read before `finish` dispatches that
                        // event for the tracker: a client's parser drops an
                        // event never dispatched, so a terminal event left
                        // open would end the stream silently for it.
                        let open = this.tracker.separator();
                        this.tracker.finish();
                        if this.tracker.complete() {
                            if let Some(f) = this.finisher.take() {
                                f.finish(Ending::Complete, this.tracker);
                            }
                            if open.is_empty() {
                                *this.ended = true;
                                return Poll::Ready(None);
                            }
                            *this.tail = Some(Bytes::from_static(open));
                            continue;
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
                            format!(
                                "the upstream stream ended without {}; the answer is incomplete",
                                crate::dialect::proper_end(this.tracker.dialect)
                            ),
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
                }
            };
            let (code, message) = failure;
            let model = this
                .finisher
                .as_ref()
                .map(|f| f.report.served_model().to_owned())
                .unwrap_or_default();
            *this.tail = Some(error_chunk(this.tracker, &model, code, &message));
            *this.sleep = None;
            // Nothing more is read: release the upstream's connection now,
            // not when the caller drops the body.
            this.inner.set(None);
            if let Some(f) = this.finisher.take() {
                let error = UpstreamError {
                    error_type: Some(code.to_owned()),
                    message: Some(message),
                    ..UpstreamError::default()
                };
                f.finish(Ending::Failed(error), this.tracker);
            }
            if let Some(frame) = last {
                return Poll::Ready(Some(Ok(frame)));
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
    fn after_commit_an_escaped_key_is_still_read() {
        // The quick check after commit finds the members it looks for by
        // their bytes; a key with a `\u` escape is read in full.
        let mut t = SseTracker::default();
        assert_eq!(t.feed(token("m", "a").as_bytes()), Signal::Commit);
        t.feed(token("m", "b").as_bytes());
        assert!(!t.complete());
        t.feed(b"data: {\"choices\":[{\"delta\":{},\"finish\\u005freason\":\"stop\"}]}\n\n");
        assert!(t.complete());
        t.feed(b"data: {\"choices\":[],\"\\u0075sage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\n");
        assert_eq!(t.usage.as_ref().map(|u| u.total_tokens), Some(3));
        // Spaced out, or after a `null` of the same name: still seen.
        let mut t = SseTracker::default();
        t.feed(token("m", "a").as_bytes());
        t.feed(b"data: {\"choices\":[{\"finish_reason\":null},{\"finish_reason\" :\t\"length\"}]}\n\n");
        assert_eq!(t.finish_reason.as_deref(), Some("length"));
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
    /// A `data:` event whose line is exactly `len` bytes (line break not
    /// counted), carrying content: `data: {"choices":[{"delta":{"content":"xx…"}}]}`.
    fn event_of(len: usize, crlf: bool) -> Vec<u8> {
        let head = b"data: {\"choices\":[{\"delta\":{\"content\":\"";
        let tail = b"\"}}]}";
        let mut e = head.to_vec();
        e.resize(len - tail.len(), b'x');
        e.extend_from_slice(tail);
        assert_eq!(e.len(), len);
        e.extend_from_slice(if crlf { b"\r\n\r\n" } else { b"\n\n" });
        e
    }

    /// Feeds `bytes` one byte per frame; the first decisive signal.
    fn feed_bytewise(t: &mut SseTracker, bytes: &[u8]) -> Signal {
        let mut first = Signal::None;
        for b in bytes.chunks(1) {
            let s = t.feed(b);
            if first == Signal::None {
                first = s;
            }
        }
        first
    }

    #[test]
    fn an_event_of_exactly_the_limit_passes_whole_or_split_at_every_byte() {
        for crlf in [false, true] {
            let event = event_of(100, crlf);
            let mut whole = SseTracker::new(100);
            assert_eq!(whole.feed(&event), Signal::Commit, "crlf {crlf}");
            assert!(!whole.too_large());
            let mut split = SseTracker::new(100);
            assert_eq!(feed_bytewise(&mut split, &event), Signal::Commit, "crlf {crlf}");
            assert!(!split.too_large());
            // After commit the same event passes too, again and again.
            for _ in 0..3 {
                assert_eq!(feed_bytewise(&mut split, &event), Signal::None);
                assert_eq!(whole.feed(&event), Signal::None);
            }
            assert!(!split.too_large() && !whole.too_large() && !split.mid_line());
        }
    }

    #[test]
    fn one_byte_over_the_limit_is_refused_before_commit() {
        for crlf in [false, true] {
            for event in [event_of(101, crlf), event_of(101, crlf)[..101].to_vec()] {
                let check = |s: Signal, t: &SseTracker| {
                    assert!(t.too_large());
                    match s {
                        Signal::Error(e) => assert_eq!(e.error_type(), Some(EVENT_TOO_LARGE)),
                        other => panic!("{other:?}"),
                    }
                };
                let mut whole = SseTracker::new(100);
                let s = whole.feed(&event);
                check(s, &whole);
                let mut split = SseTracker::new(100);
                let s = feed_bytewise(&mut split, &event);
                check(s, &split);
                // Nothing more is read.
                assert_eq!(split.feed(&event_of(50, false)), Signal::None);
                assert!(!split.committed);
            }
        }
    }

    #[test]
    fn the_limit_counts_every_line_of_an_event() {
        // Three 40-byte lines: each fits, the event does not.
        let line = |c: u8| {
            let mut l = b"data: ".to_vec();
            l.resize(40, c);
            l.push(b'\n');
            l
        };
        let mut t = SseTracker::new(100);
        assert_eq!(t.feed(&line(b'1')), Signal::None);
        assert_eq!(t.feed(&line(b'2')), Signal::None);
        assert!(!t.too_large());
        assert!(matches!(t.feed(&line(b'3')), Signal::Error(_)));
        // Comments count too (16 × 6 bytes fit, 17 do not): an endless run
        // of them without a blank line is one endless event.
        let mut t = SseTracker::new(100);
        assert_eq!(t.feed(b": ping\n".repeat(16).as_slice()), Signal::None);
        assert!(!t.too_large());
        assert!(matches!(t.feed(b": ping\n"), Signal::Error(_)));
        // A blank line starts the count again.
        let comment = |c: u8| {
            let mut l = b": ".to_vec();
            l.resize(40, c);
            l.push(b'\n');
            l
        };
        let mut t = SseTracker::new(100);
        for _ in 0..100 {
            assert_eq!(
                t.feed(&[comment(b'a'), comment(b'b'), b"\n".to_vec()].concat()),
                Signal::None
            );
        }
        assert!(!t.too_large());
    }

    #[test]
    fn a_line_without_a_break_after_commit_stays_bounded() {
        let mut t = SseTracker::default();
        assert_eq!(t.feed(token("m", "Hi").as_bytes()), Signal::Commit);
        assert_eq!(t.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\""), Signal::None);
        let chunk = vec![b'x'; 64 * 1024];
        let mut fed = 0;
        while !t.too_large() {
            assert!(fed <= 2 * MAX_EVENT_BYTES, "never refused");
            assert_eq!(t.feed(&chunk), Signal::None);
            fed += chunk.len();
            assert!(t.partial.capacity() <= MAX_EVENT_BYTES + 1, "{}", t.partial.capacity());
            assert!(t.data.capacity() <= MAX_EVENT_BYTES);
        }
        assert!(
            fed > MAX_EVENT_BYTES - chunk.len() && fed <= MAX_EVENT_BYTES + chunk.len(),
            "{fed}"
        );
        assert_eq!(
            t.partial.capacity() + t.data.capacity(),
            0,
            "its buffers are given back"
        );
        assert!(t.mid_line(), "the caller was left mid-line");
        assert_eq!(t.feed(&chunk), Signal::None);
        assert_eq!(t.partial.capacity(), 0, "nothing more is read");
        assert_eq!(t.finish(), Signal::None);
        assert_eq!(t.too_large_error().error_type(), Some(EVENT_TOO_LARGE));
    }

    #[test]
    fn a_long_data_event_of_many_lines_stays_bounded() {
        let mut t = SseTracker::new(4096);
        assert_eq!(t.feed(token("m", "Hi").as_bytes()), Signal::Commit);
        let line = [b"data: ".as_slice(), &[b'y'; 58], b"\n"].concat();
        let mut frames = 0;
        while !t.too_large() {
            assert!(frames < 1000);
            assert_eq!(t.feed(&line), Signal::None);
            frames += 1;
            assert!(t.data.capacity() <= 4096 && t.partial.capacity() <= 4097);
        }
        assert_eq!(frames, 4096 / 64 + 1);
        assert!(!t.mid_line(), "the refused frame ended its line");
    }

    #[test]
    fn a_large_event_gives_its_memory_back() {
        let mut t = SseTracker::new(1 << 20);
        assert_eq!(t.feed(token("m", "Hi").as_bytes()), Signal::Commit);
        let event = event_of(512 * 1024, false);
        let (a, b) = event.split_at(1000);
        t.feed(a);
        t.feed(b);
        assert!(!t.too_large());
        assert!(t.partial.capacity() <= KEEP_CAPACITY && t.data.capacity() <= KEEP_CAPACITY);
    }

    #[test]
    fn a_stream_split_at_every_byte_reads_like_a_whole_one() {
        let stream = [
            ": OPENROUTER PROCESSING\r\n\r\n",
            "data: {\"model\":\"m/1\",\"provider\":\"P\",\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n",
            "event: message\nid: 7\ndata: {\"model\":\"m/1\",\n",
            "data: \"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\r\n\r\n",
            "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n",
            "data: [DONE]\n\n",
        ]
        .concat();
        // The limit is the largest event's size: tight, and still enough.
        let largest = stream
            .split("\n\n")
            .flat_map(|e| e.split("\r\n\r\n"))
            .map(|e| e.split('\n').map(|l| l.trim_end_matches('\r').len()).sum::<usize>())
            .max()
            .unwrap();
        for limit in [largest, MAX_EVENT_BYTES] {
            let mut whole = SseTracker::new(limit);
            assert_eq!(whole.feed(stream.as_bytes()), Signal::Commit);
            let mut split = SseTracker::new(limit);
            assert_eq!(feed_bytewise(&mut split, stream.as_bytes()), Signal::Commit);
            for t in [&mut whole, &mut split] {
                assert_eq!(t.finish(), Signal::None);
                assert!(!t.too_large() && !t.mid_line());
                assert!(t.complete() && t.done);
                assert_eq!(t.model.as_deref(), Some("m/1"));
                assert_eq!(t.provider.as_deref(), Some("P"));
                assert_eq!(t.finish_reason.as_deref(), Some("stop"));
                assert_eq!(t.usage.as_ref().map(|u| u.total_tokens), Some(5));
            }
        }
        // Cut once anywhere: a data line read in its frame (not copied) and
        // one the next frame ends or continues read alike.
        for cut in 0..=stream.len() {
            let (a, b) = stream.as_bytes().split_at(cut);
            let mut two = SseTracker::new(largest);
            let first = two.feed(a);
            let second = two.feed(b);
            assert_eq!(
                [first, second].iter().filter(|s| **s == Signal::Commit).count(),
                1,
                "cut at {cut}"
            );
            assert_eq!(two.finish(), Signal::None);
            assert!(two.complete() && two.done && !two.too_large(), "cut at {cut}");
            assert_eq!(two.model.as_deref(), Some("m/1"));
            assert_eq!(two.provider.as_deref(), Some("P"), "cut at {cut}");
            assert_eq!(two.finish_reason.as_deref(), Some("stop"), "cut at {cut}");
            assert_eq!(two.usage.as_ref().map(|u| u.total_tokens), Some(5), "cut at {cut}");
        }
        // One byte less and the largest event is refused, however it is cut.
        let mut split = SseTracker::new(largest - 1);
        feed_bytewise(&mut split, stream.as_bytes());
        assert!(split.too_large());
    }
}

/// The scanner's reading of a chat chunk against the serde_json reading it
/// replaced (kept here as the oracle), on random chunk-shaped values: the
/// signal, and what the tracker records, must agree.
#[cfg(test)]
mod chunk_oracle {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;
    use serde_json::{json, Map};

    // Every member is typed as the old reader typed it, read or not.
    #[allow(dead_code)]
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

    #[allow(dead_code)]
    #[derive(Deserialize)]
    struct ChunkChoice {
        #[serde(default)]
        delta: Option<Map<String, Value>>,
        #[serde(default)]
        finish_reason: Option<String>,
        #[serde(default)]
        error: Option<Value>,
        #[serde(default)]
        text: Option<String>,
    }

    /// What the old tracker did with one chunk before commit: (signal is an
    /// error, commits, model, finish_reason, usage).
    fn oracle(data: &[u8]) -> (bool, bool, Option<String>, Option<String>, Option<Usage>) {
        // serde reads a struct from an array too (`"usage": []`); the
        // scanner, as a client's typed parser would, does not.
        let arrays = serde_json::from_slice::<Value>(data).is_ok_and(|v| {
            v["usage"].is_array() || v["choices"].as_array().is_some_and(|c| c.iter().any(Value::is_array))
        });
        let Ok(chunk) =
            serde_json::from_slice::<Chunk>(data)
                .map_err(drop)
                .and_then(|c| if arrays { Err(()) } else { Ok(c) })
        else {
            return (true, false, None, None, None);
        };
        let mut finish = None;
        let mut error = chunk.error.filter(|e| !e.is_null()).is_some();
        let mut content = false;
        for choice in chunk.choices.iter().flatten() {
            match choice.finish_reason.as_deref() {
                Some("error") => error = true,
                None => {}
                Some(reason) => {
                    finish = Some(reason.to_owned());
                    content = true;
                }
            }
            content |= choice.delta.as_ref().is_some_and(|d| {
                d.iter().any(|(k, v)| {
                    k != "role"
                        && match v {
                            Value::Null => false,
                            Value::String(s) => !s.is_empty(),
                            Value::Array(a) => !a.is_empty(),
                            Value::Object(o) => !o.is_empty(),
                            _ => true,
                        }
                })
            }) || choice.text.as_deref().is_some_and(|t| !t.is_empty());
        }
        if error {
            finish = Some("error".into());
        }
        (error, content && !error, chunk.model, finish, chunk.usage)
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (0u32..100).prop_map(Value::from),
            Just(json!(-1.5)),
            prop::sample::select(vec!["", "stop", "error", "length", "hi", "é\"\n"]).prop_map(Value::from),
            Just(json!([])),
            Just(json!({})),
            Just(json!([1])),
            Just(json!({"a": null})),
        ]
    }

    fn choice() -> impl Strategy<Value = Value> {
        (
            prop::option::of(prop_oneof![
                3 => prop::collection::btree_map(
                    prop::sample::select(vec!["role", "content", "tool_calls", "reasoning", "refusal"]).prop_map(String::from),
                    scalar(),
                    0..3,
                ).prop_map(|m| Value::Object(m.into_iter().collect())),
                1 => scalar(),
            ]),
            prop::option::of(scalar()),
            prop::option::of(scalar()),
            prop::option::of(prop_oneof![Just(json!({"code": 502, "message": "boom"})), scalar()]),
        )
            .prop_map(|(delta, finish, text, error)| {
                let mut c = Map::new();
                c.insert("index".into(), json!(0));
                for (k, v) in [("delta", delta), ("finish_reason", finish), ("text", text), ("error", error)] {
                    if let Some(v) = v {
                        c.insert(k.into(), v);
                    }
                }
                Value::Object(c)
            })
    }

    fn chunk() -> impl Strategy<Value = Value> {
        (
            prop::option::of(prop_oneof![3 => Just(json!("m/1")), 1 => scalar()]),
            prop::option::of(prop_oneof![
                4 => prop::collection::vec(prop_oneof![6 => choice(), 1 => scalar()], 0..3).prop_map(Value::Array),
                1 => scalar(),
            ]),
            prop::option::of(prop_oneof![
                Just(json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})),
                Just(json!({"total_tokens": -1})),
                scalar(),
            ]),
            prop::option::of(prop_oneof![Just(json!({"message": "top"})), scalar()]),
        )
            .prop_map(|(model, choices, usage, error)| {
                let mut b = Map::new();
                b.insert("id".into(), json!("chatcmpl-1"));
                for (k, v) in [
                    ("model", model),
                    ("choices", choices),
                    ("usage", usage),
                    ("error", error),
                ] {
                    if let Some(v) = v {
                        b.insert(k.into(), v);
                    }
                }
                Value::Object(b)
            })
    }

    /// `data` with, at random, a key written with a `\u` escape (the same
    /// key once decoded).
    fn escape_a_key(data: Vec<u8>, pick: u8) -> Vec<u8> {
        let key: &[u8] = match pick % 4 {
            0 => b"\"finish_reason\"",
            1 => b"\"usage\"",
            2 => b"\"model\"",
            _ => return data,
        };
        match data.windows(key.len()).position(|w| w == key) {
            // `"m\u006f…"`: the second byte of the name escaped.
            Some(at) => [
                &data[..at + 2],
                b"\\u00",
                format!("{:02x}", key[2]).as_bytes(),
                &data[at + 3..],
            ]
            .concat(),
            None => data,
        }
    }

    proptest! {
        /// After commit a chunk the quick check passes over is one whose
        /// full reading changes nothing the tracker keeps.
        #[test]
        fn a_committed_chunk_skipped_unread_is_one_that_changes_nothing(
            value in chunk(),
            pick in any::<u8>(),
            known in any::<bool>(),
            whole in any::<bool>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut data = escape_a_key(serde_json::to_vec(&value).unwrap(), pick);
            if !whole {
                let at = cut.index(data.len());
                data.truncate(at);
            }
            let tracker = || {
                let mut t = SseTracker::default();
                t.force_commit();
                if known {
                    t.model = Some("m/0".into());
                    t.provider = Some("P".into());
                }
                t
            };
            let (mut quick, mut full) = (tracker(), tracker());
            let a = quick.event(&data);
            let b = full.read_chunk(&data);
            prop_assert_eq!(a, b);
            let state = |t: &SseTracker| format!("{:?} {:?} {:?} {:?} {:?} {}", t.model, t.provider, t.finish_reason, t.usage, t.error, t.complete());
            prop_assert_eq!(state(&quick), state(&full), "{}", String::from_utf8_lossy(&data));
        }

        #[test]
        fn the_scanner_reads_a_chunk_as_serde_json_did(value in chunk(), cut in any::<prop::sample::Index>(), whole in any::<bool>()) {
            let mut data = serde_json::to_vec(&value).unwrap();
            if !whole {
                // Cut short, or a stray byte: malformed both ways.
                let at = cut.index(data.len());
                data.truncate(at);
            }
            let (error, commits, model, finish, usage) = oracle(&data);
            let mut t = SseTracker::default();
            let signal = t.event(&data);
            prop_assert_eq!(matches!(signal, Signal::Error(_)), error, "{}", String::from_utf8_lossy(&data));
            prop_assert_eq!(signal == Signal::Commit, commits, "{}", String::from_utf8_lossy(&data));
            if !error {
                prop_assert_eq!(t.model, model);
                prop_assert_eq!(t.finish_reason, finish);
                prop_assert_eq!(t.usage, usage);
            }
        }
    }
}
