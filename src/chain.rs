//! Chains and chain sets: which routes a request goes down, in which order.

use crate::capability::{Capabilities, Needs, Price, PriceGuard};
use crate::hop::Hop;
use crate::request::BadRequest;
use crate::Route;
use bytes::Bytes;
use std::collections::HashMap;
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

    /// The routes, in the order they are tried: a long native group split
    /// in several (see [`Route::native_fallbacks`]), and a route with
    /// deployments or several keys as one route per deployment and key,
    /// side by side (see [`Route::deployments`]).
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The routes as the engine sends them, in the same order.
    pub(crate) fn hops(&self) -> &[Hop] {
        &self.hops
    }

    /// Some route of the chain chooses among deployments (what a sticky
    /// session pins).
    pub(crate) fn balances(&self) -> bool {
        self.hops
            .iter()
            .any(|h| h.route.unit.as_ref().is_some_and(|u| u.group.members() > 1))
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

/// Named chains: one default, others picked per request, and the model
/// names (and aliases) callers ask for, each mapped to a chain.
///
/// # Which chain a request gets
///
/// First match wins:
///
/// 1. a [`ChainName`] in the request's extensions (only your own code can
///    set it), then the `x-fallback-chain` header when the layer allows it
///    ([`FallbackBuilder::allow_chain_header`](crate::FallbackBuilder::allow_chain_header));
///    the header is removed before forwarding either way, and an unknown
///    name is a `400`;
/// 2. the caller's own `models` list, when the layer takes it
///    ([`FallbackBuilder::caller_chains`](crate::FallbackBuilder::caller_chains));
/// 3. the request's `model`, when it names a chain ([`ChainSet::model`]);
/// 4. for a model that names none, the set's [`UnknownModel`] choice. A set
///    with no model keys uses [`UnknownModel::DefaultChain`] (every request
///    goes as it always did), one with model keys
///    [`UnknownModel::PassThrough`], unless [`ChainSet::unknown_model`]
///    says otherwise.
///
/// Under [`UnknownModel::DefaultChain`] the request's detected needs pick
/// a chain with one of these names, first match wins:
///
/// | needs | chain |
/// |---|---|
/// | image or audio input | [`ChainSet::VISION`] |
/// | tools | [`ChainSet::TOOL_CALLING`] |
/// | `response_format` json_schema | [`ChainSet::STRUCTURED_OUTPUT`] |
/// | more context than the default chain's first route has | [`ChainSet::LONG_CONTEXT`] |
///
/// else the default chain. A model's chain is the caller's choice and is
/// not swapped for a capability chain; the routes of whatever chain was
/// picked that cannot serve the request's needs are still skipped.
/// [`ChainSet::BUDGET`] (or any other name) is only picked explicitly or
/// by a model key. After a moderation failure the rest of the request can
/// move to the chain named by [`ChainSet::on_content_policy`], whichever
/// way its chain was picked.
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
///
/// # Chains keyed by model
///
/// Like LiteLLM's model groups: one client asks for `"cheap"` to classify
/// and `"smart"` to write, and each name has its own fallbacks.
///
/// ```
/// use llm_fallback::{Chain, ChainSet, Route, UnknownModel};
///
/// let strong = Chain::new([Route::new("anthropic/claude-3.5-sonnet"), Route::new("openai/gpt-4o")]);
/// let chains = ChainSet::new(Chain::new([Route::new("openai/gpt-4o-mini")]))
///     .chain("strong", strong)
///     // An alias of a named chain ("default" is the default chain).
///     .model("smart", "strong")
///     .model("cheap", ChainSet::DEFAULT)
///     // A model id with a chain of its own (reported under the model's name).
///     .model("openai/gpt-4o-mini", Chain::new([Route::new("openai/gpt-4o-mini"), Route::new("google/gemini-flash-1.5")]))
///     // A gateway refuses what it does not serve (400 `model_not_found`).
///     .unknown_model(UnknownModel::Reject);
/// assert_eq!(chains.models().collect::<Vec<_>>(), ["cheap", "openai/gpt-4o-mini", "smart"]);
/// ```
#[derive(Clone, Debug)]
pub struct ChainSet {
    default: Chain,
    /// [`ChainSet::DEFAULT`], shared by the reports that name it.
    default_name: Arc<str>,
    named: Vec<(Arc<str>, Chain)>,
    on_content_policy: Option<Arc<str>>,
    /// Model names and aliases, each with its chain.
    models: HashMap<Box<str>, ModelSlot>,
    /// `None`: decided by whether `models` is empty.
    unknown_model: Option<UnknownModel>,
    /// The caller's `models` list is a chain (set by the builder).
    caller: Option<Arc<CallerChains>>,
    /// Report names of the chains made per request.
    pass_through_name: Arc<str>,
    caller_name: Arc<str>,
    /// Every key some route of the set (or the caller chains' template)
    /// overrides: the request index records their members, so the
    /// overrides are edited without a second walk over the body. Kept up
    /// to date by every method that adds a chain.
    record_keys: Arc<crate::request::RecordKeys>,
    /// The metric labels given to models the callers name (passed
    /// through, or in a caller's chain): bounded, shared by clones.
    #[cfg(feature = "metrics")]
    caller_models: Arc<crate::metrics::CallerModels>,
}

/// Where a model key points.
#[derive(Clone, Debug)]
enum ModelSlot {
    Default,
    /// An index into `named` (a replaced chain keeps its index).
    Named(usize),
    /// A chain of its own, reported under the model's name.
    Inline(Arc<str>, Chain),
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
    /// The report's chain name of a request passed through as it is
    /// ([`UnknownModel::PassThrough`]); not a chain that can be picked.
    pub const PASS_THROUGH: &'static str = "pass_through";
    /// The report's chain name of a request that brought its own chain
    /// ([`CallerChains`]); not a chain that can be picked.
    pub const CALLER: &'static str = "caller";

    /// A set whose default chain is `default`.
    pub fn new(default: Chain) -> Self {
        ChainSet {
            default,
            default_name: Arc::from(Self::DEFAULT),
            named: Vec::new(),
            on_content_policy: None,
            models: HashMap::new(),
            unknown_model: None,
            caller: None,
            pass_through_name: Arc::from(Self::PASS_THROUGH),
            caller_name: Arc::from(Self::CALLER),
            record_keys: Arc::default(),
            #[cfg(feature = "metrics")]
            caller_models: Arc::default(),
        }
        .with_record_keys()
    }

    /// `chain`, made from model ids a caller chose, with its metric labels
    /// bounded (see [`crate::metrics::CALLER_MODEL_LABELS`]).
    #[cfg_attr(not(feature = "metrics"), allow(unused_mut))]
    fn caller_named(&self, mut chain: Chain) -> Chain {
        #[cfg(feature = "metrics")]
        if let Some(hops) = Arc::get_mut(&mut chain.hops) {
            for hop in hops {
                hop.metric_model = self.caller_models.label(&hop.model);
            }
        }
        chain
    }

    /// The keys the request index records for the set's overrides.
    pub(crate) fn record_keys(&self) -> &Arc<crate::request::RecordKeys> {
        &self.record_keys
    }

    /// Gathers [`ChainSet::record_keys`] again, after a chain came in.
    fn with_record_keys(mut self) -> Self {
        self.refresh_record_keys();
        self
    }

    fn refresh_record_keys(&mut self) {
        let inline = self.models.values().filter_map(|slot| match slot {
            ModelSlot::Inline(_, chain) => Some(chain),
            _ => None,
        });
        let hops = std::iter::once(&self.default)
            .chain(self.named.iter().map(|(_, c)| c))
            .chain(inline)
            .flat_map(|c| c.hops().iter())
            .flat_map(|h| h.overrides.iter().map(|o| &*o.key));
        // A caller chain's routes are copies of its template (else of the
        // default chain's first route, counted above).
        let template = self
            .caller
            .iter()
            .filter_map(|c| c.template.as_ref())
            .flat_map(|t| t.overrides.iter().map(|(k, _)| k.as_bytes()));
        self.record_keys = Arc::new(crate::request::RecordKeys::new(hops.chain(template)));
    }

    /// Serves requests whose `model` is `model` (a model id or an alias
    /// such as `"smart"`) with `chain`: the name of a chain of the set
    /// (`"default"` for the default chain; add it first) or a [`Chain`] of
    /// its own, reported under the model's name. The chain's routes say
    /// which model each attempt sends, as for any chain. Adding a model
    /// again replaces its chain.
    ///
    /// # Panics
    ///
    /// If `chain` names no chain of the set, like
    /// [`on_content_policy`](Self::on_content_policy): a typo must not
    /// send a model's requests elsewhere.
    #[allow(
        clippy::panic,
        reason = "a builder's documented panic on a configuration mistake, never on a request"
    )]
    pub fn model(mut self, model: impl Into<String>, chain: impl Into<ModelTarget>) -> Self {
        let model: String = model.into();
        let slot = match chain.into() {
            ModelTarget::Named(name) if name == Self::DEFAULT => ModelSlot::Default,
            ModelTarget::Named(name) => match self.named.iter().position(|(n, _)| **n == *name) {
                Some(i) => ModelSlot::Named(i),
                None => panic!("llm_fallback::ChainSet::model: no chain is called {name:?} (for model {model:?})"),
            },
            ModelTarget::Inline(chain) => ModelSlot::Inline(Arc::from(model.as_str()), chain),
        };
        self.models.insert(model.into_boxed_str(), slot);
        self.with_record_keys()
    }

    /// What a request whose `model` names no chain gets (see
    /// [`UnknownModel`]). Without this: [`UnknownModel::DefaultChain`] for
    /// a set with no [model keys](Self::model), so a set of chains behaves
    /// as it always did, and [`UnknownModel::PassThrough`] for one with.
    pub fn unknown_model(mut self, choice: UnknownModel) -> Self {
        self.unknown_model = Some(choice);
        self
    }

    /// The model names and aliases with a chain, sorted (what a gateway's
    /// `GET /v1/models` lists).
    pub fn models(&self) -> impl Iterator<Item = &str> {
        let mut names: Vec<&str> = self.models.keys().map(|k| &**k).collect();
        names.sort_unstable();
        names.into_iter()
    }

    /// The choice in force for a model that names no chain.
    pub fn unknown_model_choice(&self) -> UnknownModel {
        match self.unknown_model {
            Some(choice) => choice,
            None if self.models.is_empty() => UnknownModel::DefaultChain,
            None => UnknownModel::PassThrough,
        }
    }

    /// Takes the caller's `models` lists (set by the builder).
    pub(crate) fn set_caller_chains(&mut self, caller: Option<CallerChains>) {
        self.caller = caller.map(Arc::new);
        self.refresh_record_keys();
    }

    /// Adds (or replaces) the chain called `name`; `"default"` replaces the
    /// default chain.
    pub fn chain(mut self, name: impl Into<String>, chain: Chain) -> Self {
        let name: String = name.into();
        if name == Self::DEFAULT {
            self.default = chain;
            return self.with_record_keys();
        }
        match self.named.iter_mut().find(|(n, _)| **n == *name) {
            Some(slot) => slot.1 = chain,
            None => self.named.push((name.into(), chain)),
        }
        self.with_record_keys()
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

/// The chain [`ChainSet::pick`] chose.
#[derive(Debug)]
pub(crate) enum Picked<'a> {
    /// A chain of the set.
    Set(&'a Arc<str>, &'a Chain),
    /// A chain made for this request (pass-through, or the caller's own),
    /// with the name reports give it.
    Own(Arc<str>, Chain),
}

