//! An upstream that answers at once: it reads the request body frame by
//! frame (as a client writing it to a socket would, without copying it) and
//! replies with a fixed completion, or `503` for the first `fail_first` of
//! every `fail_first + 1` calls.
#![allow(dead_code)]

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

pub const OK: &str = r#"{"id":"gen-1","provider":"OpenAI","model":"openai/gpt-4o-mini","object":"chat.completion","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"Hello there, how can I help?"}}],"usage":{"prompt_tokens":14,"completion_tokens":7,"total_tokens":21}}"#;
pub const DOWN: &str =
    r#"{"error":{"code":503,"message":"No available provider","metadata":{"error_type":"provider_unavailable"}}}"#;

#[derive(Clone)]
pub struct Instant {
    calls: Arc<AtomicUsize>,
    fail_first: usize,
}

impl Instant {
    pub fn new(fail_first: usize) -> Self {
        Instant {
            calls: Arc::default(),
            fail_first,
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }
}

impl<B> tower::Service<Request<B>> for Instant
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: std::fmt::Debug,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let fail = self.fail_first > 0 && n % (self.fail_first + 1) < self.fail_first;
        Box::pin(async move {
            let mut body = std::pin::pin!(req.into_body());
            while let Some(frame) = body.frame().await {
                std::hint::black_box(frame.unwrap());
            }
            let (status, text) = if fail { (503, DOWN) } else { (200, OK) };
            Ok(Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(text.as_bytes())))
                .unwrap())
        })
    }
}

/// A chat-completions POST carrying `body` (shared, not copied).
pub fn request(body: &Bytes) -> Request<Full<Bytes>> {
    Request::post("http://upstream/api/v1/chat/completions")
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(Full::new(body.clone()))
        .unwrap()
}

/// Reads a response body to the end.
pub async fn drain<B: Body>(resp: Response<B>)
where
    B::Error: std::fmt::Debug,
{
    let mut body = std::pin::pin!(resp.into_body());
    while let Some(frame) = body.frame().await {
        std::hint::black_box(frame.unwrap());
    }
}
