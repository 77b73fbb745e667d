//! Chains and chain sets: which routes a request goes down, in which order.

use crate::capability::{Capabilities, Needs, Price, PriceGuard};
use crate::hop::Hop;
use crate::Route;
use std::{sync::Arc, time::Duration};

/// An ordered list of [`Route`]s and an overall deadline.
///
/// The first route is tried first; each later one only when every earlier one
/// failed in a way the [`Policy`](crate::Policy) says is worth falling back on.
/// Cloning a chain is cheap (the routes sit behind an `Arc`).
///
/// # Example
///
/// ```
/// use llm_fallback::{Chain, Route};
/// use std::time::Duration;
///
/// let chain = Chain::new([
///     Route::new("anthropic/claude-3.5-sonnet").label("primary").timeout(Duration::from_secs(30)),
///     Route::new("openai/gpt-4o-mini").label("budget").timeout(Duration::from_secs(15)),
/// ])
/// .deadline(Duration::from_secs(60));
/// assert_eq!(chain.routes().len(), 2);
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct Chain {
    routes: Arc<[Route]>,
    /// The routes compiled once, in the same order.
    hops: Arc<[Hop]>,
    /// Bounds the whole chain ([`Chain::deadline`]).
    pub deadline: Option<Duration>,
    /// Caps what fallbacks may cost ([`Chain::price_guard`]).
    pub price_guard: Option<PriceGuard>,
    /// Hedging for routes that set none ([`Chain::hedge_after`]).
    pub hedge_after: Option<Duration>,
}

impl Chain {
    /// A chain trying `routes` in order, with no overall deadline.
    ///
    /// A route with more [native fallbacks](Route::native_fallbacks) than
    /// OpenRouter accepts becomes several consecutive routes.
    ///
    /// # Panics
    ///
    /// If `routes` is empty: a chain with nothing to try is a configuration
    /// bug, and failing every request at run time would hide it.
    pub fn new(routes: impl IntoIterator<Item = Route>) -> Self {
        let routes: Arc<[Route]> = routes.into_iter().flat_map(Hop::split).collect();
        assert!(
            !routes.is_empty(),
            "llm_fallback::Chain::new: a chain needs at least one route"
        );
        Chain {
            hops: routes.iter().cloned().map(Hop::new).collect(),
            routes,
            deadline: None,
            price_guard: None,
            hedge_after: None,
        }
    }

    /// Bounds the whole chain: no attempt runs past `deadline` after the
    /// request arrived, so a cascade of per-route timeouts stays bounded.
    /// When it expires the caller gets a `504` naming every attempt.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Caps what fallbacks may cost (see [`PriceGuard`]); a `PriceGuard` in
    /// a request's extensions overrides it for that request.
    pub fn price_guard(mut self, guard: PriceGuard) -> Self {
        self.price_guard = Some(guard);
        self
    }

    /// Hedging for every route of the chain that sets none itself (see
    /// [`Route::hedge_after`]).
    pub fn hedge_after(mut self, after: Duration) -> Self {
        self.hedge_after = Some(after);
        self
    }

    /// The most a route may cost under `guard`, or `None` when the guard
    /// cannot apply (a primary of unknown price under `NotAbovePrimary`).
    pub(crate) fn price_cap(&self, guard: PriceGuard) -> Option<Price> {
        match guard {
            PriceGuard::FreeOnly => Some(Price::FREE),
            PriceGuard::Max(p) => Some(p),
            PriceGuard::NotAbovePrimary => self.hops.first().and_then(|h| h.price),
        }
    }

    /// Some route declares limits, so requests' needs must be read.
    pub(crate) fn checks_needs(&self) -> bool {
        self.hops.iter().any(Hop::has_limits)
    }

