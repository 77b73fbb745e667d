//! Routes: which model to try, and how long to give it.

use crate::capability::{Capabilities, Price};
use crate::deployment::{Balance, Deployment};
use crate::native::{Endpoint, ProviderPrefs};
use std::{sync::Arc, time::Duration};

/// One hop of a [`Chain`](crate::Chain): a model id plus how long to give it.
///
/// A route is a plain value: its fields are public to read (and to change
/// before the route goes into a chain), and the builder methods of the same
/// names set them. [`Chain::new`](crate::Chain::new) compiles each route
/// once into what the engine uses per request (the model's JSON literal,
/// header values, health key, metric handles), so rewriting a request for
/// a route costs no allocation, and nothing derived can go stale.
///
/// The model id is what the upstream expects in the request's top-level
/// `"model"` field (for OpenRouter, `vendor/model[:variant]`).
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
/// assert_eq!(route.model, "openai/gpt-4o");
/// assert_eq!(route.label.as_deref(), Some("secondary"));
/// assert_eq!(route.timeout, Some(Duration::from_secs(25)));
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Route {
    /// The model id sent upstream.
    pub model: String,
    /// Names this hop in reports, headers and spans ([`Route::label`]).
    pub label: Option<String>,
    /// Time for each attempt until its answer is known good ([`Route::timeout`]).
    pub timeout: Option<Duration>,
    /// Streams: time to the first content chunk ([`Route::first_token_timeout`]).
    pub first_token_timeout: Option<Duration>,
    /// Streams: longest gap between chunks after commit ([`Route::idle_timeout`]).
    pub idle_timeout: Option<Duration>,
    /// OpenRouter's `provider` object for this route ([`Route::provider`]).
    pub provider: Option<ProviderPrefs>,
    /// Models OpenRouter may fall back to within one attempt ([`Route::native_fallbacks`]).
    pub native_fallbacks: Vec<String>,
    /// Another API the attempts go to ([`Route::endpoint`]).
    pub endpoint: Option<Endpoint>,
    /// Ask OpenRouter for its attempt log ([`Route::openrouter_metadata`]).
    pub openrouter_metadata: bool,
    /// What the model can do, when declared ([`Route::capabilities`]).
    pub capabilities: Option<Capabilities>,
    /// The model's context window in tokens ([`Route::context_window`]).
    pub context_window: Option<u64>,
    /// Most tokens the model can generate ([`Route::max_output_tokens`]).
    pub max_output_tokens: Option<u64>,
    /// The declared price ([`Route::price`]); see [`Route::effective_price`].
    pub price: Option<Price>,
    /// Start the next route beside this one after this long ([`Route::hedge_after`]).
    pub hedge_after: Option<Duration>,
    /// Top-level keys this route sets or removes in its attempts' bodies
    /// ([`Route::set`], [`Route::remove`]).
    pub overrides: Overrides,
    // ----- deployments (issue 17, points 3 and 4) -----
    /// Copies of this route's model tried before the next route ([`Route::deployments`]).
    pub deployments: Vec<Deployment>,
    /// How the deployment tried first is chosen ([`Route::balance`]).
    pub balance: Balance,
    /// Seeds the choice of deployments, for reproducible runs ([`Route::balance_seed`]).
    pub balance_seed: Option<u64>,
    /// Set on the routes a route with deployments or several keys
    /// compiled into: which deployment and key each one is.
    pub(crate) unit: Option<crate::deployment::Unit>,
}

impl Route {
    /// A route to `model`, with no label and no per-attempt timeout.
    pub fn new(model: impl Into<String>) -> Self {
        Route {
            model: model.into(),
            ..Route::default()
        }
    }

    /// Names this hop (`"primary"`, `"budget"`, ...) in reports, headers and spans.
    pub fn label(mut self, label: impl Into<String>) -> Self {
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
        self.provider = Some(prefs);
        self
    }

