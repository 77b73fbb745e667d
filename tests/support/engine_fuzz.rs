//! The engine fuzz harness, shared by the libFuzzer target
//! (`fuzz/fuzz_targets/engine.rs`) and the CI replay
//! (`tests/fuzz_regressions.rs`).
//!
//! [`run`] decodes any bytes into a case — a caller request (body, headers),
//! a chain (1–4 routes, with or without an [`Endpoint`], OpenRouter or not,
//! `provider` prefs, native fallbacks, timeouts), layer limits and the
//! upstream's answer to each attempt — then runs the real
//! [`FallbackService`](llm_fallback::FallbackService) over an in-process
//! upstream that records every request it receives, on a current-thread
//! tokio runtime with paused time, and checks:
//!
//! 1. nothing panics, and the layer ends unless the script made it wait
//!    forever (the harness itself never panics but on a violation);
//! 2. a request the layer refuses (`Resolution::Rejected`) reached no
//!    upstream; a body serde_json says is acceptable is not refused, one it
//!    says must be refused is;
//! 3. every body sent upstream parses (serde_json) to the caller's object
//!    with exactly the edits the route implies (see [`expected_members`]);
//! 4. no credential header of the caller reaches a route on another
//!    endpoint, except the endpoint's own `Authorization`; a route without
//!    an endpoint gets the caller's headers;
//! 5. the answer the caller gets from an upstream is that upstream's bytes
//!    unchanged, or (a committed stream only) them followed by exactly one
//!    SSE error chunk that an SSE parser sees as its own event; a stream
//!    that sent `[DONE]` and ended gets nothing added; the report's
//!    `served_attempt` is the attempt that answered;
//! 6. a summary exhaustion body holds no upstream or transport text.
//!
//! Every dialect (issue 15: chat, Responses, Messages, embeddings,
//! completions) is a case: its bodies and answers are generated in its
//! shapes, and the checks are its own — the dialect's path on an
//! endpoint, Anthropic's `x-api-key` / `anthropic-version` for Messages on
//! Anthropic's API, no route that does not serve the dialect (or hold a
//! stateful request's state) sent to, the dialect's error JSON for the
//! layer's own 4xx and for exhaustion, the dialect's one terminal event
//! after a committed stream, nothing after a whole one, a terminal event
//! after one cut short, and no commit before the first content.
//!
//! Properties that need a fix on `main` are behind the gates below (a
//! gate off: the known failing case is not checked); `strict` turns them
//! all on, for the tests that tell when a gate can be turned on.
//!
//! A violation panics with `engine fuzz: property N violated: ...` and the
//! decoded case.
//!
//! # Input format
//!
//! `<control> 0xFF <tail>`: the control bytes are read one by one for every
//! choice (an exhausted control reads as zeros, the defaults); the tail is
//! the raw body (body mode 0) or a pool of text for generated bodies,
//! models and stream bytes. Without a `0xFF` the whole input is the raw
//! body with the default case: one route, on a non-OpenRouter endpoint,
//! every credential header sent, the upstream answering 200 with a
//! completion. So any JSON file is a seed. An input that starts with `0xFE`
//! has a dialect prefix first (see [`decode_as`]); no other input does, so
//! every input saved before dialects is the chat case it was.
#![allow(dead_code)]

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use llm_fallback::native::{DataCollection, Endpoint, MaxPrice, ProviderPrefs, ProviderSort, SortBy};
use llm_fallback::{
    Attempt, Chain, ChainSet, Dialect, ExhaustionBody, FallbackBuilder, FallbackReport, Outcome, ReplayBody,
    Resolution, Route, StreamReport,
};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

// ---------------------------------------------------------------------------
// Gates: properties that need fixes on `main` (issue 13) before they hold.

/// Issue 13 point 2: every credential header of the caller is removed for a
/// route on another endpoint (before it, only `Authorization` was).
pub const STRIP_ALL_CREDENTIALS: bool = true;
/// Issue 13 point 3: duplicate `route` / `transforms` are refused like
/// duplicate `model`, `models`, `provider`, `stream`.
pub const REFUSE_DUPLICATE_ROUTE_TRANSFORMS: bool = true;

/// A committed stream's error chunk stands alone for an SSE client even
/// when the upstream's bytes stop inside an event. Two ways it did not,
/// both found by this target and fixed on `main` in ef585bd:
///
/// (a) a stream that ends cleanly in the middle of a line gets no `\n\n`
/// before the chunk (`CommittedStream` asks `tracker.mid_line()` after
/// `tracker.finish()` emptied the partial line), so the chunk is glued to
/// that line;
pub const CHUNK_AFTER_PARTIAL_LINE: bool = true;
/// (b) after complete `data:` lines with no blank line yet (an event not
/// dispatched), the chunk's `data:` line joins that event.
///
/// While a gate is false, its case gets only the chunk's shape checked.
pub const CHUNK_AFTER_PENDING_EVENT: bool = true;

/// A stream the engine commits to because it held more than
/// `max_response_bytes` before any content (keep-alives) is tracked as
/// committed. Found by this target (fixed on `main` in ef585bd):
/// `until_first_token` returned
/// `Signal::Commit` for it but never marked the tracker committed, so after
/// commit a malformed or error chunk was a pre-commit `Signal::Error`, on
/// which `SseTracker::feed` returned without reading the rest of the frame:
/// the partial line was lost (the error chunk glued to it) and events later
/// in that frame (a `[DONE]`) were never seen (a complete stream got an
/// error chunk). While this is false, streams that may have been
/// committed that way get only the chunk's shape checked.
pub const FORCED_COMMIT_TRACKED: bool = true;

/// `FallbackReport::served_attempt` (and so `served_label` and the
/// `x-fallback-label` header) names the attempt that answered. Found by
/// this target: when a hedge wins or loses, the engine pushes the answered
/// record and then the cancelled flights' records, and `served_attempt` is
/// `attempts.last()` filtered by `answered()`: `None`. While this is false,
/// hedged cases are not checked for it.
pub const SERVED_ATTEMPT_AFTER_HEDGE: bool = true;

/// How many leading bytes of `extra` (what the caller got after the
/// upstream's bytes) only close an event the upstream left open at a clean
/// end: `\n` or `\n\n` that make the stream end with a blank line.
fn closing_separator(upstream: &[u8], extra: &[u8], clean_end: bool) -> usize {
    let ends_event = upstream.ends_with(b"\n\n") || upstream.ends_with(b"\r\n\r\n") || upstream.ends_with(b"\n\r\n");
    if !clean_end || upstream.is_empty() || ends_event {
        return 0;
    }
    for sep in [&b"\n\n"[..], b"\n"] {
        if extra == sep && [upstream, sep].concat().ends_with(b"\n\n") {
            return sep.len();
        }
    }
    0
}

/// A Responses or Messages stream whose terminal event
/// (`response.completed`, `message_stop`) the upstream sent without the
/// blank line that dispatches it, then ended cleanly, reaches the caller as
/// a stream an SSE client sees end without any terminal event: the layer's
/// tracker reads the pending event at the end of the body
/// (`SseTracker::finish`, `src/stream.rs`) and calls the stream complete,
/// so `CommittedStream` adds nothing — neither the blank line that would
/// let the client see the upstream's event, nor a terminal event of its
/// own. The WHATWG SSE rules (and the OpenAI and Anthropic SDKs' decoders)
/// drop an undispatched event at the end. Found by hand while writing the
/// dialect checks (`found_pending_terminal_event_never_dispatched`) and by
/// this target; fixed on `main`: the layer ends the event the upstream left
/// open (`CommittedStream`, the line break or blank line a client needs).
pub const PENDING_TERMINAL_EVENT_REACHES_CLIENT: bool = true;

/// The scanner accepts every object serde_json accepts. Found by this
/// target (and fixed on `main` in 0153f8f): the dense-escape gear
/// (`dense_string_end` in `src/json/scan.rs`) handed back the next block's
/// start when a block had no quote, dropping the escape carry, so a nested
/// string whose 64-byte block ended in an odd backslash run took the
/// escaped quote after it for its end: a valid body was refused as
/// `invalid_json`, or, when the scanner found its feet again, read wrong (a
/// top-level `route` it never saw went to a non-OpenRouter endpoint). When
/// this is false, bodies that can reach that gear ([`dense_gear_risk`]) are
/// not checked by properties 2 and 3.
pub const SCANNER_KEEPS_ESCAPE_CARRY: bool = true;

/// A string literal of `body` with two escaped quotes and then 63 bytes
/// without a quote: what the scanner's dense-escape gear needs to go wrong
/// (an over-approximation).
pub fn dense_gear_risk(body: &[u8]) -> bool {
    let mut i = 0;
    while i < body.len() {
        if body[i] != b'"' {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        let (mut escaped_quotes, mut since_quote) = (0, 0usize);
        while let Some(&b) = body.get(j) {
            match b {
                b'"' => break,
                b'\\' => {
                    if body.get(j + 1) == Some(&b'"') {
                        escaped_quotes += 1;
                        since_quote = 0;
                    } else {
                        since_quote += 2;
                    }
                    j += 2;
                }
                _ => {
                    since_quote += 1;
                    j += 1;
                }
            }
            if escaped_quotes >= 2 && since_quote >= 62 {
                return true;
            }
        }
        i = j + 1;
    }
    false
}

thread_local! {
    static STRICT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a gate's fix is assumed: the gate, or [`strict`] in force.
fn fixed(gate: bool) -> bool {
    gate || STRICT.with(|s| s.get())
}

/// Runs `f` with every gate on (every known bug checked), so a test can
/// tell whether a gate still hides a failure.
pub fn strict<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            STRICT.with(|s| s.set(self.0));
        }
    }
    let _reset = Reset(STRICT.with(|s| s.replace(true)));
    f()
}

/// The caller's credential headers (issue 13 point 2,
/// `native::CREDENTIAL_HEADERS`), sent with marker values.
pub const CREDENTIALS: [&str; 8] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "api-key",
    "openai-organization",
    "openai-project",
    "x-goog-api-key",
];
/// A credential header of the caller's own making, added to the layer's
/// list with `credential_header` when the case sends it.
pub const CUSTOM_CREDENTIAL: &str = "x-fuzz-credential";
/// Models of the content-policy chain's routes start with this (an
/// `Attempt` does not name its chain; the model tells them apart).
const POLICY_PREFIX: &str = "policy/";
/// Every caller credential value starts with this.
const MARKER: &str = "caller-secret-";
/// The `anthropic-version` the caller sends when it sends one.
const CALLER_ANTHROPIC_VERSION: &str = "2023-01-01";

/// The environment variable holding the endpoints' key, set by the harness.
pub const KEY_VAR: &str = "LLM_FALLBACK_FUZZ_ENDPOINT_KEY";
const KEY: &str = "fuzz-endpoint-key";
const LOCAL_BASE: &str = "http://127.0.0.1:9/v1";
const OPENROUTER_BASE: &str = "https://openrouter.ai/api/v1";

/// How long (virtual, the clock is paused) a case may run before the harness
/// calls it hung.
const HANG_LIMIT: Duration = Duration::from_secs(24 * 3600);

// ---------------------------------------------------------------------------
// Reading the input.

/// The control bytes, read one at a time (zeros once exhausted), and the
/// tail as a pool of text.
struct Input<'a> {
    control: &'a [u8],
    at: usize,
    pool: &'a [u8],
    pool_at: usize,
    /// The request's API shape: what generated bodies and answers look like.
    dialect: Dialect,
}

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        let b = self.control.get(self.at).copied().unwrap_or(0);
        self.at = self.at.saturating_add(1);
        b
    }

    /// `0..n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        match n {
            0 => 0,
            n => self.byte() as usize % n,
        }
    }

    /// True with probability `num`/256 (false on an exhausted control).
    fn chance(&mut self, num: u8) -> bool {
        let b = self.byte();
        b != 0 && b <= num
    }

    fn pick<T: Copy>(&mut self, table: &[T]) -> T {
        table[self.below(table.len())]
    }

    /// The next `len` pool bytes (wrapping), `len` chosen by the control.
    fn pool_bytes(&mut self, max: usize) -> Vec<u8> {
        if self.pool.is_empty() {
            return Vec::new();
        }
        let len = self.below(max + 1);
        let mut out = Vec::with_capacity(len);
        for _ in 0..len {
            out.push(self.pool[self.pool_at % self.pool.len()]);
            self.pool_at = self.pool_at.wrapping_add(1);
        }
        out
    }

    fn pool_string(&mut self, max: usize) -> String {
        String::from_utf8_lossy(&self.pool_bytes(max)).into_owned()
    }
}

// ---------------------------------------------------------------------------
// The case.

/// Bytes, shown as (lossy) text.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Blob(pub Vec<u8>);

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = String::from_utf8_lossy(&self.0);
        let chars: Vec<char> = text.chars().collect();
        if chars.len() <= 800 {
            return write!(f, "{text:?}");
        }
        let head: String = chars[..500].iter().collect();
        let tail: String = chars[chars.len() - 200..].iter().collect();
        write!(f, "{head:?} ... {tail:?} ({} bytes)", self.0.len())
    }
}

/// Everything the input chose.
#[derive(Debug)]
pub struct Case {
    pub body: Blob,
    pub body_mode: &'static str,
    /// How the caller's body is delivered.
    pub caller_frames: Frames,
    pub routes: Vec<RouteSpec>,
    pub deadline: Option<Duration>,
    pub hedge_after: Option<Duration>,
    pub max_body_bytes: Option<usize>,
    pub max_response_bytes: Option<usize>,
    /// Credential headers the caller sends (indexes into [`CREDENTIALS`]).
    pub credentials: Vec<usize>,
    pub host: bool,
    pub content_length: ContentLength,
    pub chunked: bool,
    pub chain_header: Option<&'static str>,
    pub answers: Vec<AnswerSpec>,
    /// The layer honours `x-fallback-chain`.
    pub allow_chain_header: bool,
    /// The caller sends `x-fallback-drill` (never forwarded).
    pub drill_header: bool,
    /// The caller sends [`CUSTOM_CREDENTIAL`] and the layer lists it.
    pub custom_credential: bool,
    /// The exhaustion answer is the summary (no upstream or transport text).
    pub summary_exhaustion: bool,
    /// A chain `policy` the layer moves to on a content-policy failure.
    pub policy_routes: Vec<RouteSpec>,
    /// The request's API shape (chat for every input without a dialect
    /// prefix, so for every input saved before dialects existed).
    pub dialect: Dialect,
    /// How the layer is told the dialect.
    pub dialect_via: DialectVia,
    /// The caller sends `anthropic-version` (its own value) and
    /// `anthropic-beta`.
    pub anthropic_version: bool,
    pub anthropic_beta: bool,
    /// The input has a dialect prefix (see [`decode_as`]).
    pub dialect_prefix: bool,
}

/// How the caller's request says its dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialectVia {
    /// `/api/v1/<dialect path>` (chat: `/api/v1/chat/completions`, as before).
    Path,
    /// `/v1/<dialect path>/` (a trailing slash).
    PathSlash,
    /// A `Dialect` request extension on a path that names none.
    Extension,
    /// A `Dialect` extension on the path of another dialect: the extension wins.
    ExtensionOverPath,
}

impl DialectVia {
    /// The caller's path, and the extension it sets.
    pub fn request(self, dialect: Dialect) -> (String, Option<Dialect>) {
        match self {
            DialectVia::Path => (format!("/api/v1{}", dialect.path()), None),
            DialectVia::PathSlash => (format!("/v1{}/", dialect.path()), None),
            DialectVia::Extension => ("/gateway/generate".into(), Some(dialect)),
            DialectVia::ExtensionOverPath => {
                let other = Dialect::ALL[(dialect_index(dialect) + 2) % Dialect::ALL.len()];
                (format!("/v1{}", other.path()), Some(dialect))
            }
        }
    }
}

/// `dialect`'s position in [`Dialect::ALL`].
pub fn dialect_index(dialect: Dialect) -> usize {
    Dialect::ALL.iter().position(|d| *d == dialect).unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentLength {
    None,
    Exact,
    Wrong,
    Huge,
}

#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub model: String,
    pub endpoint: EndpointKind,
    pub provider: PrefsKind,
    pub native_fallbacks: Option<Vec<String>>,
    pub label: Option<&'static str>,
    pub timeout: Option<Duration>,
    pub first_token_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    /// `Endpoint::anthropic(true)`: a Messages request carries the key as
    /// `x-api-key` with an `anthropic-version`.
    pub anthropic: bool,
    /// `Endpoint::dialects`: the dialects served, a bit per
    /// [`dialect_index`] (`None`: the host's default).
    pub serves: Option<u8>,
    /// `Endpoint::shares_state(true)`.
    pub shares_state: bool,
}

impl RouteSpec {
    /// The route has an endpoint that talks Anthropic's own API.
    fn anthropic_api(&self) -> bool {
        self.endpoint != EndpointKind::None && (self.anthropic || self.endpoint == EndpointKind::AnthropicHost)
    }

