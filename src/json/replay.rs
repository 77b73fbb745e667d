//! The body of one attempt: the caller's bytes with a few spans replaced.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::convert::Infallible;
use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Parts kept inline: the model rewrite and one more edit (a route's
/// override, a `provider` or `models` edit) fit without a heap allocation;
/// more spill into a `Vec`. Every request moves its body several times on
/// its way through the engine and the client (hyper moves the request
/// into its dispatch queue and its connection task), so the inline parts
/// are kept few: nine made the body 336 bytes, five make it 208.
const INLINE_PARTS: usize = 5;

/// The request body sent upstream for one attempt.
///
/// It is the caller's buffered body cut around the edited values (the
/// top-level `"model"`), with the new values in between: a handful of
/// [`Bytes`] slices that share the caller's buffer. The prompt is never
/// copied or re-serialized, however large it is, so every attempt sends the
/// caller's bytes exactly, and building one costs a few reference-count
/// increments (and no heap allocation for up to two edits). Cloning is
/// just as cheap, so an inner retry layer can clone requests freely.
///
/// Its length is known up front: [`Body::size_hint`] is exact (before and
/// during polling), so clients send a `Content-Length` rather than chunked
/// encoding. The `Debug` output shows only sizes, never content, since
/// bodies carry prompts and sometimes secrets.
#[derive(Clone)]
pub struct ReplayBody {
    /// `parts[next..count]` are still to be sent; all of them are non-empty.
    /// The first [`INLINE_PARTS`] live in `inline`, the rest in `spill`.
    inline: [Bytes; INLINE_PARTS],
    spill: Vec<Bytes>,
    next: usize,
    count: usize,
    /// Total length of the parts still to be sent.
    remaining: u64,
}

/// Replace `range` of the original body with `replacement`; an empty range
/// inserts at `range.start`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Edit {
    pub(crate) range: Range<usize>,
    pub(crate) replacement: Bytes,
}

/// Edits that cannot be applied: out of order, overlapping or outside the
/// body. The engine builds its edits from the scanner's spans, so this is a
/// bug in the crate, never the caller's; it is an error rather than a panic
/// so no input can crash the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadEdits {
    pub(crate) range: Range<usize>,
    pub(crate) after: usize,
    pub(crate) len: usize,
}

impl fmt::Display for BadEdits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "edit {:?} is not sorted after {}, or lies outside the {}-byte body",
            self.range, self.after, self.len
        )
    }
}

impl ReplayBody {
    /// The whole body, unchanged.
    #[inline]
    pub(crate) fn new(original: Bytes) -> Self {
        let mut body = Self::default();
        body.push(original);
        body
    }

    /// `original` with `edits` applied, any number of them. Edits must be
    /// sorted by `range.start`, must not overlap and must lie within
    /// `original`; otherwise nothing is built and the first bad edit is
    /// named. Every replacement is moved out of `edits` (an empty one is
    /// left), on success and on error alike, so the caller has none left to
    /// drop and none is cloned.
    pub(crate) fn rewrite(original: &Bytes, edits: &mut [Edit]) -> Result<Self, BadEdits> {
        let mut body = Self::default();
        // At most two parts per edit and the tail: what does not fit inline
        // is reserved at once.
        let parts = edits.len().saturating_mul(2).saturating_add(1);
        body.spill.reserve_exact(parts.saturating_sub(INLINE_PARTS));
        let mut done = 0;
        for i in 0..edits.len() {
            let Some(edit) = edits.get_mut(i) else { break };
            let Range { start, end } = edit.range;
            if !(done <= start && start <= end && end <= original.len()) {
                let bad = BadEdits {
                    range: edit.range.clone(),
                    after: done,
                    len: original.len(),
                };
                for rest in edits.get_mut(i..).unwrap_or_default() {
                    drop(std::mem::take(&mut rest.replacement));
                }
                return Err(bad);
            }
            body.push(original.slice(done..start));
            body.push(std::mem::take(&mut edit.replacement));
            done = end;
        }
        body.push(original.slice(done..));
        Ok(body)
    }

    /// Appends a part, skipping empty ones so every poll yields data.
    fn push(&mut self, part: Bytes) {
        if part.is_empty() {
            return;
        }
        self.remaining += part.len() as u64;
        match self.inline.get_mut(self.count) {
            // The slots from `count` on were never written: each holds the
            // empty static `Bytes` of `default`, whose drop is a no-op, so
            // it is forgotten rather than dropped through its vtable.
            Some(slot) => std::mem::forget(std::mem::replace(slot, part)),
            None => self.spill.push(part),
        }
        self.count += 1;
    }

