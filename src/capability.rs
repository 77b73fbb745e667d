//! What a request needs, what a route can do, and which routes to skip.
//!
//! Needs are read from the request body with the top-level index: `tools`,
//! `functions` and `tool_choice` mean tool calling; content parts of type
//! `image_url`/`input_image` mean vision and `input_audio` audio (seen by the
//! scanner as it passes over the strings of `messages`: no second pass, no
//! DOM); a `response_format`
//! of type `json_schema` means structured output; the prompt size is
//! estimated from the bytes of `messages` and `tools`. Each
//! [`Dialect`](crate::Dialect) reads its own members: Responses `input`
//! items (`input_image`, `input_audio`, `input_file`), `text.format` and
//! `max_output_tokens`; Messages `image` and `document` blocks, `thinking`
//! and `max_tokens`; embeddings `input`; completions `prompt`.

use std::fmt;
use std::ops::{BitOr, BitOrAssign};

/// Bytes per token assumed by the prompt estimate. Real tokenizers average
/// about 4 bytes per token on English text; assuming 3 over-counts, so a
/// route whose window is too small is skipped rather than tried in vain.
pub const BYTES_PER_TOKEN: u64 = 3;

/// Image and audio data are sent inline (base64) but cost the model far
/// fewer tokens than their bytes: each part counts as this many tokens.
pub(crate) const MEDIA_PART_TOKENS: u64 = 1_500;

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
    /// Structured output: `response_format` of type `json_schema`
    /// (Responses: `text.format`).
    pub const STRUCTURED_OUTPUT: Capabilities = Capabilities(8);
    /// Document input: Responses `input_file` items, Messages `document`
    /// blocks.
    pub const FILES: Capabilities = Capabilities(16);
    /// Extended thinking: a Messages `thinking` that is not `disabled`.
    pub const THINKING: Capabilities = Capabilities(32);

    const NAMES: [(Capabilities, &'static str); 6] = [
        (Capabilities::TOOLS, "tools"),
        (Capabilities::VISION, "vision"),
        (Capabilities::AUDIO, "audio"),
        (Capabilities::STRUCTURED_OUTPUT, "structured_output"),
        (Capabilities::FILES, "files"),
        (Capabilities::THINKING, "thinking"),
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
    /// `audio`, `structured_output`, `files`, `thinking`.
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
    /// `max_tokens` / `max_completion_tokens` (Responses:
    /// `max_output_tokens`), when set.
    pub max_output_tokens: Option<u64>,
    /// The request's API shape: a route whose endpoint does not serve it is
    /// skipped.
    pub dialect: crate::Dialect,
    /// A Responses request that refers to state kept by its upstream
    /// (`previous_response_id`, `conversation`): not sent to a route on
    /// another endpoint.
    pub stateful: bool,
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
    /// The route's endpoint does not serve the request's API shape (see
    /// [`Endpoint::dialects`](crate::native::Endpoint::dialects)).
    Dialect {
        /// The request's shape.
        dialect: crate::Dialect,
    },
    /// A stateful Responses request (`previous_response_id` or
    /// `conversation`): its state lives on the upstream that created it, so
    /// it is not sent to a route on another endpoint (see
    /// [`Endpoint::shares_state`](crate::native::Endpoint::shares_state)).
    Stateful,
    /// Another key of the same endpoint just failed in a way another key
    /// cannot mend (not a rate limit): the endpoint, not the key, is at
    /// fault (see [`Endpoint::api_key_envs`](crate::native::Endpoint::api_key_envs)).
    EndpointFailed,
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
            SkipReason::Dialect { dialect } => write!(f, "its endpoint does not serve {dialect}"),
            SkipReason::Stateful => {
                f.write_str("stateful request (previous_response_id or conversation) not sent to another endpoint")
            }
            SkipReason::EndpointFailed => f.write_str("another key of this endpoint failed, not rate-limited"),
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
            SkipReason::Dialect { .. } => "dialect",
            SkipReason::Stateful => "stateful",
            SkipReason::EndpointFailed => "endpoint_failed",
        }
    }
}
