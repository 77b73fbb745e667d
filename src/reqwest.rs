//! `FallbackMiddleware`: the fallback engine as a `reqwest_middleware::Middleware`.
//!
//! A thin front end: it turns the reqwest request into an `http::Request`,
//! runs the shared engine with the rest of the middleware chain (`Next`) as
//! its upstream service, and turns the engine's answer back into a
//! `reqwest::Response`.

use crate::engine::{self, Shared};
use crate::json::ReplayBody;
use crate::policy::{DefaultPolicy, Policy};
use crate::{Attempt, Chain, ChainSet, FallbackBuilder};
use ::reqwest::{Request, Response, ResponseBuilderExt, Url};
use http::Extensions;
use http_body_util::BodyExt;
use reqwest_middleware::{Error, Middleware, Next, Result};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::{fmt, mem};

/// Replays a chat-completions request down a [`Chain`] of models, as a
/// [`reqwest_middleware`] middleware.
///
/// It replays the `POST`s to an API path the engine knows
/// (`…/chat/completions`, `…/responses`, `…/messages`, `…/embeddings`,
/// `…/completions`; not the Assistants API's `…/threads/{id}/messages`),
/// and any request whose middleware extensions hold a
/// [`Dialect`](crate::Dialect) (`client.post(url).with_extension(Dialect::Chat)`,
/// for an API behind a path of its own); every other request the client
/// sends (`GET /models`, `POST /messages/count_tokens`, a file upload) goes
/// to the rest of the middleware chain as it is, with no report.
///
/// Build the client without redirects
/// (`redirect(reqwest::redirect::Policy::none())`): LLM APIs do not
/// redirect, and reqwest follows a redirect to another host with every
/// header but `Authorization` and cookies, so an endpoint's key the layer
/// sets as `x-api-key` or `api-key` would go along.
///
/// The same engine as [`FallbackLayer`](crate::FallbackLayer): the body is
/// buffered once, only the top-level `"model"` is rewritten per attempt, and
/// the [`Policy`], per-route timeouts, the chain's deadline, the streaming
/// commit point and the exhaustion answer are exactly the tower layer's (see
/// the [crate docs](crate)). Middleware added after this one (with a later
/// [`with`](reqwest_middleware::ClientBuilder::with)) and the client itself
/// run once per attempt; they find the [`Attempt`] in the middleware
/// `Extensions`, which each attempt gets a fresh clone of. The serving
/// attempt's extensions are merged back into the caller's.
///
/// [`FallbackMiddleware::new`] uses the default settings; the policy,
/// limits, health, hedging and the other settings it shares with the layer
/// are given on a [`FallbackBuilder`]
/// (`FallbackMiddleware::builder(chain).max_body_bytes(..).middleware()`).
///
/// The response carries the [`FallbackReport`](crate::FallbackReport) (and,
/// for a stream, the [`StreamReport`](crate::StreamReport)) in
/// [`Response::extensions`], and the `x-fallback-model`,
/// `x-fallback-attempts` and `x-fallback-label` headers. Failures are
/// responses, as with the layer: `400`/`413` for a request it cannot
/// rewrite, `502` (or `504` past the deadline) in OpenAI error JSON naming
/// every attempt when the chain is exhausted. [`Response::url`] is the
/// serving upstream's URL, or the request's for an answer written by the
/// middleware.
///
/// ```
/// use llm_fallback::{Chain, FallbackMiddleware, FallbackReport, Route};
/// use llm_fallback_mock::{MockServer, MockUpstream, Reply};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let server = MockServer::start(
/// #     MockUpstream::new().model("anthropic/claude-3.5-sonnet", Reply::status(503)).model("openai/gpt-4o", Reply::ok()),
/// # )
/// # .await?;
/// # let url = server.chat_url();
/// # let _ = rustls::crypto::ring::default_provider().install_default();
/// let chain = Chain::new([
///     Route::new("anthropic/claude-3.5-sonnet").timeout(Duration::from_secs(30)),
///     Route::new("openai/gpt-4o").timeout(Duration::from_secs(25)),
/// ])
/// .deadline(Duration::from_secs(60));
///
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(FallbackMiddleware::new(chain))
///     .build();
/// let body = serde_json::json!({
///     "model": "anthropic/claude-3.5-sonnet",
///     "messages": [{"role": "user", "content": "hi"}],
/// });
/// let resp = client.post(&url).bearer_auth("sk-or-...").json(&body).send().await?;
///
/// let report = resp.extensions().get::<FallbackReport>().unwrap();
/// assert_eq!(report.served_model(), "openai/gpt-4o");
/// assert_eq!(resp.headers()["x-fallback-attempts"], "2");
/// # Ok(())
/// # }
/// ```
///
/// # Request bodies
///
/// The request must carry a buffered body (`.json(..)`, or `.body(..)` with a
/// `String`, `Vec<u8>` or `Bytes`): the middleware reads it without copying
/// and replays it. A streaming body (`Body::wrap_stream`, `Body::wrap`) can
/// be sent only once, so it is refused with [`Error::Middleware`] holding a
/// [`StreamingBodyError`]; nothing is sent upstream.
///
/// # Composition and body copies
///
/// Place per-model retries after this middleware and tracing or whole-chain
/// retries before it:
///
/// ```
/// # use llm_fallback::{Chain, FallbackMiddleware, Route};
/// # let chain = Chain::new([Route::new("a/b")]);
/// # let _ = rustls::crypto::ring::default_provider().install_default();
/// use reqwest_retry::{policies::ExponentialBackoff, RetryTransientMiddleware};
/// use reqwest_tracing::TracingMiddleware;
///
/// let retry = ExponentialBackoff::builder().build_with_max_retries(2);
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(TracingMiddleware::default()) // outside: one span per call
///     .with(FallbackMiddleware::new(chain).reusable_bodies(true))
///     .with(RetryTransientMiddleware::new_with_policy(retry)) // inside: retries per model
///     .build();
/// # let _ = client;
/// ```
///
/// By default each attempt's body is the zero-copy [`ReplayBody`], which
/// reqwest sends as a *streaming* body: it cannot be cloned, so a
/// `RetryTransientMiddleware` placed after this middleware fails every
/// attempt with "Request object is not cloneable". With
/// [`reusable_bodies(true)`](Self::reusable_bodies) each attempt instead gets
/// a buffered `reqwest::Body` that such a middleware can clone for free, at
/// the cost of copying the request body into one buffer per attempt (none
/// when the attempt's model is the caller's own). A retry placed *before*
/// this middleware clones the caller's buffered body and needs neither.
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub struct FallbackMiddleware<P = DefaultPolicy> {
    shared: Arc<Shared<P>>,
    reusable_bodies: bool,
}

