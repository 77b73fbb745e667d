//! What happened to a request: which model served and why the others failed.

use crate::capability::SkipReason;
use http::StatusCode;
use std::{fmt, sync::Arc, time::Duration};

/// An error the upstream described in its body (OpenRouter's
/// `{"error": {"code", "message", "metadata": {...}}}` or OpenAI's
/// `{"error": {"message", "type", "code"}}`), including errors inside an
/// HTTP 200 body. Texts are truncated to 1 KiB.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamError {
    pub(crate) code: Option<String>,
    pub(crate) message: Option<String>,
    pub(crate) error_type: Option<String>,
    pub(crate) provider_name: Option<String>,
    pub(crate) raw: Option<String>,
    pub(crate) moderation: bool,
}

impl UpstreamError {
    /// `error.code`, as text (OpenRouter sends a number, some stream chunks a string).
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// `error.message`.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    /// The kind of error: OpenRouter's `metadata.error_type`
    /// (`rate_limit_exceeded`, `context_length_exceeded`, ...), else a string
    /// `code`, else OpenAI's `type`.
    pub fn error_type(&self) -> Option<&str> {
        self.error_type.as_deref()
    }

    /// `metadata.provider_name`: which provider behind the router failed.
    pub fn provider_name(&self) -> Option<&str> {
        self.provider_name.as_deref()
    }

    /// `metadata.raw`: the provider's own message, often the real cause
    /// behind "Provider returned error".
    pub fn raw(&self) -> Option<&str> {
        self.raw.as_deref()
    }

    /// The error says the prompt did not fit the model's context window.
    pub fn is_context_length(&self) -> bool {
        use crate::policy::{mentions, CONTEXT_LENGTH_PHRASES};
        self.error_type.as_deref() == Some("context_length_exceeded")
            || mentions([self.message(), self.raw()], CONTEXT_LENGTH_PHRASES)
            // Anthropic: "prompt is too long: 210000 tokens > 200000 maximum".
            || mentions([self.message(), self.raw()], &["prompt is too long"])
    }

    /// The error is a moderation or content-policy block
    /// (`content_policy_violation`, or moderation metadata such as `reasons`).
    pub fn is_moderation(&self) -> bool {
        self.moderation || self.error_type.as_deref() == Some("content_policy_violation")
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(t) = &self.error_type {
            write!(f, "{t}")?;
            sep = " ";
        }
        if let Some(p) = &self.provider_name {
            write!(f, "{sep}from {p}")?;
            sep = " ";
        }
        if let Some(m) = &self.message {
            let colon = if sep.is_empty() { "" } else { ": " };
            write!(f, "{colon}{m:?}")?;
            sep = " ";
        }
        if let Some(r) = &self.raw {
            write!(f, "{sep}(raw: {r:?})")?;
        } else if sep.is_empty() {
            f.write_str("unspecified upstream error")?;
        }
        Ok(())
    }
}

/// `n` as text without formatting, for the small numbers that label metrics
/// and fill headers on every request (attempt counts, route positions).
pub(crate) fn digit(n: usize) -> Option<&'static str> {
    ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"].get(n).copied()
}

/// How one attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Its response was accepted and returned to the caller.
    Served,
    /// The policy stopped the chain on it (a `401`, a caller-fault `400`, ...)
    /// and its response went back to the caller unchanged.
    Stopped,
    /// The upstream answered with an error status; the chain fell back.
    HttpError,
    /// The upstream answered 2xx but the body carried an error, had no
    /// `choices`, had `finish_reason: "error"` or was not JSON; the chain fell back.
    ErrorInBody,
    /// The inner service failed (connect, reset, body read error); the chain fell back.
    Transport,
    /// The route's own timeout expired; the chain fell back.
    Timeout,
    /// The chain's deadline expired during this attempt; the chain ended.
    DeadlineExceeded,
    /// A streamed answer that had begun (committed) broke, stalled, carried
    /// an error chunk or ended without `[DONE]` or a final `finish_reason`.
    /// The caller received an SSE error chunk; nothing was replayed.
    StreamBroken,
    /// The caller dropped a streamed answer before it ended.
    Abandoned,
    /// The route was not tried: it cannot serve this request (capability,
    /// context window, price cap), it cools down, or a drill skipped it; see
    /// [`AttemptRecord::skip_reason`].
    Skipped,
    /// A hedged attempt that lost: another answered first and this one was
    /// dropped (its connection released).
    Cancelled,
}

