//! The mock's response body and its two small error types.

use std::borrow::Cow;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

// ===== MockBody =====

/// The body of every response from [`MockUpstream`](super::MockUpstream).
///
/// Either a whole buffer or, for [`Reply::stream`](super::Reply::stream), a
/// lazy `text/event-stream` whose frames (one per SSE event) are made as the
/// body is polled. Reading it fails with [`MockBodyError`] only where the
/// script cuts the stream.
pub struct MockBody {
    inner: BoxBody<Bytes, MockBodyError>,
}

impl MockBody {
    /// A body holding `bytes`, with an exact size hint.
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        let full = Full::new(bytes.into()).map_err(|never| match never {});
        Self {
            inner: BoxBody::new(full),
        }
    }

    /// A body that forwards `body`'s frames.
    pub(super) fn new<B>(body: B) -> Self
    where
        B: Body<Data = Bytes, Error = MockBodyError> + Send + Sync + 'static,
    {
        Self {
            inner: BoxBody::new(body),
        }
    }

    /// A body with no bytes.
    #[allow(dead_code)]
    pub(crate) fn empty() -> Self {
        let empty = Empty::new().map_err(|never| match never {});
        Self {
            inner: BoxBody::new(empty),
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = MockBodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, MockBodyError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl fmt::Debug for MockBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockBody")
            .field("size_hint", &self.inner.size_hint())
            .finish_non_exhaustive()
    }
}

// ===== MockBodyError =====

/// An error while reading a [`MockBody`]: the mock broke the body on purpose.
#[derive(Debug, Clone)]
pub struct MockBodyError {
    reason: Cow<'static, str>,
}

impl MockBodyError {
    pub(crate) fn new(reason: impl Into<Cow<'static, str>>) -> Self {
        Self { reason: reason.into() }
    }
}

impl fmt::Display for MockBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for MockBodyError {}

// ===== MockTransportError =====

/// The in-process stand-in for a failed connection: what
/// [`MockUpstream`](super::MockUpstream) returns as its service error for
/// [`Reply::transport_error`](super::Reply::transport_error), or when the
/// request body cannot be read.
#[derive(Debug, Clone)]
pub struct MockTransportError {
    reason: Cow<'static, str>,
}

impl MockTransportError {
    pub(crate) fn reset() -> Self {
        Self {
            reason: Cow::Borrowed("connection reset by mock upstream"),
        }
    }

    pub(crate) fn new(reason: impl Into<Cow<'static, str>>) -> Self {
        Self { reason: reason.into() }
    }
}

impl fmt::Display for MockTransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for MockTransportError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_body_collects_with_exact_hint() {
        let body = MockBody::full("hello");
        assert_eq!(body.size_hint().exact(), Some(5));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
        let empty = MockBody::empty();
        assert!(empty.is_end_stream());
    }

    #[test]
    fn errors_display_their_reason() {
        assert_eq!(
            MockTransportError::reset().to_string(),
            "connection reset by mock upstream"
        );
        assert_eq!(MockBodyError::new("stream broken").to_string(), "stream broken");
        fn assert_bounds<T: std::error::Error + Send + Sync + 'static>() {}
        assert_bounds::<MockTransportError>();
        assert_bounds::<MockBodyError>();
    }
}
