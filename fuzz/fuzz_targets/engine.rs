//! The real `FallbackService` over an in-process upstream, on any bytes.
//!
//! The input chooses the caller's body and headers, the chain and the
//! upstream's answers; the properties are in `tests/support/engine_fuzz.rs`
//! (shared with `tests/fuzz_regressions.rs`, which replays every seed and
//! regression in CI).
#![no_main]

#[path = "../../tests/support/engine_fuzz.rs"]
mod engine_fuzz;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    engine_fuzz::run(data);
});
