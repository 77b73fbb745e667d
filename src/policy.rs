//! Deciding, per attempt, whether to accept, fall back or stop.
//!
//! The engine observes each attempt (a response, a transport error or a
//! timeout) and asks a [`Policy`] what to do. [`DefaultPolicy`] follows the
//! table in the crate docs; a closure can be a policy, and can delegate to the
//! default for the cases it does not care about.

use crate::inspect::BodyFacts;
use crate::report::UpstreamError;
use crate::Attempt;
use http::{HeaderMap, StatusCode};
use std::time::Duration;

/// What to do with an observed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Return this response to the caller as the answer.
    Accept,
    /// Try the next route (if any is left and the deadline allows).
    Fallback,
    /// End the chain now and give the caller this response (or error) as-is:
    /// falling back cannot help and would hide the problem (a bad key, no
    /// credits, a malformed request).
    Stop,
}

/// What an attempt produced, as shown to a [`Policy`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Observed<'a> {
    /// The upstream answered.
    Response(&'a ResponseInfo<'a>),
    /// The inner service failed (connect error, reset, unreadable body).
    Error(&'a (dyn std::error::Error + Send + Sync + 'static)),
    /// The attempt ran out of time (route timeout or chain deadline).
    Timeout,
}

/// An upstream response as the policy sees it: status, headers, and what the
/// engine read from the body.
///
/// Non-streaming bodies are buffered (up to the layer's
/// `max_response_bytes`) and inspected before the policy is asked, so an HTTP
/// 200 that carries an error is visible here. `text/event-stream` bodies are
/// not read: [`ResponseInfo::inspected`] is `false` for them.
#[derive(Debug)]
pub struct ResponseInfo<'a> {
    pub(crate) status: StatusCode,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) body: Option<&'a [u8]>,
    pub(crate) facts: &'a BodyFacts,
}

impl<'a> ResponseInfo<'a> {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The response headers.
    pub fn headers(&self) -> &HeaderMap {
        self.headers
    }

    /// The whole body, when it was buffered.
    pub fn body(&self) -> Option<&[u8]> {
        self.body
    }

    /// The body was buffered and inspected (false for event streams and for
    /// bodies larger than `max_response_bytes`).
    pub fn inspected(&self) -> bool {
        self.body.is_some()
    }

    /// The body is a JSON object.
    pub fn is_json(&self) -> bool {
        self.facts.json
    }

    /// The response is a server-sent event stream.
    pub fn is_event_stream(&self) -> bool {
        is_event_stream(self.headers)
    }

    /// The error the body describes: a top-level `error` object, or the
    /// `error` of a choice that finished with `finish_reason: "error"`.
    pub fn error(&self) -> Option<&UpstreamError> {
        self.facts.error.as_ref()
    }

    /// The body is an answer of its API shape: for chat and legacy
    /// completions a non-empty `choices` array; for the Responses API a
    /// `response` whose `status` is good and whose `error` is null; for
    /// Anthropic Messages a `message` with `content`; for embeddings a
    /// non-empty `data` array. (The name is chat's, the first shape.)
    pub fn has_choices(&self) -> bool {
        self.facts.choices.is_some_and(|n| n > 0)
    }

    /// Some choice finished with `finish_reason: "error"`.
    pub fn finish_reason_error(&self) -> bool {
        self.facts.finish_error
    }

    /// The body's top-level `model`: the model that actually served.
    pub fn served_model(&self) -> Option<&str> {
        self.facts.model.as_deref()
    }

    /// How long the upstream asks to wait, on an answer that is not a
    /// success: `retry-after-ms` (milliseconds, what OpenAI and Azure OpenAI
    /// send beside it), else `Retry-After` in seconds (whole or fractional)
    /// or as an HTTP date (the time left until then; a date already past is
    /// zero). `None` for a `2xx` (its headers are not looked up), without
    /// either header, or when the value is not one of those (or too large
    /// for a [`Duration`]).
    pub fn retry_after(&self) -> Option<Duration> {
        match self.status.is_success() {
            true => None,
            false => retry_after(self.headers),
        }
    }
}

pub(crate) fn is_event_stream(headers: &HeaderMap) -> bool {
    const EVENT_STREAM: &[u8] = b"text/event-stream";
    headers.get(http::header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes().trim_ascii_start();
        v.get(..EVENT_STREAM.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(EVENT_STREAM))
    })
}

