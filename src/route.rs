//! Routes and chains: which models to try, in which order, for how long.

use crate::capability::{Capabilities, Needs, Price, PriceGuard, SkipReason};
use crate::native::{self, Endpoint, ProviderPrefs, MAX_NATIVE_FALLBACKS};
use bytes::Bytes;
use std::{fmt, sync::Arc, time::Duration};

/// One hop of a [`Chain`]: a model id plus how long to give it.
///
/// The model id is what the upstream expects in the request's top-level
/// `"model"` field (for OpenRouter, `vendor/model[:variant]`). The id is
/// JSON-encoded once here, so rewriting a request for this route costs no
/// allocation.
///
/// # Example
///
/// ```
/// use llm_fallback::Route;
/// use std::time::Duration;
///
/// let route = Route::new("openai/gpt-4o")
///     .label("secondary")
///     .timeout(Duration::from_secs(25));
/// assert_eq!(route.model(), "openai/gpt-4o");
/// assert_eq!(route.get_label(), Some("secondary"));
/// ```
#[derive(Clone)]
pub struct Route {
    model: Arc<str>,
    model_json: Bytes,
    label: Option<Arc<str>>,
    /// `x-fallback-model` / `x-fallback-label` values, built once (a clone
    /// shares the bytes) instead of per response.
    model_header: Option<http::HeaderValue>,
    label_header: Option<http::HeaderValue>,
    timeout: Option<Duration>,
    first_token_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    provider: Option<(Arc<ProviderPrefs>, Bytes)>,
    fallbacks: Arc<[String]>,
    fallbacks_json: Option<Bytes>,
    endpoint: Option<Endpoint>,
    metadata: bool,
    capabilities: Option<Capabilities>,
    context_window: Option<u64>,
    max_output_tokens: Option<u64>,
    price: Option<Price>,
    hedge_after: Option<Duration>,
    health_key: Arc<str>,
    /// Metric handles for this route's model, registered once per recorder.
    #[cfg(feature = "metrics")]
    metrics: Arc<crate::metrics::RouteMetrics>,
}

impl Route {
    /// A route to `model`, with no label and no per-attempt timeout.
    pub fn new(model: impl Into<String>) -> Self {
        let model: String = model.into();
        let mut route = Route {
            model: Arc::from(""),
            model_json: Bytes::new(),
            label: None,
            model_header: None,
            label_header: None,
            timeout: None,
            first_token_timeout: None,
            idle_timeout: None,
            provider: None,
            fallbacks: Arc::new([]),
            fallbacks_json: None,
            endpoint: None,
            metadata: false,
            capabilities: None,
            context_window: None,
            max_output_tokens: None,
            price: None,
            hedge_after: None,
            health_key: Arc::from(""),
            #[cfg(feature = "metrics")]
            metrics: Arc::default(),
        };
        route.set_model(&model);
        route
    }

