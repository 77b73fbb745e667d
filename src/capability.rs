//! What a request needs, what a route can do, and which routes to skip.
//!
//! Needs are read from the request body with the top-level index: `tools`,
//! `functions` and `tool_choice` mean tool calling; content parts of type
//! `image_url`/`input_image` mean vision and `input_audio` audio (seen by the
//! scanner as it passes over the strings of `messages`: no second pass, no
//! DOM); a `response_format`
//! of type `json_schema` means structured output; the prompt size is
//! estimated from the bytes of `messages` and `tools`.

use crate::json::scan::ValueKind;
use crate::request::RequestIndex;
use std::fmt;
use std::ops::{BitOr, BitOrAssign};

/// Bytes per token assumed by the prompt estimate. Real tokenizers average
/// about 4 bytes per token on English text; assuming 3 over-counts, so a
/// route whose window is too small is skipped rather than tried in vain.
pub const BYTES_PER_TOKEN: u64 = 3;

/// Image and audio data are sent inline (base64) but cost the model far
/// fewer tokens than their bytes: each part counts as this many tokens.
const MEDIA_PART_TOKENS: u64 = 1_500;

/// A set of things a route can do, or a request needs.
///
/// ```
/// use llm_fallback::Capabilities;
///
/// let caps = Capabilities::TOOLS | Capabilities::VISION;
/// assert!(caps.contains(Capabilities::TOOLS));
/// assert!(!caps.contains(Capabilities::TOOLS | Capabilities::AUDIO));
/// assert_eq!(caps.to_string(), "tools+vision");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Capabilities(u8);

impl Capabilities {
    /// Nothing beyond plain text chat.
    pub const NONE: Capabilities = Capabilities(0);
    /// Tool (function) calling: `tools`, `functions`, `tool_choice`.
    pub const TOOLS: Capabilities = Capabilities(1);
    /// Image input: content parts `image_url` / `input_image`.
    pub const VISION: Capabilities = Capabilities(2);
    /// Audio input: content parts `input_audio`.
    pub const AUDIO: Capabilities = Capabilities(4);
    /// Structured output: `response_format` of type `json_schema`.
    pub const STRUCTURED_OUTPUT: Capabilities = Capabilities(8);

    const NAMES: [(Capabilities, &'static str); 4] = [
        (Capabilities::TOOLS, "tools"),
        (Capabilities::VISION, "vision"),
        (Capabilities::AUDIO, "audio"),
        (Capabilities::STRUCTURED_OUTPUT, "structured_output"),
    ];

    /// Every capability in `other` is in `self`.
    pub fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }

    /// The capabilities of `self` missing from `other`.
    pub fn missing_from(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 & !other.0)
    }

    /// No capability at all.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Parses a name used in config files and headers: `tools`, `vision`,
    /// `audio`, `structured_output`.
    pub fn from_name(name: &str) -> Option<Capabilities> {
        Self::NAMES.iter().find(|(_, n)| *n == name).map(|(c, _)| *c)
    }
}

impl BitOr for Capabilities {
    type Output = Capabilities;
    fn bitor(self, rhs: Capabilities) -> Capabilities {
        Capabilities(self.0 | rhs.0)
    }
}

impl BitOrAssign for Capabilities {
    fn bitor_assign(&mut self, rhs: Capabilities) {
        self.0 |= rhs.0;
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let mut sep = "";
        for (c, name) in Self::NAMES {
            if self.contains(c) {
                write!(f, "{sep}{name}")?;
                sep = "+";
            }
        }
        Ok(())
    }
}

/// Price of a model in USD per million tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, PartialOrd)]
#[non_exhaustive]
pub struct Price {
    /// Per million prompt tokens.
    pub prompt: f64,
    /// Per million completion tokens.
    pub completion: f64,
}

impl Price {
    /// Free (`:free` models).
    pub const FREE: Price = Price {
        prompt: 0.0,
        completion: 0.0,
    };

    /// A price per million prompt and completion tokens.
    pub fn per_million(prompt: f64, completion: f64) -> Self {
        Price { prompt, completion }
    }