    /// Lets OpenRouter fall back on its side, within one attempt: the request
    /// carries `"models": [...]` and OpenRouter tries them in order after this
    /// route's model. OpenRouter accepts at most
    /// [`crate::native::MAX_NATIVE_FALLBACKS`] there, so
    /// [`Chain::new`](crate::Chain::new) splits a longer group into
    /// consecutive attempts (`a` + `[b, c, d]`, then `e` + `[f]`, ...) with
    /// this route's settings. The report tells which model served and
    /// whether OpenRouter fell back.
    pub fn native_fallbacks<I, S>(mut self, models: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.native_fallbacks = models.into_iter().map(Into::into).collect();
        self
    }

    /// Sends this route's attempts to another OpenAI-compatible API (see
    /// [`Endpoint`]). Without it, attempts go where the caller's request goes.
    /// Health is kept per model and endpoint: the same model behind two
    /// endpoints fails apart.
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// Hedging: if this route's attempt has no answer after `after` (for a
    /// stream, no first content chunk), the next route starts beside it and
    /// the first acceptable answer wins; the other is cancelled. Needs
    /// [`FallbackBuilder::hedging`](crate::FallbackBuilder::hedging) (the budget).
    pub fn hedge_after(mut self, after: Duration) -> Self {
        self.hedge_after = Some(after);
        self
    }

    /// Several deployments of this route's model (other endpoints, keys or
    /// `provider.order`s, see [`Deployment`]), tried before the chain moves
    /// on: per request one is chosen first by [`Route::balance`], the others
    /// follow in the order given, then the next route. Each deployment (and
    /// each key of an endpoint with [several](Endpoint::api_key_envs)) has
    /// its own health, so one cools down alone. The report
    /// ([`AttemptRecord::deployment`](crate::AttemptRecord::deployment)),
    /// the `x-fallback-deployment` header, the attempt's span and
    /// [`Attempt::deployment`] name the deployment.
    ///
    /// [`Chain::routes`](crate::Chain::routes) lists one route per
    /// deployment and key, in the order given. Put into another chain
    /// (or used as a caller chain's template), such a route is a plain
    /// route with that deployment's endpoint, provider and key.
    ///
    /// ```
    /// use llm_fallback::{Balance, Chain, Deployment, Route};
    /// use llm_fallback::native::ProviderPrefs;
    ///
    /// let by = |p: &str| {
    ///     let mut prefs = ProviderPrefs::default();
    ///     prefs.order = Some(vec![p.into()]);
    ///     Deployment::new(p).provider(prefs)
    /// };
    /// let chain = Chain::new([
    ///     Route::new("openai/gpt-4o")
    ///         .deployments([by("OpenAI"), by("Azure")])
    ///         .balance(Balance::LeastLatency),
    ///     Route::new("anthropic/claude-3.5-sonnet"),
    /// ]);
    /// assert_eq!(chain.routes().len(), 3);
    /// ```
    pub fn deployments<I>(mut self, deployments: I) -> Self
    where
        I: IntoIterator<Item = Deployment>,
    {
        self.deployments = deployments.into_iter().collect();
        self
    }

    /// How the deployment tried first is chosen: by weight (the default)
    /// or by latency (see [`Balance`]).
    pub fn balance(mut self, balance: Balance) -> Self {
        self.balance = balance;
        self
    }

    /// Seeds the generator that chooses among deployments (by default a
    /// random seed): with a seed, the same sequence of requests picks the
    /// same deployments (within one process, requests one at a time).
    pub fn balance_seed(mut self, seed: u64) -> Self {
        self.balance_seed = Some(seed);
        self
    }