impl Outcome {
    /// A short snake_case name, used in headers, spans and error JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Served => "served",
            Outcome::Stopped => "stopped",
            Outcome::HttpError => "http_error",
            Outcome::ErrorInBody => "error_in_body",
            Outcome::Transport => "transport_error",
            Outcome::Timeout => "timeout",
            Outcome::DeadlineExceeded => "deadline_exceeded",
            Outcome::StreamBroken => "stream_broken",
            Outcome::Abandoned => "abandoned",
            Outcome::Skipped => "skipped",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// The attempt failed (the chain moved on or ended because of it).
    pub fn is_failure(self) -> bool {
        !matches!(
            self,
            Outcome::Served | Outcome::Stopped | Outcome::Abandoned | Outcome::Skipped | Outcome::Cancelled
        )
    }

    /// A request was sent for this attempt (it was not skipped).
    pub fn was_sent(self) -> bool {
        self != Outcome::Skipped
    }

    /// This attempt's response went to the caller.
    pub fn answered(self) -> bool {
        matches!(
            self,
            Outcome::Served | Outcome::Stopped | Outcome::StreamBroken | Outcome::Abandoned
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One attempt of a request: which route, how it ended, and why.
#[derive(Clone, Debug)]
pub struct AttemptRecord {
    pub(crate) index: usize,
    pub(crate) chain: Arc<str>,
    pub(crate) model: Arc<str>,
    pub(crate) label: Option<Arc<str>>,
    pub(crate) deployment: Option<Arc<str>>,
    pub(crate) key: Option<Arc<str>>,
    pub(crate) outcome: Outcome,
    pub(crate) status: Option<StatusCode>,
    pub(crate) error: Option<UpstreamError>,
    pub(crate) transport: Option<String>,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) served_model: Option<Arc<str>>,
    pub(crate) upstream_fell_back: bool,
    pub(crate) upstream_attempts: Vec<UpstreamAttempt>,
    pub(crate) skip_reason: Option<SkipReason>,
    pub(crate) hedged: bool,
    pub(crate) elapsed: Duration,
}

impl AttemptRecord {
    pub(crate) fn skipped(chain: &Arc<str>, index: usize, route: &crate::hop::Hop, reason: SkipReason) -> Self {
        AttemptRecord {
            skip_reason: Some(reason),
            ..AttemptRecord::new(chain, index, route, Outcome::Skipped)
        }
    }

    /// A record for `route` (at `index` of `chain`) with `outcome` and
    /// nothing else known yet.
    pub(crate) fn new(chain: &Arc<str>, index: usize, route: &crate::hop::Hop, outcome: Outcome) -> Self {
        AttemptRecord {
            index,
            chain: chain.clone(),
            model: route.model.clone(),
            label: route.label.clone(),
            deployment: route.deployment.clone(),
            key: route.key.clone(),
            outcome,
            status: None,
            error: None,
            transport: None,
            retry_after: None,
            served_model: None,
            upstream_fell_back: false,
            upstream_attempts: Vec::new(),
            skip_reason: None,
            hedged: false,
            elapsed: Duration::ZERO,
        }
    }

    /// Position of the route in its chain ([`AttemptRecord::chain`]), from 0.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The name of the chain the route belongs to: the request's chain, or
    /// after a move to the content-policy chain, that chain
    /// ([`ChainSet::DEFAULT`](crate::ChainSet::DEFAULT) for the default).
    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// The model this attempt asked for.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The route's label, if any.
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }

    /// The [deployment](crate::Route::deployments) of the route, if it has deployments.
    pub fn deployment(&self) -> Option<&str> {
        self.deployment.as_deref()
    }

    /// The environment variable of the API key sent, when the endpoint
    /// holds [several](crate::native::Endpoint::api_key_envs). Never the key.
    pub fn key_name(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// How the attempt ended.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// The HTTP status the upstream answered with, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        self.status
    }

    /// The error the upstream described in its body, if any.
    pub fn upstream_error(&self) -> Option<&UpstreamError> {
        self.error.as_ref()
    }

    /// Shortcut for `upstream_error().error_type()`.
    pub fn error_type(&self) -> Option<&str> {
        self.error.as_ref().and_then(UpstreamError::error_type)
    }

    /// The transport error's message (with its sources), for
    /// [`Outcome::Transport`].
    pub fn transport_error(&self) -> Option<&str> {
        self.transport.as_deref()
    }

    /// How long the upstream asked to wait, when it answered with an error
    /// status and a `Retry-After` (or `retry-after-ms`; see
    /// [`ResponseInfo::retry_after`](crate::policy::ResponseInfo::retry_after)).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The model the upstream said served this attempt (the body's or the
    /// first stream chunk's `model`), when it answered with one.
    pub fn served_model(&self) -> Option<&str> {
        self.served_model.as_deref()
    }

    /// The upstream fell back on its side: the model that served is one of
    /// the route's [native fallbacks](crate::Route::native_fallbacks), or
    /// (with none) another model than the one asked for — a dated variant of
    /// the same model does not count.
    pub fn upstream_fell_back(&self) -> bool {
        self.upstream_fell_back
    }

    /// OpenRouter's own attempts (`openrouter_metadata.attempts`), when the
    /// route asked for them with
    /// [`Route::openrouter_metadata`](crate::Route::openrouter_metadata).
    pub fn upstream_attempts(&self) -> &[UpstreamAttempt] {
        &self.upstream_attempts
    }

    /// This attempt was started as a hedge, beside one still in flight.
    pub fn hedged(&self) -> bool {
        self.hedged
    }

    /// Why the route was skipped, for [`Outcome::Skipped`].
    pub fn skip_reason(&self) -> Option<&SkipReason> {
        self.skip_reason.as_ref()
    }

    /// Time from sending this attempt to its outcome.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }
}

/// One server-side attempt OpenRouter reported in `openrouter_metadata`.
/// Fields OpenRouter leaves out are `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpstreamAttempt {
    /// The model it tried.
    pub model: Option<String>,
    /// The provider it tried.
    pub provider: Option<String>,
    /// The status that provider answered with.
    pub status: Option<u16>,
    /// Its error message, if it failed.
    pub error: Option<String>,
}

