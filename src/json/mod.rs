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