impl ChainSet {
    /// The chain for a request (see the type's docs for the order):
    /// `explicit` is the extension's or allowed header's name, `model` the
    /// caller's (`model_json` its JSON literal as sent), `models` the
    /// caller's `models` array as sent.
    pub(crate) fn pick<'a>(
        &'a self,
        explicit: Option<&str>,
        model: &str,
        model_json: &[u8],
        models: Option<&[u8]>,
        needs: Option<&Needs>,
    ) -> Result<Picked<'a>, BadRequest> {
        if explicit.is_some() {
            return match self.select(explicit, needs) {
                Ok((n, c)) => Ok(Picked::Set(n, c)),
                Err(message) => Err(BadRequest {
                    code: "unknown_chain",
                    param: None,
                    message,
                }),
            };
        }
        if let (Some(caller), Some(models)) = (&self.caller, models) {
            if let Some(chain) = caller.chain(self, model, models)? {
                return Ok(Picked::Own(self.caller_name.clone(), self.caller_named(chain)));
            }
        }
        if !self.models.is_empty() {
            if let Some(slot) = self.models.get(model) {
                return Ok(match slot {
                    ModelSlot::Default => Picked::Set(&self.default_name, &self.default),
                    ModelSlot::Named(i) => match self.named.get(*i) {
                        Some((n, c)) => Picked::Set(n, c),
                        // Cannot happen: chains are never removed.
                        None => Picked::Set(&self.default_name, &self.default),
                    },
                    ModelSlot::Inline(n, c) => Picked::Set(n, c),
                });
            }
        }
        match self.unknown_model_choice() {
            UnknownModel::PassThrough => Ok(Picked::Own(
                self.pass_through_name.clone(),
                self.caller_named(Chain::pass_through(model, model_json, self.default.deadline)),
            )),
            UnknownModel::Reject => Err(BadRequest {
                code: "model_not_found",
                param: Some("model"),
                message: format!(
                    "the model {:?} is not served here; served models: {}",
                    crate::inspect::truncate(model.to_owned()),
                    self.served_list()
                ),
            }),
            UnknownModel::DefaultChain => match self.select(None, needs) {
                Ok((n, c)) => Ok(Picked::Set(n, c)),
                Err(message) => Err(BadRequest {
                    code: "unknown_chain",
                    param: None,
                    message,
                }),
            },
        }
    }

    fn served_list(&self) -> String {
        let served: Vec<&str> = self.models().collect();
        if served.is_empty() {
            "none".to_owned()
        } else {
            served.join(", ")
        }
    }
}

