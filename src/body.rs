//! The response body type and bounded body collection.

use crate::stream::CommittedStream;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use std::{
    fmt,
    pin::Pin,
    task::{Context, Poll},
};

pin_project! {
    /// The body of a [`FallbackService`](crate::FallbackService) response.
    ///
    /// Either the upstream's body passed through (a stream, or a body too large
    /// to inspect, with the already-read part replayed first), a buffered
    /// upstream body that was inspected, or an error the layer wrote itself.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Full { data: Option<Bytes> },
        Inner { head: Option<Bytes>, #[pin] body: B },
        Stream { body: std::pin::Pin<Box<CommittedStream<B>>> },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn full(data: Bytes) -> Self {
        ResponseBody {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    /// `body` comes boxed: [`CommittedStream::new`] builds it in its box.
    pub(crate) fn stream(body: std::pin::Pin<Box<CommittedStream<B>>>) -> Self {
        ResponseBody {
            kind: Kind::Stream { body },
        }
    }

    pub(crate) fn inner(head: Option<Bytes>, body: B) -> Self {
        ResponseBody {
            kind: Kind::Inner {
                head: head.filter(|h| !h.is_empty()),
                body,
            },
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print contents: bodies may carry prompts and answers.
        match &self.kind {
            Kind::Full { data } => f
                .debug_struct("ResponseBody::Full")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Inner { head, .. } => f
                .debug_struct("ResponseBody::Inner")
                .field("head_len", &head.as_ref().map_or(0, Bytes::len))
                .finish_non_exhaustive(),
            Kind::Stream { .. } => f.debug_struct("ResponseBody::Stream").finish_non_exhaustive(),
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<crate::BoxError>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Inner { head, body } => match head.take() {
                Some(h) => Poll::Ready(Some(Ok(Frame::data(h)))),
                None => body.poll_frame(cx),
            },
            KindProj::Stream { body } => body.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data } => data.is_none(),
            Kind::Inner { head, body } => head.is_none() && body.is_end_stream(),
            Kind::Stream { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Inner { head, body } => {
                let extra = head.as_ref().map_or(0, |h| h.len() as u64);
                let inner = body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(extra));
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(extra));
                }
                hint
            }
            Kind::Stream { body } => body.size_hint(),
        }
    }
}

/// Why [`collect_bounded`] stopped.
pub(crate) enum CollectError<E> {
    /// The body is longer than the limit; what was read so far. The rest is
    /// still in the body.
    TooLarge { head: Bytes },
    /// The body failed while being read.
    Body(E),
}

/// Reads a whole body into one `Bytes`, stopping as soon as it exceeds
/// `limit`. A body that arrives as one chunk is kept as-is (no copy); one
/// that arrives in pieces is copied once into a buffer sized from its size
/// hint, so at most one extra chunk is held at a time. Trailers are dropped.
pub(crate) async fn collect_bounded<B>(body: &mut B, limit: usize) -> Result<Bytes, CollectError<B::Error>>
where
    B: Body + Unpin,
{
    let mut first: Option<Bytes> = None;
    let mut buf: Option<BytesMut> = None;
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(CollectError::Body)?;
        let Ok(mut data) = frame.into_data() else { continue };
        let n = data.remaining();
        if n == 0 {
            continue;
        }
        len += n;
        if len > limit {
            let mut head = BytesMut::with_capacity(len);
            match (first.take(), buf.take()) {
                (Some(f), _) => head.put(f),
                (None, Some(b)) => head.put(b),
                (None, None) => {}
            }
            head.put(data);
            return Err(CollectError::TooLarge { head: head.freeze() });
        }
        match (first.take(), &mut buf) {
            (None, None) => first = Some(data.copy_to_bytes(n)),
            (Some(f), None) => {
                // The peer's declared length sizes the buffer, but no more
                // than twice what arrived plus 1 MiB ahead of it: a client
                // that declares 32 MiB and stalls after two frames holds
                // little memory (the buffer grows as bytes come).
                let ahead = len.max(1 << 20);
                let hint = body.size_hint().lower().min(limit as u64) as usize;
                let mut b = BytesMut::with_capacity(len.saturating_add(hint.min(ahead)).min(limit).max(len));
                b.put(f);
                b.put(data);
                buf = Some(b);
            }
            (_, Some(b)) => b.put(data),
        }
        // A body that knows it is done (a known length, all read) is not
        // polled again for its `None`: one wake-up less per body.
        if body.is_end_stream() {
            break;
        }
    }
    Ok(match (first, buf) {
        (_, Some(b)) => b.freeze(),
        (Some(f), None) => f,
        (None, None) => Bytes::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use std::convert::Infallible;

    /// A body that yields each part as its own frame.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn chunks(parts: &[&'static str]) -> Chunks {
        Chunks(parts.iter().map(|p| Bytes::from_static(p.as_bytes())).collect())
    }

    #[tokio::test]
    async fn one_chunk_is_not_copied() {
        let data = Bytes::from_static(b"{\"model\":\"a\"}");
        let got = collect_bounded(&mut Full::new(data.clone()), 100).await.ok().unwrap();
        assert_eq!(got.as_ptr(), data.as_ptr());
    }

    /// Two frames, then a body that says it has ended and must not be
    /// polled again (counts the polls).
    struct Ends(Chunks, usize);

    impl Body for Ends {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.1 += 1;
            Pin::new(&mut self.0).poll_frame(cx)
        }
        fn is_end_stream(&self) -> bool {
            self.0 .0.is_empty()
        }
    }

    #[tokio::test]
    async fn a_body_that_has_ended_is_not_polled_again() {
        let mut body = Ends(chunks(&["ab", "cd"]), 0);
        let got = collect_bounded(&mut body, 10).await.ok().unwrap();
        assert_eq!(&got[..], b"abcd");
        assert_eq!(body.1, 2, "two frames, no poll for the end");
    }

    #[tokio::test]
    async fn many_chunks_are_joined() {
        let got = collect_bounded(&mut chunks(&["ab", "cd", "ef"]), 6).await.ok().unwrap();
        assert_eq!(&got[..], b"abcdef");
    }

    #[tokio::test]
    async fn stops_past_the_limit_and_keeps_the_rest() {
        let mut body = chunks(&["ab", "cd", "ef", "gh"]);
        match collect_bounded(&mut body, 5).await {
            Err(CollectError::TooLarge { head }) => {
                assert_eq!(&head[..], b"abcdef");
                let tail = body.collect().await.unwrap().to_bytes();
                assert_eq!(&tail[..], b"gh");
            }
            _ => panic!("expected TooLarge"),
        }
    }

    #[tokio::test]
    async fn response_body_replays_head_then_inner() {
        let body = ResponseBody::inner(Some(Bytes::from_static(b"ab")), Full::new(Bytes::from_static(b"cd")));
        assert_eq!(body.size_hint().exact(), Some(4));
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"abcd");
        let full = ResponseBody::<Full<Bytes>>::full(Bytes::from_static(b"xyz"));
        assert_eq!(format!("{full:?}"), "ResponseBody::Full { len: 3 }");
    }
}