    /// The routes, in the order they are tried (a long native group split
    /// in several, see [`Route::native_fallbacks`]).
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The routes as the engine sends them, in the same order.
    pub(crate) fn hops(&self) -> &[Hop] {
        &self.hops
    }
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The hops are derived from the routes.
        f.debug_struct("Chain")
            .field("routes", &self.routes)
            .field("deadline", &self.deadline)
            .field("price_guard", &self.price_guard)
            .field("hedge_after", &self.hedge_after)
            .finish()
    }
}

/// Named chains: one default, and others picked per request.
///
/// A request picks its chain explicitly with a [`ChainName`] in its
/// extensions or, when the layer allows it
/// ([`FallbackBuilder::allow_chain_header`](crate::FallbackBuilder::allow_chain_header)),
/// an `x-fallback-chain` header (removed before forwarding either way; an
/// unknown name is a `400`). Otherwise, when the set has chains with these
/// names, the request's detected needs pick them, first match wins:
///
/// | needs | chain |
/// |---|---|
/// | image or audio input | [`ChainSet::VISION`] |
/// | tools | [`ChainSet::TOOL_CALLING`] |
/// | `response_format` json_schema | [`ChainSet::STRUCTURED_OUTPUT`] |
/// | more context than the default chain's first route has | [`ChainSet::LONG_CONTEXT`] |
///
/// else the default chain. [`ChainSet::BUDGET`] (or any other name) is only
/// picked explicitly. After a moderation failure the rest of the request can
/// move to the chain named by [`ChainSet::on_content_policy`].
///
/// ```
/// use llm_fallback::{Capabilities, Chain, ChainSet, FallbackLayer, Route};
///
/// let chains = ChainSet::new(Chain::new([Route::new("openai/gpt-4o-mini"), Route::new("anthropic/claude-3.5-haiku")]))
///     .chain(ChainSet::VISION, Chain::new([Route::new("openai/gpt-4o").capabilities(Capabilities::VISION)]))
///     .chain(ChainSet::BUDGET, Chain::new([Route::new("meta-llama/llama-3.1-8b-instruct:free")]))
///     .chain("lenient", Chain::new([Route::new("mistralai/mistral-large")]))
///     .on_content_policy("lenient");
/// let layer = FallbackLayer::with_chains(chains);
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct ChainSet {
    default: Chain,
    /// [`ChainSet::DEFAULT`], shared by the reports that name it.
    default_name: Arc<str>,
    named: Vec<(Arc<str>, Chain)>,
    on_content_policy: Option<Arc<str>>,
}

impl ChainSet {
    /// Name of the default chain (usable with `x-fallback-chain`).
    pub const DEFAULT: &'static str = "default";
    /// Picked for requests with tools.
    pub const TOOL_CALLING: &'static str = "tool_calling";
    /// Picked for requests with image or audio input.
    pub const VISION: &'static str = "vision";
    /// Picked for requests with a `json_schema` response format.
    pub const STRUCTURED_OUTPUT: &'static str = "structured_output";
    /// Picked for requests larger than the default chain's first window.
    pub const LONG_CONTEXT: &'static str = "long_context";
    /// Only picked explicitly.
    pub const BUDGET: &'static str = "budget";

    /// A set whose default chain is `default`.
    pub fn new(default: Chain) -> Self {
        ChainSet {
            default,
            default_name: Arc::from(Self::DEFAULT),
            named: Vec::new(),
            on_content_policy: None,
        }
    }

    /// Adds (or replaces) the chain called `name`; `"default"` replaces the
    /// default chain.
    pub fn chain(mut self, name: impl Into<String>, chain: Chain) -> Self {
        let name: String = name.into();
        if name == Self::DEFAULT {
            self.default = chain;
            return self;
        }
        match self.named.iter_mut().find(|(n, _)| **n == *name) {
            Some(slot) => slot.1 = chain,
            None => self.named.push((name.into(), chain)),
        }
        self
    }

