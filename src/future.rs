//! The response future of [`FallbackService`](crate::FallbackService).

use crate::body::ResponseBody;
use http::Response;
use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

type Boxed<RB> = Pin<Box<dyn Future<Output = Response<ResponseBody<RB>>> + Send>>;

/// Response future of [`FallbackService`](crate::FallbackService).
///
/// The replay loop is one `async fn` shared by every front end, so this future
/// is a box around it: one allocation per request, measured in `BENCHMARKS.md`.
/// Dropping it cancels the attempt in flight.
pub struct ResponseFuture<RB, E> {
    // The engine never fails a request (every failure is an answer), so
    // the box holds its future as it is, and `poll` wraps the answer in
    // `Ok`: no wrapping future, so the large engine future is moved once.
    inner: Boxed<RB>,
    _error: std::marker::PhantomData<fn() -> E>,
}

impl<RB, E> ResponseFuture<RB, E> {
    pub(crate) fn new(fut: impl Future<Output = Response<ResponseBody<RB>>> + Send + 'static) -> Self {
        ResponseFuture {
            inner: Box::pin(fut),
            _error: std::marker::PhantomData,
        }
    }
}

impl<RB, E> Future for ResponseFuture<RB, E> {
    type Output = Result<Response<ResponseBody<RB>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx).map(Ok)
    }
}

impl<RB, E> fmt::Debug for ResponseFuture<RB, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