impl Chain {
    /// The one-route chain of a request passed through as it is: the
    /// caller's model (its JSON literal as sent, so the body goes byte for
    /// byte), no endpoint, no timeout of its own.
    fn pass_through(model: &str, model_json: &[u8], deadline: Option<Duration>) -> Chain {
        let mut chain = Chain::new([Route::new(model)]);
        if let Some(hop) = Arc::get_mut(&mut chain.hops).and_then(|h| h.first_mut()) {
            hop.model_json = Bytes::copy_from_slice(model_json);
        }
        chain.deadline = deadline;
        chain
    }
}

/// Where [`ChainSet::model`] sends a model's requests: a chain of the set
/// by name (from a `&str` or `String`), or a chain of the model's own
/// (from a [`Chain`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ModelTarget {
    /// The chain of the set with this name (`"default"`: the default chain).
    Named(String),
    /// A chain of the model's own.
    Inline(Chain),
}

impl From<&str> for ModelTarget {
    fn from(name: &str) -> Self {
        ModelTarget::Named(name.to_owned())
    }
}

impl From<String> for ModelTarget {
    fn from(name: String) -> Self {
        ModelTarget::Named(name)
    }
}

impl From<Chain> for ModelTarget {
    fn from(chain: Chain) -> Self {
        ModelTarget::Inline(chain)
    }
}