/// The reason [`FallbackMiddleware`] refuses a request with a streaming
/// body, inside [`reqwest_middleware::Error::Middleware`].
///
/// ```
/// # fn check(err: reqwest_middleware::Error) {
/// use llm_fallback::StreamingBodyError;
///
/// if let reqwest_middleware::Error::Middleware(e) = &err {
///     if e.downcast_ref::<StreamingBodyError>().is_some() {
///         // Build the request with `.json(&body)` instead.
///     }
/// }
/// # }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
#[derive(Debug)]
pub struct StreamingBodyError(());

impl fmt::Display for StreamingBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "llm-fallback cannot replay a streaming request body: it can be sent only once, so no fallback \
             model could get it; build the request with a buffered body (`.json(&body)`, or `.body()` with a \
             String, Vec<u8> or Bytes)",
        )
    }
}

impl std::error::Error for StreamingBodyError {}

// ===== impl FallbackMiddleware =====

impl FallbackMiddleware {
    /// A middleware trying `chain` with the [`DefaultPolicy`] and the
    /// default settings; [`FallbackMiddleware::builder`] gives it others.
    pub fn new(chain: Chain) -> Self {
        FallbackBuilder::new(chain).middleware()
    }

    /// A middleware with named chains (see [`ChainSet`]), the
    /// [`DefaultPolicy`] and the default settings.
    pub fn with_chains(chains: ChainSet) -> Self {
        FallbackBuilder::with_chains(chains).middleware()
    }

    /// The [`FallbackBuilder`] for `chain`: the policy, limits, health,
    /// hedging and the other settings, then
    /// [`middleware`](FallbackBuilder::middleware).
    pub fn builder(chain: Chain) -> FallbackBuilder {
        FallbackBuilder::new(chain)
    }
}

