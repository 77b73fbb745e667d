//! `FallbackLayer` and `FallbackService`.

use crate::body::ResponseBody;
use crate::engine::{self, Shared};
use crate::future::ResponseFuture;
use crate::health::{Cooldowns, Drills, HealthStore, HedgeBudget};
use crate::json::ReplayBody;
use crate::policy::{DefaultPolicy, Policy};
use crate::{BoxError, Chain, ChainSet, ExhaustionBody};
use bytes::Bytes;
use http::{HeaderName, Request, Response};
use http_body::Body;
use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};
use tower_layer::Layer;
use tower_service::Service;

/// Applies [`FallbackService`] to an inner HTTP client service.
///
/// See the [crate docs](crate) for what it does and a full example.
///
/// ```
/// use llm_fallback::{Chain, FallbackLayer, Route};
///
/// let layer = FallbackLayer::new(Chain::new([Route::new("openai/gpt-4o"), Route::new("openai/gpt-4o-mini")]))
///     .max_body_bytes(4 * 1024 * 1024);
/// # let _ = layer;
/// ```
pub struct FallbackLayer<P = DefaultPolicy> {
    shared: Shared<P>,
}

impl FallbackLayer {
    /// A layer trying `chain` with the [`DefaultPolicy`].
    pub fn new(chain: Chain) -> Self {
        Self::with_chains(ChainSet::new(chain))
    }

    /// A layer with named chains (see [`ChainSet`]) and the [`DefaultPolicy`].
    pub fn with_chains(chains: ChainSet) -> Self {
        FallbackLayer {
            shared: Shared::new(chains, DefaultPolicy),
        }
    }
}

impl<P> FallbackLayer<P> {
    /// Replaces the classification policy.
    pub fn with_policy<Q: Policy>(self, policy: Q) -> FallbackLayer<Q> {
        FallbackLayer {
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
    /// status alone.
    pub fn max_response_bytes(mut self, limit: usize) -> Self {
        self.shared.max_response_bytes = limit;
        self
    }

    /// Turns on per-route cooldowns with the in-memory [`Cooldowns`] store,
    /// shared by every service this layer makes and their clones.
    pub fn cooldowns(self, cooldowns: Cooldowns) -> Self {
        self.health_store(Arc::new(cooldowns))
    }

    /// Keeps route health in `store` (for a fleet-wide store).
    pub fn health_store(mut self, store: Arc<dyn HealthStore>) -> Self {
        self.shared.health = Some(store);
        self
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
    /// let layer = FallbackLayer::new(Chain::new([Route::new("openai/gpt-4o")]))
    ///     .credential_header(http::HeaderName::from_static("x-internal-token"));
    /// # let _ = layer;
    /// ```
    pub fn credential_header(mut self, name: HeaderName) -> Self {
        self.shared.add_credential_header(name);
        self
    }

    /// The default chain this layer tries.
    pub fn chain(&self) -> &Chain {
        self.shared.chains.default_chain()
    }

    /// Every chain of this layer.
    pub fn chains(&self) -> &ChainSet {
        &self.shared.chains
    }
}

impl<P> Clone for FallbackLayer<P> {
    fn clone(&self) -> Self {
        FallbackLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<P> fmt::Debug for FallbackLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackLayer")
            .field("chains", &self.shared.chains)
            .field("policy", &std::any::type_name::<P>())
            .field("max_body_bytes", &self.shared.max_body_bytes)
            .field("max_response_bytes", &self.shared.max_response_bytes)
            .finish()
    }
}

impl<S, P> Layer<S> for FallbackLayer<P> {
    type Service = FallbackService<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        FallbackService {
            inner,
            shared: Arc::new(self.shared.clone()),
        }
    }
}

/// Replays a chat-completions request down a [`Chain`] of models.
///
/// The inner service receives `http::Request<`[`ReplayBody`]`>`: the
/// caller's request with only the top-level `"model"` value rewritten, a
/// correct `Content-Length`, and an [`Attempt`](crate::Attempt) extension.
/// Responses carry a [`FallbackReport`](crate::FallbackReport) extension and
/// `x-fallback-model` / `x-fallback-attempts` / `x-fallback-label` headers.
///
/// Failures become responses: a refused request is a `400`/`413`, an
/// exhausted chain a `502` (`504` past the deadline), both in OpenAI error
/// JSON. The service's error is the inner service's, and only comes from
/// `poll_ready`.
///
/// # Clone
///
/// Clones share the chain and the policy (behind an `Arc`). Each call moves
/// the service that was polled ready into its future and leaves a clone in
/// its place, as tower's own middleware do.
pub struct FallbackService<S, P = DefaultPolicy> {
    inner: S,
    shared: Arc<Shared<P>>,
}

impl<S> FallbackService<S> {
    /// Wraps `inner` with `chain` and the [`DefaultPolicy`].
    pub fn new(inner: S, chain: Chain) -> Self {
        FallbackLayer::new(chain).layer(inner)
    }

    /// A [`FallbackLayer`] for `chain`, the shortcut tower's middleware offer.
    pub fn layer(chain: Chain) -> FallbackLayer {
        FallbackLayer::new(chain)
    }
}

impl<S, P> FallbackService<S, P> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, P> Clone for FallbackService<S, P> {
    fn clone(&self) -> Self {
        FallbackService {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, P> fmt::Debug for FallbackService<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackService")
            .field("inner", &self.inner)
            .field("chains", &self.shared.chains)
            .field("policy", &std::any::type_name::<P>())
            .finish()
    }
}

impl<S, P, B, RB> Service<Request<B>> for FallbackService<S, P>
where
    S: Service<Request<ReplayBody>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError> + Send + 'static,
    P: Policy,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    RB: Body<Data = Bytes> + Unpin + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<RB>>;
    type Error = S::Error;
    type Future = ResponseFuture<RB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // `self.inner` is the service that was polled ready: take it into the
        // future for the first attempt and leave a clone (not yet ready) here.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        ResponseFuture::new(async move { Ok(engine::run(shared, inner, req).await) })
    }
}