/// What a request whose `model` names no chain of a [`ChainSet`] gets
/// ([`ChainSet::unknown_model`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "config", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "config", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum UnknownModel {
    /// One attempt with the caller's request as it is (model, body and
    /// OpenRouter keys unchanged) to where the caller sent it, judged by
    /// the policy like any attempt; the report names the chain
    /// [`ChainSet::PASS_THROUGH`] and holds that one attempt. The default
    /// chain's deadline bounds it. The in-process default once a set has
    /// model keys: code that asks for a model nobody configured gets it.
    /// Each model passed through is kept apart in route health and metrics
    /// (under its name), so with callers you do not control prefer
    /// [`Reject`](Self::Reject).
    PassThrough,
    /// The default chain, or a chain picked by the request's needs: what a
    /// set without model keys does with every request.
    DefaultChain,
    /// A `400` in the request dialect's error JSON, code `model_not_found`,
    /// listing the served model names: for a gateway, whose callers should
    /// learn at once that a model is not offered.
    Reject,
}

/// Lets a request bring its own chain, as OpenRouter's `models` array
/// (turned on with
/// [`FallbackBuilder::caller_chains`](crate::FallbackBuilder::caller_chains);
/// off by default).
///
/// A request with a non-empty `models` array gets a chain of one route per
/// entry, in order; its `model` goes first when it is not in the list
/// (OpenRouter's order). Entries are model ids sent as they are (not model
/// keys of the set), each at most once. The `models` key itself is removed
/// from every attempt: the layer runs the chain, so no upstream sees the
/// list (OpenRouter would otherwise fall back on its own as well).
///
/// The routes take their settings from a template route: the one given to
/// [`template`](Self::template), else the default chain's first route
/// without what belongs to its model (label, provider preferences, native
/// fallbacks, capabilities, context window, output limit, price): its
/// endpoint, timeouts, hedging and metadata flag. The chain has the default
/// chain's deadline, price guard and hedge delay.
///
/// **Why it is off by default:** the list is the caller's, so a caller
/// could run up cost on models the operator did not choose (a long list of
/// expensive models, each tried after the last failed). The list is capped
/// ([`max_models`](Self::max_models), default 3 as on OpenRouter) and,
/// with [`allow`](Self::allow), each entry must be on an allow-list;
/// either way a refused list is a `400` in the dialect's error JSON naming
/// why (`too_many_models`, `model_not_allowed` naming the entry). Each
/// model of a caller's chain is kept apart in route health, and in metrics
/// by name for the first 64 distinct models the callers name (`other`
/// after that, so callers cannot grow the recorder), one more reason to
/// bound the list.
///
/// ```
/// use llm_fallback::{CallerChains, Chain, FallbackBuilder, Route};
/// use std::time::Duration;
///
/// let layer = FallbackBuilder::new(Chain::new([Route::new("openai/gpt-4o-mini")]))
///     .caller_chains(
///         CallerChains::new()
///             .max_models(3)
///             .allow(["openai/*", "anthropic/claude-3.5-haiku"])
///             .template(Route::new("").timeout(Duration::from_secs(20))),
///     )
///     .layer();
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CallerChains {
    /// The longest `models` array accepted.
    pub max_models: usize,
    /// When set, the model ids (or `prefix*` patterns) an entry must match.
    pub allow: Option<Vec<String>>,
    /// The route every entry's route is made from (its model replaced).
    pub template: Option<Route>,
}

