//! The layer in real stacks: tracing outside, per-model retries and timeouts
//! inside, and the same stack mounted in an axum `Router`.

mod common;

use axum::error_handling::HandleErrorLayer;
use common::*;
use http::{Request, Response, StatusCode};
use llm_fallback::{BoxError, Chain, FallbackLayer, FallbackReport, Outcome, ReplayBody, Route};
use llm_fallback_mock::{MockUpstream, Reply, Script};
use std::future::{ready, Ready};
use std::time::Duration;
use tower::retry::RetryLayer;
use tower::timeout::TimeoutLayer;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::trace::TraceLayer;

/// Retries a model that answers 503, up to `left` more times.
#[derive(Clone)]
struct RetryUnavailable {
    left: usize,
}

impl<B> tower::retry::Policy<Request<ReplayBody>, Response<B>, BoxError> for RetryUnavailable {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut Request<ReplayBody>, result: &mut Result<Response<B>, BoxError>) -> Option<Ready<()>> {
        match result {
            Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE && self.left > 0 => {
                self.left -= 1;
                Some(ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, req: &Request<ReplayBody>) -> Option<Request<ReplayBody>> {
        // `ReplayBody` is cheap to clone: it shares the caller's bytes.
        let mut clone = Request::new(req.body().clone());
        *clone.method_mut() = req.method().clone();
        *clone.uri_mut() = req.uri().clone();
        *clone.headers_mut() = req.headers().clone();
        *clone.extensions_mut() = req.extensions().clone();
        Some(clone)
    }
}

fn upstream() -> MockUpstream {
    MockUpstream::new()
        // Down for good: two retries, then the chain moves on.
        .model("a/a", Reply::status(503))
        // A blip: the retry inside serves it.
        .model("b/b", Script::sequence([Reply::status(503), Reply::ok()]))
        .model("slow/s", Reply::hang())
}

fn chain(first: &str) -> Chain {
    Chain::new([Route::new(first), Route::new("b/b")])
}

#[tokio::test]
async fn retries_per_model_then_the_next_model() {
    let up = upstream();
    let svc = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .layer(FallbackLayer::new(chain("a/a")))
        .layer(RetryLayer::new(RetryUnavailable { left: 2 }))
        .layer(TimeoutLayer::new(Duration::from_secs(5)))
        .service(up.clone());
    let resp = svc
        .oneshot(post("http://mock/api/v1/chat/completions", chat("a/a")))
        .await
        .unwrap();
    let (parts, json) = body_json(resp).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(json["model"], "b/b");
    assert_eq!(up.request_count("a/a"), 3, "one try and two retries on the primary");
    assert_eq!(up.request_count("b/b"), 2, "the retry inside served the blip");
    let report = report(&parts);
    assert_eq!(report.attempts().len(), 2, "the report counts hops, not retries");
    assert_eq!(report.served_model(), "b/b");
}

#[tokio::test(start_paused = true)]
async fn an_inner_timeout_is_a_failed_hop() {
    let up = upstream();
    let svc = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .layer(FallbackLayer::new(chain("slow/s")))
        .layer(RetryLayer::new(RetryUnavailable { left: 2 }))
        .layer(TimeoutLayer::new(Duration::from_secs(5)))
        .service(up.clone());
    let resp = svc
        .oneshot(post("http://mock/api/v1/chat/completions", chat("x")))
        .await
        .unwrap();
    let (parts, _) = body_bytes(resp).await;
    let report = report(&parts);
    assert_eq!(report.attempts()[0].outcome(), Outcome::Transport);
    assert!(report.attempts()[0]
        .transport_error()
        .unwrap()
        .contains("request timed out"));
    assert_eq!(report.served_model(), "b/b");
}

#[tokio::test]
async fn the_same_stack_inside_an_axum_router() {
    let up = upstream();
    let llm = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|e: BoxError| async move {
            (StatusCode::BAD_GATEWAY, e.to_string())
        }))
        .layer(FallbackLayer::new(chain("a/a")))
        .layer(RetryLayer::new(RetryUnavailable { left: 2 }))
        .layer(TimeoutLayer::new(Duration::from_secs(5)))
        .service(up.clone());
    let app = axum::Router::new()
        .route_service("/v1/chat/completions", llm)
        .layer(TraceLayer::new_for_http());

    let req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(chat("a/a")))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let (parts, json) = body_json(resp).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(parts.headers["x-fallback-model"], "b/b");
    assert_eq!(json["choices"][0]["message"]["role"], "assistant");
    assert!(parts.extensions.get::<FallbackReport>().is_some());

    // A bad body is refused inside the router too, without reaching the upstream.
    let before = up.requests().len();
    let req = Request::post("/v1/chat/completions")
        .body(axum::body::Body::from("{\"model\":1}"))
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(up.requests().len(), before);
}

/// A caller's marker, to see that every attempt carries the caller's extensions.
#[derive(Clone, Debug, PartialEq)]
struct CallerTag(&'static str);

#[tokio::test]
async fn every_attempt_carries_the_callers_head() {
    // Three routes, the first two failing: the first two attempts get copies
    // of the caller's head and the last one gets the head itself; all must
    // see the same method, URI, headers and extensions.
    let up = MockUpstream::new()
        .model("a/a", Reply::status(503))
        .model("b/b", Reply::status(429))
        .model("c/c", Reply::ok());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let inner = tower::service_fn(move |req: Request<ReplayBody>| {
        record.lock().unwrap().push((
            req.method().clone(),
            req.uri().clone(),
            req.headers().get("x-caller").cloned(),
            req.headers().get("content-length").cloned(),
            req.extensions().get::<CallerTag>().cloned(),
            req.extensions().get::<llm_fallback::Attempt>().map(|a| a.index()),
        ));
        up.clone().oneshot(req)
    });
    let svc = ServiceBuilder::new()
        .layer(FallbackLayer::new(Chain::new([
            Route::new("a/a"),
            Route::new("b/b"),
            Route::new("c/c"),
        ])))
        .service(inner);
    let mut req = post("http://mock/api/v1/chat/completions", chat("x/x"));
    req.headers_mut().insert("x-caller", "yes".parse().unwrap());
    req.extensions_mut().insert(CallerTag("mine"));
    let resp = svc.oneshot(req).await.unwrap();
    let (parts, json) = body_json(resp).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(json["model"], "c/c");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    for (i, (method, uri, caller, length, tag, index)) in seen.iter().enumerate() {
        assert_eq!(method, "POST", "attempt {i}");
        assert_eq!(uri, "http://mock/api/v1/chat/completions", "attempt {i}");
        assert_eq!(caller.as_ref().unwrap(), "yes", "attempt {i}");
        assert!(length.is_some(), "attempt {i} has its own Content-Length");
        assert_eq!(tag.as_ref(), Some(&CallerTag("mine")), "attempt {i}");
        assert_eq!(*index, Some(i), "attempt {i} is told which attempt it is");
    }
}
