//! The fallback engine as [async-openai]'s HTTP service (feature
//! `async-openai`).
//!
//! async-openai's `Client::with_http_service` takes any tower service of
//! [`HttpRequestFactory`]; [`FallbackService`] is one. Install it with one
//! line and every typed call (chat, Responses, embeddings, completions,
//! streaming or not) is replayed down the chain by the same engine as the
//! tower layer and the reqwest middleware:
//!
//! ```
//! use llm_fallback::async_openai::FallbackService;
//! use llm_fallback::{Chain, Route};
//!
//! let chain = Chain::new([Route::new("anthropic/claude-3.5-sonnet"), Route::new("openai/gpt-4o")]);
//! # let _ = rustls::crypto::ring::default_provider().install_default();
//! let config = async_openai::config::OpenAIConfig::new()
//!     .with_api_base("https://openrouter.ai/api/v1")
//!     .with_api_key("sk-or-...");
//! let client = async_openai::Client::with_config(config)
//!     .with_http_service(FallbackService::new(chain, reqwest::Client::new()));
//! # let _ = client;
//! ```
//!
//! [async-openai]: https://docs.rs/async-openai

use crate::engine::{self, Shared};
use crate::json::ReplayBody;
use crate::policy::{DefaultPolicy, Policy};
use crate::{Chain, ChainSet, FallbackBuilder};
use ::async_openai::error::OpenAIError;
use ::async_openai::middleware::{HttpRequestFactory, ReqwestService};
use ::reqwest::{Method, Request, Response, ResponseBuilderExt, Url};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use tower::ServiceExt;
use tower_service::Service;

/// The fallback engine as async-openai's HTTP transport: a
/// `tower::Service<`[`HttpRequestFactory`]`, Response = reqwest::Response,
/// Error = `[`OpenAIError`]`>` for `Client::with_http_service`.
///
/// Each call builds the request from the factory once and takes its body
/// without copying it; the engine then replays it down the chain exactly as
/// the [`FallbackLayer`](crate::FallbackLayer) and the
/// [`FallbackMiddleware`](crate::FallbackMiddleware) do (the same
/// [`Policy`], timeouts, deadline, health, hedging and streaming commit
/// point), sending each attempt through the inner service `S`
/// (async-openai's own [`ReqwestService`] by default). async-openai reads
/// the answer as it reads any response:
///
/// - a served attempt is the upstream's response (the body as read, or the
///   stream as it comes);
/// - an exhausted chain is a `502` (`504` past the deadline) in the API's
///   error shape, which async-openai surfaces as [`OpenAIError::ApiError`];
///   its message is the body, which names every attempt (use
///   [`ExhaustionBody::Summary`](crate::ExhaustionBody::Summary) when the
///   callers are not your own code);
/// - a stop (`401`, `400`, ...) is the upstream's own error, surfaced the
///   same way, after one attempt;
/// - a committed stream that breaks ends with one error event, which a chat
///   or completions stream yields as an `Err` item (a Responses stream as
///   its `response.failed` event): never a silent end.
///
/// A typed client never sees the [`FallbackReport`](crate::FallbackReport)
/// extension or the `x-fallback-*` headers: give the builder an
/// [`on_report`](FallbackBuilder::on_report) hook to log which model served.
///
/// Requests the engine does not replay go to the inner service unchanged:
/// anything but a `POST` with a buffered body to a chat, Responses,
/// embeddings or completions path (a `GET`, a multipart upload, the
/// Assistants API's `/threads/{id}/messages`).
///
/// # async-openai's retry
///
/// `OpenAIRetry` (async-openai's `retry` middleware) composes in two places:
///
/// - **inside** ([`FallbackService::with_inner`] over
///   `OpenAIRetry<ReqwestService>`): each model is retried on `429`, `5xx`
///   and connection errors before the chain moves on. Recommended only when
///   the chain is short and its models' failures are brief: a model that is
///   down costs `max_retries + 1` attempts (and its backoff) before the
///   next model is tried, inside each route's timeout.
/// - **outside** (`OpenAIRetryLayer` around this service): the whole chain
///   is retried when it is exhausted (the `502` is a server error), after
///   its backoff: `(max_retries + 1)` × the chain's attempts at worst.
///
/// **Recommended: neither — or outside, with a small `max_retries`.** The
/// chain already is the retry: the next model answers at once where a retry
/// of the same model would wait. Retrying outside only helps when every
/// model failed at the same moment; retrying inside delays every fallback.
/// (async-openai's default client retries by itself; a client built with
/// `with_http_service` retries only as its service does.)
///
/// ```
/// use async_openai::middleware::ReqwestService;
/// use async_openai::middleware::retry::OpenAIRetryLayer;
/// use llm_fallback::async_openai::FallbackService;
/// use llm_fallback::{Chain, FallbackBuilder, Route};
/// use tower::Layer;
///
/// let chain = Chain::new([Route::new("a/primary"), Route::new("b/secondary")]);
/// # let _ = rustls::crypto::ring::default_provider().install_default();
/// let http = reqwest::Client::new();
///
/// // Outside: the whole chain, retried once when every model failed.
/// let outside = OpenAIRetryLayer::new(1).layer(FallbackService::new(chain.clone(), http.clone()));
///
/// // Inside: each model retried once before the next one.
/// let inside = FallbackService::with_inner(
///     FallbackBuilder::new(chain),
///     OpenAIRetryLayer::new(1).layer(ReqwestService::new(http)),
/// );
/// # let _ = (outside, inside);
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "async-openai")))]
pub struct FallbackService<S = ReqwestService, P = DefaultPolicy> {
    shared: Arc<Shared<P>>,
    inner: S,
}

