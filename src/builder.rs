//! `FallbackBuilder`: the settings of the fallback engine, given once, for
//! the tower layer and the reqwest middleware alike.

use crate::engine::Shared;
use crate::health::{Cooldowns, Drills, HealthStore, HedgeBudget};
use crate::policy::{DefaultPolicy, Policy};
use crate::{CallerChains, Chain, ChainSet, ExhaustionBody, FallbackLayer};
use http::HeaderName;
use std::fmt;
use std::sync::Arc;

/// The settings of the fallback engine: its chains, [`Policy`], limits,
/// health, hedging and drills. It builds a tower [`FallbackLayer`] with
/// [`layer`](Self::layer) or, with feature `reqwest`, a
/// [`FallbackMiddleware`](crate::FallbackMiddleware) with
/// [`middleware`](Self::middleware); both run the same engine with the same
/// settings.
///
/// [`FallbackLayer::new`] (and `FallbackMiddleware::new`) are the shortcuts
/// for the default settings; [`FallbackLayer::builder`] and
/// [`FallbackBuilder::new`] are the same builder. With feature `config`,
/// [`FallbackBuilder::from_config`] starts from a config file.
///
/// ```
/// use llm_fallback::health::Cooldowns;
/// use llm_fallback::{Chain, ExhaustionBody, FallbackBuilder, FallbackLayer, Route};
///
/// let chain = Chain::new([Route::new("openai/gpt-4o"), Route::new("openai/gpt-4o-mini")]);
/// let layer: FallbackLayer = FallbackBuilder::new(chain)
///     .max_body_bytes(4 * 1024 * 1024)
///     .cooldowns(Cooldowns::new())
///     .exhaustion_body(ExhaustionBody::Summary)
///     .layer();
/// # let _ = layer;
/// ```
///
/// Every setting is shared (behind an `Arc`) by every service the layer
/// makes and by their clones: one health store, one hedge budget.
pub struct FallbackBuilder<P = DefaultPolicy> {
    shared: Shared<P>,
}

// ===== impl FallbackBuilder =====

impl FallbackBuilder {
    /// Settings for trying `chain` with the [`DefaultPolicy`], everything
    /// else at its default.
    pub fn new(chain: Chain) -> Self {
        Self::with_chains(ChainSet::new(chain))
    }

    /// Settings for named chains (see [`ChainSet`]) with the
    /// [`DefaultPolicy`].
    pub fn with_chains(chains: ChainSet) -> Self {
        FallbackBuilder {
            shared: Shared::new(chains, DefaultPolicy),
        }
    }
}

impl<P> FallbackBuilder<P> {
    /// Replaces the classification policy (see [`Policy`]).
    pub fn with_policy<Q: Policy>(self, policy: Q) -> FallbackBuilder<Q> {
        FallbackBuilder {
            shared: self.shared.with_policy(policy),
        }
    }

    /// Largest request body buffered (default 32 MiB). A larger declared
    /// `Content-Length` is refused before reading; a chunked body is refused
    /// as soon as it passes the limit. Either way the caller gets `413` in
    /// OpenAI error JSON and the upstream is never called.
    pub fn max_body_bytes(mut self, limit: usize) -> Self {
        self.shared.max_body_bytes = limit;
        self
    }

    /// Largest non-streaming response body buffered for inspection (default
    /// 16 MiB). A larger body is passed through unread and judged on its
    /// status alone. A stream holds at most this much before its first
    /// token; past it the stream is committed to and passed on.
    pub fn max_response_bytes(mut self, limit: usize) -> Self {
        self.shared.max_response_bytes = limit;
        self
    }

    /// Turns on per-route cooldowns with the in-memory [`Cooldowns`] store,
    /// shared by every service (or middleware clone) built from these
    /// settings.
    pub fn cooldowns(self, cooldowns: Cooldowns) -> Self {
        self.health_store(Arc::new(cooldowns))
    }

    /// Keeps route health in `store` (for a fleet-wide store).
    pub fn health_store(mut self, store: Arc<dyn HealthStore>) -> Self {
        self.shared.health = Some(store);
        self
    }

    /// The store route health will be kept in, if any: for a health
    /// endpoint ([`HealthStore::status`]).
    pub fn health(&self) -> Option<Arc<dyn HealthStore>> {
        self.shared.health.clone()
    }

    /// Turns on hedging for routes (or chains) with `hedge_after`, within
    /// `budget`.
    pub fn hedging(mut self, budget: HedgeBudget) -> Self {
        self.shared.hedge_budget = Some(Arc::new(budget));
        self
    }