    /// Costs nothing.
    pub fn is_free(self) -> bool {
        self.prompt <= 0.0 && self.completion <= 0.0
    }

    /// Not more expensive than `cap` on either side.
    pub fn within(self, cap: Price) -> bool {
        self.prompt <= cap.prompt && self.completion <= cap.completion
    }
}

/// A cap on what fallbacks may cost. Routes over it are skipped (and
/// reported); a route whose price is not known is skipped too, unless its
/// model id ends in `:free`: nothing is ever billed to a model the cap
/// excludes.
///
/// Set it on a [`Chain`](crate::Chain) with
/// [`Chain::price_guard`](crate::Chain::price_guard), or per request by
/// putting a `PriceGuard` in the request's extensions.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum PriceGuard {
    /// No fallback costs more than the chain's first route. When the first
    /// route is free (`:free`), only free routes are tried.
    NotAbovePrimary,
    /// Only free routes.
    FreeOnly,
    /// No route above this price.
    Max(Price),
}

/// What a request needs from the model that serves it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Needs {
    /// Capabilities the request uses.
    pub capabilities: Capabilities,
    /// Conservative estimate of the prompt's tokens (see [`BYTES_PER_TOKEN`]).
    pub prompt_tokens: u64,
    /// `max_tokens` / `max_completion_tokens`, when set.
    pub max_output_tokens: Option<u64>,
}

impl Needs {
    /// Context the request needs: prompt plus requested output.
    pub fn context_tokens(&self) -> u64 {
        // `max_tokens: 1e20` saturates to u64::MAX on the way in.
        self.prompt_tokens.saturating_add(self.max_output_tokens.unwrap_or(0))
    }
}

/// Why a route was not tried.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum SkipReason {
    /// The route lacks capabilities the request needs.
    Capability {
        /// What it lacks.
        missing: Capabilities,
    },
    /// The route's context window is smaller than the request needs.
    ContextWindow {
        /// Tokens needed (estimated prompt + requested output).
        needed: u64,
        /// The route's window.
        window: u64,
    },
    /// The request asks for more output than the route can produce.
    MaxOutput {
        /// Tokens asked for.
        requested: u64,
        /// The route's limit.
        limit: u64,
    },
    /// An earlier route failed with `context_length_exceeded`, and this
    /// route's window is no larger than that route's.
    NotLargerWindow {
        /// The window of the route that failed.
        failed_window: u64,
    },
    /// The route is over the price cap, or its price is unknown under a cap.
    PriceCap {
        /// The route's price, if known.
        price: Option<Price>,
    },
    /// The route is cooling down after failures (see [`Cooldowns`](crate::health::Cooldowns)).
    Cooling {
        /// Time left before it may be probed.
        remaining: std::time::Duration,
    },
    /// A drill: the primary is skipped on purpose (see [`Drills`](crate::health::Drills)).
    Drill,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Capability { missing } => write!(f, "cannot do {missing}"),
            SkipReason::ContextWindow { needed, window } => {
                write!(f, "context window {window} < ~{needed} tokens needed")
            }
            SkipReason::MaxOutput { requested, limit } => {
                write!(f, "max output {limit} < {requested} tokens requested")
            }
            SkipReason::NotLargerWindow { failed_window } => {
                write!(f, "window not larger than the {failed_window} that overflowed")
            }
            SkipReason::PriceCap { price: Some(p) } => {
                write!(f, "over the price cap (${}/${} per M tokens)", p.prompt, p.completion)
            }
            SkipReason::PriceCap { price: None } => f.write_str("price unknown under a price cap"),
            SkipReason::Cooling { remaining } => write!(f, "cooling down for {}ms more", remaining.as_millis()),
            SkipReason::Drill => f.write_str("drill: primary skipped on purpose"),
        }
    }
}

impl SkipReason {
    /// A short snake_case name for metrics and JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            SkipReason::Capability { .. } => "capability",
            SkipReason::ContextWindow { .. } => "context_window",
            SkipReason::MaxOutput { .. } => "max_output",
            SkipReason::NotLargerWindow { .. } => "not_larger_window",
            SkipReason::PriceCap { .. } => "price_cap",
            SkipReason::Cooling { .. } => "cooling",
            SkipReason::Drill => "drill",
        }
    }
}