impl fmt::Display for AttemptRecord {
    /// `openai/gpt-4o (secondary): HTTP 503 provider_unavailable from OpenAI: "..." after 12ms`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, true)
    }
}

impl AttemptRecord {
    /// The record as one phrase; without `full`, only what the layer itself
    /// knows (no upstream message, provider text or transport error) and an
    /// error type only when it is a plain identifier.
    fn write(&self, f: &mut fmt::Formatter<'_>, full: bool) -> fmt::Result {
        write!(f, "{}", self.model)?;
        if let Some(l) = &self.label {
            write!(f, " ({l})")?;
        }
        if let Some(d) = &self.deployment {
            write!(f, " on {d}")?;
        }
        if let Some(k) = &self.key {
            write!(f, " with key {k}")?;
        }
        f.write_str(": ")?;
        match self.outcome {
            Outcome::Timeout => f.write_str("timed out")?,
            Outcome::DeadlineExceeded => f.write_str("cut off by the chain deadline")?,
            Outcome::StreamBroken => {
                f.write_str("stream broke after it began")?;
                if let Some(e) = self.error.as_ref().filter(|_| full) {
                    write!(f, ": {e}")?;
                }
            }
            Outcome::Abandoned => f.write_str("stream dropped by the caller")?,
            Outcome::Cancelled => f.write_str("cancelled (another attempt answered first)")?,
            Outcome::Skipped => {
                f.write_str("skipped")?;
                if let Some(r) = &self.skip_reason {
                    write!(f, " ({r})")?;
                }
                return Ok(());
            }
            Outcome::Transport if full => {
                write!(f, "transport error: {}", self.transport.as_deref().unwrap_or("unknown"))?
            }
            Outcome::Transport => f.write_str("transport error")?,
            _ => {
                if let Some(s) = self.status {
                    write!(f, "HTTP {}", s.as_u16())?;
                }
                if self.outcome == Outcome::ErrorInBody {
                    f.write_str(" with an error in the body")?;
                }
                match &self.error {
                    Some(e) if full => write!(f, " {e}")?,
                    Some(_) => {
                        if let Some(t) = self.error_type().and_then(plain_identifier) {
                            write!(f, " {t}")?;
                        }
                    }
                    None if self.outcome == Outcome::Served => f.write_str(" ok")?,
                    None => {}
                }
            }
        }
        write!(f, " after {}ms", self.elapsed.as_millis())
    }
}