    /// Turns on drills (see [`Drills`]).
    pub fn drills(mut self, drills: Drills) -> Self {
        self.shared.drills = Some(Arc::new(drills));
        self
    }

    /// Lets callers pick a named chain with the `x-fallback-chain` request
    /// header (default off). The header is removed before forwarding either
    /// way; without this it is ignored, so a caller cannot choose a more
    /// expensive chain than the one the layer picks. A
    /// [`ChainName`](crate::ChainName) request extension, which only your
    /// own code can set, is always honoured.
    pub fn allow_chain_header(mut self, yes: bool) -> Self {
        self.shared.allow_chain_header = yes;
        self
    }

    /// Lets a request's OpenRouter-style `models` array be its chain (off
    /// by default; see [`CallerChains`] for the order, the cap, the
    /// allow-list and where the routes' settings come from), so a body
    /// written for OpenRouter gets its fallbacks through the layer against
    /// any endpoint. Off, `models` is the caller's OpenRouter key like any
    /// other (sent to OpenRouter, removed for other endpoints).
    ///
    /// It is off by default because the list is the caller's: a caller
    /// could run up cost on models the operator did not choose. Turn it on
    /// for callers you trust, or bound it with
    /// [`CallerChains::allow`]. An explicit chain pick (a
    /// [`ChainName`](crate::ChainName), an allowed `x-fallback-chain`)
    /// wins over it; it wins over the request's `model` key.
    ///
    /// ```
    /// use llm_fallback::{CallerChains, Chain, FallbackLayer, Route};
    ///
    /// let layer = FallbackLayer::builder(Chain::new([Route::new("openai/gpt-4o-mini")]))
    ///     .caller_chains(CallerChains::new().allow(["openai/*", "anthropic/*"]))
    ///     .layer();
    /// # let _ = layer;
    /// ```
    pub fn caller_chains(mut self, caller: CallerChains) -> Self {
        self.shared.chains.set_caller_chains(Some(caller));
        self
    }

    /// Turns on sticky sessions (see [`affinity`](crate::affinity)): a
    /// session's requests go first to the [deployment](crate::Deployment)
    /// of a route that served its last request, for the affinity's TTL, so
    /// the provider's prompt cache keeps hitting. After a failure there the
    /// request falls back as usual and the deployment that serves is the
    /// new pin. Only routes with deployments are affected. Off by default.
    ///
    /// ```
    /// use llm_fallback::affinity::Affinity;
    /// use llm_fallback::{Chain, Deployment, FallbackLayer, Route};
    ///
    /// let chain = Chain::new([Route::new("gpt-4o").deployments([Deployment::new("a"), Deployment::new("b")])]);
    /// let layer = FallbackLayer::builder(chain)
    ///     .affinity(Affinity::header(http::HeaderName::from_static("x-session-id")))
    ///     .layer();
    /// # let _ = layer;
    /// ```
    pub fn affinity(mut self, affinity: crate::affinity::Affinity) -> Self {
        self.shared.affinity = Some(affinity);
        self
    }

    /// What the `502`/`504` body says when every route failed (default
    /// [`ExhaustionBody::Full`]). Use [`ExhaustionBody::Summary`] when the
    /// callers are not your own code: transport errors can name internal
    /// hosts, and providers' texts can say more than you want to pass on.
    /// The [`FallbackReport`](crate::FallbackReport) keeps the full detail.
    pub fn exhaustion_body(mut self, body: ExhaustionBody) -> Self {
        self.shared.exhaustion_body = body;
        self
    }

    /// Also removes the caller's `name` header from attempts sent to a route
    /// on another [`Endpoint`](crate::native::Endpoint), besides
    /// [`CREDENTIAL_HEADERS`](crate::native::CREDENTIAL_HEADERS) (for a
    /// custom auth header of your upstream).
    ///
    /// ```
    /// use llm_fallback::{Chain, FallbackLayer, Route};
    ///
    /// let layer = FallbackLayer::builder(Chain::new([Route::new("openai/gpt-4o")]))
    ///     .credential_header(http::HeaderName::from_static("x-internal-token"))
    ///     .layer();
    /// # let _ = layer;
    /// ```
    pub fn credential_header(mut self, name: HeaderName) -> Self {
        self.shared.add_credential_header(name);
        self
    }