    /// Takes part `i` out (leaving an empty one).
    fn take(&mut self, i: usize) -> Bytes {
        let slot = match i.checked_sub(INLINE_PARTS) {
            None => self.inline.get_mut(i),
            Some(j) => self.spill.get_mut(j),
        };
        slot.map(std::mem::take).unwrap_or_default()
    }

    /// The bytes still to send as one buffer when they are at most one part
    /// (an unedited body, or an empty one), so a client can send them as a
    /// buffered body rather than a stream; otherwise the body itself.
    /// Nothing is copied either way.
    // The body comes back as it is, as `Arc::try_unwrap` gives back its Arc.
    #[allow(clippy::result_large_err)]
    #[cfg(feature = "async-openai")]
    pub(crate) fn into_single(mut self) -> Result<Bytes, Self> {
        match self.count - self.next {
            0 => Ok(Bytes::new()),
            1 => Ok(self.take(self.next)),
            _ => Err(self),
        }
    }

    /// Bytes not yet sent.
    pub fn len(&self) -> u64 {
        self.remaining
    }

    /// Whether every byte has been sent (or there were none).
    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }
}

impl Default for ReplayBody {
    /// An empty body.
    fn default() -> Self {
        ReplayBody {
            inline: Default::default(),
            spill: Vec::new(),
            next: 0,
            count: 0,
            remaining: 0,
        }
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.next == this.count {
            return Poll::Ready(None);
        }
        let part = this.take(this.next);
        this.next += 1;
        this.remaining = this.remaining.saturating_sub(part.len() as u64);
        Poll::Ready(Some(Ok(Frame::data(part))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

impl fmt::Debug for ReplayBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Sizes only: the body holds the caller's prompt.
        f.debug_struct("ReplayBody")
            .field("len", &self.remaining)
            .field("parts", &(self.count - self.next))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::scan::{self, tests::object_text};
    use http_body_util::BodyExt;
    use proptest::prelude::*;
    use serde_json::Value;
    use std::sync::Arc;
    use std::task::Wake;

    struct NoWake;
    impl Wake for NoWake {
        fn wake(self: Arc<Self>) {}
    }

    /// Polls every frame synchronously (the body is always ready), checking
    /// that the size hint stays exact throughout.
    fn drain(mut body: ReplayBody) -> (Vec<u8>, usize) {
        let waker = Arc::new(NoWake).into();
        let mut cx = Context::from_waker(&waker);
        let (mut out, mut frames) = (Vec::new(), 0);
        loop {
            let left = body.len();
            assert_eq!(body.size_hint().exact(), Some(left));
            assert_eq!(body.is_end_stream(), left == 0);
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let data = frame.into_data().expect("only data frames");
                    assert!(!data.is_empty(), "empty frames are skipped");
                    assert_eq!(body.len(), left - data.len() as u64);
                    out.extend_from_slice(&data);
                    frames += 1;
                }
                Poll::Ready(None) => break,
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Pending => unreachable!("a replay body is always ready"),
            }
        }
        assert!(body.is_empty() && body.is_end_stream());
        (out, frames)
    }

    fn edit(range: Range<usize>, with: &'static str) -> Edit {
        Edit {
            range,
            replacement: Bytes::from_static(with.as_bytes()),
        }
    }

    const BODY: &str = r#"{"model":"a/b","messages":[{"role":"user","content":"secret prompt"}]}"#;

    #[tokio::test]
    async fn rewrites_the_model_and_collects() {
        let original = Bytes::from_static(BODY.as_bytes());
        let body = ReplayBody::rewrite(&original, &mut [edit(9..14, r#""openai/gpt-4o""#)]).unwrap();
        let want = BODY.replace(r#""a/b""#, r#""openai/gpt-4o""#);
        assert_eq!(body.len(), want.len() as u64);
        assert_eq!(body.size_hint().exact(), Some(want.len() as u64));
        let got = body.clone().collect().await.unwrap().to_bytes();
        assert_eq!(got, want.as_bytes());
        assert_eq!(drain(body), (want.into_bytes(), 3));
    }

    #[test]
    fn whole_body_and_empty_body() {
        let original = Bytes::from_static(BODY.as_bytes());
        assert_eq!(drain(ReplayBody::new(original.clone())), (BODY.as_bytes().to_vec(), 1));
        assert_eq!(
            drain(ReplayBody::rewrite(&original, &mut []).unwrap()),
            (BODY.as_bytes().to_vec(), 1)
        );
        assert_eq!(drain(ReplayBody::default()), (Vec::new(), 0));
        assert_eq!(drain(ReplayBody::new(Bytes::new())), (Vec::new(), 0));
        assert!(ReplayBody::default().is_end_stream());
    }

    #[test]
    #[cfg(feature = "async-openai")]
    fn one_part_is_handed_over_whole() {
        let original = Bytes::from_static(BODY.as_bytes());
        let whole = ReplayBody::new(original.clone()).into_single().unwrap();
        assert_eq!(whole, original);
        // The same buffer, not a copy of it.
        assert_eq!(whole.as_ptr(), original.as_ptr());
        assert_eq!(ReplayBody::default().into_single().unwrap(), Bytes::new());
        let edited = ReplayBody::rewrite(&original, &mut [edit(9..14, r#""x""#)]).unwrap();
        let edited = edited.into_single().expect_err("three parts stay a body");
        assert_eq!(drain(edited), (BODY.replace(r#""a/b""#, r#""x""#).into_bytes(), 3));
        // A body partly sent hands over what is left.
        let mut two = ReplayBody::rewrite(&original, &mut [edit(0..0, "")]).unwrap();
        assert_eq!(two.count - two.next, 1);
        two.next = 0;
        assert_eq!(two.into_single().unwrap(), original);
    }

    #[test]
    fn insertions_and_edge_edits() {
        let original = Bytes::from_static(b"{\"model\":\"a\"}");
        // Insert right after `{`, replace the value, append at the very end.
        let body = ReplayBody::rewrite(
            &original,
            &mut [
                edit(1..1, r#""models":["x"],"#),
                edit(9..12, r#""b""#),
                edit(13..13, "\n"),
            ],
        )
        .unwrap();
        assert_eq!(drain(body), (b"{\"models\":[\"x\"],\"model\":\"b\"}\n".to_vec(), 6));
        // Edits touching both ends leave no empty parts.
        let body = ReplayBody::rewrite(&original, &mut [edit(0..1, "[{"), edit(12..13, "}]")]).unwrap();
        assert_eq!(drain(body), (b"[{\"model\":\"a\"}]".to_vec(), 3));
        // Deleting everything.
        assert_eq!(
            drain(ReplayBody::rewrite(&original, &mut [edit(0..13, "")]).unwrap()),
            (Vec::new(), 0)
        );
        // Four edits, nine parts (four of them past the inline ones).
        let body = ReplayBody::rewrite(
            &original,
            &mut [edit(1..2, "1"), edit(3..4, "2"), edit(5..6, "3"), edit(7..8, "4")],
        )
        .unwrap();
        assert_eq!(drain(body), (b"{1m2d3l4:\"a\"}".to_vec(), 9));
    }

    #[test]
    fn any_number_of_edits() {
        // Past the inline parts the rest spill to the heap; the bytes and the
        // exact size hint are the same either way.
        let original = Bytes::from_static(b"0123456789abcdefghij");
        for n in [0, 4, 5, 9, 10, 20] {
            let mut edits: Vec<Edit> = (0..n).map(|i| edit(i..i + 1, "_")).collect();
            let body = ReplayBody::rewrite(&original, &mut edits).unwrap();
            let want = format!("{}{}", "_".repeat(n), &"0123456789abcdefghij"[n..]);
            let (out, frames) = drain(body);
            assert_eq!(out, want.as_bytes(), "{n} edits");
            // Each edit is a part, and the untouched tail one more.
            assert_eq!(frames, n + usize::from(n < 20), "{n} edits");
        }
        // Insertions and removals mixed, more than the inline parts hold.
        let mut edits: Vec<Edit> = (0..12)
            .map(|i| {
                if i % 2 == 0 {
                    edit(i..i, "+")
                } else {
                    edit(i..i + 1, "")
                }
            })
            .collect();
        let (out, _) = drain(ReplayBody::rewrite(&original, &mut edits).unwrap());
        assert_eq!(out, b"+0+2+4+6+8+acdefghij");
    }

    /// `rewrite` moves every replacement out of the edits, when it builds
    /// the body and when it refuses the list, so none is left to drop.
    #[test]
    fn replacements_are_moved_out_on_success_and_on_error() {
        let original = Bytes::from_static(b"0123456789");
        let mut good = [edit(1..2, "a"), edit(4..5, "b")];
        let (out, _) = drain(ReplayBody::rewrite(&original, &mut good).unwrap());
        assert_eq!(out, b"0a23b56789");
        assert!(good.iter().all(|e| e.replacement.is_empty()));
        // The second edit is refused: it and the one after it lose theirs too.
        let mut bad = [edit(1..2, "a"), edit(9..20, "b"), edit(9..9, "c")];
        assert!(ReplayBody::rewrite(&original, &mut bad).is_err());
        assert!(bad.iter().all(|e| e.replacement.is_empty()));
    }

    #[test]
    fn bad_edits_are_errors_not_panics() {
        let original = Bytes::from_static(b"0123456789");
        let overlapping = ReplayBody::rewrite(&original, &mut [edit(2..5, "x"), edit(4..6, "y")]).unwrap_err();
        assert_eq!(
            overlapping,
            BadEdits {
                range: 4..6,
                after: 5,
                len: 10
            }
        );
        assert!(
            ReplayBody::rewrite(&original, &mut [edit(5..12, "")]).is_err(),
            "past the end"
        );
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = edit(6..5, "");
        assert!(ReplayBody::rewrite(&original, &mut [backwards]).is_err(), "backwards");
        assert!(
            ReplayBody::rewrite(&original, &mut [edit(6..7, ""), edit(1..2, "")]).is_err(),
            "unsorted"
        );
    }

    #[test]
    fn clones_share_and_resume() {
        let original = Bytes::from_static(BODY.as_bytes());
        let mut body = ReplayBody::rewrite(&original, &mut [edit(9..14, r#""c""#)]).unwrap();
        let waker = Arc::new(NoWake).into();
        let first = Pin::new(&mut body).poll_frame(&mut Context::from_waker(&waker));
        assert!(matches!(first, Poll::Ready(Some(Ok(_)))));
        let (rest, frames) = drain(body.clone());
        assert_eq!(rest, BODY[9..].replacen(r#""a/b""#, r#""c""#, 1).as_bytes());
        assert_eq!(frames, 2);
    }

    #[test]
    fn debug_shows_no_content() {
        let original = Bytes::from_static(BODY.as_bytes());
        let body = ReplayBody::rewrite(&original, &mut [edit(9..14, r#""openai/gpt-4o""#)]).unwrap();
        let shown = format!("{body:?}");
        assert_eq!(shown, format!("ReplayBody {{ len: {}, parts: 3 }}", body.len()));
        assert!(!shown.contains("secret") && !shown.contains("gpt"));
    }

    proptest! {
        /// Insert a top-level "model" anywhere in a random object, find it
        /// with the scanner, swap its value: serde_json sees the same object
        /// with only the model changed.
        #[test]
        fn rewrite_changes_only_the_model(
            text in object_text(),
            at in any::<prop::sample::Index>(),
            old_model in any::<String>(),
            new_model in any::<String>(),
        ) {
            let mut want: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
            prop_assume!(!want.contains_key("model"));
            // Insert before the key of a random member, or into `{}`.
            let mut cuts = vec![];
            scan::scan_object(text.as_bytes(), |m| {
                cuts.push(m.key_span.start);
                Ok::<_, ()>(())
            })
            .unwrap();
            let model = format!("\"model\" : {}", Value::from(old_model.as_str()));
            let with_model = match cuts.is_empty() {
                true => text.replacen('{', &format!("{{{model}"), 1),
                false => {
                    let cut = cuts[at.index(cuts.len())];
                    format!("{}{model},{}", &text[..cut], &text[cut..])
                }
            };
            let original = Bytes::from(with_model);

            let mut span = None;
            scan::scan_object(&original, |m| {
                if &*m.key == b"model" {
                    span = Some(m.value);
                }
                Ok::<_, ()>(())
            })
            .unwrap();
            let span = span.unwrap();
            prop_assert_eq!(scan::decode_string(&original[span.clone()]).unwrap(), old_model.as_str());

            let edit = Edit { range: span, replacement: scan::encode_string(&new_model) };
            let (sent, _) = drain(ReplayBody::rewrite(&original, &mut [edit]).unwrap());
            let got: serde_json::Map<String, Value> = serde_json::from_slice(&sent).unwrap();
            want.insert("model".into(), Value::from(new_model));
            prop_assert_eq!(got, want);
        }
    }
}