impl FallbackService {
    /// The service trying `chain` with the default settings, sending each
    /// attempt with `client`.
    pub fn new(chain: Chain, client: ::reqwest::Client) -> Self {
        Self::from_builder(FallbackBuilder::new(chain), client)
    }

    /// The service for named chains (see [`ChainSet`]) with the default
    /// settings.
    pub fn with_chains(chains: ChainSet, client: ::reqwest::Client) -> Self {
        Self::from_builder(FallbackBuilder::with_chains(chains), client)
    }
}

impl<P> FallbackService<ReqwestService, P> {
    /// The service with `builder`'s settings (policy, limits, health,
    /// hedging, [`on_report`](FallbackBuilder::on_report)), sending each
    /// attempt with `client`; the same as
    /// [`FallbackBuilder::async_openai`].
    pub fn from_builder(builder: FallbackBuilder<P>, client: ::reqwest::Client) -> Self {
        Self::with_inner(builder, ReqwestService::new(client))
    }
}

impl<S, P> FallbackService<S, P> {
    /// The service with `builder`'s settings, sending each attempt through
    /// `inner`: an async-openai transport stack, e.g. `OpenAIRetry` over
    /// [`ReqwestService`] to retry each model (see the
    /// [type docs](Self#async-openais-retry)). `inner` gets one
    /// [`HttpRequestFactory`] per attempt; each build of it costs a copy of
    /// the request's headers, never of the body.
    pub fn with_inner(builder: FallbackBuilder<P>, inner: S) -> Self {
        FallbackService {
            shared: Arc::new(builder.into_shared()),
            inner,
        }
    }

