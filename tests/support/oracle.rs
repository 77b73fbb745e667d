//! The rewrite oracle, shared by the proptest (`tests/property.rs`) and the
//! libFuzzer target (`fuzz/fuzz_targets/rewrite.rs`), with serde_json as
//! the reference parser.
//!
//! For any bytes `body` and any new `model`:
//!
//! - **(a)** if serde_json parses `body` as an object with exactly one
//!   top-level `"model"`, a string, and at most one `"models"`,
//!   `"provider"` and `"stream"` (duplicates the crate refuses on
//!   purpose), then `rewrite_model` succeeds and its output parses to the
//!   original object with only `model` changed;
//! - **(b)** whenever `rewrite_model` succeeds, its output is the input
//!   byte for byte with one JSON string literal (the old model) replaced by
//!   the new model's literal, as serde_json writes it;
//! - **(c)** if serde_json parses an object the crate must refuse (no,
//!   duplicate or non-string `model`, a duplicate `models`/`provider`/
//!   `stream`), `rewrite_model` returns its 400 message; if serde_json
//!   rejects the input, the crate either refuses too or (it does not look
//!   inside nested values) succeeds under (b).
#![allow(dead_code)]

use bytes::Bytes;
use http_body::Body;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Top-level keys the crate refuses to see twice.
const SINGLE_KEYS: [&str; 6] = ["model", "models", "provider", "stream", "route", "transforms"];

/// A JSON object's members in order, duplicates kept (serde_json's `Value`
/// keeps only the last).
struct Members(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    members.push(entry);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(V)
    }
}

/// What serde_json says the crate must do with a body.
#[derive(Debug)]
pub enum Expect {
    /// A valid object with one string `model`: rewrite it; here is the object.
    Rewrite(serde_json::Map<String, Value>),
    /// Valid JSON the crate must refuse, and why.
    Refuse(&'static str),
    /// Not a JSON object to serde_json.
    Invalid,
}

pub fn expect(body: &[u8]) -> Expect {
    let Ok(Members(members)) = serde_json::from_slice::<Members>(body) else {
        return Expect::Invalid;
    };
    for key in SINGLE_KEYS {
        if members.iter().filter(|(k, _)| k == key).count() > 1 {
            return Expect::Refuse("duplicate key");
        }
    }
    match members.iter().find(|(k, _)| k == "model") {
        None => Expect::Refuse("no model"),
        Some((_, Value::String(_))) => Expect::Rewrite(members.into_iter().collect()),
        Some(_) => Expect::Refuse("model is not a string"),
    }
}

/// What happened, for statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid JSON, rewritten.
    Rewritten,
    /// serde_json rejects it, the crate rewrote only the model (it does not
    /// validate nested values).
    RewrittenLenient,
    /// Refused with a 400, rightly.
    Refused,
}

struct NoWake;
impl std::task::Wake for NoWake {
    fn wake(self: std::sync::Arc<Self>) {}
}

/// Every byte of a replay body (always ready), checking its size hint.
fn collect(mut body: llm_fallback::ReplayBody) -> Vec<u8> {
    let waker = std::sync::Arc::new(NoWake).into();
    let mut cx = Context::from_waker(&waker);
    let len = body.size_hint().exact().expect("a replay body's size is exact");
    let mut out = Vec::new();
    while let Poll::Ready(Some(frame)) = Pin::new(&mut body).poll_frame(&mut cx) {
        out.extend_from_slice(&frame.expect("infallible").into_data().expect("data"));
    }
    assert_eq!(out.len() as u64, len, "size hint and bytes sent differ");
    out
}

/// The start of the span `out` replaced in `input` with `lit`, if `out` is
/// `input[..a] + lit + input[b..]` where `input[a..b]` is a JSON string
/// literal that decodes; returns `(a, b)`.
fn replaced_string(input: &[u8], out: &[u8], lit: &[u8]) -> Option<(usize, usize)> {
    let kept = out.len().checked_sub(lit.len())?;
    let prefix = input.iter().zip(out).take_while(|(a, b)| a == b).count();
    let suffix = input
        .iter()
        .rev()
        .zip(out.iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    // `a` bytes kept before, `kept - a` after.
    let lowest = kept.saturating_sub(suffix);
    (lowest..=prefix.min(kept)).find_map(|a| {
        let b = input.len().checked_sub(kept - a)?;
        let fits = b >= a + 2
            && out[a..a + lit.len()] == *lit
            && input[a] == b'"'
            && input[b - 1] == b'"'
            && serde_json::from_slice::<String>(&input[a..b]).is_ok();
        fits.then_some((a, b))
    })
}

/// Checks the oracle for one input; panics with a description if the crate
/// breaks it.
pub fn check(body: &[u8], model: &str) -> Verdict {
    let result = llm_fallback::__private::rewrite_model(&Bytes::copy_from_slice(body), model);
    let expect = expect(body);
    match result {
        Err(message) => {
            assert!(
                !message.is_empty(),
                "an empty 400 message for {:?}",
                String::from_utf8_lossy(body)
            );
            if let Expect::Rewrite(_) = expect {
                panic!(
                    "refused a valid request ({message}): {:?}",
                    String::from_utf8_lossy(body)
                );
            }
            Verdict::Refused
        }
        Ok(replay) => check_output(body, &collect(replay), model, expect),
    }
}

/// Checks that `out` is a correct rewrite of `body` to `model`, given what
/// serde_json said of `body`.
pub fn check_output(body: &[u8], out: &[u8], model: &str, expect: Expect) -> Verdict {
    let shown = || String::from_utf8_lossy(body).into_owned();
    if let Expect::Refuse(why) = expect {
        panic!(
            "accepted a body serde_json reads as invalid for the layer ({why}): {:?}",
            shown()
        );
    }
    let lit = serde_json::to_vec(model).expect("a string serializes");
    let (a, b) = replaced_string(body, out, &lit).unwrap_or_else(|| {
        panic!(
            "the output is not the input with one string replaced by {:?}:\ninput  {:?}\noutput {:?}",
            String::from_utf8_lossy(&lit),
            shown(),
            String::from_utf8_lossy(out)
        )
    });
    match expect {
        Expect::Rewrite(mut want) => {
            let got: serde_json::Map<String, Value> = serde_json::from_slice(out).unwrap_or_else(|e| {
                panic!(
                    "the rewritten body does not parse ({e}): {:?}",
                    String::from_utf8_lossy(out)
                )
            });
            let old = serde_json::from_slice::<String>(&body[a..b]).expect("checked to decode");
            assert_eq!(
                want.get("model"),
                Some(&Value::String(old)),
                "replaced a string other than the model"
            );
            want.insert("model".into(), Value::String(model.to_owned()));
            assert_eq!(got, want, "the rewrite changed more than the model: {:?}", shown());
            Verdict::Rewritten
        }
        Expect::Invalid => Verdict::RewrittenLenient,
        Expect::Refuse(_) => unreachable!(),
    }
}
