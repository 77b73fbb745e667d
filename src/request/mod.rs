//! Reading the caller's request once: the indexed top-level keys and the
//! reasons a body is refused before any attempt.

use crate::dialect::Dialect;
use crate::json::scan::{self, ScanFail, ValueKind};
use std::ops::Range;

mod needs;

pub(crate) use needs::{detect_needs, MediaScan};

/// What the engine needs from a request body.
#[derive(Debug)]
pub(crate) struct RequestIndex {
    /// The API shape the body was read as.
    pub(crate) dialect: Dialect,
    /// Span of the `model` value, quotes included.
    pub(crate) model: Range<usize>,
    /// The caller's model, decoded.
    pub(crate) requested_model: String,
    /// `"stream": true`.
    pub(crate) stream: bool,
    /// Offset of the object's `{`.
    pub(crate) object_start: usize,
    /// The OpenRouter-only members, when present.
    pub(crate) provider: Option<MemberSpan>,
    pub(crate) models: Option<MemberSpan>,
    pub(crate) route: Option<MemberSpan>,
    pub(crate) transforms: Option<MemberSpan>,
    /// Span of a top-level string `user` value, quotes included (what a
    /// sticky session may be keyed by).
    pub(crate) user: Option<Range<usize>>,
    /// Spans the capability checks read.
    pub(crate) needs: NeedSpans,
}

/// Where the members that say what a request needs sit.
#[derive(Debug, Clone, Default)]
pub(crate) struct NeedSpans {
    pub(crate) messages: Option<Range<usize>>,
    pub(crate) tools: Option<(Range<usize>, ValueKind)>,
    pub(crate) functions: Option<(Range<usize>, ValueKind)>,
    pub(crate) tool_choice: Option<Range<usize>>,
    pub(crate) response_format: Option<Range<usize>>,
    pub(crate) max_tokens: Option<Range<usize>>,
    /// Media parts seen in `messages` (Responses: `input`), when the index
    /// was asked to look.
    pub(crate) media: Option<MediaScan>,
    /// Responses `input`, embeddings `input`, completions `prompt`: the
    /// prompt's bytes beside (or instead of) `messages`.
    pub(crate) input: Option<Range<usize>>,
    /// Responses `instructions`, Messages `system`.
    pub(crate) system: Option<Range<usize>>,
    /// Responses `text` (its `format`).
    pub(crate) text: Option<Range<usize>>,
    /// Messages `thinking`.
    pub(crate) thinking: Option<(Range<usize>, ValueKind)>,
    /// Responses `previous_response_id` or `conversation` is set.
    pub(crate) stateful: bool,
}

/// Where a top-level member sits among its neighbours, so it can be
/// replaced or cut out without leaving a stray comma.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct MemberSpan {
    /// Position among the object's members, from 0.
    ordinal: usize,
    key_start: usize,
    pub(crate) value_start: usize,
    pub(crate) value_end: usize,
    /// End of the previous member's value.
    prev_value_end: Option<usize>,
    /// Start of the next member's key.
    next_key_start: Option<usize>,
}

/// Byte ranges that remove `members` (sorted by position) from the object.
///
/// A run of adjacent members goes with the comma before it, or — for a run
/// at the start of the object — with the comma after it, so what stays is
/// valid JSON. Runs never overlap.
pub(crate) fn removals(members: &[MemberSpan]) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let first = *members.get(i)?;
        let mut last = first;
        i += 1;
        while let Some(next) = members.get(i).filter(|m| m.ordinal == last.ordinal + 1) {
            last = *next;
            i += 1;
        }
        Some(match (first.prev_value_end, last.next_key_start) {
            (Some(prev_end), _) => prev_end..last.value_end,
            (None, Some(next_key)) => first.key_start..next_key,
            (None, None) => first.key_start..last.value_end,
        })
    })
}

/// A request refused before any attempt, as an OpenAI-style error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadRequest {
    pub(crate) code: &'static str,
    pub(crate) param: Option<&'static str>,
    pub(crate) message: String,
}

impl BadRequest {
    fn new(code: &'static str, param: Option<&'static str>, message: impl Into<String>) -> Self {
        BadRequest {
            code,
            param,
            message: message.into(),
        }
    }
}

/// Keys whose duplicates are refused: the engine reads or rewrites them, and
/// with two copies it cannot know which one the upstream would honour.
const SINGLE_KEYS: &[&str] = &["model", "models", "provider", "stream", "route", "transforms"];

/// OpenRouter-only keys the engine may rewrite or remove.
const OPENROUTER_KEYS: [&str; 4] = ["provider", "models", "route", "transforms"];

pub(crate) fn index_request(body: &[u8]) -> Result<RequestIndex, BadRequest> {
    index(body, false, Dialect::Chat)
}

/// [`index_request`], also reading the media parts of `messages` in the same
/// pass (for the capability checks).
pub(crate) fn index_request_with_media(body: &[u8]) -> Result<RequestIndex, BadRequest> {
    index(body, true, Dialect::Chat)
}