    /// The default chain this service tries.
    pub fn chain(&self) -> &Chain {
        self.shared.chains.default_chain()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone, P> Clone for FallbackService<S, P> {
    fn clone(&self) -> Self {
        FallbackService {
            shared: self.shared.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<S: fmt::Debug, P> fmt::Debug for FallbackService<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("async_openai::FallbackService")
            .field("inner", &self.inner)
            .field("chains", &self.shared.chains)
            .field("policy", &std::any::type_name::<P>())
            .finish()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, OpenAIError>> + Send + 'static>>;

impl<S, P> Service<HttpRequestFactory> for FallbackService<S, P>
where
    S: Service<HttpRequestFactory, Response = Response, Error = OpenAIError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    P: Policy,
{
    type Response = Response;
    type Error = OpenAIError;
    type Future = BoxFuture<Response>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), OpenAIError>> {
        // Each attempt waits for the inner service's readiness itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, factory: HttpRequestFactory) -> Self::Future {
        let shared = self.shared.clone();
        let inner = self.inner.clone();
        Box::pin(async move {
            let req = factory.build().await?;
            if !replayable(&req) {
                // The request already built goes first; a retry inside
                // rebuilds it from the caller's factory.
                return inner.oneshot(prebuilt(req, factory)).await;
            }
            let url = req.url().clone();
            // Moves method, headers, body and extensions; the buffered body
            // is polled as one `Bytes` sharing async-openai's buffer.
            let req = http::Request::<::reqwest::Body>::try_from(req).map_err(OpenAIError::Reqwest)?;
            // An attempt to the caller's own URL reuses its parsed `Url`.
            let caller = Arc::new(CallerUrl {
                uri: req.uri().clone(),
                url: url.clone(),
            });
            let resp = engine::run(shared, Upstream { inner, caller }, req).await;
            let (mut parts, body) = resp.into_parts();
            // The serving upstream's URL, or the request's for an answer the
            // engine wrote.
            let url = parts.extensions.remove::<ServedUrl>().map_or(url, |s| s.0);
            // `ResponseUrl` is private to reqwest; its response builder sets it.
            if let Ok(with_url) = http::Response::builder().url(url).body(()) {
                parts.extensions.extend(with_url.into_parts().0.extensions);
            }
            Ok(Response::from(http::Response::from_parts(
                parts,
                ::reqwest::Body::wrap(body),
            )))
        })
    }
}

/// The API paths the engine replays (as [`Dialect::from_path`](crate::Dialect::from_path)
/// reads them), for a `POST` with a buffered body. Not `/messages`:
/// async-openai sends no Anthropic request, and its Assistants API posts to
/// `/threads/{id}/messages`.
fn replayable(req: &Request) -> bool {
    const PATHS: [&str; 3] = ["/completions", "/responses", "/embeddings"];
    if req.method() != Method::POST || req.body().is_none_or(|b| b.as_bytes().is_none()) {
        return false;
    }
    let path = req.url().path();
    let path = path.strip_suffix('/').unwrap_or(path);
    // `/completions` covers `/chat/completions`.
    PATHS.iter().any(|p| path.ends_with(p))
}

/// A factory whose first build is `req`, already built; later builds (a
/// retry's) are `factory`'s.
fn prebuilt(req: Request, factory: HttpRequestFactory) -> HttpRequestFactory {
    let first = Arc::new(Mutex::new(Some(req)));
    HttpRequestFactory::new(move || {
        let first = first.lock().unwrap_or_else(PoisonError::into_inner).take();
        let factory = factory.clone();
        async move {
            match first {
                Some(req) => Ok(req),
                None => factory.build().await,
            }
        }
    })
}

/// The serving upstream's URL, carried from the attempt to the answer.
#[derive(Clone)]
struct ServedUrl(Url);

// ===== impl Upstream =====

/// The inner service as the engine's upstream: one [`HttpRequestFactory`]
/// per attempt.
#[derive(Clone)]
struct Upstream<S> {
    inner: S,
    caller: Arc<CallerUrl>,
}

/// The caller's URL, as the engine sees it and as reqwest parsed it.
struct CallerUrl {
    uri: http::Uri,
    url: Url,
}

/// `a` and `b` are the same URI as written (the engine leaves the caller's
/// as it is unless a route sends it elsewhere). `Uri`'s own `==` compares
/// the authority without regard to case, byte by byte: dearer, and not
/// needed to know that the engine kept the caller's.
fn same_target(a: &http::Uri, b: &http::Uri) -> bool {
    a.scheme_str() == b.scheme_str()
        && a.authority().map(|x| x.as_str()) == b.authority().map(|x| x.as_str())
        && a.path_and_query().map(|x| x.as_str()) == b.path_and_query().map(|x| x.as_str())
}

/// What one attempt's factory builds its requests from: the attempt's
/// head, and its body (whose clones share the caller's buffer).
struct AttemptRequest {
    parts: http::request::Parts,
    body: ReplayBody,
    /// The caller's `Url`, when the attempt goes there (no endpoint switch).
    url: Option<Url>,
}

impl AttemptRequest {
    fn build(&self) -> Result<Request, OpenAIError> {
        let body = ::reqwest::Body::wrap(self.body.clone());
        let Some(url) = &self.url else {
            // Another endpoint: its URI is parsed once per build, as
            // reqwest converts any `http::Request`.
            let req = http::Request::from_parts(self.parts.clone(), body);
            return Request::try_from(req).map_err(OpenAIError::Reqwest);
        };
        // The same fields `Request::try_from` moves, without parsing the
        // URL again. (A reqwest request's extensions are reqwest's own.)
        let mut req = Request::new(self.parts.method.clone(), url.clone());
        *req.headers_mut() = self.parts.headers.clone();
        *req.version_mut() = self.parts.version;
        *req.body_mut() = Some(body);
        Ok(req)
    }
}

impl<S> Service<http::Request<ReplayBody>> for Upstream<S>
where
    S: Service<HttpRequestFactory, Response = Response, Error = OpenAIError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<::reqwest::Body>;
    type Error = OpenAIError;
    type Future = BoxFuture<http::Response<::reqwest::Body>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), OpenAIError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<ReplayBody>) -> Self::Future {
        // `oneshot` waits for the clone's readiness.
        let inner = self.inner.clone();
        let (parts, body) = req.into_parts();
        let url = same_target(&parts.uri, &self.caller.uri).then(|| self.caller.url.clone());
        let attempt = Arc::new(AttemptRequest { parts, body, url });
        let caller = self.caller.clone();
        let factory = HttpRequestFactory::new(move || {
            let built = attempt.build();
            async move { built }
        });
        Box::pin(async move {
            let resp = inner.oneshot(factory).await?;
            // The caller's URL is the answer's without one (see `call`).
            let served = (resp.url() != &caller.url).then(|| ServedUrl(resp.url().clone()));
            let mut resp = http::Response::<::reqwest::Body>::from(resp);
            if let Some(url) = served {
                resp.extensions_mut().insert(url);
            }
            Ok(resp)
        })
    }
}
