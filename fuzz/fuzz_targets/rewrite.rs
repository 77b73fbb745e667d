//! The scanner and the model rewrite against serde_json, on any bytes.
//!
//! Input: `<new model> 0xFF <body>`, or the whole input as the body (and
//! `openai/gpt-4o` as the new model) when there is no `0xFF` (so plain JSON
//! files are good seeds). The property is in `tests/support/oracle.rs`.
#![no_main]

#[path = "../../tests/support/oracle.rs"]
mod oracle;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (model, body) = match data.iter().position(|&b| b == 0xFF) {
        Some(at) => (String::from_utf8_lossy(&data[..at]).into_owned(), &data[at + 1..]),
        None => ("openai/gpt-4o".to_owned(), data),
    };
    oracle::check(body, &model);
});