/// Indexes a request body of `dialect` (its own keys for needs).
pub(crate) fn index_dialect(body: &[u8], media: bool, dialect: Dialect) -> Result<RequestIndex, BadRequest> {
    index(body, media, dialect)
}

/// The member whose strings the media scan reads.
fn media_key(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Responses => "input",
        _ => "messages",
    }
}

/// Records the members of `dialect` (other than chat's) that say what a
/// request needs.
fn dialect_member(dialect: Dialect, m: &scan::Member<'_>, needs: &mut NeedSpans) {
    let number = m.kind == ValueKind::Number;
    let set = !matches!(m.kind, ValueKind::Null);
    match (dialect, &*m.key) {
        (Dialect::Responses, b"input") | (Dialect::Embeddings, b"input") | (Dialect::Completions, b"prompt") => {
            needs.input = Some(m.value.clone())
        }
        (Dialect::Responses, b"instructions") | (Dialect::Messages, b"system") => needs.system = Some(m.value.clone()),
        (Dialect::Responses, b"text") => needs.text = Some(m.value.clone()),
        (Dialect::Responses, b"max_output_tokens") | (Dialect::Messages | Dialect::Completions, b"max_tokens")
            if number =>
        {
            needs.max_tokens = Some(m.value.clone())
        }
        (Dialect::Responses, b"previous_response_id" | b"conversation") if set => needs.stateful = true,
        (Dialect::Messages, b"messages") => needs.messages = Some(m.value.clone()),
        (Dialect::Messages, b"thinking") => needs.thinking = Some((m.value.clone(), m.kind)),
        _ => {}
    }
}

fn index(body: &[u8], media: bool, dialect: Dialect) -> Result<RequestIndex, BadRequest> {
    let mut model: Option<(Range<usize>, ValueKind)> = None;
    let mut stream = None;
    let mut seen = [false; SINGLE_KEYS.len()];
    let mut openrouter: [Option<MemberSpan>; 4] = [None; 4];
    let mut ordinal = 0usize;
    let mut prev_value_end = None;
    let mut last_recorded: Option<usize> = None;
    let mut needs = NeedSpans::default();
    let mut user = None;
    let mut media_scan = MediaScan::for_dialect(dialect);
    let mut on_string = |open: usize, end: usize| media_scan.on_string(body, open, end);
    let watch = match media {
        true => scan::Watch::Strings(media_key(dialect), &mut on_string),
        false => scan::Watch::Nothing,
    };
    let scanned = scan::scan_object_watching(body, watch, |m| {
        if let Some(k) = last_recorded.take() {
            if let Some(span) = openrouter[k].as_mut() {
                span.next_key_start = Some(m.key_span.start);
            }
        }
        if let Some(k) = OPENROUTER_KEYS.iter().position(|k| k.as_bytes() == &*m.key) {
            openrouter[k] = Some(MemberSpan {
                ordinal,
                key_start: m.key_span.start,
                value_start: m.value.start,
                value_end: m.value.end,
                prev_value_end,
                next_key_start: None,
            });
            last_recorded = Some(k);
        }
        ordinal += 1;
        prev_value_end = Some(m.value.end);
        if let Some(i) = SINGLE_KEYS.iter().position(|k| k.as_bytes() == &*m.key) {
            if std::mem::replace(&mut seen[i], true) {
                return Err(BadRequest::new(
                    "duplicate_key",
                    Some(SINGLE_KEYS[i]),
                    format!(
                        "the request body has more than one top-level {:?} key; refusing to guess which one the upstream would use",
                        SINGLE_KEYS[i]
                    ),
                ));
            }
        }
        match &*m.key {
            b"model" => model = Some((m.value.clone(), m.kind)),
            b"stream" => stream = Some(m.kind == ValueKind::True),
            b"tools" => needs.tools = Some((m.value.clone(), m.kind)),
            b"tool_choice" => needs.tool_choice = Some(m.value.clone()),
            b"user" if m.kind == ValueKind::String => user = Some(m.value.clone()),
            _ if dialect != Dialect::Chat => dialect_member(dialect, &m, &mut needs),
            b"messages" => needs.messages = Some(m.value.clone()),
            b"functions" => needs.functions = Some((m.value.clone(), m.kind)),
            b"response_format" => needs.response_format = Some(m.value.clone()),
            b"max_tokens" | b"max_completion_tokens" if m.kind == ValueKind::Number => {
                needs.max_tokens = Some(m.value.clone())
            }
            _ => {}
        }
        Ok(())
    });
    let object_start = match scanned {
        Ok(span) => span.start,
        Err(ScanFail::Callback(bad)) => return Err(bad),
        Err(ScanFail::Scan(e)) => {
            return Err(BadRequest::new(
                "invalid_json",
                None,
                format!("the request body is not a valid JSON object: {e}"),
            ))
        }
    };
    let Some((span, kind)) = model else {
        return Err(BadRequest::new(
            "missing_model",
            Some("model"),
            "the request body has no top-level \"model\" field",
        ));
    };
    if kind != ValueKind::String {
        return Err(BadRequest::new(
            "invalid_model",
            Some("model"),
            format!(
                "the top-level \"model\" field must be a string, found {}",
                kind_name(kind)
            ),
        ));
    }
    let requested_model = scan::decode_string(&body[span.clone()])
        .map_err(|e| {
            BadRequest::new(
                "invalid_json",
                Some("model"),
                format!("the \"model\" string is invalid: {e}"),
            )
        })?
        .into_owned();
    let [provider, models, route, transforms] = openrouter;
    needs.media = media.then_some(media_scan);
    Ok(RequestIndex {
        dialect,
        model: span,
        requested_model,
        stream: stream.unwrap_or(false),
        object_start,
        provider,
        models,
        route,
        transforms,
        user,
        needs,
    })
}