    /// Asks OpenRouter for its own attempt log (`X-OpenRouter-Metadata:
    /// enabled`) and copies `openrouter_metadata.attempts` of a
    /// non-streaming answer into the report.
    pub fn openrouter_metadata(mut self, enabled: bool) -> Self {
        self.openrouter_metadata = enabled;
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

    /// The model's price, for [`PriceGuard`](crate::PriceGuard)s. A model id
    /// ending in `:free` is known to be free without it.
    pub fn price(mut self, price: Price) -> Self {
        self.price = Some(price);
        self
    }

    /// Sets the top-level `key` of this route's request bodies to `value`,
    /// like Portkey's `override_params`: `max_tokens` for a model with a
    /// smaller limit, a lower `temperature`, a `reasoning` effort, a
    /// `service_tier`. A key the request has is replaced, one it lacks is
    /// inserted; a later `set` or [`remove`](Route::remove) of the same key
    /// wins. The value is encoded once, when the chain is built; each
    /// attempt's body is still the caller's bytes with a few spans replaced
    /// (the prompt is never copied or re-serialized).
    ///
    /// Keys are compared with the request's decoded keys, so an escaped
    /// spelling (`"max\u005ftokens"`) is the same key. The route's output
    /// limit checks ([`max_output_tokens`](Route::max_output_tokens),
    /// [`context_window`](Route::context_window)) see an overridden output
    /// limit (`max_tokens`, `max_completion_tokens`, Responses
    /// `max_output_tokens`), since that is what is sent; every other need
    /// (tools, media, the prompt's size) is read from the caller's body.
    ///
    /// ```
    /// use llm_fallback::Route;
    /// use serde_json::json;
    ///
    /// let route = Route::new("anthropic/claude-3.5-haiku")
    ///     .set("max_tokens", 512)
    ///     .set("reasoning", json!({ "effort": "low" }))
    ///     .remove("logprobs");
    /// assert_eq!(route.overrides.get("max_tokens"), Some(Some(&json!(512))));
    /// assert_eq!(route.overrides.get("logprobs"), Some(None));
    /// assert_eq!(route.overrides.get("temperature"), None);
    /// ```
    ///
    /// # Panics
    ///
    /// If `key` is one the layer owns ([`Overrides::OWNED_KEYS`]: `model`,
    /// `stream`, and OpenRouter's `models`, `provider`, `route`,
    /// `transforms`, which the layer sets or strips per route), or the
    /// route already has [`Overrides::MAX`] keys. [`try_set`](Route::try_set)
    /// returns the error instead; a config file's errors name the key path.
    #[track_caller]
    #[allow(
        clippy::panic,
        reason = "a builder's documented panic on a configuration mistake, never on a request"
    )]
    pub fn set(self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        match self.try_set(key, value) {
            Ok(route) => route,
            Err(e) => panic!("{e}"),
        }
    }

    /// Removes the top-level `key` from this route's request bodies (a
    /// request without it is sent as it is). Same rules as [`Route::set`].
    ///
    /// # Panics
    ///
    /// As [`Route::set`]; [`try_remove`](Route::try_remove) returns the error.
    #[track_caller]
    #[allow(
        clippy::panic,
        reason = "a builder's documented panic on a configuration mistake, never on a request"
    )]
    pub fn remove(self, key: impl Into<String>) -> Self {
        match self.try_remove(key) {
            Ok(route) => route,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Route::set`], refusing a key the layer owns with an error.
    pub fn try_set(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Result<Self, OverrideError> {
        self.overrides.put(key.into(), Some(value.into()))?;
        Ok(self)
    }

    /// [`Route::remove`], refusing a key the layer owns with an error.
    pub fn try_remove(mut self, key: impl Into<String>) -> Result<Self, OverrideError> {
        self.overrides.put(key.into(), None)?;
        Ok(self)
    }

    /// The price price guards see: the declared one, else free for a model
    /// id ending in `:free`, else unknown.
    ///
    /// ```
    /// use llm_fallback::{Price, Route};
    ///
    /// assert_eq!(Route::new("meta-llama/llama-3.1-8b-instruct:free").effective_price(), Some(Price::FREE));
    /// assert_eq!(Route::new("openai/gpt-4o").effective_price(), None);
    /// ```
    pub fn effective_price(&self) -> Option<Price> {
        self.price
            .or_else(|| self.model.ends_with(":free").then_some(Price::FREE))
    }
}

/// The top-level keys a [`Route`] sets or removes in its attempts' bodies
/// ([`Route::set`], [`Route::remove`]), in the order they were first given.
///
/// Its `Debug` output names the keys only: values can be anything a body
/// carries.
#[derive(Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Overrides {
    /// `(key, Some(value))` to set, `(key, None)` to remove; keys unique.
    list: Vec<(String, Option<serde_json::Value>)>,
}

