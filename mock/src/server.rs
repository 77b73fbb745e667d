//! A real loopback HTTP/1.1 server in front of a [`MockUpstream`].

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use super::{Dialect, MockUpstream};

/// A real HTTP/1.1 server on `127.0.0.1` (a free port) serving a
/// [`MockUpstream`], for clients that need a URL.
///
/// Every connection is served by the same upstream, so scripts, counters and
/// recorded requests are shared with [`upstream`](MockServer::upstream) and
/// its clones. [`Reply::transport_error`](super::Reply::transport_error)
/// closes the connection without a response.
///
/// Dropping the server stops it: the listener closes and open connections
/// (including ones stuck on [`Reply::hang`](super::Reply::hang)) are dropped.
/// It must be started and dropped inside a Tokio runtime.
pub struct MockServer {
    addr: SocketAddr,
    upstream: MockUpstream,
    accept: JoinHandle<()>,
}

impl MockServer {
    /// Binds `127.0.0.1:0` and starts serving `upstream` on the current Tokio
    /// runtime.
    ///
    /// # Errors
    ///
    /// If the listener cannot be bound.
    pub async fn start(upstream: MockUpstream) -> std::io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let accept = tokio::spawn(accept_loop(listener, upstream.clone()));
        Ok(Self { addr, upstream, accept })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The chat-completions URL, `http://127.0.0.1:<port>/api/v1/chat/completions`.
    pub fn chat_url(&self) -> String {
        self.url_for(Dialect::Chat)
    }

    /// The API base, `http://127.0.0.1:<port>/api/v1`, as OpenRouter's
    /// `https://openrouter.ai/api/v1`: the base URL an OpenAI SDK takes.
    /// (An Anthropic SDK adds `/v1/messages` to its base: give it
    /// [`url`](Self::url), which serves `/v1/…` too.)
    pub fn base_url(&self) -> String {
        format!("{}/api/v1", self.url())
    }

    /// The URL of `dialect`'s endpoint under [`base_url`](Self::base_url),
    /// e.g. `http://127.0.0.1:<port>/api/v1/responses`.
    pub fn url_for(&self, dialect: Dialect) -> String {
        format!("{}{}", self.url(), dialect.path())
    }

    /// The OpenAI Responses URL, `http://127.0.0.1:<port>/api/v1/responses`.
    pub fn responses_url(&self) -> String {
        self.url_for(Dialect::Responses)
    }

    /// The Anthropic Messages URL, `http://127.0.0.1:<port>/api/v1/messages`.
    pub fn messages_url(&self) -> String {
        self.url_for(Dialect::Messages)
    }

    /// The embeddings URL, `http://127.0.0.1:<port>/api/v1/embeddings`.
    pub fn embeddings_url(&self) -> String {
        self.url_for(Dialect::Embeddings)
    }

    /// The legacy completions URL, `http://127.0.0.1:<port>/api/v1/completions`.
    pub fn completions_url(&self) -> String {
        self.url_for(Dialect::Completions)
    }

    /// The upstream behind the server: change its scripts or read what it
    /// received.
    pub fn upstream(&self) -> &MockUpstream {
        &self.upstream
    }
}

impl fmt::Debug for MockServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .field("upstream", &self.upstream)
            .finish()
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        // The connection tasks live in the accept task's `JoinSet`, which
        // aborts them all when the aborted task drops it.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: MockUpstream) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Transient (e.g. too many open files): keep serving.
                        tracing::debug!(error = %e, "mock server: accept failed");
                        tokio::task::yield_now().await;
                        continue;
                    }
                };
                let service = TowerToHyperService::new(upstream.clone());
                connections.spawn(async move {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    if let Err(e) = conn.await {
                        // Expected for `Reply::transport_error`.
                        tracing::debug!(%peer, error = %e, "mock server: connection closed");
                    }
                });
            }
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