/// How the request as a whole ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Resolution {
    /// A route's response was accepted.
    Served,
    /// The policy stopped the chain and returned that upstream response as-is.
    Stopped,
    /// Every route failed; the caller got a `502` naming every attempt.
    Exhausted,
    /// The chain's deadline expired; the caller got a `504` naming every attempt.
    DeadlineExceeded,
    /// The request itself was refused before any attempt (bad JSON, no
    /// `model`, too large): the caller got a `400`/`413`.
    Rejected,
    /// A streamed answer began and then broke; the caller got an SSE error
    /// chunk at the point of failure. Only in a [`StreamReport`](crate::StreamReport)'s final report.
    StreamBroken,
}

impl Resolution {
    /// A short snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Served => "served",
            Resolution::Stopped => "stopped",
            Resolution::Exhausted => "exhausted",
            Resolution::DeadlineExceeded => "deadline_exceeded",
            Resolution::Rejected => "rejected",
            Resolution::StreamBroken => "stream_broken",
        }
    }
}

/// Which model served a request and why each earlier attempt failed.
///
/// Every response from [`FallbackService`](crate::FallbackService) carries one
/// in its extensions, success or not.
///
/// ```
/// # use llm_fallback::FallbackReport;
/// fn log(resp: &http::Response<impl Sized>) {
///     if let Some(report) = resp.extensions().get::<FallbackReport>() {
///         println!("served by {} after {} attempts", report.served_model(), report.attempts().len());
///         for failed in report.attempts().iter().filter(|a| a.outcome().is_failure()) {
///             println!("  {failed}");
///         }
///     }
/// }
/// # log(&http::Response::new(()));
/// ```
#[derive(Clone, Debug)]
pub struct FallbackReport {
    pub(crate) requested_model: Option<String>,
    pub(crate) served_model: Option<Arc<str>>,
    pub(crate) provider: Option<String>,
    pub(crate) attempts: Vec<AttemptRecord>,
    pub(crate) resolution: Resolution,
    pub(crate) usage: Option<Usage>,
    pub(crate) chain: Option<Arc<str>>,
    pub(crate) drill: bool,
    pub(crate) elapsed: Duration,
}

impl FallbackReport {
    pub(crate) fn rejected(elapsed: Duration) -> Self {
        FallbackReport {
            requested_model: None,
            served_model: None,
            provider: None,
            attempts: Vec::new(),
            resolution: Resolution::Rejected,
            usage: None,
            chain: None,
            drill: false,
            elapsed,
        }
    }

    /// The model that answered: the upstream body's `model` when it names one
    /// (OpenRouter reports the model that actually served), else the route's
    /// model. For a stopped chain, the model whose error was returned.
    /// Empty when no route answered (exhausted, rejected).
    pub fn served_model(&self) -> &str {
        self.served_model.as_deref().unwrap_or("")
    }