impl Overrides {
    /// Keys the layer owns, refused as overrides: `model` (the route's
    /// model), `stream` (read to choose how the answer is handled), and
    /// OpenRouter's `models`, `provider`, `route` and `transforms` (set from
    /// [`Route::native_fallbacks`] and [`Route::provider`] for OpenRouter,
    /// stripped for other APIs).
    pub const OWNED_KEYS: [&'static str; 6] = ["model", "stream", "models", "provider", "route", "transforms"];

    /// Most keys one route may override.
    pub const MAX: usize = 64;

    /// No overrides.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the route overrides nothing.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// How many keys the route overrides.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// `Some(Some(value))` for a key set, `Some(None)` for a key removed,
    /// `None` for a key left as the caller sent it.
    pub fn get(&self, key: &str) -> Option<Option<&serde_json::Value>> {
        self.list.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_ref())
    }

    /// Each key with its value (`None`: removed), in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&serde_json::Value>)> {
        self.list.iter().map(|(k, v)| (k.as_str(), v.as_ref()))
    }

    /// Why `key` cannot be overridden, if it cannot.
    pub fn check_key(key: &str) -> Result<(), OverrideError> {
        match Self::OWNED_KEYS.contains(&key) {
            true => Err(OverrideError {
                key: key.to_owned(),
                kind: OverrideErrorKind::Owned,
            }),
            false => Ok(()),
        }
    }

    fn put(&mut self, key: String, value: Option<serde_json::Value>) -> Result<(), OverrideError> {
        Self::check_key(&key)?;
        if let Some(slot) = self.list.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
            return Ok(());
        }
        if self.list.len() >= Self::MAX {
            return Err(OverrideError {
                key,
                kind: OverrideErrorKind::TooMany,
            });
        }
        self.list.push((key, value));
        Ok(())
    }
}

impl std::fmt::Debug for Overrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys only: a value may be anything a request body carries.
        let mut map = f.debug_map();
        for (k, v) in &self.list {
            map.entry(k, &if v.is_some() { "set" } else { "removed" });
        }
        map.finish()
    }
}

/// A key [`Route::try_set`] or [`Route::try_remove`] refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OverrideError {
    key: String,
    kind: OverrideErrorKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OverrideErrorKind {
    Owned,
    TooMany,
}

impl OverrideError {
    /// The key refused.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl std::fmt::Display for OverrideError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            OverrideErrorKind::Owned => write!(
                f,
                "the top-level key {:?} cannot be overridden: the layer sets it for each route \
                 (the keys it owns: model, stream, models, provider, route, transforms)",
                self.key
            ),
            OverrideErrorKind::TooMany => write!(
                f,
                "too many overrides: a route overrides at most {} keys ({:?} is one more)",
                Overrides::MAX,
                self.key
            ),
        }
    }
}

impl std::error::Error for OverrideError {}

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
    pub(crate) chain: Arc<str>,
    pub(crate) index: usize,
    pub(crate) model: Arc<str>,
    pub(crate) label: Option<Arc<str>>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) deployment: Option<Arc<str>>,
    pub(crate) key: Option<Arc<str>>,
}

impl Attempt {
    /// The name of the chain this route is in (see
    /// [`ChainSet`](crate::ChainSet); `"default"` unless the request picked
    /// another or moved to the content-policy chain).
    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// Position of the route in its chain, from 0.
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

    /// The [deployment](Route::deployments) this attempt goes to, if the
    /// route has deployments.
    pub fn deployment(&self) -> Option<&str> {
        self.deployment.as_deref()
    }

    /// The name of the environment variable of the API key this attempt
    /// sends, when its endpoint holds [several](Endpoint::api_key_envs).
    /// Never the key.
    pub fn key_name(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The time this attempt has: the route's timeout, shortened to what is
    /// left of the chain's deadline. `None` when neither is set.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
}
