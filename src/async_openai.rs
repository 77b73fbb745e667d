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
use crate::{Chain, ChainSet, FallbackBuilder, ResponseBody};
use ::async_openai::error::OpenAIError;
use ::async_openai::middleware::{HttpRequestFactory, ReqwestService};
use ::reqwest::{Method, Request, Response, ResponseBuilderExt, Url};
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tower::util::Oneshot;
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
    /// The client `inner` sends with, when `inner` is the plain
    /// [`ReqwestService`] this service made: attempts go to it directly.
    direct: Option<::reqwest::Client>,
    uris: Arc<Uris>,
}

impl FallbackService {
    /// The service trying `chain` with the default settings, sending each
    /// attempt with `client`.
    ///
    /// Give it a client that does not follow redirects
    /// (`reqwest::Client::builder().redirect(reqwest::redirect::Policy::none())`):
    /// LLM APIs do not redirect, and reqwest would follow one to another
    /// host with an endpoint's `x-api-key` or `api-key` header.
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
        let mut shared = builder.into_shared();
        // Attempts go straight to `client`: no service inside reads the
        // attempt's extension, so none is inserted.
        shared.attempt_extension = false;
        let mut service = FallbackService {
            shared: Arc::new(shared),
            inner: ReqwestService::new(client.clone()),
            direct: None,
            uris: Arc::default(),
        };
        // What `ReqwestService` does with a factory (build it once, execute
        // it), done by the attempt itself: the attempt's head is moved into
        // its request rather than kept for rebuilds no one asks for.
        service.direct = Some(client);
        service
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
            direct: None,
            uris: Arc::default(),
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
            direct: self.direct.clone(),
            uris: self.uris.clone(),
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
        let direct = self.direct.clone();
        let uris = self.uris.clone();
        Box::pin(async move {
            let req = factory.build().await?;
            if !replayable(&req) {
                // The request already built goes first; a retry inside
                // rebuilds it from the caller's factory.
                return inner.oneshot(prebuilt(req, factory)).await;
            }
            let timeout = req.timeout().copied();
            let (req, caller) = match uris.get(req.url()) {
                Some(caller) => (into_http(req, caller.uri.clone()), caller),
                None => {
                    // Not a URI `http` reads: reqwest's own conversion says why.
                    let url = req.url().clone();
                    let req = http::Request::try_from(req).map_err(OpenAIError::Reqwest)?;
                    let uri = req.uri().clone();
                    (req, Arc::new(CallerUrl { uri, url }))
                }
            };
            let upstream = Upstream {
                inner,
                // An attempt to the caller's own URL reuses its parsed `Url`.
                caller: caller.clone(),
                timeout,
                direct: direct.map(|client| Direct {
                    client,
                    execute: ::reqwest::Client::execute,
                }),
            };
            let resp = engine::run(shared, upstream, req).await;
            let (mut parts, body) = resp.into_parts();
            // The serving upstream's URL, or the request's for an answer the
            // engine wrote.
            let url = match parts.extensions.remove::<ServedUrl>() {
                Some(served) => served.0,
                None => caller.url.clone(),
            };
            let body = response_body(&parts.headers, body);
            // `ResponseUrl` is private to reqwest; its response builder sets it.
            if let Ok(with_url) = http::Response::builder().url(url).body(()) {
                parts.extensions.extend(with_url.into_parts().0.extensions);
            }
            Ok(Response::from(http::Response::from_parts(parts, body)))
        })
    }
}

/// The replayable `req` as the engine's request, its URL as `uri`: the
/// method, headers, version and body moved, as reqwest's `TryFrom`
/// does, without parsing the URL again. reqwest's extensions (its
/// per-request timeout, kept in [`CallerUrl`]) stay behind.
fn into_http(mut req: Request, uri: http::Uri) -> http::Request<::reqwest::Body> {
    let mut out = http::Request::new(req.body_mut().take().unwrap_or_default());
    *out.method_mut() = std::mem::replace(req.method_mut(), Method::GET);
    *out.uri_mut() = uri;
    *out.version_mut() = req.version();
    *out.headers_mut() = std::mem::take(req.headers_mut());
    out
}

