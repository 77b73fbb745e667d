//! `FallbackLayer` and `FallbackService`.

use crate::body::ResponseBody;
use crate::engine::{self, Shared};
use crate::future::ResponseFuture;
use crate::json::ReplayBody;
use crate::policy::{DefaultPolicy, Policy};
use crate::{BoxError, Chain, ChainSet, FallbackBuilder};
use bytes::Bytes;
use http::{Request, Response};
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
/// [`FallbackLayer::new`] uses the default settings;
/// [`FallbackLayer::builder`] (a [`FallbackBuilder`]) sets the others.
///
/// ```
/// use llm_fallback::{Chain, FallbackLayer, Route};
///
/// let layer = FallbackLayer::builder(Chain::new([Route::new("openai/gpt-4o"), Route::new("openai/gpt-4o-mini")]))
///     .max_body_bytes(4 * 1024 * 1024)
///     .layer();
/// # let _ = layer;
/// ```
pub struct FallbackLayer<P = DefaultPolicy> {
    shared: Shared<P>,
}

impl FallbackLayer {
    /// A layer trying `chain` with the [`DefaultPolicy`] and the default
    /// settings; [`FallbackLayer::builder`] gives it others.
    pub fn new(chain: Chain) -> Self {
        FallbackBuilder::new(chain).layer()
    }

    /// A layer with named chains (see [`ChainSet`]), the [`DefaultPolicy`]
    /// and the default settings.
    pub fn with_chains(chains: ChainSet) -> Self {
        FallbackBuilder::with_chains(chains).layer()
    }

    /// The [`FallbackBuilder`] for `chain`: the policy, limits, health,
    /// hedging and the other settings, then [`layer`](FallbackBuilder::layer).
    pub fn builder(chain: Chain) -> FallbackBuilder {
        FallbackBuilder::new(chain)
    }
}

impl<P> FallbackLayer<P> {
    pub(crate) fn from_shared(shared: Shared<P>) -> Self {
        FallbackLayer { shared }
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
/// Every request it is given is taken as an API call (its dialect from the
/// path, chat completions for a path that names none): mount it on the
/// API's routes. Unlike the reqwest middleware, it does not pass other
/// requests through; a `GET` through it is refused as a body that is not
/// JSON.
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
        ResponseFuture::new(engine::run(shared, inner, req))
    }
}