/// Reads what the request needs from the indexed body.
pub(crate) fn detect(body: &[u8], index: &RequestIndex) -> Needs {
    let n = &index.needs;
    let mut caps = Capabilities::NONE;
    let non_empty = |span: &Option<(std::ops::Range<usize>, ValueKind)>| {
        span.as_ref().is_some_and(|(r, kind)| match kind {
            ValueKind::Array => body[r.clone()].iter().any(|b| !b" \t\r\n[]".contains(b)),
            ValueKind::Null | ValueKind::False => false,
            _ => true,
        })
    };
    let tool_choice_none = n.tool_choice.as_ref().is_some_and(|r| &body[r.clone()] == b"\"none\"");
    if (non_empty(&n.tools) || non_empty(&n.functions)) && !tool_choice_none {
        caps |= Capabilities::TOOLS;
    }
    if let Some(r) = &n.response_format {
        if serde_json::from_slice::<serde_json::Value>(&body[r.clone()])
            .is_ok_and(|v| v.get("type").and_then(|t| t.as_str()) == Some("json_schema"))
        {
            caps |= Capabilities::STRUCTURED_OUTPUT;
        }
    }
    let media = n.media.unwrap_or_default();
    if media.vision {
        caps |= Capabilities::VISION;
    }
    if media.audio {
        caps |= Capabilities::AUDIO;
    }
    let media_bytes = if media.vision || media.audio { media.bytes } else { 0 };
    let media_parts = media.parts;
    let text_bytes = n
        .messages
        .as_ref()
        .map_or(0, |r| r.len() as u64)
        .saturating_sub(media_bytes)
        + n.tools.as_ref().map_or(0, |(r, _)| r.len() as u64)
        + n.functions.as_ref().map_or(0, |(r, _)| r.len() as u64);
    Needs {
        capabilities: caps,
        prompt_tokens: text_bytes.div_ceil(BYTES_PER_TOKEN) + media_parts * MEDIA_PART_TOKENS,
        max_output_tokens: n
            .max_tokens
            .as_ref()
            .and_then(|r| std::str::from_utf8(&body[r.clone()]).ok()?.parse::<f64>().ok())
            .filter(|v| *v >= 0.0)
            .map(|v| v as u64),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Marker {
    /// `"type": "image_url"`: one content part.
    Type,
    /// `"image_url": ...`: the part's payload follows.
    Key,
    /// The word inside some text: not a part.
    Text,
}

/// A `"image_url"`-like token found by byte search marks a content part when
/// it is a JSON string of its own (its quotes are not escaped) used as an
/// object key or as the value of `"type"`. The same word inside a message's
/// text is escaped or stands alone as some other value, so it does not count.
fn marker(hay: &[u8], at: usize, len: usize) -> Marker {
    let ws = |b: &u8| b" \t\r\n".contains(b);
    if at > 0 && hay[at - 1] == b'\\' {
        return Marker::Text;
    }
    if hay[at + len..].iter().find(|b| !ws(b)) == Some(&b':') {
        return Marker::Key;
    }
    let Some(colon) = hay[..at].iter().rposition(|b| !ws(b)).filter(|&i| hay[i] == b':') else {
        return Marker::Text;
    };
    match hay[..colon].iter().rposition(|b| !ws(b)) {
        Some(e) if e >= 5 && &hay[e - 5..=e] == b"\"type\"" => Marker::Type,
        _ => Marker::Text,
    }
}

/// What the scan of `messages` found: content parts that need vision or
/// audio, and the bytes of inline media (data URLs, base64), which are not
/// prompt text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MediaScan {
    pub(crate) vision: bool,
    pub(crate) audio: bool,
    /// Content parts (`"type": "image_url"`, ...).
    pub(crate) parts: u64,
    /// Bytes of strings that are inline media.
    pub(crate) bytes: u64,
}

impl MediaScan {
    /// Looks at one string of `messages` (`open..end`, quotes included), as
    /// the scanner passes over it: a few comparisons per string.
    pub(crate) fn on_string(&mut self, body: &[u8], open: usize, end: usize) {
        let content = &body[open + 1..end - 1];
        let cap = match content {
            b"image_url" | b"input_image" => Capabilities::VISION,
            b"input_audio" => Capabilities::AUDIO,
            _ => {
                // Inline media: long, and no whitespace where text would have some.
                // Inline media: long, and only data-URL/base64 characters where
                // text would have spaces or punctuation. Counted here, and
                // discounted only if the request has media parts at all.
                let base64ish = |b: &u8| b.is_ascii_alphanumeric() || b"+/=:;,.-_".contains(b);
                if content.len() > 1024 && content[..64].iter().all(base64ish) {
                    self.bytes += content.len() as u64;
                }
                return;
            }
        };
        match marker(body, open, end - open) {
            Marker::Text => return,
            Marker::Type => self.parts += 1,
            Marker::Key => {}
        }
        if cap == Capabilities::VISION {
            self.vision = true;
        } else {
            self.audio = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::index_request_with_media;

    fn needs(body: &str) -> Needs {
        detect(body.as_bytes(), &index_request_with_media(body.as_bytes()).unwrap())
    }

    #[test]
    fn plain_chat_needs_nothing() {
        let n = needs(r#"{"model":"m","messages":[{"role":"user","content":"describe an image_url for me"}]}"#);
        assert_eq!(n.capabilities, Capabilities::NONE);
        assert!(n.prompt_tokens > 0);
        assert_eq!(n.max_output_tokens, None);
    }

    #[test]
    fn tools_and_structured_output() {
        let n = needs(
            r#"{"model":"m","messages":[],"tools":[{"type":"function","function":{"name":"f"}}],"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{}}},"max_tokens":512}"#,
        );
        assert_eq!(n.capabilities, Capabilities::TOOLS | Capabilities::STRUCTURED_OUTPUT);
        assert_eq!(n.max_output_tokens, Some(512));
        assert_eq!(needs(r#"{"model":"m","tools":[]}"#).capabilities, Capabilities::NONE);
        assert_eq!(
            needs(r#"{"model":"m","tools":[{}],"tool_choice":"none"}"#).capabilities,
            Capabilities::NONE
        );
        assert_eq!(
            needs(r#"{"model":"m","response_format":{"type":"json_object"}}"#).capabilities,
            Capabilities::NONE
        );
    }

    #[test]
    fn image_and_audio_parts() {
        let data = "A".repeat(50_000);
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":[{{"type":"text","text":"what is this?"}},{{"type":"image_url","image_url":{{"url":"data:image/png;base64,{data}"}}}}]}}]}}"#
        );
        let n = needs(&body);
        assert_eq!(n.capabilities, Capabilities::VISION);
        assert!(
            n.prompt_tokens < 5_000,
            "image bytes are not prompt text: {}",
            n.prompt_tokens
        );
        let n = needs(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type": "input_audio","input_audio":{"data":"AAAA","format":"wav"}}]}]}"#,
        );
        assert_eq!(n.capabilities, Capabilities::AUDIO);
        let n = needs(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"input_image","image_url":"https://x/y.png"}]}]}"#,
        );
        assert_eq!(n.capabilities, Capabilities::VISION);
    }

    #[test]
    fn the_marker_words_inside_text_do_not_count() {
        for text in [
            r#"{"model":"m","messages":[{"role":"user","content":"\"image_url\": is a key"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"image_url"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"say \"input_audio\""}]}"#,
        ] {
            assert_eq!(needs(text).capabilities, Capabilities::NONE, "{text}");
        }
    }

    #[test]
    fn prompt_estimate_is_conservative() {
        let text = "word ".repeat(4000); // 20,000 bytes, ~4,000 real tokens
        let n = needs(&format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"{text}"}}],"max_completion_tokens":1000}}"#
        ));
        assert!(n.prompt_tokens >= 6_000, "{}", n.prompt_tokens);
        assert_eq!(n.context_tokens(), n.prompt_tokens + 1000);
    }
}
