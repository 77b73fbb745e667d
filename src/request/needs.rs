//! What a request needs (tools, images, audio, files, structured output,
//! thinking, a prompt estimate), read from the index the scanner built in
//! its one pass, by the members of the request's dialect.

use super::RequestIndex;
use crate::capability::{Capabilities, Needs, BYTES_PER_TOKEN, MEDIA_PART_TOKENS};
use crate::dialect::Dialect;
use crate::json::scan::ValueKind;
use crate::json::within;

/// `type` of the JSON object at `span`, when it is a small one that parses.
fn object_type(body: &[u8], span: &std::ops::Range<usize>) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body.get(span.clone())?).ok()?;
    v.get("type")?.as_str().map(str::to_owned)
}

/// Reads what the request needs from the indexed body.
pub(crate) fn detect_needs(body: &[u8], index: &RequestIndex) -> Needs {
    let n = &index.needs;
    let dialect = index.dialect;
    let mut caps = Capabilities::NONE;
    // The index's spans are the body's own.
    let at = |r: &std::ops::Range<usize>| within(body, r.clone());
    let non_empty = |span: &Option<(std::ops::Range<usize>, ValueKind)>| {
        span.as_ref().is_some_and(|(r, kind)| match kind {
            ValueKind::Array => at(r).iter().any(|b| !b" \t\r\n[]".contains(b)),
            ValueKind::Null | ValueKind::False => false,
            _ => true,
        })
    };
    let tool_choice_none = n.tool_choice.as_ref().is_some_and(|r| {
        at(r) == b"\"none\""
            // Anthropic's `{"type": "none"}`.
            || (dialect == Dialect::Messages && object_type(body, r).as_deref() == Some("none"))
    });
    if (non_empty(&n.tools) || non_empty(&n.functions)) && !tool_choice_none {
        caps |= Capabilities::TOOLS;
    }
    if let Some(r) = &n.response_format {
        if serde_json::from_slice::<serde_json::Value>(at(r))
            .is_ok_and(|v| v.get("type").and_then(|t| t.as_str()) == Some("json_schema"))
        {
            caps |= Capabilities::STRUCTURED_OUTPUT;
        }
    }
    // Responses: `text.format.type == "json_schema"`.
    if let Some(r) = n.text.as_ref().filter(|_| dialect == Dialect::Responses) {
        if serde_json::from_slice::<serde_json::Value>(at(r))
            .is_ok_and(|v| v.get("format").and_then(|f| f.get("type")).and_then(|t| t.as_str()) == Some("json_schema"))
        {
            caps |= Capabilities::STRUCTURED_OUTPUT;
        }
    }
    // Messages: `thinking` of any type but `disabled`.
    if let Some((r, kind)) = &n.thinking {
        if *kind == ValueKind::Object && object_type(body, r).is_some_and(|t| t != "disabled") {
            caps |= Capabilities::THINKING;
        }
    }
    let media = n.media.unwrap_or_default();
    if media.vision {
        caps |= Capabilities::VISION;
    }
    if media.audio {
        caps |= Capabilities::AUDIO;
    }
    if media.files {
        caps |= Capabilities::FILES;
    }
    let media_bytes = if media.vision || media.audio || media.files {
        media.bytes
    } else {
        0
    };
    let media_parts = media.parts;
    let len = |r: &Option<std::ops::Range<usize>>| r.as_ref().map_or(0, |r| r.len() as u64);
    let text_bytes = (len(&n.messages) + len(&n.input) + len(&n.system)).saturating_sub(media_bytes)
        + n.tools.as_ref().map_or(0, |(r, _)| r.len() as u64)
        + n.functions.as_ref().map_or(0, |(r, _)| r.len() as u64);
    Needs {
        dialect,
        stateful: n.stateful,
        capabilities: caps,
        prompt_tokens: text_bytes.div_ceil(BYTES_PER_TOKEN) + media_parts * MEDIA_PART_TOKENS,
        max_output_tokens: n
            .max_tokens
            .as_ref()
            .and_then(|r| std::str::from_utf8(at(r)).ok()?.parse::<f64>().ok())
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
    let (Some(before), Some(after)) = (hay.get(..at), hay.get(at + len..)) else {
        return Marker::Text;
    };
    if before.last() == Some(&b'\\') {
        return Marker::Text;
    }
    if after.iter().find(|b| !ws(b)) == Some(&b':') {
        return Marker::Key;
    }
    let Some(colon) = before
        .iter()
        .rposition(|b| !ws(b))
        .filter(|&i| before.get(i) == Some(&b':'))
    else {
        return Marker::Text;
    };
    let key = within(before, ..colon);
    match key.iter().rposition(|b| !ws(b)).and_then(|e| key.get(..=e)) {
        Some(key) if key.ends_with(b"\"type\"") => Marker::Type,
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
    /// Document input: Responses `input_file`, Messages `document` blocks.
    pub(crate) files: bool,
    /// Messages blocks (`"type": "image"`, `"document"`) are read too.
    pub(crate) anthropic: bool,
    /// Content parts (`"type": "image_url"`, ...).
    pub(crate) parts: u64,
    /// Bytes of strings that are inline media.
    pub(crate) bytes: u64,
}

impl MediaScan {
    /// A scan of the media parts of `dialect`'s requests.
    pub(crate) fn for_dialect(dialect: Dialect) -> Self {
        MediaScan {
            anthropic: dialect == Dialect::Messages,
            ..MediaScan::default()
        }
    }

    /// Looks at one string of `messages` (`open..end`, quotes included), as
    /// the scanner passes over it: a few comparisons per string.
    pub(crate) fn on_string(&mut self, body: &[u8], open: usize, end: usize) {
        let content = within(body, open + 1..end.saturating_sub(1));
        let cap = match content {
            b"image_url" | b"input_image" => Capabilities::VISION,
            b"input_audio" => Capabilities::AUDIO,
            b"input_file" => Capabilities::FILES,
            b"image" if self.anthropic => Capabilities::VISION,
            b"document" if self.anthropic => Capabilities::FILES,
            _ => {
                // Inline media: long, and no whitespace where text would have some.
                // Inline media: long, and only data-URL/base64 characters where
                // text would have spaces or punctuation. Counted here, and
                // discounted only if the request has media parts at all.
                let base64ish = |b: &u8| b.is_ascii_alphanumeric() || b"+/=:;,.-_".contains(b);
                if content.len() > 1024 && content.iter().take(64).all(base64ish) {
                    self.bytes += content.len() as u64;
                }
                return;
            }
        };
        match marker(body, open, end - open) {
            Marker::Text => return,
            Marker::Type => self.parts += 1,
            // Anthropic's words are block types only, never keys.
            Marker::Key if matches!(content, b"image" | b"document") => return,
            Marker::Key => {}
        }
        if cap == Capabilities::VISION {
            self.vision = true;
        } else if cap == Capabilities::AUDIO {
            self.audio = true;
        } else {
            self.files = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::index_request_with_media;
    use crate::{Capabilities, Needs};

    fn needs(body: &str) -> Needs {
        detect_needs(body.as_bytes(), &index_request_with_media(body.as_bytes()).unwrap())
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