impl<P> FallbackMiddleware<P> {
    pub(crate) fn from_shared(shared: Shared<P>) -> Self {
        FallbackMiddleware {
            shared: Arc::new(shared),
            reusable_bodies: false,
        }
    }

    /// Sends each attempt's body as a buffered, cloneable `reqwest::Body`
    /// (one copy of the request body per attempt whose model differs from
    /// the caller's) instead of the zero-copy streaming one (default
    /// `false`). Turn it on when a middleware after this one clones requests,
    /// like `reqwest_retry::RetryTransientMiddleware`; see the
    /// [type docs](Self#composition-and-body-copies).
    pub fn reusable_bodies(mut self, yes: bool) -> Self {
        self.reusable_bodies = yes;
        self
    }

    /// The default chain this middleware tries.
    pub fn chain(&self) -> &Chain {
        self.shared.chains.default_chain()
    }
}

impl<P> Clone for FallbackMiddleware<P> {
    fn clone(&self) -> Self {
        FallbackMiddleware {
            shared: self.shared.clone(),
            reusable_bodies: self.reusable_bodies,
        }
    }
}

impl<P> fmt::Debug for FallbackMiddleware<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackMiddleware")
            .field("chains", &self.shared.chains)
            .field("policy", &std::any::type_name::<P>())
            .field("max_body_bytes", &self.shared.max_body_bytes)
            .field("max_response_bytes", &self.shared.max_response_bytes)
            .field("reusable_bodies", &self.reusable_bodies)
            .finish()
    }
}

#[async_trait::async_trait]
impl<P: Policy> Middleware for FallbackMiddleware<P> {
    async fn handle(&self, req: Request, extensions: &mut Extensions, next: Next<'_>) -> Result<Response> {
        // The caller's word (`with_extension(Dialect::…)`) wins over the path.
        let marked = extensions.get::<crate::Dialect>().copied();
        if marked.is_none() && !replayed(&req) {
            if req.method() == http::Method::POST {
                tracing::debug!(
                    path = req.url().path(),
                    "llm fallback: not an API path, passed through (mark it with a Dialect extension to replay it)"
                );
            }
            return next.run(req, extensions).await;
        }
        if req.body().is_some_and(|b| b.as_bytes().is_none()) {
            if let Some(hook) = &self.shared.on_report {
                hook(&crate::FallbackReport::rejected(std::time::Duration::ZERO));
            }
            return Err(Error::middleware(StreamingBodyError(())));
        }
        let url = req.url().clone();
        let timeout = req.timeout().copied();
        // Moves method, headers, body and the request's extensions (which
        // hold a per-request `.timeout()`); a buffered body is polled as one
        // `Bytes` that shares the caller's buffer.
        let mut req = http::Request::<::reqwest::Body>::try_from(req)?;
        if let Some(dialect) = marked {
            req.extensions_mut().insert(dialect);
        }
        let caller = Arc::new(Caller {
            uri: req.uri().clone(),
            url,
            timeout,
        });
        let upstream = Upstream {
            next,
            extensions,
            reusable_bodies: self.reusable_bodies,
            caller: caller.clone(),
        };
        let resp = engine::run(self.shared.clone(), upstream, req).await;

        let (mut parts, body) = resp.into_parts();
        let url = match parts.extensions.remove::<Served>() {
            Some(Served {
                url,
                extensions: mut served,
            }) => {
                served.remove::<Attempt>();
                extensions.extend(served);
                url.unwrap_or_else(|| caller.into_url())
            }
            // An answer the engine wrote (refusal, exhaustion).
            None => caller.into_url(),
        };
        // `ResponseUrl` is private to reqwest; its response builder sets it.
        // An empty response with only a URL always builds.
        if let Ok(with_url) = http::Response::builder().url(url).body(()) {
            parts.extensions.extend(with_url.into_parts().0.extensions);
        }
        Ok(Response::from(http::Response::from_parts(
            parts,
            ::reqwest::Body::wrap(body),
        )))
    }
}