impl Default for CallerChains {
    fn default() -> Self {
        CallerChains {
            max_models: Self::DEFAULT_MAX_MODELS,
            allow: None,
            template: None,
        }
    }
}

impl CallerChains {
    /// Default of [`max_models`](Self::max_models): OpenRouter's own cap.
    pub const DEFAULT_MAX_MODELS: usize = 3;

    /// Caller chains capped at [`DEFAULT_MAX_MODELS`](Self::DEFAULT_MAX_MODELS)
    /// entries, any model allowed, settings from the default chain's first
    /// route.
    pub fn new() -> Self {
        CallerChains::default()
    }

    /// The longest `models` array accepted (a longer one is a `400`
    /// `too_many_models`); the chain has one more route when `model` is
    /// not in the list.
    pub fn max_models(mut self, n: usize) -> Self {
        self.max_models = n;
        self
    }

    /// Only these models may be in a caller's chain (its `model` included
    /// when it goes first): exact ids, or a prefix ending in `*`
    /// (`"openai/*"`). Another entry is a `400` `model_not_allowed`
    /// naming it.
    pub fn allow<I, S>(mut self, models: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allow = Some(models.into_iter().map(Into::into).collect());
        self
    }

    /// The route each entry's route copies, with its model replaced by the
    /// entry (and no native fallbacks).
    pub fn template(mut self, route: Route) -> Self {
        self.template = Some(route);
        self
    }