/// The engine's answer body as reqwest's. An answer the engine read whole
/// (an inspected one, or one it wrote) is one `Bytes` already: it is handed
/// over as reqwest's buffered body, which async-openai reads without going
/// through another boxed stream. Anything else (a stream, a body passed
/// through) is wrapped, in order.
fn response_body(headers: &http::HeaderMap, mut body: ResponseBody<::reqwest::Body>) -> ::reqwest::Body {
    // A stream is never polled here, and only a body of known length can be
    // whole in its first frame.
    if crate::policy::is_event_stream(headers) || body.size_hint().exact().is_none() {
        return ::reqwest::Body::wrap(body);
    }
    // A whole body yields at once; anything that would wait is polled again
    // by the reader, with its own waker.
    let mut cx = Context::from_waker(Waker::noop());
    let first = match Pin::new(&mut body).poll_frame(&mut cx) {
        Poll::Pending => return ::reqwest::Body::wrap(body),
        Poll::Ready(None) => return ::reqwest::Body::from(Bytes::new()),
        Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
            Ok(data) if body.is_end_stream() => return ::reqwest::Body::from(data),
            Ok(data) => Ok(Frame::data(data)),
            Err(frame) => Ok(frame),
        },
        Poll::Ready(Some(Err(e))) => Err(e),
    };
    ::reqwest::Body::wrap(First {
        first: Some(first),
        rest: body,
    })
}

/// A body's first frame, already polled, then the rest of it.
struct First {
    first: Option<Result<Frame<Bytes>, ::reqwest::Error>>,
    rest: ResponseBody<::reqwest::Body>,
}

impl http_body::Body for First {
    type Data = Bytes;
    type Error = ::reqwest::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ::reqwest::Error>>> {
        let this = self.get_mut();
        match this.first.take() {
            Some(first) => Poll::Ready(Some(first)),
            None => Pin::new(&mut this.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.size_hint();
        let first = match &self.first {
            Some(Ok(frame)) => frame.data_ref().map_or(0, |d| d.len() as u64),
            _ => 0,
        };
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(first));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(first));
        }
        hint
    }
}

/// The `Uri` of the last few caller URLs: a client sends to a handful of
/// URLs (its API base and each API's path), so each is parsed once, not
/// once per request.
#[derive(Default)]
struct Uris(Mutex<UriSlots>);

#[derive(Default)]
struct UriSlots {
    slots: [Option<Arc<CallerUrl>>; URI_SLOTS],
    /// The slot the next new URL replaces.
    next: usize,
}

const URI_SLOTS: usize = 4;

impl Uris {
    /// `url` with its `Uri` (as reqwest converts it: its text, parsed), or
    /// `None` when `http` does not read it.
    fn get(&self, url: &Url) -> Option<Arc<CallerUrl>> {
        let text = url.as_str();
        {
            let slots = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(hit) = slots.slots.iter().flatten().find(|c| c.url.as_str() == text) {
                return Some(hit.clone());
            }
        }
        let uri: http::Uri = text.parse().ok()?;
        let caller = Arc::new(CallerUrl { uri, url: url.clone() });
        let mut slots = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let next = slots.next;
        if let Some(slot) = slots.slots.get_mut(next) {
            *slot = Some(caller.clone());
        }
        slots.next = (next + 1) % URI_SLOTS;
        Some(caller)
    }
}

/// Whether the engine replays `req`: a `POST` with a buffered body to a
/// path that names an API ([`Dialect::from_path`](crate::Dialect::from_path)
/// reads it), but not `/messages`: async-openai sends no Anthropic request.
fn replayable(req: &Request) -> bool {
    req.method() == Method::POST
        && req.body().is_some_and(|b| b.as_bytes().is_some())
        && crate::Dialect::named_by_path(req.url().path()).is_some_and(|d| d != crate::Dialect::Messages)
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
/// per attempt, or one request to [`Direct`]'s client.
struct Upstream<S, F> {
    inner: S,
    /// Set when `inner` is the plain `ReqwestService` over this client.
    direct: Option<Direct<F>>,
    caller: Arc<CallerUrl>,
    /// The caller's per-request timeout, which every attempt gets.
    timeout: Option<Duration>,
}

impl<S: Clone, F> Clone for Upstream<S, F> {
    fn clone(&self) -> Self {
        Upstream {
            inner: self.inner.clone(),
            direct: self.direct.clone(),
            caller: self.caller.clone(),
            timeout: self.timeout,
        }
    }
}

/// A reqwest client and its `execute`, whose future (`F`, unnamed) an
/// attempt then holds inline rather than boxed.
struct Direct<F> {
    client: ::reqwest::Client,
    execute: fn(&::reqwest::Client, Request) -> F,
}

impl<F> Clone for Direct<F> {
    fn clone(&self) -> Self {
        Direct {
            client: self.client.clone(),
            execute: self.execute,
        }
    }
}

/// A caller's URL, as the engine sees it and as reqwest parsed it.
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
    caller: Arc<CallerUrl>,
    timeout: Option<Duration>,
    /// The attempt goes to the caller's URL (no endpoint switch).
    same_url: bool,
}