    /// The attempt whose response was returned ([`Outcome::Served`] or
    /// [`Outcome::Stopped`]), if any.
    pub fn served_attempt(&self) -> Option<&AttemptRecord> {
        // Not always the last record: attempts a hedge beat are recorded,
        // as cancelled, after the one that answered.
        self.attempts.iter().rev().find(|a| a.outcome.answered())
    }

    /// The label of the route that answered, if it has one.
    pub fn served_label(&self) -> Option<&str> {
        self.served_attempt().and_then(AttemptRecord::label)
    }

    /// The [deployment](crate::Route::deployments) that answered, if its route has deployments.
    pub fn served_deployment(&self) -> Option<&str> {
        self.served_attempt().and_then(AttemptRecord::deployment)
    }

    /// The provider the upstream named in its body (`"provider"`), if any.
    pub fn provider(&self) -> Option<&str> {
        self.provider.as_deref()
    }

    /// The name of the chain that was used (`"default"` unless a
    /// [`ChainSet`](crate::ChainSet) picked another; after a move to the
    /// content-policy chain, that chain).
    pub fn chain(&self) -> Option<&str> {
        self.chain.as_deref()
    }

    /// This request was a drill: its primary was skipped on purpose.
    pub fn is_drill(&self) -> bool {
        self.drill
    }

    /// The `model` the caller put in the request body.
    pub fn requested_model(&self) -> Option<&str> {
        self.requested_model.as_deref()
    }

    /// Every attempt made, in order.
    pub fn attempts(&self) -> &[AttemptRecord] {
        &self.attempts
    }

    /// How the request ended.
    pub fn resolution(&self) -> Resolution {
        self.resolution
    }

    /// The upstream fell back on its side for the attempt that answered (see
    /// [`AttemptRecord::upstream_fell_back`]).
    pub fn upstream_fell_back(&self) -> bool {
        self.served_attempt().is_some_and(|a| a.upstream_fell_back)
    }

    /// A route other than the first one of the request's chain served: a
    /// later route, or any route of the chain the request moved to after a
    /// content-policy block.
    pub fn fell_back(&self) -> bool {
        let Some(served) = self
            .served_attempt()
            .filter(|_| matches!(self.resolution, Resolution::Served | Resolution::StreamBroken))
        else {
            return false;
        };
        // Every request's records start in the chain it was given (skips are
        // recorded too), so the first record names that chain.
        let first_chain = self.attempts.first().map(|a| &*a.chain);
        served.index > 0 || first_chain != Some(&*served.chain)
    }

    /// Token usage the upstream reported (the body's `usage`, or for a
    /// stream the last chunk's, in the final [`StreamReport`](crate::StreamReport)).
    pub fn usage(&self) -> Option<&Usage> {
        self.usage.as_ref()
    }

    /// Time from the request's arrival to its answer (for a stream: to the
    /// commit point; in the final stream report: to the end of the stream).
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }
}

impl fmt::Display for FallbackReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.resolution {
            Resolution::Served | Resolution::Stopped | Resolution::StreamBroken => write!(
                f,
                "{} by {} after {} attempt(s)",
                self.resolution.as_str(),
                self.served_model(),
                self.attempts.len()
            )?,
            Resolution::Exhausted => write!(f, "all {} attempt(s) failed", self.attempts.len())?,
            Resolution::DeadlineExceeded => write!(f, "deadline exceeded after {} attempt(s)", self.attempts.len())?,
            Resolution::Rejected => f.write_str("request rejected before any attempt")?,
        }
        for a in self
            .attempts
            .iter()
            .filter(|a| a.outcome.is_failure() || !a.outcome.was_sent())
        {
            write!(f, "; {a}")?;
        }
        Ok(())
    }
}

/// Token counts as the upstream reported them (`usage`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[non_exhaustive]
pub struct Usage {
    /// Tokens in the prompt.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Tokens generated.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Both together.
    #[serde(default)]
    pub total_tokens: u64,
}