/// OpenAI's and Azure OpenAI's wait in milliseconds, sent beside `Retry-After`.
const RETRY_AFTER_MS: http::HeaderName = http::HeaderName::from_static("retry-after-ms");

/// See [`ResponseInfo::retry_after`].
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = |name| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = value(RETRY_AFTER_MS).and_then(|v| v.parse::<f64>().ok()) {
        if let Ok(d) = Duration::try_from_secs_f64(ms / 1000.0) {
            return Some(d);
        }
    }
    let v = value(http::header::RETRY_AFTER)?;
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // Some providers send fractional seconds. A value too large for a
    // `Duration` (`2e19`), negative or not a number is ignored, not a panic.
    if let Ok(secs) = v.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).ok();
    }
    // An HTTP date (RFC 9110, section 10.2.3).
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(std::time::SystemTime::now()).unwrap_or_default())
}

/// Decides what each attempt's outcome means for the chain.
///
/// Implemented by [`DefaultPolicy`] and by any
/// `Fn(&Attempt, &Observed<'_>) -> Action + Send + Sync + 'static`. The
/// policy is shared by every clone of the service (it sits behind an `Arc`).
///
/// # Example
///
/// Treat `413` as a reason to try a model with a larger limit, keep the
/// default for the rest:
///
/// ```
/// use llm_fallback::policy::{Action, DefaultPolicy, Observed, Policy};
/// use llm_fallback::{Attempt, Chain, FallbackLayer, Route};
///
/// let policy = |attempt: &Attempt, observed: &Observed<'_>| match observed {
///     Observed::Response(r) if r.status() == http::StatusCode::PAYLOAD_TOO_LARGE => Action::Fallback,
///     other => DefaultPolicy.classify(attempt, other),
/// };
/// let layer = FallbackLayer::builder(Chain::new([Route::new("a/b"), Route::new("c/d")]))
///     .with_policy(policy)
///     .layer();
/// # let _ = layer;
/// ```
pub trait Policy: Send + Sync + 'static {
    /// Classifies one attempt.
    fn classify(&self, attempt: &Attempt, observed: &Observed<'_>) -> Action;
}

