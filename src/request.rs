//! Reading the caller's request once: the indexed top-level keys and the
//! reasons a body is refused before any attempt.

use crate::json::scan::{self, ScanFail, ValueKind};
use std::ops::Range;

/// What the engine needs from a chat-completions request body.
#[derive(Debug)]
pub(crate) struct RequestIndex {
    /// Span of the `model` value, quotes included.
    pub(crate) model: Range<usize>,
    /// The caller's model, decoded.
    pub(crate) requested_model: String,
    /// `"stream": true`.
    #[allow(dead_code)] // read by the streaming commit point
    pub(crate) stream: bool,
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
const SINGLE_KEYS: &[&str] = &["model", "models", "provider", "stream"];

pub(crate) fn index_request(body: &[u8]) -> Result<RequestIndex, BadRequest> {
    let mut model: Option<(Range<usize>, ValueKind)> = None;
    let mut stream = None;
    let mut seen = [false; SINGLE_KEYS.len()];
    let scanned = scan::scan_object(body, |m| {
        if let Some(i) = SINGLE_KEYS.iter().position(|k| *k == m.key) {
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
            "model" => model = Some((m.value.clone(), m.kind)),
            "stream" => stream = Some(m.kind == ValueKind::True),
            _ => {}
        }
        Ok(())
    });
    match scanned {
        Ok(_) => {}
        Err(ScanFail::Callback(bad)) => return Err(bad),
        Err(ScanFail::Scan(e)) => {
            return Err(BadRequest::new(
                "invalid_json",
                None,
                format!("the request body is not a valid JSON object: {e}"),
            ))
        }
    }
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
    Ok(RequestIndex {
        model: span,
        requested_model,
        stream: stream.unwrap_or(false),
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
            (br#"{"model":"a"} x"#, "invalid_json"),
        ];
        for (body, code) in cases {
            let err = index_request(body).unwrap_err();
            assert_eq!(err.code, *code, "{}", String::from_utf8_lossy(body));
        }
    }
}
