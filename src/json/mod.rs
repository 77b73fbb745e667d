//! Just enough JSON to replay a request: a scanner for the members of the
//! top-level object that builds no DOM (it reports byte spans, and skips
//! nested values at `memchr` speed), and a body type that rewrites those
//! spans zero-copy, by slicing the caller's buffer around them.

mod replay;
pub(crate) mod scan;
mod simd;
pub(crate) mod valid;

pub use replay::ReplayBody;
pub(crate) use replay::{BadEdits, Edit};

/// The bytes of `range` in `bytes`, or none when it is not inside them.
/// For spans a reader of the crate took from the same bytes (always
/// inside): slicing with `get`, where an index could panic.
#[inline(always)]
pub(crate) fn within<R: std::slice::SliceIndex<[u8], Output = [u8]>>(bytes: &[u8], range: R) -> &[u8] {
    bytes.get(range).unwrap_or_default()
}