impl<F> Policy for F
where
    F: Fn(&Attempt, &Observed<'_>) -> Action + Send + Sync + 'static,
{
    fn classify(&self, attempt: &Attempt, observed: &Observed<'_>) -> Action {
        self(attempt, observed)
    }
}

/// The classification described in the crate docs.
///
/// | observed | action |
/// |---|---|
/// | transport error, timeout | fall back |
/// | 408, 429, 500, 502, 503, 504, 524, 529, any other 5xx | fall back |
/// | 400 or 404 naming the model (unknown model, no endpoints, context length) | fall back |
/// | 403 moderation (`content_policy_violation`, moderation metadata) | fall back |
/// | 2xx JSON with an `error` object, no answer of its shape (chat: no `choices`; see [`ResponseInfo::has_choices`]), or `finish_reason: "error"` | fall back |
/// | 2xx body that is not JSON | fall back |
/// | 2xx JSON completion, 2xx `text/event-stream` | accept |
/// | 401, 402, other 400/403/404, any other status | stop (returned as-is) |
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultPolicy;

impl Policy for DefaultPolicy {
    fn classify(&self, _attempt: &Attempt, observed: &Observed<'_>) -> Action {
        match observed {
            Observed::Error(_) | Observed::Timeout => Action::Fallback,
            Observed::Response(r) => classify_response(r),
        }
    }
}

fn classify_response(r: &ResponseInfo<'_>) -> Action {
    let status = r.status();
    if status.is_success() {
        if !r.inspected() {
            // An event stream (decided on its status) or a body too large to
            // buffer: nothing more to see.
            return Action::Accept;
        }
        let bad = !r.is_json() || r.error().is_some() || !r.has_choices() || r.finish_reason_error();
        return if bad { Action::Fallback } else { Action::Accept };
    }
    let code = status.as_u16();
    STATUS_RULES
        .iter()
        .find(|rule| rule.from <= code && code <= rule.to && rule.when.holds(r.error()))
        .map_or(Action::Stop, |rule| rule.action)
}

// ===== the default rules, as data =====

/// One line of [`STATUS_RULES`]: statuses `from..=to`, when the body's error
/// says so, get `action`.
struct StatusRule {
    from: u16,
    to: u16,
    when: When,
    action: Action,
}

/// What the body's error must say for a [`StatusRule`] to apply.
#[derive(Clone, Copy)]
enum When {
    Always,
    /// It blames the model (unknown model, no endpoints, context length).
    NamesModel,
    /// It is a moderation or content-policy block.
    Moderation,
}

impl When {
    fn holds(self, e: Option<&UpstreamError>) -> bool {
        match self {
            When::Always => true,
            When::NamesModel => e.is_some_and(names_model),
            When::Moderation => is_content_block(StatusCode::FORBIDDEN, e),
        }
    }
}

/// How [`DefaultPolicy`] reads a status that is not 2xx: the first rule
/// that matches decides; a status no rule matches stops (the caller's
/// fault, or one falling back cannot fix).
const STATUS_RULES: &[StatusRule] = &[
    // A bad key or no credits: the same everywhere.
    StatusRule {
        from: 401,
        to: 402,
        when: When::Always,
        action: Action::Stop,
    },
    StatusRule {
        from: 408,
        to: 408,
        when: When::Always,
        action: Action::Fallback,
    },
    StatusRule {
        from: 429,
        to: 429,
        when: When::Always,
        action: Action::Fallback,
    },
    StatusRule {
        from: 400,
        to: 400,
        when: When::NamesModel,
        action: Action::Fallback,
    },
    StatusRule {
        from: 404,
        to: 404,
        when: When::NamesModel,
        action: Action::Fallback,
    },
    StatusRule {
        from: 403,
        to: 403,
        when: When::Moderation,
        action: Action::Fallback,
    },
    // 500, 502, 503, 504, 524 (Cloudflare timeout), 529 (overloaded), any 5xx.
    StatusRule {
        from: 500,
        to: 599,
        when: When::Always,
        action: Action::Fallback,
    },
];

/// Error types that blame the model, not the request.
const MODEL_ERROR_TYPES: &[&str] = &[
    "context_length_exceeded",
    "model_not_found",
    "invalid_model",
    "model_not_available",
    "no_endpoints",
];

/// Message fragments (lowercase) that blame the model. OpenRouter says
/// "X is not a valid model ID" and "No endpoints found for X"; OpenAI says
/// "The model `X` does not exist".
const MODEL_PHRASES: &[&str] = &[
    "not a valid model",
    "invalid model",
    "model not found",
    "unknown model",
    "no endpoints found",
    "no allowed providers",
    "model_not_found",
];

/// Fragments (lowercase) saying the prompt did not fit the context window
/// (OpenAI: "maximum context length is N tokens").
pub(crate) const CONTEXT_LENGTH_PHRASES: &[&str] =
    &["context length", "context_length", "context window", "maximum context"];

/// Fragments (lowercase) of a moderation or content-policy block.
pub(crate) const MODERATION_PHRASES: &[&str] = &["moderation", "flagged", "content policy"];

/// Some of `texts` contains one of `phrases` (lowercase ASCII), ASCII case
/// ignored: what `text.to_ascii_lowercase().contains(phrase)` says, without
/// a lowercase copy of each text or a searcher built for each phrase (every
/// failed attempt's error is read for several phrase lists).
pub(crate) fn mentions<'a>(texts: impl IntoIterator<Item = Option<&'a str>>, phrases: &[&str]) -> bool {
    texts
        .into_iter()
        .flatten()
        .any(|t| phrases.iter().any(|p| contains_folded(t.as_bytes(), p.as_bytes())))
}

/// `hay` contains `needle` (lowercase ASCII) with ASCII case ignored. A
/// match starts at an ASCII byte, so it never starts inside a multi-byte
/// character; the bytes past ASCII compare as they are.
fn contains_folded(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    let mut from = 0;
    while let Some(found) = hay
        .get(from..)
        .and_then(|h| memchr::memchr2(first, first.to_ascii_uppercase(), h))
    {
        let at = from + found;
        if hay
            .get(at + 1..at + needle.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(rest))
        {
            return true;
        }
        from = at + 1;
    }
    false
}

/// A moderation or content-policy block: the error says so by type or
/// metadata, or a `403` says it was moderated or flagged. What moves a
/// request to the content-policy chain.
pub(crate) fn is_content_block(status: StatusCode, e: Option<&UpstreamError>) -> bool {
    e.is_some_and(|e| {
        e.is_moderation() || (status == StatusCode::FORBIDDEN && mentions([e.message()], MODERATION_PHRASES))
    })
}