    fn allows(&self, model: &str) -> bool {
        self.allow.as_ref().is_none_or(|list| {
            list.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => model.starts_with(prefix),
                None => p == model,
            })
        })
    }

    /// The template for the entries' routes.
    fn template_route(&self, set: &ChainSet) -> Route {
        if let Some(t) = &self.template {
            let mut t = t.clone();
            t.native_fallbacks.clear();
            return t;
        }
        let mut t = set.default.routes().first().cloned().unwrap_or_default();
        t.label = None;
        t.provider = None;
        t.native_fallbacks.clear();
        t.capabilities = None;
        t.context_window = None;
        t.max_output_tokens = None;
        t.price = None;
        t
    }

    /// The caller's chain from its `model` and `models` (the array's JSON
    /// as sent); `None` for an empty list.
    fn chain(&self, set: &ChainSet, model: &str, models: &[u8]) -> Result<Option<Chain>, BadRequest> {
        let list: Vec<String> = serde_json::from_slice(models).map_err(|_| BadRequest {
            code: "invalid_models",
            param: Some("models"),
            message: "\"models\" must be an array of model id strings".to_owned(),
        })?;
        if list.is_empty() {
            return Ok(None);
        }
        if list.iter().any(|m| m.trim().is_empty()) {
            return Err(BadRequest {
                code: "invalid_models",
                param: Some("models"),
                message: "\"models\" has an empty model id".to_owned(),
            });
        }
        if list.len() > self.max_models {
            return Err(BadRequest {
                code: "too_many_models",
                param: Some("models"),
                message: format!(
                    "\"models\" has {} entries; at most {} are accepted here",
                    list.len(),
                    self.max_models
                ),
            });
        }
        let first = (!model.is_empty() && !list.iter().any(|m| m == model)).then(|| model.to_owned());
        let mut ids: Vec<String> = Vec::with_capacity(list.len() + 1);
        for id in first.into_iter().chain(list) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        if let Some(refused) = ids.iter().find(|id| !self.allows(id)) {
            return Err(BadRequest {
                code: "model_not_allowed",
                param: Some("models"),
                message: format!(
                    "the model {:?} is not allowed in a caller's chain here; allowed: {}",
                    crate::inspect::truncate(refused.clone()),
                    self.allow.as_deref().unwrap_or_default().join(", ")
                ),
            });
        }
        let template = self.template_route(set);
        let routes = ids.into_iter().map(|id| {
            let mut route = template.clone();
            route.model = id;
            route
        });
        let mut chain = Chain::new(routes);
        if let Some(hops) = Arc::get_mut(&mut chain.hops) {
            for hop in hops {
                hop.drop_models = true;
            }
        }
        chain.deadline = set.default.deadline;
        chain.price_guard = set.default.price_guard;
        chain.hedge_after = set.default.hedge_after;
        Ok(Some(chain))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_balances_when_a_route_has_two_deployments() {
        use crate::native::Endpoint;
        use crate::Deployment;
        std::env::set_var("LLM_FALLBACK_CHAIN_TEST_A", "a");
        std::env::set_var("LLM_FALLBACK_CHAIN_TEST_B", "b");
        let keys = Endpoint::new("http://keys.test/v1")
            .unwrap()
            .api_key_envs(["LLM_FALLBACK_CHAIN_TEST_A", "LLM_FALLBACK_CHAIN_TEST_B"])
            .unwrap();
        assert!(!Chain::new([Route::new("a"), Route::new("b")]).balances());
        // Several keys of one deployment: nothing to choose between.
        assert!(!Chain::new([Route::new("a").endpoint(keys)]).balances());
        let two = Route::new("m").deployments([Deployment::new("x"), Deployment::new("y")]);
        assert!(Chain::new([Route::new("a"), two]).balances());
    }

    #[test]
    fn the_index_records_the_keys_of_every_chain_that_may_serve() {
        let keys = |set: &ChainSet| {
            let mut k: Vec<String> = (0..)
                .map_while(|i| set.record_keys().key(i))
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect();
            k.sort();
            k
        };
        let set = ChainSet::new(Chain::new([Route::new("a")]));
        assert!(set.record_keys().is_empty());
        let mut set = set
            .chain(
                "b",
                Chain::new([Route::new("b").set("seed", 1), Route::new("c").remove("user")]),
            )
            .model("m", Chain::new([Route::new("m").set("top_p", 1)]))
            .chain(
                ChainSet::DEFAULT,
                Chain::new([Route::new("a").set("seed", 2).set("n", 1)]),
            );
        assert_eq!(keys(&set), ["n", "seed", "top_p", "user"]);
        // A caller chain's routes are its template's copies.
        set.set_caller_chains(Some(CallerChains::new().template(Route::new("t").remove("logprobs"))));
        assert_eq!(keys(&set), ["logprobs", "n", "seed", "top_p", "user"]);
        // A replaced chain's keys go with it.
        let set = set.chain("b", Chain::new([Route::new("b")]));
        assert_eq!(keys(&set), ["logprobs", "n", "seed", "top_p"]);
    }
}