/// Every route of a chain failed (or its deadline expired).
///
/// Its `Display` reads as one sentence naming every model tried and why it
/// failed; it is the `message` of the `502`/`504` answer the caller gets.
#[derive(Clone, Debug)]
pub(crate) struct Exhausted {
    report: FallbackReport,
}

impl Exhausted {
    pub(crate) fn new(report: FallbackReport) -> Self {
        Exhausted { report }
    }

    /// The full report of the failed chain.
    pub(crate) fn report(&self) -> &FallbackReport {
        &self.report
    }

    /// The shortest `Retry-After` any upstream sent, if any did.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        self.report.attempts.iter().filter_map(|a| a.retry_after).min()
    }
}

impl fmt::Display for Exhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_with(f, |f, a| write!(f, "{a}"))
    }
}

impl std::error::Error for Exhausted {}

/// What the `502`/`504` body says when every route failed
/// ([`FallbackBuilder::exhaustion_body`](crate::FallbackBuilder::exhaustion_body)).
///
/// Either way the [`FallbackReport`] in the response's extensions keeps the
/// full detail; this only chooses what the caller reads.
///
/// ```
/// use llm_fallback::{Chain, ExhaustionBody, FallbackLayer, Route};
///
/// // A gateway whose callers are other people: name the models and what
/// // happened, not the transport errors or the providers' own texts.
/// let layer = FallbackLayer::builder(Chain::new([Route::new("openai/gpt-4o")]))
///     .exhaustion_body(ExhaustionBody::Summary)
///     .layer();
/// # let _ = layer;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "config", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "config", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum ExhaustionBody {
    /// Everything the report knows: each attempt's upstream message, the
    /// provider's raw text and name, and transport errors (which can hold
    /// internal URLs and addresses). For in-process use, where the caller
    /// is your own code. The default.
    #[default]
    Full,
    /// Each attempt's model, label, outcome, status, skip reason and time,
    /// and an error type when it is a plain identifier
    /// (`rate_limit_exceeded`); no upstream message, raw provider text,
    /// provider name or transport detail. For callers you do not trust
    /// with your internals (a gateway).
    Summary,
}

impl ExhaustionBody {
    /// `"full"` or `"summary"`, as in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            ExhaustionBody::Full => "full",
            ExhaustionBody::Summary => "summary",
        }
    }
}

/// An error type or code fit for a summary: a short identifier, not text
/// an upstream wrote for people (which may quote the prompt or a host).
pub(crate) fn plain_identifier(text: &str) -> Option<&str> {
    let fits = !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    fits.then_some(text)
}

/// One attempt as a summary names it: no upstream or transport text.
pub(crate) struct Summary<'a>(pub(crate) &'a AttemptRecord);

impl fmt::Display for Summary<'_> {
    /// `openai/gpt-4o (secondary): HTTP 503 provider_unavailable after 12ms`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.write(f, false)
    }
}

impl Exhausted {
    /// The sentence of [`ExhaustionBody::Summary`]: like `Display`, with
    /// every attempt as [`Summary`] names it.
    pub(crate) fn summary(&self) -> String {
        use fmt::Write;
        let mut text = String::new();
        let _ = self.write_with(&mut text, |f, a| write!(f, "{}", Summary(a)));
        text
    }

    fn write_with<W: fmt::Write>(
        &self,
        f: &mut W,
        attempt: impl Fn(&mut W, &AttemptRecord) -> fmt::Result,
    ) -> fmt::Result {
        let n = self.report.attempts.iter().filter(|a| a.outcome.was_sent()).count();
        let skipped = self.report.attempts.len() - n;
        match self.report.resolution {
            Resolution::DeadlineExceeded => write!(f, "the fallback deadline expired after {n} attempt(s)")?,
            _ => write!(f, "all {n} fallback route(s) failed")?,
        }
        if skipped > 0 {
            write!(f, " ({skipped} skipped)")?;
        }
        for (i, a) in self.report.attempts.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { "; " })?;
            attempt(f, a)?;
        }
        Ok(())
    }
}