    /// After an attempt fails on a moderation or content-policy block, the
    /// rest of the request moves to the chain called `name` (LiteLLM's
    /// content-policy fallbacks). It must name a chain of the set.
    ///
    /// # Panics
    ///
    /// If no chain is called `name` (add it first).
    pub fn on_content_policy(mut self, name: impl Into<String>) -> Self {
        let name: String = name.into();
        assert!(
            self.get(&name).is_some(),
            "llm_fallback::ChainSet::on_content_policy: no chain is called {name:?}"
        );
        self.on_content_policy = Some(name.into());
        self
    }

    /// The chain called `name`.
    pub fn get(&self, name: &str) -> Option<&Chain> {
        if name == Self::DEFAULT {
            return Some(&self.default);
        }
        self.named.iter().find(|(n, _)| **n == *name).map(|(_, c)| c)
    }

    /// The default chain.
    pub fn default_chain(&self) -> &Chain {
        &self.default
    }

    /// Every name, the default first.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(Self::DEFAULT).chain(self.named.iter().map(|(n, _)| &**n))
    }

    pub(crate) fn content_policy_chain(&self) -> Option<(&Arc<str>, &Chain)> {
        let name = self.on_content_policy.as_deref()?;
        self.entries().find(|(n, _)| ***n == *name)
    }

    /// Every chain with its name, the default first.
    fn entries(&self) -> impl Iterator<Item = (&Arc<str>, &Chain)> {
        std::iter::once((&self.default_name, &self.default)).chain(self.named.iter().map(|(n, c)| (n, c)))
    }

    /// Some chain has limits, or need-picked chains exist: read needs.
    pub(crate) fn reads_needs(&self) -> bool {
        self.default.checks_needs()
            || self.named.iter().any(|(n, c)| {
                c.checks_needs()
                    || [
                        Self::VISION,
                        Self::TOOL_CALLING,
                        Self::STRUCTURED_OUTPUT,
                        Self::LONG_CONTEXT,
                    ]
                    .contains(&&**n)
            })
    }

    /// The chain for a request: explicit, else by needs, else the default.
    pub(crate) fn select<'a>(
        &'a self,
        explicit: Option<&str>,
        needs: Option<&Needs>,
    ) -> Result<(&'a Arc<str>, &'a Chain), String> {
        if let Some(name) = explicit {
            return self.entries().find(|(n, _)| ***n == *name).ok_or_else(|| {
                format!(
                    "unknown fallback chain {name:?}; this layer has: {}",
                    self.names().collect::<Vec<_>>().join(", ")
                )
            });
        }
        if let Some(n) = needs {
            let long = self
                .default
                .routes()
                .first()
                .and_then(|r| r.context_window)
                .is_some_and(|w| n.context_tokens() > w);
            let wanted = [
                (
                    n.capabilities.contains(Capabilities::VISION) || n.capabilities.contains(Capabilities::AUDIO),
                    Self::VISION,
                ),
                (n.capabilities.contains(Capabilities::TOOLS), Self::TOOL_CALLING),
                (
                    n.capabilities.contains(Capabilities::STRUCTURED_OUTPUT),
                    Self::STRUCTURED_OUTPUT,
                ),
                (long, Self::LONG_CONTEXT),
            ];
            let picked = wanted
                .iter()
                .filter(|(w, _)| *w)
                .find_map(|(_, name)| self.named.iter().find(|(n, _)| **n == **name).map(|(n, c)| (n, c)));
            if let Some(picked) = picked {
                return Ok(picked);
            }
        }
        Ok((&self.default_name, &self.default))
    }
}

impl From<Chain> for ChainSet {
    fn from(chain: Chain) -> Self {
        ChainSet::new(chain)
    }
}

/// Picks a named chain of a [`ChainSet`] for one request, when put in the
/// request's extensions (the `x-fallback-chain` header does the same when
/// the layer allows it). Only code in front of the layer can set it, so it
/// is always honoured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainName(pub String);