/// Whether the middleware runs `req` down the chain: a `POST` to a path
/// that names an API the engine knows (as
/// [`Dialect::from_path`](crate::Dialect::from_path) reads it). Everything
/// else a client sends (`GET /models`, `POST /messages/count_tokens`, a
/// file upload, the Assistants API's `POST /threads/{id}/messages`) goes to
/// the rest of the chain untouched.
fn replayed(req: &Request) -> bool {
    if req.method() != http::Method::POST {
        return false;
    }
    crate::Dialect::named_by_path(req.url().path()).is_some()
}

/// What the engine keeps of a served attempt for the final response: the
/// upstream's URL (when it is not the caller's) and the attempt's
/// middleware extensions.
#[derive(Clone)]
struct Served {
    url: Option<Url>,
    extensions: Extensions,
}

// ===== impl Upstream =====

/// The rest of the middleware chain as the engine's upstream service: one
/// `Next::run` per attempt. Cloned for hedged attempts (`Next` is a cheap
/// handle on the rest of the chain).
#[derive(Clone)]
struct Upstream<'a> {
    next: Next<'a>,
    extensions: &'a Extensions,
    reusable_bodies: bool,
    caller: Arc<Caller>,
}

/// The caller's URL, as the engine sees it and as reqwest parsed it, and
/// its per-request timeout: an attempt to the caller's URL reuses the
/// parsed `Url` rather than printing and parsing its URI again.
struct Caller {
    uri: http::Uri,
    url: Url,
    timeout: Option<std::time::Duration>,
}

impl Caller {
    /// The caller's URL, moved out when the engine has dropped its
    /// upstream (as it has once it answered).
    fn into_url(self: Arc<Self>) -> Url {
        Arc::try_unwrap(self).map_or_else(|c| c.url.clone(), |c| c.url)
    }
}

/// `a` and `b` are the same URI as written (the engine leaves the caller's
/// as it is unless a route sends it elsewhere); `Uri`'s own `==` compares
/// the authority without regard to case, byte by byte.
fn same_target(a: &http::Uri, b: &http::Uri) -> bool {
    a.scheme_str() == b.scheme_str()
        && a.authority().map(|x| x.as_str()) == b.authority().map(|x| x.as_str())
        && a.path_and_query().map(|x| x.as_str()) == b.path_and_query().map(|x| x.as_str())
}

type UpstreamFuture<'a> = Pin<Box<dyn Future<Output = Result<http::Response<::reqwest::Body>>> + Send + 'a>>;

impl<'a> tower_service::Service<http::Request<ReplayBody>> for Upstream<'a> {
    type Response = http::Response<::reqwest::Body>;
    type Error = Error;
    type Future = UpstreamFuture<'a>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<ReplayBody>) -> Self::Future {
        let next = self.next.clone();
        let mut extensions = self.extensions.clone();
        if let Some(attempt) = req.extensions().get::<Attempt>() {
            extensions.insert(attempt.clone());
        }
        let reusable = self.reusable_bodies;
        let caller = self.caller.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = if reusable {
                // One contiguous buffer (a copy unless the body is one part),
                // so a retry middleware inside can clone it.
                let collected = body.collect().await.unwrap_or_else(|never| match never {});
                ::reqwest::Body::from(collected.to_bytes())
            } else {
                ::reqwest::Body::wrap(body)
            };
            let req = if same_target(&parts.uri, &caller.uri) {
                // The fields `Request::try_from` moves, with the caller's
                // parsed URL. Of a reqwest request's extensions only its
                // timeout is read (by the client; a middleware cannot see
                // them), and it is the caller's.
                let mut req = Request::new(parts.method, caller.url.clone());
                *req.headers_mut() = parts.headers;
                *req.version_mut() = parts.version;
                *req.body_mut() = Some(body);
                *req.timeout_mut() = caller.timeout;
                req
            } else {
                // A route's endpoint: its URI printed and parsed as a `Url`.
                Request::try_from(http::Request::from_parts(parts, body))?
            };
            let resp = next.run(req, &mut extensions).await?;
            let url = (resp.url() != &caller.url).then(|| resp.url().clone());
            let mut resp = http::Response::<::reqwest::Body>::from(resp);
            resp.extensions_mut().insert(Served {
                url,
                extensions: mem::take(&mut extensions),
            });
            Ok(resp)
        })
    }
}