impl AttemptRequest {
    fn build(&self) -> Result<Request, OpenAIError> {
        let body = reqwest_body(self.body.clone());
        let req = match self.same_url {
            // Only the fields a request to the caller's URL takes.
            true => {
                let p = &self.parts;
                to_caller(p.method.clone(), p.headers.clone(), p.version, body, &self.caller)
            }
            false => to_endpoint(self.parts.clone(), body)?,
        };
        Ok(with_timeout(req, self.timeout))
    }
}

/// An attempt's body for reqwest: an unedited one (one part) as a buffered
/// body, which hyper writes with the head; edited ones as the zero-copy
/// stream of their parts.
fn reqwest_body(body: ReplayBody) -> ::reqwest::Body {
    match body.into_single() {
        Ok(whole) => ::reqwest::Body::from(whole),
        Err(parts) => ::reqwest::Body::wrap(parts),
    }
}

/// The attempt's request moving `parts` (built once, so nothing is cloned).
fn attempt_request(
    parts: http::request::Parts,
    body: ReplayBody,
    caller: &CallerUrl,
    timeout: Option<Duration>,
) -> Result<Request, OpenAIError> {
    let body = reqwest_body(body);
    let req = match same_target(&parts.uri, &caller.uri) {
        true => to_caller(parts.method, parts.headers, parts.version, body, caller),
        false => to_endpoint(parts, body)?,
    };
    Ok(with_timeout(req, timeout))
}

/// A request to the caller's URL: the same fields `Request::try_from`
/// moves, without parsing the URL again. (A reqwest request's extensions
/// are reqwest's own; its timeout is set by [`with_timeout`].)
fn to_caller(
    method: Method,
    headers: http::HeaderMap,
    version: http::Version,
    body: ::reqwest::Body,
    caller: &CallerUrl,
) -> Request {
    let mut req = Request::new(method, caller.url.clone());
    *req.headers_mut() = headers;
    *req.version_mut() = version;
    *req.body_mut() = Some(body);
    req
}

/// A request to another endpoint: its URI is parsed, as reqwest converts
/// any `http::Request`.
fn to_endpoint(parts: http::request::Parts, body: ::reqwest::Body) -> Result<Request, OpenAIError> {
    Request::try_from(http::Request::from_parts(parts, body)).map_err(OpenAIError::Reqwest)
}

/// `req` with the caller's per-request timeout, if it set one.
fn with_timeout(mut req: Request, timeout: Option<Duration>) -> Request {
    if timeout.is_some() {
        *req.timeout_mut() = timeout;
    }
    req
}