    /// Names this hop (`"primary"`, `"budget"`, ...) in reports, headers and spans.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        let label: String = label.into();
        self.label_header = header_value(&label);
        self.label = Some(label.into());
        self
    }

    /// Gives each attempt on this route at most `timeout`, from sending the
    /// request until the response is known to be good: the whole body for a
    /// plain response, the commit point (first content chunk) for a stream.
    /// The chain's deadline still applies.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// For streaming requests (`"stream": true`): the time from sending the
    /// request to the first `data:` chunk that carries content. Keep-alive
    /// comments (`: OPENROUTER PROCESSING`) do not reset it. Past it the
    /// attempt fails and the next route is tried.
    pub fn first_token_timeout(mut self, timeout: Duration) -> Self {
        self.first_token_timeout = Some(timeout);
        self
    }

    /// For a stream that has begun: the longest gap between two chunks.
    /// Past it the stream is ended with an SSE error chunk
    /// (`finish_reason: "error"`) and the report says it stalled; nothing
    /// is replayed, since the caller already has part of the answer.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Sets OpenRouter's `provider` object for this route's attempts. It
    /// replaces a `provider` the caller put in the request; without it the
    /// caller's `provider` is sent unchanged. The same model through
    /// different providers is two routes with different `order`s.
    pub fn provider(mut self, prefs: ProviderPrefs) -> Self {
        let json = native::provider_json(&prefs);
        self.provider = Some((Arc::new(prefs), json));
        self
    }

    /// Lets OpenRouter fall back on its side, within one attempt: the request
    /// carries `"models": [...]` and OpenRouter tries them in order after this
    /// route's model. OpenRouter accepts at most
    /// [`crate::native::MAX_NATIVE_FALLBACKS`] there, so
    /// [`Chain::new`] splits a longer group into consecutive attempts
    /// (`a` + `[b, c, d]`, then `e` + `[f]`, ...) with this route's settings.
    /// The report tells which model served and whether OpenRouter fell back.
    pub fn native_fallbacks<I, S>(mut self, models: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let models: Vec<String> = models.into_iter().map(Into::into).collect();
        self.fallbacks_json = (!models.is_empty()).then(|| native::models_json(&models));
        self.fallbacks = models.into();
        self
    }

    /// Sends this route's attempts to another OpenAI-compatible API (see
    /// [`Endpoint`]). Without it, attempts go where the caller's request goes.
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoint = Some(endpoint);
        self.health_key = self.derive_health_key();
        self
    }

    /// Hedging: if this route's attempt has no answer after `after` (for a
    /// stream, no first content chunk), the next route starts beside it and
    /// the first acceptable answer wins; the other is cancelled. Needs
    /// [`FallbackLayer::hedging`](crate::FallbackLayer::hedging) (the budget).
    pub fn hedge_after(mut self, after: Duration) -> Self {
        self.hedge_after = Some(after);
        self
    }

    /// The hedge delay, if set.
    pub fn get_hedge_after(&self) -> Option<Duration> {
        self.hedge_after
    }

    /// Asks OpenRouter for its own attempt log (`X-OpenRouter-Metadata:
    /// enabled`) and copies `openrouter_metadata.attempts` of a
    /// non-streaming answer into the report.
    pub fn openrouter_metadata(mut self, enabled: bool) -> Self {
        self.metadata = enabled;
        self
    }

    /// Declares what this route's model can do. A request needing something
    /// it cannot do (tools, images, audio, structured output) skips it.
    /// Without a declaration the route is assumed able to do anything.
    pub fn capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = Some(capabilities);
        self
    }

    /// The model's context window in tokens. A request whose estimated
    /// prompt plus `max_tokens` exceeds it skips the route; after a
    /// `context_length_exceeded`, only routes with a larger window are tried.
    pub fn context_window(mut self, tokens: u64) -> Self {
        self.context_window = Some(tokens);
        self
    }

    /// Most tokens the model can generate; a request asking for more skips it.
    pub fn max_output_tokens(mut self, tokens: u64) -> Self {
        self.max_output_tokens = Some(tokens);
        self
    }

    /// The model's price, for [`PriceGuard`]s. A model id ending in `:free`
    /// is known to be free without it.
    pub fn price(mut self, price: Price) -> Self {
        self.price = Some(price);
        self
    }

    /// The model id sent upstream.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The label, if one was set.
    pub fn get_label(&self) -> Option<&str> {
        self.label.as_deref()
    }

    /// The per-attempt timeout, if one was set.
    pub fn get_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The first-token timeout for streams, if one was set.
    pub fn get_first_token_timeout(&self) -> Option<Duration> {
        self.first_token_timeout
    }

    /// The idle timeout for streams after commit, if one was set.
    pub fn get_idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
    }

    /// The provider preferences, if set.
    pub fn get_provider(&self) -> Option<&ProviderPrefs> {
        self.provider.as_ref().map(|(p, _)| &**p)
    }

    /// The models OpenRouter may fall back to within one attempt.
    pub fn get_native_fallbacks(&self) -> &[String] {
        &self.fallbacks
    }

    /// The endpoint, if this route has its own.
    pub fn get_endpoint(&self) -> Option<&Endpoint> {
        self.endpoint.as_ref()
    }

    /// The declared capabilities, if any.
    pub fn get_capabilities(&self) -> Option<Capabilities> {
        self.capabilities
    }

    /// The context window, if declared.
    pub fn get_context_window(&self) -> Option<u64> {
        self.context_window
    }

    /// The price: declared, or free for `:free` model ids.
    pub fn get_price(&self) -> Option<Price> {
        self.price
            .or_else(|| self.model.ends_with(":free").then_some(Price::FREE))
    }

    /// Declares anything a request's needs are checked against.
    pub(crate) fn has_limits(&self) -> bool {
        self.capabilities.is_some() || self.context_window.is_some() || self.max_output_tokens.is_some()
    }

    /// Why this route cannot serve a request with `needs`, if it cannot.
    pub(crate) fn unfit(&self, needs: &Needs) -> Option<SkipReason> {
        if let Some(caps) = self.capabilities {
            let missing = needs.capabilities.missing_from(caps);
            if !missing.is_empty() {
                return Some(SkipReason::Capability { missing });
            }
        }
        if let Some(window) = self.context_window {
            if needs.context_tokens() > window {
                return Some(SkipReason::ContextWindow {
                    needed: needs.context_tokens(),
                    window,
                });
            }
        }
        match (self.max_output_tokens, needs.max_output_tokens) {
            (Some(limit), Some(requested)) if requested > limit => Some(SkipReason::MaxOutput { requested, limit }),
            _ => None,
        }
    }

    pub(crate) fn provider_json(&self) -> Option<&Bytes> {
        self.provider.as_ref().map(|(_, j)| j)
    }

    pub(crate) fn fallbacks_json(&self) -> Option<&Bytes> {
        self.fallbacks_json.as_ref()
    }

    pub(crate) fn metadata(&self) -> bool {
        self.metadata
    }

    /// Splits a native group longer than OpenRouter's cap into routes that
    /// each fit.
    fn split(self) -> Vec<Route> {
        if self.fallbacks.len() <= MAX_NATIVE_FALLBACKS {
            return vec![self];
        }
        let all: Vec<String> = std::iter::once(self.model.to_string())
            .chain(self.fallbacks.iter().cloned())
            .collect();
        all.chunks(MAX_NATIVE_FALLBACKS + 1)
            .map(|group| {
                let mut r = self.clone();
                r.set_model(&group[0]);
                r.native_fallbacks(group[1..].iter().cloned())
            })
            .collect()
    }

    /// Points the route at `model`: everything derived from the model (its
    /// JSON literal, header value, health key and metric handles) follows.
    fn set_model(&mut self, model: &str) {
        self.model = model.into();
        self.model_json = crate::json::scan::encode_string(model);
        self.model_header = header_value(model);
        self.health_key = self.derive_health_key();
        #[cfg(feature = "metrics")]
        {
            self.metrics = Arc::default();
        }
    }

    /// Health is kept per model and endpoint: the same model behind two
    /// endpoints fails apart.
    fn derive_health_key(&self) -> Arc<str> {
        match &self.endpoint {
            Some(e) => format!("{}@{}", self.model, e.base_url()).into(),
            None => self.model.clone(),
        }
    }

    /// The key route health is kept under: the model, plus the endpoint.
    pub(crate) fn health_key(&self) -> &str {
        &self.health_key
    }

    pub(crate) fn health_key_arc(&self) -> &Arc<str> {
        &self.health_key
    }

    #[cfg(feature = "metrics")]
    pub(crate) fn metrics(&self) -> &crate::metrics::RouteMetrics {
        &self.metrics
    }

    pub(crate) fn model_arc(&self) -> &Arc<str> {
        &self.model
    }

    /// The model as a header value, when it is one.
    pub(crate) fn model_header(&self) -> Option<&http::HeaderValue> {
        self.model_header.as_ref()
    }

    /// The label as a header value, when it is one.
    pub(crate) fn label_header(&self) -> Option<&http::HeaderValue> {
        self.label_header.as_ref()
    }

    pub(crate) fn label_arc(&self) -> Option<&Arc<str>> {
        self.label.as_ref()
    }

    /// The model id as a JSON string literal, quotes included.
    pub(crate) fn model_json(&self) -> &Bytes {
        &self.model_json
    }
}