    /// Calls `hook` once per request with its final
    /// [`FallbackReport`](crate::FallbackReport): which model served, every
    /// attempt, the resolution. A typed client (async-openai, a
    /// `reqwest_middleware` client reading JSON) never sees the response's
    /// headers or extensions; this is how it logs which model served.
    ///
    /// It runs for every request, on every front built from these settings
    /// (the tower layer, the reqwest middleware, the async-openai adapter):
    /// when the answer is ready for a buffered response, an exhausted chain or
    /// a refused request, and for a stream when its body ends (completed,
    /// broken, stalled or dropped by the caller, the same report
    /// [`StreamReport::finished`](crate::StreamReport::finished) resolves to,
    /// before it resolves). Never twice for one request. The report holds no
    /// header, key or body, only models, statuses and the upstreams' error
    /// texts. The hook runs on the request's task: keep it short (log, count,
    /// send to a channel). A second call replaces the first hook.
    ///
    /// ```
    /// use llm_fallback::{Chain, FallbackLayer, FallbackReport, Route};
    ///
    /// let layer = FallbackLayer::builder(Chain::new([Route::new("openai/gpt-4o")]))
    ///     .on_report(|report: &FallbackReport| {
    ///         tracing::info!(model = report.served_model(), attempts = report.attempts().len(), "served");
    ///     })
    ///     .layer();
    /// # let _ = layer;
    /// ```
    pub fn on_report<F>(mut self, hook: F) -> Self
    where
        F: Fn(&crate::FallbackReport) + Send + Sync + 'static,
    {
        self.shared.on_report = Some(Arc::new(hook));
        self
    }

    /// The tower layer with these settings.
    pub fn layer(self) -> FallbackLayer<P> {
        FallbackLayer::from_shared(self.shared)
    }

    /// The `reqwest_middleware` middleware with these settings (feature
    /// `reqwest`). Its own setting,
    /// [`reusable_bodies`](crate::FallbackMiddleware::reusable_bodies), is
    /// given on the middleware.
    ///
    /// ```
    /// use llm_fallback::{Chain, FallbackMiddleware, Route};
    ///
    /// let middleware = FallbackMiddleware::builder(Chain::new([Route::new("openai/gpt-4o")]))
    ///     .max_body_bytes(4 * 1024 * 1024)
    ///     .middleware()
    ///     .reusable_bodies(true);
    /// # let _ = middleware;
    /// ```
    #[cfg(feature = "reqwest")]
    #[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
    pub fn middleware(self) -> crate::FallbackMiddleware<P> {
        crate::FallbackMiddleware::from_shared(self.shared)
    }
}

#[cfg(feature = "async-openai")]
impl<P> FallbackBuilder<P> {
    /// The async-openai HTTP service with these settings (feature
    /// `async-openai`), sending each attempt with `client`: give it to
    /// `async_openai::Client::with_http_service`. See
    /// [`async_openai::FallbackService`](crate::async_openai::FallbackService).
    ///
    /// ```
    /// use llm_fallback::{Chain, FallbackBuilder, Route};
    ///
    /// # let _ = rustls::crypto::ring::default_provider().install_default();
    /// let service = FallbackBuilder::new(Chain::new([Route::new("openai/gpt-4o"), Route::new("openai/gpt-4o-mini")]))
    ///     .on_report(|report| tracing::info!(model = report.served_model(), "served"))
    ///     .async_openai(reqwest::Client::new());
    /// let client = async_openai::Client::new().with_http_service(service);
    /// # let _ = client;
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "async-openai")))]
    pub fn async_openai(
        self,
        client: ::reqwest::Client,
    ) -> crate::async_openai::FallbackService<::async_openai::middleware::ReqwestService, P> {
        crate::async_openai::FallbackService::from_builder(self, client)
    }
}

impl<P> FallbackBuilder<P> {
    #[cfg_attr(not(feature = "async-openai"), allow(dead_code))]
    pub(crate) fn into_shared(self) -> Shared<P> {
        self.shared
    }
}

impl<P> From<FallbackBuilder<P>> for FallbackLayer<P> {
    fn from(builder: FallbackBuilder<P>) -> Self {
        builder.layer()
    }
}

#[cfg(feature = "reqwest")]
impl<P> From<FallbackBuilder<P>> for crate::FallbackMiddleware<P> {
    fn from(builder: FallbackBuilder<P>) -> Self {
        builder.middleware()
    }
}

impl<P> Clone for FallbackBuilder<P> {
    fn clone(&self) -> Self {
        FallbackBuilder {
            shared: self.shared.clone(),
        }
    }
}

impl<P> fmt::Debug for FallbackBuilder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackBuilder")
            .field("chains", &self.shared.chains)
            .field("policy", &std::any::type_name::<P>())
            .field("max_body_bytes", &self.shared.max_body_bytes)
            .field("max_response_bytes", &self.shared.max_response_bytes)
            .field("on_report", &self.shared.on_report.is_some())
            .field("affinity", &self.shared.affinity)
            .finish()
    }
}