    /// Why the layer must not send a request of `dialect` (stateful or
    /// not) to this route: its endpoint does not serve the dialect, or the
    /// request is stateful and the endpoint does not hold its state.
    pub fn unfit(&self, dialect: Dialect, stateful: bool) -> Option<&'static str> {
        if self.endpoint == EndpointKind::None {
            return None;
        }
        let default = match self.endpoint {
            EndpointKind::AnthropicHost => dialect_bit(Dialect::Messages) | dialect_bit(Dialect::Chat),
            EndpointKind::OpenAiHost => ALL_DIALECT_BITS & !dialect_bit(Dialect::Messages),
            _ => ALL_DIALECT_BITS,
        };
        if self.serves.unwrap_or(default) & dialect_bit(dialect) == 0 {
            return Some("dialect");
        }
        if stateful && !self.shares_state {
            return Some("stateful");
        }
        None
    }
}

const ALL_DIALECT_BITS: u8 = 0b1_1111;

fn dialect_bit(d: Dialect) -> u8 {
    1 << dialect_index(d)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointKind {
    /// `http://127.0.0.1:9/v1`, not OpenRouter, no key.
    Local,
    /// The caller's own upstream.
    None,
    /// Local with a key.
    LocalKeyed,
    /// Local, `.openrouter(true)`.
    LocalOpenRouter,
    /// Local, `.openrouter(true)`, with a key.
    LocalOpenRouterKeyed,
    /// `https://openrouter.ai/api/v1` (detected), with a key.
    OpenRouter,
    /// `https://openrouter.ai/api/v1/`, `.openrouter(false)`.
    OpenRouterHostDenied,
    /// `https://api.anthropic.com/v1` (detected: Anthropic's API, serves
    /// Messages and chat only), with a key.
    AnthropicHost,
    /// `https://api.openai.com/v1` (serves everything but Messages), with a key.
    OpenAiHost,
}

impl EndpointKind {
    fn base(self) -> &'static str {
        match self {
            EndpointKind::OpenRouter => OPENROUTER_BASE,
            EndpointKind::OpenRouterHostDenied => "https://openrouter.ai/api/v1/",
            EndpointKind::AnthropicHost => "https://api.anthropic.com/v1",
            EndpointKind::OpenAiHost => "https://api.openai.com/v1",
            _ => LOCAL_BASE,
        }
    }

    fn keyed(self) -> bool {
        matches!(
            self,
            EndpointKind::LocalKeyed
                | EndpointKind::LocalOpenRouterKeyed
                | EndpointKind::OpenRouter
                | EndpointKind::AnthropicHost
                | EndpointKind::OpenAiHost
        )
    }

    /// The body edits of a non-OpenRouter endpoint apply.
    fn strips_openrouter_keys(self) -> bool {
        matches!(
            self,
            EndpointKind::Local
                | EndpointKind::LocalKeyed
                | EndpointKind::OpenRouterHostDenied
                | EndpointKind::AnthropicHost
                | EndpointKind::OpenAiHost
        )
    }

    fn build(self) -> Option<Endpoint> {
        if self == EndpointKind::None {
            return None;
        }
        let endpoint = match Endpoint::new(self.base()) {
            Ok(e) => e,
            Err(e) => panic!("engine fuzz harness: endpoint {}: {e}", self.base()),
        };
        let endpoint = match self {
            EndpointKind::LocalOpenRouter | EndpointKind::LocalOpenRouterKeyed => endpoint.openrouter(true),
            EndpointKind::OpenRouterHostDenied => endpoint.openrouter(false),
            _ => endpoint,
        };
        Some(if self.keyed() {
            match endpoint.api_key_env(KEY_VAR) {
                Ok(e) => e,
                Err(e) => panic!("engine fuzz harness: endpoint key: {e}"),
            }
        } else {
            endpoint
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefsKind {
    None,
    Empty,
    Order,
    Full,
}

impl PrefsKind {
    fn build(self) -> Option<ProviderPrefs> {
        match self {
            PrefsKind::None => None,
            PrefsKind::Empty => Some(ProviderPrefs::default()),
            PrefsKind::Order => {
                let mut p = ProviderPrefs::default();
                p.order = Some(vec!["Fuzz A".into(), "fuzz-b".into()]);
                p.allow_fallbacks = Some(false);
                Some(p)
            }
            PrefsKind::Full => {
                // `#[non_exhaustive]`: built field by field.
                let mut max_price = MaxPrice::default();
                max_price.prompt = Some(1.5);
                max_price.completion = Some(2.0);
                let mut p = ProviderPrefs::default();
                p.order = Some(vec!["x\"y".into()]);
                p.require_parameters = Some(true);
                p.data_collection = Some(DataCollection::Deny);
                p.zdr = Some(true);
                p.ignore = Some(vec!["DeepInfra".into()]);
                p.quantizations = Some(vec!["fp8".into()]);
                p.sort = Some(ProviderSort::By(SortBy::Latency));
                p.max_price = Some(max_price);
                p.preferred_min_throughput = Some(50.0);
                Some(p)
            }
        }
    }
}

/// How body bytes are cut into frames and how the body ends.
#[derive(Debug, Clone)]
pub struct Frames {
    /// Frame sizes, cycled; empty: one frame.
    pub sizes: Vec<usize>,
    pub ending: Ending,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Clean,
    /// The body fails (a cut stream, a reset).
    Fail,
    /// The body waits forever after its bytes.
    Hang,
}

/// The upstream's answer to one attempt.
#[derive(Debug, Clone)]
pub struct AnswerSpec {
    pub latency: Option<Duration>,
    pub kind: AnswerKind,
}

#[derive(Debug, Clone)]
pub enum AnswerKind {
    /// The service fails (connect error).
    Transport,
    /// The service never answers.
    Hang,
    Http {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Blob,
        frames: Frames,
    },
}

const MODELS: [&str; 9] = [
    "fuzz/first",
    "fuzz/second",
    "openai/gpt-4o",
    "a\"b\\c/\u{1}",
    "\u{e9}/\u{fc}\u{1f680}",
    "",
    "x/y:free",
    "m",
    "fuzz/first",
];

const STATUSES: [u16; 20] = [
    200, 400, 401, 402, 403, 404, 408, 413, 422, 429, 500, 502, 503, 504, 524, 529, 201, 204, 302, 418,
];

fn decode_frames(inp: &mut Input<'_>, allow_hang: bool) -> Frames {
    let sizes = match inp.below(5) {
        0 | 1 => Vec::new(),
        2 => vec![1 + inp.below(64)],
        3 => (0..1 + inp.below(8)).map(|_| 1 + inp.below(200)).collect(),
        _ => vec![1, 1 + inp.below(4096)],
    };
    let ending = match inp.below(8) {
        5 | 6 => Ending::Fail,
        7 if allow_hang => Ending::Hang,
        _ => Ending::Clean,
    };
    Frames { sizes, ending }
}

fn decode_route(inp: &mut Input<'_>) -> RouteSpec {
    let model = match inp.below(12) {
        i if i < MODELS.len() => MODELS[i].to_owned(),
        _ => inp.pool_string(24),
    };
    let endpoint = inp.pick(&[
        EndpointKind::Local,
        EndpointKind::None,
        EndpointKind::LocalKeyed,
        EndpointKind::LocalOpenRouter,
        EndpointKind::LocalOpenRouterKeyed,
        EndpointKind::OpenRouter,
        EndpointKind::OpenRouterHostDenied,
        EndpointKind::None,
    ]);
    let provider = inp.pick(&[
        PrefsKind::None,
        PrefsKind::Empty,
        PrefsKind::Order,
        PrefsKind::Full,
        PrefsKind::None,
    ]);
    let native_fallbacks = match inp.below(6) {
        0..=2 => None,
        n => Some(
            (0..(n - 3) * 2 + inp.below(2))
                .map(|i| format!("fuzz/native-{i}"))
                .collect(),
        ),
    };
    let label = inp.pick(&[None, None, Some("primary"), Some("b\u{e9}ta"), Some("")]);
    let timeout = inp.pick(&[
        None,
        None,
        Some(Duration::from_secs(30)),
        Some(Duration::from_secs(1)),
        Some(Duration::ZERO),
    ]);
    let first_token_timeout = inp.pick(&[None, None, Some(Duration::from_secs(2))]);
    let idle_timeout = inp.pick(&[None, None, Some(Duration::from_secs(5)), Some(Duration::ZERO)]);
    RouteSpec {
        model,
        endpoint,
        provider,
        native_fallbacks,
        label,
        timeout,
        first_token_timeout,
        idle_timeout,
        anthropic: false,
        serves: None,
        shares_state: false,
    }
}

fn decode_answer(inp: &mut Input<'_>) -> AnswerSpec {
    if inp.dialect != Dialect::Chat {
        return decode_dialect_answer(inp);
    }
    let latency = inp.pick(&[
        None,
        None,
        None,
        Some(Duration::from_millis(50)),
        Some(Duration::from_millis(1500)),
        Some(Duration::from_secs(45)),
    ]);
    let kind =
        match inp.below(8) {
            0 => {
                let model = inp.pick(&MODELS);
                json_answer(inp, 200, completion(model, "ok"))
            }
            1 => {
                let status = STATUSES[1 + inp.below(STATUSES.len() - 1)];
                let body = error_body(inp);
                let mut answer = json_answer(inp, status, body);
                if let AnswerKind::Http { headers, .. } = &mut answer {
                    if inp.chance(80) {
                        headers.push((
                            "retry-after",
                            inp.pick(&["1", "120", "0", "soon", "99999999999"]).into(),
                        ));
                    }
                }
                answer
            }
            2 => {
                let body = match inp.below(7) {
                0 => error_body(inp),
                1 => br#"{"id":"x","object":"chat.completion"}"#.to_vec(),
                2 => br#"{"choices":[{"index":0,"message":{"role":"assistant","content":""},"finish_reason":"error"}]}"#
                    .to_vec(),
                3 => b"<html>upstream down</html>".to_vec(),
                4 => Vec::new(),
                5 => b"[]".to_vec(),
                _ => inp.pool_bytes(256),
            };
                json_answer(inp, 200, body)
            }
            3 | 4 => {
                let status = match inp.chance(40) {
                    true => inp.pick(&STATUSES),
                    false => 200,
                };
                let content_type = inp.pick(&[
                    "text/event-stream",
                    "text/event-stream; charset=utf-8",
                    "TEXT/EVENT-STREAM",
                    "application/json",
                ]);
                let body = sse_body(inp);
                AnswerKind::Http {
                    status,
                    headers: vec![("content-type", content_type.into())],
                    body: Blob(body),
                    frames: decode_frames(inp, true),
                }
            }
            5 => AnswerKind::Transport,
            6 => {
                let status = inp.pick(&STATUSES);
                let content_type = inp.pick(&["application/json", "text/plain", "text/event-stream", ""]);
                let body = inp.pool_bytes(1024);
                AnswerKind::Http {
                    status,
                    headers: vec![("content-type", content_type.into())],
                    body: Blob(body),
                    frames: decode_frames(inp, true),
                }
            }
            _ => match inp.chance(60) {
                true => AnswerKind::Hang,
                false => {
                    let model = inp.pick(&MODELS);
                    json_answer(inp, 200, completion(model, "fine"))
                }
            },
        };
    AnswerSpec { latency, kind }
}

/// An answer in the shape of the request's dialect (not chat).
fn decode_dialect_answer(inp: &mut Input<'_>) -> AnswerSpec {
    let dialect = inp.dialect;
    let latency = inp.pick(&[
        None,
        None,
        None,
        Some(Duration::from_millis(50)),
        Some(Duration::from_millis(1500)),
        Some(Duration::from_secs(45)),
    ]);
    let streams = dialect != Dialect::Embeddings || inp.chance(40);
    let kind = match inp.below(12) {
        0 | 1 => {
            let model = inp.pick(&MODELS);
            let body = good_answer(inp, dialect, model);
            json_answer(inp, 200, body)
        }
        2 => {
            let statuses: &[u16] = match dialect {
                Dialect::Messages => &[529, 529, 429, 500, 503, 400, 401, 403, 404, 413, 408, 502],
                _ => &STATUSES[1..],
            };
            let status = inp.pick(statuses);
            let body = match dialect {
                Dialect::Messages => anthropic_error(inp, status),
                _ => error_body(inp),
            };
            let mut answer = json_answer(inp, status, body);
            if let AnswerKind::Http { headers, .. } = &mut answer {
                if inp.chance(80) {
                    headers.push(("retry-after", inp.pick(&["1", "120", "0", "soon"]).into()));
                }
            }
            answer
        }
        3 => {
            let body = error_in_2xx(inp, dialect);
            json_answer(inp, 200, body)
        }
        4..=8 if streams => {
            let status = match inp.chance(40) {
                true => inp.pick(&STATUSES),
                false => 200,
            };
            let content_type = inp.pick(&[
                "text/event-stream",
                "text/event-stream; charset=utf-8",
                "TEXT/EVENT-STREAM",
                "application/json",
            ]);
            let body = match dialect {
                Dialect::Responses => responses_sse(inp),
                Dialect::Messages => messages_sse(inp),
                Dialect::Completions => completions_sse(inp),
                _ => sse_body(inp),
            };
            AnswerKind::Http {
                status,
                headers: vec![("content-type", content_type.into())],
                body: Blob(body),
                frames: decode_frames(inp, true),
            }
        }
        9 => AnswerKind::Transport,
        10 => {
            let status = inp.pick(&STATUSES);
            let content_type = inp.pick(&["application/json", "text/plain", "text/event-stream", ""]);
            let body = inp.pool_bytes(1024);
            AnswerKind::Http {
                status,
                headers: vec![("content-type", content_type.into())],
                body: Blob(body),
                frames: decode_frames(inp, true),
            }
        }
        _ => match inp.chance(60) {
            true => AnswerKind::Hang,
            false => {
                let model = inp.pick(&MODELS);
                let body = good_answer(inp, dialect, model);
                json_answer(inp, 200, body)
            }
        },
    };
    AnswerSpec { latency, kind }
}

fn to_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// A good answer of `dialect`.
fn good_answer(inp: &mut Input<'_>, dialect: Dialect, model: &str) -> Vec<u8> {
    let v = match dialect {
        Dialect::Responses => {
            let status = inp.pick(&["completed", "completed", "incomplete", "in_progress"]);
            let incomplete = match status {
                "incomplete" => serde_json::json!({"reason": "max_output_tokens"}),
                _ => Value::Null,
            };
            serde_json::json!({"id": "resp_fuzz", "object": "response", "created_at": 1, "model": model,
                "status": status, "error": null, "incomplete_details": incomplete,
                "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": "ok", "annotations": []}]}],
                "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4}})
        }
        Dialect::Messages => {
            let content = match inp.below(3) {
                0 => {
                    serde_json::json!([{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}])
                }
                _ => serde_json::json!([{"type": "text", "text": "ok"}]),
            };
            serde_json::json!({"id": "msg_fuzz", "type": "message", "role": "assistant", "model": model,
                "content": content, "stop_reason": inp.pick(&["end_turn", "max_tokens", "tool_use"]),
                "stop_sequence": null, "usage": {"input_tokens": 3, "output_tokens": 1}})
        }
        Dialect::Embeddings => serde_json::json!({"object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.0023, -0.0093, 0.5]}],
            "model": model, "usage": {"prompt_tokens": 3, "total_tokens": 3}}),
        _ => serde_json::json!({"id": "cmpl-fuzz", "object": "text_completion", "created": 1, "model": model,
            "provider": "Fuzz",
            "choices": [{"text": "ok", "index": 0, "logprobs": null, "finish_reason": inp.pick(&["stop", "length"])}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}),
    };
    to_vec(&v)
}

/// Anthropic's error JSON for `status`.
fn anthropic_error(inp: &mut Input<'_>, status: u16) -> Vec<u8> {
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    let message = match inp.below(4) {
        0 => "Overloaded".to_owned(),
        1 => "prompt is too long: 210000 tokens > 200000 maximum".to_owned(),
        2 => "Provider returned error".to_owned(),
        _ => inp.pool_string(48),
    };
    to_vec(&serde_json::json!({"type": "error", "error": {"type": kind, "message": message}}))
}

/// An error inside a 2xx, in `dialect`'s shape.
fn error_in_2xx(inp: &mut Input<'_>, dialect: Dialect) -> Vec<u8> {
    match (dialect, inp.below(4)) {
        (Dialect::Responses, 0 | 1) => to_vec(&serde_json::json!({"id": "resp_f", "object": "response",
            "status": "failed", "model": "fuzz/first",
            "error": {"code": inp.pick(&["server_error", "rate_limit_exceeded", "invalid_prompt"]),
                "message": "Provider returned error"},
            "output": [], "usage": null})),
        (Dialect::Responses, 2) => br#"{"id":"resp_f","object":"response","status":"completed","error":{"code":"x","message":"y"},"output":[]}"#.to_vec(),
        (Dialect::Messages, 0 | 1) => anthropic_error(inp, 529),
        (Dialect::Messages, 2) => br#"{"type":"message","role":"assistant"}"#.to_vec(),
        (Dialect::Embeddings, 0 | 1) => error_body(inp),
        (Dialect::Embeddings, 2) => br#"{"object":"list","data":[],"model":"m"}"#.to_vec(),
        (Dialect::Completions, 0 | 1) => br#"{"choices":[{"index":0,"text":"","finish_reason":"error"}]}"#.to_vec(),
        (_, 3) => b"<html>upstream down</html>".to_vec(),
        _ => error_body(inp),
    }
}

/// The line ending of one event (see [`sse_body`] for the styles).
fn eol_of(inp: &mut Input<'_>, style: usize) -> &'static [u8] {
    match style {
        0 => b"\n",
        1 => b"\r\n",
        2 => b"",
        3 => b"\r",
        _ => inp.pick(&[&b"\n"[..], b"\r\n", b"", b"\r"]),
    }
}

/// One SSE event: `event: <name>` when named, `data: <payload>`, a blank line.
fn push_event(out: &mut Vec<u8>, name: Option<&str>, payload: &[u8], eol: &[u8]) {
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(eol);
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(payload);
    out.extend_from_slice(eol);
    out.extend_from_slice(eol);
}

/// The kinds of events a stream of a dialect is made of: a whole stream,
/// one cut before its end, one that errs first, or any mix.
fn stream_plan(inp: &mut Input<'_>, preamble: &[u8], content: &[u8], end: &[u8], error: u8, kinds: u8) -> Vec<u8> {
    let deltas = 1 + inp.below(4);
    match inp.below(5) {
        // Whole: preamble, content, the proper end.
        0 | 1 => {
            let mut plan = preamble.to_vec();
            for _ in 0..deltas {
                plan.push(inp.pick(content));
            }
            plan.extend_from_slice(end);
            plan
        }
        // Cut before its end, maybe with an error after the content.
        2 => {
            let mut plan = preamble.to_vec();
            for _ in 0..deltas {
                plan.push(inp.pick(content));
            }
            if inp.chance(100) {
                plan.push(error);
            }
            plan
        }
        // An error before any content, then (a replay would not see it) more.
        3 => {
            let mut plan = preamble[..1.min(preamble.len())].to_vec();
            plan.push(error);
            plan.extend_from_slice(&content[..1]);
            plan
        }
        _ => (0..1 + inp.below(10))
            .map(|_| inp.below(kinds as usize) as u8)
            .collect(),
    }
}

/// A Responses event stream: `event:` lines, `sequence_number`s, the
/// preamble events, deltas of every kind, the terminal events, errors,
/// keep-alives, `[DONE]`, malformed and huge events.
fn responses_sse(inp: &mut Input<'_>) -> Vec<u8> {
    let style = inp.below(10).min(4);
    // 0 created, 1 in_progress, 2 output_item.added (empty), 3
    // content_part.added (empty), 4 text delta, 5 empty text delta, 6
    // arguments delta, 7 reasoning delta, 8 completed, 9 incomplete, 10
    // response.failed, 11 error, 12 keep-alive, 13 [DONE], 14 text done, 15
    // pool bytes, 16 huge delta, 17 refusal delta, 18 queued, 19 an item
    // with content.
    let plan = stream_plan(inp, &[0, 1, 2, 3, 12], &[4, 4, 6, 7, 17, 19, 5], &[14, 8], 11, 20);
    let mut out = Vec::new();
    let id = inp.pick(&["resp_abc", "resp_\u{e9}\"x", ""]);
    let model = inp.pick(&MODELS);
    for (seq, kind) in plan.into_iter().enumerate() {
        let eol = eol_of(inp, style);
        let head = |status: &str| {
            serde_json::json!({"id": id, "object": "response", "created_at": 1,
            "model": model, "status": status, "error": null, "output": []})
        };
        let (name, data): (&str, Value) = match kind {
            0 => ("response.created", serde_json::json!({"response": head("in_progress")})),
            1 => (
                "response.in_progress",
                serde_json::json!({"response": head("in_progress")}),
            ),
            2 => (
                "response.output_item.added",
                serde_json::json!({"output_index": 0,
                "item": {"type": "message", "id": "msg_1", "role": "assistant", "status": "in_progress", "content": []}}),
            ),
            3 => (
                "response.content_part.added",
                serde_json::json!({"item_id": "msg_1", "output_index": 0,
                "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
            ),
            4 | 5 => {
                let text = match (kind, inp.below(3)) {
                    (5, _) => String::new(),
                    (_, 0) => "Hel".to_owned(),
                    (_, 1) => "lo \\n\"".to_owned(),
                    _ => inp.pool_string(16),
                };
                (
                    "response.output_text.delta",
                    serde_json::json!({"item_id": "msg_1", "output_index": 0,
                    "content_index": 0, "delta": text}),
                )
            }
            6 => (
                "response.function_call_arguments.delta",
                serde_json::json!({"item_id": "fc_1",
                "output_index": 0, "delta": "{\"city\":"}),
            ),
            7 => (
                "response.reasoning_summary_text.delta",
                serde_json::json!({"item_id": "rs_1",
                "output_index": 0, "summary_index": 0, "delta": "Thinking"}),
            ),
            8 => {
                let mut r = head("completed");
                r["usage"] = serde_json::json!({"input_tokens": 3, "output_tokens": 2, "total_tokens": 5});
                ("response.completed", serde_json::json!({"response": r}))
            }
            9 => {
                let mut r = head("incomplete");
                r["incomplete_details"] = serde_json::json!({"reason": "max_output_tokens"});
                ("response.incomplete", serde_json::json!({"response": r}))
            }
            10 => {
                let mut r = head("failed");
                r["error"] = serde_json::json!({"code": "server_error", "message": "Provider disconnected"});
                ("response.failed", serde_json::json!({"response": r}))
            }
            11 => (
                "error",
                serde_json::json!({"code": inp.pick(&["insufficient_quota", "rate_limit_exceeded"]),
                "message": "Provider returned error", "param": null}),
            ),
            12 => {
                out.extend_from_slice(b": keep-alive");
                out.extend_from_slice(eol);
                out.extend_from_slice(eol);
                continue;
            }
            13 => {
                push_event(&mut out, None, b"[DONE]", eol);
                continue;
            }
            14 => (
                "response.output_text.done",
                serde_json::json!({"item_id": "msg_1", "output_index": 0,
                "content_index": 0, "text": "Hello"}),
            ),
            15 => {
                out.extend_from_slice(&inp.pool_bytes(128));
                continue;
            }
            16 => {
                let size = match inp.chance(3) {
                    true => 8 * 1024 * 1024 + 1,
                    false => 1024usize << inp.below(11),
                };
                (
                    "response.output_text.delta",
                    serde_json::json!({"item_id": "msg_1", "output_index": 0,
                    "content_index": 0, "delta": "x".repeat(size)}),
                )
            }
            17 => (
                "response.refusal.delta",
                serde_json::json!({"item_id": "msg_1", "output_index": 0,
                "content_index": 0, "delta": "I can't"}),
            ),
            18 => ("response.queued", serde_json::json!({"response": head("queued")})),
            _ => (
                "response.output_item.added",
                serde_json::json!({"output_index": 0,
                "item": {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather", "arguments": "{}"}}),
            ),
        };
        let mut data = data;
        data["type"] = Value::from(name);
        if !inp.chance(20) {
            data["sequence_number"] = Value::from(seq);
        }
        // Now and then the `event:` line is missing (the type is in the data).
        let named = !inp.chance(20);
        push_event(&mut out, named.then_some(name), &to_vec(&data), eol);
    }
    cut_tail(inp, &mut out);
    out
}

/// An Anthropic Messages event stream: `message_start`, `ping`, empty and
/// filled `content_block_start`, deltas of every kind, `message_delta`,
/// `message_stop`, `error` events, keep-alives, malformed and huge events.
fn messages_sse(inp: &mut Input<'_>) -> Vec<u8> {
    let style = inp.below(10).min(4);
    // 0 message_start, 1 empty content_block_start, 2 ping, 3 text delta, 4
    // input_json delta, 5 thinking delta, 6 content_block_stop, 7
    // message_delta with stop_reason, 8 message_stop, 9 error
    // (overloaded), 10 keep-alive, 11 message_delta without stop_reason, 12
    // tool_use content_block_start, 13 pool bytes, 14 huge delta, 15
    // [DONE], 16 an empty text delta.
    let plan = stream_plan(inp, &[0, 1, 2, 10], &[3, 3, 4, 5, 12, 16], &[6, 7, 8], 9, 17);
    let mut out = Vec::new();
    let model = inp.pick(&MODELS);
    for kind in plan {
        let eol = eol_of(inp, style);
        let (name, data): (&str, Value) = match kind {
            0 => (
                "message_start",
                serde_json::json!({"message": {"id": "msg_1", "type": "message",
                "role": "assistant", "model": model, "content": [], "stop_reason": null,
                "usage": {"input_tokens": 7, "output_tokens": 1}}}),
            ),
            1 => (
                "content_block_start",
                serde_json::json!({"index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            2 => ("ping", serde_json::json!({})),
            3 | 16 => {
                let text = match (kind, inp.below(3)) {
                    (16, _) => String::new(),
                    (_, 0) => "Hel".to_owned(),
                    (_, 1) => "lo \\n\"".to_owned(),
                    _ => inp.pool_string(16),
                };
                (
                    "content_block_delta",
                    serde_json::json!({"index": 0, "delta": {"type": "text_delta", "text": text}}),
                )
            }
            4 => (
                "content_block_delta",
                serde_json::json!({"index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Os"}}),
            ),
            5 => (
                "content_block_delta",
                serde_json::json!({"index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me"}}),
            ),
            6 => ("content_block_stop", serde_json::json!({"index": 0})),
            7 => (
                "message_delta",
                serde_json::json!({"delta": {"stop_reason": inp.pick(&["end_turn", "max_tokens", "tool_use"]),
                "stop_sequence": null}, "usage": {"output_tokens": 15}}),
            ),
            8 => ("message_stop", serde_json::json!({})),
            9 => (
                "error",
                serde_json::json!({"error": {"type": inp.pick(&["overloaded_error", "api_error"]),
                "message": "Overloaded"}}),
            ),
            10 => {
                out.extend_from_slice(b": keep-alive");
                out.extend_from_slice(eol);
                out.extend_from_slice(eol);
                continue;
            }
            11 => (
                "message_delta",
                serde_json::json!({"delta": {"stop_reason": null}, "usage": {"output_tokens": 2}}),
            ),
            12 => (
                "content_block_start",
                serde_json::json!({"index": 1, "content_block": {"type": "tool_use",
                "id": "toolu_1", "name": "get_weather", "input": {}}}),
            ),
            13 => {
                out.extend_from_slice(&inp.pool_bytes(128));
                continue;
            }
            14 => {
                let size = match inp.chance(3) {
                    true => 8 * 1024 * 1024 + 1,
                    false => 1024usize << inp.below(11),
                };
                (
                    "content_block_delta",
                    serde_json::json!({"index": 0, "delta": {"type": "text_delta", "text": "x".repeat(size)}}),
                )
            }
            _ => {
                push_event(&mut out, None, b"[DONE]", eol);
                continue;
            }
        };
        let mut data = data;
        data["type"] = Value::from(name);
        let named = !inp.chance(20);
        push_event(&mut out, named.then_some(name), &to_vec(&data), eol);
    }
    cut_tail(inp, &mut out);
    out
}

/// Now and then the stream's last line break or blank line is missing (an
/// upstream that stopped one or two bytes short).
fn cut_tail(inp: &mut Input<'_>, out: &mut Vec<u8>) {
    let cut = match inp.below(10) {
        0 => 1,
        1 => 2,
        _ => 0,
    };
    out.truncate(out.len().saturating_sub(cut));
}

/// A legacy completions stream: `text_completion` chunks with
/// `choices[].text`, a final `finish_reason`, `[DONE]`, errors,
/// keep-alives, malformed events.
fn completions_sse(inp: &mut Input<'_>) -> Vec<u8> {
    let style = inp.below(10).min(4);
    // 0 keep-alive, 1 text, 2 empty text, 3 finish, 4 [DONE], 5 error chunk,
    // 6 pool bytes, 7 malformed.
    let plan = stream_plan(inp, &[0, 2], &[1, 1, 2], &[3, 4], 5, 8);
    let mut out = Vec::new();
    for kind in plan {
        let eol = eol_of(inp, style);
        let chunk = |text: &str, finish: Value| {
            to_vec(
                &serde_json::json!({"id": "cmpl-1", "object": "text_completion", "created": 1,
                "model": "fuzz/first", "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]}),
            )
        };
        match kind {
            0 => {
                out.extend_from_slice(b": OPENROUTER PROCESSING");
                out.extend_from_slice(eol);
                out.extend_from_slice(eol);
            }
            1 => {
                let text = match inp.below(2) {
                    0 => "Hel".to_owned(),
                    _ => inp.pool_string(16),
                };
                push_event(&mut out, None, &chunk(&text, Value::Null), eol);
            }
            2 => push_event(&mut out, None, &chunk("", Value::Null), eol),
            3 => push_event(&mut out, None, &chunk("", Value::from("stop")), eol),
            4 => push_event(&mut out, None, b"[DONE]", eol),
            5 => push_event(
                &mut out,
                None,
                br#"{"error":{"code":"server_error","message":"Provider disconnected"},"choices":[{"index":0,"text":"","finish_reason":"error"}]}"#,
                eol,
            ),
            6 => out.extend_from_slice(&inp.pool_bytes(128)),
            _ => push_event(&mut out, None, b"{not json", eol),
        }
    }
    out
}

fn json_answer(inp: &mut Input<'_>, status: u16, body: Vec<u8>) -> AnswerKind {
    let content_type = inp.pick(&["application/json", "application/json", "text/plain", ""]);
    AnswerKind::Http {
        status,
        headers: vec![("content-type", content_type.into())],
        body: Blob(body),
        frames: decode_frames(inp, true),
    }
}

/// The answer to an attempt the script has none for: a good one of the
/// dialect (chat: a completion, as always).
fn default_answer(dialect: Dialect) -> Vec<u8> {
    let mut inp = Input {
        control: &[],
        at: 0,
        pool: &[],
        pool_at: 0,
        dialect,
    };
    match dialect {
        Dialect::Chat => completion("fuzz/served", "ok"),
        d => good_answer(&mut inp, d, "fuzz/served"),
    }
}

fn completion(model: &str, text: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": "gen-fuzz",
        "object": "chat.completion",
        "model": model,
        "provider": "Fuzz",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }))
    .unwrap_or_default()
}

fn error_body(inp: &mut Input<'_>) -> Vec<u8> {
    let code = [
        Value::from(400),
        Value::from(429),
        Value::from(502),
        Value::from("context_length_exceeded"),
        Value::from("content_policy_violation"),
        Value::from("model_not_found"),
        Value::Null,
    ];
    let code = code[inp.below(code.len())].clone();
    let message = match inp.below(5) {
        0 => "model fuzz/first is not a valid model ID".to_owned(),
        1 => "No endpoints found for fuzz/first".to_owned(),
        2 => "This model's maximum context length is 8192 tokens".to_owned(),
        3 => "Provider returned error".to_owned(),
        _ => inp.pool_string(64),
    };
    let error = match inp.below(3) {
        0 => serde_json::json!({"code": code, "message": message}),
        1 => serde_json::json!({"code": code, "message": message,
            "metadata": {"provider_name": "Fuzz", "raw": "raw provider text", "reasons": ["violence"], "flagged_input": "x"}}),
        _ => serde_json::json!({"message": message, "type": "invalid_request_error"}),
    };
    serde_json::to_vec(&serde_json::json!({ "error": error })).unwrap_or_default()
}

/// An event stream from parts: tokens, keep-alives, errors, `[DONE]`,
/// malformed and huge events, with one of several line endings.
fn sse_body(inp: &mut Input<'_>) -> Vec<u8> {
    // 0: \n, 1: \r\n, 2: no line breaks at all, 3: \r only, 4: mixed.
    let style = inp.below(8).min(4);
    let mut out = Vec::new();
    let events = inp.below(10);
    let events = if events == 0 { 3 } else { events };
    for n in 0..events {
        let eol: &[u8] = match style {
            0 => b"\n",
            1 => b"\r\n",
            2 => b"",
            3 => b"\r",
            _ => inp.pick(&[&b"\n"[..], b"\r\n", b"", b"\r"]),
        };
        let data = |payload: &[u8], out: &mut Vec<u8>| {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(payload);
            out.extend_from_slice(eol);
            out.extend_from_slice(eol);
        };
        let kind = if n == 0 && events == 3 { 0 } else { inp.below(14) };
        match kind {
            0..=2 => {
                let text = match inp.below(4) {
                    0 => "Hel".to_owned(),
                    1 => "lo \\n\"".to_owned(),
                    2 => String::new(),
                    _ => inp.pool_string(16),
                };
                let chunk = serde_json::json!({"id": "gen", "model": inp.pick(&MODELS), "provider": "Fuzz",
                    "choices": [{"index": 0, "delta": {"content": text}}]});
                data(&serde_json::to_vec(&chunk).unwrap_or_default(), &mut out);
            }
            3 => data(
                br#"{"id":"gen","model":"fuzz/first","choices":[{"index":0,"delta":{"role":"assistant"}}]}"#,
                &mut out,
            ),
            4 => {
                out.extend_from_slice(b": OPENROUTER PROCESSING");
                out.extend_from_slice(eol);
                out.extend_from_slice(eol);
            }
            5 => data(b"[DONE]", &mut out),
            6 => data(
                br#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
                &mut out,
            ),
            7 => data(
                br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
                &mut out,
            ),
            8 => data(
                br#"{"error":{"code":"server_error","message":"Provider disconnected"},"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}"#,
                &mut out,
            ),
            9 => data(b"{not json", &mut out),
            10 => {
                // One event in two data lines.
                out.extend_from_slice(b"data: {\"choices\":[{\"delta\":");
                out.extend_from_slice(eol);
                out.extend_from_slice(b"data: {\"content\":\"two lines\"}}]}");
                out.extend_from_slice(eol);
                out.extend_from_slice(eol);
            }
            11 => {
                out.extend_from_slice(b"event: message");
                out.extend_from_slice(eol);
                out.extend_from_slice(b"id: 7");
                out.extend_from_slice(eol);
                out.extend_from_slice(b"retry: 10");
                out.extend_from_slice(eol);
            }
            12 => {
                // A huge event: up to 1 MiB of content, maybe with no line break.
                // Now and then past the layer's 8 MiB event limit.
                let size = match inp.chance(3) {
                    true => 8 * 1024 * 1024 + 1,
                    false => 1024usize << inp.below(11),
                };
                let mut chunk = b"{\"choices\":[{\"delta\":{\"content\":\"".to_vec();
                chunk.resize(chunk.len() + size, b'x');
                chunk.extend_from_slice(b"\"}}]}");
                data(&chunk, &mut out);
            }
            _ => out.extend_from_slice(&inp.pool_bytes(128)),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Generated request bodies.

const SPACES: [&str; 5] = ["", " ", "\n", "\t ", "\r\n  "];

/// A JSON object built from members in random order, with the keys the
/// layer reads (often escaped) between other keys.
fn generate_body(inp: &mut Input<'_>) -> Vec<u8> {
    let mut members: Vec<(String, String)> = Vec::new();
    let count = inp.below(12);
    let mut has_model = false;
    for _ in 0..count {
        let (key, value) = member(inp);
        // Mostly one copy of a key (duplicates are refused, which ends the case early).
        if members.iter().any(|(k, _)| *k == key) && !inp.chance(40) {
            continue;
        }
        has_model |= key == "\"model\"" || key == "\"mod\\u0065l\"";
        members.push((key, value));
    }
    if !has_model && !inp.chance(16) {
        let at = inp.below(members.len() + 1);
        let value = model_value(inp);
        members.insert(at, ("\"model\"".into(), value));
    }
    let mut out = String::new();
    let ws = inp.below(SPACES.len());
    let sp = |inp: &mut Input<'_>| -> &'static str {
        match ws {
            0 => "",
            _ => SPACES[inp.below(SPACES.len())],
        }
    };
    out.push_str(sp(inp));
    out.push('{');
    for (i, (key, value)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(sp(inp));
        out.push_str(key);
        out.push_str(sp(inp));
        out.push(':');
        out.push_str(sp(inp));
        out.push_str(value);
        out.push_str(sp(inp));
    }
    out.push('}');
    match inp.below(32) {
        0 => out.push('\n'),
        1 => out.push_str(" x"),
        2 => out.push(','),
        _ => {}
    }
    let mut bytes = out.into_bytes();
    if inp.chance(12) {
        // Damage one byte.
        if !bytes.is_empty() {
            let at = inp.below(bytes.len());
            bytes[at] = inp.byte();
        }
    }
    bytes
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn model_value(inp: &mut Input<'_>) -> String {
    match inp.below(10) {
        0..=5 => json_string(inp.pick(&MODELS)),
        6 => json_string(&inp.pool_string(20)),
        7 => "\"fuzz\\/first\"".into(),
        8 => inp.pick(&["42", "null", "{\"model\":\"a\"}", "[\"a\"]", "true"]).into(),
        _ => "\"caf\\u00e9\"".into(),
    }
}

fn member(inp: &mut Input<'_>) -> (String, String) {
    if inp.dialect != Dialect::Chat {
        // Half the members the dialect's own, half the keys every body has.
        if !inp.chance(110) {
            return dialect_member(inp);
        }
    }
    let key = inp.below(20);
    let (key, value): (&str, String) = match key {
        0 => ("\"model\"", model_value(inp)),
        1 => ("\"messages\"", messages(inp)),
        2 => ("\"provider\"", provider_value(inp)),
        3 => ("\"models\"", models_value(inp)),
        4 => ("\"route\"", inp.pick(&["\"fallback\"", "\"x\"", "null", "{}"]).into()),
        5 => ("\"transforms\"", inp.pick(&["[]", "[\"middle-out\"]", "\"x\""]).into()),
        6 => ("\"stream\"", inp.pick(&["true", "false", "\"true\"", "null"]).into()),
        7..=9 => (
            inp.pick(&["\"a\"", "\"b\"", "\"c\"", "\"temperature\""]),
            generic_value(inp),
        ),
        10 => (
            "\"max_tokens\"",
            inp.pick(&["16", "100000000", "-1", "1e3", "\"x\""]).into(),
        ),
        11 => (
            "\"tools\"",
            inp.pick(&["[]", "[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]", "null"])
                .into(),
        ),
        12 => {
            let key = inp.pick(&[
                "\"provid\\u0065r\"",
                "\"m\\u006fdels\"",
                "\"r\\u006fute\"",
                "\"tr\\u0061nsforms\"",
                "\"mod\\u0065l\"",
                "\"str\\u0065am\"",
            ]);
            let value = match key {
                "\"mod\\u0065l\"" => model_value(inp),
                "\"provid\\u0065r\"" => provider_value(inp),
                "\"m\\u006fdels\"" => models_value(inp),
                _ => generic_value(inp),
            };
            (key, value)
        }
        13 => {
            let key = json_string(&inp.pool_string(12));
            return (key, generic_value(inp));
        }
        14 => (
            inp.pick(&["\"provider \"", "\"Model\"", "\"route\\\\\"", "\"\""]),
            generic_value(inp),
        ),
        15 => ("\"response_format\"", "{\"type\":\"json_schema\"}".into()),
        _ => (inp.pick(&["\"a\"", "\"b\"", "\"user\""]), generic_value(inp)),
    };
    (key.to_owned(), value)
}

/// A member of the dialect's own request shape.
fn dialect_member(inp: &mut Input<'_>) -> (String, String) {
    let (key, value): (&str, String) = match inp.dialect {
        Dialect::Responses => match inp.below(17) {
            0..=2 | 14..=16 => ("\"input\"", responses_input(inp)),
            3 => ("\"instructions\"", inp.pick(&["\"Be brief.\"", "null", "\"\\\"model\\\": x\""]).into()),
            4 => ("\"tools\"", inp.pick(&[
                "[]",
                r#"[{"type":"function","name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}]"#,
                r#"[{"type":"web_search"}]"#,
                "null",
            ]).into()),
            5 => ("\"max_output_tokens\"", inp.pick(&["64", "100000000", "null", "\"x\"", "0"]).into()),
            6 => ("\"previous_response_id\"", inp.pick(&["\"resp_123\"", "null", "null", "null", "\"\"", "7"]).into()),
            7 => ("\"conversation\"", inp.pick(&["\"conv_1\"", "{\"id\":\"conv_1\"}", "null", "null", "null"]).into()),
            8 => ("\"text\"", inp.pick(&[
                r#"{"format":{"type":"json_schema","name":"x","schema":{"type":"object"}}}"#,
                r#"{"format":{"type":"text"}}"#,
            ]).into()),
            9 => ("\"reasoning\"", "{\"effort\":\"low\"}".into()),
            10 => ("\"store\"", inp.pick(&["false", "true"]).into()),
            11 => ("\"include\"", "[\"reasoning.encrypted_content\"]".into()),
            12 => (inp.pick(&["\"prev\\u0069ous_response_id\"", "\"c\\u006fnversation\"", "\"\\u0069nput\""]), inp.pick(&["\"resp_9\"", "null", "null", "[]"]).into()),
            _ => ("\"background\"", inp.pick(&["true", "false"]).into()),
        },
        Dialect::Messages => match inp.below(12) {
            0..=2 => ("\"messages\"", messages_blocks(inp)),
            3 => ("\"system\"", inp.pick(&[
                "\"You are terse.\"",
                r#"[{"type":"text","text":"sys","cache_control":{"type":"ephemeral"}}]"#,
                "null",
            ]).into()),
            4 => ("\"tools\"", inp.pick(&[
                r#"[{"name":"get_weather","description":"d","input_schema":{"type":"object"}}]"#,
                "[]",
            ]).into()),
            5..=6 => ("\"max_tokens\"", inp.pick(&["1024", "64", "100000000", "\"x\"", "null", "-1"]).into()),
            7 => ("\"thinking\"", inp.pick(&[
                r#"{"type":"enabled","budget_tokens":2048}"#,
                r#"{"type":"disabled"}"#,
                "null",
            ]).into()),
            8 => ("\"tool_choice\"", inp.pick(&[r#"{"type":"auto"}"#, r#"{"type":"none"}"#, r#"{"type":"tool","name":"f"}"#]).into()),
            9 => ("\"stop_sequences\"", "[\"\\n\\nHuman:\"]".into()),
            10 => ("\"metadata\"", "{\"user_id\":\"u-1\"}".into()),
            _ => ("\"temperature\"", inp.pick(&["0.5", "1"]).into()),
        },
        Dialect::Embeddings => match inp.below(6) {
            0..=2 => ("\"input\"", inp.pick(&[
                "\"The food was delicious\"",
                "[\"a\",\"b\",\"\\u00e9\"]",
                "[1,2,3,50256]",
                "[[1,2],[3]]",
                "[]",
                "\"\"",
            ]).into()),
            3 => ("\"encoding_format\"", inp.pick(&["\"float\"", "\"base64\""]).into()),
            4 => ("\"dimensions\"", inp.pick(&["256", "0", "\"x\""]).into()),
            _ => ("\"user\"", json_string(&inp.pool_string(16))),
        },
        _ => match inp.below(6) {
            0..=2 => ("\"prompt\"", match inp.below(4) {
                0 => "\"Say this is a test\"".into(),
                1 => "[\"a\",\"b\"]".into(),
                2 => "[1,2,3]".into(),
                _ => json_string(&inp.pool_string(48)),
            }),
            3 => ("\"max_tokens\"", inp.pick(&["16", "100000000", "null", "\"x\""]).into()),
            4 => ("\"suffix\"", "\"end\"".into()),
            _ => ("\"echo\"", inp.pick(&["true", "false"]).into()),
        },
    };
    (key.to_owned(), value)
}

/// A Responses `input`: a string, or items (messages with text, image and
/// file parts, function call outputs).
fn responses_input(inp: &mut Input<'_>) -> String {
    match inp.below(7) {
        0 => "\"Hello\"".into(),
        1 => json_string(&inp.pool_string(64)),
        2 => r#"[{"role":"user","content":[{"type":"input_text","text":"What is in this image?"},{"type":"input_image","image_url":"data:image/png;base64,AAAA"}]}]"#.into(),
        3 => r#"[{"role":"user","content":[{"type":"input_file","filename":"a.pdf","file_data":"data:application/pdf;base64,JVBERi0="}]}]"#.into(),
        4 => r#"[{"type":"function_call_output","call_id":"call_1","output":"{\"t\":21}"},{"role":"user","content":"model"}]"#.into(),
        5 => "[]".into(),
        _ => format!(r#"[{{"role":"user","content":"{}"}}]"#, "y".repeat(16usize << inp.below(12))),
    }
}

/// Anthropic `messages`: string content, or blocks (text, image, document,
/// tool use and result).
fn messages_blocks(inp: &mut Input<'_>) -> String {
    match inp.below(7) {
        0 => r#"[{"role":"user","content":"Hello, Claude"}]"#.into(),
        1 => format!(r#"[{{"role":"user","content":{}}}]"#, json_string(&inp.pool_string(64))),
        2 => r#"[{"role":"user","content":[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"AAAA"}},{"type":"text","text":"model?"}]}]"#.into(),
        3 => r#"[{"role":"user","content":[{"type":"document","source":{"type":"base64","media_type":"application/pdf","data":"JVBERi0="}}]}]"#.into(),
        4 => r#"[{"role":"user","content":"w?"},{"role":"assistant","content":[{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Oslo"}}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"21C"}]}]"#.into(),
        5 => "[]".into(),
        _ => format!(r#"[{{"role":"user","content":"{}"}}]"#, "y".repeat(16usize << inp.below(12))),
    }
}

fn messages(inp: &mut Input<'_>) -> String {
    match inp.below(6) {
        0 => "[]".into(),
        1 => r#"[{"role":"user","content":"hi"}]"#.into(),
        2 => format!(r#"[{{"role":"user","content":{}}}]"#, json_string(&inp.pool_string(64))),
        3 => r#"[{"role":"user","content":[{"type":"text","text":"model"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]"#.into(),
        4 => {
            let size = 16usize << inp.below(13);
            format!(r#"[{{"role":"user","content":"{}"}}]"#, "y".repeat(size))
        }
        _ => r#"[{"role":"system","content":"{\"model\":\"inner\",\"provider\":{}}"},{"role":"user","content":"\u00e9\ud83d\ude80"}]"#.into(),
    }
}

fn provider_value(inp: &mut Input<'_>) -> String {
    inp.pick(&[
        "{}",
        "{\"order\":[\"a\",\"b\"]}",
        "null",
        "\"x\"",
        "{\"model\":\"inner\"}",
        "[1]",
    ])
    .into()
}

fn models_value(inp: &mut Input<'_>) -> String {
    inp.pick(&["[]", "[\"x/y\"]", "[\"a\",\"b\",\"c\"]", "\"str\"", "null"])
        .into()
}

fn generic_value(inp: &mut Input<'_>) -> String {
    match inp.below(16) {
        0 => "1".into(),
        1 => "\"s\"".into(),
        2 => "{}".into(),
        3 => "[]".into(),
        4 => r#"{"model":"nested","provider":{},"route":"x"}"#.into(),
        5 => "-0.5e+10".into(),
        6 => "true".into(),
        7 => "null".into(),
        8 => json_string(&inp.pool_string(32)),
        9 => String::from_utf8_lossy(&inp.pool_bytes(16)).into_owned(),
        10 => "[[[[{\"a\":[1,{\"b\":\"}\"}]}]]]]".into(),
        11 => "\"say \\\"model\\\": \\\"x\\\" \\\\\\\"\"".into(),
        12 => "{\"code\":\"fn main() { println!(\\\"{}\\\", x); }\"}".into(),
        13 => {
            // Escape-dense text (code, JSON in a string), block edges anywhere.
            let mut text = String::from("[\"");
            for _ in 0..1 + inp.below(10) {
                text.push_str(&"a".repeat(inp.below(80)));
                text.push_str(inp.pick(&["\\\"", "\\\\", "\\\\\\\"", "\\n"]));
            }
            text.push_str("\"]");
            text
        }
        _ => "\"\\\"\\\\\\u0000\"".into(),
    }
}

// ---------------------------------------------------------------------------
// Decoding.

/// Reads a case from any bytes (see the module docs for the format).
pub fn decode(data: &[u8]) -> Case {
    decode_as(data, None)
}

/// The dialect prefix: `0xFE` and this many bytes (zeros past the input's
/// end).
pub const DIALECT_PREFIX: usize = 16;

/// [`decode`], with the dialect `dialect` when given (else the input's).
///
/// An input that starts with `0xFE` has a dialect prefix: the
/// [`DIALECT_PREFIX`] bytes after it pick the dialect (zero: chat), how
/// the caller says it (path or extension), the caller's Anthropic headers,
/// and for each route whether its endpoint is Anthropic's API, OpenAI's,
/// limited to some dialects, or shares a stateful request's state. The rest
/// is an input of the format above, whose generated bodies and answers are
/// in the dialect's shapes. No input saved before dialects starts with
/// `0xFE` (a JSON body cannot): each is the same chat case.
pub fn decode_as(data: &[u8], dialect: Option<Dialect>) -> Case {
    let (prefix, rest) = match data.first() {
        Some(&0xFE) => {
            let p = &data[1..];
            let n = p.len().min(DIALECT_PREFIX);
            (&p[..n], &p[n..])
        }
        _ => (&[][..], data),
    };
    let (control, tail) = match rest.iter().position(|&b| b == 0xFF) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (&[][..], rest),
    };
    let mut inp = Input {
        control: prefix,
        at: 0,
        pool: &[],
        pool_at: 0,
        dialect: Dialect::Chat,
    };
    let chosen = Dialect::ALL[inp.byte() as usize % Dialect::ALL.len()];
    let dialect = dialect.unwrap_or(chosen);
    let mut case = decode_pass(control, tail, dialect);
    case.dialect_prefix = !prefix.is_empty();
    case.dialect_via = inp.pick(&[
        DialectVia::Path,
        DialectVia::Path,
        DialectVia::PathSlash,
        DialectVia::Extension,
        DialectVia::ExtensionOverPath,
    ]);
    let anthropic = inp.byte();
    case.anthropic_version = anthropic & 1 != 0;
    case.anthropic_beta = anthropic & 2 != 0;
    for r in case.routes.iter_mut().chain(case.policy_routes.iter_mut()) {
        let variant = inp.below(9);
        let bits = inp.byte() & ALL_DIALECT_BITS;
        match (variant, r.endpoint) {
            (0, _) => {}
            (3, _) => r.endpoint = EndpointKind::AnthropicHost,
            (4, _) => r.endpoint = EndpointKind::OpenAiHost,
            (_, EndpointKind::None) => {}
            (1 | 2, _) => r.anthropic = true,
            (5, _) => r.serves = Some(bits),
            (6, _) => r.shares_state = true,
            (7, _) => {
                r.anthropic = true;
                r.shares_state = true;
            }
            _ => r.serves = Some(bits | dialect_bit(dialect)),
        }
    }
    case
}

/// `data` with a dialect prefix picking `dialect` (an existing prefix's
/// first byte replaced): the same input read as that dialect.
pub fn with_dialect(data: &[u8], dialect: Dialect) -> Vec<u8> {
    let mut out = match data.first() {
        Some(&0xFE) => data.to_vec(),
        _ => {
            let mut out = vec![0xFE];
            out.resize(1 + DIALECT_PREFIX, 0);
            out.extend_from_slice(data);
            out
        }
    };
    if out.len() < 2 {
        out.resize(1 + DIALECT_PREFIX, 0);
    }
    out[1] = dialect_index(dialect) as u8;
    out
}

/// The control and tail read as `dialect`.
fn decode_pass(control: &[u8], tail: &[u8], dialect: Dialect) -> Case {
    let mut inp = Input {
        control,
        at: 0,
        pool: tail,
        pool_at: 0,
        dialect,
    };
    let (body_mode, body) = match inp.below(4) {
        0 | 3 => ("raw", tail.to_vec()),
        _ => ("generated", generate_body(&mut inp)),
    };
    let caller_frames = match inp.chance(24) {
        true => decode_frames(&mut inp, false),
        false => Frames {
            sizes: Vec::new(),
            ending: Ending::Clean,
        },
    };
    let routes: Vec<RouteSpec> = (0..1 + inp.below(4)).map(|_| decode_route(&mut inp)).collect();
    let deadline = inp.pick(&[
        None,
        Some(Duration::from_secs(120)),
        Some(Duration::from_secs(10)),
        Some(Duration::ZERO),
        None,
    ]);
    let hedge_after = match inp.chance(24) {
        true => Some(inp.pick(&[Duration::from_millis(100), Duration::from_secs(1)])),
        false => None,
    };
    let max_body_bytes = inp.pick(&[
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        Some(16),
        Some(64),
        Some(1024),
    ]);
    let max_response_bytes = inp.pick(&[None, None, None, Some(32), Some(300), Some(4096)]);
    // Every credential header unless the control says otherwise.
    let mask = !inp.byte();
    let credentials = (0..CREDENTIALS.len()).filter(|i| mask & (1 << i) != 0).collect();
    let host = inp.byte() & 1 == 0;
    let content_length = inp.pick(&[
        ContentLength::None,
        ContentLength::Exact,
        ContentLength::None,
        ContentLength::Wrong,
        ContentLength::None,
        ContentLength::Exact,
        ContentLength::None,
        ContentLength::Huge,
    ]);
    let chunked = inp.chance(20);
    let chain_header = match inp.chance(10) {
        true => Some(inp.pick(&["nope", "default", ""])),
        false => None,
    };
    let answers = (0..inp.below(6)).map(|_| decode_answer(&mut inp)).collect();
    // Read last, so inputs saved before these existed keep their meaning.
    let allow_chain_header = inp.chance(60);
    let drill_header = inp.chance(40);
    let custom_credential = !inp.chance(200);
    let summary_exhaustion = inp.chance(100);
    let policy_routes = match inp.chance(60) {
        true => (0..1 + inp.below(2))
            .map(|_| {
                let mut r = decode_route(&mut inp);
                r.model = format!("{POLICY_PREFIX}{}", r.model);
                // A long native group splits into routes named by its models.
                for m in r.native_fallbacks.iter_mut().flatten() {
                    m.insert_str(0, POLICY_PREFIX);
                }
                r
            })
            .collect(),
        false => Vec::new(),
    };
    let chain_header = chain_header.map(|c| match (c, inp.chance(100)) {
        ("nope", true) => "policy",
        (c, _) => c,
    });
    let mut routes: Vec<RouteSpec> = routes;
    for r in &mut routes {
        if r.model.starts_with(POLICY_PREFIX) {
            r.model.insert(0, 'x');
        }
    }
    Case {
        body: Blob(body),
        body_mode,
        caller_frames,
        routes,
        deadline,
        hedge_after,
        max_body_bytes,
        max_response_bytes,
        credentials,
        host,
        content_length,
        chunked,
        chain_header,
        answers,
        allow_chain_header,
        drill_header,
        custom_credential,
        summary_exhaustion,
        policy_routes,
        dialect,
        dialect_via: DialectVia::Path,
        anthropic_version: false,
        anthropic_beta: false,
        dialect_prefix: false,
    }
}

// ---------------------------------------------------------------------------
// Bodies the harness serves.

/// The harness's body error (a cut stream, an unreadable request).
#[derive(Debug)]
pub struct FuzzBodyError;

impl fmt::Display for FuzzBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the fuzz body was cut")
    }
}

impl std::error::Error for FuzzBodyError {}

/// What an upstream body handed out so far.
#[derive(Debug, Default)]
pub struct Yielded {
    pub bytes: Vec<u8>,
    /// It returned its error.
    pub failed: bool,
    /// It returned its end.
    pub ended: bool,
}

enum Step {
    Data(Bytes),
    Fail,
    Hang,
}

/// Frames from a script, recording what it yields.
pub struct ScriptBody {
    steps: VecDeque<Step>,
    yielded: Arc<Mutex<Yielded>>,
}

impl ScriptBody {
    fn new(bytes: &[u8], frames: &Frames) -> (Self, Arc<Mutex<Yielded>>) {
        let mut steps = VecDeque::new();
        let mut rest = bytes;
        let mut k = 0usize;
        // At most about 4096 frames: an 8 MiB event one byte a frame costs
        // seconds and finds nothing 4096 frames do not.
        let least = bytes.len() / 4096;
        while !rest.is_empty() {
            let size = match frames.sizes.len() {
                0 => rest.len(),
                n => frames.sizes[k % n].max(least).clamp(1, rest.len()),
            };
            k += 1;
            steps.push_back(Step::Data(Bytes::copy_from_slice(&rest[..size])));
            rest = &rest[size..];
        }
        match frames.ending {
            Ending::Clean => {}
            Ending::Fail => steps.push_back(Step::Fail),
            Ending::Hang => steps.push_back(Step::Hang),
        }
        let yielded = Arc::new(Mutex::new(Yielded::default()));
        (
            ScriptBody {
                steps,
                yielded: yielded.clone(),
            },
            yielded,
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Body for ScriptBody {
    type Data = Bytes;
    type Error = FuzzBodyError;

    fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, FuzzBodyError>>> {
        let this = self.get_mut();
        match this.steps.pop_front() {
            None => {
                lock(&this.yielded).ended = true;
                Poll::Ready(None)
            }
            Some(Step::Data(b)) => {
                lock(&this.yielded).bytes.extend_from_slice(&b);
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Some(Step::Fail) => {
                this.steps.clear();
                lock(&this.yielded).failed = true;
                Poll::Ready(Some(Err(FuzzBodyError)))
            }
            Some(Step::Hang) => {
                // Never woken: only a timer of the layer ends this.
                this.steps.push_front(Step::Hang);
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.steps.is_empty()
    }
}

// ---------------------------------------------------------------------------
// The upstream.

/// One request the upstream received.
#[derive(Debug)]
pub struct Received {
    pub head: http::request::Parts,
    pub body: Bytes,
    pub attempt: Option<Attempt>,
    /// What the answer's body yielded (none for a transport error or a hang).
    pub answer: Option<Arc<Mutex<Yielded>>>,
    pub status: Option<u16>,
}

#[derive(Default)]
struct UpstreamState {
    received: Vec<Received>,
}

fn upstream(
    answers: Arc<Vec<AnswerSpec>>,
    state: Arc<Mutex<UpstreamState>>,
    dialect: Dialect,
) -> impl tower::Service<
    Request<ReplayBody>,
    Response = Response<ScriptBody>,
    Error = FuzzBodyError,
    Future = impl std::future::Future<Output = Result<Response<ScriptBody>, FuzzBodyError>> + Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |req: Request<ReplayBody>| {
        let answers = answers.clone();
        let state = state.clone();
        async move {
            let (head, body) = req.into_parts();
            let body = match body.collect().await {
                Ok(c) => c.to_bytes(),
                Err(never) => match never {},
            };
            let attempt = head.extensions.get::<Attempt>().cloned();
            let k = {
                let mut st = lock(&state);
                st.received.push(Received {
                    head,
                    body,
                    attempt,
                    answer: None,
                    status: None,
                });
                st.received.len() - 1
            };
            let default = AnswerSpec {
                latency: None,
                kind: AnswerKind::Http {
                    status: 200,
                    headers: vec![("content-type", "application/json".into())],
                    body: Blob(default_answer(dialect)),
                    frames: Frames {
                        sizes: Vec::new(),
                        ending: Ending::Clean,
                    },
                },
            };
            let answer = answers.get(k).unwrap_or(&default).clone();
            if let Some(l) = answer.latency {
                tokio::time::sleep(l).await;
            }
            match answer.kind {
                AnswerKind::Transport => Err(FuzzBodyError),
                AnswerKind::Hang => std::future::pending().await,
                AnswerKind::Http {
                    status,
                    headers,
                    body,
                    frames,
                } => {
                    let (body, yielded) = ScriptBody::new(&body.0, &frames);
                    let mut resp = Response::new(body);
                    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
                    for (name, value) in headers {
                        if let Ok(v) = HeaderValue::from_str(&value) {
                            if !value.is_empty() {
                                resp.headers_mut().insert(name, v);
                            }
                        }
                    }
                    let mut st = lock(&state);
                    if let Some(r) = st.received.get_mut(k) {
                        r.answer = Some(yielded);
                        r.status = Some(status);
                    }
                    Ok(resp)
                }
            }
        }
    })
}

// ---------------------------------------------------------------------------
// The oracle.

/// A JSON object's members in order, duplicates kept (serde_json's `Value`
/// keeps only the last).
#[derive(Debug, Clone, PartialEq)]
pub struct Members(pub Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    members.push(entry);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(V)
    }
}

/// What a route's attempt body must be, from the caller's members: `model`
/// the route's; `provider` / `models` the route's when it sets them
/// (replaced where the caller has them, else inserted first, `provider`
/// before `models`); for an endpoint that is not OpenRouter, every
/// `provider`, `models`, `route` and `transforms` of the caller removed,
/// except that a `provider` / `models` the route sets stays; everything else
/// unchanged and in order. Embeddings never get the route's `models` (two
/// models' vectors would be mixed): there the caller's stays on OpenRouter
/// and goes elsewhere.
pub fn expected_members(
    caller: &[(String, Value)],
    route: &Route,
    strips_openrouter_keys: bool,
    dialect: Dialect,
) -> Vec<(String, Value)> {
    let provider = route
        .provider
        .as_ref()
        .map(|p| serde_json::to_value(p).unwrap_or_else(|e| panic!("engine fuzz harness: prefs: {e}")));
    let models = (!route.native_fallbacks.is_empty() && dialect != Dialect::Embeddings)
        .then(|| Value::from(route.native_fallbacks.to_vec()));
    let has = |key: &str| caller.iter().any(|(k, _)| k == key);
    let mut out = Vec::new();
    if let (Some(p), false) = (&provider, has("provider")) {
        out.push(("provider".to_owned(), p.clone()));
    }
    if let (Some(m), false) = (&models, has("models")) {
        out.push(("models".to_owned(), m.clone()));
    }
    for (key, value) in caller {
        let replaced = match key.as_str() {
            "model" => Some(Value::from(route.model.as_str())),
            "provider" => provider.clone(),
            "models" => models.clone(),
            _ => None,
        };
        match replaced {
            Some(v) => out.push((key.clone(), v)),
            None if strips_openrouter_keys
                && matches!(key.as_str(), "provider" | "models" | "route" | "transforms") => {}
            None => out.push((key.clone(), value.clone())),
        }
    }
    out
}

/// Keys the layer refuses to see twice at the top level.
fn single_keys() -> &'static [&'static str] {
    if REFUSE_DUPLICATE_ROUTE_TRANSFORMS {
        &["model", "models", "provider", "stream", "route", "transforms"]
    } else {
        &["model", "models", "provider", "stream"]
    }
}

/// What serde_json says of a caller body.
#[derive(Debug)]
pub enum BodyVerdict {
    /// A valid object the layer must accept.
    Accept(Vec<(String, Value)>),
    /// A valid object the layer must refuse.
    Refuse(&'static str),
    /// Not a JSON object to serde_json (the layer may accept it: its scanner
    /// does not validate nested values).
    Invalid,
}

pub fn body_verdict(body: &[u8]) -> BodyVerdict {
    let Ok(Members(members)) = serde_json::from_slice::<Members>(body) else {
        return BodyVerdict::Invalid;
    };
    for key in single_keys() {
        if members.iter().filter(|(k, _)| k == key).count() > 1 {
            return BodyVerdict::Refuse("duplicate key");
        }
    }
    match members.iter().find(|(k, _)| k == "model") {
        None => BodyVerdict::Refuse("no model"),
        Some((_, Value::String(_))) => BodyVerdict::Accept(members),
        Some(_) => BodyVerdict::Refuse("model is not a string"),
    }
}

/// The events an SSE parser (the WHATWG rules: CRLF, LF or CR end a line;
/// a blank line dispatches; `data` lines join with `\n`) sees in `bytes`;
/// an event not yet dispatched at the end is dropped, as a client does.
pub fn sse_events(bytes: &[u8]) -> Vec<Vec<u8>> {
    sse_parse(bytes).0
}

/// The events dispatched, the data of the event being read, and whether
/// the bytes end inside a line.
fn sse_parse(bytes: &[u8]) -> (Vec<Vec<u8>>, Option<Vec<u8>>, bool) {
    let (events, data, partial) = sse_parse_at(bytes);
    (events.into_iter().map(|(_, e)| e).collect(), data, partial)
}

/// An event's `data` and the offset just past the blank line that
/// dispatched it.
type EventAt = (usize, Vec<u8>);

/// An event an SSE parser dispatched: its type (`event:` field; `None`:
/// the default, `message`) and its data.
pub type NamedEvent = (Option<Vec<u8>>, Vec<u8>);

/// The events an SSE parser sees in `bytes`, each with its type.
pub fn sse_events_named(bytes: &[u8]) -> Vec<NamedEvent> {
    let mut events = Vec::new();
    let mut data: Option<Vec<u8>> = None;
    let mut name: Option<Vec<u8>> = None;
    let mut i = 0;
    let mut line_start = 0;
    while i < bytes.len() {
        let end = match bytes[i] {
            b'\n' => i + 1,
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => i + 2,
            b'\r' => i + 1,
            _ => {
                i += 1;
                continue;
            }
        };
        let line = &bytes[line_start..i];
        if line.is_empty() {
            // A blank line dispatches (when there is data) and resets the type.
            let n = name.take();
            if let Some(d) = data.take() {
                events.push((n, d));
            }
        } else if let Some(v) = line.strip_prefix(b"event:") {
            name = Some(v.strip_prefix(b" ").unwrap_or(v).to_vec());
        } else {
            let mut ignored = Vec::new();
            sse_line(line, &mut data, &mut ignored);
        }
        i = end;
        line_start = end;
    }
    events
}

/// [`sse_parse`], each event with its offset.
fn sse_parse_at(bytes: &[u8]) -> (Vec<EventAt>, Option<Vec<u8>>, bool) {
    let mut events = Vec::new();
    let mut data: Option<Vec<u8>> = None;
    let mut i = 0;
    let mut line_start = 0;
    while i < bytes.len() {
        let end = match bytes[i] {
            b'\n' => i + 1,
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => i + 2,
            b'\r' => i + 1,
            _ => {
                i += 1;
                continue;
            }
        };
        let mut dispatched = Vec::new();
        sse_line(&bytes[line_start..i], &mut data, &mut dispatched);
        events.extend(dispatched.into_iter().map(|e| (end, e)));
        i = end;
        line_start = end;
    }
    (events, data, line_start < bytes.len())
}

/// Where the layer commits to a stream at the latest: just past the first
/// event that is `[DONE]` or a chunk with content (a delta field other
/// than `role` that holds something, or a `finish_reason`). `None`: no
/// such event.
fn first_content_at(bytes: &[u8]) -> Option<usize> {
    let carries = |v: &Value| match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    };
    sse_parse_at(bytes).0.into_iter().find_map(|(at, data)| {
        if data.trim_ascii() == b"[DONE]" {
            return Some(at);
        }
        let v: Value = serde_json::from_slice(&data).ok()?;
        let content = v["choices"].as_array()?.iter().any(|c| {
            c["finish_reason"].is_string()
                || c["delta"]
                    .as_object()
                    .is_some_and(|d| d.iter().any(|(k, v)| k != "role" && carries(v)))
        });
        content.then_some(at)
    })
}

/// What an event stream of Responses or Messages says, as the wire format
/// reads (the event shapes below are those of the APIs' references; an
/// event that does not fit them makes the stream untidy, and the checks
/// that need to know how a client reads it are skipped).
#[derive(Debug, Default, Clone)]
pub struct StreamFacts {
    /// Every event is `[DONE]` or an object of its API's event shape, none
    /// past the layer's event limit.
    pub tidy: bool,
    /// It ends properly: `response.completed` / `response.incomplete`, or
    /// `message_stop` after a `message_delta` with a `stop_reason` (and no
    /// error after it).
    pub whole: bool,
    /// It holds an error event of the upstream (`error`, `response.failed`).
    pub error_event: bool,
    /// The first event that is not surely preamble (see [`preamble`]) is an
    /// error event, or there is none: no content came before an error, and
    /// the layer must not commit to the stream (the API docs' commit point).
    pub no_content_before_error: bool,
    pub continues: Continues,
}

/// The Responses event fields the API gives types to.
#[derive(serde::Deserialize)]
struct ResponsesEventShape {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    sequence_number: Option<u64>,
    #[serde(default)]
    response: Option<ResponseHeadShape>,
    #[serde(default)]
    delta: Option<Value>,
    #[serde(default)]
    text: Option<Value>,
    #[serde(default)]
    arguments: Option<Value>,
    #[serde(default)]
    item: Option<Value>,
    #[serde(default)]
    part: Option<Value>,
    #[serde(default)]
    code: Option<Value>,
    #[serde(default)]
    message: Option<Value>,
}

#[derive(serde::Deserialize)]
struct ResponseHeadShape {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    error: Option<Value>,
    #[serde(default)]
    usage: Option<UsageShape>,
}

#[derive(serde::Deserialize)]
struct UsageShape {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
}

/// The Messages event fields the API gives types to.
#[derive(serde::Deserialize)]
struct MessagesEventShape {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    message: Option<MessageHeadShape>,
    #[serde(default)]
    content_block: Option<Value>,
    #[serde(default)]
    delta: Option<MessagesDeltaShape>,
    #[serde(default)]
    usage: Option<UsageShape>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(serde::Deserialize)]
struct MessageHeadShape {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<UsageShape>,
}

#[derive(serde::Deserialize)]
struct MessagesDeltaShape {
    #[serde(default)]
    stop_reason: Option<String>,
}

/// An event that surely carries no output, by the API references (issue
/// 15's commit point): Responses `response.created`, `.in_progress`,
/// `.queued`, an `output_item.added` / `content_part.added` with nothing in
/// it; Messages `message_start`, `ping`, an empty text `content_block_start`.
pub fn preamble(dialect: Dialect, v: &Value) -> bool {
    let empty_str = |v: &Value| v.is_null() || v == "";
    let kind = v["type"].as_str().unwrap_or_default();
    match dialect {
        Dialect::Responses => match kind {
            "response.created" | "response.in_progress" | "response.queued" => true,
            "response.output_item.added" | "response.content_part.added" => {
                let x = if kind == "response.output_item.added" {
                    &v["item"]
                } else {
                    &v["part"]
                };
                x.is_object()
                    && empty_str(&x["text"])
                    && empty_str(&x["arguments"])
                    && empty_str(&x["refusal"])
                    && (x["content"].is_null() || x["content"] == serde_json::json!([]))
            }
            _ => false,
        },
        Dialect::Messages => match kind {
            "message_start" | "ping" => true,
            "content_block_start" => {
                let b = &v["content_block"];
                b["type"] == "text" && b["text"] == "" && b.as_object().is_some_and(|o| o.len() == 2)
            }
            _ => false,
        },
        _ => false,
    }
}

/// Reads a Responses or Messages stream as its API's clients do.
pub fn stream_facts(dialect: Dialect, bytes: &[u8]) -> StreamFacts {
    let mut facts = StreamFacts {
        tidy: !has_bare_cr(bytes) && !event_over_limit(bytes),
        no_content_before_error: true,
        ..StreamFacts::default()
    };
    // Still only preamble events so far.
    let mut before_content = true;
    // Messages: the stop reason of the last `message_delta` (or "error").
    let mut stop: Option<String> = None;
    for data in sse_events(bytes) {
        if data.len() > MAX_EVENT_BYTES {
            facts.tidy = false;
            continue;
        }
        if before_content {
            let v: Value = serde_json::from_slice(&data).unwrap_or(Value::Null);
            let kind = v["type"].as_str().unwrap_or_default();
            if !preamble(dialect, &v) {
                before_content = false;
                facts.no_content_before_error =
                    kind == "error" || (dialect == Dialect::Responses && kind == "response.failed");
            }
        }
        if data.trim_ascii() == b"[DONE]" {
            continue;
        }
        match dialect {
            Dialect::Responses => {
                let Ok(ev) = serde_json::from_slice::<ResponsesEventShape>(&data) else {
                    facts.tidy = false;
                    continue;
                };
                let _ = (
                    &ev.delta,
                    &ev.text,
                    &ev.arguments,
                    &ev.item,
                    &ev.part,
                    &ev.code,
                    &ev.message,
                );
                if let Some(n) = ev.sequence_number {
                    facts.continues.sequence = Some(n);
                }
                if let Some(head) = &ev.response {
                    if facts.continues.response_id.is_none() {
                        facts.continues.response_id = head.id.clone();
                    }
                    let _ = (&head.model, &head.status, &head.error);
                    let _ = head
                        .usage
                        .as_ref()
                        .map(|u| (u.input_tokens, u.output_tokens, u.total_tokens));
                }
                match ev.kind.as_deref() {
                    Some("response.completed" | "response.incomplete") => facts.whole = true,
                    Some("response.failed" | "error") => facts.error_event = true,
                    _ => {}
                }
            }
            Dialect::Messages => {
                let Ok(ev) = serde_json::from_slice::<MessagesEventShape>(&data) else {
                    facts.tidy = false;
                    continue;
                };
                let _ = (&ev.content_block, &ev.usage, &ev.error);
                let _ = ev
                    .message
                    .as_ref()
                    .map(|m| (&m.model, m.usage.as_ref().map(|u| u.total_tokens)));
                match ev.kind.as_deref() {
                    Some("message_delta") => {
                        if let Some(r) = ev.delta.and_then(|d| d.stop_reason) {
                            stop = Some(r);
                        }
                    }
                    // Each `message_stop` judges the stream anew.
                    Some("message_stop") => facts.whole = stop.as_deref().is_some_and(|r| r != "error"),
                    Some("error") => {
                        facts.error_event = true;
                        stop = Some("error".into());
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    // Bytes after the last blank line: an event a client never dispatches,
    // but the layer reads at the end of the body.
    let (_, pending, partial) = sse_parse(bytes);
    if pending.is_some() || partial {
        facts.tidy = false;
    }
    facts
}

/// The layer's bound on one event.
const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// Some event's lines (every field, `event:` and comments too, without
/// their line breaks) pass [`MAX_EVENT_BYTES`]: the layer stops reading
/// there, so what follows never reaches its tracker (a long `event:` line
/// with little data is such an event).
fn event_over_limit(bytes: &[u8]) -> bool {
    let mut len = 0usize;
    for line in bytes.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        len = match line.is_empty() {
            true => 0,
            false => len.saturating_add(line.len()),
        };
        if len > MAX_EVENT_BYTES {
            return true;
        }
    }
    false
}

/// A bare CR (not before a LF): an SSE line end the layer's reader does not
/// split on.
fn has_bare_cr(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\r' && bytes.get(i + 1) != Some(&b'\n'))
}

/// Where an SSE parser is at the end of `bytes`: inside a line, and holding
/// `data` of an event not yet dispatched (from complete lines).
pub fn sse_tail(bytes: &[u8]) -> (bool, bool) {
    let (_, data, partial) = sse_parse(bytes);
    (partial, data.is_some())
}

fn sse_line(line: &[u8], data: &mut Option<Vec<u8>>, events: &mut Vec<Vec<u8>>) {
    if line.is_empty() {
        if let Some(d) = data.take() {
            events.push(d);
        }
        return;
    }
    if line[0] == b':' {
        return;
    }
    let (field, value) = match line.iter().position(|&b| b == b':') {
        Some(c) => {
            let v = &line[c + 1..];
            (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
        }
        None => (line, &b""[..]),
    };
    if field == b"data" {
        match data {
            Some(d) => {
                d.push(b'\n');
                d.extend_from_slice(value);
            }
            None => *data = Some(value.to_vec()),
        }
    }
}

/// `extra` without the line ends (at most two) it starts with.
fn strip_separator(extra: &[u8]) -> &[u8] {
    let mut rest = extra;
    for _ in 0..2 {
        rest = rest
            .strip_prefix(b"\r\n")
            .or_else(|| rest.strip_prefix(b"\n"))
            .unwrap_or(rest);
    }
    rest
}

/// The codes of a broken committed stream's terminal event.
pub const BREAK_CODES: [&str; 4] = [
    "stream_broken",
    "stream_stalled",
    "stream_truncated",
    "stream_event_too_large",
];

/// Checks that `extra` (what the caller got after the upstream's bytes
/// `upstream`) is exactly one error chunk in the crate's shape, standing
/// alone as an SSE event. Returns the chunk's `error.code`.
pub fn check_error_chunk(upstream: &[u8], extra: &[u8]) -> Result<String, String> {
    check_terminal_event(Dialect::Chat, upstream, extra, None)
}

/// What the harness knows of a stream the layer tracked to its end: the
/// last `sequence_number` and the first `response.id` (Responses).
#[derive(Debug, Clone, Default)]
pub struct Continues {
    pub sequence: Option<u64>,
    pub response_id: Option<String>,
}

/// [`check_error_chunk`] for `dialect`: the one terminal event a broken
/// committed stream gets — chat (and embeddings): a `chat.completion.chunk`
/// with `finish_reason: "error"`; completions: a `text_completion` chunk;
/// Responses: `event: response.failed` with a whole failed `response`
/// (continuing `continues` when given); Messages: `event: error` with
/// `{"type":"error","error":{"type":"api_error","message":"<code>: ..."}}`.
/// Returns the code.
pub fn check_terminal_event(
    dialect: Dialect,
    upstream: &[u8],
    extra: &[u8],
    continues: Option<&Continues>,
) -> Result<String, String> {
    let rest = strip_separator(extra);
    if sse_tail(upstream).0 && rest.len() == extra.len() {
        return Err("the upstream's bytes end mid-line and the terminal event does not start on a new line".into());
    }
    let name: Option<&str> = match dialect {
        Dialect::Responses => Some("response.failed"),
        Dialect::Messages => Some("error"),
        _ => None,
    };
    let Some(name) = name else {
        return match dialect {
            Dialect::Completions => check_completions_chunk(upstream, extra),
            _ => check_chat_chunk(upstream, extra),
        };
    };
    let json = rest
        .strip_prefix(format!("event: {name}\n").as_bytes())
        .and_then(|r| r.strip_prefix(b"data: "))
        .and_then(|r| r.strip_suffix(b"\n\n"))
        .ok_or_else(|| {
            format!(
                "not one `event: {name}\\ndata: ...\\n\\n` event: {:?}",
                String::from_utf8_lossy(extra)
            )
        })?;
    if json.contains(&b'\n') || json.contains(&b'\r') {
        return Err(format!("more than one line: {:?}", String::from_utf8_lossy(extra)));
    }
    let v: Value = serde_json::from_slice(json).map_err(|e| format!("the terminal event is not JSON: {e}"))?;
    let code = match dialect {
        Dialect::Responses => {
            let r = &v["response"];
            let code = r["error"]["code"].as_str().unwrap_or_default().to_owned();
            let ok = v["type"] == "response.failed"
                && v["sequence_number"].is_u64()
                && r["object"] == "response"
                && r["status"] == "failed"
                && r["id"].is_string()
                && r["model"].is_string()
                && r["output"] == serde_json::json!([])
                && r["error"]["message"].is_string()
                && BREAK_CODES.contains(&code.as_str());
            if !ok {
                return Err(format!("not a response.failed event in OpenAI's shape: {v}"));
            }
            if let Some(c) = continues {
                let want_seq = c.sequence.map_or(0, |n| n.saturating_add(1));
                let want_id = c.response_id.as_deref().unwrap_or("resp_llm_fallback_error");
                if v["sequence_number"] != want_seq || r["id"] != want_id {
                    return Err(format!(
                        "the response.failed event does not continue the stream (sequence_number {want_seq}, id {want_id:?}): {v}"
                    ));
                }
            }
            code
        }
        _ => {
            let message = v["error"]["message"].as_str().unwrap_or_default();
            let code = BREAK_CODES
                .iter()
                .find(|c| message.starts_with(&format!("{c}: ")))
                .map(|c| c.to_string());
            let ok = v["type"] == "error"
                && v["error"]["type"] == "api_error"
                && v.as_object().is_some_and(|o| o.len() == 2)
                && code.is_some();
            match (ok, code) {
                (true, Some(code)) => code,
                _ => return Err(format!("not an Anthropic error event: {v}")),
            }
        }
    };
    let mut all = upstream.to_vec();
    all.extend_from_slice(extra);
    let events = sse_events_named(&all);
    let last = events.last();
    if last.map(|(n, d)| (n.as_deref(), d.as_slice())) != Some((Some(name.as_bytes()), json)) {
        return Err(format!(
            "an SSE parser does not see the terminal event as its own last `{name}` event (it sees {:?})",
            last.map(|(n, d)| (
                n.as_ref().map(|n| String::from_utf8_lossy(n).into_owned()),
                String::from_utf8_lossy(d).into_owned()
            ))
        ));
    }
    Ok(code)
}

/// A legacy completions stream's terminal chunk.
fn check_completions_chunk(upstream: &[u8], extra: &[u8]) -> Result<String, String> {
    let rest = strip_separator(extra);
    let json = rest
        .strip_prefix(b"data: ")
        .and_then(|r| r.strip_suffix(b"\n\n"))
        .ok_or_else(|| format!("not one `data: ...\\n\\n` event: {:?}", String::from_utf8_lossy(extra)))?;
    if json.contains(&b'\n') || json.contains(&b'\r') {
        return Err(format!("more than one line: {:?}", String::from_utf8_lossy(extra)));
    }
    let v: Value = serde_json::from_slice(json).map_err(|e| format!("the error chunk is not JSON: {e}"))?;
    let ok = v["id"] == "llm-fallback-error"
        && v["object"] == "text_completion"
        && v["model"].is_string()
        && v["error"]["code"].as_str().is_some_and(|c| BREAK_CODES.contains(&c))
        && v["error"]["message"].is_string()
        && v["choices"][0]["finish_reason"] == "error"
        && v["choices"][0]["text"] == ""
        && v["choices"].as_array().is_some_and(|c| c.len() == 1);
    if !ok {
        return Err(format!("not a text_completion error chunk: {v}"));
    }
    last_default_event(upstream, extra, json)?;
    Ok(v["error"]["code"].as_str().unwrap_or_default().to_owned())
}

/// The terminal chunk is the last event an SSE client sees, of the default
/// type.
fn last_default_event(upstream: &[u8], extra: &[u8], json: &[u8]) -> Result<(), String> {
    let mut all = upstream.to_vec();
    all.extend_from_slice(extra);
    let events = sse_events_named(&all);
    match events.last() {
        Some((None, d)) if d == json => Ok(()),
        last => Err(format!(
            "an SSE parser does not see the error chunk as its own last event (it sees {:?})",
            last.map(|(n, d)| (
                n.as_ref().map(|n| String::from_utf8_lossy(n).into_owned()),
                String::from_utf8_lossy(d).into_owned()
            ))
        )),
    }
}

/// The chat completions chunk (also embeddings', which do not stream).
fn check_chat_chunk(upstream: &[u8], extra: &[u8]) -> Result<String, String> {
    // A separator first: a line's end and a blank line, or just the blank
    // line; the SSE parse below says whether it was the right one.
    let rest = strip_separator(extra);
    if sse_tail(upstream).0 && rest.len() == extra.len() {
        return Err("the upstream's bytes end mid-line and the error chunk does not start on a new line".into());
    }
    let json = rest
        .strip_prefix(b"data: ")
        .and_then(|r| r.strip_suffix(b"\n\n"))
        .ok_or_else(|| format!("not one `data: ...\\n\\n` event: {:?}", String::from_utf8_lossy(extra)))?;
    if json.contains(&b'\n') || json.contains(&b'\r') {
        return Err(format!("more than one line: {:?}", String::from_utf8_lossy(extra)));
    }
    let v: Value = serde_json::from_slice(json).map_err(|e| format!("the error chunk is not JSON: {e}"))?;
    let ok = v["id"] == "llm-fallback-error"
        && v["object"] == "chat.completion.chunk"
        && v["model"].is_string()
        && v["error"]["code"].is_string()
        && v["error"]["message"].is_string()
        && v["choices"][0]["finish_reason"] == "error"
        && v["choices"].as_array().is_some_and(|c| c.len() == 1);
    if !ok {
        return Err(format!("not the crate's error chunk shape: {v}"));
    }
    // Seen by an SSE client, the chunk is the last event, on its own.
    let mut all = upstream.to_vec();
    all.extend_from_slice(extra);
    let events = sse_events(&all);
    if events.last().map(Vec::as_slice) != Some(json) {
        return Err(format!(
            "an SSE parser does not see the error chunk as its own last event (it sees {:?})",
            events.last().map(|e| String::from_utf8_lossy(e).into_owned())
        ));
    }
    last_default_event(upstream, extra, json)?;
    Ok(v["error"]["code"].as_str().unwrap_or_default().to_owned())
}

// ---------------------------------------------------------------------------
// Running a case.

/// What a case did, for the replay test's coverage checks.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub resolution: Option<Resolution>,
    pub status: u16,
    pub received: usize,
    pub committed_stream: bool,
    pub error_chunk: Option<String>,
    pub checked_bodies: usize,
    pub endpoint_requests: usize,
    pub hung: bool,
    /// The `error.code` of a refused request.
    pub rejection: Option<String>,
    /// Attempts skipped because the endpoint does not serve the dialect or
    /// holds no state of a stateful request.
    pub skipped: usize,
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap_or_else(|e| panic!("engine fuzz harness: runtime: {e}"));
}

fn set_key() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var(KEY_VAR, KEY));
}

/// Decodes `data` and runs it; panics on a violated property.
pub fn run(data: &[u8]) -> Summary {
    let case = decode(data);
    run_case(&case)
}

/// Runs one case; panics on a violated property.
pub fn run_case(case: &Case) -> Summary {
    set_key();
    RUNTIME.with(|rt| rt.block_on(drive(case)))
}

macro_rules! violated {
    ($case:expr, $n:expr, $($arg:tt)*) => {
        panic!(
            "engine fuzz: property {} violated: {}\n--- case ---\n{:#?}",
            $n,
            format!($($arg)*),
            $case,
        )
    };
}

fn build_route(spec: &RouteSpec) -> Route {
    let mut route = Route::new(spec.model.clone());
    if let Some(mut e) = spec.endpoint.build() {
        if spec.anthropic {
            e = e.anthropic(true);
        }
        if let Some(bits) = spec.serves {
            e = e.dialects(Dialect::ALL.into_iter().filter(|d| bits & dialect_bit(*d) != 0));
        }
        if spec.shares_state {
            e = e.shares_state(true);
        }
        route = route.endpoint(e);
    }
    if let Some(p) = spec.provider.build() {
        route = route.provider(p);
    }
    if let Some(f) = &spec.native_fallbacks {
        route = route.native_fallbacks(f.clone());
    }
    if let Some(l) = spec.label {
        route = route.label(l);
    }
    if let Some(t) = spec.timeout {
        route = route.timeout(t);
    }
    if let Some(t) = spec.first_token_timeout {
        route = route.first_token_timeout(t);
    }
    if let Some(t) = spec.idle_timeout {
        route = route.idle_timeout(t);
    }
    route
}

/// A chain as built, and for each of its routes (a long native group
/// splits into several) the spec it came from.
struct Built {
    name: &'static str,
    routes: Vec<Route>,
    specs: Vec<RouteSpec>,
}

fn build_chain(name: &'static str, specs: &[RouteSpec], case: &Case) -> (Chain, Built) {
    let mut routes = Vec::new();
    let mut per_route = Vec::new();
    for spec in specs {
        let built = build_route(spec);
        let n = Chain::new([built.clone()]).routes().len();
        routes.push(built);
        per_route.extend(std::iter::repeat_n(spec.clone(), n));
    }
    let mut chain = Chain::new(routes);
    if let Some(d) = case.deadline {
        chain = chain.deadline(d);
    }
    if let Some(h) = case.hedge_after {
        chain = chain.hedge_after(h);
    }
    let routes: Vec<Route> = chain.routes().to_vec();
    if routes.len() != per_route.len() {
        panic!(
            "engine fuzz harness: {} routes built, {} specs",
            routes.len(),
            per_route.len()
        );
    }
    let built = Built {
        name,
        routes,
        specs: per_route,
    };
    (chain, built)
}

/// The chains of a case: the default one, and maybe `policy`.
struct Chains {
    default: Built,
    policy: Option<Built>,
}

impl Chains {
    /// The chain and route an attempt is for.
    fn of(&self, attempt: &Attempt) -> Option<(&Built, &Route, &RouteSpec)> {
        let chain = match &self.policy {
            Some(p) if attempt.model().starts_with(POLICY_PREFIX) => p,
            _ => &self.default,
        };
        Some((
            chain,
            chain.routes.get(attempt.index())?,
            chain.specs.get(attempt.index())?,
        ))
    }

    /// The spec of route `index` of the chain named `chain`.
    fn spec_of(&self, chain: &str, index: usize) -> Option<&RouteSpec> {
        let built = match (&self.policy, chain) {
            (Some(p), "policy") => p,
            _ => &self.default,
        };
        built.specs.get(index)
    }

    fn names_request(&self, name: &str) -> bool {
        name == "default" || (name == "policy" && self.policy.is_some())
    }
}

async fn drive(case: &Case) -> Summary {
    let (chain, default) = build_chain("default", &case.routes, case);
    let mut chains = Chains { default, policy: None };
    let mut layer = match case.policy_routes.is_empty() {
        true => FallbackBuilder::new(chain),
        false => {
            let (policy_chain, policy) = build_chain("policy", &case.policy_routes, case);
            chains.policy = Some(policy);
            FallbackBuilder::with_chains(
                ChainSet::new(chain)
                    .chain("policy", policy_chain)
                    .on_content_policy("policy"),
            )
        }
    };
    if let Some(n) = case.max_body_bytes {
        layer = layer.max_body_bytes(n);
    }
    if let Some(n) = case.max_response_bytes {
        layer = layer.max_response_bytes(n);
    }
    if case.hedge_after.is_some() {
        layer = layer.hedging(llm_fallback::health::HedgeBudget::new(1.0, Duration::from_secs(60)));
    }
    layer = layer.allow_chain_header(case.allow_chain_header);
    if case.summary_exhaustion {
        layer = layer.exhaustion_body(ExhaustionBody::Summary);
    }
    if case.custom_credential {
        layer = layer.credential_header(HeaderName::from_static(CUSTOM_CREDENTIAL));
    }
    let state = Arc::new(Mutex::new(UpstreamState::default()));
    let svc = tower::ServiceBuilder::new().layer(layer.layer()).service(upstream(
        Arc::new(case.answers.clone()),
        state.clone(),
        case.dialect,
    ));

    let (path, extension) = case.dialect_via.request(case.dialect);
    let mut req = Request::post(format!("http://caller.example{path}"));
    if let Some(d) = extension {
        req = req.extension(d);
    }
    if case.anthropic_version {
        req = req.header("anthropic-version", CALLER_ANTHROPIC_VERSION);
    }
    if case.anthropic_beta {
        req = req.header("anthropic-beta", "fuzz-beta-2025");
    }
    for &i in &case.credentials {
        let name = CREDENTIALS[i];
        req = req.header(name, format!("{MARKER}{name}"));
    }
    if case.custom_credential {
        req = req.header(CUSTOM_CREDENTIAL, format!("{MARKER}{CUSTOM_CREDENTIAL}"));
    }
    if case.drill_header {
        req = req.header("x-fallback-drill", "1");
    }
    if case.host {
        req = req.header("host", "caller.example");
    }
    req = req.header("content-type", "application/json");
    req = req.header("x-fuzz-plain", "kept");
    match case.content_length {
        ContentLength::None => {}
        ContentLength::Exact => req = req.header("content-length", case.body.0.len()),
        ContentLength::Wrong => req = req.header("content-length", case.body.0.len() / 2),
        ContentLength::Huge => req = req.header("content-length", "99999999999"),
    }
    if case.chunked {
        req = req.header("transfer-encoding", "chunked");
    }
    if let Some(c) = case.chain_header {
        req = req.header("x-fallback-chain", c);
    }
    let (caller_body, _) = ScriptBody::new(&case.body.0, &case.caller_frames);
    let req = match req.body(caller_body) {
        Ok(r) => r,
        Err(e) => panic!("engine fuzz harness: request: {e}"),
    };

    let run = async {
        let resp = match tower::ServiceExt::oneshot(svc, req).await {
            Ok(r) => r,
            Err(e) => violated!(case, 1, "the layer's service failed: {e}"),
        };
        let (parts, mut body) = resp.into_parts();
        let mut got = Vec::new();
        let mut body_error = None;
        loop {
            match body.frame().await {
                None => break,
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        got.extend_from_slice(&d);
                    }
                }
                Some(Err(e)) => {
                    body_error = Some(e.to_string());
                    break;
                }
            }
        }
        drop(body);
        (parts, got, body_error)
    };
    let scripted_hang = case.answers.iter().any(|a| {
        matches!(a.kind, AnswerKind::Hang)
            || matches!(&a.kind, AnswerKind::Http { frames, .. } if frames.ending == Ending::Hang)
    });
    let Ok((parts, got, body_error)) = tokio::time::timeout(HANG_LIMIT, run).await else {
        if !scripted_hang {
            violated!(
                case,
                1,
                "the layer did not finish within {HANG_LIMIT:?} of (virtual) time, and no answer hangs"
            );
        }
        return Summary {
            hung: true,
            ..Summary::default()
        };
    };
    let received = std::mem::take(&mut lock(&state).received);
    check(case, &chains, &received, parts, got, body_error)
}

fn check(
    case: &Case,
    chains: &Chains,
    received: &[Received],
    parts: http::response::Parts,
    got: Vec<u8>,
    body_error: Option<String>,
) -> Summary {
    let Some(report) = parts.extensions.get::<FallbackReport>() else {
        violated!(case, 1, "the response has no FallbackReport");
    };
    let mut summary = Summary {
        resolution: Some(report.resolution()),
        status: parts.status.as_u16(),
        received: received.len(),
        ..Summary::default()
    };

    // 2. Refused requests reach nothing; what serde_json accepts is accepted.
    let verdict = body_verdict(&case.body.0);
    let dialect = case.dialect;
    // A stateful Responses request: known when serde_json reads the body.
    let stateful = match &verdict {
        BodyVerdict::Accept(members) => Some(
            dialect == Dialect::Responses
                && members
                    .iter()
                    .any(|(k, v)| matches!(k.as_str(), "previous_response_id" | "conversation") && !v.is_null()),
        ),
        _ => None,
    };
    if report.resolution() == Resolution::Rejected {
        if !received.is_empty() {
            violated!(
                case,
                2,
                "the layer refused the request, yet the upstream received {} requests",
                received.len()
            );
        }
        if !matches!(parts.status.as_u16(), 400 | 413) {
            violated!(
                case,
                2,
                "a refused request got status {}: {:?}",
                parts.status,
                Blob(got.clone())
            );
        }
        if let Err(why) = check_error_json(dialect, &got, None) {
            violated!(
                case,
                2,
                "the layer's own {} is not {dialect}'s error JSON: {why}",
                parts.status
            );
        }
        summary.rejection = serde_json::from_slice::<Value>(&got)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
        // No route fits: every route of the chain was skipped, each for a
        // reason the harness agrees with (its endpoint does not serve the
        // dialect, or holds no state of a stateful request).
        if summary.rejection.as_deref() == Some("no_route_fits") {
            if report.attempts().is_empty() {
                violated!(case, 2, "no_route_fits without an attempt in the report");
            }
            for a in report.attempts() {
                let spec = chains.spec_of(a.chain(), a.index());
                let want = spec.and_then(|s| s.unfit(dialect, stateful.unwrap_or(false)));
                let got_reason = a.skip_reason().map(|r| r.as_str());
                let agrees = a.outcome() == Outcome::Skipped
                    && got_reason.is_some()
                    && (got_reason == want || (stateful.is_none() && got_reason == Some("stateful")));
                if !agrees {
                    violated!(
                        case,
                        2,
                        "no_route_fits, but attempt {} ({:?}) was {:?} for {:?}; the harness says {want:?}",
                        a.index(),
                        a.model(),
                        a.outcome(),
                        got_reason
                    );
                }
            }
        }
    }
    let limit = case.max_body_bytes.unwrap_or(32 * 1024 * 1024);
    let plain_request = case.caller_frames.ending == Ending::Clean
        && case.body.0.len() <= limit
        && case.content_length != ContentLength::Huge
        && (!case.allow_chain_header || case.chain_header.is_none_or(|c| chains.names_request(c)));
    match (&verdict, report.resolution()) {
        (BodyVerdict::Accept(_), Resolution::Rejected)
            if plain_request
                && summary.rejection.as_deref() != Some("no_route_fits")
                && (fixed(SCANNER_KEEPS_ESCAPE_CARRY) || !dense_gear_risk(&case.body.0)) =>
        {
            violated!(
                case,
                2,
                "the layer refused a body serde_json reads as a valid request (status {}): {:?}",
                parts.status,
                String::from_utf8_lossy(&got)
            )
        }
        (BodyVerdict::Refuse(why), r) if r != Resolution::Rejected => {
            violated!(case, 2, "the layer did not refuse a body with {why} (resolution {r:?})")
        }
        _ => {}
    }

    for r in received {
        let Some(attempt) = &r.attempt else {
            violated!(case, 3, "an upstream request carries no Attempt extension");
        };
        let Some((_, route, spec)) = chains.of(attempt) else {
            violated!(
                case,
                3,
                "an attempt's index {} is not a route of the chain",
                attempt.index()
            );
        };
        // A route whose endpoint does not serve the dialect, or holds no
        // state of a stateful request, is never sent to.
        if let Some(why) = spec.unfit(dialect, stateful.unwrap_or(false)) {
            violated!(
                case,
                3,
                "attempt {} went to route {:?} (endpoint {:?}, serves {:?}, shares state {}), which a {dialect} request{} may not reach: {why}",
                attempt.index(),
                &route.model,
                spec.endpoint,
                spec.serves,
                spec.shares_state,
                if stateful == Some(true) { " (stateful)" } else { "" }
            );
        }
        if attempt.model() != route.model {
            violated!(
                case,
                3,
                "attempt {} names model {:?}, its route {:?}",
                attempt.index(),
                attempt.model(),
                &route.model
            );
        }

        // 3. The body: the caller's object with the route's edits. Until
        // duplicate `route` / `transforms` are refused, the layer removes
        // only one copy (issue 13 point 3): such bodies are not checked.
        let known_duplicate = |caller: &[(String, Value)]| {
            !REFUSE_DUPLICATE_ROUTE_TRANSFORMS
                && ["route", "transforms"]
                    .iter()
                    .any(|key| caller.iter().filter(|(k, _)| k == key).count() > 1)
        };
        let checkable = match &verdict {
            BodyVerdict::Accept(_) if !fixed(SCANNER_KEEPS_ESCAPE_CARRY) && dense_gear_risk(&case.body.0) => None,
            BodyVerdict::Accept(caller) if !known_duplicate(caller) => Some(caller),
            _ => None,
        };
        if let Some(caller) = checkable {
            let want = expected_members(caller, route, spec.endpoint.strips_openrouter_keys(), dialect);
            match serde_json::from_slice::<Members>(&r.body) {
                Ok(Members(sent)) if sent == want => summary.checked_bodies += 1,
                Ok(Members(sent)) => violated!(
                    case,
                    3,
                    "attempt {} (route {:?}, endpoint {:?}) sent\n  {}\nexpected\n  {}",
                    attempt.index(),
                    &route.model,
                    spec.endpoint,
                    show(&sent),
                    show(&want)
                ),
                Err(e) => violated!(
                    case,
                    3,
                    "attempt {} sent a body serde_json cannot read ({e}): {:?}",
                    attempt.index(),
                    String::from_utf8_lossy(&r.body)
                ),
            }
        }
        let declared = r.head.headers.get("content-length").and_then(|v| v.to_str().ok());
        if declared != Some(r.body.len().to_string().as_str()) {
            violated!(
                case,
                3,
                "attempt {} sent {} bytes with content-length {declared:?}",
                attempt.index(),
                r.body.len()
            );
        }
        if r.head.headers.contains_key("transfer-encoding") {
            violated!(
                case,
                3,
                "attempt {} kept the caller's transfer-encoding",
                attempt.index()
            );
        }

        // 4. Credentials.
        let headers = &r.head.headers;
        match route.endpoint.as_ref() {
            Some(_) => {
                summary.endpoint_requests += 1;
                let want_uri = format!("{}{}", spec.endpoint.base().trim_end_matches('/'), dialect.path());
                if r.head.uri.to_string() != want_uri {
                    violated!(
                        case,
                        4,
                        "attempt {} went to {}, not its endpoint's {want_uri}",
                        attempt.index(),
                        r.head.uri
                    );
                }
                if headers.contains_key("host") {
                    violated!(case, 4, "the caller's Host reached another endpoint");
                }
                // Anthropic's own API takes a Messages request's key as
                // `x-api-key`, with an `anthropic-version`; every other
                // request to an endpoint its key as `Authorization: Bearer`.
                let anthropic = dialect == Dialect::Messages && spec.anthropic_api();
                let api_key = headers.get_all("x-api-key").iter().collect::<Vec<_>>();
                let want_key = (anthropic && spec.endpoint.keyed()).then_some(KEY);
                let key_ok = match want_key {
                    Some(w) => api_key.len() == 1 && api_key[0] == w,
                    None => api_key.is_empty(),
                };
                if !key_ok {
                    violated!(
                        case,
                        4,
                        "attempt {} ({dialect}) to endpoint {:?} (anthropic {}) carries x-api-key {:?}, expected {:?}",
                        attempt.index(),
                        spec.endpoint,
                        spec.anthropic,
                        api_key,
                        want_key
                    );
                }
                let version = headers.get_all("anthropic-version").iter().collect::<Vec<_>>();
                let want_version = match (anthropic, case.anthropic_version) {
                    (_, true) => Some(CALLER_ANTHROPIC_VERSION),
                    (true, false) => Some("2023-06-01"),
                    (false, false) => None,
                };
                if version != want_version.into_iter().collect::<Vec<_>>() {
                    violated!(
                        case,
                        4,
                        "attempt {} ({dialect}) to endpoint {:?} carries anthropic-version {:?}, expected {:?}",
                        attempt.index(),
                        spec.endpoint,
                        version,
                        want_version
                    );
                }
                let auth = headers.get_all("authorization").iter().collect::<Vec<_>>();
                let want_auth = (spec.endpoint.keyed() && !anthropic).then(|| format!("Bearer {KEY}"));
                let auth_ok = match &want_auth {
                    Some(w) => auth.len() == 1 && auth[0] == w.as_str(),
                    None => auth.is_empty(),
                };
                if !auth_ok {
                    violated!(
                        case,
                        4,
                        "attempt {} to endpoint {:?} carries authorization {:?}, expected {:?}",
                        attempt.index(),
                        spec.endpoint,
                        auth,
                        want_auth
                    );
                }
                for (name, value) in headers {
                    let leaked = value.as_bytes().windows(MARKER.len()).any(|w| w == MARKER.as_bytes());
                    if leaked && (STRIP_ALL_CREDENTIALS || name == "authorization") {
                        violated!(
                            case,
                            4,
                            "the caller's {name} reached another endpoint ({:?})",
                            spec.endpoint
                        );
                    }
                }
            }
            None => {
                let custom = case.custom_credential.then_some(CUSTOM_CREDENTIAL);
                for name in case.credentials.iter().map(|&i| CREDENTIALS[i]).chain(custom) {
                    let want = format!("{MARKER}{name}");
                    let values: Vec<_> = headers.get_all(name).iter().collect();
                    if values.len() != 1 || values[0] != want.as_str() {
                        violated!(
                            case,
                            4,
                            "the caller's own {name} did not reach the caller's upstream unchanged: {values:?}"
                        );
                    }
                }
                if case.host && headers.get("host").is_none_or(|h| h != "caller.example") {
                    violated!(case, 4, "the caller's Host did not reach the caller's upstream");
                }
                let version = headers.get_all("anthropic-version").iter().collect::<Vec<_>>();
                let want_version = case.anthropic_version.then_some(CALLER_ANTHROPIC_VERSION);
                if version != want_version.into_iter().collect::<Vec<_>>() {
                    violated!(
                        case,
                        4,
                        "the caller's anthropic-version changed on its own upstream: {version:?}"
                    );
                }
                let (want_path, _) = case.dialect_via.request(dialect);
                if r.head.uri.path() != want_path {
                    violated!(
                        case,
                        4,
                        "attempt {} to the caller's own upstream went to {}, not the caller's {want_path}",
                        attempt.index(),
                        r.head.uri
                    );
                }
            }
        }
        if headers.get("x-fuzz-plain").is_none_or(|v| v != "kept") {
            violated!(case, 4, "an ordinary caller header was dropped");
        }
        if case.anthropic_beta && headers.get("anthropic-beta").is_none_or(|v| v != "fuzz-beta-2025") {
            violated!(case, 4, "the caller's anthropic-beta was dropped");
        }
        if headers.contains_key("x-fallback-chain") || headers.contains_key("x-fallback-drill") {
            violated!(case, 4, "x-fallback-chain or x-fallback-drill was forwarded");
        }
    }

    summary.skipped = report
        .attempts()
        .iter()
        .filter(|a| {
            a.skip_reason()
                .is_some_and(|r| matches!(r.as_str(), "dialect" | "stateful"))
        })
        .count();
    // Every attempt skipped for the dialect or for state is a route the
    // harness says is unfit so.
    for a in report.attempts() {
        let Some(reason) = a.skip_reason().map(|r| r.as_str()) else {
            continue;
        };
        if !matches!(reason, "dialect" | "stateful") {
            continue;
        }
        let spec = chains.spec_of(a.chain(), a.index());
        let want = spec.and_then(|s| s.unfit(dialect, stateful.unwrap_or(true)));
        if want != Some(reason) {
            violated!(
                case,
                3,
                "attempt {} ({:?}) was skipped for {reason:?}; the harness says {want:?} (stateful {stateful:?})",
                a.index(),
                a.model()
            );
        }
    }

    // 5. What the caller got from the upstream that answered.
    match report.resolution() {
        Resolution::Served | Resolution::Stopped => {
            let answered: Vec<_> = report
                .attempts()
                .iter()
                .filter(|a| matches!(a.outcome(), Outcome::Served | Outcome::Stopped))
                .collect();
            let cancelled = report.attempts().iter().any(|a| a.outcome() == Outcome::Cancelled);
            if (fixed(SERVED_ATTEMPT_AFTER_HEDGE) || !cancelled)
                && report.served_attempt().map(|a| (a.chain(), a.index(), a.outcome()))
                    != answered.first().map(|a| (a.chain(), a.index(), a.outcome()))
            {
                violated!(
                    case,
                    5,
                    "served_attempt() is {:?}, the answered attempt {:?} (attempts {:?})",
                    report.served_attempt(),
                    answered.first(),
                    report.attempts()
                );
            }
            let [record] = answered[..] else {
                violated!(
                    case,
                    5,
                    "{} attempts are marked served or stopped: {:?}",
                    answered.len(),
                    report.attempts()
                );
            };
            let from: Vec<_> = received
                .iter()
                .filter(|r| {
                    r.attempt
                        .as_ref()
                        .and_then(|a| chains.of(a))
                        .is_some_and(|(chain, _, _)| {
                            chain.name == record.chain()
                                && r.attempt.as_ref().is_some_and(|a| a.index() == record.index())
                        })
                })
                .collect();
            let [from] = from[..] else {
                violated!(
                    case,
                    5,
                    "{} upstream requests for the served attempt {}",
                    from.len(),
                    record.index()
                );
            };
            let Some(yielded) = &from.answer else {
                violated!(
                    case,
                    5,
                    "attempt {} was served without an upstream answer",
                    record.index()
                );
            };
            let yielded = lock(yielded);
            if from.status != Some(parts.status.as_u16()) {
                violated!(
                    case,
                    5,
                    "the caller got status {}, the upstream sent {:?}",
                    parts.status,
                    from.status
                );
            }
            let committed = parts.extensions.get::<StreamReport>().cloned();
            summary.committed_stream = committed.is_some();
            match committed {
                None => {
                    if got != yielded.bytes {
                        violated!(
                            case,
                            5,
                            "the caller got\n  {:?}\nthe upstream sent\n  {:?}",
                            String::from_utf8_lossy(&got),
                            String::from_utf8_lossy(&yielded.bytes)
                        );
                    }
                    if yielded.failed != body_error.is_some() {
                        violated!(
                            case,
                            5,
                            "the upstream body failed: {}, the caller's: {body_error:?}",
                            yielded.failed
                        );
                    }
                }
                Some(handle) => {
                    if let Some(e) = body_error {
                        violated!(case, 5, "a committed stream's body failed for the caller: {e}");
                    }
                    let Some(extra) = got.strip_prefix(&yielded.bytes[..]) else {
                        violated!(case, 5, "the caller's stream does not start with the upstream's bytes:\n  got {:?}\n  upstream {:?}",
                            String::from_utf8_lossy(&got), String::from_utf8_lossy(&yielded.bytes));
                    };
                    // An event the upstream left open at a clean end is
                    // closed for the caller's client (the line break or
                    // blank line it lacked): those bytes end the upstream's
                    // event and are judged with it, not as the layer's own.
                    let closed = closing_separator(&yielded.bytes, extra, yielded.ended && !yielded.failed);
                    let upstream = [&yielded.bytes[..], &extra[..closed]].concat();
                    let extra = &extra[closed..];
                    let (partial_line, pending_event) = sse_tail(&upstream);
                    let forced = case.max_response_bytes.is_some_and(|max| {
                        has_bare_cr(&upstream) || first_content_at(&upstream).is_none_or(|at| at > max)
                    });
                    let known = (!fixed(CHUNK_AFTER_PENDING_EVENT) && pending_event)
                        || (!fixed(CHUNK_AFTER_PARTIAL_LINE) && partial_line && yielded.ended)
                        || (!fixed(FORCED_COMMIT_TRACKED) && forced);
                    // 5b. A stream that ended cleanly after `[DONE]` (Responses:
                    // `response.completed`/`.incomplete`; Messages:
                    // `message_stop` after a stop reason) is complete:
                    // nothing is added to it.
                    let facts = matches!(dialect, Dialect::Responses | Dialect::Messages)
                        .then(|| stream_facts(dialect, &upstream));
                    let done = match &facts {
                        None => sse_events(&upstream).iter().any(|e| e.trim_ascii() == b"[DONE]"),
                        Some(f) => f.tidy && f.whole,
                    };
                    // 5d. Preamble events are no commit, and an error event
                    // before any content is a failed attempt: such a stream
                    // is never committed (unless the layer held more than
                    // `max_response_bytes` before it decided).
                    if let Some(f) = facts.as_ref() {
                        if f.tidy && f.no_content_before_error && case.max_response_bytes.is_none() {
                            violated!(
                                case,
                                5,
                                "a {dialect} stream was committed though no event before its first error (or its end) carries output\n  upstream sent {:?}",
                                Blob(upstream.clone())
                            );
                        }
                    }
                    // 5e. A terminal event the upstream left undispatched at
                    // its end is no terminal event for the caller's client.
                    if let Some(f) = facts.as_ref() {
                        if yielded.ended
                            && !yielded.failed
                            && extra.is_empty()
                            && !f.whole
                            && !f.error_event
                            && fixed(PENDING_TERMINAL_EVENT_REACHES_CLIENT)
                        {
                            let mut closed = upstream.clone();
                            closed.extend_from_slice(b"\n\n");
                            let closed = stream_facts(dialect, &closed);
                            if closed.tidy && closed.whole {
                                violated!(
                                    case,
                                    5,
                                    "a {dialect} stream's terminal event was never dispatched (no blank line after it) and the caller got nothing added: its client sees no end\n  upstream sent {:?}",
                                    Blob(upstream.clone())
                                );
                            }
                        }
                    }
                    // 5c. One that ended cleanly without its terminal event
                    // (and without an error event of the upstream's, its own
                    // terminal) is not complete: the caller must be told.
                    if let Some(f) = facts.as_ref().filter(|f| f.tidy && !f.whole && !f.error_event) {
                        if yielded.ended && !yielded.failed && extra.is_empty() {
                            violated!(
                                case,
                                5,
                                "a {dialect} stream ended without its terminal event and the caller got nothing added\n  upstream sent {:?} ({f:?})",
                                Blob(upstream.clone())
                            );
                        }
                    }
                    if done
                        && yielded.ended
                        && !yielded.failed
                        && !has_bare_cr(&upstream)
                        && !extra.is_empty()
                        && !known
                    {
                        violated!(
                            case,
                            5,
                            "a whole {dialect} stream got an error chunk\n  upstream sent {:?}\n  then the caller got {:?}",
                            Blob(upstream.clone()),
                            Blob(extra.to_vec())
                        );
                    }
                    if !extra.is_empty() {
                        // Known (see the gate): only the chunk's own shape is checked.
                        // A Responses stream read whole by the layer and the
                        // harness: the event continues its numbering and id.
                        let continues = facts
                            .as_ref()
                            .filter(|f| f.tidy && dialect == Dialect::Responses)
                            .map(|f| &f.continues);
                        let checked = match known {
                            true => check_terminal_event(dialect, b"", strip_separator(extra), None),
                            false => check_terminal_event(dialect, &upstream, extra, continues),
                        };
                        match checked {
                            Ok(code) => summary.error_chunk = Some(code),
                            Err(why) => violated!(
                                case,
                                5,
                                "after the upstream's bytes: {why}\n  upstream sent {:?}\n  then the caller got {:?}",
                                Blob(upstream.clone()),
                                Blob(extra.to_vec())
                            ),
                        }
                    } else if yielded.failed {
                        violated!(
                            case,
                            5,
                            "the upstream stream broke after commit and the caller got no error chunk"
                        );
                    }
                    let Some(last) = handle.get() else {
                        violated!(case, 5, "the stream ended and its StreamReport has no final report");
                    };
                    let broken = last.resolution() == Resolution::StreamBroken;
                    if broken != summary.error_chunk.is_some() && !(broken && extra.is_empty()) {
                        violated!(
                            case,
                            5,
                            "final resolution {:?} but error chunk {:?}",
                            last.resolution(),
                            summary.error_chunk
                        );
                    }
                }
            }
        }
        Resolution::Exhausted | Resolution::DeadlineExceeded => {
            if !matches!(parts.status.as_u16(), 502 | 504) {
                violated!(case, 5, "an exhausted chain answered {}", parts.status);
            }
            if let Err(why) = check_error_json(dialect, &got, Some(report.attempts().len())) {
                violated!(case, 5, "the exhaustion answer is not {dialect}'s error JSON: {why}");
            }
            // 6. The summary says nothing the upstreams or the transport said.
            if case.summary_exhaustion {
                // A model or label the caller configured may spell the text,
                // raw or once escaped into the JSON (`"\u0011" + "27.0.0.1"`
                // reads `127.0.0.1`).
                let holds = |s: &str, text: &str| {
                    s.contains(text) || serde_json::to_string(s).is_ok_and(|json| json.contains(text))
                };
                let named = |text: &str| {
                    let specs = case.routes.iter().chain(&case.policy_routes);
                    specs
                        .clone()
                        .any(|r| holds(&r.model, text) || r.label.is_some_and(|l| holds(l, text)))
                        || case.body.0.windows(text.len()).any(|w| w == text.as_bytes())
                };
                for text in UPSTREAM_TEXTS {
                    if !named(text) && got.windows(text.len()).any(|w| w == text.as_bytes()) {
                        violated!(
                            case,
                            6,
                            "the summary exhaustion body holds {text:?}: {:?}",
                            Blob(got.clone())
                        );
                    }
                }
            }
        }
        _ => {}
    }
    summary
}

/// Checks that `body` is `dialect`'s error JSON (Anthropic's for Messages,
/// OpenAI's for the others), and, for an exhaustion answer (`attempts`
/// given), that its `metadata.attempts` names every attempt.
pub fn check_error_json(dialect: Dialect, body: &[u8], attempts: Option<usize>) -> Result<(), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON ({e}): {:?}", Blob(body.to_vec())))?;
    let error = &v["error"];
    let ok = match dialect {
        Dialect::Messages => {
            v["type"] == "error"
                && error["type"].as_str().is_some_and(|t| {
                    [
                        "invalid_request_error",
                        "request_too_large",
                        "api_error",
                        "timeout_error",
                        "overloaded_error",
                    ]
                    .contains(&t)
                })
                && error["message"].is_string()
        }
        _ => error["message"].is_string() && error["type"].is_string() && error.get("code").is_some(),
    };
    if !ok {
        return Err(format!("not {dialect}'s error shape: {v}"));
    }
    if let Some(n) = attempts {
        let named = error["metadata"]["attempts"].as_array().map(Vec::len);
        if named != Some(n) {
            return Err(format!(
                "metadata.attempts names {named:?} attempts, the report {n}: {v}"
            ));
        }
    }
    Ok(())
}

/// What upstreams and transports say in this harness; a summary exhaustion
/// body holds none of it (unless a model or label of the case does).
const UPSTREAM_TEXTS: [&str; 10] = [
    "the fuzz body was cut",
    "raw provider text",
    "Provider returned error",
    "Provider disconnected",
    "is not a valid model ID",
    "No endpoints found",
    "maximum context length",
    "upstream down",
    "Fuzz",
    "127.0.0.1",
];

fn show(members: &[(String, Value)]) -> String {
    let parts: Vec<String> = members.iter().map(|(k, v)| format!("{k:?}: {v}")).collect();
    format!("{{{}}}", parts.join(", "))
}
