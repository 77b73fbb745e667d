//! The least an out-of-process fallback gateway can do, for
//! `benches/gateway.sh` to measure beside `examples/gateway.rs`: an axum
//! server that buffers the request, sends it to the upstream with the model
//! set to a primary, buffers the answer, and — when that answer is not a
//! 2xx — sends the body again with the model set to a second model (each
//! time the crate's scanner and `ReplayBody`, as the gateway does). No policy, report, spans, headers, metrics or limits: the
//! same hops and the same runtime, allocator and socket options as the
//! gateway, nothing else. What it adds over calling the upstream directly
//! is the floor of what any gateway adds on this machine.
//!
//! ```text
//! cargo bench --bench proxy_floor -- --listen 127.0.0.1:19103 \
//!     --upstream http://127.0.0.1:19101/api/v1/chat/completions \
//!     --primary anthropic/claude-3.5-sonnet --fallback openai/gpt-4o
//! ```
//!
//! A request with `x-floor-primary: MODEL` uses that model for the first hop
//! (the gateway's equivalent is picking a chain with `x-fallback-chain`).
//! Run by `cargo bench` without those flags, it prints this usage and exits.

use axum::body::Body;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use llm_fallback::__private::Compiled;
use llm_fallback::ReplayBody;
use llm_fallback::Route;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

// The gateway example's allocator, so the two differ only in what they do.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    listen: SocketAddr,
    upstream: Uri,
    primary: String,
    fallback: String,
}

fn args() -> Option<Args> {
    let mut listen = None;
    let mut upstream = None;
    let mut primary = None;
    let mut fallback = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--listen" => listen = it.next()?.parse().ok(),
            "--upstream" => upstream = it.next()?.parse().ok(),
            "--primary" => primary = it.next(),
            "--fallback" => fallback = it.next(),
            _ => {} // `cargo bench` passes `--bench`
        }
    }
    Some(Args {
        listen: listen?,
        upstream: upstream?,
        primary: primary?,
        fallback: fallback?,
    })
}

type Upstream = Client<HttpConnector, ReplayBody>;

async fn forward(
    client: &Upstream,
    head: &http::request::Parts,
    uri: &Uri,
    body: ReplayBody,
) -> Result<(http::response::Parts, Bytes), Box<dyn std::error::Error + Send + Sync>> {
    let mut req = Request::new(body);
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = uri.clone();
    *req.headers_mut() = head.headers.clone();
    req.headers_mut().remove(HOST);
    req.headers_mut().remove(TRANSFER_ENCODING);
    let len = req.body().len();
    req.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(len));
    let (parts, body) = client.request(req).await?.into_parts();
    Ok((parts, body.collect().await?.to_bytes()))
}

async fn handle(client: Upstream, uri: Uri, models: Arc<[Compiled; 2]>, req: Request<Body>) -> Response<Body> {
    let (head, body) = req.into_parts();
    let result = async {
        let bytes = body.collect().await?.to_bytes();
        // The routes are built once at start, as the layer builds its chain;
        // a primary named by the header is looked up among them.
        let named;
        let primary = match head.headers.get("x-floor-primary") {
            Some(v) => {
                let v = v.to_str()?;
                match models.iter().find(|r| r.model() == v) {
                    Some(route) => route,
                    None => {
                        named = Compiled::new(Route::new(v));
                        &named
                    }
                }
            }
            None => &models[0],
        };
        let first = llm_fallback::__private::rewrite_for(&bytes, primary)?;
        let (parts, answer) = forward(&client, &head, &uri, first).await?;
        if parts.status.is_success() {
            return Ok((parts, answer));
        }
        let second = llm_fallback::__private::rewrite_for(&bytes, &models[1])?;
        forward(&client, &head, &uri, second).await
    };
    match result.await {
        Ok((parts, answer)) => Response::from_parts(parts, Body::from(answer)),
        Err(e) => {
            let mut resp = Response::new(Body::from(e.to_string()));
            *resp.status_mut() = StatusCode::BAD_GATEWAY;
            resp
        }
    }
}

#[tokio::main]
async fn main() {
    let Some(Args {
        listen,
        upstream,
        primary,
        fallback,
    }) = args()
    else {
        println!(
            "proxy_floor: run by benches/gateway.sh (--listen ADDR --upstream URL --primary MODEL --fallback MODEL); nothing to do"
        );
        return;
    };
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let client: Upstream = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(http);
    let routes = Arc::new([Compiled::new(Route::new(primary)), Compiled::new(Route::new(fallback))]);
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |req: Request<Body>| handle(client.clone(), upstream.clone(), routes.clone(), req)),
    );
    use axum::serve::ListenerExt;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .expect("the listen address is free")
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    axum::serve(listener, app).await.expect("serve");
}