/// `text` as a response header value; `None` when empty (the header is
/// then left out) or not a valid header value.
pub(crate) fn header_value(text: &str) -> Option<http::HeaderValue> {
    http::HeaderValue::from_str(text).ok().filter(|_| !text.is_empty())
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("model", &self.model)
            .field("label", &self.label)
            .field("timeout", &self.timeout)
            .field("first_token_timeout", &self.first_token_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("provider", &self.get_provider())
            .field("native_fallbacks", &self.fallbacks)
            .field("endpoint", &self.endpoint)
            .field("openrouter_metadata", &self.metadata)
            .field("capabilities", &self.capabilities)
            .field("context_window", &self.context_window)
            .field("max_output_tokens", &self.max_output_tokens)
            .field("price", &self.price)
            .field("hedge_after", &self.hedge_after)
            .finish()
    }
}

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
#[derive(Clone, Debug)]
pub struct Chain {
    routes: Arc<[Route]>,
    deadline: Option<Duration>,
    price_guard: Option<PriceGuard>,
    hedge_after: Option<Duration>,
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
        let routes: Arc<[Route]> = routes.into_iter().flat_map(Route::split).collect();
        assert!(
            !routes.is_empty(),
            "llm_fallback::Chain::new: a chain needs at least one route"
        );
        Chain {
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

    /// The chain-wide hedge delay, if set.
    pub fn get_hedge_after(&self) -> Option<Duration> {
        self.hedge_after
    }

    /// The price guard, if set.
    pub fn get_price_guard(&self) -> Option<PriceGuard> {
        self.price_guard
    }

    /// The most a route may cost under `guard`, or `None` when the guard
    /// cannot apply (a primary of unknown price under `NotAbovePrimary`).
    pub(crate) fn price_cap(&self, guard: PriceGuard) -> Option<Price> {
        match guard {
            PriceGuard::FreeOnly => Some(Price::FREE),
            PriceGuard::Max(p) => Some(p),
            PriceGuard::NotAbovePrimary => self.routes[0].get_price(),
        }
    }

    /// Some route declares limits, so requests' needs must be read.
    pub(crate) fn checks_needs(&self) -> bool {
        self.routes.iter().any(Route::has_limits)
    }

    /// The routes, in the order they are tried.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The overall deadline, if one was set.
    pub fn get_deadline(&self) -> Option<Duration> {
        self.deadline
    }
}

/// Named chains: one default, and others picked per request.
///
/// A request picks its chain explicitly with a [`ChainName`] in its
/// extensions or, when the layer allows it
/// ([`FallbackLayer::allow_chain_header`](crate::FallbackLayer::allow_chain_header)),
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
                .and_then(Route::get_context_window)
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

/// The hop a request is serving, inserted into each attempt's request
/// extensions so layers inside the fallback (retry, tracing, metrics) can
/// tell which model and position they serve.
///
/// # Example
///
/// ```
/// use llm_fallback::Attempt;
///
/// fn log_hop<B>(req: &http::Request<B>) {
///     if let Some(a) = req.extensions().get::<Attempt>() {
///         println!("attempt {} to {}", a.index(), a.model());
///     }
/// }
/// # log_hop(&http::Request::new(()));
/// ```
#[derive(Clone, Debug)]
pub struct Attempt {
    pub(crate) index: usize,
    pub(crate) model: Arc<str>,
    pub(crate) label: Option<Arc<str>>,
    pub(crate) timeout: Option<Duration>,
}

impl Attempt {
    /// Position of the route in the chain, from 0.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The model this attempt asks for.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The route's label, if any.
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }

    /// The time this attempt has: the route's timeout, shortened to what is
    /// left of the chain's deadline. `None` when neither is set.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_models_and_labels_make_no_header() {
        let route = Route::new("").label("");
        assert!(route.model_header().is_none());
        assert!(route.label_header().is_none());
        let route = Route::new("m/x").label("primary");
        assert_eq!(route.model_header().unwrap(), "m/x");
        assert_eq!(route.label_header().unwrap(), "primary");
    }

    #[test]
    fn long_native_groups_are_split_to_fit_openrouter() {
        let chain = Chain::new([
            Route::new("a")
                .label("group")
                .native_fallbacks(["b", "c", "d", "e", "f"]),
            Route::new("z"),
        ]);
        let shape: Vec<(&str, Vec<&str>, Option<&str>)> = chain
            .routes()
            .iter()
            .map(|r| {
                (
                    r.model(),
                    r.get_native_fallbacks().iter().map(String::as_str).collect(),
                    r.get_label(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                ("a", vec!["b", "c", "d"], Some("group")),
                ("e", vec!["f"], Some("group")),
                ("z", vec![], None),
            ]
        );
        assert_eq!(&chain.routes()[1].model_json()[..], br#""e""#);
        // Everything derived from the model follows the split.
        assert_eq!(chain.routes()[1].model_header().unwrap(), "e");
        assert_eq!(chain.routes()[1].health_key(), "e");
        assert_eq!(&chain.routes()[0].fallbacks_json().unwrap()[..], br#"["b","c","d"]"#);
    }
}