fn names_model(e: &UpstreamError) -> bool {
    if e.error_type().is_some_and(|t| MODEL_ERROR_TYPES.contains(&t)) || e.is_context_length() {
        return true;
    }
    let texts = [e.message(), e.raw()];
    mentions(texts, MODEL_PHRASES)
        || texts
            .into_iter()
            .flatten()
            .any(|t| contains_folded(t.as_bytes(), b"model") && contains_folded(t.as_bytes(), b"does not exist"))
}

#[cfg(test)]
mod tests {
    use super::retry_after;
    use super::{contains_folded, CONTEXT_LENGTH_PHRASES, MODEL_PHRASES, MODERATION_PHRASES};

    #[test]
    fn phrases_are_found_as_a_lowercase_copy_finds_them() {
        for (hay, needle, want) in [
            ("Maximum Context Length is 8192", "maximum context", true),
            ("CONTEXT_LENGTH_EXCEEDED", "context_length", true),
            ("context lengt", "context length", false),
            ("", "flagged", false),
            ("x", "", true),
            ("ÄFLAGGED", "flagged", true),
            ("flaggéd", "flagged", false),
            ("mmmodel", "model", true),
        ] {
            assert_eq!(
                contains_folded(hay.as_bytes(), needle.as_bytes()),
                want,
                "{hay:?} / {needle:?}"
            );
            assert_eq!(hay.to_ascii_lowercase().contains(needle), want, "{hay:?} / {needle:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn folded_search_agrees_with_a_lowercase_copy(hay in "(?s).{0,40}", pick in 0usize..64, len in 0usize..6) {
            // Needles from the phrase lists, and lowercase slices of the text itself.
            let lower = hay.to_ascii_lowercase();
            let from_text = lower.is_ascii().then(|| {
                let start = pick % (lower.len() + 1);
                lower[start..(start + len).min(lower.len())].to_owned()
            });
            let phrases = MODEL_PHRASES.iter().chain(CONTEXT_LENGTH_PHRASES).chain(MODERATION_PHRASES);
            for needle in phrases.map(|p| p.to_string()).chain(from_text) {
                proptest::prop_assert_eq!(contains_folded(hay.as_bytes(), needle.as_bytes()), lower.contains(&needle));
            }
        }
    }
    use http::HeaderMap;
    use std::time::{Duration, SystemTime};

    fn wait(headers: &[(&'static str, &str)]) -> Option<Duration> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, value.parse().unwrap());
        }
        retry_after(&map)
    }

    #[test]
    fn seconds_whole_or_fractional() {
        assert_eq!(wait(&[("retry-after", "7")]), Some(Duration::from_secs(7)));
        assert_eq!(wait(&[("retry-after", " 0 ")]), Some(Duration::ZERO));
        assert_eq!(wait(&[("retry-after", "1.5")]), Some(Duration::from_millis(1500)));
        assert_eq!(wait(&[]), None);
        for bad in ["-3", "soon", "2e19", "NaN", ""] {
            assert_eq!(wait(&[("retry-after", bad)]), None, "{bad:?}");
        }
    }

    #[test]
    fn only_an_answer_that_is_not_a_success_asks_to_wait() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "7".parse().unwrap());
        let facts = crate::inspect::BodyFacts::default();
        let info = |status: u16| super::ResponseInfo {
            status: http::StatusCode::from_u16(status).unwrap(),
            headers: &headers,
            body: None,
            facts: &facts,
        };
        assert_eq!(info(429).retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(info(503).retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(info(200).retry_after(), None);
    }

    #[test]
    fn milliseconds_come_first() {
        let both = [("retry-after-ms", "250"), ("retry-after", "7")];
        assert_eq!(wait(&both), Some(Duration::from_millis(250)));
        assert_eq!(wait(&[("retry-after-ms", "1.5")]), Some(Duration::from_micros(1500)));
        // A bad millisecond value leaves the seconds.
        let bad = [("retry-after-ms", "later"), ("retry-after", "7")];
        assert_eq!(wait(&bad), Some(Duration::from_secs(7)));
    }

    #[test]
    fn an_http_date_is_the_time_left_until_it() {
        let at = SystemTime::now() + Duration::from_secs(120);
        let left = wait(&[("retry-after", &httpdate::fmt_http_date(at))]).unwrap();
        // The date has whole seconds, and a moment passed since `now`.
        assert!(
            left > Duration::from_secs(115) && left <= Duration::from_secs(120),
            "{left:?}"
        );
        assert_eq!(
            wait(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]),
            Some(Duration::ZERO),
            "a date past"
        );
        assert_eq!(wait(&[("retry-after", "Wed, 32 Oct 2015 07:28:00 GMT")]), None);
    }
}
