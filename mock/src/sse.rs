//! A small SSE reader for tests: what did the client receive?

use serde_json::Value;

/// One thing a `text/event-stream` body carried, as [`parse_sse`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseEvent {
    /// A comment line (`: OPENROUTER PROCESSING`), without the `:` and the
    /// one space after it.
    Comment(String),
    /// The data of one event: its `data:` lines (without the field name and
    /// the one space after it) joined with `\n`, e.g. a JSON chunk or
    /// `[DONE]`.
    Data(String),
}

impl SseEvent {
    /// The data parsed as JSON; `None` for comments, `[DONE]` and other
    /// data that is not JSON.
    pub fn json(&self) -> Option<Value> {
        match self {
            Self::Data(data) => serde_json::from_str(data).ok(),
            Self::Comment(_) => None,
        }
    }

    /// Whether this is the `data: [DONE]` sentinel.
    pub fn is_done(&self) -> bool {
        matches!(self, Self::Data(data) if data == "[DONE]")
    }
}

/// Reads a `text/event-stream` body into its comments and data events, in
/// order.
///
/// Lines end in `\n` or `\r\n`. A comment is reported as soon as its line
/// is complete; data is reported when the blank line that ends its event
/// arrives, so an event cut off before its blank line is left out (as an
/// SSE client would drop it). Fields other than `data` (`event`, `id`,
/// `retry`) are skipped (see [`parse_sse_named`] for the `event` names), and
/// so is a last line without its line end.
///
/// ```
/// use llm_fallback_mock::{parse_sse, SseEvent};
///
/// let body = b": OPENROUTER PROCESSING\n\ndata: {\"a\":1}\n\ndata: [DONE]\n\ndata: cut";
/// let events = parse_sse(body);
/// assert_eq!(events[0], SseEvent::Comment("OPENROUTER PROCESSING".into()));
/// assert_eq!(events[1].json().unwrap()["a"], 1);
/// assert!(events[2].is_done());
/// assert_eq!(events.len(), 3);
/// ```
pub fn parse_sse(bytes: &[u8]) -> Vec<SseEvent> {
    parse(bytes).into_iter().map(|named| named.event).collect()
}

/// One thing a `text/event-stream` body carried, with the `event:` name of
/// its event, as [`parse_sse_named`] reads it: what a Responses or Messages
/// client dispatches on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NamedEvent {
    /// The value of the event's last `event:` line; `None` for a comment
    /// or an event without one (chat completions sends none).
    pub name: Option<String>,
    /// The comment or the data, as [`parse_sse`] reads it.
    pub event: SseEvent,
}

impl NamedEvent {
    /// An event named `name` (or unnamed) carrying `event`.
    pub fn new(name: Option<&str>, event: SseEvent) -> Self {
        Self {
            name: name.map(str::to_owned),
            event,
        }
    }

    /// The event's name, if it had one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The data parsed as JSON; `None` for comments and data that is not
    /// JSON.
    pub fn json(&self) -> Option<Value> {
        self.event.json()
    }

    /// Whether this is a comment line (a keep-alive).
    pub fn is_comment(&self) -> bool {
        matches!(self.event, SseEvent::Comment(_))
    }
}

/// Reads a `text/event-stream` body like [`parse_sse`], keeping each
/// event's `event:` name: the reader for Responses and Messages streams,
/// whose events are named.
///
/// ```
/// use llm_fallback_mock::parse_sse_named;
///
/// let body = b": OPENROUTER PROCESSING\n\nevent: ping\ndata: {\"type\":\"ping\"}\n\ndata: [DONE]\n\n";
/// let events = parse_sse_named(body);
/// assert!(events[0].is_comment());
/// assert_eq!(events[1].name(), Some("ping"));
/// assert_eq!(events[1].json().unwrap()["type"], "ping");
/// assert_eq!(events[2].name(), None);
/// assert_eq!(events.len(), 3);
/// ```
pub fn parse_sse_named(bytes: &[u8]) -> Vec<NamedEvent> {
    parse(bytes)
}

fn parse(bytes: &[u8]) -> Vec<NamedEvent> {
    let mut events = Vec::new();
    let mut data: Option<String> = None;
    let mut name: Option<String> = None;
    let mut rest = bytes;
    while let Some(end) = memchr::memchr(b'\n', rest) {
        let line = &rest[..end];
        rest = &rest[end + 1..];
        let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line));
        if line.is_empty() {
            let event_name = name.take();
            if let Some(data) = data.take() {
                events.push(NamedEvent {
                    name: event_name,
                    event: SseEvent::Data(data),
                });
            }
        } else if let Some(comment) = line.strip_prefix(':') {
            events.push(NamedEvent {
                name: None,
                event: SseEvent::Comment(strip_space(comment).to_owned()),
            });
        } else {
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = strip_space(value);
            match field {
                "data" => match &mut data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => data = Some(value.to_owned()),
                },
                "event" => name = Some(value.to_owned()),
                _ => {}
            }
        }
    }
    events
}

fn strip_space(value: &str) -> &str {
    value.strip_prefix(' ').unwrap_or(value)
}