impl<S, F> Service<http::Request<ReplayBody>> for Upstream<S, F>
where
    S: Service<HttpRequestFactory, Response = Response, Error = OpenAIError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    F: Future<Output = Result<Response, ::reqwest::Error>>,
{
    type Response = http::Response<::reqwest::Body>;
    type Error = OpenAIError;
    type Future = AttemptFuture<S, F>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), OpenAIError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<ReplayBody>) -> Self::Future {
        let (parts, body) = req.into_parts();
        if let Some(direct) = &self.direct {
            // Built once, so the head is moved, not cloned.
            let call = match attempt_request(parts, body, &self.caller, self.timeout) {
                Ok(req) => (direct.execute)(&direct.client, req),
                Err(e) => return AttemptFuture::Failed { error: Some(e) },
            };
            return AttemptFuture::Direct {
                call,
                caller: self.caller.clone(),
            };
        }
        let same_url = same_target(&parts.uri, &self.caller.uri);
        let attempt = AttemptRequest {
            parts,
            body,
            caller: self.caller.clone(),
            timeout: self.timeout,
            same_url,
        };
        let factory = HttpRequestFactory::new(move || std::future::ready(attempt.build()));
        AttemptFuture::Inner {
            // `oneshot` waits for the clone's readiness.
            call: self.inner.clone().oneshot(factory),
            caller: self.caller.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// One attempt through the inner service (or straight to its client):
    /// its response as the engine's, with the serving URL when it is not
    /// the caller's.
    #[project = AttemptProj]
    enum AttemptFuture<S, F>
    where
        S: Service<HttpRequestFactory>,
    {
        Inner {
            #[pin]
            call: Oneshot<S, HttpRequestFactory>,
            caller: Arc<CallerUrl>,
        },
        Direct {
            #[pin]
            call: F,
            caller: Arc<CallerUrl>,
        },
        /// The request could not be built (an endpoint reqwest refuses).
        Failed {
            error: Option<OpenAIError>,
        },
    }
}

impl<S, F> Future for AttemptFuture<S, F>
where
    S: Service<HttpRequestFactory, Response = Response, Error = OpenAIError>,
    F: Future<Output = Result<Response, ::reqwest::Error>>,
{
    type Output = Result<http::Response<::reqwest::Body>, OpenAIError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (resp, caller) = match self.project() {
            AttemptProj::Inner { call, caller } => match call.poll(cx) {
                Poll::Ready(resp) => (resp, caller),
                Poll::Pending => return Poll::Pending,
            },
            AttemptProj::Direct { call, caller } => match call.poll(cx) {
                Poll::Ready(resp) => (resp.map_err(OpenAIError::Reqwest), caller),
                Poll::Pending => return Poll::Pending,
            },
            AttemptProj::Failed { error } => {
                let error = error
                    .take()
                    .unwrap_or_else(|| OpenAIError::InvalidArgument("attempt polled after it failed".into()));
                return Poll::Ready(Err(error));
            }
        };
        let resp = resp?;
        // The caller's URL is the answer's without one (see `call`).
        let served = (resp.url() != &caller.url).then(|| ServedUrl(resp.url().clone()));
        let mut resp = http::Response::<::reqwest::Body>::from(resp);
        if let Some(url) = served {
            resp.extensions_mut().insert(url);
        }
        Poll::Ready(Ok(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn caller_urls_resolve_past_the_cache_and_a_repeat_is_the_cached_one() {
        let uris = Uris::default();
        let urls: Vec<Url> = (0..URI_SLOTS + 2)
            .map(|i| Url::parse(&format!("http://127.0.0.1:{}/v1/chat/completions?x={i}", 8000 + i)).unwrap())
            .collect();
        for _ in 0..2 {
            for url in &urls {
                let caller = uris.get(url).unwrap();
                assert_eq!(caller.url, *url);
                assert_eq!(caller.uri, url.as_str().parse::<http::Uri>().unwrap());
            }
        }
        let last = urls.last().unwrap();
        assert!(Arc::ptr_eq(&uris.get(last).unwrap(), &uris.get(last).unwrap()));
    }

    fn json_headers(content_type: &'static str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
        headers
    }

    async fn text(body: ::reqwest::Body) -> Vec<u8> {
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_whole_answer_is_handed_over_buffered_and_anything_else_in_order() {
        // Read whole by the engine: reqwest's buffered body, the same bytes.
        let body = response_body(&json_headers("application/json"), ResponseBody::full(Bytes::from("{}")));
        assert_eq!(body.as_bytes(), Some(&b"{}"[..]));
        let empty = response_body(&json_headers("application/json"), ResponseBody::full(Bytes::new()));
        assert_eq!(empty.as_bytes(), Some(&b""[..]));
        // A head already read, then the rest: both, in order.
        let passed = ResponseBody::inner(Some(Bytes::from("head,")), ::reqwest::Body::from("rest"));
        let body = response_body(&json_headers("application/json"), passed);
        assert_eq!(body.as_bytes(), None);
        assert_eq!(text(body).await, b"head,rest");
        // A stream is not polled here, even when it is whole.
        let stream = response_body(
            &json_headers("text/event-stream"),
            ResponseBody::full(Bytes::from("data: x\n\n")),
        );
        assert_eq!(stream.as_bytes(), None);
        assert_eq!(text(stream).await, b"data: x\n\n");
    }
}