fn kind_name(kind: ValueKind) -> &'static str {
    match kind {
        ValueKind::String => "a string",
        ValueKind::Number => "a number",
        ValueKind::Object => "an object",
        ValueKind::Array => "an array",
        ValueKind::True | ValueKind::False => "a boolean",
        ValueKind::Null => "null",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_model() {
        let body = br#"{"messages":[{"role":"user","content":"model"}],"model":"a/b","stream":true}"#;
        let idx = index_request(body).unwrap();
        assert_eq!(&body[idx.model.clone()], br#""a/b""#);
        assert_eq!(idx.requested_model, "a/b");
        assert!(idx.stream);
    }

    fn strip(body: &str, keys: &[&str]) -> String {
        let idx = index_request(body.as_bytes()).unwrap();
        let mut spans: Vec<MemberSpan> = [idx.provider, idx.models, idx.route, idx.transforms]
            .into_iter()
            .zip(OPENROUTER_KEYS)
            .filter(|(_, k)| keys.contains(k))
            .filter_map(|(s, _)| s)
            .collect();
        spans.sort_by_key(|s| s.ordinal);
        let mut out = body.to_owned();
        for r in removals(&spans).collect::<Vec<_>>().into_iter().rev() {
            out.replace_range(r, "");
        }
        out
    }

    #[test]
    fn finds_a_top_level_string_user_only() {
        let body = br#"{"model":"a","messages":[{"user":"x"}],"user":"u-1"}"#;
        let idx = index_request(body).unwrap();
        assert_eq!(&body[idx.user.clone().unwrap()], br#""u-1""#);
        for body in [
            &br#"{"model":"a","user":7}"#[..],
            br#"{"model":"a","messages":[{"user":"x"}]}"#,
        ] {
            assert_eq!(index_request(body).unwrap().user, None);
        }
    }

    #[test]
    fn openrouter_members_are_cut_out_cleanly() {
        let all = ["provider", "models", "route", "transforms"];
        let cases = [
            (
                r#"{"model":"a","provider":{"order":["x"]},"n":1}"#,
                r#"{"model":"a","n":1}"#,
            ),
            (r#"{"provider":{},"model":"a"}"#, r#"{"model":"a"}"#),
            (r#"{"provider":{},"models":["b"],"model":"a"}"#, r#"{"model":"a"}"#),
            (r#"{"model":"a","provider":{},"models":["b"]}"#, r#"{"model":"a"}"#),
            (
                r#"{"route":"fallback","model":"a","provider":{},"x":[],"models":[]}"#,
                r#"{"model":"a","x":[]}"#,
            ),
            (
                "{ \"provider\" : {} ,\n \"model\": \"a\" , \"transforms\": [\"middle-out\"] }",
                "{ \"model\": \"a\" }",
            ),
        ];
        for (input, expected) in cases {
            let out = strip(input, &all);
            assert_eq!(out, expected, "{input}");
            serde_json::from_str::<serde_json::Value>(&out).unwrap();
        }
        assert_eq!(
            strip(r#"{"model":"a","models":["b"]}"#, &["provider"]),
            r#"{"model":"a","models":["b"]}"#
        );
    }

    #[test]
    fn refuses_what_it_cannot_rewrite_safely() {
        let cases: &[(&[u8], &str)] = &[
            (b"[1,2]", "invalid_json"),
            (b"", "invalid_json"),
            (br#"{"model":"a""#, "invalid_json"),
            (br#"{"messages":[]}"#, "missing_model"),
            (br#"{"model":42}"#, "invalid_model"),
            (br#"{"model":null}"#, "invalid_model"),
            (br#"{"model":"a","model":"b"}"#, "duplicate_key"),
            (br#"{"model":"a","mod\u0065l":"b"}"#, "duplicate_key"),
            (br#"{"model":"a","stream":true,"stream":false}"#, "duplicate_key"),
            (br#"{"model":"a","route":"fallback","route":"x"}"#, "duplicate_key"),
            (
                br#"{"transforms":[],"model":"a","transforms":["middle-out"]}"#,
                "duplicate_key",
            ),
            (br#"{"model":"a","transforms":[],"transforms":[]}"#, "duplicate_key"),
            (br#"{"model":"a"} x"#, "invalid_json"),
        ];
        for (body, code) in cases {
            let err = index_request(body).unwrap_err();
            assert_eq!(err.code, *code, "{}", String::from_utf8_lossy(body));
        }
    }
}
